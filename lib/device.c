/* strata: local devices through io_uring (see device.h).
 *
 * Design notes
 * ------------
 * Every thread that submits I/O gets its own io_uring, created on first
 * use and torn down by a pthread key destructor, so the data path takes
 * no lock.  device_submit() queues as many requests as fit in the ring,
 * submits them in one system call, and reaps completions; a full ring
 * leaves the rest queued until slots free up.  liburing returns -errno
 * and the kernel may complete short: short transfers are resubmitted for
 * the remainder, -EAGAIN and -EINTR are resubmitted as they are.
 *
 * Durability: FUA writes carry RWF_DSYNC, flush is fdatasync through the
 * ring; with O_DIRECT both reach the disk's write cache rules exactly.
 * DEV_ZERO punches a hole (files and block devices both accept it since
 * Linux 4.9), falling back to FALLOC_FL_ZERO_RANGE and then to writing
 * zeros, so that afterwards the range always reads as zeros.
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/falloc.h>
#include <linux/fs.h>
#include <liburing.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "device.h"
#include "error.h"
#include "util.h"

#define RING_ENTRIES 256

struct device {
  int fd;
  char *path;
  uint64_t size;
  bool direct;
  bool is_blk;
  bool no_punch;		/* PUNCH_HOLE unsupported: use ZERO_RANGE */
  bool no_zero_range;		/* neither: write zeros */
};

static pthread_key_t ring_key;
static pthread_once_t ring_once = PTHREAD_ONCE_INIT;
static __thread struct io_uring *thread_ring;

static void
ring_destroy (void *p)
{
  struct io_uring *r = p;

  if (r) {
    io_uring_queue_exit (r);
    free (r);
  }
}

static void
ring_key_init (void)
{
  pthread_key_create (&ring_key, ring_destroy);
}

static struct io_uring *
get_ring (void)
{
  struct io_uring *r;
  int e;

  if (thread_ring)
    return thread_ring;
  pthread_once (&ring_once, ring_key_init);
  r = calloc (1, sizeof *r);
  if (!r) {
    strata_error (ENOMEM, "out of memory");
    return NULL;
  }
  e = io_uring_queue_init (RING_ENTRIES, r, 0);
  if (e < 0) {
    free (r);
    strata_error (-e, "io_uring_queue_init: %s", strerror (-e));
    return NULL;
  }
  thread_ring = r;
  pthread_setspecific (ring_key, r);
  return r;
}

void
device_thread_exit (void)
{
  if (thread_ring) {
    pthread_setspecific (ring_key, NULL);
    ring_destroy (thread_ring);
    thread_ring = NULL;
  }
}

void *
device_alloc_buf (size_t len)
{
  void *p;

  if (posix_memalign (&p, STRATA_BLOCK, len ? round_up (len, STRATA_BLOCK)
                                            : STRATA_BLOCK) != 0)
    return NULL;
  return p;
}

/* Probe whether O_DIRECT reads work on FD (some filesystems accept the
 * flag at open but fail the I/O). */
static bool
direct_works (int fd)
{
  void *buf = device_alloc_buf (STRATA_BLOCK);
  bool ok;

  if (!buf)
    return false;
  ok = pread (fd, buf, STRATA_BLOCK, 0) >= 0;
  free (buf);
  return ok;
}

struct device *
device_open_local (const char *path, unsigned flags, uint64_t create_size)
{
  struct device *dev;
  struct stat st;
  int fd = -1;

  if (stat (path, &st) == -1) {
    if (errno != ENOENT || !(flags & DEVICE_CREATE) || create_size == 0) {
      strata_error (errno, "%s: %m", path);
      return NULL;
    }
    fd = open (path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd == -1) {
      strata_error (errno, "%s: cannot create: %m", path);
      return NULL;
    }
    if (ftruncate (fd, create_size) == -1) {
      strata_error (errno, "%s: cannot set size: %m", path);
      close (fd);
      unlink (path);
      return NULL;
    }
    close (fd);
    fd = -1;
    if (stat (path, &st) == -1) {
      strata_error (errno, "%s: %m", path);
      return NULL;
    }
  }
  if (!S_ISREG (st.st_mode) && !S_ISBLK (st.st_mode)) {
    strata_error (EINVAL, "%s: not a regular file or block device", path);
    return NULL;
  }

  dev = calloc (1, sizeof *dev);
  if (!dev) {
    strata_error (ENOMEM, "out of memory");
    return NULL;
  }
  dev->is_blk = S_ISBLK (st.st_mode);
  if (!(flags & DEVICE_NO_DIRECT)) {
    fd = open (path, O_RDWR | O_DIRECT | O_CLOEXEC);
    if (fd >= 0 && !direct_works (fd)) {
      close (fd);
      fd = -1;
    }
    dev->direct = fd >= 0;
  }
  if (fd == -1)
    fd = open (path, O_RDWR | O_CLOEXEC);
  if (fd == -1) {
    strata_error (errno, "%s: cannot open: %m", path);
    free (dev);
    return NULL;
  }
  dev->fd = fd;
  if (dev->is_blk) {
    if (ioctl (fd, BLKGETSIZE64, &dev->size) == -1) {
      strata_error (errno, "%s: BLKGETSIZE64: %m", path);
      close (fd);
      free (dev);
      return NULL;
    }
  }
  else
    dev->size = st.st_size;
  dev->path = strdup (path);
  return dev;
}

