/* strata: dirty columns, checksum write-back and crash resync (see
 * resync.h).
 *
 * Design notes
 * ------------
 * Each column has a runtime state (struct meta_column): CLEAN, DIRTY, or
 * CLEANING while a cleaner pass works on it.  A writer increments
 * `writers` and then reads `state`; the cleaner sets CLEANING and then
 * reads `writers` (both sequentially consistent), so either the cleaner
 * sees the writer and leaves the column alone, or the writer sees
 * CLEANING and takes the slow path.  The slow path and the whole cleaner
 * pass hold r->lock, so a DIRTY commit made by a writer always follows
 * the CLEAN commit of a pass that looked at the same column: the journal
 * never says clean while a write is in flight.
 *
 * The cleaner holds r->lock across its I/O (checksum pages, flush,
 * commit).  Only writers to clean columns wait for it; a pass is short
 * and runs every RESYNC_INTERVAL seconds.
 *
 * A dirty column's copy on a device that cannot be used may miss the
 * column's new checksum slot (and, after a crash, part of the last
 * writes): it is made stale before the column is marked clean, so that
 * a member that comes back never offers a copy whose slot is behind its
 * data.  A copy crash resync cannot read or rewrite is made stale before
 * its device is failed.
 *
 * The last copy is never made stale.  A dirty column with no copy that
 * can be used (every device holding one is missing or failed) stays
 * dirty: its data may be ahead of its checksum slot, nothing can be read
 * to compute new checksums, and making its copies stale would lose data
 * that is only out of reach (an unreplicated volume on a member that did
 * not answer at open).  At open such a column becomes UNSYNCED, which
 * csum_get() and mark_dirty() refuse, so nothing reads or writes it; so
 * does a column a write reached no copy of (volume.c).  It is resynced
 * when a device of it comes back (resync_returned), or by the first open
 * that reaches a copy.  The cleaner leaves dirty columns it cannot reach
 * dirty.
 *
 * Lack of space is no fault of a device (pool_device_no_space): a
 * column whose checksum slot found its device out of space stays dirty,
 * with its copies as they are, and a later pass (or crash resync, which
 * recomputes the checksums from the data) tries again; a copy crash
 * resync could not rewrite for lack of space is made stale, and its
 * device stays up.
 *
 * A second thread, the catcher, tries the devices that are away every
 * RESYNC_INTERVAL (pool_rejoin_away).  One that comes back has the
 * copies it missed stale: the catcher copies them again with a rebuild
 * of that device (what strata device add does), at the online rate, so
 * that the pool gets its redundancy back without a command.  It is not
 * the cleaner because both may take long (a member that answers slowly,
 * a large copy), and the cleaner's passes must go on meanwhile.  While
 * another rebuild runs (a command's), it waits for it and tries again;
 * one started by a command while the catcher's runs stops the
 * catcher's (resync_catch_yield) and does the rest.
 */
#include <endian.h>
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "crc32c.h"
#include "csum.h"
#include "error.h"
#include "job.h"
#include "rebuild.h"
#include "resync.h"
#include "util.h"

struct col_ref {
  struct meta_volume *v;
  uint64_t idx;
  struct meta_chunk *c;
  uint32_t col;
  bool full;			/* a checksum slot write found no space */
};

struct resync {
  struct pool *p;
  /* Protects pending[], npending, committing, and every change of a
   * column's state away from CLEAN; held by a whole cleaner pass. */
  pthread_mutex_t lock;
  pthread_cond_t cond;		/* a DIRTY commit or a pass finished */
  struct col_ref *pending;	/* columns waiting for a DIRTY commit */
  size_t npending, cap;
  bool committing;		/* a writer is committing pending[] */
  /* The cleaner thread. */
  pthread_t thread;
  bool running;
  pthread_mutex_t tick_lock;	/* protects stop, catching */
  pthread_cond_t tick;
  bool stop;
  /* The catcher thread (above): its wake-up, the devices whose stale
   * copies it is to copy again (its own), and whether it is running a
   * rebuild (catch_cond is broadcast when that ends). */
  pthread_t catcher;
  bool catcher_running;
  pthread_cond_t catch_cond;
  bool *catch_want;		/* [META_MAX_DEVICES] */
  bool catching;
  _Atomic int quit;		/* stops the catcher's rebuild (resync.h) */
  _Atomic uint64_t cleaned;
  _Atomic uint64_t rec_columns, rec_bytes;	/* resynced since open */
  uint64_t heals;		/* journal_heals() the cleaner last saw */
};

struct resync *
resync_new (struct pool *p)
{
  struct resync *r = calloc (1, sizeof *r);

  if (!r) {
    strata_error (ENOMEM, "out of memory");
    return NULL;
  }
  r->p = p;
  r->catch_want = calloc (META_MAX_DEVICES, sizeof *r->catch_want);
  if (!r->catch_want) {
    free (r);
    strata_error (ENOMEM, "out of memory");
    return NULL;
  }
  pthread_mutex_init (&r->lock, NULL);
  pthread_cond_init (&r->cond, NULL);
  pthread_mutex_init (&r->tick_lock, NULL);
  pthread_cond_init (&r->tick, NULL);
  pthread_cond_init (&r->catch_cond, NULL);
  return r;
}

void
resync_free (struct resync *r)
{
  if (!r)
    return;
  resync_stop (r);
  pthread_mutex_destroy (&r->lock);
  pthread_cond_destroy (&r->cond);
  pthread_mutex_destroy (&r->tick_lock);
  pthread_cond_destroy (&r->tick);
  pthread_cond_destroy (&r->catch_cond);
  free (r->pending);
  free (r->catch_want);
  free (r);
}

