//! `i2kit image pack DIR --tag oci:LAYOUT:NAME`

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use i2kit::oci::Platform;
use i2kit::pack::PackOptions;
use i2kit::reference::ImageRef;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Turn a directory into a deterministic single-layer image in an OCI layout.
    ///
    /// Every mtime is SOURCE_DATE_EPOCH (0 when unset), owners are 0:0 and modes
    /// are normalised, so the same directory content gives the same digest on any
    /// machine. Push the result with `skopeo copy oci:LAYOUT:NAME docker://…`.
    Pack {
        /// The directory to pack (its content becomes the image root).
        dir: PathBuf,
        /// Where to write: oci:LAYOUT_DIR:NAME.
        #[arg(long)]
        tag: String,
        /// Platform recorded in the image config.
        #[arg(long, default_value = "linux/amd64")]
        platform: Platform,
        /// Image ENTRYPOINT (repeat for each argument).
        #[arg(long, allow_hyphen_values = true)]
        entrypoint: Vec<String>,
        /// Image CMD (repeat for each argument: --cmd /bin/httpd --cmd -f).
        #[arg(long, allow_hyphen_values = true)]
        cmd: Vec<String>,
        /// Image ENV, KEY=VALUE (repeatable).
        #[arg(long)]
        env: Vec<String>,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
}

pub fn run(c: &Command) -> anyhow::Result<ExitCode> {
    match c {
        Command::Pack {
            dir,
            tag,
            platform,
            entrypoint,
            cmd,
            env,
            json,
        } => {
            let ImageRef::Layout(l) = tag.parse::<ImageRef>()? else {
                bail!(
                    "--tag must be an OCI layout, oci:DIR:NAME (push to a registry with skopeo copy)"
                );
            };
            let name = l.tag.clone().context("--tag needs a name: oci:DIR:NAME")?;
            let epoch = match std::env::var("SOURCE_DATE_EPOCH") {
                Ok(s) => s.parse().with_context(|| {
                    format!("SOURCE_DATE_EPOCH={s:?} is not a number of seconds")
                })?,
                Err(_) => 0,
            };
            let opts = PackOptions {
                platform: platform.clone(),
                epoch,
                entrypoint: (!entrypoint.is_empty()).then(|| entrypoint.clone()),
                cmd: (!cmd.is_empty()).then(|| cmd.clone()),
                env: env.clone(),
            };
            let packed = i2kit::pack::pack(dir, &l.path, &name, &opts)
                .with_context(|| format!("packing {}", dir.display()))?;
            if *json {
                println!("{}", serde_json::to_string(&packed)?);
            } else {
                println!("{tag} {}", packed.manifest);
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
