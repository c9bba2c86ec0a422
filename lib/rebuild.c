/* strata: rebuild (see rebuild.h).
 *
 * Design notes
 * ------------
 * Order of one column: hold it against writes (volume_column_hold), mark
 * it dirty as a writer would (resync_write_begin: the cleaner then leaves
 * it alone, and a crash before the end resyncs it), read a surviving
 * copy verifying each block (a bad block comes from another copy; the
 * reads bypass the page cache, so the copy made is what the disk holds
 * and the cache keeps what clients read), and
 * for each lost copy: allocate an extent, write the data and the
 * checksum slot, flush that device, and only then commit EXT_REPLACE.
 * The journal entry swaps the chunk pointer (meta.h); writers that
 * waited for the hold look the chunk up again and write the new copy
 * too.  A crash before the commit leaves the old state and an extent
 * that is free again at the next open.
 *
 * REBUILD_WORKERS threads take columns from the sorted list, so that
 * device I/O and the journal commits of several columns overlap (their
 * commits share group commits).  Each holds one column at a time.  The
 * counts, the move list and the rate limit's count are under b->lock;
 * a worker sleeps for the rate limit after dropping it, since the others
 * may be waiting for it with a column held.
 *
 * The old chunk headers are freed and the replaced extents returned at
 * the end, after volume_quiesce() has waited out every request that
 * might hold them.  Replaced extents on a device still in use (a drain)
 * are zeroed first; those on failed or removed devices are never
 * allocated again.  A crash between an EXT_REPLACE commit and that
 * zeroing leaves a free extent with old data on a drained device that
 * stayed up; a draining state kept in the journal would close that.
 *
 * A plain rebuild first moves the metadata replicas of failed and
 * removed devices (pool_meta_move): the journal's redundancy matters
 * more than any one column's, and a move is one checkpoint.
 */
#include <endian.h>
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "crc32c.h"
#include "csum.h"
#include "error.h"
#include "job.h"
#include "rebuild.h"
#include "resync.h"
#include "util.h"
#include "volume.h"

#define REBUILD_IO (1u << 20)	/* bytes per device request */
#define REBUILD_WORKERS 4	/* columns copied at once */
#define REBUILD_LIST_MAX 100	/* moves listed in the text report */

struct item {
  uint32_t vi;			/* index into vols[] */
  uint64_t idx;
  uint32_t col;
  uint32_t alive;		/* copies on devices not lost */
};

struct move {
  uint32_t vi;
  uint64_t idx;
  uint32_t col;
  struct meta_extent from, to;
  size_t ord;			/* its column's place in items[], and */
  uint32_t r;			/* which copy */
};

struct rebuild {
  pthread_mutex_t lock;		/* protects everything below but items */
  struct pool *p;
  const struct rebuild_opts *o;
  struct job job;
  struct job_volume *vols;
  size_t nvols;
  struct volume **handles;	/* [nvols], opened on first use */
  bool *touched;		/* [nvols] since the last reap */
  struct item *items;
  size_t nitems, capitems;
  struct meta_extent *old;	/* extents to return after the reap */
  size_t nold, capold;
  struct util_first moves;	/* the first in items[] order (move_cmp) */
  uint64_t copied, bad_blocks, no_good, no_space, no_copy;
  uint64_t resynced;		/* stale copies copied in place */
  int err;
  size_t next;			/* the next item to take */
  bool stop;			/* a worker failed */
  char why[256];		/* its error */
  struct meta_job base;		/* the counts of the run continued */
  /* Metadata replicas moved off lost devices, and those that could not
   * be (restore_metadata). */
  uint32_t meta_from[FORMAT_META_MAX], meta_to[FORMAT_META_MAX];
  uint32_t nmeta_moves, meta_stuck;
};

static bool
lost (struct rebuild *b, uint32_t dev)
{
  uint8_t st = pool_meta (b->p)->devices[dev].state;

  return st == META_DEV_FAILED || st == META_DEV_REMOVED
    || (int32_t) dev == b->o->drain;
}

/* What copy R of column COL of C needs: nothing, a new extent (its
 * device is lost), or the column copied to it again (it is stale on a
 * usable device).  Resyncing one device, only its stale copies count. */
enum need { KEEP, MOVE, RECOPY };

static enum need
need (struct rebuild *b, struct meta_chunk *c, uint32_t R, uint32_t col,
      uint32_t r)
{
  uint32_t dev = c->ext[col * R + r].dev;
  bool stale = meta_copy_stale (&c->col[col], r)
    && pool_device_usable (b->p, dev);

  if (b->o->resync >= 0)
    return stale && (int32_t) dev == b->o->resync ? RECOPY : KEEP;
  if (lost (b, dev))
    return MOVE;
  return stale ? RECOPY : KEEP;
}

