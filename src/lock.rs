//! `i2kit.lock`: every image reference of a manifest pinned to a manifest digest
//! per platform, so that later builds resolve nothing over the network and
//! CI can insist (`--locked`) that nothing moved.
//!
//! Format (JSON, keys sorted, stable for diffs):
//! ```json
//! {
//!   "lockVersion": 1,
//!   "images": {
//!     "docker.io/library/busybox:1.36": {
//!       "digest": "sha256:…",                       // what the tag named (index or manifest)
//!       "platforms": { "linux/amd64": "sha256:…" }  // the platform manifest
//!     }
//!   }
//! }
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::oci::Platform;
use crate::reference::ImageRef;

/// The lock file name, next to the manifest.
pub const LOCK_FILE: &str = "i2kit.lock";
const LOCK_VERSION: u32 = 1;

/// A lock file.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LockFile {
    /// Format version.
    pub lock_version: u32,
    /// Locked images by reference (without digest).
    pub images: BTreeMap<String, LockedImage>,
}

/// One locked reference.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockedImage {
    /// Digest of what the reference named (an index or a manifest).
    pub digest: Digest,
    /// Platform manifest digests.
    pub platforms: BTreeMap<String, Digest>,
    /// Where `i2kit mirror` copied it (`REGISTRY/REPO`); fetched from there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror: Option<String>,
}

/// Lock file problems.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Reading or writing failed.
    #[error("{path}: {detail}")]
    Io {
        /// The lock file.
        path: PathBuf,
        /// What happened.
        detail: String,
    },
    /// `--locked` without a lock file.
    #[error("--locked: {0} does not exist; run `i2kit lock` and commit it")]
    Missing(PathBuf),
    /// The lock does not match the manifest.
    #[error("--locked: {path} is stale; run `i2kit lock` again:\n{}", .entries.iter().map(|e| format!("  - {e}")).collect::<Vec<_>>().join("\n"))]
    Stale {
        /// The lock file.
        path: PathBuf,
        /// One line per stale entry.
        entries: Vec<String>,
    },
}

/// The lock file path for a manifest path.
pub fn lock_path(manifest: &Path) -> PathBuf {
    manifest.parent().unwrap_or(Path::new(".")).join(LOCK_FILE)
}

/// The key a reference is locked under.
pub fn key(r: &ImageRef) -> String {
    r.without_digest().to_string()
}

impl LockFile {
    /// An empty lock.
    pub fn new() -> LockFile {
        LockFile {
            lock_version: LOCK_VERSION,
            images: BTreeMap::new(),
        }
    }

