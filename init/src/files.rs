//! Files the init shares with every container: bind-mounted read-only over
//! the container's `/etc/resolv.conf`, `/etc/hosts` and `/etc/hostname`.
//! They are rewritten in place (never renamed) so that a lease renewal shows
//! through the bind mounts.

use std::io::{self, Write};

/// Written from the DHCP lease.
pub const RESOLV_CONF: &str = "/run/i2kit/resolv.conf";
/// localhost and the Pod's address.
pub const HOSTS: &str = "/run/i2kit/hosts";
/// The Pod's hostname.
pub const HOSTNAME: &str = "/run/i2kit/hostname";

/// Truncate and rewrite, keeping the inode.
pub fn write_in_place(path: &str, text: &str) -> io::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)?;
    f.write_all(text.as_bytes())
}
