/* strata: small header-only helpers shared by every module.
 *
 * Rounding and alignment helpers in the style of nbdkit's rounding.h and
 * isaligned.h.  Every macro evaluates its arguments once where that
 * matters, and works on unsigned 64-bit quantities.
 */
#ifndef STRATA_UTIL_H
#define STRATA_UTIL_H

#include <stdbool.h>
#include <stdint.h>
#include <stddef.h>

#define STRATA_BLOCK 4096u	/* device I/O granule, bytes */

#define MIN(a, b) ((a) < (b) ? (a) : (b))
#define MAX(a, b) ((a) > (b) ? (a) : (b))
#define ARRAY_SIZE(a) (sizeof (a) / sizeof ((a)[0]))

/* Round I up or down to a multiple of N, which must be a power of 2. */
static inline uint64_t
round_up (uint64_t i, uint64_t n)
{
  return (i + n - 1) & ~(n - 1);
}

static inline uint64_t
round_down (uint64_t i, uint64_t n)
{
  return i & ~(n - 1);
}

static inline bool
is_aligned (uint64_t i, uint64_t n)
{
  return (i & (n - 1)) == 0;
}

static inline bool
is_power_of_2 (uint64_t i)
{
  return i != 0 && (i & (i - 1)) == 0;
}

static inline uint64_t
div_round_up (uint64_t a, uint64_t b)
{
  return (a + b - 1) / b;
}

/* True if the whole buffer is zero. */
bool util_is_zero (const void *buf, size_t len);

/* Format BYTES as "4.0 MiB" into BUF (at least 16 bytes). Returns BUF. */
char *util_human_size (uint64_t bytes, char *buf, size_t len);

/* Fill BUF with LEN bytes from the kernel's random source.
 * Returns 0, or -1 with errno set. */
int util_random (void *buf, size_t len);

/* A new random UUID (RFC 9562 version 4: 122 random bits, the version
 * and variant bits set).  Returns 0, or -1 with errno set. */
int util_uuid_new (uint8_t uuid[16]);

/* Format a 16-byte UUID as 36 characters plus NUL into OUT. */
void util_uuid_format (const uint8_t uuid[16], char out[37]);

/* Milliseconds of the monotonic clock. */
uint64_t util_now_ms (void);

/* A report's list of findings, bounded: of everything offered, it keeps
 * the MAX items that sort first under CMP, whatever order they were
 * offered in (several workers offer them in no fixed order), and counts
 * the rest.  Set MAX, SIZE and CMP, zero the rest; util_first_free()
 * releases it. */
struct util_first {
  size_t max, size;			/* items kept at most; bytes each */
  int (*cmp) (const void *, const void *);
  void *items;				/* N kept, in no order */
  size_t n, cap;
  size_t dropped;			/* offered and not kept */
  size_t lastat;			/* if KNOW_LAST: ITEMS[LASTAT] sorts */
  bool know_last;			/* last of the kept ones */
};

/* Offer X.  Returns where its copy is kept, or NULL if it is not: the
 * list is full and X sorts after every item in it.  When X takes the
 * place of the item that sorts last, that one is counted as dropped
 * instead.  Out of memory, the list holds what it has room for. */
void *util_first_offer (struct util_first *l, const void *x);

/* Sort the kept items by CMP, for the report.  Offers may go on after. */
void util_first_sort (struct util_first *l);

void util_first_free (struct util_first *l);

#endif /* STRATA_UTIL_H */
