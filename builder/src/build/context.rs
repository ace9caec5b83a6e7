//! What every stage works with: the configuration, the options, the work and cache
//! directories, the enabled features, the identifiers derived from the configuration, and the
//! progress display.

use std::path::PathBuf;

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::BuildOptions;
use crate::config::Config;
use crate::features::{self, Feature};
use crate::progress::Progress;
use crate::signing::{self, SigningKey};

pub struct BuildCtx<'a> {
    pub config: &'a Config,
    pub opts: &'a BuildOptions,
    /// `<build_dir>/<name>-<arch>`: intermediate files of this image.
    pub work: PathBuf,
    /// `[packages] cache_dir`: downloaded packages, root tarballs, the in-image program's build.
    pub cache_dir: PathBuf,
    pub features: Vec<Feature>,
    pub ids: Identifiers,
    /// Signs `SHA256SUMS` and the update bundle, when the configuration names a key.
    pub signing: Option<SigningKey>,
    pub progress: Progress,
}

impl<'a> BuildCtx<'a> {
    pub fn new(config: &'a Config, opts: &'a BuildOptions, stages: usize) -> Result<BuildCtx<'a>> {
        let work = opts
            .build_dir
            .join(format!("{}-{}", config.image.name, config.image.arch));
        std::fs::create_dir_all(&work)
            .with_context(|| format!("cannot create the build directory {}", work.display()))?;
        // A stopped build leaves no unfinished file behind in the directories it writes.
        crate::interrupt::clean_on_stop(&work);
        crate::interrupt::clean_on_stop(&opts.out_dir);
        let cache_dir = config.resolve(&config.packages.cache_dir);
        std::fs::create_dir_all(&cache_dir).with_context(|| {
            format!("cannot create the cache directory {}", cache_dir.display())
        })?;
        Ok(BuildCtx {
            config,
            opts,
            work,
            cache_dir,
            features: features::load(config)?,
            ids: Identifiers::new(&config.hash),
            signing: signing::configured(config)?,
            progress: Progress::new(opts.json, stages),
        })
    }

    /// Runs one stage: shows its name, runs `f`, and shows the one-line note it returns with
    /// the time it took.
    pub fn stage<T>(
        &mut self,
        name: &str,
        f: impl FnOnce(&mut BuildCtx<'a>) -> Result<(T, String)>,
    ) -> Result<T> {
        self.progress.begin(name);
        let (value, note) = f(self)?;
        self.progress.end(&note);
        Ok(value)
    }

    /// Whether packages come from `appliance.lock` (`--locked`, or `--offline`).
    pub fn locked(&self) -> bool {
        self.opts.locked || self.opts.offline
    }

    /// The lock file beside the configuration.
    pub fn lock_path(&self) -> PathBuf {
        self.config.resolve(&self.config.packages.lock_file)
    }

    /// A directory in the work directory, emptied first.
    pub fn fresh_dir(&self, name: &str) -> Result<PathBuf> {
        let dir = self.work.join(name);
        if dir.exists() {
            std::fs::remove_dir_all(&dir)
                .with_context(|| format!("cannot empty {}", dir.display()))?;
        }
        std::fs::create_dir_all(&dir)?;
        Ok(std::fs::canonicalize(&dir)?)
    }
}

/// Identifiers that must be the same for the same configuration and differ between
/// configurations: disk and partition GUIDs, the verity salt, the ESP's volume id. They are
/// derived from the configuration hash, which leaves secrets out.
pub struct Identifiers {
    seed: String,
}

impl Identifiers {
    pub fn new(config_hash: &str) -> Identifiers {
        Identifiers {
            seed: config_hash.to_string(),
        }
    }

    /// `N` bytes of `sha256("<config hash>:<purpose>")`.
    pub fn bytes<const N: usize>(&self, purpose: &str) -> [u8; N] {
        let digest = Sha256::digest(format!("{}:{purpose}", self.seed).as_bytes());
        let mut out = [0u8; N];
        out.copy_from_slice(&digest[..N]);
        out
    }

    pub fn uuid(&self, purpose: &str) -> Uuid {
        uuid::Builder::from_random_bytes(self.bytes(purpose)).into_uuid()
    }
}