void
resync_stats (struct resync *r, struct resync_stats *st)
{
  st->columns = atomic_load (&r->rec_columns);
  st->bytes = atomic_load (&r->rec_bytes);
  st->cleaned = atomic_load (&r->cleaned);
}

/* Commit COLS[0..N) dirty (DIRTY) or clean, in bounded entries. */
static int
commit_cols (struct resync *r, const struct col_ref *cols, size_t n,
             bool dirty)
{
  struct meta_col_item *items = malloc (MIN (n, 4096) * sizeof *items);
  int ret = 0;

  if (!items)
    return strata_error (ENOMEM, "out of memory");
  for (size_t k = 0; k < n && ret == 0; k += 4096) {
    size_t m = 0;
    struct fbuf e;
    struct journal_item it;

    for (size_t i = k; i < MIN (n, k + 4096); i++) {
      /* Columns of one chunk share an item. */
      if (m > 0 && items[m - 1].vol == cols[i].v->id
          && items[m - 1].chunk == cols[i].idx)
        items[m - 1].mask |= 1ull << cols[i].col;
      else
        items[m++] = (struct meta_col_item) { cols[i].v->id, cols[i].idx,
                                              1ull << cols[i].col };
    }
    fbuf_init_write (&e);
    meta_entry_col_state (&e, dirty, items, m);
    it = (struct journal_item) { META_E_COL_STATE, e.len, e.p };
    ret = e.bad ? strata_error (ENOMEM, "out of memory")
                : journal_append (pool_journal (r->p), &it, 1);
    fbuf_free (&e);
  }
  free (items);
  return ret;
}

/* ---- writers ---- */

/* The index in pending[] of column COL of chunk IDX of V, or -1.  A
 * column is named by volume, chunk and column, not by its chunk header:
 * a rebuild may swap the header (EXT_REPLACE) while writers wait. */
static ssize_t
pending_at (struct resync *r, struct meta_volume *v, uint64_t idx,
            uint32_t col)
{
  for (size_t i = 0; i < r->npending; i++)
    if (r->pending[i].v == v && r->pending[i].idx == idx
        && r->pending[i].col == col)
      return i;
  return -1;
}

/* The slow path: make the column dirty in the journal, sharing one
 * commit with every writer that arrives meanwhile.
 *
 * Nothing here touches a chunk header of another writer: the commit's
 * journal entry sets the state of the columns it names (meta.c), on the
 * chunks as they are then.  A writer may leave while its entry is still
 * pending (the column turned dirty through another header, or an error):
 * it takes its entry out, so that pending[] never outlives the writers
 * whose requests keep its columns allocated. */
static int
mark_dirty (struct resync *r, struct meta_volume *v, uint64_t idx,
            struct meta_chunk *c, uint32_t col)
{
  struct meta_column *mc = &c->col[col];
  ssize_t at;
  int ret = 0;

  pthread_mutex_lock (&r->lock);
  for (;;) {
    struct col_ref *batch;
    size_t n;

    if (atomic_load (&mc->state) == META_COL_DIRTY)
      break;
    if (atomic_load (&mc->state) == META_COL_UNSYNCED) {
      /* Another write reached no copy meanwhile (design notes). */
      ret = strata_error (EIO, "volume %s: column %" PRIu32 " of chunk %"
                          PRIu64 " cannot be written until it is resynced",
                          v->name, col, idx);
      break;
    }
    if (pending_at (r, v, idx, col) < 0) {
      if (r->npending == r->cap) {
        size_t cap = r->cap ? r->cap * 2 : 64;
        struct col_ref *np = realloc (r->pending, cap * sizeof *np);
        if (!np) {
          ret = strata_error (ENOMEM, "out of memory");
          break;
        }
        r->pending = np;
        r->cap = cap;
      }
      r->pending[r->npending++] = (struct col_ref) { v, idx, NULL, col, false };
    }
    if (r->committing) {
      pthread_cond_wait (&r->cond, &r->lock);
      continue;
    }
    /* Lead one commit for everything pending. */
    batch = r->pending;
    n = r->npending;
    r->pending = NULL;
    r->npending = r->cap = 0;
    r->committing = true;
    pthread_mutex_unlock (&r->lock);
    ret = commit_cols (r, batch, n, true);
    pthread_mutex_lock (&r->lock);
    r->committing = false;
    free (batch);
    pthread_cond_broadcast (&r->cond);
    if (ret == -1)
      break;
  }
  if ((at = pending_at (r, v, idx, col)) >= 0)
    r->pending[at] = r->pending[--r->npending];
  pthread_mutex_unlock (&r->lock);
  return ret;
}

int
resync_write_begin (struct resync *r, struct meta_volume *v, uint64_t idx,
                    struct meta_chunk *c, uint32_t col)
{
  struct meta_column *mc = &c->col[col];

  /* A dirty column without an array is taken for a new one (csum.h):
   * the array must be in memory before the column turns dirty, and is
   * kept there by the count, which comes first (csum.c design notes). */
  atomic_fetch_add (&mc->writers, 1);	/* the caller's write_end */
  if (!atomic_load (&mc->csum) && !csum_get (r->p, v, c, col))
    return -1;
  atomic_store_explicit (&mc->touched, true, memory_order_relaxed);
  if (atomic_load (&mc->state) == META_COL_DIRTY)
    return 0;
  return mark_dirty (r, v, idx, c, col);
}

void
resync_write_end (struct meta_chunk *c, uint32_t col)
{
  atomic_fetch_sub (&c->col[col].writers, 1);
}

