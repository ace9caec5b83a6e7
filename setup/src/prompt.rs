//! The interactive setup wizard, over any reader/writer so tests can script it.
//!
//! Every answer is validated on the spot; a wrong answer is explained and asked again. Defaults
//! (from a partial seed or the previous round) are shown in brackets and taken on Enter.

use crate::answers::{AcmeAnswers, Answers, HostAnswer, PowerOffAnswers};
use crate::scram;
use crate::sshkeys;
use crate::term::EchoOff;
use anyhow::{bail, Result};
use appliance_spec::seed::{LetsEncrypt, PowerOff, Seed, SeedHost};
use appliance_spec::validate;
use std::io::{BufRead, Write};
use std::os::unix::io::RawFd;
use std::path::PathBuf;

pub struct Wizard<R: BufRead, W: Write> {
    input: R,
    out: W,
    /// Terminal to switch echo off on for passwords (None: scripted input).
    tty_fd: Option<RawFd>,
    zoneinfo: PathBuf,
    /// Keys already in /data/ssh/authorized_keys/admin (from the build, a seed or the cloud's
    /// metadata): shown, and kept unless the person says no.
    installed_keys: Vec<String>,
}

/// Confirmed answers, and the installed keys the person chose to remove (before the answers'
/// keys are added).
#[derive(Debug)]
pub struct Confirmed {
    pub answers: Answers,
    pub remove_keys: Vec<String>,
}

/// What the person confirmed (the password is only kept until it is hashed).
struct Round {
    domain: String,
    host: String,
    password: String,
    email: Option<String>,
    keys: Vec<String>,
    /// Remove the keys already installed.
    remove_installed: bool,
    timezone: String,
    idle_minutes: u32,
    daily_at: Option<String>,
}

impl<R: BufRead, W: Write> Wizard<R, W> {
    pub fn new(
        input: R,
        out: W,
        tty_fd: Option<RawFd>,
        zoneinfo: PathBuf,
        installed_keys: Vec<String>,
    ) -> Self {
        Wizard {
            input,
            out,
            tty_fd,
            zoneinfo,
            installed_keys,
        }
    }

    fn say(&mut self, s: &str) -> Result<()> {
        writeln!(self.out, "{s}")?;
        self.out.flush()?;
        Ok(())
    }

    /// One line of input without its line end; end of input aborts the wizard.
    fn read_line(&mut self) -> Result<String> {
        let mut line = String::new();
        if self.input.read_line(&mut line)? == 0 {
            bail!("the input ended before the setup was confirmed; nothing was changed");
        }
        Ok(line.trim_end_matches(['\n', '\r']).to_string())
    }

    fn ask_raw(&mut self, question: &str, default: Option<&str>) -> Result<String> {
        match default {
            Some(d) if !d.is_empty() => write!(self.out, "{question} [{d}]: ")?,
            _ => write!(self.out, "{question}: ")?,
        }
        self.out.flush()?;
        self.read_line()
    }

    /// Ask until `check` accepts; Enter takes the default when there is one.
    fn ask<T>(
        &mut self,
        question: &str,
        default: Option<&str>,
        check: impl Fn(&str) -> Result<T, String>,
    ) -> Result<T> {
        loop {
            let mut a = self.ask_raw(question, default)?;
            if a.trim().is_empty() {
                if let Some(d) = default {
                    a = d.to_string();
                }
            }
            match check(&a) {
                Ok(v) => return Ok(v),
                Err(m) => self.say(&format!("  {m}"))?,
            }
        }
    }

    fn yes_no(&mut self, question: &str, default_yes: bool) -> Result<bool> {
        let hint = if default_yes { "Y/n" } else { "y/N" };
        loop {
            write!(self.out, "{question} [{hint}]: ")?;
            self.out.flush()?;
            let a = self.read_line()?.trim().to_ascii_lowercase();
            match a.as_str() {
                "" => return Ok(default_yes),
                "y" | "yes" => return Ok(true),
                "n" | "no" => return Ok(false),
                _ => self.say("  Please answer y (yes) or n (no).")?,
            }
        }
    }

