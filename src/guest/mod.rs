//! Pure logic of the in-VM init (i2kit-init), kept in the library so it is
//! unit-tested on the build machine: container restart back-off and the DHCPv4
//! packet codec. The init binary itself (std + libc, static) drives syscalls
//! around these.

pub mod backoff;
pub mod dhcp;