int
resync_free_begin (struct resync *r, struct meta_volume *v,
                   const uint64_t *idx, size_t n, const bool *ok,
                   uint64_t *was_clean)
{
  struct col_ref *cols = NULL;
  size_t nc = 0, cap = 0;
  int ret = 0;

  for (size_t k = 0; k < n; k++) {
    struct meta_chunk *c = ok[k] ? meta_chunk_get (v, idx[k]) : NULL;
    was_clean[k] = 0;
    for (uint32_t col = 0; c && col < c->width; col++)
      atomic_fetch_add (&c->col[col].writers, 1);
  }

  /* Like mark_dirty(), in one commit for all.  A cleaner pass holds
   * the lock throughout, and none starts while a commit is led: each
   * column is CLEAN, DIRTY or UNSYNCED here, never CLEANING. */
  pthread_mutex_lock (&r->lock);
  while (r->committing)
    pthread_cond_wait (&r->cond, &r->lock);
  for (size_t k = 0; k < n && ret == 0; k++) {
    struct meta_chunk *c = ok[k] ? meta_chunk_get (v, idx[k]) : NULL;
    for (uint32_t col = 0; c && col < c->width; col++) {
      struct meta_column *mc = &c->col[col];
      atomic_store_explicit (&mc->touched, true, memory_order_relaxed);
      if (atomic_load (&mc->state) != META_COL_CLEAN)
        continue;		/* dirty already, or UNSYNCED (resync
				   computes its checksums from its data) */
      if (nc == cap) {
        size_t nn = cap ? cap * 2 : 64;
        struct col_ref *m = realloc (cols, nn * sizeof *m);
        if (!m) {
          ret = strata_error (ENOMEM, "out of memory");
          break;
        }
        cols = m;
        cap = nn;
      }
      cols[nc++] = (struct col_ref) { v, idx[k], c, col, false };
      was_clean[k] |= 1ull << col;
    }
  }
  if (ret == 0 && nc > 0) {
    r->committing = true;
    pthread_mutex_unlock (&r->lock);
    ret = commit_cols (r, cols, nc, true);
    pthread_mutex_lock (&r->lock);
    r->committing = false;
    pthread_cond_broadcast (&r->cond);
  }
  pthread_mutex_unlock (&r->lock);
  free (cols);
  if (ret == -1) {
    int e = errno;
    for (size_t k = 0; k < n; k++) {
      struct meta_chunk *c = ok[k] ? meta_chunk_get (v, idx[k]) : NULL;
      for (uint32_t col = 0; c && col < c->width; col++)
        resync_write_end (c, col);
    }
    errno = e;
  }
  return ret;
}

void
resync_free_end (struct resync *r, struct meta_volume *v, const uint64_t *idx,
                 size_t n, const bool *counted, const bool *zeroed,
                 const uint64_t *was_clean)
{
  size_t nb = csum_count (r->p);

  for (size_t k = 0; k < n; k++) {
    struct meta_chunk *c = counted[k] ? meta_chunk_get (v, idx[k]) : NULL;
    for (uint32_t col = 0; c && col < c->width; col++) {
      struct meta_column *mc = &c->col[col];
      uint32_t *a = atomic_load (&mc->csum);
      if (zeroed[k] && a)
        for (size_t b = 0; b < nb; b++)
          a[b] = csum_zero_block ();
      else if (!zeroed[k] && !a && (was_clean[k] >> col) & 1
               && !csum_load (r->p, v, c, col))
        /* Its copies cannot be read either: reads fail until they can,
         * and crash resync settles the column. */
        fprintf (stderr, "strata: pool %s: %s\n", pool_config (r->p)->name,
                 strata_last_error ());
      resync_write_end (c, col);
    }
  }
}

/* ---- walking the chunk maps ---- */

struct walk {
  struct pool *p;
  struct meta_volume *v;
  struct col_ref *cols;
  size_t n, cap;
  bool (*want) (struct walk *w, struct meta_chunk *c, uint32_t col);
  bool all;
  int err;
};

static int
walk_chunk (void *opaque, uint64_t idx, struct meta_chunk *c)
{
  struct walk *w = opaque;

  for (uint32_t col = 0; col < c->width; col++) {
    if (!w->want (w, c, col))
      continue;
    if (w->n == w->cap) {
      size_t cap = w->cap ? w->cap * 2 : 256;
      struct col_ref *nc = realloc (w->cols, cap * sizeof *nc);
      if (!nc) {
        w->err = ENOMEM;
        return 1;
      }
      w->cols = nc;
      w->cap = cap;
    }
    w->cols[w->n++] = (struct col_ref) { w->v, idx, c, col, false };
  }
  return 0;
}

/* Collect the columns W->want picks over every volume.  Called with the
 * pool's walk lock held. */
static int
walk (struct pool *p, struct walk *w)
{
  size_t nv;
  struct meta_volume **vols = meta_volumes_copy (pool_meta (p), &nv);

  if (!vols)
    return -1;
  for (size_t i = 0; i < nv && !w->err; i++) {
    w->v = vols[i];
    meta_foreach_chunk (vols[i], walk_chunk, w);
  }
  free (vols);
  if (w->err)
    return strata_error (w->err, "out of memory");
  return 0;
}

/* ---- the cleaner ---- */

/* A dirty column left alone for a whole pass becomes CLEANING. */
static bool
want_clean (struct walk *w, struct meta_chunk *c, uint32_t col)
{
  struct meta_column *mc = &c->col[col];

  if (atomic_load (&mc->state) != META_COL_DIRTY)
    return false;
  if (atomic_exchange (&mc->touched, false) && !w->all)
    return false;
  if (atomic_load (&mc->writers) > 0)
    return false;
  atomic_store (&mc->state, META_COL_CLEANING);
  if (atomic_load (&mc->writers) > 0) {
    atomic_store (&mc->state, META_COL_DIRTY);
    return false;
  }
  return true;
}

/* Whether some copy of CR can be used (read, and written to). */
static bool
reachable (struct pool *p, const struct col_ref *cr)
{
  for (uint32_t rep = 0; rep < cr->v->replicas; rep++)
    if (pool_copy_readable (p, cr->c, cr->v->replicas, cr->col, rep))
      return true;
  return false;
}

