#!/usr/bin/env python3
"""Boot-time benchmark (issue 5): the paper's nginx-style example (compact
form: Debian's cloud kernel + init + one busybox httpd container) built as
NAME.raw and booted with `i2kit run --accel tcg` (OVMF), i2kit-init against a
busybox-init image of the same kernel and container, alternating, N runs each.

Measured: wall time from starting `i2kit run` until the container's first line
is on the serial console. i2kit-init does more on the way (modules, power
button, DHCP) — the ratio says what that costs. Target: ratio <= 1.5.

Usage: cargo build --release && benches/boot_e2e.py [--runs N]
"""
import argparse, os, signal, socket, subprocess, sys, tempfile, time, shutil

here = os.path.dirname(os.path.abspath(__file__))
ap = argparse.ArgumentParser()
ap.add_argument("--runs", type=int, default=5)
ap.add_argument("--i2kit", default=os.path.join(here, "..", "target", "release", "i2kit"))
a = ap.parse_args()
i2kit = os.path.abspath(a.i2kit)
MARKER = "I2KIT-CONTAINER-UP"

def sh(*cmd, **kw):
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, **kw)

work = tempfile.mkdtemp(prefix="i2kit-boot-bench-")
try:
    lay = f"{work}/layout"
    sh(os.path.join(here, "..", "kernels", "pack-debian-kernel.sh"), "amd64", lay, "kernel", i2kit)
    sh(os.path.join(here, "..", "kernels", "pack-efi-stub.sh"), "amd64", lay, "stub", i2kit)
    sh(os.path.join(here, "..", "init", "pack.sh"), lay, "i2kit-init", i2kit)
    # The container: busybox httpd that says when it starts.
    root = f"{work}/web"
    os.makedirs(f"{root}/bin"); os.makedirs(f"{root}/www")
    shutil.copy("/bin/busybox", f"{root}/bin/busybox")
    for app in ["sh", "httpd", "echo"]:
        os.symlink("busybox", f"{root}/bin/{app}")
    open(f"{root}/www/index.html", "w").write("hello\n")
    sh(i2kit, "image", "pack", root, "--tag", f"oci:{lay}:web", "--cmd", "/bin/sh", "--cmd", "-c",
       "--cmd", f"echo {MARKER}; exec httpd -f -p 80 -h /www")
    # The baseline init: mount what a container needs and chroot into it.
    broot = f"{work}/bbinit"
    os.makedirs(f"{broot}/bin")
    shutil.copy("/bin/busybox", f"{broot}/bin/busybox")
    for app in ["sh", "mount", "chroot", "echo"]:
        os.symlink("busybox", f"{broot}/bin/{app}")
    open(f"{broot}/init", "w").write(
        "#!/bin/sh\nmount -t proc proc /proc\nmount -t devtmpfs dev /dev\n"
        f"exec chroot /containers/nginx/rootfs /bin/sh -c 'echo {MARKER}; exec httpd -f -p 80 -h /www'\n")
    os.chmod(f"{broot}/init", 0o755)
    sh(i2kit, "image", "pack", broot, "--tag", f"oci:{lay}:busybox-init")
    images = {}
    for init in ["i2kit-init", "busybox-init"]:
        m = f"{work}/{init}.yml"
        open(m, "w").write(f"""name: nginx
replicas: 2
containers:
  nginx:
    image: oci:{lay}:web
    ports: [80]
i2kit:
  kernel: oci:{lay}:kernel
  init: oci:{lay}:{init}
  stub: oci:{lay}:stub
  profile: qemu
""")
        sh(i2kit, "build", "--store", f"{work}/store", "-o", f"{work}/out-{init}", m)
        images[init] = f"{work}/out-{init}/nginx.raw"

    def boot(image):
        start = time.monotonic()
        s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close()
        p = subprocess.Popen([i2kit, "run", "--accel", "tcg", "--mem", "512", "-p", f"{port}:80", image],
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True)
        took = None
        for line in p.stdout:
            if MARKER.encode() in line:
                took = time.monotonic() - start
                break
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
        if took is None:
            sys.exit(f"{image}: the container never started")
        return took

    times = {k: [] for k in images}
    for _ in range(a.runs):
        for k, img in images.items():
            times[k].append(boot(img))
    med = {k: sorted(v)[len(v) // 2] for k, v in times.items()}
    size = os.path.getsize(f"{os.path.dirname(os.path.abspath(__file__))}/../target/x86_64-unknown-linux-gnu/init/i2kit-init")
    print(f"runs: {a.runs} each, alternating; QEMU TCG + OVMF, 512 MiB")
    for k, v in times.items():
        print(f"{k:13} median {med[k]:.2f} s   (runs: {', '.join(f'{t:.2f}' for t in v)})")
    print(f"ratio i2kit-init / busybox-init: {med['i2kit-init'] / med['busybox-init']:.2f}  (target <= 1.5)")
    print(f"i2kit-init binary: {size} bytes stripped, static (target <= 3 MB)")
finally:
    shutil.rmtree(work, ignore_errors=True)
