//! The content-addressed store: an OCI image layout directory
//! (image-spec `image-layout.md`: `oci-layout`, `index.json`, `blobs/sha256/<hex>`)
//! that skopeo and umoci read as it is.
//!
//! Integrity rules:
//! - a blob is streamed to a temporary file under `.i2kit/ingest/`, hashed while
//!   it is written, checked against the expected digest and size, and only then
//!   renamed into `blobs/sha256/` (rename is atomic on one file system), so
//!   `blobs/` never holds a partial or unverified blob, whatever kills the writer;
//! - `index.json` is rewritten through a temporary file under an exclusive lock;
//! - writers hold a shared lock on `.i2kit/gc.lock` while they work and `gc`
//!   takes it exclusively, so a collection never deletes a blob that a running
//!   pull has written but not yet linked from `index.json`.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Write};
use std::path::{Path, PathBuf};

use crate::digest::{Digest, Hasher};
use crate::oci::{self, ANNOTATION_REF_NAME, Descriptor, Index, ManifestDoc};

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A file-system operation failed.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// On which path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Content did not hash to what it was announced as.
    #[error(
        "digest mismatch for {what}: expected {expected}, got {actual} ({size} bytes); the blob was not stored"
    )]
    DigestMismatch {
        /// What was being stored.
        what: String,
        /// The announced digest.
        expected: Digest,
        /// The digest of what arrived.
        actual: Digest,
        /// Bytes received.
        size: u64,
    },
    /// Content had another size than announced.
    #[error("size mismatch for {what} ({digest}): expected {expected} bytes, got {actual}{more}; the blob was not stored", more = if *.actual > *.expected { " or more" } else { "" })]
    SizeMismatch {
        /// What was being stored.
        what: String,
        /// The announced digest.
        digest: Digest,
        /// Announced size.
        expected: u64,
        /// Received size.
        actual: u64,
    },
    /// The directory is not an OCI layout.
    #[error("{path} is not an OCI image layout: {problem}")]
    NotALayout {
        /// The directory.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// A blob is absent.
    #[error("blob {digest} is not in the store {root}")]
    Missing {
        /// The digest.
        digest: Digest,
        /// Store root.
        root: PathBuf,
    },
    /// No default location could be derived.
    #[error("no store location: set --store, I2KIT_STORE, XDG_CACHE_HOME or HOME")]
    NoLocation,
}

fn io_err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> StoreError + 'a {
    move |source| StoreError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

type Result<T, E = StoreError> = std::result::Result<T, E>;

/// A content-addressed OCI image layout on disk.
#[derive(Clone, Debug)]
pub struct Store {
    root: PathBuf,
}

