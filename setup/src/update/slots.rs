//! Which root slot runs, from which disk, and where the other slot's partitions are.
//!
//! The running root is `/dev/mapper/root`, the dm-verity device the initrd built on the slot's
//! root and verity partitions (found in sysfs by its name, `/sys/block/dm-N/dm/name`); sysfs
//! names them (`/sys/block/dm-N/slaves`) and their GPT labels (`PARTNAME` in their uevent), and
//! their parent directory is the disk. Only that disk's partitions are ever written: a second
//! disk carrying the same image has partitions with the same labels. The PARTUUIDs the kernel
//! command line needs come from the disk's GPT.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use appliance_spec::layout::LABEL_ESP;
use appliance_spec::Slot;

use crate::paths::Paths;

/// The running system's root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Running {
    pub slot: Slot,
    /// Kernel name of the disk the root comes from (`vda`, `nvme0n1`, `mmcblk0`).
    pub disk: String,
    /// `roothash=` from the kernel command line.
    pub root_hash: Option<String>,
}

/// One partition of the root's disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    /// Kernel name (`vda4`).
    pub name: String,
    /// GPT partition name (`root-b`).
    pub label: String,
    /// The device node (under the paths' root).
    pub device: PathBuf,
    pub bytes: u64,
}

/// A slot's two partitions and the PARTUUIDs its command line names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotDevices {
    pub root: Partition,
    pub verity: Partition,
    pub root_partuuid: uuid::Uuid,
    pub verity_partuuid: uuid::Uuid,
}

fn read_trimmed(path: &Path) -> Result<String> {
    Ok(std::fs::read_to_string(path)
        .with_context(|| format!("cannot read {}", path.display()))?
        .trim()
        .to_string())
}

/// `PARTNAME=` of a partition's uevent (its GPT label), if it has one.
fn partname(paths: &Paths, name: &str) -> Option<String> {
    let uevent =
        std::fs::read_to_string(paths.at(&format!("/sys/class/block/{name}/uevent"))).ok()?;
    uevent
        .lines()
        .find_map(|l| l.strip_prefix("PARTNAME=").map(str::to_string))
}

/// The disk a partition is on: its sysfs directory sits in the disk's.
fn disk_of(paths: &Paths, name: &str) -> Result<String> {
    let dir = paths.at(&format!("/sys/class/block/{name}"));
    if !dir.join("partition").exists() {
        bail!("{name} is not a disk partition");
    }
    let real = std::fs::canonicalize(&dir)
        .with_context(|| format!("cannot resolve {}", paths.display(&dir)))?;
    real.parent()
        .and_then(|p| p.file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .with_context(|| format!("{name} has no parent disk in sysfs"))
}

/// The device-mapper device named root (`dm-N`), found by its name in sysfs: `/dev/mapper/root`
/// may be a symlink to it (udev's) or a device node of its own (made without udev).
fn root_dm(paths: &Paths) -> Option<String> {
    let mut names: Vec<String> = std::fs::read_dir(paths.at("/sys/block"))
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("dm-"))
        .collect();
    names.sort();
    names.into_iter().find(|n| {
        std::fs::read_to_string(paths.at(&format!("/sys/block/{n}/dm/name")))
            .is_ok_and(|name| name.trim() == "root")
    })
}

/// The slot the running root comes from, and its disk.
pub fn running(paths: &Paths) -> Result<Running> {
    let dm = root_dm(paths).context(
        "there is no /dev/mapper/root: this system did not start from a verified root slot, so it cannot be updated",
    )?;
    let slaves = paths.at(&format!("/sys/block/{dm}/slaves"));
    let mut names: Vec<String> = std::fs::read_dir(&slaves)
        .with_context(|| format!("cannot read {}", paths.display(&slaves)))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let mut slot = None;
    let mut disk = None;
    for name in &names {
        let label = partname(paths, name).with_context(|| {
            format!("/dev/mapper/root is built on {name}, which has no partition label")
        })?;
        let this = Slot::ALL
            .into_iter()
            .find(|s| label == s.root_label() || label == s.verity_label())
            .with_context(|| {
                format!("/dev/mapper/root is built on {name} ({label}), which is not a root slot")
            })?;
        if slot.is_some_and(|s| s != this) {
            bail!("/dev/mapper/root is built on partitions of both slots ({names:?})");
        }
        slot = Some(this);
        let d = disk_of(paths, name)?;
        if disk.as_ref().is_some_and(|x| *x != d) {
            bail!("/dev/mapper/root is built on two disks");
        }
        disk = Some(d);
    }
    let (Some(slot), Some(disk)) = (slot, disk) else {
        bail!("/dev/mapper/root is built on no partition");
    };
    let cmdline = std::fs::read_to_string(paths.at("/proc/cmdline")).unwrap_or_default();
    let root_hash = cmdline
        .split_whitespace()
        .find_map(|a| a.strip_prefix("roothash=").map(str::to_string));
    Ok(Running {
        slot,
        disk,
        root_hash,
    })
}