/* Whether no checksum slot write of CR found a full device. */
static bool
not_full (struct pool *p, const struct col_ref *cr)
{
  (void) p;
  return !cr->full;
}

/* Move the columns of COLS[0..N) for which KEEP is false to the end,
 * keeping the order of the others (commit_cols groups them by chunk).
 * Sets *K to how many others there are.  Returns 0 or -1. */
static int
split_cols (struct pool *p, struct col_ref *cols, size_t n,
            bool (*keep) (struct pool *, const struct col_ref *), size_t *k)
{
  struct col_ref *out = NULL;
  size_t nout = 0;

  *k = 0;
  for (size_t i = 0; i < n; i++) {
    if (keep (p, &cols[i])) {
      cols[(*k)++] = cols[i];
      continue;
    }
    if (!out && !(out = malloc ((n - i) * sizeof *out)))
      return strata_error (ENOMEM, "out of memory");
    out[nout++] = cols[i];
  }
  if (nout > 0)
    memcpy (&cols[*k], out, nout * sizeof *out);
  free (out);
  return 0;
}

/* The copies of the dirty columns COLS on devices that cannot be used
 * now may hold any part of the last writes (those in progress at a
 * crash), and their checksum slots are not rewritten with the others':
 * they are made stale, so that nothing reads them before a rebuild has
 * copied the column to them again.  Returns 0 or -1. */
static int
stale_unusable (struct pool *p, struct col_ref *cols, size_t n)
{
  struct meta_stale_item *items = malloc ((n + 1) * sizeof *items);
  size_t k = 0;
  int ret;

  if (!items)
    return strata_error (ENOMEM, "out of memory");
  for (size_t i = 0; i < n; i++) {
    struct col_ref *cr = &cols[i];
    uint32_t R = cr->v->replicas;
    uint8_t m = 0;
    for (uint32_t rep = 0; rep < R; rep++)
      if (!pool_device_usable (p, cr->c->ext[cr->col * R + rep].dev)
          && !meta_copy_stale (&cr->c->col[cr->col], rep))
        m |= 1u << rep;
    if (m)
      items[k++] = (struct meta_stale_item) { cr->v->id, cr->idx, cr->col,
                                              m };
  }
  /* In bounded entries, as commit_cols(): a pass may hold very many. */
  ret = 0;
  for (size_t i = 0; i < k && ret == 0; i += 4096)
    ret = pool_commit_stale (p, true, items + i, MIN (4096, k - i));
  free (items);
  return ret;
}

/* Write the checksum slots of COLS, which all have a usable copy, to
 * every usable replica, after making the others stale.  A column whose
 * slot found a device out of space is marked full and must stay dirty:
 * the device is not failed, and crash resync or a later pass puts the
 * slot right. */
static int
write_csums (struct pool *p, struct col_ref *cols, size_t n)
{
  uint64_t slot = format_csum_slot (pool_meta (p)->extent_size);
  enum { BATCH = 64 };
  char *bufs = device_alloc_buf (BATCH * slot);
  struct dev_req rq[BATCH * 8];
  int ret = 0;

  if (!bufs)
    return strata_error (ENOMEM, "out of memory");
  ret = stale_unusable (p, cols, n);
  for (size_t k = 0; k < n && ret == 0; k += BATCH) {
    size_t nr = 0;
    for (size_t i = k; i < MIN (n, k + BATCH); i++) {
      /* Resync has just put the array of an UNSYNCED column in place,
       * which csum_get() refuses. */
      uint32_t *a = atomic_load (&cols[i].c->col[cols[i].col].csum);
      if (!a)
        a = csum_get (p, cols[i].v, cols[i].c, cols[i].col);
      if (!a) {
        ret = -1;
        break;
      }
      size_t m = csum_write_reqs (p, cols[i].v, cols[i].c, cols[i].col, a,
                                  bufs + (i - k) * slot, rq + nr);
      for (size_t q = nr; q < nr + m; q++)
        rq[q].tag += (i - k) * 8;	/* column of the batch, replica */
      nr += m;
    }
    if (ret == 0 && device_submit (rq, nr) == -1)
      /* A device that cannot take its checksums is failing; the column's
       * other copies carry on. */
      for (size_t q = 0; q < nr && ret == 0; q++)
        if (rq[q].res != 0) {
          struct col_ref *cr = &cols[k + rq[q].tag / 8];
          struct meta_extent e = cr->c->ext[cr->col * cr->v->replicas
                                            + rq[q].tag % 8];
          struct meta_stale_item it = { cr->v->id, cr->idx, cr->col,
                                        1u << (rq[q].tag % 8) };
          char why[200];
          if (device_no_space (rq[q].res)) {
            snprintf (why, sizeof why, "volume %s chunk %" PRIu64 " column %"
                      PRIu32 ": a checksum slot write found no space; the "
                      "column stays dirty", cr->v->name, cr->idx, cr->col);
            pool_device_no_space (p, e.dev, why);
            cr->full = true;
            continue;
          }
          snprintf (why, sizeof why, "checksum write failed: %s",
                    strerror (-rq[q].res));
          ret = pool_commit_stale (p, true, &it, 1);
          if (ret == 0)
            ret = pool_device_fail (p, e.dev, why);
        }
  }
  free (bufs);
  return ret;
}

