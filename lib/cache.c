/* strata: the cache log (see cache.h; on-disk layout in format.h).
 *
 * Design notes
 * ------------
 * Space: records are placed at the head of the ring under c->lock and
 * written outside it, several at once.  The head may not pass the tail
 * by more than the ring: a writer waits on c->room for the destager.
 *
 * Index: an open-addressing hash (linear probing, deletion by backward
 * shift) from (volume, block) to the LSN of the block's newest data and
 * its crc32c.  A record's blocks enter the index when it completes, and
 * only where the index holds nothing newer, so records that complete
 * out of order still leave the newest version, as replay in LSN order
 * does after a crash.  A zero record removes the older blocks of its
 * range and stays in c->zr until destaged: the range reads as zeros,
 * and an older write that completes later is not let in.
 *
 * Records in flight: c->recs lists every record placed and not yet
 * destaged, in LSN order, with whether it has completed.  The destager
 * takes completed records from the front only, so it never passes one
 * still being written, and a zero record alone (the writes before it
 * and after it never meet in one batch, so address order inside a batch
 * cannot reorder a write and a zero of the same block).
 *
 * Readers and reuse: cache_read looks blocks up under the lock and reads
 * them without it.  Before the tail moves past destaged records (after
 * which new records may overwrite them), the destager waits for every
 * reader that started before their blocks left the index (two reader
 * counts that alternate, as in RCU).
 *
 * Mirrors: every record goes to both at the same place.  A mirror whose
 * write or flush fails is dropped from then on, and before any write
 * or flush that reached only the other is acknowledged, the header is
 * written again with the dropped mirror in its failed mask
 * (persist_failed): the dropped mirror's own header then has the lower
 * seq, so a later open never reads the stale mirror.  Header writes are
 * serialised by hlock, and the tail they record never goes back.
 *
 * Write-through records are clean: their blocks are in the index for
 * reads, but the destager skips them, and they leave the index with
 * their record.
 */
#include <endian.h>
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cache.h"
#include "crc32c.h"
#include "error.h"
#include "format.h"
#include "util.h"

#define BLK STRATA_BLOCK
#define SCAN_CHUNK (8u << 20)	/* bytes read at once by recovery */

struct ent {
  uint64_t key;			/* 0: empty; else 1 + (vol << 40 | blk) */
  uint64_t lsn;			/* of the block's data */
  uint32_t crc;
  bool clean;			/* the backing copies hold it (write-through) */
};

struct zrange {
  uint32_t vol;
  uint64_t blk, nblk, lsn;
};

struct rec {
  uint64_t lsn, len;		/* len: bytes of the ring it takes */
  uint64_t blk;
  uint32_t type, vol, nblk;
  bool clean;
  bool done;
  uint64_t t;			/* when it was placed (or found), ms */
};

struct cache {
  pthread_mutex_t lock;		/* protects everything below but the I/O */
  pthread_mutex_t hlock;	/* serialises header writes; taken first */
  uint32_t persisted;		/* the failed mask the header holds */
  pthread_cond_t room;		/* the tail moved, or a reader finished */
  struct cache_dev m[2];
  size_t n;
  _Atomic bool failed[2];	/* read without the lock by the I/O paths */
  bool latched;
  bool sealed;			/* detached: takes no record (cache_seal) */
  uint8_t pool_uuid[16];
  uint64_t log_id, log_size, seq;
  uint64_t tail, head;
  uint64_t htail;		/* the tail the header holds (hlock) */
  struct ent *tab;
  size_t cap, count;		/* cap: a power of 2 */
  uint64_t dirty;		/* entries that are not clean */
  struct zrange *zr;
  size_t nzr, capzr;
  struct rec *recs;		/* a ring of caprecs, from r0 */
  size_t r0, nrecs, caprecs;
  uint64_t readers[2];		/* in cache_read, per reader epoch */
  unsigned epoch;
  uint64_t hits, misses, destaged;
  int stuck_err;		/* writing back fails: cache_set_stuck */
  char stuck_why[256];
};

static uint64_t
key_of (uint32_t vol, uint64_t blk)
{
  return 1 + ((uint64_t) vol << 40 | blk);
}

static uint32_t key_vol (uint64_t key) { return (key - 1) >> 40; }
static uint64_t key_blk (uint64_t key) { return (key - 1) & ((1ull << 40) - 1); }

static size_t
slot_of (const struct cache *c, uint64_t key)
{
  return (key * 0x9E3779B97F4A7C15ull) >> 17 & (c->cap - 1);
}

/* The entry for KEY, or NULL.  Under c->lock. */
static struct ent *
find (struct cache *c, uint64_t key)
{
  for (size_t i = slot_of (c, key);; i = (i + 1) & (c->cap - 1)) {
    if (c->tab[i].key == key)
      return &c->tab[i];
    if (c->tab[i].key == 0)
      return NULL;
  }
}

static void
del (struct cache *c, struct ent *e)
{
  size_t i = e - c->tab, j = i;

  for (;;) {
    j = (j + 1) & (c->cap - 1);
    if (c->tab[j].key == 0)
      break;
    size_t h = slot_of (c, c->tab[j].key);
    /* Move j back to i unless its home lies cyclically in (i, j]. */
    if (i <= j ? (i < h && h <= j) : (i < h || h <= j))
      continue;
    c->tab[i] = c->tab[j];
    i = j;
  }
  c->tab[i].key = 0;
  c->count--;
}

static int
grow (struct cache *c)
{
  struct ent *old = c->tab;
  size_t oldcap = c->cap, cap = oldcap ? oldcap * 2 : 1 << 16;
  struct ent *t = calloc (cap, sizeof *t);

  if (!t)
    return strata_error (ENOMEM, "out of memory");
  c->tab = t;
  c->cap = cap;
  for (size_t i = 0; i < oldcap; i++)
    if (old[i].key) {
      size_t k = slot_of (c, old[i].key);
      while (t[k].key)
        k = (k + 1) & (cap - 1);
      t[k] = old[i];
    }
  free (old);
  return 0;
}

