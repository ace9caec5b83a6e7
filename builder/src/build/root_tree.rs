//! The tree the system layer is assembled in. The package layer's tarball is unpacked once
//! per package layer into `<work>/packages-<key>/`, and each build mounts an overlay over it:
//! the features' files and hooks write to a fresh upper directory, so the unpacked files are
//! never changed and a rebuild does not unpack 300 MiB again. Where an overlay cannot be
//! mounted (a build directory on overlayfs, as in some containers), the tarball is unpacked
//! into a plain directory as before; both give the same tree.

use std::cell::Cell;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};

use super::cache;
use super::packages::PackageLayer;
use super::BuildCtx;
use crate::host;

/// Beside the unpacked tree (`root/`), names the tarball it was made from, so a tarball made
/// again under the same key (`--refresh`) is unpacked again.
const SOURCE_STAMP: &str = "unpacked-from";

pub struct RootTree {
    /// Where the root is, writable.
    pub path: PathBuf,
    /// The overlay's own directories, when `path` is an overlay mount.
    overlay: Option<(PathBuf, PathBuf)>,
    released: Cell<bool>,
}

/// Makes the writable root for `packages`, reporting progress on `ctx`.
pub fn prepare(ctx: &BuildCtx, packages: &PackageLayer) -> Result<RootTree> {
    let work = std::fs::canonicalize(&ctx.work)?;
    writable_root(
        &work,
        &packages.tar(),
        cache::short(&packages.key),
        ctx.opts.refresh,
        |m| ctx.progress.message(m),
    )
}

/// `<work>/root`, writable, with the files of `tar` (a package layer whose short key is
/// `key`).
fn writable_root(
    work: &Path,
    tar: &Path,
    key: &str,
    refresh: bool,
    say: impl Fn(&str),
) -> Result<RootTree> {
    let path = work.join("root");
    let upper = work.join("root-upper");
    let overlay_work = work.join("root-overlay-work");
    // A build stopped by a signal leaves its overlay mounted.
    unmount(&path);
    for dir in [&path, &upper, &overlay_work] {
        remove_dir(dir)?;
    }
    std::fs::create_dir_all(&path)?;
    let lower = unpacked(work, tar, key, refresh, &say)?;
    std::fs::create_dir_all(&upper)?;
    std::fs::create_dir_all(&overlay_work)?;
    copy_dir_attributes(&lower, &upper)?;
    match mount_overlay(&lower, &upper, &overlay_work, &path) {
        Ok(()) => Ok(RootTree {
            path,
            overlay: Some((upper, overlay_work)),
            released: Cell::new(false),
        }),
        Err(e) => {
            say(&format!(
                "cannot mount an overlay over the unpacked packages ({e}); unpacking them again"
            ));
            remove_dir(&upper)?;
            remove_dir(&overlay_work)?;
            unpack(tar, &path)?;
            Ok(RootTree {
                path,
                overlay: None,
                released: Cell::new(false),
            })
        }
    }
}

impl RootTree {
    /// Unmounts the overlay and removes what this build wrote; the unpacked package layer
    /// stays for the next build.
    pub fn release(&self) -> Result<()> {
        if self.released.replace(true) {
            return Ok(());
        }
        if let Some((upper, overlay_work)) = &self.overlay {
            let c = CString::new(self.path.as_os_str().as_bytes())?;
            // SAFETY: a valid NUL-terminated path.
            if unsafe { libc::umount2(c.as_ptr(), 0) } != 0 {
                let e = std::io::Error::last_os_error();
                return Err(e).with_context(|| format!("unmounting {}", self.path.display()));
            }
            remove_dir(upper)?;
            remove_dir(overlay_work)?;
        }
        remove_dir(&self.path)
    }
}

impl Drop for RootTree {
    // A failed build: detach the overlay so the next build can start clean.
    fn drop(&mut self) {
        if !self.released.get() && self.overlay.is_some() {
            unmount(&self.path);
        }
    }
}

