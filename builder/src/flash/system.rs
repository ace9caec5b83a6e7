//! What this machine uses of its block devices: the devices and how they stack (sysfs), the
//! mounted file systems (`/proc/self/mountinfo`) and the active swaps (`/proc/swaps`).
//!
//! [`SystemView`] takes the three as inputs, so the rules about which disks belong to the
//! running system can be checked against a fixture as well as against this machine.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// A block device's major and minor numbers.
pub type DevNum = (u32, u32);

/// A block device known to sysfs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockDev {
    pub name: String,
    pub dev: DevNum,
}

/// Where sysfs is, and the mount and swap tables, as read at one moment.
#[derive(Clone, Debug)]
pub struct SystemView {
    /// `/sys`, or a directory laid out like it.
    pub sys: PathBuf,
    /// The text of `/proc/self/mountinfo`.
    pub mountinfo: String,
    /// The text of `/proc/swaps`.
    pub swaps: String,
}

/// A device the running system stands on, and why.
#[derive(Clone, Debug)]
pub struct SystemUse {
    pub dev: Option<DevNum>,
    /// The device's path as mountinfo or /proc/swaps give it.
    pub source: String,
    /// `/ is mounted from /dev/sda3`, `/dev/sda2 is an active swap`.
    pub why: String,
}

/// One line of mountinfo, its device resolved where the kernel gives an anonymous one.
#[derive(Clone, Debug)]
pub struct Mount {
    /// The block device, if the file system is on one.
    pub dev: Option<DevNum>,
    pub mount_point: String,
    pub source: String,
}

impl SystemView {
    /// This machine: `/sys`, `/proc/self/mountinfo` and `/proc/swaps`.
    pub fn of_this_machine() -> Result<SystemView> {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")
            .context("cannot read /proc/self/mountinfo: is /proc mounted?")?;
        // Without swap support the file is missing: no swaps, then.
        let swaps = std::fs::read_to_string("/proc/swaps").unwrap_or_default();
        Ok(SystemView {
            sys: PathBuf::from("/sys"),
            mountinfo,
            swaps,
        })
    }

    /// The sysfs directory of the device `name` (`sda`, `sda1`, `dm-0`).
    pub fn class_dir(&self, name: &str) -> PathBuf {
        self.sys.join("class/block").join(name)
    }

    /// The sysfs directory of the device `dev`, found by number rather than by name.
    pub fn dev_dir(&self, dev: DevNum) -> PathBuf {
        self.sys.join(format!("dev/block/{}:{}", dev.0, dev.1))
    }

    /// The kernel's name (`sda1`, `dm-0`) of the block device `dev`.
    pub fn name_of(&self, dev: DevNum) -> Option<String> {
        let target = std::fs::read_link(self.dev_dir(dev)).ok()?;
        Some(target.file_name()?.to_string_lossy().into_owned())
    }

    /// The major:minor sysfs gives for the device `name`.
    pub fn dev_of(&self, name: &str) -> Option<DevNum> {
        parse_devnum(&read_trim(&self.class_dir(name).join("dev"))?)
    }

    fn is_partition(&self, name: &str) -> bool {
        self.class_dir(name).join("partition").exists()
    }

    /// The disk a partition belongs to: its directory's parent in sysfs.
    fn disk_of_partition(&self, name: &str) -> Option<String> {
        let dir = std::fs::canonicalize(self.class_dir(name)).ok()?;
        Some(dir.parent()?.file_name()?.to_string_lossy().into_owned())
    }

    /// The block device at `path`, a `/dev` path as mountinfo and /proc/swaps give them:
    /// `/dev/sda1` and `/dev/dm-0` by their sysfs name, `/dev/mapper/NAME` by device mapper's
    /// names, anything else (`/dev/disk/by-uuid/...`) through its symlinks.
    pub fn device_of_path(&self, path: &str) -> Option<DevNum> {
        let rest = path.strip_prefix("/dev/")?;
        if !rest.contains('/') {
            if let Some(dev) = self.dev_of(rest) {
                return Some(dev);
            }
        }
        if let Some(dm_name) = rest.strip_prefix("mapper/") {
            let found = list_dir(&self.sys.join("class/block"))
                .into_iter()
                .find(|n| {
                    read_trim(&self.class_dir(n).join("dm/name")).as_deref() == Some(dm_name)
                });
            if let Some(name) = found {
                return self.dev_of(&name);
            }
        }
        let resolved = std::fs::canonicalize(path).ok()?;
        self.dev_of(&resolved.file_name()?.to_string_lossy())
    }

