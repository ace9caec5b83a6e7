//! Stage 4: the read-only root, the system layer packed into a squashfs (cached by the system
//! layer's key).

use std::path::PathBuf;

use anyhow::{bail, Result};
use appliance_spec::verity;

use super::system::{self, SystemLayer};
use super::{cache, BuildCtx};
use crate::config::Config;
use crate::filesystems::squashfs::{self, Settings};
use crate::progress::human_bytes;

pub struct Squashfs {
    pub path: PathBuf,
    /// Its length, padded to whole verity blocks.
    pub bytes: u64,
}

/// The squashfs settings of a configuration, as words for the cache key.
pub fn settings(config: &Config) -> Vec<String> {
    squashfs_settings(config).args()
}

fn squashfs_settings(config: &Config) -> Settings {
    Settings {
        compression: config.root.compression.clone(),
        level: config.root.compression_level,
        block_size: config.root.block_size.0,
    }
}

pub fn make(ctx: &mut BuildCtx, system: &SystemLayer) -> Result<(Squashfs, String)> {
    let config = ctx.config;
    let path = system.squashfs.clone();
    let note = if let Some(tree) = &system.tree {
        let partial = path.with_extension("squashfs.partial");
        squashfs::from_dir(
            tree,
            &partial,
            &squashfs_settings(config),
            config.image.source_date_epoch,
        )?;
        verity::pad_to_block(&partial)?;
        std::fs::rename(&partial, &path)?;
        system::remove_tree(tree)?;
        cache::prune(&ctx.work, "system-", &path)?;
        format!("({})", settings(config).join(" "))
    } else {
        "from cache".to_string()
    };
    let bytes = std::fs::metadata(&path)?.len();
    if bytes > config.root.slot_size.0 {
        bail!(
            "the root file system ({}) does not fit a root slot ([root] slot_size = {}); raise slot_size or install fewer packages",
            human_bytes(bytes),
            config.root.slot_size
        );
    }
    Ok((
        Squashfs { path, bytes },
        format!("{} squashfs {note}", human_bytes(bytes)),
    ))
}
