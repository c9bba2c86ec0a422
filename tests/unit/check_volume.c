/* Unit tests: the volume data path against a flat reference byte array,
 * with random unaligned reads, writes, zeroes and trims, across a pool
 * reopen. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "error.h"
#include "pool.h"
#include "suites.h"
#include "volume.h"

#define VOLSIZE (24u << 20)

static const char *layouts[] = {
  "{ name: v, size: 24MiB, stripe_width: 3, stripe_unit: 4KiB }",
  "{ name: v, size: 24MiB, replicas: 2, stripe_width: 2, stripe_unit: 64KiB }",
  "{ name: v, size: 24MiB, replicas: 3 }",
  "{ name: v, size: 24MiB, stripe_width: 4, stripe_unit: 1MiB }",
};

static struct config *
make_config (const char *dir, const char *vol)
{
  char text[2048];
  struct config *c;

  snprintf (text, sizeof text,
            "pool: { name: u, extent_size: 1MiB, metadata_size: 4MiB,\n"
            "        control_socket: u.sock }\n"
            "devices:\n"
            "  - { name: d0, path: d0.img, size: 64MiB }\n"
            "  - { name: d1, path: d1.img, size: 64MiB }\n"
            "  - { name: d2, path: d2.img, size: 64MiB }\n"
            "  - { name: d3, path: d3.img, size: 64MiB }\n"
            "volumes:\n  - %s\n", vol);
  ck_assert_msg (config_parse_string (text, "u.yaml", dir, &c) == 0, "%s",
                 strata_last_error ());
  return c;
}

START_TEST (test_against_reference)
{
  char *dir = test_tmpdir ();
  struct config *c = make_config (dir, layouts[_i]);
  uint8_t *ref = calloc (1, VOLSIZE), *buf = malloc (VOLSIZE + 1);
  struct pool *p;
  struct volume *v;
  unsigned seed = 17 + _i;

  ck_assert_msg (pool_init (c, false, NULL) == 0, "%s", strata_last_error ());
  p = pool_open (c, POOL_WRITE);
  ck_assert_msg (p != NULL, "%s", strata_last_error ());
  ck_assert_int_eq (pool_volume_create (p, &c->volumes[0]), 0);
  v = volume_open (p, "v");
  ck_assert_ptr_nonnull (v);

  /* Unallocated reads as zeros. */
  ck_assert_int_eq (volume_pread (v, buf, VOLSIZE, 0), 0);
  ck_assert_mem_eq (buf, ref, VOLSIZE);

  for (int op = 0; op < 600; op++) {
    uint32_t n = 1 + rand_r (&seed) % (rand_r (&seed) % 4 ? 9000 : 3000000);
    uint64_t off = rand_r (&seed) % (VOLSIZE - n);
    /* Align some requests to exercise the direct path. */
    if (rand_r (&seed) % 3 == 0) {
      off &= ~4095ull;
      n = (n + 4095) & ~4095u;
      if (off + n > VOLSIZE)
        n = VOLSIZE - off;
    }
    switch (rand_r (&seed) % 8) {
      case 0:
        ck_assert_int_eq (volume_zero (v, n, off, rand_r (&seed) % 2, false), 0);
        memset (ref + off, 0, n);
        break;
      case 1:
        ck_assert_int_eq (volume_trim (v, n, off, false), 0);
        /* Trimmed data is unspecified: read it and adopt what is there,
         * but it must be either the old data or zeros, block by block. */
        ck_assert_int_eq (volume_pread (v, buf, n, off), 0);
        for (uint32_t k = 0; k < n; k++)
          ck_assert (buf[k] == ref[off + k] || buf[k] == 0);
        memcpy (ref + off, buf, n);
        break;
      case 2: case 3:
        ck_assert_int_eq (volume_pread (v, buf + 1, n, off), 0);	/* unaligned buffer */
        ck_assert_mem_eq (buf + 1, ref + off, n);
        break;
      default:
        for (uint32_t k = 0; k < n; k++)
          buf[k] = rand_r (&seed);
        ck_assert_msg (volume_pwrite (v, buf, n, off, rand_r (&seed) % 7 == 0)
                       == 0, "%s", strata_last_error ());
        memcpy (ref + off, buf, n);
        break;
    }
  }
  ck_assert_int_eq (volume_flush (v), 0);
  ck_assert_int_eq (volume_pread (v, buf, VOLSIZE, 0), 0);
  ck_assert_mem_eq (buf, ref, VOLSIZE);

  /* Out of range is refused. */
  ck_assert_int_eq (volume_pread (v, buf, 2, VOLSIZE - 1), -1);
  ck_assert_int_eq (volume_pwrite (v, buf, 1, VOLSIZE, false), -1);

  volume_close (v);
  pool_close (p);

  /* Reopen: the same bytes. */
  p = pool_open (c, POOL_WRITE);
  ck_assert_msg (p != NULL, "%s", strata_last_error ());
  v = volume_open (p, "v");
  ck_assert_int_eq (volume_pread (v, buf, VOLSIZE, 0), 0);
  ck_assert_mem_eq (buf, ref, VOLSIZE);
  volume_close (v);

  /* Every replica of every column holds the same bytes. */
  {
    struct meta_volume *mv = meta_find_volume (pool_meta (p), "v");
    uint8_t *a = device_alloc_buf (1 << 20), *b = device_alloc_buf (1 << 20);
    for (uint64_t ci = 0; ci < meta_volume_nchunks (mv); ci++) {
      struct meta_chunk *ch = meta_chunk_get (mv, ci);
      if (!ch)
        continue;
      for (uint32_t col = 0; col < mv->width; col++)
        for (uint32_t r = 1; r < mv->replicas; r++) {
          struct meta_extent e0 = ch->ext[col * mv->replicas];
          struct meta_extent er = ch->ext[col * mv->replicas + r];
          ck_assert_int_eq (device_pread (pool_device (p, e0.dev), a, 1 << 20,
                                          pool_extent_offset (p, e0, 0)), 0);
          ck_assert_int_eq (device_pread (pool_device (p, er.dev), b, 1 << 20,
                                          pool_extent_offset (p, er, 0)), 0);
          ck_assert_mem_eq (a, b, 1 << 20);
        }
    }
    free (a);
    free (b);
  }
  pool_close (p);
  config_free (c);
  free (ref);
  free (buf);
  test_rmdir (dir);
}
END_TEST

