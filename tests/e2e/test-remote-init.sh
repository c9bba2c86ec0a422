#!/usr/bin/env bash
# strata init with remote members: a member of another pool and an export
# too small are refused with a clear error and left untouched; members
# behind TLS work (nbds+unix:// with a PSK file; nbds:// over loopback TCP
# with X.509 certificates, verified both ways), and the same members
# without TLS or without a client certificate are refused.
source "$(dirname "$0")/functions.sh"
requires nbdkit nbdsh
export STRATA_REMOTE=1

make_pool 3 256MiB "{ name: v, size: 32MiB, replicas: 2 }"
CONFIG_A=$CONFIG

# Another pool that names member 0 of pool A.
start_member 5 256MiB
nbdkit -U "$T/small.sock" -P "$T/msmall.pid" memory 1M
cat > "$T/b.yaml" <<EOF
pool: { name: b$$, metadata_replicas: 1, metadata_size: 16MiB, control_socket: $T/b.sock }
devices:
  - { name: x0, uri: "nbd+unix:///?socket=$T/m0.sock" }
  - { name: x1, uri: "nbd+unix:///?socket=$T/m5.sock" }
EOF
before=$(sums "$T/d0.img" "$T/d5.img")
if "$STRATA" init "$T/b.yaml" 2> "$T/err"; then fail "init over another pool's member succeeded"; fi
grep -E "device x0 .*strata pool" "$T/err" >/dev/null || { cat "$T/err"; fail "unclear message"; }
[ "$(sums "$T/d0.img" "$T/d5.img")" = "$before" ] || fail "a refused init changed a member"
ok "member of another pool refused: $(cat "$T/err")"

cat > "$T/c.yaml" <<EOF
pool: { name: c$$, metadata_replicas: 1, metadata_size: 16MiB, control_socket: $T/c.sock }
devices:
  - { name: tiny, uri: "nbd+unix:///?socket=$T/small.sock" }
EOF
if "$STRATA" init "$T/c.yaml" 2> "$T/err"; then fail "init on a 1 MiB export succeeded"; fi
grep -E "device tiny: .*too small" "$T/err" >/dev/null || { cat "$T/err"; fail "unclear message"; }
ok "export too small refused: $(cat "$T/err")"
"$STRATA" status "$CONFIG_A" >/dev/null || fail "pool A no longer opens"

# TLS members: nbdkit --tls=require with a pre-shared key.
$PY -c 'import secrets; print("strata:" + secrets.token_hex(32))' > "$T/psk"
for i in 6 7 8; do
  truncate -s 256M "$T/d$i.img"
  nbdkit -U "$T/m$i.sock" -P "$T/m$i.pid" --tls=require --tls-psk="$T/psk" \
    file "$T/d$i.img"
done
# libnbd takes the PSK user name from the URI's user part.
tlsuri () { echo "nbds+unix://strata@/?socket=$T/m$1.sock&tls-psk-file=$T/psk"; }
cat > "$T/tls.yaml" <<EOF
pool: { name: tls$$, metadata_replicas: 3, metadata_size: 16MiB, control_socket: $T/tls.sock }
devices:
  - { name: t6, uri: "$(tlsuri 6)" }
  - { name: t7, uri: "$(tlsuri 7)" }
  - { name: t8, uri: "$(tlsuri 8)" }
volumes:
  - { name: v, size: 32MiB, replicas: 3 }
EOF
"$STRATA" init "$T/tls.yaml" >/dev/null
"$STRATA" apply "$T/tls.yaml" >/dev/null
CONFIG=$T/tls.yaml
start_server
nbdsh -u "$(uri v)" -c '
pat = b"tls!" * 16384
h.pwrite(pat, 4096, nbd.CMD_FLAG_FUA)
assert h.pread(len(pat), 4096) == pat'
# Remote members cannot be flock'ed: the pool lock file keeps a second
# server of this all-remote pool out.
if timeout 20 "${NBDKIT_ENV[@]}" nbdkit -f -U "$T/second.sock" "$PLUGIN" \
     config="$CONFIG" 2> "$T/err"; then
  fail "a second server opened the pool"
fi
grep "is in use by another process" "$T/err" >/dev/null || { cat "$T/err"; fail "unclear message"; }
stop_server
grep -c "tls!tls!" "$T/d6.img" >/dev/null || fail "data did not reach the TLS member"
ok "pool on TLS members (PSK): init, apply, write, read back; a second server refused"

sed -e "s|nbds+unix://strata@|nbd+unix://|" -e "s|&tls-psk-file=[^\"]*||" "$T/tls.yaml" > "$T/plain.yaml"
if "$STRATA" status "$T/plain.yaml" 2> "$T/err"; then fail "TLS-only members opened without TLS"; fi
ok "the same members without TLS are refused: $(head -c 200 "$T/err")"

