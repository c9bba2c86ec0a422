/* strata: administrative verbs (see admin.h).
 *
 * Design notes: every verb parses its own options with getopt_long on a
 * copy of argv (the control server runs commands one at a time).  Each
 * parse starts with optind = 0, which makes glibc take its ordering from
 * this call's option string: setting optind to 1 keeps the ordering of
 * the process's first getopt call, which in the serving process is
 * nbdkit's (options anywhere) and in the CLI was ours, so the same
 * command line parsed differently online and offline.
 *
 * Output is a readable table, or JSON with --json.  Apply compares the
 * YAML's volumes with the pool's and only ever creates and grows unless
 * told to shrink (--allow-shrink) or delete (--prune).
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "admin.h"
#include "cache.h"
#include "csum.h"
#include "destage.h"
#include "error.h"
#include "job.h"
#include "rebuild.h"
#include "scrub.h"
#include "util.h"
#include "volume.h"

/* Commands may arrive at once on the control socket: getopt's state and
 * the verbs that change the pool run one at a time under this lock.
 * scrub and rebuild drop it once their options are parsed. */
static pthread_mutex_t verb_lock = PTHREAD_MUTEX_INITIALIZER;

static void
json_str (FILE *f, const char *s)
{
  fputc ('"', f);
  for (; *s; s++) {
    unsigned char c = *s;
    if (c == '"' || c == '\\')
      fprintf (f, "\\%c", c);
    else if (c < 0x20)
      fprintf (f, "\\u%04x", c);
    else
      fputc (c, f);
  }
  fputc ('"', f);
}

struct health {
  uint64_t under;		/* columns with a copy that cannot be read */
  uint64_t lost;		/* columns with no current copy left */
  uint64_t away;		/* columns whose current copies are all on
				 * devices that are missing or failed */
  uint64_t shared;		/* columns with two copies in one domain */
  struct pool *p;
  uint32_t replicas;
};

/* True if column COL of C has a copy that is not stale on a device that
 * was not removed: none can be read now, but the data is there for when
 * its device is back (the last copy is never made stale). */
static bool
copy_kept (struct pool *p, struct meta_chunk *c, uint32_t R, uint32_t col)
{
  for (uint32_t r = 0; r < R; r++)
    if (!meta_copy_stale (&c->col[col], r)
        && pool_meta (p)->devices[c->ext[col * R + r].dev].state
           != META_DEV_REMOVED)
      return true;
  return false;
}

static int
health_chunk (void *opaque, uint64_t idx, struct meta_chunk *c)
{
  struct health *h = opaque;

  (void) idx;
  for (uint32_t col = 0; col < c->n / h->replicas; col++) {
    uint32_t ok = 0;
    for (uint32_t r = 0; r < h->replicas; r++)
      if (pool_copy_readable (h->p, c, h->replicas, col, r))
        ok++;
    if (ok == 0 && copy_kept (h->p, c, h->replicas, col))
      h->away++;
    else if (ok == 0)
      h->lost++;
    else if (ok < h->replicas)
      h->under++;
    for (uint32_t r = 0; r < h->replicas; r++)
      for (uint32_t q = 0; q < r; q++)
        if (strcmp (pool_meta (h->p)->devices[c->ext[col * h->replicas + r].dev].domain,
                    pool_meta (h->p)->devices[c->ext[col * h->replicas + q].dev].domain) == 0) {
          h->shared++;
          r = q = h->replicas;	/* count the column once */
        }
  }
  return 0;
}

/* status --json --map: every allocated chunk as
 * {"chunk":N,"columns":[["dev",...replicas], ...],
 *  "extents":[[extent,...replicas], ...],"dirty":MASK,
 *  "stale":[REPLICA-MASK, ...columns]}. */
struct map_ctx {
  FILE *out;
  struct meta *m;
  uint32_t replicas;
  bool first;
};

static int
map_chunk (void *opaque, uint64_t idx, struct meta_chunk *c)
{
  struct map_ctx *mc = opaque;

  fprintf (mc->out, "%s{\"chunk\":%" PRIu64 ",\"columns\":[",
           mc->first ? "" : ",", idx);
  mc->first = false;
  for (uint32_t col = 0; col < c->n / mc->replicas; col++) {
    fprintf (mc->out, "%s[", col ? "," : "");
    for (uint32_t r = 0; r < mc->replicas; r++) {
      fprintf (mc->out, "%s", r ? "," : "");
      json_str (mc->out, mc->m->devices[c->ext[col * mc->replicas + r].dev].name);
    }
    fputc (']', mc->out);
  }
  /* The extent numbers, in the same shape. */
  fprintf (mc->out, "],\"extents\":[");
  for (uint32_t col = 0; col < c->n / mc->replicas; col++) {
    fprintf (mc->out, "%s[", col ? "," : "");
    for (uint32_t r = 0; r < mc->replicas; r++)
      fprintf (mc->out, "%s%" PRIu32, r ? "," : "",
               c->ext[col * mc->replicas + r].ext);
    fputc (']', mc->out);
  }
  fprintf (mc->out, "],\"dirty\":%" PRIu64 ",\"stale\":[",
           (uint64_t) atomic_load (&c->dirty));
  for (uint32_t col = 0; col < c->n / mc->replicas; col++)
    fprintf (mc->out, "%s%u", col ? "," : "",
             (unsigned) atomic_load (&c->col[col].stale));
  fprintf (mc->out, "]}");
  return 0;
}

/* Stale copies (meta.h) per device, into PER_DEV[META_MAX_DEVICES]. */
struct stale_count {
  uint64_t *per_dev;
  uint32_t replicas;
};

static int
stale_chunk (void *opaque, uint64_t idx, struct meta_chunk *c)
{
  struct stale_count *sc = opaque;

  (void) idx;
  for (uint32_t col = 0; col < c->width; col++)
    for (uint32_t r = 0; r < sc->replicas; r++)
      if (meta_copy_stale (&c->col[col], r))
        sc->per_dev[c->ext[col * sc->replicas + r].dev]++;
  return 0;
}

/* Count the stale copies of every device; the caller holds the walk
 * lock and m->lock.  Returns a calloc'd array or NULL. */
static uint64_t *
count_stale (struct pool *p)
{
  struct meta *m = pool_meta (p);
  struct stale_count sc = { calloc (META_MAX_DEVICES, sizeof (uint64_t)), 0 };

  for (size_t i = 0; i < m->nvolumes && sc.per_dev; i++) {
    sc.replicas = m->volumes[i]->replicas;
    meta_foreach_chunk (m->volumes[i], stale_chunk, &sc);
  }
  return sc.per_dev;
}

/* The index of member NAME, or -1 (with a message on ERR if not NULL). */
static int
find_device (struct pool *p, const char *name, FILE *err)
{
  struct meta *m = pool_meta (p);

  for (uint32_t i = 0; i < m->ndevices; i++)
    if (strcmp (m->devices[i].name, name) == 0)
      return i;
  if (err)
    fprintf (err, "strata device: pool %s has no device named %s\n", m->name,
             name);
  return -1;
}

/* A device's state for status: the metadata's, or "missing" for an up
 * device that could not be opened. */
static const char *
dev_state (struct pool *p, uint32_t i)
{
  const struct meta_device *d = &pool_meta (p)->devices[i];

  if ((d->state == META_DEV_UP || d->state == META_DEV_DEGRADED)
      && !pool_device (p, i))
    return "missing";
  return meta_dev_state_name (d->state);
}

/* Where a device lives: "local", or the host of a remote member. */
static const char *
dev_host (struct pool *p, uint32_t i, char *buf, size_t len)
{
  const struct config_device *cd =
    pool_declared_device (p, pool_meta (p)->devices[i].name, false);

  if (cd && cd->uri)
    config_uri_host (cd->uri, buf, len);
  else
    snprintf (buf, len, "local");
  return buf;
}

static const char *
health_text (struct pool *p, struct meta_volume *v, char *buf, size_t len)
{
  struct health h = { .p = p, .replicas = v->replicas };

  meta_foreach_chunk (v, health_chunk, &h);
  if (h.lost && h.away)
    snprintf (buf, len, "unavailable: %" PRIu64 " columns lost, %" PRIu64
              " out of reach until a device is back", h.lost, h.away);
  else if (h.lost)
    snprintf (buf, len, "unavailable: %" PRIu64 " columns lost", h.lost);
  else if (h.away)
    snprintf (buf, len, "unavailable: %" PRIu64 " columns out of reach "
              "until a device is back", h.away);
  else if (h.under)
    snprintf (buf, len, "degraded: %" PRIu64 " columns under-replicated",
              h.under);
  else
    snprintf (buf, len, "healthy");
  if (h.shared) {
    /* Placement could not keep copies apart: too few failure domains
     * with free space when these chunks were allocated. */
    size_t l = strlen (buf);
    snprintf (buf + l, len - l, "; %" PRIu64 " columns have two copies in "
              "one failure domain", h.shared);
  }
  return buf;
}

