/* strata: extent allocator (see alloc.h).
 *
 * Design notes: placement of one replica picks, among usable devices of
 * the right class with free space that this column does not use yet, the
 * best tier by (domain already holds a copy of this column, extents of
 * this chunk already on the device) and then a device within that tier at
 * random, weighted by free extents.  Inside a device the lowest free
 * extent at or after a moving hint is used, so extents fill in order.
 */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "alloc.h"
#include "error.h"
#include "util.h"

struct adev {
  uint64_t *bitmap;		/* 1 = used */
  uint32_t count;		/* extents */
  uint32_t nfree;
  uint32_t hint;
  bool usable;
  char class[CONFIG_CLASS_MAX];
  char domain[CONFIG_DOMAIN_MAX];
};

struct alloc {
  pthread_mutex_t lock;		/* protects everything below */
  struct adev *d;		/* [META_MAX_DEVICES] */
  uint32_t n;			/* devices in use */
  uint64_t rng;
};

static uint64_t
rng_next (struct alloc *a)
{
  /* xorshift64* */
  a->rng ^= a->rng >> 12;
  a->rng ^= a->rng << 25;
  a->rng ^= a->rng >> 27;
  return a->rng * 0x2545F4914F6CDD1Dull;
}

static int
init_dev (struct adev *d, const struct meta_device *md)
{
  d->count = md->extent_count;
  d->nfree = d->count;
  d->usable = md->state == META_DEV_UP;
  memcpy (d->class, md->class, sizeof d->class);
  memcpy (d->domain, md->domain, sizeof d->domain);
  d->bitmap = calloc (div_round_up (d->count, 64) + 1, sizeof (uint64_t));
  if (!d->bitmap)
    return strata_error (ENOMEM, "out of memory");
  return 0;
}

struct alloc *
alloc_new (const struct meta *m, uint64_t seed)
{
  struct alloc *a = calloc (1, sizeof *a);

  if (!a || !(a->d = calloc (META_MAX_DEVICES, sizeof *a->d))) {
    free (a);
    strata_error (ENOMEM, "out of memory");
    return NULL;
  }
  pthread_mutex_init (&a->lock, NULL);
  a->n = m->ndevices;
  if (seed == 0 && util_random (&seed, sizeof seed) == -1)
    seed = 0x9e3779b97f4a7c15ull;
  a->rng = seed ? seed : 1;
  for (uint32_t i = 0; i < a->n; i++)
    if (init_dev (&a->d[i], &m->devices[i]) == -1) {
      alloc_free (a);
      return NULL;
    }
  return a;
}

int
alloc_add_device (struct alloc *a, uint32_t dev, const struct meta_device *md)
{
  int r = -1;

  pthread_mutex_lock (&a->lock);
  if (dev != a->n || dev >= META_MAX_DEVICES)
    strata_error (EINVAL, "device %u is not the next device", dev);
  else if ((r = init_dev (&a->d[dev], md)) == 0)
    a->n = dev + 1;
  pthread_mutex_unlock (&a->lock);
  return r;
}

void
alloc_free (struct alloc *a)
{
  if (!a)
    return;
  for (uint32_t i = 0; i < a->n; i++)
    free (a->d[i].bitmap);
  free (a->d);
  pthread_mutex_destroy (&a->lock);
  free (a);
}

static bool
test_bit (const uint64_t *bm, uint32_t i)
{
  return bm[i / 64] & (1ull << (i % 64));
}

int
alloc_mark_used (struct alloc *a, struct meta_extent e)
{
  struct adev *d;

  pthread_mutex_lock (&a->lock);
  if (e.dev >= a->n || e.ext >= a->d[e.dev].count) {
    pthread_mutex_unlock (&a->lock);
    return strata_error (EBADMSG, "extent %u of device %u is out of range",
                         e.ext, e.dev);
  }
  d = &a->d[e.dev];
  if (test_bit (d->bitmap, e.ext)) {
    pthread_mutex_unlock (&a->lock);
    return strata_error (EBADMSG, "extent %u of device %u is used twice",
                         e.ext, e.dev);
  }
  d->bitmap[e.ext / 64] |= 1ull << (e.ext % 64);
  d->nfree--;
  pthread_mutex_unlock (&a->lock);
  return 0;
}

