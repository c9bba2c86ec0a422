/* strata unit tests: the single runner for every suite. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "suites.h"

/* Every test's directory is made under one directory per run, which the
 * runner removes when the run ends: a test that fails an assertion exits
 * at once, without removing its own. */
static char run_dir[] = "/var/tmp/strata-unit.XXXXXX";

char *
test_tmpdir (void)
{
  char *d;
  ck_assert_int_ge (asprintf (&d, "%s/t.XXXXXX", run_dir), 0);
  ck_assert_ptr_nonnull (mkdtemp (d));
  return d;
}

void
test_rmdir (char *dir)
{
  char cmd[300];
  snprintf (cmd, sizeof cmd, "rm -rf '%s'", dir);
  ck_assert_int_eq (system (cmd), 0);
  free (dir);
}

pid_t
test_nbdkit_start (const char *dir, const char *const *filters,
                   const char *const *params)
{
  char sock[300];
  pid_t pid;

  snprintf (sock, sizeof sock, "%s/nbd.sock", dir);
  unlink (sock);		/* left by a server killed before */
  pid = fork ();
  ck_assert_int_ge (pid, 0);
  if (pid == 0) {
    const char *argv[16] = { "nbdkit", "-f", "-U", sock };
    size_t n = 4;
    for (size_t i = 0; filters && filters[i]; i++)
      argv[n++] = filters[i];
    argv[n++] = "memory";
    argv[n++] = "16M";
    for (size_t i = 0; params && params[i]; i++)
      argv[n++] = params[i];
    argv[n] = NULL;
    execvp ("nbdkit", (char **) argv);
    _exit (127);
  }
  for (int i = 0; i < 100 && access (sock, F_OK) == -1; i++)
    usleep (50000);
  ck_assert_msg (access (sock, F_OK) == 0, "nbdkit did not start");
  return pid;
}

/* SIGKILL: a host that goes away (nbdkit would wait on SIGTERM for our
 * idle connections to close). */
void
test_nbdkit_stop (pid_t pid)
{
  kill (pid, SIGKILL);
  waitpid (pid, NULL, 0);
}

char *
test_nbdkit_uri (const char *dir)
{
  char *u;
  ck_assert_int_ge (asprintf (&u, "nbd+unix:///?socket=%s/nbd.sock", dir), 0);
  return u;
}

int
main (void)
{
  SRunner *sr;
  char cmd[100];
  int failed;

  if (!mkdtemp (run_dir)) {
    perror (run_dir);
    return EXIT_FAILURE;
  }
  sr = srunner_create (format_suite ());
  srunner_add_suite (sr, util_suite ());
  srunner_add_suite (sr, config_suite ());
  srunner_add_suite (sr, device_suite ());
  srunner_add_suite (sr, alloc_suite ());
  srunner_add_suite (sr, journal_suite ());
  srunner_add_suite (sr, cache_suite ());
  srunner_add_suite (sr, meta_suite ());
  srunner_add_suite (sr, volume_suite ());
  srunner_add_suite (sr, integrity_suite ());
  srunner_run_all (sr, CK_NORMAL);
  failed = srunner_ntests_failed (sr);
  srunner_free (sr);
  snprintf (cmd, sizeof cmd, "rm -rf '%s'", run_dir);
  if (system (cmd) != 0)
    fprintf (stderr, "check-unit: cannot remove %s\n", run_dir);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
