//! The fetch stage: resolve image references to platform manifests and bring
//! their configs and layers into the store, from registries or local OCI
//! layouts, in parallel with bounded concurrency. Everything already in the
//! store (by digest and size) is used as it is and never fetched again.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures_util::{StreamExt, TryStreamExt, stream};

use crate::digest::Digest;
use crate::oci::{self, Descriptor, ImageConfig, Manifest, ManifestDoc, Platform};
use crate::reference::{ImageRef, LayoutRef, RegistryRef};
use crate::registry::{BlobProgress, Registry, RegistryError, RegistryOptions};
use crate::store::{Store, StoreError};

/// Progress of a fetch, for the CLI to render. The library never prints.
#[derive(Clone, Debug, serde::Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// A reference was resolved to a platform manifest.
    Resolved {
        /// The reference.
        reference: String,
        /// The platform.
        platform: String,
        /// Platform manifest digest.
        digest: Digest,
    },
    /// A blob will be downloaded.
    BlobStart {
        /// Its digest.
        digest: Digest,
        /// Its size.
        size: u64,
    },
    /// More bytes of a blob arrived.
    BlobBytes {
        /// Its digest.
        digest: Digest,
        /// How many more.
        bytes: u64,
    },
    /// A download restarted at `offset`.
    BlobReset {
        /// Its digest.
        digest: Digest,
        /// Bytes kept.
        offset: u64,
    },
    /// A blob is in the store.
    BlobDone {
        /// Its digest.
        digest: Digest,
        /// False when it was there already.
        fetched: bool,
    },
}

/// Where events go.
pub type EventSink = Arc<dyn Fn(&Event) + Send + Sync>;

/// A sink that drops every event.
pub fn no_events() -> EventSink {
    Arc::new(|_| {})
}

/// Errors of the fetch stage.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The registry failed.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A manifest could not be used.
    #[error(transparent)]
    Manifest(#[from] oci::ManifestError),
    /// The index has no entry for the platform.
    #[error("{reference} has no image for platform {wanted}; the index offers: {}", if .offered.is_empty() { "nothing".to_string() } else { .offered.join(", ") })]
    Platform {
        /// The reference.
        reference: String,
        /// The platform asked for.
        wanted: String,
        /// What the index lists.
        offered: Vec<String>,
    },
    /// A single-platform image of another platform.
    #[error("{reference} is a {actual} image, but {wanted} was requested")]
    WrongPlatform {
        /// The reference.
        reference: String,
        /// The platform asked for.
        wanted: String,
        /// The image config's platform.
        actual: String,
    },
    /// A local layout problem.
    #[error("OCI layout {path}: {problem}")]
    Layout {
        /// The directory.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// `--offline` and the store lacks something.
    #[error(
        "--offline: {0} is not in the store; run `i2kit fetch` (or `i2kit pull`) with network access first"
    )]
    Offline(String),
    /// `--offline` and the store lacks several things: all of them.
    #[error(
        "--offline: the store lacks {} item(s):\n  {}\nrun `i2kit fetch MANIFEST` with network access (or `i2kit import FILE.tar`) first",
        .0.len(),
        .0.join("\n  ")
    )]
    OfflineMissing(Vec<String>),
    /// The image config is not valid JSON.
    #[error("image config {digest} of {reference} is invalid: {detail}")]
    Config {
        /// The reference.
        reference: String,
        /// Config digest.
        digest: Digest,
        /// Parser error.
        detail: String,
    },
}

/// Fetch options.
#[derive(Clone, Debug)]
pub struct FetchOptions {
    /// Concurrent blob downloads.
    pub jobs: usize,
    /// Registry access.
    pub registry: RegistryOptions,
    /// Never open a network connection.
    pub offline: bool,
    /// Where to fetch a reference from instead (by reference without digest,
    /// from `i2kit mirror`'s lock). Content is still addressed and verified
    /// by digest, and the reference keeps its name in plans and pod.json, so
    /// a build from a mirror is the same build.
    pub mirrors: std::collections::BTreeMap<String, RegistryRef>,
}

