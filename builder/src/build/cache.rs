//! The build's caches and their keys. A key is a hash of everything that shapes a cached
//! result, without the build's own paths, so a changed input is never answered from the cache
//! and a moved build directory still finds it.
//!
//! - the package layer: `<cache_dir>/layers/<name>-<arch>/packages-<key>/` (the root tarball,
//!   its boot files, apt's package lists), keyed by what mmdebstrap installs;
//! - the system layer: `<build_dir>/<name>-<arch>/system-<key>.squashfs`, keyed by the package
//!   layer, every feature's files and hooks, the in-image program and the squashfs settings.
//!
//! A few of each are kept, so switching between configurations (or versions of one image)
//! does not start from scratch every time.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};

/// How many entries of each cache are kept per image.
const KEEP: usize = 3;

/// A SHA-256 over labelled parts.
pub struct KeyBuilder(Sha256);

impl KeyBuilder {
    /// Starts a key for `what`; the tool version is always part of it.
    pub fn new(what: &str) -> KeyBuilder {
        let mut h = Sha256::new();
        h.update(format!("{what}\n{}\n", env!("CARGO_PKG_VERSION")).as_bytes());
        KeyBuilder(h)
    }

    pub fn part(mut self, label: &str, value: impl AsRef<[u8]>) -> KeyBuilder {
        self.0.update(label.as_bytes());
        self.0.update(b"=");
        self.0.update(value.as_ref());
        self.0.update(b"\n");
        self
    }

    pub fn finish(self) -> String {
        hex::encode(self.0.finalize())
    }
}

/// SHA-256 of a directory tree: every entry's path, mode, and content or symlink target, in
/// name order.
pub fn tree_hash(dir: &Path) -> Result<String> {
    let mut h = Sha256::new();
    hash_tree(dir, dir, &mut h).with_context(|| format!("hashing {}", dir.display()))?;
    Ok(hex::encode(h.finalize()))
}

fn hash_tree(root: &Path, dir: &Path, h: &mut Sha256) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mut entries: Vec<_> = std::fs::read_dir(dir)?.collect::<std::io::Result<_>>()?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let p = e.path();
        let meta = std::fs::symlink_metadata(&p)?;
        h.update(
            p.strip_prefix(root)
                .unwrap_or(&p)
                .to_string_lossy()
                .as_bytes(),
        );
        h.update(meta.permissions().mode().to_le_bytes());
        if meta.file_type().is_symlink() {
            h.update(std::fs::read_link(&p)?.to_string_lossy().as_bytes());
        } else if meta.is_dir() {
            hash_tree(root, &p, h)?;
        } else {
            h.update(std::fs::read(&p)?);
        }
    }
    Ok(())
}

/// The short form of a key used in file names.
pub fn short(key: &str) -> &str {
    &key[..16.min(key.len())]
}

/// Keeps the [`KEEP`] most recently used entries of `dir` whose names start with `prefix`
/// (`keep` is always kept) and removes the others, as well as leftovers of interrupted runs
/// (`*.partial`).
pub fn prune(dir: &Path, prefix: &str, keep: &Path) -> Result<()> {
    let mut entries: Vec<(std::time::SystemTime, PathBuf)> = Vec::new();
    for e in std::fs::read_dir(dir)?.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.starts_with(prefix) {
            continue;
        }
        let path = e.path();
        if name.ends_with(".partial") {
            remove(&path);
            continue;
        }
        if path == keep {
            continue;
        }
        let used = e
            .metadata()
            .and_then(|m| m.modified())
            .unwrap_or(std::time::UNIX_EPOCH);
        entries.push((used, path));
    }
    entries.sort();
    let excess = entries.len().saturating_sub(KEEP - 1);
    for (_, path) in entries.into_iter().take(excess) {
        remove(&path);
    }
    Ok(())
}

/// Marks a cache entry as just used, so [`prune`] keeps it.
pub fn touch(path: &Path) {
    let now = std::time::SystemTime::now();
    if let Ok(f) = std::fs::File::open(path) {
        let _ = f.set_modified(now);
    }
}

fn remove(path: &Path) {
    let _ = if path.is_dir() {
        std::fs::remove_dir_all(path)
    } else {
        std::fs::remove_file(path)
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_change_with_any_part_and_tree_hashes_see_content_and_modes() {
        let a = KeyBuilder::new("t").part("x", "1").finish();
        assert_eq!(a, KeyBuilder::new("t").part("x", "1").finish());
        assert_ne!(a, KeyBuilder::new("t").part("x", "2").finish());
        assert_ne!(a, KeyBuilder::new("u").part("x", "1").finish());
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("f"), "a").unwrap();
        let h1 = tree_hash(d.path()).unwrap();
        std::fs::write(d.path().join("f"), "b").unwrap();
        let h2 = tree_hash(d.path()).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(d.path().join("f"), std::fs::Permissions::from_mode(0o700))
            .unwrap();
        let h3 = tree_hash(d.path()).unwrap();
        assert!(h1 != h2 && h2 != h3);
    }

    #[test]
    fn prune_keeps_the_newest_and_drops_partials() {
        let d = tempfile::tempdir().unwrap();
        for (i, n) in ["p-1", "p-2", "p-3", "p-4", "p-5.partial", "other"]
            .iter()
            .enumerate()
        {
            let p = d.path().join(n);
            std::fs::write(&p, "x").unwrap();
            let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1000 + i as u64);
            std::fs::File::options()
                .write(true)
                .open(&p)
                .unwrap()
                .set_modified(t)
                .unwrap();
        }
        prune(d.path(), "p-", &d.path().join("p-1")).unwrap();
        let mut left: Vec<String> = std::fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, ["other", "p-1", "p-3", "p-4"]);
    }
}
