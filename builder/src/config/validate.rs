//! Checks of the configuration as it is read: every value that reaches apt, the kernel command
//! line, a file name or a size is checked here, so a mistake (or a hostile value) stops the
//! build before anything runs, with the key, the value and the fix in the message.

use std::path::Path;

use anyhow::{bail, Context, Result};

use super::{normalize_fingerprint, Arch, Board, Config, Size};

impl Config {
    pub(super) fn validate(&self, origin: &str) -> Result<()> {
        // The [firstboot] answers are checked here, with the machine's own rules, so that a
        // mistake stops the build instead of showing up at the machine's console.
        if !self.firstboot.is_empty() {
            let text = toml::to_string(&self.firstboot).context("serialising [firstboot]")?;
            let where_ = format!("{origin}: [firstboot]");
            appliance_spec::seed::Seed::parse(&text, &where_)?
                .validate(&where_, Path::new("/usr/share/zoneinfo"))?;
        }
        let fail = |key: &str, value: &dyn std::fmt::Debug, fix: &str| -> Result<()> {
            bail!("{origin}: {key} = {value:?}: {fix}")
        };
        if !file_name_ok(&self.image.name) {
            fail(
                "[image] name",
                &self.image.name,
                "it names the output files: use 1 to 64 letters, digits, '-', '_' or '.', not starting with '-' or '.'",
            )?;
        }
        if self.image.formats.is_empty() {
            bail!("{origin}: [image] formats is empty; list at least \"raw\"");
        }
        if !name_ok(&self.debian.suite) {
            fail(
                "[debian] suite",
                &self.debian.suite,
                "use a suite name such as \"bookworm\" (lower-case letters, digits, '-', '.')",
            )?;
        }
        if let Some(t) = &self.debian.snapshot {
            let ok = t.len() == 16
                && t.chars().enumerate().all(|(i, c)| match i {
                    8 => c == 'T',
                    15 => c == 'Z',
                    _ => c.is_ascii_digit(),
                });
            if !ok {
                fail(
                    "[debian] snapshot",
                    t,
                    "write a time of snapshot.debian.org as YYYYMMDDTHHMMSSZ, e.g. \"20261101T000000Z\"",
                )?;
            }
        }
        for (key, url) in [
            ("[debian] mirror", &self.debian.mirror),
            ("[debian] security_mirror", &self.debian.security_mirror),
        ] {
            if !url_ok(url) {
                fail(key, url, "use a plain http(s):// or file:// URL, with no options in brackets and no spaces")?;
            }
        }
        for c in &self.debian.components {
            if !name_ok(c) {
                fail(
                    "[debian] components",
                    c,
                    "use component names such as \"main\"",
                )?;
            }
        }
        let packages = self
            .packages
            .include
            .iter()
            .map(|p| ("[packages] include", p))
            .chain(self.jitsi.packages.iter().map(|p| ("[jitsi] packages", p)))
            .chain(
                self.repositories
                    .iter()
                    .flat_map(|r| r.packages.iter().map(|p| ("[[repositories]] packages", p))),
            );
        for (key, p) in packages {
            if !package_ok(p) {
                fail(
                    key,
                    p,
                    "use a Debian package name (optionally pkg=version or pkg/suite)",
                )?;
            }
        }
        if !name_ok(&self.packages.kernel) && !self.packages.kernel.is_empty() {
            fail(
                "[packages] kernel",
                &self.packages.kernel,
                "use a Debian package name",
            )?;
        }
        for f in &self.features.enabled {
            if !name_ok(f) {
                fail(
                    "[features] enabled",
                    f,
                    "use the name of a folder of [features] dir (lower-case letters, digits, '-')",
                )?;
            }
        }
        for arg in &self.boot.cmdline {
            let bad = arg.is_empty()
                || arg
                    .chars()
                    .any(|c| c.is_control() || c.is_whitespace() || c == '\'');
            if bad {
                fail(
                    "[boot] cmdline",
                    arg,
                    "each entry is one kernel argument: no spaces, quotes, newlines or control characters",
                )?;
            }
        }
        if self.root.filesystem != "squashfs" {
            fail(
                "[root] filesystem",
                &self.root.filesystem,
                "only \"squashfs\" is supported",
            )?;
        }
        if !["zstd", "xz", "gzip", "lz4"].contains(&self.root.compression.as_str()) {
            fail(
                "[root] compression",
                &self.root.compression,
                "use zstd, xz, gzip or lz4",
            )?;
        }
        if let Some(level) = self.root.compression_level {
            let max = match self.root.compression.as_str() {
                "zstd" => 22,
                "xz" | "gzip" => 9,
                _ => 0,
            };
            if !(1..=max).contains(&level) {
                fail(
                    "[root] compression_level",
                    &level,
                    "zstd takes 1 to 22, gzip and xz 1 to 9, lz4 none (leave it out)",
                )?;
            }
        }
        let b = self.root.block_size.0;
        if !(4096..=1 << 20).contains(&b) || !b.is_power_of_two() {
            fail(
                "[root] block_size",
                &self.root.block_size.to_string(),
                "use a power of two from \"4K\" to \"1M\"",
            )?;
        }
        if self.image.board == Board::RaspberryPi && self.image.arch != Arch::Arm64 {
            bail!(
                "{origin}: [image] board = \"raspberry-pi\" needs arch = \"arm64\" (Raspberry Pi 4; Debian 12's kernel does not support the Pi 5)"
            );
        }
        if !self.boot.uefi && !self.bios() {
            bail!("{origin}: [boot] uefi and bios are both false; enable at least one");
        }
        if self.bios() && self.image.arch != Arch::X86_64 {
            bail!(
                "{origin}: [boot] bios = true needs arch = \"x86_64\"; set bios = false for {}",
                self.image.arch
            );
        }
        for (key, size, min) in [
            ("[boot] esp_size", self.boot.esp_size, 64u64 << 20),
            ("[root] slot_size", self.root.slot_size, 64 << 20),
            ("[data] size", self.data.size, 32 << 20),
        ] {
            check_size(origin, key, size, min)?;
        }
        // The label becomes part of systemd unit names and the ext4 label (16 bytes at most).
        let label_ok = !self.data.label.is_empty()
            && self.data.label.len() <= 16
            && self
                .data
                .label
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if !label_ok {
            fail(
                "[data] label",
                &self.data.label,
                "use 1 to 16 lower-case letters, digits or '_'",
            )?;
        }
        self.validate_repositories(origin)?;
        if let Some(url) = &self.updates.url {
            if !url.starts_with("https://") || !url_ok(url) {
                fail(
                    "[updates] url",
                    url,
                    "use an https:// URL (the channel's index.json is fetched from there)",
                )?;
            }
            if self.updates.trusted_keys.is_empty() {
                bail!("{origin}: [updates] url is set but trusted_keys is empty: machines could not check what they fetch; add the .pub of your signing key");
            }
        }
        if let Some(w) = &self.updates.window {
            if appliance_spec::validate::time_window(w).is_err() {
                fail("[updates] window", w, "write the hours a machine may reboot into an update as \"HH:MM-HH:MM\", e.g. \"02:00-05:00\"")?;
            }
        }
        if self.jitsi.enabled && self.jitsi.repository.is_none() && self.jitsi.debs.is_none() {
            bail!("{origin}: [jitsi] enabled = true needs `repository` or `debs` (a directory of .deb files)");
        }
        Ok(())
    }

