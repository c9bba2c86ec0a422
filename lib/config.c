/* strata: YAML pool declaration parser (see config.h).
 *
 * Design notes: the document is loaded whole with libyaml's document API
 * so that every node carries its start mark; a small set of helpers then
 * walks it with one rule: every error message starts with
 * "FILE:LINE:COL: KEY: " where KEY is the dotted path of the offending
 * key (devices[2].size).  Validation that needs the whole document (name
 * uniqueness, replica counts against devices) runs after the walk.
 */
#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <yaml.h>

#include "config.h"
#include "error.h"
#include "util.h"

struct ctx {
  yaml_document_t doc;
  const char *file;
  const char *dir;
  struct config *cfg;
};

static int
perr (struct ctx *c, yaml_node_t *node, const char *key, const char *fmt, ...)
  __attribute__ ((format (printf, 4, 5)));

static int
perr (struct ctx *c, yaml_node_t *node, const char *key, const char *fmt, ...)
{
  char msg[512];
  va_list ap;

  va_start (ap, fmt);
  vsnprintf (msg, sizeof msg, fmt, ap);
  va_end (ap);
  if (node)
    return strata_error (EINVAL, "%s:%zu:%zu: %s: %s", c->file,
                         node->start_mark.line + 1,
                         node->start_mark.column + 1, key, msg);
  return strata_error (EINVAL, "%s: %s: %s", c->file, key, msg);
}

static const char *
scalar (yaml_node_t *n)
{
  return n && n->type == YAML_SCALAR_NODE ? (const char *) n->data.scalar.value
                                          : NULL;
}

static const char *
node_kind (yaml_node_t *n)
{
  switch (n->type) {
    case YAML_SCALAR_NODE: return "a scalar";
    case YAML_SEQUENCE_NODE: return "a list";
    case YAML_MAPPING_NODE: return "a mapping";
    default: return "nothing";
  }
}

int
config_parse_size (const char *s, uint64_t *out)
{
  static const struct { const char *suffix; uint64_t mult; } units[] = {
    { "", 1 }, { "B", 1 },
    { "K", 1ull << 10 }, { "KiB", 1ull << 10 }, { "k", 1ull << 10 },
    { "M", 1ull << 20 }, { "MiB", 1ull << 20 },
    { "G", 1ull << 30 }, { "GiB", 1ull << 30 },
    { "T", 1ull << 40 }, { "TiB", 1ull << 40 },
    { "P", 1ull << 50 }, { "PiB", 1ull << 50 },
    { "KB", 1000ull }, { "MB", 1000000ull }, { "GB", 1000000000ull },
    { "TB", 1000000000000ull }, { "PB", 1000000000000000ull },
  };
  char *end;
  unsigned long long whole;
  uint64_t frac_num = 0, frac_den = 1;
  const char *p = s;

  if (!isdigit ((unsigned char) *p))
    return strata_error (EINVAL, "not a size");
  errno = 0;
  whole = strtoull (p, &end, 10);
  if (errno == ERANGE)
    return strata_error (EINVAL, "size too large");
  p = end;
  if (*p == '.') {
    p++;
    if (!isdigit ((unsigned char) *p))
      return strata_error (EINVAL, "not a size");
    while (isdigit ((unsigned char) *p) && frac_den < 1000000000ull) {
      frac_num = frac_num * 10 + (*p - '0');
      frac_den *= 10;
      p++;
    }
    if (isdigit ((unsigned char) *p))
      return strata_error (EINVAL, "too many decimals in size");
  }
  while (*p == ' ')
    p++;
  for (size_t i = 0; i < ARRAY_SIZE (units); i++) {
    if (strcmp (p, units[i].suffix) == 0) {
      uint64_t m = units[i].mult, v;
      if (frac_num && m == 1)
        return strata_error (EINVAL, "a size in bytes must be whole");
      if (__builtin_mul_overflow ((uint64_t) whole, m, &v)
          || __builtin_add_overflow (v, frac_num * m / frac_den, &v))
        return strata_error (EINVAL, "size too large");
      if (frac_num && frac_num * m % frac_den)
        return strata_error (EINVAL, "size is not a whole number of bytes");
      *out = v;
      return 0;
    }
  }
  return strata_error (EINVAL, "unknown size unit \"%s\"", p);
}

int
config_check_name (const char *what, const char *name)
{
  size_t n = strlen (name);

  if (n == 0 || n >= FORMAT_NAME_MAX)
    return strata_error (EINVAL, "%s name must be 1 to %d characters",
                         what, FORMAT_NAME_MAX - 1);
  if (name[0] == '.' || name[0] == '-')
    return strata_error (EINVAL, "%s name \"%s\" must not start with '%c'",
                         what, name, name[0]);
  for (size_t i = 0; i < n; i++) {
    unsigned char ch = name[i];
    if (!isalnum (ch) && ch != '_' && ch != '-' && ch != '.')
      return strata_error (EINVAL,
                           "%s name \"%s\" may only hold letters, digits, "
                           "'_', '-' and '.'", what, name);
  }
  return 0;
}

