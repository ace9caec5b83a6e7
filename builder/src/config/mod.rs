//! `appliance.toml`: typed configuration with defaults.
//!
//! Parsing is strict: an unknown key or a bad value is an error that names the file, the line and
//! the key, and says how to fix it. `--set key=value` overrides are applied on top of the file.

use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Deserializer, Serialize};

mod validate;
use sha2::{Digest, Sha256};

/// The whole appliance description.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub image: Image,
    #[serde(default)]
    pub debian: Debian,
    #[serde(default)]
    pub jitsi: Jitsi,
    /// Extra apt repositories, each with a keyring pinned by fingerprint.
    #[serde(default)]
    pub repositories: Vec<Repository>,
    #[serde(default)]
    pub packages: Packages,
    /// Which folders of `overlays/` make up the image (see `features.rs`).
    #[serde(default)]
    pub features: Features,
    #[serde(default)]
    pub boot: Boot,
    #[serde(default)]
    pub root: Root,
    #[serde(default)]
    pub data: Data,
    /// The key that signs the outputs and update bundles.
    #[serde(default)]
    pub signing: Signing,
    /// Who machines accept updates from, and where they fetch them.
    #[serde(default)]
    pub updates: Updates,
    /// First-boot answers (domain, hosts, SSH keys, ...) written to the ESP as
    /// `appliance-setup.toml`; the schema is the in-image program's seed file.
    #[serde(default)]
    pub firstboot: toml::Table,

    /// Directory the configuration was read from; relative paths are resolved against it.
    #[serde(skip)]
    pub base_dir: PathBuf,
    /// SHA-256 of the effective configuration (after overrides) without its secrets, for the
    /// manifest and the identifiers derived from it (disk and partition GUIDs, verity salt).
    #[serde(skip)]
    pub hash: String,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Image {
    /// Base name of the output files: `out/<name>.raw`.
    pub name: String,
    /// The image's version, numbers and dots (`1.4.2`): update bundles are named after it, and
    /// a machine refuses a bundle older than what it runs.
    #[serde(default = "default_version")]
    pub version: Version,
    /// Who supplies the image (your organisation), as the SBOM names it.
    #[serde(default = "default_supplier")]
    pub supplier: String,
    #[serde(default)]
    pub arch: Arch,
    /// `generic` (UEFI/BIOS machines, VPS, clouds) or `raspberry-pi` (arm64 only: the ESP also
    /// carries the Raspberry Pi firmware, config.txt and cmdline.txt, so the same image boots on
    /// a Pi 4 and on arm64 UEFI machines).
    #[serde(default)]
    pub board: Board,
    /// Output formats written to the output directory.
    #[serde(default = "default_formats")]
    pub formats: Vec<Format>,
    /// Reproducible timestamps (seconds since 1970) for files in the image.
    #[serde(default = "default_source_date_epoch")]
    pub source_date_epoch: u64,
}

pub use appliance_spec::version::Version;
pub use appliance_spec::{Arch, Board};
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
pub enum Format {
    /// The disk image itself: `dd` it to a disk, or upload it where raw images are taken.
    #[serde(rename = "raw")]
    Raw,
    /// zstd-compressed raw image, for downloads and Hetzner/DigitalOcean-style imports.
    #[serde(rename = "raw.zst")]
    RawZst,
    /// qcow2 for Proxmox, OpenStack and plain KVM hosts.
    #[serde(rename = "qcow2")]
    Qcow2,
    /// streamOptimized VMDK for VMware and AWS import-image.
    #[serde(rename = "vmdk")]
    Vmdk,
    /// Fixed VHD, a whole number of MiB, for Azure.
    #[serde(rename = "vhd")]
    Vhd,
    /// A block map for fast flashing (`appliance write`, bmaptool).
    #[serde(rename = "bmap")]
    Bmap,
}

impl Format {
    pub fn extension(self) -> &'static str {
        match self {
            Format::Raw => "raw",
            Format::RawZst => "raw.zst",
            Format::Qcow2 => "qcow2",
            Format::Vmdk => "vmdk",
            Format::Vhd => "vhd",
            Format::Bmap => "bmap",
        }
    }
}

fn default_version() -> Version {
    Version::from_str("1.0.0").expect("a valid version")
}

fn default_supplier() -> String {
    "the operator of this appliance".into()
}

fn default_formats() -> Vec<Format> {
    vec![Format::Raw, Format::RawZst]
}

