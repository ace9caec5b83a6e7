//! The hardening checks of a booted, set-up appliance, run over SSH: AppArmor profiles loaded
//! and enforcing, the network services confined, no denials, only the documented ports open to
//! the network, the firewall's default drop, systemd's exposure scores; and Lynis' index as a
//! measurement.

use anyhow::{bail, Context, Result};

use crate::ssh::Ssh;

/// Profiles the image ships; all must be loaded in enforce mode.
pub const PROFILES: &[&str] = &[
    "nginx",
    "prosody",
    "turnserver",
    "appliance-admin",
    "dehydrated",
    "jicofo",
    "jitsi-videobridge",
];

/// Ports the firewall opens, and the only ones anything may listen on outside loopback:
/// SSH, HTTP (redirect, ACME), HTTPS, TURN over TLS; STUN/TURN and the videobridge's media.
pub const TCP_PORTS: &[u16] = &[22, 80, 443, 5349];
pub const UDP_PORTS: &[u16] = &[3478, 10000];
/// DHCP clients' sockets (networkd): they only take answers to the machine's own requests.
pub const UDP_CLIENT_PORTS: &[u16] = &[68, 546];

/// Processes that must run confined, by command name, with the profile each must be in.
pub const CONFINED: &[(&str, &str)] = &[
    ("nginx", "nginx"),
    ("lua5.4", "prosody"),
    ("turnserver", "turnserver"),
];

/// What one run of the checks found.
#[derive(Debug, Clone, Default)]
pub struct HardeningReport {
    pub checks: Vec<String>,
    /// (unit, exposure score) from `systemd-analyze security`.
    pub exposure: Vec<(String, f64)>,
}

