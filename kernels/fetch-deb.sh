#!/usr/bin/env bash
# Downloads a Debian package for ARCH and extracts it into DEST, without
# touching the system's apt configuration (a foreign ARCH uses an isolated apt
# state). Used to get arm64 binaries (busybox-static) on an amd64 machine.
#
#   kernels/fetch-deb.sh ARCH PACKAGE DEST
set -euo pipefail
arch=$1 pkg=$2 dest=$3
case $dest in /*) ;; *) dest=$PWD/$dest ;; esac
work=$(mktemp -d)
chmod 755 "$work" # apt's download sandbox user must be able to write here
trap 'rm -rf "$work"' EXIT
aptopts=()
if [ "$arch" != "$(dpkg --print-architecture)" ]; then
  st=$work/apt
  mkdir -p "$st/lists/partial" "$st/cache/archives/partial"
  touch "$st/status"
  aptopts=(-o "APT::Architecture=$arch" -o "APT::Architectures=$arch" -o "Dir::State=$st" -o "Dir::State::status=$st/status" -o "Dir::Cache=$st/cache")
  apt-get "${aptopts[@]}" update -qq
fi
cd "$work"
apt-get "${aptopts[@]}" download -qq "$pkg"
mkdir -p "$dest"
dpkg-deb -x "$work"/"${pkg}"_*.deb "$dest"
