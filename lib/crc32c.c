/* strata: CRC-32C (see crc32c.h), computed by Intel's ISA-L.
 *
 * Design notes: every byte a client reads or writes is summed, so the
 * CRC sits on the data path beside the copies.  ISA-L's crc32_iscsi
 * picks, at first use, the fastest code the CPU runs: folding with
 * carry-less multiplies (VPCLMULQDQ on AVX-512, or PCLMULQDQ), SSE4.2
 * crc32 chains, or a table.  On this project's machines its AVX-512 path
 * sums a 4 KiB block about three times as fast as the three interleaved
 * crc32 chains strata had before, and about five times as fast when the
 * block is not in the cache.
 *
 * crc32_iscsi keeps the register as it is: it inverts neither the
 * initial value nor the result.  CRC-32C as used everywhere (and in
 * strata's on-disk format) inverts both, so crc32c() does, which also
 * makes crc32c (crc32c (0, a), b) the sum of a followed by b.  Its
 * length is an int, so longer buffers go through in pieces.
 */
#include <isa-l/crc.h>

#include "crc32c.h"

/* The largest piece handed to crc32_iscsi at once: below INT_MAX and a
 * multiple of 4 KiB, so that the pieces stay aligned. */
#define PIECE ((size_t) 1 << 30)

uint32_t
crc32c (uint32_t crc, const void *buf, size_t len)
{
  /* ISA-L does not write through BUFFER; its prototype lacks const. */
  unsigned char *p = (unsigned char *) (uintptr_t) buf;

  crc = ~crc;
  while (len > 0) {
    size_t n = len < PIECE ? len : PIECE;
    crc = crc32_iscsi (p, (int) n, crc);
    p += n;
    len -= n;
  }
  return ~crc;
}
