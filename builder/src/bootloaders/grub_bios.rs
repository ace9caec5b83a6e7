//! Legacy BIOS boot with GRUB, installed by hand: no `grub-install`, no loop devices.
//!
//! The MBR gets GRUB's `boot.img` code, which loads the first sector of `core.img`
//! (`diskboot.img`) from the start of the GPT BIOS-boot partition; that sector's blocklist
//! loads the rest of core.img. core.img embeds an early config that finds the ESP by its FAT
//! volume uuid, so `normal` then reads `(ESP)/grub/grub.cfg`, which picks the root slot from
//! `(ESP)/grub/grubenv` ([`appliance_spec::bootcfg::grub`]). Offsets come from GRUB 2.06's
//! `include/grub/i386/pc/boot.h` and `util/setup.c`.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, ensure, Context, Result};
use appliance_spec::bootcfg::grub::{main_cfg, slot_cfg, SlotEnv};
use appliance_spec::esp;

use super::BootInputs;
use crate::filesystems::esp::{EspFile, EspSource};

/// GRUB's configuration on the ESP (core.img goes into the BIOS boot partition, see [`build`]):
/// the static grub.cfg, the environment that makes slot A boot, and slot A's fragment.
pub fn esp_files(inputs: &BootInputs) -> Result<Vec<EspFile>> {
    let slot = inputs.slot_a();
    Ok(vec![
        EspFile {
            path: esp::GRUB_CFG.into(),
            source: EspSource::Bytes(main_cfg(inputs.name, inputs.timeout).into_bytes()),
        },
        EspFile {
            path: esp::GRUBENV.into(),
            source: EspSource::Bytes(SlotEnv::first_image().to_block()?),
        },
        EspFile {
            path: esp::slot_grub_cfg(slot.slot),
            source: EspSource::Bytes(slot_cfg(&slot).into_bytes()),
        },
    ])
}

/// Default location of the i386-pc GRUB modules (Debian package grub-pc-bin).
pub const DEFAULT_MODULES_DIR: &str = "/usr/lib/grub/i386-pc";

/// Modules embedded in core.img: everything GRUB needs before it can read the ESP, plus the
/// commands grub.cfg uses (there is no module directory on the ESP to load more from).
pub const MODULES: &[&str] = &[
    "biosdisk",
    "part_gpt",
    "fat",
    "normal",
    "linux",
    "configfile",
    "search",
    "search_fs_uuid",
    "echo",
    "test",
    // grubenv: the slot choice (load_env) and the mark of a trial boot (save_env).
    "loadenv",
    "serial",
    "terminal",
    // Lets a config power the machine off, e.g. after a failed boot or in tests.
    "halt",
];

const SECTOR: usize = 512;
/// boot.img: `kernel_sector` (u64), the LBA of core.img's first sector.
const BOOT_KERNEL_SECTOR: usize = 0x5c;
/// boot.img: `boot_drive`; 0xff means "use the drive number the BIOS passed in DL".
const BOOT_DRIVE: usize = 0x64;
/// boot.img: the `jmp` at `boot_drive_check`, which grub-bios-setup NOPs for hard disks.
const BOOT_DRIVE_CHECK: usize = 0x66;
/// diskboot.img (core.img sector 0): first blocklist entry `{u64 start, u16 len, u16 segment}`.
const DISKBOOT_BLOCKLIST_START: usize = 0x1f4;
const DISKBOOT_BLOCKLIST_LEN: usize = 0x1fc;
const DISKBOOT_BLOCKLIST_SEGMENT: usize = 0x1fe;

/// What has to be written to the disk for BIOS boot.
#[derive(Debug, Clone)]
pub struct GrubBios {
    /// Patched core.img, padded to whole sectors; write it at the BIOS-boot partition start.
    pub core_img: Vec<u8>,
    /// Patched boot.img code for the (protective) MBR, bytes 0..440.
    pub mbr_boot_code: [u8; 440],
}

