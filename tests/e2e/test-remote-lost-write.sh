#!/usr/bin/env bash
# An unreplicated volume's member goes away while it is written: the
# writes to its columns fail, and its copies are not given up (made
# stale), since they are the only ones.  The columns fail reads and
# writes while it is away; once it is back (strata device add) they are
# resynced and hold what they held before the failed writes.
source "$(dirname "$0")/functions.sh"
requires nbdkit nbdsh

STRATA_REMOTE=1 make_pool 4 256MiB "{ name: s, size: 64MiB, stripe_width: 4, stripe_unit: 64KiB }"
SU=65536
NSU=1024				# stripe units in s

start_server
su_fill s 3

# Member 0 goes away; every stripe unit is written again.  Those on d0
# fail, and are listed in $T/failed.
kill_member 0
nbdsh -u "$(uri s)" -c "
import nbd
failed = []
for i in range($NSU):
    try:
        h.pwrite(bytes([(i * 7 + 5) % 251 + 1]) * $SU, i * $SU)
    except nbd.Error:
        failed.append(i)
h.flush()
for i in range($NSU):
    try:
        got = h.pread($SU, i * $SU)
    except nbd.Error:
        assert i in failed, 'stripe unit %d was written but cannot be read' % i
        continue
    assert i not in failed, 'stripe unit %d on d0 reads while d0 is away' % i
    assert got == bytes([(i * 7 + 5) % 251 + 1]) * $SU, 'stripe unit %d: wrong data' % i
open('$T/failed', 'w').write(' '.join(map(str, failed)))"
nfailed=$(wc -w < "$T/failed")
[ "$nfailed" -gt $((NSU / 8)) ] && [ "$nfailed" -lt $((NSU / 2)) ] \
  || fail "$nfailed of $NSU writes failed with d0 away (expected about a quarter)"
[ "$(device_field d0 state)" = failed ] || fail "d0 is $(device_field d0 state), expected failed"
[ "$(stale_copies)" = 0 ] || fail "the only copies of d0's columns were made stale"
ok "d0 away: $nfailed writes on it fail and read as errors, the others read back; nothing stale"

start_member 0 256MiB
"$STRATA" device add "$CONFIG" d0 > "$T/add.log" 2>&1 || fail "device add d0: $(cat "$T/add.log")"
grep -q "crash resync of the columns that could not be reached" "$T/nbdkit.log" \
  || fail "no resync when d0 came back: $(tail -5 "$T/nbdkit.log")"
su_expect s "$T/failed" 3 5 || fail "wrong data after d0 came back"
[ "$(csum_errors)" = 0 ] || fail "checksum errors after d0 came back"
ok "d0 back: its stripe units hold their data from before the failed writes, no checksum error"

# And they take writes again, which last through a restart.
su_fill s 11
stop_server
start_server
su_expect s /dev/null 0 11 || fail "wrong data after a restart"
ok "every stripe unit written again and read back after a restart"
