//! `i2kit push aws` against a real AWS-API server (moto) on loopback. moto
//! accepts what EBS would refuse, so every test reads the snapshot back block
//! by block and checks what RegisterImage received through moto's recorder.

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

use common::moto::{FaultProxy, Moto, read_snapshot};
use sha2::Digest;

const BS: u64 = 512 * 1024;
const SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";

fn push(endpoint: &str, image: &Path, key: (&str, &str), extra: &[&str]) -> (bool, String, String) {
    let mut c = common::i2kit();
    c.args([
        "push",
        "aws",
        "--endpoint-url",
        endpoint,
        "--region",
        "us-east-1",
    ])
    .args(extra)
    .arg(image)
    .env("AWS_ACCESS_KEY_ID", key.0)
    .env("AWS_SECRET_ACCESS_KEY", key.1)
    .env("AWS_EC2_METADATA_DISABLED", "true")
    .env_remove("AWS_PROFILE")
    .env_remove("AWS_ENDPOINT_URL");
    common::run_cmd(&mut c)
}

/// A sparse image: data in blocks 0 and 3, a block of written zeros (5),
/// and a partial last block; the rest holes.
fn sparse_image(dir: &Path, blocks: u64, tail: u64) -> std::path::PathBuf {
    let p = dir.join("app.raw");
    let f = std::fs::File::create(&p).unwrap();
    f.set_len(blocks * BS + tail).unwrap();
    f.write_all_at(&common::images::noise(1, BS as usize), 0)
        .unwrap();
    f.write_all_at(b"block three", 3 * BS + 4096).unwrap();
    f.write_all_at(&vec![0u8; BS as usize], 5 * BS).unwrap();
    if tail > 0 {
        f.write_all_at(&vec![0xA5; tail as usize], blocks * BS)
            .unwrap();
    }
    p
}

/// The image as EBS must hold it: every 512 KiB block, the last zero-padded.
fn expected_blocks(image: &Path) -> BTreeMap<u64, Vec<u8>> {
    let data = std::fs::read(image).unwrap();
    let mut out = BTreeMap::new();
    for (i, chunk) in data.chunks(BS as usize).enumerate() {
        let mut b = chunk.to_vec();
        b.resize(BS as usize, 0);
        if b.iter().any(|x| *x != 0) {
            out.insert(i as u64, b);
        }
    }
    out
}

/// (AMI, snapshot) from `--json` output.
fn ids(out: &str) -> (String, String) {
    let v: serde_json::Value = serde_json::from_str(out).unwrap_or_else(|e| panic!("{e}: {out}"));
    (
        v["imageId"].as_str().unwrap().to_string(),
        v["snapshotId"].as_str().unwrap_or_default().to_string(),
    )
}

