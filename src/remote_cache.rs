//! Sharing builds through any OCI registry. A build is pushed as one OCI
//! image manifest tagged `bk-<build key hex>`:
//!
//! - `artifactType` `application/vnd.i2kit.image.v1`;
//! - config: the canonical plan JSON, so `config.digest` *is* the build key
//!   and the registry itself checks the plan bytes;
//! - one layer per output, or per 256 MiB slice of a large output, each slice
//!   compressed on its own with zstd (level 3, single-threaded: the bytes
//!   depend on nothing but the input) so uploads go in parallel, resume per
//!   slice, and unchanged slices dedupe. A slice that zstd cannot shrink by
//!   a tenth (a disk image holding a compressed initramfs) is stored as it
//!   is: the decision depends only on the bytes, so every builder agrees. Annotations carry the output name,
//!   size and digest and the slice's offset, size and digest.
//!
//! Two builders pushing one key push identical bytes. `--cache-compat` uses
//! the standard image config and layer media types (for registries that
//! refuse others) with the real types in annotations.
//!
//! A hit is trusted only after verification: the manifest fetched by digest
//! and hashed; its config digest equal to the locally computed build key;
//! every blob's digest and size; decompression bounded by the annotated size;
//! each slice's and each output's digest; and the outputs equal to what the
//! provenance inside records. Only then does anything enter the store.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};

use futures_util::{StreamExt, TryStreamExt, stream};
use rayon::prelude::*;

use crate::build::{BUILD_ARTIFACT_TYPE, BUILD_REF_PREFIX, PLAN_MEDIA_TYPE, build_record};
use crate::digest::{Digest, Hasher};
use crate::oci::{self, Descriptor, Manifest};
use crate::reference::RegistryRef;
use crate::registry::{Registry, RegistryError};
use crate::store::{Store, StoreError};

/// Slice size of large outputs (uncompressed). Most disk images fit in one
/// slice; one that zstd cannot shrink is then the output blob itself, which
/// a hit downloads and uses without a second pass.
pub const SLICE: u64 = 256 << 20;
/// Outputs up to this size are one uncompressed layer.
pub const SMALL: u64 = 1 << 20;
/// An output stored as it is.
pub const OUTPUT_TYPE: &str = "application/vnd.i2kit.output.v1";
/// A zstd-compressed slice of an output.
pub const OUTPUT_ZSTD_TYPE: &str = "application/vnd.i2kit.output.v1+zstd";
const COMPAT_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const COMPAT_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
const COMPAT_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
const A_NAME: &str = "dev.i2kit.output.name";
const A_SIZE: &str = "dev.i2kit.output.size";
const A_DIGEST: &str = "dev.i2kit.output.digest";
const A_SLICE: &str = "dev.i2kit.slice.index";
const A_OFFSET: &str = "dev.i2kit.slice.offset";
const A_SLICE_SIZE: &str = "dev.i2kit.slice.size";
const A_SLICE_DIGEST: &str = "dev.i2kit.slice.digest";
const A_MEDIA_TYPE: &str = "dev.i2kit.media-type";
const A_ARTIFACT_TYPE: &str = "dev.i2kit.artifact-type";
const A_BUILD_KEY: &str = "dev.i2kit.build-key";

/// Remote cache failures.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// Talking to the registry.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// The local store.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// No local build record to push.
    #[error("no local build with key {0} to push")]
    NoLocalBuild(Digest),
    /// A tag i2kit would not be allowed to use.
    #[error("tag {0:?} is not a valid OCI tag ([A-Za-z0-9_][A-Za-z0-9._-]{{0,127}})")]
    Tag(String),
    /// The tag exists with other bytes than this build produces.
    #[error(
        "reproducibility alarm: {tag} already holds manifest {theirs}, but this build produces {ours}; the cache entry was left alone — find out which builder is not reproducible"
    )]
    Alarm {
        /// `repo:bk-…`.
        tag: String,
        /// What the registry holds.
        theirs: Digest,
        /// What we would push.
        ours: Digest,
    },
    /// `--trust-key` was given and no trusted key signed the entry.
    #[error("cache entry {entry} is not signed by a trusted key (--trust-key); ignored")]
    Untrusted {
        /// `repo@digest`.
        entry: String,
    },
    /// A cache entry failed verification.
    #[error("cache entry {entry} rejected: {reason}")]
    Rejected {
        /// `repo@digest`.
        entry: String,
        /// What did not verify.
        reason: String,
    },
}

