//! `i2kit run IMAGE.raw`

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use i2kit::run::{Accel, PortForward, RunOptions};

#[derive(clap::Args)]
pub struct Args {
    /// The raw disk image (NAME.raw from i2kit build).
    image: PathBuf,
    /// UEFI firmware code file (default: OVMF/AAVMF in the usual Debian, Fedora, Arch, Homebrew places).
    #[arg(long, value_name = "CODE.fd")]
    firmware: Option<PathBuf>,
    /// UEFI vars template to copy for this run (default: the one next to the firmware).
    #[arg(long, value_name = "VARS.fd")]
    vars: Option<PathBuf>,
    /// auto: KVM when it really runs the guest, else TCG (software emulation).
    #[arg(long, default_value = "auto")]
    accel: Accel,
    /// Forward HOST:GUEST (TCP, repeatable). Default: every container port to the same host port.
    #[arg(short = 'p', long = "publish", value_name = "HOST:GUEST")]
    ports: Vec<PortForward>,
    /// Memory in MiB.
    #[arg(long, default_value_t = 512)]
    mem: u32,
    /// vCPUs.
    #[arg(long, default_value_t = 1)]
    cpus: u32,
    /// Guest architecture (default: from NAME.provenance.json next to the image, else the host's).
    #[arg(long)]
    arch: Option<String>,
    /// Attach the disk as NVMe (as EBS volumes appear on AWS Nitro) instead of virtio-blk.
    #[arg(long)]
    nvme: bool,
    /// Serve QEMU's monitor on this unix socket (e.g. `echo system_powerdown | socat - UNIX:PATH`
    /// presses the power button: i2kit-init stops the containers and powers off).
    #[arg(long, value_name = "SOCKET")]
    monitor: Option<PathBuf>,
    /// Print the QEMU command instead of running it.
    #[arg(long)]
    dry_run: bool,
}

pub fn run(a: &Args) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(
        a.image.is_file(),
        "{} is not a file (build one with i2kit build)",
        a.image.display()
    );
    let facts = i2kit::run::image_facts(&a.image);
    let arch = a
        .arch
        .clone()
        .or_else(|| facts.as_ref().map(|f| f.0.clone()))
        .unwrap_or_else(|| {
            if cfg!(target_arch = "aarch64") {
                "arm64".into()
            } else {
                "amd64".into()
            }
        });
    let ports = if a.ports.is_empty() {
        let lowest = std::fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(1024);
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        i2kit::run::default_forwards(&facts.map(|f| f.1).unwrap_or_default(), lowest, root)
    } else {
        a.ports.clone()
    };
    for p in &ports {
        eprintln!(
            "i2kit run: guest port {} is forwarded from 127.0.0.1:{} (and every host address)",
            p.guest, p.host
        );
    }
    let opts = RunOptions {
        image: a.image.clone(),
        arch: arch.clone(),
        firmware: a.firmware.clone(),
        vars: a.vars.clone(),
        accel: a.accel,
        mem: a.mem,
        cpus: a.cpus,
        ports,
        nvme: a.nvme,
        monitor: a.monitor.clone(),
    };
    let (code, vars_template) =
        i2kit::run::find_firmware(&arch, opts.firmware.as_deref(), opts.vars.as_deref())?;
    let (accel, why) = i2kit::run::choose_accel(opts.accel, &arch)?;
    if let Some(why) = why {
        eprintln!("i2kit run: using TCG (software emulation): {why}");
    }
    let mut accel = accel;
    loop {
        // A fresh vars copy per attempt: firmware state never leaks between runs.
        let tmp = tempfile::tempdir().context("creating a directory for the firmware vars")?;
        let vars = tmp.path().join("vars.fd");
        std::fs::copy(&vars_template, &vars)
            .with_context(|| format!("copying {}", vars_template.display()))?;
        let (bin, args) = i2kit::run::qemu_command(&opts, accel, &code, &vars)?;
        if a.dry_run {
            println!("{bin} {}", args.join(" "));
            return Ok(ExitCode::SUCCESS);
        }
        // While KVM is on trial, QEMU's stderr is held back so that a failed
        // attempt's register dump does not end up on the user's terminal.
        let hold = accel == "kvm" && a.accel == Accel::Auto;
        match run_qemu(&bin, &args, hold)? {
            Outcome::Exited(code) => return Ok(code),
            // On some hosts /dev/kvm creates VMs and then fails to run them
            // ("KVM internal error", and QEMU stops the VM without exiting).
            Outcome::KvmFailed if a.accel == Accel::Auto => {
                eprintln!(
                    "i2kit run: KVM failed to run the guest; starting again with TCG (software emulation)"
                );
                accel = "tcg";
            }
            Outcome::KvmFailed => anyhow::bail!(
                "--accel kvm: KVM failed to run the guest (see QEMU's message above); try --accel tcg"
            ),
        }
    }
}

enum Outcome {
    Exited(ExitCode),
    KvmFailed,
}

/// Run QEMU with the serial console on our stdout; watch its stderr for KVM failures.
fn run_qemu(bin: &str, args: &[String], hold_stderr: bool) -> anyhow::Result<Outcome> {
    use std::io::{BufRead, Write};
    use std::sync::atomic::{AtomicBool, Ordering};
    let mut child = std::process::Command::new(bin)
        .args(args)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .with_context(|| {
            format!("starting {bin} (Debian: apt-get install qemu-system-x86 / qemu-system-arm)")
        })?;
    let kvm_failed = std::sync::Arc::new(AtomicBool::new(false));
    let flag = kvm_failed.clone();
    let stderr = child.stderr.take().expect("piped");
    let watcher = std::thread::spawn(move || {
        let mut held = Vec::new();
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if line.contains("KVM internal error") || line.contains("failed to initialize kvm") {
                flag.store(true, Ordering::SeqCst);
            }
            if hold_stderr {
                held.push(line);
            } else {
                let _ = writeln!(std::io::stderr(), "{line}");
            }
        }
        held
    });
    let status = loop {
        if let Some(st) = child.try_wait()? {
            break Some(st);
        }
        if kvm_failed.load(Ordering::SeqCst) {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let held = watcher.join().unwrap_or_default();
    if status.is_some() {
        for line in held {
            eprintln!("{line}");
        }
    }
    Ok(match status {
        None => Outcome::KvmFailed,
        // QEMU exits 0 when the VM powers off; pass its outcome on.
        Some(st) => Outcome::Exited(match st.code() {
            Some(0) => ExitCode::SUCCESS,
            Some(c) => ExitCode::from(u8::try_from(c).unwrap_or(1)),
            None => ExitCode::FAILURE,
        }),
    })
}