int
resync_clean (struct resync *r, bool all)
{
  struct pool *p = r->p;
  struct walk w = { .p = p, .want = want_clean, .all = all };
  size_t k = 0;			/* the first K have a usable copy, then
				   those with their slots written */
  int ret;

  pool_walk_lock (p);
  pthread_mutex_lock (&r->lock);
  while (r->committing)
    pthread_cond_wait (&r->cond, &r->lock);
  ret = walk (p, &w);
  if (ret == 0)
    ret = split_cols (p, w.cols, w.n, reachable, &k);
  if (ret == 0 && k > 0) {
    ret = write_csums (p, w.cols, k);
    if (ret == 0)
      ret = split_cols (p, w.cols, k, not_full, &k);
    if (ret == 0)
      ret = pool_flush (p);
    if (ret == 0 && k > 0)
      ret = commit_cols (r, w.cols, k, false);
  }
  for (size_t i = 0; i < w.n; i++)
    atomic_store (&w.cols[i].c->col[w.cols[i].col].state,
                  ret == 0 && i < k ? META_COL_CLEAN : META_COL_DIRTY);
  if (ret == 0)
    atomic_fetch_add (&r->cleaned, k);
  pthread_cond_broadcast (&r->cond);
  pthread_mutex_unlock (&r->lock);
  pool_walk_unlock (p);
  free (w.cols);
  return ret == 0 ? (int) MIN (k, INT32_MAX) : -1;
}

static void *
cleaner (void *opaque)
{
  struct resync *r = opaque;
  unsigned ticks = 0;

  /* Every tick the checksum arrays are trimmed to the pool's
   * checksum_memory, if they grew past it; every RESYNC_INTERVAL the
   * cleaner makes a pass. */
  pthread_mutex_lock (&r->tick_lock);
  while (!r->stop) {
    struct timespec ts;
    clock_gettime (CLOCK_REALTIME, &ts);
    ts.tv_nsec += RESYNC_TICK_MS * 1000000L;
    if (ts.tv_nsec >= 1000000000L) {
      ts.tv_sec++;
      ts.tv_nsec -= 1000000000L;
    }
    pthread_cond_timedwait (&r->tick, &r->tick_lock, &ts);
    if (r->stop)
      break;
    pthread_mutex_unlock (&r->tick_lock);
    csum_shrink (r->p, false);
    if (++ticks * RESYNC_TICK_MS >= RESYNC_INTERVAL * 1000) {
      uint64_t heals = journal_heals (pool_journal (r->p));
      ticks = 0;
      if (resync_clean (r, false) == -1)
        fprintf (stderr, "strata: pool %s: cleaner: %s\n",
                 pool_config (r->p)->name, strata_last_error ());
      /* Writes that reached no copy while the journal had failed left
       * their columns UNSYNCED on devices that never left: once it has
       * healed, resync them as if a device came back. */
      if (heals != r->heals) {
        if (resync_returned (r) == 0)
          r->heals = heals;
        else		/* tried again next pass */
          fprintf (stderr, "strata: pool %s: cleaner: %s\n",
                   pool_config (r->p)->name, strata_last_error ());
      }
    }
    pthread_mutex_lock (&r->tick_lock);
  }
  pthread_mutex_unlock (&r->tick_lock);
  return NULL;
}

/* Copy again the stale copies of device D, which rejoined.  Returns 1
 * if another rebuild is running or took over, or the server is
 * stopping (try again later), else 0. */
static int
catch_up (struct resync *r, uint32_t d)
{
  struct rebuild_opts o = { .rate = JOB_ONLINE_RATE, .drain = -1,
                            .prefer = -1, .resync = d, .background = true,
                            .quit = &r->quit };
  bool busy = false;
  int rc, e = 0;

  if (pool_job_running (r->p, META_JOB_REBUILD))
    return 1;
  pthread_mutex_lock (&r->tick_lock);
  if (r->stop) {
    pthread_mutex_unlock (&r->tick_lock);
    return 1;
  }
  r->catching = true;
  pthread_mutex_unlock (&r->tick_lock);
  rc = rebuild_run (r->p, &o, stderr, stderr);
  if (rc == -1)
    e = errno;
  pthread_mutex_lock (&r->tick_lock);
  r->catching = false;
  if (atomic_load (&r->quit) == RESYNC_CATCH_YIELD) {
    atomic_store (&r->quit, RESYNC_CATCH_RUN);
    busy = true;
  }
  pthread_cond_broadcast (&r->catch_cond);
  pthread_mutex_unlock (&r->tick_lock);
  /* Stopped (by the server, or by rebuild --stop): its report said
   * so. */
  if (rc == -1 && e == EBUSY)
    busy = true;
  else if (rc == -1 && !busy && atomic_load (&r->quit) == RESYNC_CATCH_RUN
           && !pool_job_cancelled (r->p, META_JOB_REBUILD))
    fprintf (stderr, "strata: pool %s: device %s: the copies it missed "
             "stay stale (not read) until strata device add or rebuild: "
             "%s\n", pool_config (r->p)->name,
             pool_meta (r->p)->devices[d].name, strata_last_error ());
  return busy;
}

bool
resync_catch_yield (struct resync *r)
{
  bool yielded = false;

  pthread_mutex_lock (&r->tick_lock);
  while (r->catching) {
    int run = RESYNC_CATCH_RUN;
    atomic_compare_exchange_strong (&r->quit, &run, RESYNC_CATCH_YIELD);
    yielded = true;
    pthread_cond_wait (&r->catch_cond, &r->tick_lock);
  }
  pthread_mutex_unlock (&r->tick_lock);
  return yielded;
}

