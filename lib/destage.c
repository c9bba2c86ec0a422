/* strata: the destager (see destage.h).
 *
 * Design notes
 * ------------
 * The thread destages while the log is above the high watermark, until
 * it is below the low one; below that, only records older than the age
 * limit, or everything while a drain is asked for.  A batch is at most
 * BATCH bytes of log.  cache_destage() hands the batch's runs to the
 * sink in address order; the sink queues each run for the workers and
 * returns at once, and the sink's flush waits for all of them, then
 * flushes the members.  Runs of one batch never share a block, so
 * their order does not matter.  Volumes are opened by id for the batch
 * and closed at its end, so that a delete is never held up for long; a
 * volume gone meanwhile has its blocks skipped.
 *
 * Batches that keep failing (a member full, or gone with the only copy)
 * are retried every second.  Once they have failed for
 * DESTAGE_DRAIN_GIVE_UP_MS, the cache is told (cache_set_stuck): a
 * client write that finds the log full then fails with the destager's
 * error, instead of waiting for as long as the fault lasts.
 */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cache.h"
#include "destage.h"
#include "error.h"
#include "util.h"
#include "volume.h"

#define BATCH (16u << 20)
#define WORKERS 32

struct run {
  struct volume *v;
  uint64_t blk;
  uint32_t nblk;
  const void *buf;
  const uint64_t *lsn;
};

struct vol_handle {
  uint32_t id;
  struct volume *v;		/* NULL: the volume is gone */
};

struct destager {
  struct pool *p;
  struct cache *c;
  pthread_t thread;
  pthread_t workers[WORKERS];
  pthread_mutex_t lock;		/* protects everything below */
  pthread_cond_t kick;		/* to the thread: stop, or drain */
  pthread_cond_t progress;	/* from the thread: a batch is done */
  pthread_cond_t work;		/* to the workers: a run is queued */
  pthread_cond_t idle;		/* from the workers: nothing in flight */
  bool stop;			/* the thread stops */
  bool wstop;			/* the workers stop (after the thread) */
  unsigned drains;		/* drains waiting */
  bool failed;			/* the last batch failed */
  uint64_t failed_since;	/* when batches began failing, ms */
  bool stuck;			/* told the cache (cache_set_stuck) */
  char why[256];
  struct run *q;
  size_t nq, capq, busy;
  int err;
  char errmsg[256];
  struct vol_handle *vols;
  size_t nvols;
  /* The rate: bytes destaged in the current and the last window. */
  uint64_t win_start, win_bytes, rate;
};

/* ---- workers ---- */

static void *
worker (void *arg)
{
  struct destager *d = arg;

  pthread_mutex_lock (&d->lock);
  for (;;) {
    struct run r;
    int res;
    while (d->nq == 0 && !d->wstop)
      pthread_cond_wait (&d->work, &d->lock);
    if (d->nq == 0)
      break;
    r = d->q[--d->nq];
    d->busy++;
    pthread_mutex_unlock (&d->lock);
    res = volume_destage_write (r.v, r.blk, r.nblk, r.buf, r.lsn);
    pthread_mutex_lock (&d->lock);
    if (res == -1 && d->err == 0) {
      d->err = errno ? errno : EIO;
      snprintf (d->errmsg, sizeof d->errmsg, "%s", strata_last_error ());
    }
    if (--d->busy == 0 && d->nq == 0)
      pthread_cond_broadcast (&d->idle);
  }
  pthread_mutex_unlock (&d->lock);
  return NULL;
}

/* ---- the sink ---- */

/* The handle of volume ID for this batch in *V (NULL if it is gone).
 * Returns 0, or -1 if out of memory. */
static int
vol_of (struct destager *d, uint32_t id, struct volume **v)
{
  struct meta *m = pool_meta (d->p);
  struct meta_volume *mv;
  char name[FORMAT_NAME_MAX] = "";
  struct vol_handle *n;

  for (size_t i = 0; i < d->nvols; i++)
    if (d->vols[i].id == id) {
      *v = d->vols[i].v;
      return 0;
    }
  if (!(n = realloc (d->vols, (d->nvols + 1) * sizeof *n)))
    return strata_error (ENOMEM, "out of memory");
  d->vols = n;
  pthread_mutex_lock (&m->lock);
  if ((mv = meta_find_volume_id (m, id)))
    snprintf (name, sizeof name, "%s", mv->name);
  pthread_mutex_unlock (&m->lock);
  d->vols[d->nvols] = (struct vol_handle) {
    id, name[0] ? volume_open_job (d->p, name, VOLUME_JOB_DESTAGE) : NULL
  };
  *v = d->vols[d->nvols++].v;
  return 0;
}

/* Wait until no run is queued or being written.  Under d->lock. */
static void
wait_idle (struct destager *d)
{
  while (d->nq > 0 || d->busy > 0)
    pthread_cond_wait (&d->idle, &d->lock);
}

static void
close_vols (struct destager *d)
{
  for (size_t i = 0; i < d->nvols; i++)
    volume_close (d->vols[i].v);
  d->nvols = 0;
}