/// A held file lock; released on drop.
#[derive(Debug)]
pub struct LockGuard(#[allow(dead_code)] File);

const OCI_LAYOUT: &str = r#"{"imageLayoutVersion":"1.0.0"}"#;

impl Store {
    /// The store location from the environment: `$I2KIT_STORE`, else
    /// `$XDG_CACHE_HOME/i2kit/store`, else `~/.cache/i2kit/store`.
    pub fn default_root() -> Result<PathBuf> {
        let var = |k: &str| {
            std::env::var_os(k)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        if let Some(p) = var("I2KIT_STORE") {
            return Ok(p);
        }
        if let Some(p) = var("XDG_CACHE_HOME") {
            return Ok(p.join("i2kit/store"));
        }
        if let Some(p) = var("HOME") {
            return Ok(p.join(".cache/i2kit/store"));
        }
        Err(StoreError::NoLocation)
    }

    /// Open the layout at `root`, creating an empty one if the directory is absent or empty.
    pub fn open(root: impl Into<PathBuf>) -> Result<Store> {
        let root = root.into();
        fs::create_dir_all(&root).map_err(io_err("create store directory", &root))?;
        let store = Store { root };
        let layout = store.root.join("oci-layout");
        if !layout.exists() {
            store.refuse_foreign_directory()?;
            // Two processes may create the same store at once: serialise on a lock
            // file inside our private directory, then look again.
            fs::create_dir_all(store.private_dir())
                .map_err(io_err("create directory", &store.private_dir()))?;
            let _g = store.lock("init.lock", true)?;
            if !layout.exists() {
                store.refuse_foreign_directory()?;
                write_atomic(&store.private_dir(), &layout, OCI_LAYOUT.as_bytes())?;
            }
        }
        let bytes = fs::read(&layout).map_err(io_err("read", &layout))?;
        let v: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|e| StoreError::NotALayout {
                path: store.root.clone(),
                problem: format!("oci-layout is not JSON: {e}"),
            })?;
        if v.get("imageLayoutVersion")
            .and_then(|x| x.as_str())
            .is_none()
        {
            return Err(StoreError::NotALayout {
                path: store.root,
                problem: "oci-layout has no imageLayoutVersion".into(),
            });
        }
        for d in [store.root.join("blobs/sha256"), store.ingest_dir()] {
            fs::create_dir_all(&d).map_err(io_err("create directory", &d))?;
        }
        if !store.index_path().exists() {
            let _g = store.lock_index()?;
            if !store.index_path().exists() {
                store.write_index(&empty_index())?;
            }
        }
        Ok(store)
    }

    /// A directory without `oci-layout` may only hold our private directory
    /// (another i2kit process creating the store right now).
    fn refuse_foreign_directory(&self) -> Result<()> {
        let others = fs::read_dir(&self.root)
            .map_err(io_err("read", &self.root))?
            .filter_map(|e| e.ok())
            .any(|e| e.file_name() != ".i2kit");
        if others {
            return Err(StoreError::NotALayout {
                path: self.root.clone(),
                problem: "the directory is not empty and has no oci-layout file".into(),
            });
        }
        Ok(())
    }

    /// The store directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn private_dir(&self) -> PathBuf {
        self.root.join(".i2kit")
    }

    fn ingest_dir(&self) -> PathBuf {
        self.private_dir().join("ingest")
    }

    fn index_path(&self) -> PathBuf {
        self.root.join("index.json")
    }

    /// Where a blob lives (whether or not it is present).
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.root.join("blobs/sha256").join(digest.hex())
    }

    /// Is the blob present (with this size, when given)?
    pub fn has_blob(&self, digest: &Digest, size: Option<u64>) -> bool {
        match fs::metadata(self.blob_path(digest)) {
            Ok(m) => m.is_file() && size.is_none_or(|s| s == m.len()),
            Err(_) => false,
        }
    }

    fn lock(&self, name: &str, exclusive: bool) -> Result<LockGuard> {
        let path = self.private_dir().join(name);
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io_err("open lock file", &path))?;
        if exclusive { f.lock() } else { f.lock_shared() }.map_err(io_err("lock", &path))?;
        Ok(LockGuard(f))
    }

    /// Held by everything that adds blobs, so `gc` waits for it.
    pub fn lock_writer(&self) -> Result<LockGuard> {
        self.lock("gc.lock", false)
    }

    fn lock_index(&self) -> Result<LockGuard> {
        self.lock("index.lock", true)
    }

    /// Start writing a blob whose digest (and size, when known) is announced.
    pub fn blob_writer(
        &self,
        what: &str,
        expected: Digest,
        size: Option<u64>,
    ) -> Result<BlobWriter> {
        self.writer(what, Some(expected), size)
    }

    /// Start writing a blob whose digest is only known at the end (generated
    /// content); [`BlobWriter::commit`] names it by what it hashed to.
    pub fn blob_writer_new(&self, what: &str) -> Result<BlobWriter> {
        self.writer(what, None, None)
    }

    fn writer(
        &self,
        what: &str,
        expected: Option<Digest>,
        size: Option<u64>,
    ) -> Result<BlobWriter> {
        let prefix = expected.map_or("new-".to_string(), |e| format!("{}-", &e.hex()[..16]));
        let tmp = tempfile::Builder::new()
            .prefix(&prefix)
            .tempfile_in(self.ingest_dir())
            .map_err(io_err("create temporary blob in", &self.ingest_dir()))?;
        Ok(BlobWriter {
            tmp,
            hasher: Hasher::new(),
            what: what.to_string(),
            expected,
            size,
            root: self.root.clone(),
        })
    }

    /// Store bytes, verifying them against `expected` when given; returns their digest.
    pub fn put_bytes(&self, what: &str, bytes: &[u8], expected: Option<Digest>) -> Result<Digest> {
        let actual = Digest::of(bytes);
        let expected = expected.unwrap_or(actual);
        if self.has_blob(&expected, Some(bytes.len() as u64)) && actual == expected {
            return Ok(actual);
        }
        let mut w = self.blob_writer(what, expected, Some(bytes.len() as u64))?;
        w.write_all(bytes)
            .map_err(io_err("write", &self.blob_path(&expected)))?;
        w.commit()
    }

    /// Open a blob for streaming.
    pub fn open_blob(&self, digest: &Digest) -> Result<File> {
        let p = self.blob_path(digest);
        File::open(&p).map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                StoreError::Missing {
                    digest: *digest,
                    root: self.root.clone(),
                }
            } else {
                io_err("open", &p)(e)
            }
        })
    }

    /// Read a (small) blob whole, re-checking its digest.
    pub fn read_blob(&self, digest: &Digest) -> Result<Vec<u8>> {
        let mut bytes = Vec::new();
        let p = self.blob_path(digest);
        self.open_blob(digest)?
            .read_to_end(&mut bytes)
            .map_err(io_err("read", &p))?;
        let actual = Digest::of(&bytes);
        if actual != *digest {
            return Err(StoreError::DigestMismatch {
                what: format!("stored blob {}", p.display()),
                expected: *digest,
                actual,
                size: bytes.len() as u64,
            });
        }
        Ok(bytes)
    }

    /// The store's `index.json`.
    pub fn index(&self) -> Result<Index> {
        let p = self.index_path();
        let bytes = fs::read(&p).map_err(io_err("read", &p))?;
        serde_json::from_slice(&bytes).map_err(|e| StoreError::NotALayout {
            path: self.root.clone(),
            problem: format!("index.json: {e}"),
        })
    }

    fn write_index(&self, index: &Index) -> Result<()> {
        let mut bytes = serde_json::to_vec_pretty(index).expect("an index serialises");
        bytes.push(b'\n');
        write_atomic(&self.private_dir(), &self.index_path(), &bytes)
    }

    /// Point the name `name` (`org.opencontainers.image.ref.name`) at `desc`,
    /// replacing what it named before. Entries stay sorted by name.
    pub fn set_ref(&self, name: &str, mut desc: Descriptor) -> Result<()> {
        let _g = self.lock_index()?;
        let mut index = self.index()?;
        desc.annotations
            .insert(ANNOTATION_REF_NAME.to_string(), name.to_string());
        index
            .manifests
            .retain(|d| d.annotations.get(ANNOTATION_REF_NAME).map(String::as_str) != Some(name));
        index.manifests.push(desc);
        index.manifests.sort_by(|a, b| {
            let key = |d: &Descriptor| d.annotations.get(ANNOTATION_REF_NAME).cloned();
            key(a).cmp(&key(b)).then(a.digest.cmp(&b.digest))
        });
        self.write_index(&index)
    }

    /// The descriptor a name points at.
    pub fn find_ref(&self, name: &str) -> Result<Option<Descriptor>> {
        Ok(self
            .index()?
            .manifests
            .into_iter()
            .find(|d| d.annotations.get(ANNOTATION_REF_NAME).map(String::as_str) == Some(name)))
    }

    /// Every blob file name under `blobs/sha256` that is a valid digest, plus stray names.
    fn list_blobs(&self) -> Result<(Vec<Digest>, Vec<PathBuf>)> {
        let dir = self.root.join("blobs/sha256");
        let mut good = Vec::new();
        let mut stray = Vec::new();
        for e in fs::read_dir(&dir).map_err(io_err("read", &dir))? {
            let e = e.map_err(io_err("read", &dir))?;
            match e.file_name().to_str().map(Digest::from_hex) {
                Some(Ok(d)) => good.push(d),
                _ => stray.push(e.path()),
            }
        }
        good.sort();
        Ok((good, stray))
    }

    /// Re-hash every blob; report the corrupt ones and index entries whose blobs are gone.
    pub fn verify(&self, jobs: usize) -> Result<VerifyReport> {
        let (blobs, stray) = self.list_blobs()?;
        let next = std::sync::atomic::AtomicUsize::new(0);
        let results = std::sync::Mutex::new(Vec::new());
        std::thread::scope(|s| {
            for _ in 0..jobs.max(1) {
                s.spawn(|| {
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(d) = blobs.get(i) else { break };
                        let r = hash_file(&self.blob_path(d)).map(|(a, n)| (*d, a, n));
                        results.lock().expect("no panics while locked").push(r);
                    }
                });
            }
        });
        let mut report = VerifyReport::default();
        for r in results.into_inner().expect("threads joined") {
            let (d, actual, n) = r?;
            report.checked += 1;
            report.bytes += n;
            if actual != d {
                report.corrupt.push(CorruptBlob {
                    digest: d,
                    actual,
                    path: self.blob_path(&d),
                });
            }
        }
        report.corrupt.sort_by_key(|c| c.digest);
        report.stray = stray;
        let reach = self.reachable()?;
        report.missing = reach.missing.into_iter().collect();
        Ok(report)
    }

    /// Walk `index.json` to every blob it reaches (manifests, indexes, configs, layers).
    /// Children of an index that were never pulled (other platforms) are not "missing".
    fn reachable(&self) -> Result<Reach> {
        let mut reach = Reach::default();
        let mut todo: Vec<(Descriptor, bool)> = self
            .index()?
            .manifests
            .into_iter()
            .map(|d| (d, true))
            .collect();
        while let Some((d, required)) = todo.pop() {
            if !reach.seen.insert(d.digest) {
                continue;
            }
            if !self.has_blob(&d.digest, None) {
                if required {
                    reach.missing.insert(d.digest);
                }
                continue;
            }
            let is_doc = matches!(
                d.media_type.as_str(),
                oci::OCI_MANIFEST | oci::OCI_INDEX | oci::DOCKER_MANIFEST | oci::DOCKER_LIST
            );
            if !is_doc {
                continue;
            }
            let bytes = match self.read_blob(&d.digest) {
                Ok(b) => b,
                Err(StoreError::DigestMismatch { .. }) => continue, // verify reports it
                Err(e) => return Err(e),
            };
            match ManifestDoc::parse(&d.digest.to_string(), &d.media_type, &bytes) {
                Ok(ManifestDoc::Image(m)) => {
                    todo.push((m.config, true));
                    todo.extend(m.layers.into_iter().map(|l| (l, true)));
                }
                Ok(ManifestDoc::Index(i)) => {
                    todo.extend(i.manifests.into_iter().map(|m| (m, false)));
                }
                Err(_) => continue,
            }
        }
        Ok(reach)
    }

    /// Remove blobs that no `index.json` entry reaches, and abandoned temporary files.
    pub fn gc(&self, dry_run: bool) -> Result<GcReport> {
        let _writers = self.lock("gc.lock", true)?;
        let reach = self.reachable()?;
        let (blobs, _) = self.list_blobs()?;
        let mut report = GcReport::default();
        for d in blobs {
            if reach.seen.contains(&d) {
                report.kept += 1;
                continue;
            }
            let p = self.blob_path(&d);
            let len = fs::metadata(&p).map(|m| m.len()).unwrap_or(0);
            if !dry_run {
                fs::remove_file(&p).map_err(io_err("remove", &p))?;
            }
            report.removed.push(d);
            report.bytes += len;
        }
        // No writer holds the lock now, so every ingest file is abandoned.
        let ingest = self.ingest_dir();
        for e in fs::read_dir(&ingest).map_err(io_err("read", &ingest))? {
            let e = e.map_err(io_err("read", &ingest))?;
            report.bytes += e.metadata().map(|m| m.len()).unwrap_or(0);
            report.temp_files += 1;
            if !dry_run {
                fs::remove_file(e.path()).map_err(io_err("remove", &e.path()))?;
            }
        }
        Ok(report)
    }
}

