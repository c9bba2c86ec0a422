/* strata: per-block checksums of the data.
 *
 * Every 4 KiB block of every column carries a crc32c.  In memory a
 * column has one array of them (struct meta_column.csum), the checksums
 * of what every in-sync replica holds; on disk each replica keeps a copy
 * in its device's checksum slot for that extent (format.h).  The array
 * is loaded from the replicas on first use and written back by the
 * cleaner (resync.h), which is also why the copies on disk are trusted
 * only for columns that are clean in the journal.
 */
#ifndef STRATA_CSUM_H
#define STRATA_CSUM_H

#include <stddef.h>
#include <stdint.h>

#include "pool.h"

/* The crc32c of a 4 KiB block of zeros (what a fresh extent holds). */
uint32_t csum_zero_block (void);

/* The checksums of the LEN / 4 KiB blocks of BUF into OUT. */
void csum_blocks (const void *buf, size_t len, uint32_t *out);

/* Copy LEN bytes (whole blocks) from SRC to DST and put their checksums
 * into OUT, in one pass over SRC: each block is summed just after it is
 * copied, while it is still in the CPU's cache. */
void csum_copy_blocks (void *dst, const void *src, size_t len,
                       uint32_t *out);

/* Entries in a column's array. */
size_t csum_count (struct pool *p);

/* The checksum array of column COL of chunk C (of volume V), loaded from
 * the replicas' checksum slots if it is not in memory yet.  A column
 * that is dirty and has no array is a new one: all zero blocks.  Where
 * the replicas' slots disagree, each block takes the value that matches
 * a replica's data, and the slots that held another are rewritten (in a
 * writable pool).  Safe from
 * any thread (the first array installed wins).  NULL with errno (EIO:
 * no copy of the slot could be read) and a message. */
uint32_t *csum_get (struct pool *p, struct meta_volume *v,
                    struct meta_chunk *c, uint32_t col);

/* Where the checksum slot of extent E is on its device. */
uint64_t csum_slot_offset (struct pool *p, struct meta_extent e);

/* Queue writes of the whole array A of column COL of chunk C into RQ (as
 * many as there are usable replicas, at most the volume's replica count),
 * using BUF (csum slot size, aligned; the caller's until the requests
 * complete) for the encoded pages.  Returns the number of requests. */
size_t csum_write_reqs (struct pool *p, struct meta_volume *v,
                        struct meta_chunk *c, uint32_t col, const uint32_t *a,
                        void *buf, struct dev_req *rq);

#endif /* STRATA_CSUM_H */
