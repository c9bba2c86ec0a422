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
 * left as it is (reads of it fail with EIO, which is the truth).
 *
 * Progress is the position after the last whole chunk (volume id, chunk
 * index), committed about once a second with the counts so far; a run
 * that finds the record "running" and was given the same volume and mode
 * continues from there.
 */
#include <endian.h>
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "crc32c.h"
#include "csum.h"
#include "error.h"
#include "job.h"
#include "scrub.h"
#include "util.h"
#include "volume.h"

#define SCRUB_IO (1u << 20)	/* bytes per device read */
#define SCRUB_LIST_MAX 1000	/* findings kept for the report */
#define SCRUB_LOG_MAX 100	/* bad blocks logged one by one */

enum finding_kind { F_MISMATCH, F_NO_GOOD_COPY, F_READ_ERROR, F_SLOT };

static const char *const kind_text[] = {
  [F_MISMATCH] = "checksum mismatch",
  [F_NO_GOOD_COPY] = "checksum mismatch, no good copy",
  [F_READ_ERROR] = "read error",
  [F_SLOT] = "checksum slot differs from the checksums",
};

/* Blocks [b0, b1] of extent EXT on device DEV, volume bytes [v0, v1]. */
struct finding {
  uint32_t dev, ext;
  uint64_t b0, b1;
  uint32_t vol;			/* index into the run's volume list */
  uint64_t v0, v1;
  uint8_t kind;
  bool repaired;
};

struct scrub {
  struct pool *p;
  const struct scrub_opts *o;
  struct job job;
  struct job_volume *vols;
  size_t vi;			/* the volume being scrubbed */
  struct finding *f;
  size_t nf, capf, dropped;
  /* This run, per device: [META_MAX_DEVICES], as devices may be added
   * while it runs. */
  uint64_t *dev_errors, *dev_repaired;
  uint64_t errors, repaired, unrepaired, blocks;	/* this run */
  unsigned logged;
};

static void
note (struct scrub *s, struct volume *v, uint64_t idx, uint32_t col,
      struct meta_extent e, uint64_t b, uint8_t kind, bool repaired)
{
  uint64_t v0 = volume_column_offset (v, idx, col, b * STRATA_BLOCK);
  struct finding *last = s->nf ? &s->f[s->nf - 1] : NULL;

