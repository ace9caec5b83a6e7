//! Raspberry Pi 4 boot: the firmware reads `config.txt` at the top of the ESP; its `os_prefix`
//! names the slot's directory, from which the firmware loads the kernel, the initrd,
//! `cmdline.txt` and the device tree. The firmware files themselves (start4.elf, fixup4.dat)
//! stay at the top and are shared by both slots.
//!
//! A trial: the machine writes `tryboot.txt` (the same settings, naming the other slot) and
//! reboots with `reboot '0 tryboot'`. The firmware reads `tryboot.txt` instead of `config.txt`
//! for that one boot only; any later reset reads `config.txt` again, so a trial that does not
//! commit falls back by itself. Committing rewrites `config.txt` to name the new slot.
//! The booted system sees a trial in `/proc/device-tree/chosen/bootloader/tryboot`.

use crate::esp::{self, raspberry_pi::CMDLINE_TXT};
use crate::Slot;

use super::SlotBoot;

/// Where the running system reads whether the firmware booted `tryboot.txt`: a big-endian
/// 32-bit 1 after a tryboot.
pub const TRYBOOT_FLAG: &str = "/proc/device-tree/chosen/bootloader/tryboot";

const OS_PREFIX: &str = "os_prefix=";

/// `config.txt` naming `slot`; also the text of `tryboot.txt` for a trial of `slot`.
pub fn config_txt(slot: Slot) -> String {
    format!(
        "# Raspberry Pi firmware settings, written by appliance. os_prefix names the slot that\n\
         # boots; tryboot.txt, when present, names the slot on trial (docs/updates.md).\n\
         [all]\n\
         arm_64bit=1\n\
         # Device trees from the Debian kernel, with their upstream names.\n\
         upstream_kernel=1\n\
         enable_uart=1\n\
         {OS_PREFIX}{dir}/\n\
         kernel={kernel}\n\
         initramfs {initrd} followkernel\n\
         disable_overscan=1\n",
        dir = esp::slot_dir(slot),
        kernel = esp::KERNEL,
        initrd = esp::INITRD,
    )
}

/// The slot a `config.txt` or `tryboot.txt` names.
pub fn slot_of(config: &str) -> Option<Slot> {
    config.lines().find_map(|line| {
        let dir = line.trim().strip_prefix(OS_PREFIX)?.strip_suffix('/')?;
        Slot::ALL.into_iter().find(|s| esp::slot_dir(*s) == dir)
    })
}

/// The slot directory's `cmdline.txt`: one line.
pub fn cmdline_txt(boot: &SlotBoot) -> String {
    format!("{}\n", boot.raspberry_pi_cmdline())
}

/// Where a slot's `cmdline.txt` is on the ESP.
pub fn cmdline_path(slot: Slot) -> String {
    esp::slot_file(slot, CMDLINE_TXT)
}

/// Whether the bytes of [`TRYBOOT_FLAG`] say the firmware booted `tryboot.txt`.
pub fn is_tryboot(flag: &[u8]) -> bool {
    flag.len() >= 4 && u32::from_be_bytes([flag[0], flag[1], flag[2], flag[3]]) == 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_names_the_slot_directory() {
        let a = config_txt(Slot::A);
        assert!(
            a.contains(
                "\nos_prefix=appliance-a/\nkernel=vmlinuz\ninitramfs initrd.img followkernel\n"
            ),
            "{a}"
        );
        assert_eq!(slot_of(&a), Some(Slot::A));
        assert_eq!(slot_of(&config_txt(Slot::B)), Some(Slot::B));
        assert_eq!(slot_of("[all]\nkernel=vmlinuz\n"), None);
        assert_eq!(slot_of("os_prefix=elsewhere/\n"), None);
        assert_eq!(cmdline_path(Slot::B), "appliance-b/cmdline.txt");
        let line = cmdline_txt(&crate::bootcfg::tests::sample(Slot::A));
        assert!(
            line.ends_with("rootwait\n") && line.matches('\n').count() == 1,
            "{line}"
        );
    }

    #[test]
    fn the_tryboot_flag_is_a_big_endian_one() {
        assert!(is_tryboot(&[0, 0, 0, 1]));
        assert!(!is_tryboot(&[0, 0, 0, 0]));
        assert!(!is_tryboot(&[1, 0, 0, 0]));
        assert!(!is_tryboot(&[]));
    }
}
