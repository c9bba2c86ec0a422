#!/usr/bin/env bash
# Every volume is an export of the same name; unknown names are refused.
source "$(dirname "$0")/functions.sh"
requires nbdkit nbdinfo nbdsh

make_pool 3 512MiB "{ name: alpha, size: 64MiB }" \
                   "{ name: beta, size: 100MiB, replicas: 2 }"
start_server

list=$(nbdinfo --list "nbd+unix:///?socket=$SOCK")
echo "$list" | grep 'export="alpha"' || fail "alpha not listed"
echo "$list" | grep 'export="beta"' || fail "beta not listed"
[ "$(nbdinfo --size "$(uri alpha)")" = 67108864 ] || fail "alpha size"
[ "$(nbdinfo --size "$(uri beta)")" = 104857600 ] || fail "beta size"
ok "both exports listed with their sizes"

out=$(nbdinfo "$(uri nosuch)" 2>&1) && fail "unknown export accepted"
echo "$out" | grep "nosuch" || fail "unknown export error does not name it: $out"
out=$(nbdinfo "nbd+unix://?socket=$SOCK" 2>&1) && fail "empty export name accepted"
ok "unknown and empty export names refused"

# The server is still up and serving after the refusals.
[ "$(nbdinfo --size "$(uri alpha)")" = 67108864 ] || fail "server died"
nbdinfo "$(uri alpha)" | grep 'can_multi_conn: true' || fail "multi-conn not advertised"
nbdinfo "$(uri alpha)" | grep 'can_fua: true' || fail "FUA not advertised"
nbdinfo "$(uri alpha)" | grep 'block_size_preferred: 1048576' || fail "preferred block size"
ok "flags advertised"
