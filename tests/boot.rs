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

#[test]
fn kernel_and_initrd_boot_with_qemu_direct_kernel_boot() {
    let layout = debian_kernel("amd64");
    busybox_image(&layout, "test-init", "init", TEST_INIT, "linux/amd64");
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
    ]);
    assert!(ok, "{err}");
    busybox_image(&layout, "sidecar", "", "", "linux/amd64");
    let l = layout.display();
    let manifest = tmp.path().join("pod.yml");
    std::fs::write(
        &manifest,
        format!(
            "name: boot-test\ncontainers:\n  web:\n    image: oci:{l}:web\n    ports: [80]\n  sidecar:\n    image: oci:{l}:sidecar\ni2kit:\n  kernel: oci:{l}:kernel\n  init: oci:{l}:test-init\n  stub: oci:{l}:test-init\n  profile: qemu\n"
        ),
    )
    .unwrap();
    let out = tmp.path().join("out");
    let store = tmp.path().join("store");
    let (ok, _, err) = run(&[
        "build",
        "--store",
        store.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        manifest.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
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
    for marker in [
        "I2KIT-TEST-INIT up on 6.1",
        "I2KIT-CONTAINERS: sidecar web",
        "I2KIT-MODULES-PRESENT",
        "I2KIT-PODJSON-OK",
        "I2KIT-WEB-CONTENT",
    ] {
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
