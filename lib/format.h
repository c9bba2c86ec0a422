/* strata: every on-disk structure, in one place.
 *
 * Design notes
 * ------------
 * A device of a pool looks like this:
 *
 *   0          superblock (4 KiB block; struct format_sb_disk at its start)
 *   4 KiB      reserved up to 1 MiB (never written; init checks it)
 *   1 MiB      metadata area, meta_size bytes (journal; see below)
 *   csum_off   checksum area: one slot of csum_slot bytes per extent
 *   data_off   extent 0, extent 1, ... extent_count-1, each extent_size bytes
 *
 * A checksum slot holds the crc32c of every 4 KiB block of its extent, as
 * little-endian uint32_t, rounded up to whole 4 KiB pages (so that no two
 * extents share a page).  Slots are written lazily, in whole pages; they
 * are only trusted for columns that are clean in the journal (resync.h).
 *
 * Every device has a metadata area, so any device can become a metadata
 * replica.  Which devices hold the journal is the membership: a list of
 * device indexes with an epoch, written into the superblocks of the
 * members (and of a member leaving, with FORMAT_SB_META cleared).  The
 * superblock with the highest epoch names the members (see pool.c,
 * "metadata membership"); an epoch of 0 is a pool made before the list,
 * whose members are the devices flagged FORMAT_SB_META.
 *
 * The metadata area:
 *
 *   +0         header slot 0 (4 KiB)   two alternating headers; the valid
 *   +4 KiB     header slot 1 (4 KiB)   one with the higher seq wins (LMDB)
 *   +8 KiB     checkpoint slot 0       ckpt_size bytes each
 *   ...        checkpoint slot 1
 *   ...        log region              log records, 4 KiB aligned
 *
 * Commit point of a checkpoint: write the checkpoint to the slot the
 * current header does not name, flush, then write the other header slot
 * with seq+1 and FUA.  Log records written after that carry the new
 * header's log_id; records of older generations are ignored on replay.
 *
 * All fields are little-endian and fixed width.  In-memory structures are
 * separate (struct format_sb and friends) and converted by the
 * encode/decode functions below; an in-memory struct is never written.
 */
#ifndef STRATA_FORMAT_H
#define STRATA_FORMAT_H

#include <assert.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define FORMAT_VERSION 2
#define FORMAT_SB_MAGIC "STRATASB"
#define FORMAT_MH_MAGIC "STRATAMH"
#define FORMAT_CK_MAGIC "STRATACK"
#define FORMAT_LR_MAGIC "STRATALR"

#define FORMAT_SB_OFFSET 0
#define FORMAT_META_OFFSET (1024 * 1024)	/* start of metadata area */
#define FORMAT_RESERVED_END FORMAT_META_OFFSET
#define FORMAT_HDR_SLOT 4096
#define FORMAT_MIN_META_SIZE (4 * 1024 * 1024)
#define FORMAT_EXTENT_MAX (1ull << 30)	/* largest extent_size */
#define FORMAT_DEFAULT_META_SIZE (64 * 1024 * 1024)

#define FORMAT_SB_META 0x1	/* device holds a metadata replica */

#define FORMAT_NAME_MAX 64	/* names, including the NUL */
#define FORMAT_META_MAX 16	/* metadata replicas listed at most */

/* Superblock, at offset 0 of every device. */
struct format_sb_disk {
  char magic[8];
  uint32_t version;
  uint32_t flags;
  uint8_t pool_uuid[16];
  uint8_t dev_uuid[16];
  uint32_t dev_index;
  uint32_t meta_replicas;	/* how many devices hold the journal */
  uint64_t dev_size;
  uint64_t extent_size;
  uint64_t meta_offset;
  uint64_t meta_size;
  uint64_t data_offset;
  uint64_t extent_count;
  uint64_t created;
  char pool_name[FORMAT_NAME_MAX];
  char dev_name[FORMAT_NAME_MAX];
  uint64_t csum_offset;		/* start of the checksum area */
  uint64_t csum_slot;		/* checksum bytes per extent */
  uint64_t meta_epoch;		/* generation of meta_members */
  uint32_t meta_members[FORMAT_META_MAX];	/* [meta_replicas] indexes */
  uint8_t reserved[180];
  uint32_t crc;			/* crc32c of every byte before it */
} __attribute__ ((packed));
static_assert (sizeof (struct format_sb_disk) == 512, "superblock size");

