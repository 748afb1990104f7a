//! `i2kit run`: boot an image locally under QEMU the way `linuxkit run qemu`
//! does — UEFI firmware found in the usual places (a fresh copy of the vars
//! file per run), KVM when it really works and TCG otherwise, the serial
//! console on the terminal, container ports forwarded with user networking.
//! This module builds the command; the CLI runs it.

use std::path::{Path, PathBuf};

/// How to accelerate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accel {
    /// KVM when it works, else TCG.
    Auto,
    /// KVM (fails if unusable).
    Kvm,
    /// Software emulation.
    Tcg,
}

impl std::str::FromStr for Accel {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Accel::Auto),
            "kvm" => Ok(Accel::Kvm),
            "tcg" => Ok(Accel::Tcg),
            o => Err(format!("unknown accelerator {o:?}: use auto, kvm or tcg")),
        }
    }
}

/// A forwarded port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortForward {
    /// Host port.
    pub host: u16,
    /// Guest port.
    pub guest: u16,
}

impl std::str::FromStr for PortForward {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?} is not HOST:GUEST (e.g. 8080:80)");
        let (h, g) = s.split_once(':').ok_or_else(bad)?;
        Ok(PortForward {
            host: h.parse().map_err(|_| bad())?,
            guest: g.parse().map_err(|_| bad())?,
        })
    }
}

/// Everything needed to build the QEMU command.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// The raw disk image.
    pub image: PathBuf,
    /// `amd64` or `arm64`.
    pub arch: String,
    /// Firmware code file (found when absent).
    pub firmware: Option<PathBuf>,
    /// Firmware vars template (found next to the code when absent).
    pub vars: Option<PathBuf>,
    /// Acceleration.
    pub accel: Accel,
    /// Memory, MiB.
    pub mem: u32,
    /// vCPUs.
    pub cpus: u32,
    /// Ports to forward.
    pub ports: Vec<PortForward>,
    /// Attach the disk as NVMe (as EBS appears on Nitro) instead of virtio-blk.
    pub nvme: bool,
    /// A unix socket for QEMU's human monitor (`system_powerdown` presses
    /// the ACPI power button).
    pub monitor: Option<PathBuf>,
}

/// Run errors.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// No firmware found.
    #[error("no UEFI firmware for {arch} found; looked in: {}. Install it (Debian: apt-get install {pkg}) or pass --firmware CODE.fd", .looked.join(", "))]
    NoFirmware {
        /// Architecture.
        arch: String,
        /// Paths tried.
        looked: Vec<String>,
        /// Debian package.
        pkg: &'static str,
    },
    /// KVM was asked for and does not work.
    #[error("--accel kvm: {0}")]
    Kvm(String),
    /// An unsupported architecture.
    #[error("cannot run {0} images (amd64 and arm64 are supported)")]
    Arch(String),
    /// File trouble.
    #[error("{path}: {source}")]
    Io {
        /// Where.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

/// (code, vars) pairs of the usual firmware locations: Debian/Ubuntu, Fedora,
/// Arch, Homebrew (Apple silicon and Intel).
pub fn firmware_candidates(arch: &str) -> &'static [(&'static str, &'static str)] {
    match arch {
        "amd64" => &[
            (
                "/usr/share/OVMF/OVMF_CODE_4M.fd",
                "/usr/share/OVMF/OVMF_VARS_4M.fd",
            ),
            (
                "/usr/share/OVMF/OVMF_CODE.fd",
                "/usr/share/OVMF/OVMF_VARS.fd",
            ),
            (
                "/usr/share/edk2/ovmf/OVMF_CODE.fd",
                "/usr/share/edk2/ovmf/OVMF_VARS.fd",
            ),
            (
                "/usr/share/edk2/x64/OVMF_CODE.4m.fd",
                "/usr/share/edk2/x64/OVMF_VARS.4m.fd",
            ),
            (
                "/opt/homebrew/share/qemu/edk2-x86_64-code.fd",
                "/opt/homebrew/share/qemu/edk2-i386-vars.fd",
            ),
            (
                "/usr/local/share/qemu/edk2-x86_64-code.fd",
                "/usr/local/share/qemu/edk2-i386-vars.fd",
            ),
        ],
        _ => &[
            (
                "/usr/share/AAVMF/AAVMF_CODE.fd",
                "/usr/share/AAVMF/AAVMF_VARS.fd",
            ),
            (
                "/usr/share/edk2/aarch64/QEMU_EFI-pflash.raw",
                "/usr/share/edk2/aarch64/vars-template-pflash.raw",
            ),
            (
                "/usr/share/edk2/aarch64/QEMU_CODE.fd",
                "/usr/share/edk2/aarch64/QEMU_VARS.fd",
            ),
            (
                "/opt/homebrew/share/qemu/edk2-aarch64-code.fd",
                "/opt/homebrew/share/qemu/edk2-arm-vars.fd",
            ),
            (
                "/usr/local/share/qemu/edk2-aarch64-code.fd",
                "/usr/local/share/qemu/edk2-arm-vars.fd",
            ),
        ],
    }
}

