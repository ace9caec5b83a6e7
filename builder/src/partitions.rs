//! GPT disk image writer: protective MBR (optionally with BIOS boot code), primary and backup
//! GPT, and partition contents copied in at their offsets. Works on a plain file, so it needs
//! no loop devices and no root.
//!
//! Reproducibility: every GUID (disk, partition) comes from the caller. The `gpt` crate's
//! `add_partition*` helpers pick random partition GUIDs, so the table is built by hand and
//! handed over with `update_partitions`.

use std::collections::{BTreeMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use anyhow::{ensure, Context, Result};
use gpt::disk::LogicalBlockSize;
use gpt::partition_types::{OperatingSystem, Type};
use uuid::Uuid;

pub use appliance_spec::layout::{types, TableEntry, ALIGN, FLAG_NO_AUTO, FLAG_READ_ONLY, SECTOR};

/// A GPT partition name holds at most 36 UTF-16 code units.
const MAX_LABEL_UNITS: usize = 36;
/// The gpt crate writes a 128-entry array; more partitions would change the table size.
const MAX_PARTITIONS: usize = 128;
/// Chunk size for copying content; all-zero chunks are skipped to keep the image sparse.
const COPY_CHUNK: usize = 64 * 1024;

/// What the caller wants on the disk, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionSpec {
    /// GPT partition name (PARTLABEL), at most 36 UTF-16 code units, unique on the disk.
    pub label: String,
    pub type_guid: Uuid,
    pub part_guid: Uuid,
    /// Bytes; rounded up to [`ALIGN`] by [`plan`].
    pub size: u64,
    /// GPT attribute bits, e.g. [`FLAG_READ_ONLY`].
    pub flags: u64,
    /// File copied to the partition start; must fit in the partition.
    pub content: Option<PathBuf>,
}

/// A partition with its place on the disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlacedPartition {
    /// 1-based partition number (the GPT entry slot).
    pub number: u32,
    /// The spec, with `size` rounded up to [`ALIGN`].
    pub spec: PartitionSpec,
    pub first_lba: u64,
    /// Inclusive, as in the GPT entry.
    pub last_lba: u64,
}

impl PlacedPartition {
    /// Byte offset of the partition start.
    pub fn offset(&self) -> u64 {
        self.first_lba * SECTOR
    }

    /// Partition length in bytes.
    pub fn size_bytes(&self) -> u64 {
        (self.last_lba - self.first_lba + 1) * SECTOR
    }
}

/// The planned disk: size, GUID and partitions with their LBAs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskLayout {
    pub disk_guid: Uuid,
    pub total_bytes: u64,
    pub partitions: Vec<PlacedPartition>,
}

impl DiskLayout {
    pub fn by_label(&self, label: &str) -> Option<&PlacedPartition> {
        self.partitions.iter().find(|p| p.spec.label == label)
    }

    /// Byte offset of the partition labelled `label`.
    pub fn offset_of(&self, label: &str) -> Option<u64> {
        self.by_label(label).map(PlacedPartition::offset)
    }
}

