#!/usr/bin/env bash
# The i2kit demo, on a fresh Debian machine: packs Debian's cloud kernel,
# systemd's EFI stub, i2kit-init (built static from init/) and a busybox httpd
# container as deterministic OCI images, serves them from a throwaway local
# registry, locks and builds the paper's nginx-style example reproducibly into
# out/nginx.raw (plus the UKI and kernel+initrd), and — where qemu-system-x86_64
# and OVMF are installed — boots it, fetches the page the container serves
# from the host, and presses the VM's power button.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cargo build --release --quiet
I2KIT=$PWD/target/release/i2kit
work=$(mktemp -d)
trap 'kill $regpid 2>/dev/null || true; rm -rf "$work"' EXIT

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat > "$work/registry.yml" <<YML
version: 0.1
log: {level: error, accesslog: {disabled: true}}
storage: {filesystem: {rootdirectory: $work/registry}}
http: {addr: 127.0.0.1:$port}
YML
docker-registry serve "$work/registry.yml" >/dev/null 2>&1 &
regpid=$!
for _ in $(seq 100); do (echo >/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.1; done
reg=127.0.0.1:$port
echo "== local registry at $reg"

echo "== packing busybox into a deterministic OCI image"
mkdir -p "$work/rootfs/bin" "$work/rootfs/www"
cp /bin/busybox "$work/rootfs/bin/busybox"
for app in sh httpd echo cat ls; do ln -s busybox "$work/rootfs/bin/$app"; done
echo '<h1>Hello from i2kit</h1>' > "$work/rootfs/www/index.html"
"$I2KIT" image pack "$work/rootfs" --tag "oci:$work/layout:httpd" --cmd /bin/sh --cmd -c \
  --cmd 'trap "echo stopping on SIGTERM; exit 0" TERM; httpd -f -v -p 80 -h /www & wait'
skopeo copy --quiet --dest-tls-verify=false "oci:$work/layout:httpd" "docker://$reg/demo/httpd:1"

echo "== packing Debian's cloud kernel and systemd's EFI stub"
kernels/pack-debian-kernel.sh amd64 "$work/layout" kernel "$I2KIT" 2>/dev/null
skopeo copy --quiet --dest-tls-verify=false "oci:$work/layout:kernel" "docker://$reg/demo/kernel:6.1"
kernels/pack-efi-stub.sh amd64 "$work/layout" stub "$I2KIT" 2>/dev/null
skopeo copy --quiet --dest-tls-verify=false "oci:$work/layout:stub" "docker://$reg/demo/efi-stub:252"
echo "== building i2kit-init (static) and packing it"
init/pack.sh "$work/layout" init "$I2KIT"
skopeo copy --quiet --dest-tls-verify=false "oci:$work/layout:init" "docker://$reg/demo/init:1"

echo "== pulling the container into the store ($work/store)"
"$I2KIT" pull --store "$work/store" "$reg/demo/httpd:1"
echo "== pulling again: nothing is fetched"
"$I2KIT" pull --store "$work/store" "$reg/demo/httpd:1"

echo "== locking the paper's nginx-style example against the local registry"
cat > "$work/nginx.yml" <<YML
name: nginx
replicas: 2
containers:
  nginx:
    image: $reg/demo/httpd:1
    ports: [80]
i2kit:
  kernel: $reg/demo/kernel:6.1
  init: $reg/demo/init:1
  stub: $reg/demo/efi-stub:252
  profile: qemu
YML
"$I2KIT" lock --store "$work/store" "$work/nginx.yml"
cat "$work/i2kit.lock"
"$I2KIT" lock --check "$work/nginx.yml"

echo "== skopeo reads i2kit's store as an OCI layout"
skopeo inspect "oci:$work/store:$reg/demo/httpd:1" | head -6
"$I2KIT" store verify --store "$work/store"

echo "== building (reproducible, locked) into out/: a UEFI disk (default), the UKI, and kernel+initrd"
"$I2KIT" build --store "$work/store" --reproducible --locked -o out --format raw --format uki --format kernel+initrd "$work/nginx.yml"
echo "== building again: a build-key hit"
"$I2KIT" build --store "$work/store" --reproducible --locked -o out --format raw --format uki --format kernel+initrd "$work/nginx.yml"

if command -v qemu-system-x86_64 >/dev/null && [ -e /usr/share/OVMF/OVMF_CODE_4M.fd ]; then
  echo "== booting out/nginx.raw with i2kit run (UEFI firmware, KVM if it works, else TCG)"
  web=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  "$I2KIT" run out/nginx.raw -p "$web:80" --monitor "$work/monitor.sock" > "$work/console.log" 2>&1 &
  vmpid=$!
  trap 'kill $regpid $vmpid 2>/dev/null || true; rm -rf "$work"' EXIT
  page=$(python3 - "$web" "$work/console.log" <<'PY'
import sys, time, urllib.request
port, log = sys.argv[1], sys.argv[2]
for _ in range(900):
    try:
        print(urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2).read().decode().strip())
        break
    except OSError:
        time.sleep(0.2)
else:
    sys.exit(f"the page never came; console:\n{open(log, errors='replace').read()}")
PY
)
  grep -a "^i2kit-init:\|^\[nginx\]" "$work/console.log" || true
  echo "== fetched from the host through port $web: $page"
  echo "== pressing the power button (QEMU system_powerdown)"
  # Stay connected until QEMU has read the command (a monitor client that
  # hangs up at once can lose it), and press again if the guest did not react.
  for press in 1 2 3; do
    python3 -c 'import socket,sys,time; s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); s.sendall(b"system_powerdown\n"); time.sleep(1)' "$work/monitor.sock" || true
    for _ in $(seq 40); do kill -0 $vmpid 2>/dev/null || break; sleep 0.5; done
    kill -0 $vmpid 2>/dev/null || break
    echo "== the VM is still running; pressing the power button again"
  done
  if kill -0 $vmpid 2>/dev/null; then
    echo "== the VM did not power off; stopping QEMU" >&2
    kill $vmpid
  fi
  wait $vmpid || true
  grep -a "shutdown\|stop\|powering off" "$work/console.log" || true
fi
