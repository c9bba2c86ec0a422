#!/usr/bin/env bash
# A majority of metadata replicas lost while serving: a double fault,
# beyond what DESIGN.md section 4 promises to survive.  Metadata changes
# stop: a request that needs one (a copy made stale, a chunk freed)
# fails, and so do later ones, and status says so.  But nothing stored
# may be lost or turned into a false checksum error.  Every block reads
# back as what it held or what the request on it put there (what an
# acknowledged one put there), never EIO.  Once a second member answers
# again, the journal heals by itself and metadata changes go on; after
# a restart with every member back, the same reads hold, the replicas
# agree and scrub is clean.
source "$(dirname "$0")/functions.sh"
requires nbdkit nbdsh
export STRATA_REMOTE=1

# Twelve 4 MiB chunks (width 1), each with copies on two of the three
# members, which are also the three metadata replicas.  Besides
# $T/mI.fail (every request fails), $T/mI.wfail makes member I fail
# writes only (which the journal needs), and zero and trim still work.
for i in 0 1 2; do
  start_member $i 256MiB error-pwrite=EIO error-pwrite-rate=1 \
    error-pwrite-file="$T/m$i.wfail"
done
make_pool 3 256MiB "{ name: v, size: 48MiB, replicas: 2 }"
start_server
nbdsh -u "$(uri v)" -c '
for i in range(48):
    h.pwrite(bytes([i + 1]) * (1 << 20), i << 20)
h.flush()'

# x fails first, found out by one write to one of its chunks (c0): a
# journal commit on the two others.  Its copies of its other chunks
# are not stale yet, so a write there must commit that first.  y, whose
# writes fail next, leaves the journal one replica of three.  Pick them
# so that x has chunks without y, where that commit is all that fails,
# and, where the map allows (u=1), c0 on x and y: a write there once y
# fails reaches no copy (x's is stale).
"$STRATA" status "$CONFIG" --json --map | $PY -c '
import json, sys
m = {ch["chunk"]: [int(d[1:]) for d in ch["columns"][0]]
     for ch in json.load(sys.stdin)["volumes"][0]["map"]}
best = None
for x in range(3):
    for y in range(3):
        on_x = [c for c in sorted(m) if x in m[c]]
        if y != x and len([c for c in on_x if y not in m[c]]) >= 2:
            both = [c for c in on_x if y in m[c]]
            pick = (x, y, both[0], 1) if both else (x, y, on_x[0], 0)
            if best is None or pick[3] > best[3]:
                best = pick
if best is None:
    sys.exit("no member pair fits: %s" % m)
print(*best)' > "$T/pick" || fail "$(cat "$T/pick")"
read -r x y c0 u < "$T/pick"
touch "$T/m$x.fail" "$T/m$x.wfail"
nbdsh -u "$(uri v)" -c "h.pwrite(b'\xaa' * 4096, $c0 << 22); h.flush()" \
  || fail "a write with d$x failing failed"
[ "$(device_field d$x state)" = failed ] || fail "d$x is $(device_field d$x state)"
# The chunks to trim are written just before, so that they are dirty
# (the cleaner leaves a column written during its last pass alone):
# then a trim of one without a copy on x needs no commit until the
# chunk's free, which fails after its copies are zeroed.
nbdsh -u "$(uri v)" -c "
for c in range(1, 12, 3):
    h.pwrite(b'\xcc' * 4096, (c << 22) + 20480)"
touch "$T/m$y.wfail"

