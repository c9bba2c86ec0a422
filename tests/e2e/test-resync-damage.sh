#!/usr/bin/env bash
# Crash resync over a damaged copy (TESTING.md 13 with a crash): a block
# of one copy is damaged behind strata's back while its column is dirty
# (written just before a kill -9).  Resync makes the copies agree, and
# must keep the good copy, not the first one it reads: the one that
# matches the block's last checksum, or the one most copies hold.  Reads
# return what was written, the damaged copy is rewritten with the good
# data, and a scrub afterwards finds nothing.
source "$(dirname "$0")/functions.sh"
requires nbdkit nbdsh

make_pool 3 256MiB "{ name: r2, size: 8MiB, replicas: 2 }" \
                   "{ name: r3, size: 8MiB, replicas: 3 }"
head -c 8M /dev/urandom > "$T/ref2"
head -c 8M /dev/urandom > "$T/ref3"
ES=$((4 << 20))

# r2 is written and then stopped cleanly: its columns are clean, and
# each copy's checksum slot holds the checksums of its blocks.
start_server
nbdsh -u "$(uri r2)" -c "h.pwrite(open('$T/ref2','rb').read(), 0); h.flush()"
stop_server
# Then r3 is written whole (dirty, never clean) and one block of r2's
# first column (block 8) is rewritten, which makes that column dirty;
# the server is killed at once.  (The cleaner leaves a column dirty for
# at least RESYNC_INTERVAL, 5 s, after its last write.)
head -c 4096 /dev/urandom > "$T/blk"
start_server
nbdsh -u "$(uri r3)" -c "h.pwrite(open('$T/ref3','rb').read(), 0); h.flush()"
nbdsh -u "$(uri r2)" -c "h.pwrite(open('$T/blk','rb').read(), 8 * 4096); h.flush()"
stop_server KILL
dd if="$T/blk" of="$T/ref2" bs=4096 seek=8 conv=notrunc status=none

# Block 3 of copy 0 (the copy read first) of each volume's first column
# gets one byte inverted.
read -r dev2 ext2 data2 < <(copy_at r2 0 0 0)
read -r dev3 ext3 data3 < <(copy_at r3 0 0 0)
flip "$T/$dev2.img" $((data2 + ext2 * ES + 3 * 4096 + 100))
flip "$T/$dev3.img" $((data3 + ext3 * ES + 3 * 4096 + 200))
lines0=$(wc -l < "$T/nbdkit.log")
start_server
for v in r2 r3; do
  nbdsh -u "$(uri $v)" -c "
ref = open('$T/ref${v#r}','rb').read()
got = h.pread(len(ref), 0)
if got != ref:
    i = next(i for i in range(len(ref)) if got[i] != ref[i])
    raise SystemExit('$v differs from what was written at byte %d (block %d)' % (i, i // 4096))" \
    || fail "crash resync copied a damaged block over a good one in $v"
done
tail -n +$((lines0 + 1)) "$T/nbdkit.log" > "$T/resync.log"
grep "crash resync: volume r2 chunk 0 column 0: the copy on $dev2 differed in 1 block from block 3, rewritten from the copy kept (1 matching the block's last checksum)" "$T/resync.log" >/dev/null \
  || fail "the log does not say why r2's block 3 on $dev2 was rewritten: $(cat "$T/resync.log")"
grep -E "crash resync: volume r3 chunk 0 column 0: the copy on $dev3 differed in 1 block from block 3, rewritten from the copy kept \(1 (matching the block's last checksum|held by most copies)\)" "$T/resync.log" >/dev/null \
  || fail "the log does not say why r3's block 3 on $dev3 was rewritten: $(cat "$T/resync.log")"
stop_server
for v in 2 3; do
  dev=dev$v ext=ext$v data=data$v
  cmp <(dd if="$T/${!dev}.img" bs=4096 skip=$(((${!data} + ${!ext} * ES) / 4096 + 3)) count=1 2>/dev/null) \
      <(dd if="$T/ref$v" bs=4096 skip=3 count=1 2>/dev/null) \
    || fail "block 3 of r$v on ${!dev} does not hold the good data after the resync"
done
out=$("$STRATA" scrub "$CONFIG" 2>&1) || fail "scrub after the resync: $out"
echo "$out" | grep "errors: 0;" >/dev/null || fail "scrub after the resync: $out"
ok "crash resync keeps the good copy of a damaged block (by its last checksum, and by the copies that agree)"
