//! Reading one file from the root directory of the ESP's FAT file system without mounting it.
//!
//! `appliance-admin boot` looks for the seed file at every boot, and on a machine that is set up
//! there is none. Mounting the ESP for that loads the kernel's FAT modules and runs `mount` and
//! `umount`: about half a second of an emulated boot, on the path to the meeting services. The
//! file system is only read here: every write is refused ([`ReadOnly`]).

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::Path;

/// The device or image, with writes refused (fatfs asks for a handle that can write).
struct ReadOnly(File);

impl Read for ReadOnly {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
}

impl Seek for ReadOnly {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        self.0.seek(pos)
    }
}

impl Write for ReadOnly {
    fn write(&mut self, _: &[u8]) -> io::Result<usize> {
        Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "the ESP is only read here",
        ))
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The contents of `name` in the root directory of the FAT file system on `device` (names
/// compare without case, as on FAT), `None` when there is no such file, an error when the
/// device cannot be read or holds no FAT file system fatfs can read.
pub fn root_file(device: &Path, name: &str) -> io::Result<Option<Vec<u8>>> {
    let disk = ReadOnly(File::open(device)?);
    let fs = fatfs::FileSystem::new(disk, fatfs::FsOptions::new())?;
    let root = fs.root_dir();
    for entry in root.iter() {
        let entry = entry?;
        if entry.is_file() && entry.file_name().eq_ignore_ascii_case(name) {
            let mut bytes = Vec::new();
            entry.to_file().read_to_end(&mut bytes)?;
            return Ok(Some(bytes));
        }
    }
    Ok(None)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A 4 MiB FAT image at `path` holding `files` in its root directory.
    pub fn fat_image(path: &Path, files: &[(&str, &[u8])]) {
        let mut image = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
            .unwrap();
        image.set_len(4 << 20).unwrap();
        fatfs::format_volume(&mut image, fatfs::FormatVolumeOptions::new()).unwrap();
        let fs = fatfs::FileSystem::new(&mut image, fatfs::FsOptions::new()).unwrap();
        for (name, bytes) in files {
            let mut f = fs.root_dir().create_file(name).unwrap();
            f.write_all(bytes).unwrap();
        }
        drop(fs);
    }

    #[test]
    fn a_file_is_read_without_regard_to_case_and_nothing_is_written() {
        let d = tempfile::tempdir().unwrap();
        let image = d.path().join("esp.img");
        fat_image(
            &image,
            &[("APPLIANCE-SETUP.TOML", b"domain = \"meet.example.org\"\n")],
        );
        let before = std::fs::read(&image).unwrap();
        assert_eq!(
            root_file(&image, "appliance-setup.toml")
                .unwrap()
                .as_deref(),
            Some(&b"domain = \"meet.example.org\"\n"[..])
        );
        assert_eq!(root_file(&image, "other.toml").unwrap(), None);
        assert_eq!(std::fs::read(&image).unwrap(), before, "the image changed");
    }

    #[test]
    fn what_is_not_a_fat_file_system_is_an_error() {
        let d = tempfile::tempdir().unwrap();
        let empty = d.path().join("empty");
        std::fs::write(&empty, "").unwrap();
        assert!(root_file(&empty, "appliance-setup.toml").is_err());
        assert!(root_file(&d.path().join("missing"), "appliance-setup.toml").is_err());
    }
}
