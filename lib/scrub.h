/* strata: scrub, the check of every stored copy against its checksums.
 *
 * scrub_run() reads every allocated block of every usable copy of every
 * column (of one volume or of all), checks it against the column's
 * checksums, and checks each copy's checksum slot too.  With repair, a
 * copy that does not match is rewritten from one that does.  A block no
 * copy of which matches is reported and left alone: scrub never
 * overwrites data it cannot prove wrong with data it cannot prove right.
 *
 * It runs in the serving process (online: each of a few workers holds
 * one column at a time against writes, reads go on) or on a pool the
 * CLI opened, rate-limited, reading past the page cache (dev_req.media),
 * and records its place in the journal (job.h): a scrub that was stopped
 * in any way continues there the next time it is asked to run, unless
 * told to restart.
 */
#ifndef STRATA_SCRUB_H
#define STRATA_SCRUB_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "pool.h"

struct scrub_opts {
  const char *volume;		/* NULL: every volume */
  bool repair;
  bool restart;			/* do not continue an interrupted scrub */
  bool json;			/* the report as JSON on OUT */
  bool bar;			/* progress bar on ERR (a terminal) */
  uint64_t rate;		/* device bytes per second; 0: no limit */
};

/* Run a scrub and print its report to OUT.  Returns 0 if every copy
 * checked is good (or was repaired), 1 if problems remain, -1 on failure
 * (message in strata_last_error()). */
int scrub_run (struct pool *p, const struct scrub_opts *o, FILE *out,
               FILE *err);

#endif /* STRATA_SCRUB_H */
