//! `i2kit build`: kernel + initramfs from a manifest, through the real binary.
//! Inputs are images made by `i2kit image pack` into an OCI layout (and one
//! registry), so the whole path a user takes is exercised.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{run, run_cmd};

struct Inputs {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    layout: PathBuf,
}

fn tar_of(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (p, d) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(d.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(0);
        h.set_uid(0);
        h.set_gid(0);
        b.append_data(&mut h, p, *d).unwrap();
    }
    b.into_inner().unwrap()
}

fn put16(b: &mut [u8], o: usize, v: u16) {
    b[o..o + 2].copy_from_slice(&v.to_le_bytes());
}
fn put32(b: &mut [u8], o: usize, v: u32) {
    b[o..o + 4].copy_from_slice(&v.to_le_bytes());
}

/// A file with an MZ/PE header of the given machine (what the build checks a kernel for).
fn fake_pe(machine: u16, tail: &[u8]) -> Vec<u8> {
    let mut b = vec![0u8; 0x100];
    b[..2].copy_from_slice(b"MZ");
    put32(&mut b, 0x3c, 0x80);
    b[0x80..0x84].copy_from_slice(b"PE\0\0");
    put16(&mut b, 0x84, machine);
    b.extend_from_slice(tail);
    b
}

/// A minimal PE32+ x86-64 EFI "stub": two sections, room for four more headers.
fn fake_stub() -> Vec<u8> {
    let mut b = fake_pe(0x8664, b"");
    b.resize(0x600, 0);
    put16(&mut b, 0x86, 1); // sections
    put16(&mut b, 0x94, 240); // optional header size
    let opt = 0x98;
    put16(&mut b, opt, 0x20b);
    put32(&mut b, opt + 32, 0x1000);
    put32(&mut b, opt + 36, 0x200);
    put32(&mut b, opt + 56, 0x2000);
    put32(&mut b, opt + 60, 0x400);
    put32(&mut b, opt + 108, 16);
    let h = opt + 240;
    b[h..h + 5].copy_from_slice(b".text");
    put32(&mut b, h + 8, 0x10);
    put32(&mut b, h + 12, 0x1000);
    put32(&mut b, h + 16, 0x200);
    put32(&mut b, h + 20, 0x400);
    b
}

fn pack(dir: &Path, layout: &Path, name: &str, extra: &[&str]) {
    let (ok, _, err) = run(&[
        &[
            "image",
            "pack",
            dir.to_str().unwrap(),
            "--tag",
            &format!("oci:{}:{name}", layout.display()),
        ],
        extra,
    ]
    .concat());
    assert!(ok, "pack {name}: {err}");
}

