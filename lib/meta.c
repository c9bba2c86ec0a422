/* strata: metadata state, journal entries and checkpoints (see meta.h).
 *
 * Design notes: a volume's chunk map is a two-level table (a top array of
 * leaf pointers, each leaf META_LEAF atomic chunk pointers), so memory
 * grows with allocated chunks rather than with volume size.  Growing a
 * volume publishes a new top array; the old one is retired, not freed,
 * because lock-free readers may still hold it.
 *
 * Checkpoint layout (little-endian, via fbuf): pool uuid, name, extent
 * size, next volume id, the device table, then each volume with its
 * allocated chunks.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "meta.h"
#include "util.h"

#define CKPT_MAGIC 0x53544d43u	/* "CMTS" */

struct meta *
meta_new (void)
{
  struct meta *m = calloc (1, sizeof *m);

  if (!m || !(m->devices = calloc (META_MAX_DEVICES, sizeof *m->devices))) {
    free (m);
    strata_error (ENOMEM, "out of memory");
    return NULL;
  }
  pthread_mutex_init (&m->lock, NULL);
  pthread_mutex_init (&m->csum_lock, NULL);
  pthread_mutex_init (&m->shrink_lock, NULL);
  m->next_vol_id = 1;
  return m;
}

/* A new chunk of WIDTH columns and N extents, its columns in state
 * DIRTY (a bit mask). */
static struct meta_chunk *
chunk_new (uint32_t width, uint32_t n, uint64_t dirty)
{
  struct meta_chunk *c = calloc (1, sizeof *c + n * sizeof c->ext[0]);

  if (!c || !(c->col = calloc (width, sizeof *c->col))) {
    free (c);
    strata_error (ENOMEM, "out of memory");
    return NULL;
  }
  c->n = n;
  c->width = width;
  c->dirty = dirty;
  for (uint32_t i = 0; i < width; i++)
    atomic_init (&c->col[i].state,
                 (dirty >> i) & 1 ? META_COL_DIRTY : META_COL_CLEAN);
  return c;
}

static void
chunk_free (struct meta_chunk *c)
{
  if (!c)
    return;
  for (uint32_t i = 0; i < c->width; i++)
    free (atomic_load (&c->col[i].csum));
  free (c->col);
  free (c);
}

static uint64_t
all_columns (uint32_t width)
{
  return width >= 64 ? ~0ull : (1ull << width) - 1;
}

static void
volume_free (struct meta_volume *v)
{
  struct meta_map_top *top = atomic_load (&v->map);

  if (top) {
    for (size_t i = 0; i < top->nleaves; i++) {
      _Atomic (struct meta_chunk *) *leaf = atomic_load (&top->leaves[i]);
      if (!leaf)
        continue;
      for (size_t j = 0; j < META_LEAF; j++)
        chunk_free (atomic_load (&leaf[j]));
      free (leaf);
    }
    free (top);
  }
  for (unsigned i = 0; i < v->nretired; i++)
    free (v->retired[i]);
  while (v->retired_chunks) {
    struct meta_chunk *c = v->retired_chunks;
    v->retired_chunks = c->retired;
    free (c);			/* its col[] went to the new chunk */
  }
  free (v);
}

void
meta_volume_reap (struct meta *m, struct meta_volume *v)
{
  struct meta_chunk *c;

  pthread_mutex_lock (&m->lock);
  c = v->retired_chunks;
  v->retired_chunks = NULL;
  pthread_mutex_unlock (&m->lock);
  while (c) {
    struct meta_chunk *next = c->retired;
    free (c);
    c = next;
  }
}

const char *
meta_job_state_name (uint8_t s)
{
  switch (s) {
    case META_JOB_NONE: return "never run";
    case META_JOB_RUNNING: return "interrupted";
    case META_JOB_DONE: return "finished";
    case META_JOB_FAILED: return "failed";
    default: return "unknown";
  }
}

static void
meta_clear (struct meta *m)
{
  for (size_t i = 0; i < m->nvolumes; i++)
    volume_free (m->volumes[i]);
  free (m->volumes);
  m->volumes = NULL;
  m->nvolumes = 0;
  m->ndevices = 0;
  memset (m->devices, 0, META_MAX_DEVICES * sizeof *m->devices);
  memset (m->jobs, 0, sizeof m->jobs);
  memset (m->cache_uuid, 0, 16);
  free (m->lost);
  m->lost = NULL;
  m->nlost = 0;
  atomic_store (&m->nlost_hint, 0);
}

/* ---- ranges lost with the cache ---- */

static int
lost_cmp (const void *a, const void *b)
{
  const struct meta_lost *x = a, *y = b;
  if (x->vol != y->vol)
    return x->vol < y->vol ? -1 : 1;
  return x->blk < y->blk ? -1 : x->blk > y->blk;
}

/* Add (LOST) or take away ranges, keeping m->lost sorted and disjoint.
 * Under m->lock.  Returns 0 or -1. */
