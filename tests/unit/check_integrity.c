/* Unit tests: block checksums, self-healing reads and crash resync
 * (csum.c, resync.c), with damage done behind the pool's back to the
 * backing files; the rebuild's report (rebuild.c). */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "config.h"
#include "crc32c.h"
#include "error.h"
#include "pool.h"
#include "rebuild.h"
#include "resync.h"
#include "suites.h"
#include "volume.h"

#define MIB (1u << 20)

static struct config *
make_config (const char *dir, unsigned replicas)
{
  char text[2048];
  struct config *c;

  snprintf (text, sizeof text,
            "pool: { name: i, extent_size: 1MiB, metadata_size: 4MiB,\n"
            "        control_socket: i.sock }\n"
            "devices:\n"
            "  - { name: d0, path: d0.img, size: 64MiB }\n"
            "  - { name: d1, path: d1.img, size: 64MiB }\n"
            "  - { name: d2, path: d2.img, size: 64MiB }\n"
            "volumes:\n"
            "  - { name: v, size: 8MiB, replicas: %u }\n", replicas);
  ck_assert_msg (config_parse_string (text, "i.yaml", dir, &c) == 0, "%s",
                 strata_last_error ());
  return c;
}

static void
fill (char *buf, size_t len, unsigned seed)
{
  for (size_t i = 0; i < len; i++)
    buf[i] = rand_r (&seed);
}

/* Where replica R of the column holding volume byte 0 lives: the
 * device index, and the byte offset of the extent in its file.  Read
 * with the pool open read-only (no resync, no cleaning). */
struct where {
  uint32_t dev;
  uint64_t data;		/* byte offset of the extent */
  uint64_t slot;		/* byte offset of its checksum slot */
};

static struct where
locate (struct config *c, uint32_t r)
{
  struct pool *p = pool_open (c, 0);
  struct meta_volume *mv;
  struct meta_chunk *ch;
  struct meta_extent e;
  struct where w;

  ck_assert_msg (p != NULL, "%s", strata_last_error ());
  mv = meta_find_volume (pool_meta (p), "v");
  ch = meta_chunk_get (mv, 0);
  ck_assert_ptr_nonnull (ch);
  e = ch->ext[r];
  w.dev = e.dev;
  w.data = pool_extent_offset (p, e, 0);
  w.slot = pool_meta (p)->devices[e.dev].csum_offset + (uint64_t) e.ext * 4096;
  pool_close (p);
  return w;
}

static void
file_rw (const char *dir, uint32_t dev, void *buf, size_t len, uint64_t off,
         bool write)
{
  char path[400];
  int fd;

  snprintf (path, sizeof path, "%s/d%u.img", dir, dev);
  fd = open (path, O_RDWR);
  ck_assert_int_ge (fd, 0);
  if (write)
    ck_assert_int_eq (pwrite (fd, buf, len, off), (ssize_t) len);
  else
    ck_assert_int_eq (pread (fd, buf, len, off), (ssize_t) len);
  close (fd);
}

/* Create the volume and write PAT over its first MiB; a clean close. */
static void
setup (struct config *c, const char *pat)
{
  struct pool *p;
  struct volume *v;

  ck_assert_msg (pool_init (c, false, NULL) == 0, "%s", strata_last_error ());
  p = pool_open (c, POOL_WRITE);
  ck_assert_msg (p != NULL, "%s", strata_last_error ());
  ck_assert_int_eq (pool_volume_create (p, &c->volumes[0]), 0);
  v = volume_open (p, "v");
  ck_assert_int_eq (volume_pwrite (v, pat, MIB, 0, false), 0);
  volume_close (v);
  pool_close (p);
}

