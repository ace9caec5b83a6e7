//! What every stage works with: the configuration, the options, the work and cache
//! directories, the enabled features, the identifiers derived from the configuration, and the
//! progress display.

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::BuildOptions;
use crate::config::Config;
use crate::features::{self, Feature};
use crate::progress::Progress;
use crate::signing::{self, SigningKey};

pub struct BuildCtx<'a> {
    /// Held for the whole build: one build at a time per work directory.
    _lock: std::fs::File,
    pub config: &'a Config,
    pub opts: &'a BuildOptions,
    /// `<build_dir>/<name>-<arch>`: intermediate files of this image.
    pub work: PathBuf,
    /// `[packages] cache_dir`: downloaded packages, package layers, the local repository's key.
    pub cache_dir: PathBuf,
    pub features: Vec<Feature>,
    pub ids: Identifiers,
    /// Signs `SHA256SUMS` and the update bundle, when the configuration names a key.
    pub signing: Option<SigningKey>,
    pub progress: Progress,
}

/// Takes `<work>/.lock` (flock) for the build. Two builds of one image in one build
/// directory would overwrite each other's files, so the second waits for the first, saying so,
/// and then finds the first one's layers in the cache.
fn lock_work_dir(work: &Path, quiet: bool) -> Result<std::fs::File> {
    let path = work.join(".lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    let flock = |how| {
        // SAFETY: flock on a file descriptor this function owns, open for its whole call.
        let r = unsafe { libc::flock(file.as_raw_fd(), how) };
        if r == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    };
    match flock(libc::LOCK_EX | libc::LOCK_NB) {
        Ok(()) => return Ok(file),
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        Err(e) => return Err(e).with_context(|| format!("cannot lock {}", path.display())),
    }
    if !quiet {
        eprintln!(
            "waiting for another build of this image in {} to finish",
            work.display()
        );
    }
    flock(libc::LOCK_EX).with_context(|| format!("cannot lock {}", path.display()))?;
    Ok(file)
}

impl<'a> BuildCtx<'a> {
    pub fn new(config: &'a Config, opts: &'a BuildOptions, stages: usize) -> Result<BuildCtx<'a>> {
        let work = opts
            .build_dir
            .join(format!("{}-{}", config.image.name, config.image.arch));
        std::fs::create_dir_all(&work)
            .with_context(|| format!("cannot create the build directory {}", work.display()))?;
        let lock = lock_work_dir(&work, opts.json)?;
        // A stopped build leaves no unfinished file behind in the directories it writes.
        crate::interrupt::clean_on_stop(&work);
        crate::interrupt::clean_on_stop(&opts.out_dir);
        let cache_dir = config.resolve(&config.packages.cache_dir);
        std::fs::create_dir_all(&cache_dir).with_context(|| {
            format!("cannot create the cache directory {}", cache_dir.display())
        })?;
        Ok(BuildCtx {
            _lock: lock,
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_second_build_of_one_image_waits_for_the_first() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let first = lock_work_dir(dir.path(), true).expect("the first lock");
        let work = dir.path().to_path_buf();
        let second = std::thread::spawn(move || lock_work_dir(&work, true).map(drop));
        std::thread::sleep(Duration::from_millis(300));
        assert!(
            !second.is_finished(),
            "the second build went on while the first held the lock"
        );
        drop(first);
        second
            .join()
            .expect("the waiting thread")
            .expect("the second lock, once the first is gone");
    }
}
