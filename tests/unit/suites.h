/* strata unit tests: one Check suite per lib module. */
#ifndef STRATA_TEST_SUITES_H
#define STRATA_TEST_SUITES_H

#include <check.h>
#include <sys/types.h>

Suite *format_suite (void);
Suite *config_suite (void);
Suite *alloc_suite (void);
Suite *journal_suite (void);
Suite *volume_suite (void);
Suite *device_suite (void);
Suite *integrity_suite (void);
Suite *meta_suite (void);
Suite *cache_suite (void);
Suite *util_suite (void);

/* A fresh temporary directory for a test, under the run's own directory,
 * which the runner removes at the end (tests remove theirs as they go). */
char *test_tmpdir (void);
void test_rmdir (char *dir);

/* A real nbdkit on a unix socket in DIR serving "memory 16M", with the
 * FILTERS options and PARAMS (either may be NULL); stopped with SIGKILL,
 * like a host that goes away.  test_nbdkit_uri() is its URI (free it). */
pid_t test_nbdkit_start (const char *dir, const char *const *filters,
                         const char *const *params);
void test_nbdkit_stop (pid_t pid);
char *test_nbdkit_uri (const char *dir);

#endif
