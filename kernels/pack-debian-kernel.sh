#!/usr/bin/env bash
# Packs Debian's cloud kernel as an i2kit kernel image (LinuxKit layout:
# /kernel, /kernel.tar with lib/modules/<release>/) in an OCI layout.
#
#   kernels/pack-debian-kernel.sh ARCH LAYOUT_DIR NAME [I2KIT]
#
# ARCH is amd64 or arm64. The .deb comes from Debian's archive with apt-get
# download (arm64 through an isolated apt state, leaving the system's apt
# configuration alone). Output is deterministic: the same .deb gives the same
# image digest.
set -euo pipefail
arch=$1 layout=$2 name=$3 i2kit=${4:-i2kit}
case $i2kit in */*) i2kit=$(realpath "$i2kit") ;; esac
case $layout in /*) ;; *) layout=$PWD/$layout ;; esac
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
meta=linux-image-cloud-$arch
dep=$(apt-cache "${aptopts[@]}" depends "$meta" | awk '/Depends: linux-image-[0-9]/{print $2; exit}')
[ -n "$dep" ] || { echo "cannot find the kernel package $meta depends on (apt-get update?)" >&2; exit 1; }
apt-get "${aptopts[@]}" download -qq "$dep"
dpkg-deb -x "$work"/linux-image-*.deb "$work/root"
mkdir -p "$work/img"
cp "$work"/root/boot/vmlinuz-* "$work/img/kernel"
# Debian ships no modules.dep: i2kit reads each module's depends= instead.
tar -C "$work/root" --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner --format=gnu -cf "$work/img/kernel.tar" lib/modules
"$i2kit" image pack "$work/img" --tag "oci:$layout:$name" --platform "linux/$arch"
