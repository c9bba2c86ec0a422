#!/usr/bin/env bash
# Remote members whose server does not advertise multi-conn, so strata
# keeps one connection to each: every write payload, read reply and
# flush of a member shares one socket.  fio verify with mixed sizes at
# depth 32 on a striped and a 2-replica volume, then a journal-heavy
# pass (every 4 KiB write allocates on a fresh volume): zero errors, no
# connection lost or timed out, every member still up.
source "$(dirname "$0")/functions.sh"
requires nbdkit fio

for i in 0 1 2 3; do
  start_member "$i" 1GiB --filter=multi-conn multi-conn-mode=disable
done
nbdinfo "nbd+unix:///?socket=$T/m0.sock" > "$T/m0.info"
grep -q 'can_multi_conn: false' "$T/m0.info" \
  || { cat "$T/m0.info"; fail "member m0 still advertises multi-conn"; }

# A short timeout, so that a hung connection shows within the test.
POOL_EXTRA="io_timeout: 5s" STRATA_REMOTE=1 make_pool 4 1GiB \
  "{ name: st, size: 512MiB, stripe_width: 4, stripe_unit: 64KiB }" \
  "{ name: mi, size: 512MiB, replicas: 2, stripe_width: 2 }" \
  "{ name: th, size: 256MiB, stripe_width: 4, stripe_unit: 4KiB }"
start_server

for vol in st mi; do
  cache_verify "$(uri $vol)" "on $vol" --bsrange=4k-1m --iodepth=32 \
    --size=256M --io_size=768M
  ok "fio verify on $vol over one connection per member: zero errors"
done
cache_verify "$(uri th)" "on th (allocating)" --bs=4k --iodepth=32 \
  --size=64M --io_size=64M
ok "fio verify while allocating: zero errors"

if grep -E 'connection lost|got no reply' "$T/nbdkit.log"; then
  fail "a member connection was lost"
fi
for i in 0 1 2 3; do
  [ "$(device_field d$i state)" = up ] || fail "d$i is $(device_field d$i state)"
  [ "$(device_field d$i timeouts)" = 0 ] || fail "d$i timed out"
done
ok "every member up, no connection lost, no timeout"
