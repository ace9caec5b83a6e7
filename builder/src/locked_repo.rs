//! The local package repository of a locked build: exactly the `.deb` files `appliance.lock`
//! names, each checked against its SHA-256, in a repository apt reads (`Packages`, `Release`,
//! `InRelease` signed with a key of this build machine). mmdebstrap installs from it alone, so
//! what is installed is what the lock says, online or offline. `appliance mirror export` writes
//! the same repository to a directory that can be carried to a machine without network.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::config::Config;
use crate::host;
use crate::lock::{Lock, LockedPackage, LOCAL};

/// The component the repository puts every package in.
pub const COMPONENT: &str = "main";

/// Where the `.deb` files of a locked build come from.
pub struct DebSources<'a> {
    /// The host's package cache (`<cache_dir>/debs/<suite>-<arch>`).
    pub cache: &'a Path,
    /// A mirror made by `appliance mirror export` (`--mirror-dir`).
    pub mirror_dir: Option<&'a Path>,
    /// Never use the network.
    pub offline: bool,
}

/// Puts every locked `.deb` into `pool` (hard links where possible), from the mirror
/// directory, the cache or the archive, checking each one's SHA-256. Stops before anything is
/// made when a package cannot be found or does not match, naming every such package.
pub fn collect(lock: &Lock, config: &Config, from: &DebSources, pool: &Path) -> Result<()> {
    std::fs::create_dir_all(pool)?;
    let mut missing = Vec::new();
    let mut changed = Vec::new();
    for p in &lock.packages {
        let dest = pool.join(p.deb_file_name());
        let candidates = candidates(p, config, from);
        let mut found = false;
        // Files of the package's name whose bytes are not what was locked.
        let mut other_bytes = None;
        for c in candidates.iter().filter(|c| c.is_file()) {
            if appliance_spec::signature::sha256_file(c)? == p.sha256 {
                link_or_copy(c, &dest)?;
                found = true;
                break;
            }
            other_bytes.get_or_insert_with(|| c.display().to_string());
        }
        if found {
            continue;
        }
        let fetched = if from.offline || p.origin == LOCAL {
            Fetched::Missing
        } else {
            download(p, config, lock, from.cache)?
        };
        match (fetched, other_bytes) {
            (Fetched::File(file), _) => link_or_copy(&file, &dest)?,
            (Fetched::OtherBytes(url), _) | (Fetched::Missing, Some(url)) => {
                changed.push(format!("{} {} ({url})", p.name, p.version))
            }
            (Fetched::Missing, None) => missing.push(format!("{} {}", p.name, p.version)),
        }
    }
    if !changed.is_empty() {
        bail!(
            "these .deb files do not match the SHA-256 in appliance.lock, so they are not the packages that were locked: {}",
            changed.join(", ")
        );
    }
    if !missing.is_empty() {
        bail!(
            "these locked packages are not available{}: {}. The mirror may no longer carry these versions: \
             point [debian] snapshot at a date when it did, use a mirror directory (--mirror-dir), or run `appliance lock` to take today's versions",
            if from.offline { " offline" } else { "" },
            missing.join(", ")
        );
    }
    Ok(())
}

/// Files that may hold the package: in the mirror directory, in the cache, or a local `.deb`.
fn candidates(p: &LockedPackage, config: &Config, from: &DebSources) -> Vec<PathBuf> {
    let name = p.deb_file_name();
    let mut out = Vec::new();
    if let Some(m) = from.mirror_dir {
        out.push(m.join("pool").join(&name));
    }
    out.push(from.cache.join(&name));
    if p.origin == LOCAL {
        for dir in [&config.packages.local_debs, &config.jitsi.debs]
            .into_iter()
            .flatten()
        {
            out.push(config.resolve(dir).join(&p.filename));
        }
    }
    out
}

/// What a download of a locked package found.
enum Fetched {
    /// The package, in the cache.
    File(PathBuf),
    /// A file whose SHA-256 is not the locked one (at this URL).
    OtherBytes(String),
    /// Nothing at the package's archive path.
    Missing,
}

/// Downloads a locked package from its source as the configuration names it now (the mirror
/// may have changed since the lock was made) into the cache.
fn download(p: &LockedPackage, config: &Config, lock: &Lock, cache: &Path) -> Result<Fetched> {
    let Some(base) = source_uri(config, lock, &p.origin) else {
        bail!(
            "{} comes from the source {:?}, which the configuration no longer has",
            p.name,
            p.origin
        );
    };
    let url = format!("{}/{}", base.trim_end_matches('/'), p.filename);
    let dest = cache.join(p.deb_file_name());
    let partial = dest.with_extension("deb.partial");
    let status = Command::new("curl")
        .args([
            "--fail",
            "--silent",
            "--location",
            "--retry",
            "2",
            "--max-time",
            "600",
            "-o",
        ])
        .arg(&partial)
        .arg(&url)
        .status()
        .context("curl is not installed; run `appliance doctor --install`")?;
    if !status.success() {
        let _ = std::fs::remove_file(&partial);
        return Ok(Fetched::Missing);
    }
    if appliance_spec::signature::sha256_file(&partial)? != p.sha256 {
        let _ = std::fs::remove_file(&partial);
        return Ok(Fetched::OtherBytes(url));
    }
    std::fs::rename(&partial, &dest)?;
    Ok(Fetched::File(dest))
}

