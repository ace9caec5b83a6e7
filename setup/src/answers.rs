//! The confirmed answers (`/data/appliance/answers.toml`), made from a complete seed or from
//! the wizard. The seed file's schema and checks are in [`appliance_spec::seed`].
//!
//! The seed may hold host passwords in clear; answers never do: by the time answers are
//! stored, each password has become Prosody SCRAM credentials.

use crate::fsutil;
use crate::scram::{self, Credentials};
use anyhow::{Context, Result};
use appliance_spec::seed::{LetsEncrypt, Seed, ValidSeed, DEFAULT_TIMEZONE, LETSENCRYPT_DIRECTORY};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Confirmed answers, as stored in /data/appliance/answers.toml.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Answers {
    pub domain: String,
    pub timezone: String,
    #[serde(default)]
    pub ssh_authorized_keys: Vec<String>,
    pub hosts: Vec<HostAnswer>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub letsencrypt: Option<AcmeAnswers>,
    #[serde(default)]
    pub power_off: PowerOffAnswers,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostAnswer {
    pub name: String,
    pub scram: Credentials,
}

/// Present only when a certificate from the ACME CA is wanted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AcmeAnswers {
    pub email: String,
    pub directory: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_certificate: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PowerOffAnswers {
    pub idle_minutes: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub daily_at: Option<String>,
}

/// Turns a complete, validated seed into answers (passwords become SCRAM credentials).
pub fn from_seed(seed: ValidSeed) -> Result<Answers> {
    let s = seed.0;
    let domain = s
        .domain
        .clone()
        .context("the seed has no `domain`, so it cannot be applied without questions")?;
    let mut hosts = Vec::new();
    for h in &s.hosts {
        let pw = h
            .password
            .as_deref()
            .with_context(|| format!("the host \"{}\" has no `password`", h.name))?;
        hosts.push(HostAnswer {
            name: h.name.clone(),
            scram: scram::new_credentials(pw)?,
        });
    }
    anyhow::ensure!(!hosts.is_empty(), "the seed lists no `hosts`");
    let power = s.power_off.clone().unwrap_or_default();
    Ok(Answers {
        domain,
        timezone: s
            .timezone
            .clone()
            .unwrap_or_else(|| DEFAULT_TIMEZONE.into()),
        ssh_authorized_keys: s.ssh_authorized_keys.clone(),
        hosts,
        letsencrypt: acme_answers(s.letsencrypt.as_ref()),
        power_off: PowerOffAnswers {
            idle_minutes: u32::try_from(power.idle_minutes).unwrap_or(0),
            daily_at: power.daily_at,
        },
    })
}

/// ACME settings only when an e-mail was given and the terms accepted.
pub fn acme_answers(le: Option<&LetsEncrypt>) -> Option<AcmeAnswers> {
    let le = le?;
    let email = le.email.clone().filter(|e| !e.trim().is_empty())?;
    if !le.accept_terms {
        return None;
    }
    Some(AcmeAnswers {
        email,
        directory: le
            .directory
            .clone()
            .unwrap_or_else(|| LETSENCRYPT_DIRECTORY.into()),
        ca_certificate: le.ca_certificate.clone(),
    })
}

impl Answers {
    pub fn load(path: &Path) -> Result<Answers> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        toml::from_str(&text)
            .map_err(|e| anyhow::anyhow!("{}: {}", path.display(), e.to_string().trim_end()))
    }

    /// Store with mode 0600: the SCRAM credentials are not secret like a password, but they
    /// still allow an offline guessing attack.
    pub fn save(&self, path: &Path) -> Result<()> {
        let body = toml::to_string(self).context("cannot serialise the answers")?;
        let text = format!("# Confirmed setup answers, written by appliance-admin. Host passwords are stored\n# only as SCRAM credentials.\n{body}");
        fsutil::atomic_write(path, text.as_bytes(), 0o600, None)
    }
}

/// Save wizard defaults (a seed without passwords), mode 0600.
pub fn save_defaults(seed: &Seed, path: &Path) -> Result<()> {
    let body =
        toml::to_string(&seed.without_passwords()).context("cannot serialise the defaults")?;
    fsutil::atomic_write(path, body.as_bytes(), 0o600, None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkeys::ED25519;

    fn zoneinfo() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("Europe")).unwrap();
        std::fs::write(d.path().join("Europe/Berlin"), "TZif").unwrap();
        std::fs::write(d.path().join("UTC"), "TZif").unwrap();
        d
    }

    fn full_seed() -> String {
        format!(
            r#"
domain = "Meet.Example.org"
timezone = "Europe/Berlin"
ssh_authorized_keys = ["{ED25519}"]
[[hosts]]
name = "alice"
password = "Tulip-Harbor-42"
[letsencrypt]
email = "admin@example.org"
accept_terms = true
[power_off]
idle_minutes = 30
daily_at = "7:30"
"#
        )
    }

    #[test]
    fn complete_seed_becomes_answers() {
        let z = zoneinfo();
        let seed = Seed::parse(&full_seed(), "appliance-setup.toml").unwrap();
        assert!(seed.is_complete());
        let v = seed.validate("appliance-setup.toml", z.path()).unwrap();
        let a = from_seed(v).unwrap();
        assert_eq!(a.domain, "meet.example.org");
        assert_eq!(a.timezone, "Europe/Berlin");
        assert_eq!(a.hosts[0].name, "alice");
        assert!(a.hosts[0].scram.verify("Tulip-Harbor-42"));
        assert_eq!(
            a.letsencrypt.as_ref().unwrap().directory,
            LETSENCRYPT_DIRECTORY
        );
        assert_eq!(a.power_off.daily_at.as_deref(), Some("07:30"));
        // Round trip through the file, and no clear password in it.
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("answers.toml");
        a.save(&p).unwrap();
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(!text.contains("Tulip-Harbor-42"));
        assert_eq!(Answers::load(&p).unwrap(), a);
    }

    #[test]
    fn empty_email_means_self_signed() {
        let z = zoneinfo();
        let text = "domain = \"meet.localhost\"\n[[hosts]]\nname = \"a\"\npassword = \"Tulip-Harbor-42\"\n[letsencrypt]\nemail = \"\"";
        let a = Seed::parse(text, "f")
            .unwrap()
            .validate("f", z.path())
            .unwrap();
        let a = from_seed(a).unwrap();
        assert!(a.letsencrypt.is_none());
        assert_eq!(a.timezone, "UTC");
    }
}
