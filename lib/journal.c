/* strata: raft-lite metadata journal (see journal.h).
 *
 * Design notes
 * ------------
 * On-disk layout and commit points are in format.h.  Every live replica
 * holds an identical log: records are written at the same offset (tail)
 * on all of them, so one tail describes them all.  A replica whose write
 * fails becomes "lagging" and receives no more records until the next
 * checkpoint rewrites it; its own copy stays self-consistent (old
 * checkpoint, old log) so it can never look more up to date than it is.
 * While its device is present (and, if remote, connected), a commit
 * writes that checkpoint early, a second after the replica fell behind,
 * then at doubling gaps while it keeps failing (retry_due): a write
 * that failed once must not leave the journal one failure from losing
 * its majority until the log happens to fill.
 *
 * Recovery compares replicas by (last term, last index).  Opening for
 * writing then records a new term in a checkpoint that stands for an
 * implicit no-op entry at last_index + 1, so a replica that missed that
 * open can never win against the ones that saw it, even if nothing else
 * was written in the new term.
 *
 * A commit that reaches fewer than a majority leaves the journal
 * failed (sticky): no entry is applied or acknowledged from then on.
 * It heals in place (heal_locked) the way an open starts a term: a
 * checkpoint of the state in memory, which is exactly what was
 * committed, under a new term, written once a lagging replica answers
 * again; a majority taking it makes the journal whole.  An entry the
 * failed commit left on a minority is of the older term and loses.
 *
 * Torn writes: a record is valid only if its header and payload
 * checksums match, its log_id is the current generation's and its first
 * index follows the previous record; scanning stops at the first record
 * that is not.  A torn checkpoint is never referenced (its header is
 * written after it), and a torn header leaves the other slot.
 */
#include <endian.h>
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "crc32c.h"
#include "error.h"
#include "journal.h"
#include "util.h"

#define MAX_RECORD (1u << 20)	/* bytes of one log record at most */

struct jentry {
  uint64_t index, term;
  uint16_t type;
  uint32_t len;
  const uint8_t *data;
};

struct jreplica {
  struct journal_member m;
  struct format_meta_layout lay;
  int state;			/* enum journal_replica_state */
  uint32_t hdr_slot;		/* slot holding the current header */
  uint32_t ckpt_slot;		/* slot holding the current checkpoint */
  uint64_t seq;			/* seq of the current header */
  uint64_t last_index;
  bool repaired;
  char problem[160];

  /* Recovery view, freed after open. */
  bool valid;
  uint8_t *ckpt;		/* header + payload, as read */
  size_t ckpt_len;		/* payload bytes */
  uint64_t ckpt_index, ckpt_term, last_term, max_term;
  uint8_t *log;
  struct jentry *entries;
  size_t nentries;
};

struct waiter {
  const struct journal_item *items;
  size_t n;
  bool done;
  int result;			/* 0 or an errno */
  struct waiter *next;
};

struct journal {
  pthread_mutex_t lock;		/* protects everything below */
  pthread_cond_t cond;		/* signalled when a commit finishes */
  const struct journal_ops *ops;
  void *opaque;
  uint8_t pool_uuid[16];
  struct jreplica *r;
  size_t n;
  bool writable;
  bool committing;		/* a thread is writing a record */
  int sticky;			/* errno once the majority was lost */
  bool healable;		/* sticky only for want of a majority */
  _Atomic uint64_t term;	/* read without the lock (status) */
  uint64_t last_index, last_term;
  uint64_t tail;		/* next record offset in the log region */
  uint64_t log_size;		/* smallest log region of all replicas */
  uint64_t log_id;
  uint64_t commits;
  _Atomic uint64_t heals;	/* see journal_heals() */
  uint64_t retry_at_ms;		/* when to retry lagging replicas */
  uint64_t retry_gap_ms;	/* 0: none was waiting at the last look */
  struct waiter *head, *tailw;	/* queued appends */
  char errmsg[512];		/* why the last failed batch failed */
};

static size_t
majority (size_t n)
{
  return n / 2 + 1;
}

#define RETRY_MIN_MS 1000
#define RETRY_MAX_MS 60000

/* Whether to write a checkpoint now to bring back a replica that is not
 * live but whose device is there to take it.  Called with j->lock held. */
static bool
retry_due (struct journal *j)
{
  uint64_t now;
  bool want = false;

  for (size_t i = 0; i < j->n; i++)
    if (j->r[i].state != JOURNAL_R_LIVE && j->r[i].m.dev
        && device_connected (j->r[i].m.dev))
      want = true;
  if (!want) {
    j->retry_gap_ms = 0;
    return false;
  }
  now = util_now_ms ();
  if (j->retry_gap_ms == 0) {
    j->retry_gap_ms = RETRY_MIN_MS;
    j->retry_at_ms = now + RETRY_MIN_MS;
    return false;
  }
  if (now < j->retry_at_ms)
    return false;
  j->retry_gap_ms = MIN (2 * j->retry_gap_ms, RETRY_MAX_MS);
  j->retry_at_ms = now + j->retry_gap_ms;
  return true;
}

/* Read the replica's checkpoint named by header MH into R.  Returns 0 if
 * it is valid. */
