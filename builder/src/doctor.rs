//! `appliance doctor [--install]`: checks the host tools the build and the boot tests need,
//! says which Debian package provides each missing one, and can install them with apt-get.
//!
//! The target host is Debian 12 (bookworm). QEMU comes from bookworm-backports: bookworm's
//! QEMU 7.2 is too old for the boot tests, so `--install` enables backports if needed.

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::host;

/// One requirement of the host and what was found for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// A program name (looked up on PATH and the sbin directories) or an absolute file path.
    pub what: String,
    /// The Debian package that provides it.
    pub package: String,
    /// Whether the package must come from bookworm-backports.
    pub backports: bool,
    /// "build" or "tests".
    pub purpose: &'static str,
    /// Where it was found (path, and version where it matters); `None` if missing.
    pub found: Option<String>,
    /// Why what was found is not good enough (e.g. QEMU too old).
    pub problem: Option<String>,
}

impl Check {
    /// Installed with rustup rather than apt-get.
    fn is_rustup(&self) -> bool {
        self.package.starts_with("rustup ")
    }

    /// Missing, or present but unusable: either way `--install` has to act on it.
    fn needs_install(&self) -> bool {
        self.found.is_none() || self.problem.is_some()
    }
}

/// (what, package, from backports, purpose). Paths are checked as files, the rest as programs.
const REQUIREMENTS: &[(&str, &str, bool, &str)] = &[
    ("mmdebstrap", "mmdebstrap", false, "build"),
    // Locked builds install from a local repository of the locked packages.
    ("apt-ftparchive", "apt-utils", false, "build"),
    // The keys Debian's archive is signed with (mmdebstrap and the lock use them).
    (
        "/usr/share/keyrings/debian-archive-keyring.gpg",
        "debian-archive-keyring",
        false,
        "build",
    ),
    ("mksquashfs", "squashfs-tools", false, "build"),
    ("gpg", "gpg", false, "build"),
    ("curl", "curl", false, "build"),
    ("grub-mkimage", "grub-common", false, "build"),
    (
        "/usr/lib/grub/i386-pc/boot.img",
        "grub-pc-bin",
        false,
        "build",
    ),
    // The ESP is made with mkfs.fat and filled with mtools, then checked with fsck.fat.
    ("mkfs.fat", "dosfstools", false, "build"),
    ("fsck.fat", "dosfstools", false, "build"),
    ("mcopy", "mtools", false, "build"),
    ("arch-test", "arch-test", false, "build"),
    // mmdebstrap's unshare mode, used when the build does not run as root.
    ("newuidmap", "uidmap", false, "build"),
    // The key-pinning tests make throwaway keys, which gpg does through its agent.
    ("gpg-agent", "gpg-agent", false, "tests"),
    ("mtype", "mtools", false, "tests"),
    // Reads files out of the squashfs root (the image tests, `appliance verify`).
    ("unsquashfs", "squashfs-tools", false, "tests"),
    // The boot loader tests start the host's systemd-boot under OVMF.
    (
        "/usr/lib/systemd/boot/efi/systemd-bootx64.efi",
        "systemd-boot-efi",
        false,
        "tests",
    ),
    // The DNS stub of the Let's Encrypt test is checked with dig.
    ("dig", "bind9-dnsutils", false, "tests"),
    ("veritysetup", "cryptsetup-bin", false, "tests"),
    // The backup tests open an `appliance-admin backup create` archive with the age tool.
    ("age", "age", false, "tests"),
    ("sfdisk", "fdisk", false, "tests"),
    ("qemu-system-x86_64", "qemu-system-x86", true, "tests"),
    ("qemu-system-aarch64", "qemu-system-arm", true, "tests"),
    // Converts images to qcow2, vmdk and vhd.
    ("qemu-img", "qemu-utils", true, "build"),
    // Cross-checks the block maps the build writes.
    ("bmaptool", "bmap-tools", false, "tests"),
    ("/usr/share/OVMF/OVMF_CODE_4M.fd", "ovmf", false, "tests"),
    (
        "/usr/share/AAVMF/AAVMF_CODE.fd",
        "qemu-efi-aarch64",
        false,
        "tests",
    ),
    // Building arm64 images on an x86_64 host runs arm64 programs through qemu-user, which
    // the kernel must know as a binfmt_misc handler.
    (BINFMT_AARCH64, "qemu-user-static", true, "arm64"),
    // The in-image program appliance-admin is compiled for arm64 images with a cross linker
    // and Rust's arm64 standard library (installed with rustup, not apt).
    (
        "aarch64-linux-gnu-gcc",
        "gcc-aarch64-linux-gnu",
        false,
        "arm64",
    ),
    // The C runtime files and glibc the cross linker links against (only recommended by the
    // compiler package, which is installed without recommends).
    (
        "/usr/aarch64-linux-gnu/lib/crti.o",
        "libc6-dev-arm64-cross",
        false,
        "arm64",
    ),
    (RUST_STD_AARCH64, RUSTUP_AARCH64, false, "arm64"),
    // Every configuration the machine generates is checked by its real consumer in the tests.
    // `[firstboot] timezone` is checked against the host's time zone database.
    ("/usr/share/zoneinfo/UTC", "tzdata", false, "build"),
    ("visudo", "sudo", false, "tests"),
    ("debugfs", "e2fsprogs", false, "tests"),
    ("prosodyctl", "prosody", false, "tests"),
    ("nginx", "nginx-light", false, "tests"),
    ("turnserver", "coturn", false, "tests"),
    // A TURN client, and a network namespace with a virtual card for it (config_coturn.rs).
    ("turnutils_uclient", "coturn", false, "tests"),
    ("ip", "iproute2", false, "tests"),
    ("hocon", "ruby-hocon", false, "tests"),
    ("node", "nodejs", false, "tests"),
    ("apparmor_parser", "apparmor", false, "tests"),
    ("nft", "nftables", false, "tests"),
    ("sshd", "openssh-server", false, "tests"),
    ("ssh", "openssh-client", false, "tests"),
    ("ssh-keygen", "openssh-client", false, "tests"),
    ("openssl", "openssl", false, "tests"),
    // The meeting tests' HTTPS and XMPP clients (crate appliance-scenarios) link the host's
    // OpenSSL; the `appliance` binary itself does not, so doctor builds without them.
    ("pkg-config", "pkg-config", false, "tests"),
    ("/usr/include/openssl/ssl.h", "libssl-dev", false, "tests"),
    // Let's Encrypt's test server and the ACME client the image uses, for the offline test.
    ("pebble", "pebble", false, "tests"),
    ("dehydrated", "dehydrated", false, "tests"),
    // Only handy for looking into outputs by hand (the build uses the zstd crate), so it must
    // not block `appliance build`.
    ("zstd", "zstd", false, "tests"),
];

