//! The TLS key and certificate used by nginx, coturn and Prosody.
//!
//! Key and certificate must change together: a new key with the old certificate stops nginx.
//! Each pair is therefore written whole into its own directory, and one symlink says which pair
//! is in use; switching pairs is a single rename(2):
//!
//! ```text
//! /data/config/tls/pairs/<n>/{key.pem,cert.pem}   one directory per pair, never changed
//! /data/config/tls/current -> pairs/<n>           switched atomically
//! /data/config/tls/cert.pem -> current/cert.pem   the stable paths the configs name
//! /data/config/tls/key.pem  -> current/key.pem    (MACHINE_TLS_CERT, MACHINE_TLS_KEY)
//! ```
//!
//! At every boot, before nginx starts, [`check_at_boot`] makes sure the pair in use belongs
//! together, and otherwise goes back to the newest older pair that does, or makes a new
//! self-signed one.

use crate::answers::Answers;
use crate::fsutil::{self, Owner};
use crate::paths::Paths;
use crate::runner::{Cmd, Runner};
use crate::steps::Ctx;
use anyhow::{Context, Result};
use sha2::{Digest, Sha256};
use std::fs;
use std::path::{Path, PathBuf};

/// Group allowed to read the TLS key: prosody and coturn both need it. Debian's ssl-cert group
/// is the usual place; without it the key is root-only.
pub const TLS_KEY_GROUP: &str = "ssl-cert";

/// Who may read the TLS key.
pub fn key_owner(paths: &Paths) -> Result<(u32, Option<Owner>)> {
    Ok(
        match fsutil::lookup_group(&paths.etc_group(), TLS_KEY_GROUP)? {
            Some(gid) => (0o640, Some(Owner { uid: 0, gid })),
            None => (0o600, None),
        },
    )
}

fn pairs_dir(paths: &Paths) -> PathBuf {
    paths.tls_dir().join("pairs")
}

fn current_link(paths: &Paths) -> PathBuf {
    paths.tls_dir().join("current")
}

/// The pair numbers on disk, lowest first.
fn pair_numbers(paths: &Paths) -> Result<Vec<u64>> {
    let dir = pairs_dir(paths);
    let entries = match fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", dir.display())),
    };
    let mut numbers: Vec<u64> = entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    numbers.sort_unstable();
    Ok(numbers)
}

/// The pair `current` points at.
fn current_number(paths: &Paths) -> Option<u64> {
    let target = fs::read_link(current_link(paths)).ok()?;
    target.strip_prefix("pairs").ok()?.to_str()?.parse().ok()
}

/// Is there a key and a certificate at the stable paths?
pub fn has_pair(paths: &Paths) -> bool {
    paths.tls_cert().is_file() && paths.tls_key().is_file()
}

/// Make `pairs/<n>` the pair in use, and the stable paths point through `current`.
/// Links already right are left alone (nothing is written at a normal boot).
fn switch_to(paths: &Paths, n: u64) -> Result<()> {
    let pair = format!("pairs/{n}");
    for (link, target) in [
        (current_link(paths), pair.as_str()),
        (paths.tls_cert(), "current/cert.pem"),
        (paths.tls_key(), "current/key.pem"),
    ] {
        if fs::read_link(&link).ok().as_deref() != Some(Path::new(target)) {
            fsutil::atomic_symlink(Path::new(target), &link)?;
        }
    }
    Ok(())
}

