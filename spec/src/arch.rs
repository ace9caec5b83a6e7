//! The machines an image is built for: the CPU architecture and the board.

use std::fmt;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::layout::types;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize, Serialize)]
pub enum Arch {
    #[default]
    #[serde(rename = "x86_64", alias = "amd64")]
    X86_64,
    #[serde(rename = "arm64", alias = "aarch64")]
    Arm64,
}

impl Arch {
    pub const ALL: [Arch; 2] = [Arch::X86_64, Arch::Arm64];

    /// Debian's name for the architecture.
    pub fn debian(self) -> &'static str {
        match self {
            Arch::X86_64 => "amd64",
            Arch::Arm64 => "arm64",
        }
    }

    /// The kernel's name (`uname -m`), which is also Rust's and QEMU's.
    pub fn uname(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64",
            Arch::Arm64 => "aarch64",
        }
    }

    /// The architecture of the machine this program runs on, if it is one images are built for.
    pub fn host() -> Option<Arch> {
        Arch::ALL
            .into_iter()
            .find(|a| a.uname() == std::env::consts::ARCH)
    }

    /// The UEFI removable-media boot file name (in `EFI/BOOT/` on the ESP).
    pub fn efi_boot_file(self) -> &'static str {
        match self {
            Arch::X86_64 => "BOOTX64.EFI",
            Arch::Arm64 => "BOOTAA64.EFI",
        }
    }

    /// systemd-boot's file name for this architecture.
    pub fn systemd_boot_file(self) -> &'static str {
        match self {
            Arch::X86_64 => "systemd-bootx64.efi",
            Arch::Arm64 => "systemd-bootaa64.efi",
        }
    }

    /// The serial console of a generic machine (PC UART, or the PL011 of arm64 `virt`).
    pub fn serial_console(self) -> &'static str {
        match self {
            Arch::X86_64 => "ttyS0",
            Arch::Arm64 => "ttyAMA0",
        }
    }

    /// The graphical console.
    pub fn graphical_console(self) -> &'static str {
        match self {
            Arch::X86_64 => "tty0",
            Arch::Arm64 => "tty1",
        }
    }

    /// Rust's target for programs that run on the machine.
    pub fn rust_target(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64-unknown-linux-gnu",
            Arch::Arm64 => "aarch64-unknown-linux-gnu",
        }
    }

    /// Partition type of the root file system (Discoverable Partitions Specification).
    pub fn root_type(self) -> Uuid {
        match self {
            Arch::X86_64 => types::ROOT_X86_64,
            Arch::Arm64 => types::ROOT_ARM64,
        }
    }

    /// Partition type of the root's dm-verity hash tree.
    pub fn verity_type(self) -> Uuid {
        match self {
            Arch::X86_64 => types::ROOT_VERITY_X86_64,
            Arch::Arm64 => types::ROOT_VERITY_ARM64,
        }
    }

    /// Only PCs have a legacy BIOS.
    pub fn has_bios(self) -> bool {
        self == Arch::X86_64
    }

    /// The architecture whose root partition type is `guid`.
    pub fn from_root_type(guid: Uuid) -> Option<Arch> {
        Arch::ALL.into_iter().find(|a| a.root_type() == guid)
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Arch::X86_64 => "x86_64",
            Arch::Arm64 => "arm64",
        })
    }
}

/// What the image boots on besides standard UEFI/BIOS machines.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize, Serialize)]
pub enum Board {
    /// PCs, virtual machines and clouds (UEFI, and BIOS on x86_64).
    #[default]
    #[serde(rename = "generic")]
    Generic,
    /// Raspberry Pi 4 (arm64 only): its firmware files, config.txt and cmdline.txt are on the ESP
    /// as well, so the same image boots on a Pi and on arm64 UEFI machines.
    #[serde(rename = "raspberry-pi")]
    RaspberryPi,
}

impl Board {
    pub fn as_str(self) -> &'static str {
        match self {
            Board::Generic => "generic",
            Board::RaspberryPi => "raspberry-pi",
        }
    }

    pub fn parse(text: &str) -> Option<Board> {
        [Board::Generic, Board::RaspberryPi]
            .into_iter()
            .find(|b| b.as_str() == text)
    }
}

impl fmt::Display for Board {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for a in Arch::ALL {
            assert_eq!(Arch::from_root_type(a.root_type()), Some(a));
            let text = toml::to_string(&std::collections::BTreeMap::from([("a", a)])).unwrap();
            let back: std::collections::BTreeMap<String, Arch> = toml::from_str(&text).unwrap();
            assert_eq!(back["a"], a);
        }
        let alias: std::collections::BTreeMap<String, Arch> =
            toml::from_str("a = \"aarch64\"").unwrap();
        assert_eq!(alias["a"], Arch::Arm64);
        assert_eq!(Board::parse("raspberry-pi"), Some(Board::RaspberryPi));
        assert_eq!(Board::parse("pi"), None);
    }
}
