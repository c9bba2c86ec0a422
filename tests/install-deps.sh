#!/usr/bin/env bash
# Install the Debian packages strata needs to build, test and demo, if any
# are missing, and any named as arguments (make fuzz adds clang's).  As
# root it runs apt-get; otherwise it prints the command.
set -euo pipefail
PKGS="build-essential pkg-config perl nbdkit nbdkit-plugin-dev libnbd-dev
      libnbd-bin python3-libnbd liburing-dev libyaml-dev libisal-dev check
      fio qemu-utils e2fsprogs fuse3 util-linux openssl bc $*"
missing=()
for p in $PKGS; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' \
    || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
echo "strata: installing missing packages: ${missing[*]}"
if [ "$(id -u)" != 0 ]; then
  echo "strata: not root; run: sudo apt-get install -y ${missing[*]}" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq "${missing[@]}" >/dev/null
