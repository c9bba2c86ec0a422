#!/usr/bin/env bash
# A pool of sparse files whose filesystem fills up: the metadata areas
# got their blocks at init, so the journal keeps working; a write that
# needs a new chunk fails with ENOSPC (not EIO), no device is failed and
# nothing written before is touched; once the filesystem has room again,
# writing goes on, and every byte reads back.
source "$(dirname "$0")/functions.sh"
requires nbdkit nbdsh mount umount

# The devices live on a small tmpfs of their own (with links where
# compare_replicas looks for them).
mkdir "$T/fs"
mount -t tmpfs -o size=128M tmpfs "$T/fs" 2>/dev/null \
  || { echo "SKIP: cannot mount a tmpfs"; exit 77; }
on_exit "umount -l '$T/fs'"
# pool_in DIR VOLUME: a pool of three 1 GiB sparse files in DIR, with
# VOLUME, made and applied; links in $T where compare_replicas looks.
pool_in () {
  make_config 3 1GiB "$2"
  sed -i "s#$T/d\([0-9]\).img#$1/d\1.img#" "$CONFIG"
  "$STRATA" init "$CONFIG" >/dev/null
  "$STRATA" apply "$CONFIG" >/dev/null
  for i in 0 1 2; do ln -sf "$1/d$i.img" "$T/d$i.img"; done
}
pool_in "$T/fs" "{ name: v, size: 512MiB, replicas: 2 }"

# init gave every metadata area (16 MiB) and superblock its blocks.
for i in 0 1 2; do
  used=$(du -k "$T/fs/d$i.img" | cut -f1)
  [ "$used" -ge $((16 * 1024)) ] || fail "d$i: only $used KiB allocated after init"
done
ok "init allocates the metadata areas of sparse files"

# fill_until_full VOLUME MIB MOST: write its first MIB MiB, one at a time,
# until a write fails, which must be with ENOSPC after at least 8 and
# fewer than MOST; then read back what was written.  The count of MiB
# written goes to $T/done.
fill_until_full () {
  nbdsh -u "$(uri "$1")" -c '
done = 0
for i in range('"$2"'):
    try:
        h.pwrite(bytes([i % 251 + 1]) * (1 << 20), i << 20)
    except nbd.Error as e:
        assert e.errno == "ENOSPC", "write %d failed with %s, not ENOSPC: %s" % (i, e.errno, e.string)
        done = i
        break
assert 8 <= done < '"$3"', "%d MiB written before the filesystem was full" % done
h.flush()
for i in range(done):
    assert h.pread(1 << 20, i << 20) == bytes([i % 251 + 1]) * (1 << 20), "MiB %d" % i
open("'"$T/done"'", "w").write(str(done))
'
}

start_server
fill_until_full v 512 100 || fail "writing until the filesystem is full"
done_mib=$(cat "$T/done")
grep -q "error: write: volume v: chunk [0-9]*: no space on the filesystem that holds device d[0-2] " "$T/nbdkit.log" \
  || fail "the server does not say why: $(tail -3 "$T/nbdkit.log")"
"$STRATA" status "$CONFIG" --json | $PY -c '
import json, sys
s = json.load(sys.stdin)
assert all(d["state"] == "up" and d["errors"] == 0 for d in s["devices"]), s["devices"]
assert s["volumes"][0]["health"] == "healthy", s["volumes"][0]
assert all(r["state"] == "in sync" for r in s["metadata_replicas"]), s["metadata_replicas"]
' || fail "a full filesystem changed the pool's state: $("$STRATA" status "$CONFIG")"
ok "a full filesystem: ENOSPC after $done_mib MiB, devices up, journal in sync"

# Room again: writing goes on where it stopped.
mount -o remount,size=512M "$T/fs"
nbdsh -u "$(uri v)" -c '
for i in range('"$done_mib"', 160):
    h.pwrite(bytes([i % 251 + 1]) * (1 << 20), i << 20)
h.flush()
for i in range(160):
    assert h.pread(1 << 20, i << 20) == bytes([i % 251 + 1]) * (1 << 20), "MiB %d" % i
' || fail "writing after the filesystem had room again"
stop_server
compare_replicas || fail "replicas differ"
out=$("$STRATA" scrub "$CONFIG" 2>&1) || fail "scrub: $out"
echo "$out" | grep -q "errors: 0; repaired: 0; no good copy: 0" || fail "scrub: $out"
ok "with room again, writes go on; 160 MiB read back, replicas equal, scrub clean"

