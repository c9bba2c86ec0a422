#!/usr/bin/env bash
# Remote members whose filesystem fills up, served by nbdkit file (which
# offers no fast zeroing, so new extents are not given their blocks in
# advance: the writes themselves meet the full filesystem).  Lack of
# space is no fault of a member: none is failed, no error is counted,
# and no volume becomes unavailable.  A write that reaches some copies
# is acknowledged and the others become stale; one that reaches none
# fails with ENOSPC and leaves its range readable (old or new data,
# never EIO).  That survives kill -9.  Once the filesystem has room,
# strata rebuild brings the stale copies up to date, the failed writes
# go through, and every byte reads back.
source "$(dirname "$0")/functions.sh"
requires nbdkit nbdsh mount umount

# d0 and d1 on a small filesystem, d2 on a large one.
mkdir "$T/small" "$T/large"
mount -t tmpfs -o size=96M tmpfs "$T/small" 2>/dev/null \
  || { echo "SKIP: cannot mount a tmpfs"; exit 77; }
on_exit "umount -l '$T/small'"
mount -t tmpfs -o size=1G tmpfs "$T/large" \
  || fail "cannot mount a second tmpfs"
on_exit "umount -l '$T/large'"
for i in 0 1 2; do
  fs=small; [ $i = 2 ] && fs=large
  truncate -s 1G "$T/$fs/d$i.img"
  ln -s "$T/$fs/d$i.img" "$T/d$i.img"
  start_member $i 1G
done
STRATA_REMOTE=1 make_config 3 1GiB "{ name: b, size: 256MiB, replicas: 2 }" \
  "{ name: a, size: 64MiB, replicas: 1 }"
"$STRATA" init "$CONFIG" >/dev/null
"$STRATA" apply "$CONFIG" >/dev/null
start_server

# write_all VOLUME MIB: write MiB i with bytes of i % 251 + 1, each
# alone; a write may only fail with ENOSPC.  The MiB that failed go to
# $T/VOLUME.failed.
write_all () {
  nbdsh -u "$(uri "$1")" -c '
failed = []
for i in range('"$2"'):
    try:
        h.pwrite(bytes([i % 251 + 1]) * (1 << 20), i << 20)
    except nbd.Error as e:
        assert e.errno == "ENOSPC", "MiB %d failed with %s, not ENOSPC: %s" % (i, e.errno, e.string)
        failed.append(i)
h.flush()
open("'"$T/$1.failed"'", "w").write(" ".join(map(str, failed)))
'
}
# read_all VOLUME MIB: every MiB written holds its bytes; one whose write
# failed holds, block by block, its bytes or zeros (never an error).
read_all () {
  nbdsh -u "$(uri "$1")" -c '
failed = set(map(int, open("'"$T/$1.failed"'").read().split()))
for i in range('"$2"'):
    want = bytes([i % 251 + 1]) * 4096
    got = h.pread(1 << 20, i << 20)
    for b in range(256):
        blk = got[b * 4096:(b + 1) * 4096]
        assert blk == want or (i in failed and blk == bytes(4096)), "MiB %d block %d" % (i, b)
'
}
# pool_ok: every member up with no error counted, the journal in sync.
pool_ok () {
  "$STRATA" status "$CONFIG" --json | $PY -c '
import json, sys
s = json.load(sys.stdin)
assert all(d["state"] == "up" and d["errors"] == 0 for d in s["devices"]), s["devices"]
assert all(r["state"] == "in sync" for r in s["metadata_replicas"]), s["metadata_replicas"]
assert all(v["health"] != "unavailable" and not v["health"].startswith("unavailable") for v in s["volumes"]), s["volumes"]
'
}

write_all b 256 || fail "writing b: $(tail -3 "$T/nbdkit.log")"
nfailed=$(wc -w < "$T/b.failed")
[ "$nfailed" -gt 0 ] || fail "no write of b met the full filesystem"
read_all b 256 || fail "reading b back: $(tail -3 "$T/nbdkit.log")"
pool_ok || fail "a full filesystem hurt the pool: $("$STRATA" status "$CONFIG")"
stale=$(stale_copies)
[ "$stale" -gt 0 ] || fail "no copy became stale"
volume_field b health | grep "degraded: [0-9]* columns under-replicated" >/dev/null \
  || fail "b is not degraded: $(volume_field b health)"
grep "device d[01] is out of space (1 request refused so far)" "$T/nbdkit.log" >/dev/null \
  || fail "the server does not say why: $(tail -3 "$T/nbdkit.log")"
"$STRATA" status "$CONFIG" | grep "^d[01] .* up .* -- out of space: [0-9]* requests\? refused, the last [0-9]* s ago: volume b chunk" >/dev/null \
  || fail "status does not show it: $("$STRATA" status "$CONFIG")"
ok "2 replicas: $nfailed MiB failed with ENOSPC, $stale copies stale, members up, every MiB readable"

write_all a 64 || fail "writing a: $(tail -3 "$T/nbdkit.log")"
read_all a 64 || fail "reading a back: $(tail -3 "$T/nbdkit.log")"
[ "$(wc -w < "$T/a.failed")" -gt 0 ] || fail "no write of a met the full filesystem"
pool_ok || fail "a full filesystem made a 1-replica volume unavailable: $("$STRATA" status "$CONFIG")"
ok "1 replica: $(wc -w < "$T/a.failed") MiB failed with ENOSPC, the volume still healthy and readable"

# A crash with columns dirty that cannot get their checksum slots.
stop_server KILL
start_server
read_all b 256 && read_all a 64 \
  || fail "reading back after kill -9: $(tail -3 "$T/nbdkit.log")"
pool_ok || fail "crash resync on a full filesystem hurt the pool: $("$STRATA" status "$CONFIG")"
ok "after kill -9 on a full filesystem: members up, every MiB readable"

# Room again: the stale copies are copied again, the failed writes go
# through.
mount -o remount,size=1G "$T/small"
out=$("$STRATA" rebuild "$CONFIG" 2>&1) || fail "rebuild: $out"
echo "$out" | grep "stale copies brought up to date: $stale" >/dev/null \
  || fail "rebuild: $out"
[ "$(stale_copies)" = 0 ] || fail "$(stale_copies) copies still stale after the rebuild"
[ "$(volume_field b health)" = healthy ] || fail "b: $(volume_field b health)"
nbdsh -u "$(uri b)" -c '
for i in map(int, open("'"$T/b.failed"'").read().split()):
    h.pwrite(bytes([i % 251 + 1]) * (1 << 20), i << 20)
h.flush()
' || fail "writing b's failed MiB again"
nbdsh -u "$(uri a)" -c '
for i in map(int, open("'"$T/a.failed"'").read().split()):
    h.pwrite(bytes([i % 251 + 1]) * (1 << 20), i << 20)
h.flush()
' || fail "writing a's failed MiB again"
: > "$T/a.failed"
: > "$T/b.failed"
read_all b 256 && read_all a 64 || fail "reading back with room again"
pool_ok || fail "$("$STRATA" status "$CONFIG")"
stop_server
cols=$(compare_replicas) || fail "replicas differ"
out=$("$STRATA" scrub "$CONFIG" 2>&1) || fail "scrub: $out"
echo "$out" | grep -q "errors: 0; repaired: 0; no good copy: 0" || fail "scrub: $out"
ok "with room again: rebuild copied $stale stale copies, every MiB written and read back, $cols columns equal, scrub clean"