/* ---- the work list ---- */

struct collect {
  struct rebuild *b;
  uint32_t vi, replicas;
};

static int
collect_chunk (void *opaque, uint64_t idx, struct meta_chunk *c)
{
  struct collect *cc = opaque;
  struct rebuild *b = cc->b;
  uint32_t R = cc->replicas;

  for (uint32_t col = 0; col < c->width; col++) {
    uint32_t gone = 0;
    for (uint32_t r = 0; r < R; r++)
      gone += need (b, c, R, col, r) != KEEP;
    if (!gone)
      continue;
    if (b->nitems == b->capitems) {
      size_t cap = b->capitems ? b->capitems * 2 : 256;
      struct item *n = realloc (b->items, cap * sizeof *n);
      if (!n) {
        b->err = ENOMEM;
        return 1;
      }
      b->items = n;
      b->capitems = cap;
    }
    b->items[b->nitems++] = (struct item) { cc->vi, idx, col, R - gone };
  }
  return 0;
}

static int
by_alive (const void *x, const void *y)
{
  const struct item *a = x, *b = y;

  if (a->alive != b->alive)
    return a->alive < b->alive ? -1 : 1;
  if (a->vi != b->vi)
    return a->vi < b->vi ? -1 : 1;
  if (a->idx != b->idx)
    return a->idx < b->idx ? -1 : 1;
  return a->col < b->col ? -1 : a->col > b->col;
}

static int
collect (struct rebuild *b)
{
  struct meta *m = pool_meta (b->p);

  pool_walk_lock (b->p);
  for (size_t i = 0; i < b->nvols && !b->err; i++) {
    struct meta_volume *mv;
    struct collect cc = { b, i, 0 };
    pthread_mutex_lock (&m->lock);
    mv = meta_find_volume_id (m, b->vols[i].id);
    pthread_mutex_unlock (&m->lock);
    if (!mv)
      continue;
    cc.replicas = mv->replicas;
    meta_foreach_chunk (mv, collect_chunk, &cc);
  }
  pool_walk_unlock (b->p);
  if (b->err)
    return strata_error (b->err, "out of memory");
  if (b->nitems > 1)		/* qsort must not be given NULL */
    qsort (b->items, b->nitems, sizeof *b->items, by_alive);
  return 0;
}

/* ---- one column ---- */

static int
push (void **arr, size_t *n, size_t *cap, size_t size, const void *x)
{
  if (*n == *cap) {
    size_t c = *cap ? *cap * 2 : 64;
    void *a = realloc (*arr, c * size);
    if (!a)
      return strata_error (ENOMEM, "out of memory");
    *arr = a;
    *cap = c;
  }
  memcpy ((char *) *arr + *n * size, x, size);
  (*n)++;
  return 0;
}

/* The report's order, the one a single worker would copy in: items[],
 * then replica. */
static int
move_cmp (const void *a, const void *b)
{
  const struct move *x = a, *y = b;

  if (x->ord != y->ord)
    return x->ord < y->ord ? -1 : 1;
  return x->r < y->r ? -1 : x->r > y->r;
}

/* Read the column from SRC (a mask of replicas that can be read) into
 * BUF, each block from a copy that matches CS where there is one.
 * Returns device bytes read, or -1 if nothing could be read. */
