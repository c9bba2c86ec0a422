/* strata: pool creation, open and recovery, and metadata changes
 * (see pool.h).
 *
 * Design notes
 * ------------
 * Invariant: every free extent reads as zeros, durably.  pool_init
 * establishes it (new sparse files are zeros; existing storage is
 * discarded with zeroing), and pool_chunks_free() keeps it: extents are
 * discarded and flushed before the journal entry that frees them is
 * committed.  So a newly allocated chunk needs no zeroing and can never
 * expose data of another volume, even after a crash at any point.
 *
 * Order of a chunk allocation: reserve extents in the allocator, commit
 * the CHUNK_ALLOC entry (durable on a majority of metadata replicas),
 * and only then does the caller write data: a flushed write can always
 * be found again after a crash.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <libgen.h>
#include <limits.h>
#include <stdarg.h>
#include <stdlib.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cache.h"
#include "error.h"
#include "pool.h"
#include "resync.h"
#include "util.h"

/* Devices that are away (pool_rejoin_away) are tried at gaps doubling
 * from the first to the last; a remote member gets a second to answer.
 * One comes back by itself at most REJOIN_FLAPS times in
 * REJOIN_FLAP_WINDOW_MS: one that keeps failing waits for strata
 * device add. */
#define REJOIN_FIRST_MS 5000
#define REJOIN_MAX_MS 60000
#define REJOIN_ANSWER_MS 1000
#define REJOIN_FLAPS 3
#define REJOIN_FLAP_WINDOW_MS (3600 * 1000ull)

/* Which devices hold the journal (format.h): device indexes in the
 * journal's replica order, UINT32_MAX for one not known yet. */
struct membership {
  uint64_t epoch;
  uint32_t n;
  uint32_t dev[FORMAT_META_MAX];
};

struct pool {
  const struct config *cfg;
  bool writable;
  uint8_t uuid[16];
  uint64_t extent_size;
  /* Per-device arrays below have room for META_MAX_DEVICES, so that
   * pool_device_add() never moves them under lock-free readers; it
   * fills a device's entries before it raises ndevs. */
  _Atomic uint32_t ndevs;	/* from the metadata */
  struct device **devs;		/* [ndevs], NULL where missing */
  char (*problem)[POOL_PROBLEM_MAX];		/* [ndevs], why a device is missing or
				   failed; see problem_lock */
  struct device **opened;	/* every device opened, for closing */
  size_t nopened;
  struct meta *meta;
  struct journal *journal;
  struct alloc *alloc;
  /* [ndevs] the device's data must not be used (failed or removed in the
   * metadata); a lock-free copy of the state for the data path. */
  _Atomic bool *failed;
  _Atomic uint32_t *read_errors;	/* [ndevs] since the pool opened */
  _Atomic uint64_t *csum_errors;	/* [ndevs] checksum mismatches found */
  _Atomic uint64_t *no_space;	/* [ndevs] requests refused for no space */
  uint64_t *no_space_at;	/* [ndevs] the last one's time, ms, and */
  char (*no_space_why)[140];	/* what it was; both under problem_lock */
  _Atomic uint64_t *repairs;	/* [ndevs] blocks rewritten with good data */
  /* [ndevs] the device is away and may rejoin by itself
   * (pool_rejoin_away): missing since the pool was opened (up or
   * degraded then) and failed since, if at all, only because a write
   * needed it (pool_device_away); or a remote member failed because it
   * lost its connection (device_lost_connection).  Cleared under
   * fail_lock when it is back or failed for anything else, the
   * operator's word included. */
  _Atomic bool *rejoin_ok;
  /* [ndevs] when such a device is next tried, ms, and the gap after
   * that; and when it last came back by itself (the last REJOIN_FLAPS
   * times, ms; 0: not that often).  The rejoining thread's alone. */
  uint64_t *rejoin_at;
  uint32_t *rejoin_gap;
  uint64_t (*rejoin_back)[REJOIN_FLAPS];
  pthread_mutex_t walk_lock;	/* see pool_walk_lock() */
  struct resync *resync;	/* dirty columns; NULL when read-only */
  pthread_mutex_t fail_lock;	/* serialises marking devices failed */
  /* Protects problem[] once the pool is open (status reads it while
   * the data path marks a device failed); a leaf: nothing else is
   * taken while it is held. */
  pthread_mutex_t problem_lock;
  int lockfd;			/* the pool lock file, or -1 */
  pthread_mutex_t admin_lock;	/* serialises pool_volume_* */
  /* Long jobs running in this process (job.h), per enum meta_job_kind. */
  _Atomic bool job_running[META_JOB_KINDS];
  _Atomic bool job_cancel[META_JOB_KINDS];
  /* Buffer alignment the devices need for reads and writes (device.h),
   * the largest over the devices; grows when a device is added. */
  _Atomic size_t mem_align[2];
  /* The YAML read again by pool_device_add() for a device declared
   * after the pool was opened; kept for the device's declaration. */
  struct config **reloaded;
  size_t nreloaded;
  pthread_mutex_t add_lock;	/* serialises pool_device_add() and
                                   pool_meta_move() */
  /* The metadata membership, in the journal's replica order; changed by
   * pool_meta_move() under add_lock, read under members_lock. */
  pthread_mutex_t members_lock;
  struct membership mem;
  /* The write-back cache (NULL: none), its devices, and the destager
   * the plugin runs over it (destage.h). */
  struct cache *cache;
  struct device *cache_dev[2];
  void *destager;
  /* [META_MAX_DEVICES] bitmaps, made on first use: which groups of
   * reserve_group() extents of a local file have their blocks
   * (pool_reserve_extents), since the pool opened.  A leaf lock. */
  pthread_mutex_t reserve_lock;
  uint64_t **reserved;
  pthread_mutex_t lost_lock;	/* serialises pool_cache_lost() */
  _Atomic bool cache_lost;	/* the cache died; its dirty ranges lost */
  _Atomic bool cache_detaching;	/* being drained to be detached */
  _Atomic bool cache_detached;	/* no longer used (the journal says so) */
};

/* Device open flags for the io: setting of CD. */
static unsigned
io_flags (const struct config_device *cd)
{
  switch (cd->io) {
    case CONFIG_IO_DIRECT: return DEVICE_DIRECT_READS;
    case CONFIG_IO_BUFFERED: return DEVICE_BUFFERED;
    default: return 0;
  }
}

/* ---- journal glue ---- */

static int
j_apply (void *opaque, uint16_t type, const void *data, size_t len)
{
  return meta_apply (opaque, type, data, len);
}

static int
j_snapshot (void *opaque, struct fbuf *out)
{
  return meta_snapshot (opaque, out);
}

static int
j_load (void *opaque, const void *data, size_t len)
{
  return meta_load (opaque, data, len);
}

static const struct journal_ops journal_ops = {
  .apply = j_apply, .snapshot = j_snapshot, .load = j_load,
};

/* ---- init ---- */

/* Name the kind of data found in the first MiB of a device, or NULL if
 * it is all zeros. */
static const char *
identify (const uint8_t *b, size_t len, char *why, size_t whylen)
{
  struct format_sb sb;

  if (format_sb_decode (b, &sb) == 0) {
    char u[37];
    util_uuid_format (sb.pool_uuid, u);
    snprintf (why, whylen, "it holds strata pool \"%s\" (%s)", sb.pool_name, u);
    return why;
  }
  if (memcmp (b, FORMAT_SB_MAGIC, 8) == 0)
    return "it holds a damaged strata superblock";
  if (b[1080] == 0x53 && b[1081] == 0xef)
    return "it holds an ext2/ext3/ext4 filesystem";
  if (memcmp (b, "XFSB", 4) == 0)
    return "it holds an XFS filesystem";
  if (memcmp (b + 65600, "_BHRfS_M", 8) == 0)
    return "it holds a btrfs filesystem";
  if (memcmp (b + 512, "LABELONE", 8) == 0)
    return "it holds an LVM physical volume";
  if (memcmp (b, "LUKS\xba\xbe", 6) == 0)
    return "it holds a LUKS encrypted volume";
  if (memcmp (b + 512, "EFI PART", 8) == 0)
    return "it holds a GPT partition table";
  if (memcmp (b + 4086, "SWAPSPACE2", 10) == 0)
    return "it holds a swap signature";
  if (b[510] == 0x55 && b[511] == 0xaa)
    return "it holds a DOS partition table";
  if (!util_is_zero (b, len))
    return "its first MiB is not zero (it holds data)";
  return NULL;
}

/* Choose which devices hold metadata replicas: distinct domains first. */
static void
choose_meta (const struct config *cfg, bool *meta)
{
  uint32_t want = cfg->metadata_replicas, got = 0;

  for (size_t i = 0; i < cfg->ndevices && got < want; i++) {
    bool clash = false;
    for (size_t k = 0; k < i; k++)
      if (meta[k] && strcmp (cfg->devices[k].domain,
                             cfg->devices[i].domain) == 0)
        clash = true;
    if (!clash) {
      meta[i] = true;
      got++;
    }
  }
  for (size_t i = 0; i < cfg->ndevices && got < want; i++)
    if (!meta[i]) {
      meta[i] = true;
      got++;
    }
}

/* Open device CD of CFG to be formatted, creating it where it is a file
 * that does not exist and has a size (*CREATED, said on LOG): sparse,
 * or with its space allocated for a cache device, whose log is written
 * through in full.  Lock it.  NULL with a message on failure. */
static struct device *
open_to_format (const struct config *cfg, const struct config_device *cd,
                bool *created, FILE *log)
{
  bool cache = config_is_cache_device (cfg, cd->name);
  struct device *d;
  char sz[32];

  *created = false;
  if (cd->uri)
    d = device_open_nbd (cd->uri, 0);
  else {
    if (access (cd->path, F_OK) == -1 && errno == ENOENT) {
      if (cd->size == 0) {
        strata_error (ENOENT, "%s:%d: device %s: %s does not exist; give a "
                      "size: to create it as a sparse file", cfg->file,
                      cd->line, cd->name, cd->path);
        return NULL;
      }
      *created = true;
    }
    d = device_open_local (cd->path, (*created ? DEVICE_CREATE : 0)
                           | (cache ? DEVICE_PREALLOC : 0) | io_flags (cd),
                           cd->size);
  }
  if (!d) {
    strata_error_prefix ("device %s", cd->name);
    return NULL;
  }
  if (log && *created)
    fprintf (log, "created %s (%s, %s)\n", cd->path,
             util_human_size (cd->size, sz, sizeof sz),
             cache ? "space allocated" : "sparse");
  else if (log && cache && cd->path) {
    /* An existing cache file is used as it is; say so if it is sparse,
     * as every cache write into a hole must allocate. */
    struct stat st;
    if (stat (cd->path, &st) == 0 && S_ISREG (st.st_mode)
        && (uint64_t) st.st_blocks * 512 < (uint64_t) st.st_size) {
      char al[32];
      fprintf (log, "note: cache device %s: %s is sparse (%s of %s "
               "allocated), which makes cache writes slower; "
               "`fallocate -l %" PRIu64 " %s` allocates it, keeping what "
               "it holds\n",
               cd->name, cd->path,
               util_human_size ((uint64_t) st.st_blocks * 512, al, sizeof al),
               util_human_size (st.st_size, sz, sizeof sz),
               (uint64_t) st.st_size, cd->path);
    }
  }
  if (device_lock (d, 0) == -1) {
    strata_error_prefix ("device %s", cd->name);
    device_close (d);
    return NULL;
  }
  return d;
}

/* A failed init or device add (VERB) takes back the file it created
 * for CD (said on LOG), so that the next try starts where this one did:
 * it changes nothing that was there before. */
static void
remove_created (const struct config_device *cd, const char *verb, FILE *log)
{
  if (unlink (cd->path) == 0 && log)
    fprintf (log, "removed %s, which this failed %s created\n", cd->path,
             verb);
}

/* Discard devices DEVS[0..N) (declared as CDS[0..N)) but those SKIP
 * (if given) says, so that every extent reads as zeros, and flush them:
 * all together, 256 MiB of each at a time.  Where the storage can
 * neither discard nor zero a range, the kernel (or the NBD server)
 * writes the zeros, which takes hours on a large disk: a line on LOG
 * every few seconds says how far it got.  The step is that small
 * because a remote member's request must finish within io_timeout
 * even then: 256 MiB in the default 30 s needs 9 MB/s of zeros, which
 * a busy HDD still writes, where a GiB would need 36 MB/s. */
static int
discard_devices (struct device *const *devs, const struct config_device *cds,
                 const bool *skip, size_t n, FILE *log)
{
  const uint64_t step = 256ull << 20;
  struct dev_req *rq = calloc (n ? n : 1, sizeof *rq);
  uint64_t total = 0, done = 0, last = util_now_ms ();
  size_t nr;
  int r = 0;

  if (!rq)
    return strata_error (ENOMEM, "out of memory");
  for (size_t i = 0; i < n; i++) {
    if (skip && skip[i])
      continue;
    total += device_size (devs[i]);
    if (log)
      fprintf (log, "discarding %s\n", config_device_where (&cds[i]));
  }
  if (log)
    fflush (log);
  for (uint64_t off = 0;; off += step) {
    nr = 0;
    for (size_t i = 0; i < n; i++)
      if (!(skip && skip[i]) && off < device_size (devs[i]))
        rq[nr++] = (struct dev_req) {
          .dev = devs[i], .op = DEV_ZERO, .off = off, .tag = i,
          .len = MIN (step, device_size (devs[i]) - off),
        };
    if (nr == 0)
      break;
    if ((r = device_submit (rq, nr)) == -1)
      goto fail;
    for (size_t k = 0; k < nr; k++)
      done += rq[k].len;
    if (log && done < total && util_now_ms () - last >= 2000) {
      char a[32], b[32];
      last = util_now_ms ();
      fprintf (log, "discarding: %s of %s (%" PRIu64 "%%)\n",
               util_human_size (done, a, sizeof a),
               util_human_size (total, b, sizeof b), done * 100 / total);
      fflush (log);
    }
  }
  nr = 0;
  for (size_t i = 0; i < n; i++)
    if (!(skip && skip[i]))
      rq[nr++] = (struct dev_req) { .dev = devs[i], .op = DEV_FLUSH,
                                    .tag = i };
  if ((r = device_submit (rq, nr)) == -1)
    goto fail;
  free (rq);
  return 0;
 fail:
  /* device_submit() named the first request that failed. */
  for (size_t k = 0; k < nr; k++)
    if (rq[k].res < 0) {
      strata_error_prefix ("device %s", cds[rq[k].tag].name);
      break;
    }
  free (rq);
  return r;
}

/* A remote member has no fallocate: it is asked to allocate a range
 * with a write of zeros that must leave no hole (NO_HOLE) and be fast
 * (FAST_ZERO) where it offers fast zeroing.  Where it does not, only if
 * SLOW_OK (a server may write the zeros out, which a metadata area at
 * format time can afford and every new extent cannot).  The ranges must
 * hold nothing (a free extent, a device being formatted).  The N ranges
 * of Z go out together.  Only ENOSPC (or EDQUOT) is an error, naming the
 * device and WHAT: other failures are for the writes to meet, as without
 * this. */
struct zrange {
  struct device *d;
  const char *name;
  uint64_t off, len;
};

static int
reserve_remote (const struct zrange *z, size_t n, const char *what,
                bool slow_ok)
{
  struct dev_req *rq = calloc (n ? n : 1, sizeof *rq);
  size_t nr = 0;
  int r = 0;

  if (!rq)
    return strata_error (ENOMEM, "out of memory");
  for (size_t k = 0; k < n; k++) {
    bool fast = device_fast_zero (z[k].d);
    if (fast || slow_ok)
      rq[nr++] = (struct dev_req) { .dev = z[k].d, .op = DEV_ZERO,
                                    .keep = true, .fast = fast,
                                    .off = z[k].off, .len = z[k].len,
                                    .tag = k };
  }
  device_submit (rq, nr);
  for (size_t k = 0; k < nr && r == 0; k++)
    if (rq[k].res == -ENOSPC || rq[k].res == -EDQUOT)
      r = strata_error (ENOSPC, "no space on remote member %s (%s) for %s",
                        z[rq[k].tag].name, device_path (rq[k].dev), what);
  free (rq);
  return r;
}

/* Give device D (named NAME) the blocks of its superblock and metadata
 * area, everything before CSUM_OFFSET, so that a sparse file on a full
 * filesystem cannot make the journal fail (device_reserve).  A remote
 * member is asked to, where it can, only when it is being formatted
 * (FRESH): that zeroes the area. */
static int
reserve_meta (struct device *d, const char *name, uint64_t csum_offset,
              bool fresh)
{
  if (device_is_remote (d)) {
    /* In steps that finish within io_timeout if written out (as
     * discard_devices does). */
    for (uint64_t off = FORMAT_META_OFFSET; fresh && off < csum_offset;
         off += 256ull << 20) {
      struct zrange z = { d, name, off,
                          MIN (256ull << 20, csum_offset - off) };
      if (reserve_remote (&z, 1, "its metadata area", true) == -1)
        return -1;
    }
    return 0;
  }
  if (device_reserve (d, 0, csum_offset) == -1) {
    char sz[32];
    return strata_error_prefix ("device %s: the %s of its superblock and "
                                "metadata area", name,
                                util_human_size (csum_offset, sz, sizeof sz));
  }
  return 0;
}

