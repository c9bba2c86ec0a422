#!/usr/bin/env bash
# The write-back cache (TESTING.md 18, 19, 21): a pool of two members and
# a small SSD cache.
#  - fio verify over more data than the cache holds: the destager keeps
#    up, zero errors; status shows the cache's figures.
#  - kill -9 with dirty data in the cache, many rounds, an oracle that
#    knows which writes were flushed: all of them are there after the
#    restart (the log is replayed), and a clean restart does not find
#    the cache wholly dirty.
#  - strata cache flush, then the cache's log wiped behind strata's
#    back: the members alone hold exactly the data.
source "$(dirname "$0")/functions.sh"
requires nbdkit fio

ROUNDS=${ROUNDS:-6}
{ pool_section 1; cat <<EOF; } > "$CONFIG"
devices:
  - { name: d0, path: $T/d0.img, size: 1GiB }
  - { name: d1, path: $T/d1.img, size: 1GiB }
  - { name: ssd, path: $T/ssd.img, size: 48MiB }
cache:
  mode: writeback
  devices: [ssd]
volumes:
  - { name: v, size: 256MiB, replicas: 2, stripe_width: 2, stripe_unit: 64KiB }
  - { name: k, size: 128MiB, replicas: 2 }
EOF
"$STRATA" init "$CONFIG" > "$T/init.log"
"$STRATA" apply "$CONFIG" >/dev/null

# The cache's file is created with its space allocated (its log is
# written through in full), the members' files sparse.
grep -q "created $T/ssd.img (48.0 MiB, space allocated)" "$T/init.log" \
  || fail "init said: $(cat "$T/init.log")"
grep -q "created $T/d0.img (1.0 GiB, sparse)" "$T/init.log" \
  || fail "init said: $(cat "$T/init.log")"
[ $(( $(stat -c '%b * %B' "$T/ssd.img") )) -ge $((48 << 20)) ] \
  || fail "ssd.img has $(stat -c '%b * %B' "$T/ssd.img") bytes allocated, not 48 MiB"
[ $(( $(stat -c '%b * %B' "$T/d0.img") )) -lt $((256 << 20)) ] \
  || fail "d0.img is not sparse: $(stat -c '%b * %B' "$T/d0.img") bytes allocated"
ok "init allocates the cache's file and leaves the members' sparse"

# A cache file that exists is used as it is; init says so if it is sparse.
mkdir "$T/sp"
truncate -s 16M "$T/sp/ssd.img"
cat > "$T/sp.yaml" <<EOF
pool: { name: sp$$, extent_size: 4MiB, metadata_size: 16MiB, control_socket: $T/sp/c.sock }
devices:
  - { name: m0, path: $T/sp/m0.img, size: 256MiB }
  - { name: fast, path: $T/sp/ssd.img }
cache: { mode: writeback, devices: [fast] }
EOF
"$STRATA" init "$T/sp.yaml" > "$T/sp/init.log"
grep -q "note: cache device fast: $T/sp/ssd.img is sparse (0 B of 16.0 MiB allocated).*fallocate -l 16777216 $T/sp/ssd.img" "$T/sp/init.log" \
  || fail "init of a sparse cache file said: $(cat "$T/sp/init.log")"
fallocate -l 16777216 "$T/sp/ssd.img"
"$STRATA" init --force "$T/sp.yaml" > "$T/sp/init2.log"
grep -q "note: cache device" "$T/sp/init2.log" \
  && fail "init of an allocated cache file said: $(cat "$T/sp/init2.log")"
ok "init notes a sparse cache file it did not create, and not an allocated one"

# The cache device is not a member, and cannot be added as one.
"$STRATA" device add "$CONFIG" ssd > "$T/add.log" 2>&1 \
  && fail "device add of the cache device was accepted"
grep -q "cache device" "$T/add.log" || fail "device add of ssd said: $(cat "$T/add.log")"
ok "the cache device is refused as a member"

# 19: more than the cache holds, under fio verify.
start_server
cache_verify "$(uri v)" "through the cache" --bsrange=4k-256k --iodepth=32 \
  --size=128M --io_size=160M --verify_backlog=128
destaged=$(cache_field destaged)
[ "$destaged" -gt $((16 << 20)) ] \
  || fail "the destager wrote back only $destaged bytes of 160 MiB"
"$STRATA" status "$CONFIG" > "$T/st.txt"
grep -q '^cache: writeback, .*hit ratio' "$T/st.txt" \
  || fail "status shows no cache line"
ok "fio verify through a 48 MiB cache: zero errors, $destaged bytes destaged"
stop_server

# 18: kill -9 with dirty data, flushed writes must survive.
for round in $(seq "$ROUNDS"); do
  cache_kill9_round "$round" "$(( round % 2 )).$(( RANDOM % 9 + 1 ))"
done
nwritten=$($PY -c "import json;print(len(json.load(open('$T/state.json'))['written']))")
[ "$nwritten" -gt 100 ] || fail "the oracle wrote too little ($nwritten blocks)"
ok "$ROUNDS kill -9 rounds with dirty data in the cache: $nwritten blocks checked, nothing flushed lost"

# A clean restart: what was destaged stays clean.
start_server
"$STRATA" cache flush "$CONFIG" > "$T/flush.log" || { cat "$T/flush.log"; fail "cache flush"; }
[ "$(cache_field dirty)" = 0 ] || fail "dirty data left after cache flush"
stop_server
start_server
[ "$(cache_field dirty)" = 0 ] || fail "a clean restart finds the cache dirty"
ok "after cache flush and a clean restart nothing is dirty"

# 21: a reference written through the cache, flushed; then the log is
# wiped: the members alone must hold it.
head -c 96M /dev/urandom > "$T/ref.bin"
nbdcopy "$T/ref.bin" "$(uri v)" || fail "nbdcopy"
[ "$(cache_field dirty)" -gt 0 ] || fail "nothing dirty after writing the reference"
"$STRATA" cache flush "$CONFIG" > "$T/flush.log" || { cat "$T/flush.log"; fail "cache flush"; }
grep -q 'cache flushed' "$T/flush.log" || fail "cache flush said: $(cat "$T/flush.log")"
stop_server KILL
# The ring starts 1 MiB + 8 KiB into the device (format.h).
dd if=/dev/zero of="$T/ssd.img" bs=4096 seek=258 count=$(( (48 << 8) - 258 )) \
   conv=notrunc status=none
start_server
nbdcopy "$(uri v)" "$T/back.bin" || fail "reading the volume back"
cmp <(head -c $((96 << 20)) "$T/back.bin") "$T/ref.bin" \
  || fail "the members do not hold the data after cache flush"
ok "after cache flush the members alone hold the 96 MiB reference"
stop_server
