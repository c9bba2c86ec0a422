#!/usr/bin/env bash
# strata apply / status / volume work offline and, through the control
# socket, online; two writers never run at once.
source "$(dirname "$0")/functions.sh"
requires nbdkit nbdinfo nbdsh

make_config 3 512MiB "{ name: a, size: 64MiB }" "{ name: b, size: 32MiB, replicas: 2 }"
"$STRATA" init "$CONFIG" >/dev/null
out=$("$STRATA" apply "$CONFIG" --dry-run)
echo "$out" | grep 'would create volume a' || fail "dry run: $out"
"$STRATA" status "$CONFIG" | grep 'no volumes' || fail "dry run changed the pool"
"$STRATA" apply "$CONFIG" | grep 'creating volume b' || fail "apply"
"$STRATA" apply "$CONFIG" | grep 'nothing to do' || fail "apply is not idempotent"
ok "offline apply, dry run, idempotent"

# What apply cannot change is named, with both values, and left alone.
sed -i 's/{ name: b, size: 32MiB, replicas: 2 }/{ name: b, size: 32MiB, replicas: 3, stripe_unit: 64KiB }/' "$CONFIG"
out=$("$STRATA" apply "$CONFIG" 2>&1) || fail "apply with a changed replica count: $out"
echo "$out" | grep "warning: volume b differs from $CONFIG:[0-9]* in what apply cannot change, which is left as it is: replicas 2 (YAML: 3), stripe_unit 1.0 MiB (YAML: 64.0 KiB)$" \
  || fail "unclear: $out"
echo "$out" | grep "pool t[0-9]*: nothing to do; 1 difference from $CONFIG left as it is$" \
  || fail "apply says nothing of the difference it left: $out"
echo "$out" | grep "matches" && fail "apply says the pool matches a YAML it differs from: $out"
"$STRATA" status "$CONFIG" --json | $PY -c '
import json, sys
v = {v["name"]: v for v in json.load(sys.stdin)["volumes"]}
assert (v["b"]["replicas"], v["b"]["stripe_unit"]) == (2, 1 << 20), v["b"]
' || fail "apply changed what it said it left alone"
sed -i 's/{ name: b, size: 32MiB, replicas: 3, stripe_unit: 64KiB }/{ name: b, size: 32MiB, replicas: 2 }/' "$CONFIG"
ok "apply names what it cannot change: $out"

"$STRATA" status "$CONFIG" --json | $PY -c '
import json, sys
s = json.load(sys.stdin)
assert s["pool"]["online"] is False
assert [v["name"] for v in s["volumes"]] == ["a", "b"], s["volumes"]
assert s["volumes"][1]["replicas"] == 2
assert len(s["devices"]) == 3 and all(d["state"] == "up" for d in s["devices"])
' || fail "status --json"
ok "status --json"

# Offline, options go before, between or after NAME and SIZE, as online
# (the way strata(8) and the README write them).
"$STRATA" volume create "$CONFIG" o1 16MiB --replicas 2 --stripe-width 3 --stripe-unit 64KiB \
  | grep 'created volume o1' || fail "offline create with options after NAME SIZE"
"$STRATA" volume create "$CONFIG" --replicas 3 o2 --stripe-width 2 8MiB >/dev/null \
  || fail "offline create with options between NAME and SIZE"