static int64_t
read_column (struct rebuild *b, struct meta_chunk *c, uint32_t col,
             uint32_t R, uint32_t src, const uint32_t *cs, char *buf)
{
  struct pool *p = b->p;
  uint64_t es = pool_meta (p)->extent_size;
  size_t nb = es / STRATA_BLOCK;
  int64_t io = 0;
  char *blk = NULL;
  int first = -1;

  /* The whole column from the first copy that reads. */
  for (uint32_t r = 0; r < R && first < 0; r++) {
    struct meta_extent e = c->ext[col * R + r];
    struct dev_req rq[64];
    size_t nr = 0;
    bool ok = true;
    if (!(src & (1u << r)))
      continue;
    for (uint64_t o = 0; o < es; o += REBUILD_IO) {
      rq[nr++] = (struct dev_req) {
        .dev = pool_device (p, e.dev), .op = DEV_READ, .media = true,
        .buf = buf + o, .len = MIN (REBUILD_IO, es - o),
        .off = pool_extent_offset (p, e, o),
      };
      if (nr == ARRAY_SIZE (rq) || o + REBUILD_IO >= es) {
        device_submit (rq, nr);
        for (size_t k = 0; k < nr; k++)
          if (rq[k].res != 0) {
            char why[200];
            snprintf (why, sizeof why, "rebuild read failed: %s",
                      strerror (-rq[k].res));
            pool_device_read_error (p, e.dev, why);
            ok = false;
          }
        nr = 0;
      }
    }
    io += es;
    if (ok)
      first = r;
    else
      src &= ~(1u << r);
  }
  if (first < 0)
    return -1;

  /* Blocks that do not match come from another copy. */
  for (size_t bl = 0; bl < nb; bl++) {
    bool fixed = false;
    if (crc32c (0, buf + bl * STRATA_BLOCK, STRATA_BLOCK) == cs[bl])
      continue;
    pthread_mutex_lock (&b->lock);
    b->bad_blocks++;
    pthread_mutex_unlock (&b->lock);
    pool_device_csum_error (p, c->ext[col * R + first].dev);
    if (!blk && !(blk = device_alloc_buf (STRATA_BLOCK)))
      return strata_error (ENOMEM, "out of memory");
    for (uint32_t r = 0; r < R && !fixed; r++) {
      struct meta_extent e = c->ext[col * R + r];
      if (!(src & (1u << r)) || (int) r == first)
        continue;
      io += STRATA_BLOCK;
      if (device_pread (pool_device (p, e.dev), blk, STRATA_BLOCK,
                        pool_extent_offset (p, e, bl * STRATA_BLOCK)) == 0
          && crc32c (0, blk, STRATA_BLOCK) == cs[bl]) {
        memcpy (buf + bl * STRATA_BLOCK, blk, STRATA_BLOCK);
        fixed = true;
      }
    }
    if (!fixed) {
      pthread_mutex_lock (&b->lock);
      b->no_good++;		/* copied as it is: reads of it stay EIO */
      pthread_mutex_unlock (&b->lock);
    }
  }
  free (blk);
  return io;
}

/* Write BUF and the checksums CS to extent E, durably.  Returns 0 or
 * -1 (ENOSPC if its device had no room for the writes, else EIO). */
static int
write_copy (struct rebuild *b, struct meta_extent e, const char *buf,
            const uint32_t *cs)
{
  struct pool *p = b->p;
  uint64_t es = pool_meta (p)->extent_size;
  uint64_t slotsz = format_csum_slot (es);
  struct device *d = pool_device (p, e.dev);
  struct dev_req rq[65];
  char *slot = device_alloc_buf (slotsz);
  uint32_t *le = (uint32_t *) slot;
  int r = 0;

  if (!slot)
    return strata_error (ENOMEM, "out of memory");
  memset (slot, 0, slotsz);
  for (size_t k = 0; k < es / STRATA_BLOCK; k++)
    le[k] = htole32 (cs[k]);
  for (uint64_t o = 0; o < es && r == 0; o += 64 * (uint64_t) REBUILD_IO) {
    size_t nr = 0;
    for (uint64_t q = o; q < MIN (es, o + 64 * (uint64_t) REBUILD_IO);
         q += REBUILD_IO)
      rq[nr++] = (struct dev_req) {
        .dev = d, .op = DEV_WRITE, .buf = (char *) buf + q,
        .len = MIN (REBUILD_IO, es - q), .off = pool_extent_offset (p, e, q),
      };
    if (o == 0)
      rq[nr++] = (struct dev_req) { .dev = d, .op = DEV_WRITE, .buf = slot,
                                    .len = slotsz,
                                    .off = csum_slot_offset (p, e) };
    if (device_submit (rq, nr) == -1)
      r = -1;
  }
  bool full = r == -1 && (errno == ENOSPC || errno == EDQUOT);
  /* A flush that fails is a device fault whatever its error: writes it
   * had acknowledged may be gone. */
  if (r == 0 && device_flush (d) == -1)
    r = -1;
  if (full)
    strata_error (ENOSPC, "no space on device %s for the copy",
                  pool_meta (p)->devices[e.dev].name);
  else if (r == -1)
    strata_error (EIO, "writing the new copy to device %s failed",
                  pool_meta (p)->devices[e.dev].name);
  free (slot);
  return r;
}

static struct volume *
handle (struct rebuild *b, uint32_t vi)
{
  struct volume *v;

  pthread_mutex_lock (&b->lock);
  if (!b->handles[vi])
    b->handles[vi] = volume_open_job (b->p, b->vols[vi].name,
                                      VOLUME_JOB_REBUILD);
  v = b->handles[vi];
  pthread_mutex_unlock (&b->lock);
  return v;
}

static void
count (struct rebuild *b, uint64_t *what)
{
  pthread_mutex_lock (&b->lock);
  (*what)++;
  pthread_mutex_unlock (&b->lock);
}

/* write_copy() to device DEV failed for column IT of MV.  A device out
 * of space stays in use (the column waits for a rebuild once it has
 * room, WHAT says how it is left); any other failure fails it. */