/// Oldest QEMU major version the boot tests work with (bookworm has 7.2, backports 10).
const MIN_QEMU_MAJOR: u32 = 8;

const BACKPORTS: &str = "bookworm-backports";
/// Not a program or file: Rust's standard library for the arm64 target, added by rustup.
const RUST_STD_AARCH64: &str = "rust-std aarch64-unknown-linux-gnu";
const RUSTUP_AARCH64: &str = "rustup target add aarch64-unknown-linux-gnu";
const BINFMT_AARCH64: &str = "/proc/sys/fs/binfmt_misc/qemu-aarch64";
const DEFAULT_MIRROR: &str = "http://deb.debian.org/debian";
const BACKPORTS_SOURCE_FILE: &str = "/etc/apt/sources.list.d/appliance-bookworm-backports.sources";
const APT_INSTALL: &str = "apt-get install -y --no-install-recommends";

/// Checks every requirement on this machine.
pub fn check_host() -> Vec<Check> {
    REQUIREMENTS
        .iter()
        // An arm64 host runs arm64 programs natively.
        .filter(|r| !(r.0 == BINFMT_AARCH64 && std::env::consts::ARCH == "aarch64"))
        .map(|&(what, package, backports, purpose)| {
            let mut check = Check {
                what: what.to_string(),
                package: package.to_string(),
                backports,
                purpose,
                found: None,
                problem: None,
            };
            if what == RUST_STD_AARCH64 {
                if crate::admin_program::rust_target_installed("aarch64-unknown-linux-gnu") {
                    check.found = Some("installed".into());
                }
            } else if what.starts_with('/') {
                if Path::new(what).exists() {
                    check.found = Some(what.to_string());
                }
            } else if let Some(path) = host::find_program(what) {
                check.found = Some(path.display().to_string());
                if what.starts_with("qemu-system-") {
                    check_qemu_version(&mut check, &path);
                }
            }
            check
        })
        .collect()
}

