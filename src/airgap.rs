//! Air-gap transfer. `export` writes what builds need as one uncompressed
//! OCI image-layout tar — deterministic (sorted entries, epoch mtimes, root
//! owner, fixed modes), one `index.json` entry per image named with
//! `org.opencontainers.image.ref.name`, so `skopeo copy oci-archive:FILE:NAME`
//! reads it. `import` loads such a tar into the store, streaming each blob
//! through the store's verifying writer, and names an image only once
//! everything it references is present.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};

use crate::digest::Digest;
use crate::fetch::{ResolvedImage, store_name};
use crate::oci::{self, Descriptor, Index};
use crate::store::{Store, StoreError};

/// Export/import failures.
#[derive(Debug, thiserror::Error)]
pub enum AirgapError {
    /// Store trouble (includes digest mismatches while importing).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Writing or reading the tar.
    #[error("{0}")]
    Io(String),
    /// The archive is not an OCI layout i2kit accepts.
    #[error("not an importable OCI layout archive: {0}")]
    Archive(String),
}

/// One image of an archive.
#[derive(Clone, Debug)]
pub struct Entry {
    /// `org.opencontainers.image.ref.name`.
    pub name: String,
    /// The platform manifest.
    pub manifest: Descriptor,
    /// Config and layers.
    pub blobs: Vec<Descriptor>,
}

/// Entries for resolved images (one per image and platform). With several
/// platforms of one reference, names get `-OS-ARCH` appended.
pub fn entries(resolved: &[ResolvedImage]) -> Vec<Entry> {
    let mut per_ref: BTreeMap<String, usize> = BTreeMap::new();
    for r in resolved {
        *per_ref.entry(store_name(&r.reference)).or_default() += 1;
    }
    let mut out: Vec<Entry> = resolved
        .iter()
        .map(|r| {
            let base = store_name(&r.reference);
            let name = if per_ref[&base] > 1 {
                format!("{base}-{}", r.platform.to_string().replace('/', "-"))
            } else {
                base
            };
            let mut manifest = r.manifest.clone();
            manifest.platform = None;
            manifest.annotations =
                BTreeMap::from([(oci::ANNOTATION_REF_NAME.to_string(), name.clone())]);
            let mut blobs = vec![r.image.config.clone()];
            blobs.extend(r.image.layers.iter().cloned());
            Entry {
                name,
                manifest,
                blobs,
            }
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out.dedup_by(|a, b| a.name == b.name);
    out
}

/// What an export wrote.
#[derive(Clone, Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ExportReport {
    /// Image names in the archive.
    pub images: Vec<String>,
    /// Distinct blobs.
    pub blobs: usize,
    /// Archive bytes.
    pub bytes: u64,
}

fn header(path: &str, size: u64, dir: bool) -> Result<tar::Header, AirgapError> {
    let mut h = tar::Header::new_ustar();
    h.set_path(path)
        .map_err(|e| AirgapError::Io(format!("{path}: {e}")))?;
    h.set_size(size);
    h.set_mode(if dir { 0o755 } else { 0o644 });
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_entry_type(if dir {
        tar::EntryType::Directory
    } else {
        tar::EntryType::Regular
    });
    h.set_cksum();
    Ok(h)
}

/// Write the archive for `entries` from `store` to `out`.
pub fn export<W: Write>(
    store: &Store,
    entries: &[Entry],
    out: W,
) -> Result<ExportReport, AirgapError> {
    let mut blobs: BTreeSet<Digest> = BTreeSet::new();
    for e in entries {
        blobs.insert(e.manifest.digest);
        blobs.extend(e.blobs.iter().map(|b| b.digest));
    }
    for d in &blobs {
        if !store.has_blob(d, None) {
            return Err(AirgapError::Io(format!(
                "blob {d} is not in the store (fetch first)"
            )));
        }
    }
    let index = Index {
        schema_version: 2,
        media_type: Some(oci::OCI_INDEX.into()),
        manifests: entries.iter().map(|e| e.manifest.clone()).collect(),
        annotations: BTreeMap::new(),
    };
    let index_bytes = serde_json::to_vec(&index).map_err(|e| AirgapError::Io(e.to_string()))?;
    let layout = br#"{"imageLayoutVersion":"1.0.0"}"#;
    let counter = CountingWriter { inner: out, n: 0 };
    let mut tar = tar::Builder::new(counter);
    let io = |e: std::io::Error| AirgapError::Io(format!("writing the archive: {e}"));
    tar.append(
        &header("oci-layout", layout.len() as u64, false)?,
        &layout[..],
    )
    .map_err(io)?;
    tar.append(
        &header("index.json", index_bytes.len() as u64, false)?,
        &index_bytes[..],
    )
    .map_err(io)?;
    tar.append(&header("blobs/", 0, true)?, std::io::empty())
        .map_err(io)?;
    tar.append(&header("blobs/sha256/", 0, true)?, std::io::empty())
        .map_err(io)?;
    for d in &blobs {
        let f = store.open_blob(d)?;
        let len = f
            .metadata()
            .map_err(|e| AirgapError::Io(format!("blob {d}: {e}")))?
            .len();
        tar.append(
            &header(&format!("blobs/sha256/{}", d.hex()), len, false)?,
            f,
        )
        .map_err(io)?;
    }
    let counter = tar.into_inner().map_err(io)?;
    Ok(ExportReport {
        images: entries.iter().map(|e| e.name.clone()).collect(),
        blobs: blobs.len(),
        bytes: counter.n,
    })
}

struct CountingWriter<W> {
    inner: W,
    n: u64,
}

impl<W: Write> Write for CountingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.n += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// What an import did.
#[derive(Clone, Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ImportReport {
    /// Images named in the store.
    pub images: Vec<String>,
    /// Blobs written (verified).
    pub imported: usize,
    /// Blobs already present.
    pub present: usize,
}

