//! Boot loaders: GRUB for legacy BIOS, systemd-boot for UEFI.

pub mod grub_bios;
