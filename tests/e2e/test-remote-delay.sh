#!/usr/bin/env bash
# A slow member (TESTING.md 11): FLUSH and FUA replies wait for every
# healthy replica, so their latency is at least the member's delay, and the
# data is on the slow member when the reply comes.  Member 3 is a file
# served by nbdkit's eval plugin whose flush sleeps DELAY seconds (nbdkit
# emulates FUA with that flush); members 0-2 are plain file servers.
source "$(dirname "$0")/functions.sh"
requires nbdkit nbdsh
DELAY=1

truncate -s 512M "$T/d3.img"
F=$T/d3.img
nbdkit -U "$T/m3.sock" -P "$T/m3.pid" eval \
  get_size='echo 536870912' \
  pread="dd if=$F iflag=skip_bytes,count_bytes skip=\$4 count=\$3 status=none" \
  pwrite="dd of=$F oflag=seek_bytes conv=notrunc seek=\$4 status=none" \
  zero="fallocate -z -o \$4 -l \$3 $F" \
  can_write='exit 0' can_flush='exit 0' can_zero='exit 0' can_fua='echo emulate' \
  flush="sleep $DELAY"
members_cleanup
wait_socket "$T/m3.sock"

STRATA_REMOTE=1 make_pool 4 512MiB "{ name: v, size: 64MiB, replicas: 4, stripe_unit: 64KiB }"
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
