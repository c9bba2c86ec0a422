#!/usr/bin/env bash
# Bad YAML gives one clear message with file:line:column and the key;
# init over an existing pool or a filesystem is refused and the device is
# untouched (checksummed before and after).
source "$(dirname "$0")/functions.sh"
requires mkfs.ext4

cd "$T"
check_msg () {  # check_msg EXPECTED-REGEX YAML
  printf '%s\n' "$2" > bad.yaml
  local out
  out=$("$STRATA" init bad.yaml 2>&1) && fail "accepted: $2"
  echo "$out" | grep -Eq "$1" || fail "expected /$1/, got: $out"
  ls d*.img >/dev/null 2>&1 && fail "a refused init created devices"
  return 0
}
check_msg 'bad.yaml:3:3: pool.extnt_size: unknown key' \
  $'pool:\n  name: p\n  extnt_size: 4MiB\ndevices:\n  - { name: d0, path: d0.img, size: 1GiB }'
check_msg 'bad.yaml:2:16: pool.extent_size: expected a size such as 4MiB' \
  $'pool:\n  extent_size: 4XB\n  name: p\ndevices:\n  - { name: d0, path: d0.img, size: 1GiB }'
check_msg 'bad.yaml:5:5: devices: duplicate device name "d0"' \
  $'pool: { name: p }\ndevices:\n  - { name: d0, path: d0.img, size: 1GiB }\n  - { name: d1, path: d1.img, size: 1GiB }\n  - { name: d0, path: d2.img, size: 1GiB }'
check_msg 'bad.yaml:4:5: volumes: volume "v": 3 replicas need 3 devices, but the pool has 2' \
  $'pool: { name: p }\ndevices: [ { name: d0, path: d0.img, size: 1GiB }, { name: d1, path: d1.img, size: 1GiB } ]\nvolumes:\n  - { name: v, size: 1GiB, replicas: 3 }'
check_msg 'bad.yaml:[0-9]+:[0-9]+: YAML syntax error' \
  $'pool:\n  name: [unclosed\ndevices: []'
check_msg 'd9.img does not exist; give a size' \
  $'pool: { name: p }\ndevices:\n  - { name: d0, path: d9.img }'
check_msg "bad.yaml:1:1: pool: missing" $'devices:\n  - { name: d0, path: d0.img, size: 1GiB }'
ok "bad YAML refused with file:line:column and key"

# init over an existing pool, and over a filesystem, without --force.
make_config 3 256MiB "{ name: v, size: 32MiB }"
"$STRATA" init "$CONFIG" >/dev/null
before=$(sums "$T"/d*.img)
out=$("$STRATA" init "$CONFIG" 2>&1) && fail "init over an existing pool accepted"
echo "$out" | grep 'holds strata pool' || fail "unclear: $out"
[ "$(sums "$T"/d*.img)" = "$before" ] || fail "refused init changed a device"
ok "init over an existing pool refused, devices unchanged"

rm -f "$T"/d*.img
truncate -s 256M "$T/d1.img"
mkfs.ext4 -q -F "$T/d1.img"
before=$(sums "$T/d1.img")
out=$("$STRATA" init "$CONFIG" 2>&1) && fail "init over ext4 accepted"
echo "$out" | grep 'device d1 .* ext2/ext3/ext4 filesystem' || fail "unclear: $out"
[ "$(sums "$T/d1.img")" = "$before" ] || fail "refused init changed the filesystem"
"$STRATA" init --force "$CONFIG" >/dev/null || fail "--force refused"
ok "init over ext4 refused without --force, done with it"

# A device of another pool in the YAML is refused at open.
sed -e "s/name: t$$/name: other/" -e "s#$T/control.sock#$T/c2.sock#" \
    -e "s#/d\([0-9]\).img#/e\1.img#" "$CONFIG" > other.yaml
"$STRATA" init other.yaml >/dev/null
sed -i "s#d0.img#e0.img#" "$CONFIG"
out=$("$STRATA" status "$CONFIG" 2>&1) && fail "foreign device accepted"
echo "$out" | grep 'belongs to pool "other"' || fail "unclear: $out"
ok "a device of another pool is refused: $out"

# A pool that was never initialised: status says so, and creates or
# changes nothing (an empty file is not taken for a member either).
sed -e "s/name: t$$/name: new/" -e "s#$T/control.sock#$T/c3.sock#" \
    -e "s#/[de]\([0-9]\).img#/n\1.img#" "$CONFIG" > new.yaml
out=$("$STRATA" status new.yaml 2>&1) && fail "status of a pool never initialised"
echo "$out" | grep 'none of them exists: was the pool initialised (strata init)?' || fail "unclear: $out"
ls "$T"/n?.img 2>/dev/null && fail "status created device files"
: > "$T/n0.img"
out=$("$STRATA" status new.yaml 2>&1) && fail "an empty file taken for a member"
echo "$out" | grep "device d0 ($T/n0.img) holds no strata superblock.*strata init" || fail "unclear: $out"
[ ! -s "$T/n0.img" ] || fail "status wrote into the empty file"
ok "a pool never initialised: $out"

