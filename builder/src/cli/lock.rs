//! `appliance lock`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use super::ConfigArgs;
use crate::build::{self, BuildOptions};

/// Resolve the image's package set and write it to appliance.lock (commit that file).
///
/// Installs the packages as a build would (or takes the package layer of an earlier build of
/// the same configuration from the cache; --refresh resolves against the mirror as it is now)
/// and records every installed package with its version, architecture, source package and the
/// SHA-256 of its .deb, the sources and their signing keys. `appliance build --locked` then
/// installs exactly that set.
#[derive(Args)]
pub struct LockArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// Working directory for intermediate files.
    #[arg(long, default_value = "build", value_name = "DIR")]
    build_dir: PathBuf,
    /// Resolve against the mirror as it is now, not an earlier package layer.
    #[arg(long)]
    refresh: bool,
}

pub fn run(args: LockArgs) -> anyhow::Result<ExitCode> {
    let config = args.config.load()?;
    crate::interrupt::install()?;
    crate::doctor::require("build")?;
    let mut opts = BuildOptions::new("out", args.build_dir);
    opts.refresh = args.refresh;
    let (path, lock) = build::lock(&config, &opts)?;
    eprintln!(
        "wrote {}: {} packages from {} sources",
        path.display(),
        lock.packages.len(),
        lock.sources.len()
    );
    Ok(ExitCode::SUCCESS)
}
