/* Unit tests: the metadata state's newer entries.  EXT_REPLACE moves one
 * copy and keeps the column's runtime state with the new chunk; job
 * records and stale copies survive a checkpoint; a checkpoint without
 * them (older writers) still loads; malformed entries are refused and
 * change nothing; ranges lost with the cache merge, split when written
 * again, go with their volume, and survive a checkpoint with the cache's
 * uuid (or its absence once detached). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "error.h"
#include "meta.h"
#include "suites.h"
#include "util.h"

#define ES (4u << 20)

/* Volume ID made from CV in M; chunk IDX of it given the N extents EXT. */
static void
vol_create (struct meta *m, uint32_t id, const struct config_volume *cv)
{
  struct fbuf e;

  fbuf_init_write (&e);
  meta_entry_vol_create (&e, id, cv);
  ck_assert_int_eq (meta_apply (m, META_E_VOL_CREATE, e.p, e.len), 0);
  fbuf_free (&e);
}

static void
chunk_alloc (struct meta *m, uint32_t vol, uint64_t idx, uint32_t n,
             const struct meta_extent *ext)
{
  struct fbuf e;

  fbuf_init_write (&e);
  meta_entry_chunk_alloc (&e, vol, idx, n, ext);
  ck_assert_int_eq (meta_apply (m, META_E_CHUNK_ALLOC, e.p, e.len), 0);
  fbuf_free (&e);
}

/* A state with 3 devices of 16 extents and volume "v" (2 replicas, 2
 * columns) with chunk 0 allocated. */
static struct meta *
make_state (void)
{
  struct meta *m = meta_new ();
  struct config_volume cv = { .name = "v", .size = 64 << 20, .replicas = 2,
                              .stripe_width = 2, .stripe_unit = 1 << 20 };
  struct meta_extent ext[4] = { { 0, 0 }, { 1, 0 }, { 1, 1 }, { 2, 0 } };

  ck_assert_ptr_nonnull (m);
  m->extent_size = ES;
  m->ndevices = 3;
  for (int i = 0; i < 3; i++) {
    snprintf (m->devices[i].name, sizeof m->devices[i].name, "d%d", i);
    m->devices[i].extent_count = 16;
  }
  vol_create (m, 1, &cv);
  chunk_alloc (m, 1, 0, 4, ext);
  return m;
}

static int
replace (struct meta *m, uint32_t vol, uint64_t chunk, uint32_t slot,
         struct meta_extent to)
{
  struct fbuf e;
  int r;

  fbuf_init_write (&e);
  meta_entry_ext_replace (&e, vol, chunk, slot, to);
  r = meta_apply (m, META_E_EXT_REPLACE, e.p, e.len);
  fbuf_free (&e);
  return r;
}

START_TEST (test_ext_replace)
{
  struct meta *m = make_state ();
  struct meta_volume *v = meta_find_volume (m, "v");
  struct meta_chunk *old = meta_chunk_get (v, 0), *nc;
  struct meta_column *col = old->col;

  ck_assert_int_eq (replace (m, 1, 0, 1, (struct meta_extent) { 2, 5 }), 0);
  nc = meta_chunk_get (v, 0);
  ck_assert_ptr_ne (nc, old);
  ck_assert_ptr_eq (nc->col, col);	/* the column state moved along */
  ck_assert_uint_eq (nc->ext[1].dev, 2);
  ck_assert_uint_eq (nc->ext[1].ext, 5);
  ck_assert_uint_eq (nc->ext[0].dev, 0);
  ck_assert_uint_eq (nc->ext[3].dev, 2);
  /* The old chunk is still readable until reaped. */
  ck_assert_uint_eq (old->ext[1].dev, 1);
  ck_assert_ptr_eq (v->retired_chunks, old);
  meta_volume_reap (m, v);
  ck_assert_ptr_null (v->retired_chunks);

  /* Malformed: no such slot, device, extent, chunk or volume. */
  ck_assert_int_eq (replace (m, 1, 0, 4, (struct meta_extent) { 2, 6 }), -1);
  ck_assert_int_eq (replace (m, 1, 0, 0, (struct meta_extent) { 3, 6 }), -1);
  ck_assert_int_eq (replace (m, 1, 0, 0, (struct meta_extent) { 2, 16 }), -1);
  ck_assert_int_eq (replace (m, 1, 1, 0, (struct meta_extent) { 2, 6 }), -1);
  ck_assert_int_eq (replace (m, 9, 0, 0, (struct meta_extent) { 2, 6 }), -1);
  ck_assert_ptr_eq (meta_chunk_get (v, 0), nc);
  meta_free (m);
}
END_TEST

