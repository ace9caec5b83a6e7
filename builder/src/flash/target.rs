//! The write target: describing it, refusing the wrong one, and opening it so that what is
//! written is the device that was described and confirmed.

use std::io::{Seek, SeekFrom};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use super::system::SystemView;
use super::system::{dedup, holds, read_trim, split_dev, swaps_entries, BlockDev, DevNum};
use crate::progress::human_bytes;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TargetKind {
    BlockDevice,
    /// A regular file standing in for a disk (a VM disk, or tests).
    File,
}

/// What tells the target apart from whatever may take its name later.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Identity {
    /// A block device: its major:minor, the kernel's disk sequence number (`diskseq`, Linux
    /// 5.15 and later: a new one for every disk or medium that appears, even under a name and
    /// number used before), its size and its model.
    Block {
        rdev: DevNum,
        diskseq: Option<u64>,
        size: u64,
        model: String,
    },
    /// A regular file: its file system and inode.
    File { dev: u64, ino: u64 },
}

/// What is known about a write target, gathered before it is opened.
#[derive(Clone, Debug)]
pub struct TargetInfo {
    /// The path as given.
    pub path: PathBuf,
    /// The path with symlinks (`/dev/disk/by-id/...`) resolved: what is opened.
    pub resolved: PathBuf,
    pub kind: TargetKind,
    /// `sdb` for a device, the file name for a file: what the user types to confirm.
    pub name: String,
    pub size: u64,
    pub model: String,
    pub vendor: String,
    pub removable: Option<bool>,
    /// The device, its partitions, and devices stacked on them (dm, md): all that a write
    /// would destroy.
    pub devices: Vec<BlockDev>,
    /// The whole disks the target is on (`sda` for `sda2`).
    pub disks: Vec<String>,
    /// Mounts of any of `devices`, as `<source> on <mount point>`.
    pub mounts: Vec<String>,
    /// Mounts elsewhere on the target's disks (another partition, a device stacked on one):
    /// this machine uses the disk, even if the target itself is not mounted.
    pub disk_mounts: Vec<String>,
    /// How the target's disks serve the running system (`/`, `/boot`, swap); empty if they
    /// do not.
    pub system_uses: Vec<String>,
    /// The image is the target, or is stored on it.
    pub is_image: bool,
    /// As described; checked again once the target is open and once it is confirmed.
    pub identity: Identity,
}

impl TargetInfo {
    /// Describes `target` from the file system, sysfs, `/proc/self/mountinfo` and
    /// `/proc/swaps`, without opening it. `image` is the image to be written (to spot it).
    pub fn from_path(target: &Path, image: &Path) -> Result<TargetInfo> {
        TargetInfo::from_path_in(&SystemView::of_this_machine()?, target, image)
    }

    /// [`TargetInfo::from_path`] with the block devices, mounts and swaps of `view`.
    pub fn from_path_in(view: &SystemView, target: &Path, image: &Path) -> Result<TargetInfo> {
        let resolved = std::fs::canonicalize(target).with_context(|| {
            format!(
                "the target {} does not exist: give a disk such as /dev/sdb (see `lsblk`), or \
                 create a file target first (`truncate -s 8G {}`)",
                target.display(),
                target.display()
            )
        })?;
        let meta = std::fs::metadata(&resolved)
            .with_context(|| format!("cannot stat the target {}", resolved.display()))?;
        let image_meta = std::fs::metadata(image)
            .with_context(|| format!("cannot read the image {}", image.display()))?;

        if meta.file_type().is_block_device() {
            let dev = split_dev(meta.rdev());
            let sysname = view.name_of(dev).with_context(|| {
                format!(
                    "{} is a block device ({}:{}) that sysfs does not know; is /sys mounted?",
                    resolved.display(),
                    dev.0,
                    dev.1
                )
            })?;
            let mut info = TargetInfo::block_device(view, target, &resolved, &sysname)?;
            // The image is the device itself, or a file on one of its file systems.
            info.is_image = (image_meta.file_type().is_block_device()
                && image_meta.rdev() == meta.rdev())
                || info
                    .devices
                    .iter()
                    .any(|b| b.dev == split_dev(image_meta.dev()));
            Ok(info)
        } else if meta.file_type().is_file() {
            let system_uses = swaps_entries(&view.swaps)
                .into_iter()
                .filter(|s| std::fs::canonicalize(s).ok().as_deref() == Some(&resolved))
                .map(|s| format!("it is an active swap file ({s})"))
                .collect();
            Ok(TargetInfo {
                path: target.to_path_buf(),
                resolved: resolved.clone(),
                kind: TargetKind::File,
                name: resolved
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                size: meta.len(),
                model: String::new(),
                vendor: String::new(),
                removable: None,
                devices: Vec::new(),
                disks: Vec::new(),
                mounts: Vec::new(),
                disk_mounts: Vec::new(),
                system_uses,
                is_image: meta.dev() == image_meta.dev() && meta.ino() == image_meta.ino(),
                identity: Identity::File {
                    dev: meta.dev(),
                    ino: meta.ino(),
                },
            })
        } else {
            bail!(
                "{} is neither a block device nor a regular file: give a disk such as /dev/sdb \
                 (see `lsblk`)",
                target.display()
            )
        }
    }