static int
sink_write (void *opaque, uint32_t vol, uint64_t blk, uint32_t nblk,
            const void *buf, const uint64_t *lsn)
{
  struct destager *d = opaque;
  struct volume *v = NULL;

  /* On failure cache_destage() frees the batch's buffers at once: no
   * run may still be using them. */
  if (vol_of (d, vol, &v) == -1) {
    pthread_mutex_lock (&d->lock);
    wait_idle (d);
    pthread_mutex_unlock (&d->lock);
    close_vols (d);
    return -1;
  }
  if (!v)
    return 0;			/* deleted: nothing to write back */
  pthread_mutex_lock (&d->lock);
  if (d->nq == d->capq) {
    size_t cap = d->capq ? d->capq * 2 : 256;
    struct run *q = realloc (d->q, cap * sizeof *q);
    if (!q) {
      wait_idle (d);
      pthread_mutex_unlock (&d->lock);
      close_vols (d);
      return strata_error (ENOMEM, "out of memory");
    }
    d->q = q;
    d->capq = cap;
  }
  d->q[d->nq++] = (struct run) { v, blk, nblk, buf, lsn };
  pthread_cond_signal (&d->work);
  pthread_mutex_unlock (&d->lock);
  return 0;
}

static int
sink_flush (void *opaque)
{
  struct destager *d = opaque;
  int err;

  pthread_mutex_lock (&d->lock);
  wait_idle (d);
  err = d->err;
  d->err = 0;
  pthread_mutex_unlock (&d->lock);
  close_vols (d);
  if (err)
    return strata_error (err, "%s", d->errmsg);
  return pool_flush (d->p);
}

/* ---- the thread ---- */

static void *
destage_thread (void *arg)
{
  struct destager *d = arg;
  struct cache_sink sink = { sink_write, sink_flush, d };
  bool active = false;
  unsigned backoff = 0;

  pthread_mutex_lock (&d->lock);
  while (!d->stop) {
    struct cache_info ci;
    bool want;
    int64_t n;
    struct timespec ts;

    cache_info (d->c, &ci);
    if (pool_cache_dead (d->p) || ci.mirrors == 0)
      want = false;
    else if (d->drains > 0 || ci.used * 100 > ci.log_size * DESTAGE_HIGH_PCT)
      want = true;
    else if (active && ci.used * 100 > ci.log_size * DESTAGE_LOW_PCT)
      want = true;
    else
      want = ci.used > 0 && ci.age_ms > pool_config (d->p)->destage_age_ms;
    active = want && ci.used * 100 > ci.log_size * DESTAGE_LOW_PCT;
    if (!want || backoff) {
      clock_gettime (CLOCK_REALTIME, &ts);
      ts.tv_nsec += (backoff ? 1000 : 100) * 1000000L;
      ts.tv_sec += ts.tv_nsec / 1000000000L;
      ts.tv_nsec %= 1000000000L;
      pthread_cond_timedwait (&d->kick, &d->lock, &ts);
      backoff = 0;
      continue;
    }
    pthread_mutex_unlock (&d->lock);
    n = cache_destage (d->c, BATCH, &sink);
    pthread_mutex_lock (&d->lock);
    if (n < 0) {
      int e = errno ? errno : EIO;
      uint64_t t = util_now_ms ();
      if (!d->failed) {
        fprintf (stderr, "strata: pool %s: destage: %s (retrying)\n",
                 pool_config (d->p)->name, strata_last_error ());
        d->failed_since = t;
      }
      snprintf (d->why, sizeof d->why, "%s", strata_last_error ());
      d->failed = true;
      d->rate = d->win_bytes = 0;
      d->win_start = t;
      /* Writers waiting for room would wait for as long as this lasts
       * (a member full or gone): past the drain's patience, they fail
       * with its error instead. */
      if (t - d->failed_since >= DESTAGE_DRAIN_GIVE_UP_MS) {
        if (!d->stuck)
          fprintf (stderr, "strata: pool %s: destage has failed for %u s: "
                   "writes that find the cache full fail until it works "
                   "again\n", pool_config (d->p)->name,
                   DESTAGE_DRAIN_GIVE_UP_MS / 1000);
        cache_set_stuck (d->c, e, d->why);
        d->stuck = true;
      }
      backoff = 1;
      cache_info (d->c, &ci);
      if (ci.mirrors == 0) {
        pthread_mutex_unlock (&d->lock);
        pool_cache_lost (d->p);
        pthread_mutex_lock (&d->lock);
      }
    }
    else if (n > 0 || !d->failed) {
      /* (A batch with nothing to take, a record still being written at
       * the front, says nothing either way.) */
      uint64_t t = util_now_ms ();
      if (d->stuck) {
        fprintf (stderr, "strata: pool %s: destage works again\n",
                 pool_config (d->p)->name);
        cache_set_stuck (d->c, 0, NULL);
        d->stuck = false;
      }
      d->failed = false;
      d->win_bytes += n;
      if (t - d->win_start >= 2000) {
        d->rate = d->win_bytes * 1000 / (t - d->win_start);
        d->win_start = t;
        d->win_bytes = 0;
      }
    }
    pthread_cond_broadcast (&d->progress);
  }
  pthread_mutex_unlock (&d->lock);
  return NULL;
}

