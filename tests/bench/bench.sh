#!/usr/bin/env bash
# make bench: fio through strata beside `nbdkit file` on one backing file
# and beside raw fio (io_uring, O_DIRECT) on a backing file, in one run, on
# the same storage, and the same pool again with io: buffered (the page
# cache, as nbdkit file uses it).  Prints a table with ratios.
#
# RUNTIME=seconds per measured job (after a 2 s ramp), ROUNDS=how many
# times each job runs; the table shows the median.  SECTIONS picks the
# tables: "local remote integrity cache" (the default) or a subset.  The three targets take
# turns going first in each round, and every job starts after `sync`, so
# that no target pays for another's page-cache writeback.
set -euo pipefail
export PATH=/usr/bin:/usr/sbin:/bin:/sbin:$PATH
TOP=$(cd "$(dirname "$0")/../.." && pwd)
STRATA=$TOP/build/strata
RUNTIME=${RUNTIME:-6}
ROUNDS=${ROUNDS:-3}
SECTIONS=${SECTIONS:-local remote integrity cache}
want () { case " $SECTIONS " in *" $1 "*) return 0;; esac; return 1; }
D=$(mktemp -d /var/tmp/strata-bench.XXXXXX)
trap 'for p in "$D"/*.pid; do [ -f "$p" ] && kill "$(cat "$p")" 2>/dev/null; done; sleep 0.5; rm -rf "$D"' EXIT

cat > "$D/pool.yaml" <<YAML
pool: { name: bench, extent_size: 4MiB, metadata_size: 16MiB, control_socket: $D/c.sock }
devices:
  - { name: d0, path: $D/d0.img, size: 3GiB }
  - { name: d1, path: $D/d1.img, size: 3GiB }
  - { name: d2, path: $D/d2.img, size: 3GiB }
  - { name: d3, path: $D/d3.img, size: 3GiB }
volumes:
  - { name: s1, size: 2GiB, stripe_width: 4, stripe_unit: 1MiB }
  - { name: m2, size: 2GiB, replicas: 2 }
YAML
"$STRATA" init "$D/pool.yaml" >/dev/null
"$STRATA" apply "$D/pool.yaml" >/dev/null

# The same pool on its own four files with io: buffered (the page cache
# for reads and writes, as nbdkit file uses it): the like-for-like
# column beside nbdkit file.
sed "s/name: bench,/name: bbench,/; s|c.sock|bc.sock|; s|/d\([0-3]\).img, size: 3GiB|/b\1.img, size: 3GiB, io: buffered|" \
  "$D/pool.yaml" > "$D/bpool.yaml"
"$STRATA" init "$D/bpool.yaml" >/dev/null
"$STRATA" apply "$D/bpool.yaml" >/dev/null

# The remote case: the same striped volume over 4 remote members, each an
# nbdkit file server on its own unix socket.
cat > "$D/remote.yaml" <<YAML
pool: { name: rbench, extent_size: 4MiB, metadata_size: 16MiB, control_socket: $D/rc.sock }
devices:
YAML
for i in 0 1 2 3; do
  truncate -s 3G "$D/m$i.img"
  nbdkit -U "$D/m$i.sock" -P "$D/m$i.pid" file "$D/m$i.img"
  echo "  - { name: m$i, uri: \"nbd+unix:///?socket=$D/m$i.sock\", domain: host$i }" >> "$D/remote.yaml"
done
cat >> "$D/remote.yaml" <<YAML
volumes:
  - { name: s1, size: 2GiB, stripe_width: 4, stripe_unit: 1MiB }
YAML
sleep 0.5
"$STRATA" init "$D/remote.yaml" >/dev/null
"$STRATA" apply "$D/remote.yaml" >/dev/null
truncate -s 2G "$D/file.img"
truncate -s 2G "$D/raw.img"

nbdkit -U "$D/strata.sock" -P "$D/strata.pid" "$TOP/build/nbdkit-strata-plugin.so" config="$D/pool.yaml"
nbdkit -U "$D/bstrata.sock" -P "$D/bstrata.pid" "$TOP/build/nbdkit-strata-plugin.so" config="$D/bpool.yaml"
nbdkit -U "$D/file.sock" -P "$D/file.pid" file "$D/file.img"
nbdkit -U "$D/rstrata.sock" -P "$D/rstrata.pid" "$TOP/build/nbdkit-strata-plugin.so" config="$D/remote.yaml"
# nbdkit's own NBD proxy in front of m0: one more hop, as strata adds,
# with nothing else, to show what that hop costs on this machine.
nbdkit -U "$D/proxy.sock" -P "$D/proxy.pid" nbd socket="$D/m0.sock"
sleep 1

