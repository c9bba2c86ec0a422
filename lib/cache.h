/* strata: the cache log: writes kept on fast devices until destaged.
 *
 * A cache is a log of records on one cache device, or on two that
 * mirror each other (every record at the same place on both).  A write
 * is a record holding whole 4 KiB blocks of one volume, with a checksum
 * per block; a zero is a record that says a range of blocks reads as
 * zeros.  The in-memory index says, for every block the cache holds,
 * where its newest version is.  Nothing here knows about replicas: the
 * volume layer reads and writes the backing copies, and gives the
 * destager a callback that does.
 *
 * Durability: cache_write() returns once the record is written on every
 * mirror that works; with FUA, once it is on stable storage there.
 * cache_flush() makes every record written before it durable.  A mirror
 * whose write or flush fails is dropped (cache_info says so; so is one
 * whose read fails while another is in use), and the
 * header on the others says so before the call returns, so that a later
 * open never reads the dropped one; a failed flush with no mirror left
 * latches: every later flush fails.
 *
 * The destager (cache_destage) takes the oldest records, hands their
 * live blocks to the caller in address order, adjacent blocks merged,
 * and once the caller has made them durable on the backing copies, the
 * clean point (tail) moves past them and is recorded in the header.
 * Recovery (cache_open) reads the ring from the tail and rebuilds the
 * index from every complete record; a torn one is passed over.
 *
 * Thread safety: every call may run concurrently, except that
 * cache_destage() runs on one thread at a time.  The index is under one
 * short lock; no lock is held across I/O.
 */
#ifndef STRATA_CACHE_H
#define STRATA_CACHE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "device.h"

struct cache;

/* One mirror: the cache area of a device, [off, off + size). */
struct cache_dev {
  struct device *dev;
  const char *name;		/* for messages; must outlive the cache */
  uint64_t off, size;
};

/* Write an empty cache (both header slots, tail 0) to the N (1 or 2)
 * mirrors.  The ring is what follows the headers, in whole 4 KiB blocks,
 * the smaller of the two areas.  Returns 0 or -1. */
int cache_format (const struct cache_dev *mirrors, size_t n,
                  const uint8_t pool_uuid[16]);

/* Open a formatted cache and recover it: the header with the higher seq
 * on any mirror, then every complete record from its tail on.  A mirror
 * that is NULL or unreadable is left out (cache_info); at least one must
 * be readable.  Returns NULL with errno and a message. */
struct cache *cache_open (const struct cache_dev *mirrors, size_t n,
                          const uint8_t pool_uuid[16]);
void cache_close (struct cache *c);

/* Store NBLK blocks of volume VOL from block BLK: from BUF (aligned for
 * the devices), or zeros if BUF is NULL.  Blocks the cache cannot hold
 * in one record are split.  Waits for room while the log is full (the
 * destager frees it), unless writing back is stuck (cache_set_stuck).
 * Returns 0, or -1 with errno (EIO when no mirror could take it; the
 * destager's error when it is stuck). */
int cache_write (struct cache *c, uint32_t vol, uint64_t blk, uint32_t nblk,
                 const void *buf, bool fua);

/* cache_write() with FLAGS: CACHE_FUA; CACHE_CLEAN (as
 * cache_write_clean()); CACHE_NOWAIT: fail with EAGAIN instead of
 * waiting for room (a caller that holds a lock the destager may need
 * waits with cache_wait_room() after dropping it).  With NOWAIT, a
 * write of several records may have stored some of them. */
#define CACHE_FUA 0x1
#define CACHE_CLEAN 0x2
#define CACHE_NOWAIT 0x4
int cache_put (struct cache *c, uint32_t vol, uint64_t blk, uint32_t nblk,
               const void *buf, unsigned flags);

/* Wait until BYTES (at most half the ring) would fit in the log.
 * Returns 0, or -1 with the destager's error if the log is full and
 * writing back is stuck (cache_set_stuck). */
int cache_wait_room (struct cache *c, uint64_t bytes);

/* Writing back has failed for long with ERR (0: it works again; WHY says
 * what fails).  While it is stuck, a write that finds the log full fails
 * with ERR instead of waiting for room that may never come. */
