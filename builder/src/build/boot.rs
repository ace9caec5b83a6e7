//! Stage 6: the boot files. Kernel, initrd and systemd-boot (and for the Pi its firmware) come
//! from the package layer; the boot loaders say what goes on the ESP (slot A, generation 1 of
//! [`appliance_spec::bootcfg`]); the ESP is written, with the first-boot seed when
//! `[firstboot]` is set.

use std::path::PathBuf;

use anyhow::Result;
use appliance_spec::esp::SEED_FILE;

use super::packages::PackageLayer;
use super::verity::RootVerity;
use super::BuildCtx;
use crate::bootloaders::{self, BootInputs};
use crate::filesystems::esp::{self, EspFile, EspSource};
use crate::rootfs::RootfsContents;

pub struct BootFiles {
    pub esp_img: PathBuf,
    pub esp_volume_id: u32,
    /// The command line of UEFI and BIOS boots.
    pub cmdline: String,
    /// What else the build learnt from the root: kernel version, installed packages.
    pub contents: RootfsContents,
}

pub fn prepare(
    ctx: &mut BuildCtx,
    packages: &PackageLayer,
    verity: &RootVerity,
) -> Result<(BootFiles, String)> {
    let config = ctx.config;
    let contents = packages.contents.clone();
    let inputs = BootInputs {
        arch: config.image.arch,
        board: config.image.board,
        name: &config.image.name,
        image: format!("{} {}", config.image.name, config.image.version),
        kernel_version: &contents.kernel_version,
        kernel: &contents.kernel,
        initrd: &contents.initrd,
        systemd_boot: contents.systemd_boot.as_deref(),
        uefi: config.boot.uefi,
        bios: config.bios(),
        timeout: config.boot.timeout,
        root: &verity.spec,
        extra_cmdline: &config.boot.cmdline,
        raspberry_pi_files: &contents.raspberry_pi_files,
    };
    let mut files = bootloaders::esp_files(&inputs)?;
    // The first-boot answers given at build time; the machine reads and deletes the file.
    if let Some(seed) = config.firstboot_seed()? {
        files.push(EspFile {
            path: SEED_FILE.into(),
            source: EspSource::Bytes(seed.into_bytes()),
        });
    }
    let esp_img = ctx.work.join("esp.img");
    let esp_volume_id = u32::from_le_bytes(ctx.ids.bytes("esp-volume-id"));
    esp::write_esp(
        &esp_img,
        config.boot.esp_size.0,
        esp_volume_id,
        "ESP",
        &files,
        config.image.source_date_epoch,
    )?;
    let loaders: Vec<&str> = [
        (config.boot.uefi, "UEFI systemd-boot"),
        (config.bios(), "BIOS GRUB"),
        (
            config.image.board == appliance_spec::Board::RaspberryPi,
            "Raspberry Pi firmware",
        ),
    ]
    .into_iter()
    .filter_map(|(on, name)| on.then_some(name))
    .collect();
    let note = format!("kernel {}; {}", contents.kernel_version, loaders.join(", "));
    let cmdline = inputs.cmdline();
    Ok((
        BootFiles {
            esp_img,
            esp_volume_id,
            cmdline,
            contents,
        },
        note,
    ))
}
