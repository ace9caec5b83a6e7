//! Fixtures for the tests of `appliance write`: a directory laid out like sysfs, images and
//! file targets, and a described USB stick.

use std::path::{Path, PathBuf};

use super::system::{BlockDev, DevNum, SystemView};
use super::target::{Identity, TargetInfo, TargetKind};
use super::WriteArgs;

pub const MIB: u64 = 1 << 20;

/// A fake sysfs: `devices/virtual/block/<disk>[/<partition>]`, with `class/block/<name>` and
/// `dev/block/<major>:<minor>` linking to them, as the kernel lays them out.
pub struct FakeSys {
    pub dir: tempfile::TempDir,
}

impl FakeSys {
    pub fn new() -> FakeSys {
        let dir = tempfile::tempdir().unwrap();
        for d in ["class/block", "dev/block", "devices/virtual/block"] {
            std::fs::create_dir_all(dir.path().join(d)).unwrap();
        }
        FakeSys { dir }
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    /// The view of a machine with this sysfs, `mountinfo` and `swaps` (the text of
    /// /proc/swaps without its header line).
    pub fn view(&self, mountinfo: &str, swaps: &str) -> SystemView {
        SystemView {
            sys: self.root().to_path_buf(),
            mountinfo: mountinfo.to_string(),
            swaps: format!("Filename\tType\tSize\tUsed\tPriority\n{swaps}"),
        }
    }

    fn add(&self, name: &str, dir: &Path, dev: DevNum, sectors: u64) {
        std::fs::create_dir_all(dir.join("holders")).unwrap();
        std::fs::create_dir_all(dir.join("slaves")).unwrap();
        std::fs::write(dir.join("dev"), format!("{}:{}\n", dev.0, dev.1)).unwrap();
        std::fs::write(dir.join("size"), format!("{sectors}\n")).unwrap();
        let root = self.root();
        std::os::unix::fs::symlink(dir, root.join("class/block").join(name)).unwrap();
        std::os::unix::fs::symlink(dir, root.join(format!("dev/block/{}:{}", dev.0, dev.1)))
            .unwrap();
    }

    fn dir_of(&self, name: &str) -> PathBuf {
        std::fs::canonicalize(self.root().join("class/block").join(name)).unwrap()
    }

    /// A whole disk with a model, a removable flag and (Linux >= 5.15) a disk sequence number.
    pub fn disk(&self, name: &str, dev: DevNum, gib: u64, model: &str, removable: bool) {
        let dir = self.root().join("devices/virtual/block").join(name);
        self.add(name, &dir, dev, gib << 21);
        std::fs::create_dir_all(dir.join("device")).unwrap();
        std::fs::write(dir.join("device/model"), format!("{model}  \n")).unwrap();
        std::fs::write(dir.join("device/vendor"), "ATA     \n").unwrap();
        std::fs::write(dir.join("removable"), if removable { "1\n" } else { "0\n" }).unwrap();
        self.set_diskseq(name, Some(dev.1 as u64 + 10));
    }

    /// Sets or (`None`, an older kernel) removes the disk sequence number of `disk`.
    pub fn set_diskseq(&self, disk: &str, seq: Option<u64>) {
        let file = self.dir_of(disk).join("diskseq");
        match seq {
            Some(n) => std::fs::write(file, format!("{n}\n")).unwrap(),
            None => {
                let _ = std::fs::remove_file(file);
            }
        }
    }

    /// Partition `number` of `disk`, `name`d as the kernel does (`sda1`, `nvme0n1p1`).
    pub fn partition(&self, disk: &str, name: &str, dev: DevNum, number: u32, gib: u64) {
        let dir = self.dir_of(disk).join(name);
        self.add(name, &dir, dev, gib << 21);
        std::fs::write(dir.join("partition"), format!("{number}\n")).unwrap();
    }

    /// A device-mapper device (`dm-0`, named `dm_name` in /dev/mapper) on `slaves`.
    pub fn dm(&self, name: &str, dev: DevNum, dm_name: &str, slaves: &[&str]) {
        self.stacked(name, dev, slaves);
        let dir = self.dir_of(name).join("dm");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("name"), format!("{dm_name}\n")).unwrap();
    }

    /// A device built on `slaves` (md RAID, or dm), linked as `slaves/` and `holders/`.
    pub fn stacked(&self, name: &str, dev: DevNum, slaves: &[&str]) {
        let dir = self.root().join("devices/virtual/block").join(name);
        self.add(name, &dir, dev, 1 << 21);
        for s in slaves {
            let below = self.dir_of(s);
            std::os::unix::fs::symlink(&below, dir.join("slaves").join(s)).unwrap();
            std::os::unix::fs::symlink(&dir, below.join("holders").join(name)).unwrap();
        }
    }

    /// Describes the block device `name` as `appliance write /dev/<name>` would.
    pub fn target(&self, view: &SystemView, name: &str) -> TargetInfo {
        let path = PathBuf::from("/dev").join(name);
        TargetInfo::block_device(view, &path, &path, name).unwrap()
    }
}

/// A 4 MiB image with data in a few places (blocks 0, 300 and the last).
pub fn image(dir: &Path) -> PathBuf {
    let p = dir.join("img.raw");
    let mut data = vec![0u8; 4 * MIB as usize];
    data[..512].fill(0xaa);
    data[300 * 4096..300 * 4096 + 4096].fill(0x33);
    let n = data.len();
    data[n - 10..].fill(0x77);
    std::fs::write(&p, data).unwrap();
    p
}

pub fn file_target(dir: &Path, size: u64, fill: u8) -> PathBuf {
    let p = dir.join("target.img");
    std::fs::write(&p, vec![fill; size as usize]).unwrap();
    p
}

pub fn read_all(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap()
}

/// Arguments to write `image` to `target` without asking.
pub fn args(image: &Path, target: &Path) -> WriteArgs {
    WriteArgs {
        yes: true,
        ..WriteArgs::new(image, target)
    }
}

/// A described USB stick, `/dev/sdz` with one partition, nothing mounted.
pub fn fake_disk(size: u64) -> TargetInfo {
    TargetInfo {
        path: "/dev/sdz".into(),
        resolved: "/dev/sdz".into(),
        kind: TargetKind::BlockDevice,
        name: "sdz".into(),
        size,
        model: "Cruzer".into(),
        vendor: "SanDisk".into(),
        removable: Some(true),
        devices: vec![
            BlockDev {
                name: "sdz".into(),
                dev: (8, 240),
            },
            BlockDev {
                name: "sdz1".into(),
                dev: (8, 241),
            },
        ],
        disks: vec!["sdz".into()],
        mounts: vec![],
        disk_mounts: vec![],
        system_uses: vec![],
        is_image: false,
        identity: Identity::Block {
            rdev: (8, 240),
            diskseq: Some(250),
            size,
            model: "Cruzer".into(),
        },
    }
}
