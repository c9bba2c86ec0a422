/* strata: the pool's YAML declaration (strata.yaml(5)).
 *
 * config_parse_file() reads and validates the whole document.  Every
 * error names the file, line, column and key and says what was expected;
 * unknown keys are errors.  Relative device paths resolve against
 * pool.base_dir, which itself resolves against the YAML file's directory.
 */
#ifndef STRATA_CONFIG_H
#define STRATA_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "format.h"

#define CONFIG_CLASS_MAX 32
#define CONFIG_DOMAIN_MAX 128

enum config_cache_mode { CONFIG_CACHE_NONE, CONFIG_CACHE_WRITEBACK,
                         CONFIG_CACHE_WRITETHROUGH,
                         CONFIG_CACHE_DEFAULT };	/* volume: the pool's */

/* How a local device is read and written (see strata.yaml(5)). */
enum config_io { CONFIG_IO_AUTO, CONFIG_IO_DIRECT, CONFIG_IO_BUFFERED };

struct config_device {
  char name[FORMAT_NAME_MAX];
  char *path;			/* absolute; NULL for a remote member */
  char *uri;			/* NBD URI; NULL for a local member */
  uint64_t size;		/* 0 = not given (use the existing size) */
  char class[CONFIG_CLASS_MAX];
  char domain[CONFIG_DOMAIN_MAX];
  enum config_io io;
  int line;
};

struct config_volume {
  char name[FORMAT_NAME_MAX];
  uint64_t size;
  uint32_t replicas;
  uint32_t stripe_width;
  uint64_t stripe_unit;
  char class[CONFIG_CLASS_MAX];	/* "" = any class */
  enum config_cache_mode cache_mode;	/* CONFIG_CACHE_DEFAULT: the pool's */
  int line;
};

struct config {
  char *file;			/* absolute path of the YAML file */
  char name[FORMAT_NAME_MAX];
  uint64_t extent_size;
  uint32_t metadata_replicas;
  uint64_t metadata_size;
  bool metadata_size_set;	/* given in the YAML, not the default */
  char *base_dir;		/* absolute */
  char *control_socket;		/* absolute */
  unsigned io_timeout_ms;	/* remote members' request timeout */
  uint64_t checksum_memory;	/* bytes of checksum arrays kept in memory */
  bool rejoin_auto;		/* devices that are away rejoin by themselves */
  struct config_device *devices;
  size_t ndevices;
  enum config_cache_mode cache_mode;
  char cache_devices[2][FORMAT_NAME_MAX];
  size_t ncache_devices;
  unsigned destage_age_ms;	/* dirty data older than this is destaged */
  struct config_volume *volumes;
  size_t nvolumes;
};

#define CONFIG_DESTAGE_AGE_MS 10000
#define CONFIG_CHECKSUM_MEMORY (1ull << 30)

/* Parse FILE.  On success returns 0 and a config the caller frees with
 * config_free().  On error returns -1 with errno EINVAL (or the open
 * error) and a "FILE:LINE:COL: KEY: message" in strata_last_error(). */
int config_parse_file (const char *file, struct config **cfg);

/* Parse TEXT as if it were the file NAME (for tests and the control
 * socket).  Relative paths resolve against DIR. */
int config_parse_string (const char *text, const char *name, const char *dir,
                         struct config **cfg);

void config_free (struct config *cfg);

/* Parse a size such as "4096", "4MiB", "1.5GiB", "100G", "2TB".
 * Binary units (K, KiB, M, MiB, ...) are powers of 1024; KB, MB, GB, TB
 * are powers of 1000.  Returns 0, or -1 with errno EINVAL. */
int config_parse_size (const char *s, uint64_t *out);

/* Check a pool, device or volume name: 1-63 of [A-Za-z0-9_.-], not
 * starting with '.' or '-'.  Returns 0, or -1 with EINVAL and a message
 * naming WHAT. */
int config_check_name (const char *what, const char *name);

/* The entry named NAME, or NULL. */
/* The host part of an NBD URI, or "localhost" for a unix socket. */
void config_uri_host (const char *uri, char *out, size_t len);

/* The path of a local device or the URI of a remote one, for messages. */
static inline const char *
config_device_where (const struct config_device *d)
{
  return d->path ? d->path : d->uri;
}

const struct config_device *config_find_device (const struct config *cfg,
                                                const char *name);
const struct config_volume *config_find_volume (const struct config *cfg,
                                                const char *name);
/* Is device NAME one of the cache's (cache.devices)? */
bool config_is_cache_device (const struct config *cfg, const char *name);

/* Fill V with the defaults for a volume of CFG (replicas 1, one column,
 * stripe unit min(1 MiB, extent size)). */
void config_volume_defaults (const struct config *cfg,
                             struct config_volume *v);

/* Validate V against CFG: sizes, replica count and class.  LINE > 0
 * prefixes the message with the YAML location.  Returns 0 or -1. */
int config_check_volume (const struct config *cfg,
                         const struct config_volume *v);

#endif /* STRATA_CONFIG_H */