/* A device that existed must be as large as its size: says. */
static int
check_size (const struct config *cfg, const struct config_device *cd,
            struct device *d, bool created)
{
  if (cd->size && !created && device_size (d) != cd->size)
    return strata_error (EINVAL, "%s:%d: device %s: %s is %" PRIu64 " bytes "
                         "but size: says %" PRIu64, cfg->file, cd->line,
                         cd->name, config_device_where (cd), device_size (d),
                         cd->size);
  return 0;
}

/* Write membership MS into superblock SB of device DEV. */
static void
sb_membership (struct format_sb *sb, const struct membership *ms,
               uint32_t dev)
{
  sb->meta_epoch = ms->epoch;
  sb->meta_replicas = ms->n;
  sb->flags &= ~FORMAT_SB_META;
  for (uint32_t k = 0; k < FORMAT_META_MAX; k++) {
    sb->meta_members[k] = k < ms->n ? ms->dev[k] : 0;
    if (k < ms->n && ms->dev[k] == dev)
      sb->flags |= FORMAT_SB_META;
  }
}

/* The superblock SB and device table entry MD of a new member CD of
 * pool UUID (named and sized by CFG), as device INDEX of DEV_SIZE bytes,
 * with metadata membership MS.  Returns 0, or -1 if no UUID could be
 * drawn. */
static int
new_member (struct format_sb *sb, struct meta_device *md,
            const struct config *cfg, const struct config_device *cd,
            const uint8_t *uuid, uint32_t index, const struct membership *ms,
            uint64_t dev_size, uint64_t extent_size, uint64_t meta_size)
{
  memset (sb, 0, sizeof *sb);
  memset (md, 0, sizeof *md);
  sb->version = FORMAT_VERSION;
  memcpy (sb->pool_uuid, uuid, 16);
  if (util_uuid_new (sb->dev_uuid) == -1)
    return strata_error (errno, "getrandom: %m");
  sb->dev_index = index;
  sb_membership (sb, ms, index);
  sb->dev_size = dev_size;
  sb->extent_size = extent_size;
  sb->meta_offset = FORMAT_META_OFFSET;
  sb->meta_size = meta_size;
  format_data_layout (sb);
  sb->created = time (NULL);
  snprintf (sb->pool_name, sizeof sb->pool_name, "%s", cfg->name);
  snprintf (sb->dev_name, sizeof sb->dev_name, "%s", cd->name);

  snprintf (md->name, sizeof md->name, "%s", cd->name);
  memcpy (md->uuid, sb->dev_uuid, 16);
  md->size = sb->dev_size;
  md->data_offset = sb->data_offset;
  md->csum_offset = sb->csum_offset;
  md->extent_count = sb->extent_count;
  snprintf (md->class, sizeof md->class, "%s", cd->class);
  snprintf (md->domain, sizeof md->domain, "%s", cd->domain);
  md->state = META_DEV_UP;
  md->flags = sb->flags;
  return 0;
}

/* The extents a device of DEV_SIZE bytes holds with metadata areas of
 * META_SIZE. */
static uint64_t
extents_of (uint64_t dev_size, uint64_t extent_size, uint64_t meta_size)
{
  struct format_sb sb = {
    .dev_size = dev_size, .extent_size = extent_size,
    .meta_offset = FORMAT_META_OFFSET, .meta_size = meta_size,
  };

  format_data_layout (&sb);
  return sb.extent_count;
}

/* Every metadata area must hold the checkpoint of the pool full, or the
 * journal stops taking changes once the pool fills past it: size the
 * areas of CFG's devices DEVS[0..N) for that.  metadata_size, when
 * given, must be enough; the default grows to what is needed (said on
 * LOG).  Returns 0, or -1 with a message. */
static int
size_meta (struct config *cfg, struct device *const *devs, size_t n,
           FILE *log)
{
  uint64_t ext = 0, want;
  char a[32], b[32], c[32];

  for (size_t i = 0; i < n; i++)
    ext += extents_of (device_size (devs[i]), cfg->extent_size,
                       cfg->metadata_size);
  want = format_meta_size_for (meta_ckpt_bound (ext));
  if (want <= cfg->metadata_size)
    return 0;
  if (cfg->metadata_size_set)
    return strata_error (EINVAL, "%s: pool.metadata_size %s is too small "
                         "for a pool of %" PRIu64 " extents: the "
                         "checkpoint of the pool full may take %s, and a "
                         "metadata area holds it twice and a log; give "
                         "metadata_size: %" PRIu64 "MiB at least (or a "
                         "larger extent_size)", cfg->file,
                         util_human_size (cfg->metadata_size, a, sizeof a),
                         ext, util_human_size (meta_ckpt_bound (ext), b,
                                               sizeof b), want >> 20);
  if (log)
    fprintf (log, "metadata areas of %s (the default, %s, is too small for "
             "the checkpoint of %" PRIu64 " extents)\n",
             util_human_size (want, a, sizeof a),
             util_human_size (cfg->metadata_size, c, sizeof c), ext);
  cfg->metadata_size = want;
  return 0;
}

/* Format the members of CFG (its cache devices left out) as a new pool,
 * with CACHE_UUID (or NULL) as its cache, and return its UUID.  CFG's
 * metadata_size may grow (size_meta). */
static int
init_members (struct config *cfg, bool force, FILE *log,
              const uint8_t *cache_uuid, uint8_t uuid[16])
{
  size_t n = cfg->ndevices;
  struct device **devs = calloc (n, sizeof *devs);
  struct format_sb *sbs = calloc (n, sizeof *sbs);
  bool *meta_dev = calloc (n, sizeof *meta_dev), *created = calloc (n, 1);
  struct journal_member *members = calloc (n, sizeof *members);
  uint8_t *buf = device_alloc_buf (FORMAT_RESERVED_END);
  struct meta *m = NULL;
  struct fbuf ck;
  struct membership ms = { .epoch = 1 };
  size_t nmeta = 0;
  int r = -1;

  fbuf_init_write (&ck);
  if (!devs || !sbs || !meta_dev || !created || !members || !buf) {
    strata_error (ENOMEM, "out of memory");
    goto out;
  }

  /* Pass 1: open and check everything; write nothing. */
  device_set_timeout (cfg->io_timeout_ms);
  for (size_t i = 0; i < n; i++) {
    const struct config_device *cd = &cfg->devices[i];
    const char *what;
    char why[200];
    uint64_t need = round_up (FORMAT_META_OFFSET + cfg->metadata_size
                              + format_csum_slot (cfg->extent_size), 1 << 20)
      + cfg->extent_size;

    if (!(devs[i] = open_to_format (cfg, cd, &created[i], log))
        || check_size (cfg, cd, devs[i], created[i]) == -1)
      goto out;
    if (device_size (devs[i]) < need) {
      strata_error (EINVAL, "%s:%d: device %s: %s is too small (%" PRIu64
                    " bytes; at least %" PRIu64 " are needed for the "
                    "metadata area, one extent and its checksums)", cfg->file, cd->line,
                    cd->name, config_device_where (cd), device_size (devs[i]), need);
      goto out;
    }
    if (!created[i]) {
      uint32_t len = MIN (FORMAT_RESERVED_END, device_size (devs[i]));
      if (device_pread (devs[i], buf, len, 0) == -1) {
        strata_error_prefix ("device %s", cd->name);
        goto out;
      }
      what = identify (buf, len, why, sizeof why);
      if (what && !force) {
        strata_error (EEXIST, "device %s (%s) was not initialised: %s; use "
                      "--force to overwrite it", cd->name, config_device_where (cd), what);
        goto out;
      }
    }
  }

  /* The metadata areas, and again whether each device holds one. */
  if (size_meta (cfg, devs, n, log) == -1)
    goto out;
  for (size_t i = 0; i < n; i++) {
    const struct config_device *cd = &cfg->devices[i];
    uint64_t need = round_up (FORMAT_META_OFFSET + cfg->metadata_size
                              + format_csum_slot (cfg->extent_size), 1 << 20)
      + cfg->extent_size;
    if (device_size (devs[i]) < need) {
      strata_error (EINVAL, "%s:%d: device %s: %s is too small (%" PRIu64
                    " bytes) for metadata areas of %" PRIu64 " bytes, one "
                    "extent and its checksums", cfg->file, cd->line,
                    cd->name, config_device_where (cd), device_size (devs[i]),
                    cfg->metadata_size);
      goto out;
    }
  }

  /* Pass 2: build the new pool's identity and initial state. */
  if (util_uuid_new (uuid) == -1) {
    strata_error (errno, "getrandom: %m");
    goto out;
  }
  choose_meta (cfg, meta_dev);
  for (size_t i = 0; i < n; i++)
    if (meta_dev[i])
      ms.dev[ms.n++] = i;
  m = meta_new ();
  if (!m)
    goto out;
  memcpy (m->pool_uuid, uuid, 16);
  if (cache_uuid)
    memcpy (m->cache_uuid, cache_uuid, 16);
  snprintf (m->name, sizeof m->name, "%s", cfg->name);
  m->extent_size = cfg->extent_size;
  m->ndevices = n;
  for (size_t i = 0; i < n; i++) {
    const struct config_device *cd = &cfg->devices[i];
    struct format_sb *sb = &sbs[i];
    struct meta_device *md = &m->devices[i];

    if (new_member (sb, md, cfg, cd, uuid, i, &ms, device_size (devs[i]),
                    cfg->extent_size, cfg->metadata_size) == -1)
      goto out;
    if (meta_dev[i]) {
      members[nmeta++] = (struct journal_member) {
        .dev = devs[i], .name = cd->name, .meta_off = sb->meta_offset,
        .meta_size = sb->meta_size,
      };
    }
  }
  if (meta_snapshot (m, &ck) == -1)
    goto out;

  /* Pass 3: write.  Existing storage is discarded first so that every
   * extent reads as zeros (the allocator's invariant). */
  if (discard_devices (devs, cfg->devices, created, n, log) == -1)
    goto out;
  for (size_t i = 0; i < n; i++)
    if (reserve_meta (devs[i], cfg->devices[i].name, sbs[i].csum_offset,
                      true) == -1)
      goto out;
  if (journal_format (members, nmeta, uuid, ck.p, ck.len) == -1)
    goto out;
  for (size_t i = 0; i < n; i++) {
    memset (buf, 0, STRATA_BLOCK);
    format_sb_encode (&sbs[i], buf);
    if (device_pwrite (devs[i], buf, STRATA_BLOCK, FORMAT_SB_OFFSET, true)
        == -1) {
      strata_error_prefix ("device %s", cfg->devices[i].name);
      goto out;
    }
    if (log) {
      char sz[32];
      fprintf (log, "formatted %s: %s, %" PRIu64 " extents%s\n",
               cfg->devices[i].name,
               util_human_size (sbs[i].dev_size, sz, sizeof sz),
               sbs[i].extent_count, meta_dev[i] ? ", metadata replica" : "");
    }
  }
  r = 0;

 out:
  if (devs)
    for (size_t i = 0; i < n; i++) {
      device_close (devs[i]);
      if (r == -1 && created && created[i])
        remove_created (&cfg->devices[i], "init", log);
    }
  free (devs);
  free (sbs);
  free (meta_dev);
  free (created);
  free (members);
  free (buf);
  fbuf_free (&ck);
  meta_free (m);
  return r;
}

/* Open cache device CD to be formatted (*CREATED if this made its file)
 * and check it holds nothing (unless FORCE).  NULL with a message. */
static struct device *
open_cache_to_format (const struct config *cfg, const struct config_device *cd,
                      bool force, bool *created, FILE *log)
{
  uint64_t need = FORMAT_CACHE_AREA_OFFSET + FORMAT_CACHE_HDRS + (1 << 20);
  uint8_t *buf = device_alloc_buf (FORMAT_RESERVED_END);
  struct device *d;
  char why[200];

  *created = false;
  if (!buf) {
    strata_error (ENOMEM, "out of memory");
    return NULL;
  }
  if (!(d = open_to_format (cfg, cd, created, log))
      || check_size (cfg, cd, d, *created) == -1)
    goto fail;
  if (device_size (d) < need) {
    strata_error (EINVAL, "%s:%d: cache device %s: %s is too small (%" PRIu64
                  " bytes; a cache needs at least %" PRIu64 ")", cfg->file,
                  cd->line, cd->name, config_device_where (cd),
                  device_size (d), need);
    goto fail;
  }
  if (!*created) {
    uint32_t len = MIN (FORMAT_RESERVED_END, device_size (d));
    const char *what;
    struct format_cs cs;
    if (device_pread (d, buf, len, 0) == -1) {
      strata_error_prefix ("cache device %s", cd->name);
      goto fail;
    }
    what = identify (buf, len, why, sizeof why);
    if (format_cs_decode (buf, &cs) == 0) {
      snprintf (why, sizeof why, "it is a cache device of strata pool \"%s\"",
                cs.pool_name);
      what = why;
    }
    if (what && !force) {
      strata_error (EEXIST, "cache device %s (%s) was not initialised: %s; "
                    "use --force to overwrite it", cd->name,
                    config_device_where (cd), what);
      goto fail;
    }
  }
  free (buf);
  return d;
 fail:
  free (buf);
  device_close (d);
  return NULL;
}

/* One process at a time: local devices are flock'ed, but remote members
 * cannot be, so a lock file beside the control socket stands for the
 * pool.  A pool of local devices only goes on without it when the file
 * cannot be created (a user without access to /run/strata, say). */
