/* Unit tests: the raft-lite journal.  Commit, group commit from several
 * threads, checkpoints, reopen; a minority of replicas torn, truncated,
 * wiped or flipped at random keeps everything committed; a majority lost
 * is refused clearly; replicas join and leave, and come back, and one
 * that fell behind while its device stayed up catches up by itself. */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "device.h"
#include "error.h"
#include "journal.h"
#include "suites.h"
#include "util.h"

#define NKEY 64
#define META_SIZE (4u << 20)	/* smallest area: checkpoints come often */

/* The state: NKEY counters.  An entry is (u8 key, u64 value). */
struct kv {
  uint64_t v[NKEY];
  uint64_t applied;
};

static int
kv_apply (void *o, uint16_t type, const void *data, size_t len)
{
  struct kv *s = o;
  struct fbuf b;
  uint8_t key;

  fbuf_init_read (&b, data, len);
  key = fbuf_get_u8 (&b);
  if (type != 1 || key >= NKEY)
    return -1;
  s->v[key] = fbuf_get_u64 (&b);
  s->applied++;
  return b.bad ? -1 : 0;
}

static int
kv_snapshot (void *o, struct fbuf *out)
{
  struct kv *s = o;

  for (int i = 0; i < NKEY; i++)
    fbuf_put_u64 (out, s->v[i]);
  /* Pad the checkpoint so that it spans several blocks. */
  for (int i = 0; i < 3000; i++)
    fbuf_put_u8 (out, i);
  return 0;
}

static int
kv_load (void *o, const void *data, size_t len)
{
  struct kv *s = o;
  struct fbuf b;

  fbuf_init_read (&b, data, len);
  for (int i = 0; i < NKEY; i++)
    s->v[i] = fbuf_get_u64 (&b);
  return b.bad ? -1 : 0;
}

static const struct journal_ops ops = { kv_apply, kv_snapshot, kv_load };
static const uint8_t uuid[16] = { 1, 2, 3, 4, 5, 6, 7, 8, 9, 10 };

struct fixture {
  char *dir;
  char path[3][256];
  struct device *dev[3];
  struct journal_member m[3];
};

static void
fx_open (struct fixture *f)
{
  for (int i = 0; i < 3; i++) {
    f->dev[i] = device_open_local (f->path[i], DEVICE_CREATE, META_SIZE);
    ck_assert_msg (f->dev[i] != NULL, "%s", strata_last_error ());
    f->m[i] = (struct journal_member) { f->dev[i], f->path[i], 0, META_SIZE };
  }
}

static void
fx_close (struct fixture *f)
{
  for (int i = 0; i < 3; i++)
    device_close (f->dev[i]);
}

static void
fx_init (struct fixture *f)
{
  struct kv empty = { { 0 }, 0 };
  struct fbuf ck;

  f->dir = test_tmpdir ();
  for (int i = 0; i < 3; i++)
    snprintf (f->path[i], sizeof f->path[i], "%s/m%d", f->dir, i);
  fx_open (f);
  fbuf_init_write (&ck);
  kv_snapshot (&empty, &ck);
  ck_assert_int_eq (journal_format (f->m, 3, uuid, ck.p, ck.len), 0);
  fbuf_free (&ck);
}

static int
put (struct journal *j, uint8_t key, uint64_t val)
{
  struct fbuf e;
  struct journal_item it;
  int r;

  fbuf_init_write (&e);
  fbuf_put_u8 (&e, key);
  fbuf_put_u64 (&e, val);
  it = (struct journal_item) { 1, e.len, e.p };
  r = journal_append (j, &it, 1);
  fbuf_free (&e);
  return r;
}

struct worker {
  struct journal *j;
  int id;
};

static void *
worker (void *arg)
{
  struct worker *w = arg;

  for (int i = 0; i < 150; i++)
    if (put (w->j, w->id * 16 + i % 16, w->id * 1000000 + i) == -1)
      return (void *) 1;
  device_thread_exit ();
  return NULL;
}

