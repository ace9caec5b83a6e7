//! The readiness line: one line the booted appliance prints on its console when start-up is
//! over (`APPLIANCE-READY key=value ...`, printed by `/usr/lib/appliance/boot-report`), and the
//! checks every appliance boot must pass. People read it at the console; `appliance test` and
//! the boot tests parse it.

use anyhow::{bail, Result};

/// The word that starts the report line.
pub const READY_MARKER: &str = "APPLIANCE-READY";

/// Parsed `APPLIANCE-READY key=value ...` line. Key order is kept; unknown keys are kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootReport {
    pairs: Vec<(String, String)>,
}

/// What a particular boot is expected to report beyond the fixed foundation properties.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expect {
    /// Which boot of this disk this is (1 = first boot).
    pub boot: u64,
    /// How many times first-boot work has run; 1 on the first and every later boot.
    pub firstboot_runs: u64,
    /// The data partition must be larger than this, proving it was grown.
    pub min_data_part_bytes: u64,
}

impl Default for Expect {
    fn default() -> Expect {
        Expect {
            boot: 1,
            firstboot_runs: 1,
            min_data_part_bytes: 0,
        }
    }
}

impl BootReport {
    /// Parses a console line containing the marker; text before the marker (e.g. a kernel
    /// message prefix or terminal escapes) is ignored.
    pub fn parse(line: &str) -> Result<BootReport> {
        let Some(pos) = line.find(READY_MARKER) else {
            bail!("not a readiness report (no {READY_MARKER}): {line:?}");
        };
        let rest = &line[pos + READY_MARKER.len()..];
        if !rest.is_empty() && !rest.starts_with(char::is_whitespace) {
            bail!("malformed readiness report (text glued to {READY_MARKER}): {line:?}");
        }
        let mut pairs: Vec<(String, String)> = Vec::new();
        for token in rest.split_whitespace() {
            let Some((key, value)) = token.split_once('=') else {
                bail!("malformed readiness report: {token:?} is not key=value in {line:?}");
            };
            if key.is_empty() {
                bail!("malformed readiness report: empty key in {token:?}");
            }
            if pairs.iter().any(|(k, _)| k == key) {
                bail!("malformed readiness report: key {key:?} appears twice in {line:?}");
            }
            pairs.push((key.to_string(), value.to_string()));
        }
        if pairs.is_empty() {
            bail!("readiness report has no key=value pairs: {line:?}");
        }
        Ok(BootReport { pairs })
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The value as an unsigned integer; `None` if missing or not a number.
    pub fn get_u64(&self, key: &str) -> Option<u64> {
        self.get(key)?.parse().ok()
    }

    /// The value as a float (e.g. `uptime`); `None` if missing or not a number.
    pub fn get_f64(&self, key: &str) -> Option<f64> {
        self.get(key)?.parse().ok()
    }

    /// All pairs in the order printed.
    pub fn pairs(&self) -> impl Iterator<Item = (&str, &str)> {
        self.pairs.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// Every violated foundation property, as a sentence; empty when the boot is healthy.
    pub fn check_foundation(&self, expect: &Expect) -> Vec<String> {
        let mut problems = Vec::new();
        let mut equals = |key: &str, want: &str, meaning: &str| match self.get(key) {
            None => problems.push(format!("{key} is missing from the report")),
            Some(v) if v != want => {
                problems.push(format!("{key}={v}, expected {want}: {meaning}"));
            }
            Some(_) => {}
        };
        equals(
            "root_source",
            "/dev/mapper/root",
            "the root filesystem is not the dm-verity device",
        );
        equals(
            "root_fstype",
            "squashfs",
            "the root filesystem is not squashfs",
        );
        equals("verity", "verified", "dm-verity is not verifying the root");
        for key in ["var_log", "tmp", "var_tmp", "var_cache"] {
            equals(key, "tmpfs", "it must be a tmpfs on a read-only appliance");
        }
        equals(
            "journal_persistent",
            "no",
            "the journal must stay in memory",
        );
        equals("apparmor", "Y", "AppArmor is not enabled");
        equals("data_fstype", "ext4", "/data is not ext4");

        self.check_option(
            &mut problems,
            "root_opts",
            "ro",
            "the root is not mounted read-only",
        );
        self.check_option(
            &mut problems,
            "data_opts",
            "rw",
            "/data is not mounted read-write",
        );

        match self.get_u64("failed_units") {
            None => problems.push(self.missing_or_nan("failed_units")),
            Some(0) => {}
            Some(n) => problems.push(format!(
                "{n} systemd unit(s) failed: {}",
                self.get("failed").unwrap_or("(list not reported)")
            )),
        }
        match self.get_u64("data_part_bytes") {
            None => problems.push(self.missing_or_nan("data_part_bytes")),
            Some(n) if n <= expect.min_data_part_bytes => problems.push(format!(
                "data_part_bytes={n}, expected more than {}: the data partition was not grown",
                expect.min_data_part_bytes
            )),
            Some(_) => {}
        }
        // ext4 keeps a few percent for itself; a file system that was not grown along with its
        // partition would be far below 90 %.
        match (self.get_u64("data_fs_bytes"), self.get_u64("data_part_bytes")) {
            (Some(fs), Some(part)) if fs * 10 < part * 9 => problems.push(format!(
                "data_fs_bytes={fs} is less than 90 % of data_part_bytes={part}: the file system was not grown with its partition"
            )),
            (None, _) => problems.push(self.missing_or_nan("data_fs_bytes")),
            _ => {}
        }
        match self.get_u64("firstboot_runs") {
            None => problems.push(self.missing_or_nan("firstboot_runs")),
            Some(n) if n != expect.firstboot_runs => problems.push(format!(
                "firstboot_runs={n}, expected {}: first-boot work must run exactly once",
                expect.firstboot_runs
            )),
            Some(_) => {}
        }
        match self.get_u64("boot") {
            None => problems.push(self.missing_or_nan("boot")),
            Some(n) if n != expect.boot => problems.push(format!(
                "boot={n}, expected {}: the boot counter on /data is wrong",
                expect.boot
            )),
            Some(_) => {}
        }
        problems
    }

    /// Checks that a comma-separated mount option list contains `option` as a whole option
    /// (so `errors=remount-ro` does not count as `ro`).
    fn check_option(&self, problems: &mut Vec<String>, key: &str, option: &str, meaning: &str) {
        match self.get(key) {
            None => problems.push(format!("{key} is missing from the report")),
            Some(v) if !v.split(',').any(|o| o == option) => {
                problems.push(format!("{key}={v} lacks {option}: {meaning}"));
            }
            Some(_) => {}
        }
    }

    fn missing_or_nan(&self, key: &str) -> String {
        match self.get(key) {
            None => format!("{key} is missing from the report"),
            Some(v) => format!("{key}={v} is not a number"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "APPLIANCE-READY boot=2 failed_units=0 failed=none \
        root_source=/dev/mapper/root root_fstype=squashfs root_opts=ro verity=verified \
        var_log=tmpfs tmp=tmpfs var_tmp=tmpfs var_cache=tmpfs journal_persistent=no apparmor=Y \
        data_fstype=ext4 data_opts=rw data_part_bytes=4293918720 data_fs_bytes=4160000000 \
        firstboot_runs=1 uptime=23.41";

    fn expect() -> Expect {
        Expect {
            boot: 2,
            firstboot_runs: 1,
            min_data_part_bytes: 1 << 30,
        }
    }

    /// GOOD with `key`'s value replaced.
    fn with(key: &str, value: &str) -> BootReport {
        let line: Vec<String> = GOOD
            .split_whitespace()
            .map(|t| match t.split_once('=') {
                Some((k, _)) if k == key => format!("{k}={value}"),
                _ => t.to_string(),
            })
            .collect();
        BootReport::parse(&line.join(" ")).unwrap()
    }

    #[test]
    fn parses_and_keeps_unknown_keys() {
        let r = BootReport::parse(&format!("\x1b[0m[  OK  ] {GOOD} extra=1")).unwrap();
        assert_eq!(r.get("root_source"), Some("/dev/mapper/root"));
        assert_eq!(r.get_u64("data_part_bytes"), Some(4293918720));
        assert_eq!(r.get_f64("uptime"), Some(23.41));
        assert_eq!(r.get("extra"), Some("1"));
        assert_eq!(r.get("nope"), None);
        assert_eq!(r.get_u64("root_fstype"), None);
        assert_eq!(r.pairs().next(), Some(("boot", "2")));
        assert_eq!(r.pairs().count(), 20);
    }

    #[test]
    fn parse_rejects_malformed_lines() {
        for bad in [
            "nothing here",
            "APPLIANCE-READY",
            "APPLIANCE-READY boot=1 oops",
            "APPLIANCE-READY =1",
            "APPLIANCE-READY boot=1 boot=2",
            "APPLIANCE-READYboot=1",
        ] {
            assert!(BootReport::parse(bad).is_err(), "{bad:?} should not parse");
        }
        // An empty value is still a value.
        assert_eq!(
            BootReport::parse("APPLIANCE-READY failed=")
                .unwrap()
                .get("failed"),
            Some("")
        );
    }

    #[test]
    fn healthy_report_passes() {
        let r = BootReport::parse(GOOD).unwrap();
        assert_eq!(r.check_foundation(&expect()), Vec::<String>::new());
    }

    #[test]
    fn each_broken_value_is_reported() {
        let cases: &[(&str, &str, &str)] = &[
            ("failed_units", "2", "2 systemd unit(s) failed: none"),
            ("failed_units", "x", "failed_units=x is not a number"),
            (
                "root_source",
                "/dev/vda3",
                "root_source=/dev/vda3, expected /dev/mapper/root",
            ),
            ("root_fstype", "ext4", "root_fstype=ext4, expected squashfs"),
            (
                "root_opts",
                "rw,errors=remount-ro",
                "root_opts=rw,errors=remount-ro lacks ro",
            ),
            ("verity", "none", "verity=none, expected verified"),
            ("var_log", "ext4", "var_log=ext4, expected tmpfs"),
            ("tmp", "squashfs", "tmp=squashfs, expected tmpfs"),
            ("var_tmp", "none", "var_tmp=none, expected tmpfs"),
            ("var_cache", "ext4", "var_cache=ext4, expected tmpfs"),
            (
                "data_fs_bytes",
                "268435456",
                "the file system was not grown with its partition",
            ),
            (
                "journal_persistent",
                "yes",
                "journal_persistent=yes, expected no",
            ),
            ("apparmor", "N", "apparmor=N, expected Y"),
            ("data_fstype", "vfat", "data_fstype=vfat, expected ext4"),
            ("data_opts", "ro,noexec", "data_opts=ro,noexec lacks rw"),
            (
                "data_part_bytes",
                "1048576",
                "the data partition was not grown",
            ),
            ("firstboot_runs", "2", "firstboot_runs=2, expected 1"),
            ("firstboot_runs", "0", "firstboot_runs=0, expected 1"),
            ("boot", "1", "boot=1, expected 2"),
        ];
        for (key, value, message) in cases {
            let problems = with(key, value).check_foundation(&expect());
            assert_eq!(problems.len(), 1, "{key}={value}: {problems:?}");
            assert!(
                problems[0].contains(message),
                "{key}={value}: {:?} should contain {message:?}",
                problems[0]
            );
        }
    }

    #[test]
    fn failed_units_are_listed() {
        let line = GOOD
            .replace("failed_units=0", "failed_units=2")
            .replace("failed=none", "failed=foo.service,bar.mount");
        let problems = BootReport::parse(&line)
            .unwrap()
            .check_foundation(&expect());
        assert_eq!(
            problems,
            ["2 systemd unit(s) failed: foo.service,bar.mount"]
        );
    }

    #[test]
    fn missing_keys_are_reported() {
        let r = BootReport::parse("APPLIANCE-READY uptime=1").unwrap();
        let problems = r.check_foundation(&Expect::default());
        for key in [
            "failed_units",
            "root_source",
            "root_opts",
            "data_opts",
            "data_part_bytes",
            "data_fs_bytes",
            "firstboot_runs",
            "boot",
        ] {
            assert!(
                problems.contains(&format!("{key} is missing from the report")),
                "{key}: {problems:?}"
            );
        }
        assert_eq!(problems.len(), 17, "{problems:?}");
    }
}