static const char *
replica_state (int s)
{
  switch (s) {
    case JOURNAL_R_LIVE: return "in sync";
    case JOURNAL_R_LAGGING: return "lagging";
    default: return "damaged";
  }
}

static const char *const job_names[META_JOB_KINDS] = { "scrub", "rebuild" };

/* The state of a job for status: "running" when it runs in this process,
 * else the record's. */
static const char *
job_state (struct pool *p, int k)
{
  const struct meta_job *j = &pool_meta (p)->jobs[k];

  if (j->state == META_JOB_RUNNING && pool_job_running (p, k))
    return "running";
  return meta_job_state_name (j->state);
}

static const char *
job_volume (struct pool *p, const struct meta_job *j)
{
  struct meta_volume *v = j->vol ? meta_find_volume_id (pool_meta (p), j->vol)
                                 : NULL;
  return v ? v->name : j->vol ? "(deleted)" : NULL;
}

/* Called with the meta lock held. */
static void
job_json (struct pool *p, FILE *out, int k)
{
  const struct meta_job *j = &pool_meta (p)->jobs[k];
  const char *vol = job_volume (p, j);

  fprintf (out, "%s\"%s\":{\"state\":\"%s\",\"volume\":", k ? "," : "",
           job_names[k], job_state (p, k));
  if (vol)
    json_str (out, vol);
  else
    fprintf (out, "null");
  fprintf (out, ",\"repair\":%s,\"done\":%" PRIu64 ",\"total\":%" PRIu64
           ",\"blocks\":%" PRIu64 ",\"errors\":%" PRIu64 ",\"repaired\":%"
           PRIu64 ",\"unrepaired\":%" PRIu64 ",\"started\":%" PRIu64
           ",\"updated\":%" PRIu64 "}",
           j->flags & META_JOB_REPAIR ? "true" : "false", j->done, j->total,
           j->blocks, j->errors, j->repaired, j->unrepaired, j->started,
           j->updated);
}

static void
job_text (struct pool *p, FILE *out, int k)
{
  const struct meta_job *j = &pool_meta (p)->jobs[k];
  const char *st = job_state (p, k), *vol = job_volume (p, j);
  char when[64], a[32], b[32], amount[80];
  time_t t = j->updated;
  struct tm tm;
  int pct = j->total ? (int) (100.0 * MIN (j->done, j->total) / j->total) : 100;

  if (j->state == META_JOB_NONE) {
    fprintf (out, "%-8s never run\n", job_names[k]);
    return;
  }
  strftime (when, sizeof when, "%Y-%m-%d %H:%M:%S UTC", gmtime_r (&t, &tm));
  if (k == META_JOB_SCRUB)
    snprintf (amount, sizeof amount, "%s of %s",
              util_human_size (j->done, a, sizeof a),
              util_human_size (j->total, b, sizeof b));
  else
    snprintf (amount, sizeof amount, "%" PRIu64 " of %" PRIu64 " columns",
              j->done, j->total);
  fprintf (out, "%-8s %s", job_names[k], st);
  if (j->state == META_JOB_RUNNING)
    fprintf (out, " at %d%% (%s)", pct, amount);
  else
    fprintf (out, " %s (%s)", when, amount);
  if (k == META_JOB_SCRUB)
    fprintf (out, "%s%s%s: %" PRIu64 " errors, %" PRIu64 " repaired, %" PRIu64
             " with no good copy", vol ? " of volume " : "", vol ? vol : "",
             j->flags & META_JOB_REPAIR ? " with --repair" : "", j->errors,
             j->repaired, j->unrepaired);
  else
    fprintf (out, ": %" PRIu64 " bad blocks taken from another copy, %" PRIu64
             " columns left without a new copy", j->errors, j->unrepaired);
  if (j->state == META_JOB_RUNNING && strcmp (st, "running") != 0)
    fprintf (out, "; strata %s continues it", job_names[k]);
  fputc ('\n', out);
}

static const char *
mode_name (enum config_cache_mode m)
{
  switch (m) {
    case CONFIG_CACHE_WRITEBACK: return "writeback";
    case CONFIG_CACHE_WRITETHROUGH: return "writethrough";
    default: return "none";
  }
}

/* The cache's figures and the ranges lost with it.  Under m->lock. */
static void
cache_status (struct pool *p, FILE *out, bool json)
{
  struct meta *m = pool_meta (p);
  struct cache *c = pool_cache (p);
  struct cache_info ci;
  struct destager *d = pool_destager (p);
  uint64_t rate = d ? destage_rate (d) : 0, looked;
  char a[32], b[32], r[32], rt[32], why[256];

  if (c && pool_cache_detached (p)) {
    if (json)
      fprintf (out, "\"cache\":{\"mode\":\"detached\"},");
    else
      fprintf (out, "cache: detached; remove the cache section from %s\n",
               pool_config (p)->file);
  }
  if (!c || pool_cache_detached (p)) {
    if (json)
      fprintf (out, "%s\"lost\":[", c ? "" : "\"cache\":null,");
    goto lost;
  }
  cache_info (c, &ci);
  looked = ci.hits + ci.misses;
  if (json) {
    fprintf (out, "\"cache\":{\"mode\":\"%s\",\"size\":%" PRIu64
             ",\"used\":%" PRIu64 ",\"dirty\":%" PRIu64 ",\"clean\":%" PRIu64
             ",\"hits\":%" PRIu64 ",\"misses\":%" PRIu64
             ",\"hit_ratio\":%.4f,\"destaged\":%" PRIu64
             ",\"destage_rate\":%" PRIu64 ",\"latched\":%s,\"lost\":%s,"
             "\"destage_error\":", mode_name (pool_config (p)->cache_mode),
             ci.log_size, ci.used, ci.dirty_blocks * STRATA_BLOCK,
             ci.clean_blocks * STRATA_BLOCK, ci.hits, ci.misses,
             looked ? (double) ci.hits / looked : 0.0,
             ci.destaged * STRATA_BLOCK, rate, ci.latched ? "true" : "false",
             pool_cache_dead (p) ? "true" : "false");
    if (d && destage_error (d, why, sizeof why))
      json_str (out, why);
    else
      fputs ("null", out);
    fputs (",\"mirrors\":[", out);
    for (uint32_t i = 0; i < ci.nmirrors; i++) {
      fprintf (out, "%s{\"device\":", i ? "," : "");
      json_str (out, ci.names[i]);
      fprintf (out, ",\"state\":\"%s\"}", ci.failed[i] ? "failed" : "ok");
    }
    fprintf (out, "]},\"lost\":[");
  }
  else {
    fprintf (out, "cache: %s, %s log; dirty %s, used %s (%" PRIu64 "%%); hit "
             "ratio %.1f%% (%" PRIu64 " of %" PRIu64 " blocks); destage %s/s\n",
             mode_name (pool_config (p)->cache_mode),
             util_human_size (ci.log_size, a, sizeof a),
             util_human_size (ci.dirty_blocks * STRATA_BLOCK, b, sizeof b),
             util_human_size (ci.used, r, sizeof r),
             ci.log_size ? ci.used * 100 / ci.log_size : 0,
             looked ? 100.0 * ci.hits / looked : 0.0, ci.hits, looked,
             util_human_size (rate, rt, sizeof rt));
    fprintf (out, "cache mirrors:");
    for (uint32_t i = 0; i < ci.nmirrors; i++)
      fprintf (out, " %s %s", ci.names[i], ci.failed[i] ? "FAILED" : "ok");
    fprintf (out, "%s%s\n", ci.latched ? "; a flush failed: flushes fail" : "",
             pool_cache_dead (p) ? "; the cache is LOST" : "");
    if (d && destage_error (d, why, sizeof why))
      fprintf (out, "cache: writing back FAILS (retrying): %s\n", why);
  }
 lost:
  if (json) {
    for (size_t i = 0; i < m->nlost; i++) {
      struct meta_volume *v = meta_find_volume_id (m, m->lost[i].vol);
      fprintf (out, "%s{\"volume\":", i ? "," : "");
      json_str (out, v ? v->name : "?");
      fprintf (out, ",\"offset\":%" PRIu64 ",\"length\":%" PRIu64 "}",
               m->lost[i].blk * STRATA_BLOCK, m->lost[i].nblk * STRATA_BLOCK);
    }
    fprintf (out, "],");
    return;
  }
  for (size_t i = 0; i < m->nlost; i++) {
    struct meta_volume *v = meta_find_volume_id (m, m->lost[i].vol);
    fprintf (out, "LOST with the cache: volume %s bytes %" PRIu64 "-%" PRIu64
             " (%s); reads fail until written again\n", v ? v->name : "?",
             m->lost[i].blk * STRATA_BLOCK,
             (m->lost[i].blk + m->lost[i].nblk) * STRATA_BLOCK - 1,
             util_human_size (m->lost[i].nblk * STRATA_BLOCK, a, sizeof a));
  }
}

