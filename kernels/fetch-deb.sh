#!/usr/bin/env bash
# Downloads a Debian package for ARCH and extracts it into DEST, without
# touching the system's apt configuration (a foreign ARCH uses an isolated apt
# state). With --dep REGEX, the first dependency of PACKAGE matching REGEX is
# fetched instead (linux-image-cloud-amd64 → linux-image-6.1.0-…-cloud-amd64).
#
#   kernels/fetch-deb.sh ARCH PACKAGE DEST [--dep REGEX]
set -euo pipefail
arch=$1 pkg=$2 dest=$3 dep=${5:-}
[ "${4:-}" = "--dep" ] || [ -z "${4:-}" ] || { echo "usage: $0 ARCH PACKAGE DEST [--dep REGEX]" >&2; exit 2; }
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
if [ -n "$dep" ]; then
  resolved=$(apt-cache "${aptopts[@]}" depends "$pkg" | awk -v re="$dep" '$1 == "Depends:" && $2 ~ re {print $2; exit}')
  [ -n "$resolved" ] || { echo "$pkg has no dependency matching $dep (apt-get update?)" >&2; exit 1; }
  pkg=$resolved
fi
cd "$work"
apt-get "${aptopts[@]}" download -qq "$pkg"
mkdir -p "$dest"
dpkg-deb -x "$work"/"${pkg}"_*.deb "$dest"
