//! Stage 3: the system layer. Every feature's files and the in-image program are laid over
//! the unpacked package layer ([`root_tree`]), and the features' customize hooks run on it,
//! without running dpkg again. The result is packed by the next stage; both are skipped when the
//! squashfs for the same inputs is already there.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use super::cache::{self, KeyBuilder};
use super::packages::PackageLayer;
use super::root_tree::{self, RootTree};
use super::BuildCtx;
use crate::{admin_program, host, rootfs};
use appliance_spec::release::{Release, UpdatePolicy, RELEASE_FILE, UPDATE_KEYS_FILE};
use appliance_spec::signature::TrustedKeys;

/// The root file system of the image, before it is packed.
pub struct SystemLayer {
    pub key: String,
    /// The squashfs this layer is (or will be) packed into.
    pub squashfs: PathBuf,
    /// `None` when the squashfs is already there: no root was made.
    pub tree: Option<RootTree>,
}

pub fn assemble(
    ctx: &mut BuildCtx,
    packages: &PackageLayer,
    admin: admin_program::Compiling,
) -> Result<(SystemLayer, String)> {
    let config = ctx.config;
    let overlay = ctx.fresh_dir("overlay")?;
    rootfs::render_feature_files(config, &ctx.features, &overlay)?;
    ctx.progress
        .message("compiling the in-image program appliance-admin");
    let progress = &ctx.progress;
    admin.install(&overlay, |line| progress.message(line))?;
    write_release(ctx, &overlay)?;
    let mut key = KeyBuilder::new("system layer")
        .part("package layer", &packages.key)
        .part("files", cache::tree_hash(&overlay)?)
        .part(
            "source date epoch",
            config.image.source_date_epoch.to_string(),
        )
        .part("squashfs", super::squashfs::settings(config).join(" "));
    for script in &packages.hooks.customize {
        key = key.part("customize hook", std::fs::read(script)?);
    }
    let key = key.finish();
    let squashfs = ctx
        .work
        .join(format!("system-{}.squashfs", cache::short(&key)));
    if squashfs.is_file() && !ctx.opts.refresh {
        cache::touch(&squashfs);
        let note = format!("from cache (key {})", cache::short(&key));
        let layer = SystemLayer {
            key,
            squashfs,
            tree: None,
        };
        return Ok((layer, note));
    }
    if !host::is_root() {
        bail!("the build unpacks the root file system and runs the features' customize hooks in it, which needs root: run it with sudo");
    }
    let root = root_tree::prepare(ctx, packages)?;
    let tree = root.path.clone();
    ctx.progress.message("laying in the features' files");
    copy_into(&overlay, &overlay, &tree)?;
    let log = ctx.work.join("customize.log");
    let _ = std::fs::remove_file(&log);
    for script in &packages.hooks.customize {
        let name = script
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        ctx.progress.message(&format!("running {name}"));
        let progress = &ctx.progress;
        host::run_logged(
            &mut in_root(&tree, script, config.image.source_date_epoch),
            &log,
            |l| progress.message(l),
        )
        .with_context(|| format!("the customize hook {name} failed"))?;
    }
    clamp_times(&tree, config.image.source_date_epoch)?;
    let note = format!(
        "{} hooks run; key {}",
        packages.hooks.customize.len(),
        cache::short(&key)
    );
    let layer = SystemLayer {
        key,
        squashfs,
        tree: Some(root),
    };
    Ok((layer, note))
}

/// Writes what the image says about itself (name, version, update policy) and the keys its
/// updates must be signed with into the root; see [`appliance_spec::release`].
fn write_release(ctx: &BuildCtx, overlay: &Path) -> Result<()> {
    let config = ctx.config;
    let ca_certificate = match &config.updates.ca_certificate {
        Some(p) => Some(
            std::fs::read_to_string(config.resolve(p))
                .with_context(|| format!("cannot read [updates] ca_certificate {}", p.display()))?,
        ),
        None => None,
    };
    let release = Release {
        name: config.image.name.clone(),
        version: config.image.version.clone(),
        arch: config.image.arch,
        board: config.image.board,
        data_schema: appliance_spec::DATA_SCHEMA,
        updates: UpdatePolicy {
            url: config.updates.url.clone(),
            window: config.updates.window.clone(),
            ca_certificate,
        },
    };
    let in_root = |machine_path: &str| overlay.join(machine_path.trim_start_matches('/'));
    let path = in_root(RELEASE_FILE);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&path, toml::to_string(&release)?)?;
    let mut keys = String::new();
    for file in &config.updates.trusted_keys {
        let file = config.resolve(file);
        let text = std::fs::read_to_string(&file)
            .with_context(|| format!("cannot read [updates] trusted_keys {}", file.display()))?;
        TrustedKeys::parse(&text, &file.display().to_string())?;
        keys.push_str(text.trim_end());
        keys.push('\n');
    }
    if !keys.is_empty() {
        std::fs::write(in_root(UPDATE_KEYS_FILE), keys)?;
    }
    Ok(())
}

/// Runs `script ROOT` with /proc, /sys and /dev mounted in ROOT, in a mount namespace of its
/// own: the mounts vanish with the process, whatever happens to it.
fn in_root(root: &Path, script: &Path, source_date_epoch: u64) -> Command {
    let mut cmd = Command::new("unshare");
    cmd.args(["--mount", "--propagation", "private", "--", "sh", "-c"])
        .arg(
            "mount -t proc proc \"$1/proc\" && mount --rbind /sys \"$1/sys\" && \
             mount --rbind /dev \"$1/dev\" && exec \"$2\" \"$1\"",
        )
        .arg("sh")
        .arg(root)
        .arg(script)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("LC_ALL", "C.UTF-8")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .env("SOURCE_DATE_EPOCH", source_date_epoch.to_string());
    cmd
}