    /// A line typed without echo when on a terminal.
    fn secret(&mut self, question: &str) -> Result<String> {
        // Echo goes off before the prompt appears: someone (or a script) typing as soon as
        // they see it must not have the first characters shown.
        let _guard = self.tty_fd.and_then(EchoOff::new);
        write!(self.out, "{question}: ")?;
        self.out.flush()?;
        self.read_line()
    }

    fn password(&mut self, user: &str, domain: &str) -> Result<String> {
        loop {
            let p1 = self.secret(&format!(
                "Password for {user} (at least {} characters; not shown while typing)",
                validate::MIN_PASSWORD_LEN
            ))?;
            if let Err(m) = validate::password(&p1, user, domain) {
                self.say(&format!("  {m}"))?;
                continue;
            }
            let p2 = self.secret("Type the same password again")?;
            if p1 != p2 {
                self.say("  The two passwords are different; please type them again.")?;
                continue;
            }
            return Ok(p1);
        }
    }

    /// The keys to add, and whether the installed ones go.
    fn ssh_keys(&mut self, defaults: &[String]) -> Result<(Vec<String>, bool)> {
        self.say("")?;
        self.say("SSH public keys let you log in as \"admin\" for maintenance.")?;
        let installed = self.installed_keys.clone();
        let mut keep = true;
        if !installed.is_empty() {
            self.say("These keys can log in as admin now (compare the fingerprints with `ssh-keygen -l -f KEY.pub` on your computer):")?;
            for k in &installed {
                self.say(&format!("  {}", sshkeys::describe(k)))?;
            }
            keep = self.yes_no("Keep these keys?", true)?;
            if !keep {
                self.say("  They will be removed when you confirm the settings.")?;
            }
        }
        // Keys from a partial seed are installed already; offer only the others.
        let mut keys: Vec<String> = defaults
            .iter()
            .filter(|k| !installed.iter().any(|i| sshkeys::same_key(i, k)))
            .cloned()
            .collect();
        let present = if keep { installed.len() } else { 0 };
        self.say(
            "Paste one key per line (the contents of a .pub file, e.g. ~/.ssh/id_ed25519.pub)",
        )?;
        self.say("and finish with an empty line.")?;
        if present + keys.len() > 0 {
            self.say(&format!(
                "{} key(s) are already set up; an empty line keeps them.",
                present + keys.len()
            ))?;
        }
        loop {
            write!(self.out, "SSH key: ")?;
            self.out.flush()?;
            let line = self.read_line()?;
            if line.trim().is_empty() {
                if present + keys.len() > 0 {
                    return Ok((keys, !keep));
                }
                self.say("  At least one SSH key is needed: it is the only way to log in for maintenance.")?;
                continue;
            }
            match validate::ssh_public_key(&line) {
                Ok(k) => {
                    if !keys.contains(&k) {
                        keys.push(k);
                    }
                    self.say("  Key accepted. Paste another one, or press Enter to continue.")?;
                }
                Err(m) => self.say(&format!("  {m}"))?,
            }
        }
    }

