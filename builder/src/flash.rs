//! `appliance write IMAGE --device /dev/sdX`: writes an image to a disk, safely.
//!
//! Before anything is opened for writing the target is described and checked: it is refused if
//! it (or a partition of it, or a device stacked on it) is mounted, holds the running system or
//! an active swap, is larger than `--max-size` (a USB stick is rarely 1 TB; an internal disk
//! often is) without `--force`, is smaller than the image, or is the image itself. Then the user
//! types the device's name to confirm (or passes `--yes`).
//!
//! With a bmap (see [`crate::formats::write_bmap`]) only the mapped ranges are written; like
//! `bmaptool copy`, the unmapped areas of the target are LEFT AS THEY WERE, not zeroed: the
//! image's file systems do not read them. Without a bmap every byte of the image is written,
//! zeros included, since the device may hold old data where the image has zeros. Afterwards
//! the data is read back from the device and checked against SHA-256 sums.

use std::io::IsTerminal;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use sha2::{Digest, Sha256};

use crate::formats::{read_bmap, Bmap};
use crate::progress::human_bytes;

/// The largest target written without `--force`: 256 GiB.
pub const DEFAULT_MAX_SIZE: u64 = 256 << 30;

const CHUNK: usize = 4 << 20;

pub struct WriteArgs {
    pub image: PathBuf,
    pub device: PathBuf,
    /// Default: `<image stem>.bmap` beside the image, if it exists.
    pub bmap: Option<PathBuf>,
    /// Skip the confirmation prompt.
    pub yes: bool,
    /// Allow a device larger than `max_size`.
    pub force: bool,
    pub max_size: u64,
}

impl WriteArgs {
    /// The defaults: bmap found beside the image, prompt, 256 GiB limit.
    pub fn new(image: impl Into<PathBuf>, device: impl Into<PathBuf>) -> WriteArgs {
        WriteArgs {
            image: image.into(),
            device: device.into(),
            bmap: None,
            yes: false,
            force: false,
            max_size: DEFAULT_MAX_SIZE,
        }
    }
}

/// A block device's major and minor numbers.
pub type DevNum = (u32, u32);

/// A block device known to sysfs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockDev {
    pub name: String,
    pub dev: DevNum,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TargetKind {
    BlockDevice,
    /// A regular file standing in for a disk (a VM disk, or tests).
    File,
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
    /// Mounts of any of `devices`, as `<source> on <mount point>`.
    pub mounts: Vec<String>,
    /// How the target serves the running system (`/`, swap); empty if it does not.
    pub system_uses: Vec<String>,
    /// The image is the target, or is stored on it.
    pub is_image: bool,
}

