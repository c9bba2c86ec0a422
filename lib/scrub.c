/* strata: scrub (see scrub.h).
 *
 * Design notes
 * ------------
 * The unit of work is one column: it is held against writes over its
 * whole extent (volume_column_hold), so the checksum array in memory is
 * exactly what every in-sync copy must hold, and a clean column's
 * checksum slots must equal it.  Every readable copy (usable and not
 * stale, meta.h) and its slot are read at once; then, block by block,
 * the copies that match the checksum are
 * good and the others bad.  Repairs write a good copy over each bad one
 * with FUA before the hold is released.  A block with no good copy is
 * left as it is (reads of it fail with EIO, which is the truth).  Its
 * reads bypass the page cache (dev_req.media): scrub is there to find
 * what the storage lost, which a cached page would hide.
 *
 * Progress is the position after the last whole chunk (volume id, chunk
 * index), committed about once a second with the counts so far; a run
 * that finds the record "running" and was given the same volume and mode
 * continues from there.
 *
 * Up to SCRUB_WORKERS threads take the chunks of a volume in order, each
 * holding one column at a time, so that the reads of several columns
 * are in flight together and their checksums are computed on every
 * core.  Reading and checking a column need no lock; what it found is
 * counted, logged and repaired under s->lock, so that one column's
 * findings stay together (the report sorts them back into the order of
 * a single-threaded run).  The saved position is the lowest chunk still
 * being checked, and "done" counts exactly the chunks below it, so a
 * continued run checks again, without counting them twice, the few
 * chunks past it that had finished out of order.
 */
#include <endian.h>
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "crc32c.h"
#include "csum.h"
#include "device.h"
#include "error.h"
#include "job.h"
#include "scrub.h"
#include "util.h"
#include "volume.h"

#define SCRUB_IO (1u << 20)	/* bytes per device read */
#define SCRUB_WORKERS 4		/* columns checked at once, at most */
#define SCRUB_MEM (64u << 20)	/* read buffers of all workers, unless one
				 * worker alone needs more */
#define SCRUB_LIST_MAX 1000	/* findings kept for the report */
#define SCRUB_LOG_MAX 100	/* bad blocks logged one by one */

enum finding_kind { F_MISMATCH, F_NO_GOOD_COPY, F_READ_ERROR, F_SLOT };

static const char *const kind_text[] = {
  [F_MISMATCH] = "checksum mismatch",
  [F_NO_GOOD_COPY] = "checksum mismatch, no good copy",
  [F_READ_ERROR] = "read error",
  [F_SLOT] = "checksum slot differs from the checksums",
};

/* Blocks [b0, b1] of extent EXT on device DEV, volume bytes [v0, v1]
 * (a read error: the whole extent, and the bytes of its chunk, of which
 * it holds column COL when the volume is striped). */
struct finding {
  uint32_t dev, ext;
  uint64_t b0, b1;
  uint32_t vol;			/* index into the run's volume list */
  uint64_t v0, v1;
  uint8_t kind;
  bool repaired;
  bool striped;
  uint64_t idx;			/* chunk and column it was found in */
  uint32_t col;
  size_t seq;			/* place in the list when found */
};

struct scrub {
  struct pool *p;
  const struct scrub_opts *o;
  struct job job;
  struct job_volume *vols;
  size_t vi;			/* the volume being scrubbed */
  struct util_first found;	/* the findings kept for the report */
  struct finding *last;		/* noted last: in FOUND or LASTDROP, or
				 * NULL */
  struct finding lastdrop;	/* the run last dropped */
  size_t seq;			/* findings made so far */
  /* This run, per device: [META_MAX_DEVICES], as devices may be added
   * while it runs. */
  uint64_t *dev_errors, *dev_repaired;
  uint64_t errors, repaired, unrepaired, blocks;	/* this run */
  unsigned logged;
  struct meta_job base;		/* the counts of the run continued */
  /* The workers (see the design notes).  While they run, LOCK protects
   * the counts and findings above and everything below. */
  pthread_mutex_t lock;
  struct volume *v;		/* the volume being scrubbed */
  uint64_t next, n;		/* the next chunk to take; chunk count */
  uint64_t given;		/* chunks taken so far */
  uint64_t vol_done0;		/* rec.done when the volume started */
  struct {
    uint64_t idx, ord;		/* chunk held, and which one taken */
    bool busy;
  } held[SCRUB_WORKERS];
  bool stop;			/* a worker failed: WHY */
  char why[256];
};

