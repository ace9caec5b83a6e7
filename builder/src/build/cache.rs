//! Cache keys: hashes of everything that shapes a cached result, so a changed input is never
//! answered from the cache.

use std::path::Path;

use anyhow::Result;
use sha2::{Digest, Sha256};

use crate::config::Config;

/// Hash of everything that determines the root tarball: mmdebstrap's arguments and the content
/// of the rendered overlays and hook files.
pub fn rootfs_cache_key(config: &Config, plan_input: &str, dirs: &[&Path]) -> Result<String> {
    let mut h = Sha256::new();
    h.update(env!("CARGO_PKG_VERSION").as_bytes());
    h.update(config.image.source_date_epoch.to_le_bytes());
    h.update(plan_input.as_bytes());
    for dir in dirs {
        hash_tree(dir, dir, &mut h)?;
    }
    Ok(hex::encode(h.finalize()))
}

/// Feeds every entry under `dir` (path, mode, symlink target or content) into `h`, in name
/// order.
pub fn hash_tree(root: &Path, dir: &Path, h: &mut Sha256) -> Result<()> {
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

/// Removes this appliance's older root tarballs (`<name>-<16 hex digits>.tar`), and only those:
/// another appliance whose name starts the same way keeps its own.
pub fn remove_stale_tarballs(dir: &Path, name: &str) -> Result<()> {
    for e in std::fs::read_dir(dir)?.flatten() {
        let file = e.file_name().to_string_lossy().into_owned();
        let key = file
            .strip_prefix(name)
            .and_then(|r| r.strip_prefix('-'))
            .and_then(|r| r.strip_suffix(".tar"));
        if key.is_some_and(|k| k.len() == 16 && k.chars().all(|c| c.is_ascii_hexdigit())) {
            let _ = std::fs::remove_file(e.path());
        }
    }
    Ok(())
}