/// Find firmware for `arch`, honouring explicit paths.
pub fn find_firmware(
    arch: &str,
    code: Option<&Path>,
    vars: Option<&Path>,
) -> Result<(PathBuf, PathBuf), RunError> {
    let cands = firmware_candidates(arch);
    if let Some(c) = code {
        let v = match vars {
            Some(v) => v.to_path_buf(),
            None => cands
                .iter()
                .find(|(_, v)| Path::new(v).exists())
                .map(|(_, v)| PathBuf::from(v))
                .ok_or_else(|| RunError::Io {
                    path: c.to_path_buf(),
                    source: std::io::Error::other(
                        "no vars file found to go with this firmware: pass --vars VARS.fd",
                    ),
                })?,
        };
        return Ok((c.to_path_buf(), v));
    }
    cands
        .iter()
        .find(|(c, v)| Path::new(c).exists() && Path::new(v).exists())
        .map(|(c, v)| (PathBuf::from(c), PathBuf::from(v)))
        .ok_or_else(|| RunError::NoFirmware {
            arch: arch.into(),
            looked: cands.iter().map(|(c, _)| c.to_string()).collect(),
            pkg: if arch == "amd64" {
                "ovmf"
            } else {
                "qemu-efi-aarch64"
            },
        })
}

/// Does KVM actually work? Opening /dev/kvm is not enough: on some hosts it
/// opens and then every VM creation fails, so ask it to create one.
pub fn kvm_usable() -> Result<(), String> {
    use std::os::fd::AsRawFd;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .map_err(|e| format!("/dev/kvm: {e}"))?;
    // KVM_CREATE_VM = _IO(KVMIO=0xAE, 0x01), machine type 0.
    const KVM_CREATE_VM: libc::c_ulong = 0xAE01;
    // SAFETY: an ioctl on an fd we own, with an integer argument; the returned
    // fd, if any, is closed right away.
    let vm = unsafe { libc::ioctl(f.as_raw_fd(), KVM_CREATE_VM as _, 0) };
    if vm < 0 {
        return Err(format!(
            "/dev/kvm opens but cannot create a VM: {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: `vm` is a file descriptor the kernel just gave us.
    unsafe { libc::close(vm) };
    Ok(())
}

fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// The decided accelerator and why.
pub fn choose_accel(accel: Accel, arch: &str) -> Result<(&'static str, Option<String>), RunError> {
    let native = arch == host_arch();
    match accel {
        Accel::Tcg => Ok(("tcg", None)),
        Accel::Kvm if !native => Err(RunError::Kvm(format!(
            "cannot run an {arch} guest with KVM on an {} host",
            host_arch()
        ))),
        Accel::Kvm => kvm_usable().map(|_| ("kvm", None)).map_err(RunError::Kvm),
        Accel::Auto if !native => Ok((
            "tcg",
            Some(format!("{arch} guest on an {} host", host_arch())),
        )),
        Accel::Auto => match kvm_usable() {
            Ok(()) => Ok(("kvm", None)),
            Err(why) => Ok(("tcg", Some(why))),
        },
    }
}

/// The QEMU program and arguments; `vars` must be this run's private copy.
pub fn qemu_command(
    o: &RunOptions,
    accel: &str,
    code: &Path,
    vars: &Path,
) -> Result<(String, Vec<String>), RunError> {
    let (bin, mut args): (&str, Vec<String>) = match o.arch.as_str() {
        "amd64" => (
            "qemu-system-x86_64",
            vec!["-machine".into(), format!("q35,accel={accel}")],
        ),
        "arm64" => {
            let cpu = if accel == "kvm" { "host" } else { "cortex-a72" };
            (
                "qemu-system-aarch64",
                vec![
                    "-machine".into(),
                    format!("virt,accel={accel}"),
                    "-cpu".into(),
                    cpu.into(),
                ],
            )
        }
        other => return Err(RunError::Arch(other.into())),
    };
    args.extend([
        "-m".into(),
        o.mem.to_string(),
        "-smp".into(),
        o.cpus.to_string(),
    ]);
    args.extend(["-nographic".into(), "-no-reboot".into()]);
    args.push("-drive".into());
    args.push(format!(
        "if=pflash,format=raw,unit=0,readonly=on,file={}",
        code.display()
    ));
    args.push("-drive".into());
    args.push(format!(
        "if=pflash,format=raw,unit=1,file={}",
        vars.display()
    ));
    // snapshot=on: the image file is never modified by a run.
    let img = o.image.display();
    if o.nvme {
        args.extend([
            "-drive".into(),
            format!("if=none,id=disk0,format=raw,snapshot=on,file={img}"),
        ]);
        args.extend(["-device".into(), "nvme,serial=i2kit0,drive=disk0".into()]);
    } else {
        args.extend([
            "-drive".into(),
            format!("if=virtio,format=raw,snapshot=on,file={img}"),
        ]);
    }
    let mut netdev = "user,id=net0".to_string();
    for p in &o.ports {
        netdev.push_str(&format!(",hostfwd=tcp::{}-:{}", p.host, p.guest));
    }
    args.extend([
        "-netdev".into(),
        netdev,
        "-device".into(),
        "virtio-net-pci,netdev=net0".into(),
    ]);
    if let Some(m) = &o.monitor {
        args.extend([
            "-monitor".into(),
            format!("unix:{},server=on,wait=off", m.display()),
        ]);
    }
    Ok((bin.into(), args))
}

/// Forwards for the image's container ports when the user gives none: the
/// same port on the host, except that a user who may not bind a privileged
/// port gets 8000 + port (80 → 8080, 443 → 8443).
pub fn default_forwards(
    guest_ports: &[u16],
    unprivileged_start: u16,
    root: bool,
) -> Vec<PortForward> {
    guest_ports
        .iter()
        .map(|&p| PortForward {
            host: if !root && p < unprivileged_start {
                8000 + p
            } else {
                p
            },
            guest: p,
        })
        .collect()
}

/// What the provenance next to an image says (platform, container ports).
pub fn image_facts(image: &Path) -> Option<(String, Vec<u16>)> {
    let stem = image.file_stem()?.to_str()?;
    let prov = image.with_file_name(format!("{stem}.provenance.json"));
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(prov).ok()?).ok()?;
    let arch = v["platform"].as_str()?.rsplit('/').next()?.to_string();
    let ports = v["ports"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|p| p.as_u64())
                .filter_map(|p| u16::try_from(p).ok())
                .collect()
        })
        .unwrap_or_default();
    Some((arch, ports))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_for_amd64_with_ports_and_nvme() {
        let o = RunOptions {
            image: "/tmp/x.raw".into(),
            arch: "amd64".into(),
            firmware: None,
            vars: None,
            accel: Accel::Tcg,
            mem: 256,
            cpus: 2,
            ports: vec!["8080:80".parse().unwrap()],
            nvme: true,
            monitor: Some("/tmp/m.sock".into()),
        };
        let (bin, args) = qemu_command(&o, "tcg", Path::new("/c.fd"), Path::new("/v.fd")).unwrap();
        assert_eq!(bin, "qemu-system-x86_64");
        let line = args.join(" ");
        assert!(
            line.contains("-machine q35,accel=tcg -m 256 -smp 2"),
            "{line}"
        );
        assert!(line.contains("hostfwd=tcp::8080-:80"), "{line}");
        assert!(
            line.contains("-device nvme,serial=i2kit0,drive=disk0"),
            "{line}"
        );
        assert!(line.contains("snapshot=on"), "{line}");
        assert!(
            line.contains("-monitor unix:/tmp/m.sock,server=on,wait=off"),
            "{line}"
        );
        assert!("80".parse::<PortForward>().is_err());
        assert!("a:b".parse::<PortForward>().is_err());
    }

    #[test]
    fn privileged_ports_move_up_for_ordinary_users() {
        let f = |root| {
            default_forwards(&[80, 443, 8080], 1024, root)
                .iter()
                .map(|p| (p.host, p.guest))
                .collect::<Vec<_>>()
        };
        assert_eq!(f(false), [(8080, 80), (8443, 443), (8080, 8080)]);
        assert_eq!(f(true), [(80, 80), (443, 443), (8080, 8080)]);
        assert_eq!(
            default_forwards(&[80], 0, false)[0].host,
            80,
            "unprivileged_port_start=0"
        );
    }

    #[test]
    fn auto_falls_back_to_tcg_for_foreign_guests() {
        let other = if host_arch() == "amd64" {
            "arm64"
        } else {
            "amd64"
        };
        assert_eq!(choose_accel(Accel::Auto, other).unwrap().0, "tcg");
        assert!(choose_accel(Accel::Kvm, other).is_err());
        // On the host's own architecture, auto picks kvm only if a VM can be created.
        let (a, why) = choose_accel(Accel::Auto, host_arch()).unwrap();
        assert_eq!(a == "kvm", kvm_usable().is_ok(), "{why:?}");
    }
}