#[derive(Default)]
struct Reach {
    seen: BTreeSet<Digest>,
    missing: BTreeSet<Digest>,
}

fn empty_index() -> Index {
    Index {
        schema_version: 2,
        media_type: Some(oci::OCI_INDEX.to_string()),
        manifests: Vec::new(),
        annotations: BTreeMap::new(),
    }
}

fn hash_file(path: &Path) -> Result<(Digest, u64)> {
    let f = File::open(path).map_err(io_err("open", path))?;
    let mut r = BufReader::with_capacity(1 << 20, f);
    let mut h = Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = r.read(&mut buf).map_err(io_err("read", path))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    let n = h.len();
    Ok((h.finish(), n))
}

/// Write a file atomically: a temporary file in `tmp_dir`, then rename over `dest`.
pub fn write_atomic(tmp_dir: &Path, dest: &Path, bytes: &[u8]) -> Result<()> {
    fs::create_dir_all(tmp_dir).map_err(io_err("create directory", tmp_dir))?;
    let mut tmp = tempfile::NamedTempFile::new_in(tmp_dir)
        .map_err(io_err("create temporary file in", tmp_dir))?;
    tmp.write_all(bytes).map_err(io_err("write", tmp.path()))?;
    tmp.persist(dest)
        .map_err(|e| io_err("rename into", dest)(e.error))?;
    Ok(())
}

