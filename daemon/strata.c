/* strata: the command-line tool (strata(8)).
 *
 *   strata init CONFIG [--force]
 *   strata apply CONFIG [--dry-run] [--prune] [--allow-shrink]
 *   strata status CONFIG [--json [--map]]
 *   strata volume create|resize|delete CONFIG NAME [SIZE] [options]
 *   strata scrub CONFIG [VOLUME] [--repair] [--rate MIB/S] [--restart]
 *   strata rebuild CONFIG [--rate MIB/S]
 *   strata device add|fail|remove CONFIG NAME [options]
 *   strata device replace CONFIG OLD NEW [options]
 *   strata cache flush|detach CONFIG
 *   strata serve CONFIG [-U SOCKET | -p PORT] [-- NBDKIT-OPTIONS]
 *
 * While a pool is served, the admin verbs go to the serving process
 * over the pool's control socket; otherwise the tool opens the pool
 * itself, under the pool's exclusive lock.  Only main() prints and exits.
 */
#include <errno.h>
#include <libgen.h>
#include <signal.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "admin.h"
#include "config.h"
#include "control.h"
#include "error.h"
#include "pool.h"

static void
usage (FILE *f)
{
  fprintf (f,
           "usage: strata COMMAND CONFIG [ARGS]\n"
           "\n"
           "  init CONFIG [--force]          format the devices of a pool\n"
           "  apply CONFIG [--dry-run] [--prune] [--allow-shrink]\n"
           "                                 create and grow declared volumes\n"
           "  status CONFIG [--json [--map]]\n"
           "                                 show devices and volumes\n"
           "  volume create CONFIG NAME SIZE [--replicas N] [--stripe-width W]\n"
           "                                 [--stripe-unit U] [--class C]\n"
           "  volume resize CONFIG NAME SIZE [--shrink]\n"
           "  volume delete CONFIG NAME\n"
           "  scrub CONFIG [VOLUME] [--repair] [--rate MIB/S] [--restart] [--json]\n"
           "                                 check every copy against its checksums\n"
           "  scrub CONFIG --stop            stop the scrub running in the server\n"
           "  rebuild CONFIG [--rate MIB/S] [--json]\n"
           "                                 new copies for columns on failed devices\n"
           "  rebuild CONFIG --stop          stop the rebuild running in the server\n"
           "  device add CONFIG NAME [--force] [--rate MIB/S] [--json]\n"
           "                                 add a device newly declared in CONFIG, or\n"
           "                                 bring back a member that was away,\n"
           "                                 copying only what it missed\n"
           "  device fail CONFIG NAME        mark a device failed\n"
           "  device remove CONFIG NAME [--rate MIB/S] [--json]\n"
           "                                 move every copy off a device, then remove it\n"
           "  device replace CONFIG OLD NEW [--force] [--rate MIB/S] [--json]\n"
           "                                 move every copy of OLD to NEW (added first\n"
           "                                 if new), then remove OLD\n"
           "  cache flush CONFIG             write everything the cache holds back\n"
           "  cache detach CONFIG            write it all back, then stop using the cache\n"
           "  serve CONFIG [-U SOCKET | -p PORT] [-- NBDKIT-OPTIONS]\n"
           "                                 serve every volume over NBD\n"
           "  --help | --version             this summary, or the version\n"
           "\n"
           "See strata(8) and strata.yaml(5).\n");
}

static struct config *
load_config (const char *file)
{
  struct config *cfg;

  if (config_parse_file (file, &cfg) == -1) {
    fprintf (stderr, "strata: %s\n", strata_last_error ());
    exit (1);
  }
  return cfg;
}

