//! `appliance-admin settings`: changing a setup answer after setup, the supported way.
//!
//! /data/config is rendered from /data/appliance/answers.toml at every boot, so an edit there
//! would not last. Each command here checks the new value with the wizard's own checks
//! ([`appliance_spec::validate`]), stores it in the answers, and applies it as setup does: the
//! same rendering, the same steps, then reloads or restarts what uses it.

use crate::acme;
use crate::answers::{AcmeAnswers, Answers, PowerOffAnswers};
use crate::paths::Paths;
use crate::sshkeys;
use crate::status;
use crate::steps::{self, Ctx};
use crate::tls;
use anyhow::{bail, Result};
use appliance_spec::seed::{LETSENCRYPT_DIRECTORY, LETSENCRYPT_TERMS};
use appliance_spec::validate;
use std::io::Write;

/// The answers of a machine whose setup is complete.
pub fn setup_answers(paths: &Paths) -> Result<Answers> {
    if !paths.setup_done().exists() {
        bail!("setup is not complete yet, so there are no settings to change; finish it with `appliance-admin wizard` (or `appliance-admin apply` to continue an interrupted one)");
    }
    Answers::load(&paths.answers())
}

fn refuse(m: String) -> anyhow::Error {
    anyhow::anyhow!("{m} Nothing was changed.")
}

/// `settings show`.
pub fn show(paths: &Paths, out: &mut dyn Write) -> Result<()> {
    let a = setup_answers(paths)?;
    writeln!(out, "Domain: {}", a.domain)?;
    match &a.letsencrypt {
        Some(le) => writeln!(
            out,
            "Let's Encrypt: contact {} ({})",
            le.email, le.directory
        )?,
        None => writeln!(out, "Let's Encrypt: off (self-signed certificate)")?,
    }
    writeln!(out, "Power off: {}", status::power_off_text(&a.power_off))?;
    writeln!(out, "Time zone: {}", a.timezone)?;
    writeln!(out, "SSH keys for admin:")?;
    for k in sshkeys::installed(paths)? {
        writeln!(out, "  {}", sshkeys::describe(&k))?;
    }
    Ok(())
}

/// How the person accepts Let's Encrypt's terms: asked on the terminal, or given up front.
pub trait Terms {
    /// True when the terms at `url` are accepted.
    fn accept(&mut self, url: &str) -> Result<bool>;
}

/// The terms on the terminal (`y` to accept), or accepted beforehand with `--accept-terms`.
pub struct TerminalTerms {
    pub accepted_beforehand: bool,
}

impl Terms for TerminalTerms {
    fn accept(&mut self, url: &str) -> Result<bool> {
        use std::io::BufRead;
        use std::os::unix::io::AsRawFd;
        println!("Let's Encrypt's terms of service: {url}");
        if self.accepted_beforehand {
            println!("Accepted with --accept-terms.");
            return Ok(true);
        }
        let stdin = std::io::stdin();
        if !crate::term::is_tty(stdin.as_raw_fd()) {
            bail!("Let's Encrypt's terms must be accepted: read them, then add --accept-terms. Nothing was changed.");
        }
        for _ in 0..3 {
            print!("Do you accept these terms? [y/N]: ");
            std::io::stdout().flush()?;
            let mut line = String::new();
            stdin.lock().read_line(&mut line)?;
            match line.trim().to_ascii_lowercase().as_str() {
                "y" | "yes" => return Ok(true),
                "" | "n" | "no" => return Ok(false),
                _ => println!("  Please answer y (yes) or n (no)."),
            }
        }
        Ok(false)
    }
}

/// `settings email ADDR` (Some) or `settings email --none` (None).
pub fn email(ctx: &mut Ctx, address: Option<&str>, terms: &mut dyn Terms) -> Result<()> {
    let mut a = setup_answers(ctx.paths)?;
    let Some(address) = address else {
        if a.letsencrypt.is_none() {
            ctx.say("Let's Encrypt is already off; the certificate stays as it is.");
            return Ok(());
        }
        a.letsencrypt = None;
        a.save(&ctx.paths.answers())?;
        // As setup does without an address: a self-signed certificate, used at once.
        tls::make_self_signed(ctx, &a.domain)?;
        crate::services::certificate_changed(ctx)?;
        ctx.say(&format!(
            "Let's Encrypt is off. {} now uses a self-signed certificate (browsers warn about it).",
            a.domain
        ));
        return Ok(());
    };
    let email = validate::email(address).map_err(refuse)?;
    if a.letsencrypt.as_ref().is_some_and(|le| le.email == email) {
        ctx.say(&format!(
            "The Let's Encrypt contact is already {email}; nothing to change."
        ));
        return Ok(());
    }
    if !terms.accept(LETSENCRYPT_TERMS)? {
        bail!("Let's Encrypt's terms of service were not accepted, so no certificate can be requested. Nothing was changed.");
    }
    let before = a.letsencrypt.clone();
    a.letsencrypt = Some(AcmeAnswers {
        email: email.clone(),
        directory: before
            .as_ref()
            .map_or(LETSENCRYPT_DIRECTORY.to_string(), |l| l.directory.clone()),
        ca_certificate: before.and_then(|l| l.ca_certificate),
    });
    a.save(&ctx.paths.answers())?;
    ctx.say(&format!("The Let's Encrypt contact is now {email}."));
    // The account keeps its certificates; only its contact changes. Not fatal: the address is
    // stored, and the CA is asked again at the next renewal.
    if let Err(e) = acme::update_contact(ctx, &a) {
        ctx.say(&format!(
            "The account at the certificate authority still has the old address: {e:#}"
        ));
    }
    steps::letsencrypt(ctx, &a)
}

