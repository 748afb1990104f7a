//! i2kit-init in real VMs: images built by i2kit from Debian's cloud kernel,
//! the static init packed by init/pack.sh and busybox containers, booted with
//! `i2kit run` under QEMU (TCG) and OVMF.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::boot::{Vm, busybox_image, debian_kernel, init_image};

struct Built {
    _tmp: tempfile::TempDir,
    out: PathBuf,
    name: String,
}

/// Build a Deployment whose pod spec is `pod` (YAML, indented for
/// `spec.template.spec`; `IMAGE` stands for the busybox image).
fn build(name: &str, pod: &str, formats: &[&str]) -> Built {
    let layout = debian_kernel("amd64");
    init_image(&layout, "init");
    let tmp = tempfile::tempdir().unwrap();
    // busybox, and a page at /www/index.html (written by the helper as a "script").
    busybox_image(
        &layout,
        "bb",
        "www/index.html",
        "I2KIT-PAGE served by busybox\n",
        "linux/amd64",
    );
    let l = layout.display();
    let manifest = format!(
        "apiVersion: apps/v1
kind: Deployment
metadata:
  name: {name}
  annotations:
    i2kit.dev/kernel: oci:{l}:kernel
    i2kit.dev/init: oci:{l}:init
    i2kit.dev/stub: oci:{l}:stub
    i2kit.dev/profile: qemu
spec:
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata: {{labels: {{app: {name}}}}}
    spec:
{}",
        pod.replace("IMAGE", &format!("oci:{l}:bb"))
    );
    let path = tmp.path().join("pod.yml");
    std::fs::write(&path, manifest).unwrap();
    let out = tmp.path().join("out");
    let mut args = vec![
        "build".to_string(),
        "--store".into(),
        tmp.path().join("store").display().to_string(),
        "-o".into(),
        out.display().to_string(),
    ];
    for f in formats {
        args.extend(["--format".to_string(), f.to_string()]);
    }
    args.push(path.display().to_string());
    let (ok, _, err) = common::run(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(ok, "{err}");
    Built {
        _tmp: tmp,
        out,
        name: name.into(),
    }
}

/// `i2kit run` under TCG with `extra` arguments.
fn run(raw: &Path, extra: &[&str]) -> Vm {
    let mut cmd = common::i2kit();
    cmd.args(["run", "--accel", "tcg", "--mem", "512"])
        .args(extra)
        .arg(raw);
    Vm::start(&mut cmd)
}

/// (a) restartPolicy Never: the container's output reaches the console
/// prefixed with its name, a container whose executable is missing is a
/// clear error, and the VM powers off by itself when both have ended.
#[test]
fn never_policy_runs_once_and_powers_off() {
    let b = build(
        "once",
        r#"      restartPolicy: Never
      containers:
      - name: hello
        image: IMAGE
        workingDir: /www
        env: [{name: GREETING, value: "I2KIT-MARKER"}]
        command: ["sh", "-c", "echo $GREETING host=$(hostname) pid=$$ uid=$(id -u) cwd=$(pwd); cat /etc/hostname; ls /proc/1/exe >/dev/null && echo own-proc; exit 0"]
      - name: broken
        image: IMAGE
        command: ["/no/such/program", "--flag"]
"#,
        &["raw"],
    );
    let mut vm = run(&b.out.join(format!("{}.raw", b.name)), &[]);
    let exited = vm.wait_exit(Duration::from_secs(240));
    let console = vm.console();
    assert!(exited, "did not power off by itself:\n{console}");
    for want in [
        "i2kit-init: mounted /proc /sys /dev /dev/pts /dev/shm /run /tmp",
        "i2kit-init: hostname once",
        "i2kit-init: lo up",
        "i2kit-init: eth0: 10.0.2.15/24 via 10.0.2.2, dns 10.0.2.3",
        "[hello] I2KIT-MARKER host=once pid=1 uid=0 cwd=/www",
        "[hello] once",
        "[hello] own-proc",
        "container hello exited with code 0",
        "container broken: cannot start: executable \"/no/such/program\" not found in the image",
        "not restarted (restartPolicy Never)",
        "i2kit-init: every container has ended; syncing and powering off",
    ] {
        assert!(
            console.contains(want),
            "{want:?} not on the console:\n{console}"
        );
    }
    assert!(
        console.contains("loaded 11 module(s): button evdev"),
        "modules:\n{console}"
    );
}

/// (b) DHCP, networking and a container serving on port 80, fetched from the
/// host through QEMU's hostfwd; (c) a container exiting 1 under Always is
/// restarted with back-off while the other keeps serving; (d) the ACPI power
/// button (QEMU `system_powerdown` on the monitor) sends SIGTERM to every
/// container and the VM powers off within the grace period.
#[test]
fn serving_pod_restarts_crashers_and_stops_on_the_power_button() {
    let b = build(
        "web",
        r#"      terminationGracePeriodSeconds: 20
      containers:
      - name: web
        image: IMAGE
        ports: [{containerPort: 80}]
        command: ["sh", "-c", "httpd -f -p 80 -h /www & pid=$!; trap 'echo got SIGTERM; kill $pid; exit 0' TERM; echo serving; wait"]
      - name: crasher
        image: IMAGE
        command: ["sh", "-c", "echo crashing; exit 1"]
"#,
        &["raw"],
    );
    let dir = tempfile::tempdir().unwrap();
    let monitor = dir.path().join("monitor.sock");
    let port = common::free_port();
    let mut vm = run(
        &b.out.join("web.raw"),
        &[
            "-p",
            &format!("{port}:80"),
            "--monitor",
            monitor.to_str().unwrap(),
        ],
    );
    vm.wait_for("[web] serving", 1, Duration::from_secs(240));
    let fetch = || {
        ureq::get(&format!("http://127.0.0.1:{port}/index.html"))
            .call()
            .ok()
            .and_then(|mut r| r.body_mut().read_to_string().ok())
    };
    let mut page = None;
    for _ in 0..100 {
        page = fetch();
        if page.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        page.as_deref()
            .is_some_and(|p| p.contains("I2KIT-PAGE served by busybox")),
        "{page:?}\n{}",
        vm.console()
    );
    // Back-off 10 s then 20 s: two restarts within about 15 s.
    // Wait for whole lines: the console arrives in chunks that can end mid-line.
    vm.wait_for(
        "restart 2 in 20.0s (restartPolicy Always)",
        1,
        Duration::from_secs(90),
    );
    // The container's own output may trail the init's line about its exit.
    vm.wait_for("[crasher] crashing", 2, Duration::from_secs(10));
    let console = vm.console();
    assert!(
        console.contains("restart 1 in 10.0s (restartPolicy Always)"),
        "{console}"
    );
    assert!(
        console.contains("restart 2 in 20.0s (restartPolicy Always)"),
        "{console}"
    );
    assert_eq!(
        vm.count("container crasher exited with code 1"),
        2,
        "{console}"
    );
    assert_eq!(vm.count("[crasher] crashing"), 2, "{console}");
    assert!(
        fetch().is_some_and(|p| p.contains("I2KIT-PAGE")),
        "web stopped serving while crasher looped"
    );
    // (d) Press the power button.
    let pressed = std::time::Instant::now();
    let mut mon = std::os::unix::net::UnixStream::connect(&monitor).unwrap();
    use std::io::Write;
    mon.write_all(b"system_powerdown\n").unwrap();
    let exited = vm.wait_exit(Duration::from_secs(20));
    let console = vm.console();
    assert!(
        exited,
        "no power-off within the 20 s grace period:\n{console}"
    );
    let took = pressed.elapsed();
    for want in [
        "i2kit-init: power button pressed",
        "shutdown (power button): SIGTERM to 1 container(s), grace period 20s",
        "[web] got SIGTERM",
        "container web stopped: exited with code 0",
    ] {
        assert!(
            console.contains(want),
            "{want:?} not on the console:\n{console}"
        );
    }
    assert!(!console.contains("grace period over"), "{console}");
    eprintln!("power button to power-off: {took:?}");
}

/// A broken pod.json (appended to the initramfs as a later, gzip-compressed
/// cpio member, which the kernel unpacks over the builder's; compressed so
/// that it is found whatever the alignment of the end of the build's initrd)
/// is reported and the VM powers off instead of panicking.
#[test]
fn malformed_pod_json_powers_off_with_a_clear_error() {
    let b = build(
        "bad",
        "      containers:\n      - name: c\n        image: IMAGE\n",
        &["kernel+initrd"],
    );
    let extra = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(extra.path().join("etc/i2kit")).unwrap();
    std::fs::write(
        extra.path().join("etc/i2kit/pod.json"),
        br#"{"version": 1, "name": "bad", "containers": "#,
    )
    .unwrap();
    let out = std::process::Command::new("sh")
        .current_dir(extra.path())
        .args([
            "-c",
            "echo etc/i2kit/pod.json | cpio --quiet -o -H newc | gzip -n",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let mut initrd = std::fs::read(b.out.join("bad-initrd.img")).unwrap();
    initrd.extend_from_slice(&out.stdout);
    let initrd_path = extra.path().join("initrd");
    std::fs::write(&initrd_path, initrd).unwrap();
    let cmdline = std::fs::read_to_string(b.out.join("bad-cmdline")).unwrap();
    let mut qemu = std::process::Command::new("qemu-system-x86_64");
    qemu.args([
        "-machine",
        "q35,accel=tcg",
        "-m",
        "512",
        "-nographic",
        "-no-reboot",
    ])
    .args(["-net", "none", "-kernel"])
    .arg(b.out.join("bad-kernel"))
    .arg("-initrd")
    .arg(&initrd_path)
    .args(["-append", &format!("{} panic=-1", cmdline.trim())]);
    let mut vm = Vm::start(&mut qemu);
    let exited = vm.wait_exit(Duration::from_secs(180));
    let console = vm.console();
    assert!(exited, "did not power off:\n{console}");
    assert!(
        console.contains("i2kit-init: fatal: /etc/i2kit/pod.json: EOF while parsing"),
        "{console}"
    );
    assert!(console.contains("reboot: Power down"), "{console}");
    assert!(!console.contains("Kernel panic"), "{console}");
}