void
device_close (struct device *dev)
{
  if (!dev)
    return;
  close (dev->fd);
  free (dev->path);
  free (dev);
}

uint64_t
device_size (const struct device *dev)
{
  return dev->size;
}

const char *
device_path (const struct device *dev)
{
  return dev->path;
}

bool
device_is_direct (const struct device *dev)
{
  return dev->direct;
}

int
device_lock (struct device *dev)
{
  if (flock (dev->fd, LOCK_EX | LOCK_NB) == -1)
    return strata_error (errno, "%s: %s", dev->path,
                         errno == EWOULDBLOCK ? "in use by another process"
                                              : strerror (errno));
  return 0;
}

/* Write zeros the slow way, for storage that supports neither hole
 * punching nor zero ranges. */
static int
zero_by_writing (struct device *dev, uint64_t len, uint64_t off)
{
  const size_t chunk = 1 << 20;
  void *z = device_alloc_buf (chunk);

  if (!z)
    return -ENOMEM;
  memset (z, 0, chunk);
  while (len > 0) {
    size_t n = MIN (len, chunk);
    ssize_t w = pwrite (dev->fd, z, n, off);
    if (w == -1) {
      int e = errno;
      if (e == EINTR)
        continue;
      free (z);
      return -e;
    }
    off += w;
    len -= w;
  }
  free (z);
  return 0;
}

static void
prep (struct io_uring_sqe *sqe, struct dev_req *r)
{
  struct device *dev = r->dev;
  uint32_t rest = r->len - r->done;

  switch (r->op) {
    case DEV_READ:
      io_uring_prep_read (sqe, dev->fd, (char *) r->buf + r->done, rest,
                          r->off + r->done);
      break;
    case DEV_WRITE:
      io_uring_prep_write (sqe, dev->fd, (char *) r->buf + r->done, rest,
                           r->off + r->done);
      if (r->fua)
        sqe->rw_flags = RWF_DSYNC;
      break;
    case DEV_FLUSH:
      io_uring_prep_fsync (sqe, dev->fd, IORING_FSYNC_DATASYNC);
      break;
    case DEV_ZERO:
      io_uring_prep_fallocate (sqe, dev->fd,
                               dev->no_punch
                               ? FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE
                               : FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                               r->off, r->len);
      break;
  }
  io_uring_sqe_set_data (sqe, r);
}

/* Handle one completion.  Returns true if R is finished. */
static bool
complete (struct dev_req *r, int res)
{
  if (res == -EAGAIN || res == -EINTR)
    return false;		/* resubmit as is */
  if (res < 0) {
    if (r->op == DEV_ZERO && (res == -EOPNOTSUPP || res == -EINVAL)) {
      struct device *dev = r->dev;
      if (!dev->no_punch) {
        dev->no_punch = true;	/* benign race: both threads learn it */
        return false;
      }
      if (!dev->no_zero_range)
        dev->no_zero_range = true;
      r->res = zero_by_writing (dev, r->len, r->off);
      return true;
    }
    r->res = res;
    return true;
  }
  if (r->op == DEV_READ || r->op == DEV_WRITE) {
    if (res == 0 && r->op == DEV_READ) {
      /* Reading past the end of a file: treat the rest as zeros. */
      memset ((char *) r->buf + r->done, 0, r->len - r->done);
      r->done = r->len;
    }
    else
      r->done += res;
    if (r->done < r->len)
      return false;
  }
  r->res = 0;
  return true;
}