/// `settings power-off`: each value given replaces the stored one; `never` turns both off.
pub fn power_off(
    ctx: &mut Ctx,
    idle_minutes: Option<i64>,
    daily_at: Option<&str>,
    never: bool,
) -> Result<()> {
    let mut a = setup_answers(ctx.paths)?;
    let mut p = a.power_off.clone();
    if never {
        if idle_minutes.is_some() || daily_at.is_some() {
            bail!("--never turns both power-off rules off; give it alone. Nothing was changed.");
        }
        p = PowerOffAnswers::default();
    } else if idle_minutes.is_none() && daily_at.is_none() {
        bail!("say what to change: --idle-minutes N (0 = never when idle), --daily-at HH:MM (or none), or --never");
    }
    if let Some(n) = idle_minutes {
        p.idle_minutes = validate::idle_minutes(n).map_err(refuse)?;
    }
    if let Some(t) = daily_at {
        p.daily_at = if t.trim().eq_ignore_ascii_case("none") {
            None
        } else {
            Some(validate::time_of_day(t).map_err(refuse)?)
        };
    }
    a.power_off = p;
    a.save(&ctx.paths.answers())?;
    // appliance-idle.timer reads power-off.toml at its next run, every minute.
    steps::render_config(ctx.paths, &a)?;
    ctx.say(&format!(
        "Power off: {}.",
        status::power_off_text(&a.power_off)
    ));
    Ok(())
}

/// `settings timezone ZONE`.
pub fn timezone(ctx: &mut Ctx, zone: &str) -> Result<()> {
    let mut a = setup_answers(ctx.paths)?;
    let zone = validate::timezone(zone, &ctx.paths.zoneinfo()).map_err(refuse)?;
    a.timezone = zone.clone();
    a.save(&ctx.paths.answers())?;
    steps::set_timezone(ctx.paths, &zone)?;
    ctx.say(&format!(
        "Time zone: {zone}. The daily power-off time is read in it from now on."
    ));
    Ok(())
}

/// `settings ssh-keys list`: each key as `ssh-keygen -l` shows it.
pub fn ssh_keys_list(paths: &Paths, out: &mut dyn Write) -> Result<()> {
    let keys = sshkeys::installed(paths)?;
    if keys.is_empty() {
        writeln!(out, "No SSH key can log in as admin.")?;
    }
    for k in keys {
        writeln!(out, "{}", sshkeys::describe(&k))?;
    }
    Ok(())
}

/// The answers' keys follow the file, so a setup step run again (after a restore, say) puts
/// back exactly the keys that are there now. Before setup there are no answers to follow.
fn update_answers_keys(paths: &Paths, f: impl FnOnce(&mut Vec<String>)) -> Result<()> {
    if !paths.answers().exists() {
        return Ok(());
    }
    let mut a = Answers::load(&paths.answers())?;
    f(&mut a.ssh_authorized_keys);
    a.save(&paths.answers())
}

/// `settings ssh-keys add LINE`.
pub fn ssh_keys_add(paths: &Paths, line: &str, out: &mut dyn Write) -> Result<()> {
    let key = validate::ssh_key(line).map_err(refuse)?;
    let line = key.line();
    if sshkeys::install(paths, std::slice::from_ref(&line))?.is_empty() {
        writeln!(
            out,
            "This key can already log in as admin: {}",
            key.describe()
        )?;
        return Ok(());
    }
    update_answers_keys(paths, |keys| {
        if !keys.iter().any(|k| sshkeys::same_key(k, &line)) {
            keys.push(line.clone());
        }
    })?;
    writeln!(out, "Added: {}", key.describe())?;
    Ok(())
}

/// `settings ssh-keys remove FINGERPRINT` (`SHA256:…`, as `list` and `ssh-keygen -l` show it).
pub fn ssh_keys_remove(paths: &Paths, fingerprint: &str, out: &mut dyn Write) -> Result<()> {
    let wanted = fingerprint.trim();
    let wanted = wanted.strip_prefix("SHA256:").unwrap_or(wanted);
    let installed = sshkeys::installed(paths)?;
    let matching: Vec<String> = installed
        .iter()
        .filter(|l| {
            validate::ssh_key(l)
                .is_ok_and(|k| k.fingerprint().strip_prefix("SHA256:") == Some(wanted))
        })
        .cloned()
        .collect();
    if matching.is_empty() {
        bail!("no key of admin has the fingerprint \"{}\"; see the keys and their fingerprints with: appliance-admin settings ssh-keys list", validate::shown(fingerprint.trim()));
    }
    if matching.len() == installed.len() {
        bail!("this is the only key that can log in as admin; without it nobody could log in for maintenance. Add another key first (appliance-admin settings ssh-keys add 'ssh-ed25519 AAAA…'). Nothing was changed.");
    }
    sshkeys::remove(paths, &matching)?;
    update_answers_keys(paths, |keys| {
        keys.retain(|k| !matching.iter().any(|m| sshkeys::same_key(k, m)))
    })?;
    for m in &matching {
        writeln!(out, "Removed: {}", sshkeys::describe(m))?;
    }
    Ok(())
}

#[cfg(test)]
#[path = "settings_tests.rs"]
mod tests;
