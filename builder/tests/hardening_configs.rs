//! The hardening files of the image (`overlays/*/files/`: AppArmor profiles, the nftables ruleset,
//! sshd and sudo drop-ins, systemd unit sandboxes, kernel settings) are handed to the tools that read
//! them on the machine, here on the host: `apparmor_parser`, `nft -c`, `sshd -t`, `visudo -c`,
//! `systemd-analyze verify` / `security --offline`. A missing tool is a failure that names the
//! Debian package to install. See docs/cis.md for what each file is for.
//!
//! Units whose programs are not on the host (Jitsi's jicofo and jitsi-videobridge2, and the
//! programs of Debian's units when only the unit file is needed) are verified in a scratch root
//! that has the host's unit library, the overlay's units and a stand-in executable for every
//! command the units name: `systemd-analyze verify` checks that commands exist, not what they do.

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use appliance::host::find_program;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `path` in the files every feature lays into the root (rendered once per test run, with
/// Jitsi's feature on, as in the default appliance).
fn overlay(path: &str) -> PathBuf {
    static TREE: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    let tree = TREE.get_or_init(|| {
        let config = appliance::config::Config::load(&repo_root().join("appliance.toml"), &[])
            .expect("appliance.toml");
        let features = appliance::features::load(&config).expect("features");
        let dir = tempfile::tempdir().expect("temporary directory");
        appliance::rootfs::render_feature_files(&config, &features, dir.path())
            .expect("rendering the features' files");
        dir
    });
    tree.path().join(path)
}

/// The host program `name`, or a failure that says which Debian package provides it.
fn tool(name: &str, package: &str) -> PathBuf {
    find_program(name).unwrap_or_else(|| {
        panic!("`{name}` is not installed on this host: install the Debian package `{package}` (apt-get install {package})")
    })
}

fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

fn must_succeed(cmd: &mut Command) -> Output {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// The profiles the appliance ships, by file, with the profile names each one defines.
const PROFILES: &[(&str, &[&str])] = &[
    ("usr.sbin.nginx", &["nginx"]),
    ("usr.bin.prosody", &["prosody"]),
    ("usr.bin.turnserver", &["turnserver"]),
    ("jitsi-videobridge", &["jitsi-videobridge"]),
    ("jicofo", &["jicofo"]),
    ("usr.bin.dehydrated", &["dehydrated", "dehydrated//hook"]),
    ("usr.bin.appliance-admin", &["appliance-admin"]),
];

fn apparmor_dir() -> PathBuf {
    overlay("etc/apparmor.d")
}

#[test]
fn every_apparmor_profile_compiles_in_enforce_mode() {
    let _t = appliance_qemu_tests::timed!();
    let parser = tool("apparmor_parser", "apparmor");
    assert!(
        Path::new("/etc/apparmor.d/abstractions/base").is_file(),
        "Debian's AppArmor abstractions are missing from /etc/apparmor.d: install the Debian package `apparmor`"
    );
    let shipped: BTreeSet<String> = fs::read_dir(apparmor_dir())
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_type().unwrap().is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    let expected: BTreeSet<String> = PROFILES.iter().map(|(f, _)| f.to_string()).collect();
    assert_eq!(
        shipped, expected,
        "profiles in overlays/hardening/files/etc/apparmor.d and the list in this test differ"
    );

    for (file, names) in PROFILES {
        let path = apparmor_dir().join(file);
        let text = read(&path);
        for word in ["complain", "unconfined", "kill", "prompt"] {
            assert!(
                !text
                    .lines()
                    .any(|l| l.contains("flags=") && l.contains(word)),
                "{file}: profiles ship in enforce mode, without flags=({word})"
            );
        }
        // Compile fully (no kernel load, no cache); includes from the overlay first
        // (abstractions/appliance-*), then Debian's from the host's /etc/apparmor.d.
        must_succeed(
            Command::new(&parser)
                .args(["--skip-kernel-load", "--skip-cache", "--quiet", "-I"])
                .arg(apparmor_dir())
                .arg(&path),
        );
        let out = must_succeed(
            Command::new(&parser)
                .args(["--names", "-I"])
                .arg(apparmor_dir())
                .arg(&path),
        );
        let found: BTreeSet<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| l.trim().to_string())
            .filter(|l| !l.is_empty())
            .collect();
        let want: BTreeSet<String> = names.iter().map(|n| n.to_string()).collect();
        assert_eq!(found, want, "{file} defines other profiles than expected");
    }
}

/// `AppArmorProfile=` in a unit must name a profile the image ships: systemd fails the unit
/// otherwise.
#[test]
fn units_name_shipped_apparmor_profiles() {
    let _t = appliance_qemu_tests::timed!();
    let names: BTreeSet<&str> = PROFILES
        .iter()
        .flat_map(|(_, n)| n.iter().copied())
        .collect();
    let mut seen = 0;
    for file in unit_files_in_overlay() {
        for line in read(&file).lines() {
            if let Some(value) = line.trim().strip_prefix("AppArmorProfile=") {
                let name = value.trim().trim_start_matches('-');
                assert!(
                    names.contains(name),
                    "{}: AppArmorProfile={name} is not a profile in overlays/hardening/files/etc/apparmor.d",
                    file.display()
                );
                seen += 1;
            }
        }
    }
    assert!(
        seen >= 2,
        "jicofo and jitsi-videobridge2 are confined through AppArmorProfile="
    );
}

#[test]
fn nftables_ruleset_is_accepted() {
    let _t = appliance_qemu_tests::timed!();
    let nft = tool("nft", "nftables");
    let conf = overlay("etc/nftables.conf");
    must_succeed(Command::new(&nft).arg("-c").arg("-f").arg(&conf));
    let text = read(&conf);
    for (chain, policy) in [("input", "drop"), ("forward", "drop"), ("output", "accept")] {
        let hook = format!("hook {chain} priority filter; policy {policy};");
        assert!(
            text.contains(&hook),
            "nftables.conf: chain {chain} must have policy {policy}"
        );
    }
    for port in [
        "tcp dport 22",
        "tcp dport { 80, 443 }",
        "udp dport 10000",
        "udp dport 3478",
        "tcp dport 5349",
    ] {
        assert!(text.contains(port), "nftables.conf does not open {port}");
    }
}

#[test]
fn sshd_accepts_the_drop_ins() {
    let _t = appliance_qemu_tests::timed!();
    let sshd = tool("sshd", "openssh-server");
    let keygen = tool("ssh-keygen", "openssh-client");
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("host_key");
    must_succeed(
        Command::new(&keygen)
            .args(["-q", "-N", "", "-t", "ed25519", "-f"])
            .arg(&key),
    );
    // Like Debian's sshd_config: the drop-ins first, then Debian's own settings (for most
    // keywords the first value wins, so the drop-ins must override these).
    let config = dir.path().join("sshd_config");
    fs::write(
        &config,
        format!(
            "HostKey {}\nInclude {}/*.conf\nKbdInteractiveAuthentication no\nUsePAM yes\n\
             X11Forwarding yes\nPrintMotd no\nAcceptEnv LANG LC_*\n\
             Subsystem sftp /usr/lib/openssh/sftp-server\n",
            key.display(),
            overlay("etc/ssh/sshd_config.d").display()
        ),
    )
    .unwrap();
    // sshd -t insists on its privilege separation directory, which openssh-server's tmpfiles
    // make at boot.
    let privsep = Path::new("/run/sshd");
    if !privsep.is_dir() {
        fs::create_dir_all(privsep).unwrap_or_else(|e| {
            panic!(
                "sshd -t needs /run/sshd (made at boot by openssh-server); cannot create it: {e}"
            )
        });
        fs::set_permissions(privsep, fs::Permissions::from_mode(0o755)).unwrap();
    }
    must_succeed(Command::new(&sshd).arg("-t").arg("-f").arg(&config));
    let out = must_succeed(
        Command::new(&sshd)
            .arg("-T")
            .arg("-f")
            .arg(&config)
            .args(["-C", "user=admin,host=client.example,addr=192.0.2.1"]),
    );
    let effective = String::from_utf8_lossy(&out.stdout).to_lowercase();
    for want in [
        "passwordauthentication no",
        "kbdinteractiveauthentication no",
        "permitrootlogin no",
        "authenticationmethods publickey",
        "allowusers admin",
        "authorizedkeysfile /data/ssh/authorized_keys/%u",
        "hostbasedauthentication no",
        "ignorerhosts yes",
        "permitemptypasswords no",
        "permituserenvironment no",
        "maxauthtries 3",
        "maxsessions 2",
        "maxstartups 10:30:60",
        "logingracetime 60",
        "clientaliveinterval 300",
        "clientalivecountmax 2",
        "compression no",
        "tcpkeepalive no",
        "disableforwarding yes",
        "allowtcpforwarding no",
        "allowstreamlocalforwarding no",
        "allowagentforwarding no",
        "permittunnel no",
        "x11forwarding no",
        // 512 MiB, one hour.
        "rekeylimit 536870912 3600",
        "printlastlog no",
        "banner /etc/issue.net",
        "loglevel verbose",
        "usepam yes",
        "hostkey /data/ssh/ssh_host_ed25519_key",
    ] {
        assert!(
            effective.lines().any(|l| l == want),
            "sshd's effective configuration lacks `{want}`"
        );
    }
    for weak in [
        "3des",
        "cbc",
        "arcfour",
        "hmac-md5",
        "hmac-sha1",
        "umac-64",
        "group1-sha1",
        "group14-sha1",
        "exchange-sha1",
        "nistp",
    ] {
        for key in ["ciphers ", "macs ", "kexalgorithms "] {
            let line = effective
                .lines()
                .find(|l| l.starts_with(key))
                .unwrap_or_default();
            assert!(!line.contains(weak), "sshd offers {weak}: {line}");
        }
    }
}

#[test]
fn sudoers_drop_in_is_valid() {
    let _t = appliance_qemu_tests::timed!();
    let visudo = tool("visudo", "sudo");
    let dir = tempfile::tempdir().unwrap();
    // The customize hook installs it 0440 root:root; visudo checks the mode too.
    let copy = dir.path().join("60-appliance");
    fs::copy(overlay("etc/sudoers.d/60-appliance"), &copy).unwrap();
    fs::set_permissions(&copy, fs::Permissions::from_mode(0o440)).unwrap();
    must_succeed(Command::new(&visudo).arg("-c").arg("-f").arg(&copy));
    let text = read(&copy);
    assert!(text.lines().any(|l| l.trim() == "Defaults use_pty"));
    assert!(
        !text
            .lines()
            .any(|l| l.trim_start().starts_with("Defaults") && l.contains("!authenticate")),
        "no global !authenticate (CIS 5.2.5)"
    );
}

/// Every unit file and drop-in the overlay ships (rendered `.j2` ones excluded).
fn unit_files_in_overlay() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            if e.file_type().unwrap().is_dir() {
                walk(&p, out);
            } else if !p.to_string_lossy().ends_with(".j2") {
                out.push(p);
            }
        }
    }
    let mut out = Vec::new();
    walk(&overlay("etc/systemd/system"), &mut out);
    out.sort();
    out
}