/// The cache tag of a build key.
pub fn tag_for(key: &Digest) -> String {
    format!("bk-{}", key.hex())
}

/// OCI distribution's tag grammar, checked before any request
/// (distribution answers some invalid tags with a 500).
pub fn valid_tag(t: &str) -> bool {
    let b = t.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b[1..]
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

/// A manifest ready to push, with the store blobs it references.
#[derive(Clone, Debug)]
pub struct Prepared {
    /// Manifest bytes.
    pub manifest: Vec<u8>,
    /// Their digest.
    pub digest: Digest,
    /// Config and layers.
    pub blobs: Vec<Descriptor>,
}

/// Output files as (name, digest, size).
type Outputs = Vec<(String, Digest, u64)>;

/// The local record of `key`: (plan descriptor, outputs).
fn local_record(store: &Store, key: Digest) -> Result<Option<(Descriptor, Outputs)>, CacheError> {
    let Some(desc) = store.find_ref(&format!("{BUILD_REF_PREFIX}{}", key.hex()))? else {
        return Ok(None);
    };
    let m: Manifest = match serde_json::from_slice(&store.read_blob(&desc.digest)?) {
        Ok(m) => m,
        Err(_) => return Ok(None),
    };
    let outputs = m
        .layers
        .iter()
        .map(|l| {
            (
                l.annotations
                    .get("org.opencontainers.image.title")
                    .cloned()
                    .unwrap_or_default(),
                l.digest,
                l.size,
            )
        })
        .collect();
    Ok(Some((m.config, outputs)))
}

/// Whether the store holds a complete build record for `key`.
pub fn has_local(store: &Store, key: Digest) -> bool {
    matches!(local_record(store, key), Ok(Some((_, outs))) if outs.iter().all(|(_, d, s)| store.has_blob(d, Some(*s))))
}

/// A slice of an output as a store blob: zstd-compressed, or the plain bytes
/// when compression saves less than a tenth. Streams (memory stays small
/// whatever the slice size). Returns (media type, blob digest, blob size,
/// digest of the plain slice).
fn store_slice(
    store: &Store,
    output: &Digest,
    output_size: u64,
    offset: u64,
    len: u64,
) -> Result<(&'static str, Digest, u64, Digest), CacheError> {
    let io = |e: std::io::Error| StoreError::Io {
        action: "slicing an output for the remote cache",
        path: store.blob_path(output),
        source: e,
    };
    let open_at = || -> Result<std::io::Take<std::fs::File>, CacheError> {
        let mut f = store.open_blob(output)?;
        std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(offset)).map_err(io)?;
        Ok(f.take(len))
    };
    let mut plain = Hasher::new();
    let mut packed = store.blob_writer_new("compressed output slice")?;
    {
        let mut enc = zstd::stream::write::Encoder::new(&mut packed, 3).map_err(io)?;
        let mut src = open_at()?;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = src.read(&mut buf).map_err(io)?;
            if n == 0 {
                break;
            }
            plain.update(&buf[..n]);
            enc.write_all(&buf[..n]).map_err(io)?;
        }
        enc.finish().map_err(io)?;
    }
    let plain = plain.finish();
    let packed_size = packed.written();
    if packed_size * 10 <= len * 9 {
        let d = packed.commit()?;
        return Ok((OUTPUT_ZSTD_TYPE, d, packed_size, plain));
    }
    drop(packed); // not worth it: the uncommitted blob is discarded
    if offset == 0 && len == output_size {
        return Ok((OUTPUT_TYPE, *output, len, plain)); // the output blob itself
    }
    let mut w = store.blob_writer("output slice", plain, Some(len))?;
    std::io::copy(&mut open_at()?, &mut w).map_err(io)?;
    let d = w.commit()?;
    Ok((OUTPUT_TYPE, d, len, plain))
}

/// The manifest for the local build `key` (compressing large outputs into
/// the store as slices).
pub fn prepare(store: &Store, key: Digest, compat: bool) -> Result<Prepared, CacheError> {
    prepare_sliced(store, key, compat, SLICE)
}

