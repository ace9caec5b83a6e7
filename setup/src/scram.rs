//! Prosody 0.12 `internal_hashed` accounts, written directly as Prosody's own files.
//!
//! Format checked against prosody 0.12.3 (mod_auth_internal_hashed.lua, util/datamanager.lua):
//! SCRAM-SHA-1 with `default_iteration_count` 10000, the salt is a random RFC 4122 v4 UUID
//! string, stored_key = H(HMAC(SaltedPassword, "Client Key")), server_key =
//! HMAC(SaltedPassword, "Server Key"), both lower-case hex. The account lives in
//! `<data>/<enc host>/accounts/<enc user>.dat` where enc() replaces every byte that is not
//! [A-Za-z0-9] by `%xx` (lower-case hex); directories 0750 and files 0640, owned by prosody.
//! Writing the file ourselves means no prosody process is needed during setup.

use crate::fsutil::{self, Owner};
use crate::paths::Paths;
use anyhow::{bail, Context, Result};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha1::{Digest, Sha1};
use std::fs;
use std::path::PathBuf;

pub const ITERATIONS: u32 = 10_000;

/// What Prosody stores instead of a password.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Credentials {
    pub salt: String,
    pub iteration_count: u32,
    pub stored_key: String,
    pub server_key: String,
}

fn hmac_sha1(key: &[u8], data: &[u8]) -> [u8; 20] {
    // HMAC accepts keys of any length, so new_from_slice cannot fail here.
    let mut m = <Hmac<Sha1> as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    m.update(data);
    m.finalize().into_bytes().into()
}

/// SaltedPassword := Hi(password, salt, i) (RFC 5802 section 3).
pub fn salted_password(password: &str, salt: &[u8], iterations: u32) -> [u8; 20] {
    let mut out = [0u8; 20];
    pbkdf2::pbkdf2_hmac::<Sha1>(password.as_bytes(), salt, iterations, &mut out);
    out
}

/// (ClientKey, StoredKey, ServerKey) for a salted password.
pub fn keys(salted: &[u8; 20]) -> ([u8; 20], [u8; 20], [u8; 20]) {
    let client_key = hmac_sha1(salted, b"Client Key");
    let stored_key: [u8; 20] = Sha1::digest(client_key).into();
    let server_key = hmac_sha1(salted, b"Server Key");
    (client_key, stored_key, server_key)
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Credentials for `password` with a given salt (Prosody uses the salt string's bytes).
pub fn credentials_with_salt(password: &str, salt: &str, iterations: u32) -> Credentials {
    let (_, stored, server) = keys(&salted_password(password, salt.as_bytes(), iterations));
    Credentials {
        salt: salt.to_string(),
        iteration_count: iterations,
        stored_key: hex(&stored),
        server_key: hex(&server),
    }
}

/// Fresh credentials with a random salt, as Prosody's create_user makes them.
pub fn new_credentials(password: &str) -> Result<Credentials> {
    Ok(credentials_with_salt(password, &random_uuid()?, ITERATIONS))
}

impl Credentials {
    /// True when `password` matches (used by tests and `hosts passwd` sanity checks).
    pub fn verify(&self, password: &str) -> bool {
        credentials_with_salt(password, &self.salt, self.iteration_count) == *self
    }
}

/// A random version-4 UUID string, like Prosody's util.uuid.generate.
pub fn random_uuid() -> Result<String> {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).map_err(|e| anyhow::anyhow!("cannot get random bytes: {e}"))?;
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex(&b);
    Ok(format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    ))
}

/// datamanager's encode(): every byte outside [A-Za-z0-9] becomes %xx.
pub fn encode_path(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02x}"));
        }
    }
    out
}

