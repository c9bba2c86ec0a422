#!/usr/bin/env bash
# fio verify=crc32c, random 4k-1M reads and writes at depth 32, on a
# striped and on a 2-replica volume.
source "$(dirname "$0")/functions.sh"
requires nbdkit fio

make_pool 4 1GiB "{ name: st, size: 512MiB, stripe_width: 4, stripe_unit: 64KiB }" \
                 "{ name: mi, size: 512MiB, replicas: 2, stripe_width: 2 }"
start_server

for vol in st mi; do
  fio --name=verify-$vol --ioengine=nbd --uri="$(uri $vol)" --rw=randrw \
      --bsrange=4k-1m --iodepth=32 --size=256M --io_size=512M \
      --verify=crc32c --verify_backlog=128 --verify_fatal=1 \
      --serialize_overlap=1 --do_verify=1 --verify_state_save=0 > "$T/fio-$vol.log" 2>&1 \
    || { cat "$T/fio-$vol.log"; fail "fio verify on $vol"; }
  grep -q 'err= 0' "$T/fio-$vol.log" || { cat "$T/fio-$vol.log"; fail "fio errors on $vol"; }
  grep -qi 'verify:.*bad\|crc32c: verify failed' "$T/fio-$vol.log" && fail "verify failures on $vol"
  ok "fio verify on $vol: zero errors"
done
