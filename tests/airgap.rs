//! Building without a network: `fetch`, `--offline`, `export`/`import`,
//! against a real registry and skopeo.

mod common;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::boot::push_build_inputs;
use common::{TestRegistry, run};

/// A registry holding kernel, stub, init and one container, and a locked
/// compact manifest that uses them.
struct Fixture {
    reg: TestRegistry,
    dir: tempfile::TempDir,
    manifest: PathBuf,
}

fn fixture() -> Fixture {
    let reg = TestRegistry::start();
    push_build_inputs(&reg, "airgap");
    let dir = tempfile::tempdir().unwrap();
    let h = reg.host();
    let manifest = dir.path().join("web.yml");
    std::fs::write(
        &manifest,
        format!(
            "name: web\ncontainers:\n  web:\n    image: {h}/airgap/web:1\ni2kit:\n  kernel: {h}/airgap/kernel:1\n  init: {h}/airgap/init:1\n  stub: {h}/airgap/stub:1\n"
        ),
    )
    .unwrap();
    let (ok, _, err) = run(&[
        "lock",
        "--store",
        store(&dir, "lock").to_str().unwrap(),
        manifest.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    Fixture { reg, dir, manifest }
}

fn store(dir: &tempfile::TempDir, name: &str) -> PathBuf {
    dir.path().join(format!("store-{name}"))
}

/// Build kernel+initrd; the output digests by file name.
fn build(
    store: &Path,
    out: &Path,
    manifest: &Path,
    extra: &[&str],
) -> Result<Vec<(String, String)>, String> {
    let mut args = vec![
        "build",
        "--store",
        store.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--format",
        "kernel+initrd",
        "--reproducible",
        "--locked",
        "--json",
    ];
    args.extend(extra);
    args.push(manifest.to_str().unwrap());
    let (ok, stdout, err) = run(&args);
    if !ok {
        return Err(err);
    }
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    Ok(v["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| {
            (
                o["name"].as_str().unwrap().to_string(),
                o["digest"].as_str().unwrap().to_string(),
            )
        })
        .collect())
}

/// A TCP listener that counts connection attempts (a registry that must not be called).
fn counting_listener(port: u16) -> Arc<AtomicUsize> {
    let l = TcpListener::bind(("127.0.0.1", port)).unwrap();
    let n = Arc::new(AtomicUsize::new(0));
    let n2 = n.clone();
    std::thread::spawn(move || {
        for c in l.incoming() {
            n2.fetch_add(1, Ordering::SeqCst);
            drop(c);
        }
    });
    n
}

#[test]
fn offline_builds_from_a_fetched_store_without_any_connection_and_lists_all_that_is_missing() {
    let mut f = fixture();
    let fetched = store(&f.dir, "fetched");
    let (ok, out, err) = run(&[
        "fetch",
        "--store",
        fetched.to_str().unwrap(),
        f.manifest.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    assert_eq!(out.lines().count(), 4, "kernel, init, stub, web:\n{out}");
    let online = build(&fetched, &f.dir.path().join("out-online"), &f.manifest, &[]).unwrap();
    // The registry goes away; whatever listens on its port now counts calls.
    let port = f.reg.port;
    f.reg.stop();
    let calls = counting_listener(port);
    let fresh_out = f.dir.path().join("out-offline");
    // A second store with the same blobs but no artifact cache: a real build.
    let copy = store(&f.dir, "copy");
    let (ok, _, err) = run(&[
        "fetch",
        "--offline",
        "--store",
        fetched.to_str().unwrap(),
        f.manifest.to_str().unwrap(),
    ]);
    assert!(ok, "fetch --offline with everything present: {err}");
    std::process::Command::new("cp")
        .arg("-a")
        .arg(&fetched)
        .arg(&copy)
        .status()
        .unwrap();
    std::fs::remove_dir_all(copy.join(".i2kit")).ok();
    let offline = build(&copy, &fresh_out, &f.manifest, &["--offline"]).unwrap();
    assert_eq!(offline, online, "offline outputs differ");
    // An empty store: every missing item at once, and still no connection.
    let err = build(
        &store(&f.dir, "empty"),
        &f.dir.path().join("out-empty"),
        &f.manifest,
        &["--offline"],
    )
    .unwrap_err();
    // kernel+initrd needs no EFI stub: kernel, init and web are missing.
    assert!(
        err.contains("--offline: the store lacks 3 item(s)"),
        "{err}"
    );
    for n in ["kernel", "init", "web"] {
        assert!(
            err.contains(&format!("airgap/{n}:1")),
            "{n} not listed:\n{err}"
        );
    }
    assert!(err.contains("i2kit fetch"), "{err}");
    assert_eq!(
        calls.load(Ordering::SeqCst),
        0,
        "--offline opened a connection"
    );
}

#[test]
fn export_is_deterministic_and_rebuilds_identically_after_import_or_skopeo() {
    let mut f = fixture();
    let s1 = store(&f.dir, "one");
    let online = build(&s1, &f.dir.path().join("out-1"), &f.manifest, &[]).unwrap();
    let a = f.dir.path().join("a.tar");
    let (ok, names, err) = run(&[
        "export",
        "--store",
        s1.to_str().unwrap(),
        f.manifest.to_str().unwrap(),
        "-o",
        a.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let names: Vec<String> = names.lines().map(String::from).collect();
    assert_eq!(names.len(), 4, "{names:?}");
    // A second store, fetched independently, exports the same bytes.
    let s2 = store(&f.dir, "two");
    let b = f.dir.path().join("b.tar");
    let (ok, _, err) = run(&[
        "export",
        "--store",
        s2.to_str().unwrap(),
        f.manifest.to_str().unwrap(),
        "-o",
        b.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    assert_eq!(
        std::fs::read(&a).unwrap(),
        std::fs::read(&b).unwrap(),
        "export is not deterministic"
    );

    // Across the gap: import into an empty store, build offline.
    let s3 = store(&f.dir, "three");
    let (ok, out, err) = run(&[
        "import",
        "--store",
        s3.to_str().unwrap(),
        a.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    assert_eq!(out.lines().count(), 4, "{out}");
    let (ok, _, err) = run(&["store", "verify", "--store", s3.to_str().unwrap()]);
    assert!(ok, "{err}");
    let port = f.reg.port;
    f.reg.stop();
    let imported = build(
        &s3,
        &f.dir.path().join("out-3"),
        &f.manifest,
        &["--offline"],
    )
    .unwrap();
    assert_eq!(imported, online);

    // Or through skopeo into a registry that takes the old one's place.
    let reg2 = TestRegistry::start_at(port);
    for n in &names {
        let st = std::process::Command::new("skopeo")
            .args(["copy", "--quiet", "--dest-tls-verify=false"])
            .arg(format!("oci-archive:{}:{n}", a.display()))
            .arg(format!("docker://{n}"))
            .status()
            .unwrap();
        assert!(st.success(), "skopeo copy {n}");
    }
    let s4 = store(&f.dir, "four");
    let via_registry = build(&s4, &f.dir.path().join("out-4"), &f.manifest, &[]).unwrap();
    assert_eq!(via_registry, online);
    drop(reg2);
}

#[test]
fn tampered_or_hostile_archives_are_refused_and_nothing_is_named() {
    let f = fixture();
    let s1 = store(&f.dir, "src");
    let a = f.dir.path().join("a.tar");
    let (ok, _, err) = run(&[
        "export",
        "--store",
        s1.to_str().unwrap(),
        f.manifest.to_str().unwrap(),
        "-o",
        a.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    // Rewrite the archive with one byte of the biggest blob flipped.
    let rewrite = |out: &Path, edit: &dyn Fn(&str, &mut Vec<u8>) -> Option<String>| {
        let mut ar = tar::Archive::new(std::fs::File::open(&a).unwrap());
        let mut b = tar::Builder::new(std::fs::File::create(out).unwrap());
        let mut entries: Vec<(tar::Header, String, Vec<u8>)> = Vec::new();
        for e in ar.entries().unwrap() {
            let mut e = e.unwrap();
            let path = e.path().unwrap().to_string_lossy().into_owned();
            let mut data = Vec::new();
            std::io::Read::read_to_end(&mut e, &mut data).unwrap();
            entries.push((e.header().clone(), path, data));
        }
        let biggest = entries
            .iter()
            .map(|(_, p, d)| (d.len(), p.clone()))
            .max()
            .unwrap()
            .1;
        for (mut h, p, mut d) in entries {
            let p2 = if p == biggest {
                edit(&p, &mut d).unwrap_or(p)
            } else {
                p
            };
            h.set_size(d.len() as u64);
            // Raw name bytes: the tar crate itself refuses to write "..".
            let name = &mut h.as_old_mut().name;
            name.fill(0);
            name[..p2.len()].copy_from_slice(p2.as_bytes());
            h.set_cksum();
            b.append(&h, &d[..]).unwrap();
        }
        b.finish().unwrap();
        biggest
    };
    let tampered = f.dir.path().join("tampered.tar");
    let blob = rewrite(&tampered, &|_, d| {
        let mid = d.len() / 2;
        d[mid] ^= 0xff;
        None
    });
    let s2 = store(&f.dir, "dst");
    let (ok, _, err) = run(&[
        "import",
        "--store",
        s2.to_str().unwrap(),
        tampered.to_str().unwrap(),
    ]);
    assert!(!ok);
    let hex = blob.rsplit('/').next().unwrap();
    assert!(err.contains(hex), "the bad blob is named:\n{err}");
    let index = std::fs::read_to_string(s2.join("index.json")).unwrap_or_default();
    assert!(
        !index.contains("org.opencontainers.image.ref.name"),
        "{index}"
    );
    assert!(
        !s2.join("blobs/sha256").join(hex).exists(),
        "a corrupt blob entered the store"
    );

    let hostile = f.dir.path().join("hostile.tar");
    rewrite(&hostile, &|_, _| Some("../../escape".into()));
    let (ok, _, err) = run(&[
        "import",
        "--store",
        s2.to_str().unwrap(),
        hostile.to_str().unwrap(),
    ]);
    assert!(!ok);
    assert!(
        err.contains("unexpected entry") || err.contains(".."),
        "{err}"
    );
    assert!(!f.dir.path().join("escape").exists());
}

#[test]
fn mirror_copies_locked_images_byte_for_byte_and_builds_come_from_it() {
    use common::images::{Entry, Layout, tar_layer};
    let mut f = fixture();
    // A second container whose reference names a two-platform index.
    let src = f.dir.path().join("multi");
    let mut layout = Layout::new(&src);
    let amd = layout.simple(
        "amd",
        "amd64",
        &[tar_layer(&[Entry::File("etc/arch", b"amd64\n", 0o644)])],
    );
    let arm = layout.simple(
        "arm",
        "arm64",
        &[tar_layer(&[Entry::File("etc/arch", b"arm64\n", 0o644)])],
    );
    layout.index("multi", &[("amd64", &amd), ("arm64", &arm)]);
    f.reg.push(&src, "multi", "airgap/multi:1");
    let h = f.reg.host();
    std::fs::write(
        &f.manifest,
        format!(
            "name: web\ncontainers:\n  web:\n    image: {h}/airgap/web:1\n  multi:\n    image: {h}/airgap/multi:1\ni2kit:\n  kernel: {h}/airgap/kernel:1\n  init: {h}/airgap/init:1\n  stub: {h}/airgap/stub:1\n"
        ),
    )
    .unwrap();
    let s1 = store(&f.dir, "one");
    let (ok, _, err) = run(&[
        "lock",
        "--store",
        s1.to_str().unwrap(),
        f.manifest.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let online = build(&s1, &f.dir.path().join("out-1"), &f.manifest, &[]).unwrap();

    let mirror = TestRegistry::start();
    let to = format!("{}/private", mirror.host());
    let (ok, out, err) = run(&[
        "mirror",
        "--store",
        s1.to_str().unwrap(),
        f.manifest.to_str().unwrap(),
        "--to",
        &to,
    ]);
    assert!(ok, "{err}");
    assert_eq!(out.lines().count(), 5, "{out}");
    let raw = |reference: &str| {
        let o = std::process::Command::new("skopeo")
            .args(["inspect", "--raw", "--tls-verify=false"])
            .arg(format!("docker://{reference}"))
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "{reference}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        o.stdout
    };
    for n in ["kernel", "stub", "init", "web", "multi"] {
        let a = raw(&format!("{h}/airgap/{n}:1"));
        let b = raw(&format!("{to}/airgap/{n}:1"));
        assert_eq!(a, b, "{n}: the mirror's manifest bytes differ");
    }
    // The index's arm64 image went along too.
    raw(&format!("{to}/airgap/multi@{}", arm.manifest_digest));
    let lock = std::fs::read_to_string(f.dir.path().join("i2kit.lock")).unwrap();
    assert!(
        lock.contains(&format!("\"mirror\": \"{to}/airgap/web\"")),
        "{lock}"
    );
    // The original registry is gone: a fresh store builds from the mirror, identically.
    f.reg.stop();
    let from_mirror = build(
        &store(&f.dir, "fresh"),
        &f.dir.path().join("out-2"),
        &f.manifest,
        &[],
    )
    .unwrap();
    assert_eq!(from_mirror, online);
}
