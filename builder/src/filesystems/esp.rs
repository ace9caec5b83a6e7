//! The EFI system partition: a FAT32 image written with the `fatfs` crate.
//!
//! fatfs 0.3.6 (the newest release on crates.io) produces a volume that firmware, GRUB and
//! Linux read, but that `fsck.fat` flags. After unmounting, [`write_esp`] therefore runs a
//! small repair pass that parses the on-disk structures itself and fixes exactly the known
//! deviations:
//!
//! 1. every new directory starts with LFN slots in front of `.` and `..` (they are dropped);
//! 2. `..` of a first-level directory points at the root cluster instead of 0;
//! 3. the FSInfo free-cluster count and next-free hint are left "unknown" (0xFFFFFFFF);
//!
//! and adds what fatfs never writes: the volume-label entry in the root directory and the
//! backup FSInfo sector that mkfs.fat puts after the backup boot sector.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, ensure, Context, Result};

/// Where the bytes of an ESP file come from.
#[derive(Debug, Clone)]
pub enum EspSource {
    File(PathBuf),
    Bytes(Vec<u8>),
}

/// One file to place on the ESP.
#[derive(Debug, Clone)]
pub struct EspFile {
    /// `/`-separated path inside the ESP, e.g. `EFI/BOOT/BOOTX64.EFI`; parent directories are
    /// created as needed.
    pub path: String,
    pub source: EspSource,
}

/// Smallest ESP we accept: with fatfs's cluster-size heuristic (512 B clusters up to 260 MiB)
/// this leaves well over the 65 525 clusters that make a volume FAT32.
pub const MIN_ESP_SIZE: u64 = 64 * 1024 * 1024;

/// Fixed timestamp for every directory entry, so that images are reproducible.
#[derive(Debug)]
struct FixedTime;

const FIXED_DATE: fatfs::Date = fatfs::Date {
    year: 2000,
    month: 1,
    day: 1,
};
const FIXED_TIME: fatfs::Time = fatfs::Time {
    hour: 0,
    min: 0,
    sec: 0,
    millis: 0,
};

impl fatfs::TimeProvider for FixedTime {
    fn get_current_date(&self) -> fatfs::Date {
        FIXED_DATE
    }
    fn get_current_date_time(&self) -> fatfs::DateTime {
        fatfs::DateTime {
            date: FIXED_DATE,
            time: FIXED_TIME,
        }
    }
}

static FIXED_TIME_PROVIDER: FixedTime = FixedTime;

/// Creates `out` (`size_bytes`, at least 64 MiB so that it is really FAT32), formats it FAT32
/// with `volume_id` and `label`, writes `files` with a fixed timestamp, unmounts, then repairs
/// fatfs 0.3.6's conformance bugs so that `fsck.fat -n` is clean.
pub fn write_esp(
    out: &Path,
    size_bytes: u64,
    volume_id: u32,
    label: &str,
    files: &[EspFile],
) -> Result<()> {
    ensure!(
        size_bytes >= MIN_ESP_SIZE,
        "ESP size {size_bytes} bytes is below the minimum of {MIN_ESP_SIZE} bytes needed for FAT32"
    );
    ensure!(
        size_bytes.is_multiple_of(512),
        "ESP size {size_bytes} is not a multiple of 512 bytes"
    );
    let label_bytes = encode_label(label)?;
    let files = normalise_paths(files)?;

    let mut img = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(out)
        .with_context(|| format!("creating {}", out.display()))?;
    // Truncate-then-extend gives an all-zero (sparse) file: quick format relies on that.
    img.set_len(size_bytes)?;

    fatfs::format_volume(
        &mut img,
        fatfs::FormatVolumeOptions::new()
            .fat_type(fatfs::FatType::Fat32)
            .volume_id(volume_id)
            .volume_label(label_bytes),
    )
    .with_context(|| format!("formatting {}", out.display()))?;

    let geo = Geometry::read(&mut img, 0)?;
    if label_bytes != *b"NO NAME    " {
        // The label also belongs in the root directory (mkfs.fat, Windows and blkid use that
        // copy). The root is still empty, so slot 0 is free; fatfs skips volume entries later.
        write_root_label(&mut img, &geo, &label_bytes)?;
    }

    // fatfs requires the stream to be positioned at the volume start.
    img.seek(SeekFrom::Start(0))?;
    {
        let fs = fatfs::FileSystem::new(
            fscommon::BufStream::new(&mut img),
            fatfs::FsOptions::new()
                .time_provider(&FIXED_TIME_PROVIDER)
                .update_accessed_date(false),
        )
        .with_context(|| format!("mounting freshly formatted {}", out.display()))?;
        // fatfs 0.3.6 picks the FAT type from the cluster count, not from the option.
        ensure!(
            fs.fat_type() == fatfs::FatType::Fat32,
            "fatfs formatted {} as {:?}, not FAT32; use a larger ESP",
            out.display(),
            fs.fat_type()
        );
        for (components, file) in &files {
            add_file(&fs, components, file)
                .with_context(|| format!("writing ESP file {}", file.path))?;
        }
        fs.unmount()
            .with_context(|| format!("unmounting {}", out.display()))?;
    }

    repair(&mut img, 0)
        .with_context(|| format!("repairing FAT structures of {}", out.display()))?;
    img.sync_all()?;
    Ok(())
}