/// The labelled partitions of `disk`, from sysfs.
pub fn partitions(paths: &Paths, disk: &str) -> Result<Vec<Partition>> {
    let dir = paths.at(&format!("/sys/class/block/{disk}"));
    let mut out = Vec::new();
    for entry in
        std::fs::read_dir(&dir).with_context(|| format!("cannot read {}", paths.display(&dir)))?
    {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !entry.path().join("partition").exists() {
            continue;
        }
        let Some(label) = partname(paths, &name) else {
            continue;
        };
        let sectors: u64 = read_trimmed(&entry.path().join("size"))?
            .parse()
            .with_context(|| format!("{name}: unreadable size in sysfs"))?;
        out.push(Partition {
            device: paths.at(&format!("/dev/{name}")),
            name,
            label,
            bytes: sectors * 512,
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

fn by_label<'a>(parts: &'a [Partition], label: &str, disk: &str) -> Result<&'a Partition> {
    let mut found = parts.iter().filter(|p| p.label == label);
    let first = found
        .next()
        .with_context(|| format!("the disk {disk} has no partition labelled {label}"))?;
    if found.next().is_some() {
        bail!("the disk {disk} has two partitions labelled {label}");
    }
    Ok(first)
}

/// PARTUUIDs by GPT label, read from the disk's partition table.
pub fn partuuids(paths: &Paths, disk: &str) -> Result<BTreeMap<String, uuid::Uuid>> {
    let device = paths.at(&format!("/dev/{disk}"));
    let gpt = gpt::GptConfig::new()
        .writable(false)
        .only_valid_headers(false)
        .logical_block_size(gpt::disk::LogicalBlockSize::Lb512)
        .open(&device)
        .with_context(|| {
            format!(
                "cannot read the partition table of {}",
                paths.display(&device)
            )
        })?;
    Ok(gpt
        .partitions()
        .values()
        .map(|p| (p.name.clone(), p.part_guid))
        .collect())
}

/// The partitions of `slot` on `disk`.
pub fn slot_devices(paths: &Paths, disk: &str, slot: Slot) -> Result<SlotDevices> {
    let parts = partitions(paths, disk)?;
    let root = by_label(&parts, &slot.root_label(), disk)?.clone();
    let verity = by_label(&parts, &slot.verity_label(), disk)?.clone();
    let uuids = partuuids(paths, disk)?;
    let uuid = |label: &str| {
        uuids
            .get(label)
            .copied()
            .with_context(|| format!("the partition table of {disk} has no {label}"))
    };
    Ok(SlotDevices {
        root_partuuid: uuid(&root.label)?,
        verity_partuuid: uuid(&verity.label)?,
        root,
        verity,
    })
}

/// The ESP of `disk`.
pub fn esp(paths: &Paths, disk: &str) -> Result<Partition> {
    let parts = partitions(paths, disk)?;
    Ok(by_label(&parts, LABEL_ESP, disk)?.clone())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::collections::BTreeMap as Map;
    use std::fs;

    /// The labels of the appliance's x86_64 disk, in order (`vda1` .. `vda7`).
    pub const LABELS: [&str; 7] = [
        "bios-boot",
        "esp",
        "root-a",
        "verity-a",
        "root-b",
        "verity-b",
        "data",
    ];

    pub fn partuuid(label: &str) -> uuid::Uuid {
        let n = LABELS.iter().position(|l| *l == label).unwrap() as u128;
        uuid::Uuid::from_u128(0xa000 + n)
    }

    /// A machine booted from `slot` of disk `vda`: sysfs, the disk's GPT, `/dev/mapper/root`,
    /// the kernel command line, and a regular file standing in for each partition's device
    /// (`bytes` long; the ESP is a directory instead, see `fake_mount`).
    pub fn fake_disk(paths: &Paths, slot: Slot, bytes: u64) {
        let dev = paths.at("/dev");
        fs::create_dir_all(dev.join("mapper")).unwrap();
        let devices = paths.at("/sys/devices/pci0000:00/virtio1/block/vda");
        fs::create_dir_all(&devices).unwrap();
        let class = paths.at("/sys/class/block");
        fs::create_dir_all(&class).unwrap();
        std::os::unix::fs::symlink(
            "../../devices/pci0000:00/virtio1/block/vda",
            class.join("vda"),
        )
        .unwrap();
        for (i, label) in LABELS.iter().enumerate() {
            let name = format!("vda{}", i + 1);
            let d = devices.join(&name);
            fs::create_dir_all(&d).unwrap();
            fs::write(d.join("partition"), format!("{}\n", i + 1)).unwrap();
            fs::write(d.join("uevent"), format!("MAJOR=254\nMINOR={}\nDEVNAME={name}\nDEVTYPE=partition\nPARTN={}\nPARTNAME={label}\n", i + 1, i + 1)).unwrap();
            fs::write(d.join("size"), format!("{}\n", bytes / 512)).unwrap();
            std::os::unix::fs::symlink(
                format!("../../devices/pci0000:00/virtio1/block/vda/{name}"),
                class.join(&name),
            )
            .unwrap();
            if *label != "esp" {
                fs::File::create(dev.join(&name))
                    .unwrap()
                    .set_len(bytes)
                    .unwrap();
            }
        }
        // The disk: a GPT naming the same labels (the contents are in the files above).
        let disk = dev.join("vda");
        let f = fs::File::create(&disk).unwrap();
        f.set_len(64 << 20).unwrap();
        let mbr = gpt::mbr::ProtectiveMBR::with_lb_size(((64 << 20) / 512 - 1) as u32);
        let mut f = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&disk)
            .unwrap();
        mbr.overwrite_lba0(&mut f).unwrap();
        let mut gpt = gpt::GptConfig::new()
            .writable(true)
            .logical_block_size(gpt::disk::LogicalBlockSize::Lb512)
            .create_from_device(f, Some(uuid::Uuid::from_u128(9)))
            .unwrap();
        let mut parts = Map::new();
        for (i, label) in LABELS.iter().enumerate() {
            parts.insert(
                i as u32 + 1,
                gpt::partition::Partition {
                    part_type_guid: gpt::partition_types::LINUX_FS,
                    part_guid: partuuid(label),
                    first_lba: 2048 + i as u64 * 2048,
                    last_lba: 2048 + i as u64 * 2048 + 2047,
                    flags: 0,
                    name: label.to_string(),
                },
            );
        }
        gpt.update_partitions(parts).unwrap();
        gpt.write().unwrap();
        set_running(paths, slot);
    }

    /// Makes `/dev/mapper/root` a verity device on `slot`'s partitions.
    pub fn set_running(paths: &Paths, slot: Slot) {
        let _ = fs::remove_dir_all(paths.at("/sys/block/dm-0"));
        let slaves = paths.at("/sys/block/dm-0/slaves");
        fs::create_dir_all(&slaves).unwrap();
        fs::create_dir_all(paths.at("/sys/block/dm-0/dm")).unwrap();
        fs::write(paths.at("/sys/block/dm-0/dm/name"), "root\n").unwrap();
        for label in [slot.root_label(), slot.verity_label()] {
            let n = LABELS.iter().position(|l| *l == label).unwrap() + 1;
            fs::create_dir_all(slaves.join(format!("vda{n}"))).unwrap();
        }
        let dev = paths.at("/dev");
        fs::write(dev.join("dm-0"), "").unwrap();
        let _ = fs::remove_file(dev.join("mapper/root"));
        std::os::unix::fs::symlink("../dm-0", dev.join("mapper/root")).unwrap();
        fs::create_dir_all(paths.at("/proc")).unwrap();
        fs::write(
            paths.at("/proc/cmdline"),
            format!(
                "roothash={} systemd.verity_root_data=PARTUUID={} ro\n",
                "cd".repeat(32),
                partuuid(&slot.root_label())
            ),
        )
        .unwrap();
    }

    #[test]
    fn finds_the_running_slot_its_disk_and_the_other_slot() {
        let d = tempfile::tempdir().unwrap();
        let paths = Paths::new(d.path());
        fake_disk(&paths, Slot::B, 1 << 20);
        let r = running(&paths).unwrap();
        assert_eq!(r.slot, Slot::B);
        assert_eq!(r.disk, "vda");
        assert_eq!(r.root_hash.as_deref(), Some("cd".repeat(32).as_str()));
        let other = slot_devices(&paths, &r.disk, Slot::A).unwrap();
        assert_eq!(other.root.name, "vda3");
        assert_eq!(other.root.device, paths.at("/dev/vda3"));
        assert_eq!(other.verity.label, "verity-a");
        assert_eq!(other.root.bytes, 1 << 20);
        assert_eq!(other.root_partuuid, partuuid("root-a"));
        assert_eq!(other.verity_partuuid, partuuid("verity-a"));
        assert_eq!(esp(&paths, "vda").unwrap().name, "vda2");
        set_running(&paths, Slot::A);
        assert_eq!(running(&paths).unwrap().slot, Slot::A);
        // /dev/mapper/root as a device node of its own (made without udev, in the initrd).
        let mapper = paths.at("/dev/mapper/root");
        fs::remove_file(&mapper).unwrap();
        fs::write(&mapper, "").unwrap();
        assert_eq!(running(&paths).unwrap().slot, Slot::A);
    }

    #[test]
    fn a_root_that_is_not_a_slot_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let paths = Paths::new(d.path());
        let e = running(&paths).unwrap_err().to_string();
        assert!(e.contains("no /dev/mapper/root"), "{e}");
        fake_disk(&paths, Slot::A, 1 << 20);
        // Built on the data partition and a verity partition: not a slot.
        let slaves = paths.at("/sys/block/dm-0/slaves");
        fs::remove_dir_all(slaves.join("vda3")).unwrap();
        fs::create_dir_all(slaves.join("vda7")).unwrap();
        let e = running(&paths).unwrap_err().to_string();
        assert!(e.contains("vda7 (data), which is not a root slot"), "{e}");
        // Built on partitions of both slots.
        fs::remove_dir_all(slaves.join("vda7")).unwrap();
        fs::create_dir_all(slaves.join("vda5")).unwrap();
        let e = running(&paths).unwrap_err().to_string();
        assert!(e.contains("both slots"), "{e}");
    }
}
