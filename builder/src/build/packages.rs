//! Stage 2: the root file system as a tarball. mmdebstrap installs the packages, lays in every
//! feature's files and the in-image program, and runs the features' customize hooks. The
//! tarball is cached by a hash of all of that.

use std::path::PathBuf;

use anyhow::Result;

use super::cache;
use super::keys::Keyrings;
use super::BuildCtx;
use crate::progress::human_bytes;
use crate::{admin_program, packages, rootfs};

/// The root file system, as a tarball mmdebstrap wrote.
pub struct RootTarball {
    pub tar: PathBuf,
    /// Taken from the cache rather than installed now.
    pub cached: bool,
}

pub fn install(ctx: &mut BuildCtx, keyrings: &Keyrings) -> Result<(RootTarball, String)> {
    let config = ctx.config;
    let deb_cache = ctx.cache_dir.join(format!(
        "debs/{}-{}",
        config.debian.suite,
        config.image.arch.debian()
    ));
    std::fs::create_dir_all(&deb_cache)?;
    let deb_cache = std::fs::canonicalize(&deb_cache)?;
    let hooks_dir = ctx.fresh_dir("hooks")?;
    let overlay_dir = ctx.fresh_dir("overlay")?;
    rootfs::render_feature_files(config, &ctx.features, &overlay_dir)?;
    ctx.progress
        .message("compiling the in-image program appliance-admin");
    let progress = &ctx.progress;
    admin_program::install(
        config.image.arch,
        &overlay_dir,
        &ctx.cache_dir.join("cargo-target"),
        |line| progress.message(line),
    )?;
    let hooks = rootfs::write_hook_files(config, &ctx.features, &hooks_dir)?;
    let plan = packages::plan(
        config,
        &ctx.features,
        keyrings,
        &hooks,
        &overlay_dir,
        &deb_cache,
    )?;
    let key =
        cache::rootfs_cache_key(config, &plan.fingerprint_input, &[&overlay_dir, &hooks_dir])?;
    let rootfs_cache = ctx.cache_dir.join("rootfs");
    std::fs::create_dir_all(&rootfs_cache)?;
    let cache_name = format!("{}-{}", config.image.name, config.image.arch);
    let tar = rootfs_cache.join(format!("{cache_name}-{}.tar", &key[..16]));
    if tar.exists() && !ctx.opts.refresh {
        let note = format!("root file system from cache ({})", tar.display());
        return Ok((RootTarball { tar, cached: true }, note));
    }
    let partial = tar.with_extension("tar.partial");
    let log = ctx.work.join("mmdebstrap.log");
    let _ = std::fs::remove_file(&log);
    let progress = &ctx.progress;
    packages::run_mmdebstrap(&plan, &partial, &log, |line| progress.message(line))?;
    // Older root tarballs of this appliance are of no further use.
    cache::remove_stale_tarballs(&rootfs_cache, &cache_name)?;
    std::fs::rename(&partial, &tar)?;
    let n = std::fs::read_dir(&deb_cache)
        .map(|d| d.count())
        .unwrap_or(0);
    let note = format!(
        "{} root tarball; {n} packages in the host cache",
        human_bytes(std::fs::metadata(&tar)?.len())
    );
    Ok((RootTarball { tar, cached: false }, note))
}