/* Is block KEY of VOL zeroed by a zero record newer than LSN? */
static bool
zeroed_after (struct cache *c, uint32_t vol, uint64_t blk, uint64_t lsn)
{
  for (size_t i = 0; i < c->nzr; i++)
    if (c->zr[i].vol == vol && c->zr[i].blk <= blk
        && blk - c->zr[i].blk < c->zr[i].nblk && c->zr[i].lsn > lsn)
      return true;
  return false;
}

/* Let block BLK of VOL, version LSN with CRC, into the index unless it
 * holds something newer.  Under c->lock.  Returns 0 or -1. */
static int
admit (struct cache *c, uint32_t vol, uint64_t blk, uint64_t lsn,
       uint32_t crc, bool clean)
{
  uint64_t key = key_of (vol, blk);
  struct ent *e = find (c, key);

  if (zeroed_after (c, vol, blk, lsn))
    return 0;
  if (e) {
    if (e->lsn < lsn) {
      c->dirty += (uint64_t) e->clean - clean;
      e->lsn = lsn;
      e->crc = crc;
      e->clean = clean;
    }
    return 0;
  }
  if ((c->count + 1) * 2 > c->cap && grow (c) == -1)
    return -1;
  for (size_t i = slot_of (c, key);; i = (i + 1) & (c->cap - 1))
    if (c->tab[i].key == 0) {
      c->tab[i] = (struct ent) { key, lsn, crc, clean };
      break;
    }
  c->count++;
  c->dirty += !clean;
  return 0;
}

/* Remove entry E from the index.  Under c->lock. */
static void
drop (struct cache *c, struct ent *e)
{
  c->dirty -= !e->clean;
  del (c, e);
}

/* A zero record at LSN: older blocks of the range leave the index.
 * Under c->lock. */
static int
admit_zero (struct cache *c, uint32_t vol, uint64_t blk, uint64_t nblk,
            uint64_t lsn)
{
  if (c->nzr == c->capzr) {
    size_t cap = c->capzr ? c->capzr * 2 : 8;
    struct zrange *z = realloc (c->zr, cap * sizeof *z);
    if (!z)
      return strata_error (ENOMEM, "out of memory");
    c->zr = z;
    c->capzr = cap;
  }
  c->zr[c->nzr++] = (struct zrange) { vol, blk, nblk, lsn };
  /* A range larger than the index is cheaper to sweep by entries.  A
   * deletion may shift a later entry into slot i: look at it again. */
  if (nblk > c->cap) {
    for (size_t i = 0; i < c->cap; i++)
      while (c->tab[i].key && key_vol (c->tab[i].key) == vol
             && key_blk (c->tab[i].key) >= blk
             && key_blk (c->tab[i].key) - blk < nblk
             && c->tab[i].lsn < lsn)
        drop (c, &c->tab[i]);
    return 0;
  }
  for (uint64_t b = blk; b < blk + nblk; b++) {
    struct ent *e = find (c, key_of (vol, b));
    if (e && e->lsn < lsn)
      drop (c, e);
  }
  return 0;
}

static uint64_t
ring_off (const struct cache *c, const struct cache_dev *m, uint64_t lsn)
{
  return m->off + FORMAT_CACHE_HDRS + lsn % c->log_size;
}

/* ---- headers ---- */

static uint32_t
failed_mask (const struct cache *c)
{
  uint32_t mask = 0;

  for (size_t i = 0; i < c->n; i++)
    if (c->failed[i])
      mask |= 1u << i;
  return mask;
}

static void
encode_header (const struct cache *c, uint64_t seq, uint64_t tail,
               uint32_t failed, void *blk)
{
  struct format_ch_disk h;

  memset (blk, 0, BLK);
  memset (&h, 0, sizeof h);
  memcpy (h.magic, FORMAT_CH_MAGIC, 8);
  h.version = htole32 (FORMAT_VERSION);
  h.failed = htole32 (failed);
  memcpy (h.pool_uuid, c->pool_uuid, 16);
  h.log_id = htole64 (c->log_id);
  h.seq = htole64 (seq);
  h.tail = htole64 (tail);
  h.log_size = htole64 (c->log_size);
  h.crc = htole32 (crc32c (0, &h, offsetof (struct format_ch_disk, crc)));
  memcpy (blk, &h, sizeof h);
}

/* Decode the header in BLK into C's fields; 0 if valid. */
static int
decode_header (struct cache *c, const void *blk, uint64_t *seq,
               uint64_t *tail, uint32_t *failed)
{
  struct format_ch_disk h;

  memcpy (&h, blk, sizeof h);
  if (memcmp (h.magic, FORMAT_CH_MAGIC, 8) != 0
      || le32toh (h.crc) != crc32c (0, &h, offsetof (struct format_ch_disk, crc))
      || le32toh (h.version) != FORMAT_VERSION
      || memcmp (h.pool_uuid, c->pool_uuid, 16) != 0
      || le64toh (h.log_size) == 0 || le64toh (h.log_size) % BLK)
    return -1;
  c->log_id = le64toh (h.log_id);
  c->log_size = le64toh (h.log_size);
  *seq = le64toh (h.seq);
  *tail = le64toh (h.tail);
  *failed = le32toh (h.failed);
  return 0;
}

/* Record TAIL and the mirrors dropped in the slot the current header is
 * not in, on every mirror in use, with FUA.  The caller holds hlock.
 * Returns 0 if one mirror at least took it. */
static int
write_header (struct cache *c, uint64_t tail)
{
  uint8_t *blk = device_alloc_buf (BLK);
  struct dev_req rq[2];
  size_t nr = 0, ok = 0;
  uint64_t seq = c->seq + 1;
  uint32_t mask = failed_mask (c);

  if (!blk)
    return strata_error (ENOMEM, "out of memory");
  encode_header (c, seq, tail, mask, blk);
  for (size_t i = 0; i < c->n; i++)
    if (!c->failed[i])
      rq[nr++] = (struct dev_req) {
        .dev = c->m[i].dev, .op = DEV_WRITE, .fua = true, .buf = blk,
        .len = BLK, .off = c->m[i].off + (seq & 1) * BLK, .tag = i,
      };
  device_submit (rq, nr);
  for (size_t k = 0; k < nr; k++) {
    if (rq[k].res == 0)
      ok++;
    else if (!c->failed[rq[k].tag]) {
      c->failed[rq[k].tag] = true;
      fprintf (stderr, "strata: cache mirror %s dropped: header write "
               "failed: %s\n", c->m[rq[k].tag].name, strerror (-rq[k].res));
    }
  }
  free (blk);
  if (ok == 0)
    return strata_error (EIO, "the cache header could not be written to "
                         "any mirror");
  c->seq = seq;
  c->htail = tail;
  __atomic_store_n (&c->persisted, mask, __ATOMIC_RELEASE);
  return 0;
}

