//! Stage 6: the disk image. The partition layout comes from the image contract
//! ([`appliance_spec::layout`]); the GUIDs of slot A's root and verity partitions come from the
//! root hash, the others from the configuration. With BIOS boot, GRUB's core.img goes into the
//! BIOS boot partition and its boot code into the protective MBR.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use appliance_spec::layout::{self, LayoutParams, Role, Slot};

use super::boot::BootFiles;
use super::squashfs::Squashfs;
use super::verity::RootVerity;
use super::BuildCtx;
use crate::bootloaders::grub_bios;
use crate::config::Format;
use crate::filesystems::esp;
use crate::outputs::Staged;
use crate::partitions::{self, DiskLayout, PartitionSpec};
use crate::progress::human_bytes;

pub struct Disk {
    pub raw: PathBuf,
    pub layout: DiskLayout,
    /// Whether the raw image is one of the outputs (otherwise it is only an intermediate file).
    pub keep_raw: bool,
    /// The outputs being written under temporary names.
    pub staged: Staged,
}

/// The disk image just written, or the outputs of the same inputs already in place.
pub enum Image {
    Written(Disk),
    Unchanged(Vec<crate::outputs::OutputFile>),
}

/// Writes the disk image, unless the outputs of the same inputs (`key`) are in place already
/// and verify.
pub fn write(
    ctx: &mut BuildCtx,
    key: &str,
    squashfs: &Squashfs,
    verity: &RootVerity,
    boot: &BootFiles,
) -> Result<(Image, String)> {
    if let Some(files) = super::outputs::unchanged(ctx, key)? {
        let note = format!(
            "unchanged: the {} outputs in {} are of the same inputs and verify",
            files.len(),
            ctx.opts.out_dir.display()
        );
        return Ok((Image::Unchanged(files), note));
    }
    let mut layout = plan(ctx, squashfs, verity, boot)?;
    let mut mbr_code = None;
    if let Some(bios) = layout
        .partitions
        .iter_mut()
        .find(|p| p.spec.label == layout::LABEL_BIOS_BOOT)
    {
        let grub_dir = ctx.fresh_dir("grub")?;
        let grub = grub_bios::build(
            Path::new(grub_bios::DEFAULT_MODULES_DIR),
            &esp::volume_uuid_string(boot.esp_volume_id),
            bios.first_lba,
            bios.size_bytes(),
            &grub_dir,
        )?;
        let core = ctx.work.join("grub-core.img");
        std::fs::write(&core, &grub.core_img)?;
        bios.spec.content = Some(core);
        mbr_code = Some(grub.mbr_boot_code);
    }
    let mut staged = Staged::new(&ctx.opts.out_dir)?;
    let raw_name = format!("{}.raw", ctx.config.image.name);
    let keep_raw = ctx.config.image.formats.contains(&Format::Raw);
    let raw = if keep_raw {
        staged.path(&raw_name)
    } else {
        ctx.work.join(&raw_name)
    };
    partitions::write_disk(&raw, &layout, mbr_code.as_ref())?;
    let bytes = std::fs::metadata(&raw)?.len();
    let note = format!(
        "{} raw, {} partitions",
        human_bytes(bytes),
        layout.partitions.len()
    );
    Ok((
        Image::Written(Disk {
            raw,
            layout,
            keep_raw,
            staged,
        }),
        note,
    ))
}

/// Places the contract's partitions with their GUIDs and contents.
fn plan(
    ctx: &BuildCtx,
    squashfs: &Squashfs,
    verity: &RootVerity,
    boot: &BootFiles,
) -> Result<DiskLayout> {
    let config = ctx.config;
    let defs = layout::partitions(&LayoutParams {
        arch: config.image.arch,
        bios: config.bios(),
        esp_size: config.boot.esp_size.0,
        slot_size: config.root.slot_size.0,
        data_size: config.data.size.0,
        data_label: config.data.label.clone(),
    });
    let specs = defs
        .into_iter()
        .map(|def| {
            // Slot A's GUIDs follow the Discoverable Partitions convention: they are the two
            // halves of the root hash, so systemd finds them from `roothash=` alone.
            let part_guid = match (def.role, &verity.tree) {
                (Role::Root(Slot::A), Some(t)) => t.data_partition_uuid(),
                (Role::Verity(Slot::A), Some(t)) => t.hash_partition_uuid(),
                (Role::Data, _) => ctx.ids.uuid("data"),
                _ => ctx.ids.uuid(&def.label),
            };
            let content = match def.role {
                Role::Esp => Some(boot.esp_img.clone()),
                Role::Root(Slot::A) => Some(squashfs.path.clone()),
                Role::Verity(Slot::A) => verity.tree.as_ref().map(|_| verity.hash_file.clone()),
                // core.img is added once its place is known.
                _ => None,
            };
            PartitionSpec {
                label: def.label,
                type_guid: def.type_guid,
                part_guid,
                size: def.size,
                flags: def.flags,
                content,
            }
        })
        .collect();
    partitions::plan(ctx.ids.uuid("disk"), specs).context("planning the partition table")
}