static void
copy_failed (struct rebuild *b, const struct meta_volume *mv,
             const struct item *it, uint32_t dev, const char *what)
{
  int e = errno;
  char why[256];

  snprintf (why, sizeof why, "%s", strata_last_error ());
  if (e == ENOSPC) {
    char note[200];
    snprintf (note, sizeof note, "volume %s chunk %" PRIu64 " column %"
              PRIu32 ": a rebuild found no space", mv->name, it->idx,
              it->col);
    pool_device_no_space (b->p, dev, note);
    fprintf (stderr, "strata: rebuild: volume %s chunk %" PRIu64 " column %"
             PRIu32 ": %s; %s\n", mv->name, it->idx, it->col, why, what);
  } else
    pool_device_fail (b->p, dev, why);
  count (b, &b->no_space);
}

/* Give column IT its lost copies, through BUF (an extent's size, the
 * worker's own).  Returns device bytes moved, or -1 on a failure that
 * stops the rebuild. */
static int64_t
rebuild_column (struct rebuild *b, const struct item *it, char *buf)
{
  struct pool *p = b->p;
  struct volume *v = handle (b, it->vi);
  struct meta_volume *mv;
  uint64_t es = pool_meta (p)->extent_size;
  struct meta_extent keep[16];
  uint32_t nkeep = 0, src = 0, wanted = 0, R;
  struct meta_chunk *c;
  uint32_t *cs;
  int64_t io = 0, k;
  bool begun = false;

  if (!v)
    return 0;			/* the volume went away */
  mv = volume_meta (v);
  R = mv->replicas;
  if (volume_column_hold (v, it->idx, it->col, 0, es, &c) == -1)
    return -1;
  if (!c)
    return 0;			/* freed meanwhile */
  for (uint32_t r = 0; r < R; r++) {
    enum need nd = need (b, c, R, it->col, r);
    /* A draining device's copy is still a good source. */
    if (pool_copy_readable (p, c, R, it->col, r))
      src |= 1u << r;
    if (nd != MOVE)
      keep[nkeep++] = c->ext[it->col * R + r];
    if (nd != KEEP)
      wanted++;
  }
  if (wanted == 0)
    goto out;			/* done meanwhile */
  if (!src) {
    count (b, &b->no_copy);
    fprintf (stderr, "strata: rebuild: volume %s chunk %" PRIu64 " column %"
             PRIu32 ": no copy left to rebuild from\n", mv->name, it->idx,
             it->col);
    goto out;
  }
  begun = true;			/* resync_write_end even if this fails */
  if (resync_write_begin (pool_resync (p), mv, it->idx, c, it->col) == -1) {
    io = -1;
    goto out;
  }
  if (!(cs = csum_get (p, mv, c, it->col))) {
    io = -1;
    goto out;
  }
  if ((k = read_column (b, c, it->col, R, src, cs, buf)) == -1) {
    count (b, &b->no_copy);
    fprintf (stderr, "strata: rebuild: volume %s chunk %" PRIu64 " column %"
             PRIu32 ": no copy could be read\n", mv->name, it->idx, it->col);
    goto out;
  }
  io += k;

  for (uint32_t r = 0; r < R; r++) {
    struct meta_extent from, to;
    bool placed;
    struct move mo;
    enum need nd;
    c = meta_chunk_get (mv, it->idx);
    from = c->ext[it->col * R + r];
    nd = need (b, c, R, it->col, r);
    if (nd == KEEP)
      continue;
    if (nd == RECOPY) {
      /* In place: the copy is current again once its data and checksum
       * slot are durable. */
      struct meta_stale_item si = { mv->id, it->idx, it->col, 1u << r };
      if (write_copy (b, from, buf, cs) == -1) {
        copy_failed (b, mv, it, from.dev, "it stays stale");
        continue;
      }
      io += es;
      if (pool_commit_stale (p, false, &si, 1) == -1) {
        io = -1;
        goto out;
      }
      mo = (struct move) { it->vi, it->idx, it->col, from, from,
                           (size_t) (it - b->items), r };
      pthread_mutex_lock (&b->lock);
      b->copied += es;
      b->resynced++;
      (void) util_first_offer (&b->moves, &mo);
      pthread_mutex_unlock (&b->lock);
      continue;
    }
    placed = alloc_replica (pool_alloc (p), mv->class, keep, nkeep,
                            b->o->prefer, &to) == 0;
    if (placed && pool_reserve_extents (p, &to, 1) == -1) {
      alloc_release (pool_alloc (p), &to, 1);
      placed = false;
    }
    if (!placed) {
      count (b, &b->no_space);
      fprintf (stderr, "strata: rebuild: volume %s chunk %" PRIu64
               " column %" PRIu32 ": %s\n", mv->name, it->idx, it->col,
               strata_last_error ());
      continue;
    }
    if (write_copy (b, to, buf, cs) == -1) {
      alloc_release (pool_alloc (p), &to, 1);
      copy_failed (b, mv, it, to.dev, "the copy is still missing");
      continue;
    }
    io += es;
    if (pool_commit_ext_replace (p, mv, it->idx, it->col * R + r, to) == -1) {
      alloc_release (pool_alloc (p), &to, 1);
      io = -1;
      goto out;
    }
    keep[nkeep++] = to;
    mo = (struct move) { it->vi, it->idx, it->col, from, to,
                         (size_t) (it - b->items), r };
    pthread_mutex_lock (&b->lock);
    b->copied += es;
    b->touched[it->vi] = true;
    (void) util_first_offer (&b->moves, &mo);
    if (push ((void **) &b->old, &b->nold, &b->capold, sizeof from, &from)
        == -1)
      io = -1;
    pthread_mutex_unlock (&b->lock);
    if (io == -1)
      goto out;
  }
 out:
  if (begun)
    resync_write_end (c, it->col);	/* the column state is shared */
  volume_column_release (v, it->idx, it->col, 0, es);
  return io;
}