/// Places partitions in order from 1 MiB, each aligned to 1 MiB, and sizes the disk to end
/// 1 MiB after the last partition (room for the backup GPT). Error if anything is zero-sized,
/// a label is empty, too long or repeated, a GUID is nil or repeated, or there are more than
/// 128 partitions.
pub fn plan(disk_guid: Uuid, specs: Vec<PartitionSpec>) -> Result<DiskLayout> {
    ensure!(!specs.is_empty(), "disk layout has no partitions");
    ensure!(
        specs.len() <= MAX_PARTITIONS,
        "disk layout has {} partitions, GPT here allows {MAX_PARTITIONS}",
        specs.len()
    );
    ensure!(!disk_guid.is_nil(), "disk GUID is nil");

    let mut labels = HashSet::new();
    let mut guids = HashSet::new();
    let mut offset = ALIGN; // LBA 0..2047 hold the MBR, the primary GPT and the gap.
    let mut partitions = Vec::with_capacity(specs.len());
    for (i, mut spec) in specs.into_iter().enumerate() {
        let what = format!("partition {} ({:?})", i + 1, spec.label);
        ensure!(spec.size > 0, "{what}: size is zero");
        ensure!(!spec.label.is_empty(), "partition {}: empty label", i + 1);
        // The gpt crate silently truncates longer names; refuse instead.
        ensure!(
            spec.label.encode_utf16().count() <= MAX_LABEL_UNITS,
            "{what}: label longer than {MAX_LABEL_UNITS} UTF-16 units"
        );
        ensure!(labels.insert(spec.label.clone()), "{what}: duplicate label");
        // A nil type GUID marks an unused entry, so the partition would vanish.
        ensure!(!spec.type_guid.is_nil(), "{what}: nil type GUID");
        ensure!(!spec.part_guid.is_nil(), "{what}: nil partition GUID");
        ensure!(
            spec.part_guid != disk_guid && guids.insert(spec.part_guid),
            "{what}: partition GUID {} is not unique",
            spec.part_guid
        );

        spec.size = spec
            .size
            .checked_next_multiple_of(ALIGN)
            .with_context(|| format!("{what}: size overflows"))?;
        let first_lba = offset / SECTOR;
        let last_lba = first_lba + spec.size / SECTOR - 1;
        offset = offset
            .checked_add(spec.size)
            .with_context(|| format!("{what}: disk size overflows"))?;
        partitions.push(PlacedPartition {
            number: u32::try_from(i + 1)?,
            spec,
            first_lba,
            last_lba,
        });
    }

    Ok(DiskLayout {
        disk_guid,
        total_bytes: offset + ALIGN,
        partitions,
    })
}

/// Writes the image: sparse file of `total_bytes`, protective MBR (with optional 440 bytes of
/// boot code, e.g. GRUB boot.img, and a disk signature taken from the disk GUID), primary and
/// backup GPT with the exact GUIDs given, then each partition's content file at its offset,
/// skipping all-zero 64 KiB chunks so the output stays sparse. Writes to `out` directly (the
/// caller handles temporary names).
pub fn write_disk(
    out: &Path,
    layout: &DiskLayout,
    mbr_boot_code: Option<&[u8; 440]>,
) -> Result<()> {
    let ctx = || format!("writing disk image {}", out.display());
    ensure!(
        layout.total_bytes.is_multiple_of(ALIGN),
        "{}: disk size {} is not a multiple of 1 MiB (use partitions::plan)",
        out.display(),
        layout.total_bytes
    );
    // Check contents before creating anything, so a bad input leaves no half-written image.
    for p in &layout.partitions {
        if let Some(src) = &p.spec.content {
            let len = std::fs::metadata(src)
                .with_context(|| {
                    format!("partition {:?}: reading {}", p.spec.label, src.display())
                })?
                .len();
            ensure!(
                len <= p.size_bytes(),
                "partition {:?}: content {} is {len} bytes, the partition only {}",
                p.spec.label,
                src.display(),
                p.size_bytes()
            );
        }
    }

    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(out)
        .with_context(ctx)?;
    // The size must be set first: the gpt crate puts the backup header at the last LBA of
    // the file as it is when the table is created.
    f.set_len(layout.total_bytes).with_context(ctx)?;

    write_mbr(&mut f, layout, mbr_boot_code).with_context(ctx)?;
    let mut f = write_gpt(f, layout).with_context(ctx)?;

    for p in &layout.partitions {
        if let Some(src) = &p.spec.content {
            copy_sparse(src, &mut f, p.offset()).with_context(|| {
                format!(
                    "copying {} into partition {:?} of {}",
                    src.display(),
                    p.spec.label,
                    out.display()
                )
            })?;
        }
    }
    f.flush().with_context(ctx)?;
    Ok(())
}

/// Protective MBR in LBA 0. The disk signature is the first 4 bytes of the disk GUID, so it
/// is reproducible and differs between images.
fn write_mbr(f: &mut File, layout: &DiskLayout, boot_code: Option<&[u8; 440]>) -> Result<()> {
    // The protective entry covers LBA 1..end, capped at what 32 bits can say (>2 TiB disks).
    let sectors = layout.total_bytes / SECTOR;
    let mut mbr =
        gpt::mbr::ProtectiveMBR::with_lb_size(u32::try_from(sectors - 1).unwrap_or(u32::MAX));
    if let Some(code) = boot_code {
        mbr.set_bootcode(*code);
    }
    let mut sig = [0u8; 4];
    sig.copy_from_slice(&layout.disk_guid.as_bytes()[..4]);
    mbr.set_disk_signature(sig);
    mbr.overwrite_lba0(f)
        .context("writing the protective MBR")?;
    Ok(())
}

