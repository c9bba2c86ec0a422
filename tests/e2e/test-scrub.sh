#!/usr/bin/env bash
# strata scrub (TESTING.md 13): on a clean pool it finds nothing and
# changes no byte of any device's checksum and data areas; one byte, one
# block, then a whole member overwritten behind strata's back are named
# by device and extent, repaired with --repair (online and offline), and
# a second scrub finds nothing; a block with no good copy is reported and
# left alone; a scrub killed with kill -9 continues where it was; past
# 1000 findings the report lists the same first 1000 on every run.
source "$(dirname "$0")/functions.sh"
requires nbdkit nbdsh

make_pool 3 256MiB "{ name: r2, size: 64MiB, replicas: 2, stripe_width: 2, stripe_unit: 256KiB }" \
                   "{ name: r1, size: 8MiB }"
head -c 48M /dev/urandom > "$T/ref2"
head -c 8M /dev/urandom > "$T/ref1"
start_server
nbdsh -u "$(uri r2)" -c "h.pwrite(open('$T/ref2','rb').read(), 0); h.flush()"
nbdsh -u "$(uri r1)" -c "h.pwrite(open('$T/ref1','rb').read(), 0); h.flush()"
stop_server
ES=$((4 << 20))

# The checksum and data areas of every member: what a scrub may repair.
# (The metadata area takes the scrub's progress records.)
areas () {
  for i in 0 1 2; do
    off=$(device_field d$i csum_offset)
    tail -c +$((off + 1)) "$T/d$i.img" | sha256sum
  done | sha256sum | awk '{print $1}'
}
check_data () {
  nbdsh -u "$(uri r2)" -c "assert h.pread(48 << 20, 0) == open('$T/ref2','rb').read(), 'r2 differs'"
}
json_field () { $PY -c "import json, sys; print(json.load(open('$1'))$2)"; }

# 1. A clean pool: nothing found, no byte of the data changed.
before=$(areas)
"$STRATA" scrub "$CONFIG" --json > "$T/s1.json" || fail "scrub of a clean pool failed: $(cat "$T/s1.json")"
[ "$(json_field "$T/s1.json" "['errors']")" = 0 ] || fail "a clean pool has scrub errors"
blocks=$(json_field "$T/s1.json" "['blocks']")
# 48 MiB of r2 on 2 copies + 8 MiB of r1: 26624 blocks of 4 KiB.
[ "$blocks" = $(( (48 * 2 + 8) * 256 )) ] || fail "scrub checked $blocks blocks, want $(( (48 * 2 + 8) * 256 ))"
[ "$(areas)" = "$before" ] || fail "scrub of a clean pool changed the data or checksum area"
ok "clean pool: $blocks blocks checked, no errors, no byte of data or checksums changed"

# 2. One byte of one copy (offline): named, repaired, then clean.
read -r dev ext data < <(copy_at r2 1 0 0)
flip "$T/$dev.img" $((data + ext * ES + 17 * 4096 + 99))
"$STRATA" scrub "$CONFIG" > "$T/s2.out" 2>"$T/s2.err" && fail "scrub found nothing wrong: $(cat "$T/s2.out")"
grep "device $dev, extent $ext, block 17 (volume r2 " "$T/s2.out" >/dev/null \
  || fail "the report does not name device $dev extent $ext block 17: $(cat "$T/s2.out")"
[ "$(grep -c 'checksum mismatch' "$T/s2.out")" = 1 ] || fail "more than one finding: $(cat "$T/s2.out")"
grep "errors: 1 ($dev 1)" "$T/s2.out" >/dev/null || fail "report: $(cat "$T/s2.out")"
"$STRATA" scrub "$CONFIG" --repair > "$T/s3.out" 2>&1 || fail "scrub --repair failed: $(cat "$T/s3.out")"
grep "device $dev, extent $ext, block 17 .*repaired" "$T/s3.out" >/dev/null || fail "not repaired: $(cat "$T/s3.out")"
read -r odev oext odata < <(copy_at r2 1 0 1)
cmp <(dd if="$T/$dev.img" bs=4096 skip=$(((data + ext * ES) / 4096 + 17)) count=1 2>/dev/null) \
    <(dd if="$T/$odev.img" bs=4096 skip=$(((odata + oext * ES) / 4096 + 17)) count=1 2>/dev/null) \
  || fail "block 17 of $dev does not match the other copy after the repair"