static void *
catcher (void *opaque)
{
  struct resync *r = opaque;

  pthread_mutex_lock (&r->tick_lock);
  while (!r->stop) {
    struct timespec ts;
    clock_gettime (CLOCK_REALTIME, &ts);
    ts.tv_sec += RESYNC_INTERVAL;
    pthread_cond_timedwait (&r->catch_cond, &r->tick_lock, &ts);
    if (r->stop)
      break;
    pthread_mutex_unlock (&r->tick_lock);
    pool_rejoin_away (r->p, r->catch_want);
    /* A device left wanted (another rebuild ran) is tried again next
     * time: its copies may be done by that rebuild; if not, by this. */
    for (uint32_t d = 0; d < pool_ndevices (r->p); d++)
      if (r->catch_want[d] && catch_up (r, d) == 0)
        r->catch_want[d] = false;
    pthread_mutex_lock (&r->tick_lock);
  }
  pthread_mutex_unlock (&r->tick_lock);
  device_thread_exit ();	/* this thread's io_uring, if it made one */
  return NULL;
}

int
resync_start (struct resync *r)
{
  int e;

  if (r->running)
    return 0;
  r->stop = false;
  atomic_store (&r->quit, RESYNC_CATCH_RUN);
  e = pthread_create (&r->catcher, NULL, catcher, r);
  if (e)
    return strata_error (e, "cannot start the catcher thread: %s",
                         strerror (e));
  r->catcher_running = true;
  e = pthread_create (&r->thread, NULL, cleaner, r);
  if (e) {
    resync_stop (r);
    return strata_error (e, "cannot start the cleaner thread: %s",
                         strerror (e));
  }
  r->running = true;
  return 0;
}

void
resync_stop (struct resync *r)
{
  if (!r->running && !r->catcher_running)
    return;
  pthread_mutex_lock (&r->tick_lock);
  r->stop = true;
  atomic_store (&r->quit, RESYNC_CATCH_STOP);
  pthread_cond_signal (&r->tick);
  pthread_cond_broadcast (&r->catch_cond);
  pthread_mutex_unlock (&r->tick_lock);
  if (r->running)
    pthread_join (r->thread, NULL);
  if (r->catcher_running)
    pthread_join (r->catcher, NULL);
  r->running = r->catcher_running = false;
}

/* ---- recovery ---- */

static bool
want_dirty (struct walk *w, struct meta_chunk *c, uint32_t col)
{
  (void) w;
  return (c->dirty >> col) & 1;
}

#define RESYNC_IO (1024 * 1024)	/* bytes per replica per step */
#define RESYNC_PROGRESS_MS 5000	/* between progress lines */

/* Read the checksum slots of the usable replicas of CR into SLOTS[r]
 * (allocated here; the caller frees them).  Returns the mask of those
 * read; one that cannot be read is counted as its device's read error
 * and left out (the data decides). */
static uint32_t
read_slots (struct pool *p, struct col_ref *cr, uint32_t **slots)
{
  uint32_t R = cr->v->replicas, have = 0;
  uint64_t slot = format_csum_slot (pool_meta (p)->extent_size);
  struct dev_req rq[8];
  size_t nr = 0;

  for (uint32_t rep = 0; rep < R; rep++) {
    struct meta_extent e = cr->c->ext[cr->col * R + rep];
    if (!pool_copy_readable (p, cr->c, R, cr->col, rep)
        || !(slots[rep] = device_alloc_buf (slot)))
      continue;
    rq[nr++] = (struct dev_req) { .dev = pool_device (p, e.dev),
                                  .op = DEV_READ, .buf = slots[rep],
                                  .len = slot, .off = csum_slot_offset (p, e),
                                  .tag = rep };
  }
  device_submit (rq, nr);
  for (size_t k = 0; k < nr; k++) {
    char why[200];
    if (rq[k].res == 0) {
      have |= 1u << rq[k].tag;
      continue;
    }
    snprintf (why, sizeof why, "checksum read failed: %s",
              strerror (-rq[k].res));
    pool_device_read_error (p, cr->c->ext[cr->col * R + rq[k].tag].dev, why);
  }
  return have;
}

/* Which copy of block B (at BLK bytes into the step's buffers) a crash
 * resync keeps, among the replicas in OK that were read.  Where they
 * differ, the first whose data matches a value of the block in the
 * checksum slots (SLOTS, those in HAVE): the block as it stood when the
 * column was last clean, or as the cleaner was writing it; so a copy
 * damaged behind strata's back is not copied over a good one.  Failing
 * that, a copy most of them agree on; failing that, the first.  Any
 * copy that is not damaged is right: copies differ only where a write
 * was in flight, not yet made durable by a flush or FUA.  (An extent is
 * zeroed when it is allocated, so the values a reused extent's slots
 * still hold from before match only zeros or data written since.) */
static int
choose_block (uint32_t R, uint32_t ok, char **bufs, size_t blk, size_t b,
              uint32_t **slots, uint32_t have, int *why)
{
  uint32_t crc[8];
  int first = -1, best = -1;
  uint32_t best_n = 0, n_ok = 0;
  bool differ = false;

  *why = 0;
  for (uint32_t r = 0; r < R; r++) {
    if (!(ok & (1u << r)))
      continue;
    n_ok++;
    if (first < 0)
      first = r;
    else if (memcmp (bufs[r] + blk, bufs[first] + blk, STRATA_BLOCK) != 0)
      differ = true;
  }
  if (!differ)
    return first;
  for (uint32_t r = 0; r < R; r++)
    if (ok & (1u << r))
      crc[r] = crc32c (0, bufs[r] + blk, STRATA_BLOCK);
  for (uint32_t r = 0; r < R; r++) {
    if (!(ok & (1u << r)))
      continue;
    for (uint32_t s = 0; s < R; s++)
      if ((have & (1u << s)) && le32toh (slots[s][b]) == crc[r]) {
        *why = 1;
        return r;
      }
  }
  for (uint32_t r = 0; r < R; r++) {
    uint32_t same = 0;
    if (!(ok & (1u << r)))
      continue;
    for (uint32_t s = 0; s < R; s++)
      if ((ok & (1u << s)) && crc[s] == crc[r]
          && memcmp (bufs[s] + blk, bufs[r] + blk, STRATA_BLOCK) == 0)
        same++;
    if (same > best_n) {
      best_n = same;
      best = r;
    }
  }
  if (2 * best_n > n_ok) {
    *why = 2;
    return best;
  }
  return first;
}

