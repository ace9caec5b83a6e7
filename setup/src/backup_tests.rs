//! Tests of `backup create` and of the archive format (the restore's are in restore_tests.rs).

use super::*;
use crate::runner::RecordingRunner;
use crate::steps::{self, tests::answers, Ctx};
use crate::tls::tests::fake_openssl;
use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;

pub const PASSPHRASE: &str = "Copper-Lantern-Field-7";
/// Tests encrypt with a low work factor (scrypt is slow in debug builds); the format is the
/// same, and `create_uses_the_production_work_factor` checks the real one.
pub const TEST_WORK_FACTOR: u8 = 10;

/// The image's release file, and the users and groups the services run as.
pub fn image(paths: &Paths, name: &str) {
    let release = paths.release();
    fs::create_dir_all(release.parent().unwrap()).unwrap();
    fs::write(
        &release,
        format!("name = \"{name}\"\nversion = \"1.4.2\"\narch = \"x86_64\"\nboard = \"generic\"\ndata_schema = {}\n", appliance_spec::DATA_SCHEMA),
    )
    .unwrap();
    fs::create_dir_all(paths.etc_passwd().parent().unwrap()).unwrap();
    fs::write(
        paths.etc_passwd(),
        "root:x:0:0::/root:/bin/sh\nprosody:x:105:110::/var/lib/prosody:/bin/false\n",
    )
    .unwrap();
    fs::write(
        paths.etc_group(),
        "root:x:0:\nprosody:x:110:\nssl-cert:x:111:prosody\n",
    )
    .unwrap();
}

/// A fresh machine as the image leaves it after its first boot: SSH host keys of its own.
pub fn fresh_machine(root: &Path, host_key: &str) -> Paths {
    let paths = crate::steps::tests::machine(root);
    image(&paths, "jitsi-appliance");
    crate::boot::create_dirs(&paths).unwrap();
    for (name, text, mode) in [
        ("ssh_host_ed25519_key", host_key, 0o600),
        ("ssh_host_ed25519_key.pub", "ssh-ed25519 AAAA host", 0o644),
    ] {
        let p = paths.ssh_dir().join(name);
        fs::write(&p, text).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
    }
    for f in ["firstboot.done", "firstboot.runs", "boot-count", "lock"] {
        fs::write(paths.appliance_dir().join(f), "x\n").unwrap();
    }
    paths
}

/// A machine that is set up and has a Let's Encrypt account and certificate, and things a
/// backup must leave out (locks, boot counters, logs, old certificates).
pub fn old_machine(root: &Path) -> Paths {
    let paths = fresh_machine(root, "OLD HOST KEY");
    let mut a = answers();
    a.letsencrypt = Some(crate::answers::AcmeAnswers {
        email: "admin@example.org".into(),
        directory: "https://acme.test/dir".into(),
        ca_certificate: None,
    });
    a.save(&paths.answers()).unwrap();
    // From boot: the CA is left to appliance-acme.service, so nothing is asked here.
    steps::apply(&mut Ctx {
        paths: &paths,
        runner: &mut RecordingRunner::with_handler(fake_openssl),
        out: &mut Vec::new(),
        from_boot: true,
    })
    .unwrap();
    // A second host, added as `hosts add` does: in Prosody's store and in the answers.
    let bob = crate::scram::credentials_with_salt("Violet-Ocean-Lamp", "salt-of-bob", 4096);
    crate::scram::AccountStore::open(&paths, "meet.localhost")
        .unwrap()
        .write("bob", &bob)
        .unwrap();
    let mut a = Answers::load(&paths.answers()).unwrap();
    a.hosts.push(crate::answers::HostAnswer {
        name: "bob".into(),
        scram: bob,
    });
    a.save(&paths.answers()).unwrap();
    let acme = paths.acme_dir();
    let account = acme.join("accounts/aHR0cHM6Ly9hY21lLnRlc3QvZGly");
    fs::create_dir_all(&account).unwrap();
    fs::write(account.join("account_key.pem"), "ACCOUNT KEY").unwrap();
    fs::write(account.join("registration_info.json"), "{}").unwrap();
    let certs = acme.join("certs/meet.localhost");
    fs::create_dir_all(&certs).unwrap();
    fs::write(certs.join("fullchain-1700000000.pem"), "CERT ca").unwrap();
    fs::write(certs.join("privkey-1700000000.pem"), "KEY ca").unwrap();
    std::os::unix::fs::symlink("fullchain-1700000000.pem", certs.join("fullchain.pem")).unwrap();
    std::os::unix::fs::symlink("privkey-1700000000.pem", certs.join("privkey.pem")).unwrap();
    fs::write(acme.join("lock"), "").unwrap();
    fs::create_dir_all(acme.join("archive/meet.localhost")).unwrap();
    fs::write(acme.join("archive/meet.localhost/privkey-1.pem"), "OLD KEY").unwrap();
    crate::tls::install_pair(&paths, b"CERT ca", b"KEY ca").unwrap();
    for (dir, file) in [
        ("/var/log/nginx", "access.log"),
        ("/var/log/journal/abc", "system.journal"),
        ("/data/state/var-lib/upper/prosody", "x"),
    ] {
        fs::create_dir_all(paths.at(dir)).unwrap();
        fs::write(paths.at(dir).join(file), "LOG LINE").unwrap();
    }
    paths
}

