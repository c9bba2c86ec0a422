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

# scan SEED: read every stripe unit (su_fill's patterns); each read
# returns exactly its data or fails.  The ones that fail are listed in
# $T/bad; prints how many.
scan () {
  nbdsh -u "$(uri s)" -c "
import nbd
bad = []
for i in range($NSU):
    try:
        got = h.pread($SU, i * $SU)
    except nbd.Error:
        bad.append(i)
        continue
    assert got == bytes([(i * 7 + $1) % 251 + 1]) * $SU, 'stripe unit %d holds the wrong data' % i
open('$T/bad', 'w').write(' '.join(map(str, bad)))
print(len(bad))"
}

start_server
su_fill s 3
# Every column is dirty: the cleaner leaves a column alone for a whole
# pass (5 s) after its last write.
stop_server KILL
mv "$T/d0.img" "$T/d0.away"

start_server
grep -q "device d0 is missing" "$T/nbdkit.log" || fail "d0 not reported missing: $(tail -5 "$T/nbdkit.log")"
grep -q "columns have no copy on a device that can be used" "$T/nbdkit.log" \
  || fail "crash resync did not report the columns it could not reach"
bad=$(scan 3)
[ "$bad" -gt $((NSU / 8)) ] && [ "$bad" -lt $((NSU / 2)) ] \
  || fail "with d0 missing, $bad of $NSU stripe units failed (expected about a quarter)"
ok "d0 missing after a crash: $bad stripe units fail, the other $((NSU - bad)) read back"
health=$(volume_field s health)
case $health in
  "unavailable: "*" columns out of reach until a device is back") ;;
  *) fail "with d0 missing, status says s is: $health" ;;
esac
ok "status: $health"
case " $(meta_states) " in
  *" d0:in-sync "*) fail "d0's metadata replica is in sync although d0 is missing: $(meta_states)";;
esac

# The unreachable columns are not written either; the others are.
nbdsh -u "$(uri s)" -c "
import nbd
bad = set(map(int, open('$T/bad').read().split()))
for i in range($NSU):
    try:
        h.pwrite(bytes([(i * 7 + 5) % 251 + 1]) * $SU, i * $SU)
        assert i not in bad, 'stripe unit %d on d0 was written with d0 away' % i
    except nbd.Error:
        assert i in bad, 'stripe unit %d failed to be written' % i
h.flush()"
[ "$(stale_copies)" = 0 ] || fail "copies were made stale with d0 missing"
ok "writes to the unreachable columns fail, the others succeed; no copy made stale"

# The device comes back while the pool is served: its columns are
# resynced then, and hold what was flushed before the crash.
mv "$T/d0.away" "$T/d0.img"
"$STRATA" device add "$CONFIG" d0 > "$T/add.log" 2>&1 || fail "device add d0: $(cat "$T/add.log")"
grep -q "crash resync of the columns that could not be reached" "$T/nbdkit.log" \
  || fail "no resync when d0 came back: $(tail -5 "$T/nbdkit.log")"
su_expect s "$T/bad" 3 5 || fail "wrong data after d0 came back"
[ "$(csum_errors)" = 0 ] || fail "checksum errors after d0 came back"
ok "d0 back (device add): every stripe unit holds its data, no checksum error"
[ "$(volume_field s health)" = healthy ] || fail "with d0 back, status says s is: $(volume_field s health)"
# Its metadata replica takes every commit again (so that the journal
# keeps its majority if another replica fails next).
[ "$(meta_states)" = "d0:in-sync d1:in-sync d2:in-sync" ] || fail "with d0 back, the metadata replicas are $(meta_states)"
ok "d0's metadata replica is in sync again: $(meta_states)"

# The same through a restart: crash with the columns dirty, start with
# d0 away, stop cleanly, start with d0 back.
su_fill s 9
stop_server KILL
mv "$T/d0.img" "$T/d0.away"
start_server
[ "$(scan 9)" -gt 0 ] || fail "no stripe unit failed with d0 away"
stop_server
mv "$T/d0.away" "$T/d0.img"
start_server
bad=$(scan 9)
[ "$bad" = 0 ] || fail "after a restart with d0 back, $bad stripe units fail"
[ "$(csum_errors)" = 0 ] || fail "checksum errors after a restart with d0 back"
[ "$(stale_copies)" = 0 ] || fail "copies were made stale"
ok "d0 back (restart): every stripe unit reads back, no copy stale"