  s->dev_errors[e.dev]++;
  if (repaired)
    s->dev_repaired[e.dev]++;
  if (last && last->dev == e.dev && last->ext == e.ext && last->kind == kind
      && last->repaired == repaired && last->b1 + 1 == b
      && last->v1 + 1 == v0 && last->vol == s->vi) {
    last->b1 = b;
    last->v1 = v0 + STRATA_BLOCK - 1;
    return;
  }
  if (s->nf == s->capf) {
    size_t cap = s->capf ? s->capf * 2 : 64;
    struct finding *nf;
    if (s->nf >= SCRUB_LIST_MAX
        || !(nf = realloc (s->f, MIN (cap, SCRUB_LIST_MAX) * sizeof *nf))) {
      s->dropped++;
      return;
    }
    s->f = nf;
    s->capf = MIN (cap, SCRUB_LIST_MAX);
  }
  s->f[s->nf++] = (struct finding) { e.dev, e.ext, b, b, s->vi, v0,
                                     v0 + STRATA_BLOCK - 1, kind, repaired };
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

/* Scrub column COL of chunk IDX.  Returns device bytes read, or -1. */
static int64_t
scrub_column (struct scrub *s, struct volume *v, uint64_t idx, uint32_t col)
{
  struct pool *p = s->p;
  struct meta_volume *mv = volume_meta (v);
  uint32_t R = mv->replicas;
  uint64_t es = pool_meta (p)->extent_size;
  uint64_t slotsz = format_csum_slot (es);
  size_t nb = es / STRATA_BLOCK, nr = 0, nw = 0;
  char *buf[8] = { NULL };
  uint32_t *slot[8] = { NULL };
  struct dev_req *rq = NULL;
  struct meta_chunk *c;
  uint32_t *cs, slot_bad = 0;
  bool clean;
  int64_t io = 0;

  if (volume_column_hold (v, idx, col, 0, es, &c) == -1)
    return -1;
  if (!c)
    return 0;			/* freed meanwhile */
  rq = calloc (R * (es / SCRUB_IO + 2) + nb * R, sizeof *rq);
  if (!rq) {
    io = strata_error (ENOMEM, "out of memory");
    goto out;
  }
  if (!(cs = csum_get (p, mv, c, col))) {
    /* No copy of the checksums can be read: every copy counts as
     * unreadable. */
    for (uint32_t r = 0; r < R; r++) {
      struct meta_extent e = c->ext[col * R + r];
      note (s, v, idx, col, e, 0, F_READ_ERROR, false);
      s->errors++;
    }
    s->unrepaired += nb;
    goto out;
  }
  clean = atomic_load (&c->col[col].state) == META_COL_CLEAN;

  for (uint32_t r = 0; r < R; r++) {
    struct meta_extent e = c->ext[col * R + r];
    if (!pool_copy_readable (p, c, R, col, r))
      continue;
    if (!(buf[r] = device_alloc_buf (es))
        || (clean && !(slot[r] = device_alloc_buf (slotsz)))) {
      io = strata_error (ENOMEM, "out of memory");
      goto out;
    }
    for (uint64_t o = 0; o < es; o += SCRUB_IO) {
      rq[nr] = (struct dev_req) {
        .dev = pool_device (p, e.dev), .op = DEV_READ, .buf = buf[r] + o,
        .len = MIN (SCRUB_IO, es - o), .off = pool_extent_offset (p, e, o),
        .tag = r,
      };
      nr++;
    }
    if (clean) {
      rq[nr] = (struct dev_req) {
        .dev = pool_device (p, e.dev), .op = DEV_READ, .buf = slot[r],
        .len = slotsz, .off = csum_slot_offset (p, e), .tag = r | 0x100,
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
    if (rq[k].tag & 0x100) {
      free (slot[r]);
      slot[r] = NULL;
    }
    else if (buf[r]) {
      free (buf[r]);
      buf[r] = NULL;
      note (s, v, idx, col, e, 0, F_READ_ERROR, false);
      s->errors++;
      fprintf (stderr, "strata: scrub: volume %s: device %s, extent %" PRIu32
               ": %s\n", volume_name (v), pool_meta (p)->devices[e.dev].name,
               e.ext, why);
    }
  }

  /* Block by block: good copies, bad copies, repairs. */
  for (size_t b = 0; b < nb; b++) {
    int good = -1;
    uint32_t bad = 0;
    uint64_t v0 = volume_column_offset (v, idx, col, b * STRATA_BLOCK);

    for (uint32_t r = 0; r < R; r++) {
      if (!buf[r])
        continue;
      s->blocks++;
      if (crc32c (0, buf[r] + b * STRATA_BLOCK, STRATA_BLOCK) == cs[b]) {
        if (good < 0)
          good = r;
      }
      else
        bad |= 1u << r;
    }
    if (!bad)
      continue;
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
      pool_mark_dirty (p, e.dev);
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
  /* The writes reuse RQ: the reads are done with it. */
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
      char why[200];
      snprintf (why, sizeof why, "scrub repair write failed: %s",
                strerror (-rq[k].res));
      pool_device_fail (p, e.dev, why);
    }
    note (s, v, idx, col, e, b, F_MISMATCH, ok);
    log_finding (s, v, e, b, v0, "checksum mismatch",
                 ok ? "; repaired" : "; repair failed");
    io += STRATA_BLOCK;
  }

  /* The checksum slots of a clean column must hold the checksums. */
  for (uint32_t r = 0; r < R && clean; r++) {
    struct meta_extent e = c->ext[col * R + r];
    uint64_t first = UINT64_MAX;
    if (!slot[r] || !buf[r])
      continue;
    for (size_t b = 0; b < nb; b++)
      if (le32toh (slot[r][b]) != cs[b]) {
        first = b;
        break;
      }
    if (first == UINT64_MAX)
      continue;
    slot_bad |= 1u << r;
    s->errors++;
    pool_device_csum_error (p, e.dev);
    fprintf (stderr, "strata: scrub: volume %s: checksum slot of extent %"
             PRIu32 " on device %s differs from the checksums (first at "
             "block %" PRIu64 ")%s\n", volume_name (v), e.ext,
             pool_meta (p)->devices[e.dev].name, first,
             s->o->repair ? "; rewritten" : "");
    note (s, v, idx, col, e, first, F_SLOT, s->o->repair);
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
      pool_mark_dirty (p, e.dev);
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
      else
        pool_device_fail (p, dev, "scrub: checksum slot write failed");
    }
  }

 out:
  volume_column_release (v, idx, col, 0, es);
  for (uint32_t r = 0; r < 8; r++) {
    free (buf[r]);
    free (slot[r]);
  }
  free (rq);
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
    for (size_t i = 0; i < s->nf; i++) {
      struct finding *f = &s->f[i];
      fprintf (out, "%s{\"device\":\"%s\",\"extent\":%" PRIu32 ",\"blocks\":[%"
               PRIu64 ",%" PRIu64 "],\"volume\":\"%s\",\"bytes\":[%" PRIu64
               ",%" PRIu64 "],\"problem\":\"%s\",\"repaired\":%s}",
               i ? "," : "", m->devices[f->dev].name, f->ext, f->b0, f->b1,
               s->vols[f->vol].name, f->v0, f->v1, kind_text[f->kind],
               f->repaired ? "true" : "false");
    }
    fprintf (out, "],\"findings_dropped\":%zu}\n", s->dropped);
    return;
  }

