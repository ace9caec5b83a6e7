//! The build pipeline. Each stage is a module of its own with one entry function; this one
//! reads as the table of contents (docs/architecture.md, "Stages"):
//!
//! 1. [`keys`]: the repositories' signing keys, checked against their pinned fingerprints;
//! 2. [`packages`]: the package layer, the installed packages as a tarball (cached);
//! 3. [`system`]: the system layer, the features' files and hooks on top of it;
//! 4. [`squashfs`]: the read-only root, packed from the system layer (cached);
//! 5. [`verity`]: its dm-verity hash tree and the root hash;
//! 6. [`boot`]: kernel, initrd and boot loaders on the ESP;
//! 7. [`disk`]: the partition table and every partition's content in one disk image;
//! 8. [`outputs`]: compressed and converted copies, block map, manifest, checksums.

mod boot;
mod cache;
mod context;
mod disk;
mod keys;
mod lockfile;
mod outputs;
mod packages;
mod root_tree;
mod squashfs;
mod system;
mod verity;

use std::path::PathBuf;

use anyhow::Result;
use serde::{Deserialize, Serialize};

pub use cache::tree_hash;
pub use context::{BuildCtx, Identifiers};
pub use lockfile::{export_mirror, lock};

use crate::config::Config;
use crate::outputs::OutputFile;
use crate::progress::StageTiming;

/// The zstd level of `<name>.raw.zst` unless one is given. The raw image is mostly the
/// squashfs, already compressed, and zeros: level 3 makes a file 0.2 % larger than level 6 in
/// half the time (docs/benchmarks.md).
pub const DEFAULT_RAW_ZSTD_LEVEL: i32 = 3;

pub struct BuildOptions {
    pub out_dir: PathBuf,
    pub build_dir: PathBuf,
    /// Rebuild the root file system even when a cached one matches the configuration.
    pub refresh: bool,
    /// Print nothing but the final JSON summary.
    pub json: bool,
    /// zstd level for `raw.zst`.
    pub zstd_level: i32,
    /// Install exactly what `appliance.lock` says (from a local repository of its packages).
    pub locked: bool,
    /// Use no network: every package from the cache or `mirror_dir` (implies `locked`).
    pub offline: bool,
    /// A mirror made by `appliance mirror export`.
    pub mirror_dir: Option<PathBuf>,
}

impl BuildOptions {
    /// The options of a plain build into `out_dir`, with `build_dir` for intermediate files.
    pub fn new(out_dir: impl Into<PathBuf>, build_dir: impl Into<PathBuf>) -> BuildOptions {
        BuildOptions {
            out_dir: out_dir.into(),
            build_dir: build_dir.into(),
            refresh: false,
            json: false,
            zstd_level: DEFAULT_RAW_ZSTD_LEVEL,
            locked: false,
            offline: false,
            mirror_dir: None,
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub struct BuildSummary {
    pub image: PathBuf,
    pub outputs: Vec<OutputFile>,
    pub root_hash: Option<String>,
    /// The cache key of each layer and whether it came from the cache.
    pub layers: Vec<LayerSummary>,
    pub timings: Vec<StageTiming>,
    pub total_seconds: f64,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct LayerSummary {
    pub layer: String,
    pub key: String,
    pub cached: bool,
}

/// Builds the image `config` describes into `opts.out_dir`.
pub fn build(config: &Config, opts: &BuildOptions) -> Result<BuildSummary> {
    let mut ctx = BuildCtx::new(config, opts, 8)?;
    let result = run_stages(&mut ctx);
    if result.is_err() {
        ctx.progress.abort();
    }
    result
}

fn run_stages(ctx: &mut BuildCtx) -> Result<BuildSummary> {
    // The in-image program compiles beside the first stages; the system layer takes it.
    let admin = crate::admin_program::start(
        ctx.config.image.arch,
        &crate::admin_program::target_dir(&ctx.cache_dir),
        ctx.opts.offline,
    );
    let keyrings = ctx.stage("keys", keys::verify)?;
    let packages = ctx.stage("packages", |c| packages::install(c, &keyrings))?;
    let system = ctx.stage("system", |c| system::assemble(c, &packages, admin))?;
    let squashfs = ctx.stage("squashfs", |c| squashfs::make(c, &system))?;
    let verity = ctx.stage("verity", |c| verity::compute(c, &squashfs))?;
    let boot = ctx.stage("boot", |c| boot::prepare(c, &packages, &verity))?;
    let image_key = outputs::image_key(ctx, &packages, &system)?;
    let disk = ctx.stage("disk", |c| {
        disk::write(c, &image_key, &squashfs, &verity, &boot)
    })?;
    let parts = outputs::Parts {
        keyrings: &keyrings,
        packages: &packages,
        squashfs: &squashfs,
        verity: &verity,
        boot: &boot,
    };
    let outputs = ctx.stage("outputs", |c| outputs::write(c, disk, &parts, &image_key))?;
    Ok(BuildSummary {
        image: outputs.image,
        outputs: outputs.files,
        root_hash: verity.root_hash(),
        layers: vec![
            LayerSummary {
                layer: "packages".into(),
                key: packages.key.clone(),
                cached: packages.cached,
            },
            LayerSummary {
                layer: "system".into(),
                key: system.key.clone(),
                cached: system.tree.is_none(),
            },
        ],
        total_seconds: ctx.progress.total_seconds(),
        timings: ctx.progress.timings.clone(),
    })
}