    /// Describes the block device `sysname` (`sda2`) from `view` alone; `path` is how the user
    /// named it, `resolved` its path in /dev. Whether it holds the image is left false.
    pub fn block_device(
        view: &SystemView,
        path: &Path,
        resolved: &Path,
        sysname: &str,
    ) -> Result<TargetInfo> {
        let dev = view
            .dev_of(sysname)
            .with_context(|| format!("sysfs has no device number for {sysname}"))?;
        let class = view.class_dir(sysname);
        let sectors: u64 = read_trim(&class.join("size"))
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("cannot read the size of {sysname} from sysfs"))?;
        let size = sectors * 512;
        let devices = view.stacked(sysname);
        let disks = view.disks_under(dev);
        // Everything on the same disks: writing one partition of a disk the machine uses is
        // as wrong as writing the disk (the other partition of a dual-boot laptop, say).
        let mut family = devices.clone();
        for disk in &disks {
            for d in view.stacked(&disk.name) {
                if !family.contains(&d) {
                    family.push(d);
                }
            }
        }
        let system_uses = dedup(
            view.system_uses()
                .into_iter()
                .filter(|u| holds(&family, u.dev, &u.source))
                .map(|u| u.why)
                .collect(),
        );
        let mounts = view.mounts_on(&devices);
        let disk_mounts = view
            .mounts_on(&family)
            .into_iter()
            .filter(|m| !mounts.contains(m))
            .collect();
        Ok(TargetInfo {
            path: path.to_path_buf(),
            resolved: resolved.to_path_buf(),
            kind: TargetKind::BlockDevice,
            name: sysname.to_string(),
            size,
            vendor: disk_attr(&class, "device/vendor").unwrap_or_default(),
            removable: disk_attr(&class, "removable").map(|s| s == "1"),
            identity: block_identity(view, dev, size),
            model: disk_attr(&class, "device/model").unwrap_or_default(),
            devices,
            disks: disks.into_iter().map(|d| d.name).collect(),
            mounts,
            disk_mounts,
            system_uses,
            is_image: false,
        })
    }

    /// One line for the user: path, model, size.
    pub fn describe(&self) -> String {
        let what = match self.kind {
            TargetKind::File => "file".to_string(),
            TargetKind::BlockDevice => {
                let model = format!("{} {}", self.vendor, self.model);
                let model = model.trim();
                let mut s = if model.is_empty() {
                    "disk, model unknown".to_string()
                } else {
                    model.to_string()
                };
                if self.removable == Some(true) {
                    s.push_str(", removable");
                }
                s
            }
        };
        format!(
            "{} ({what}, {})",
            self.resolved.display(),
            human_bytes(self.size)
        )
    }

    /// Opens the target for writing and reading back, once: from here on the handle is the
    /// target, whatever takes its name. A block device is opened with `O_EXCL`, so the kernel
    /// refuses it if it is mounted or held by anyone else (another writer, LVM, RAID), closing
    /// the gap since the checks. Then the handle is checked against the description.
    pub fn open(&self, view: &SystemView) -> Result<std::fs::File> {
        let mut opts = std::fs::OpenOptions::new();
        opts.read(true).write(true);
        if self.kind == TargetKind::BlockDevice {
            opts.custom_flags(libc::O_EXCL);
        }
        let file = opts.open(&self.resolved).with_context(|| {
            let dev = self.resolved.display();
            if self.kind == TargetKind::BlockDevice {
                format!(
                    "cannot open {dev} exclusively: if it is busy, something holds it (a \
                     mount, LVM, RAID, another program: see `lsblk` and `fuser -v {dev}`); run \
                     as root if permission is denied"
                )
            } else {
                format!("cannot open the target file {dev}: check its permissions")
            }
        })?;
        self.check_still_same(&file, view)?;
        Ok(file)
    }

    /// Fails unless `file`, the opened target, is still what was described (the same device
    /// number, disk sequence number, size and model, or for a file the same inode), and its
    /// path still names it.
    pub fn check_still_same(&self, file: &std::fs::File, view: &SystemView) -> Result<()> {
        let path = self.resolved.display();
        let now = identity_of_open(file, view)
            .with_context(|| format!("cannot check that {path} is still the target described"))?;
        let mut differences = identity_differences(&self.identity, &now);
        // The handle is what gets written; the user meant the thing at the path. A file (or
        // device node) put in its place since it was opened is neither.
        let opened = file.metadata().context("fstat failed")?;
        let named = std::fs::metadata(&self.resolved).ok();
        if named.is_none_or(|m| (m.dev(), m.ino()) != (opened.dev(), opened.ino())) {
            differences.push("the path now names another file than the one opened".to_string());
        }
        if !differences.is_empty() {
            bail!(
                "{path} is no longer what was described: {}; it was unplugged, replaced or \
                 renamed meanwhile. Nothing was written: check the device (`lsblk`) and run \
                 `appliance write` again",
                differences.join("; ")
            );
        }
        Ok(())
    }
}

