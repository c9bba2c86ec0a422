/* strata: encoding and decoding of on-disk structures (see format.h). */
#include <endian.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "crc32c.h"
#include "error.h"
#include "format.h"
#include "util.h"

void
format_meta_layout (uint64_t meta_size, struct format_meta_layout *l)
{
  uint64_t avail = meta_size - 2 * FORMAT_HDR_SLOT;

  l->ckpt_size = round_down (avail * 3 / 8, STRATA_BLOCK);
  l->ckpt_off[0] = 2 * FORMAT_HDR_SLOT;
  l->ckpt_off[1] = l->ckpt_off[0] + l->ckpt_size;
  l->log_off = l->ckpt_off[1] + l->ckpt_size;
  l->log_size = round_down (meta_size - l->log_off, STRATA_BLOCK);
}

uint64_t
format_meta_size_for (uint64_t ckpt_bytes)
{
  struct format_meta_layout l;
  uint64_t size = round_up (2 * FORMAT_HDR_SLOT + ckpt_bytes / 3 * 8,
                            1 << 20);

  size = MAX (size, FORMAT_MIN_META_SIZE);
  for (format_meta_layout (size, &l);
       l.ckpt_size < ckpt_bytes + sizeof (struct format_ck_disk);
       format_meta_layout (size, &l))
    size += 1 << 20;
  return size;
}

uint64_t
format_csum_slot (uint64_t extent_size)
{
  return round_up (extent_size / STRATA_BLOCK * 4, STRATA_BLOCK);
}

void
format_data_layout (struct format_sb *sb)
{
  uint64_t slot = format_csum_slot (sb->extent_size);
  uint64_t off = sb->meta_offset + sb->meta_size, n = 0, data;

  if (sb->dev_size > off)
    n = (sb->dev_size - off) / (sb->extent_size + slot);
  n = MIN (n, UINT32_MAX);
  /* Extents start on a MiB boundary; that may cost one of them. */
  for (;;) {
    data = round_up (off + n * slot, 1024 * 1024);
    if (n == 0 || data + n * sb->extent_size <= sb->dev_size)
      break;
    n--;
  }
  sb->csum_offset = off;
  sb->csum_slot = slot;
  sb->data_offset = data;
  sb->extent_count = n;
}

void
format_sb_encode (const struct format_sb *sb, void *blk)
{
  struct format_sb_disk d;

  memset (&d, 0, sizeof d);
  memcpy (d.magic, FORMAT_SB_MAGIC, 8);
  d.version = htole32 (sb->version);
  d.flags = htole32 (sb->flags);
  memcpy (d.pool_uuid, sb->pool_uuid, 16);
  memcpy (d.dev_uuid, sb->dev_uuid, 16);
  d.dev_index = htole32 (sb->dev_index);
  d.meta_replicas = htole32 (sb->meta_replicas);
  d.dev_size = htole64 (sb->dev_size);
  d.extent_size = htole64 (sb->extent_size);
  d.meta_offset = htole64 (sb->meta_offset);
  d.meta_size = htole64 (sb->meta_size);
  d.data_offset = htole64 (sb->data_offset);
  d.extent_count = htole64 (sb->extent_count);
  d.created = htole64 (sb->created);
  memcpy (d.pool_name, sb->pool_name, FORMAT_NAME_MAX);
  d.pool_name[FORMAT_NAME_MAX - 1] = '\0';
  memcpy (d.dev_name, sb->dev_name, FORMAT_NAME_MAX);
  d.dev_name[FORMAT_NAME_MAX - 1] = '\0';
  d.csum_offset = htole64 (sb->csum_offset);
  d.csum_slot = htole64 (sb->csum_slot);
  d.meta_epoch = htole64 (sb->meta_epoch);
  for (size_t i = 0; i < FORMAT_META_MAX; i++)
    d.meta_members[i] = htole32 (i < sb->meta_replicas
                                 ? sb->meta_members[i] : 0);
  d.crc = htole32 (crc32c (0, &d, offsetof (struct format_sb_disk, crc)));
  memcpy (blk, &d, sizeof d);
}