/// `ABCD-1234` form of a FAT volume id, as GRUB's `search --fs-uuid` and
/// `/dev/disk/by-uuid` expect.
pub fn volume_uuid_string(volume_id: u32) -> String {
    format!("{:04X}-{:04X}", volume_id >> 16, volume_id & 0xffff)
}

/// Runs `fsck.fat -n` on a FAT image and returns an error carrying fsck's output if it
/// reports anything besides its banner and the summary line.
pub fn fsck(image: &Path) -> Result<()> {
    let tool = crate::host::find_program("fsck.fat").context(
        "fsck.fat not found; install the Debian package dosfstools (apt-get install dosfstools)",
    )?;
    let output = Command::new(&tool)
        .arg("-n")
        .arg(image)
        .output()
        .with_context(|| format!("running {}", tool.display()))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    // A clean run prints "fsck.fat 4.2 (…)" and "<image>: N files, U/T clusters".
    let complaints: Vec<&str> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .filter(|l| !l.starts_with("fsck.fat "))
        .filter(|l| !(l.contains(" files, ") && l.trim_end().ends_with(" clusters")))
        .collect();
    if !output.status.success() || !complaints.is_empty() {
        bail!(
            "fsck.fat -n {} reported problems (exit {}):\n{}",
            image.display(),
            output.status,
            text.trim_end()
        );
    }
    Ok(())
}

/// Like [`fsck`], for the FAT volume at `offset..offset+len` of a larger disk image; the
/// range is copied to a temporary file first.
pub fn fsck_range(disk: &Path, offset: u64, len: u64) -> Result<()> {
    let mut src = File::open(disk).with_context(|| format!("opening {}", disk.display()))?;
    src.seek(SeekFrom::Start(offset))?;
    let mut tmp = tempfile::NamedTempFile::new()?;
    let copied = io::copy(&mut src.take(len), tmp.as_file_mut())?;
    ensure!(
        copied == len,
        "{} ends before byte {}",
        disk.display(),
        offset + len
    );
    tmp.as_file_mut().flush()?;
    fsck(tmp.path())
}

/// Validates and pads a volume label to the 11-byte on-disk form.
fn encode_label(label: &str) -> Result<[u8; 11]> {
    let label = if label.is_empty() { "NO NAME" } else { label };
    ensure!(
        label.len() <= 11,
        "volume label {label:?} is longer than 11 bytes"
    );
    let mut out = [b' '; 11];
    for (i, c) in label.bytes().enumerate() {
        // Labels are stored upper-case; these characters are invalid in 8.3 names and labels.
        ensure!(
            c.is_ascii_graphic() || c == b' ',
            "volume label {label:?} contains a non-printable or non-ASCII byte"
        );
        ensure!(
            !b"\"*+,./:;<=>?[\\]|".contains(&c),
            "volume label {label:?} contains the invalid character {:?}",
            c as char
        );
        out[i] = c.to_ascii_uppercase();
    }
    Ok(out)
}

