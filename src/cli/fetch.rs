//! `i2kit fetch MANIFEST`: everything a build of it needs, into the store.

use std::path::PathBuf;
use std::process::ExitCode;

use i2kit::fetch::Fetcher;
use i2kit::lock::{LockFile, lock_path};
use i2kit::oci::Platform;

use super::{Cli, NetArgs};

#[derive(clap::Args)]
pub struct Args {
    /// The Deployment (or compact) manifest.
    manifest: PathBuf,
    /// Platforms to fetch for (repeatable). Default: the manifest's.
    #[arg(long)]
    platform: Vec<Platform>,
    /// Images pinned through i2kit.lock must match it (fails when stale).
    #[arg(long)]
    locked: bool,
    #[command(flatten)]
    net: NetArgs,
    /// One JSON object per image on stdout.
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
    let lock = LockFile::load(&path)?;
    let refs: Vec<_> = pod.image_refs().into_iter().map(|(_, r)| r).collect();
    if a.locked {
        let l = lock
            .as_ref()
            .ok_or_else(|| i2kit::lock::LockError::Missing(path.clone()))?;
        l.check(&path, &refs, &platforms)?;
    }
    // Kernel, init, EFI stub and containers: every format's inputs.
    let mut want = Vec::new();
    for r in &refs {
        for p in &platforms {
            let pinned = lock
                .as_ref()
                .and_then(|l| l.pin(r, p))
                .unwrap_or_else(|| r.clone());
            want.push((pinned, p.clone()));
        }
    }
    let store = cli.open_store()?;
    let (events, bar) = super::progress::sink(a.json);
    let mut fetch = a.net.fetch_options();
    if let Some(l) = &lock {
        fetch.mirrors.extend(l.mirrors());
    }
    let fetcher = Fetcher::new(store, fetch, events, want.iter().map(|(r, _)| r));
    let rt = super::runtime()?;
    let resolved = rt.block_on(fetcher.pull(&want))?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    for ((r, p), img) in want.iter().zip(&resolved) {
        if a.json {
            println!(
                "{}",
                serde_json::json!({"reference": r.to_string(), "platform": p.to_string(), "digest": img.manifest.digest.to_string()})
            );
        } else {
            println!("{r} {p} {}", img.manifest.digest);
        }
    }
    Ok(ExitCode::SUCCESS)
}
