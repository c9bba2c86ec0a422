#!/usr/bin/env bash
# kill -9 of the server during writes, then restart: every write that was
# flushed (or written with FUA) before the kill reads back, and every block
# holds something that was really written there (an oracle, TESTING.md).
# No read reports a checksum error, and after each restart (crash resync)
# the replicas of every column are identical.
source "$(dirname "$0")/functions.sh"
requires nbdkit

ROUNDS=${ROUNDS:-6}
make_pool 4 1GiB "{ name: v, size: 256MiB, replicas: 2, stripe_width: 2, stripe_unit: 64KiB }" \
                 "{ name: s, size: 256MiB, stripe_width: 4, stripe_unit: 16KiB }"

# The oracle: each 4 KiB block is stamped with (block, sequence, crc).
# durable.json records, per block, the last sequence known durable and
# every sequence written; a checker reads everything back.
cat > "$T/oracle.py" <<'PYEOF'
import sys, os, json, struct, zlib, random, time, nbd
uri, state, mode, seed = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
BS = 4096
st = json.load(open(state)) if os.path.exists(state) else {"seq": 0, "durable": {}, "written": {}}
def stamp(blk, seq):
    body = struct.pack("<QQ", blk, seq) * ((BS - 4) // 16)
    body += bytes(BS - 4 - len(body))
    return body + struct.pack("<I", zlib.crc32(body))
def parse(data):
    body, crc = data[:-4], struct.unpack("<I", data[-4:])[0]
    if data == bytes(BS): return None
    assert zlib.crc32(body) == crc, "garbage block"
    return struct.unpack("<QQ", body[:16])
h = nbd.NBD(); h.connect_uri(uri)
nblocks = h.get_size() // BS
if mode == "check":
    bad = 0
    for k, seqs in st["written"].items():
        blk = int(k)
        got = parse(h.pread(BS, blk * BS))
        d = st["durable"].get(k, 0)
        if got is None:
            if d: print("block", blk, "lost durable seq", d); bad += 1
            continue
        assert got[0] == blk, "block %d holds block %d" % (blk, got[0])
        if got[1] not in seqs: print("block", blk, "holds unwritten seq", got[1]); bad += 1
        if got[1] < d: print("block", blk, "older than durable", got[1], d); bad += 1
        # It is now the durable content.
        st["durable"][k] = got[1]; st["written"][k] = [got[1]]
    json.dump(st, open(state, "w"))
    sys.exit(1 if bad else 0)
r = random.Random(seed)
pending = []
t_end = time.time() + 60
while time.time() < t_end:
    n = r.choice([1, 1, 2, 8, 64])
    blk = r.randrange(0, nblocks - n)
    st["seq"] += 1; seq = st["seq"]
    for b in range(blk, blk + n):
        st["written"].setdefault(str(b), []).append(seq)
    json.dump(st, open(state, "w"))            # record before sending
    fua = r.random() < 0.1
    h.pwrite(b"".join(stamp(b, seq) for b in range(blk, blk + n)), blk * BS,
             nbd.CMD_FLAG_FUA if fua else 0)
    if fua:
        for b in range(blk, blk + n): st["durable"][str(b)] = seq
    else:
        pending.extend(range(blk, blk + n))
    if r.random() < 0.05:
        h.flush()
        for b in pending: st["durable"][str(b)] = st["written"][str(b)][-1]
        pending = []
        json.dump(st, open(state, "w"))
PYEOF

for vol in v s; do
  for round in $(seq "$ROUNDS"); do
    start_server
    $PY "$T/oracle.py" "$(uri $vol)" "$T/state-$vol.json" write "$round" > "$T/w.log" 2>&1 &
    wpid=$!
    sleep "0.$(( RANDOM % 9 + 1 ))"; sleep $(( round % 2 ))
    stop_server KILL
    wait $wpid 2>/dev/null || true
    start_server
    $PY "$T/oracle.py" "$(uri $vol)" "$T/state-$vol.json" check 0 \
      || fail "$vol round $round: durable data lost or garbage after kill -9"
    # A crash in the middle of a write is never reported as corruption.
    [ "$(csum_errors)" = 0 ] || fail "$vol round $round: checksum errors after kill -9"
    stop_server
    # The crash resync left the replicas of every column identical.
    ncols=$(compare_replicas) || fail "$vol round $round: replicas differ after restart"
  done
  nwritten=$($PY -c "import json;print(len(json.load(open('$T/state-$vol.json'))['written']))")
  [ "$nwritten" -gt 100 ] || fail "$vol: the oracle wrote too little ($nwritten blocks)"
  ok "$vol: $ROUNDS kill -9 rounds, $nwritten blocks checked, nothing durable lost, no checksum error, $ncols columns' replicas identical"
done