/* Zero the old extents on devices still in use (a device being drained)
 * and flush them, so that they read as zeros before they are free again
 * (pool.c's invariant: a drain that is refused makes the device usable
 * again).  Extents on failed or removed devices are never allocated
 * again and are left as they are.  Returns false if an extent on a live
 * device could not be zeroed: the caller then keeps them all. */
static bool
zero_old (struct rebuild *b)
{
  struct pool *p = b->p;
  /* A flush per device zeroed: no more requests than extents. */
  struct dev_req *rq = calloc (b->nold + 1, sizeof *rq);
  bool *touched = calloc (META_MAX_DEVICES, sizeof *touched);
  size_t nr = 0;
  bool ok = rq && touched;

  for (size_t i = 0; i < b->nold && ok; i++) {
    struct meta_extent e = b->old[i];
    if (!pool_device_usable (p, e.dev))
      continue;
    rq[nr++] = (struct dev_req) {
      .dev = pool_device (p, e.dev), .op = DEV_ZERO,
      .len = pool_meta (p)->extent_size,
      .off = pool_extent_offset (p, e, 0),
    };
    touched[e.dev] = true;
  }
  if (ok && nr > 0) {
    ok = device_submit (rq, nr) == 0;
    /* Punched: their groups are reserved again when next allocated
     * from (they are released only after this). */
    for (size_t i = 0; i < b->nold; i++)
      pool_unreserve_extent (p, b->old[i]);
    nr = 0;
    for (uint32_t d = 0; ok && d < META_MAX_DEVICES; d++)
      if (touched[d])
        rq[nr++] = (struct dev_req) { .dev = pool_device (p, d),
                                      .op = DEV_FLUSH };
    ok = ok && device_submit (rq, nr) == 0;
  }
  free (rq);
  free (touched);
  return ok;
}

/* Free the chunk headers retired since the last reap and return the
 * replaced extents, once no request can hold them. */
static void
reap (struct rebuild *b)
{
  struct meta *m = pool_meta (b->p);

  for (size_t i = 0; i < b->nvols; i++)
    if (b->touched[i] && b->handles[i])
      volume_quiesce (b->handles[i]);
  pool_walk_lock (b->p);
  for (size_t i = 0; i < b->nvols; i++)
    if (b->touched[i] && b->handles[i]) {
      meta_volume_reap (m, volume_meta (b->handles[i]));
      b->touched[i] = false;
    }
  pool_walk_unlock (b->p);
  if (zero_old (b))
    alloc_release (pool_alloc (b->p), b->old, b->nold);
  else
    fprintf (stderr, "strata: rebuild: the replaced extents could not be "
             "zeroed; they stay out of use until the pool is opened "
             "again\n");
  b->nold = 0;
}

/* ---- the run ---- */

static void
stop_with (struct rebuild *b, const char *why)
{
  if (!b->stop)
    snprintf (b->why, sizeof b->why, "%s", why);
  b->stop = true;
}

