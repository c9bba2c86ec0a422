#!/usr/bin/env bash
# Multi-conn: write on connection A, flush on B, read on C: the data is
# always visible, and a kill -9 after the flush keeps it.
source "$(dirname "$0")/functions.sh"
requires nbdkit nbdsh

make_pool 3 512MiB "{ name: v, size: 64MiB, replicas: 2, stripe_width: 2, stripe_unit: 64KiB }"
start_server

$PY - "$(uri v)" <<'PYEOF' || fail "multi-conn check"
import sys, os, random, nbd
hs = []
for _ in range(3):
    h = nbd.NBD(); h.connect_uri(sys.argv[1]); hs.append(h)
a, b, c = hs
assert a.can_multi_conn()
r = random.Random(3)
for i in range(200):
    n = r.randrange(1, 200000); off = r.randrange(0, a.get_size() - n)
    data = os.urandom(n)
    a.pwrite(data, off)
    b.flush()
    assert c.pread(n, off) == data, i
open(sys.argv[1].split("socket=")[1] + ".last", "wb").write(repr((off, n)).encode() + b"\n" + data)
PYEOF
ok "write on A, flush on B, read on C"

# The last write was flushed on another connection: it survives kill -9.
stop_server KILL
start_server
$PY - "$(uri v)" "$SOCK.last" <<'PYEOF' || fail "flushed write lost after kill -9"
import sys, nbd, ast
raw = open(sys.argv[2], "rb").read()
head, data = raw.split(b"\n", 1)
off, n = ast.literal_eval(head.decode())
h = nbd.NBD(); h.connect_uri(sys.argv[1])
assert h.pread(n, off) == data
PYEOF
ok "flushed-on-another-connection write survives kill -9"
