#!/usr/bin/env bash
# A member whose reads fail (nbdkit's error filter on pread only): each
# read is served from another copy with no client error; the first error
# makes the member degraded (still in use), and POOL_READ_ERROR_LIMIT (8)
# of them make it failed.
source "$(dirname "$0")/functions.sh"
requires nbdkit nbdsh

# Reads fail while $T/m2.rfail exists (start_member's error-file, for
# every request, is never made here).
start_member 2 512M error-pread=EIO error-pread-rate=1 error-pread-file="$T/m2.rfail"

STRATA_REMOTE=1 make_pool 3 512MiB "{ name: v, size: 64MiB, replicas: 3, stripe_unit: 64KiB }"
start_server
nbdsh -u "$(uri v)" -c '
for i in range(64):
    h.pwrite(bytes([i]) * 65536, i * 65536)
h.flush()'
touch "$T/m2.rfail"

state () {  # state DEV: its state in status --json
  "$STRATA" status "$CONFIG" --json | $PY -c '
import json, sys
print([d["state"] for d in json.load(sys.stdin)["devices"] if d["name"] == sys.argv[1]][0])' "$1"
}

# One read per request; replicas are taken in turn, so one in three
# tries d2 first.
readback () {  # readback N: N reads, every one must return its data
  nbdsh -u "$(uri v)" -c "
for k in range($1):
    i = k % 64
    assert h.pread(65536, i * 65536) == bytes([i]) * 65536, 'wrong data at %d' % i"
}
readback 3
[ "$(state d2)" = degraded ] || fail "d2 is $(state d2) after its first read errors, expected degraded"
grep -q "device d2: read error 1 of 8 before it is failed: " "$T/nbdkit.log" \
  || fail "the first read error of d2 was not logged"
ok "first read errors: reads served from other copies, d2 degraded, the error logged"
readback 60
[ "$(state d2)" = failed ] || fail "d2 is $(state d2) after many read errors, expected failed"
"$STRATA" status "$CONFIG" | grep -E "^v .*degraded: 1 columns under-replicated" >/dev/null \
  || { "$STRATA" status "$CONFIG"; fail "volume v not shown degraded"; }
ok "8 read errors: d2 failed, v degraded, every read returned its data"
