#!/usr/bin/env bash
# Members missing when the pool is opened rejoin by themselves once they
# answer (a rack powering up: strata started before two of its member
# hosts).  Two remote members are down at the open, one of them a
# metadata replica: a chunk whose two copies are on them cannot be read,
# and a write to a chunk with one copy on them leaves that copy stale.
# The members come back while the pool is served, with nothing typed:
# the log says so, status shows them up and present, the metadata
# replica is in sync, the unreadable chunk reads back what it held, and
# the written one what was written.  The server then copies the stale
# copy again by itself (and nothing for the member that missed no
# write); device add finds nothing left to do; scrub is clean and the
# replicas compare equal.  A rebuild typed while the server's own copy
# runs (slow: the member's writes delayed) takes over from it and
# finishes the job.  A member that answers with another disk (blank) is
# refused, said once.
source "$(dirname "$0")/functions.sh"
requires nbdkit nbdsh
export STRATA_REMOTE=1
MiB=$((1 << 20))
NCH=32

make_pool 4 256MiB "{ name: r, size: $((NCH * 4))MiB, replicas: 2 }"
start_server

# fill_chunks SEED CHUNK...: each chunk's 4 MiB all one byte.
fill_chunks () {
  local seed=$1; shift
  nbdsh -u "$(uri r)" -c "
for c in [$(IFS=,; echo "$*")]:
    h.pwrite(bytes([(c * 7 + $seed) % 251 + 1]) * (4 << 20), c * (4 << 20))
h.flush()"
}
# read_chunk CHUNK SEED: the chunk holds that pattern (else exit 1), or
# cannot be read (exit 2).
read_chunk () {
  nbdsh -u "$(uri r)" -c "
import nbd, sys
try:
    got = h.pread(4 << 20, $1 * (4 << 20))
except nbd.Error:
    sys.exit(2)
sys.exit(0 if got == bytes([($1 * 7 + $2) % 251 + 1]) * (4 << 20) else 1)"
}
fill_chunks 3 $(seq 0 $((NCH - 1)))

# x: a member that is no metadata replica; y: a replica, such that a
# chunk has its two copies on x and y (so that the journal keeps its
# majority without them, and that chunk has no copy left).
read -r x y both one < <("$STRATA" status "$CONFIG" --json --map | $PY -c "
import json, sys
s = json.load(sys.stdin)
reps = {r['device'] for r in s['metadata_replicas']}
chunks = [(c['chunk'], set(c['columns'][0])) for c in s['volumes'][0]['map']]
for x in sorted({d['name'] for d in s['devices']} - reps):
    for y in sorted(reps):
        both = [c for c, ds in chunks if ds == {x, y}]
        one = [c for c, ds in chunks if x in ds and y not in ds]
        if both and one:
            print(x[1:], y[1:], both[0], one[0])
            sys.exit(0)
sys.exit('no chunk on a non-replica member and a replica: %r' % chunks)")
echo "x=d$x (no metadata replica), y=d$y; chunk $both on both, chunk $one on d$x only"

stop_server
kill_member "$x"
kill_member "$y"
start_server
for i in $x $y; do
  grep -q "device d$i is missing" "$T/nbdkit.log" || fail "d$i not reported missing"
  [ "$(device_field "d$i" state)" = missing ] || fail "d$i is $(device_field "d$i" state), not missing"
done
rc=0; read_chunk "$both" 3 || rc=$?
[ $rc = 2 ] || fail "chunk $both, on d$x and d$y only, did not fail to read (rc $rc)"
fill_chunks 5 "$one"
read_chunk "$one" 5 || fail "chunk $one does not read back what was written with d$x away"
[ "$(device_field "d$x" stale_copies)" = 1 ] \
  || fail "d$x has $(device_field "d$x" stale_copies) stale copies, expected 1"
ok "d$x and d$y missing at the open: chunk $both cannot be read; chunk $one written, its copy on d$x stale"

# The hosts come up.  The server tries them 5 s after it started, then
# at gaps of 5, 10, 20 and 40 s: the next try may be 40 s away.
start_member "$x" 256MiB
start_member "$y" 256MiB
for _ in $(seq 350); do
  [ "$(grep -c "missing since the pool was opened, answered and is in use again" "$T/nbdkit.log")" = 2 ] && break
  sleep 0.2
done
for i in $x $y; do
  grep -q "device d$i (.*m$i.sock), missing since the pool was opened, answered and is in use again" "$T/nbdkit.log" \
    || fail "d$i did not rejoin within 70 s: $(grep "d$i" "$T/nbdkit.log" | tail -3)"
  [ "$(device_field "d$i" state)" = up ] || fail "d$i is $(device_field "d$i" state) after it rejoined"
  [ "$(device_field "d$i" present)" = True ] || fail "d$i is not present after it rejoined"
done
case " $(meta_states) " in
  *" d$y:in-sync "*) ;;
  *) fail "d$y's metadata replica is not in sync after it rejoined: $(meta_states)";;
esac
read_chunk "$both" 3 || fail "chunk $both does not read back its data after d$x and d$y rejoined (rc $?)"
read_chunk "$one" 5 || fail "chunk $one does not read back what was written after d$x rejoined"
ok "d$x and d$y rejoined by themselves: up and present, d$y's metadata replica in sync, both chunks read back"

# The copy d$x missed is copied again by the server, right after the
# rejoin.
wait_log 1 "device d$x: .* columns it missed copied again"
grep -q "strata: pool t$$: device d$x is back: copying again the 1 columns it missed (at most 100.0 MiB/s" "$T/nbdkit.log" \
  || fail "no catch-up of d$x started: $(grep "d$x" "$T/nbdkit.log" | tail -3)"