/// Builds core.img with `grub-mkimage -O i386-pc` from `modules_dir` (normally
/// [`DEFAULT_MODULES_DIR`]) with an early config that finds the ESP by `esp_volume_uuid`
/// (`ABCD-1234`) and makes `(ESP)/grub` the prefix, so `normal` loads `(ESP)/grub/grub.cfg`.
/// Patches core.img's blocklist and boot.img for a BIOS-boot partition at
/// `bios_boot_start_lba` (512-byte sectors) and fails if core.img exceeds `bios_boot_size`.
pub fn build(
    modules_dir: &Path,
    esp_volume_uuid: &str,
    bios_boot_start_lba: u64,
    bios_boot_size: u64,
    workdir: &Path,
) -> Result<GrubBios> {
    ensure!(
        is_fat_uuid(esp_volume_uuid),
        "ESP volume uuid {esp_volume_uuid:?} is not of the form ABCD-1234"
    );
    // LBA 0 is the MBR and 1..33 the primary GPT; core.img cannot live there.
    ensure!(
        bios_boot_start_lba >= 34,
        "BIOS-boot partition start LBA {bios_boot_start_lba} overlaps the GPT"
    );
    for file in ["boot.img", "kernel.img", "diskboot.img", "moddep.lst"] {
        ensure!(
            modules_dir.join(file).is_file(),
            "{} has no {file}; install the Debian package grub-pc-bin",
            modules_dir.display()
        );
    }

    let early_cfg = workdir.join("grub-early.cfg");
    std::fs::write(&early_cfg, early_config(esp_volume_uuid))
        .with_context(|| format!("writing {}", early_cfg.display()))?;
    let core_path = workdir.join("core.img");
    let mkimage = crate::host::find_program("grub-mkimage").context(
        "grub-mkimage not found; install the Debian packages grub-common and grub-pc-bin",
    )?;
    let output = Command::new(&mkimage)
        .arg("--directory")
        .arg(modules_dir)
        .args(["--format", "i386-pc", "--prefix", "/grub", "--output"])
        .arg(&core_path)
        .arg("--config")
        .arg(&early_cfg)
        .args(MODULES)
        .output()
        .with_context(|| format!("running {}", mkimage.display()))?;
    if !output.status.success() {
        bail!(
            "grub-mkimage failed ({}):\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim_end()
        );
    }

    let core =
        std::fs::read(&core_path).with_context(|| format!("reading {}", core_path.display()))?;
    let core_img = patch_core(core, bios_boot_start_lba)?;
    ensure!(
        core_img.len() as u64 <= bios_boot_size,
        "core.img is {} bytes but the BIOS-boot partition holds only {bios_boot_size}",
        core_img.len()
    );

    let boot_path = modules_dir.join("boot.img");
    let boot =
        std::fs::read(&boot_path).with_context(|| format!("reading {}", boot_path.display()))?;
    let mbr_boot_code = patch_boot(&boot, bios_boot_start_lba)?;
    Ok(GrubBios {
        core_img,
        mbr_boot_code,
    })
}

fn is_fat_uuid(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 9
        && b[4] == b'-'
        && b.iter()
            .enumerate()
            .all(|(i, c)| i == 4 || c.is_ascii_hexdigit())
}

/// Early config run by core.img's rescue parser (plain commands only, no `if`).
fn early_config(esp_volume_uuid: &str) -> String {
    format!(
        "search --no-floppy --fs-uuid --set=root {esp_volume_uuid}\n\
         set prefix=($root)/grub\n"
    )
}

