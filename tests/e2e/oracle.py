# The kill -9 oracle (test-kill9.sh, test-cache.sh): each 4 KiB block is
# stamped with (block, sequence, crc); the state file records, per block,
# the last sequence known durable and every sequence written.
#   oracle.py URI STATE write SEED   writes for 60 s, until killed or
#                                    until the file STATE.stop exists
#   oracle.py URI STATE check 0      reads every written block back;
#                                    prints "older N": how many blocks
#                                    hold an older write than the last
#                                    one sent
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
    bad = older = 0
    for k, seqs in st["written"].items():
        blk = int(k)
        got = parse(h.pread(BS, blk * BS))
        d = st["durable"].get(k, 0)
        if got is None:
            if d: print("block", blk, "lost durable seq", d); bad += 1
            else: older += 1
            continue
        assert got[0] == blk, "block %d holds block %d" % (blk, got[0])
        if got[1] not in seqs: print("block", blk, "holds unwritten seq", got[1]); bad += 1
        if got[1] < d: print("block", blk, "older than durable", got[1], d); bad += 1
        if got[1] < seqs[-1]: older += 1
        # It is now the durable content.
        st["durable"][k] = got[1]; st["written"][k] = [got[1]]
    json.dump(st, open(state, "w"))
    # How many blocks hold an older write than the last one sent (a write
    # that was not durable and was lost, or was still in flight).
    print("older", older)
    sys.exit(1 if bad else 0)
r = random.Random(seed)
pending = []
t_end = time.time() + 60
while time.time() < t_end and not os.path.exists(state + ".stop"):
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
