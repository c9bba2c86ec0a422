/* strata: remote pool members over NBD, through libnbd (see device.h).
 *
 * Design notes
 * ------------
 * A remote member has one connection, or several (up to
 * NBD_MAX_CONNS) when the server advertises multi-conn, which is also
 * what makes a FLUSH on one connection cover writes made on the others.
 * Requests are issued with libnbd's aio calls by the thread that submits
 * them, so a volume request's pieces for local and remote members are
 * all in flight together; each connection has a poller thread that
 * drives the socket (nbd_aio_notify_read/write) and runs the completion
 * callbacks, which hand results back to the waiting thread.
 *
 * Locks: conn->lock protects conn->h against replacement and is held by
 * submitters while they call libnbd on it.  conn->list_lock protects the
 * in-flight list and is never held across a libnbd call, because
 * completion callbacks run with libnbd's handle lock held and take it.
 *
 * Failure: every request has a deadline.  The poller shuts the socket
 * down when one passes, so libnbd fails every command of the connection;
 * a dropped connection does the same.  The poller then reconnects with
 * backoff (0.1 s doubling to 5 s).  While no connection is up, requests
 * fail at once with ENOTCONN: replicated volumes read and write the other
 * copies, and the pool marks the member failed.  Nothing is retried on a
 * new connection, since an NBD write's fate on a dead connection is
 * unknown; only a request that libnbd refused because its connection had
 * just died goes on to the member's next connection, as it never left.
 *
 * Writes the server acknowledged but was not yet asked to make durable
 * may be gone after a dropped connection too: a server that restarted
 * (a host that lost power) loses its volatile cache.  So a connection
 * lost while some acknowledged write is not covered by a successful
 * flush makes the member "lossy": its flushes fail with EIO from then
 * on, which makes the pool fail the member instead of reporting those
 * writes durable.  Only device_reconnect(), called when the pool takes
 * the member back (device add, which resyncs it), clears that.  Writes
 * are counted as their replies arrive (wdone); a flush covers those
 * counted when it was sent (wflushed, on its success).  Local devices
 * keep the same two counters (device_note_durability), and a pool flush
 * goes to every device where they differ.
 *
 * Threads and fork: pollers start on first use.  nbdkit opens the pool
 * before it forks, so the plugin stops them with device_threads_stop()
 * before the fork and they start again in the child; a handle with no
 * poller and no request in flight is idle and survives the fork intact.
 */
#include <errno.h>
#include <inttypes.h>
#include <libnbd.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include "device-internal.h"
#include "error.h"
#include "util.h"

/* Two connections carry 1 MiB streams as fast as four, and 4 KiB random
 * reads about 20% faster: each connection's poller wakes per reply, and
 * fewer pollers find more replies waiting per wake-up. */
#define NBD_MAX_CONNS 2
#define BACKOFF_MIN_MS 100
#define BACKOFF_MAX_MS 5000
/* How long after a lost connection (or a request that failed with a
 * connection error) a failure is put down to it
 * (device_lost_connection): the requests it failed report at once, and
 * those that were waiting to be sent soon after. */
#define LOST_RECENT_NS (10 * 1000000000ull)
/* How long device_reconnect() waits at least for a connection. */
#define RECONNECT_WAIT_NS (10 * 1000000000ull)

struct conn {
  struct nbd_remote *rm;
  pthread_mutex_t lock;		/* protects h (see design notes) */
  struct nbd_handle *h;		/* NULL while disconnected */
  int wakefd;			/* eventfd: wakes the poller */
  pthread_t thread;
  pthread_mutex_t list_lock;	/* protects inflight */
  struct dev_req *inflight;
};

struct nbd_remote {
  struct device *dev;
  char *uri;
  unsigned nconns;
  struct conn conns[NBD_MAX_CONNS];
  bool can_fua, can_zero, can_fast_zero, multi_conn;
  uint64_t timeout_ns;
  /* Unflushed writes: dev->wdone and dev->wflushed (see design notes). */
  _Atomic bool lossy;		/* lost a connection with some uncovered */
  _Atomic uint64_t lost_ns;	/* when a connection was last lost (0) */
  _Atomic unsigned rr;
  _Atomic bool running;		/* pollers started */
  _Atomic bool stop;		/* pollers must exit */
  pthread_mutex_t start_lock;	/* serialises starting and stopping */
  struct nbd_remote *next;	/* in the registry */
};