/// Adds the QEMU version to `found`, or a problem if it is too old or cannot be told.
fn check_qemu_version(check: &mut Check, path: &Path) {
    let out = match host::run(Command::new(path).arg("--version")) {
        Ok(out) => out,
        Err(e) => {
            check.problem = Some(format!("`{} --version` failed: {e:#}", check.what));
            return;
        }
    };
    let text = String::from_utf8_lossy(&out.stdout);
    match parse_qemu_version(&text) {
        Some((version, major)) => {
            check.found = Some(format!("{} (QEMU {version})", path.display()));
            if major < MIN_QEMU_MAJOR {
                check.problem = Some(format!(
                    "QEMU {version} is too old (need >= {MIN_QEMU_MAJOR}); install {} from {BACKPORTS}",
                    check.package
                ));
            }
        }
        None => {
            check.problem = Some(format!(
                "cannot tell the QEMU version from `{} --version`; install {} from {BACKPORTS}",
                check.what, check.package
            ));
        }
    }
}

/// The version and major number from `qemu-system-* --version`
/// ("QEMU emulator version 10.0.2 (Debian 1:10.0.2+ds-...)").
fn parse_qemu_version(text: &str) -> Option<(String, u32)> {
    let version = text
        .lines()
        .find_map(|l| l.split("version ").nth(1))?
        .split_whitespace()
        .next()?;
    let major = version.split('.').next()?.parse().ok()?;
    Some((version.to_string(), major))
}

/// The checks that are missing or unusable.
pub fn missing(checks: &[Check]) -> Vec<&Check> {
    checks.iter().filter(|c| c.needs_install()).collect()
}

/// What `--install` installs: (packages from bookworm, packages from bookworm-backports).
fn install_plan(checks: &[Check]) -> (Vec<&str>, Vec<&str>) {
    let mut debian: Vec<&str> = Vec::new();
    let mut backports: Vec<&str> = Vec::new();
    for c in missing(checks).into_iter().filter(|c| !c.is_rustup()) {
        let list = if c.backports {
            &mut backports
        } else {
            &mut debian
        };
        if !list.contains(&c.package.as_str()) {
            list.push(&c.package);
        }
    }
    // The QEMU packages share qemu-system-common and friends: when one comes from backports,
    // take all of them from there so their versions match.
    if !backports.is_empty() {
        for c in checks.iter().filter(|c| c.backports) {
            if !backports.contains(&c.package.as_str()) {
                backports.push(&c.package);
            }
        }
    }
    (debian, backports)
}

/// The apt-get commands `--install` runs for `checks` (empty if nothing is missing).
fn install_commands(checks: &[Check]) -> Vec<String> {
    let (debian, backports) = install_plan(checks);
    let mut cmds = Vec::new();
    if checks.iter().any(|c| c.is_rustup() && c.needs_install()) {
        cmds.push(RUSTUP_AARCH64.to_string());
    }
    if debian.is_empty() && backports.is_empty() {
        return cmds;
    }
    cmds.push("apt-get update".to_string());
    if !debian.is_empty() {
        cmds.push(format!(
            "DEBIAN_FRONTEND=noninteractive {APT_INSTALL} {}",
            debian.join(" ")
        ));
    }
    if !backports.is_empty() {
        cmds.push(format!(
            "DEBIAN_FRONTEND=noninteractive {APT_INSTALL} -t {BACKPORTS} {}",
            backports.join(" ")
        ));
    }
    cmds
}

