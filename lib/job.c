/* strata: long jobs (see job.h). */
#include <errno.h>
#include <inttypes.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "error.h"
#include "job.h"
#include "util.h"

static double
mono (void)
{
  struct timespec ts;

  clock_gettime (CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec / 1e9;
}

uint64_t
job_now (void)
{
  return (uint64_t) time (NULL);
}

void
job_init (struct job *j, struct pool *p, uint8_t kind, const char *name,
          const char *unit, uint64_t rate, FILE *err, bool bar)
{
  *j = (struct job) { .p = p, .kind = kind, .name = name, .unit = unit,
                      .rate = rate, .err = err, .bar = bar };
  j->t0 = j->last_save = j->last_show = mono ();
}

int
job_save (struct job *j, bool force)
{
  double now = mono ();

  if (!force && now - j->last_save < JOB_SAVE_INTERVAL)
    return 0;
  j->last_save = now;
  j->rec.updated = job_now ();
  if (pool_commit_job (j->p, j->kind, &j->rec) == -1)
    return strata_error_prefix ("%s: saving progress", j->name);
  return 0;
}

double
job_elapsed (struct job *j)
{
  return mono () - j->t0;
}

static void
show (struct job *j, double now)
{
  const struct meta_job *r = &j->rec;
  double frac = r->total ? (double) r->done / r->total : 1.0;
  double el = now - j->t0, speed = el > 0 ? j->io / el : 0;
  uint64_t run = r->done - j->done0;
  char a[32], b[32], c[32], left[32] = "";
  int fill = frac * 30;

  if (frac > 1)
    frac = 1;
  if (run > 0 && r->total > r->done && el > 0.5) {
    double secs = (r->total - r->done) * el / run;
    snprintf (left, sizeof left, ", %d:%02d left", (int) secs / 60,
              (int) secs % 60);
  }
  if (j->unit[0] == 'b')
    snprintf (a, sizeof a, "%s of %s", util_human_size (r->done, b, sizeof b),
              util_human_size (r->total, c, sizeof c));
  else
    snprintf (a, sizeof a, "%" PRIu64 " of %" PRIu64 " %s", r->done,
              r->total, j->unit);
  util_human_size (speed, b, sizeof b);
  if (j->bar)
    fprintf (j->err, "\r%s [%-30.*s] %3d%%  %s  %s/s%s  \033[K", j->name,
             fill, "==============================", (int) (frac * 100), a,
             b, left);
  else
    fprintf (j->err, "%s: %d%%  %s  %s/s%s\n", j->name, (int) (frac * 100),
             a, b, left);
  fflush (j->err);
}

double
job_account (struct job *j, uint64_t io_bytes)
{
  double now = mono ();

  j->io += io_bytes;
  if (now - j->last_show >= (j->bar ? 0.25 : 10.0)) {
    j->last_show = now;
    show (j, now);
  }
  return j->rate ? j->t0 + (double) j->io / j->rate : 0;
}

void
job_pace (struct job *j, double due)
{
  for (double d = due - mono (); d > 0 && !job_cancelled (j);
       d = due - mono ()) {
    double step = MIN (d, 0.1);
    struct timespec ts = { (time_t) step,
                           (long) ((step - (time_t) step) * 1e9) };
    nanosleep (&ts, NULL);
  }
}

void
job_progress_done (struct job *j)
{
  if (j->bar) {
    show (j, mono ());
    fputc ('\n', j->err);
    fflush (j->err);
  }
}

int
job_end (struct job *j, bool finished)
{
  if (finished)
    j->rec.state = META_JOB_DONE;
  if (job_save (j, true) == -1 && finished)
    return -1;
  return 0;
}

int
job_stopped (struct job *j, const char *why)
{
  if (why)
    return strata_error (EIO, "%s", why);
  return strata_error (EINTR, "%s stopped; run it again to continue",
                       j->name);
}

bool
job_cancelled (struct job *j)
{
  return pool_job_cancelled (j->p, j->kind)
    || (j->quit && atomic_load (j->quit));
}

static int
by_id (const void *a, const void *b)
{
  const struct job_volume *x = a, *y = b;

  return x->id < y->id ? -1 : x->id > y->id;
}

ssize_t
job_volumes (struct pool *p, uint32_t vol, struct job_volume **out)
{
  struct meta *m = pool_meta (p);
  struct job_volume *v;
  size_t n = 0;

  pthread_mutex_lock (&m->lock);
  v = calloc (m->nvolumes + 1, sizeof *v);
  if (!v) {
    pthread_mutex_unlock (&m->lock);
    return strata_error (ENOMEM, "out of memory");
  }
  for (size_t i = 0; i < m->nvolumes; i++)
    if (vol == 0 || m->volumes[i]->id == vol) {
      v[n].id = m->volumes[i]->id;
      memcpy (v[n].name, m->volumes[i]->name, sizeof v[n].name);
      n++;
    }
  pthread_mutex_unlock (&m->lock);
  qsort (v, n, sizeof *v, by_id);
  *out = v;
  return n;
}