static int
cmd_init (int argc, char **argv)
{
  struct config *cfg;
  bool force = false;
  const char *file = NULL;

  for (int i = 1; i < argc; i++) {
    if (strcmp (argv[i], "--force") == 0 || strcmp (argv[i], "-f") == 0)
      force = true;
    else if (argv[i][0] == '-' || file) {
      fprintf (stderr, "strata init: unexpected argument %s\n", argv[i]);
      return 2;
    }
    else
      file = argv[i];
  }
  if (!file) {
    fprintf (stderr, "usage: strata init CONFIG [--force]\n");
    return 2;
  }
  cfg = load_config (file);
  if (pool_init (cfg, force, stdout) == -1) {
    fprintf (stderr, "strata: %s\n", strata_last_error ());
    config_free (cfg);
    return 1;
  }
  printf ("pool %s initialised on %zu device%s", cfg->name,
          cfg->ndevices - cfg->ncache_devices,
          cfg->ndevices - cfg->ncache_devices == 1 ? "" : "s");
  if (cfg->ncache_devices)
    printf (cfg->ncache_devices == 2 ? " with a mirrored cache"
                                     : " with a cache");
  if (cfg->nvolumes)
    printf ("; run 'strata apply %s' to create its %zu declared volume%s",
            file, cfg->nvolumes, cfg->nvolumes == 1 ? "" : "s");
  printf ("\n");
  config_free (cfg);
  return 0;
}

/* The pool opened here, for the signal handler: ^C stops a long job at
 * its next step, with its place saved and the pool closed cleanly. */
static struct pool *volatile open_pool;

static void
on_signal (int sig)
{
  (void) sig;
  if (open_pool)
    for (int k = 0; k < META_JOB_KINDS; k++)
      pool_job_cancel (open_pool, k);
}

/* Online, Ctrl-C (or SIGTERM) on a long job asks the server to stop it
 * (control_call_stop_on), as it stops one run here; a second one ends
 * the CLI at once. */
static volatile sig_atomic_t stop_asked;

static void
on_stop_signal (int sig)
{
  if (stop_asked) {
    signal (sig, SIG_DFL);
    raise (sig);
    return;
  }
  stop_asked = 1;
}

/* Whether VERB is a long job that draws a progress bar. */
static bool
long_job (int argc, char **argv)
{
  return strcmp (argv[0], "scrub") == 0 || strcmp (argv[0], "rebuild") == 0
    || (argc > 1 && strcmp (argv[0], "device") == 0
        && (strcmp (argv[1], "remove") == 0 || strcmp (argv[1], "add") == 0
            || strcmp (argv[1], "replace") == 0))
    || strcmp (argv[0], "cache") == 0;
}

/* status, apply, volume ...: through the control socket if the pool is
 * served, else on the pool opened here.  ARGV is the admin command line
 * with CONFIG already removed. */