/// A table of all checks, then how to install what is missing.
pub fn report(checks: &[Check]) -> String {
    let rows: Vec<[String; 5]> = checks
        .iter()
        .map(|c| {
            let status = if c.needs_install() { "MISSING" } else { "ok" };
            let package = if c.backports {
                format!("{} ({BACKPORTS})", c.package)
            } else {
                c.package.clone()
            };
            let detail = match (&c.problem, &c.found) {
                (Some(problem), _) => problem.clone(),
                (None, Some(found)) => found.clone(),
                (None, None) => "not found".to_string(),
            };
            [
                status.to_string(),
                c.what.clone(),
                package,
                format!("for: {}", c.purpose),
                detail,
            ]
        })
        .collect();
    let mut widths = [0usize; 4];
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in &rows {
        let line = format!(
            "{:<w0$}  {:<w1$}  {:<w2$}  {:<w3$}  {}",
            row[0],
            row[1],
            row[2],
            row[3],
            row[4],
            w0 = widths[0],
            w1 = widths[1],
            w2 = widths[2],
            w3 = widths[3],
        );
        out.push_str(line.trim_end());
        out.push('\n');
    }
    let missing = missing(checks);
    if missing.is_empty() {
        let _ = writeln!(
            out,
            "\nAll {} host tools are present; nothing to install.",
            checks.len()
        );
    } else {
        let _ = writeln!(
            out,
            "\n{} of {} host tools missing. To install them, run as root:\n  sudo appliance doctor --install\n\
             which enables {BACKPORTS} if no apt source has it, then runs:",
            missing.len(),
            checks.len()
        );
        for cmd in install_commands(checks) {
            let _ = writeln!(out, "  {cmd}");
        }
    }
    out
}

/// Installs what `checks` lists as missing with apt-get; root only. Does nothing if nothing is
/// missing.
pub fn install(checks: &[Check]) -> Result<()> {
    let (debian, backports) = install_plan(checks);
    let rustup = checks.iter().any(|c| c.is_rustup() && c.needs_install());
    if debian.is_empty() && backports.is_empty() && !rustup {
        println!("All host tools are present; nothing to install.");
        return Ok(());
    }
    if !host::is_root() {
        bail!(
            "installing packages needs root: run it as root, e.g. `sudo appliance doctor --install`"
        );
    }
    if !backports.is_empty() {
        let sources = read_apt_sources()?;
        if !mentions_backports(&sources) {
            let text = backports_source_text(&sources);
            let path = Path::new(BACKPORTS_SOURCE_FILE);
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("cannot create {}", dir.display()))?;
            }
            std::fs::write(path, &text)
                .with_context(|| format!("cannot write {}", path.display()))?;
            println!("Enabled {BACKPORTS} in {}", path.display());
        }
    }
    // A broken third-party source makes `apt-get update` fail even though the Debian lists
    // were refreshed, so only warn here and check for what we need below.
    if let Err(e) = run_visible(Command::new("apt-get").arg("update")) {
        eprintln!("warning: {e:#}; carrying on with the package lists apt has");
    }
    if !backports.is_empty() {
        let policy = host::run(Command::new("apt-cache").args(["policy", "qemu-system-x86"]))?;
        if !policy_has_backports(&String::from_utf8_lossy(&policy.stdout)) {
            bail!(
                "apt knows no qemu-system-x86 from {BACKPORTS} even after `apt-get update`; \
                 check that an apt source has `{BACKPORTS}` (e.g. {BACKPORTS_SOURCE_FILE}) \
                 and that the mirror is reachable"
            );
        }
    }
    if !debian.is_empty() {
        run_visible(apt_install().args(&debian))?;
    }
    if !backports.is_empty() {
        run_visible(apt_install().args(["-t", BACKPORTS]).args(&backports))?;
    }
    if checks.iter().any(|c| c.is_rustup() && c.needs_install()) {
        run_visible(Command::new("rustup").args(["target", "add", "aarch64-unknown-linux-gnu"]))?;
    }
    if checks
        .iter()
        .any(|c| c.what == BINFMT_AARCH64 && c.needs_install())
    {
        register_binfmt_aarch64()?;
    }
    let still_missing: Vec<String> = missing(&check_host())
        .iter()
        .map(|c| c.what.clone())
        .collect();
    if !still_missing.is_empty() {
        bail!(
            "still missing after apt-get install: {}",
            still_missing.join(", ")
        );
    }
    println!("All host tools are installed.");
    Ok(())
}

