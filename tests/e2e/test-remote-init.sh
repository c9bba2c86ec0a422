#!/usr/bin/env bash
# strata init with remote members: a member of another pool and an export
# too small are refused with a clear error and left untouched; members
# behind TLS (nbds+unix:// with a PSK file) work, and the same members
# without TLS are refused.
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