    fn validate_repositories(&self, origin: &str) -> Result<()> {
        let mut names = std::collections::BTreeSet::new();
        let jitsi_repo = self
            .jitsi
            .repository
            .iter()
            .map(|r| ("[jitsi.repository]", r));
        let extra = self.repositories.iter().map(|r| ("[[repositories]]", r));
        for (section, repo) in extra.chain(jitsi_repo) {
            if !name_ok(&repo.name) {
                bail!(
                    "{origin}: {section} name = {:?}: it names files: use lower-case letters, digits and '-'",
                    repo.name
                );
            }
            if !names.insert(repo.name.clone()) {
                bail!(
                    "{origin}: two repositories are named {:?}; names must differ",
                    repo.name
                );
            }
            if !url_ok(&repo.uri) {
                bail!(
                    "{origin}: {section} {:?} uri = {:?}: use a plain http(s):// URL, with no options in brackets and no spaces",
                    repo.name,
                    repo.uri
                );
            }
            let suite_ok = !repo.suite.is_empty()
                && repo
                    .suite
                    .split('/')
                    .all(|part| part.is_empty() || (part != ".." && name_ok(part)));
            if !suite_ok || repo.suite.starts_with('/') {
                bail!(
                    "{origin}: {section} {:?} suite = {:?}: use a suite name such as \"bookworm\" or a flat path such as \"stable/\"",
                    repo.name,
                    repo.suite
                );
            }
            if repo.key.is_none() == repo.key_url.is_none() {
                bail!(
                    "{origin}: {section} {:?} needs exactly one of `key` (a file) or `key_url`",
                    repo.name
                );
            }
            normalize_fingerprint(&repo.fingerprint).with_context(|| {
                format!("{origin}: {section} {:?}: bad `fingerprint`", repo.name)
            })?;
            if !repo.suite.ends_with('/') && repo.components.is_empty() {
                bail!(
                    "{origin}: {section} {:?} has suite {:?} but no components; add components = [\"main\"] or end a flat suite with '/'",
                    repo.name, repo.suite
                );
            }
        }
        Ok(())
    }
}

