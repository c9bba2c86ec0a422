#!/usr/bin/env bash
# Stale copies (TESTING.md 15, 16; DESIGN.md section 4).
#
# 15. A remote member fails for a few seconds while a few chunks are
#     written, then comes back with `strata device add`: exactly the
#     copies it missed are copied again (counted), nothing else.
# 16. Member A is out while a chunk is written, then A comes back while
#     member B (the chunk's other copy) is out: A's stale copy is never
#     served (the chunk reads EIO, also after a restart), the rest reads
#     back right, and once B is back a rebuild brings A's copy up to date.
source "$(dirname "$0")/functions.sh"
requires nbdkit nbdsh
export STRATA_REMOTE=1

MiB=$((1 << 20))
make_pool 5 256MiB "{ name: r2, size: 96MiB, replicas: 2, stripe_unit: 1MiB }"
start_server

map_json () { "$STRATA" status "$CONFIG" --json --map > "$T/map.json"; }
# chunks_on DEV [DEV2]: the chunks of r2 with a copy on DEV (and DEV2).
chunks_on () { map_json; $PY - "$@" <<'END_OF_PY'
import json, os, sys
s = json.load(open(os.environ["T"] + "/map.json"))
v = [v for v in s["volumes"] if v["name"] == "r2"][0]
print(" ".join(str(c["chunk"]) for c in v["map"]
               if all(d in c["columns"][0] for d in sys.argv[1:])))
END_OF_PY
}
# wait_clean: until no column of the pool is dirty (the cleaner has
# written every checksum slot), so that only writes count below.
wait_clean () {
  for _ in $(seq 150); do
    map_json
    $PY -c "
import json, sys
s = json.load(open('$T/map.json'))
sys.exit(any(c['dirty'] for v in s['volumes'] for c in v['map']))" && return 0
    sleep 0.2
  done
  fail "columns stayed dirty"
}
export T

# The whole volume: 24 chunks of 4 MiB, each copy on two of d0..d4.
# The metadata replicas are on d0..d2: A and B below are never both of
# them, so that the journal keeps its majority while both are out.
head -c $((96 * MiB)) /dev/urandom > "$T/expect"
nbdsh -u "$(uri r2)" -c "
data = open('$T/expect', 'rb').read()
for o in range(0, len(data), 16 << 20):
    h.pwrite(data[o:o + (16 << 20)], o)
h.flush()"
wait_clean

