//! Kernel profiles: which modules the init loads at boot for a target.
//! Debian's cloud kernel builds NVMe and virtio-scsi in, but virtio-blk,
//! virtio-net and ENA are modules (kernels/README.md). Dependencies are
//! resolved from `modules.dep`, or from the modules' own `depends=` field.
//! Every profile loads `button` and `evdev`: the ACPI power button (QEMU's
//! `system_powerdown`, an EC2 stop) reaches i2kit-init as an input event.

/// A named set of modules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Profile {
    /// Profile name, as written in `i2kit.dev/profile`.
    pub name: &'static str,
    /// What it is for.
    pub description: &'static str,
    /// Modules to preload (dependencies are added by the build).
    pub modules: &'static [&'static str],
}

/// Every known profile.
pub const PROFILES: &[Profile] = &[
    Profile {
        name: "qemu",
        description: "QEMU/KVM with virtio disks and network",
        modules: &["virtio_pci", "virtio_blk", "virtio_net", "button", "evdev"],
    },
    Profile {
        name: "aws",
        description: "AWS Nitro: NVMe is built in; ENA networking",
        modules: &["ena", "button", "evdev"],
    },
    Profile {
        name: "generic",
        description: "both of the above: one image that boots in QEMU and on AWS",
        modules: &[
            "virtio_pci",
            "virtio_blk",
            "virtio_net",
            "ena",
            "button",
            "evdev",
        ],
    },
];

/// Look a profile up by name.
pub fn profile(name: &str) -> Option<&'static Profile> {
    PROFILES.iter().find(|p| p.name == name)
}
