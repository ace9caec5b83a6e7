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
    let path = work.join("root");
    let upper = work.join("root-upper");
    let overlay_work = work.join("root-overlay-work");
    // A build stopped by a signal leaves its overlay mounted.
    unmount(&path);
    for dir in [&path, &upper, &overlay_work] {
        remove_dir(dir)?;
    }
    std::fs::create_dir_all(&path)?;
    let lower = unpacked(ctx, packages, &work)?;
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
            ctx.progress.message(&format!(
                "cannot mount an overlay over the unpacked packages ({e}); unpacking them again"
            ));
            remove_dir(&upper)?;
            remove_dir(&overlay_work)?;
            unpack(&packages.tar(), &path)?;
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
fn unpacked(ctx: &BuildCtx, packages: &PackageLayer, work: &Path) -> Result<PathBuf> {
    let dir = work.join(format!("packages-{}", cache::short(&packages.key)));
    let root = dir.join("root");
    let tar = packages.tar();
    let source = tar_identity(&tar)?;
    let stamp = std::fs::read_to_string(dir.join(SOURCE_STAMP)).unwrap_or_default();
    if stamp == source && !ctx.opts.refresh {
    } else {
        ctx.progress.message("unpacking the package layer");
        let partial = work.join(format!("packages-{}.partial", cache::short(&packages.key)));
        remove_dir(&partial)?;
        remove_dir(&dir)?;
        std::fs::create_dir_all(partial.join("root"))?;
        unpack(&tar, &partial.join("root"))?;
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