/* One worker's buffers, kept from column to column. */
struct scrub_bufs {
  char *buf[8];
  uint32_t *slot[8];
  struct dev_req *rq;
  uint8_t *bad;			/* per block: the copies that do not match */
};

/* The order of a single-threaded run: volume, chunk, column, and the
 * order a column's findings were made in. */
static int
finding_cmp (const void *a, const void *b)
{
  const struct finding *x = a, *y = b;

  if (x->vol != y->vol)
    return x->vol < y->vol ? -1 : 1;
  if (x->idx != y->idx)
    return x->idx < y->idx ? -1 : 1;
  if (x->col != y->col)
    return x->col < y->col ? -1 : 1;
  return x->seq < y->seq ? -1 : x->seq > y->seq;
}

/* Record a bad block: merged into the finding before it where it
 * continues it (a column is noted in one go, under the lock), else a new
 * finding.  Past SCRUB_LIST_MAX findings, those that come last in the
 * report's order make way, so that the report lists the same findings
 * whatever order the workers took the columns in; FOUND.dropped counts
 * the others (a run of blocks counts once). */
static void
note (struct scrub *s, struct volume *v, uint64_t idx, uint32_t col,
      struct meta_extent e, uint64_t b, uint8_t kind, bool repaired)
{
  uint64_t v0 = volume_column_offset (v, idx, col, b * STRATA_BLOCK);
  struct finding *last = s->last;
  struct finding f = { e.dev, e.ext, b, b, s->vi, v0, v0 + STRATA_BLOCK - 1,
                       kind, repaired, false, idx, col, s->seq++ };

  if (kind == F_READ_ERROR) {
    const struct meta_volume *mv = volume_meta (v);
    f.b1 = pool_meta (s->p)->extent_size / STRATA_BLOCK - 1;
    f.v0 = idx * mv->chunk_size;
    f.v1 = MIN ((idx + 1) * mv->chunk_size, mv->size) - 1;
    f.striped = mv->width > 1;
  }

  s->dev_errors[e.dev]++;
  if (repaired)
    s->dev_repaired[e.dev]++;
  if (last && last->dev == e.dev && last->ext == e.ext
      && last->kind == kind && last->repaired == repaired
      && last->b1 + 1 == b && last->v1 + 1 == v0 && last->vol == s->vi) {
    last->b1 = b;
    last->v1 = v0 + STRATA_BLOCK - 1;
    return;
  }
  /* A new run: where it is kept, or, when the list keeps findings that
   * sort before it, LASTDROP, so that the rest of the run is dropped
   * with it and counted once. */
  if (!(s->last = util_first_offer (&s->found, &f))) {
    s->lastdrop = f;
    s->last = &s->lastdrop;
  }
}

static void
log_finding (struct scrub *s, struct volume *v, struct meta_extent e,
             uint64_t b, uint64_t v0, const char *what, const char *result)
{
  if (++s->logged > SCRUB_LOG_MAX) {
    if (s->logged == SCRUB_LOG_MAX + 1)
      fprintf (stderr, "strata: scrub: more than %d bad blocks; the rest "
               "are in the report only\n", SCRUB_LOG_MAX);
    return;
  }
  fprintf (stderr, "strata: scrub: volume %s: %s on device %s, extent %"
           PRIu32 " block %" PRIu64 " (volume bytes %" PRIu64 "-%" PRIu64
           ")%s\n", volume_name (v), what,
           pool_meta (s->p)->devices[e.dev].name, e.ext, b, v0,
           v0 + STRATA_BLOCK - 1, result);
}

/* Make W ready for columns of R copies.  Returns 0 or -1. */
static int
bufs_alloc (struct scrub_bufs *w, struct pool *p, uint32_t R)
{
  uint64_t es = pool_meta (p)->extent_size;
  size_t nb = es / STRATA_BLOCK;

  for (uint32_t r = 0; r < R; r++)
    if (!(w->buf[r] = device_alloc_huge (es))
        || !(w->slot[r] = device_alloc_buf (format_csum_slot (es))))
      return strata_error (ENOMEM, "out of memory");
  /* The reads (R per SCRUB_IO and a slot each), then the repairs (at
   * most one per block and copy). */
  if (!(w->rq = calloc (MAX (R * (es / SCRUB_IO + 2), nb * R),
                        sizeof *w->rq))
      || !(w->bad = malloc (nb)))
    return strata_error (ENOMEM, "out of memory");
  return 0;
}