fn prepare_sliced(
    store: &Store,
    key: Digest,
    compat: bool,
    slice: u64,
) -> Result<Prepared, CacheError> {
    let (plan, outputs) = local_record(store, key)?.ok_or(CacheError::NoLocalBuild(key))?;
    struct Job {
        name: String,
        digest: Digest,
        size: u64,
        index: u64,
        offset: u64,
        len: u64,
    }
    let mut jobs = Vec::new();
    for (name, digest, size) in &outputs {
        if *size <= SMALL {
            jobs.push(Job {
                name: name.clone(),
                digest: *digest,
                size: *size,
                index: 0,
                offset: 0,
                len: *size,
            });
            continue;
        }
        let mut offset = 0;
        let mut index = 0;
        while offset < *size {
            let len = slice.min(size - offset);
            jobs.push(Job {
                name: name.clone(),
                digest: *digest,
                size: *size,
                index,
                offset,
                len,
            });
            offset += len;
            index += 1;
        }
    }
    let layers: Vec<Descriptor> = jobs
        .par_iter()
        .map(|j| -> Result<Descriptor, CacheError> {
            let mut ann = BTreeMap::from([
                (A_NAME.to_string(), j.name.clone()),
                (A_SIZE.to_string(), j.size.to_string()),
                (A_DIGEST.to_string(), j.digest.to_string()),
            ]);
            let (media, digest, size) = if j.size <= SMALL {
                (OUTPUT_TYPE, j.digest, j.size)
            } else {
                let (media, d, bsize, plain) =
                    store_slice(store, &j.digest, j.size, j.offset, j.len)?;
                ann.insert(A_SLICE.into(), j.index.to_string());
                ann.insert(A_OFFSET.into(), j.offset.to_string());
                ann.insert(A_SLICE_SIZE.into(), j.len.to_string());
                ann.insert(A_SLICE_DIGEST.into(), plain.to_string());
                (media, d, bsize)
            };
            let mut desc = Descriptor::new(media, digest, size);
            if compat {
                ann.insert(A_MEDIA_TYPE.into(), media.into());
                desc.media_type = if media == OUTPUT_TYPE {
                    COMPAT_LAYER
                } else {
                    COMPAT_LAYER_ZSTD
                }
                .into();
            }
            desc.annotations = ann;
            Ok(desc)
        })
        .collect::<Result<_, _>>()?;
    let mut annotations = BTreeMap::from([(A_BUILD_KEY.to_string(), key.to_string())]);
    let (artifact_type, config_type) = if compat {
        annotations.insert(A_ARTIFACT_TYPE.into(), BUILD_ARTIFACT_TYPE.into());
        (None, COMPAT_CONFIG)
    } else {
        (Some(BUILD_ARTIFACT_TYPE.to_string()), PLAN_MEDIA_TYPE)
    };
    let manifest = Manifest {
        schema_version: 2,
        media_type: Some(oci::OCI_MANIFEST.into()),
        artifact_type,
        config: Descriptor::new(config_type, plan.digest, plan.size),
        layers,
        annotations,
    };
    let bytes = serde_json::to_vec(&manifest).expect("a manifest serialises");
    let mut blobs = vec![manifest.config.clone()];
    blobs.extend(manifest.layers.iter().cloned());
    Ok(Prepared {
        digest: Digest::of(&bytes),
        manifest: bytes,
        blobs,
    })
}

/// What a push did.
#[derive(Clone, Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Pushed {
    /// `repo:bk-…`.
    pub tag: String,
    /// Manifest digest.
    pub digest: Digest,
    /// The tag already held exactly this manifest: nothing was sent.
    pub already: bool,
    /// Blobs uploaded.
    pub uploaded: usize,
    /// Blobs the registry had (or mounted).
    pub present: usize,
}

