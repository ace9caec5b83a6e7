//! Crash-safe file helpers: the machine can lose power at any moment, so every file we own is
//! replaced atomically (temp file, fsync, rename, fsync of the directory).

use anyhow::{Context, Result};
use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Owner of a file as numeric ids (resolved from the root's /etc/passwd and /etc/group).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
}

/// Write `data` to `path` so that readers see either the old or the new content, never a mix.
pub fn atomic_write(path: &Path, data: &[u8], mode: u32, owner: Option<Owner>) -> Result<()> {
    replace(path, data, Some((mode, owner)))
}

/// [`atomic_write`] on a FAT file system (the ESP), which has no modes or owners to set.
pub fn atomic_write_on_fat(path: &Path, data: &[u8]) -> Result<()> {
    replace(path, data, None)
}

/// [`atomic_write_on_fat`] of everything `data` yields (a kernel or an initrd, read in pieces).
pub fn atomic_copy_on_fat(path: &Path, data: &mut dyn std::io::Read) -> Result<u64> {
    let mut copied = 0;
    replace_with(path, None, &mut |f| {
        copied = std::io::copy(data, f)?;
        Ok(())
    })?;
    Ok(copied)
}

fn replace(path: &Path, data: &[u8], access: Option<(u32, Option<Owner>)>) -> Result<()> {
    replace_with(path, access, &mut |f| f.write_all(data))
}

fn replace_with(
    path: &Path,
    access: Option<(u32, Option<Owner>)>,
    fill: &mut dyn FnMut(&mut File) -> std::io::Result<()>,
) -> Result<()> {
    let dir = path
        .parent()
        .with_context(|| format!("{} has no parent directory", path.display()))?;
    let name = path
        .file_name()
        .with_context(|| format!("{} has no file name", path.display()))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(".tmp");
    let tmp = dir.join(tmp_name);
    let _ = fs::remove_file(&tmp);
    {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(access.map_or(0o600, |a| a.0))
            .open(&tmp)
            .with_context(|| format!("cannot create {}", tmp.display()))?;
        if let Some((mode, owner)) = access {
            // The umask may have removed bits; set the mode we asked for explicitly.
            f.set_permissions(fs::Permissions::from_mode(mode))
                .with_context(|| format!("cannot set the mode of {}", tmp.display()))?;
            if let Some(o) = owner {
                chown(&tmp, o)?;
            }
        }
        fill(&mut f).with_context(|| format!("cannot write {}", tmp.display()))?;
        f.sync_all()
            .with_context(|| format!("cannot flush {}", tmp.display()))?;
    }
    fs::rename(&tmp, path).with_context(|| format!("cannot replace {}", path.display()))?;
    sync_dir(dir)
}

/// Make the rename of an entry in `dir` durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    let d = File::open(dir).with_context(|| format!("cannot open {}", dir.display()))?;
    d.sync_all()
        .with_context(|| format!("cannot flush directory {}", dir.display()))
}

/// Point `link` at `target`, replacing whatever was there atomically.
pub fn atomic_symlink(target: &Path, link: &Path) -> Result<()> {
    let dir = link
        .parent()
        .with_context(|| format!("{} has no parent directory", link.display()))?;
    let tmp = dir.join(".symlink.tmp");
    let _ = fs::remove_file(&tmp);
    std::os::unix::fs::symlink(target, &tmp)
        .with_context(|| format!("cannot create symlink {}", tmp.display()))?;
    fs::rename(&tmp, link).with_context(|| format!("cannot replace {}", link.display()))?;
    sync_dir(dir)
}

/// Create `dir` (and parents) and give it `mode` (and owner, when given).
pub fn ensure_dir(dir: &Path, mode: u32, owner: Option<Owner>) -> Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(mode))
        .with_context(|| format!("cannot set the mode of {}", dir.display()))?;
    if let Some(o) = owner {
        chown(dir, o)?;
    }
    Ok(())
}

/// Remove a file; a file that is already gone is fine (idempotent steps).
pub fn remove_if_exists(path: &Path) -> Result<bool> {
    match fs::remove_file(path) {
        Ok(()) => {
            if let Some(dir) = path.parent() {
                sync_dir(dir)?;
            }
            Ok(true)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e).with_context(|| format!("cannot remove {}", path.display())),
    }
}

/// Overwrite a file's content with zeros (same length), flush it, then delete it and flush the
/// directory. For the seed file on the FAT ESP: FAT rewrites a file in place, so the clear-text
/// passwords do not stay behind in free clusters after the file is deleted.
pub fn erase_file(path: &Path) -> Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .open(path)
        .with_context(|| format!("cannot open {} to erase it", path.display()))?;
    let len = f
        .metadata()
        .with_context(|| format!("cannot read the size of {}", path.display()))?
        .len();
    let zeros = [0u8; 4096];
    let mut left = len;
    while left > 0 {
        let n = left.min(zeros.len() as u64) as usize;
        f.write_all(&zeros[..n])
            .with_context(|| format!("cannot overwrite {}", path.display()))?;
        left -= n as u64;
    }
    f.sync_all()
        .with_context(|| format!("cannot flush {}", path.display()))?;
    drop(f);
    fs::remove_file(path).with_context(|| format!("cannot delete {}", path.display()))?;
    if let Some(dir) = path.parent() {
        sync_dir(dir)?;
    }
    Ok(())
}

