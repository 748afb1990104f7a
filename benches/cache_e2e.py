#!/usr/bin/env python3
"""Remote build cache benchmark (issue 7): the big image build of build_e2e.py
(Debian cloud kernel + busybox init + a ~200 MB / 5-layer / ~700 MB-uncompressed
container) as NAME.raw, from a local docker-registry. Runner A builds once and
pushes with --cache-to. Then, per run, into empty stores:

  cold    i2kit build --format raw                (no cache)
  hit     i2kit build --format raw --cache-from   (download, verify, write outputs)
  skopeo  skopeo copy of the same cache entry (pushed with --cache-compat, the
          same blobs) into an OCI layout: what moving those bytes costs

Reports medians, bytes moved, and the ratios hit/cold (target <= 0.2) and
hit/skopeo (target <= 1.5).

Usage: cargo build --release && benches/cache_e2e.py [--runs N]
"""
import argparse, os, re, shutil, subprocess, sys, tempfile, time
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "lib"))
from bench_common import Registry, big_build_inputs, median, timed

here = os.path.dirname(os.path.abspath(__file__))
ap = argparse.ArgumentParser()
ap.add_argument("--runs", type=int, default=5)
ap.add_argument("--i2kit", default=os.path.join(here, "..", "target", "release", "i2kit"))
a = ap.parse_args()
i2kit = os.path.abspath(a.i2kit)

work = tempfile.mkdtemp(prefix="i2kit-cache-bench-")
reg = Registry(os.path.join(work, "reg"))
try:
    host = reg.host()
    big_build_inputs(work, host, i2kit, os.path.join(here, ".."))
    m = f"{work}/proj/a.yml"
    cache, compat = f"{host}/bench/cache", f"{host}/bench/cache-compat"
    p = subprocess.run([i2kit, "build", "--format", "raw", "--store", f"{work}/sA", "-o", f"{work}/oA", "--cache-to", cache, m],
                       check=True, capture_output=True, text=True)
    tag = re.search(r":(bk-[0-9a-f]{64})", p.stderr).group(1)
    subprocess.run([i2kit, "build", "--format", "raw", "--store", f"{work}/sA", "-o", f"{work}/oA", "--cache-to", compat, "--cache-compat", m],
                   check=True, capture_output=True)
    raw = os.path.getsize(f"{work}/oA/bench.raw")
    print(f"runner A pushed {cache}:{tag} (bench.raw {raw / 2**20:.0f} MiB)")
    res = {k: [] for k in ("cold", "hit", "skopeo")}
    moved = []
    for run in range(a.runs):
        for d in ("sc", "oc", "sh", "oh", "sk"):
            shutil.rmtree(f"{work}/{d}", ignore_errors=True)
        t, _ = timed([i2kit, "build", "--format", "raw", "--store", f"{work}/sc", "-o", f"{work}/oc", m]); res["cold"].append(t)
        t0 = time.monotonic()
        p = subprocess.run([i2kit, "build", "--format", "raw", "--store", f"{work}/sh", "-o", f"{work}/oh", "--cache-from", cache, m],
                           check=True, capture_output=True, text=True)
        res["hit"].append(time.monotonic() - t0)
        got = re.search(r"verified \((\d+) bytes downloaded\)", p.stderr)
        assert got, p.stderr
        moved.append(int(got.group(1)))
        assert open(f"{work}/oh/bench.raw", "rb").read() == open(f"{work}/oA/bench.raw", "rb").read()
        t0 = time.monotonic()
        subprocess.run(["skopeo", "copy", "--quiet", "--src-tls-verify=false", f"docker://{compat}:{tag}", f"oci:{work}/sk:x"], check=True)
        res["skopeo"].append(time.monotonic() - t0)
        print(f"run {run + 1}: cold {res['cold'][-1]:.2f}s  hit {res['hit'][-1]:.2f}s ({moved[-1] / 2**20:.0f} MiB moved)  skopeo {res['skopeo'][-1]:.2f}s")
    md = {k: median(v) for k, v in res.items()}
    print(f"median: cold {md['cold']:.2f}s, hit {md['hit']:.2f}s, skopeo copy of the same bytes {md['skopeo']:.2f}s; "
          f"hit moved {median(moved) / 2**20:.0f} MiB for a {raw / 2**20:.0f} MiB raw image")
    print(f"ratios: hit/cold {md['hit'] / md['cold']:.2f} (target <= 0.2), hit/skopeo {md['hit'] / md['skopeo']:.2f} (target <= 1.5)")
finally:
    reg.stop()
    shutil.rmtree(work, ignore_errors=True)
