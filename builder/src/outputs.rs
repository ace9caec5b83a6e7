//! Outputs: the raw image, its compressed copy, `SHA256SUMS` and the manifest.
//!
//! Every output is written under a temporary name in the output directory and renamed only when
//! all of them are complete, so an interrupted build never leaves a file that looks finished.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::partitions::DiskLayout;
use crate::rootfs::InstalledPackage;

/// Files being written to the output directory under temporary names.
pub struct Staged {
    dir: PathBuf,
    files: Vec<(PathBuf, PathBuf)>, // (temporary, final)
}

impl Staged {
    pub fn new(dir: &Path) -> Result<Staged> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create the output directory {}", dir.display()))?;
        Ok(Staged {
            dir: dir.to_path_buf(),
            files: Vec::new(),
        })
    }

    /// A temporary path for the output `name`; it becomes `dir/name` on `commit`.
    pub fn path(&mut self, name: &str) -> PathBuf {
        let tmp = self.dir.join(format!(".{name}.partial"));
        let _ = std::fs::remove_file(&tmp);
        self.files.push((tmp.clone(), self.dir.join(name)));
        tmp
    }

    /// Renames every staged file to its final name (each rename is atomic).
    pub fn commit(self) -> Result<Vec<PathBuf>> {
        let mut done = Vec::new();
        for (tmp, fin) in &self.files {
            std::fs::rename(tmp, fin)
                .with_context(|| format!("renaming {} to {}", tmp.display(), fin.display()))?;
            done.push(fin.clone());
        }
        Ok(done)
    }
}

impl Drop for Staged {
    /// Whatever was not committed is removed: a failed build leaves no partial files behind.
    fn drop(&mut self) {
        for (tmp, _) in &self.files {
            let _ = std::fs::remove_file(tmp);
        }
    }
}

/// Reads a file as [`Read`] does, but gives the holes of a sparse file as zeros without
/// reading them: a disk image is mostly holes, and reading those fills the page cache with
/// gigabytes of zero pages, which takes seconds.
pub struct SparseReader {
    file: std::fs::File,
    pos: u64,
    len: u64,
    /// `pos` is in a hole up to here, or in data up to `data_end`.
    hole_end: u64,
    data_end: u64,
}

impl SparseReader {
    pub fn open(path: &Path) -> Result<SparseReader> {
        let file =
            std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
        let len = file.metadata()?.len();
        Ok(SparseReader {
            file,
            pos: 0,
            len,
            hole_end: 0,
            data_end: 0,
        })
    }

    /// The file's size.
    pub fn size(&self) -> u64 {
        self.len
    }

    /// Where the next data starts at or after `pos`, and where it ends.
    fn next_region(&mut self) -> std::io::Result<()> {
        use std::os::fd::AsRawFd;
        let fd = self.file.as_raw_fd();
        let at = i64::try_from(self.pos).map_err(std::io::Error::other)?;
        // SAFETY: lseek on a descriptor this reader owns.
        let data = unsafe { libc::lseek(fd, at, libc::SEEK_DATA) };
        if data < 0 {
            let e = std::io::Error::last_os_error();
            match e.raw_os_error() {
                // No data after `pos`: a hole to the end.
                Some(libc::ENXIO) => self.hole_end = self.len,
                // A file system without SEEK_DATA: all of it is data.
                Some(libc::EINVAL) | Some(libc::EOPNOTSUPP) => self.data_end = self.len,
                _ => return Err(e),
            }
            return Ok(());
        }
        let data = data as u64;
        if data > self.pos {
            self.hole_end = data.min(self.len);
            return Ok(());
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(fd, at, libc::SEEK_HOLE) };
        self.data_end = if hole < 0 {
            self.len
        } else {
            (hole as u64).min(self.len)
        };
        Ok(())
    }
}

impl Read for SparseReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        use std::os::unix::fs::FileExt;
        if self.pos >= self.len || buf.is_empty() {
            return Ok(0);
        }
        if self.pos >= self.hole_end && self.pos >= self.data_end {
            self.next_region()?;
        }
        let n = if self.pos < self.hole_end {
            let n = (self.hole_end - self.pos).min(buf.len() as u64) as usize;
            buf[..n].fill(0);
            n
        } else {
            let n = (self.data_end - self.pos).min(buf.len() as u64) as usize;
            let got = self.file.read_at(&mut buf[..n], self.pos)?;
            if got == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the file became shorter while it was read",
                ));
            }
            got
        };
        self.pos += n as u64;
        Ok(n)
    }
}

/// Compresses `src` into `dst` with zstd on all cores; returns the compressed size and the
/// SHA-256 of `src`, computed on the way (reading a disk image twice costs seconds).
pub fn compress_zstd(src: &Path, dst: &Path, level: i32) -> Result<(u64, String)> {
    let mut input = SparseReader::open(src)?;
    let out = std::fs::File::create(dst).with_context(|| format!("creating {}", dst.display()))?;
    let mut enc =
        zstd::stream::Encoder::new(std::io::BufWriter::with_capacity(1 << 20, out), level)?;
    let threads = std::thread::available_parallelism()
        .map(|n| n.get() as u32)
        .unwrap_or(1);
    enc.multithread(threads)?;
    enc.include_checksum(true)?;
    enc.set_pledged_src_size(Some(input.size()))?;
    let mut sum = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = input.read(&mut buf)?;
        if n == 0 {
            break;
        }
        enc.write_all(&buf[..n])?;
        sum.update(&buf[..n]);
    }
    let mut w = enc.finish()?;
    w.flush()?;
    drop(w);
    Ok((std::fs::metadata(dst)?.len(), hex::encode(sum.finalize())))
}