impl Default for FetchOptions {
    fn default() -> Self {
        FetchOptions {
            jobs: 8,
            registry: RegistryOptions::default(),
            offline: false,
            mirrors: Default::default(),
        }
    }
}

/// A reference resolved to one platform's image, with its manifest and config in the store.
#[derive(Clone, Debug)]
pub struct ResolvedImage {
    /// The reference as requested.
    pub reference: ImageRef,
    /// The platform.
    pub platform: Platform,
    /// What the reference names (index or manifest).
    pub top: Descriptor,
    /// The platform manifest.
    pub manifest: Descriptor,
    /// The parsed platform manifest.
    pub image: Manifest,
    /// The parsed image config.
    pub config: ImageConfig,
}

impl ResolvedImage {
    /// The reference pinned to the platform manifest digest.
    pub fn pinned(&self) -> ImageRef {
        self.reference.with_digest(self.manifest.digest)
    }
}

/// Resolves and fetches images into a store.
pub struct Fetcher {
    store: Store,
    registry: Registry,
    opts: FetchOptions,
    events: EventSink,
}

struct Progress<'a>(&'a EventSink);

impl BlobProgress for Progress<'_> {
    fn advance(&self, digest: &Digest, n: u64) {
        (self.0)(&Event::BlobBytes {
            digest: *digest,
            bytes: n,
        });
    }
    fn reset(&self, digest: &Digest, offset: u64) {
        (self.0)(&Event::BlobReset {
            digest: *digest,
            offset,
        });
    }
}

/// The name an image is recorded under in the store's `index.json`.
pub fn store_name(r: &ImageRef) -> String {
    match r {
        ImageRef::Layout(l) => {
            let abs = std::path::absolute(&l.path).unwrap_or_else(|_| l.path.clone());
            LayoutRef {
                path: abs,
                digest: None,
                ..l.clone()
            }
            .to_string()
        }
        ImageRef::Registry(_) => r.without_digest().to_string(),
    }
}

