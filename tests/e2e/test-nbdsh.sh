#!/usr/bin/env bash
# Reads, writes, flush, FUA, zero, trim, extents and bad requests through
# nbdsh, on a striped and on a replicated volume.
source "$(dirname "$0")/functions.sh"
requires nbdkit nbdsh

make_pool 4 512MiB "{ name: st, size: 96MiB, stripe_width: 4, stripe_unit: 64KiB }" \
                   "{ name: mi, size: 64MiB, replicas: 3 }"
start_server

for vol in st mi; do
  nbdsh --base-allocation -u "$(uri $vol)" -c '
import os, random, errno
size = h.get_size()
ref = bytearray(size)
rnd = random.Random(7)
def check(off, n):
    got = h.pread(n, off)
    assert got == bytes(ref[off:off+n]), "mismatch at %d+%d" % (off, n)

# Unallocated space reads as zeros and is reported as a hole.
check(0, 1 << 20)
holes = []
h.block_status(size, 0, lambda ctx, off, ents, err: holes.extend(ents))
assert holes[1] & 3 == 3, holes[:4]

for i in range(200):
    n = rnd.choice([1, 7, 512, 4096, 65536, 65537, 300000, 1 << 20])
    off = rnd.randrange(0, size - n)
    data = os.urandom(n)
    h.pwrite(data, off, nbd.CMD_FLAG_FUA if i % 5 == 0 else 0)
    ref[off:off+n] = data
    if i % 10 == 0:
        h.flush()
    o2 = rnd.randrange(0, size - n)
    check(o2, n)
    check(off, n)

# Write zeroes with and without holes allowed, then trim.
for flags in (0, nbd.CMD_FLAG_NO_HOLE):
    off, n = rnd.randrange(0, size - (9 << 20)), rnd.randrange(1, 9 << 20)
    h.zero(n, off, flags)
    ref[off:off+n] = bytes(n)
    check(off, n)
h.zero(size, 0)
ref[:] = bytes(size)
check(0, size // 2)
h.trim(4 << 20, 0)
h.flush()
# Zeroes where no hole may be made leave none, in a chunk just freed (mi)
# as in one still allocated (st).
h.zero((1 << 20) + 4095, (1 << 20) + 1, nbd.CMD_FLAG_NO_HOLE)
ents = []
h.block_status(2 << 20, 1 << 20, lambda ctx, off, e, err: ents.extend(e))
assert ents[1] & 1 == 0, ents
check(0, 4 << 20)

# Out-of-range requests fail cleanly; the connection stays usable.
for bad in (lambda: h.pread(4096, size), lambda: h.pwrite(b"x" * 10, size - 5)):
    try:
        bad()
        raise AssertionError("out-of-range request accepted")
    except nbd.Error as e:
        pass
check(0, 4096)
print("ok")
' || fail "nbdsh checks on $vol"
  ok "nbdsh checks on $vol"
done