static int
lost_change (struct meta *m, bool lost, const struct meta_lost *it, size_t n)
{
  size_t cap = m->nlost + (lost ? n : 2 * n) + 1, k = 0;
  struct meta_lost *out = malloc (cap * sizeof *out);

  if (!out)
    return strata_error (ENOMEM, "out of memory");
  if (lost) {
    if (m->nlost)		/* m->lost may be NULL */
      memcpy (out, m->lost, m->nlost * sizeof *out);
    if (n)
      memcpy (out + m->nlost, it, n * sizeof *out);
    qsort (out, m->nlost + n, sizeof *out, lost_cmp);
    /* Merge overlapping and adjacent ranges. */
    for (size_t i = 0; i < m->nlost + n; i++) {
      if (k > 0 && out[k - 1].vol == out[i].vol
          && out[i].blk <= out[k - 1].blk + out[k - 1].nblk) {
        uint64_t end = MAX (out[k - 1].blk + out[k - 1].nblk,
                            out[i].blk + out[i].nblk);
        out[k - 1].nblk = end - out[k - 1].blk;
      }
      else
        out[k++] = out[i];
    }
  }
  else {
    /* Each kept range minus every item (at most one split per item). */
    for (size_t i = 0; i < m->nlost; i++) {
      struct meta_lost cur = m->lost[i];
      bool gone = false;
      for (size_t j = 0; j < n && !gone; j++) {
        uint64_t a = it[j].blk, b = it[j].blk + it[j].nblk;
        uint64_t c0 = cur.blk, c1 = cur.blk + cur.nblk;
        if (it[j].vol != cur.vol || b <= c0 || c1 <= a)
          continue;
        if (a > c0 && b < c1) {		/* a hole in the middle */
          if (k + 2 > cap) {
            struct meta_lost *o = realloc (out, (cap *= 2) * sizeof *o);
            if (!o) {
              free (out);
              return strata_error (ENOMEM, "out of memory");
            }
            out = o;
          }
          out[k++] = (struct meta_lost) { cur.vol, c0, a - c0 };
          cur = (struct meta_lost) { cur.vol, b, c1 - b };
        }
        else if (a <= c0 && b >= c1)
          gone = true;
        else if (a <= c0)
          cur = (struct meta_lost) { cur.vol, b, c1 - b };
        else
          cur = (struct meta_lost) { cur.vol, c0, a - c0 };
      }
      if (!gone) {
        if (k + 1 > cap) {
          struct meta_lost *o = realloc (out, (cap *= 2) * sizeof *o);
          if (!o) {
            free (out);
            return strata_error (ENOMEM, "out of memory");
          }
          out = o;
        }
        out[k++] = cur;
      }
    }
    qsort (out, k, sizeof *out, lost_cmp);
  }
  free (m->lost);
  m->lost = out;
  m->nlost = k;
  atomic_store (&m->nlost_hint, k);
  return 0;
}

bool
meta_lost_any (struct meta *m, uint32_t vol, uint64_t blk, uint64_t nblk)
{
  bool r = false;

  if (atomic_load_explicit (&m->nlost_hint, memory_order_acquire) == 0)
    return false;
  pthread_mutex_lock (&m->lock);
  for (size_t i = 0; i < m->nlost && !r; i++)
    r = m->lost[i].vol == vol && m->lost[i].blk < blk + nblk
      && blk < m->lost[i].blk + m->lost[i].nblk;
  pthread_mutex_unlock (&m->lock);
  return r;
}

void
meta_free (struct meta *m)
{
  if (!m)
    return;
  meta_clear (m);
  pthread_mutex_destroy (&m->lock);
  pthread_mutex_destroy (&m->csum_lock);
  pthread_mutex_destroy (&m->shrink_lock);
  free (m->devices);
  free (m);
}

const char *
meta_dev_state_name (uint8_t s)
{
  switch (s) {
    case META_DEV_UP: return "up";
    case META_DEV_DEGRADED: return "degraded";
    case META_DEV_FAILED: return "failed";
    case META_DEV_REMOVED: return "removed";
    default: return "unknown";
  }
}

uint64_t
meta_volume_nchunks (const struct meta_volume *v)
{
  return div_round_up (v->size, v->chunk_size);
}

static struct meta_map_top *
map_new (uint64_t nchunks, const struct meta_map_top *old)
{
  size_t n = div_round_up (nchunks, META_LEAF);
  struct meta_map_top *top;

  if (n == 0)
    n = 1;
  top = calloc (1, sizeof *top + n * sizeof top->leaves[0]);
  if (!top)
    return NULL;
  top->nleaves = n;
  if (old)
    for (size_t i = 0; i < MIN (n, old->nleaves); i++)
      atomic_store (&top->leaves[i], atomic_load (&old->leaves[i]));
  return top;
}

struct meta_chunk *
meta_chunk_get (struct meta_volume *v, uint64_t idx)
{
  struct meta_map_top *top = atomic_load_explicit (&v->map,
                                                   memory_order_acquire);
  _Atomic (struct meta_chunk *) *leaf;

  if (idx / META_LEAF >= top->nleaves)
    return NULL;
  leaf = atomic_load_explicit (&top->leaves[idx / META_LEAF],
                               memory_order_acquire);
  if (!leaf)
    return NULL;
  return atomic_load_explicit (&leaf[idx % META_LEAF], memory_order_acquire);
}

/* Set slot IDX of V to C (which may be NULL).  Called from apply only. */
static int
chunk_set (struct meta_volume *v, uint64_t idx, struct meta_chunk *c)
{
  struct meta_map_top *top = atomic_load (&v->map);
  _Atomic (struct meta_chunk *) *leaf;

  if (idx / META_LEAF >= top->nleaves)
    return strata_error (EBADMSG, "chunk %llu outside volume %s",
                         (unsigned long long) idx, v->name);
  leaf = atomic_load (&top->leaves[idx / META_LEAF]);
  if (!leaf) {
    if (!c)
      return 0;
    leaf = calloc (META_LEAF, sizeof *leaf);
    if (!leaf)
      return strata_error (ENOMEM, "out of memory");
    atomic_store_explicit (&top->leaves[idx / META_LEAF], leaf,
                           memory_order_release);
  }
  atomic_store_explicit (&leaf[idx % META_LEAF], c, memory_order_release);
  return 0;
}

