//! The read-only root: a squashfs image made with mksquashfs from the unpacked root.
//!
//! File owners, modes, times and extended attributes (file capabilities) come from the tree;
//! `SOURCE_DATE_EPOCH` fixes the file system's own time, so the same tree gives the same bytes.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result};

use crate::host;

/// How to compress: `compression` is one of zstd, xz, gzip, lz4; `level` applies to zstd, xz
/// (as `-Xdict-size`-free presets are not offered) and gzip; `block_size` in bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub compression: String,
    pub level: Option<u32>,
    pub block_size: u64,
}

impl Settings {
    /// mksquashfs's options for these settings.
    pub fn args(&self) -> Vec<String> {
        let mut args = vec!["-comp".to_string(), self.compression.clone()];
        if let Some(level) = self.level {
            args.push("-Xcompression-level".into());
            args.push(level.to_string());
        }
        args.push("-b".into());
        args.push(self.block_size.to_string());
        args
    }
}

/// The memory mksquashfs may use for its caches.
const MEMORY_CAP: &str = "128M";

/// Packs the directory `tree` into `out`.
pub fn from_dir(
    tree: &Path,
    out: &Path,
    settings: &Settings,
    source_date_epoch: u64,
) -> Result<()> {
    let _ = std::fs::remove_file(out);
    host::run(
        Command::new("mksquashfs")
            .arg(tree)
            .arg(out)
            .args(settings.args())
            // Each file system gets its own id table and no appended data from an earlier run.
            .args(["-noappend", "-quiet", "-no-progress"])
            // mksquashfs sizes its caches from the machine's memory (a quarter of it, about
            // 900 MB resident for this root on a 24 GiB machine); capped, it stays near 100 MB
            // and writes the same bytes.
            .args(["-mem", MEMORY_CAP])
            .env("SOURCE_DATE_EPOCH", source_date_epoch.to_string()),
    )
    .with_context(|| format!("packing {} into {}", tree.display(), out.display()))?;
    Ok(())
}
