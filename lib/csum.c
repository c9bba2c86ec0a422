/* strata: per-block checksums (see csum.h).
 *
 * Design notes
 * ------------
 * A checksum slot is an array of little-endian crc32c values, one per
 * 4 KiB block of the extent, padded to whole pages.  Loading a column's
 * array reads the slot of every usable replica at once.  Normally they
 * agree.  Where they do not (a slot damaged on one device), the block is
 * read from every replica and the value that matches some replica's data
 * wins; slots holding anything else are rewritten before the array is
 * used, so a later load agrees again.  When no value matches, the first
 * replica's is kept: reads of that block then fail verification on every
 * copy and return EIO, which is the truth.
 *
 * Letting arrays go (csum_shrink): only a clean column's array may go,
 * since only then do the slots on disk hold the same values, and only
 * while nobody holds it (users) or writes the column (writers).  A
 * holder counts itself before it loads the pointer; the shrinker swaps
 * the pointer to NULL before it reads the counts (all sequentially
 * consistent).  So either the shrinker sees the holder and puts the
 * array back, or the holder sees NULL and loads the array again from
 * the slots.  Arrays are installed and put back under csum_lock, so a
 * put-back never meets an array installed meanwhile.  A writer counts
 * itself (resync_write_begin) before it makes the column dirty, so a
 * dirty column always has its array: a dirty column without one is
 * taken for a new one.  The one exception holds zeros too: a chunk
 * being freed is made dirty without loading its arrays, just before
 * its extents are zeroed (resync_free_begin).
 *
 * A load that finds the slots of a clean column disagreeing rewrites the
 * odd ones, but only while the column is still clean and without an
 * array: once a writer has installed one, the cleaner may be writing
 * those slots itself.
 */
#include <endian.h>
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "crc32c.h"
#include "csum.h"
#include "error.h"
#include "util.h"

static uint32_t zero_crc;
static pthread_once_t zero_once = PTHREAD_ONCE_INIT;

static void
zero_init (void)
{
  static const char z[STRATA_BLOCK];

  zero_crc = crc32c (0, z, sizeof z);
}

uint32_t
csum_zero_block (void)
{
  pthread_once (&zero_once, zero_init);
  return zero_crc;
}

void
csum_blocks (const void *buf, size_t len, uint32_t *out)
{
  const char *p = buf;

  for (size_t i = 0; i < len / STRATA_BLOCK; i++)
    out[i] = crc32c (0, p + i * STRATA_BLOCK, STRATA_BLOCK);
}

void
csum_copy_blocks (void *dst, const void *src, size_t len, uint32_t *out)
{
  char *d = dst;
  const char *s = src;

  for (size_t i = 0; i < len / STRATA_BLOCK; i++) {
    memcpy (d + i * STRATA_BLOCK, s + i * STRATA_BLOCK, STRATA_BLOCK);
    out[i] = crc32c (0, d + i * STRATA_BLOCK, STRATA_BLOCK);
  }
}

size_t
csum_count (struct pool *p)
{
  return pool_meta (p)->extent_size / STRATA_BLOCK;
}

uint64_t
csum_slot_offset (struct pool *p, struct meta_extent e)
{
  struct meta *m = pool_meta (p);

  return m->devices[e.dev].csum_offset
    + (uint64_t) e.ext * format_csum_slot (m->extent_size);
}

/* Settle block B where the slots disagree: read it from every replica
 * that had a slot (HAVE) and take the value that matches one's data. */
static uint32_t
settle_block (struct pool *p, struct meta_volume *v, struct meta_chunk *c,
              uint32_t col, size_t b, uint32_t **slots, uint32_t have,
              char *blk)
{
  uint32_t R = v->replicas;
  uint32_t first = 0;
  bool any = false;

  for (uint32_t r = 0; r < R; r++) {
    struct meta_extent e = c->ext[col * R + r];
    uint32_t want;

    if (!(have & (1u << r)))
      continue;
    want = le32toh (slots[r][b]);
    if (!any) {
      first = want;
      any = true;
    }
    if (device_pread (pool_device (p, e.dev), blk, STRATA_BLOCK,
                      pool_extent_offset (p, e, b * STRATA_BLOCK)) == 0
        && crc32c (0, blk, STRATA_BLOCK) == want)
      return want;
  }
  return first;
}

