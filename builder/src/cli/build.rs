//! `appliance build`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use super::ConfigArgs;
use crate::build::{self, BuildOptions};
use crate::config::Arch;
use crate::doctor;

/// Build the disk image described by appliance.toml.
///
/// Stages: verify repository keys, install packages (mmdebstrap; cached), make the squashfs
/// root, compute its dm-verity hash tree, write the ESP and boot loaders, write the GPT disk
/// image, then compress it and write SHA256SUMS and <name>.manifest.json. Outputs appear in
/// the output directory only when all of them are complete.
#[derive(Args)]
pub struct BuildArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// Where the finished image and its companions are written.
    #[arg(long, default_value = "out", value_name = "DIR")]
    out: PathBuf,
    /// Working directory for intermediate files (the package cache is [packages] cache_dir).
    #[arg(long, default_value = "build", value_name = "DIR")]
    build_dir: PathBuf,
    /// Reinstall packages even if a cached root file system matches the configuration
    /// (use it to pick up new Debian security updates).
    #[arg(long)]
    refresh: bool,
    /// zstd compression level for <name>.raw.zst (1-19).
    #[arg(long, default_value_t = 6, value_parser = clap::value_parser!(i32).range(1..=19))]
    zstd_level: i32,
    /// Install exactly the packages appliance.lock names (made by `appliance lock`), or stop
    /// and say which differ.
    #[arg(long)]
    locked: bool,
    /// Use no network: every package from the package cache or --mirror-dir (implies
    /// --locked).
    #[arg(long)]
    offline: bool,
    /// A mirror directory made by `appliance mirror export`, to take the packages from.
    #[arg(long, value_name = "DIR")]
    mirror_dir: Option<PathBuf>,
    /// Print a JSON summary on stdout instead of progress.
    #[arg(long)]
    json: bool,
}

pub fn run(args: BuildArgs) -> anyhow::Result<ExitCode> {
    let c = args.config.load()?;
    crate::interrupt::install()?;
    doctor::require("build")?;
    if c.image.arch == Arch::Arm64 && std::env::consts::ARCH != "aarch64" {
        doctor::require("arm64")?;
    }
    let summary = build::build(
        &c,
        &BuildOptions {
            out_dir: args.out,
            build_dir: args.build_dir,
            refresh: args.refresh,
            json: args.json,
            zstd_level: args.zstd_level,
            locked: args.locked,
            offline: args.offline,
            mirror_dir: args.mirror_dir,
        },
    )?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        let cached: Vec<&str> = summary
            .layers
            .iter()
            .filter(|l| l.cached)
            .map(|l| l.layer.as_str())
            .collect();
        let note = if cached.is_empty() {
            String::new()
        } else {
            format!(" ({} layer from cache)", cached.join(" and "))
        };
        eprintln!(
            "built {} in {:.0} s{note}",
            summary.image.display(),
            summary.total_seconds
        );
    }
    Ok(ExitCode::SUCCESS)
}
