#!/usr/bin/env bash
# A slow member (TESTING.md 11): FLUSH and FUA replies wait for every
# healthy replica, so their latency is at least the member's delay, and the
# data is on the slow member when the reply comes.  Member 3 is a file
# served by nbdkit's eval plugin whose flush sleeps DELAY seconds (nbdkit
# emulates FUA with that flush); members 0-2 are plain file servers.
source "$(dirname "$0")/functions.sh"
requires nbdkit nbdsh
DELAY=1

for i in 0 1 2; do start_member "$i" 512MiB; done
truncate -s 512M "$T/d3.img"
F=$T/d3.img
nbdkit -U "$T/m3.sock" -P "$T/m3.pid" eval \
  get_size='echo 536870912' \
  pread="dd if=$F iflag=skip_bytes,count_bytes skip=\$4 count=\$3 status=none" \
  pwrite="dd of=$F oflag=seek_bytes conv=notrunc seek=\$4 status=none" \
  zero="fallocate -z -o \$4 -l \$3 $F" \
  can_write='exit 0' can_flush='exit 0' can_zero='exit 0' can_fua='echo emulate' \
  flush="sleep $DELAY"
on_exit "stop_server; for p in $T/m*.pid; do kill -9 \$(cat \$p) 2>/dev/null; done"
for _ in $(seq 50); do [ -S "$T/m3.sock" ] && break; sleep 0.1; done

cat > "$CONFIG" <<EOF
pool: { name: slow, extent_size: 4MiB, metadata_size: 16MiB, metadata_replicas: 3, control_socket: $T/control.sock }
devices:
  - { name: d0, uri: "nbd+unix:///?socket=$T/m0.sock", domain: host0 }
  - { name: d1, uri: "nbd+unix:///?socket=$T/m1.sock", domain: host1 }
  - { name: d2, uri: "nbd+unix:///?socket=$T/m2.sock", domain: host2 }
  - { name: d3, uri: "nbd+unix:///?socket=$T/m3.sock", domain: host3 }
volumes:
  - { name: v, size: 64MiB, replicas: 4, stripe_unit: 64KiB }
EOF
"$STRATA" init "$CONFIG" >/dev/null
"$STRATA" apply "$CONFIG" >/dev/null
start_server

nbdsh -u "$(uri v)" -c "
import time
D = $DELAY
pat = bytes(range(256)) * 256                      # 64 KiB
h.pwrite(pat, 0)
t = time.monotonic(); h.flush(); t = time.monotonic() - t
assert t >= D, 'FLUSH took %.3fs, less than the member delay %ss' % (t, D)
print('flush latency %.3fs' % t)
t = time.monotonic(); h.pwrite(pat[::-1], 1 << 20, nbd.CMD_FLAG_FUA); t = time.monotonic() - t
assert t >= D, 'FUA write took %.3fs, less than the member delay %ss' % (t, D)
print('FUA write latency %.3fs' % t)
"
ok "FLUSH and FUA replies waited for the slow member"

# Every replica holds the data: the slow member's file is read directly.
$PY - "$T/d3.img" <<'PY'
import sys
data = open(sys.argv[1], "rb").read()
pat = bytes(range(256)) * 256
assert data.count(pat) >= 1, "flushed write not on the slow member"
assert data.count(pat[::-1]) >= 1, "FUA write not on the slow member"
PY
"$STRATA" status "$CONFIG" | grep -E "^d3 .* up " >/dev/null || fail "d3 is not up"
ok "the slow member holds both writes and is still up"
