#!/usr/bin/env bash
# New devices and device replace (TESTING.md 14; strata(8) device add,
# device replace).
#
# A pool of 5 remote members grows while it is served: a device declared
# in the YAML afterwards is added with `strata device add` (refused while
# it holds a filesystem, unchanged; taken with --force), new chunks land
# on it, and a failed member is replaced by another new device under a
# fio verify load: every copy the failed member held moves to the new
# device, fio sees no error, the failed member is removed and refused
# when it comes back.  Offline, a healthy member is replaced by a new
# local file created sparse.  The volumes read back byte for byte, also
# after a restart, and the copies of every column compare equal.
source "$(dirname "$0")/functions.sh"
requires nbdkit nbdsh fio mkfs.ext4
export STRATA_REMOTE=1

MiB=$((1 << 20))
make_pool 5 256MiB "{ name: r2, size: 64MiB, replicas: 2, stripe_unit: 1MiB }" \
                   "{ name: load, size: 64MiB, replicas: 2, stripe_unit: 64KiB }"
start_server
export T

head -c $((64 * MiB)) /dev/urandom > "$T/expect"
nbdsh -u "$(uri r2)" -c "h.pwrite(open('$T/expect', 'rb').read(), 0); h.flush()"
check_r2 () {
  nbdsh -u "$(uri r2)" -c "
assert h.pread(64 << 20, 0) == open('$T/expect', 'rb').read(), 'r2 differs'"
}
map_json () { "$STRATA" status "$CONFIG" --json --map > "$T/map.json"; }
# copies DEV: how many column copies DEV holds (all volumes).
copies () { map_json; $PY - "$1" <<'END_OF_PY'
import json, os, sys
s = json.load(open(os.environ["T"] + "/map.json"))
print(sum(cols.count(sys.argv[1]) for v in s["volumes"] for c in v["map"]
          for cols in c["columns"]))
END_OF_PY
}

# ---- a new device, declared while the pool is served ----
# d5 holds an ext4 filesystem: refused, and left as it was.
truncate -s 1G "$T/d5.img"
mkfs.ext4 -q -F "$T/d5.img"
start_member 5 1GiB
start_member 6 256MiB
before=$(sums "$T/d5.img")
$PY - <<'END_OF_PY'
import os
T = os.environ["T"]
lines = open(T + "/pool.yaml").read().split("\n")
i = lines.index("volumes:")
lines[i:i] = ['  - { name: d%d, uri: "nbd+unix:///?socket=%s/m%d.sock", domain: host%d }'
              % (k, T, k, k) for k in (5, 6)]
open(T + "/pool.yaml", "w").write("\n".join(lines))
END_OF_PY
"$STRATA" status "$CONFIG" > "$T/st.txt"
grep -q "^d5 .*declared, not a member; 'strata device add d5'" "$T/st.txt" \
  || { cat "$T/st.txt"; fail "status does not show d5 as declared"; }
if "$STRATA" device add "$CONFIG" d5 > "$T/add.out" 2>&1; then
  fail "device add over an ext4 filesystem accepted"
fi
grep -q "d5 .*ext2/ext3/ext4 filesystem.*--force" "$T/add.out" \
  || { cat "$T/add.out"; fail "unclear refusal"; }
[ "$(sums "$T/d5.img")" = "$before" ] || fail "the refused device add changed d5"
ok "device add refuses d5 (it holds ext4) and leaves it unchanged: $(cat "$T/add.out")"

"$STRATA" device add "$CONFIG" d5 --force --json > "$T/add.json" \
  || fail "device add --force failed"
$PY -c "
import json
r = json.load(open('$T/add.json'))
assert r['device'] == 'd5' and r['added'] and r['index'] == 5 and r['extents'] > 40, r"
[ "$(device_field d5 state)" = up ] || fail "d5 is not up"
[ "$(copies d5)" = 0 ] || fail "d5 holds copies before anything was written"
"$STRATA" device add "$CONFIG" d5 > "$T/add.out" 2>&1 || fail "device add of an up member failed"
grep -q "device d5 is already up in pool" "$T/add.out" || { cat "$T/add.out"; fail "d5 added twice"; }
"$STRATA" device add "$CONFIG" d5 --force > "$T/add.out" 2>&1 && fail "--force accepted for a member"
grep -q "member of pool .*--force is for a new device only" "$T/add.out" \
  || { cat "$T/add.out"; fail "unclear refusal of --force"; }
ok "d5 added with --force, up and empty; adding it again formats nothing"

# New chunks land on it (placement is weighted by free space: it has
# four times as much as any other member).
"$STRATA" volume create "$CONFIG" fresh 64MiB --replicas 2 --stripe-unit 1MiB >/dev/null
head -c $((64 * MiB)) /dev/urandom > "$T/fresh"
nbdsh -u "$(uri fresh)" -c "h.pwrite(open('$T/fresh', 'rb').read(), 0); h.flush()"
on5=$(copies d5)
[ "$on5" -ge 4 ] || fail "only $on5 new copies on d5"
nbdsh -u "$(uri fresh)" -c "
assert h.pread(64 << 20, 0) == open('$T/fresh', 'rb').read(), 'fresh differs'"
ok "$on5 of the 32 new copies were placed on d5, and read back"