#[test]
fn sparse_image_becomes_a_uefi_ami_and_a_second_push_uploads_nothing() {
    let m = Moto::start();
    let dir = tempfile::tempdir().unwrap();
    let image = sparse_image(dir.path(), 8, 1000);
    let key = ("AKIDEXAMPLE", SECRET);
    let (ok, out, err) = push(
        &m.url(),
        &image,
        key,
        &["--tag", "team=platform", "--tpm", "--json"],
    );
    assert!(ok, "{err}");
    assert!(!err.contains(SECRET) && !out.contains(SECRET));
    let (ami, snapshot) = ids(&out);
    assert!(
        ami.starts_with("ami-") && snapshot.starts_with("snap-"),
        "{out}\n{err}"
    );
    let rec = m.recording();
    // Only the non-zero blocks were written, each with a correct checksum.
    let want = expected_blocks(&image);
    assert_eq!(want.keys().copied().collect::<Vec<_>>(), [0, 3, 8]);
    let puts: Vec<_> = rec
        .iter()
        .filter(|r| r.method == "PUT" && r.url.contains("/blocks/"))
        .collect();
    let mut put_idx: Vec<u64> = puts
        .iter()
        .map(|r| r.url.rsplit('/').next().unwrap().parse().unwrap())
        .collect();
    put_idx.sort();
    assert_eq!(put_idx, [0, 3, 8], "holes and zero blocks are skipped");
    for r in &puts {
        let idx: u64 = r.url.rsplit('/').next().unwrap().parse().unwrap();
        let sum = i2kit::aws::ebs::b64(&sha2::Sha256::digest(&want[&idx]));
        assert_eq!(
            r.header("x-amz-checksum"),
            Some(sum.as_str()),
            "block {idx}"
        );
        assert_eq!(r.header("x-amz-checksum-algorithm"), Some("SHA256"));
        assert_eq!(r.header("x-amz-content-sha256"), Some("UNSIGNED-PAYLOAD"));
        assert_eq!(r.header("x-amz-data-length"), Some("524288"));
    }
    // CompleteSnapshot: count and the LINEAR aggregate.
    let complete = rec
        .iter()
        .find(|r| r.url.contains("/snapshots/completion/"))
        .unwrap();
    assert_eq!(complete.header("x-amz-changedblockscount"), Some("3"));
    assert_eq!(
        complete.header("x-amz-checksum-aggregation-method"),
        Some("LINEAR")
    );
    let mut agg = sha2::Sha256::new();
    for b in want.values() {
        agg.update(sha2::Sha256::digest(b));
    }
    assert_eq!(
        complete.header("x-amz-checksum"),
        Some(i2kit::aws::ebs::b64(&agg.finalize()).as_str())
    );
    // StartSnapshot: size rounded up to a GiB, an idempotency token, the tags.
    let start = rec
        .iter()
        .find(|r| r.method == "POST" && r.url.ends_with("/snapshots"))
        .unwrap();
    let sv: serde_json::Value = serde_json::from_slice(&start.body).unwrap();
    assert_eq!(sv["VolumeSize"], 1);
    assert!(sv["ClientToken"].as_str().unwrap().starts_with("i2kit-"));
    let digest = hex::encode(sha2::Sha256::digest(std::fs::read(&image).unwrap()));
    assert!(
        sv["Tags"]
            .as_array()
            .unwrap()
            .contains(&serde_json::json!({"Key": "i2kit:image-sha256", "Value": digest}))
    );
    // What RegisterImage received.
    let reg = rec
        .iter()
        .find(|r| r.action().as_deref() == Some("RegisterImage"))
        .unwrap();
    let form: BTreeMap<String, String> = reg.form().into_iter().collect();
    for (k, v) in [
        ("Name", format!("app-{}", &digest[..12])),
        ("Architecture", "x86_64".into()),
        ("BootMode", "uefi".into()),
        ("EnaSupport", "true".into()),
        ("SriovNetSupport", "simple".into()),
        ("VirtualizationType", "hvm".into()),
        ("RootDeviceName", "/dev/xvda".into()),
        ("ImdsSupport", "v2.0".into()),
        ("TpmSupport", "v2.0".into()),
        ("BlockDeviceMapping.1.DeviceName", "/dev/xvda".into()),
        ("BlockDeviceMapping.1.Ebs.SnapshotId", snapshot.clone()),
        ("BlockDeviceMapping.1.Ebs.VolumeType", "gp3".into()),
        ("BlockDeviceMapping.1.Ebs.VolumeSize", "1".into()),
        ("TagSpecification.1.ResourceType", "image".into()),
    ] {
        assert_eq!(form.get(k), Some(&v), "RegisterImage {k}: {form:?}");
    }
    let tags: Vec<(&String, &String)> = form
        .iter()
        .filter(|(k, _)| k.ends_with(".Key"))
        .map(|(k, v)| (v, &form[&k.replace(".Key", ".Value")]))
        .collect();
    assert!(
        tags.contains(&(&"i2kit:image-sha256".to_string(), &digest)),
        "{tags:?}"
    );
    assert!(
        tags.contains(&(&"team".to_string(), &"platform".to_string())),
        "{tags:?}"
    );
    // Every written block reads back as the image's.
    let back = read_snapshot(&m.client("AKIDEXAMPLE", SECRET), &snapshot);
    assert_eq!(back, want);

    // Second push: the same AMI, nothing uploaded.
    m.reset_recording();
    let (ok, out2, err2) = push(&m.url(), &image, key, &["--json"]);
    assert!(ok, "{err2}");
    let v: serde_json::Value = serde_json::from_str(&out2).unwrap();
    assert_eq!(v["imageId"], ami.as_str());
    assert_eq!(v["existing"], true);
    let rec = m.recording();
    assert!(
        rec.iter().all(|r| !r.url.contains("/snapshots")),
        "the second push uploaded"
    );
}

#[test]
fn one_block_and_unaligned_images_read_back_exactly() {
    let m = Moto::start();
    let dir = tempfile::tempdir().unwrap();
    for (name, len) in [("one.raw", BS), ("odd.raw", BS + BS / 2 + 1)] {
        let p = dir.path().join(name);
        std::fs::write(&p, common::images::noise(len, len as usize)).unwrap();
        let (ok, out, err) = push(
            &m.url(),
            &p,
            ("AKIDEXAMPLE", SECRET),
            &["--jobs", "2", "--json"],
        );
        assert!(ok, "{name}: {err}");
        let (_, snap) = ids(&out);
        let back = read_snapshot(&m.client("AKIDEXAMPLE", SECRET), &snap);
        assert_eq!(back, expected_blocks(&p), "{name}");
        assert_eq!(back.len() as u64, len.div_ceil(BS));
    }
}

