/* strata: the volume data path (see volume.h).
 *
 * Design notes
 * ------------
 * A request becomes a list of pieces, one per stripe unit it touches
 * (adjacent pieces in the same extent are merged).  Each piece becomes
 * one device request per replica for a write, or one for a read, and
 * all of them go to device_submit() together.
 *
 * Alignment: devices are addressed in 4 KiB blocks.  A piece whose
 * extent range or client buffer is not aligned goes through a bounce
 * buffer; for a write, the partial first and last blocks are read first
 * (read-modify-write).  Only those two blocks of a request can be
 * partial, because stripe units are multiples of 4 KiB.
 *
 * Checksums (csum.h): a write computes the crc32c of every block it
 * writes into the column's array before the data goes out, after the
 * column is marked dirty (resync.h) and the copies it skips are stale
 * (below): a write refused by the journal leaves the array as it was.
 * Overlapping writes are serialised by a range lock over the blocks
 * they touch, held across their I/O, so that data and checksum land in
 * the same order on every replica (and a partial block's
 * read-modify-write cannot lose a neighbour's bytes).  A read verifies
 * every block.  A block that does not match may only be racing a write,
 * so the read is done again with io_lock held exclusively (no write in
 * flight): from every replica, keeping the copies that match and
 * rewriting those that do not (self-healing read).  No matching copy is
 * EIO.
 *
 * Missed writes (DESIGN.md section 4): a copy a write skips (its device
 * is failed or away) or whose write fails is marked stale in the
 * journal (meta.h) before the write is acknowledged; a skipped one
 * before any copy is written, and a failed one before its device is
 * marked failed, so that a crash in between never leaves a copy that
 * differs but is not stale.  Stale copies are neither read nor written
 * until a rebuild copies the column to them (strata device add).  A
 * copy that found no space (ENOSPC, EDQUOT) is made stale the same way,
 * but its device is not failed; where no copy took a write, one such
 * copy is kept, with the checksums of what it now holds, and the write
 * fails with ENOSPC (settle_pieces).
 *
 * Chunk lifetime: the first write to a chunk allocates it (phase 1, no
 * lock held) and then does its I/O holding io_lock shared (phase 2).
 * Freeing whole chunks (trim, zero) takes io_lock exclusively, which
 * waits for every request already using their extents; the busy set
 * keeps allocation and freeing of one chunk from overlapping.
 *
 * Scratch memory (piece lists, request arrays, bounce buffers) is per
 * thread and reused, so the hot path does not call malloc.
 */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "cache.h"
#include "csum.h"
#include "crc32c.h"
#include "error.h"
#include "resync.h"
#include "util.h"
#include "volume.h"

#define RMW_DONE (1u << 31)	/* piece->ok: partial blocks read */

/* A range of blocks being written: [a0, a1) of the extent offsets of
 * column COL of chunk CHUNK. */
struct wrange {
  uint64_t chunk;
  uint32_t col;
  uint64_t a0, a1;
};

/* Shared by every handle of one volume. */
struct vshared {
  /* Held shared by each request for its whole duration, exclusively by
   * whoever frees chunks (so that no request still uses their extents).
   * Held across I/O on purpose; writer-preferring so frees progress. */
  pthread_rwlock_t io_lock;
  pthread_mutex_t busy_lock;	/* protects busy[], nbusy, cap */
  pthread_cond_t busy_cond;	/* signalled when a chunk leaves busy[] */
  uint64_t *busy;		/* chunks being allocated or freed */
  size_t nbusy, cap;
  /* The range lock (see design notes): protects ranges[], nranges,
   * rcap; writers wait on range_cond for an overlapping range to go. */
  pthread_mutex_t range_lock;
  pthread_cond_t range_cond;
  struct wrange *ranges;
  size_t nranges, rcap;
  _Atomic uint64_t rr;		/* spreads reads over replicas */
};

struct volume {
  struct pool *p;
  struct meta_volume *mv;
  struct vshared *s;
  struct cache *cache;		/* the pool's, or NULL */
  enum config_cache_mode mode;	/* how this volume uses it */
  int job;			/* VOLUME_JOB_*, or -1 for a client */
};

struct piece {
  uint64_t chunk;
  uint32_t col;
  uint32_t len;
  uint64_t eoff;		/* offset inside the column's extent */
  char *ubuf;			/* client buffer */
  char *bounce;			/* aligned copy, or NULL if direct */
  uint64_t a0, a1;		/* aligned extent range covered by bounce */
  struct meta_chunk *c;
  uint32_t *cs;			/* the column's checksums */
  uint32_t ok;			/* write: replicas that took it */
  uint8_t missed;		/* write: replicas skipped or failed */
  uint8_t nospace;		/* write: replicas out of space */
  uint8_t kept;			/* write: the one of those kept */
};

struct scratch {
  struct piece *pc;
  size_t pccap;
  struct dev_req *rq;
  size_t rqcap;
  char *bounce;
  size_t bcap;
  char *cb;			/* whole blocks for the cache path */
  size_t cbcap;
  uint32_t *u32;		/* 3 * pieces: replicas tried, piece of
				 * request, suspect */
  size_t u32cap;
};

static pthread_key_t scratch_key;
static pthread_once_t scratch_once = PTHREAD_ONCE_INIT;
static __thread struct scratch *tscratch;
static char zero_block[1 << 20] __attribute__ ((aligned (4096)));

static void
scratch_destroy (void *p)
{
  struct scratch *s = p;

  if (s) {
    free (s->pc);
    free (s->rq);
    free (s->bounce);
    free (s->cb);
    free (s->u32);
    free (s);
  }
}

static void
scratch_key_init (void)
{
  pthread_key_create (&scratch_key, scratch_destroy);
}

/* This thread's scratch space, grown to hold NPC pieces, NRQ requests
 * and BOUNCE bytes.  NULL on ENOMEM. */
static struct scratch *
get_scratch (size_t npc, size_t nrq, size_t bounce)
{
  struct scratch *s = tscratch;

  if (!s) {
    pthread_once (&scratch_once, scratch_key_init);
    s = calloc (1, sizeof *s);
    if (!s)
      goto nomem;
    tscratch = s;
    pthread_setspecific (scratch_key, s);
  }
  if (npc > s->pccap) {
    free (s->pc);
    free (s->u32);
    s->pc = malloc (npc * sizeof *s->pc);
    s->u32 = malloc (3 * npc * sizeof *s->u32);
    s->pccap = s->pc && s->u32 ? npc : 0;
    if (!s->pc || !s->u32)
      goto nomem;
  }
  if (nrq > s->rqcap) {
    free (s->rq);
    s->rq = malloc (nrq * sizeof *s->rq);
    s->rqcap = s->rq ? nrq : 0;
    if (!s->rq)
      goto nomem;
  }
  if (bounce > s->bcap) {
    free (s->bounce);
    /* From 1 MiB up, huge pages: O_DIRECT then pins one page per device
     * request instead of 256, once per replica.  Measured on 1 MiB
     * sequential writes: +20% with 2 replicas, +10% with 1. */
    if (bounce >= DEVICE_HUGE_PAGE / 2) {
      bounce = round_up (bounce, DEVICE_HUGE_PAGE);
      s->bounce = device_alloc_huge (bounce);
    }
    else
      s->bounce = device_alloc_buf (bounce);
    s->bcap = s->bounce ? bounce : 0;
    if (!s->bounce)
      goto nomem;
  }
  return s;
 nomem:
  strata_error (ENOMEM, "out of memory");
  return NULL;
}

/* ---- open / close ---- */