/* Every open remote member, for device_threads_stop(). */
static pthread_mutex_t registry_lock = PTHREAD_MUTEX_INITIALIZER;
static struct nbd_remote *registry;

struct dev_waiter {
  pthread_mutex_t m;
  pthread_cond_t c;
  size_t pending;
};
static __thread struct dev_waiter thread_waiter = {
  PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0
};

struct dev_waiter *
device_nbd_waiter (void)
{
  return &thread_waiter;
}

void
device_nbd_wait (struct dev_waiter *w)
{
  pthread_mutex_lock (&w->m);
  while (w->pending > 0)
    pthread_cond_wait (&w->c, &w->m);
  pthread_mutex_unlock (&w->m);
}

static void
finish (struct dev_req *r, int res)
{
  struct dev_waiter *w = r->w;

  r->res = res;
  /* A fast zero (a reservation: pool.c) that the server cannot do fast
   * is no fault of the member (nor is lack of space: device_account). */
  device_account (r->dev, r->fast && res == -ENOTSUP ? 0 : res, r->t0);
  pthread_mutex_lock (&w->m);
  if (--w->pending == 0)
    pthread_cond_signal (&w->c);
  pthread_mutex_unlock (&w->m);
}

static void
list_add (struct conn *c, struct dev_req *r)
{
  pthread_mutex_lock (&c->list_lock);
  r->prev = NULL;
  r->next = c->inflight;
  if (c->inflight)
    c->inflight->prev = r;
  c->inflight = r;
  pthread_mutex_unlock (&c->list_lock);
}

/* Unlink R if it is still listed; returns false if someone else did. */
static bool
list_del (struct conn *c, struct dev_req *r)
{
  bool found = false;

  pthread_mutex_lock (&c->list_lock);
  if (r->conn == c) {
    if (r->prev)
      r->prev->next = r->next;
    else
      c->inflight = r->next;
    if (r->next)
      r->next->prev = r->prev;
    r->conn = NULL;
    found = true;
  }
  pthread_mutex_unlock (&c->list_lock);
  return found;
}

/* Whether RES, a failed request's -errno, is down to its connection
 * (it dropped, or timed out and was shut) rather than the server's
 * answer.  ESHUTDOWN is also what a server that is stopping answers. */
static bool
connection_error (int res)
{
  switch (-res) {
  case ENOTCONN: case ECONNRESET: case ECONNABORTED: case EPIPE:
  case ESHUTDOWN: case ETIMEDOUT:
    return true;
  default:
    return false;
  }
}

/* libnbd completion callback: runs in the poller with the handle lock
 * held, so it must not call libnbd. */
static int
on_done (void *opaque, int *error)
{
  struct dev_req *r = opaque;
  struct conn *c = r->conn;

  if (c && list_del (c, r)) {
    int res = r->timed_out ? -ETIMEDOUT : *error ? -*error : 0;
    if (res == 0)
      device_note_durability (r, c->rm->can_fua);
    /* Before the waiter hears of it: the pool, failing the member,
     * asks whether it lost its connection, and the poller may not have
     * seen the connection die yet. */
    else if (connection_error (res))
      atomic_store (&c->rm->lost_ns, device_now_ns ());
    finish (r, res);
  }
  return 1;			/* retire the command */
}

/* Fail every request still listed on C (its handle is gone). */
static void
fail_inflight (struct conn *c, int res)
{
  for (;;) {
    struct dev_req *r;
    pthread_mutex_lock (&c->list_lock);
    r = c->inflight;
    pthread_mutex_unlock (&c->list_lock);
    if (!r)
      return;
    if (list_del (c, r))
      finish (r, r->timed_out ? -ETIMEDOUT : res);
  }
}

/* Connect a new handle to URI, waiting at most TIMEOUT_NS.  Returns
 * NULL with a message on failure. */