/* Typed getters: each checks the node kind and converts the value. */
static int
get_string (struct ctx *c, yaml_node_t *n, const char *key, char *out,
            size_t cap)
{
  const char *s = scalar (n);

  if (!s)
    return perr (c, n, key, "expected a string, got %s", node_kind (n));
  if (strlen (s) >= cap)
    return perr (c, n, key, "value is longer than %zu characters", cap - 1);
  if (s[0] == '\0')
    return perr (c, n, key, "value must not be empty");
  strcpy (out, s);
  return 0;
}

static int
get_name (struct ctx *c, yaml_node_t *n, const char *key, const char *what,
          char *out)
{
  if (get_string (c, n, key, out, FORMAT_NAME_MAX) == -1)
    return -1;
  if (config_check_name (what, out) == -1)
    return perr (c, n, key, "%s", strata_last_error ());
  return 0;
}

static int
get_size (struct ctx *c, yaml_node_t *n, const char *key, uint64_t *out)
{
  const char *s = scalar (n);

  if (!s)
    return perr (c, n, key, "expected a size such as 4MiB, got %s",
                 node_kind (n));
  if (config_parse_size (s, out) == -1)
    return perr (c, n, key, "expected a size such as 4MiB or 100GiB, got "
                 "\"%s\" (%s)", s, strata_last_error ());
  return 0;
}

static int
get_uint (struct ctx *c, yaml_node_t *n, const char *key, uint32_t min,
          uint32_t max, uint32_t *out)
{
  const char *s = scalar (n);
  char *end;
  unsigned long v;

  if (!s)
    return perr (c, n, key, "expected a number, got %s", node_kind (n));
  errno = 0;
  v = strtoul (s, &end, 10);
  if (!isdigit ((unsigned char) s[0]) || *end || errno || v < min || v > max)
    return perr (c, n, key, "expected a whole number from %u to %u, got \"%s\"",
                 min, max, s);
  *out = v;
  return 0;
}

/* Drop the "." components, empty ones and those a ".." cancels from
 * absolute path P, in place ("/a/./b//../c" becomes "/a/c"). */
static void
normalize_path (char *p)
{
  char *out = p, *in = p;

  while (*in) {
    size_t n;
    while (*in == '/')
      in++;
    n = strcspn (in, "/");
    if (n == 0)
      break;
    if (n == 1 && in[0] == '.')
      ;
    else if (n == 2 && in[0] == '.' && in[1] == '.') {
      while (out > p && *--out != '/')
        ;
    }
    else {
      *out++ = '/';
      memmove (out, in, n);
      out += n;
    }
    in += n;
  }
  if (out == p)
    *out++ = '/';
  *out = '\0';
}

static char *
resolve_path (const char *dir, const char *p)
{
  char *r;

  if (p[0] == '/')
    r = strdup (p);
  else if (asprintf (&r, "%s/%s", dir, p) == -1)
    return NULL;
  if (r)
    normalize_path (r);
  return r;
}

/* Whether paths A and B name one file: the same inode if both exist
 * (through a symbolic link, say), else the same normalized path. */
static bool
same_file (const char *a, const char *b)
{
  struct stat sa, sb;

  if (stat (a, &sa) == 0 && stat (b, &sb) == 0)
    return sa.st_dev == sb.st_dev && sa.st_ino == sb.st_ino;
  return strcmp (a, b) == 0;
}

#define FOR_PAIRS(c, map, pair)                                         \
  for (yaml_node_pair_t *pair = (map)->data.mapping.pairs.start;        \
       pair < (map)->data.mapping.pairs.top; pair++)

#define NODE(c, id) yaml_document_get_node (&(c)->doc, (id))

/* True if PAIR's key came before in MAP (YAML leaves that to us). */
static bool
key_repeated (struct ctx *c, yaml_node_t *map, yaml_node_pair_t *pair)
{
  const char *key = scalar (NODE (c, pair->key));

  for (yaml_node_pair_t *q = map->data.mapping.pairs.start; key && q < pair;
       q++) {
    const char *k = scalar (NODE (c, q->key));
    if (k && strcmp (k, key) == 0)
      return true;
  }
  return false;
}