START_TEST (test_self_heal)
{
  char *dir = test_tmpdir ();
  struct config *c = make_config (dir, 2);
  char *pat = malloc (MIB), *buf = malloc (MIB), *raw = malloc (4096);
  struct where w0, w1;
  struct pool *p;
  struct volume *v;

  fill (pat, MIB, 1);
  setup (c, pat);
  w0 = locate (c, 0);
  w1 = locate (c, 1);
  ck_assert_uint_ne (w0.dev, w1.dev);

  /* One byte of replica 0, in block 5. */
  file_rw (dir, w0.dev, raw, 1, w0.data + 5 * 4096 + 77, false);
  raw[0] ^= 0x40;
  file_rw (dir, w0.dev, raw, 1, w0.data + 5 * 4096 + 77, true);

  p = pool_open (c, POOL_WRITE);
  ck_assert_msg (p != NULL, "%s", strata_last_error ());
  v = volume_open (p, "v");
  /* Every read of it is right, whichever replica it starts from. */
  for (int k = 0; k < 4; k++) {
    ck_assert_int_eq (volume_pread (v, buf, MIB, 0), 0);
    ck_assert_mem_eq (buf, pat, MIB);
  }
  ck_assert_uint_eq (pool_device_csum_errors (p, w0.dev), 1);
  ck_assert_uint_eq (pool_device_repairs (p, w0.dev), 1);
  ck_assert_uint_eq (pool_device_csum_errors (p, w1.dev), 0);
  volume_close (v);
  pool_close (p);

  /* The bad copy was rewritten with the good data. */
  file_rw (dir, w0.dev, raw, 4096, w0.data + 5 * 4096, false);
  ck_assert_mem_eq (raw, pat + 5 * 4096, 4096);

  free (pat);
  free (buf);
  free (raw);
  config_free (c);
  test_rmdir (dir);
}
END_TEST

START_TEST (test_no_good_copy)
{
  char *dir = test_tmpdir ();
  struct config *c = make_config (dir, 1);
  char *pat = malloc (MIB), *buf = malloc (MIB), *blk = malloc (4096);
  struct where w;
  struct pool *p;
  struct volume *v;

  fill (pat, MIB, 2);
  setup (c, pat);
  w = locate (c, 0);
  fill (blk, 4096, 3);
  file_rw (dir, w.dev, blk, 4096, w.data + 3 * 4096, true);

  p = pool_open (c, POOL_WRITE);
  ck_assert_msg (p != NULL, "%s", strata_last_error ());
  v = volume_open (p, "v");
  /* The damaged block fails; never garbage, never zeros. */
  ck_assert_int_eq (volume_pread (v, buf, 4096, 3 * 4096), -1);
  ck_assert_int_eq (errno, EIO);
  ck_assert_int_eq (volume_pread (v, buf, 100, 3 * 4096 + 10), -1);
  ck_assert_int_eq (volume_pread (v, buf, MIB, 0), -1);
  /* Its neighbours read fine. */
  ck_assert_int_eq (volume_pread (v, buf, 3 * 4096, 0), 0);
  ck_assert_mem_eq (buf, pat, 3 * 4096);
  ck_assert_int_eq (volume_pread (v, buf, 4096, 4 * 4096), 0);
  ck_assert_mem_eq (buf, pat + 4 * 4096, 4096);
  ck_assert_uint_ge (pool_device_csum_errors (p, w.dev), 1);
  ck_assert_uint_eq (pool_device_repairs (p, w.dev), 0);
  /* Rewriting the block makes it good again. */
  ck_assert_int_eq (volume_pwrite (v, pat + 3 * 4096, 4096, 3 * 4096, false),
                    0);
  ck_assert_int_eq (volume_pread (v, buf, MIB, 0), 0);
  ck_assert_mem_eq (buf, pat, MIB);
  volume_close (v);
  pool_close (p);

  free (pat);
  free (buf);
  free (blk);
  config_free (c);
  test_rmdir (dir);
}
END_TEST

