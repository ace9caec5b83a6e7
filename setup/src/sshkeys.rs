//! The admin account's SSH keys (/data/ssh/authorized_keys/admin): adding, listing and
//! removing them, and saying on the console which key was installed (its fingerprint as
//! `ssh-keygen -l` prints it), whatever it came from: the seed, the wizard or a cloud's
//! metadata service.

use crate::fsutil;
use crate::paths::Paths;
use crate::steps::Ctx;
use anyhow::{Context, Result};
use appliance_spec::validate::{self, shown};
use std::fs;

/// Type and key data: the same key with another comment is the same key.
fn key_id(line: &str) -> String {
    line.split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Are these two lines the same key (whatever their comments)?
pub fn same_key(a: &str, b: &str) -> bool {
    key_id(a) == key_id(b)
}

/// The key lines in the admin's authorized_keys (no blank lines or comments).
pub fn installed(paths: &Paths) -> Result<Vec<String>> {
    let file = paths.admin_authorized_keys();
    match fs::read_to_string(&file) {
        Ok(t) => Ok(t
            .lines()
            .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
            .map(str::to_string)
            .collect()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", paths.display(&file))),
    }
}

fn write(paths: &Paths, lines: &[String]) -> Result<()> {
    // sshd StrictModes: root-owned, not group/world writable, all the way up.
    fsutil::ensure_dir(&paths.at("/data/ssh"), 0o755, None)?;
    fsutil::ensure_dir(&paths.authorized_keys_dir(), 0o755, None)?;
    let mut text = lines.join("\n");
    if !text.is_empty() {
        text.push('\n');
    }
    fsutil::atomic_write(&paths.admin_authorized_keys(), text.as_bytes(), 0o644, None)
}

/// Add keys, keeping those already there; returns the keys that were new.
pub fn install(paths: &Paths, keys: &[String]) -> Result<Vec<String>> {
    let file = paths.admin_authorized_keys();
    let existing = match fs::read_to_string(&file) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", file.display())),
    };
    let mut lines: Vec<String> = existing.lines().map(str::to_string).collect();
    let mut added = Vec::new();
    for k in keys {
        if !lines.iter().any(|l| key_id(l) == key_id(k)) {
            lines.push(k.clone());
            added.push(k.clone());
        }
    }
    if added.is_empty() && file.exists() {
        return Ok(added);
    }
    write(paths, &lines)?;
    Ok(added)
}

/// Remove these keys (compared by type and key data); other lines stay.
pub fn remove(paths: &Paths, keys: &[String]) -> Result<()> {
    let file = paths.admin_authorized_keys();
    let existing = match fs::read_to_string(&file) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", file.display())),
    };
    let gone: Vec<String> = keys.iter().map(|k| key_id(k)).collect();
    let lines: Vec<String> = existing
        .lines()
        .filter(|l| !gone.contains(&key_id(l)))
        .map(str::to_string)
        .collect();
    write(paths, &lines)
}

/// A key for people to check: `256 SHA256:… comment (ED25519)`, as `ssh-keygen -l` shows it.
/// A line this program cannot read is shown escaped.
pub fn describe(line: &str) -> String {
    match validate::ssh_key(line) {
        Ok(k) => k.describe(),
        Err(_) => format!("a line that is not a plain public key: {}", shown(line)),
    }
}

/// One console line per newly installed key.
pub fn announce(ctx: &mut Ctx, source: &str, keys: &[String]) {
    for k in keys {
        ctx.say(&format!(
            "setup: SSH key for admin installed from {source}: {}",
            describe(k)
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkeys::ED25519;

    #[test]
    fn keys_merge_without_duplicates_and_can_be_removed() {
        let d = tempfile::tempdir().unwrap();
        let paths = Paths::new(d.path());
        fs::create_dir_all(paths.authorized_keys_dir()).unwrap();
        fs::write(
            paths.admin_authorized_keys(),
            "ssh-ed25519 AAAAexisting old@host\n",
        )
        .unwrap();
        let again = ED25519.replace("test@example", "other-comment");
        assert_eq!(
            install(&paths, &[ED25519.into(), again.clone()]).unwrap(),
            vec![ED25519.to_string()]
        );
        assert!(install(&paths, &[ED25519.into()]).unwrap().is_empty());
        assert_eq!(
            fs::read_to_string(paths.admin_authorized_keys()).unwrap(),
            format!("ssh-ed25519 AAAAexisting old@host\n{ED25519}\n")
        );
        assert_eq!(installed(&paths).unwrap().len(), 2);
        remove(&paths, &["ssh-ed25519 AAAAexisting".to_string()]).unwrap();
        assert_eq!(installed(&paths).unwrap(), vec![ED25519.to_string()]);
    }

    #[test]
    fn descriptions_show_the_fingerprint_and_escape_the_rest() {
        assert_eq!(
            describe(ED25519),
            "256 SHA256:SwoXeapOouC3yJjFIRyTQx6wVyhKVPnPbHY2MG2Cepo test@example (ED25519)"
        );
        let odd = describe("from=\"10.0.0.1\" ssh-ed25519 AAAA \u{1b}[2J");
        assert!(!odd.chars().any(char::is_control), "{odd:?}");
    }
}
