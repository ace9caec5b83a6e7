//! Packages: mmdebstrap installs Debian (and extra repositories, or local `.deb` files) into a
//! root file system and writes it as a tarball.
//!
//! apt resolves dependencies and dpkg runs the maintainer scripts; nothing here tries to do their
//! job. This module prepares what they need: the sources with `signed-by` keyrings whose
//! fingerprints were checked against the configuration, the hook scripts, and a host-side cache
//! of downloaded `.deb` files so a second build downloads nothing.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::config::{normalize_fingerprint, Config, Repository};
use crate::features::Feature;
use crate::host;
use crate::rootfs::HookPaths;

/// Everything mmdebstrap is run with, prepared in the build directory.
pub struct RootfsPlan {
    pub args: Vec<String>,
    pub source_date_epoch: u64,
    /// What determines the result, without the build's own paths: the cache key of the
    /// package layer is a hash of it (so moving the build directory keeps the cache valid).
    pub key_input: String,
}

/// Checks a repository's signing key against its pinned fingerprint and writes it as a binary
/// keyring to `dest` (for apt's `signed-by`). A key file holding any other key is refused too.
pub fn verified_keyring(config: &Config, repo: &Repository, dest: &Path) -> Result<()> {
    let pinned = normalize_fingerprint(&repo.fingerprint)?;
    let work = dest.with_extension("download");
    match (&repo.key, &repo.key_url) {
        (Some(file), _) => {
            let src = config.resolve(file);
            std::fs::copy(&src, &work).with_context(|| {
                format!(
                    "repository {:?}: cannot read the key file {} (key = {:?} in appliance.toml)",
                    repo.name,
                    src.display(),
                    file
                )
            })?;
        }
        (None, Some(url)) => download(url, &work).with_context(|| {
            format!(
                "repository {:?}: cannot download its signing key from {url}. If this machine cannot reach it, \
                 build without it (for Jitsi: --set jitsi.enabled=false, or [jitsi] debs = a directory of .deb files)",
                repo.name
            )
        })?,
        (None, None) => bail!("repository {:?} has neither `key` nor `key_url`", repo.name),
    }
    let found = key_fingerprints(&work)?;
    match found.as_slice() {
        [one] if *one == pinned => {}
        [] => bail!(
            "repository {:?}: the key file holds no OpenPGP key (is it an HTML error page?)",
            repo.name
        ),
        [one] => bail!(
            "repository {:?}: signing key fingerprint mismatch; refusing to use it.\n  pinned in appliance.toml: {}\n  downloaded key:           {}\n\
             If the repository really rotated its key, check the new fingerprint with its publisher and update `fingerprint`.",
            repo.name,
            spaced(&pinned),
            spaced(one)
        ),
        many => bail!(
            "repository {:?}: the key file holds {} keys ({}); only the pinned key {} may be trusted",
            repo.name,
            many.len(),
            many.iter().map(|f| spaced(f)).collect::<Vec<_>>().join(", "),
            spaced(&pinned)
        ),
    }
    // apt wants a binary keyring; dearmor if the file is ASCII-armoured.
    let bytes = std::fs::read(&work)?;
    if bytes.starts_with(b"-----BEGIN PGP") {
        host::run(
            Command::new("gpg")
                .args(["--batch", "--yes", "--dearmor", "-o"])
                .arg(dest)
                .arg(&work),
        )?;
    } else {
        std::fs::rename(&work, dest)?;
    }
    let _ = std::fs::remove_file(&work);
    Ok(())
}