/* Log the N blocks of copy R of CR that crash resync rewrote, from
 * block FIRST, and why the copy kept instead was kept (WHY_N: how many
 * blocks for each reason choose_block() gives). */
static void
say_rewritten (struct pool *p, struct col_ref *cr, uint32_t r, uint64_t n,
               size_t first, const uint64_t *why_n)
{
  static const char *const why[] = { "the first copy read",
                                     "matching the block's last checksum",
                                     "held by most copies" };
  char reasons[200] = "";
  size_t len = 0;

  for (int k = 0; k < 3; k++)
    if (why_n[k] > 0 && len < sizeof reasons)
      len += snprintf (reasons + len, sizeof reasons - len, "%s%" PRIu64
                       " %s", len ? ", " : "", why_n[k], why[k]);
  fprintf (stderr, "strata: pool %s: crash resync: volume %s chunk %"
           PRIu64 " column %" PRIu32 ": the copy on %s differed in %"
           PRIu64 " block%s from block %zu, rewritten from the copy kept "
           "(%s)\n", pool_config (p)->name, cr->v->name, cr->idx, cr->col,
           pool_meta (p)->devices[cr->c->ext[cr->col * cr->v->replicas
                                             + r].dev].name,
           n, n == 1 ? "" : "s", first, reasons);
}

/* Make the usable replicas of one column identical, block by block (the
 * copy choose_block() keeps), and compute its checksums.  Adds the bytes
 * rewritten to *BYTES. */
static int
resync_column (struct pool *p, struct col_ref *cr, char **bufs,
               uint64_t *bytes)
{
  struct meta_volume *v = cr->v;
  uint32_t R = v->replicas;
  uint64_t es = pool_meta (p)->extent_size;
  size_t n = csum_count (p);
  uint32_t *a = calloc (n, sizeof *a);
  struct meta_column *mc = &cr->c->col[cr->col];
  struct dev_req rq[8], *wq = NULL;
  uint32_t *slots[8] = { NULL }, have = 0;
  uint64_t nrw[8] = { 0 }, why_n[8][3] = { { 0 } };
  size_t first_rw[8] = { 0 };
  size_t wcap = 0;
  int ret = 0;

  if (!a)
    return strata_error (ENOMEM, "out of memory");
  if (R > 1)
    have = read_slots (p, cr, slots);
  for (uint64_t off = 0; off < es && ret == 0; off += RESYNC_IO) {
    uint32_t len = MIN (RESYNC_IO, es - off);
    size_t nr = 0, nw = 0;
    uint32_t ok = 0;

    for (uint32_t rep = 0; rep < R; rep++) {
      struct meta_extent e = cr->c->ext[cr->col * R + rep];
      if (!pool_copy_readable (p, cr->c, R, cr->col, rep))
        continue;
      rq[nr] = (struct dev_req) { .dev = pool_device (p, e.dev),
                                  .op = DEV_READ, .media = true,
                                  .buf = bufs[rep], .len = len,
                                  .off = pool_extent_offset (p, e, off),
                                  .tag = rep };
      nr++;
    }
    if (nr == 0) {
      /* No copy left: nothing to make agree, and no data to take the
       * checksums from (the column's state is left as it is). */
      free (a);
      a = NULL;
      break;
    }
    device_submit (rq, nr);
    for (size_t k = 0; k < nr; k++)
      if (rq[k].res == 0)
        ok |= 1u << rq[k].tag;
    for (size_t k = 0; k < nr; k++) {
      struct meta_extent e = cr->c->ext[cr->col * R + rq[k].tag];
      struct meta_stale_item it = { v->id, cr->idx, cr->col,
                                    1u << rq[k].tag };
      if (rq[k].res == 0)
        continue;
      /* A copy that cannot be made to agree must not be read again,
       * unless it is the last (design notes): its device is failed,
       * and the column stays dirty. */
      if ((ok && pool_commit_stale (p, true, &it, 1) == -1)
          || pool_device_fail (p, e.dev, "unreadable during crash "
                               "resync") == -1)
        ret = -1;
    }
    if (!ok) {
      free (a);
      a = NULL;
      break;
    }
    if (wcap < R * (len / STRATA_BLOCK)) {
      free (wq);
      wcap = R * (len / STRATA_BLOCK);
      wq = malloc (wcap * sizeof *wq);
      if (!wq) {
        ret = strata_error (ENOMEM, "out of memory");
        break;
      }
    }
    for (uint32_t blk = 0; blk < len; blk += STRATA_BLOCK) {
      size_t b = (off + blk) / STRATA_BLOCK;
      int why, src = choose_block (R, ok, bufs, blk, b, slots, have, &why);

      a[b] = crc32c (0, bufs[src] + blk, STRATA_BLOCK);
      for (uint32_t rep = 0; rep < R; rep++) {
        struct meta_extent e = cr->c->ext[cr->col * R + rep];
        if (!(ok & (1u << rep)) || (int) rep == src
            || memcmp (bufs[rep] + blk, bufs[src] + blk, STRATA_BLOCK) == 0)
          continue;
        if (nrw[rep]++ == 0)
          first_rw[rep] = b;
        why_n[rep][why]++;
        wq[nw++] = (struct dev_req) { .dev = pool_device (p, e.dev),
                                      .op = DEV_WRITE,
                                      .buf = bufs[src] + blk,
                                      .len = STRATA_BLOCK,
                                      .off = pool_extent_offset (p, e,
                                                                 off + blk),
                                      .tag = rep };
      }
    }
    device_submit (wq, nw);
    for (size_t k = 0; k < nw && ret == 0; k++) {
      struct meta_extent e = cr->c->ext[cr->col * R + wq[k].tag];
      struct meta_stale_item it = { v->id, cr->idx, cr->col,
                                    1u << wq[k].tag };
      if (wq[k].res == 0)
        *bytes += STRATA_BLOCK;
      else if (pool_commit_stale (p, true, &it, 1) == -1)
        ret = -1;
      else if (device_no_space (wq[k].res)) {
        char why[200];
        snprintf (why, sizeof why, "volume %s chunk %" PRIu64 " column %"
                  PRIu32 ": crash resync found no space; its copy is stale "
                  "until 'strata rebuild'", v->name, cr->idx, cr->col);
        pool_device_no_space (p, e.dev, why);
      } else if (pool_device_fail (p, e.dev, "write failed during crash "
                                   "resync") == -1)
        ret = -1;
    }
  }
  free (wq);
  for (uint32_t r = 0; r < R; r++) {
    free (slots[r]);
    if (nrw[r] > 0)
      say_rewritten (p, cr, r, nrw[r], first_rw[r], why_n[r]);
  }
  /* A column that was in use (UNSYNCED after a write that reached no
   * copy) keeps its array: a request that fetched it before may still
   * hold it. */
  if (ret == 0 && a)
    csum_install (p, mc, a, true);
  else
    free (a);
  return ret;
}