fn default_source_date_epoch() -> u64 {
    // 2026-01-01T00:00:00Z: any fixed value makes builds repeatable.
    1_767_225_600
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Debian {
    pub suite: String,
    pub mirror: String,
    pub components: Vec<String>,
    /// Also use `<suite>-security` from `security_mirror`.
    pub security: bool,
    pub security_mirror: String,
    /// Also use `<suite>-updates` from the mirror.
    pub updates: bool,
    /// A point in time of Debian's snapshot archive (`YYYYMMDDTHHMMSSZ`): packages come from
    /// snapshot.debian.org as the archive was then, instead of from `mirror`.
    pub snapshot: Option<String>,
}

/// Debian's archive of every past state of the mirrors.
pub const SNAPSHOT_ARCHIVE: &str = "http://snapshot.debian.org/archive";

impl Debian {
    /// The mirror packages come from: `mirror`, or the snapshot archive at `snapshot`.
    pub fn effective_mirror(&self) -> String {
        match &self.snapshot {
            Some(t) => format!("{SNAPSHOT_ARCHIVE}/debian/{t}/"),
            None => self.mirror.clone(),
        }
    }

    /// The mirror of `<suite>-security`.
    pub fn effective_security_mirror(&self) -> String {
        match &self.snapshot {
            Some(t) => format!("{SNAPSHOT_ARCHIVE}/debian-security/{t}/"),
            None => self.security_mirror.clone(),
        }
    }
}

impl Default for Debian {
    fn default() -> Self {
        Debian {
            suite: "bookworm".into(),
            mirror: "http://deb.debian.org/debian".into(),
            components: vec!["main".into()],
            security: true,
            security_mirror: "http://deb.debian.org/debian-security".into(),
            updates: true,
            snapshot: None,
        }
    }
}

/// Jitsi Meet's own packages. Debian's prosody, nginx, coturn and OpenJDK are installed either
/// way; `enabled = false` builds the same appliance without Jitsi's repository.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Jitsi {
    pub enabled: bool,
    /// Where Jitsi's packages come from: its apt repository...
    pub repository: Option<Repository>,
    /// ...or, for offline builds, a directory of `.deb` files (used instead of the repository).
    pub debs: Option<PathBuf>,
    pub packages: Vec<String>,
}

/// An apt repository signed by a key whose fingerprint is pinned in the configuration.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Repository {
    /// Short name, used for file names (`<name>.gpg`, `<name>.sources`).
    pub name: String,
    pub uri: String,
    /// A suite such as `bookworm`, or a flat repository path ending in `/` such as `stable/`.
    pub suite: String,
    #[serde(default)]
    pub components: Vec<String>,
    /// The signing key: a file (relative to appliance.toml) ...
    #[serde(default)]
    pub key: Option<PathBuf>,
    /// ... or an https URL it is downloaded from.
    #[serde(default)]
    pub key_url: Option<String>,
    /// The signing key's full fingerprint (40 hex digits, spaces allowed).
    pub fingerprint: String,
    /// Packages installed from this repository.
    #[serde(default)]
    pub packages: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Packages {
    /// The kernel package; empty picks Debian's cloud kernel for the architecture.
    pub kernel: String,
    /// Packages installed on top of the base system.
    pub include: Vec<String>,
    /// A directory of `.deb` files installed as well (with their dependencies from the mirror).
    pub local_debs: Option<PathBuf>,
    /// Where downloaded `.deb` files are kept between builds.
    pub cache_dir: PathBuf,
    /// The lock file (`appliance lock` writes it, `build --locked` reads it).
    pub lock_file: PathBuf,
}