/// Install a new pair and switch to it in one step. The pair in use before stays as the
/// fallback for [`check_at_boot`]; older ones are removed.
pub fn install_pair(paths: &Paths, cert_pem: &[u8], key_pem: &[u8]) -> Result<()> {
    let pairs = pairs_dir(paths);
    fsutil::ensure_dir(&paths.tls_dir(), 0o755, None)?;
    fsutil::ensure_dir(&pairs, 0o755, None)?;
    let n = pair_numbers(paths)?.last().map_or(1, |n| n + 1);
    // Complete in a hidden directory first: a pair directory is never seen half written.
    let tmp = pairs.join(format!(".new-{n}"));
    if tmp.exists() {
        fs::remove_dir_all(&tmp).with_context(|| format!("cannot remove {}", tmp.display()))?;
    }
    fsutil::ensure_dir(&tmp, 0o755, None)?;
    let (mode, owner) = key_owner(paths)?;
    fsutil::atomic_write(&tmp.join("key.pem"), key_pem, mode, owner)?;
    fsutil::atomic_write(&tmp.join("cert.pem"), cert_pem, 0o644, None)?;
    let dir = pairs.join(n.to_string());
    fs::rename(&tmp, &dir).with_context(|| format!("cannot rename {}", tmp.display()))?;
    fsutil::sync_dir(&pairs)?;
    let previous = current_number(paths);
    switch_to(paths, n)?;
    for old in pair_numbers(paths)? {
        if old != n && Some(old) != previous {
            let _ = fs::remove_dir_all(pairs.join(old.to_string()));
        }
    }
    Ok(())
}

/// A new self-signed certificate for `domain` (P-256), installed as the pair in use.
pub fn make_self_signed(ctx: &mut Ctx, domain: &str) -> Result<()> {
    let dir = ctx.paths.tls_dir();
    fsutil::ensure_dir(&dir, 0o755, None)?;
    let (tmp_key, tmp_cert) = (dir.join(".new-key.pem"), dir.join(".new-cert.pem"));
    let _ = fs::remove_file(&tmp_key);
    let _ = fs::remove_file(&tmp_cert);
    let cmd = Cmd::new("openssl").args([
        "req".to_string(),
        "-x509".into(),
        "-newkey".into(),
        "ec".into(),
        "-pkeyopt".into(),
        "ec_paramgen_curve:prime256v1".into(),
        "-nodes".into(),
        "-days".into(),
        "825".into(),
        "-subj".into(),
        format!("/CN={domain}"),
        "-addext".into(),
        format!("subjectAltName=DNS:{domain}"),
        "-keyout".into(),
        tmp_key.display().to_string(),
        "-out".into(),
        tmp_cert.display().to_string(),
    ]);
    ctx.runner.check(&cmd)?;
    let key_pem = fs::read(&tmp_key)
        .with_context(|| format!("openssl wrote no key to {}", tmp_key.display()))?;
    let cert_pem = fs::read(&tmp_cert)
        .with_context(|| format!("openssl wrote no certificate to {}", tmp_cert.display()))?;
    install_pair(ctx.paths, &cert_pem, &key_pem)?;
    let _ = fs::remove_file(&tmp_key);
    let _ = fs::remove_file(&tmp_cert);
    Ok(())
}

/// Does the certificate carry the key's public key? An unreadable file is "no"; an error only
/// when openssl cannot be run at all.
pub fn pair_matches(runner: &mut dyn Runner, cert: &Path, key: &Path) -> Result<bool> {
    let from_cert = runner.run(&Cmd::new("openssl").args([
        "x509",
        "-noout",
        "-pubkey",
        "-in",
        &cert.display().to_string(),
    ]))?;
    let from_key = runner.run(&Cmd::new("openssl").args([
        "pkey",
        "-pubout",
        "-in",
        &key.display().to_string(),
    ]))?;
    let (a, b) = (from_cert.stdout.trim(), from_key.stdout.trim());
    Ok(from_cert.success && from_key.success && a.contains("PUBLIC KEY") && a == b)
}

/// In a pair's directory: the SHA-256 of its certificate and key once [`pair_matches`] said they
/// belong together. Asking openssl takes two programs (about 1 s at every boot on a slow or
/// emulated processor); a pair whose files have not changed since is not asked about again.
const MATCHED: &str = "matched.sha256";