static void
bufs_free (struct scrub_bufs *w)
{
  for (uint32_t r = 0; r < 8; r++) {
    free (w->buf[r]);
    free (w->slot[r]);
  }
  free (w->rq);
  free (w->bad);
}

/* Scrub column COL of chunk IDX with W's buffers.  Returns device bytes
 * read and written, or -1. */
static int64_t
scrub_column (struct scrub *s, struct scrub_bufs *w, struct volume *v,
              uint64_t idx, uint32_t col)
{
  struct pool *p = s->p;
  struct meta_volume *mv = volume_meta (v);
  uint32_t R = mv->replicas;
  uint64_t es = pool_meta (p)->extent_size;
  uint64_t slotsz = format_csum_slot (es);
  size_t nb = es / STRATA_BLOCK, nr = 0, nw = 0;
  char *buf[8] = { NULL };	/* the copies read */
  uint32_t *slot[8] = { NULL };	/* their checksum slots, if clean */
  uint64_t slot_first[8];
  struct dev_req *rq = w->rq;
  struct meta_chunk *c;
  uint32_t *cs = NULL, slot_bad = 0, read_failed = 0, any_bad = 0;
  int read_err[8] = { 0 };
  uint64_t blocks = 0;
  bool clean;
  int64_t io = 0;

  if (volume_column_hold (v, idx, col, 0, es, &c) == -1)
    return -1;
  if (!c)
    return 0;			/* freed meanwhile */
  if (!(cs = csum_hold (p, mv, c, col))) {
    /* No copy of the checksums can be read: every copy counts as
     * unreadable. */
    pthread_mutex_lock (&s->lock);
    for (uint32_t r = 0; r < R; r++) {
      struct meta_extent e = c->ext[col * R + r];
      note (s, v, idx, col, e, 0, F_READ_ERROR, false);
      s->errors++;
    }
    s->unrepaired += nb;
    pthread_mutex_unlock (&s->lock);
    goto out;
  }
  clean = atomic_load (&c->col[col].state) == META_COL_CLEAN;

  for (uint32_t r = 0; r < R; r++) {
    struct meta_extent e = c->ext[col * R + r];
    if (!pool_copy_readable (p, c, R, col, r))
      continue;
    buf[r] = w->buf[r];
    for (uint64_t o = 0; o < es; o += SCRUB_IO) {
      rq[nr] = (struct dev_req) {
        .dev = pool_device (p, e.dev), .op = DEV_READ, .media = true,
        .buf = buf[r] + o, .len = MIN (SCRUB_IO, es - o),
        .off = pool_extent_offset (p, e, o), .tag = r,
      };
      nr++;
    }
    if (clean) {
      slot[r] = w->slot[r];
      rq[nr] = (struct dev_req) {
        .dev = pool_device (p, e.dev), .op = DEV_READ, .media = true,
        .buf = slot[r], .len = slotsz, .off = csum_slot_offset (p, e),
        .tag = r | 0x100,
      };
      nr++;
    }
    io += es + (clean ? slotsz : 0);
  }
  device_submit (rq, nr);
  for (size_t k = 0; k < nr; k++) {
    uint32_t r = rq[k].tag & 0xff;
    struct meta_extent e = c->ext[col * R + r];
    char why[200];
    if (rq[k].res == 0)
      continue;
    snprintf (why, sizeof why, "scrub read failed: %s", strerror (-rq[k].res));
    pool_device_read_error (p, e.dev, why);
    if (rq[k].tag & 0x100)
      slot[r] = NULL;
    else if (buf[r]) {
      buf[r] = NULL;
      read_failed |= 1u << r;
      read_err[r] = -rq[k].res;
    }
  }

  /* Check every block of every copy read, and the slots of a clean
   * column, before taking the lock. */
  for (size_t b = 0; b < nb; b++) {
    uint8_t bad = 0;
    for (uint32_t r = 0; r < R; r++) {
      if (!buf[r])
        continue;
      blocks++;
      if (crc32c (0, buf[r] + b * STRATA_BLOCK, STRATA_BLOCK) != cs[b])
        bad |= 1u << r;
    }
    w->bad[b] = bad;
    any_bad |= bad;
  }
  for (uint32_t r = 0; r < R && clean; r++) {
    if (!slot[r] || !buf[r])
      continue;
    for (size_t b = 0; b < nb; b++)
      if (le32toh (slot[r][b]) != cs[b]) {
        slot_first[r] = b;
        slot_bad |= 1u << r;
        break;
      }
  }

  pthread_mutex_lock (&s->lock);
  s->blocks += blocks;
  for (uint32_t r = 0; r < R; r++) {
    struct meta_extent e = c->ext[col * R + r];
    if (!(read_failed & (1u << r)))
      continue;
    note (s, v, idx, col, e, 0, F_READ_ERROR, false);
    s->errors++;
    fprintf (stderr, "strata: scrub: volume %s: device %s, extent %" PRIu32
             ": scrub read failed: %s\n", volume_name (v),
             pool_meta (p)->devices[e.dev].name, e.ext,
             strerror (read_err[r]));
  }

  /* Block by block: good copies, bad copies, repairs. */
  for (size_t b = 0; b < nb && any_bad; b++) {
    uint32_t bad = w->bad[b];
    int good = -1;
    uint64_t v0 = volume_column_offset (v, idx, col, b * STRATA_BLOCK);

    if (!bad)
      continue;
    for (uint32_t r = 0; r < R && good < 0; r++)
      if (buf[r] && !(bad & (1u << r)))
        good = r;
    for (uint32_t r = 0; r < R; r++) {
      struct meta_extent e = c->ext[col * R + r];
      if (!(bad & (1u << r)))
        continue;
      s->errors++;
      pool_device_csum_error (p, e.dev);
      if (good < 0) {
        note (s, v, idx, col, e, b, F_NO_GOOD_COPY, false);
        log_finding (s, v, e, b, v0, "checksum mismatch",
                     "; no good copy, left alone");
        continue;
      }
      if (!s->o->repair) {
        note (s, v, idx, col, e, b, F_MISMATCH, false);
        log_finding (s, v, e, b, v0, "checksum mismatch", "");
        continue;
      }
      rq[nw] = (struct dev_req) {
        .dev = pool_device (p, e.dev), .op = DEV_WRITE, .fua = true,
        .buf = buf[good] + b * STRATA_BLOCK, .len = STRATA_BLOCK,
        .off = pool_extent_offset (p, e, b * STRATA_BLOCK),
        .tag = r,
      };
      nw++;
    }
    if (good < 0)
      s->unrepaired++;
  }
  /* The writes reuse RQ: the reads are done with it.  They go out
   * under the lock; there are none unless something was found. */
  device_submit (rq, nw);
  for (size_t k = 0; k < nw; k++) {
    struct meta_extent e = c->ext[col * R + rq[k].tag];
    uint64_t b = (rq[k].off - pool_extent_offset (p, e, 0)) / STRATA_BLOCK;
    uint64_t v0 = volume_column_offset (v, idx, col, b * STRATA_BLOCK);
    bool ok = rq[k].res == 0;
    if (ok) {
      s->repaired++;
      pool_device_repaired (p, e.dev, 1);
    }
    else {
      /* Lack of space leaves the bad block as it is (reads pass it by);
       * any other failure fails the device. */
      char why[200];
      if (device_no_space (rq[k].res)) {
        snprintf (why, sizeof why, "volume %s chunk %" PRIu64 " column %"
                  PRIu32 ": a scrub repair found no space", volume_name (v),
                  idx, col);
        pool_device_no_space (p, e.dev, why);
      } else {
        snprintf (why, sizeof why, "scrub repair write failed: %s",
                  strerror (-rq[k].res));
        pool_device_fail (p, e.dev, why);
      }
    }
    note (s, v, idx, col, e, b, F_MISMATCH, ok);
    log_finding (s, v, e, b, v0, "checksum mismatch",
                 ok ? "; repaired" : "; repair failed");
    io += STRATA_BLOCK;
  }

  /* The checksum slots of a clean column must hold the checksums. */
  for (uint32_t r = 0; r < R; r++) {
    struct meta_extent e = c->ext[col * R + r];
    if (!(slot_bad & (1u << r)))
      continue;
    s->errors++;
    pool_device_csum_error (p, e.dev);
    fprintf (stderr, "strata: scrub: volume %s: checksum slot of extent %"
             PRIu32 " on device %s differs from the checksums (first at "
             "block %" PRIu64 ")%s\n", volume_name (v), e.ext,
             pool_meta (p)->devices[e.dev].name, slot_first[r],
             s->o->repair ? "; rewritten" : "");
    note (s, v, idx, col, e, slot_first[r], F_SLOT, s->o->repair);
  }
  if (slot_bad && s->o->repair) {
    /* The hold keeps the column clean (a write would need it), so the
     * slots can be written here without the cleaner. */
    struct dev_req wq[8];
    size_t n = 0;
    for (uint32_t r = 0; r < R; r++) {
      struct meta_extent e = c->ext[col * R + r];
      if (!(slot_bad & (1u << r)))
        continue;
      for (size_t b = 0; b < nb; b++)
        slot[r][b] = htole32 (cs[b]);
      wq[n++] = (struct dev_req) { .dev = pool_device (p, e.dev),
                                   .op = DEV_WRITE, .fua = true,
                                   .buf = slot[r], .len = slotsz,
                                   .off = csum_slot_offset (p, e), .tag = r };
    }
    device_submit (wq, n);
    for (size_t k = 0; k < n; k++) {
      uint32_t dev = c->ext[col * R + wq[k].tag].dev;
      if (wq[k].res == 0) {
        s->repaired++;
        pool_device_repaired (p, dev, 1);
      }
      else if (device_no_space (wq[k].res))
        pool_device_no_space (p, dev, "a scrub found no space for a "
                              "checksum slot");
      else
        pool_device_fail (p, dev, "scrub: checksum slot write failed");
    }
  }
  pthread_mutex_unlock (&s->lock);

 out:
  if (cs)
    csum_release (c, col);
  volume_column_release (v, idx, col, 0, es);
  return io;
}

