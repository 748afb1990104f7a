#!/usr/bin/env bash
# Builds i2kit-init as a static binary and packs it as an i2kit init image
# (/sbin/i2kit-init; i2kit build links /init to it) in an OCI layout.
#
#   init/pack.sh LAYOUT_DIR NAME [I2KIT]
#
# The binary is static glibc (-C target-feature=+crt-static on the host's gnu
# target; no musl toolchain needed), built with the `init` cargo profile
# (size-optimised, LTO, stripped) and with paths remapped, so the same source
# and toolchain give the same image digest. Prints the binary's size.
set -euo pipefail
layout=$1 name=$2 i2kit=${3:-i2kit}
root=$(cd "$(dirname "$0")/.." && pwd)
case $i2kit in */*) i2kit=$(realpath "$i2kit") ;; esac
case $layout in /*) ;; *) layout=$PWD/$layout ;; esac
target=$(rustc -vV | sed -n 's/^host: //p')
case $target in
  x86_64-unknown-linux-gnu) arch=amd64 ;;
  aarch64-unknown-linux-gnu) arch=arm64 ;;
  *) echo "init/pack.sh: build on x86_64 or aarch64 Linux (gnu); host is $target" >&2; exit 1 ;;
esac
cargo_home=${CARGO_HOME:-$HOME/.cargo}
# --target keeps these RUSTFLAGS away from the host build's artifacts.
RUSTFLAGS="-C target-feature=+crt-static --remap-path-prefix=$root=/i2kit --remap-path-prefix=$cargo_home=/cargo" \
  cargo build --quiet --manifest-path "$root/Cargo.toml" --locked --profile init -p i2kit-init --target "$target"
bin=${CARGO_TARGET_DIR:-$root/target}/$target/init/i2kit-init
if ldd "$bin" 2>/dev/null | grep -q '=>'; then
  echo "init/pack.sh: $bin is dynamically linked" >&2; exit 1
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/sbin"
cp "$bin" "$work/sbin/i2kit-init"
"$i2kit" image pack "$work" --tag "oci:$layout:$name" --platform "linux/$arch" >/dev/null
echo "i2kit-init: $(stat -c %s "$bin") bytes, static, packed as oci:$layout:$name" >&2