/// `<work>/packages-<key>/root`, unpacked from the layer's tarball unless it already is.
fn unpacked(
    work: &Path,
    tar: &Path,
    key: &str,
    refresh: bool,
    say: impl Fn(&str),
) -> Result<PathBuf> {
    let dir = work.join(format!("packages-{key}"));
    let root = dir.join("root");
    let source = tar_identity(tar)?;
    let stamp = std::fs::read_to_string(dir.join(SOURCE_STAMP)).unwrap_or_default();
    if stamp != source || refresh {
        say("unpacking the package layer");
        let partial = work.join(format!("packages-{key}.partial"));
        remove_dir(&partial)?;
        remove_dir(&dir)?;
        std::fs::create_dir_all(partial.join("root"))?;
        unpack(tar, &partial.join("root"))?;
        std::fs::write(partial.join(SOURCE_STAMP), &source)?;
        std::fs::rename(&partial, &dir)?;
    }
    // One unpacked layer per work directory: each is as large as the root.
    for e in std::fs::read_dir(work)?.flatten() {
        let name = e.file_name();
        if name.to_string_lossy().starts_with("packages-") && e.path() != dir {
            remove_dir(&e.path())?;
        }
    }
    Ok(root)
}

/// What changes when the tarball is written again: size, modification time and inode.
fn tar_identity(tar: &Path) -> Result<String> {
    let m = std::fs::metadata(tar)
        .with_context(|| format!("reading the package layer {}", tar.display()))?;
    Ok(format!(
        "{} {} {}.{:09} {}",
        tar.display(),
        m.len(),
        m.mtime(),
        m.mtime_nsec(),
        m.ino()
    ))
}

fn unpack(tar: &Path, dest: &Path) -> Result<()> {
    host::run(
        Command::new("tar")
            .args([
                "--extract",
                "--numeric-owner",
                "--same-owner",
                "--preserve-permissions",
            ])
            .args(["--xattrs", "--xattrs-include=*", "--file"])
            .arg(tar)
            .arg("--directory")
            .arg(dest),
    )
    .context("unpacking the package layer")?;
    Ok(())
}

/// The merged directory's own mode, owner and times are the upper directory's: make them the
/// root's, as an unpacked tree would have them.
fn copy_dir_attributes(from: &Path, to: &Path) -> Result<()> {
    let m = std::fs::metadata(from)?;
    std::fs::set_permissions(to, m.permissions())?;
    std::os::unix::fs::chown(to, Some(m.uid()), Some(m.gid()))?;
    let t = std::fs::FileTimes::new().set_modified(m.modified()?);
    std::fs::File::open(to)?.set_times(t)?;
    Ok(())
}

fn mount_overlay(lower: &Path, upper: &Path, work: &Path, at: &Path) -> Result<()> {
    let paths = [lower, upper, work];
    // The option string separates with ',' and ':'; such paths cannot be given.
    if paths
        .iter()
        .any(|p| p.as_os_str().as_bytes().iter().any(|b| b",:".contains(b)))
    {
        anyhow::bail!("the build directory's path has a ',' or ':'");
    }
    let options = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.display(),
        upper.display(),
        work.display()
    );
    let c = |s: &[u8]| CString::new(s).context("a path with a NUL byte");
    let (source, target, fstype, data) = (
        c(b"overlay")?,
        c(at.as_os_str().as_bytes())?,
        c(b"overlay")?,
        c(options.as_bytes())?,
    );
    // SAFETY: valid NUL-terminated strings that outlive the call.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            data.as_ptr().cast(),
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    Ok(())
}

/// Detaches whatever is mounted at `path`; nothing when nothing is.
fn unmount(path: &Path) {
    if let Ok(c) = CString::new(path.as_os_str().as_bytes()) {
        // SAFETY: a valid NUL-terminated path; failure (nothing mounted) is expected.
        unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    }
}