/* The allocated bytes of the volumes of the run. */
static uint64_t
allocated (struct pool *p, const struct job_volume *vols, size_t n)
{
  struct meta *m = pool_meta (p);
  uint64_t t = 0;

  pthread_mutex_lock (&m->lock);
  for (size_t i = 0; i < n; i++) {
    struct meta_volume *v = meta_find_volume_id (m, vols[i].id);
    if (v)
      t += atomic_load (&v->nchunks) * v->chunk_size;
  }
  pthread_mutex_unlock (&m->lock);
  return t;
}

static void
report (struct scrub *s, FILE *out, bool resumed, bool finished)
{
  struct meta *m = pool_meta (s->p);
  struct meta_job *r = &s->job.rec;
  const char *state = finished ? "finished" : "interrupted";
  double secs = job_elapsed (&s->job);
  char a[32], b[32];

  util_first_sort (&s->found);

  if (s->o->json) {
    fprintf (out, "{\"job\":\"scrub\",\"state\":\"%s\",\"volume\":", state);
    if (s->o->volume)
      fprintf (out, "\"%s\"", s->o->volume);
    else
      fprintf (out, "null");
    fprintf (out, ",\"repair\":%s,\"resumed\":%s,\"bytes\":%" PRIu64
             ",\"total\":%" PRIu64 ",\"blocks\":%" PRIu64 ",\"errors\":%"
             PRIu64 ",\"repaired\":%" PRIu64 ",\"unrepaired\":%" PRIu64
             ",\"run\":{\"blocks\":%" PRIu64 ",\"errors\":%" PRIu64
             ",\"repaired\":%" PRIu64 ",\"unrepaired\":%" PRIu64
             ",\"seconds\":%.3f,\"device_bytes\":%" PRIu64 "},\"devices\":[",
             s->o->repair ? "true" : "false", resumed ? "true" : "false",
             r->done, r->total, r->blocks, r->errors, r->repaired,
             r->unrepaired, s->blocks, s->errors, s->repaired,
             s->unrepaired, secs, s->job.io);
    for (uint32_t i = 0; i < m->ndevices; i++)
      fprintf (out, "%s{\"name\":\"%s\",\"errors\":%" PRIu64 ",\"repaired\":%"
               PRIu64 "}", i ? "," : "", m->devices[i].name,
               s->dev_errors[i], s->dev_repaired[i]);
    fprintf (out, "],\"findings\":[");
    for (size_t i = 0; i < s->found.n; i++) {
      struct finding *f = (struct finding *) s->found.items + i;
      fprintf (out, "%s{\"device\":\"%s\",\"extent\":%" PRIu32 ",\"blocks\":[%"
               PRIu64 ",%" PRIu64 "],\"volume\":\"%s\",\"bytes\":[%" PRIu64
               ",%" PRIu64 "],\"problem\":\"%s\",\"repaired\":%s}",
               i ? "," : "", m->devices[f->dev].name, f->ext, f->b0, f->b1,
               s->vols[f->vol].name, f->v0, f->v1, kind_text[f->kind],
               f->repaired ? "true" : "false");
    }
    fprintf (out, "],\"findings_dropped\":%zu}\n", s->found.dropped);
    return;
  }

  fprintf (out, "scrub of %s%s %s: %s checked in %.1f s (%s/s from the "
           "devices)%s\n", s->o->volume ? "volume " : "",
           s->o->volume ? s->o->volume : "every volume", state,
           util_human_size (r->done, a, sizeof a), secs,
           util_human_size (secs > 0 ? s->job.io / secs : 0, b, sizeof b),
           resumed ? ", continuing an interrupted scrub" : "");
  for (size_t i = 0; i < s->found.n; i++) {
    struct finding *f = (struct finding *) s->found.items + i;
    char blocks[64], col[32] = "";
    if (f->kind == F_READ_ERROR) {
      snprintf (blocks, sizeof blocks, "whole extent");
      if (f->striped)
        snprintf (col, sizeof col, "column %" PRIu32 " of ", f->col);
    }
    else if (f->b0 == f->b1)
      snprintf (blocks, sizeof blocks, "block %" PRIu64, f->b0);
    else
      snprintf (blocks, sizeof blocks, "blocks %" PRIu64 "-%" PRIu64, f->b0,
                f->b1);
    fprintf (out, "  device %s, extent %" PRIu32 ", %s (%svolume %s bytes %"
             PRIu64 "-%" PRIu64 "): %s%s\n", m->devices[f->dev].name, f->ext,
             blocks, col, s->vols[f->vol].name, f->v0, f->v1,
             kind_text[f->kind],
             f->repaired ? ", repaired"
             : f->kind == F_NO_GOOD_COPY ? ", left alone"
             : f->kind == F_READ_ERROR ? "" : ", not repaired");
  }
  if (s->found.dropped)
    fprintf (out, "  ... and %zu more findings after these\n",
             s->found.dropped);
  fprintf (out, "blocks checked: %" PRIu64 "; errors: %" PRIu64, r->blocks,
           r->errors);
  {
    bool first = true;
    for (uint32_t i = 0; i < m->ndevices; i++)
      if (s->dev_errors[i]) {
        fprintf (out, "%s%s %" PRIu64, first ? " (" : ", ",
                 m->devices[i].name, s->dev_errors[i]);
        first = false;
      }
    if (!first)
      fputc (')', out);
  }
  fprintf (out, "; repaired: %" PRIu64 "; no good copy: %" PRIu64 "\n",
           r->repaired, r->unrepaired);
  if (r->errors > r->repaired && !s->o->repair)
    fprintf (out, "run 'strata scrub --repair' to rewrite the bad copies "
             "from good ones\n");
}