static struct nbd_handle *
connect_uri (const char *uri, uint64_t timeout_ns)
{
  struct nbd_handle *h = nbd_create ();
  uint64_t deadline = device_now_ns () + timeout_ns;

  if (!h) {
    strata_error (ENOMEM, "%s: %s", uri, nbd_get_error ());
    return NULL;
  }
  /* Allow tls-psk-file= and tls-certificates= in the URI's query. */
  nbd_set_uri_allow_local_file (h, true);
  /* Simple replies: a read's reply is a header and the data, two
   * recv calls instead of four.  strata asks for no block status,
   * which is what structured replies are for. */
  nbd_set_request_structured_replies (h, false);
  /* libnbd zeroes read buffers first by default, in case a caller uses
   * the buffer of a failed read; we never do, and the memset cost 11%
   * of the CPU on 1 MiB reads. */
  nbd_set_pread_initialize (h, false);
  if (nbd_aio_connect_uri (h, uri) == -1)
    goto err;
  while (nbd_aio_is_connecting (h)) {
    int64_t left = (int64_t) (deadline - device_now_ns ());
    unsigned dir = nbd_aio_get_direction (h);
    struct pollfd pfd = { .fd = nbd_aio_get_fd (h) };
    if (left <= 0) {
      strata_error (ETIMEDOUT, "%s: connection timed out", uri);
      nbd_close (h);
      return NULL;
    }
    if (dir & LIBNBD_AIO_DIRECTION_READ)
      pfd.events |= POLLIN;
    if (dir & LIBNBD_AIO_DIRECTION_WRITE)
      pfd.events |= POLLOUT;
    if (poll (&pfd, 1, MIN (left / 1000000 + 1, 1000)) == -1 && errno != EINTR)
      goto err;
    if ((pfd.revents & (POLLIN | POLLHUP | POLLERR))
        && nbd_aio_notify_read (h) == -1)
      goto err;
    if ((pfd.revents & POLLOUT) && nbd_aio_notify_write (h) == -1)
      goto err;
  }
  if (!nbd_aio_is_ready (h)) {
    strata_error (ECONNRESET, "%s: the server closed the connection during "
                  "the handshake", uri);
    nbd_close (h);
    return NULL;
  }
  return h;

 err:
  strata_error (nbd_get_errno () ? nbd_get_errno () : EIO, "%s: %s",
                uri, nbd_get_error ());
  nbd_close (h);
  return NULL;
}

static struct nbd_handle *
connect_handle (struct nbd_remote *rm)
{
  return connect_uri (rm->uri, rm->timeout_ns);
}

bool
device_nbd_answers (const char *uri, unsigned timeout_ms)
{
  struct nbd_handle *h = connect_uri (uri, timeout_ms * UINT64_C (1000000));

  if (!h)
    return false;
  nbd_close (h);		/* no request was sent: nothing owed */
  return true;
}

/* Keep libnbd's message for the last error, to say why a connection
 * was lost. */
static void
note_error (char *why, size_t n)
{
  snprintf (why, n, "%s", nbd_get_error () ? nbd_get_error () : "I/O error");
}

/* Sleep up to MS milliseconds, waking early on C's eventfd. */
static void
nap (struct conn *c, unsigned ms)
{
  struct pollfd pfd = { .fd = c->wakefd, .events = POLLIN };
  uint64_t v;

  if (poll (&pfd, 1, ms) == 1 && read (c->wakefd, &v, sizeof v) < 0)
    return;
}