static uint32_t *
load (struct pool *p, struct meta_volume *v, struct meta_chunk *c,
      uint32_t col)
{
  uint32_t R = v->replicas;
  size_t n = csum_count (p);
  uint64_t slot = format_csum_slot (pool_meta (p)->extent_size);
  uint32_t *a = malloc (n * sizeof *a);
  uint32_t *slots[8] = { NULL };
  struct dev_req rq[8];
  uint32_t have = 0, bad = 0;
  size_t nr = 0;
  char *blk = NULL;

  if (!a) {
    strata_error (ENOMEM, "out of memory");
    return NULL;
  }
  for (uint32_t r = 0; r < R; r++) {
    struct meta_extent e = c->ext[col * R + r];
    if (!pool_copy_readable (p, c, R, col, r))
      continue;
    slots[r] = device_alloc_buf (slot);
    if (!slots[r]) {
      strata_error (ENOMEM, "out of memory");
      goto fail;
    }
    rq[nr] = (struct dev_req) { .dev = pool_device (p, e.dev), .op = DEV_READ,
                                .buf = slots[r], .len = slot,
                                .off = csum_slot_offset (p, e), .tag = r };
    nr++;
  }
  device_submit (rq, nr);
  for (size_t k = 0; k < nr; k++) {
    if (rq[k].res == 0)
      have |= 1u << rq[k].tag;
    else {
      char why[200];
      snprintf (why, sizeof why, "checksum read failed: %s",
                strerror (-rq[k].res));
      pool_device_read_error (p, c->ext[col * R + rq[k].tag].dev, why);
    }
  }
  if (have == 0) {
    strata_error (EIO, "volume %s: no copy of the checksums of column %"
                  PRIu32 " (extent %" PRIu32 " of device %s) can be read",
                  v->name, col, c->ext[col * R].ext,
                  pool_meta (p)->devices[c->ext[col * R].dev].name);
    goto fail;
  }

  /* Take the first readable slot, then settle every disagreement. */
  for (uint32_t r = 0; r < R; r++)
    if (have & (1u << r)) {
      for (size_t b = 0; b < n; b++)
        a[b] = le32toh (slots[r][b]);
      break;
    }
  for (size_t b = 0; b < n; b++) {
    bool differ = false;
    for (uint32_t r = 0; r < R; r++)
      if ((have & (1u << r)) && le32toh (slots[r][b]) != a[b])
        differ = true;
    if (!differ)
      continue;
    if (!blk && !(blk = device_alloc_buf (STRATA_BLOCK))) {
      strata_error (ENOMEM, "out of memory");
      goto fail;
    }
    a[b] = settle_block (p, v, c, col, b, slots, have, blk);
    for (uint32_t r = 0; r < R; r++)
      if ((have & (1u << r)) && le32toh (slots[r][b]) != a[b])
        bad |= 1u << r;
  }

  /* Rewrite the slots that disagreed, durably, before anyone uses A
   * (see the design notes for why only while nobody else has). */
  if (bad && pool_writable (p) && !atomic_load (&c->col[col].csum)
      && atomic_load (&c->col[col].state) == META_COL_CLEAN) {
    nr = 0;
    for (uint32_t r = 0; r < R; r++) {
      struct meta_extent e = c->ext[col * R + r];
      if (!(bad & (1u << r)))
        continue;
      for (size_t b = 0; b < n; b++)
        slots[r][b] = htole32 (a[b]);
      rq[nr++] = (struct dev_req) { .dev = pool_device (p, e.dev),
                                    .op = DEV_WRITE, .fua = true,
                                    .buf = slots[r], .len = slot,
                                    .off = csum_slot_offset (p, e), .tag = r };
      pool_device_csum_error (p, e.dev);
    }
    device_submit (rq, nr);
    for (size_t k = 0; k < nr; k++)
      if (rq[k].res == 0)
        pool_device_repaired (p, c->ext[col * R + rq[k].tag].dev, 1);
  }
  for (uint32_t r = 0; r < R; r++)
    free (slots[r]);
  free (blk);
  return a;

 fail:
  for (uint32_t r = 0; r < R; r++)
    free (slots[r]);
  free (blk);
  free (a);
  return NULL;
}