/// Splits every path into components and rejects empty, relative or duplicate paths.
fn normalise_paths(files: &[EspFile]) -> Result<Vec<(Vec<&str>, &EspFile)>> {
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(files.len());
    for file in files {
        let components: Vec<&str> = file.path.trim_start_matches('/').split('/').collect();
        ensure!(
            components
                .iter()
                .all(|c| !c.is_empty() && *c != "." && *c != ".."),
            "invalid ESP path {:?}",
            file.path
        );
        // FAT compares names case-insensitively, so "a" and "A" would be the same file.
        ensure!(
            seen.insert(components.join("/").to_lowercase()),
            "ESP path {:?} given twice",
            file.path
        );
        out.push((components, file));
    }
    Ok(out)
}

fn add_file<T: fatfs::ReadWriteSeek>(
    fs: &fatfs::FileSystem<T>,
    components: &[&str],
    file: &EspFile,
) -> Result<()> {
    let (name, dirs) = components.split_last().context("empty path")?;
    let mut dir = fs.root_dir();
    for d in dirs {
        // create_dir opens the directory if it already exists.
        dir = dir.create_dir(d)?;
    }
    let mut f = dir.create_file(name)?;
    match &file.source {
        EspSource::Bytes(bytes) => f.write_all(bytes)?,
        EspSource::File(path) => {
            let mut src =
                File::open(path).with_context(|| format!("opening {}", path.display()))?;
            io::copy(&mut src, &mut f).with_context(|| format!("copying {}", path.display()))?;
        }
    }
    f.flush()?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// On-disk FAT32 structures, parsed independently of fatfs for the repair pass.

const DIR_ENTRY: usize = 32;
const ATTR_VOLUME: u8 = 0x08;
const ATTR_DIR: u8 = 0x10;
const ATTR_LFN: u8 = 0x0f;
const DOT: &[u8; 11] = b".          ";
const DOTDOT: &[u8; 11] = b"..         ";
const FAT32_MIN_CLUSTERS: u32 = 65_525;
const FAT_ENTRY_MASK: u32 = 0x0fff_ffff;
const END_OF_CHAIN: u32 = 0x0fff_fff8;

/// BPB fields the repair pass needs, with derived offsets (all relative to the volume start).
#[derive(Debug)]
struct Geometry {
    base: u64,
    bytes_per_sector: u64,
    cluster_bytes: u64,
    reserved_sectors: u64,
    fats: u64,
    sectors_per_fat: u64,
    root_cluster: u32,
    fs_info_sector: u64,
    backup_boot_sector: u64,
    first_data_sector: u64,
    cluster_count: u32,
}

impl Geometry {
    fn read<D: Read + Seek>(disk: &mut D, base: u64) -> Result<Self> {
        let mut bs = [0u8; 512];
        disk.seek(SeekFrom::Start(base))?;
        disk.read_exact(&mut bs)?;
        ensure!(
            bs[510] == 0x55 && bs[511] == 0xaa,
            "no boot sector signature"
        );
        let u16_at = |o: usize| u64::from(u16::from_le_bytes([bs[o], bs[o + 1]]));
        let u32_at = |o: usize| u32::from_le_bytes([bs[o], bs[o + 1], bs[o + 2], bs[o + 3]]);

        let bytes_per_sector = u16_at(0x0b);
        let sectors_per_cluster = u64::from(bs[0x0d]);
        let reserved_sectors = u16_at(0x0e);
        let fats = u64::from(bs[0x10]);
        let root_entries = u16_at(0x11);
        let total_16 = u16_at(0x13);
        let fat_size_16 = u16_at(0x16);
        let total_32 = u64::from(u32_at(0x20));
        let sectors_per_fat = u64::from(u32_at(0x24));
        let root_cluster = u32_at(0x2c);
        let fs_info_sector = u16_at(0x30);
        let backup_boot_sector = u16_at(0x32);

        ensure!(
            matches!(bytes_per_sector, 512 | 1024 | 2048 | 4096),
            "bad bytes per sector {bytes_per_sector}"
        );
        ensure!(
            sectors_per_cluster.is_power_of_two() && sectors_per_cluster <= 128,
            "bad sectors per cluster {sectors_per_cluster}"
        );
        // These three are zero only on FAT32.
        ensure!(
            root_entries == 0 && fat_size_16 == 0 && sectors_per_fat != 0,
            "not a FAT32 BPB"
        );
        ensure!(
            fats >= 1 && reserved_sectors >= 1,
            "bad reserved sectors / FAT count"
        );
        let total_sectors = if total_16 != 0 { total_16 } else { total_32 };
        let first_data_sector = reserved_sectors + fats * sectors_per_fat;
        ensure!(
            total_sectors > first_data_sector,
            "volume smaller than its metadata"
        );
        let cluster_count =
            u32::try_from((total_sectors - first_data_sector) / sectors_per_cluster)?;
        ensure!(
            cluster_count >= FAT32_MIN_CLUSTERS,
            "only {cluster_count} clusters: that is FAT12/16, not FAT32"
        );
        // The FAT must have room for every cluster's entry.
        ensure!(
            sectors_per_fat * bytes_per_sector / 4 >= u64::from(cluster_count) + 2,
            "FAT too small for {cluster_count} clusters"
        );
        ensure!(
            root_cluster >= 2 && root_cluster < cluster_count + 2,
            "bad root cluster {root_cluster}"
        );
        ensure!(
            fs_info_sector >= 1 && fs_info_sector < reserved_sectors,
            "bad FSInfo sector {fs_info_sector}"
        );
        Ok(Self {
            base,
            bytes_per_sector,
            cluster_bytes: sectors_per_cluster * bytes_per_sector,
            reserved_sectors,
            fats,
            sectors_per_fat,
            root_cluster,
            fs_info_sector,
            backup_boot_sector,
            first_data_sector,
            cluster_count,
        })
    }

    fn cluster_offset(&self, cluster: u32) -> u64 {
        self.base
            + self.first_data_sector * self.bytes_per_sector
            + u64::from(cluster - 2) * self.cluster_bytes
    }

    fn sector_offset(&self, sector: u64) -> u64 {
        self.base + sector * self.bytes_per_sector
    }

    fn is_data_cluster(&self, cluster: u32) -> bool {
        cluster >= 2 && cluster < self.cluster_count + 2
    }
}

/// Fills root-directory slot 0 with a volume-label entry (attribute 0x08).
fn write_root_label<D: Write + Seek>(disk: &mut D, geo: &Geometry, label: &[u8; 11]) -> Result<()> {
    let mut entry = [0u8; DIR_ENTRY];
    entry[..11].copy_from_slice(label);
    entry[11] = ATTR_VOLUME;
    let (time, _) = encode_time(FIXED_TIME);
    let date = encode_date(FIXED_DATE);
    entry[22..24].copy_from_slice(&time.to_le_bytes());
    entry[24..26].copy_from_slice(&date.to_le_bytes());
    disk.seek(SeekFrom::Start(geo.cluster_offset(geo.root_cluster)))?;
    disk.write_all(&entry)?;
    Ok(())
}

fn encode_date(d: fatfs::Date) -> u16 {
    ((d.year - 1980) << 9) | (d.month << 5) | d.day
}

fn encode_time(t: fatfs::Time) -> (u16, u8) {
    ((t.hour << 11) | (t.min << 5) | (t.sec / 2), 0)
}

/// Repairs the FAT32 volume at byte `base` of `disk` in place (see the module docs).
fn repair<D: Read + Write + Seek>(disk: &mut D, base: u64) -> Result<()> {
    let geo = Geometry::read(disk, base)?;
    let fat = read_fat(disk, &geo)?;

    // Walk the tree depth-first; `visited` guards against cross-linked or looping directories.
    let mut visited = HashSet::new();
    let mut stack = vec![(geo.root_cluster, None::<u32>)];
    while let Some((cluster, parent)) = stack.pop() {
        ensure!(
            visited.insert(cluster),
            "directory cluster {cluster} reached twice"
        );
        let subdirs = repair_dir(disk, &geo, &fat, cluster, parent)?;
        stack.extend(subdirs.into_iter().map(|c| (c, Some(cluster))));
    }

    write_fs_info(disk, &geo, &fat)
}

/// Reads the first FAT as cluster-indexed entries (upper 4 bits masked off).
fn read_fat<D: Read + Seek>(disk: &mut D, geo: &Geometry) -> Result<Vec<u32>> {
    let entries = geo.cluster_count as usize + 2;
    let mut raw = vec![0u8; entries * 4];
    disk.seek(SeekFrom::Start(geo.sector_offset(geo.reserved_sectors)))?;
    disk.read_exact(&mut raw)?;
    Ok(raw
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]) & FAT_ENTRY_MASK)
        .collect())
}