/* Say what is wrong with the option getopt_long() just refused (CH is
 * ':' for a missing value, with ':' leading the option string). */
static int
bad_option (FILE *err, const char *verb, int ch, char **argv)
{
  if (ch == ':')
    fprintf (err, "strata %s: option %s needs a value\n", verb,
             argv[optind - 1]);
  else
    fprintf (err, "strata %s: unknown option %s\n", verb, argv[optind - 1]);
  return 2;
}

static int
cmd_status (struct pool *p, const struct admin_ctx *ctx, int argc, char **argv,
            FILE *out, FILE *err)
{
  static const struct option opts[] = {
    { "json", no_argument, NULL, 'j' }, { "map", no_argument, NULL, 'm' },
    { NULL, 0, NULL, 0 },
  };
  struct meta *m = pool_meta (p);
  struct config *fresh = NULL;
  const struct config *yaml = pool_config (p);
  struct journal_replica_info ri[64];
  uint64_t last_index, *stale, csum_used, next, room_ext;
  size_t nri;
  bool json = false, map = false, tight;
  char u[37], a[32], b[32], c[32], jfail[512];
  int ch;

  optind = 0;
  opterr = 0;
  while ((ch = getopt_long (argc, argv, "+:", opts, NULL)) != -1) {
    if (ch == 'j')
      json = true;
    else if (ch == 'm')
      map = true;
    else
      return bad_option (err, "status", ch, argv);
  }
  if (optind != argc) {
    fprintf (err, "strata status: unexpected argument %s\n", argv[optind]);
    return 2;
  }
  /* Devices declared but not members are listed from the YAML as it
   * is now (one may have been declared since the pool was opened), or
   * as it was if it cannot be read. */
  if (config_parse_file (pool_config (p)->file, &fresh) == 0
      && strcmp (fresh->name, m->name) == 0)
    yaml = fresh;
  util_uuid_format (m->pool_uuid, u);
  nri = journal_info (pool_journal (p), ri, ARRAY_SIZE (ri));
  /* Before the meta lock: a commit applies entries under the journal's
   * lock and then takes the meta lock. */
  last_index = journal_last_index (pool_journal (p));
  journal_failed (pool_journal (p), jfail, sizeof jfail);
  /* Walks the chunk maps itself, under the walk lock. */
  csum_used = csum_resident (p) * (m->extent_size / 1024);
  tight = pool_meta_tight (p, &next, &room_ext);

  /* Chunk maps are walked below: rebuild frees replaced chunks only
   * under the walk lock. */
  pool_walk_lock (p);
  pthread_mutex_lock (&m->lock);
  if (!(stale = count_stale (p))) {
    pthread_mutex_unlock (&m->lock);
    pool_walk_unlock (p);
    config_free (fresh);
    fprintf (err, "strata status: out of memory\n");
    return 1;
  }
  if (json) {
    fprintf (out, "{\"pool\":{\"name\":");
    json_str (out, m->name);
    fprintf (out, ",\"uuid\":\"%s\",\"extent_size\":%" PRIu64 ",\"online\":%s,"
             "\"connections\":%d,\"term\":%" PRIu64 ",\"index\":%" PRIu64
             ",\"checksum_memory\":{\"used\":%" PRIu64 ",\"limit\":%" PRIu64
             "},\"extents\":%" PRIu64 ",\"metadata_room_extents\":%" PRIu64
             ",\"journal_failed\":",
             u, m->extent_size, ctx->online ? "true" : "false",
             ctx->connections, journal_term (pool_journal (p)),
             last_index, csum_used, pool_config (p)->checksum_memory,
             next, room_ext);
    json_str (out, jfail);
    fprintf (out, "},");
    fprintf (out, "\"metadata_replicas\":[");
    for (size_t i = 0; i < nri; i++) {
      fprintf (out, "%s{\"device\":", i ? "," : "");
      json_str (out, ri[i].name);
      fprintf (out, ",\"state\":\"%s\",\"index\":%" PRIu64 ",\"repaired\":%s,"
               "\"problem\":", replica_state (ri[i].state), ri[i].last_index,
               ri[i].repaired ? "true" : "false");
      json_str (out, ri[i].problem);
      fputc ('}', out);
    }
    fprintf (out, "],");
    cache_status (p, out, true);
    fprintf (out, "\"devices\":[");
    for (uint32_t i = 0; i < m->ndevices; i++) {
      struct meta_device *d = &m->devices[i];
      fprintf (out, "%s{\"name\":", i ? "," : "");
      json_str (out, d->name);
      fprintf (out, ",\"class\":");
      json_str (out, d->class);
      fprintf (out, ",\"domain\":");
      json_str (out, d->domain);
      {
        struct device_stats ds = { 0 };
        char host[CONFIG_DOMAIN_MAX], problem[POOL_PROBLEM_MAX];
        if (pool_device (p, i))
          device_stats (pool_device (p, i), &ds);
        fprintf (out, ",\"host\":");
        json_str (out, dev_host (p, i, host, sizeof host));
        fprintf (out, ",\"size\":%" PRIu64 ",\"extents\":%" PRIu64
                 ",\"used_extents\":%" PRIu64 ",\"used\":%" PRIu64
                 ",\"state\":\"%s\",\"metadata\":%s,\"present\":%s,"
                 "\"requests\":%" PRIu64 ",\"errors\":%" PRIu64
                 ",\"timeouts\":%" PRIu64 ",\"latency_us\":%" PRIu64
                 ",\"connected\":%s,\"csum_errors\":%" PRIu64
                 ",\"repaired\":%" PRIu64 ",\"data_offset\":%" PRIu64
                 ",\"csum_offset\":%" PRIu64 ",\"stale_copies\":%" PRIu64
                 ",\"no_space\":%" PRIu64 ",\"rejoins\":%s,\"problem\":",
                 d->size, d->extent_count, alloc_used_count (pool_alloc (p), i),
                 alloc_used_count (pool_alloc (p), i) * m->extent_size,
                 dev_state (p, i),
                 pool_meta_member (p, i) ? "true" : "false",
                 pool_device (p, i) ? "true" : "false", ds.requests,
                 ds.errors, ds.timeouts, ds.latency_ns / 1000,
                 ds.connected ? "true" : "false",
                 pool_device_csum_errors (p, i), pool_device_repairs (p, i),
                 d->data_offset, d->csum_offset, stale[i],
                 pool_device_no_spaces (p, i),
                 pool_device_rejoins (p, i) ? "true" : "false");
        pool_device_problem (p, i, problem, sizeof problem);
        json_str (out, problem);
        fprintf (out, ",\"path\":");
        json_str (out, pool_device (p, i) ? device_path (pool_device (p, i))
                                          : problem);
        fputc ('}', out);
      }
    }
    fprintf (out, "],\"volumes\":[");
    for (size_t i = 0; i < m->nvolumes; i++) {
      struct meta_volume *v = m->volumes[i];
      fprintf (out, "%s{\"name\":", i ? "," : "");
      json_str (out, v->name);
      fprintf (out, ",\"size\":%" PRIu64 ",\"allocated\":%" PRIu64
               ",\"replicas\":%u,\"stripe_width\":%u,\"stripe_unit\":%" PRIu64
               ",\"class\":", v->size,
               atomic_load (&v->nchunks) * v->chunk_size, v->replicas,
               v->width, v->unit);
      json_str (out, v->class);
      fprintf (out, ",\"health\":");
      {
        char h[160];
        json_str (out, health_text (p, v, h, sizeof h));
      }
      if (map) {
        struct map_ctx mc = { out, pool_meta (p), v->replicas, true };
        fprintf (out, ",\"map\":[");
        meta_foreach_chunk (v, map_chunk, &mc);
        fputc (']', out);
      }
      fputc ('}', out);
    }
    fprintf (out, "],\"not_members\":[");
    for (size_t i = 0, k = 0; i < yaml->ndevices; i++) {
      const char *name = yaml->devices[i].name;
      if (find_device (p, name, NULL) >= 0
          || config_is_cache_device (yaml, name))
        continue;
      fprintf (out, "%s", k++ ? "," : "");
      json_str (out, name);
    }
    fprintf (out, "],\"jobs\":{");
    for (int k = 0; k < META_JOB_KINDS; k++)
      job_json (p, out, k);
    fprintf (out, "}}\n");
    pthread_mutex_unlock (&m->lock);
    pool_walk_unlock (p);
    free (stale);
    config_free (fresh);
    return 0;
  }

  fprintf (out, "pool %s  uuid %s  extent %s  %s\n", m->name, u,
           util_human_size (m->extent_size, a, sizeof a),
           ctx->online ? "online (served)" : "offline");
  if (ctx->online)
    fprintf (out, "connections: %d\n", ctx->connections);
  fprintf (out, "metadata: term %" PRIu64 ", index %" PRIu64 ";",
           journal_term (pool_journal (p)),
           last_index);
  for (size_t i = 0; i < nri; i++)
    fprintf (out, " %s %s%s%s%s", ri[i].name, replica_state (ri[i].state),
             ri[i].repaired ? " (repaired at open)" : "",
             ri[i].problem[0] ? ": " : "", ri[i].problem);
  fputc ('\n', out);
  if (jfail[0])
    fprintf (out, "ERROR: the metadata journal has failed (%s): metadata "
             "changes are refused, and writes that need one fail, until a "
             "majority of its replicas answers again (it then goes on by "
             "itself) or the pool is reopened\n", jfail);
  fprintf (out, "checksums in memory: %s of %s (pool.checksum_memory)\n",
           util_human_size (csum_used, a, sizeof a),
           util_human_size (pool_config (p)->checksum_memory, b, sizeof b));
  {
    /* Thin volumes share the devices: what they may take, beside what
     * the usable devices hold. */
    uint64_t cap = 0, used = 0, prov = 0;
    for (uint32_t i = 0; i < m->ndevices; i++)
      if (pool_device_usable (p, i)) {
        cap += m->devices[i].extent_count * m->extent_size;
        used += alloc_used_count (pool_alloc (p), i) * m->extent_size;
      }
    for (size_t i = 0; i < m->nvolumes; i++)
      prov += m->volumes[i]->size * m->volumes[i]->replicas;
    fprintf (out, "space: %s of %s used (%" PRIu64 "%%); the volumes may "
             "take %s with their replicas%s\n",
             util_human_size (used, a, sizeof a),
             util_human_size (cap, b, sizeof b),
             cap ? used * 100 / cap : 0, util_human_size (prov, c, sizeof c),
             prov > cap ? ", more than the devices hold (writes that need "
             "new space fail with ENOSPC once they are full)" : "");
  }
  if (tight)
    fprintf (out, "warning: the metadata areas hold the checkpoint of %"
             PRIu64 " extents in use, and the pool has %" PRIu64 ": "
             "metadata changes (allocation among them) fail past that\n",
             room_ext, next);
  cache_status (p, out, false);
  fprintf (out, "\n%-10s %-5s %-12s %-10s %9s %9s %-7s %6s %9s %8s %s\n",
           "DEVICE", "CLASS", "DOMAIN", "HOST", "SIZE", "USED", "STATE",
           "ERRORS", "BAD/FIXED", "LATENCY", "PATH");
  for (uint32_t i = 0; i < m->ndevices; i++) {
    struct meta_device *d = &m->devices[i];
    struct device_stats ds = { 0 };
    char host[CONFIG_DOMAIN_MAX], lat[32], bad[48], problem[POOL_PROBLEM_MAX];
    if (pool_device (p, i))
      device_stats (pool_device (p, i), &ds);
    pool_device_problem (p, i, problem, sizeof problem);
    if (ds.requests)
      snprintf (lat, sizeof lat, "%.2fms", ds.latency_ns / 1e6);
    else
      snprintf (lat, sizeof lat, "-");
    snprintf (bad, sizeof bad, "%" PRIu64 "/%" PRIu64,
              pool_device_csum_errors (p, i), pool_device_repairs (p, i));
    fprintf (out, "%-10s %-5s %-12s %-10s %9s %9s %-7s %6" PRIu64 " %9s %8s %s%s%s%s\n",
             d->name, d->class, d->domain, dev_host (p, i, host, sizeof host),
             util_human_size (d->size, a, sizeof a),
             util_human_size (alloc_used_count (pool_alloc (p), i)
                              * m->extent_size, b, sizeof b),
             dev_state (p, i), ds.errors + ds.timeouts, bad, lat,
             pool_device (p, i) ? device_path (pool_device (p, i)) : "",
             pool_meta_member (p, i) ? " [metadata]" : "",
             problem[0] ? " -- " : "", problem);
    /* The member answers (or answers again), but is not used. */
    if (d->state == META_DEV_FAILED && pool_device (p, i)
        && device_is_remote (pool_device (p, i)) && ds.connected)
      fprintf (out, "%-10s connected again; %s'strata device add %s' brings "
               "it back%s, or 'strata rebuild' replaces it\n", "",
               pool_device_rejoins (p, i) ? "it rejoins by itself at its "
               "next try, " : "", d->name,
               pool_device_rejoins (p, i) ? " now" : "");
    if (stale[i] && d->state == META_DEV_FAILED)
      fprintf (out, "%-10s %" PRIu64 " of its copies missed writes; 'strata "
               "device add %s' copies only those\n", "", stale[i], d->name);
    else if (stale[i])
      fprintf (out, "%-10s %" PRIu64 " of its copies missed writes (stale, "
               "not read); 'strata rebuild' brings them up to date\n", "",
               stale[i]);
  }
  for (size_t i = 0; i < yaml->ndevices; i++) {
    const struct config_device *cd = &yaml->devices[i];
    if (find_device (p, cd->name, NULL) < 0
        && !config_is_cache_device (yaml, cd->name))
      fprintf (out, "%-10s %s: declared, not a member; 'strata device add "
               "%s' adds it\n", cd->name, config_device_where (cd), cd->name);
  }
  fprintf (out, "\n%-16s %10s %10s %8s %-16s %s\n", "VOLUME", "SIZE",
           "ALLOCATED", "REPLICAS", "STRIPE", "HEALTH");
  if (m->nvolumes == 0)
    fprintf (out, "(no volumes: create them with strata apply or strata "
             "volume create)\n");
  for (size_t i = 0; i < m->nvolumes; i++) {
    struct meta_volume *v = m->volumes[i];
    char stripe[48], h[160];
    snprintf (stripe, sizeof stripe, "%u x %s", v->width,
              util_human_size (v->unit, c, sizeof c));
    fprintf (out, "%-16s %10s %10s %8u %-16s %s\n", v->name,
             util_human_size (v->size, a, sizeof a),
             util_human_size (atomic_load (&v->nchunks) * v->chunk_size, b,
                              sizeof b),
             v->replicas, stripe, health_text (p, v, h, sizeof h));
  }
  fputc ('\n', out);
  for (int k = 0; k < META_JOB_KINDS; k++)
    job_text (p, out, k);
  pthread_mutex_unlock (&m->lock);
  pool_walk_unlock (p);
  free (stale);
  config_free (fresh);
  return 0;
}