START_TEST (test_group_commit_and_reopen)
{
  struct fixture f;
  struct kv s = { { 0 }, 0 }, s2 = { { 0 }, 0 };
  struct journal *j;
  pthread_t t[4];
  struct worker w[4];

  fx_init (&f);
  j = journal_open (f.m, 3, uuid, JOURNAL_WRITE, &ops, &s);
  ck_assert_msg (j != NULL, "%s", strata_last_error ());
  for (int i = 0; i < 4; i++) {
    w[i] = (struct worker) { j, i };
    pthread_create (&t[i], NULL, worker, &w[i]);
  }
  for (int i = 0; i < 4; i++) {
    void *r;
    pthread_join (t[i], &r);
    ck_assert_ptr_null (r);
  }
  ck_assert_uint_eq (s.applied, 600);
  /* Group commit: four threads waiting on each other's flushes share
   * records, so there are fewer records than entries.  (The log holds
   * about 250 records, so checkpoints must have run as well.) */
  ck_assert_uint_lt (journal_commits (j), 600);
  for (int k = 0; k < 4; k++)
    for (int i = 134; i < 150; i++)
      ck_assert_uint_eq (s.v[k * 16 + i % 16], k * 1000000u + i);
  journal_close (j);

  j = journal_open (f.m, 3, uuid, 0, &ops, &s2);
  ck_assert_msg (j != NULL, "%s", strata_last_error ());
  ck_assert_mem_eq (s.v, s2.v, sizeof s.v);
  journal_close (j);
  fx_close (&f);
  test_rmdir (f.dir);
}
END_TEST

/* Damage replica R of F in one of several ways. */
static void
damage (struct fixture *f, int r, unsigned *seed)
{
  FILE *fp = fopen (f->path[r], "r+b");
  int how = rand_r (seed) % 4;
  char *buf;
  size_t off, len;

  ck_assert_ptr_nonnull (fp);
  switch (how) {
    case 0:			/* wiped */
      buf = calloc (1, META_SIZE);
      fwrite (buf, 1, META_SIZE, fp);
      free (buf);
      break;
    case 1:			/* truncated: zeros from a random point on */
      off = rand_r (seed) % META_SIZE;
      buf = calloc (1, META_SIZE - off);
      fseek (fp, off, SEEK_SET);
      fwrite (buf, 1, META_SIZE - off, fp);
      free (buf);
      break;
    case 2:			/* random bytes flipped anywhere */
      for (int k = 0; k < 64; k++) {
        int c;
        off = rand_r (seed) % (META_SIZE / 4);	/* headers, ckpt, early log */
        fseek (fp, off, SEEK_SET);
        c = fgetc (fp);
        fseek (fp, off, SEEK_SET);
        fputc (c ^ (1 + rand_r (seed) % 255), fp);
      }
      break;
    case 3:			/* a torn 4 KiB block of garbage */
      len = 4096;
      off = round_down (rand_r (seed) % META_SIZE, 4096);
      buf = malloc (len);
      for (size_t i = 0; i < len; i++)
        buf[i] = rand_r (seed);
      fseek (fp, off + 1024, SEEK_SET);	/* tear mid-block */
      fwrite (buf, 1, len - 1024, fp);
      free (buf);
      break;
  }
  fclose (fp);
}

START_TEST (test_minority_damage)
{
  struct fixture f;
  struct kv s = { { 0 }, 0 };
  unsigned seed = 1000 + _i;
  struct journal *j;

  fx_init (&f);
  for (int round = 0; round < 4; round++) {
    struct kv got = { { 0 }, 0 };
    int n = 1 + rand_r (&seed) % 200;

    j = journal_open (f.m, 3, uuid, JOURNAL_WRITE, &ops, &s);
    ck_assert_msg (j != NULL, "round %d: %s", round, strata_last_error ());
    for (int i = 0; i < n; i++)
      ck_assert_int_eq (put (j, rand_r (&seed) % NKEY, rand_r (&seed)), 0);
    journal_close (j);
    fx_close (&f);
    damage (&f, rand_r (&seed) % 3, &seed);
    fx_open (&f);
    /* Writable open: recovers everything and repairs the damaged copy,
     * so the next round may damage any replica again. */
    j = journal_open (f.m, 3, uuid, JOURNAL_WRITE, &ops, &got);
    ck_assert_msg (j != NULL, "round %d: %s", round, strata_last_error ());
    ck_assert_mem_eq (got.v, s.v, sizeof s.v);
    journal_close (j);
  }
  fx_close (&f);
  test_rmdir (f.dir);
}
END_TEST

