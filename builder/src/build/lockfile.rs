//! `appliance lock` and `appliance mirror export`: the lock made from a package layer, and the
//! locked packages written out as a mirror for offline builds.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::{keys, packages, BuildCtx, BuildOptions};
use crate::config::Config;
use crate::lock::{self, Lock};
use crate::locked_repo::{self, DebSources, RepoKey};

/// Installs the packages (or takes the package layer from the cache) and writes
/// `appliance.lock` beside the configuration.
pub fn lock(config: &Config, opts: &BuildOptions) -> Result<(PathBuf, Lock)> {
    let mut ctx = BuildCtx::new(config, opts, 2)?;
    let keyrings = ctx.stage("keys", keys::verify)?;
    let layer = ctx.stage("packages", |c| packages::install(c, &keyrings))?;
    let mut local = Vec::new();
    for dir in [&config.packages.local_debs, &config.jitsi.debs]
        .into_iter()
        .flatten()
    {
        local.extend(crate::packages::local_debs(&config.resolve(dir))?);
    }
    let lock = lock::from_layer(
        config,
        &crate::packages::lock_sources(config, &keyrings),
        &layer.contents.packages,
        &layer.dir.join("apt-lists"),
        &local,
    )?;
    let path = ctx.lock_path();
    let partial = path.with_extension("lock.partial");
    std::fs::write(&partial, lock.to_toml()?)
        .with_context(|| format!("cannot write {}", partial.display()))?;
    std::fs::rename(&partial, &path)?;
    Ok((path, lock))
}

/// Writes every locked package into `dir` as a signed apt repository with its public key;
/// returns how many packages it holds.
pub fn export_mirror(config: &Config, dir: &Path) -> Result<usize> {
    let lock_path = config.resolve(&config.packages.lock_file);
    let lock = Lock::load(&lock_path)?;
    lock.check_matches(config, &lock_path)?;
    if dir.exists() {
        std::fs::remove_dir_all(dir.join("pool")).ok();
        std::fs::remove_dir_all(dir.join("dists")).ok();
    }
    let cache = packages::deb_cache_dir(config)?;
    locked_repo::collect(
        &lock,
        config,
        &DebSources {
            cache: &cache,
            mirror_dir: None,
            offline: false,
        },
        &dir.join("pool"),
    )?;
    let key = RepoKey::open_or_create(&config.resolve(&config.packages.cache_dir))?;
    locked_repo::write_repo(&lock, dir, &key)?;
    key.export(dir)?;
    Ok(lock.packages.len())
}
