//! The first-boot seed file (`appliance-setup.toml` on the ESP, `[firstboot]` in
//! appliance.toml, and the wizard's defaults): its schema and the checks of every value.
//!
//! The builder checks `[firstboot]` with the same rules the machine applies, so a mistake stops
//! the build instead of showing up at the machine's console. A seed may hold host passwords in
//! clear: they must never reach a log, a hash or an identifier.

use crate::validate;
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

pub const LETSENCRYPT_DIRECTORY: &str = "https://acme-v02.api.letsencrypt.org/directory";
pub const LETSENCRYPT_TERMS: &str = "https://letsencrypt.org/repository/";
pub const DEFAULT_TIMEZONE: &str = "UTC";

/// Every key is optional: a partial seed only fills in the wizard's defaults.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Seed {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ssh_authorized_keys: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<SeedHost>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub letsencrypt: Option<LetsEncrypt>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub power_off: Option<PowerOff>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeedHost {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LetsEncrypt {
    /// Absent or empty: self-signed certificate only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(default)]
    pub accept_terms: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub directory: Option<String>,
    /// PEM certificate trusted for `directory` (test CAs such as Pebble).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_certificate: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PowerOff {
    /// 0 = never.
    #[serde(default)]
    pub idle_minutes: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub daily_at: Option<String>,
}

/// A seed whose every present value passed validation (values normalised).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ValidSeed(pub Seed);

impl Seed {
    /// Parse seed TOML; `origin` names the file in messages.
    pub fn parse(text: &str, origin: &str) -> Result<Seed> {
        toml::from_str(text).map_err(|e| anyhow::anyhow!("{origin}: {}", e.to_string().trim_end()))
    }