    /// Every mount, stacked mounts in the kernel's order.
    pub fn mounts(&self) -> Vec<Mount> {
        self.mountinfo
            .lines()
            .filter_map(parse_mountinfo_line)
            .map(|m| {
                // btrfs and others report an anonymous 0:N; their source names the device.
                let dev = match m.dev {
                    Some((major, minor)) if major != 0 => Some((major, minor)),
                    _ => self.device_of_path(&m.source),
                };
                Mount { dev, ..m }
            })
            .collect()
    }

    /// Mounts (`<source> on <mount point>`) of any of `devices`, matched by major:minor or by
    /// the source `/dev/<name>`.
    pub fn mounts_on(&self, devices: &[BlockDev]) -> Vec<String> {
        dedup(
            self.mounts()
                .into_iter()
                .filter(|m| holds(devices, m.dev, &m.source))
                .map(|m| format!("{} on {}", m.source, m.mount_point))
                .collect(),
        )
    }

    /// The devices the running system stands on, each with why: the file systems at `/`,
    /// `/boot` (and below it, such as `/boot/efi`) and `/efi`, and the active swaps.
    pub fn system_uses(&self) -> Vec<SystemUse> {
        let mut out = Vec::new();
        for m in self.mounts() {
            let p = Path::new(&m.mount_point);
            if p == Path::new("/") || p.starts_with("/boot") || p == Path::new("/efi") {
                out.push(SystemUse {
                    why: format!("{} is mounted from {}", m.mount_point, m.source),
                    dev: m.dev,
                    source: m.source,
                });
            }
        }
        for swap in swaps_entries(&self.swaps) {
            let why = format!("{swap} is an active swap");
            if swap.starts_with("/dev/") {
                out.push(SystemUse {
                    dev: self.device_of_path(&swap),
                    source: swap,
                    why,
                });
            } else if let Some(m) = self.mount_holding(&swap) {
                // A swap file: the file system it lives on.
                out.push(SystemUse {
                    dev: m.dev,
                    source: m.source,
                    why,
                });
            }
        }
        out
    }

    /// The mount whose file system holds `path`: the longest mount point above it, the last
    /// one listed where mounts stack.
    fn mount_holding(&self, path: &str) -> Option<Mount> {
        let path = Path::new(path);
        let mut best: Option<Mount> = None;
        for m in self.mounts() {
            if path.starts_with(&m.mount_point)
                && best
                    .as_ref()
                    .is_none_or(|b| m.mount_point.len() >= b.mount_point.len())
            {
                best = Some(m);
            }
        }
        best
    }

    /// `dev` and every device under it: the slaves of dm and md devices, recursively, and the
    /// disk of a partition.
    pub fn underlying(&self, dev: DevNum) -> Vec<BlockDev> {
        let Some(name) = self.name_of(dev) else {
            return Vec::new();
        };
        let mut out = vec![BlockDev { name, dev }];
        let mut i = 0;
        while i < out.len() {
            let name = out[i].name.clone();
            i += 1;
            let mut below = list_dir(&self.class_dir(&name).join("slaves"));
            if self.is_partition(&name) {
                below.extend(self.disk_of_partition(&name));
            }
            for n in below {
                if let Some(d) = self.dev_of(&n) {
                    if !out.iter().any(|b| b.dev == d) {
                        out.push(BlockDev { name: n, dev: d });
                    }
                }
            }
        }
        out
    }

    /// The whole disks `dev` is on: the devices under it that are neither partitions nor
    /// built on other devices. A disk sysfs cannot describe stands for itself.
    pub fn disks_under(&self, dev: DevNum) -> Vec<BlockDev> {
        let below = self.underlying(dev);
        let disks: Vec<BlockDev> = below
            .iter()
            .filter(|b| {
                !self.is_partition(&b.name)
                    && list_dir(&self.class_dir(&b.name).join("slaves")).is_empty()
            })
            .cloned()
            .collect();
        if disks.is_empty() {
            below.into_iter().take(1).collect()
        } else {
            disks
        }
    }