/* Field by field: the padding of a struct on the stack is not defined. */
static void
job_eq (const struct meta_job *a, const struct meta_job *b)
{
  ck_assert_uint_eq (a->state, b->state);
  ck_assert_uint_eq (a->flags, b->flags);
  ck_assert_uint_eq (a->vol, b->vol);
  ck_assert_uint_eq (a->pos_vol, b->pos_vol);
  ck_assert_uint_eq (a->pos_chunk, b->pos_chunk);
  ck_assert_uint_eq (a->started, b->started);
  ck_assert_uint_eq (a->updated, b->updated);
  ck_assert_uint_eq (a->done, b->done);
  ck_assert_uint_eq (a->total, b->total);
  ck_assert_uint_eq (a->blocks, b->blocks);
  ck_assert_uint_eq (a->errors, b->errors);
  ck_assert_uint_eq (a->repaired, b->repaired);
  ck_assert_uint_eq (a->unrepaired, b->unrepaired);
}

START_TEST (test_jobs_checkpoint)
{
  struct meta *m = make_state (), *m2 = meta_new (), *m3 = meta_new ();
  struct meta_job j = { .state = META_JOB_RUNNING, .flags = META_JOB_REPAIR,
                        .vol = 1, .pos_vol = 1, .pos_chunk = 7,
                        .started = 100, .updated = 200, .done = 3 << 20,
                        .total = 8 << 20, .blocks = 1536, .errors = 2,
                        .repaired = 1, .unrepaired = 1 };
  struct fbuf e, ck;
  size_t nojobs;

  fbuf_init_write (&e);
  meta_entry_job (&e, META_JOB_SCRUB, &j);
  ck_assert_int_eq (meta_apply (m, META_E_JOB, e.p, e.len), 0);
  /* Kind out of range: refused. */
  e.p[0] = META_JOB_KINDS;
  ck_assert_int_eq (meta_apply (m, META_E_JOB, e.p, e.len), -1);
  /* Truncated: refused. */
  e.p[0] = META_JOB_REBUILD;
  ck_assert_int_eq (meta_apply (m, META_E_JOB, e.p, e.len - 1), -1);
  ck_assert_int_eq (m->jobs[META_JOB_REBUILD].state, META_JOB_NONE);
  fbuf_free (&e);
  ck_assert_int_eq (replace (m, 1, 0, 2, (struct meta_extent) { 0, 3 }), 0);

  fbuf_init_write (&ck);
  ck_assert_int_eq (meta_snapshot (m, &ck), 0);
  ck_assert_int_eq (meta_load (m2, ck.p, ck.len), 0);
  job_eq (&m2->jobs[META_JOB_SCRUB], &j);
  ck_assert_int_eq (m2->jobs[META_JOB_REBUILD].state, META_JOB_NONE);
  {
    struct meta_chunk *c = meta_chunk_get (meta_find_volume (m2, "v"), 0);
    ck_assert_uint_eq (c->ext[2].dev, 0);
    ck_assert_uint_eq (c->ext[2].ext, 3);
  }
  /* A checkpoint of an older writer ends after the volumes, after the
   * job records, or after the stale section (4 + 5 bytes with no
   * items): the cache (4 + 16) and lost (4 + 5) sections come last. */
  ck_assert_int_eq (meta_load (m3, ck.p, ck.len - 29), 0);
  ck_assert_int_eq (meta_load (m3, ck.p, ck.len - 38), 0);
  job_eq (&m3->jobs[META_JOB_SCRUB], &j);
  fbuf_init_write (&e);
  meta_entry_job (&e, META_JOB_SCRUB, &j);
  nojobs = ck.len - 38 - META_JOB_KINDS * (4 + e.len);
  fbuf_free (&e);
  ck_assert_int_eq (meta_load (m3, ck.p, nojobs), 0);
  ck_assert_int_eq (m3->jobs[META_JOB_SCRUB].state, META_JOB_NONE);
  ck_assert_ptr_nonnull (meta_find_volume (m3, "v"));
  /* Cut inside the job records: malformed. */
  ck_assert_int_eq (meta_load (m3, ck.p, nojobs + 10), -1);
  fbuf_free (&ck);
  meta_free (m);
  meta_free (m2);
  meta_free (m3);
}
END_TEST

