#!/usr/bin/env bash
# Checksums and self-healing reads (TESTING.md 13, the read half): one
# byte, one block, then a whole member overwritten behind strata's back.
# Reads through NBD still return exactly what was written, status counts
# the bad copies on exactly the damaged device, and the bad copies are
# rewritten.  A 1-replica volume with a damaged block gives EIO for it.
source "$(dirname "$0")/functions.sh"
requires nbdkit nbdsh

make_pool 3 256MiB "{ name: r2, size: 32MiB, replicas: 2 }" \
                   "{ name: r1, size: 8MiB }"
head -c 32M /dev/urandom > "$T/ref2"
head -c 8M /dev/urandom > "$T/ref1"
start_server
nbdsh -u "$(uri r2)" -c "h.pwrite(open('$T/ref2','rb').read(), 0); h.flush()"
nbdsh -u "$(uri r1)" -c "h.pwrite(open('$T/ref1','rb').read(), 0); h.flush()"
stop_server

check_r2 () {
  nbdsh -u "$(uri r2)" -c "
ref = open('$T/ref2','rb').read()
for k in range(3):
    assert h.pread(len(ref), 0) == ref, 'r2 differs from what was written'"
}

read -r dev ext data < <(copy_at r2 0 0 0)
ES=$((4 << 20))
# 1. One byte of one copy, in block 3.
flip "$T/$dev.img" $((data + ext * ES + 3 * 4096 + 100))
start_server
check_r2
[ "$(device_field "$dev" csum_errors)" = 1 ] \
  || LOG_LINES=40 fail "csum_errors on $dev: $(device_field "$dev" csum_errors), want 1; $("$STRATA" status "$CONFIG")"
[ "$(device_field "$dev" repaired)" = 1 ] || fail "repaired on $dev: $(device_field "$dev" repaired), want 1"
for d in d0 d1 d2; do
  [ "$d" = "$dev" ] && continue
  [ "$(device_field "$d" csum_errors)" = 0 ] || fail "$d reports checksum errors it does not have"
done
grep "checksum mismatch on device $dev, extent $ext block 3 " "$T/nbdkit.log" >/dev/null \
  || fail "the log does not name device $dev extent $ext block 3"
stop_server
# The damaged copy now holds the good data again.
cmp <(dd if="$T/$dev.img" bs=4096 skip=$(((data + ext * ES) / 4096 + 3)) count=1 2>/dev/null) \
    <(dd if="$T/ref2" bs=4096 skip=3 count=1 2>/dev/null) || fail "block 3 of $dev was not repaired"
ok "one flipped byte: correct reads, counted on $dev, repaired"

# 2. A whole block of the other copy.
read -r dev1 ext1 data1 < <(copy_at r2 0 0 1)
head -c 4096 /dev/urandom | dd of="$T/$dev1.img" bs=4096 seek=$(((data1 + ext1 * ES) / 4096 + 9)) conv=notrunc 2>/dev/null
start_server
check_r2
[ "$(device_field "$dev1" csum_errors)" = 1 ] || fail "csum_errors on $dev1: want 1"
[ "$(device_field "$dev1" repaired)" = 1 ] || fail "repaired on $dev1: want 1"
stop_server
cmp <(dd if="$T/$dev1.img" bs=4096 skip=$(((data1 + ext1 * ES) / 4096 + 9)) count=1 2>/dev/null) \
    <(dd if="$T/ref2" bs=4096 skip=9 count=1 2>/dev/null) || fail "block 9 of $dev1 was not repaired"
ok "one overwritten block: correct reads, counted on $dev1, repaired"

# 3. A 1-replica volume has no good copy: EIO, never garbage or zeros.
stop_server
read -r dev0 ext0 data0 < <(copy_at r1 0 0 0)
poke "$T/$dev0.img" $((data0 + ext0 * ES + 5 * 4096)) 00ff00ff
start_server
nbdsh -u "$(uri r1)" -c "
import errno
ref = open('$T/ref1','rb').read()
try:
    h.pread(4096, 5 * 4096)
    raise SystemExit('a damaged block with no good copy was returned')
except nbd.Error as e:
    assert e.errnum == errno.EIO, e
assert h.pread(5 * 4096, 0) == ref[:5 * 4096]
assert h.pread(1 << 20, 6 * 4096) == ref[6 * 4096:6 * 4096 + (1 << 20)]"
ok "1 replica, damaged block: EIO; its neighbours read back right"
stop_server

# 4. One member overwritten from its checksum area to its end (its
# superblock and metadata are left alone): every read is still right.
coff=$(device_field "$dev" csum_offset)
$PY -c "
import os
fd = os.open('$T/$dev.img', os.O_WRONLY)
for o in range($coff, os.fstat(fd).st_size, 1 << 20):
    os.pwrite(fd, os.urandom(1 << 20), o)
