/* strata: CRC-32C, hardware-accelerated where possible (see crc32c.h).
 *
 * Design notes: the software path is the classic byte-wise table for the
 * reflected polynomial 0x82f63b78.  The hardware path processes 8 bytes
 * per instruction; it is chosen once, at first use, with cpuid.
 *
 * The crc32 instruction takes 3 cycles but a new one can start every
 * cycle, so one dependent chain runs at a third of the speed the core
 * can give.  The hardware path therefore runs three chains over three
 * consecutive STREAM-byte parts of the buffer, each from state 0 except
 * the first, and joins them.  A CRC register is linear over GF(2): the
 * state after data D from state s is Z(s) ^ f(0, D), where Z(s) is the
 * state after STREAM zero bytes from s.  Z is applied through four
 * 256-entry tables, one per byte of s (shift_table), built at first use
 * by running the instruction itself over zeros.  3 * STREAM = 4080
 * bytes, so a 4 KiB block, the unit of every data checksum, is one
 * three-way step and 16 bytes.
 */
#include <pthread.h>
#include <string.h>

#include "crc32c.h"

static uint32_t table[256];
static int have_sse42;

#if defined(__x86_64__)
#define STREAM 1360		/* bytes per chain; a multiple of 8 */
static uint32_t shift_table[4][256];	/* Z, byte by byte (see above) */
static void shift_init (void);
#endif
static pthread_once_t once = PTHREAD_ONCE_INIT;

static void
crc32c_init (void)
{
  for (uint32_t i = 0; i < 256; i++) {
    uint32_t c = i;
    for (int k = 0; k < 8; k++)
      c = (c & 1) ? (c >> 1) ^ 0x82f63b78u : c >> 1;
    table[i] = c;
  }
#if defined(__x86_64__)
  __builtin_cpu_init ();
  have_sse42 = __builtin_cpu_supports ("sse4.2");
  if (have_sse42)
    shift_init ();
#endif
}

static uint32_t
crc32c_sw (uint32_t crc, const unsigned char *p, size_t len)
{
  while (len--)
    crc = table[(crc ^ *p++) & 0xff] ^ (crc >> 8);
  return crc;
}

#if defined(__x86_64__)
__attribute__ ((target ("sse4.2")))
static uint32_t
crc32c_hw1 (uint32_t crc, const unsigned char *p, size_t len)
{
  uint64_t c = crc;

  while (len >= 8) {
    uint64_t v;
    memcpy (&v, p, 8);
    c = __builtin_ia32_crc32di (c, v);
    p += 8;
    len -= 8;
  }
  crc = c;
  while (len--)
    crc = __builtin_ia32_crc32qi (crc, *p++);
  return crc;
}

/* Z(s): the state after STREAM zero bytes from state S. */
static uint32_t
shift (uint32_t s)
{
  return shift_table[0][s & 0xff] ^ shift_table[1][(s >> 8) & 0xff]
    ^ shift_table[2][(s >> 16) & 0xff] ^ shift_table[3][s >> 24];
}

static void
shift_init (void)
{
  static const unsigned char zeros[STREAM];

  for (unsigned k = 0; k < 4; k++)
    for (uint32_t b = 0; b < 256; b++)
      shift_table[k][b] = crc32c_hw1 (b << (8 * k), zeros, STREAM);
}

__attribute__ ((target ("sse4.2")))
static uint32_t
crc32c_hw (uint32_t crc, const unsigned char *p, size_t len)
{
  while (len >= 3 * STREAM) {
    uint64_t c0 = crc, c1 = 0, c2 = 0;
    for (size_t i = 0; i < STREAM; i += 8) {
      uint64_t v0, v1, v2;
      memcpy (&v0, p + i, 8);
      memcpy (&v1, p + STREAM + i, 8);
      memcpy (&v2, p + 2 * STREAM + i, 8);
      c0 = __builtin_ia32_crc32di (c0, v0);
      c1 = __builtin_ia32_crc32di (c1, v1);
      c2 = __builtin_ia32_crc32di (c2, v2);
    }
    crc = shift (shift ((uint32_t) c0) ^ (uint32_t) c1) ^ (uint32_t) c2;
    p += 3 * STREAM;
    len -= 3 * STREAM;
  }
  return crc32c_hw1 (crc, p, len);
}
#endif

uint32_t
crc32c (uint32_t crc, const void *buf, size_t len)
{
  pthread_once (&once, crc32c_init);
  crc = ~crc;
#if defined(__x86_64__)
  if (have_sse42)
    return ~crc32c_hw (crc, buf, len);
#endif
  return ~crc32c_sw (crc, buf, len);
}
