#!/usr/bin/env bash
# A cache device lost with dirty data in the cache (TESTING.md 20), and
# strata cache detach.  The cache devices are files served by nbdkit
# with the error filter in front (`touch $T/m8.fail` makes cache device
# c0 fail every request); the members are local files.
#  - Mirrored: one cache device fails while the cache holds dirty data.
#    The first read that fails on it drops it; nothing is lost: every
#    byte reads back, writes and flushes succeed, a kill -9 and a restart
#    without the failed device lose nothing either.  Then
#    cache detach while served: the data is all on the members, and the
#    pool opens without its cache section (and refuses one).
#  - Unmirrored: the only cache device fails holding dirty data.  The
#    flush fails and keeps failing (latched); reads of the lost ranges
#    fail with EIO, never the older data of the members; status lists
#    exactly those ranges; the rest reads back right; a write of whole
#    blocks makes them readable again.  cache detach is the operator's
#    act: flushes work again, the lost ranges stay listed and unreadable
#    after the pool is reopened without its cache.
source "$(dirname "$0")/functions.sh"
requires nbdkit nbdsh nbdcopy

# cache_pool NCACHE: members d0 d1 (local files), cache devices c0 (and
# c1) served on $T/m8.sock (and m9).  A single c0 is served by the eval
# plugin so that its FLUSH fails too while $T/m8.fail exists (the error
# filter fails only reads and writes).
cache_pool () {
  local n=$1 f=$T/d8.img
  if [ "$n" = 1 ]; then
    truncate -s 96M "$f"
    rm -f "$T/m8.sock"
    nbdkit -U "$T/m8.sock" -P "$T/m8.pid" --filter=error eval \
      get_size='echo 100663296' \
      pread="dd if=$f iflag=skip_bytes,count_bytes skip=\$4 count=\$3 status=none" \
      pwrite="dd of=$f oflag=seek_bytes conv=notrunc seek=\$4 status=none" \
      flush="if [ -e $T/m8.fail ]; then echo 'EIO injected' >&2; exit 1; fi; sync $f" \
      can_write='exit 0' can_flush='exit 0' can_fua='echo emulate' \
      error-file="$T/m8.fail" error-rate=1
    wait_socket "$T/m8.sock"
    members_cleanup
  fi
  for ((i = 8; i < 8 + n && n > 1; i++)); do start_member "$i" 96M; done
  {
    # The eval plugin runs a shell and dd for every request, one request
    # at a time: filling the cache queues hundreds of them, and on a
    # slow machine the last waited longer than the 30 s default timeout,
    # which dropped the device before the test failed it on purpose.
    # Here only m8.fail makes it fail (at once).
    if [ "$n" = 1 ]; then POOL_EXTRA="io_timeout: 10min" pool_section 1
    else pool_section 1; fi
    cat <<EOF
devices:
  - { name: d0, path: $T/d0.img, size: 512MiB }
  - { name: d1, path: $T/d1.img, size: 512MiB }
EOF
    for ((i = 0; i < n; i++)); do
      echo "  - { name: c$i, uri: \"nbd+unix:///?socket=$T/m$((8 + i)).sock\" }"
    done
    echo "cache:"
    echo "  mode: writeback"
    echo "  destage_age: 60min"	# only the watermarks destage
    [ "$n" = 2 ] && echo "  devices: [c0, c1]" || echo "  devices: [c0]"
    echo "volumes:"
    echo "  - { name: v, size: 64MiB, replicas: 2, stripe_width: 2, stripe_unit: 64KiB }"
  } > "$CONFIG"
  "$STRATA" init "$CONFIG" >/dev/null
  "$STRATA" apply "$CONFIG" >/dev/null
}
status_json () { "$STRATA" status "$CONFIG" --json; }
# without_cache: the YAML with its cache section and cache devices gone.
without_cache () {
  grep -v -e '^cache:' -e '^  mode: writeback' -e '^  devices: \[c' \
       -e '^  destage_age:' \
       -e 'name: c[01],' "$CONFIG" > "$T/nocache.yaml"
}

