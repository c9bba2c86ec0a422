/* strata: CRC-32C (Castagnoli), used for every on-disk checksum.
 *
 * Computed by ISA-L (libisal), which uses the fastest instructions the
 * CPU has.  The standard check value crc32c("123456789") is 0xe3069283.
 */
#ifndef STRATA_CRC32C_H
#define STRATA_CRC32C_H

#include <stddef.h>
#include <stdint.h>

/* Continue a CRC over LEN bytes.  Start with crc = 0. */
uint32_t crc32c (uint32_t crc, const void *buf, size_t len);

#endif /* STRATA_CRC32C_H */