/// The units this appliance hardens, and the highest `systemd-analyze security` exposure each
/// may have with its sandbox (nginx's master runs as root, hence its higher score).
const HARDENED_UNITS: &[(&str, f64)] = &[
    ("nginx.service", 3.5),
    ("prosody.service", 2.0),
    ("coturn.service", 2.0),
    ("jitsi-videobridge2.service", 2.0),
    ("jicofo.service", 2.0),
];

/// Debian's own unit files, read from the host (the packages ship them); Jitsi's
/// jitsi-videobridge2.service is not available here, so a stand-in with the same shape
/// (a bash wrapper appending to ${LOGFILE}) carries the drop-in.
const DEBIAN_UNITS: &[(&str, &str)] = &[
    ("nginx.service", "nginx-common (nginx-light)"),
    ("prosody.service", "prosody"),
    ("coturn.service", "coturn"),
];

const JVB_STAND_IN: &str = "[Unit]\nDescription=Stand-in for Jitsi's jitsi-videobridge2.service (test only)\n\n\
[Service]\nUser=jvb\nEnvironmentFile=-/etc/jitsi/videobridge/config\n\
Environment=LOGFILE=/var/log/jitsi/jvb.log\nRuntimeDirectory=jitsi-videobridge\n\
ExecStart=/bin/bash -c \"exec /usr/share/jitsi-videobridge/jvb.sh < /dev/null >> ${LOGFILE} 2>&1\"\n\n\
[Install]\nWantedBy=multi-user.target\n";

