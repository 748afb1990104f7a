//! Boot-test helpers: Debian's real cloud kernel packed with
//! kernels/pack-debian-kernel.sh, a busybox test init, and QEMU under TCG
//! (KVM does not work on these machines) with a hard timeout.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// An OCI layout holding `kernel` (Debian's cloud kernel for `arch`) and
/// `stub` (systemd's EFI stub), packed once per `cargo test` target directory
/// with the scripts in kernels/. Each call gets its own copy of the layout.
pub fn debian_kernel(arch: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("debian-{arch}"));
    std::fs::create_dir_all(&dir).unwrap();
    let lock = std::fs::File::create(dir.join(".lock")).unwrap();
    lock.lock().unwrap();
    let layout = dir.join("layout");
    let done = dir.join("done");
    if !done.exists() {
        for (script, name) in [
            ("kernels/pack-debian-kernel.sh", "kernel"),
            ("kernels/pack-efi-stub.sh", "stub"),
        ] {
            let out = Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join(script))
                .args([
                    arch,
                    layout.to_str().unwrap(),
                    name,
                    env!("CARGO_BIN_EXE_i2kit"),
                ])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{script} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        if arch != "amd64" {
            let out =
                Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("kernels/fetch-deb.sh"))
                    .args([
                        arch,
                        "busybox-static",
                        dir.join("busybox").to_str().unwrap(),
                    ])
                    .output()
                    .unwrap();
            assert!(
                out.status.success(),
                "fetching busybox-static:{arch}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::fs::write(&done, b"").unwrap();
    }
    // A private copy: tests add images to their layout concurrently.
    let copy = tempfile::Builder::new()
        .prefix("layout-")
        .tempdir_in(&dir)
        .unwrap()
        .keep();
    let st = Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", layout.display()))
        .arg(&copy)
        .status()
        .unwrap();
    assert!(st.success());
    copy
}

/// UEFI firmware for QEMU: (code, a fresh copy of the vars file in `dir`).
pub fn firmware(arch: &str, dir: &Path) -> (PathBuf, PathBuf) {
    let (code, vars) = match arch {
        "amd64" => (
            "/usr/share/OVMF/OVMF_CODE_4M.fd",
            "/usr/share/OVMF/OVMF_VARS_4M.fd",
        ),
        _ => (
            "/usr/share/AAVMF/AAVMF_CODE.fd",
            "/usr/share/AAVMF/AAVMF_VARS.fd",
        ),
    };
    let copy = dir.join("vars.fd");
    std::fs::copy(vars, &copy)
        .unwrap_or_else(|e| panic!("{vars}: {e} (apt-get install ovmf qemu-efi-aarch64)"));
    (PathBuf::from(code), copy)
}

/// Pack a busybox init image whose /init runs `script` (a shell script body).
pub fn busybox_image(layout: &Path, name: &str, path_in_image: &str, script: &str, platform: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    std::fs::create_dir_all(root.join("bin")).unwrap();
    let busybox = match platform {
        "linux/amd64" => PathBuf::from("/bin/busybox"),
        other => {
            let arch = other.rsplit('/').next().unwrap();
            Path::new(env!("CARGO_TARGET_TMPDIR"))
                .join(format!("debian-{arch}/busybox/bin/busybox"))
        }
    };
    std::fs::copy(&busybox, root.join("bin/busybox"))
        .unwrap_or_else(|e| panic!("{}: {e} (busybox-static)", busybox.display()));
    for app in [
        "sh", "mount", "ls", "echo", "cat", "grep", "tr", "poweroff", "sleep", "httpd", "wc",
        "head", "uname",
    ] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(app)).unwrap();
    }
    if !script.is_empty() {
        let p = root.join(path_in_image);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, format!("#!/bin/sh\n{script}")).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let (ok, _, err) = super::run(&[
        "image",
        "pack",
        root.to_str().unwrap(),
        "--tag",
        &format!("oci:{}:{name}", layout.display()),
        "--platform",
        platform,
        "--cmd",
        "/bin/sh",
    ]);
    assert!(ok, "{err}");
}

/// What a QEMU run printed, and whether it exited by itself.
pub struct Boot {
    pub console: String,
    pub exited: bool,
    pub took: Duration,
}

/// Run QEMU with `args`, capture the serial console, kill it after `timeout`.
pub fn qemu(bin: &str, args: &[String], timeout: Duration) -> Boot {
    boot(Command::new(bin).args(args), timeout)
}

/// Run a booting command (QEMU, or `i2kit run`) in its own process group,
/// capture stdout, and kill the whole group after `timeout`.
pub fn boot(cmd: &mut Command, timeout: Duration) -> Boot {
    use std::os::unix::process::CommandExt;
    let start = Instant::now();
    let mut child = cmd
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("{cmd:?}: {e} (apt-get install qemu-system-x86 qemu-system-arm)")
        });
    let mut out = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let pgid = child.id() as i32;
    let exited = loop {
        if child.try_wait().unwrap().is_some() {
            break true;
        }
        if start.elapsed() > timeout {
            // SAFETY: signalling the process group this function created.
            unsafe { libc::kill(-pgid, libc::SIGKILL) };
            let _ = child.wait();
            break false;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    let console = String::from_utf8_lossy(&reader.join().unwrap()).into_owned() + &err;
    Boot {
        console,
        exited,
        took: start.elapsed(),
    }
}