/// Push `p` as `repo:bk-<key>`. An existing tag with the same digest is a
/// no-op; with another digest it is a reproducibility alarm, never overwritten.
pub async fn push(
    reg: &Registry,
    store: &Store,
    repo: &RegistryRef,
    key: Digest,
    p: &Prepared,
) -> Result<Pushed, CacheError> {
    let tag = tag_for(&key);
    if !valid_tag(&tag) {
        return Err(CacheError::Tag(tag));
    }
    let mut target = repo.clone();
    target.tag = Some(tag.clone());
    target.digest = None;
    let name = format!("{}/{}:{tag}", repo.registry, repo.repository);
    match reg.tag_digest(&target).await? {
        Some(d) if d == p.digest => {
            return Ok(Pushed {
                tag: name,
                digest: d,
                already: true,
                uploaded: 0,
                present: p.blobs.len(),
            });
        }
        Some(theirs) => {
            return Err(CacheError::Alarm {
                tag: name,
                theirs,
                ours: p.digest,
            });
        }
        None => {}
    }
    let unique: BTreeSet<Digest> = p.blobs.iter().map(|b| b.digest).collect();
    let todo: Vec<&Descriptor> = unique
        .iter()
        .filter_map(|d| p.blobs.iter().find(|b| b.digest == *d))
        .collect();
    let results: Vec<bool> = stream::iter(todo.into_iter().map(|b| async move {
        if reg.blob_exists(repo, &b.digest).await? {
            return Ok::<_, CacheError>(false);
        }
        reg.push_blob(repo, store, b).await?;
        Ok(true)
    }))
    .buffer_unordered(4)
    .try_collect()
    .await?;
    let uploaded = results.iter().filter(|u| **u).count();
    reg.push_manifest(&target, &p.manifest, oci::OCI_MANIFEST)
        .await?;
    Ok(Pushed {
        tag: name,
        digest: p.digest,
        already: false,
        uploaded,
        present: results.len() - uploaded,
    })
}

const SIG_ARTIFACT: &str = "application/vnd.i2kit.signature.v1";
const SIG_LAYER: &str = "application/vnd.i2kit.signature.v1+json";
const EMPTY_TYPE: &str = "application/vnd.oci.empty.v1+json";

fn sig_tag(key: &Digest, signer: &ed25519_dalek::VerifyingKey) -> String {
    format!("{}.sig-{}", tag_for(key), crate::signing::key_id(signer))
}

/// Sign the entry `manifest` of build `key` and push the signature next to
/// it; false when that exact signature was already there.
pub async fn push_signature(
    reg: &Registry,
    store: &Store,
    repo: &RegistryRef,
    key: Digest,
    manifest: Digest,
    signer: &ed25519_dalek::SigningKey,
) -> Result<bool, CacheError> {
    let record = crate::signing::sign(signer, &manifest);
    let layer_bytes = serde_json::to_vec(&record).expect("a record serialises");
    let layer = Descriptor::new(
        SIG_LAYER,
        store.put_bytes("signature", &layer_bytes, None)?,
        layer_bytes.len() as u64,
    );
    let config = Descriptor::new(EMPTY_TYPE, store.put_bytes("empty config", b"{}", None)?, 2);
    let m = Manifest {
        schema_version: 2,
        media_type: Some(oci::OCI_MANIFEST.into()),
        artifact_type: Some(SIG_ARTIFACT.into()),
        config: config.clone(),
        layers: vec![layer.clone()],
        annotations: BTreeMap::new(),
    };
    let bytes = serde_json::to_vec(&m).expect("a manifest serialises");
    let tag = sig_tag(&key, &signer.verifying_key());
    if !valid_tag(&tag) {
        return Err(CacheError::Tag(tag));
    }
    let mut target = repo.clone();
    target.tag = Some(tag);
    target.digest = None;
    if reg.tag_digest(&target).await? == Some(Digest::of(&bytes)) {
        return Ok(false);
    }
    for b in [&config, &layer] {
        if !reg.blob_exists(repo, &b.digest).await? {
            reg.push_blob(repo, store, b).await?;
        }
    }
    reg.push_manifest(&target, &bytes, oci::OCI_MANIFEST)
        .await?;
    Ok(true)
}

