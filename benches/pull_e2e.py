#!/usr/bin/env python3
"""End-to-end pull benchmark (issue 2): cold pull of a ~200 MB, 5-layer image
from a local docker-registry, i2kit vs `skopeo copy docker://… oci:…`, same
run, alternating, median of N runs; peak RSS of each.

Usage: benches/pull_e2e.py [--runs N] [--i2kit PATH]   (build with cargo build --release first)
"""
import argparse, os, shutil, subprocess, sys, tempfile
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "lib"))
from bench_common import Registry, fast_noise, median, push, tar_layer, timed, write_layout

ap = argparse.ArgumentParser()
ap.add_argument("--runs", type=int, default=5)
ap.add_argument("--i2kit", default=os.path.join(os.path.dirname(__file__), "..", "target", "release", "i2kit"))
ap.add_argument("--layer-mib", type=int, default=40)
a = ap.parse_args()

work = tempfile.mkdtemp(prefix="i2kit-bench-")
reg = Registry(os.path.join(work, "reg"))
try:
    layers = [tar_layer([(f"data/layer{i}/blob", fast_noise(i, a.layer_mib << 20))]) for i in range(5)]
    digest, size = write_layout(os.path.join(work, "src"), "big", layers)
    ref = f"{reg.host()}/bench/big:1"
    push(os.path.join(work, "src"), "big", ref)
    print(f"image {ref} {digest}: 5 layers, {size / 2**20:.0f} MiB compressed")
    ti, ts, ri, rs = [], [], [], []
    for run in range(a.runs):
        for tool in ("i2kit", "skopeo"):
            dest = os.path.join(work, f"out-{tool}")
            shutil.rmtree(dest, ignore_errors=True)
            if tool == "i2kit":
                t, r = timed([a.i2kit, "pull", "--store", dest, ref]); ti.append(t); ri.append(r)
            else:
                t, r = timed(["skopeo", "copy", "--quiet", "--src-tls-verify=false", f"docker://{ref}", f"oci:{dest}:big"]); ts.append(t); rs.append(r)
        print(f"run {run + 1}: i2kit {ti[-1]:.2f}s ({ri[-1]:.0f} MiB)  skopeo {ts[-1]:.2f}s ({rs[-1]:.0f} MiB)")
    mi, ms = median(ti), median(ts)
    print(f"median cold pull: i2kit {mi:.2f}s, skopeo {ms:.2f}s, ratio i2kit/skopeo = {mi / ms:.2f}")
    print(f"peak RSS (max over runs): i2kit {max(ri):.0f} MiB, skopeo {max(rs):.0f} MiB")
    print(f"throughput: i2kit {size / 2**20 / mi:.0f} MiB/s, skopeo {size / 2**20 / ms:.0f} MiB/s")
finally:
    reg.stop()
    shutil.rmtree(work, ignore_errors=True)
