#!/usr/bin/env bash
# kill -9 during writes of every kind (TESTING.md 9 and 10): the crash
# model (crashmodel.py) writes at any byte offset and length, trims, and
# zeroes (with and without NO_HOLE), with FUA and FLUSH, on a striped
# 2-replica volume and a 1-replica one, while the server is killed at a
# random moment.  Extents of 64 KiB make chunks small, so trims and
# zeroes free whole chunks as often as they zero parts of them.  After
# each restart every byte holds its durable value or what a request
# since the last flush put there, no read reports a checksum error, and
# after a clean stop the replicas of every column are identical.
# Rounds on local files, then on remote members that lose their
# unflushed writes with strata (a power loss: test-remote-power-loss.sh),
# then behind a write-back cache.
source "$(dirname "$0")/functions.sh"
requires nbdkit nbdsh

ROUNDS=${ROUNDS:-5}
MODEL=$(dirname "$0")/crashmodel.py

# pool KIND: a pool of four devices with the two volumes, made anew.
pool () {
  local kind=$1
  rm -f "$T"/d*.img "$T"/ssd.img "$T"/state-*
  if [ "$kind" = remote ]; then
    export STRATA_REMOTE=1
    for i in 0 1 2 3; do member_up "$i"; done
  fi
  make_config 4 256MiB "{ name: v, size: 6MiB, replicas: 2, stripe_width: 3, stripe_unit: 8KiB }" \
                       "{ name: s, size: 4MiB, stripe_width: 2, stripe_unit: 64KiB }"
  sed -i "s/extent_size: 4MiB/extent_size: 64KiB/" "$CONFIG"
  [ "$kind" = cache ] \
    && sed -i "/^volumes:/i\\  - { name: ssd, path: $T/ssd.img, size: 24MiB }\ncache:\n  mode: writeback\n  devices: [ssd]" "$CONFIG"
  "$STRATA" init "$CONFIG" > /dev/null
  "$STRATA" apply "$CONFIG" > /dev/null
}
# member_up I: member I's server, its writes held until a flush (so that
# killing it loses them, as a host losing power loses its disk cache).
member_up () { start_member "$1" 256MiB --filter=cache cache=writeback; }

# crash_rounds KIND: ROUNDS kills of the server (and of every member,
# for remote) while the model writes to both volumes.
crash_rounds () {
  local kind=$1 round pv ps pids pend=0
  pool "$kind"
  for round in $(seq "$ROUNDS"); do
    start_server
    $PY "$MODEL" "$(uri v)" run "$T/state-v.json" "$round" $((3 << 16)) > "$T/v.log" 2>&1 &
    pv=$!
    $PY "$MODEL" "$(uri s)" run "$T/state-s.json" "$(( round + 100 ))" $((2 << 16)) > "$T/s.log" 2>&1 &
    ps=$!
    sleep "0.$(( RANDOM % 9 + 1 ))"; sleep $(( round % 2 ))
    if [ "$kind" = remote ]; then
      pids="$(cat "$PIDFILE") $(cat "$T"/m[0-3].pid)"
      # shellcheck disable=SC2086
      kill -9 $pids
      stop_server KILL
      for i in 0 1 2 3; do rm -f "$T/m$i.pid"; done
      sleep 0.2
      for i in 0 1 2 3; do member_up "$i"; done
    else
      stop_server KILL
    fi
    # Status 3: the server went away, as it should.
    wait $pv && fail "$kind round $round: v: the model did not notice the kill"
    [ $? = 3 ] || { cat "$T/v.log"; fail "$kind round $round: v: a read before the kill was wrong"; }
    wait $ps && fail "$kind round $round: s: the model did not notice the kill"
    [ $? = 3 ] || { cat "$T/s.log"; fail "$kind round $round: s: a read before the kill was wrong"; }
    start_server
    for vol in v s; do
      $PY "$MODEL" "$(uri $vol)" check "$T/state-$vol.json" > "$T/check.log" 2>&1 \
        || { cat "$T/check.log"; fail "$kind round $round: $vol: durable data lost or garbage after the kill"; }
      pend=$(( pend + $(awk '{ print $4 }' "$T/check.log") ))
    done
    [ "$(csum_errors)" = 0 ] || fail "$kind round $round: checksum errors after the kill"
    stop_server
    ncols=$(compare_replicas) || fail "$kind round $round: replicas differ after the restart"
  done
  ok "$kind: $ROUNDS kills during writes, trims and zeroes; nothing durable lost, nothing never written, $pend requests in flight or unflushed at the kills, no checksum error, $ncols columns' replicas identical"
}

crash_rounds local
crash_rounds cache
crash_rounds remote