/* Make the header name every mirror dropped so far, before a write or
 * flush that went to the others alone is acknowledged: a later open
 * must never take the dropped one's older header and records.  Returns
 * 0, or -1 if no mirror took the header. */
static int
persist_failed (struct cache *c)
{
  int r = 0;

  if (failed_mask (c) == __atomic_load_n (&c->persisted, __ATOMIC_ACQUIRE))
    return 0;
  pthread_mutex_lock (&c->hlock);
  while (r == 0 && failed_mask (c) != c->persisted)
    r = write_header (c, c->htail);
  pthread_mutex_unlock (&c->hlock);
  return r;
}

int
cache_format (const struct cache_dev *mirrors, size_t n,
              const uint8_t pool_uuid[16])
{
  struct cache c;
  uint64_t size = UINT64_MAX;
  uint8_t *blk;
  int r = 0;

  if (n < 1 || n > 2)
    return strata_error (EINVAL, "a cache has one or two mirrors");
  for (size_t i = 0; i < n; i++)
    if (mirrors[i].size < FORMAT_CACHE_HDRS + 2 * BLK)
      return strata_error (EINVAL, "%s: the cache area is too small",
                           mirrors[i].name);
    else
      size = MIN (size, round_down (mirrors[i].size - FORMAT_CACHE_HDRS,
                                    BLK));
  memset (&c, 0, sizeof c);
  memcpy (c.pool_uuid, pool_uuid, 16);
  c.log_size = size;
  if (util_random (&c.log_id, sizeof c.log_id) == -1)
    return strata_error (errno, "getrandom: %m");
  if (!(blk = device_alloc_buf (2 * BLK)))
    return strata_error (ENOMEM, "out of memory");
  /* Slot 1 holds seq 1; slot 0 is cleared. */
  memset (blk, 0, BLK);
  encode_header (&c, 1, 0, 0, blk + BLK);
  for (size_t i = 0; i < n && r == 0; i++)
    if (device_pwrite (mirrors[i].dev, blk, 2 * BLK, mirrors[i].off, true)
        == -1)
      r = strata_error_prefix ("%s: writing the cache header", mirrors[i].name);
  free (blk);
  return r;
}

/* ---- recovery ---- */

static int
push_rec (struct cache *c, const struct rec *r0)
{
  struct rec rr = *r0, *r = &rr;

  rr.t = util_now_ms ();
  if (c->nrecs == c->caprecs) {
    size_t cap = c->caprecs ? c->caprecs * 2 : 256;
    struct rec *n = malloc (cap * sizeof *n);
    if (!n)
      return strata_error (ENOMEM, "out of memory");
    for (size_t i = 0; i < c->nrecs; i++)
      n[i] = c->recs[(c->r0 + i) % c->caprecs];
    free (c->recs);
    c->recs = n;
    c->r0 = 0;
    c->caprecs = cap;
  }
  c->recs[(c->r0 + c->nrecs++) % c->caprecs] = *r;
  return 0;
}

static struct rec *
rec_at (struct cache *c, size_t i)
{
  return &c->recs[(c->r0 + i) % c->caprecs];
}

/* Is the record header at BLK (found at LSN) valid?  Fills H and CRCS. */
static bool
valid_header (const struct cache *c, const uint8_t *blk, uint64_t lsn,
              struct format_cr_disk *h, const uint8_t **crcs)
{
  uint32_t nblk, crc;

  memcpy (h, blk, sizeof *h);
  nblk = le32toh (h->nblk);
  if (memcmp (h->magic, FORMAT_CR_MAGIC, 8) != 0
      || le64toh (h->log_id) != c->log_id || le64toh (h->lsn) != lsn)
    return false;
  if (le32toh (h->type) == FORMAT_CR_WRITE && nblk > FORMAT_CR_MAX_BLOCKS)
    return false;
  crc = crc32c (0, h, offsetof (struct format_cr_disk, crc));
  if (le32toh (h->type) == FORMAT_CR_WRITE)
    crc = crc32c (crc, blk + sizeof *h, 4 * (size_t) nblk);
  *crcs = blk + sizeof *h;
  return crc == le32toh (h->crc);
}

