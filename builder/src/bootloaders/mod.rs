//! Boot loaders: systemd-boot for UEFI, GRUB for legacy BIOS, the Raspberry Pi firmware's own
//! files, and the kernel command line they all pass to the same kernel and initrd on the ESP.
//!
//! Each boot loader turns the same [`BootInputs`] into the files it needs on the ESP; the
//! build writes them all to one FAT volume.

pub mod grub_bios;
pub mod raspberry_pi;
pub mod systemd_boot;

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use appliance_spec::{esp, Arch, Board, Slot};

use crate::filesystems::esp::{EspFile, EspSource};

/// How the initrd finds and checks the root file system.
pub enum RootSpec {
    /// dm-verity: data and hash partitions found by PARTUUID, checked against the root hash.
    Verity {
        root_hash: String,
        data_partuuid: uuid::Uuid,
        hash_partuuid: uuid::Uuid,
    },
    /// An unverified squashfs partition.
    Plain { partuuid: uuid::Uuid },
}

/// Everything the boot loaders need to know about the image.
pub struct BootInputs<'a> {
    pub arch: Arch,
    pub board: Board,
    /// The menu title.
    pub title: String,
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
        kernel_cmdline(self.arch, self.root, self.extra_cmdline)
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
        files.extend(grub_bios::esp_files(inputs));
    }
    if inputs.board == Board::RaspberryPi {
        if inputs.raspberry_pi_files.is_empty() {
            bail!("board = \"raspberry-pi\" but the image has no Pi firmware (package raspi-firmware)");
        }
        files.extend(raspberry_pi::esp_files(inputs));
    }
    Ok(files)
}

/// The kernel command line for UEFI and BIOS boot: [`root_cmdline`] plus the consoles.
pub fn kernel_cmdline(arch: Arch, root: &RootSpec, extra: &[String]) -> String {
    // Graphical console first, serial last: the last one becomes /dev/console.
    format!(
        "{} console={} console={},115200",
        root_cmdline(root, extra),
        arch.graphical_console(),
        arch.serial_console()
    )
}

/// Everything on the kernel command line but the consoles, which differ between boards.
pub fn root_cmdline(root: &RootSpec, extra: &[String]) -> String {
    let mut args: Vec<String> = Vec::new();
    match root {
        RootSpec::Verity {
            root_hash,
            data_partuuid,
            hash_partuuid,
        } => {
            args.push(format!("roothash={root_hash}"));
            args.push(format!("systemd.verity_root_data=PARTUUID={data_partuuid}"));
            args.push(format!("systemd.verity_root_hash=PARTUUID={hash_partuuid}"));
            // A root that fails verification must not be used at all: stop rather than run
            // with some files unreadable.
            args.push("systemd.verity_root_options=panic-on-corruption".into());
            args.push("root=/dev/mapper/root".into());
        }
        RootSpec::Plain { partuuid } => args.push(format!("root=PARTUUID={partuuid}")),
    }
    args.extend(
        [
            "rootfstype=squashfs",
            "ro",
            "apparmor=1",
            "security=apparmor",
        ]
        .iter()
        .map(|s| s.to_string()),
    );
    args.extend(extra.iter().cloned());
    args.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consoles_come_last_serial_after_graphical() {
        let root = RootSpec::Plain {
            partuuid: uuid::Uuid::from_u128(1),
        };
        let c = kernel_cmdline(Arch::X86_64, &root, &["quiet".into()]);
        assert!(
            c.ends_with("quiet console=tty0 console=ttyS0,115200"),
            "{c}"
        );
        let c = kernel_cmdline(Arch::Arm64, &root, &[]);
        assert!(c.ends_with("console=tty1 console=ttyAMA0,115200"), "{c}");
    }
}
