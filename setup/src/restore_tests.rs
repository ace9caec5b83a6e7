//! Tests of `backup restore`: round trips from one machine's root into another's.

use super::*;
use crate::backup::tests::{backup_of, fresh_machine, image, old_machine, PASSPHRASE};
use crate::backup::{encrypt, from_tar, to_tar};
use crate::runner::RecordingRunner;
use crate::testkeys::P256;
use crate::tls::tests::fake_openssl;
use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};

/// Every file, directory and link under `root`: content (or target) and mode.
fn snapshot(root: &Path) -> BTreeMap<String, (String, u32)> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, (String, u32)>) {
        for e in fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            let m = fs::symlink_metadata(&p).unwrap();
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            let what = if m.file_type().is_symlink() {
                format!("-> {}", fs::read_link(&p).unwrap().display())
            } else if m.is_dir() {
                walk(root, &p, out);
                "dir".into()
            } else {
                String::from_utf8_lossy(&fs::read(&p).unwrap()).into_owned()
            };
            out.insert(rel, (what, m.mode() & 0o7777));
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

fn restore(
    paths: &Paths,
    archive: &[u8],
    passphrase: &str,
    force: bool,
) -> (Result<()>, String, Vec<String>) {
    let mut runner = RecordingRunner::with_handler(fake_openssl);
    let mut out = Vec::new();
    let r = run(
        &mut Ctx {
            paths,
            runner: &mut runner,
            out: &mut out,
            from_boot: false,
        },
        &mut &archive[..],
        passphrase,
        force,
    );
    (r, String::from_utf8(out).unwrap(), runner.lines())
}

/// A new machine that the person logged in to with another key than the old machine's.
fn new_machine(root: &Path) -> Paths {
    let paths = fresh_machine(root, "NEW HOST KEY");
    crate::sshkeys::install(&paths, &[P256.to_string()]).unwrap();
    paths
}

#[test]
fn a_new_machine_continues_as_the_old_one() {
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let old = old_machine(d1.path());
    let new = new_machine(d2.path());
    let (r, out, commands) = restore(&new, &backup_of(&old), PASSPHRASE, false);
    r.unwrap();
    for machine_path in [
        "/data/appliance/answers.toml",
        "/data/appliance/secrets.toml",
        "/data/config/tls/cert.pem",
        "/data/config/tls/key.pem",
        "/data/config/acme/accounts/aHR0cHM6Ly9hY21lLnRlc3QvZGly/account_key.pem",
        "/data/config/acme/certs/meet.localhost/fullchain.pem",
        "/data/ssh/ssh_host_ed25519_key",
        "/data/config/nginx/site.conf",
        "/data/config/prosody/appliance.cfg.lua",
        "/data/config/power-off.toml",
    ] {
        assert_eq!(
            fs::read(new.at(machine_path)).unwrap(),
            fs::read(old.at(machine_path)).unwrap(),
            "{machine_path}"
        );
    }
    // Modes and owners as they were.
    let mode = |p: &Paths, f: &str| fs::metadata(p.at(f)).unwrap().permissions().mode() & 0o7777;
    for f in [
        "/data/ssh/ssh_host_ed25519_key",
        "/data/ssh/ssh_host_ed25519_key.pub",
        "/data/config/tls/key.pem",
        "/data/config/acme",
        "/data/appliance/answers.toml",
    ] {
        assert_eq!(mode(&new, f), mode(&old, f), "{f}");
    }
    let link = new.at("/data/config/acme/certs/meet.localhost/privkey.pem");
    assert_eq!(
        fs::read_link(&link).unwrap(),
        Path::new("privkey-1700000000.pem")
    );
    assert!(!new.at("/data/config/acme/lock").exists());
    assert!(!new.at("/data/config/acme/archive").exists());
    // The hosts sign in with their passwords.
    let store = AccountStore::open(&new, "meet.localhost").unwrap();
    assert!(store
        .read("alice")
        .unwrap()
        .unwrap()
        .verify("Tulip-Harbor-42"));
    assert!(store
        .read("bob")
        .unwrap()
        .unwrap()
        .verify("Violet-Ocean-Lamp"));
    if unsafe { libc::geteuid() } == 0 {
        let m = fs::metadata(store.path("bob")).unwrap();
        assert_eq!((m.uid(), m.gid()), (105, 110), "owned by prosody");
    }
    // The old machine's admin keys, and the key used to log in to the new one.
    let keys = crate::sshkeys::installed(&new).unwrap();
    assert_eq!(
        keys,
        vec![crate::testkeys::ED25519.to_string(), P256.to_string()]
    );
    // The setup ran to the end; nothing asked the CA (the domain still points at the old
    // machine); the services were restarted and sshd took the old host keys.
    assert!(new.setup_done().exists());
    assert!(crate::steps::pending(&new).unwrap().is_empty());
    assert!(
        out.contains("restore: backup of meet.localhost made "),
        "{out}"
    );
    assert!(out.contains("setup: complete"), "{out}");
    assert!(out.contains("ssh-keygen -R"), "{out}");
    assert!(
        !commands.iter().any(|c| c.starts_with("dehydrated")),
        "{commands:?}"
    );
    assert!(
        !commands.iter().any(|c| c.starts_with("openssl req")),
        "no new certificate: {commands:?}"
    );
    assert!(
        commands.contains(&"systemctl try-reload-or-restart ssh.service".to_string()),
        "{commands:?}"
    );
    assert!(
        commands.contains(&"systemctl try-restart prosody.service coturn.service".to_string()),
        "{commands:?}"
    );
    // The status says what the old machine said.
    let mut status = Vec::new();
    crate::status::print(&new, &mut status).unwrap();
    let status = String::from_utf8(status).unwrap();
    assert!(status.contains("Hosts: alice, bob"), "{status}");
    assert!(
        status.contains("Certificate: from https://acme.test/dir"),
        "{status}"
    );
}

#[test]
fn a_machine_that_is_set_up_is_only_replaced_with_force() {
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let old = old_machine(d1.path());
    let archive = backup_of(&old);
    // The second machine is set up too, with another secret and a host of its own.
    let other = old_machine(d2.path());
    crate::scram::AccountStore::open(&other, "meet.localhost")
        .unwrap()
        .write(
            "carol",
            &crate::scram::credentials_with_salt("Amber-River-Stone", "s", 4096),
        )
        .unwrap();
    fs::write(
        other.secrets(),
        "jvb_password = \"a\"\nfocus_password = \"b\"\nturn_secret = \"c\"\n",
    )
    .unwrap();
    let before = snapshot(d2.path());
    let (r, _, commands) = restore(&other, &archive, PASSPHRASE, false);
    let e = r.unwrap_err();
    assert!(
        e.to_string()
            .contains("already set up (domain meet.localhost)"),
        "{e}"
    );
    assert!(e.to_string().contains("--force"), "{e}");
    assert!(commands.is_empty());
    assert_eq!(snapshot(d2.path()), before, "nothing changed");

    let (r, _, _) = restore(&other, &archive, PASSPHRASE, true);
    r.unwrap();
    assert_eq!(
        fs::read(other.secrets()).unwrap(),
        fs::read(old.secrets()).unwrap()
    );
    assert_eq!(
        AccountStore::open(&other, "meet.localhost")
            .unwrap()
            .list()
            .unwrap(),
        vec!["alice", "bob"],
        "the host only the replaced setup had is gone"
    );
}

/// Bad archives: each is refused with its reason, and the new machine is left as it was.
#[test]
fn bad_archives_change_nothing() {
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let old = old_machine(d1.path());
    let good = backup_of(&old);
    let plain = crate::backup::decrypt(&mut &good[..], PASSPHRASE).unwrap();
    let (manifest, entries) = from_tar(&plain).unwrap();
    let rewrap = |m: &Manifest| {
        let mut out = Vec::new();
        encrypt(&to_tar(m, &entries).unwrap(), PASSPHRASE, 10, &mut out).unwrap();
        out
    };
    let newer = rewrap(&Manifest {
        data_schema: appliance_spec::DATA_SCHEMA + 1,
        image_version: "9.0".into(),
        ..manifest.clone()
    });
    let other_image = rewrap(&Manifest {
        image: "another-appliance".into(),
        ..manifest.clone()
    });
    let newer_format = rewrap(&Manifest {
        format: crate::backup::FORMAT + 1,
        ..manifest.clone()
    });
    let cases: Vec<(&str, Vec<u8>, &str, &str)> = vec![
        (
            "wrong passphrase",
            good.clone(),
            "Not-The-Passphrase-1",
            "the passphrase is wrong",
        ),
        (
            "cut off",
            good[..good.len() - 30].to_vec(),
            PASSPHRASE,
            "damaged or incomplete",
        ),
        (
            "newer schema",
            newer,
            PASSPHRASE,
            "update this machine to version 9.0 or later first",
        ),
        (
            "other image",
            other_image,
            PASSPHRASE,
            "made on the image \"another-appliance\"",
        ),
        (
            "newer format",
            newer_format,
            PASSPHRASE,
            "newer than the 1 this program reads",
        ),
    ];
    for (what, archive, pass, says) in cases {
        let new = new_machine(d2.path());
        let before = snapshot(d2.path());
        let (r, out, commands) = restore(&new, &archive, pass, false);
        let e = format!("{:#}", r.unwrap_err());
        assert!(e.contains(says), "{what}: {e}");
        assert!(e.contains("nothing was changed"), "{what}: {e}");
        assert!(
            out.is_empty() && commands.is_empty(),
            "{what}: {out} {commands:?}"
        );
        assert_eq!(snapshot(d2.path()), before, "{what}: nothing changed");
    }
}

#[test]
fn links_out_of_dehydrated_s_directory_are_refused() {
    let d = tempfile::tempdir().unwrap();
    let paths = fresh_machine(d.path(), "KEY");
    image(&paths, "jitsi-appliance");
    let e = Entry {
        path: "data/config/acme/certs/x/cert.pem".into(),
        content: Content::Symlink("../../../../ssh/ssh_host_ed25519_key".into()),
        mode: 0o777,
        owner: Names::default(),
        mtime: 0,
    };
    let err = check_link(&e).unwrap_err();
    assert!(err.to_string().contains("outside its directory"), "{err}");
}
