//! Argument parsing and output; one file per subcommand.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod airgap;
mod build;
mod fetch;
mod image;
mod key;
mod lock;
mod mirror;
mod progress;
mod pull;
mod push;
mod run;
mod store;
mod verify;

/// i2kit: turn a Kubernetes Deployment into a bootable, reproducible VM image.
///
/// Images come from OCI registries (or `oci:DIR[:TAG]` layouts) into a
/// content-addressed store; builds are hermetic and reproducible.
#[derive(Parser)]
#[command(name = "i2kit", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    /// The content-addressed store (an OCI image layout).
    /// Default: $I2KIT_STORE, else $XDG_CACHE_HOME/i2kit/store, else ~/.cache/i2kit/store.
    #[arg(long, global = true, value_name = "DIR")]
    store: Option<PathBuf>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build a manifest into a bootable image: NAME.raw (UEFI disk), NAME.efi, kernel+initrd.
    Build(build::Args),
    /// Fetch everything a build of MANIFEST needs (kernel, init, stub, containers) into the store,
    /// so that `build --offline` works without a network.
    Fetch(fetch::Args),
    /// Write what builds need (manifests' inputs, or references) as one OCI image-layout tar,
    /// for a build farm without network access.
    Export(airgap::ExportArgs),
    /// Load an OCI image-layout tar (from `i2kit export`) into the store, verifying every blob.
    Import(airgap::ImportArgs),
    /// Pull images into the store and print the digest each reference resolved to.
    Pull(pull::Args),
    /// Pin every image of a manifest (kernel, init, stub, containers) in i2kit.lock.
    Lock(lock::Args),
    /// Ship an image: `push aws` uploads it through the EBS direct APIs and registers an AMI.
    #[command(subcommand)]
    Push(push::Command),
    /// Copy every locked image of MANIFEST byte for byte into a private registry and point
    /// i2kit.lock at it (digests, and so builds, stay the same).
    Mirror(mirror::Args),
    /// Rebuild a build from its recorded plan and compare every output bit for bit.
    Verify(verify::Args),
    /// Boot a raw image locally in QEMU (UEFI; serial console on this terminal).
    Run(run::Args),
    /// Inspect and maintain the store.
    #[command(subcommand)]
    Store(store::Command),
    /// Signing keys for remote cache entries.
    #[command(subcommand)]
    Key(key::Command),
    /// Make images: pack a directory as a deterministic OCI image.
    #[command(subcommand)]
    Image(image::Command),
}

/// Registry options shared by every command that talks to registries.
#[derive(clap::Args, Clone, Debug)]
pub struct NetArgs {
    /// Talk plain HTTP to this registry (HOST[:PORT]); repeatable.
    /// Loopback registries (localhost, 127.0.0.0/8, [::1]) always use HTTP.
    #[arg(long = "insecure-registry", value_name = "HOST[:PORT]")]
    insecure: Vec<String>,
    /// Concurrent blob downloads.
    #[arg(long, short = 'j', default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=256))]
    jobs: u16,
    /// Never use the network: everything must already be in the store.
    #[arg(long)]
    offline: bool,
}

impl NetArgs {
    fn fetch_options(&self) -> i2kit::fetch::FetchOptions {
        i2kit::fetch::FetchOptions {
            jobs: self.jobs as usize,
            registry: i2kit::registry::RegistryOptions {
                insecure: self.insecure.clone(),
            },
            offline: self.offline,
            mirrors: Default::default(),
        }
    }
}

impl Cli {
    fn open_store(&self) -> anyhow::Result<i2kit::store::Store> {
        use anyhow::Context;
        let root = match &self.store {
            Some(p) => p.clone(),
            None => i2kit::store::Store::default_root()?,
        };
        i2kit::store::Store::open(&root)
            .with_context(|| format!("opening the store at {}", root.display()))
    }
}

/// What a manifest's builds need, for `fetch` and `export`.
struct ManifestInputs {
    lock_path: PathBuf,
    lock: Option<i2kit::lock::LockFile>,
    /// Every image reference of the manifest (kernel, init, stub, containers).
    refs: Vec<i2kit::reference::ImageRef>,
    platforms: Vec<i2kit::oci::Platform>,
    /// Each reference on each platform, pinned through i2kit.lock where it has an entry.
    want: Vec<(i2kit::reference::ImageRef, i2kit::oci::Platform)>,
}

/// Load `manifest` and its lock; `platforms` empty means the manifest's own.
/// The lock's mirrors are added to `fetch`.
fn manifest_inputs(
    manifest: &std::path::Path,
    platforms: &[i2kit::oci::Platform],
    fetch: &mut i2kit::fetch::FetchOptions,
) -> anyhow::Result<ManifestInputs> {
    let pod = i2kit::manifest::load_manifest(manifest)?;
    let platforms = if platforms.is_empty() {
        vec![pod.settings.platform.clone()]
    } else {
        platforms.to_vec()
    };
    let lock_path = i2kit::lock::lock_path(manifest);
    let lock = i2kit::lock::LockFile::load(&lock_path)?;
    if let Some(l) = &lock {
        fetch.mirrors.extend(l.mirrors());
    }
    let refs: Vec<_> = pod.image_refs().into_iter().map(|(_, r)| r).collect();
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
    Ok(ManifestInputs {
        lock_path,
        lock,
        refs,
        platforms,
        want,
    })
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

/// Run the CLI; errors are printed once, with their causes.
pub fn main() -> ExitCode {
    i2kit::init_tls();
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Build(a) => build::run(&cli, a),
        Command::Pull(a) => pull::run(&cli, a),
        Command::Fetch(a) => fetch::run(&cli, a),
        Command::Export(a) => airgap::export(&cli, a),
        Command::Import(a) => airgap::import(&cli, a),
        Command::Lock(a) => lock::run(&cli, a),
        Command::Store(c) => store::run(&cli, c),
        Command::Image(c) => image::run(c),
        Command::Key(c) => key::run(c),
        Command::Run(a) => run::run(a),
        Command::Verify(a) => verify::run(&cli, a),
        Command::Mirror(a) => mirror::run(&cli, a),
        Command::Push(c) => push::run(&cli, c),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            for cause in e.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::FAILURE
        }
    }
}
