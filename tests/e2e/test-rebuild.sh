#!/usr/bin/env bash
# strata rebuild (TESTING.md 12, 14): a remote member starts failing in
# the middle of a fio verify run, and `strata rebuild` runs online under
# the same load: fio sees zero errors, the volumes come back healthy and
# every column's copies compare equal in the backing files; the replaced
# member is marked removed and refused when re-added.  Then a
# second member is marked failed (`strata device fail`), a slow rebuild
# is killed with kill -9 and the next one continues with what was left.
# Last, `strata device remove` drains a member and refuses to remove one
# whose metadata replica or copies would have nowhere to go.
source "$(dirname "$0")/functions.sh"
requires nbdkit fio nbdsh
export STRATA_REMOTE=1

make_pool 6 512MiB "{ name: r2, size: 256MiB, replicas: 2, stripe_width: 2, stripe_unit: 64KiB }" \
                   "{ name: r3, size: 128MiB, replicas: 3, stripe_unit: 64KiB }"
start_server

fio_verify () {  # fio_verify VOLUME SECONDS SIZE
  fio --name="$1" --ioengine=nbd --uri="$(uri "$1")" --rw=randrw --bsrange=4k-1M \
      --iodepth=32 --size="$3" --verify=crc32c --verify_fatal=1 --verify_backlog=64 \
      --serialize_overlap=1 --runtime="$2" --time_based --output="$T/fio-$1.out"
}
status_json () { "$STRATA" status "$CONFIG" --json > "$T/st.json"; }
health () { $PY -c "
import json
print([v for v in json.load(open('$T/st.json'))['volumes'] if v['name'] == '$1'][0]['health'])"; }
dev_state () { $PY -c "
import json
print([d for d in json.load(open('$T/st.json'))['devices'] if d['name'] == '$1'][0]['state'])"; }
job () { $PY -c "
import json
print(json.load(open('$T/st.json'))['jobs']['rebuild']['$1'])"; }

# Fill some of both volumes first, so that the rebuild has work.
nbdsh -u "$(uri r2)" -c "h.pwrite(b'\x11' * (64 << 20), 0); h.flush()"
nbdsh -u "$(uri r3)" -c "h.pwrite(b'\x33' * (32 << 20), 0); h.flush()"

# 1. Member 1 fails under fio; the rebuild runs under fio.
fio_verify r2 14 128M & f2=$!
fio_verify r3 14 64M & f3=$!
sleep 3
touch "$T/m1.fail"
for _ in $(seq 50); do
  status_json
  [ "$(dev_state d1)" = failed ] && break
  sleep 0.2
done
[ "$(dev_state d1)" = failed ] || fail "member 1 is $(dev_state d1), not failed"
"$STRATA" rebuild "$CONFIG" --rate 0 --json > "$T/rb1.json" 2>"$T/rb1.err" \
  || fail "rebuild under load failed: $(cat "$T/rb1.err") $(cat "$T/rb1.json")"
wait $f2 || { cat "$T/fio-r2.out"; fail "fio on r2 saw errors"; }
wait $f3 || { cat "$T/fio-r3.out"; fail "fio on r3 saw errors"; }
moved=$($PY -c "import json; r = json.load(open('$T/rb1.json')); print(r['columns'])")
[ "$moved" -gt 0 ] || fail "the rebuild moved nothing: $(cat "$T/rb1.json")"
$PY - "$T/rb1.json" <<'PY' || fail "rebuild report: $(cat "$T/rb1.json")"
import json, sys
r = json.load(open(sys.argv[1]))
assert r["state"] == "finished" and r["columns"] == r["total"], r
assert r["no_space"] == 0 and r["no_copy_left"] == 0 and r["no_good_copy"] == 0, r
assert all(m["from"][0] == "d1" and m["to"][0] != "d1" for m in r["moves"]), r["moves"][:3]
# One copy per column was lost: the report lists the first 100 moves
# and counts the rest.
assert len(r["moves"]) == min(100, r["columns"]), len(r["moves"])
assert len(r["moves"]) + r["moves_dropped"] == r["columns"], (len(r["moves"]), r["moves_dropped"])
PY
status_json
[ "$(health r2)" = healthy ] || fail "r2 after the rebuild: $(health r2)"
[ "$(health r3)" = healthy ] || fail "r3 after the rebuild: $(health r3)"
ok "member 1 failed under fio verify: zero errors; rebuild gave $moved columns new copies under load; r2 and r3 healthy"

# d1 was replaced: it is removed, and re-adding it is refused (even with
# its member answering again), with nothing changed.
[ "$(dev_state d1)" = removed ] || fail "d1 is $(dev_state d1) after the rebuild, not removed"
rm -f "$T/m1.fail"
if "$STRATA" device add "$CONFIG" d1 > "$T/readd.out" 2>&1; then
  fail "re-adding the replaced member d1 was accepted: $(cat "$T/readd.out")"
fi
grep -q "was replaced" "$T/readd.out" || fail "device add d1: $(cat "$T/readd.out")"
status_json
[ "$(dev_state d1)" = removed ] || fail "d1 is $(dev_state d1) after the refused add"
ok "the replaced member d1 is removed; device add d1 is refused: $(head -n1 "$T/readd.out")"

# Placement after the rebuild: no two copies of a column in one domain.
"$STRATA" status "$CONFIG" --json --map | $PY -c "
import json, sys
s = json.load(sys.stdin)
dom = {d['name']: d['domain'] for d in s['devices']}
for v in s['volumes']:
    for ch in v['map']:
        for names in ch['columns']:
            assert 'd1' not in names, (v['name'], ch['chunk'], names)
            doms = [dom[n] for n in names]
            assert len(set(doms)) == len(doms), (v['name'], ch['chunk'], names)
" || fail "a rebuilt column has two copies in one domain or one on d1"
stop_server
n=$(compare_replicas) || fail "replicas differ after the rebuild"
ok "copies of all $n columns compare equal, each column in distinct domains"
start_server
"$STRATA" scrub "$CONFIG" --rate 0 > "$T/sc1.out" 2>&1 || fail "scrub after the rebuild: $(cat "$T/sc1.out")"

# 2. Member 2 marked failed by hand; a slow rebuild killed with kill -9.
"$STRATA" device fail "$CONFIG" d2 > /dev/null || fail "device fail d2"
status_json
[ "$(dev_state d2)" = failed ] || fail "d2 is $(dev_state d2) after device fail"
case $(health r2) in degraded*) ;; *) fail "r2 is '$(health r2)' with d2 failed";; esac
"$STRATA" rebuild "$CONFIG" --rate 6 > "$T/rb2.out" 2>&1 &
rpid=$!
for _ in $(seq 150); do
  status_json
  [ "$(job state)" = running ] && [ "$(job done)" -gt 0 ] && break
  sleep 0.2
done
done1=$(job done)
total1=$(job total)
[ "$(job state)" = running ] && [ "$done1" -gt 0 ] || fail "the slow rebuild made no progress"
"$STRATA" status "$CONFIG" | grep -E "^rebuild +running at" >/dev/null || fail "status does not show the running rebuild"
stop_server KILL
wait $rpid 2>/dev/null || true
status_json
[ "$(job state)" = interrupted ] || fail "after kill -9 the rebuild is '$(job state)'"
[ "$done1" -lt "$total1" ] || fail "the rebuild finished before the kill ($done1 of $total1); slow it down"
start_server
"$STRATA" rebuild "$CONFIG" --rate 0 --json > "$T/rb3.json" 2>"$T/rb3.err" || fail "resumed rebuild: $(cat "$T/rb3.err")"
grep "continuing the rebuild interrupted" "$T/rb3.err" >/dev/null || fail "the rebuild did not continue: $(cat "$T/rb3.err")"
$PY - "$T/rb3.json" "$done1" "$total1" <<'PY' || fail "resumed rebuild: $(cat "$T/rb3.json")"
import json, sys
r = json.load(open(sys.argv[1]))
done1, total1 = int(sys.argv[2]), int(sys.argv[3])
left = len(r["moves"]) + r["moves_dropped"]
assert r["resumed"] and r["state"] == "finished", r
# Only what the first run had not finished was copied again.
assert 0 < left <= total1 - done1, (left, done1, total1)
assert r["no_space"] == 0 and r["no_copy_left"] == 0, r
PY
status_json
[ "$(health r2)" = healthy ] && [ "$(health r3)" = healthy ] || fail "not healthy after the resumed rebuild: $(health r2) / $(health r3)"
nbdsh -u "$(uri r2)" -c "
buf = h.pread(1 << 20, 200 << 20)
assert len(buf) == 1 << 20"
stop_server
compare_replicas > /dev/null || fail "replicas differ after the resumed rebuild"
ok "kill -9 at $done1 of $total1 columns: the next rebuild copied only what was left; healthy, replicas equal"

# 3. device remove: d4 holds copies and is drained; then, with only three
# members left and r3 needing three, d3 cannot go.
"$STRATA" device remove "$CONFIG" d4 > "$T/rm1.out" 2>&1 || fail "device remove d4: $(cat "$T/rm1.out")"
status_json
[ "$(dev_state d4)" = removed ] || fail "d4 is $(dev_state d4) after device remove"
"$STRATA" status "$CONFIG" --json --map | $PY -c "
import json, sys
s = json.load(sys.stdin)
for v in s['volumes']:
    for ch in v['map']:
        for names in ch['columns']:
            assert 'd4' not in names, (v['name'], ch['chunk'], names)
" || fail "a copy is still on the removed d4"
compare_replicas > /dev/null || fail "replicas differ after draining d4"
# d0, d3 and d5 are left, and each holds a metadata replica now (the
# rebuilds moved those of d1 and d2, the drain that of d4): removing d3
# is refused before anything moves.
members=$("$STRATA" status "$CONFIG" --json | $PY -c "
import json, sys
print(' '.join(d['name'] for d in json.load(sys.stdin)['devices'] if d['metadata']))")
[ "$members" = "d0 d3 d5" ] || fail "metadata replicas on $members, not d0 d3 d5"
"$STRATA" device remove "$CONFIG" d3 > "$T/rm2.out" 2>&1 && fail "d3 was removed although its metadata replica has nowhere to go"
grep "d3 holds a metadata replica and no other usable device can take it" "$T/rm2.out" >/dev/null \
  || fail "device remove d3: $(cat "$T/rm2.out")"
# A small new device could take the replica but not d3's copies: the
# drain starts and is refused for want of space.
start_member 6 24MiB
sed -i "/^volumes:/i\\  - { name: d6, uri: \"nbd+unix:///?socket=$T/m6.sock\", domain: host6 }" "$CONFIG"
"$STRATA" device add "$CONFIG" d6 > "$T/add6.out" 2>&1 || fail "device add d6: $(cat "$T/add6.out")"
"$STRATA" device remove "$CONFIG" d3 > "$T/rm2.out" 2>&1 && fail "d3 was removed although r3 needs three members"
grep "was not removed" "$T/rm2.out" >/dev/null || fail "device remove d3: $(cat "$T/rm2.out")"
status_json
[ "$(dev_state d3)" = up ] || fail "a refused remove left d3 $(dev_state d3)"
# The copies that did leave d3 before the refusal left zeros behind:
# every extent of d3 that no chunk uses reads as zeros (d3 is usable
# again, so they can be allocated).
"$STRATA" status "$CONFIG" --json --map | $PY -c "
import json, sys
s = json.load(sys.stdin)
es = s['pool']['extent_size']
d = [d for d in s['devices'] if d['name'] == 'd3'][0]
used = set()
for v in s['volumes']:
    for ch in v['map']:
        for names, exts in zip(ch['columns'], ch['extents']):
            used |= {e for n, e in zip(names, exts) if n == 'd3'}
with open('$T/d3.img', 'rb') as f:
    for e in range(d['extents']):
        if e in used:
            continue
        f.seek(d['data_offset'] + e * es)
        assert f.read(es).count(0) == es, 'free extent %d of d3 holds data' % e
print(len(used), 'extents of d3 in use; the rest read as zeros')
" || fail "a free extent of d3 is not zero after the refused drain"
ok "device remove drains d4; removing d3 is refused (its metadata replica, then its copies, have nowhere to go) and d3 stays up"