/* Replay the ring of C from c->tail on mirror M. */
static int
replay (struct cache *c, const struct cache_dev *m)
{
  uint8_t *buf = device_alloc_buf (SCAN_CHUNK);
  uint64_t end = c->tail + c->log_size, pos = c->tail;
  uint64_t have = 0, have_len = 0;	/* LSN range in BUF */
  int r = -1;

  if (!buf)
    return strata_error (ENOMEM, "out of memory");
  c->head = c->tail;
  while (pos < end) {
    struct format_cr_disk h;
    const uint8_t *crcs;
    uint64_t len, type;
    uint32_t nblk;

    if (pos < have || pos + BLK > have + have_len) {
      /* Refill, not across the end of the ring. */
      uint64_t o = pos % c->log_size;
      have = pos;
      have_len = MIN (SCAN_CHUNK, MIN (end - pos, c->log_size - o));
      if (device_pread (m->dev, buf, have_len, ring_off (c, m, pos)) == -1)
        goto out;
    }
    if (!valid_header (c, buf + (pos - have), pos, &h, &crcs)) {
      pos += BLK;
      continue;
    }
    type = le32toh (h.type);
    nblk = le32toh (h.nblk);
    len = BLK + (type == FORMAT_CR_ZERO ? 0 : (uint64_t) nblk * BLK);
    if (pos % c->log_size + len > c->log_size || pos + len > end) {
      pos += BLK;		/* cannot be one of ours */
      continue;
    }
    if (type == FORMAT_CR_WRITE) {
      /* The data, from BUF where it is there. */
      uint8_t *data = NULL;
      const uint8_t *d;
      bool ok = true;
      uint32_t cr[FORMAT_CR_MAX_BLOCKS];
      memcpy (cr, crcs, 4 * (size_t) nblk);
      if (pos + len <= have + have_len)
        d = buf + (pos - have) + BLK;
      else {
        if (!(data = device_alloc_buf ((size_t) nblk * BLK))) {
          strata_error (ENOMEM, "out of memory");
          goto out;
        }
        if (device_pread (m->dev, data, nblk * BLK,
                          ring_off (c, m, pos + BLK)) == -1) {
          free (data);
          goto out;
        }
        d = data;
      }
      for (uint32_t i = 0; i < nblk && ok; i++)
        ok = crc32c (0, d + (size_t) i * BLK, BLK) == le32toh (cr[i]);
      free (data);
      if (ok) {
        for (uint32_t i = 0; i < nblk; i++)
          if (admit (c, le32toh (h.vol), le64toh (h.blk) + i,
                     pos + BLK * (i + 1), le32toh (cr[i]),
                     le32toh (h.flags) & FORMAT_CR_CLEAN) == -1)
            goto out;
      }
      /* A torn record was never acknowledged durable: passed over. */
    }
    else if (type == FORMAT_CR_ZERO) {
      if (admit_zero (c, le32toh (h.vol), le64toh (h.blk), nblk, pos) == -1)
        goto out;
    }
    else if (type == FORMAT_CR_PAD)
      len = BLK + (uint64_t) nblk * BLK;
    else {
      pos += BLK;
      continue;
    }
    {
      struct rec rc = { .lsn = pos, .len = len, .blk = le64toh (h.blk),
                        .type = type, .vol = le32toh (h.vol), .nblk = nblk,
                        .clean = le32toh (h.flags) & FORMAT_CR_CLEAN,
                        .done = true };
      /* Holes between records are kept as PAD records, so that the
       * front of the list is always the tail. */
      if (pos > c->head) {
        struct rec gap = { .lsn = c->head, .len = pos - c->head,
                           .type = FORMAT_CR_PAD, .done = true };
        if (push_rec (c, &gap) == -1)
          goto out;
      }
      if (push_rec (c, &rc) == -1)
        goto out;
    }
    pos += len;
    c->head = pos;
  }
  r = 0;
 out:
  free (buf);
  return r;
}

struct cache *
cache_open (const struct cache_dev *mirrors, size_t n,
            const uint8_t pool_uuid[16])
{
  struct cache *c = calloc (1, sizeof *c);
  uint8_t *blk = device_alloc_buf (2 * BLK);
  int best = -1;
  uint64_t best_seq = 0, best_tail = 0, best_id = 0, best_size = 0;
  uint32_t best_failed = 0;

  if (!c || !blk) {
    strata_error (ENOMEM, "out of memory");
    goto fail;
  }
  if (n < 1 || n > 2) {
    strata_error (EINVAL, "a cache has one or two mirrors");
    goto fail;
  }
  pthread_mutex_init (&c->lock, NULL);
  pthread_mutex_init (&c->hlock, NULL);
  pthread_cond_init (&c->room, NULL);
  memcpy (c->pool_uuid, pool_uuid, 16);
  c->n = n;
  for (size_t i = 0; i < n; i++) {
    c->m[i] = mirrors[i];
    c->failed[i] = true;
    if (!mirrors[i].dev
        || device_pread (mirrors[i].dev, blk, 2 * BLK, mirrors[i].off) == -1)
      continue;
    for (int s = 0; s < 2; s++) {
      uint64_t seq, tail;
      uint32_t failed;
      if (decode_header (c, blk + s * BLK, &seq, &tail, &failed) == -1)
        continue;
      c->failed[i] = false;
      if (best < 0 || seq > best_seq) {
        best = i;
        best_seq = seq;
        best_tail = tail;
        best_id = c->log_id;
        best_size = c->log_size;
        best_failed = failed;
      }
    }
  }
  /* The newest header names the mirrors that missed records. */
  for (size_t i = 0; i < n; i++)
    if (best_failed & (1u << i))
      c->failed[i] = true;
  if (best < 0) {
    strata_error (EIO, "no cache mirror holds a valid cache header (%s%s%s)",
                  mirrors[0].name, n > 1 ? ", " : "",
                  n > 1 ? mirrors[1].name : "");
    goto fail;
  }
  c->seq = best_seq;
  c->tail = c->htail = best_tail;
  c->persisted = best_failed;
  c->log_id = best_id;
  c->log_size = best_size;
  if (grow (c) == -1 || replay (c, &c->m[best]) == -1) {
    strata_error_prefix ("%s: cache recovery", mirrors[best].name);
    goto fail;
  }
  free (blk);
  return c;

 fail:
  free (blk);
  cache_close (c);
  return NULL;
}

void
cache_close (struct cache *c)
{
  if (!c)
    return;
  free (c->tab);
  free (c->zr);
  free (c->recs);
  pthread_mutex_destroy (&c->lock);
  pthread_mutex_destroy (&c->hlock);
  pthread_cond_destroy (&c->room);
  free (c);
}

/* ---- writing ---- */

/* The error of a writer that would wait for room while writing back is
 * stuck.  Under c->lock. */
static int
stuck_error (struct cache *c)
{
  return strata_error (c->stuck_err, "the cache log is full, and writing "
                       "it back fails: %s", c->stuck_why);
}

/* Place a record of LEN bytes: a PAD record first where it would wrap
 * (*PAD set to its LSN and length, else 0).  Waits for room.  Under
 * c->lock.  Returns its LSN. */
static int
place (struct cache *c, const struct rec *r, uint64_t *lsn,
       struct rec *pad, bool nowait)
{
  uint64_t o, need = r->len;

