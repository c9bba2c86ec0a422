/* nbdkit-strata-plugin: serve the volumes of a strata pool over NBD.
 *
 * A thin adapter: each NBD callback becomes one libstrata call.  The
 * pool is opened in .get_ready (so configuration errors are reported
 * before nbdkit forks into the background), the control socket thread,
 * the cleaner (resync.h) and the destager (destage.h) start in
 * .after_fork, and every volume is an export of the same name.
 */
#include <errno.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NBDKIT_API_VERSION 2
#include <nbdkit-plugin.h>

#include "config.h"
#include "control.h"
#include "destage.h"
#include "device.h"
#include "error.h"
#include "meta.h"
#include "pool.h"
#include "resync.h"
#include "volume.h"

#define THREAD_MODEL NBDKIT_THREAD_MODEL_PARALLEL

static char *config_file;
static struct config *cfg;
static struct pool *pool;
static struct control_server *control;
static struct destager *destager;
static _Atomic int connections;

/* Report the library's last error through nbdkit and set the NBD error. */
static int
fail (const char *what)
{
  int e = errno;

  nbdkit_error ("%s: %s", what, strata_last_error ());
  nbdkit_set_error (e);
  return -1;
}

static void
strata_unload (void)
{
  free (config_file);
}

static int
strata_config (const char *key, const char *value)
{
  if (strcmp (key, "config") == 0) {
    free (config_file);
    config_file = nbdkit_absolute_path (value);
    return config_file ? 0 : -1;
  }
  nbdkit_error ("unknown parameter '%s' (the strata plugin takes "
                "config=FILE.yaml)", key);
  return -1;
}

static int
strata_config_complete (void)
{
  if (!config_file) {
    nbdkit_error ("you must give config=FILE.yaml, the pool's declaration");
    return -1;
  }
  if (config_parse_file (config_file, &cfg) == -1) {
    nbdkit_error ("%s", strata_last_error ());
    return -1;
  }
  return 0;
}

static int
strata_get_ready (void)
{
  pool = pool_open (cfg, POOL_WRITE);
  if (!pool) {
    nbdkit_error ("%s", strata_last_error ());
    return -1;
  }
  /* A member that could not be opened is served around (its copies are
   * not read), which the operator must hear of. */
  for (uint32_t i = 0; i < pool_ndevices (pool); i++)
    if (!pool_device (pool, i)
        && pool_meta (pool)->devices[i].state != META_DEV_REMOVED) {
      char why[200];
      pool_device_problem (pool, i, why, sizeof why);
      fprintf (stderr, "strata: pool %s: device %s is missing: %s\n",
               cfg->name, pool_meta (pool)->devices[i].name, why);
    }
  /* Nothing the pool started may cross the fork: this thread's io_uring,
   * and the remote members' I/O threads (they restart on first use). */
  device_thread_exit ();
  device_threads_stop ();
  return 0;
}

static void
live_ctx (struct admin_ctx *ctx)
{
  ctx->connections = atomic_load (&connections);
}

static int
strata_after_fork (void)
{
  device_threads_start ();
  if (resync_start (pool_resync (pool)) == -1) {
    nbdkit_error ("%s", strata_last_error ());
    return -1;
  }
  destager = destage_start (pool);
  if (!destager && errno) {
    nbdkit_error ("%s", strata_last_error ());
    return -1;
  }
  control = control_server_start (pool, cfg->control_socket, live_ctx);
  if (!control) {
    if (errno == EACCES || errno == EPERM || errno == EROFS)
      nbdkit_error ("%s (give the pool a control_socket, or a base_dir, "
                    "where this user may create it: see strata.yaml(5))",
                    strata_last_error ());
    else
      nbdkit_error ("%s", strata_last_error ());
    return -1;
  }
  {
    struct meta *m = pool_meta (pool);
    size_t nv;
    pthread_mutex_lock (&m->lock);
    nv = m->nvolumes;
    pthread_mutex_unlock (&m->lock);
    fprintf (stderr, "strata: pool %s is served: %zu volume%s; control "
             "socket %s\n", cfg->name, nv, nv == 1 ? "" : "s",
             cfg->control_socket);
  }
  return 0;
}

static void
strata_cleanup (void)
{
  control_server_stop (control);
  control = NULL;
  destage_stop (destager);
  destager = NULL;
  if (pool) {
    pool_flush (pool);
    pool_close (pool);
    pool = NULL;
  }
  config_free (cfg);
  cfg = NULL;
  device_thread_exit ();
}

static int
strata_list_exports (int readonly, int is_tls, struct nbdkit_exports *exports)
{
  struct meta *m = pool_meta (pool);
  int r = 0;

  (void) readonly;
  (void) is_tls;
  pthread_mutex_lock (&m->lock);
  for (size_t i = 0; i < m->nvolumes && r == 0; i++) {
    char desc[128];
    snprintf (desc, sizeof desc, "strata volume %s of pool %s",
              m->volumes[i]->name, m->name);
    r = nbdkit_add_export (exports, m->volumes[i]->name, desc);
  }
  pthread_mutex_unlock (&m->lock);
  return r;
}