START_TEST (test_slot_damage)
{
  char *dir = test_tmpdir ();
  struct config *c = make_config (dir, 2);
  char *pat = malloc (MIB), *buf = malloc (MIB);
  char s0[4096], s1[4096];
  struct where w0, w1;
  struct pool *p;
  struct volume *v;

  fill (pat, MIB, 4);
  setup (c, pat);
  w0 = locate (c, 0);
  w1 = locate (c, 1);
  /* Replica 1's checksum of block 9 is wrong; its data is fine. */
  file_rw (dir, w1.dev, s1, 4096, w1.slot, false);
  s1[9 * 4] ^= 1;
  file_rw (dir, w1.dev, s1, 4096, w1.slot, true);

  p = pool_open (c, POOL_WRITE);
  ck_assert_msg (p != NULL, "%s", strata_last_error ());
  v = volume_open (p, "v");
  for (int k = 0; k < 4; k++) {
    ck_assert_int_eq (volume_pread (v, buf, MIB, 0), 0);
    ck_assert_mem_eq (buf, pat, MIB);
  }
  ck_assert_uint_eq (pool_device_csum_errors (p, w1.dev), 1);
  ck_assert_uint_eq (pool_device_csum_errors (p, w0.dev), 0);
  volume_close (v);
  pool_close (p);
  /* The slot was rewritten: the two copies agree again. */
  file_rw (dir, w0.dev, s0, 4096, w0.slot, false);
  file_rw (dir, w1.dev, s1, 4096, w1.slot, false);
  ck_assert_mem_eq (s0, s1, 4096);
  ck_assert_uint_eq (*(uint32_t *) (s0 + 9 * 4),
                     crc32c (0, pat + 9 * 4096, 4096));

  free (pat);
  free (buf);
  config_free (c);
  test_rmdir (dir);
}
END_TEST

/* A crash in the middle of replicated writes: the replicas of a dirty
 * column differ (one took a write, the other did not).  Opening the pool
 * makes them identical, reports no checksum error, and touches only the
 * blocks that differed. */
START_TEST (test_crash_resync)
{
  char *dir = test_tmpdir ();
  struct config *c = make_config (dir, 2);
  char *pat = malloc (MIB), *buf = malloc (MIB), *r0 = malloc (MIB),
    *r1 = malloc (MIB), *blk = malloc (4096);
  struct where w0, w1;
  struct resync_stats st;
  struct pool *p;
  struct volume *v;
  pid_t pid;
  int status;

  fill (pat, MIB, 5);
  setup (c, pat);
  /* The child writes and dies without closing: the column stays dirty. */
  device_thread_exit ();	/* this thread's ring must not cross the fork */
  pid = fork ();
  ck_assert_int_ge (pid, 0);
  if (pid == 0) {
    p = pool_open (c, POOL_WRITE);
    v = p ? volume_open (p, "v") : NULL;
    fill (buf, 8192, 6);
    if (!v || volume_pwrite (v, buf, 8192, 64 * 1024, false) == -1
        || volume_flush (v) == -1) {
      fprintf (stderr, "child: %s\n", strata_last_error ());
      _exit (1);
    }
    _exit (0);
  }
  ck_assert_int_eq (waitpid (pid, &status, 0), pid);
  ck_assert_int_eq (WEXITSTATUS (status), 0);
  w0 = locate (c, 0);
  w1 = locate (c, 1);
  /* Replica 1 "missed" the second block of that write. */
  file_rw (dir, w1.dev, pat + 68 * 1024, 4096, w1.data + 68 * 1024, true);

  p = pool_open (c, POOL_WRITE);
  ck_assert_msg (p != NULL, "%s", strata_last_error ());
  resync_stats (pool_resync (p), &st);
  ck_assert_uint_eq (st.columns, 1);
  ck_assert_uint_eq (st.bytes, 4096);
  v = volume_open (p, "v");
  ck_assert_int_eq (volume_pread (v, buf, MIB, 0), 0);
  for (uint32_t d = 0; d < 3; d++)
    ck_assert_uint_eq (pool_device_csum_errors (p, d), 0);
  volume_close (v);
  pool_close (p);

  /* Both replicas hold the same bytes, and they are what a read gave:
   * replica 0's (the one chosen), including the new write. */
  file_rw (dir, w0.dev, r0, MIB, w0.data, false);
  file_rw (dir, w1.dev, r1, MIB, w1.data, false);
  ck_assert_mem_eq (r0, r1, MIB);
  ck_assert_mem_eq (r0, buf, MIB);
  fill (blk, 4096, 6);	/* the first block the child wrote */
  ck_assert_mem_eq (buf + 64 * 1024, blk, 4096);
  ck_assert_mem_eq (buf, pat, 64 * 1024);

  free (pat);
  free (buf);
  free (r0);
  free (r1);
  free (blk);
  config_free (c);
  test_rmdir (dir);
}
END_TEST