int
format_sb_decode (const void *blk, struct format_sb *sb)
{
  struct format_sb_disk d;

  memcpy (&d, blk, sizeof d);
  if (memcmp (d.magic, FORMAT_SB_MAGIC, 8) != 0)
    return strata_error (EINVAL, "no strata superblock");
  if (le32toh (d.crc) != crc32c (0, &d, offsetof (struct format_sb_disk, crc)))
    return strata_error (EBADMSG, "strata superblock checksum mismatch");
  if (le32toh (d.version) != FORMAT_VERSION)
    return strata_error (EBADMSG, "superblock version %u is not supported "
                         "(this strata writes version %u; a pool made by "
                         "another version must be initialised again)",
                         le32toh (d.version), FORMAT_VERSION);
  memset (sb, 0, sizeof *sb);
  sb->version = le32toh (d.version);
  sb->flags = le32toh (d.flags);
  memcpy (sb->pool_uuid, d.pool_uuid, 16);
  memcpy (sb->dev_uuid, d.dev_uuid, 16);
  sb->dev_index = le32toh (d.dev_index);
  sb->meta_replicas = le32toh (d.meta_replicas);
  sb->dev_size = le64toh (d.dev_size);
  sb->extent_size = le64toh (d.extent_size);
  sb->meta_offset = le64toh (d.meta_offset);
  sb->meta_size = le64toh (d.meta_size);
  sb->data_offset = le64toh (d.data_offset);
  sb->extent_count = le64toh (d.extent_count);
  sb->created = le64toh (d.created);
  memcpy (sb->pool_name, d.pool_name, FORMAT_NAME_MAX);
  sb->pool_name[FORMAT_NAME_MAX - 1] = '\0';
  memcpy (sb->dev_name, d.dev_name, FORMAT_NAME_MAX);
  sb->dev_name[FORMAT_NAME_MAX - 1] = '\0';
  sb->csum_offset = le64toh (d.csum_offset);
  sb->csum_slot = le64toh (d.csum_slot);
  sb->meta_epoch = le64toh (d.meta_epoch);
  for (size_t i = 0; i < FORMAT_META_MAX; i++)
    sb->meta_members[i] = le32toh (d.meta_members[i]);

  /* Geometry must be self-consistent, or later arithmetic overflows. */
  if (!is_power_of_2 (sb->extent_size) || sb->extent_size < STRATA_BLOCK
      || sb->extent_size > FORMAT_EXTENT_MAX
      || sb->meta_size < FORMAT_MIN_META_SIZE
      || sb->meta_offset != FORMAT_META_OFFSET
      || sb->meta_replicas == 0
      || sb->meta_replicas > (sb->meta_epoch ? FORMAT_META_MAX : 64)
      || sb->csum_offset < sb->meta_offset + sb->meta_size
      || sb->csum_slot != format_csum_slot (sb->extent_size)
      || sb->extent_count > UINT32_MAX
      || sb->data_offset < sb->csum_offset + sb->extent_count * sb->csum_slot
      || sb->data_offset > sb->dev_size
      || sb->extent_count > (sb->dev_size - sb->data_offset) / sb->extent_size)
    return strata_error (EBADMSG, "strata superblock geometry is inconsistent");
  return 0;
}

void
format_mh_encode (const struct format_mh *mh, void *blk)
{
  struct format_mh_disk d;

  memset (&d, 0, sizeof d);
  memcpy (d.magic, FORMAT_MH_MAGIC, 8);
  d.version = htole32 (FORMAT_VERSION);
  d.ckpt_slot = htole32 (mh->ckpt_slot);
  memcpy (d.pool_uuid, mh->pool_uuid, 16);
  d.seq = htole64 (mh->seq);
  d.term = htole64 (mh->term);
  d.ckpt_index = htole64 (mh->ckpt_index);
  d.ckpt_term = htole64 (mh->ckpt_term);
  d.ckpt_len = htole64 (mh->ckpt_len);
  d.log_id = htole64 (mh->log_id);
  d.ckpt_crc = htole32 (mh->ckpt_crc);
  d.crc = htole32 (crc32c (0, &d, offsetof (struct format_mh_disk, crc)));
  memcpy (blk, &d, sizeof d);
}

