//! Raspberry Pi 4 boot: the Pi's own firmware reads the first FAT partition (our ESP, on GPT),
//! loads `config.txt`, the kernel, the initrd and the board's device tree, and passes
//! `cmdline.txt` to the kernel. No UEFI is involved, so the files sit beside systemd-boot's and
//! the same arm64 image boots on a Pi and on UEFI machines.

use std::io::Read;
use std::path::Path;

use anyhow::{bail, Context, Result};

use crate::partitions::{self, SECTOR};

use appliance_spec::esp::raspberry_pi::{CMDLINE_TXT, CONFIG_TXT, INITRD, KERNEL, REQUIRED};
use appliance_spec::layout::Table;
use appliance_spec::Slot;

use super::BootInputs;
use crate::filesystems::esp::{EspFile, EspSource};

/// The firmware, device trees, a second copy of the kernel and initrd, config.txt and
/// cmdline.txt at the top of the ESP, where the Pi's firmware looks for them.
pub fn esp_files(inputs: &BootInputs) -> Vec<EspFile> {
    let mut files: Vec<EspFile> = inputs
        .raspberry_pi_files
        .iter()
        .map(|(name, path)| EspFile {
            path: name.clone(),
            source: EspSource::File(path.clone()),
        })
        .collect();
    files.extend([
        EspFile {
            path: KERNEL.into(),
            source: EspSource::File(inputs.kernel.to_path_buf()),
        },
        EspFile {
            path: INITRD.into(),
            source: EspSource::File(inputs.initrd.to_path_buf()),
        },
        EspFile {
            path: CONFIG_TXT.into(),
            source: EspSource::Bytes(config_txt().into_bytes()),
        },
        EspFile {
            path: CMDLINE_TXT.into(),
            source: EspSource::Bytes(
                cmdline_txt(&super::root_cmdline(inputs.root, inputs.extra_cmdline)).into_bytes(),
            ),
        },
    ]);
    files
}

/// `config.txt` for the Pi firmware.
pub fn config_txt() -> String {
    format!(
        "# Raspberry Pi firmware settings, written by appliance.\n\
         [all]\n\
         arm_64bit=1\n\
         # Device trees from the Debian kernel, with their upstream names.\n\
         upstream_kernel=1\n\
         enable_uart=1\n\
         kernel={KERNEL}\n\
         initramfs {INITRD} followkernel\n\
         disable_overscan=1\n"
    )
}

/// `cmdline.txt`: one line. The Pi's serial console is the mini UART, ttyS1 with upstream
/// device trees.
pub fn cmdline_txt(cmdline_without_consoles: &str) -> String {
    format!(
        "{cmdline_without_consoles} {}\n",
        appliance_spec::cmdline::raspberry_pi_console_args().join(" ")
    )
}

/// What the structural check found.
#[derive(Debug)]
pub struct PiCheck {
    pub files: Vec<String>,
    pub cmdline: String,
}