START_TEST (test_majority_lost)
{
  struct fixture f;
  struct kv s = { { 0 }, 0 };
  struct journal *j;
  unsigned seed = 5;

  fx_init (&f);
  j = journal_open (f.m, 3, uuid, JOURNAL_WRITE, &ops, &s);
  ck_assert_int_eq (put (j, 1, 42), 0);
  journal_close (j);
  fx_close (&f);
  /* Wipe two of three. */
  for (int r = 0; r < 2; r++) {
    FILE *fp = fopen (f.path[r], "r+b");
    char *z = calloc (1, 65536);
    fwrite (z, 1, 65536, fp);
    fclose (fp);
    free (z);
  }
  (void) seed;
  fx_open (&f);
  j = journal_open (f.m, 3, uuid, JOURNAL_WRITE, &ops, &s);
  ck_assert_ptr_null (j);
  ck_assert_int_eq (errno, EIO);
  ck_assert_msg (strstr (strata_last_error (), "only 1 of 3 metadata replicas "
                         "are readable and a majority (2) is needed"),
                 "%s", strata_last_error ());
  /* A missing device counts as lost too. */
  f.m[2].dev = NULL;
  ck_assert_ptr_null (journal_open (f.m, 3, uuid, 0, &ops, &s));
  fx_close (&f);
  test_rmdir (f.dir);
}
END_TEST

static int publish_calls;

static int
publish_ok (void *arg)
{
  (void) arg;
  publish_calls++;
  return 0;
}

static int
publish_fail (void *arg)
{
  (void) arg;
  publish_calls++;
  return strata_error (EIO, "superblocks not written");
}

/* A fourth device joins and an old one leaves, one step each; what is
 * committed before and after is recovered from the new set alone, and
 * from the joined device alone whatever its area held before. */
START_TEST (test_reconfigure)
{
  struct fixture f;
  struct kv s = { { 0 }, 0 }, got = { { 0 }, 0 }, empty = { { 0 }, 0 };
  struct journal_replica_info info[8];
  struct journal_member four[4], newset[3];
  struct device *extra;
  char extra_path[300];
  struct journal *j;
  struct fbuf ck;

  fx_init (&f);
  snprintf (extra_path, sizeof extra_path, "%s/m3", f.dir);
  extra = device_open_local (extra_path, DEVICE_CREATE, META_SIZE);
  ck_assert_ptr_nonnull (extra);
  /* The joining device held a journal of its own before, with many
   * checkpoints (high header sequence numbers). */
  four[0] = (struct journal_member) { extra, extra_path, 0, META_SIZE };
  fbuf_init_write (&ck);
  kv_snapshot (&empty, &ck);
  ck_assert_int_eq (journal_format (four, 1, uuid, ck.p, ck.len), 0);
  fbuf_free (&ck);
  {
    struct kv old = { { 0 }, 0 };
    j = journal_open (four, 1, uuid, JOURNAL_WRITE, &ops, &old);
    ck_assert_ptr_nonnull (j);
    for (int i = 0; i < 40; i++)
      ck_assert_int_eq (journal_checkpoint (j), 0);
    ck_assert_int_eq (put (j, 7, 999), 0);
    journal_close (j);
  }

  j = journal_open (f.m, 3, uuid, JOURNAL_WRITE, &ops, &s);
  ck_assert_ptr_nonnull (j);
  ck_assert_int_eq (put (j, 1, 100), 0);

  /* A join whose publication fails changes nothing. */
  four[0] = (struct journal_member) { extra, extra_path, 0, META_SIZE };
  publish_calls = 0;
  ck_assert_int_eq (journal_reconfigure (j, &four[0], -1, publish_fail, NULL),
                    -1);
  ck_assert_int_eq (publish_calls, 1);
  ck_assert_uint_eq (journal_info (j, info, 8), 3);
  ck_assert_int_eq (put (j, 2, 200), 0);
  /* Both at once is refused. */
  ck_assert_int_eq (journal_reconfigure (j, &four[0], 0, publish_ok, NULL),
                    -1);

  ck_assert_int_eq (journal_reconfigure (j, &four[0], -1, publish_ok, NULL),
                    0);
  ck_assert_uint_eq (journal_info (j, info, 8), 4);
  for (int i = 0; i < 4; i++)
    ck_assert_int_eq (info[i].state, JOURNAL_R_LIVE);
  ck_assert_int_eq (put (j, 3, 300), 0);
  /* m0 leaves. */
  ck_assert_int_eq (journal_reconfigure (j, NULL, 0, publish_ok, NULL), 0);
  ck_assert_uint_eq (journal_info (j, info, 8), 3);
  ck_assert_str_eq (info[2].name, extra_path);
  for (int i = 0; i < 100; i++)	/* through a few checkpoints */
    ck_assert_int_eq (put (j, 4 + i % 8, 400 + i), 0);
  journal_close (j);

  newset[0] = f.m[1];
  newset[1] = f.m[2];
  newset[2] = four[0];
  j = journal_open (newset, 3, uuid, 0, &ops, &got);
  ck_assert_msg (j != NULL, "%s", strata_last_error ());
  ck_assert_mem_eq (got.v, s.v, sizeof s.v);
  ck_assert_uint_eq (got.v[1], 100);
  ck_assert_uint_eq (got.v[2], 200);
  ck_assert_uint_eq (got.v[3], 300);
  ck_assert_uint_eq (got.v[7], 499);
  journal_close (j);
  /* The joined device alone holds the newest state, not its old one. */
  memset (&got, 0, sizeof got);
  j = journal_open (&four[0], 1, uuid, 0, &ops, &got);
  ck_assert_msg (j != NULL, "%s", strata_last_error ());
  ck_assert_mem_eq (got.v, s.v, sizeof s.v);
  journal_close (j);
  /* The one that left stopped at the step it left. */
  memset (&got, 0, sizeof got);
  j = journal_open (&f.m[0], 1, uuid, 0, &ops, &got);
  ck_assert_msg (j != NULL, "%s", strata_last_error ());
  ck_assert_uint_eq (got.v[3], 300);
  ck_assert_uint_eq (got.v[4], 0);
  journal_close (j);

  device_close (extra);
  fx_close (&f);
  test_rmdir (f.dir);
}
END_TEST

