//! The kernel command line, in three parts: how the initrd finds and checks the root (per
//! slot), the system's own arguments (the same for every slot), and the consoles (per boot
//! method). The build writes slot A's; the machine writes the other slot's when it installs an
//! update.

use uuid::Uuid;

use crate::Arch;

/// How the initrd finds and checks the root file system.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootSpec {
    /// dm-verity: data and hash partitions found by PARTUUID, checked against the root hash.
    Verity {
        root_hash: String,
        data_partuuid: Uuid,
        hash_partuuid: Uuid,
    },
    /// An unverified squashfs partition.
    Plain { partuuid: Uuid },
}

/// The arguments that open the root.
pub fn root_args(root: &RootSpec) -> Vec<String> {
    match root {
        RootSpec::Verity {
            root_hash,
            data_partuuid,
            hash_partuuid,
        } => vec![
            format!("roothash={root_hash}"),
            format!("systemd.verity_root_data=PARTUUID={data_partuuid}"),
            format!("systemd.verity_root_hash=PARTUUID={hash_partuuid}"),
            // A root that fails verification must not be used at all: stop rather than run
            // with some files unreadable.
            "systemd.verity_root_options=panic-on-corruption".into(),
            "root=/dev/mapper/root".into(),
        ],
        RootSpec::Plain { partuuid } => vec![format!("root=PARTUUID={partuuid}")],
    }
}

/// The system's arguments: a read-only squashfs root, AppArmor, and `[boot] cmdline`.
pub fn system_args(extra: &[String]) -> Vec<String> {
    let mut args: Vec<String> = [
        "rootfstype=squashfs",
        "ro",
        "apparmor=1",
        "security=apparmor",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(extra.iter().cloned());
    args
}

/// The consoles of a UEFI or BIOS boot: graphical first, serial last (the last one becomes
/// /dev/console).
pub fn console_args(arch: Arch) -> Vec<String> {
    vec![
        format!("console={}", arch.graphical_console()),
        format!("console={},115200", arch.serial_console()),
    ]
}

/// The consoles of a Raspberry Pi boot: the mini UART on GPIO 14/15 is ttyS1 with upstream
/// device trees; `rootwait` waits for the SD card.
pub fn raspberry_pi_console_args() -> Vec<String> {
    ["console=tty1", "console=ttyS1,115200", "rootwait"]
        .iter()
        .map(|s| s.to_string())
        .collect()
}

/// The whole command line of a UEFI or BIOS boot.
pub fn kernel_cmdline(arch: Arch, root: &RootSpec, extra: &[String]) -> String {
    [root_args(root), system_args(extra), console_args(arch)]
        .concat()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consoles_come_last_serial_after_graphical() {
        let root = RootSpec::Plain {
            partuuid: Uuid::from_u128(1),
        };
        let c = kernel_cmdline(Arch::X86_64, &root, &["quiet".into()]);
        assert!(
            c.ends_with("quiet console=tty0 console=ttyS0,115200"),
            "{c}"
        );
        let c = kernel_cmdline(Arch::Arm64, &root, &[]);
        assert!(c.ends_with("console=tty1 console=ttyAMA0,115200"), "{c}");
        assert!(c.starts_with(
            "root=PARTUUID=00000000-0000-0000-0000-000000000001 rootfstype=squashfs ro"
        ));
    }
}