impl TargetInfo {
    /// Describes `target` from the file system, sysfs, `/proc/self/mountinfo` and
    /// `/proc/swaps`, without opening it. `image` is the image to be written (to spot it).
    pub fn from_path(target: &Path, image: &Path) -> Result<TargetInfo> {
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
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")
            .context("cannot read /proc/self/mountinfo: is /proc mounted?")?;
        let swaps = std::fs::read_to_string("/proc/swaps").unwrap_or_default();
        let sys = Path::new("/sys");
        let name = resolved
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();

        if meta.file_type().is_block_device() {
            let dev = split_dev(meta.rdev());
            let sysname = sysfs_name(sys, dev).with_context(|| {
                format!(
                    "{} is a block device ({}:{}) that sysfs does not know; is /sys mounted?",
                    resolved.display(),
                    dev.0,
                    dev.1
                )
            })?;
            let class = sys.join("class/block").join(&sysname);
            let sectors: u64 = read_trim(&class.join("size"))
                .and_then(|s| s.parse().ok())
                .with_context(|| format!("cannot read the size of {sysname} from sysfs"))?;
            // A partition has no device/ directory; its disk's model still says what it is.
            let dev_dir = if class.join("device").exists() {
                class.join("device")
            } else {
                class.join("../device")
            };
            let devices = stacked_devices(sys, &sysname);
            let system = system_devices(sys, &mountinfo, &swaps);
            let system_uses = dedup(
                system
                    .iter()
                    .filter(|(d, _)| devices.iter().any(|b| b.dev == *d))
                    .map(|(_, why)| why.clone())
                    .collect(),
            );
            let mounts = mounts_of(&mountinfo, &devices);
            // The image is the device itself, or a file on one of its file systems.
            let is_image = (image_meta.file_type().is_block_device()
                && image_meta.rdev() == meta.rdev())
                || devices.iter().any(|b| b.dev == split_dev(image_meta.dev()));
            Ok(TargetInfo {
                path: target.to_path_buf(),
                resolved,
                kind: TargetKind::BlockDevice,
                name: sysname,
                size: sectors * 512,
                model: read_trim(&dev_dir.join("model")).unwrap_or_default(),
                vendor: read_trim(&dev_dir.join("vendor")).unwrap_or_default(),
                removable: read_trim(&class.join("removable")).map(|s| s == "1"),
                devices,
                mounts,
                system_uses,
                is_image,
            })
        } else if meta.file_type().is_file() {
            let system_uses = swaps_entries(&swaps)
                .into_iter()
                .filter(|s| std::fs::canonicalize(s).ok().as_deref() == Some(&resolved))
                .map(|s| format!("it is an active swap file ({s})"))
                .collect();
            Ok(TargetInfo {
                path: target.to_path_buf(),
                resolved,
                kind: TargetKind::File,
                name,
                size: meta.len(),
                model: String::new(),
                vendor: String::new(),
                removable: None,
                devices: Vec::new(),
                mounts: Vec::new(),
                system_uses,
                is_image: meta.dev() == image_meta.dev() && meta.ino() == image_meta.ino(),
            })
        } else {
            bail!(
                "{} is neither a block device nor a regular file: give a disk such as /dev/sdb \
                 (see `lsblk`)",
                target.display()
            )
        }
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
        reasons.push(format!(
            "{dev} holds the running system: {why}; writing it would destroy this machine's \
             own disk — pick another device (see `lsblk`)"
        ));
    }
    if !target.mounts.is_empty() {
        let points: Vec<&str> = target
            .mounts
            .iter()
            .filter_map(|m| m.rsplit_once(" on ").map(|(_, p)| p))
            .collect();
        reasons.push(format!(
            "{dev} is in use, mounted: {}; unmount it first (`umount {}`)",
            target.mounts.join(", "),
            points.join(" ")
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

/// Mounts (`<source> on <mount point>`) in `mountinfo` (the text of `/proc/self/mountinfo`)
/// whose device is one of `devices`, matched by major:minor or, for file systems that report
/// an anonymous device number (btrfs), by the source `/dev/<name>`.
pub fn mounts_of(mountinfo: &str, devices: &[BlockDev]) -> Vec<String> {
    let mut found = Vec::new();
    for line in mountinfo.lines() {
        let Some(m) = parse_mountinfo_line(line) else {
            continue;
        };
        let hit = devices
            .iter()
            .any(|d| Some(d.dev) == m.dev || m.source == format!("/dev/{}", d.name));
        if hit {
            found.push(format!("{} on {}", m.source, m.mount_point));
        }
    }
    dedup(found)
}

struct MountLine {
    dev: Option<DevNum>,
    mount_point: String,
    source: String,
}

fn parse_mountinfo_line(line: &str) -> Option<MountLine> {
    // "36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue"
    let (pre, post) = line.split_once(" - ")?;
    let f: Vec<&str> = pre.split(' ').collect();
    let dev = f.get(2)?.split_once(':').and_then(|(a, b)| {
        let (a, b) = (a.parse().ok()?, b.parse().ok()?);
        Some((a, b))
    });
    let source = post.split(' ').nth(1).unwrap_or("");
    Some(MountLine {
        dev,
        mount_point: unescape(f.get(4)?),
        source: unescape(source),
    })
}

/// The mount in effect on `/`: the last one listed, mounts stacking in order.
fn root_mount(mountinfo: &str) -> Option<MountLine> {
    mountinfo
        .lines()
        .filter_map(parse_mountinfo_line)
        .rfind(|m| m.mount_point == "/")
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

fn swaps_entries(swaps: &str) -> Vec<String> {
    swaps
        .lines()
        .skip(1) // the header
        .filter_map(|l| l.split_whitespace().next())
        .map(unescape)
        .collect()
}

/// Devices behind `/` and active swaps, each with why it matters: the root file system's
/// device and everything under it (dm/md slaves, and the disk of a partition).
fn system_devices(sys: &Path, mountinfo: &str, swaps: &str) -> Vec<(DevNum, String)> {
    let mut out = Vec::new();
    if let Some(root) = root_mount(mountinfo) {
        // btrfs and others report an anonymous 0:N; their source names the device.
        let dev = match root.dev {
            Some((maj, min)) if maj != 0 => Some((maj, min)),
            _ => std::fs::metadata(&root.source)
                .ok()
                .filter(|m| m.file_type().is_block_device())
                .map(|m| split_dev(m.rdev())),
        };
        if let Some(dev) = dev {
            let why = format!("/ is on {}", root.source);
            for d in underlying_devices(sys, dev) {
                out.push((d, why.clone()));
            }
        }
    }
    for swap in swaps_entries(swaps) {
        let Ok(m) = std::fs::metadata(&swap) else {
            continue;
        };
        // A swap partition is the device; a swap file lives on its file system's device.
        let dev = if m.file_type().is_block_device() {
            split_dev(m.rdev())
        } else {
            split_dev(m.dev())
        };
        let why = format!("it backs the active swap {swap}");
        for d in underlying_devices(sys, dev) {
            out.push((d, why.clone()));
        }
    }
    out
}

/// `dev` and every device under it: slaves of dm/md devices, recursively, and the disk a
/// partition belongs to.
fn underlying_devices(sys: &Path, dev: DevNum) -> Vec<DevNum> {
    let mut out = vec![dev];
    let mut todo = vec![dev];
    while let Some(d) = todo.pop() {
        let Some(name) = sysfs_name(sys, d) else {
            continue;
        };
        let class = sys.join("class/block").join(&name);
        let mut below: Vec<String> = list_dir(&class.join("slaves"));
        if class.join("partition").exists() {
            if let Some(disk) = std::fs::canonicalize(&class)
                .ok()
                .and_then(|p| p.parent().and_then(|p| p.file_name()).map(|n| n.to_owned()))
            {
                below.push(disk.to_string_lossy().into_owned());
            }
        }
        for n in below {
            if let Some(nd) = read_dev(sys, &n) {
                if !out.contains(&nd) {
                    out.push(nd);
                    todo.push(nd);
                }
            }
        }
    }
    out
}

/// The device `name`, its partitions, and what is stacked on any of them (holders: dm, md),
/// recursively.
fn stacked_devices(sys: &Path, name: &str) -> Vec<BlockDev> {
    let mut out: Vec<BlockDev> = Vec::new();
    let mut todo = vec![name.to_string()];
    while let Some(n) = todo.pop() {
        if out.iter().any(|b| b.name == n) {
            continue;
        }
        let Some(dev) = read_dev(sys, &n) else {
            continue;
        };
        out.push(BlockDev {
            name: n.clone(),
            dev,
        });
        let class = sys.join("class/block").join(&n);
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

fn read_trim(path: &Path) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
}

fn read_dev(sys: &Path, name: &str) -> Option<DevNum> {
    let s = read_trim(&sys.join("class/block").join(name).join("dev"))?;
    let (a, b) = s.split_once(':')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

/// The kernel's name (`sda1`, `dm-0`) of block device `dev`.
fn sysfs_name(sys: &Path, dev: DevNum) -> Option<String> {
    let link = sys.join(format!("dev/block/{}:{}", dev.0, dev.1));
    let target = std::fs::read_link(link).ok()?;
    Some(target.file_name()?.to_string_lossy().into_owned())
}

/// Major and minor of a `dev_t`, as glibc's `major()`/`minor()` split it.
fn split_dev(dev: u64) -> DevNum {
    let major = ((dev >> 32) & 0xffff_f000) | ((dev >> 8) & 0x0000_0fff);
    let minor = ((dev >> 12) & 0xffff_ff00) | (dev & 0x0000_00ff);
    (major as u32, minor as u32)
}

fn dedup(mut v: Vec<String>) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    v.retain(|s| seen.insert(s.clone()));
    v
}

/// Whether what the user typed confirms writing `target`: its name (`sdb`) or its path.
pub fn confirmation_matches(typed: &str, target: &TargetInfo) -> bool {
    let t = typed.trim();
    !t.is_empty()
        && (t == target.name
            || Path::new(t) == target.resolved
            || Path::new(t) == target.path.as_path())
}

/// The bmap used when none is given: `<image stem>.bmap` beside the image, else
/// `<image>.bmap` (bmaptool's habit), if either exists.
pub fn default_bmap(image: &Path) -> Option<PathBuf> {
    let a = image.with_extension("bmap");
    let mut b = image.as_os_str().to_owned();
    b.push(".bmap");
    [a, PathBuf::from(b)].into_iter().find(|p| p.is_file())
}

/// Writes `args.image` to `args.device` after the checks and the confirmation described in the
/// module documentation, then reads it back and checks it.
pub fn run_write(args: &WriteArgs) -> Result<()> {
    let image_meta = std::fs::metadata(&args.image).with_context(|| {
        format!(
            "cannot read the image {}: build it first (`appliance build`) or give its path",
            args.image.display()
        )
    })?;
    if !image_meta.is_file() {
        bail!(
            "the image {} is not a regular file: give the .raw image `appliance build` made",
            args.image.display()
        );
    }
    let image_size = image_meta.len();
    let bmap_path = args.bmap.clone().or_else(|| default_bmap(&args.image));
    let bmap = match &bmap_path {
        Some(p) => {
            let b = read_bmap(p)?;
            if b.image_size != image_size {
                bail!(
                    "the bmap {} is for an image of {} bytes, but {} has {image_size}: it \
                     belongs to another image; give the right one with --bmap, or delete it to \
                     write every byte",
                    p.display(),
                    b.image_size,
                    args.image.display()
                );
            }
            Some(b)
        }
        None => None,
    };

    let target = TargetInfo::from_path(&args.device, &args.image)?;
    let reasons = refusal_reasons(&target, image_size, args.max_size, args.force);
    if !reasons.is_empty() {
        bail!(
            "refusing to write {} to {}:\n  - {}",
            args.image.display(),
            target.resolved.display(),
            reasons.join("\n  - ")
        );
    }

    let to_write = bmap.as_ref().map_or(image_size, Bmap::mapped_bytes);
    eprintln!("Target: {}", target.describe());
    eprintln!(
        "Image:  {} ({}){}",
        args.image.display(),
        human_bytes(image_size),
        match (&bmap_path, &bmap) {
            (Some(p), Some(_)) => format!(
                "; bmap {}: {} of data to write",
                p.display(),
                human_bytes(to_write)
            ),
            _ => "; no bmap: every byte is written".to_string(),
        }
    );
    eprintln!("ALL DATA ON {} WILL BE LOST.", target.resolved.display());
    if !args.yes {
        confirm(&target)?;
    }

    let start = Instant::now();
    let image_sha = write_image(&args.image, image_size, &target, bmap.as_ref(), to_write)?;
    let write_secs = start.elapsed().as_secs_f64();
    let verify_start = Instant::now();
    let checked = read_back(&target, bmap.as_ref(), image_size, image_sha.as_deref())?;
    let verify_secs = verify_start.elapsed().as_secs_f64();
    println!(
        "Wrote {} to {} in {write_secs:.1} s ({:.1} MB/s); read back and checked {} in \
         {verify_secs:.1} s ({:.1} MB/s).",
        human_bytes(to_write),
        target.resolved.display(),
        mb_per_s(to_write, write_secs),
        checked,
        mb_per_s(to_write, verify_secs),
    );
    Ok(())
}

fn mb_per_s(bytes: u64, secs: f64) -> f64 {
    bytes as f64 / 1e6 / secs.max(1e-6)
}

fn confirm(target: &TargetInfo) -> Result<()> {
    let stdin = std::io::stdin();
    let tty = stdin.is_terminal();
    confirm_from(target, tty, &mut stdin.lock())
}

/// Asks for the device's name on `input`; refuses outright when that is not a terminal, since
/// a script piping "yes" must not be able to wipe a disk by accident.
fn confirm_from(target: &TargetInfo, tty: bool, input: &mut dyn std::io::BufRead) -> Result<()> {
    if !tty {
        bail!(
            "nobody can confirm: standard input is not a terminal; to write {} without \
             asking, pass --yes",
            target.resolved.display()
        );
    }
    eprint!("Type {} to write it, anything else to stop: ", target.name);
    let mut line = String::new();
    input
        .read_line(&mut line)
        .context("cannot read the confirmation from standard input")?;
    if !confirmation_matches(&line, target) {
        bail!(
            "not confirmed (expected {}); nothing was written",
            target.name
        );
    }
    Ok(())
}

fn open_target(target: &TargetInfo, write: bool) -> Result<std::fs::File> {
    let mut opts = std::fs::OpenOptions::new();
    opts.read(!write).write(write);
    if target.kind == TargetKind::BlockDevice {
        // O_EXCL on a block device: the kernel refuses if it is mounted or held by anyone
        // else (another writer, LVM, RAID), closing the gap since the checks.
        opts.custom_flags(libc::O_EXCL);
    }
    opts.open(&target.resolved).with_context(|| {
        if target.kind == TargetKind::BlockDevice {
            format!(
                "cannot open {} exclusively: if it is busy, something holds it (a mount, LVM, \
                 RAID, another program: see `lsblk` and `fuser -v {}`); run as root if \
                 permission is denied",
                target.resolved.display(),
                target.resolved.display()
            )
        } else {
            format!(
                "cannot open the target file {}: check its permissions",
                target.resolved.display()
            )
        }
    })
}

fn bytes_bar(total: u64, what: &str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(total);
    pb.set_style(
        ProgressStyle::with_template(
            "{prefix:.bold} [{bar:40}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    pb.set_prefix(what.to_string());
    pb
}

/// Writes the image (the bmap's ranges, or all of it) and fsyncs. Without a bmap, returns the
/// image's SHA-256, computed on the way, for the read-back.
fn write_image(
    image: &Path,
    image_size: u64,
    target: &TargetInfo,
    bmap: Option<&Bmap>,
    to_write: u64,
) -> Result<Option<String>> {
    let img = std::fs::File::open(image)
        .with_context(|| format!("cannot open the image {}", image.display()))?;
    let out = open_target(target, true)?;
    let dev = target.resolved.display();
    let pb = bytes_bar(to_write, "writing");
    let mut buf = vec![0u8; CHUNK];
    let mut copy = |start: u64, end: u64, hash: &mut Sha256| -> Result<()> {
        let mut pos = start;
        while pos < end {
            let n = ((end - pos) as usize).min(CHUNK);
            img.read_exact_at(&mut buf[..n], pos).with_context(|| {
                format!(
                    "cannot read {} at byte {pos}: was it changed while being written?",
                    image.display()
                )
            })?;
            hash.update(&buf[..n]);
            out.write_all_at(&buf[..n], pos).with_context(|| {
                format!(
                    "writing {dev} failed at byte {pos}: the device may be faulty, full or \
                     unplugged; check `dmesg`"
                )
            })?;
            pos += n as u64;
            pb.inc(n as u64);
        }
        Ok(())
    };
    let sha = match bmap {
        Some(b) => {
            for r in &b.ranges {
                let (s, e) = b.byte_range(r);
                let mut h = Sha256::new();
                copy(s, e, &mut h)?;
                // The image must match its bmap, or the read-back would "verify" the wrong data.
                if hex::encode(h.finalize()) != r.sha256 {
                    bail!(
                        "blocks {}-{} of {} do not match its bmap: the bmap belongs to another \
                         image, or the image changed; make the bmap again, or write without it",
                        r.first,
                        r.last,
                        image.display()
                    );
                }
            }
            None
        }
        None => {
            let mut h = Sha256::new();
            copy(0, image_size, &mut h)?;
            Some(hex::encode(h.finalize()))
        }
    };
    pb.set_message("syncing");
    out.sync_all().with_context(|| {
        format!("flushing {dev} failed: the device may be faulty or unplugged; check `dmesg`")
    })?;
    pb.finish_and_clear();
    Ok(sha)
}

/// Reads the written data back from the target and checks it; returns what was checked.
fn read_back(
    target: &TargetInfo,
    bmap: Option<&Bmap>,
    image_size: u64,
    image_sha: Option<&str>,
) -> Result<String> {
    let f = open_target(target, false)?;
    // Drop the cached pages (clean after the fsync) so the check reads the device itself, not
    // the copy in memory.
    {
        use std::os::fd::AsRawFd;
        // SAFETY: a valid, open descriptor; posix_fadvise only gives the kernel a hint.
        unsafe {
            libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED);
        }
    }
    let dev = target.resolved.display();
    let mut buf = vec![0u8; CHUNK];
    let mut hash_range = |start: u64, end: u64, pb: &ProgressBar| -> Result<String> {
        let mut h = Sha256::new();
        let mut pos = start;
        while pos < end {
            let n = ((end - pos) as usize).min(CHUNK);
            f.read_exact_at(&mut buf[..n], pos).with_context(|| {
                format!("reading {dev} back failed at byte {pos}: check `dmesg`")
            })?;
            h.update(&buf[..n]);
            pos += n as u64;
            pb.inc(n as u64);
        }
        Ok(hex::encode(h.finalize()))
    };
    let bad = |what: String| {
        anyhow::anyhow!(
            "{dev} does not hold what was written: {what}; the device may be faulty or fake \
             (smaller than it claims): try another one"
        )
    };
    match (bmap, image_sha) {
        (Some(b), _) => {
            let pb = bytes_bar(b.mapped_bytes(), "checking");
            for r in &b.ranges {
                let (s, e) = b.byte_range(r);
                if hash_range(s, e, &pb)? != r.sha256 {
                    return Err(bad(format!("blocks {}-{} differ", r.first, r.last)));
                }
            }
            pb.finish_and_clear();
            Ok(format!(
                "{} mapped ranges against the bmap's SHA-256",
                b.ranges.len()
            ))
        }
        (None, Some(want)) => {
            let pb = bytes_bar(image_size, "checking");
            let got = hash_range(0, image_size, &pb)?;
            pb.finish_and_clear();
            if got != want {
                return Err(bad(format!(
                    "SHA-256 of its first {image_size} bytes is {got}, the image's is {want}"
                )));
            }
            Ok(format!("the SHA-256 of the first {image_size} bytes"))
        }
        (None, None) => bail!("internal error: no checksum to verify against"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::formats::write_bmap;

    fn read_all(path: &Path) -> Vec<u8> {
        std::fs::read(path).unwrap()
    }

    const MIB: u64 = 1 << 20;

    /// A 4 MiB image with data in a few places (blocks 0, 300 and the last).
    fn image(dir: &Path) -> PathBuf {
        let p = dir.join("img.raw");
        let mut data = vec![0u8; 4 * MIB as usize];
        data[..512].fill(0xaa);
        data[300 * 4096..300 * 4096 + 4096].fill(0x33);
        let n = data.len();
        data[n - 10..].fill(0x77);
        std::fs::write(&p, data).unwrap();
        p
    }

    fn file_target(dir: &Path, size: u64, fill: u8) -> PathBuf {
        let p = dir.join("target.img");
        std::fs::write(&p, vec![fill; size as usize]).unwrap();
        p
    }

    fn args(image: &Path, target: &Path) -> WriteArgs {
        WriteArgs {
            yes: true,
            ..WriteArgs::new(image, target)
        }
    }

    fn fake_disk(size: u64) -> TargetInfo {
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
            mounts: vec![],
            system_uses: vec![],
            is_image: false,
        }
    }

    #[test]
    fn writes_a_file_target_without_bmap_overwriting_old_data() {
        let dir = tempfile::tempdir().unwrap();
        let img = image(dir.path());
        let target = file_target(dir.path(), 5 * MIB, 0x55);
        run_write(&args(&img, &target)).unwrap();
        let got = read_all(&target);
        let want = read_all(&img);
        assert_eq!(got.len() as u64, 5 * MIB, "the target keeps its size");
        assert!(
            got[..want.len()] == want[..],
            "the image's bytes, zeros included"
        );
        assert!(got[want.len()..].iter().all(|&b| b == 0x55));
    }

    #[test]
    fn writes_a_file_target_with_bmap_leaving_unmapped_areas_alone() {
        let dir = tempfile::tempdir().unwrap();
        let img = image(dir.path());
        // Found by default beside the image: img.bmap.
        write_bmap(&img, &dir.path().join("img.bmap")).unwrap();
        // A fresh (zeroed) target ends up identical to the image.
        let fresh = dir.path().join("fresh.img");
        std::fs::File::create(&fresh)
            .unwrap()
            .set_len(4 * MIB)
            .unwrap();
        run_write(&args(&img, &fresh)).unwrap();
        assert!(read_all(&fresh) == read_all(&img));
        // Old data in an unmapped range is kept (documented, as bmaptool does); mapped data
        // was written and verified.
        let target = file_target(dir.path(), 4 * MIB, 0x55);
        run_write(&args(&img, &target)).unwrap();
        let got = read_all(&target);
        let want = read_all(&img);
        assert_eq!(&got[..512], &want[..512]);
        assert!(got[4096..8192].iter().all(|&b| b == 0x55), "unmapped: kept");
        assert_eq!(&got[300 * 4096..301 * 4096], &want[300 * 4096..301 * 4096]);
        assert_eq!(&got[got.len() - 10..], &want[want.len() - 10..]);
    }

    #[test]
    fn a_bmap_of_another_image_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let img = image(dir.path());
        let other = dir.path().join("other.raw");
        std::fs::write(&other, vec![1u8; MIB as usize]).unwrap();
        let bmap = dir.path().join("other.bmap");
        write_bmap(&other, &bmap).unwrap();
        let target = file_target(dir.path(), 4 * MIB, 0);
        let a = WriteArgs {
            bmap: Some(bmap),
            ..args(&img, &target)
        };
        let err = format!("{:#}", run_write(&a).unwrap_err());
        assert!(err.contains("belongs to another image"), "{err}");
    }

    #[test]
    fn refuses_a_target_smaller_than_the_image() {
        let dir = tempfile::tempdir().unwrap();
        let img = image(dir.path());
        let target = file_target(dir.path(), MIB, 0x55);
        let err = format!("{:#}", run_write(&args(&img, &target)).unwrap_err());
        assert!(err.contains("smaller than the image"), "{err}");
        assert!(read_all(&target).iter().all(|&b| b == 0x55), "untouched");
        assert_eq!(
            refusal_reasons(&fake_disk(MIB), 2 * MIB, u64::MAX, false).len(),
            1
        );
    }

    #[test]
    fn refuses_the_image_itself() {
        let dir = tempfile::tempdir().unwrap();
        let img = image(dir.path());
        let link = dir.path().join("link.img");
        std::os::unix::fs::symlink(&img, &link).unwrap();
        let t = TargetInfo::from_path(&link, &img).unwrap();
        assert!(t.is_image);
        let err = format!("{:#}", run_write(&args(&img, &link)).unwrap_err());
        assert!(err.contains("the image itself"), "{err}");
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
        let mut t = fake_disk(1 << 40);
        t.mounts = mounts_of(mountinfo, &t.devices);
        assert_eq!(
            t.mounts,
            ["/dev/sdz1 on /media/usb stick", "/dev/sdz on /mnt/b"]
        );
        let r = refusal_reasons(&t, 2 << 40, DEFAULT_MAX_SIZE, false);
        assert_eq!(r.len(), 3, "mounted, too large, too small: {r:?}");
        assert!(r[0].contains("umount /media/usb stick /mnt/b"), "{r:?}");
        assert!(mounts_of(mountinfo, &fake_disk(1).devices[1..]).len() == 1);
    }

    #[test]
    fn refuses_the_disk_of_the_running_system() {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let root = root_mount(&mountinfo).unwrap();
        let Ok(meta) = std::fs::metadata(&root.source) else {
            eprintln!(
                "/ is on {}, not a block device: nothing to check",
                root.source
            );
            return;
        };
        if !meta.file_type().is_block_device() {
            eprintln!(
                "/ is on {}, not a block device: nothing to check",
                root.source
            );
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let img = image(dir.path());
        // Only described, never opened.
        let t = TargetInfo::from_path(Path::new(&root.source), &img).unwrap();
        assert!(!t.system_uses.is_empty(), "{t:?}");
        let r = refusal_reasons(&t, MIB, u64::MAX, true);
        eprintln!("{}: {r:#?}", t.describe());
        assert!(r.iter().any(|s| s.contains("running system")), "{r:?}");
        // And the whole disk, if / is on a partition.
        let class = Path::new("/sys/class/block").join(&t.name);
        if class.join("partition").exists() {
            let disk = std::fs::canonicalize(&class).unwrap();
            let disk = disk.parent().unwrap().file_name().unwrap();
            let d = TargetInfo::from_path(&Path::new("/dev").join(disk), &img).unwrap();
            assert!(!d.system_uses.is_empty(), "{d:?}");
        }
    }

    #[test]
    fn confirmation_needs_the_device_name() {
        let t = fake_disk(1 << 30);
        assert!(confirmation_matches("sdz\n", &t));
        assert!(confirmation_matches("/dev/sdz", &t));
        assert!(!confirmation_matches("y\n", &t));
        assert!(!confirmation_matches("", &t));
        assert!(t.describe().contains("SanDisk Cruzer, removable"));
        assert!(confirm_from(&t, true, &mut &b"sdz\n"[..]).is_ok());
        let no = format!(
            "{:#}",
            confirm_from(&t, true, &mut &b"yes\n"[..]).unwrap_err()
        );
        assert!(no.contains("nothing was written"), "{no}");
        let piped = format!(
            "{:#}",
            confirm_from(&t, false, &mut &b"sdz\n"[..]).unwrap_err()
        );
        assert!(piped.contains("--yes"), "{piped}");
    }

    #[test]
    fn splits_dev_t() {
        assert_eq!(split_dev(0xfe00), (254, 0));
        assert_eq!(split_dev((259 << 8) | 3), (259, 3));
        assert_eq!(split_dev(0x10_0301), (3, 257)); // a minor above 255
    }
}
