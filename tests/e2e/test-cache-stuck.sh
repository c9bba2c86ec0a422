#!/usr/bin/env bash
# A write-back cache in front of members that ran out of space (nbdkit
# file servers on a small filesystem): writes are acknowledged into the
# cache until its log is full; writing back fails and keeps failing.  A
# write that then finds the log full fails with ENOSPC once writing back
# has failed for a while (it does not wait for ever), flushes still
# succeed, everything acknowledged reads back, no member is failed, and
# the server stops when asked.  Once the members have room, writing back
# goes on by itself, writes succeed again, and the members alone hold
# every byte.
source "$(dirname "$0")/functions.sh"
requires nbdkit nbdsh mount umount

mkdir "$T/fs"
mount -t tmpfs -o size=80M tmpfs "$T/fs" 2>/dev/null \
  || { echo "SKIP: cannot mount a tmpfs"; exit 77; }
on_exit "umount -l '$T/fs'"
for i in 0 1; do
  truncate -s 1G "$T/fs/d$i.img"
  ln -s "$T/fs/d$i.img" "$T/d$i.img"
  start_member $i 1G
done
{ pool_section 1; cat <<EOF; } > "$CONFIG"
devices:
  - { name: d0, uri: "nbd+unix:///?socket=$T/m0.sock", domain: host0 }
  - { name: d1, uri: "nbd+unix:///?socket=$T/m1.sock", domain: host1 }
  - { name: ssd, path: $T/ssd.img, size: 64MiB }
cache:
  mode: writeback
  devices: [ssd]
volumes:
  - { name: v, size: 256MiB }
EOF
"$STRATA" init "$CONFIG" >/dev/null
"$STRATA" apply "$CONFIG" >/dev/null
start_server

# MiB i holds bytes of i % 251 + 1.  Write until a write fails; the MiB
# acknowledged go to $T/acked.
timeout 300 nbdsh -u "$(uri v)" -c '
done = 0
for i in range(256):
    try:
        h.pwrite(bytes([i % 251 + 1]) * (1 << 20), i << 20)
    except nbd.Error as e:
        assert e.errno == "ENOSPC", "MiB %d failed with %s, not ENOSPC: %s" % (i, e.errno, e.string)
        done = i
        break
assert done >= 32, "only %d MiB went into a 64 MiB cache" % done
h.flush()
for i in range(done):
    assert h.pread(1 << 20, i << 20) == bytes([i % 251 + 1]) * (1 << 20), "MiB %d" % i
open("'"$T/acked"'", "w").write(str(done))
' || fail "writing into a cache that cannot write back: $(grep -v 'error: write' "$T/nbdkit.log" | tail -3)"
acked=$(cat "$T/acked")
grep "destage has failed for 10 s: writes that find the cache full fail" "$T/nbdkit.log" >/dev/null \
  || fail "the server does not say why writes fail: $(tail -3 "$T/nbdkit.log")"
"$STRATA" status "$CONFIG" --json | $PY -c '
import json, sys
s = json.load(sys.stdin)
assert all(d["state"] == "up" and d["errors"] == 0 for d in s["devices"]), s["devices"]
assert "no space on device" in s["cache"]["destage_error"], s["cache"]
assert s["cache"]["destage_rate"] == 0, s["cache"]
' || fail "status: $("$STRATA" status "$CONFIG")"
ok "cache full, writing back stuck: $acked MiB acknowledged and read back, then ENOSPC; members up"

# The server stops when asked, with writing back stuck.  (Under the
# sanitizers nbdkit itself may hang at exit: see stop_server.)
stop_server 2> "$T/stop.err"
[ -z "${STRATA_SANITIZE:-}" ] && grep "did not exit" "$T/stop.err" \
  && fail "the server did not stop on SIGTERM"
start_server
nbdsh -u "$(uri v)" -c '
for i in range('"$acked"'):
    assert h.pread(1 << 20, i << 20) == bytes([i % 251 + 1]) * (1 << 20), "MiB %d" % i
' || fail "reading back after a restart"
ok "the server stops on SIGTERM; after a restart every acknowledged MiB reads back"

# Room again: writing back resumes, writes succeed, and the members
# alone hold every byte once the cache is flushed.
mount -o remount,size=1G "$T/fs"
nbdsh -u "$(uri v)" -c '
for i in range('"$acked"', 256):
    h.pwrite(bytes([i % 251 + 1]) * (1 << 20), i << 20)
h.flush()
' || fail "writing with room again: $(grep -v 'error: write' "$T/nbdkit.log" | tail -3)"
out=$("$STRATA" cache flush "$CONFIG" 2>&1) || fail "cache flush: $out"
[ "$(cache_field dirty)" = 0 ] || fail "dirty data left after cache flush"
stop_server
# The ring starts 1 MiB + 8 KiB into the device (format.h).
dd if=/dev/zero of="$T/ssd.img" bs=4096 seek=258 count=$(( (64 << 8) - 258 )) \
   conv=notrunc status=none
start_server
nbdsh -u "$(uri v)" -c '
for i in range(256):
    assert h.pread(1 << 20, i << 20) == bytes([i % 251 + 1]) * (1 << 20), "MiB %d" % i
' || fail "the members alone do not hold the volume"
stop_server
out=$("$STRATA" scrub "$CONFIG" 2>&1) || fail "scrub: $out"
echo "$out" | grep -q "errors: 0; repaired: 0; no good copy: 0" || fail "scrub: $out"
ok "with room again: writing back resumed; after a cache flush the members alone hold all 256 MiB; scrub clean"