/* A time from 100ms to 60min: "30s", "500ms", "2min" (bare: seconds). */
static int
get_time (struct ctx *c, yaml_node_t *v, const char *full, unsigned *ms)
{
  const char *t = scalar (v);
  char *end = NULL;
  double x = t ? strtod (t, &end) : -1;
  double mult = 0;

  if (end && end != t) {
    while (*end == ' ')
      end++;
    mult = strcmp (end, "ms") == 0 ? 1
      : strcmp (end, "s") == 0 || *end == '\0' ? 1000
      : strcmp (end, "min") == 0 ? 60000 : 0;
  }
  if (mult == 0 || x * mult < 100 || x * mult > 3600000)
    return perr (c, v, full, "expected a time from 100ms to 60min, such as "
                 "30s or 500ms, got \"%s\"", t ? t : node_kind (v));
  *ms = x * mult;
  return 0;
}

static int
parse_pool (struct ctx *c, yaml_node_t *map, char **base_dir, char **sock)
{
  struct config *cfg = c->cfg;
  bool have_name = false;

  if (map->type != YAML_MAPPING_NODE)
    return perr (c, map, "pool", "expected a mapping, got %s", node_kind (map));
  FOR_PAIRS (c, map, pair) {
    yaml_node_t *k = NODE (c, pair->key), *v = NODE (c, pair->value);
    const char *key = scalar (k);
    char full[64];

    snprintf (full, sizeof full, "pool.%s", key ? key : "?");
    if (!key)
      return perr (c, k, "pool", "keys must be plain strings");
    if (key_repeated (c, map, pair))
      return perr (c, k, full, "given twice");
    if (strcmp (key, "name") == 0) {
      if (get_name (c, v, full, "pool", cfg->name) == -1)
        return -1;
      have_name = true;
    }
    else if (strcmp (key, "extent_size") == 0) {
      if (get_size (c, v, full, &cfg->extent_size) == -1)
        return -1;
      if (!is_power_of_2 (cfg->extent_size) || cfg->extent_size < 65536
          || cfg->extent_size > FORMAT_EXTENT_MAX)
        return perr (c, v, full, "must be a power of two from 64KiB to 1GiB");
    }
    else if (strcmp (key, "metadata_replicas") == 0) {
      if (get_uint (c, v, full, 1, 9, &cfg->metadata_replicas) == -1)
        return -1;
    }
    else if (strcmp (key, "metadata_size") == 0) {
      if (get_size (c, v, full, &cfg->metadata_size) == -1)
        return -1;
      if (cfg->metadata_size < FORMAT_MIN_META_SIZE
          || !is_aligned (cfg->metadata_size, 1 << 20))
        return perr (c, v, full, "must be a whole number of MiB, at least 4MiB");
      cfg->metadata_size_set = true;
    }
    else if (strcmp (key, "base_dir") == 0) {
      char buf[PATH_MAX];
      if (get_string (c, v, full, buf, sizeof buf) == -1)
        return -1;
      free (*base_dir);
      *base_dir = strdup (buf);
    }
    else if (strcmp (key, "io_timeout") == 0) {
      if (get_time (c, v, full, &cfg->io_timeout_ms) == -1)
        return -1;
    }
    else if (strcmp (key, "checksum_memory") == 0) {
      if (get_size (c, v, full, &cfg->checksum_memory) == -1)
        return -1;
    }
    else if (strcmp (key, "rejoin") == 0) {
      const char *s = scalar (v);
      if (s && (strcmp (s, "auto") == 0 || strcmp (s, "manual") == 0))
        cfg->rejoin_auto = strcmp (s, "auto") == 0;
      else
        return perr (c, v, full, "expected auto or manual, got \"%s\"",
                     s ? s : node_kind (v));
    }
    else if (strcmp (key, "control_socket") == 0) {
      char buf[108];
      if (get_string (c, v, full, buf, sizeof buf) == -1)
        return -1;
      free (*sock);
      *sock = strdup (buf);
    }
    else
      return perr (c, k, full, "unknown key (expected name, extent_size, "
                   "metadata_replicas, metadata_size, base_dir, io_timeout, "
                   "checksum_memory, rejoin or control_socket)");
  }
  if (!have_name)
    return perr (c, map, "pool.name", "missing (every pool needs a name)");
  return 0;
}

/* The host part of an NBD URI ("localhost" for a unix socket): a remote
 * member's default failure domain. */
void
config_uri_host (const char *uri, char *out, size_t len)
{
  const char *h = strstr (uri, "://"), *e;

  h = h ? h + 3 : uri;
  e = h + strcspn (h, "/?");	/* the authority: [user@]host[:port] */
  for (const char *at = h; at < e; at++)
    if (*at == '@')
      h = at + 1;
  if (*h == '[')
    e = strchr (h, ']') ? strchr (h, ']') + 1 : h + strlen (h);
  else
    e = h + strcspn (h, ":/?");
  if (e == h)
    snprintf (out, len, "localhost");
  else
    snprintf (out, len, "%.*s", (int) (e - h), h);
}

