//! UEFI boot with systemd-boot: the boot loader at the removable-media path (no NVRAM entry
//! needed) and Boot Loader Specification entries on the ESP.

/// `loader/loader.conf`.
pub fn loader_conf(default_entry: &str, timeout_secs: u32) -> String {
    format!("default {default_entry}\ntimeout {timeout_secs}\nconsole-mode keep\neditor no\n")
}

/// One Boot Loader Specification (type #1) entry.
pub fn entry(title: &str, version: &str, kernel: &str, initrd: &str, cmdline: &str) -> String {
    format!(
        "title {title}\nversion {version}\nlinux {kernel}\ninitrd {initrd}\noptions {cmdline}\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_has_every_key_on_its_own_line() {
        let e = entry("T", "6.1", "/a/vmlinuz", "/a/initrd.img", "ro quiet");
        assert_eq!(
            e,
            "title T\nversion 6.1\nlinux /a/vmlinuz\ninitrd /a/initrd.img\noptions ro quiet\n"
        );
        assert!(loader_conf("a.conf", 0).contains("editor no"));
    }
}