# Trims inside allocated chunks keep the chunks' blocks: on ext4 (which
# has zero ranges) a filesystem that fills up after them cannot make a
# write into a trimmed range fail.  (A hole would need new blocks, and a
# write there would fail its device.)
requires mkfs.ext4
rm -f "$T/d0.img" "$T/d1.img" "$T/d2.img"
truncate -s 400M "$T/ext4.img"
mkfs.ext4 -q -F "$T/ext4.img" || fail "mkfs.ext4"
mkdir "$T/e4"
mount -o loop "$T/ext4.img" "$T/e4" 2>/dev/null \
  || { echo "SKIP: cannot mount an ext4 image (loop)"; exit 77; }
on_exit "umount -l '$T/e4'"
pool_in "$T/e4" "{ name: t, size: 64MiB }"
start_server
nbdsh -u "$(uri t)" -c '
for i in range(64):
    h.pwrite(bytes([i + 1]) * (1 << 20), i << 20)
h.flush()
for c in range(16):    # MiB 1 and 2 of every 4 MiB chunk
    h.trim(2 << 20, (4 * c + 1) << 20)
h.flush()
' || fail "writing and trimming t"
# Fill what the filesystem has left.
dd if=/dev/zero of="$T/e4/filler" bs=1M status=none 2>/dev/null || true
[ "$(df --output=avail -B1M "$T/e4" | tail -1)" -le 1 ] || fail "the filesystem did not fill: $(df -h "$T/e4")"
nbdsh -u "$(uri t)" -c '
for c in range(16):
    h.pwrite(bytes([200 + c % 50]) * (2 << 20), (4 * c + 1) << 20)
h.flush()
for i in range(64):
    want = bytes([200 + i // 4 % 50]) if i % 4 in (1, 2) else bytes([i + 1])
    assert h.pread(1 << 20, i << 20) == want * (1 << 20), "MiB %d" % i
' || fail "writing into trimmed ranges of a full filesystem: $(tail -3 "$T/nbdkit.log")"
"$STRATA" status "$CONFIG" --json | $PY -c '
import json, sys
s = json.load(sys.stdin)
assert all(d["state"] == "up" and d["errors"] == 0 for d in s["devices"]), s["devices"]
' || fail "writes into trimmed ranges of a full filesystem hurt a device: $("$STRATA" status "$CONFIG")"
stop_server
ok "trimmed ranges keep their blocks: written again on a full ext4, devices up, every MiB reads back"

# Remote members on the same full filesystem, which offer fast zeroing
# (nbdkit file does not advertise it: the nozero filter does, and hands
# the zeros to the file plugin, which makes them a zero range): each new
# extent's blocks are asked of the member (a fast write of zeros that
# leaves no hole), so a write that needs a new chunk fails with ENOSPC,
# no member is failed, and the journal keeps working (the metadata areas
# got their blocks at init the same way).
rm -f "$T/e4/"*.img "$T/e4/filler" "$T"/d[0-9].img
for i in 0 1 2; do
  truncate -s 1G "$T/e4/r$i.img"
  ln -s "$T/e4/r$i.img" "$T/d$i.img"
  start_member $i 1G --filter=nozero zeromode=plugin fastzeromode=ignore
done
STRATA_REMOTE=1 make_config 3 1GiB "{ name: r, size: 1GiB, replicas: 2 }"
"$STRATA" init "$CONFIG" >/dev/null
"$STRATA" apply "$CONFIG" >/dev/null
start_server
fill_until_full r 1024 1000 || fail "writing to remote members until their filesystem is full: $(tail -3 "$T/nbdkit.log")"
grep "no space on remote member d[0-2] (nbd+unix:.*) for the blocks of a new extent" "$T/nbdkit.log" >/dev/null \
  || fail "the server does not say why: $(tail -3 "$T/nbdkit.log")"
"$STRATA" status "$CONFIG" --json | $PY -c '
import json, sys
s = json.load(sys.stdin)
assert all(d["state"] == "up" and d["errors"] == 0 for d in s["devices"]), s["devices"]
assert all(r["state"] == "in sync" for r in s["metadata_replicas"]), s["metadata_replicas"]
' || fail "a full filesystem under the members changed the pool's state: $("$STRATA" status "$CONFIG")"
stop_server
ok "remote members on a full filesystem: ENOSPC after $(cat "$T/done") MiB, members up, journal in sync"
