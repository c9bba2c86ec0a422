#!/usr/bin/env bash
# A metadata replica wiped while the pool is down: the pool opens with
# everything and repairs the copy; then another one can be lost too.
# A majority lost: a clear refusal.
source "$(dirname "$0")/functions.sh"
requires nbdkit nbdsh

make_pool 4 512MiB "{ name: v, size: 64MiB, replicas: 2 }"
start_server
nbdsh -u "$(uri v)" -c '
import os
for i in range(16):
    h.pwrite(bytes([i + 1]) * 65536, i * 4 * 1024 * 1024 + 12345)
h.flush()'
"$STRATA" volume create "$CONFIG" extra 32MiB >/dev/null
stop_server

check_data () {
  nbdsh -u "$(uri v)" -c '
for i in range(16):
    assert h.pread(65536, i * 4 * 1024 * 1024 + 12345) == bytes([i + 1]) * 65536, i
' || fail "data lost ($1)"
  nbdinfo --list "nbd+unix:///?socket=$SOCK" | grep 'export="extra"' || fail "volume extra lost ($1)"
}

# Wipe the whole metadata area (1 MiB .. 17 MiB) of d0.
meta_wipe d0
"$STRATA" status "$CONFIG" | grep 'd0 damaged' || fail "status does not show d0 damaged"
start_server
check_data "d0 wiped"
"$STRATA" status "$CONFIG" | grep 'd0 in sync (repaired at open)' \
  || { "$STRATA" status "$CONFIG"; fail "d0 not repaired"; }
stop_server
ok "d0's metadata wiped: pool opened with everything and repaired it"

# Now d1 is wiped: d0 (repaired above) and d2 still make a majority that
# holds everything.
meta_wipe d1
start_server
check_data "d1 wiped after d0 repair"
stop_server
ok "then d1's metadata wiped: still everything"

# A majority lost: refused, clearly, and nothing is written.
meta_wipe d0
meta_wipe d1
before=$(sums "$T"/d*.img)
out=$("$STRATA" status "$CONFIG" 2>&1) && fail "opened without a majority"
echo "$out" | grep 'only 1 of 3 metadata replicas are readable' || fail "unclear refusal: $out"
[ "$(sums "$T"/d*.img)" = "$before" ] || fail "a refused open changed the devices"
ok "majority lost: refused ($out)"