static void *
worker (void *opaque)
{
  struct rebuild *b = opaque;
  /* One column buffer for the worker's whole run: a fresh huge page
   * costs a fault that clears it, once per worker instead of per
   * column. */
  char *buf = device_alloc_huge (pool_meta (b->p)->extent_size);

  if (!buf) {
    pthread_mutex_lock (&b->lock);
    stop_with (b, "out of memory for a column buffer");
    pthread_mutex_unlock (&b->lock);
  }
  while (buf) {
    size_t i;
    int64_t io;
    double due = 0;

    pthread_mutex_lock (&b->lock);
    if (b->stop || b->next >= b->nitems || job_cancelled (&b->job)) {
      pthread_mutex_unlock (&b->lock);
      break;
    }
    i = b->next++;
    pthread_mutex_unlock (&b->lock);
    io = rebuild_column (b, &b->items[i], buf);
    csum_shrink (b->p, false);	/* as scrub does */
    pthread_mutex_lock (&b->lock);
    if (io == -1)
      stop_with (b, strata_last_error ());
    else {
      struct meta_job *r = &b->job.rec;
      r->done++;
      r->blocks += io / STRATA_BLOCK;
      r->errors = b->base.errors + b->bad_blocks;
      r->repaired = b->base.repaired + b->bad_blocks - b->no_good;
      r->unrepaired = b->base.unrepaired + b->no_space + b->no_copy;
      /* Under the lock: the rate limit holds for all workers together.
       * The sleep is outside it (job.h). */
      due = job_account (&b->job, io);
      if (job_save (&b->job, false) == -1)
        stop_with (b, strata_last_error ());
    }
    pthread_mutex_unlock (&b->lock);
    job_pace (&b->job, due);
  }
  free (buf);
  device_thread_exit ();	/* this thread's io_uring */
  return NULL;
}

/* Device I is a member only away (missing, not failed): rebuild leaves
 * its copies for it to come back. */
static bool
away (struct pool *p, uint32_t i)
{
  uint8_t st = pool_meta (p)->devices[i].state;

  return (st == META_DEV_UP || st == META_DEV_DEGRADED) && !pool_device (p, i);
}

static void
report (struct rebuild *b, FILE *out, bool finished, bool resumed)
{
  struct meta *m = pool_meta (b->p);
  struct meta_job *r = &b->job.rec;
  double secs = job_elapsed (&b->job);
  uint64_t left = b->no_space + b->no_copy;
  char a[32], s[32];

  util_first_sort (&b->moves);
  if (b->o->background) {
    fprintf (out, "strata: pool %s: device %s: %" PRIu64 " of %" PRIu64
             " columns it missed copied again (%s in %.1f s)%s\n", m->name,
             m->devices[b->o->resync].name, r->done, r->total,
             util_human_size (b->copied, a, sizeof a), secs,
             !finished && b->o->quit
             && atomic_load (b->o->quit) == RESYNC_CATCH_YIELD
             ? "; stopped for a rebuild started by a command, which copies "
             "the rest"
             : !finished ? "; stopped, the rest stay stale (not read) until "
             "strata device add or rebuild"
             : left ? "; some have no current copy to read and stay stale "
             "(not read)" : "; it is up to date");
    fflush (out);
    return;
  }
  if (b->o->json) {
    fprintf (out, "{\"job\":\"rebuild\",\"state\":\"%s\",\"resumed\":%s,"
             "\"columns\":%" PRIu64 ",\"total\":%" PRIu64 ",\"bytes\":%"
             PRIu64 ",\"bad_blocks\":%" PRIu64 ",\"no_good_copy\":%" PRIu64
             ",\"no_space\":%" PRIu64 ",\"no_copy_left\":%" PRIu64
             ",\"resynced\":%" PRIu64 ",\"seconds\":%.3f,\"device_bytes\":%"
             PRIu64 ",\"moves\":[",
             finished ? "finished" : "interrupted",
             resumed ? "true" : "false", r->done, r->total, b->copied,
             b->bad_blocks, b->no_good, b->no_space, b->no_copy, b->resynced,
             secs, b->job.io);
    for (size_t i = 0; i < b->moves.n; i++) {
      struct move *mo = (struct move *) b->moves.items + i;
      fprintf (out, "%s{\"volume\":\"%s\",\"chunk\":%" PRIu64 ",\"column\":%"
               PRIu32 ",\"from\":[\"%s\",%" PRIu32 "],\"to\":[\"%s\",%"
               PRIu32 "]}", i ? "," : "", b->vols[mo->vi].name, mo->idx,
               mo->col, m->devices[mo->from.dev].name, mo->from.ext,
               m->devices[mo->to.dev].name, mo->to.ext);
    }
    fprintf (out, "],\"moves_dropped\":%zu,\"metadata_moves\":[",
             b->moves.dropped);
    for (uint32_t i = 0; i < b->nmeta_moves; i++)
      fprintf (out, "%s{\"from\":\"%s\",\"to\":\"%s\"}", i ? "," : "",
               m->devices[b->meta_from[i]].name,
               m->devices[b->meta_to[i]].name);
    fprintf (out, "],\"metadata_stuck\":%" PRIu32 ",\"missing_devices\":[",
             b->meta_stuck);
    for (uint32_t i = 0, k = 0; i < m->ndevices; i++)
      if (away (b->p, i))
        fprintf (out, "%s\"%s\"", k++ ? "," : "", m->devices[i].name);
    fprintf (out, "]}\n");
    return;
  }
  fprintf (out, "rebuild %s: %" PRIu64 " of %" PRIu64 " columns done, %s "
           "copied in %.1f s (%s/s)%s\n",
           finished ? "finished" : "interrupted", r->done, r->total,
           util_human_size (b->copied, a, sizeof a), secs,
           util_human_size (secs > 0 ? b->job.io / secs : 0, s, sizeof s),
           resumed ? ", continuing an interrupted rebuild" : "");
  for (uint32_t i = 0; i < b->nmeta_moves; i++)
    fprintf (out, "  metadata replica on %s (%s) is now on %s\n",
             m->devices[b->meta_from[i]].name,
             meta_dev_state_name (m->devices[b->meta_from[i]].state),
             m->devices[b->meta_to[i]].name);
  for (size_t i = 0; i < b->moves.n; i++) {
    struct move *mo = (struct move *) b->moves.items + i;
    if (mo->from.dev == mo->to.dev && mo->from.ext == mo->to.ext) {
      fprintf (out, "  volume %s chunk %" PRIu64 " column %" PRIu32 ": "
               "stale copy on %s, extent %" PRIu32 ", copied again\n",
               b->vols[mo->vi].name, mo->idx, mo->col,
               m->devices[mo->to.dev].name, mo->to.ext);
      continue;
    }
    fprintf (out, "  volume %s chunk %" PRIu64 " column %" PRIu32 ": copy "
             "on %s (%s) is now on %s, extent %" PRIu32 "\n",
             b->vols[mo->vi].name, mo->idx, mo->col,
             m->devices[mo->from.dev].name,
             meta_dev_state_name (m->devices[mo->from.dev].state),
             m->devices[mo->to.dev].name, mo->to.ext);
  }
  if (b->moves.dropped)
    fprintf (out, "  ... and %zu more copies after these\n",
             b->moves.dropped);
  if (b->resynced)
    fprintf (out, "stale copies brought up to date: %" PRIu64 "\n",
             b->resynced);
  fprintf (out, "bad blocks taken from another copy: %" PRIu64
           "; blocks with no good copy: %" PRIu64 "\n", b->bad_blocks,
           b->no_good);
  if (left)
    fprintf (out, "%" PRIu64 " columns are still missing copies (%" PRIu64
             " for want of space or a device in another domain, %" PRIu64
             " with no copy left)\n", left, b->no_space, b->no_copy);
  /* Copies on a member that is only away are not replaced (it may come
   * back, with them): say so, since status calls its columns degraded. */
  for (uint32_t i = 0; i < m->ndevices; i++)
    if (away (b->p, i))
      fprintf (out, "device %s is missing (not failed): its copies are "
               "left for it to come back; 'strata device fail %s' lets "
               "rebuild replace them\n", m->devices[i].name,
               m->devices[i].name);
}