"$STRATA" volume resize "$CONFIG" o1 8MiB --shrink >/dev/null || fail "offline shrink"
"$STRATA" status "$CONFIG" --json | $PY -c '
import json, sys
v = {v["name"]: v for v in json.load(sys.stdin)["volumes"]}
assert (v["o1"]["size"], v["o1"]["replicas"], v["o1"]["stripe_width"], v["o1"]["stripe_unit"]) == (8 << 20, 2, 3, 64 << 10), v["o1"]
assert (v["o2"]["size"], v["o2"]["replicas"], v["o2"]["stripe_width"]) == (8 << 20, 3, 2), v["o2"]
' || fail "offline create/resize options not applied: $("$STRATA" status "$CONFIG" --json)"
out=$("$STRATA" volume create "$CONFIG" o3 8MiB --replicas 2>&1) && fail "--replicas without a value"
echo "$out" | grep -- 'option --replicas needs a value' || fail "unclear: $out"
out=$("$STRATA" volume create "$CONFIG" o3 8MiB --copies 2 2>&1) && fail "--copies accepted"
echo "$out" | grep -- 'unknown option --copies' || fail "unclear: $out"
"$STRATA" volume delete "$CONFIG" o1 >/dev/null && "$STRATA" volume delete "$CONFIG" o2 >/dev/null \
  || fail "offline delete"
ok "offline volume verbs take options anywhere, and say which is wrong"

# A name too long is refused whole, not cut to fit and created.
long=$(printf 'n%.0s' $(seq 64))
out=$("$STRATA" volume create "$CONFIG" "$long" 8MiB 2>&1) && fail "a 64-character name accepted: $out"
echo "$out" | grep 'volume name must be 1 to 63 characters' || fail "unclear: $out"
out=$("$STRATA" volume create "$CONFIG" o4 8MiB --class "$(printf 'c%.0s' $(seq 40))" 2>&1) \
  && fail "a 40-character class accepted: $out"
echo "$out" | grep -- '--class: a class name has at most 31 characters' || fail "unclear: $out"
"$STRATA" status "$CONFIG" --json | $PY -c '
import json, sys
assert [v["name"] for v in json.load(sys.stdin)["volumes"]] == ["a", "b"]
' || fail "a refused create made a volume: $("$STRATA" status "$CONFIG")"
ok "a name or class too long is refused, nothing created"

start_server
"$STRATA" status "$CONFIG" | grep 'online (served)' || fail "status not online"
# Online: create, grow, refuse shrink without --shrink, delete.
"$STRATA" volume create "$CONFIG" c 16MiB --replicas 2 --stripe-width 2 --stripe-unit 128KiB \
  | grep 'created volume c' || fail "online create"
nbdinfo --list "nbd+unix:///?socket=$SOCK" | grep 'export="c"' || fail "c not served"
nbdsh -u "$(uri c)" -c 'h.pwrite(b"\xab" * 4096, 16 * 1024 * 1024 - 4096); h.flush()'
"$STRATA" volume resize "$CONFIG" c 40MiB >/dev/null || fail "online grow"
[ "$(nbdinfo --size "$(uri c)")" = 41943040 ] || fail "grown size not served"
out=$("$STRATA" volume resize "$CONFIG" c 8MiB 2>&1) && fail "shrink without --shrink"
echo "$out" | grep -- '--shrink' || fail "unclear: $out"
"$STRATA" volume resize "$CONFIG" c 8MiB --shrink >/dev/null || fail "shrink"
"$STRATA" volume resize "$CONFIG" c 40MiB >/dev/null || fail "regrow"
nbdsh -u "$(uri c)" -c 'assert h.pread(4096, 16 * 1024 * 1024 - 4096) == bytes(4096)' \
  || fail "data beyond a shrink came back after growing again"
ok "online create, grow, shrink (only with --shrink), regrow reads zeros"

# init, even with --force, is refused while the pool is served: the
# serving process would go on with devices formatted under it.
before=$(sums "$T"/d*.img)
out=$("$STRATA" init "$CONFIG" --force 2>&1) && fail "init --force of a served pool accepted"
echo "$out" | grep "pool t$$ is in use by another process" || fail "unclear: $out"
[ "$(sums "$T"/d*.img)" = "$before" ] || fail "a refused init changed a device"
ok "init of a served pool is refused: $out"