/// Primary and backup GPT with the caller's GUIDs. Returns the file for further writes.
fn write_gpt(f: File, layout: &DiskLayout) -> Result<File> {
    let mut disk = gpt::GptConfig::new()
        .writable(true)
        .logical_block_size(LogicalBlockSize::Lb512)
        .create_from_device(f, Some(layout.disk_guid))
        .context("creating the GPT")?;
    let entries: BTreeMap<u32, gpt::partition::Partition> = layout
        .partitions
        .iter()
        .map(|p| {
            let entry = gpt::partition::Partition {
                part_type_guid: Type {
                    guid: p.spec.type_guid,
                    os: OperatingSystem::None,
                },
                part_guid: p.spec.part_guid,
                first_lba: p.first_lba,
                last_lba: p.last_lba,
                flags: p.spec.flags,
                name: p.spec.label.clone(),
            };
            (p.number, entry)
        })
        .collect();
    // The crate writes used entries in map order into slots 0, 1, ... ignoring the keys, so
    // partition numbers only match if they are 1..=n in order, which plan() guarantees.
    ensure!(
        entries.keys().copied().eq(1..=entries.len() as u32),
        "partition numbers must be 1..=n in order"
    );
    disk.update_partitions(entries)
        .context("setting the GPT entries")?;
    disk.write().context("writing the GPT")
}

/// Copies `src` to `dst` at `offset`, leaving all-zero chunks as holes (the image was just
/// created by set_len, so holes already read as zeros).
fn copy_sparse(src: &Path, dst: &mut File, offset: u64) -> Result<()> {
    let mut input = File::open(src).with_context(|| format!("opening {}", src.display()))?;
    let mut buf = vec![0u8; COPY_CHUNK];
    let mut pos = offset;
    loop {
        let n = read_full(&mut input, &mut buf)
            .with_context(|| format!("reading {}", src.display()))?;
        if n == 0 {
            break;
        }
        if buf[..n].iter().any(|&b| b != 0) {
            dst.seek(SeekFrom::Start(pos))?;
            dst.write_all(&buf[..n])?;
        }
        pos += n as u64;
    }
    Ok(())
}

/// Reads until `buf` is full or EOF, so chunks stay aligned even if `read` returns short.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

fn open_gpt(image: &Path) -> Result<gpt::GptDisk<File>> {
    gpt::GptConfig::new()
        .writable(false)
        .logical_block_size(LogicalBlockSize::Lb512)
        .open(image)
        .with_context(|| format!("reading the GPT of {}", image.display()))
}

/// Reads back a disk image's GPT (for `appliance inspect` and tests). Falls back to the
/// backup table if the primary one is damaged (gpt crate behaviour).
pub fn read_table(image: &Path) -> Result<Vec<TableEntry>> {
    let disk = open_gpt(image)?;
    let entries = disk
        .partitions()
        .iter()
        .map(|(&number, p)| TableEntry {
            number,
            label: p.name.clone(),
            type_guid: p.part_type_guid.guid,
            part_guid: p.part_guid,
            first_lba: p.first_lba,
            last_lba: p.last_lba,
            flags: p.flags,
        })
        .collect();
    Ok(entries)
}