/// Primary-key fingerprints in an OpenPGP key file, as `gpg --show-keys` reads them.
pub fn key_fingerprints(file: &Path) -> Result<Vec<String>> {
    let home = tempfile::tempdir()?;
    let out = host::run(
        Command::new("gpg")
            .arg("--homedir")
            .arg(home.path())
            .args(["--batch", "--with-colons", "--show-keys"])
            .arg(file),
    )
    .with_context(|| format!("reading the OpenPGP key in {}", file.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    // A `fpr` record right after a `pub` record is the primary key's fingerprint; after `sub`
    // it is a subkey's, which is not what the configuration pins.
    let mut fps = Vec::new();
    let mut after_pub = false;
    for line in text.lines() {
        let fields: Vec<&str> = line.split(':').collect();
        match fields.first().copied() {
            Some("pub") => after_pub = true,
            Some("fpr") if after_pub => {
                if let Some(fp) = fields.get(9) {
                    fps.push(fp.to_ascii_uppercase());
                }
                after_pub = false;
            }
            Some("sub") => after_pub = false,
            _ => {}
        }
    }
    Ok(fps)
}

fn spaced(fp: &str) -> String {
    fp.as_bytes()
        .chunks(4)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

fn download(url: &str, dest: &Path) -> Result<()> {
    if !url.starts_with("https://") {
        bail!("refusing to fetch a signing key over {url}: use an https URL or a key file");
    }
    host::run(
        Command::new("curl")
            .args(["--fail", "--silent", "--show-error", "--location"])
            .args([
                "--proto",
                "=https",
                "--max-time",
                "60",
                "--retry",
                "2",
                "-o",
            ])
            .arg(dest)
            .arg(url),
    )?;
    Ok(())
}

/// One `deb` line per source: Debian (with updates and security) and the active repositories.
pub fn sources(config: &Config, keyrings: &[(String, PathBuf)]) -> Vec<String> {
    let d = &config.debian;
    let comps = config.components().join(" ");
    let mirror = d.effective_mirror();
    let mut lines = vec![format!("deb {mirror} {} {comps}", d.suite)];
    if d.updates {
        lines.push(format!("deb {mirror} {}-updates {comps}", d.suite));
    }
    if d.security {
        lines.push(format!(
            "deb {} {}-security {comps}",
            d.effective_security_mirror(),
            d.suite
        ));
    }
    for repo in config.active_repositories() {
        let keyring = keyrings
            .iter()
            .find(|(n, _)| *n == repo.name)
            .map(|(_, p)| p.display().to_string())
            .unwrap_or_default();
        lines.push(
            format!(
                "deb [signed-by={keyring}] {} {} {}",
                repo.uri,
                repo.suite,
                repo.components.join(" ")
            )
            .trim_end()
            .to_string(),
        );
    }
    lines
}

/// The `.deb` files in a directory, sorted (for a stable cache key).
pub fn local_debs(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read the .deb directory {}", dir.display()))?;
    let mut debs: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "deb"))
        .collect();
    debs.sort();
    if debs.is_empty() {
        bail!("{} holds no .deb files", dir.display());
    }
    Ok(debs)
}

/// The package list passed to mmdebstrap (`--include`): the kernel, the board's firmware, each
/// feature's packages, `[packages] include`, and the packages of the extra repositories and
/// Jitsi.
pub fn package_list(config: &Config, features: &[Feature]) -> Vec<String> {
    let mut pkgs = vec![config.kernel_package()];
    if config.image.board == crate::config::Board::RaspberryPi {
        pkgs.push("raspi-firmware".into());
    }
    for f in features {
        pkgs.extend(f.packages.iter().cloned());
    }
    pkgs.extend(config.packages.include.iter().cloned());
    for repo in config.active_repositories() {
        pkgs.extend(repo.packages.iter().cloned());
    }
    if config.jitsi.enabled {
        pkgs.extend(config.jitsi.packages.iter().cloned());
    }
    let mut seen = std::collections::BTreeSet::new();
    pkgs.retain(|p| seen.insert(p.clone()));
    pkgs
}

/// Builds mmdebstrap's command line for the package layer: the packages of the configuration
/// and its features, the features' install trees, debconf answers and package hooks. Downloaded
/// `.deb` files are copied back into `deb_cache`, apt's package lists into `lists_out`.
pub fn plan(
    config: &Config,
    features: &[Feature],
    source: &PackageSource,
    hooks: &HookPaths,
    deb_cache: &Path,
    lists_out: &Path,
) -> Result<RootfsPlan> {
    let components = match source {
        PackageSource::Archive { .. } => config.components().join(","),
        PackageSource::Locked { .. } => crate::locked_repo::COMPONENT.to_string(),
    };
    let mut args: Vec<String> = vec![
        "--variant=apt".into(),
        format!("--architectures={}", config.image.arch.debian()),
        format!("--components={components}"),
        // Keep downloaded packages so they can be copied back into the host cache.
        "--skip=essential/unlink".into(),
        "--aptopt=Acquire::Languages \"none\"".into(),
        "--aptopt=Acquire::Retries \"3\"".into(),
        // Documentation and translations are not used on an appliance.
        "--dpkgopt=path-exclude=/usr/share/doc/*".into(),
        "--dpkgopt=path-include=/usr/share/doc/*/copyright".into(),
        "--dpkgopt=path-exclude=/usr/share/man/*".into(),
        "--dpkgopt=path-exclude=/usr/share/locale/*".into(),
        "--dpkgopt=path-include=/usr/share/locale/locale.alias".into(),
        // udev's vendor and model names (for network cards by their MAC address, PCI, USB,
        // ACPI and Bluetooth devices) only label devices for people. They make up 12 of the
        // 13 MB of hwdb.bin, whose pages udev reads from the compressed root at every boot;
        // the hardware fixes (keyboards, sensors, interface names) stay. bookworm's udev
        // names them under /lib, later releases under /usr/lib.
        "--dpkgopt=path-exclude=/lib/udev/hwdb.d/20-OUI.hwdb".into(),
        "--dpkgopt=path-exclude=/lib/udev/hwdb.d/20-*-vendor*.hwdb".into(),
        "--dpkgopt=path-exclude=/usr/lib/udev/hwdb.d/20-OUI.hwdb".into(),
        "--dpkgopt=path-exclude=/usr/lib/udev/hwdb.d/20-*-vendor*.hwdb".into(),
        // The root is born merged-/usr (symlinks, as debootstrap makes them) with
        // usr-is-merged installed before the essential packages are configured. Otherwise apt
        // satisfies init-system-helpers' "usrmerge | usr-is-merged" with usrmerge, which
        // brings Perl along only to convert a root that needs no conversion.
        "--hook-dir=/usr/share/mmdebstrap/hooks/merged-usr".into(),
    ];
    if config.debian.snapshot.is_some() {
        // The snapshot archive serves Release files whose Valid-Until has long passed.
        args.push("--aptopt=Acquire::Check-Valid-Until \"false\"".into());
    }
    let mut key: Vec<String> = args.clone();
    let mut include = package_list(config, features);
    let mut deb_paths = Vec::new();
    if let Some(dir) = &config.packages.local_debs {
        deb_paths.extend(local_debs(&config.resolve(dir))?);
    }
    if config.jitsi.enabled {
        if let Some(dir) = &config.jitsi.debs {
            deb_paths.extend(local_debs(&config.resolve(dir))?);
        }
    }
    if !deb_paths.is_empty() {
        // mmdebstrap's own hook makes the .deb files visible inside the chroot.
        args.push("--hook-dir=/usr/share/mmdebstrap/hooks/file-mirror-automount".into());
    }
    // Packages named in a local directory are installed from the .deb files instead.
    include.retain(|p| {
        !deb_paths
            .iter()
            .any(|d| deb_package_name(d).as_deref() == Some(p))
    });
    args.push(format!("--include={}", include.join(",")));
    key.push(format!("include {}", include.join(",")));
    for deb in &deb_paths {
        let abs = std::fs::canonicalize(deb)
            .with_context(|| format!("cannot resolve {}", deb.display()))?;
        args.push(format!("--include={}", abs.display()));
        // A .deb replaced under the same name is a different package.
        key.push(format!(
            "local deb {} {}",
            deb.file_name().unwrap_or_default().to_string_lossy(),
            appliance_spec::signature::sha256_file(&abs)?
        ));
    }
    let q = |p: &Path| shell_quote(&p.display().to_string());
    let preseed_name = hooks
        .preseed
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    args.extend([
        // openjdk's postinst links its man page even though man pages are excluded.
        "--setup-hook=mkdir -p \"$1/var/cache/apt/archives\" \"$1/usr/share/man/man1\" \"$1/etc/dracut.conf.d\""
            .to_string(),
        // dpkg syncs every file it unpacks; the tarball is written only once everything is
        // installed, so those syncs protect nothing and cost a large part of the stage.
        // Removed again below: the image's dpkg keeps its safe default.
        format!("--setup-hook=mkdir -p \"$1/etc/dpkg/dpkg.cfg.d\" && echo force-unsafe-io > \"$1/{UNSAFE_IO_CONF}\""),
        format!("--setup-hook=sync-in {} /var/cache/apt/archives/", q(deb_cache)),
        // The initrd configuration must be there before the kernel is installed, so that the
        // kernel's own postinst builds the right initrd once.
        format!("--setup-hook=sync-in {} /", q(&hooks.install)),
        format!("--essential-hook=copy-in {} /tmp", q(&hooks.preseed)),
        format!("--essential-hook=chroot \"$1\" debconf-set-selections /tmp/{preseed_name}"),
    ]);
    key.push(format!(
        "install tree {}",
        crate::build::tree_hash(&hooks.install)?
    ));
    key.push(format!(
        "preseed {}",
        appliance_spec::signature::sha256_file(&hooks.preseed)?
    ));
    // Each feature's package hook, in order, with the root as $1.
    for script in &hooks.packages {
        args.push(format!("--customize-hook={}", script.display()));
        key.push(format!(
            "packages hook {}",
            appliance_spec::signature::sha256_file(script)?
        ));
    }
    args.extend([
        format!(
            "--customize-hook=sync-out /var/cache/apt/archives {}",
            q(deb_cache)
        ),
        // Packages are cached on the host, not in the image.
        "--customize-hook=rm -f \"$1\"/var/cache/apt/archives/*.deb".into(),
        format!("--customize-hook=rm \"$1/{UNSAFE_IO_CONF}\""),
        // apt's package lists say where each package came from and its checksum (the lock
        // and the SBOM are made from them); the image itself keeps none.
        format!(
            "--customize-hook=sync-out /var/lib/apt/lists {}",
            q(lists_out)
        ),
    ]);
    args.push(config.debian.suite.clone());
    args.push("-".into()); // the tarball goes to stdout; the caller writes it
    key.push(format!("suite {}", config.debian.suite));
    match source {
        PackageSource::Archive { keyrings } => {
            args.extend(sources(config, keyrings));
            for (name, keyring) in *keyrings {
                key.push(format!(
                    "keyring {name} {}",
                    appliance_spec::signature::sha256_file(keyring)?
                ));
            }
            key.extend(sources(config, &[]));
        }
        PackageSource::Locked { line, lock_hash } => {
            args.push(line.clone());
            // The lock decides every package; where the files were fetched from does not.
            key.push(format!("lock {lock_hash}"));
        }
    }
    Ok(RootfsPlan {
        args,
        source_date_epoch: config.image.source_date_epoch,
        key_input: key.join("\n"),
    })
}

/// dpkg's configuration, inside the root, that lets it skip syncs while the layer is made.
const UNSAFE_IO_CONF: &str = "etc/dpkg/dpkg.cfg.d/00-appliance-build-unsafe-io";

/// Where the package layer's packages come from.
pub enum PackageSource<'a> {
    /// The Debian archive (or its snapshot) and the configured repositories, with their keys.
    Archive { keyrings: &'a [(String, PathBuf)] },
    /// Only the local repository of a locked build (`line`, an apt source).
    Locked { line: String, lock_hash: String },
}

/// The sources of the configuration as the lock names them.
pub fn lock_sources(config: &Config, keyrings: &[(String, PathBuf)]) -> Vec<crate::lock::Source> {
    let d = &config.debian;
    let debian_keyring = PathBuf::from(DEBIAN_KEYRING);
    let mut out = vec![crate::lock::Source {
        name: "debian".into(),
        uri: d.effective_mirror(),
        suite: d.suite.clone(),
        keyring: debian_keyring.clone(),
    }];
    if d.updates {
        out.push(crate::lock::Source {
            name: "debian-updates".into(),
            uri: d.effective_mirror(),
            suite: format!("{}-updates", d.suite),
            keyring: debian_keyring.clone(),
        });
    }
    if d.security {
        out.push(crate::lock::Source {
            name: "debian-security".into(),
            uri: d.effective_security_mirror(),
            suite: format!("{}-security", d.suite),
            keyring: debian_keyring,
        });
    }
    for repo in config.active_repositories() {
        if let Some((_, keyring)) = keyrings.iter().find(|(n, _)| *n == repo.name) {
            out.push(crate::lock::Source {
                name: repo.name.clone(),
                uri: repo.uri.clone(),
                suite: repo.suite.clone(),
                keyring: keyring.clone(),
            });
        }
    }
    out
}

/// The keys Debian's archive is signed with, as mmdebstrap uses them (package
/// debian-archive-keyring on the host).
pub const DEBIAN_KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

/// The package name of a `.deb` file, from its file name (`name_version_arch.deb`).
fn deb_package_name(deb: &Path) -> Option<String> {
    let stem = deb.file_name()?.to_str()?;
    stem.split('_').next().map(str::to_string)
}

fn shell_quote(s: &str) -> String {
    if s.chars()
        .all(|c| c.is_ascii_alphanumeric() || "/._-+=:,".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

/// Runs mmdebstrap, writing the root tarball to `tar_out` and its output to `log`.
pub fn run_mmdebstrap(
    plan: &RootfsPlan,
    tar_out: &Path,
    log: &Path,
    on_line: impl FnMut(&str),
) -> Result<()> {
    let mode = if host::is_root() { "root" } else { "unshare" };
    // The plan ends with "-" (stdout) as the target; write to a file instead so stdout stays
    // free for progress lines.
    let args: Vec<String> = plan
        .args
        .iter()
        .map(|a| {
            if a == "-" {
                tar_out.display().to_string()
            } else {
                a.clone()
            }
        })
        .collect();
    let mut cmd = Command::new("mmdebstrap");
    cmd.arg(format!("--mode={mode}"))
        .arg("--format=tar")
        .args(&args)
        .env("LC_ALL", "C.UTF-8")
        .env("DEBIAN_FRONTEND", "noninteractive")
        // Clamps file times and drops build logs, so the same inputs give the same tree.
        .env("SOURCE_DATE_EPOCH", plan.source_date_epoch.to_string());
    host::run_logged(&mut cmd, log, on_line).context(
        "installing packages with mmdebstrap failed; the log above names the package or hook",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str) -> Config {
        let text = format!("[image]\nname = \"t\"\n{extra}");
        Config::from_str_with(&text, "test.toml", PathBuf::from("."), &[]).unwrap()
    }

    #[test]
    fn sources_have_updates_security_and_signed_by() {
        let c = config(
            "[[repositories]]\nname = \"x\"\nuri = \"https://r.example\"\nsuite = \"stable/\"\nkey = \"k\"\nfingerprint = \"FFD65A0DA2BEBDEB73D44C8BB4D2D216F1FD7806\"\n",
        );
        let s = sources(&c, &[("x".into(), PathBuf::from("/k/x.gpg"))]);
        assert_eq!(s[0], "deb http://deb.debian.org/debian bookworm main");
        assert!(s.iter().any(|l| l.contains("bookworm-security")));
        assert!(s.iter().any(|l| l.contains("bookworm-updates")));
        assert_eq!(
            s.last().unwrap(),
            "deb [signed-by=/k/x.gpg] https://r.example stable/"
        );
    }

    #[test]
    fn package_list_has_kernel_first_and_no_duplicates() {
        let c = config("[packages]\ninclude = [\"nginx-light\", \"nginx-light\", \"udev\"]\n");
        assert_eq!(
            package_list(&c, &[]),
            vec!["linux-image-cloud-amd64", "nginx-light", "udev"]
        );
    }

    #[test]
    fn jitsi_packages_only_when_enabled() {
        let text = "[jitsi]\nenabled = true\ndebs = \"/nonexistent\"\npackages = [\"jicofo\"]\n";
        assert!(package_list(&config(text), &[]).contains(&"jicofo".to_string()));
        let off = text.replace("enabled = true", "enabled = false");
        assert!(!package_list(&config(&off), &[]).contains(&"jicofo".to_string()));
    }

    /// Makes a throwaway key with gpg and returns (key file, fingerprint).
    fn make_key(dir: &Path, name: &str) -> (PathBuf, String) {
        let home = dir.join(format!("gnupg-{name}"));
        std::fs::create_dir_all(&home).unwrap();
        let status = Command::new("gpg")
            .arg("--homedir")
            .arg(&home)
            .args(["--batch", "--passphrase", "", "--quick-gen-key"])
            .arg(format!("{name} <{name}@example.invalid>"))
            .args(["ed25519", "sign", "never"])
            .status()
            .expect("gpg is needed for this test: apt-get install gpg");
        assert!(status.success());
        let key = dir.join(format!("{name}.asc"));
        let out = Command::new("gpg")
            .arg("--homedir")
            .arg(&home)
            .args(["--batch", "--armor", "--export"])
            .output()
            .unwrap();
        std::fs::write(&key, &out.stdout).unwrap();
        let fps = key_fingerprints(&key).unwrap();
        assert_eq!(fps.len(), 1);
        (key, fps[0].clone())
    }

    fn repo_config(dir: &Path, key: &Path, fp: &str) -> Config {
        let text = format!(
            "[image]\nname = \"t\"\n[[repositories]]\nname = \"r\"\nuri = \"https://r.example\"\nsuite = \"stable/\"\nkey = \"{}\"\nfingerprint = \"{fp}\"\n",
            key.display()
        );
        Config::from_str_with(&text, "test.toml", dir.to_path_buf(), &[]).unwrap()
    }

    #[test]
    fn pinned_key_is_accepted_and_dearmored() {
        let dir = tempfile::tempdir().unwrap();
        let (key, fp) = make_key(dir.path(), "good");
        let c = repo_config(dir.path(), &key, &fp);
        let dest = dir.path().join("r.gpg");
        verified_keyring(&c, &c.repositories[0], &dest).unwrap();
        let bytes = std::fs::read(&dest).unwrap();
        assert!(
            !bytes.starts_with(b"-----BEGIN"),
            "keyring must be binary for apt"
        );
        assert_eq!(key_fingerprints(&dest).unwrap(), vec![fp]);
    }

    #[test]
    fn mismatched_key_stops_with_both_fingerprints() {
        let dir = tempfile::tempdir().unwrap();
        let (key, fp) = make_key(dir.path(), "actual");
        let (_, other) = make_key(dir.path(), "pinned");
        let c = repo_config(dir.path(), &key, &other);
        let dest = dir.path().join("r.gpg");
        let err = format!(
            "{:#}",
            verified_keyring(&c, &c.repositories[0], &dest).unwrap_err()
        );
        assert!(err.contains("mismatch"), "{err}");
        assert!(err.contains(&spaced(&fp)), "names the key found: {err}");
        assert!(err.contains(&spaced(&other)), "names the pinned key: {err}");
        assert!(!dest.exists(), "no keyring is written on mismatch");
    }

    #[test]
    fn key_file_with_an_extra_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (a, fp) = make_key(dir.path(), "a");
        let (b, _) = make_key(dir.path(), "b");
        let both = dir.path().join("both.asc");
        let mut bytes = std::fs::read(&a).unwrap();
        bytes.extend(std::fs::read(&b).unwrap());
        std::fs::write(&both, bytes).unwrap();
        let c = repo_config(dir.path(), &both, &fp);
        let err = format!(
            "{:#}",
            verified_keyring(&c, &c.repositories[0], &dir.path().join("r.gpg")).unwrap_err()
        );
        assert!(err.contains("2 keys"), "{err}");
    }
}
