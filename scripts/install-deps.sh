#!/usr/bin/env bash
# Installs what i2kit's tests and demo need on a fresh Debian 12 machine (as root, or with sudo).
set -euo pipefail
SUDO=""
[ "$(id -u)" = 0 ] || SUDO=sudo
pkgs=(docker-registry skopeo umoci apache2-utils cpio zstd busybox-static time python3
      qemu-system-x86 qemu-system-arm ovmf qemu-efi-aarch64 mtools dosfstools gdisk python3-venv)
missing=()
for p in "${pkgs[@]}"; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  $SUDO apt-get update -qq
  export DEBIAN_FRONTEND=noninteractive
  if ! $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"; then
    # Some machine images carry qemu-utils from bookworm-backports without that
    # source configured; qemu-system-* from bookworm then conflict with it.
    # Align the QEMU packages on bookworm's version.
    $SUDO apt-get install -y -qq --no-install-recommends --allow-downgrades "${missing[@]}" qemu-utils/bookworm qemu-block-extra/bookworm
  fi
fi

# moto, the AWS-API server the push tests run against. Debian's python3 is
# externally managed (PEP 668), so it goes into a venv inside the project's
# target/ directory unless the python3 on PATH already has it.
if ! python3 -c 'import moto.server' 2>/dev/null; then
  venv=$(cd "$(dirname "$0")/.." && pwd)/target/moto-venv
  if ! "$venv/bin/python3" -c 'import moto.server' 2>/dev/null; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q 'moto[server]>=5,<6'
  fi
fi
