/* strata: a pool: its devices, its metadata journal and its allocator.
 *
 * pool_init() formats the devices of a YAML declaration.  pool_open()
 * opens them under an exclusive lock (two writers of one pool never run
 * at once), recovers the metadata from a majority of the metadata
 * replicas and rebuilds the allocator.  The pool_volume_* calls are the
 * administrative changes; they are serialised by an internal lock and
 * each is one journal commit.  pool_chunk_* are used by the volume data
 * path to allocate and free chunks.
 */
#ifndef STRATA_POOL_H
#define STRATA_POOL_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "alloc.h"
#include "config.h"
#include "device.h"
#include "journal.h"
#include "meta.h"

struct pool;

#define POOL_WRITE 0x1		/* open for writing (new journal term) */

/* Format every device of CFG as a new, empty pool.  Creates sparse files
 * where a path does not exist and has a size.  Refuses (EEXIST) devices
 * that hold a strata pool or any other data in their first MiB unless
 * FORCE.  Progress lines go to LOG if not NULL.  Returns 0 or -1; on
 * refusal no device has been written. */
int pool_init (const struct config *cfg, bool force, FILE *log);

/* Open the pool of CFG.  CFG must outlive the pool.  NULL with errno and
 * a message on failure (EBUSY if another process has it open). */
struct pool *pool_open (const struct config *cfg, unsigned flags);
void pool_close (struct pool *p);

const struct config *pool_config (struct pool *p);
struct meta *pool_meta (struct pool *p);
struct journal *pool_journal (struct pool *p);
struct alloc *pool_alloc (struct pool *p);
bool pool_writable (struct pool *p);

/* Device I of the pool (NULL if it is missing). */
struct device *pool_device (struct pool *p, uint32_t i);

/* Give the blocks (data and checksum slot) of the N extents E on their
 * devices now: on a local file with those of the extents around each (64
 * MiB at a time, once while the pool is open), so that a full
 * filesystem under a sparse file refuses new extents rather than writes
 * into them (device_reserve).  The extents must be free (being
 * allocated): on a remote member that offers fast zeroing, each is
 * zeroed alone to the same end (NO_HOLE), all in one batch.  Returns 0,
 * or -1 with errno (ENOSPC when there is no room even for the extent
 * alone) and a message naming the device. */
int pool_reserve_extents (struct pool *p, const struct meta_extent *e,
                          size_t n);

/* Extent E was punched (freed): the next pool_reserve_extents() in its
 * group reserves the group again. */
void pool_unreserve_extent (struct pool *p, struct meta_extent e);

/* The byte offset on its device of byte OFF of extent E. */
uint64_t pool_extent_offset (struct pool *p, struct meta_extent e,
                             uint64_t off);

/* Flush every device with completed writes no flush has covered yet
 * (device_unflushed), all at once.  Returns 0 or -1. */
int pool_flush (struct pool *p);

/* Allocate chunk IDX of V: choose extents, zero them, commit.  The
 * caller makes sure nobody else allocates or frees IDX meanwhile.
 * Returns 0 or -1 (ENOSPC, EIO). */
int pool_chunk_alloc (struct pool *p, struct meta_volume *v, uint64_t idx);

/* Free the N allocated chunks IDX of V: zero their extents durably,
 * commit, and return the extents to the allocator.  The caller
 * guarantees that no I/O uses them.  A chunk whose extents cannot all be
 * zeroed (one is on a failed or missing device, or a discard or flush
 * fails) stays allocated, since a free extent must read as zeros.  With
 * KEPT (room for N), the indexes of such chunks go to KEPT[0..*NKEPT)
 * and the call succeeds.  Without, a copy on a failed or missing device
 * makes the call fail before anything is touched, and a chunk kept for
 * a failed discard or flush makes it fail after the others are freed
 * (EIO, saying why).  Returns 0 or -1. */
int pool_chunks_free (struct pool *p, struct meta_volume *v,
                      const uint64_t *idx, size_t n, uint64_t *kept,
                      size_t *nkept);

/* Administrative changes (serialised).  Messages name the volume. */
int pool_volume_create (struct pool *p, const struct config_volume *v);
int pool_volume_resize (struct pool *p, const char *name, uint64_t size,
                        bool allow_shrink);
int pool_volume_delete (struct pool *p, const char *name);

/* Count of devices in the pool (from the metadata). */
uint32_t pool_ndevices (struct pool *p);

/* Why device I is missing ("" if present). */
/* Device health.  A device is usable when it is open and not failed or
 * removed in the metadata; the data path reads only usable copies and
 * writes only to them.  pool_device_fail() commits the FAILED state to
 * the journal (once) before returning 0, so a caller may then
 * acknowledge a write that missed the device; -1 if the commit failed.
 * Read errors are counted: the first makes an up device degraded (still
 * used), POOL_READ_ERROR_LIMIT of them fail it.  All are safe from any
 * thread.  A remote member that pool_device_fail() fails because it lost
 * its connection (device_lost_connection: its host or server went down,
 * the network failed) is away, and may rejoin by itself
 * (pool_rejoin_away); any other failure keeps a device out until
 * strata device add. */