    /// The device `name`, its partitions, and what is stacked on any of them (holders: dm, md),
    /// recursively: everything a write to `name` would destroy.
    pub fn stacked(&self, name: &str) -> Vec<BlockDev> {
        let mut out: Vec<BlockDev> = Vec::new();
        let mut todo = vec![name.to_string()];
        while let Some(n) = todo.pop() {
            if out.iter().any(|b| b.name == n) {
                continue;
            }
            let Some(dev) = self.dev_of(&n) else {
                continue;
            };
            out.push(BlockDev {
                name: n.clone(),
                dev,
            });
            let class = self.class_dir(&n);
            // Partitions are subdirectories with a `partition` file.
            for entry in list_dir(&class) {
                if class.join(&entry).join("partition").exists() {
                    todo.push(entry);
                }
            }
            todo.extend(list_dir(&class.join("holders")));
        }
        out
    }
}

/// Whether the device `dev` (or, for an anonymous device, the mount source `source`) is one of
/// `devices`.
pub fn holds(devices: &[BlockDev], dev: Option<DevNum>, source: &str) -> bool {
    devices
        .iter()
        .any(|d| Some(d.dev) == dev || source == format!("/dev/{}", d.name))
}

fn parse_mountinfo_line(line: &str) -> Option<Mount> {
    // "36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue"
    let (pre, post) = line.split_once(" - ")?;
    let f: Vec<&str> = pre.split(' ').collect();
    let dev = parse_devnum(f.get(2)?);
    let source = post.split(' ').nth(1).unwrap_or("");
    Some(Mount {
        dev,
        mount_point: unescape(f.get(4)?),
        source: unescape(source),
    })
}

fn parse_devnum(s: &str) -> Option<DevNum> {
    let (a, b) = s.split_once(':')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

/// Undoes the kernel's octal escapes (`\040` for a space) in mountinfo and /proc/swaps.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The file names in /proc/swaps.
pub fn swaps_entries(swaps: &str) -> Vec<String> {
    swaps
        .lines()
        .skip(1) // the header
        .filter_map(|l| l.split_whitespace().next())
        .map(unescape)
        .collect()
}

fn list_dir(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

pub fn read_trim(path: &Path) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
}

/// Major and minor of a `dev_t`, as glibc's `major()`/`minor()` split it.
pub fn split_dev(dev: u64) -> DevNum {
    let major = ((dev >> 32) & 0xffff_f000) | ((dev >> 8) & 0x0000_0fff);
    let minor = ((dev >> 12) & 0xffff_ff00) | (dev & 0x0000_00ff);
    (major as u32, minor as u32)
}

pub fn dedup(mut v: Vec<String>) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    v.retain(|s| seen.insert(s.clone()));
    v
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::FakeSys;
    use super::*;

    #[test]
    fn splits_dev_t() {
        assert_eq!(split_dev(0xfe00), (254, 0));
        assert_eq!(split_dev((259 << 8) | 3), (259, 3));
        assert_eq!(split_dev(0x10_0301), (3, 257)); // a minor above 255
    }

    #[test]
    fn finds_devices_by_path_and_what_stacks_on_them() {
        let fake = FakeSys::new();
        fake.disk("vda", (254, 0), 20, "", false);
        fake.partition("vda", "vda1", (254, 1), 1, 20);
        fake.dm("dm-3", (253, 3), "vg-data", &["vda1"]);
        let view = fake.view("", "");
        assert_eq!(view.device_of_path("/dev/vda1"), Some((254, 1)));
        assert_eq!(view.device_of_path("/dev/mapper/vg-data"), Some((253, 3)));
        assert_eq!(view.device_of_path("/dev/mapper/nothing"), None);
        assert_eq!(view.device_of_path("tmpfs"), None);
        let names = |v: Vec<BlockDev>| v.into_iter().map(|b| b.name).collect::<Vec<_>>();
        assert_eq!(names(view.underlying((253, 3))), ["dm-3", "vda1", "vda"]);
        assert_eq!(names(view.disks_under((253, 3))), ["vda"]);
        assert_eq!(names(view.stacked("vda")), ["vda", "vda1", "dm-3"]);
    }
}
