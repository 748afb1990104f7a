//! i2kit turns a Kubernetes Deployment into a bootable, bit-for-bit
//! reproducible VM image.
//!
//! ```text
//! manifest.yml ─► plan ─► fetch ─► tree ─► initramfs ─► uki ─► disk ─► push aws
//! ```
//!
//! Module index, in pipeline order:
//! - [`manifest`]: the Deployment subset and the paper's compact form → [`manifest::Pod`]
//! - [`reference`]: image references and `oci:` layouts
//! - [`lock`]: `i2kit.lock`, references pinned per platform
//! - [`fetch`]: resolve references and bring blobs into the [`store`], from the [`registry`]
//! - [`store`]: the content-addressed store (an OCI image layout)
//! - [`layer`]: compressed layers → uncompressed tars in the store
//! - [`tree`]: layers applied into an in-memory tree; [`cpio`]: the newc writer
//! - [`digest`], [`oci`]: digests and OCI documents shared by every stage
//! - [`pack`]: a directory → a deterministic single-layer image
//! - [`kernel_profile`]: which kernel modules a target needs
#![deny(missing_docs)]

pub mod airgap;
pub mod aws;
pub mod build;
pub mod compress;
pub mod cpio;
pub mod digest;
pub mod disk;
pub mod fat;
pub mod fetch;
pub mod initramfs;
pub mod kernel_profile;
pub mod layer;
pub mod lock;
pub mod manifest;
pub mod oci;
pub mod pack;
pub mod pod_spec;
pub mod reference;
pub mod registry;
pub mod remote_cache;
pub mod run;
pub mod signing;
pub mod store;
pub mod tree;
pub mod uki;

/// i2kit's version, part of every build key.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Install the TLS crypto provider (rustls on ring) once per process.
pub fn init_tls() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