/// Registers qemu-user's aarch64 handler. Where systemd is not PID 1 (containers, CI runners)
/// nothing does this at boot, and binfmt_misc may not even be mounted.
fn register_binfmt_aarch64() -> Result<()> {
    let binfmt = Path::new("/proc/sys/fs/binfmt_misc");
    if !binfmt.join("register").exists() {
        host::run(
            Command::new("mount")
                .args(["-t", "binfmt_misc", "binfmt_misc"])
                .arg(binfmt),
        )
        .context("mounting binfmt_misc (needed to run arm64 programs while building)")?;
    }
    if !Path::new(BINFMT_AARCH64).exists() {
        host::run(
            Command::new("/lib/systemd/systemd-binfmt").arg("/usr/lib/binfmt.d/qemu-aarch64.conf"),
        )
        .context("registering qemu-aarch64 with binfmt_misc")?;
    }
    Ok(())
}

fn apt_install() -> Command {
    let mut cmd = Command::new("apt-get");
    cmd.env("DEBIAN_FRONTEND", "noninteractive")
        .args(["install", "-y", "--no-install-recommends"]);
    cmd
}

/// Runs `cmd` with its output on the terminal (apt-get takes a while; show its progress).
fn run_visible(cmd: &mut Command) -> Result<()> {
    let shown = format!(
        "{} {}",
        cmd.get_program().to_string_lossy(),
        cmd.get_args()
            .map(|a| a.to_string_lossy())
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!("+ {shown}");
    let status = cmd
        .stdin(std::process::Stdio::null())
        .status()
        .with_context(|| format!("cannot start `{shown}`"))?;
    if !status.success() {
        bail!("`{shown}` failed ({status})");
    }
    Ok(())
}

/// Fails naming every tool needed for `purpose` ("build" or "tests") that is missing here.
pub fn require(purpose: &str) -> Result<()> {
    require_from(&check_host(), purpose)
}

/// [`require`] on a given list of checks.
pub fn require_from(checks: &[Check], purpose: &str) -> Result<()> {
    let lines: Vec<String> = missing(checks)
        .into_iter()
        .filter(|c| c.purpose == purpose)
        .map(|c| {
            let from = if c.backports {
                format!(" from {BACKPORTS}")
            } else {
                String::new()
            };
            let why = c.problem.as_deref().unwrap_or("not found");
            format!("  {} (package {}{from}): {why}", c.what, c.package)
        })
        .collect();
    if lines.is_empty() {
        return Ok(());
    }
    bail!(
        "host tools needed for {} are missing:\n{}\nrun `appliance doctor --install` as root (e.g. with sudo) to install them",
        match purpose {
            "build" => "the build",
            "tests" => "the tests",
            "arm64" => "building arm64 images on this machine",
            other => other,
        },
        lines.join("\n")
    )
}

/// /etc/apt/sources.list and /etc/apt/sources.list.d/*.list|*.sources, concatenated.
fn read_apt_sources() -> Result<String> {
    let mut paths = vec![std::path::PathBuf::from("/etc/apt/sources.list")];
    match std::fs::read_dir("/etc/apt/sources.list.d") {
        Ok(entries) => {
            let mut found: Vec<_> = entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.extension()
                        .is_some_and(|ext| ext == "list" || ext == "sources")
                })
                .collect();
            // apt reads them in name order; so do we, so "the first bookworm entry" matches.
            found.sort();
            paths.extend(found);
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).context("cannot list /etc/apt/sources.list.d"),
    }
    let mut text = String::new();
    for path in paths {
        match std::fs::read_to_string(&path) {
            Ok(t) => {
                // Blank lines between files so deb822 stanzas never run into each other.
                text.push_str(&t);
                text.push_str("\n\n");
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
    }
    Ok(text)
}

/// Whether any uncommented line of the apt sources mentions bookworm-backports.
fn mentions_backports(sources: &str) -> bool {
    sources
        .lines()
        .map(str::trim_start)
        .any(|l| !l.starts_with('#') && l.contains(BACKPORTS))
}

/// Whether `apt-cache policy` output lists a version from bookworm-backports.
fn policy_has_backports(policy: &str) -> bool {
    policy.split_whitespace().any(|w| {
        w == BACKPORTS
            || w.strip_prefix(BACKPORTS)
                .is_some_and(|rest| rest.starts_with('/'))
    })
}

/// The deb822 source for bookworm-backports, on the mirror of the first `bookworm` entry of
/// `existing_sources` (one-line or deb822 format), or deb.debian.org if there is none.
pub fn backports_source_text(existing_sources: &str) -> String {
    let mirror = bookworm_mirror(existing_sources).unwrap_or_else(|| DEFAULT_MIRROR.to_string());
    format!(
        "# Written by `appliance doctor --install`: QEMU for the boot tests comes from {BACKPORTS}.\n\
         Types: deb\n\
         URIs: {mirror}\n\
         Suites: {BACKPORTS}\n\
         Components: main\n\
         Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"
    )
}

/// The URI of the first enabled `deb` entry for the suite `bookworm` (not -security, whose
/// mirror has no backports).
fn bookworm_mirror(sources: &str) -> Option<String> {
    let mut stanza: Vec<(String, String)> = Vec::new();
    for line in sources.lines().chain(std::iter::once("")) {
        let trimmed = line.trim();
        if trimmed.is_empty() {
            if let Some(uri) = stanza_mirror(&stanza) {
                return Some(uri);
            }
            stanza.clear();
        } else if trimmed.starts_with('#') {
            continue;
        } else if let Some(rest) = trimmed
            .strip_prefix("deb")
            .filter(|r| r.starts_with([' ', '\t']))
        {
            if let Some(uri) = one_line_mirror(rest) {
                return Some(uri);
            }
        } else if line.starts_with([' ', '\t']) {
            // deb822 continuation line.
            if let Some((_, value)) = stanza.last_mut() {
                value.push(' ');
                value.push_str(trimmed);
            }
        } else if let Some((key, value)) = trimmed.split_once(':') {
            stanza.push((key.trim().to_ascii_lowercase(), value.trim().to_string()));
        }
    }
    None
}

/// The URI of a one-line entry (the part after `deb`) if its suite is bookworm.
fn one_line_mirror(rest: &str) -> Option<String> {
    let rest = rest.trim_start();
    // Skip "[ option=value ... ]", which may contain spaces.
    let rest = match rest.strip_prefix('[') {
        Some(r) => r.split_once(']')?.1,
        None => rest,
    };
    let mut words = rest.split_whitespace();
    let uri = words.next()?;
    let suite = words.next()?;
    (suite == "bookworm" && usable_mirror(uri)).then(|| uri.to_string())
}

/// The first URI of a deb822 stanza if it is enabled, of type deb, and has suite bookworm.
fn stanza_mirror(stanza: &[(String, String)]) -> Option<String> {
    let field = |name: &str| {
        stanza
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let enabled = field("enabled").is_none_or(|v| !v.eq_ignore_ascii_case("no"));
    let is_deb = field("types").is_some_and(|v| v.split_whitespace().any(|t| t == "deb"));
    let bookworm = field("suites").is_some_and(|v| v.split_whitespace().any(|s| s == "bookworm"));
    if !(enabled && is_deb && bookworm) {
        return None;
    }
    field("uris")?
        .split_whitespace()
        .find(|u| usable_mirror(u))
        .map(str::to_string)
}

/// A CD-ROM has no backports.
fn usable_mirror(uri: &str) -> bool {
    !uri.starts_with("cdrom:")
}

#[cfg(test)]
mod tests;