/* A replica missing at open (or failed since) comes back: the commits
 * after its return reach it, so that it holds the newest state alone,
 * although the headers of its own past have higher sequence numbers than
 * any the journal gives it now; a replica that is live is left alone. */
START_TEST (test_rejoin)
{
  struct fixture f;
  struct kv s = { { 0 }, 0 }, got = { { 0 }, 0 };
  struct journal_replica_info info[3];
  struct journal_member set[3];
  struct journal *j;

  fx_init (&f);
  j = journal_open (f.m, 3, uuid, JOURNAL_WRITE, &ops, &s);
  ck_assert_ptr_nonnull (j);
  for (int i = 0; i < 30; i++)
    ck_assert_int_eq (journal_checkpoint (j), 0);
  ck_assert_int_eq (put (j, 1, 100), 0);
  journal_close (j);

  /* m1 is away at open. */
  set[0] = f.m[0];
  set[1] = (struct journal_member) { NULL, "(missing)", 0, META_SIZE };
  set[2] = f.m[2];
  memset (&s, 0, sizeof s);
  j = journal_open (set, 3, uuid, JOURNAL_WRITE, &ops, &s);
  ck_assert_msg (j != NULL, "%s", strata_last_error ());
  ck_assert_int_eq (put (j, 2, 200), 0);
  ck_assert_uint_eq (journal_info (j, info, 3), 3);
  ck_assert_int_ne (info[1].state, JOURNAL_R_LIVE);
  ck_assert_int_eq (journal_rejoin (j, 1, &set[1]), -1);	/* no device */
  ck_assert_int_eq (journal_rejoin (j, 1, &f.m[1]), 0);
  journal_info (j, info, 3);
  for (int i = 0; i < 3; i++)
    ck_assert_int_eq (info[i].state, JOURNAL_R_LIVE);
  ck_assert_int_eq (journal_rejoin (j, 0, &f.m[0]), 0);	/* live: no-op */
  ck_assert_int_eq (put (j, 3, 300), 0);
  journal_close (j);

  /* m1 alone holds everything committed, the last commit included. */
  j = journal_open (&f.m[1], 1, uuid, 0, &ops, &got);
  ck_assert_msg (j != NULL, "%s", strata_last_error ());
  ck_assert_uint_eq (got.v[1], 100);
  ck_assert_uint_eq (got.v[2], 200);
  ck_assert_uint_eq (got.v[3], 300);
  journal_close (j);
  fx_close (&f);
  test_rmdir (f.dir);
}
END_TEST

