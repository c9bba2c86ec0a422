/* Unit tests: block checksums, self-healing reads and crash resync
 * (csum.c, resync.c), with damage done behind the pool's back to the
 * backing files; the checksum arrays kept within checksum_memory; the
 * rebuild's report (rebuild.c). */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "config.h"
#include "crc32c.h"
#include "csum.h"
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
 * blocks that differed; where they differed, the copy kept is the one
 * that matches the block's last checksum (the write was not flushed, so
 * either would do). */
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
    if (!v || volume_pwrite (v, buf, 8192, 64 * 1024, false) == -1) {
      fprintf (stderr, "child: %s\n", strata_last_error ());
      _exit (1);
    }
    _exit (0);
  }
  ck_assert_int_eq (waitpid (pid, &status, 0), pid);
  ck_assert_int_eq (WEXITSTATUS (status), 0);
  w0 = locate (c, 0);
  w1 = locate (c, 1);
  /* Replica 1 "missed" the second block of that write (in flight when
   * the server died). */
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
   * the child's first block, which both had, and the old second block,
   * replica 1's, which matches the checksum of the last clean. */
  file_rw (dir, w0.dev, r0, MIB, w0.data, false);
  file_rw (dir, w1.dev, r1, MIB, w1.data, false);
  ck_assert_mem_eq (r0, r1, MIB);
  ck_assert_mem_eq (r0, buf, MIB);
  fill (blk, 4096, 6);	/* the first block the child wrote */
  ck_assert_mem_eq (buf + 64 * 1024, blk, 4096);
  ck_assert_mem_eq (buf, pat, 64 * 1024);
  ck_assert_mem_eq (buf + 68 * 1024, pat + 68 * 1024, MIB - 68 * 1024);

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
/* Move device DEV's file away (AWAY) or back. */
static void
move_dev (const char *dir, uint32_t dev, bool away)
{
  char a[400], b[400];

  snprintf (a, sizeof a, "%s/d%u.img", dir, dev);
  snprintf (b, sizeof b, "%s/d%u.away", dir, dev);
  ck_assert_int_eq (away ? rename (a, b) : rename (b, a), 0);
}

/* A device missing at the open rejoins once it is there again
 * (pool_rejoin_away), also after a write marked it failed for being
 * away; not once the operator has marked it failed. */
START_TEST (test_rejoin)
{
  char *dir = test_tmpdir ();
  struct config *c = make_config (dir, 2);
  char *pat = malloc (MIB), *pat2 = malloc (MIB), *buf = malloc (MIB);
  struct meta_volume *mv;
  struct where w;
  struct pool *p;
  struct volume *v;

  fill (pat, MIB, 3);
  fill (pat2, MIB, 4);
  setup (c, pat);
  w = locate (c, 0);
  move_dev (dir, w.dev, true);

  p = pool_open (c, POOL_WRITE);
  ck_assert_msg (p != NULL, "%s", strata_last_error ());
  ck_assert_ptr_null (pool_device (p, w.dev));
  /* A write to its column fails it ("not available"), its copy stale. */
  v = volume_open (p, "v");
  ck_assert_int_eq (volume_pwrite (v, pat2, MIB, 0, false), 0);
  ck_assert_int_eq (pool_meta (p)->devices[w.dev].state, META_DEV_FAILED);
  mv = meta_find_volume (pool_meta (p), "v");
  ck_assert (meta_copy_stale (&meta_chunk_get (mv, 0)->col[0], 0));
  /* Back: it rejoins, up, its stale copy not read. */
  move_dev (dir, w.dev, false);
  ck_assert_int_eq (pool_rejoin_away (p, NULL), 1);
  ck_assert_ptr_nonnull (pool_device (p, w.dev));
  ck_assert (pool_device_usable (p, w.dev));
  ck_assert_int_eq (pool_meta (p)->devices[w.dev].state, META_DEV_UP);
  ck_assert (meta_copy_stale (&meta_chunk_get (mv, 0)->col[0], 0));
  for (int k = 0; k < 4; k++) {
    ck_assert_int_eq (volume_pread (v, buf, MIB, 0), 0);
    ck_assert_mem_eq (buf, pat2, MIB);
  }
  /* Nothing more to do. */
  ck_assert_int_eq (pool_rejoin_away (p, NULL), 0);
  volume_close (v);
  pool_close (p);

  /* Missing again, and failed by the operator: it waits for device add. */
  move_dev (dir, w.dev, true);
  p = pool_open (c, POOL_WRITE);
  ck_assert_msg (p != NULL, "%s", strata_last_error ());
  ck_assert_ptr_null (pool_device (p, w.dev));
  ck_assert_int_eq (pool_device_fail (p, w.dev, "marked failed by the "
                                      "operator"), 0);
  move_dev (dir, w.dev, false);
  ck_assert_int_eq (pool_rejoin_away (p, NULL), 0);
  ck_assert_ptr_null (pool_device (p, w.dev));
  ck_assert_int_eq (pool_meta (p)->devices[w.dev].state, META_DEV_FAILED);
  ck_assert_int_eq (pool_device_return (p, w.dev), 0);
  ck_assert (pool_device_usable (p, w.dev));
  pool_close (p);

  free (pat);
  free (pat2);
  free (buf);
  config_free (c);
  test_rmdir (dir);
}
END_TEST

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

