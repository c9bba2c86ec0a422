#!/usr/bin/env bash
# Clients of the control socket that stall hold nothing up: one that
# asks for a large status and never reads it, and one that sends half a
# request and goes quiet.  Other commands still run at once, writes go
# on, and SIGTERM still stops the server (before, the first held every
# other command until it read, and either kept nbdkit from exiting).
# The bounds below catch hangs; they are far above the time each takes.
source "$(dirname "$0")/functions.sh"
requires nbdkit nbdsh

# Small extents, so that the chunk map is larger than a socket buffer.
make_config 3 512MiB "{ name: v, size: 1GiB }"
sed -i 's/extent_size: 4MiB/extent_size: 64KiB/' "$CONFIG"
"$STRATA" init "$CONFIG" >/dev/null
"$STRATA" apply "$CONFIG" >/dev/null
start_server
nbdsh -u "$(uri v)" -c '
for i in range(15000):
    h.pwrite(b"x", i << 16)
h.flush()'
size=$("$STRATA" status "$CONFIG" --json --map | wc -c)
[ "$size" -gt $((1 << 20)) ] || fail "the map is only $size bytes"

# A client that asks for the map and never reads it.
$PY - "$T/control.sock" <<'PYEOF' &
import socket, struct, sys, time
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(sys.argv[1])
args = [b"status", b"--json", b"--map"]
s.sendall(struct.pack("<I", len(args)) + b"".join(struct.pack("<I", len(a)) + a for a in args))
time.sleep(60)
PYEOF
stall=$!
on_exit "kill $stall 2>/dev/null"
sleep 1
timeout 20 "$STRATA" volume create "$CONFIG" w 8MiB >/dev/null \
  || fail "volume create waited on the client that does not read"
timeout 20 "$STRATA" status "$CONFIG" | grep "^w  " >/dev/null \
  || fail "status waited on the client that does not read"
timeout 20 nbdsh -u "$(uri w)" -c 'h.pwrite(b"w" * 65536, 0); h.flush(); assert h.pread(65536, 0) == b"w" * 65536' \
  || fail "a write that allocates waited on the client that does not read"
ok "a client that does not read its status holds up no command and no write ($size bytes of map)"

# A client that sends half a request and goes quiet; then SIGTERM.
$PY - "$T/control.sock" <<'PYEOF' &
import socket, sys, time
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(sys.argv[1])
s.sendall(b"\x03\x00")
time.sleep(60)
PYEOF
quiet=$!
on_exit "kill $quiet 2>/dev/null"
sleep 1
pid=$(cat "$PIDFILE")
kill -TERM "$pid"
for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
kill -0 "$pid" 2>/dev/null && fail "nbdkit did not stop within 10 s of SIGTERM with stalled clients"
stop_server
"$STRATA" status "$CONFIG" | grep "offline" >/dev/null || fail "the pool does not open offline after the stop"
ok "SIGTERM stops the server although two clients stall"
