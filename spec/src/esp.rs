//! Where things are on the EFI system partition (a FAT file system, the first partition every
//! firmware reads): boot loaders, the kernels of both slots, and the first-boot seed file.

use crate::layout::Slot;

/// The first-boot answers, read and then deleted by the machine (docs/first-boot.md).
pub const SEED_FILE: &str = "appliance-setup.toml";

/// The UEFI removable-media path; the file name is per architecture ([`crate::Arch::efi_boot_file`]).
pub const EFI_BOOT_DIR: &str = "EFI/BOOT";

/// systemd-boot's configuration and its Boot Loader Specification entries (named by
/// [`crate::bootcfg::systemd_boot::EntryName`]).
pub const LOADER_CONF: &str = "loader/loader.conf";
pub const LOADER_ENTRIES_DIR: &str = "loader/entries";

/// GRUB's configuration for legacy BIOS boot (core.img's prefix is `(ESP)/grub`), and the
/// environment block it reads the slot choice from.
pub const GRUB_DIR: &str = "grub";
pub const GRUB_CFG: &str = "grub/grub.cfg";
pub const GRUBENV: &str = "grub/grubenv";

/// The directory holding a slot's kernel, initrd and per-loader files.
pub fn slot_dir(slot: Slot) -> String {
    format!("appliance-{}", slot.letter())
}

/// A file in a slot's directory.
pub fn slot_file(slot: Slot, name: &str) -> String {
    format!("{}/{name}", slot_dir(slot))
}

pub fn kernel(slot: Slot) -> String {
    slot_file(slot, KERNEL)
}

pub fn initrd(slot: Slot) -> String {
    slot_file(slot, INITRD)
}

/// The GRUB fragment with a slot's `linux` and `initrd` lines, sourced by [`GRUB_CFG`].
pub fn slot_grub_cfg(slot: Slot) -> String {
    slot_file(slot, "grub.cfg")
}

/// Kernel and initrd names inside a slot's directory.
pub const KERNEL: &str = "vmlinuz";
pub const INITRD: &str = "initrd.img";

/// What the Raspberry Pi firmware reads: config.txt (and tryboot.txt on a trial boot) at the
/// top of the ESP; through their `os_prefix`, the kernel, initrd, cmdline.txt and device trees
/// in a slot's directory.
pub mod raspberry_pi {
    pub const CONFIG_TXT: &str = "config.txt";
    pub const TRYBOOT_TXT: &str = "tryboot.txt";
    /// In the slot's directory.
    pub const CMDLINE_TXT: &str = "cmdline.txt";
    /// Firmware files a Pi 4 cannot boot without, at the top of the ESP.
    pub const REQUIRED_FIRMWARE: &[&str] = &["start4.elf", "fixup4.dat"];
    /// The Pi 4's device tree, in the slot's directory.
    pub const REQUIRED_DEVICE_TREES: &[&str] = &["bcm2711-rpi-4-b.dtb"];

    /// Whether a file of the Pi's boot files belongs to a slot (the device trees come with
    /// the kernel) rather than to the firmware at the top of the ESP.
    pub fn belongs_to_slot(name: &str) -> bool {
        name.ends_with(".dtb")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_paths() {
        assert_eq!(kernel(Slot::A), "appliance-a/vmlinuz");
        assert_eq!(initrd(Slot::B), "appliance-b/initrd.img");
        assert_eq!(slot_grub_cfg(Slot::B), "appliance-b/grub.cfg");
    }
}
