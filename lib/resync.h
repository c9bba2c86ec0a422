/* strata: dirty columns, checksum write-back and crash resync.
 *
 * A column is dirty in the journal (meta_chunk.dirty) while its replicas
 * may differ from each other or from the checksum slots on disk: from
 * before the first write to it until the cleaner has written its
 * checksums to every replica, flushed, and committed it clean.  After an
 * unclean stop, only dirty columns need resync: block by block, where
 * the replicas differ, one copy is kept (the one matching the block's
 * last checksum on disk, else the one most replicas hold, else the
 * first), the others are made identical to it, and the checksums are
 * computed from the data kept.  That is also why a crash in the middle
 * of a write never shows up as a checksum error afterwards.
 *
 * Steady writing costs no commits: a column stays dirty while it is being
 * written, and the cleaner only cleans columns left alone for a whole
 * pass (RESYNC_INTERVAL).  A new chunk is dirty from its allocation
 * entry on, so first writes cost no extra commit either.
 *
 * This is part of the pool: pool_open() (writable) runs resync_recover()
 * and pool_close() a last resync_clean().
 */
#ifndef STRATA_RESYNC_H
#define STRATA_RESYNC_H

#include <stdbool.h>
#include <stdint.h>

#include "pool.h"

#define RESYNC_INTERVAL 5	/* seconds between cleaner passes */
#define RESYNC_TICK_MS 500	/* between checks of the checksum memory */

struct resync;

struct resync *resync_new (struct pool *p);
void resync_free (struct resync *r);

/* Before writing column COL of chunk C (index IDX of volume V): count
 * the write in, load its checksum array if it is not in memory (the
 * count keeps it there: csum.h), and make sure the column is dirty in
 * the journal (one group commit shared
 * by concurrent callers).  Returns 0, or -1 with
 * errno if the commit failed; the write must then not be made (the
 * caller still calls resync_write_end).  The caller holds the volume's
 * io_lock shared, so C cannot be freed meanwhile. */
int resync_write_begin (struct resync *r, struct meta_volume *v,
                        uint64_t idx, struct meta_chunk *c, uint32_t col);
void resync_write_end (struct meta_chunk *c, uint32_t col);

/* Before the extents of chunks to be freed are zeroed (pool.c): the
 * chunks IDX[k] of V with OK[k] are written like any other, so that a
 * zeroing left unfinished (a crash, the free's commit refused) never
 * leaves checksums that do not describe the data.  Counts a writer on
 * each of their columns (which keeps the cleaner off them and their
 * arrays in memory), then makes every one that is clean dirty, in one
 * commit.  Arrays not in memory are not loaded: a dirty column without
 * one reads as zeros (csum.h), which is what a zeroed chunk holds.
 * WAS_CLEAN[k] gets the mask of chunk IDX[k]'s columns made dirty here.
 * Returns 0, or -1 if that commit failed (nothing is then counted, and
 * the chunks must not be touched).  The caller holds V's io_lock
 * exclusive, so no other request uses the chunks meanwhile. */
int resync_free_begin (struct resync *r, struct meta_volume *v,
                       const uint64_t *idx, size_t n, const bool *ok,
                       uint64_t *was_clean);

/* After the zeroing, for the chunks with COUNTED[k]: the arrays of
 * those with ZEROED[k] (zeroed on every copy) now say zero blocks; in
 * the others (a zeroing failed: some copies hold their data still),
 * the columns resync_free_begin() made dirty (WAS_CLEAN) get their
 * arrays from their slots if they were not in memory.  Then the
 * writers are let go.  Called before the chunks' free is committed,
 * which frees their headers. */
void resync_free_end (struct resync *r, struct meta_volume *v,
                      const uint64_t *idx, size_t n, const bool *counted,
                      const bool *zeroed, const uint64_t *was_clean);

/* A cleaner pass (see above); with ALL, every dirty column not being
 * written right now (a clean stop).  Returns the number of columns
 * cleaned, or -1 with errno. */
int resync_clean (struct resync *r, bool all);

/* Run resync_clean() every RESYNC_INTERVAL seconds in a thread, and
 * csum_shrink() every RESYNC_TICK_MS; in another, the catcher, try the
 * devices that are away every RESYNC_INTERVAL (pool_rejoin_away), and
 * copy again what those that come back missed. */
int resync_start (struct resync *r);
void resync_stop (struct resync *r);

/* Why the catcher's rebuild stops (rebuild_opts.quit). */
enum { RESYNC_CATCH_RUN, RESYNC_CATCH_STOP, RESYNC_CATCH_YIELD };

/* A rebuild started by a command needs the job the catcher's holds:
 * stop that one, which tries its device again once the command's has
 * ended, and wait until it has let the job go.  Returns true if there
 * was one to stop. */
bool resync_catch_yield (struct resync *r);

/* Make the replicas and checksums of every column that is dirty in the
 * journal agree (see above), then commit them clean.  A replica that
 * cannot be read meanwhile is failed.  A column with no copy that can
 * be used stays dirty, and is neither read nor written until
 * resync_returned() reaches it.  Returns 0 or -1. */
int resync_recover (struct resync *r);

/* The same for the columns resync_recover() could not reach (no copy on
 * a usable device: they are not read or written meanwhile) and that can
 * be reached now, after a device came back.  Returns 0 or -1. */
int resync_returned (struct resync *r);

/* What crash resync did since open (resync_recover, resync_returned). */
struct resync_stats {
  uint64_t columns;		/* dirty columns resynced */
  uint64_t bytes;		/* bytes rewritten on replicas that differed */
  uint64_t cleaned;		/* columns committed clean since open */
};
void resync_stats (struct resync *r, struct resync_stats *st);

#endif /* STRATA_RESYNC_H */
