/* strata: the pool's metadata state and the journal entries that change it.
 *
 * struct meta is what the journal replays into: the device table, the
 * volumes and each volume's chunk map.  It changes only through
 * meta_apply() of a journal entry (or meta_load() of a checkpoint), so
 * the same journal always rebuilds the same state.  Entries are built
 * with the meta_entry_* encoders.
 *
 * Concurrency: meta_apply() is called by the journal with the journal
 * lock held, so applies are serialised.  meta->lock protects the volume
 * list and the device table against concurrent readers (status, volume
 * lookup).  Chunk maps are read without a lock by the data path: slots
 * are atomic pointers and a published chunk never changes until a
 * CHUNK_FREE entry removes it (the volume layer drains I/O first).
 */
#ifndef STRATA_META_H
#define STRATA_META_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "config.h"
#include "format.h"

enum meta_entry_type {
  META_E_NOOP = 1,
  META_E_VOL_CREATE = 2,
  META_E_VOL_RESIZE = 3,
  META_E_VOL_DELETE = 4,
  META_E_CHUNK_ALLOC = 5,
  META_E_CHUNK_FREE = 6,
  META_E_DEV_STATE = 7,
  META_E_COL_STATE = 8,		/* columns marked dirty or clean */
  META_E_EXT_REPLACE = 9,	/* one copy of a column moved (rebuild) */
  META_E_JOB = 10,		/* scrub or rebuild progress */
  META_E_STALE = 11,		/* copies that missed writes, or caught up */
  META_E_DEV_ADD = 12,		/* a new member (strata device add) */
  META_E_CACHE = 13,		/* the cache attached (its uuid) or detached */
  META_E_LOST = 14,		/* ranges lost with the cache, or written again */
};

/* The device table has room for this many devices from the start, so
 * that a device added while the pool is served never moves the entries
 * lock-free readers look at (config.c allows no more). */
#define META_MAX_DEVICES 1024

enum meta_dev_state { META_DEV_UP = 0, META_DEV_DEGRADED = 1,
                      META_DEV_FAILED = 2, META_DEV_REMOVED = 3 };

struct meta_device {
  char name[FORMAT_NAME_MAX];
  uint8_t uuid[16];
  uint64_t size;		/* device bytes */
  uint64_t data_offset;
  uint64_t csum_offset;		/* checksum slots (format.h) */
  uint64_t extent_count;
  char class[CONFIG_CLASS_MAX];
  char domain[CONFIG_DOMAIN_MAX];
  uint32_t flags;		/* FORMAT_SB_META as made (pool_init, device add);
				   the superblocks hold the current list */
  uint8_t state;		/* enum meta_dev_state */
};

/* Where one replica of one column lives. */
struct meta_extent {
  uint32_t dev;
  uint32_t ext;
};

/* State of one column, allocated and freed with its chunk, so that it
 * lives exactly as long as the extents it describes.  All but STALE is
 * runtime state owned by the data path (volume.c and resync.c).  STALE
 * is journal state: bit r is set when replica r missed a write (its
 * device was failed or the write to it failed) and cleared when a
 * rebuild copied the column to it again or moved that copy elsewhere.
 * A stale copy is never read and never written by the data path.
 * UNSYNCED is a dirty column that crash resync could not reach (no copy
 * on a usable device): nothing reads or writes it until it is resynced
 * (resync.c). */
enum meta_col_state { META_COL_CLEAN = 0, META_COL_DIRTY = 1,
                      META_COL_CLEANING = 2, META_COL_UNSYNCED = 3 };
struct meta_column {
  _Atomic (uint32_t *) csum;	/* crc32c per 4 KiB block, NULL until loaded
				   and after csum_shrink() let it go */
  _Atomic uint32_t writers;	/* writes in progress */
  _Atomic uint32_t users;	/* holders of csum (csum_hold) */
  _Atomic bool used;		/* held since the last csum_shrink() pass */
  _Atomic uint8_t state;	/* enum meta_col_state */
  _Atomic bool touched;		/* written since the last cleaner pass */
  _Atomic uint8_t stale;	/* replicas that missed writes (journal) */
};

/* True if copy R of column COL of C missed writes. */
static inline bool
meta_copy_stale (struct meta_column *col, uint32_t r)
{
  return (atomic_load_explicit (&col->stale, memory_order_acquire) >> r) & 1;
}

/* An allocated chunk: width * replicas extents, column-major
 * (ext[col * replicas + r]).  DIRTY has a bit per column that may hold
 * replicas which differ, or checksums on disk that do not match the data
 * (crash resync); it changes only through the journal (under its lock),
 * and is atomic because status reads it while the journal applies. */
struct meta_chunk {
  struct meta_chunk *retired;	/* next on the volume's retired list */
  uint32_t n;			/* width * replicas */
  uint32_t width;
  _Atomic uint64_t dirty;
  struct meta_column *col;	/* [width] */
  struct meta_extent ext[];
};