# Past the largest volume of its extent size and stripe width (32 PiB
# for c, 16 PiB at width 1): refused before anything is committed.
out=$("$STRATA" volume resize "$CONFIG" c 33PiB 2>&1) && fail "resize to 33 PiB"
echo "$out" | grep 'from 1 byte to 32.0 PiB' || fail "unclear: $out"
[ "$(nbdinfo --size "$(uri c)")" = 41943040 ] || fail "a refused resize changed c"
out=$("$STRATA" volume create "$CONFIG" e 17PiB 2>&1) && fail "create of 17 PiB"
echo "$out" | grep 'larger than 16.0 PiB' || fail "unclear: $out"
nbdinfo --list "nbd+unix:///?socket=$SOCK" | grep 'export="e"' && fail "e served"
ok "sizes past the largest volume are refused: $out"

# The space line: used of the devices' capacity, and what the thin
# volumes may take; past the capacity it says what happens then.
"$STRATA" status "$CONFIG" | grep -E "^space: [0-9.]+ [KMG]?i?B of 1\.[0-9] GiB used \([0-9]+%\); the volumes may take [0-9.]+ MiB with their replicas$" \
  || fail "no space line: $("$STRATA" status "$CONFIG" | head -5)"
"$STRATA" volume create "$CONFIG" huge 2GiB >/dev/null || fail "create of a thin 2 GiB volume"
"$STRATA" status "$CONFIG" | grep -E "^space: .* the volumes may take 2\.[0-9] GiB with their replicas, more than the devices hold \(writes that need new space fail with ENOSPC once they are full\)$" \
  || fail "overcommit not said: $("$STRATA" status "$CONFIG" | head -5)"
"$STRATA" volume delete "$CONFIG" huge >/dev/null || fail "delete huge"
ok "status gives the space used and what the volumes may take"

# Declared volume grown in the YAML: apply grows it while served.
sed -i 's/{ name: a, size: 64MiB }/{ name: a, size: 80MiB }/' "$CONFIG"
"$STRATA" apply "$CONFIG" | grep 'resizing volume a' || fail "online apply grow"
[ "$(nbdinfo --size "$(uri a)")" = 83886080 ] || fail "a not grown"
out=$("$STRATA" apply "$CONFIG")
echo "$out" | grep 'volume c is not declared; keeping it' || fail "apply wants to delete c: $out"
echo "$out" | grep "nothing to do; 1 difference from $CONFIG left as it is" || fail "apply: $out"
"$STRATA" apply "$CONFIG" --prune | grep 'deleting volume c' || fail "prune"
nbdinfo --list "nbd+unix:///?socket=$SOCK" | grep 'export="c"' && fail "c still served"
ok "online apply grows, keeps undeclared volumes unless --prune"

# Only the server's owner can use its control socket.
[ "$(stat -c %a "$T/control.sock")" = 600 ] \
  || fail "the control socket is mode $(stat -c %a "$T/control.sock"), not 600"

# A second writer is refused while the pool is served.
out=$("$STRATA" init --force "$CONFIG" 2>&1) && fail "init --force of a served pool"
echo "$out" | grep 'in use by another process' || fail "unclear: $out"
rm -f "$T/control.sock"   # even without the control socket, the lock holds
out=$("$STRATA" volume create "$CONFIG" d 8MiB 2>&1) && fail "second writer allowed"
echo "$out" | grep 'in use by another process' || fail "unclear: $out"
ok "a second writer is refused: $out"

# Deleting a volume in use is refused.
stop_server
start_server
nbdsh -u "$(uri b)" -c '
import subprocess
r = subprocess.run(["'"$STRATA"'", "volume", "delete", "'"$CONFIG"'", "b"], capture_output=True, text=True)
assert r.returncode == 1 and "in use" in r.stderr, r
' || fail "delete of a volume in use"
# A client that has just disconnected is waited for (nbdkit closes its
# handle a moment after the client is gone): a script that writes and
# then deletes at once is not refused.
for i in $(seq 20); do
  "$STRATA" volume create "$CONFIG" z$i 4MiB >/dev/null || fail "create z$i"
  nbdsh -u "$(uri z$i)" -c 'h.pwrite(b"z" * 4096, 0)'
  out=$("$STRATA" volume delete "$CONFIG" z$i 2>&1) || fail "delete right after a disconnect: $out"