    fn one_round(&mut self, d: &Seed) -> Result<Round> {
        self.say("")?;
        self.say("Setting up the meeting server. Press Enter to take the value in [brackets].")?;
        self.say("")?;
        let domain = self.ask(
            "Domain name people will use to reach the meetings (e.g. meet.example.org)",
            d.domain.as_deref(),
            validate::domain,
        )?;
        let host = self.ask(
            "User name of the first meeting host (hosts open rooms; guests join without an account)",
            d.hosts.first().map(|h| h.name.as_str()),
            validate::host_name,
        )?;
        let password = self.password(&host, &domain)?;

        let le_default = d.letsencrypt.as_ref().and_then(|l| l.email.clone());
        self.say("")?;
        self.say(
            "A certificate from Let's Encrypt makes browsers trust the site. It needs the domain",
        )?;
        self.say("name to point to this machine and port 80 to be reachable from the internet.")?;
        let email = self.ask(
            "E-mail address for Let's Encrypt (leave empty or type none for a self-signed certificate)",
            le_default.as_deref(),
            |s| {
                let t = s.trim();
                if t.is_empty() || t.eq_ignore_ascii_case("none") {
                    Ok(None)
                } else {
                    validate::email(t).map(Some)
                }
            },
        )?;
        let email = match email {
            Some(e) => {
                self.say(&format!(
                    "Let's Encrypt's terms of service: {}",
                    appliance_spec::seed::LETSENCRYPT_TERMS
                ))?;
                if self.yes_no("Do you accept these terms?", false)? {
                    Some(e)
                } else {
                    self.say("  Without accepting the terms no certificate can be requested; a self-signed certificate will be used.")?;
                    None
                }
            }
            None => None,
        };

        let (keys, remove_installed) = self.ssh_keys(&d.ssh_authorized_keys)?;
        let zoneinfo = self.zoneinfo.clone();
        self.say("")?;
        let timezone = self.ask(
            "Time zone (e.g. Europe/Berlin, America/New_York)",
            Some(
                d.timezone
                    .as_deref()
                    .unwrap_or(appliance_spec::seed::DEFAULT_TIMEZONE),
            ),
            |s| validate::timezone(s, &zoneinfo),
        )?;
        let idle_default = d
            .power_off
            .as_ref()
            .map_or(0, |p| p.idle_minutes)
            .to_string();
        let idle_minutes = self.ask(
            "Power off after how many minutes without any meeting? (0 = never)",
            Some(&idle_default),
            validate::idle_minutes_text,
        )?;
        let daily_default = d.power_off.as_ref().and_then(|p| p.daily_at.clone());
        let daily_at = self.ask(
            "Power off every day at (HH:MM, 24-hour; empty or none = no daily power-off)",
            daily_default.as_deref(),
            |s| {
                let t = s.trim();
                if t.is_empty() || t.eq_ignore_ascii_case("none") {
                    Ok(None)
                } else {
                    validate::time_of_day(t).map(Some)
                }
            },
        )?;
        Ok(Round {
            domain,
            host,
            password,
            email,
            keys,
            remove_installed,
            timezone,
            idle_minutes,
            daily_at,
        })
    }

    fn summary(&mut self, r: &Round) -> Result<()> {
        self.say("")?;
        self.say("Please check:")?;
        self.say(&format!("  Domain:            {}", r.domain))?;
        self.say(&format!("  First host:        {} (password set)", r.host))?;
        match &r.email {
            Some(e) => self.say(&format!("  Certificate:       Let's Encrypt, contact {e}"))?,
            None => self.say("  Certificate:       self-signed (browsers will warn)")?,
        }
        let installed = self.installed_keys.len();
        self.say(&format!(
            "  SSH keys:          {} new, {installed} already set up{}",
            r.keys.len(),
            if r.remove_installed && installed > 0 {
                " (to be removed)"
            } else {
                ""
            }
        ))?;
        self.say(&format!("  Time zone:         {}", r.timezone))?;
        let idle = if r.idle_minutes == 0 {
            "never".to_string()
        } else {
            format!("after {} minutes without a meeting", r.idle_minutes)
        };
        self.say(&format!("  Power off:         {idle}"))?;
        self.say(&format!(
            "  Daily power-off:   {}",
            r.daily_at.as_deref().unwrap_or("none")
        ))?;
        Ok(())
    }

