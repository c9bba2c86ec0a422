/* strata unit tests: one Check suite per lib module. */
#ifndef STRATA_TEST_SUITES_H
#define STRATA_TEST_SUITES_H

#include <check.h>

Suite *format_suite (void);
Suite *config_suite (void);
Suite *alloc_suite (void);
Suite *journal_suite (void);
Suite *volume_suite (void);
Suite *device_suite (void);
Suite *integrity_suite (void);
Suite *meta_suite (void);
Suite *cache_suite (void);

/* A fresh temporary directory for a test (removed by the runner's exit
 * only if empty; tests remove their files). */
char *test_tmpdir (void);
void test_rmdir (char *dir);

#endif