# One request on each other chunk: a 4 KiB write, a trim of the whole
# chunk, or a 64 KiB zero that may not punch holes.  Each fails or not;
# $T/ops records them.
nbdsh -u "$(uri v)" -c "
import sys
ops = open('$T/ops', 'w')
for c in range(12):
    if c == $c0:
        continue
    kind = ('write', 'trim', 'zero')[c % 3]
    try:
        if kind == 'write':
            h.pwrite(b'\xbb' * 4096, (c << 22) + 8192)
        elif kind == 'trim':
            h.trim(4 << 20, c << 22)
        else:
            h.zero(65536, (c << 22) + 65536, nbd.CMD_FLAG_NO_HOLE)
        acked = 1
    except nbd.Error as e:
        print('chunk %d: %s: %s' % (c, kind, e), file=sys.stderr)
        acked = 0
    print(c, kind, acked, file=ops)
"
# A write to c0 reaches no copy: its column cannot be read until it is
# resynced (its copies may hold the old data or the new).
if [ "$u" = 1 ]; then
  nbdsh -u "$(uri v)" -c "h.pwrite(b'\xdd' * 4096, ($c0 << 22) + 16384)" \
    && fail "a write that reached no copy succeeded"
  nbdsh -u "$(uri v)" -c "h.pread(4096, $c0 << 22)" 2>/dev/null \
    && fail "chunk $c0 reads after a write reached none of its copies"
  echo "chunk $c0 (on d$x and d$y) cannot be read until it is resynced"
fi
grep -c ' 0$' "$T/ops" > /dev/null || fail "no request failed with the journal lost"
grep "the metadata journal has failed" "$T/nbdkit.log" > /dev/null \
  || fail "no journal failure reported: $(tail -5 "$T/nbdkit.log")"

