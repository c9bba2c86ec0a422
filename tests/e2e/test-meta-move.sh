#!/usr/bin/env bash
# Metadata replicas move off devices that leave (TESTING.md 14 and 17;
# strata(8) device remove, device replace, rebuild).
#
# A pool of 5 remote members keeps its journal on d0, d1 and d2.
# Online, `device replace d0 d5` gives d5 the replica d0 held, and d0's
# superblock stops claiming one.  Then the host of d1 is lost: `rebuild`
# moves d1's replica to a member in a free failure domain as well as
# d1's copies, and more data is written.  When d1 comes back with its old
# superblock, it is not counted: with the new members d2 and d3 away, the
# pool refuses to open (1 of 3 replicas) instead of trusting d1; with d2
# back, it opens with everything written after the move.  A pool whose
# every device holds a replica refuses to remove one before anything
# moves.
source "$(dirname "$0")/functions.sh"
requires nbdkit nbdsh
export STRATA_REMOTE=1

MiB=$((1 << 20))
make_pool 5 128MiB "{ name: v, size: 32MiB, replicas: 2, stripe_unit: 1MiB }"
export T

# members: the devices that hold a metadata replica, as status says.
members () {
  "$STRATA" status "$CONFIG" --json | $PY -c "
import json, sys
print(' '.join(sorted(d['name'] for d in json.load(sys.stdin)['devices']
                      if d['metadata'])))"
}
# sb_meta FILE: 1 if the superblock in FILE claims a metadata replica.
sb_meta () { $PY -c "
import struct
b = open('$1', 'rb').read(512)
assert b[:8] == b'STRATASB', 'no superblock'
print(struct.unpack_from('<I', b, 12)[0] & 1)"; }

[ "$(members)" = "d0 d1 d2" ] || fail "metadata replicas: $(members)"
head -c $((16 * MiB)) /dev/urandom > "$T/expect"
start_server
nbdsh -u "$(uri v)" -c "h.pwrite(open('$T/expect', 'rb').read(), 0); h.flush()"

# ---- online: an up member is replaced ----
cat >> "$T/d5.yaml" <<YAML
  - { name: d5, path: $T/d5.img, size: 128MiB, domain: host5 }
YAML
$PY - <<'END_OF_PY'
import os
T = os.environ["T"]
lines = open(T + "/pool.yaml").read().split("\n")
i = lines.index("volumes:")
lines[i:i] = [open(T + "/d5.yaml").read().rstrip("\n")]
open(T + "/pool.yaml", "w").write("\n".join(lines))
END_OF_PY
"$STRATA" device replace "$CONFIG" d0 d5 > "$T/replace.out" 2>&1 \
  || { cat "$T/replace.out"; fail "device replace d0 d5 failed"; }
grep -q "^metadata replica moved from d0 to d5$" "$T/replace.out" \
  || { cat "$T/replace.out"; fail "the replace does not report the metadata move"; }
[ "$(members)" = "d1 d2 d5" ] || fail "after the replace, metadata replicas: $(members)"
[ "$(device_field d0 state)" = removed ] || fail "d0 is not removed"
[ "$(sb_meta "$T/d0.img")" = 0 ] || fail "d0's superblock still claims a metadata replica"
[ "$(sb_meta "$T/d5.img")" = 1 ] || fail "d5's superblock does not claim its replica"
nbdsh -u "$(uri v)" -c "
assert h.pread(16 << 20, 0) == open('$T/expect', 'rb').read(), 'v differs'"
ok "online: device replace d0 d5 moved the metadata replica to d5 ($(members))"

# ---- a metadata member's host is lost ----
kill_member 1
"$STRATA" device fail "$CONFIG" d1 >/dev/null
"$STRATA" rebuild "$CONFIG" --json > "$T/rebuild.json" 2>"$T/rebuild.err" \
  || { cat "$T/rebuild.err"; fail "rebuild failed"; }
$PY - <<'END_OF_PY' || fail "rebuild report: $(cat "$T/rebuild.json")"
import json, os
r = json.load(open(os.environ["T"] + "/rebuild.json"))
# d2 and d5 hold the others: d3 is the first device in a free domain.
assert r["metadata_moves"] == [{"from": "d1", "to": "d3"}], r["metadata_moves"]
assert r["metadata_stuck"] == 0 and r["state"] == "finished", r
assert all(m["from"][0] == "d1" for m in r["moves"]), r["moves"]
END_OF_PY
[ "$(members)" = "d2 d3 d5" ] || fail "after the rebuild, metadata replicas: $(members)"
[ "$(device_field d1 state)" = removed ] || fail "d1 is $(device_field d1 state), not removed"
# Written after the move: new chunks, committed by the new members only.
head -c $((8 * MiB)) /dev/urandom > "$T/more"
nbdsh -u "$(uri v)" -c "
h.pwrite(open('$T/more', 'rb').read(), 20 << 20); h.flush()"
ok "rebuild moved the lost d1's metadata replica to d3 ($(members)) and wrote more"
stop_server

# ---- d1 comes back claiming its old replica; the new members are away ----
start_member 1 128MiB
[ "$(sb_meta "$T/d1.img")" = 1 ] || fail "d1's superblock was expected to be stale"
kill_member 2
kill_member 3
if "$STRATA" status "$CONFIG" > "$T/st.out" 2>&1; then
  cat "$T/st.out"
  fail "the pool opened with d1's stale replica standing in for a majority"
fi
grep -q "only 1 of 3 metadata replicas are readable and a majority (2) is needed" \
  "$T/st.out" || { cat "$T/st.out"; fail "unclear refusal"; }
# The members the journal could not read are named, with the reason.
for i in 2 3; do
  grep -q "device d$i could not be read: .*m$i\.sock" "$T/st.out" \
    || { cat "$T/st.out"; fail "the refusal does not say why d$i is missing"; }
done
ok "with d2 and d3 away, the pool refuses to open; d1's old replica does not count"

start_member 2 128MiB
"$STRATA" status "$CONFIG" > "$T/st.out" 2>&1 \
  || { cat "$T/st.out"; fail "the pool does not open with d2 and d5"; }
[ "$(members)" = "d2 d3 d5" ] || fail "after the restart, metadata replicas: $(members)"
start_server
nbdsh -u "$(uri v)" -c "
assert h.pread(16 << 20, 0) == open('$T/expect', 'rb').read(), 'v differs'
assert h.pread(8 << 20, 20 << 20) == open('$T/more', 'rb').read(), 'the later write differs'"
stop_server
start_member 3 128MiB
start_server
for _ in $(seq 50); do
  "$STRATA" status "$CONFIG" > "$T/st.out" 2>&1 || true
  grep -q "^metadata: .*d3 in sync" "$T/st.out" && break
  sleep 0.2
done
grep -q "^metadata: .*d3 in sync" "$T/st.out" \
  || { cat "$T/st.out"; fail "d3's replica is not in sync again"; }
stop_server
n=$(compare_replicas) || fail "replicas differ"
ok "with d2 back the pool opens with every write after the move; $n columns compare equal"

# ---- nowhere to go: every device holds a replica ----
mkdir "$T/small"
cat > "$T/small/pool.yaml" <<YAML
pool: { name: s$$, extent_size: 1MiB, metadata_size: 4MiB, control_socket: $T/small/c.sock }
devices:
  - { name: e0, path: $T/small/e0.img, size: 64MiB }
  - { name: e1, path: $T/small/e1.img, size: 64MiB }
  - { name: e2, path: $T/small/e2.img, size: 64MiB }
volumes:
  - { name: w, size: 8MiB }
YAML
"$STRATA" init "$T/small/pool.yaml" >/dev/null
"$STRATA" apply "$T/small/pool.yaml" >/dev/null
# What the pool holds (opening it for writing starts a new term, so the
# bytes of the metadata areas change anyway).
layout () {
  "$STRATA" status "$T/small/pool.yaml" --json --map | $PY -c "
import json, sys
s = json.load(sys.stdin)
print([(d['name'], d['state'], d['metadata'], d['used_extents'])
       for d in s['devices']], [v['map'] for v in s['volumes']])"
}
before=$(layout)
if "$STRATA" device remove "$T/small/pool.yaml" e0 > "$T/rm.out" 2>&1; then
  fail "device remove of the last place for a metadata replica accepted"
fi
grep -q "device e0 holds a metadata replica and no other usable device can take it" \
  "$T/rm.out" || { cat "$T/rm.out"; fail "unclear refusal"; }
[ "$(layout)" = "$before" ] || fail "the refused remove changed the pool: $(layout)"
ok "device remove refuses when no device can take the metadata replica, and changes nothing"

# ---- no room for the copies: refused before anything moves ----
mkdir "$T/full"
CONFIG=$T/full/pool.yaml
cat > "$CONFIG" <<YAML
pool: { name: f$$, extent_size: 1MiB, metadata_size: 4MiB, metadata_replicas: 1, control_socket: $T/full/c.sock }
devices:
  - { name: e0, path: $T/full/e0.img, size: 64MiB }
  - { name: e1, path: $T/full/e1.img, size: 64MiB }
  - { name: e2, path: $T/full/e2.img, size: 64MiB }
volumes:
  - { name: f, size: 150MiB }
YAML
"$STRATA" init "$CONFIG" >/dev/null
"$STRATA" apply "$CONFIG" >/dev/null
start_server
nbdsh -u "$(uri f)" -c '
for i in range(150):
    h.pwrite(b"f" * (1 << 20), i << 20)
h.flush()'
full_layout () {
  "$STRATA" status "$CONFIG" --json --map | $PY -c "
import json, sys
s = json.load(sys.stdin)
print([(d['name'], d['state'], d['used_extents']) for d in s['devices']], [v['map'] for v in s['volumes']])"
}
before=$(full_layout)
"$STRATA" device remove "$CONFIG" e2 > "$T/rm3.out" 2>&1 && fail "e2 removed with no room for its copies"
grep "device e2 was not removed: it holds [0-9.]* MiB of copies and the other usable devices have [0-9.]* MiB free; nothing was moved" \
  "$T/rm3.out" || fail "unclear refusal: $(cat "$T/rm3.out")"
[ "$(full_layout)" = "$before" ] || fail "the refused remove changed the pool"
nbdsh -u "$(uri f)" -c '
for i in range(150):
    assert h.pread(1 << 20, i << 20) == b"f" * (1 << 20), i' || fail "f does not read back"
stop_server
ok "device remove with no room for the copies is refused before anything moves"