pub fn backup_of(paths: &Paths) -> Vec<u8> {
    let mut out = Vec::new();
    create(paths, PASSPHRASE, TEST_WORK_FACTOR, &mut out).unwrap();
    out
}

pub fn members(archive: &[u8]) -> (Manifest, BTreeMap<String, Entry>) {
    let plain = decrypt(&mut &archive[..], PASSPHRASE).unwrap();
    let (m, entries) = from_tar(&plain).unwrap();
    (
        m,
        entries.into_iter().map(|e| (e.path.clone(), e)).collect(),
    )
}

#[test]
fn the_archive_holds_what_a_new_machine_needs_and_nothing_else() {
    let d = tempfile::tempdir().unwrap();
    let paths = old_machine(d.path());
    let (m, entries) = members(&backup_of(&paths));
    assert_eq!(m.format, FORMAT);
    assert_eq!(m.image, "jitsi-appliance");
    assert_eq!(m.image_version, "1.4.2");
    assert_eq!(m.data_schema, appliance_spec::DATA_SCHEMA);
    assert_eq!(m.domain, "meet.localhost");
    assert!(
        m.created.ends_with('Z') && m.created.len() == 20,
        "{}",
        m.created
    );
    let names: Vec<&str> = entries.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        vec![
            "data/appliance/answers.toml",
            "data/appliance/secrets.toml",
            "data/appliance/setup-done",
            "data/appliance/state.toml",
            "data/config/acme",
            "data/config/acme/accounts",
            "data/config/acme/accounts/aHR0cHM6Ly9hY21lLnRlc3QvZGly",
            "data/config/acme/accounts/aHR0cHM6Ly9hY21lLnRlc3QvZGly/account_key.pem",
            "data/config/acme/accounts/aHR0cHM6Ly9hY21lLnRlc3QvZGly/registration_info.json",
            "data/config/acme/certs",
            "data/config/acme/certs/meet.localhost",
            "data/config/acme/certs/meet.localhost/fullchain-1700000000.pem",
            "data/config/acme/certs/meet.localhost/fullchain.pem",
            "data/config/acme/certs/meet.localhost/privkey-1700000000.pem",
            "data/config/acme/certs/meet.localhost/privkey.pem",
            "data/config/tls/cert.pem",
            "data/config/tls/key.pem",
            "data/ssh/authorized_keys",
            "data/ssh/authorized_keys/admin",
            "data/ssh/ssh_host_ed25519_key",
            "data/ssh/ssh_host_ed25519_key.pub",
            "var/lib/prosody/meet%2elocalhost/accounts/alice.dat",
            "var/lib/prosody/meet%2elocalhost/accounts/bob.dat",
        ]
    );
    for e in entries.values() {
        for never in [
            "log",
            "journal",
            "lock",
            "firstboot",
            "boot-count",
            "archive",
            "auth%2e",
        ] {
            assert!(!e.path.contains(never), "{} must not be backed up", e.path);
        }
        if let Content::File(data) = &e.content {
            assert_ne!(data, b"LOG LINE", "{}", e.path);
        }
    }
    // The pair in use, read through its links; modes and owners kept.
    let key = &entries["data/config/tls/key.pem"];
    assert_eq!(key.content, Content::File(b"KEY ca".to_vec()));
    assert_eq!(key.mode, 0o640);
    assert_eq!(key.owner.group, "ssl-cert");
    let host_key = &entries["data/ssh/ssh_host_ed25519_key"];
    assert_eq!(host_key.mode, 0o600);
    assert_eq!(
        entries["data/config/acme/certs/meet.localhost/fullchain.pem"].content,
        Content::Symlink("fullchain-1700000000.pem".into())
    );
    assert_eq!(entries["data/config/acme"].mode, 0o700);
    let account = &entries["var/lib/prosody/meet%2elocalhost/accounts/bob.dat"];
    assert_eq!(
        (account.owner.user.as_str(), account.mode),
        ("prosody", 0o640)
    );
}