  for (;;) {
    if (c->sealed)
      return strata_error (ESHUTDOWN, "the cache is detached");
    o = c->head % c->log_size;
    need = r->len + (o + r->len > c->log_size ? c->log_size - o : 0);
    if (c->head + need - c->tail <= c->log_size)
      break;
    if (c->nrecs == 0 || need > c->log_size)
      return strata_error (ENOSPC, "a cache record of %" PRIu64 " bytes "
                           "does not fit the ring", r->len);
    if (nowait)
      return strata_error (EAGAIN, "the cache log is full");
    if (c->stuck_err)
      return stuck_error (c);
    pthread_cond_wait (&c->room, &c->lock);
  }
  memset (pad, 0, sizeof *pad);
  if (o + r->len > c->log_size) {
    *pad = (struct rec) { .lsn = c->head, .len = c->log_size - o,
                          .type = FORMAT_CR_PAD, .done = false,
                          .nblk = (c->log_size - o) / BLK - 1 };
    if (push_rec (c, pad) == -1)
      return -1;
    c->head += pad->len;
  }
  *lsn = c->head;
  {
    struct rec x = *r;
    x.lsn = c->head;
    if (push_rec (c, &x) == -1)
      return -1;
  }
  c->head += r->len;
  return 0;
}

static void
mark_done (struct cache *c, uint64_t lsn)
{
  for (size_t i = c->nrecs; i-- > 0;)
    if (rec_at (c, i)->lsn == lsn) {
      rec_at (c, i)->done = true;
      return;
    }
}

/* The header block of a record. */
static void
encode_record (const struct cache *c, uint8_t *hb, const struct rec *r,
               const uint32_t *crcs)
{
  struct format_cr_disk h;
  uint32_t crc;

  memset (hb, 0, BLK);
  memset (&h, 0, sizeof h);
  memcpy (h.magic, FORMAT_CR_MAGIC, 8);
  h.log_id = htole64 (c->log_id);
  h.lsn = htole64 (r->lsn);
  h.type = htole32 (r->type);
  h.vol = htole32 (r->vol);
  h.blk = htole64 (r->blk);
  h.nblk = htole32 (r->nblk);
  h.flags = htole32 (r->clean ? FORMAT_CR_CLEAN : 0);
  for (uint32_t i = 0; r->type == FORMAT_CR_WRITE && i < r->nblk; i++) {
    uint32_t le = htole32 (crcs[i]);
    memcpy (hb + sizeof h + 4 * i, &le, 4);
  }
  crc = crc32c (0, &h, offsetof (struct format_cr_disk, crc));
  if (r->type == FORMAT_CR_WRITE)
    crc = crc32c (crc, hb + sizeof h, 4 * (size_t) r->nblk);
  h.crc = htole32 (crc);
  memcpy (hb, &h, sizeof h);
}

/* Write one record (at most FORMAT_CR_MAX_BLOCKS blocks). */
static int
write_record (struct cache *c, uint32_t type, uint32_t vol, uint64_t blk,
              uint32_t nblk, const uint8_t *buf, unsigned flags)
{
  bool fua = flags & CACHE_FUA, clean = flags & CACHE_CLEAN;
  struct rec r = { .type = type, .vol = vol, .blk = blk, .nblk = nblk,
                   .clean = clean,
                   .len = BLK + (type == FORMAT_CR_WRITE ? (uint64_t) nblk * BLK : 0) };
  struct rec pad;
  uint32_t crcs[FORMAT_CR_MAX_BLOCKS];
  uint8_t *hb = device_alloc_buf (2 * BLK);
  struct dev_req rq[6];
  size_t nr = 0, ok = 0;
  uint64_t lsn = 0;
  int ret = -1;

  if (!hb)
    return strata_error (ENOMEM, "out of memory");
  for (uint32_t i = 0; type == FORMAT_CR_WRITE && i < nblk; i++)
    crcs[i] = crc32c (0, buf + (size_t) i * BLK, BLK);
  pthread_mutex_lock (&c->lock);
  if (place (c, &r, &lsn, &pad, flags & CACHE_NOWAIT) == -1) {
    pthread_mutex_unlock (&c->lock);
    free (hb);
    return -1;
  }
  pthread_mutex_unlock (&c->lock);
  r.lsn = lsn;
  encode_record (c, hb, &r, crcs);
  if (pad.len)
    encode_record (c, hb + BLK, &pad, NULL);
  for (size_t i = 0; i < c->n; i++) {
    if (c->failed[i])
      continue;
    rq[nr++] = (struct dev_req) { .dev = c->m[i].dev, .op = DEV_WRITE,
                                  .fua = fua, .buf = hb, .len = BLK,
                                  .off = ring_off (c, &c->m[i], lsn),
                                  .tag = i };
    if (type == FORMAT_CR_WRITE)
      rq[nr++] = (struct dev_req) { .dev = c->m[i].dev, .op = DEV_WRITE,
                                    .fua = fua, .buf = (void *) buf,
                                    .len = nblk * BLK,
                                    .off = ring_off (c, &c->m[i], lsn + BLK),
                                    .tag = i };
    if (pad.len)
      rq[nr++] = (struct dev_req) { .dev = c->m[i].dev, .op = DEV_WRITE,
                                    .buf = hb + BLK, .len = BLK,
                                    .off = ring_off (c, &c->m[i], pad.lsn),
                                    .tag = i };
  }
  device_submit (rq, nr);

  pthread_mutex_lock (&c->lock);
  for (size_t k = 0; k < nr; k++)
    if (rq[k].res != 0 && !c->failed[rq[k].tag]) {
      c->failed[rq[k].tag] = true;
      fprintf (stderr, "strata: cache mirror %s dropped: write failed: %s\n",
               c->m[rq[k].tag].name, strerror (-rq[k].res));
    }
  for (size_t i = 0; i < c->n; i++)
    ok += !c->failed[i];
  if (pad.len)
    mark_done (c, pad.lsn);
  mark_done (c, lsn);
  if (ok == 0)
    strata_error (EIO, "the cache record could not be written to any mirror");
  else if (type == FORMAT_CR_WRITE) {
    ret = 0;
    for (uint32_t i = 0; i < nblk && ret == 0; i++)
      ret = admit (c, vol, blk + i, lsn + BLK * (i + 1), crcs[i], clean);
  }
  else
    ret = admit_zero (c, vol, blk, nblk, lsn);
  pthread_mutex_unlock (&c->lock);
  free (hb);
  if (ret == 0 && persist_failed (c) == -1)
    ret = -1;
  return ret;
}