# X.509: a CA, a server certificate for localhost and a client
# certificate; nbdkit verifies the client, libnbd the server.
requires openssl
X=$T/x509
mkdir -p "$X/srv" "$X/cli"
(
  cd "$X"
  openssl req -x509 -newkey rsa:2048 -nodes -keyout ca-key.pem -out ca-cert.pem \
    -days 2 -subj "/CN=strata test CA"
  openssl req -newkey rsa:2048 -nodes -keyout server-key.pem -out server.csr -subj "/CN=localhost"
  printf 'subjectAltName=DNS:localhost\nextendedKeyUsage=serverAuth\n' > server.ext
  openssl x509 -req -in server.csr -CA ca-cert.pem -CAkey ca-key.pem -CAcreateserial \
    -out server-cert.pem -days 2 -extfile server.ext
  openssl req -newkey rsa:2048 -nodes -keyout client-key.pem -out client.csr -subj "/CN=strata"
  printf 'extendedKeyUsage=clientAuth\n' > client.ext
  openssl x509 -req -in client.csr -CA ca-cert.pem -CAkey ca-key.pem -CAcreateserial \
    -out client-cert.pem -days 2 -extfile client.ext
  cp ca-cert.pem server-cert.pem server-key.pem srv/
  cp ca-cert.pem client-cert.pem client-key.pem cli/
) > "$T/openssl.log" 2>&1 || { cat "$T/openssl.log"; fail "openssl could not make the test certificates"; }
port=$($PY -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
truncate -s 256M "$T/d9.img"
nbdkit -i 127.0.0.1 -p "$port" -P "$T/m9.pid" --tls=require --tls-certificates="$X/srv" \
  --tls-verify-peer file "$T/d9.img"
for _ in $(seq 50); do
  nbdinfo --size "nbds://localhost:$port/?tls-certificates=$X/cli" >/dev/null 2>&1 && break
  sleep 0.1
done
cat > "$T/x509.yaml" <<EOF
pool: { name: x$$, metadata_replicas: 1, metadata_size: 16MiB, control_socket: $T/x509.sock }
devices:
  - { name: x9, uri: "nbds://localhost:$port/?tls-certificates=$X/cli" }
volumes:
  - { name: v, size: 32MiB }
EOF
"$STRATA" init "$T/x509.yaml" >/dev/null
"$STRATA" apply "$T/x509.yaml" >/dev/null
CONFIG=$T/x509.yaml
start_server
nbdsh -u "$(uri v)" -c '
pat = b"x509" * 16384
h.pwrite(pat, 8192, nbd.CMD_FLAG_FUA)
assert h.pread(len(pat), 8192) == pat'
"$STRATA" status "$CONFIG" --json | $PY -c '
import json, sys
d = json.load(sys.stdin)["devices"][0]
assert d["state"] == "up" and d["host"] == "localhost" and d["domain"] == "localhost", d'
stop_server
grep -c "x509x509" "$T/d9.img" >/dev/null || fail "data did not reach the X.509 member"
# The server's certificate directory has no client certificate: refused.
sed -e "s|tls-certificates=$X/cli|tls-certificates=$X/srv|" "$T/x509.yaml" > "$T/x509-bad.yaml"
if "$STRATA" status "$T/x509-bad.yaml" 2> "$T/err"; then fail "a client without its certificate was let in"; fi
ok "pool on an X.509 member over loopback TCP: write, read back; a client without its certificate refused"

# Discarding members whose servers must write the zeros (slow here: the
# delay filter holds every zero request 0.6 s, and each is 256 MiB): the
# members are discarded together (the log filter's times show their
# requests overlap), and lines say how far it got.
for i in 10 11; do
  truncate -s 2G "$T/d$i.img"
  start_member $i 2G --filter=log --filter=delay logfile="$T/m$i.log" delay-zero=600ms
done
cat > "$T/slow.yaml" <<EOF2
pool: { name: s$$, metadata_replicas: 1, metadata_size: 16MiB, control_socket: $T/slow.sock }
devices:
  - { name: z0, uri: "nbd+unix:///?socket=$T/m10.sock" }
  - { name: z1, uri: "nbd+unix:///?socket=$T/m11.sock" }
EOF2
"$STRATA" init "$T/slow.yaml" > "$T/slow.log" || fail "init on the slow members: $(cat "$T/slow.log")"
grep -q "^discarding nbd+unix:///?socket=$T/m10.sock$" "$T/slow.log" \
  && grep -q "^discarding nbd+unix:///?socket=$T/m11.sock$" "$T/slow.log" \
  && grep -Eq "^discarding: [0-9.]+ [MG]iB of 4.0 GiB \([1-9][0-9]?%\)$" "$T/slow.log" \
  || fail "init said: $(cat "$T/slow.log")"
$PY - "$T/m10.log" "$T/m11.log" <<'EOF2' || fail "the members were not discarded together"
import datetime, re, sys
def first_zero(path):
    start = end = None
    for line in open(path):
        t = datetime.datetime.strptime(line[:26], "%Y-%m-%d %H:%M:%S.%f")
        if start is None and re.search(r" Zero id=\d+ offset=0x0 count=0x10000000 ", line):
            start, rid = t, re.search(r"Zero id=(\d+)", line).group(1)
        elif start is not None and re.search(r"\.\.\.Zero id=%s return=0" % rid, line):
            return start, t
    sys.exit("%s: no 256 MiB zero at offset 0" % path)
a, b = first_zero(sys.argv[1]), first_zero(sys.argv[2])
if not (a[0] < b[1] and b[0] < a[1]):
    sys.exit("zeros %s and %s do not overlap" % (a, b))
EOF2
"$STRATA" status "$T/slow.yaml" >/dev/null || fail "the pool on the slow members does not open"
ok "slow members are discarded together at init, with progress: $(grep '^discarding:' "$T/slow.log" | tr '\n' ' ')"