grep -q "strata: pool t$$: device d$x: 1 of 1 columns it missed copied again (4.0 MiB in .*); it is up to date" "$T/nbdkit.log" \
  || fail "the catch-up of d$x did not finish: $(grep "d$x" "$T/nbdkit.log" | tail -3)"
! grep "device d$y is back: copying\|device d$y: .* columns it missed" "$T/nbdkit.log" \
  || fail "a catch-up ran for d$y, which missed no write"
[ "$(stale_copies)" = 0 ] || fail "$(stale_copies) stale copies after the catch-up of d$x"
[ "$(volume_field r health)" = healthy ] || fail "r is '$(volume_field r health)' after the catch-up"
"$STRATA" status "$CONFIG" --json | $PY -c "
import json, sys
j = json.load(sys.stdin)['jobs']['rebuild']
assert j['state'] == 'finished' and j['done'] == 1 and j['total'] == 1, j" \
  || fail "status does not show the catch-up as a finished rebuild of 1 column"
"$STRATA" device add "$CONFIG" "d$x" > "$T/add.out" 2>&1 || { cat "$T/add.out"; fail "device add d$x failed"; }
grep -q "rebuild finished: 0 of 0 columns done" "$T/add.out" && grep -q "device d$x is already up in pool" "$T/add.out" \
  || { cat "$T/add.out"; fail "device add d$x: unexpected report"; }
"$STRATA" scrub "$CONFIG" --json > "$T/s.json" 2>&1 || fail "scrub: $(cat "$T/s.json")"
$PY -c "
import json
r = json.load(open('$T/s.json'))
assert r['errors'] == 0 and r['blocks'] > 0, r" || fail "scrub found something: $(cat "$T/s.json")"
for c in $(seq 0 $((NCH - 1))); do
  s=3; [ "$c" = "$one" ] && s=5
  read_chunk "$c" $s || fail "chunk $c does not hold its data at the end (rc $?)"
done
stop_server
compare_replicas > /dev/null || fail "the replicas differ"
ok "the server copied d$x's stale copy again by itself, none for d$y; device add had nothing left; scrub clean; replicas equal"

# Away again, while every chunk is written; it comes back slow (each
# write half a second late), so that the server's copy of what it missed is
# still running when a rebuild is typed: the rebuild takes over.
kill_member "$x"
start_server
fill_chunks 7 $(seq 0 $((NCH - 1)))
nstale=$(device_field "d$x" stale_copies)
[ "$nstale" -ge 4 ] || fail "only $nstale copies on d$x went stale"
start_member "$x" 256MiB --filter=delay delay-write=500ms
wait_log 1 "device d$x is back: copying again the $nstale columns it missed"
"$STRATA" rebuild "$CONFIG" > "$T/rb.out" 2>&1 || { cat "$T/rb.out"; fail "the rebuild typed during the catch-up failed"; }
grep -q "device d$x: [0-9]* of $nstale columns it missed copied again (.*); stopped for a rebuild started by a command, which copies the rest" "$T/nbdkit.log" \
  || fail "the server's catch-up did not give way to the command: $(grep "d$x" "$T/nbdkit.log" | tail -3)"
grep -q "^rebuild finished: " "$T/rb.out" || { cat "$T/rb.out"; fail "the typed rebuild did not finish"; }
[ "$(stale_copies)" = 0 ] || fail "$(stale_copies) stale copies after the typed rebuild"
[ "$(volume_field r health)" = healthy ] || fail "r is '$(volume_field r health)' after the typed rebuild"
for c in $(seq 0 $((NCH - 1))); do
  read_chunk "$c" 7 || fail "chunk $c does not hold its data after the rebuild (rc $?)"
done
stop_server
compare_replicas > /dev/null || fail "the replicas differ after the rebuild"
ok "a rebuild typed while the server copied d$x's $nstale stale copies took over and finished; replicas equal"

# Another disk behind x's address (its host was reinstalled): it answers
# but is not the member that left; refused, said once, and shown.
kill_member "$x"
mv "$T/d$x.img" "$T/d$x.kept"
start_server
# The log filter records each connection: a try makes at least two (the
# question whether it answers, then the opening) and at most three, so
# four mean it was tried at least twice (at about 5 and 10 s).
start_member "$x" 256MiB --filter=log logfile="$T/m$x.conns"
for _ in $(seq 200); do
  [ "$(grep -c " Connect " "$T/m$x.conns" 2>/dev/null || true)" -ge 4 ] && break
  sleep 0.2
done
[ "$(grep -c " Connect " "$T/m$x.conns")" -ge 4 ] \
  || fail "d$x was not tried twice within 40 s ($(grep -c " Connect " "$T/m$x.conns") connections)"
n=$(grep -c "device d$x answers but cannot rejoin" "$T/nbdkit.log" || true)
[ "$n" = 1 ] || fail "the refusal of d$x was logged $n times in $(grep -c " Connect " "$T/m$x.conns") connections: $(grep "d$x" "$T/nbdkit.log" | tail -3)"
grep -q "device d$x answers but cannot rejoin: device d$x (.*) holds no strata superblock: it is not the member that left the pool" "$T/nbdkit.log" \
  || fail "the refusal does not say why: $(grep "d$x" "$T/nbdkit.log" | tail -2)"
[ "$(device_field "d$x" state)" = missing ] || fail "the blank d$x is $(device_field "d$x" state)"
device_field "d$x" problem | grep "holds no strata superblock" > /dev/null \
  || fail "status does not say why d$x is out: $(device_field "d$x" problem)"
cmp -n $((4 * MiB)) "$T/d$x.img" /dev/zero || fail "the blank disk behind d$x was written to"
ok "a blank disk answering for d$x is refused, logged once, shown in status, and left untouched"
