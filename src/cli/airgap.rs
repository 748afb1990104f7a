//! `i2kit export` and `i2kit import`: builds' inputs across an air gap.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use i2kit::fetch::Fetcher;
use i2kit::oci::Platform;
use i2kit::reference::ImageRef;

use super::{Cli, NetArgs};

#[derive(clap::Args)]
pub struct ExportArgs {
    /// Manifests (everything their builds need: kernel, init, stub, containers,
    /// pinned through i2kit.lock when present) and/or image references.
    #[arg(required = true)]
    inputs: Vec<String>,
    /// The archive to write (an uncompressed OCI image-layout tar).
    #[arg(long, short = 'o', value_name = "FILE.tar")]
    output: PathBuf,
    /// Platforms (repeatable). Default: each manifest's; linux/amd64 for bare references.
    #[arg(long)]
    platform: Vec<Platform>,
    #[command(flatten)]
    net: NetArgs,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
pub struct ImportArgs {
    /// An archive from `i2kit export` (or any OCI image-layout tar, e.g. skopeo's oci-archive).
    archive: PathBuf,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    json: bool,
}

fn is_manifest(s: &str) -> bool {
    let p = Path::new(s);
    p.is_file() && matches!(p.extension().and_then(|e| e.to_str()), Some("yml" | "yaml"))
}

pub fn export(cli: &Cli, a: &ExportArgs) -> anyhow::Result<ExitCode> {
    let mut want: Vec<(ImageRef, Platform)> = Vec::new();
    let mut fetch = a.net.fetch_options();
    for input in &a.inputs {
        if is_manifest(input) {
            let m = super::manifest_inputs(Path::new(input), &a.platform, &mut fetch)?;
            want.extend(m.want);
        } else {
            let r: ImageRef = input.parse().with_context(|| {
                format!("{input:?} is neither a manifest file nor an image reference")
            })?;
            let platforms = if a.platform.is_empty() {
                vec!["linux/amd64".parse().map_err(anyhow::Error::msg)?]
            } else {
                a.platform.clone()
            };
            for p in platforms {
                want.push((r.clone(), p));
            }
        }
    }
    let store = cli.open_store()?;
    let (events, bar) = super::progress::sink(a.json);
    let fetcher = Fetcher::new(store.clone(), fetch, events, want.iter().map(|(r, _)| r));
    let resolved = super::runtime()?.block_on(fetcher.pull(&want))?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    let entries = i2kit::airgap::entries(&resolved);
    let dir = a
        .output
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tmp = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("creating a file in {}", dir.display()))?;
    let report = i2kit::airgap::export(&store, &entries, std::io::BufWriter::new(tmp.as_file()))?;
    tmp.persist(&a.output)
        .with_context(|| format!("writing {}", a.output.display()))?;
    print_report(a.json, &report, &report.images)?;
    if !a.json {
        eprintln!(
            "wrote {} ({} images, {} blobs, {} bytes)",
            a.output.display(),
            report.images.len(),
            report.blobs,
            report.bytes
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub fn import(cli: &Cli, a: &ImportArgs) -> anyhow::Result<ExitCode> {
    let store = cli.open_store()?;
    let f = std::fs::File::open(&a.archive)
        .with_context(|| format!("opening {}", a.archive.display()))?;
    let report = i2kit::airgap::import(&store, std::io::BufReader::new(f))
        .with_context(|| format!("importing {}", a.archive.display()))?;
    print_report(a.json, &report, &report.images)?;
    if !a.json {
        eprintln!(
            "imported {} images: {} blobs verified and written, {} already present",
            report.images.len(),
            report.imported,
            report.present
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// The report as JSON, or the image names one per line.
fn print_report(
    json: bool,
    report: &impl serde::Serialize,
    images: &[String],
) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(report)?);
    } else {
        for n in images {
            println!("{n}");
        }
    }
    Ok(())
}