/// A blob being written; see [`Store::blob_writer`]. Dropping it without
/// [`BlobWriter::commit`] deletes the temporary file.
pub struct BlobWriter {
    tmp: tempfile::NamedTempFile,
    hasher: Hasher,
    what: String,
    expected: Option<Digest>,
    size: Option<u64>,
    root: PathBuf,
}

impl Write for BlobWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // Refuse to write past the announced size: a hostile or broken source
        // cannot fill the disk through a descriptor that says 1 KB.
        if let Some(s) = self.size
            && self.hasher.len() + buf.len() as u64 > s
        {
            return Err(io::Error::other(format!(
                "{} is larger than its announced {} bytes",
                self.what, s
            )));
        }
        let n = self.tmp.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.tmp.flush()
    }
}

impl BlobWriter {
    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.hasher.len()
    }

    /// The digest the content must have (for an announced blob).
    pub fn expected(&self) -> Option<Digest> {
        self.expected
    }

    /// The size the content must have, when announced.
    pub fn size(&self) -> Option<u64> {
        self.size
    }

    /// Verify digest and size, then move the blob into place.
    pub fn commit(self) -> Result<Digest> {
        let n = self.hasher.len();
        let actual = self.hasher.finish();
        if let Some(s) = self.size
            && s != n
        {
            return Err(StoreError::SizeMismatch {
                what: self.what,
                digest: self.expected.unwrap_or(actual),
                expected: s,
                actual: n,
            });
        }
        if let Some(expected) = self.expected
            && actual != expected
        {
            return Err(StoreError::DigestMismatch {
                what: self.what,
                expected,
                actual,
                size: n,
            });
        }
        let dest = self.root.join("blobs/sha256").join(actual.hex());
        self.tmp
            .persist(&dest)
            .map_err(|e| io_err("rename blob into", &dest)(e.error))?;
        Ok(actual)
    }
}

