/* Unit tests: the YAML parser, valid documents and broken ones. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "error.h"
#include "suites.h"

#define DEVS \
  "devices:\n" \
  "  - { name: d0, path: d0.img, size: 1GiB, class: ssd, domain: r1/h1 }\n" \
  "  - { name: d1, path: /abs/d1.img, size: 1GiB }\n" \
  "  - { name: d2, path: d2.img, size: 2GiB, domain: r2/h2, io: direct }\n"

START_TEST (test_valid)
{
  struct config *c;
  const char *doc =
    "# a comment\n"
    "pool:\n"
    "  name: tank\n"
    "  extent_size: 8MiB\n"
    "  metadata_replicas: 3\n"
    "  base_dir: data\n"
    "  io_timeout: 2.5s\n"
    "  checksum_memory: 256MiB\n"
    "  rejoin: manual\n"
    DEVS
    "cache:\n"
    "  mode: none\n"
    "  destage_age: 2min\n"
    "volumes:\n"
    "  - { name: train, size: 100GiB, replicas: 2, stripe_width: 4, stripe_unit: 1MiB }\n"
    "  - name: ckpt\n"
    "    size: 1.5GiB\n"
    "    class: ssd\n";

  ck_assert_msg (config_parse_string (doc, "t.yaml", "/etc/x", &c) == 0,
                 "%s", strata_last_error ());
  ck_assert_str_eq (c->name, "tank");
  ck_assert_uint_eq (c->io_timeout_ms, 2500);
  ck_assert_uint_eq (c->checksum_memory, 256u << 20);
  ck_assert (!c->rejoin_auto);
  ck_assert_uint_eq (c->destage_age_ms, 120000);
  ck_assert_uint_eq (c->extent_size, 8 << 20);
  ck_assert_uint_eq (c->ndevices, 3);
  ck_assert_str_eq (c->devices[0].path, "/etc/x/data/d0.img");
  ck_assert_str_eq (c->devices[1].path, "/abs/d1.img");
  ck_assert_str_eq (c->devices[0].class, "ssd");
  ck_assert_str_eq (c->devices[1].class, "hdd");
  ck_assert_str_eq (c->devices[1].domain, "d1");
  ck_assert_str_eq (c->devices[0].domain, "r1/h1");
  ck_assert_int_eq (c->devices[0].io, CONFIG_IO_AUTO);
  ck_assert_int_eq (c->devices[2].io, CONFIG_IO_DIRECT);
  ck_assert_str_eq (c->control_socket, "/etc/x/data/tank.sock");
  ck_assert_uint_eq (c->nvolumes, 2);
  ck_assert_uint_eq (c->volumes[0].size, 100ull << 30);
  ck_assert_uint_eq (c->volumes[0].replicas, 2);
  ck_assert_uint_eq (c->volumes[0].stripe_width, 4);
  ck_assert_uint_eq (c->volumes[1].size, 3ull << 29);
  ck_assert_uint_eq (c->volumes[1].replicas, 1);
  ck_assert_uint_eq (c->volumes[1].stripe_unit, 1 << 20);
  config_free (c);
}
END_TEST

START_TEST (test_sizes)
{
  uint64_t v;
  ck_assert_int_eq (config_parse_size ("4096", &v), 0);
  ck_assert_uint_eq (v, 4096);
  ck_assert_int_eq (config_parse_size ("4MiB", &v), 0);
  ck_assert_uint_eq (v, 4 << 20);
  ck_assert_int_eq (config_parse_size ("2G", &v), 0);
  ck_assert_uint_eq (v, 2ull << 30);
  ck_assert_int_eq (config_parse_size ("1TB", &v), 0);
  ck_assert_uint_eq (v, 1000000000000ull);
  ck_assert_int_eq (config_parse_size ("0.5KiB", &v), 0);
  ck_assert_uint_eq (v, 512);
  ck_assert_int_eq (config_parse_size ("1.5B", &v), -1);
  ck_assert_int_eq (config_parse_size ("-1", &v), -1);
  ck_assert_int_eq (config_parse_size ("99999999999PiB", &v), -1);
  ck_assert_int_eq (config_parse_size ("4 XB", &v), -1);
}
END_TEST

/* Each broken document and a fragment its message must contain. */
static const struct { const char *doc, *want; } broken[] = {
  { "", "the file is empty" },
  { "- a\n- b\n", "t.yaml:1:1: (top level): expected a mapping" },
  { "pool: {name: p}\n" DEVS "extra: 1\n", "t.yaml:6:1: extra: unknown key" },
  { "pool: {name: p}\n", "devices: missing" },
  { DEVS, "pool: missing" },
  { "pool: {extent_size: 4MiB}\n" DEVS, "pool.name: missing" },
  { "pool: {name: p, extnt_size: 4MiB}\n" DEVS, "t.yaml:1:17: pool.extnt_size: unknown key" },
  { "pool: {name: p, extent_size: 3MiB}\n" DEVS, "pool.extent_size: must be a power of two" },
  { "pool: {name: p, extent_size: lots}\n" DEVS, "t.yaml:1:30: pool.extent_size: expected a size" },
  { "pool: {name: p, extent_size: 4KiB}\n" DEVS, "from 64KiB to 1GiB" },
  { "pool: {name: p, metadata_replicas: 0}\n" DEVS, "pool.metadata_replicas: expected a whole number from 1 to 9" },
  { "pool: {name: p, metadata_replicas: 5}\n" DEVS, "5 metadata replicas need 5 devices, but the pool has 3" },
  { "pool: {name: p, metadata_size: 1MiB}\n" DEVS, "pool.metadata_size: must be a whole number of MiB, at least 4MiB" },
  { "pool: {name: 'bad name'}\n" DEVS, "pool.name: pool name \"bad name\" may only hold" },
  { "pool: {name: p}\ndevices: []\n", "devices: the list is empty" },
  { "pool: {name: p}\ndevices: {a: 1}\n", "t.yaml:2:10: devices: expected a list, got a mapping" },
  { "pool: {name: p}\ndevices:\n  - { path: x.img }\n", "devices[0].name: missing" },
  { "pool: {name: p}\ndevices:\n  - { name: d0 }\n", "devices[0]: device \"d0\" needs exactly one of path or uri" },
  { "pool: {name: p}\ndevices:\n  - { name: d0, path: a, uri: 'nbd://h/e' }\n", "needs exactly one of path or uri" },
  { "pool: {name: p}\ndevices:\n  - { name: d0, uri: 'http://h/e' }\n", "devices[0].uri: expected an NBD URI" },
  { "pool: {name: p}\ndevices:\n  - { name: d0, path: a, size: big }\n", "t.yaml:3:32: devices[0].size: expected a size" },
  { "pool: {name: p}\ndevices:\n  - { name: d0, path: a, colour: red }\n", "devices[0].colour: unknown key" },
  { "pool: {name: p, io_timeout: soon}\n" DEVS, "t.yaml:1:29: pool.io_timeout: expected a time from 100ms to 60min" },
  { "pool: {name: p, io_timeout: 5ms}\n" DEVS, "pool.io_timeout: expected a time" },
  { "pool: {name: p, checksum_memory: lots}\n" DEVS, "t.yaml:1:34: pool.checksum_memory: expected a size such as 4MiB" },
  { "pool: {name: p, rejoin: sometimes}\n" DEVS, "t.yaml:1:25: pool.rejoin: expected auto or manual, got \"sometimes\"" },
  { "pool: {name: p}\ndevices:\n  - { name: d0, path: a, io: fast }\n", "t.yaml:3:30: devices[0].io: expected auto, direct or buffered, got \"fast\"" },
  { "pool: {name: p}\ndevices:\n  - { name: d0, path: a }\n  - { name: d0, path: b }\n", "duplicate device name \"d0\" (first at line 3)" },
  { "pool: {name: p}\ndevices:\n  - { name: d0, path: a }\n  - { name: d1, path: a }\n", "devices \"d0\" and \"d1\" are the same file (" },
  { "pool: {name: p}\ndevices:\n  - { name: d0, path: x/../a }\n  - { name: d1, path: ./a }\n", "devices \"d0\" and \"d1\" are the same file (" },
  { "pool: {name: p}\ndevices:\n  - { name: d0, uri: \"nbd://h/e\" }\n  - { name: d1, uri: \"nbd://h/e\" }\n", "devices \"d0\" and \"d1\" have the same URI nbd://h/e" },
  { "pool: {name: p}\ndevices:\n  - [ d0 ]\n", "each device must be a mapping, got a list" },
  { "pool: {name: p}\n" DEVS "volumes:\n  - { name: v }\n", "volumes[0].size: missing" },
  { "pool: {name: p}\n" DEVS "volumes:\n  - { name: v, size: 0 }\n", "a volume must be larger than 0 bytes" },
  { "pool: {name: p}\n" DEVS "volumes:\n  - { name: v, size: 1G, replicas: 4 }\n", "4 replicas need 4 devices, but the pool has 3" },
  { "pool: {name: p}\n" DEVS "volumes:\n  - { name: v, size: 1G, replicas: 2, class: ssd }\n", "2 replicas need 2 devices of class ssd, but the pool has 1" },
  { "pool: {name: p}\n" DEVS "volumes:\n  - { name: v, size: 1G, class: nvme }\n", "no device has class \"nvme\"" },
  { "pool: {name: p}\n" DEVS "volumes:\n  - { name: v, size: 1G, stripe_unit: 3KiB }\n", "stripe_unit must be a power of two" },
  { "pool: {name: p}\n" DEVS "volumes:\n  - { name: v, size: 1G, stripe_width: 65 }\n", "volumes[0].stripe_width: expected a whole number from 1 to 64" },
  { "pool: {name: p, extent_size: 64KiB}\n" DEVS "volumes:\n  - { name: v, size: 1024TiB }\n", "t.yaml:7:5: volumes: volume \"v\": size is larger than 256.0 TiB, the largest volume with extent_size 65536 and stripe_width 1" },
  { "pool: {name: p}\n" DEVS "volumes:\n  - { name: v, size: 1G }\n  - { name: v, size: 2G }\n", "duplicate volume name \"v\"" },
  { "pool: {name: p}\n" DEVS "volumes:\n  - { name: v, size: 1G, mirror: yes }\n", "volumes[0].mirror: unknown key" },
  { "pool: {name: p}\n" DEVS "cache: {mode: fast}\n", "cache.mode: expected writeback, writethrough or none, got \"fast\"" },
  { "pool: {name: p}\n" DEVS "cache: {mode: writeback}\n", "cache.devices: missing" },
  { "pool: {name: p}\n" DEVS "cache: {mode: writeback, devices: [ssd9]}\n", "no device named \"ssd9\" in devices" },
  { "pool: {name: p}\n" DEVS "cache: {devices: [d0, d1, d2]}\n", "at most two cache devices" },
  { "pool: {name: p}\n" DEVS "cache: {devices: [d0], destage_age: 2h}\n", "cache.destage_age: expected a time from 100ms to 60min, such as 30s or 500ms, got \"2h\"" },
  { "pool: {name: p}\n" DEVS "cache: {devices: [d0], age: 1s}\n", "cache.age: unknown key (expected mode, devices or destage_age)" },
  { "pool: {name: p}\npool: {name: q}\n" DEVS, "pool: given twice" },
  { "pool: {name: p, name: q}\n" DEVS, "t.yaml:1:17: pool.name: given twice" },
  { "pool: {name: p}\n" DEVS "---\npool: {name: q}\n" DEVS, "t.yaml:7: a second YAML document; a pool file holds one" },
  { "pool: {name: p}\ndevices:\n  - { name: d0, path: a.img, size: 1G, size: 2G }\n", "t.yaml:3:40: devices[0].size: given twice" },
  { "pool: {name: p}\n" DEVS "volumes:\n  - { name: v, size: 1G, replicas: 1, replicas: 2 }\n", "volumes[0].replicas: given twice" },
  { "pool: {name: p}\n" DEVS "cache: {devices: [d0], mode: none, mode: writeback}\n", "cache.mode: given twice" },
  { "pool:\n  name: [unclosed\n", "t.yaml:3:1: YAML syntax error" },
  { "pool: {name: p}\n\tdevices: []\n",
    "t.yaml:2:1: YAML syntax error: found character that cannot start any "
    "token while scanning for the next token (a tab: YAML indents with "
    "spaces only)" },
};