#define POOL_READ_ERROR_LIMIT 8
bool pool_device_usable (struct pool *p, uint32_t i);
int pool_device_fail (struct pool *p, uint32_t i, const char *why);
/* The same, but the device never rejoins by itself, whatever made it
 * fail (strata device fail). */
int pool_device_fail_hard (struct pool *p, uint32_t i, const char *why);
/* Device I, missing, is marked failed because a write needed it ("not
 * available"); it may still rejoin by itself (pool_rejoin_away). */
int pool_device_away (struct pool *p, uint32_t i);
/* Whether device I is away and may rejoin by itself. */
bool pool_device_rejoins (struct pool *p, uint32_t i);
void pool_device_read_error (struct pool *p, uint32_t i, const char *why);
/* A request to device I was refused for lack of space (ENOSPC or
 * EDQUOT; WHY says which).  No fault of the device, which stays in use:
 * counted, logged, and shown by pool_device_problem(), with how long ago
 * the last one was, while it has no other problem. */
void pool_device_no_space (struct pool *p, uint32_t i, const char *why);
uint64_t pool_device_no_spaces (struct pool *p, uint32_t i);
/* Bring failed device I back (strata device add of a member that was
 * away): open it if it is not open, check that its superblock is the
 * one of the member that left (pool and device UUID), and commit it up.
 * Its copies that missed writes stay stale (never read) until a rebuild
 * copies them.  A removed (replaced) device is refused.  Returns 0, or
 * -1 with a message. */
int pool_device_return (struct pool *p, uint32_t i);
/* Try again the devices that are away: missing since the pool was
 * opened (up or degraded in the metadata then, not opened, and failed
 * since, if at all, only by pool_device_away()), or remote members
 * failed because they lost their connection.  One that answers now and
 * is the member that left comes back as by pool_device_return(), with a
 * line on stderr; its metadata replica, if it holds one, is brought up
 * to date.  The first call tries each; later calls try it again at gaps
 * doubling from 5 s to a minute.  A missing remote member gets a second
 * to answer; one that was open is reconnected in the background, and
 * tried once a connection is up.  One that already came back by itself
 * three times in the last hour is not taken back again: it waits for
 * strata device add (the log and its problem say so).  For the catcher
 * thread (resync.c) of a pool being served, which calls it every
 * RESYNC_INTERVAL and has the copies they missed copied again.
 * Returns how many came back; BACK, if not NULL, has META_MAX_DEVICES
 * entries, and those of the devices that came back are set. */
int pool_rejoin_away (struct pool *p, bool *back);
/* Add the device NAME to the pool (strata device add of a new device):
 * NAME is declared in the YAML (read again if it was declared after the
 * pool was opened) and is not a member.  Creates a sparse file where the
 * declaration says so, refuses (EEXIST) a device that holds data or
 * belongs to a pool unless FORCE (a member of this pool always), zeros
 * it, writes its superblock and commits it as the next device, usable
 * at once: new chunks may be placed on it.  Progress lines go to LOG if
 * not NULL.  Returns 0, or -1 with a message and nothing committed.
 * The caller serialises administrative changes. */
int pool_device_add (struct pool *p, const char *name, bool force, FILE *log);

/* Does device DEV hold a metadata replica? */
bool pool_meta_member (struct pool *p, uint32_t dev);

/* Whether another process holds the pool lock of CFG (a server, or a
 * command that opened the pool), rather than only a device's lock. */
bool pool_lock_busy (const struct config *cfg);

/* The extents of P's devices (*EXTENTS) and the most whose checkpoint
 * the metadata areas hold (*ROOM_EXTENTS); true if the pool has more,
 * so that metadata changes would fail once about that many are in use. */
bool pool_meta_tight (struct pool *p, uint64_t *extents,
                      uint64_t *room_extents);

/* A usable device that holds no metadata replica and could take the one
 * of device LEAVING (or -1), its metadata area large enough: PREFER if
 * it qualifies, else one whose failure domain no other metadata replica
 * uses, else any.  Returns its index, or -1 if there is none. */
int pool_meta_pick (struct pool *p, int64_t leaving, int64_t prefer);

/* Move the metadata replica of device FROM to device TO: TO joins the
 * journal (with a checkpoint of the metadata), then FROM leaves it, each
 * step recorded in the superblocks (see pool.c, "metadata membership").
 * Either may be -1: only a join, or only a leave.  Clients go on
 * meanwhile; metadata commits wait for each step.  Returns 0, or -1 with
 * a message; a failed leave leaves TO joined. */
int pool_meta_move (struct pool *p, int64_t from, int64_t to);

/* The declaration of device NAME: in the YAML the pool was opened with,
 * or read again since.  With RELOAD, a name found in neither makes the
 * YAML be read again.  NULL (with a message) if it is not declared.
 * The list of YAMLs read again is not locked: callers are the
 * administrative verbs, which the caller serialises. */