/// The URI of a locked source's name in the configuration as it is now.
fn source_uri(config: &Config, lock: &Lock, origin: &str) -> Option<String> {
    let d = &config.debian;
    match origin {
        "debian" | "debian-updates" => Some(d.effective_mirror()),
        "debian-security" => Some(d.effective_security_mirror()),
        other => config
            .repositories
            .iter()
            .chain(config.jitsi.repository.iter())
            .find(|r| r.name == other)
            .map(|r| r.uri.clone())
            .or_else(|| {
                lock.sources
                    .iter()
                    .find(|s| s.name == other)
                    .map(|s| s.uri.clone())
            }),
    }
}

fn link_or_copy(from: &Path, to: &Path) -> Result<()> {
    let _ = std::fs::remove_file(to);
    if std::fs::hard_link(from, to).is_err() {
        std::fs::copy(from, to).with_context(|| format!("copying {}", from.display()))?;
    }
    Ok(())
}

/// The gpg key this machine signs its local repositories with (made once, kept in the cache).
pub struct RepoKey {
    home: PathBuf,
    /// The public key as a binary keyring, for apt's `signed-by`.
    pub keyring: PathBuf,
}

impl RepoKey {
    pub fn open_or_create(cache_dir: &Path) -> Result<RepoKey> {
        // apt takes a signed-by value that is not an absolute path for a fingerprint.
        let home = std::path::absolute(cache_dir.join("repo-key"))?;
        // Outside gpg's private home: apt reads it as the unprivileged user _apt.
        let keyring = std::path::absolute(cache_dir.join("repo-key.gpg"))?;
        if !keyring.is_file() {
            std::fs::create_dir_all(&home)?;
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o700))?;
            host::run(gpg(&home).args([
                "--quick-generate-key",
                "appliance local repository",
                "ed25519",
                "sign",
                "never",
            ]))
            .context("making the key that signs local package repositories")?;
            host::run(gpg(&home).arg("--export").arg("--output").arg(&keyring))?;
        }
        Ok(RepoKey { home, keyring })
    }

    /// Puts the public key into `dir`, as `repo-key.asc` (for people) and `repo-key.gpg` (for
    /// apt's `signed-by`).
    pub fn export(&self, dir: &Path) -> Result<()> {
        host::run(
            gpg(&self.home)
                .args(["--armor", "--export", "--output"])
                .arg(dir.join("repo-key.asc")),
        )?;
        std::fs::copy(&self.keyring, dir.join("repo-key.gpg"))?;
        Ok(())
    }

    /// Writes `InRelease`, `Release` signed in clear, next to `release`.
    fn sign(&self, release: &Path) -> Result<()> {
        let inrelease = release.with_file_name("InRelease");
        let _ = std::fs::remove_file(&inrelease);
        host::run(
            gpg(&self.home)
                .args(["--clearsign", "--output"])
                .arg(&inrelease)
                .arg(release),
        )?;
        Ok(())
    }
}

fn gpg(home: &Path) -> Command {
    let mut cmd = Command::new("gpg");
    cmd.arg("--homedir").arg(home).args([
        "--batch",
        "--yes",
        "--pinentry-mode",
        "loopback",
        "--passphrase",
        "",
    ]);
    cmd
}

/// Makes `dir` a repository of the `.deb` files in `dir/pool` for `suite` and `arch`, signed
/// with `key`: `dists/<suite>/main/binary-<arch>/Packages`, `Release`, `InRelease`.
pub fn write_repo(lock: &Lock, dir: &Path, key: &RepoKey) -> Result<()> {
    let suite = &lock.suite;
    let arch = &lock.architecture;
    let binary = dir.join(format!("dists/{suite}/{COMPONENT}/binary-{arch}"));
    std::fs::create_dir_all(&binary)?;
    // apt-ftparchive takes each package's priority from the .deb unless told; the archive's
    // may differ (apt's own says important, the archive required), so the lock's are given.
    let override_file = dir.join("override");
    let overrides: String = lock
        .packages
        .iter()
        .filter(|p| !p.priority.is_empty())
        .map(|p| format!("{} {} {}\n", p.name, p.priority, p.section))
        .collect();
    std::fs::write(&override_file, overrides)?;
    let out = host::run(
        Command::new("apt-ftparchive")
            .current_dir(dir)
            .args(["packages", "pool"])
            .arg(&override_file),
    )?;
    std::fs::write(binary.join("Packages"), &out.stdout)?;
    std::fs::remove_file(&override_file)?;
    let release = host::run(
        Command::new("apt-ftparchive")
            .current_dir(dir.join("dists").join(suite))
            .arg(format!("-oAPT::FTPArchive::Release::Suite={suite}"))
            .arg(format!("-oAPT::FTPArchive::Release::Codename={suite}"))
            .arg(format!(
                "-oAPT::FTPArchive::Release::Components={COMPONENT}"
            ))
            .arg(format!("-oAPT::FTPArchive::Release::Architectures={arch}"))
            .args(["release", "."]),
    )?;
    // Written after apt-ftparchive ran, so Release does not list itself.
    let release_path = dir.join("dists").join(suite).join("Release");
    std::fs::write(&release_path, &release.stdout)?;
    key.sign(&release_path)?;
    Ok(())
}

/// The apt source line of a repository written by [`write_repo`].
pub fn source_line(dir: &Path, lock: &Lock, key: &RepoKey) -> String {
    format!(
        "deb [signed-by={}] copy://{} {} {COMPONENT}",
        key.keyring.display(),
        dir.display(),
        lock.suite
    )
}
