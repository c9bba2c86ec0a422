/* strata: the device layer: one backing disk of a pool.
 *
 * A device is opened once and shared by every thread.  I/O is described
 * by struct dev_req and submitted in batches with device_submit(), which
 * puts every request of the batch in flight at once and waits for all of
 * them: this is how a volume request fans out to its stripe columns and
 * replicas together.  Local files and block devices use a per-thread
 * io_uring (no lock on the hot path).  Callers see only struct device and
 * struct dev_req, so a second implementation (remote NBD members through
 * libnbd's aio calls) can be added behind the same three entry points:
 * open, device_submit() and close.
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
  uint32_t len;
  uint64_t off;
  void *buf;
  int res;			/* out: 0, or -errno */
  uint32_t done;		/* internal: bytes completed so far */
};

#define DEVICE_CREATE 0x1	/* create a sparse file of the given size */
#define DEVICE_NO_DIRECT 0x2	/* do not try O_DIRECT */

/* Open the local file or block device PATH for reading and writing.
 * With DEVICE_CREATE and a path that does not exist, a sparse file of
 * CREATE_SIZE bytes is created.  O_DIRECT is used where the storage
 * supports it.  Returns NULL with errno and a message on failure. */
struct device *device_open_local (const char *path, unsigned flags,
                                  uint64_t create_size);

/* Close DEV.  Any lock taken by device_lock() is released. */
void device_close (struct device *dev);

uint64_t device_size (const struct device *dev);
const char *device_path (const struct device *dev);
bool device_is_direct (const struct device *dev);

/* Take an exclusive, non-blocking lock on DEV for this process.  Returns
 * 0, or -1 with errno EWOULDBLOCK if another process holds it. */
int device_lock (struct device *dev);

/* Submit the N requests of REQS together and wait until all complete.
 * Each req->res is set.  Returns 0 if all succeeded; otherwise -1 with
 * errno and message from the first failed request.  Safe to call from
 * any number of threads at once. */
int device_submit (struct dev_req *reqs, size_t n);

/* Synchronous one-request helpers on top of device_submit(). */
int device_pread (struct device *dev, void *buf, uint32_t len, uint64_t off);
int device_pwrite (struct device *dev, const void *buf, uint32_t len,
                   uint64_t off, bool fua);
int device_flush (struct device *dev);
int device_zero (struct device *dev, uint64_t len, uint64_t off);

/* Release this thread's I/O resources (its io_uring).  Optional: they are
 * also released when the thread exits. */
void device_thread_exit (void);

/* Allocate a 4 KiB aligned buffer (NULL on failure). */
void *device_alloc_buf (size_t len);

#endif /* STRATA_DEVICE_H */
