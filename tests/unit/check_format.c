/* Unit tests: crc32c, block checksums and the on-disk superblock/header codecs. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "crc32c.h"
#include "csum.h"
#include "error.h"
#include "format.h"
#include "suites.h"
#include "util.h"

START_TEST (test_crc32c_check_value)
{
  ck_assert_uint_eq (crc32c (0, "123456789", 9), 0xe3069283);
  /* Incremental equals one-shot, across the 8-byte fast path. */
  char buf[1000];
  for (size_t i = 0; i < sizeof buf; i++)
    buf[i] = i * 7;
  ck_assert_uint_eq (crc32c (crc32c (0, buf, 333), buf + 333, 667),
                     crc32c (0, buf, 1000));
}
END_TEST

/* Bit by bit, straight from the definition: the oracle for the fast
 * paths. */
static uint32_t
crc32c_bitwise (const unsigned char *p, size_t len)
{
  uint32_t c = 0xffffffff;

  while (len--) {
    c ^= *p++;
    for (int k = 0; k < 8; k++)
      c = (c & 1) ? (c >> 1) ^ 0x82f63b78u : c >> 1;
  }
  return ~c;
}

/* Lengths around the steps the fast paths take (16, 64, 256 and 512
 * bytes), whole 4 KiB blocks and 1 MiB, at every alignment mod 64,
 * one-shot and split. */
START_TEST (test_crc32c_long)
{
  static const size_t lens[] = { 0, 1, 7, 8, 15, 16, 17, 31, 63, 64, 65,
                                 255, 256, 257, 511, 512, 513, 1023, 1024,
                                 1360, 4079, 4080, 4095, 4096, 4097, 8192,
                                 12245, 1 << 20 };
  size_t cap = (1 << 20) + 64;
  unsigned char *buf = malloc (cap);
  uint32_t x = 12345;

  ck_assert_ptr_nonnull (buf);
  for (size_t i = 0; i < cap; i++) {
    x = x * 1103515245 + 12345;
    buf[i] = x >> 16;
  }
  for (size_t i = 0; i < sizeof lens / sizeof lens[0]; i++)
    for (size_t a = 0; a < 64; a++) {
      const unsigned char *p = buf + a;
      size_t len = lens[i], cut = len / 3 + a;
      if (len > 16384 && a % 8 != 0)
        continue;		/* the bitwise oracle is slow */
      uint32_t want = crc32c_bitwise (p, len);
      ck_assert_uint_eq (crc32c (0, p, len), want);
      if (cut <= len)
        ck_assert_uint_eq (crc32c (crc32c (0, p, cut), p + cut, len - cut),
                           want);
    }
  free (buf);
}
END_TEST

/* A buffer longer than an int (what ISA-L takes) sums as the same
 * bytes handed over in small pieces.  Read-only anonymous memory reads
 * as zeros and costs no RAM. */