struct meta_volume **
meta_volumes_copy (struct meta *m, size_t *n)
{
  struct meta_volume **vols;

  pthread_mutex_lock (&m->lock);
  *n = m->nvolumes;
  vols = malloc ((*n ? *n : 1) * sizeof *vols);
  if (vols && *n > 0)
    memcpy (vols, m->volumes, *n * sizeof *vols);
  pthread_mutex_unlock (&m->lock);
  if (!vols)
    strata_error (ENOMEM, "out of memory");
  return vols;
}

int
meta_foreach_chunk (struct meta_volume *v,
                    int (*fn) (void *, uint64_t, struct meta_chunk *),
                    void *opaque)
{
  struct meta_map_top *top = atomic_load (&v->map);
  uint64_t n = meta_volume_nchunks (v);

  for (size_t i = 0; i < top->nleaves; i++) {
    _Atomic (struct meta_chunk *) *leaf = atomic_load (&top->leaves[i]);
    if (!leaf)
      continue;
    for (size_t j = 0; j < META_LEAF; j++) {
      uint64_t idx = (uint64_t) i * META_LEAF + j;
      struct meta_chunk *c;
      if (idx >= n)
        break;
      c = atomic_load (&leaf[j]);
      if (c) {
        int r = fn (opaque, idx, c);
        if (r)
          return r;
      }
    }
  }
  return 0;
}

struct meta_volume *
meta_find_volume (struct meta *m, const char *name)
{
  for (size_t i = 0; i < m->nvolumes; i++)
    if (strcmp (m->volumes[i]->name, name) == 0)
      return m->volumes[i];
  return NULL;
}

struct meta_volume *
meta_find_volume_id (struct meta *m, uint32_t id)
{
  for (size_t i = 0; i < m->nvolumes; i++)
    if (m->volumes[i]->id == id)
      return m->volumes[i];
  return NULL;
}

static struct meta_volume *
volume_new (struct meta *m, uint32_t id, const char *name, uint64_t size,
            uint32_t replicas, uint32_t width, uint64_t unit,
            const char *class)
{
  struct meta_volume *v = calloc (1, sizeof *v);

  if (!v) {
    strata_error (ENOMEM, "out of memory");
    return NULL;
  }
  v->id = id;
  snprintf (v->name, sizeof v->name, "%s", name);
  v->size = size;
  v->replicas = replicas;
  v->width = width;
  v->unit = unit;
  snprintf (v->class, sizeof v->class, "%s", class);
  v->chunk_size = (uint64_t) width * m->extent_size;
  atomic_store (&v->map, map_new (meta_volume_nchunks (v), NULL));
  if (!atomic_load (&v->map)) {
    free (v);
    strata_error (ENOMEM, "out of memory");
    return NULL;
  }
  return v;
}

static bool
volume_params_ok (struct meta *m, uint32_t replicas, uint32_t width,
                  uint64_t unit, uint64_t size)
{
  return replicas >= 1 && replicas <= 8 && width >= 1 && width <= 64
    && is_power_of_2 (unit) && unit >= STRATA_BLOCK && unit <= m->extent_size
    && size > 0 && size <= format_volume_max (m->extent_size, width);
}

static int
add_volume (struct meta *m, struct meta_volume *v)
{
  struct meta_volume **nv = realloc (m->volumes,
                                     (m->nvolumes + 1) * sizeof *nv);
  if (!nv)
    return strata_error (ENOMEM, "out of memory");
  m->volumes = nv;
  pthread_mutex_lock (&m->lock);
  m->volumes[m->nvolumes++] = v;
  pthread_mutex_unlock (&m->lock);
  return 0;
}

static int
extents_ok (struct meta *m, uint32_t n, const struct meta_extent *e)
{
  for (uint32_t i = 0; i < n; i++)
    if (e[i].dev >= m->ndevices || e[i].ext >= m->devices[e[i].dev].extent_count)
      return strata_error (EBADMSG, "extent %u on device %u out of range",
                           e[i].ext, e[i].dev);
  return 0;
}

static int
resize_volume (struct meta_volume *v, uint64_t size)
{
  uint64_t oldn = meta_volume_nchunks (v);
  struct meta_map_top *old = atomic_load (&v->map), *top;

  /* Chunks beyond a shrunk size must already be freed by the caller. */
  for (uint64_t i = div_round_up (size, v->chunk_size); i < oldn; i++)
    if (meta_chunk_get (v, i))
      return strata_error (EBADMSG, "volume %s: shrink over allocated chunk "
                           "%llu", v->name, (unsigned long long) i);
  if (div_round_up (div_round_up (size, v->chunk_size), META_LEAF)
      > old->nleaves) {
    if (v->nretired == ARRAY_SIZE (v->retired))
      return strata_error (ENOSPC, "volume %s resized too often in one "
                           "session; restart the pool", v->name);
    top = map_new (div_round_up (size, v->chunk_size), old);
    if (!top)
      return strata_error (ENOMEM, "out of memory");
    atomic_store_explicit (&v->map, top, memory_order_release);
    v->retired[v->nretired++] = old;
  }
  v->size = size;
  return 0;
}

