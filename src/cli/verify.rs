//! `i2kit verify OUTPUT_DIR`: rebuild from the recorded plan and compare.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, bail};
use i2kit::build::{BuildOptions, Builder, Plan};
use i2kit::digest::Digest;
use i2kit::lock::{LockFile, LockedImage};
use i2kit::reference::ImageRef;

use super::{Cli, NetArgs};

#[derive(clap::Args)]
pub struct Args {
    /// A build's output directory (with NAME.provenance.json).
    output: PathBuf,
    /// Which build, when the directory holds several.
    #[arg(long)]
    name: Option<String>,
    /// Where to find the plan when the store lacks it: the remote caches the
    /// build was pushed to (REGISTRY/REPO, repeatable).
    #[arg(long = "cache-from", value_name = "REGISTRY/REPO")]
    cache_from: Vec<String>,
    #[command(flatten)]
    net: NetArgs,
    /// Print the comparison as JSON on stdout.
    #[arg(long)]
    json: bool,
}

fn provenance(dir: &Path, name: Option<&str>) -> anyhow::Result<(PathBuf, serde_json::Value)> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                n.ends_with(".provenance.json")
                    && name.is_none_or(|w| n == format!("{w}.provenance.json"))
            })
        })
        .collect();
    found.sort();
    match found.len() {
        0 => bail!(
            "no {}provenance.json in {}",
            name.map(|n| format!("{n}.")).unwrap_or_else(|| "*.".into()),
            dir.display()
        ),
        1 => {
            let p = found.remove(0);
            let v = serde_json::from_slice(&std::fs::read(&p)?)
                .with_context(|| format!("{}", p.display()))?;
            Ok((p, v))
        }
        _ => bail!(
            "{} holds several builds; pick one with --name",
            dir.display()
        ),
    }
}

pub fn run(cli: &Cli, a: &Args) -> anyhow::Result<ExitCode> {
    let (prov_path, prov) = provenance(&a.output, a.name.as_deref())?;
    let key: Digest = prov["buildKey"]
        .as_str()
        .and_then(|k| k.parse().ok())
        .with_context(|| format!("{} has no buildKey", prov_path.display()))?;
    let store = cli.open_store()?;
    let rt = super::runtime()?;
    if !store.has_blob(&key, None) {
        // The plan is the cache entry's config blob.
        for repo in &a.cache_from {
            let repo = super::build::cache_repo(repo)?;
            let reg = i2kit::registry::Registry::new(&a.net.fetch_options().registry, [&repo]);
            let mut tagged = repo.clone();
            tagged.tag = Some(i2kit::remote_cache::tag_for(&key));
            let Ok((bytes, _)) = rt.block_on(reg.fetch_manifest(&tagged)) else {
                continue;
            };
            let m: i2kit::oci::Manifest =
                serde_json::from_slice(&bytes).context("cache manifest")?;
            if m.config.digest == key {
                rt.block_on(reg.fetch_blob(&repo, &m.config, &store, &()))?;
                break;
            }
        }
    }
    if !store.has_blob(&key, None) {
        bail!(
            "the plan of build {key} is neither in the store nor in a --cache-from repository; verify where the build ran, or push it with --cache-to"
        );
    }
    let plan_bytes = store.read_blob(&key)?;
    let plan: Plan = serde_json::from_slice(&plan_bytes)
        .context("the recorded plan does not parse (made by another i2kit version?)")?;
    if plan.to_bytes() != plan_bytes {
        bail!(
            "the recorded plan of {key} does not re-serialise to the same bytes with this i2kit {} (it was made by i2kit {})",
            i2kit::VERSION,
            plan.i2kit
        );
    }
    // Pin every input to the digest the plan records.
    let mut lock = LockFile::new();
    for input in plan.inputs.values() {
        let r: ImageRef = input
            .reference
            .parse()
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        lock.images.insert(
            i2kit::lock::key(&r),
            LockedImage {
                mirror: None,
                digest: input.digest,
                platforms: [(plan.platform.clone(), input.digest)].into(),
            },
        );
    }
    let tmp = tempfile::tempdir().context("a scratch output directory")?;
    let opts = BuildOptions {
        output_dir: tmp.path().to_path_buf(),
        formats: plan.formats.clone(),
        compression: plan.compression,
        epoch: plan.epoch,
        reproducible: plan.clamp_mtimes,
        locked: false,
        platform: Some(plan.platform.parse().map_err(|e| anyhow::anyhow!("{e}"))?),
        fetch: a.net.fetch_options(),
        artifact_cache: false,
    };
    let (events, bar) = super::progress::sink(a.json);
    let builder = Builder::new(store, events, Arc::new(|_| {}));
    let report = rt
        .block_on(builder.build(&plan.pod, Some((prov_path.as_path(), &lock)), &opts))
        .context("rebuilding")?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    if report.build_key != key {
        bail!(
            "the inputs re-derive build key {}, not the recorded {key}",
            report.build_key
        );
    }
    let mut rows = Vec::new();
    let mut ok = true;
    for o in &report.outputs {
        let recorded = if o.name.ends_with(".provenance.json") {
            None
        } else {
            prov["outputs"][&o.name]["digest"]
                .as_str()
                .map(String::from)
        };
        let on_disk = std::fs::read(a.output.join(&o.name))
            .ok()
            .map(|b| Digest::of(&b).to_string());
        let rebuilt = o.digest.to_string();
        let same = on_disk.as_deref() == Some(rebuilt.as_str())
            && recorded.as_deref().is_none_or(|r| r == rebuilt);
        ok &= same;
        rows.push(serde_json::json!({"name": o.name, "rebuilt": rebuilt, "recorded": recorded, "onDisk": on_disk, "reproduced": same}));
    }
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({"buildKey": key.to_string(), "reproduced": ok, "outputs": rows})
            )?
        );
    } else {
        for r in &rows {
            println!(
                "{:<7} {}{}",
                if r["reproduced"] == true {
                    "ok"
                } else {
                    "DIFFERS"
                },
                r["name"].as_str().unwrap_or(""),
                if r["reproduced"] == true {
                    String::new()
                } else {
                    format!(
                        " (rebuilt {}, in {} {})",
                        r["rebuilt"],
                        a.output.display(),
                        r["onDisk"]
                    )
                }
            );
        }
        eprintln!(
            "{}: build {} {}",
            a.output.display(),
            key.hex(),
            if ok {
                "reproduced bit for bit"
            } else {
                "is NOT reproduced"
            }
        );
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
