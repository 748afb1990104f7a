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
        "head", "uname", "hostname", "id", "pwd", "kill",
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

/// Pack i2kit-init (built static by init/pack.sh) as `name` in `layout`.
pub fn init_image(layout: &Path, name: &str) {
    let out = Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("init/pack.sh"))
        .args([layout.to_str().unwrap(), name, env!("CARGO_BIN_EXE_i2kit")])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "init/pack.sh failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A VM running in the background: its console is collected as it comes, so
/// a test can wait for a line, talk to the guest, then wait for power-off.
pub struct Vm {
    child: std::process::Child,
    console: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    started: Instant,
}

impl Vm {
    /// Start `cmd` in its own process group, stdout and stderr collected.
    pub fn start(cmd: &mut Command) -> Vm {
        use std::os::unix::process::CommandExt;
        let mut child = cmd
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
        let console = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        for stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let sink = console.clone();
            std::thread::spawn(move || {
                let mut stream = stream;
                let mut buf = [0u8; 4096];
                while let Ok(n) = stream.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    sink.lock().unwrap().extend_from_slice(&buf[..n]);
                }
            });
        }
        Vm {
            child,
            console,
            started: Instant::now(),
        }
    }

    /// Everything printed so far.
    pub fn console(&self) -> String {
        String::from_utf8_lossy(&self.console.lock().unwrap()).into_owned()
    }

    /// How many lines so far contain `needle`.
    pub fn count(&self, needle: &str) -> usize {
        self.console()
            .lines()
            .filter(|l| l.contains(needle))
            .count()
    }

    /// Wait until `needle` has been printed `times` times; panics with the
    /// console after `timeout` or if the VM exits first.
    pub fn wait_for(&mut self, needle: &str, times: usize, timeout: Duration) {
        let until = Instant::now() + timeout;
        while self.count(needle) < times {
            let exited = self.child.try_wait().unwrap().is_some();
            if exited || Instant::now() > until {
                std::thread::sleep(Duration::from_millis(200));
                panic!(
                    "{needle:?} ×{times} not seen ({}; {:?} since start):\n{}",
                    if exited { "VM exited" } else { "timed out" },
                    self.started.elapsed(),
                    self.console()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Wait up to `timeout` for the VM to exit by itself; true if it did.
    pub fn wait_exit(&mut self, timeout: Duration) -> bool {
        let until = Instant::now() + timeout;
        while Instant::now() < until {
            if self.child.try_wait().unwrap().is_some() {
                std::thread::sleep(Duration::from_millis(200)); // let the readers drain
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    }

    /// Time since start.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        // SAFETY: signalling the process group `start` created.
        unsafe { libc::kill(-(self.child.id() as i32), libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

/// Push a build's inputs to `reg` as `PREFIX/{kernel,stub,init,web}:1`:
/// Debian's cloud kernel and EFI stub, a busybox init that powers off, and a
/// busybox container.
pub fn push_build_inputs(reg: &super::TestRegistry, prefix: &str) {
    let layout = debian_kernel("amd64");
    busybox_image(&layout, "init", "init", "poweroff -f\n", "linux/amd64");
    busybox_image(&layout, "web", "", "", "linux/amd64");
    for n in ["kernel", "stub", "init", "web"] {
        reg.push(&layout, n, &format!("{prefix}/{n}:1"));
    }
}