/// A fake kernel image (bzImage stand-in + kernel.tar with modules.dep), an
/// init image and two container images, packed into one OCI layout.
fn inputs() -> Inputs {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_path_buf();
    let layout = root.join("layout");
    let k = root.join("kernel");
    std::fs::create_dir_all(&k).unwrap();
    std::fs::write(k.join("kernel"), fake_pe(0x8664, b"fake bzImage for tests")).unwrap();
    let rel = "lib/modules/6.1.0-test";
    std::fs::write(
        k.join("kernel.tar"),
        tar_of(&[
            (&format!("{rel}/kernel/virtio_ring.ko"), b"ko1"),
            (&format!("{rel}/kernel/virtio.ko"), b"ko2"),
            (&format!("{rel}/kernel/virtio_net.ko"), b"ko3"),
            (&format!("{rel}/kernel/unused.ko"), b"ko4"),
            (&format!("{rel}/modules.dep"), b"kernel/virtio_net.ko: kernel/virtio.ko kernel/virtio_ring.ko\nkernel/virtio.ko: kernel/virtio_ring.ko\nkernel/virtio_ring.ko:\n"),
        ]),
    )
    .unwrap();
    pack(&k, &layout, "kernel", &[]);
    let stub = root.join("stub/usr/lib/systemd/boot/efi");
    std::fs::create_dir_all(&stub).unwrap();
    std::fs::write(stub.join("linuxx64.efi.stub"), fake_stub()).unwrap();
    pack(&root.join("stub"), &layout, "stub", &[]);
    let init = root.join("init");
    std::fs::create_dir_all(init.join("sbin")).unwrap();
    std::fs::write(init.join("sbin/i2kit-init"), b"#!/bin/sh\necho init\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        init.join("sbin/i2kit-init"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    pack(&init, &layout, "init", &[]);
    for (name, content) in [("web", "web content"), ("cache", "cache content")] {
        let c = root.join(name);
        std::fs::create_dir_all(c.join("etc")).unwrap();
        std::fs::create_dir_all(c.join("bin")).unwrap();
        std::fs::write(
            c.join("etc/passwd"),
            b"root:x:0:0::/root:/bin/sh\napp:x:1000:1001::/:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(c.join("data.txt"), content).unwrap();
        std::fs::write(c.join("bin/app"), b"#!/bin/sh\n").unwrap();
        std::os::unix::fs::symlink("app", c.join("bin/alias")).unwrap();
        pack(
            &c,
            &layout,
            name,
            &[
                "--entrypoint",
                "/bin/app",
                "--cmd",
                "serve",
                "--env",
                "PATH=/bin",
                "--env",
                "MODE=image",
            ],
        );
    }
    Inputs {
        _tmp: tmp,
        root,
        layout,
    }
}

impl Inputs {
    fn manifest(&self, file: &str, mode: &str) -> PathBuf {
        let l = self.layout.display();
        let text = format!(
            "apiVersion: apps/v1
kind: Deployment
metadata:
  name: shop
  annotations:
    i2kit.dev/kernel: oci:{l}:kernel
    i2kit.dev/init: oci:{l}:init
    i2kit.dev/stub: oci:{l}:stub
    i2kit.dev/profile: qemu
    i2kit.dev/modules: virtio_net
spec:
  template:
    spec:
      containers:
      - name: web
        image: oci:{l}:web
        env:
        - name: MODE
          value: {mode}
        securityContext:
          runAsUser: 1000
        ports:
        - containerPort: 8080
      - name: cache
        image: oci:{l}:cache
        args: [\"--fast\"]
"
        );
        let dir = self.root.join("proj");
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join(file);
        std::fs::write(&p, text).unwrap();
        p
    }
}

fn report(out: &str) -> serde_json::Value {
    serde_json::from_str(out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

fn digests(dir: &Path) -> BTreeMap<String, String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                common::images::sha(&std::fs::read(e.path()).unwrap()),
            )
        })
        .collect()
}

/// Decompress the concatenated zstd segments and list them with GNU cpio.
fn initrd_listing(initrd: &Path) -> (String, Vec<u8>) {
    // Each segment is its own zstd frame; zstd -d handles concatenated frames.
    let out = Command::new("zstd")
        .args(["-d", "-c", "-q"])
        .arg(initrd)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "zstd: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dir = tempfile::tempdir().unwrap();
    let cat = dir.path().join("all.cpio");
    std::fs::write(&cat, &out.stdout).unwrap();
    // GNU cpio stops at the first trailer: list each archive in turn.
    let mut listing = String::new();
    let mut pod_json = Vec::new();
    let mut rest = &out.stdout[..];
    while !rest.is_empty() {
        // "TRAILER!!!" + NUL, padded to 4 bytes.
        let end = rest
            .windows(10)
            .position(|w| w == b"TRAILER!!!")
            .expect("trailer")
            + 11;
        let end = end + (4 - end % 4) % 4;
        let part = dir.path().join("part.cpio");
        std::fs::write(&part, &rest[..end]).unwrap();
        let l = Command::new("cpio")
            .args(["-itv", "--quiet", "-F"])
            .arg(&part)
            .output()
            .unwrap();
        assert!(l.status.success(), "{}", String::from_utf8_lossy(&l.stderr));
        listing.push_str(&String::from_utf8_lossy(&l.stdout));
        let x = Command::new("cpio")
            .args(["-i", "--to-stdout", "--quiet", "-F"])
            .arg(&part)
            .arg("etc/i2kit/pod.json")
            .output()
            .unwrap();
        pod_json.extend_from_slice(&x.stdout);
        rest = &rest[end..];
        while rest.first() == Some(&0) {
            rest = &rest[1..];
        }
    }
    (listing, pod_json)
}

#[test]
fn builds_kernel_initrd_with_pod_json_and_layout() {
    let inp = inputs();
    let m = inp.manifest("app.yml", "prod");
    let store = inp.root.join("store");
    let out = inp.root.join("out");
    let (ok, stdout, err) = run(&[
        "build",
        "--format",
        "kernel+initrd",
        "--store",
        store.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--json",
        m.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let r = report(&stdout);
    assert_eq!(r["cached"], false);
    let names: Vec<&str> = r["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "shop-kernel",
            "shop-initrd.img",
            "shop-cmdline",
            "shop.provenance.json"
        ]
    );
    assert_eq!(
        std::fs::read(out.join("shop-kernel")).unwrap(),
        fake_pe(0x8664, b"fake bzImage for tests")
    );
    assert_eq!(
        std::fs::read_to_string(out.join("shop-cmdline")).unwrap(),
        "console=ttyS0\n"
    );
    let (listing, pod_json) = initrd_listing(&out.join("shop-initrd.img"));
    for want in [
        "lib/modules/6.1.0-test/kernel/virtio_ring.ko",
        "lib/modules/6.1.0-test/kernel/virtio_net.ko",
        "sbin/i2kit-init",
        "init -> sbin/i2kit-init",
        "containers/web/rootfs/bin/alias -> app",
        "containers/cache/rootfs/data.txt",
        "etc/i2kit/pod.json",
        "dev/console",
    ] {
        assert!(listing.contains(want), "{want} missing from\n{listing}");
    }
    assert!(
        !listing.contains("unused.ko"),
        "only the profile's modules are included"
    );
    // pod.json: Kubernetes argv rules, env merge, user resolution, module order.
    let pod: serde_json::Value = serde_json::from_slice(&pod_json).unwrap();
    assert_eq!(
        pod["modules"],
        serde_json::json!([
            "kernel/virtio_ring.ko",
            "kernel/virtio.ko",
            "kernel/virtio_net.ko"
        ])
    );
    assert_eq!(pod["containers"][0]["name"], "web");
    assert_eq!(
        pod["containers"][0]["argv"],
        serde_json::json!(["/bin/app", "serve"])
    );
    assert_eq!(
        pod["containers"][0]["env"],
        serde_json::json!(["PATH=/bin", "MODE=prod"])
    );
    assert_eq!(
        (
            pod["containers"][0]["uid"].as_u64(),
            pod["containers"][0]["gid"].as_u64()
        ),
        (Some(1000), Some(1001))
    );
    assert_eq!(
        pod["containers"][1]["argv"],
        serde_json::json!(["/bin/app", "--fast"])
    );
    // A second build is a cache hit with the same outputs.
    let (ok, stdout, err) = run(&[
        "build",
        "--format",
        "kernel+initrd",
        "--store",
        store.to_str().unwrap(),
        "-o",
        inp.root.join("out2").to_str().unwrap(),
        "--json",
        m.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    assert_eq!(report(&stdout)["cached"], true);
    assert_eq!(digests(&out), digests(&inp.root.join("out2")));
}

#[test]
fn changing_one_env_var_rebuilds_only_pod_json() {
    let inp = inputs();
    let store = inp.root.join("store");
    let a = inp.manifest("a.yml", "one");
    let (ok, _, err) = run(&[
        "build",
        "--format",
        "kernel+initrd",
        "--store",
        store.to_str().unwrap(),
        "-o",
        inp.root.join("o1").to_str().unwrap(),
        a.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let b = inp.manifest("b.yml", "two");
    let (ok, stdout, err) = run(&[
        "build",
        "--format",
        "kernel+initrd",
        "--store",
        store.to_str().unwrap(),
        "-o",
        inp.root.join("o2").to_str().unwrap(),
        "--json",
        b.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let r = report(&stdout);
    assert_eq!(r["cached"], false);
    let rebuilt: Vec<&str> = r["segments"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["built"] == true)
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(rebuilt, ["pod"], "only pod.json's segment is rebuilt");
}

/// The same manifest built twice under different TZ, umask, TMPDIR, thread
/// counts, working directory and cold/warm store gives identical bytes.
#[test]
fn reproducible_across_environments() {
    let inp = inputs();
    let m = inp.manifest("app.yml", "prod");
    // Pin everything (the --reproducible rule) with a lock file.
    let warm = inp.root.join("warm-store");
    let (ok, _, err) = run(&[
        "lock",
        "--store",
        warm.to_str().unwrap(),
        m.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let build = |store: &Path, out: &Path, tz: &str, umask: &str, threads: &str, cwd: &Path| {
        std::fs::create_dir_all(cwd).unwrap();
        let tmpdir = cwd.join("tmp");
        std::fs::create_dir_all(&tmpdir).unwrap();
        let script = format!(
            "umask {umask}; exec \"$0\" build --format kernel+initrd --format raw --format uki --reproducible --locked --store \"$1\" -o \"$2\" \"$3\"",
        );
        let (ok, _, err) = run_cmd(
            Command::new("sh")
                .arg("-c")
                .arg(script)
                .arg(env!("CARGO_BIN_EXE_i2kit"))
                .arg(store)
                .arg(out)
                .arg(&m)
                .current_dir(cwd)
                .env("TZ", tz)
                .env("TMPDIR", &tmpdir)
                .env("RAYON_NUM_THREADS", threads)
                .env("SOURCE_DATE_EPOCH", "1700000000"),
        );
        assert!(ok, "{err}");
    };
    let o1 = inp.root.join("o1");
    let o2 = inp.root.join("o2");
    build(
        &inp.root.join("cold-store"),
        &o1,
        "UTC",
        "022",
        "1",
        &inp.root.join("cwd1"),
    );
    build(
        &warm,
        &o2,
        "Pacific/Kiritimati",
        "077",
        "2",
        &inp.root.join("cwd2/deeper"),
    );
    let (d1, d2) = (digests(&o1), digests(&o2));
    assert_eq!(
        d1.len(),
        6,
        "kernel, initrd, cmdline, efi, raw, provenance: {d1:?}"
    );
    assert_eq!(d1, d2);
}

#[test]
fn plan_lock_and_reproducible_rules() {
    let inp = inputs();
    let m = inp.manifest("app.yml", "prod");
    let store = inp.root.join("store");
    let (ok, stdout, err) = run(&[
        "build",
        "--format",
        "kernel+initrd",
        "--dry-run",
        "--store",
        store.to_str().unwrap(),
        m.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let plan = report(&stdout);
    assert_eq!(plan["buildKey"].as_str().unwrap().len(), 71);
    assert!(
        plan["plan"]["inputs"]["container/web"]["digest"]
            .as_str()
            .unwrap()
            .starts_with("sha256:")
    );
    assert!(
        !inp.root.join("out").exists() && !Path::new("out").join("shop-kernel").exists(),
        "dry run builds nothing"
    );
    let (ok, _, err) = run(&[
        "build",
        "--format",
        "kernel+initrd",
        "--locked",
        "--store",
        store.to_str().unwrap(),
        m.to_str().unwrap(),
    ]);
    assert!(!ok && err.contains("--locked"), "{err}");
    let (ok, _, err) = run(&[
        "build",
        "--format",
        "kernel+initrd",
        "--reproducible",
        "--store",
        store.to_str().unwrap(),
        m.to_str().unwrap(),
    ]);
    assert!(!ok && err.contains("unpinned"), "{err}");
    // A changed compression setting is a different build key.
    let (_, gz, _) = run(&[
        "build",
        "--format",
        "kernel+initrd",
        "--dry-run",
        "--compression",
        "gzip",
        "--store",
        store.to_str().unwrap(),
        m.to_str().unwrap(),
    ]);
    assert_ne!(report(&gz)["buildKey"], plan["buildKey"]);
}

/// Output digests of a small fixture whose every input the test generates
/// deterministically. A change here is a change of output bytes: make it on
/// purpose (new i2kit version, format change) and update the constants.
/// `I2KIT_BLESS=1` prints the new values.
#[test]
fn golden_digests() {
    const GOLDEN: &[(&str, &str)] = &[
        (
            "golden-cmdline",
            "sha256:f942c339f6e5201d73ef1810cff2824f176eb405fed7cc006faf2fc961e2f5a3",
        ),
        (
            "golden-initrd.img",
            "sha256:4082bcb67f46dc9972701eab7f619bed6c63f85b6f98b02138d4dff84b987146",
        ),
        (
            "golden-kernel",
            "sha256:7af7d5191ba23d527e0269432e3f01f48849cf729feed3a94a2bdae576bbbc3b",
        ),
        (
            "golden.efi",
            "sha256:3c65903fc3f7eab06af7e44ce7a4b58bfedf210c686107dcc99c1f85f734a24e",
        ),
        (
            "golden.provenance.json",
            "sha256:d3c59d6c1f83d0455dcbd55d24a44164d3903c68531d2cf947f78098ffcd4bfe",
        ),
        (
            "golden.raw",
            "sha256:d779f3ccba6a3696c52e55f2299c8a7394bf57b2ebf2516f4803eff38461d742",
        ),
    ];
    let inp = inputs();
    // Relative oci: paths keep the temporary directory out of the plan.
    std::fs::write(
        inp.root.join("golden.yml"),
        "name: golden\ncontainers:\n  web:\n    image: oci:layout:web\n    ports: [80]\n    environment: [A=1]\ni2kit:\n  kernel: oci:layout:kernel\n  init: oci:layout:init\n  stub: oci:layout:stub\n  modules: [virtio_net]\n",
    )
    .unwrap();
    let (ok, _, err) = run_cmd(common::i2kit().current_dir(&inp.root).args([
        "build",
        "--format",
        "kernel+initrd",
        "--format",
        "raw",
        "--format",
        "uki",
        "--store",
        "store",
        "-o",
        "out",
        "golden.yml",
    ]));
    assert!(ok, "{err}");
    let got = digests(&inp.root.join("out"));
    if std::env::var_os("I2KIT_BLESS").is_some() {
        for (k, v) in &got {
            eprintln!("(\"{k}\", \"{v}\"),");
        }
    }
    let want: BTreeMap<String, String> = GOLDEN
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    assert_eq!(
        got, want,
        "output bytes changed (I2KIT_BLESS=1 prints the new digests)"
    );
    // Built alone, the raw disk streams its UKI through a pipe: same bytes.
    let (ok, _, err) = run_cmd(common::i2kit().current_dir(&inp.root).args([
        "build",
        "--format",
        "raw",
        "--store",
        "store",
        "-o",
        "out-raw",
        "golden.yml",
    ]));
    assert!(ok, "{err}");
    let raw = digests(&inp.root.join("out-raw"));
    assert_eq!(raw.get("golden.raw"), want.get("golden.raw"));
    assert_eq!(raw.len(), 2, "raw and provenance only: {raw:?}");
}

#[test]
fn gzip_and_uncompressed_initrds_are_valid() {
    let inp = inputs();
    let m = inp.manifest("app.yml", "prod");
    for (c, tool) in [("gzip", Some("gzip")), ("none", None)] {
        let out = inp.root.join(format!("out-{c}"));
        let (ok, _, err) = run(&[
            "build",
            "--format",
            "kernel+initrd",
            "--compression",
            c,
            "--store",
            inp.root.join("store").to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
            m.to_str().unwrap(),
        ]);
        assert!(ok, "{err}");
        let initrd = out.join("shop-initrd.img");
        let raw = match tool {
            Some(t) => {
                let o = Command::new(t).args(["-dc"]).arg(&initrd).output().unwrap();
                assert!(
                    o.status.success(),
                    "{t}: {}",
                    String::from_utf8_lossy(&o.stderr)
                );
                o.stdout
            }
            None => std::fs::read(&initrd).unwrap(),
        };
        let trailers = raw.windows(10).filter(|w| *w == b"TRAILER!!!").count();
        assert_eq!(trailers, 5, "{c}: modules, init, two containers, pod");
        assert!(raw.windows(16).any(|w| w == b"containers/cache"), "{c}");
    }
    let (ok, _, err) = run(&[
        "build",
        "--format",
        "kernel+initrd",
        "--compression",
        "gzip",
        "--compression-level",
        "12",
        m.to_str().unwrap(),
    ]);
    assert!(!ok && err.contains("gzip level 12 is not in 1-9"), "{err}");
}
