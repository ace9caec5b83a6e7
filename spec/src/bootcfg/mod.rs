//! Boot configuration: every file on the ESP that says which root slot boots, written once by
//! the build (slot A, generation 1) and again by the machine when it installs an update into
//! the other slot, commits it or goes back (docs/updates.md).
//!
//! Each firmware has its own way to try a slot once and fall back by itself:
//!
//! - [`systemd_boot`] (UEFI): one Boot Loader Specification entry per slot, named by generation;
//!   an entry on trial carries a boot counter (`+1`) that systemd-boot spends before it boots,
//!   and an entry with no tries left sorts last;
//! - [`grub`] (BIOS): a static `grub.cfg` that reads the slot choice from `grubenv`
//!   (`ORDER`, `<slot>_OK`, `<slot>_TRY`, `TRIAL`) and marks a trial as tried before it boots;
//! - [`raspberry_pi`]: `config.txt` names the committed slot's directory, `tryboot.txt` the
//!   slot on trial, which the firmware reads only after `reboot '0 tryboot'`.
//!
//! The slot's own files (kernel, initrd, command line) are in its directory on the ESP
//! ([`crate::esp::slot_dir`]), so writing one slot never touches the other's.

pub mod grub;
pub mod raspberry_pi;
pub mod systemd_boot;

use crate::cmdline::{self, RootSpec};
use crate::{Arch, Slot};

/// The generation of the slot the first image boots (slot A).
pub const FIRST_GENERATION: u32 = 1;

/// What every boot loader needs to start one slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotBoot {
    pub slot: Slot,
    /// The image and its version, e.g. `jitsi-appliance 1.2.0`.
    pub image: String,
    pub kernel_version: String,
    pub arch: Arch,
    /// How the initrd finds and checks this slot's root.
    pub root: RootSpec,
    /// The system's arguments ([`cmdline::system_args`]): the same for every boot method.
    pub system_args: Vec<String>,
}

impl SlotBoot {
    /// The menu title: image, version and slot.
    pub fn title(&self) -> String {
        format!("{} (slot {})", self.image, self.slot)
    }

    /// The kernel command line of a UEFI or BIOS boot of this slot.
    pub fn cmdline(&self) -> String {
        [
            cmdline::root_args(&self.root),
            self.system_args.clone(),
            cmdline::console_args(self.arch),
        ]
        .concat()
        .join(" ")
    }

    /// The kernel command line of a Raspberry Pi boot of this slot.
    pub fn raspberry_pi_cmdline(&self) -> String {
        [
            cmdline::root_args(&self.root),
            self.system_args.clone(),
            cmdline::raspberry_pi_console_args(),
        ]
        .concat()
        .join(" ")
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use uuid::Uuid;

    pub fn sample(slot: Slot) -> SlotBoot {
        SlotBoot {
            slot,
            image: "meet 2.0.0".into(),
            kernel_version: "6.1.0-28-amd64".into(),
            arch: Arch::X86_64,
            root: RootSpec::Verity {
                root_hash: "ab".repeat(32),
                data_partuuid: Uuid::from_u128(0x11),
                hash_partuuid: Uuid::from_u128(0x22),
            },
            system_args: cmdline::system_args(&["quiet".into()]),
        }
    }

    #[test]
    fn command_lines_put_the_root_first_and_the_consoles_last() {
        let b = sample(Slot::B);
        let c = b.cmdline();
        assert!(
            c.starts_with(&format!("roothash={} ", "ab".repeat(32))),
            "{c}"
        );
        assert!(
            c.contains(" quiet console=tty0 console=ttyS0,115200"),
            "{c}"
        );
        let pi = b.raspberry_pi_cmdline();
        assert!(
            pi.ends_with("quiet console=tty1 console=ttyS1,115200 rootwait"),
            "{pi}"
        );
        assert_eq!(b.title(), "meet 2.0.0 (slot b)");
    }
}