/* A replica whose writes fail for a while as its device stays connected
 * (nbdkit's error filter, failing every request while a file exists) is
 * brought back by a later commit, with no device add: the commits go on
 * while it fails, and once it answers again it holds everything. */
START_TEST (test_lagging_retry)
{
  static const char *const filter[] = { "--filter=error", NULL };
  char *dir = test_tmpdir (), *uri = test_nbdkit_uri (dir);
  char flag[300], param[320];
  const char *params[] = { "error-rate=1", param, NULL };
  struct kv s = { { 0 }, 0 }, got = { { 0 }, 0 };
  struct journal_replica_info info[3];
  struct journal_member set[3];
  struct fixture f;
  struct journal *j;
  struct fbuf ck;
  pid_t pid;
  int i;

  snprintf (flag, sizeof flag, "%s/fail", dir);
  snprintf (param, sizeof param, "error-file=%s", flag);
  pid = test_nbdkit_start (dir, filter, params);
  fx_init (&f);
  set[0] = f.m[0];
  set[1] = f.m[1];
  set[2] = (struct journal_member) { device_open_nbd (uri, 0), uri, 0,
                                     META_SIZE };
  ck_assert_msg (set[2].dev != NULL, "%s", strata_last_error ());
  fbuf_init_write (&ck);
  kv_snapshot (&s, &ck);
  ck_assert_int_eq (journal_format (set, 3, uuid, ck.p, ck.len), 0);
  fbuf_free (&ck);
  j = journal_open (set, 3, uuid, JOURNAL_WRITE, &ops, &s);
  ck_assert_msg (j != NULL, "%s", strata_last_error ());
  ck_assert_int_eq (put (j, 1, 100), 0);

  /* Failing: it falls behind, the commits go on without it, and the
   * tries to bring it back (the first a second later) fail too. */
  ck_assert_int_eq (close (creat (flag, 0600)), 0);
  for (i = 0; i < 25; i++) {
    ck_assert_int_eq (put (j, 2, 200 + i), 0);
    usleep (100000);
  }
  journal_info (j, info, 3);
  ck_assert_int_ne (info[2].state, JOURNAL_R_LIVE);
  ck_assert_int_eq (info[0].state, JOURNAL_R_LIVE);

  /* Answering again: a commit within the next retry gap brings it back. */
  ck_assert_int_eq (unlink (flag), 0);
  for (i = 0; i < 80 && info[2].state != JOURNAL_R_LIVE; i++) {
    ck_assert_int_eq (put (j, 3, 300 + i), 0);
    usleep (100000);
    journal_info (j, info, 3);
  }
  ck_assert_msg (info[2].state == JOURNAL_R_LIVE, "%s", info[2].problem);
  ck_assert_int_eq (put (j, 4, 400), 0);
  journal_close (j);

  /* The remote replica alone holds every commit. */
  j = journal_open (&set[2], 1, uuid, 0, &ops, &got);
  ck_assert_msg (j != NULL, "%s", strata_last_error ());
  ck_assert_uint_eq (got.v[1], 100);
  ck_assert_uint_eq (got.v[2], 224);
  ck_assert_uint_eq (got.v[3], s.v[3]);
  ck_assert_uint_eq (got.v[4], 400);
  journal_close (j);
  device_close (set[2].dev);
  test_nbdkit_stop (pid);
  fx_close (&f);
  test_rmdir (f.dir);
  free (uri);
  test_rmdir (dir);
}
END_TEST

Suite *
journal_suite (void)
{
  Suite *s = suite_create ("journal");
  TCase *tc = tcase_create ("journal");

  tcase_set_timeout (tc, 120);
  tcase_add_test (tc, test_group_commit_and_reopen);
  tcase_add_test (tc, test_rejoin);
  tcase_add_loop_test (tc, test_minority_damage, 0, 12);
  tcase_add_test (tc, test_majority_lost);
  tcase_add_test (tc, test_reconfigure);
  if (access ("/usr/sbin/nbdkit", X_OK) == 0
      || access ("/usr/bin/nbdkit", X_OK) == 0)
    tcase_add_test (tc, test_lagging_retry);
  suite_add_tcase (s, tc);
  return s;
}
