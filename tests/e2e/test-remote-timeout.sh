#!/usr/bin/env bash
# A member that stops answering (nbdkit's pause filter holds every request)
# in the middle of a fio verify run: its requests time out after
# pool.io_timeout, the member is marked failed, and the 2-replica volume
# sees zero client errors.  The failure is put down to the lost
# connection: the member is away, and while it still hangs it is shown
# connected but not taken back.  Once its host is back (a reboot) strata
# reconnects, the member rejoins by itself, and what it missed is copied
# to it again.
source "$(dirname "$0")/functions.sh"
requires nbdkit fio nbdsh

truncate -s 512M "$T/d3.img"
nbdkit -U "$T/m3.sock" -P "$T/m3.pid" --filter=pause file "$T/d3.img" \
  pause-control="$T/pause.sock"
members_cleanup
wait_socket "$T/m3.sock"

pause () {  # pause p: member 3 holds every request from now on
  $PY - "$T/pause.sock" "$1" <<'PY'
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
s.sendall(sys.argv[2].encode())
s.settimeout(5)
try:
    s.recv(16)
except socket.timeout:
    pass
PY
}

STRATA_REMOTE=1 POOL_EXTRA="io_timeout: 2s" \
  make_pool 4 512MiB "{ name: r2, size: 256MiB, replicas: 2, stripe_width: 2, stripe_unit: 64KiB }"
start_server

fio --name=r2 --ioengine=nbd --uri="$(uri r2)" --rw=randrw --bsrange=4k-256k \
    --iodepth=16 --size=128M --verify=crc32c --verify_fatal=1 --verify_backlog=64 \
    --serialize_overlap=1 --runtime=12 --time_based --output="$T/fio.out" & fpid=$!
sleep 3
pause p
t0=$(date +%s)
wait $fpid || { cat "$T/fio.out"; fail "fio saw errors while member 3 hung"; }
ok "fio verify on r2 while member 3 hung: zero errors"

"$STRATA" status "$CONFIG" --json > "$T/status.json"
$PY - "$T/status.json" <<'PY'
import json, sys
st = json.load(open(sys.argv[1]))
d3 = [d for d in st["devices"] if d["name"] == "d3"][0]
assert d3["state"] == "failed", d3
assert d3["problem"].startswith("failed: "), d3["problem"]
assert d3["timeouts"] >= 1, d3
r2 = [v for v in st["volumes"] if v["name"] == "r2"][0]
assert r2["health"].startswith("degraded"), r2
print("d3:", d3["problem"], "| timeouts", d3["timeouts"], "| r2:", r2["health"])
PY
ok "the hung member timed out and was marked failed; r2 degraded"

# Still hung, it answers a handshake but not a read: tried, it is not
# taken back, and status says it rejoins by itself once it answers.
for _ in $(seq 100); do
  grep -q "device d3 answers but cannot rejoin: .*reading its superblock" "$T/nbdkit.log" && break
  sleep 0.2
done
grep -q "device d3 answers but cannot rejoin: .*reading its superblock: .*timed out" "$T/nbdkit.log" \
  || fail "the hung d3 was not tried, or not refused: $(grep "d3\|m3" "$T/nbdkit.log" | tail -3)"
"$STRATA" status "$CONFIG" > "$T/status.txt"
grep -E "^d3 .* failed .* -- failed: its connection was lost; it answers again but cannot rejoin: " "$T/status.txt" > /dev/null \
  || { cat "$T/status.txt"; fail "status does not say why the hung d3 is out"; }
[ "$(device_field d3 state)" = failed ] || fail "the hung d3 is $(device_field d3 state)"
ok "the hung member, tried while it still hangs, is not taken back; status says why"

