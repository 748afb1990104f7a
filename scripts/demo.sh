#!/usr/bin/env bash
# The i2kit demo, on a fresh Debian machine: packs a busybox container image
# deterministically, serves it from a throwaway local registry, pulls it into a
# content-addressed store, locks the paper's example manifest against it and
# shows that skopeo reads the store. (Building and booting the VM image arrive
# with the build and disk-image stages.)
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
"$I2KIT" image pack "$work/rootfs" --tag "oci:$work/layout:httpd" --cmd /bin/httpd --cmd -f --cmd -p --cmd 80 --cmd -h --cmd /www
skopeo copy --quiet --dest-tls-verify=false "oci:$work/layout:httpd" "docker://$reg/demo/httpd:1"

echo "== pulling it into the store ($work/store)"
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
  kernel: $reg/demo/httpd:1
  init: $reg/demo/httpd:1
  stub: $reg/demo/httpd:1
YML
"$I2KIT" lock --store "$work/store" "$work/nginx.yml"
cat "$work/i2kit.lock"
"$I2KIT" lock --check "$work/nginx.yml"

echo "== skopeo reads i2kit's store as an OCI layout"
skopeo inspect "oci:$work/store:$reg/demo/httpd:1" | head -12
"$I2KIT" store verify --store "$work/store"
