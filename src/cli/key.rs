//! `i2kit key generate PREFIX`: an ed25519 key pair for signing cache entries.

use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Write PREFIX.key (private, mode 0600) and PREFIX.pub; never overwrites.
    /// Sign with `build --cache-to … --sign-key PREFIX.key`, trust with
    /// `build --cache-from … --trust-key PREFIX.pub`.
    Generate {
        /// Path prefix of the two files.
        prefix: PathBuf,
    },
}

pub fn run(c: &Command) -> anyhow::Result<ExitCode> {
    let Command::Generate { prefix } = c;
    let mut seed = [0u8; 32];
    rand::fill(&mut seed);
    let vk = i2kit::signing::generate(prefix, seed)?;
    println!("{}", i2kit::signing::key_id(&vk));
    eprintln!(
        "wrote {} (keep it secret) and {}",
        prefix.with_extension("key").display(),
        prefix.with_extension("pub").display()
    );
    Ok(ExitCode::SUCCESS)
}