fn copy_tree(src: &Path, dst: &Path) {
    fs::create_dir_all(dst).unwrap();
    for e in fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        let to = dst.join(e.file_name());
        let ty = e.file_type().unwrap();
        if ty.is_symlink() {
            let target = fs::read_link(e.path()).unwrap();
            let _ = fs::remove_file(&to);
            std::os::unix::fs::symlink(target, &to).unwrap();
        } else if ty.is_dir() {
            copy_tree(&e.path(), &to);
        } else {
            fs::copy(e.path(), &to).unwrap();
        }
    }
}

/// Absolute program paths of the Exec*= lines of a unit file.
fn exec_programs(unit_text: &str) -> Vec<String> {
    unit_text
        .lines()
        .filter_map(|l| {
            let (key, value) = l.trim().split_once('=')?;
            if !key.starts_with("Exec") {
                return None;
            }
            let value = value.trim_start_matches(['-', '@', ':', '+', '!', '|']);
            let program = value.split_whitespace().next()?;
            program.starts_with('/').then(|| program.to_string())
        })
        .collect()
}

/// A scratch root for `systemd-analyze --root`: the host's unit library, Debian's units of the
/// stack, the overlay's units and drop-ins, and stand-ins for every program they run.
fn unit_root() -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    let system_units = Path::new("/usr/lib/systemd/system");
    assert!(
        system_units.join("sysinit.target").exists(),
        "the host has no systemd unit library in /usr/lib/systemd/system: install the Debian package `systemd`"
    );
    for (unit, package) in DEBIAN_UNITS {
        assert!(
            system_units.join(unit).exists(),
            "Debian's {unit} is not on the host: install the Debian package `{package}`"
        );
    }
    copy_tree(system_units, &r.join("usr/lib/systemd/system"));
    for (link, target) in [("lib", "usr/lib"), ("bin", "usr/bin"), ("sbin", "usr/sbin")] {
        std::os::unix::fs::symlink(target, r.join(link)).unwrap();
    }
    fs::create_dir_all(r.join("usr/bin")).unwrap();
    fs::create_dir_all(r.join("usr/sbin")).unwrap();
    fs::write(
        r.join("usr/lib/systemd/system/jitsi-videobridge2.service"),
        JVB_STAND_IN,
    )
    .unwrap();
    let etc_units = r.join("etc/systemd/system");
    fs::create_dir_all(&etc_units).unwrap();
    let src = overlay("etc/systemd/system");
    for file in unit_files_in_overlay() {
        let to = etc_units.join(file.strip_prefix(&src).unwrap());
        fs::create_dir_all(to.parent().unwrap()).unwrap();
        fs::copy(&file, &to).unwrap();
    }
    let mut programs = BTreeSet::new();
    let mut texts = Vec::new();
    for dir in [r.join("usr/lib/systemd/system"), etc_units] {
        let mut stack = vec![dir];
        while let Some(d) = stack.pop() {
            for e in fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    stack.push(p);
                } else if let Ok(t) = fs::read_to_string(&p) {
                    texts.push(t);
                }
            }
        }
    }
    for t in &texts {
        programs.extend(exec_programs(t));
    }
    for program in programs {
        let stub = r.join(program.trim_start_matches('/'));
        if stub.exists() {
            continue;
        }
        fs::create_dir_all(stub.parent().unwrap()).unwrap();
        fs::write(&stub, "#!/bin/sh\nexit 0\n").unwrap();
        fs::set_permissions(&stub, fs::Permissions::from_mode(0o755)).unwrap();
    }
    root
}

