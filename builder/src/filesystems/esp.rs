//! The EFI system partition: a FAT32 image made with dosfstools' `mkfs.fat` and filled with
//! mtools (`mmd`, `mcopy`), then checked with `fsck.fat -n`.
//!
//! Both are Debian's reference tools for FAT, so the volume is what firmware, GRUB, Linux and
//! the Raspberry Pi firmware expect, with no repair pass. The result is reproducible: `mkfs.fat
//! --invariant` fixes what it would otherwise take from the clock, `fatlabel -i` then sets the
//! volume id the build chose, mtools stamps every entry with `SOURCE_DATE_EPOCH`, and files and
//! directories are added one by one in sorted order.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, ensure, Context, Result};

use crate::host;

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

/// Smallest ESP accepted: FAT32 needs at least 65 525 clusters, which mkfs.fat reaches with
/// 512-byte clusters from about 33 MiB; 64 MiB leaves room.
pub const MIN_ESP_SIZE: u64 = 64 * 1024 * 1024;

/// Creates `out` (`size_bytes`, at least [`MIN_ESP_SIZE`]), formats it FAT32 with `volume_id`
/// and `label`, and writes `files` with every timestamp at `timestamp` (seconds since 1970).
pub fn write_esp(
    out: &Path,
    size_bytes: u64,
    volume_id: u32,
    label: &str,
    files: &[EspFile],
    timestamp: u64,
) -> Result<()> {
    ensure!(
        size_bytes >= MIN_ESP_SIZE,
        "ESP size {size_bytes} bytes is below the minimum of {MIN_ESP_SIZE} bytes needed for FAT32"
    );
    ensure!(
        size_bytes.is_multiple_of(512),
        "ESP size {size_bytes} is not a multiple of 512 bytes"
    );
    let label = check_label(label)?;
    let files = normalise_paths(files)?;
    let _ = std::fs::remove_file(out);
    File::create(out)
        .and_then(|f| f.set_len(size_bytes))
        .with_context(|| format!("creating {}", out.display()))?;
    let tool = |name: &str| {
        let mut cmd = Command::new(name);
        cmd.env("SOURCE_DATE_EPOCH", timestamp.to_string())
            .env("MTOOLS_SKIP_CHECK", "1")
            .env("LC_ALL", "C");
        cmd
    };
    host::run(
        tool("mkfs.fat")
            .args(["-F", "32", "-S", "512", "--invariant", "-n", &label])
            .arg(out),
    )?;
    host::run(
        tool("fatlabel")
            .arg("-i")
            .arg(out)
            .arg(format!("{volume_id:08X}")),
    )?;
    let image = format!("{}", out.display());
    let dirs: BTreeSet<String> = files
        .iter()
        .flat_map(|(components, _)| (1..components.len()).map(|n| components[..n].join("/")))
        .collect();
    for dir in &dirs {
        host::run(tool("mmd").args(["-i", &image]).arg(format!("::/{dir}")))?;
    }
    // Bytes sources go through a temporary file; mcopy copies host files.
    let staging = tempfile::tempdir().context("creating a temporary directory")?;
    let mut sorted = files;
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    for (i, (components, file)) in sorted.iter().enumerate() {
        let source = match &file.source {
            EspSource::File(p) => p.clone(),
            EspSource::Bytes(bytes) => {
                let p = staging.path().join(i.to_string());
                std::fs::write(&p, bytes)?;
                p
            }
        };
        host::run(
            tool("mcopy")
                .args(["-i", &image, "-D", "o"])
                .arg(&source)
                .arg(format!("::/{}", components.join("/"))),
        )
        .with_context(|| format!("copying {} onto the ESP", file.path))?;
    }
    fsck(out).context("the ESP is not clean FAT")
}

/// `ABCD-1234` form of a FAT volume id, as GRUB's `search --fs-uuid` and
/// `/dev/disk/by-uuid` expect.
pub fn volume_uuid_string(volume_id: u32) -> String {
    format!("{:04X}-{:04X}", volume_id >> 16, volume_id & 0xffff)
}

/// Runs `fsck.fat -n` on a FAT image and returns an error carrying fsck's output if it
/// reports anything besides its banner and the summary line.
pub fn fsck(image: &Path) -> Result<()> {
    let tool = host::find_program("fsck.fat").context(
        "fsck.fat is not installed; run `appliance doctor --install` (package dosfstools)",
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

/// A volume label as mkfs.fat takes it: at most 11 printable ASCII characters, none of those
/// FAT forbids in names; upper-cased as FAT stores it. Empty means no label.
fn check_label(label: &str) -> Result<String> {
    let label = if label.is_empty() { "NO NAME" } else { label };
    ensure!(
        label.len() <= 11,
        "volume label {label:?} is longer than 11 bytes"
    );
    for c in label.bytes() {
        ensure!(
            c.is_ascii_graphic() || c == b' ',
            "volume label {label:?} contains a non-printable or non-ASCII byte"
        );
        ensure!(
            !b"\"*+,./:;<=>?[\\]|".contains(&c),
            "volume label {label:?} contains the invalid character {:?}",
            c as char
        );
    }
    Ok(label.to_ascii_uppercase())
}

/// Splits every path into components and rejects empty, relative or duplicate paths.
fn normalise_paths(files: &[EspFile]) -> Result<Vec<(Vec<String>, &EspFile)>> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::with_capacity(files.len());
    for file in files {
        let components: Vec<String> = file
            .path
            .trim_start_matches('/')
            .split('/')
            .map(str::to_string)
            .collect();
        ensure!(
            components
                .iter()
                .all(|c| !c.is_empty() && c != "." && c != ".."),
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

#[cfg(test)]
mod tests {
    use super::*;

    const SDE: u64 = 1_767_225_600;
    use std::fs::OpenOptions;
    use std::time::Instant;

    /// Returns the path of a host tool, failing the test with the Debian package to install.
    fn require(tool: &str, package: &str) -> PathBuf {
        crate::host::find_program(tool).unwrap_or_else(|| {
            panic!("{tool} is required by this test but missing: run `appliance doctor --install` (package {package})")
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
        write_esp(&img, MIN_ESP_SIZE, 0x1234_abcd, "Esp", &files, SDE).unwrap();
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
        write_esp(&a, MIN_ESP_SIZE, 1, "ESP", &files, SDE).unwrap();
        write_esp(&b, MIN_ESP_SIZE, 1, "ESP", &files, SDE).unwrap();
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
        write_esp(&esp, MIN_ESP_SIZE, 7, "", &files, SDE).unwrap();
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
        assert!(write_esp(&img, 32 * 1024 * 1024, 1, "ESP", &[], SDE).is_err());
        assert!(write_esp(&img, MIN_ESP_SIZE, 1, "TOO LONG LABEL", &[], SDE).is_err());
        assert!(write_esp(&img, MIN_ESP_SIZE, 1, "A/B", &[], SDE).is_err());
        let dup = |p: &str| EspFile {
            path: p.into(),
            source: EspSource::Bytes(vec![]),
        };
        assert!(write_esp(&img, MIN_ESP_SIZE, 1, "ESP", &[dup("a/B"), dup("A/b")], SDE).is_err());
        assert!(write_esp(&img, MIN_ESP_SIZE, 1, "ESP", &[dup("a//b")], SDE).is_err());
    }

    #[test]
    fn uuid_string_format() {
        assert_eq!(volume_uuid_string(0x1234_abcd), "1234-ABCD");
        assert_eq!(volume_uuid_string(0x0000_00ff), "0000-00FF");
    }
}