#[test]
fn a_wrong_passphrase_and_a_cut_off_file_are_refused() {
    let d = tempfile::tempdir().unwrap();
    let paths = old_machine(d.path());
    let archive = backup_of(&paths);
    let e = decrypt(&mut &archive[..], "Not-The-Passphrase-1").unwrap_err();
    assert!(e.to_string().contains("the passphrase is wrong"), "{e:#}");
    for cut in [archive.len() - 1, archive.len() - 17, archive.len() / 2] {
        let e = decrypt(&mut &archive[..cut], PASSPHRASE).unwrap_err();
        assert!(
            format!("{e:#}").contains("damaged or incomplete"),
            "cut at {cut}: {e:#}"
        );
    }
    let mut flipped = archive.clone();
    let last = flipped.len() - 5;
    flipped[last] ^= 1;
    assert!(decrypt(&mut &flipped[..], PASSPHRASE).is_err());
    let e = decrypt(&mut &b"hello, not age"[..], PASSPHRASE).unwrap_err();
    assert!(e.to_string().contains("not an appliance backup"), "{e:#}");
}

#[test]
fn nothing_to_back_up_before_setup() {
    let d = tempfile::tempdir().unwrap();
    let paths = fresh_machine(d.path(), "KEY");
    let e = create(&paths, PASSPHRASE, TEST_WORK_FACTOR, &mut Vec::new()).unwrap_err();
    assert!(e.to_string().contains("not set up"), "{e}");
}

#[test]
fn members_without_a_place_in_a_backup_are_refused() {
    let manifest = Manifest {
        format: FORMAT,
        image: "x".into(),
        image_version: "1".into(),
        data_schema: 1,
        created: "2025-01-01T00:00:00Z".into(),
        domain: "meet.localhost".into(),
    };
    let owner = Names::default();
    for path in [
        "etc/shadow",
        "data/appliance/lock",
        "var/log/syslog",
        "data/config/acme/lock",
    ] {
        let tar = to_tar(
            &manifest,
            &[Entry {
                path: path.into(),
                content: Content::File(b"x".to_vec()),
                mode: 0o600,
                owner: owner.clone(),
                mtime: 0,
            }],
        )
        .unwrap();
        let e = from_tar(&tar).unwrap_err();
        assert!(
            e.to_string().contains("has no place in a backup"),
            "{path}: {e}"
        );
    }
    assert_eq!(Member::classify("data/config/acme/archive/x"), None);
    assert_eq!(
        Member::classify("var/lib/prosody/meet%2elocalhost/accounts/a.dat"),
        Some(Member::HostAccount {
            host_dir: "meet%2elocalhost".into()
        })
    );
}