static void *
poller (void *arg)
{
  struct conn *c = arg;
  struct nbd_remote *rm = c->rm;
  unsigned backoff = BACKOFF_MIN_MS;

  while (!atomic_load (&rm->stop)) {
    struct nbd_handle *h;
    struct pollfd pfd[2];
    unsigned dir;
    uint64_t now, v = 0;
    bool expired = false;
    char why[256] = "";

    pthread_mutex_lock (&c->lock);
    h = c->h;
    pthread_mutex_unlock (&c->lock);
    if (!h) {
      h = connect_handle (rm);
      if (!h) {
        /* Say so once per outage, not at every retry. */
        if (backoff == BACKOFF_MIN_MS)
          fprintf (stderr, "strata: %s: cannot reconnect (retrying): %s\n",
                   rm->uri, strata_last_error ());
        nap (c, backoff);
        backoff = MIN (backoff * 2, BACKOFF_MAX_MS);
        continue;
      }
      if (backoff != BACKOFF_MIN_MS)
        fprintf (stderr, "strata: %s: reconnected\n", rm->uri);
      backoff = BACKOFF_MIN_MS;
      pthread_mutex_lock (&c->lock);
      c->h = h;
      pthread_mutex_unlock (&c->lock);
    }

    dir = nbd_aio_get_direction (h);
    pfd[0] = (struct pollfd) { .fd = nbd_aio_get_fd (h) };
    if (dir & LIBNBD_AIO_DIRECTION_READ)
      pfd[0].events |= POLLIN;
    if (dir & LIBNBD_AIO_DIRECTION_WRITE)
      pfd[0].events |= POLLOUT;
    pfd[1] = (struct pollfd) { .fd = c->wakefd, .events = POLLIN };
    if (poll (pfd, 2, 100) > 0) {
      if ((pfd[1].revents & POLLIN) && read (c->wakefd, &v, sizeof v) < 0)
        v = 0;
      /* Errors leave the handle dead, which is handled below. */
      if (pfd[0].revents & (POLLIN | POLLHUP | POLLERR)) {
        /* libnbd reads one reply per call: read on while replies are
         * waiting, so that a busy connection costs a poll per burst,
         * not per reply.  notify_read is only ever called when the
         * socket is readable: libnbd 1.14 left with nothing to read in
         * REPLY.START stops resuming a paused write payload, and the
         * connection hangs. */
        for (;;) {
          if (nbd_aio_notify_read (h) == -1) {
            note_error (why, sizeof why);
            break;
          }
          if (nbd_aio_in_flight (h) == 0
              || !(nbd_aio_get_direction (h) & LIBNBD_AIO_DIRECTION_READ))
            break;
          pfd[0].events = POLLIN;
          if (poll (pfd, 1, 0) != 1 || !(pfd[0].revents & POLLIN))
            break;
        }
      }
      else if ((pfd[0].revents & POLLOUT) && nbd_aio_notify_write (h) == -1)
        note_error (why, sizeof why);
    }

    /* Requests past their deadline kill the connection. */
    pthread_mutex_lock (&c->list_lock);
    now = device_now_ns ();	/* after every listed request's t0 */
    for (struct dev_req *r = c->inflight; r; r = r->next)
      if ((int64_t) (now - r->t0) > (int64_t) rm->timeout_ns) {
        r->timed_out = true;
        expired = true;
      }
    pthread_mutex_unlock (&c->list_lock);
    if (expired) {
      atomic_fetch_add_explicit (&rm->dev->ntimeout, 1, memory_order_relaxed);
      atomic_store (&rm->lost_ns, device_now_ns ());
      snprintf (why, sizeof why, "a request got no reply in %" PRIu64 " ms",
                rm->timeout_ns / 1000000);
      shutdown (nbd_aio_get_fd (h), SHUT_RDWR);
      nbd_aio_notify_read (h);
    }

    if (nbd_aio_is_dead (h) || nbd_aio_is_closed (h)) {
      uint64_t done = atomic_load (&rm->dev->wdone);
      uint64_t flushed = atomic_load (&rm->dev->wflushed);

      fprintf (stderr, "strata: %s: connection lost: %s\n", rm->uri,
               why[0] ? why : "closed by the server");
      if (done > flushed && !atomic_exchange (&rm->lossy, true))
        fprintf (stderr, "strata: %s: %" PRIu64 " acknowledged writes were "
                 "not flushed yet; the server may have lost them, so the "
                 "member's flushes fail until it is added back\n", rm->uri,
                 done - flushed);
      /* Before the requests it fails: the pool asks, failing the
       * member, whether it lost its connection. */
      atomic_store (&rm->lost_ns, device_now_ns ());
      pthread_mutex_lock (&c->lock);
      c->h = NULL;
      pthread_mutex_unlock (&c->lock);
      nbd_close (h);
      fail_inflight (c, -ENOTCONN);
    }
  }
  return NULL;
}