/// Follows a cluster chain from `first` to its end-of-chain mark.
fn chain(geo: &Geometry, fat: &[u32], first: u32) -> Result<Vec<u32>> {
    let mut out = Vec::new();
    let mut c = first;
    loop {
        ensure!(
            geo.is_data_cluster(c),
            "cluster chain from {first} reaches invalid cluster {c}"
        );
        ensure!(
            out.len() <= geo.cluster_count as usize,
            "cluster chain from {first} loops"
        );
        out.push(c);
        let next = fat[c as usize];
        if next >= END_OF_CHAIN {
            return Ok(out);
        }
        c = next;
    }
}

fn entry_cluster(e: &[u8]) -> u32 {
    u32::from(u16::from_le_bytes([e[20], e[21]])) << 16
        | u32::from(u16::from_le_bytes([e[26], e[27]]))
}

fn set_entry_cluster(e: &mut [u8], cluster: u32) {
    e[20..22].copy_from_slice(&((cluster >> 16) as u16).to_le_bytes());
    e[26..28].copy_from_slice(&(cluster as u16).to_le_bytes());
}

/// Fixes one directory and returns the first clusters of its subdirectories.
/// `parent` is `None` for the root directory, which has no `.`/`..` entries.
fn repair_dir<D: Read + Write + Seek>(
    disk: &mut D,
    geo: &Geometry,
    fat: &[u32],
    first: u32,
    parent: Option<u32>,
) -> Result<Vec<u32>> {
    let clusters = chain(geo, fat, first)?;
    let mut data = Vec::with_capacity(clusters.len() * geo.cluster_bytes as usize);
    for &c in &clusters {
        let mut buf = vec![0u8; geo.cluster_bytes as usize];
        disk.seek(SeekFrom::Start(geo.cluster_offset(c)))?;
        disk.read_exact(&mut buf)?;
        data.extend_from_slice(&buf);
    }

    // Entries up to the end-of-directory marker, with LFN runs that belong to `.`/`..` removed.
    let mut kept: Vec<[u8; DIR_ENTRY]> = Vec::new();
    let mut pending_lfn: Vec<[u8; DIR_ENTRY]> = Vec::new();
    for raw in data.chunks_exact(DIR_ENTRY) {
        let e: [u8; DIR_ENTRY] = raw.try_into()?;
        if e[0] == 0 {
            break;
        }
        if e[0] != 0xe5 && e[11] & 0x3f == ATTR_LFN {
            pending_lfn.push(e);
            continue;
        }
        let is_dot = e[..11] == DOT[..] || e[..11] == DOTDOT[..];
        if !is_dot {
            kept.append(&mut pending_lfn);
        }
        // fatfs bug 1: LFN slots in front of `.`/`..` are simply dropped.
        pending_lfn.clear();
        kept.push(e);
    }
    kept.append(&mut pending_lfn);

    let mut subdirs = Vec::new();
    for (i, e) in kept.iter_mut().enumerate() {
        if e[0] == 0xe5 || e[11] & 0x3f == ATTR_LFN || e[11] & ATTR_VOLUME != 0 {
            continue;
        }
        if let Some(parent) = parent {
            if i == 0 {
                ensure!(
                    e[..11] == DOT[..],
                    "directory at cluster {first} does not start with '.'"
                );
                set_entry_cluster(e, first);
                continue;
            }
            if i == 1 {
                ensure!(
                    e[..11] == DOTDOT[..],
                    "directory at cluster {first} lacks '..' in slot 1"
                );
                // fatfs bug 2: `..` must be 0 when the parent is the root directory.
                let target = if parent == geo.root_cluster {
                    0
                } else {
                    parent
                };
                set_entry_cluster(e, target);
                continue;
            }
        }
        if e[11] & ATTR_DIR != 0 {
            ensure!(
                e[..11] != DOT[..] && e[..11] != DOTDOT[..],
                "stray '.' or '..' entry in directory at cluster {first}"
            );
            subdirs.push(entry_cluster(e));
        }
    }

    let mut new_data = vec![0u8; data.len()];
    for (slot, e) in new_data.chunks_exact_mut(DIR_ENTRY).zip(&kept) {
        slot.copy_from_slice(e);
    }
    // Only the used prefix can differ; the rest was zero (or past the end marker) before too.
    if new_data != data {
        for (&c, chunk) in clusters
            .iter()
            .zip(new_data.chunks(geo.cluster_bytes as usize))
        {
            disk.seek(SeekFrom::Start(geo.cluster_offset(c)))?;
            disk.write_all(chunk)?;
        }
    }
    Ok(subdirs)
}