#define META_LEAF 1024		/* chunk slots per map leaf */

struct meta_map_top {
  size_t nleaves;
  _Atomic (_Atomic (struct meta_chunk *) *) leaves[];
};

struct meta_volume {
  uint32_t id;
  char name[FORMAT_NAME_MAX];
  uint64_t size;
  uint32_t replicas;
  uint32_t width;
  uint64_t unit;
  char class[CONFIG_CLASS_MAX];
  uint64_t chunk_size;		/* width * extent_size */
  _Atomic (struct meta_map_top *) map;
  struct meta_map_top *retired[64];	/* old tops, freed with the volume */
  unsigned nretired;
  /* Chunks replaced by EXT_REPLACE (lock-free readers may still hold
   * them); their column state now belongs to the new chunk.  Protected
   * by meta->lock; freed by meta_volume_reap() or with the volume. */
  struct meta_chunk *retired_chunks;
  _Atomic uint64_t nchunks;	/* allocated chunks */
  /* The next three are protected by meta->lock. */
  int users;			/* open data-path handles */
  int job_users[3];		/* of them, VOLUME_JOB_* (volume.h) */
  bool busy;			/* being deleted or shrunk: no new handles */
  void *dp;			/* data-path state, owned by volume.c */
};

/* A long job's record (scrub, rebuild), kept in the journal so that a
 * job stopped by anything, kill -9 included, can continue where it was
 * and status can show the last results.  Positions are a volume id and
 * a chunk index: everything before them is done. */
enum meta_job_kind { META_JOB_SCRUB = 0, META_JOB_REBUILD = 1,
                     META_JOB_KINDS = 2 };
enum meta_job_state { META_JOB_NONE = 0, META_JOB_RUNNING = 1,
                      META_JOB_DONE = 2, META_JOB_FAILED = 3 };
#define META_JOB_REPAIR 0x1	/* scrub --repair */
struct meta_job {
  uint8_t state;		/* enum meta_job_state */
  uint8_t flags;
  uint32_t vol;			/* the volume id it is limited to, 0: all */
  uint32_t pos_vol;		/* where it is */
  uint64_t pos_chunk;
  uint64_t started, updated;	/* Unix seconds */
  uint64_t done, total;		/* bytes (scrub) or columns (rebuild) */
  uint64_t blocks;		/* blocks checked or copied */
  uint64_t errors;		/* bad blocks found (all copies counted) */
  uint64_t repaired;		/* bad copies rewritten */
  uint64_t unrepaired;		/* blocks left alone: no copy to trust */
};

/* Blocks [blk, blk + nblk) of volume VOL whose only current copy was in
 * a cache that was lost: reads fail until they are written again. */
struct meta_lost {
  uint32_t vol;
  uint64_t blk, nblk;
};

struct meta {
  pthread_mutex_t lock;		/* protects volumes[], nvolumes, devices[].state,
				   lost[], nlost */
  uint8_t pool_uuid[16];
  char name[FORMAT_NAME_MAX];
  uint64_t extent_size;
  uint32_t next_vol_id;
  /* [META_MAX_DEVICES]; entries below ndevices are in use.  A DEV_ADD
   * fills the next entry before it raises ndevices, so a reader that
   * loads ndevices sees whole entries below it. */
  struct meta_device *devices;
  _Atomic uint32_t ndevices;
  struct meta_volume **volumes;
  size_t nvolumes;
  struct meta_job jobs[META_JOB_KINDS];	/* protected by lock */
  /* The write-back cache in use: its uuid (all zero: none).  A pool
   * with one attached refuses to open without it (pool.c). */
  uint8_t cache_uuid[16];
  struct meta_lost *lost;	/* sorted by volume and block, disjoint */
  size_t nlost;
  _Atomic size_t nlost_hint;	/* nlost, for a lock-free "none" test */
  /* Checksum arrays in memory (csum.c).  csum_lock is taken by whoever
   * installs an array and by csum_shrink() around each array it lets
   * go; shrink_lock by csum_shrink() for its whole walk, which sets
   * csum_resident to the arrays it left in memory.  csum_loads counts
   * arrays installed since. */
  pthread_mutex_t csum_lock;
  pthread_mutex_t shrink_lock;
  _Atomic uint64_t csum_resident;
  _Atomic uint64_t csum_loads;
};

/* A new, empty state (no devices, no volumes). */
struct meta *meta_new (void);
void meta_free (struct meta *m);

/* Replace the state with the checkpoint in DATA/LEN.  Returns 0, or -1
 * with EBADMSG and a message if the checkpoint is malformed. */
int meta_load (struct meta *m, const void *data, size_t len);