/* The record's counts: those of the interrupted run continued
 * (s->base) plus this run's. */
static void
counts (struct scrub *s)
{
  s->job.rec.blocks = s->base.blocks + s->blocks;
  s->job.rec.errors = s->base.errors + s->errors;
  s->job.rec.repaired = s->base.repaired + s->repaired;
  s->job.rec.unrepaired = s->base.unrepaired + s->unrepaired;
}

static void
stop_with (struct scrub *s, const char *why)
{
  if (!s->stop)
    snprintf (s->why, sizeof s->why, "%s", why);
  s->stop = true;
}

/* After a chunk: the position and "done" of the record (see the design
 * notes), progress, and a commit now and then.  Called with s->lock
 * held.  Returns when the rate limit lets the worker go on (job_pace). */
static double
chunk_done (struct scrub *s, int64_t io)
{
  double due;
  struct meta_volume *mv = volume_meta (s->v);
  uint64_t pos = s->next, ndone = s->given;

  for (int k = 0; k < SCRUB_WORKERS; k++)
    if (s->held[k].busy && s->held[k].idx < pos) {
      pos = s->held[k].idx;
      ndone = s->held[k].ord;
    }
  s->job.rec.pos_vol = mv->id;
  s->job.rec.pos_chunk = pos;
  s->job.rec.done = s->vol_done0 + ndone * mv->chunk_size;
  counts (s);
  /* Under the lock: the rate limit holds for all workers together. */
  due = job_account (&s->job, io);
  if (job_save (&s->job, false) == -1)
    stop_with (s, strata_last_error ());
  return due;
}

