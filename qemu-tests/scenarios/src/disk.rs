//! The machine's disk seen from this host: a seed file put on the ESP of a copy of the image,
//! as a user would after writing it, and the data partition of a powered-off machine read back
//! to look for records of use.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};
use appliance_qemu_tests::host::run;
use appliance_spec::esp::SEED_FILE;

/// Copies `image` to `dst` (sparse) and puts `seed` on its ESP as `appliance-setup.toml`, as a
/// user would after writing the image: the image itself is left as it is.
pub fn copy_with_seed(image: &Path, esp_offset: u64, seed: &str, dst: &Path) -> Result<()> {
    sparse_copy(image, dst)?;
    put_on_esp(dst, esp_offset, SEED_FILE, seed)
}

/// Copies `image` to `dst` keeping its holes: the image is mostly unwritten space, and a full
/// copy of each would fill a CI machine's disk.
pub fn sparse_copy(image: &Path, dst: &Path) -> Result<()> {
    let _ = std::fs::remove_file(dst);
    run(Command::new("cp")
        .arg("--sparse=always")
        .arg(image)
        .arg(dst))?;
    Ok(())
}

/// Writes `text` as `name` at the top of the FAT file system at `esp_offset` in `disk`.
pub fn put_on_esp(disk: &Path, esp_offset: u64, name: &str, text: &str) -> Result<()> {
    let tmp = tempfile::NamedTempFile::new()?;
    std::fs::write(tmp.path(), text)?;
    run(Command::new("mcopy")
        .arg("-o")
        .arg("-i")
        .arg(format!("{}@@{esp_offset}", disk.display()))
        .arg(tmp.path())
        .arg(format!("::{name}")))
    .context("putting a file on the ESP with mcopy (package mtools)")?;
    Ok(())
}

/// Reads the data partition of the powered-off `disk` (qcow2) from this machine and lists
/// what would be a record of use: journals, logs, login records, shell histories, core or heap
/// dumps, and any file holding one of `needles` (a room name, a client address). Files that hold
/// the configuration the test itself gave (the ACME server's address) are not searched.
pub fn scan_for_records(disk: &Path, data_offset: u64, needles: &[&str]) -> Result<Vec<String>> {
    let dir = tempfile::tempdir()?;
    let raw = dir.path().join("disk.raw");
    run(Command::new("qemu-img")
        .args(["convert", "-O", "raw"])
        .arg(disk)
        .arg(&raw))?;
    let tree = dir.path().join("data");
    std::fs::create_dir_all(&tree)?;
    run(Command::new("debugfs")
        .arg("-R")
        .arg(format!("rdump / {}", tree.display()))
        .arg(format!("{}?offset={data_offset}", raw.display())))
    .context("reading the data partition with debugfs (package e2fsprogs)")?;
    let mut found = Vec::new();
    let mut files = 0usize;
    walk(&tree, &mut |path| {
        files += 1;
        let rel = path
            .strip_prefix(&tree)
            .unwrap_or(path)
            .display()
            .to_string();
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let record_name = name.ends_with(".journal")
            || name.ends_with(".journal~")
            || name.ends_with(".log")
            || name.ends_with(".hprof")
            || name.ends_with("history")
            || name.starts_with("core")
            || ["wtmp", "btmp", "lastlog", "faillog", ".lesshst", ".viminfo"]
                .contains(&name.as_str());
        if record_name {
            found.push(format!("{rel}: a log or record file"));
        }
        let configured =
            rel.starts_with("appliance/answers.toml") || rel.starts_with("config/acme/");
        if !configured {
            if let Ok(bytes) = std::fs::read(path) {
                for n in needles {
                    if bytes.windows(n.len()).any(|w| w == n.as_bytes()) {
                        found.push(format!("{rel}: contains {n:?}"));
                    }
                }
            }
        }
    })?;
    if files == 0 {
        bail!(
            "the data partition read from {} holds no files at all",
            disk.display()
        );
    }
    Ok(found)
}

fn walk(dir: &Path, f: &mut dyn FnMut(&Path)) -> Result<()> {
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let t = e.file_type()?;
        if t.is_dir() {
            walk(&e.path(), f)?;
        } else if t.is_file() {
            f(&e.path());
        }
    }
    Ok(())
}

/// Calls `f` with `len` bytes of `file` from `offset` on, in pieces, each piece starting with
/// the last `overlap` bytes of the one before (so a string across two pieces is seen whole).
fn read_region(
    file: &Path,
    offset: u64,
    len: u64,
    overlap: usize,
    f: &mut dyn FnMut(&[u8]),
) -> Result<()> {
    use std::io::{Read, Seek, SeekFrom};
    const PIECE: usize = 4 << 20;
    let mut src =
        std::fs::File::open(file).with_context(|| format!("cannot open {}", file.display()))?;
    src.seek(SeekFrom::Start(offset))?;
    let mut buf = vec![0u8; overlap + PIECE];
    let mut kept = 0usize;
    let mut left = len;
    while left > 0 {
        let want = PIECE.min(usize::try_from(left).unwrap_or(PIECE));
        src.read_exact(&mut buf[kept..kept + want])
            .with_context(|| {
                format!(
                    "{} ends before byte {} (reading {len} bytes from {offset})",
                    file.display(),
                    offset + len
                )
            })?;
        f(&buf[..kept + want]);
        left -= want as u64;
        let end = kept + want;
        let keep = overlap.min(end);
        buf.copy_within(end - keep..end, 0);
        kept = keep;
    }
    Ok(())
}

/// Whether `needle` occurs in the `len` bytes of `file` from `offset` on (a partition of a
/// powered-off raw disk, read from this machine).
pub fn region_contains(file: &Path, offset: u64, len: u64, needle: &[u8]) -> Result<bool> {
    let mut found = false;
    read_region(
        file,
        offset,
        len,
        needle.len().saturating_sub(1),
        &mut |piece| {
            found = found || piece.windows(needle.len()).any(|w| w == needle);
        },
    )?;
    Ok(found)
}

/// SHA-256 of the `len` bytes of `file` from `offset` on.
pub fn region_digest(file: &Path, offset: u64, len: u64) -> Result<[u8; 32]> {
    let mut hasher = openssl::sha::Sha256::new();
    read_region(file, offset, len, 0, &mut |piece| hasher.update(piece))?;
    Ok(hasher.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_string_across_two_pieces_is_found_and_digests_cover_the_region() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("disk.raw");
        let mut bytes = vec![0u8; 9 << 20];
        let at = (4 << 20) - 3 + 100; // across the first piece boundary of the region at 100
        bytes[at..at + 6].copy_from_slice(b"secret");
        std::fs::write(&file, &bytes).unwrap();
        assert!(region_contains(&file, 100, 8 << 20, b"secret").unwrap());
        assert!(!region_contains(&file, 100, 1 << 20, b"secret").unwrap());
        assert!(!region_contains(&file, 100, 8 << 20, b"secrets").unwrap());
        let before = region_digest(&file, 100, 8 << 20).unwrap();
        bytes[(8 << 20) + 99] = 1; // the region's last byte
        std::fs::write(&file, &bytes).unwrap();
        assert_ne!(region_digest(&file, 100, 8 << 20).unwrap(), before);
        assert!(
            region_contains(&file, 100, 9 << 20, b"x").is_err(),
            "past the end"
        );
    }
}
