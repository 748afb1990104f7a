"""Shared helpers for i2kit's end-to-end benchmarks: a throwaway docker-registry,
a deterministic big OCI image, and timing with peak RSS via /usr/bin/time."""
import gzip, hashlib, json, os, shutil, socket, statistics, subprocess, tempfile, time, zlib

def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p

class Registry:
    def __init__(self, root):
        self.port = free_port()
        os.makedirs(root, exist_ok=True)
        cfg = os.path.join(root, "registry.yml")
        with open(cfg, "w") as f:
            f.write(f"version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: {root}/data\nhttp:\n  addr: 127.0.0.1:{self.port}\n")
        self.proc = subprocess.Popen(["docker-registry", "serve", cfg], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.1).close(); return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("registry did not start")
    def host(self): return f"127.0.0.1:{self.port}"
    def stop(self): self.proc.kill(); self.proc.wait()

def noise(seed, n):
    """Deterministic incompressible bytes (sha256 in counter mode)."""
    out = bytearray(); i = 0
    while len(out) < n:
        out += hashlib.sha256(f"{seed}:{i}".encode()).digest() * 1; i += 1
    return bytes(out[:n])

def fast_noise(seed, n):
    block = noise(seed, 1 << 20)
    # rotate a 1 MiB random block per MiB: incompressible to gzip's 32 KiB window
    parts = []
    for i in range((n + len(block) - 1) // len(block)):
        k = (i * 7919) % len(block)
        parts.append(block[k:] + block[:k])
    return b"".join(parts)[:n]

def tar_layer(files):
    """files: [(path, bytes)] -> uncompressed tar with fixed metadata (via Python's tarfile)."""
    import io, tarfile
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        dirs = set()
        for path, data in files:
            parts = path.split("/")[:-1]
            for i in range(1, len(parts) + 1):
                d = "/".join(parts[:i])
                if d not in dirs:
                    dirs.add(d); ti = tarfile.TarInfo(d); ti.type = tarfile.DIRTYPE; ti.mode = 0o755; ti.mtime = 0; t.addfile(ti)
            ti = tarfile.TarInfo(path); ti.size = len(data); ti.mode = 0o644; ti.mtime = 0
            t.addfile(ti, io.BytesIO(data))
    return buf.getvalue()

def write_layout(dir, name, layers, arch="amd64", config_extra=None):
    """layers: list of uncompressed tar bytes; stores them gzip -1 (mtime 0)."""
    os.makedirs(f"{dir}/blobs/sha256", exist_ok=True)
    open(f"{dir}/oci-layout", "w").write('{"imageLayoutVersion":"1.0.0"}')
    def blob(b):
        d = hashlib.sha256(b).hexdigest()
        with open(f"{dir}/blobs/sha256/{d}", "wb") as f: f.write(b)
        return "sha256:" + d, len(b)
    descs, diffs = [], []
    for l in layers:
        gz = gzip.compress(l, compresslevel=1, mtime=0)
        d, n = blob(gz)
        descs.append({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": d, "size": n})
        diffs.append("sha256:" + hashlib.sha256(l).hexdigest())
    cfg = {"architecture": arch, "os": "linux", "config": {"Env": ["PATH=/usr/bin:/bin"], "Cmd": ["/bin/sh"]}, "rootfs": {"type": "layers", "diff_ids": diffs}}
    if config_extra: cfg["config"].update(config_extra)
    cd, cn = blob(json.dumps(cfg, sort_keys=True).encode())
    m = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
         "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": cn}, "layers": descs}
    md, mn = blob(json.dumps(m, sort_keys=True).encode())
    idx = {"schemaVersion": 2, "manifests": [{"mediaType": m["mediaType"], "digest": md, "size": mn, "annotations": {"org.opencontainers.image.ref.name": name}}]}
    open(f"{dir}/index.json", "w").write(json.dumps(idx))
    return md, sum(x["size"] for x in descs)

def push(layout, name, dest):
    subprocess.run(["skopeo", "copy", "--quiet", "--dest-tls-verify=false", f"oci:{layout}:{name}", f"docker://{dest}"], check=True)

def timed(cmd, env=None, capture=False):
    """Run cmd under /usr/bin/time; returns (seconds, peak RSS MiB), plus stdout if capture."""
    fd, out = tempfile.mkstemp(); os.close(fd)
    t = time.monotonic()
    p = subprocess.run(["/usr/bin/time", "-f", "%M", "-o", out] + cmd, check=True, env=env, stdout=subprocess.PIPE if capture else subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    dt = time.monotonic() - t
    rss = int(open(out).read().strip().splitlines()[-1]) / 1024
    os.unlink(out)
    return (dt, rss, p.stdout) if capture else (dt, rss)

def median(xs): return statistics.median(xs)


def text_block(seed, n):
    line = b"".join(b"%08d GET /api/v1/items/%d 200 OK user-agent=bench %s\n" % (i, (i * 7919 + seed) % 100000, b"x" * (i % 40)) for i in range(20000))
    reps = n // len(line) + 1
    return (line * reps)[:n]


def big_build_inputs(work, host, i2kit, root):
    """Kernel, stub, busybox init and a ~200 MB / 5-layer / ~700 MB-uncompressed
    container pushed to `host`; manifests proj/a.yml and proj/b.yml (one env var
    apart) and proj/i2kit.lock (of a.yml) under `work`."""
    # Kernel (Debian cloud) and a busybox init, pushed to the registry.
    subprocess.run([os.path.join(root, "kernels", "pack-debian-kernel.sh"), "amd64", f"{work}/inputs", "kernel", i2kit], check=True, stdout=subprocess.DEVNULL)
    push(f"{work}/inputs", "kernel", f"{host}/bench/kernel:1")
    subprocess.run([os.path.join(root, "kernels", "pack-efi-stub.sh"), "amd64", f"{work}/inputs", "stub", i2kit], check=True, stdout=subprocess.DEVNULL)
    push(f"{work}/inputs", "stub", f"{host}/bench/stub:1")
    os.makedirs(f"{work}/init/bin")
    shutil.copy("/bin/busybox", f"{work}/init/bin/busybox")
    os.symlink("bin/busybox", f"{work}/init/init")
    subprocess.run([i2kit, "image", "pack", f"{work}/init", "--tag", f"oci:{work}/inputs:init"], check=True, stdout=subprocess.DEVNULL)
    push(f"{work}/inputs", "init", f"{host}/bench/init:1")
    # The big container: 5 layers of 28 MiB random + 112 MiB of log-like text, 20 files each.
    layers = []
    for i in range(5):
        files = []
        for f in range(20):
            files.append((f"srv/layer{i}/rand{f:02d}.bin", fast_noise(i * 100 + f, (28 << 20) // 20)))
            files.append((f"srv/layer{i}/log{f:02d}.txt", text_block(i * 100 + f, (112 << 20) // 20)))
        layers.append(tar_layer(files))
    digest, size = write_layout(f"{work}/big", "big", layers, config_extra={"Entrypoint": ["/srv/app"]})
    push(f"{work}/big", "big", f"{host}/bench/big:1")
    unc = sum(len(l) for l in layers)
    print(f"container {host}/bench/big:1: 5 layers, {size / 2**20:.0f} MiB compressed, {unc / 2**20:.0f} MiB uncompressed")
    del layers

    def manifest(path, env):
        open(path, "w").write(f"""name: bench
containers:
  web:
    image: {host}/bench/big:1
    environment: [MODE={env}]
i2kit:
  kernel: {host}/bench/kernel:1
  init: {host}/bench/init:1
  stub: {host}/bench/stub:1
  profile: generic
""")
    os.makedirs(f"{work}/proj")
    manifest(f"{work}/proj/a.yml", "a")
    manifest(f"{work}/proj/b.yml", "b")
    subprocess.run([i2kit, "lock", "--store", f"{work}/lockstore", f"{work}/proj/a.yml"], check=True, stderr=subprocess.DEVNULL)
    shutil.copy(f"{work}/proj/i2kit.lock", f"{work}/proj/i2kit.lock.a")