/* Metadata header, in each of the two header slots. */
struct format_mh_disk {
  char magic[8];
  uint32_t version;
  uint32_t ckpt_slot;		/* 0 or 1 */
  uint8_t pool_uuid[16];
  uint64_t seq;			/* the valid slot with the higher seq wins */
  uint64_t term;		/* term of the writer */
  uint64_t ckpt_index;		/* last journal index in the checkpoint */
  uint64_t ckpt_term;		/* term of that entry */
  uint64_t ckpt_len;		/* payload bytes */
  uint64_t log_id;		/* generation of the log that follows */
  uint32_t ckpt_crc;		/* crc32c of the checkpoint payload */
  uint8_t reserved[168];
  uint32_t crc;
} __attribute__ ((packed));
static_assert (sizeof (struct format_mh_disk) == 256, "meta header size");

/* Checkpoint header, at the start of a checkpoint slot; payload follows. */
struct format_ck_disk {
  char magic[8];
  uint64_t index;
  uint64_t term;
  uint64_t log_id;
  uint64_t len;
  uint32_t payload_crc;
  uint8_t reserved[16];
  uint32_t crc;
} __attribute__ ((packed));
static_assert (sizeof (struct format_ck_disk) == 64, "checkpoint header size");

/* A log record: one group commit.  Entries follow, then zero padding to
 * a 4 KiB boundary. */
struct format_lr_disk {
  char magic[8];
  uint64_t log_id;
  uint64_t first_index;
  uint64_t term;		/* term of the writer */
  uint32_t nentries;
  uint32_t payload_len;		/* bytes of entries after this header */
  uint32_t payload_crc;
  uint8_t reserved[16];
  uint32_t crc;
} __attribute__ ((packed));
static_assert (sizeof (struct format_lr_disk) == 64, "log record size");

/* One journal entry inside a record: header, payload, then a crc32c of
 * header and payload, padded to 8 bytes. */
struct format_le_disk {
  uint64_t index;
  uint64_t term;
  uint16_t type;
  uint16_t reserved;
  uint32_t len;
} __attribute__ ((packed));
static_assert (sizeof (struct format_le_disk) == 24, "log entry size");

/* ---- the cache log (cache.h) ----
 *
 * A cache area is two alternating 4 KiB header slots, then a ring of
 * log_size bytes.  Every record starts on a 4 KiB boundary with a 4 KiB
 * header block and never wraps: one that would is preceded by a PAD
 * record to the end of the ring.  Positions are LSNs, byte offsets in an
 * endless log; a record at LSN x lies at ring offset x % log_size.  The
 * header's tail is the clean point: every record below it is destaged
 * (or dead), so recovery reads the ring from tail to tail + log_size and
 * takes every record whose header and data checksums match and whose
 * LSN is its position in that window.  Records of an earlier lap have a
 * lower LSN, records of another cache another log_id.  The header's
 * FAILED mask names the mirrors dropped after a failed write or flush:
 * they missed records, so the header with the higher seq (which only a
 * working mirror can hold) keeps them from ever being read again. */
#define FORMAT_CH_MAGIC "STRATACH"
#define FORMAT_CR_MAGIC "STRATACR"
#define FORMAT_CACHE_HDRS (2 * 4096)	/* header slots before the ring */
#define FORMAT_CR_MAX_BLOCKS 1000	/* data blocks per record at most */

enum format_cr_type { FORMAT_CR_WRITE = 1, FORMAT_CR_ZERO = 2,
                      FORMAT_CR_PAD = 3 };
/* A write whose data the backing copies hold already (write-through):
 * kept for reads, never destaged. */
#define FORMAT_CR_CLEAN 0x1

