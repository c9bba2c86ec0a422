/* strata: libFuzzer harness for the metadata decoders (make fuzz).
 *
 * An input is a mode byte, a little-endian entry type and a payload.
 * Odd modes apply the payload as a journal entry of that type
 * (meta_apply) to a base state; even modes load it as a checkpoint
 * (meta_load).  Either it is refused with a message and, for a
 * checkpoint, nothing loaded, or what results snapshots into a
 * checkpoint that loads again and snapshots to the same bytes.  The
 * sanitizers catch the rest.
 *
 * With STRATA_FUZZ_SEEDS=DIR set, initialisation writes the entries that
 * built the base state and its checkpoint into DIR as seeds.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "error.h"
#include "format.h"
#include "meta.h"

static struct fbuf base;	/* checkpoint of the base state */
static const char *seeds;	/* STRATA_FUZZ_SEEDS, or NULL */

static void
die (const char *what)
{
  fprintf (stderr, "fuzz-meta: %s: %s\n", what, strata_last_error ());
  abort ();
}

static void
seed (const char *name, uint8_t mode, uint16_t type, const struct fbuf *e)
{
  char path[4096];
  FILE *f;

  if (!seeds)
    return;
  snprintf (path, sizeof path, "%s/%s", seeds, name);
  if (!(f = fopen (path, "w")))
    die ("writing a seed");
  fputc (mode, f);
  fputc (type & 0xff, f);
  fputc (type >> 8, f);
  fwrite (e->p, 1, e->len, f);
  fclose (f);
}

/* M snapshots to a checkpoint that loads, and the copy snapshots to the
 * same bytes. */
static void
check_roundtrip (struct meta *m)
{
  struct meta *m2 = meta_new ();
  struct fbuf a, b;

  fbuf_init_write (&a);
  fbuf_init_write (&b);
  if (!m2 || meta_snapshot (m, &a) != 0)
    die ("snapshot");
  if (meta_load (m2, a.p, a.len) != 0)
    die ("a snapshot does not load");
  if (meta_snapshot (m2, &b) != 0)
    die ("snapshot of the copy");
  if (a.len != b.len || memcmp (a.p, b.p, a.len) != 0)
    die ("a reloaded snapshot differs");
  fbuf_free (&a);
  fbuf_free (&b);
  meta_free (m2);
}