/* One device of the table, as checkpoints and DEV_ADD entries hold it. */
static void
put_device (struct fbuf *out, const struct meta_device *d)
{
  fbuf_put_str (out, d->name);
  fbuf_put_bytes (out, d->uuid, 16);
  fbuf_put_u64 (out, d->size);
  fbuf_put_u64 (out, d->data_offset);
  fbuf_put_u64 (out, d->csum_offset);
  fbuf_put_u64 (out, d->extent_count);
  fbuf_put_str (out, d->class);
  fbuf_put_str (out, d->domain);
  fbuf_put_u32 (out, d->flags);
  fbuf_put_u8 (out, d->state);
}

static int
get_device (struct fbuf *b, struct meta_device *d)
{
  fbuf_get_str (b, d->name, sizeof d->name);
  fbuf_get_bytes (b, d->uuid, 16);
  d->size = fbuf_get_u64 (b);
  d->data_offset = fbuf_get_u64 (b);
  d->csum_offset = fbuf_get_u64 (b);
  d->extent_count = fbuf_get_u64 (b);
  fbuf_get_str (b, d->class, sizeof d->class);
  fbuf_get_str (b, d->domain, sizeof d->domain);
  d->flags = fbuf_get_u32 (b);
  d->state = fbuf_get_u8 (b);
  if (b->bad || d->extent_count > UINT32_MAX || d->state > META_DEV_REMOVED)
    return -1;
  return 0;
}