static int
run_admin (const char *file, int argc, char **argv)
{
  struct config *cfg = load_config (file);
  struct admin_ctx ctx = { .online = false };
  char *abs = NULL;
  char **av = calloc (argc + 4, sizeof *av);
  int code, ac = argc;
  unsigned flags;
  struct pool *p;

  if (!av) {
    fprintf (stderr, "strata: out of memory\n");
    config_free (cfg);
    return 1;
  }
  memcpy (av, argv, argc * sizeof *av);
  if (strcmp (argv[0], "apply") == 0) {
    /* The server reads the declarations from the caller's file. */
    abs = realpath (file, NULL);
    av[ac++] = (char *) "--config";
    av[ac++] = abs ? abs : (char *) file;
  }
  if (long_job (argc, argv) && isatty (STDERR_FILENO))
    av[ac++] = (char *) "--progress";
  if (long_job (argc, argv) && strcmp (argv[0], "cache") != 0) {
    /* scrub stops with scrub --stop; rebuild and the device verbs,
     * which run a rebuild, with rebuild --stop. */
    static char *stop_scrub[] = { (char *) "scrub", (char *) "--stop" };
    static char *stop_rebuild[] = { (char *) "rebuild", (char *) "--stop" };
    struct sigaction sa = { .sa_handler = on_stop_signal };	/* no SA_RESTART */
    control_call_stop_on (&stop_asked, 2, strcmp (argv[0], "scrub") == 0
                          ? stop_scrub : stop_rebuild);
    sigaction (SIGINT, &sa, NULL);
    sigaction (SIGTERM, &sa, NULL);
  }
  if (control_call (cfg->control_socket, ac, av, stdout, stderr, &code) == 0)
    goto done;
  control_call_stop_on (NULL, 0, NULL);
  if (errno != ENOENT && errno != ECONNREFUSED) {
    fprintf (stderr, "strata: %s\n", strata_last_error ());
    code = 1;
    goto done;
  }
  flags = admin_verb_writes (argv[0], argc, argv) ? POOL_WRITE : 0;
  p = pool_open (cfg, flags);
  /* A server that has just started holds the pool a moment before its
   * control socket listens (that starts after nbdkit forks): for a few
   * seconds, ask it again, or open the pool if it has gone, before
   * saying that the pool is in use.  Only while the pool lock is held:
   * a device lock held elsewhere has had its wait in pool_open(). */
  for (int k = 0; !p && errno == EBUSY && pool_lock_busy (cfg) && k < 50;
       k++) {
    usleep (100 * 1000);
    if (control_call (cfg->control_socket, ac, av, stdout, stderr,
                      &code) == 0)
      goto done;
    if (errno != ENOENT && errno != ECONNREFUSED) {
      fprintf (stderr, "strata: %s\n", strata_last_error ());
      code = 1;
      goto done;
    }
    p = pool_open (cfg, flags);
  }
  if (!p) {
    fprintf (stderr, "strata: %s\n", strata_last_error ());
    code = 1;
    goto done;
  }
  open_pool = p;
  if (long_job (argc, argv)) {
    struct sigaction sa = { .sa_handler = on_signal };
    sigaction (SIGINT, &sa, NULL);
    sigaction (SIGTERM, &sa, NULL);
  }
  code = admin_run (p, &ctx, ac, av, stdout, stderr);
  open_pool = NULL;
  pool_close (p);
 done:
  free (abs);
  free (av);
  config_free (cfg);
  return code;
}

/* The plugin beside this binary (build tree), or nbdkit's "strata". */
static const char *
plugin_path (void)
{
  static char path[PATH_MAX];
  char exe[PATH_MAX];
  ssize_t n = readlink ("/proc/self/exe", exe, sizeof exe - 1);

  if (n > 0) {
    exe[n] = '\0';
    snprintf (path, sizeof path, "%s/nbdkit-strata-plugin.so", dirname (exe));
    if (access (path, R_OK) == 0)
      return path;
  }
  return "strata";
}