static int
parse_device (struct ctx *c, yaml_node_t *map, size_t i,
              struct config_device *d, char **rawpath)
{
  bool have_name = false;

  if (map->type != YAML_MAPPING_NODE)
    return perr (c, map, "devices", "each device must be a mapping, got %s",
                 node_kind (map));
  d->line = map->start_mark.line + 1;
  strcpy (d->class, "hdd");
  FOR_PAIRS (c, map, pair) {
    yaml_node_t *k = NODE (c, pair->key), *v = NODE (c, pair->value);
    const char *key = scalar (k);
    char full[80];

    snprintf (full, sizeof full, "devices[%zu].%s", i, key ? key : "?");
    if (!key)
      return perr (c, k, full, "keys must be plain strings");
    if (key_repeated (c, map, pair))
      return perr (c, k, full, "given twice");
    if (strcmp (key, "name") == 0) {
      if (get_name (c, v, full, "device", d->name) == -1)
        return -1;
      have_name = true;
    }
    else if (strcmp (key, "path") == 0) {
      char buf[PATH_MAX];
      if (get_string (c, v, full, buf, sizeof buf) == -1)
        return -1;
      free (*rawpath);
      *rawpath = strdup (buf);
    }
    else if (strcmp (key, "uri") == 0) {
      char buf[4096];
      if (get_string (c, v, full, buf, sizeof buf) == -1)
        return -1;
      if (strncmp (buf, "nbd://", 6) && strncmp (buf, "nbds://", 7)
          && strncmp (buf, "nbd+unix://", 11) && strncmp (buf, "nbds+unix://", 12))
        return perr (c, v, full, "expected an NBD URI (nbd://, nbds://, "
                     "nbd+unix:// or nbds+unix://), got \"%s\"", buf);
      free (d->uri);
      d->uri = strdup (buf);
    }
    else if (strcmp (key, "size") == 0) {
      if (get_size (c, v, full, &d->size) == -1)
        return -1;
    }
    else if (strcmp (key, "class") == 0) {
      if (get_string (c, v, full, d->class, sizeof d->class) == -1)
        return -1;
    }
    else if (strcmp (key, "domain") == 0) {
      if (get_string (c, v, full, d->domain, sizeof d->domain) == -1)
        return -1;
    }
    else if (strcmp (key, "io") == 0) {
      const char *s = scalar (v);
      if (s && strcmp (s, "auto") == 0)
        d->io = CONFIG_IO_AUTO;
      else if (s && strcmp (s, "direct") == 0)
        d->io = CONFIG_IO_DIRECT;
      else if (s && strcmp (s, "buffered") == 0)
        d->io = CONFIG_IO_BUFFERED;
      else
        return perr (c, v, full, "expected auto, direct or buffered, got "
                     "\"%s\"", s ? s : node_kind (v));
    }
    else
      return perr (c, k, full, "unknown key (expected name, path, uri, size, "
                   "class, domain or io)");
  }
  if (!have_name) {
    char full[40];
    snprintf (full, sizeof full, "devices[%zu].name", i);
    return perr (c, map, full, "missing (every device needs a name)");
  }
  if ((*rawpath == NULL) == (d->uri == NULL)) {
    char full[40];
    snprintf (full, sizeof full, "devices[%zu]", i);
    return perr (c, map, full, "device \"%s\" needs exactly one of path or uri",
                 d->name);
  }
  if (d->domain[0] == '\0') {
    if (d->uri)
      config_uri_host (d->uri, d->domain, sizeof d->domain);
    else
      snprintf (d->domain, sizeof d->domain, "%s", d->name);
  }
  return 0;
}

static int
get_cache_mode (struct ctx *c, yaml_node_t *v, const char *full,
                enum config_cache_mode *out)
{
  const char *s = scalar (v);

  if (s && strcmp (s, "none") == 0)
    *out = CONFIG_CACHE_NONE;
  else if (s && strcmp (s, "writeback") == 0)
    *out = CONFIG_CACHE_WRITEBACK;
  else if (s && strcmp (s, "writethrough") == 0)
    *out = CONFIG_CACHE_WRITETHROUGH;
  else
    return perr (c, v, full, "expected writeback, writethrough or none, "
                 "got \"%s\"", s ? s : node_kind (v));
  return 0;
}

static int
parse_volume (struct ctx *c, yaml_node_t *map, size_t i,
              struct config_volume *v)
{
  bool have_name = false, have_size = false;

