//! Build orchestration: manifest → plan (every input pinned, build key) →
//! fetch → trees → initramfs segments (parallel, cached) → outputs, with a local
//! artifact cache keyed by the build key.
//!
//! The **build key** is the sha256 of the canonical plan JSON ([`Plan`]): i2kit
//! version, platform, formats, compression, epoch, clamping, every input's
//! reference and manifest digest, and the normalised Pod. Same key ⇒ same bytes.
//! Nothing here reads the clock, the environment or host metadata: the epoch and
//! every setting arrive in [`BuildOptions`].

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::compress::Compression;
use crate::digest::Digest;
use crate::fetch::{EventSink, FetchError, FetchOptions, Fetcher, ResolvedImage};
use crate::initramfs::{self, Segment, SegmentContent, SegmentJob};
use crate::kernel_profile;
use crate::lock::LockFile;
use crate::manifest::Pod;
use crate::oci::{self, Descriptor, Platform};
use crate::pod_spec::{self, ContainerRun, POD_SPEC_VERSION, PodSpec};
use crate::reference::ImageRef;
use crate::store::{Store, StoreError};
use crate::tree::{ApplyOptions, Data, Kind, Node, Tree};

/// Media type of a build record (an OCI manifest whose config is the plan).
pub const BUILD_ARTIFACT_TYPE: &str = "application/vnd.i2kit.image.v1";
/// Store name prefix of build records.
pub const BUILD_REF_PREFIX: &str = "i2kit-build:";
/// Media type of the plan (the build record's config).
pub const PLAN_MEDIA_TYPE: &str = "application/vnd.i2kit.plan.v1+json";

/// An output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, serde::Deserialize)]
pub enum Format {
    /// `NAME.raw`: a GPT disk whose ESP boots the UKI (the default).
    #[serde(rename = "raw")]
    Raw,
    /// `NAME.efi`: the Unified Kernel Image alone.
    #[serde(rename = "uki")]
    Uki,
    /// `NAME-kernel`, `NAME-initrd.img`, `NAME-cmdline`.
    #[serde(rename = "kernel+initrd")]
    KernelInitrd,
}

impl Format {
    /// Whether the format needs the EFI stub image.
    pub fn needs_stub(self) -> bool {
        matches!(self, Format::Raw | Format::Uki)
    }
}

impl std::str::FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "raw" => Ok(Format::Raw),
            "uki" => Ok(Format::Uki),
            "kernel+initrd" => Ok(Format::KernelInitrd),
            other => Err(format!(
                "unknown format {other:?}; available: raw, uki, kernel+initrd"
            )),
        }
    }
}

/// Everything a build needs besides the manifest.
#[derive(Clone, Debug)]
pub struct BuildOptions {
    /// Where outputs go.
    pub output_dir: PathBuf,
    /// Output formats.
    pub formats: Vec<Format>,
    /// Segment compression.
    pub compression: Compression,
    /// Timestamp of every generated entry (SOURCE_DATE_EPOCH).
    pub epoch: u64,
    /// Clamp layer mtimes to the epoch and require pinned references.
    pub reproducible: bool,
    /// Require a fresh lock file.
    pub locked: bool,
    /// Override the manifest's platform.
    pub platform: Option<Platform>,
    /// Fetching.
    pub fetch: FetchOptions,
    /// Read and write the local artifact cache (off for `i2kit verify`,
    /// which must really rebuild and must not replace the recorded build).
    pub artifact_cache: bool,
}

/// One input of the plan.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PlanInput {
    /// The reference as written (normalised).
    pub reference: String,
    /// Platform manifest digest.
    pub digest: Digest,
}

/// The canonical plan; its JSON's sha256 is the build key.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Plan {
    /// Plan schema.
    pub plan_version: u32,
    /// i2kit version.
    pub i2kit: String,
    /// Target platform.
    pub platform: String,
    /// Output formats, sorted.
    pub formats: Vec<Format>,
    /// Segment compression.
    pub compression: Compression,
    /// Generated timestamps.
    pub epoch: u64,
    /// Whether layer mtimes are clamped.
    pub clamp_mtimes: bool,
    /// Inputs by role (`kernel`, `init`, `container/NAME`).
    pub inputs: BTreeMap<String, PlanInput>,
    /// The normalised Pod.
    pub pod: Pod,
}

impl Plan {
    /// Canonical bytes (struct field order, sorted maps, compact).
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a plan serialises")
    }
    /// sha256 of the canonical bytes.
    pub fn build_key(&self) -> Digest {
        Digest::of(&self.to_bytes())
    }

    /// The build key without the output formats: what identifiers inside the
    /// image (GUIDs, volume id, `.osrel`) derive from, so `NAME.raw` has the
    /// same bytes whichever other formats are built with it.
    pub fn image_key(&self) -> Digest {
        let mut p = self.clone();
        p.formats.clear();
        p.build_key()
    }
}

