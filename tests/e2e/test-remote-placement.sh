#!/usr/bin/env bash
# Placement across failure domains: with 3 domains and 3 replicas no two
# copies of any column share a domain (checked over every column of a
# fully written volume); with only 2 domains for 3 replicas, status says
# how many columns could not be kept apart.
source "$(dirname "$0")/functions.sh"
requires nbdkit nbdsh

# Five members; their domains are set per case below.
for i in 0 1 2 3 4; do start_member "$i" 512MiB; done
write_config () {  # write_config DOMAIN... (one per member)
  {
    echo "pool: { name: pl$$, metadata_replicas: 3, metadata_size: 16MiB, control_socket: $T/control.sock }"
    echo "devices:"
    local i=0
    for d in "$@"; do
      echo "  - { name: d$i, uri: \"nbd+unix:///?socket=$T/m$i.sock\", domain: $d }"
      i=$((i + 1))
    done
    echo "volumes:"
    echo "  - { name: v3, size: 192MiB, replicas: 3, stripe_width: 2, stripe_unit: 64KiB }"
  } > "$CONFIG"
}
write_config rack1 rack1 rack2 rack2 rack3
"$STRATA" init "$CONFIG" >/dev/null
"$STRATA" apply "$CONFIG" >/dev/null
start_server
nbdsh -u "$(uri v3)" -c '
for off in range(0, h.get_size(), 16 << 20):
    h.pwrite(b"\x01" * (16 << 20), off)
h.flush()'
stop_server
"$STRATA" status "$CONFIG" --json --map > "$T/status.json"
$PY - "$T/status.json" <<'PY'
import json, sys
st = json.load(open(sys.argv[1]))
dom = {d["name"]: d["domain"] for d in st["devices"]}
v = [v for v in st["volumes"] if v["name"] == "v3"][0]
cols = [c for ch in v["map"] for c in ch["columns"]]
assert len(cols) >= 24, "expected the whole volume allocated, got %d columns" % len(cols)
for c in cols:
    assert len(c) == 3 and len(set(c)) == 3, "copies on one device: %s" % c
    assert len({dom[d] for d in c}) == 3, "copies share a domain: %s" % c
assert v["health"] == "healthy", v["health"]
print("%d columns, each with one copy in each of rack1, rack2, rack3" % len(cols))
PY
ok "3 domains, 3 replicas: no column has two copies in one domain"

# Two domains only: a third copy has to share one, and status says so.
for i in 0 1 2 3 4; do kill "$(cat "$T/m$i.pid")"; rm -f "$T/d$i.img"; done
sleep 0.5
for i in 0 1 2 3 4; do start_member "$i" 512MiB; done
write_config east east west west west
"$STRATA" init "$CONFIG" >/dev/null
"$STRATA" apply "$CONFIG" >/dev/null
start_server
nbdsh -u "$(uri v3)" -c 'h.pwrite(b"\x02" * (8 << 20), 0); h.flush()'
"$STRATA" status "$CONFIG" > "$T/status.txt"
grep -E "^v3 .*healthy; [0-9]+ columns have two copies in one failure domain" "$T/status.txt" >/dev/null \
  || { cat "$T/status.txt"; fail "status does not report shared domains"; }
ok "2 domains, 3 replicas: $(grep -o 'healthy; .*' "$T/status.txt")"