head -c 64M /dev/urandom > "$T/old.bin"	# on the members (destaged)
head -c 16M /dev/urandom > "$T/new.bin"	# dirty in the cache, at 16 MiB
# write_old_new: old.bin written and destaged, then new.bin at 16 MiB,
# flushed: dirty in the cache.
write_old_new () {
  nbdcopy "$T/old.bin" "$(uri v)"
  "$STRATA" cache flush "$CONFIG" > /dev/null
  nbdsh -u "$(uri v)" -c "
with open('$T/new.bin', 'rb') as f: data = f.read()
for o in range(0, len(data), 1 << 20):
    h.pwrite(data[o:o + (1 << 20)], (16 << 20) + o)
h.flush()"
}

# ---- mirrored ----
cache_pool 2
start_server
write_old_new
cp "$T/old.bin" "$T/want.bin"
dd if="$T/new.bin" of="$T/want.bin" bs=1M seek=16 conv=notrunc status=none
dirty=$(cache_field dirty)
[ "$dirty" = $((16 << 20)) ] || fail "$dirty bytes dirty in the mirrored cache, not 16 MiB"
touch "$T/m8.fail"
# Reads go to c0 first: the first one that fails drops it, and c1
# serves every cached block.
nbdcopy "$(uri v)" "$T/back.bin"
cmp "$T/back.bin" "$T/want.bin" || fail "data differs after losing one cache mirror"
# Writes and flushes go on, on c1 alone.
nbdsh -u "$(uri v)" -c "
h.pwrite(b'\x5a' * 65536, 40 << 20)
h.flush()"
dd if=/dev/zero bs=64K count=1 status=none | tr '\0' '\132' \
  | dd of="$T/want.bin" bs=64K seek=640 conv=notrunc status=none
status_json | $PY -c "
import json, sys
s = json.load(sys.stdin)
m = {x['device']: x['state'] for x in s['cache']['mirrors']}
assert m == {'c0': 'failed', 'c1': 'ok'}, m
assert not s['cache']['lost'] and not s['lost'], s" \
  || fail "status after losing c0: $(status_json)"
nbdcopy "$(uri v)" "$T/back.bin"
cmp "$T/back.bin" "$T/want.bin" || fail "data differs after writing on one cache mirror"
grep -q "cache mirror c0 dropped: read failed" "$T/nbdkit.log" \
  || fail "c0 was not dropped by a failed read"
ok "mirrored cache lost c0 with $dirty dirty bytes: a read dropped it, nothing lost, writes and flushes work"

# kill -9, and a restart with c1 still failing: replayed from c0.
stop_server KILL
start_server
nbdcopy "$(uri v)" "$T/back.bin"
cmp "$T/back.bin" "$T/want.bin" || fail "data differs after kill -9 with one cache mirror"
grep -q "cache mirror c0 is missing" "$T/nbdkit.log" \
  || fail "the restart did not say c0 is missing"
ok "kill -9 and a restart on the surviving mirror: nothing lost"

# cache detach while served: drained, then no longer used.
nbdsh -u "$(uri v)" -c "
h.pwrite(b'\xa5' * 65536, 48 << 20)
h.flush()"
dd if=/dev/zero bs=64K count=1 status=none | tr '\0' '\245' \
  | dd of="$T/want.bin" bs=64K seek=768 conv=notrunc status=none
[ "$(cache_field dirty)" -gt 0 ] || fail "nothing dirty before detach"
"$STRATA" cache detach "$CONFIG" > "$T/detach.log" 2>&1 \
  || fail "cache detach: $(cat "$T/detach.log")"
grep -q "cache detached: pool t$$ no longer uses c0 and c1" "$T/detach.log" \
  || fail "cache detach said: $(cat "$T/detach.log")"
"$STRATA" status "$CONFIG" > "$T/st.txt"
grep -q "^cache: detached" "$T/st.txt" \
  || fail "status after detach: $(cat "$T/st.txt")"
# Served on: writes go to the members alone.
nbdsh -u "$(uri v)" -c "
h.pwrite(b'\x3c' * 8192, (56 << 20) + 512)
h.flush()"
dd if=/dev/zero bs=8192 count=1 status=none | tr '\0' '\074' \
  | dd of="$T/want.bin" bs=1 seek=$(( (56 << 20) + 512 )) conv=notrunc status=none
nbdcopy "$(uri v)" "$T/back.bin"
cmp "$T/back.bin" "$T/want.bin" || fail "data differs after cache detach"
"$STRATA" cache detach "$CONFIG" > "$T/detach2.log" 2>&1 \
  && fail "a second cache detach was accepted"
