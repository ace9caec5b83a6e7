//! `appliance-admin backup` as a person or a script runs it (the binary, with --root): the
//! passphrase on standard input, the archive on standard output, and the restore's refusals.
//! The restore that succeeds is in the unit tests (src/restore_tests.rs): here it would run
//! this host's systemctl.

mod common;

use appliance_admin::backup;
use common::Machine;
use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};

const PASSPHRASE: &str = "Copper-Lantern-Field-7";

/// The image's release file, which names the image in the backup's manifest.
fn release(m: &Machine) {
    let file = m.paths.release();
    fs::create_dir_all(file.parent().unwrap()).unwrap();
    fs::write(
        &file,
        format!(
            "name = \"jitsi-appliance\"\nversion = \"1.4.2\"\narch = \"x86_64\"\nboard = \"generic\"\ndata_schema = {}\n",
            appliance_spec::DATA_SCHEMA
        ),
    )
    .unwrap();
}

fn admin(root: &Path, args: &[&str], stdin: &[u8]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_appliance-admin"))
        .arg("--root")
        .arg(root)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    // The program may stop reading early (a refusal): a broken pipe is expected then.
    let _ = input.write_all(stdin);
    drop(input);
    child.wait_with_output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn a_backup_goes_to_standard_output_with_the_passphrase_from_standard_input() {
    let m = Machine::set_up(false);
    release(&m);
    let o = admin(
        m.root(),
        &["backup", "create", "--out", "-", "--passphrase-stdin"],
        format!("{PASSPHRASE}\n").as_bytes(),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        o.stdout.starts_with(b"age-encryption.org/v1\n-> scrypt "),
        "an age file on stdout"
    );
    assert!(
        stderr(&o).contains("wrote the backup of meet.example.org (jitsi-appliance version 1.4.2"),
        "{}",
        stderr(&o)
    );
    let plain = backup::decrypt(&mut &o.stdout[..], PASSPHRASE).unwrap();
    let (manifest, entries) = backup::from_tar(&plain).unwrap();
    assert_eq!(manifest.domain, "meet.example.org");
    let names: Vec<&str> = entries.iter().map(|e| e.path.as_str()).collect();
    for member in [
        "data/appliance/answers.toml",
        "data/appliance/secrets.toml",
        "data/config/tls/key.pem",
        "var/lib/prosody/meet%2eexample%2eorg/accounts/alice.dat",
    ] {
        assert!(names.contains(&member), "{member} in {names:?}");
    }

    // Without --out, standard output is used too when it is not a terminal.
    let o = admin(
        m.root(),
        &["backup", "create", "--passphrase-stdin"],
        format!("{PASSPHRASE}\n").as_bytes(),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(o.stdout.starts_with(b"age-encryption.org/v1\n"));
}

#[test]
fn a_backup_file_is_private_and_weak_passphrases_are_refused() {
    let m = Machine::set_up(false);
    release(&m);
    let out = tempfile::tempdir().unwrap();
    let file = out.path().join("meet.age");
    let f = file.to_str().unwrap();
    let o = admin(
        m.root(),
        &["backup", "create", "--out", f, "--passphrase-stdin"],
        b"password1234\n",
    );
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("passphrases attackers try first"),
        "{}",
        stderr(&o)
    );
    assert!(!file.exists());

    let pass = out.path().join("pass");
    fs::write(&pass, format!("{PASSPHRASE}\n")).unwrap();
    let o = admin(
        m.root(),
        &[
            "backup",
            "create",
            "--out",
            f,
            "--passphrase-file",
            pass.to_str().unwrap(),
        ],
        b"",
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("Wrote the backup of meet.example.org"));
    assert_eq!(
        fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    backup::decrypt(&mut fs::File::open(&file).unwrap(), PASSPHRASE).unwrap();
}

#[test]
fn a_restore_that_cannot_be_done_changes_nothing_and_says_why() {
    let old = Machine::set_up(false);
    release(&old);
    let archive = admin(
        old.root(),
        &["backup", "create", "--out", "-", "--passphrase-stdin"],
        format!("{PASSPHRASE}\n").as_bytes(),
    )
    .stdout;
    let new = Machine::new(false);
    release(&new);
    let mut input = b"Wrong-Passphrase-99\n".to_vec();
    input.extend_from_slice(&archive);
    let o = admin(
        new.root(),
        &["backup", "restore", "-", "--passphrase-stdin"],
        &input,
    );
    assert!(!o.status.success());
    let said = stderr(&o);
    assert!(
        said.contains("nothing was changed: the passphrase is wrong"),
        "{said}"
    );
    assert!(!new.paths.answers().exists());

    // The archive on stdin leaves no room for a typed passphrase.
    let o = admin(new.root(), &["backup", "restore", "-"], &archive);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("--passphrase-stdin"), "{}", stderr(&o));

    // A machine that is set up is not replaced without --force.
    let mut input = format!("{PASSPHRASE}\n").into_bytes();
    input.extend_from_slice(&archive);
    let o = admin(
        old.root(),
        &["backup", "restore", "-", "--passphrase-stdin"],
        &input,
    );
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("this machine is already set up (domain meet.example.org)"),
        "{}",
        stderr(&o)
    );
}