static int
read_ckpt (struct jreplica *r, const struct format_mh *mh)
{
  const struct format_ck_disk *ck;
  uint64_t len = round_up (sizeof *ck + mh->ckpt_len, STRATA_BLOCK);
  uint8_t *buf;

  if (len > r->lay.ckpt_size)
    return strata_error (EBADMSG, "checkpoint length %llu exceeds its slot",
                         (unsigned long long) mh->ckpt_len);
  buf = device_alloc_buf (len);
  if (!buf)
    return strata_error (ENOMEM, "out of memory");
  if (device_pread (r->m.dev, buf, len,
                    r->m.meta_off + r->lay.ckpt_off[mh->ckpt_slot]) == -1) {
    free (buf);
    return -1;
  }
  ck = (const struct format_ck_disk *) buf;
  if (memcmp (ck->magic, FORMAT_CK_MAGIC, 8) != 0
      || le32toh (ck->crc) != crc32c (0, ck, offsetof (struct format_ck_disk, crc))
      || le64toh (ck->index) != mh->ckpt_index
      || le64toh (ck->term) != mh->ckpt_term
      || le64toh (ck->len) != mh->ckpt_len
      || le32toh (ck->payload_crc) != mh->ckpt_crc
      || crc32c (0, buf + sizeof *ck, mh->ckpt_len) != mh->ckpt_crc) {
    free (buf);
    return strata_error (EBADMSG, "checkpoint %u is damaged", mh->ckpt_slot);
  }
  free (r->ckpt);
  r->ckpt = buf;
  r->ckpt_len = mh->ckpt_len;
  r->ckpt_index = mh->ckpt_index;
  r->ckpt_term = mh->ckpt_term;
  return 0;
}

/* Scan the log region of R for records of generation LOG_ID that follow
 * its checkpoint. */
static int
scan_log (struct jreplica *r, uint64_t log_id)
{
  uint64_t pos = 0, expect = r->ckpt_index + 1, last_term = r->ckpt_term;
  size_t cap = 0;

  r->log = device_alloc_buf (r->lay.log_size);
  if (!r->log)
    return strata_error (ENOMEM, "out of memory");
  if (device_pread (r->m.dev, r->log, r->lay.log_size,
                    r->m.meta_off + r->lay.log_off) == -1)
    return -1;

  while (pos + sizeof (struct format_lr_disk) <= r->lay.log_size) {
    const struct format_lr_disk *h = (const void *) (r->log + pos);
    const uint8_t *p, *end;
    uint32_t plen = le32toh (h->payload_len), nent = le32toh (h->nentries);
    uint64_t rterm = le64toh (h->term);

    if (memcmp (h->magic, FORMAT_LR_MAGIC, 8) != 0
        || le32toh (h->crc) != crc32c (0, h, offsetof (struct format_lr_disk, crc))
        || le64toh (h->log_id) != log_id
        || le64toh (h->first_index) != expect
        || rterm < last_term
        || plen > r->lay.log_size - pos - sizeof *h
        || crc32c (0, h + 1, plen) != le32toh (h->payload_crc))
      break;
    p = (const uint8_t *) (h + 1);
    end = p + plen;
    for (uint32_t k = 0; k < nent; k++) {
      struct format_le_disk le;
      uint32_t elen;
      if ((size_t) (end - p) < sizeof le + 4)
        goto torn;
      memcpy (&le, p, sizeof le);
      elen = le32toh (le.len);
      if (elen > (size_t) (end - p) - sizeof le - 4)
        goto torn;
      uint32_t crc;
      memcpy (&crc, p + sizeof le + elen, 4);
      if (le32toh (crc) != crc32c (0, p, sizeof le + elen)
          || le64toh (le.index) != expect
          || le64toh (le.term) < last_term || le64toh (le.term) > rterm)
        goto torn;
      if (r->nentries == cap) {
        struct jentry *ne;
        cap = cap ? cap * 2 : 64;
        ne = realloc (r->entries, cap * sizeof *ne);
        if (!ne)
          return strata_error (ENOMEM, "out of memory");
        r->entries = ne;
      }
      r->entries[r->nentries++] = (struct jentry) {
        .index = expect, .term = le64toh (le.term),
        .type = le16toh (le.type), .len = elen, .data = p + sizeof le,
      };
      last_term = le64toh (le.term);
      expect++;
      p += round_up (sizeof le + elen + 4, 8);
    }
    if (rterm > r->max_term)
      r->max_term = rterm;
    pos += round_up (sizeof *h + plen, STRATA_BLOCK);
  }
 torn:
  r->last_index = expect - 1;
  r->last_term = last_term;
  return 0;
}