uint32_t *
csum_get (struct pool *p, struct meta_volume *v, struct meta_chunk *c,
          uint32_t col)
{
  struct meta_column *mc = &c->col[col];
  uint32_t *a = atomic_load (&mc->csum);	/* after the count (design notes) */
  uint8_t st = atomic_load (&mc->state);

  if (st == META_COL_UNSYNCED) {
    /* Its checksums may not match its data (resync.c). */
    struct meta_extent e = c->ext[col * v->replicas];
    strata_error (EIO, "volume %s: column %" PRIu32 " (extent %" PRIu32
                  " of device %s) may hold a write that reached no copy "
                  "whole: it can be used once it is resynced, which is done "
                  "when one of its devices is back or the metadata journal "
                  "is whole again (strata status)", v->name, col, e.ext,
                  pool_meta (p)->devices[e.dev].name);
    return NULL;
  }
  if (a)
    return a;
  if (st != META_COL_CLEAN && pool_writable (p)) {
    size_t n = csum_count (p);
    a = malloc (n * sizeof *a);
    if (!a) {
      strata_error (ENOMEM, "out of memory");
      return NULL;
    }
    for (size_t b = 0; b < n; b++)
      a[b] = csum_zero_block ();
  }
  else if (!(a = load (p, v, c, col)))
    return NULL;
  return csum_install (p, mc, a, false);
}

uint32_t *
csum_load (struct pool *p, struct meta_volume *v, struct meta_chunk *c,
           uint32_t col)
{
  uint32_t *a = load (p, v, c, col);

  return a ? csum_install (p, &c->col[col], a, false) : NULL;
}

uint32_t *
csum_hold (struct pool *p, struct meta_volume *v, struct meta_chunk *c,
           uint32_t col)
{
  struct meta_column *mc = &c->col[col];
  uint32_t *a;

  atomic_fetch_add (&mc->users, 1);	/* before the pointer is loaded */
  if (!atomic_load_explicit (&mc->used, memory_order_relaxed))
    atomic_store_explicit (&mc->used, true, memory_order_relaxed);
  if (!(a = csum_get (p, v, c, col)))
    atomic_fetch_sub (&mc->users, 1);
  return a;
}

void
csum_release (struct meta_chunk *c, uint32_t col)
{
  atomic_fetch_sub (&c->col[col].users, 1);
}

uint32_t *
csum_install (struct pool *p, struct meta_column *mc, uint32_t *a,
              bool overwrite)
{
  struct meta *m = pool_meta (p);
  uint32_t *old = NULL;

  pthread_mutex_lock (&m->csum_lock);
  if (atomic_compare_exchange_strong (&mc->csum, &old, a)) {
    atomic_fetch_add (&m->csum_loads, 1);
    old = a;
  }
  else {
    if (overwrite)
      memcpy (old, a, csum_count (p) * sizeof *a);
    free (a);
  }
  pthread_mutex_unlock (&m->csum_lock);
  return old;
}

/* ---- letting arrays go ---- */

size_t
csum_budget (struct pool *p)
{
  return pool_config (p)->checksum_memory
    / (csum_count (p) * sizeof (uint32_t));
}

/* Let go of MC's array if it is clean and nobody holds or writes it (see
 * the design notes).  Returns true if it went. */
static bool
evict (struct meta *m, struct meta_column *mc)
{
  uint32_t *a;
  bool gone = false;

  if (atomic_load (&mc->state) != META_COL_CLEAN
      || atomic_load (&mc->users) > 0 || atomic_load (&mc->writers) > 0)
    return false;
  pthread_mutex_lock (&m->csum_lock);
  if ((a = atomic_exchange (&mc->csum, NULL))) {
    if (atomic_load (&mc->users) == 0 && atomic_load (&mc->writers) == 0
        && atomic_load (&mc->state) == META_COL_CLEAN) {
      free (a);
      gone = true;
    }
    else
      atomic_store (&mc->csum, a);
  }
  pthread_mutex_unlock (&m->csum_lock);
  return gone;
}