/* ---- checksum arrays within checksum_memory ---- */

#define CM_COLS 32		/* 1 MiB columns of volume v */

/* A pool whose checksum arrays (1 KiB each: 1 MiB extents) may take
 * 8 KiB, and a 2-replica volume of CM_COLS one-column chunks. */
static struct config *
make_cm_config (const char *dir)
{
  char text[2048];
  struct config *c;

  snprintf (text, sizeof text,
            "pool: { name: i, extent_size: 1MiB, metadata_size: 4MiB,\n"
            "        control_socket: i.sock, checksum_memory: 8KiB }\n"
            "devices:\n"
            "  - { name: d0, path: d0.img, size: 64MiB }\n"
            "  - { name: d1, path: d1.img, size: 64MiB }\n"
            "  - { name: d2, path: d2.img, size: 64MiB }\n"
            "volumes:\n"
            "  - { name: v, size: %dMiB, replicas: 2, stripe_width: 1 }\n",
            CM_COLS);
  ck_assert_msg (config_parse_string (text, "i.yaml", dir, &c) == 0, "%s",
                 strata_last_error ());
  return c;
}

/* Create the pool and volume v, open them (*V) and write DATA[0..LEN)
 * to it.  Returns the pool, open for writing. */
static struct pool *
cm_create (struct config *c, const char *data, size_t len, struct volume **v)
{
  struct pool *p;

  ck_assert_msg (pool_init (c, false, NULL) == 0, "%s", strata_last_error ());
  p = pool_open (c, POOL_WRITE);
  ck_assert_msg (p != NULL, "%s", strata_last_error ());
  ck_assert_int_eq (pool_volume_create (p, &c->volumes[0]), 0);
  *v = volume_open (p, "v");
  ck_assert_ptr_nonnull (*v);
  ck_assert_int_eq (volume_pwrite (*v, data, len, 0, false), 0);
  return p;
}

/* V reads back as REF[0..LEN) (through BUF), with no checksum error on
 * any of P's three devices; then V and P are closed. */
static void
check_and_close (struct pool *p, struct volume *v, const char *ref,
                 char *buf, size_t len)
{
  ck_assert_int_eq (volume_pread (v, buf, len, 0), 0);
  ck_assert_mem_eq (buf, ref, len);
  for (uint32_t d = 0; d < 3; d++)
    ck_assert_uint_eq (pool_device_csum_errors (p, d), 0);
  volume_close (v);
  pool_close (p);
}

