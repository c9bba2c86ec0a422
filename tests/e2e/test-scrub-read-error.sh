#!/usr/bin/env bash
# A scrub that cannot read a copy (a member whose reads fail: nbdkit's
# error filter) reports the whole extent as a read error, with the
# column it holds and its chunk's volume bytes; the other copies are
# checked, and the data reads back.
source "$(dirname "$0")/functions.sh"
requires nbdkit nbdsh

# Reads fail while $T/m2.rfail exists (start_member's error-file, for
# every request, is never made here).
start_member 2 512M error-pread=EIO error-pread-rate=1 error-pread-file="$T/m2.rfail"

# w: one chunk (8 MiB) of two columns, a copy of each on every member;
# s: one column, so the chunk is its volume bytes.
STRATA_REMOTE=1 make_pool 3 512MiB "{ name: w, size: 8MiB, replicas: 3, stripe_width: 2 }" \
  "{ name: s, size: 4MiB, replicas: 3 }"
start_server
nbdsh -u "$(uri w)" -c 'h.pwrite(b"w" * (8 << 20), 0); h.flush()'
nbdsh -u "$(uri s)" -c 'h.pwrite(b"s" * (4 << 20), 0); h.flush()'
touch "$T/m2.rfail"

out=$("$STRATA" scrub "$CONFIG" w 2>&1) && fail "a scrub of w with read errors exits 0: $out"
for c in 0 1; do
  echo "$out" | grep -E "^  device d2, extent [0-9]+, whole extent \(column $c of volume w bytes 0-8388607\): read error$" \
    || fail "the report does not give d2's read error in column $c: $out"
done
echo "$out" | grep -E "^blocks checked: 4096; errors: 2 \(d2 2\)" \
  || fail "the report does not count 2 copies checked on d0 and d1 and 2 errors: $out"
ok "a striped volume: each unreadable extent named with its column"

# That failed d2 (each extent is several reads, and 8 read errors fail a
# member).  Its disk mended, it comes back; then s's one extent on it.
rm -f "$T/m2.rfail"
"$STRATA" device add "$CONFIG" d2 >/dev/null || fail "d2 does not come back"
touch "$T/m2.rfail"
out=$("$STRATA" scrub "$CONFIG" s 2>&1) && fail "a scrub of s with read errors exits 0: $out"
echo "$out" | grep -E "^  device d2, extent [0-9]+, whole extent \(volume s bytes 0-4194303\): read error$" \
  || fail "the report does not give d2's read error on s: $out"
rm -f "$T/m2.rfail"
ok "an unstriped volume: the unreadable extent named with its volume bytes"

nbdsh -u "$(uri w)" -c 'assert h.pread(8 << 20, 0) == b"w" * (8 << 20)' || fail "w does not read back"
nbdsh -u "$(uri s)" -c 'assert h.pread(4 << 20, 0) == b"s" * (4 << 20)' || fail "s does not read back"
ok "every byte reads back"
