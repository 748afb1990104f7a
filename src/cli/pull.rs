//! `i2kit pull REF…`

use std::process::ExitCode;

use anyhow::Context;
use i2kit::fetch::Fetcher;
use i2kit::oci::Platform;
use i2kit::reference::ImageRef;

use super::{Cli, NetArgs};

#[derive(clap::Args)]
pub struct Args {
    /// Image references: [REGISTRY[:PORT]/]REPO[:TAG][@sha256:DIGEST], or oci:DIR[:TAG].
    #[arg(required = true, value_name = "REF")]
    refs: Vec<String>,
    /// Target platform: OS/ARCH[/VARIANT], e.g. linux/amd64, linux/arm64.
    #[arg(long, default_value = "linux/amd64")]
    platform: Platform,
    #[command(flatten)]
    net: NetArgs,
    /// Print one JSON object per reference on stdout.
    #[arg(long)]
    json: bool,
}

pub fn run(cli: &Cli, a: &Args) -> anyhow::Result<ExitCode> {
    let refs: Vec<ImageRef> = a
        .refs
        .iter()
        .map(|s| s.parse::<ImageRef>())
        .collect::<Result<_, _>>()?;
    let store = cli.open_store()?;
    let (events, bar) = super::progress::sink(a.json);
    let fetcher = Fetcher::new(store, a.net.fetch_options(), events, &refs);
    let pairs: Vec<(ImageRef, Platform)> = refs
        .iter()
        .map(|r| (r.clone(), a.platform.clone()))
        .collect();
    let resolved = super::runtime()?
        .block_on(fetcher.pull(&pairs))
        .context("pull failed")?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    for img in &resolved {
        if a.json {
            let v = serde_json::json!({
                "reference": img.reference.to_string(),
                "platform": img.platform.to_string(),
                "digest": img.top.digest,
                "manifest": img.manifest.digest,
                "config": img.image.config.digest,
                "layers": img.image.layers.iter().map(|l| &l.digest).collect::<Vec<_>>(),
                "size": img.image.layers.iter().map(|l| l.size).sum::<u64>(),
            });
            println!("{v}");
        } else {
            println!("{} {}", img.reference.without_digest(), img.manifest.digest);
        }
    }
    Ok(ExitCode::SUCCESS)
}
