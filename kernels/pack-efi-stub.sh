#!/usr/bin/env bash
# Packs systemd's EFI stub (linuxx64.efi.stub / linuxaa64.efi.stub from
# Debian's systemd-boot-efi, LGPL, carried as data) as an i2kit stub image in
# an OCI layout, at /usr/lib/systemd/boot/efi/ as in the package.
#
#   kernels/pack-efi-stub.sh ARCH LAYOUT_DIR NAME [I2KIT]
set -euo pipefail
arch=$1 layout=$2 name=$3 i2kit=${4:-i2kit}
here=$(cd "$(dirname "$0")" && pwd)
case $i2kit in */*) i2kit=$(realpath "$i2kit") ;; esac
case $layout in /*) ;; *) layout=$PWD/$layout ;; esac
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$here/fetch-deb.sh" "$arch" systemd-boot-efi "$work/root"
mkdir -p "$work/img/usr/lib/systemd/boot/efi"
cp "$work"/root/usr/lib/systemd/boot/efi/*.efi.stub "$work/img/usr/lib/systemd/boot/efi/"
"$i2kit" image pack "$work/img" --tag "oci:$layout:$name" --platform "linux/$arch"
