#!/usr/bin/env bash
# make demo: create the demo pool, serve it, attach a volume as a disk,
# make ext4 on it, write and read back files, show the status, clean up.
set -euo pipefail
export PATH=/usr/bin:/usr/sbin:/bin:/sbin:$PATH
TOP=$(cd "$(dirname "$0")/../.." && pwd)
STRATA=$TOP/build/strata
CONFIG=$TOP/etc/strata/demo.yaml
DIR=/var/tmp/strata-demo
SOCK=$DIR/demo.nbd
MNT=$DIR/mnt
FUSE=$DIR/fuse
LOOP=
NBDDEV=

step () { printf '\n==> %s\n' "$*"; }
cleanup () {
  set +e
  mountpoint -q "$MNT" && umount "$MNT"
  [ -n "$LOOP" ] && losetup -d "$LOOP"
  [ -n "$NBDDEV" ] && nbd-client -d "$NBDDEV" >/dev/null 2>&1
  mountpoint -q "$FUSE" && fusermount3 -u "$FUSE"
  [ -f "$DIR/nbdkit.pid" ] && kill "$(cat "$DIR/nbdkit.pid")" 2>/dev/null
  sleep 0.5
  rm -rf "$DIR"
}
trap cleanup EXIT

cleanup; mkdir -p "$DIR"
step "strata init $CONFIG"
"$STRATA" init "$CONFIG"
step "strata apply (creates the declared volumes)"
"$STRATA" apply "$CONFIG"

step "serving the pool with nbdkit (strata serve runs the same in the foreground)"
nbdkit -U "$SOCK" -P "$DIR/nbdkit.pid" "$TOP/build/nbdkit-strata-plugin.so" config="$CONFIG"
for _ in $(seq 50); do [ -S "$SOCK" ] && break; sleep 0.1; done
nbdinfo --list "nbd+unix:///?socket=$SOCK" | grep -E '^export=|export-size'

step "attaching volume 'data' (2 replicas, striped over 2 columns) as a disk"
mkdir -p "$MNT" "$FUSE"
if [ -e /dev/nbd0 ] && command -v nbd-client >/dev/null; then
  nbd-client -unix "$SOCK" -N data /dev/nbd0 >/dev/null
  NBDDEV=/dev/nbd0; DISK=/dev/nbd0
else
  nbdfuse "$FUSE/disk" "nbd+unix:///data?socket=$SOCK" &
  for _ in $(seq 50); do [ -e "$FUSE/disk" ] && break; sleep 0.1; done
  LOOP=$(losetup -f --show "$FUSE/disk"); DISK=$LOOP
  echo "no kernel NBD module here: nbdfuse + losetup gave $DISK"
fi

step "mkfs.ext4 $DISK, mount, write files"
mkfs.ext4 -q -F "$DISK"
mount "$DISK" "$MNT"
mkdir -p "$MNT/checkpoints"
for i in 1 2 3 4; do head -c 16M /dev/urandom > "$MNT/checkpoints/step-$i.bin"; done
cp -r "$TOP/lib" "$MNT/source"
(cd "$MNT" && find . -type f -print0 | sort -z | xargs -0 sha256sum) > "$DIR/sums"
echo "wrote $(wc -l < "$DIR/sums") files"
umount "$MNT"
fsck.ext4 -fn "$DISK" > /dev/null && echo "fsck.ext4 -fn: clean"

step "remount and read every file back"
mount "$DISK" "$MNT"
(cd "$MNT" && sha256sum --quiet -c "$DIR/sums") && echo "all $(wc -l < "$DIR/sums") files read back with matching checksums"
df -h "$MNT" | tail -n 1
umount "$MNT"

step "strata status (through the control socket of the serving process)"
"$STRATA" status "$CONFIG"
echo
echo "demo finished; cleaning up"