    /// Ask everything, show a summary, and return confirmed answers. `claim` is called when the
    /// person confirms; returning false means another console confirmed first.
    pub fn run(&mut self, defaults: &Seed, claim: &dyn Fn() -> bool) -> Result<Option<Confirmed>> {
        let mut d = defaults.clone();
        loop {
            let r = self.one_round(&d)?;
            self.summary(&r)?;
            if self.yes_no("Apply these settings?", false)? {
                if !claim() {
                    self.say("Setup was already confirmed on another console; these answers are not used.")?;
                    return Ok(None);
                }
                let le = d.letsencrypt.clone().unwrap_or_default();
                let acme = r.email.clone().map(|email| AcmeAnswers {
                    email,
                    directory: le
                        .directory
                        .clone()
                        .unwrap_or_else(|| appliance_spec::seed::LETSENCRYPT_DIRECTORY.into()),
                    ca_certificate: le.ca_certificate.clone(),
                });
                let remove_keys = if r.remove_installed {
                    self.installed_keys.clone()
                } else {
                    Vec::new()
                };
                let answers = Answers {
                    domain: r.domain,
                    timezone: r.timezone,
                    ssh_authorized_keys: r.keys,
                    hosts: vec![HostAnswer {
                        name: r.host,
                        scram: scram::new_credentials(&r.password)?,
                    }],
                    letsencrypt: acme,
                    power_off: PowerOffAnswers {
                        idle_minutes: r.idle_minutes,
                        daily_at: r.daily_at,
                    },
                };
                return Ok(Some(Confirmed {
                    answers,
                    remove_keys,
                }));
            }
            self.say("Starting over; your answers are offered as defaults.")?;
            d = Seed {
                domain: Some(r.domain),
                timezone: Some(r.timezone),
                ssh_authorized_keys: r.keys,
                hosts: vec![SeedHost {
                    name: r.host,
                    password: None,
                }],
                letsencrypt: Some(LetsEncrypt {
                    email: r.email,
                    accept_terms: false,
                    ..d.letsencrypt.clone().unwrap_or_default()
                }),
                power_off: Some(PowerOff {
                    idle_minutes: r.idle_minutes as i64,
                    daily_at: r.daily_at,
                }),
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkeys::{ED25519, P256};
    use std::io::Cursor;

    fn zoneinfo() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("Europe")).unwrap();
        std::fs::write(d.path().join("Europe/Berlin"), "TZif").unwrap();
        std::fs::write(d.path().join("UTC"), "TZif").unwrap();
        d
    }

    fn run(
        script: &[&str],
        defaults: &Seed,
        installed: &[&str],
    ) -> (Result<Option<Confirmed>>, String) {
        let z = zoneinfo();
        let input = Cursor::new(script.iter().map(|l| format!("{l}\n")).collect::<String>());
        let mut out = Vec::new();
        let installed = installed.iter().map(|k| k.to_string()).collect();
        let r = Wizard::new(input, &mut out, None, z.path().to_path_buf(), installed)
            .run(defaults, &|| true);
        (r, String::from_utf8(out).unwrap())
    }

    #[test]
    fn bad_then_good_answers() {
        let script = [
            "192.168.0.1",      // domain: IP
            "meet.example.org", // domain ok
            "Alice Smith",      // host: space
            "alice",
            "short", // password too short
            "Tulip-Harbor-42",
            "Tulip-Harbor-43", // mismatch
            "Tulip-Harbor-42",
            "Tulip-Harbor-42",
            "not-an-email", // e-mail
            "admin@example.org",
            "maybe", // terms: not y/n
            "y",
            "",             // no keys yet: refused
            "ssh-rsa AAAA", // damaged key
            ED25519,
            "",
            "Mars/Base", // timezone
            "Europe/Berlin",
            "-3", // idle negative
            "45",
            "25:00",
            "22:15",
            "y",
        ];
        let (r, out) = run(&script, &Seed::default(), &[]);
        let a = r.unwrap().unwrap().answers;
        assert_eq!(a.domain, "meet.example.org");
        assert_eq!(a.hosts[0].name, "alice");
        assert!(a.hosts[0].scram.verify("Tulip-Harbor-42"));
        assert_eq!(a.letsencrypt.as_ref().unwrap().email, "admin@example.org");
        assert_eq!(a.ssh_authorized_keys, vec![ED25519.to_string()]);
        assert_eq!(a.timezone, "Europe/Berlin");
        assert_eq!(
            a.power_off,
            PowerOffAnswers {
                idle_minutes: 45,
                daily_at: Some("22:15".into())
            }
        );
        for msg in [
            "is an IP address",
            "contains \" \"",
            "needs at least 12",
            "two passwords are different",
            "has no @ sign",
            "Please answer y",
            "At least one SSH key is needed",
            "damaged",
            "no time zone called",
            "cannot be negative",
            "hours go from 00 to 23",
            "https://letsencrypt.org/repository/",
        ] {
            assert!(out.contains(msg), "missing {msg:?} in:\n{out}");
        }
        assert!(!out.contains("Tulip-Harbor-42"), "password never echoed");
        assert!(out.contains("Time zone (e.g. Europe/Berlin, America/New_York) [UTC]: "));
    }

    #[test]
    fn defaults_and_start_over() {
        let defaults = Seed {
            domain: Some("meet.localhost".into()),
            hosts: vec![SeedHost {
                name: "bob".into(),
                password: None,
            }],
            ssh_authorized_keys: vec![ED25519.into()],
            ..Seed::default()
        };
        let script = [
            "",
            "",
            "Violet-Ocean-Lamp",
            "Violet-Ocean-Lamp",
            "",
            "",
            "",
            "",
            "",  // first round
            "n", // start over
            "meet2.localhost",
            "",
            "Violet-Ocean-Lamp",
            "Violet-Ocean-Lamp",
            "none",
            "",
            "",
            "",
            "none",
            "y",
        ];
        let (r, out) = run(&script, &defaults, &[]);
        let a = r.unwrap().unwrap().answers;
        assert!(out.contains("[meet.localhost]"), "{out}");
        assert!(out.contains("Starting over"));
        assert!(out.contains("[meet2.localhost]") || a.domain == "meet2.localhost");
        assert_eq!(a.domain, "meet2.localhost");
        assert_eq!(a.hosts[0].name, "bob");
        assert!(a.letsencrypt.is_none());
        assert_eq!(a.ssh_authorized_keys, vec![ED25519.to_string()]);
        assert_eq!(a.timezone, "UTC");
        assert_eq!(a.power_off, PowerOffAnswers::default());
    }

    #[test]
    fn declining_terms_means_self_signed() {
        let script = [
            "meet.localhost",
            "alice",
            "Tulip-Harbor-42",
            "Tulip-Harbor-42",
            "a@example.org",
            "n",
            "", // keep the installed key
            "",
            "",
            "",
            "",
            "y",
        ];
        let (r, out) = run(&script, &Seed::default(), &[ED25519]);
        let c = r.unwrap().unwrap();
        assert!(c.answers.letsencrypt.is_none());
        assert!(c.remove_keys.is_empty());
        assert!(out.contains("self-signed certificate will be used"));
        assert!(out.contains("1 key(s) are already set up"));
    }

    #[test]
    fn installed_keys_are_listed_and_can_be_removed() {
        let from_metadata = format!("{} \u{1b}]0;evil\u{7}", &P256[..P256.rfind(' ').unwrap()]);
        let script = [
            "meet.localhost",
            "alice",
            "Tulip-Harbor-42",
            "Tulip-Harbor-42",
            "",
            "maybe", // keep? not y/n
            "n",     // remove the installed keys
            "",      // refused: no key left
            ED25519,
            "",
            "",
            "",
            "",
            "y",
        ];
        let (r, out) = run(&script, &Seed::default(), &[&from_metadata]);
        let c = r.unwrap().unwrap();
        assert_eq!(c.remove_keys, vec![from_metadata.clone()]);
        assert_eq!(c.answers.ssh_authorized_keys, vec![ED25519.to_string()]);
        // Listed with the fingerprint ssh-keygen -l shows, without the comment's escapes.
        assert!(
            out.contains(
                "  256 SHA256:g/hT7yqAmO/8i26YJxNUHrK4eLSLTLEA7Y8Z2GkvmmU no comment (ECDSA)\n"
            ),
            "{out}"
        );
        assert!(!out.contains('\u{1b}'), "{out:?}");
        assert!(out.contains("Keep these keys? [Y/n]: "), "{out}");
        assert!(out.contains("At least one SSH key is needed"), "{out}");
        assert!(
            out.contains("1 new, 1 already set up (to be removed)"),
            "{out}"
        );
    }

    #[test]
    fn end_of_input_aborts() {
        let (r, _) = run(&["meet.localhost"], &Seed::default(), &[]);
        assert!(r.unwrap_err().to_string().contains("nothing was changed"));
    }

    #[test]
    fn losing_the_race_returns_none() {
        let z = zoneinfo();
        let script = [
            "meet.localhost",
            "alice",
            "Tulip-Harbor-42",
            "Tulip-Harbor-42",
            "",
            "",
            "",
            "",
            "",
            "",
            "y",
        ];
        let input = Cursor::new(script.iter().map(|l| format!("{l}\n")).collect::<String>());
        let mut out = Vec::new();
        let r = Wizard::new(
            input,
            &mut out,
            None,
            z.path().to_path_buf(),
            vec![ED25519.to_string()],
        )
        .run(&Seed::default(), &|| false)
        .unwrap();
        assert!(r.is_none());
        assert!(String::from_utf8(out).unwrap().contains("another console"));
    }
}