grep -q "has no cache (it was detached)" "$T/detach2.log" \
  || fail "a second detach said: $(cat "$T/detach2.log")"
stop_server
# The pool refuses the cache section now, and opens without it; the
# cache devices are not needed (their servers are stopped).
"$STRATA" status "$CONFIG" > "$T/st.log" 2>&1 && fail "the detached cache's section was accepted"
grep -q "cache: pool t$$ has no cache (it was made without one, or its cache was detached): remove the cache section" "$T/st.log" \
  || fail "opening with the detached cache declared said: $(cat "$T/st.log")"
kill -9 "$(cat "$T/m8.pid")" "$(cat "$T/m9.pid")"
rm -f "$T/m8.sock" "$T/m9.sock" "$T/m8.fail"
without_cache
CONFIG=$T/nocache.yaml start_server
nbdcopy "$(uri v)" "$T/back.bin"
cmp "$T/back.bin" "$T/want.bin" || fail "the members do not hold the data after detach"
"$STRATA" status "$T/nocache.yaml" --json \
  | $PY -c "import sys,json; s=json.load(sys.stdin); assert s['cache'] is None and not s['lost'], s" \
  || fail "status without the cache"
stop_server
ok "cache detach while served: drained, the members alone hold every byte"

# ---- unmirrored ----
rm -f "$T"/d*.img "$T/control.sock"
cache_pool 1
start_server
write_old_new
dirty=$(cache_field dirty)
[ "$dirty" = $((16 << 20)) ] || fail "$dirty bytes dirty in the cache, not 16 MiB"
touch "$T/m8.fail"
# The next flush fails on the only cache device: it latches, and every
# flush fails from now on.
nbdsh -u "$(uri v)" -c "
for i in range(3):
    try:
        h.flush()
    except nbd.Error as e:
        continue
    raise SystemExit('flush %d succeeded after the cache device failed' % i)"
"$STRATA" status "$CONFIG" > "$T/st.log"
grep -q "the cache is LOST" "$T/st.log" || fail "status: $(cat "$T/st.log")"
grep -q "^LOST with the cache: volume v bytes" "$T/st.log" || fail "status lists no lost range: $(cat "$T/st.log")"
# Exactly what was dirty: [16 MiB, 32 MiB).
status_json | $PY -c "
import json, sys
lost = sorted((x['offset'], x['offset'] + x['length']) for x in json.load(sys.stdin)['lost'])
assert all(a[1] == b[0] for a, b in zip(lost, lost[1:])), lost
assert lost[0][0] == 16 << 20 and lost[-1][1] == 32 << 20, lost" \
  || fail "the lost ranges are not exactly what was dirty: $(cat "$T/st.log")"
# The lost ranges lie within what was dirty; every 64 KiB piece reads
# back as the new data, or fails with EIO exactly where status says it
# is lost: never the old data of the members.
check_lost () {
  status_json > "$T/st.json"
  nbdsh -u "$(uri v)" -c "
import json
s = json.load(open('$T/st.json'))
lost = [(x['offset'], x['offset'] + x['length']) for x in s['lost'] if x['volume'] == 'v']
assert lost, 'no lost range listed'
old = open('$T/old.bin', 'rb').read()
new = open('$T/new.bin', 'rb').read()
want = bytearray(old); want[16 << 20:32 << 20] = new
for a, b in $1:
    want[a:b] = b'\xee' * (b - a)
nlost = 0
for o in range(0, len(want), 65536):
    is_lost = any(a < o + 65536 and o < b for a, b in lost)
    try:
        got = h.pread(65536, o)
    except nbd.Error as e:
        assert is_lost, 'EIO at %d, not listed as lost' % o
        assert (16 << 20) <= o < (32 << 20), 'lost range %d outside what was dirty' % o
        nlost += 1
        continue
    assert not is_lost, 'read %d succeeded over a lost range' % o
    assert got == bytes(want[o:o + 65536]), 'wrong data at %d (old: %s)' % (o, got == old[o:o + 65536])
print(nlost)"
}
nlost=$(check_lost "[]") || fail "reads after the cache was lost"
[ "$nlost" = 256 ] || fail "$nlost pieces of 64 KiB failed to read, not 256"
# Whole blocks written again are readable; a partial block over a lost
# one is refused.
nbdsh -u "$(uri v)" -c "
import json
s = json.load(open('$T/st.json'))
a = [x['offset'] for x in s['lost'] if x['volume'] == 'v'][0]
h.pwrite(b'\xee' * 65536, a - a % 65536)
assert h.pread(65536, a - a % 65536) == b'\xee' * 65536
try:
    h.pwrite(b'x' * 100, [x['offset'] + x['length'] for x in s['lost']][-1] - 4096 + 10)
    raise SystemExit('a partial write into a lost block was accepted')