/* Clear what growing NAME from OLD to NEW_SIZE exposes (volume.h). */
static int
zero_tail (struct pool *p, const char *name, uint64_t old, uint64_t new_size)
{
  struct volume *v = volume_open (p, name);
  int r;

  if (!v)
    return -1;
  r = volume_grow_prepare (v, old, new_size);
  volume_close (v);
  return r;
}

static int
resize (struct pool *p, const char *name, uint64_t size, bool shrink,
        FILE *err)
{
  struct meta_volume *mv;
  uint64_t old;

  pthread_mutex_lock (&pool_meta (p)->lock);
  mv = meta_find_volume (pool_meta (p), name);
  old = mv ? mv->size : 0;
  pthread_mutex_unlock (&pool_meta (p)->lock);
  if (mv && size > old && zero_tail (p, name, old, size) == -1) {
    fprintf (err, "strata: volume %s: %s\n", name, strata_last_error ());
    return 1;
  }
  if (pool_volume_resize (p, name, size, shrink) == -1) {
    fprintf (err, "strata: %s\n", strata_last_error ());
    return 1;
  }
  return 0;
}

static int
parse_size_arg (const char *what, const char *s, uint64_t *out, FILE *err)
{
  if (config_parse_size (s, out) == -1) {
    fprintf (err, "strata: %s: expected a size such as 10GiB, got \"%s\"\n",
             what, s);
    return -1;
  }
  return 0;
}

