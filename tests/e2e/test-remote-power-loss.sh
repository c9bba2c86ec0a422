#!/usr/bin/env bash
# Power loss of the whole cluster (TESTING.md 10): kill -9 of strata and
# of every remote member at once, during writes, many times.  Each member
# keeps the writes it was sent in nbdkit's cache filter (cache=writeback)
# and only writes them to its disk on FLUSH (or FUA), so a member killed
# loses what it was never asked to make durable, as a host losing power
# loses its disk's volatile cache.  After the members and strata come
# back: every write that was flushed or FUA before the loss reads back,
# every block holds something that was really written there (the
# oracle), no read reports a checksum error, and the replicas of every
# column are identical.
source "$(dirname "$0")/functions.sh"
requires nbdkit nbdsh
export STRATA_REMOTE=1

ROUNDS=${ROUNDS:-4}
# member_up I: member I's server, its writes held until a flush.
member_up () { start_member "$1" 1GiB --filter=cache cache=writeback; }
for i in 0 1 2 3; do member_up "$i"; done
make_pool 4 1GiB "{ name: v, size: 256MiB, replicas: 2, stripe_width: 2, stripe_unit: 64KiB }" \
                 "{ name: s, size: 256MiB, stripe_width: 4, stripe_unit: 16KiB }"

# The cache filter really holds unflushed writes: a block written to a
# member without a flush is gone after the member is killed; with one,
# it stays.  (Otherwise this test would prove nothing.)
nbdsh -u "nbd+unix:///?socket=$T/m3.sock" -c '
h.pwrite(b"\xa5" * 4096, 1 << 29)
h.pwrite(b"\x5a" * 4096, (1 << 29) + 4096)
h.flush()
h.pwrite(b"\xc3" * 4096, 1 << 29)'
kill_member 3
member_up 3
nbdsh -u "nbd+unix:///?socket=$T/m3.sock" -c '
assert h.pread(4096, 1 << 29) == b"\xa5" * 4096, "an unflushed write survived the kill"
assert h.pread(4096, (1 << 29) + 4096) == b"\x5a" * 4096, "a flushed write was lost"
' || fail "the members' cache does not behave like a volatile disk cache"

# power_loss: strata and every member, in one kill.
power_loss () {
  local pids
  pids="$(cat "$PIDFILE") $(cat "$T"/m[0-3].pid)"
  # shellcheck disable=SC2086
  kill -9 $pids
  stop_server KILL
  for i in 0 1 2 3; do rm -f "$T/m$i.pid"; done
  sleep 0.2
}

lost=0
for vol in v s; do
  for round in $(seq "$ROUNDS"); do
    start_server
    $PY "$(dirname "$0")/oracle.py" "$(uri $vol)" "$T/state-$vol.json" write "$round" > "$T/w.log" 2>&1 &
    wpid=$!
    sleep "0.$(( RANDOM % 9 + 1 ))"; sleep $(( round % 2 ))
    power_loss
    wait $wpid 2>/dev/null || true
    for i in 0 1 2 3; do member_up "$i"; done
    start_server
    $PY "$(dirname "$0")/oracle.py" "$(uri $vol)" "$T/state-$vol.json" check 0 > "$T/check.log" 2>&1 \
      || { cat "$T/check.log"; fail "$vol round $round: durable data lost or garbage after the power loss"; }
    lost=$(( lost + $(awk '$1 == "older" { print $2 }' "$T/check.log") ))
    [ "$(csum_errors)" = 0 ] || fail "$vol round $round: checksum errors after the power loss"
    stop_server
    # strata flushed what it wrote at the restart (crash resync) and at
    # its close: the members' disks hold it, and the copies agree there.
    ncols=$(compare_replicas) || fail "$vol round $round: replicas differ after the power loss"
  done
  nwritten=$($PY -c "import json;print(len(json.load(open('$T/state-$vol.json'))['written']))")
  [ "$nwritten" -gt 100 ] || fail "$vol: the oracle wrote too little ($nwritten blocks)"
  ok "$vol: $ROUNDS power losses, $nwritten blocks checked, nothing durable lost, no checksum error, $ncols columns' replicas identical"
done
[ "$lost" -gt 0 ] || fail "no unflushed write was lost: the power losses proved nothing"
ok "$lost blocks came back older than their last write (not durable, lost)"