START_TEST (test_crc32c_huge)
{
  size_t len = ((size_t) 1 << 32) + 4096 + 5, step = (size_t) 1 << 28;
  unsigned char *z = mmap (NULL, len, PROT_READ,
                           MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  uint32_t want = 0;

  ck_assert_ptr_ne (z, MAP_FAILED);
  for (size_t off = 0; off < len; off += step)
    want = crc32c (want, z + off, len - off < step ? len - off : step);
  ck_assert_uint_eq (crc32c (0, z, len), want);
  ck_assert_uint_ne (want, crc32c (0, z, len - 1));
  munmap (z, len);
}
END_TEST

/* The write path's one-pass copy: the same bytes and the same sums as
 * a copy and csum_blocks, from a source that is not aligned. */
START_TEST (test_csum_copy_blocks)
{
  enum { N = 5 };
  static char src[N * STRATA_BLOCK + 3], dst[N * STRATA_BLOCK];
  uint32_t got[N], want[N];

  for (size_t i = 0; i < sizeof src; i++)
    src[i] = i * 13 + (i >> 9);
  csum_copy_blocks (dst, src + 3, sizeof dst, got);
  ck_assert_mem_eq (dst, src + 3, sizeof dst);
  csum_blocks (src + 3, sizeof dst, want);
  ck_assert_mem_eq (got, want, sizeof got);
  for (int i = 0; i < N; i++)
    ck_assert_uint_eq (got[i], crc32c (0, src + 3 + i * STRATA_BLOCK,
                                       STRATA_BLOCK));
}
END_TEST

START_TEST (test_sb_roundtrip_and_damage)
{
  uint8_t blk[4096] = { 0 };
  struct format_sb sb = { .version = FORMAT_VERSION, .flags = FORMAT_SB_META,
                          .dev_index = 3, .meta_replicas = 3,
                          .dev_size = 1ull << 30, .extent_size = 4 << 20,
                          .meta_offset = FORMAT_META_OFFSET,
                          .meta_size = 16 << 20, .created = 1 };
  struct format_sb out;

  format_data_layout (&sb);
  /* 1 GiB - 17 MiB of room, 4 MiB + 4 KiB per extent, MiB-aligned data. */
  ck_assert_uint_eq (sb.csum_offset, FORMAT_META_OFFSET + (16 << 20));
  ck_assert_uint_eq (sb.csum_slot, 4096);
  ck_assert_uint_eq (sb.data_offset % (1 << 20), 0);
  ck_assert_uint_ge (sb.data_offset, sb.csum_offset + sb.extent_count * 4096);
  ck_assert_uint_le (sb.data_offset + sb.extent_count * sb.extent_size,
                     sb.dev_size);
  ck_assert_uint_eq (sb.extent_count, 251);
  sb.extent_count = 200;

  strcpy (sb.pool_name, "tank");
  strcpy (sb.dev_name, "d3");
  memset (sb.pool_uuid, 0xab, 16);
  format_sb_encode (&sb, blk);
  ck_assert_int_eq (format_sb_decode (blk, &out), 0);
  ck_assert_uint_eq (out.dev_index, 3);
  ck_assert_uint_eq (out.extent_count, 200);
  ck_assert_uint_eq (out.csum_offset, sb.csum_offset);
  ck_assert_uint_eq (out.csum_slot, 4096);
  ck_assert_str_eq (out.pool_name, "tank");
  ck_assert_mem_eq (out.pool_uuid, sb.pool_uuid, 16);

  /* Every single-bit flip in the superblock is detected. */
  for (size_t bit = 0; bit < 512 * 8; bit += 13) {
    blk[bit / 8] ^= 1 << (bit % 8);
    ck_assert_int_eq (format_sb_decode (blk, &out), -1);
    blk[bit / 8] ^= 1 << (bit % 8);
  }
  memset (blk, 0, sizeof blk);
  ck_assert_int_eq (format_sb_decode (blk, &out), -1);
  ck_assert_int_eq (errno, EINVAL);
}
END_TEST

START_TEST (test_fbuf_bounds)
{
  struct fbuf w, r;
  char s[8];

  fbuf_init_write (&w);
  fbuf_put_u32 (&w, 0xdeadbeef);
  fbuf_put_str (&w, "hello");
  fbuf_init_read (&r, w.p, w.len);
  ck_assert_uint_eq (fbuf_get_u32 (&r), 0xdeadbeef);
  fbuf_get_str (&r, s, sizeof s);
  ck_assert_str_eq (s, "hello");
  ck_assert (!r.bad);
  fbuf_get_u64 (&r);		/* past the end */
  ck_assert (r.bad);
  /* A truncated buffer never reads out of bounds. */
  fbuf_init_read (&r, w.p, 6);
  fbuf_get_u32 (&r);
  fbuf_get_str (&r, s, sizeof s);
  ck_assert (r.bad);
  fbuf_free (&w);
}
END_TEST

/* format_meta_size_for() gives the smallest whole MiB whose checkpoint
 * slot holds the checkpoint, header and all. */
START_TEST (test_meta_size_for)
{
  static const uint64_t sizes[] = { 1, 4096, 1u << 20, 1500000, 6u << 20,
                                    24u << 20, 400ull << 20, 5ull << 30 };

  for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
    struct format_meta_layout l;
    uint64_t m = format_meta_size_for (sizes[i]);
    ck_assert_uint_eq (m % (1 << 20), 0);
    ck_assert_uint_ge (m, FORMAT_MIN_META_SIZE);
    format_meta_layout (m, &l);
    ck_assert_uint_ge (l.ckpt_size, sizes[i] + sizeof (struct format_ck_disk));
    ck_assert_uint_ge (l.log_size, l.ckpt_size / 2);
    if (m > FORMAT_MIN_META_SIZE) {
      format_meta_layout (m - (1 << 20), &l);
      ck_assert_uint_lt (l.ckpt_size, sizes[i] + sizeof (struct format_ck_disk));
    }
  }
}
END_TEST

Suite *
format_suite (void)
{
  Suite *s = suite_create ("format");
  TCase *tc = tcase_create ("codec");

  tcase_add_test (tc, test_crc32c_check_value);
  tcase_add_test (tc, test_crc32c_long);
  tcase_add_test (tc, test_crc32c_huge);
  tcase_add_test (tc, test_csum_copy_blocks);
  tcase_add_test (tc, test_sb_roundtrip_and_damage);
  tcase_add_test (tc, test_fbuf_bounds);
  tcase_add_test (tc, test_meta_size_for);
  suite_add_tcase (s, tc);
  return s;
}
