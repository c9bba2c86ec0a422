#!/usr/bin/env bash
# pool.checksum_memory: a pool whose block checksums may take 64 KiB of
# memory (16 columns' worth) serves volumes of many more columns.  fio
# verify runs with zero errors while the arrays come and go; the memory
# in use goes back under the limit once the columns are clean; a byte
# damaged behind strata's back in the first column (whose checksums the
# shrinker's walk reaches first) is caught by a read and healed on disk,
# and scrub (online and offline) finds everything clean afterwards.  The
# unit tests (check_integrity.c) check which arrays go and that a damaged
# block is caught through checksums read back from disk.
source "$(dirname "$0")/functions.sh"
requires nbdkit nbdsh fio

POOL_EXTRA="checksum_memory: 64KiB" \
make_pool 3 1GiB "{ name: ref, size: 128MiB, replicas: 2, stripe_width: 2 }" \
                 "{ name: mi, size: 256MiB, replicas: 2, stripe_width: 2 }"
head -c 128M /dev/urandom > "$T/ref"
start_server
nbdsh -u "$(uri ref)" -c "
ref = open('$T/ref', 'rb').read()
for o in range(0, 128 << 20, 32 << 20):
    h.pwrite(ref[o:o + (32 << 20)], o)
h.flush()"

mem_field () {
  "$STRATA" status "$CONFIG" --json \
    | $PY -c "import sys,json; print(json.load(sys.stdin)['pool']['checksum_memory']['$1'])"
}
check_ref () {
  nbdsh -u "$(uri ref)" -c "
ref = open('$T/ref', 'rb').read()
for o in range(0, 128 << 20, 32 << 20):
    assert h.pread(32 << 20, o) == ref[o:o + (32 << 20)], 'ref differs at %d' % o" \
    || fail "$1: volume ref does not read back what was written"
}
# Wait until the cleaner has made the columns clean and the arrays are
# back within the limit (a pass every 5 s, a check twice a second).
wait_within () {
  local used
  for _ in $(seq 60); do
    used=$(mem_field used)
    [ "$used" -le 65536 ] && return 0
    sleep 0.5
  done
  fail "$1: checksums in memory stay at $used bytes, over the 65536 of checksum_memory"
}

[ "$(mem_field limit)" = 65536 ] || fail "status shows a checksum_memory limit of $(mem_field limit)"
"$STRATA" status "$CONFIG" | grep -E "^checksums in memory: .* of 64.0 KiB \(pool.checksum_memory\)$" >/dev/null \
  || fail "status has no line for the checksums in memory: $("$STRATA" status "$CONFIG")"

# 1. fio verify over 32 columns (16 fit) while arrays are dropped and
#    loaded again.
fio --name=verify --ioengine=nbd --uri="$(uri mi)" --rw=randrw \
    --bsrange=4k-1m --iodepth=32 --size=128M --io_size=256M \
    --verify=crc32c --verify_backlog=128 --verify_fatal=1 \
    --serialize_overlap=1 --do_verify=1 --verify_state_save=0 > "$T/fio.log" 2>&1 \
  || { cat "$T/fio.log"; fail "fio verify on mi"; }
grep -q 'err= 0' "$T/fio.log" || { cat "$T/fio.log"; fail "fio errors on mi"; }
wait_within "after fio"
[ "$(csum_errors)" = 0 ] || fail "checksum errors reported on a pool nobody damaged"
check_ref "after fio"
ok "fio verify over 32 columns with room for 16: zero errors, memory back within the limit"

# 2. Reading all of ref again drops the checksums of the columns read
#    first (the walk that drops them starts there): damage a byte of
#    chunk 0's first column on one copy, and read it from both.
check_ref "before the damage"
wait_within "after reading ref"
read -r dev ext data < <(copy_at ref 0 0 0)
flip "$T/$dev.img" $((data + ext * (4 << 20) + 9 * 4096 + 123))
nbdsh -u "$(uri ref)" -c "
ref = open('$T/ref', 'rb').read(1 << 20)
for _ in range(2):    # consecutive reads start from different copies
    assert h.pread(1 << 20, 0) == ref, 'a damaged block was returned'" \
  || fail "a read returned the byte damaged on $dev"
[ "$(csum_errors)" = 1 ] || fail "the damaged byte was not caught by its checksum: $(csum_errors) errors"
check_ref "after the damage"
read -r odev oext odata < <(copy_at ref 0 0 1)
cmp <(dd if="$T/$dev.img" bs=4096 skip=$(((data + ext * (4 << 20)) / 4096 + 9)) count=1 2>/dev/null) \
    <(dd if="$T/$odev.img" bs=4096 skip=$(((odata + oext * (4 << 20)) / 4096 + 9)) count=1 2>/dev/null) \
  || fail "the damaged block on $dev was not rewritten from the copy on $odev"
ok "a byte damaged on $dev behind strata's back is caught by its checksum and healed on disk"

"$STRATA" scrub "$CONFIG" --json > "$T/s1.json" || fail "online scrub: $(cat "$T/s1.json")"
$PY - "$T/s1.json" <<'PY' || fail "online scrub report: $(cat "$T/s1.json")"
import json, sys
r = json.load(open(sys.argv[1]))
assert r["errors"] == 0, r
PY
wait_within "after the online scrub"
stop_server

# 3. Offline, where no cleaner thread runs and scrub drops arrays
#    itself: clean too.
"$STRATA" scrub "$CONFIG" --json > "$T/s2.json" || fail "offline scrub: $(cat "$T/s2.json")"
$PY - "$T/s2.json" <<'PY' || fail "offline scrub report: $(cat "$T/s2.json")"
import json, sys
r = json.load(open(sys.argv[1]))
assert r["errors"] == 0, r
assert r["blocks"] > 0, r
PY
start_server
check_ref "after a restart"
ok "scrub online and offline: clean; ref reads back after a restart"
