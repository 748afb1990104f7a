//! `i2kit build MANIFEST`

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use i2kit::build::{BuildEvent, BuildOptions, Builder, Format};
use i2kit::compress::Compression;
use i2kit::lock::{LockFile, lock_path};
use i2kit::oci::Platform;
use i2kit::remote_cache;

use super::{Cli, NetArgs};

#[derive(clap::Args)]
pub struct Args {
    /// The Deployment (or compact) manifest.
    manifest: PathBuf,
    /// Output directory.
    #[arg(long, short = 'o', default_value = "out")]
    output: PathBuf,
    /// Output format, repeatable: raw (GPT disk with a UEFI ESP), uki (Unified
    /// Kernel Image), kernel+initrd (for direct kernel boot).
    #[arg(long = "format", default_value = "raw")]
    formats: Vec<Format>,
    /// Initramfs segment compression: zstd (kernel ≥ 5.9), gzip or none.
    #[arg(long, default_value = "zstd")]
    compression: String,
    /// Compression level (zstd 1-19, default 3; gzip 1-9, default 6).
    #[arg(long)]
    compression_level: Option<i32>,
    /// Clamp layer timestamps to SOURCE_DATE_EPOCH (0 when unset) and require
    /// every image pinned by digest (i2kit.lock or @sha256:).
    #[arg(long)]
    reproducible: bool,
    /// Fail unless i2kit.lock exists next to the manifest and matches it.
    #[arg(long)]
    locked: bool,
    /// Resolve every input, print the plan and the build key, build nothing.
    #[arg(long)]
    dry_run: bool,
    /// Target platform, overriding the manifest's (linux/amd64, linux/arm64).
    #[arg(long)]
    platform: Option<Platform>,
    /// Before building, look the build key up in this registry repository
    /// (REGISTRY/REPO, repeatable, in order); a hit is verified, then used.
    #[arg(long = "cache-from", value_name = "REGISTRY/REPO")]
    cache_from: Vec<String>,
    /// After building, push the outputs to REGISTRY/REPO as `bk-<build key>`
    /// (skipped when already there; a different entry is a reproducibility alarm).
    #[arg(long = "cache-to", value_name = "REGISTRY/REPO")]
    cache_to: Option<String>,
    /// With --cache-to: sign the pushed entry with this ed25519 key (`i2kit key generate`).
    #[arg(long, value_name = "KEY")]
    sign_key: Option<PathBuf>,
    /// With --cache-from: accept only entries signed by this public key (repeatable);
    /// unsigned or otherwise signed entries are ignored. Without it, hits are not checked for signatures.
    #[arg(long, value_name = "PUB")]
    trust_key: Vec<PathBuf>,
    /// Push with standard OCI image media types (real types in annotations),
    /// for registries that refuse custom ones (GitLab, Quay).
    #[arg(long)]
    cache_compat: bool,
    #[command(flatten)]
    net: NetArgs,
    /// Print the build report as JSON on stdout.
    #[arg(long)]
    json: bool,
}

