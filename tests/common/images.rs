//! Deterministic OCI image layouts for tests: tar layers (gzip or plain),
//! image configs, manifests and multi-platform indexes.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use sha2::{Digest as _, Sha256};

pub fn sha(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// A file in a layer.
pub enum Entry<'a> {
    File(&'a str, &'a [u8], u32),
    Dir(&'a str),
    Symlink(&'a str, &'a str),
    /// Raw tar header manipulation for hostile-layer tests.
    RawName(&'a [u8], &'a [u8]),
}

/// A tar layer (uncompressed bytes).
pub fn tar_layer(entries: &[Entry]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    b.mode(tar::HeaderMode::Deterministic);
    for e in entries {
        let mut h = tar::Header::new_ustar();
        h.set_mtime(0);
        h.set_uid(0);
        h.set_gid(0);
        match e {
            Entry::File(p, data, mode) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(*mode);
                h.set_size(data.len() as u64);
                b.append_data(&mut h, p, *data).unwrap();
            }
            Entry::Dir(p) => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(0o755);
                h.set_size(0);
                b.append_data(&mut h, p, &[][..]).unwrap();
            }
            Entry::Symlink(p, target) => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_mode(0o777);
                h.set_size(0);
                b.append_link(&mut h, p, target).unwrap();
            }
            Entry::RawName(name, data) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(0o644);
                h.set_size(data.len() as u64);
                h.as_old_mut().name[..name.len()].copy_from_slice(name);
                h.set_cksum();
                b.append(&h, *data).unwrap();
            }
        }
    }
    b.into_inner().unwrap()
}

pub fn gzip(bytes: &[u8], level: u32) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(level));
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

/// Writes blobs into an OCI layout directory and names entries in its index.json.
pub struct Layout {
    pub dir: std::path::PathBuf,
    entries: BTreeMap<String, serde_json::Value>,
}

pub struct Built {
    pub manifest_digest: String,
    pub manifest_size: usize,
    pub config_digest: String,
    pub layer_digests: Vec<String>,
}

impl Layout {
    pub fn new(dir: &Path) -> Layout {
        std::fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
        std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
        Layout {
            dir: dir.to_path_buf(),
            entries: BTreeMap::new(),
        }
    }

    pub fn blob(&self, bytes: &[u8]) -> String {
        let d = sha(bytes);
        std::fs::write(self.dir.join("blobs/sha256").join(&d[7..]), bytes).unwrap();
        d
    }

    /// An image manifest with the given (already compressed or plain) layers.
    pub fn image(
        &self,
        arch: &str,
        env: &[&str],
        layers: &[(Vec<u8>, &str)],
        diff_ids: &[String],
    ) -> Built {
        let config = serde_json::json!({
            "architecture": arch,
            "os": "linux",
            "config": {"Env": env, "Cmd": ["/bin/sh"]},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        });
        let config_bytes = serde_json::to_vec(&config).unwrap();
        let config_digest = self.blob(&config_bytes);
        let mut layer_descs = Vec::new();
        let mut layer_digests = Vec::new();
        for (bytes, media) in layers {
            let d = self.blob(bytes);
            layer_descs
                .push(serde_json::json!({"mediaType": media, "digest": d, "size": bytes.len()}));
            layer_digests.push(d);
        }
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config_bytes.len()},
            "layers": layer_descs,
        });
        let mbytes = serde_json::to_vec(&manifest).unwrap();
        Built {
            manifest_digest: self.blob(&mbytes),
            manifest_size: mbytes.len(),
            config_digest,
            layer_digests,
        }
    }

    /// A simple one-platform image from tar entries (gzip layers), named `name`.
    pub fn simple(&mut self, name: &str, arch: &str, layers: &[Vec<u8>]) -> Built {
        let diff_ids: Vec<String> = layers.iter().map(|l| sha(l)).collect();
        let gz: Vec<(Vec<u8>, &str)> = layers
            .iter()
            .map(|l| (gzip(l, 6), "application/vnd.oci.image.layer.v1.tar+gzip"))
            .collect();
        let b = self.image(arch, &["PATH=/bin"], &gz, &diff_ids);
        self.name(
            name,
            "application/vnd.oci.image.manifest.v1+json",
            &b.manifest_digest,
            b.manifest_size,
        );
        b
    }

    /// An index over per-arch images, named `name`.
    pub fn index(&mut self, name: &str, images: &[(&str, &Built)]) -> String {
        let manifests: Vec<_> = images
            .iter()
            .map(|(arch, b)| {
                serde_json::json!({
                    "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "digest": b.manifest_digest, "size": b.manifest_size,
                    "platform": {"os": "linux", "architecture": arch},
                })
            })
            .collect();
        let index = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": manifests,
        });
        let bytes = serde_json::to_vec(&index).unwrap();
        let d = self.blob(&bytes);
        self.name(
            name,
            "application/vnd.oci.image.index.v1+json",
            &d,
            bytes.len(),
        );
        d
    }

    pub fn name(&mut self, name: &str, media: &str, digest: &str, size: usize) {
        self.entries.insert(
            name.to_string(),
            serde_json::json!({
                "mediaType": media, "digest": digest, "size": size,
                "annotations": {"org.opencontainers.image.ref.name": name},
            }),
        );
        let index = serde_json::json!({
            "schemaVersion": 2,
            "manifests": self.entries.values().collect::<Vec<_>>(),
        });
        std::fs::write(
            self.dir.join("index.json"),
            serde_json::to_vec_pretty(&index).unwrap(),
        )
        .unwrap();
    }
}

/// Deterministic pseudo-random bytes (xorshift), incompressible.
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}
