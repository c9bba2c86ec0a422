/* Unit tests: the cache log.  Random writes, overwrites and zeros read
 * back as a flat reference says, before and after a reopen (recovery);
 * destaging hands the newest blocks to the sink in address order and
 * empties the cache; the ring wraps many times under destaging; a torn
 * record is passed over while a later one survives; a second mirror
 * serves what the first one holds damaged; a cache is sealed (detached)
 * only once it holds nothing, and then takes no record. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cache.h"
#include "device.h"
#include "error.h"
#include "suites.h"
#include "util.h"

#define B 4096u
#define NB 256			/* blocks of the test volume */
#define AREA (4u << 20)		/* cache area: 8 KiB headers + ring */

static const uint8_t uuid[16] = { 9, 8, 7 };

struct fx {
  char *dir;
  char path[2][300];
  struct device *dev[2];
  struct cache_dev m[2];
  /* The reference: what each block of volume 1 reads as (0: never
   * written), and its bytes. */
  int state[NB];		/* 0 unknown to the cache, 1 data, 2 zero */
  uint8_t ref[NB][B];
  uint8_t backing[NB][B];	/* what the sink received */
  uint64_t last_key;		/* address order within one destage */
  int flushes;
};

static void
fx_open_devs (struct fx *f, int n)
{
  for (int i = 0; i < n; i++) {
    f->dev[i] = device_open_local (f->path[i], DEVICE_CREATE, AREA);
    ck_assert_msg (f->dev[i] != NULL, "%s", strata_last_error ());
    f->m[i] = (struct cache_dev) { f->dev[i], f->path[i], 0, AREA };
  }
}

static void
fx_close_devs (struct fx *f, int n)
{
  for (int i = 0; i < n; i++)
    device_close (f->dev[i]);
}

static struct fx *
fx_new (int n)
{
  struct fx *f = calloc (1, sizeof *f);

  f->dir = test_tmpdir ();
  for (int i = 0; i < 2; i++)
    snprintf (f->path[i], sizeof f->path[i], "%s/c%d", f->dir, i);
  fx_open_devs (f, n);
  ck_assert_int_eq (cache_format (f->m, n, uuid), 0);
  return f;
}

static void
fx_free (struct fx *f, int n)
{
  fx_close_devs (f, n);
  for (int i = 0; i < n; i++)
    unlink (f->path[i]);
  test_rmdir (f->dir);
  free (f);
}

/* Write NBLK blocks of random data at BLK (or zeros) to C and REF. */
static void
put (struct fx *f, struct cache *c, uint32_t blk, uint32_t nblk, bool zero,
     bool fua, unsigned *seed)
{
  uint8_t *buf = device_alloc_buf ((size_t) nblk * B);

  for (size_t i = 0; i < (size_t) nblk * B; i++)
    buf[i] = rand_r (seed);
  ck_assert_int_eq (cache_write (c, 1, blk, nblk, zero ? NULL : buf, fua), 0);
  for (uint32_t i = 0; i < nblk; i++) {
    f->state[blk + i] = zero ? 2 : 1;
    if (zero)
      memset (f->ref[blk + i], 0, B);
    else
      memcpy (f->ref[blk + i], buf + (size_t) i * B, B);
  }
  free (buf);
}

/* Every block the reference says the cache holds reads back from it;
 * the others are misses. */
static void
check_reads (struct fx *f, struct cache *c)
{
  uint8_t *buf = device_alloc_buf (NB * B);
  uint8_t hit[NB / 8];
  int n = cache_read (c, 1, 0, NB, buf, hit);

  ck_assert_msg (n >= 0, "%s", strata_last_error ());
  for (int i = 0; i < NB; i++) {
    bool h = hit[i / 8] >> (i % 8) & 1;
    ck_assert_msg (h == (f->state[i] != 0), "block %d: hit %d, state %d", i,
                   h, f->state[i]);
    if (h)
      ck_assert_msg (memcmp (buf + (size_t) i * B, f->ref[i], B) == 0,
                     "block %d differs", i);
  }
  free (buf);
}