static int
stale (struct meta *m, bool set, uint32_t vol, uint64_t chunk, uint32_t col,
       uint8_t mask)
{
  struct meta_stale_item it = { vol, chunk, col, mask };
  struct fbuf e;
  int r;

  fbuf_init_write (&e);
  meta_entry_stale (&e, set, &it, 1);
  r = meta_apply (m, META_E_STALE, e.p, e.len);
  fbuf_free (&e);
  return r;
}

START_TEST (test_stale)
{
  struct meta *m = make_state (), *m2 = meta_new ();
  struct meta_volume *v = meta_find_volume (m, "v");
  struct meta_chunk *c = meta_chunk_get (v, 0);
  struct fbuf ck;

  /* Copy 1 of column 1 missed writes; then copy 0 of column 0. */
  ck_assert_int_eq (stale (m, true, 1, 0, 1, 2), 0);
  ck_assert (meta_copy_stale (&c->col[1], 1));
  ck_assert (!meta_copy_stale (&c->col[1], 0));
  ck_assert (!meta_copy_stale (&c->col[0], 1));
  ck_assert_int_eq (stale (m, true, 1, 0, 0, 1), 0);
  /* Malformed: no such column, replica, chunk or volume. */
  ck_assert_int_eq (stale (m, true, 1, 0, 2, 1), -1);
  ck_assert_int_eq (stale (m, true, 1, 0, 0, 4), -1);
  ck_assert_int_eq (stale (m, true, 1, 1, 0, 1), -1);
  ck_assert_int_eq (stale (m, true, 7, 0, 0, 1), -1);
  ck_assert_uint_eq (c->col[0].stale, 1);
  ck_assert_uint_eq (c->col[1].stale, 2);

  /* A checkpoint keeps them. */
  fbuf_init_write (&ck);
  ck_assert_int_eq (meta_snapshot (m, &ck), 0);
  ck_assert_int_eq (meta_load (m2, ck.p, ck.len), 0);
  {
    struct meta_chunk *c2 = meta_chunk_get (meta_find_volume (m2, "v"), 0);
    ck_assert_uint_eq (c2->col[0].stale, 1);
    ck_assert_uint_eq (c2->col[1].stale, 2);
  }
  fbuf_free (&ck);

  /* Copied again in place: current.  Moved elsewhere: current. */
  ck_assert_int_eq (stale (m, false, 1, 0, 0, 1), 0);
  ck_assert_uint_eq (c->col[0].stale, 0);
  ck_assert_int_eq (replace (m, 1, 0, 3, (struct meta_extent) { 0, 9 }), 0);
  c = meta_chunk_get (v, 0);
  ck_assert_uint_eq (c->col[1].stale, 0);
  meta_free (m);
  meta_free (m2);
}
END_TEST

static int
dev_add (struct meta *m, uint32_t index, const char *name, uint8_t uuid0)
{
  struct meta_device d = { .extent_count = 8, .state = META_DEV_UP };
  struct fbuf e;
  int r;

  snprintf (d.name, sizeof d.name, "%s", name);
  snprintf (d.domain, sizeof d.domain, "rack2/%s", name);
  d.uuid[0] = uuid0;
  d.uuid[15] = 0xa5;
  fbuf_init_write (&e);
  meta_entry_dev_add (&e, index, &d);
  r = meta_apply (m, META_E_DEV_ADD, e.p, e.len);
  fbuf_free (&e);
  return r;
}

static int
lost (struct meta *m, bool set, uint32_t vol, uint64_t blk, uint64_t nblk)
{
  struct meta_lost it = { vol, blk, nblk };
  struct fbuf e;
  int r;

  fbuf_init_write (&e);
  meta_entry_lost (&e, set, &it, 1);
  r = meta_apply (m, META_E_LOST, e.p, e.len);
  fbuf_free (&e);
  return r;
}