static void *
strata_open (int readonly)
{
  const char *name = nbdkit_export_name ();
  struct volume *v;

  (void) readonly;
  if (!name || !*name) {
    nbdkit_error ("no export name given: pool %s serves one export per "
                  "volume (nbdinfo --list shows them)", cfg->name);
    nbdkit_set_error (ENOENT);
    return NULL;
  }
  v = volume_open (pool, name);
  if (!v) {
    nbdkit_error ("export \"%s\": %s", name, strata_last_error ());
    nbdkit_set_error (errno);
    return NULL;
  }
  atomic_fetch_add (&connections, 1);
  return v;
}

static void
strata_close (void *handle)
{
  volume_close (handle);
  atomic_fetch_sub (&connections, 1);
}

static const char *
strata_export_description (void *handle)
{
  return volume_name (handle);
}

static int64_t
strata_get_size (void *handle)
{
  return volume_size (handle);
}

static int
strata_block_size (void *handle, uint32_t *minimum, uint32_t *preferred,
                   uint32_t *maximum)
{
  uint64_t su = volume_stripe_unit (handle);

  *minimum = 1;
  *preferred = su > 2 * 1024 * 1024 ? 2 * 1024 * 1024 : su;
  *maximum = 0xffffffff;
  return 0;
}

static int strata_can_write (void *h) { (void) h; return 1; }
static int strata_can_flush (void *h) { (void) h; return 1; }
static int strata_can_trim (void *h) { (void) h; return 1; }
static int strata_can_zero (void *h) { (void) h; return 1; }
static int strata_can_fast_zero (void *h) { (void) h; return 1; }
static int strata_can_extents (void *h) { (void) h; return 1; }
static int strata_can_multi_conn (void *h) { (void) h; return 1; }
static int strata_can_fua (void *h) { (void) h; return NBDKIT_FUA_NATIVE; }

static int
strata_pread (void *handle, void *buf, uint32_t count, uint64_t offset,
              uint32_t flags)
{
  (void) flags;
  if (volume_pread (handle, buf, count, offset) == -1)
    return fail ("read");
  return 0;
}

static int
strata_pwrite (void *handle, const void *buf, uint32_t count, uint64_t offset,
               uint32_t flags)
{
  if (volume_pwrite (handle, buf, count, offset, flags & NBDKIT_FLAG_FUA) == -1)
    return fail ("write");
  return 0;
}

static int
strata_flush (void *handle, uint32_t flags)
{
  (void) flags;
  if (volume_flush (handle) == -1)
    return fail ("flush");
  return 0;
}

static int
strata_trim (void *handle, uint32_t count, uint64_t offset, uint32_t flags)
{
  if (volume_trim (handle, count, offset, flags & NBDKIT_FLAG_FUA) == -1)
    return fail ("trim");
  return 0;
}

static int
strata_zero (void *handle, uint32_t count, uint64_t offset, uint32_t flags)
{
  bool may_trim = flags & NBDKIT_FLAG_MAY_TRIM;

  /* Without MAY_TRIM zeros are written, which is not fast. */
  if ((flags & NBDKIT_FLAG_FAST_ZERO) && !may_trim) {
    nbdkit_set_error (ENOTSUP);
    return -1;
  }
  if (volume_zero (handle, count, offset, may_trim,
                   flags & NBDKIT_FLAG_FUA) == -1)
    return fail ("zero");
  return 0;
}

struct extents_ctx {
  struct nbdkit_extents *e;
};

static int
add_extent (void *opaque, uint64_t off, uint64_t len, bool hole)
{
  struct extents_ctx *x = opaque;

  return nbdkit_add_extent (x->e, off, len,
                            hole ? NBDKIT_EXTENT_HOLE | NBDKIT_EXTENT_ZERO : 0);
}

static int
strata_extents (void *handle, uint32_t count, uint64_t offset, uint32_t flags,
                struct nbdkit_extents *extents)
{
  struct extents_ctx x = { extents };

  (void) flags;
  if (volume_extents (handle, count, offset, add_extent, &x) != 0)
    return fail ("extents");
  return 0;
}

static struct nbdkit_plugin plugin = {
  .name = "strata",
  .longname = "strata block-storage virtualization",
  .version = "0.1",
  .description = "Serve the volumes of a strata pool",
  .unload = strata_unload,
  .config = strata_config,
  .config_complete = strata_config_complete,
  .config_help = "config=FILE.yaml   (required) the pool's YAML declaration",
  .magic_config_key = "config",
  .get_ready = strata_get_ready,
  .after_fork = strata_after_fork,
  .cleanup = strata_cleanup,
  .list_exports = strata_list_exports,
  .open = strata_open,
  .close = strata_close,
  .export_description = strata_export_description,
  .get_size = strata_get_size,
  .block_size = strata_block_size,
  .can_write = strata_can_write,
  .can_flush = strata_can_flush,
  .can_trim = strata_can_trim,
  .can_zero = strata_can_zero,
  .can_fast_zero = strata_can_fast_zero,
  .can_extents = strata_can_extents,
  .can_multi_conn = strata_can_multi_conn,
  .can_fua = strata_can_fua,
  .pread = strata_pread,
  .pwrite = strata_pwrite,
  .flush = strata_flush,
  .trim = strata_trim,
  .zero = strata_zero,
  .extents = strata_extents,
  .errno_is_preserved = 0,
};

NBDKIT_REGISTER_PLUGIN (plugin)
