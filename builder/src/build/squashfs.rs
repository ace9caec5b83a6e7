//! Stage 3: the read-only root, a squashfs made straight from the root tarball.

use std::path::PathBuf;

use anyhow::{bail, Result};
use appliance_spec::verity;

use super::packages::RootTarball;
use super::BuildCtx;
use crate::filesystems::squashfs;
use crate::progress::human_bytes;

pub struct Squashfs {
    pub path: PathBuf,
    /// Its length, padded to whole verity blocks.
    pub bytes: u64,
}

pub fn make(ctx: &mut BuildCtx, root: &RootTarball) -> Result<(Squashfs, String)> {
    let config = ctx.config;
    let path = ctx.work.join("root.squashfs");
    squashfs::from_tar(
        &root.tar,
        &path,
        &config.root.compression,
        config.image.source_date_epoch,
    )?;
    let bytes = verity::pad_to_block(&path)?;
    if bytes > config.root.slot_size.0 {
        bail!(
            "the root file system ({}) does not fit a root slot ([root] slot_size = {}); raise slot_size or install fewer packages",
            human_bytes(bytes),
            config.root.slot_size
        );
    }
    let note = format!(
        "{} squashfs ({})",
        human_bytes(bytes),
        config.root.compression
    );
    Ok((Squashfs { path, bytes }, note))
}