fn check_size(origin: &str, key: &str, size: Size, min: u64) -> Result<()> {
    if size.0 < min {
        bail!(
            "{origin}: {key} = {size} is too small; use at least \"{}M\"",
            min >> 20
        );
    }
    if !size.0.is_multiple_of(1 << 20) {
        bail!("{origin}: {key} = {size}: partitions are whole MiB; write it with M or G, e.g. \"256M\"");
    }
    Ok(())
}

/// Names that become parts of file names and apt arguments: `[a-z0-9][a-z0-9.+_-]*`.
fn name_ok(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || ".+_-".contains(c))
}

/// A file name that cannot be mistaken for an option or a relative path.
fn file_name_ok(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && !s.starts_with(['-', '.'])
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

/// A package as mmdebstrap's `--include` takes it: a name, optionally `=version` or `/suite`.
/// No commas or spaces, which would add more packages or options.
fn package_ok(s: &str) -> bool {
    let (name, rest) = match s.find(['=', '/']) {
        Some(i) => (&s[..i], &s[i + 1..]),
        None => (s, ""),
    };
    name_ok(name)
        && rest
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ".+~:-".contains(c))
}

/// A mirror URL that apt takes as one word: no `[options]`, no spaces or control characters.
fn url_ok(s: &str) -> bool {
    ["http://", "https://", "file://", "copy://"]
        .iter()
        .any(|scheme| s.len() > scheme.len() && s.starts_with(scheme))
        && !s
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || "[]\"'".contains(c))
}

#[cfg(test)]
mod tests {
    use super::super::Config;
    use std::path::PathBuf;

    fn parse(overrides: &[&str]) -> anyhow::Result<Config> {
        let o: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
        Config::from_str_with(
            "[image]\nname = \"demo\"\n",
            "appliance.toml",
            PathBuf::from("."),
            &o,
        )
    }

    #[test]
    fn a_snapshot_points_apt_at_the_snapshot_archive() {
        let c = parse(&["debian.snapshot=\"20261101T000000Z\""]).unwrap();
        assert_eq!(
            c.debian.effective_mirror(),
            "http://snapshot.debian.org/archive/debian/20261101T000000Z/"
        );
        assert_eq!(
            c.debian.effective_security_mirror(),
            "http://snapshot.debian.org/archive/debian-security/20261101T000000Z/"
        );
        let sources = crate::packages::sources(&c, &[]);
        assert_eq!(
            sources[0],
            "deb http://snapshot.debian.org/archive/debian/20261101T000000Z/ bookworm main"
        );
        assert!(sources[2].contains("debian-security/20261101T000000Z/ bookworm-security"));
        assert_eq!(
            parse(&[]).unwrap().debian.effective_mirror(),
            "http://deb.debian.org/debian"
        );
    }