# check: every 4 KiB block holds its old data, or what the request on
# its chunk put there (zeros for a trim or a zero); that, if the
# request was acknowledged, unless it was a trim (whose blocks may keep
# their data).
cat > "$T/check.py" <<PYEOF
import nbd, sys
unsynced = len(sys.argv) > 1	# c0 may not be readable yet
h = nbd.NBD()
h.connect_uri('$(uri v)')
ops = {int(c): (k, int(a)) for c, k, a in (l.split() for l in open('$T/ops'))}
errors = []
for c in range(12):
    for mib in range(4):
        i = c * 4 + mib
        old = bytearray([i + 1]) * (1 << 20)
        if c == $c0 and mib == 0:
            old[0:4096] = b'\xaa' * 4096
        if c % 3 == 1 and mib == 0:
            old[20480:24576] = b'\xcc' * 4096
        new = bytearray(old)
        kind, acked = ops.get(c, ('none', 1))
        if kind == 'write' and mib == 0:
            new[8192:12288] = b'\xbb' * 4096
        elif kind == 'zero' and mib == 0:
            new[65536:131072] = bytes(65536)
        elif kind == 'trim':
            new = bytes(1 << 20)
        if c == $c0 and mib == 0 and $u == 1:
            new = bytearray(old)	# the write that reached no copy
            new[16384:20480] = b'\xdd' * 4096
            acked = 0
        try:
            got = h.pread(1 << 20, i << 20)
        except nbd.Error as e:
            if not (unsynced and c == $c0 and $u == 1):
                errors.append('chunk %d MiB %d: %s' % (c, mib, e))
            continue
        for b in range(0, 1 << 20, 4096):
            g = got[b:b + 4096]
            if g == new[b:b + 4096]:
                continue
            if g != old[b:b + 4096] or (acked and kind != 'trim'):
                errors.append('chunk %d (%s, %s) MiB %d block %d reads back '
                              'wrong' % (c, kind, 'acked' if acked else
                                         'failed', mib, b // 4096))
                break
if errors:
    raise SystemExit('\n'.join(errors))
PYEOF
$PY "$T/check.py" unsynced || fail "with the journal lost: $(tail -5 "$T/nbdkit.log")"
# status says so, and why.
"$STRATA" status "$CONFIG" > "$T/status.out" || fail "status with the journal lost"
# (The commit that failed was a log record, or a checkpoint if one was
# due to bring x's lagging replica back.)
grep -E "^ERROR: the metadata journal has failed \(metadata (journal write|checkpoint) reached only 1 of 3 replicas" \
  "$T/status.out" > /dev/null && head -5 "$T/status.out" || { cat "$T/status.out"; fail "status does not say the journal failed"; }
[ -n "$("$STRATA" status "$CONFIG" --json | $PY -c 'import json, sys; print(json.load(sys.stdin)["pool"]["journal_failed"])')" ] \
  || fail "status --json does not say the journal failed"
ok "with d$x and d$y failing (2 of 3 metadata replicas), every block reads back: $(tr '\n' ' ' < "$T/ops")"

rm -f "$T/m$y.wfail"
# d$y answers again: the journal takes a new term in a checkpoint on a
# majority at its next commit once a retry is due (at gaps that double
# while it fails, from 1 s), and metadata changes go on.  A volume
# create (a commit) is retried until it succeeds.
t0=$(date +%s)
until "$STRATA" volume create "$CONFIG" w 8MiB > "$T/create.out" 2>&1; do
  [ $(($(date +%s) - t0)) -lt 90 ] \
    || fail "metadata changes still refused with d$y back: $(cat "$T/create.out")"
  sleep 0.5
done
grep "the metadata journal has a majority of its replicas again" "$T/nbdkit.log" \
  || fail "the journal did not say it healed"
[ -z "$("$STRATA" status "$CONFIG" --json | $PY -c 'import json, sys; print(json.load(sys.stdin)["pool"]["journal_failed"])')" ] \
  || fail "status still says the journal failed"
nbdsh -u "$(uri w)" -c 'h.pwrite(b"\x5a" * (8 << 20), 0); h.flush()
assert h.pread(8 << 20, 0) == b"\x5a" * (8 << 20)' || fail "writing w"
# c0's column is resynced by the cleaner's next pass (every 5 s).
for _ in $(seq 40); do
  $PY "$T/check.py" > "$T/check.out" 2>&1 && break
  sleep 0.5
done
$PY "$T/check.py" || fail "after the journal healed: $(tail -5 "$T/nbdkit.log")"
ok "with d$y back the journal healed by itself $(($(date +%s) - t0)) s later; metadata changes and allocation go on$([ "$u" = 1 ] && echo ", and chunk $c0 reads again")"

# The members back, the pool reopened.
stop_server
rm -f "$T/m$x.fail" "$T/m$x.wfail"
start_server
$PY "$T/check.py" || fail "after reopening: $(tail -5 "$T/nbdkit.log")"
[ -z "$("$STRATA" status "$CONFIG" --json | $PY -c 'import json, sys; print(json.load(sys.stdin)["pool"]["journal_failed"])')" ] \
  || fail "the journal still shows failed after reopening"
"$STRATA" device add "$CONFIG" "d$x" > "$T/add.out" 2>&1 \
  || { cat "$T/add.out"; fail "device add d$x"; }
# A copy on d$y that a failed request missed may be stale: an entry
# that reached one replica may still be taken up when the pool opens
# (it was never acknowledged either way).  A rebuild brings it back.
"$STRATA" rebuild "$CONFIG" > "$T/rebuild.out" 2>&1 \
  || { cat "$T/rebuild.out"; fail "rebuild"; }
[ "$(volume_field v health)" = healthy ] || fail "v is $(volume_field v health)"
$PY "$T/check.py" || fail "after d$x is back: $(tail -5 "$T/nbdkit.log")"
out=$("$STRATA" scrub "$CONFIG" --json) || fail "scrub: $out"
echo "$out" | $PY -c "import json, sys; r = json.load(sys.stdin); assert r['errors'] == 0, r" \
  || fail "scrub found errors: $out"
[ "$(csum_errors)" = 0 ] || fail "$(csum_errors) checksum errors"
stop_server
n=$(compare_replicas) || fail "replicas differ"
ok "reopened with the members back: every block reads back, d$x added, scrub clean, $n columns' replicas equal"
