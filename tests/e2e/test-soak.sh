#!/usr/bin/env bash
# Soak (TESTING.md 22): an oracle writes to a 2-replica volume over four
# remote members, and the crash model (crashmodel.py) writes at any
# offset, trims and zeroes (whole chunks too) on another, while, round
# after round, one fault at a time hits the pool: kill -9 of strata, a
# member failing every request, a member's host killed and back, a
# member coming back slow (delay filter), one copy overwritten behind
# strata's back, a scrub and a rebuild each cut short by kill -9.  After
# every round both read everything back (nothing durable lost, nothing
# but real writes), the volume is healthy again, and a writer that saw
# no server crash saw no error.  At the end the replicas of every column
# compare equal and a scrub of the whole pool finds nothing.
#
# SOAK_ROUNDS (default 7: each fault once) and SOAK_SEED (default 1,
# so that `make check` runs the same faults each time; printed, so a
# failing run can be repeated) shape the run; `make soak` runs a long
# one with a random seed.
source "$(dirname "$0")/functions.sh"
requires nbdkit nbdsh
export STRATA_REMOTE=1

ROUNDS=${SOAK_ROUNDS:-7}
SEED=${SOAK_SEED:-1}
RANDOM=$SEED
echo "soak: $ROUNDS rounds, SOAK_SEED=$SEED"

# m's chunks are 8 MiB (2 columns of 4 MiB extents).
make_pool 4 512MiB "{ name: v, size: 128MiB, replicas: 2, stripe_width: 2, stripe_unit: 64KiB }" \
                   "{ name: m, size: 16MiB, replicas: 2, stripe_width: 2, stripe_unit: 16KiB }"
