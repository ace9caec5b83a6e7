//! Raspberry Pi 4 boot: the Pi's own firmware reads the first FAT partition (our ESP, on GPT),
//! loads `config.txt`, and from the slot directory it names (`os_prefix`) the kernel, the
//! initrd, the board's device tree and `cmdline.txt`. No UEFI is involved, so the files sit
//! beside systemd-boot's and the same arm64 image boots on a Pi and on UEFI machines. The
//! files' contents are [`appliance_spec::bootcfg::raspberry_pi`]'s.

use std::io::Read;
use std::path::Path;

use anyhow::{bail, Context, Result};

use crate::partitions::{self, SECTOR};

use appliance_spec::bootcfg::raspberry_pi::{cmdline_path, cmdline_txt, config_txt, slot_of};
use appliance_spec::esp::raspberry_pi::{
    belongs_to_slot, CMDLINE_TXT, CONFIG_TXT, REQUIRED_DEVICE_TREES, REQUIRED_FIRMWARE,
};
use appliance_spec::esp::{self, INITRD, KERNEL};
use appliance_spec::layout::Table;
use appliance_spec::Slot;

use super::BootInputs;
use crate::filesystems::esp::{EspFile, EspSource};

/// The firmware at the top of the ESP, where the Pi's firmware looks for it; config.txt
/// naming slot A; slot A's device trees and cmdline.txt beside its kernel and initrd.
pub fn esp_files(inputs: &BootInputs) -> Vec<EspFile> {
    let slot = inputs.slot_a();
    let mut files: Vec<EspFile> = inputs
        .raspberry_pi_files
        .iter()
        .map(|(name, path)| EspFile {
            path: if belongs_to_slot(name) {
                esp::slot_file(slot.slot, name)
            } else {
                name.clone()
            },
            source: EspSource::File(path.clone()),
        })
        .collect();
    files.extend([
        EspFile {
            path: CONFIG_TXT.into(),
            source: EspSource::Bytes(config_txt(slot.slot).into_bytes()),
        },
        EspFile {
            path: cmdline_path(slot.slot),
            source: EspSource::Bytes(cmdline_txt(&slot).into_bytes()),
        },
    ]);
    files
}

/// What the structural check found.
#[derive(Debug)]
pub struct PiCheck {
    pub files: Vec<String>,
    pub cmdline: String,
}