static int
sink_write (void *opaque, uint32_t vol, uint64_t blk, uint32_t nblk,
            const void *buf, const uint64_t *lsn)
{
  struct fx *f = opaque;

  (void) lsn;
  ck_assert_uint_eq (vol, 1);
  ck_assert_uint_le (blk + nblk, NB);
  /* Address order: each run starts after the previous one. */
  ck_assert_msg (f->last_key == 0 || blk >= f->last_key, "run at %lu after "
                 "%lu", (unsigned long) blk, (unsigned long) f->last_key);
  f->last_key = blk + nblk;
  for (uint32_t i = 0; i < nblk; i++)
    if (buf)
      memcpy (f->backing[blk + i], (const uint8_t *) buf + (size_t) i * B, B);
    else
      memset (f->backing[blk + i], 0, B);
  return 0;
}

static int
sink_flush (void *opaque)
{
  struct fx *f = opaque;
  f->flushes++;
  return 0;
}

/* Destage everything; the backing then holds the reference. */
static void
drain (struct fx *f, struct cache *c)
{
  struct cache_sink s = { sink_write, sink_flush, f };
  struct cache_info ci;
  int64_t r;

  do {
    f->last_key = 0;
    r = cache_destage (c, 1 << 20, &s);
    ck_assert_msg (r >= 0, "%s", strata_last_error ());
  } while (r > 0);
  cache_info (c, &ci);
  ck_assert_uint_eq (ci.used, 0);
  ck_assert_uint_eq (ci.dirty_blocks, 0);
  for (int i = 0; i < NB; i++) {
    if (f->state[i])
      ck_assert_msg (memcmp (f->backing[i], f->ref[i], B) == 0,
                     "backing block %d differs", i);
    f->state[i] = 0;		/* in the backing now, not the cache */
  }
}

START_TEST (test_write_read_reopen_destage)
{
  unsigned seed = 42 + _i;
  struct fx *f = fx_new (1);
  struct cache *c = cache_open (f->m, 1, uuid);

  ck_assert_msg (c != NULL, "%s", strata_last_error ());
  for (int k = 0; k < 60; k++) {
    uint32_t blk = rand_r (&seed) % NB;
    uint32_t n = 1 + rand_r (&seed) % MIN (16u, NB - blk);
    put (f, c, blk, n, rand_r (&seed) % 8 == 0, rand_r (&seed) % 2, &seed);
  }
  check_reads (f, c);
  ck_assert_int_eq (cache_flush (c), 0);
  cache_close (c);

  /* Recovery rebuilds the same view. */
  c = cache_open (f->m, 1, uuid);
  ck_assert_msg (c != NULL, "%s", strata_last_error ());
  check_reads (f, c);
  drain (f, c);
  check_reads (f, c);		/* nothing cached any more */
  cache_close (c);
  c = cache_open (f->m, 1, uuid);
  ck_assert_msg (c != NULL, "%s", strata_last_error ());
  check_reads (f, c);		/* the tail was recorded */
  cache_close (c);
  fx_free (f, 1);
}
END_TEST

/* cache_seal: refused while blocks (or a zero) are not destaged; once
 * drained, sealed, and every write is refused with ESHUTDOWN; FORCE
 * seals a cache that still holds blocks (a lost one). */
START_TEST (test_seal)
{
  unsigned seed = 5;
  struct fx *f = fx_new (1);
  struct cache *c = cache_open (f->m, 1, uuid);
  uint8_t *buf = device_alloc_buf (B);

  ck_assert_msg (c != NULL, "%s", strata_last_error ());
  put (f, c, 3, 4, false, false, &seed);
  ck_assert (!cache_seal (c, false));
  drain (f, c);
  put (f, c, 9, 2, true, false, &seed);	/* a zero alone */
  ck_assert (cache_holds (c, 1, 9, 1));
  ck_assert (!cache_seal (c, false));
  drain (f, c);
  ck_assert (cache_seal (c, false));
  ck_assert (!cache_holds (c, 1, 0, NB));
  memset (buf, 1, B);
  errno = 0;
  ck_assert_int_eq (cache_write (c, 1, 0, 1, buf, false), -1);
  ck_assert_int_eq (errno, ESHUTDOWN);
  ck_assert_int_eq (cache_put (c, 1, 0, 1, NULL, CACHE_NOWAIT), -1);
  ck_assert_int_eq (errno, ESHUTDOWN);
  ck_assert_int_eq (cache_write_clean (c, 1, 0, 1, buf), -1);
  cache_close (c);

  c = cache_open (f->m, 1, uuid);
  ck_assert_msg (c != NULL, "%s", strata_last_error ());
  put (f, c, 20, 3, false, true, &seed);
  ck_assert (!cache_seal (c, false));
  ck_assert (cache_seal (c, true));
  ck_assert_int_eq (cache_write (c, 1, 0, 1, buf, false), -1);
  ck_assert_int_eq (errno, ESHUTDOWN);
  cache_close (c);
  free (buf);
  fx_free (f, 1);
}
END_TEST