impl Fetcher {
    /// A fetcher for the given references (their registries decide HTTP vs HTTPS).
    pub fn new<'a>(
        store: Store,
        opts: FetchOptions,
        events: EventSink,
        refs: impl IntoIterator<Item = &'a ImageRef>,
    ) -> Fetcher {
        let regs: Vec<&RegistryRef> = refs
            .into_iter()
            .filter_map(|r| match r {
                ImageRef::Registry(x) => Some(x),
                ImageRef::Layout(_) => None,
            })
            .chain(opts.mirrors.values())
            .collect();
        Fetcher {
            registry: Registry::new(&opts.registry, regs),
            store,
            opts,
            events,
        }
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Where `r` is fetched from: its mirror when the lock names one.
    fn location(&self, r: &RegistryRef) -> RegistryRef {
        match self
            .opts
            .mirrors
            .get(&ImageRef::Registry(r.clone()).without_digest().to_string())
        {
            Some(m) => RegistryRef {
                registry: m.registry.clone(),
                repository: m.repository.clone(),
                ..r.clone()
            },
            None => r.clone(),
        }
    }

    /// Manifest bytes for `r` (pinned to `digest` when given): store first, then the source.
    async fn manifest_bytes(
        &self,
        r: &ImageRef,
        digest: Option<Digest>,
    ) -> Result<(Vec<u8>, Digest), FetchError> {
        if let Some(d) = digest
            && self.store.has_blob(&d, None)
        {
            return Ok((self.store.read_blob(&d)?, d));
        }
        if self.opts.offline {
            if digest.is_none()
                && let Some(desc) = self.store.find_ref(&store_name(r))?
                && self.store.has_blob(&desc.digest, None)
            {
                return Ok((self.store.read_blob(&desc.digest)?, desc.digest));
            }
            return Err(FetchError::Offline(match digest {
                Some(d) => format!("manifest {d} of {r}"),
                None => format!("{r} (unpinned; lock it with `i2kit lock` or pull it first)"),
            }));
        }
        let (bytes, actual) = match r {
            ImageRef::Registry(rr) => {
                let mut rr = self.location(rr);
                if let Some(d) = digest {
                    rr.digest = Some(d);
                }
                self.registry.fetch_manifest(&rr).await?
            }
            ImageRef::Layout(l) => layout_manifest(l, digest)?,
        };
        self.store
            .put_bytes(&format!("manifest of {r}"), &bytes, Some(actual))?;
        Ok((bytes, actual))
    }

    /// Bring one blob into the store; true when it was downloaded.
    async fn blob(&self, r: &ImageRef, desc: &Descriptor) -> Result<bool, FetchError> {
        if self.store.has_blob(&desc.digest, Some(desc.size)) {
            return Ok(false);
        }
        if self.opts.offline {
            return Err(FetchError::Offline(format!("blob {} of {r}", desc.digest)));
        }
        (self.events)(&Event::BlobStart {
            digest: desc.digest,
            size: desc.size,
        });
        match r {
            ImageRef::Registry(rr) => {
                self.registry
                    .fetch_blob(
                        &self.location(rr),
                        desc,
                        &self.store,
                        &Progress(&self.events),
                    )
                    .await?;
            }
            ImageRef::Layout(l) => {
                let src = l.path.join("blobs/sha256").join(desc.digest.hex());
                let store = self.store.clone();
                let desc = desc.clone();
                let what = format!("blob {} of {r}", desc.digest);
                tokio::task::spawn_blocking(move || copy_blob(&store, &src, &desc, &what))
                    .await
                    .map_err(|e| FetchError::Layout {
                        path: l.path.clone(),
                        problem: e.to_string(),
                    })??;
            }
        }
        Ok(true)
    }

    /// Resolve `r` for `platform`: manifests and config into the store (the
    /// reference is recorded in the store's index by [`Fetcher::pull`], once the
    /// layers are there too).
    pub async fn resolve(
        &self,
        r: &ImageRef,
        platform: &Platform,
    ) -> Result<ResolvedImage, FetchError> {
        // Blobs written here are linked from index.json only at the end: keep gc out.
        let _writer = self.store.lock_writer()?;
        let (top_bytes, top_digest) = self.manifest_bytes(r, r.digest()).await?;
        let doc = ManifestDoc::parse(&r.to_string(), "", &top_bytes)?;
        let top = Descriptor::new(doc.media_type(), top_digest, top_bytes.len() as u64);
        let (manifest, image) = match doc {
            ManifestDoc::Image(m) => (top.clone(), m),
            ManifestDoc::Index(index) => {
                let chosen = index
                    .manifests
                    .iter()
                    .find(|d| d.platform.as_ref().is_some_and(|p| platform.matches(p)))
                    .ok_or_else(|| FetchError::Platform {
                        reference: r.to_string(),
                        wanted: platform.to_string(),
                        offered: index
                            .manifests
                            .iter()
                            .map(|d| {
                                d.platform
                                    .as_ref()
                                    .map_or("(no platform)".to_string(), |p| p.to_string())
                            })
                            .collect(),
                    })?
                    .clone();
                let (bytes, d) = self.manifest_bytes(r, Some(chosen.digest)).await?;
                match ManifestDoc::parse(&format!("{r} ({platform})"), &chosen.media_type, &bytes)?
                {
                    ManifestDoc::Image(m) => (
                        Descriptor::new(&chosen.media_type, d, bytes.len() as u64),
                        m,
                    ),
                    ManifestDoc::Index(_) => {
                        return Err(FetchError::Platform {
                            reference: r.to_string(),
                            wanted: platform.to_string(),
                            offered: vec!["a nested index, which i2kit does not follow".into()],
                        });
                    }
                }
            }
        };
        self.blob(r, &image.config).await?;
        let config_bytes = self.store.read_blob(&image.config.digest)?;
        let config: ImageConfig =
            serde_json::from_slice(&config_bytes).map_err(|e| FetchError::Config {
                reference: r.to_string(),
                digest: image.config.digest,
                detail: e.to_string(),
            })?;
        if !config.architecture.is_empty() {
            let actual = Platform {
                os: config.os.clone(),
                architecture: config.architecture.clone(),
                variant: config.variant.clone(),
                os_version: None,
            };
            if !platform.matches(&actual) {
                return Err(FetchError::WrongPlatform {
                    reference: r.to_string(),
                    wanted: platform.to_string(),
                    actual: actual.to_string(),
                });
            }
        }
        (self.events)(&Event::Resolved {
            reference: r.to_string(),
            platform: platform.to_string(),
            digest: manifest.digest,
        });
        Ok(ResolvedImage {
            reference: r.clone(),
            platform: platform.clone(),
            top,
            manifest,
            image: *image,
            config,
        })
    }

    /// Resolve every reference, then fetch all their layers (each distinct blob once).
    pub async fn pull(
        &self,
        refs: &[(ImageRef, Platform)],
    ) -> Result<Vec<ResolvedImage>, FetchError> {
        let _writer = self.store.lock_writer()?;
        if self.opts.offline {
            let missing = self.missing(refs).await?;
            if !missing.is_empty() {
                return Err(FetchError::OfflineMissing(missing));
            }
        }
        let jobs = self.opts.jobs.max(1);
        let resolved: Vec<ResolvedImage> =
            stream::iter(refs.iter().map(|(r, p)| self.resolve(r, p)))
                .buffered(jobs)
                .try_collect()
                .await?;
        let mut seen = std::collections::BTreeSet::new();
        let mut todo = Vec::new();
        for img in &resolved {
            for l in &img.image.layers {
                if seen.insert(l.digest) {
                    todo.push((&img.reference, l));
                }
            }
        }
        stream::iter(todo.into_iter().map(|(r, l)| async move {
            let fetched = self.blob(r, l).await?;
            (self.events)(&Event::BlobDone {
                digest: l.digest,
                fetched,
            });
            Ok::<_, FetchError>(())
        }))
        .buffer_unordered(jobs)
        .try_collect::<Vec<()>>()
        .await?;
        // Only complete images are named in index.json: everything an entry
        // reaches is present, so `store verify` can call any gap corruption.
        if !self.opts.offline {
            for img in &resolved {
                self.store
                    .set_ref(&store_name(&img.reference), img.top.clone())?;
            }
        }
        Ok(resolved)
    }
}