/// An attribute of the disk a sysfs device directory belongs to: a partition has none of its
/// own (no `device/`, no `removable`), its disk's apply.
fn disk_attr(class: &Path, attr: &str) -> Option<String> {
    read_trim(&class.join(attr)).or_else(|| {
        if class.join("partition").exists() {
            read_trim(&class.join("..").join(attr))
        } else {
            None
        }
    })
}

fn diskseq(class: &Path) -> Option<u64> {
    disk_attr(class, "diskseq").and_then(|s| s.parse().ok())
}

/// The identity of the opened `file`, from the handle itself (its major:minor or inode, its
/// size) and from sysfs found by the handle's device number (not by name).
fn identity_of_open(file: &std::fs::File, view: &SystemView) -> Result<Identity> {
    let meta = file.metadata().context("fstat failed")?;
    if !meta.file_type().is_block_device() {
        return Ok(Identity::File {
            dev: meta.dev(),
            ino: meta.ino(),
        });
    }
    // A block device's length is only known by seeking to its end.
    let size = (&*file)
        .seek(SeekFrom::End(0))
        .context("cannot find the device's size")?;
    Ok(block_identity(view, split_dev(meta.rdev()), size))
}

/// The identity of the block device `rdev` of `size` bytes, with what sysfs says of it now.
fn block_identity(view: &SystemView, rdev: DevNum, size: u64) -> Identity {
    let dir = view.dev_dir(rdev);
    Identity::Block {
        rdev,
        diskseq: diskseq(&dir),
        size,
        model: disk_attr(&dir, "device/model").unwrap_or_default(),
    }
}

/// How `now` differs from `described`, one phrase each; empty if it is the same target.
pub fn identity_differences(described: &Identity, now: &Identity) -> Vec<String> {
    let mut out = Vec::new();
    match (described, now) {
        (
            Identity::Block {
                rdev,
                diskseq,
                size,
                model,
            },
            Identity::Block {
                rdev: rdev_now,
                diskseq: diskseq_now,
                size: size_now,
                model: model_now,
            },
        ) => {
            if rdev != rdev_now {
                out.push(format!(
                    "its device number is {}:{}, it was {}:{}",
                    rdev_now.0, rdev_now.1, rdev.0, rdev.1
                ));
            }
            if diskseq != diskseq_now {
                let show = |s: &Option<u64>| s.map_or("unknown".to_string(), |n| n.to_string());
                out.push(format!(
                    "its disk sequence number is {}, it was {}",
                    show(diskseq_now),
                    show(diskseq)
                ));
            }
            if size != size_now {
                out.push(format!("its size is {size_now} bytes, it was {size}"));
            }
            if model != model_now {
                out.push(format!("its model is {model_now:?}, it was {model:?}"));
            }
        }
        (
            Identity::File { dev, ino },
            Identity::File {
                dev: dev_now,
                ino: ino_now,
            },
        ) => {
            if (dev, ino) != (dev_now, ino_now) {
                out.push(format!(
                    "it is another file now (inode {ino_now} on device {dev_now}, it was inode \
                     {ino} on device {dev})"
                ));
            }
        }
        (Identity::Block { .. }, Identity::File { .. }) => {
            out.push("it is a regular file now, it was a block device".to_string())
        }
        (Identity::File { .. }, Identity::Block { .. }) => {
            out.push("it is a block device now, it was a regular file".to_string())
        }
    }
    out
}

