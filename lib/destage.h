/* strata: the destager: writes the cache's dirty blocks back to the
 * members, in the background.
 *
 * One thread decides when (watermarks on the log's use, and an age
 * limit so that nothing stays dirty for long) and calls cache_destage();
 * the writes of a batch go out from a pool of workers at once, each
 * through volume_destage_write(), and the batch ends with a flush of
 * the members before the cache's clean point moves.
 */
#ifndef STRATA_DESTAGE_H
#define STRATA_DESTAGE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "pool.h"

struct destager;

#define DESTAGE_HIGH_PCT 50	/* destage while the log is this full ... */
#define DESTAGE_LOW_PCT 25	/* ... down to this, and whatever is older
				   than cache.destage_age (config.h) */

/* Start the destager of P's cache (pool_set_destager() names it).
 * NULL with a message on failure; NULL without one (errno 0) if the
 * pool has no cache. */
struct destager *destage_start (struct pool *p);
/* Stop it (what is dirty stays in the cache, durable) and free it. */
void destage_stop (struct destager *d);

/* Destage everything written before the call.  PROGRESS (if not NULL)
 * is called about once a second with the log bytes done and to do.
 * Returns 0, or -1 with a message: the cache failed, or writing back
 * failed for DESTAGE_DRAIN_GIVE_UP_MS with no progress (the destager
 * goes on trying). */
#define DESTAGE_DRAIN_GIVE_UP_MS 10000
int destage_drain (struct destager *d,
                   void (*progress) (void *opaque, uint64_t done,
                                     uint64_t total),
                   void *opaque);

/* Did the last batch fail (the destager retries)?  If so, why, in BUF. */
bool destage_error (struct destager *d, char *buf, size_t len);

/* Bytes of log destaged per second, over the last few seconds. */
uint64_t destage_rate (struct destager *d);

#endif /* STRATA_DESTAGE_H */