/// Everything one reference names, for copying it elsewhere byte for byte.
#[derive(Clone, Debug)]
pub struct Tree {
    /// What the reference names (index or manifest).
    pub top: Descriptor,
    /// Child manifests of an index, in index order.
    pub children: Vec<Descriptor>,
    /// Configs and layers, each once.
    pub blobs: Vec<Descriptor>,
}

impl Fetcher {
    /// Bring `r` (pinned to `top`) into the store with every platform of an
    /// index: manifests exactly as served, configs and layers.
    pub async fn pull_tree(&self, r: &ImageRef, top: Digest) -> Result<Tree, FetchError> {
        let _writer = self.store.lock_writer()?;
        let (bytes, d) = self.manifest_bytes(r, Some(top)).await?;
        let doc = ManifestDoc::parse(&r.to_string(), "", &bytes)?;
        let top = Descriptor::new(doc.media_type(), d, bytes.len() as u64);
        let mut images = Vec::new();
        let mut children = Vec::new();
        match doc {
            ManifestDoc::Image(m) => images.push(*m),
            ManifestDoc::Index(index) => {
                for c in &index.manifests {
                    let (cb, cd) = self.manifest_bytes(r, Some(c.digest)).await?;
                    match ManifestDoc::parse(&format!("{r} ({})", c.digest), &c.media_type, &cb)? {
                        ManifestDoc::Image(m) => images.push(*m),
                        ManifestDoc::Index(_) => {
                            return Err(FetchError::Layout {
                                path: r.to_string().into(),
                                problem: "a nested index, which i2kit does not follow".into(),
                            });
                        }
                    }
                    children.push(Descriptor::new(&c.media_type, cd, cb.len() as u64));
                }
            }
        }
        let mut blobs: Vec<Descriptor> = Vec::new();
        for m in &images {
            for b in std::iter::once(&m.config).chain(&m.layers) {
                if !blobs.iter().any(|x| x.digest == b.digest) {
                    blobs.push(b.clone());
                }
            }
        }
        let jobs = self.opts.jobs.max(1);
        stream::iter(blobs.iter().map(|b| self.blob(r, b)))
            .buffer_unordered(jobs)
            .try_collect::<Vec<bool>>()
            .await?;
        self.store.set_ref(&store_name(r), top.clone())?;
        Ok(Tree {
            top,
            children,
            blobs,
        })
    }