int
format_mh_decode (const void *blk, struct format_mh *mh)
{
  struct format_mh_disk d;

  memcpy (&d, blk, sizeof d);
  if (memcmp (d.magic, FORMAT_MH_MAGIC, 8) != 0)
    return strata_error (EINVAL, "no metadata header");
  if (le32toh (d.crc) != crc32c (0, &d, offsetof (struct format_mh_disk, crc)))
    return strata_error (EBADMSG, "metadata header checksum mismatch");
  if (le32toh (d.version) != FORMAT_VERSION || le32toh (d.ckpt_slot) > 1)
    return strata_error (EBADMSG, "metadata header has bad version or slot");
  memcpy (mh->pool_uuid, d.pool_uuid, 16);
  mh->ckpt_slot = le32toh (d.ckpt_slot);
  mh->seq = le64toh (d.seq);
  mh->term = le64toh (d.term);
  mh->ckpt_index = le64toh (d.ckpt_index);
  mh->ckpt_term = le64toh (d.ckpt_term);
  mh->ckpt_len = le64toh (d.ckpt_len);
  mh->log_id = le64toh (d.log_id);
  mh->ckpt_crc = le32toh (d.ckpt_crc);
  return 0;
}

/* ---- fbuf ---- */

void
fbuf_init_read (struct fbuf *b, const void *p, size_t len)
{
  b->p = (uint8_t *) p;
  b->len = len;
  b->cap = len;
  b->pos = 0;
  b->bad = false;
  b->owned = false;
}

void
fbuf_init_write (struct fbuf *b)
{
  memset (b, 0, sizeof *b);
  b->owned = true;
}

void
fbuf_free (struct fbuf *b)
{
  if (b->owned)
    free (b->p);
  b->p = NULL;
  b->len = b->cap = b->pos = 0;
}

void
fbuf_put_bytes (struct fbuf *b, const void *p, size_t n)
{
  if (b->bad)
    return;
  if (b->len + n > b->cap) {
    size_t cap = b->cap ? b->cap : 256;
    uint8_t *np;
    while (cap < b->len + n)
      cap *= 2;
    np = realloc (b->p, cap);
    if (np == NULL) {
      b->bad = true;
      return;
    }
    b->p = np;
    b->cap = cap;
  }
  memcpy (b->p + b->len, p, n);
  b->len += n;
}

void
fbuf_put_u8 (struct fbuf *b, uint8_t v)
{
  fbuf_put_bytes (b, &v, 1);
}

void
fbuf_put_u16 (struct fbuf *b, uint16_t v)
{
  v = htole16 (v);
  fbuf_put_bytes (b, &v, 2);
}

void
fbuf_put_u32 (struct fbuf *b, uint32_t v)
{
  v = htole32 (v);
  fbuf_put_bytes (b, &v, 4);
}

void
fbuf_put_u64 (struct fbuf *b, uint64_t v)
{
  v = htole64 (v);
  fbuf_put_bytes (b, &v, 8);
}

void
fbuf_put_str (struct fbuf *b, const char *s)
{
  size_t n = strlen (s);

  if (n > 0xffff) {
    b->bad = true;
    return;
  }
  fbuf_put_u16 (b, n);
  fbuf_put_bytes (b, s, n);
}

void
fbuf_get_bytes (struct fbuf *b, void *p, size_t n)
{
  if (b->bad || n > b->len - b->pos) {
    b->bad = true;
    memset (p, 0, n);
    return;
  }
  memcpy (p, b->p + b->pos, n);
  b->pos += n;
}

uint8_t
fbuf_get_u8 (struct fbuf *b)
{
  uint8_t v;
  fbuf_get_bytes (b, &v, 1);
  return v;
}

