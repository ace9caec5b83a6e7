//! `appliance mirror`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};

use super::ConfigArgs;
use crate::build;

/// Make a local package mirror for offline builds.
#[derive(Args)]
pub struct MirrorArgs {
    #[command(subcommand)]
    action: MirrorAction,
}

#[derive(Subcommand)]
enum MirrorAction {
    /// Write every package of appliance.lock into DIR as a signed apt repository.
    ///
    /// Takes the packages from the package cache (downloading what is missing), checks each
    /// against its SHA-256 in the lock, and writes pool/, dists/ (Packages, Release, InRelease)
    /// and the public key repo-key.asc. Carry DIR to a machine without network and build
    /// there with `appliance build --offline --mirror-dir DIR`.
    Export {
        /// The directory to write (created; an existing mirror there is replaced).
        dir: PathBuf,
        #[command(flatten)]
        config: ConfigArgs,
    },
}

pub fn run(args: MirrorArgs) -> anyhow::Result<ExitCode> {
    match args.action {
        MirrorAction::Export { dir, config } => {
            let config = config.load()?;
            let n = build::export_mirror(&config, &dir)?;
            eprintln!("wrote a mirror of {n} packages to {}", dir.display());
            Ok(ExitCode::SUCCESS)
        }
    }
}