/* Read everything replica R holds.  Sets r->valid. */
static void
read_replica (struct jreplica *r, const uint8_t uuid[16])
{
  uint8_t *hdr = device_alloc_buf (2 * FORMAT_HDR_SLOT);
  struct format_mh mh[2];
  bool ok[2] = { false, false };
  int order[2];

  r->valid = false;
  r->hdr_slot = 1;		/* so that the next header goes to slot 0 */
  r->ckpt_slot = 1;
  if (!r->m.dev) {
    snprintf (r->problem, sizeof r->problem, "device missing");
    free (hdr);
    return;
  }
  if (!hdr) {
    snprintf (r->problem, sizeof r->problem, "out of memory");
    return;
  }
  if (device_pread (r->m.dev, hdr, 2 * FORMAT_HDR_SLOT, r->m.meta_off) == -1) {
    snprintf (r->problem, sizeof r->problem, "%s", strata_last_error ());
    free (hdr);
    return;
  }
  for (int s = 0; s < 2; s++) {
    ok[s] = format_mh_decode (hdr + s * FORMAT_HDR_SLOT, &mh[s]) == 0
      && memcmp (mh[s].pool_uuid, uuid, 16) == 0;
    if (ok[s] && mh[s].term > r->max_term)
      r->max_term = mh[s].term;
    if (ok[s] && mh[s].seq >= r->seq)
      r->seq = mh[s].seq;
  }
  free (hdr);
  if (!ok[0] && !ok[1]) {
    snprintf (r->problem, sizeof r->problem, "no valid metadata header");
    return;
  }
  order[0] = (!ok[1] || (ok[0] && mh[0].seq > mh[1].seq)) ? 0 : 1;
  order[1] = 1 - order[0];
  for (int k = 0; k < 2; k++) {
    int s = order[k];
    if (!ok[s])
      continue;
    if (read_ckpt (r, &mh[s]) == -1) {
      snprintf (r->problem, sizeof r->problem, "%s", strata_last_error ());
      continue;
    }
    r->hdr_slot = s;
    r->ckpt_slot = mh[s].ckpt_slot;
    if (scan_log (r, mh[s].log_id) == -1) {
      snprintf (r->problem, sizeof r->problem, "%s", strata_last_error ());
      return;
    }
    if (r->last_term > r->max_term)
      r->max_term = r->last_term;
    r->valid = true;
    if (k == 1)
      snprintf (r->problem, sizeof r->problem,
                "newest header names a damaged checkpoint; used the older");
    else
      r->problem[0] = '\0';
    return;
  }
}

static void
free_views (struct journal *j)
{
  for (size_t i = 0; i < j->n; i++) {
    free (j->r[i].ckpt);
    free (j->r[i].log);
    free (j->r[i].entries);
    j->r[i].ckpt = j->r[i].log = NULL;
    j->r[i].entries = NULL;
    j->r[i].nentries = 0;
  }
}

/* Write a checkpoint of the current state to every replica and publish
 * it.  Called with j->lock held (or before the journal is shared). */
static int
checkpoint_locked (struct journal *j)
{
  struct fbuf snap;
  struct format_ck_disk ck;
  struct dev_req *reqs;
  uint8_t *ckbuf = NULL, *hbuf = NULL;
  uint64_t len, log_id;
  size_t ok = 0;
  int r = -1;

  fbuf_init_write (&snap);
  if (j->ops->snapshot (j->opaque, &snap) == -1)
    goto out;
  len = round_up (sizeof ck + snap.len, STRATA_BLOCK);
  for (size_t i = 0; i < j->n; i++)
    if (len > j->r[i].lay.ckpt_size) {
      strata_error (ENOSPC, "the metadata checkpoint (%zu bytes) no longer "
                    "fits its slot (%llu bytes); the pool needs a larger "
                    "metadata_size", snap.len,
                    (unsigned long long) j->r[i].lay.ckpt_size);
      goto out;
    }
  if (util_random (&log_id, sizeof log_id) == -1) {
    strata_error (errno, "getrandom: %m");
    goto out;
  }
  ckbuf = device_alloc_buf (len);
  hbuf = device_alloc_buf (j->n * FORMAT_HDR_SLOT);
  reqs = calloc (j->n, sizeof *reqs);
  if (!ckbuf || !hbuf || !reqs) {
    free (reqs);
    strata_error (ENOMEM, "out of memory");
    goto out;
  }
  memset (ckbuf, 0, len);
  memset (&ck, 0, sizeof ck);
  memcpy (ck.magic, FORMAT_CK_MAGIC, 8);
  ck.index = htole64 (j->last_index);
  ck.term = htole64 (j->last_term);
  ck.log_id = htole64 (log_id);
  ck.len = htole64 (snap.len);
  ck.payload_crc = htole32 (crc32c (0, snap.p, snap.len));
  ck.crc = htole32 (crc32c (0, &ck, offsetof (struct format_ck_disk, crc)));
  memcpy (ckbuf, &ck, sizeof ck);
  memcpy (ckbuf + sizeof ck, snap.p, snap.len);

  /* Phase 1: the checkpoint into each replica's spare slot, durably.
   * A missing device gets no request (its slot in REQS says ENODEV). */
  size_t np = 0;
  int pidx[64];
  struct dev_req preqs[64];
  for (size_t i = 0; i < j->n; i++) {
    struct jreplica *rp = &j->r[i];
    reqs[i].res = -ENODEV;
    if (!rp->m.dev)
      continue;
    pidx[np] = i;
    preqs[np++] = (struct dev_req) {
      .dev = rp->m.dev, .op = DEV_WRITE, .fua = true, .buf = ckbuf,
      .len = len, .off = rp->m.meta_off + rp->lay.ckpt_off[1 - rp->ckpt_slot],
    };
  }
  device_submit (preqs, np);
  for (size_t k = 0; k < np; k++)
    reqs[pidx[k]].res = preqs[k].res;

  /* Phase 2: publish it with the other header slot, durably. */
  size_t nh = 0;
  struct dev_req *hreqs = preqs;	/* reuse: compact the survivors */
  int which[64];
  for (size_t i = 0; i < j->n; i++) {
    struct jreplica *rp = &j->r[i];
    struct format_mh mh = {
      .ckpt_slot = 1 - rp->ckpt_slot, .seq = rp->seq + 1, .term = j->term,
      .ckpt_index = j->last_index, .ckpt_term = j->last_term,
      .ckpt_len = snap.len, .log_id = log_id,
      .ckpt_crc = le32toh (ck.payload_crc),
    };
    if (reqs[i].res != 0) {
      if (rp->state != JOURNAL_R_DAMAGED)
        rp->state = JOURNAL_R_LAGGING;
      snprintf (rp->problem, sizeof rp->problem, "checkpoint write failed: %s",
                strerror (-reqs[i].res));
      continue;
    }
    memcpy (mh.pool_uuid, j->pool_uuid, 16);
    memset (hbuf + nh * FORMAT_HDR_SLOT, 0, FORMAT_HDR_SLOT);
    format_mh_encode (&mh, hbuf + nh * FORMAT_HDR_SLOT);
    which[nh] = i;
    hreqs[nh] = (struct dev_req) {
      .dev = rp->m.dev, .op = DEV_WRITE, .fua = true,
      .buf = hbuf + nh * FORMAT_HDR_SLOT, .len = FORMAT_HDR_SLOT,
      .off = rp->m.meta_off + (1 - rp->hdr_slot) * FORMAT_HDR_SLOT,
    };
    nh++;
  }
  device_submit (hreqs, nh);
  for (size_t k = 0; k < nh; k++) {
    struct jreplica *rp = &j->r[which[k]];
    if (hreqs[k].res != 0) {
      rp->state = JOURNAL_R_LAGGING;
      snprintf (rp->problem, sizeof rp->problem, "header write failed: %s",
                strerror (-hreqs[k].res));
      continue;
    }
    rp->hdr_slot = 1 - rp->hdr_slot;
    rp->ckpt_slot = 1 - rp->ckpt_slot;
    rp->seq++;
    rp->last_index = j->last_index;
    rp->state = JOURNAL_R_LIVE;
    rp->problem[0] = '\0';
    ok++;
  }
  free (reqs);
  /* The replicas that took the new header read only records of the new
   * generation from here on; the others are lagging. */
  if (ok > 0) {
    j->tail = 0;
    j->log_id = log_id;
  }
  if (ok < majority (j->n)) {
    strata_error (EIO, "metadata checkpoint reached only %zu of %zu replicas "
                  "(a majority is %zu)", ok, j->n, majority (j->n));
    goto out;
  }
  r = 0;
 out:
  free (ckbuf);
  free (hbuf);
  fbuf_free (&snap);
  return r;
}