static struct vshared *
shared_new (void)
{
  struct vshared *s = calloc (1, sizeof *s);
  pthread_rwlockattr_t a;

  if (!s)
    return NULL;
  pthread_rwlockattr_init (&a);
  pthread_rwlockattr_setkind_np (&a,
                                 PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
  pthread_rwlock_init (&s->io_lock, &a);
  pthread_rwlockattr_destroy (&a);
  pthread_mutex_init (&s->busy_lock, NULL);
  pthread_cond_init (&s->busy_cond, NULL);
  pthread_mutex_init (&s->range_lock, NULL);
  pthread_cond_init (&s->range_cond, NULL);
  return s;
}

static void
shared_free (struct vshared *s)
{
  pthread_rwlock_destroy (&s->io_lock);
  pthread_mutex_destroy (&s->busy_lock);
  pthread_cond_destroy (&s->busy_cond);
  pthread_mutex_destroy (&s->range_lock);
  pthread_cond_destroy (&s->range_cond);
  free (s->ranges);
  free (s->busy);
  free (s);
}

static struct volume *
open_as (struct pool *p, const char *name, int job)
{
  struct meta *m = pool_meta (p);
  struct volume *v = calloc (1, sizeof *v);
  struct meta_volume *mv;

  if (!v) {
    strata_error (ENOMEM, "out of memory");
    return NULL;
  }
  pthread_mutex_lock (&m->lock);
  mv = meta_find_volume (m, name);
  if (!mv || mv->busy) {
    pthread_mutex_unlock (&m->lock);
    free (v);
    if (mv)
      strata_error (EBUSY, "volume %s is being deleted or shrunk", name);
    else
      strata_error (ENOENT, "no volume named \"%s\" in pool %s", name,
                    m->name);
    return NULL;
  }
  if (!mv->dp && !(mv->dp = shared_new ())) {
    pthread_mutex_unlock (&m->lock);
    free (v);
    strata_error (ENOMEM, "out of memory");
    return NULL;
  }
  mv->users++;
  if (job >= 0)
    mv->job_users[job]++;
  v->job = job;
  v->p = p;
  v->mv = mv;
  v->s = mv->dp;
  pthread_mutex_unlock (&m->lock);
  v->cache = pool_cache (p);
  if (v->cache) {
    const struct config *cfg = pool_config (p);
    const struct config_volume *cv = config_find_volume (cfg, name);
    v->mode = cv && cv->cache_mode != CONFIG_CACHE_DEFAULT ? cv->cache_mode
                                                           : cfg->cache_mode;
  }
  return v;
}

struct volume *
volume_open (struct pool *p, const char *name)
{
  return open_as (p, name, -1);
}

struct volume *
volume_open_job (struct pool *p, const char *name, enum volume_job job)
{
  return open_as (p, name, job);
}

void
volume_close (struct volume *v)
{
  struct meta *m;

  if (!v)
    return;
  m = pool_meta (v->p);
  pthread_mutex_lock (&m->lock);
  if (v->job >= 0)
    v->mv->job_users[v->job]--;
  if (--v->mv->users == 0) {
    shared_free (v->mv->dp);
    v->mv->dp = NULL;
  }
  pthread_mutex_unlock (&m->lock);
  free (v);
}

uint64_t volume_size (struct volume *v) { return v->mv->size; }
uint64_t volume_stripe_unit (struct volume *v) { return v->mv->unit; }
const char *volume_name (struct volume *v) { return v->mv->name; }

static int
check_range (struct volume *v, uint32_t count, uint64_t off)
{
  uint64_t size = v->mv->size;

  if (off > size || count > size - off)
    return strata_error (ERANGE, "volume %s: request of %" PRIu32 " bytes at "
                         "%" PRIu64 " is beyond the end (%" PRIu64 " bytes)",
                         v->mv->name, count, off, size);
  return 0;
}

/* ---- busy set ---- */

static bool
is_busy (struct vshared *s, uint64_t idx)
{
  for (size_t i = 0; i < s->nbusy; i++)
    if (s->busy[i] == idx)
      return true;
  return false;
}

static int
add_busy (struct vshared *s, uint64_t idx)
{
  if (s->nbusy == s->cap) {
    size_t cap = s->cap ? s->cap * 2 : 16;
    uint64_t *nb = realloc (s->busy, cap * sizeof *nb);
    if (!nb)
      return strata_error (ENOMEM, "out of memory");
    s->busy = nb;
    s->cap = cap;
  }
  s->busy[s->nbusy++] = idx;
  return 0;
}

static void
del_busy (struct vshared *s, uint64_t idx)
{
  for (size_t i = 0; i < s->nbusy; i++)
    if (s->busy[i] == idx) {
      s->busy[i] = s->busy[--s->nbusy];
      return;
    }
}

/* Make sure chunk IDX is allocated. */
static int
ensure_alloc (struct volume *v, uint64_t idx)
{
  struct vshared *s = v->s;
  int r;

  pthread_mutex_lock (&s->busy_lock);
  for (;;) {
    if (meta_chunk_get (v->mv, idx)) {
      pthread_mutex_unlock (&s->busy_lock);
      return 0;
    }
    if (!is_busy (s, idx))
      break;
    pthread_cond_wait (&s->busy_cond, &s->busy_lock);
  }
  r = add_busy (s, idx);
  pthread_mutex_unlock (&s->busy_lock);
  if (r == -1)
    return -1;

  r = pool_chunk_alloc (v->p, v->mv, idx);

  pthread_mutex_lock (&s->busy_lock);
  del_busy (s, idx);
  pthread_cond_broadcast (&s->busy_cond);
  pthread_mutex_unlock (&s->busy_lock);
  return r;
}

/* Free the allocated chunks among [FIRST, LAST).  Those that cannot be
 * freed now (pool_chunks_free: a copy on a failed or missing device, or
 * a discard or flush that failed) go to *KEPT (malloc'd, *NKEPT of them), for the caller to discard in
 * place.  Returns 0 or -1. */
static int
free_chunks (struct volume *v, uint64_t first, uint64_t last,
             uint64_t **kept, size_t *nkept)
{
  struct vshared *s = v->s;
  uint64_t *idx;
  size_t n = 0;
  int r = 0;

  *kept = NULL;
  *nkept = 0;
  if (first >= last)
    return 0;
  idx = malloc ((last - first) * sizeof *idx);
  *kept = malloc ((last - first) * sizeof **kept);
  if (!idx || !*kept) {
    free (idx);
    free (*kept);
    *kept = NULL;
    return strata_error (ENOMEM, "out of memory");
  }
  pthread_mutex_lock (&s->busy_lock);
  for (uint64_t i = first; i < last; i++)
    if (meta_chunk_get (v->mv, i) && !is_busy (s, i)) {
      if (add_busy (s, i) == -1)
        break;
      idx[n++] = i;
    }
  pthread_mutex_unlock (&s->busy_lock);

  if (n > 0) {
    /* Exclusive: waits for every request that may use these extents, and
     * holds new ones off until the chunks are unmapped. */
    pthread_rwlock_wrlock (&s->io_lock);
    r = pool_chunks_free (v->p, v->mv, idx, n, *kept, nkept);
    pthread_rwlock_unlock (&s->io_lock);
  }

  pthread_mutex_lock (&s->busy_lock);
  for (size_t k = 0; k < n; k++)
    del_busy (s, idx[k]);
  pthread_cond_broadcast (&s->busy_cond);
  pthread_mutex_unlock (&s->busy_lock);
  free (idx);
  return r;
}

/* ---- mapping ---- */

/* Split [OFF, OFF+COUNT) into pieces (merging contiguous ones).  BUF may
 * be NULL (no client buffer).  Returns the number of pieces. */
static size_t
map_pieces (struct volume *v, uint64_t off, uint32_t count, char *buf,
            struct piece *pc)
{
  struct meta_volume *mv = v->mv;
  uint64_t cs = mv->chunk_size, su = mv->unit, end = off + count, o = off;
  size_t n = 0;

  while (o < end) {
    uint64_t co = o % cs;
    uint64_t row = co / (su * mv->width);
    uint32_t col = (co / su) % mv->width;
    uint64_t within = co % su;
    uint32_t len = MIN (su - within, end - o);
    uint64_t eoff = row * su + within;
    char *ub = buf ? buf + (o - off) : NULL;
    struct piece *last = n ? &pc[n - 1] : NULL;

    if (last && last->chunk == o / cs && last->col == col
        && last->eoff + last->len == eoff
        && (!buf || last->ubuf + last->len == ub))
      last->len += len;
    else
      pc[n++] = (struct piece) { .chunk = o / cs, .col = col, .len = len,
                                 .eoff = eoff, .ubuf = ub };
    o += len;
  }
  return n;
}

static size_t
max_pieces (struct volume *v, uint32_t count)
{
  return count / v->mv->unit + 2;
}

/* Index of the replica to read piece P from, starting the rotation at
 * START, skipping missing devices and those in TRIED (a bit mask). */
static int
pick_replica (struct volume *v, const struct piece *p, uint32_t start,
              uint32_t tried)
{
  uint32_t R = v->mv->replicas;

  for (uint32_t k = 0; k < R; k++) {
    uint32_t r = (start + k) % R;
    if (tried & (1u << r))
      continue;
    if (pool_copy_readable (v->p, p->c, R, p->col, r))
      return r;
  }
  return -1;
}

/* A write skips a copy that is stale (it stays stale until a rebuild
 * copies the whole column to it) and one whose device is not usable.  A
 * device that is merely missing (not opened) is marked failed first.
 * The copies skipped are noted in P->missed.  Returns 1 to write copy
 * R, 0 to skip it, -1 on error. */
static int
replica_writable (struct volume *v, struct piece *p, uint32_t r)
{
  struct meta_extent e = p->c->ext[p->col * v->mv->replicas + r];

  if (meta_copy_stale (&p->c->col[p->col], r))
    return 0;
  if (pool_device_usable (v->p, e.dev))
    return 1;
  if (!pool_device (v->p, e.dev) && pool_device_away (v->p, e.dev) == -1)
    return -1;
  p->missed |= 1u << r;
  return 0;
}

/* The copies of piece P to make stale: those it missed that the
 * journal does not say are stale already, but never the last copy that
 * is not.  When a write reached no copy, the column's data is whatever
 * its copies hold (the write failed), and the copy left is the newest
 * there is: it is read again once its device is back (resync.c). */
static uint8_t
missed_to_stale (struct volume *v, const struct piece *p)
{
  uint8_t stale = atomic_load (&p->c->col[p->col].stale);
  uint8_t all = (uint8_t) ((1u << v->mv->replicas) - 1);
  uint8_t m = p->missed & ~stale;

  if (m && (stale | m) == all)
    m &= (uint8_t) (m - 1);	/* keep the lowest */
  return m;
}

/* A write or discard of piece P reached no copy: the column's checksum
 * array holds what was to be written, its copies anything between the
 * old data and the new.  It is UNSYNCED, neither read nor written, until
 * a device of it is back and resync recomputes its checksums from its
 * data (resync.c); it is dirty in the journal already. */
static void
lost_all (struct piece *p)
{
  atomic_store (&p->c->col[p->col].state, META_COL_UNSYNCED);
}

/* Commit that the copies in the pieces' missed masks are stale (see
 * missed_to_stale), before the write is acknowledged (DESIGN.md
 * section 4).  Returns 0 or -1. */
static int
commit_missed (struct volume *v, struct piece *pc, size_t n)
{
  struct meta_stale_item *items;
  size_t k = 0;
  int r;

  for (size_t i = 0; i < n; i++)
    if (missed_to_stale (v, &pc[i]))
      k++;
  if (k == 0)
    return 0;
  items = malloc (k * sizeof *items);
  if (!items)
    return strata_error (ENOMEM, "out of memory");
  k = 0;
  for (size_t i = 0; i < n; i++) {
    uint8_t m = missed_to_stale (v, &pc[i]);
    if (m)
      items[k++] = (struct meta_stale_item) { v->mv->id, pc[i].chunk,
                                              pc[i].col, m };
  }
  r = pool_commit_stale (v->p, true, items, k);
  free (items);
  return r;
}

static struct dev_req
piece_req (struct volume *v, const struct piece *p, uint32_t r, uint8_t op,
           void *buf, uint64_t a0, uint64_t a1, bool fua)
{
  struct meta_extent e = p->c->ext[p->col * v->mv->replicas + r];

  return (struct dev_req) {
    .dev = pool_device (v->p, e.dev), .op = op, .fua = fua, .buf = buf,
    .len = a1 - a0, .off = pool_extent_offset (v->p, e, a0),
  };
}

/* The copy P->kept names (one bit). */
static uint32_t
kept_copy (const struct piece *p)
{
  return (uint32_t) __builtin_ctz (p->kept);
}

/* Make copy P->kept of piece P current again after a write or discard
 * that ran out of space on it: the range [P->a0, P->a1) holds anything
 * between the old data and the new (NBD leaves it undefined after a
 * failed write), so its checksums become those of what the copy now
 * holds.  Called under the range lock, with the column dirty.  Returns
 * 0, or -1 if the range cannot be read (a read error of its device). */
static int
recompute_kept (struct volume *v, struct piece *p)
{
  uint32_t rep = kept_copy (p);
  struct dev_req rq;
  char *buf = device_alloc_buf (p->a1 - p->a0);

  if (!buf)
    return strata_error (ENOMEM, "out of memory");
  rq = piece_req (v, p, rep, DEV_READ, buf, p->a0, p->a1, false);
  if (device_submit (&rq, 1) == -1) {
    char why[200];
    snprintf (why, sizeof why, "reading back blocks a write could not "
              "store for lack of space: %s", strerror (-rq.res));
    pool_device_read_error (v->p, p->c->ext[p->col * v->mv->replicas
                                            + rep].dev, why);
    free (buf);
    return -1;
  }
  csum_blocks (buf, p->a1 - p->a0, p->cs + p->a0 / STRATA_BLOCK);
  free (buf);
  return 0;
}

/* After device_submit() of the NR requests RQ for the pieces PC[0..N)
 * of a write (or a DISCARD), under the range lock: note the copies each
 * piece reached.  A copy it missed is stale in the journal, and then
 * its device failed, before the request is acknowledged.  Lack of space
 * is no fault of a device, which stays in use: the copy is only made
 * stale, and where no copy took the piece, the lowest that ran out of
 * space is kept instead, with its checksums recomputed (recompute_kept),
 * so the column stays readable and the request fails with ENOSPC.
 * Returns 0, or -1 (ENOSPC when lack of space was all that went wrong,
 * else EIO or the journal's error). */
static int
settle_pieces (struct volume *v, struct piece *pc, size_t n,
               const struct dev_req *rq, size_t nr, bool discard)
{
  uint32_t R = v->mv->replicas;
  const struct piece *short_of = NULL;	/* the first piece kept */
  int r = 0;

  for (size_t i = 0; i < n; i++)
    pc[i].nospace = pc[i].kept = 0;
  for (size_t k = 0; k < nr; k++) {
    struct piece *p = &pc[rq[k].tag / R];
    uint8_t bit = (uint8_t) (1u << (rq[k].tag % R));
    if (rq[k].res == 0)
      p->ok++;
    else {
      p->missed |= bit;
      if (device_no_space (rq[k].res))
        p->nospace |= bit;
    }
  }
  for (size_t i = 0; i < n; i++)
    if (pc[i].ok == 0 && pc[i].nospace) {
      pc[i].kept = pc[i].nospace & (uint8_t) -pc[i].nospace;
      pc[i].missed &= (uint8_t) ~pc[i].kept;
    }
  if (commit_missed (v, pc, n) == -1)
    r = -1;
  for (size_t k = 0; k < nr && r == 0; k++) {
    const struct piece *p = &pc[rq[k].tag / R];
    uint32_t rep = rq[k].tag % R, dev = p->c->ext[p->col * R + rep].dev;
    char why[200];
    if (rq[k].res == 0)
      continue;
    if (device_no_space (rq[k].res)) {
      snprintf (why, sizeof why, "volume %s chunk %" PRIu64 " column %"
                PRIu32 ": a %s found no space%s", v->mv->name, p->chunk,
                p->col, discard ? "discard" : "write",
                p->kept & (1u << rep) ? ""
                : "; its copy is stale until 'strata rebuild'");
      pool_device_no_space (v->p, dev, why);
      continue;
    }
    snprintf (why, sizeof why, "%s failed: %s",
              discard ? "discard" : "write", strerror (-rq[k].res));
    if (pool_device_fail (v->p, dev, why) == -1)
      r = -1;
  }
  for (size_t i = 0; i < n; i++) {
    struct piece *p = &pc[i];
    if (p->ok)
      continue;
    if (r == 0 && p->kept && recompute_kept (v, p) == 0) {
      if (!short_of)
        short_of = p;
      continue;
    }
    lost_all (p);
    if (r == 0)
      r = strata_error (EIO, "volume %s: chunk %" PRIu64 " column %" PRIu32
                        ": no copy could be %s", v->mv->name, p->chunk,
                        p->col, discard ? "discarded" : "written");
  }
  if (r == 0 && short_of)
    r = strata_error (ENOSPC, "volume %s: chunk %" PRIu64 " column %"
                      PRIu32 ": no space on device %s for this %s",
                      v->mv->name, short_of->chunk, short_of->col,
                      pool_meta (v->p)->devices[short_of->c->ext[
                        short_of->col * R + kept_copy (short_of)].dev].name,
                      discard ? "discard" : "write");
  return r;
}

/* Decide, for each piece, whether it can use the client buffer directly
 * (it covers whole blocks, which reads need for verification and writes
 * for their checksums, and the buffer has MEM_ALIGN, the alignment the
 * devices need), and hand out bounce space.  Returns the bounce bytes
 * needed. */
static size_t
plan_bounce (struct piece *pc, size_t n, char *arena, size_t mem_align)
{
  size_t need = 0;

  for (size_t i = 0; i < n; i++) {
    struct piece *p = &pc[i];
    p->a0 = round_down (p->eoff, STRATA_BLOCK);
    p->a1 = round_up (p->eoff + p->len, STRATA_BLOCK);
    if (p->a0 == p->eoff && p->a1 == p->eoff + p->len && p->ubuf && is_aligned ((uintptr_t) p->ubuf, mem_align))
      p->bounce = NULL;
    else {
      p->bounce = arena ? arena + need : (char *) 1;
      need += p->a1 - p->a0;
    }
  }
  return need;
}

/* ---- range lock, checksums ---- */

static bool
overlaps (const struct wrange *x, const struct piece *p)
{
  return x->chunk == p->chunk && x->col == p->col && x->a0 < p->a1
    && p->a0 < x->a1;
}

/* Take the range lock over [a0, a1) of every piece of PC, all at once
 * (so that two requests can never hold parts and wait for each other). */
static int
range_lock (struct vshared *s, const struct piece *pc, size_t n)
{
  pthread_mutex_lock (&s->range_lock);
  for (;;) {
    bool busy = false;
    for (size_t k = 0; k < s->nranges && !busy; k++)
      for (size_t i = 0; i < n && !busy; i++)
        busy = overlaps (&s->ranges[k], &pc[i]);
    if (!busy)
      break;
    pthread_cond_wait (&s->range_cond, &s->range_lock);
  }
  if (s->nranges + n > s->rcap) {
    size_t cap = MAX (s->rcap * 2, s->nranges + n + 16);
    struct wrange *nr = realloc (s->ranges, cap * sizeof *nr);
    if (!nr) {
      pthread_mutex_unlock (&s->range_lock);
      return strata_error (ENOMEM, "out of memory");
    }
    s->ranges = nr;
    s->rcap = cap;
  }
  for (size_t i = 0; i < n; i++)
    s->ranges[s->nranges++] = (struct wrange) { pc[i].chunk, pc[i].col,
                                                pc[i].a0, pc[i].a1 };
  pthread_mutex_unlock (&s->range_lock);
  return 0;
}

static void
range_unlock (struct vshared *s, const struct piece *pc, size_t n)
{
  pthread_mutex_lock (&s->range_lock);
  for (size_t i = 0; i < n; i++)
    for (size_t k = 0; k < s->nranges; k++) {
      struct wrange *x = &s->ranges[k];
      if (x->chunk == pc[i].chunk && x->col == pc[i].col
          && x->a0 == pc[i].a0 && x->a1 == pc[i].a1) {
        *x = s->ranges[--s->nranges];
        break;
      }
    }
  pthread_cond_broadcast (&s->range_cond);
  pthread_mutex_unlock (&s->range_lock);
}

/* Release the checksum arrays get_csums() held.  Called before io_lock
 * is let go: a trim may free the columns after that. */
static void
put_csums (struct piece *pc, size_t n)
{
  for (size_t i = 0; i < n; i++)
    if (pc[i].cs) {
      csum_release (pc[i].c, pc[i].col);
      pc[i].cs = NULL;
    }
}

/* Hold the checksum arrays of the pieces' columns in memory (csum.h)
 * until put_csums().  On failure none is held. */
static int
get_csums (struct volume *v, struct piece *pc, size_t n)
{
  for (size_t i = 0; i < n; i++)
    pc[i].cs = NULL;
  for (size_t i = 0; i < n; i++)
    if (pc[i].c
        && !(pc[i].cs = csum_hold (v->p, v->mv, pc[i].c, pc[i].col))) {
      put_csums (pc, i);
      return -1;
    }
  return 0;
}

/* Whether reads of piece P can be checked: a read-only pool has not
 * resynced dirty columns, whose checksums on disk may be behind. */
static bool
verifiable (struct volume *v, const struct piece *p)
{
  return pool_writable (v->p)
    || atomic_load (&p->c->col[p->col].state) == META_COL_CLEAN;
}

/* Check the whole blocks of BUF, which holds [A0, A1) of piece P's
 * extent, against the column's checksums.  Returns true if all match. */
static bool
blocks_ok (const struct piece *p, const char *buf, uint64_t a0, uint64_t a1)
{
  for (uint64_t o = a0; o < a1; o += STRATA_BLOCK)
    if (crc32c (0, buf + (o - a0), STRATA_BLOCK) != p->cs[o / STRATA_BLOCK])
      return false;
  return true;
}

/* The volume offset of byte EOFF of column COL of chunk CHUNK. */
static uint64_t
volume_offset (struct volume *v, uint64_t chunk, uint32_t col, uint64_t eoff)
{
  struct meta_volume *mv = v->mv;

  return chunk * mv->chunk_size + (eoff / mv->unit) * mv->unit * mv->width
    + (uint64_t) col * mv->unit + eoff % mv->unit;
}

/* A run of blocks of one copy of piece P that did not match their
 * checksums: [first, end) in the extent, within one stripe unit, so
 * that its volume bytes are contiguous too. */
struct bad_run {
  uint64_t first, end;
  bool repaired;
};

/* Say on the server log that RUN of replica REP of P was bad: one line
 * per run, not per block (a disk that lost a region has thousands). */
static void
say_bad_run (struct volume *v, const struct piece *p, uint32_t rep,
             struct bad_run *run)
{
  struct meta_extent e;
  uint64_t b0, b1, vo;
  char blocks[64];

  if (run->end == 0)
    return;
  e = p->c->ext[p->col * v->mv->replicas + rep];
  b0 = run->first / STRATA_BLOCK;
  b1 = run->end / STRATA_BLOCK - 1;
  vo = volume_offset (v, p->chunk, p->col, run->first);
  if (b0 == b1)
    snprintf (blocks, sizeof blocks, "block %" PRIu64, b0);
  else
    snprintf (blocks, sizeof blocks, "blocks %" PRIu64 "-%" PRIu64, b0, b1);
  fprintf (stderr, "strata: volume %s: checksum mismatch on device %s, "
           "extent %" PRIu32 " %s (volume bytes %" PRIu64 "-%" PRIu64 ")%s\n",
           v->mv->name, pool_meta (v->p)->devices[e.dev].name, e.ext, blocks,
           vo, vo + (run->end - run->first) - 1,
           run->repaired ? "; repaired" : "; no good copy");
  run->end = 0;
}

/* The self-healing read of piece P (see design notes), with io_lock
 * held exclusively: read [a0, a1) from every usable replica, keep for
 * each block a copy that matches its checksum, rewrite the copies that
 * do not, and copy the good data to the client's buffer. */
static int
heal_piece (struct volume *v, struct piece *p)
{
  uint32_t R = v->mv->replicas;
  uint64_t len = p->a1 - p->a0;
  size_t nb = len / STRATA_BLOCK, nr = 0, nw = 0;
  char *bufs[8] = { NULL };
  struct dev_req rq[8], *wq = calloc (nb * R + 1, sizeof *wq);
  struct bad_run runs[8] = { { 0 } };
  int r = 0;

  if (!wq)
    return strata_error (ENOMEM, "out of memory");
  for (uint32_t rep = 0; rep < R; rep++) {
    if (!pool_copy_readable (v->p, p->c, R, p->col, rep))
      continue;
    if (!(bufs[rep] = device_alloc_buf (len))) {
      r = strata_error (ENOMEM, "out of memory");
      goto out;
    }
    rq[nr] = piece_req (v, p, rep, DEV_READ, bufs[rep], p->a0, p->a1, false);
    rq[nr++].tag = rep;
  }
  device_submit (rq, nr);
  for (size_t k = 0; k < nr; k++)
    if (rq[k].res != 0) {
      char why[200];
      snprintf (why, sizeof why, "read failed: %s", strerror (-rq[k].res));
      pool_device_read_error (v->p, p->c->ext[p->col * R + rq[k].tag].dev,
                              why);
      free (bufs[rq[k].tag]);
      bufs[rq[k].tag] = NULL;
    }

  for (size_t b = 0; b < nb; b++) {
    uint64_t o = p->a0 + b * STRATA_BLOCK;
    uint32_t want = p->cs[o / STRATA_BLOCK];
    int good = -1;
    uint32_t badmask = 0;

    for (uint32_t rep = 0; rep < R; rep++) {
      if (!bufs[rep])
        continue;
      if (crc32c (0, bufs[rep] + b * STRATA_BLOCK, STRATA_BLOCK) == want) {
        if (good < 0)
          good = rep;
      }
      else
        badmask |= 1u << rep;
    }
    for (uint32_t rep = 0; rep < R; rep++) {
      struct meta_extent e = p->c->ext[p->col * R + rep];
      struct bad_run *run = &runs[rep];
      if (!(badmask & (1u << rep))) {
        say_bad_run (v, p, rep, run);
        continue;
      }
      pool_device_csum_error (v->p, e.dev);
      if (run->end != o || run->repaired != (good >= 0)
          || o % v->mv->unit == 0)
        say_bad_run (v, p, rep, run);
      if (run->end == 0)
        *run = (struct bad_run) { .first = o, .repaired = good >= 0 };
      run->end = o + STRATA_BLOCK;
      if (good >= 0) {
        wq[nw] = piece_req (v, p, rep, DEV_WRITE,
                            bufs[good] + b * STRATA_BLOCK, o,
                            o + STRATA_BLOCK, true);
        wq[nw++].tag = rep;
      }
    }
    if (good < 0) {
      /* The read fails; the other blocks are still repaired. */
      if (r == 0)
        r = strata_error (EIO, "volume %s: bytes %" PRIu64 "-%" PRIu64 ": "
                          "no copy matches its checksum", v->mv->name,
                          volume_offset (v, p->chunk, p->col, o),
                          volume_offset (v, p->chunk, p->col, o)
                          + STRATA_BLOCK - 1);
      continue;
    }
    /* The good block, as much of it as the client asked for. */
    {
      uint64_t lo = MAX (o, p->eoff), hi = MIN (o + STRATA_BLOCK,
                                                p->eoff + p->len);
      memcpy (p->ubuf + (lo - p->eoff),
              bufs[good] + b * STRATA_BLOCK + (lo - o), hi - lo);
    }
  }
  for (uint32_t rep = 0; rep < R; rep++)
    say_bad_run (v, p, rep, &runs[rep]);
  device_submit (wq, nw);
  for (size_t k = 0; k < nw; k++) {
    struct meta_extent e = p->c->ext[p->col * R + wq[k].tag];
    char why[200];
    if (wq[k].res == 0)
      pool_device_repaired (v->p, e.dev, 1);
    else if (device_no_space (wq[k].res)) {
      /* The bad copy stays as it is: reads keep passing it by. */
      snprintf (why, sizeof why, "volume %s chunk %" PRIu64 " column %"
                PRIu32 ": a repair found no space", v->mv->name, p->chunk,
                p->col);
      pool_device_no_space (v->p, e.dev, why);
    } else {
      snprintf (why, sizeof why, "repair write failed: %s",
                strerror (-wq[k].res));
      pool_device_fail (v->p, e.dev, why);
    }
  }
  if (r == -1)
    errno = EIO;		/* the repairs above may have set another */
 out:
  for (uint32_t rep = 0; rep < R; rep++)
    free (bufs[rep]);
  free (wq);
  return r;
}

/* Read the pieces of PC marked suspect again, healing them, with io_lock
 * held exclusively.  Chunks may have been freed since (a trim): those
 * read as zeros now. */
static int
heal_pieces (struct volume *v, struct piece *pc, size_t n,
             const uint32_t *suspect)
{
  int r = 0;

  pthread_rwlock_wrlock (&v->s->io_lock);
  for (size_t i = 0; i < n && r == 0; i++) {
    struct piece *p = &pc[i];
    if (!suspect[i])
      continue;
    p->c = meta_chunk_get (v->mv, p->chunk);
    if (!p->c) {
      memset (p->ubuf, 0, p->len);
      continue;
    }
    if (!(p->cs = csum_hold (v->p, v->mv, p->c, p->col)))
      r = -1;
    else {
      r = heal_piece (v, p);
      csum_release (p->c, p->col);
      p->cs = NULL;
    }
  }
  pthread_rwlock_unlock (&v->s->io_lock);
  return r;
}

/* ---- read ---- */

static int
backing_pread (struct volume *v, void *buf, uint32_t count, uint64_t off)
{
  struct vshared *s = v->s;
  struct scratch *sc;
  struct piece *pc;
  struct dev_req *rq;
  uint32_t *tried, *which, *suspect;
  size_t n, nb, nr, align;
  uint32_t start;
  bool heal = false;
  int r = 0;

  if (check_range (v, count, off) == -1)
    return -1;
  if (count == 0)
    return 0;
  sc = get_scratch (max_pieces (v, count), 0, 0);
  if (!sc)
    return -1;
  /* Whole blocks are read, so that they can be verified. */
  n = map_pieces (v, off, count, buf, sc->pc);
  /* The alignment the devices need (1 where they go through the page
   * cache); read once, as a device added meanwhile may raise it. */
  align = pool_mem_align (v->p, DEV_READ);
  nb = plan_bounce (sc->pc, n, NULL, align);
  sc = get_scratch (0, n, nb);
  if (!sc)
    return -1;
  pc = sc->pc;
  rq = sc->rq;
  tried = sc->u32;		/* per piece: bit mask of replicas tried */
  which = sc->u32 + sc->pccap;	/* per request: its piece */
  suspect = sc->u32 + 2 * sc->pccap;	/* per piece: failed verification */
  plan_bounce (pc, n, sc->bounce, align);
  start = atomic_fetch_add_explicit (&s->rr, 1, memory_order_relaxed);

  pthread_rwlock_rdlock (&s->io_lock);
  for (size_t i = 0; i < n; i++) {
    pc[i].c = meta_chunk_get (v->mv, pc[i].chunk);
    tried[i] = 0;
    suspect[i] = 0;
  }
  if (get_csums (v, pc, n) == -1) {
    r = -1;
    goto out;
  }
  /* Each round reads every piece not yet read from a replica not yet
   * tried; a failed piece is retried on the next replica. */
  for (;;) {
    nr = 0;
    for (size_t i = 0; i < n; i++) {
      struct piece *p = &pc[i];
      int rep;
      if (!p->c) {
        if (tried[i] == 0)
          memset (p->ubuf, 0, p->len);
        tried[i] = ~0u;
        continue;
      }
      if (tried[i] == ~0u)
        continue;
      rep = pick_replica (v, p, start + i, tried[i]);
      if (rep < 0) {
        /* Before any read of it, the last error is some other one. */
        if (tried[i] == 0)
          r = strata_error (EIO, "volume %s: no readable copy of chunk %"
                            PRIu64 " column %u (every copy is stale or on "
                            "a failed or missing device)", v->mv->name,
                            p->chunk, p->col);
        else
          r = strata_error (EIO, "volume %s: no readable copy of chunk %"
                            PRIu64 " column %u (last error: %s)",
                            v->mv->name, p->chunk, p->col,
                            strata_last_error ());
        goto out;
      }
      tried[i] |= 1u << rep;
      which[nr] = i;
      rq[nr] = piece_req (v, p, rep, DEV_READ,
                          p->bounce ? p->bounce : p->ubuf,
                          p->bounce ? p->a0 : p->eoff,
                          p->bounce ? p->a1 : p->eoff + p->len, false);
      rq[nr++].tag = rep;
    }
    if (nr == 0)
      break;
    device_submit (rq, nr);
    for (size_t k = 0; k < nr; k++) {
      struct piece *p = &pc[which[k]];
      if (rq[k].res != 0) {
        char why[200];
        snprintf (why, sizeof why, "read failed: %s", strerror (-rq[k].res));
        pool_device_read_error (v->p, p->c->ext[p->col * v->mv->replicas
                                                + rq[k].tag].dev, why);
        continue;		/* retried next round */
      }
      tried[which[k]] = ~0u;
      if (verifiable (v, p)
          && !blocks_ok (p, p->bounce ? p->bounce : p->ubuf, p->a0, p->a1)) {
        suspect[which[k]] = 1;	/* healed below */
        heal = true;
        continue;
      }
      if (p->bounce)
        memcpy (p->ubuf, p->bounce + (p->eoff - p->a0), p->len);
    }
  }
 out:
  put_csums (pc, n);
  pthread_rwlock_unlock (&s->io_lock);
  if (r == 0 && heal)
    r = heal_pieces (v, pc, n, suspect);
  return r;
}

/* ---- write ---- */

/* Write pieces PC[0..N) (chunks allocated and looked up) to every
 * replica.  Called with io_lock held shared. */
static int
write_pieces (struct volume *v, struct piece *pc, size_t n, struct dev_req *rq,
              bool fua)
{
  uint32_t R = v->mv->replicas;
  struct resync *rs = pool_resync (v->p);
  size_t nr = 0, begun = 0;
  int r = 0;

  if (get_csums (v, pc, n) == -1)
    return -1;
  if (range_lock (v->s, pc, n) == -1) {
    put_csums (pc, n);
    return -1;
  }
  /* A rebuild may have moved a copy while we waited (volume_column_hold):
   * the chunks as they are now, under the range lock. */
  for (size_t i = 0; i < n; i++)
    pc[i].c = meta_chunk_get (v->mv, pc[i].chunk);
  /* The columns are dirty before anything is written to them. */
  for (begun = 0; begun < n; begun++)
    if (resync_write_begin (rs, v->mv, pc[begun].chunk, pc[begun].c,
                            pc[begun].col) == -1) {
      begun++;
      r = -1;
      goto out;
    }

  /* Read the partial blocks, from another copy where one fails or does
   * not match its checksum.  P->ok holds the replicas tried, and
   * RMW_DONE once the blocks are in. */
  for (size_t i = 0; i < n; i++)
    pc[i].ok = 0;
  for (;;) {
    nr = 0;
    for (size_t i = 0; i < n; i++) {
      struct piece *p = &pc[i];
      int rep;
      if (!p->bounce || (p->ok & RMW_DONE))
        continue;
      if (p->eoff == p->a0 && p->eoff + p->len == p->a1)
        continue;		/* only the buffer was unaligned */
      rep = pick_replica (v, p, 0, p->ok);
      if (rep < 0) {
        r = strata_error (EIO, "volume %s: no readable copy of chunk %"
                          PRIu64 " column %" PRIu32, v->mv->name, p->chunk,
                          p->col);
        goto out;
      }
      p->ok |= (1u << rep) | RMW_DONE;
      if (p->eoff != p->a0) {
        rq[nr] = piece_req (v, p, rep, DEV_READ, p->bounce, p->a0,
                            p->a0 + STRATA_BLOCK, false);
        rq[nr++].tag = i * R + rep;
      }
      if (p->eoff + p->len != p->a1
          && (p->a1 - STRATA_BLOCK != p->a0 || p->eoff == p->a0)) {
        rq[nr] = piece_req (v, p, rep, DEV_READ,
                            p->bounce + (p->a1 - STRATA_BLOCK - p->a0),
                            p->a1 - STRATA_BLOCK, p->a1, false);
        rq[nr++].tag = i * R + rep;
      }
    }
    if (nr == 0)
      break;
    device_submit (rq, nr);
    for (size_t k = 0; k < nr; k++) {
      struct piece *p = &pc[rq[k].tag / R];
      uint32_t dev = p->c->ext[p->col * R + rq[k].tag % R].dev;
      char why[200];
      if (rq[k].res == 0) {
        uint64_t o = rq[k].buf == p->bounce ? p->a0 : p->a1 - STRATA_BLOCK;
        if (!verifiable (v, p) || blocks_ok (p, rq[k].buf, o,
                                             o + STRATA_BLOCK))
          continue;
        /* Under the range lock no write races this block: the copy is
         * bad.  Another is tried; the scrub repairs this one. */
        pool_device_csum_error (v->p, dev);
        p->ok &= ~RMW_DONE;
        continue;
      }
      p->ok &= ~RMW_DONE;
      snprintf (why, sizeof why, "read failed: %s", strerror (-rq[k].res));
      pool_device_read_error (v->p, dev, why);
    }
  }

  /* Every piece to every usable replica, all at once. */
  nr = 0;
  for (size_t i = 0; i < n; i++) {
    struct piece *p = &pc[i];
    p->ok = 0;
    p->missed = 0;
    for (uint32_t rep = 0; rep < R; rep++) {
      int w = replica_writable (v, p, rep);
      if (w == -1) {
        r = -1;
        goto out;
      }
      if (w == 0)
        continue;
      rq[nr] = piece_req (v, p, rep, DEV_WRITE,
                          p->bounce ? p->bounce : p->ubuf,
                          p->bounce ? p->a0 : p->eoff,
                          p->bounce ? p->a1 : p->eoff + p->len, fua);
      rq[nr++].tag = i * R + rep;
    }
  }
  /* A copy skipped is stale in the journal before any copy changes, so
   * that crash resync never takes it for a current one.  Only then do
   * the checksums of what is written go into the column's array: a
   * write that fails here leaves the column as it was. */
  if (commit_missed (v, pc, n) == -1) {
    r = -1;
    goto out;
  }
  for (size_t i = 0; i < n; i++) {
    struct piece *p = &pc[i];
    if (p->bounce && p->eoff == p->a0 && p->eoff + p->len == p->a1)
      /* Only the buffer was unaligned: copy and sum in one pass. */
      csum_copy_blocks (p->bounce, p->ubuf, p->len,
                        p->cs + p->a0 / STRATA_BLOCK);
    else {
      if (p->bounce)
        memcpy (p->bounce + (p->eoff - p->a0), p->ubuf, p->len);
      csum_blocks (p->bounce ? p->bounce : p->ubuf, p->a1 - p->a0,
                   p->cs + p->a0 / STRATA_BLOCK);
    }
  }
  device_submit (rq, nr);
  r = settle_pieces (v, pc, n, rq, nr, false);
 out:
  for (size_t i = 0; i < begun; i++)
    resync_write_end (pc[i].c, pc[i].col);
  put_csums (pc, n);
  range_unlock (v->s, pc, n);
  return r;
}

/* The write path without the range check (see volume_grow_prepare). */
static int
do_pwrite (struct volume *v, const void *buf, uint32_t count, uint64_t off,
           bool fua)
{
  struct vshared *s = v->s;
  uint64_t cs = v->mv->chunk_size;
  struct scratch *sc;
  size_t n, nb, align;
  int r, tries = 0;

  if (count == 0)
    return 0;
  if (!pool_writable (v->p))
    return strata_error (EROFS, "pool is open read-only");
  sc = get_scratch (max_pieces (v, count), 0, 0);
  if (!sc)
    return -1;
  n = map_pieces (v, off, count, (char *) buf, sc->pc);
  align = pool_mem_align (v->p, DEV_WRITE);
  nb = plan_bounce (sc->pc, n, NULL, align);
  sc = get_scratch (0, n * v->mv->replicas + 4, nb);
  if (!sc)
    return -1;
  plan_bounce (sc->pc, n, sc->bounce, align);

 again:
  /* Phase 1: allocate missing chunks, with no lock held. */
  for (uint64_t c = off / cs; c <= (off + count - 1) / cs; c++)
    if (!meta_chunk_get (v->mv, c) && ensure_alloc (v, c) == -1)
      return -1;

  /* Phase 2: the I/O, with io_lock shared. */
  pthread_rwlock_rdlock (&s->io_lock);
  for (size_t i = 0; i < n; i++) {
    sc->pc[i].c = meta_chunk_get (v->mv, sc->pc[i].chunk);
    if (!sc->pc[i].c) {
      /* Freed by a concurrent trim between the phases: start again. */
      pthread_rwlock_unlock (&s->io_lock);
      if (++tries > 100)
        return strata_error (EAGAIN, "volume %s: chunk %" PRIu64 " keeps "
                             "being freed under a write", v->mv->name,
                             sc->pc[i].chunk);
      goto again;
    }
  }
  r = write_pieces (v, sc->pc, n, sc->rq, fua);
  pthread_rwlock_unlock (&s->io_lock);
  return r;
}

static int cached_pwrite (struct volume *v, const void *buf, uint32_t count,
                          uint64_t off, bool fua);
static int dead_pwrite (struct volume *v, const void *buf, uint32_t count,
                        uint64_t off, bool fua);

/* Has [OFF, OFF+COUNT) a block lost with a cache since detached? */
static bool
lost_any (struct volume *v, uint32_t count, uint64_t off)
{
  uint64_t b0 = off / STRATA_BLOCK;

  return count > 0 && meta_lost_any (pool_meta (v->p), v->mv->id, b0,
                                     div_round_up (off + count, STRATA_BLOCK)
                                     - b0);
}

/* Whole blocks of [OFF, OFF+COUNT) were written: no longer lost. */
static int
lost_written (struct volume *v, uint32_t count, uint64_t off)
{
  uint64_t w0 = div_round_up (off, STRATA_BLOCK);
  uint64_t w1 = (off + count) / STRATA_BLOCK;

  return w0 < w1 ? pool_lost_clear (v->p, v->mv->id, w0, w1 - w0) : 0;
}

int
volume_pwrite (struct volume *v, const void *buf, uint32_t count,
               uint64_t off, bool fua)
{
  if (check_range (v, count, off) == -1)
    return -1;
  if (v->cache && count > 0 && pool_writable (v->p))
    return cached_pwrite (v, buf, count, off, fua);
  if (!v->cache && pool_writable (v->p) && lost_any (v, count, off))
    return dead_pwrite (v, buf, count, off, fua);
  return do_pwrite (v, buf, count, off, fua);
}

int
volume_flush (struct volume *v)
{
  struct cache *c = v->cache;

  if (c && !pool_cache_detached (v->p)) {
    if (pool_cache_dead (v->p))
      return strata_error (EIO, "pool %s: the cache was lost with writes "
                           "not yet on the members (strata status lists "
                           "them); every flush fails from now on",
                           pool_config (v->p)->name);
    if (cache_flush (c) == -1) {
      int e = errno;
      struct cache_info ci;
      cache_info (c, &ci);
      if (ci.mirrors == 0)
        pool_cache_lost (v->p);
      errno = e;
      return -1;
    }
  }
  return pool_flush (v->p);
}

/* Discard the whole blocks of [OFF, OFF+COUNT) in allocated chunks, on
 * every replica. */
static int
discard_blocks (struct volume *v, uint32_t count, uint64_t off)
{
  struct vshared *s = v->s;
  struct scratch *sc;
  uint32_t R = v->mv->replicas;
  size_t n, nr = 0, begun = 0;
  int r = 0;

  sc = get_scratch (max_pieces (v, count), 0, 0);
  if (!sc)
    return -1;
  n = map_pieces (v, off, count, NULL, sc->pc);
  sc = get_scratch (0, n * R + 4, 0);
  if (!sc)
    return -1;
  pthread_rwlock_rdlock (&s->io_lock);
  /* Keep the pieces with whole blocks in allocated chunks. */
  {
    size_t m = 0;
    for (size_t i = 0; i < n; i++) {
      struct piece *p = &sc->pc[i];
      p->a0 = round_up (p->eoff, STRATA_BLOCK);
      p->a1 = round_down (p->eoff + p->len, STRATA_BLOCK);
      p->c = meta_chunk_get (v->mv, p->chunk);
      if (p->c && p->a0 < p->a1)
        sc->pc[m++] = *p;
    }
    n = m;
  }
  if (get_csums (v, sc->pc, n) == -1) {
    pthread_rwlock_unlock (&s->io_lock);
    return -1;
  }
  if (range_lock (s, sc->pc, n) == -1) {
    put_csums (sc->pc, n);
    pthread_rwlock_unlock (&s->io_lock);
    return -1;
  }
  for (size_t i = 0; i < n; i++)
    sc->pc[i].c = meta_chunk_get (v->mv, sc->pc[i].chunk);
  for (begun = 0; begun < n; begun++)
    if (resync_write_begin (pool_resync (v->p), v->mv, sc->pc[begun].chunk,
                            sc->pc[begun].c, sc->pc[begun].col) == -1) {
      begun++;
      r = -1;
      goto out;
    }
  for (size_t i = 0; i < n; i++) {
    struct piece *p = &sc->pc[i];
    uint64_t a0 = p->a0, a1 = p->a1;
    p->ok = 0;
    p->missed = 0;
    for (uint32_t rep = 0; rep < R; rep++) {
      int w = replica_writable (v, p, rep);
      if (w == -1) {
        r = -1;
        goto out;
      }
      if (w == 0)
        continue;
      sc->rq[nr] = piece_req (v, p, rep, DEV_ZERO, NULL, a0, a1, false);
      /* The chunk keeps its blocks: writing there again must not need
       * space the filesystem may no longer have. */
      sc->rq[nr].keep = true;
      sc->rq[nr++].tag = i * R + rep;
    }
  }
  /* As in write_pieces(): the stale copies first, then the checksums
   * (discarded blocks read as zeros). */
  if (commit_missed (v, sc->pc, n) == -1) {
    r = -1;
    goto out;
  }
  for (size_t i = 0; i < n; i++)
    for (uint64_t o = sc->pc[i].a0; o < sc->pc[i].a1; o += STRATA_BLOCK)
      sc->pc[i].cs[o / STRATA_BLOCK] = csum_zero_block ();
  device_submit (sc->rq, nr);
  r = settle_pieces (v, sc->pc, n, sc->rq, nr, true);
 out:
  for (size_t i = 0; i < begun; i++)
    resync_write_end (sc->pc[i].c, sc->pc[i].col);
  put_csums (sc->pc, n);
  range_unlock (s, sc->pc, n);
  pthread_rwlock_unlock (&s->io_lock);
  return r;
}

/* Free whole chunks inside [OFF, OFF+COUNT) and discard the whole blocks
 * of the partial chunks at either end. */
static int
discard_range (struct volume *v, uint32_t count, uint64_t off)
{
  uint64_t cs = v->mv->chunk_size, end = off + count;
  uint64_t first = div_round_up (off, cs), last = end / cs;

  /* A whole chunk also counts if the range runs to the end of a volume
   * whose last chunk is partial. */
  if (end == v->mv->size && end % cs)
    last = end / cs + 1;
  if (first < last) {
    uint64_t *kept;
    size_t nkept;
    int r = free_chunks (v, first, last, &kept, &nkept);
    /* A chunk that could not be freed stays allocated, and is discarded
     * in place like a partial one: copies on a failed device are made
     * stale, as a write's would be. */
    for (size_t k = 0; k < nkept && r == 0; k++) {
      uint64_t o = MAX (off, kept[k] * cs), e = MIN (end, (kept[k] + 1) * cs);
      r = discard_blocks (v, e - o, o);
    }
    free (kept);
    if (r == -1)
      return -1;
    if (off < first * cs && discard_blocks (v, first * cs - off, off) == -1)
      return -1;
    if (last * cs < end && discard_blocks (v, end - last * cs, last * cs) == -1)
      return -1;
    return 0;
  }
  return discard_blocks (v, count, off);
}

static int cached_zero (struct volume *v, uint32_t count, uint64_t off,
                        bool fua, bool trim);

int
volume_trim (struct volume *v, uint32_t count, uint64_t off, bool fua)
{
  if (check_range (v, count, off) == -1)
    return -1;
  if (!pool_writable (v->p))
    return strata_error (EROFS, "pool is open read-only");
  if (count == 0)
    return 0;
  if (v->cache)
    return cached_zero (v, count, off, fua, true);
  if (discard_range (v, count, off) == -1
      || (lost_any (v, count, off) && lost_written (v, count, off) == -1))
    return -1;
  return fua ? pool_flush (v->p) : 0;
}

/* Write zeros over [OFF, OFF+COUNT) through the normal write path. */
static int
write_zeros (struct volume *v, uint32_t count, uint64_t off, bool fua)
{
  while (count > 0) {
    uint32_t n = MIN (count, sizeof zero_block);
    if (do_pwrite (v, zero_block, n, off, fua) == -1)
      return -1;
    count -= n;
    off += n;
  }
  return 0;
}

/* Zero the whole blocks of [OFF, OFF+COUNT) where no hole may be made
 * (NBD_CMD_FLAG_NO_HOLE): allocated chunks are discarded as in a partial
 * trim, which keeps the chunks and their blocks on the devices
 * (device.h: keep); unallocated chunks get zeros written, which
 * allocates them. */
static int
zero_in_place (struct volume *v, uint32_t count, uint64_t off)
{
  uint64_t cs = v->mv->chunk_size, end = off + count;

  for (uint64_t o = off; o < end;) {
    uint64_t e = MIN (end, (o / cs + 1) * cs);
    /* A chunk trimmed meanwhile is skipped by discard_blocks(): it reads
     * as zeros, as asked. */
    if ((meta_chunk_get (v->mv, o / cs)
         ? discard_blocks (v, e - o, o)
         : write_zeros (v, e - o, o, false)) == -1)
      return -1;
    o = e;
  }
  return 0;
}

int
volume_zero (struct volume *v, uint32_t count, uint64_t off, bool may_trim,
             bool fua)
{
  uint64_t end = off + count, a0, a1;

  if (check_range (v, count, off) == -1)
    return -1;
  if (!pool_writable (v->p))
    return strata_error (EROFS, "pool is open read-only");
  if (count == 0)
    return 0;
  if (v->cache)
    return cached_zero (v, count, off, fua, false);
  if (lost_any (v, count, off))	/* zeros written are no longer lost */
    return write_zeros (v, count, off, fua) == -1 ? -1
           : lost_written (v, count, off);

  /* Unaligned edges are written; the aligned middle is discarded (which
   * reads back as zeros: device.h), whole chunks freed where holes may
   * be made. */
  a0 = round_up (off, STRATA_BLOCK);
  a1 = round_down (end, STRATA_BLOCK);
  if (a0 >= a1)
    return write_zeros (v, count, off, fua);
  if (a0 > off && write_zeros (v, a0 - off, off, false) == -1)
    return -1;
  if (end > a1 && write_zeros (v, end - a1, a1, false) == -1)
    return -1;
  if ((may_trim ? discard_range (v, a1 - a0, a0)
                : zero_in_place (v, a1 - a0, a0)) == -1)
    return -1;
  return fua ? pool_flush (v->p) : 0;
}

int
volume_extents (struct volume *v, uint32_t count, uint64_t off,
                int (*fn) (void *, uint64_t, uint64_t, bool), void *opaque)
{
  uint64_t cs = v->mv->chunk_size, end, o;

  if (check_range (v, count, off) == -1)
    return -1;
  end = off + count;
  o = off;
  while (o < end) {
    bool hole = meta_chunk_get (v->mv, o / cs) == NULL;
    uint64_t e = MIN (end, (o / cs + 1) * cs);
    int r;
    /* Merge runs of the same kind. */
    while (e < end && (meta_chunk_get (v->mv, e / cs) == NULL) == hole)
      e = MIN (end, e + cs);
    /* Not a hole where the cache holds blocks not written back. */
    if (hole && v->cache
        && cache_holds (v->cache, v->mv->id, o / STRATA_BLOCK,
                        div_round_up (e, STRATA_BLOCK) - o / STRATA_BLOCK))
      hole = false;
    r = fn (opaque, o, e - o, hole);
    if (r)
      return r;
    o = e;
  }
  return 0;
}

int
volume_grow_prepare (struct volume *v, uint64_t old_size, uint64_t new_size)
{
  uint64_t cs = v->mv->chunk_size;
  uint64_t end = MIN (new_size, round_up (old_size, cs));
  uint64_t a0 = round_up (old_size, STRATA_BLOCK);

  if (end <= old_size || !meta_chunk_get (v->mv, old_size / cs))
    return 0;
  if (a0 > old_size && write_zeros (v, MIN (a0, end) - old_size, old_size,
                                    false) == -1)
    return -1;
  if (a0 < end && discard_blocks (v, end - a0, a0) == -1)
    return -1;
  return 0;
}

/* ---- column access for scrub and rebuild ---- */

static struct piece
column_piece (uint64_t idx, uint32_t col, uint64_t a0, uint64_t a1)
{
  return (struct piece) { .chunk = idx, .col = col, .a0 = a0, .a1 = a1 };
}

int
volume_column_hold (struct volume *v, uint64_t idx, uint32_t col,
                    uint64_t a0, uint64_t a1, struct meta_chunk **c)
{
  struct piece pc = column_piece (idx, col, a0, a1);

  pthread_rwlock_rdlock (&v->s->io_lock);
  if (!meta_chunk_get (v->mv, idx)) {
    pthread_rwlock_unlock (&v->s->io_lock);
    *c = NULL;
    return 0;
  }
  if (range_lock (v->s, &pc, 1) == -1) {
    pthread_rwlock_unlock (&v->s->io_lock);
    return -1;
  }
  *c = meta_chunk_get (v->mv, idx);
  return 0;
}

void
volume_column_release (struct volume *v, uint64_t idx, uint32_t col,
                       uint64_t a0, uint64_t a1)
{
  struct piece pc = column_piece (idx, col, a0, a1);

  range_unlock (v->s, &pc, 1);
  pthread_rwlock_unlock (&v->s->io_lock);
}

void
volume_quiesce (struct volume *v)
{
  pthread_rwlock_wrlock (&v->s->io_lock);
  pthread_rwlock_unlock (&v->s->io_lock);
}

struct meta_volume *
volume_meta (struct volume *v)
{
  return v->mv;
}

uint64_t
volume_column_offset (struct volume *v, uint64_t idx, uint32_t col,
                      uint64_t eoff)
{
  return volume_offset (v, idx, col, eoff);
}

/* ---- the write-back cache (cache.h) ----
 *
 * With a cache, the volume's 4 KiB blocks are the unit.  A read takes
 * the blocks the cache holds from it and the rest from the members.  A
 * write-back write (or any write over blocks the cache holds) becomes a
 * cache record of whole blocks, the partial edges read first; it is
 * acknowledged once the record is on every cache mirror.  A
 * write-through write, or a write of a volume with mode none, over
 * blocks the cache does not hold goes to the members (write-through
 * then keeps a clean copy for reads).
 *
 * The block lock: every write of a volume with a cache, and every write
 * of the destager (volume_destage_write), holds a range lock over the
 * blocks it covers (the range lock of the design notes, under a chunk
 * number no column uses).  So the destager never writes an older
 * version over a write that went to the members directly, and partial
 * blocks merge safely.  Nobody waits for room in the cache log while
 * holding it (CACHE_NOWAIT): room is made by the destager, which may
 * need the same blocks.
 *
 * When the cache has no working mirror left, pool_cache_lost() records
 * what only it held as lost; reads of those blocks fail with EIO, the
 * rest of the volume is read and written on the members alone, and a
 * write of whole blocks makes them readable again. */

#define BLOCK_LOCK_CHUNK UINT64_MAX

static struct piece
block_piece (uint64_t b0, uint64_t b1)
{
  return (struct piece) { .chunk = BLOCK_LOCK_CHUNK, .a0 = b0 * STRATA_BLOCK,
                          .a1 = b1 * STRATA_BLOCK };
}

static char *
get_cbounce (size_t len)
{
  struct scratch *s = get_scratch (0, 0, 0);

  if (!s)
    return NULL;
  if (len > s->cbcap) {
    free (s->cb);
    s->cb = device_alloc_buf (len);
    s->cbcap = s->cb ? len : 0;
    if (!s->cb) {
      strata_error (ENOMEM, "out of memory");
      return NULL;
    }
  }
  return s->cb;
}

/* How V uses the cache now: while it is being detached, and after,
 * nothing new is written back (as with mode none). */
static enum config_cache_mode
cache_mode (struct volume *v)
{
  if (pool_cache_detaching (v->p) || pool_cache_detached (v->p))
    return CONFIG_CACHE_NONE;
  return v->mode;
}

static int
lost_error (struct volume *v, uint64_t off, uint32_t count)
{
  return strata_error (EIO, "volume %s: bytes %" PRIu64 "-%" PRIu64 " were "
                       "lost with the cache (strata status lists the lost "
                       "ranges)", v->mv->name, off, off + count - 1);
}

/* The cache lost its last mirror: record what only it held. */
static void
cache_failed (struct volume *v)
{
  struct cache_info ci;

  cache_info (v->cache, &ci);
  if (ci.mirrors == 0)
    pool_cache_lost (v->p);
}

/* Read blocks [B0, B1) into BUF (aligned): the cache's, then the rest
 * from the members (the part past the end of the volume as zeros). */
static int
read_blocks (struct volume *v, uint64_t b0, uint64_t b1, char *buf)
{
  uint32_t n = b1 - b0;
  uint8_t small[64], *hit = n <= 512 ? small : malloc ((n + 7) / 8);
  int found, r = 0;

  if (!hit)
    return strata_error (ENOMEM, "out of memory");
  found = cache_read (v->cache, v->mv->id, b0, n, buf, hit);
  if (found < 0) {
    cache_failed (v);
    r = -1;
  }
  for (uint32_t i = 0; r == 0 && found < (int) n && i < n;) {
    uint32_t k = 0;
    uint64_t o, len;
    if (hit[i / 8] >> (i % 8) & 1) {
      i++;
      continue;
    }
    while (i + k < n && !(hit[(i + k) / 8] >> ((i + k) % 8) & 1))
      k++;
    o = (b0 + i) * STRATA_BLOCK;
    len = MIN ((uint64_t) k * STRATA_BLOCK, v->mv->size - o);
    r = backing_pread (v, buf + (size_t) i * STRATA_BLOCK, len, o);
    if (len < (uint64_t) k * STRATA_BLOCK)
      memset (buf + (size_t) i * STRATA_BLOCK + len, 0,
              (size_t) k * STRATA_BLOCK - len);
    i += k;
  }
  if (hit != small)
    free (hit);
  return r;
}

int
volume_pread (struct volume *v, void *buf, uint32_t count, uint64_t off)
{
  uint64_t b0 = off / STRATA_BLOCK;
  uint64_t b1 = div_round_up (off + count, STRATA_BLOCK);
  char *cb;

  /* A pool without a cache may still have ranges lost with the one it
   * had (detached). */
  if (count == 0 || (!v->cache && !meta_lost_any (pool_meta (v->p),
                                                   v->mv->id, b0, b1 - b0)))
    return backing_pread (v, buf, count, off);
  if (check_range (v, count, off) == -1)
    return -1;
  if (meta_lost_any (pool_meta (v->p), v->mv->id, b0, b1 - b0))
    return lost_error (v, off, count);
  if (!v->cache || pool_cache_dead (v->p) || pool_cache_detached (v->p))
    return backing_pread (v, buf, count, off);
  if (off % STRATA_BLOCK == 0 && count % STRATA_BLOCK == 0
      && (uintptr_t) buf % 4096 == 0)
    return read_blocks (v, b0, b1, buf);
  if (!(cb = get_cbounce ((b1 - b0) * STRATA_BLOCK))
      || read_blocks (v, b0, b1, cb) == -1)
    return -1;
  memcpy (buf, cb + (off - b0 * STRATA_BLOCK), count);
  return 0;
}

/* A write once the cache is lost: to the members; a partial block that
 * was lost cannot be merged; whole blocks written are no longer lost.
 * Under the block lock. */
static int
dead_pwrite (struct volume *v, const void *buf, uint32_t count, uint64_t off,
             bool fua)
{
  struct meta *m = pool_meta (v->p);
  uint64_t b0 = off / STRATA_BLOCK, end = off + count;
  uint64_t w0 = div_round_up (off, STRATA_BLOCK), w1 = end / STRATA_BLOCK;

  if ((off % STRATA_BLOCK && meta_lost_any (m, v->mv->id, b0, 1))
      || (end % STRATA_BLOCK && meta_lost_any (m, v->mv->id, w1, 1)))
    return lost_error (v, off, count);
  if (buf ? do_pwrite (v, buf, count, off, fua) == -1
          : discard_range (v, count, off) == -1)
    return -1;
  if (w0 < w1 && pool_lost_clear (v->p, v->mv->id, w0, w1 - w0) == -1)
    return -1;
  return 0;
}

/* A write over blocks the cache does not hold, of a volume that does
 * not write back: straight to the members (write-through then keeps a
 * clean copy for reads).  Under the block lock. */
static int
direct_pwrite (struct volume *v, const void *buf, uint32_t count,
               uint64_t off, bool fua, enum config_cache_mode mode)
{
  uint64_t b0 = off / STRATA_BLOCK;
  char *cb;

  if (do_pwrite (v, buf, count, off, fua) == -1)
    return -1;
  if (mode == CONFIG_CACHE_WRITETHROUGH && off % STRATA_BLOCK == 0
      && count % STRATA_BLOCK == 0 && (cb = get_cbounce (count))) {
    /* Kept for reads if there is room; nothing depends on it. */
    memcpy (cb, buf, count);
    cache_put (v->cache, v->mv->id, b0, count / STRATA_BLOCK, cb,
               CACHE_CLEAN | CACHE_NOWAIT);
  }
  return 0;
}

static int
cached_pwrite (struct volume *v, const void *buf, uint32_t count,
               uint64_t off, bool fua)
{
  uint64_t b0 = off / STRATA_BLOCK;
  uint64_t b1 = div_round_up (off + count, STRATA_BLOCK);
  uint32_t n = b1 - b0;
  struct piece lk = block_piece (b0, b1);
  const char *data = buf;
  enum config_cache_mode mode;
  int r;

 again:
  if (range_lock (v->s, &lk, 1) == -1)
    return -1;
  if (pool_cache_dead (v->p)) {
    r = dead_pwrite (v, buf, count, off, fua);
    goto out;
  }
  mode = cache_mode (v);
  if (mode != CONFIG_CACHE_WRITEBACK
      && !cache_holds (v->cache, v->mv->id, b0, n)) {
    r = direct_pwrite (v, buf, count, off, fua, mode);
    goto out;
  }
  if (off % STRATA_BLOCK || count % STRATA_BLOCK
      || (uintptr_t) buf % 4096) {
    char *cb = get_cbounce ((size_t) n * STRATA_BLOCK);
    r = -1;
    if (!cb)
      goto out;
    /* The partial edges as they are now. */
    if (off % STRATA_BLOCK && read_blocks (v, b0, b0 + 1, cb) == -1)
      goto out;
    if ((off + count) % STRATA_BLOCK
        && (b1 - 1 > b0 || off % STRATA_BLOCK == 0)
        && read_blocks (v, b1 - 1, b1,
                        cb + (size_t) (n - 1) * STRATA_BLOCK) == -1)
      goto out;
    memcpy (cb + (off - b0 * STRATA_BLOCK), buf, count);
    data = cb;
  }
  r = cache_put (v->cache, v->mv->id, b0, n, data,
                 (fua ? CACHE_FUA : 0) | CACHE_NOWAIT);
  if (r == -1 && errno == EAGAIN) {
    range_unlock (v->s, &lk, 1);
    if (cache_wait_room (v->cache, (uint64_t) (n + 1) * STRATA_BLOCK) == -1)
      return strata_error_prefix ("volume %s", v->mv->name);
    data = buf;
    goto again;
  }
  if (r == -1 && errno == ESHUTDOWN)
    /* Detached meanwhile, so it held nothing of these blocks. */
    r = direct_pwrite (v, buf, count, off, fua, CONFIG_CACHE_NONE);
  else if (r == -1) {
    cache_failed (v);
    if (pool_cache_dead (v->p))
      r = dead_pwrite (v, buf, count, off, fua);
  }
 out:
  range_unlock (v->s, &lk, 1);
  return r;
}

/* Trim (TRIM) or zero [OFF, OFF+COUNT) of a volume with a cache: whole
 * blocks become a zero record (or, where the cache holds none of them
 * and the volume does not write back, go to the members); partial
 * blocks are written (zero) or left alone (trim). */
static int
cached_zero (struct volume *v, uint32_t count, uint64_t off, bool fua,
             bool trim)
{
  uint64_t end = off + count;
  uint64_t w0 = round_up (off, STRATA_BLOCK), w1 = round_down (end,
                                                               STRATA_BLOCK);
  struct piece lk;
  int r = 0;

  if (w0 >= w1)			/* no whole block */
    return trim ? 0 : cached_pwrite (v, zero_block, count, off, fua);
  if (!trim) {
    if (w0 > off && cached_pwrite (v, zero_block, w0 - off, off, false) == -1)
      return -1;
    if (end > w1 && cached_pwrite (v, zero_block, end - w1, w1, false) == -1)
      return -1;
  }
  lk = block_piece (w0 / STRATA_BLOCK, w1 / STRATA_BLOCK);
 again:
  if (range_lock (v->s, &lk, 1) == -1)
    return -1;
  if (pool_cache_dead (v->p))
    r = dead_pwrite (v, NULL, w1 - w0, w0, false);
  else if (cache_mode (v) != CONFIG_CACHE_WRITEBACK
           && !cache_holds (v->cache, v->mv->id, w0 / STRATA_BLOCK,
                            (w1 - w0) / STRATA_BLOCK))
    r = discard_range (v, w1 - w0, w0);
  else {
    r = cache_put (v->cache, v->mv->id, w0 / STRATA_BLOCK,
                   (w1 - w0) / STRATA_BLOCK, NULL, CACHE_NOWAIT);
    if (r == -1 && errno == EAGAIN) {
      range_unlock (v->s, &lk, 1);
      if (cache_wait_room (v->cache, 2 * STRATA_BLOCK) == -1)
        return strata_error_prefix ("volume %s", v->mv->name);
      goto again;
    }
    if (r == -1 && errno == ESHUTDOWN)	/* detached meanwhile */
      r = discard_range (v, w1 - w0, w0);
    else if (r == -1) {
      cache_failed (v);
      if (pool_cache_dead (v->p))
        r = dead_pwrite (v, NULL, w1 - w0, w0, false);
    }
  }
  range_unlock (v->s, &lk, 1);
  if (r == 0 && fua)
    r = volume_flush (v);
  return r;
}

int
volume_destage_write (struct volume *v, uint64_t blk, uint32_t nblk,
                      const void *buf, const uint64_t *lsn)
{
  uint64_t size = v->mv->size, nb = div_round_up (size, STRATA_BLOCK);
  struct piece lk;
  int r = 0;

  /* Blocks past the end (a shrink since) are dropped. */
  if (blk >= nb)
    return 0;
  nblk = MIN (nblk, nb - blk);
  lk = block_piece (blk, blk + nblk);
  if (range_lock (v->s, &lk, 1) == -1)
    return -1;
  if (!buf) {
    /* A zero record: the range as zeros, chunks freed where whole, and
     * the bytes of a partial last block written. */
    uint64_t o1 = MIN (size, (blk + nblk) * STRATA_BLOCK);
    for (uint64_t o = blk * STRATA_BLOCK, len; r == 0 && o < o1; o += len) {
      len = MIN (o1 - o, 1u << 30);
      r = discard_range (v, len, o);
    }
    if (r == 0 && o1 == size && size % STRATA_BLOCK)
      r = do_pwrite (v, zero_block, size % STRATA_BLOCK,
                     size - size % STRATA_BLOCK, false);
  }
  else
    /* Runs of blocks the cache still holds at these versions: a write
     * that went to the members directly since is not overwritten. */
    for (uint32_t i = 0; i < nblk && r == 0;) {
      uint32_t k = 0;
      uint64_t o, len;
      if (!cache_live (v->cache, v->mv->id, blk + i, lsn[i])) {
        i++;
        continue;
      }
      while (i + k < nblk && cache_live (v->cache, v->mv->id, blk + i + k,
                                          lsn[i + k]))
        k++;
      o = (blk + i) * STRATA_BLOCK;
      len = MIN ((uint64_t) k * STRATA_BLOCK, size - o);
      r = do_pwrite (v, (const char *) buf + (size_t) i * STRATA_BLOCK, len,
                     o, false);
      i += k;
    }
  range_unlock (v->s, &lk, 1);
  return r;
}