    /// Offline: everything `refs` need that the store lacks (manifests,
    /// configs, layers), all of it rather than the first gap.
    pub async fn missing(&self, refs: &[(ImageRef, Platform)]) -> Result<Vec<String>, FetchError> {
        let mut out = Vec::new();
        for (r, p) in refs {
            match self.resolve(r, p).await {
                Ok(img) => {
                    for l in &img.image.layers {
                        if !self.store.has_blob(&l.digest, Some(l.size)) {
                            out.push(format!("layer {} ({} bytes) of {r}", l.digest, l.size));
                        }
                    }
                }
                Err(FetchError::Offline(what)) => out.push(what),
                Err(e) => return Err(e),
            }
        }
        out.dedup();
        Ok(out)
    }
}

fn layout_err(path: &Path, problem: impl Into<String>) -> FetchError {
    FetchError::Layout {
        path: path.to_path_buf(),
        problem: problem.into(),
    }
}

/// Find the manifest a layout reference names and return its verified bytes.
fn layout_manifest(l: &LayoutRef, digest: Option<Digest>) -> Result<(Vec<u8>, Digest), FetchError> {
    let index_path = l.path.join("index.json");
    let bytes = std::fs::read(&index_path)
        .map_err(|e| layout_err(&l.path, format!("cannot read index.json: {e}")))?;
    let index: oci::Index = serde_json::from_slice(&bytes).map_err(|e| {
        layout_err(
            &l.path,
            format!("index.json is not a valid image index: {e}"),
        )
    })?;
    let d = match (digest, &l.tag) {
        (Some(d), _) => d,
        (None, Some(tag)) => {
            index
                .manifests
                .iter()
                .find(|m| m.annotations.get(oci::ANNOTATION_REF_NAME) == Some(tag))
                .ok_or_else(|| {
                    layout_err(
                        &l.path,
                        format!("no manifest named {tag:?}; it has: {}", names(&index)),
                    )
                })?
                .digest
        }
        (None, None) => match index.manifests.as_slice() {
            [one] => one.digest,
            [] => return Err(layout_err(&l.path, "index.json lists no manifests")),
            _ => {
                return Err(layout_err(
                    &l.path,
                    format!(
                        "index.json lists several manifests; name one as oci:PATH:NAME ({})",
                        names(&index)
                    ),
                ));
            }
        },
    };
    let path = l.path.join("blobs/sha256").join(d.hex());
    let bytes = std::fs::read(&path).map_err(|e| layout_err(&l.path, format!("blob {d}: {e}")))?;
    let actual = Digest::of(&bytes);
    if actual != d {
        return Err(StoreError::DigestMismatch {
            what: format!("manifest {}", path.display()),
            expected: d,
            actual,
            size: bytes.len() as u64,
        }
        .into());
    }
    Ok((bytes, d))
}

fn names(index: &oci::Index) -> String {
    let v: Vec<&str> = index
        .manifests
        .iter()
        .filter_map(|m| {
            m.annotations
                .get(oci::ANNOTATION_REF_NAME)
                .map(String::as_str)
        })
        .collect();
    if v.is_empty() {
        "no named manifests".into()
    } else {
        v.join(", ")
    }
}

fn copy_blob(store: &Store, src: &Path, desc: &Descriptor, what: &str) -> Result<(), FetchError> {
    let mut f = std::fs::File::open(src)
        .map_err(|e| layout_err(src, format!("cannot open blob {}: {e}", desc.digest)))?;
    let mut w = store.blob_writer(what, desc.digest, Some(desc.size))?;
    crate::digest::copy_large(&mut f, &mut w)
        .map_err(|e| layout_err(src, format!("copying blob {}: {e}", desc.digest)))?;
    w.commit()?;
    Ok(())
}