START_TEST (test_broken)
{
  struct config *c = NULL;
  const char *msg;

  strata_error_clear ();
  ck_assert_msg (config_parse_string (broken[_i].doc, "t.yaml", "/d", &c) == -1,
                 "accepted broken document %d", _i);
  msg = strata_last_error ();
  ck_assert_msg (strstr (msg, broken[_i].want) != NULL,
                 "document %d: expected \"%s\" in \"%s\"", _i,
                 broken[_i].want, msg);
  ck_assert_msg (strncmp (msg, "t.yaml", 6) == 0,
                 "document %d: message does not start with the file: %s",
                 _i, msg);
}
END_TEST

/* Remote members: the URI is kept as given and the default failure
 * domain is the URI's host. */
START_TEST (test_remote)
{
  struct config *c;
  const char *doc =
    "pool: {name: p}\n"
    "devices:\n"
    "  - { name: a, uri: 'nbd://host-a:10809/disk' }\n"
    "  - { name: b, uri: 'nbds://[fd00::1]/disk?tls-psk-file=/k' }\n"
    "  - { name: c, uri: 'nbd+unix:///disk?socket=/run/c.sock' }\n"
    "  - { name: e, uri: 'nbds://alice@host-e:10809/disk' }\n"
    "  - { name: f, uri: 'nbds+unix://alice@/?socket=/run/f.sock' }\n"
    "  - { name: d, uri: 'nbd://host-d/disk', domain: rack2/host-d }\n";

  ck_assert_msg (config_parse_string (doc, "t.yaml", "/d", &c) == 0,
                 "%s", strata_last_error ());
  ck_assert_ptr_null (c->devices[0].path);
  ck_assert_str_eq (c->devices[0].uri, "nbd://host-a:10809/disk");
  ck_assert_str_eq (c->devices[0].domain, "host-a");
  ck_assert_str_eq (c->devices[1].domain, "[fd00::1]");
  ck_assert_str_eq (c->devices[2].domain, "localhost");
  ck_assert_str_eq (c->devices[3].domain, "host-e");
  ck_assert_str_eq (c->devices[4].domain, "localhost");
  ck_assert_str_eq (c->devices[5].domain, "rack2/host-d");
  ck_assert_str_eq (config_device_where (&c->devices[2]),
                    "nbd+unix:///disk?socket=/run/c.sock");
  config_free (c);
}
END_TEST