/* M's lost ranges are exactly the N (vol, blk, nblk) triples of WANT. */
static void
lost_eq (struct meta *m, const uint64_t (*want)[3], size_t n)
{
  ck_assert_uint_eq (m->nlost, n);
  for (size_t i = 0; i < n; i++) {
    ck_assert_uint_eq (m->lost[i].vol, want[i][0]);
    ck_assert_uint_eq (m->lost[i].blk, want[i][1]);
    ck_assert_uint_eq (m->lost[i].nblk, want[i][2]);
  }
}

START_TEST (test_lost)
{
  struct meta *m = make_state (), *m2 = meta_new ();
  struct config_volume cv = { .name = "w", .size = 64 << 20, .replicas = 1,
                              .stripe_width = 1, .stripe_unit = 1 << 20 };
  static const uint8_t cu[16] = { 0xc, 0xa, 0xc, 0xe };
  static const uint8_t none[16];
  struct fbuf e, ck;

  fbuf_init_write (&e);
  meta_entry_vol_create (&e, 2, &cv);
  ck_assert_int_eq (meta_apply (m, META_E_VOL_CREATE, e.p, e.len), 0);
  fbuf_free (&e);
  fbuf_init_write (&e);
  meta_entry_cache (&e, cu);
  ck_assert_int_eq (meta_apply (m, META_E_CACHE, e.p, e.len), 0);
  /* Truncated: refused, nothing changed. */
  ck_assert_int_eq (meta_apply (m, META_E_CACHE, e.p, e.len - 1), -1);
  fbuf_free (&e);
  ck_assert_mem_eq (m->cache_uuid, cu, 16);

  ck_assert (!meta_lost_any (m, 1, 0, 1000));
  /* Overlapping and adjacent ranges merge; other volumes stay apart. */
  ck_assert_int_eq (lost (m, true, 1, 100, 50), 0);
  ck_assert_int_eq (lost (m, true, 1, 140, 20), 0);
  ck_assert_int_eq (lost (m, true, 1, 160, 10), 0);
  ck_assert_int_eq (lost (m, true, 2, 0, 8), 0);
  ck_assert_int_eq (lost (m, true, 1, 10, 5), 0);
  {
    static const uint64_t want[][3] = { { 1, 10, 5 }, { 1, 100, 70 },
                                        { 2, 0, 8 } };
    lost_eq (m, want, 3);
  }
  ck_assert (meta_lost_any (m, 1, 169, 1));
  ck_assert (!meta_lost_any (m, 1, 170, 100));
  ck_assert (meta_lost_any (m, 1, 0, 11));
  ck_assert (!meta_lost_any (m, 1, 0, 10));
  ck_assert (!meta_lost_any (m, 3, 0, 1000));
  /* Written again: the middle splits a range, an edge trims one. */
  ck_assert_int_eq (lost (m, false, 1, 120, 10), 0);
  ck_assert_int_eq (lost (m, false, 1, 5, 7), 0);
  {
    static const uint64_t want[][3] = { { 1, 12, 3 }, { 1, 100, 20 },
                                        { 1, 130, 40 }, { 2, 0, 8 } };
    lost_eq (m, want, 4);
  }
  ck_assert (!meta_lost_any (m, 1, 120, 10));
  /* A malformed entry is refused and changes nothing. */
  fbuf_init_write (&e);
  {
    struct meta_lost it = { 1, 0, 1000 };
    meta_entry_lost (&e, true, &it, 1);
  }
  ck_assert_int_eq (meta_apply (m, META_E_LOST, e.p, e.len - 3), -1);
  fbuf_free (&e);
  ck_assert_uint_eq (m->nlost, 4);

  /* A checkpoint keeps them, and the cache's uuid. */
  fbuf_init_write (&ck);
  ck_assert_int_eq (meta_snapshot (m, &ck), 0);
  ck_assert_int_eq (meta_load (m2, ck.p, ck.len), 0);
  fbuf_free (&ck);
  {
    static const uint64_t want[][3] = { { 1, 12, 3 }, { 1, 100, 20 },
                                        { 1, 130, 40 }, { 2, 0, 8 } };
    lost_eq (m2, want, 4);
  }
  ck_assert_mem_eq (m2->cache_uuid, cu, 16);
  meta_free (m2);

  /* A deleted volume takes its ranges along; a detached cache (no
   * uuid) is checkpointed as none. */
  fbuf_init_write (&e);
  meta_entry_vol_delete (&e, 1);
  ck_assert_int_eq (meta_apply (m, META_E_VOL_DELETE, e.p, e.len), 0);
  fbuf_free (&e);
  fbuf_init_write (&e);
  meta_entry_cache (&e, none);
  ck_assert_int_eq (meta_apply (m, META_E_CACHE, e.p, e.len), 0);
  fbuf_free (&e);
  m2 = meta_new ();
  fbuf_init_write (&ck);
  ck_assert_int_eq (meta_snapshot (m, &ck), 0);
  ck_assert_int_eq (meta_load (m2, ck.p, ck.len), 0);
  fbuf_free (&ck);
  {
    static const uint64_t want[][3] = { { 2, 0, 8 } };
    lost_eq (m, want, 1);
    lost_eq (m2, want, 1);
  }
  ck_assert_mem_eq (m2->cache_uuid, none, 16);
  ck_assert (meta_lost_any (m2, 2, 7, 1));
  meta_free (m);
  meta_free (m2);
}
END_TEST

