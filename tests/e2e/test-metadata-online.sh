#!/usr/bin/env bash
# Metadata replicas wiped or corrupted while the pool is served
# (TESTING.md 17, "also while serving").
#
# The pool keeps its journal on d0, d1 and d2.  While strata serves it
# and keeps committing (chunks allocated by new writes, volumes created
# and grown), d0's metadata area is wiped behind its back; strata is
# then killed with kill -9.  Restarted, it has everything that was
# flushed or committed, and d0's copy is in sync again.  Then d1's
# metadata area gets one bit flipped in every 4 KiB block in use while
# served, and strata is killed again: again everything, d1 in sync.
# Each repair is proved real by losing another replica offline
# afterwards: a pool whose repaired copy were still broken would be
# short of a majority and refuse to open.
source "$(dirname "$0")/functions.sh"
requires nbdkit nbdsh

ES=$((4 << 20))
make_pool 4 512MiB "{ name: v, size: 256MiB, replicas: 2 }"
start_server

# write_chunks FIRST LAST: one 64 KiB pattern at an odd offset in each
# chunk, so each chunk's first write is an allocation (a journal commit).
write_chunks () {
  nbdsh -u "$(uri v)" -c "
for i in range($1, $2 + 1):
    h.pwrite(bytes([i + 1]) * 65536, i * $ES + 12345)
h.flush()" || fail "writing chunks $1..$2 failed"
}
check_chunks () {
  nbdsh -u "$(uri v)" -c "
for i in range($1, $2 + 1):
    assert h.pread(65536, i * $ES + 12345) == bytes([i + 1]) * 65536, i
" || fail "chunks $1..$2 do not read back ($3)"
}
# kill_restart DEV WHAT LAST [VOLUME:SIZE...]: kill -9 the server, whose
# replica on DEV (WHAT: wiped, corrupted) must not be in sync then,
# restart it, and check chunks 0..LAST, the volumes, and that every
# metadata replica is in sync again.  BEFORE: the states after the kill.
kill_restart () {
  local dev=$1 what=$2 last=$3 vs
  shift 3
  stop_server KILL
  before=$(meta_states)
  case " $before " in
    *" $dev:in-sync "*) fail "$dev's metadata replica is in sync before any repair: $what did not count";;
  esac
  start_server
  check_chunks 0 "$last" "after kill -9 with $dev $what"
  for vs in "$@"; do
    check_volume "${vs%%:*}" "${vs#*:}" "after kill -9 with $dev $what"
  done
  [ "$(meta_states)" = "d0:in-sync d1:in-sync d2:in-sync" ] \
    || fail "after restart with $dev $what the metadata replicas are $(meta_states)"
}
check_volume () {
  local size
  size=$(nbdinfo --size "$(uri "$1")" 2>/dev/null) || fail "volume $1 lost ($3)"
  [ "$size" = "$2" ] || fail "volume $1 has size $size, want $2 ($3)"
}

write_chunks 0 7
# d0's metadata area (1 MiB .. 17 MiB) wiped under the running server.
meta_wipe d0
write_chunks 8 23
"$STRATA" volume create "$CONFIG" w 32MiB >/dev/null || fail "volume create failed with d0 wiped"
"$STRATA" volume resize "$CONFIG" w 48MiB >/dev/null || fail "volume resize failed with d0 wiped"
check_chunks 0 23 "served, d0 wiped"
kill_restart d0 wiped 23 w:$((48 << 20))
ok "d0's metadata wiped while served, then kill -9 ($before): everything back, d0 in sync"

# d1's metadata area: in every 4 KiB block that holds something (headers,
# checkpoints, log records), one bit of a random non-zero byte flipped.
$PY - "$T/d1.img" <<'EOF'
import os, random, sys
random.seed(17)
fd = os.open(sys.argv[1], os.O_RDWR)
for off in range(1 << 20, 17 << 20, 4096):
    block = os.pread(fd, 4096, off)
    nonzero = [i for i, b in enumerate(block) if b]
    if nonzero:
        i = random.choice(nonzero)
        os.pwrite(fd, bytes([block[i] ^ (1 << random.randrange(8))]), off + i)
os.fsync(fd)
os.close(fd)
EOF
write_chunks 24 39
"$STRATA" volume create "$CONFIG" x 16MiB >/dev/null || fail "volume create failed with d1 corrupted"
check_chunks 0 39 "served, d1 corrupted"
kill_restart d1 corrupted 39 w:$((48 << 20)) x:$((16 << 20))
stop_server
ok "d1's metadata corrupted while served, then kill -9 ($before): everything back, d1 in sync"

# The repairs were real: with d2's copy lost, d0 and d1 alone still hold
# everything.
meta_wipe d2
start_server
check_chunks 0 39 "d2 wiped after the repairs"
check_volume w $((48 << 20)) "d2 wiped after the repairs"
check_volume x $((16 << 20)) "d2 wiped after the repairs"
stop_server
ok "then d2's metadata wiped offline: d0 and d1 hold everything"