struct worker_arg {
  struct scrub *s;
  int k;			/* its slot in s->held */
};

static void *
worker (void *opaque)
{
  struct worker_arg *a = opaque;
  struct scrub *s = a->s;
  struct meta_volume *mv = volume_meta (s->v);
  struct scrub_bufs w;

  memset (&w, 0, sizeof w);
  if (bufs_alloc (&w, s->p, mv->replicas) == -1) {
    pthread_mutex_lock (&s->lock);
    stop_with (s, strata_last_error ());
    pthread_mutex_unlock (&s->lock);
    goto out;
  }
  for (;;) {
    uint64_t idx;
    int64_t io = 0;
    double due = 0;

    pthread_mutex_lock (&s->lock);
    while (s->next < s->n && !meta_chunk_get (mv, s->next))
      s->next++;		/* never written */
    if (s->stop || s->next >= s->n || job_cancelled (&s->job)) {
      pthread_mutex_unlock (&s->lock);
      break;
    }
    idx = s->next++;
    s->held[a->k].idx = idx;
    s->held[a->k].ord = s->given++;
    s->held[a->k].busy = true;
    pthread_mutex_unlock (&s->lock);

    for (uint32_t col = 0; col < mv->width && io != -1; col++) {
      int64_t n = scrub_column (s, &w, s->v, idx, col);
      io = n == -1 ? -1 : io + n;
    }
    /* A scrub loads every column's checksums: keep them within the
     * pool's checksum_memory (also offline, with no cleaner thread). */
    csum_shrink (s->p, false);

    pthread_mutex_lock (&s->lock);
    s->held[a->k].busy = false;
    if (io == -1)
      stop_with (s, strata_last_error ());
    else
      due = chunk_done (s, io);
    pthread_mutex_unlock (&s->lock);
    job_pace (&s->job, due);
  }
 out:
  bufs_free (&w);
  device_thread_exit ();	/* this thread's io_uring */
  return NULL;
}

