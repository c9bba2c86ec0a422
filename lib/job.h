/* strata: what scrub and rebuild share as long jobs.
 *
 * A job keeps its record (struct meta_job) in the journal: it commits it
 * when it starts, about once a second while it runs, and when it ends,
 * so a job stopped by anything (kill -9 included) knows where to go on
 * from, and status can show how far a job got and what it found.  A job
 * also limits its rate of device I/O, draws a progress bar, and stops at
 * its next step when cancelled (pool_job_cancel()).
 */
#ifndef STRATA_JOB_H
#define STRATA_JOB_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/types.h>

#include "pool.h"

#define JOB_SAVE_INTERVAL 1.0	/* seconds between progress commits */
/* The default --rate of scrub and rebuild in the serving process (device
 * bytes per second), so that clients keep most of their throughput;
 * also the rate of the rebuilds the server starts by itself (resync.c).
 * Offline there is no limit. */
#define JOB_ONLINE_RATE (100ull << 20)

struct job {
  struct pool *p;
  uint8_t kind;			/* enum meta_job_kind */
  const char *name;		/* "scrub", "rebuild" */
  struct meta_job rec;		/* the record, as the job updates it */
  uint64_t rate;		/* device bytes per second; 0: no limit */
  const char *unit;		/* what rec.done counts: "bytes", "columns" */
  FILE *err;			/* progress goes here */
  bool bar;			/* a terminal: redraw one line */
  const _Atomic int *quit;	/* also stop once this is non-zero (or NULL) */
  /* This run. */
  double t0, last_save, last_show;
  uint64_t io;			/* device bytes read and written */
  uint64_t done0;		/* rec.done when the run started */
};

/* Set up J for a run of kind KIND on P.  The caller fills in J->rec. */
void job_init (struct job *j, struct pool *p, uint8_t kind, const char *name,
               const char *unit, uint64_t rate, FILE *err, bool bar);

/* Commit the record now (FORCE) or if JOB_SAVE_INTERVAL has passed since
 * the last commit.  Returns 0 or -1.  Jobs with several workers call it
 * under their lock, across the journal commit: the records then reach
 * the journal in the order they were made, and the others wait for it
 * (at most once a second) only between steps, holding no column. */
int job_save (struct job *j, bool force);

/* After a step that moved IO_BYTES of device data: count it, show
 * progress, and return the time (job_pace's clock) at which the I/O so
 * far fits the rate limit.  Jobs with several workers call it under
 * their lock and job_pace() after dropping it, so that a worker waiting
 * for the lock with a column held never waits out another's sleep. */
double job_account (struct job *j, uint64_t io_bytes);
/* Sleep until DUE, waking early if J is cancelled: at a low rate the
 * wait can be long, and a stop must not wait it out. */
void job_pace (struct job *j, double due);

/* Whether the job should stop (cancelled, its QUIT set, or the pool is
 * closing). */
bool job_cancelled (struct job *j);

/* End the progress display (a newline after a bar). */
void job_progress_done (struct job *j);

/* The end of a run.  job_end() saves the record: finished (DONE), or as
 * it is, still "running", so that the next run continues it.  Returns 0,
 * or -1 if a finished run's record could not be saved.  After the
 * report, job_stopped() sets the error of a run that did not finish:
 * WHY, the failed step's error, or "stopped" when WHY is NULL (it was
 * cancelled).  Returns -1. */
int job_end (struct job *j, bool finished);
int job_stopped (struct job *j, const char *why);

/* Seconds of this run, and device bytes per second. */
double job_elapsed (struct job *j);

/* The volumes a job visits, in id order: all of them if VOL is 0, else
 * the one with that id.  *OUT is malloc'd (free it).  Returns the count,
 * or -1 on ENOMEM. */
struct job_volume {
  uint32_t id;
  char name[FORMAT_NAME_MAX];
};
ssize_t job_volumes (struct pool *p, uint32_t vol, struct job_volume **out);

/* Unix time now. */
uint64_t job_now (void);

#endif /* STRATA_JOB_H */