"$STRATA" scrub "$CONFIG" > "$T/s4.out" 2>&1 || fail "second scrub still finds something: $(cat "$T/s4.out")"
grep "errors: 0;" "$T/s4.out" >/dev/null || fail "second scrub: $(cat "$T/s4.out")"
ok "one byte: scrub names $dev extent $ext block 17, --repair fixes it, the next scrub is clean"

# 3. One block of the other copy, online, while the pool is served.
read -r dev1 ext1 data1 < <(copy_at r2 2 1 1)
head -c 4096 /dev/urandom | dd of="$T/$dev1.img" bs=4096 seek=$(((data1 + ext1 * ES) / 4096 + 200)) conv=notrunc 2>/dev/null
start_server
"$STRATA" scrub "$CONFIG" r2 --repair --json > "$T/s5.json" || fail "online scrub --repair failed"
$PY - "$T/s5.json" "$dev1" "$ext1" <<'PY' || fail "online scrub report: $(cat "$T/s5.json")"
import json, sys
r = json.load(open(sys.argv[1]))
f = r["findings"]
assert len(f) == 1, f
assert f[0]["device"] == sys.argv[2] and f[0]["extent"] == int(sys.argv[3]), f
assert f[0]["blocks"] == [200, 200] and f[0]["repaired"], f
assert r["errors"] == 1 and r["repaired"] == 1 and r["volume"] == "r2", r
PY
check_data
"$STRATA" scrub "$CONFIG" r2 --json > "$T/s6.json" || fail "second online scrub: $(cat "$T/s6.json")"
[ "$(json_field "$T/s6.json" "['errors']")" = 0 ] || fail "second online scrub found errors"
"$STRATA" status "$CONFIG" | grep -E "^scrub +finished .* 0 errors" >/dev/null \
  || fail "status does not show the last scrub: $("$STRATA" status "$CONFIG" | tail -3)"
stop_server
ok "one block, online: named ($dev1 extent $ext1 block 200), repaired, next scrub clean, status shows it"

# 4. A whole member overwritten from its checksum area to its end: one
# that holds no extent of the 1-replica r1 (2 chunks: at most 2 devices).
r1devs=$("$STRATA" status "$CONFIG" --json --map | $PY -c "
import json, sys
v = [v for v in json.load(sys.stdin)['volumes'] if v['name'] == 'r1'][0]
print(' '.join(sorted({n for ch in v['map'] for col in ch['columns'] for n in col})))")
for dev in d0 d1 d2; do case " $r1devs " in *" $dev "*) ;; *) break;; esac; done
coff=$(device_field "$dev" csum_offset)
$PY -c "
import os
fd = os.open('$T/$dev.img', os.O_WRONLY)
for o in range($coff, os.fstat(fd).st_size, 1 << 20):
    os.pwrite(fd, os.urandom(1 << 20), o)
os.close(fd)"
start_server
"$STRATA" scrub "$CONFIG" --repair --json > "$T/s7.json" 2>"$T/s7.err" || fail "scrub --repair of a trashed member: $(cat "$T/s7.err") $(head -c 1500 "$T/s7.json")"
$PY - "$T/s7.json" "$dev" <<'PY' || fail "trashed member report: $(head -c 2000 "$T/s7.json")"
import json, sys
r = json.load(open(sys.argv[1]))
assert r["errors"] > 0 and r["repaired"] == r["errors"], r
devs = {d["name"]: d for d in r["devices"]}
for name, d in devs.items():
    if name == sys.argv[2]:
        assert d["errors"] > 0, d
    else:
        assert d["errors"] == 0, d