/* Scrub the chunks of volume V from FIRST on.  Returns 0 when they are
 * all done, or -1 (failed: s->stop, or cancelled). */
static int
scrub_volume (struct scrub *s, struct volume *v, uint64_t first)
{
  struct meta_volume *mv = volume_meta (v);
  uint64_t per = (uint64_t) mv->replicas
    * round_up (pool_meta (s->p)->extent_size, DEVICE_HUGE_PAGE);
  int nw = MAX (1, MIN (SCRUB_WORKERS, (int) (SCRUB_MEM / per)));
  struct worker_arg a[SCRUB_WORKERS];
  pthread_t t[SCRUB_WORKERS];
  int n = 0;

  s->v = v;
  s->next = first;
  s->n = meta_volume_nchunks (mv);
  s->given = 0;
  s->vol_done0 = s->job.rec.done;
  for (int k = 0; k < nw; k++) {
    a[k] = (struct worker_arg) { s, k };
    if (pthread_create (&t[n], NULL, worker, &a[k]) == 0)
      n++;
  }
  if (n == 0)
    worker (&a[0]);		/* no thread: work here */
  for (int k = 0; k < n; k++)
    pthread_join (t[k], NULL);
  if (s->stop || job_cancelled (&s->job))
    return -1;
  return 0;
}