struct shrink {
  struct meta *m;
  int sweep;			/* 0 counts; 1 and 2 let go */
  bool all;
  size_t resident;		/* arrays found by sweep 0 */
  size_t want;			/* arrays still to let go */
  size_t gone;
};

static int
shrink_chunk (void *opaque, uint64_t idx, struct meta_chunk *c)
{
  struct shrink *s = opaque;

  (void) idx;
  for (uint32_t col = 0; col < c->width; col++) {
    struct meta_column *mc = &c->col[col];
    if (!atomic_load (&mc->csum))
      continue;
    if (s->sweep == 0) {
      s->resident++;
      continue;
    }
    if (s->want == 0)
      return 1;
    /* The clock: an array held since the last sweep gets another
     * chance (unless every array that can go is to go). */
    if (atomic_exchange (&mc->used, false) && s->sweep == 1 && !s->all)
      continue;
    if (evict (s->m, mc)) {
      s->want--;
      s->gone++;
    }
  }
  return 0;
}

/* Run S's sweep over every volume.  Called with the walk lock held. */
static int
sweep (struct meta *m, struct shrink *s)
{
  size_t nv;
  struct meta_volume **vols = meta_volumes_copy (m, &nv);

  if (!vols)
    return -1;
  for (size_t i = 0; i < nv; i++)
    if (meta_foreach_chunk (vols[i], shrink_chunk, s) != 0)
      break;
  free (vols);
  return 0;
}

size_t
csum_shrink (struct pool *p, bool all)
{
  struct meta *m = pool_meta (p);
  size_t budget = csum_budget (p), low = budget - budget / 8;
  struct shrink s = { .m = m, .all = all };

  if (!all && atomic_load (&m->csum_resident)
              + atomic_load (&m->csum_loads) <= budget)
    return 0;
  if (pthread_mutex_trylock (&m->shrink_lock) != 0)
    return 0;
  pool_walk_lock (p);
  /* Arrays installed from here on are counted again by the next call,
   * whether or not sweep 0 sees them: an estimate that errs high. */
  atomic_store (&m->csum_loads, 0);
  if (sweep (m, &s) == 0) {
    s.want = all ? s.resident : s.resident > low ? s.resident - low : 0;
    for (s.sweep = 1; s.sweep <= 2 && s.want > 0; s.sweep++)
      if (sweep (m, &s) == -1)
        break;
  }
  atomic_store (&m->csum_resident, s.resident - s.gone);
  pool_walk_unlock (p);
  pthread_mutex_unlock (&m->shrink_lock);
  return s.gone;
}

size_t
csum_resident (struct pool *p)
{
  struct shrink s = { .m = pool_meta (p) };

  pool_walk_lock (p);
  sweep (s.m, &s);
  pool_walk_unlock (p);
  return s.resident;
}

size_t
csum_write_reqs (struct pool *p, struct meta_volume *v, struct meta_chunk *c,
                 uint32_t col, const uint32_t *a, void *buf,
                 struct dev_req *rq)
{
  uint32_t R = v->replicas;
  size_t n = csum_count (p), nr = 0;
  uint64_t slot = format_csum_slot (pool_meta (p)->extent_size);
  uint32_t *le = buf;

  memset (buf, 0, slot);
  for (size_t b = 0; b < n; b++)
    le[b] = htole32 (a[b]);
  for (uint32_t r = 0; r < R; r++) {
    struct meta_extent e = c->ext[col * R + r];
    if (!pool_copy_readable (p, c, R, col, r))
      continue;
    rq[nr++] = (struct dev_req) { .dev = pool_device (p, e.dev),
                                  .op = DEV_WRITE, .buf = buf, .len = slot,
                                  .off = csum_slot_offset (p, e), .tag = r };
  }
  return nr;
}
