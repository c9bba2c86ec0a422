/* Unit tests: the small shared helpers (util.h, error.h). */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "suites.h"
#include "util.h"

static int
int_cmp (const void *a, const void *b)
{
  int x = *(const int *) a, y = *(const int *) b;

  return x < y ? -1 : x > y;
}

/* Offer 0..N-1 in the order PERM gives to a list of MAX; it must keep
 * exactly 0..MAX-1, sorted after util_first_sort, and drop the rest. */
static void
check_first (const int *perm, int n, size_t max)
{
  struct util_first l = { .max = max, .size = sizeof (int), .cmp = int_cmp };
  size_t kept = 0;

  for (int i = 0; i < n; i++) {
    int *at = util_first_offer (&l, &perm[i]);
    if (at) {
      ck_assert_int_eq (*at, perm[i]);
      kept++;
    }
  }
  util_first_sort (&l);
  ck_assert_uint_eq (l.n, MIN ((size_t) n, max));
  ck_assert_uint_eq (l.dropped, (size_t) n - l.n);
  /* Every offer that was kept and later made way counts as dropped. */
  ck_assert_uint_eq (kept - l.n, l.dropped - ((size_t) n - kept));
  for (size_t i = 0; i < l.n; i++)
    ck_assert_int_eq (((int *) l.items)[i], (int) i);
  util_first_free (&l);
  ck_assert_ptr_null (l.items);
}

START_TEST (test_first_keeps_least)
{
  enum { N = 1000 };
  int perm[N];

  /* In order, reversed, and shuffled, into lists smaller and larger
   * than the number offered. */
  for (int i = 0; i < N; i++)
    perm[i] = i;
  check_first (perm, N, 100);
  check_first (perm, N, N + 5);
  for (int i = 0; i < N; i++)
    perm[i] = N - 1 - i;
  check_first (perm, N, 100);
  check_first (perm, N, 1);
  srand (7);
  for (int i = N - 1; i > 0; i--) {
    int j = rand () % (i + 1), t = perm[i];
    perm[i] = perm[j];
    perm[j] = t;
  }
  check_first (perm, N, 100);
  check_first (perm, N, 64);	/* exactly the first allocation */
  check_first (perm, N, 65);
  check_first (perm, 0, 10);
}
END_TEST

START_TEST (test_first_order_independent)
{
  /* Two orders of the same offers give the same list. */
  enum { N = 500, MAX = 37 };
  int a[N], b[N];
  struct util_first la = { .max = MAX, .size = sizeof (int), .cmp = int_cmp };
  struct util_first lb = la;

  for (int i = 0; i < N; i++) {
    a[i] = (i * 7919) % N;
    b[N - 1 - i] = a[i];
  }
  for (int i = 0; i < N; i++) {
    util_first_offer (&la, &a[i]);
    util_first_offer (&lb, &b[i]);
  }
  util_first_sort (&la);
  util_first_sort (&lb);
  ck_assert_uint_eq (la.n, MAX);
  ck_assert_uint_eq (lb.n, MAX);
  ck_assert_uint_eq (la.dropped, N - MAX);
  ck_assert_uint_eq (lb.dropped, N - MAX);
  ck_assert_int_eq (memcmp (la.items, lb.items, MAX * sizeof (int)), 0);

  /* Offers after a sort still replace the item that sorts last: -1
   * takes the place of MAX - 1, wherever the sort moved it. */
  {
    int x = -1;
    ck_assert_ptr_nonnull (util_first_offer (&la, &x));
    util_first_sort (&la);
    ck_assert_int_eq (((int *) la.items)[0], -1);
    ck_assert_int_eq (((int *) la.items)[MAX - 1], MAX - 2);
    ck_assert_uint_eq (la.dropped, N - MAX + 1);
  }
  util_first_free (&la);
  util_first_free (&lb);
}
END_TEST

START_TEST (test_is_zero_and_sizes)
{
  char buf[8192] = { 0 };
  char s[32];

  ck_assert (util_is_zero (buf, sizeof buf));
  ck_assert (util_is_zero (buf, 0));
  buf[8191] = 1;
  ck_assert (!util_is_zero (buf, sizeof buf));
  ck_assert (util_is_zero (buf, 8191));
  buf[0] = 1;
  ck_assert (!util_is_zero (buf, 1));
  ck_assert_str_eq (util_human_size (512, s, sizeof s), "512 B");
  ck_assert_str_eq (util_human_size (4u << 20, s, sizeof s), "4.0 MiB");
  ck_assert_str_eq (util_human_size (3ull << 39, s, sizeof s), "1.5 TiB");
}
END_TEST

/* Version 4 UUIDs: the version and variant digits are fixed, the rest is
 * random, so 64 of them are all different and each of the random bits
 * takes both values. */
/* A message may quote the one before it: "... (last error: %s)" with
 * strata_last_error () as the argument, as volume.c does. */
START_TEST (test_error_quotes_last)
{
  ck_assert_int_eq (strata_error (ENOTCONN, "d3: read of %u bytes", 4096u),
                    -1);
  ck_assert_int_eq (strata_error (EIO, "no readable copy (last error: %s)",
                                  strata_last_error ()), -1);
  ck_assert_int_eq (errno, EIO);
  ck_assert_str_eq (strata_last_error (),
                    "no readable copy (last error: d3: read of 4096 bytes)");
  errno = ENOSPC;
  ck_assert_int_eq (strata_error_prefix ("volume %s", "v"), -1);
  ck_assert_int_eq (errno, ENOSPC);
  ck_assert_str_eq (strata_last_error (), "volume v: no readable copy "
                    "(last error: d3: read of 4096 bytes)");
}
END_TEST

START_TEST (test_uuid_v4)
{
  uint8_t u[64][16], ones[16] = { 0 }, zeros[16] = { 0 };
  char s[37];

  for (int i = 0; i < 64; i++) {
    ck_assert_int_eq (util_uuid_new (u[i]), 0);
    util_uuid_format (u[i], s);
    ck_assert_int_eq (strlen (s), 36);
    ck_assert_int_eq (s[14], '4');
    ck_assert (strchr ("89ab", s[19]) != NULL);
    for (int k = 0; k < 16; k++) {
      ones[k] |= u[i][k];
      zeros[k] |= (uint8_t) ~u[i][k];
    }
    for (int j = 0; j < i; j++)
      ck_assert (memcmp (u[i], u[j], 16) != 0);
  }
  for (int k = 0; k < 16; k++) {
    uint8_t fixed = k == 6 ? 0xf0 : k == 8 ? 0xc0 : 0;
    ck_assert_int_eq (ones[k] | fixed, 0xff);
    ck_assert_int_eq (zeros[k] | fixed, 0xff);
  }
}
END_TEST

Suite *
util_suite (void)
{
  Suite *s = suite_create ("util");
  TCase *tc = tcase_create ("util");

  tcase_add_test (tc, test_first_keeps_least);
  tcase_add_test (tc, test_first_order_independent);
  tcase_add_test (tc, test_is_zero_and_sizes);
  tcase_add_test (tc, test_uuid_v4);
  tcase_add_test (tc, test_error_quotes_last);
  suite_add_tcase (s, tc);
  return s;
}