int
device_submit (struct dev_req *reqs, size_t n)
{
  struct io_uring *ring;
  struct dev_req **queue;	/* requests waiting for a ring slot */
  size_t qhead = 0, qlen = 0, inflight = 0, pending = n;
  struct dev_req *stackq[16];
  int first_err = 0;
  size_t first_idx = 0;

  if (n == 0)
    return 0;
  ring = get_ring ();
  if (!ring)
    return -1;
  queue = n <= ARRAY_SIZE (stackq) ? stackq : malloc (n * sizeof *queue);
  if (!queue)
    return strata_error (ENOMEM, "out of memory");

  for (size_t i = 0; i < n; i++) {
    struct dev_req *r = &reqs[i];
    r->res = 0;
    r->done = 0;
    if (r->dev->direct && (r->op == DEV_READ || r->op == DEV_WRITE)
        && (!is_aligned (r->off, STRATA_BLOCK)
            || !is_aligned (r->len, STRATA_BLOCK)
            || !is_aligned ((uintptr_t) r->buf, 512))) {
      r->res = -EINVAL;
      pending--;
      continue;
    }
    if (r->op == DEV_ZERO && r->dev->no_zero_range) {
      r->res = zero_by_writing (r->dev, r->len, r->off);
      pending--;
      continue;
    }
    queue[qlen++] = r;
  }

  while (pending > 0) {
    struct io_uring_cqe *cqe;
    unsigned head, seen = 0;
    int e;

    while (qhead < qlen) {
      struct io_uring_sqe *sqe = io_uring_get_sqe (ring);
      if (!sqe)
        break;
      prep (sqe, queue[qhead++]);
      inflight++;
    }
    e = io_uring_submit_and_wait (ring, 1);
    if (e < 0 && e != -EINTR && e != -EAGAIN && e != -EBUSY) {
      /* The ring itself failed: nothing more can be submitted. */
      for (size_t i = 0; i < n; i++)
        if (reqs[i].res == 0 && reqs[i].done < reqs[i].len)
          reqs[i].res = e;
      break;
    }
    io_uring_for_each_cqe (ring, head, cqe) {
      struct dev_req *r = io_uring_cqe_get_data (cqe);
      seen++;
      inflight--;
      if (complete (r, cqe->res))
        pending--;
      else {
        /* Resubmit the remainder: put it back at the end of the queue.
         * The queue has room because R was taken from it. */
        queue[--qhead] = r;
      }
    }
    io_uring_cq_advance (ring, seen);
  }
  (void) inflight;
  if (queue != stackq)
    free (queue);

  for (size_t i = 0; i < n; i++)
    if (reqs[i].res < 0) {
      first_err = -reqs[i].res;
      first_idx = i;
      break;
    }
  if (first_err) {
    static const char *const names[] = { "read", "write", "flush", "zero" };
    struct dev_req *r = &reqs[first_idx];
    return strata_error (first_err, "%s: %s of %u bytes at %llu: %s",
                         r->dev->path, names[r->op], r->len,
                         (unsigned long long) r->off, strerror (first_err));
  }
  return 0;
}

int
device_pread (struct device *dev, void *buf, uint32_t len, uint64_t off)
{
  struct dev_req r = { .dev = dev, .op = DEV_READ, .buf = buf, .len = len,
                       .off = off };
  return device_submit (&r, 1);
}

int
device_pwrite (struct device *dev, const void *buf, uint32_t len,
               uint64_t off, bool fua)
{
  struct dev_req r = { .dev = dev, .op = DEV_WRITE, .buf = (void *) buf,
                       .len = len, .off = off, .fua = fua };
  return device_submit (&r, 1);
}

int
device_flush (struct device *dev)
{
  struct dev_req r = { .dev = dev, .op = DEV_FLUSH };
  return device_submit (&r, 1);
}

int
device_zero (struct device *dev, uint64_t len, uint64_t off)
{
  while (len > 0) {
    uint32_t n = MIN (len, 1u << 30);
    struct dev_req r = { .dev = dev, .op = DEV_ZERO, .len = n, .off = off };
    if (device_submit (&r, 1) == -1)
      return -1;
    len -= n;
    off += n;
  }
  return 0;
}
