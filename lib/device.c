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
 * the remainder, -EAGAIN and -EINTR are resubmitted as they are.  If the
 * ring itself fails, nothing more goes out: every request not finished
 * fails, completions are still reaped while the kernel gives them (it
 * may yet use those buffers), and when it gives none the thread gets a
 * new ring for its next batch.  A write that only copies into the
 * page cache skips the ring and is made with pwrite() (write_inline).
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
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "device-internal.h"
#include "error.h"
#include "util.h"

#define RING_ENTRIES 256

uint64_t device_timeout_ns = 30ull * 1000000000;

void
device_set_timeout (unsigned ms)
{
  device_timeout_ns = (uint64_t) (ms ? ms : 1) * 1000000;
}

uint64_t
device_now_ns (void)
{
  struct timespec ts;

  clock_gettime (CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1000000000ull + ts.tv_nsec;
}

void
device_account (struct device *dev, int res, uint64_t t0_ns)
{
  atomic_fetch_add_explicit (&dev->nreq, 1, memory_order_relaxed);
  atomic_fetch_add_explicit (&dev->lat_ns, device_now_ns () - t0_ns,
                             memory_order_relaxed);
  if (res < 0 && !device_no_space (res))
    atomic_fetch_add_explicit (&dev->nerr, 1, memory_order_relaxed);
}

bool
device_no_space (int res)
{
  return res == -ENOSPC || res == -EDQUOT;
}

void
device_note_durability (const struct dev_req *r, bool fua_durable)
{
  struct device *dev = r->dev;
  uint64_t f;

  switch (r->op) {
    case DEV_WRITE:
      if (r->fua && fua_durable)
        break;
      /* fallthrough */
    case DEV_ZERO:
      atomic_fetch_add (&dev->wdone, 1);
      break;
    case DEV_FLUSH:
      f = atomic_load (&dev->wflushed);
      while (f < r->covers
             && !atomic_compare_exchange_weak (&dev->wflushed, &f, r->covers))
        ;
      break;
  }
}

bool
device_unflushed (const struct device *dev)
{
  struct device *d = (struct device *) dev;

  return atomic_load (&d->wdone) > atomic_load (&d->wflushed);
}

/* A local request R is finished. */
static void
finished (struct dev_req *r)
{
  device_account (r->dev, r->res, r->t0);
  if (r->res == 0)
    device_note_durability (r, true);	/* RWF_DSYNC makes FUA durable */
}

void
device_stats (const struct device *dev, struct device_stats *st)
{
  struct device *d = (struct device *) dev;

  st->requests = atomic_load_explicit (&d->nreq, memory_order_relaxed);
  st->errors = atomic_load_explicit (&d->nerr, memory_order_relaxed);
  st->timeouts = atomic_load_explicit (&d->ntimeout, memory_order_relaxed);
  st->latency_ns = st->requests
    ? atomic_load_explicit (&d->lat_ns, memory_order_relaxed) / st->requests
    : 0;
  st->connected = device_connected (dev);
}

bool
device_is_remote (const struct device *dev)
{
  return dev->remote;
}

bool
device_fast_zero (const struct device *dev)
{
  return dev->remote && device_nbd_can_fast_zero (dev);
}


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
  /* The ring belongs to this thread alone, so completion work can wait
   * until the thread asks for it instead of interrupting it (fewer
   * wake-ups per request).  Older kernels refuse the flags: try less. */
  e = io_uring_queue_init (RING_ENTRIES, r, IORING_SETUP_SINGLE_ISSUER
                                            | IORING_SETUP_DEFER_TASKRUN);
  if (e == -EINVAL)
    e = io_uring_queue_init (RING_ENTRIES, r, IORING_SETUP_COOP_TASKRUN);
  if (e == -EINVAL)
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

#define THP_ENABLED "/sys/kernel/mm/transparent_hugepage/enabled"

const char *
device_thp_problem (const char *path)
{
  char line[128] = "";
  FILE *f = fopen (path ? path : THP_ENABLED, "r");
  bool never;

  if (!f)
    return "this kernel has no transparent huge pages";
  if (!fgets (line, sizeof line, f))
    line[0] = '\0';
  fclose (f);
  never = strstr (line, "[never]") != NULL;
  return never ? "transparent huge pages are off (" THP_ENABLED
    " is never; madvise or always lets strata use them)" : NULL;
}

/* A buffer of 4 KiB pages gives an O_DIRECT request one segment per
 * page, and a disk takes a limited number per request (254 on virtio
 * disks): a 1 MiB request is split in two there.  Huge pages are
 * physically contiguous.  Only for buffers that are kept or that move a
 * lot of data: a fresh huge page costs a fault that clears 2 MiB, too
 * much for a buffer of one small write. */

void *
device_alloc_huge (size_t len)
{
  static atomic_bool told;
  const char *why;
  void *p;

  len = round_up (len ? len : 1, DEVICE_HUGE_PAGE);
  if (posix_memalign (&p, DEVICE_HUGE_PAGE, len) != 0)
    return NULL;
  (void) madvise (p, len, MADV_HUGEPAGE);
  /* Nothing fails without them, but the operator should know why large
   * requests are slower: say so once. */
  if (!atomic_load_explicit (&told, memory_order_relaxed)
      && !atomic_exchange (&told, true) && (why = device_thp_problem (NULL)))
    fprintf (stderr, "strata: %s: large requests (scrub, rebuild, and "
             "copied reads and writes of 1 MiB or more) may be slower\n",
             why);
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
    /* A file written through in full, over and over (a cache log): its
     * blocks are allocated now, as an O_DIRECT write into a hole must
     * allocate, which io_uring hands to a kernel worker thread. */
    if ((flags & DEVICE_PREALLOC) && fallocate (fd, 0, 0, create_size) == -1
        && errno != EOPNOTSUPP) {
      strata_error (errno, "%s: cannot allocate %" PRIu64 " bytes: %m", path,
                    create_size);
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
  dev->rfd = -1;
  if (!(flags & DEVICE_BUFFERED)) {
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
  if (dev->direct && !(flags & DEVICE_DIRECT_READS)) {
    /* Auto mode: reads go through the page cache.  Direct writes
     * invalidate the cached pages they cover, so reads stay coherent as
     * long as nothing writes through this descriptor. */
    dev->rfd = open (path, O_RDONLY | O_CLOEXEC);
    if (dev->rfd == -1) {
      strata_error (errno, "%s: cannot open: %m", path);
      close (fd);
      free (dev);
      return NULL;
    }
  }
  else {
    dev->rfd = fd;
    dev->direct_read = dev->direct;
  }
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
  if (dev->remote) {
    device_nbd_close (dev);
    free (dev->path);
    free (dev);
    return;
  }
  /* Let go of device_lock()'s lock before closing.  The lock belongs to
   * the open file, and close() alone may not release that: an io_uring
   * worker thread that served a request on it can hold its reference for
   * seconds after the request completed (until the worker's idle exit),
   * and a pool opened again meanwhile would find its own device locked. */
  (void) flock (dev->fd, LOCK_UN);
  if (dev->rfd != dev->fd)
    close (dev->rfd);
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

size_t
device_mem_align (const struct device *dev, enum dev_op op)
{
  if (dev->remote)
    return 1;
  if (op == DEV_READ)
    return dev->direct_read ? 512 : 1;
  return dev->direct ? 512 : 1;
}

int
device_lock (struct device *dev, unsigned wait_ms)
{
  if (dev->remote)
    return 0;			/* see device.h */
  for (unsigned waited = 0;; waited += 10) {
    if (flock (dev->fd, LOCK_EX | LOCK_NB) == 0)
      return 0;
    if ((errno != EWOULDBLOCK && errno != EINTR) || waited >= wait_ms)
      break;
    usleep (10000);
  }
  return strata_error (errno, "%s: %s", dev->path,
                       errno == EWOULDBLOCK ? "in use by another process"
                                            : strerror (errno));
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
      /* With O_DIRECT writes, dev->fd is O_DIRECT. */
      io_uring_prep_read (sqe, r->media && dev->direct ? dev->fd : dev->rfd,
                          (char *) r->buf + r->done, rest, r->off + r->done);
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
      /* A hole gives the blocks back to the filesystem; a zero range
       * keeps them (a block device has none to keep).  Either where the
       * other is not supported. */
      r->zrange = ((r->keep && !dev->is_blk) || dev->no_punch)
                  && !dev->no_zrange;
      io_uring_prep_fallocate (sqe, dev->fd,
                               (r->zrange ? FALLOC_FL_ZERO_RANGE
                                          : FALLOC_FL_PUNCH_HOLE)
                               | FALLOC_FL_KEEP_SIZE, r->off, r->len);
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
      /* Benign race: both threads learn it. */
      if (r->zrange)
        dev->no_zrange = true;
      else
        dev->no_punch = true;
      if (!dev->no_punch || !dev->no_zrange)
        return false;		/* again, the other way */
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

/* A write that only copies into the page cache (a device whose writes
 * are buffered, without FUA) is made right here with pwrite(), as
 * nbdkit-file-plugin(1) makes it.  io_uring cannot make such a write
 * without blocking on ext4, so it hands every one to a worker thread:
 * two context switches per write.  Measured on 2 cores: 4 KiB random
 * writes 1.6-2x faster, 1 MiB sequential writes no slower.  The
 * requests of a batch have no order among them, so making these first,
 * one after another, changes no result. */
static bool
write_inline (struct dev_req *r)
{
  if (r->op != DEV_WRITE || r->fua || r->dev->direct)
    return false;
  while (r->done < r->len) {
    ssize_t w = pwrite (r->dev->fd, (char *) r->buf + r->done,
                        r->len - r->done, r->off + r->done);
    if (w <= 0) {
      if (w == -1 && errno == EINTR)
        continue;
      r->res = w == 0 ? -EIO : -errno;
      return true;
    }
    r->done += w;
  }
  return true;
}

/* FUA for remote members whose server cannot do it: flush each such
 * device once after its writes of the batch completed. */
static void
emulate_fua (struct dev_req *reqs, size_t n, struct dev_waiter *w)
{
  struct dev_req stackfl[16], *fl = stackfl;
  size_t nf = 0;

  /* At most one flush per request, so N slots always suffice. */
  if (n > ARRAY_SIZE (stackfl) && !(fl = calloc (n, sizeof *fl))) {
    for (size_t i = 0; i < n; i++)
      if (reqs[i].dev->remote && reqs[i].op == DEV_WRITE && reqs[i].fua
          && reqs[i].res == 0 && device_nbd_needs_flush_for_fua (reqs[i].dev))
        reqs[i].res = -ENOMEM;
    return;
  }
  for (size_t i = 0; i < n; i++) {
    struct dev_req *r = &reqs[i];
    bool seen = false;
    if (!r->dev->remote || r->op != DEV_WRITE || !r->fua || r->res != 0
        || !device_nbd_needs_flush_for_fua (r->dev))
      continue;
    for (size_t k = 0; k < nf; k++)
      seen |= fl[k].dev == r->dev;
    if (!seen) {
      fl[nf] = (struct dev_req) { .dev = r->dev, .op = DEV_FLUSH };
      device_nbd_start (&fl[nf++], w);
    }
  }
  if (nf > 0) {
    device_nbd_wait (w);
    for (size_t i = 0; i < n; i++)
      for (size_t k = 0; k < nf; k++)
        if (reqs[i].dev == fl[k].dev && reqs[i].op == DEV_WRITE
            && reqs[i].fua && reqs[i].res == 0)
          reqs[i].res = fl[k].res;
  }
  if (fl != stackfl)
    free (fl);
}

int
device_submit (struct dev_req *reqs, size_t n)
{
  struct io_uring *ring = NULL;
  struct dev_req **queue;	/* requests waiting for a ring slot */
  size_t qhead = 0, qlen = 0, inflight = 0, pending = n, nremote = 0;
  int ring_err = 0;		/* set once the ring fails */
  struct dev_req *stackq[16];
  struct dev_waiter *w = NULL;
  int first_err = 0;
  size_t first_idx = 0;

  if (n == 0)
    return 0;
  queue = n <= ARRAY_SIZE (stackq) ? stackq : malloc (n * sizeof *queue);
  if (!queue)
    return strata_error (ENOMEM, "out of memory");

  for (size_t i = 0; i < n; i++) {
    struct dev_req *r = &reqs[i];
    r->res = 0;
    r->done = 0;
    r->t0 = device_now_ns ();
    if ((r->op == DEV_READ || r->op == DEV_WRITE || r->op == DEV_ZERO)
        && (r->off > r->dev->size || r->len > r->dev->size - r->off)) {
      r->res = -EINVAL;
      pending--;
      continue;
    }
    if (r->dev->remote) {
      if (!w)
        w = device_nbd_waiter ();
      device_nbd_start (r, w);	/* goes out now, completes later */
      nremote++;
      pending--;
      continue;
    }
    if ((r->op == DEV_READ || r->op == DEV_WRITE)
        && device_mem_align (r->dev, r->op) > 1
        && (!is_aligned (r->off, STRATA_BLOCK)
            || !is_aligned (r->len, STRATA_BLOCK)
            || !is_aligned ((uintptr_t) r->buf, 512))) {
      r->res = -EINVAL;
      pending--;
      continue;
    }
    /* What a flush covers is what completed before it goes out. */
    if (r->op == DEV_FLUSH)
      r->covers = atomic_load (&r->dev->wdone);
    if (write_inline (r)) {
      finished (r);
      pending--;
      continue;
    }
    if (r->op == DEV_ZERO && r->dev->no_punch && r->dev->no_zrange) {
      r->res = zero_by_writing (r->dev, r->len, r->off);
      finished (r);
      pending--;
      continue;
    }
    r->res = -EINPROGRESS;	/* until complete() or a ring failure */
    queue[qlen++] = r;
  }
  if (qlen > 0 && !(ring = get_ring ())) {
    for (size_t k = 0; k < qlen; k++)
      queue[k]->res = -errno;
    pending = 0;
  }

  while (pending > 0) {
    struct io_uring_cqe *cqe;
    unsigned head, seen = 0;
    int e;

    while (!ring_err && qhead < qlen) {
      struct io_uring_sqe *sqe = io_uring_get_sqe (ring);
      if (!sqe)
        break;
      prep (sqe, queue[qhead++]);
      inflight++;
    }
    e = io_uring_submit_and_wait (ring, 1);
    if (e < 0 && e != -EINTR && e != -EAGAIN && e != -EBUSY) {
      if (ring_err || inflight == 0) {
        /* Not even completions come back: every request not finished
         * fails, and the thread lets go of the ring, so that its next
         * batch gets a new one and never reaps this batch's late
         * completions. */
        for (size_t k = 0; k < n; k++)
          if (!reqs[k].dev->remote && reqs[k].res == -EINPROGRESS) {
            reqs[k].res = e;
            finished (&reqs[k]);	/* counted as the device's error */
          }
        device_thread_exit ();
        break;
      }
      /* The ring failed: nothing more goes out, and what was never
       * handed to the kernel fails now; what it holds is still reaped,
       * since it may yet read or fill those buffers. */
      ring_err = e;
      for (; qhead < qlen; qhead++, pending--) {
        queue[qhead]->res = e;
        finished (queue[qhead]);
      }
    }
    io_uring_for_each_cqe (ring, head, cqe) {
      struct dev_req *r = io_uring_cqe_get_data (cqe);
      seen++;
      inflight--;
      if (!complete (r, cqe->res)) {
        if (!ring_err) {
          /* Resubmit the remainder: it goes out next, from the slot
           * before qhead (free, as R was taken from the queue). */
          queue[--qhead] = r;
          continue;
        }
        r->res = ring_err;	/* its remainder cannot go out */
      }
      finished (r);
      pending--;
    }
    io_uring_cq_advance (ring, seen);
  }
  if (queue != stackq)
    free (queue);
  if (nremote > 0) {
    device_nbd_wait (w);
    emulate_fua (reqs, n, w);
  }

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
device_reserve (struct device *dev, uint64_t off, uint64_t len)
{
  if (off > dev->size || len > dev->size - off)
    return strata_error (EINVAL, "%s: cannot allocate %" PRIu64 " bytes at "
                         "offset %" PRIu64 ": past its end", dev->path, len,
                         off);
  if (dev->remote || dev->is_blk || len == 0)
    return 0;
  if (fallocate (dev->fd, 0, off, len) == 0)
    return 0;
  if (errno == EOPNOTSUPP || errno == ENOSYS)
    return 0;
  return strata_error (errno, "%s: cannot allocate %" PRIu64 " bytes at "
                       "offset %" PRIu64 ": %m", dev->path, len, off);
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