static int
load_chunk (void *opaque, uint64_t idx, struct meta_chunk *c)
{
  struct alloc *a = opaque;

  (void) idx;
  for (uint32_t i = 0; i < c->n; i++)
    if (alloc_mark_used (a, c->ext[i]) == -1)
      return -1;
  return 0;
}

int
alloc_load (struct alloc *a, struct meta *m)
{
  for (size_t i = 0; i < m->nvolumes; i++)
    if (meta_foreach_chunk (m->volumes[i], load_chunk, a) != 0)
      return strata_error_prefix ("volume %s", m->volumes[i]->name);
  return 0;
}

void
alloc_set_usable (struct alloc *a, uint32_t dev, bool usable)
{
  pthread_mutex_lock (&a->lock);
  if (dev < a->n)
    a->d[dev].usable = usable;
  pthread_mutex_unlock (&a->lock);
}

/* Lowest free extent of D at or after its hint, wrapping around.  D has
 * a free extent.  The first pass over the hint's word treats the bits
 * below the hint as used; the last pass (k == words) revisits that word
 * whole. */
static uint32_t
take_extent (struct adev *d)
{
  uint32_t words = div_round_up (d->count, 64);

  for (uint32_t k = 0; k <= words; k++) {
    uint32_t w = (d->hint / 64 + k) % words;
    uint64_t used = d->bitmap[w];
    if (k == 0)
      used |= (1ull << (d->hint % 64)) - 1;
    if (w == words - 1 && d->count % 64)
      used |= ~((1ull << (d->count % 64)) - 1);
    if (~used) {
      uint32_t e = w * 64 + __builtin_ctzll (~used);
      d->bitmap[w] |= 1ull << (e % 64);
      d->nfree--;
      d->hint = e + 1 < d->count ? e + 1 : 0;
      return e;
    }
  }
  abort ();			/* nfree said there was one */
}

static void
release_locked (struct alloc *a, const struct meta_extent *ext, size_t n)
{
  for (size_t i = 0; i < n; i++) {
    struct adev *d;
    if (ext[i].dev >= a->n)
      continue;
    d = &a->d[ext[i].dev];
    if (ext[i].ext < d->count && test_bit (d->bitmap, ext[i].ext)) {
      d->bitmap[ext[i].ext / 64] &= ~(1ull << (ext[i].ext % 64));
      d->nfree++;
    }
  }
}

/* Place one replica beside the LEN extents of COL (the copies of its
 * column placed so far): a usable device of CLASS with space, not used
 * by COL, best by (domains of COL it clashes with, extents of this chunk
 * it holds already: USE, may be NULL), then at random weighted by free
 * space.  Takes the extent.  Returns 0, or -1 if no device fits.  Called
 * with the lock held; CAND has room for a->n. */
static int
place_one (struct alloc *a, const char *class, const struct meta_extent *col,
           uint32_t len, const uint32_t *use, uint32_t *cand,
           struct meta_extent *out)
{
  uint32_t best_clash = UINT32_MAX, best_use = UINT32_MAX, nc = 0;
  uint64_t total = 0, pick;

  for (uint32_t i = 0; i < a->n; i++) {
    struct adev *d = &a->d[i];
    uint32_t clash = 0, u = use ? use[i] : 0;
    bool same_dev = false;
    if (!d->usable || d->nfree == 0
        || (class[0] && strcmp (class, d->class) != 0))
      continue;
    for (uint32_t k = 0; k < len; k++) {
      if (col[k].dev == i)
        same_dev = true;
      else if (strcmp (a->d[col[k].dev].domain, d->domain) == 0)
        clash++;
    }
    if (same_dev)
      continue;
    if (clash < best_clash || (clash == best_clash && u < best_use)) {
      best_clash = clash;
      best_use = u;
      nc = 0;
      total = 0;
    }
    if (clash == best_clash && u == best_use) {
      cand[nc++] = i;
      total += d->nfree;
    }
  }
  if (nc == 0)
    return -1;
  pick = rng_next (a) % total;
  for (uint32_t k = 0; k < nc; k++) {
    if (pick < a->d[cand[k]].nfree) {
      out->dev = cand[k];
      break;
    }
    pick -= a->d[cand[k]].nfree;
  }
  out->ext = take_extent (&a->d[out->dev]);
  return 0;
}