struct fixed_ckpt {
  const void *p;
  size_t len;
};

static int
snapshot_fixed (void *opaque, struct fbuf *out)
{
  struct fixed_ckpt *f = opaque;

  fbuf_put_bytes (out, f->p, f->len);
  return out->bad ? -1 : 0;
}

int
journal_format (const struct journal_member *members, size_t n,
                const uint8_t pool_uuid[16], const void *ckpt, size_t len)
{
  struct journal j;
  int r;

  /* A throwaway journal whose snapshot is the given checkpoint. */
  struct journal_ops ops = { .snapshot = snapshot_fixed };
  struct fixed_ckpt fx = { ckpt, len };

  if (n == 0 || n > 64)
    return strata_error (EINVAL, "a journal needs 1 to 64 replicas");
  memset (&j, 0, sizeof j);
  j.ops = &ops;
  j.opaque = &fx;
  j.n = n;
  memcpy (j.pool_uuid, pool_uuid, 16);
  j.r = calloc (n, sizeof *j.r);
  if (!j.r)
    return strata_error (ENOMEM, "out of memory");
  for (size_t i = 0; i < n; i++) {
    j.r[i].m = members[i];
    format_meta_layout (members[i].meta_size, &j.r[i].lay);
    j.r[i].hdr_slot = 1;
    j.r[i].ckpt_slot = 1;
  }
  j.term = 1;
  j.last_index = 0;
  j.last_term = 0;
  r = checkpoint_locked (&j);
  /* Every replica must be written at creation, not just a majority. */
  for (size_t i = 0; r == 0 && i < n; i++)
    if (j.r[i].state != JOURNAL_R_LIVE)
      r = strata_error (EIO, "%s: %s", j.r[i].m.name, j.r[i].problem);
  free (j.r);
  return r;
}