/// Every reason to refuse writing an image of `image_size` bytes to `target`, each saying what
/// to do; empty if the write may go ahead. `max_size` applies to block devices only.
pub fn refusal_reasons(
    target: &TargetInfo,
    image_size: u64,
    max_size: u64,
    force: bool,
) -> Vec<String> {
    let dev = target.resolved.display();
    let mut reasons = Vec::new();
    if target.is_image {
        reasons.push(format!(
            "{dev} is the image itself, or holds it: write the image to a different device"
        ));
    }
    for why in &target.system_uses {
        reasons.push(match target.kind {
            TargetKind::BlockDevice => format!(
                "{dev} is on the disk of the running system ({}): {why}; it is this machine's \
                 own disk — pick another device (see `lsblk`)",
                on_disks(target)
            ),
            TargetKind::File => {
                format!("{dev} is used by the running system: {why}; pick another file or a device")
            }
        });
    }
    // A disk of the running system is refused above, and unmounting would not change that:
    // its mounts are listed without the advice to unmount them.
    let system_disk = !target.system_uses.is_empty();
    if !target.mounts.is_empty() {
        let mounted = target.mounts.join(", ");
        reasons.push(if system_disk {
            format!("{dev} is in use, mounted: {mounted}")
        } else {
            format!(
                "{dev} is in use, mounted: {mounted}; unmount it first (`umount {}`)",
                mount_points(&target.mounts)
            )
        });
    }
    if !target.disk_mounts.is_empty() && !system_disk {
        reasons.push(format!(
            "{dev} is on a disk in use ({}), which has mounted file systems: {}; pick another \
             device (see `lsblk`), or unmount them first (`umount {}`) if that disk is really \
             to be overwritten",
            on_disks(target),
            target.disk_mounts.join(", "),
            mount_points(&target.disk_mounts)
        ));
    }
    if target.kind == TargetKind::BlockDevice && target.size > max_size && !force {
        reasons.push(format!(
            "{dev} is {}, larger than the {} limit for a target: make sure it is the disk you \
             mean (`lsblk -o NAME,SIZE,MODEL`), then pass --force (or a larger --max-size-gib)",
            human_bytes(target.size),
            human_bytes(max_size)
        ));
    }
    if target.size < image_size {
        reasons.push(format!(
            "{dev} is {} ({} bytes), smaller than the image, {} ({image_size} bytes): use a \
             larger device{}",
            human_bytes(target.size),
            target.size,
            human_bytes(image_size),
            if target.kind == TargetKind::File {
                format!(" or grow the file (`truncate -s {image_size} {dev}`)")
            } else {
                String::new()
            }
        ));
    }
    reasons
}

fn on_disks(target: &TargetInfo) -> String {
    if target.disks.is_empty() {
        target.name.clone()
    } else {
        target.disks.join(", ")
    }
}