static int
cmd_volume (struct pool *p, int argc, char **argv, FILE *out, FILE *err)
{
  static const struct option opts[] = {
    { "replicas", required_argument, NULL, 'r' },
    { "stripe-width", required_argument, NULL, 'w' },
    { "stripe-unit", required_argument, NULL, 'u' },
    { "class", required_argument, NULL, 'c' },
    { "shrink", no_argument, NULL, 's' },
    { NULL, 0, NULL, 0 },
  };
  struct config_volume cv;
  const char *sub;
  bool shrink = false;
  int ch;

  if (argc < 2) {
    fprintf (err, "usage: strata volume create|resize|delete CONFIG NAME "
             "[SIZE] [options]\n");
    return 2;
  }
  sub = argv[1];
  config_volume_defaults (pool_config (p), &cv);
  /* From the subcommand on, options before, between or after NAME and
   * SIZE: getopt moves those two to the end. */
  argc--;
  argv++;
  optind = 0;
  opterr = 0;
  while ((ch = getopt_long (argc, argv, ":", opts, NULL)) != -1) {
    uint64_t v;
    char *end;
    switch (ch) {
      case 'r':
      case 'w':
        v = strtoul (optarg, &end, 10);
        if (*end || v == 0 || v > (ch == 'r' ? 8 : 64)) {
          fprintf (err, "strata: --%s: expected a number from 1 to %d, got "
                   "\"%s\"\n", ch == 'r' ? "replicas" : "stripe-width",
                   ch == 'r' ? 8 : 64, optarg);
          return 2;
        }
        if (ch == 'r')
          cv.replicas = v;
        else
          cv.stripe_width = v;
        break;
      case 'u':
        if (parse_size_arg ("--stripe-unit", optarg, &cv.stripe_unit, err))
          return 2;
        break;
      case 'c':
        if (strlen (optarg) >= sizeof cv.class) {
          fprintf (err, "strata: --class: a class name has at most %zu "
                   "characters, got \"%s\"\n", sizeof cv.class - 1, optarg);
          return 2;
        }
        snprintf (cv.class, sizeof cv.class, "%s", optarg);
        break;
      case 's':
        shrink = true;
        break;
      default:
        return bad_option (err, "volume", ch, argv);
    }
  }
  argc -= optind;
  argv += optind;

  if (strcmp (sub, "create") == 0) {
    if (argc != 2) {
      fprintf (err, "usage: strata volume create CONFIG NAME SIZE "
               "[--replicas N] [--stripe-width W] [--stripe-unit U] "
               "[--class C]\n");
      return 2;
    }
    /* Checked whole here: the copy below would cut a long name short. */
    if (config_check_name ("volume", argv[0]) == -1) {
      fprintf (err, "strata: %s\n", strata_last_error ());
      return 2;
    }
    snprintf (cv.name, sizeof cv.name, "%s", argv[0]);
    if (parse_size_arg ("size", argv[1], &cv.size, err))
      return 2;
    if (pool_volume_create (p, &cv) == -1) {
      fprintf (err, "strata: %s\n", strata_last_error ());
      return 1;
    }
    fprintf (out, "created volume %s\n", cv.name);
    return 0;
  }
  if (strcmp (sub, "resize") == 0) {
    uint64_t size;
    if (argc != 2) {
      fprintf (err, "usage: strata volume resize CONFIG NAME SIZE [--shrink]\n");
      return 2;
    }
    if (parse_size_arg ("size", argv[1], &size, err))
      return 2;
    if (resize (p, argv[0], size, shrink, err))
      return 1;
    fprintf (out, "resized volume %s\n", argv[0]);
    return 0;
  }
  if (strcmp (sub, "delete") == 0) {
    if (argc != 1) {
      fprintf (err, "usage: strata volume delete CONFIG NAME\n");
      return 2;
    }
    if (pool_volume_delete (p, argv[0]) == -1) {
      fprintf (err, "strata: %s\n", strata_last_error ());
      return 1;
    }
    fprintf (out, "deleted volume %s\n", argv[0]);
    return 0;
  }
  fprintf (err, "strata volume: unknown subcommand \"%s\" (expected create, "
           "resize or delete)\n", sub);
  return 2;
}

static int
cmd_apply (struct pool *p, int argc, char **argv, FILE *out, FILE *err)
{
  static const struct option opts[] = {
    { "dry-run", no_argument, NULL, 'n' },
    { "prune", no_argument, NULL, 'p' },
    { "allow-shrink", no_argument, NULL, 's' },
    { "config", required_argument, NULL, 'c' },
    { NULL, 0, NULL, 0 },
  };
  const struct config *decl = pool_config (p);
  struct config *parsed = NULL;
  struct meta *m = pool_meta (p);
  bool dry = false, prune = false, shrink = false;
  int ch, rc = 0, changes = 0;
  size_t kept = 0;		/* differences left as they are */
  char (*gone)[FORMAT_NAME_MAX] = NULL;
  size_t ngone = 0;

  optind = 0;
  opterr = 0;
  while ((ch = getopt_long (argc, argv, "+:", opts, NULL)) != -1) {
    switch (ch) {
      case 'n': dry = true; break;
      case 'p': prune = true; break;
      case 's': shrink = true; break;
      case 'c':
        if (config_parse_file (optarg, &parsed) == -1) {
          fprintf (err, "strata: %s\n", strata_last_error ());
          return 1;
        }
        decl = parsed;
        break;
      default:
        return bad_option (err, "apply", ch, argv);
    }
  }
  if (strcmp (decl->name, m->name) != 0) {
    fprintf (err, "strata: %s declares pool %s, but this is pool %s\n",
             decl->file, decl->name, m->name);
    config_free (parsed);
    return 1;
  }

  /* Volumes in the pool that the YAML no longer declares. */
  pthread_mutex_lock (&m->lock);
  gone = calloc (m->nvolumes + 1, sizeof *gone);
  for (size_t i = 0; gone && i < m->nvolumes; i++)
    if (!config_find_volume (decl, m->volumes[i]->name))
      snprintf (gone[ngone++], FORMAT_NAME_MAX, "%s", m->volumes[i]->name);
  pthread_mutex_unlock (&m->lock);

  for (size_t i = 0; i < decl->nvolumes; i++) {
    const struct config_volume *cv = &decl->volumes[i];
    struct meta_volume *v;
    uint64_t size = 0;
    char a[32], b[32], differs[256] = "";
    size_t dl = 0;

    pthread_mutex_lock (&m->lock);
    v = meta_find_volume (m, cv->name);
    if (v) {
      /* What apply cannot change, each with both values. */
      size = v->size;
      if (v->replicas != cv->replicas)
        dl += snprintf (differs + dl, sizeof differs - dl, ", replicas %u "
                        "(YAML: %u)", v->replicas, cv->replicas);
      if (v->width != cv->stripe_width && dl < sizeof differs)
        dl += snprintf (differs + dl, sizeof differs - dl, ", stripe_width "
                        "%u (YAML: %u)", v->width, cv->stripe_width);
      if (v->unit != cv->stripe_unit && dl < sizeof differs)
        dl += snprintf (differs + dl, sizeof differs - dl, ", stripe_unit "
                        "%s (YAML: %s)",
                        util_human_size (v->unit, a, sizeof a),
                        util_human_size (cv->stripe_unit, b, sizeof b));
      if (strcmp (v->class, cv->class) != 0 && dl < sizeof differs)
        snprintf (differs + dl, sizeof differs - dl, ", class \"%s\" (YAML: "
                  "\"%s\")", v->class, cv->class);
    }
    pthread_mutex_unlock (&m->lock);

    if (!v) {
      fprintf (out, "%s volume %s (%s, %u replica%s, %u x %s)\n",
               dry ? "would create" : "creating", cv->name,
               util_human_size (cv->size, a, sizeof a), cv->replicas,
               cv->replicas == 1 ? "" : "s", cv->stripe_width,
               util_human_size (cv->stripe_unit, b, sizeof b));
      changes++;
      if (!dry && pool_volume_create (p, cv) == -1) {
        fprintf (err, "strata: %s\n", strata_last_error ());
        rc = 1;
      }
      continue;
    }
    if (differs[0]) {
      fprintf (err, "strata: warning: volume %s differs from %s:%d in what "
               "apply cannot change, which is left as it is: %s\n",
               cv->name, decl->file, cv->line, differs + 2);
      kept++;
    }
    if (cv->size > size || (cv->size < size && shrink)) {
      fprintf (out, "%s volume %s from %s to %s\n",
               dry ? "would resize" : "resizing", cv->name,
               util_human_size (size, a, sizeof a),
               util_human_size (cv->size, b, sizeof b));
      changes++;
      if (!dry && resize (p, cv->name, cv->size, shrink, err))
        rc = 1;
    }
    else if (cv->size < size) {
      fprintf (out, "volume %s is larger (%s) than declared (%s); not "
               "shrinking it without --allow-shrink\n", cv->name,
               util_human_size (size, a, sizeof a),
               util_human_size (cv->size, b, sizeof b));
      kept++;
    }
  }
  for (size_t i = 0; i < ngone; i++) {
    if (!prune) {
      fprintf (out, "volume %s is not declared; keeping it (use --prune to "
               "delete it)\n", gone[i]);
      kept++;
      continue;
    }
    fprintf (out, "%s volume %s\n", dry ? "would delete" : "deleting", gone[i]);
    changes++;
    if (!dry && pool_volume_delete (p, gone[i]) == -1) {
      fprintf (err, "strata: %s\n", strata_last_error ());
      rc = 1;
    }
  }
  if (changes == 0 && kept == 0)
    fprintf (out, "pool %s matches %s; nothing to do\n", m->name, decl->file);
  else if (changes == 0)
    fprintf (out, "pool %s: nothing to do; %zu difference%s from %s left as "
             "%s\n", m->name, kept, kept == 1 ? "" : "s", decl->file,
             kept == 1 ? "it is" : "they are");
  free (gone);
  config_free (parsed);
  return rc;
}

