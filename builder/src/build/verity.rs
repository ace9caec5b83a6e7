//! Stage 4: the dm-verity hash tree of the root and the root hash the kernel checks it against.

use std::path::PathBuf;

use anyhow::Result;
use appliance_spec::verity::{self, VerityTree};

use super::squashfs::Squashfs;
use super::BuildCtx;
use crate::bootloaders::RootSpec;

pub struct RootVerity {
    /// `None` with `[root] verity = false`.
    pub tree: Option<VerityTree>,
    pub hash_file: PathBuf,
    /// How the initrd finds the root.
    pub spec: RootSpec,
}

impl RootVerity {
    pub fn root_hash(&self) -> Option<String> {
        self.tree.as_ref().map(VerityTree::root_hash_hex)
    }
}

pub fn compute(ctx: &mut BuildCtx, squashfs: &Squashfs) -> Result<(RootVerity, String)> {
    let hash_file = ctx.work.join("root.verity");
    if !ctx.config.root.verity {
        let spec = RootSpec::Plain {
            partuuid: ctx.ids.uuid(&appliance_spec::Slot::A.root_label()),
        };
        let v = RootVerity {
            tree: None,
            hash_file,
            spec,
        };
        return Ok((v, "disabled ([root] verity = false)".into()));
    }
    let salt: [u8; 32] = ctx.ids.bytes("verity-salt");
    let uuid: [u8; 16] = *ctx.ids.uuid("verity-superblock").as_bytes();
    let tree = verity::build_hash_tree(&squashfs.path, &hash_file, &salt, &uuid)?;
    let spec = RootSpec::Verity {
        root_hash: tree.root_hash_hex(),
        data_partuuid: tree.data_partition_uuid(),
        hash_partuuid: tree.hash_partition_uuid(),
    };
    let note = format!("root hash {}", tree.root_hash_hex());
    let v = RootVerity {
        tree: Some(tree),
        hash_file,
        spec,
    };
    Ok((v, note))
}