/* Give every metadata replica on a failed or removed device a new home
 * on a usable device that holds none (pool_meta_move).  Returns 0, or -1
 * if the journal could not be changed. */
static int
restore_metadata (struct rebuild *b, FILE *err)
{
  struct pool *p = b->p;
  struct meta *m = pool_meta (p);

  for (uint32_t d = 0; d < pool_ndevices (p); d++) {
    uint8_t st = m->devices[d].state;
    int to;
    if ((st != META_DEV_FAILED && st != META_DEV_REMOVED)
        || !pool_meta_member (p, d))
      continue;
    if ((to = pool_meta_pick (p, d, -1)) < 0) {
      b->meta_stuck++;
      fprintf (err, "strata: rebuild: the metadata replica on device %s (%s) "
               "has nowhere to go: every usable device holds one already, "
               "or has a metadata area too small for the pool's\n",
               m->devices[d].name, meta_dev_state_name (st));
      continue;
    }
    if (pool_meta_move (p, d, to) == -1)
      return -1;
    if (b->nmeta_moves < FORMAT_META_MAX) {
      b->meta_from[b->nmeta_moves] = d;
      b->meta_to[b->nmeta_moves++] = to;
    }
  }
  return 0;
}

/* A failed device that holds no copy after a full rebuild has been
 * replaced: mark it removed, so that it is refused if it comes back (its
 * superblock still names it as a member).  Returns 0 or -1. */
static int
retire_replaced (struct rebuild *b, FILE *out)
{
  struct pool *p = b->p;
  struct meta *m = pool_meta (p);

  for (uint32_t d = 0; d < pool_ndevices (p); d++) {
    if (m->devices[d].state != META_DEV_FAILED
        || alloc_used_count (pool_alloc (p), d) != 0
        || pool_meta_member (p, d))
      continue;
    if (pool_device_set_state (p, d, META_DEV_REMOVED) == -1)
      return -1;
    if (!b->o->json)
      fprintf (out, "device %s holds no copies any more: marked removed "
               "(replaced); it cannot rejoin the pool\n", m->devices[d].name);
  }
  return 0;
}