/// Points diskboot.img's first blocklist at the sectors following it and pads to a sector.
fn patch_core(mut core: Vec<u8>, start_lba: u64) -> Result<Vec<u8>> {
    ensure!(core.len() > SECTOR, "core.img is only {} bytes", core.len());
    let sectors = core.len().div_ceil(SECTOR);
    let len = u16::from_le_bytes([
        core[DISKBOOT_BLOCKLIST_LEN],
        core[DISKBOOT_BLOCKLIST_LEN + 1],
    ]);
    let segment = u16::from_le_bytes([
        core[DISKBOOT_BLOCKLIST_SEGMENT],
        core[DISKBOOT_BLOCKLIST_SEGMENT + 1],
    ]);
    // grub-mkimage fills len = sectors after the first; a mismatch means an unexpected layout.
    ensure!(
        usize::from(len) == sectors - 1 && segment == 0x0820,
        "unexpected diskboot.img blocklist in core.img (len {len}, segment {segment:#x}, {sectors} sectors)"
    );
    core[DISKBOOT_BLOCKLIST_START..DISKBOOT_BLOCKLIST_START + 8]
        .copy_from_slice(&(start_lba + 1).to_le_bytes());
    core.resize(sectors * SECTOR, 0);
    Ok(core)
}

/// Patches boot.img for a hard disk whose core.img starts at `start_lba`; returns bytes 0..440.
fn patch_boot(boot: &[u8], start_lba: u64) -> Result<[u8; 440]> {
    ensure!(
        boot.len() == SECTOR && boot[510] == 0x55 && boot[511] == 0xaa,
        "boot.img is not a 512-byte boot sector"
    );
    ensure!(
        boot[BOOT_DRIVE_CHECK] == 0xeb
            || boot[BOOT_DRIVE_CHECK..BOOT_DRIVE_CHECK + 2] == [0x90, 0x90],
        "boot.img has no jmp at boot_drive_check ({:#04x}); unsupported GRUB version",
        boot[BOOT_DRIVE_CHECK]
    );
    let mut code = [0u8; 440];
    code.copy_from_slice(&boot[..440]);
    code[BOOT_KERNEL_SECTOR..BOOT_KERNEL_SECTOR + 8].copy_from_slice(&start_lba.to_le_bytes());
    code[BOOT_DRIVE] = 0xff;
    // Without this NOP, boot.img would force drive 0x80 unless DL looks like a hard disk.
    code[BOOT_DRIVE_CHECK] = 0x90;
    code[BOOT_DRIVE_CHECK + 1] = 0x90;
    Ok(code)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filesystems::esp;
    use appliance_spec::esp::{slot_grub_cfg, GRUBENV, GRUB_CFG};
    use appliance_spec::Slot;
    use std::collections::BTreeMap;
    use std::fs::{File, OpenOptions};
    use std::io::{Seek, SeekFrom, Write};
    use std::path::PathBuf;
    use std::process::{Child, Stdio};
    use std::time::{Duration, Instant};

    const BIOS_BOOT_LBA: u64 = 2048;
    const BIOS_BOOT_SECTORS: u64 = 2048; // 1 MiB
    const ESP_LBA: u64 = BIOS_BOOT_LBA + BIOS_BOOT_SECTORS;
    const ESP_BYTES: u64 = 64 * 1024 * 1024;
    const ESP_ID: u32 = 0x5eed_b105;

    fn require(tool: &str, package: &str) -> PathBuf {
        crate::host::find_program(tool).unwrap_or_else(|| {
            panic!("{tool} is required by this test but missing: run `appliance doctor --install` (package {package})")
        })
    }

    /// Writes a GPT disk: protective MBR (with `boot_code`), BIOS-boot partition with `core`,
    /// and the ESP image at `ESP_LBA`.
    fn make_disk(path: &Path, boot_code: Option<[u8; 440]>, core: &[u8], esp_img: &Path) {
        let esp_sectors = ESP_BYTES / 512;
        let total_sectors = ESP_LBA + esp_sectors + 2048;
        let mut f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
            .unwrap();
        f.set_len(total_sectors * 512).unwrap();
        let mut mbr =
            gpt::mbr::ProtectiveMBR::with_lb_size(u32::try_from(total_sectors - 1).unwrap());
        if let Some(code) = boot_code {
            mbr.set_bootcode(code);
        }
        mbr.set_disk_signature(*b"APPL");
        mbr.overwrite_lba0(&mut f).unwrap();
        let mut disk = gpt::GptConfig::new()
            .writable(true)
            .logical_block_size(gpt::disk::LogicalBlockSize::Lb512)
            .create_from_device(f, Some(uuid::Uuid::from_u128(0x1111)))
            .unwrap();
        let mut parts = BTreeMap::new();
        parts.insert(
            1,
            gpt::partition::Partition {
                part_type_guid: gpt::partition_types::BIOS,
                part_guid: uuid::Uuid::from_u128(0x2222),
                first_lba: BIOS_BOOT_LBA,
                last_lba: BIOS_BOOT_LBA + BIOS_BOOT_SECTORS - 1,
                flags: 0,
                name: "bios-boot".into(),
            },
        );
        parts.insert(
            2,
            gpt::partition::Partition {
                part_type_guid: gpt::partition_types::EFI,
                part_guid: uuid::Uuid::from_u128(0x3333),
                first_lba: ESP_LBA,
                last_lba: ESP_LBA + esp_sectors - 1,
                flags: 0,
                name: "esp".into(),
            },
        );
        disk.update_partitions(parts).unwrap();
        let mut f = disk.write().unwrap();
        f.seek(SeekFrom::Start(BIOS_BOOT_LBA * 512)).unwrap();
        f.write_all(core).unwrap();
        f.seek(SeekFrom::Start(ESP_LBA * 512)).unwrap();
        std::io::copy(&mut File::open(esp_img).unwrap(), &mut f).unwrap();
        f.sync_all().unwrap();
    }

    /// Kills and reaps QEMU however the test ends.
    struct Qemu(Child);
    impl Drop for Qemu {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    /// Boots `disk` under TCG, waiting for every needle in `want` on the serial log.
    fn boot_until(
        disk: &Path,
        log: &Path,
        firmware: &[String],
        want: &[&str],
        timeout: Duration,
    ) -> String {
        let qemu_bin = require("qemu-system-x86_64", "qemu-system-x86");
        let mut cmd = Command::new(qemu_bin);
        cmd.args([
            "-machine",
            "q35",
            "-accel",
            "tcg",
            "-cpu",
            "max",
            "-m",
            "256",
            "-nodefaults",
        ])
        .args(["-display", "none", "-no-reboot", "-monitor", "none"])
        .args(firmware)
        .arg("-serial")
        .arg(format!("file:{}", log.display()))
        .arg("-drive")
        .arg(format!("file={},format=raw,if=virtio", disk.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
        let start = Instant::now();
        let mut qemu = Qemu(cmd.spawn().unwrap());
        loop {
            let text =
                String::from_utf8_lossy(&std::fs::read(log).unwrap_or_default()).into_owned();
            if want.iter().all(|w| text.contains(w)) {
                eprintln!("boot marker after {:?}", start.elapsed());
                return text;
            }
            if let Some(status) = qemu.0.try_wait().unwrap() {
                panic!("QEMU exited ({status}) before {want:?} appeared; serial log:\n{text}");
            }
            if start.elapsed() > timeout {
                panic!("{want:?} not seen within {timeout:?}; serial log:\n{text}");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The slot grubenv on the disk's ESP says.
    fn grubenv_on(disk: &Path) -> SlotEnv {
        use std::io::Read;
        let f = File::open(disk).unwrap();
        let slice =
            fscommon::StreamSlice::new(f, ESP_LBA * 512, ESP_LBA * 512 + ESP_BYTES).unwrap();
        let fs = fatfs::FileSystem::new(slice, fatfs::FsOptions::new()).unwrap();
        let mut block = Vec::new();
        fs.root_dir()
            .open_file(GRUBENV)
            .unwrap()
            .read_to_end(&mut block)
            .unwrap();
        SlotEnv::from_env(&appliance_spec::bootcfg::grub::GrubEnv::parse(&block).unwrap())
    }

    /// A BIOS disk with the real grub.cfg and `env` on its ESP; each slot's fragment prints
    /// which slot it is and powers off instead of starting a kernel.
    fn grub_disk(dir: &Path, name: &str, env: &SlotEnv) -> PathBuf {
        let work = dir.join(name);
        std::fs::create_dir_all(&work).unwrap();
        let grub = build(
            Path::new(DEFAULT_MODULES_DIR),
            &esp::volume_uuid_string(ESP_ID),
            BIOS_BOOT_LBA,
            BIOS_BOOT_SECTORS * 512,
            &work,
        )
        .unwrap();
        let bytes = |path: String, b: Vec<u8>| EspFile {
            path,
            source: EspSource::Bytes(b),
        };
        let mut files = vec![
            bytes(GRUB_CFG.into(), main_cfg("test", 0).into_bytes()),
            bytes(GRUBENV.into(), env.to_block().unwrap()),
        ];
        for slot in Slot::ALL {
            files.push(bytes(
                slot_grub_cfg(slot),
                format!("echo GRUB-SLOT-{slot}-BOOTS\nhalt\n").into_bytes(),
            ));
        }
        let esp_img = work.join("esp.img");
        esp::write_esp(&esp_img, ESP_BYTES, ESP_ID, "ESP", &files, 0).unwrap();
        let disk = work.join("disk.img");
        make_disk(&disk, Some(grub.mbr_boot_code), &grub.core_img, &esp_img);
        esp::fsck_range(&disk, ESP_LBA * 512, ESP_BYTES).unwrap();
        disk
    }

    fn boot_grub(disk: &Path, n: u32, slot: Slot) {
        let log = disk.with_file_name(format!("serial-{n}.log"));
        let want = format!("GRUB-SLOT-{slot}-BOOTS");
        let other = format!("GRUB-SLOT-{}-BOOTS", slot.other());
        let text = boot_until(disk, &log, &[], &[&want], Duration::from_secs(60));
        assert!(!text.contains(&other), "both slots started:\n{text}");
        assert!(!text.contains("error:"), "GRUB reported an error:\n{text}");
    }

    /// SeaBIOS boots GRUB from the BIOS-boot partition; the real grub.cfg reads grubenv from
    /// the ESP, boots a slot on trial once (saving its mark on the FAT file system first) and
    /// then the committed slot again, and boots a committed slot without writing anything.
    #[test]
    fn seabios_boots_grub_which_tries_a_slot_once() {
        require("qemu-system-x86_64", "qemu-system-x86");
        let tmp = tempfile::tempdir().unwrap();

        let mut armed = SlotEnv::first_image();
        armed.arm(Slot::B);
        let disk = grub_disk(tmp.path(), "armed", &armed);
        boot_grub(&disk, 1, Slot::B);
        let after = grubenv_on(&disk);
        assert!(after.b.tried, "the trial was not marked: {after:?}");
        assert_eq!(after, armed.boot().1);
        esp::fsck_range(&disk, ESP_LBA * 512, ESP_BYTES).unwrap();
        // Nobody committed slot B: the next boot is slot A's, and changes nothing.
        boot_grub(&disk, 2, Slot::A);
        assert_eq!(grubenv_on(&disk), after);

        let mut committed = armed;
        committed.commit(Slot::B);
        let disk = grub_disk(tmp.path(), "committed", &committed);
        boot_grub(&disk, 1, Slot::B);
        assert_eq!(grubenv_on(&disk), committed);

        // The first image's environment boots slot A.
        let disk = grub_disk(tmp.path(), "first", &SlotEnv::first_image());
        boot_grub(&disk, 1, Slot::A);
    }

    #[test]
    fn ovmf_loads_systemd_boot_from_esp() {
        require("qemu-system-x86_64", "qemu-system-x86");
        let sd_boot = Path::new("/usr/lib/systemd/boot/efi/systemd-bootx64.efi");
        assert!(
            sd_boot.is_file(),
            "{} missing: run `appliance doctor --install` (package systemd-boot-efi)",
            sd_boot.display()
        );
        let code = Path::new("/usr/share/OVMF/OVMF_CODE_4M.fd");
        let vars_template = Path::new("/usr/share/OVMF/OVMF_VARS_4M.fd");
        assert!(
            code.is_file() && vars_template.is_file(),
            "OVMF missing: run `appliance doctor --install` (package ovmf)"
        );

        let tmp = tempfile::tempdir().unwrap();
        let esp_img = tmp.path().join("esp.img");
        let files = [EspFile {
            path: "EFI/BOOT/BOOTX64.EFI".into(),
            source: EspSource::File(sd_boot.into()),
        }];
        esp::write_esp(&esp_img, ESP_BYTES, ESP_ID, "ESP", &files, 0).unwrap();
        esp::fsck(&esp_img).unwrap();
        let disk = tmp.path().join("disk.img");
        make_disk(&disk, None, &[], &esp_img);

        let vars = tmp.path().join("vars.fd");
        std::fs::copy(vars_template, &vars).unwrap();
        let firmware = [
            "-drive".to_string(),
            format!(
                "if=pflash,format=raw,unit=0,readonly=on,file={}",
                code.display()
            ),
            "-drive".to_string(),
            format!("if=pflash,format=raw,unit=1,file={}", vars.display()),
        ];
        let log = tmp.path().join("serial.log");
        // OVMF logs the removable-media boot; systemd-boot with no entries then shows a menu
        // holding only its built-in "Reboot Into Firmware Interface" entry.
        let want = ["BdsDxe: starting Boot", "Reboot Into Firmware Interface"];
        boot_until(&disk, &log, &firmware, &want, Duration::from_secs(60));
    }

    #[test]
    fn patches_boot_and_core_images() {
        let mut boot = vec![0u8; 512];
        boot[0x66] = 0xeb;
        boot[0x67] = 0x05;
        boot[510] = 0x55;
        boot[511] = 0xaa;
        let code = patch_boot(&boot, 2048).unwrap();
        assert_eq!(&code[0x5c..0x64], &2048u64.to_le_bytes());
        assert_eq!(code[0x64], 0xff);
        assert_eq!(&code[0x66..0x68], &[0x90, 0x90]);

        let mut core = vec![0u8; 3 * 512 - 100];
        core[0x1f4] = 2;
        core[0x1fc..0x1fe].copy_from_slice(&2u16.to_le_bytes());
        core[0x1fe..0x200].copy_from_slice(&0x0820u16.to_le_bytes());
        let core = patch_core(core, 2048).unwrap();
        assert_eq!(core.len(), 3 * 512);
        assert_eq!(&core[0x1f4..0x1fc], &2049u64.to_le_bytes());
    }

    #[test]
    fn build_checks_inputs_and_size() {
        if !Path::new(DEFAULT_MODULES_DIR).join("boot.img").is_file() {
            panic!("{DEFAULT_MODULES_DIR} missing: run `appliance doctor --install` (packages grub-pc-bin, grub-common)");
        }
        let tmp = tempfile::tempdir().unwrap();
        let dir = Path::new(DEFAULT_MODULES_DIR);
        assert!(build(dir, "not-a-uuid", 2048, 1 << 20, tmp.path()).is_err());
        assert!(build(dir, "1234-ABCD", 1, 1 << 20, tmp.path()).is_err());
        let err = build(dir, "1234-ABCD", 2048, 64 * 1024, tmp.path())
            .unwrap_err()
            .to_string();
        assert!(err.contains("BIOS-boot partition holds only"), "{err}");
        let err = build(tmp.path(), "1234-ABCD", 2048, 1 << 20, tmp.path())
            .unwrap_err()
            .to_string();
        assert!(err.contains("grub-pc-bin"), "{err}");
        let ok = build(dir, "1234-ABCD", 2048, 1 << 20, tmp.path()).unwrap();
        assert_eq!(ok.core_img.len() % 512, 0);
        assert_eq!(&ok.core_img[0x1f4..0x1fc], &2049u64.to_le_bytes());
    }
}