int
cache_put (struct cache *c, uint32_t vol, uint64_t blk, uint32_t nblk,
           const void *buf, unsigned flags)
{
  if (!buf)
    return write_record (c, FORMAT_CR_ZERO, vol, blk, nblk, NULL,
                         flags & ~CACHE_CLEAN);
  while (nblk > 0) {
    uint32_t k = MIN (nblk, FORMAT_CR_MAX_BLOCKS);
    /* A record never takes more than a quarter of the ring. */
    k = MIN (k, MAX (1, c->log_size / 4 / BLK - 1));
    if (write_record (c, FORMAT_CR_WRITE, vol, blk, k, buf, flags) == -1)
      return -1;
    blk += k;
    nblk -= k;
    buf = (const uint8_t *) buf + (size_t) k * BLK;
  }
  return 0;
}

int
cache_write (struct cache *c, uint32_t vol, uint64_t blk, uint32_t nblk,
             const void *buf, bool fua)
{
  return cache_put (c, vol, blk, nblk, buf, fua ? CACHE_FUA : 0);
}

int
cache_write_clean (struct cache *c, uint32_t vol, uint64_t blk, uint32_t nblk,
                   const void *buf)
{
  return cache_put (c, vol, blk, nblk, buf, CACHE_CLEAN);
}

int
cache_wait_room (struct cache *c, uint64_t bytes)
{
  int r = 0;

  bytes = MIN (bytes, c->log_size / 2);
  pthread_mutex_lock (&c->lock);
  while (!c->sealed && c->nrecs > 0
         && c->head + bytes - c->tail > c->log_size) {
    if (c->stuck_err) {
      r = stuck_error (c);
      break;
    }
    pthread_cond_wait (&c->room, &c->lock);
  }
  pthread_mutex_unlock (&c->lock);
  return r;
}

void
cache_set_stuck (struct cache *c, int err, const char *why)
{
  pthread_mutex_lock (&c->lock);
  c->stuck_err = err;
  snprintf (c->stuck_why, sizeof c->stuck_why, "%s", err ? why : "");
  pthread_cond_broadcast (&c->room);
  pthread_mutex_unlock (&c->lock);
}

int
cache_forget (struct cache *c, uint32_t vol, uint64_t nblk)
{
  for (uint64_t b = 0; b < nblk; b += 1u << 31)
    if (write_record (c, FORMAT_CR_ZERO, vol, b, MIN (nblk - b, 1u << 31),
                      NULL, 0) == -1)
      return -1;
  return 0;
}

int
cache_flush (struct cache *c)
{
  struct dev_req rq[2];
  size_t nr = 0, ok = 0;

  pthread_mutex_lock (&c->lock);
  if (c->latched) {
    pthread_mutex_unlock (&c->lock);
    return strata_error (EIO, "an earlier cache flush failed on every "
                         "mirror; the cache takes no flush until it is "
                         "repaired");
  }
  for (size_t i = 0; i < c->n; i++)
    if (!c->failed[i])
      rq[nr++] = (struct dev_req) { .dev = c->m[i].dev, .op = DEV_FLUSH,
                                    .tag = i };
  pthread_mutex_unlock (&c->lock);
  device_submit (rq, nr);
  pthread_mutex_lock (&c->lock);
  for (size_t k = 0; k < nr; k++)
    if (rq[k].res == 0)
      ok++;
    else if (!c->failed[rq[k].tag]) {
      c->failed[rq[k].tag] = true;
      fprintf (stderr, "strata: cache mirror %s dropped: flush failed: %s\n",
               c->m[rq[k].tag].name, strerror (-rq[k].res));
    }
  if (ok == 0)
    c->latched = true;
  pthread_mutex_unlock (&c->lock);
  if (ok == 0)
    return strata_error (EIO, "the cache flush failed on every mirror");
  return persist_failed (c);
}

/* ---- reading ---- */

/* A read from mirror M failed (I/O, not a checksum): drop it if another
 * mirror is still in use; the last one is kept (a read error alone does
 * not lose what it holds).  Returns whether it was dropped. */
static bool
read_failed (struct cache *c, size_t m, int err)
{
  bool drop = false;

  pthread_mutex_lock (&c->lock);
  for (size_t i = 0; i < c->n && !c->failed[m]; i++)
    drop = drop || (i != m && !c->failed[i]);
  if (drop) {
    c->failed[m] = true;
    fprintf (stderr, "strata: cache mirror %s dropped: read failed: %s\n",
             c->m[m].name, strerror (err));
  }
  pthread_mutex_unlock (&c->lock);
  return drop;
}

int
cache_read (struct cache *c, uint32_t vol, uint64_t blk, uint32_t nblk,
            void *buf, uint8_t *hit)
{
  uint64_t *lsn = malloc (nblk * sizeof *lsn);
  uint32_t *crc = malloc (nblk * sizeof *crc);
  unsigned ep;
  bool dropped = false;
  int found = 0, r = 0;

  if (!lsn || !crc) {
    free (lsn);
    free (crc);
    return strata_error (ENOMEM, "out of memory");
  }
  memset (hit, 0, (nblk + 7) / 8);
  pthread_mutex_lock (&c->lock);
  ep = c->epoch & 1;
  c->readers[ep]++;
  for (uint32_t i = 0; i < nblk; i++) {
    struct ent *e = find (c, key_of (vol, blk + i));
    lsn[i] = 0;
    if (e) {
      lsn[i] = e->lsn;
      crc[i] = e->crc;
    }
    else if (zeroed_after (c, vol, blk + i, 0))
      memset ((uint8_t *) buf + (size_t) i * BLK, 0, BLK);
    else {
      c->misses++;
      continue;
    }
    hit[i / 8] |= 1 << (i % 8);
    found++;
  }
  c->hits += found;
  pthread_mutex_unlock (&c->lock);

  /* Runs of blocks that lie next to each other in the ring. */
  for (uint32_t i = 0; i < nblk && r == 0;) {
    uint32_t k = 1;
    bool good = false;
    if (!lsn[i]) {
      i++;
      continue;
    }
    while (i + k < nblk && lsn[i + k] == lsn[i] + (uint64_t) k * BLK)
      k++;
    for (size_t m = 0; m < c->n && !good; m++) {
      uint8_t *p = (uint8_t *) buf + (size_t) i * BLK;
      if (c->failed[m])
        continue;
      if (device_pread (c->m[m].dev, p, k * BLK,
                        ring_off (c, &c->m[m], lsn[i])) == -1) {
        dropped |= read_failed (c, m, errno);
        continue;
      }
      good = true;
      for (uint32_t q = 0; q < k && good; q++)
        good = crc32c (0, p + (size_t) q * BLK, BLK) == crc[i + q];
    }
    if (!good)
      r = strata_error (EIO, "volume %" PRIu32 " block %" PRIu64 ": no cache "
                        "mirror holds a copy that matches its checksum",
                        vol, blk + i);
    i += k;
  }

  pthread_mutex_lock (&c->lock);
  if (--c->readers[ep] == 0)
    pthread_cond_broadcast (&c->room);
  pthread_mutex_unlock (&c->lock);
  free (lsn);
  free (crc);
  /* The next write or flush records it too, should this fail. */
  if (dropped)
    persist_failed (c);
  return r == 0 ? found : -1;
}

