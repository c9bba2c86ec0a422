#!/usr/bin/env python3
# A crash oracle for every kind of write (TESTING.md 9 and 10), beside
# oracle.py, which stamps whole blocks: random writes at any byte offset
# and length, TRIMs, WRITE_ZEROES (with and without NO_HOLE), FUA and
# FLUSH, against a model of the volume.
#
#   crashmodel.py URI run STATE SEED [CHUNK]
#   crashmodel.py URI check STATE
#
# run goes on until the server goes away (exit status 3) or the file
# STATE.stop appears (it flushes and exits 0).  With CHUNK (the
# volume's chunk size), some trims and zeroes cover whole chunks.  It
# keeps what the volume durably holds (as of the last FLUSH, and FUA
# writes since) in STATE.durable, and every request made since that
# flush, the last one included (it may or may not have happened), in
# STATE.  Reads made while running must match the model.  check reads
# the whole volume: every byte must hold its durable value, or what some
# request since the last flush put there (zero for a trim or a zero).  A
# trim leaves its bytes undefined until written again (NBD), so a byte
# trimmed before the flush may also read as zero (STATE.undef).  The
# files are then reset to what was read, for the next round.
import json
import os
import random
import sys

import nbd

uri, mode, statef = sys.argv[1], sys.argv[2], sys.argv[3]
h = nbd.NBD()
h.connect_uri(uri)
size = h.get_size()
if os.path.exists(statef):
    pending = json.load(open(statef))["pending"]
    durable = bytearray(open(statef + ".durable", "rb").read())
    dundef = bytearray(open(statef + ".undef", "rb").read())
else:
    durable, dundef, pending = bytearray(size), bytearray(size), []


def save():
    for suffix, data in ((".durable", durable), (".undef", dundef)):
        with open(statef + suffix, "wb") as f:
            f.write(data)
    with open(statef + ".tmp", "w") as f:
        json.dump({"pending": pending}, f)
    os.rename(statef + ".tmp", statef)


def check():
    got = bytearray()
    for o in range(0, size, 1 << 20):
        got += h.pread(min(1 << 20, size - o), o)
    pend = [(o, n, None if d is None else bytes.fromhex(d))
            for o, n, d in pending]
    bad = []
    step = 65536
    for b in range(0, size, step):
        e = min(size, b + step)
        if got[b:e] == durable[b:e]:
            continue
        for i in range(b, e):
            g = got[i]
            if g == durable[i] or (dundef[i] and g == 0):
                continue
            if not any(o <= i < o + n and (g == 0 if d is None else d[i - o] == g)
                       for o, n, d in pend):
                bad.append(i)
    if bad:
        sys.exit("%d bytes hold what was never written there, the first at "
                 "%d (%d read, %d durable, %d requests since the last flush)"
                 % (len(bad), bad[0], got[bad[0]], durable[bad[0]], len(pend)))
    durable[:] = got
    dundef[:] = bytes(size)
    print("%d bytes checked, %d requests since the last flush"
          % (size, len(pend)))


def run(r, chunk):
    global pending
    ref, undef = bytearray(durable), bytearray(dundef)
    unflushed = 0

    def flushed():
        global pending
        durable[:] = ref
        dundef[:] = undef
        pending = []

    while not os.path.exists(statef + ".stop"):
        n = min(size, r.choice([r.randrange(1, 600), r.randrange(1, 70000),
                                r.randrange(1, 400000)]))
        k = r.random()
        if chunk and k >= 0.5 and k < 0.75 and r.random() < 0.2:
            # whole chunks: trimmed or zeroed (freed, or zeroed in place)
            n = min(size, chunk * r.randrange(1, 3))
            o = r.randrange(0, (size - n) // chunk + 1) * chunk
        elif r.random() < 0.5:  # near a block, stripe unit or extent edge
            b = r.choice([4096, 65536, 131072])
            o = (r.randrange(0, size) // b) * b + r.randrange(-700, 700)
            o = max(0, min(size - n, o))
        else:
            o = r.randrange(0, size - n + 1)
        if k < 0.5:
            d = r.randbytes(n)
            fua = r.random() < 0.1
            pending.append([o, n, d.hex()])
            unflushed += n
            h.pwrite(d, o, nbd.CMD_FLAG_FUA if fua else 0)
            ref[o:o + n] = d
            undef[o:o + n] = bytes(n)
            if fua:
                durable[o:o + n] = d
                dundef[o:o + n] = bytes(n)
        elif k < 0.62:
            pending.append([o, n, None])
            h.trim(n, o)
            undef[o:o + n] = b"\x01" * n
        elif k < 0.75:
            pending.append([o, n, None])
            h.zero(n, o, nbd.CMD_FLAG_NO_HOLE if r.random() < 0.4 else 0)
            ref[o:o + n] = bytes(n)
            undef[o:o + n] = bytes(n)
        elif k < 0.85 or len(pending) > 200 or unflushed > (8 << 20):
            h.flush()
            flushed()
            unflushed = 0
        else:
            got = h.pread(n, o)
            for i in range(n):
                if got[i] != ref[o + i] and not (undef[o + i] and got[i] == 0):
                    save()
                    sys.exit("read at %d: %d, not %d" % (o + i, got[i], ref[o + i]))
    h.flush()
    flushed()


if mode == "check":
    check()
    pending = []
    save()
else:
    try:
        run(random.Random(int(sys.argv[4])),
            int(sys.argv[5]) if len(sys.argv) > 5 else 0)
    except nbd.Error as e:
        save()
        print("the server went away:", e)
        sys.exit(3)
    save()
    print("stopped")