# ---- replace a failed member under load ----
fio_verify () {  # fio_verify VOLUME SECONDS SIZE
  fio --name="$1" --ioengine=nbd --uri="$(uri "$1")" --rw=randrw --bsrange=4k-1M \
      --iodepth=32 --size="$3" --verify=crc32c --verify_fatal=1 --verify_backlog=64 \
      --serialize_overlap=1 --verify_state_save=0 --runtime="$2" --time_based --output="$T/fio-$1.out"
}
fio_verify load 12 48M & fpid=$!
sleep 2
touch "$T/m3.fail"
for _ in $(seq 100); do
  [ "$(device_field d3 state)" = failed ] && break
  sleep 0.1
done
[ "$(device_field d3 state)" = failed ] || fail "d3 did not fail under fio"
sleep 1
held=$(copies d3)
"$STRATA" device replace "$CONFIG" d3 d6 --json > "$T/rep.json" 2> "$T/rep.err" \
  || { cat "$T/rep.err" "$T/rep.json"; fail "device replace d3 d6 failed"; }
wait $fpid || { cat "$T/fio-load.out"; fail "fio saw errors while d3 was replaced"; }
grep -q "err= 0" "$T/fio-load.out" || fail "fio reported errors"
$PY - "$held" <<'END_OF_PY'
import json, os, sys
lines = open(os.environ["T"] + "/rep.json").read().splitlines()
add = json.loads(lines[0])
rb = [json.loads(l) for l in lines if '"job"' in l][0]
held = int(sys.argv[1])
assert add["device"] == "d6" and add["added"], add
assert rb["state"] == "finished" and rb["no_space"] == 0 and rb["no_copy_left"] == 0, rb
assert len(rb["moves"]) == held, (len(rb["moves"]), held)
assert all(m["from"][0] == "d3" and m["to"][0] == "d6" for m in rb["moves"]), rb["moves"]
print("moved", held, "copies from d3 to d6")
END_OF_PY
[ "$(device_field d3 state)" = removed ] || fail "d3 is $(device_field d3 state), not removed"
[ "$(copies d3)" = 0 ] || fail "d3 still holds copies"
ok "d3 failed under fio and was replaced by the new d6: its $held copies moved there, fio clean"

rm -f "$T/m3.fail"
if "$STRATA" device add "$CONFIG" d3 > "$T/add3.out" 2>&1; then
  fail "the replaced d3 was re-added"
fi
grep -q "was replaced" "$T/add3.out" || { cat "$T/add3.out"; fail "unclear refusal"; }
ok "re-adding the replaced d3 is refused: $(head -c 120 "$T/add3.out")"

check_r2 || fail "r2 reads wrong after the replace"
stop_server
n=$(compare_replicas) || fail "replicas differ after the replace"
ok "r2 reads back; the copies of all $n columns compare equal"

# ---- offline: a healthy member replaced by a new local file ----
sed -i "s#^volumes:#  - { name: d7, path: $T/d7.img, size: 256MiB, domain: host7 }\nvolumes:#" "$CONFIG"
held=$(copies d4)
"$STRATA" device replace "$CONFIG" d4 d7 > "$T/rep2.out" 2>&1 \
  || { cat "$T/rep2.out"; fail "offline device replace d4 d7 failed"; }
grep -q "created $T/d7.img" "$T/rep2.out" || { cat "$T/rep2.out"; fail "d7 not created"; }
grep -q "device d4 replaced by d7" "$T/rep2.out" || { cat "$T/rep2.out"; fail "no summary"; }
[ "$(device_field d4 state)" = removed ] || fail "d4 is not removed"
[ "$(copies d7)" = "$held" ] || fail "d7 holds $(copies d7) copies, d4 held $held"
n=$(compare_replicas) || fail "replicas differ after the offline replace"
ok "offline: d4 (up) replaced by the new file d7, $held copies moved; $n columns compare equal"

start_server
check_r2 || fail "r2 reads wrong after a restart"
nbdsh -u "$(uri fresh)" -c "
assert h.pread(64 << 20, 0) == open('$T/fresh', 'rb').read(), 'fresh differs'"
"$STRATA" status "$CONFIG" > "$T/st.txt"
for d in d5 d6 d7; do
  [ "$(device_field $d state)" = up ] || fail "$d is not up after a restart"
done
grep -q "declared, not a member" "$T/st.txt" && { cat "$T/st.txt"; fail "a member is shown as not one"; }
grep -E "^(r2|load|fresh) .*healthy" "$T/st.txt" | wc -l | grep -qx 3 \
  || { cat "$T/st.txt"; fail "volumes not healthy"; }
ok "after a restart: d5, d6, d7 are members, the volumes healthy and read back"

# An unformatted device declared in the YAML does not stop the pool
# from opening; it is listed until it is added.
stop_server
truncate -s 256M "$T/d8.img"
sed -i "s#^volumes:#  - { name: d8, path: $T/d8.img, domain: host8 }\nvolumes:#" "$CONFIG"
"$STRATA" status "$CONFIG" > "$T/st.txt" 2>&1 \
  || { cat "$T/st.txt"; fail "a declared, unformatted device stops the pool from opening"; }
grep -q "^d8 .*declared, not a member" "$T/st.txt" || { cat "$T/st.txt"; fail "d8 not listed"; }
check_sums=$(sums "$T/d8.img")
start_server
check_r2 || fail "r2 reads wrong with d8 declared"
[ "$(sums "$T/d8.img")" = "$check_sums" ] || fail "opening the pool wrote to the declared d8"
ok "a declared, unformatted d8 is listed, left alone, and the pool opens and serves"