  if (map->type != YAML_MAPPING_NODE)
    return perr (c, map, "volumes", "each volume must be a mapping, got %s",
                 node_kind (map));
  config_volume_defaults (c->cfg, v);
  v->line = map->start_mark.line + 1;
  FOR_PAIRS (c, map, pair) {
    yaml_node_t *k = NODE (c, pair->key), *n = NODE (c, pair->value);
    const char *key = scalar (k);
    char full[80];

    snprintf (full, sizeof full, "volumes[%zu].%s", i, key ? key : "?");
    if (!key)
      return perr (c, k, full, "keys must be plain strings");
    if (key_repeated (c, map, pair))
      return perr (c, k, full, "given twice");
    if (strcmp (key, "name") == 0) {
      if (get_name (c, n, full, "volume", v->name) == -1)
        return -1;
      have_name = true;
    }
    else if (strcmp (key, "size") == 0) {
      if (get_size (c, n, full, &v->size) == -1)
        return -1;
      if (v->size == 0)
        return perr (c, n, full, "a volume must be larger than 0 bytes");
      have_size = true;
    }
    else if (strcmp (key, "replicas") == 0) {
      if (get_uint (c, n, full, 1, 8, &v->replicas) == -1)
        return -1;
    }
    else if (strcmp (key, "stripe_width") == 0) {
      if (get_uint (c, n, full, 1, 64, &v->stripe_width) == -1)
        return -1;
    }
    else if (strcmp (key, "stripe_unit") == 0) {
      if (get_size (c, n, full, &v->stripe_unit) == -1)
        return -1;
    }
    else if (strcmp (key, "class") == 0) {
      if (get_string (c, n, full, v->class, sizeof v->class) == -1)
        return -1;
    }
    else if (strcmp (key, "cache") == 0) {
      enum config_cache_mode mode;
      if (get_cache_mode (c, n, full, &mode) == -1)
        return -1;
      if (mode != CONFIG_CACHE_NONE && c->cfg->ncache_devices == 0)
        return perr (c, n, full, "the pool has no cache (declare one in the "
                     "cache section)");
      v->cache_mode = mode;
    }
    else
      return perr (c, k, full, "unknown key (expected name, size, replicas, "
                   "stripe_width, stripe_unit, class or cache)");
  }
  if (!have_name || !have_size) {
    char full[40];
    snprintf (full, sizeof full, "volumes[%zu].%s", i,
              have_name ? "size" : "name");
    return perr (c, map, full, "missing (every volume needs a name and a size)");
  }
  if (config_check_volume (c->cfg, v) == -1)
    return perr (c, map, "volumes", "volume \"%s\": %s", v->name,
                 strata_last_error ());
  return 0;
}

static int
parse_cache (struct ctx *c, yaml_node_t *map)
{
  struct config *cfg = c->cfg;

  if (map->type != YAML_MAPPING_NODE)
    return perr (c, map, "cache", "expected a mapping, got %s", node_kind (map));
  FOR_PAIRS (c, map, pair) {
    yaml_node_t *k = NODE (c, pair->key), *v = NODE (c, pair->value);
    const char *key = scalar (k);
    char full[64];

    snprintf (full, sizeof full, "cache.%s", key ? key : "?");
    if (!key)
      return perr (c, k, "cache", "keys must be plain strings");
    if (key_repeated (c, map, pair))
      return perr (c, k, full, "given twice");
    if (strcmp (key, "mode") == 0) {
      if (get_cache_mode (c, v, full, &cfg->cache_mode) == -1)
        return -1;
    }
    else if (strcmp (key, "devices") == 0) {
      if (v->type != YAML_SEQUENCE_NODE)
        return perr (c, v, full, "expected a list of device names, got %s",
                     node_kind (v));
      cfg->ncache_devices = 0;
      for (yaml_node_item_t *it = v->data.sequence.items.start;
           it < v->data.sequence.items.top; it++) {
        yaml_node_t *d = NODE (c, *it);
        if (cfg->ncache_devices == 2)
          return perr (c, d, full, "at most two cache devices (a mirror)");
        if (get_name (c, d, full, "device",
                      cfg->cache_devices[cfg->ncache_devices]) == -1)
          return -1;
        if (!config_find_device (cfg, cfg->cache_devices[cfg->ncache_devices]))
          return perr (c, d, full, "no device named \"%s\" in devices",
                       cfg->cache_devices[cfg->ncache_devices]);
        cfg->ncache_devices++;
      }
    }
    else if (strcmp (key, "destage_age") == 0) {
      if (get_time (c, v, full, &cfg->destage_age_ms) == -1)
        return -1;
    }
    else
      return perr (c, k, full, "unknown key (expected mode, devices or "
                   "destage_age)");
  }
  if (cfg->cache_mode != CONFIG_CACHE_NONE && cfg->ncache_devices == 0)
    return perr (c, map, "cache.devices", "missing (mode %s needs one or two "
                 "cache devices)", cfg->cache_mode == CONFIG_CACHE_WRITEBACK
                 ? "writeback" : "writethrough");
  return 0;
}