int
rebuild_run (struct pool *p, const struct rebuild_opts *o, FILE *out,
             FILE *err)
{
  struct meta *m = pool_meta (p);
  struct rebuild b = { .lock = PTHREAD_MUTEX_INITIALIZER, .p = p, .o = o,
                       .moves = { .max = REBUILD_LIST_MAX,
                                  .size = sizeof (struct move),
                                  .cmp = move_cmp } };
  struct meta_job prev;
  ssize_t nv;
  bool finished = false, resumed = false;
  int ret = -1;

  if (!pool_writable (p))
    return strata_error (EROFS, "rebuild needs the pool open for writing");
  if (!pool_job_claim (p, META_JOB_REBUILD)
      && (o->background || !pool_resync (p)
          || !resync_catch_yield (pool_resync (p))
          || !pool_job_claim (p, META_JOB_REBUILD)))
    return strata_error (EBUSY, "a rebuild is already running on pool %s "
                         "(see strata status)", m->name);
  if ((nv = job_volumes (p, 0, &b.vols)) == -1)
    goto out;
  b.nvols = nv;
  b.handles = calloc (nv + 1, sizeof *b.handles);
  b.touched = calloc (nv + 1, sizeof *b.touched);
  if (!b.handles || !b.touched) {
    strata_error (ENOMEM, "out of memory");
    goto out;
  }
  /* The journal's redundancy first: one checkpoint per replica moved. */
  if (o->resync < 0 && o->drain < 0 && restore_metadata (&b, err) == -1)
    goto out;
  /* A device back: a write that started while it was away may still be
   * on its way to marking its copy stale.  Wait for every such write, so
   * that the list below has every copy it missed (later writes write
   * it). */
  if (o->resync >= 0)
    for (size_t i = 0; i < b.nvols; i++) {
      struct volume *v = handle (&b, i);
      if (v)
        volume_quiesce (v);
    }
  if (collect (&b) == -1)
    goto out;

  if (o->background && b.nitems == 0) {
    ret = 0;
    goto out;
  }
  job_init (&b.job, p, META_JOB_REBUILD, "rebuild", "columns", o->rate, err,
            o->bar);
  b.job.quit = o->quit;
  pthread_mutex_lock (&m->lock);
  prev = m->jobs[META_JOB_REBUILD];
  pthread_mutex_unlock (&m->lock);
  if (prev.state == META_JOB_RUNNING) {
    /* What the interrupted run finished is no longer on the list. */
    resumed = true;
    b.job.rec = b.base = prev;
    b.job.rec.total = prev.done + b.nitems;
    fprintf (err, "strata: continuing the rebuild interrupted after %" PRIu64
             " of %" PRIu64 " columns; %zu left\n", prev.done, prev.total,
             b.nitems);
  }
  else
    b.job.rec = (struct meta_job) { .state = META_JOB_RUNNING,
                                    .started = job_now (),
                                    .total = b.nitems };
  b.job.done0 = b.job.rec.done;
  if (job_save (&b.job, true) == -1)
    goto out;
  if (o->background) {
    char r[32];
    fprintf (out, "strata: pool %s: device %s is back: copying again the "
             "%zu columns it missed (at most %s/s; see strata status)\n",
             m->name, m->devices[o->resync].name, b.nitems,
             util_human_size (o->rate, r, sizeof r));
    fflush (out);
  }

  {
    pthread_t t[REBUILD_WORKERS];
    int n = 0;
    for (int k = 0; k < REBUILD_WORKERS && (size_t) k < b.nitems; k++)
      if (pthread_create (&t[n], NULL, worker, &b) == 0)
        n++;
    if (n == 0 && b.nitems > 0)
      worker (&b);		/* no thread: work here */
    for (int k = 0; k < n; k++)
      pthread_join (t[k], NULL);
  }
  finished = !b.stop && b.next >= b.nitems && !job_cancelled (&b.job);
  job_progress_done (&b.job);
  reap (&b);
  if (job_end (&b.job, finished) == -1)
    goto out;
  report (&b, out, finished, resumed);
  if (!finished) {
    job_stopped (&b.job, b.stop ? b.why : NULL);
    goto out;
  }
  ret = b.no_space + b.no_copy + b.meta_stuck > 0 ? 1 : 0;
  if (ret == 0 && o->resync < 0 && o->drain < 0 && retire_replaced (&b, out)
      == -1)
    ret = -1;
 out:
  pool_job_release (p, META_JOB_REBUILD);
  for (size_t i = 0; i < b.nvols; i++)
    if (b.handles && b.handles[i])
      volume_close (b.handles[i]);
  free (b.handles);
  free (b.touched);
  free (b.vols);
  free (b.items);
  free (b.old);
  util_first_free (&b.moves);
  return ret;
}