/* The examples shipped in etc/strata parse, and say what their comments
 * say.  The unit tests run from the top of the tree. */
static char *
slurp (const char *file)
{
  FILE *f = fopen (file, "r");
  char *buf = calloc (1, 1 << 16);
  size_t n;

  ck_assert_msg (f != NULL, "%s: %m", file);
  ck_assert_ptr_nonnull (buf);
  n = fread (buf, 1, (1 << 16) - 1, f);
  ck_assert (n > 0 && n < (1 << 16) - 1);
  fclose (f);
  return buf;
}

/* Remove the "# " of the commented-out cache lines of example.yaml. */
static void
uncomment_cache (char *doc)
{
  static const char *const lines[] = {
    "  # - { name: nvme0", "# cache:", "#   mode:", "#   devices:",
    "#   destage_age:",
  };

  for (size_t i = 0; i < sizeof lines / sizeof lines[0]; i++) {
    char *p = strstr (doc, lines[i]);
    char *hash;
    ck_assert_msg (p != NULL, "example.yaml has no \"%s\"", lines[i]);
    hash = strchr (p, '#');
    /* "# cache:" loses "# "; "#   mode:" keeps its indent of two. */
    memmove (hash, hash + 2, strlen (hash + 2) + 1);
  }
}

/* A path that is not a readable file says why. */
START_TEST (test_not_a_file)
{
  struct config *c;

  ck_assert_int_eq (config_parse_file ("tests", &c), -1);
  ck_assert_str_eq (strata_last_error (), "tests: cannot read: Is a directory");
  ck_assert_int_eq (config_parse_file ("tests/no-such.yaml", &c), -1);
  ck_assert_str_eq (strata_last_error (),
                    "tests/no-such.yaml: cannot open: No such file or directory");
}
END_TEST