    /// Load a lock file; `Ok(None)` when it does not exist.
    pub fn load(path: &Path) -> Result<Option<LockFile>, LockError> {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(LockError::Io {
                    path: path.into(),
                    detail: e.to_string(),
                });
            }
        };
        let lock: LockFile = serde_json::from_slice(&bytes).map_err(|e| LockError::Io {
            path: path.into(),
            detail: format!("not a valid lock file: {e}"),
        })?;
        if lock.lock_version != LOCK_VERSION {
            return Err(LockError::Io {
                path: path.into(),
                detail: format!(
                    "lockVersion {} is not supported (expected {LOCK_VERSION})",
                    lock.lock_version
                ),
            });
        }
        Ok(Some(lock))
    }

    /// The canonical bytes of the lock file.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).expect("a lock serialises");
        v.push(b'\n');
        v
    }

    /// Write atomically.
    pub fn save(&self, path: &Path) -> Result<(), LockError> {
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        crate::store::write_atomic(dir, path, &self.to_bytes()).map_err(|e| LockError::Io {
            path: path.into(),
            detail: e.to_string(),
        })
    }

    /// The reference pinned to its locked platform manifest, if locked.
    pub fn pin(&self, r: &ImageRef, platform: &Platform) -> Option<ImageRef> {
        let entry = self.images.get(&key(r))?;
        if let Some(d) = r.digest()
            && d != entry.digest
            && !entry.platforms.values().any(|p| *p == d)
        {
            return None;
        }
        entry
            .platforms
            .get(&platform.to_string())
            .map(|d| r.with_digest(*d))
    }

    /// Mirror locations by reference (without digest), for [`crate::fetch::FetchOptions::mirrors`].
    pub fn mirrors(&self) -> BTreeMap<String, crate::reference::RegistryRef> {
        self.images
            .iter()
            .filter_map(|(k, v)| {
                let m = v.mirror.as_ref()?;
                match m.parse::<ImageRef>().ok()? {
                    ImageRef::Registry(r) => Some((k.clone(), r)),
                    ImageRef::Layout(_) => None,
                }
            })
            .collect()
    }

    /// Every way the lock fails to cover exactly `refs` on `platforms`.
    pub fn stale_entries(&self, refs: &[ImageRef], platforms: &[Platform]) -> Vec<String> {
        let mut out = Vec::new();
        let wanted: std::collections::BTreeSet<String> = refs.iter().map(key).collect();
        for r in refs {
            let k = key(r);
            match self.images.get(&k) {
                None => out.push(format!("{k}: in the manifest but not in the lock")),
                Some(e) => {
                    if let Some(d) = r.digest()
                        && d != e.digest
                        && !e.platforms.values().any(|p| *p == d)
                    {
                        out.push(format!(
                            "{k}: the manifest pins {d}, the lock has {}",
                            e.digest
                        ));
                    }
                    for p in platforms {
                        if !e.platforms.contains_key(&p.to_string()) {
                            out.push(format!("{k}: no digest for platform {p}"));
                        }
                    }
                }
            }
        }
        for k in self.images.keys() {
            if !wanted.contains(k) {
                out.push(format!("{k}: in the lock but no longer in the manifest"));
            }
        }
        out.sort();
        out.dedup();
        out
    }

    /// Fail with [`LockError::Stale`] unless the lock covers exactly `refs`.
    pub fn check(
        &self,
        path: &Path,
        refs: &[ImageRef],
        platforms: &[Platform],
    ) -> Result<(), LockError> {
        let entries = self.stale_entries(refs, platforms);
        if entries.is_empty() {
            Ok(())
        } else {
            Err(LockError::Stale {
                path: path.to_path_buf(),
                entries,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_entries_name_what_moved() {
        let amd = Platform::linux_amd64();
        let a: ImageRef = "localhost:5000/a:1".parse().unwrap();
        let b: ImageRef = "localhost:5000/b:1".parse().unwrap();
        let mut lock = LockFile::new();
        lock.images.insert(
            key(&a),
            LockedImage {
                mirror: Some("mirror.example:5000/team/a".into()),
                digest: Digest::of(b"a"),
                platforms: [("linux/amd64".to_string(), Digest::of(b"a-amd"))].into(),
            },
        );
        lock.images.insert(
            "localhost:5000/gone:1".into(),
            LockedImage {
                mirror: None,
                digest: Digest::of(b"g"),
                platforms: BTreeMap::new(),
            },
        );
        let stale = lock.stale_entries(&[a.clone(), b.clone()], std::slice::from_ref(&amd));
        assert_eq!(
            stale,
            vec![
                "localhost:5000/b:1: in the manifest but not in the lock".to_string(),
                "localhost:5000/gone:1: in the lock but no longer in the manifest".to_string(),
            ]
        );
        let arm: Platform = "linux/arm64".parse().unwrap();
        assert_eq!(
            lock.stale_entries(std::slice::from_ref(&a), std::slice::from_ref(&arm))
                .len(),
            2
        );
        assert_eq!(
            lock.pin(&a, &amd).unwrap().digest(),
            Some(Digest::of(b"a-amd"))
        );
        assert!(lock.pin(&a, &arm).is_none());
        let mirrors = lock.mirrors();
        assert_eq!(mirrors.len(), 1);
        assert_eq!(mirrors[&key(&a)].registry, "mirror.example:5000");
        assert_eq!(mirrors[&key(&a)].repository, "team/a");
        let pinned_elsewhere = a.with_digest(Digest::of(b"other"));
        assert!(lock.stale_entries(&[pinned_elsewhere], &[amd])[0].contains("the manifest pins"));
    }

    #[test]
    fn round_trip_is_byte_stable() {
        let mut lock = LockFile::new();
        lock.images.insert(
            "x/y:1".into(),
            LockedImage {
                mirror: None,
                digest: Digest::of(b"1"),
                platforms: [
                    ("linux/arm64".into(), Digest::of(b"2")),
                    ("linux/amd64".into(), Digest::of(b"3")),
                ]
                .into(),
            },
        );
        let bytes = lock.to_bytes();
        let again: LockFile = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(again.to_bytes(), bytes);
        assert!(String::from_utf8(bytes).unwrap().find("linux/amd64") < Some(usize::MAX));
    }
}