pub fn check(ssh: &Ssh, jitsi: bool) -> Result<HardeningReport> {
    let mut r = HardeningReport::default();

    let status = ssh.sudo("aa-status")?;
    let enforce = section(&status, "profiles are in enforce mode");
    for p in PROFILES {
        if !enforce.iter().any(|l| l == p) {
            bail!("AppArmor profile {p} is not loaded in enforce mode:\n{status}");
        }
    }
    r.checks
        .push(format!("AppArmor: {} profiles enforcing", PROFILES.len()));
    r.checks.push(compiled_policy_is_used(ssh)?);

    let ps = ssh.sudo("ps -eo label=,comm=")?;
    let mut confined = CONFINED.to_vec();
    if jitsi {
        confined.push(("java", "jicofo|jitsi-videobridge"));
    }
    for (comm, profile) in &confined {
        let lines: Vec<&str> = ps
            .lines()
            .filter(|l| l.split_whitespace().last() == Some(comm))
            .collect();
        if lines.is_empty() {
            bail!("no {comm} process is running:\n{ps}");
        }
        for l in lines {
            let label = l.split_whitespace().next().unwrap_or("");
            if label == "unconfined" || !profile.split('|').any(|p| label.starts_with(p)) {
                bail!("{comm} runs as {label:?}, not confined by its profile {profile}");
            }
        }
    }
    r.checks
        .push("nginx, prosody and coturn run confined (ps -eZ)".into());

    let listening = ssh.sudo("ss -Hlntu")?;
    let problems = unexpected_listeners(&listening);
    if !problems.is_empty() {
        bail!(
            "sockets open to the network beyond the documented ports: {}\n{listening}",
            problems.join(", ")
        );
    }
    r.checks
        .push("every non-loopback listening socket is in the documented list".into());

    // coturn listens on the wildcard (turnserver.conf's listening-ip), so an address DHCP gives
    // after coturn started is served too.
    let missing = coturn_wildcard_missing(&listening);
    if !missing.is_empty() {
        bail!(
            "coturn does not listen on every address: no {}\n{listening}",
            missing.join(", ")
        );
    }
    r.checks
        .push("coturn listens on every address, IPv4 and IPv6 (3478/udp, 5349/tcp)".into());

    let ruleset = ssh.sudo("nft list ruleset")?;
    for chain in ["input", "forward"] {
        let has_drop = ruleset
            .lines()
            .any(|l| l.contains(&format!("hook {chain}")) && l.contains("policy drop"));
        if !has_drop {
            bail!("the {chain} chain does not drop by default:\n{ruleset}");
        }
    }
    r.checks
        .push("nftables: input and forward drop by default".into());

    // The test machines' processor (QEMU's `-cpu max`) offers virtualisation and AES, GHASH,
    // SHA-1 and SHA-512 instructions, and OVMF has EFI variables, so the kernel would load
    // these modules unless /etc/modprobe.d/appliance-boot.conf stops it.
    let modules = ssh.run_ok("cat /proc/modules")?;
    if let Some(m) = modules
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .find(|m| unwanted_module(m))
    {
        bail!(
            "the kernel module {m} is loaded: the appliance runs no virtual machines, encrypts \
             nothing in the kernel and keeps no crash records (/etc/modprobe.d/appliance-boot.conf)"
        );
    }
    r.checks
        .push("no KVM, kernel cipher or EFI crash-record module is loaded".into());

    // udev's coldplug at boot replays only the devices whose rules matter on the appliance
    // (/etc/systemd/system/systemd-udev-trigger.service.d/10-appliance.conf): the serial
    // console, the network card, the disk and the power button were handled, the 63 virtual
    // consoles were not.
    let coldplug = ssh.run_ok(COLDPLUG_PROBE)?;
    let missed = coldplug_problems(&coldplug);
    if !missed.is_empty() {
        bail!("udev's coldplug: {}\n{coldplug}", missed.join("; "));
    }
    r.checks.push(
        "udev's coldplug handled the serial console, network card, disk and power button, not the virtual consoles"
            .into(),
    );

    // Masked in the image: the kernel's debug and trace file systems expose its internals to
    // root, and nothing on the appliance reads them.
    let mounted = ssh.run_ok("findmnt -rn -o FSTYPE,TARGET -t debugfs,tracefs || true")?;
    if !mounted.trim().is_empty() {
        bail!("debugfs or tracefs is mounted:\n{mounted}");
    }
    r.checks.push("debugfs and tracefs are not mounted".into());

    let units = if jitsi {
        "nginx.service prosody.service coturn.service jicofo.service jitsi-videobridge2.service"
    } else {
        "nginx.service prosody.service coturn.service"
    };
    for unit in units.split_whitespace() {
        let out = ssh.sudo(&format!("systemd-analyze security --no-pager {unit}"))?;
        let score = out
            .lines()
            .find_map(|l| l.split("Overall exposure level for ").nth(1))
            .and_then(|rest| rest.split(':').nth(1))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<f64>().ok())
            .with_context(|| format!("no exposure score for {unit} in:\n{out}"))?;
        r.exposure.push((unit.to_string(), score));
    }

    Ok(r)
}

/// Kernel modules that must not be loaded on the appliance (`/etc/modprobe.d/appliance-boot.conf`).
fn unwanted_module(name: &str) -> bool {
    name.starts_with("kvm")
        || [
            "aesni_intel",
            "ghash_clmulni_intel",
            "sha1_ssse3",
            "sha512_ssse3",
            "efi_pstore",
        ]
        .contains(&name)
}

/// Lynis' findings after [`lynis_index`] ran: its warnings and suggestions (test id and text).
pub fn lynis_findings(ssh: &Ssh) -> Result<Vec<String>> {
    let report = ssh.sudo("grep -E '^(warning|suggestion)\\[\\]=' /run/lynis-report.dat")?;
    Ok(report.lines().map(str::to_string).collect())
}