#[test]
fn hardened_units_verify() {
    let _t = appliance_qemu_tests::timed!();
    let analyze = tool("systemd-analyze", "systemd");
    let root = unit_root();
    let units: Vec<&str> = HARDENED_UNITS.iter().map(|(u, _)| *u).collect();
    let out = must_succeed(
        Command::new(&analyze)
            .arg("verify")
            .arg(format!("--root={}", root.path().display()))
            .args(&units),
    );
    let said = String::from_utf8_lossy(&out.stderr);
    for unit in &units {
        assert!(
            !said
                .lines()
                .any(|l| l.starts_with(&format!("{unit}:")) || l.contains("Unknown key")),
            "systemd-analyze verify complained about {unit}:\n{said}"
        );
    }
}

fn exposure(analyze: &Path, root: &Path, unit: &str) -> f64 {
    let out = must_succeed(
        Command::new(analyze)
            .args(["security", "--offline=yes", "--no-pager"])
            .arg(format!("--root={}", root.display()))
            .arg(unit),
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| panic!("no exposure level for {unit} in:\n{text}"));
    line.rsplit(':')
        .next()
        .and_then(|s| s.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("cannot read the exposure in `{line}`"))
}

#[test]
fn hardened_units_have_low_exposure() {
    let _t = appliance_qemu_tests::timed!();
    let analyze = tool("systemd-analyze", "systemd");
    let root = unit_root();
    for (unit, limit) in HARDENED_UNITS {
        let score = exposure(&analyze, root.path(), unit);
        println!("{unit}: exposure {score}");
        assert!(score <= *limit, "{unit}: exposure {score} is above {limit}");
    }
}