/* Many laps of the ring: writes, with destaging when it is half full;
 * a reopen at the end sees exactly what is not destaged yet. */
START_TEST (test_ring_wraps)
{
  unsigned seed = 7;
  struct fx *f = fx_new (1);
  struct cache *c = cache_open (f->m, 1, uuid);
  struct cache_sink s = { sink_write, sink_flush, f };
  struct cache_info ci;
  uint64_t written = 0;

  ck_assert_ptr_nonnull (c);
  while (written < 6 * (uint64_t) AREA) {
    uint32_t blk = rand_r (&seed) % NB;
    uint32_t n = 1 + rand_r (&seed) % MIN (64u, NB - blk);
    put (f, c, blk, n, false, false, &seed);
    written += (n + 1) * B;
    cache_info (c, &ci);
    if (ci.used > ci.log_size / 2) {
      f->last_key = 0;
      ck_assert_int_ge (cache_destage (c, 256 << 10, &s), 0);
      /* What was destaged left the cache: the reference follows. */
      for (int i = 0; i < NB; i++)
        if (f->state[i] == 1 && !memcmp (f->backing[i], f->ref[i], B)) {
          uint8_t one[B], h;
          ck_assert_int_ge (cache_read (c, 1, i, 1, one, &h), 0);
          if (!(h & 1))
            f->state[i] = 0;
        }
    }
  }
  check_reads (f, c);
  cache_close (c);
  c = cache_open (f->m, 1, uuid);
  ck_assert_msg (c != NULL, "%s", strata_last_error ());
  check_reads (f, c);
  drain (f, c);
  cache_close (c);
  fx_free (f, 1);
}
END_TEST

/* A record torn by a crash is passed over; the one written after it
 * (acknowledged with FUA) is recovered. */
START_TEST (test_torn_record)
{
  unsigned seed = 3;
  struct fx *f = fx_new (1);
  struct cache *c = cache_open (f->m, 1, uuid);
  FILE *fp;
  uint8_t junk[100];

  ck_assert_ptr_nonnull (c);
  put (f, c, 10, 2, false, true, &seed);	/* header at ring 0, data 4K.. */
  put (f, c, 20, 1, false, true, &seed);
  cache_close (c);
  fx_close_devs (f, 1);
  /* Tear the first record's second data block. */
  fp = fopen (f->path[0], "r+b");
  ck_assert_ptr_nonnull (fp);
  memset (junk, 0xee, sizeof junk);
  fseek (fp, 2 * B + 2 * B + 100, SEEK_SET);
  fwrite (junk, 1, sizeof junk, fp);
  fclose (fp);
  fx_open_devs (f, 1);
  c = cache_open (f->m, 1, uuid);
  ck_assert_msg (c != NULL, "%s", strata_last_error ());
  f->state[10] = f->state[11] = 0;	/* never acknowledged: gone */
  check_reads (f, c);
  cache_close (c);
  fx_free (f, 1);
}
END_TEST

/* Two mirrors: a block damaged on one is read from the other; with the
 * first missing, the second alone recovers everything. */
