//! UEFI boot with systemd-boot: the boot loader at the removable-media path (no NVRAM entry
//! needed) and Boot Loader Specification entries on the ESP.

use anyhow::{bail, Result};
use appliance_spec::{esp, Slot};

use super::BootInputs;
use crate::filesystems::esp::{EspFile, EspSource};

/// systemd-boot, `loader.conf` and the entry of slot A.
pub fn esp_files(inputs: &BootInputs) -> Result<Vec<EspFile>> {
    let Some(binary) = inputs.systemd_boot else {
        bail!("UEFI boot needs systemd-boot in the image: enable the feature \"boot\" (it installs systemd-boot-efi) or add \"systemd-boot-efi\" to [packages] include");
    };
    let entry_id = esp::loader_entry_id(Slot::A);
    Ok(vec![
        EspFile {
            path: format!("{}/{}", esp::EFI_BOOT_DIR, inputs.arch.efi_boot_file()),
            source: EspSource::File(binary.to_path_buf()),
        },
        EspFile {
            path: esp::LOADER_CONF.into(),
            source: EspSource::Bytes(
                loader_conf(&format!("{entry_id}.conf"), inputs.timeout).into_bytes(),
            ),
        },
        EspFile {
            path: esp::loader_entry(Slot::A),
            source: EspSource::Bytes(
                entry(
                    &inputs.title,
                    inputs.kernel_version,
                    &format!("/{}", esp::kernel(Slot::A)),
                    &format!("/{}", esp::initrd(Slot::A)),
                    &inputs.cmdline(),
                )
                .into_bytes(),
            ),
        },
    ])
}

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