    pub fn load(path: &Path) -> Result<Seed> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        Seed::parse(&text, &path.display().to_string())
    }

    /// Complete = can be applied without asking anything: a domain, SSH keys, and hosts with
    /// passwords.
    pub fn is_complete(&self) -> bool {
        // Without an SSH key nobody could log in to manage the machine afterwards.
        self.domain.as_deref().is_some_and(|d| !d.trim().is_empty())
            && !self.ssh_authorized_keys.is_empty()
            && !self.hosts.is_empty()
            && self.hosts.iter().all(|h| h.password.is_some())
    }

    /// Validate every value that is present; errors name the file and the key.
    pub fn validate(&self, origin: &str, zoneinfo: &Path) -> Result<ValidSeed> {
        let mut errors: Vec<String> = Vec::new();
        let mut err = |key: &str, msg: String| errors.push(format!("{origin}: `{key}`: {msg}"));
        let mut out = self.clone();
        if let Some(d) = &self.domain {
            match validate::domain(d) {
                Ok(d) => out.domain = Some(d),
                Err(m) => err("domain", m),
            }
        }
        if let Some(tz) = &self.timezone {
            match validate::timezone(tz, zoneinfo) {
                Ok(tz) => out.timezone = Some(tz),
                Err(m) => err("timezone", m),
            }
        }
        for (i, k) in self.ssh_authorized_keys.iter().enumerate() {
            match validate::ssh_public_key(k) {
                Ok(k) => out.ssh_authorized_keys[i] = k,
                Err(m) => err(&format!("ssh_authorized_keys[{i}]"), m),
            }
        }
        let domain = out.domain.clone().unwrap_or_default();
        let mut seen = Vec::new();
        for (i, h) in self.hosts.iter().enumerate() {
            match validate::host_name(&h.name) {
                Ok(n) => {
                    if seen.contains(&n) {
                        err(
                            &format!("hosts[{i}].name"),
                            format!("the host \"{n}\" is listed twice."),
                        );
                    }
                    seen.push(n.clone());
                    out.hosts[i].name = n;
                }
                Err(m) => err(&format!("hosts[{i}].name"), m),
            }
            if let Some(pw) = &h.password {
                if let Err(m) = validate::password(pw, &out.hosts[i].name, &domain) {
                    err(&format!("hosts[{i}].password"), m);
                }
            }
        }
        if let Some(le) = &self.letsencrypt {
            let email = le.email.as_deref().map(str::trim).filter(|e| !e.is_empty());
            let mut le_out = le.clone();
            le_out.email = None;
            if let Some(e) = email {
                match validate::email(e) {
                    Ok(e) => le_out.email = Some(e),
                    Err(m) => err("letsencrypt.email", m),
                }
                if !le.accept_terms {
                    err("letsencrypt.accept_terms", format!("must be true when an e-mail address is given: it says you accept the certificate authority's terms ({LETSENCRYPT_TERMS})."));
                }
            }
            if let Some(dir) = &le.directory {
                if !(dir.starts_with("https://") || dir.starts_with("http://"))
                    || dir.contains(char::is_whitespace)
                {
                    err("letsencrypt.directory", "must be the URL of an ACME directory, such as https://acme-v02.api.letsencrypt.org/directory.".into());
                }
            }
            if let Some(ca) = &le.ca_certificate {
                if !ca.contains("-----BEGIN CERTIFICATE-----") {
                    err("letsencrypt.ca_certificate", "must be a PEM certificate (text starting with -----BEGIN CERTIFICATE-----).".into());
                }
            }
            out.letsencrypt = Some(le_out);
        }
        if let Some(p) = &self.power_off {
            let mut p_out = p.clone();
            if let Err(m) = validate::idle_minutes(p.idle_minutes) {
                err("power_off.idle_minutes", m);
            }
            if let Some(t) = &p.daily_at {
                match validate::time_of_day(t) {
                    Ok(t) => p_out.daily_at = Some(t),
                    Err(m) => err("power_off.daily_at", m),
                }
            }
            out.power_off = Some(p_out);
        }
        if errors.is_empty() {
            Ok(ValidSeed(out))
        } else {
            anyhow::bail!("{}", errors.join("\n"))
        }
    }

    /// The same values without any password: safe to keep on disk as wizard defaults.
    pub fn without_passwords(&self) -> Seed {
        let mut s = self.clone();
        for h in &mut s.hosts {
            h.password = None;
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validate::tests::ED25519;

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
    fn complete_seed_validates_and_normalises() {
        let z = zoneinfo();
        let seed = Seed::parse(&full_seed(), "appliance-setup.toml").unwrap();
        assert!(seed.is_complete());
        let v = seed.validate("appliance-setup.toml", z.path()).unwrap();
        assert_eq!(v.0.domain.as_deref(), Some("meet.example.org"));
        assert_eq!(
            v.0.power_off.as_ref().unwrap().daily_at.as_deref(),
            Some("07:30")
        );
    }

    #[test]
    fn partial_seeds_are_not_complete() {
        assert!(!Seed::parse("domain = \"meet.example.org\"", "f")
            .unwrap()
            .is_complete());
        assert!(
            !Seed::parse("[[hosts]]\nname = \"a\"\npassword = \"x\"", "f")
                .unwrap()
                .is_complete()
        );
        let no_pw = "domain = \"meet.example.org\"\n[[hosts]]\nname = \"alice\"";
        assert!(!Seed::parse(no_pw, "f").unwrap().is_complete());
        assert!(!Seed::default().is_complete());
    }

    #[test]
    fn unknown_key_is_named() {
        let e = Seed::parse("domian = \"meet.example.org\"", "appliance-setup.toml")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("appliance-setup.toml:"), "{e}");
        assert!(e.contains("domian"), "{e}");
        let e = Seed::parse("[letsencrypt]\nmail = \"a@b.org\"", "seed")
            .unwrap_err()
            .to_string();
        assert!(e.contains("mail"), "{e}");
    }

    #[test]
    fn wrong_type_is_located() {
        let e = Seed::parse("domain = 5", "appliance-setup.toml")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("appliance-setup.toml") && e.contains("domain = 5"),
            "{e}"
        );
    }

    #[test]
    fn invalid_values_name_their_key() {
        let z = zoneinfo();
        let text = r#"
domain = "localhost"
timezone = "Mars/Olympus"
ssh_authorized_keys = ["ssh-ed25519 AAAA"]
[[hosts]]
name = "alice"
password = "short"
[[hosts]]
name = "Alice"
[letsencrypt]
email = "admin@example.org"
[power_off]
idle_minutes = 20000
daily_at = "25:00"
"#;
        let e = Seed::parse(text, "seed.toml")
            .unwrap()
            .validate("seed.toml", z.path())
            .unwrap_err()
            .to_string();
        for key in [
            "`domain`",
            "`timezone`",
            "`ssh_authorized_keys[0]`",
            "`hosts[0].password`",
            "`hosts[1].name`",
            "`letsencrypt.accept_terms`",
            "`power_off.idle_minutes`",
            "`power_off.daily_at`",
        ] {
            assert!(
                e.contains(&format!("seed.toml: {key}")),
                "{key} missing in:\n{e}"
            );
        }
    }

    #[test]
    fn without_passwords_drops_them() {
        let seed = Seed::parse(&full_seed(), "f").unwrap();
        let safe = seed.without_passwords();
        assert_eq!(safe.hosts[0].password, None);
        assert!(!toml::to_string(&safe).unwrap().contains("Tulip"));
        assert_eq!(safe.domain.as_deref(), Some("Meet.Example.org"));
    }
}