done
stop_server
"$STRATA" volume delete "$CONFIG" b | grep 'deleted volume b' || fail "offline delete"
ok "delete refused while connected, not just after a disconnect, done offline"

# `strata --help` and the SYNOPSIS of strata(8) list the same commands
# with the same options, so neither falls behind the other.
"$STRATA" --help 2>&1 | $PY -c '
import re, sys
def entries(lines, start):
    out = []
    for l in lines:
        if re.match(start, l):
            out.append(re.split(r"\s{2,}", l.strip())[0])
        elif re.match(r"\s+\[", l) and out:
            out[-1] += " " + re.split(r"\s{2,}", l.strip())[0]
    return [re.sub(r"^strata ", "", e) for e in out]
pod = open(sys.argv[1]).read()
syn = pod[pod.index("=head1 SYNOPSIS"):pod.index("=head1 DESCRIPTION")]
man = entries(syn.splitlines(), r" strata ")
hlp = entries(sys.stdin.read().splitlines(), r"  [a-z]|  --")
assert len(man) > 15, man
assert sorted(man) == sorted(hlp), (set(man) ^ set(hlp))
' "$TOP/man/strata.8.pod" || fail "strata --help and strata(8) SYNOPSIS differ"
ok "strata --help matches the SYNOPSIS of strata(8)"

# strata serve: nbdkit with the plugin in the foreground, saying when the
# pool is served; the CLI goes through it; a second serve is refused;
# SIGTERM stops it and the pool opens offline again.
"${NBDKIT_ENV[@]}" "$STRATA" serve "$CONFIG" -U "$T/serve.sock" 2> "$T/serve.err" &
serve_pid=$!
on_exit "kill -9 $serve_pid 2>/dev/null"
for _ in $(seq 100); do grep -q 'is served' "$T/serve.err" && break; sleep 0.1; done
grep -q "^strata: starting nbdkit for pool t$$ on unix socket $T/serve.sock$" "$T/serve.err" \
  && grep -q "^strata: pool t$$ is served: 1 volume; control socket $T/control.sock$" "$T/serve.err" \
  || fail "strata serve said: $(cat "$T/serve.err")"
nbdinfo --list "nbd+unix:///?socket=$T/serve.sock" | grep 'export="a"' >/dev/null || fail "serve: a not listed"
nbdsh -u "nbd+unix:///a?socket=$T/serve.sock" -c '
h.pwrite(b"served" * 1000, 12345); h.flush()
assert h.pread(6000, 12345) == b"served" * 1000' || fail "serve: write and read back"
out=$("$STRATA" status "$CONFIG" 2>&1) || fail "serve: status: $out"
echo "$out" | grep -q 'online (served)' || fail "serve: status does not go through it: $out"
out=$("${NBDKIT_ENV[@]}" "$STRATA" serve "$CONFIG" -U "$T/serve2.sock" 2>&1) && fail "a second serve ran"
echo "$out" | grep -q 'in use by another process' || fail "second serve: unclear: $out"
kill -TERM "$serve_pid"
for _ in $(seq 100); do kill -0 "$serve_pid" 2>/dev/null || break; sleep 0.1; done
kill -0 "$serve_pid" 2>/dev/null && fail "strata serve did not stop on SIGTERM"
wait "$serve_pid" 2>/dev/null || true
out=$("$STRATA" status "$CONFIG" 2>&1) || fail "status after serve stopped: $out"
echo "$out" | grep -q 'offline' || fail "pool not offline after serve stopped: $out"
nbdsh_offline=$("$STRATA" status "$CONFIG" --json | $PY -c 'import json,sys; print(json.load(sys.stdin)["volumes"][0]["allocated"] > 0)')
[ "$nbdsh_offline" = True ] || fail "what serve wrote is not allocated"
ok "strata serve runs nbdkit in the foreground, says when it serves, stops on SIGTERM"