# fio_job NAME TARGET-ARGS... ; prints "bw_MBps iops"
fio_job () {
  local rw=$1 bs=$2 f; shift 2
  sync
  # Before a write job every backing file leaves the page cache, so that
  # a target writing through it (nbdkit file, io: buffered) starts from
  # the same state whatever ran before.  On Linux 6.18 ext4 caches a file
  # written in 1 MiB pieces in large folios, and a 4 KiB write into one
  # then walks all its blocks under the inode lock: measured here,
  # nbdkit file 4k randwrite 19k IOPS after the fill, 152k after an evict.
  if [[ $rw == *write ]]; then
    for f in "$D"/*.img; do dd if="$f" iflag=nocache count=0 status=none; done
  fi
  fio --name=b --rw="$rw" --bs="$bs" --iodepth=32 --size=1G --runtime="$RUNTIME" \
      --ramp_time=2 --time_based --numjobs=1 --output-format=json "$@" 2>/dev/null \
    | /usr/bin/python3 -c '
import json, sys
t = sys.stdin.read()
j = json.loads(t[t.index("{"):])["jobs"][0]
r, w = j["read"], j["write"]
bw = (r["bw_bytes"] + w["bw_bytes"]) / 1e6
iops = r["iops"] + w["iops"]
print("%.0f %.0f" % (bw, iops))'
}
nbd () { echo --ioengine=nbd --uri="nbd+unix:///$1?socket=$2"; }
raw () { echo --ioengine=io_uring --direct=1 --filename="$1"; }

# Fill the first GiB of every target before reading it.
if want local || want remote || want integrity; then
for t in "$(nbd s1 "$D/strata.sock")" "$(nbd m2 "$D/strata.sock")" "$(nbd "" "$D/file.sock")" "$(raw "$D/raw.img")" "$(nbd s1 "$D/rstrata.sock")" \
         "$(nbd s1 "$D/bstrata.sock")" "$(nbd m2 "$D/bstrata.sock")"; do
  # shellcheck disable=SC2086
  fio --name=fill --rw=write --bs=1M --iodepth=16 --size=1G $t >/dev/null 2>&1
done
fi

want local && printf '\n%-22s %12s %12s %12s %10s %10s | %10s %10s\n' "job" "strata" "nbdkit-file" "raw-fio" "vs file" "vs raw" "buffered" "vs file"
median () { sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
row () {  # row LABEL UNIT(bw|iops) RW BS VOLUME
  local label=$1 unit=$2 rw=$3 bs=$4 vol=$5 col i k t s f r b
  local -a args res
  col=$([ "$unit" = bw ] && echo 1 || echo 2)
  args=("$(nbd "$vol" "$D/strata.sock")" "$(nbd "" "$D/file.sock")" "$(raw "$D/raw.img")"
        "$(nbd "$vol" "$D/bstrata.sock")")
  res=("" "" "" "")
  for ((i = 0; i < ROUNDS; i++)); do
    for ((k = 0; k < 4; k++)); do
      t=$(( (i + k) % 4 ))
      # shellcheck disable=SC2086
      res[t]+="$(fio_job "$rw" "$bs" ${args[t]} | cut -d' ' -f$col)"$'\n'
    done
  done
  s=$(printf '%s' "${res[0]}" | median)
  f=$(printf '%s' "${res[1]}" | median)
  r=$(printf '%s' "${res[2]}" | median)
  b=$(printf '%s' "${res[3]}" | median)
  printf '%-22s %12s %12s %12s %9.2fx %9.2fx | %10s %9.2fx\n' "$label" "$s" "$f" "$r" \
    "$(echo "$s / $f" | bc -l)" "$(echo "$s / $r" | bc -l)" "$b" "$(echo "$b / $f" | bc -l)"
}
if want local; then
row "s1 seq write MB/s" bw write 1M s1
row "s1 seq read MB/s" bw read 1M s1
row "s1 4k randread IOPS" iops randread 4k s1
row "s1 4k randwrite IOPS" iops randwrite 4k s1
row "m2 seq write MB/s" bw write 1M m2
fi

# pair LABEL UNIT RW BS "A args" "B args": A beside B, median of ROUNDS.
pair () {
  local label=$1 unit=$2 rw=$3 bs=$4 col i a b
  local -a args=("$5" "$6") res=("" "")
  col=$([ "$unit" = bw ] && echo 1 || echo 2)
  for ((i = 0; i < ROUNDS; i++)); do
    for k in $((i % 2)) $(((i + 1) % 2)); do
      # shellcheck disable=SC2086
      res[k]+="$(fio_job "$rw" "$bs" ${args[k]} | cut -d' ' -f$col)"$'\n'
    done
  done
  a=$(printf '%s' "${res[0]}" | median)
  b=$(printf '%s' "${res[1]}" | median)
  printf '%-22s %12s %12s %9.2fx\n' "$label" "$a" "$b" "$(echo "$a / $b" | bc -l)"
}
if want remote; then
printf '\n%-22s %12s %12s %10s\n' "remote job" "remote" "local" "ratio"
pair "s1 seq write MB/s" bw write 1M "$(nbd s1 "$D/rstrata.sock")" "$(nbd s1 "$D/strata.sock")"
pair "s1 seq read MB/s" bw read 1M "$(nbd s1 "$D/rstrata.sock")" "$(nbd s1 "$D/strata.sock")"
printf '%-22s %12s %12s %10s\n' "" "remote" "one member" "ratio"
pair "s1 4k randread IOPS" iops randread 4k "$(nbd s1 "$D/rstrata.sock")" "$(nbd "" "$D/m0.sock")"
printf '%-22s %12s %12s %10s\n' "" "nbd proxy" "one member" "ratio"
pair "4k randread IOPS" iops randread 4k "$(nbd "" "$D/proxy.sock")" "$(nbd "" "$D/m0.sock")"
fi

# Integrity (issue 4): scrub and rebuild of m2 (1 GiB written, 2 copies)
# unthrottled, beside raw fio sequential read of the same storage; and
# client 4k random reads on m2 while a rebuild runs at the default rate,
# beside the same reads with none.
if want integrity; then
jobrate () {  # jobrate JSON: "copied-or-checked MB/s  device MB/s"
  /usr/bin/python3 -c '
import json, sys
r = json.load(open(sys.argv[1]))
data = r["bytes"] if r["job"] == "rebuild" else r["blocks"] * 4096
secs = r["seconds"] if r["job"] == "rebuild" else r["run"]["seconds"]
dev = r["device_bytes"] if r["job"] == "rebuild" else r["run"]["device_bytes"]
print("%.0f %.0f" % (data / secs / 1e6, dev / secs / 1e6))' "$1"
}
# A rebuild reads every byte it copies and writes it to the same disk, so
# beside raw sequential read it is also shown beside the best a copy can
# do here: fio reading 1 GiB of one file while it writes 1 GiB to a new
# sparse one (as the devices are), the time of the slower of the two.
rawcopy () {
  rm -f "$D/copy.img"
  truncate -s 2G "$D/copy.img"
  sync
  fio --ioengine=io_uring --direct=1 --bs=1M --iodepth=16 --size=1G \
      --output-format=json --name=r --rw=read --filename="$D/raw.img" \
      --name=w --rw=write --filename="$D/copy.img" 2>/dev/null \
    | /usr/bin/python3 -c '
import json, sys
t = sys.stdin.read()
j = json.loads(t[t.index("{"):])["jobs"]
print("%.0f" % (2**30 / (max(x["job_runtime"] for x in j) / 1000) / 1e6))'
  rm -f "$D/copy.img"
}
rawread=""
rawcopies=""
scrubs=""
for ((i = 0; i < ROUNDS; i++)); do
  rawread+="$(fio_job read 1M $(raw "$D/raw.img") | cut -d' ' -f1)"$'\n'
  rawcopies+="$(rawcopy)"$'\n'
  sync
  "$STRATA" scrub "$D/pool.yaml" m2 --restart --rate 0 --json > "$D/scrub.json"
  scrubs+="$(jobrate "$D/scrub.json" | cut -d' ' -f1)"$'\n'
done
rr=$(printf '%s' "$rawread" | median)
rc=$(printf '%s' "$rawcopies" | median)
sc=$(printf '%s' "$scrubs" | median)
printf '\n%-26s %12s %12s %10s\n' "integrity job" "strata" "raw-fio" "ratio"
printf '%-26s %12s %12s %9.2fx\n' "scrub MB/s (unthrottled)" "$sc" "$rr" "$(echo "$sc / $rr" | bc -l)"

# io: auto reads through the page cache, and a replicated volume's reads
# take turns over its copies, so a warm-up run by fio leaves part of m2
# cold; during the rebuild the reads of d3's copies go to the other copy,
# which the baseline has warmed.  So the device files are read into the
# page cache first: both runs then start from the same, steady state.
cat "$D"/d[0-3].img > /dev/null
fio_job randread 4k $(nbd m2 "$D/strata.sock") >/dev/null
base=$(fio_job randread 4k $(nbd m2 "$D/strata.sock") | cut -d' ' -f2)
"$STRATA" device fail "$D/pool.yaml" d3 >/dev/null
"$STRATA" rebuild "$D/pool.yaml" --json > "$D/rb1.json" 2>/dev/null &
rb=$!
during=$(fio_job randread 4k $(nbd m2 "$D/strata.sock") | cut -d' ' -f2)
still=$(kill -0 $rb 2>/dev/null && echo yes || echo no)
wait $rb || true	# s1 (1 replica) has columns on d3 that cannot be rebuilt
read -r rb1 rb1dev < <(jobrate "$D/rb1.json")
printf '%-26s %12s %12s %9.2fx\n' "4k randread IOPS, rebuild" "$during" "$base" "$(echo "$during / $base" | bc -l)"
echo "  (rebuild at the default rate: $rb1 MB/s copied; still running when fio ended: $still)"

# Out of the page cache again: O_DIRECT writes to cached ranges (the
# rebuild's, to new extents) would pay for dropping the pages first.
sync
for f in "$D"/d[0-3].img; do dd if="$f" iflag=nocache count=0 status=none; done
"$STRATA" device fail "$D/pool.yaml" d2 >/dev/null
"$STRATA" rebuild "$D/pool.yaml" --rate 0 --json > "$D/rb2.json" 2>/dev/null || true
read -r rb2 rb2dev < <(jobrate "$D/rb2.json")
printf '%-26s %12s %12s %9.2fx\n' "rebuild MB/s (unthrottled)" "$rb2" "$rr" "$(echo "$rb2 / $rr" | bc -l)"
printf '%-26s %12s %12s %9.2fx\n' "rebuild vs raw copy MB/s" "$rb2" "$rc" "$(echo "$rb2 / $rc" | bc -l)"
echo "  (rebuild device I/O, reads and writes: $rb2dev MB/s; raw copy: fio"
echo "   reading one file while writing another, as much as the slower moved)"
fi

# The cache (issue 5): an "HDD" pool whose two members are files served
# by nbdkit with the delay filter (5 ms per write, 2 ms per read) and the
# noparallel filter (one request at a time, like one disk head), behind a
# write-back cache on a local file (the "SSD").  Volume wb writes back,
# nc (the same shape) has mode none; so is the same volume on a pool of
# one local file and no cache.  All three are filled first and the
# cache drained, so the 1 MiB reads are of destaged data; they run before
# any random write.  The 4k random writes cover 64 MiB (a checkpoint
# burst), wb last, so that its write-back traffic slows no other target.
if want cache; then
cat > "$D/hdd.yaml" <<YAML
pool: { name: hbench, extent_size: 4MiB, metadata_size: 16MiB, metadata_replicas: 1, control_socket: $D/hc.sock }
devices:
YAML
for i in 0 1; do
  truncate -s 3G "$D/h$i.img"
  nbdkit -U "$D/h$i.sock" -P "$D/h$i.pid" --filter=noparallel --filter=delay \
    file "$D/h$i.img" serialize=all-requests delay-write=5ms delay-read=2ms
  echo "  - { name: h$i, uri: \"nbd+unix:///?socket=$D/h$i.sock\", domain: host$i }" >> "$D/hdd.yaml"
done
cat >> "$D/hdd.yaml" <<YAML
  - { name: ssd, path: $D/ssd.img, size: 2GiB }
cache: { mode: writeback, devices: [ssd] }
volumes:
  - { name: wb, size: 1GiB, replicas: 2 }
  - { name: nc, size: 1GiB, replicas: 2, cache: none }
YAML
cat > "$D/ssdonly.yaml" <<YAML
pool: { name: sbench, extent_size: 4MiB, metadata_size: 16MiB, metadata_replicas: 1, control_socket: $D/sc.sock }
devices:
  - { name: s0, path: $D/s0.img, size: 2GiB }
volumes:
  - { name: so, size: 1GiB }
YAML
sleep 0.5
for y in hdd ssdonly; do
  "$STRATA" init "$D/$y.yaml" >/dev/null
  "$STRATA" apply "$D/$y.yaml" >/dev/null
  nbdkit -U "$D/$y.sock" -P "$D/$y.pid" "$TOP/build/nbdkit-strata-plugin.so" config="$D/$y.yaml"
done
sleep 1
for t in "$(nbd wb "$D/hdd.sock")" "$(nbd nc "$D/hdd.sock")" "$(nbd so "$D/ssdonly.sock")"; do
  # shellcheck disable=SC2086
  fio --name=fill --rw=write --bs=1M --iodepth=16 --size=1G $t >/dev/null 2>&1
done
"$STRATA" cache flush "$D/hdd.yaml" >/dev/null
# rowof RW BS TARGET-ARGS [FIO-ARGS]: the median of ROUNDS runs.
rowof () {
  local rw=$1 bs=$2 col res="" i
  col=$([ "$bs" = 4k ] && echo 2 || echo 1)
  for ((i = 0; i < ROUNDS; i++)); do
    # shellcheck disable=SC2086
    res+="$(fio_job "$rw" "$bs" $3 ${4:-} | cut -d' ' -f$col)"$'\n'
  done
  printf '%s' "$res" | median
}
rwb=$(rowof read 1M "$(nbd wb "$D/hdd.sock")")
rnc=$(rowof read 1M "$(nbd nc "$D/hdd.sock")")
wnc=$(rowof randwrite 4k "$(nbd nc "$D/hdd.sock")" --size=64M)
wso=$(rowof randwrite 4k "$(nbd so "$D/ssdonly.sock")" --size=64M)
wwb=$(rowof randwrite 4k "$(nbd wb "$D/hdd.sock")" --size=64M)
printf '\n%-26s %12s %12s %10s\n' "cache job" "writeback" "other" "ratio"
printf '%-26s %12s %12s %9.2fx\n' "4k randwrite IOPS vs none" "$wwb" "$wnc" "$(echo "$wwb / $wnc" | bc -l)"
printf '%-26s %12s %12s %9.2fx\n' "4k randwrite IOPS vs SSD" "$wwb" "$wso" "$(echo "$wwb / $wso" | bc -l)"
printf '%-26s %12s %12s %9.2fx\n' "1M seq read MB/s vs none" "$rwb" "$rnc" "$(echo "$rwb / $rnc" | bc -l)"
"$STRATA" status "$D/hdd.yaml" | grep '^cache:' | sed 's/^/  (after: /; s/$/)/'
fi
echo
echo "s1: 1 replica striped over 4 devices; m2: 2 replicas.  Depth 32; median of"
echo "$ROUNDS runs of ${RUNTIME}s (after a 2s ramp) per cell.  \"buffered\" is the same"
echo "pool with io: buffered (the page cache, as nbdkit file uses it) instead of"
echo "the default io: auto (O_DIRECT writes); the targets are for the default."
echo "Write jobs start with every backing file out of the page cache, so that"
echo "nbdkit file's 4k writes are not slowed by large folios a 1M fill left."
echo "Targets (issue 2): s1 >= 1.0x file on 1M seq read/write, >= 0.9x on 4k randread,"
echo ">= 2x on 4k randwrite; m2 seq write >= 0.45x raw seq write."
echo "Remote (issue 3): s1 over 4 remote members (nbdkit file on unix sockets)"
echo ">= 0.8x the local s1 on 1M seq read/write, >= 1.0x fio straight to one"
echo "member on 4k randread.  \"nbd proxy\" is nbdkit's nbd plugin in front of"
echo "that member: the cost of one more NBD hop alone, for reference."
echo "Integrity (issue 4): scrub and rebuild >= 0.7x raw seq read unthrottled;"
echo "clients keep >= 0.5x their 4k randread IOPS during a default-rate rebuild."
echo "Cache (issue 5): over HDD members (5 ms writes, 2 ms reads, one at a time),"
echo "write-back 4k randwrite >= 20x mode none and >= 0.7x a volume on the SSD file"
echo "alone; 1M seq reads of destaged data >= 1.0x mode none."
echo "Unix socket send buffers (net.core.wmem_default): $(cat /proc/sys/net/core/wmem_default) bytes;"
echo "1M sequential rows depend on it (nbdkit-strata-plugin(1))."