static int
cmd_serve (int argc, char **argv)
{
  struct config *cfg;
  const char *file = NULL, *sock = NULL, *port = NULL;
  char *defsock = NULL, *abs, *cfgarg, *dir;
  char *nargv[64];
  int na = 0, i;

  for (i = 1; i < argc; i++) {
    if (strcmp (argv[i], "--") == 0) {
      i++;
      break;
    }
    if ((strcmp (argv[i], "-U") == 0 || strcmp (argv[i], "--unix") == 0)
        && i + 1 < argc)
      sock = argv[++i];
    else if ((strcmp (argv[i], "-p") == 0 || strcmp (argv[i], "--port") == 0)
             && i + 1 < argc)
      port = argv[++i];
    else if (argv[i][0] == '-' || file) {
      fprintf (stderr, "strata serve: unexpected argument %s\n", argv[i]);
      return 2;
    }
    else
      file = argv[i];
  }
  if (!file) {
    fprintf (stderr, "usage: strata serve CONFIG [-U SOCKET | -p PORT] "
             "[-- NBDKIT-OPTIONS]\n");
    return 2;
  }
  cfg = load_config (file);
  abs = realpath (file, NULL);
  if (!sock && !port) {
    dir = strdup (cfg->control_socket);
    if (asprintf (&defsock, "%s/%s.nbd", dirname (dir), cfg->name) == -1)
      return 1;
    free (dir);
    sock = defsock;
  }
  if (sock) {
    dir = strdup (sock);
    mkdir (dirname (dir), 0755);
    free (dir);
  }
  dir = strdup (cfg->control_socket);
  mkdir (dirname (dir), 0755);
  free (dir);
  if (asprintf (&cfgarg, "config=%s", abs ? abs : file) == -1)
    return 1;

  nargv[na++] = (char *) "nbdkit";
  nargv[na++] = (char *) "--foreground";
  if (sock) {
    nargv[na++] = (char *) "--unix";
    nargv[na++] = (char *) sock;
  }
  else {
    nargv[na++] = (char *) "--port";
    nargv[na++] = (char *) port;
  }
  for (; i < argc && na < 60; i++)
    nargv[na++] = argv[i];
  nargv[na++] = (char *) plugin_path ();
  nargv[na++] = cfgarg;
  nargv[na] = NULL;
  fprintf (stderr, "strata: starting nbdkit for pool %s on %s%s\n", cfg->name,
           sock ? "unix socket " : "port ", sock ? sock : port);
  fflush (stderr);
  execvp ("nbdkit", nargv);
  fprintf (stderr, "strata: cannot run nbdkit: %s (is the nbdkit package "
           "installed?)\n", strerror (errno));
  return 1;
}

int
main (int argc, char **argv)
{
  const char *cmd;

  if (argc < 2) {
    usage (stderr);
    return 2;
  }
  cmd = argv[1];
  if (strcmp (cmd, "--help") == 0 || strcmp (cmd, "-h") == 0
      || strcmp (cmd, "help") == 0) {
    usage (stdout);
    return 0;
  }
  if (strcmp (cmd, "--version") == 0) {
    printf ("strata 0.1\n");
    return 0;
  }
  if (strcmp (cmd, "init") == 0)
    return cmd_init (argc - 1, argv + 1);
  if (strcmp (cmd, "serve") == 0)
    return cmd_serve (argc - 1, argv + 1);
  if (strcmp (cmd, "status") == 0 || strcmp (cmd, "apply") == 0
      || strcmp (cmd, "scrub") == 0 || strcmp (cmd, "rebuild") == 0) {
    char *av[64];
    int ac = 0;
    if (argc < 3 || argv[2][0] == '-') {
      fprintf (stderr, "usage: strata %s CONFIG [options]\n", cmd);
      return 2;
    }
    av[ac++] = argv[1];
    for (int i = 3; i < argc && ac < 63; i++)
      av[ac++] = argv[i];
    return run_admin (argv[2], ac, av);
  }
  if (strcmp (cmd, "volume") == 0 || strcmp (cmd, "device") == 0
      || strcmp (cmd, "cache") == 0) {
    char *av[64];
    int ac = 0;
    if (argc < 4) {
      if (strcmp (cmd, "cache") == 0)
        fprintf (stderr, "usage: strata cache flush|detach CONFIG\n");
      else if (strcmp (cmd, "volume") == 0)
        fprintf (stderr, "usage: strata volume create|resize|delete CONFIG "
                 "NAME [SIZE] [options]\n");
      else
        fprintf (stderr, "usage: strata device add|fail|remove CONFIG NAME "
                 "[options]\n       strata device replace CONFIG OLD NEW "
                 "[options]\n");
      return 2;
    }
    av[ac++] = argv[1];
    av[ac++] = argv[2];
    for (int i = 4; i < argc && ac < 63; i++)
      av[ac++] = argv[i];
    return run_admin (argv[3], ac, av);
  }
  fprintf (stderr, "strata: unknown command \"%s\"\n\n", cmd);
  usage (stderr);
  return 2;
}
