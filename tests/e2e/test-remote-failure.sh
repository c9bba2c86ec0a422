#!/usr/bin/env bash
# A remote member fails in the middle of a fio verify run (TESTING.md 12):
# first one switched to errors with nbdkit's error filter, later another
# one killed.  The replicated volumes see zero client errors, the members
# are shown failed and the volumes degraded; a 1-replica volume with a
# column on a failed member returns EIO for it, never zeros.
source "$(dirname "$0")/functions.sh"
requires nbdkit fio nbdsh
export STRATA_REMOTE=1

make_pool 4 1GiB "{ name: r2, size: 256MiB, replicas: 2, stripe_width: 2, stripe_unit: 64KiB }" \
                 "{ name: r3, size: 256MiB, replicas: 3, stripe_unit: 64KiB }" \
                 "{ name: s1, size: 64MiB, stripe_width: 4, stripe_unit: 1MiB }"
start_server

# s1: one chunk of known data, a column on each member.
nbdsh -u "$(uri s1)" -c '
h.pwrite(b"\x5a" * (16 << 20), 0)
h.flush()'

fio_verify () {  # fio_verify VOLUME SECONDS: fio verify=crc32c; fails on any error
  fio --name="$1" --ioengine=nbd --uri="$(uri "$1")" --rw=randrw --bsrange=4k-1M \
      --iodepth=32 --size=128M --verify=crc32c --verify_fatal=1 --verify_backlog=64 \
      --serialize_overlap=1 --runtime="$2" --time_based --output="$T/fio-$1.out"
}

# Phase 1: member 1 starts failing every request while fio runs on r2 and r3.
fio_verify r2 8 & f2=$!
fio_verify r3 8 & f3=$!
sleep 3
touch "$T/m1.fail"
wait $f2 || { cat "$T/fio-r2.out"; fail "fio on r2 saw errors while member 1 failed"; }
wait $f3 || { cat "$T/fio-r3.out"; fail "fio on r3 saw errors while member 1 failed"; }
grep -E "err= *0" "$T/fio-r2.out" >/dev/null || fail "fio r2: $(grep err= "$T/fio-r2.out")"
ok "fio verify on r2 and r3 with member 1 failing: zero errors"

"$STRATA" status "$CONFIG" --json > "$T/status.json"
$PY - "$T/status.json" <<'PY'
import json, sys
st = json.load(open(sys.argv[1]))
devs = {d["name"]: d for d in st["devices"]}
vols = {v["name"]: v for v in st["volumes"]}
assert devs["d1"]["state"] == "failed", devs["d1"]
for n in ("d0", "d2", "d3"):
    assert devs[n]["state"] == "up", devs[n]
assert vols["r2"]["health"].startswith("degraded"), vols["r2"]
assert vols["r3"]["health"].startswith("degraded"), vols["r3"]
assert vols["s1"]["health"].startswith("unavailable"), vols["s1"]
print("status:", devs["d1"]["state"], "|", vols["r2"]["health"], "|", vols["s1"]["health"])
PY
ok "status shows d1 failed, r2/r3 degraded, s1 unavailable"

# s1: the column on d1 fails with EIO; the others still read back.
nbdsh -u "$(uri s1)" -c '
import errno
bad = 0
for col in range(4):
    try:
        buf = h.pread(1 << 20, col << 20)
        assert buf == b"\x5a" * (1 << 20), "column %d: wrong data" % col
    except nbd.Error as e:
        assert e.errnum == errno.EIO, e
        bad += 1
assert bad == 1, "expected exactly one unreadable column, got %d" % bad'
ok "1-replica volume: the failed member's column is EIO, the rest read back"

# Phase 2: member 3 is killed during writes to r3 (3 replicas; one copy
# per column is still healthy).
fio_verify r3 6 & f3=$!
sleep 2
kill_member 3
wait $f3 || { cat "$T/fio-r3.out"; fail "fio on r3 saw errors when member 3 was killed"; }
"$STRATA" status "$CONFIG" --json > "$T/status.json"
$PY - "$T/status.json" <<'PY'
import json, sys
st = json.load(open(sys.argv[1]))
devs = {d["name"]: d for d in st["devices"]}
assert devs["d3"]["state"] == "failed", devs["d3"]
PY
ok "member 3 killed under fio verify on r3: zero errors, d3 failed"

# The failures are in the journal: they survive a restart.
stop_server
start_server
"$STRATA" status "$CONFIG" > "$T/status.txt"
grep -E "^d1 .* failed" "$T/status.txt" >/dev/null || { cat "$T/status.txt"; fail "d1 not failed after restart"; }
grep -E "^d3 .* failed" "$T/status.txt" >/dev/null || { cat "$T/status.txt"; fail "d3 not failed after restart"; }
# The member that is gone is named in the server's log, with the reason.
grep -E "strata: pool t$$: device d3 is missing: .*m3\.sock" "$T/nbdkit.log" >/dev/null \
  || fail "the server did not report that d3 is missing"
ok "failed states survive a restart; the missing d3 is reported"
