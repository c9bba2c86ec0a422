#!/usr/bin/env bash
# kill -9 of the server during writes, then restart: every write that was
# flushed (or written with FUA) before the kill reads back, and every block
# holds something that was really written there (an oracle, TESTING.md).
# No read reports a checksum error, and after each restart (crash resync)
# the replicas of every column are identical.
source "$(dirname "$0")/functions.sh"
requires nbdkit

ROUNDS=${ROUNDS:-6}
make_pool 4 1GiB "{ name: v, size: 256MiB, replicas: 2, stripe_width: 2, stripe_unit: 64KiB }" \
                 "{ name: s, size: 256MiB, stripe_width: 4, stripe_unit: 16KiB }"

# The oracle (oracle.py): blocks stamped with (block, sequence, crc); the
# state file says which were flushed; a checker reads everything back.

for vol in v s; do
  kill9_rounds "$vol" "$ROUNDS"
done

# A server that was just killed can hold its devices' locks for a moment
# after it is gone (the kernel tears its io_uring down afterwards): a
# restart waits for them.  A lock that stays held is refused, naming the
# device.  Here another process holds d0's lock, first for a second, then
# for longer than the wait.  (Local devices only: remote members are not
# locked, the pool's lock file stands for them.)
[ "${STRATA_REMOTE:-}" = 1 ] && exit 0
hold_lock () {
  $PY -c 'import fcntl, sys, time
f = open(sys.argv[1])
fcntl.flock(f, fcntl.LOCK_EX)
open(sys.argv[1] + ".held", "w").close()
time.sleep(float(sys.argv[2]))' "$T/d0.img" "$1" &
  hpid=$!
  for _ in $(seq 50); do [ -e "$T/d0.img.held" ] && break; sleep 0.1; done
  [ -e "$T/d0.img.held" ] || fail "the lock holder did not start"
  rm -f "$T/d0.img.held"
}
hold_lock 1
start_server
$PY "$(dirname "$0")/oracle.py" "$(uri v)" "$T/state-v.json" check 0 \
  || fail "after waiting for d0's lock: durable data lost"
stop_server
wait $hpid
hold_lock 30
out=$("$STRATA" volume create "$CONFIG" x 8MiB 2>&1) && fail "created a volume while d0 was locked"
kill $hpid; wait $hpid 2>/dev/null || true
echo "$out" | grep "in use by another process (device d0, $T/d0.img, is locked)" >/dev/null \
  || fail "unclear message: $out"
ok "a restart waits for a dead server's device locks; one held on is refused: $out"