impl Default for Packages {
    fn default() -> Self {
        Packages {
            kernel: String::new(),
            include: Vec::new(),
            local_debs: None,
            cache_dir: PathBuf::from("build/cache"),
            lock_file: PathBuf::from(crate::lock::FILE),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Signing {
    /// The private signing key (OpenSSH ed25519, made by `appliance key generate`); without
    /// it, `$APPLIANCE_SIGNING_KEY`. Never inside the repository or a feature folder.
    pub key: Option<PathBuf>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Updates {
    /// Public key files (`.pub`); an update bundle must be signed by one of them. They are
    /// baked into the verified root.
    pub trusted_keys: Vec<PathBuf>,
    /// An update channel (https://...): machines check `index.json` there daily and install a
    /// newer bundle by themselves.
    pub url: Option<String>,
    /// When a machine may reboot into an update it fetched, `"HH:MM-HH:MM"` local time.
    pub window: Option<String>,
    /// A PEM file with the CA certificate of the channel's HTTPS, for a private CA.
    pub ca_certificate: Option<PathBuf>,
    /// The oldest version the bundles of this build may replace.
    pub min_version: Option<Version>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Features {
    /// The folder holding one folder per feature.
    pub dir: PathBuf,
    /// The features in the image, in the order their files are laid and their hooks run. The
    /// `jitsi` feature follows `[jitsi] enabled` instead.
    pub enabled: Vec<String>,
}

impl Default for Features {
    fn default() -> Self {
        Features {
            dir: PathBuf::from("overlays"),
            enabled: ["base", "boot", "hardening", "firstboot", "meeting"]
                .map(String::from)
                .to_vec(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Boot {
    pub uefi: bool,
    /// Legacy BIOS boot (GRUB). Default: on for x86_64, off for arm64 (which has no BIOS).
    pub bios: Option<bool>,
    /// Seconds the boot menu waits (0: boot at once; a key press still shows the menu).
    pub timeout: u32,
    /// Extra kernel command-line arguments.
    pub cmdline: Vec<String>,
    /// Size of the EFI system partition.
    pub esp_size: Size,
}

impl Default for Boot {
    fn default() -> Self {
        Boot {
            uefi: true,
            bios: None,
            timeout: 0,
            cmdline: Vec::new(),
            esp_size: Size(256 << 20),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Root {
    /// Only `squashfs` is supported.
    pub filesystem: String,
    /// Protect the root with dm-verity (strongly recommended).
    pub verity: bool,
    /// squashfs compressor: zstd, xz, gzip or lz4.
    pub compression: String,
    /// The compressor's level (zstd 1-22, xz and gzip 1-9); empty: 9 for zstd
    /// (`build::squashfs::DEFAULT_ZSTD_LEVEL`), mksquashfs's default for the others.
    pub compression_level: Option<u32>,
    /// squashfs block size, 4K to 1M (a power of two).
    pub block_size: Size,
    /// Size reserved for each root slot. Two slots are laid out (A and B) so a later update can
    /// write the next version beside the running one.
    pub slot_size: Size,
}

impl Default for Root {
    fn default() -> Self {
        Root {
            filesystem: "squashfs".into(),
            verity: true,
            compression: "zstd".into(),
            compression_level: None,
            block_size: Size(128 << 10),
            slot_size: Size(1 << 30),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Data {
    /// Size of the data partition in the image; it grows to fill the disk on first boot.
    pub size: Size,
    /// Partition label, used to find it at boot (`PARTLABEL=`).
    pub label: String,
}

impl Default for Data {
    fn default() -> Self {
        Data {
            size: Size(256 << 20),
            label: "data".into(),
        }
    }
}

/// Answers for the first-boot setup, baked in at build time (optional).
/// A byte size written as an integer or a string such as `"512M"`, `"2G"`, `"4GiB"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Size(pub u64);

impl Size {
    pub fn parse(text: &str) -> std::result::Result<Size, String> {
        let t = text.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (digits, unit) = t.split_at(split);
        let n: u64 = digits
            .parse()
            .map_err(|_| format!("`{text}` is not a size; write e.g. \"512M\" or \"2G\""))?;
        let mult: u64 = match unit.trim().to_ascii_uppercase().as_str() {
            "" | "B" => 1,
            "K" | "KB" | "KIB" => 1 << 10,
            "M" | "MB" | "MIB" => 1 << 20,
            "G" | "GB" | "GIB" => 1 << 30,
            "T" | "TB" | "TIB" => 1 << 40,
            other => {
                return Err(format!(
                    "unknown size unit `{other}` in `{text}`; use K, M, G or T (powers of 1024)"
                ))
            }
        };
        n.checked_mul(mult)
            .map(Size)
            .ok_or_else(|| format!("`{text}` is too large"))
    }
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Int(n) => Ok(Size(n)),
            Raw::Text(s) => Size::parse(&s).map_err(serde::de::Error::custom),
        }
    }
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0;
        if n >= 1 << 30 && n.is_multiple_of(1 << 30) {
            write!(f, "{}G", n >> 30)
        } else if n >= 1 << 20 && n.is_multiple_of(1 << 20) {
            write!(f, "{}M", n >> 20)
        } else {
            write!(f, "{n}")
        }
    }
}

impl Config {
    /// Reads `path`, applies `overrides` (`key=value`, dotted keys), and checks the result.
    pub fn load(path: &Path, overrides: &[String]) -> Result<Config> {
        let text = std::fs::read_to_string(path).with_context(|| {
            format!(
                "cannot read {}; run from the directory holding appliance.toml or pass --config",
                path.display()
            )
        })?;
        let base_dir = path
            .parent()
            .map(|p| {
                if p.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    p
                }
            })
            .unwrap_or(Path::new("."))
            .to_path_buf();
        let origin = path.display().to_string();
        let mut config = Self::from_str_with(&text, &origin, base_dir, overrides)?;
        // The reproducible-builds convention: SOURCE_DATE_EPOCH from the environment, unless
        // the configuration itself names the time.
        if let Ok(value) = std::env::var("SOURCE_DATE_EPOCH") {
            if !sets_source_date_epoch(&text, overrides) {
                config.image.source_date_epoch = value.trim().parse().map_err(|_| {
                    anyhow::anyhow!(
                        "the environment's SOURCE_DATE_EPOCH={value:?} is not a number of seconds \
                         since 1970: set it to e.g. $(git log -1 --format=%ct), or unset it"
                    )
                })?;
                config.hash = config.hash_without_secrets()?;
            }
        }
        Ok(config)
    }

    /// Parses configuration text; `origin` names it in error messages.
    pub fn from_str_with(
        text: &str,
        origin: &str,
        base_dir: PathBuf,
        overrides: &[String],
    ) -> Result<Config> {
        // Parse the file alone first so that errors point at its lines.
        let mut config: Config =
            toml::from_str(text).map_err(|e| describe_toml_error(origin, text, &e))?;
        if !overrides.is_empty() {
            let mut table: toml::Table =
                toml::from_str(text).map_err(|e| describe_toml_error(origin, text, &e))?;
            for item in overrides {
                apply_override(&mut table, item)?;
            }
            let merged = toml::to_string(&table).context("re-serialising the configuration")?;
            config = toml::from_str(&merged).map_err(|e| {
                // The merged text has no lines the user wrote, so name the overrides instead.
                let keys: Vec<&str> = overrides
                    .iter()
                    .map(|o| o.split_once('=').map_or(o.as_str(), |(k, _)| k.trim()))
                    .collect();
                anyhow::anyhow!(
                    "--set {}: {}\nhint: values are TOML: true/false, numbers, \"text\" in quotes, [\"a\", \"b\"]",
                    keys.join(", --set "),
                    e.message()
                )
            })?;
        }
        config.base_dir = base_dir;
        config.validate(origin)?;
        config.hash = config.hash_without_secrets()?;
        Ok(config)
    }

    /// Resolves a path from the configuration against the configuration's directory.
    pub fn resolve(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base_dir.join(p)
        }
    }

    /// The `[firstboot]` table as the seed file's text, or `None` when it is empty.
    pub fn firstboot_seed(&self) -> Result<Option<String>> {
        if self.firstboot.is_empty() {
            return Ok(None);
        }
        let text = toml::to_string(&self.firstboot).context("serialising [firstboot]")?;
        Ok(Some(text))
    }

    /// The configuration hash. `[firstboot]` may hold host passwords: they are left out, because
    /// the identifiers derived from the hash stay on the disk after the seed file is deleted and
    /// would let anyone test password guesses offline.
    fn hash_without_secrets(&self) -> Result<String> {
        let mut public = self.clone();
        strip_secrets(&mut public.firstboot);
        // Where things are on the build machine is not what the image is: two builds of the
        // same configuration in other directories must get the same identifiers. What those
        // files hold reaches the image through the layers' keys (packages, lock, keys).
        public.packages.cache_dir = PathBuf::new();
        public.packages.lock_file = PathBuf::new();
        public.packages.local_debs = None;
        public.features.dir = PathBuf::new();
        public.jitsi.debs = None;
        public.signing.key = None;
        public.updates.trusted_keys.clear();
        public.updates.ca_certificate = None;
        for r in public
            .repositories
            .iter_mut()
            .chain(public.jitsi.repository.as_mut())
        {
            r.key = None;
        }
        let canonical = toml::to_string(&public).context("serialising the configuration")?;
        Ok(hex::encode(Sha256::digest(canonical.as_bytes())))
    }

    /// Whether the image boots with a legacy BIOS (GRUB) as well.
    pub fn bios(&self) -> bool {
        self.boot.bios.unwrap_or(self.image.arch == Arch::X86_64)
    }

    /// The kernel package to install.
    pub fn kernel_package(&self) -> String {
        if !self.packages.kernel.is_empty() {
            return self.packages.kernel.clone();
        }
        match self.image.board {
            // The Pi needs the full arm64 kernel (its SD, USB and network drivers).
            Board::RaspberryPi => "linux-image-arm64".into(),
            Board::Generic => format!("linux-image-cloud-{}", self.image.arch.debian()),
        }
    }

    /// Debian components: the configured ones, plus non-free-firmware for the Pi's boot firmware.
    pub fn components(&self) -> Vec<String> {
        let mut c = self.debian.components.clone();
        if self.image.board == Board::RaspberryPi && !c.iter().any(|x| x == "non-free-firmware") {
            c.push("non-free-firmware".into());
        }
        c
    }

    /// Repositories in use: the extra ones, plus Jitsi's when enabled and not built offline.
    pub fn active_repositories(&self) -> Vec<&Repository> {
        let mut repos: Vec<&Repository> = self.repositories.iter().collect();
        if self.jitsi.enabled && self.jitsi.debs.is_none() {
            if let Some(r) = &self.jitsi.repository {
                repos.push(r);
            }
        }
        repos
    }
}

/// Replaces every `password` value in a table (at any depth) with a fixed placeholder.
fn strip_secrets(table: &mut toml::Table) {
    fn walk(v: &mut toml::Value) {
        match v {
            toml::Value::Table(t) => strip_secrets(t),
            toml::Value::Array(a) => a.iter_mut().for_each(walk),
            _ => {}
        }
    }
    for (key, value) in table.iter_mut() {
        if key == "password" {
            *value = toml::Value::String("(secret)".into());
        } else {
            walk(value);
        }
    }
}

/// Upper-case hex without spaces; errors unless it is a full 40-digit (v4) or 64-digit (v5) fingerprint.
pub fn normalize_fingerprint(text: &str) -> Result<String> {
    let fp: String = text
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect::<String>()
        .to_ascii_uppercase();
    if !(fp.len() == 40 || fp.len() == 64) || !fp.chars().all(|c| c.is_ascii_hexdigit()) {
        bail!(
            "{text:?} is not a full key fingerprint (40 hex digits); a short key id is not enough"
        );
    }
    Ok(fp)
}

fn describe_toml_error(origin: &str, input: &str, e: &toml::de::Error) -> anyhow::Error {
    let mut msg = format!("{origin}: {}", e.message());
    if let Some(span) = e.span() {
        // Turn the byte span into a line number a person can jump to.
        {
            let line = input[..span.start.min(input.len())].lines().count().max(1);
            let line = if input[..span.start.min(input.len())].ends_with('\n') {
                line + 1
            } else {
                line
            };
            let snippet = &input[span.start.min(input.len())..span.end.min(input.len())];
            msg = format!("{origin}, line {line}, at `{snippet}`: {}", e.message());
        }
    }
    if e.message().contains("unknown field `overlays`") {
        msg.push_str("\nhint: [overlays] dirs became [features]: put your files in a feature folder (docs/configuration.md, \"[features]\")");
    } else if e.message().contains("unknown field") {
        msg.push_str("\nhint: check the spelling; docs/configuration.md lists every key");
    }
    anyhow::anyhow!(msg)
}

/// Applies one `a.b.c=value` override. The value is read as TOML (`true`, `3`, `"x"`, `["a"]`)
/// and taken as a plain string when it is not valid TOML.
fn apply_override(table: &mut toml::Table, item: &str) -> Result<()> {
    let Some((key, raw)) = item.split_once('=') else {
        bail!("--set {item:?}: expected key=value, for example --set jitsi.enabled=false");
    };
    let key = key.trim();
    let parts: Vec<&str> = key.split('.').collect();
    if parts.iter().any(|p| p.is_empty()) {
        bail!("--set {item:?}: the key {key:?} has an empty part");
    }
    let value: toml::Value = match toml::from_str::<toml::Table>(&format!("v = {raw}")) {
        Ok(mut t) => t
            .remove("v")
            .unwrap_or(toml::Value::String(raw.to_string())),
        Err(_) => toml::Value::String(raw.trim().to_string()),
    };
    let (last, parents) = parts
        .split_last()
        .expect("split on '.' yields at least one part");
    let mut cur = table;
    for p in parents {
        let entry = cur
            .entry(p.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        cur = match entry {
            toml::Value::Table(t) => t,
            _ => bail!("--set {item:?}: `{p}` is not a table"),
        };
    }
    cur.insert(last.to_string(), value);
    Ok(())
}

/// Whether the configuration text or an override sets `[image] source_date_epoch`.
fn sets_source_date_epoch(text: &str, overrides: &[String]) -> bool {
    let in_file = toml::from_str::<toml::Table>(text)
        .ok()
        .and_then(|t| {
            t.get("image")
                .and_then(|i| i.get("source_date_epoch"))
                .cloned()
        })
        .is_some();
    in_file
        || overrides.iter().any(|o| {
            o.split_once('=')
                .is_some_and(|(k, _)| k.trim() == "image.source_date_epoch")
        })
}

#[cfg(test)]
mod tests;
