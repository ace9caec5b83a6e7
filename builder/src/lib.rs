//! `appliance`: builds a read-only, verified Debian disk image from `appliance.toml`.
//!
//! The build runs in stages, one module each: configuration, packages (mmdebstrap), the root
//! file system (overlays), file systems (squashfs, FAT ESP), dm-verity, boot loaders, the
//! partition table and the outputs.

pub mod bootloaders;
pub mod doctor;
pub mod filesystems;
pub mod partitions;
pub mod verity;