void cache_set_stuck (struct cache *c, int err, const char *why);

/* Store NBLK blocks that the backing copies hold already (write-through):
 * kept for reads and never destaged; no FUA needed.  Returns 0 or -1. */
int cache_write_clean (struct cache *c, uint32_t vol, uint64_t blk,
                       uint32_t nblk, const void *buf);

/* Make every record written before the call durable on every mirror.
 * Returns 0, or -1 (EIO) once a flush has failed on the last mirror. */
int cache_flush (struct cache *c);

/* Look up blocks [BLK, BLK + NBLK) of VOL: those the cache holds are
 * read into BUF (at their place; zeros for zeroed ones) and their bit
 * set in HIT (NBLK bits, cleared first).  A block whose copy fails its
 * checksum on every mirror fails the call with EIO.  Returns how many
 * blocks were found, or -1. */
int cache_read (struct cache *c, uint32_t vol, uint64_t blk, uint32_t nblk,
                void *buf, uint8_t *hit);

/* The destager's callback: make NBLK blocks of VOL from BLK hold BUF (or
 * zeros if BUF is NULL) on the backing copies, if each block still is
 * what LSN[i] says (cache_live, under the caller's range lock).  FLUSH
 * makes all of them durable.  Both return 0 or -1. */
struct cache_sink {
  int (*write) (void *opaque, uint32_t vol, uint64_t blk, uint32_t nblk,
                const void *buf, const uint64_t *lsn);
  int (*flush) (void *opaque);
  void *opaque;
};

/* Is block BLK of VOL still the version at LSN (so that writing it back
 * is right)?  For the sink, under its range lock. */
bool cache_live (struct cache *c, uint32_t vol, uint64_t blk, uint64_t lsn);

/* Destage the oldest records, up to MAX_BYTES of them: their live
 * blocks go to SINK in address order, then SINK->flush, then the tail
 * moves past them (recorded in the header with FUA).  Returns the bytes
 * of log freed (0 when nothing is left to destage), or -1 (nothing
 * freed; the blocks stay dirty). */
int64_t cache_destage (struct cache *c, uint64_t max_bytes,
                       const struct cache_sink *sink);

/* Drop every block of volume VOL (deleted): recorded as a zero of its
 * whole range, which the destager then skips (NBLK blocks). */
int cache_forget (struct cache *c, uint32_t vol, uint64_t nblk);

struct cache_info {
  uint64_t log_size;		/* ring bytes */
  uint64_t used;		/* bytes from the tail to the head */
  uint64_t head, tail;		/* LSNs: where the next record goes, and
				   the clean point */
  uint64_t age_ms;		/* of the oldest record not destaged */
  uint64_t dirty_blocks;	/* blocks held that are not destaged */
  uint64_t clean_blocks;	/* blocks held for reads only */
  uint64_t hits, misses;	/* blocks looked up by cache_read */
  uint64_t destaged;		/* blocks written back since open */
  uint32_t nmirrors;		/* mirrors the cache was made with */
  const char *names[2];		/* their names */
  uint32_t mirrors;		/* mirrors in use */
  bool failed[2];		/* mirror i was dropped */
  bool latched;			/* a flush failed with no mirror left */
};
void cache_info (struct cache *c, struct cache_info *out);

/* Stop taking records (detach): every later cache_put() fails with
 * ESHUTDOWN.  Only when the cache holds no block and no write is under
 * way, unless FORCE (a cache that is lost).  Returns whether it is
 * sealed; if not, destage and try again. */
bool cache_seal (struct cache *c, bool force);

/* Does the cache hold (or zero) any of blocks [BLK, BLK + NBLK) of VOL? */
bool cache_holds (struct cache *c, uint32_t vol, uint64_t blk, uint64_t nblk);

/* Call FN for every range of blocks whose newest data only the cache
 * holds (dirty blocks and zeros not yet destaged), merged, in address
 * order: what is lost if the cache is.  Stops when FN returns non-zero
 * and returns that; -1 if out of memory. */
int cache_dirty_ranges (struct cache *c,
                        int (*fn) (void *opaque, uint32_t vol, uint64_t blk,
                                   uint64_t nblk),
                        void *opaque);

#endif /* STRATA_CACHE_H */