uint16_t
fbuf_get_u16 (struct fbuf *b)
{
  uint16_t v;
  fbuf_get_bytes (b, &v, 2);
  return le16toh (v);
}

uint32_t
fbuf_get_u32 (struct fbuf *b)
{
  uint32_t v;
  fbuf_get_bytes (b, &v, 4);
  return le32toh (v);
}

uint64_t
fbuf_get_u64 (struct fbuf *b)
{
  uint64_t v;
  fbuf_get_bytes (b, &v, 8);
  return le64toh (v);
}

void
fbuf_get_str (struct fbuf *b, char *s, size_t cap)
{
  uint16_t n = fbuf_get_u16 (b);

  if (b->bad || n >= cap || n > b->len - b->pos) {
    b->bad = true;
    s[0] = '\0';
    return;
  }
  memcpy (s, b->p + b->pos, n);
  s[n] = '\0';
  b->pos += n;
}

void
format_cs_encode (const struct format_cs *cs, void *blk)
{
  struct format_cs_disk d;

  memset (&d, 0, sizeof d);
  memcpy (d.magic, FORMAT_CS_MAGIC, 8);
  d.version = htole32 (FORMAT_VERSION);
  d.slot = htole32 (cs->slot);
  d.nmirrors = htole32 (cs->nmirrors);
  memcpy (d.pool_uuid, cs->pool_uuid, 16);
  memcpy (d.cache_uuid, cs->cache_uuid, 16);
  memcpy (d.dev_uuid, cs->dev_uuid, 16);
  d.area_off = htole64 (cs->area_off);
  d.area_size = htole64 (cs->area_size);
  d.created = htole64 (cs->created);
  memcpy (d.pool_name, cs->pool_name, FORMAT_NAME_MAX);
  memcpy (d.dev_name, cs->dev_name, FORMAT_NAME_MAX);
  d.crc = htole32 (crc32c (0, &d, offsetof (struct format_cs_disk, crc)));
  memcpy (blk, &d, sizeof d);
}

int
format_cs_decode (const void *blk, struct format_cs *cs)
{
  struct format_cs_disk d;

  memcpy (&d, blk, sizeof d);
  if (memcmp (d.magic, FORMAT_CS_MAGIC, 8) != 0)
    return strata_error (EINVAL, "no strata cache superblock");
  if (le32toh (d.crc) != crc32c (0, &d, offsetof (struct format_cs_disk, crc)))
    return strata_error (EBADMSG, "cache superblock checksum mismatch");
  if (le32toh (d.version) != FORMAT_VERSION)
    return strata_error (EBADMSG, "cache superblock version %u is not "
                         "supported", le32toh (d.version));
  memset (cs, 0, sizeof *cs);
  cs->slot = le32toh (d.slot);
  cs->nmirrors = le32toh (d.nmirrors);
  memcpy (cs->pool_uuid, d.pool_uuid, 16);
  memcpy (cs->cache_uuid, d.cache_uuid, 16);
  memcpy (cs->dev_uuid, d.dev_uuid, 16);
  cs->area_off = le64toh (d.area_off);
  cs->area_size = le64toh (d.area_size);
  cs->created = le64toh (d.created);
  memcpy (cs->pool_name, d.pool_name, FORMAT_NAME_MAX);
  cs->pool_name[FORMAT_NAME_MAX - 1] = '\0';
  memcpy (cs->dev_name, d.dev_name, FORMAT_NAME_MAX);
  cs->dev_name[FORMAT_NAME_MAX - 1] = '\0';
  if (cs->slot > 1 || cs->nmirrors < 1 || cs->nmirrors > 2
      || cs->slot >= cs->nmirrors || cs->area_off < STRATA_BLOCK
      || cs->area_size < FORMAT_CACHE_HDRS + 2 * STRATA_BLOCK)
    return strata_error (EBADMSG, "cache superblock geometry is inconsistent");
  return 0;
}
