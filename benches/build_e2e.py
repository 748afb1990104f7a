#!/usr/bin/env python3
"""End-to-end build benchmark (issues 3 and 4): kernel (Debian cloud) + busybox
init + a ~200 MB / 5-layer / ~700 MB-uncompressed container, from a local
docker-registry. Measures, median of N runs, with peak RSS:

  cold     i2kit build into an empty store
  hit      the same build again (build-key hit in the local artifact cache)
  env      a build after changing one env var (only pod.json's segment rebuilds)
  baseline the same work with standard tools, in the same run:
           skopeo copy + tar -x of every layer + find | cpio -o -H newc | zstd -T0

Usage: cargo build --release && benches/build_e2e.py [--runs N]
"""
import argparse, hashlib, os, shutil, subprocess, sys, tempfile, time
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "lib"))
from bench_common import Registry, big_build_inputs, median, timed

here = os.path.dirname(os.path.abspath(__file__))
ap = argparse.ArgumentParser()
ap.add_argument("--runs", type=int, default=5)
ap.add_argument("--keep", action="store_true", help="keep the work directory and registry (for profiling)")
ap.add_argument("--i2kit", default=os.path.join(here, "..", "target", "release", "i2kit"))
a = ap.parse_args()
i2kit = os.path.abspath(a.i2kit)

work = tempfile.mkdtemp(prefix="i2kit-build-bench-")
reg = Registry(os.path.join(work, "reg"))
try:
    host = reg.host()
    big_build_inputs(work, host, i2kit, os.path.join(here, ".."))
    def build(store, out, m):
        return timed([i2kit, "build", "--format", "kernel+initrd", "--store", store, "-o", out, m])

    import json
    res = {k: [] for k in ("cold", "hit", "env", "base", "raw")}
    disk_share = []
    rss = {k: [] for k in res}
    for run in range(a.runs):
        for d in ("s", "o", "o2", "o3", "b", "or"):
            shutil.rmtree(f"{work}/{d}", ignore_errors=True)
        t, r = build(f"{work}/s", f"{work}/o", f"{work}/proj/a.yml"); res["cold"].append(t); rss["cold"].append(r)
        # The default format, NAME.raw, cold into its own store: how much of it is disk assembly?
        shutil.rmtree(f"{work}/sr", ignore_errors=True)
        t, r, out = timed([i2kit, "build", "--json", "--format", "raw", "--store", f"{work}/sr", "-o", f"{work}/or", f"{work}/proj/a.yml"], capture=True)
        res["raw"].append(t); rss["raw"].append(r)
        tm = json.loads(out)["timings"]
        disk_share.append(tm["uki and raw disk"] / tm["total"])
        t, r = build(f"{work}/s", f"{work}/o2", f"{work}/proj/a.yml"); res["hit"].append(t); rss["hit"].append(r)
        t, r = build(f"{work}/s", f"{work}/o3", f"{work}/proj/b.yml"); res["env"].append(t); rss["env"].append(r)
        # Baseline with standard tools.
        b = f"{work}/b"
        os.makedirs(b)
        t0 = time.monotonic()
        for img, dest in (("kernel", "kernel"), ("init", "root"), ("big", "root/containers/web/rootfs")):
            subprocess.run(["skopeo", "copy", "--quiet", "--src-tls-verify=false", f"docker://{host}/bench/{img}:1", f"oci:{b}/oci-{img}:x"], check=True)
            os.makedirs(f"{b}/{dest}", exist_ok=True)
            import json
            idx = json.load(open(f"{b}/oci-{img}/index.json"))
            m = json.load(open(f"{b}/oci-{img}/blobs/sha256/" + idx["manifests"][0]["digest"][7:]))
            for l in m["layers"]:
                subprocess.run(["tar", "-xzf", f"{b}/oci-{img}/blobs/sha256/" + l["digest"][7:], "-C", f"{b}/{dest}"], check=True)
        subprocess.run(f"cd {b}/root && find . | cpio -o -H newc --quiet | zstd -T0 -3 -q > {b}/initrd.img", shell=True, check=True)
        res["base"].append(time.monotonic() - t0)
        print(f"run {run + 1}: raw {res['raw'][-1]:.2f}s  cold {res['cold'][-1]:.2f}s  hit {res['hit'][-1]:.2f}s  env {res['env'][-1]:.2f}s  baseline {res['base'][-1]:.2f}s  (i2kit RSS {rss['cold'][-1]:.0f} MiB)")
    m = {k: median(v) for k, v in res.items()}
    print(f"median: cold {m['cold']:.2f}s, hit {m['hit']:.2f}s, env change {m['env']:.2f}s, baseline {m['base']:.2f}s")
    print(f"ratios: cold/baseline {m['cold'] / m['base']:.2f} (target <= 0.5), env/cold {m['env'] / m['cold']:.2f} (target <= 0.15), hit {m['hit']:.2f}s (target <= 0.5 s)")
    print(f"cold --format raw: median {m['raw']:.2f}s, peak RSS {max(rss['raw']):.0f} MiB; raw image assembly (initramfs bytes -> UKI -> FAT32 ESP -> GPT) is {100 * median(disk_share):.1f}% of it (target <= 15%)")
    print(f"peak RSS: cold {max(rss['cold']):.0f} MiB, hit {max(rss['hit']):.0f} MiB, env {max(rss['env']):.0f} MiB (target <= 200 MB)")
    print(f"initrd: i2kit {os.path.getsize(f'{work}/o/bench-initrd.img') / 2**20:.0f} MiB, baseline {os.path.getsize(f'{work}/b/initrd.img') / 2**20:.0f} MiB")
finally:
    if a.keep:
        print(f"kept {work} (registry {reg.host()} pid {reg.proc.pid} still running)")
    else:
        reg.stop()
        shutil.rmtree(work, ignore_errors=True)