/// Lynis' hardening index (0-100) of the running machine; its report and log go to RAM
/// (/run). Under TCG this takes many minutes, so it is a measurement (`examples/audit.rs`), not
/// part of the tests.
pub fn lynis_index(ssh: &Ssh) -> Result<u32> {
    let lynis = ssh
        .sudo(
            "sh -c 'lynis audit system --quick --no-colors --logfile /run/lynis.log \
         --report-file /run/lynis-report.dat >/dev/null 2>&1; \
         grep ^hardening_index= /run/lynis-report.dat'",
        )
        .context("running Lynis")?;
    lynis
        .trim()
        .strip_prefix("hardening_index=")
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("Lynis ran but reported no hardening index: {lynis}"))
}

/// Lynis' log of the run of [`lynis_index`].
pub fn lynis_log(ssh: &Ssh) -> Result<String> {
    ssh.sudo("cat /run/lynis.log")
}

/// The Lynis tests that scored less than their maximum, as `TEST-ID got/max`, from its log
/// (each "assigned partial number of hardening points (G of M)" line paired with the test
/// performed before it): what the index lost, and where.
pub fn lynis_points_lost(log: &str) -> Vec<String> {
    let mut test = "?";
    let mut lost = Vec::new();
    for line in log.lines() {
        if let Some((_, rest)) = line.split_once("Performing test ID ") {
            test = rest.split_whitespace().next().unwrap_or("?");
        } else if let Some((_, rest)) =
            line.split_once("assigned partial number of hardening points (")
        {
            if let Some((got, rest)) = rest.split_once(" of ") {
                let max = rest.split(')').next().unwrap_or("?");
                lost.push(format!("{test} {got}/{max}"));
            }
        }
    }
    lost
}

/// After the smoke tests: the kernel logged no AppArmor denial.
pub fn no_denials(ssh: &Ssh) -> Result<()> {
    let denied = ssh.sudo("sh -c 'journalctl -k -b --no-pager | grep apparmor=.DENIED || true'")?;
    if !denied.trim().is_empty() {
        bail!("AppArmor denied something during the tests:\n{denied}");
    }
    Ok(())
}

/// Where the image keeps its compiled AppArmor policy (overlays/hardening/customize.sh).
const COMPILED_POLICY: &str = "/usr/lib/appliance/apparmor/cache/";

/// The policy compiled into the image matches the running kernel's AppArmor features, so
/// boots load it instead of compiling every profile. A miss means the kernel reports other
/// features than `usr/lib/appliance/apparmor/kernel-features`: the error shows the kernel's.
fn compiled_policy_is_used(ssh: &Ssh) -> Result<String> {
    let out = ssh.sudo(
        "sh -c 'apparmor_parser --skip-kernel-load --show-cache --replace /etc/apparmor.d/usr.sbin.nginx 2>&1'",
    )?;
    let hit = out
        .lines()
        .find(|l| l.starts_with("Cache hit: ") && l.contains(COMPILED_POLICY));
    match hit {
        Some(line) => Ok(format!(
            "AppArmor: the policy compiled into the image is used ({line})"
        )),
        None => {
            let features = ssh
                .sudo("sh -c 'cat /var/cache/apparmor/*/.features'")
                .unwrap_or_default();
            bail!(
                "AppArmor does not use the policy compiled into the image, so every boot compiles \
                 it:\n{out}\nThe running kernel's features (put them in \
                 overlays/hardening/files/usr/lib/appliance/apparmor/kernel-features):\n{features}"
            )
        }
    }
}

/// The lines under an aa-status heading such as "5 profiles are in enforce mode.".
fn section(status: &str, heading: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut inside = false;
    for line in status.lines() {
        if line.contains(heading) {
            inside = true;
            continue;
        }
        if inside {
            if line.starts_with(char::is_whitespace) && !line.trim().is_empty() {
                out.push(line.trim().to_string());
            } else {
                break;
            }
        }
    }
    out
}

/// Asks udev which devices its coldplug handled: `<sysfs path> <1 if handled, 0 if not>` per
/// line, then the number of devices tagged `power-switch` (logind powers off on their keys).
pub const COLDPLUG_PROBE: &str = "for d in /sys/class/tty/ttyS0 /sys/class/tty/tty9 /sys/class/net/en* /sys/class/block/vda; do \
     printf '%s %s\\n' \"$d\" \"$(udevadm info -q property \"$d\" | grep -c '^USEC_INITIALIZED=')\"; done; \
     printf 'power-switch %s\\n' \"$(udevadm info --export-db | grep -c '^E: TAGS=.*:power-switch:')\"";