/// SHA-256 of a file, hex.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = SparseReader::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct OutputFile {
    pub file: String,
    pub bytes: u64,
    pub sha256: String,
}

/// `SHA256SUMS` in the format `sha256sum -c` reads.
pub fn sha256sums(files: &[OutputFile]) -> String {
    files
        .iter()
        .map(|f| format!("{}  {}\n", f.sha256, f.file))
        .collect()
}

#[derive(Debug, Clone, Serialize)]
pub struct ManifestPartition {
    pub number: u32,
    pub label: String,
    pub type_guid: String,
    pub part_guid: String,
    pub first_lba: u64,
    pub last_lba: u64,
    pub bytes: u64,
    pub flags: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ManifestVerity {
    pub root_hash: String,
    pub salt: String,
    pub uuid: String,
    pub data_blocks: u64,
    pub hash_bytes: u64,
}

/// `<name>.manifest.json`: what is in the image, for audits and for `appliance inspect`.
#[derive(Debug, Clone, Serialize)]
pub struct Manifest {
    pub name: String,
    /// `[image] version`.
    pub version: String,
    pub tool: String,
    pub tool_version: String,
    /// The configuration's hash, without its secrets.
    pub config_hash: String,
    /// How the image was made: enough to make it again.
    pub provenance: Provenance,
    pub arch: String,
    pub board: String,
    pub debian_suite: String,
    pub jitsi: bool,
    pub kernel_version: String,
    pub kernel_cmdline: String,
    pub image_bytes: u64,
    pub squashfs_bytes: u64,
    pub verity: Option<ManifestVerity>,
    pub disk_guid: String,
    pub partitions: Vec<ManifestPartition>,
    pub packages: Vec<InstalledPackage>,
    /// Every other output, with its checksum (the manifest cannot list its own).
    pub outputs: Vec<OutputFile>,
}

/// Where an image comes from.
#[derive(Debug, Clone, Serialize)]
pub struct Provenance {
    /// The git commit `appliance` was compiled from.
    pub tool_commit: String,
    /// The SHA-256 of appliance.lock, for a locked build.
    pub lock_sha256: Option<String>,
    pub source_date_epoch: u64,
    /// Versions of the host tools that shaped the image.
    pub host_tools: std::collections::BTreeMap<String, String>,
}

pub fn manifest_partitions(layout: &DiskLayout) -> Vec<ManifestPartition> {
    layout
        .partitions
        .iter()
        .map(|p| ManifestPartition {
            number: p.number,
            label: p.spec.label.clone(),
            type_guid: p.spec.type_guid.to_string(),
            part_guid: p.spec.part_guid.to_string(),
            first_lba: p.first_lba,
            last_lba: p.last_lba,
            bytes: p.size_bytes(),
            flags: p.spec.flags,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staged_files_appear_only_on_commit_and_vanish_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut s = Staged::new(dir.path()).unwrap();
            let p = s.path("a.raw");
            std::fs::write(&p, b"x").unwrap();
            assert!(!dir.path().join("a.raw").exists());
            // dropped without commit: an interrupted build
        }
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        let mut s = Staged::new(dir.path()).unwrap();
        let p = s.path("a.raw");
        std::fs::write(&p, b"x").unwrap();
        s.commit().unwrap();
        assert_eq!(std::fs::read(dir.path().join("a.raw")).unwrap(), b"x");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_sparse_file_reads_as_its_bytes_with_zeros_for_its_holes() {
        use std::os::unix::fs::FileExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sparse");
        let f = std::fs::File::create(&path).unwrap();
        // Data at the start, in the middle (not block-aligned) and up to a hole at the end.
        let mut expected = vec![0u8; 9 << 20];
        for (at, len) in [
            (0usize, 5000usize),
            (3 << 20, 70_000),
            ((6 << 20) + 123, 10),
        ] {
            let bytes: Vec<u8> = (0..len).map(|i| (i % 7 + 1) as u8).collect();
            f.write_all_at(&bytes, at as u64).unwrap();
            expected[at..at + len].copy_from_slice(&bytes);
        }
        f.set_len(expected.len() as u64).unwrap();
        drop(f);
        let mut got = Vec::new();
        // Small reads cross region boundaries in every way.
        let mut r = SparseReader::open(&path).unwrap();
        let mut buf = [0u8; 4097];
        loop {
            let n = r.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        assert_eq!(got.len(), expected.len());
        assert!(got == expected, "the bytes read differ from the file's");
        assert_eq!(
            sha256_file(&path).unwrap(),
            hex::encode(Sha256::digest(&expected))
        );
    }

    #[test]
    fn zstd_round_trip_and_checksums() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("in");
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&src, &data).unwrap();
        let dst = dir.path().join("in.zst");
        let (n, compressed_sum) = compress_zstd(&src, &dst, 3).unwrap();
        assert!(n < data.len() as u64 / 10);
        let back = zstd::stream::decode_all(std::fs::File::open(&dst).unwrap()).unwrap();
        assert_eq!(back, data);
        let sum = sha256_file(&src).unwrap();
        assert_eq!(sum, hex::encode(Sha256::digest(&data)));
        assert_eq!(compressed_sum, sum);
        let text = sha256sums(&[OutputFile {
            file: "in".into(),
            bytes: 1,
            sha256: sum.clone(),
        }]);
        assert_eq!(text, format!("{sum}  in\n"));
    }
}
