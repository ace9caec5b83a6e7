//! The project's signing key: an ed25519 key in OpenSSH's format. It signs a build's
//! `SHA256SUMS` and its update bundles; the matching public key is what machines and people
//! check them against (`appliance verify`, `appliance-admin update apply`, or
//! `ssh-keygen -Y verify`; see docs/supply-chain.md).
//!
//! The private key never goes into an image or the repository: `appliance key generate`
//! writes a `.gitignore` beside it, and the build refuses a key inside a feature folder.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use ssh_key::{rand_core::OsRng, Algorithm, HashAlg, LineEnding, PrivateKey};

use crate::config::Config;

/// Names the private key file when `[signing] key` is not set.
pub const KEY_ENV: &str = "APPLIANCE_SIGNING_KEY";

pub struct SigningKey {
    key: PrivateKey,
    pub path: PathBuf,
}

impl SigningKey {
    /// Reads an unencrypted ed25519 private key in OpenSSH's format.
    pub fn load(path: &Path) -> Result<SigningKey> {
        let key = PrivateKey::read_openssh_file(path).map_err(|e| {
            anyhow::anyhow!(
                "cannot read the signing key {}: {e}; make one with `appliance key generate --out DIR`",
                path.display()
            )
        })?;
        if key.is_encrypted() {
            bail!(
                "the signing key {} is protected by a passphrase, which the build cannot type; \
                 keep an unencrypted copy on the build machine only (see docs/supply-chain.md)",
                path.display()
            );
        }
        if key.algorithm() != Algorithm::Ed25519 {
            bail!(
                "the signing key {} is a {} key; signing keys are ed25519 (`appliance key generate`)",
                path.display(),
                key.algorithm()
            );
        }
        Ok(SigningKey {
            key,
            path: path.to_path_buf(),
        })
    }

    /// An armored SSHSIG signature over `message` for `namespace`.
    pub fn sign(&self, namespace: &str, message: &[u8]) -> Result<Vec<u8>> {
        let sig = self
            .key
            .sign(namespace, HashAlg::Sha512, message)
            .context("signing")?;
        Ok(sig
            .to_pem(LineEnding::LF)
            .context("encoding the signature")?
            .into_bytes())
    }

    /// The public key, as an OpenSSH line.
    pub fn public_line(&self) -> Result<String> {
        Ok(self.key.public_key().to_openssh()?)
    }
}

/// The signing key the configuration names (`[signing] key`, else `$APPLIANCE_SIGNING_KEY`),
/// checked not to lie where it would end up in the image.
pub fn configured(config: &Config) -> Result<Option<SigningKey>> {
    let path = match (&config.signing.key, std::env::var_os(KEY_ENV)) {
        (Some(p), _) => config.resolve(p),
        (None, Some(p)) if !p.is_empty() => PathBuf::from(p),
        _ => return Ok(None),
    };
    let features = config.resolve(&config.features.dir);
    if let (Ok(key), Ok(features)) = (path.canonicalize(), features.canonicalize()) {
        if key.starts_with(&features) {
            bail!(
                "the signing key {} is inside {}, whose files go into the image; move it out",
                path.display(),
                features.display()
            );
        }
    }
    SigningKey::load(&path).map(Some)
}

/// Writes a new key pair `<dir>/<name>` (private, mode 0600) and `<dir>/<name>.pub`, and a
/// `.gitignore` that keeps the private key out of git. Refuses to overwrite a key.
pub fn generate(dir: &Path, name: &str, comment: &str) -> Result<(PathBuf, PathBuf)> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let private = dir.join(name);
    let public = dir.join(format!("{name}.pub"));
    for p in [&private, &public] {
        if p.exists() {
            bail!(
                "{} already exists; a new key would make every machine that trusts the old one refuse your updates. \
                 Remove it yourself if that is really what you want.",
                p.display()
            );
        }
    }
    let mut key = PrivateKey::random(&mut OsRng, Algorithm::Ed25519).context("making a key")?;
    key.set_comment(comment);
    // Written under a temporary name, so an interrupted run leaves no half key.
    let tmp = dir.join(format!(".{name}.partial"));
    key.write_openssh_file(&tmp, LineEnding::LF)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::write(&public, format!("{}\n", key.public_key().to_openssh()?))
        .with_context(|| format!("cannot write {}", public.display()))?;
    std::fs::rename(&tmp, &private)?;
    let ignore = dir.join(".gitignore");
    if !ignore.exists() {
        std::fs::write(
            &ignore,
            "# Private signing keys must never be committed; public keys may be.\n*\n!*.pub\n!.gitignore\n",
        )?;
    }
    Ok((private, public))
}

#[cfg(test)]
mod tests {
    use super::*;
    use appliance_spec::signature::{TrustedKeys, NAMESPACE_RELEASE};

    #[test]
    fn generated_keys_sign_and_verify_and_are_not_overwritten() {
        let d = tempfile::tempdir().unwrap();
        let (private, public) = generate(d.path(), "k", "test").unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&private).unwrap().permissions().mode();
        assert_eq!(
            mode & 0o077,
            0,
            "the private key is readable by others: {mode:o}"
        );
        let key = SigningKey::load(&private).unwrap();
        let sig = key.sign(NAMESPACE_RELEASE, b"hello").unwrap();
        let trusted =
            TrustedKeys::parse(&std::fs::read_to_string(&public).unwrap(), "k.pub").unwrap();
        trusted.verify(NAMESPACE_RELEASE, b"hello", &sig).unwrap();
        let e = generate(d.path(), "k", "test").unwrap_err();
        assert!(e.to_string().contains("already exists"), "{e}");
        assert!(std::fs::read_to_string(d.path().join(".gitignore"))
            .unwrap()
            .contains("!*.pub"));
    }

    #[test]
    fn ssh_keygen_verifies_our_signatures() {
        let Some(ssh_keygen) = crate::host::find_program("ssh-keygen") else {
            panic!(
                "ssh-keygen is needed: run `appliance doctor --install` (package openssh-client)"
            );
        };
        let d = tempfile::tempdir().unwrap();
        let (private, public) = generate(d.path(), "k", "test").unwrap();
        let key = SigningKey::load(&private).unwrap();
        let message = d.path().join("SHA256SUMS");
        std::fs::write(&message, "abc  file\n").unwrap();
        std::fs::write(
            d.path().join("SHA256SUMS.sig"),
            key.sign(NAMESPACE_RELEASE, b"abc  file\n").unwrap(),
        )
        .unwrap();
        let pubkey = std::fs::read_to_string(&public).unwrap();
        let allowed = d.path().join("allowed_signers");
        std::fs::write(
            &allowed,
            format!("appliance namespaces=\"{NAMESPACE_RELEASE}\" {pubkey}"),
        )
        .unwrap();
        let verify = |namespace: &str| {
            std::process::Command::new(&ssh_keygen)
                .args(["-Y", "verify", "-f"])
                .arg(&allowed)
                .args(["-I", "appliance", "-n", namespace, "-s"])
                .arg(d.path().join("SHA256SUMS.sig"))
                .stdin(std::fs::File::open(&message).unwrap())
                .output()
                .unwrap()
                .status
                .success()
        };
        assert!(verify(NAMESPACE_RELEASE));
        assert!(
            !verify("appliance-update"),
            "another namespace must be refused"
        );
    }
}