#[test]
fn signatures_are_checked_and_wrong_credentials_fail_clearly() {
    let m = Moto::start();
    m.reset_auth(3);
    let (id, secret) = m.admin_user("builder");
    let dir = tempfile::tempdir().unwrap();
    let image = sparse_image(dir.path(), 2, 0);
    let (ok, out, err) = push(&m.url(), &image, (&id, &secret), &[]);
    assert!(ok, "a correctly signed push failed: {err}");
    assert!(out.trim().starts_with("ami-"));
    let wrong = "not-the-secret-0123456789";
    let image2 = dir.path().join("other.raw");
    std::fs::write(&image2, common::images::noise(7, 1000)).unwrap();
    let (ok, out, err) = push(&m.url(), &image2, (&id, wrong), &[]);
    assert!(!ok);
    assert!(
        !err.contains(wrong) && !out.contains(wrong),
        "the secret was printed:\n{err}"
    );
    assert!(
        err.contains("SignatureDoesNotMatch")
            || err.contains("AuthFailure")
            || err.contains("InvalidClientTokenId"),
        "{err}"
    );
    let (ok, _, err) = push(&m.url(), &image2, ("AKIDUNKNOWN", wrong), &[]);
    assert!(!ok);
    assert!(!err.contains(wrong), "{err}");
}

#[test]
fn throttling_503s_and_not_found_yet_are_retried_and_every_block_lands() {
    let m = Moto::start();
    let proxy = FaultProxy::start(m.port, 3);
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("busy.raw");
    std::fs::write(&p, common::images::noise(3, (12 * BS) as usize)).unwrap();
    let (ok, out, err) = push(
        &format!("http://127.0.0.1:{}", proxy.port),
        &p,
        ("AKIDEXAMPLE", SECRET),
        &["--jobs", "4", "--json"],
    );
    assert!(ok, "{err}");
    assert!(
        proxy.injected.load(std::sync::atomic::Ordering::SeqCst) >= 4,
        "all three kinds of fault"
    );
    let back = read_snapshot(&m.client("AKIDEXAMPLE", SECRET), &ids(&out).1);
    assert_eq!(back, expected_blocks(&p));
}

#[test]
fn bad_inputs_and_unreachable_endpoints_fail_fast_and_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let key = ("AKIDEXAMPLE", SECRET);
    let (ok, _, err) = push(
        "http://127.0.0.1:9",
        &dir.path().join("missing.raw"),
        key,
        &[],
    );
    assert!(
        !ok && err.contains("missing.raw") && err.contains("No such file"),
        "{err}"
    );
    let (ok, _, err) = push("http://127.0.0.1:9", dir.path(), key, &[]);
    assert!(!ok && err.contains("is not a file"), "{err}");
    let empty = dir.path().join("empty.raw");
    std::fs::write(&empty, b"").unwrap();
    let closed = format!("http://127.0.0.1:{}", common::free_port());
    let (ok, _, err) = push(&closed, &empty, key, &[]);
    assert!(!ok && err.contains("is empty"), "{err}");
    let img = dir.path().join("x.raw");
    std::fs::write(&img, b"data").unwrap();
    let t = Instant::now();
    let (ok, _, err) = push(&closed, &img, key, &["--max-attempts", "3"]);
    assert!(!ok);
    assert!(
        err.contains("cannot reach") && err.contains("after 3 attempts"),
        "{err}"
    );
    assert!(t.elapsed() < Duration::from_secs(20), "{:?}", t.elapsed());
    let (ok, _, err) = push(&closed, &img, key, &["--volume-size", "0"]);
    assert!(!ok && err.contains("smaller than the image"), "{err}");
    let mut c = common::i2kit();
    c.args(["push", "aws", "--region", "us-east-1"])
        .arg(&img)
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env_remove("AWS_PROFILE")
        .env("HOME", dir.path())
        .env("AWS_EC2_METADATA_DISABLED", "true");
    let (ok, _, err) = common::run_cmd(&mut c);
    assert!(!ok && err.contains("no AWS credentials found"), "{err}");
}

