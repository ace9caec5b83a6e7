//! Signatures: ed25519 keys and OpenSSH's SSHSIG format, the format `ssh-keygen -Y sign` writes
//! and `ssh-keygen -Y verify` checks. Anyone with OpenSSH (every Linux and macOS machine) can
//! check an image's checksums or an update bundle without this project's tools.
//!
//! A signature covers a small document (`SHA256SUMS`, an update bundle's `bundle.json`, a
//! channel's `index.json`) that lists the SHA-256 of everything else, and names its purpose as
//! the SSHSIG namespace, so a signature made for one purpose is refused for another.

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};
use ssh_key::{PublicKey, SshSig};

/// Namespace of the signatures on update bundles and update channels.
pub const NAMESPACE_UPDATE: &str = "appliance-update";
/// Namespace of the signature on a build's `SHA256SUMS`.
pub const NAMESPACE_RELEASE: &str = "appliance-release";

/// Public keys that signatures are checked against.
#[derive(Debug, Clone, Default)]
pub struct TrustedKeys {
    keys: Vec<PublicKey>,
}

impl TrustedKeys {
    /// Reads OpenSSH public key lines (`ssh-ed25519 AAAA... comment`); blank lines and `#`
    /// comments are skipped. Only ed25519 keys are accepted. `origin` names the text in errors.
    pub fn parse(text: &str, origin: &str) -> Result<TrustedKeys> {
        let mut keys = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let key = PublicKey::from_openssh(line).map_err(|e| {
                anyhow::anyhow!("{origin}, line {}: not an OpenSSH public key ({e})", n + 1)
            })?;
            if key.algorithm() != ssh_key::Algorithm::Ed25519 {
                bail!(
                    "{origin}, line {}: a {} key; signing keys are ed25519 (`appliance key generate`)",
                    n + 1,
                    key.algorithm()
                );
            }
            keys.push(key);
        }
        if keys.is_empty() {
            bail!("{origin} holds no public key");
        }
        Ok(TrustedKeys { keys })
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The fingerprints of the keys, as `ssh-keygen -l` prints them.
    pub fn fingerprints(&self) -> Vec<String> {
        self.keys.iter().map(fingerprint).collect()
    }

    /// Checks that `signature` (an armored SSHSIG) is a signature over `message` for
    /// `namespace` by one of the keys; returns that key's fingerprint.
    pub fn verify(&self, namespace: &str, message: &[u8], signature: &[u8]) -> Result<String> {
        let sig = SshSig::from_pem(signature)
            .map_err(|e| anyhow::anyhow!("the signature is not an SSH signature ({e})"))?;
        if sig.namespace() != namespace {
            bail!(
                "the signature is for {:?}, not {namespace:?}: it was made for something else",
                sig.namespace()
            );
        }
        let Some(key) = self.keys.iter().find(|k| k.key_data() == sig.public_key()) else {
            bail!(
                "the signature was made with a key that is not trusted here ({}); trusted: {}",
                key_data_fingerprint(sig.public_key()),
                self.fingerprints().join(", ")
            );
        };
        key.verify(namespace, message, &sig).map_err(|_| {
            anyhow::anyhow!(
                "the signature does not match the signed file: it was changed after signing"
            )
        })?;
        Ok(fingerprint(key))
    }
}

/// `SHA256:<base64>`, as `ssh-keygen -l` prints it.
pub fn fingerprint(key: &PublicKey) -> String {
    key_data_fingerprint(key.key_data())
}

fn key_data_fingerprint(data: &ssh_key::public::KeyData) -> String {
    data.fingerprint(ssh_key::HashAlg::Sha256).to_string()
}

/// The SHA-256 of some bytes as lower-case hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The SHA-256 of a file as lower-case hex, read in pieces.
pub fn sha256_file(path: &std::path::Path) -> Result<String> {
    use std::io::Read;
    let mut f =
        std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    // Made with `ssh-keygen -t ed25519` and `ssh-keygen -Y sign -n appliance-release`.
    const PUBLIC: &str = include_str!("../testdata/signing.pub");
    const MESSAGE: &[u8] = include_bytes!("../testdata/SHA256SUMS");
    const SIGNATURE: &[u8] = include_bytes!("../testdata/SHA256SUMS.sig");
    const OTHER_PUBLIC: &str = include_str!("../testdata/other.pub");

    #[test]
    fn a_signature_by_ssh_keygen_verifies() {
        let keys = TrustedKeys::parse(PUBLIC, "signing.pub").unwrap();
        let fp = keys.verify(NAMESPACE_RELEASE, MESSAGE, SIGNATURE).unwrap();
        assert!(fp.starts_with("SHA256:"), "{fp}");
    }

    #[test]
    fn wrong_namespace_key_or_content_is_refused() {
        let keys = TrustedKeys::parse(PUBLIC, "signing.pub").unwrap();
        let e = keys
            .verify(NAMESPACE_UPDATE, MESSAGE, SIGNATURE)
            .unwrap_err();
        assert!(e.to_string().contains("made for something else"), "{e}");
        let mut changed = MESSAGE.to_vec();
        changed[0] ^= 1;
        let e = keys
            .verify(NAMESPACE_RELEASE, &changed, SIGNATURE)
            .unwrap_err();
        assert!(e.to_string().contains("changed after signing"), "{e}");
        let other = TrustedKeys::parse(OTHER_PUBLIC, "other.pub").unwrap();
        let e = other
            .verify(NAMESPACE_RELEASE, MESSAGE, SIGNATURE)
            .unwrap_err();
        assert!(e.to_string().contains("not trusted"), "{e}");
        assert!(keys.verify(NAMESPACE_RELEASE, MESSAGE, b"garbage").is_err());
    }

    #[test]
    fn only_ed25519_public_keys_are_accepted() {
        let rsa = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAAAgQDWfElPyfEopIwi9a3aU/eFQyGuHIBEad8gZn/ZGXa3nHo1k3+VcP5RiEKdsvPhUf09sCQA3dMK0Ky+kzZtaaXWvpdbXnmckMxJAhe14kd7BHJbHNUeAVMi2mdNv9A7/1bMHqNuSy5wMhmMYMpmmWrIC5gj04yQ4z/zAqbPbCzKdQ== x";
        let e = TrustedKeys::parse(rsa, "k.pub").unwrap_err();
        assert!(e.to_string().contains("ed25519"), "{e}");
        assert!(TrustedKeys::parse("# nothing\n", "k.pub").is_err());
        assert!(TrustedKeys::parse("ssh-ed25519 not-base64", "k.pub").is_err());
    }
}