/// The id of a trusted key that signed `manifest`, if any.
async fn trusted_signer(
    reg: &Registry,
    store: &Store,
    repo: &RegistryRef,
    key: Digest,
    manifest: Digest,
    trusted: &[ed25519_dalek::VerifyingKey],
) -> Result<Option<String>, CacheError> {
    for k in trusted {
        let mut target = repo.clone();
        target.tag = Some(sig_tag(&key, k));
        target.digest = None;
        let bytes = match reg.fetch_manifest(&target).await {
            Ok((b, _)) => b,
            Err(RegistryError::NotFound { .. }) => continue,
            Err(e) => return Err(e.into()),
        };
        let Ok(m) = serde_json::from_slice::<Manifest>(&bytes) else {
            continue;
        };
        let Some(layer) = m
            .layers
            .first()
            .filter(|l| l.media_type == SIG_LAYER && l.size <= 4096)
        else {
            continue;
        };
        reg.fetch_blob(repo, layer, store, &()).await?;
        let Ok(record) =
            serde_json::from_slice::<crate::signing::Record>(&store.read_blob(&layer.digest)?)
        else {
            continue;
        };
        if crate::signing::verify(&record, &manifest, k) {
            return Ok(Some(crate::signing::key_id(k)));
        }
    }
    Ok(None)
}

/// What a verified hit brought.
#[derive(Clone, Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Pulled {
    /// `repo@digest`.
    pub entry: String,
    /// Bytes downloaded (compressed).
    pub downloaded: u64,
    /// Output files.
    pub outputs: Vec<String>,
    /// Id of the trusted key that signed it, when keys were required.
    pub signer: Option<String>,
}

fn ann<'a>(d: &'a Descriptor, k: &str) -> Option<&'a str> {
    d.annotations.get(k).map(String::as_str)
}

fn num(d: &Descriptor, k: &str) -> Result<u64, String> {
    ann(d, k)
        .ok_or_else(|| format!("layer {} has no {k} annotation", d.digest))?
        .parse()
        .map_err(|_| format!("layer {}: {k} is not a number", d.digest))
}

/// Rebuild one output from its layers (sorted by slice) through a verifying
/// writer: every slice's offset, length and digest, inflation bounded by
/// the annotated size, and the whole output's digest at the end. The error
/// says what did not verify.
fn assemble(
    store: &Store,
    name: &str,
    digest: Digest,
    size: u64,
    layers: &[&Descriptor],
) -> Result<Digest, String> {
    let mut w = store
        .blob_writer(&format!("output {name}"), digest, Some(size))
        .map_err(|e| e.to_string())?;
    let mut offset = 0;
    for l in layers {
        let media = ann(l, A_MEDIA_TYPE).unwrap_or(&l.media_type);
        let mut f = store.open_blob(&l.digest).map_err(|e| e.to_string())?;
        match media {
            OUTPUT_TYPE => {
                // A plain slice (or a whole small output): the blob digest,
                // verified on download, is the slice's.
                if ann(l, A_SLICE).is_some() {
                    let want_off = num(l, A_OFFSET)?;
                    let len = num(l, A_SLICE_SIZE)?;
                    if want_off != offset || len != l.size {
                        return Err(format!(
                            "{name}: plain slice at {want_off} of {len} bytes does not fit at {offset} ({} bytes)",
                            l.size
                        ));
                    }
                    if ann(l, A_SLICE_DIGEST) != Some(l.digest.to_string().as_str()) {
                        return Err(format!(
                            "{name}: plain slice {} is annotated with another digest",
                            l.digest
                        ));
                    }
                }
                std::io::copy(&mut f, &mut w).map_err(|e| format!("{name}: {e}"))?;
                offset += l.size;
            }
            OUTPUT_ZSTD_TYPE => {
                let want_off = num(l, A_OFFSET)?;
                let len = num(l, A_SLICE_SIZE)?;
                let slice_digest: Digest = ann(l, A_SLICE_DIGEST)
                    .and_then(|d| d.parse().ok())
                    .ok_or_else(|| format!("{name}: slice without a digest"))?;
                if want_off != offset {
                    return Err(format!("{name}: slice at {want_off}, expected {offset}"));
                }
                // Never inflate past the annotated size (+1 to notice more).
                let dec =
                    zstd::stream::read::Decoder::new(&mut f).map_err(|e| format!("{name}: {e}"))?;
                let mut limited = dec.take(len + 1);
                let mut h = Hasher::new();
                let mut buf = vec![0u8; 1 << 20];
                let mut got = 0u64;
                loop {
                    let n = limited
                        .read(&mut buf)
                        .map_err(|e| format!("{name}: slice {}: {e}", l.digest))?;
                    if n == 0 {
                        break;
                    }
                    got += n as u64;
                    if got > len {
                        return Err(format!(
                            "{name}: slice {} inflates past its annotated {len} bytes",
                            l.digest
                        ));
                    }
                    h.update(&buf[..n]);
                    w.write_all(&buf[..n]).map_err(|e| format!("{name}: {e}"))?;
                }
                if got != len {
                    return Err(format!(
                        "{name}: slice {} inflates to {got} bytes, not {len}",
                        l.digest
                    ));
                }
                if h.finish() != slice_digest {
                    return Err(format!(
                        "{name}: slice {} content does not match its digest",
                        l.digest
                    ));
                }
                offset += len;
            }
            other => return Err(format!("{name}: unknown layer type {other}")),
        }
    }
    w.commit().map_err(|e| format!("{name}: {e}"))
}

