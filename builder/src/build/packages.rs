//! Stage 2: the package layer. mmdebstrap installs the packages of the configuration and its
//! features (with their install trees, debconf answers and package hooks) and writes the root
//! as a tarball. It is cached by what shapes it, so a change to a feature's files or hooks
//! does not install anything again.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};

use super::cache::{self, KeyBuilder};
use super::keys::Keyrings;
use super::BuildCtx;
use crate::config::Config;
use crate::lock::{Lock, LockedPackage};
use crate::locked_repo::{self, DebSources, RepoKey};
use crate::packages::{self, PackageSource};
use crate::progress::human_bytes;
use crate::rootfs::{self, HookPaths, RootfsContents};

/// The layout of a package layer's directory; a change to what it holds changes the keys.
const LAYER_LAYOUT: &str = "root.tar, apt-lists/, extracted/ (boot files, dpkg status, copyright)";

/// The package layer: the root tarball and what the later stages read out of it once.
pub struct PackageLayer {
    pub key: String,
    pub dir: PathBuf,
    /// Taken from the cache rather than installed now.
    pub cached: bool,
    pub contents: RootfsContents,
    /// The features' hook files (the customize scripts run in the next stage).
    pub hooks: HookPaths,
    /// The lock it was installed from, for a locked build.
    pub lock: Option<Lock>,
}

impl PackageLayer {
    /// The `.deb` behind every installed package: the lock's, or found in the package lists
    /// the layer was installed from.
    pub fn debs(&self, config: &Config, keyrings: &Keyrings) -> Result<Vec<LockedPackage>> {
        if let Some(lock) = &self.lock {
            return Ok(lock.packages.clone());
        }
        let mut local = Vec::new();
        for dir in [&config.packages.local_debs, &config.jitsi.debs]
            .into_iter()
            .flatten()
        {
            local.extend(packages::local_debs(&config.resolve(dir))?);
        }
        let (debs, _) = crate::lock::resolve_debs(
            &packages::lock_sources(config, keyrings),
            &self.contents.packages,
            &self.dir.join("apt-lists"),
            &local,
        )?;
        Ok(debs)
    }
}

impl PackageLayer {
    pub fn tar(&self) -> PathBuf {
        self.dir.join("root.tar")
    }
}

/// The package layer's cache key: what mmdebstrap installs and with what, without paths.
pub fn layer_key(config: &Config, plan: &packages::RootfsPlan) -> String {
    KeyBuilder::new("package layer")
        .part("layout", LAYER_LAYOUT)
        .part(
            "source date epoch",
            config.image.source_date_epoch.to_string(),
        )
        .part("mmdebstrap", &plan.key_input)
        .finish()
}

/// The host's cache of downloaded `.deb` files for the configuration's suite and architecture.
pub fn deb_cache_dir(config: &Config) -> Result<PathBuf> {
    let dir = config.resolve(&config.packages.cache_dir).join(format!(
        "debs/{}-{}",
        config.debian.suite,
        config.image.arch.debian()
    ));
    std::fs::create_dir_all(&dir)
        .with_context(|| format!("cannot create the package cache {}", dir.display()))?;
    Ok(std::fs::canonicalize(&dir)?)
}

