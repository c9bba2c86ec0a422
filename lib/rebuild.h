/* strata: rebuild, new copies for the columns that lost some.
 *
 * rebuild_run() finds every column with a copy on a failed or removed
 * device (or on the device being drained) and gives it a new copy on a
 * usable device, in a failure domain its other copies are not in while
 * the pool has one: columns with the fewest surviving copies first.
 * A stale copy on a usable device (one that missed writes while its
 * device was away, meta.h) gets the column copied to it again in place;
 * with RESYNC set, that is all it does, for that device only (strata
 * device add of a member that comes back).  A failed device that holds
 * no copy at the end of a full rebuild has been replaced: it is marked
 * removed, and can never come back.  It
 * copies only allocated extents, verifying every block against its
 * checksum on the way (a bad block is taken from another copy), and
 * publishes the new copy with one journal entry only once the data is
 * durable.  Writes to the column wait meanwhile; reads do not.
 *
 * Like scrub it runs online or offline, rate-limited, records its
 * progress in the journal and shows a progress bar.  It is naturally
 * resumable: a column whose new copy was not yet published is simply
 * done again, and one that was is no longer under-replicated.
 */
#ifndef STRATA_REBUILD_H
#define STRATA_REBUILD_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "pool.h"

struct rebuild_opts {
  bool json;			/* the report as JSON on OUT */
  bool bar;			/* progress bar on ERR */
  uint64_t rate;		/* device bytes per second; 0: no limit */
  int32_t drain;		/* also move every copy off this device (-1) */
  int32_t prefer;		/* put new copies here where possible (-1) */
  int32_t resync;		/* only this device's stale copies (-1) */
  /* Started by the server itself, not by a command (resync.c, for a
   * device that rejoined): no report and no job record when there is
   * nothing to do, else one line on OUT when it starts and one when it
   * ends, for the server's log.  QUIT, once non-zero, stops it:
   * RESYNC_CATCH_STOP, the server is stopping; RESYNC_CATCH_YIELD, a
   * rebuild started by a command takes its place. */
  bool background;
  const _Atomic int *quit;
};

/* Run a rebuild and print its report to OUT.  One started by a command
 * while the server's own runs stops that one first (resync.c), and
 * does what it had left.  Returns 0 if every column
 * has all its copies afterwards, 1 if some could not be given one (no
 * space, no copy left), -1 on failure (strata_last_error()). */
int rebuild_run (struct pool *p, const struct rebuild_opts *o, FILE *out,
                 FILE *err);

#endif /* STRATA_REBUILD_H */