const struct config_device *
config_find_device (const struct config *cfg, const char *name)
{
  for (size_t i = 0; i < cfg->ndevices; i++)
    if (strcmp (cfg->devices[i].name, name) == 0)
      return &cfg->devices[i];
  return NULL;
}

bool
config_is_cache_device (const struct config *cfg, const char *name)
{
  for (size_t i = 0; i < cfg->ncache_devices; i++)
    if (strcmp (cfg->cache_devices[i], name) == 0)
      return true;
  return false;
}

const struct config_volume *
config_find_volume (const struct config *cfg, const char *name)
{
  for (size_t i = 0; i < cfg->nvolumes; i++)
    if (strcmp (cfg->volumes[i].name, name) == 0)
      return &cfg->volumes[i];
  return NULL;
}

void
config_volume_defaults (const struct config *cfg, struct config_volume *v)
{
  memset (v, 0, sizeof *v);
  v->cache_mode = CONFIG_CACHE_DEFAULT;
  v->replicas = 1;
  v->stripe_width = 1;
  v->stripe_unit = MIN (1u << 20, cfg->extent_size);
}

int
config_check_volume (const struct config *cfg, const struct config_volume *v)
{
  size_t ndev = 0;

  if (v->stripe_unit < STRATA_BLOCK || !is_power_of_2 (v->stripe_unit)
      || v->stripe_unit > cfg->extent_size)
    return strata_error (EINVAL, "stripe_unit must be a power of two from "
                         "4KiB to the extent size (%llu bytes)",
                         (unsigned long long) cfg->extent_size);
  if (v->size == 0)
    return strata_error (EINVAL, "size must be larger than 0");
  if (v->stripe_width == 0 || v->stripe_width > 64)
    return strata_error (EINVAL, "stripe_width must be from 1 to 64");
  if (v->size > format_volume_max (cfg->extent_size, v->stripe_width)) {
    char max[32];
    return strata_error (EINVAL, "size is larger than %s, the largest volume "
                         "with extent_size %llu and stripe_width %u",
                         util_human_size (format_volume_max (cfg->extent_size,
                                                             v->stripe_width),
                                          max, sizeof max),
                         (unsigned long long) cfg->extent_size,
                         v->stripe_width);
  }
  for (size_t i = 0; i < cfg->ndevices; i++)
    if (!config_is_cache_device (cfg, cfg->devices[i].name)
        && (v->class[0] == '\0'
            || strcmp (cfg->devices[i].class, v->class) == 0))
      ndev++;
  if (v->class[0] && ndev == 0)
    return strata_error (EINVAL, "no device has class \"%s\"", v->class);
  if (v->replicas > ndev)
    return strata_error (EINVAL, "%u replicas need %u devices%s%s, but the "
                         "pool has %zu", v->replicas, v->replicas,
                         v->class[0] ? " of class " : "", v->class, ndev);
  return 0;
}

