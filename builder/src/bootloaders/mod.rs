//! Boot loaders: systemd-boot for UEFI, GRUB for legacy BIOS, the Raspberry Pi firmware's own
//! files, and the kernel command line they all pass to the same kernel and initrd on the ESP.
//!
//! Each boot loader turns the same [`BootInputs`] into the files it needs on the ESP; the
//! build writes them all to one FAT volume. What the files say (slot A, generation 1) is the
//! boot configuration of [`appliance_spec::bootcfg`], which the machine rewrites when it
//! installs an update into slot B.

pub mod grub_bios;
pub mod raspberry_pi;
pub mod systemd_boot;

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use appliance_spec::bootcfg::SlotBoot;
use appliance_spec::{cmdline, esp, Arch, Board, Slot};

use crate::filesystems::esp::{EspFile, EspSource};

pub use appliance_spec::cmdline::RootSpec;

/// Everything the boot loaders need to know about the image.
pub struct BootInputs<'a> {
    pub arch: Arch,
    pub board: Board,
    /// `[image] name`: GRUB's menu title.
    pub name: &'a str,
    /// The image and its version, e.g. `jitsi-appliance 1.2.0`: the boot entries' title.
    pub image: String,
    pub kernel_version: &'a str,
    pub kernel: &'a Path,
    pub initrd: &'a Path,
    /// systemd-boot's EFI binary from the root, when the image has it.
    pub systemd_boot: Option<&'a Path>,
    pub uefi: bool,
    pub bios: bool,
    /// Seconds a boot menu waits.
    pub timeout: u32,
    pub root: &'a RootSpec,
    /// `[boot] cmdline`.
    pub extra_cmdline: &'a [String],
    /// The Raspberry Pi firmware and device trees, as (name on the ESP, file).
    pub raspberry_pi_files: &'a [(String, PathBuf)],
}

impl BootInputs<'_> {
    /// The command line of UEFI and BIOS boots.
    pub fn cmdline(&self) -> String {
        self.slot_a().cmdline()
    }

    /// What the boot loaders start: slot A, the slot the image boots first.
    pub fn slot_a(&self) -> SlotBoot {
        SlotBoot {
            slot: Slot::A,
            image: self.image.clone(),
            kernel_version: self.kernel_version.to_string(),
            arch: self.arch,
            root: self.root.clone(),
            system_args: cmdline::system_args(self.extra_cmdline),
        }
    }
}

/// Every file the enabled boot loaders need on the ESP, with the kernel and initrd of slot A.
pub fn esp_files(inputs: &BootInputs) -> Result<Vec<EspFile>> {
    let mut files = vec![
        EspFile {
            path: esp::kernel(Slot::A),
            source: EspSource::File(inputs.kernel.to_path_buf()),
        },
        EspFile {
            path: esp::initrd(Slot::A),
            source: EspSource::File(inputs.initrd.to_path_buf()),
        },
    ];
    if inputs.uefi {
        files.extend(systemd_boot::esp_files(inputs)?);
    }
    if inputs.bios {
        files.extend(grub_bios::esp_files(inputs)?);
    }
    if inputs.board == Board::RaspberryPi {
        if inputs.raspberry_pi_files.is_empty() {
            bail!("board = \"raspberry-pi\" but the image has no Pi firmware (package raspi-firmware)");
        }
        files.extend(raspberry_pi::esp_files(inputs));
    }
    Ok(files)
}

/// The kernel command line for UEFI and BIOS boot.
pub fn kernel_cmdline(arch: Arch, root: &RootSpec, extra: &[String]) -> String {
    cmdline::kernel_cmdline(arch, root, extra)
}

/// Everything on the kernel command line but the consoles, which differ between boards.
pub fn root_cmdline(root: &RootSpec, extra: &[String]) -> String {
    [cmdline::root_args(root), cmdline::system_args(extra)]
        .concat()
        .join(" ")
}
