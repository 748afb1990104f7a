//! `i2kit build MANIFEST`

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use i2kit::build::{BuildEvent, BuildOptions, Builder, Format};
use i2kit::compress::Compression;
use i2kit::lock::{LockFile, lock_path};
use i2kit::oci::Platform;

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
        net,
        json: false,
    };
    execute(cli, &a, false)?.context("the build produced no report")
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
    let builder = Builder::new(store, events, build_events);
    let lock_ref = lock.as_ref().map(|l| (lock_file.as_path(), l));
    let rt = super::runtime()?;
    if a.dry_run {
        let plan = rt.block_on(builder.plan(&pod, lock_ref, &opts))?;
        if let Some(b) = bar {
            b.finish_and_clear();
        }
        let v = serde_json::json!({"buildKey": plan.build_key(), "plan": plan});
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(None);
    }
    let report = rt
        .block_on(builder.build(&pod, lock_ref, &opts))
        .context("build failed")?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    Ok(Some(report))
}