int
alloc_chunk (struct alloc *a, uint32_t width, uint32_t replicas,
             const char *class, struct meta_extent *out)
{
  uint32_t *use;		/* extents of this chunk per device */
  uint32_t *cand;
  size_t done = 0;

  use = calloc (META_MAX_DEVICES, sizeof *use);
  cand = calloc (META_MAX_DEVICES, sizeof *cand);
  if (!use || !cand) {
    free (use);
    free (cand);
    return strata_error (ENOMEM, "out of memory");
  }
  pthread_mutex_lock (&a->lock);
  for (uint32_t c = 0; c < width; c++) {
    for (uint32_t r = 0; r < replicas; r++) {
      struct meta_extent *col = &out[c * replicas];
      if (place_one (a, class, col, r, use, cand, &col[r]) == -1) {
        release_locked (a, out, done);
        pthread_mutex_unlock (&a->lock);
        free (use);
        free (cand);
        return strata_error (ENOSPC, "no space for a new chunk: %u replicas "
                             "need %u devices%s%s with free extents",
                             replicas, replicas, class[0] ? " of class " : "",
                             class);
      }
      use[col[r].dev]++;
      done = c * replicas + r + 1;
    }
  }
  pthread_mutex_unlock (&a->lock);
  free (use);
  free (cand);
  return 0;
}

int
alloc_replica (struct alloc *a, const char *class,
               const struct meta_extent *keep, uint32_t nkeep,
               int32_t prefer, struct meta_extent *out)
{
  uint32_t *cand = calloc (META_MAX_DEVICES, sizeof *cand);
  int r;

  if (!cand)
    return strata_error (ENOMEM, "out of memory");
  pthread_mutex_lock (&a->lock);
  r = -1;
  if (prefer >= 0 && (uint32_t) prefer < a->n) {
    struct adev *d = &a->d[prefer];
    bool fits = d->usable && d->nfree > 0
      && (!class[0] || strcmp (class, d->class) == 0);
    for (uint32_t k = 0; k < nkeep && fits; k++)
      if (keep[k].dev == (uint32_t) prefer
          || strcmp (a->d[keep[k].dev].domain, d->domain) == 0)
        fits = false;
    if (fits) {
      out->dev = prefer;
      out->ext = take_extent (d);
      r = 0;
    }
  }
  if (r == -1)
    r = place_one (a, class, keep, nkeep, NULL, cand, out);
  pthread_mutex_unlock (&a->lock);
  free (cand);
  if (r == -1)
    return strata_error (ENOSPC, "no usable device%s%s with a free extent "
                         "that holds no copy of this column",
                         class[0] ? " of class " : "", class);
  return 0;
}

void
alloc_release (struct alloc *a, const struct meta_extent *ext, size_t n)
{
  pthread_mutex_lock (&a->lock);
  release_locked (a, ext, n);
  pthread_mutex_unlock (&a->lock);
}

uint64_t
alloc_free_count (struct alloc *a, uint32_t dev)
{
  uint64_t v;

  pthread_mutex_lock (&a->lock);
  v = dev < a->n ? a->d[dev].nfree : 0;
  pthread_mutex_unlock (&a->lock);
  return v;
}

uint64_t
alloc_used_count (struct alloc *a, uint32_t dev)
{
  uint64_t v;

  pthread_mutex_lock (&a->lock);
  v = dev < a->n ? a->d[dev].count - a->d[dev].nfree : 0;
  pthread_mutex_unlock (&a->lock);
  return v;
}