/// Reads back a disk image's GPT disk GUID.
pub fn read_disk_guid(image: &Path) -> Result<Uuid> {
    Ok(*open_gpt(image)?.guid())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;
    use std::process::Command;

    fn lcg_bytes(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed;
        (0..len)
            .map(|_| {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (x >> 56) as u8
            })
            .collect()
    }

    /// Finds sfdisk; fails (never skips) if it is missing.
    fn sfdisk() -> PathBuf {
        let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).collect())
            .unwrap_or_default();
        dirs.extend(["/usr/sbin", "/sbin"].map(PathBuf::from));
        dirs.into_iter()
            .map(|d| d.join("sfdisk"))
            .find(|p| p.is_file())
            .expect("sfdisk not found: install the fdisk package (apt-get install fdisk)")
    }

    fn spec(label: &str, ty: Uuid, guid: u128, size: u64, flags: u64) -> PartitionSpec {
        PartitionSpec {
            label: label.into(),
            type_guid: ty,
            part_guid: Uuid::from_u128(guid),
            size,
            flags,
            content: None,
        }
    }

    const DISK: Uuid = Uuid::from_u128(0x0123_4567_89ab_4cde_8f01_2345_6789_abcd);

    #[test]
    fn plan_aligns_and_sizes() {
        let l = plan(
            DISK,
            vec![
                spec("a", types::BIOS_BOOT, 1, 1, 0),
                spec("b", types::ESP, 2, ALIGN + 1, 0),
                spec("c", types::LINUX_GENERIC, 3, ALIGN, 0),
            ],
        )
        .unwrap();
        let lbas: Vec<_> = l
            .partitions
            .iter()
            .map(|p| (p.number, p.first_lba, p.last_lba))
            .collect();
        assert_eq!(lbas, [(1, 2048, 4095), (2, 4096, 8191), (3, 8192, 10239)]);
        assert_eq!(l.partitions[1].spec.size, 2 * ALIGN);
        assert_eq!(l.total_bytes, 6 * ALIGN);
        assert_eq!(l.offset_of("c"), Some(4 * ALIGN));
        assert_eq!(l.by_label("b").map(|p| p.size_bytes()), Some(2 * ALIGN));
        assert!(l.by_label("zz").is_none());
    }

    #[test]
    fn plan_rejects_bad_specs() {
        let err = |specs: Vec<PartitionSpec>| format!("{:#}", plan(DISK, specs).unwrap_err());
        assert!(err(vec![]).contains("no partitions"));
        assert!(err(vec![spec("a", types::ESP, 1, 0, 0)]).contains("size is zero"));
        assert!(err(vec![
            spec("a", types::ESP, 1, 1, 0),
            spec("a", types::ESP, 2, 1, 0)
        ])
        .contains("duplicate label"));
        assert!(err(vec![
            spec("a", types::ESP, 1, 1, 0),
            spec("b", types::ESP, 1, 1, 0)
        ])
        .contains("not unique"));
        assert!(err(vec![spec(&"x".repeat(37), types::ESP, 1, 1, 0)]).contains("label longer"));
        assert!(err(vec![spec("a", Uuid::nil(), 1, 1, 0)]).contains("nil type"));
    }

    #[test]
    fn write_disk_rejects_oversized_content() {
        let dir = tempfile::tempdir().unwrap();
        let big = dir.path().join("big");
        File::create(&big).unwrap().set_len(ALIGN + 1).unwrap();
        let mut s = spec("a", types::ESP, 1, ALIGN, 0);
        s.content = Some(big);
        let l = plan(DISK, vec![s]).unwrap();
        let img = dir.path().join("disk.img");
        let e = format!("{:#}", write_disk(&img, &l, None).unwrap_err());
        assert!(e.contains("big") && e.contains("\"a\""), "{e}");
        assert!(!img.exists(), "no image should be created for bad input");
    }

    /// Full round trip: write a four-partition image and check it with sfdisk, read_table,
    /// the raw bytes and the allocated size.
    #[test]
    fn write_disk_matches_sfdisk_and_reads_back() {
        let dir = tempfile::tempdir().unwrap();

        // ESP content: 1.5 MiB of noise. Root content: 4 MiB that is mostly zeros, so the
        // sparse copy is visible in the allocated block count.
        let esp_data = lcg_bytes(3 * ALIGN as usize / 2, 7);
        let esp_file = dir.path().join("esp.img");
        std::fs::write(&esp_file, &esp_data).unwrap();
        let mut root_data = vec![0u8; 4 * ALIGN as usize];
        root_data[..256 * 1024].copy_from_slice(&lcg_bytes(256 * 1024, 8));
        let tail = root_data.len() - 1000;
        root_data[tail..].fill(0xa5);
        let root_file = dir.path().join("root.img");
        std::fs::write(&root_file, &root_data).unwrap();

        let mut esp = spec("esp", types::ESP, 0x22, 2 * ALIGN, 0);
        esp.content = Some(esp_file);
        let mut root = spec(
            "root-x86-64",
            types::ROOT_X86_64,
            0x33,
            4 * ALIGN,
            FLAG_READ_ONLY,
        );
        root.content = Some(root_file);
        let specs = vec![
            spec("bios", types::BIOS_BOOT, 0x11, ALIGN, 0),
            esp,
            root,
            spec(
                "data",
                types::LINUX_GENERIC,
                0x44,
                8 * ALIGN,
                FLAG_READ_ONLY | FLAG_NO_AUTO,
            ),
        ];
        let layout = plan(DISK, specs).unwrap();
        assert_eq!(layout.total_bytes, 17 * ALIGN);

        let boot_code: [u8; 440] = std::array::from_fn(|i| (i * 7 + 3) as u8);
        let img = dir.path().join("disk.img");
        write_disk(&img, &layout, Some(&boot_code)).unwrap();

        // Raw bytes: MBR boot code, disk signature, protective entry, 55 AA.
        let bytes = std::fs::read(&img).unwrap();
        assert_eq!(bytes.len() as u64, layout.total_bytes);
        assert_eq!(&bytes[..440], &boot_code[..]);
        assert_eq!(&bytes[440..444], &DISK.as_bytes()[..4]);
        assert_eq!(bytes[0x1be + 4], 0xee, "protective MBR partition type");
        assert_eq!(&bytes[0x1fe..0x200], &[0x55, 0xaa]);
        assert_eq!(&bytes[512..520], b"EFI PART");
        assert_eq!(
            &bytes[bytes.len() - 512..][..8],
            b"EFI PART",
            "backup header"
        );

        // Content at the right offsets, and the rest of the partition zero.
        let at = |label: &str| layout.offset_of(label).unwrap() as usize;
        assert_eq!(&bytes[at("esp")..at("esp") + esp_data.len()], &esp_data[..]);
        assert!(bytes[at("esp") + esp_data.len()..at("root-x86-64")]
            .iter()
            .all(|&b| b == 0));
        assert_eq!(
            &bytes[at("root-x86-64")..at("root-x86-64") + root_data.len()],
            &root_data[..]
        );

        // Sparse: only the non-zero content (~1.8 MiB) plus GPT blocks should be allocated.
        let allocated = std::fs::metadata(&img).unwrap().blocks() * 512;
        assert!(
            allocated < 3 * ALIGN,
            "image not sparse: {allocated} bytes allocated of {}",
            layout.total_bytes
        );

        // sfdisk's view of the table.
        let out = Command::new(sfdisk())
            .arg("-J")
            .arg(&img)
            .output()
            .expect("running sfdisk");
        assert!(
            out.status.success(),
            "sfdisk -J failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.stderr.is_empty(),
            "sfdisk warned: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let table = &json["partitiontable"];
        assert_eq!(table["label"], "gpt");
        assert_eq!(table["id"].as_str().unwrap().parse::<Uuid>().unwrap(), DISK);
        let parts = table["partitions"].as_array().unwrap();
        assert_eq!(parts.len(), 4);
        let expected_attrs = [None, None, Some("GUID:60"), Some("GUID:60,63")];
        for ((p, placed), attrs) in parts.iter().zip(&layout.partitions).zip(expected_attrs) {
            let uuid = |k: &str| p[k].as_str().unwrap().parse::<Uuid>().unwrap();
            assert_eq!(uuid("type"), placed.spec.type_guid, "{p}");
            assert_eq!(uuid("uuid"), placed.spec.part_guid, "{p}");
            assert_eq!(p["name"], placed.spec.label.as_str(), "{p}");
            assert_eq!(p["start"], placed.first_lba, "{p}");
            assert_eq!(p["size"], placed.last_lba - placed.first_lba + 1, "{p}");
            assert_eq!(p["attrs"].as_str(), attrs, "{p}");
        }

        // read_table round trip.
        let read = read_table(&img).unwrap();
        let expected: Vec<TableEntry> = layout
            .partitions
            .iter()
            .map(|p| TableEntry {
                number: p.number,
                label: p.spec.label.clone(),
                type_guid: p.spec.type_guid,
                part_guid: p.spec.part_guid,
                first_lba: p.first_lba,
                last_lba: p.last_lba,
                flags: p.spec.flags,
            })
            .collect();
        assert_eq!(read, expected);
        assert_eq!(read_disk_guid(&img).unwrap(), DISK);
    }

    #[test]
    fn read_table_names_the_file_on_error() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("not-a-disk.img");
        std::fs::write(&img, vec![0u8; 64 * 1024]).unwrap();
        let e = format!("{:#}", read_table(&img).unwrap_err());
        assert!(e.contains("not-a-disk.img"), "{e}");
    }
}
