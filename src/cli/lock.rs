//! `i2kit lock MANIFEST`

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use i2kit::fetch::Fetcher;
use i2kit::lock::{LockFile, LockedImage, lock_path};
use i2kit::oci::Platform;

use super::{Cli, NetArgs};

#[derive(clap::Args)]
pub struct Args {
    /// The Deployment (or compact) manifest.
    manifest: PathBuf,
    /// Platforms to lock (repeatable). Default: the manifest's i2kit platform.
    #[arg(long)]
    platform: Vec<Platform>,
    /// Do not write: fail if i2kit.lock is missing or stale (for CI).
    #[arg(long)]
    check: bool,
    #[command(flatten)]
    net: NetArgs,
    /// Print the lock as JSON on stdout as well.
    #[arg(long)]
    json: bool,
}

pub fn run(cli: &Cli, a: &Args) -> anyhow::Result<ExitCode> {
    let pod = i2kit::manifest::load_manifest(&a.manifest)?;
    let platforms = if a.platform.is_empty() {
        vec![pod.settings.platform.clone()]
    } else {
        a.platform.clone()
    };
    let path = lock_path(&a.manifest);
    let refs: Vec<_> = pod.image_refs().into_iter().map(|(_, r)| r).collect();
    if a.check {
        let lock =
            LockFile::load(&path)?.ok_or_else(|| i2kit::lock::LockError::Missing(path.clone()))?;
        lock.check(&path, &refs, &platforms)?;
        println!("{} is up to date", path.display());
        return Ok(ExitCode::SUCCESS);
    }
    let store = cli.open_store()?;
    let (events, bar) = super::progress::sink(a.json);
    let fetcher = Fetcher::new(store, a.net.fetch_options(), events, &refs);
    let rt = super::runtime()?;
    let mut lock = LockFile::new();
    for r in &refs {
        for p in &platforms {
            let img = rt
                .block_on(fetcher.resolve(r, p))
                .with_context(|| format!("resolving {r} for {p}"))?;
            let entry = lock
                .images
                .entry(i2kit::lock::key(r))
                .or_insert_with(|| LockedImage {
                    mirror: None,
                    digest: img.top.digest,
                    platforms: Default::default(),
                });
            entry.platforms.insert(p.to_string(), img.manifest.digest);
        }
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    lock.save(&path)?;
    if a.json {
        print!("{}", String::from_utf8_lossy(&lock.to_bytes()));
    } else {
        eprintln!(
            "wrote {} ({} images, {} platform(s))",
            path.display(),
            lock.images.len(),
            platforms.len()
        );
    }
    Ok(ExitCode::SUCCESS)
}
