/* strata: the extent allocator.
 *
 * Keeps a free bitmap per device and places the extents of a new chunk:
 * the replicas of a column on distinct devices (always) and in distinct
 * failure domains (whenever enough domains have space), the columns of a
 * chunk over as many devices as possible, and otherwise devices chosen
 * at random weighted by their free capacity.
 *
 * The allocator is in-memory only: it is rebuilt from the metadata state
 * at open (alloc_mark_used) and the journal records what it hands out.
 * All functions are thread-safe (one internal mutex; allocation is on the
 * metadata path, not the I/O path).
 */
#ifndef STRATA_ALLOC_H
#define STRATA_ALLOC_H

#include <stdbool.h>
#include <stdint.h>

#include "meta.h"

struct alloc;

/* A new allocator for the devices of M, every extent free.  SEED makes
 * placement repeatable in tests (0: random).  NULL on ENOMEM. */
struct alloc *alloc_new (const struct meta *m, uint64_t seed);
void alloc_free (struct alloc *a);

/* A device added to the pool (DEV_ADD committed): DEV must be the next
 * index.  Its extents are free; it is usable if MD's state is up.
 * Returns 0, or -1 (ENOMEM, EINVAL). */
int alloc_add_device (struct alloc *a, uint32_t dev,
                      const struct meta_device *md);

/* Mark one extent used (building from state).  -1 with EBADMSG if it
 * is out of range or already used. */
int alloc_mark_used (struct alloc *a, struct meta_extent e);

/* Mark every extent of every chunk of every volume of M used. */
int alloc_load (struct alloc *a, struct meta *m);

/* Exclude or include device DEV in future placements (failed devices). */
void alloc_set_usable (struct alloc *a, uint32_t dev, bool usable);

/* Choose WIDTH * REPLICAS extents for a chunk, column-major, into OUT.
 * CLASS "" means any class.  Returns 0, or -1 with ENOSPC and a message
 * saying what is short. */
int alloc_chunk (struct alloc *a, uint32_t width, uint32_t replicas,
                 const char *class, struct meta_extent *out);

/* Choose one extent for a new copy of a column whose other copies are
 * the NKEEP extents of KEEP: on a usable device that holds none of them,
 * in a failure domain none of them is in where one has space; device
 * PREFER if it qualifies (and shares no domain with them), when it is
 * not -1.  Returns 0, or -1 with ENOSPC and a message. */
int alloc_replica (struct alloc *a, const char *class,
                   const struct meta_extent *keep, uint32_t nkeep,
                   int32_t prefer, struct meta_extent *out);

/* Return N extents to the free pool. */
void alloc_release (struct alloc *a, const struct meta_extent *ext, size_t n);

/* Free extents on DEV, and extents in use. */
uint64_t alloc_free_count (struct alloc *a, uint32_t dev);
uint64_t alloc_used_count (struct alloc *a, uint32_t dev);

#endif /* STRATA_ALLOC_H */