/// Checks an image the way the Pi firmware will read it: the top of the ESP holds the
/// firmware and config.txt; the slot directory config.txt names holds the kernel and initrd it
/// names, a Pi 4 device tree and cmdline.txt; cmdline.txt names the root hash and the
/// PARTUUIDs of that slot's root and verity partitions in this image's GPT.
pub fn check_image(image: &Path) -> Result<PiCheck> {
    let entries = partitions::read_table(image)?;
    let table = Table::new(&entries);
    let esp = table
        .esp()
        .context("no EFI system partition: the Pi firmware needs a FAT partition to boot from")?;
    let file = std::fs::File::open(image)?;
    let slice =
        fscommon::StreamSlice::new(file, esp.first_lba * SECTOR, (esp.last_lba + 1) * SECTOR)?;
    let fs = fatfs::FileSystem::new(fscommon::BufStream::new(slice), fatfs::FsOptions::new())?;
    let top = fs.root_dir();
    let list = |dir: &fatfs::Dir<'_, _>| -> Vec<String> {
        dir.iter()
            .filter_map(|e| e.ok())
            .map(|e| e.file_name())
            .filter(|n| n != "." && n != "..")
            .collect()
    };
    let read = |path: &str| -> Result<String> {
        let mut s = String::new();
        top.open_file(path)
            .with_context(|| format!("the ESP has no {path}"))?
            .read_to_string(&mut s)?;
        Ok(s)
    };
    let names = list(&top);
    let mut problems = Vec::new();
    for needed in REQUIRED_FIRMWARE.iter().chain(&[CONFIG_TXT]) {
        if !names.iter().any(|n| n == needed) {
            problems.push(format!("{needed} is missing from the ESP"));
        }
    }
    let config = read(CONFIG_TXT).unwrap_or_default();
    let Some(slot) = slot_of(&config) else {
        problems.push("config.txt names no slot directory (os_prefix)".into());
        bail!(
            "the Raspberry Pi boot files are not right: {}",
            problems.join("; ")
        );
    };
    let slot_dir = esp::slot_dir(slot);
    let in_slot = top
        .open_dir(&slot_dir)
        .map(|d| list(&d))
        .unwrap_or_default();
    let mut wanted: Vec<String> = config
        .lines()
        .filter_map(|line| {
            line.strip_prefix("kernel=").or_else(|| {
                line.strip_prefix("initramfs ")
                    .and_then(|r| r.split_whitespace().next())
            })
        })
        .map(str::to_string)
        .collect();
    if wanted.is_empty() {
        problems.push(format!(
            "config.txt names no kernel (kernel={KERNEL}, initramfs {INITRD})"
        ));
    }
    wanted.extend(REQUIRED_DEVICE_TREES.iter().map(|s| s.to_string()));
    wanted.push(CMDLINE_TXT.into());
    for f in wanted {
        if !in_slot.contains(&f) {
            problems.push(format!("{slot_dir}/{f} is missing from the ESP"));
        }
    }
    let cmdline = read(&cmdline_path(slot)).unwrap_or_default();
    if cmdline.trim_end().contains('\n') {
        problems.push("cmdline.txt must be a single line".into());
    }
    let arg = |key: &str| {
        cmdline
            .split_whitespace()
            .find_map(|a| a.strip_prefix(key).map(str::to_string))
    };
    let root = table.root(slot);
    let verity = table.verity(slot);
    match (arg("roothash="), root, verity) {
        (Some(h), Some(root), Some(verity)) if h.len() == 64 => {
            let data_uuid = format!("PARTUUID={}", root.part_guid);
            let hash_uuid = format!("PARTUUID={}", verity.part_guid);
            if arg("systemd.verity_root_data=").as_deref() != Some(data_uuid.as_str()) {
                problems.push(format!(
                    "cmdline.txt does not name {} as {data_uuid}",
                    slot.root_label()
                ));
            }
            if arg("systemd.verity_root_hash=").as_deref() != Some(hash_uuid.as_str()) {
                problems.push(format!(
                    "cmdline.txt does not name {} as {hash_uuid}",
                    slot.verity_label()
                ));
            }
            // The build follows the Discoverable Partitions convention for slot A: its
            // partition UUIDs derive from the root hash.
            if slot == Slot::A && !root.part_guid.simple().to_string().starts_with(&h[..32]) {
                problems.push("root-a's PARTUUID does not match the root hash".into());
            }
        }
        (_, None, _) | (_, _, None) => problems.push(format!(
            "the image has no {} or {} partition",
            slot.root_label(),
            slot.verity_label()
        )),
        _ => problems.push("cmdline.txt has no roothash=".into()),
    }
    if !problems.is_empty() {
        bail!(
            "the Raspberry Pi boot files are not right: {}",
            problems.join("; ")
        );
    }
    Ok(PiCheck {
        files: names
            .into_iter()
            .chain(in_slot.into_iter().map(|n| format!("{slot_dir}/{n}")))
            .collect(),
        cmdline: cmdline.trim().to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filesystems::esp::{write_esp, EspFile, EspSource};
    use crate::partitions::{plan, types, write_disk, PartitionSpec};

    const ROOT_HASH: &str = "36b7058f7bb6c708a978ed07579b48268c513c673c6788d50b46f33b49dd6ebc";

    /// A small GPT image laid out like the appliance's, with `files` on its ESP.
    fn image(dir: &Path, files: &[(String, String)]) -> std::path::PathBuf {
        let esp = dir.join("esp.img");
        let entries: Vec<EspFile> = files
            .iter()
            .map(|(p, c)| EspFile {
                path: p.to_string(),
                source: EspSource::Bytes(c.clone().into_bytes()),
            })
            .collect();
        write_esp(&esp, 64 << 20, 0x1234_5678, "ESP", &entries, 0).unwrap();
        let h = hex::decode(ROOT_HASH).unwrap();
        let spec = |label: &str, t, guid: uuid::Uuid, content| PartitionSpec {
            label: label.into(),
            type_guid: t,
            part_guid: guid,
            size: 1 << 20,
            flags: 0,
            content,
        };
        let mut esp_spec = spec("esp", types::ESP, uuid::Uuid::from_u128(1), Some(esp));
        esp_spec.size = 64 << 20;
        let layout = plan(
            uuid::Uuid::from_u128(9),
            vec![
                esp_spec,
                spec(
                    "root-a",
                    types::ROOT_ARM64,
                    uuid::Uuid::from_slice(&h[..16]).unwrap(),
                    None,
                ),
                spec(
                    "verity-a",
                    types::ROOT_VERITY_ARM64,
                    uuid::Uuid::from_slice(&h[16..]).unwrap(),
                    None,
                ),
            ],
        )
        .unwrap();
        let out = dir.join("disk.raw");
        write_disk(&out, &layout, None).unwrap();
        out
    }

    fn good_files() -> Vec<(String, String)> {
        let h = hex::decode(ROOT_HASH).unwrap();
        let root = uuid::Uuid::from_slice(&h[..16]).unwrap();
        let verity = uuid::Uuid::from_slice(&h[16..]).unwrap();
        let cmdline = format!(
            "roothash={ROOT_HASH} systemd.verity_root_data=PARTUUID={root} systemd.verity_root_hash=PARTUUID={verity} ro console=ttyS1,115200\n"
        );
        [
            ("start4.elf", "x".to_string()),
            ("fixup4.dat", "x".into()),
            ("appliance-a/bcm2711-rpi-4-b.dtb", "x".into()),
            ("appliance-a/vmlinuz", "k".into()),
            ("appliance-a/initrd.img", "i".into()),
            ("appliance-a/cmdline.txt", cmdline),
            ("config.txt", config_txt(Slot::A)),
        ]
        .into_iter()
        .map(|(n, c)| (n.to_string(), c))
        .collect()
    }

    #[test]
    fn a_complete_pi_esp_passes() {
        let dir = tempfile::tempdir().unwrap();
        let c = check_image(&image(dir.path(), &good_files())).unwrap();
        assert!(c.cmdline.contains("console=ttyS1,115200"));
        assert!(c.files.iter().any(|f| f == "start4.elf"));
        assert!(
            c.files.iter().any(|f| f == "appliance-a/vmlinuz"),
            "{:?}",
            c.files
        );
    }

    #[test]
    fn missing_firmware_or_kernel_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let files: Vec<_> = good_files()
            .into_iter()
            .filter(|(n, _)| {
                !n.ends_with(".dtb") && !n.ends_with("initrd.img") && n != "fixup4.dat"
            })
            .collect();
        let err = check_image(&image(dir.path(), &files))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("appliance-a/bcm2711-rpi-4-b.dtb is missing"),
            "{err}"
        );
        assert!(err.contains("appliance-a/initrd.img is missing"), "{err}");
        assert!(err.contains("fixup4.dat is missing"), "{err}");
    }

    #[test]
    fn config_naming_no_slot_or_an_empty_slot_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut files = good_files();
        files.retain(|(n, _)| n != "config.txt");
        files.push(("config.txt".into(), "[all]\nkernel=vmlinuz\n".into()));
        let err = check_image(&image(dir.path(), &files))
            .unwrap_err()
            .to_string();
        assert!(err.contains("names no slot directory"), "{err}");
        let mut files = good_files();
        files.retain(|(n, _)| n != "config.txt");
        files.push(("config.txt".into(), config_txt(Slot::B)));
        let err = check_image(&image(dir.path(), &files))
            .unwrap_err()
            .to_string();
        assert!(err.contains("appliance-b/vmlinuz is missing"), "{err}");
    }

    #[test]
    fn cmdline_naming_other_partitions_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut files = good_files();
        let other = uuid::Uuid::from_u128(42);
        files.retain(|(n, _)| !n.ends_with("cmdline.txt"));
        files.push((
            "appliance-a/cmdline.txt".into(),
            format!(
                "roothash={ROOT_HASH} systemd.verity_root_data=PARTUUID={other} systemd.verity_root_hash=PARTUUID={other}\n"
            ),
        ));
        let err = check_image(&image(dir.path(), &files))
            .unwrap_err()
            .to_string();
        assert!(err.contains("does not name root-a"), "{err}");
        assert!(err.contains("does not name verity-a"), "{err}");
    }
}