/// The mount points of `<source> on <mount point>` entries, for an `umount` command line.
fn mount_points(mounts: &[String]) -> String {
    mounts
        .iter()
        .filter_map(|m| m.rsplit_once(" on ").map(|(_, p)| p))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::{fake_disk, FakeSys, MIB};
    use super::super::DEFAULT_MAX_SIZE;
    use super::*;

    /// Whether a reason in `reasons` contains every one of `parts`.
    fn has(reasons: &[String], parts: &[&str]) -> bool {
        reasons.iter().any(|r| parts.iter().all(|p| r.contains(p)))
    }

    fn reasons(view: &SystemView, fake: &FakeSys, name: &str) -> Vec<String> {
        refusal_reasons(&fake.target(view, name), MIB, DEFAULT_MAX_SIZE, false)
    }

    #[test]
    fn refuses_a_large_disk_unless_forced() {
        let t = fake_disk(1 << 40);
        let r = refusal_reasons(&t, MIB, DEFAULT_MAX_SIZE, false);
        assert_eq!(r.len(), 1, "{r:?}");
        assert!(r[0].contains("--force"), "{r:?}");
        assert!(refusal_reasons(&t, MIB, DEFAULT_MAX_SIZE, true).is_empty());
        assert!(refusal_reasons(&fake_disk(16 << 30), MIB, DEFAULT_MAX_SIZE, false).is_empty());
    }

    #[test]
    fn refuses_a_mounted_disk_and_lists_every_reason() {
        let mountinfo = "\
22 1 254:0 / / rw,relatime - ext4 /dev/vda rw
40 22 8:241 / /media/usb\\040stick rw,nosuid - vfat /dev/sdz1 rw
41 22 0:45 / /mnt/b rw - btrfs /dev/sdz rw
42 22 8:16 / /mnt/other rw - ext4 /dev/sdb rw
";
        // sysfs knows none of these: matched by number, or by the source's name.
        let view = FakeSys::new().view(mountinfo, "");
        let mut t = fake_disk(1 << 40);
        t.mounts = view.mounts_on(&t.devices);
        assert_eq!(
            t.mounts,
            ["/dev/sdz1 on /media/usb stick", "/dev/sdz on /mnt/b"]
        );
        let r = refusal_reasons(&t, 2 << 40, DEFAULT_MAX_SIZE, false);
        assert_eq!(r.len(), 3, "mounted, too large, too small: {r:?}");
        assert!(r[0].contains("umount /media/usb stick /mnt/b"), "{r:?}");
        assert!(view.mounts_on(&fake_disk(1).devices[1..]).len() == 1);
    }

    /// A disk `sda`: `sda1` on /boot, `sda2` under LUKS (`dm-0`, /dev/mapper/root), which holds
    /// / as btrfs (an anonymous device number: found by its source's name); a USB stick `sdb`.
    fn encrypted_laptop() -> (FakeSys, SystemView) {
        let fake = FakeSys::new();
        fake.disk("sda", (8, 0), 512, "Samsung SSD", false);
        fake.partition("sda", "sda1", (8, 1), 1, 1);
        fake.partition("sda", "sda2", (8, 2), 2, 500);
        fake.dm("dm-0", (254, 0), "root", &["sda2"]);
        fake.disk("sdb", (8, 16), 16, "Cruzer", true);
        let view = fake.view(
            "\
22 1 0:31 /@ / rw,relatime - btrfs /dev/mapper/root rw
23 22 8:1 / /boot rw,relatime - ext4 /dev/sda1 rw
24 22 0:5 / /dev rw - devtmpfs udev rw
",
            "",
        );
        (fake, view)
    }

    #[test]
    fn refuses_the_disk_of_the_running_system() {
        let (fake, view) = encrypted_laptop();
        // The disk, the partition under /, its dm device, and the partition /boot is on.
        for name in ["sda", "sda2", "dm-0", "sda1"] {
            let t = fake.target(&view, name);
            assert_eq!(t.disks, ["sda"], "{name}: {t:?}");
            let r = refusal_reasons(&t, MIB, u64::MAX, true);
            assert!(
                has(
                    &r,
                    &["running system", "/ is mounted from /dev/mapper/root"]
                ),
                "{name}: {r:#?}"
            );
            assert!(
                has(&r, &["running system", "/boot is mounted from /dev/sda1"]),
                "{name}: {r:#?}"
            );
        }
        // Only the devices the write would destroy count as the target's own mounts.
        let whole = fake.target(&view, "sda");
        assert_eq!(
            whole.mounts,
            ["/dev/mapper/root on /", "/dev/sda1 on /boot"],
            "{whole:?}"
        );
        let part = fake.target(&view, "sda2");
        assert_eq!(part.mounts, ["/dev/mapper/root on /"], "{part:?}");
        assert_eq!(part.disk_mounts, ["/dev/sda1 on /boot"], "{part:?}");
        // The stick next to it is not the system's.
        assert!(reasons(&view, &fake, "sdb").is_empty());
    }

    #[test]
    fn refuses_every_partition_of_a_dual_boot_disk() {
        let fake = FakeSys::new();
        fake.disk("sda", (8, 0), 1000, "WDC WD10", false);
        fake.partition("sda", "sda1", (8, 1), 1, 1);
        fake.partition("sda", "sda2", (8, 2), 2, 500); // Windows: NTFS, not mounted
        fake.partition("sda", "sda3", (8, 3), 3, 499);
        fake.disk("sdb", (8, 16), 32, "Cruzer", true);
        fake.partition("sdb", "sdb1", (8, 17), 1, 32);
        let view = fake.view(
            "\
22 1 8:3 / / rw,relatime - ext4 /dev/sda3 rw
23 22 8:1 / /boot/efi rw,relatime - vfat /dev/sda1 rw
",
            "",
        );
        for name in ["sda", "sda2"] {
            let r = reasons(&view, &fake, name);
            assert!(
                has(
                    &r,
                    &["/dev/", "disk of the running system (sda)", "/dev/sda3"]
                ),
                "{name}: {r:#?}"
            );
            assert!(has(&r, &["/boot/efi is mounted from /dev/sda1"]), "{r:#?}");
            // Unmounting / is no advice: the system's disk is refused for what it is.
            assert!(!has(&r, &["umount"]), "{name}: {r:#?}");
        }
        let ntfs = fake.target(&view, "sda2");
        assert!(
            ntfs.mounts.is_empty() && ntfs.devices.len() == 1,
            "{ntfs:?}"
        );
        for name in ["sdb", "sdb1"] {
            assert!(reasons(&view, &fake, name).is_empty(), "{name}");
        }
    }

    #[test]
    fn refuses_a_disk_with_an_active_swap() {
        let fake = FakeSys::new();
        fake.disk("sda", (8, 0), 100, "root disk", false);
        fake.disk("sdb", (8, 16), 100, "swap disk", false);
        fake.partition("sdb", "sdb1", (8, 17), 1, 8);
        fake.partition("sdb", "sdb2", (8, 18), 2, 92);
        fake.disk("sdc", (8, 32), 100, "data disk", false);
        fake.partition("sdc", "sdc1", (8, 33), 1, 100);
        fake.disk("sdd", (8, 48), 16, "Cruzer", true);
        let view = fake.view(
            "\
22 1 8:0 / / rw - ext4 /dev/sda rw
30 22 8:33 / /srv\\040data rw - ext4 /dev/sdc1 rw
",
            "/dev/sdb1\tpartition\t8388604\t0\t-2\n/srv\\040data/swapfile\tfile\t1048572\t0\t-3\n",
        );
        // Swap on a partition: its disk and every partition of it, though nothing is mounted.
        for name in ["sdb", "sdb1", "sdb2"] {
            let r = reasons(&view, &fake, name);
            assert!(
                has(&r, &["running system", "/dev/sdb1 is an active swap"]),
                "{name}: {r:#?}"
            );
        }
        // A swap file: the disk of the file system it is on.
        let r = reasons(&view, &fake, "sdc");
        assert!(
            has(
                &r,
                &["running system", "/srv data/swapfile is an active swap"]
            ),
            "{r:#?}"
        );
        assert!(reasons(&view, &fake, "sdd").is_empty());
    }

    #[test]
    fn refuses_a_disk_with_any_mounted_file_system() {
        let fake = FakeSys::new();
        fake.disk("nvme0n1", (259, 0), 500, "root disk", false);
        fake.disk("sdb", (8, 16), 2000, "home disk", false);
        fake.partition("sdb", "sdb1", (8, 17), 1, 1000);
        fake.partition("sdb", "sdb2", (8, 18), 2, 1000);
        // md0 mirrors sdc1 and sdd1 and holds /srv: sdd's spare partition is refused too.
        fake.disk("sdc", (8, 32), 100, "mirror a", false);
        fake.partition("sdc", "sdc1", (8, 33), 1, 100);
        fake.disk("sdd", (8, 48), 100, "mirror b", false);
        fake.partition("sdd", "sdd1", (8, 49), 1, 50);
        fake.partition("sdd", "sdd2", (8, 50), 2, 50);
        fake.stacked("md0", (9, 0), &["sdc1", "sdd1"]);
        let view = fake.view(
            "\
22 1 259:0 / / rw - ext4 /dev/nvme0n1 rw
30 22 8:17 / /home rw - ext4 /dev/sdb1 rw
31 22 9:0 / /srv rw - ext4 /dev/md0 rw
",
            "",
        );
        let r = refusal_reasons(&fake.target(&view, "sdb"), MIB, u64::MAX, false);
        assert!(
            has(&r, &["in use, mounted: /dev/sdb1 on /home", "umount /home"]),
            "{r:#?}"
        );
        assert!(!has(&r, &["running system"]), "{r:#?}");
        let r = reasons(&view, &fake, "sdb2");
        assert!(
            has(
                &r,
                &["disk in use (sdb)", "/dev/sdb1 on /home", "umount /home"]
            ),
            "{r:#?}"
        );
        let r = reasons(&view, &fake, "sdd2");
        assert!(
            has(&r, &["disk in use (sdd)", "/dev/md0 on /srv"]),
            "{r:#?}"
        );
        let r = reasons(&view, &fake, "nvme0n1");
        assert!(has(&r, &["running system"]), "{r:#?}");
    }

    #[test]
    fn accepts_an_unrelated_usb_stick_and_describes_it() {
        let (fake, view) = encrypted_laptop();
        fake.partition("sdb", "sdb1", (8, 17), 1, 16);
        let t = fake.target(&view, "sdb");
        assert!(reasons(&view, &fake, "sdb").is_empty(), "{t:?}");
        assert_eq!(t.describe(), "/dev/sdb (ATA Cruzer, removable, 16.0 GiB)");
        assert_eq!(t.disks, ["sdb"]);
        assert_eq!(
            t.devices
                .iter()
                .map(|d| d.name.as_str())
                .collect::<Vec<_>>(),
            ["sdb", "sdb1"]
        );
        assert_eq!(
            t.identity,
            Identity::Block {
                rdev: (8, 16),
                diskseq: Some(26),
                size: 16 << 30,
                model: "Cruzer".into()
            }
        );
        // A partition has the disk's model, removable flag and disk sequence number.
        let p = fake.target(&view, "sdb1");
        assert_eq!(p.describe(), "/dev/sdb1 (ATA Cruzer, removable, 16.0 GiB)");
        assert!(matches!(
            p.identity,
            Identity::Block {
                diskseq: Some(26),
                ..
            }
        ));
    }

    #[test]
    fn another_disk_under_the_same_name_is_not_the_target() {
        let (fake, view) = encrypted_laptop();
        let t = fake.target(&view, "sdb");
        let size = 16 << 30;
        assert!(
            identity_differences(&t.identity, &block_identity(&view, (8, 16), size)).is_empty()
        );
        // A stick swapped in: the same name and number, a new disk sequence number.
        fake.set_diskseq("sdb", Some(27));
        let d = identity_differences(&t.identity, &block_identity(&view, (8, 16), size));
        assert_eq!(d, ["its disk sequence number is 27, it was 26"]);
        // Unplugged: sysfs no longer has it.
        fake.set_diskseq("sdb", None);
        let d = identity_differences(&t.identity, &block_identity(&view, (8, 16), size));
        assert_eq!(d, ["its disk sequence number is unknown, it was 26"]);
    }

    #[test]
    fn identity_check_compares_number_sequence_size_and_model() {
        let stick = |rdev, diskseq, size, model: &str| Identity::Block {
            rdev,
            diskseq,
            size,
            model: model.into(),
        };
        let described = stick((8, 16), Some(7), 1 << 34, "Cruzer");
        assert!(identity_differences(&described, &described.clone()).is_empty());
        let d = identity_differences(&described, &stick((8, 32), Some(7), 1 << 34, "Cruzer"));
        assert_eq!(d, ["its device number is 8:32, it was 8:16"]);
        let d = identity_differences(&described, &stick((8, 16), Some(9), 1 << 34, "Cruzer"));
        assert_eq!(d, ["its disk sequence number is 9, it was 7"]);
        // Without diskseq (Linux before 5.15): the number, size and model must do.
        let old = stick((8, 16), None, 1 << 34, "Cruzer");
        assert!(identity_differences(&old, &old.clone()).is_empty());
        let d = identity_differences(&old, &stick((8, 16), None, 1 << 35, "Ultra"));
        assert_eq!(
            d,
            [
                "its size is 34359738368 bytes, it was 17179869184",
                "its model is \"Ultra\", it was \"Cruzer\""
            ]
        );
        // A file has no device number: its file system and inode.
        let file = Identity::File { dev: 2049, ino: 12 };
        assert!(identity_differences(&file, &file.clone()).is_empty());
        let d = identity_differences(&file, &Identity::File { dev: 2049, ino: 13 });
        assert!(d.len() == 1 && d[0].contains("another file now"), "{d:?}");
        assert_eq!(
            identity_differences(&described, &file),
            ["it is a regular file now, it was a block device"]
        );
    }
}