/// Checks an image the way the Pi firmware will read it: the ESP holds the firmware, a Pi 4
/// device tree, config.txt and cmdline.txt; config.txt's kernel and initrd exist; cmdline.txt
/// names the root hash and the PARTUUIDs of root-a and verity-a in this image's GPT.
pub fn check_image(image: &Path) -> Result<PiCheck> {
    let entries = partitions::read_table(image)?;
    let table = Table::new(&entries);
    let esp = table
        .esp()
        .context("no EFI system partition: the Pi firmware needs a FAT partition to boot from")?;
    let root = table
        .root(Slot::A)
        .with_context(|| format!("no {} partition", Slot::A.root_label()))?;
    let verity = table
        .verity(Slot::A)
        .with_context(|| format!("no {} partition", Slot::A.verity_label()))?;
    let file = std::fs::File::open(image)?;
    let slice =
        fscommon::StreamSlice::new(file, esp.first_lba * SECTOR, (esp.last_lba + 1) * SECTOR)?;
    let fs = fatfs::FileSystem::new(fscommon::BufStream::new(slice), fatfs::FsOptions::new())?;
    let dir = fs.root_dir();
    let names: Vec<String> = dir
        .iter()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name())
        .collect();
    let read = |name: &str| -> Result<String> {
        let mut s = String::new();
        dir.open_file(name)
            .with_context(|| format!("the ESP has no {name}"))?
            .read_to_string(&mut s)?;
        Ok(s)
    };
    let mut problems = Vec::new();
    for needed in REQUIRED.iter().chain(&[CONFIG_TXT, CMDLINE_TXT]) {
        if !names.iter().any(|n| n == needed) {
            problems.push(format!("{needed} is missing from the ESP"));
        }
    }
    let config = read(CONFIG_TXT).unwrap_or_default();
    for line in config.lines() {
        let wanted = line.strip_prefix("kernel=").or_else(|| {
            line.strip_prefix("initramfs ")
                .and_then(|r| r.split_whitespace().next())
        });
        if let Some(f) = wanted {
            if !names.iter().any(|n| n == f) {
                problems.push(format!("config.txt names {f}, which is not on the ESP"));
            }
        }
    }
    let cmdline = read(CMDLINE_TXT).unwrap_or_default();
    if cmdline.trim_end().contains('\n') {
        problems.push("cmdline.txt must be a single line".into());
    }
    let arg = |key: &str| {
        cmdline
            .split_whitespace()
            .find_map(|a| a.strip_prefix(key).map(str::to_string))
    };
    match arg("roothash=") {
        Some(h) if h.len() == 64 => {
            // The Discoverable Partitions convention: partition UUIDs derive from the root hash.
            let data_uuid = format!("PARTUUID={}", root.part_guid);
            let hash_uuid = format!("PARTUUID={}", verity.part_guid);
            if arg("systemd.verity_root_data=").as_deref() != Some(data_uuid.as_str()) {
                problems.push(format!("cmdline.txt does not name root-a as {data_uuid}"));
            }
            if arg("systemd.verity_root_hash=").as_deref() != Some(hash_uuid.as_str()) {
                problems.push(format!("cmdline.txt does not name verity-a as {hash_uuid}"));
            }
            if !root.part_guid.simple().to_string().starts_with(&h[..32]) {
                problems.push("root-a's PARTUUID does not match the root hash".into());
            }
        }
        _ => problems.push("cmdline.txt has no roothash=".into()),
    }
    if !problems.is_empty() {
        bail!(
            "the Raspberry Pi boot files are not right: {}",
            problems.join("; ")
        );
    }
    Ok(PiCheck {
        files: names,
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
    fn image(dir: &Path, files: &[(&str, String)]) -> std::path::PathBuf {
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

    fn good_files() -> Vec<(&'static str, String)> {
        let h = hex::decode(ROOT_HASH).unwrap();
        let root = uuid::Uuid::from_slice(&h[..16]).unwrap();
        let verity = uuid::Uuid::from_slice(&h[16..]).unwrap();
        let cmdline = format!(
            "roothash={ROOT_HASH} systemd.verity_root_data=PARTUUID={root} systemd.verity_root_hash=PARTUUID={verity} ro"
        );
        vec![
            ("start4.elf", "x".into()),
            ("fixup4.dat", "x".into()),
            ("bcm2711-rpi-4-b.dtb", "x".into()),
            (KERNEL, "k".into()),
            (INITRD, "i".into()),
            ("config.txt", config_txt()),
            ("cmdline.txt", cmdline_txt(&cmdline)),
        ]
    }

    #[test]
    fn a_complete_pi_esp_passes() {
        let dir = tempfile::tempdir().unwrap();
        let c = check_image(&image(dir.path(), &good_files())).unwrap();
        assert!(c.cmdline.contains("console=ttyS1,115200"));
        assert!(c.files.iter().any(|f| f == "start4.elf"));
    }

    #[test]
    fn missing_firmware_or_kernel_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let files: Vec<_> = good_files()
            .into_iter()
            .filter(|(n, _)| *n != "bcm2711-rpi-4-b.dtb" && *n != INITRD)
            .collect();
        let err = check_image(&image(dir.path(), &files))
            .unwrap_err()
            .to_string();
        assert!(err.contains("bcm2711-rpi-4-b.dtb is missing"), "{err}");
        assert!(err.contains("config.txt names initrd.img"), "{err}");
    }

    #[test]
    fn cmdline_naming_other_partitions_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut files = good_files();
        let other = uuid::Uuid::from_u128(42);
        files.retain(|(n, _)| *n != "cmdline.txt");
        files.push((
            "cmdline.txt",
            cmdline_txt(&format!(
                "roothash={ROOT_HASH} systemd.verity_root_data=PARTUUID={other} systemd.verity_root_hash=PARTUUID={other}"
            )),
        ));
        let err = check_image(&image(dir.path(), &files))
            .unwrap_err()
            .to_string();
        assert!(err.contains("does not name root-a"), "{err}");
        assert!(err.contains("does not name verity-a"), "{err}");
    }
}