fn remove_dir(dir: &Path) -> Result<()> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("removing {}", dir.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn on_overlayfs(path: &Path) -> bool {
        let c = CString::new(path.as_os_str().as_bytes()).unwrap();
        let mut st: libc::statfs = unsafe { std::mem::zeroed() };
        // SAFETY: a valid path and a statfs struct to fill.
        let rc = unsafe { libc::statfs(c.as_ptr(), &mut st) };
        rc == 0 && st.f_type == 0x794c_7630 // OVERLAYFS_SUPER_MAGIC
    }

    /// A package layer of two files, as a tarball.
    fn layer(dir: &Path) -> PathBuf {
        let tree = dir.join("tree");
        std::fs::create_dir_all(tree.join("etc")).unwrap();
        std::fs::write(tree.join("etc/os-release"), "ID=debian\n").unwrap();
        std::fs::write(tree.join("etc/shadow"), "root:*:1::::::\n").unwrap();
        std::fs::set_permissions(
            tree.join("etc/shadow"),
            std::fs::Permissions::from_mode(0o640),
        )
        .unwrap();
        let tar = dir.join("root.tar");
        let status = Command::new("tar")
            .arg("--create")
            .arg("--file")
            .arg(&tar)
            .arg("--directory")
            .arg(&tree)
            .arg(".")
            .status()
            .unwrap();
        assert!(status.success());
        tar
    }

    /// Writes to the root as the features' files and hooks do; the unpacked layer must not
    /// change, and the next root must start from the layer again.
    fn use_twice(work: &Path, tar: &Path) -> Option<bool> {
        std::fs::create_dir_all(work).unwrap();
        let unpacks = std::cell::Cell::new(0);
        let say = |m: &str| {
            if m.starts_with("unpacking") {
                unpacks.set(unpacks.get() + 1);
            }
        };
        let mut overlaid = None;
        for _ in 0..2 {
            let root = writable_root(work, tar, "k1", false, say).unwrap();
            overlaid = Some(root.overlay.is_some());
            let etc = root.path.join("etc");
            assert_eq!(
                std::fs::read_to_string(etc.join("os-release")).unwrap(),
                "ID=debian\n"
            );
            let mode = std::fs::metadata(etc.join("shadow"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o640);
            assert!(
                !etc.join("motd").exists(),
                "a file of the last build is still there"
            );
            // In place, as `echo >>` would, and a new file.
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .open(etc.join("os-release"))
                .unwrap();
            std::io::Write::write_all(&mut f, b"CHANGED=1\n").unwrap();
            drop(f);
            std::fs::write(etc.join("motd"), "hello\n").unwrap();
            root.release().unwrap();
            assert!(!root.path.exists());
        }
        let lower = work.join("packages-k1/root/etc/os-release");
        assert_eq!(std::fs::read_to_string(lower).unwrap(), "ID=debian\n");
        assert_eq!(unpacks.get(), 1, "the layer is unpacked once");
        overlaid
    }

    #[test]
    fn the_unpacked_layer_is_never_written_and_a_root_unmountable_as_overlay_is_unpacked() {
        let d = tempfile::tempdir().unwrap();
        let tar = layer(d.path());
        // A ',' in the path cannot be given to overlayfs: the tarball is unpacked instead.
        assert_eq!(use_twice(&d.path().join("a,b"), &tar), Some(false));
        let overlaid = use_twice(&d.path().join("work"), &tar);
        if host::is_root() && !on_overlayfs(d.path()) {
            assert_eq!(overlaid, Some(true), "root can mount an overlay here");
        } else {
            eprintln!("not root, or in a directory on overlayfs: only the unpacking was tested");
        }
        // A layer made again under the same key is unpacked again.
        let tar2 = d.path().join("root2.tar");
        std::fs::copy(&tar, &tar2).unwrap();
        let again = std::cell::Cell::new(false);
        let root = writable_root(&d.path().join("work"), &tar2, "k1", false, |m| {
            again.set(again.get() || m.starts_with("unpacking"))
        })
        .unwrap();
        root.release().unwrap();
        assert!(again.get(), "a different tarball must be unpacked again");
    }
}
