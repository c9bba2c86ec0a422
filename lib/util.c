/* strata: small helpers (see util.h). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/random.h>

#include "util.h"

bool
util_is_zero (const void *buf, size_t len)
{
  const unsigned char *p = buf;

  /* Compare the buffer with itself shifted by one byte: if the first
   * byte is zero and every byte equals the next, all are zero.  memcmp
   * is vectorised, which makes this much faster than a byte loop.
   */
  if (len == 0)
    return true;
  if (p[0] != 0)
    return false;
  return memcmp (p, p + 1, len - 1) == 0;
}

char *
util_human_size (uint64_t bytes, char *buf, size_t len)
{
  static const char *const units[] = { "B", "KiB", "MiB", "GiB", "TiB", "PiB" };
  double v = bytes;
  size_t u = 0;

  while (v >= 1024 && u + 1 < ARRAY_SIZE (units)) {
    v /= 1024;
    u++;
  }
  if (u == 0)
    snprintf (buf, len, "%llu B", (unsigned long long) bytes);
  else
    snprintf (buf, len, "%.1f %s", v, units[u]);
  return buf;
}

int
util_random (void *buf, size_t len)
{
  unsigned char *p = buf;

  while (len > 0) {
    ssize_t r = getrandom (p, len, 0);
    if (r == -1) {
      if (errno == EINTR)
        continue;
      return -1;
    }
    p += r;
    len -= r;
  }
  return 0;
}

int
util_uuid_new (uint8_t u[16])
{
  if (util_random (u, 16) == -1)
    return -1;
  u[6] = (u[6] & 0x0f) | 0x40;	/* version 4 */
  u[8] = (u[8] & 0x3f) | 0x80;	/* variant 10 */
  return 0;
}

void
util_uuid_format (const uint8_t u[16], char out[37])
{
  snprintf (out, 37,
            "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-"
            "%02x%02x%02x%02x%02x%02x",
            u[0], u[1], u[2], u[3], u[4], u[5], u[6], u[7], u[8], u[9],
            u[10], u[11], u[12], u[13], u[14], u[15]);
}

uint64_t
util_now_ms (void)
{
  struct timespec ts;

  clock_gettime (CLOCK_MONOTONIC, &ts);
  return (uint64_t) ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void *
util_first_offer (struct util_first *l, const void *x)
{
  char *at;

  if (l->n == l->cap && l->n < l->max) {
    size_t cap = MIN (l->cap ? l->cap * 2 : 64, l->max);
    void *a = realloc (l->items, cap * l->size);
    if (a) {
      l->items = a;
      l->cap = cap;
    }
  }
  if (l->n < l->cap) {
    at = (char *) l->items + l->n++ * l->size;
    memcpy (at, x, l->size);
    return at;
  }
  /* Full.  Offered in order, each item sorts after the kept ones and is
   * dropped, so where the last one is is kept until it is replaced. */
  l->dropped++;
  if (l->n == 0)
    return NULL;
  if (!l->know_last) {
    l->lastat = 0;
    for (size_t i = 1; i < l->n; i++)
      if (l->cmp ((char *) l->items + i * l->size,
                  (char *) l->items + l->lastat * l->size) > 0)
        l->lastat = i;
    l->know_last = true;
  }
  at = (char *) l->items + l->lastat * l->size;
  if (l->cmp (x, at) >= 0)
    return NULL;
  memcpy (at, x, l->size);
  l->know_last = false;
  return at;
}

void
util_first_sort (struct util_first *l)
{
  if (l->n > 1)
    qsort (l->items, l->n, l->size, l->cmp);
  l->know_last = false;		/* LASTAT named a place, not an item */
}

void
util_first_free (struct util_first *l)
{
  free (l->items);
  l->items = NULL;
  l->n = l->cap = 0;
}
