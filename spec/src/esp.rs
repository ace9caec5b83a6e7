//! Where things are on the EFI system partition (a FAT file system, the first partition every
//! firmware reads): boot loaders, the kernels of both slots, and the first-boot seed file.

use crate::layout::Slot;

/// The first-boot answers, read and then deleted by the machine (docs/first-boot.md).
pub const SEED_FILE: &str = "appliance-setup.toml";

/// The UEFI removable-media path; the file name is per architecture ([`crate::Arch::efi_boot_file`]).
pub const EFI_BOOT_DIR: &str = "EFI/BOOT";

/// systemd-boot's configuration and its Boot Loader Specification entries.
pub const LOADER_CONF: &str = "loader/loader.conf";
pub const LOADER_ENTRIES_DIR: &str = "loader/entries";

/// GRUB's configuration for legacy BIOS boot (core.img's prefix is `(ESP)/grub`).
pub const GRUB_DIR: &str = "grub";
pub const GRUB_CFG: &str = "grub/grub.cfg";

/// The directory holding a slot's kernel and initrd.
pub fn slot_dir(slot: Slot) -> String {
    format!("appliance-{}", slot.letter())
}

pub fn kernel(slot: Slot) -> String {
    format!("{}/vmlinuz", slot_dir(slot))
}

pub fn initrd(slot: Slot) -> String {
    format!("{}/initrd.img", slot_dir(slot))
}

/// The Boot Loader Specification entry id of a slot (file `loader/entries/<id>.conf`).
pub fn loader_entry_id(slot: Slot) -> String {
    slot_dir(slot)
}

pub fn loader_entry(slot: Slot) -> String {
    format!("{LOADER_ENTRIES_DIR}/{}.conf", loader_entry_id(slot))
}

/// What the Raspberry Pi firmware reads from the top of the ESP.
pub mod raspberry_pi {
    pub const CONFIG_TXT: &str = "config.txt";
    pub const CMDLINE_TXT: &str = "cmdline.txt";
    /// Kernel and initrd names at the top of the ESP (the firmware looks there).
    pub const KERNEL: &str = "vmlinuz";
    pub const INITRD: &str = "initrd.img";
    /// Firmware and device tree files a Pi 4 cannot boot without.
    pub const REQUIRED: &[&str] = &["start4.elf", "fixup4.dat", "bcm2711-rpi-4-b.dtb"];
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_paths() {
        assert_eq!(kernel(Slot::A), "appliance-a/vmlinuz");
        assert_eq!(initrd(Slot::B), "appliance-b/initrd.img");
        assert_eq!(loader_entry(Slot::A), "loader/entries/appliance-a.conf");
    }
}