int
scrub_run (struct pool *p, const struct scrub_opts *o, FILE *out, FILE *err)
{
  struct meta *m = pool_meta (p);
  struct scrub s = { .p = p, .o = o, .lock = PTHREAD_MUTEX_INITIALIZER,
                    .found = { .max = SCRUB_LIST_MAX,
                                          .size = sizeof (struct finding),
                                          .cmp = finding_cmp } };
  struct meta_job prev;
  uint32_t vol = 0;
  ssize_t nv;
  bool resumed = false, finished = false;
  int ret = -1;

  if (!pool_writable (p))
    return strata_error (EROFS, "scrub needs the pool open for writing");
  if (o->volume) {
    struct meta_volume *v;
    pthread_mutex_lock (&m->lock);
    v = meta_find_volume (m, o->volume);
    vol = v ? v->id : 0;
    pthread_mutex_unlock (&m->lock);
    if (!vol)
      return strata_error (ENOENT, "no volume named %s", o->volume);
  }
  if (!pool_job_claim (p, META_JOB_SCRUB))
    return strata_error (EBUSY, "a scrub is already running on pool %s "
                         "(see strata status)", m->name);
  s.dev_errors = calloc (META_MAX_DEVICES, sizeof *s.dev_errors);
  s.dev_repaired = calloc (META_MAX_DEVICES, sizeof *s.dev_repaired);
  if (!s.dev_errors || !s.dev_repaired) {
    strata_error (ENOMEM, "out of memory");
    goto out;
  }
  if ((nv = job_volumes (p, vol, &s.vols)) == -1)
    goto out;

  job_init (&s.job, p, META_JOB_SCRUB, "scrub", "bytes", o->rate, err,
            o->bar);
  pthread_mutex_lock (&m->lock);
  prev = m->jobs[META_JOB_SCRUB];
  pthread_mutex_unlock (&m->lock);
  if (!o->restart && prev.state == META_JOB_RUNNING && prev.vol == vol
      && (prev.flags & META_JOB_REPAIR) == (o->repair ? META_JOB_REPAIR : 0)) {
    s.job.rec = s.base = prev;
    resumed = true;
    struct meta_volume *pv;
    char name[FORMAT_NAME_MAX + 16], a[32], b[32];
    pthread_mutex_lock (&m->lock);
    pv = meta_find_volume_id (m, prev.pos_vol);
    if (pv)
      snprintf (name, sizeof name, "%s", pv->name);
    else
      snprintf (name, sizeof name, "id %" PRIu32, prev.pos_vol);
    pthread_mutex_unlock (&m->lock);
    fprintf (err, "strata: continuing the scrub interrupted in volume %s "
             "at chunk %" PRIu64 " (%s of %s done; --restart starts "
             "again)\n", name, prev.pos_chunk,
             util_human_size (prev.done, a, sizeof a),
             util_human_size (prev.total, b, sizeof b));
  }
  else {
    s.job.rec = (struct meta_job) {
      .state = META_JOB_RUNNING, .flags = o->repair ? META_JOB_REPAIR : 0,
      .vol = vol, .pos_vol = 0, .pos_chunk = 0, .started = job_now (),
      .total = allocated (p, s.vols, nv),
    };
  }
  s.job.done0 = s.job.rec.done;
  if (job_save (&s.job, true) == -1)
    goto out;

  for (s.vi = 0; s.vi < (size_t) nv; s.vi++) {
    struct job_volume *jv = &s.vols[s.vi];
    struct volume *v;
    uint64_t first = 0;

    if (jv->id < s.job.rec.pos_vol)
      continue;
    if (jv->id == s.job.rec.pos_vol)
      first = s.job.rec.pos_chunk;
    if (!(v = volume_open_job (p, jv->name, VOLUME_JOB_SCRUB)))
      continue;			/* deleted meanwhile */
    if (scrub_volume (&s, v, first) == -1) {
      volume_close (v);
      goto stopped;
    }
    volume_close (v);
    s.job.rec.pos_vol = jv->id + 1;
    s.job.rec.pos_chunk = 0;
  }
  finished = true;

 stopped:
  job_progress_done (&s.job);
  counts (&s);
  if (finished && s.job.rec.done > s.job.rec.total)
    s.job.rec.total = s.job.rec.done;	/* volumes grew meanwhile */
  {
    /* The error of the step that failed, if one did, before the save. */
    char *why = finished || !s.stop ? NULL : strdup (s.why);
    if (job_end (&s.job, finished) == -1) {
      free (why);
      goto out;
    }
    report (&s, out, resumed, finished);
    if (!finished) {
      job_stopped (&s.job, why);
      free (why);
      goto out;
    }
  }
  ret = s.job.rec.errors > s.job.rec.repaired ? 1 : 0;
 out:
  pool_job_release (p, META_JOB_SCRUB);
  free (s.vols);
  util_first_free (&s.found);
  free (s.dev_errors);
  free (s.dev_repaired);
  return ret;
}