int
meta_apply (struct meta *m, uint16_t type, const void *data, size_t len)
{
  struct fbuf b;
  struct meta_volume *v;
  uint32_t id;

  fbuf_init_read (&b, data, len);
  switch (type) {
    case META_E_NOOP:
      return 0;

    case META_E_VOL_CREATE: {
      char name[FORMAT_NAME_MAX], class[CONFIG_CLASS_MAX];
      uint64_t size, unit;
      uint32_t replicas, width;

      id = fbuf_get_u32 (&b);
      fbuf_get_str (&b, name, sizeof name);
      size = fbuf_get_u64 (&b);
      replicas = fbuf_get_u32 (&b);
      width = fbuf_get_u32 (&b);
      unit = fbuf_get_u64 (&b);
      fbuf_get_str (&b, class, sizeof class);
      if (b.bad || !volume_params_ok (m, replicas, width, unit, size))
        return strata_error (EBADMSG, "malformed volume-create entry");
      if (meta_find_volume (m, name) || meta_find_volume_id (m, id))
        return strata_error (EBADMSG, "volume-create of existing volume %s",
                             name);
      v = volume_new (m, id, name, size, replicas, width, unit, class);
      if (!v)
        return -1;
      if (add_volume (m, v) == -1) {
        volume_free (v);
        return -1;
      }
      if (id >= m->next_vol_id)
        m->next_vol_id = id + 1;
      return 0;
    }

    case META_E_VOL_RESIZE: {
      uint64_t size;
      id = fbuf_get_u32 (&b);
      size = fbuf_get_u64 (&b);
      v = meta_find_volume_id (m, id);
      if (b.bad || !v || size == 0
          || size > format_volume_max (m->extent_size, v->width))
        return strata_error (EBADMSG, "malformed volume-resize entry");
      return resize_volume (v, size);
    }

    case META_E_VOL_DELETE:
      id = fbuf_get_u32 (&b);
      v = meta_find_volume_id (m, id);
      if (b.bad || !v)
        return strata_error (EBADMSG, "malformed volume-delete entry");
      pthread_mutex_lock (&m->lock);
      for (size_t i = 0; i < m->nvolumes; i++)
        if (m->volumes[i] == v) {
          m->volumes[i] = m->volumes[--m->nvolumes];
          break;
        }
      {
        /* Its lost ranges go with it. */
        size_t k = 0;
        for (size_t i = 0; i < m->nlost; i++)
          if (m->lost[i].vol != id)
            m->lost[k++] = m->lost[i];
        m->nlost = k;
        atomic_store (&m->nlost_hint, k);
      }
      pthread_mutex_unlock (&m->lock);
      volume_free (v);
      return 0;

    case META_E_CHUNK_ALLOC: {
      uint64_t idx;
      uint32_t n;
      struct meta_chunk *c;

      id = fbuf_get_u32 (&b);
      idx = fbuf_get_u64 (&b);
      n = fbuf_get_u32 (&b);
      v = meta_find_volume_id (m, id);
      if (b.bad || !v || n != v->width * v->replicas
          || idx >= meta_volume_nchunks (v) || meta_chunk_get (v, idx))
        return strata_error (EBADMSG, "malformed chunk-alloc entry");
      /* A new chunk is dirty: its checksum slots have not been written. */
      c = chunk_new (v->width, n, all_columns (v->width));
      if (!c)
        return -1;
      for (uint32_t i = 0; i < n; i++) {
        c->ext[i].dev = fbuf_get_u32 (&b);
        c->ext[i].ext = fbuf_get_u32 (&b);
      }
      if (b.bad || extents_ok (m, n, c->ext) == -1) {
        chunk_free (c);
        return strata_error (EBADMSG, "malformed chunk-alloc entry");
      }
      if (chunk_set (v, idx, c) == -1) {
        chunk_free (c);
        return -1;
      }
      atomic_fetch_add (&v->nchunks, 1);
      return 0;
    }

    case META_E_CHUNK_FREE: {
      uint64_t idx;
      struct meta_chunk *c;

      id = fbuf_get_u32 (&b);
      idx = fbuf_get_u64 (&b);
      v = meta_find_volume_id (m, id);
      if (b.bad || !v || idx >= meta_volume_nchunks (v)
          || !(c = meta_chunk_get (v, idx)))
        return strata_error (EBADMSG, "malformed chunk-free entry");
      chunk_set (v, idx, NULL);
      atomic_fetch_sub (&v->nchunks, 1);
      chunk_free (c);
      return 0;
    }

    case META_E_COL_STATE: {
      uint8_t dirty = fbuf_get_u8 (&b);
      uint32_t n = fbuf_get_u32 (&b);
      struct meta_chunk *c;

      if (b.bad || dirty > 1 || n > len / 20)
        return strata_error (EBADMSG, "malformed column-state entry");
      for (uint32_t i = 0; i < n; i++) {
        uint64_t idx, mask;
        id = fbuf_get_u32 (&b);
        idx = fbuf_get_u64 (&b);
        mask = fbuf_get_u64 (&b);
        v = meta_find_volume_id (m, id);
        if (b.bad || !v || idx >= meta_volume_nchunks (v)
            || !(c = meta_chunk_get (v, idx))
            || (mask & ~all_columns (v->width)))
          return strata_error (EBADMSG, "malformed column-state entry");
        if (dirty)
          c->dirty |= mask;
        else
          c->dirty &= ~mask;
        /* Replay sets the runtime state too (resync.c also does, after
         * its commits; the two agree). */
        for (uint32_t k = 0; k < v->width; k++)
          if ((mask >> k) & 1)
            atomic_store (&c->col[k].state,
                          dirty ? META_COL_DIRTY : META_COL_CLEAN);
      }
      return 0;
    }

    case META_E_EXT_REPLACE: {
      uint64_t idx;
      uint32_t slot;
      struct meta_extent e;
      struct meta_chunk *c, *nc;

      id = fbuf_get_u32 (&b);
      idx = fbuf_get_u64 (&b);
      slot = fbuf_get_u32 (&b);
      e.dev = fbuf_get_u32 (&b);
      e.ext = fbuf_get_u32 (&b);
      v = meta_find_volume_id (m, id);
      if (b.bad || !v || idx >= meta_volume_nchunks (v)
          || !(c = meta_chunk_get (v, idx)) || slot >= c->n
          || extents_ok (m, 1, &e) == -1)
        return strata_error (EBADMSG, "malformed extent-replace entry");
      /* A new chunk beside the old one, sharing its column state, so
       * that lock-free readers of the old one stay safe. */
      nc = malloc (sizeof *nc + c->n * sizeof nc->ext[0]);
      if (!nc)
        return strata_error (ENOMEM, "out of memory");
      memcpy (nc, c, sizeof *nc + c->n * sizeof nc->ext[0]);
      nc->retired = NULL;
      nc->ext[slot] = e;
      /* The new copy holds the column's data. */
      atomic_fetch_and (&nc->col[slot / v->replicas].stale,
                        (uint8_t) ~(1u << (slot % v->replicas)));
      chunk_set (v, idx, nc);
      pthread_mutex_lock (&m->lock);
      c->retired = v->retired_chunks;
      v->retired_chunks = c;
      pthread_mutex_unlock (&m->lock);
      return 0;
    }

    case META_E_STALE: {
      uint8_t stale = fbuf_get_u8 (&b);
      uint32_t n = fbuf_get_u32 (&b);
      struct meta_chunk *c;

      if (b.bad || stale > 1 || n > len / 17)
        return strata_error (EBADMSG, "malformed stale-copy entry");
      for (uint32_t i = 0; i < n; i++) {
        uint64_t idx;
        uint32_t col;
        uint8_t mask;
        id = fbuf_get_u32 (&b);
        idx = fbuf_get_u64 (&b);
        col = fbuf_get_u32 (&b);
        mask = fbuf_get_u8 (&b);
        v = meta_find_volume_id (m, id);
        if (b.bad || !v || idx >= meta_volume_nchunks (v)
            || !(c = meta_chunk_get (v, idx)) || col >= c->width
            || (mask >> v->replicas) != 0)
          return strata_error (EBADMSG, "malformed stale-copy entry");
        if (stale)
          atomic_fetch_or (&c->col[col].stale, mask);
        else
          atomic_fetch_and (&c->col[col].stale, (uint8_t) ~mask);
      }
      return 0;
    }

    case META_E_JOB: {
      uint8_t kind = fbuf_get_u8 (&b);
      struct meta_job j;

      j.state = fbuf_get_u8 (&b);
      j.flags = fbuf_get_u8 (&b);
      j.vol = fbuf_get_u32 (&b);
      j.pos_vol = fbuf_get_u32 (&b);
      j.pos_chunk = fbuf_get_u64 (&b);
      j.started = fbuf_get_u64 (&b);
      j.updated = fbuf_get_u64 (&b);
      j.done = fbuf_get_u64 (&b);
      j.total = fbuf_get_u64 (&b);
      j.blocks = fbuf_get_u64 (&b);
      j.errors = fbuf_get_u64 (&b);
      j.repaired = fbuf_get_u64 (&b);
      j.unrepaired = fbuf_get_u64 (&b);
      if (b.bad || kind >= META_JOB_KINDS || j.state > META_JOB_FAILED)
        return strata_error (EBADMSG, "malformed job entry");
      pthread_mutex_lock (&m->lock);
      m->jobs[kind] = j;
      pthread_mutex_unlock (&m->lock);
      return 0;
    }

    case META_E_DEV_ADD: {
      uint32_t idx = fbuf_get_u32 (&b), n = m->ndevices;
      struct meta_device d;

      memset (&d, 0, sizeof d);
      if (b.bad || idx != n || n >= META_MAX_DEVICES
          || get_device (&b, &d) == -1 || d.extent_count == 0)
        return strata_error (EBADMSG, "malformed device-add entry");
      for (uint32_t i = 0; i < n; i++)
        if (strcmp (m->devices[i].name, d.name) == 0
            || memcmp (m->devices[i].uuid, d.uuid, 16) == 0)
          return strata_error (EBADMSG, "device-add entry: device %s is in "
                               "the pool already", d.name);
      /* Fill the entry, then publish it (see meta.h). */
      pthread_mutex_lock (&m->lock);
      m->devices[n] = d;
      atomic_store_explicit (&m->ndevices, n + 1, memory_order_release);
      pthread_mutex_unlock (&m->lock);
      return 0;
    }

    case META_E_CACHE: {
      uint8_t uuid[16];
      fbuf_get_bytes (&b, uuid, 16);
      if (b.bad)
        return strata_error (EBADMSG, "malformed cache entry");
      pthread_mutex_lock (&m->lock);
      memcpy (m->cache_uuid, uuid, 16);
      pthread_mutex_unlock (&m->lock);
      return 0;
    }

    case META_E_LOST: {
      bool lost = fbuf_get_u8 (&b);
      uint32_t n = fbuf_get_u32 (&b);
      struct meta_lost *it;
      int r;

      if (b.bad || n > (b.len - b.pos) / 20)
        return strata_error (EBADMSG, "malformed lost-range entry");
      if (!(it = malloc ((n + 1) * sizeof *it)))
        return strata_error (ENOMEM, "out of memory");
      for (uint32_t i = 0; i < n; i++) {
        it[i].vol = fbuf_get_u32 (&b);
        it[i].blk = fbuf_get_u64 (&b);
        it[i].nblk = fbuf_get_u64 (&b);
        if (it[i].nblk == 0 || it[i].blk + it[i].nblk < it[i].blk)
          b.bad = true;
      }
      if (b.bad) {
        free (it);
        return strata_error (EBADMSG, "malformed lost-range entry");
      }
      pthread_mutex_lock (&m->lock);
      r = lost_change (m, lost, it, n);
      pthread_mutex_unlock (&m->lock);
      free (it);
      return r;
    }

    case META_E_DEV_STATE: {
      uint32_t dev = fbuf_get_u32 (&b);
      uint8_t st = fbuf_get_u8 (&b);
      if (b.bad || dev >= m->ndevices || st > META_DEV_REMOVED)
        return strata_error (EBADMSG, "malformed device-state entry");
      pthread_mutex_lock (&m->lock);
      m->devices[dev].state = st;
      pthread_mutex_unlock (&m->lock);
      return 0;
    }
  }
  return strata_error (EBADMSG, "unknown journal entry type %u", type);
}