static void
threads_stop (struct nbd_remote *rm)
{
  pthread_mutex_lock (&rm->start_lock);
  if (atomic_load (&rm->running)) {
    atomic_store (&rm->stop, true);
    for (unsigned i = 0; i < rm->nconns; i++) {
      uint64_t one = 1;
      if (write (rm->conns[i].wakefd, &one, sizeof one) < 0)
        continue;
    }
    for (unsigned i = 0; i < rm->nconns; i++)
      pthread_join (rm->conns[i].thread, NULL);
    atomic_store (&rm->running, false);
    atomic_store (&rm->stop, false);
  }
  pthread_mutex_unlock (&rm->start_lock);
}

static int
threads_start (struct nbd_remote *rm)
{
  int e = 0;

  pthread_mutex_lock (&rm->start_lock);
  if (!atomic_load (&rm->running)) {
    unsigned i;
    for (i = 0; i < rm->nconns; i++) {
      e = pthread_create (&rm->conns[i].thread, NULL, poller, &rm->conns[i]);
      if (e)
        break;
    }
    if (e) {
      atomic_store (&rm->stop, true);
      while (i-- > 0)
        pthread_join (rm->conns[i].thread, NULL);
      atomic_store (&rm->stop, false);
    }
    else
      atomic_store (&rm->running, true);
  }
  pthread_mutex_unlock (&rm->start_lock);
  if (e)
    return strata_error (e, "%s: cannot start I/O threads: %s", rm->uri,
                         strerror (e));
  return 0;
}

void
device_threads_start (void)
{
  pthread_mutex_lock (&registry_lock);
  for (struct nbd_remote *rm = registry; rm; rm = rm->next)
    threads_start (rm);		/* on failure, retried on first use */
  pthread_mutex_unlock (&registry_lock);
}

void
device_threads_stop (void)
{
  pthread_mutex_lock (&registry_lock);
  for (struct nbd_remote *rm = registry; rm; rm = rm->next)
    threads_stop (rm);
  pthread_mutex_unlock (&registry_lock);
}

static int
issue (struct nbd_handle *h, struct dev_req *r, bool fua_ok)
{
  nbd_completion_callback cb = { .callback = on_done, .user_data = r };

  switch (r->op) {
    case DEV_READ:
      return nbd_aio_pread (h, r->buf, r->len, r->off, cb, 0) == -1 ? -1 : 0;
    case DEV_WRITE:
      return nbd_aio_pwrite (h, r->buf, r->len, r->off, cb,
                             r->fua && fua_ok ? LIBNBD_CMD_FLAG_FUA : 0)
        == -1 ? -1 : 0;
    case DEV_FLUSH:
      return nbd_aio_flush (h, cb, 0) == -1 ? -1 : 0;
    case DEV_ZERO:
      return nbd_aio_zero (h, r->len, r->off, cb,
                           (r->keep ? LIBNBD_CMD_FLAG_NO_HOLE : 0)
                           | (r->fast ? LIBNBD_CMD_FLAG_FAST_ZERO : 0))
        == -1 ? -1 : 0;
  }
  errno = EINVAL;
  return -1;
}