START_TEST (test_mirrors)
{
  unsigned seed = 11;
  struct fx *f = fx_new (2);
  struct cache *c = cache_open (f->m, 2, uuid);
  struct cache_info ci;
  FILE *fp;

  ck_assert_ptr_nonnull (c);
  for (int k = 0; k < 20; k++)
    put (f, c, k * 8, 4, false, false, &seed);
  ck_assert_int_eq (cache_flush (c), 0);
  cache_info (c, &ci);
  ck_assert_uint_eq (ci.mirrors, 2);
  /* Damage the data of the first record on mirror 0. */
  fp = fopen (f->path[0], "r+b");
  ck_assert_ptr_nonnull (fp);
  {
    int ch;
    fseek (fp, 2 * B + B + 5, SEEK_SET);
    ch = fgetc (fp);
    fseek (fp, 2 * B + B + 5, SEEK_SET);
    fputc (0x5a ^ ch, fp);
  }
  fclose (fp);
  check_reads (f, c);
  cache_close (c);

  f->m[0].dev = NULL;		/* mirror 0 is missing */
  c = cache_open (f->m, 2, uuid);
  ck_assert_msg (c != NULL, "%s", strata_last_error ());
  cache_info (c, &ci);
  ck_assert_uint_eq (ci.mirrors, 1);
  ck_assert (ci.failed[0]);
  check_reads (f, c);
  /* Writes that only mirror 1 takes: the header must say so before
   * they are acknowledged, or the next open could pick mirror 0 (the
   * same header seq) and lose them. */
  put (f, c, 3, 2, false, false, &seed);
  put (f, c, 200, 5, false, true, &seed);
  ck_assert_int_eq (cache_flush (c), 0);
  cache_close (c);
  f->m[0].dev = f->dev[0];	/* back, with its older records */
  c = cache_open (f->m, 2, uuid);
  ck_assert_msg (c != NULL, "%s", strata_last_error ());
  cache_info (c, &ci);
  ck_assert_uint_eq (ci.mirrors, 1);
  ck_assert (ci.failed[0]);
  check_reads (f, c);
  cache_close (c);
  fx_free (f, 2);
}
END_TEST

/* Write-through blocks are read from the cache, are not dirty, are
 * never handed to the sink, and leave with their records. */
START_TEST (test_clean)
{
  unsigned seed = 5;
  struct fx *f = fx_new (1);
  struct cache *c = cache_open (f->m, 1, uuid);
  struct cache_info ci;
  uint8_t *buf = device_alloc_buf (8 * B);

  ck_assert_ptr_nonnull (c);
  put (f, c, 0, 4, false, false, &seed);	/* dirty */
  for (size_t i = 0; i < 8 * B; i++)
    buf[i] = rand_r (&seed);
  ck_assert_int_eq (cache_write_clean (c, 1, 40, 8, buf), 0);
  for (int i = 0; i < 8; i++) {
    f->state[40 + i] = 1;
    memcpy (f->ref[40 + i], buf + (size_t) i * B, B);
    memcpy (f->backing[40 + i], buf + (size_t) i * B, B);
  }
  /* A dirty write over one clean block makes it dirty again. */
  put (f, c, 41, 1, false, false, &seed);
  cache_info (c, &ci);
  ck_assert_uint_eq (ci.dirty_blocks, 5);
  ck_assert_uint_eq (ci.clean_blocks, 7);
  check_reads (f, c);
  ck_assert (cache_holds (c, 1, 44, 1));
  ck_assert (!cache_holds (c, 1, 100, 50));
  ck_assert_int_eq (cache_flush (c), 0);
  cache_close (c);
  c = cache_open (f->m, 1, uuid);	/* recovery keeps them clean */
  ck_assert_msg (c != NULL, "%s", strata_last_error ());
  cache_info (c, &ci);
  ck_assert_uint_eq (ci.dirty_blocks, 5);
  check_reads (f, c);
  /* The sink must not see the clean blocks: spoil their backing. */
  for (int i = 40; i < 48; i++)
    if (i != 41) {
      memset (f->backing[i], 0xcc, B);
      f->state[i] = 0;		/* drain() compares the others */
    }
  drain (f, c);
  for (int i = 40; i < 48; i++)
    if (i != 41)
      ck_assert_uint_eq (f->backing[i][0], 0xcc);
  cache_info (c, &ci);
  ck_assert_uint_eq (ci.clean_blocks, 0);
  free (buf);
  cache_close (c);
  fx_free (f, 1);
}
END_TEST

Suite *
cache_suite (void)
{
  Suite *s = suite_create ("cache");
  TCase *tc = tcase_create ("cache");

  tcase_set_timeout (tc, 120);
  tcase_add_loop_test (tc, test_write_read_reopen_destage, 0, 4);
  tcase_add_test (tc, test_ring_wraps);
  tcase_add_test (tc, test_torn_record);
  tcase_add_test (tc, test_mirrors);
  tcase_add_test (tc, test_clean);
  tcase_add_test (tc, test_seal);
  suite_add_tcase (s, tc);
  return s;
}