/// What is wrong in [`COLDPLUG_PROBE`]'s answer: a device the appliance needs that udev did
/// not handle, or a virtual console it did.
pub fn coldplug_problems(probe: &str) -> Vec<String> {
    let mut problems = Vec::new();
    let mut seen_net = false;
    let mut power = 0;
    for line in probe.lines() {
        let mut words = line.split_whitespace();
        let (Some(what), Some(n)) = (words.next(), words.next()) else {
            continue;
        };
        let n: u32 = n.parse().unwrap_or(0);
        if what == "power-switch" {
            power = n;
        } else if what.ends_with("/tty9") {
            if n != 0 {
                problems.push(format!(
                    "{what} was handled (the virtual consoles are left alone)"
                ));
            }
        } else {
            seen_net |= what.starts_with("/sys/class/net/en");
            if n == 0 {
                problems.push(format!("{what} was not handled"));
            }
        }
    }
    if !seen_net {
        problems.push("no network card (/sys/class/net/en*)".into());
    }
    if power == 0 {
        problems.push("no device tagged power-switch (the power button)".into());
    }
    problems
}

/// coturn's wildcard sockets that `ss -Hlntu` does not list: STUN/TURN on 3478/udp and TURN
/// over TLS on 5349/tcp, each on `0.0.0.0` and on `[::]` (shown as `*` when it takes IPv4 too).
pub fn coturn_wildcard_missing(ss: &str) -> Vec<String> {
    let mut missing = Vec::new();
    for (proto, port) in [("udp", 3478), ("tcp", 5349)] {
        for (family, hosts) in [("0.0.0.0", &["0.0.0.0"][..]), ("[::]", &["[::]", "*"][..])] {
            let found = ss.lines().any(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                f.first() == Some(&proto)
                    && f.get(4)
                        .is_some_and(|local| hosts.iter().any(|h| *local == format!("{h}:{port}")))
            });
            if !found {
                missing.push(format!("{family}:{port}/{proto}"));
            }
        }
    }
    missing
}

