#!/usr/bin/env bash
# The write-back cache in front of slow remote members (TESTING.md 18-21
# with remote members): two members served by nbdkit with the delay
# filter (5 ms per write, 2 ms per read, like spinning disks), a local
# file as the cache.
#  - fio verify of random writes and reads, more than the cache holds:
#    zero errors while the destager writes back to the slow members.
#  - kill -9 with dirty data: every flushed write is there (the oracle,
#    on a volume of its own: it reads anything but zeros and its own
#    stamps as garbage).
#  - cache flush, then the cache's log wiped behind strata's back: the
#    slow members alone hold exactly the reference.
source "$(dirname "$0")/functions.sh"
requires nbdkit fio nbdcopy

for i in 0 1; do
  truncate -s 512M "$T/d$i.img"
  nbdkit -U "$T/m$i.sock" -P "$T/m$i.pid" --filter=delay \
    file "$T/d$i.img" delay-write=5ms delay-read=2ms delay-zero=5ms \
    delay-trim=5ms
  wait_socket "$T/m$i.sock"
done
members_cleanup
{ pool_section 1; cat <<EOF; } > "$CONFIG"
devices:
  - { name: d0, uri: "nbd+unix:///?socket=$T/m0.sock", domain: host0 }
  - { name: d1, uri: "nbd+unix:///?socket=$T/m1.sock", domain: host1 }
  - { name: ssd, path: $T/ssd.img, size: 32MiB }
cache:
  mode: writeback
  devices: [ssd]
volumes:
  - { name: v, size: 128MiB, replicas: 2, stripe_unit: 64KiB }
  - { name: k, size: 64MiB, replicas: 2 }
EOF
"$STRATA" init "$CONFIG" >/dev/null
"$STRATA" apply "$CONFIG" >/dev/null

start_server
cache_verify "$(uri v)" "through the cache to slow members" \
  --bsrange=4k-128k --iodepth=16 --size=48M --io_size=128M --verify_backlog=64
destaged=$(cache_field destaged)
[ "$destaged" -gt $((8 << 20)) ] || { cat "$T/fio.log"; fail "only $destaged bytes were written back"; }
ok "fio verify through a 32 MiB cache to members 5 ms away: zero errors, $destaged bytes destaged"
stop_server

for round in 1 2; do cache_kill9_round "$round" 2; done
ok "kill -9 with dirty data over slow members: nothing flushed lost"

start_server
head -c 48M /dev/urandom > "$T/ref.bin"
nbdcopy "$T/ref.bin" "$(uri v)"
"$STRATA" cache flush "$CONFIG" > "$T/flush.log" || fail "cache flush: $(cat "$T/flush.log")"
[ "$(cache_field dirty)" = 0 ] || fail "dirty data left after cache flush"
stop_server KILL
# The ring starts 1 MiB + 8 KiB into the device (format.h).
dd if=/dev/zero of="$T/ssd.img" bs=4096 seek=258 count=$(( (32 << 8) - 258 )) \
   conv=notrunc status=none
start_server
nbdcopy "$(uri v)" "$T/back.bin"
cmp <(head -c $((48 << 20)) "$T/back.bin") "$T/ref.bin" \
  || fail "the slow members do not hold the data after cache flush"
ok "after cache flush the slow members alone hold the 48 MiB reference"
stop_server