/// Look `key` up in `repo`; on a hit, verify everything and record it in the
/// store as a local build (so the normal cache path writes the outputs). A
/// rejected entry leaves the store as it was: blobs this pull added are
/// removed again.
pub async fn pull(
    reg: &Registry,
    store: &Store,
    repo: &RegistryRef,
    key: Digest,
    trusted: &[ed25519_dalek::VerifyingKey],
) -> Result<Option<Pulled>, CacheError> {
    let mut added: Vec<Digest> = Vec::new();
    let r = pull_inner(reg, store, repo, key, trusted, &mut added).await;
    if matches!(r, Err(CacheError::Rejected { .. })) {
        for d in added {
            let _ = std::fs::remove_file(store.blob_path(&d));
        }
    }
    r
}

async fn pull_inner(
    reg: &Registry,
    store: &Store,
    repo: &RegistryRef,
    key: Digest,
    trusted: &[ed25519_dalek::VerifyingKey],
    added: &mut Vec<Digest>,
) -> Result<Option<Pulled>, CacheError> {
    let mut target = repo.clone();
    target.tag = Some(tag_for(&key));
    target.digest = None;
    let Some(digest) = reg.tag_digest(&target).await? else {
        return Ok(None);
    };
    let entry = format!("{}/{}@{digest}", repo.registry, repo.repository);
    let reject = |reason: String| CacheError::Rejected {
        entry: entry.clone(),
        reason,
    };
    // Signatures first: an entry no trusted key signed is not even downloaded.
    let signer = if trusted.is_empty() {
        None
    } else {
        match trusted_signer(reg, store, repo, key, digest, trusted).await? {
            Some(id) => Some(id),
            None => return Err(CacheError::Untrusted { entry }),
        }
    };
    // By digest: fetch_manifest hashes the bytes against it.
    let mut pinned = repo.clone();
    pinned.tag = None;
    pinned.digest = Some(digest);
    let (bytes, _) = match reg.fetch_manifest(&pinned).await {
        Ok(x) => x,
        Err(e @ RegistryError::ManifestDigest { .. }) => return Err(reject(e.to_string())),
        Err(e) => return Err(e.into()),
    };
    let m: Manifest = serde_json::from_slice(&bytes)
        .map_err(|e| reject(format!("manifest is not an OCI image manifest: {e}")))?;
    if m.config.digest != key {
        return Err(reject(format!(
            "its config (plan) digest {} is not this build's key {key}",
            m.config.digest
        )));
    }
    let artifact = m
        .artifact_type
        .clone()
        .or_else(|| m.annotations.get(A_ARTIFACT_TYPE).cloned());
    if artifact.as_deref() != Some(BUILD_ARTIFACT_TYPE) {
        return Err(reject(format!(
            "artifact type {artifact:?} is not {BUILD_ARTIFACT_TYPE}"
        )));
    }
    let mut downloaded = 0;
    let mut blobs = vec![m.config.clone()];
    blobs.extend(m.layers.iter().cloned());
    for b in &blobs {
        if reg
            .fetch_blob(repo, b, store, &())
            .await
            .map_err(|e| reject(e.to_string()))?
        {
            downloaded += b.size;
            added.push(b.digest);
        }
    }
    // Group slices per output and rebuild each output through a verifying writer.
    let mut by_name: BTreeMap<String, Vec<&Descriptor>> = BTreeMap::new();
    for l in &m.layers {
        let name = ann(l, A_NAME)
            .ok_or_else(|| reject(format!("layer {} has no output name", l.digest)))?;
        if name.contains('/') || name.starts_with('.') || name.is_empty() {
            return Err(reject(format!(
                "output name {name:?} is not a plain file name"
            )));
        }
        by_name.entry(name.to_string()).or_default().push(l);
    }
    let mut outputs: Outputs = Vec::new();
    for (name, mut layers) in by_name {
        let size = num(layers[0], A_SIZE).map_err(reject)?;
        let digest: Digest = ann(layers[0], A_DIGEST)
            .and_then(|d| d.parse().ok())
            .ok_or_else(|| reject(format!("{name}: no output digest")))?;
        layers.sort_by_key(|l| num(l, A_SLICE).unwrap_or(0));
        // One plain layer holding the whole output: the download (verified
        // against the layer digest) already is the output.
        let media0 = ann(layers[0], A_MEDIA_TYPE).unwrap_or(&layers[0].media_type);
        if layers.len() == 1 && media0 == OUTPUT_TYPE && layers[0].digest == digest {
            if layers[0].size != size {
                return Err(reject(format!(
                    "{name}: {} bytes, annotated {size}",
                    layers[0].size
                )));
            }
            outputs.push((name, digest, size));
            continue;
        }
        let fresh = !store.has_blob(&digest, Some(size));
        let d = assemble(store, &name, digest, size, &layers).map_err(reject)?;
        if fresh {
            added.push(d);
        }
        outputs.push((name, d, size));
    }
    // The provenance inside must describe exactly these outputs and this key.
    let (pname, pdigest, _) = outputs
        .iter()
        .find(|(n, _, _)| n.ends_with(".provenance.json"))
        .cloned()
        .ok_or_else(|| reject("no provenance among the outputs".into()))?;
    let prov: serde_json::Value = serde_json::from_slice(&store.read_blob(&pdigest)?)
        .map_err(|e| reject(format!("{pname}: {e}")))?;
    if prov["buildKey"].as_str() != Some(&key.to_string()) {
        return Err(reject(format!(
            "{pname} names build key {}",
            prov["buildKey"]
        )));
    }
    for (n, d, s) in &outputs {
        if *n == pname {
            continue;
        }
        let rec = &prov["outputs"][n];
        if rec["digest"].as_str() != Some(&d.to_string()) || rec["size"].as_u64() != Some(*s) {
            return Err(reject(format!(
                "{n} ({d}, {s} bytes) is not what {pname} records"
            )));
        }
    }
    let recorded = prov["outputs"].as_object().map_or(0, |o| o.len());
    if recorded != outputs.len() - 1 {
        return Err(reject(format!(
            "{pname} records {recorded} outputs, the entry has {}",
            outputs.len() - 1
        )));
    }
    let record = build_record(key, m.config.size, &outputs);
    let rbytes = serde_json::to_vec(&record).expect("a manifest serialises");
    let rd = store.put_bytes("build record", &rbytes, None)?;
    store.set_ref(
        &format!("{BUILD_REF_PREFIX}{}", key.hex()),
        Descriptor::new(oci::OCI_MANIFEST, rd, rbytes.len() as u64),
    )?;
    Ok(Some(Pulled {
        entry,
        downloaded,
        outputs: outputs.into_iter().map(|(n, _, _)| n).collect(),
        signer,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A store holding a local build record with one multi-slice output
    /// (random, zeros, random: plain, zstd, plain) and a small one.
    fn store_with_build() -> (tempfile::TempDir, Store, Digest, Vec<u8>) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("store")).unwrap();
        let mut x: u64 = 0x2545_F491_4F6C_DD1D;
        let mut noise = |n: usize| -> Vec<u8> {
            (0..n)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect()
        };
        let mut big = noise(1 << 20);
        big.extend(vec![0u8; 1 << 20]);
        big.extend(noise((1 << 20) + 100));
        let plan = br#"{"plan":"test"}"#;
        let key = store.put_bytes("plan", plan, None).unwrap();
        let big_d = store.put_bytes("big", &big, None).unwrap();
        let small_d = store.put_bytes("small", b"cmdline", None).unwrap();
        let files = vec![
            ("t.raw".to_string(), big_d, big.len() as u64),
            ("t-cmdline".to_string(), small_d, 7),
        ];
        let rec = serde_json::to_vec(&build_record(key, plan.len() as u64, &files)).unwrap();
        let rd = store.put_bytes("record", &rec, None).unwrap();
        store
            .set_ref(
                &format!("{BUILD_REF_PREFIX}{}", key.hex()),
                Descriptor::new(oci::OCI_MANIFEST, rd, rec.len() as u64),
            )
            .unwrap();
        (dir, store, key, big)
    }

    #[test]
    fn outputs_slice_into_plain_and_zstd_layers_and_reassemble() {
        let (_dir, store, key, big) = store_with_build();
        let p = prepare_sliced(&store, key, false, 1 << 20).unwrap();
        let again = prepare_sliced(&store, key, false, 1 << 20).unwrap();
        assert_eq!(again.manifest, p.manifest, "deterministic manifest bytes");
        let m: Manifest = serde_json::from_slice(&p.manifest).unwrap();
        assert_eq!(m.config.digest, key);
        let mut raw: Vec<&Descriptor> = m
            .layers
            .iter()
            .filter(|l| ann(l, A_NAME) == Some("t.raw"))
            .collect();
        let media: Vec<&str> = raw.iter().map(|l| l.media_type.as_str()).collect();
        assert_eq!(
            media,
            [OUTPUT_TYPE, OUTPUT_ZSTD_TYPE, OUTPUT_TYPE, OUTPUT_TYPE],
            "random / zeros / random / tail"
        );
        assert!(raw[1].size < 4096, "a MiB of zeros compresses");
        raw.sort_by_key(|l| num(l, A_SLICE).unwrap());
        let want = Digest::of(&big);
        assert_eq!(
            assemble(&store, "t.raw", want, big.len() as u64, &raw).unwrap(),
            want
        );
        // Tampered annotations are caught.
        let mut shifted = raw[2].clone();
        shifted.annotations.insert(A_OFFSET.into(), "7".into());
        let bad = [raw[0], raw[1], &shifted, raw[3]];
        assert!(
            assemble(&store, "t.raw", want, big.len() as u64, &bad)
                .unwrap_err()
                .contains("does not fit")
        );
        let mut longer = raw[1].clone();
        let n: u64 = num(&longer, A_SLICE_SIZE).unwrap();
        longer
            .annotations
            .insert(A_SLICE_SIZE.into(), (n + 1).to_string());
        let bad = [raw[0], &longer, raw[2], raw[3]];
        assert!(
            assemble(&store, "t.raw", want, big.len() as u64, &bad)
                .unwrap_err()
                .contains("inflates to")
        );
        let mut shorter = raw[1].clone();
        shorter
            .annotations
            .insert(A_SLICE_SIZE.into(), (n - 1).to_string());
        let bad = [raw[0], &shorter, raw[2], raw[3]];
        assert!(
            assemble(&store, "t.raw", want, big.len() as u64, &bad)
                .unwrap_err()
                .contains("inflates past")
        );
        let missing = [raw[0], raw[1], raw[3]];
        assert!(
            assemble(&store, "t.raw", want, big.len() as u64, &missing).is_err(),
            "a slice left out"
        );
        // Compat mode: standard media types, the real ones in annotations.
        let c = prepare_sliced(&store, key, true, 1 << 20).unwrap();
        let cm: Manifest = serde_json::from_slice(&c.manifest).unwrap();
        assert_eq!(cm.artifact_type, None);
        assert!(cm.layers.iter().all(|l| {
            l.media_type
                .starts_with("application/vnd.oci.image.layer.v1.tar")
        }));
        assert!(
            cm.layers
                .iter()
                .any(|l| ann(l, A_MEDIA_TYPE) == Some(OUTPUT_ZSTD_TYPE))
        );
    }

    #[test]
    fn tags_are_checked_client_side() {
        let key: Digest = format!("sha256:{}", "ab".repeat(32)).parse().unwrap();
        assert!(valid_tag(&tag_for(&key)));
        assert_eq!(tag_for(&key).len(), 67);
        for bad in ["bk:abc", "", "-x", &"a".repeat(129), "a/b"] {
            assert!(!valid_tag(bad), "{bad}");
        }
    }
}