/* Build the base state from one entry of most types; each is a seed. */
int
LLVMFuzzerInitialize (int *argc, char ***argv)
{
  struct meta *m = meta_new ();
  struct config_volume cv = { .name = "v", .size = 64 << 20, .replicas = 2,
                              .stripe_width = 2, .stripe_unit = 1 << 20 };
  struct config_volume cw = { .name = "w", .size = 64 << 20, .replicas = 1,
                              .stripe_width = 1, .stripe_unit = 1 << 20 };
  struct meta_extent ext[4] = { { 0, 0 }, { 1, 0 }, { 1, 1 }, { 2, 0 } };
  struct meta_extent ext1[1] = { { 2, 5 } };
  struct meta_job j = { .state = META_JOB_RUNNING, .vol = 1, .pos_chunk = 3,
                        .total = 8 << 20, .blocks = 99 };
  static const uint8_t cu[16] = { 0xc, 0xa, 0xc, 0xe };
  struct meta_stale_item st = { 1, 0, 1, 2 };
  struct meta_lost lo = { 2, 1000, 24 };
  struct meta_col_item ci = { 1, 0, 3 };
  struct meta_device d = { .extent_count = 8, .state = META_DEV_UP };
  struct fbuf e;

  (void) argc;
  (void) argv;
  seeds = getenv ("STRATA_FUZZ_SEEDS");
  if (!m)
    die ("meta_new");
  m->extent_size = 4 << 20;
  m->ndevices = 3;
  for (int i = 0; i < 3; i++) {
    snprintf (m->devices[i].name, sizeof m->devices[i].name, "d%d", i);
    m->devices[i].extent_count = 16;
  }
  snprintf (d.name, sizeof d.name, "d3");
  snprintf (d.domain, sizeof d.domain, "rack2/d3");
  d.uuid[0] = 7;

  /* APPLY: a seed, and part of the base.  SEED: a seed only. */
#define APPLY(T, CALL, NAME)                                  \
  do {                                                        \
    fbuf_init_write (&e);                                     \
    CALL;                                                     \
    seed (NAME, 1, T, &e);                                    \
    if (meta_apply (m, T, e.p, e.len) != 0)                   \
      die ("building the base state");                        \
    fbuf_free (&e);                                           \
  } while (0)
#define SEED(T, CALL, NAME)                                   \
  do {                                                        \
    fbuf_init_write (&e);                                     \
    CALL;                                                     \
    seed (NAME, 1, T, &e);                                    \
    fbuf_free (&e);                                           \
  } while (0)
  APPLY (META_E_VOL_CREATE, meta_entry_vol_create (&e, 1, &cv), "vol-create");
  APPLY (META_E_CHUNK_ALLOC, meta_entry_chunk_alloc (&e, 1, 0, 4, ext),
         "chunk-alloc");
  APPLY (META_E_VOL_CREATE, meta_entry_vol_create (&e, 2, &cw), "vol-create-2");
  APPLY (META_E_CHUNK_ALLOC, meta_entry_chunk_alloc (&e, 2, 3, 1, ext1),
         "chunk-alloc-2");
  APPLY (META_E_STALE, meta_entry_stale (&e, true, &st, 1), "stale");
  APPLY (META_E_JOB, meta_entry_job (&e, META_JOB_REBUILD, &j), "job");
  APPLY (META_E_CACHE, meta_entry_cache (&e, cu), "cache");
  APPLY (META_E_LOST, meta_entry_lost (&e, true, &lo, 1), "lost");
  APPLY (META_E_DEV_ADD, meta_entry_dev_add (&e, 3, &d), "dev-add");
  APPLY (META_E_COL_STATE, meta_entry_col_state (&e, true, &ci, 1),
         "col-state");
  SEED (META_E_VOL_RESIZE, meta_entry_vol_resize (&e, 1, 128 << 20),
        "vol-resize");
  SEED (META_E_VOL_DELETE, meta_entry_vol_delete (&e, 2), "vol-delete");
  SEED (META_E_CHUNK_FREE, meta_entry_chunk_free (&e, 1, 0), "chunk-free");
  SEED (META_E_DEV_STATE, meta_entry_dev_state (&e, 1, META_DEV_FAILED),
        "dev-state");
  SEED (META_E_EXT_REPLACE,
        meta_entry_ext_replace (&e, 1, 0, 1, (struct meta_extent) { 3, 4 }),
        "ext-replace");
#undef APPLY
#undef SEED

  fbuf_init_write (&base);
  if (meta_snapshot (m, &base) != 0)
    die ("snapshot of the base state");
  seed ("checkpoint", 0, 0, &base);
  check_roundtrip (m);
  meta_free (m);
  return 0;
}

int
LLVMFuzzerTestOneInput (const uint8_t *data, size_t size)
{
  struct meta *m;
  uint8_t *payload;
  size_t n;
  uint16_t type;

  if (size < 3)
    return 0;
  type = data[1] | (data[2] << 8);
  n = size - 3;
  /* An exact-size copy, so that ASan sees a read past its end. */
  if (!(payload = malloc (n ? n : 1)) || !(m = meta_new ()))
    die ("out of memory");
  memcpy (payload, data + 3, n);
  if (data[0] & 1) {
    if (meta_load (m, base.p, base.len) != 0)
      die ("loading the base state");
    if (meta_apply (m, type, payload, n) == 0)
      check_roundtrip (m);
    else if (strata_last_error ()[0] == '\0')
      die ("an entry refused with no message");
  }
  else if (meta_load (m, payload, n) == 0)
    check_roundtrip (m);
  else if (strata_last_error ()[0] == '\0')
    die ("a checkpoint refused with no message");
  else if (m->nvolumes != 0 || m->ndevices != 0)
    die ("a refused checkpoint left state behind");
  meta_free (m);
  free (payload);
  return 0;
}
