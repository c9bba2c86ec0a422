#!/usr/bin/env bash
# TRIM and WRITE_ZEROES over whole chunks while a member is gone
# (DESIGN.md section 4: with N replicas a volume keeps serving writes
# with N-1 devices failed).  Freeing a chunk needs every one of its
# extents zeroed first, since a free extent must read as zeros; an
# extent on a dead member cannot be.  Such a chunk stays allocated and
# is zeroed in place instead, its copy on the dead member made stale,
# and the request succeeds.  A volume delete, which cannot keep its
# chunks, is refused with the reason and keeps the volume whole.  Once
# the member is back, the same trims free the chunks, and deleting
# works.
source "$(dirname "$0")/functions.sh"
requires nbdkit nbdsh nbdinfo
export STRATA_REMOTE=1

# Chunks of 4 MiB (width 1): v has 6 of them, w 8; three members.
make_pool 3 512MiB "{ name: v, size: 24MiB, replicas: 2 }" \
                   "{ name: w, size: 32MiB, replicas: 2 }"
start_server
for vol in v w; do
  nbdsh -u "$(uri $vol)" -c '
for i in range(h.get_size() >> 20):
    h.pwrite(bytes([i + 1]) * (1 << 20), i << 20)
h.flush()'
done
[ "$(volume_field v allocated)" = $((24 << 20)) ] || fail "v: $(volume_field v allocated) allocated"

# The member to lose: one holding copies of w and of v's chunks 1-5
# (each chunk has copies on two of the three).
x=$("$STRATA" status "$CONFIG" --json --map | $PY -c '
import json, sys
vols = {v["name"]: v for v in json.load(sys.stdin)["volumes"]}
def holds(vol, chunks):
    return [d for ch in vols[vol]["map"] if ch["chunk"] in chunks
            for col in ch["columns"] for d in col]
cands = [d for d in ("d0", "d1", "d2") if d in holds("w", range(8))]
print(max(cands, key=lambda d: holds("v", range(1, 6)).count(d))[1:])')
kill_member "$x"
# The first request to meet the dead member fails it.
nbdsh -u "$(uri v)" -c '
for c in range(6):
    h.pwrite(b"\x77" * 4096, c << 22)
h.flush()' || fail "a write with d$x gone failed"
[ "$(device_field d$x state)" = failed ] || fail "d$x is $(device_field d$x state)"

# Chunks 1-2 trimmed, 3-4 zeroed (holes allowed), 5 zeroed without
# holes; chunk 0 (written above) kept.
nbdsh -u "$(uri v)" -c '
h.trim(8 << 20, 4 << 20)
h.zero(8 << 20, 12 << 20)
h.zero(4 << 20, 20 << 20, nbd.CMD_FLAG_NO_HOLE)
h.flush()
assert h.pread(4096, 0) == b"\x77" * 4096
assert h.pread((4 << 20) - 4096, 4096) == b"".join(bytes([i + 1]) * (1 << 20) for i in range(4))[4096:]
for mib in range(4, 24):
    assert h.pread(1 << 20, mib << 20) == bytes(1 << 20), "MiB %d is not zeros" % mib
' || fail "trim or zero with d$x gone failed, or read back wrong: $(tail -5 "$T/nbdkit.log")"
# Chunks with a copy on d$x stay allocated; the volume is degraded.
case $(volume_field v health) in degraded:*) ;; *) fail "v is $(volume_field v health)";; esac
ok "trim and zeroes of whole chunks succeed with d$x gone, and read back as zeros"

# A delete or a shrink cannot keep the chunks: refused, saying why,
# with nothing changed.
out=$("$STRATA" volume delete "$CONFIG" w 2>&1) && fail "w deleted with d$x gone"
echo "$out" | grep "volume w: device d$x is failed and holds copies of its chunks" \
  || fail "unclear: $out"
echo "$out" | grep "strata device add" || fail "no way out given: $out"
# v's chunks 1-5 (some with a copy on d$x, kept above) would go.
out=$("$STRATA" volume resize "$CONFIG" v 4MiB --shrink 2>&1) && fail "v shrunk with d$x gone"
echo "$out" | grep "volume v: device d$x is failed and holds copies of its chunks" \
  || fail "unclear: $out"
[ "$(nbdinfo --size "$(uri v)")" = $((24 << 20)) ] || fail "a refused shrink changed v's size"
nbdsh -u "$(uri w)" -c '
for i in range(32):
    assert h.pread(1 << 20, i << 20) == bytes([i + 1]) * (1 << 20), "w MiB %d" % i' \
  || fail "a refused delete changed w"
ok "volume delete and shrink with d$x gone are refused: $(echo "$out" | tail -1)"

# d$x back: its stale copies (the zeros) are copied to it, the volume
# is healthy, and trimming again now frees the chunks.
start_member "$x" 512MiB
"$STRATA" device add "$CONFIG" "d$x" > "$T/add.out" 2>&1 \
  || { cat "$T/add.out"; fail "device add d$x"; }
[ "$(volume_field v health)" = healthy ] || fail "v is $(volume_field v health) after d$x is back"
nbdsh -u "$(uri v)" -c 'h.trim(20 << 20, 4 << 20); h.flush()'
[ "$(volume_field v allocated)" = $((4 << 20)) ] \
  || fail "v: $(volume_field v allocated) bytes allocated after the trim with d$x back"
nbdsh -u "$(uri v)" -c '
assert h.pread(4096, 0) == b"\x77" * 4096
for mib in range(1, 4):
    assert h.pread(1 << 20, mib << 20) == bytes([mib + 1]) * (1 << 20)
assert h.pread(20 << 20, 4 << 20) == bytes(20 << 20)' || fail "v reads back wrong with d$x back"
"$STRATA" volume delete "$CONFIG" w | grep 'deleted volume w' || fail "delete of w with d$x back"
out=$("$STRATA" scrub "$CONFIG" --json) || fail "scrub: $out"
echo "$out" | $PY -c "import json, sys; r = json.load(sys.stdin); assert r['errors'] == 0, r" \
  || fail "scrub found errors: $out"
stop_server
n=$(compare_replicas) || fail "replicas differ"
ok "with d$x back: healthy, trims free the chunks, delete works, $n columns' replicas equal, scrub clean"