/* Serialise the whole state into OUT (fbuf_init_write'd by the caller). */
int meta_snapshot (struct meta *m, struct fbuf *out);

/* The most bytes a checkpoint of a pool of EXTENTS extents can take:
 * every extent allocated, with room for the devices, a few thousand
 * volumes and the job records. */
uint64_t meta_ckpt_bound (uint64_t extents);

/* Apply one journal entry.  Deterministic: the same state and entry give
 * the same result.  Returns 0, or -1 with EBADMSG if the entry is
 * malformed or does not fit the state (the caller treats that as
 * corruption). */
int meta_apply (struct meta *m, uint16_t type, const void *data, size_t len);

/* Entry encoders: fill OUT (fbuf_init_write'd by the caller). */
void meta_entry_vol_create (struct fbuf *out, uint32_t id,
                            const struct config_volume *v);
void meta_entry_vol_resize (struct fbuf *out, uint32_t id, uint64_t size);
void meta_entry_vol_delete (struct fbuf *out, uint32_t id);
void meta_entry_chunk_alloc (struct fbuf *out, uint32_t vol, uint64_t chunk,
                             uint32_t n, const struct meta_extent *ext);
void meta_entry_chunk_free (struct fbuf *out, uint32_t vol, uint64_t chunk);
void meta_entry_dev_state (struct fbuf *out, uint32_t dev, uint8_t state);
/* A DEV_ADD entry: D becomes device INDEX, which must be the next one
 * (meta->ndevices when applied); its name must be new to the pool. */
void meta_entry_dev_add (struct fbuf *out, uint32_t index,
                         const struct meta_device *d);
/* A COL_STATE entry of N items: columns MASK[i] of chunk CHUNK[i] of
 * volume VOL[i] become dirty (DIRTY) or clean. */
struct meta_col_item {
  uint32_t vol;
  uint64_t chunk;
  uint64_t mask;
};
void meta_entry_col_state (struct fbuf *out, bool dirty,
                           const struct meta_col_item *items, size_t n);

/* A STALE entry of N items: the copies MASK[i] (a bit per replica) of
 * column COL[i] of chunk CHUNK[i] of volume VOL[i] missed writes
 * (STALE) or hold the column's data again. */
struct meta_stale_item {
  uint32_t vol;
  uint64_t chunk;
  uint32_t col;
  uint8_t mask;
};
void meta_entry_stale (struct fbuf *out, bool stale,
                       const struct meta_stale_item *items, size_t n);

/* Copy SLOT of chunk CHUNK of volume VOL to extent E (rebuild). */
void meta_entry_ext_replace (struct fbuf *out, uint32_t vol, uint64_t chunk,
                             uint32_t slot, struct meta_extent e);
void meta_entry_job (struct fbuf *out, uint8_t kind,
                     const struct meta_job *j);
/* The cache with UUID attached (all zero: detached). */
void meta_entry_cache (struct fbuf *out, const uint8_t uuid[16]);
/* N ranges lost with the cache (LOST), or written again since. */
void meta_entry_lost (struct fbuf *out, bool lost,
                      const struct meta_lost *items, size_t n);

/* Does any block of [BLK, BLK + NBLK) of volume VOL lie in a lost
 * range?  Takes m->lock unless nothing is lost. */
bool meta_lost_any (struct meta *m, uint32_t vol, uint64_t blk,
                    uint64_t nblk);

/* Free the chunks V retired by EXT_REPLACE.  The caller makes sure no
 * reader still holds them (volume_quiesce()). */
void meta_volume_reap (struct meta *m, struct meta_volume *v);

const char *meta_job_state_name (uint8_t state);

/* Lookups; the caller holds m->lock or is the only thread. */
struct meta_volume *meta_find_volume (struct meta *m, const char *name);
struct meta_volume *meta_find_volume_id (struct meta *m, uint32_t id);

/* The chunk at index IDX of V, or NULL if unallocated.  Lock-free. */
struct meta_chunk *meta_chunk_get (struct meta_volume *v, uint64_t idx);

/* Number of chunk slots of V (size rounded up to whole chunks). */
uint64_t meta_volume_nchunks (const struct meta_volume *v);

/* A copy of the list of volumes (*N of them), taken under m->lock, for
 * a walk of their chunk maps; the caller frees it.  The volumes stay
 * valid while the caller holds the pool's walk lock.  NULL with ENOMEM
 * and a message. */
struct meta_volume **meta_volumes_copy (struct meta *m, size_t *n);

/* Call FN for every allocated chunk of V, in index order.  Stops and
 * returns FN's value when it is non-zero. */
int meta_foreach_chunk (struct meta_volume *v,
                        int (*fn) (void *opaque, uint64_t idx,
                                   struct meta_chunk *c),
                        void *opaque);

const char *meta_dev_state_name (uint8_t state);

#endif /* STRATA_META_H */
