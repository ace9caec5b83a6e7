//! The read-only root: a squashfs image made straight from the root tarball.
//!
//! `mksquashfs - OUT -tar` reads the tar on stdin, so the tree is never unpacked on the host and
//! the build needs no root rights for it. File owners, modes and capabilities come from the tar.

use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

use crate::host;

/// Builds `out` from `tar`. `compression` is one of zstd, xz, gzip, lz4.
pub fn from_tar(tar: &Path, out: &Path, compression: &str, source_date_epoch: u64) -> Result<()> {
    let input = std::fs::File::open(tar)
        .with_context(|| format!("opening the root tarball {}", tar.display()))?;
    let _ = std::fs::remove_file(out);
    let mut cmd = Command::new("mksquashfs");
    cmd.arg("-")
        .arg(out)
        .arg("-tar")
        .args(["-comp", compression])
        // The tar's "./" entry is skipped by mksquashfs, so give the root its mode explicitly.
        .args(["-root-mode", "0755"])
        .args(["-noappend", "-quiet", "-no-progress"])
        .env("SOURCE_DATE_EPOCH", source_date_epoch.to_string())
        .stdin(Stdio::from(input))
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let child = cmd.spawn().map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            anyhow::anyhow!("mksquashfs is not installed; run `appliance doctor --install` as root (package squashfs-tools)")
        } else {
            anyhow::anyhow!("cannot start mksquashfs: {e}")
        }
    })?;
    let out_put = child.wait_with_output().context("waiting for mksquashfs")?;
    let stderr = String::from_utf8_lossy(&out_put.stderr);
    if !out_put.status.success() {
        bail!(
            "mksquashfs failed ({}):\n{}",
            out_put.status,
            host::tail(&stderr, 20)
        );
    }
    Ok(())
}
