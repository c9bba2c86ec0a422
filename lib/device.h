/* strata: the device layer: one backing disk of a pool.
 *
 * A device is opened once and shared by every thread.  I/O is described
 * by struct dev_req and submitted in batches with device_submit(), which
 * puts every request of the batch in flight at once and waits for all of
 * them: this is how a volume request fans out to its stripe columns and
 * replicas together.  Local files and block devices use a per-thread
 * io_uring (no lock on the hot path); remote NBD members use libnbd's aio
 * calls (device-nbd.c).  One batch may mix both: the remote requests are
 * issued first, then the local ones, then the call waits for all.
 *
 * Alignment: for devices opened with O_DIRECT, buffers, offsets and
 * lengths must be multiples of STRATA_BLOCK (4 KiB).  The volume layer
 * guarantees this; device_submit() refuses anything else with EINVAL.
 */
#ifndef STRATA_DEVICE_H
#define STRATA_DEVICE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct device;

enum dev_op {
  DEV_READ,
  DEV_WRITE,
  DEV_FLUSH,			/* make every completed write durable */
  DEV_ZERO,			/* discard; the range reads as zeros after */
};

struct dev_req {
  struct device *dev;
  uint8_t op;			/* enum dev_op */
  bool fua;			/* DEV_WRITE: durable before completion */
  bool media;			/* DEV_READ: from the storage, never from
				 * the page cache (needs an aligned buffer) */
  bool keep;			/* DEV_ZERO: a file keeps the range's blocks,
				 * so that a write there later needs no new
				 * space (a remote member is asked to) */
  bool fast;			/* DEV_ZERO, remote: fail with ENOTSUP
				 * rather than write zeros slowly (only
				 * where device_fast_zero()) */
  uint32_t len;
  uint64_t off;
  void *buf;
  int res;			/* out: 0, or -errno */
  uint32_t tag;			/* the caller's; not touched here */
  /* Internal to the device layer. */
  uint32_t done;		/* bytes completed so far */
  uint64_t t0;			/* start time, for latency and timeouts */
  void *conn;			/* remote: the connection it went out on */
  struct dev_waiter *w;		/* remote: who waits for it */
  struct dev_req *prev, *next;	/* remote: the connection's in-flight list */
  bool timed_out;		/* remote: failed by the request timeout */
  bool zrange;			/* DEV_ZERO: went out as a zero range */
  uint64_t covers;		/* flush: the writes it covers */
};

#define DEVICE_CREATE 0x1	/* create a sparse file of the given size */
#define DEVICE_BUFFERED 0x2	/* page cache for everything, no O_DIRECT */
#define DEVICE_DIRECT_READS 0x4	/* O_DIRECT for reads too */
#define DEVICE_PREALLOC 0x8	/* with DEVICE_CREATE: allocate its space */

/* Open the local file or block device PATH for reading and writing.
 * With DEVICE_CREATE and a path that does not exist, a sparse file of
 * CREATE_SIZE bytes is created; with DEVICE_PREALLOC too, its space is
 * allocated (fallocate) where the file system can.  O_DIRECT is used
 * where the storage supports it.  Returns NULL with errno and a message
 * on failure. */
struct device *device_open_local (const char *path, unsigned flags,
                                  uint64_t create_size);

/* Connect to the NBD export at URI (nbd://, nbds://, nbd+unix://,
 * nbds+unix://; TLS settings such as tls-psk-file= or tls-certificates=
 * go in the URI's query, as libnbd reads them).  Opens several
 * connections when the server offers multi-conn.  The export must accept
 * writes, flush and write zeroes.  Returns NULL with errno and a message
 * on failure.  FLAGS is reserved (0). */
struct device *device_open_nbd (const char *uri, unsigned flags);

/* Whether the NBD server at URI completes a handshake within TIMEOUT_MS
 * (the connection is closed again at once).  A cheap question before
 * device_open_nbd(), which may wait for the request timeout. */
bool device_nbd_answers (const char *uri, unsigned timeout_ms);

/* True if some write or discard to DEV has completed that no flush has
 * covered yet (a flush covers what completed before it was submitted;
 * a FUA write needs none).  A flush of the pool sends a flush to such a
 * device and to no other. */
bool device_unflushed (const struct device *dev);

/* Close DEV.  Any lock taken by device_lock() is released. */
void device_close (struct device *dev);

uint64_t device_size (const struct device *dev);
const char *device_path (const struct device *dev);

/* The memory alignment a buffer for OP on DEV needs: 512 when that kind
 * of request goes to an O_DIRECT descriptor (which also needs offsets
 * and lengths in whole 4 KiB blocks), 1 otherwise. */
size_t device_mem_align (const struct device *dev, enum dev_op op);

