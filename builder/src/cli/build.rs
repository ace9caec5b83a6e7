//! `appliance build`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, ValueEnum};

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
    /// zstd compression level for <name>.raw.zst (1-19; default 3, or 1 with --profile dev).
    #[arg(long, value_parser = clap::value_parser!(i32).range(1..=19))]
    zstd_level: Option<i32>,
    /// `release` builds the configuration as written. `dev` trades size for speed while you
    /// iterate: the root squashfs and <name>.raw.zst use zstd level 1 (the image behaves the
    /// same, is larger, and its root hash differs from a release build's).
    #[arg(long, value_enum, default_value_t = Profile::Release)]
    profile: Profile,
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

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Profile {
    Release,
    Dev,
}

/// The settings `--profile dev` adds to the configuration (later `--set`s still win).
const DEV_SETTINGS: [&str; 2] = ["root.compression=\"zstd\"", "root.compression_level=1"];

pub fn run(args: BuildArgs) -> anyhow::Result<ExitCode> {
    let mut config = args.config.clone();
    if args.profile == Profile::Dev {
        let sets = std::mem::take(&mut config.overrides);
        config.overrides = DEV_SETTINGS.iter().map(|s| s.to_string()).collect();
        config.overrides.extend(sets);
    }
    let c = config.load()?;
    let zstd_level = args.zstd_level.unwrap_or(match args.profile {
        Profile::Release => build::DEFAULT_RAW_ZSTD_LEVEL,
        Profile::Dev => 1,
    });
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
            zstd_level,
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
