//! i2kit-init: PID 1 of an i2kit VM. It mounts the early filesystems, loads
//! the kernel modules the builder chose, brings up the network with DHCP and
//! runs the Pod described by `/etc/i2kit/pod.json` the way the kubelet would,
//! then powers the VM off. It never exits: PID 1 exiting is a kernel panic.
//!
//! Not PID 1, it only answers `--check FILE`, `--version` and `--help`.

mod container;
mod files;
mod log;
mod net;
mod power;
mod supervise;
mod sys;

use std::time::{Duration, Instant};

use i2kit_pod::{POD_SPEC_PATH, PodSpec};

const USAGE: &str = "\
i2kit-init: the init (PID 1) of i2kit VM images.

The kernel starts it; it reads /etc/i2kit/pod.json, runs the Pod's containers
and powers the VM off when they have ended (restartPolicy Never/OnFailure) or
on SIGTERM, ctrl-alt-del or the ACPI power button.

Usage (not as PID 1):
  i2kit-init --check FILE   validate a pod.json; exit 0 when it can be run
  i2kit-init --version
  i2kit-init --help";

fn main() {
    if std::process::id() != 1 {
        let args: Vec<String> = std::env::args().skip(1).collect();
        let code = match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
            ["--check", file] => check(file),
            ["--version"] => {
                println!("i2kit-init {}", env!("CARGO_PKG_VERSION"));
                0
            }
            ["--help"] | ["-h"] => {
                println!("{USAGE}");
                0
            }
            _ => {
                eprintln!("i2kit-init must run as PID 1 (the kernel's init).\n\n{USAGE}");
                2
            }
        };
        std::process::exit(code);
    }
    // A panic must not become "Attempted to kill init!": report and power off.
    std::panic::set_hook(Box::new(|info| {
        log!("fatal: {info}; powering off");
        sys::power_off();
    }));
    let why = match boot() {
        Ok(why) => why,
        Err(e) => format!("fatal: {e}"),
    };
    log!("{why}; syncing and powering off");
    sys::power_off()
}

fn check(file: &str) -> i32 {
    match std::fs::read(file)
        .map_err(|e| e.to_string())
        .and_then(|b| PodSpec::from_json(&b).map_err(|e| e.to_string()))
    {
        Ok(p) => {
            println!(
                "{file}: pod {} with {} container(s): ok",
                p.name,
                p.containers.len()
            );
            0
        }
        Err(e) => {
            eprintln!("{file}: {e}");
            1
        }
    }
}

fn early_mounts() {
    let nodev = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    let mounts: [(&str, &str, &str, libc::c_ulong, &str); 7] = [
        ("proc", "/proc", "proc", nodev, ""),
        ("sysfs", "/sys", "sysfs", nodev, ""),
        // Debian kernels do not mount devtmpfs for an initramfs.
        ("devtmpfs", "/dev", "devtmpfs", libc::MS_NOSUID, "mode=0755"),
        (
            "devpts",
            "/dev/pts",
            "devpts",
            libc::MS_NOSUID | libc::MS_NOEXEC,
            "gid=5,mode=0620,ptmxmode=0666",
        ),
        (
            "tmpfs",
            "/dev/shm",
            "tmpfs",
            libc::MS_NOSUID | libc::MS_NODEV,
            "mode=1777",
        ),
        (
            "tmpfs",
            "/run",
            "tmpfs",
            libc::MS_NOSUID | libc::MS_NODEV,
            "mode=0755",
        ),
        (
            "tmpfs",
            "/tmp",
            "tmpfs",
            libc::MS_NOSUID | libc::MS_NODEV,
            "mode=1777",
        ),
    ];
    let mut done = Vec::new();
    for (src, target, fstype, flags, data) in mounts {
        let _ = std::fs::create_dir_all(target);
        match sys::mount(src, target, fstype, flags, data) {
            Ok(()) => done.push(target),
            // Already there (a kernel with DEVTMPFS_MOUNT, a second boot stage).
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => done.push(target),
            Err(e) => log!("cannot mount {fstype} on {target}: {e}"),
        }
    }
    log!("mounted {}", done.join(" "));
}