const struct config_device *pool_declared_device (struct pool *p,
                                                  const char *name,
                                                  bool reload);

/* The buffer alignment the pool's devices need for OP (device.h):
 * buffers aligned to it need no bounce.  Only grows. */
size_t pool_mem_align (struct pool *p, enum dev_op op);

/* Commit STATE for device I (an operator's decision: removed). */
int pool_device_set_state (struct pool *p, uint32_t i, uint8_t state);
uint32_t pool_device_read_errors (struct pool *p, uint32_t i);

/* Why device I is missing, failed or degraded, else when and how it
 * last lacked space ("" if neither), copied into BUF (LEN bytes;
 * POOL_PROBLEM_MAX hold all of it). */
#define POOL_PROBLEM_MAX 400
void pool_device_problem (struct pool *p, uint32_t i, char *buf, size_t len);

/* Checksum errors found on device I, and blocks (or checksum slots)
 * rewritten there with good data, since the pool opened.  Safe from any
 * thread. */
void pool_device_csum_error (struct pool *p, uint32_t i);
void pool_device_repaired (struct pool *p, uint32_t i, uint32_t blocks);
uint64_t pool_device_csum_errors (struct pool *p, uint32_t i);
uint64_t pool_device_repairs (struct pool *p, uint32_t i);

/* Held by whoever walks the chunk maps outside the data path (the
 * cleaner, scrub) and by whoever frees chunks or volumes, so that a walk
 * never meets freed memory.  Never held across a wait for the data
 * path's io_lock. */
void pool_walk_lock (struct pool *p);
void pool_walk_unlock (struct pool *p);

/* Commit a job record (scrub, rebuild progress) or the move of copy
 * SLOT of chunk IDX of V to extent E.  Returns 0 or -1. */
int pool_commit_job (struct pool *p, uint8_t kind, const struct meta_job *j);
int pool_commit_ext_replace (struct pool *p, struct meta_volume *v,
                             uint64_t idx, uint32_t slot,
                             struct meta_extent e);

/* Commit that the copies named by ITEMS missed writes (STALE true,
 * before the write that missed them is acknowledged) or hold their
 * column's data again (after a rebuild copied it).  Returns 0 or -1. */
int pool_commit_stale (struct pool *p, bool stale,
                       const struct meta_stale_item *items, size_t n);

/* True if copy R of column COL of C may be read: its device is usable
 * and the copy missed no write.  Lock-free. */
bool pool_copy_readable (struct pool *p, struct meta_chunk *c, uint32_t R,
                         uint32_t col, uint32_t r);

/* Jobs of kind KIND (enum meta_job_kind) running in this process: at
 * most one each.  claim() is false if one runs already; cancel() asks
 * it to stop at its next step (it saves its place first). */
bool pool_job_claim (struct pool *p, uint8_t kind);
void pool_job_release (struct pool *p, uint8_t kind);
bool pool_job_running (struct pool *p, uint8_t kind);
void pool_job_cancel (struct pool *p, uint8_t kind);
bool pool_job_cancelled (struct pool *p, uint8_t kind);

/* The pool's dirty-column tracker (resync.h); NULL if read-only. */
struct resync *pool_resync (struct pool *p);

/* The write-back cache (cache.h), or NULL if the pool has none. */
struct cache *pool_cache (struct pool *p);
/* The destager running over it (destage.h), set by whoever starts it. */
void *pool_destager (struct pool *p);
void pool_set_destager (struct pool *p, void *d);

/* The cache has no working mirror left: every range only it held is
 * recorded as lost in the journal (once; meta_lost_any() then says so
 * for reads), and from then on the volumes use the members alone.
 * Returns 0, or -1 if the record could not be committed (the caller
 * must then fail the request: nothing tells a reader what is lost). */
int pool_cache_lost (struct pool *p);
bool pool_cache_dead (struct pool *p);
/* Detaching the cache (strata cache detach): while DETACHING, the
 * volumes write back nothing new (they write as with mode none, so only
 * blocks the cache already holds go to it) and the destager drains it.
 * pool_cache_detach() then seals it (cache_seal(): it must hold nothing,
 * unless it is lost), and records in the journal that the pool has no
 * cache; from then on (DETACHED) it is not used.  Returns 0, or -1 with
 * EAGAIN if it still holds blocks (drain and try again). */
bool pool_cache_detaching (struct pool *p);
bool pool_cache_detached (struct pool *p);
void pool_cache_set_detaching (struct pool *p, bool on);
int pool_cache_detach (struct pool *p);
/* Blocks [BLK, BLK + NBLK) of volume VOL hold new data: no longer lost.
 * Returns 0 or -1. */
int pool_lost_clear (struct pool *p, uint32_t vol, uint64_t blk,
                     uint64_t nblk);

#endif /* STRATA_POOL_H */
