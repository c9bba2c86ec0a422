#!/usr/bin/env bash
# Unaligned writes (1-byte offsets and lengths across stripe-unit and
# extent boundaries) with qemu-io, checked against the same writes made to
# a flat reference file.
source "$(dirname "$0")/functions.sh"
requires nbdkit qemu-io qemu-img

make_pool 4 512MiB "{ name: st, size: 40MiB, stripe_width: 3, stripe_unit: 16KiB }" \
                   "{ name: mi, size: 40MiB, replicas: 2, stripe_width: 2, stripe_unit: 4KiB }"
start_server

for vol in st mi; do
  ref=$T/ref-$vol.img
  truncate -s 40M "$ref"
  cmds=$T/cmds-$vol
  : > "$cmds"
  RANDOM=42
  for i in $(seq 300); do
    # Offsets near stripe-unit (16K/4K) and extent (4M) boundaries.
    base=$(( (RANDOM % 10) * 4194304 + (RANDOM % 64) * 4096 ))
    off=$(( base + RANDOM % 9000 - 4500 )); [ $off -lt 0 ] && off=$(( -off ))
    len=$(( 1 + RANDOM % 70000 ))
    [ $((off + len)) -gt 41943040 ] && off=$(( 41943040 - len ))
    echo "write -P $(( i % 255 + 1 )) $off $len" >> "$cmds"
  done
  qemu-io -f raw "$ref" < "$cmds" > /dev/null
  qemu-io -f raw "$(uri $vol)" < "$cmds" > "$T/qemu-io-$vol.log" 2>&1
  grep -qi 'error\|fail' "$T/qemu-io-$vol.log" && fail "qemu-io reported errors on $vol"
  qemu-img compare -f raw -F raw "$ref" "$(uri $vol)" >/dev/null \
    || fail "$vol differs from the reference file"
  # Unaligned reads too: compare random byte ranges.
  nbdsh -u "$(uri $vol)" -c "
import random
ref = open('$ref', 'rb').read()
r = random.Random(1)
for _ in range(300):
    n = r.randrange(1, 100000); o = r.randrange(0, len(ref) - n)
    assert h.pread(n, o) == ref[o:o+n], (o, n)
" || fail "unaligned reads on $vol"
  ok "$vol matches the reference after 300 unaligned writes"
done
