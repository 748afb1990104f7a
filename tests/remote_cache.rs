//! Two "CI runners" (two stores) sharing builds through one real
//! docker-registry with --cache-to / --cache-from, and cache poisoning.

mod common;

use std::path::{Path, PathBuf};

use common::boot::push_build_inputs;
use common::{TestRegistry, run};

struct Fixture {
    reg: TestRegistry,
    dir: tempfile::TempDir,
    manifest: PathBuf,
}

fn fixture() -> Fixture {
    let reg = TestRegistry::start();
    push_build_inputs(&reg, "in");
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("web.yml");
    write_manifest(&manifest, &reg.host(), "1");
    Fixture { reg, dir, manifest }
}

fn write_manifest(path: &Path, h: &str, mode: &str) {
    std::fs::write(
        path,
        format!(
            "name: web\ncontainers:\n  web:\n    image: {h}/in/web:1\n    environment: [\"MODE={mode}\"]\ni2kit:\n  kernel: {h}/in/kernel:1\n  init: {h}/in/init:1\n  stub: {h}/in/stub:1\n"
        ),
    )
    .unwrap();
}

struct Built {
    ok: bool,
    err: String,
    outputs: Vec<(String, String)>,
}

fn build(f: &Fixture, runner: &str, extra: &[&str]) -> Built {
    let store = f.dir.path().join(format!("store-{runner}"));
    let out = f.dir.path().join(format!("out-{runner}"));
    let mut args = vec![
        "build",
        "--store",
        store.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--format",
        "raw",
        "--format",
        "kernel+initrd",
    ];
    args.extend(extra);
    args.push(f.manifest.to_str().unwrap());
    let (ok, _, err) = run(&args);
    let mut outputs: Vec<(String, String)> = std::fs::read_dir(&out)
        .map(|d| {
            d.flatten()
                .map(|e| {
                    let bytes = std::fs::read(e.path()).unwrap();
                    (
                        e.file_name().to_string_lossy().into_owned(),
                        common::images::sha(&bytes),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    outputs.sort();
    Built { ok, err, outputs }
}

fn blob_count(store: &Path) -> usize {
    common::blob_names(store).len()
}

#[test]
fn a_build_pushed_by_one_runner_is_a_verified_hit_for_another() {
    let f = fixture();
    let cache = format!("{}/cache/web", f.reg.host());
    let a = build(&f, "a", &["--cache-to", &cache]);
    assert!(a.ok, "{}", a.err);
    assert!(a.err.contains("remote cache: pushed"), "{}", a.err);
    assert_eq!(
        a.outputs.len(),
        5,
        "raw, kernel, initrd, cmdline, provenance: {:?}",
        a.outputs
    );
    // Runner B: a hit, byte-identical outputs, and no input layers fetched.
    let b = build(&f, "b", &["--cache-from", &cache]);
    assert!(b.ok, "{}", b.err);
    assert!(b.err.contains("remote cache hit"), "{}", b.err);
    assert!(!b.err.contains("segment"), "B built something:\n{}", b.err);
    assert_eq!(b.outputs, a.outputs);
    let a_blobs = common::blob_names(&f.dir.path().join("store-a"));
    let b_blobs = common::blob_names(&f.dir.path().join("store-b"));
    let kernel_layer = a_blobs
        .iter()
        .max_by_key(|n| {
            std::fs::metadata(f.dir.path().join("store-a/blobs/sha256").join(n))
                .unwrap()
                .len()
        })
        .unwrap();
    assert!(
        !b_blobs.contains(kernel_layer),
        "B downloaded the kernel layer"
    );
    // Pushing again: nothing to do. Another runner building from scratch
    // pushes the same bytes (to another repo) — the manifest is deterministic.
    let again = build(&f, "a", &["--cache-to", &cache]);
    assert!(
        again.err.contains("already holds this build"),
        "{}",
        again.err
    );
    let c = build(
        &f,
        "c",
        &["--cache-to", &format!("{}/cache/other", f.reg.host())],
    );
    assert!(c.ok, "{}", c.err);
    let digest_of = |repo: &str| {
        let out = std::process::Command::new("skopeo")
            .args(["inspect", "--raw", "--tls-verify=false"])
            .arg(format!("docker://{}/{repo}:{}", f.reg.host(), tag(&a.err)))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        common::images::sha(&out.stdout)
    };
    assert_eq!(digest_of("cache/web"), digest_of("cache/other"));
    // Compat media types round-trip too.
    let compat = format!("{}/cache/compat", f.reg.host());
    assert!(build(&f, "a", &["--cache-to", &compat, "--cache-compat"]).ok);
    let d = build(&f, "d", &["--cache-from", &compat]);
    assert!(d.ok && d.err.contains("remote cache hit"), "{}", d.err);
    assert_eq!(d.outputs, a.outputs);
    // One env var changed: a different key, a miss, a local build.
    write_manifest(&f.manifest, &f.reg.host(), "2");
    let e = build(&f, "b", &["--cache-from", &cache]);
    assert!(e.ok, "{}", e.err);
    assert!(e.err.contains("remote cache miss"), "{}", e.err);
    assert_ne!(e.outputs, a.outputs);
}

/// `bk-<hex>` from a build's stderr.
fn tag(err: &str) -> String {
    let i = err.find(":bk-").expect("a pushed tag") + 1;
    err[i..i + 67].to_string()
}

fn put_manifest(f: &Fixture, repo: &str, reference: &str, bytes: &[u8]) {
    let url = format!("http://{}/v2/{repo}/manifests/{reference}", f.reg.host());
    let r = ureq::put(&url)
        .header("Content-Type", "application/vnd.oci.image.manifest.v1+json")
        .send(bytes)
        .unwrap();
    assert_eq!(r.status(), 201);
}

fn get_manifest(f: &Fixture, repo: &str, reference: &str) -> serde_json::Value {
    let url = format!("http://{}/v2/{repo}/manifests/{reference}", f.reg.host());
    let mut r = ureq::get(&url)
        .header("Accept", "application/vnd.oci.image.manifest.v1+json")
        .call()
        .unwrap();
    serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap()
}

#[test]
fn poisoned_cache_entries_are_rejected_and_leave_nothing_behind() {
    let f = fixture();
    let cache = format!("{}/cache/web", f.reg.host());
    let a = build(&f, "a", &["--cache-to", &cache]);
    assert!(a.ok, "{}", a.err);
    let bk = tag(&a.err);
    let good = get_manifest(&f, "cache/web", &bk);
    let biggest = |m: &serde_json::Value| {
        m["layers"]
            .as_array()
            .unwrap()
            .iter()
            .enumerate()
            .max_by_key(|(_, l)| l["size"].as_u64().unwrap())
            .map(|(i, _)| i)
            .unwrap()
    };
    let big = biggest(&good);
    type Poison = Box<dyn Fn(&mut serde_json::Value)>;
    let cases: Vec<(&str, Poison, &str)> = vec![
        (
            "config digest",
            Box::new(|m| {
                // Another blob the repository holds, as the "plan".
                m["config"]["digest"] = m["layers"][0]["digest"].clone();
                m["config"]["size"] = m["layers"][0]["size"].clone();
            }),
            "is not this build's key",
        ),
        (
            "truncated slice",
            Box::new(move |m| {
                let l = &mut m["layers"][big]["annotations"]["dev.i2kit.slice.size"];
                let n: u64 = l.as_str().unwrap().parse().unwrap();
                *l = (n + 4096).to_string().into();
            }),
            "inflates to",
        ),
        (
            "size beyond its annotation",
            Box::new(move |m| {
                let n = m["layers"][big]["size"].as_u64().unwrap();
                m["layers"][big]["size"] = (n - 100).into();
            }),
            "",
        ),
    ];
    for (i, (what, poison, msg)) in cases.iter().enumerate() {
        let mut m = good.clone();
        poison(&mut m);
        put_manifest(&f, "cache/web", &bk, &serde_json::to_vec(&m).unwrap());
        let runner = format!("p{i}");
        let before = blob_count(&f.dir.path().join(format!("store-{runner}")));
        let r = build(&f, &runner, &["--cache-from", &cache]);
        assert!(!r.ok, "{what}: accepted\n{}", r.err);
        assert!(
            r.err.contains("rejected") && r.err.contains(msg),
            "{what}: {}",
            r.err
        );
        assert!(
            r.outputs.is_empty(),
            "{what}: outputs written: {:?}",
            r.outputs
        );
        let index =
            std::fs::read_to_string(f.dir.path().join(format!("store-{runner}/index.json")))
                .unwrap_or_default();
        assert!(
            !index.contains("i2kit-build:"),
            "{what}: a build record entered the store"
        );
        let _ = before;
    }
    // A blob tampered in the registry's storage.
    put_manifest(&f, "cache/web", &bk, &serde_json::to_vec(&good).unwrap());
    let hex = good["layers"][big]["digest"]
        .as_str()
        .unwrap()
        .trim_start_matches("sha256:")
        .to_string();
    let data = f.reg.blob_data(&hex);
    let mut bytes = std::fs::read(&data).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&data, bytes).unwrap();
    let r = build(&f, "t", &["--cache-from", &cache]);
    assert!(!r.ok && r.err.contains("rejected"), "{}", r.err);
    assert!(r.outputs.is_empty());
    assert!(!common::blob_names(&f.dir.path().join("store-t")).contains(&hex));
    // Bad cache locations are refused before any request.
    let r = build(&f, "x", &["--cache-to", &format!("{cache}:latest")]);
    assert!(!r.ok && r.err.contains("without a tag"), "{}", r.err);
}

#[test]
fn verify_rebuilds_from_the_plan_and_names_what_differs() {
    let f = fixture();
    let cache = format!("{}/cache/web", f.reg.host());
    let lock_store = f.dir.path().join("store-lock");
    let (ok, _, err) = run(&[
        "lock",
        "--store",
        lock_store.to_str().unwrap(),
        f.manifest.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let a = build(&f, "a", &["--cache-to", &cache, "--reproducible"]);
    assert!(a.ok, "{}", a.err);
    let out = f.dir.path().join("out-a");
    let verify = |store: &str, extra: &[&str]| {
        let s = f.dir.path().join(format!("store-{store}"));
        let mut args = vec![
            "verify",
            "--store",
            s.to_str().unwrap(),
            out.to_str().unwrap(),
        ];
        args.extend(extra);
        run(&args)
    };
    let (ok, stdout, err) = verify("a", &[]);
    assert!(ok, "{stdout}\n{err}");
    assert!(err.contains("reproduced bit for bit"), "{err}");
    assert_eq!(
        stdout.lines().filter(|l| l.starts_with("ok")).count(),
        5,
        "{stdout}"
    );
    // Where the build did not run: the plan comes from the cache entry.
    let (ok, _, err) = verify("elsewhere", &[]);
    assert!(!ok && err.contains("--cache-from"), "{err}");
    let (ok, stdout, err) = verify("elsewhere", &["--cache-from", &cache]);
    assert!(ok, "{stdout}\n{err}");
    // A changed output is named.
    let initrd = out.join("web-initrd.img");
    let mut b = std::fs::read(&initrd).unwrap();
    b[100] ^= 1;
    std::fs::write(&initrd, b).unwrap();
    let (ok, stdout, err) = verify("a", &[]);
    assert!(!ok, "{stdout}");
    assert!(stdout.contains("DIFFERS web-initrd.img"), "{stdout}");
    assert!(err.contains("NOT reproduced"), "{err}");
}

#[test]
fn trusted_keys_decide_which_entries_are_hits() {
    let f = fixture();
    let keys = |name: &str| {
        let prefix = f.dir.path().join(name);
        let (ok, id, err) = run(&["key", "generate", prefix.to_str().unwrap()]);
        assert!(ok, "{err}");
        (
            prefix.with_extension("key"),
            prefix.with_extension("pub"),
            id.trim().to_string(),
        )
    };
    let (ci_key, ci_pub, ci_id) = keys("ci");
    let (_, other_pub, _) = keys("other");
    let signed = format!("{}/cache/signed", f.reg.host());
    let unsigned = format!("{}/cache/unsigned", f.reg.host());
    let a = build(
        &f,
        "a",
        &[
            "--cache-to",
            &signed,
            "--sign-key",
            ci_key.to_str().unwrap(),
        ],
    );
    assert!(
        a.ok && a.err.contains("pushed the signature by key"),
        "{}",
        a.err
    );
    let again = build(
        &f,
        "a",
        &[
            "--cache-to",
            &signed,
            "--sign-key",
            ci_key.to_str().unwrap(),
        ],
    );
    assert!(
        again.err.contains("already holds the signature"),
        "{}",
        again.err
    );
    assert!(build(&f, "a", &["--cache-to", &unsigned]).ok);
    // Trusted signer: a hit that says who signed it.
    let b = build(
        &f,
        "b",
        &[
            "--cache-from",
            &signed,
            "--trust-key",
            ci_pub.to_str().unwrap(),
        ],
    );
    assert!(b.ok, "{}", b.err);
    assert!(
        b.err.contains(&format!("signed by trusted key {ci_id}")),
        "{}",
        b.err
    );
    assert_eq!(b.outputs, a.outputs);
    // Another trusted key, or no signature at all: ignored, built locally.
    for (runner, repo, key) in [("c", &signed, &other_pub), ("d", &unsigned, &ci_pub)] {
        let r = build(
            &f,
            runner,
            &["--cache-from", repo, "--trust-key", key.to_str().unwrap()],
        );
        assert!(r.ok, "{}", r.err);
        assert!(
            r.err.contains("is not signed by a trusted key"),
            "{}",
            r.err
        );
        assert!(!r.err.contains("remote cache hit"), "{}", r.err);
        assert_eq!(r.outputs, a.outputs, "the local build is the same build");
    }
    // A signing key without a cache to push to is a usage error.
    let r = build(&f, "e", &["--sign-key", ci_key.to_str().unwrap()]);
    assert!(!r.ok && r.err.contains("--sign-key"), "{}", r.err);
}