pub fn install(ctx: &mut BuildCtx, keyrings: &Keyrings) -> Result<(PackageLayer, String)> {
    let config = ctx.config;
    let deb_cache = deb_cache_dir(config)?;
    let hooks_dir = ctx.fresh_dir("hooks")?;
    let hooks = rootfs::write_hook_files(config, &ctx.features, &hooks_dir)?;
    let layers = ctx
        .cache_dir
        .join("layers")
        .join(format!("{}-{}", config.image.name, config.image.arch));
    std::fs::create_dir_all(&layers)?;
    let layers = std::fs::canonicalize(&layers)?;
    crate::interrupt::clean_on_stop(&layers);
    // The plan names where the lists go; its key leaves such paths out.
    let partial = layers.join("packages.partial");
    let lock = if ctx.locked() {
        let path = ctx.lock_path();
        let lock = Lock::load(&path)?;
        lock.check_matches(config, &path)?;
        let key = RepoKey::open_or_create(&ctx.cache_dir)?;
        let repo = ctx.work.join("locked-repo");
        let line = locked_repo::source_line(&std::path::absolute(&repo)?, &lock, &key);
        Some((lock, line))
    } else {
        None
    };
    let source = match &lock {
        Some((lock, line)) => PackageSource::Locked {
            line: line.clone(),
            lock_hash: lock.hash()?,
        },
        None => PackageSource::Archive { keyrings },
    };
    let plan = packages::plan(
        config,
        &ctx.features,
        &source,
        &hooks,
        &deb_cache,
        &partial.join("apt-lists"),
    )?;
    let key = layer_key(config, &plan);
    let dir = layers.join(format!("packages-{}", cache::short(&key)));
    if dir.join("root.tar").is_file() && !ctx.opts.refresh {
        cache::touch(&dir);
        let contents = RootfsContents::load(config, &dir.join("extracted"))?;
        let note = format!("from cache (key {})", cache::short(&key));
        let lock = lock.map(|(l, _)| l);
        return Ok((layer(key, dir, true, contents, hooks, lock), note));
    }
    if let Some((lock, _)) = &lock {
        fill_locked_repository(ctx, lock, &deb_cache)?;
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
    let contents = rootfs::extract_boot_files(config, &tar, &partial.join("extracted"))?;
    if let Some((lock, _)) = &lock {
        let drift = lock.drift(&contents.packages);
        if !drift.is_empty() {
            bail!(
                "what was installed is not what {} says ({}); the configuration's packages changed since it was made: run `appliance lock`",
                ctx.lock_path().display(),
                drift.join("; ")
            );
        }
    }
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    std::fs::rename(&partial, &dir)
        .with_context(|| format!("storing the package layer in {}", dir.display()))?;
    let contents = RootfsContents::load(config, &dir.join("extracted"))?;
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
    let lock = lock.map(|(l, _)| l);
    Ok((layer(key, dir, false, contents, hooks, lock), note))
}

/// Puts the lock's packages into the build's local repository (`<work>/locked-repo`). Stops
/// before anything is installed if a package is missing or does not match.
fn fill_locked_repository(
    ctx: &mut BuildCtx,
    lock: &Lock,
    deb_cache: &std::path::Path,
) -> Result<()> {
    ctx.progress.message(&format!(
        "collecting the {} locked packages",
        lock.packages.len()
    ));
    let repo = ctx.fresh_dir("locked-repo")?;
    locked_repo::collect(
        lock,
        ctx.config,
        &DebSources {
            cache: deb_cache,
            mirror_dir: ctx.opts.mirror_dir.as_deref(),
            offline: ctx.opts.offline,
        },
        &repo.join("pool"),
    )?;
    let key = RepoKey::open_or_create(&ctx.cache_dir)?;
    locked_repo::write_repo(lock, &repo, &key)
}

fn layer(
    key: String,
    dir: PathBuf,
    cached: bool,
    contents: RootfsContents,
    hooks: HookPaths,
    lock: Option<Lock>,
) -> PackageLayer {
    PackageLayer {
        key,
        dir,
        cached,
        contents,
        hooks,
        lock,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    /// The package layer's key for the project's appliance.toml with `overrides`, its features
    /// taken from `features` (a copy of overlays/ the test may change).
    fn key(features: &Path, overrides: &[&str]) -> String {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let mut o: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
        o.push("jitsi.enabled=false".into());
        o.push(format!("features.dir=\"{}\"", features.display()));
        let config = Config::load(&root.join("appliance.toml"), &o).unwrap();
        let features = crate::features::load(&config).unwrap();
        let work = tempfile::tempdir().unwrap();
        let hooks = rootfs::write_hook_files(&config, &features, work.path()).unwrap();
        let plan = packages::plan(
            &config,
            &features,
            &PackageSource::Archive { keyrings: &[] },
            &hooks,
            Path::new("/cache"),
            Path::new("/lists"),
        )
        .unwrap();
        layer_key(&config, &plan)
    }

    fn copy_of_features() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../overlays");
        let ok = std::process::Command::new("cp")
            .arg("-a")
            .arg(src)
            .arg(d.path().join("overlays"))
            .status()
            .unwrap()
            .success();
        assert!(ok);
        d
    }

    #[test]
    fn packages_reinstall_only_when_what_shapes_them_changes() {
        let d = copy_of_features();
        let features = d.path().join("overlays");
        let base = key(&features, &[]);
        assert_eq!(
            base,
            key(&features, &[]),
            "the same inputs give the same key"
        );
        // A feature's file and its customize hook belong to the system layer.
        std::fs::write(features.join("base/files/etc/motd-extra"), "changed\n").unwrap();
        let hook = features.join("base/customize.sh");
        let text = std::fs::read_to_string(&hook).unwrap();
        std::fs::write(&hook, format!("{text}\ntrue\n")).unwrap();
        assert_eq!(
            base,
            key(&features, &[]),
            "a changed file or hook must not reinstall"
        );
        // The package list, and the initrd's settings (the kernel's install script builds the
        // initrd in this layer), do.
        assert_ne!(base, key(&features, &["packages.include=[\"htop\"]"]));
        let dracut = features.join("boot/install/etc/dracut.conf.d/50-appliance.conf.j2");
        let text = std::fs::read_to_string(&dracut).unwrap();
        std::fs::write(&dracut, format!("{text}add_drivers+=\" usb_storage \"\n")).unwrap();
        assert_ne!(
            base,
            key(&features, &[]),
            "a dracut setting rebuilds the initrd"
        );
        // The build directory is not part of it.
        let moved = tempfile::tempdir().unwrap();
        std::fs::rename(&features, moved.path().join("overlays")).unwrap();
        let again = key(&moved.path().join("overlays"), &[]);
        std::fs::rename(moved.path().join("overlays"), &features).unwrap();
        assert_eq!(
            again,
            key(&features, &[]),
            "moving the features keeps the key"
        );
    }
}