/* --rate: MiB/s, 0 for no limit. */
static int
parse_rate (const char *verb, const char *arg, uint64_t *rate, FILE *err)
{
  char *end;
  double v;

  errno = 0;
  v = strtod (arg, &end);
  if (errno || end == arg || *end || v < 0 || v > 1e6) {
    fprintf (err, "strata %s: --rate %s: expected a rate in MiB/s (0 for no "
             "limit)\n", verb, arg);
    return -1;
  }
  *rate = v * 1048576.0;
  return 0;
}

/* Options shared by scrub and rebuild. */
struct job_args {
  bool json, bar, repair, restart, stop;
  uint64_t rate;
  const char *volume;
};

static int
parse_job (const struct admin_ctx *ctx, int argc, char **argv,
           struct job_args *a, FILE *err)
{
  static const struct option opts[] = {
    { "json", no_argument, NULL, 'j' },
    { "progress", no_argument, NULL, 'P' },
    { "repair", no_argument, NULL, 'r' },
    { "restart", no_argument, NULL, 'R' },
    { "stop", no_argument, NULL, 's' },
    { "rate", required_argument, NULL, 'l' },
    { NULL, 0, NULL, 0 },
  };
  bool scrub = strcmp (argv[0], "scrub") == 0;
  int ch;

  char *av[64];
  int ac = 0;

  *a = (struct job_args) { .rate = ctx->online ? JOB_ONLINE_RATE : 0 };
  /* A VOLUME may come before or after the options: take it out first. */
  for (int i = 0; i < argc && ac < 63; i++) {
    if (i == 0 || argv[i][0] == '-') {
      av[ac++] = argv[i];
      if (strcmp (argv[i], "--rate") == 0 && i + 1 < argc)
        av[ac++] = argv[++i];
      continue;
    }
    if (!scrub || a->volume) {
      fprintf (err, "strata %s: unexpected argument %s\n", argv[0], argv[i]);
      return 2;
    }
    a->volume = argv[i];
  }
  av[ac] = NULL;
  argc = ac;
  argv = av;
  optind = 0;
  opterr = 0;
  while ((ch = getopt_long (argc, argv, "+:", opts, NULL)) != -1) {
    switch (ch) {
      case 'j': a->json = true; break;
      case 'P': a->bar = true; break;
      case 's': a->stop = true; break;
      case 'r':
      case 'R':
        if (!scrub)
          goto bad;
        if (ch == 'r')
          a->repair = true;
        else
          a->restart = true;
        break;
      case 'l':
        if (parse_rate (argv[0], optarg, &a->rate, err) == -1)
          return 2;
        break;
      default:
        goto bad;
    }
  }
  return 0;
 bad:
  return bad_option (err, argv[0], ch, argv);
}

/* scrub and rebuild; called with verb_lock held, which they drop. */
static int
cmd_job (struct pool *p, const struct admin_ctx *ctx, int argc, char **argv,
         FILE *out, FILE *err)
{
  bool scrub = strcmp (argv[0], "scrub") == 0;
  uint8_t kind = scrub ? META_JOB_SCRUB : META_JOB_REBUILD;
  struct job_args a;
  int r = parse_job (ctx, argc, argv, &a, err);

  pthread_mutex_unlock (&verb_lock);
  if (r)
    return r;
  if (a.stop) {
    if (!pool_job_running (p, kind)) {
      fprintf (err, "strata %s: no %s is running\n", argv[0], argv[0]);
      return 1;
    }
    pool_job_cancel (p, kind);
    fprintf (out, "asked the running %s to stop; it saves its place, and "
             "%s continues it\n", argv[0], scrub ? "'strata scrub'"
             : "the command that started it (strata rebuild, or device "
             "remove, replace or add), run again,");
    return 0;
  }
  if (scrub) {
    struct scrub_opts o = { .volume = a.volume, .repair = a.repair,
                            .restart = a.restart, .json = a.json,
                            .bar = a.bar, .rate = a.rate };
    r = scrub_run (p, &o, out, err);
  }
  else {
    struct rebuild_opts o = { .json = a.json, .bar = a.bar, .rate = a.rate,
                              .drain = -1, .prefer = -1, .resync = -1 };
    r = rebuild_run (p, &o, out, err);
  }
  if (r == -1)
    fprintf (err, "strata %s: %s\n", argv[0], strata_last_error ());
  return r == -1 ? 1 : r;
}

static int
commit_state (struct pool *p, uint32_t dev, uint8_t state, FILE *err)
{
  if (pool_device_set_state (p, dev, state) == -1) {
    fprintf (err, "strata device: %s\n", strata_last_error ());
    return 1;
  }
  return 0;
}

/* The options of device add|remove|replace, from argv[FIRST] on: those
 * of rebuild but --stop (a running device job is stopped with rebuild
 * --stop), and --force where FORCE is not NULL. */
static int
parse_device_job (const struct admin_ctx *ctx, int argc, char **argv,
                  int first, struct job_args *a, bool *force, FILE *err)
{
  char *av[64];
  int ac = 0, r;

  av[ac++] = argv[0];
  for (int i = first; i < argc && ac < 63; i++) {
    if (force && strcmp (argv[i], "--force") == 0)
      *force = true;
    else
      av[ac++] = argv[i];
  }
  av[ac] = NULL;
  if ((r = parse_job (ctx, ac, av, a, err)) != 0)
    return r;
  if (a->stop) {
    fprintf (err, "strata device %s: --stop is not an option here; 'strata "
             "rebuild --stop' stops the copying it started\n", argv[1]);
    return 2;
  }
  return 0;
}

/* Add NAME, declared in the YAML but not a member, as a new device. */
static int
add_new_device (struct pool *p, const char *name, bool force, bool json,
                FILE *out, FILE *err)
{
  struct meta *m = pool_meta (p);
  int dev;

  if (pool_device_add (p, name, force, json ? NULL : out) == -1) {
    fprintf (err, "strata device add: %s\n", strata_last_error ());
    return 1;
  }
  dev = find_device (p, name, NULL);
  if (json) {
    fprintf (out, "{\"device\":");
    json_str (out, name);
    fprintf (out, ",\"added\":true,\"index\":%d,\"extents\":%" PRIu64
             "}\n", dev, m->devices[dev].extent_count);
  }
  else
    fprintf (out, "device %s added to pool %s: %" PRIu64 " free extents, "
             "used for new chunks from now on\n", name, m->name,
             m->devices[dev].extent_count);
  return 0;
}

/* device add NAME: a member that was away comes back (its stale copies
 * are brought up to date, nothing else is copied).  Called with
 * verb_lock held; dropped while data is copied. */
static int
device_add (struct pool *p, const struct admin_ctx *ctx, int argc,
            char **argv, FILE *out, FILE *err, bool *unlocked)
{
  struct meta *m = pool_meta (p);
  const char *name = argv[2];
  struct rebuild_opts o;
  struct job_args a;
  bool back = false, force = false;
  int dev, r;

  if ((r = parse_device_job (ctx, argc, argv, 3, &a, &force, err)) != 0)
    return r;
  if ((dev = find_device (p, name, NULL)) < 0)
    return add_new_device (p, name, force, a.json, out, err);
  if (force) {
    fprintf (err, "strata device add: device %s is a member of pool %s: "
             "--force is for a new device only\n", name, m->name);
    return 2;
  }
  if (m->devices[dev].state == META_DEV_FAILED
      || m->devices[dev].state == META_DEV_REMOVED || !pool_device (p, dev)) {
    if (pool_device_return (p, dev) == -1) {
      fprintf (err, "strata device add: %s\n", strata_last_error ());
      return 1;
    }
    back = true;
  }
  *unlocked = true;
  pthread_mutex_unlock (&verb_lock);
  /* Only what it missed: its stale copies. */
  o = (struct rebuild_opts) { .json = a.json, .bar = a.bar, .rate = a.rate,
                              .drain = -1, .prefer = -1, .resync = dev };
  r = rebuild_run (p, &o, out, err);
  if (r == -1) {
    fprintf (err, "strata device add: %s\n", strata_last_error ());
    return 1;
  }
  if (!a.json)
    fprintf (out, "device %s %s pool %s%s\n", m->devices[dev].name,
             back ? "is back in" : "is already up in", m->name,
             r ? "; some of its stale copies could not be brought up to "
             "date (no current copy to read; they stay stale and are not "
             "read)" : "");
  return r;
}

