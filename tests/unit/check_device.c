/* Check suite for lib/device.c and lib/device-nbd.c: local files in each
 * I/O mode, remote members served by a real nbdkit (memory plugin, with
 * the delay filter for timeouts), and one batch that mixes both. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "device.h"
#include "util.h"
#include "error.h"
#include "suites.h"

#define SZ (16 << 20)

static void
fill (unsigned char *b, size_t n, unsigned seed)
{
  for (size_t i = 0; i < n; i++)
    b[i] = (unsigned char) (i * 31 + seed * 7 + (i >> 12));
}

/* Write, read back, zero, flush and refuse bad requests on DEV. */
static void
exercise (struct device *dev, bool aligned_only)
{
  unsigned char *w = device_alloc_buf (1 << 20), *r = device_alloc_buf (1 << 20);
  struct device_stats st;

  fill (w, 1 << 20, 1);
  ck_assert_msg (device_pwrite (dev, w, 1 << 20, 4 << 20, false) == 0, "%s",
                 strata_last_error ());
  ck_assert_int_eq (device_flush (dev), 0);
  memset (r, 0xee, 1 << 20);
  ck_assert_int_eq (device_pread (dev, r, 1 << 20, 4 << 20), 0);
  ck_assert_int_eq (memcmp (w, r, 1 << 20), 0);

  /* FUA write, then a read of a part of it from an unaligned buffer
   * where the device allows one. */
  fill (w, 8192, 2);
  ck_assert_int_eq (device_pwrite (dev, w, 8192, 8192, true), 0);
  if (!aligned_only) {
    ck_assert_int_eq (device_pread (dev, r + 1, 100, 8192 + 7), 0);
    ck_assert_int_eq (memcmp (w + 7, r + 1, 100), 0);
  }
  else
    ck_assert_int_eq (device_pread (dev, r + 1, 4096, 8192), -1);

  /* Zero a range: it reads back as zeros, its neighbours are intact. */
  ck_assert_int_eq (device_zero (dev, 1 << 19, 4 << 20), 0);
  ck_assert_int_eq (device_pread (dev, r, 1 << 20, 4 << 20), 0);
  for (size_t i = 0; i < (1 << 19); i++)
    ck_assert_msg (r[i] == 0, "byte %zu not zeroed", i);
  fill (w, 1 << 20, 1);
  ck_assert_int_eq (memcmp (w + (1 << 19), r + (1 << 19), 1 << 19), 0);

  /* Out of range: refused, nothing written. */
  errno = 0;
  ck_assert_int_eq (device_pwrite (dev, w, 4096, device_size (dev), false), -1);
  ck_assert_int_eq (errno, EINVAL);

  device_stats (dev, &st);
  ck_assert_uint_ge (st.requests, 6);
  ck_assert_uint_eq (st.errors, 0);	/* refusals are not device errors */
  free (w);
  free (r);
}

/* What a pool flush must cover (device_unflushed): a completed write or
 * discard until a flush sent after it succeeds, and a FUA write never.
 * A flush sent before a write, even in the same batch, does not cover
 * it: the next flush must. */
static void
check_unflushed (struct device *dev)
{
  unsigned char *b = device_alloc_buf (4096);
  struct dev_req rq[2];

  fill (b, 4096, 9);
  ck_assert_int_eq (device_flush (dev), 0);
  ck_assert (!device_unflushed (dev));
  ck_assert_int_eq (device_pwrite (dev, b, 4096, 8192, false), 0);
  ck_assert (device_unflushed (dev));
  ck_assert_int_eq (device_flush (dev), 0);
  ck_assert (!device_unflushed (dev));
  ck_assert_int_eq (device_pwrite (dev, b, 4096, 8192, true), 0);
  ck_assert (!device_unflushed (dev));
  ck_assert_int_eq (device_zero (dev, 4096, 8192), 0);
  ck_assert (device_unflushed (dev));
  ck_assert_int_eq (device_flush (dev), 0);
  ck_assert (!device_unflushed (dev));

  rq[0] = (struct dev_req) { .dev = dev, .op = DEV_FLUSH };
  rq[1] = (struct dev_req) { .dev = dev, .op = DEV_WRITE, .buf = b,
                             .len = 4096, .off = 8192 };
  ck_assert_int_eq (device_submit (rq, 2), 0);
  ck_assert (device_unflushed (dev));
  ck_assert_int_eq (device_flush (dev), 0);
  ck_assert (!device_unflushed (dev));
  free (b);
}