pub fn run(cli: &Cli, a: &Args) -> anyhow::Result<ExitCode> {
    let Some(report) = execute(cli, a, a.json)? else {
        return Ok(ExitCode::SUCCESS);
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        for o in &report.outputs {
            println!("{} {} ({} bytes)", o.path.display(), o.digest, o.size);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Build `manifest` into `output` with the defaults, quietly (for `push`).
pub fn build_for_push(
    cli: &Cli,
    manifest: &std::path::Path,
    output: &std::path::Path,
    net: NetArgs,
) -> anyhow::Result<i2kit::build::BuildReport> {
    let a = Args {
        manifest: manifest.to_path_buf(),
        output: output.to_path_buf(),
        formats: vec![Format::Raw],
        compression: "zstd".into(),
        compression_level: None,
        reproducible: false,
        locked: false,
        dry_run: false,
        platform: None,
        cache_from: Vec::new(),
        cache_to: None,
        sign_key: None,
        trust_key: Vec::new(),
        cache_compat: false,
        net,
        json: false,
    };
    execute(cli, &a, false)?.context("the build produced no report")
}

/// A cache location: REGISTRY/REPO, no tag or digest.
pub(super) fn cache_repo(s: &str) -> anyhow::Result<i2kit::reference::RegistryRef> {
    match s.parse::<i2kit::reference::ImageRef>() {
        Ok(i2kit::reference::ImageRef::Registry(mut r)) => {
            anyhow::ensure!(
                r.digest.is_none() && !s.rsplit('/').next().unwrap_or("").contains(':'),
                "cache location {s:?} must be REGISTRY/REPO, without a tag or digest (i2kit tags entries bk-<build key>)"
            );
            r.tag = None;
            Ok(r)
        }
        Ok(_) => {
            anyhow::bail!("cache location {s:?} must be a registry repository, not an OCI layout")
        }
        Err(e) => Err(anyhow::anyhow!("cache location {s:?}: {e}")),
    }
}

/// Run a build (or a dry run, which prints the plan and returns None).
fn execute(cli: &Cli, a: &Args, quiet: bool) -> anyhow::Result<Option<i2kit::build::BuildReport>> {
    let pod = i2kit::manifest::load_manifest(&a.manifest)?;
    for w in &pod.warnings {
        eprintln!("warning: {w}");
    }
    let lock_file = lock_path(&a.manifest);
    let lock = LockFile::load(&lock_file)?;
    let epoch = match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(s) => s
            .parse()
            .with_context(|| format!("SOURCE_DATE_EPOCH={s:?} is not a number of seconds"))?,
        Err(_) => 0,
    };
    let compression =
        Compression::from_parts(&a.compression, a.compression_level).map_err(anyhow::Error::msg)?;
    let opts = BuildOptions {
        output_dir: a.output.clone(),
        formats: a.formats.clone(),
        compression,
        epoch,
        reproducible: a.reproducible,
        locked: a.locked,
        platform: a.platform.clone(),
        fetch: a.net.fetch_options(),
        artifact_cache: true,
    };
    let store = cli.open_store()?;
    let (events, bar) = super::progress::sink(quiet);
    let build_events: i2kit::build::BuildSink = Arc::new(move |e: &BuildEvent| {
        if quiet {
            return;
        }
        match e {
            BuildEvent::Planned { build_key } => eprintln!("build key {}", build_key.hex()),
            BuildEvent::Segment { name, size, built } => {
                eprintln!(
                    "segment {name}: {size} bytes{}",
                    if *built { "" } else { " (cached)" }
                )
            }
            BuildEvent::CacheHit { .. } => {
                eprintln!("build key found in the local artifact cache: nothing to build")
            }
        }
    });
    let builder = Builder::new(store.clone(), events, build_events);
    let lock_ref = lock.as_ref().map(|l| (lock_file.as_path(), l));
    let rt = super::runtime()?;
    let cache_from = a
        .cache_from
        .iter()
        .map(|s| cache_repo(s))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let cache_to = a.cache_to.as_deref().map(cache_repo).transpose()?;
    anyhow::ensure!(
        a.sign_key.is_none() || cache_to.is_some(),
        "--sign-key signs what --cache-to pushes: give both"
    );
    let signer = a
        .sign_key
        .as_deref()
        .map(i2kit::signing::load_signing)
        .transpose()?;
    let trusted = a
        .trust_key
        .iter()
        .map(|p| i2kit::signing::load_verifying(p))
        .collect::<Result<Vec<_>, _>>()?;
    // Planned once: the build key decides remote cache lookups and the build.
    let started = std::time::Instant::now();
    let plan = rt.block_on(builder.plan(&pod, lock_ref, &opts))?;
    let key = plan.build_key();
    if a.dry_run {
        if let Some(b) = bar {
            b.finish_and_clear();
        }
        let v = serde_json::json!({"buildKey": key, "plan": plan});
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(None);
    }
    let registry = (!cache_from.is_empty() || cache_to.is_some()).then(|| {
        i2kit::registry::Registry::new(
            &opts.fetch.registry,
            cache_from.iter().chain(cache_to.iter()),
        )
    });
    if let Some(reg) = &registry
        && !cache_from.is_empty()
    {
        if remote_cache::has_local(&store, key) {
            // The local artifact cache answers first.
        } else if opts.fetch.offline {
            eprintln!("--offline: not asking the remote caches");
        } else {
            for repo in &cache_from {
                match rt.block_on(remote_cache::pull(reg, &store, repo, key, &trusted)) {
                    Ok(Some(p)) => {
                        if !quiet {
                            eprintln!(
                                "remote cache hit: {} verified ({} bytes downloaded){}",
                                p.entry,
                                p.downloaded,
                                p.signer
                                    .map(|s| format!(", signed by trusted key {s}"))
                                    .unwrap_or_default()
                            );
                        }
                        break;
                    }
                    Err(e @ remote_cache::CacheError::Untrusted { .. }) => {
                        eprintln!("warning: {e}")
                    }
                    Ok(None) => {
                        if !quiet {
                            eprintln!("remote cache miss: {}/{}", repo.registry, repo.repository);
                        }
                    }
                    // A cache that cannot be reached only costs the hit.
                    Err(remote_cache::CacheError::Registry(e)) => {
                        eprintln!(
                            "warning: remote cache {}/{} not usable: {e}",
                            repo.registry, repo.repository
                        )
                    }
                    Err(e) => return Err(anyhow::Error::new(e).context("--cache-from")),
                }
            }
        }
    }
    let report = rt
        .block_on(builder.build_planned(plan, lock_ref, &opts, started))
        .context("build failed")?;
    if let (Some(reg), Some(repo)) = (&registry, &cache_to) {
        let p = remote_cache::prepare(&store, report.build_key, a.cache_compat)?;
        let pushed = rt
            .block_on(remote_cache::push(reg, &store, repo, report.build_key, &p))
            .context("--cache-to")?;
        if let Some(sk) = &signer {
            let new = rt
                .block_on(remote_cache::push_signature(
                    reg,
                    &store,
                    repo,
                    report.build_key,
                    pushed.digest,
                    sk,
                ))
                .context("--sign-key")?;
            if !quiet {
                eprintln!(
                    "remote cache: {} signature by key {}",
                    if new {
                        "pushed the"
                    } else {
                        "already holds the"
                    },
                    i2kit::signing::key_id(&sk.verifying_key())
                );
            }
        }
        if !quiet {
            if pushed.already {
                eprintln!(
                    "remote cache: {} already holds this build ({})",
                    pushed.tag, pushed.digest
                );
            } else {
                eprintln!(
                    "remote cache: pushed {} ({}; {} blobs uploaded, {} already there)",
                    pushed.tag, pushed.digest, pushed.uploaded, pushed.present
                );
            }
        }
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    Ok(Some(report))
}