START_TEST (test_dev_add)
{
  struct meta *m = make_state (), *m2 = meta_new ();
  struct meta_extent ext[4] = { { 3, 0 }, { 1, 2 }, { 3, 7 }, { 2, 3 } };
  struct fbuf e, ck;

  /* Extents on a device not yet added are refused. */
  fbuf_init_write (&e);
  meta_entry_chunk_alloc (&e, 1, 1, 4, ext);
  ck_assert_int_eq (meta_apply (m, META_E_CHUNK_ALLOC, e.p, e.len), -1);
  ck_assert_int_eq (dev_add (m, 3, "e0", 1), 0);
  ck_assert_uint_eq (m->ndevices, 4);
  ck_assert_str_eq (m->devices[3].name, "e0");
  ck_assert_str_eq (m->devices[3].domain, "rack2/e0");
  ck_assert_uint_eq (m->devices[3].extent_count, 8);
  ck_assert_int_eq (meta_apply (m, META_E_CHUNK_ALLOC, e.p, e.len), 0);
  fbuf_free (&e);
  /* Not the next index, a name or UUID in use, a truncated entry. */
  ck_assert_int_eq (dev_add (m, 3, "e1", 2), -1);
  ck_assert_int_eq (dev_add (m, 5, "e1", 2), -1);
  ck_assert_int_eq (dev_add (m, 4, "d1", 2), -1);
  ck_assert_int_eq (dev_add (m, 4, "e1", 1), -1);
  fbuf_init_write (&e);
  fbuf_put_u32 (&e, 4);
  fbuf_put_str (&e, "e1");
  ck_assert_int_eq (meta_apply (m, META_E_DEV_ADD, e.p, e.len), -1);
  fbuf_free (&e);
  ck_assert_uint_eq (m->ndevices, 4);
  /* A checkpoint keeps the device and the chunk on it. */
  fbuf_init_write (&ck);
  ck_assert_int_eq (meta_snapshot (m, &ck), 0);
  ck_assert_int_eq (meta_load (m2, ck.p, ck.len), 0);
  ck_assert_uint_eq (m2->ndevices, 4);
  ck_assert_str_eq (m2->devices[3].name, "e0");
  ck_assert_str_eq (m2->devices[3].domain, "rack2/e0");
  ck_assert_int_eq (memcmp (m2->devices[3].uuid, m->devices[3].uuid, 16), 0);
  ck_assert_uint_eq (m2->devices[3].extent_count, 8);
  ck_assert_uint_eq (m2->devices[3].state, META_DEV_UP);
  ck_assert_uint_eq (meta_chunk_get (meta_find_volume (m2, "v"), 1)->ext[2].dev,
                     3);
  fbuf_free (&ck);
  meta_free (m);
  meta_free (m2);
}
END_TEST

/* ---- decoders under fuzzing (TESTING.md 6) ----
 *
 * Checksums keep random damage away from the decoders, so these feed
 * them damage behind the checksum: a real checkpoint and real entries
 * with bits flipped, bytes set to edge values, ranges copied over other
 * ranges, or cut short.  Each must be refused with a message, leaving
 * nothing half-loaded, or loaded into a state that is whole: every
 * extent on a device of the table and inside it, and its own checkpoint
 * loads again to the same bytes.  ASan and UBSan (make SANITIZE=1)
 * catch any read out of bounds or overflow on the way. */

