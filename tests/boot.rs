//! Boot tests: images built by i2kit from Debian's real cloud kernel, booted
//! in QEMU (TCG). The proof that what the build writes is a working initramfs.

mod common;

use std::time::Duration;

use common::boot::{busybox_image, debian_kernel, qemu};
use common::run;

const TEST_INIT: &str = r#"
mount -t proc proc /proc
mount -t devtmpfs dev /dev
echo "I2KIT-TEST-INIT up on $(uname -r)"
echo "I2KIT-CONTAINERS: $(ls /containers | tr '\n' ' ')"
ls /lib/modules/*/kernel/drivers/net/virtio_net.ko >/dev/null && echo I2KIT-MODULES-PRESENT
grep -q '"name": "web"' /etc/i2kit/pod.json && echo I2KIT-PODJSON-OK
cat /containers/web/rootfs/www/index.html
poweroff -f
"#;

/// Build the boot fixture for `arch` with `formats`; returns (tmp dir, out dir).
fn build_fixture(arch: &str, formats: &[&str]) -> (tempfile::TempDir, std::path::PathBuf) {
    let layout = debian_kernel(arch);
    let platform = format!("linux/{arch}");
    busybox_image(&layout, "test-init", "init", TEST_INIT, &platform);
    let tmp = tempfile::tempdir().unwrap();
    let www = tmp.path().join("web");
    std::fs::create_dir_all(www.join("www")).unwrap();
    std::fs::write(www.join("www/index.html"), "I2KIT-WEB-CONTENT\n").unwrap();
    let (ok, _, err) = run(&[
        "image",
        "pack",
        www.to_str().unwrap(),
        "--tag",
        &format!("oci:{}:web", layout.display()),
        "--cmd",
        "/bin/sh",
        "--platform",
        &platform,
    ]);
    assert!(ok, "{err}");
    busybox_image(&layout, "sidecar", "", "", &platform);
    let l = layout.display();
    let manifest = tmp.path().join("pod.yml");
    std::fs::write(
        &manifest,
        format!(
            "name: boot-test\ncontainers:\n  web:\n    image: oci:{l}:web\n    ports: [80]\n  sidecar:\n    image: oci:{l}:sidecar\ni2kit:\n  kernel: oci:{l}:kernel\n  init: oci:{l}:test-init\n  stub: oci:{l}:stub\n  profile: qemu\n  cmdline: panic=-1\n  platform: {platform}\n"
        ),
    )
    .unwrap();
    let out = tmp.path().join("out");
    let store = tmp.path().join("store");
    let mut args = vec![
        "build".to_string(),
        "--store".into(),
        store.display().to_string(),
        "-o".into(),
        out.display().to_string(),
    ];
    for f in formats {
        args.push("--format".into());
        args.push(f.to_string());
    }
    args.push(manifest.display().to_string());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (ok, _, err) = run(&args);
    assert!(ok, "{err}");
    (tmp, out)
}

const MARKERS: &[&str] = &[
    "I2KIT-TEST-INIT up on 6.1",
    "I2KIT-CONTAINERS: sidecar web",
    "I2KIT-MODULES-PRESENT",
    "I2KIT-PODJSON-OK",
    "I2KIT-WEB-CONTENT",
];

fn assert_booted(boot: &common::boot::Boot) {
    for marker in MARKERS {
        assert!(
            boot.console.contains(marker),
            "{marker} not on the console:\n{}",
            boot.console
        );
    }
    assert!(
        boot.exited,
        "QEMU did not power off by itself within {:?}:\n{}",
        boot.took, boot.console
    );
}

#[test]
fn kernel_and_initrd_boot_with_qemu_direct_kernel_boot() {
    let (_tmp, out) = build_fixture("amd64", &["kernel+initrd"]);
    let cmdline = std::fs::read_to_string(out.join("boot-test-cmdline")).unwrap();
    let args: Vec<String> = [
        "-machine",
        "q35,accel=tcg",
        "-m",
        "512",
        "-nographic",
        "-no-reboot",
        "-net",
        "none",
        "-kernel",
        out.join("boot-test-kernel").to_str().unwrap(),
        "-initrd",
        out.join("boot-test-initrd.img").to_str().unwrap(),
        "-append",
        &format!("{} panic=-1", cmdline.trim()),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let boot = qemu("qemu-system-x86_64", &args, Duration::from_secs(120));
    assert_booted(&boot);
}

/// Boot `raw` with `i2kit run` (the way a user would), TCG fallback included.
fn i2kit_run(raw: &std::path::Path, extra: &[&str], timeout: u64) -> common::boot::Boot {
    let port = common::free_port().to_string();
    let mut cmd = common::i2kit();
    cmd.args([
        "run",
        "--accel",
        "auto",
        "--mem",
        "512",
        "-p",
        &format!("{port}:80"),
    ])
    .args(extra)
    .arg(raw);
    common::boot::boot(&mut cmd, Duration::from_secs(timeout))
}

/// The default output, NAME.raw (GPT + FAT32 ESP + UKI), boots under OVMF from
/// virtio-blk through `i2kit run` (auto falls back to TCG where KVM is unusable).
#[test]
fn raw_disk_boots_under_ovmf_from_virtio_blk() {
    let (_tmp, out) = build_fixture("amd64", &["raw", "uki"]);
    let raw = out.join("boot-test.raw");
    assert!(out.join("boot-test.efi").exists());
    let v = std::process::Command::new("sgdisk")
        .arg("-v")
        .arg(&raw)
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&v.stdout).contains("No problems found"),
        "{}",
        String::from_utf8_lossy(&v.stdout)
    );
    let boot = i2kit_run(&raw, &[], 180);
    assert_booted(&boot);
}

/// The same image from NVMe, how EBS volumes appear on AWS Nitro.
#[test]
fn raw_disk_boots_under_ovmf_from_nvme() {
    let (_tmp, out) = build_fixture("amd64", &["raw"]);
    let boot = i2kit_run(&out.join("boot-test.raw"), &["--nvme"], 180);
    assert_booted(&boot);
}

/// The arm64 image (Debian's arm64 cloud kernel, systemd's aa64 stub, arm64
/// busybox) boots under AAVMF; `i2kit run` takes the architecture from the
/// provenance next to the image.
#[test]
fn arm64_raw_disk_boots_under_aavmf() {
    let (_tmp, out) = build_fixture("arm64", &["raw"]);
    let raw = out.join("boot-test.raw");
    let (ok, cmd, err) = run(&["run", "--dry-run", raw.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(
        cmd.starts_with("qemu-system-aarch64 -machine virt,accel=tcg -cpu cortex-a72"),
        "{cmd}"
    );
    let boot = i2kit_run(&raw, &[], 300);
    assert_booted(&boot);
}

/// A kernel of the wrong architecture is refused before any output is written.
#[test]
fn wrong_architecture_kernel_is_refused() {
    let layout = debian_kernel("amd64");
    let tmp = tempfile::tempdir().unwrap();
    let l = layout.display();
    let manifest = tmp.path().join("pod.yml");
    std::fs::write(
        &manifest,
        format!("name: wrong\ncontainers:\n  web:\n    image: oci:{l}:stub\ni2kit:\n  kernel: oci:{l}:kernel\n  init: oci:{l}:stub\n  stub: oci:{l}:stub\n  platform: linux/arm64\n  modules: []\n"),
    )
    .unwrap();
    let out = tmp.path().join("out");
    let (ok, _, err) = run(&[
        "build",
        "--store",
        tmp.path().join("s").to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        manifest.to_str().unwrap(),
    ]);
    assert!(!ok);
    assert!(
        err.contains("is a linux/amd64 image, but linux/arm64 was requested"),
        "{err}"
    );
    assert!(!out.exists(), "no output written");
}