START_TEST (test_local_modes)
{
  static const unsigned modes[] = { 0, DEVICE_DIRECT_READS, DEVICE_BUFFERED };
  char *dir = test_tmpdir (), path[300];

  for (size_t m = 0; m < 3; m++) {
    struct device *dev;
    snprintf (path, sizeof path, "%s/d%zu.img", dir, m);
    dev = device_open_local (path, DEVICE_CREATE | modes[m], SZ);
    ck_assert_msg (dev != NULL, "%s", strata_last_error ());
    ck_assert (!device_is_remote (dev));
    ck_assert_uint_eq (device_size (dev), SZ);
    /* Only O_DIRECT reads need aligned buffers (tmpfs has no O_DIRECT:
     * then every mode is buffered). */
    exercise (dev, device_mem_align (dev, DEV_READ) > 1);
    check_unflushed (dev);
    device_close (dev);
  }
  test_rmdir (dir);
}
END_TEST

/* On a buffered device, writes without FUA are made by the submitting
 * thread (write_inline) and the rest go through the ring: one batch of
 * both kinds lands every byte where it belongs, and a write that fails
 * fails its request alone, counted as a device error, with a message
 * that names the device and the request. */
START_TEST (test_buffered_batch)
{
  char *dir = test_tmpdir (), path[300];
  struct device *dev;
  struct device_stats st0, st;
  struct dev_req rq[4];
  unsigned char *a = malloc (5001), *b = device_alloc_buf (8192);
  unsigned char *c = malloc (2 << 20), *d = malloc (4096), *x = malloc (2 << 20);
  unsigned char *bad;
  int fd;

  snprintf (path, sizeof path, "%s/b.img", dir);
  dev = device_open_local (path, DEVICE_CREATE | DEVICE_BUFFERED, SZ);
  ck_assert_msg (dev != NULL, "%s", strata_last_error ());
  ck_assert_uint_eq (device_mem_align (dev, DEV_WRITE), 1);
  fill (d, 4096, 9);
  ck_assert_int_eq (device_pwrite (dev, d, 4096, 8 << 20, false), 0);
  device_stats (dev, &st0);

  fill (a, 5001, 5);
  fill (b, 8192, 6);
  fill (c, 2 << 20, 7);
  memset (d, 0, 4096);
  rq[0] = (struct dev_req) { .dev = dev, .op = DEV_WRITE, .buf = a + 1,
                             .len = 5000, .off = 1000 };
  rq[1] = (struct dev_req) { .dev = dev, .op = DEV_WRITE, .buf = b,
                             .len = 8192, .off = 1 << 20, .fua = true };
  rq[2] = (struct dev_req) { .dev = dev, .op = DEV_WRITE, .buf = c,
                             .len = 2 << 20, .off = 4 << 20 };
  rq[3] = (struct dev_req) { .dev = dev, .op = DEV_READ, .buf = d,
                             .len = 4096, .off = 8 << 20 };
  ck_assert_msg (device_submit (rq, 4) == 0, "%s", strata_last_error ());
  for (int i = 0; i < 4; i++)
    ck_assert_int_eq (rq[i].res, 0);
  fill (x, 4096, 9);
  ck_assert_int_eq (memcmp (d, x, 4096), 0);
  device_stats (dev, &st);
  ck_assert_uint_eq (st.requests, st0.requests + 4);
  ck_assert_uint_eq (st.errors, 0);

  /* What the file holds, read past strata. */
  fd = open (path, O_RDONLY);
  ck_assert_int_ge (fd, 0);
  ck_assert_int_eq (pread (fd, x, 5000, 1000), 5000);
  ck_assert_int_eq (memcmp (x, a + 1, 5000), 0);
  ck_assert_int_eq (pread (fd, x, 8192, 1 << 20), 8192);
  ck_assert_int_eq (memcmp (x, b, 8192), 0);
  ck_assert_int_eq (pread (fd, x, 2 << 20, 4 << 20), 2 << 20);
  ck_assert_int_eq (memcmp (x, c, 2 << 20), 0);

  /* A buffer the kernel cannot read: that write fails with EFAULT, the
   * other one of its batch is made. */
  bad = mmap (NULL, 4096, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  ck_assert (bad != MAP_FAILED);
  fill (d, 4096, 10);
  rq[0] = (struct dev_req) { .dev = dev, .op = DEV_WRITE, .buf = bad,
                             .len = 4096, .off = 12 << 20 };
  rq[1] = (struct dev_req) { .dev = dev, .op = DEV_WRITE, .buf = d,
                             .len = 4096, .off = 13 << 20 };
  ck_assert_int_eq (device_submit (rq, 2), -1);
  ck_assert_int_eq (errno, EFAULT);
  ck_assert_int_eq (rq[0].res, -EFAULT);
  ck_assert_int_eq (rq[1].res, 0);
  ck_assert_msg (strstr (strata_last_error (), "b.img: write of 4096 bytes at 12582912") != NULL,
                 "%s", strata_last_error ());
  ck_assert_int_eq (pread (fd, x, 4096, 13 << 20), 4096);
  ck_assert_int_eq (memcmp (x, d, 4096), 0);
  device_stats (dev, &st);
  ck_assert_uint_eq (st.errors, 1);

  munmap (bad, 4096);
  close (fd);
  device_close (dev);
  free (a);
  free (b);
  free (c);
  free (d);
  free (x);
  test_rmdir (dir);
}
END_TEST

START_TEST (test_remote)
{
  char *dir = test_tmpdir (), *uri = test_nbdkit_uri (dir), path[300];
  pid_t pid = test_nbdkit_start (dir, NULL, NULL);
  struct device *dev = device_open_nbd (uri, 0), *loc;
  struct dev_req rq[2];
  unsigned char *a = device_alloc_buf (65536), *b = device_alloc_buf (65536);

  ck_assert_msg (dev != NULL, "%s", strata_last_error ());
  ck_assert (device_is_remote (dev));
  ck_assert_uint_eq (device_size (dev), SZ);
  ck_assert (device_connected (dev));
  ck_assert (!device_lost_connection (dev));
  ck_assert_int_eq (device_reconnect (dev), 0);
  exercise (dev, false);
  check_unflushed (dev);

  /* One batch with a local and a remote request. */
  snprintf (path, sizeof path, "%s/local.img", dir);
  loc = device_open_local (path, DEVICE_CREATE, SZ);
  ck_assert_ptr_nonnull (loc);
  ck_assert (!device_lost_connection (loc));
  fill (a, 65536, 3);
  fill (b, 65536, 4);
  rq[0] = (struct dev_req) { .dev = dev, .op = DEV_WRITE, .buf = a,
                             .len = 65536, .off = 1 << 20, .fua = true };
  rq[1] = (struct dev_req) { .dev = loc, .op = DEV_WRITE, .buf = b,
                             .len = 65536, .off = 1 << 20, .fua = true };
  ck_assert_int_eq (device_submit (rq, 2), 0);
  memset (a, 0, 65536);
  memset (b, 0, 65536);
  rq[0].op = rq[1].op = DEV_READ;
  ck_assert_int_eq (device_submit (rq, 2), 0);
  ck_assert_int_eq (rq[0].res, 0);
  ck_assert_int_eq (rq[1].res, 0);
  {
    unsigned char *x = malloc (65536);
    fill (x, 65536, 3);
    ck_assert_int_eq (memcmp (a, x, 65536), 0);
    fill (x, 65536, 4);
    ck_assert_int_eq (memcmp (b, x, 65536), 0);
    free (x);
  }
  device_close (loc);

  /* The server goes away: requests fail at once, with an error, which
   * the pool puts down to the lost connection. */
  ck_assert (!device_lost_connection (dev));
  test_nbdkit_stop (pid);
  ck_assert_int_eq (device_pread (dev, a, 4096, 0), -1);
  ck_assert (device_lost_connection (dev));
  /* It comes back while the pollers back off: device_reconnect() has a
   * connection up, and requests work again. */
  usleep (1500 * 1000);
  ck_assert (!device_connected (dev));
  pid = test_nbdkit_start (dir, NULL, NULL);
  ck_assert_msg (device_reconnect (dev) == 0, "%s", strata_last_error ());
  ck_assert (device_connected (dev));
  ck_assert_int_eq (device_pwrite (dev, b, 4096, 0, true), 0);
  memset (a, 0, 4096);
  ck_assert_int_eq (device_pread (dev, a, 4096, 0), 0);
  ck_assert_int_eq (memcmp (a, b, 4096), 0);
  test_nbdkit_stop (pid);
  device_close (dev);

  /* Nothing listening: a clear error naming the URI. */
  ck_assert_ptr_null (device_open_nbd (uri, 0));
  ck_assert_ptr_nonnull (strstr (strata_last_error (), uri));
  free (a);
  free (b);
  free (uri);
  test_rmdir (dir);
}
END_TEST

START_TEST (test_remote_timeout)
{
  static const char *const filter[] = { "--filter=delay", NULL };
  static const char *const param[] = { "delay-read=3", NULL };
  char *dir = test_tmpdir (), *uri = test_nbdkit_uri (dir);
  pid_t pid = test_nbdkit_start (dir, filter, param);
  unsigned char *a = device_alloc_buf (4096);
  struct device *dev;
  struct device_stats st;

  device_set_timeout (500);
  dev = device_open_nbd (uri, 0);
  ck_assert_msg (dev != NULL, "%s", strata_last_error ());
  ck_assert (!device_lost_connection (dev));
  errno = 0;
  ck_assert_int_eq (device_pread (dev, a, 4096, 0), -1);
  ck_assert_int_eq (errno, ETIMEDOUT);
  /* Its connection was shut: the failure is put down to it. */
  ck_assert (device_lost_connection (dev));
  device_stats (dev, &st);
  ck_assert_uint_ge (st.timeouts, 1);
  /* Writes are not delayed: the connection comes back and they work. */
  for (int i = 0; i < 50 && !device_connected (dev); i++)
    usleep (100000);
  ck_assert (device_connected (dev));
  ck_assert_int_eq (device_pwrite (dev, a, 4096, 0, true), 0);
  device_close (dev);
  device_set_timeout (30000);
  test_nbdkit_stop (pid);
  free (a);
  free (uri);
  test_rmdir (dir);
}
END_TEST

/* Threads of their own, each with one request in flight at a time in
 * its own quarter of a member that allows only one connection: 1 MiB
 * writes (whose payloads fill the socket, so that the handle stays in
 * libnbd's processing states while the poller sends them) and reads
 * that check them. */
struct one_conn_user {
  struct device *dev;
  unsigned id;
  int failed;
  char why[256];
};

static void *
one_conn_use (void *opaque)
{
  struct one_conn_user *t = opaque;
  size_t n = 1 << 20;
  uint64_t base = (uint64_t) t->id * (SZ / 4);
  unsigned char *w = device_alloc_buf (n), *r = device_alloc_buf (n);

  for (unsigned i = 0; i < 200 && !t->failed; i++) {
    uint64_t off = base + (i % 4) * n;
    fill (w, n, t->id * 1000 + i);
    if (device_pwrite (t->dev, w, n, off, false) == -1
        || device_pread (t->dev, r, n, off) == -1) {
      t->failed = 1;
      snprintf (t->why, sizeof t->why, "%s", strata_last_error ());
    }
    else if (memcmp (w, r, n) != 0) {
      t->failed = 1;
      snprintf (t->why, sizeof t->why, "offset %" PRIu64 " read back wrong",
                off);
    }
  }
  device_thread_exit ();
  free (w);
  free (r);
  return NULL;
}

/* Requests from several threads on one healthy connection never fail
 * and read back what was written.  They once failed, rarely, with
 * ENOTCONN: the submitter asked libnbd "ready?" then "processing?", and
 * the poller could move the handle from the one to the other in
 * between.  That window is a few instructions wide, so this test seldom
 * caught it; test-remote-one-conn.sh did, once. */
START_TEST (test_remote_one_conn)
{
  static const char *const filter[] = { "--filter=multi-conn", NULL };
  static const char *const param[] = { "multi-conn-mode=disable", NULL };
  char *dir = test_tmpdir (), *uri = test_nbdkit_uri (dir);
  pid_t pid = test_nbdkit_start (dir, filter, param);
  struct device *dev = device_open_nbd (uri, 0);
  struct one_conn_user t[4];
  pthread_t th[4];

  ck_assert_msg (dev != NULL, "%s", strata_last_error ());
  for (unsigned i = 0; i < 4; i++) {
    t[i] = (struct one_conn_user) { .dev = dev, .id = i };
    ck_assert_int_eq (pthread_create (&th[i], NULL, one_conn_use, &t[i]), 0);
  }
  for (unsigned i = 0; i < 4; i++)
    pthread_join (th[i], NULL);
  for (unsigned i = 0; i < 4; i++)
    ck_assert_msg (!t[i].failed, "thread %u: %s", i, t[i].why);
  device_close (dev);
  test_nbdkit_stop (pid);
  free (uri);
  test_rmdir (dir);
}
END_TEST

/* A file created for a device is sparse, or with DEVICE_PREALLOC has all
 * its space allocated (this machine's /var/tmp can), and is the size
 * asked either way. */
START_TEST (test_create_prealloc)
{
  char *dir = test_tmpdir (), path[300];
  struct device *dev;
  struct stat st;

  for (int pre = 0; pre <= 1; pre++) {
    snprintf (path, sizeof path, "%s/c%d.img", dir, pre);
    dev = device_open_local (path, DEVICE_CREATE
                             | (pre ? DEVICE_PREALLOC : 0), SZ);
    ck_assert_msg (dev != NULL, "%s", strata_last_error ());
    ck_assert_uint_eq (device_size (dev), SZ);
    ck_assert_int_eq (stat (path, &st), 0);
    ck_assert_int_eq (st.st_size, SZ);
    if (pre)
      ck_assert_msg ((uint64_t) st.st_blocks * 512 >= SZ, "%s: %jd bytes "
                     "allocated of %d", path, (intmax_t) st.st_blocks * 512,
                     SZ);
    else
      ck_assert_msg ((uint64_t) st.st_blocks * 512 < SZ / 16, "%s: %jd bytes "
                     "allocated, not sparse", path,
                     (intmax_t) st.st_blocks * 512);
    device_close (dev);
    unlink (path);
  }
  test_rmdir (dir);
}
END_TEST

/* device_reserve() gives a sparse file's range its blocks, keeping
 * the data already there, and what it added reads as zeros. */
START_TEST (test_reserve)
{
  char *dir = test_tmpdir (), path[300];
  char *buf = device_alloc_buf (2 * STRATA_BLOCK);
  struct device *dev;
  struct stat st;

  snprintf (path, sizeof path, "%s/r.img", dir);
  dev = device_open_local (path, DEVICE_CREATE, SZ);
  ck_assert_msg (dev != NULL, "%s", strata_last_error ());
  memset (buf, 0x6b, STRATA_BLOCK);
  ck_assert_int_eq (device_pwrite (dev, buf, STRATA_BLOCK, SZ / 4, true), 0);
  ck_assert_int_eq (device_reserve (dev, SZ / 8, SZ / 2), 0);
  ck_assert_int_eq (stat (path, &st), 0);
  ck_assert_int_eq (st.st_size, SZ);
  ck_assert_msg ((uint64_t) st.st_blocks * 512 >= SZ / 2
                 && (uint64_t) st.st_blocks * 512 < SZ, "%jd bytes "
                 "allocated", (intmax_t) st.st_blocks * 512);
  ck_assert_int_eq (device_pread (dev, buf, 2 * STRATA_BLOCK, SZ / 4), 0);
  for (size_t i = 0; i < 2 * STRATA_BLOCK; i++)
    ck_assert_int_eq ((unsigned char) buf[i], i < STRATA_BLOCK ? 0x6b : 0);
  /* A zero that keeps the blocks (part of a chunk) reads as zeros and
   * leaves them allocated; one that does not (a freed extent) gives
   * them back. */
  {
    struct dev_req z = { .dev = dev, .op = DEV_ZERO, .keep = true,
                         .off = SZ / 4, .len = 1 << 20 };
    blkcnt_t before;
    ck_assert_int_eq (stat (path, &st), 0);
    before = st.st_blocks;
    ck_assert_int_eq (device_submit (&z, 1), 0);
    ck_assert_int_eq (stat (path, &st), 0);
    ck_assert_int_eq (st.st_blocks, before);
    ck_assert_int_eq (device_pread (dev, buf, STRATA_BLOCK, SZ / 4), 0);
    for (size_t i = 0; i < STRATA_BLOCK; i++)
      ck_assert_int_eq (buf[i], 0);
    z.keep = false;
    ck_assert_int_eq (device_submit (&z, 1), 0);
    ck_assert_int_eq (stat (path, &st), 0);
    ck_assert_int_eq (st.st_blocks, before - (1 << 20) / 512);
  }
  /* Past the end of the file: refused, the file keeps its size. */
  ck_assert_int_eq (device_reserve (dev, SZ - STRATA_BLOCK, 2 * STRATA_BLOCK),
                    -1);
  ck_assert_int_eq (errno, EINVAL);
  device_close (dev);
  ck_assert_int_eq (stat (path, &st), 0);
  ck_assert_int_eq (st.st_size, SZ);
  unlink (path);
  free (buf);
  test_rmdir (dir);
}
END_TEST

/* A ring that fails fails every request of the batch that did not
 * finish, a flush as much as a write: none is reported done, each is
 * counted as an error of its device, and the thread's next batch goes
 * through a new ring.  The ring fails here as it would if strata forked
 * without letting go of it: the child inherits the parent thread's
 * ring, which (single issuer) takes requests from its creator alone. */
START_TEST (test_ring_failure)
{
  char *dir = test_tmpdir (), path[300];
  unsigned char *b = device_alloc_buf (8192);
  struct device *dev;
  int status;
  pid_t pid;

  snprintf (path, sizeof path, "%s/r.img", dir);
  dev = device_open_local (path, DEVICE_CREATE, SZ);
  ck_assert_msg (dev != NULL, "%s", strata_last_error ());
  fill (b, 8192, 3);
  ck_assert_int_eq (device_pwrite (dev, b, 4096, 0, false), 0); /* the ring */
  pid = fork ();
  ck_assert_int_ge (pid, 0);
  if (pid == 0) {
    struct dev_req rq[3] = {
      { .dev = dev, .op = DEV_WRITE, .buf = b, .len = 4096, .off = 0 },
      { .dev = dev, .op = DEV_READ, .buf = b + 4096, .len = 4096, .off = 0 },
      { .dev = dev, .op = DEV_FLUSH },
    };
    struct device_stats st0, st;
    int r;
    device_stats (dev, &st0);
    r = device_submit (rq, 3);
    if (r == 0)
      _exit (1);		/* the ring took them */
    for (size_t i = 0; i < 3; i++)
      if (rq[i].res >= 0)
        _exit (10 + i);		/* reported done */
    device_stats (dev, &st);
    if (st.errors != st0.errors + 3)
      _exit (3);		/* not counted as the device's errors */
    /* The next batch gets a ring of its own. */
    if (device_pread (dev, b + 4096, 4096, 0) != 0
        || memcmp (b, b + 4096, 4096) != 0)
      _exit (2);
    _exit (0);
  }
  ck_assert_int_eq (waitpid (pid, &status, 0), pid);
  ck_assert (WIFEXITED (status));
  ck_assert_msg (WEXITSTATUS (status) != 1, "the child could use its "
                 "parent's ring: this kernel has no single-issuer rings");
  ck_assert_msg (WEXITSTATUS (status) != 2, "the batch after a ring "
                 "failure did not read back what was written");
  ck_assert_msg (WEXITSTATUS (status) != 3, "the failed requests were not "
                 "counted as the device's errors");
  ck_assert_msg (WEXITSTATUS (status) == 0, "request %d of the batch was "
                 "reported done on a failed ring", WEXITSTATUS (status) - 10);
  /* The parent's ring is unharmed. */
  ck_assert_int_eq (device_pread (dev, b, 4096, 0), 0);
  device_close (dev);
  free (b);
  test_rmdir (dir);
}
END_TEST

/* The kernel's THP setting as device_thp_problem() reads it: the mode
 * in brackets is the one in force. */
START_TEST (test_thp_setting)
{
  char path[] = "/tmp/strata-thp.XXXXXX";
  static const struct { const char *text; bool problem; } cases[] = {
    { "always [madvise] never\n", false },
    { "[always] madvise never\n", false },
    { "always madvise [never]\n", true },
    { "[never]", true },
  };
  const char *why;
  int fd = mkstemp (path);

  ck_assert_int_ge (fd, 0);
  close (fd);
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    FILE *f = fopen (path, "w");
    ck_assert_ptr_nonnull (f);
    fputs (cases[i].text, f);
    fclose (f);
    why = device_thp_problem (path);
    ck_assert_msg ((why != NULL) == cases[i].problem, "\"%s\": %s",
                   cases[i].text, why ? why : "no problem");
    if (why)
      ck_assert_ptr_nonnull (strstr (why, "is never"));
  }
  unlink (path);
  /* No such setting at all: a kernel built without THP. */
  why = device_thp_problem (path);
  ck_assert_ptr_nonnull (why);
  ck_assert_ptr_nonnull (strstr (why, "no transparent huge pages"));
}
END_TEST

Suite *
device_suite (void)
{
  Suite *s = suite_create ("device");
  TCase *tc = tcase_create ("io");

  tcase_set_timeout (tc, 60);
  tcase_add_test (tc, test_local_modes);
  tcase_add_test (tc, test_buffered_batch);
  tcase_add_test (tc, test_thp_setting);
  tcase_add_test (tc, test_ring_failure);
  tcase_add_test (tc, test_create_prealloc);
  tcase_add_test (tc, test_reserve);
  if (access ("/usr/sbin/nbdkit", X_OK) == 0
      || access ("/usr/bin/nbdkit", X_OK) == 0) {
    tcase_add_test (tc, test_remote);
    tcase_add_test (tc, test_remote_timeout);
    tcase_add_test (tc, test_remote_one_conn);
  }
  suite_add_tcase (s, tc);
  return s;
}
