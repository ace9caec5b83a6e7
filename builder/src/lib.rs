//! `appliance`: builds a read-only, verified Debian disk image from `appliance.toml`.
//!
//! The build runs in stages, one module each, ordered by [`build`]: configuration ([`config`]),
//! packages ([`packages`], mmdebstrap), the root file system ([`rootfs`], overlays and hooks),
//! file systems ([`filesystems`]: squashfs, FAT ESP), dm-verity ([`verity`]), boot loaders
//! ([`bootloaders`]), the partition table ([`partitions`]) and the outputs ([`outputs`]).

pub mod admin_program;
pub mod bootloaders;
pub mod build;
pub mod bundle;
pub mod cli;
pub mod config;
pub mod doctor;
pub mod features;
pub mod filesystems;
pub mod flash;
pub mod formats;
pub use appliance_qemu_tests::{host, interrupt};
pub mod inspect;

pub mod junit;
pub mod lock;
pub mod locked_repo;
pub mod outputs;
pub mod packages;
pub mod partitions;
pub mod progress;
pub mod rootfs;
pub mod sbom;
pub mod signing;
pub mod testing;
pub mod verify;