void
device_nbd_start (struct dev_req *r, struct dev_waiter *w)
{
  struct nbd_remote *rm = r->dev->nbd;
  unsigned start = atomic_fetch_add_explicit (&rm->rr, 1, memory_order_relaxed);

  r->w = w;
  r->t0 = device_now_ns ();
  r->timed_out = false;
  r->conn = NULL;
  pthread_mutex_lock (&w->m);
  w->pending++;
  pthread_mutex_unlock (&w->m);

  if (!atomic_load (&rm->running) && threads_start (rm) == -1) {
    finish (r, -errno);
    return;
  }
  if (r->op == DEV_FLUSH) {
    if (atomic_load (&rm->lossy)) {
      finish (r, -EIO);
      return;
    }
    r->covers = atomic_load (&rm->dev->wdone);
  }
  for (unsigned k = 0; k < rm->nconns; k++) {
    struct conn *c = &rm->conns[(start + k) % rm->nconns];
    pthread_mutex_lock (&c->lock);
    /* A handle is only ever stored here connected, so it can take
     * requests until it is dead.  Not "ready or processing": libnbd's
     * state queries read a state the poller changes without c->lock, and
     * a handle going from processing to ready between the two calls
     * looked like neither, which failed a request on a healthy
     * connection with ENOTCONN.  Dead and closed are final. */
    if (c->h && !nbd_aio_is_dead (c->h) && !nbd_aio_is_closed (c->h)) {
      int e = 0;
      r->conn = c;
      list_add (c, r);
      if (issue (c->h, r, rm->can_fua) == -1) {
        bool died = nbd_aio_is_dead (c->h) || nbd_aio_is_closed (c->h);
        e = nbd_get_errno () ? nbd_get_errno () : EIO;
        list_del (c, r);
        if (died) {
          /* The connection died since the check above (libnbd then
           * says EINVAL, the wrong state).  The request never left, so
           * another connection may take it. */
          pthread_mutex_unlock (&c->lock);
          continue;
        }
      }
      else if (nbd_aio_get_direction (c->h) & LIBNBD_AIO_DIRECTION_WRITE) {
        uint64_t one = 1;
        if (write (c->wakefd, &one, sizeof one) < 0)
          e = 0;		/* the poller wakes within 100 ms anyway */
      }
      pthread_mutex_unlock (&c->lock);
      if (e)
        finish (r, -e);
      return;
    }
    pthread_mutex_unlock (&c->lock);
  }
  finish (r, -ENOTCONN);	/* no connection is up */
}

bool
device_nbd_needs_flush_for_fua (struct device *dev)
{
  return !dev->nbd->can_fua;
}

/* Free RM with every connection slot, used or not.  Its threads must be
 * stopped. */
static void
remote_free (struct nbd_remote *rm)
{
  for (unsigned i = 0; i < NBD_MAX_CONNS; i++) {
    struct conn *c = &rm->conns[i];
    if (c->h)
      nbd_close (c->h);
    c->h = NULL;
    fail_inflight (c, -ENOTCONN);
    if (c->wakefd >= 0)
      close (c->wakefd);
    pthread_mutex_destroy (&c->lock);
    pthread_mutex_destroy (&c->list_lock);
  }
  pthread_mutex_destroy (&rm->start_lock);
  free (rm->uri);
  free (rm);
}