# ---- 15: member D away for a few seconds ----
# D: the member with the most copies (placement is weighted, not fixed);
# the journal keeps its majority whichever it is.
D=$(for d in d0 d1 d2 d3 d4; do echo "$(chunks_on $d | wc -w) $d"; done | sort -n | tail -n1 | cut -d' ' -f2)
md=${D#d}
on_d=($(chunks_on "$D"))
off_d=($(comm -13 <(printf '%s\n' "${on_d[@]}" | sort) <(seq 0 23 | sort) | sort -n))
[ ${#on_d[@]} -ge 5 ] && [ ${#off_d[@]} -ge 2 ] || fail "placement: on $D: ${on_d[*]}"
written=("${on_d[0]}" "${on_d[2]}" "${on_d[4]}" "${off_d[0]}")
echo "$D holds chunks ${on_d[*]}; writing chunks ${written[*]} while it is away"

touch "$T/m$md.fail"
for c in "${written[@]}"; do
  $PY - "$c" <<'END_OF_PY'
import os, sys
c = int(sys.argv[1])
off = c * (4 << 20) + 12345
data = os.urandom(200000)
with open(os.environ["T"] + "/expect", "r+b") as f:
    f.seek(off); f.write(data)
open(os.environ["T"] + "/w%d" % c, "wb").write(data)
END_OF_PY
  nbdsh -u "$(uri r2)" -c "
h.pwrite(open('$T/w$c', 'rb').read(), $c * (4 << 20) + 12345)
h.flush()"
done
sleep 2
rm -f "$T/m$md.fail"
[ "$(device_field $D state)" = failed ] || fail "$D is $(device_field $D state), not failed"
stale=$(device_field $D stale_copies)
[ "$stale" = 3 ] || fail "$D has $stale stale copies; 3 chunks with a copy there were written"
ok "$D failed while away; exactly the 3 copies it missed are stale"

"$STRATA" device add "$CONFIG" $D --json > "$T/add.json" 2> "$T/add.err" \
  || { cat "$T/add.err"; fail "device add $D failed"; }
$PY - "$D" "${written[0]}" "${written[1]}" "${written[2]}" <<'END_OF_PY'
import json, os, sys
r = json.loads(open(os.environ["T"] + "/add.json").read().splitlines()[0])
D = sys.argv[1]
want = sorted(int(c) for c in sys.argv[2:])
got = sorted(m["chunk"] for m in r["moves"])
assert r["resynced"] == 3 and got == want, (r["resynced"], got, want)
assert all(m["from"] == m["to"] and m["to"][0] == D for m in r["moves"]), r["moves"]
assert r["bytes"] == 3 * (4 << 20), r["bytes"]
print("resynced chunks", got, "bytes", r["bytes"])
END_OF_PY
[ "$(device_field $D state)" = up ] || fail "$D is $(device_field $D state) after device add"
[ "$(device_field $D stale_copies)" = 0 ] || fail "$D still has stale copies"
ok "device add $D: only the 3 missed copies resynced (12 MiB of ${#on_d[@]} copies there)"

nbdsh -u "$(uri r2)" -c "
exp = open('$T/expect', 'rb').read()
for o in range(0, len(exp), 16 << 20):
    assert h.pread(16 << 20, o) == exp[o:o + (16 << 20)], 'volume differs at %d' % o"
stop_server
n=$(compare_replicas) || fail "replicas differ after the resync"
ok "volume reads back; the copies of all $n columns compare equal"
start_server

# ---- 16: A out, write, A back while B out ----
# Chunk x has its copies on A and B, not both metadata replicas (d0..d2).
map_json
read -r x A B < <($PY - <<'END_OF_PY'
import json, os
s = json.load(open(os.environ["T"] + "/map.json"))
v = [v for v in s["volumes"] if v["name"] == "r2"][0]
for c in v["map"]:
    a, b = c["columns"][0]
    if a in ("d3", "d4") or b in ("d3", "d4"):
        print(c["chunk"], a, b)
        break
END_OF_PY
)
[ -n "$x" ] || fail "no chunk with a copy on d3 or d4"
ma=${A#d} mb=${B#d}
on_a=($(chunks_on "$A"))
echo "chunk $x has its copies on A=$A and B=$B"
touch "$T/m$ma.fail"
head -c $((4 * MiB)) /dev/urandom > "$T/x2"
nbdsh -u "$(uri r2)" -c "
h.pwrite(open('$T/x2', 'rb').read(), $x * (4 << 20))
h.flush()"
[ "$(device_field $A state)" = failed ] || fail "$A did not fail"
# The write has reached B's checksum slot (a copy whose column was being
# written when its device failed is stale too: its slot may be behind).
wait_clean
# B out: its member fails every request, and the operator says so.
touch "$T/m$mb.fail"
"$STRATA" device fail "$CONFIG" $B >/dev/null
rm -f "$T/m$ma.fail"
if "$STRATA" device add "$CONFIG" $A > "$T/add2.out" 2>&1; then
  cat "$T/add2.out"; fail "device add $A succeeded although a stale copy has no source"
fi
grep -q "is back in pool" "$T/add2.out" || { cat "$T/add2.out"; fail "$A not back"; }
[ "$(device_field $A state)" = up ] || fail "$A is not up"
[ "$(device_field $A stale_copies)" = 1 ] || fail "$A: $(device_field $A stale_copies) stale copies, expected 1"
ok "$A back while $B is out: its copy of chunk $x stays stale (no current copy to take)"

check_stale_never_served () {
  nbdsh -u "$(uri r2)" -c "
import errno
x = $x
exp = open('$T/expect', 'rb').read()
try:
    buf = h.pread(4096, x * (4 << 20) + 8192)
    raise SystemExit('chunk %d read %s, but its only current copy is on $B, which is out'
                     % (x, 'the stale data' if buf == exp[x*(4<<20)+8192:][:4096] else 'something'))
except nbd.Error as e:
    assert e.errnum == errno.EIO, e
# Every chunk with a copy on $A other than x reads right from $A.
for c in [int(c) for c in '${on_a[*]}'.split()]:
    if c == x:
        continue
    try:
        buf = h.pread(4 << 20, c * (4 << 20))
    except nbd.Error as e:
        raise SystemExit('chunk %d: %s' % (c, e))
    assert buf == exp[c*(4<<20):(c+1)*(4<<20)], 'chunk %d reads wrong' % c
"
}
check_stale_never_served || fail "stale data served"
ok "chunk $x reads EIO, never $A's stale copy; the chunks on $A read right"
stop_server
start_server
check_stale_never_served || fail "stale data served after a restart"
ok "the same after a restart (the stale mark is in the journal)"

# B back: the copy of x on $A is brought up to date from it.
rm -f "$T/m$mb.fail"
"$STRATA" device add "$CONFIG" $B >/dev/null 2>&1 || fail "device add $B failed"
"$STRATA" rebuild "$CONFIG" --json > "$T/rb.json" 2>/dev/null || fail "rebuild failed"
$PY -c "
import json
r = json.loads(open('$T/rb.json').read().splitlines()[0])
assert r['resynced'] == 1 and r['moves'][0]['chunk'] == $x, r"
$PY - "$x" <<'END_OF_PY'
import os, sys
x = int(sys.argv[1])
T = os.environ["T"]
with open(T + "/expect", "r+b") as f:
    f.seek(x * (4 << 20)); f.write(open(T + "/x2", "rb").read())
END_OF_PY
nbdsh -u "$(uri r2)" -c "
exp = open('$T/expect', 'rb').read()
for o in range(0, len(exp), 16 << 20):
    assert h.pread(16 << 20, o) == exp[o:o + (16 << 20)], 'volume differs at %d' % o"
[ "$(device_field $A stale_copies)" = 0 ] || fail "$A still has stale copies"
stop_server
n=$(compare_replicas) || fail "replicas differ"
ok "$B back, rebuild copied chunk $x to $A again; the volume reads right and all $n columns compare equal"