struct journal *
journal_open (const struct journal_member *members, size_t n,
              const uint8_t pool_uuid[16], unsigned flags,
              const struct journal_ops *ops, void *opaque)
{
  struct journal *j;
  size_t nvalid = 0;
  struct jreplica *best = NULL;
  uint64_t max_term = 0;

  if (n == 0 || n > 64) {
    strata_error (EINVAL, "a journal needs 1 to 64 replicas");
    return NULL;
  }
  j = calloc (1, sizeof *j);
  if (!j || !(j->r = calloc (n, sizeof *j->r))) {
    free (j);
    strata_error (ENOMEM, "out of memory");
    return NULL;
  }
  pthread_mutex_init (&j->lock, NULL);
  pthread_cond_init (&j->cond, NULL);
  j->ops = ops;
  j->opaque = opaque;
  j->n = n;
  j->writable = flags & JOURNAL_WRITE;
  memcpy (j->pool_uuid, pool_uuid, 16);
  j->log_size = UINT64_MAX;

  for (size_t i = 0; i < n; i++) {
    struct jreplica *r = &j->r[i];
    r->m = members[i];
    format_meta_layout (members[i].meta_size, &r->lay);
    if (r->lay.log_size < j->log_size)
      j->log_size = r->lay.log_size;
    read_replica (r, pool_uuid);
    if (r->max_term > max_term)
      max_term = r->max_term;
    if (!r->valid) {
      r->state = JOURNAL_R_DAMAGED;
      continue;
    }
    nvalid++;
    if (!best || r->last_term > best->last_term
        || (r->last_term == best->last_term
            && r->last_index > best->last_index))
      best = r;
  }

  if (nvalid < majority (n)) {
    char msg[900];
    size_t off = 0;
    for (size_t i = 0; i < n; i++)
      if (!j->r[i].valid)
        off += snprintf (msg + off, off < sizeof msg ? sizeof msg - off : 0,
                         "%s%s: %s", off ? "; " : "", j->r[i].m.name,
                         j->r[i].problem);
    strata_error (EIO, "only %zu of %zu metadata replicas are readable and a "
                  "majority (%zu) is needed (%s)", nvalid, n, majority (n),
                  msg);
    goto fail;
  }

  if (ops->load (opaque, best->ckpt + sizeof (struct format_ck_disk),
                 best->ckpt_len) == -1) {
    strata_error_prefix ("%s: checkpoint", best->m.name);
    goto fail;
  }
  for (size_t k = 0; k < best->nentries; k++) {
    struct jentry *e = &best->entries[k];
    if (ops->apply (opaque, e->type, e->data, e->len) == -1) {
      strata_error_prefix ("%s: journal entry %llu", best->m.name,
                           (unsigned long long) e->index);
      goto fail;
    }
  }
  j->last_index = best->last_index;
  j->last_term = best->last_term;
  for (size_t i = 0; i < n; i++) {
    struct jreplica *r = &j->r[i];
    if (r->valid && r->last_term == best->last_term
        && r->last_index == best->last_index)
      r->state = JOURNAL_R_LIVE;
    else if (r->valid) {
      r->state = JOURNAL_R_LAGGING;
      snprintf (r->problem, sizeof r->problem, "behind: index %llu of %llu",
                (unsigned long long) r->last_index,
                (unsigned long long) best->last_index);
    }
  }
  free_views (j);

  if (j->writable) {
    /* A new term, recorded by a checkpoint that stands for a no-op entry;
     * writing it everywhere repairs every replica that is behind. */
    bool was_bad[64];
    for (size_t i = 0; i < n; i++)
      was_bad[i] = j->r[i].state != JOURNAL_R_LIVE;
    j->term = max_term + 1;
    j->last_index++;
    j->last_term = j->term;
    if (checkpoint_locked (j) == -1)
      goto fail;
    for (size_t i = 0; i < n; i++)
      if (was_bad[i] && j->r[i].state == JOURNAL_R_LIVE)
        j->r[i].repaired = true;
  }
  else
    j->term = max_term;
  return j;

 fail:
  free_views (j);
  pthread_mutex_destroy (&j->lock);
  pthread_cond_destroy (&j->cond);
  free (j->r);
  free (j);
  return NULL;
}

void
journal_close (struct journal *j)
{
  if (!j)
    return;
  pthread_mutex_destroy (&j->lock);
  pthread_cond_destroy (&j->cond);
  free (j->r);
  free (j);
}

/* Encode the entries of waiters HEAD..(count) into a record buffer.
 * Returns the buffer (4 KiB aligned, *LEN bytes) or NULL. */
static uint8_t *
encode_record (struct journal *j, struct waiter *w, size_t nw, uint64_t first,
               uint32_t *lenp)
{
  size_t plen = 0, nent = 0, len;
  struct waiter *x = w;
  uint8_t *buf, *p;
  struct format_lr_disk h;
  uint64_t idx = first;

  for (size_t k = 0; k < nw; k++, x = x->next)
    for (size_t i = 0; i < x->n; i++) {
      plen += round_up (sizeof (struct format_le_disk) + x->items[i].len + 4, 8);
      nent++;
    }
  len = round_up (sizeof h + plen, STRATA_BLOCK);
  buf = device_alloc_buf (len);
  if (!buf)
    return NULL;
  memset (buf, 0, len);
  p = buf + sizeof h;
  x = w;
  for (size_t k = 0; k < nw; k++, x = x->next)
    for (size_t i = 0; i < x->n; i++) {
      struct format_le_disk le = {
        .index = htole64 (idx++), .term = htole64 (j->term),
        .type = htole16 (x->items[i].type), .len = htole32 (x->items[i].len),
      };
      uint32_t crc;
      memcpy (p, &le, sizeof le);
      memcpy (p + sizeof le, x->items[i].data, x->items[i].len);
      crc = htole32 (crc32c (0, p, sizeof le + x->items[i].len));
      memcpy (p + sizeof le + x->items[i].len, &crc, 4);
      p += round_up (sizeof le + x->items[i].len + 4, 8);
    }
  memset (&h, 0, sizeof h);
  memcpy (h.magic, FORMAT_LR_MAGIC, 8);
  h.log_id = htole64 (j->log_id);
  h.first_index = htole64 (first);
  h.term = htole64 (j->term);
  h.nentries = htole32 (nent);
  h.payload_len = htole32 (plen);
  h.payload_crc = htole32 (crc32c (0, buf + sizeof h, plen));
  h.crc = htole32 (crc32c (0, &h, offsetof (struct format_lr_disk, crc)));
  memcpy (buf, &h, sizeof h);
  *lenp = len;
  return buf;
}