/* Open the pool again: volume v reads back as REF[0..LEN) (through
 * BUF), with no checksum error. */
static void
reopen_check (struct config *c, const char *ref, char *buf, size_t len)
{
  struct pool *p = pool_open (c, POOL_WRITE);

  ck_assert_msg (p != NULL, "%s", strata_last_error ());
  check_and_close (p, volume_open (p, "v"), ref, buf, len);
}

/* The arrays of clean columns go once they pass checksum_memory, and
 * come back from the checksum slots when they are needed: a block
 * damaged behind the pool's back after its array went is still caught
 * and healed, and data written after that reads back. */
START_TEST (test_csum_memory)
{
  char *dir = test_tmpdir ();
  struct config *c = make_cm_config (dir);
  size_t len = (size_t) CM_COLS * MIB;
  char *pat = malloc (len), *buf = malloc (len), *raw = malloc (4096);
  struct pool *p;
  struct volume *v;
  struct meta_chunk *ch;
  struct meta_extent e;
  uint64_t off;
  uint64_t errs = 0;

  fill (pat, len, 21);
  p = cm_create (c, pat, len, &v);
  ck_assert_uint_eq (csum_budget (p), 8);
  ck_assert_uint_eq (csum_resident (p), CM_COLS);
  /* Dirty columns keep their arrays. */
  ck_assert_uint_eq (csum_shrink (p, true), 0);
  ck_assert_uint_eq (csum_resident (p), CM_COLS);
  /* Clean ones go, down to 7/8 of the budget, in the order of the walk
   * (every array was held since the last sweep: the second sweep). */
  ck_assert_int_eq (resync_clean (pool_resync (p), true), CM_COLS);
  ck_assert_uint_eq (csum_shrink (p, false), CM_COLS - 7);
  ck_assert_uint_eq (csum_resident (p), 7);
  ck_assert_ptr_null (atomic_load (&meta_chunk_get (volume_meta (v), 0)
                                   ->col[0].csum));
  /* Within the budget it does nothing. */
  ck_assert_uint_eq (csum_shrink (p, false), 0);

  /* Damage one byte of replica 0 of chunk 0, whose array went. */
  ch = meta_chunk_get (volume_meta (v), 0);
  e = ch->ext[0];
  off = pool_extent_offset (p, e, 3 * 4096 + 5);
  file_rw (dir, e.dev, raw, 1, off, false);
  raw[0] ^= 0x10;
  file_rw (dir, e.dev, raw, 1, off, true);
  for (int k = 0; k < 2; k++) {	/* whichever replica a read starts from */
    ck_assert_int_eq (volume_pread (v, buf, len, 0), 0);
    ck_assert_mem_eq (buf, pat, len);
  }
  for (uint32_t d = 0; d < 3; d++)
    errs += pool_device_csum_errors (p, d);
  ck_assert_uint_eq (errs, 1);
  ck_assert_uint_eq (pool_device_csum_errors (p, e.dev), 1);
  file_rw (dir, e.dev, raw, 1, off, false);
  ck_assert_int_eq (raw[0], pat[3 * 4096 + 5]);	/* healed */

  /* New data in every column, cleaned, every array let go: it reads
   * back through arrays loaded from the slots the cleaner wrote. */
  fill (pat, len, 22);
  ck_assert_int_eq (volume_pwrite (v, pat, len, 0, false), 0);
  ck_assert_int_eq (resync_clean (pool_resync (p), true), CM_COLS);
  ck_assert_uint_eq (csum_shrink (p, true), CM_COLS);
  ck_assert_uint_eq (csum_resident (p), 0);
  ck_assert_int_eq (volume_pread (v, buf, len, 0), 0);
  ck_assert_mem_eq (buf, pat, len);
  volume_close (v);
  pool_close (p);
  reopen_check (c, pat, buf, len);	/* and after a reopen */

  free (pat);
  free (buf);
  free (raw);
  config_free (c);
  test_rmdir (dir);
}
END_TEST