#define FUZZ_ROUNDS 10000

static uint64_t fuzz_state = 0x5eed5eed5eedULL;

static uint32_t
fuzz_rand (void)
{
  /* xorshift64*: fixed seed, so a failure repeats. */
  fuzz_state ^= fuzz_state >> 12;
  fuzz_state ^= fuzz_state << 25;
  fuzz_state ^= fuzz_state >> 27;
  return (uint32_t) ((fuzz_state * 0x2545f4914f6cdd1dULL) >> 32);
}

/* Damage BUF of *LEN bytes in one of five ways; *LEN may shrink. */
static void
mutate (uint8_t *buf, size_t *len)
{
  static const uint8_t edge[] = { 0x00, 0x01, 0x7f, 0x80, 0xfe, 0xff };
  size_t n = *len;
  unsigned k, times = 1 + fuzz_rand () % 4;

  if (n == 0)
    return;
  switch (fuzz_rand () % 5) {
    case 0:			/* bits flipped */
      for (k = 0; k < times; k++)
        buf[fuzz_rand () % n] ^= (uint8_t) (1u << (fuzz_rand () % 8));
      break;
    case 1:			/* bytes set to edge values */
      for (k = 0; k < times; k++)
        buf[fuzz_rand () % n] = edge[fuzz_rand () % sizeof edge];
      break;
    case 2:			/* a 4- or 8-byte field all ones or zeros */
      {
        size_t w = fuzz_rand () % 2 ? 8 : 4, at = fuzz_rand () % n;
        memset (buf + at, fuzz_rand () % 2 ? 0xff : 0, MIN (w, n - at));
      }
      break;
    case 3:			/* one range copied over another */
      {
        size_t from = fuzz_rand () % n, to = fuzz_rand () % n;
        size_t w = 1 + fuzz_rand () % 32;
        w = MIN (w, MIN (n - from, n - to));
        memmove (buf + to, buf + from, w);
      }
      break;
    default:			/* cut short */
      *len = fuzz_rand () % n;
      break;
  }
}

/* M is whole: every extent is on a device of the table and inside it,
 * and its checkpoint loads again to the same bytes. */
static int
whole_chunk (void *opaque, uint64_t idx, struct meta_chunk *c)
{
  struct meta *m = opaque;
  (void) idx;
  for (uint32_t e = 0; e < c->n; e++) {
    ck_assert_uint_lt (c->ext[e].dev, m->ndevices);
    ck_assert_uint_lt (c->ext[e].ext, m->devices[c->ext[e].dev].extent_count);
  }
  return 0;
}

static void
check_whole (struct meta *m)
{
  struct meta *again = meta_new ();
  struct fbuf a, b;

  for (size_t i = 0; i < m->nvolumes; i++)
    meta_foreach_chunk (m->volumes[i], whole_chunk, m);
  fbuf_init_write (&a);
  fbuf_init_write (&b);
  ck_assert_int_eq (meta_snapshot (m, &a), 0);
  ck_assert_msg (meta_load (again, a.p, a.len) == 0,
                 "a loaded state's own checkpoint is refused: %s",
                 strata_last_error ());
  ck_assert_int_eq (meta_snapshot (again, &b), 0);
  ck_assert_uint_eq (a.len, b.len);
  ck_assert_mem_eq (a.p, b.p, a.len);
  fbuf_free (&a);
  fbuf_free (&b);
  meta_free (again);
}

/* make_state, and then one of everything a checkpoint holds: a second
 * volume, a stale copy, a job record, a cache, a lost range, a device
 * added. */
static struct meta *
make_full_state (void)
{
  struct meta *m = make_state ();
  struct config_volume cv = { .name = "w", .size = 64 << 20, .replicas = 1,
                              .stripe_width = 1, .stripe_unit = 1 << 20 };
  struct meta_extent ext[1] = { { 2, 5 } };
  struct meta_job j = { .state = META_JOB_RUNNING, .vol = 1, .pos_chunk = 3,
                        .total = 8 << 20, .blocks = 99 };
  static const uint8_t cu[16] = { 0xc, 0xa, 0xc, 0xe };
  struct fbuf e;

  vol_create (m, 2, &cv);
  chunk_alloc (m, 2, 3, 1, ext);
  ck_assert_int_eq (stale (m, true, 1, 0, 1, 2), 0);
  fbuf_init_write (&e);
  meta_entry_job (&e, META_JOB_REBUILD, &j);
  ck_assert_int_eq (meta_apply (m, META_E_JOB, e.p, e.len), 0);
  fbuf_free (&e);
  fbuf_init_write (&e);
  meta_entry_cache (&e, cu);
  ck_assert_int_eq (meta_apply (m, META_E_CACHE, e.p, e.len), 0);
  fbuf_free (&e);
  ck_assert_int_eq (lost (m, true, 2, 1000, 24), 0);
  ck_assert_int_eq (dev_add (m, 3, "d3", 7), 0);
  return m;
}

