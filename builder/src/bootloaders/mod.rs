//! Boot loaders: systemd-boot for UEFI, GRUB for legacy BIOS, and the kernel command line both
//! pass to the same kernel and initrd on the ESP.

pub mod grub_bios;
pub mod raspberry_pi;
pub mod systemd_boot;

use crate::config::{Arch, Config};

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

/// The kernel command line for UEFI and BIOS boot: [`root_cmdline`] plus the consoles.
pub fn kernel_cmdline(config: &Config, root: &RootSpec) -> String {
    let mut args = vec![root_cmdline(config, root)];
    // Graphical console first, serial last: the last one becomes /dev/console.
    args.push(match config.image.arch {
        Arch::X86_64 => "console=tty0".into(),
        Arch::Arm64 => "console=tty1".into(),
    });
    args.push(match config.image.arch {
        Arch::X86_64 => "console=ttyS0,115200".into(),
        Arch::Arm64 => "console=ttyAMA0,115200".into(),
    });
    args.join(" ")
}

/// Everything on the kernel command line but the consoles, which differ between boards.
pub fn root_cmdline(config: &Config, root: &RootSpec) -> String {
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
    args.extend(config.boot.cmdline.iter().cloned());
    args.join(" ")
}
