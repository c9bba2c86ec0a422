/* strata: per-block checksums of the data.
 *
 * Every 4 KiB block of every column carries a crc32c.  In memory a
 * column has one array of them (struct meta_column.csum), the checksums
 * of what every in-sync replica holds; on disk each replica keeps a copy
 * in its device's checksum slot for that extent (format.h).  The array
 * is loaded from the replicas on first use and written back by the
 * cleaner (resync.h), which is also why the copies on disk are trusted
 * only for columns that are clean in the journal.
 *
 * An array takes extent_size / 1024 bytes (4 KiB for a 4 MiB extent),
 * so a large pool cannot keep them all: csum_shrink() lets go of the
 * arrays of clean columns nobody holds once they pass the pool's
 * checksum_memory, and the next csum_hold() loads them again.
 */
#ifndef STRATA_CSUM_H
#define STRATA_CSUM_H

#include <stdbool.h>
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

/* Hold the checksum array of column COL of chunk C (of volume V) and
 * return it: csum_shrink() leaves it in memory until csum_release().
 * The caller keeps C's extents from being freed meanwhile (io_lock, or
 * the walk lock), and releases before it lets go of that.  Loads the
 * array like csum_get().  NULL with errno and a message (nothing held). */
uint32_t *csum_hold (struct pool *p, struct meta_volume *v,
                     struct meta_chunk *c, uint32_t col);
void csum_release (struct meta_chunk *c, uint32_t col);

/* The checksum array of column COL of chunk C (of volume V), loaded from
 * the replicas' checksum slots if it is not in memory yet.  The array
 * stays in memory only while the column is held (csum_hold), has a
 * write in progress (its writers count) or is not clean.  A column
 * that is dirty and has no array is a new one: all zero blocks.  Where
 * the replicas' slots disagree, each block takes the value that matches
 * a replica's data, and the slots that held another are rewritten (in a
 * writable pool).  Safe from any thread (the first array installed
 * wins).  NULL with errno (EIO: no copy of the slot could be read) and a
 * message. */
uint32_t *csum_get (struct pool *p, struct meta_volume *v,
                    struct meta_chunk *c, uint32_t col);

/* Load the checksum array of column COL of chunk C (of volume V) from
 * the replicas' slots, as csum_get() does for a clean column, whatever
 * the column's state, and install it.  For a column made dirty by
 * resync_free_begin() without its array, whose slots still hold its
 * checksums.  NULL with errno and a message. */
uint32_t *csum_load (struct pool *p, struct meta_volume *v,
                     struct meta_chunk *c, uint32_t col);

/* Install array A (of csum_count() entries, malloc'ed) as the checksums
 * of column MC, which has none.  Returns A, or the array installed
 * meanwhile by another thread, into which A is copied if OVERWRITE; A
 * is then freed. */
uint32_t *csum_install (struct pool *p, struct meta_column *mc, uint32_t *a,
                        bool overwrite);

/* Let go of the arrays of clean columns that nobody holds or writes,
 * least recently held first (one clock sweep, and a second if the first
 * did not free enough), until what stays fits in 7/8 of the pool's
 * checksum_memory.  Does nothing while the arrays fit, unless ALL, which
 * lets go of every array it can.  Cheap when there is nothing to do;
 * when another thread is shrinking, returns at once.  Takes the pool's
 * walk lock: the caller holds no io_lock.  Returns how many arrays it
 * let go. */
size_t csum_shrink (struct pool *p, bool all);

/* Checksum arrays in memory now (walks every chunk map; for status and
 * tests), and the number that checksum_memory allows. */
size_t csum_resident (struct pool *p);
size_t csum_budget (struct pool *p);

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