/* Whether the other usable devices have as many free extents as device
 * DEV has in use: if not, draining it would stop part way, so nothing is
 * moved (a message on ERR).  Room by this count may still be short of
 * devices in distinct domains or of a volume's class: the drain says
 * so when it gets there. */
static bool
room_to_drain (struct pool *p, const char *verb, uint32_t dev, FILE *err)
{
  struct meta *m = pool_meta (p);
  struct alloc *al = pool_alloc (p);
  uint64_t used = alloc_used_count (al, dev), room = 0;
  char a[32], b[32];

  for (uint32_t k = 0; k < m->ndevices; k++)
    if (k != dev && pool_device_usable (p, k))
      room += alloc_free_count (al, k);
  if (used <= room)
    return true;
  fprintf (err, "strata device %s: device %s was not %s: it holds %s "
           "of copies and the other usable devices have %s free; nothing "
           "was moved (add a device first)\n", verb, m->devices[dev].name,
           strcmp (verb, "replace") == 0 ? "replaced" : "removed",
           util_human_size (used * m->extent_size, a, sizeof a),
           util_human_size (room * m->extent_size, b, sizeof b));
  return false;
}

/* Move every copy off device DEV (draining it: no new copies there
 * meanwhile), onto PREFER where it fits, then its metadata replica if it
 * holds one (to PREFER if it can take it), then mark DEV removed.
 * Called with verb_lock dropped.  Returns 0, or 1 with a message. */
static int
drain (struct pool *p, const char *verb, uint32_t dev, int32_t prefer,
       const struct job_args *a, FILE *out, FILE *err)
{
  struct meta *m = pool_meta (p);
  struct rebuild_opts o = { .json = a->json, .bar = a->bar, .rate = a->rate,
                            .drain = dev, .prefer = prefer, .resync = -1 };
  int r;

  alloc_set_usable (pool_alloc (p), dev, false);
  r = rebuild_run (p, &o, out, err);
  if (r != 0) {
    if (pool_device_usable (p, dev))
      alloc_set_usable (pool_alloc (p), dev, true);
    if (r == -1)
      fprintf (err, "strata device %s: %s\n", verb, strata_last_error ());
    else
      fprintf (err, "strata device %s: device %s was not removed: some of "
               "its copies have nowhere to go without losing redundancy "
               "(see above); the copies moved so far stay moved\n", verb,
               m->devices[dev].name);
    return 1;
  }
  if (pool_meta_member (p, dev)) {
    int to = pool_meta_pick (p, dev, prefer);
    if (to < 0 || pool_meta_move (p, dev, to) == -1) {
      if (pool_device_usable (p, dev))
        alloc_set_usable (pool_alloc (p), dev, true);
      fprintf (err, "strata device %s: device %s was not removed: %s; its "
               "copies were moved and stay moved\n", verb,
               m->devices[dev].name, to < 0 ? "no other usable device can "
               "take its metadata replica" : strata_last_error ());
      return 1;
    }
    if (a->json)
      fprintf (out, "{\"metadata_replica\":{\"from\":\"%s\",\"to\":\"%s\"}}\n",
               m->devices[dev].name, m->devices[to].name);
    else
      fprintf (out, "metadata replica moved from %s to %s\n",
               m->devices[dev].name, m->devices[to].name);
  }
  return commit_state (p, dev, META_DEV_REMOVED, err);
}

/* A device that holds a metadata replica can only leave if another
 * device can take it (PREFER first): refuse before anything moves. */
static bool
metadata_stuck (struct pool *p, uint32_t dev, int32_t prefer,
                const char *verb, FILE *err)
{
  struct meta *m = pool_meta (p);

  if (!pool_meta_member (p, dev) || pool_meta_pick (p, dev, prefer) >= 0)
    return false;
  fprintf (err, "strata device %s: device %s holds a metadata replica and "
           "no other usable device can take it (every other one holds one "
           "already, or has a metadata area too small for the pool's); add "
           "a device to the pool first\n", verb, m->devices[dev].name);
  return true;
}

/* device replace OLD NEW: NEW (a new device declared in the YAML, added
 * here, or an up member) takes every copy OLD holds, read from OLD
 * while it is usable or from the other copies; then OLD is removed.
 * Called with verb_lock held; dropped while data is copied. */
static int
device_replace (struct pool *p, const struct admin_ctx *ctx, int argc,
                char **argv, FILE *out, FILE *err, bool *unlocked)
{
  struct meta *m = pool_meta (p);
  struct job_args a;
  bool force = false;
  int old, new, r;

  if (argc < 4 || argv[3][0] == '-') {
    fprintf (err, "usage: strata device replace CONFIG OLD NEW [--force] "
             "[--rate MB/s] [--json] [--progress]\n");
    return 2;
  }
  if ((r = parse_device_job (ctx, argc, argv, 4, &a, &force, err)) != 0)
    return r;
  if ((old = find_device (p, argv[2], err)) < 0)
    return 1;
  if (m->devices[old].state == META_DEV_REMOVED) {
    fprintf (err, "strata device replace: device %s is removed already\n",
             m->devices[old].name);
    return 1;
  }
  if (strcmp (argv[2], argv[3]) == 0) {
    fprintf (err, "strata device replace: %s cannot replace itself\n",
             argv[2]);
    return 2;
  }
  if ((new = find_device (p, argv[3], NULL)) < 0) {
    if ((r = add_new_device (p, argv[3], force, a.json, out, err)) != 0)
      return r;
    new = find_device (p, argv[3], err);
  }
  else if (force) {
    fprintf (err, "strata device replace: device %s is a member of pool %s: "
             "--force is for a new device only\n", argv[3], m->name);
    return 2;
  }
  else if (!pool_device_usable (p, new)) {
    fprintf (err, "strata device replace: device %s is %s: it cannot take "
             "copies\n", argv[3], meta_dev_state_name (m->devices[new].state));
    return 1;
  }
  if (metadata_stuck (p, old, new, "replace", err)
      || !room_to_drain (p, "replace", old, err))
    return 1;
  *unlocked = true;
  pthread_mutex_unlock (&verb_lock);
  if ((r = drain (p, "replace", old, new, &a, out, err)) != 0)
    return r;
  if (!a.json)
    fprintf (out, "device %s replaced by %s in pool %s: it holds no copies "
             "now, is marked removed and can be taken out of %s\n",
             m->devices[old].name, m->devices[new].name, m->name,
             pool_config (p)->file);
  return 0;
}

/* device add|fail|remove|replace.  Called with verb_lock held; add,
 * remove and replace drop it while they move data. */
static int
cmd_device (struct pool *p, const struct admin_ctx *ctx, int argc,
            char **argv, FILE *out, FILE *err, bool *unlocked)
{
  struct meta *m = pool_meta (p);
  struct job_args a;
  const char *sub;
  int dev, r;

  if (argc < 3) {
    fprintf (err, "usage: strata device add|fail|remove CONFIG NAME "
             "[options]\n       strata device replace CONFIG OLD NEW "
             "[options]\n");
    return 2;
  }
  sub = argv[1];
  if (strcmp (sub, "add") == 0)
    return device_add (p, ctx, argc, argv, out, err, unlocked);
  if (strcmp (sub, "replace") == 0)
    return device_replace (p, ctx, argc, argv, out, err, unlocked);
  if ((dev = find_device (p, argv[2], err)) < 0)
    return 1;
  if (strcmp (sub, "fail") == 0) {
    if (argc != 3) {
      fprintf (err, "strata device fail: unexpected argument %s\n", argv[3]);
      return 2;
    }
    if (m->devices[dev].state == META_DEV_REMOVED) {
      fprintf (out, "device %s is removed already\n", m->devices[dev].name);
      return 0;
    }
    /* Failed already, it may be away and about to rejoin by itself: the
     * operator's word keeps it out (no new commit). */
    if (m->devices[dev].state == META_DEV_FAILED) {
      pool_device_fail_hard (p, dev, "marked failed by the operator");
      fprintf (out, "device %s is failed already; it stays out until "
               "'strata device add'\n", m->devices[dev].name);
      return 0;
    }
    if (pool_device_fail_hard (p, dev, "marked failed by the operator")
        == -1) {
      fprintf (err, "strata device fail: %s\n", strata_last_error ());
      return 1;
    }
    fprintf (out, "device %s marked failed; its copies are no longer used. "
             "Run 'strata rebuild' to give the columns it held new copies.\n",
             m->devices[dev].name);
    return 0;
  }
  if (strcmp (sub, "remove") == 0) {
    if ((r = parse_device_job (ctx, argc, argv, 3, &a, NULL, err)) != 0)
      return r;
    if (m->devices[dev].state == META_DEV_REMOVED) {
      fprintf (err, "strata device remove: device %s is removed already\n",
               m->devices[dev].name);
      return 1;
    }
    if (metadata_stuck (p, dev, -1, "remove", err)
        || !room_to_drain (p, "remove", dev, err))
      return 1;
    *unlocked = true;
    pthread_mutex_unlock (&verb_lock);
    /* Drain: no new copies there, every copy moved off, then removed. */
    if ((r = drain (p, "remove", dev, -1, &a, out, err)) != 0)
      return r;
    fprintf (out, "device %s removed from pool %s; it holds no copies now "
             "and can be taken out of %s\n", m->devices[dev].name, m->name,
             pool_config (p)->file);
    return 0;
  }
  fprintf (err, "strata device: unknown subcommand \"%s\" (add, fail, "
           "remove, replace)\n", sub);
  return 2;
}

