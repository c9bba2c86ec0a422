#!/usr/bin/env bash
# Attach a volume as a disk (nbdfuse + losetup), make ext4, write a tree
# of files, fsck -fn clean, remount and compare checksums.  With a kernel
# NBD module (/dev/nbd0) nbd-client would do the attaching; these machines
# have none, so nbdfuse stands in.
source "$(dirname "$0")/functions.sh"
requires nbdkit nbdfuse losetup mkfs.ext4 fsck.ext4 fusermount3
[ -e /dev/fuse ] || { echo "SKIP: no /dev/fuse"; exit 77; }
[ "$(id -u)" = 0 ] || { echo "SKIP: needs root for losetup and mount"; exit 77; }

make_pool 4 1GiB "{ name: fs, size: 768MiB, replicas: 2, stripe_width: 2, stripe_unit: 256KiB }"
start_server

mkdir -p "$T/fuse" "$T/mnt"
nbdfuse "$T/fuse/disk" "$(uri fs)" & fusepid=$!
on_exit "fusermount3 -u $T/fuse 2>/dev/null || umount -l $T/fuse"
for _ in $(seq 50); do [ -e "$T/fuse/disk" ] && break; sleep 0.1; done
LOOP=$(losetup -f --show "$T/fuse/disk")
on_exit "losetup -d $LOOP"

mkfs.ext4 -q -F "$LOOP"
mount "$LOOP" "$T/mnt"
on_exit "umount $T/mnt 2>/dev/null"
for d in a b c; do
  mkdir -p "$T/mnt/$d/deep/er"
  for i in $(seq 20); do
    head -c $(( (i * 37 % 300 + 1) * 1024 )) /dev/urandom > "$T/mnt/$d/deep/er/f$i"
  done
done
head -c 64M /dev/urandom > "$T/mnt/big"
(cd "$T/mnt" && find . -type f -print0 | sort -z | xargs -0 sha256sum) > "$T/sums"
umount "$T/mnt"
fsck.ext4 -fn "$LOOP" > "$T/fsck.log" 2>&1 || { cat "$T/fsck.log"; fail "fsck found problems"; }
ok "ext4 written and fsck -fn clean"

losetup -d "$LOOP"
fusermount3 -u "$T/fuse"
wait $fusepid
# Restart the server in between: the files must come back from the pool.
stop_server
start_server
nbdfuse "$T/fuse/disk" "$(uri fs)" &
for _ in $(seq 50); do [ -e "$T/fuse/disk" ] && break; sleep 0.1; done
LOOP=$(losetup -f --show "$T/fuse/disk")
mount "$LOOP" "$T/mnt"
(cd "$T/mnt" && sha256sum --quiet -c "$T/sums") || fail "checksums differ after remount"
[ "$(wc -l < "$T/sums")" -eq 61 ] || fail "expected 61 files"
umount "$T/mnt"
ok "remounted after a server restart: 61 files, checksums match"