/// Every blob a manifest or index needs, or why it cannot be read.
fn reachable(store: &Store, d: &Descriptor, out: &mut Vec<Descriptor>) -> Result<(), String> {
    if !store.has_blob(&d.digest, Some(d.size)) {
        return Err(format!("{} is missing", d.digest));
    }
    out.push(d.clone());
    let bytes = store.read_blob(&d.digest).map_err(|e| e.to_string())?;
    match oci::ManifestDoc::parse(&d.digest.to_string(), &d.media_type, &bytes)
        .map_err(|e| e.to_string())?
    {
        oci::ManifestDoc::Image(m) => {
            for b in std::iter::once(&m.config).chain(&m.layers) {
                if !store.has_blob(&b.digest, Some(b.size)) {
                    return Err(format!("{} is missing", b.digest));
                }
                out.push(b.clone());
            }
        }
        oci::ManifestDoc::Index(i) => {
            for c in &i.manifests {
                reachable(store, c, out)?;
            }
        }
    }
    Ok(())
}

/// Import an archive; nothing is named unless complete and verified.
pub fn import<R: Read>(store: &Store, input: R) -> Result<ImportReport, AirgapError> {
    let _writer = store.lock_writer()?;
    let mut ar = tar::Archive::new(input);
    let mut index: Option<Index> = None;
    let mut saw_layout = false;
    let (mut imported, mut present) = (0, 0);
    let bad = |m: String| AirgapError::Archive(m);
    for entry in ar
        .entries()
        .map_err(|e| AirgapError::Io(format!("reading the archive: {e}")))?
    {
        let mut entry = entry.map_err(|e| AirgapError::Io(format!("reading the archive: {e}")))?;
        let raw_path = entry
            .path()
            .map_err(|e| bad(format!("entry path: {e}")))?
            .to_string_lossy()
            .into_owned();
        let path = raw_path.trim_start_matches("./");
        let kind = entry.header().entry_type();
        match (path, kind) {
            (
                "" | "blobs" | "blobs/" | "blobs/sha256" | "blobs/sha256/",
                tar::EntryType::Directory,
            ) => {}
            ("oci-layout", tar::EntryType::Regular) => {
                let mut s = String::new();
                entry
                    .by_ref()
                    .take(4096)
                    .read_to_string(&mut s)
                    .map_err(|e| bad(format!("oci-layout: {e}")))?;
                let v: serde_json::Value =
                    serde_json::from_str(&s).map_err(|e| bad(format!("oci-layout: {e}")))?;
                if v["imageLayoutVersion"] != "1.0.0" {
                    return Err(bad(format!(
                        "oci-layout version {} (1.0.0 expected)",
                        v["imageLayoutVersion"]
                    )));
                }
                saw_layout = true;
            }
            ("index.json", tar::EntryType::Regular) => {
                let mut b = Vec::new();
                entry
                    .by_ref()
                    .take(16 << 20)
                    .read_to_end(&mut b)
                    .map_err(|e| bad(format!("index.json: {e}")))?;
                index =
                    Some(serde_json::from_slice(&b).map_err(|e| bad(format!("index.json: {e}")))?);
            }
            (p, tar::EntryType::Regular) if p.starts_with("blobs/sha256/") => {
                let hex = &p["blobs/sha256/".len()..];
                let d: Digest = format!("sha256:{hex}")
                    .parse()
                    .map_err(|_| bad(format!("{p}: not a sha256 blob name")))?;
                let size = entry
                    .header()
                    .size()
                    .map_err(|e| bad(format!("{p}: {e}")))?;
                if store.has_blob(&d, Some(size)) {
                    present += 1;
                    continue;
                }
                let mut w =
                    store.blob_writer(&format!("blob {d} from the archive"), d, Some(size))?;
                std::io::copy(&mut entry, &mut w)
                    .map_err(|e| AirgapError::Io(format!("blob {d}: {e}")))?;
                w.commit()?;
                imported += 1;
            }
            (p, k) => {
                return Err(bad(format!(
                    "unexpected entry {p:?} ({k:?}): only oci-layout, index.json and blobs/sha256/<digest> files"
                )));
            }
        }
    }
    if !saw_layout {
        return Err(bad("no oci-layout file".into()));
    }
    let index = index.ok_or_else(|| bad("no index.json".into()))?;
    let mut images = Vec::new();
    let mut problems = Vec::new();
    for m in &index.manifests {
        let Some(name) = m.annotations.get(oci::ANNOTATION_REF_NAME) else {
            continue;
        };
        let mut all = Vec::new();
        match reachable(store, m, &mut all) {
            Ok(()) => {
                let mut desc = m.clone();
                desc.annotations.clear();
                store.set_ref(name, desc)?;
                images.push(name.clone());
            }
            Err(e) => problems.push(format!("{name}: {e}")),
        }
    }
    if !problems.is_empty() {
        return Err(bad(format!("incomplete images: {}", problems.join("; "))));
    }
    Ok(ImportReport {
        images,
        imported,
        present,
    })
}