/* Cache header, in each of the two header slots. */
struct format_ch_disk {
  char magic[8];
  uint32_t version;
  uint32_t failed;		/* mirrors dropped (bit i: mirror i) */
  uint8_t pool_uuid[16];
  uint64_t log_id;		/* drawn at format; records carry it */
  uint64_t seq;			/* the valid slot with the higher seq wins */
  uint64_t tail;		/* LSN of the clean point */
  uint64_t log_size;		/* bytes of the ring */
  uint8_t reserved[188];
  uint32_t crc;
} __attribute__ ((packed));
static_assert (sizeof (struct format_ch_disk) == 256, "cache header size");

/* A record header, at the start of its 4 KiB header block; for a write,
 * NBLK data blocks follow the header block. */
struct format_cr_disk {
  char magic[8];
  uint64_t log_id;
  uint64_t lsn;			/* its position in the endless log */
  uint32_t type;		/* enum format_cr_type */
  uint32_t vol;			/* volume id */
  uint64_t blk;			/* first 4 KiB block of the volume */
  uint32_t nblk;		/* blocks written or zeroed; PAD: blocks skipped */
  uint32_t flags;		/* FORMAT_CR_CLEAN */
  uint8_t reserved[12];
  uint32_t crc;			/* of this header and the NBLK block crcs */
  /* Followed in the header block by NBLK little-endian crc32c, one per
   * data block (writes only). */
} __attribute__ ((packed));
static_assert (sizeof (struct format_cr_disk) == 64, "cache record size");
static_assert (sizeof (struct format_cr_disk) + 4 * FORMAT_CR_MAX_BLOCKS
               <= 4096, "a record's block checksums fit its header block");

/* A cache device: its superblock at offset 0 (instead of a member's),
 * its cache area (headers and ring, above) from area_off to area_off +
 * area_size.  Mirrors of one cache share cache_uuid; SLOT says which
 * mirror this is. */
#define FORMAT_CS_MAGIC "STRATACS"
#define FORMAT_CACHE_AREA_OFFSET (1024 * 1024)

struct format_cs_disk {
  char magic[8];
  uint32_t version;
  uint32_t slot;		/* 0 or 1 */
  uint32_t nmirrors;		/* 1 or 2 */
  uint32_t reserved0;
  uint8_t pool_uuid[16];
  uint8_t cache_uuid[16];
  uint8_t dev_uuid[16];
  uint64_t area_off;
  uint64_t area_size;
  uint64_t created;
  char pool_name[FORMAT_NAME_MAX];
  char dev_name[FORMAT_NAME_MAX];
  uint8_t reserved[284];
  uint32_t crc;			/* crc32c of every byte before it */
} __attribute__ ((packed));
static_assert (sizeof (struct format_cs_disk) == 512, "cache superblock size");

struct format_cs {
  uint32_t slot, nmirrors;
  uint8_t pool_uuid[16], cache_uuid[16], dev_uuid[16];
  uint64_t area_off, area_size, created;
  char pool_name[FORMAT_NAME_MAX];
  char dev_name[FORMAT_NAME_MAX];
};

void format_cs_encode (const struct format_cs *cs, void *blk);
/* Returns 0; or -1 with EINVAL (not a cache superblock) or EBADMSG. */
int format_cs_decode (const void *blk, struct format_cs *cs);

/* In-memory superblock. */
struct format_sb {
  uint32_t version;
  uint32_t flags;
  uint8_t pool_uuid[16];
  uint8_t dev_uuid[16];
  uint32_t dev_index;
  uint32_t meta_replicas;
  uint64_t dev_size;
  uint64_t extent_size;
  uint64_t meta_offset;
  uint64_t meta_size;
  uint64_t data_offset;
  uint64_t extent_count;
  uint64_t created;
  char pool_name[FORMAT_NAME_MAX];
  char dev_name[FORMAT_NAME_MAX];
  uint64_t csum_offset;
  uint64_t csum_slot;
  uint64_t meta_epoch;
  uint32_t meta_members[FORMAT_META_MAX];
};