START_TEST (test_thin_and_free)
{
  char *dir = test_tmpdir ();
  struct config *c = make_config (dir, layouts[1]);
  uint8_t buf[4096];
  struct pool *p;
  struct volume *v;
  uint64_t before;

  ck_assert_int_eq (pool_init (c, false, NULL), 0);
  p = pool_open (c, POOL_WRITE);
  ck_assert_int_eq (pool_volume_create (p, &c->volumes[0]), 0);
  v = volume_open (p, "v");
  before = alloc_free_count (pool_alloc (p), 0) + alloc_free_count (pool_alloc (p), 1)
    + alloc_free_count (pool_alloc (p), 2) + alloc_free_count (pool_alloc (p), 3);
  memset (buf, 0x5a, sizeof buf);
  /* One write allocates one chunk: width 2 x replicas 2 extents. */
  ck_assert_int_eq (volume_pwrite (v, buf, sizeof buf, 5 << 20, false), 0);
  ck_assert_uint_eq (atomic_load (&meta_find_volume (pool_meta (p), "v")->nchunks), 1);
  /* Zeroing the whole chunk gives the extents back. */
  ck_assert_int_eq (volume_zero (v, 2 << 20, 4 << 20, true, false), 0);
  ck_assert_uint_eq (atomic_load (&meta_find_volume (pool_meta (p), "v")->nchunks), 0);
  ck_assert_uint_eq (alloc_free_count (pool_alloc (p), 0) + alloc_free_count (pool_alloc (p), 1)
                     + alloc_free_count (pool_alloc (p), 2) + alloc_free_count (pool_alloc (p), 3),
                     before);
  ck_assert_int_eq (volume_pread (v, buf, sizeof buf, 5 << 20), 0);
  for (size_t i = 0; i < sizeof buf; i++)
    ck_assert_uint_eq (buf[i], 0);
  volume_close (v);
  /* Delete refuses while a handle is open; works after. */
  v = volume_open (p, "v");
  ck_assert_int_eq (pool_volume_delete (p, "v"), -1);
  volume_close (v);
  ck_assert_int_eq (pool_volume_delete (p, "v"), 0);
  ck_assert_ptr_null (volume_open (p, "v"));
  pool_close (p);
  config_free (c);
  test_rmdir (dir);
}
END_TEST

Suite *
volume_suite (void)
{
  Suite *s = suite_create ("volume");
  TCase *tc = tcase_create ("data path");

  tcase_set_timeout (tc, 120);
  tcase_add_loop_test (tc, test_against_reference, 0, 4);
  tcase_add_test (tc, test_thin_and_free);
  suite_add_tcase (s, tc);
  return s;
}