/* A column crash resync could not reach, now reachable. */
static bool
want_unsynced (struct walk *w, struct meta_chunk *c, uint32_t col)
{
  struct col_ref cr = { w->v, 0, c, col, false };

  return atomic_load (&c->col[col].state) == META_COL_UNSYNCED
    && reachable (w->p, &cr);
}

/* Resync the columns W picks (the dirty ones at open, the unsynced ones
 * that can be reached later): make their copies agree, write their
 * checksums, commit them clean, and say so under the name WHAT.  Those
 * with no usable copy become UNSYNCED (design notes).  With
 * pool_walk_lock held.  Returns 0 or -1. */
static int
resync_pass (struct resync *r, struct walk *w, const char *what)
{
  struct pool *p = r->p;
  size_t k = 0;			/* the first K have a usable copy, */
  size_t kc = 0;		/* the first KC their slots written */
  char *bufs[8] = { NULL };
  uint64_t bytes = 0, t0, last;
  int ret;

  ret = walk (p, w);
  for (uint32_t i = 0; i < 8 && ret == 0 && w->n > 0; i++)
    if (!(bufs[i] = device_alloc_buf (RESYNC_IO)))
      ret = strata_error (ENOMEM, "out of memory");
  t0 = last = util_now_ms ();
  for (size_t i = 0; i < w->n && ret == 0; i++) {
    ret = resync_column (p, &w->cols[i], bufs, &bytes);
    /* Opening waits for this: say how far it is, every few seconds. */
    if (util_now_ms () - last >= RESYNC_PROGRESS_MS) {
      last = util_now_ms ();
      fprintf (stderr, "strata: pool %s: %s: %zu of %zu columns (%.0f s)\n",
               pool_config (p)->name, what, i + 1, w->n,
               (last - t0) / 1000.0);
    }
  }
  if (ret == 0)
    ret = split_cols (p, w->cols, w->n, reachable, &k);
  if (ret == 0 && k > 0)
    ret = write_csums (p, w->cols, k);
  /* The columns [kc, k) agree and have their checksums in memory, but
   * not all in their slots (a device out of space): they stay dirty,
   * for the cleaner. */
  if (ret == 0 && k > 0)
    ret = split_cols (p, w->cols, k, not_full, &kc);
  if (ret == 0 && k > 0)
    ret = pool_flush (p);
  if (ret == 0 && kc > 0)
    ret = commit_cols (r, w->cols, kc, false);
  if (ret == 0) {
    for (size_t i = 0; i < w->n; i++)
      atomic_store (&w->cols[i].c->col[w->cols[i].col].state,
                    i < kc ? META_COL_CLEAN
                    : i < k ? META_COL_DIRTY : META_COL_UNSYNCED);
    atomic_fetch_add (&r->rec_columns, k);
    atomic_fetch_add (&r->rec_bytes, bytes);
    if (k > 0)
      fprintf (stderr, "strata: pool %s: %s: %zu columns checked, %" PRIu64
               " bytes rewritten\n", pool_config (p)->name, what, k, bytes);
    if (w->n > k)
      fprintf (stderr, "strata: pool %s: %s: %zu columns have no copy on a "
               "device that can be used; they are not read or written "
               "until one is back\n", pool_config (p)->name, what, w->n - k);
  }
  for (uint32_t i = 0; i < 8; i++)
    free (bufs[i]);
  free (w->cols);
  return ret;
}

int
resync_recover (struct resync *r)
{
  struct walk w = { .p = r->p, .want = want_dirty };
  int ret;

  pool_walk_lock (r->p);
  ret = resync_pass (r, &w, "crash resync");
  pool_walk_unlock (r->p);
  return ret;
}

int
resync_returned (struct resync *r)
{
  struct walk w = { .p = r->p, .want = want_unsynced };
  int ret;

  /* Writers of these columns wait in mark_dirty() for r->lock: they
   * found the array resync_column() put in place, and the column not
   * dirty.  Readers fail until that array is in place. */
  pool_walk_lock (r->p);
  pthread_mutex_lock (&r->lock);
  while (r->committing)
    pthread_cond_wait (&r->cond, &r->lock);
  ret = resync_pass (r, &w, "crash resync of the columns that could not "
                     "be reached");
  pthread_cond_broadcast (&r->cond);
  pthread_mutex_unlock (&r->lock);
  pool_walk_unlock (r->p);
  return ret;
}