void
meta_entry_vol_create (struct fbuf *out, uint32_t id,
                       const struct config_volume *v)
{
  fbuf_put_u32 (out, id);
  fbuf_put_str (out, v->name);
  fbuf_put_u64 (out, v->size);
  fbuf_put_u32 (out, v->replicas);
  fbuf_put_u32 (out, v->stripe_width);
  fbuf_put_u64 (out, v->stripe_unit);
  fbuf_put_str (out, v->class);
}

void
meta_entry_vol_resize (struct fbuf *out, uint32_t id, uint64_t size)
{
  fbuf_put_u32 (out, id);
  fbuf_put_u64 (out, size);
}

void
meta_entry_vol_delete (struct fbuf *out, uint32_t id)
{
  fbuf_put_u32 (out, id);
}

void
meta_entry_chunk_alloc (struct fbuf *out, uint32_t vol, uint64_t chunk,
                        uint32_t n, const struct meta_extent *ext)
{
  fbuf_put_u32 (out, vol);
  fbuf_put_u64 (out, chunk);
  fbuf_put_u32 (out, n);
  for (uint32_t i = 0; i < n; i++) {
    fbuf_put_u32 (out, ext[i].dev);
    fbuf_put_u32 (out, ext[i].ext);
  }
}

void
meta_entry_chunk_free (struct fbuf *out, uint32_t vol, uint64_t chunk)
{
  fbuf_put_u32 (out, vol);
  fbuf_put_u64 (out, chunk);
}

void
meta_entry_dev_state (struct fbuf *out, uint32_t dev, uint8_t state)
{
  fbuf_put_u32 (out, dev);
  fbuf_put_u8 (out, state);
}

void
meta_entry_dev_add (struct fbuf *out, uint32_t index,
                    const struct meta_device *d)
{
  fbuf_put_u32 (out, index);
  put_device (out, d);
}

void
meta_entry_col_state (struct fbuf *out, bool dirty,
                      const struct meta_col_item *items, size_t n)
{
  fbuf_put_u8 (out, dirty);
  fbuf_put_u32 (out, n);
  for (size_t i = 0; i < n; i++) {
    fbuf_put_u32 (out, items[i].vol);
    fbuf_put_u64 (out, items[i].chunk);
    fbuf_put_u64 (out, items[i].mask);
  }
}

void
meta_entry_stale (struct fbuf *out, bool stale,
                  const struct meta_stale_item *items, size_t n)
{
  fbuf_put_u8 (out, stale);
  fbuf_put_u32 (out, n);
  for (size_t i = 0; i < n; i++) {
    fbuf_put_u32 (out, items[i].vol);
    fbuf_put_u64 (out, items[i].chunk);
    fbuf_put_u32 (out, items[i].col);
    fbuf_put_u8 (out, items[i].mask);
  }
}

struct snap_ctx {
  struct fbuf *out;
  uint32_t n;
  uint32_t vol;
  struct meta_stale_item *stale;	/* the stale section (snap_stale) */
  size_t nstale, capstale;
  bool nomem;
};

