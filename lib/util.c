/* strata: small helpers (see util.h). */
#include <errno.h>
#include <stdio.h>
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