static int
lock_pool_file (int *fd, const struct config *cfg)
{
  char path[PATH_MAX], dir[PATH_MAX];
  bool remote = false;

  for (size_t i = 0; i < cfg->ndevices; i++)
    remote |= cfg->devices[i].uri != NULL;
  snprintf (path, sizeof path, "%s.lock", cfg->control_socket);
  snprintf (dir, sizeof dir, "%s", path);
  if (mkdir (dirname (dir), 0755) == -1 && errno != EEXIST && remote)
    return strata_error (errno, "%s: cannot create the directory of the "
                         "pool lock: %m", path);
  *fd = open (path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (*fd == -1)
    return remote ? strata_error (errno, "%s: cannot create the pool lock: "
                                  "%m", path) : 0;
  if (flock (*fd, LOCK_EX | LOCK_NB) == -1)
    return strata_error (EBUSY, "pool %s is in use by another process (%s "
                         "is locked); is it being served?", cfg->name, path);
  return 0;
}

bool
pool_lock_busy (const struct config *cfg)
{
  char path[PATH_MAX];
  bool busy;
  int fd;

  snprintf (path, sizeof path, "%s.lock", cfg->control_socket);
  if ((fd = open (path, O_RDONLY | O_CLOEXEC)) == -1)
    return false;
  busy = flock (fd, LOCK_EX | LOCK_NB) == -1 && errno == EWOULDBLOCK;
  close (fd);
  return busy;
}

int
pool_init (const struct config *full, bool force, FILE *log)
{
  struct config cfg = *full;
  struct config_device *data = calloc (full->ndevices, sizeof *data);
  struct device *cdev[2] = { NULL, NULL };
  bool ccreated[2] = { false, false };
  int lockfd = -1;
  struct cache_dev mirrors[2];
  uint8_t uuid[16], cache_uuid[16];
  uint8_t *blk = device_alloc_buf (STRATA_BLOCK);
  size_t nc = full->ncache_devices;
  int r = -1;

  if (!data || !blk) {
    strata_error (ENOMEM, "out of memory");
    goto out;
  }
  /* Not under a process that serves (or opened) a pool of this name:
   * its devices may have been replaced under it, and the CLI would talk
   * to it, not to the new pool. */
  if (lock_pool_file (&lockfd, full) == -1)
    goto out;
  /* The members are the devices that are not the cache's. */
  cfg.devices = data;
  cfg.ndevices = 0;
  for (size_t i = 0; i < full->ndevices; i++)
    if (!config_is_cache_device (full, full->devices[i].name))
      data[cfg.ndevices++] = full->devices[i];
  if (cfg.ndevices == 0) {
    strata_error (EINVAL, "%s: every device is a cache device; a pool needs "
                  "members to hold its volumes", full->file);
    goto out;
  }
  for (size_t i = 0; i < nc; i++) {
    const struct config_device *cd = config_find_device (full,
                                                         full->cache_devices[i]);
    if (!(cdev[i] = open_cache_to_format (full, cd, force, &ccreated[i],
                                          log)))
      goto out;
  }
  if (nc && util_uuid_new (cache_uuid) == -1) {
    strata_error (errno, "getrandom: %m");
    goto out;
  }
  if (init_members (&cfg, force, log, nc ? cache_uuid : NULL, uuid) == -1)
    goto out;

  /* The cache: superblocks, then an empty log. */
  for (size_t i = 0; i < nc; i++) {
    const struct config_device *cd = config_find_device (full,
                                                         full->cache_devices[i]);
    struct format_cs cs = {
      .slot = i, .nmirrors = nc, .area_off = FORMAT_CACHE_AREA_OFFSET,
      .area_size = device_size (cdev[i]) - FORMAT_CACHE_AREA_OFFSET,
      .created = time (NULL),
    };
    memcpy (cs.pool_uuid, uuid, 16);
    memcpy (cs.cache_uuid, cache_uuid, 16);
    snprintf (cs.pool_name, sizeof cs.pool_name, "%s", full->name);
    snprintf (cs.dev_name, sizeof cs.dev_name, "%s", cd->name);
    if (util_uuid_new (cs.dev_uuid) == -1) {
      strata_error (errno, "getrandom: %m");
      goto out;
    }
    memset (blk, 0, STRATA_BLOCK);
    format_cs_encode (&cs, blk);
    if (device_pwrite (cdev[i], blk, STRATA_BLOCK, 0, true) == -1) {
      strata_error_prefix ("cache device %s", cd->name);
      goto out;
    }
    mirrors[i] = (struct cache_dev) { cdev[i], cd->name, cs.area_off,
                                      cs.area_size };
  }
  if (nc && cache_format (mirrors, nc, uuid) == -1)
    goto out;
  for (size_t i = 0; i < nc && log; i++) {
    char sz[32];
    fprintf (log, "formatted %s: %s cache%s\n", mirrors[i].name,
             util_human_size (mirrors[i].size, sz, sizeof sz),
             nc > 1 ? " mirror" : "");
  }
  r = 0;
 out:
  for (size_t i = 0; i < 2; i++) {
    device_close (cdev[i]);
    if (r == -1 && ccreated[i])
      remove_created (config_find_device (full, full->cache_devices[i]),
                      "init", log);
  }
  free (data);
  free (blk);
  if (lockfd >= 0)
    close (lockfd);
  return r;
}

/* ---- open ---- */

/* Raise the pool's buffer alignment to what D needs. */
static void
note_align (struct pool *p, struct device *d)
{
  for (int op = DEV_READ; op <= DEV_WRITE; op++) {
    size_t a = device_mem_align (d, op);
    if (a > atomic_load (&p->mem_align[op]))
      atomic_store (&p->mem_align[op], a);
  }
}

/* A member whose storage is now smaller than its superblock says (a file
 * truncated, an NBD export or a disk swapped for a smaller one) has lost
 * what lay past its end: it is not used, like a member that cannot be
 * read, rather than served with extents that are gone.  Returns true,
 * with WHY, if D is such a device. */
static bool
shrunk (struct device *d, const struct format_sb *sb, char *why, size_t n)
{
  char have[32], want[32];

  if (device_size (d) >= sb->dev_size)
    return false;
  snprintf (why, n, "%s is %s, smaller than the %s it was formatted with "
            "(truncated, or another disk?)", device_path (d),
            util_human_size (device_size (d), have, sizeof have),
            util_human_size (sb->dev_size, want, sizeof want));
  return true;
}

/* How long to wait for the lock of a local device when the pool lock was
 * free.  Then no live process serves the pool, but one that just died
 * may still hold its devices' locks for a moment: the kernel tears its
 * io_uring down after the process is gone, and the requests that were in
 * flight keep their files (and so the flock) until then.  A restart right
 * after a kill -9 would otherwise be refused.  Measured: tens of ms on a
 * loaded machine. */
#define DEAD_OWNER_WAIT_MS 5000

static unsigned
lock_wait (const struct pool *p)
{
  return p->lockfd >= 0 ? DEAD_OWNER_WAIT_MS : 0;
}

/* The pool lock for P (see lock_pool_file). */
static int
lock_pool (struct pool *p, const struct config *cfg)
{
  return lock_pool_file (&p->lockfd, cfg);
}

/* ---- metadata membership ----
 *
 * The devices that hold the journal are listed, with an epoch, in the
 * superblocks (format.h).  pool_meta_move() changes the list one device
 * at a time: the journal is held (no record in flight), a device joining
 * gets a checkpoint, and then the new list with epoch + 1 is written to
 * the superblock of every member of the old list and of the new one (a
 * member leaving gets FORMAT_SB_META cleared).  The change holds once
 * that reached a majority of both lists; only then does the journal use
 * the new list.
 *
 * Opening takes the list with the highest epoch found on any device of
 * the pool.  That is safe: a change that took hold was written to a
 * majority of the old list, so any set of devices that is a majority of
 * an older list shows the newer epoch; and one that did not take hold
 * can only be found as a list that differs from the one in use by one
 * device, whose majorities overlap with the old list's (raft's single
 * server changes).  A former member that was away when it left still
 * carries FORMAT_SB_META and an older list: it is not counted. */

/* The journal members of the newest membership found in the superblocks
 * SBS (HAVE_SB[i] where device i of CFG, DEV_OF[i], has one of this
 * pool); fills MS and MEMBERS (at most 64, missing devices stand in as
 * NULL) and returns how many. */
static size_t
find_members (const struct config *cfg, const struct format_sb *sbs,
              const bool *have_sb, struct device **dev_of,
              struct membership *ms, struct journal_member *members)
{
  /* A member whose device is missing still counts against the majority. */
  static const struct journal_member missing = {
    .dev = NULL, .name = "(missing device)",
    .meta_off = FORMAT_META_OFFSET, .meta_size = FORMAT_MIN_META_SIZE,
  };
  size_t n = cfg->ndevices, newest = SIZE_MAX, nm = 0;
  uint32_t count = 0;

  for (size_t i = 0; i < n; i++)
    if (have_sb[i] && (newest == SIZE_MAX
                       || sbs[i].meta_epoch > sbs[newest].meta_epoch))
      newest = i;
  memset (ms, 0, sizeof *ms);
  if (sbs[newest].meta_epoch == 0) {
    /* A pool made before the list: the flagged devices, in the order of
     * the YAML, then the missing ones, named by the metadata later. */
    for (size_t i = 0; i < n; i++) {
      if (!have_sb[i])
        continue;
      count = MAX (count, sbs[i].meta_replicas);
      if ((sbs[i].flags & FORMAT_SB_META) && nm < FORMAT_META_MAX) {
        ms->dev[nm] = sbs[i].dev_index;
        members[nm++] = (struct journal_member) {
          .dev = dev_of[i], .name = cfg->devices[i].name,
          .meta_off = sbs[i].meta_offset, .meta_size = sbs[i].meta_size,
        };
      }
    }
    for (; nm < MIN (count, FORMAT_META_MAX); nm++) {
      ms->dev[nm] = UINT32_MAX;
      members[nm] = missing;
    }
  }
  else {
    const struct format_sb *ref = &sbs[newest];
    ms->epoch = ref->meta_epoch;
    for (nm = 0; nm < ref->meta_replicas; nm++) {
      size_t found = SIZE_MAX;
      ms->dev[nm] = ref->meta_members[nm];
      /* By index; a device that shows the newest epoch first (a device
       * add that stopped before its commit may have left another disk
       * with the same index). */
      for (size_t i = 0; i < n; i++)
        if (have_sb[i] && sbs[i].dev_index == ms->dev[nm]
            && (found == SIZE_MAX || sbs[i].meta_epoch == ref->meta_epoch))
          found = i;
      members[nm] = missing;
      if (found != SIZE_MAX)
        members[nm] = (struct journal_member) {
          .dev = dev_of[found], .name = cfg->devices[found].name,
          .meta_off = sbs[found].meta_offset,
          .meta_size = sbs[found].meta_size,
        };
    }
  }
  ms->n = nm;
  return nm;
}

/* Once the metadata is loaded: fill in the members a pool made before
 * the list could not name, and name the missing ones in messages. */
static void
name_members (struct pool *p)
{
  struct meta *m = p->meta;

  for (uint32_t k = 0; k < p->mem.n; k++) {
    if (p->mem.dev[k] == UINT32_MAX)
      for (uint32_t d = 0; d < p->ndevs; d++) {
        bool listed = false;
        for (uint32_t q = 0; q < p->mem.n; q++)
          listed |= p->mem.dev[q] == d;
        if (!listed && (m->devices[d].flags & FORMAT_SB_META)) {
          p->mem.dev[k] = d;
          break;
        }
      }
    if (p->mem.dev[k] < p->ndevs)
      journal_name_replica (p->journal, k, m->devices[p->mem.dev[k]].name);
  }
}

/* Open the cache the YAML declares and the metadata names, and recover
 * it.  A pool whose metadata names a cache refuses to open without it:
 * it may hold acknowledged writes the members do not. */
static int
open_cache (struct pool *p)
{
  const struct config *cfg = p->cfg;
  static const uint8_t none[16];
  struct cache_dev m[2];
  uint8_t *buf = device_alloc_buf (STRATA_BLOCK);
  size_t n = cfg->ncache_devices, nm = 0, have = 0;
  char why[2][300], whyall[2][300];
  int r = -1;

  memset (m, 0, sizeof m);
  if (!buf)
    return strata_error (ENOMEM, "out of memory");
  if (n == 0) {
    free (buf);
    if (memcmp (p->meta->cache_uuid, none, 16) == 0)
      return 0;
    return strata_error (EINVAL, "pool %s has a write-back cache that may "
                         "hold writes its members do not, but %s declares "
                         "no cache: put the cache section back (a cache "
                         "cannot be detached in this version)", cfg->name,
                         cfg->file);
  }
  if (memcmp (p->meta->cache_uuid, none, 16) == 0) {
    free (buf);
    return strata_error (EINVAL, "%s: cache: pool %s has no cache (it was "
                         "made without one, or its cache was detached): "
                         "remove the cache section; a cache can only be "
                         "declared when the pool is initialised", cfg->file,
                         cfg->name);
  }
  for (size_t i = 0; i < n; i++) {
    const struct config_device *cd = config_find_device (cfg,
                                                         cfg->cache_devices[i]);
    struct format_cs cs;
    struct device *d;

    why[i][0] = '\0';
    d = cd->uri ? device_open_nbd (cd->uri, 0)
                : device_open_local (cd->path, io_flags (cd), 0);
    if (!d) {
      snprintf (why[i], sizeof why[i], "%s", strata_last_error ());
      continue;
    }
    p->cache_dev[i] = d;
    if (device_lock (d, lock_wait (p)) == -1) {
      strata_error (EBUSY, "pool %s is in use by another process (cache "
                    "device %s is locked)", cfg->name, cd->name);
      goto out;
    }
    if (device_pread (d, buf, STRATA_BLOCK, 0) == -1) {
      snprintf (why[i], sizeof why[i], "%s", strata_last_error ());
      continue;
    }
    if (format_cs_decode (buf, &cs) == -1
        || memcmp (cs.pool_uuid, p->uuid, 16) != 0
        || memcmp (cs.cache_uuid, p->meta->cache_uuid, 16) != 0) {
      strata_error (EINVAL, "%s:%d: cache device %s: %s is not the cache of "
                    "pool %s (%s)", cfg->file, cd->line, cd->name,
                    config_device_where (cd), cfg->name,
                    errno == EINVAL || errno == EBADMSG ? strata_last_error ()
                    : "another pool's or another cache's");
      goto out;
    }
    if (cs.nmirrors != n) {
      strata_error (EINVAL, "%s: cache.devices lists %zu devices but the "
                    "cache was made with %u", cfg->file, n, cs.nmirrors);
      goto out;
    }
    if (m[cs.slot].dev) {
      strata_error (EINVAL, "%s: cache.devices lists mirror %u twice",
                    cfg->file, cs.slot);
      goto out;
    }
    m[cs.slot] = (struct cache_dev) { d, cd->name, cs.area_off, cs.area_size };
    have++;
  }
  /* A mirror that could not be read takes the slot left over. */
  memcpy (whyall, why, sizeof why);
  nm = n;
  for (size_t i = 0; i < nm; i++)
    if (!m[i].name)
      for (size_t k = 0; k < n; k++)
        if (why[k][0]) {
          m[i].name = cfg->cache_devices[k];
          fprintf (stderr, "strata: pool %s: cache mirror %s is missing: "
                   "%s\n", cfg->name, m[i].name, why[k]);
          why[k][0] = '\0';
          break;
        }
  if (have == 0) {
    strata_error (EIO, "pool %s: no device of its cache can be read (%s%s%s); "
                  "it may hold acknowledged writes the members do not, so "
                  "the pool is not opened", cfg->name, whyall[0],
                  n > 1 ? "; " : "", n > 1 ? whyall[1] : "");
    goto out;
  }
  p->cache = cache_open (m, nm, p->uuid);
  if (!p->cache) {
    strata_error_prefix ("pool %s: cache", cfg->name);
    goto out;
  }
  r = 0;
 out:
  free (buf);
  return r;
}

/* Opening a remote member can wait io_timeout for a host that is down,
 * so every remote member is opened at once, each in a thread of its own
 * (in this one if no thread can be made). */
struct open_remote {
  const char *uri;
  struct device *d;
  char *err;			/* 200 bytes: why it could not be opened */
  pthread_t thread;
  bool started;
};

static void *
open_remote_thread (void *arg)
{
  struct open_remote *o = arg;

  o->d = device_open_nbd (o->uri, 0);
  if (!o->d)
    snprintf (o->err, 200, "%s", strata_last_error ());
  return NULL;
}

/* Open the remote devices of CFG (not the cache's), together; DEV[i] is
 * device i, or NULL with the reason in OPENERR[i].  Returns 0, or -1 if
 * out of memory. */
static int
open_remotes (const struct config *cfg, struct device **dev,
              char (*openerr)[200])
{
  size_t n = cfg->ndevices;
  struct open_remote *o = calloc (n ? n : 1, sizeof *o);

  if (!o)
    return strata_error (ENOMEM, "out of memory");
  for (size_t i = 0; i < n; i++) {
    const struct config_device *cd = &cfg->devices[i];
    if (!cd->uri || config_is_cache_device (cfg, cd->name))
      continue;
    o[i] = (struct open_remote) { .uri = cd->uri, .err = openerr[i] };
    o[i].started = pthread_create (&o[i].thread, NULL, open_remote_thread,
                                   &o[i]) == 0;
    if (!o[i].started)
      open_remote_thread (&o[i]);
  }
  for (size_t i = 0; i < n; i++) {
    if (o[i].started)
      pthread_join (o[i].thread, NULL);
    dev[i] = o[i].d;
  }
  free (o);
  return 0;
}

struct pool *
pool_open (const struct config *cfg, unsigned flags)
{
  struct pool *p = calloc (1, sizeof *p);
  size_t n = cfg->ndevices;
  struct format_sb *sbs = calloc (n, sizeof *sbs);
  bool *have_sb = calloc (n, sizeof *have_sb);
  char (*openerr)[200] = calloc (n, sizeof *openerr);
  struct device **dev_of = calloc (n, sizeof *dev_of);
  struct device **opened = calloc (n, sizeof *opened);
  struct dev_req *rq = calloc (n, sizeof *rq);
  struct journal_member members[64];
  uint8_t *sbbuf = device_alloc_buf ((n ? n : 1) * STRATA_BLOCK);
  size_t nrq = 0, ndata = 0, nabsent = 0;
  size_t nmembers = 0, ref = SIZE_MAX, nosb = SIZE_MAX;

  if (p)
    p->lockfd = -1;
  if (!p || !sbs || !have_sb || !openerr || !dev_of || !opened
      || !rq || !sbbuf || !(p->opened = calloc (n, sizeof *p->opened))) {
    strata_error (ENOMEM, "out of memory");
    goto fail;
  }
  pthread_mutex_init (&p->admin_lock, NULL);
  pthread_mutex_init (&p->fail_lock, NULL);
  pthread_mutex_init (&p->problem_lock, NULL);
  pthread_mutex_init (&p->walk_lock, NULL);
  pthread_mutex_init (&p->add_lock, NULL);
  pthread_mutex_init (&p->members_lock, NULL);
  pthread_mutex_init (&p->lost_lock, NULL);
  pthread_mutex_init (&p->reserve_lock, NULL);
  p->cfg = cfg;
  p->writable = flags & POOL_WRITE;

  if (lock_pool (p, cfg) == -1)
    goto fail;
  device_set_timeout (cfg->io_timeout_ms);
  /* Open every declared device and read its superblock, all together.
   * A device that cannot be opened is missing; one without our
   * superblock is an error, because the YAML names it as part of this
   * pool. */
  if (open_remotes (cfg, opened, openerr) == -1)
    goto fail;
  for (size_t i = 0; i < n; i++) {
    const struct config_device *cd = &cfg->devices[i];
    if (config_is_cache_device (cfg, cd->name))
      continue;
    ndata++;
    if (!cd->uri
        && !(opened[i] = device_open_local (cd->path, io_flags (cd), 0))) {
      if (errno == ENOENT)
        nabsent++;
      snprintf (openerr[i], sizeof openerr[i], "%s", strata_last_error ());
    }
    if (opened[i])
      p->opened[p->nopened++] = opened[i];
  }
  for (size_t i = 0; i < n; i++) {
    const struct config_device *cd = &cfg->devices[i];
    if (!opened[i])
      continue;			/* missing: the metadata will say what it held */
    if (device_lock (opened[i], lock_wait (p)) == -1) {
      strata_error (EBUSY, "pool %s is in use by another process (device %s, "
                    "%s, is locked); is it being served?", cfg->name,
                    cd->name, config_device_where (cd));
      goto fail;
    }
    /* Too small to hold one: no superblock, said below. */
    if (device_size (opened[i]) < FORMAT_SB_OFFSET + STRATA_BLOCK) {
      memset (sbbuf + i * STRATA_BLOCK, 0, STRATA_BLOCK);
      continue;
    }
    rq[nrq++] = (struct dev_req) { .dev = opened[i], .op = DEV_READ,
                                   .buf = sbbuf + i * STRATA_BLOCK,
                                   .len = STRATA_BLOCK,
                                   .off = FORMAT_SB_OFFSET, .tag = i };
  }
  device_submit (rq, nrq);
  for (size_t k = 0; k < nrq; k++)
    if (rq[k].res != 0) {
      /* Unreadable (a failing member): missing, like one that cannot be
       * opened. */
      snprintf (openerr[rq[k].tag], sizeof openerr[0], "%s: read of its "
                "superblock failed: %s", device_path (rq[k].dev),
                strerror (-rq[k].res));
      opened[rq[k].tag] = NULL;
    }
  for (size_t i = 0; i < n; i++) {
    const struct config_device *cd = &cfg->devices[i];
    struct device *d = opened[i];

    if (!d)
      continue;
    if (format_sb_decode (sbbuf + i * STRATA_BLOCK, &sbs[i]) == -1) {
      if (errno != EINVAL) {
        strata_error_prefix ("device %s (%s)", cd->name, config_device_where (cd));
        goto fail;
      }
      /* Not formatted: a device declared to be added (strata device add),
       * unless no device of the pool is formatted.  A member by that
       * name is missing (its disk was wiped or swapped). */
      if (nosb == SIZE_MAX)
        nosb = i;
      snprintf (openerr[i], sizeof openerr[i], "%s holds no strata "
                "superblock (wiped, or another disk?)", config_device_where (cd));
      continue;
    }
    if (shrunk (d, &sbs[i], openerr[i], sizeof openerr[i]))
      continue;
    if (ref == SIZE_MAX)
      ref = i;
    if (memcmp (sbs[i].pool_uuid, sbs[ref].pool_uuid, 16) != 0
        || strcmp (sbs[i].pool_name, cfg->name) != 0) {
      strata_error (EINVAL, "device %s (%s) belongs to pool \"%s\", not to "
                    "pool \"%s\"", cd->name, config_device_where (cd), sbs[i].pool_name,
                    ref != i ? sbs[ref].pool_name : cfg->name);
      goto fail;
    }
    have_sb[i] = true;
    dev_of[i] = d;
  }
  if (ref == SIZE_MAX && nosb != SIZE_MAX) {
    const struct config_device *cd = &cfg->devices[nosb];
    strata_error (EINVAL, "device %s (%s) holds no strata superblock: it "
                  "is not part of pool %s (was the pool initialised with "
                  "strata init?)", cd->name, config_device_where (cd), cfg->name);
    goto fail;
  }
  if (ref == SIZE_MAX) {
    size_t first = 0;
    while (first + 1 < n && !openerr[first][0])
      first++;
    strata_error (ENOENT, "pool %s: none of its %zu devices can be opened "
                  "(first: %s)%s", cfg->name, ndata, openerr[first],
                  nabsent == ndata ? "; none of them exists: was the pool "
                  "initialised (strata init)?" : "");
    goto fail;
  }
  memcpy (p->uuid, sbs[ref].pool_uuid, 16);
  p->extent_size = sbs[ref].extent_size;
  if (cfg->extent_size != p->extent_size) {
    strata_error (EINVAL, "%s: pool.extent_size is %" PRIu64 " bytes but "
                  "pool %s was created with %" PRIu64, cfg->file,
                  cfg->extent_size, cfg->name, p->extent_size);
    goto fail;
  }
  /* Pools made before init reserved the metadata areas of sparse files
   * get them now; a full filesystem only gets a warning, since the
   * pool works until the journal needs a block it cannot have. */
  for (size_t i = 0; i < n && p->writable; i++)
    if (have_sb[i]
        && reserve_meta (dev_of[i], cfg->devices[i].name,
                         sbs[i].csum_offset, false) == -1)
      fprintf (stderr, "strata: pool %s: warning: %s\n", cfg->name,
               strata_last_error ());
  nmembers = find_members (cfg, sbs, have_sb, dev_of, &p->mem, members);

  p->meta = meta_new ();
  if (!p->meta)
    goto fail;
  p->journal = journal_open (members, nmembers, p->uuid,
                             p->writable ? JOURNAL_WRITE : 0, &journal_ops,
                             p->meta);
  if (!p->journal) {
    /* The journal can only name the members it could not read by index:
     * say which declared devices could not be read, and why. */
    for (size_t i = 0; i < n; i++)
      if (openerr[i][0])
        fprintf (stderr, "strata: pool %s: device %s could not be read: "
                 "%s\n", cfg->name, cfg->devices[i].name, openerr[i]);
    strata_error_prefix ("pool %s: metadata", cfg->name);
    goto fail;
  }

  /* Map the metadata's devices to what was opened. */
  p->ndevs = p->meta->ndevices;
  p->devs = calloc (META_MAX_DEVICES, sizeof *p->devs);
  p->problem = calloc (META_MAX_DEVICES, sizeof *p->problem);
  p->reserved = calloc (META_MAX_DEVICES, sizeof *p->reserved);
  p->failed = calloc (META_MAX_DEVICES, sizeof *p->failed);
  p->read_errors = calloc (META_MAX_DEVICES, sizeof *p->read_errors);
  p->csum_errors = calloc (META_MAX_DEVICES, sizeof *p->csum_errors);
  p->no_space = calloc (META_MAX_DEVICES, sizeof *p->no_space);
  p->no_space_at = calloc (META_MAX_DEVICES, sizeof *p->no_space_at);
  p->no_space_why = calloc (META_MAX_DEVICES, sizeof *p->no_space_why);
  p->repairs = calloc (META_MAX_DEVICES, sizeof *p->repairs);
  p->rejoin_ok = calloc (META_MAX_DEVICES, sizeof *p->rejoin_ok);
  p->rejoin_at = calloc (META_MAX_DEVICES, sizeof *p->rejoin_at);
  p->rejoin_gap = calloc (META_MAX_DEVICES, sizeof *p->rejoin_gap);
  p->rejoin_back = calloc (META_MAX_DEVICES, sizeof *p->rejoin_back);
  if (!p->devs || !p->problem || !p->reserved || !p->failed
      || !p->read_errors || !p->csum_errors || !p->no_space
      || !p->no_space_at || !p->no_space_why || !p->repairs
      || !p->rejoin_ok || !p->rejoin_at || !p->rejoin_gap
      || !p->rejoin_back) {
    strata_error (ENOMEM, "out of memory");
    goto fail;
  }
  for (uint32_t i = 0; i < p->ndevs; i++)
    snprintf (p->problem[i], sizeof p->problem[0], "not in %s", cfg->file);
  for (size_t i = 0; i < n; i++) {
    const struct config_device *cd = &cfg->devices[i];
    const struct format_sb *sb = &sbs[i];
    uint32_t k;

    if (!have_sb[i]) {
      /* Could not be opened: find it by name to say why. */
      for (k = 0; k < p->ndevs; k++)
        if (strcmp (p->meta->devices[k].name, cd->name) == 0)
          snprintf (p->problem[k], sizeof p->problem[0], "%s", openerr[i]);
      continue;
    }
    k = sb->dev_index;
    if (k >= p->ndevs || memcmp (p->meta->devices[k].uuid, sb->dev_uuid, 16)
        || (strcmp (sb->dev_name, cd->name) != 0
            && p->meta->devices[k].state == META_DEV_REMOVED)) {
      /* Formatted for this pool but not (or no longer) a member: a
       * device add that stopped before its commit, or a removed member
       * declared as a new device.  strata device add decides.  A member
       * by that name is missing. */
      for (k = 0; k < p->ndevs; k++)
        if (strcmp (p->meta->devices[k].name, cd->name) == 0)
          snprintf (p->problem[k], sizeof p->problem[0], "%s holds a "
                    "superblock of this pool that is not this member's",
                    config_device_where (cd));
      continue;
    }
    if (strcmp (sb->dev_name, cd->name) != 0) {
      strata_error (EINVAL, "%s:%d: device %s: %s is the pool's device \"%s\"; "
                    "the YAML has the names mixed up", cfg->file, cd->line,
                    cd->name, config_device_where (cd), sb->dev_name);
      goto fail;
    }
    for (size_t q = 0; q < p->nopened; q++)
      if (strcmp (device_path (p->opened[q]), config_device_where (cd)) == 0)
        p->devs[k] = p->opened[q];
    p->problem[k][0] = '\0';
  }

  name_members (p);
  if (open_cache (p) == -1)
    goto fail;

  p->alloc = alloc_new (p->meta, 0);
  if (!p->alloc || alloc_load (p->alloc, p->meta) == -1)
    goto fail;
  p->mem_align[DEV_READ] = p->mem_align[DEV_WRITE] = 1;
  for (uint32_t i = 0; i < p->ndevs; i++) {
    uint8_t st = p->meta->devices[i].state;
    p->failed[i] = st == META_DEV_FAILED || st == META_DEV_REMOVED;
    p->rejoin_ok[i] = p->cfg->rejoin_auto && !p->devs[i] && !p->failed[i];
    if (!p->devs[i] || p->failed[i])
      alloc_set_usable (p->alloc, i, false);
    if (p->devs[i])
      note_align (p, p->devs[i]);
  }
  /* After an unclean stop, make the replicas of every dirty column agree
   * before anything reads them. */
  if (p->writable
      && (!(p->resync = resync_new (p)) || resync_recover (p->resync) == -1)) {
    strata_error_prefix ("pool %s: crash resync", cfg->name);
    goto fail;
  }
  /* A pool made before init sized its metadata areas for the pool full
   * (size_meta) may outgrow them: say so while there is time. */
  if (p->writable) {
    uint64_t ext, fit;
    if (pool_meta_tight (p, &ext, &fit))
      fprintf (stderr, "strata: pool %s: warning: the metadata areas hold "
               "the checkpoint of %" PRIu64 " extents in use, and the pool "
               "has %" PRIu64 ": metadata changes (allocation among them) "
               "fail past that\n", cfg->name, fit, ext);
  }
  free (sbs);
  free (have_sb);
  free (openerr);
  free (dev_of);
  free (opened);
  free (rq);
  free (sbbuf);
  return p;

 fail:
  free (sbs);
  free (have_sb);
  free (openerr);
  free (dev_of);
  free (opened);
  free (rq);
  free (sbbuf);
  if (p) {
    int e = errno;
    char msg[1024];
    snprintf (msg, sizeof msg, "%s", strata_last_error ());
    pool_close (p);
    strata_error (e, "%s", msg);
  }
  return NULL;
}

void
pool_close (struct pool *p)
{
  if (!p)
    return;
  /* A clean stop leaves no column dirty. */
  if (p->resync)
    resync_stop (p->resync);
  if (p->resync && resync_clean (p->resync, true) == -1)
    fprintf (stderr, "strata: pool %s: %s; the next open resyncs the "
             "columns written last\n", p->cfg->name, strata_last_error ());
  resync_free (p->resync);
  cache_close (p->cache);
  for (size_t i = 0; i < 2; i++)
    device_close (p->cache_dev[i]);
  journal_close (p->journal);
  alloc_free (p->alloc);
  meta_free (p->meta);
  if (p->lockfd >= 0)
    close (p->lockfd);
  for (size_t i = 0; i < p->nopened; i++)
    device_close (p->opened[i]);
  free (p->opened);
  free (p->devs);
  free (p->problem);
  if (p->reserved)
    for (size_t i = 0; i < META_MAX_DEVICES; i++)
      free (p->reserved[i]);
  free (p->reserved);
  free (p->failed);
  free (p->read_errors);
  free (p->csum_errors);
  free (p->no_space);
  free (p->no_space_at);
  free (p->no_space_why);
  free (p->repairs);
  free (p->rejoin_ok);
  free (p->rejoin_at);
  free (p->rejoin_gap);
  free (p->rejoin_back);
  for (size_t i = 0; i < p->nreloaded; i++)
    config_free (p->reloaded[i]);
  free (p->reloaded);
  pthread_mutex_destroy (&p->walk_lock);
  pthread_mutex_destroy (&p->add_lock);
  pthread_mutex_destroy (&p->members_lock);
  pthread_mutex_destroy (&p->admin_lock);
  pthread_mutex_destroy (&p->fail_lock);
  pthread_mutex_destroy (&p->problem_lock);
  pthread_mutex_destroy (&p->lost_lock);
  free (p);
}

const struct config *pool_config (struct pool *p) { return p->cfg; }
struct meta *pool_meta (struct pool *p) { return p->meta; }
struct journal *pool_journal (struct pool *p) { return p->journal; }
struct alloc *pool_alloc (struct pool *p) { return p->alloc; }
bool pool_writable (struct pool *p) { return p->writable; }
uint32_t pool_ndevices (struct pool *p) { return p->ndevs; }

struct device *
pool_device (struct pool *p, uint32_t i)
{
  return i < p->ndevs ? p->devs[i] : NULL;
}

bool
pool_device_usable (struct pool *p, uint32_t i)
{
  return i < p->ndevs && p->devs[i]
    && !atomic_load_explicit (&p->failed[i], memory_order_acquire);
}

/* Commit STATE for device I (under fail_lock).  Read-only, the state is
 * kept to this process.  Returns 0 or -1. */
static int
commit_dev_state (struct pool *p, uint32_t i, uint8_t state)
{
  struct fbuf e;
  struct journal_item it;
  int r;

  if (!p->writable)
    return 0;
  fbuf_init_write (&e);
  meta_entry_dev_state (&e, i, state);
  it = (struct journal_item) { META_E_DEV_STATE, e.len, e.p };
  r = e.bad ? strata_error (ENOMEM, "out of memory")
            : journal_append (p->journal, &it, 1);
  fbuf_free (&e);
  if (r == -1)
    strata_error_prefix ("pool %s: marking device %s %s", p->cfg->name,
                         p->meta->devices[i].name, meta_dev_state_name (state));
  return r;
}

/* Say why device I is not (or not fully) in use, for status. */
static void __attribute__ ((format (printf, 3, 4)))
set_problem (struct pool *p, uint32_t i, const char *fmt, ...)
{
  va_list ap;

  pthread_mutex_lock (&p->problem_lock);
  va_start (ap, fmt);
  vsnprintf (p->problem[i], sizeof p->problem[i], fmt, ap);
  va_end (ap);
  pthread_mutex_unlock (&p->problem_lock);
}

/* Why a device is failed: it is missing (pool_device_away); a request
 * to it failed (pool_device_fail), which may be down to a remote
 * member's lost connection; the operator's word, or anything else that
 * must keep it out until strata device add. */
enum fail_kind { FAIL_AWAY, FAIL_IO, FAIL_HARD };

/* Mark device I failed for WHY.  Unless it is away (missing, or a
 * remote member that lost its connection), it may no longer rejoin by
 * itself. */
static int
fail_device (struct pool *p, uint32_t i, const char *why,
             enum fail_kind kind)
{
  struct device *d;
  bool away;
  int r = 0;

  if (i >= p->ndevs)
    return strata_error (EINVAL, "no device %" PRIu32, i);
  if (atomic_load (&p->failed[i]) && !atomic_load (&p->rejoin_ok[i]))
    return 0;			/* failed for good already */
  /* Under fail_lock, which device_back() holds when it sets devs[i]. */
  pthread_mutex_lock (&p->fail_lock);
  d = p->devs[i];
  away = p->cfg->rejoin_auto
    && (kind == FAIL_AWAY
        || (kind == FAIL_IO && d && device_lost_connection (d)));
  if (!away)
    atomic_store (&p->rejoin_ok[i], false);
  if (!atomic_load (&p->failed[i])
      && (r = commit_dev_state (p, i, META_DEV_FAILED)) == 0) {
    /* Committed: from here on nothing reads the device or waits for
     * writes to it. */
    atomic_store_explicit (&p->failed[i], true, memory_order_release);
    alloc_set_usable (p->alloc, i, false);
    /* A member that was open and lost its connection may come back. */
    if (away && d)
      atomic_store (&p->rejoin_ok[i], true);
    set_problem (p, i, "failed: %s%s", why,
                 away && d ? " (its connection was lost; it rejoins by "
                 "itself once it answers)" : "");
    fprintf (stderr, "strata: pool %s: device %s marked failed: %s%s\n",
             p->cfg->name, p->meta->devices[i].name, why,
             away && d ? "; its connection was lost: it is tried again in "
             "the background and rejoins once it answers" : "");
  }
  pthread_mutex_unlock (&p->fail_lock);
  return r;
}

int
pool_device_fail (struct pool *p, uint32_t i, const char *why)
{
  return fail_device (p, i, why, FAIL_IO);
}

int
pool_device_fail_hard (struct pool *p, uint32_t i, const char *why)
{
  return fail_device (p, i, why, FAIL_HARD);
}

bool
pool_device_rejoins (struct pool *p, uint32_t i)
{
  return i < p->ndevs && atomic_load (&p->rejoin_ok[i]);
}

int
pool_device_away (struct pool *p, uint32_t i)
{
  return fail_device (p, i, "not available", FAIL_AWAY);
}

int
pool_device_set_state (struct pool *p, uint32_t i, uint8_t state)
{
  int r;

  if (i >= p->ndevs)
    return strata_error (EINVAL, "no device %" PRIu32, i);
  pthread_mutex_lock (&p->fail_lock);
  r = commit_dev_state (p, i, state);
  if (r == 0 && state != META_DEV_UP && state != META_DEV_DEGRADED)
    atomic_store (&p->rejoin_ok[i], false);
  if (r == 0 && (state == META_DEV_FAILED || state == META_DEV_REMOVED)) {
    atomic_store_explicit (&p->failed[i], true, memory_order_release);
    alloc_set_usable (p->alloc, i, false);
    set_problem (p, i, "%s", meta_dev_state_name (state));
  }
  pthread_mutex_unlock (&p->fail_lock);
  return r;
}

/* Open device I of the metadata, as the YAML declares it, and check
 * that its superblock (returned in SB) is the member's.  Returns the
 * device (added to p->opened when newly opened), or NULL with a
 * message. */
static struct device *
member_open (struct pool *p, uint32_t i, struct format_sb *sbp)
{
  const struct meta_device *md = &p->meta->devices[i];
  const struct config_device *cd = pool_declared_device (p, md->name, false);
  struct device *d = p->devs[i];
  uint8_t *buf = device_alloc_buf (STRATA_BLOCK);
  struct format_sb sb;
  char u[37], why[300];
  bool opened = false;

  if (!buf) {
    strata_error (ENOMEM, "out of memory");
    return NULL;
  }
  if (!cd) {
    strata_error (ENOENT, "device %s is not declared in %s", md->name,
                  p->cfg->file);
    goto fail;
  }
  /* Opened at pool open, but its superblock could not be read then. */
  for (size_t q = 0; q < p->nopened && !d; q++)
    if (strcmp (device_path (p->opened[q]), config_device_where (cd)) == 0)
      d = p->opened[q];
  if (!d) {
    struct device **o = realloc (p->opened, (p->nopened + 1) * sizeof *o);
    if (!o) {
      strata_error (ENOMEM, "out of memory");
      goto fail;
    }
    p->opened = o;
    d = cd->uri ? device_open_nbd (cd->uri, 0)
                : device_open_local (cd->path, io_flags (cd), 0);
    if (!d) {
      strata_error_prefix ("device %s (%s)", md->name,
                           config_device_where (cd));
      goto fail;
    }
    opened = true;
    if (device_lock (d, lock_wait (p)) == -1) {
      strata_error_prefix ("device %s (%s)", md->name,
                           config_device_where (cd));
      goto fail;
    }
  }
  /* A remote member that went away is reconnected in the background,
   * with backoff: it may not have noticed yet that the host is back. */
  if (device_reconnect (d) == -1
      || device_pread (d, buf, STRATA_BLOCK, 0) == -1) {
    strata_error_prefix ("device %s (%s): reading its superblock", md->name,
                         config_device_where (cd));
    goto fail;
  }
  if (format_sb_decode (buf, &sb) == -1) {
    strata_error (EINVAL, "device %s (%s) holds no strata superblock: it is "
                  "not the member that left the pool", md->name,
                  config_device_where (cd));
    goto fail;
  }
  if (memcmp (sb.pool_uuid, p->uuid, 16) != 0 || sb.dev_index != i
      || memcmp (sb.dev_uuid, md->uuid, 16) != 0) {
    util_uuid_format (sb.dev_uuid, u);
    strata_error (EINVAL, "device %s (%s) is not the member that left pool "
                  "%s: its superblock names device \"%s\" %s of pool \"%s\"",
                  md->name, config_device_where (cd), p->cfg->name,
                  sb.dev_name, u, sb.pool_name);
    goto fail;
  }
  if (shrunk (d, &sb, why, sizeof why)) {
    strata_error (EINVAL, "device %s: %s", md->name, why);
    goto fail;
  }
  free (buf);
  if (opened)
    p->opened[p->nopened++] = d;
  *sbp = sb;
  return d;

 fail:
  free (buf);
  if (opened && d)
    device_close (d);
  return NULL;
}

/* A failed device coming back may have lost writes it acknowledged but
 * had not made durable yet (a member whose host lost power: see
 * device-nbd.c), so the columns that were dirty when it failed may hold,
 * on it, data their checksums do not describe.  For each dirty column
 * with a current copy on it: where another copy can be read, its copy is
 * made stale (device add's rebuild copies it again); where none can, the
 * column becomes UNSYNCED, and resync_returned() recomputes its
 * checksums from the data the device holds, as crash resync does.
 * Nothing writes those copies meanwhile: the device is failed.  */
struct suspect {
  struct pool *p;
  struct meta_volume *v;
  uint32_t dev;
  struct meta_stale_item *items;
  size_t n, cap;
  size_t unsynced;
};

static int
suspect_chunk (void *opaque, uint64_t idx, struct meta_chunk *c)
{
  struct suspect *s = opaque;
  uint32_t R = s->v->replicas;

  for (uint32_t col = 0; col < s->v->width; col++) {
    struct meta_column *mc = &c->col[col];
    uint8_t mine = 0;
    bool other = false;

    if (atomic_load (&mc->state) != META_COL_DIRTY)
      continue;
    for (uint32_t r = 0; r < R; r++) {
      if (c->ext[col * R + r].dev == s->dev && !meta_copy_stale (mc, r))
        mine |= 1u << r;
      else
        other |= pool_copy_readable (s->p, c, R, col, r);
    }
    if (!mine)
      continue;
    if (!other) {
      atomic_store (&mc->state, META_COL_UNSYNCED);
      s->unsynced++;
      continue;
    }
    if (s->n == s->cap) {
      size_t cap = s->cap ? 2 * s->cap : 64;
      struct meta_stale_item *g = realloc (s->items, cap * sizeof *g);
      if (!g)
        return -1;
      s->items = g;
      s->cap = cap;
    }
    s->items[s->n++] = (struct meta_stale_item) { s->v->id, idx, col, mine };
  }
  return 0;
}

static int
suspect_returning (struct pool *p, uint32_t i)
{
  struct meta *m = p->meta;
  struct suspect s = { .p = p, .dev = i };
  int r = 0;

  pool_walk_lock (p);
  pthread_mutex_lock (&m->lock);
  for (size_t k = 0; k < m->nvolumes && r == 0; k++) {
    s.v = m->volumes[k];
    if (meta_foreach_chunk (s.v, suspect_chunk, &s) != 0)
      r = strata_error (ENOMEM, "out of memory");
  }
  pthread_mutex_unlock (&m->lock);
  for (size_t k = 0; k < s.n && r == 0; k += 1024)
    r = pool_commit_stale (p, true, s.items + k, MIN (1024, s.n - k));
  pool_walk_unlock (p);
  if (r == 0 && s.n + s.unsynced > 0)
    fprintf (stderr, "strata: pool %s: device %s was written shortly before "
             "it failed: %zu of its copies are resynced from others, and "
             "%zu columns held only there get their checksums from its "
             "data\n", p->cfg->name, m->devices[i].name, s.n, s.unsynced);
  free (s.items);
  return r;
}

/* Bring device I back (pool_device_return), or with REJOIN only one that
 * may still rejoin by itself (rejoin_ok, pool_rejoin_away): 1 if it
 * no longer may (back already, or failed for good or removed
 * meanwhile). */
static int
device_back (struct pool *p, uint32_t i, bool rejoin)
{
  const struct meta_device *md;
  struct device *d;
  struct format_sb sb;
  int r = -1;

  if (i >= p->ndevs)
    return strata_error (EINVAL, "no device %" PRIu32, i);
  if (!p->writable)
    return strata_error (EROFS, "pool %s is open read-only", p->cfg->name);
  md = &p->meta->devices[i];
  /* Before fail_lock: the cleaner takes the walk lock first. */
  if (md->state != META_DEV_REMOVED && atomic_load (&p->failed[i])
      && suspect_returning (p, i) == -1)
    return strata_error_prefix ("pool %s: device %s", p->cfg->name,
                                md->name);
  pthread_mutex_lock (&p->fail_lock);
  if (rejoin && ((p->devs[i] && !atomic_load (&p->failed[i]))
                 || !atomic_load (&p->rejoin_ok[i]))) {
    r = 1;
    goto out;
  }
  /* Back by itself since device add looked. */
  if (p->devs[i] && !atomic_load (&p->failed[i])) {
    r = 0;
    goto out;
  }
  if (md->state == META_DEV_REMOVED) {
    char u[37];
    util_uuid_format (md->uuid, u);
    strata_error (EPERM, "device %s (%s) was replaced: the pool holds its "
                  "copies elsewhere and it was marked removed; it cannot "
                  "rejoin pool %s.  To use the disk again, wipe it and "
                  "declare it as a new device", md->name, u, p->cfg->name);
    goto out;
  }
  if (!(d = member_open (p, i, &sb)))
    goto out;
  /* Its metadata replica, if it holds one, took no commit while it was
   * away: bring it up to date first, so that it takes the commit below
   * and the journal keeps its majority if another replica fails next. */
  for (uint32_t k = 0; k < p->mem.n; k++)
    if (p->mem.dev[k] == i) {
      struct journal_member jm = {
        .dev = d, .name = md->name,
        .meta_off = sb.meta_offset, .meta_size = sb.meta_size,
      };
      if (journal_rejoin (p->journal, k, &jm) == -1) {
        strata_error_prefix ("device %s: its metadata replica", md->name);
        goto out;
      }
    }
  if (commit_dev_state (p, i, META_DEV_UP) == -1)
    goto out;
  /* Lock-free readers look at the device pointer only once it is
   * usable. */
  p->devs[i] = d;
  note_align (p, d);
  atomic_store (&p->read_errors[i], 0);
  set_problem (p, i, "%s", "");
  atomic_store_explicit (&p->failed[i], false, memory_order_release);
  alloc_set_usable (p->alloc, i, true);
  atomic_store (&p->rejoin_ok[i], false);
  fprintf (stderr, "strata: pool %s: device %s is back\n", p->cfg->name,
           md->name);
  r = 0;
 out:
  pthread_mutex_unlock (&p->fail_lock);
  /* Columns crash resync could not reach may be reachable now. */
  if (r == 0 && p->resync && resync_returned (p->resync) == -1)
    r = strata_error_prefix ("pool %s: device %s is back, but resyncing "
                             "its columns failed", p->cfg->name, md->name);
  return r;
}

int
pool_device_return (struct pool *p, uint32_t i)
{
  return device_back (p, i, false) == -1 ? -1 : 0;
}

/* Device I's handle (NULL if it is not open), and whether it is in use
 * (open, not failed), as device_back() leaves them under fail_lock. */
static struct device *
in_use_device (struct pool *p, uint32_t i, bool *in_use)
{
  struct device *d;

  pthread_mutex_lock (&p->fail_lock);
  d = p->devs[i];
  *in_use = d && !atomic_load (&p->failed[i]);
  pthread_mutex_unlock (&p->fail_lock);
  return d;
}

int
pool_rejoin_away (struct pool *p, bool *back_dev)
{
  uint64_t now = util_now_ms ();
  uint32_t n = atomic_load (&p->ndevs);
  int back = 0;

  if (!p->writable)
    return 0;
  for (uint32_t i = 0; i < n; i++) {
    const struct meta_device *md = &p->meta->devices[i];
    const struct config_device *cd;
    struct device *was;
    uint64_t *hist = p->rejoin_back[i];
    char why[sizeof p->problem[0]], now_why[sizeof p->problem[0]];
    bool in_use;
    int r;

    if (!atomic_load (&p->rejoin_ok[i]))
      continue;
    was = in_use_device (p, i, &in_use);
    if (in_use || now < p->rejoin_at[i])
      continue;
    p->rejoin_gap[i] = p->rejoin_gap[i]
      ? MIN (p->rejoin_gap[i] * 2, REJOIN_MAX_MS) : REJOIN_FIRST_MS;
    p->rejoin_at[i] = now + p->rejoin_gap[i];
    /* The oldest of its last REJOIN_FLAPS returns is recent: it keeps
     * failing, and an operator should look at it. */
    if (hist[0] && now - hist[0] < REJOIN_FLAP_WINDOW_MS) {
      pthread_mutex_lock (&p->fail_lock);
      atomic_store (&p->rejoin_ok[i], false);
      pthread_mutex_unlock (&p->fail_lock);
      fprintf (stderr, "strata: pool %s: device %s came back by itself %d "
               "times within an hour and failed again: it is no longer "
               "taken back by itself; strata device add brings it back\n",
               p->cfg->name, md->name, REJOIN_FLAPS);
      set_problem (p, i, "failed again after coming back by itself %d "
                   "times within an hour: strata device add brings it back",
                   REJOIN_FLAPS);
      continue;
    }
    /* Asked first, so that a member still away costs this thread a
     * second at most, not the request timeout: a member still open is
     * reconnected in the background, others get a bare handshake.
     * Only a device the YAML declared at the open: the declarations
     * read since belong to the control thread's commands. */
    cd = config_find_device (p->cfg, md->name);
    if (!cd || (was ? !device_connected (was)
                : cd->uri ? !device_nbd_answers (cd->uri, REJOIN_ANSWER_MS)
                : access (cd->path, F_OK) == -1))
      continue;
    r = device_back (p, i, true);
    if (r == 1)
      continue;
    in_use_device (p, i, &in_use);
    if (in_use) {
      /* Back, even if its resync failed. */
      memmove (hist, hist + 1, (REJOIN_FLAPS - 1) * sizeof *hist);
      hist[REJOIN_FLAPS - 1] = now;
      p->rejoin_gap[i] = 0;
      fprintf (stderr, "strata: pool %s: device %s (%s), %s, answered and "
               "is in use again\n", p->cfg->name, md->name,
               config_device_where (cd), was ? "failed when its connection "
               "was lost" : "missing since the pool was opened");
      if (r == -1)
        fprintf (stderr, "strata: pool %s: %s\n", p->cfg->name,
                 strata_last_error ());
      if (back_dev)
        back_dev[i] = true;
      back++;
      continue;
    }
    /* Say why once, not at every try. */
    pool_device_problem (p, i, why, sizeof why);
    snprintf (now_why, sizeof now_why, "%s%s",
              was ? "failed: its connection was lost; it answers again but "
              "cannot rejoin: " : "", strata_last_error ());
    if (strcmp (why, now_why) != 0) {
      fprintf (stderr, "strata: pool %s: device %s answers but cannot "
               "rejoin: %s\n", p->cfg->name, md->name, strata_last_error ());
      set_problem (p, i, "%s", now_why);
    }
  }
  return back;
}

size_t
pool_mem_align (struct pool *p, enum dev_op op)
{
  return atomic_load_explicit (&p->mem_align[op == DEV_READ ? DEV_READ
                                             : DEV_WRITE],
                               memory_order_relaxed);
}

const struct config_device *
pool_declared_device (struct pool *p, const char *name, bool reload)
{
  const struct config_device *cd = config_find_device (p->cfg, name);
  struct config *c, **grown;

  for (size_t i = 0; !cd && i < p->nreloaded; i++)
    cd = config_find_device (p->reloaded[i], name);
  if (cd || !reload)
    return cd;
  /* Declared since the pool was opened?  Read the YAML again. */
  if (config_parse_file (p->cfg->file, &c) == -1) {
    strata_error_prefix ("reading %s again for device %s", p->cfg->file,
                         name);
    return NULL;
  }
  if (strcmp (c->name, p->cfg->name) != 0) {
    strata_error (EINVAL, "%s now declares pool \"%s\", not pool \"%s\" that "
                  "is open", c->file, c->name, p->cfg->name);
    config_free (c);
    return NULL;
  }
  if (!(cd = config_find_device (c, name))) {
    strata_error (ENOENT, "device %s is not declared in %s", name, c->file);
    config_free (c);
    return NULL;
  }
  grown = realloc (p->reloaded, (p->nreloaded + 1) * sizeof *grown);
  if (!grown) {
    config_free (c);
    strata_error (ENOMEM, "out of memory");
    return NULL;
  }
  p->reloaded = grown;
  p->reloaded[p->nreloaded++] = c;
  return cd;
}

/* May a declared device that is not a member be formatted?  B holds
 * its first LEN bytes.  0: yes (zeros, or a device add of this pool that
 * stopped before its commit); 1: only with --force (other data, or a
 * removed member of this pool), 2: never (a member of this pool under
 * another name).  WHY says what it holds. */
static int
add_refusal (struct pool *p, const uint8_t *b, size_t len, char *why,
             size_t whylen)
{
  struct format_sb sb;
  const char *what;

  if (format_sb_decode (b, &sb) == 0 && memcmp (sb.pool_uuid, p->uuid, 16) == 0) {
    for (uint32_t k = 0; k < p->ndevs; k++) {
      const struct meta_device *md = &p->meta->devices[k];
      if (memcmp (md->uuid, sb.dev_uuid, 16) != 0)
        continue;
      if (md->state == META_DEV_REMOVED) {
        snprintf (why, whylen, "it is device %s of pool %s, which was "
                  "replaced and removed: its data is stale", md->name,
                  p->cfg->name);
        return 1;
      }
      snprintf (why, whylen, "it is device %s of pool %s, declared under "
                "another name: correct the YAML", md->name, p->cfg->name);
      return 2;
    }
    return 0;
  }
  if (!(what = identify (b, len, why, whylen)))
    return 0;
  if (what != why)
    snprintf (why, whylen, "%s", what);
  return 1;
}

int
pool_device_add (struct pool *p, const char *name, bool force, FILE *log)
{
  const struct config_device *cd;
  struct device *d = NULL;
  struct format_sb sb;
  struct meta_device md;
  struct fbuf e;
  struct journal_item it;
  uint8_t *buf = NULL;
  uint32_t n;
  uint64_t msize, room;
  bool opened = false, created = false, committing = false;
  char why[200];
  int r = -1, refusal;

  if (!p->writable)
    return strata_error (EROFS, "pool %s is open read-only", p->cfg->name);
  fbuf_init_write (&e);
  pthread_mutex_lock (&p->add_lock);
  n = p->ndevs;
  for (uint32_t k = 0; k < n; k++)
    if (strcmp (p->meta->devices[k].name, name) == 0) {
      strata_error (EEXIST, "device %s is a member of pool %s already", name,
                    p->cfg->name);
      goto out;
    }
  if (n >= META_MAX_DEVICES) {
    strata_error (ENOSPC, "pool %s has %u devices, the most it can have",
                  p->cfg->name, n);
    goto out;
  }
  if (config_is_cache_device (p->cfg, name)) {
    strata_error (EINVAL, "device %s is the pool's cache device (cache."
                  "devices), not one to hold volume data", name);
    goto out;
  }
  if (!(cd = pool_declared_device (p, name, true)))
    goto out;
  /* Never format a member: the same path or URI under a new name. */
  for (size_t q = 0; q < p->nopened; q++) {
    if (strcmp (device_path (p->opened[q]), config_device_where (cd)) != 0)
      continue;
    for (uint32_t k = 0; k < n; k++)
      if (p->devs[k] == p->opened[q]) {
        strata_error (EEXIST, "device %s (%s) is device %s of pool %s "
                      "already", name, config_device_where (cd),
                      p->meta->devices[k].name, p->cfg->name);
        goto out;
      }
    d = p->opened[q];		/* declared, opened at pool open */
  }
  if (!d) {
    struct device **o = realloc (p->opened, (p->nopened + 1) * sizeof *o);
    if (!o) {
      strata_error (ENOMEM, "out of memory");
      goto out;
    }
    p->opened = o;
    if (!(d = open_to_format (p->cfg, cd, &created, log)))
      goto out;
    opened = true;
  }
  if (check_size (p->cfg, cd, d, created) == -1)
    goto out;
  /* Its metadata area: metadata_size if the YAML gives it, else as
   * large as the pool's.  The pool's areas cannot grow: the checkpoint
   * of the pool full with this device must fit them and this one. */
  journal_meta_room (p->journal, &room, &msize);
  msize = p->cfg->metadata_size_set ? p->cfg->metadata_size
    : MAX (p->cfg->metadata_size, msize);
  if (new_member (&sb, &md, p->cfg, cd, p->uuid, n, &p->mem,
                  device_size (d), p->extent_size, msize) == -1)
    goto out;
  {
    struct format_meta_layout lay;
    uint64_t ext = sb.extent_count;
    char a[32], b[32];
    for (uint32_t k = 0; k < n; k++)
      if (p->meta->devices[k].state != META_DEV_REMOVED)
        ext += p->meta->devices[k].extent_count;
    format_meta_layout (msize, &lay);
    room = MIN (room, lay.ckpt_size);
    if (meta_ckpt_bound (ext) > room) {
      strata_error (ENOSPC, "device %s was not added: with it pool %s would "
                    "have %" PRIu64 " extents, whose checkpoint may take %s "
                    "once they are all in use, and the metadata areas hold "
                    "%s (metadata_size is fixed when a device is formatted)",
                    name, p->cfg->name, ext,
                    util_human_size (meta_ckpt_bound (ext), a, sizeof a),
                    util_human_size (room, b, sizeof b));
      goto out;
    }
  }
  if (sb.data_offset >= sb.dev_size || sb.extent_count == 0) {
    strata_error (EINVAL, "device %s (%s) is too small (%" PRIu64 " bytes) "
                  "to hold the metadata area, one extent and its checksums",
                  name, config_device_where (cd), sb.dev_size);
    goto out;
  }
  if (!created) {
    uint32_t len = MIN (FORMAT_RESERVED_END, device_size (d));
    if (!(buf = device_alloc_buf (FORMAT_RESERVED_END))) {
      strata_error (ENOMEM, "out of memory");
      goto out;
    }
    if (device_pread (d, buf, len, 0) == -1) {
      strata_error_prefix ("device %s", name);
      goto out;
    }
    refusal = add_refusal (p, buf, len, why, sizeof why);
    if (refusal == 2 || (refusal == 1 && !force)) {
      strata_error (EEXIST, "device %s (%s) was not added: %s%s", name,
                    config_device_where (cd), why,
                    refusal == 1 ? "; use --force to overwrite it" : "");
      goto out;
    }
    /* Every extent must read as zeros (the allocator's invariant). */
    if (discard_devices (&d, cd, NULL, 1, log) == -1)
      goto out;
  }
  if (reserve_meta (d, name, sb.csum_offset, true) == -1)
    goto out;
  /* The superblock first: a crash before the commit leaves a device
   * formatted for the pool that the metadata does not know, which
   * pool_open() passes over and a new device add formats again. */
  if (!buf && !(buf = device_alloc_buf (FORMAT_RESERVED_END))) {
    strata_error (ENOMEM, "out of memory");
    goto out;
  }
  memset (buf, 0, STRATA_BLOCK);
  format_sb_encode (&sb, buf);
  if (device_pwrite (d, buf, STRATA_BLOCK, FORMAT_SB_OFFSET, true) == -1) {
    strata_error_prefix ("device %s", name);
    goto out;
  }

  meta_entry_dev_add (&e, n, &md);
  it = (struct journal_item) { META_E_DEV_ADD, e.len, e.p };
  committing = true;		/* from here the file may be a member */
  pthread_mutex_lock (&p->fail_lock);
  if (e.bad)
    strata_error (ENOMEM, "out of memory");
  else if (journal_append (p->journal, &it, 1) == 0) {
    /* Committed.  Fill the entries, then publish (see struct pool). */
    if (opened)
      p->opened[p->nopened++] = d;
    opened = false;
    p->devs[n] = d;
    p->failed[n] = false;
    set_problem (p, n, "%s", "");
    note_align (p, d);
    atomic_store_explicit (&p->ndevs, n + 1, memory_order_release);
    r = alloc_add_device (p->alloc, n, &md);
  }
  pthread_mutex_unlock (&p->fail_lock);
  if (r == -1)
    strata_error_prefix ("pool %s: adding device %s", p->cfg->name, name);
  else if (log) {
    char sz[32];
    fprintf (log, "formatted %s: %s, %" PRIu64 " extents\n", name,
             util_human_size (sb.dev_size, sz, sizeof sz), sb.extent_count);
  }

 out:
  pthread_mutex_unlock (&p->add_lock);
  if (opened) {
    device_close (d);
    if (created && !committing)
      remove_created (cd, "device add", log);
  }
  free (buf);
  fbuf_free (&e);
  return r;
}

bool
pool_meta_tight (struct pool *p, uint64_t *extents, uint64_t *room_extents)
{
  uint64_t room, ext = 0, fit = 0;

  journal_meta_room (p->journal, &room, NULL);
  pthread_mutex_lock (&p->meta->lock);
  for (uint32_t k = 0; k < p->meta->ndevices; k++)
    if (p->meta->devices[k].state != META_DEV_REMOVED)
      ext += p->meta->devices[k].extent_count;
  pthread_mutex_unlock (&p->meta->lock);
  if (room > meta_ckpt_bound (0))
    fit = (room - meta_ckpt_bound (0)) / (meta_ckpt_bound (1)
                                          - meta_ckpt_bound (0));
  *extents = ext;
  *room_extents = fit;
  return ext > fit;
}

bool
pool_meta_member (struct pool *p, uint32_t dev)
{
  bool r = false;

  pthread_mutex_lock (&p->members_lock);
  for (uint32_t k = 0; k < p->mem.n; k++)
    r |= p->mem.dev[k] == dev;
  pthread_mutex_unlock (&p->members_lock);
  return r;
}

int
pool_meta_pick (struct pool *p, int64_t leaving, int64_t prefer)
{
  struct meta *m = p->meta;
  struct membership ms;
  int64_t best = -1;
  bool best_free = false;
  uint64_t room, ext = 0, need;

  /* The new home's checkpoint slot must hold the pool's checkpoint full
   * (or, in a pool made with less, be no smaller than the least now). */
  journal_meta_room (p->journal, &room, NULL);
  pthread_mutex_lock (&m->lock);
  for (uint32_t k = 0; k < m->ndevices; k++)
    if (m->devices[k].state != META_DEV_REMOVED)
      ext += m->devices[k].extent_count;
  pthread_mutex_unlock (&m->lock);
  need = MIN (room, meta_ckpt_bound (ext));
  pthread_mutex_lock (&p->members_lock);
  ms = p->mem;
  pthread_mutex_unlock (&p->members_lock);
  for (uint32_t d = 0; d < p->ndevs; d++) {
    bool member = false, domain_free = true;
    struct format_meta_layout l;
    if ((int64_t) d == leaving || !pool_device_usable (p, d))
      continue;
    format_meta_layout (m->devices[d].csum_offset - FORMAT_META_OFFSET, &l);
    if (l.ckpt_size < need)
      continue;
    for (uint32_t k = 0; k < ms.n; k++) {
      uint32_t o = ms.dev[k];
      member |= o == d;
      if (o < p->ndevs && (int64_t) o != leaving
          && strcmp (m->devices[o].domain, m->devices[d].domain) == 0)
        domain_free = false;
    }
    if (member)
      continue;
    if ((int64_t) d == prefer)
      return d;
    if (best < 0 || (domain_free && !best_free)) {
      best = d;
      best_free = domain_free;
    }
  }
  return best;
}

struct publish {
  struct pool *p;
  const struct membership *from, *to;
};

/* Write the membership A->TO into the superblock of every device of
 * A->FROM and A->TO that can be reached (journal_reconfigure's PUBLISH).
 * Holds once a majority of each list took it.  Returns 0 or -1. */
static int
publish_members (void *arg)
{
  struct publish *a = arg;
  struct pool *p = a->p;
  const struct membership *lists[2] = { a->from, a->to };
  uint32_t dev[2 * FORMAT_META_MAX], ok[2] = { 0, 0 };
  struct dev_req rq[2 * FORMAT_META_MAX], wr[2 * FORMAT_META_MAX];
  size_t nd = 0, nw = 0, widx[2 * FORMAT_META_MAX];
  uint8_t *buf;
  char why[300] = "";

  /* Every device of either list once; a failed one is not waited for:
   * the epoch outranks what it holds. */
  for (int l = 0; l < 2; l++)
    for (uint32_t k = 0; k < lists[l]->n; k++) {
      uint32_t d = lists[l]->dev[k];
      bool seen = false;
      for (size_t q = 0; q < nd; q++)
        seen |= dev[q] == d;
      if (!seen && pool_device_usable (p, d))
        dev[nd++] = d;
    }
  if (!(buf = device_alloc_buf ((nd + 1) * STRATA_BLOCK)))
    return strata_error (ENOMEM, "out of memory");

  /* Read every superblock at once, then write every new one at once. */
  for (size_t q = 0; q < nd; q++)
    rq[q] = (struct dev_req) { .dev = p->devs[dev[q]], .op = DEV_READ,
                               .buf = buf + q * STRATA_BLOCK,
                               .len = STRATA_BLOCK, .off = FORMAT_SB_OFFSET };
  device_submit (rq, nd);
  for (size_t q = 0; q < nd; q++) {
    uint8_t *b = buf + q * STRATA_BLOCK;
    struct format_sb sb;
    if (rq[q].res != 0 || format_sb_decode (b, &sb) == -1
        || memcmp (sb.pool_uuid, p->uuid, 16) != 0 || sb.dev_index != dev[q]
        || memcmp (sb.dev_uuid, p->meta->devices[dev[q]].uuid, 16) != 0) {
      snprintf (why, sizeof why, "device %s: its superblock could not be "
                "read or is not the member's", p->meta->devices[dev[q]].name);
      continue;
    }
    sb_membership (&sb, a->to, dev[q]);
    memset (b, 0, STRATA_BLOCK);
    format_sb_encode (&sb, b);
    widx[nw] = q;
    wr[nw++] = (struct dev_req) { .dev = p->devs[dev[q]], .op = DEV_WRITE,
                                  .fua = true, .buf = b, .len = STRATA_BLOCK,
                                  .off = FORMAT_SB_OFFSET };
  }
  device_submit (wr, nw);
  for (size_t w = 0; w < nw; w++) {
    uint32_t d = dev[widx[w]];
    if (wr[w].res != 0) {
      snprintf (why, sizeof why, "device %s: writing its superblock: %s",
                p->meta->devices[d].name, strerror (-wr[w].res));
      continue;
    }
    for (int l = 0; l < 2; l++)
      for (uint32_t k = 0; k < lists[l]->n; k++)
        ok[l] += lists[l]->dev[k] == d;
  }
  free (buf);
  if (ok[0] <= a->from->n / 2 || ok[1] <= a->to->n / 2)
    return strata_error (EIO, "the new list of metadata replicas reached "
                         "%u of %u old and %u of %u new members, less than a "
                         "majority of each (%s)", ok[0], a->from->n, ok[1],
                         a->to->n, why);
  return 0;
}

/* One step of pool_meta_move(): device ADD joins (or -1), device DROP
 * leaves (or -1).  Called with add_lock held. */
static int
meta_step (struct pool *p, int64_t add, int64_t drop)
{
  struct membership to = p->mem;
  struct publish a = { p, &p->mem, &to };
  struct journal_member jm;
  int pos = -1, r;

  to.epoch++;
  if (add >= 0) {
    if (to.n >= FORMAT_META_MAX)
      return strata_error (ENOSPC, "the pool has %u metadata replicas, the "
                           "most it can list", to.n);
    /* Its metadata area is as its superblock says (the YAML's
     * metadata_size may have changed since it was formatted). */
    uint8_t *buf = device_alloc_buf (STRATA_BLOCK);
    struct format_sb sb;
    if (!buf)
      return strata_error (ENOMEM, "out of memory");
    r = device_pread (p->devs[add], buf, STRATA_BLOCK, FORMAT_SB_OFFSET);
    if (r == 0)
      r = format_sb_decode (buf, &sb);
    free (buf);
    if (r == -1)
      return -1;
    to.dev[to.n++] = add;
    jm = (struct journal_member) {
      .dev = p->devs[add], .name = p->meta->devices[add].name,
      .meta_off = sb.meta_offset, .meta_size = sb.meta_size,
    };
  }
  else {
    for (uint32_t k = 0; k < to.n; k++)
      if (to.dev[k] == drop)
        pos = k;
    if (pos < 0)
      return strata_error (EINVAL, "device %s holds no metadata replica",
                           p->meta->devices[drop].name);
    memmove (&to.dev[pos], &to.dev[pos + 1],
             (to.n - pos - 1) * sizeof to.dev[0]);
    to.n--;
  }
  r = journal_reconfigure (p->journal, add >= 0 ? &jm : NULL, pos,
                           publish_members, &a);
  pthread_mutex_lock (&p->members_lock);
  if (r == 0)
    p->mem = to;
  else
    p->mem.epoch = to.epoch;	/* a retry must outrank what was written */
  pthread_mutex_unlock (&p->members_lock);
  return r;
}

int
pool_meta_move (struct pool *p, int64_t from, int64_t to)
{
  int r = -1;

  if (!p->writable)
    return strata_error (EROFS, "pool %s is open read-only", p->cfg->name);
  pthread_mutex_lock (&p->add_lock);
  if (from >= 0 && !pool_meta_member (p, from)) {
    strata_error (EINVAL, "device %s holds no metadata replica",
                  p->meta->devices[from].name);
    goto out;
  }
  if (to >= 0 && (pool_meta_member (p, to) || !pool_device_usable (p, to))) {
    strata_error (EINVAL, "device %s cannot take a metadata replica: %s",
                  p->meta->devices[to].name,
                  pool_meta_member (p, to) ? "it holds one already"
                  : "it is not usable");
    goto out;
  }
  if (to >= 0 && meta_step (p, to, -1) == -1) {
    strata_error_prefix ("pool %s: giving device %s a metadata replica",
                         p->cfg->name, p->meta->devices[to].name);
    goto out;
  }
  if (from >= 0 && meta_step (p, -1, from) == -1) {
    strata_error_prefix ("pool %s: taking the metadata replica off device %s",
                         p->cfg->name, p->meta->devices[from].name);
    goto out;
  }
  r = 0;
 out:
  pthread_mutex_unlock (&p->add_lock);
  return r;
}

/* The first error of an up device makes it degraded: still in use, but
 * flagged in the metadata until an operator looks.  A failed commit here
 * changes nothing: the device is used as before. */
static void
device_degrade (struct pool *p, uint32_t i, const char *why)
{
  pthread_mutex_lock (&p->fail_lock);
  if (!atomic_load (&p->failed[i])
      && p->meta->devices[i].state == META_DEV_UP
      && commit_dev_state (p, i, META_DEV_DEGRADED) == 0) {
    set_problem (p, i, "degraded: %s", why);
    fprintf (stderr, "strata: pool %s: device %s degraded: %s\n",
             p->cfg->name, p->meta->devices[i].name, why);
  }
  pthread_mutex_unlock (&p->fail_lock);
}

void
pool_device_read_error (struct pool *p, uint32_t i, const char *why)
{
  uint32_t n;

  if (i >= p->ndevs)
    return;
  n = atomic_fetch_add (&p->read_errors[i], 1) + 1;
  /* Each one is logged (there are at most POOL_READ_ERROR_LIMIT): the
   * state change below is only logged once. */
  if (n <= POOL_READ_ERROR_LIMIT)
    fprintf (stderr, "strata: pool %s: device %s: read error %" PRIu32
             " of %d before it is failed: %s\n", p->cfg->name,
             p->meta->devices[i].name, n, POOL_READ_ERROR_LIMIT, why);
  if (n >= POOL_READ_ERROR_LIMIT)
    pool_device_fail (p, i, why);
  else if (n == 1)
    device_degrade (p, i, why);
}

uint32_t
pool_device_read_errors (struct pool *p, uint32_t i)
{
  return i < p->ndevs ? atomic_load (&p->read_errors[i]) : 0;
}

void
pool_device_no_space (struct pool *p, uint32_t i, const char *why)
{
  uint64_t n;

  if (i >= p->ndevs)
    return;
  n = atomic_fetch_add (&p->no_space[i], 1) + 1;
  /* A full filesystem refuses every write that needs new blocks: the
   * first and then every power of two are logged. */
  if ((n & (n - 1)) == 0)
    fprintf (stderr, "strata: pool %s: device %s is out of space (%" PRIu64
             " request%s refused so far): %s\n", p->cfg->name,
             p->meta->devices[i].name, n, n == 1 ? "" : "s", why);
  pthread_mutex_lock (&p->problem_lock);
  p->no_space_at[i] = util_now_ms ();
  snprintf (p->no_space_why[i], sizeof p->no_space_why[i], "%s", why);
  pthread_mutex_unlock (&p->problem_lock);
}

uint64_t
pool_device_no_spaces (struct pool *p, uint32_t i)
{
  return i < p->ndevs ? atomic_load (&p->no_space[i]) : 0;
}

void
pool_device_problem (struct pool *p, uint32_t i, char *buf, size_t len)
{
  uint64_t n = pool_device_no_spaces (p, i);

  pthread_mutex_lock (&p->problem_lock);
  if (i < p->ndevs && p->problem[i][0] == '\0' && n > 0) {
    /* Lack of space is a history, not a state: how long ago says
     * whether it still matters. */
    uint64_t s = (util_now_ms () - p->no_space_at[i]) / 1000;
    snprintf (buf, len, "out of space: %" PRIu64 " request%s refused, the "
              "last %" PRIu64 " %s ago: %s", n, n == 1 ? "" : "s",
              s < 120 ? s : s < 7200 ? s / 60 : s / 3600,
              s < 120 ? "s" : s < 7200 ? "min" : "h", p->no_space_why[i]);
  }
  else
    snprintf (buf, len, "%s", i < p->ndevs ? p->problem[i] : "no such device");
  pthread_mutex_unlock (&p->problem_lock);
}

void
pool_device_csum_error (struct pool *p, uint32_t i)
{
  if (i < p->ndevs)
    atomic_fetch_add (&p->csum_errors[i], 1);
}

void
pool_device_repaired (struct pool *p, uint32_t i, uint32_t blocks)
{
  if (i < p->ndevs)
    atomic_fetch_add (&p->repairs[i], blocks);
}

uint64_t
pool_device_csum_errors (struct pool *p, uint32_t i)
{
  return i < p->ndevs ? atomic_load (&p->csum_errors[i]) : 0;
}

uint64_t
pool_device_repairs (struct pool *p, uint32_t i)
{
  return i < p->ndevs ? atomic_load (&p->repairs[i]) : 0;
}

void pool_walk_lock (struct pool *p) { pthread_mutex_lock (&p->walk_lock); }
void pool_walk_unlock (struct pool *p) { pthread_mutex_unlock (&p->walk_lock); }
struct resync *pool_resync (struct pool *p) { return p->resync; }

uint64_t
pool_extent_offset (struct pool *p, struct meta_extent e, uint64_t off)
{
  return p->meta->devices[e.dev].data_offset + (uint64_t) e.ext * p->extent_size
    + off;
}

/* Extents per reservation group: 64 MiB of them, at least one. */
static uint64_t
reserve_group (const struct pool *p)
{
  return MAX (1, (64ull << 20) / p->extent_size);
}

static int
reserve_extents (struct pool *p, struct device *d,
                 const struct meta_device *md, uint64_t first, uint64_t n)
{
  uint64_t slot = format_csum_slot (p->extent_size);

  if (device_reserve (d, md->data_offset + first * p->extent_size,
                      n * p->extent_size) == -1
      || device_reserve (d, md->csum_offset + first * slot, n * slot) == -1)
    return -1;
  return 0;
}

/* A local file's extent E: its group (reserve_group), once. */
static int
reserve_local (struct pool *p, struct device *d, struct meta_extent e)
{
  const struct meta_device *md = &p->meta->devices[e.dev];
  uint64_t g = e.ext / reserve_group (p), first, n;
  bool done;

  pthread_mutex_lock (&p->reserve_lock);
  done = p->reserved[e.dev] && (p->reserved[e.dev][g / 64] >> (g % 64)) & 1;
  pthread_mutex_unlock (&p->reserve_lock);
  if (done)
    return 0;

  first = g * reserve_group (p);
  n = MIN (reserve_group (p), md->extent_count - first);
  if (reserve_extents (p, d, md, first, n) == 0) {
    uint64_t words = div_round_up (md->extent_count, reserve_group (p) * 64);
    pthread_mutex_lock (&p->reserve_lock);
    if (!p->reserved[e.dev])
      p->reserved[e.dev] = calloc (words, sizeof (uint64_t));
    if (p->reserved[e.dev])	/* else: reserved again next time */
      p->reserved[e.dev][g / 64] |= 1ull << (g % 64);
    pthread_mutex_unlock (&p->reserve_lock);
    return 0;
  }
  /* The filesystem may still hold this extent alone. */
  if (errno == ENOSPC && n > 1 && reserve_extents (p, d, md, e.ext, 1) == 0)
    return 0;
  if (errno == ENOSPC)
    return strata_error (ENOSPC, "no space on the filesystem that holds "
                         "device %s (%s) for the blocks of a new extent",
                         md->name, device_path (d));
  return strata_error_prefix ("device %s", md->name);
}

int
pool_reserve_extents (struct pool *p, const struct meta_extent *e, size_t n)
{
  uint64_t slot = format_csum_slot (p->extent_size);
  struct zrange *z = calloc (2 * n + 1, sizeof *z);
  size_t nz = 0;
  int r = 0;

  if (!z)
    return strata_error (ENOMEM, "out of memory");
  for (size_t k = 0; k < n && r == 0; k++) {
    struct device *d = e[k].dev < p->ndevs ? p->devs[e[k].dev] : NULL;
    const struct meta_device *md = &p->meta->devices[e[k].dev];
    if (!d)
      continue;
    if (!device_is_remote (d)) {
      r = reserve_local (p, d, e[k]);
      continue;
    }
    /* E alone, and its checksum slot: a free extent holds nothing.  The
     * requests of all remote extents go out together. */
    z[nz++] = (struct zrange) { d, md->name, pool_extent_offset (p, e[k], 0),
                                p->extent_size };
    z[nz++] = (struct zrange) { d, md->name,
                                md->csum_offset + e[k].ext * slot, slot };
  }
  if (r == 0 && nz > 0)
    r = reserve_remote (z, nz, "the blocks of a new extent", false);
  free (z);
  return r;
}

void
pool_unreserve_extent (struct pool *p, struct meta_extent e)
{
  uint64_t g = e.ext / reserve_group (p);

  pthread_mutex_lock (&p->reserve_lock);
  if (e.dev < META_MAX_DEVICES && p->reserved[e.dev])
    p->reserved[e.dev][g / 64] &= ~(1ull << (g % 64));
  pthread_mutex_unlock (&p->reserve_lock);
}

/* True if some column of some volume that may hold writes not yet
 * flushed has no readable copy left.  A clean column holds none: a write
 * makes it dirty before it goes out, and the cleaner flushes before it
 * commits a column clean. */
static int
lost_column (void *opaque, uint64_t idx, struct meta_chunk *c)
{
  struct pool *p = ((void **) opaque)[0];
  struct meta_volume *v = ((void **) opaque)[1];

  (void) idx;
  for (uint32_t col = 0; col < v->width; col++) {
    bool ok = false;
    if (atomic_load (&c->col[col].state) == META_COL_CLEAN)
      continue;
    for (uint32_t r = 0; r < v->replicas; r++)
      ok |= pool_copy_readable (p, c, v->replicas, col, r);
    if (!ok)
      return 1;
  }
  return 0;
}

static bool
any_column_lost (struct pool *p)
{
  struct meta *m = p->meta;
  bool lost = false;

  pthread_mutex_lock (&m->lock);
  for (size_t i = 0; i < m->nvolumes && !lost; i++) {
    void *arg[2] = { p, m->volumes[i] };
    lost = meta_foreach_chunk (m->volumes[i], lost_column, arg) != 0;
  }
  pthread_mutex_unlock (&m->lock);
  return lost;
}

int
pool_flush (struct pool *p)
{
  struct dev_req reqs[64], *rq = reqs;
  size_t nr = 0;
  uint32_t n = p->ndevs;	/* devices added meanwhile hold no writes */
  int r = 0;
  bool failed = false;

  if (n > ARRAY_SIZE (reqs) && !(rq = calloc (n, sizeof *rq)))
    return strata_error (ENOMEM, "out of memory");
  /* Every device with a completed write no flush has covered yet.  A
   * write still in flight is not this flush's to cover, but the next
   * one's: the device counts it when it completes (device_unflushed).
   * Failed devices hold no data anyone relies on: they are skipped. */
  for (uint32_t i = 0; i < n; i++)
    if (pool_device_usable (p, i) && device_unflushed (p->devs[i]))
      rq[nr++] = (struct dev_req) { .dev = p->devs[i], .op = DEV_FLUSH };
  device_submit (rq, nr);
  for (size_t k = 0; k < nr; k++) {
    if (rq[k].res == 0)
      continue;
    for (uint32_t i = 0; i < n; i++) {
      char why[160];
      if (p->devs[i] != rq[k].dev)
        continue;
      /* The device's copies may have lost writes: it must not be used
       * again, and the flush can only succeed if every column still has
       * a copy elsewhere. */
      snprintf (why, sizeof why, "flush failed: %s", strerror (-rq[k].res));
      if (pool_device_fail (p, i, why) == -1)
        r = -1;
      failed = true;
    }
  }
  if (r == 0 && failed && any_column_lost (p))
    r = strata_error (EIO, "pool %s: a device failed to flush and some data "
                      "has no other copy", p->cfg->name);
  if (rq != reqs)
    free (rq);
  return r;
}

/* ---- chunks ---- */

int
pool_chunk_alloc (struct pool *p, struct meta_volume *v, uint64_t idx)
{
  uint32_t n = v->width * v->replicas;
  struct meta_extent ext[512];
  struct fbuf e;
  struct journal_item it;
  int r;

  if (!p->writable)
    return strata_error (EROFS, "pool %s is open read-only", p->cfg->name);
  if (alloc_chunk (p->alloc, v->width, v->replicas, v->class, ext) == -1)
    return strata_error_prefix ("volume %s", v->name);
  /* Local files get the extents' blocks before the metadata says the
   * chunk exists: a full filesystem refuses the chunk (ENOSPC), not a
   * later write into it. */
  if (pool_reserve_extents (p, ext, n) == -1) {
    alloc_release (p->alloc, ext, n);
    return strata_error_prefix ("volume %s: chunk %" PRIu64, v->name, idx);
  }
  fbuf_init_write (&e);
  meta_entry_chunk_alloc (&e, v->id, idx, n, ext);
  it = (struct journal_item) { META_E_CHUNK_ALLOC, e.len, e.p };
  r = e.bad ? strata_error (ENOMEM, "out of memory")
            : journal_append (p->journal, &it, 1);
  fbuf_free (&e);
  if (r == -1) {
    alloc_release (p->alloc, ext, n);
    return strata_error_prefix ("volume %s: allocating chunk %" PRIu64,
                                v->name, idx);
  }
  return 0;
}

/* The device of the first extent of C that is on a device not usable
 * (failed or missing), or UINT32_MAX if there is none. */
static uint32_t
unusable_dev (struct pool *p, const struct meta_chunk *c)
{
  for (uint32_t i = 0; c && i < c->n; i++)
    if (!pool_device_usable (p, c->ext[i].dev))
      return c->ext[i].dev;
  return UINT32_MAX;
}

/* Discard every extent of the chunks IDX[0..N) of V and flush their
 * devices, so that the extents read as zeros durably before they are
 * freed.  READY[k] says whether chunk IDX[k] got there: not if one of
 * its extents is on a device that is not usable (missing or failed:
 * left alone, as writes leave it), or if a discard or a flush it needed
 * failed.  WHY gets the first reason a chunk was not.
 *
 * The chunks are written meanwhile (resync_free_begin): dirty, so that
 * a crash before their free is committed has crash resync make their
 * checksums those of what the copies hold; and a chunk that got there
 * has checksum arrays saying zeros, so that one whose free is not
 * committed (the journal refused it) reads as the zeros it holds.
 * Returns 0, or -1 (ENOMEM, or the commit making them dirty failed:
 * nothing was touched). */
static int
discard_chunks (struct pool *p, struct meta_volume *v, const uint64_t *idx,
                size_t n, bool *ready, char *why, size_t whylen)
{
  uint32_t per = v->width * v->replicas;
  size_t nr = 0, nf = 0;
  struct dev_req *rq = calloc (n * per + p->ndevs, sizeof *rq);
  size_t *owner = calloc (n * per, sizeof *owner);
  struct meta_extent *xt = calloc (n * per, sizeof *xt);
  bool *touched = calloc (p->ndevs, sizeof *touched);
  bool *counted = calloc (n, sizeof *counted);
  uint64_t *was_clean = calloc (n, sizeof *was_clean);
  int r = -1;

  if (!rq || !owner || !xt || !touched || !counted || !was_clean) {
    strata_error (ENOMEM, "out of memory");
    goto out;
  }
  for (size_t k = 0; k < n; k++) {
    struct meta_chunk *c = meta_chunk_get (v, idx[k]);
    uint32_t d = unusable_dev (p, c);
    ready[k] = c != NULL && d == UINT32_MAX;
    if (c && d != UINT32_MAX && !*why)
      snprintf (why, whylen, "device %s is %s", p->meta->devices[d].name,
                p->devs[d] ? "failed" : "missing");
  }
  if (resync_free_begin (p->resync, v, idx, n, ready, was_clean) == -1)
    goto out;
  for (size_t k = 0; k < n; k++) {
    struct meta_chunk *c = meta_chunk_get (v, idx[k]);
    counted[k] = ready[k];
    for (uint32_t i = 0; c && i < c->n && ready[k]; i++) {
      owner[nr] = k;
      xt[nr] = c->ext[i];
      rq[nr++] = (struct dev_req) {
        .dev = p->devs[c->ext[i].dev], .op = DEV_ZERO, .len = p->extent_size,
        .off = pool_extent_offset (p, c->ext[i], 0), .tag = c->ext[i].dev,
      };
    }
  }
  device_submit (rq, nr);
  for (size_t q = 0; q < nr; q++) {
    /* Punched, or perhaps partly: their groups are reserved again when
     * next allocated from (they are released only after this). */
    pool_unreserve_extent (p, xt[q]);
    if (rq[q].res == 0)
      touched[rq[q].tag] = true;
    else if (ready[owner[q]]) {
      ready[owner[q]] = false;
      if (!*why)
        snprintf (why, whylen, "zeroing an extent on device %s failed: %s",
                  p->meta->devices[rq[q].tag].name, strerror (-rq[q].res));
    }
  }
  for (uint32_t i = 0; i < p->ndevs; i++)
    if (touched[i])
      rq[nr + nf++] = (struct dev_req) { .dev = p->devs[i], .op = DEV_FLUSH,
                                         .tag = i };
  device_submit (rq + nr, nf);
  for (size_t q = nr; q < nr + nf; q++) {
    if (rq[q].res == 0)
      continue;
    if (!*why)
      snprintf (why, whylen, "flushing device %s failed: %s",
                p->meta->devices[rq[q].tag].name, strerror (-rq[q].res));
    for (size_t z = 0; z < nr; z++)
      if (rq[z].tag == rq[q].tag)
        ready[owner[z]] = false;
  }
  resync_free_end (p->resync, v, idx, n, counted, ready, was_clean);
  r = 0;
 out:
  free (rq);
  free (owner);
  free (xt);
  free (touched);
  free (counted);
  free (was_clean);
  return r;
}

/* Whether the chunks IDX[0..N) of V can all be freed now: none has a
 * copy on a failed or missing device, whose extents cannot be zeroed.
 * Returns 0, or -1 (EIO, saying what to do). */
static int
chunks_freeable (struct pool *p, struct meta_volume *v, const uint64_t *idx,
                 size_t n)
{
  for (size_t k = 0; k < n; k++) {
    uint32_t d = unusable_dev (p, meta_chunk_get (v, idx[k]));
    if (d != UINT32_MAX)
      return strata_error (EIO, "volume %s: device %s is %s and holds "
                           "copies of its chunks, whose extents must be "
                           "zeroed before they are free; bring it back "
                           "(strata device add) or move its copies "
                           "elsewhere (strata rebuild), then try again",
                           v->name, p->meta->devices[d].name,
                           p->devs[d] ? "failed" : "missing");
  }
  return 0;
}

int
pool_chunks_free (struct pool *p, struct meta_volume *v, const uint64_t *idx,
                  size_t n, uint64_t *kept, size_t *nkept)
{
  uint32_t per = v->width * v->replicas;
  struct journal_item *items = calloc (n, sizeof *items);
  struct fbuf *e = calloc (n, sizeof *e);
  struct meta_extent *ext = calloc (n * per, sizeof *ext);
  bool *ready = calloc (n, sizeof *ready);
  char why[200] = "";
  size_t ni = 0, nk = 0;
  int r = -1;

  if (!items || !e || !ext || !ready) {
    strata_error (ENOMEM, "out of memory");
    goto out;
  }
  /* Without KEPT nothing is touched unless every chunk can go. */
  if (!kept && chunks_freeable (p, v, idx, n) == -1)
    goto out;
  if (discard_chunks (p, v, idx, n, ready, why, sizeof why) == -1)
    goto out;
  for (size_t k = 0; k < n; k++) {
    struct meta_chunk *c = meta_chunk_get (v, idx[k]);
    if (!c)
      continue;
    if (!ready[k]) {
      if (kept)
        kept[nk] = idx[k];
      nk++;
      continue;
    }
    memcpy (&ext[ni * per], c->ext, per * sizeof *ext);
    fbuf_init_write (&e[ni]);
    meta_entry_chunk_free (&e[ni], v->id, idx[k]);
    items[ni] = (struct journal_item) { META_E_CHUNK_FREE, e[ni].len, e[ni].p };
    ni++;
  }
  /* Commit in bounded records; a crash between them leaves some chunks
   * allocated but already zeroed, which reads the same: they are dirty,
   * and crash resync gives them the checksums of the zeros they hold. */
  for (size_t k = 0; k < ni; k += 4096) {
    int rr;
    pool_walk_lock (p);
    rr = journal_append (p->journal, items + k, MIN (4096, ni - k));
    pool_walk_unlock (p);
    if (rr == -1)
      goto out;
  }
  alloc_release (p->alloc, ext, ni * per);
  if (kept)
    *nkept = nk;
  else if (nk > 0) {
    strata_error (EIO, "volume %s: %zu of its chunks were not freed, as "
                  "their extents could not all be zeroed (%s)", v->name, nk,
                  why);
    goto out;
  }
  r = 0;
 out:
  if (e)
    for (size_t k = 0; k < ni; k++)
      fbuf_free (&e[k]);
  free (items);
  free (e);
  free (ext);
  free (ready);
  return r;
}

/* ---- administrative changes ---- */

static int
commit_one (struct pool *p, uint16_t type, struct fbuf *e)
{
  struct journal_item it = { type, e->len, e->p };
  int r;

  r = e->bad ? strata_error (ENOMEM, "out of memory")
             : journal_append (p->journal, &it, 1);
  fbuf_free (e);
  return r;
}

int
pool_commit_job (struct pool *p, uint8_t kind, const struct meta_job *j)
{
  struct fbuf e;

  if (!p->writable)
    return strata_error (EROFS, "pool %s is open read-only", p->cfg->name);
  fbuf_init_write (&e);
  meta_entry_job (&e, kind, j);
  return commit_one (p, META_E_JOB, &e);
}

int
pool_commit_ext_replace (struct pool *p, struct meta_volume *v, uint64_t idx,
                         uint32_t slot, struct meta_extent e)
{
  struct fbuf b;

  if (!p->writable)
    return strata_error (EROFS, "pool %s is open read-only", p->cfg->name);
  fbuf_init_write (&b);
  meta_entry_ext_replace (&b, v->id, idx, slot, e);
  return commit_one (p, META_E_EXT_REPLACE, &b);
}

int
pool_commit_stale (struct pool *p, bool stale,
                   const struct meta_stale_item *items, size_t n)
{
  struct fbuf e;

  if (!p->writable)
    return strata_error (EROFS, "pool %s is open read-only", p->cfg->name);
  if (n == 0)
    return 0;
  fbuf_init_write (&e);
  meta_entry_stale (&e, stale, items, n);
  if (e.bad) {
    fbuf_free (&e);
    return strata_error (ENOMEM, "out of memory");
  }
  {
    struct journal_item it = { META_E_STALE, e.len, e.p };
    if (journal_append (p->journal, &it, 1) == 0) {
      fbuf_free (&e);
      return 0;
    }
    /* Refused (the journal lost its majority): the request fails, but
     * copies that missed a write are still not read from now on; the
     * checkpoint that heals the journal records them (journal.h). */
    if (stale) {
      int err = errno;
      char msg[512];
      snprintf (msg, sizeof msg, "%s", strata_last_error ());
      journal_apply_unlogged (p->journal, &it, 1);
      strata_error (err, "%s", msg);
    }
  }
  fbuf_free (&e);
  return strata_error_prefix ("pool %s: marking copies %s", p->cfg->name,
                              stale ? "stale" : "current");
}

bool
pool_copy_readable (struct pool *p, struct meta_chunk *c, uint32_t R,
                    uint32_t col, uint32_t r)
{
  return pool_device_usable (p, c->ext[col * R + r].dev)
    && !meta_copy_stale (&c->col[col], r);
}

bool
pool_job_claim (struct pool *p, uint8_t kind)
{
  bool no = false;

  if (!atomic_compare_exchange_strong (&p->job_running[kind], &no, true))
    return false;
  atomic_store (&p->job_cancel[kind], false);
  return true;
}

void
pool_job_release (struct pool *p, uint8_t kind)
{
  atomic_store (&p->job_running[kind], false);
}

bool
pool_job_running (struct pool *p, uint8_t kind)
{
  return atomic_load (&p->job_running[kind]);
}

void
pool_job_cancel (struct pool *p, uint8_t kind)
{
  atomic_store (&p->job_cancel[kind], true);
}

bool
pool_job_cancelled (struct pool *p, uint8_t kind)
{
  return atomic_load (&p->job_cancel[kind]);
}

int
pool_volume_create (struct pool *p, const struct config_volume *cv)
{
  struct fbuf e;
  int r;

  if (!p->writable)
    return strata_error (EROFS, "pool %s is open read-only", p->cfg->name);
  if (config_check_name ("volume", cv->name) == -1)
    return -1;
  if (config_check_volume (p->cfg, cv) == -1)
    return strata_error_prefix ("volume %s", cv->name);
  pthread_mutex_lock (&p->admin_lock);
  pthread_mutex_lock (&p->meta->lock);
  if (meta_find_volume (p->meta, cv->name)) {
    pthread_mutex_unlock (&p->meta->lock);
    pthread_mutex_unlock (&p->admin_lock);
    return strata_error (EEXIST, "volume %s already exists", cv->name);
  }
  fbuf_init_write (&e);
  meta_entry_vol_create (&e, p->meta->next_vol_id, cv);
  pthread_mutex_unlock (&p->meta->lock);
  r = commit_one (p, META_E_VOL_CREATE, &e);
  pthread_mutex_unlock (&p->admin_lock);
  if (r == -1)
    return strata_error_prefix ("volume %s", cv->name);
  return 0;
}

static struct meta_volume *
find_locked (struct pool *p, const char *name)
{
  struct meta_volume *v;

  pthread_mutex_lock (&p->meta->lock);
  v = meta_find_volume (p->meta, name);
  pthread_mutex_unlock (&p->meta->lock);
  if (!v)
    strata_error (ENOENT, "no volume named %s in pool %s", name, p->cfg->name);
  return v;
}

/* How long claim() waits for handles that are going away: a client that
 * has just disconnected (nbdkit closes its handle a moment later), or a
 * write-back batch reading the volume. */
#define CLAIM_GRACE_MS 2000

/* Keep new data-path handles away from V while it is deleted or shrunk.
 * Fails with EBUSY if it still has open handles after CLAIM_GRACE_MS
 * (at once for a scrub or a rebuild, which do not end soon). */
static int
claim (struct pool *p, struct meta_volume *v, const char *what)
{
  static const char *const jobs[] = { "a scrub", "a rebuild",
                                      "the cache's write-back" };
  int users, clients, job;
  bool long_job;

  for (int waited = 0;; waited += 20) {
    job = -1;
    pthread_mutex_lock (&p->meta->lock);
    users = clients = v->users;
    for (int k = 0; k < 3; k++)
      if (v->job_users[k] > 0) {
        clients -= v->job_users[k];
        job = k;
      }
    long_job = v->job_users[META_JOB_SCRUB] > 0
      || v->job_users[META_JOB_REBUILD] > 0;
    if (users == 0)
      v->busy = true;
    pthread_mutex_unlock (&p->meta->lock);
    if (users == 0 || long_job || waited >= CLAIM_GRACE_MS)
      break;
    usleep (20 * 1000);
  }
  if (clients > 0)
    return strata_error (EBUSY, "volume %s is in use by %d connection(s); "
                         "disconnect them before %s it", v->name, clients,
                         what);
  if (users > 0)
    return strata_error (EBUSY, "volume %s is being read by %s; try %s it "
                         "again once that has finished or been stopped%s",
                         v->name, jobs[job], what,
                         job == 0 ? " (strata scrub --stop)"
                         : job == 1 ? " (strata rebuild --stop)" : "");
  return 0;
}

static void
unclaim (struct pool *p, struct meta_volume *v)
{
  pthread_mutex_lock (&p->meta->lock);
  v->busy = false;
  pthread_mutex_unlock (&p->meta->lock);
}

struct collect {
  uint64_t *idx;
  size_t n, cap;
  uint64_t from;
};

static int
collect_chunk (void *opaque, uint64_t idx, struct meta_chunk *c)
{
  struct collect *cl = opaque;

  (void) c;
  if (idx < cl->from)
    return 0;
  if (cl->n == cl->cap) {
    uint64_t *ni;
    cl->cap = cl->cap ? cl->cap * 2 : 64;
    ni = realloc (cl->idx, cl->cap * sizeof *ni);
    if (!ni)
      return strata_error (ENOMEM, "out of memory");
    cl->idx = ni;
  }
  cl->idx[cl->n++] = idx;
  return 0;
}

int
pool_volume_resize (struct pool *p, const char *name, uint64_t size,
                    bool allow_shrink)
{
  struct meta_volume *v;
  struct fbuf e;
  int r = -1;

  if (!p->writable)
    return strata_error (EROFS, "pool %s is open read-only", p->cfg->name);
  pthread_mutex_lock (&p->admin_lock);
  v = find_locked (p, name);
  if (!v)
    goto out;
  if (size == 0 || size > format_volume_max (p->meta->extent_size, v->width)) {
    char max[32];
    strata_error (EINVAL, "volume %s: size must be from 1 byte to %s (the "
                  "largest volume of its stripe_width and the pool's "
                  "extent_size)", name,
                  util_human_size (format_volume_max (p->meta->extent_size,
                                                      v->width),
                                   max, sizeof max));
    goto out;
  }
  if (size < v->size) {
    struct collect cl = { .from = div_round_up (size, v->chunk_size) };
    if (!allow_shrink) {
      strata_error (EPERM, "volume %s: shrinking from %" PRIu64 " to %" PRIu64
                    " bytes would destroy data; say so explicitly (--shrink)",
                    name, v->size, size);
      goto out;
    }
    if (claim (p, v, "shrinking") == -1)
      goto out;
    if (meta_foreach_chunk (v, collect_chunk, &cl) != 0
        || chunks_freeable (p, v, cl.idx, cl.n) == -1) {
      free (cl.idx);
      unclaim (p, v);
      goto out;
    }
    /* What the cache holds past the new end must not come back with a
     * later grow. */
    if (p->cache && !pool_cache_dead (p) && !pool_cache_detached (p)
        && cache_write (p->cache, v->id, div_round_up (size, STRATA_BLOCK),
                        div_round_up (v->size, STRATA_BLOCK)
                        - div_round_up (size, STRATA_BLOCK), NULL,
                        false) == -1) {
      free (cl.idx);
      unclaim (p, v);
      goto out;
    }
    if (pool_chunks_free (p, v, cl.idx, cl.n, NULL, NULL) == -1) {
      free (cl.idx);
      unclaim (p, v);
      goto out;
    }
    free (cl.idx);
    unclaim (p, v);
  }
  fbuf_init_write (&e);
  meta_entry_vol_resize (&e, v->id, size);
  r = commit_one (p, META_E_VOL_RESIZE, &e);
 out:
  pthread_mutex_unlock (&p->admin_lock);
  return r;
}

int
pool_volume_delete (struct pool *p, const char *name)
{
  struct meta_volume *v;
  struct collect cl = { 0 };
  struct fbuf e;
  int r = -1;

  if (!p->writable)
    return strata_error (EROFS, "pool %s is open read-only", p->cfg->name);
  pthread_mutex_lock (&p->admin_lock);
  v = find_locked (p, name);
  if (!v)
    goto out;
  if (claim (p, v, "deleting") == -1)
    goto out;
  /* Free the chunks first (so their extents are zeroed before they can
   * be reused), then drop the volume. */
  if (meta_foreach_chunk (v, collect_chunk, &cl) != 0
      || pool_chunks_free (p, v, cl.idx, cl.n, NULL, NULL) == -1) {
    unclaim (p, v);
    goto out;
  }
  fbuf_init_write (&e);
  meta_entry_vol_delete (&e, v->id);
  pool_walk_lock (p);
  r = commit_one (p, META_E_VOL_DELETE, &e);
  pool_walk_unlock (p);
  if (r == -1)
    unclaim (p, v);
 out:
  free (cl.idx);
  pthread_mutex_unlock (&p->admin_lock);
  return r;
}

/* ---- the cache ---- */

struct cache *pool_cache (struct pool *p) { return p->cache; }
void *pool_destager (struct pool *p) { return p->destager; }
void pool_set_destager (struct pool *p, void *d) { p->destager = d; }

bool
pool_cache_dead (struct pool *p)
{
  return atomic_load_explicit (&p->cache_lost, memory_order_acquire);
}

struct lost_ctx {
  struct meta_lost *it;
  size_t n, cap;
};

static int
collect_lost (void *opaque, uint32_t vol, uint64_t blk, uint64_t nblk)
{
  struct lost_ctx *x = opaque;

  if (x->n == x->cap) {
    size_t cap = x->cap ? x->cap * 2 : 64;
    struct meta_lost *n = realloc (x->it, cap * sizeof *n);
    if (!n)
      return strata_error (ENOMEM, "out of memory");
    x->it = n;
    x->cap = cap;
  }
  x->it[x->n++] = (struct meta_lost) { vol, blk, nblk };
  return 0;
}

static int
commit_lost (struct pool *p, bool lost, const struct meta_lost *it, size_t n)
{
  int r = 0;

  /* In entries of a bounded size. */
  for (size_t i = 0; i < n && r == 0; i += 1000) {
    struct fbuf e;
    struct journal_item ji;
    fbuf_init_write (&e);
    meta_entry_lost (&e, lost, it + i, MIN (1000, n - i));
    ji = (struct journal_item) { META_E_LOST, e.len, e.p };
    r = e.bad ? strata_error (ENOMEM, "out of memory")
              : journal_append (p->journal, &ji, 1);
    fbuf_free (&e);
  }
  return r;
}

int
pool_cache_lost (struct pool *p)
{
  struct lost_ctx x = { 0 };
  int r = 0;

  if (!p->cache)
    return 0;
  pthread_mutex_lock (&p->lost_lock);
  if (!atomic_load (&p->cache_lost)) {
    r = cache_dirty_ranges (p->cache, collect_lost, &x);
    if (r == 0 && x.n > 0 && p->writable)
      r = commit_lost (p, true, x.it, x.n);
    if (r == 0) {
      uint64_t blocks = 0;
      for (size_t i = 0; i < x.n; i++)
        blocks += x.it[i].nblk;
      fprintf (stderr, "strata: pool %s: the cache is lost with %" PRIu64
               " blocks not yet written back, in %zu ranges; reads of them "
               "fail (strata status lists them)\n", p->cfg->name, blocks,
               x.n);
      atomic_store (&p->cache_lost, true);
    }
    else
      strata_error_prefix ("pool %s: recording the ranges lost with the "
                           "cache", p->cfg->name);
  }
  pthread_mutex_unlock (&p->lost_lock);
  free (x.it);
  return r;
}

bool
pool_cache_detaching (struct pool *p)
{
  return atomic_load_explicit (&p->cache_detaching, memory_order_acquire);
}

bool
pool_cache_detached (struct pool *p)
{
  return atomic_load_explicit (&p->cache_detached, memory_order_acquire);
}

void
pool_cache_set_detaching (struct pool *p, bool on)
{
  atomic_store_explicit (&p->cache_detaching, on, memory_order_release);
}

int
pool_cache_detach (struct pool *p)
{
  static const uint8_t none[16];
  struct fbuf e;
  int r;

  if (!p->writable)
    return strata_error (EROFS, "pool %s is open read-only", p->cfg->name);
  if (!p->cache || pool_cache_detached (p))
    return strata_error (ENOENT, "pool %s has no cache", p->cfg->name);
  /* A lost cache holds nothing that can still be written back. */
  if (!cache_seal (p->cache, pool_cache_dead (p)))
    return strata_error (EAGAIN, "pool %s: the cache still holds blocks "
                         "not written back", p->cfg->name);
  fbuf_init_write (&e);
  meta_entry_cache (&e, none);
  pthread_mutex_lock (&p->admin_lock);
  r = commit_one (p, META_E_CACHE, &e);
  pthread_mutex_unlock (&p->admin_lock);
  if (r == -1)
    return -1;
  atomic_store_explicit (&p->cache_detached, true, memory_order_release);
  return 0;
}

int
pool_lost_clear (struct pool *p, uint32_t vol, uint64_t blk, uint64_t nblk)
{
  struct meta_lost it = { vol, blk, nblk };

  if (!meta_lost_any (p->meta, vol, blk, nblk))
    return 0;
  return commit_lost (p, false, &it, 1);
}