/* Checksum bytes kept per extent of EXTENT_SIZE bytes. */
uint64_t format_csum_slot (uint64_t extent_size);

/* Lay out a device of DEV_SIZE bytes whose metadata area is META_SIZE
 * bytes: fills SB's csum_offset, csum_slot, data_offset and extent_count
 * (0 when not even one extent fits).  SB's dev_size, extent_size,
 * meta_offset and meta_size must be set. */
void format_data_layout (struct format_sb *sb);

/* In-memory metadata header. */
struct format_mh {
  uint8_t pool_uuid[16];
  uint32_t ckpt_slot;
  uint64_t seq, term, ckpt_index, ckpt_term, ckpt_len, log_id;
  uint32_t ckpt_crc;
};

/* Geometry of a metadata area of META_SIZE bytes. */
struct format_meta_layout {
  uint64_t ckpt_off[2];		/* relative to the metadata area */
  uint64_t ckpt_size;
  uint64_t log_off;
  uint64_t log_size;
};
void format_meta_layout (uint64_t meta_size, struct format_meta_layout *l);
/* The smallest metadata area (a whole number of MiB) whose checkpoint
 * slot holds a checkpoint of CKPT_BYTES. */
uint64_t format_meta_size_for (uint64_t ckpt_bytes);

/* Encode SB into a zeroed 4 KiB block BLK. */
void format_sb_encode (const struct format_sb *sb, void *blk);
/* Decode and verify.  Returns 0; or -1 with errno EINVAL (no strata
 * magic: "not a strata device") or EBADMSG (damaged) and a message. */
int format_sb_decode (const void *blk, struct format_sb *sb);

void format_mh_encode (const struct format_mh *mh, void *blk);
int format_mh_decode (const void *blk, struct format_mh *mh);

/* Bounded little-endian encoder/decoder for journal payloads.  A failed
 * get sets ->bad and returns 0; callers check ->bad once at the end. */
struct fbuf {
  uint8_t *p;
  size_t len, pos, cap;
  bool bad;
  bool owned;			/* p was malloc'd by the put functions */
};
void fbuf_init_read (struct fbuf *b, const void *p, size_t len);
void fbuf_init_write (struct fbuf *b);	/* grows with malloc */
void fbuf_free (struct fbuf *b);
void fbuf_put_u8 (struct fbuf *b, uint8_t v);
void fbuf_put_u16 (struct fbuf *b, uint16_t v);
void fbuf_put_u32 (struct fbuf *b, uint32_t v);
void fbuf_put_u64 (struct fbuf *b, uint64_t v);
void fbuf_put_bytes (struct fbuf *b, const void *p, size_t n);
void fbuf_put_str (struct fbuf *b, const char *s);	/* u16 length + bytes */
uint8_t fbuf_get_u8 (struct fbuf *b);
uint16_t fbuf_get_u16 (struct fbuf *b);
uint32_t fbuf_get_u32 (struct fbuf *b);
uint64_t fbuf_get_u64 (struct fbuf *b);
void fbuf_get_bytes (struct fbuf *b, void *p, size_t n);
/* Copies at most CAP-1 bytes and NUL-terminates; a longer string is bad. */
void fbuf_get_str (struct fbuf *b, char *s, size_t cap);

/* The largest volume: 1 EiB, and at most FORMAT_CHUNKS_MAX chunks of
 * WIDTH extents each, which bounds the chunk map held in memory (its top
 * level is 8 bytes per 1024 chunks, and every checkpoint walks it). */
#define FORMAT_VOLUME_MAX (1ull << 60)
#define FORMAT_CHUNKS_MAX (1ull << 32)
static inline uint64_t
format_volume_max (uint64_t extent_size, uint32_t width)
{
  uint64_t chunk = extent_size * width;	/* at most 2^30 * 64 */

  if (chunk >= FORMAT_VOLUME_MAX / FORMAT_CHUNKS_MAX)
    return FORMAT_VOLUME_MAX;
  return chunk * FORMAT_CHUNKS_MAX;
}

#endif /* STRATA_FORMAT_H */