/* A rebuild that gives more columns a copy than its report lists
 * (100): it lists the first 100 in the order the columns are taken
 * (fewest copies first, then volume, chunk and column: here chunk
 * order), whichever of its workers copied them, and counts the rest. */
START_TEST (test_rebuild_report)
{
  char *dir = test_tmpdir ();
  const char *text =
    "pool: { name: i, extent_size: 1MiB, metadata_size: 4MiB,\n"
    "        control_socket: i.sock }\n"
    "devices:\n"
    "  - { name: d0, path: d0.img, size: 384MiB }\n"
    "  - { name: d1, path: d1.img, size: 384MiB }\n"
    "  - { name: d2, path: d2.img, size: 384MiB }\n"
    "  - { name: d3, path: d3.img, size: 384MiB }\n"
    "volumes:\n"
    "  - { name: v, size: 256MiB, replicas: 2 }\n";
  struct rebuild_opts o = { .json = true, .drain = -1, .prefer = -1,
                            .resync = -1 };
  uint64_t want[256], n = 0, k = 0, dropped;
  char *buf = malloc (8 * MIB), *out = NULL, *at;
  size_t outlen;
  struct meta_volume *mv;
  struct config *c;
  struct pool *p;
  struct volume *v;
  FILE *f, *devnull;

  ck_assert_msg (config_parse_string (text, "i.yaml", dir, &c) == 0, "%s",
                 strata_last_error ());
  ck_assert_msg (pool_init (c, false, NULL) == 0, "%s", strata_last_error ());
  p = pool_open (c, POOL_WRITE);
  ck_assert_msg (p != NULL, "%s", strata_last_error ());
  ck_assert_int_eq (pool_volume_create (p, &c->volumes[0]), 0);
  v = volume_open (p, "v");
  fill (buf, 8 * MIB, 7);
  for (uint64_t off = 0; off < 256 * MIB; off += 8 * MIB)
    ck_assert_int_eq (volume_pwrite (v, buf, 8 * MIB, off, false), 0);
  volume_close (v);

  /* The chunks with a copy on d0, in order. */
  mv = meta_find_volume (pool_meta (p), "v");
  for (uint64_t i = 0; i < 256; i++) {
    struct meta_chunk *ch = meta_chunk_get (mv, i);
    ck_assert_ptr_nonnull (ch);
    if (ch->ext[0].dev == 0 || ch->ext[1].dev == 0)
      want[n++] = i;
  }
  ck_assert_uint_gt (n, 100);	/* more than the report lists */

  /* d0's copies move to the three others, and its metadata replica (if
   * it has one) to the one that has none. */
  ck_assert_int_eq (pool_device_fail (p, 0, "unit test"), 0);
  f = open_memstream (&out, &outlen);
  devnull = fopen ("/dev/null", "w");
  ck_assert_int_eq (rebuild_run (p, &o, f, devnull), 0);
  fclose (f);
  fclose (devnull);
  pool_close (p);

  at = strstr (out, "\"moves\":[");
  ck_assert_ptr_nonnull (at);
  while ((at = strstr (at, "\"chunk\":"))
         && at < strstr (out, "\"moves_dropped\"")) {
    unsigned long long idx = strtoull (at + 8, &at, 10);
    ck_assert_uint_lt (k, 100);
    ck_assert_uint_eq (idx, want[k]);
    k++;
  }
  ck_assert_uint_eq (k, 100);
  at = strstr (out, "\"moves_dropped\":");
  ck_assert_ptr_nonnull (at);
  dropped = strtoull (at + 16, NULL, 10);
  ck_assert_uint_eq (dropped, n - 100);

  free (out);
  free (buf);
  config_free (c);
  test_rmdir (dir);
}
END_TEST

Suite *
integrity_suite (void)
{
  Suite *s = suite_create ("integrity");
  TCase *tc = tcase_create ("checksums");

  tcase_set_timeout (tc, 120);
  tcase_add_test (tc, test_self_heal);
  tcase_add_test (tc, test_no_good_copy);
  tcase_add_test (tc, test_slot_damage);
  tcase_add_test (tc, test_crash_resync);
  tcase_add_test (tc, test_rebuild_report);
  suite_add_tcase (s, tc);
  return s;
}