struct destager *
destage_start (struct pool *p)
{
  struct destager *d;
  size_t nw = 0;

  errno = 0;
  if (!pool_cache (p) || !pool_writable (p))
    return NULL;
  if (!(d = calloc (1, sizeof *d))) {
    strata_error (ENOMEM, "out of memory");
    return NULL;
  }
  d->p = p;
  d->c = pool_cache (p);
  d->win_start = util_now_ms ();
  pthread_mutex_init (&d->lock, NULL);
  pthread_cond_init (&d->kick, NULL);
  pthread_cond_init (&d->progress, NULL);
  pthread_cond_init (&d->work, NULL);
  pthread_cond_init (&d->idle, NULL);
  for (nw = 0; nw < WORKERS; nw++)
    if ((errno = pthread_create (&d->workers[nw], NULL, worker, d)) != 0)
      goto fail;
  if ((errno = pthread_create (&d->thread, NULL, destage_thread, d)) != 0)
    goto fail;
  pool_set_destager (p, d);
  return d;

 fail:
  strata_error (errno, "starting the destager: %m");
  pthread_mutex_lock (&d->lock);
  d->wstop = true;
  pthread_cond_broadcast (&d->work);
  pthread_mutex_unlock (&d->lock);
  for (size_t i = 0; i < nw; i++)
    pthread_join (d->workers[i], NULL);
  free (d);
  return NULL;
}

void
destage_stop (struct destager *d)
{
  if (!d)
    return;
  pthread_mutex_lock (&d->lock);
  d->stop = true;
  pthread_cond_broadcast (&d->kick);
  pthread_mutex_unlock (&d->lock);
  /* The thread finishes its batch (the workers are still there). */
  pthread_join (d->thread, NULL);
  pthread_mutex_lock (&d->lock);
  d->wstop = true;
  pthread_cond_broadcast (&d->work);
  pthread_mutex_unlock (&d->lock);
  for (size_t i = 0; i < WORKERS; i++)
    pthread_join (d->workers[i], NULL);
  pool_set_destager (d->p, NULL);
  free (d->q);
  free (d->vols);
  pthread_mutex_destroy (&d->lock);
  pthread_cond_destroy (&d->kick);
  pthread_cond_destroy (&d->progress);
  pthread_cond_destroy (&d->work);
  pthread_cond_destroy (&d->idle);
  free (d);
}

int
destage_drain (struct destager *d,
               void (*progress) (void *opaque, uint64_t done, uint64_t total),
               void *opaque)
{
  struct cache_info ci;
  uint64_t start, target, last = 0, tail = 0, stuck = 0;
  int r = 0;

  cache_info (d->c, &ci);
  start = ci.tail;
  target = ci.head;
  pthread_mutex_lock (&d->lock);
  d->drains++;
  pthread_cond_broadcast (&d->kick);
  for (;;) {
    struct timespec ts;
    uint64_t t;
    cache_info (d->c, &ci);
    if (ci.tail >= target)
      break;
    if (pool_cache_dead (d->p) || ci.mirrors == 0 || d->stop) {
      r = strata_error (EIO, "the cache failed while it was being flushed%s%s",
                        d->failed ? ": " : "", d->failed ? d->why : "");
      break;
    }
    t = util_now_ms ();
    /* Writing back that keeps failing (a member full or gone) fails the
     * drain; what is not written back stays in the cache. */
    if (!d->failed || ci.tail != tail)
      stuck = t;
    tail = ci.tail;
    if (t - stuck >= DESTAGE_DRAIN_GIVE_UP_MS) {
      r = strata_error (EIO, "writing back has failed for %u s: %s; what "
                        "is not written back stays in the cache",
                        DESTAGE_DRAIN_GIVE_UP_MS / 1000, d->why);
      break;
    }
    if (progress && t - last >= 1000) {
      pthread_mutex_unlock (&d->lock);
      progress (opaque, ci.tail - start, target - start);
      pthread_mutex_lock (&d->lock);
      last = t;
    }
    clock_gettime (CLOCK_REALTIME, &ts);
    ts.tv_nsec += 200 * 1000000L;
    ts.tv_sec += ts.tv_nsec / 1000000000L;
    ts.tv_nsec %= 1000000000L;
    pthread_cond_timedwait (&d->progress, &d->lock, &ts);
  }
  d->drains--;
  pthread_mutex_unlock (&d->lock);
  if (r == 0 && progress)
    progress (opaque, target - start, target - start);
  return r;
}

bool
destage_error (struct destager *d, char *buf, size_t len)
{
  bool r;

  pthread_mutex_lock (&d->lock);
  r = d->failed;
  if (r)
    snprintf (buf, len, "%s", d->why);
  pthread_mutex_unlock (&d->lock);
  return r;
}

uint64_t
destage_rate (struct destager *d)
{
  uint64_t r;

  pthread_mutex_lock (&d->lock);
  r = d->rate;
  if (util_now_ms () - d->win_start > 4000)
    r = 0;			/* idle */
  pthread_mutex_unlock (&d->lock);
  return r;
}
