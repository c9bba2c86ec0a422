# strata end-to-end tests: shared helpers.  Source this from a test-*.sh.
#
# Every test runs in its own temporary directory, starts its own nbdkit
# on a unix socket, and cleans up (servers, mounts, loop devices) on exit.
# A test that needs a missing tool exits 77 (skipped).

set -euo pipefail

# nbdsh and the libnbd Python module come from Debian's python3.
export PATH=/usr/bin:/usr/sbin:/bin:/sbin:$PATH

TOP=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BUILD=${STRATA_BUILD:-$TOP/build}
STRATA=$BUILD/strata
PLUGIN=$BUILD/nbdkit-strata-plugin.so
# Under `make SANITIZE=1 check` the plugin is instrumented but nbdkit is
# not: nbdkit must load the sanitizer runtimes first.  Leak checking is
# off because nbdkit's own allocations at exit would be reported.
NBDKIT_ENV=()
if [ "${STRATA_SANITIZE:-}" = 1 ]; then
  export ASAN_OPTIONS=detect_leaks=0:abort_on_error=1
  export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
  NBDKIT_ENV=(env "LD_PRELOAD=$(gcc -print-file-name=libasan.so) $(gcc -print-file-name=libubsan.so)")
elif [ "${STRATA_SANITIZE:-}" = thread ]; then
  # A ThreadSanitizer build, made by hand (make B=build-tsan
  # CFLAGS="-O1 -g -fsanitize=thread" LDFLAGS=-fsanitize=thread all) and
  # given as STRATA_BUILD.  Its reports go to nbdkit.log; any fails the
  # test when it ends (_cleanup).
  export TSAN_OPTIONS=halt_on_error=0:exitcode=0
  NBDKIT_ENV=(env "LD_PRELOAD=$(gcc -print-file-name=libtsan.so)")
fi
PY=/usr/bin/python3

T=$(mktemp -d /var/tmp/strata-test.XXXXXX)
SOCK=$T/nbd.sock
PIDFILE=$T/nbdkit.pid
CONFIG=$T/pool.yaml
_cleanups=()

on_exit () { _cleanups+=("$*"); }