    /// Each bad value is refused when the configuration is read, and the message names the key
    /// and says what to write instead.
    #[test]
    fn bad_values_are_refused_with_key_and_fix() {
        // One extra repository with one field replaced by `field` (`key = value`).
        let repo = |field: &str| {
            let mut fields = vec![
                "name = \"r\"",
                "uri = \"https://r.example\"",
                "suite = \"stable/\"",
                "key = \"k\"",
                "fingerprint = \"FFD65A0DA2BEBDEB73D44C8BB4D2D216F1FD7806\"",
            ];
            let key = field.split(' ').next().unwrap_or_default();
            fields.retain(|f| !f.starts_with(&format!("{key} ")));
            fields.push(field);
            vec![format!("repositories=[{{{}}}]", fields.join(", "))]
        };
        let cases: Vec<(Vec<String>, &str, &str)> = vec![
            (
                vec!["debian.mirror=\"[trusted=yes] http://evil.example/debian\"".into()],
                "[debian] mirror",
                "plain http",
            ),
            (
                vec!["debian.mirror=\"http://x.example/debian bookworm main\"".into()],
                "[debian] mirror",
                "no spaces",
            ),
            (
                vec!["debian.mirror=\"ftp://x.example\"".into()],
                "[debian] mirror",
                "plain http",
            ),
            (
                vec!["debian.security_mirror=\"http://a b\"".into()],
                "[debian] security_mirror",
                "no spaces",
            ),
            (
                vec!["boot.cmdline=[\"quiet\\ninitrd /evil\"]".into()],
                "[boot] cmdline",
                "newlines",
            ),
            (
                vec!["boot.cmdline=[\"a b\"]".into()],
                "[boot] cmdline",
                "one kernel argument",
            ),
            (
                vec!["debian.suite=\"../../x\"".into()],
                "[debian] suite",
                "suite name",
            ),
            (
                vec!["image.name=\"..\"".into()],
                "[image] name",
                "not starting with",
            ),
            (
                vec!["image.name=\"-rf\"".into()],
                "[image] name",
                "not starting with",
            ),
            (
                vec!["image.name=\"a/b\"".into()],
                "[image] name",
                "letters, digits",
            ),
            (
                vec!["root.slot_size=0".into()],
                "[root] slot_size",
                "too small",
            ),
            (
                vec!["boot.esp_size=268435457".into()],
                "[boot] esp_size",
                "whole MiB",
            ),
            (
                vec!["data.size=\"100000000\"".into()],
                "[data] size",
                "whole MiB",
            ),
            (
                vec!["packages.include=[\"nginx,evil\"]".into()],
                "[packages] include",
                "Debian package name",
            ),
            (
                vec!["packages.include=[\"--hook-dir=/tmp\"]".into()],
                "[packages] include",
                "Debian package name",
            ),
            (
                vec!["features.enabled=[\"../etc\"]".into()],
                "[features] enabled",
                "folder",
            ),
            (
                repo("name = \"../../x\""),
                "name = \"../../x\"",
                "names files",
            ),
            (
                repo("uri = \"[trusted=yes] https://r\""),
                "uri",
                "plain http",
            ),
            (repo("suite = \"../../../x/\""), "suite", "flat path"),
        ];
        for (overrides, key, fix) in &cases {
            let o: Vec<&str> = overrides.iter().map(String::as_str).collect();
            let err = match parse(&o) {
                Ok(_) => panic!("{overrides:?} was accepted"),
                Err(e) => format!("{e:#}"),
            };
            assert!(
                err.contains(key) && err.contains(fix),
                "{overrides:?}: {err:?} should name {key:?} and say {fix:?}"
            );
        }
        // And the ordinary values pass.
        parse(&[
            "debian.mirror=\"http://deb.debian.org/debian\"",
            "boot.cmdline=[\"quiet\", \"systemd.show_status=1\"]",
            "packages.include=[\"htop\", \"nginx-light=1.22.1-9\", \"curl/bookworm-backports\"]",
            "image.name=\"meet-1.0\"",
        ])
        .unwrap();
    }
}