/// What `verify` found.
#[derive(Debug, Default, serde::Serialize)]
pub struct VerifyReport {
    /// Blobs hashed.
    pub checked: u64,
    /// Bytes hashed.
    pub bytes: u64,
    /// Blobs whose content does not match their name.
    pub corrupt: Vec<CorruptBlob>,
    /// Blobs an index entry needs that are absent.
    pub missing: Vec<Digest>,
    /// Files under blobs/sha256 that are not named by a digest.
    pub stray: Vec<PathBuf>,
}

impl VerifyReport {
    /// True when nothing is wrong.
    pub fn is_ok(&self) -> bool {
        self.corrupt.is_empty() && self.missing.is_empty() && self.stray.is_empty()
    }
}

/// A blob whose content does not hash to its name.
#[derive(Debug, serde::Serialize)]
pub struct CorruptBlob {
    /// Its name.
    pub digest: Digest,
    /// What it hashes to.
    pub actual: Digest,
    /// Where it is.
    pub path: PathBuf,
}

/// What `gc` removed.
#[derive(Debug, Default, serde::Serialize)]
pub struct GcReport {
    /// Blobs kept.
    pub kept: u64,
    /// Blobs removed.
    pub removed: Vec<Digest>,
    /// Abandoned temporary files removed.
    pub temp_files: u64,
    /// Bytes freed.
    pub bytes: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blob_writer_verifies_and_cleans_up() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("s")).unwrap();
        let good = Digest::of(b"hello");
        let d = store.put_bytes("t", b"hello", Some(good)).unwrap();
        assert_eq!(d, good);
        assert_eq!(store.read_blob(&good).unwrap(), b"hello");

        let e = store
            .put_bytes("t", b"evil", Some(Digest::of(b"x")))
            .unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains(&Digest::of(b"x").to_string())
                && msg.contains(&Digest::of(b"evil").to_string()),
            "{msg}"
        );
        assert!(!store.has_blob(&Digest::of(b"x"), None));
        assert_eq!(
            fs::read_dir(store.ingest_dir()).unwrap().count(),
            0,
            "temp file removed"
        );

        let mut w = store
            .blob_writer("big", Digest::of(b"ab"), Some(2))
            .unwrap();
        assert!(
            w.write_all(b"abc").is_err(),
            "writing past the announced size fails"
        );
        drop(w);
        assert_eq!(fs::read_dir(store.ingest_dir()).unwrap().count(), 0);
    }

    #[test]
    fn refuses_a_non_layout_directory() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("file"), b"x").unwrap();
        assert!(matches!(
            Store::open(dir.path()),
            Err(StoreError::NotALayout { .. })
        ));
    }

    #[test]
    fn verify_finds_corruption_and_gc_removes_unreachable() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let layer = store.put_bytes("layer", b"layer", None).unwrap();
        let config = store.put_bytes("config", b"{}", None).unwrap();
        let manifest = serde_json::to_vec(&oci::Manifest {
            schema_version: 2,
            media_type: Some(oci::OCI_MANIFEST.into()),
            artifact_type: None,
            config: Descriptor::new(oci::OCI_CONFIG, config, 2),
            layers: vec![Descriptor::new(oci::OCI_LAYER_TAR, layer, 5)],
            annotations: BTreeMap::new(),
        })
        .unwrap();
        let m = store.put_bytes("manifest", &manifest, None).unwrap();
        store
            .set_ref(
                "example/app:1",
                Descriptor::new(oci::OCI_MANIFEST, m, manifest.len() as u64),
            )
            .unwrap();
        let orphan = store.put_bytes("orphan", b"orphan", None).unwrap();
        assert!(store.verify(2).unwrap().is_ok());

        let report = store.gc(false).unwrap();
        assert_eq!(report.removed, vec![orphan]);
        assert_eq!(report.kept, 3);

        fs::write(store.blob_path(&layer), b"LAYER").unwrap();
        let v = store.verify(2).unwrap();
        assert_eq!(v.corrupt.len(), 1);
        assert_eq!(v.corrupt[0].digest, layer);
        fs::remove_file(store.blob_path(&config)).unwrap();
        assert_eq!(store.verify(1).unwrap().missing, vec![config]);
    }
}