struct cm_worker {
  struct volume *v;
  char *ref;			/* the whole volume */
  uint64_t first, len;		/* this worker's range of it */
  unsigned seed;
  int ops;
  int bad;			/* reads that did not match, or failed */
  char msg[256];
  _Atomic bool done;
};

static void *
cm_work (void *opaque)
{
  struct cm_worker *w = opaque;
  char *buf = malloc (256 * 1024);

  for (int i = 0; i < w->ops && buf && !w->bad; i++) {
    uint32_t n = 1 + rand_r (&w->seed) % (128 * 1024);
    uint64_t o = w->first + rand_r (&w->seed) % (w->len - n);
    uint32_t rn = 1 + rand_r (&w->seed) % (256 * 1024);
    uint64_t ro = w->first + rand_r (&w->seed) % (w->len - rn);

    fill (buf, n, rand_r (&w->seed));
    if (volume_pwrite (w->v, buf, n, o, false) == -1) {
      snprintf (w->msg, sizeof w->msg, "write: %s", strata_last_error ());
      w->bad++;
      break;
    }
    memcpy (w->ref + o, buf, n);
    if (volume_pread (w->v, buf, rn, ro) == -1) {
      snprintf (w->msg, sizeof w->msg, "read: %s", strata_last_error ());
      w->bad++;
    }
    else if (memcmp (buf, w->ref + ro, rn) != 0) {
      snprintf (w->msg, sizeof w->msg, "read of %u bytes at %llu differs",
                rn, (unsigned long long) ro);
      w->bad++;
    }
  }
  free (buf);
  device_thread_exit ();
  atomic_store (&w->done, true);
  return NULL;
}

/* Reads and writes race the cleaner and csum_shrink() letting every
 * array go that it can, over and over: every read matches what was
 * written, no block is ever taken for a damaged one, and all of it
 * reads back after a reopen. */
START_TEST (test_csum_memory_race)
{
  char *dir = test_tmpdir ();
  struct config *c = make_cm_config (dir);
  size_t len = (size_t) CM_COLS * MIB;
  char *ref = malloc (len), *buf = malloc (len);
  struct cm_worker w[2];
  pthread_t t[2];
  struct pool *p;
  struct volume *v;
  size_t gone = 0;
  int passes = 0;

  fill (ref, len, 31);
  p = cm_create (c, ref, len, &v);
  for (int i = 0; i < 2; i++) {
    w[i] = (struct cm_worker) { v, ref, i * len / 2, len / 2, 40 + i, 1500,
                                0, "", false };
    ck_assert_int_eq (pthread_create (&t[i], NULL, cm_work, &w[i]), 0);
  }
  /* Cleaner passes (of all columns, or of those not written since the
   * last pass) and shrinks (of every array that can go, or down to the
   * budget) in turn, until both workers are done. */
  while (!atomic_load (&w[0].done) || !atomic_load (&w[1].done)) {
    ck_assert_int_ge (resync_clean (pool_resync (p), passes % 2), 0);
    gone += csum_shrink (p, passes % 3 != 0);
    passes++;
    usleep (100);
  }
  for (int i = 0; i < 2; i++)
    ck_assert_int_eq (pthread_join (t[i], NULL), 0);
  for (int i = 0; i < 2; i++)
    ck_assert_msg (w[i].bad == 0, "worker %d: %s", i, w[i].msg);
  /* The race was run: arrays went while the workers were busy. */
  ck_assert_uint_gt (gone, 0);
  check_and_close (p, v, ref, buf, len);
  reopen_check (c, ref, buf, len);

  free (ref);
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
  tcase_add_test (tc, test_rejoin);
  tcase_add_test (tc, test_rebuild_report);
  tcase_add_test (tc, test_csum_memory);
  tcase_add_test (tc, test_csum_memory_race);
  suite_add_tcase (s, tc);
  return s;
}