bool
cache_live (struct cache *c, uint32_t vol, uint64_t blk, uint64_t lsn)
{
  struct ent *e;
  bool r;

  pthread_mutex_lock (&c->lock);
  e = find (c, key_of (vol, blk));
  r = e && e->lsn == lsn;
  pthread_mutex_unlock (&c->lock);
  return r;
}

/* ---- destaging ---- */

struct live {
  uint64_t key, lsn;
  uint32_t crc;
};

static int
by_key (const void *a, const void *b)
{
  const struct live *x = a, *y = b;
  return x->key < y->key ? -1 : x->key > y->key;
}

/* Wait until every reader that may have looked up a block before now
 * has finished.  Under c->lock. */
static void
wait_readers (struct cache *c)
{
  unsigned old = c->epoch & 1;

  c->epoch++;
  while (c->readers[old] > 0)
    pthread_cond_wait (&c->room, &c->lock);
}

int64_t
cache_destage (struct cache *c, uint64_t max_bytes,
               const struct cache_sink *sink)
{
  struct live *lv = NULL;
  size_t nlv = 0, take = 0, caplv = 0;
  uint64_t bytes = 0, end;
  uint8_t *data = NULL;
  uint64_t *lsns = NULL;
  struct zrange zero = { 0 };
  bool is_zero = false;
  int64_t ret = -1;

  pthread_mutex_lock (&c->lock);
  /* Completed records from the front; a zero record alone. */
  while (take < c->nrecs && rec_at (c, take)->done
         && (take == 0 || bytes < max_bytes)) {
    struct rec *r = rec_at (c, take);
    if (r->type == FORMAT_CR_ZERO) {
      if (take > 0)
        break;
      is_zero = true;
      zero = (struct zrange) { r->vol, r->blk, r->nblk, r->lsn };
      take = 1;
      bytes = r->len;
      break;
    }
    /* Clean blocks need no writing back: they leave with their record. */
    for (uint32_t i = 0; r->type == FORMAT_CR_WRITE && !r->clean
                         && i < r->nblk; i++) {
      struct ent *e = find (c, key_of (r->vol, r->blk + i));
      uint64_t l = r->lsn + BLK * (i + 1);
      if (!e || e->lsn != l)
        continue;		/* overwritten or zeroed since */
      if (nlv == caplv) {
        size_t cap = caplv ? caplv * 2 : 1024;
        struct live *n = realloc (lv, cap * sizeof *n);
        if (!n) {
          pthread_mutex_unlock (&c->lock);
          free (lv);
          return strata_error (ENOMEM, "out of memory");
        }
        lv = n;
        caplv = cap;
      }
      lv[nlv++] = (struct live) { e->key, l, e->crc };
    }
    bytes += r->len;
    take++;
  }
  end = take ? rec_at (c, take - 1)->lsn + rec_at (c, take - 1)->len : c->tail;
  pthread_mutex_unlock (&c->lock);
  if (take == 0) {
    free (lv);
    return 0;
  }

  if (is_zero) {
    if (sink->write (sink->opaque, zero.vol, zero.blk, zero.nblk, NULL, NULL)
        == -1 || sink->flush (sink->opaque) == -1)
      goto out;
  }
  else if (nlv > 0) {
    if (nlv > 1)
      qsort (lv, nlv, sizeof *lv, by_key);
    if (!(data = device_alloc_buf (nlv * BLK))) {
      strata_error (ENOMEM, "out of memory");
      goto out;
    }
    /* The data, all at once from the first mirror in use, verified (a
     * bad block from the other); then runs of adjacent blocks to the
     * sink. */
    size_t first = c->failed[0] && c->n > 1 ? 1 : 0;
    struct dev_req *rq = calloc (nlv, sizeof *rq);
    if (!rq) {
      strata_error (ENOMEM, "out of memory");
      goto out;
    }
    for (size_t i = 0; i < nlv; i++)
      rq[i] = (struct dev_req) { .dev = c->m[first].dev, .op = DEV_READ,
                                 .buf = data + i * BLK, .len = BLK,
                                 .off = ring_off (c, &c->m[first],
                                                  lv[i].lsn) };
    device_submit (rq, nlv);
    for (size_t i = 0; i < nlv; i++) {
      bool good = rq[i].res == 0
        && crc32c (0, data + i * BLK, BLK) == lv[i].crc;
      if (rq[i].res != 0)
        read_failed (c, first, -rq[i].res);
      for (size_t m = 0; m < c->n && !good; m++)
        good = m != first && !c->failed[m]
          && device_pread (c->m[m].dev, data + i * BLK, BLK,
                           ring_off (c, &c->m[m], lv[i].lsn)) == 0
          && crc32c (0, data + i * BLK, BLK) == lv[i].crc;
      if (!good) {
        free (rq);
        strata_error (EIO, "destage: block %" PRIu64 " of volume %" PRIu32
                      " matches its checksum on no cache mirror",
                      key_blk (lv[i].key), key_vol (lv[i].key));
        goto out;
      }
    }
    free (rq);
    if (!(lsns = malloc (nlv * sizeof *lsns))) {
      strata_error (ENOMEM, "out of memory");
      goto out;
    }
    for (size_t i = 0; i < nlv; i++)
      lsns[i] = lv[i].lsn;
    for (size_t i = 0; i < nlv;) {
      size_t k = 1;
      while (i + k < nlv && lv[i + k].key == lv[i].key + k
             && key_vol (lv[i + k].key) == key_vol (lv[i].key))
        k++;
      if (sink->write (sink->opaque, key_vol (lv[i].key),
                       key_blk (lv[i].key), k, data + i * BLK, lsns + i)
          == -1)
        goto out;
      i += k;
    }
    if (sink->flush (sink->opaque) == -1)
      goto out;
  }

  /* Durable on the backing copies: the blocks leave the index, and once
   * no reader can still be reading them, the tail moves past. */
  pthread_mutex_lock (&c->lock);
  for (size_t i = 0; i < nlv; i++) {
    struct ent *e = find (c, lv[i].key);
    if (e && e->lsn == lv[i].lsn) {
      drop (c, e);
      c->destaged++;
    }
  }
  for (size_t k = 0; k < take; k++) {
    struct rec *r = rec_at (c, k);
    for (uint32_t i = 0; r->clean && i < r->nblk; i++) {
      struct ent *e = find (c, key_of (r->vol, r->blk + i));
      if (e && e->lsn == r->lsn + BLK * (i + 1))
        drop (c, e);
    }
  }
  if (is_zero)
    for (size_t i = 0; i < c->nzr; i++)
      if (c->zr[i].lsn == zero.lsn) {
        c->zr[i] = c->zr[--c->nzr];
        break;
      }
  wait_readers (c);
  pthread_mutex_unlock (&c->lock);
  pthread_mutex_lock (&c->hlock);
  if (write_header (c, end) == -1) {
    pthread_mutex_unlock (&c->hlock);
    goto out;
  }
  pthread_mutex_unlock (&c->hlock);
  pthread_mutex_lock (&c->lock);
  c->r0 = (c->r0 + take) % c->caprecs;
  c->nrecs -= take;
  c->tail = end;
  pthread_cond_broadcast (&c->room);
  pthread_mutex_unlock (&c->lock);
  ret = bytes;
 out:
  free (lv);
  free (lsns);
  free (data);
  return ret;
}

