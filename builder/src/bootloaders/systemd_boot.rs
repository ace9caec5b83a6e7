//! UEFI boot with systemd-boot: the boot loader at the removable-media path (no NVRAM entry
//! needed), `loader.conf` and slot A's Boot Loader Specification entry
//! ([`appliance_spec::bootcfg::systemd_boot`]).

use anyhow::{bail, Result};
use appliance_spec::bootcfg::systemd_boot::{entry, loader_conf, EntryName};
use appliance_spec::bootcfg::FIRST_GENERATION;
use appliance_spec::{esp, Slot};

use super::BootInputs;
use crate::filesystems::esp::{EspFile, EspSource};

/// systemd-boot, `loader.conf` and the entry of slot A, generation 1.
pub fn esp_files(inputs: &BootInputs) -> Result<Vec<EspFile>> {
    let Some(binary) = inputs.systemd_boot else {
        bail!("UEFI boot needs systemd-boot in the image: enable the feature \"boot\" (it installs systemd-boot-efi) or add \"systemd-boot-efi\" to [packages] include");
    };
    Ok(vec![
        EspFile {
            path: format!("{}/{}", esp::EFI_BOOT_DIR, inputs.arch.efi_boot_file()),
            source: EspSource::File(binary.to_path_buf()),
        },
        EspFile {
            path: esp::LOADER_CONF.into(),
            source: EspSource::Bytes(loader_conf(inputs.timeout).into_bytes()),
        },
        EspFile {
            path: EntryName::committed(FIRST_GENERATION, Slot::A).path(),
            source: EspSource::Bytes(entry(&inputs.slot_a()).into_bytes()),
        },
    ])
}
