//! `i2kit pull`, `lock` and `store` against a real registry (Debian's
//! docker-registry), driven through the real binary.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::images::{Entry, Layout, noise, tar_layer};
use common::{Auth, TestRegistry, blob_names, run, run_cmd};

struct Fixture {
    reg: TestRegistry,
    tmp: tempfile::TempDir,
    amd: common::images::Built,
    arm: common::images::Built,
    index: String,
}

/// A registry holding `app:1` (amd64, 2 layers), `multi:1` (index: amd64 + arm64).
fn fixture() -> Fixture {
    let reg = TestRegistry::start();
    let tmp = tempfile::tempdir().unwrap();
    let mut layout = Layout::new(&tmp.path().join("src"));
    let base = tar_layer(&[
        Entry::Dir("bin"),
        Entry::File("bin/hello", b"#!/bin/sh\necho hi\n", 0o755),
    ]);
    let top = tar_layer(&[Entry::File("etc/motd", b"welcome\n", 0o644)]);
    let amd = layout.simple("app", "amd64", &[base.clone(), top.clone()]);
    let arm = layout.simple(
        "app-arm",
        "arm64",
        &[tar_layer(&[Entry::File("arch", b"arm64", 0o644)])],
    );
    let index = layout.index("multi", &[("amd64", &amd), ("arm64", &arm)]);
    reg.push(&layout.dir, "app", "test/app:1");
    reg.push(&layout.dir, "multi", "test/multi:1");
    // The same image converted to Docker v2 schema 2 media types.
    let out = std::process::Command::new("skopeo")
        .args([
            "copy",
            "--quiet",
            "--format",
            "v2s2",
            "--dest-tls-verify=false",
        ])
        .arg(format!("oci:{}:app", layout.dir.display()))
        .arg(format!("docker://{}/test/docker:1", reg.host()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Fixture {
        reg,
        tmp,
        amd,
        arm,
        index,
    }
}

fn store_arg(dir: &Path) -> String {
    dir.display().to_string()
}

#[test]
fn pull_by_tag_then_by_digest_and_repull_fetches_nothing() {
    let f = fixture();
    let store = f.tmp.path().join("store");
    let r = format!("{}/test/app:1", f.reg.host());
    let (ok, out, err) = run(&["pull", "--store", &store_arg(&store), "--json", &r]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["manifest"], f.amd.manifest_digest);
    assert_eq!(v["layers"].as_array().unwrap().len(), 2);
    for d in f
        .amd
        .layer_digests
        .iter()
        .chain([&f.amd.config_digest, &f.amd.manifest_digest])
    {
        assert!(
            blob_names(&store).contains(&d[7..].to_string()),
            "{d} stored"
        );
    }
    let mtimes = |s: &Path| -> Vec<_> {
        blob_names(s)
            .iter()
            .map(|n| {
                std::fs::metadata(s.join("blobs/sha256").join(n))
                    .unwrap()
                    .modified()
                    .unwrap()
            })
            .collect()
    };
    let before = mtimes(&store);
    // Human output: "REF DIGEST"; nothing fetched the second time.
    let (ok, out, err) = run(&["pull", "--store", &store_arg(&store), &r]);
    assert!(ok, "{err}");
    assert_eq!(out.trim(), format!("{r} {}", f.amd.manifest_digest));
    assert!(!err.contains("fetching"), "re-pull fetched: {err}");
    assert_eq!(before, mtimes(&store));
    // By digest, into a fresh store.
    let store2 = f.tmp.path().join("store2");
    let by_digest = format!("{}/test/app@{}", f.reg.host(), f.amd.manifest_digest);
    let (ok, out, err) = run(&["pull", "--store", &store_arg(&store2), &by_digest]);
    assert!(ok, "{err}");
    assert!(out.contains(&f.amd.manifest_digest));
    // Tag and digest together: the digest decides.
    let both = format!("{}/test/app:1@{}", f.reg.host(), f.amd.manifest_digest);
    let (ok, out, err) = run(&[
        "pull",
        "--store",
        &store_arg(&f.tmp.path().join("s3")),
        &both,
    ]);
    assert!(ok, "tag+digest pulls by digest: {err}");
    assert!(out.contains(&f.amd.manifest_digest));
    let elsewhere = format!("{}/test/app:1@{}", f.reg.host(), f.arm.manifest_digest);
    let (ok, _, err) = run(&[
        "pull",
        "--store",
        &store_arg(&f.tmp.path().join("s4")),
        &elsewhere,
    ]);
    assert!(!ok && err.contains("not found in registry"), "{err}");
    // The store passes its own verification.
    let (ok, _, err) = run(&["store", "verify", "--store", &store_arg(&store)]);
    assert!(ok, "{err}");
}

#[test]
fn docker_schema2_media_types_work() {
    let f = fixture();
    let store = f.tmp.path().join("store");
    let (ok, out, err) = run(&[
        "pull",
        "--store",
        &store_arg(&store),
        "--json",
        &format!("{}/test/docker:1", f.reg.host()),
    ]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let m = std::fs::read(
        store
            .join("blobs/sha256")
            .join(&v["manifest"].as_str().unwrap()[7..]),
    )
    .unwrap();
    let m: serde_json::Value = serde_json::from_slice(&m).unwrap();
    assert_eq!(
        m["mediaType"],
        "application/vnd.docker.distribution.manifest.v2+json"
    );
    assert_eq!(v["layers"].as_array().unwrap().len(), 2);
    assert!(run(&["store", "verify", "--store", &store_arg(&store)]).0);
}

#[test]
fn index_selects_the_platform_and_lists_what_it_offers() {
    let f = fixture();
    let store = f.tmp.path().join("store");
    let r = format!("{}/test/multi:1", f.reg.host());
    let (ok, out, err) = run(&[
        "pull",
        "--store",
        &store_arg(&store),
        "--json",
        "--platform",
        "linux/arm64",
        &r,
    ]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["digest"], f.index);
    assert_eq!(v["manifest"], f.arm.manifest_digest);
    let (ok, out, _) = run(&["pull", "--store", &store_arg(&store), "--json", &r]);
    assert!(ok);
    assert!(
        out.contains(&f.amd.manifest_digest),
        "default platform is linux/amd64"
    );
    let (ok, _, err) = run(&[
        "pull",
        "--store",
        &store_arg(&store),
        "--platform",
        "linux/s390x",
        &r,
    ]);
    assert!(!ok);
    assert!(
        err.contains("no image for platform linux/s390x")
            && err.contains("linux/amd64, linux/arm64"),
        "{err}"
    );
    // A single-platform image of the wrong architecture is refused too.
    let (ok, _, err) = run(&[
        "pull",
        "--store",
        &store_arg(&store),
        "--platform",
        "linux/arm64",
        &format!("{}/test/app:1", f.reg.host()),
    ]);
    assert!(!ok);
    assert!(err.contains("is a linux/amd64 image"), "{err}");
}

#[test]
fn store_is_readable_by_skopeo() {
    let f = fixture();
    let store = f.tmp.path().join("store");
    let r = format!("{}/test/app:1", f.reg.host());
    assert!(run(&["pull", "--store", &store_arg(&store), &r]).0);
    // skopeo's oci: transport names an image by its org.opencontainers.image.ref.name.
    let out = std::process::Command::new("skopeo")
        .args(["inspect", "--raw", &format!("oci:{}:{r}", store.display())])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(common::images::sha(&out.stdout), f.amd.manifest_digest);
    let dest = f.tmp.path().join("copy");
    let out = std::process::Command::new("skopeo")
        .args([
            "copy",
            "--quiet",
            &format!("oci:{}:{r}", store.display()),
            &format!("dir:{}", dest.display()),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for d in &f.amd.layer_digests {
        assert!(dest.join(&d[7..]).exists(), "layer {d} copied out");
    }
}

#[test]
fn pull_from_an_oci_layout_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let mut layout = Layout::new(&tmp.path().join("layout"));
    let img = layout.simple(
        "v1",
        "amd64",
        &[tar_layer(&[Entry::File("a", b"a", 0o644)])],
    );
    let store = tmp.path().join("store");
    let (ok, out, err) = run(&[
        "pull",
        "--store",
        &store_arg(&store),
        &format!("oci:{}:v1", layout.dir.display()),
    ]);
    assert!(ok, "{err}");
    assert!(out.contains(&img.manifest_digest));
    let (ok, _, err) = run(&[
        "pull",
        "--store",
        &store_arg(&store),
        &format!("oci:{}:v2", layout.dir.display()),
    ]);
    assert!(!ok);
    assert!(
        err.contains("no manifest named \"v2\"") && err.contains("v1"),
        "{err}"
    );
}

#[test]
fn concurrent_pulls_into_one_store_both_succeed() {
    let f = fixture();
    let store = f.tmp.path().join("store");
    let refs = [
        format!("{}/test/app:1", f.reg.host()),
        format!("{}/test/multi:1", f.reg.host()),
    ];
    let spawn = || {
        common::i2kit()
            .args(["pull", "--store", &store_arg(&store)])
            .args(&refs)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn(), spawn());
    for c in [a, b] {
        let out = c.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let (ok, out, err) = run(&["store", "verify", "--store", &store_arg(&store), "--json"]);
    assert!(ok, "{out}{err}");
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(store.join("index.json")).unwrap()).unwrap();
    assert_eq!(
        index["manifests"].as_array().unwrap().len(),
        2,
        "one entry per reference"
    );
    assert_eq!(
        std::fs::read_dir(store.join(".i2kit/ingest"))
            .unwrap()
            .count(),
        0
    );
}

#[test]
fn unknown_repository_tag_and_malformed_reference_fail_clearly() {
    let f = fixture();
    let store = f.tmp.path().join("store");
    let (ok, _, err) = run(&[
        "pull",
        "--store",
        &store_arg(&store),
        &format!("{}/test/nope:1", f.reg.host()),
    ]);
    assert!(!ok);
    assert!(
        err.contains("not found in registry") && err.contains("test/nope"),
        "{err}"
    );
    let (ok, _, err) = run(&[
        "pull",
        "--store",
        &store_arg(&store),
        &format!("{}/test/app:2", f.reg.host()),
    ]);
    assert!(!ok);
    assert!(err.contains("not found in registry"), "{err}");
    let (ok, _, err) = run(&["pull", "--store", &store_arg(&store), "Bad/Name"]);
    assert!(!ok);
    assert!(err.contains("lowercase"), "{err}");
}

#[test]
fn tampered_registry_blob_is_rejected_and_not_stored() {
    let f = fixture();
    let victim = &f.amd.layer_digests[0];
    let path = f.reg.blob_data(&victim[7..]);
    let mut bytes = std::fs::read(&path).unwrap();
    let n = bytes.len();
    bytes[n / 2] ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();
    let store = f.tmp.path().join("store");
    let (ok, _, err) = run(&[
        "pull",
        "--store",
        &store_arg(&store),
        &format!("{}/test/app:1", f.reg.host()),
    ]);
    assert!(!ok, "tampered blob accepted");
    assert!(
        err.contains("digest mismatch") && err.contains(victim.as_str()),
        "{err}"
    );
    assert!(
        err.contains(&common::images::sha(&bytes)),
        "actual digest named: {err}"
    );
    assert!(!blob_names(&store).contains(&victim[7..].to_string()));
    assert_eq!(
        std::fs::read_dir(store.join(".i2kit/ingest"))
            .unwrap()
            .count(),
        0
    );
}

/// A registry holding a 6 MiB single-layer image `test/big:1`, a TCP proxy in
/// front of it sending 64 KiB every 20 ms (≈ 3 MiB/s), and an `i2kit pull`
/// through the proxy that has received 1 MiB: still running when a test
/// interrupts it.
fn slow_pull_in_progress() -> (
    TestRegistry,
    tempfile::TempDir,
    common::images::Built,
    common::proxy::TcpThrottle,
    std::process::Child,
) {
    let reg = TestRegistry::start();
    let tmp = tempfile::tempdir().unwrap();
    let mut layout = Layout::new(&tmp.path().join("src"));
    let big = noise(7, 6 << 20);
    let img = layout.simple(
        "big",
        "amd64",
        &[tar_layer(&[Entry::File("big", &big, 0o644)])],
    );
    reg.push(&layout.dir, "big", "test/big:1");
    let proxy = common::proxy::TcpThrottle::start(reg.port, 64 << 10, Duration::from_millis(20));
    let child = common::i2kit()
        .args([
            "pull",
            "--store",
            &store_arg(&tmp.path().join("store")),
            &format!("127.0.0.1:{}/test/big:1", proxy.port),
        ])
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    while proxy.bytes.load(std::sync::atomic::Ordering::SeqCst) < (1 << 20) {
        std::thread::sleep(Duration::from_millis(20));
    }
    (reg, tmp, img, proxy, child)
}

#[test]
fn registry_dying_mid_pull_fails_within_budget_and_leaves_no_partial_blob() {
    let (_reg, tmp, img, proxy, child) = slow_pull_in_progress();
    let store = tmp.path().join("store");
    let t = Instant::now();
    proxy.kill();
    let out = child.wait_with_output().unwrap();
    let took = t.elapsed();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("failed after 5 attempt(s)"), "{err}");
    assert!(took < Duration::from_secs(20), "gave up after {took:?}");
    assert!(
        !blob_names(&store).contains(&img.layer_digests[0][7..].to_string()),
        "no partial blob"
    );
    assert_eq!(
        std::fs::read_dir(store.join(".i2kit/ingest"))
            .unwrap()
            .count(),
        0
    );
}

#[test]
fn killed_pull_leaves_no_partial_blob_and_gc_clears_its_temp_file() {
    let (reg, tmp, img, proxy, mut child) = slow_pull_in_progress();
    let store = tmp.path().join("store");
    child.kill().unwrap(); // SIGKILL: no destructor runs
    child.wait().unwrap();
    assert!(
        !blob_names(&store).contains(&img.layer_digests[0][7..].to_string()),
        "no partial blob"
    );
    assert_eq!(
        std::fs::read_dir(store.join(".i2kit/ingest"))
            .unwrap()
            .count(),
        1,
        "the partial download stayed in ingest/"
    );
    let (ok, _, err) = run(&["store", "gc", "--store", &store_arg(&store)]);
    assert!(ok, "{err}");
    assert_eq!(
        std::fs::read_dir(store.join(".i2kit/ingest"))
            .unwrap()
            .count(),
        0
    );
    proxy.kill();
    // The interrupted pull completes on the next try.
    let (ok, _, err) = run(&[
        "pull",
        "--store",
        &store_arg(&store),
        &format!("{}/test/big:1", reg.host()),
    ]);
    assert!(ok, "{err}");
    assert!(run(&["store", "verify", "--store", &store_arg(&store)]).0);
}

#[test]
fn transient_503_and_429_are_retried() {
    let f = fixture();
    for status in [503u16, 429] {
        let proxy = common::proxy::HttpProxy::start(
            f.reg.port,
            common::proxy::HttpFaults {
                fail_every: Some((2, status)),
                ..Default::default()
            },
        );
        let store = f.tmp.path().join(format!("store{status}"));
        let (ok, out, err) = run(&[
            "pull",
            "--store",
            &store_arg(&store),
            &format!("{}/test/app:1", proxy.host()),
        ]);
        assert!(ok, "{err}");
        assert!(out.contains(&f.amd.manifest_digest));
        assert!(
            proxy.injected.load(std::sync::atomic::Ordering::SeqCst) >= 2,
            "faults were injected"
        );
    }
}

fn docker_config(dir: &Path, registry: &str, user: &str, pass: &str) -> std::path::PathBuf {
    let d = dir.join(format!("docker-{user}-{pass}"));
    std::fs::create_dir_all(&d).unwrap();
    let auth = base64_encode(format!("{user}:{pass}").as_bytes());
    std::fs::write(
        d.join("config.json"),
        format!(r#"{{"auths":{{"{registry}":{{"auth":"{auth}"}}}}}}"#),
    )
    .unwrap();
    d
}

fn base64_encode(b: &[u8]) -> String {
    let out = std::process::Command::new("base64")
        .arg("-w0")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    let mut out = out;
    out.stdin.take().unwrap().write_all(b).unwrap();
    String::from_utf8(out.wait_with_output().unwrap().stdout).unwrap()
}

#[test]
fn basic_auth_registry_uses_docker_config_and_never_prints_the_secret() {
    let reg = TestRegistry::start_with(Auth::Htpasswd {
        user: "ci".into(),
        password: "s3cret-pass".into(),
    });
    let tmp = tempfile::tempdir().unwrap();
    let mut layout = Layout::new(&tmp.path().join("src"));
    let img = layout.simple(
        "app",
        "amd64",
        &[tar_layer(&[Entry::File("x", b"x", 0o644)])],
    );
    common::skopeo_push(
        &layout.dir,
        "app",
        &format!("{}/private/app:1", reg.host()),
        Some("ci:s3cret-pass"),
    );
    let r = format!("{}/private/app:1", reg.host());
    let store = tmp.path().join("store");

    let (ok, _, err) = run(&["pull", "--store", &store_arg(&store), &r]);
    assert!(!ok);
    assert!(
        err.contains(&format!(
            "authentication failed for registry {}",
            reg.host()
        )),
        "{err}"
    );

    let bad = docker_config(tmp.path(), &reg.host(), "ci", "wrong-password-xyz");
    let (ok, _, err) = run_cmd(common::i2kit().env("DOCKER_CONFIG", &bad).args([
        "pull",
        "--store",
        &store_arg(&store),
        &r,
    ]));
    assert!(!ok);
    assert!(
        err.contains(&format!(
            "authentication failed for registry {}",
            reg.host()
        )),
        "{err}"
    );
    assert!(!err.contains("wrong-password-xyz"), "secret printed: {err}");

    let good = docker_config(tmp.path(), &reg.host(), "ci", "s3cret-pass");
    let (ok, out, err) = run_cmd(common::i2kit().env("DOCKER_CONFIG", &good).args([
        "pull",
        "--store",
        &store_arg(&store),
        &r,
    ]));
    assert!(ok, "{err}");
    assert!(out.contains(&img.manifest_digest));
}

#[test]
fn bearer_token_challenge_is_answered() {
    let f = fixture();
    let proxy = common::proxy::HttpProxy::start(
        f.reg.port,
        common::proxy::HttpFaults {
            bearer: Some(("tok".into(), "en-pass".into())),
            ..Default::default()
        },
    );
    let r = format!("{}/test/app:1", proxy.host());
    let store = f.tmp.path().join("store");
    let good = docker_config(f.tmp.path(), &proxy.host(), "tok", "en-pass");
    let (ok, out, err) = run_cmd(common::i2kit().env("DOCKER_CONFIG", &good).args([
        "pull",
        "--store",
        &store_arg(&store),
        &r,
    ]));
    assert!(ok, "{err}");
    assert!(out.contains(&f.amd.manifest_digest));
    let bad = docker_config(f.tmp.path(), &proxy.host(), "tok", "nope-nope");
    let (ok, _, err) = run_cmd(common::i2kit().env("DOCKER_CONFIG", &bad).args([
        "pull",
        "--store",
        &store_arg(&f.tmp.path().join("s2")),
        &r,
    ]));
    assert!(!ok);
    assert!(
        err.contains("authentication failed for registry") && !err.contains("nope-nope"),
        "{err}"
    );
}

#[test]
fn malformed_and_schema1_manifests_are_rejected() {
    let tmp = tempfile::tempdir().unwrap();
    let mut layout = Layout::new(&tmp.path().join("l"));
    let bad = layout.blob(b"{\"schemaVersion\": 2, \"config\": ");
    layout.name(
        "bad",
        "application/vnd.oci.image.manifest.v1+json",
        &bad,
        31,
    );
    let s1 = br#"{"schemaVersion":1,"name":"x","tag":"1","fsLayers":[]}"#;
    let s1d = layout.blob(s1);
    layout.name(
        "s1",
        "application/vnd.oci.image.manifest.v1+json",
        &s1d,
        s1.len(),
    );
    let store = tmp.path().join("store");
    let (ok, _, err) = run(&[
        "pull",
        "--store",
        &store_arg(&store),
        &format!("oci:{}:bad", layout.dir.display()),
    ]);
    assert!(!ok);
    assert!(err.contains("not a valid image manifest"), "{err}");
    let (ok, _, err) = run(&[
        "pull",
        "--store",
        &store_arg(&store),
        &format!("oci:{}:s1", layout.dir.display()),
    ]);
    assert!(!ok);
    assert!(err.contains("schema 1"), "{err}");
}

#[test]
fn lock_pins_every_image_and_check_names_the_stale_entry() {
    let f = fixture();
    let h = f.reg.host();
    let dir = f.tmp.path().join("proj");
    std::fs::create_dir_all(&dir).unwrap();
    let manifest = dir.join("app.yml");
    let write = |container_image: &str| {
        std::fs::write(
            &manifest,
            format!(
                "name: app\ncontainers:\n  web:\n    image: {container_image}\n    ports: [80]\ni2kit:\n  kernel: {h}/test/app:1\n  init: {h}/test/app:1\n  stub: {h}/test/multi:1\n"
            ),
        )
        .unwrap();
    };
    write(&format!("{h}/test/multi:1"));
    let store = f.tmp.path().join("store");
    let (ok, _, err) = run(&[
        "lock",
        "--store",
        &store_arg(&store),
        manifest.to_str().unwrap(),
        "--platform",
        "linux/amd64",
        "--platform",
        "linux/arm64",
    ]);
    // app:1 has no arm64 image: locking both platforms must say so.
    assert!(!ok);
    assert!(
        err.contains("test/app:1") && err.contains("linux/arm64"),
        "{err}"
    );
    let (ok, _, err) = run(&[
        "lock",
        "--store",
        &store_arg(&store),
        manifest.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let lock: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("i2kit.lock")).unwrap()).unwrap();
    assert_eq!(
        lock["images"][format!("{h}/test/multi:1")]["digest"],
        f.index
    );
    assert_eq!(
        lock["images"][format!("{h}/test/multi:1")]["platforms"]["linux/amd64"],
        f.amd.manifest_digest
    );
    assert_eq!(lock["images"].as_object().unwrap().len(), 2);
    let (ok, out, err) = run(&["lock", "--check", manifest.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(out.contains("up to date"));
    write(&format!("{h}/test/other:2"));
    let (ok, _, err) = run(&["lock", "--check", manifest.to_str().unwrap()]);
    assert!(!ok);
    assert!(
        err.contains(&format!(
            "{h}/test/other:2: in the manifest but not in the lock"
        )),
        "{err}"
    );
    std::fs::remove_file(dir.join("i2kit.lock")).unwrap();
    let (ok, _, err) = run(&["lock", "--check", manifest.to_str().unwrap()]);
    assert!(!ok && err.contains("does not exist"), "{err}");
}

#[test]
fn store_gc_removes_unreachable_blobs_and_verify_reports_corruption() {
    let f = fixture();
    let store = f.tmp.path().join("store");
    assert!(
        run(&[
            "pull",
            "--store",
            &store_arg(&store),
            &format!("{}/test/app:1", f.reg.host())
        ])
        .0
    );
    let orphan = store
        .join("blobs/sha256")
        .join(&common::images::sha(b"orphan")[7..]);
    std::fs::write(&orphan, b"orphan").unwrap();
    std::fs::write(store.join(".i2kit/ingest/abandoned"), b"partial").unwrap();
    let (ok, out, err) = run(&["store", "gc", "--store", &store_arg(&store), "--json"]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["removed"].as_array().unwrap().len(), 1);
    assert_eq!(v["temp_files"], 1);
    assert!(!orphan.exists());
    assert_eq!(
        blob_names(&store).len(),
        4,
        "manifest, config and two layers kept"
    );
    let layer = store
        .join("blobs/sha256")
        .join(&f.amd.layer_digests[1][7..]);
    std::fs::write(&layer, b"corrupted").unwrap();
    let (ok, out, _) = run(&["store", "verify", "--store", &store_arg(&store)]);
    assert!(!ok);
    assert!(
        out.contains(&format!("corrupt {}", f.amd.layer_digests[1])),
        "{out}"
    );
}
