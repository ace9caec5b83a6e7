//! Stage 4: the read-only root, the system layer packed into a squashfs (cached by the system
//! layer's key).

use std::path::PathBuf;

use anyhow::{bail, Result};
use appliance_spec::verity;

use super::system::SystemLayer;
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

/// zstd's level when the configuration names none. Measured on this appliance's root
/// (docs/benchmarks.md): level 9 packs it in about 4 s, 7 % larger than at mksquashfs's own
/// default, 15, which takes about 27 s; levels above 9 cost seconds for little.
pub const DEFAULT_ZSTD_LEVEL: u32 = 9;

fn squashfs_settings(config: &Config) -> Settings {
    let zstd = config.root.compression == "zstd";
    Settings {
        compression: config.root.compression.clone(),
        level: config
            .root
            .compression_level
            .or(zstd.then_some(DEFAULT_ZSTD_LEVEL)),
        block_size: config.root.block_size.0,
    }
}

pub fn make(ctx: &mut BuildCtx, system: &SystemLayer) -> Result<(Squashfs, String)> {
    let config = ctx.config;
    let path = system.squashfs.clone();
    let note = if let Some(tree) = &system.tree {
        let partial = path.with_extension("squashfs.partial");
        squashfs::from_dir(
            &tree.path,
            &partial,
            &squashfs_settings(config),
            config.image.source_date_epoch,
        )?;
        verity::pad_to_block(&partial)?;
        std::fs::rename(&partial, &path)?;
        tree.release()?;
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

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn settings_of(overrides: &[&str]) -> Vec<String> {
        let o: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
        let config = Config::from_str_with(
            "[image]\nname = \"demo\"\n",
            "appliance.toml",
            PathBuf::from("."),
            &o,
        )
        .expect("a valid configuration");
        settings(&config)
    }

    #[test]
    fn zstd_without_a_level_packs_at_the_chosen_default_and_others_at_their_own() {
        let level = DEFAULT_ZSTD_LEVEL.to_string();
        let zstd = settings_of(&[]);
        assert_eq!(
            zstd,
            [
                "-comp",
                "zstd",
                "-Xcompression-level",
                &level,
                "-b",
                "131072"
            ]
        );
        let set = settings_of(&["root.compression_level=1"]);
        assert_eq!(set[3], "1");
        let xz = settings_of(&["root.compression=\"xz\""]);
        assert_eq!(xz, ["-comp", "xz", "-b", "131072"]);
    }
}