ORACLE="$(dirname "$0")/oracle.py"
MODEL="$(dirname "$0")/crashmodel.py"
STATE=$T/state.json
MSTATE=$T/model.json
start_server
# The members in the pool (a rebuilt one is replaced by a new one).
MEMBERS=(0 1 2 3)
NEXT=4
# pick_member: a member at random, in $i.
pick_member () { i=${MEMBERS[RANDOM % ${#MEMBERS[@]}]}; }
# pick_holder: a member holding a copy of v, at random, in $i (a member
# that replaced a rebuilt one may hold none: the rebuild placed the
# copies elsewhere and nothing moves them).
pick_holder () {
  i=$("$STRATA" status "$CONFIG" --json --map | $PY -c "
import json, sys
v = [v for v in json.load(sys.stdin)['volumes'] if v['name'] == 'v'][0]
devs = sorted({d for ch in v['map'] for col in ch['columns'] for d in col})
print(devs[$RANDOM % len(devs)][1:])")
}

# writer_start: the oracle writes to v and the model to m in the
# background (pids in $wpid and $mpid).
writer_start () {
  rm -f "$STATE.stop" "$MSTATE.stop"
  $PY "$ORACLE" "$(uri v)" "$STATE" write "$RANDOM" > "$T/w.log" 2>&1 &
  wpid=$!
  $PY "$MODEL" "$(uri m)" run "$MSTATE" "$RANDOM" $((8 << 20)) > "$T/m.log" 2>&1 &
  mpid=$!
}
# writer_stop: stop them between two requests; they must have seen no
# error.
writer_stop () {
  touch "$STATE.stop" "$MSTATE.stop"
  wait "$wpid" || { cat "$T/w.log"; fail "round $round ($what): a client write failed"; }
  wait "$mpid" || { cat "$T/m.log"; fail "round $round ($what): a request of the model failed"; }
}
# writer_lost: the server was killed under the writers; they end with an
# error, which is expected (the model with status 3; anything else is a
# wrong read before the kill).
writer_lost () {
  wait "$wpid" 2>/dev/null || true
  wait "$mpid" && fail "round $round ($what): the model did not notice the kill"
  [ $? = 3 ] || { cat "$T/m.log"; fail "round $round ($what): the model read wrong data"; }
}

# check_round: every block the oracle wrote reads back right, every
# byte of m holds what the model allows, and the volumes are healthy
# with no stale copy.
check_round () {
  $PY "$ORACLE" "$(uri v)" "$STATE" check 0 \
    || fail "round $round ($what): durable data lost or garbage"
  $PY "$MODEL" "$(uri m)" check "$MSTATE" > "$T/mc.log" 2>&1 \
    || { cat "$T/mc.log"; fail "round $round ($what): m: durable data lost or garbage"; }
  for vol in v m; do
    [ "$(volume_field $vol health)" = healthy ] \
      || fail "round $round ($what): $vol is '$(volume_field $vol health)' afterwards"
  done
  [ "$(stale_copies)" = 0 ] || fail "round $round ($what): $(stale_copies) stale copies left"
}

# wait_state DEV STATE: until DEV is in STATE (20 s at most).
wait_state () {
  for _ in $(seq 100); do
    [ "$(device_field "$1" state)" = "$2" ] && return 0
    sleep 0.2
  done
  fail "round $round ($what): $1 is $(device_field "$1" state), not $2"
}

# wait_job JOB: until the scrub or rebuild JOB runs and has done
# something (30 s at most).
wait_job () {
  local st d
  for _ in $(seq 150); do
    read -r st d < <("$STRATA" status "$CONFIG" --json | $PY -c "
import json, sys
j = json.load(sys.stdin)['jobs']['$1']
print(j['state'], j['done'])")
    [ "$st" = running ] && [ "$d" -gt 0 ] && return 0
    sleep 0.2
  done
  fail "round $round ($what): the $1 made no progress ($st, $d)"
}

# bring_back I [ARGS...]: member I's server up again (ARGS as for
# start_member), and the member back in the pool.
bring_back () {
  local i=$1; shift
  start_member "$i" 512MiB "$@"
  "$STRATA" device add "$CONFIG" "d$i" > "$T/add.out" 2>&1 \
    || { cat "$T/add.out"; fail "round $round ($what): device add d$i failed"; }
}

# One fault per round.
fault_kill9 () {
  sleep "$(( RANDOM % 3 )).$(( RANDOM % 10 ))"
  stop_server KILL
  writer_lost
  start_server
}

fault_member_errors () {
  local i; pick_holder
  touch "$T/m$i.fail"
  wait_state "d$i" failed
  sleep 1			# writes go on, degraded
  writer_stop
  rm -f "$T/m$i.fail"
  "$STRATA" device add "$CONFIG" "d$i" > "$T/add.out" 2>&1 \
    || { cat "$T/add.out"; fail "round $round ($what): device add d$i failed"; }
  what+=" d$i"
}

fault_member_lost () {
  local i; pick_member
  kill_member "$i"
  sleep 2
  writer_stop
  bring_back "$i"
  what+=" d$i"
}

fault_member_slow () {
  local i; pick_member
  kill_member "$i"
  sleep 1
  # It stays slow until a later round restarts it.
  bring_back "$i" --filter=delay delay-read=2ms delay-write=5ms
  sleep 2
  writer_stop
  what+=" d$i"
}

fault_corrupt () {
  local c col r dev ext data blk pick=$RANDOM
  sleep 1
  # A copy of a column of an allocated chunk, chosen at random.
  c=$("$STRATA" status "$CONFIG" --json --map | $PY -c "
import json, sys
v = [v for v in json.load(sys.stdin)['volumes'] if v['name'] == 'v'][0]
print(v['map'][$pick % len(v['map'])]['chunk'])")
  col=$(( RANDOM % 2 )) r=$(( RANDOM % 2 ))
  read -r dev ext data < <(copy_at v "$c" "$col" "$r")
  [ -n "$dev" ] || fail "round $round ($what): no copy of chunk $c column $col"
  blk=$(( RANDOM % 1024 ))
  head -c 4096 /dev/urandom \
    | dd of="$T/$dev.img" bs=4096 seek=$(( (data + ext * (4 << 20)) / 4096 + blk )) \
         conv=notrunc 2>/dev/null
  writer_stop
  # The writer may have written the block again since; if not, scrub
  # finds it, on that copy alone, and repairs it.
  "$STRATA" scrub "$CONFIG" v --repair --json > "$T/s.json" 2> "$T/s.err" \
    || { cat "$T/s.err" "$T/s.json"; fail "round $round ($what): scrub --repair failed"; }
  $PY - "$T/s.json" "$dev" "$ext" <<'END_OF_PY' || fail "round $round ($what): scrub report $(cat "$T/s.json")"
import json, sys
r = json.load(open(sys.argv[1]))
for f in r["findings"]:
    assert f["device"] == sys.argv[2] and f["extent"] == int(sys.argv[3]), f
    assert f["repaired"], f
assert r["errors"] == r["repaired"] == len(r["findings"]) and r["errors"] <= 1, r
END_OF_PY
  "$STRATA" scrub "$CONFIG" v --json > "$T/s2.json" 2>&1 \
    || fail "round $round ($what): the scrub after the repair: $(cat "$T/s2.json")"
  what+=" $dev extent $ext block $blk, $($PY -c "import json; print(json.load(open('$T/s.json'))['errors'])") found"
}

fault_scrub_killed () {
  "$STRATA" scrub "$CONFIG" --restart --rate 8 > "$T/s.out" 2>&1 &
  local spid=$!
  wait_job scrub
  stop_server KILL
  wait "$spid" 2>/dev/null || true
  writer_lost
  start_server
  "$STRATA" scrub "$CONFIG" --rate 0 --json > "$T/s.json" 2> "$T/s.err" \
    || { cat "$T/s.err"; fail "round $round ($what): the resumed scrub failed"; }
  grep -q "continuing the scrub interrupted" "$T/s.err" \
    || fail "round $round ($what): the scrub started over: $(cat "$T/s.err")"
  $PY -c "
import json
r = json.load(open('$T/s.json'))
assert r['resumed'] and r['state'] == 'finished' and r['errors'] == 0, r" \
    || fail "round $round ($what): resumed scrub: $(cat "$T/s.json")"
}

fault_rebuild_killed () {
  local i k rpid n=$NEXT
  pick_holder
  "$STRATA" device fail "$CONFIG" "d$i" > /dev/null
  sleep 1			# writes go on, degraded
  "$STRATA" rebuild "$CONFIG" --rate 8 > "$T/rb.out" 2>&1 &
  rpid=$!
  wait_job rebuild
  stop_server KILL
  wait "$rpid" 2>/dev/null || true
  writer_lost
  start_server
  "$STRATA" rebuild "$CONFIG" --rate 0 --json > "$T/rb.json" 2> "$T/rb.err" \
    || { cat "$T/rb.err" "$T/rb.json"; fail "round $round ($what): the resumed rebuild failed"; }
  grep -q "continuing the rebuild interrupted" "$T/rb.err" \
    || fail "round $round ($what): the rebuild started over: $(cat "$T/rb.err")"
  # d$i holds no copy now: it has been replaced.  Its host gets a new
  # disk, which joins as a new member.
  [ "$(device_field "d$i" state)" = removed ] \
    || fail "round $round ($what): d$i is $(device_field "d$i" state) after the rebuild"
  kill_member "$i"
  rm -f "$T/d$i.img"
  start_member "$n" 512MiB
  sed -i "/^volumes:/i\\  - { name: d$n, uri: \"nbd+unix:///?socket=$T/m$n.sock\", domain: host$n }" "$CONFIG"
  "$STRATA" device add "$CONFIG" "d$n" > "$T/add.out" 2>&1 \
    || { cat "$T/add.out"; fail "round $round ($what): device add d$n failed"; }
  for k in "${!MEMBERS[@]}"; do [ "${MEMBERS[k]}" = "$i" ] && MEMBERS[k]=$n; done
  NEXT=$(( n + 1 ))
  what+=" d$i, replaced by d$n"
}

FAULTS=(kill9 member_errors member_lost member_slow corrupt scrub_killed rebuild_killed)
# Each fault once per ${#FAULTS[@]} rounds, in a random order.
order=()
for round in $(seq "$ROUNDS"); do
  if [ ${#order[@]} = 0 ]; then
    order=($(printf '%s\n' "${FAULTS[@]}" | shuf --random-source=<(yes "$SEED$round")))
  fi
  what=${order[0]}
  order=("${order[@]:1}")
  writer_start
  sleep "0.$(( RANDOM % 9 + 1 ))"
  "fault_$what"
  check_round
  ok "round $round: $what"
done

# The end: writes still read back, the copies agree, and a full scrub is
# clean.
writer_start
sleep 2
writer_stop
check_round
stop_server
ncols=$(compare_replicas) || fail "replicas differ after the soak"
start_server
"$STRATA" scrub "$CONFIG" --json > "$T/s.json" 2>&1 || fail "final scrub: $(cat "$T/s.json")"
$PY -c "
import json
r = json.load(open('$T/s.json'))
assert r['errors'] == 0 and r['blocks'] > 0, r
print(r['blocks'], 'blocks scrubbed')" || fail "the final scrub found something: $(cat "$T/s.json")"
nwritten=$($PY -c "import json; print(len(json.load(open('$STATE'))['written']))")
ok "$ROUNDS rounds (SOAK_SEED=$SEED): $nwritten blocks checked after each; $ncols columns' replicas equal; the final scrub is clean"
