//! `i2kit fetch MANIFEST`: everything a build of it needs, into the store.

use std::path::PathBuf;
use std::process::ExitCode;

use i2kit::fetch::Fetcher;
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
    let mut fetch = a.net.fetch_options();
    let m = super::manifest_inputs(&a.manifest, &a.platform, &mut fetch)?;
    if a.locked {
        let l = m
            .lock
            .as_ref()
            .ok_or_else(|| i2kit::lock::LockError::Missing(m.lock_path.clone()))?;
        l.check(&m.lock_path, &m.refs, &m.platforms)?;
    }
    // Kernel, init, EFI stub and containers: every format's inputs.
    let want = m.want;
    let store = cli.open_store()?;
    let (events, bar) = super::progress::sink(a.json);
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