void
meta_entry_ext_replace (struct fbuf *out, uint32_t vol, uint64_t chunk,
                        uint32_t slot, struct meta_extent e)
{
  fbuf_put_u32 (out, vol);
  fbuf_put_u64 (out, chunk);
  fbuf_put_u32 (out, slot);
  fbuf_put_u32 (out, e.dev);
  fbuf_put_u32 (out, e.ext);
}

void
meta_entry_job (struct fbuf *out, uint8_t kind, const struct meta_job *j)
{
  fbuf_put_u8 (out, kind);
  fbuf_put_u8 (out, j->state);
  fbuf_put_u8 (out, j->flags);
  fbuf_put_u32 (out, j->vol);
  fbuf_put_u32 (out, j->pos_vol);
  fbuf_put_u64 (out, j->pos_chunk);
  fbuf_put_u64 (out, j->started);
  fbuf_put_u64 (out, j->updated);
  fbuf_put_u64 (out, j->done);
  fbuf_put_u64 (out, j->total);
  fbuf_put_u64 (out, j->blocks);
  fbuf_put_u64 (out, j->errors);
  fbuf_put_u64 (out, j->repaired);
  fbuf_put_u64 (out, j->unrepaired);
}

void
meta_entry_cache (struct fbuf *out, const uint8_t uuid[16])
{
  fbuf_put_bytes (out, uuid, 16);
}

void
meta_entry_lost (struct fbuf *out, bool lost, const struct meta_lost *items,
                 size_t n)
{
  fbuf_put_u8 (out, lost);
  fbuf_put_u32 (out, n);
  for (size_t i = 0; i < n; i++) {
    fbuf_put_u32 (out, items[i].vol);
    fbuf_put_u64 (out, items[i].blk);
    fbuf_put_u64 (out, items[i].nblk);
  }
}

static int
snap_chunk (void *opaque, uint64_t idx, struct meta_chunk *c)
{
  struct snap_ctx *s = opaque;

  fbuf_put_u64 (s->out, idx);
  fbuf_put_u64 (s->out, c->dirty);
  for (uint32_t i = 0; i < s->n; i++) {
    fbuf_put_u32 (s->out, c->ext[i].dev);
    fbuf_put_u32 (s->out, c->ext[i].ext);
  }
  return 0;
}

static int
snap_stale (void *opaque, uint64_t idx, struct meta_chunk *c)
{
  struct snap_ctx *s = opaque;

  for (uint32_t col = 0; col < c->width; col++) {
    uint8_t mask = atomic_load (&c->col[col].stale);
    if (!mask)
      continue;
    if (s->nstale == s->capstale) {
      size_t cap = s->capstale ? s->capstale * 2 : 64;
      struct meta_stale_item *n = realloc (s->stale, cap * sizeof *n);
      if (!n) {
        s->nomem = true;
        return 1;
      }
      s->stale = n;
      s->capstale = cap;
    }
    s->stale[s->nstale++] = (struct meta_stale_item) { s->vol, idx, col,
                                                       mask };
  }
  return 0;
}

uint64_t
meta_ckpt_bound (uint64_t extents)
{
  /* A chunk of W x R extents takes 16 + 8 W R bytes (snap_chunk), most
   * an extent when W R = 1: 24.  Replicated chunks (W R >= 2: at most
   * 16 an extent) may have a stale mark of 17 bytes on every column:
   * at most 8.5 an extent.  So 25 an extent; the rest in 1 MiB. */
  return (1ull << 20) + 25 * extents;
}

int
meta_snapshot (struct meta *m, struct fbuf *out)
{
  fbuf_put_u32 (out, CKPT_MAGIC);
  fbuf_put_bytes (out, m->pool_uuid, 16);
  fbuf_put_str (out, m->name);
  fbuf_put_u64 (out, m->extent_size);
  fbuf_put_u32 (out, m->next_vol_id);
  uint32_t ndev = m->ndevices;

  fbuf_put_u32 (out, ndev);
  for (uint32_t i = 0; i < ndev; i++)
    put_device (out, &m->devices[i]);
  fbuf_put_u32 (out, m->nvolumes);
  for (size_t i = 0; i < m->nvolumes; i++) {
    struct meta_volume *v = m->volumes[i];
    struct snap_ctx s = { .out = out, .n = v->width * v->replicas };
    fbuf_put_u32 (out, v->id);
    fbuf_put_str (out, v->name);
    fbuf_put_u64 (out, v->size);
    fbuf_put_u32 (out, v->replicas);
    fbuf_put_u32 (out, v->width);
    fbuf_put_u64 (out, v->unit);
    fbuf_put_str (out, v->class);
    fbuf_put_u64 (out, atomic_load (&v->nchunks));
    meta_foreach_chunk (v, snap_chunk, &s);
  }
  /* Job records and stale copies: trailing sections (checkpoints
   * without them load with no job history and no stale copies). */
  for (int k = 0; k < META_JOB_KINDS; k++) {
    struct fbuf e;
    fbuf_init_write (&e);
    meta_entry_job (&e, k, &m->jobs[k]);
    fbuf_put_u32 (out, e.len);
    fbuf_put_bytes (out, e.p, e.len);
    if (e.bad)
      out->bad = true;
    fbuf_free (&e);
  }
  {
    struct snap_ctx s = { .out = out };
    struct fbuf e;
    for (size_t i = 0; i < m->nvolumes; i++) {
      s.vol = m->volumes[i]->id;
      meta_foreach_chunk (m->volumes[i], snap_stale, &s);
    }
    fbuf_init_write (&e);
    meta_entry_stale (&e, true, s.stale, s.nstale);
    fbuf_put_u32 (out, e.len);
    fbuf_put_bytes (out, e.p, e.len);
    if (e.bad || s.nomem)
      out->bad = true;
    fbuf_free (&e);
    free (s.stale);
  }
  /* The cache and the lost ranges, as their entries. */
  {
    struct fbuf e;
    uint8_t uuid[16];
    pthread_mutex_lock (&m->lock);
    memcpy (uuid, m->cache_uuid, 16);
    pthread_mutex_unlock (&m->lock);
    fbuf_init_write (&e);
    meta_entry_cache (&e, uuid);
    fbuf_put_u32 (out, e.len);
    fbuf_put_bytes (out, e.p, e.len);
    if (e.bad)
      out->bad = true;
    fbuf_free (&e);
    fbuf_init_write (&e);
    pthread_mutex_lock (&m->lock);
    meta_entry_lost (&e, true, m->lost, m->nlost);
    pthread_mutex_unlock (&m->lock);
    fbuf_put_u32 (out, e.len);
    fbuf_put_bytes (out, e.p, e.len);
    if (e.bad)
      out->bad = true;
    fbuf_free (&e);
  }
  if (out->bad)
    return strata_error (ENOMEM, "out of memory writing a checkpoint");
  return 0;
}