except nbd.Error:
    pass
print(a - a % 65536)" > "$T/rewritten" || fail "rewriting a lost range"
rw=$(cat "$T/rewritten")
nlost2=$(check_lost "[($rw, $rw + 65536)]") || fail "reads after rewriting a lost range"
ok "unmirrored cache lost with $dirty dirty bytes: flushes fail, $nlost pieces EIO as status lists, none stale; rewritten blocks read back"

# The operator acts: cache detach.  Flushes work again; what was lost
# stays lost, also after a restart without the cache.
"$STRATA" cache detach "$CONFIG" > "$T/detach.log" 2>&1 \
  || fail "cache detach of a lost cache: $(cat "$T/detach.log")"
grep -q "stay lost until written again" "$T/detach.log" \
  || fail "cache detach said: $(cat "$T/detach.log")"
nbdsh -u "$(uri v)" -c "h.flush()" || fail "flush after detaching the lost cache"
stop_server
kill -9 "$(cat "$T/m8.pid")"
rm -f "$T/m8.sock"
without_cache
CONFIG=$T/nocache.yaml
start_server
"$STRATA" status "$CONFIG" > "$T/st.txt"
grep -q "^LOST with the cache: volume v" "$T/st.txt" \
  || fail "the lost ranges are not listed after the restart"
nlost3=$(check_lost "[($rw, $rw + 65536)]") || fail "reads after the restart without the cache"
[ "$nlost3" = "$nlost2" ] || fail "$nlost2 pieces were lost before the restart, $nlost3 after"
ok "cache detach of the lost cache: flushes work, $nlost3 pieces stay lost after a restart without it"
stop_server

# ---- the members full: writing back fails, nothing is lost ----
# 96 MiB written back to members with room for less: cache flush gives
# up after 10 s and says why; status shows it; every byte still reads
# back (from the cache), also after a restart.
rm -f "$T"/d*.img "$T/control.sock"
{ pool_section 1; cat <<EOF; } > "$CONFIG"
devices:
  - { name: d0, path: $T/d0.img, size: 64MiB }
  - { name: d1, path: $T/d1.img, size: 64MiB }
  - { name: ssd, path: $T/ssd.img, size: 256MiB }
cache:
  mode: writeback
  devices: [ssd]
  destage_age: 60min
volumes:
  - { name: v, size: 256MiB, replicas: 2 }
EOF
"$STRATA" init "$CONFIG" >/dev/null
"$STRATA" apply "$CONFIG" >/dev/null
start_server
head -c 96M /dev/urandom > "$T/big.bin"
nbdcopy "$T/big.bin" "$(uri v)" || fail "writing 96 MiB into the cache"
"$STRATA" cache flush "$CONFIG" > "$T/flush.log" 2>&1 \
  && fail "cache flush succeeded with members too small: $(cat "$T/flush.log")"
grep -q "writing back has failed for 10 s: .*stays in the cache" "$T/flush.log" \
  || fail "cache flush said: $(cat "$T/flush.log")"
"$STRATA" status "$CONFIG" > "$T/st.txt"
grep -q "^cache: writing back FAILS (retrying): " "$T/st.txt" \
  || fail "status does not show the failing write-back: $(cat "$T/st.txt")"
nbdcopy "$(uri v)" "$T/back.bin"
cmp <(head -c $((96 << 20)) "$T/back.bin") "$T/big.bin" \
  || fail "data differs while writing back fails"
stop_server KILL
start_server
nbdcopy "$(uri v)" "$T/back.bin"
cmp <(head -c $((96 << 20)) "$T/back.bin") "$T/big.bin" \
  || fail "data differs after kill -9 while writing back fails"
stop_server
ok "members too small to take what the cache holds: cache flush fails and says why, nothing lost"