/// Listening sockets (`ss -Hlntu`) bound beyond loopback on a port not in the lists.
pub fn unexpected_listeners(ss: &str) -> Vec<String> {
    let mut bad = Vec::new();
    for line in ss.lines() {
        let cols: Vec<&str> = line.split_whitespace().collect();
        if cols.len() < 5 {
            continue;
        }
        let (proto, local) = (cols[0], cols[4]);
        let Some((addr, port)) = local.rsplit_once(':') else {
            continue;
        };
        let Ok(port) = port.parse::<u16>() else {
            continue;
        };
        let addr = addr.trim_start_matches('[').trim_end_matches(']');
        let addr = addr.split('%').next().unwrap_or(addr);
        let loopback = addr.starts_with("127.") || addr == "::1";
        if loopback {
            continue;
        }
        let allowed = match proto {
            "tcp" => TCP_PORTS.contains(&port),
            "udp" => UDP_PORTS.contains(&port) || UDP_CLIENT_PORTS.contains(&port),
            _ => false,
        };
        if !allowed {
            bad.push(format!("{proto} {local}"));
        }
    }
    bad
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coldplug_answers_are_judged() {
        let good = "/sys/class/tty/ttyS0 1\n/sys/class/tty/tty9 0\n/sys/class/net/enp0s1 1\n\
                    /sys/class/block/vda 1\npower-switch 2\n";
        assert!(coldplug_problems(good).is_empty());
        let all = "/sys/class/tty/ttyS0 1\n/sys/class/tty/tty9 1\n/sys/class/net/enp0s1 1\n\
                   /sys/class/block/vda 1\npower-switch 2\n";
        assert_eq!(
            coldplug_problems(all),
            ["/sys/class/tty/tty9 was handled (the virtual consoles are left alone)"]
        );
        let missed = "/sys/class/tty/ttyS0 0\n/sys/class/tty/tty9 0\n/sys/class/net/en* 0\n\
                      /sys/class/block/vda 1\npower-switch 0\n";
        assert_eq!(
            coldplug_problems(missed),
            [
                "/sys/class/tty/ttyS0 was not handled",
                "/sys/class/net/en* was not handled",
                "no device tagged power-switch (the power button)",
            ]
        );
        assert_eq!(
            coldplug_problems("power-switch 1\n"),
            ["no network card (/sys/class/net/en*)"]
        );
    }

    #[test]
    fn coturn_on_the_wildcard_is_recognised() {
        let wildcard = "\
udp   UNCONN 0 0 0.0.0.0:3478 0.0.0.0:*
udp   UNCONN 0 0 *:3478 *:*
tcp   LISTEN 0 5 0.0.0.0:5349 0.0.0.0:*
tcp   LISTEN 0 5 [::]:5349 [::]:*";
        assert!(coturn_wildcard_missing(wildcard).is_empty());
        let discovered = "\
udp   UNCONN 0 0 10.0.2.15:3478 0.0.0.0:*
udp   UNCONN 0 0 127.0.0.1:3478 0.0.0.0:*
tcp   LISTEN 0 5 10.0.2.15:5349 0.0.0.0:*
tcp   LISTEN 0 5 [fec0::5054:ff:fe12:3456]:5349 [::]:*";
        assert_eq!(
            coturn_wildcard_missing(discovered),
            [
                "0.0.0.0:3478/udp",
                "[::]:3478/udp",
                "0.0.0.0:5349/tcp",
                "[::]:5349/tcp"
            ]
        );
    }

    #[test]
    fn listeners_beyond_the_list_are_named() {
        let ss = "\
udp   UNCONN 0 0 127.0.0.53%lo:53 0.0.0.0:*
udp   UNCONN 0 0 0.0.0.0:3478 0.0.0.0:*
udp   UNCONN 0 0 [fe80::5054:ff:fe12:3456]%eth0:546 [::]:*
tcp   LISTEN 0 511 0.0.0.0:443 0.0.0.0:*
tcp   LISTEN 0 128 [::]:22 [::]:*
tcp   LISTEN 0 128 127.0.0.1:5222 0.0.0.0:*
tcp   LISTEN 0 128 0.0.0.0:5280 0.0.0.0:*
udp   UNCONN 0 0 *:5353 *:*";
        assert_eq!(
            unexpected_listeners(ss),
            vec!["tcp 0.0.0.0:5280".to_string(), "udp *:5353".to_string()]
        );
    }

    #[test]
    fn lynis_log_names_the_tests_that_lost_points() {
        let log = "\
2026-11-30 10:00:00 Performing test ID DEB-0280 (Checking if libpam-tmpdir is installed and enabled.)
2026-11-30 10:00:00 Hardening: assigned partial number of hardening points (0 of 2). Currently having 10 points (out of 14)
2026-11-30 10:00:01 Performing test ID KRNL-6000 (Check sysctl key pairs in scan profile)
2026-11-30 10:00:01 Hardening: assigned maximum number of hardening points for this item (1). Currently having 11 points (out of 15)
2026-11-30 10:00:01 Hardening: assigned partial number of hardening points (0 of 1). Currently having 11 points (out of 16)";
        assert_eq!(
            lynis_points_lost(log),
            vec!["DEB-0280 0/2", "KRNL-6000 0/1"]
        );
    }

    #[test]
    fn enforce_section_is_read() {
        let st = "apparmor module is loaded.\n3 profiles are loaded.\n2 profiles are in enforce mode.\n   nginx\n   prosody\n1 profiles are in complain mode.\n   turnserver\n";
        assert_eq!(
            section(st, "profiles are in enforce mode"),
            vec!["nginx", "prosody"]
        );
    }
}
