/* strata: what the two device implementations share (device.c for local
 * files and block devices, device-nbd.c for remote NBD members).  Nothing
 * outside lib/device*.c includes this.
 */
#ifndef STRATA_DEVICE_INTERNAL_H
#define STRATA_DEVICE_INTERNAL_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "device.h"

struct nbd_remote;

struct device {
  char *path;			/* file path, or the URI of a remote member */
  uint64_t size;
  bool remote;

  /* Local devices. */
  int fd;			/* writes, flushes, zeroing */
  int rfd;			/* reads: fd, or a page-cache fd (auto mode) */
  bool direct;			/* fd is O_DIRECT */
  bool direct_read;		/* rfd is O_DIRECT */
  bool is_blk;
  bool no_punch;		/* PUNCH_HOLE unsupported: use ZERO_RANGE */
  bool no_zrange;		/* ZERO_RANGE unsupported (both: write zeros) */

  /* Remote members (device-nbd.c). */
  struct nbd_remote *nbd;

  /* Counters for status, updated with relaxed atomics. */
  _Atomic uint64_t nreq, nerr, ntimeout, lat_ns;

  /* What a flush has to cover (device_note_durability).  A write or
   * discard is counted in wdone when it has completed and is not yet
   * durable; a successful flush raises wflushed to the wdone it read when
   * it was submitted (dev_req.covers). */
  _Atomic uint64_t wdone;
  _Atomic uint64_t wflushed;
};

/* Completion tracking for the remote part of one device_submit() call. */
struct dev_waiter;

/* Start R (R->dev is remote) and count it in W.  The request completes
 * later, from another thread, setting R->res.  Never blocks on I/O. */
void device_nbd_start (struct dev_req *r, struct dev_waiter *w);

/* A waiter for remote requests started by this thread; wait for all of
 * them with device_nbd_wait(), then free with device_nbd_waiter_done(). */
struct dev_waiter *device_nbd_waiter (void);
void device_nbd_wait (struct dev_waiter *w);

/* True if a FUA write to DEV must be followed by a flush (the server
 * cannot do FUA itself). */
bool device_nbd_needs_flush_for_fua (struct device *dev);

void device_nbd_close (struct device *dev);
bool device_nbd_can_fast_zero (const struct device *dev);

/* Count one finished request (RES: 0 or -errno) in DEV's statistics;
 * lack of space (device_no_space) is not counted as an error. */
void device_account (struct device *dev, int res, uint64_t t0_ns);

/* R finished successfully: count a write (one not made durable by its
 * own FUA, which FUA_DURABLE says the device honours) or a discard as
 * waiting for a flush, or record what a flush covered. */
void device_note_durability (const struct dev_req *r, bool fua_durable);

uint64_t device_now_ns (void);

/* Request timeout for remote members (device_set_timeout). */
extern uint64_t device_timeout_ns;

#endif /* STRATA_DEVICE_INTERNAL_H */
