/* Unit tests: allocator invariants under random allocate/free sequences. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "alloc.h"
#include "suites.h"

#define NDEV 6
#define EXT 200

/* Six devices in three domains (two per domain). */
static struct meta *
make_meta (void)
{
  struct meta *m = meta_new ();

  m->extent_size = 4 << 20;
  m->ndevices = NDEV;
  for (int i = 0; i < NDEV; i++) {
    snprintf (m->devices[i].name, sizeof m->devices[i].name, "d%d", i);
    snprintf (m->devices[i].domain, sizeof m->devices[i].domain, "host%d",
              i / 2);
    strcpy (m->devices[i].class, i == 5 ? "ssd" : "hdd");
    m->devices[i].extent_count = EXT;
  }
  return m;
}

START_TEST (test_random_sequences)
{
  struct meta *m = make_meta ();
  struct alloc *a = alloc_new (m, 1234 + _i);
  static uint8_t used[NDEV][EXT];
  struct { struct meta_extent e[12]; uint32_t n; bool live; } chunks[400];
  unsigned seed = 99 + _i;
  size_t nlive = 0;

  memset (used, 0, sizeof used);
  memset (chunks, 0, sizeof chunks);
  for (int step = 0; step < 3000; step++) {
    int k = rand_r (&seed) % 400;
    if (!chunks[k].live) {
      uint32_t w = 1 + rand_r (&seed) % 4, r = 1 + rand_r (&seed) % 3;
      /* Distinct domains are promised while every domain has space. */
      bool roomy = true;
      for (int d = 0; d < 5; d++)
        if (alloc_free_count (a, d) < 12)
          roomy = false;
      if (alloc_chunk (a, w, r, "hdd", chunks[k].e) == -1)
        continue;		/* full: fine, frees will follow */
      chunks[k].n = w * r;
      chunks[k].live = true;
      nlive++;
      for (uint32_t c = 0; c < w; c++)
        for (uint32_t x = 0; x < r; x++) {
          struct meta_extent e = chunks[k].e[c * r + x];
          ck_assert_uint_lt (e.dev, NDEV);
          ck_assert_uint_ne (e.dev, 5);	/* class hdd only */
          ck_assert_uint_lt (e.ext, EXT);
          ck_assert_msg (!used[e.dev][e.ext], "extent used twice");
          used[e.dev][e.ext] = 1;
          for (uint32_t y = 0; y < x; y++) {
            struct meta_extent f = chunks[k].e[c * r + y];
            ck_assert_msg (f.dev != e.dev, "two replicas on one device");
            /* 3 domains hold hdd devices: replicas never share one. */
            ck_assert_msg (!roomy || strcmp (m->devices[f.dev].domain,
                                             m->devices[e.dev].domain) != 0,
                           "two replicas in one domain");
          }
        }
    }
    else {
      alloc_release (a, chunks[k].e, chunks[k].n);
      for (uint32_t x = 0; x < chunks[k].n; x++)
        used[chunks[k].e[x].dev][chunks[k].e[x].ext] = 0;
      chunks[k].live = false;
      nlive--;
    }
  }
  /* Counters agree with the model. */
  for (int d = 0; d < NDEV; d++) {
    uint64_t n = 0;
    for (int e = 0; e < EXT; e++)
      n += used[d][e];
    ck_assert_uint_eq (alloc_used_count (a, d), n);
    ck_assert_uint_eq (alloc_free_count (a, d), EXT - n);
  }
  ck_assert_uint_gt (nlive, 0);
  alloc_free (a);
  meta_free (m);
}
END_TEST

START_TEST (test_balance_and_spread)
{
  struct meta *m = make_meta ();
  struct alloc *a = alloc_new (m, 7);
  struct meta_extent e[8];
  uint64_t min = EXT, max = 0;

  /* Four columns of one replica: spread over four different devices. */
  ck_assert_int_eq (alloc_chunk (a, 4, 1, "hdd", e), 0);
  for (int i = 0; i < 4; i++)
    for (int j = 0; j < i; j++)
      ck_assert_uint_ne (e[i].dev, e[j].dev);
  alloc_release (a, e, 4);

  /* Many single extents land evenly on the five hdd devices. */
  for (int i = 0; i < 500; i++)
    ck_assert_int_eq (alloc_chunk (a, 1, 1, "hdd", e), 0);
  for (int d = 0; d < 5; d++) {
    uint64_t u = alloc_used_count (a, d);
    min = u < min ? u : min;
    max = u > max ? u : max;
  }
  ck_assert_msg (max - min <= 40, "unbalanced: %lu..%lu", min, max);

  /* Not enough devices of a class: a clear ENOSPC. */
  ck_assert_int_eq (alloc_chunk (a, 1, 2, "ssd", e), -1);
  alloc_free (a);
  meta_free (m);
}
END_TEST

START_TEST (test_load_rejects_double_use)
{
  struct meta *m = make_meta ();
  struct alloc *a = alloc_new (m, 1);
  struct meta_extent e = { 2, 17 };

  ck_assert_int_eq (alloc_mark_used (a, e), 0);
  ck_assert_int_eq (alloc_mark_used (a, e), -1);
  e.ext = EXT;
  ck_assert_int_eq (alloc_mark_used (a, e), -1);
  alloc_free (a);
  meta_free (m);
}
END_TEST

/* A device added later takes new extents, and the one it is given as
 * preferred for a replica when its domain is free. */
START_TEST (test_add_device)
{
  struct meta *m = make_meta ();
  struct alloc *a = alloc_new (m, 3);
  struct meta_device nd = { .name = "new", .extent_count = 50,
                            .class = "hdd", .domain = "host9" };
  struct meta_extent e[2], keep = { 0, 0 }, out;
  bool used = false;

  /* Only the next index. */
  ck_assert_int_eq (alloc_add_device (a, NDEV + 1, &nd), -1);
  ck_assert_int_eq (alloc_add_device (a, NDEV, &nd), 0);
  ck_assert_uint_eq (alloc_free_count (a, NDEV), 50);
  ck_assert_int_eq (alloc_mark_used (a, (struct meta_extent) { NDEV, 49 }), 0);
  ck_assert_int_eq (alloc_mark_used (a, (struct meta_extent) { NDEV, 50 }),
                    -1);
  /* Weighted by free space, it is soon used by new chunks. */
  for (int i = 0; i < 200 && !used; i++) {
    ck_assert_int_eq (alloc_chunk (a, 1, 2, "hdd", e), 0);
    used = e[0].dev == NDEV || e[1].dev == NDEV;
  }
  ck_assert (used);
  /* A preferred device gets the copy. */
  ck_assert_int_eq (alloc_replica (a, "hdd", &keep, 1, NDEV, &out), 0);
  ck_assert_uint_eq (out.dev, NDEV);
  /* Not while it clashes with the column's domain. */
  alloc_set_usable (a, NDEV, false);
  ck_assert_int_eq (alloc_replica (a, "hdd", &keep, 1, NDEV, &out), 0);
  ck_assert_uint_ne (out.dev, NDEV);
  alloc_free (a);
  meta_free (m);
}
END_TEST

Suite *
alloc_suite (void)
{
  Suite *s = suite_create ("alloc");
  TCase *tc = tcase_create ("invariants");

  tcase_add_loop_test (tc, test_random_sequences, 0, 8);
  tcase_add_test (tc, test_balance_and_spread);
  tcase_add_test (tc, test_load_rejects_double_use);
  tcase_add_test (tc, test_add_device);
  suite_add_tcase (s, tc);
  return s;
}