/// Copies `dir` (a part of `src_root`) into `dest`, replacing what is there: files and
/// symlinks as they are, directories merged, modes kept.
fn copy_into(src_root: &Path, dir: &Path, dest: &Path) -> Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let entry = entry?;
        let path = entry.path();
        let target = dest.join(path.strip_prefix(src_root).unwrap_or(&path));
        let meta = std::fs::symlink_metadata(&path)?;
        let existing = std::fs::symlink_metadata(&target).ok();
        if meta.is_dir() {
            match &existing {
                // Debian's merged /usr: /lib is a relative link to usr/lib; files go through it.
                Some(m) if m.file_type().is_symlink() => {
                    if std::fs::read_link(&target)?.is_absolute() || !target.is_dir() {
                        bail!(
                            "{} is a link in the image; put the feature's files under what it points to",
                            target.strip_prefix(dest).unwrap_or(&target).display()
                        );
                    }
                }
                Some(m) if !m.is_dir() => {
                    std::fs::remove_file(&target)?;
                    std::fs::create_dir(&target)?;
                    std::fs::set_permissions(&target, meta.permissions())?;
                }
                Some(_) => std::fs::set_permissions(&target, meta.permissions())?,
                None => {
                    std::fs::create_dir(&target)?;
                    std::fs::set_permissions(&target, meta.permissions())?;
                }
            }
            copy_into(src_root, &path, dest)?;
            continue;
        }
        if let Some(m) = existing {
            if m.is_dir() {
                std::fs::remove_dir_all(&target)?;
            } else {
                std::fs::remove_file(&target)?;
            }
        }
        if meta.file_type().is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(&path)?, &target)?;
        } else {
            std::fs::copy(&path, &target)
                .with_context(|| format!("copying {} into the root", path.display()))?;
            std::fs::set_permissions(&target, meta.permissions())?;
        }
    }
    Ok(())
}

/// Sets every time newer than `epoch` to `epoch`, as mmdebstrap does for the package layer:
/// files written now must not make the image differ from one build to the next.
fn clamp_times(root: &Path, epoch: u64) -> Result<()> {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::MetadataExt;
    let epoch = i64::try_from(epoch).context("source_date_epoch is too large")?;
    let mut stack = vec![root.to_path_buf()];
    while let Some(path) = stack.pop() {
        let meta = std::fs::symlink_metadata(&path)?;
        if meta.is_dir() {
            for e in std::fs::read_dir(&path)? {
                stack.push(e?.path());
            }
        }
        if meta.mtime() <= epoch {
            continue;
        }
        let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())?;
        let t = libc::timespec {
            tv_sec: epoch,
            tv_nsec: 0,
        };
        // SAFETY: a valid NUL-terminated path and two timespecs, as utimensat(2) requires.
        let rc = unsafe {
            libc::utimensat(
                libc::AT_FDCWD,
                c_path.as_ptr(),
                [t, t].as_ptr(),
                libc::AT_SYMLINK_NOFOLLOW,
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("setting the time of {}", path.display()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn files_replace_what_is_there_and_times_are_clamped() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("src");
        let dest = d.path().join("dest");
        std::fs::create_dir_all(src.join("etc/x")).unwrap();
        std::fs::create_dir_all(dest.join("etc/y")).unwrap();
        std::fs::write(src.join("etc/x/new"), "new").unwrap();
        std::fs::write(dest.join("etc/old"), "old").unwrap();
        std::fs::write(src.join("etc/old"), "replaced").unwrap();
        std::os::unix::fs::symlink("/target", src.join("etc/link")).unwrap();
        std::fs::write(dest.join("etc/link"), "a file before").unwrap();
        std::fs::create_dir_all(dest.join("usr/lib")).unwrap();
        std::os::unix::fs::symlink("usr/lib", dest.join("lib")).unwrap();
        std::fs::create_dir_all(src.join("lib/x")).unwrap();
        std::fs::write(src.join("lib/x/f"), "through the link").unwrap();
        copy_into(&src, &src, &dest).unwrap();
        assert_eq!(
            std::fs::read_to_string(dest.join("usr/lib/x/f")).unwrap(),
            "through the link",
            "merged-/usr links are kept and followed"
        );
        assert!(std::fs::symlink_metadata(dest.join("lib"))
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(
            std::fs::read_to_string(dest.join("etc/x/new")).unwrap(),
            "new"
        );
        assert_eq!(
            std::fs::read_to_string(dest.join("etc/old")).unwrap(),
            "replaced"
        );
        assert_eq!(
            std::fs::read_link(dest.join("etc/link")).unwrap(),
            PathBuf::from("/target")
        );
        assert!(
            dest.join("etc/y").is_dir(),
            "directories are merged, not replaced"
        );
        clamp_times(&dest, 1_000_000).unwrap();
        for p in ["etc", "etc/x/new", "etc/old"] {
            assert_eq!(
                std::fs::metadata(dest.join(p)).unwrap().mtime(),
                1_000_000,
                "{p}"
            );
        }
        assert_eq!(
            std::fs::symlink_metadata(dest.join("etc/link"))
                .unwrap()
                .mtime(),
            1_000_000
        );
    }
}