  fprintf (out, "scrub of %s%s %s: %s checked in %.1f s (%s/s from the "
           "devices)%s\n", s->o->volume ? "volume " : "",
           s->o->volume ? s->o->volume : "every volume", state,
           util_human_size (r->done, a, sizeof a), secs,
           util_human_size (secs > 0 ? s->job.io / secs : 0, b, sizeof b),
           resumed ? ", continuing an interrupted scrub" : "");
  for (size_t i = 0; i < s->nf; i++) {
    struct finding *f = &s->f[i];
    char blocks[64];
    if (f->b0 == f->b1)
      snprintf (blocks, sizeof blocks, "block %" PRIu64, f->b0);
    else
      snprintf (blocks, sizeof blocks, "blocks %" PRIu64 "-%" PRIu64, f->b0,
                f->b1);
    fprintf (out, "  device %s, extent %" PRIu32 ", %s (volume %s bytes %"
             PRIu64 "-%" PRIu64 "): %s%s\n", m->devices[f->dev].name, f->ext,
             f->kind == F_READ_ERROR ? "whole extent" : blocks,
             s->vols[f->vol].name, f->v0,
             f->kind == F_READ_ERROR ? f->v0 : f->v1, kind_text[f->kind],
             f->repaired ? ", repaired"
             : f->kind == F_NO_GOOD_COPY ? ", left alone"
             : f->kind == F_READ_ERROR ? "" : ", not repaired");
  }
  if (s->dropped)
    fprintf (out, "  ... and %zu more (see the log)\n", s->dropped);
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

/* The record's counts: those of the interrupted run continued (BASE)
 * plus this run's. */
static void
counts (struct scrub *s, const struct meta_job *base)
{
  s->job.rec.blocks = base->blocks + s->blocks;
  s->job.rec.errors = base->errors + s->errors;
  s->job.rec.repaired = base->repaired + s->repaired;
  s->job.rec.unrepaired = base->unrepaired + s->unrepaired;
}

int
scrub_run (struct pool *p, const struct scrub_opts *o, FILE *out, FILE *err)
{
  struct meta *m = pool_meta (p);
  struct scrub s = { .p = p, .o = o };
  struct meta_job prev, base = { 0 };
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
    s.job.rec = base = prev;
    resumed = true;
    fprintf (err, "strata: continuing the scrub interrupted at volume id %"
             PRIu32 ", chunk %" PRIu64 " (%" PRIu64 " of %" PRIu64
             " bytes done; --restart starts again)\n", prev.pos_vol,
             prev.pos_chunk, prev.done, prev.total);
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
    struct meta_volume *mv;
    uint64_t first = 0, n;

    if (jv->id < s.job.rec.pos_vol)
      continue;
    if (jv->id == s.job.rec.pos_vol)
      first = s.job.rec.pos_chunk;
    if (!(v = volume_open (p, jv->name)))
      continue;			/* deleted meanwhile */
    mv = volume_meta (v);
    n = meta_volume_nchunks (mv);
    for (uint64_t idx = first; idx < n; idx++) {
      int64_t io = 0;
      if (job_cancelled (&s.job)) {
        volume_close (v);
        goto stopped;
      }
      if (!meta_chunk_get (mv, idx))
        continue;
      for (uint32_t col = 0; col < mv->width; col++) {
        int64_t k = scrub_column (&s, v, idx, col);
        if (k == -1) {
          volume_close (v);
          goto stopped;
        }
        io += k;
      }
      s.job.rec.pos_vol = jv->id;
      s.job.rec.pos_chunk = idx + 1;
      s.job.rec.done += mv->chunk_size;
      counts (&s, &base);
      job_step (&s.job, io);
      if (job_save (&s.job, false) == -1) {
        volume_close (v);
        goto stopped;
      }
    }
    volume_close (v);
    s.job.rec.pos_vol = jv->id + 1;
    s.job.rec.pos_chunk = 0;
  }
  finished = true;

 stopped:
  job_progress_done (&s.job);
  counts (&s, &base);
  if (finished && s.job.rec.done > s.job.rec.total)
    s.job.rec.total = s.job.rec.done;	/* volumes grew meanwhile */
  {
    /* The error of the step that failed, if one did, before the save. */
    char *why = finished || job_cancelled (&s.job) ? NULL
                : strdup (strata_last_error ());
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
  free (s.f);
  free (s.dev_errors);
  free (s.dev_repaired);
  return ret;
}
