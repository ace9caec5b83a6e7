//! Random service secrets shared by prosody, jicofo, the videobridge and coturn.

use crate::fsutil;
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Secrets {
    pub jvb_password: String,
    pub focus_password: String,
    pub turn_secret: String,
}

/// A random [A-Za-z0-9]{len} string (rejection sampling keeps it uniform).
pub fn random_token(len: usize) -> Result<String> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut out = String::with_capacity(len);
    let mut buf = [0u8; 64];
    while out.len() < len {
        getrandom::fill(&mut buf).map_err(|e| anyhow::anyhow!("cannot get random bytes: {e}"))?;
        for b in buf {
            // 248 = 4 * 62: bytes above would favour the first letters.
            if b < 248 && out.len() < len {
                out.push(ALPHABET[(b % 62) as usize] as char);
            }
        }
    }
    Ok(out)
}

impl Secrets {
    pub fn generate() -> Result<Secrets> {
        Ok(Secrets {
            jvb_password: random_token(32)?,
            focus_password: random_token(32)?,
            turn_secret: random_token(32)?,
        })
    }

    pub fn load(path: &Path) -> Result<Secrets> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {}", path.display(), e))
    }

    /// Keep existing secrets (services already use them); create them only once.
    pub fn load_or_create(path: &Path) -> Result<Secrets> {
        if path.exists() {
            return Secrets::load(path);
        }
        let s = Secrets::generate()?;
        let text = toml::to_string(&s).context("cannot serialise the secrets")?;
        fsutil::atomic_write(path, text.as_bytes(), 0o600, None)?;
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_alphanumeric_and_distinct() {
        let a = random_token(32).unwrap();
        assert_eq!(a.len(), 32);
        assert!(a.chars().all(|c| c.is_ascii_alphanumeric()));
        assert_ne!(a, random_token(32).unwrap());
    }

    #[test]
    fn created_once() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("secrets.toml");
        let a = Secrets::load_or_create(&p).unwrap();
        let b = Secrets::load_or_create(&p).unwrap();
        assert_eq!(a, b);
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
}