# The member's host goes away, then comes back (a reboot): strata keeps
# trying, reconnects, and takes the member back by itself.
kill -9 "$(cat "$T/m3.pid")"
sleep 1.5
"$STRATA" status "$CONFIG" --json > "$T/status.json"
$PY -c '
import json, sys
d3 = [d for d in json.load(open(sys.argv[1]))["devices"] if d["name"] == "d3"][0]
assert not d3["connected"], d3' "$T/status.json" || fail "d3 still shown connected after its host died"
rm -f "$T/m3.sock"
nbdkit -U "$T/m3.sock" -P "$T/m3.pid" file "$T/d3.img"
# The next try may be 40 s away.
for _ in $(seq 350); do
  grep -q "device d3 (.*m3.sock), failed when its connection was lost, answered and is in use again" "$T/nbdkit.log" && break
  sleep 0.2
done
grep "strata: .*m3.sock: reconnected" "$T/nbdkit.log" >/dev/null || { cat "$T/nbdkit.log"; fail "no reconnect logged"; }
grep -q "device d3 (.*m3.sock), failed when its connection was lost, answered and is in use again" "$T/nbdkit.log" \
  || fail "d3 did not rejoin within 70 s: $(grep "d3\|m3" "$T/nbdkit.log" | tail -3)"
for _ in $(seq 100); do
  grep -q "device d3: .* columns it missed copied again" "$T/nbdkit.log" && break
  sleep 0.2
done
grep -q "device d3: [0-9]* of [0-9]* columns it missed copied again (.*); it is up to date" "$T/nbdkit.log" \
  || fail "what d3 missed was not copied to it: $(grep "d3" "$T/nbdkit.log" | tail -3)"
[ "$(device_field d3 state)" = up ] || fail "d3 is $(device_field d3 state) after it rejoined"
[ "$(stale_copies)" = 0 ] || fail "$(stale_copies) stale copies after d3 rejoined"
[ "$(volume_field r2 health)" = healthy ] || fail "r2 is '$(volume_field r2 health)' after d3 rejoined"
ok "member 3 back: reconnected, rejoined by itself, and caught up; r2 healthy"

# Two members' hosts accept connections but never answer: opening the
# pool waits io_timeout for them together, not one after the other.  A
# listener notes when each connection came and when strata gave it up;
# both must have come before either was given up.
stop_server
for i in 2 3; do kill "$(cat "$T/m$i.pid")"; done
sleep 0.5
rm -f "$T/m2.sock" "$T/m3.sock"
$PY - "$T/silent.log" "$T/m2.sock" "$T/m3.sock" <<'PY' & spid=$!
import socket, sys, threading, time
log = open(sys.argv[1], "w")
lock = threading.Lock()
def note(*a):
    with lock:
        print(*a, file=log, flush=True)
def serve(path):
    s = socket.socket(socket.AF_UNIX)
    s.bind(path)
    s.listen(8)
    while True:
        c, _ = s.accept()
        note("accept", path, time.monotonic())
        def hold(c=c):
            while c.recv(4096):
                pass
            note("close", path, time.monotonic())
        threading.Thread(target=hold, daemon=True).start()
for p in sys.argv[2:]:
    threading.Thread(target=serve, args=(p,), daemon=True).start()
time.sleep(120)
PY
wait_socket "$T/m2.sock"; wait_socket "$T/m3.sock"
"$STRATA" status "$CONFIG" > "$T/silent-status.txt" 2>&1 || true
kill $spid 2>/dev/null || true
$PY - "$T/silent.log" "$T/m2.sock" "$T/m3.sock" <<'PY' || { cat "$T/silent.log" "$T/silent-status.txt"; fail "the silent members were not waited for together"; }
import sys
ev = [l.split() for l in open(sys.argv[1])]
first = {}
for kind, path, t in ev:
    first.setdefault((kind, path), float(t))
acc = [first.get(("accept", p)) for p in sys.argv[2:]]
cls = [first.get(("close", p)) for p in sys.argv[2:]]
assert None not in acc and None not in cls, ev
assert max(acc) < min(cls), "accepts %s, closes %s" % (acc, cls)
PY
grep -q "connection timed out" "$T/silent-status.txt" \
  || { cat "$T/silent-status.txt"; fail "status does not say the silent members timed out"; }
ok "two silent members are waited for together at open: $(grep -c 'timed out' "$T/silent-status.txt") timeouts reported"