# An init that fails part way (here a member that cannot be reached,
# after two files were created) takes back the files it created and
# leaves an existing file as it was; the next init then starts afresh.
rm -f "$T"/n?.img
truncate -s 256M "$T/n1.img"
before=$(sums "$T/n1.img")
{
  pool_section 3
  echo "devices:"
  echo "  - { name: d0, path: $T/n0.img, size: 256MiB }"
  echo "  - { name: d1, path: $T/n1.img }"
  echo "  - { name: d2, path: $T/n2.img, size: 256MiB }"
  echo "  - { name: d3, uri: \"nbd+unix:///?socket=$T/nobody.sock\" }"
} | sed -e "s/name: t$$/name: half/" -e "s#$T/control.sock#$T/c4.sock#" > half.yaml
out=$("$STRATA" init half.yaml 2>&1) && fail "init with an unreachable member"
echo "$out" | grep "device d3: .*nobody.sock" || fail "unclear: $out"
echo "$out" | grep "removed $T/n2.img, which this failed init created" || fail "not said: $out"
ls "$T"/n0.img "$T"/n2.img 2>/dev/null && fail "a failed init left the files it created"
[ "$(sums "$T/n1.img")" = "$before" ] || fail "a failed init changed an existing file"
sed -i '/name: d3/d' half.yaml
"$STRATA" init half.yaml >/dev/null || fail "init after the failed one"
"$STRATA" status half.yaml >/dev/null || fail "status after init"
ok "a failed init takes back the files it created: $(echo "$out" | grep "device d3")"

# The same for device add: a new file too small for a member is refused
# and removed, and the pool is as it was.
echo "  - { name: d9, path: $T/n9.img, size: 8MiB }" >> half.yaml
before=$("$STRATA" status half.yaml --json | $PY -c 'import json,sys; s=json.load(sys.stdin); print([(d["name"], d["state"], d["used"]) for d in s["devices"]], s["not_members"])')
out=$("$STRATA" device add half.yaml d9 2>&1) && fail "a device too small was added"
echo "$out" | grep "device d9 ($T/n9.img) is too small" || fail "unclear: $out"
echo "$out" | grep "removed $T/n9.img, which this failed device add created" || fail "not said: $out"
[ ! -e "$T/n9.img" ] || fail "a failed device add left the file it created"
after=$("$STRATA" status half.yaml --json | $PY -c 'import json,sys; s=json.load(sys.stdin); print([(d["name"], d["state"], d["used"]) for d in s["devices"]], s["not_members"])')
[ "$before" = "$after" ] || fail "a failed device add changed the pool: $before -> $after"
ok "a failed device add takes back the file it created"

# Metadata areas too small for the checkpoint of the pool full: an
# explicit metadata_size is refused (with the size needed), the default
# grows to it; a device add that would outgrow the areas is refused.
mkyaml () {  # mkyaml NAME SIZE [POOL-EXTRA]: 3 devices of SIZE, 64 KiB extents
  {
    echo "pool: { name: $1, extent_size: 64KiB, control_socket: $T/$1.sock${3:+, $3} }"
    echo "devices:"
    for i in 0 1 2; do echo "  - { name: e$i, path: $T/$1-$i.img, size: $2 }"; done
  } > "$1.yaml"
}
mkyaml tight 4GiB "metadata_size: 4MiB"
out=$("$STRATA" init tight.yaml 2>&1) && fail "metadata_size 4MiB accepted for 184800 extents"
echo "$out" | grep "pool.metadata_size 4.0 MiB is too small for a pool of [0-9]* extents: .* give metadata_size: 15MiB at least" \
  || fail "unclear: $out"
ls "$T"/tight-*.img 2>/dev/null && fail "a refused init left files"
mkyaml grown 24GiB
out=$("$STRATA" init grown.yaml 2>&1) || fail "init with the default metadata_size: $out"
echo "$out" | grep "metadata areas of 7[0-9].0 MiB (the default, 64.0 MiB, is too small for the checkpoint of [0-9]* extents)" \
  || fail "the grown metadata areas not said: $out"
"$STRATA" status grown.yaml --json | $PY -c '
import json, sys
p = json.load(sys.stdin)["pool"]
assert 0 < p["extents"] <= p["metadata_room_extents"] < p["extents"] * 11 // 10, p
' || fail "status: the areas do not hold the pool full: $("$STRATA" status grown.yaml --json | head -c 400)"
rm -f "$T"/grown-*.img
ok "metadata areas sized for the pool full: $(echo "$out" | grep 'metadata areas of')"

mkyaml small 256MiB "metadata_size: 4MiB"
"$STRATA" init small.yaml >/dev/null || fail "init of a small pool with metadata_size 4MiB"
echo "  - { name: big, path: $T/small-big.img, size: 2GiB }" >> small.yaml
out=$("$STRATA" device add small.yaml big 2>&1) && fail "a device add past the metadata areas accepted"
echo "$out" | grep "device big was not added: with it pool small would have [0-9]* extents, whose checkpoint may take .* and the metadata areas hold" \
  || fail "unclear: $out"
"$STRATA" status small.yaml --json | $PY -c '
import json, sys
s = json.load(sys.stdin)
assert [d["name"] for d in s["devices"]] == ["e0", "e1", "e2"], s["devices"]
' || fail "the refused device add changed the pool"
[ ! -e "$T/small-big.img" ] || fail "the refused device add left its file"
ok "a device add the metadata areas cannot hold is refused: $(echo "$out" | grep -o 'with it pool.*')"