/* Commit a batch of queued waiters.  Called with j->lock held and
 * j->committing set; drops the lock around the I/O. */
static void
commit_batch (struct journal *j)
{
  struct waiter *w = j->head, *x;
  size_t nw = 0, bytes = 0, ok = 0, nlive = 0;
  uint32_t len;
  uint8_t *buf;
  struct dev_req reqs[64];
  int which[64];
  int err = 0;

  /* Take as many waiters as fit in one record. */
  for (x = w; x; x = x->next) {
    size_t b = 0;
    for (size_t i = 0; i < x->n; i++)
      b += round_up (sizeof (struct format_le_disk) + x->items[i].len + 4, 8);
    if (nw > 0 && bytes + b + sizeof (struct format_lr_disk) > MAX_RECORD)
      break;
    bytes += b;
    nw++;
  }
  j->head = x;
  if (!x)
    j->tailw = NULL;

  if (bytes + sizeof (struct format_lr_disk) > MIN (MAX_RECORD, j->log_size / 4)) {
    err = EFBIG;
    strata_error (EFBIG, "journal record too large");
    goto done;
  }
  if ((j->tail + round_up (bytes + sizeof (struct format_lr_disk),
                           STRATA_BLOCK) > j->log_size || retry_due (j))
      && checkpoint_locked (j) == -1) {
    err = errno;
    j->sticky = err;
    j->healable = err == EIO;
    goto done;
  }
  buf = encode_record (j, w, nw, j->last_index + 1, &len);
  if (!buf) {
    err = ENOMEM;
    goto done;
  }
  for (size_t i = 0; i < j->n; i++) {
    struct jreplica *r = &j->r[i];
    if (r->state != JOURNAL_R_LIVE)
      continue;
    which[nlive] = i;
    reqs[nlive++] = (struct dev_req) {
      .dev = r->m.dev, .op = DEV_WRITE, .fua = true, .buf = buf, .len = len,
      .off = r->m.meta_off + r->lay.log_off + j->tail,
    };
  }

  /* The I/O runs without the lock so that new appends can queue up and
   * share the next record (group commit). */
  pthread_mutex_unlock (&j->lock);
  device_submit (reqs, nlive);
  pthread_mutex_lock (&j->lock);
  free (buf);

  for (size_t k = 0; k < nlive; k++) {
    struct jreplica *r = &j->r[which[k]];
    if (reqs[k].res == 0)
      ok++;
    else {
      r->state = JOURNAL_R_LAGGING;
      snprintf (r->problem, sizeof r->problem, "log write failed: %s",
                strerror (-reqs[k].res));
    }
  }
  if (ok < majority (j->n)) {
    err = EIO;
    j->sticky = EIO;
    j->healable = true;
    strata_error (EIO, "metadata journal write reached only %zu of %zu "
                  "replicas (a majority is %zu)", ok, j->n, majority (j->n));
    goto done;
  }
  j->tail += len;
  j->commits++;

  /* Committed: apply in index order. */
  x = w;
  for (size_t k = 0; k < nw; k++, x = x->next)
    for (size_t i = 0; i < x->n; i++) {
      j->last_index++;
      if (j->ops->apply (j->opaque, x->items[i].type, x->items[i].data,
                         x->items[i].len) == -1 && !err) {
        /* The entry is durable but does not apply: the caller validated
         * it, so this is a bug; stop taking changes. */
        err = EIO;
        j->sticky = EIO;
      }
    }
  j->last_term = j->term;
  for (size_t k = 0; k < nlive; k++)
    if (reqs[k].res == 0)
      j->r[which[k]].last_index = j->last_index;
  if (!err && j->tail > j->log_size / 2 && checkpoint_locked (j) == -1) {
    /* The batch is committed; a failed checkpoint only affects later
     * appends, which will retry it. */
    if (errno == EIO) {
      j->sticky = EIO;
      j->healable = true;
    }
  }

 done:
  if (err)
    snprintf (j->errmsg, sizeof j->errmsg, "%s", strata_last_error ()[0]
              ? strata_last_error () : strerror (err));
  x = w;
  for (size_t k = 0; k < nw; k++, x = x->next) {
    x->done = true;
    x->result = err;
  }
}

static void hold (struct journal *j);
static void unhold (struct journal *j);

/* With the lock held, the journal sticky for want of a majority: once a
 * lagging replica's device answers again (retry_due: a second after the
 * failure, then at doubling gaps), start a new term in a checkpoint of
 * the state in memory, as opening the pool does.  Everything committed
 * is in memory and nothing else is, so where a majority takes that
 * checkpoint the journal is whole again; an entry that reached only a
 * minority, never applied nor acknowledged, is of an older term and
 * can never win over it. */
