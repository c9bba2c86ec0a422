/* strata: the raft-lite metadata journal.
 *
 * Every metadata change is an entry (type + payload) with a term, an
 * index and a checksum.  journal_append() puts entries in a log record
 * written to every live metadata replica at once; the record is
 * committed when a majority has it on stable storage (FUA), and only
 * then are the entries applied (ops->apply) and the callers woken.
 * Concurrent callers share one record and one flush (group commit).
 *
 * When the log region is half full the state is checkpointed
 * (ops->snapshot) into the replica's spare checkpoint slot and published
 * by its header; the log then starts again.
 *
 * journal_open() reads every replica it can, needs a majority of them to
 * hold a valid checkpoint, and recovers the replica whose log is the
 * most up to date by (last term, last index), as raft elects a leader.
 * Opened for writing, it starts a new term and writes a fresh checkpoint
 * to every replica, which repairs lagging, torn or wiped copies.
 *
 * Thread safety: journal_append() may be called by any number of threads.
 * ops->apply and ops->snapshot are called with the journal's lock held,
 * one at a time, in index order.
 */
#ifndef STRATA_JOURNAL_H
#define STRATA_JOURNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "device.h"
#include "format.h"

struct journal;

struct journal_ops {
  /* Apply an entry to the state.  Returns 0 or -1 (corruption). */
  int (*apply) (void *opaque, uint16_t type, const void *data, size_t len);
  /* Serialise the whole state.  Returns 0 or -1. */
  int (*snapshot) (void *opaque, struct fbuf *out);
  /* Replace the state with a checkpoint.  Returns 0 or -1. */
  int (*load) (void *opaque, const void *data, size_t len);
};

/* One metadata replica: the metadata area of a device. */
struct journal_member {
  struct device *dev;
  const char *name;		/* for messages */
  uint64_t meta_off;
  uint64_t meta_size;
};

struct journal_item {
  uint16_t type;
  uint32_t len;
  const void *data;
};

#define JOURNAL_WRITE 0x1

enum journal_replica_state { JOURNAL_R_LIVE, JOURNAL_R_LAGGING,
                             JOURNAL_R_DAMAGED };

struct journal_replica_info {
  const char *name;
  int state;			/* enum journal_replica_state */
  uint64_t last_index;		/* as found at open (or written since) */
  bool repaired;		/* was behind or damaged at open, rewritten */
  char problem[160];		/* why it was damaged or lagging, or "" */
};

/* Write an empty journal holding the checkpoint CKPT/LEN (index 0) to
 * every member.  Used by pool creation.  Returns 0 or -1. */
int journal_format (const struct journal_member *members, size_t n,
                    const uint8_t pool_uuid[16], const void *ckpt,
                    size_t len);

/* Recover the journal from MEMBERS (see above).  Loads the state through
 * OPS.  With JOURNAL_WRITE, starts a new term and repairs the replicas.
 * Returns NULL with errno and a message naming every unreadable replica
 * when fewer than a majority are usable.  MEMBERS is copied; the devices
 * must outlive the journal. */
struct journal *journal_open (const struct journal_member *members, size_t n,
                              const uint8_t pool_uuid[16], unsigned flags,
                              const struct journal_ops *ops, void *opaque);

void journal_close (struct journal *j);

/* Commit N entries in one record and apply them.  Blocks until they are
 * durable on a majority.  Returns 0, or -1 with errno (EIO when the
 * majority is lost; the journal then refuses every later append). */
int journal_append (struct journal *j, const struct journal_item *items,
                    size_t n);

/* The device of the replica at position POS (journal_info() order) is
 * back, as M describes it (its device, and where its metadata region is,
 * from its superblock): a member that failed, or was missing when the
 * journal was opened.  Unless the replica is live, its two header slots
 * are cleared, so that no header of its own can outrank what it gets
 * next, and a checkpoint written to every replica brings it up to date;
 * it then counts towards the majority of every commit again.  Returns 0,
 * or -1 with a message (the replica stays out of the commits). */
int journal_rejoin (struct journal *j, size_t pos,
                    const struct journal_member *m);

/* Change which devices hold the journal, one replica at a time (raft's
 * single-server change: any majority of the old set and any majority of
 * the new one share a replica).  With ADD, that member becomes the last
 * replica: its two header slots are cleared and it receives a fresh
 * checkpoint along with every other replica.  With DROP >= 0, the
 * replica at that position (journal_info() order) stops being one.
 * PUBLISH (ARG) then makes the new set durable where journal_open()'s
 * caller finds it (the pool's superblocks) and returns 0 or -1; it runs
 * with no record in flight and none written until it returns.  Only if
 * it succeeds does the journal switch to the new set.  Returns 0, or -1
 * with a message and the old set in use.  Not with both ADD and DROP. */
int journal_reconfigure (struct journal *j, const struct journal_member *add,
                         int drop, int (*publish) (void *arg), void *arg);

/* Name the replica at POS NAME in messages and journal_info() (a member
 * missing at open is named once the metadata says which it is).  NAME
 * must outlive the journal. */
void journal_name_replica (struct journal *j, size_t pos, const char *name);

/* Write a checkpoint now.  Returns 0 or -1. */
int journal_checkpoint (struct journal *j);

uint64_t journal_term (struct journal *j);
uint64_t journal_last_index (struct journal *j);
/* Apply ITEMS to the state in memory without committing them, for a
 * change that must hold in memory even though the journal refused it
 * (copies made stale: they must not be read meanwhile).  They become
 * durable with the next checkpoint, such as the one that starts a new
 * term once a majority answers again; a crash before that loses them,
 * which must be safe.  Returns 0, or -1 if one does not apply. */
int journal_apply_unlogged (struct journal *j,
                            const struct journal_item *items, size_t n);

/* Whether the journal has failed (a majority of replicas could not be
 * written, or a checkpoint failed): its errno, with why in WHY, or 0. */
int journal_failed (struct journal *j, char *why, size_t len);
/* The smallest checkpoint slot of the replicas (*CKPT_ROOM) and the
 * largest metadata area (*META_SIZE), in bytes; either may be NULL. */
void journal_meta_room (struct journal *j, uint64_t *ckpt_room,
                        uint64_t *meta_size);
uint64_t journal_commits (struct journal *j);
/* How many times the journal healed (a new term on a majority after
 * it had failed) since it was opened. */
uint64_t journal_heals (struct journal *j);

/* Fill up to MAX entries of OUT; returns the number of replicas. */
size_t journal_info (struct journal *j, struct journal_replica_info *out,
                     size_t max);

#endif /* STRATA_JOURNAL_H */