_cleanup () {
  local rc=$?
  for (( i=${#_cleanups[@]}-1; i>=0; i-- )); do eval "${_cleanups[i]}" || true; done
  stop_server || true
  if [ "${STRATA_SANITIZE:-}" = thread ] \
     && grep -q "WARNING: ThreadSanitizer" "$T/nbdkit.log" 2>/dev/null; then
    grep -A 40 "WARNING: ThreadSanitizer" "$T/nbdkit.log" | head -300 >&2
    echo "FAIL: ThreadSanitizer reports in nbdkit.log" >&2
    rc=1
  fi
  rm -rf "$T"
  exit $rc
}
trap _cleanup EXIT

fail () {
  echo "FAIL: $*" >&2
  # The server's last messages, without the routine crash resync lines.
  [ -s "$T/nbdkit.log" ] && grep -v "crash resync: [0-9]* columns checked" "$T/nbdkit.log" \
    | sed "s/^/nbdkit: /" | tail -n "${LOG_LINES:-15}" >&2
  # Which member servers are still running.
  local p
  for p in "$T"/m*.pid; do
    [ -f "$p" ] || continue
    if kill -0 "$(cat "$p")" 2>/dev/null; then
      echo "member $(basename "$p" .pid): running" >&2
    else
      echo "member $(basename "$p" .pid): gone" >&2
      tail -n 3 "${p%.pid}.err" 2>/dev/null | sed "s/^/  /" >&2
    fi
  done
  exit 1
}
ok () { echo "ok: $*"; }

requires () {
  for t in "$@"; do
    command -v "$t" >/dev/null 2>&1 || { echo "SKIP: $t is not installed"; exit 77; }
  done
}

# make_config DEVICES SIZE [volume lines...]: a pool of DEVICES sparse
# files.  With STRATA_REMOTE=1 each device is instead a remote member: a
# file served by its own nbdkit on a unix socket (standing in for a host,
# in its own failure domain host$i), with the error filter in front:
# `touch $T/m$i.fail` makes member i fail every request, and
# `kill_member i` takes the host away.  A member already serving on
# $T/m$i.sock (a test's special one) is used as it is.  POOL_EXTRA adds a
# line to the pool section (e.g. "io_timeout: 2s").  STRATA_IO sets the
# io mode of local devices (auto, direct, buffered).
make_config () {
  local n=$1 size=$2; shift 2
  [ "${STRATA_REMOTE:-}" = 1 ] && start_members "$n" "$size"
  {
    pool_section 3
    echo "devices:"
    for ((i=0; i<n; i++)); do
      if [ "${STRATA_REMOTE:-}" = 1 ]; then
        echo "  - { name: d$i, uri: \"nbd+unix:///?socket=$T/m$i.sock\", domain: host$i }"
      else
        echo "  - { name: d$i, path: $T/d$i.img, size: $size${STRATA_IO:+, io: $STRATA_IO} }"
      fi
    done
    echo "volumes:"
    for v in "$@"; do echo "  - $v"; done
  } > "$CONFIG"
}

# pool_section METADATA_REPLICAS: the pool section a test's YAML starts
# with (POOL_EXTRA adds a line to it).
pool_section () {
  echo "pool:"
  echo "  name: t$$"
  echo "  extent_size: 4MiB"
  echo "  metadata_replicas: $1"
  echo "  metadata_size: 16MiB"
  echo "  control_socket: $T/control.sock"
  [ -n "${POOL_EXTRA:-}" ] && echo "  $POOL_EXTRA"
  return 0
}

# cache_field FIELD: a field of the cache in status --json.
cache_field () {
  "$STRATA" status "$CONFIG" --json \
    | $PY -c "import sys,json; print(json.load(sys.stdin)['cache']['$1'])"
}

# cache_verify URI WHAT FIO-ARGS...: fio random reads and writes with
# crc32c verification over URI (FIO-ARGS give the sizes and depth);
# fails naming WHAT, with fio's report, on any error.
cache_verify () {
  local u=$1 what=$2; shift 2
  fio --name=verify --ioengine=nbd --uri="$u" --rw=randrw "$@" \
      --verify=crc32c --verify_fatal=1 --serialize_overlap=1 --do_verify=1 \
      --verify_state_save=0 > "$T/fio.log" 2>&1 \
    || { cat "$T/fio.log"; fail "fio verify $what"; }
  grep -q 'err= 0' "$T/fio.log" || { cat "$T/fio.log"; fail "fio errors $what"; }
}

# kill9_rounds VOL ROUNDS: ROUNDS times, the oracle (oracle.py) writes to
# VOL while the server is killed with -9 at a random moment; after a
# restart every block it saw flushed (or written with FUA) reads back and
# every block holds something that was really written there, no read
# reports a checksum error (a crash in the middle of a write is never
# corruption), and after a clean stop the crash resync has left the
# replicas of every column identical.  The oracle reads anything but
# zeros and its own blocks as garbage: give it a volume of its own.
kill9_rounds () {
  local vol=$1 rounds=$2 round wpid ncols nwritten
  for round in $(seq "$rounds"); do
    start_server
    $PY "$(dirname "$0")/oracle.py" "$(uri "$vol")" "$T/state-$vol.json" write "$round" > "$T/w.log" 2>&1 &
    wpid=$!
    sleep "0.$(( RANDOM % 9 + 1 ))"; sleep $(( round % 2 ))
    stop_server KILL
    wait $wpid 2>/dev/null || true
    start_server
    $PY "$(dirname "$0")/oracle.py" "$(uri "$vol")" "$T/state-$vol.json" check 0 \
      || fail "$vol round $round: durable data lost or garbage after kill -9"
    [ "$(csum_errors)" = 0 ] || fail "$vol round $round: checksum errors after kill -9"
    stop_server
    ncols=$(compare_replicas) || fail "$vol round $round: replicas differ after restart"
  done
  nwritten=$($PY -c "import json;print(len(json.load(open('$T/state-$vol.json'))['written']))")
  [ "$nwritten" -gt 100 ] || fail "$vol: the oracle wrote too little ($nwritten blocks)"
  ok "$vol: $rounds kill -9 rounds, $nwritten blocks checked, nothing durable lost, no checksum error, $ncols columns' replicas identical"
}

# cache_kill9_round ROUND SECONDS: the oracle writes to volume k (and
# flushes) while the server is killed with -9 after SECONDS; after a
# restart, every block it saw flushed must read back.
cache_kill9_round () {
  local round=$1 secs=$2 wpid dirty
  start_server
  $PY "$(dirname "$0")/oracle.py" "$(uri k)" "$T/state.json" write "$round" > "$T/w.log" 2>&1 &
  wpid=$!
  sleep "$secs"
  dirty=$(cache_field dirty)
  stop_server KILL
  wait $wpid 2>/dev/null || true
  start_server
  $PY "$(dirname "$0")/oracle.py" "$(uri k)" "$T/state.json" check 0 \
    || fail "round $round: flushed data lost after kill -9 (dirty at the kill: $dirty)"
  stop_server
}

# start_member I SIZE [ARGS...]: serve $T/d$I.img on $T/m$I.sock
# (created sparse if missing).  ARGS add nbdkit options (--filter=F) and
# filter parameters (key=value).
start_member () {
  local i=$1 size=$2 a; shift 2
  local -a opts=() params=()
  for a in "$@"; do
    case $a in -*) opts+=("$a");; *) params+=("$a");; esac
  done
  [ -f "$T/d$i.img" ] || truncate -s "$size" "$T/d$i.img"
  rm -f "$T/m$i.sock" "$T/m$i.pid"
  # In the foreground, as a child of the test: its messages (an error,
  # an assertion) reach $T/mI.err instead of /dev/null, and once it has
  # exited it is reaped, not left a zombie that kill -0 takes for a
  # running server (this machine's init does not reap).
  nbdkit -f -U "$T/m$i.sock" -P "$T/m$i.pid" "${opts[@]}" --filter=error \
    file "$T/d$i.img" error-file="$T/m$i.fail" error-rate=1 "${params[@]}" \
    2>>"$T/m$i.err" &
  disown $!
  MEMBER_ARGS[$i]="$size ${*@Q}"
  wait_socket "$T/m$i.sock"
  for _ in $(seq 50); do [ -s "$T/m$i.pid" ] && break; sleep 0.1; done
  members_cleanup
}
# Arguments each member was started with, to start it again.
declare -A MEMBER_ARGS=()

# revive_members: a member server that aborted on Debian 12's nbdkit
# 1.32 bug (server/connections.c: "raw_send_socket: Assertion `sock >=
# 0' failed", when a client's connection closes with replies still owed,
# as it does when strata is killed) is started again on the same image,
# as its host's service manager would.  That abort is nbdkit's, not
# strata's; left alone it would add a member failure that the test did
# not ask for.  A member gone for any other reason is left gone.
revive_members () {
  local p i
  compgen -G "$T/m*.pid" > /dev/null || return 0
  sleep 0.5			# the abort follows the close within ms
  for p in "$T"/m*.pid; do
    [ -f "$p" ] || continue
    i=$(basename "$p" .pid); i=${i#m}
    kill -0 "$(cat "$p")" 2>/dev/null && continue
    grep -q "raw_send_socket: Assertion" "$T/m$i.err" 2>/dev/null || continue
    echo "member m$i: its nbdkit aborted ($(grep -m1 "raw_send_socket: Assertion" "$T/m$i.err")); starting it again"
    cat "$T/m$i.err" >> "$T/m$i.err.old"
    rm -f "$T/m$i.err"
    eval "start_member $i ${MEMBER_ARGS[$i]}"
  done
}
# start_members N SIZE: members 0..N-1, except those already serving.
start_members () {
  local n=$1 size=$2
  for ((i=0; i<n; i++)); do
    [ -S "$T/m$i.sock" ] || start_member "$i" "$size"
  done
}
# Every member server ($T/m*.pid) is killed at exit, after strata.  Call
# after starting a member by hand; it registers the cleanup once.
members_cleanup () {
  [ -n "${_members_cleanup:-}" ] && return 0
  _members_cleanup=1
  on_exit "stop_server; for p in $T/m*.pid; do kill -9 \$(cat \$p) 2>/dev/null; done"
}
# wait_socket PATH: until a server listens there (5 s at most).
wait_socket () {
  for _ in $(seq 50); do [ -S "$1" ] && return 0; sleep 0.1; done
  fail "nothing is listening on $1"
}
# wait_log N PATTERN: until PATTERN (a grep regex) is in nbdkit.log N
# times, else fail.  70 s at most: a member away is tried at gaps that
# grow to 40 s and more.
wait_log () {
  for _ in $(seq 350); do
    [ "$(grep -c "$2" "$T/nbdkit.log" || true)" -ge "$1" ] && return 0
    sleep 0.2
  done
  fail "not $1 times in 70 s: $2; the log: $(grep "strata: pool" "$T/nbdkit.log" | tail -4)"
}

kill_member () { kill -9 "$(cat "$T/m$1.pid")"; rm -f "$T/m$1.pid"; }

make_pool () {
  make_config "$@"
  "$STRATA" init "$CONFIG" >/dev/null
  "$STRATA" apply "$CONFIG" >/dev/null
}

start_server () {
  rm -f "$SOCK"
  # Foreground in the background, so that its messages reach nbdkit.log.
  "${NBDKIT_ENV[@]}" nbdkit -f -U "$SOCK" -P "$PIDFILE" "$PLUGIN" \
    config="$CONFIG" "$@" 2>>"$T/nbdkit.log" &
  for _ in $(seq 100); do [ -S "$SOCK" ] && return 0; sleep 0.1; done
  fail "nbdkit did not start"
}

# stop_server [SIGNAL]: stop nbdkit and wait until it is gone (after a
# kill -9, start again any member server it made abort: revive_members).
stop_server () {
  local sig=${1:-TERM} pid
  [ -f "$PIDFILE" ] || return 0
  pid=$(cat "$PIDFILE")
  kill -"$sig" "$pid" 2>/dev/null || true
  # Give it 10 s to exit (an exited child is a zombie: that counts as
  # gone), then kill it, and reap it if it is our child.  Under
  # SANITIZE=1 nbdkit can hang at exit, in p11-kit's destructor, once any
  # strerror() ran: libasan, preloaded into a program not built with it,
  # initialises inside p11-kit's constructor (its first malloc, within
  # newlocale), and its dlerror() call there unbalances glibc's
  # __libc_setlocale_lock before main.  Nothing of strata's; the kill
  # loses no report, as ASan aborts at the error itself.
  for _ in $(seq 100); do
    case $(ps -o stat= -p "$pid" 2>/dev/null) in ""|Z*) break;; esac
    sleep 0.1
  done
  if ps -o stat= -p "$pid" 2>/dev/null | grep -v '^Z' >/dev/null; then
    echo "nbdkit (pid $pid) did not exit after SIG$sig; killing it" >&2
    kill -9 "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || true
  rm -f "$PIDFILE"
  [ "$sig" = KILL ] && revive_members
  return 0
}

uri () { echo "nbd+unix:///$1?socket=$SOCK"; }

# sha of a set of files (for "untouched" checks)
sums () { sha256sum "$@" | awk '{print $1}' | sha256sum | awk '{print $1}'; }

# compare_replicas: with the pool stopped, every allocated column's
# replicas hold the same bytes in the backing files ($T/dN.img, also for
# remote members); stale copies (missed writes, never read) are left
# out.  Prints the number of columns compared.
compare_replicas () {
  "$STRATA" status "$CONFIG" --json --map | $PY -c "
import json, sys
s = json.load(sys.stdin)
es = s['pool']['extent_size']
devs = {d['name']: d for d in s['devices']}
def extent(dev, ext):
    with open('$T/%s.img' % dev, 'rb') as f:
        f.seek(devs[dev]['data_offset'] + ext * es)
        return f.read(es)
n = 0
for v in s['volumes']:
    for ch in v['map']:
        for col, (names, exts) in enumerate(zip(ch['columns'], ch['extents'])):
            cur = [(nm, e) for r, (nm, e) in enumerate(zip(names, exts))
                   if not (ch['stale'][col] >> r) & 1]
            if not cur:
                continue
            first = extent(*cur[0])
            for name, ext in cur[1:]:
                if extent(name, ext) != first:
                    sys.exit('volume %s chunk %d column %d: %s and %s differ'
                             % (v['name'], ch['chunk'], col, cur[0][0], name))
            n += 1
print(n)"
}

# stale_copies: how many copies the journal says are stale.
stale_copies () {
  "$STRATA" status "$CONFIG" --json --map | $PY -c "
import json, sys
s = json.load(sys.stdin)
print(sum(bin(m).count('1') for v in s['volumes'] for ch in v['map'] for m in ch['stale']))"
}

# Stripe-unit patterns (set SU and NSU): unit i of a volume holds SU
# bytes of (i * 7 + SEED) % 251 + 1.
# su_fill VOL SEED: write every unit, then flush.
su_fill () {
  nbdsh -u "$(uri "$1")" -c "
for i in range($NSU):
    h.pwrite(bytes([(i * 7 + $2) % 251 + 1]) * $SU, i * $SU)
h.flush()"
}
# su_expect VOL LIST OLDSEED SEED: the units listed in the file LIST
# hold OLDSEED's pattern, every other one SEED's.
su_expect () {
  nbdsh -u "$(uri "$1")" -c "
old = set(map(int, open('$2').read().split()))
for i in range($NSU):
    seed = $3 if i in old else $4
    assert h.pread($SU, i * $SU) == bytes([(i * 7 + seed) % 251 + 1]) * $SU, \
        'stripe unit %d holds the wrong data' % i"
}

# csum_errors: the sum of checksum errors the serving process has found.
csum_errors () {
  "$STRATA" status "$CONFIG" --json | $PY -c "
import json, sys
print(sum(d['csum_errors'] for d in json.load(sys.stdin)['devices']))"
}

# copy_at VOLUME CHUNK COLUMN REPLICA: where that copy lives, as
# "device extent data_offset" (from status --json --map).
copy_at () {
  "$STRATA" status "$CONFIG" --json --map | $PY -c "
import json, sys
s = json.load(sys.stdin)
v = [v for v in s['volumes'] if v['name'] == '$1'][0]
ch = [c for c in v['map'] if c['chunk'] == $2][0]
dev = ch['columns'][$3][$4]
d = [d for d in s['devices'] if d['name'] == dev][0]
print(dev, ch['extents'][$3][$4], d['data_offset'])"
}

# poke FILE OFFSET HEXBYTES: overwrite bytes in place, behind strata's back.
# Fails if they are there already: the damage would be none.
poke () { $PY -c "
import os, sys
fd = os.open('$1', os.O_RDWR); new = bytes.fromhex('$3')
if os.pread(fd, len(new), $2) == new:
    sys.exit('poke: $1 already holds $3 at $2')
os.pwrite(fd, new, $2); os.close(fd)" || fail "poke did not change $1"; }

# flip FILE OFFSET: invert the bits of one byte in place (always a change,
# whatever the byte held; a fixed value is already there once in 256).
flip () { $PY -c "
import os
fd = os.open('$1', os.O_RDWR); b = os.pread(fd, 1, $2)
os.pwrite(fd, bytes([b[0] ^ 0xff]), $2); os.close(fd)"; }

# volume_field VOL FIELD: a field of volume VOL in status --json.
volume_field () {
  "$STRATA" status "$CONFIG" --json | $PY -c "
import json, sys
print([v for v in json.load(sys.stdin)['volumes'] if v['name'] == '$1'][0]['$2'])"
}

# device_field DEV FIELD: a field of device DEV in status --json.
device_field () {
  "$STRATA" status "$CONFIG" --json | $PY -c "
import json, sys
print([d for d in json.load(sys.stdin)['devices'] if d['name'] == '$1'][0]['$2'])"
}

# meta_wipe DEV: zero DEV's whole metadata area behind strata's back.  It
# starts at 1 MiB (FORMAT_META_OFFSET) and make_pool makes it 16 MiB.
# Direct and synced, so that a serving strata reads the zeros too.
meta_wipe () {
  dd if=/dev/zero of="$T/$1.img" bs=1M seek=1 count=16 conv=notrunc,fsync \
     oflag=direct status=none || fail "wiping $1's metadata area failed"
}

# meta_states: each metadata replica and its state, "d0:in-sync
# d1:lagging d2:damaged".
meta_states () {
  "$STRATA" status "$CONFIG" --json | $PY -c "
import json, sys
print(' '.join('%s:%s' % (r['device'], r['state'].replace(' ', '-'))
               for r in json.load(sys.stdin)['metadata_replicas']))"
}