void
cache_info (struct cache *c, struct cache_info *out)
{
  pthread_mutex_lock (&c->lock);
  *out = (struct cache_info) {
    .log_size = c->log_size, .used = c->head - c->tail,
    .head = c->head, .tail = c->tail,
    .age_ms = c->nrecs ? util_now_ms () - rec_at (c, 0)->t : 0,
    .dirty_blocks = c->dirty, .clean_blocks = c->count - c->dirty,
    .hits = c->hits, .misses = c->misses,
    .destaged = c->destaged, .latched = c->latched,
  };
  out->nmirrors = c->n;
  for (size_t i = 0; i < c->n; i++) {
    out->names[i] = c->m[i].name;
    out->failed[i] = c->failed[i];
    out->mirrors += !c->failed[i];
  }
  pthread_mutex_unlock (&c->lock);
}

bool
cache_seal (struct cache *c, bool force)
{
  bool idle = true;

  pthread_mutex_lock (&c->lock);
  for (size_t i = 0; i < c->nrecs && idle; i++)
    idle = rec_at (c, i)->done;
  if (force || (idle && c->count == 0 && c->nzr == 0))
    c->sealed = true;
  idle = c->sealed;
  if (idle)
    pthread_cond_broadcast (&c->room);
  pthread_mutex_unlock (&c->lock);
  return idle;
}

bool
cache_holds (struct cache *c, uint32_t vol, uint64_t blk, uint64_t nblk)
{
  bool r = false;

  pthread_mutex_lock (&c->lock);
  for (size_t i = 0; i < c->nzr && !r; i++)
    r = c->zr[i].vol == vol && c->zr[i].blk < blk + nblk
      && blk < c->zr[i].blk + c->zr[i].nblk;
  /* Look up each block, or sweep the table if that is shorter. */
  if (c->count == 0)
    ;
  else if (nblk > c->cap)
    for (size_t i = 0; i < c->cap && !r; i++)
      r = c->tab[i].key && key_vol (c->tab[i].key) == vol
        && key_blk (c->tab[i].key) >= blk && key_blk (c->tab[i].key) - blk < nblk;
  else
    for (uint64_t b = blk; b < blk + nblk && !r; b++)
      r = find (c, key_of (vol, b)) != NULL;
  pthread_mutex_unlock (&c->lock);
  return r;
}

int
cache_dirty_ranges (struct cache *c,
                    int (*fn) (void *opaque, uint32_t vol, uint64_t blk,
                               uint64_t nblk),
                    void *opaque)
{
  struct live *lv;
  size_t n = 0;
  int r = 0;

  pthread_mutex_lock (&c->lock);
  lv = malloc ((c->dirty + c->nzr + 1) * sizeof *lv);
  if (!lv) {
    pthread_mutex_unlock (&c->lock);
    return strata_error (ENOMEM, "out of memory");
  }
  for (size_t i = 0; i < c->cap; i++)
    if (c->tab[i].key && !c->tab[i].clean)
      lv[n++] = (struct live) { .key = c->tab[i].key, .lsn = 1 };
  /* A zero not yet destaged: the backing copies hold older data. */
  for (size_t i = 0; i < c->nzr; i++)
    lv[n++] = (struct live) { .key = key_of (c->zr[i].vol, c->zr[i].blk),
                              .lsn = c->zr[i].nblk };
  pthread_mutex_unlock (&c->lock);
  qsort (lv, n, sizeof *lv, by_key);
  for (size_t i = 0; i < n && r == 0;) {
    uint32_t vol = key_vol (lv[i].key);
    uint64_t b0 = key_blk (lv[i].key), b1 = b0 + lv[i].lsn;
    for (i++; i < n && key_vol (lv[i].key) == vol
           && key_blk (lv[i].key) <= b1; i++)
      b1 = MAX (b1, key_blk (lv[i].key) + lv[i].lsn);
    r = fn (opaque, vol, b0, b1 - b0);
  }
  free (lv);
  return r;
}