#[test]
fn create_uses_the_production_work_factor() {
    let d = tempfile::tempdir().unwrap();
    let paths = old_machine(d.path());
    let file = d.path().join("out/backup.age");
    fs::create_dir_all(file.parent().unwrap()).unwrap();
    create_file(&paths, PASSPHRASE, WORK_FACTOR, &file).unwrap();
    let data = fs::read(&file).unwrap();
    // The age header is text: its scrypt stanza ends with the work factor.
    let header = String::from_utf8_lossy(&data[..200]).into_owned();
    assert!(
        header.starts_with("age-encryption.org/v1\n-> scrypt "),
        "{header}"
    );
    let stanza = header.lines().nth(1).unwrap();
    assert!(stanza.ends_with(&format!(" {WORK_FACTOR}")), "{stanza}");
    assert_eq!(
        fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let names: Vec<_> = fs::read_dir(file.parent().unwrap()).unwrap().collect();
    assert_eq!(names.len(), 1, "no temporary file left behind");
}

/// Run `age -d` with the passphrase typed on a pseudo-terminal, as a person would: the age
/// tool reads passphrases only from a terminal.
fn age_cli_decrypt(file: &Path, out: &Path, passphrase: &str) -> std::process::Output {
    use std::os::unix::io::FromRawFd;
    use std::os::unix::process::CommandExt;
    let (mut master, mut slave) = (0, 0);
    // SAFETY: openpty fills two descriptors; the null pointers ask for default settings.
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(rc, 0, "openpty failed");
    let mut cmd = std::process::Command::new("age");
    cmd.arg("-d").arg("-o").arg(out).arg(file);
    cmd.stdin(std::process::Stdio::null());
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            // A new session whose controlling terminal is the pty: age opens /dev/tty.
            if libc::setsid() < 0 || libc::ioctl(slave, libc::TIOCSCTTY, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = match cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => panic!("cannot run `age` ({e}); install it with `appliance doctor --install`"),
    };
    // SAFETY: the descriptors came from openpty and are owned here from now on.
    let mut master_file = unsafe { std::fs::File::from_raw_fd(master) };
    drop(unsafe { std::fs::File::from_raw_fd(slave) });
    // Drain the prompt in the background so age never blocks writing it.
    let mut reader = master_file.try_clone().unwrap();
    std::thread::spawn(move || {
        let mut sink = Vec::new();
        let _ = reader.read_to_end(&mut sink);
    });
    master_file
        .write_all(format!("{passphrase}\n").as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn the_age_tool_opens_a_backup() {
    let d = tempfile::tempdir().unwrap();
    let paths = old_machine(d.path());
    let file = d.path().join("backup.age");
    fs::write(&file, backup_of(&paths)).unwrap();
    let tar_file = d.path().join("backup.tar");
    let out = age_cli_decrypt(&file, &tar_file, PASSPHRASE);
    assert!(
        out.status.success(),
        "age -d failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listing = std::process::Command::new("tar")
        .arg("tvf")
        .arg(&tar_file)
        .output()
        .unwrap();
    assert!(listing.status.success());
    let text = String::from_utf8_lossy(&listing.stdout).into_owned();
    let first = text.lines().next().unwrap_or_default();
    assert!(first.ends_with(" manifest.toml"), "{text}");
    assert!(
        text.contains("-rw-r----- root/ssl-cert") && text.contains(" data/config/tls/key.pem"),
        "{text}"
    );
    assert!(
        text.contains("prosody/prosody") && text.contains("accounts/bob.dat"),
        "{text}"
    );
    let manifest = std::process::Command::new("tar")
        .arg("xOf")
        .arg(&tar_file)
        .arg(MANIFEST)
        .output()
        .unwrap();
    let m: Manifest = toml::from_str(&String::from_utf8_lossy(&manifest.stdout)).unwrap();
    assert_eq!(m.domain, "meet.localhost");
    // A wrong passphrase makes age fail too, without output.
    let wrong = age_cli_decrypt(&file, &d.path().join("wrong.tar"), "Not-The-Passphrase-1");
    assert!(!wrong.status.success());
}