#[test]
fn a_failed_upload_deletes_its_snapshot_and_names_the_blocks() {
    let m = Moto::start();
    let proxy = FaultProxy::start(m.port, 1); // every block PUT fails
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("doomed.raw");
    std::fs::write(&p, common::images::noise(5, (3 * BS) as usize)).unwrap();
    let (ok, _, err) = push(
        &format!("http://127.0.0.1:{}", proxy.port),
        &p,
        ("AKIDEXAMPLE", SECRET),
        &["--jobs", "1", "--max-attempts", "2"],
    );
    assert!(!ok);
    assert!(
        err.contains("block(s) could not be written (first: 0"),
        "{err}"
    );
    assert!(err.contains("was deleted"), "{err}");
    let snap = err
        .split_whitespace()
        .find(|w| w.starts_with("snap-"))
        .unwrap();
    let mut c = m.client("AKIDEXAMPLE", SECRET);
    c.retry.max_attempts = 1;
    let never = std::sync::atomic::AtomicBool::new(false);
    let gone = i2kit::aws::ec2::snapshot_state(&c, snap, &never).unwrap_err();
    assert_eq!(gone.code(), Some("InvalidSnapshot.NotFound"), "{gone}");
}

#[test]
fn ctrl_c_stops_the_upload_and_cleans_up() {
    let m = Moto::start();
    let proxy = FaultProxy::start_with(m.port, usize::MAX, Duration::from_millis(500));
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("big.raw");
    std::fs::write(&p, common::images::noise(9, (40 * BS) as usize)).unwrap();
    let mut c = common::i2kit();
    c.args([
        "push",
        "aws",
        "--region",
        "us-east-1",
        "--jobs",
        "1",
        "--endpoint-url",
    ])
    .arg(format!("http://127.0.0.1:{}", proxy.port))
    .arg(&p)
    .env("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
    .env("AWS_SECRET_ACCESS_KEY", SECRET)
    .env("AWS_EC2_METADATA_DISABLED", "true")
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped());
    let child = c.spawn().unwrap();
    std::thread::sleep(Duration::from_secs(3));
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let t = Instant::now();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{err}");
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    assert!(
        err.contains("interrupted") && err.contains("was deleted"),
        "{err}"
    );
}

/// A manifest is built first (raw, reusing the build cache) and pushed with
/// its build key; the architecture comes from the image's platform.
#[test]
fn manifests_are_built_then_pushed_with_their_architecture() {
    let m = Moto::start();
    for arch in ["amd64", "arm64"] {
        let layout = common::boot::debian_kernel(arch);
        let platform = format!("linux/{arch}");
        common::boot::busybox_image(&layout, "init", "init", "poweroff -f\n", &platform);
        common::boot::busybox_image(&layout, "app", "", "", &platform);
        let dir = tempfile::tempdir().unwrap();
        let l = layout.display();
        let manifest = dir.path().join("shop.yml");
        std::fs::write(
            &manifest,
            format!(
                "name: shop\ncontainers:\n  app:\n    image: oci:{l}:app\ni2kit:\n  kernel: oci:{l}:kernel\n  init: oci:{l}:init\n  stub: oci:{l}:stub\n  platform: {platform}\n"
            ),
        )
        .unwrap();
        let out_dir = dir.path().join("out");
        let (ok, out, err) = push(
            &m.url(),
            &manifest,
            ("AKIDEXAMPLE", SECRET),
            &[
                "--json",
                "--store",
                dir.path().join("store").to_str().unwrap(),
                "-o",
                out_dir.to_str().unwrap(),
            ],
        );
        assert!(ok, "{arch}: {err}");
        let (ami, snapshot) = ids(&out);
        assert!(ami.starts_with("ami-"));
        let image = out_dir.join("shop.raw");
        let prov: serde_json::Value =
            serde_json::from_slice(&std::fs::read(out_dir.join("shop.provenance.json")).unwrap())
                .unwrap();
        let key = prov["buildKey"]
            .as_str()
            .unwrap()
            .trim_start_matches("sha256:")
            .to_string();
        let rec = m.recording();
        let reg = rec
            .iter()
            .rfind(|r| r.action().as_deref() == Some("RegisterImage"))
            .unwrap();
        let form: BTreeMap<String, String> = reg.form().into_iter().collect();
        let want_arch = if arch == "amd64" { "x86_64" } else { "arm64" };
        assert_eq!(form["Architecture"], want_arch);
        assert_eq!(form["Name"], format!("shop-{}", &key[..12]));
        assert!(form.values().any(|v| *v == key), "build key tag: {form:?}");
        let back = read_snapshot(&m.client("AKIDEXAMPLE", SECRET), &snapshot);
        assert_eq!(back, expected_blocks(&image), "{arch}");
    }
}
