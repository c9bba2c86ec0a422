#!/usr/bin/env bash
# A crash, then a restart with a device missing: the dirty columns whose
# only copy is on it cannot be resynced.  They must not be given up
# (made stale): they fail reads and writes while the device is away,
# every other column works, and once the device is back (strata device
# add at run time, or a restart) every flushed byte reads back.
source "$(dirname "$0")/functions.sh"
requires nbdkit nbdsh

make_pool 4 256MiB "{ name: s, size: 64MiB, stripe_width: 4, stripe_unit: 64KiB }"
SU=65536
NSU=1024				# stripe units in s

# scan MODE: read every stripe unit of s.  Each holds 64 KiB of one
# byte, (i * 7 + SEED) % 251 + 1; a read either returns exactly that or
# fails.  Prints "good bad"; MODE "all" fails on any error, "some"
# expects errors on about a quarter (the columns on d0).
scan () {
  nbdsh -u "$(uri s)" -c "
import nbd
good = bad = 0
for i in range($NSU):
    want = bytes([(i * 7 + $2) % 251 + 1]) * $SU
    try:
        got = h.pread($SU, i * $SU)
    except nbd.Error:
        bad += 1
        continue
    assert got == want, 'stripe unit %d holds the wrong data' % i
    good += 1
print(good, bad)"
}

start_server
nbdsh -u "$(uri s)" -c "
for i in range($NSU):
    h.pwrite(bytes([(i * 7 + 3) % 251 + 1]) * $SU, i * $SU)
h.flush()"
# Every column is dirty: the cleaner leaves a column alone for a whole
# pass (5 s) after its last write.
stop_server KILL
mv "$T/d0.img" "$T/d0.away"

start_server
grep -q "device d0 is missing" "$T/nbdkit.log" || fail "d0 not reported missing: $(tail -5 "$T/nbdkit.log")"
grep -q "columns have no copy on a device that can be used" "$T/nbdkit.log" \
  || fail "crash resync did not report the columns it could not reach"
read -r good bad < <(scan some 3)
[ "$bad" -gt $((NSU / 8)) ] && [ "$bad" -lt $((NSU / 2)) ] \
  || fail "with d0 missing, $bad of $NSU stripe units failed (expected about a quarter)"
[ $((good + bad)) = $NSU ] || fail "scan read $good + $bad stripe units"
ok "d0 missing after a crash: $bad stripe units fail, the other $good read back"

# The unreachable columns are not written either; the others are.
nbdsh -u "$(uri s)" -c "
import nbd
fails = 0
for i in range($NSU):
    try:
        h.pread($SU, i * $SU)
    except nbd.Error:
        try:
            h.pwrite(b'x' * $SU, i * $SU)
        except nbd.Error:
            fails += 1
        continue
    h.pwrite(bytes([(i * 7 + 5) % 251 + 1]) * $SU, i * $SU)
h.flush()
assert fails == $bad, 'writes to %d unreachable stripe units, %d failed' % ($bad, fails)"
[ "$(stale_copies)" = 0 ] || fail "copies were made stale with d0 missing"
ok "writes to the unreachable columns fail, the others succeed; no copy made stale"

# The device comes back while the pool is served: its columns are
# resynced then, and hold what was flushed before the crash.
mv "$T/d0.away" "$T/d0.img"
"$STRATA" device add "$CONFIG" d0 > "$T/add.log" 2>&1 || fail "device add d0: $(cat "$T/add.log")"
grep -q "crash resync of the columns that could not be reached" "$T/nbdkit.log" \
  || fail "no resync when d0 came back: $(tail -5 "$T/nbdkit.log")"
nbdsh -u "$(uri s)" -c "
for i in range($NSU):
    a = h.pread($SU, i * $SU)
    old = bytes([(i * 7 + 3) % 251 + 1]) * $SU
    new = bytes([(i * 7 + 5) % 251 + 1]) * $SU
    assert a in (old, new), 'stripe unit %d holds the wrong data' % i
    if a == old:
        h.pwrite(new, i * $SU)
h.flush()"
read -r good bad < <(scan all 5)
[ "$good" = $NSU ] || fail "after d0 came back, $bad stripe units fail"
[ "$(csum_errors)" = 0 ] || fail "checksum errors after d0 came back"
ok "d0 back (device add): every stripe unit reads back, no checksum error"

# The same through a restart: crash with the columns dirty, start with
# d0 away, stop cleanly, start with d0 back.
nbdsh -u "$(uri s)" -c "
for i in range($NSU):
    h.pwrite(bytes([(i * 7 + 9) % 251 + 1]) * $SU, i * $SU)
h.flush()"
stop_server KILL
mv "$T/d0.img" "$T/d0.away"
start_server
read -r good bad < <(scan some 9)
[ "$bad" -gt 0 ] || fail "no stripe unit failed with d0 away"
stop_server
mv "$T/d0.away" "$T/d0.img"
start_server
read -r good bad < <(scan all 9)
[ "$good" = $NSU ] || fail "after a restart with d0 back, $bad stripe units fail"
[ "$(csum_errors)" = 0 ] || fail "checksum errors after a restart with d0 back"
[ "$(stale_copies)" = 0 ] || fail "copies were made stale"
ok "d0 back (restart): every stripe unit reads back, no copy stale"