#[test]
fn java_units_keep_no_logs_and_no_wx_exemption_elsewhere() {
    let _t = appliance_qemu_tests::timed!();
    let jvb = read(&overlay(
        "etc/systemd/system/jitsi-videobridge2.service.d/10-appliance-hardening.conf",
    ));
    assert!(jvb.lines().any(|l| l == "Environment=LOGFILE=/dev/null"));
    let jicofo = read(&overlay("etc/systemd/system/jicofo.service"));
    for want in [
        "StandardOutput=null",
        "StandardError=null",
        "User=jicofo",
        "EnvironmentFile=/etc/jitsi/jicofo/config",
        "ExecStart=/usr/share/jicofo/jicofo.sh $JICOFO_OPTS",
    ] {
        assert!(
            jicofo.lines().any(|l| l == want),
            "jicofo.service lacks `{want}`"
        );
    }
    // The JIT of the JVM needs writable and executable memory.
    for text in [&jvb, &jicofo] {
        assert!(!text.contains("MemoryDenyWriteExecute=yes"));
    }
    for unit in ["nginx", "prosody", "coturn"] {
        let t = read(&overlay(&format!(
            "etc/systemd/system/{unit}.service.d/10-appliance-hardening.conf"
        )));
        assert!(
            t.lines().any(|l| l == "MemoryDenyWriteExecute=yes"),
            "{unit}: W^X expected"
        );
    }
}

/// Sysctl prefixes that belong to optional kernel features, and the /proc/sys entry that shows
/// the host kernel has the feature. Debian 12's kernel has CONFIG_SECURITY_YAMA=y and
/// CONFIG_MAGIC_SYSRQ=y.
const OPTIONAL_SYSCTL_DIRS: &[(&str, &str)] = &[
    ("kernel.yama.", "/proc/sys/kernel/yama"),
    ("kernel.sysrq", "/proc/sys/kernel/sysrq"),
];

fn sysctl_settings() -> Vec<(String, String)> {
    read(&overlay("etc/sysctl.d/60-appliance-cis.conf"))
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with(';'))
        .map(|l| {
            let (k, v) = l
                .split_once('=')
                .unwrap_or_else(|| panic!("not `key = value`: {l}"));
            (k.trim().to_string(), v.trim().to_string())
        })
        .collect()
}

#[test]
fn sysctl_keys_exist_in_the_kernel() {
    let _t = appliance_qemu_tests::timed!();
    let settings = sysctl_settings();
    // Keys of optional kernel features that Debian's kernel (the image's) builds in but a
    // host kernel may lack (a VM or container kernel without Yama, say): checked only where
    // the host has the feature. The QEMU tests read them back on the booted image.
    let optional = |key: &str| {
        OPTIONAL_SYSCTL_DIRS
            .iter()
            .find(|(prefix, _)| key.starts_with(prefix))
            .is_some_and(|(_, entry)| !Path::new(entry).exists())
    };
    let missing: Vec<&str> = settings
        .iter()
        .map(|(k, _)| k.as_str())
        .filter(|k| !Path::new("/proc/sys").join(k.replace('.', "/")).exists())
        .filter(|k| {
            if optional(k) {
                println!("{k}: this host's kernel lacks the feature; not checked here");
                false
            } else {
                true
            }
        })
        .collect();
    assert!(
        missing.is_empty(),
        "keys unknown to this kernel: {missing:?}"
    );
    for (k, v) in &settings {
        assert!(v.parse::<i64>().is_ok(), "{k}: `{v}` is not a number");
    }
    let get = |key: &str| {
        settings
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    };
    for (key, want) in [
        ("kernel.randomize_va_space", "2"),
        ("kernel.yama.ptrace_scope", "1"),
        ("fs.suid_dumpable", "0"),
        ("net.ipv4.ip_forward", "0"),
        ("net.ipv6.conf.all.forwarding", "0"),
        ("net.ipv4.tcp_syncookies", "1"),
        ("net.ipv4.conf.all.rp_filter", "1"),
        ("net.ipv6.conf.all.accept_ra", "0"),
        ("kernel.sysrq", "0"),
        ("dev.tty.ldisc_autoload", "0"),
    ] {
        assert_eq!(get(key), Some(want), "{key}");
    }
    // Duplicates would make the effective value depend on order.
    let keys: BTreeSet<&str> = settings.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys.len(), settings.len(), "a key is set twice");
}