int
meta_load (struct meta *m, const void *data, size_t len)
{
  struct fbuf b;
  uint32_t nvol, ndev;

  meta_clear (m);
  fbuf_init_read (&b, data, len);
  if (fbuf_get_u32 (&b) != CKPT_MAGIC)
    return strata_error (EBADMSG, "checkpoint has a bad magic number");
  fbuf_get_bytes (&b, m->pool_uuid, 16);
  fbuf_get_str (&b, m->name, sizeof m->name);
  m->extent_size = fbuf_get_u64 (&b);
  m->next_vol_id = fbuf_get_u32 (&b);
  ndev = fbuf_get_u32 (&b);
  if (b.bad || ndev == 0 || ndev > META_MAX_DEVICES
      || !is_power_of_2 (m->extent_size) || m->extent_size < STRATA_BLOCK
      || m->extent_size > FORMAT_EXTENT_MAX)
    goto bad;
  for (uint32_t i = 0; i < ndev; i++)
    if (get_device (&b, &m->devices[i]) == -1)
      goto bad;
  m->ndevices = ndev;
  nvol = fbuf_get_u32 (&b);
  if (b.bad || nvol > 65536)
    goto bad;
  for (uint32_t i = 0; i < nvol; i++) {
    char name[FORMAT_NAME_MAX], class[CONFIG_CLASS_MAX];
    uint32_t id, replicas, width;
    uint64_t size, unit, nchunks;
    struct meta_volume *v;

    id = fbuf_get_u32 (&b);
    fbuf_get_str (&b, name, sizeof name);
    size = fbuf_get_u64 (&b);
    replicas = fbuf_get_u32 (&b);
    width = fbuf_get_u32 (&b);
    unit = fbuf_get_u64 (&b);
    fbuf_get_str (&b, class, sizeof class);
    nchunks = fbuf_get_u64 (&b);
    if (b.bad || !volume_params_ok (m, replicas, width, unit, size)
        || meta_find_volume (m, name) || meta_find_volume_id (m, id))
      goto bad;
    v = volume_new (m, id, name, size, replicas, width, unit, class);
    if (!v)
      return -1;
    if (add_volume (m, v) == -1) {
      volume_free (v);
      return -1;
    }
    if (nchunks > meta_volume_nchunks (v))
      goto bad;
    for (uint64_t k = 0; k < nchunks; k++) {
      uint32_t n = width * replicas;
      uint64_t idx = fbuf_get_u64 (&b);
      uint64_t dirty = fbuf_get_u64 (&b);
      struct meta_chunk *c;

      if (b.bad || idx >= meta_volume_nchunks (v) || meta_chunk_get (v, idx)
          || (dirty & ~all_columns (width)))
        goto bad;
      c = chunk_new (width, n, dirty);
      if (!c)
        return -1;
      for (uint32_t e = 0; e < n; e++) {
        c->ext[e].dev = fbuf_get_u32 (&b);
        c->ext[e].ext = fbuf_get_u32 (&b);
      }
      if (b.bad || extents_ok (m, n, c->ext) == -1 || chunk_set (v, idx, c)) {
        chunk_free (c);
        goto bad;
      }
      atomic_fetch_add (&v->nchunks, 1);
    }
  }
  for (int k = 0; k < META_JOB_KINDS && b.pos < b.len; k++) {
    uint32_t n = fbuf_get_u32 (&b);
    if (b.bad || n > b.len - b.pos
        || meta_apply (m, META_E_JOB, (const char *) data + b.pos, n) == -1)
      goto bad;
    b.pos += n;
  }
  {
    /* Sections added later, as entries: missing from older pools. */
    static const uint16_t later[] = { META_E_STALE, META_E_CACHE,
                                      META_E_LOST };
    for (size_t k = 0; k < sizeof later / sizeof later[0] && b.pos < b.len;
         k++) {
      uint32_t n = fbuf_get_u32 (&b);
      if (b.bad || n > b.len - b.pos
          || meta_apply (m, later[k], (const char *) data + b.pos, n) == -1)
        goto bad;
      b.pos += n;
    }
  }
  if (b.pos != b.len)
    goto bad;
  return 0;
 bad:
  meta_clear (m);
  return strata_error (EBADMSG, "checkpoint is malformed");
}
