#!/usr/bin/env bash
# Packs Debian's cloud kernel as an i2kit kernel image (LinuxKit layout:
# /kernel, /kernel.tar with lib/modules/<release>/) in an OCI layout.
#
#   kernels/pack-debian-kernel.sh ARCH LAYOUT_DIR NAME [I2KIT]
#
# ARCH is amd64 or arm64 (fetched with kernels/fetch-deb.sh, which leaves the
# system's apt configuration alone). Output is deterministic: the same .deb
# gives the same image digest.
set -euo pipefail
arch=$1 layout=$2 name=$3 i2kit=${4:-i2kit}
here=$(cd "$(dirname "$0")" && pwd)
case $i2kit in */*) i2kit=$(realpath "$i2kit") ;; esac
case $layout in /*) ;; *) layout=$PWD/$layout ;; esac
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$here/fetch-deb.sh" "$arch" "linux-image-cloud-$arch" "$work/root" --dep '^linux-image-[0-9]'
mkdir -p "$work/img"
cp "$work"/root/boot/vmlinuz-* "$work/img/kernel"
# Debian ships no modules.dep: i2kit reads each module's depends= instead.
tar -C "$work/root" --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner --format=gnu -cf "$work/img/kernel.tar" lib/modules
"$i2kit" image pack "$work/img" --tag "oci:$layout:$name" --platform "linux/$arch"