static void
heal_locked (struct journal *j)
{
  if (!retry_due (j))
    return;
  hold (j);
  if (j->sticky && j->healable) {
    j->term++;
    j->last_index++;
    j->last_term = j->term;
    if (checkpoint_locked (j) == 0) {
      j->sticky = 0;
      j->healable = false;
      atomic_fetch_add (&j->heals, 1);
      fprintf (stderr, "strata: the metadata journal has a majority of its "
               "replicas again: term %" PRIu64 " began with a checkpoint "
               "at index %" PRIu64 ", and metadata changes go on\n",
               (uint64_t) j->term, j->last_index);
    }
    else
      strata_error_clear ();
  }
  unhold (j);
}

int
journal_append (struct journal *j, const struct journal_item *items, size_t n)
{
  struct waiter w = { .items = items, .n = n };

  if (!j->writable)
    return strata_error (EROFS, "the pool is open read-only");
  pthread_mutex_lock (&j->lock);
  if (j->sticky && j->healable)
    heal_locked (j);
  if (j->sticky) {
    int e = j->sticky;
    pthread_mutex_unlock (&j->lock);
    return strata_error (e, "the metadata journal has failed (a majority of "
                         "metadata replicas could not be written); the pool "
                         "refuses metadata changes until a majority answers "
                         "again, or until it is reopened");
  }
  if (j->tailw)
    j->tailw->next = &w;
  else
    j->head = &w;
  j->tailw = &w;
  while (!w.done) {
    if (!j->committing) {
      j->committing = true;
      strata_error_clear ();
      commit_batch (j);
      j->committing = false;
      pthread_cond_broadcast (&j->cond);
    }
    else
      pthread_cond_wait (&j->cond, &j->lock);
  }
  if (w.result) {
    /* The batch may have been committed by another thread, whose
     * thread-local message is not ours: copy the journal's. */
    strata_error (w.result, "metadata journal commit failed: %s", j->errmsg);
    pthread_mutex_unlock (&j->lock);
    return -1;
  }
  pthread_mutex_unlock (&j->lock);
  return 0;
}

/* Wait until no record is being written and take the journal for the
 * caller: appends queue up meanwhile.  Called with j->lock held. */
static void
hold (struct journal *j)
{
  while (j->committing)
    pthread_cond_wait (&j->cond, &j->lock);
  j->committing = true;
}

static void
unhold (struct journal *j)
{
  j->committing = false;
  pthread_cond_broadcast (&j->cond);
}

/* Clear both header slots of M's metadata region, durably.  Returns 0
 * or -1. */
static int
clear_headers (const struct journal_member *m)
{
  uint8_t *zero = device_alloc_buf (2 * FORMAT_HDR_SLOT);
  int ret;

  if (!zero)
    return strata_error (ENOMEM, "out of memory");
  memset (zero, 0, 2 * FORMAT_HDR_SLOT);
  ret = device_pwrite (m->dev, zero, 2 * FORMAT_HDR_SLOT, m->meta_off, true);
  free (zero);
  if (ret == -1)
    return strata_error_prefix ("%s: clearing its metadata headers", m->name);
  return 0;
}

/* Make M replica number j->n (not yet counted).  Its header slots are
 * cleared first, so that headers left from an earlier life of the device
 * can never outrank the checkpoint it is about to receive.  Returns 0
 * or -1. */
static int
add_replica (struct journal *j, const struct journal_member *m)
{
  struct jreplica *grown, *r;

  if (!m->dev)
    return strata_error (EINVAL, "a new metadata replica must be present");
  if (j->n >= 64)
    return strata_error (EINVAL, "a journal has at most 64 replicas");
  grown = realloc (j->r, (j->n + 1) * sizeof *grown);
  if (!grown)
    return strata_error (ENOMEM, "out of memory");
  j->r = grown;
  r = &j->r[j->n];
  memset (r, 0, sizeof *r);
  r->m = *m;
  format_meta_layout (m->meta_size, &r->lay);
  r->hdr_slot = r->ckpt_slot = 1;
  r->state = JOURNAL_R_LAGGING;
  snprintf (r->problem, sizeof r->problem, "being added");
  return clear_headers (m);
}

int
journal_rejoin (struct journal *j, size_t pos, const struct journal_member *m)
{
  struct jreplica *r;
  int ret = -1;

  if (!j->writable)
    return strata_error (EROFS, "the pool is open read-only");
  if (!m->dev)
    return strata_error (EINVAL, "a returning metadata replica must be "
                         "present");
  pthread_mutex_lock (&j->lock);
  hold (j);
  if (j->sticky) {
    strata_error (j->sticky, "the metadata journal has failed; reopen the "
                  "pool first");
    goto out;
  }
  if (pos >= j->n) {
    strata_error (EINVAL, "no metadata replica %zu", pos);
    goto out;
  }
  r = &j->r[pos];
  if (r->state == JOURNAL_R_LIVE && r->m.dev == m->dev) {
    ret = 0;
    goto out;
  }
  /* Not live: no commit counts on it, so clearing its headers loses
   * nothing, and a crash before the checkpoint leaves it damaged, to be
   * repaired by the next open.  Its slots and sequence start afresh. */
  r->state = JOURNAL_R_LAGGING;
  r->m = *m;
  format_meta_layout (m->meta_size, &r->lay);
  if (clear_headers (m) == -1) {
    snprintf (r->problem, sizeof r->problem, "%s", strata_last_error ());
    goto out;
  }
  r->hdr_slot = r->ckpt_slot = 1;
  r->seq = 0;
  if (checkpoint_locked (j) == -1) {
    if (errno == EIO)
      j->sticky = EIO;		/* as a failed checkpoint in a commit */
    goto out;
  }
  if (r->state != JOURNAL_R_LIVE) {
    strata_error (EIO, "%s: the metadata checkpoint could not be written to "
                  "it: %s", m->name, r->problem);
    goto out;
  }
  /* The checkpoint started the log again. */
  j->log_size = MIN (j->log_size, r->lay.log_size);
  r->repaired = true;
  ret = 0;
 out:
  unhold (j);
  pthread_mutex_unlock (&j->lock);
  return ret;
}