fn load_modules(spec: &PodSpec) {
    if spec.modules.is_empty() {
        return;
    }
    let base = format!("/lib/modules/{}", spec.kernel_release);
    let mut loaded = Vec::new();
    let mut present = 0;
    for m in &spec.modules {
        let name = m.rsplit('/').next().unwrap_or(m).trim_end_matches(".ko");
        match sys::finit_module(&format!("{base}/{m}")) {
            Ok(()) => loaded.push(name),
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => present += 1,
            Err(e) => log!("module {name}: {e} ({base}/{m})"),
        }
    }
    log!(
        "loaded {} module(s): {}{}",
        loaded.len(),
        loaded.join(" "),
        if present > 0 {
            format!(" ({present} already loaded)")
        } else {
            String::new()
        }
    );
}

fn network(spec: &PodSpec) {
    let hostname = spec.hostname.clone();
    match net::link_up("lo") {
        Ok(()) => log!("lo up"),
        Err(e) => log!("lo: {e}"),
    }
    let Some(iface) = net::first_ethernet(Duration::from_secs(2)) else {
        log!("no Ethernet interface; the containers start without a network");
        return;
    };
    if let Err(e) = net::link_up(&iface.name) {
        log!("{}: cannot bring the link up: {e}", iface.name);
        return;
    }
    let start = Instant::now();
    let lease = match net::acquire(&iface, &hostname, Duration::from_secs(10)) {
        Ok(Some(r)) => match net::apply(&iface, &r, &hostname) {
            Ok(()) => Some((r, Instant::now())),
            Err(e) => {
                log!("{}: cannot apply the DHCP lease: {e}", iface.name);
                None
            }
        },
        Ok(None) => {
            log!(
                "{}: no DHCP answer in {:.0?}; containers start now, DHCP goes on in the background",
                iface.name,
                start.elapsed()
            );
            None
        }
        Err(e) => {
            log!("{}: DHCP: {e}", iface.name);
            None
        }
    };
    std::thread::spawn(move || net::maintain(iface, hostname, lease));
}

fn boot() -> Result<String, String> {
    log!("i2kit-init {} starting", env!("CARGO_PKG_VERSION"));
    early_mounts();
    let path = format!("/{POD_SPEC_PATH}");
    let bytes = std::fs::read(&path)
        .map_err(|e| format!("{path}: {e} (the image was not built by i2kit build?)"))?;
    let spec = PodSpec::from_json(&bytes).map_err(|e| format!("{path}: {e}"))?;
    log!(
        "pod {}: {} container(s), restartPolicy {:?}",
        spec.name,
        spec.containers.len(),
        spec.restart_policy
    );
    // Before any thread starts: every thread inherits the blocked mask, so
    // these signals only ever arrive through the signalfd.
    let mut handled = supervise::SHUTDOWN_SIGNALS.to_vec();
    handled.push(libc::SIGCHLD);
    let signals = sys::signalfd(&handled).map_err(|e| format!("signalfd: {e}"))?;
    match sys::ctrl_alt_del_to_signal() {
        Ok(()) => {}
        Err(e) => log!("ctrl-alt-del stays a hard reboot: {e}"),
    }
    std::fs::create_dir_all("/run/i2kit").map_err(|e| format!("/run/i2kit: {e}"))?;
    files::write_in_place(files::HOSTNAME, &format!("{}\n", spec.hostname))
        .map_err(|e| format!("{}: {e}", files::HOSTNAME))?;
    files::write_in_place(files::HOSTS, &i2kit_pod::hosts_file(&spec.hostname, None))
        .map_err(|e| format!("{}: {e}", files::HOSTS))?;
    files::write_in_place(files::RESOLV_CONF, "")
        .map_err(|e| format!("{}: {e}", files::RESOLV_CONF))?;
    match sys::sethostname(&spec.hostname) {
        Ok(()) => log!("hostname {}", spec.hostname),
        Err(e) => log!("hostname {}: {e}", spec.hostname),
    }
    load_modules(&spec);
    match power::watch() {
        0 => log!("no ACPI power button found; shut down with SIGTERM or ctrl-alt-del"),
        n => log!("watching {n} power button(s)"),
    }
    network(&spec);
    if spec.containers.is_empty() {
        return Ok("the pod has no containers".into());
    }
    Ok(supervise::run(&spec, &signals))
}