#[test]
fn modprobe_blocks_cis_modules_but_not_the_roots_file_systems() {
    let _t = appliance_qemu_tests::timed!();
    let text = read(&overlay("etc/modprobe.d/appliance-cis.conf"));
    // Network protocols use /bin/true, the only form Lynis' NETW-3200 recognises (CIS accepts
    // either); everything else /bin/false.
    let protocols = ["dccp", "tipc", "rds", "sctp"];
    let installs: BTreeSet<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("install "))
        .map(|l| {
            let (module, command) = l.split_once(' ').unwrap();
            let want = if protocols.contains(&module) {
                "/bin/true"
            } else {
                "/bin/false"
            };
            assert_eq!(command, want, "{module}");
            module
        })
        .collect();
    for module in [
        "cramfs",
        "freevxfs",
        "hfs",
        "hfsplus",
        "jffs2",
        "usb-storage",
        "udf",
        "dccp",
        "tipc",
        "rds",
        "sctp",
    ] {
        assert!(installs.contains(module), "{module} is not blocked");
        assert!(
            text.lines().any(|l| l == format!("blacklist {module}")),
            "{module} is not blacklisted"
        );
    }
    for needed in [
        "squashfs",
        "overlay",
        "vfat",
        "fat",
        "dm_verity",
        "dm-verity",
        "ext4",
    ] {
        assert!(
            !installs.contains(needed),
            "{needed} is needed by the appliance itself"
        );
    }
}

#[test]
fn customize_hook_enables_the_shipped_pam_profiles() {
    let _t = appliance_qemu_tests::timed!();
    let hook = read(&repo_root().join("overlays/hardening/customize.sh"));
    for e in fs::read_dir(overlay("usr/share/pam-configs")).unwrap() {
        let name = e.unwrap().file_name().to_string_lossy().into_owned();
        assert!(
            hook.contains(&name),
            "usr/share/pam-configs/{name} is not enabled by pam-auth-update in overlays/hardening/customize.sh"
        );
    }
}

/// The legal key words Lynis looks for in /etc/issue and /etc/issue.net (BANN-7126/7130, Lynis
/// 3.0.8 `include/tests_banners`); five or more count as a banner that warns.
const LYNIS_BANNER_WORDS: &[&str] = &[
    "audit",
    "access",
    "authori",
    "condition",
    "connect",
    "consent",
    "continu",
    "criminal",
    "enforce",
    "evidence",
    "forbidden",
    "intrusion",
    "law",
    "legal",
    "legislat",
    "log",
    "monitor",
    "owner",
    "penal",
    "policy",
    "policies",
    "privacy",
    "private",
    "prohibited",
    "record",
    "restricted",
    "secure",
    "subject",
    "system",
    "terms",
    "warning",
];

#[test]
fn banners_warn_without_os_information_or_promises_of_monitoring() {
    for name in ["etc/issue", "etc/issue.net", "etc/motd"] {
        let text = read(&overlay(name));
        let lower = text.to_lowercase();
        // CIS 1.6.1-1.6.3: no OS information (getty escapes or names).
        for os in ["\\m", "\\r", "\\s", "\\v", "debian", "linux", "gnu"] {
            assert!(!lower.contains(os), "{name} shows OS information ({os})");
        }
        // Nothing watches or records what a user does on this machine (no logs kept): the
        // banner must not say so.
        for promise in ["monitor", "record", "audit", "evidence", "log"] {
            assert!(
                !lower.contains(promise),
                "{name} promises what does not happen ({promise})"
            );
        }
        let found: Vec<&str> = LYNIS_BANNER_WORDS
            .iter()
            .copied()
            .filter(|w| lower.contains(w))
            .collect();
        assert!(
            found.len() >= 5,
            "{name} has {} of Lynis' legal key words ({found:?}); it needs 5",
            found.len()
        );
    }
}
