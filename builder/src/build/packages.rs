//! Stage 2: the package layer. mmdebstrap installs the packages of the configuration and its
//! features (with their install trees, debconf answers and package hooks) and writes the root
//! as a tarball. It is cached by what shapes it, so a change to a feature's files or hooks
//! does not install anything again.

use std::path::PathBuf;

use anyhow::{Context, Result};

use super::cache::{self, KeyBuilder};
use super::keys::Keyrings;
use super::BuildCtx;
use crate::packages;
use crate::progress::human_bytes;
use crate::rootfs::{self, HookPaths, RootfsContents};

/// The package layer: the root tarball and what the later stages read out of it once.
pub struct PackageLayer {
    pub key: String,
    pub dir: PathBuf,
    /// Taken from the cache rather than installed now.
    pub cached: bool,
    pub contents: RootfsContents,
    /// The features' hook files (the customize scripts run in the next stage).
    pub hooks: HookPaths,
}

impl PackageLayer {
    pub fn tar(&self) -> PathBuf {
        self.dir.join("root.tar")
    }
}

pub fn install(ctx: &mut BuildCtx, keyrings: &Keyrings) -> Result<(PackageLayer, String)> {
    let config = ctx.config;
    let deb_cache = ctx.cache_dir.join(format!(
        "debs/{}-{}",
        config.debian.suite,
        config.image.arch.debian()
    ));
    std::fs::create_dir_all(&deb_cache)?;
    let deb_cache = std::fs::canonicalize(&deb_cache)?;
    let hooks_dir = ctx.fresh_dir("hooks")?;
    let hooks = rootfs::write_hook_files(config, &ctx.features, &hooks_dir)?;
    let layers = ctx
        .cache_dir
        .join("layers")
        .join(format!("{}-{}", config.image.name, config.image.arch));
    std::fs::create_dir_all(&layers)?;
    let layers = std::fs::canonicalize(&layers)?;
    // The plan names where the lists go; its key leaves such paths out.
    let partial = layers.join("packages.partial");
    let plan = packages::plan(
        config,
        &ctx.features,
        keyrings,
        &hooks,
        &deb_cache,
        &partial.join("apt-lists"),
    )?;
    let key = KeyBuilder::new("package layer")
        .part(
            "source date epoch",
            config.image.source_date_epoch.to_string(),
        )
        .part("mmdebstrap", &plan.key_input)
        .finish();
    let dir = layers.join(format!("packages-{}", cache::short(&key)));
    if dir.join("root.tar").is_file() && !ctx.opts.refresh {
        cache::touch(&dir);
        let contents = RootfsContents::load(config, &dir.join("boot"))?;
        let note = format!("from cache (key {})", cache::short(&key));
        return Ok((layer(key, dir, true, contents, hooks), note));
    }
    if partial.exists() {
        std::fs::remove_dir_all(&partial)?;
    }
    std::fs::create_dir_all(partial.join("apt-lists"))?;
    let log = ctx.work.join("mmdebstrap.log");
    let _ = std::fs::remove_file(&log);
    let tar = partial.join("root.tar");
    let progress = &ctx.progress;
    packages::run_mmdebstrap(&plan, &tar, &log, |line| progress.message(line))?;
    ctx.progress
        .message("reading the boot files out of the root");
    let contents = rootfs::extract_boot_files(config, &tar, &partial.join("boot"))?;
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    std::fs::rename(&partial, &dir)
        .with_context(|| format!("storing the package layer in {}", dir.display()))?;
    cache::prune(&layers, "packages-", &dir)?;
    let n = std::fs::read_dir(&deb_cache)
        .map(|d| d.count())
        .unwrap_or(0);
    let note = format!(
        "{} root tarball, {} packages installed ({n} in the host cache); key {}",
        human_bytes(std::fs::metadata(dir.join("root.tar"))?.len()),
        contents.packages.len(),
        cache::short(&key)
    );
    Ok((layer(key, dir, false, contents, hooks), note))
}

fn layer(
    key: String,
    dir: PathBuf,
    cached: bool,
    contents: RootfsContents,
    hooks: HookPaths,
) -> PackageLayer {
    PackageLayer {
        key,
        dir,
        cached,
        contents,
        hooks,
    }
}