assert all(f["device"] == sys.argv[2] for f in r["findings"]), r["findings"][:3]
# Columns are checked in parallel; the report is still in chunk order
# (the member holds only r2 extents; an r2 chunk is 2 x 4 MiB).
chunks = [f["bytes"][0] // (8 << 20) for f in r["findings"]]
assert all(f["volume"] == "r2" for f in r["findings"]), r["findings"][:3]
assert len(set(chunks)) > 1 and chunks == sorted(chunks), chunks
print("repaired", r["repaired"], "blocks on", sys.argv[2])
PY
check_data
"$STRATA" scrub "$CONFIG" > "$T/s8.out" 2>&1 || fail "scrub after repairing a member: $(cat "$T/s8.out")"
stop_server
compare_replicas > /dev/null || fail "replicas differ after the repair"
ok "a whole member overwritten: every error on $dev, all repaired, replicas equal, next scrub clean"

# 5. No good copy (1 replica): reported, left alone, exit 1.
read -r dev0 ext0 data0 < <(copy_at r1 0 0 0)
poke "$T/$dev0.img" $((data0 + ext0 * ES + 3 * 4096)) 00ff00ff
"$STRATA" scrub "$CONFIG" r1 --repair > "$T/s9.out" 2>&1 && fail "a block with no good copy was not reported"
grep "device $dev0, extent $ext0, block 3 .*no good copy, left alone" "$T/s9.out" >/dev/null \
  || fail "report: $(cat "$T/s9.out")"
[ "$(dd if="$T/$dev0.img" bs=4096 skip=$(((data0 + ext0 * ES) / 4096 + 3)) count=1 2>/dev/null | head -c 4 | od -An -tx1 | tr -d ' ')" = 00ff00ff ] \
  || fail "scrub --repair changed a block it could not prove wrong"
ok "no good copy: reported, left alone"
"$STRATA" volume delete "$CONFIG" r1 >/dev/null

# 6. kill -9 in the middle of a slow online scrub: it continues there.
start_server
"$STRATA" scrub "$CONFIG" --restart --rate 8 > "$T/s10.out" 2>&1 &
spid=$!
for _ in $(seq 100); do
  # (the record of the last scrub shows until this one saves its own)
  read -r st d < <("$STRATA" status "$CONFIG" --json | $PY -c "
import json, sys
j = json.load(sys.stdin)['jobs']['scrub']
print(j['state'], j['done'])")
  [ "$st" = running ] && [ "$d" -gt 0 ] && break
  sleep 0.2
done
[ "$st" = running ] && [ "$d" -gt 0 ] || fail "the scrub made no progress"
"$STRATA" status "$CONFIG" | grep -E "^scrub +running at" >/dev/null || fail "status does not show the running scrub"
# The volume it reads cannot be shrunk meanwhile, and the refusal names
# the scrub (no client is connected).
out=$("$STRATA" volume resize "$CONFIG" r2 16MiB --shrink 2>&1) && fail "r2 shrunk under a running scrub"
echo "$out" | grep "volume r2 is being read by a scrub; try shrinking it again once that has finished or been stopped (strata scrub --stop)" >/dev/null \
  || fail "the refusal does not name the scrub: $out"
stop_server KILL
wait $spid 2>/dev/null || true
"$STRATA" status "$CONFIG" --json > "$T/st.json"
state=$(json_field "$T/st.json" "['jobs']['scrub']['state']")
done1=$(json_field "$T/st.json" "['jobs']['scrub']['done']")
total=$(json_field "$T/st.json" "['jobs']['scrub']['total']")
[ "$state" = interrupted ] || fail "after kill -9 the scrub is '$state', want interrupted"
[ "$done1" -gt 0 ] && [ "$done1" -lt "$total" ] || fail "saved progress $done1 of $total"
start_server
"$STRATA" scrub "$CONFIG" --rate 0 --json > "$T/s11.json" 2>"$T/s11.err" || fail "resumed scrub failed: $(cat "$T/s11.err")"
grep -E "continuing the scrub interrupted in volume [a-z0-9]+ at chunk [0-9]+ \([0-9.]+ [KMG]?i?B of [0-9.]+ [KMG]?i?B done" "$T/s11.err" >/dev/null || fail "the scrub started over: $(cat "$T/s11.err")"
$PY - "$T/s11.json" "$done1" <<'PY' || fail "resumed scrub: $(cat "$T/s11.json")"
import json, sys
r = json.load(open(sys.argv[1]))
done1 = int(sys.argv[2])
assert r["resumed"] and r["state"] == "finished", r
assert r["bytes"] == r["total"] == 48 << 20, r
# This run read only what was left: 2 copies of (total - done1) bytes.
assert r["run"]["blocks"] == 2 * (r["total"] - done1) // 4096, (r["run"], done1)
assert r["errors"] == 0, r
PY
ok "kill -9 at $done1 of $total bytes: the next scrub continued there and finished"

# Ctrl-C on the CLI of an online scrub stops the scrub in the server
# (it saves its place and reports), not just the CLI.  (A shell starts
# background jobs with SIGINT ignored: Python puts it back.)
$PY - "$STRATA" "$CONFIG" "$T/s12" <<'PY' || fail "Ctrl-C: $(cat "$T/s12.out" "$T/s12.err" 2>/dev/null)"
import json, signal, subprocess, sys, time
strata, config, base = sys.argv[1:4]
def job():
    s = subprocess.run([strata, "status", config, "--json"], capture_output=True, text=True, check=True)
    return json.loads(s.stdout)["jobs"]["scrub"]
p = subprocess.Popen([strata, "scrub", config, "--restart", "--rate", "2"],
                     stdout=open(base + ".out", "w"), stderr=open(base + ".err", "w"),
                     preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
for _ in range(100):
    j = job()
    if j["state"] == "running" and j["done"] > 0:
        break
    time.sleep(0.2)
assert j["state"] == "running", j
p.send_signal(signal.SIGINT)
assert p.wait(timeout=30) == 1, p.returncode
out, err = open(base + ".out").read(), open(base + ".err").read()
assert "asked the running scrub to stop" in err, err
assert "scrub of every volume interrupted" in out, out
j = job()
assert j["state"] == "interrupted" and 0 < j["done"] < j["total"], j
PY
stop_server
ok "Ctrl-C on an online scrub stops it in the server: $(head -1 "$T/s12.out")"

# 7. More findings than the report keeps (1000): it lists the first in
# chunk order whatever order the workers took the columns in, and counts
# the rest.  Every other block of copy 0 of column 0 of chunks 0-2:
# 3 x 512 separate findings.
for c in 0 1 2; do copy_at r2 $c 0 0; done > "$T/many.at"
$PY - "$T/many.at" "$T" $ES <<'PY'
import os, sys
for line in open(sys.argv[1]):
    dev, ext, data = line.split()
    fd = os.open("%s/%s.img" % (sys.argv[2], dev), os.O_WRONLY)
    base = int(data) + int(ext) * int(sys.argv[3])
    for b in range(0, 1024, 2):
        os.pwrite(fd, b"\x5a" * 64, base + b * 4096 + 100)
    os.close(fd)
PY
for run in 1 2 3; do
  "$STRATA" scrub "$CONFIG" r2 --json > "$T/many$run.json" 2>/dev/null \
    && fail "scrub found nothing wrong in 1536 corrupted blocks"
  $PY - "$T/many$run.json" "$T/many.at" <<'PY' || fail "report of 1536 findings (run $run): $(head -c 600 "$T/many$run.json")"
import json, sys
r = json.load(open(sys.argv[1]))
want = []
for line in open(sys.argv[2]):
    dev, ext, _ = line.split()
    want += [(dev, int(ext), b) for b in range(0, 1024, 2)]
got = [(f["device"], f["extent"], f["blocks"][0]) for f in r["findings"]]
assert all(f["blocks"][0] == f["blocks"][1] for f in r["findings"]), r["findings"][:3]
assert r["errors"] == 1536, r["errors"]
assert got == want[:1000], (got[:3], got[-3:], want[998:1001])
assert r["findings_dropped"] == 536, r["findings_dropped"]
PY
done
"$STRATA" scrub "$CONFIG" r2 > "$T/many.out" 2>/dev/null && fail "scrub (text) found nothing wrong in 1536 corrupted blocks"
[ "$(grep -c 'checksum mismatch, not repaired$' "$T/many.out")" = 1000 ] && grep -q "^  \.\.\. and 536 more findings after these$" "$T/many.out" \
  || fail "text report of 1536 findings: $(tail -3 "$T/many.out")"
"$STRATA" scrub "$CONFIG" r2 --repair > /dev/null 2>&1 || fail "scrub --repair of 1536 blocks failed"
"$STRATA" scrub "$CONFIG" r2 > "$T/s12.out" 2>&1 || fail "scrub after repairing 1536 blocks: $(cat "$T/s12.out")"
start_server
check_data
stop_server
ok "1536 findings, 3 runs: each report lists the first 1000 in chunk order and counts 536 more"
