#!/usr/bin/env bash
# A FLUSH covers every write acknowledged before it, also one that was
# still in flight during an earlier FLUSH (NBD: a flush makes durable all
# writes completed before it; DESIGN.md §4).  Member 3 is a file served
# by nbdkit's eval plugin, requests in parallel.  While $T/slow exists,
# a write to it is made and then answered 3 s later, and touches
# $T/wrote just before its answer.  Each flush, once done, appends to
# $T/flushes "w" if $T/wrote existed when it began, "-" if not.  Write W
# goes to all 4 replicas; a first FLUSH is sent while W is still on
# member 3, then W completes, then a second FLUSH.  When the second is
# acknowledged, some flush must have reached member 3 after W: otherwise
# W was acknowledged and flushed and could still be lost with the member.
source "$(dirname "$0")/functions.sh"
requires nbdkit nbdsh

F=$T/d3.img
truncate -s 512M "$F"
nbdkit -U "$T/m3.sock" -P "$T/m3.pid" eval \
  get_size='echo 536870912' \
  thread_model='echo parallel' \
  pread="dd if=$F iflag=skip_bytes,count_bytes skip=\$4 count=\$3 status=none" \
  pwrite="dd of=$F oflag=seek_bytes conv=notrunc seek=\$4 status=none
          if [ -e $T/slow ]; then sleep 3; touch $T/wrote; fi" \
  zero="fallocate -z -o \$4 -l \$3 $F" \
  flush="if [ -e $T/wrote ]; then w=w; else w=-; fi
         sync $F && echo \$w >> $T/flushes" \
  can_write='exit 0' can_flush='exit 0' can_zero='exit 0' can_fua='echo emulate'
members_cleanup
wait_socket "$T/m3.sock"

STRATA_REMOTE=1 make_pool 4 512MiB "{ name: v, size: 64MiB, replicas: 4, stripe_unit: 64KiB }"
start_server

# The column is allocated and dirty before W, so that W itself commits
# nothing to the journal.
nbdsh -u "$(uri v)" -c "h.pwrite(b'\\x01' * 65536, 0); h.flush()"
rm -f "$T/wrote" "$T/flushes"
touch "$T/slow"

nbdsh -u "$(uri v)" -c "
import os, time
T = '$T'
pat = bytes(range(256)) * 256
cookie = h.aio_pwrite(pat, 0)
time.sleep(0.5)
h.flush()                                    # FLUSH 1, with W in flight
assert not h.aio_command_completed(cookie) and not os.path.exists(T + '/wrote'), \
    'W finished before the first FLUSH: the race was not exercised'
print('FLUSH 1 done while W was still on member 3')
while not h.aio_command_completed(cookie):  # W acknowledged
    h.poll(1)
os.unlink(T + '/slow')
h.flush()                                    # FLUSH 2
seen = open(T + '/flushes').read().split()
assert 'w' in seen, \
    'no flush reached member 3 after W was acknowledged (flushes: %s)' % seen
print('flushes on member 3:', ' '.join(seen))
assert h.pread(65536, 0) == pat
"
ok "a flush reached member 3 after W, before the second FLUSH was acknowledged"

# W is on member 3's file itself.
$PY - "$F" <<'PY'
import sys
data = open(sys.argv[1], "rb").read()
assert data.count(bytes(range(256)) * 256) >= 1, "W is not on member 3"
PY
"$STRATA" status "$CONFIG" | grep -E "^d3 .* up " >/dev/null || fail "d3 is not up"
ok "member 3 holds W and is still up"