/// A file the build produced.
#[derive(Clone, Debug, Serialize)]
pub struct Output {
    /// File name.
    pub name: String,
    /// Where it was written.
    pub path: PathBuf,
    /// Its digest.
    pub digest: Digest,
    /// Its size.
    pub size: u64,
}

/// What a build did.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BuildReport {
    /// The build key.
    pub build_key: Digest,
    /// True when the outputs came from the local artifact cache.
    pub cached: bool,
    /// Outputs.
    pub outputs: Vec<Output>,
    /// Segments (empty on a cache hit).
    pub segments: Vec<Segment>,
    /// Wall-clock seconds per stage (measurements only: never part of any output).
    pub timings: BTreeMap<String, f64>,
}

/// Build errors.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// Fetching failed.
    #[error(transparent)]
    Fetch(#[from] FetchError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The lock file failed or is stale.
    #[error(transparent)]
    Lock(#[from] crate::lock::LockError),
    /// Tree building failed.
    #[error(transparent)]
    Tree(#[from] crate::tree::ImageTreeError),
    /// Initramfs failed.
    #[error(transparent)]
    Initramfs(#[from] initramfs::InitramfsError),
    /// pod.json could not be resolved.
    #[error(transparent)]
    PodSpec(#[from] pod_spec::PodSpecError),
    /// A rule of the build.
    #[error("{0}")]
    Invalid(String),
    /// The UKI could not be made.
    #[error(transparent)]
    Uki(#[from] crate::uki::UkiError),
    /// Writing outputs failed.
    #[error("{path}: {source}")]
    Io {
        /// Where.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

/// Progress of a build, for the CLI.
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum BuildEvent {
    /// The plan is known.
    Planned {
        /// The key.
        build_key: Digest,
    },
    /// A segment is ready.
    Segment {
        /// Which.
        name: String,
        /// Compressed size.
        size: u64,
        /// False when cached.
        built: bool,
    },
    /// Outputs came from the artifact cache.
    CacheHit {
        /// The key.
        build_key: Digest,
    },
}

/// Where build events go.
pub type BuildSink = Arc<dyn Fn(&BuildEvent) + Send + Sync>;

struct Inputs {
    kernel: ResolvedImage,
    init: ResolvedImage,
    stub: Option<ResolvedImage>,
    containers: Vec<ResolvedImage>,
}

/// What [`assemble`] hands to the output writer.
struct Assembled {
    segments: Vec<Segment>,
    kernel: Digest,
    /// The EFI stub, validated against the platform (raw/uki formats only).
    stub: Option<crate::uki::Stub>,
    ports: Vec<u16>,
}

fn role_refs(pod: &Pod, formats: &[Format]) -> Vec<(String, ImageRef)> {
    let mut v = vec![
        ("kernel".to_string(), pod.settings.kernel.clone()),
        ("init".to_string(), pod.settings.init.clone()),
    ];
    if formats.iter().any(|f| f.needs_stub()) {
        v.push(("stub".to_string(), pod.settings.stub.clone()));
    }
    for c in &pod.containers {
        v.push((format!("container/{}", c.name), c.image.clone()));
    }
    v
}

/// The builder: a store, fetch settings and event sinks.
pub struct Builder {
    store: Store,
    events: EventSink,
    build_events: BuildSink,
}

impl Builder {
    /// A builder over `store`.
    pub fn new(store: Store, events: EventSink, build_events: BuildSink) -> Builder {
        Builder {
            store,
            events,
            build_events,
        }
    }

    /// Fetch options with the lock's mirrors.
    fn fetch_options(lock: Option<(&Path, &LockFile)>, opts: &BuildOptions) -> FetchOptions {
        let mut f = opts.fetch.clone();
        if let Some((_, l)) = lock {
            f.mirrors.extend(l.mirrors());
        }
        f
    }

    fn platform(pod: &Pod, opts: &BuildOptions) -> Platform {
        opts.platform
            .clone()
            .unwrap_or_else(|| pod.settings.platform.clone())
    }

    /// Pin references through the lock, enforce `--locked` and `--reproducible`.
    fn pinned_refs(
        pod: &Pod,
        lock: Option<(&Path, &LockFile)>,
        opts: &BuildOptions,
    ) -> Result<Vec<(String, ImageRef)>, BuildError> {
        let platform = Self::platform(pod, opts);
        let all: Vec<ImageRef> = pod.image_refs().into_iter().map(|(_, r)| r).collect();
        if opts.locked {
            let (path, lock) = lock.ok_or_else(|| {
                BuildError::Invalid(
                    "--locked: no i2kit.lock next to the manifest; run `i2kit lock` and commit it"
                        .into(),
                )
            })?;
            lock.check(path, &all, std::slice::from_ref(&platform))?;
        }
        let mut out = Vec::new();
        let mut unpinned = Vec::new();
        for (role, r) in role_refs(pod, &opts.formats) {
            let pinned = lock.and_then(|(_, l)| l.pin(&r, &platform)).unwrap_or(r);
            if pinned.digest().is_none() {
                unpinned.push(pinned.to_string());
            }
            out.push((role, pinned));
        }
        if opts.reproducible && !unpinned.is_empty() {
            return Err(BuildError::Invalid(format!(
                "--reproducible needs every image pinned by digest (i2kit lock, or @sha256:…); unpinned: {}",
                unpinned.join(", ")
            )));
        }
        Ok(out)
    }

    /// Resolve every input and compute the plan (no layers are downloaded).
    pub async fn plan(
        &self,
        pod: &Pod,
        lock: Option<(&Path, &LockFile)>,
        opts: &BuildOptions,
    ) -> Result<Plan, BuildError> {
        let platform = Self::platform(pod, opts);
        let refs = Self::pinned_refs(pod, lock, opts)?;
        let fetcher = Fetcher::new(
            self.store.clone(),
            Self::fetch_options(lock, opts),
            self.events.clone(),
            refs.iter().map(|(_, r)| r),
        );
        if opts.fetch.offline {
            // Say everything that is missing at once. Missing layers alone do
            // not stop the plan: a build-key hit needs none of them.
            let want: Vec<(ImageRef, Platform)> = refs
                .iter()
                .map(|(_, r)| (r.clone(), platform.clone()))
                .collect();
            let missing = fetcher.missing(&want).await?;
            if missing.iter().any(|m| !m.starts_with("layer ")) {
                return Err(crate::fetch::FetchError::OfflineMissing(missing).into());
            }
        }
        let mut inputs = BTreeMap::new();
        for (role, r) in &refs {
            let img = fetcher.resolve(r, &platform).await?;
            inputs.insert(
                role.clone(),
                PlanInput {
                    reference: r.without_digest().to_string(),
                    digest: img.manifest.digest,
                },
            );
        }
        let mut formats = opts.formats.clone();
        formats.sort();
        formats.dedup();
        Ok(Plan {
            plan_version: 1,
            i2kit: crate::VERSION.to_string(),
            platform: platform.to_string(),
            formats,
            compression: opts.compression,
            epoch: opts.epoch,
            clamp_mtimes: opts.reproducible,
            inputs,
            pod: pod.clone(),
        })
    }

    /// Build (or fetch from the artifact cache) and write the outputs.
    pub async fn build(
        &self,
        pod: &Pod,
        lock: Option<(&Path, &LockFile)>,
        opts: &BuildOptions,
    ) -> Result<BuildReport, BuildError> {
        let t0 = std::time::Instant::now();
        let plan = self.plan(pod, lock, opts).await?;
        self.build_planned(plan, lock, opts, t0).await
    }

    /// Build from a plan made by [`Builder::plan`] with the same `lock` and
    /// `opts` (callers that need the build key first plan only once).
    /// `started` is when planning began, for the timings.
    pub async fn build_planned(
        &self,
        plan: Plan,
        lock: Option<(&Path, &LockFile)>,
        opts: &BuildOptions,
        started: std::time::Instant,
    ) -> Result<BuildReport, BuildError> {
        let t0 = started;
        let mut timings = BTreeMap::new();
        timings.insert("plan".to_string(), t0.elapsed().as_secs_f64());
        let key = plan.build_key();
        (self.build_events)(&BuildEvent::Planned { build_key: key });
        if opts.artifact_cache
            && let Some(report) = self.cached_outputs(key, &opts.output_dir)?
        {
            (self.build_events)(&BuildEvent::CacheHit { build_key: key });
            return Ok(report);
        }
        let pod = &plan.pod;
        let platform = Self::platform(pod, opts);
        let pinned: Vec<(ImageRef, Platform)> = plan
            .inputs
            .values()
            .map(|i| -> Result<_, BuildError> {
                let r: ImageRef = i
                    .reference
                    .parse()
                    .map_err(|e| BuildError::Invalid(format!("{e}")))?;
                Ok((r.with_digest(i.digest), platform.clone()))
            })
            .collect::<Result<_, _>>()?;
        let fetcher = Fetcher::new(
            self.store.clone(),
            Self::fetch_options(lock, opts),
            self.events.clone(),
            pinned.iter().map(|(r, _)| r),
        );
        let t = std::time::Instant::now();
        let resolved = fetcher.pull(&pinned).await?;
        timings.insert("fetch".to_string(), t.elapsed().as_secs_f64());
        let by_role: BTreeMap<&String, ResolvedImage> = plan.inputs.keys().zip(resolved).collect();
        let inputs = Inputs {
            kernel: by_role[&"kernel".to_string()].clone(),
            init: by_role[&"init".to_string()].clone(),
            stub: by_role.get(&"stub".to_string()).cloned(),
            containers: pod
                .containers
                .iter()
                .map(|c| by_role[&format!("container/{}", c.name)].clone())
                .collect(),
        };
        let store = self.store.clone();
        let plan2 = plan.clone();
        let opts2 = opts.clone();
        let sink = self.build_events.clone();
        let t = std::time::Instant::now();
        let assembled =
            tokio::task::spawn_blocking(move || assemble(&store, &plan2, &inputs, &opts2, &sink))
                .await
                .map_err(|e| BuildError::Invalid(format!("build task failed: {e}")))??;
        timings.insert(
            "trees and initramfs segments".to_string(),
            t.elapsed().as_secs_f64(),
        );
        let t = std::time::Instant::now();
        let mut report = self.write_outputs(&plan, key, assembled, opts, &mut timings)?;
        timings.insert("outputs".to_string(), t.elapsed().as_secs_f64());
        timings.insert("total".to_string(), t0.elapsed().as_secs_f64());
        report.timings = timings;
        Ok(report)
    }

    fn cached_outputs(
        &self,
        key: Digest,
        out_dir: &Path,
    ) -> Result<Option<BuildReport>, BuildError> {
        let Some(desc) = self
            .store
            .find_ref(&format!("{BUILD_REF_PREFIX}{}", key.hex()))?
        else {
            return Ok(None);
        };
        let bytes = match self.store.read_blob(&desc.digest) {
            Ok(b) => b,
            Err(_) => return Ok(None),
        };
        let Ok(m) = serde_json::from_slice::<oci::Manifest>(&bytes) else {
            return Ok(None);
        };
        if m.config.digest != key
            || !m
                .layers
                .iter()
                .all(|l| self.store.has_blob(&l.digest, Some(l.size)))
        {
            return Ok(None);
        }
        let mut outputs = Vec::new();
        fs::create_dir_all(out_dir).map_err(|source| BuildError::Io {
            path: out_dir.into(),
            source,
        })?;
        for l in &m.layers {
            let name = l
                .annotations
                .get("org.opencontainers.image.title")
                .cloned()
                .unwrap_or_default();
            let path = out_dir.join(&name);
            self.copy_out(&l.digest, &path)?;
            outputs.push(Output {
                name,
                path,
                digest: l.digest,
                size: l.size,
            });
        }
        Ok(Some(BuildReport {
            build_key: key,
            cached: true,
            outputs,
            segments: Vec::new(),
            timings: BTreeMap::new(),
        }))
    }

    /// The raw disk: GPT + an ESP holding the UKI at the removable-media path.
    #[allow(clippy::too_many_arguments)]
    fn write_raw(
        &self,
        arch: &str,
        mut uki: Box<dyn io::Read>,
        uki_len: u64,
        key: &Digest,
        epoch: u64,
        out_dir: &Path,
        name: &str,
    ) -> Result<Digest, BuildError> {
        let boot = if arch == "arm64" {
            "BOOTAA64.EFI"
        } else {
            "BOOTX64.EFI"
        };
        let mut esp = [crate::fat::EspFile {
            path: vec!["EFI".into(), "BOOT".into(), boot.into()],
            len: uki_len,
            data: &mut uki,
        }];
        let mut w = OutputWriter::new(&self.store, out_dir, name)?;
        crate::disk::write_disk(&mut esp, key, epoch, &mut w).map_err(|source| BuildError::Io {
            path: out_dir.join(name),
            source,
        })?;
        OutputWriter::finish(w)
    }

    fn copy_out(&self, digest: &Digest, path: &Path) -> Result<(), BuildError> {
        let dir = path.parent().unwrap_or(Path::new("."));
        let io_err = |source| BuildError::Io {
            path: path.into(),
            source,
        };
        let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(io_err)?;
        let mut src = self.store.open_blob(digest)?;
        // A plain File on both sides lets std use copy_file_range.
        std::io::copy(&mut src, tmp.as_file_mut()).map_err(io_err)?;
        tmp.persist(path).map_err(|e| io_err(e.error))?;
        Ok(())
    }

    fn write_outputs(
        &self,
        plan: &Plan,
        key: Digest,
        a: Assembled,
        opts: &BuildOptions,
        timings: &mut BTreeMap<String, f64>,
    ) -> Result<BuildReport, BuildError> {
        let out_dir = opts.output_dir.as_path();
        let Assembled {
            segments,
            kernel,
            stub,
            ports,
        } = a;
        let name = &plan.pod.name;
        let console = if plan.platform.ends_with("arm64") {
            "console=ttyAMA0"
        } else {
            "console=ttyS0"
        };
        let cmdline = if plan.pod.settings.cmdline.is_empty() {
            format!("{console}\n")
        } else {
            format!("{console} {}\n", plan.pod.settings.cmdline)
        };
        let size_of = |d: &Digest| {
            fs::metadata(self.store.blob_path(d))
                .map(|m| m.len())
                .unwrap_or(0)
        };
        fs::create_dir_all(out_dir).map_err(|source| BuildError::Io {
            path: out_dir.into(),
            source,
        })?;
        let mut files: Vec<(String, Digest)> = Vec::new();
        // Large outputs go to the store and the output directory in one pass.
        let mut written = std::collections::BTreeSet::new();
        if plan.formats.contains(&Format::KernelInitrd) {
            let initrd_name = format!("{name}-initrd.img");
            let mut w = OutputWriter::new(&self.store, out_dir, &initrd_name)?;
            initramfs::concat(&self.store, &segments, &mut w)?;
            let initrd = OutputWriter::finish(w)?;
            written.insert(initrd_name);
            let cmd = self.store.put_bytes("cmdline", cmdline.as_bytes(), None)?;
            files.push((format!("{name}-kernel"), kernel));
            files.push((format!("{name}-initrd.img"), initrd));
            files.push((format!("{name}-cmdline"), cmd));
        }
        if let Some(stub) = stub {
            let t = std::time::Instant::now();
            let image_key = plan.image_key();
            let arch = plan
                .platform
                .rsplit('/')
                .next()
                .unwrap_or_default()
                .to_string();
            let uki = UkiInputs {
                store: self.store.clone(),
                osrel: crate::uki::os_release(name, &image_key.hex()),
                cmdline: cmdline.trim_end().to_string(),
                kernel,
                kernel_len: size_of(&kernel),
                segments: segments.clone(),
            };
            let uki_len = stub.output_len(&uki.section_lens());
            let uki_blob = if plan.formats.contains(&Format::Uki) {
                let efi = format!("{name}.efi");
                let mut w = OutputWriter::new(&self.store, out_dir, &efi)?;
                uki.write(stub, &mut w)?;
                let d = OutputWriter::finish(w)?;
                written.insert(efi.clone());
                files.push((efi, d));
                Some(d)
            } else {
                // Only the disk wants the UKI: stream it straight into the ESP
                // through a pipe instead of storing it first.
                let (r, mut pw) = io::pipe().map_err(|source| BuildError::Io {
                    path: "pipe".into(),
                    source,
                })?;
                let writer = std::thread::spawn(move || -> Result<(), BuildError> {
                    let mut w = io::BufWriter::with_capacity(1 << 20, &mut pw);
                    uki.write(stub, &mut w)?;
                    w.flush().map_err(|source| BuildError::Io {
                        path: "UKI".into(),
                        source,
                    })?;
                    Ok(())
                });
                if plan.formats.contains(&Format::Raw) {
                    let raw_name = format!("{name}.raw");
                    let raw = self.write_raw(
                        &arch,
                        Box::new(r),
                        uki_len,
                        &image_key,
                        plan.epoch,
                        out_dir,
                        &raw_name,
                    )?;
                    written.insert(raw_name.clone());
                    files.push((raw_name, raw));
                }
                writer
                    .join()
                    .map_err(|_| BuildError::Invalid("the UKI writer panicked".into()))??;
                None
            };
            if let Some(d) = uki_blob
                && plan.formats.contains(&Format::Raw)
            {
                let raw_name = format!("{name}.raw");
                let raw = self.write_raw(
                    &arch,
                    Box::new(self.store.open_blob(&d)?),
                    uki_len,
                    &image_key,
                    plan.epoch,
                    out_dir,
                    &raw_name,
                )?;
                written.insert(raw_name);
                files.push((format!("{name}.raw"), raw));
            }
            timings.insert("uki and raw disk".to_string(), t.elapsed().as_secs_f64());
        }
        let provenance = serde_json::json!({
            "buildKey": key,
            "i2kit": plan.i2kit,
            "platform": plan.platform,
            "formats": plan.formats,
            "ports": ports,
            "inputs": plan.inputs,
            "segments": segments.iter().map(|s| serde_json::json!({"name": s.name, "key": s.key, "digest": s.digest, "size": s.size})).collect::<Vec<_>>(),
            "outputs": files.iter().map(|(n, d)| (n.clone(), serde_json::json!({"digest": d, "size": size_of(d)}))).collect::<BTreeMap<_, _>>(),
        });
        let mut pbytes = serde_json::to_vec_pretty(&provenance).expect("provenance serialises");
        pbytes.push(b'\n');
        let prov = self.store.put_bytes("provenance", &pbytes, None)?;
        files.push((format!("{name}.provenance.json"), prov));
        // The build record: config = the plan (so its digest is the build key).
        let plan_bytes = plan.to_bytes();
        self.store.put_bytes("plan", &plan_bytes, Some(key))?;
        let sized: Vec<(String, Digest, u64)> = files
            .iter()
            .map(|(n, d)| (n.clone(), *d, size_of(d)))
            .collect();
        let manifest = build_record(key, plan_bytes.len() as u64, &sized);
        let mbytes = serde_json::to_vec(&manifest).expect("manifest serialises");
        let md = self.store.put_bytes("build record", &mbytes, None)?;
        let mut outputs = Vec::new();
        for (n, d) in &files {
            let path = out_dir.join(n);
            if !written.contains(n) {
                self.copy_out(d, &path)?;
            }
            outputs.push(Output {
                name: n.clone(),
                path,
                digest: *d,
                size: size_of(d),
            });
        }
        if opts.artifact_cache {
            self.store.set_ref(
                &format!("{BUILD_REF_PREFIX}{}", key.hex()),
                Descriptor::new(oci::OCI_MANIFEST, md, mbytes.len() as u64),
            )?;
        }
        Ok(BuildReport {
            build_key: key,
            cached: false,
            outputs,
            segments,
            timings: BTreeMap::new(),
        })
    }
}

/// The local build record: an OCI manifest whose config is the plan (so its
/// digest is the build key) and whose layers are the output files, titled.
pub fn build_record(key: Digest, plan_size: u64, files: &[(String, Digest, u64)]) -> oci::Manifest {
    oci::Manifest {
        schema_version: 2,
        media_type: Some(oci::OCI_MANIFEST.into()),
        artifact_type: Some(BUILD_ARTIFACT_TYPE.into()),
        config: Descriptor::new(PLAN_MEDIA_TYPE, key, plan_size),
        layers: files
            .iter()
            .map(|(n, d, size)| {
                let mut desc = Descriptor::new("application/octet-stream", *d, *size);
                desc.annotations
                    .insert("org.opencontainers.image.title".into(), n.clone());
                desc
            })
            .collect(),
        annotations: BTreeMap::new(),
    }
}

/// Everything the UKI is made of, owned so it can be written from another thread.
struct UkiInputs {
    store: Store,
    osrel: String,
    cmdline: String,
    kernel: Digest,
    kernel_len: u64,
    segments: Vec<Segment>,
}

impl UkiInputs {
    fn section_lens(&self) -> [u64; 4] {
        let initrd: u64 = self.segments.iter().map(|s| s.size).sum();
        [
            self.osrel.len() as u64,
            self.cmdline.len() as u64,
            initrd,
            self.kernel_len,
        ]
    }

    /// Stub + .osrel + .cmdline + .initrd (the segments, concatenated) + .linux.
    fn write(&self, stub: crate::uki::Stub, out: &mut dyn io::Write) -> Result<u64, BuildError> {
        let lens = self.section_lens();
        let mut initrd: Box<dyn io::Read> = Box::new(io::empty());
        for s in &self.segments {
            initrd = Box::new(initrd.chain(self.store.open_blob(&s.digest)?));
        }
        let mut k = self.store.open_blob(&self.kernel)?;
        let (mut o, mut c) = (self.osrel.as_bytes(), self.cmdline.as_bytes());
        let mut sections = [
            crate::uki::Section {
                name: ".osrel",
                len: lens[0],
                data: &mut o,
            },
            crate::uki::Section {
                name: ".cmdline",
                len: lens[1],
                data: &mut c,
            },
            crate::uki::Section {
                name: ".initrd",
                len: lens[2],
                data: &mut initrd,
            },
            crate::uki::Section {
                name: ".linux",
                len: lens[3],
                data: &mut k,
            },
        ];
        Ok(crate::uki::write_uki(stub, &mut sections, out)?)
    }
}

/// Writes a large output once into both the store (for the artifact cache)
/// and the output directory, instead of storing it and copying it out.
struct OutputWriter {
    blob: crate::store::BlobWriter,
    file: tempfile::NamedTempFile,
    path: PathBuf,
}

impl OutputWriter {
    fn new(
        store: &Store,
        out_dir: &Path,
        name: &str,
    ) -> Result<io::BufWriter<OutputWriter>, BuildError> {
        let path = out_dir.join(name);
        let file = tempfile::NamedTempFile::new_in(out_dir).map_err(|source| BuildError::Io {
            path: path.clone(),
            source,
        })?;
        let blob = store.blob_writer_new(name)?;
        Ok(io::BufWriter::with_capacity(
            1 << 20,
            OutputWriter { blob, file, path },
        ))
    }

    fn finish(w: io::BufWriter<OutputWriter>) -> Result<Digest, BuildError> {
        let w = w.into_inner().map_err(|e| BuildError::Io {
            path: "output".into(),
            source: e.into_error(),
        })?;
        let digest = w.blob.commit()?;
        let path = w.path;
        w.file.persist(&path).map_err(|e| BuildError::Io {
            path,
            source: e.error,
        })?;
        Ok(digest)
    }
}

impl Write for OutputWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.blob.write_all(buf)?;
        self.file.write_all(buf)?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

fn segment_key(parts: &[&[u8]], plan: &Plan) -> Digest {
    // Everything that shapes a segment's bytes besides its own inputs.
    let mut h = crate::digest::Hasher::new();
    let common = serde_json::json!({"i2kit": plan.i2kit, "compression": plan.compression, "epoch": plan.epoch, "clamp": plan.clamp_mtimes});
    let common = serde_json::to_vec(&common).expect("serialises");
    for p in std::iter::once(&common[..]).chain(parts.iter().copied()) {
        h.update(&(p.len() as u64).to_le_bytes());
        h.update(p);
    }
    h.finish()
}

fn inline(bytes: Vec<u8>, mode: u32, epoch: u64) -> Node {
    Node {
        kind: Kind::File(Data::Inline(Arc::new(bytes))),
        mode,
        uid: 0,
        gid: 0,
        mtime: epoch,
    }
}

fn dir(mode: u32, epoch: u64) -> Node {
    Node {
        kind: Kind::Dir,
        mode,
        uid: 0,
        gid: 0,
        mtime: epoch,
    }
}

/// Trees, pod.json and segments; runs on rayon's pool.
fn assemble(
    store: &Store,
    plan: &Plan,
    inputs: &Inputs,
    opts: &BuildOptions,
    sink: &BuildSink,
) -> Result<Assembled, BuildError> {
    let apply = ApplyOptions {
        clamp_mtime: plan.clamp_mtimes.then_some(plan.epoch),
    };
    let epoch = plan.epoch;
    let pod = &plan.pod;
    // All trees at once: kernel, init, containers.
    let images: Vec<&ResolvedImage> = [&inputs.kernel, &inputs.init]
        .into_iter()
        .chain(inputs.containers.iter())
        .collect();
    let trees: Vec<Tree> = images
        .par_iter()
        .map(|img| crate::tree::image_tree(store, img, apply))
        .collect::<Result<_, _>>()?;
    let (kernel_tree, rest) = trees.split_first().expect("kernel tree");
    let (init_tree, container_trees) = rest.split_first().expect("init tree");

    let parts = initramfs::kernel_parts(store, &inputs.kernel.reference.to_string(), kernel_tree)?;
    let wanted: Vec<String> = match &pod.settings.modules {
        Some(m) => m.clone(),
        None => kernel_profile::profile(&pod.settings.profile)
            .map(|p| p.modules.iter().map(|s| s.to_string()).collect())
            .unwrap_or_default(),
    };
    let modules = initramfs::resolve_modules(store, &parts, &wanted)?;
    let release = parts.release.clone().unwrap_or_default();
    // Platform checks come before any output: a kernel or stub of another
    // architecture is refused here.
    let arch = plan
        .platform
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .to_string();
    let needs_uefi = plan.formats.iter().any(|f| f.needs_stub());
    let kernel_name = inputs.kernel.reference.to_string();
    if needs_uefi {
        let head = kernel_tree
            .read_head(store, "kernel", 4096)
            .map_err(crate::tree::ImageTreeError::from)?;
        crate::uki::check_kernel(&kernel_name, &head, &arch)?;
    }
    let stub = match &inputs.stub {
        Some(img) => {
            let t = crate::tree::image_tree(store, img, apply)?;
            let file = if arch == "arm64" {
                "linuxaa64.efi.stub"
            } else {
                "linuxx64.efi.stub"
            };
            let path = format!("usr/lib/systemd/boot/efi/{file}");
            let bytes = t
                .read_file(store, &path, 64 << 20)
                .map_err(crate::tree::ImageTreeError::from)?
                .ok_or_else(|| {
                    BuildError::Invalid(format!(
                        "stub image {} has no /{path} (see kernels/pack-efi-stub.sh)",
                        img.reference
                    ))
                })?;
            // Validated here, before any output is written.
            Some(crate::uki::Stub::parse(
                &img.reference.to_string(),
                bytes,
                &arch,
            )?)
        }
        None => None,
    };
    // The kernel is stored as a blob of its own: it is an output, and the cache keeps outputs.
    let (_, mut r) = kernel_tree
        .open_file(store, "kernel")
        .map_err(crate::tree::ImageTreeError::from)?
        .expect("kernel_parts found /kernel");
    let mut w = store.blob_writer_new("kernel")?;
    crate::digest::copy_large(&mut r, &mut w).map_err(|source| BuildError::Io {
        path: "kernel".into(),
        source,
    })?;
    let kernel_blob = w.commit()?;

    // pod.json
    let mut runs = Vec::new();
    for ((c, img), tree) in pod
        .containers
        .iter()
        .zip(&inputs.containers)
        .zip(container_trees)
    {
        let passwd = tree
            .read_file(store, "etc/passwd", 16 << 20)
            .map_err(crate::tree::ImageTreeError::from)?;
        let group = tree
            .read_file(store, "etc/group", 16 << 20)
            .map_err(crate::tree::ImageTreeError::from)?;
        let (uid, gid) = pod_spec::user(c, &img.config, passwd.as_deref(), group.as_deref())?;
        let working_dir = c
            .working_dir
            .clone()
            .or_else(|| {
                img.config
                    .config
                    .as_ref()
                    .and_then(|r| r.working_dir.clone())
                    .filter(|w| !w.is_empty())
            })
            .unwrap_or_else(|| "/".into());
        runs.push(ContainerRun {
            name: c.name.clone(),
            image: img.pinned().to_string(),
            rootfs: format!("/containers/{}/rootfs", c.name),
            argv: pod_spec::argv(c, &img.config)?,
            env: pod_spec::env(c, &img.config),
            working_dir,
            uid,
            gid,
            ports: c.ports.clone(),
            tuning: c.tuning.clone(),
        });
    }
    let spec = PodSpec {
        version: POD_SPEC_VERSION,
        name: pod.name.clone(),
        hostname: pod.hostname.clone(),
        restart_policy: pod.restart_policy,
        termination_grace_period_seconds: pod.termination_grace_period_seconds,
        kernel_release: release.clone(),
        modules: modules.clone(),
        containers: runs,
    };
    let mut pod_json = serde_json::to_vec_pretty(&spec).expect("pod spec serialises");
    pod_json.push(b'\n');

    // Segments.
    let module_paths: Vec<String> = modules
        .iter()
        .map(|m| format!("lib/modules/{release}/{m}"))
        .collect();
    let module_tree = parts
        .modules
        .subset(module_paths.iter().map(String::as_str));
    let mut pod_files = BTreeMap::new();
    for (p, mode) in [
        ("containers", 0o755),
        ("dev", 0o755),
        ("etc", 0o755),
        ("etc/i2kit", 0o755),
        ("proc", 0o555),
        ("run", 0o755),
        ("sys", 0o555),
        ("tmp", 0o1777),
    ] {
        pod_files.insert(p.to_string(), dir(mode, epoch));
    }
    // The kernel opens /dev/console for init's stdio before devtmpfs exists.
    pod_files.insert(
        "dev/console".into(),
        Node {
            kind: Kind::Char(5, 1),
            mode: 0o600,
            uid: 0,
            gid: 0,
            mtime: epoch,
        },
    );
    pod_files.insert(
        pod_spec::POD_SPEC_PATH.into(),
        inline(pod_json.clone(), 0o644, epoch),
    );
    if init_tree.get("init").is_none() {
        pod_files.insert(
            "init".into(),
            Node {
                kind: Kind::Symlink("sbin/i2kit-init".into()),
                mode: 0o777,
                uid: 0,
                gid: 0,
                mtime: epoch,
            },
        );
    }
    let modules_key_input = serde_json::to_vec(&modules).expect("serialises");
    let mut jobs = vec![
        SegmentJob {
            name: "modules".into(),
            key: segment_key(
                &[
                    b"modules",
                    inputs.kernel.manifest.digest.bytes(),
                    &modules_key_input,
                ],
                plan,
            ),
            content: SegmentContent::Tree {
                tree: &module_tree,
                prefix: String::new(),
            },
        },
        SegmentJob {
            name: "init".into(),
            key: segment_key(&[b"init", inputs.init.manifest.digest.bytes()], plan),
            content: SegmentContent::Tree {
                tree: init_tree,
                prefix: String::new(),
            },
        },
    ];
    for (c, (img, tree)) in pod
        .containers
        .iter()
        .zip(inputs.containers.iter().zip(container_trees))
    {
        jobs.push(SegmentJob {
            name: format!("container {}", c.name),
            key: segment_key(
                &[b"container", c.name.as_bytes(), img.manifest.digest.bytes()],
                plan,
            ),
            content: SegmentContent::Tree {
                tree,
                prefix: format!("containers/{}/rootfs", c.name),
            },
        });
    }
    let pod_key_input =
        serde_json::to_vec(&pod_files.keys().collect::<Vec<_>>()).expect("serialises");
    jobs.push(SegmentJob {
        name: "pod".into(),
        key: segment_key(&[b"pod", &pod_json, &pod_key_input], plan),
        content: SegmentContent::Files(pod_files),
    });
    let segments: Vec<Segment> = jobs
        .par_iter()
        .map(|j| {
            let s = initramfs::build_segment(store, j, opts.compression, epoch)?;
            sink(&BuildEvent::Segment {
                name: s.name.clone(),
                size: s.size,
                built: s.built,
            });
            Ok(s)
        })
        .collect::<Result<_, BuildError>>()?;
    let ports = pod
        .containers
        .iter()
        .flat_map(|c| c.ports.iter().map(|p| p.container_port))
        .collect();
    Ok(Assembled {
        segments,
        kernel: kernel_blob,
        stub,
        ports,
    })
}