bool device_is_remote (const struct device *dev);

/* A remote member that offers fast zeroing (NBD FAST_ZERO). */
bool device_fast_zero (const struct device *dev);

/* Take an exclusive lock on DEV for this process, waiting up to WAIT_MS
 * milliseconds for a holder to let go.  Returns 0, or -1 with errno
 * EWOULDBLOCK if another process still holds it.  Remote members cannot
 * be locked from here: this returns 0 for them, and the pool's lock file
 * (pool.c) keeps two processes apart. */
int device_lock (struct device *dev, unsigned wait_ms);

/* Submit the N requests of REQS together and wait until all complete.
 * Each req->res is set.  Returns 0 if all succeeded; otherwise -1 with
 * errno and message from the first failed request.  Safe to call from
 * any number of threads at once. */
int device_submit (struct dev_req *reqs, size_t n);

/* Whether RES, a request's result (0 or -errno), is lack of space
 * (ENOSPC, EDQUOT): the filesystem's or the server's, no fault of the
 * device.  Error counts leave it out. */
bool device_no_space (int res);

/* Synchronous one-request helpers on top of device_submit(). */
int device_pread (struct device *dev, void *buf, uint32_t len, uint64_t off);
int device_pwrite (struct device *dev, const void *buf, uint32_t len,
                   uint64_t off, bool fua);
int device_flush (struct device *dev);
int device_zero (struct device *dev, uint64_t len, uint64_t off);

/* Give [OFF, OFF+LEN) of a local file its blocks now (fallocate), so
 * that writes into it cannot fail for want of space on the filesystem
 * that holds the file, which a sparse file otherwise only finds out
 * when the write comes.  Blocks already there keep their data; new ones
 * read as zeros.  A no-op for block devices, remote members and
 * filesystems that cannot allocate ahead.  Returns 0, or -1 with errno
 * (ENOSPC when the filesystem is full, EINVAL past the device's end)
 * and a message. */
int device_reserve (struct device *dev, uint64_t off, uint64_t len);

/* What status shows about a device. */
struct device_stats {
  uint64_t requests, errors, timeouts;
  uint64_t latency_ns;		/* mean over all requests */
  bool connected;		/* remote: at least one connection is up */
};
void device_stats (const struct device *dev, struct device_stats *st);

/* Remote members: whether a connection is up. */
bool device_connected (const struct device *dev);

/* Whether a remote member's failure is down to its connection rather
 * than the member: no connection is up, or in the last few seconds one
 * was lost or a request failed with a connection error (the host went
 * down, the server was restarted, the network failed, a request timed
 * out and its connection was shut), or since
 * it was last taken back (device_reconnect) a connection was lost with
 * writes that no flush covered.  False for local devices. */
bool device_lost_connection (const struct device *dev);

/* Remote members: have a connection up, waking the reconnect attempts
 * (which back off to one per 5 s) and waiting for one to succeed, at most
 * the request timeout or 10 s, whichever is longer.  Called when the pool
 * takes a member back: it also forgets that a lost connection may have
 * lost unflushed writes (flushes fail until then; see device-nbd.c).
 * Local devices: nothing to do.  Returns 0, or -1 with a message. */
int device_reconnect (struct device *dev);

/* Requests to remote members fail with ETIMEDOUT after MS milliseconds
 * (default 30 s), and the connection is re-established.  Set before
 * opening devices. */
void device_set_timeout (unsigned ms);

/* Stop the remote members' I/O threads (they start again on next use).
 * Call with no I/O in flight, before fork(). */
void device_threads_stop (void);

/* Start them again now, so that members nobody is using (failed ones)
 * keep being reconnected.  Call after fork(). */
void device_threads_start (void);

/* Release this thread's I/O resources (its io_uring).  Optional: they are
 * also released when the thread exits. */
void device_thread_exit (void);

/* Allocate a 4 KiB aligned buffer (NULL on failure). */
void *device_alloc_buf (size_t len);

/* Allocate a buffer for large requests (NULL on failure): 2 MiB aligned
 * and backed by huge pages where the kernel has them, so that a request
 * reaches the disk whole instead of split at its segment limit, and
 * O_DIRECT pins one page instead of hundreds.  For buffers that are
 * reused or move megabytes; free() it.  Its size is rounded up to a
 * whole number of DEVICE_HUGE_PAGE. */
#define DEVICE_HUGE_PAGE (2u << 20)
void *device_alloc_huge (size_t len);

/* Why huge pages cannot back those buffers, as the kernel's THP setting
 * in PATH (NULL: its sysfs file) says, or NULL when they can.  The first
 * device_alloc_huge() of a process prints it as a warning. */
const char *device_thp_problem (const char *path);

#endif /* STRATA_DEVICE_H */