int
journal_reconfigure (struct journal *j, const struct journal_member *add,
                     int drop, int (*publish) (void *arg), void *arg)
{
  int r = -1;

  if (!j->writable)
    return strata_error (EROFS, "the pool is open read-only");
  if (!add == (drop < 0))
    return strata_error (EINVAL, "one metadata replica is added or dropped "
                         "at a time");
  pthread_mutex_lock (&j->lock);
  hold (j);
  if (j->sticky) {
    strata_error (j->sticky, "the metadata journal has failed; reopen the "
                  "pool first");
    goto out;
  }
  if (drop >= (int) j->n || (drop >= 0 && j->n == 1)) {
    strata_error (EINVAL, "no metadata replica %d to drop", drop);
    goto out;
  }
  if (add) {
    uint64_t log_size;
    if (add_replica (j, add) == -1)
      goto out;
    j->n++;
    /* The checkpoint starts the log again, so a smaller log region
     * on the new replica is fine from here on. */
    log_size = MIN (j->log_size, j->r[j->n - 1].lay.log_size);
    if (checkpoint_locked (j) == -1
        || j->r[j->n - 1].state != JOURNAL_R_LIVE) {
      strata_error (EIO, "%s: the metadata checkpoint could not be written "
                    "to it: %s", add->name, j->r[j->n - 1].problem[0]
                    ? j->r[j->n - 1].problem : strata_last_error ());
      j->n--;
      goto out;
    }
    j->log_size = log_size;
  }
  if (publish (arg) == -1) {
    if (add)
      j->n--;			/* a replica the next open may count: fine */
    goto out;
  }
  if (drop >= 0) {
    memmove (&j->r[drop], &j->r[drop + 1], (j->n - drop - 1) * sizeof *j->r);
    j->n--;
  }
  r = 0;
 out:
  unhold (j);
  pthread_mutex_unlock (&j->lock);
  return r;
}

void
journal_name_replica (struct journal *j, size_t pos, const char *name)
{
  pthread_mutex_lock (&j->lock);
  if (pos < j->n)
    j->r[pos].m.name = name;
  pthread_mutex_unlock (&j->lock);
}

int
journal_checkpoint (struct journal *j)
{
  int r;

  if (!j->writable)
    return strata_error (EROFS, "the pool is open read-only");
  pthread_mutex_lock (&j->lock);
  hold (j);
  r = checkpoint_locked (j);
  unhold (j);
  pthread_mutex_unlock (&j->lock);
  return r;
}

uint64_t
journal_term (struct journal *j)
{
  return j->term;
}

void
journal_meta_room (struct journal *j, uint64_t *ckpt_room,
                   uint64_t *meta_size)
{
  uint64_t room = UINT64_MAX, size = 0;

  pthread_mutex_lock (&j->lock);
  for (size_t i = 0; i < j->n; i++) {
    room = MIN (room, j->r[i].lay.ckpt_size);
    size = MAX (size, j->r[i].m.meta_size);
  }
  pthread_mutex_unlock (&j->lock);
  if (ckpt_room)
    *ckpt_room = room;
  if (meta_size)
    *meta_size = size;
}

uint64_t
journal_last_index (struct journal *j)
{
  uint64_t v;
  pthread_mutex_lock (&j->lock);
  v = j->last_index;
  pthread_mutex_unlock (&j->lock);
  return v;
}

int
journal_apply_unlogged (struct journal *j, const struct journal_item *items,
                        size_t n)
{
  int r = 0;

  pthread_mutex_lock (&j->lock);
  for (size_t i = 0; i < n && r == 0; i++)
    r = j->ops->apply (j->opaque, items[i].type, items[i].data, items[i].len);
  pthread_mutex_unlock (&j->lock);
  return r;
}

int
journal_failed (struct journal *j, char *why, size_t len)
{
  int e;

  pthread_mutex_lock (&j->lock);
  e = j->sticky;
  snprintf (why, len, "%s", e ? j->errmsg : "");
  pthread_mutex_unlock (&j->lock);
  return e;
}

uint64_t
journal_heals (struct journal *j)
{
  return atomic_load (&j->heals);
}

uint64_t
journal_commits (struct journal *j)
{
  return j->commits;
}

size_t
journal_info (struct journal *j, struct journal_replica_info *out, size_t max)
{
  pthread_mutex_lock (&j->lock);
  for (size_t i = 0; i < j->n && i < max; i++) {
    out[i].name = j->r[i].m.name;
    out[i].state = j->r[i].state;
    out[i].last_index = j->r[i].last_index;
    out[i].repaired = j->r[i].repaired;
    snprintf (out[i].problem, sizeof out[i].problem, "%s", j->r[i].problem);
  }
  pthread_mutex_unlock (&j->lock);
  return j->n;
}