START_TEST (test_fuzz_checkpoint)
{
  struct meta *m = make_full_state ();
  struct fbuf ck;
  uint8_t *buf;
  unsigned loaded = 0, refused = 0;

  fbuf_init_write (&ck);
  ck_assert_int_eq (meta_snapshot (m, &ck), 0);
  buf = malloc (ck.len);
  ck_assert_ptr_nonnull (buf);
  for (unsigned i = 0; i < FUZZ_ROUNDS; i++) {
    struct meta *m2 = meta_new ();
    size_t len = ck.len;
    uint8_t *exact;

    memcpy (buf, ck.p, len);
    mutate (buf, &len);
    /* An exact-size copy, so that ASan sees a read past the end. */
    exact = malloc (len ? len : 1);
    memcpy (exact, buf, len);
    if (meta_load (m2, exact, len) == 0) {
      loaded++;
      check_whole (m2);
    }
    else {
      refused++;
      ck_assert_str_ne (strata_last_error (), "");
      ck_assert_uint_eq (m2->nvolumes, 0);
      ck_assert_uint_eq (m2->ndevices, 0);
    }
    free (exact);
    meta_free (m2);
  }
  /* Both outcomes must have come up for the test to have said much. */
  ck_assert_uint_gt (loaded, FUZZ_ROUNDS / 20);
  ck_assert_uint_gt (refused, FUZZ_ROUNDS / 20);
  free (buf);
  fbuf_free (&ck);
  meta_free (m);
}
END_TEST

START_TEST (test_fuzz_entries)
{
  struct meta *base = make_full_state ();
  struct config_volume cv = { .name = "x", .size = 64 << 20, .replicas = 2,
                              .stripe_width = 2, .stripe_unit = 1 << 20 };
  struct meta_extent ext[4] = { { 0, 7 }, { 1, 7 }, { 2, 7 }, { 3, 7 } };
  struct meta_stale_item st = { 1, 0, 0, 1 };
  struct meta_lost lo = { 2, 2000, 8 };
  struct meta_job j = { .state = META_JOB_DONE, .vol = 2, .done = 5 };
  struct meta_device d = { .extent_count = 8, .state = META_DEV_UP };
  static const uint8_t cu[16] = { 1, 2, 3 };
  struct { uint16_t type; struct fbuf e; } ent[12];
  struct fbuf ck;
  unsigned n = 0, applied = 0, refused = 0;

  snprintf (d.name, sizeof d.name, "d4");
#define ENTRY(T, CALL) do { ent[n].type = (T); fbuf_init_write (&ent[n].e); \
    CALL; n++; } while (0)
  ENTRY (META_E_VOL_CREATE, meta_entry_vol_create (&ent[n].e, 3, &cv));
  ENTRY (META_E_VOL_RESIZE, meta_entry_vol_resize (&ent[n].e, 1, 128 << 20));
  ENTRY (META_E_VOL_DELETE, meta_entry_vol_delete (&ent[n].e, 2));
  ENTRY (META_E_CHUNK_ALLOC, meta_entry_chunk_alloc (&ent[n].e, 1, 5, 4, ext));
  ENTRY (META_E_CHUNK_FREE, meta_entry_chunk_free (&ent[n].e, 1, 0));
  ENTRY (META_E_DEV_STATE, meta_entry_dev_state (&ent[n].e, 1,
                                                 META_DEV_FAILED));
  ENTRY (META_E_DEV_ADD, meta_entry_dev_add (&ent[n].e, 4, &d));
  ENTRY (META_E_STALE, meta_entry_stale (&ent[n].e, true, &st, 1));
  ENTRY (META_E_EXT_REPLACE, meta_entry_ext_replace (&ent[n].e, 1, 0, 1,
                                                     ext[3]));
  ENTRY (META_E_JOB, meta_entry_job (&ent[n].e, META_JOB_SCRUB, &j));
  ENTRY (META_E_CACHE, meta_entry_cache (&ent[n].e, cu));
  ENTRY (META_E_LOST, meta_entry_lost (&ent[n].e, true, &lo, 1));
