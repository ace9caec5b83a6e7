//! `appliance.lock`: the exact package set of an image, so a build next year installs what was
//! tested today (docs/supply-chain.md).
//!
//! It is made from a package layer (what mmdebstrap installed and the package lists apt used):
//! every installed package with its version, architecture, source package, the SHA-256 and
//! path of its `.deb` in the archive, and where it came from; the sources with the fingerprints
//! of the keys that sign them, and each suite's `Date`. `appliance build --locked` installs
//! exactly this set, from a local repository of the locked `.deb` files only.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::rootfs::InstalledPackage;

pub const FORMAT: u32 = 1;
/// Its file name, beside appliance.toml.
pub const FILE: &str = "appliance.lock";
/// The origin of a package installed from a local directory of `.deb` files.
pub const LOCAL: &str = "local";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lock {
    pub format: u32,
    pub image: String,
    /// Debian's name for the architecture.
    pub architecture: String,
    pub suite: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<String>,
    pub sources: Vec<LockedSource>,
    pub packages: Vec<LockedPackage>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockedSource {
    /// `debian`, `debian-updates`, `debian-security`, or the repository's name.
    pub name: String,
    pub uri: String,
    pub suite: String,
    /// The `Date` of the suite's Release file when the lock was made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub date: Option<String>,
    /// Fingerprints of the keys its Release file is checked with.
    pub key_fingerprints: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockedPackage {
    pub name: String,
    pub version: String,
    pub architecture: String,
    /// The source package (and its version, when it differs).
    pub source: String,
    pub sha256: String,
    pub size: u64,
    /// Path of the `.deb` under the source's URI, or the file name of a local `.deb`.
    pub filename: String,
    /// The source it came from ([`LockedSource::name`]), or [`LOCAL`].
    pub origin: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub section: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub priority: String,
}

impl LockedPackage {
    /// The `.deb` file name apt gives this package in its cache.
    pub fn deb_file_name(&self) -> String {
        format!(
            "{}_{}_{}.deb",
            self.name,
            self.version.replace(':', "%3a"),
            self.architecture
        )
    }

    /// `name=version` as apt takes it.
    pub fn pinned(&self) -> String {
        format!("{}={}", self.name, self.version)
    }
}

impl Lock {
    pub fn load(path: &Path) -> Result<Lock> {
        let text = std::fs::read_to_string(path).with_context(|| {
            format!(
                "cannot read {}; make it with `appliance lock`",
                path.display()
            )
        })?;
        let lock: Lock = toml::from_str(&text)
            .map_err(|e| anyhow::anyhow!("{}: {}", path.display(), e.message()))?;
        if lock.format != FORMAT {
            bail!(
                "{} has format {}; this version of appliance reads format {FORMAT}: make it again with `appliance lock`",
                path.display(),
                lock.format
            );
        }
        Ok(lock)
    }

    pub fn to_toml(&self) -> Result<String> {
        Ok(format!(
            "# The exact package set of the image: every package with its version and the SHA-256\n\
             # of its .deb. Made by `appliance lock`; commit it. `appliance build --locked` installs\n\
             # exactly this (docs/supply-chain.md).\n{}",
            toml::to_string(self).context("writing the lock")?
        ))
    }

    /// SHA-256 of the lock's content, for the manifest and the package layer's cache key.
    pub fn hash(&self) -> Result<String> {
        Ok(appliance_spec::signature::sha256_hex(
            self.to_toml()?.as_bytes(),
        ))
    }

    /// Checks that the lock was made for this configuration's image.
    pub fn check_matches(&self, config: &Config, path: &Path) -> Result<()> {
        let wrong = |what: &str, locked: &str, now: &str| -> Result<()> {
            bail!(
                "{} was made for {what} {locked:?}, the configuration says {now:?}: run `appliance lock` again",
                path.display()
            )
        };
        if self.architecture != config.image.arch.debian() {
            wrong(
                "architecture",
                &self.architecture,
                config.image.arch.debian(),
            )?;
        }
        if self.suite != config.debian.suite {
            wrong("suite", &self.suite, &config.debian.suite)?;
        }
        if self.snapshot != config.debian.snapshot {
            wrong(
                "snapshot",
                self.snapshot.as_deref().unwrap_or("none"),
                config.debian.snapshot.as_deref().unwrap_or("none"),
            )?;
        }
        Ok(())
    }

    /// The packages that differ between the lock and what is installed, as sentences.
    pub fn drift(&self, installed: &[InstalledPackage]) -> Vec<String> {
        let locked: BTreeMap<&str, &LockedPackage> =
            self.packages.iter().map(|p| (p.name.as_str(), p)).collect();
        let now: BTreeMap<&str, &InstalledPackage> =
            installed.iter().map(|p| (p.name.as_str(), p)).collect();
        let mut out = Vec::new();
        for (name, p) in &now {
            match locked.get(name) {
                None => out.push(format!("{name} {} is installed but not locked", p.version)),
                Some(l) if l.version != p.version => out.push(format!(
                    "{name} is {} but locked at {}",
                    p.version, l.version
                )),
                _ => {}
            }
        }
        for name in locked.keys() {
            if !now.contains_key(name) {
                out.push(format!("{name} is locked but not installed"));
            }
        }
        out
    }
}

/// A source as the lock names it: the Debian suites and the repositories of the configuration.
pub struct Source {
    pub name: String,
    pub uri: String,
    pub suite: String,
    pub keyring: PathBuf,
}

/// Makes the lock of a package layer: `installed` from its dpkg status, the package lists in
/// `lists` (apt's `/var/lib/apt/lists` as the layer was installed from them), and the local
/// `.deb` files the configuration installs.
pub fn from_layer(
    config: &Config,
    sources: &[Source],
    installed: &[InstalledPackage],
    lists: &Path,
    local_debs: &[PathBuf],
) -> Result<Lock> {
    let (packages, dates) = resolve_debs(sources, installed, lists, local_debs)?;
    let mut locked_sources = Vec::new();
    for s in sources {
        locked_sources.push(LockedSource {
            name: s.name.clone(),
            uri: s.uri.clone(),
            suite: s.suite.clone(),
            date: dates.get(&s.name).cloned(),
            key_fingerprints: crate::packages::key_fingerprints(&s.keyring)?,
        });
    }
    Ok(Lock {
        format: FORMAT,
        image: config.image.name.clone(),
        architecture: config.image.arch.debian().into(),
        suite: config.debian.suite.clone(),
        snapshot: config.debian.snapshot.clone(),
        sources: locked_sources,
        packages,
    })
}

/// The `.deb` behind each installed package (its archive path, SHA-256 and source), from the
/// package lists the layer was installed from; and the `Date` of each source's Release file.
pub fn resolve_debs(
    sources: &[Source],
    installed: &[InstalledPackage],
    lists: &Path,
    local_debs: &[PathBuf],
) -> Result<(Vec<LockedPackage>, BTreeMap<String, String>)> {
    let mut available: HashMap<(String, String, String), LockedPackage> = HashMap::new();
    let mut dates = BTreeMap::new();
    let names: std::collections::HashSet<&str> =
        installed.iter().map(|p| p.name.as_str()).collect();
    for entry in std::fs::read_dir(lists).with_context(|| format!("reading {}", lists.display()))? {
        let path = entry?.path();
        let file = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let Some(source) = sources.iter().find(|s| file.starts_with(&list_prefix(s))) else {
            continue;
        };
        if file.ends_with("_Packages") {
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            for p in parse_packages_where(&text, &source.name, |n| names.contains(n)) {
                available.insert(
                    (p.name.clone(), p.version.clone(), p.architecture.clone()),
                    p,
                );
            }
        } else if file.ends_with("Release") {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            if let Some(date) = field(&text, "Date") {
                dates.insert(source.name.clone(), date);
            }
        }
    }
    let mut packages = Vec::new();
    let mut missing = Vec::new();
    for p in installed {
        let key = (p.name.clone(), p.version.clone(), p.architecture.clone());
        if let Some(found) = available.remove(&key) {
            packages.push(found);
        } else if let Some(deb) = local_debs.iter().find(|d| local_deb_is(d, p)) {
            packages.push(LockedPackage {
                name: p.name.clone(),
                version: p.version.clone(),
                architecture: p.architecture.clone(),
                source: p.name.clone(),
                sha256: appliance_spec::signature::sha256_file(deb)?,
                size: std::fs::metadata(deb)?.len(),
                filename: deb
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                origin: LOCAL.into(),
                section: String::new(),
                priority: String::new(),
            });
        } else {
            missing.push(format!("{} {}", p.name, p.version));
        }
    }
    if !missing.is_empty() {
        bail!(
            "these installed packages are in no package list the build used, so they cannot be locked: {}",
            missing.join(", ")
        );
    }
    packages.sort_by(|a, b| a.name.cmp(&b.name));
    Ok((packages, dates))
}

/// The start of the names apt gives the list files of a source: the URI without its scheme,
/// `/` turned into `_`.
fn list_prefix(source: &Source) -> String {
    let uri = source
        .uri
        .split_once("://")
        .map_or(source.uri.as_str(), |(_, rest)| rest)
        .trim_end_matches('/');
    let suite = source.suite.trim_end_matches('/');
    if source.suite.ends_with('/') {
        format!("{}_{}_", uri.replace('/', "_"), suite.replace('/', "_"))
    } else {
        format!("{}_dists_{}_", uri.replace('/', "_"), suite)
    }
}

fn local_deb_is(deb: &Path, p: &InstalledPackage) -> bool {
    deb.file_name().is_some_and(|n| {
        let n = n.to_string_lossy();
        n.starts_with(&format!("{}_", p.name))
    })
}

/// The value of `name:` in a control-style stanza.
fn field(stanza: &str, name: &str) -> Option<String> {
    stanza.lines().find_map(|l| {
        l.strip_prefix(name)
            .and_then(|r| r.strip_prefix(':'))
            .map(|v| v.trim().to_string())
    })
}

/// Every package of a `Packages` file, as locked packages from `origin`.
pub fn parse_packages(text: &str, origin: &str) -> Vec<LockedPackage> {
    parse_packages_where(text, origin, |_| true)
}

/// The packages of a `Packages` file whose names `wanted` accepts. The other stanzas are not
/// parsed further: a suite's list has some 60,000 of them, an image a few hundred.
pub fn parse_packages_where(
    text: &str,
    origin: &str,
    wanted: impl Fn(&str) -> bool,
) -> Vec<LockedPackage> {
    let mut out = Vec::new();
    for stanza in text.split("\n\n") {
        let get = |n: &str| field(stanza, n).unwrap_or_default();
        let name = get("Package");
        if name.is_empty() || !wanted(&name) {
            continue;
        }
        let version = get("Version");
        let source = match field(stanza, "Source") {
            Some(s) => s,
            None => name.clone(),
        };
        out.push(LockedPackage {
            name,
            version,
            architecture: get("Architecture"),
            source,
            sha256: get("SHA256"),
            size: get("Size").parse().unwrap_or(0),
            filename: get("Filename"),
            origin: origin.to_string(),
            section: get("Section"),
            priority: get("Priority"),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const PACKAGES: &str = "Package: bash\nSource: bash (5.2.15-2)\nVersion: 5.2.15-2+b7\nArchitecture: amd64\n\
        Size: 1500000\nSHA256: aa\nFilename: pool/main/b/bash/bash_5.2.15-2+b7_amd64.deb\nSection: shells\nPriority: required\n\n\
        Package: libc6\nVersion: 2.36-9+deb12u13\nArchitecture: amd64\nSize: 2\nSHA256: bb\n\
        Filename: pool/main/g/glibc/libc6_2.36-9+deb12u13_amd64.deb\nSource: glibc\n";

    #[test]
    fn packages_files_parse_and_list_names_match_sources() {
        let p = parse_packages(PACKAGES, "debian");
        assert_eq!(p.len(), 2);
        let only = parse_packages_where(PACKAGES, "debian", |n| n == "libc6");
        assert_eq!(only.len(), 1);
        assert_eq!(only[0].sha256, "bb");
        assert_eq!(p[0].source, "bash (5.2.15-2)");
        assert_eq!(p[1].source, "glibc");
        assert_eq!(p[0].deb_file_name(), "bash_5.2.15-2+b7_amd64.deb");
        let s = |uri: &str, suite: &str| Source {
            name: "x".into(),
            uri: uri.into(),
            suite: suite.into(),
            keyring: PathBuf::new(),
        };
        assert_eq!(
            list_prefix(&s("http://deb.debian.org/debian", "bookworm-security")),
            "deb.debian.org_debian_dists_bookworm-security_"
        );
        assert_eq!(
            list_prefix(&s("https://download.jitsi.org", "stable/")),
            "download.jitsi.org_stable_"
        );
        let epoch = LockedPackage {
            version: "1:2.0".into(),
            ..p[0].clone()
        };
        assert_eq!(epoch.deb_file_name(), "bash_1%3a2.0_amd64.deb");
    }

    #[test]
    fn drift_names_every_difference() {
        let lock = Lock {
            format: FORMAT,
            image: "t".into(),
            architecture: "amd64".into(),
            suite: "bookworm".into(),
            snapshot: None,
            sources: vec![],
            packages: parse_packages(PACKAGES, "debian"),
        };
        let installed = |name: &str, version: &str| InstalledPackage {
            name: name.into(),
            version: version.into(),
            architecture: "amd64".into(),
            depends: vec![],
        };
        assert!(lock
            .drift(&[
                installed("bash", "5.2.15-2+b7"),
                installed("libc6", "2.36-9+deb12u13")
            ])
            .is_empty());
        let d = lock.drift(&[installed("bash", "5.2.15-2+b8"), installed("zsh", "5")]);
        assert_eq!(
            d,
            [
                "bash is 5.2.15-2+b8 but locked at 5.2.15-2+b7",
                "zsh 5 is installed but not locked",
                "libc6 is locked but not installed"
            ]
        );
        let text = lock.to_toml().unwrap();
        assert_eq!(toml::from_str::<Lock>(&text).unwrap(), lock);
    }
}