/// Change owner. Only root may do that; unit tests run unprivileged and skip it.
pub fn chown(path: &Path, owner: Owner) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(());
    }
    let c = CString::new(path.as_os_str().as_bytes())
        .with_context(|| format!("{} contains a NUL byte", path.display()))?;
    // SAFETY: c is a valid NUL-terminated string for the duration of the call.
    let rc = unsafe { libc::lchown(c.as_ptr(), owner.uid, owner.gid) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("cannot change the owner of {}", path.display()));
    }
    Ok(())
}

/// Look a user up in a passwd-format file; returns its uid and primary gid.
pub fn lookup_user(passwd: &Path, name: &str) -> Result<Option<Owner>> {
    let text = match fs::read_to_string(passwd) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", passwd.display())),
    };
    for line in text.lines() {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() >= 4 && f[0] == name {
            if let (Ok(uid), Ok(gid)) = (f[2].parse(), f[3].parse()) {
                return Ok(Some(Owner { uid, gid }));
            }
        }
    }
    Ok(None)
}

/// Look a group up in a group-format file; returns its gid.
pub fn lookup_group(group: &Path, name: &str) -> Result<Option<u32>> {
    let text = match fs::read_to_string(group) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", group.display())),
    };
    for line in text.lines() {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() >= 3 && f[0] == name {
            if let Ok(gid) = f[2].parse() {
                return Ok(Some(gid));
            }
        }
    }
    Ok(None)
}

/// The name of user or group `id` in a passwd- or group-format file (name in the first field,
/// the number in the third).
pub fn name_of_id(file: &Path, id: u32) -> Result<Option<String>> {
    let text = match fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", file.display())),
    };
    Ok(text.lines().find_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        (f.len() >= 3 && f[2].parse() == Ok(id)).then(|| f[0].to_string())
    }))
}

/// Flush every filesystem (used after deleting the seed on the FAT ESP).
pub fn sync_all() {
    // SAFETY: sync has no preconditions.
    unsafe { libc::sync() };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_and_sets_mode() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        atomic_write(&p, b"one", 0o600, None).unwrap();
        atomic_write(&p, b"two", 0o640, None).unwrap();
        assert_eq!(fs::read_to_string(&p).unwrap(), "two");
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o640
        );
        let names: Vec<_> = fs::read_dir(d.path()).unwrap().collect();
        assert_eq!(names.len(), 1, "no temp file left behind");
    }

    #[test]
    fn looks_up_users_and_groups() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("passwd");
        fs::write(
            &p,
            "root:x:0:0::/root:/bin/sh\nprosody:x:105:110::/var/lib/prosody:/bin/false\n",
        )
        .unwrap();
        assert_eq!(
            lookup_user(&p, "prosody").unwrap(),
            Some(Owner { uid: 105, gid: 110 })
        );
        assert_eq!(lookup_user(&p, "nobody").unwrap(), None);
        let g = d.path().join("group");
        fs::write(&g, "root:x:0:\nturnserver:x:120:\n").unwrap();
        assert_eq!(lookup_group(&g, "turnserver").unwrap(), Some(120));
        assert_eq!(lookup_group(&d.path().join("none"), "x").unwrap(), None);
        assert_eq!(name_of_id(&p, 105).unwrap().as_deref(), Some("prosody"));
        assert_eq!(name_of_id(&g, 120).unwrap().as_deref(), Some("turnserver"));
        assert_eq!(name_of_id(&g, 7).unwrap(), None);
    }

    #[test]
    fn erased_files_are_zeroed_before_they_go() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("seed.toml");
        let text = "password = \"Tulip-Harbor-42\"\n";
        fs::write(&p, text).unwrap();
        // A second name for the same inode shows what is left in its blocks.
        let witness = d.path().join("witness");
        fs::hard_link(&p, &witness).unwrap();
        erase_file(&p).unwrap();
        assert!(!p.exists());
        assert_eq!(fs::read(&witness).unwrap(), vec![0u8; text.len()]);
        assert!(erase_file(&p).is_err(), "a missing file is an error");
    }

    #[test]
    fn symlink_is_replaced() {
        let d = tempfile::tempdir().unwrap();
        let l = d.path().join("localtime");
        atomic_symlink(Path::new("/a"), &l).unwrap();
        atomic_symlink(Path::new("/b"), &l).unwrap();
        assert_eq!(fs::read_link(&l).unwrap(), Path::new("/b"));
    }
}