START_TEST (test_shipped_examples)
{
  struct config *c;
  char *doc;

  ck_assert_msg (config_parse_file ("etc/strata/demo.yaml", &c) == 0, "%s",
                 strata_last_error ());
  ck_assert_str_eq (c->name, "demo");
  ck_assert_int_eq (c->ndevices, 4);
  ck_assert_int_eq (c->nvolumes, 2);
  ck_assert_str_eq (c->devices[0].path, "/var/tmp/strata-demo/d0.img");
  config_free (c);

  ck_assert_msg (config_parse_file ("etc/strata/example.yaml", &c) == 0,
                 "%s", strata_last_error ());
  ck_assert_str_eq (c->name, "tank");
  ck_assert_int_eq (c->metadata_replicas, 3);
  ck_assert_int_eq (c->io_timeout_ms, 30000);
  ck_assert_uint_eq (c->checksum_memory, 1ull << 30);
  ck_assert (c->rejoin_auto);
  ck_assert_int_eq (c->ndevices, 8);
  ck_assert_str_eq (c->devices[5].domain, "rack2/storage-b");
  ck_assert_str_eq (c->devices[7].domain, "storage-d.example");
  ck_assert_int_eq (c->devices[4].io, CONFIG_IO_DIRECT);
  ck_assert_int_eq (c->nvolumes, 3);
  /* metadata_size is left to init (sized for the pool full). */
  ck_assert (!c->metadata_size_set);
  ck_assert_str_eq (c->volumes[0].name, "train");
  ck_assert_int_eq (c->volumes[0].replicas, 2);
  ck_assert_int_eq (c->volumes[0].stripe_width, 3);
  ck_assert_int_eq (c->ncache_devices, 0);
  config_free (c);

  /* With its cache section uncommented, as its comments suggest. */
  doc = slurp ("etc/strata/example.yaml");
  uncomment_cache (doc);
  ck_assert_msg (config_parse_string (doc, "example.yaml", "/etc/strata",
                                      &c) == 0, "%s", strata_last_error ());
  ck_assert_int_eq (c->cache_mode, CONFIG_CACHE_WRITEBACK);
  ck_assert_int_eq (c->ncache_devices, 1);
  ck_assert_str_eq (c->cache_devices[0], "nvme0");
  ck_assert_int_eq (c->destage_age_ms, 10000);
  config_free (c);
  free (doc);
}
END_TEST

Suite *
config_suite (void)
{
  Suite *s = suite_create ("config");
  TCase *tc = tcase_create ("parse");

  tcase_add_test (tc, test_valid);
  tcase_add_test (tc, test_sizes);
  tcase_add_test (tc, test_remote);
  tcase_add_test (tc, test_shipped_examples);
  tcase_add_test (tc, test_not_a_file);
  tcase_add_loop_test (tc, test_broken, 0, sizeof broken / sizeof broken[0]);
  suite_add_tcase (s, tc);
  return s;
}
