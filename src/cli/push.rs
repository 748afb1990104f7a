//! `i2kit push aws IMAGE.raw|MANIFEST`

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use i2kit::aws::client::{Client, Endpoints, Retry};
use i2kit::aws::credentials::{self, Env};
use i2kit::aws::push::{Progress, PushOptions, push};
use i2kit::digest::Digest;

use super::{Cli, NetArgs};

#[derive(clap::Subcommand)]
pub enum Command {
    /// Upload a raw image as an EBS snapshot (EBS direct APIs: no S3 bucket, no
    /// vmimport role) and register a UEFI AMI. Prints the AMI id.
    ///
    /// Idempotent: an AMI of this account tagged with the image's sha256
    /// (i2kit:image-sha256) is printed and nothing is uploaded. Credentials:
    /// AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY[/AWS_SESSION_TOKEN], else
    /// AWS_PROFILE (or default) in ~/.aws/credentials and ~/.aws/config, else
    /// the EC2 instance role (IMDSv2).
    Aws(AwsArgs),
}

#[derive(clap::Args)]
pub struct AwsArgs {
    /// NAME.raw from i2kit build, or a manifest (built first, reusing the build cache).
    image: PathBuf,
    /// Region (default: AWS_REGION, AWS_DEFAULT_REGION, then the profile's region).
    #[arg(long)]
    region: Option<String>,
    /// Profile of ~/.aws/credentials and ~/.aws/config (default: AWS_PROFILE, then default).
    #[arg(long)]
    profile: Option<String>,
    /// One endpoint for EBS and EC2 (a test server, a proxy).
    #[arg(long, env = "AWS_ENDPOINT_URL", value_name = "URL")]
    endpoint_url: Option<String>,
    /// AMI name (default: NAME-<first 12 hex of the build key, else of the image digest>).
    #[arg(long)]
    name: Option<String>,
    /// AMI and snapshot description.
    #[arg(long)]
    description: Option<String>,
    /// Snapshot size in GiB (default: the image size rounded up).
    #[arg(long, value_name = "GIB")]
    volume_size: Option<u64>,
    /// Root volume (gp3) size in GiB (default: the snapshot's).
    #[arg(long, value_name = "GIB")]
    root_volume_size: Option<u64>,
    /// uefi, or uefi-preferred (x86_64 only).
    #[arg(long, default_value = "uefi", value_parser = ["uefi", "uefi-preferred"])]
    boot_mode: String,
    /// Enable NitroTPM (TpmSupport v2.0).
    #[arg(long)]
    tpm: bool,
    /// Encrypt the snapshot with this KMS key (ARN or id); every block is written.
    #[arg(long, value_name = "ARN")]
    kms_key: Option<String>,
    /// Concurrent block uploads.
    #[arg(long, short = 'j', default_value_t = 64, value_parser = clap::value_parser!(u16).range(1..=1024))]
    jobs: u16,
    /// Extra tag KEY=VALUE on the AMI and snapshot (repeatable).
    #[arg(long = "tag", value_name = "KEY=VALUE")]
    tags: Vec<String>,
    /// Keep the snapshot when the upload fails (default: delete it).
    #[arg(long)]
    keep_on_failure: bool,
    /// Attempts per request (throttling, 5xx and connection errors are retried).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=100))]
    max_attempts: u32,
    /// Seconds before one request is abandoned (and retried).
    #[arg(long, default_value_t = 60)]
    request_timeout: u64,
    /// Seconds to wait for the snapshot to complete.
    #[arg(long, default_value_t = 3600)]
    wait_timeout: u64,
    /// Output directory when IMAGE is a manifest.
    #[arg(long, short = 'o', default_value = "out")]
    output: PathBuf,
    /// Talk plain HTTP to this registry when IMAGE is a manifest (repeatable).
    #[arg(long = "insecure-registry", value_name = "HOST[:PORT]")]
    insecure: Vec<String>,
    /// Build from the store only when IMAGE is a manifest.
    #[arg(long)]
    offline: bool,
    /// Print the full record as JSON on stdout.
    #[arg(long)]
    json: bool,
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigint(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

fn is_manifest(p: &Path) -> bool {
    matches!(
        p.extension().and_then(|e| e.to_str()),
        Some("yml" | "yaml" | "json")
    )
}

pub fn run(cli: &Cli, cmd: &Command) -> anyhow::Result<ExitCode> {
    let Command::Aws(a) = cmd;
    let (image, built_key) = if is_manifest(&a.image) {
        let report = super::build::build_for_push(
            cli,
            &a.image,
            &a.output,
            NetArgs {
                insecure: a.insecure.clone(),
                jobs: 8,
                offline: a.offline,
            },
        )?;
        let raw = report
            .outputs
            .iter()
            .find(|o| o.name.ends_with(".raw"))
            .context("the build wrote no .raw image")?;
        (raw.path.clone(), Some(report.build_key.hex()))
    } else {
        (a.image.clone(), None)
    };
    let meta = std::fs::metadata(&image).with_context(|| format!("{}", image.display()))?;
    anyhow::ensure!(meta.is_file(), "{} is not a file", image.display());
    let file =
        std::fs::File::open(&image).with_context(|| format!("opening {}", image.display()))?;
    let mut hasher = i2kit::digest::HashingWriter::new(std::io::sink());
    i2kit::digest::copy_large(&mut &file, &mut hasher)
        .with_context(|| format!("reading {}", image.display()))?;
    let (_, digest, _) = hasher.finish();
    // Platform and build key from NAME.provenance.json, when it describes this file.
    let prov = provenance(&image, &digest);
    let arch = match prov.as_ref().and_then(|p| p.0.clone()).as_deref() {
        Some("linux/arm64") => "arm64",
        Some("linux/amd64") | None => "x86_64",
        Some(other) => anyhow::bail!("{other} images cannot become AMIs (x86_64 and arm64 can)"),
    };
    if arch == "arm64" && a.boot_mode != "uefi" {
        anyhow::bail!("arm64 AMIs boot with --boot-mode uefi only");
    }
    let build_key = built_key.or_else(|| prov.and_then(|p| p.1));
    let stem = image
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("i2kit")
        .to_string();
    let name = a.name.clone().unwrap_or_else(|| {
        let id = build_key.clone().unwrap_or_else(|| digest.hex());
        format!("{stem}-{}", &id[..12])
    });
    let mut tags = Vec::new();
    for t in &a.tags {
        let (k, v) = t
            .split_once('=')
            .with_context(|| format!("--tag {t:?} is not KEY=VALUE"))?;
        tags.push((k.to_string(), v.to_string()));
    }
    let env = Env::from_process();
    let creds = credentials::resolve(&env, a.profile.as_deref())?;
    let source = creds.source.clone();
    let region = credentials::region(&env, a.region.as_deref(), a.profile.as_deref())?;
    let endpoints = Endpoints::new(&region, a.endpoint_url.as_deref());
    let mut client = Client::new(
        creds,
        &region,
        endpoints,
        Duration::from_secs(a.request_timeout),
    );
    client.retry = Retry {
        max_attempts: a.max_attempts,
        ..Retry::default()
    };
    let opts = PushOptions {
        image: image.clone(),
        digest,
        name,
        description: a
            .description
            .clone()
            .unwrap_or_else(|| format!("{stem} built by i2kit (image sha256 {})", digest.hex())),
        architecture: arch.into(),
        boot_mode: a.boot_mode.clone(),
        volume_size_gib: a.volume_size,
        root_volume_gib: a.root_volume_size,
        tpm: a.tpm,
        kms_key: a.kms_key.clone(),
        jobs: a.jobs.into(),
        tags,
        keep_on_failure: a.keep_on_failure,
        build_key,
        wait: Duration::from_secs(a.wait_timeout),
    };
    // SAFETY: the handler only stores to an atomic.
    unsafe { libc::signal(libc::SIGINT, on_sigint as *const () as libc::sighandler_t) };
    let progress = Progress::default();
    let done = AtomicBool::new(false);
    let show = !a.json && std::io::stderr().is_terminal();
    if !a.json {
        eprintln!(
            "i2kit push aws: {} ({} bytes, sha256 {}) to {region}, access key {} ({})",
            image.display(),
            meta.len(),
            digest.hex(),
            client.key_id(),
            source
        );
    }
    let result = std::thread::scope(|s| {
        if show {
            s.spawn(|| bar(&progress, &done));
        }
        let r = push(&client, &opts, &progress, &INTERRUPTED);
        done.store(true, Ordering::SeqCst);
        r
    });
    let report = match result {
        Ok(r) => r,
        Err(e) if INTERRUPTED.load(Ordering::SeqCst) => {
            eprintln!("i2kit push aws: interrupted: {e}");
            return Ok(ExitCode::from(130));
        }
        Err(e) => return Err(e.into()),
    };
    if report.existing {
        eprintln!(
            "an AMI for this image (i2kit:image-sha256 {}) already exists: nothing uploaded",
            report.image_sha256
        );
    } else {
        let mib = report.bytes_written as f64 / (1u64 << 20) as f64;
        eprintln!(
            "snapshot {}: {} of {} blocks written ({mib:.1} MiB in {:.1} s, {:.1} MiB/s); AMI registered",
            report.snapshot_id.as_deref().unwrap_or("?"),
            report.blocks_written,
            report.blocks_total,
            report.upload_seconds,
            mib / report.upload_seconds.max(1e-9),
        );
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("{}", report.image_id);
    }
    Ok(ExitCode::SUCCESS)
}

/// (platform, build key) from NAME.provenance.json if its record of NAME.raw
/// is this very file.
fn provenance(image: &Path, digest: &Digest) -> Option<(Option<String>, Option<String>)> {
    let stem = image.file_stem()?.to_str()?;
    let name = image.file_name()?.to_str()?;
    let p = image.with_file_name(format!("{stem}.provenance.json"));
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(p).ok()?).ok()?;
    if v["outputs"][name]["digest"].as_str() != Some(&digest.to_string()) {
        eprintln!(
            "warning: {name} differs from what its provenance records; pushing it without a build key"
        );
        return None;
    }
    Some((
        v["platform"].as_str().map(String::from),
        v["buildKey"]
            .as_str()
            .map(|k| k.trim_start_matches("sha256:").to_string()),
    ))
}

fn bar(p: &Progress, done: &AtomicBool) {
    let pb = indicatif::ProgressBar::new(0);
    pb.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} blocks  {msg}  {elapsed}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let start = std::time::Instant::now();
    while !done.load(Ordering::SeqCst) {
        pb.set_length(p.blocks.load(Ordering::Relaxed));
        pb.set_position(p.done.load(Ordering::Relaxed));
        let w = p.written.load(Ordering::Relaxed) as f64 / (1u64 << 20) as f64;
        pb.set_message(format!(
            "{w:.0} MiB written, {:.0} MiB/s",
            w / start.elapsed().as_secs_f64().max(1e-3)
        ));
        std::thread::sleep(Duration::from_millis(200));
    }
    pb.finish_and_clear();
}
