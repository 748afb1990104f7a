//! `i2kit mirror MANIFEST --to REGISTRY[/PREFIX]`

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use i2kit::digest::Digest;
use i2kit::fetch::Fetcher;
use i2kit::lock::{LockFile, lock_path};
use i2kit::reference::{ImageRef, RegistryRef};

use super::{Cli, NetArgs};

#[derive(clap::Args)]
pub struct Args {
    /// The Deployment (or compact) manifest; its i2kit.lock says what to copy.
    manifest: PathBuf,
    /// Destination: REGISTRY[/PREFIX]; each image keeps its repository path
    /// below the prefix, and its tag.
    #[arg(long, value_name = "REGISTRY[/PREFIX]")]
    to: String,
    #[command(flatten)]
    net: NetArgs,
    /// One JSON object per image on stdout.
    #[arg(long)]
    json: bool,
}

pub fn run(cli: &Cli, a: &Args) -> anyhow::Result<ExitCode> {
    let pod = i2kit::manifest::load_manifest(&a.manifest)?;
    let path = lock_path(&a.manifest);
    let mut lock = LockFile::load(&path)?.with_context(|| {
        format!(
            "mirror copies locked images: run `i2kit lock {}` first",
            a.manifest.display()
        )
    })?;
    let (host, prefix) = match a.to.split_once('/') {
        Some((h, p)) => (h.to_string(), p.trim_matches('/').to_string()),
        None => (a.to.clone(), String::new()),
    };
    // Validate the destination with the reference parser.
    format!("{host}/x")
        .parse::<ImageRef>()
        .map_err(|e| anyhow::anyhow!("--to {:?}: {e}", a.to))?;
    let mut seen = std::collections::BTreeSet::new();
    let mut work: Vec<(ImageRef, RegistryRef, Digest)> = Vec::new();
    for (_, r) in pod.image_refs() {
        let key = i2kit::lock::key(&r);
        if !seen.insert(key.clone()) {
            continue;
        }
        let ImageRef::Registry(rr) = &r else {
            bail!(
                "{r} is a local OCI layout; mirror copies registry images (use i2kit export for layouts)"
            );
        };
        let entry = lock
            .images
            .get(&key)
            .with_context(|| format!("{r} is not in {}; run `i2kit lock` again", path.display()))?;
        let repository = if prefix.is_empty() {
            rr.repository.clone()
        } else {
            format!("{prefix}/{}", rr.repository)
        };
        let dest = RegistryRef {
            registry: host.clone(),
            repository,
            tag: rr.tag.clone(),
            digest: None,
        };
        work.push((r.with_digest(entry.digest), dest, entry.digest));
    }
    let store = cli.open_store()?;
    let (events, bar) = super::progress::sink(a.json);
    let mut fetch = a.net.fetch_options();
    fetch.mirrors.extend(lock.mirrors());
    let fetcher = Fetcher::new(store.clone(), fetch, events, work.iter().map(|(r, _, _)| r));
    let dest_reg = i2kit::registry::Registry::new(
        &a.net.fetch_options().registry,
        work.iter().map(|(_, d, _)| d),
    );
    let rt = super::runtime()?;
    let mut holder: BTreeMap<Digest, RegistryRef> = BTreeMap::new();
    for (src, dest, top) in &work {
        let tree = rt.block_on(fetcher.pull_tree(src, *top))?;
        let (mut uploaded, mut mounted, mut present) = (0, 0, 0);
        for b in &tree.blobs {
            if rt.block_on(dest_reg.blob_exists(dest, &b.digest))? {
                present += 1;
            } else if let Some(from) = holder
                .get(&b.digest)
                .filter(|f| f.repository != dest.repository)
                && rt.block_on(dest_reg.mount_blob(dest, from, &b.digest))
            {
                mounted += 1;
            } else {
                rt.block_on(dest_reg.push_blob(dest, &store, b))?;
                uploaded += 1;
            }
            holder.entry(b.digest).or_insert_with(|| dest.clone());
        }
        // Manifests go up as the bytes the source served: digests are kept.
        for c in &tree.children {
            let mut at = dest.clone();
            at.tag = None;
            at.digest = Some(c.digest);
            rt.block_on(dest_reg.push_manifest(&at, &store.read_blob(&c.digest)?, &c.media_type))?;
        }
        let mut at = dest.clone();
        if at.tag.is_none() {
            at.digest = Some(tree.top.digest);
        }
        let pushed = rt.block_on(dest_reg.push_manifest(
            &at,
            &store.read_blob(&tree.top.digest)?,
            &tree.top.media_type,
        ))?;
        if pushed != *top {
            bail!("{src}: pushed manifest {pushed}, expected {top}");
        }
        let mirror = format!("{}/{}", dest.registry, dest.repository);
        if let Some(e) = lock.images.get_mut(&i2kit::lock::key(src)) {
            e.mirror = Some(mirror.clone());
        }
        if a.json {
            println!(
                "{}",
                serde_json::json!({"source": src.to_string(), "mirror": format!("{mirror}@{top}"), "uploaded": uploaded, "mounted": mounted, "present": present})
            );
        } else {
            println!(
                "{} -> {mirror}@{top} ({uploaded} blobs uploaded, {mounted} mounted, {present} present)",
                src.without_digest()
            );
        }
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    lock.save(&path)?;
    eprintln!("{} now fetches every image from {}", path.display(), a.to);
    Ok(ExitCode::SUCCESS)
}