#undef ENTRY
  fbuf_init_write (&ck);
  ck_assert_int_eq (meta_snapshot (base, &ck), 0);

  for (unsigned i = 0; i < FUZZ_ROUNDS; i++) {
    unsigned k = fuzz_rand () % n;
    struct meta *m = meta_new ();
    size_t len = ent[k].e.len;
    uint8_t *buf = malloc (len);

    ck_assert_int_eq (meta_load (m, ck.p, ck.len), 0);
    memcpy (buf, ent[k].e.p, len);
    mutate (buf, &len);
    if (meta_apply (m, ent[k].type, buf, len) == 0)
      applied++;
    else {
      refused++;
      ck_assert_str_ne (strata_last_error (), "");
    }
    /* Applied or refused, what is left is whole. */
    check_whole (m);
    free (buf);
    meta_free (m);
  }
  ck_assert_uint_gt (applied, FUZZ_ROUNDS / 20);
  ck_assert_uint_gt (refused, FUZZ_ROUNDS / 20);
  for (unsigned k = 0; k < n; k++)
    fbuf_free (&ent[k].e);
  fbuf_free (&ck);
  meta_free (base);
}
END_TEST

/* meta_ckpt_bound() holds for a pool full in the shapes that take the
 * most an extent: one-extent chunks of an unreplicated volume, and
 * two-copy chunks with every column's second copy stale. */
START_TEST (test_ckpt_bound)
{
  enum { N = 4096 };
  struct meta *m = meta_new ();
  struct config_volume a = { .name = "a", .size = (uint64_t) N * ES,
                             .replicas = 1, .stripe_width = 1,
                             .stripe_unit = 1 << 20 };
  struct config_volume b = { .name = "b", .size = (uint64_t) N * ES,
                             .replicas = 2, .stripe_width = 1,
                             .stripe_unit = 1 << 20 };
  struct fbuf ck;

  ck_assert_ptr_nonnull (m);
  m->extent_size = ES;
  m->ndevices = 3;
  for (int i = 0; i < 3; i++) {
    snprintf (m->devices[i].name, sizeof m->devices[i].name, "d%d", i);
    m->devices[i].extent_count = N;
  }
  vol_create (m, 1, &a);
  vol_create (m, 2, &b);
  for (uint32_t k = 0; k < N; k++) {
    struct meta_extent e1 = { 0, k }, e2[2] = { { 1, k }, { 2, k } };
    chunk_alloc (m, 1, k, 1, &e1);
    chunk_alloc (m, 2, k, 2, e2);
    ck_assert_int_eq (stale (m, true, 2, k, 0, 2), 0);
  }
  fbuf_init_write (&ck);
  ck_assert_int_eq (meta_snapshot (m, &ck), 0);
  ck_assert (!ck.bad);
  ck_assert_uint_le (ck.len, meta_ckpt_bound (3 * N));
  /* Not loose: most of the bound is used. */
  ck_assert_uint_ge (ck.len, (meta_ckpt_bound (3 * N) - (1u << 20)) * 9 / 10);
  fbuf_free (&ck);
  meta_free (m);
}
END_TEST

Suite *
meta_suite (void)
{
  Suite *s = suite_create ("meta");
  TCase *tc = tcase_create ("entries");

  tcase_add_test (tc, test_ext_replace);
  tcase_add_test (tc, test_jobs_checkpoint);
  tcase_add_test (tc, test_stale);
  tcase_add_test (tc, test_dev_add);
  tcase_add_test (tc, test_lost);
  tcase_add_test (tc, test_ckpt_bound);
  suite_add_tcase (s, tc);
  tc = tcase_create ("fuzz");
  tcase_set_timeout (tc, 120);
  tcase_add_test (tc, test_fuzz_checkpoint);
  tcase_add_test (tc, test_fuzz_entries);
  suite_add_tcase (s, tc);
  return s;
}
