use super::*;

fn check(what: &str, package: &str, backports: bool, purpose: &'static str) -> Check {
    Check {
        what: what.into(),
        package: package.into(),
        backports,
        purpose,
        found: Some(format!("/usr/bin/{what}")),
        problem: None,
    }
}

fn fake_checks() -> Vec<Check> {
    let mut mm = check("mmdebstrap", "mmdebstrap", false, "build");
    mm.found = None;
    let mut qemu = check("qemu-system-x86_64", "qemu-system-x86", true, "tests");
    qemu.found = Some("/usr/bin/qemu-system-x86_64 (QEMU 7.2.15)".into());
    qemu.problem = Some("QEMU 7.2.15 is too old".into());
    vec![
        mm,
        check("mksquashfs", "squashfs-tools", false, "build"),
        qemu,
        check("qemu-img", "qemu-utils", true, "tests"),
        check("sfdisk", "fdisk", false, "tests"),
    ]
}

#[test]
fn report_lists_missing_and_ends_with_install_commands() {
    let checks = fake_checks();
    let text = report(&checks);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines[0],
        "MISSING  mmdebstrap          mmdebstrap                            for: build  not found"
    );
    assert_eq!(
        lines[1],
        "ok       mksquashfs          squashfs-tools                        for: build  /usr/bin/mksquashfs"
    );
    assert!(lines[2].starts_with(
        "MISSING  qemu-system-x86_64  qemu-system-x86 (bookworm-backports)  for: tests  QEMU 7.2.15 is too old"
    ));
    assert!(text.contains("2 of 5 host tools missing"), "{text}");
    assert!(
        text.ends_with(
            "  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends mmdebstrap\n  \
             DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends -t bookworm-backports qemu-system-x86 qemu-utils\n"
        ),
        "{text}"
    );
    assert_eq!(missing(&checks).len(), 2);
}

#[test]
fn report_and_install_with_nothing_missing() {
    let checks = vec![check("gpg", "gpg", false, "build")];
    assert!(report(&checks).ends_with("nothing to install.\n"));
    assert!(install_commands(&checks).is_empty());
    // Returns before any root check or apt-get run.
    install(&checks).expect("nothing to do");
}

#[test]
fn require_names_every_missing_tool_for_its_purpose() {
    let checks = fake_checks();
    let err = require_from(&checks, "tests").unwrap_err().to_string();
    assert!(err.contains("qemu-system-x86_64 (package qemu-system-x86 from bookworm-backports): QEMU 7.2.15 is too old"), "{err}");
    assert!(!err.contains("mmdebstrap"), "{err}");
    assert!(
        err.contains("run `appliance doctor --install` as root"),
        "{err}"
    );
    let err = require_from(&checks, "build").unwrap_err().to_string();
    assert!(
        err.contains("mmdebstrap (package mmdebstrap): not found"),
        "{err}"
    );
    assert!(!err.contains("qemu"), "{err}");
    let ok: Vec<Check> = checks.into_iter().filter(|c| c.what == "sfdisk").collect();
    require_from(&ok, "tests").expect("nothing missing");
}

#[test]
fn backports_source_from_deb822() {
    let sources = "\
Types: deb
URIs: http://security.debian.org/debian-security
Suites: bookworm-security
Components: main

Types: deb-src
URIs: http://src.example/debian
Suites: bookworm

Types: deb
# a comment inside the stanza
URIs: http://ftp.de.debian.org/debian
Suites: bookworm bookworm-updates
Components: main contrib
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
";
    let text = backports_source_text(sources);
    assert!(
        text.contains("\nURIs: http://ftp.de.debian.org/debian\n"),
        "{text}"
    );
    assert!(text.contains("\nTypes: deb\n"));
    assert!(text.contains("\nSuites: bookworm-backports\n"));
    assert!(text.contains("\nComponents: main\n"));
    assert!(text.ends_with("\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"));
    assert!(!mentions_backports(sources));
    assert!(mentions_backports(&text));
}

#[test]
fn backports_source_from_one_line_list() {
    let sources = "\
# deb http://commented.example/debian bookworm main
deb http://security.debian.org/debian-security bookworm-security main
deb-src http://src.example/debian bookworm main
deb [arch=amd64 signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://mirror.example.org/debian/ bookworm main non-free-firmware
";
    assert_eq!(
        bookworm_mirror(sources).as_deref(),
        Some("http://mirror.example.org/debian/")
    );
    assert!(backports_source_text(sources).contains("\nURIs: http://mirror.example.org/debian/\n"));
    // Nothing usable: the default mirror.
    assert!(backports_source_text("").contains("\nURIs: http://deb.debian.org/debian\n"));
    assert!(!mentions_backports(
        "# deb http://x bookworm-backports main\n"
    ));
}

#[test]
fn parses_qemu_version_and_policy() {
    assert_eq!(
        parse_qemu_version("QEMU emulator version 10.0.2 (Debian 1:10.0.2+ds-2+deb13u1~bpo12+1)\nCopyright (c) 2003-2025 Fabrice Bellard\n"),
        Some(("10.0.2".to_string(), 10))
    );
    assert_eq!(
        parse_qemu_version("QEMU emulator version 7.2.15 (Debian 1:7.2+dfsg-7+deb12u15)\n"),
        Some(("7.2.15".to_string(), 7))
    );
    assert_eq!(parse_qemu_version("garbage"), None);
    let policy = "qemu-system-x86:\n  Installed: (none)\n  Candidate: 1:7.2+dfsg-7+deb12u18+b3\n  Version table:\n     1:10.0.2+ds-2+deb13u1~bpo12+1 100\n        100 http://deb.debian.org/debian bookworm-backports/main amd64 Packages\n     1:7.2+dfsg-7+deb12u18+b3 500\n        500 http://deb.debian.org/debian bookworm/main amd64 Packages\n";
    assert!(policy_has_backports(policy));
    assert!(!policy_has_backports(
        "qemu-system-x86:\n  Candidate: 1:7.2\n        500 http://deb.debian.org/debian bookworm/main amd64 Packages\n"
    ));
}
