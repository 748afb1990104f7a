//! `i2kit store verify|gc|path`

use std::process::ExitCode;

use super::Cli;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Re-hash every blob; report corrupt and missing ones (exit 1 if any).
    Verify {
        /// Hashing threads.
        #[arg(long, short = 'j', default_value_t = 2)]
        jobs: usize,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove blobs that no index.json entry reaches, and abandoned temporary files.
    Gc {
        /// Only report what would be removed.
        #[arg(long)]
        dry_run: bool,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print the store's location.
    Path,
}

pub fn run(cli: &Cli, c: &Command) -> anyhow::Result<ExitCode> {
    let store = cli.open_store()?;
    match c {
        Command::Verify { jobs, json } => {
            let r = store.verify(*jobs)?;
            if *json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                for c in &r.corrupt {
                    println!(
                        "corrupt {} (content hashes to {}): {}",
                        c.digest,
                        c.actual,
                        c.path.display()
                    );
                }
                for m in &r.missing {
                    println!("missing {m}");
                }
                for s in &r.stray {
                    println!("stray {}", s.display());
                }
                eprintln!(
                    "checked {} blobs ({} bytes): {} corrupt, {} missing",
                    r.checked,
                    r.bytes,
                    r.corrupt.len(),
                    r.missing.len()
                );
            }
            Ok(if r.is_ok() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Gc { dry_run, json } => {
            let r = store.gc(*dry_run)?;
            if *json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                let verb = if *dry_run { "would remove" } else { "removed" };
                for d in &r.removed {
                    println!("{verb} {d}");
                }
                eprintln!(
                    "{verb} {} blobs and {} temporary files ({} bytes); kept {}",
                    r.removed.len(),
                    r.temp_files,
                    r.bytes,
                    r.kept
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Path => {
            println!("{}", store.root().display());
            Ok(ExitCode::SUCCESS)
        }
    }
}
