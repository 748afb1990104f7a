//! Ed25519 signatures over remote cache entries. A signature covers the
//! entry's manifest digest — which covers the plan (the build key) and every
//! output, provenance included. It is stored next to the entry as its own
//! small manifest tagged `bk-<key>.sig-<key id>` (no referrers API needed:
//! distribution 2.8/3.0 and GHCR lack it). Ed25519 signatures are
//! deterministic, so re-signing pushes the same bytes.
//!
//! Key files are one line: `i2kit-ed25519-private <hex seed>` or
//! `i2kit-ed25519-public <hex key>`.

use std::path::Path;

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};

use crate::digest::Digest;

const PRIVATE: &str = "i2kit-ed25519-private";
const PUBLIC: &str = "i2kit-ed25519-public";
/// Domain separation: these bytes are never anything but an i2kit cache signature.
const CONTEXT: &str = "i2kit remote cache entry v1\n";

/// Key file problems.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Reading or writing.
    #[error("{path}: {detail}")]
    File {
        /// The file.
        path: String,
        /// What went wrong.
        detail: String,
    },
}

fn bad(path: &Path, detail: impl Into<String>) -> KeyError {
    KeyError::File {
        path: path.display().to_string(),
        detail: detail.into(),
    }
}

fn read_key(path: &Path, kind: &str) -> Result<[u8; 32], KeyError> {
    let text = std::fs::read_to_string(path).map_err(|e| bad(path, e.to_string()))?;
    let hexpart = text
        .trim()
        .strip_prefix(kind)
        .map(str::trim)
        .ok_or_else(|| {
            bad(
                path,
                format!("not an {kind} key file (i2kit key generate makes them)"),
            )
        })?;
    let bytes = hex::decode(hexpart).map_err(|_| bad(path, "the key is not hex"))?;
    bytes
        .try_into()
        .map_err(|_| bad(path, "the key is not 32 bytes"))
}

/// Load a private key.
pub fn load_signing(path: &Path) -> Result<SigningKey, KeyError> {
    Ok(SigningKey::from_bytes(&read_key(path, PRIVATE)?))
}

/// Load a public key.
pub fn load_verifying(path: &Path) -> Result<VerifyingKey, KeyError> {
    VerifyingKey::from_bytes(&read_key(path, PUBLIC)?).map_err(|e| bad(path, e.to_string()))
}

/// Write a new key pair: `PREFIX.key` (mode 0600) and `PREFIX.pub`.
pub fn generate(prefix: &Path, seed: [u8; 32]) -> Result<VerifyingKey, KeyError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let key = SigningKey::from_bytes(&seed);
    let private = prefix.with_extension("key");
    let public = prefix.with_extension("pub");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&private)
        .map_err(|e| bad(&private, e.to_string()))?;
    writeln!(f, "{PRIVATE} {}", hex::encode(key.to_bytes()))
        .map_err(|e| bad(&private, e.to_string()))?;
    std::fs::write(
        &public,
        format!("{PUBLIC} {}\n", hex::encode(key.verifying_key().to_bytes())),
    )
    .map_err(|e| bad(&public, e.to_string()))?;
    Ok(key.verifying_key())
}

/// A short, stable name for a public key (first 16 hex of its sha256).
pub fn key_id(k: &VerifyingKey) -> String {
    Digest::of(k.as_bytes()).hex()[..16].to_string()
}

/// The signed record stored in the registry.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Record {
    /// The cache entry's manifest digest.
    pub manifest: Digest,
    /// The signer's public key (hex).
    pub key: String,
    /// The signature (hex).
    pub signature: String,
}

fn payload(manifest: &Digest) -> Vec<u8> {
    format!("{CONTEXT}{manifest}").into_bytes()
}

/// Sign a cache entry's manifest digest.
pub fn sign(key: &SigningKey, manifest: &Digest) -> Record {
    Record {
        manifest: *manifest,
        key: hex::encode(key.verifying_key().to_bytes()),
        signature: hex::encode(key.sign(&payload(manifest)).to_bytes()),
    }
}

/// Does `r` carry a valid signature of `manifest` by `trusted`?
pub fn verify(r: &Record, manifest: &Digest, trusted: &VerifyingKey) -> bool {
    if r.manifest != *manifest || r.key != hex::encode(trusted.to_bytes()) {
        return false;
    }
    let Ok(sig) = hex::decode(&r.signature) else {
        return false;
    };
    let Ok(sig) = Signature::from_slice(&sig) else {
        return false;
    };
    trusted.verify(&payload(manifest), &sig).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_verify_and_refuse() {
        let dir = tempfile::tempdir().unwrap();
        let prefix = dir.path().join("ci");
        let vk = generate(&prefix, [7u8; 32]).unwrap();
        let sk = load_signing(&prefix.with_extension("key")).unwrap();
        assert_eq!(load_verifying(&prefix.with_extension("pub")).unwrap(), vk);
        let m = Digest::of(b"manifest");
        let r = sign(&sk, &m);
        assert_eq!(r, sign(&sk, &m), "ed25519 is deterministic");
        assert!(verify(&r, &m, &vk));
        assert!(!verify(&r, &Digest::of(b"other"), &vk), "another manifest");
        let other = SigningKey::from_bytes(&[8u8; 32]);
        assert!(!verify(&r, &m, &other.verifying_key()), "another key");
        let mut forged = r.clone();
        forged.signature.replace_range(
            0..2,
            if &forged.signature[0..2] == "00" {
                "11"
            } else {
                "00"
            },
        );
        assert!(!verify(&forged, &m, &vk));
        assert!(
            generate(&prefix, [1u8; 32]).is_err(),
            "never overwrites a key"
        );
        assert!(
            load_verifying(&prefix.with_extension("key")).is_err(),
            "a private key is not a public one"
        );
        assert_eq!(key_id(&vk).len(), 16);
    }
}