struct device *
device_open_nbd (const char *uri, unsigned flags)
{
  struct device *dev = calloc (1, sizeof *dev);
  struct nbd_remote *rm = calloc (1, sizeof *rm);
  struct nbd_handle *h;
  int64_t size;

  (void) flags;
  if (!dev || !rm || !(rm->uri = strdup (uri))
      || !(dev->path = strdup (uri))) {
    free (dev ? dev->path : NULL);
    free (dev);
    free (rm ? rm->uri : NULL);
    free (rm);
    strata_error (ENOMEM, "out of memory");
    return NULL;
  }
  dev->remote = true;
  dev->fd = dev->rfd = -1;
  dev->nbd = rm;
  rm->dev = dev;
  rm->timeout_ns = device_timeout_ns;
  pthread_mutex_init (&rm->start_lock, NULL);
  for (unsigned i = 0; i < NBD_MAX_CONNS; i++) {
    rm->conns[i].rm = rm;
    rm->conns[i].wakefd = -1;
    pthread_mutex_init (&rm->conns[i].lock, NULL);
    pthread_mutex_init (&rm->conns[i].list_lock, NULL);
  }

  h = connect_handle (rm);
  if (!h)
    goto fail;
  rm->conns[0].h = h;
  size = nbd_get_size (h);
  if (size < 0) {
    strata_error (EIO, "%s: %s", uri, nbd_get_error ());
    goto fail;
  }
  dev->size = size;
  if (nbd_is_read_only (h) == 1) {
    strata_error (EROFS, "%s: the export is read-only", uri);
    goto fail;
  }
  if (nbd_can_flush (h) != 1) {
    strata_error (ENOTSUP, "%s: the server cannot flush, so writes could "
                  "not be made durable", uri);
    goto fail;
  }
  if (nbd_can_zero (h) != 1) {
    strata_error (ENOTSUP, "%s: the server does not support write zeroes",
                  uri);
    goto fail;
  }
  rm->can_fua = nbd_can_fua (h) == 1;
  rm->can_zero = true;
  rm->can_fast_zero = nbd_can_fast_zero (h) == 1;
  rm->multi_conn = nbd_can_multi_conn (h) == 1;
  rm->nconns = rm->multi_conn ? NBD_MAX_CONNS : 1;
  for (unsigned i = 1; i < rm->nconns; i++) {
    rm->conns[i].h = connect_handle (rm);
    if (!rm->conns[i].h)
      goto fail;
  }
  for (unsigned i = 0; i < NBD_MAX_CONNS; i++) {
    rm->conns[i].wakefd = eventfd (0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (rm->conns[i].wakefd == -1) {
      strata_error (errno, "eventfd: %m");
      goto fail;
    }
  }
  pthread_mutex_lock (&registry_lock);
  rm->next = registry;
  registry = rm;
  pthread_mutex_unlock (&registry_lock);
  return dev;

 fail:
  remote_free (rm);
  free (dev->path);
  free (dev);
  return NULL;
}

bool
device_nbd_can_fast_zero (const struct device *dev)
{
  return dev->nbd->can_fast_zero;
}

void
device_nbd_close (struct device *dev)
{
  struct nbd_remote *rm = dev->nbd;

  pthread_mutex_lock (&registry_lock);
  for (struct nbd_remote **pp = &registry; *pp; pp = &(*pp)->next)
    if (*pp == rm) {
      *pp = rm->next;
      break;
    }
  pthread_mutex_unlock (&registry_lock);
  threads_stop (rm);
  remote_free (rm);
}

bool
device_connected (const struct device *dev)
{
  if (!dev->remote)
    return true;
  for (unsigned i = 0; i < dev->nbd->nconns; i++) {
    struct conn *c = &dev->nbd->conns[i];
    bool up;
    pthread_mutex_lock (&c->lock);
    up = c->h != NULL;
    pthread_mutex_unlock (&c->lock);
    if (up)
      return true;
  }
  return false;
}

bool
device_lost_connection (const struct device *dev)
{
  struct nbd_remote *rm = dev->nbd;
  uint64_t lost;

  if (!dev->remote)
    return false;
  lost = atomic_load (&rm->lost_ns);
  return atomic_load (&rm->lossy) || !device_connected (dev)
    || (lost && device_now_ns () - lost < LOST_RECENT_NS);
}

int
device_reconnect (struct device *dev)
{
  struct nbd_remote *rm = dev->nbd;
  uint64_t deadline;

  if (!dev->remote)
    return 0;
  /* The pool takes the member back and resyncs it: writes it may have
   * lost are accounted for. */
  atomic_store (&dev->wflushed, atomic_load (&dev->wdone));
  atomic_store (&rm->lossy, false);
  if (device_connected (dev))
    return 0;
  if (!atomic_load (&rm->running) && threads_start (rm) == -1)
    return -1;
  /* An operator brings a member back (device add): a few tries, each
   * bounded by the I/O timeout, even when that is short. */
  deadline = device_now_ns () + MAX (rm->timeout_ns, RECONNECT_WAIT_NS);
  while (!device_connected (dev)) {
    uint64_t one = 1;
    if ((int64_t) (device_now_ns () - deadline) > 0)
      return strata_error (ENOTCONN, "%s: cannot reconnect: no connection "
                           "came up within %.0f s", rm->uri,
                           (double) MAX (rm->timeout_ns, RECONNECT_WAIT_NS)
                           / 1e9);
    /* Each wake-up ends a poller's backoff nap: it tries at once. */
    for (unsigned i = 0; i < rm->nconns; i++)
      if (write (rm->conns[i].wakefd, &one, sizeof one) < 0)
        continue;
    usleep (100 * 1000);
  }
  return 0;
}