static int
parse_root (struct ctx *c)
{
  yaml_node_t *root = yaml_document_get_root_node (&c->doc);
  yaml_node_t *pool = NULL, *devs = NULL, *vols = NULL, *cache = NULL;
  struct config *cfg = c->cfg;
  char *base_dir = NULL, *sock = NULL;
  char **rawpaths = NULL;
  int r = -1;

  if (root == NULL)
    return perr (c, NULL, "pool", "the file is empty");
  if (root->type != YAML_MAPPING_NODE)
    return perr (c, root, "(top level)", "expected a mapping with pool, "
                 "devices, cache and volumes, got %s", node_kind (root));
  FOR_PAIRS (c, root, pair) {
    yaml_node_t *k = NODE (c, pair->key), *v = NODE (c, pair->value);
    const char *key = scalar (k);
    yaml_node_t **slot;

    if (key && strcmp (key, "pool") == 0) slot = &pool;
    else if (key && strcmp (key, "devices") == 0) slot = &devs;
    else if (key && strcmp (key, "volumes") == 0) slot = &vols;
    else if (key && strcmp (key, "cache") == 0) slot = &cache;
    else
      return perr (c, k, key ? key : "(top level)", "unknown key (expected "
                   "pool, devices, cache or volumes)");
    if (*slot)
      return perr (c, k, key, "given twice");
    *slot = v;
  }
  if (!pool)
    return perr (c, root, "pool", "missing (the pool section is required)");
  if (!devs)
    return perr (c, root, "devices", "missing (a pool needs devices)");

  cfg->extent_size = 4 << 20;
  cfg->metadata_size = FORMAT_DEFAULT_META_SIZE;
  cfg->io_timeout_ms = 30000;
  cfg->rejoin_auto = true;
  cfg->checksum_memory = CONFIG_CHECKSUM_MEMORY;
  cfg->destage_age_ms = CONFIG_DESTAGE_AGE_MS;
  if (parse_pool (c, pool, &base_dir, &sock) == -1)
    goto out;

  if (devs->type != YAML_SEQUENCE_NODE) {
    perr (c, devs, "devices", "expected a list, got %s", node_kind (devs));
    goto out;
  }
  cfg->ndevices = devs->data.sequence.items.top - devs->data.sequence.items.start;
  if (cfg->ndevices == 0) {
    perr (c, devs, "devices", "the list is empty (a pool needs devices)");
    goto out;
  }
  if (cfg->ndevices > 1024) {
    perr (c, devs, "devices", "at most 1024 devices");
    goto out;
  }
  cfg->devices = calloc (cfg->ndevices, sizeof *cfg->devices);
  rawpaths = calloc (cfg->ndevices, sizeof *rawpaths);
  if (!cfg->devices || !rawpaths) {
    strata_error (ENOMEM, "out of memory");
    goto out;
  }
  for (size_t i = 0; i < cfg->ndevices; i++) {
    yaml_node_t *d = NODE (c, devs->data.sequence.items.start[i]);
    if (parse_device (c, d, i, &cfg->devices[i], &rawpaths[i]) == -1)
      goto out;
    for (size_t j = 0; j < i; j++)
      if (strcmp (cfg->devices[j].name, cfg->devices[i].name) == 0) {
        perr (c, d, "devices", "duplicate device name \"%s\" (first at line %d)",
              cfg->devices[i].name, cfg->devices[j].line);
        goto out;
      }
  }

  /* Resolve paths now that base_dir is known. */
  if (base_dir == NULL)
    cfg->base_dir = strdup (c->dir);
  else
    cfg->base_dir = resolve_path (c->dir, base_dir);
  for (size_t i = 0; i < cfg->ndevices; i++) {
    if (!rawpaths[i])
      continue;
    cfg->devices[i].path = resolve_path (cfg->base_dir, rawpaths[i]);
    for (size_t j = 0; j < i; j++)
      if (cfg->devices[j].path
          && same_file (cfg->devices[j].path, cfg->devices[i].path)) {
        bool same = strcmp (cfg->devices[j].path, cfg->devices[i].path) == 0;
        perr (c, NODE (c, devs->data.sequence.items.start[i]), "devices",
              "devices \"%s\" and \"%s\" are the same file (%s%s%s)",
              cfg->devices[j].name, cfg->devices[i].name,
              cfg->devices[j].path, same ? "" : " and ",
              same ? "" : cfg->devices[i].path);
        goto out;
      }
  }
  for (size_t i = 0; i < cfg->ndevices; i++)
    for (size_t j = 0; j < i && cfg->devices[i].uri; j++)
      if (cfg->devices[j].uri
          && strcmp (cfg->devices[j].uri, cfg->devices[i].uri) == 0) {
        perr (c, NODE (c, devs->data.sequence.items.start[i]), "devices",
              "devices \"%s\" and \"%s\" have the same URI %s",
              cfg->devices[j].name, cfg->devices[i].name, cfg->devices[i].uri);
        goto out;
      }
  if (sock)
    cfg->control_socket = resolve_path (cfg->base_dir, sock);
  else if (base_dir)
    asprintf (&cfg->control_socket, "%s/%s.sock", cfg->base_dir, cfg->name);
  else
    asprintf (&cfg->control_socket, "/run/strata/%s.sock", cfg->name);

  if (cfg->metadata_replicas == 0)
    cfg->metadata_replicas = MIN (3, cfg->ndevices);
  if (cfg->metadata_replicas > cfg->ndevices) {
    perr (c, pool, "pool.metadata_replicas", "%u metadata replicas need %u "
          "devices, but the pool has %zu", cfg->metadata_replicas,
          cfg->metadata_replicas, cfg->ndevices);
    goto out;
  }

  if (cache && parse_cache (c, cache) == -1)
    goto out;

  if (vols) {
    if (vols->type != YAML_SEQUENCE_NODE) {
      perr (c, vols, "volumes", "expected a list, got %s", node_kind (vols));
      goto out;
    }
    cfg->nvolumes = vols->data.sequence.items.top - vols->data.sequence.items.start;
    cfg->volumes = calloc (cfg->nvolumes + 1, sizeof *cfg->volumes);
    if (!cfg->volumes) {
      strata_error (ENOMEM, "out of memory");
      goto out;
    }
    for (size_t i = 0; i < cfg->nvolumes; i++) {
      yaml_node_t *v = NODE (c, vols->data.sequence.items.start[i]);
      if (parse_volume (c, v, i, &cfg->volumes[i]) == -1)
        goto out;
      for (size_t j = 0; j < i; j++)
        if (strcmp (cfg->volumes[j].name, cfg->volumes[i].name) == 0) {
          perr (c, v, "volumes", "duplicate volume name \"%s\" (first at "
                "line %d)", cfg->volumes[i].name, cfg->volumes[j].line);
          goto out;
        }
    }
  }
  r = 0;
 out:
  if (rawpaths)
    for (size_t i = 0; i < cfg->ndevices; i++)
      free (rawpaths[i]);
  free (rawpaths);
  free (base_dir);
  free (sock);
  return r;
}

