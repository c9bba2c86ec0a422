/* strata: the volume data path.
 *
 * A volume's address space is cut into chunks of stripe_width *
 * extent_size bytes.  Inside a chunk, data is striped in stripe_unit
 * pieces round-robin over stripe_width columns; each column is stored as
 * `replicas` extents on distinct devices (meta.h has the chunk map).
 *
 * Every request is split into per-column pieces and all pieces (and all
 * replicas of each piece) are submitted together.  Any byte offset and
 * length is accepted: partial 4 KiB blocks are read, merged and written
 * back under a per-block lock.  Unallocated chunks read as zeros; the
 * first write to a chunk allocates it (one journal commit) before the
 * data is written.
 *
 * Thread safety: every call may run concurrently on any thread.  Each
 * thread submits through its own io_uring (device.h).
 */
#ifndef STRATA_VOLUME_H
#define STRATA_VOLUME_H

#include <stdbool.h>
#include <stdint.h>

#include "pool.h"

struct volume;

/* Open volume NAME of P for I/O.  Handles to one volume share state.
 * NULL with ENOENT (and a message listing nothing else) if there is no
 * such volume. */
struct volume *volume_open (struct pool *p, const char *name);
void volume_close (struct volume *v);

/* The same for a background job of the pool, which is then named when
 * the volume cannot be shrunk or deleted because it is open. */
enum volume_job { VOLUME_JOB_SCRUB, VOLUME_JOB_REBUILD, VOLUME_JOB_DESTAGE };
struct volume *volume_open_job (struct pool *p, const char *name,
                                enum volume_job job);

uint64_t volume_size (struct volume *v);
uint64_t volume_stripe_unit (struct volume *v);
const char *volume_name (struct volume *v);

/* Read COUNT bytes at OFF into BUF.  Returns 0 or -1 with errno. */
int volume_pread (struct volume *v, void *buf, uint32_t count, uint64_t off);

/* Write COUNT bytes at OFF.  With FUA the data is on stable storage on
 * every replica before the call returns.  Returns 0 or -1 with errno. */
int volume_pwrite (struct volume *v, const void *buf, uint32_t count,
                   uint64_t off, bool fua);

/* Make every write completed before the call durable (all volumes of the
 * pool: a flush on one connection covers all of them). */
int volume_flush (struct volume *v);

/* Discard [OFF, OFF+COUNT): whole chunks are freed, partial ones have
 * their whole blocks discarded.  The range may read back as anything
 * previously written or zeros, the same on every replica. */
int volume_trim (struct volume *v, uint32_t count, uint64_t off, bool fua);

/* Make [OFF, OFF+COUNT) read as zeros.  With MAY_TRIM, whole chunks are
 * freed and whole blocks discarded; without, zeros are written. */
int volume_zero (struct volume *v, uint32_t count, uint64_t off,
                 bool may_trim, bool fua);

/* Report allocation: FN is called for consecutive ranges covering
 * [OFF, OFF+COUNT) with HOLE true for unallocated ranges (which read as
 * zeros).  Stops when FN returns non-zero and returns that value. */
int volume_extents (struct volume *v, uint32_t count, uint64_t off,
                    int (*fn) (void *opaque, uint64_t off, uint64_t len,
                               bool hole),
                    void *opaque);

/* Before growing the volume from OLD_SIZE to NEW_SIZE: make the bytes
 * the grow exposes inside the last allocated chunk read as zeros (a
 * shrink may have left data there).  Returns 0 or -1. */
int volume_grow_prepare (struct volume *v, uint64_t old_size,
                         uint64_t new_size);

/* Column access for scrub and rebuild.  volume_column_hold() keeps
 * bytes [A0, A1) of column COL of chunk IDX from being written (the
 * range lock every write takes) and the chunk from being freed, and sets
 * *C to the chunk, or to NULL (nothing held) if it is not allocated.
 * Returns 0, or -1 with errno.  A writer waiting meanwhile looks the
 * chunk up again once it has the range, so a copy moved by EXT_REPLACE
 * under the hold gets every later write.  Release with the same
 * arguments.  Never hold two at once. */
int volume_column_hold (struct volume *v, uint64_t idx, uint32_t col,
                        uint64_t a0, uint64_t a1, struct meta_chunk **c);
void volume_column_release (struct volume *v, uint64_t idx, uint32_t col,
                            uint64_t a0, uint64_t a1);

/* Wait until every request that started before the call has finished
 * (after which no request uses a chunk retired before it). */
void volume_quiesce (struct volume *v);

struct meta_volume *volume_meta (struct volume *v);

/* The destager's write (cache.h, struct cache_sink): NBLK blocks from
 * block BLK to the members, BUF or zeros if NULL, each block only if
 * the cache still holds it at LSN[i].  Blocks past the end are
 * dropped.  Returns 0 or -1. */
int volume_destage_write (struct volume *v, uint64_t blk, uint32_t nblk,
                          const void *buf, const uint64_t *lsn);

/* The volume byte of byte EOFF of column COL of chunk IDX. */
uint64_t volume_column_offset (struct volume *v, uint64_t idx, uint32_t col,
                               uint64_t eoff);

#endif /* STRATA_VOLUME_H */