/// fatfs bug 3: writes the real free-cluster count and next-free hint to FSInfo and its
/// backup copy (which fatfs never writes) after the backup boot sector.
fn write_fs_info<D: Read + Write + Seek>(disk: &mut D, geo: &Geometry, fat: &[u32]) -> Result<()> {
    let free: Vec<u32> = (2..geo.cluster_count + 2)
        .filter(|&c| fat[c as usize] == 0)
        .collect();
    let free_count = u32::try_from(free.len())?;
    let next_free = free.first().copied().unwrap_or(0xffff_ffff);

    let mut sector = vec![0u8; geo.bytes_per_sector as usize];
    disk.seek(SeekFrom::Start(geo.sector_offset(geo.fs_info_sector)))?;
    disk.read_exact(&mut sector)?;
    let sig =
        |o: usize| u32::from_le_bytes([sector[o], sector[o + 1], sector[o + 2], sector[o + 3]]);
    ensure!(
        sig(0) == 0x4161_5252 && sig(484) == 0x6141_7272 && sig(508) == 0xaa55_0000,
        "FSInfo sector has bad signatures"
    );
    sector[488..492].copy_from_slice(&free_count.to_le_bytes());
    sector[492..496].copy_from_slice(&next_free.to_le_bytes());

    let mut targets = vec![geo.fs_info_sector];
    let backup = geo.backup_boot_sector;
    if backup != 0 && backup + 1 < geo.reserved_sectors && backup + 1 != geo.fs_info_sector {
        targets.push(backup + 1);
    }
    for s in targets {
        disk.seek(SeekFrom::Start(geo.sector_offset(s)))?;
        disk.write_all(&sector)?;
    }
    // Keep every FAT copy in step (fatfs mirrors, but the check is cheap insurance).
    let fat_bytes = geo.sectors_per_fat * geo.bytes_per_sector;
    let mut first_fat = vec![0u8; usize::try_from(fat_bytes)?];
    disk.seek(SeekFrom::Start(geo.sector_offset(geo.reserved_sectors)))?;
    disk.read_exact(&mut first_fat)?;
    let mut other = vec![0u8; first_fat.len()];
    for i in 1..geo.fats {
        disk.seek(SeekFrom::Start(
            geo.sector_offset(geo.reserved_sectors + i * geo.sectors_per_fat),
        ))?;
        disk.read_exact(&mut other)?;
        ensure!(other == first_fat, "FAT copy {i} differs from FAT 0");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    /// Returns the path of a host tool, failing the test with the Debian package to install.
    fn require(tool: &str, package: &str) -> PathBuf {
        crate::host::find_program(tool).unwrap_or_else(|| {
            panic!("{tool} is required by this test but missing: apt-get install {package}")
        })
    }

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| {
                (i as u32)
                    .wrapping_mul(2_654_435_761)
                    .rotate_left(u32::from(seed) % 31) as u8
                    ^ seed
            })
            .collect()
    }

    fn sample_files(dir: &Path) -> Vec<EspFile> {
        let big_path = dir.join("big.bin");
        std::fs::write(&big_path, pattern(5 * 1024 * 1024 + 123, 7)).unwrap();
        let bytes = |path: &str, data: Vec<u8>| EspFile {
            path: path.into(),
            source: EspSource::Bytes(data),
        };
        let mut files = vec![
            bytes("EFI/BOOT/BOOTX64.EFI", pattern(70_000, 1)),
            bytes(
                "loader/loader.conf",
                b"default debian.conf\ntimeout 0\n".to_vec(),
            ),
            bytes(
                "loader/entries/debian-bookworm-appliance-with-a-long-name.conf",
                b"title Debian\nlinux /debian/vmlinuz\n".to_vec(),
            ),
            bytes("debian/initrd.img", pattern(1500, 3)),
            EspFile {
                path: "debian/vmlinuz".into(),
                source: EspSource::File(big_path),
            },
            bytes("grub/grub.cfg", b"set timeout=0\n".to_vec()),
            bytes("grub/Empty File.txt", Vec::new()),
            bytes("a/b/c/d/deeply nested file name.txt", b"deep".to_vec()),
        ];
        // Enough long names that directories span several 512-byte clusters.
        for i in 0..40u8 {
            files.push(bytes(
                &format!("many/sub/entry number {i} with a long name.conf"),
                vec![i; 10],
            ));
            files.push(bytes(
                &format!("Root file {i}.txt"),
                vec![i; usize::from(i)],
            ));
        }
        files
    }

    fn expected_bytes(f: &EspFile) -> Vec<u8> {
        match &f.source {
            EspSource::Bytes(b) => b.clone(),
            EspSource::File(p) => std::fs::read(p).unwrap(),
        }
    }

    #[test]
    fn esp_is_fsck_clean_and_readable_by_mtools() {
        require("fsck.fat", "dosfstools");
        let mtype = require("mtype", "mtools");
        let mdir = require("mdir", "mtools");
        let tmp = tempfile::tempdir().unwrap();
        let files = sample_files(tmp.path());
        let img = tmp.path().join("esp.img");

        let t = Instant::now();
        write_esp(&img, MIN_ESP_SIZE, 0x1234_abcd, "Esp", &files).unwrap();
        eprintln!("write_esp: {:?}", t.elapsed());
        fsck(&img).unwrap();

        for f in &files {
            let out = Command::new(&mtype)
                .env("MTOOLS_SKIP_CHECK", "1")
                .arg("-i")
                .arg(&img)
                .arg(format!("::/{}", f.path))
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "mtype {}: {}",
                f.path,
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(
                out.stdout == expected_bytes(f),
                "content of {} differs",
                f.path
            );
        }

        // Long names survive as written (mdir shows the long name in its last column).
        let out = Command::new(&mdir)
            .env("MTOOLS_SKIP_CHECK", "1")
            .args(["-i"])
            .arg(&img)
            .arg("::/loader/entries")
            .output()
            .unwrap();
        let listing = String::from_utf8_lossy(&out.stdout);
        assert!(
            listing.contains("debian-bookworm-appliance-with-a-long-name.conf"),
            "{listing}"
        );

        // Root-directory label and serial as mtools sees them.
        let out = Command::new(&mdir)
            .env("MTOOLS_SKIP_CHECK", "1")
            .arg("-i")
            .arg(&img)
            .arg("::/")
            .output()
            .unwrap();
        let listing = String::from_utf8_lossy(&out.stdout);
        assert!(listing.contains("Volume in drive : is ESP"), "{listing}");
        assert!(
            listing.contains("Volume Serial Number is 1234-ABCD"),
            "{listing}"
        );

        // Boot-sector id, label and FAT type, as libblkid (udev's by-uuid links) sees them.
        let blkid = require("blkid", "util-linux");
        let out = Command::new(blkid)
            .args(["-p", "-o", "export"])
            .arg(&img)
            .output()
            .unwrap();
        let probe = String::from_utf8_lossy(&out.stdout);
        for want in [
            "TYPE=vfat",
            "VERSION=FAT32",
            "UUID=1234-ABCD",
            "LABEL=ESP",
            "LABEL_FATBOOT=ESP",
        ] {
            assert!(
                probe.lines().any(|l| l == want),
                "blkid lacks {want}:\n{probe}"
            );
        }
        assert_eq!(volume_uuid_string(0x1234_abcd), "1234-ABCD");
    }

    #[test]
    fn esp_is_reproducible() {
        let tmp = tempfile::tempdir().unwrap();
        let files = vec![
            EspFile {
                path: "EFI/BOOT/BOOTX64.EFI".into(),
                source: EspSource::Bytes(pattern(3000, 9)),
            },
            EspFile {
                path: "loader/entries/x.conf".into(),
                source: EspSource::Bytes(b"x".to_vec()),
            },
        ];
        let (a, b) = (tmp.path().join("a.img"), tmp.path().join("b.img"));
        write_esp(&a, MIN_ESP_SIZE, 1, "ESP", &files).unwrap();
        write_esp(&b, MIN_ESP_SIZE, 1, "ESP", &files).unwrap();
        assert!(std::fs::read(&a).unwrap() == std::fs::read(&b).unwrap());
    }

    #[test]
    fn fsck_range_checks_a_slice_of_a_disk() {
        require("fsck.fat", "dosfstools");
        let tmp = tempfile::tempdir().unwrap();
        let esp = tmp.path().join("esp.img");
        let files = [EspFile {
            path: "a/b.txt".into(),
            source: EspSource::Bytes(b"hi".to_vec()),
        }];
        write_esp(&esp, MIN_ESP_SIZE, 7, "", &files).unwrap();
        let disk = tmp.path().join("disk.img");
        let mut d = File::create(&disk).unwrap();
        d.write_all(&[0u8; 4096]).unwrap();
        io::copy(&mut File::open(&esp).unwrap(), &mut d).unwrap();
        d.write_all(&[0u8; 4096]).unwrap();
        fsck_range(&disk, 4096, MIN_ESP_SIZE).unwrap();
        // And fsck really does complain about damage: break the FSInfo free count.
        let mut f = OpenOptions::new().write(true).open(&esp).unwrap();
        f.seek(SeekFrom::Start(512 + 488)).unwrap();
        f.write_all(&5u32.to_le_bytes()).unwrap();
        drop(f);
        let err = fsck(&esp).unwrap_err().to_string();
        assert!(err.contains("Free cluster summary"), "{err}");
    }

    #[test]
    fn rejects_small_volumes_bad_labels_and_duplicates() {
        let tmp = tempfile::tempdir().unwrap();
        let img = tmp.path().join("x.img");
        assert!(write_esp(&img, 32 * 1024 * 1024, 1, "ESP", &[]).is_err());
        assert!(write_esp(&img, MIN_ESP_SIZE, 1, "TOO LONG LABEL", &[]).is_err());
        assert!(write_esp(&img, MIN_ESP_SIZE, 1, "A/B", &[]).is_err());
        let dup = |p: &str| EspFile {
            path: p.into(),
            source: EspSource::Bytes(vec![]),
        };
        assert!(write_esp(&img, MIN_ESP_SIZE, 1, "ESP", &[dup("a/B"), dup("A/b")]).is_err());
        assert!(write_esp(&img, MIN_ESP_SIZE, 1, "ESP", &[dup("a//b")]).is_err());
    }

    #[test]
    fn uuid_string_format() {
        assert_eq!(volume_uuid_string(0x1234_abcd), "1234-ABCD");
        assert_eq!(volume_uuid_string(0x0000_00ff), "0000-00FF");
    }
}