# One member loses power while strata serves: it comes back at once, and
# strata reconnects, but the writes it held unflushed are gone.  A FLUSH
# after that must not report them durable on it.
# member_power_loss VOL LEN: write A and flush, write B (LEN bytes at 0),
# then the member holding copy 0 of column 0 of chunk 0 loses power.
member_power_loss () {
  nbdsh -u "$(uri "$1")" -c "h.pwrite(b'A' * $2, 0); h.flush(); h.pwrite(b'B' * $2, 0)"
  read -r dev _ < <(copy_at "$1" 0 0 0)
  kill_member "${dev#d}"
  member_up "${dev#d}"
  sleep 1
}
start_server
# A 2-replica volume: the FLUSH succeeds (the other copy holds B), the
# member is failed, as away (its connection was lost), comes back by
# itself, and its copy of the column written last is copied again.
member_power_loss v 65536
nbdsh -u "$(uri v)" -c 'h.flush()' || fail "v: flush failed with a healthy copy left"
grep -q "device $dev marked failed: flush failed: .*; its connection was lost" "$T/nbdkit.log" \
  || fail "v: $dev lost unflushed writes but was not failed as away: $(grep "$dev" "$T/nbdkit.log" | tail -2)"
for _ in $(seq 350); do
  grep -q "device $dev: .* columns it missed copied again" "$T/nbdkit.log" && break
  sleep 0.2
done
grep -q "device $dev (.*), failed when its connection was lost, answered and is in use again" "$T/nbdkit.log" \
  || fail "v: $dev did not come back by itself within 70 s: $(grep "$dev" "$T/nbdkit.log" | tail -3)"
grep -q "device $dev was written shortly before it failed: [1-9][0-9]* of its copies are resynced from others" "$T/nbdkit.log" \
  || fail "v: the copies $dev may have lost were not made stale: $(grep "$dev" "$T/nbdkit.log" | tail -3)"
grep -q "device $dev: [1-9][0-9]* of [0-9]* columns it missed copied again (.*); it is up to date" "$T/nbdkit.log" \
  || fail "v: $dev was not caught up: $(grep "$dev" "$T/nbdkit.log" | tail -3)"
[ "$(stale_copies)" = 0 ] || fail "v: $(stale_copies) stale copies after $dev came back"
nbdsh -u "$(uri v)" -c 'assert h.pread(65536, 0) == b"B" * 65536' || fail "v: B does not read back"
stop_server
compare_replicas > /dev/null || fail "v: $dev's copy was not resynced"
ok "v: a member that lost unflushed writes is failed at the next FLUSH, comes back by itself, and is resynced"
# From here on members wait for device add (rejoin: manual), so that the
# range stays unavailable while the member is out.
sed -i '/^pool:/a\  rejoin: manual' "$CONFIG"
start_server
# A 1-replica volume: B had no other copy, so the FLUSH fails (it is not
# durable), the range is unavailable while the member is failed, and
# after device add it reads what the member holds, the flushed A, with
# no checksum error.
member_power_loss s 16384
nbdsh -u "$(uri s)" -c 'h.flush()' 2> "$T/flush.err" && fail "s: FLUSH succeeded, but B was lost"
nbdsh -u "$(uri s)" -c 'h.pread(16384, 0)' 2>/dev/null && fail "s: read of a failed member's only copy"
grep -q "volume s: no readable copy of chunk 0 column 0 (every copy is stale or on a failed or missing device)" \
  "$T/nbdkit.log" || fail "s: the failed read does not say why"
sleep 6
[ "$(device_field "$dev" state)" = failed ] || fail "s: $dev is $(device_field "$dev" state) with rejoin: manual"
grep "device $dev marked failed: " "$T/nbdkit.log" | tail -1 | grep "flush failed" > /dev/null \
  || fail "s: $dev was not failed by the flush: $(grep "$dev" "$T/nbdkit.log" | tail -2)"
grep "device $dev marked failed: " "$T/nbdkit.log" | tail -1 | grep "rejoins once it answers" \
  && fail "s: with rejoin: manual, $dev was said to rejoin by itself"
"$STRATA" device add "$CONFIG" "$dev" > "$T/add.out" 2>&1 || { cat "$T/add.out"; fail "s: device add $dev"; }
nbdsh -u "$(uri s)" -c 'assert h.pread(16384, 0) == b"A" * 16384' || fail "s: the flushed A does not read back"
[ "$(csum_errors)" = 0 ] || fail "s: checksum errors after device add"
stop_server
ok "s: the FLUSH after a lost unflushed write fails; after device add the durable data reads back"