struct flush_progress {
  FILE *out;
  bool any;
};

static void
flush_progress (void *opaque, uint64_t done, uint64_t total)
{
  struct flush_progress *fp = opaque;
  char a[32], b[32];

  if (total == 0)
    return;
  fprintf (fp->out, "cache flush: %s of %s written back (%" PRIu64 "%%)\n",
           util_human_size (done, a, sizeof a),
           util_human_size (total, b, sizeof b), done * 100 / total);
  fflush (fp->out);
  fp->any = true;
}

/* Drain the cache through the server's destager, or one of our own
 * when the pool is not served.  Returns 0, or -1 with a message. */
static int
drain_cache (struct pool *p, struct flush_progress *fp)
{
  struct destager *d, *mine = NULL;
  int r;

  if (!(d = pool_destager (p)) && !(d = mine = destage_start (p)))
    return -1;
  r = destage_drain (d, flush_progress, fp);
  destage_stop (mine);
  return r;
}

/* Passes of cache detach: each drains what the writes during the last
 * one left on blocks the cache held. */
#define DETACH_PASSES 20

/* cache detach: drain, then stop using the cache.  The caller has set
 * the pool detaching (so nothing new is written back). */
static int
cache_detach (struct pool *p, FILE *out, FILE *err)
{
  const struct config *cfg = pool_config (p);
  struct flush_progress fp = { out, false };
  int pass, r = -1;

  if (pool_cache_dead (p))
    r = pool_cache_detach (p);
  else {
    for (pass = 0; pass < DETACH_PASSES; pass++) {
      if (drain_cache (p, &fp) == -1)
        break;
      if ((r = pool_cache_detach (p)) == 0 || errno != EAGAIN)
        break;
    }
    if (r == -1 && pass == DETACH_PASSES)
      strata_error (EBUSY, "writes kept landing on blocks the cache holds "
                    "through %d passes; try again when the volumes are "
                    "quieter", DETACH_PASSES);
  }
  pool_cache_set_detaching (p, false);
  if (r == -1) {
    fprintf (err, "strata cache detach: %s; the cache stays in use\n",
             strata_last_error ());
    return 1;
  }
  fprintf (out, "cache detached: pool %s no longer uses ", cfg->name);
  for (size_t i = 0; i < cfg->ncache_devices; i++)
    fprintf (out, "%s%s", i ? " and " : "", cfg->cache_devices[i]);
  fprintf (out, "%s; remove the cache section from %s before the pool is "
           "next opened\n", pool_cache_dead (p) ? " (the ranges lost with "
           "it stay lost until written again)" : "", cfg->file);
  return 0;
}

/* cache flush: write back everything the cache holds; cache detach.
 * Called with verb_lock held; dropped while data is written back. */
static int
cmd_cache (struct pool *p, int argc, char **argv, FILE *out, FILE *err,
           bool *unlocked)
{
  const char *sub = argc > 1 ? argv[1] : "";
  struct flush_progress fp = { out, false };
  struct cache_info ci;
  char a[32];

  if (strcmp (sub, "flush") != 0 && strcmp (sub, "detach") != 0) {
    fprintf (err, "strata cache: unknown subcommand \"%s\" (flush, "
             "detach)\n", sub);
    return 2;
  }
  for (int i = 2; i < argc; i++)
    if (strcmp (argv[i], "--progress") != 0) {
      fprintf (err, "strata cache %s: unexpected argument %s\n", sub,
               argv[i]);
      return 2;
    }
  if (!pool_cache (p) || pool_cache_detached (p)) {
    fprintf (err, "strata cache %s: pool %s has no cache%s\n", sub,
             pool_config (p)->name,
             pool_cache (p) ? " (it was detached)" : "");
    return 1;
  }
  if (!pool_writable (p)) {
    fprintf (err, "strata cache %s: pool %s is open read-only\n", sub,
             pool_config (p)->name);
    return 1;
  }
  if (strcmp (sub, "detach") == 0) {
    if (pool_cache_detaching (p)) {
      fprintf (err, "strata cache detach: a detach of the cache of pool %s "
               "is under way already\n", pool_config (p)->name);
      return 1;
    }
    pool_cache_set_detaching (p, true);
    *unlocked = true;
    pthread_mutex_unlock (&verb_lock);
    return cache_detach (p, out, err);
  }
  if (pool_cache_dead (p)) {
    fprintf (err, "strata cache flush: the cache of pool %s is lost (see "
             "strata status)\n", pool_config (p)->name);
    return 1;
  }
  *unlocked = true;
  pthread_mutex_unlock (&verb_lock);
  if (drain_cache (p, &fp) == -1) {
    fprintf (err, "strata cache flush: %s\n", strata_last_error ());
    return 1;
  }
  cache_info (pool_cache (p), &ci);
  fprintf (out, "cache flushed: everything written before the flush is on "
           "the members; dirty now %s\n",
           util_human_size (ci.dirty_blocks * STRATA_BLOCK, a, sizeof a));
  return 0;
}

bool
admin_verb_writes (const char *verb, int argc, char **argv)
{
  if (strcmp (verb, "status") == 0)
    return false;
  if (strcmp (verb, "apply") == 0)
    for (int i = 1; i < argc; i++)
      if (strcmp (argv[i], "--dry-run") == 0 || strcmp (argv[i], "-n") == 0)
        return false;
  return true;
}

int
admin_run (struct pool *p, const struct admin_ctx *ctx, int argc, char **argv,
           FILE *out, FILE *err)
{
  bool unlocked = false;
  FILE *rout = out, *rerr = err;
  char *ob = NULL, *eb = NULL;
  size_t ol = 0, el = 0;
  int r;

  if (argc < 1) {
    fprintf (err, "strata: no command\n");
    return 2;
  }
  /* The verbs that run wholly under verb_lock (and status under the
   * pool's locks too) write into memory, and the output goes out once
   * the locks are dropped: a reader that stalls (a CLI suspended with
   * ^Z, a pager) then holds up no other command and no allocation. */
  if (strcmp (argv[0], "status") == 0 || strcmp (argv[0], "apply") == 0
      || strcmp (argv[0], "volume") == 0) {
    FILE *mo = open_memstream (&ob, &ol), *me = open_memstream (&eb, &el);
    if (mo && me) {
      out = mo;
      err = me;
    }
    else {
      if (mo)
        fclose (mo);
      if (me)
        fclose (me);
    }
  }
  pthread_mutex_lock (&verb_lock);
  if (strcmp (argv[0], "status") == 0)
    r = cmd_status (p, ctx, argc, argv, out, err);
  else if (strcmp (argv[0], "apply") == 0)
    r = cmd_apply (p, argc, argv, out, err);
  else if (strcmp (argv[0], "volume") == 0)
    r = cmd_volume (p, argc, argv, out, err);
  else if (strcmp (argv[0], "scrub") == 0 || strcmp (argv[0], "rebuild") == 0) {
    unlocked = true;
    r = cmd_job (p, ctx, argc, argv, out, err);
  }
  else if (strcmp (argv[0], "device") == 0)
    r = cmd_device (p, ctx, argc, argv, out, err, &unlocked);
  else if (strcmp (argv[0], "cache") == 0)
    r = cmd_cache (p, argc, argv, out, err, &unlocked);
  else {
    fprintf (err, "strata: unknown command \"%s\"\n", argv[0]);
    r = 2;
  }
  if (!unlocked)
    pthread_mutex_unlock (&verb_lock);
  if (out != rout) {
    fclose (out);
    fclose (err);
    fwrite (ob, 1, ol, rout);
    fwrite (eb, 1, el, rerr);
    free (ob);
    free (eb);
    out = rout;
    err = rerr;
  }
  fflush (out);
  fflush (err);
  return r;
}
