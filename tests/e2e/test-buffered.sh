#!/usr/bin/env bash
# A pool whose devices use the page cache (io: buffered), where writes
# without FUA are made by nbdkit's threads with pwrite() and the rest go
# through io_uring: fio verify with FUA-free and flushed writes mixed,
# then kill -9 during the oracle's writes (on a volume of its own: it
# reads anything but zeros or its own blocks as garbage), and the
# replicas and checksums agree afterwards.
source "$(dirname "$0")/functions.sh"
requires nbdkit fio

export STRATA_IO=buffered
make_pool 4 1GiB "{ name: v, size: 256MiB, replicas: 2, stripe_width: 2, stripe_unit: 64KiB }" \
                 "{ name: k, size: 128MiB, replicas: 2, stripe_width: 2, stripe_unit: 16KiB }"
[ "$(grep -c 'io: buffered' "$CONFIG")" = 4 ] || fail "the devices are not buffered: $(cat "$CONFIG")"
start_server

# Random 4k-1M writes and reads, with a flush every 16 writes.
fio --name=verify --ioengine=nbd --uri="$(uri v)" --rw=randrw \
    --bsrange=4k-1m --iodepth=32 --size=192M --io_size=384M --fsync=16 \
    --verify=crc32c --verify_backlog=128 --verify_fatal=1 \
    --serialize_overlap=1 --do_verify=1 --verify_state_save=0 > "$T/fio.log" 2>&1 \
  || { cat "$T/fio.log"; fail "fio verify"; }
grep -q 'err= 0' "$T/fio.log" || { cat "$T/fio.log"; fail "fio errors"; }
ok "fio verify on buffered devices: zero errors"

# Unaligned writes (pwrite with any offset and length), read back.
nbdsh -u "$(uri v)" -c '
import os
data = os.urandom(70001)
h.pwrite(data, 12345)
h.flush()
assert h.pread(70001, 12345) == data
' || fail "unaligned write on buffered devices"
ok "unaligned write read back"
stop_server

kill9_rounds k 3
"$STRATA" scrub "$CONFIG" > "$T/scrub.log" 2>&1 || { cat "$T/scrub.log"; fail "scrub found problems"; }
ok "scrub clean: $(tail -1 "$T/scrub.log")"