/// The line [`MATCHED`] holds for the pair in `dir`, or None when a file cannot be read.
fn pair_digest(dir: &Path) -> Option<String> {
    let cert = fs::read(dir.join("cert.pem")).ok()?;
    let key = fs::read(dir.join("key.pem")).ok()?;
    Some(format!(
        "{} {}\n",
        hex::encode(Sha256::digest(&cert)),
        hex::encode(Sha256::digest(&key))
    ))
}

/// [`pair_matches`] for the pair in `dir`, remembered in [`MATCHED`] while its files stay the same.
fn pair_in_dir_matches(runner: &mut dyn Runner, dir: &Path) -> Result<bool> {
    let digest = pair_digest(dir);
    let memo = dir.join(MATCHED);
    if digest.is_some() && fs::read_to_string(&memo).ok() == digest {
        return Ok(true);
    }
    let matches = pair_matches(runner, &dir.join("cert.pem"), &dir.join("key.pem"))?;
    if let (true, Some(digest)) = (matches, digest) {
        // Only a time saver: if it cannot be written, the next boot asks openssl again.
        let _ = fsutil::atomic_write(&memo, digest.as_bytes(), 0o644, None);
    }
    Ok(matches)
}

/// Before nginx starts: the key and certificate in use must belong together. Otherwise go back
/// to the newest other pair that does, or make a new self-signed certificate. Every repair is
/// said on the console.
pub fn check_at_boot(ctx: &mut Ctx) -> Result<()> {
    let paths = ctx.paths.clone();
    if current_number(&paths).is_none() && has_pair(&paths) {
        // Key and certificate as two plain files (before pairs existed): make them pair 1.
        let cert = fs::read(paths.tls_cert())
            .with_context(|| format!("cannot read {}", paths.display(&paths.tls_cert())))?;
        let key = fs::read(paths.tls_key())
            .with_context(|| format!("cannot read {}", paths.display(&paths.tls_key())))?;
        install_pair(&paths, &cert, &key)?;
    }
    let Some(in_use) = current_number(&paths) else {
        return Ok(()); // No certificate yet (setup has not made one).
    };
    // A power cut while the stable links were first made leaves one of them behind.
    switch_to(&paths, in_use)?;
    let ok = |ctx: &mut Ctx, n: u64| -> Result<bool> {
        pair_in_dir_matches(ctx.runner, &pairs_dir(&paths).join(n.to_string()))
    };
    match ok(ctx, in_use) {
        Ok(true) => return Ok(()),
        Ok(false) => {}
        Err(e) => {
            ctx.say(&format!(
                "setup: cannot check the TLS key and certificate: {e:#}"
            ));
            return Ok(());
        }
    }
    ctx.say(&format!(
        "setup: the TLS key and certificate in use (/data/config/tls/pairs/{in_use}) do not belong together; the web server could not start with them"
    ));
    let mut older = pair_numbers(&paths)?;
    older.retain(|n| *n != in_use);
    for n in older.into_iter().rev() {
        if ok(ctx, n)? {
            switch_to(&paths, n)?;
            ctx.say(&format!(
                "setup: went back to the previous key and certificate (/data/config/tls/pairs/{n})"
            ));
            return Ok(());
        }
    }
    let domain = match Answers::load(&paths.answers()) {
        Ok(a) => a.domain,
        Err(e) => {
            ctx.say(&format!(
                "setup: no domain is known to make a new certificate for ({e:#})"
            ));
            return Ok(());
        }
    };
    make_self_signed(ctx, &domain).context("cannot make a new self-signed certificate")?;
    ctx.say(&format!(
        "setup: made a new self-signed certificate for {domain}; with Let's Encrypt, `appliance-admin acme renew` (daily) installs the CA's certificate again"
    ));
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::runner::{Output, RecordingRunner, SystemRunner};
    use crate::steps::tests::{answers, machine};

    /// openssl as the tests need it: `req` writes "KEY new"/"CERT new", and the public key of
    /// "KEY x" and of "CERT x" is "PUBLIC KEY x" (so files with the same x belong together).
    pub fn fake_openssl(cmd: &Cmd) -> Result<Output> {
        let ok = |stdout: String| {
            Ok(Output {
                success: true,
                stdout,
                ..Output::default()
            })
        };
        if cmd.program != "openssl" {
            return ok(String::new());
        }
        let after = |flag: &str| {
            cmd.args
                .iter()
                .position(|a| a == flag)
                .map(|i| cmd.args[i + 1].clone())
        };
        match cmd.args.first().map(String::as_str) {
            Some("req") => {
                fs::write(after("-keyout").unwrap(), "KEY new").unwrap();
                fs::write(after("-out").unwrap(), "CERT new").unwrap();
                ok(String::new())
            }
            Some(sub @ ("x509" | "pkey")) => {
                let text = fs::read_to_string(after("-in").unwrap()).unwrap_or_default();
                let prefix = if sub == "x509" { "CERT " } else { "KEY " };
                match text.strip_prefix(prefix) {
                    Some(id) => ok(format!("PUBLIC KEY {id}\n")),
                    None => Ok(Output::default()),
                }
            }
            _ => ok(String::new()),
        }
    }

    fn boot_check(paths: &Paths) -> String {
        boot_check_counting(paths).0
    }

    /// What the boot check said, and how many times it ran openssl.
    fn boot_check_counting(paths: &Paths) -> (String, usize) {
        let mut runner = RecordingRunner::with_handler(fake_openssl);
        let mut out = Vec::new();
        check_at_boot(&mut Ctx {
            paths,
            runner: &mut runner,
            out: &mut out,
            from_boot: true,
        })
        .unwrap();
        let openssl = runner
            .commands
            .iter()
            .filter(|c| c.program == "openssl")
            .count();
        (String::from_utf8(out).unwrap(), openssl)
    }

    #[test]
    fn a_pair_that_matched_is_not_checked_again_until_a_file_changes() {
        let d = tempfile::tempdir().unwrap();
        let paths = machine(d.path());
        answers().save(&paths.answers()).unwrap();
        install_pair(&paths, b"CERT 1", b"KEY 1").unwrap();
        assert_eq!(boot_check_counting(&paths), (String::new(), 2));
        assert_eq!(
            boot_check_counting(&paths),
            (String::new(), 0),
            "the second boot remembers the first one's answer"
        );
        // The key in use changes behind the check's back: asked again, and repaired.
        let key = pairs_dir(&paths).join("1/key.pem");
        fs::write(&key, "KEY other").unwrap();
        let (said, openssl) = boot_check_counting(&paths);
        assert!(said.contains("do not belong together"), "{said}");
        assert!(openssl >= 2, "{openssl}");
        assert_eq!(in_use(&paths), ("CERT new".into(), "KEY new".into()));
    }

    fn in_use(paths: &Paths) -> (String, String) {
        (
            fs::read_to_string(paths.tls_cert()).unwrap(),
            fs::read_to_string(paths.tls_key()).unwrap(),
        )
    }

    #[test]
    fn pairs_switch_through_one_symlink() {
        let d = tempfile::tempdir().unwrap();
        let paths = machine(d.path());
        for i in 1..=4 {
            install_pair(
                &paths,
                format!("CERT {i}").as_bytes(),
                format!("KEY {i}").as_bytes(),
            )
            .unwrap();
            assert_eq!(in_use(&paths), (format!("CERT {i}"), format!("KEY {i}")));
        }
        assert_eq!(
            fs::read_link(paths.tls_cert()).unwrap(),
            Path::new("current/cert.pem")
        );
        assert_eq!(
            fs::read_link(paths.tls_key()).unwrap(),
            Path::new("current/key.pem")
        );
        assert_eq!(
            fs::read_link(current_link(&paths)).unwrap(),
            Path::new("pairs/4")
        );
        assert_eq!(
            pair_numbers(&paths).unwrap(),
            vec![3, 4],
            "the fallback is kept"
        );
        // A good pair needs nothing at boot.
        let mut runner = RecordingRunner::with_handler(fake_openssl);
        assert!(pair_matches(&mut runner, &paths.tls_cert(), &paths.tls_key()).unwrap());
    }

    #[test]
    fn a_mismatched_pair_falls_back_to_the_last_good_one() {
        let d = tempfile::tempdir().unwrap();
        let paths = machine(d.path());
        install_pair(&paths, b"CERT old", b"KEY old").unwrap();
        install_pair(&paths, b"CERT old", b"KEY renewed").unwrap();
        let said = boot_check(&paths);
        assert!(said.contains("do not belong together"), "{said}");
        assert!(
            said.contains(
                "went back to the previous key and certificate (/data/config/tls/pairs/1)"
            ),
            "{said}"
        );
        assert_eq!(in_use(&paths), ("CERT old".into(), "KEY old".into()));
        // Once repaired, the next boot is quiet.
        assert_eq!(boot_check(&paths), "");
    }

    #[test]
    fn a_mismatched_pair_without_fallback_gets_a_new_self_signed_one() {
        let d = tempfile::tempdir().unwrap();
        let paths = machine(d.path());
        answers().save(&paths.answers()).unwrap();
        // What a power cut between the two renames of the old code left: two plain files, a
        // new key and the old certificate.
        fs::create_dir_all(paths.tls_dir()).unwrap();
        fs::write(paths.tls_key(), "KEY renewed").unwrap();
        fs::write(paths.tls_cert(), "CERT old").unwrap();
        let said = boot_check(&paths);
        assert!(said.contains("do not belong together"), "{said}");
        assert!(
            said.contains("made a new self-signed certificate for meet.localhost"),
            "{said}"
        );
        assert_eq!(in_use(&paths), ("CERT new".into(), "KEY new".into()));
        assert!(fs::symlink_metadata(paths.tls_cert())
            .unwrap()
            .file_type()
            .is_symlink());
    }

    #[test]
    fn nothing_to_check_before_a_certificate_exists() {
        let d = tempfile::tempdir().unwrap();
        let paths = machine(d.path());
        assert_eq!(boot_check(&paths), "");
        assert!(!paths.tls_dir().join("current").exists());
    }

    #[test]
    fn openssl_tells_matching_pairs_apart() {
        let d = tempfile::tempdir().unwrap();
        let mut runner = SystemRunner;
        let make = |name: &str, runner: &mut SystemRunner| -> (PathBuf, PathBuf) {
            let (key, cert) = (
                d.path().join(format!("{name}-key.pem")),
                d.path().join(format!("{name}-cert.pem")),
            );
            let out = runner
                .run(&Cmd::new("openssl").args([
                    "req",
                    "-x509",
                    "-newkey",
                    "ec",
                    "-pkeyopt",
                    "ec_paramgen_curve:prime256v1",
                    "-nodes",
                    "-days",
                    "1",
                    "-subj",
                    "/CN=meet.localhost",
                    "-keyout",
                    &key.display().to_string(),
                    "-out",
                    &cert.display().to_string(),
                ]))
                .expect("openssl is missing: run `appliance doctor --install`");
            assert!(out.success, "{}", out.stderr);
            (cert, key)
        };
        let (cert_a, key_a) = make("a", &mut runner);
        let (cert_b, key_b) = make("b", &mut runner);
        assert!(pair_matches(&mut runner, &cert_a, &key_a).unwrap());
        assert!(pair_matches(&mut runner, &cert_b, &key_b).unwrap());
        assert!(!pair_matches(&mut runner, &cert_a, &key_b).unwrap());
        assert!(!pair_matches(&mut runner, &cert_b, &d.path().join("missing.pem")).unwrap());
    }
}