static int
parse (const char *text, size_t len, const char *file, const char *dir,
       struct config **out)
{
  yaml_parser_t parser;
  struct ctx c = { .file = file, .dir = dir };
  int r;

  c.cfg = calloc (1, sizeof *c.cfg);
  if (!c.cfg)
    return strata_error (ENOMEM, "out of memory");
  c.cfg->file = strdup (file);
  if (!yaml_parser_initialize (&parser)) {
    config_free (c.cfg);
    return strata_error (ENOMEM, "cannot initialise the YAML parser");
  }
  yaml_parser_set_input_string (&parser, (const unsigned char *) text, len);
  if (!yaml_parser_load (&parser, &c.doc)) {
    size_t at = parser.problem_mark.index;
    /* The usual cause, which libyaml does not name. */
    bool tab = at < len && text[at] == '\t';
    r = strata_error (EINVAL, "%s:%zu:%zu: YAML syntax error: %s%s%s%s", file,
                      parser.problem_mark.line + 1,
                      parser.problem_mark.column + 1,
                      parser.problem ? parser.problem : "unknown",
                      parser.context ? " " : "",
                      parser.context ? parser.context : "",
                      tab ? " (a tab: YAML indents with spaces only)" : "");
    yaml_parser_delete (&parser);
    config_free (c.cfg);
    return r;
  }
  r = parse_root (&c);
  yaml_document_delete (&c.doc);
  /* One pool, one document: a second one ("---") would be ignored. */
  if (r == 0 && yaml_parser_load (&parser, &c.doc)) {
    yaml_node_t *next = yaml_document_get_root_node (&c.doc);
    if (next)
      r = strata_error (EINVAL, "%s:%zu: a second YAML document; a pool "
                        "file holds one", file, next->start_mark.line + 1);
    yaml_document_delete (&c.doc);
  }
  yaml_parser_delete (&parser);
  if (r == -1) {
    config_free (c.cfg);
    return -1;
  }
  *out = c.cfg;
  return 0;
}

int
config_parse_string (const char *text, const char *name, const char *dir,
                     struct config **cfg)
{
  return parse (text, strlen (text), name, dir, cfg);
}

int
config_parse_file (const char *file, struct config **cfg)
{
  FILE *fp;
  char *text = NULL, *abs, *dir, *slash;
  size_t len = 0, cap = 0;
  int r;

  fp = fopen (file, "r");
  if (!fp)
    return strata_error (errno, "%s: cannot open: %m", file);
  for (;;) {
    if (len + 4096 > cap) {
      char *nt;
      cap = cap ? cap * 2 : 8192;
      if (cap > (16 << 20)) {
        free (text);
        fclose (fp);
        return strata_error (EFBIG, "%s: larger than 16 MiB", file);
      }
      nt = realloc (text, cap);
      if (!nt) {
        free (text);
        fclose (fp);
        return strata_error (ENOMEM, "out of memory");
      }
      text = nt;
    }
    size_t n = fread (text + len, 1, cap - len - 1, fp);
    len += n;
    if (n == 0)
      break;
  }
  if (ferror (fp)) {
    int e = errno ? errno : EIO;
    r = strata_error (e, "%s: cannot read: %s", file, strerror (e));
    free (text);
    fclose (fp);
    return r;
  }
  fclose (fp);
  text[len] = '\0';

  abs = realpath (file, NULL);
  if (!abs) {
    free (text);
    return strata_error (errno, "%s: %m", file);
  }
  dir = strdup (abs);
  if (!dir) {
    free (abs);
    free (text);
    return strata_error (ENOMEM, "out of memory");
  }
  slash = strrchr (dir, '/');
  if (slash == dir)
    slash[1] = '\0';
  else
    *slash = '\0';
  r = parse (text, len, file, dir, cfg);
  if (r == 0) {
    free ((*cfg)->file);
    (*cfg)->file = abs;
  }
  else
    free (abs);
  free (dir);
  free (text);
  return r;
}

void
config_free (struct config *cfg)
{
  if (!cfg)
    return;
  for (size_t i = 0; i < cfg->ndevices; i++) {
    free (cfg->devices[i].path);
    free (cfg->devices[i].uri);
  }
  free (cfg->devices);
  free (cfg->volumes);
  free (cfg->file);
  free (cfg->base_dir);
  free (cfg->control_socket);
  free (cfg);
}