/// datamanager's decode(): %xx back to the byte.
pub fn decode_path(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hexval = |b: u8| (b as char).to_digit(16);
            if let (Some(h), Some(l)) = (hexval(bytes[i + 1]), hexval(bytes[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Prosody's account store for one virtual host.
pub struct AccountStore {
    dir: PathBuf,
    owner: Option<Owner>,
}

impl AccountStore {
    /// The store for `host` under the root's /var/lib/prosody, owned by the prosody user.
    pub fn open(paths: &Paths, host: &str) -> Result<Self> {
        let passwd = paths.etc_passwd();
        let owner = fsutil::lookup_user(&passwd, "prosody")?;
        if owner.is_none() && passwd.exists() {
            bail!(
                "the user \"prosody\" does not exist in {}; is the prosody package installed?",
                paths.display(&passwd)
            );
        }
        Ok(AccountStore {
            dir: paths
                .prosody_data()
                .join(encode_path(host))
                .join("accounts"),
            owner,
        })
    }

    pub fn path(&self, user: &str) -> PathBuf {
        self.dir.join(format!("{}.dat", encode_path(user)))
    }

    /// Create or replace an account (atomic: temp file + rename, like Prosody itself).
    pub fn write(&self, user: &str, c: &Credentials) -> Result<()> {
        let data_dir = self.dir.parent().and_then(|p| p.parent());
        if let Some(d) = data_dir {
            if !d.exists() {
                fsutil::ensure_dir(d, 0o750, self.owner)?;
            }
        }
        for d in [self.dir.parent(), Some(self.dir.as_path())]
            .into_iter()
            .flatten()
        {
            if !d.exists() {
                fsutil::ensure_dir(d, 0o750, self.owner)?;
            }
        }
        let text = format!(
            "return {{\n\t[\"iteration_count\"] = {};\n\t[\"salt\"] = {};\n\t[\"server_key\"] = {};\n\t[\"stored_key\"] = {};\n}};\n",
            c.iteration_count,
            lua_string(&c.salt),
            lua_string(&c.server_key),
            lua_string(&c.stored_key)
        );
        fsutil::atomic_write(&self.path(user), text.as_bytes(), 0o640, self.owner)
    }

    /// Read an account's credentials (None when the account does not exist).
    pub fn read(&self, user: &str) -> Result<Option<Credentials>> {
        let p = self.path(user);
        let text = match fs::read_to_string(&p) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", p.display())),
        };
        parse_account(&text)
            .map(Some)
            .map_err(|why| anyhow::anyhow!("{}: {why}", p.display()))
    }

    pub fn exists(&self, user: &str) -> bool {
        self.path(user).exists()
    }

    /// Delete an account; returns false when it did not exist.
    pub fn delete(&self, user: &str) -> Result<bool> {
        fsutil::remove_if_exists(&self.path(user))
    }

    /// User names of all accounts, sorted.
    pub fn list(&self) -> Result<Vec<String>> {
        let rd = match fs::read_dir(&self.dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e).with_context(|| format!("cannot list {}", self.dir.display())),
        };
        let mut names = Vec::new();
        for entry in rd {
            let entry = entry.with_context(|| format!("cannot list {}", self.dir.display()))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(stem) = name.strip_suffix(".dat") {
                names.push(decode_path(stem));
            }
        }
        names.sort();
        Ok(names)
    }
}

/// The credentials in the text of an account file as [`AccountStore::write`] and Prosody write
/// it; an error says what is missing.
pub fn parse_account(text: &str) -> Result<Credentials, String> {
    let field = |k: &str| -> Option<String> {
        text.lines().find_map(|l| {
            let l = l.trim();
            let rest = l.strip_prefix(&format!("[\"{k}\"] = "))?;
            Some(rest.trim_end_matches(';').trim_matches('"').to_string())
        })
    };
    match (
        field("salt"),
        field("iteration_count"),
        field("stored_key"),
        field("server_key"),
    ) {
        (Some(salt), Some(i), Some(stored_key), Some(server_key)) => Ok(Credentials {
            salt,
            iteration_count: i
                .parse()
                .map_err(|_| "its iteration_count is not a number".to_string())?,
            stored_key,
            server_key,
        }),
        _ => Err("this is not a hashed Prosody account".into()),
    }
}

/// A Lua string literal (our values are hex and UUIDs, but never trust that).
fn lua_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\{:03}", c as u32))
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use appliance_spec::validate::base64_decode;

    #[test]
    fn rfc5802_vector() {
        // RFC 5802 section 5: user "user", password "pencil", salt QSXCR+Q6sek8bf92, i=4096.
        let salt = base64_decode("QSXCR+Q6sek8bf92").unwrap();
        let salted = salted_password("pencil", &salt, 4096);
        assert_eq!(hex(&salted), "1d96ee3a529b5a5f9e47c01f229a2cb8a6e15f7d");
        let (client_key, stored_key, server_key) = keys(&salted);
        assert_eq!(hex(&client_key), "e234c47bf6c36696dd6d852b99aaa2ba26555728");
        assert_eq!(hex(&stored_key), "e9d94660c39d65c38fbad91c358f14da0eef2bd6");
        assert_eq!(hex(&server_key), "0fe09258b3ac852ba502cc62ba903eaacdbf7d31");
        // Check the final exchange of the RFC too: ClientProof and ServerSignature.
        let auth_message = "n=user,r=fyko+d2lbbFgONRv9qkxdawL,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,s=QSXCR+Q6sek8bf92,i=4096,c=biws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j";
        let sig = hmac_sha1(&stored_key, auth_message.as_bytes());
        let proof: Vec<u8> = client_key.iter().zip(sig).map(|(a, b)| a ^ b).collect();
        assert_eq!(
            proof,
            base64_decode("v0X8v3Bz2T0CJGbJQyF0X+HI4Ts=").unwrap()
        );
        let server_sig = hmac_sha1(&server_key, auth_message.as_bytes());
        assert_eq!(
            server_sig.to_vec(),
            base64_decode("rmF9pqV8S7suAoZWja4dJRkFsKQ=").unwrap()
        );
    }

    #[test]
    fn matches_prosodyctl_register() {
        // Made on Debian 12 with `prosodyctl register alice meet.localhost Secret-pass-123`.
        let c = credentials_with_salt(
            "Secret-pass-123",
            "e88f1221-149e-4079-b9b3-e0d38d5eeaf5",
            10000,
        );
        assert_eq!(c.stored_key, "965eaecdea00256457d535f09becf0ee76d677ae");
        assert_eq!(c.server_key, "2e03456d5409c28470c967081341231d6a87a6a4");
        assert!(c.verify("Secret-pass-123"));
        assert!(!c.verify("Secret-pass-124"));
    }

    #[test]
    fn uuid_shape() {
        let u = random_uuid().unwrap();
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "4");
        assert!("89ab".contains(&u[19..20]));
        assert_ne!(u, random_uuid().unwrap());
    }

    #[test]
    fn path_encoding() {
        assert_eq!(encode_path("meet.example.org"), "meet%2eexample%2eorg");
        assert_eq!(encode_path("a_b-c"), "a%5fb%2dc");
        assert_eq!(decode_path("meet%2eexample%2eorg"), "meet.example.org");
        assert_eq!(decode_path("a%5fb%2dc"), "a_b-c");
        assert_eq!(decode_path("bad%zz%"), "bad%zz%");
    }

    #[test]
    fn account_roundtrip() {
        let d = tempfile::tempdir().unwrap();
        let paths = Paths::new(d.path());
        let store = AccountStore::open(&paths, "meet.localhost").unwrap();
        let c = new_credentials("Tulip-Harbor-42").unwrap();
        store.write("bob.smith", &c).unwrap();
        let p = d
            .path()
            .join("var/lib/prosody/meet%2elocalhost/accounts/bob%2esmith.dat");
        let text = fs::read_to_string(&p).unwrap();
        assert!(
            text.starts_with("return {\n\t[\"iteration_count\"] = 10000;\n"),
            "{text}"
        );
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o640
        );
        assert_eq!(store.read("bob.smith").unwrap().unwrap(), c);
        assert_eq!(store.list().unwrap(), vec!["bob.smith"]);
        assert!(store.delete("bob.smith").unwrap());
        assert!(!store.delete("bob.smith").unwrap());
        assert!(store.read("bob.smith").unwrap().is_none());
        assert!(store.list().unwrap().is_empty());
    }

    #[test]
    fn missing_prosody_user_is_an_error() {
        let d = tempfile::tempdir().unwrap();
        fs::create_dir_all(d.path().join("etc")).unwrap();
        fs::write(d.path().join("etc/passwd"), "root:x:0:0::/root:/bin/sh\n").unwrap();
        let e = AccountStore::open(&Paths::new(d.path()), "x.org")
            .err()
            .unwrap();
        assert!(e.to_string().contains("prosody"));
    }

    #[test]
    fn lua_strings_escaped() {
        assert_eq!(lua_string("a\"b\\c\n"), "\"a\\\"b\\\\c\\010\"");
    }
}