os.close(fd)"
lines0=$(wc -l < "$T/nbdkit.log")
bad0=$(device_field "$dev" csum_errors)
start_server
check_r2
check_r2
bad=$(device_field "$dev" csum_errors)
fixed=$(device_field "$dev" repaired)
# Each read of a piece from the bad member heals that whole piece (an
# extent: 1024 blocks); reads from the good copy find nothing.
[ "$bad" -ge 1024 ] || fail "only $bad checksum errors on the overwritten member $dev"
[ "$fixed" = "$bad" ] || fail "$bad bad blocks found on $dev but $fixed repaired"
ok "a whole member overwritten: correct reads, $bad bad blocks found and repaired on $dev"
# The log gives a run of bad blocks one line, as far as a stripe unit
# (1 MiB here: 256 blocks) goes, and that line adds up.
tail -n +$((lines0 + 1)) "$T/nbdkit.log" | grep "checksum mismatch on device $dev" > "$T/runs"
$PY - "$T/runs" $((bad - bad0)) <<'PYEOF' || fail "the log lines of the bad runs: $(head -3 "$T/runs")"
import re, sys
lines = open(sys.argv[1]).read().splitlines()
total = 0
for l in lines:
    m = re.search(r"extent \d+ blocks (\d+)-(\d+) \(volume bytes (\d+)-(\d+)\); repaired$", l)
    assert m, "not a run of blocks: " + l
    b0, b1, v0, v1 = map(int, m.groups())
    assert b1 - b0 + 1 == 256 and b0 % 256 == 0, l
    assert v1 - v0 + 1 == 256 * 4096 and v0 % (1 << 20) == 0, l
    total += b1 - b0 + 1
# The count also has the member's checksum slots, overwritten too.
assert 1024 <= total <= int(sys.argv[2]), "%d blocks in %d lines, %s counted" % (total, len(lines), sys.argv[2])
PYEOF
ok "the log gives each bad run one line: $(wc -l < "$T/runs") lines for $(awk -F'[ -]' '{for(i=1;i<NF;i++) if($i=="blocks") n+=$(i+2)-$(i+1)+1} END{print n}' "$T/runs") blocks"

# 5. A member's file cut short behind strata's back (what lay past the
# cut is gone): it is not used, and status says why; its copies are read
# from the others.  Grown back to its size, it is used again, and scrub
# rewrites what it lost.
stop_server
size=$(stat -c %s "$T/$dev.img")
cut=$(( $(device_field "$dev" data_offset) + ES ))	# one extent left
truncate -s "$cut" "$T/$dev.img"
"$STRATA" status "$CONFIG" | grep "$T/$dev.img is $((cut >> 20)).0 MiB, smaller than the 256.0 MiB it was formatted with" \
  || fail "status does not say $dev was cut short: $("$STRATA" status "$CONFIG")"
out=$("$STRATA" status "$CONFIG" --json | $PY -c "import json,sys; print([d['state'] for d in json.load(sys.stdin)['devices'] if d['name'] == '$dev'][0])")
[ "$out" = missing ] || fail "$dev is $out, not missing"
# rebuild leaves a missing member's copies for it, and says so.
out=$("$STRATA" rebuild "$CONFIG" 2>&1) || fail "rebuild: $out"
echo "$out" | grep "device $dev is missing (not failed): its copies are left for it to come back; 'strata device fail $dev' lets rebuild replace them" \
  || fail "rebuild does not say why it left $dev's copies: $out"
out=$("$STRATA" rebuild "$CONFIG" --json 2>/dev/null) || fail "rebuild --json: $out"
[ "$(echo "$out" | $PY -c "import json,sys; print(json.load(sys.stdin)['missing_devices'])")" = "['$dev']" ] \
  || fail "rebuild --json does not list $dev as missing: $out"
start_server
check_r2
[ "$(device_field "$dev" csum_errors)" = 0 ] || fail "a member cut short was read"
stop_server
truncate -s "$size" "$T/$dev.img"
start_server
out=$("$STRATA" scrub "$CONFIG" r2 --repair 2>&1) || fail "scrub --repair: $out"
echo "$out" | grep -E "errors: [1-9][0-9]* \($dev " || fail "scrub found nothing lost on $dev: $out"
out=$("$STRATA" scrub "$CONFIG" r2 2>&1) || fail "a second scrub: $out"
echo "$out" | grep "errors: 0;" || fail "a second scrub is not clean: $out"
check_r2
ok "a member cut short is left out until it has its size again, then scrub repairs it"
