/* strata unit tests: the single runner for every suite. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "suites.h"

char *
test_tmpdir (void)
{
  char *d = strdup ("/var/tmp/strata-unit.XXXXXX");
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

int
main (void)
{
  SRunner *sr = srunner_create (format_suite ());
  int failed;

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
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
