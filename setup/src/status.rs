//! `appliance-admin status`: where the setup stands, in words.

use crate::answers::{Answers, PowerOffAnswers};
use crate::paths::Paths;
use crate::scram::AccountStore;
use crate::state::State;
use crate::steps::STEPS;
use anyhow::Result;
use std::io::Write;

/// The power-off policy in words: "after 30 idle minutes, daily at 23:30".
pub fn power_off_text(p: &PowerOffAnswers) -> String {
    let idle = match p.idle_minutes {
        0 => "never when idle".to_string(),
        n => format!("after {n} idle minutes"),
    };
    let daily = p
        .daily_at
        .as_deref()
        .map_or(String::new(), |t| format!(", daily at {t}"));
    format!("{idle}{daily}")
}

pub fn print(paths: &Paths, out: &mut dyn Write) -> Result<()> {
    let state = State::load(&paths.state())?;
    let done = STEPS.iter().filter(|(n, _)| state.is_done(n)).count();
    if paths.setup_done().exists() {
        writeln!(out, "Setup: complete")?;
    } else if paths.answers().exists() {
        let next = STEPS
            .iter()
            .find(|(n, _)| !state.is_done(n))
            .map_or("", |s| s.1);
        writeln!(out, "Setup: unfinished, {done} of {} steps done; next: {next}. Run `appliance-admin apply` to continue.", STEPS.len())?;
    } else {
        writeln!(out, "Setup: waiting for answers. Run `appliance-admin wizard` (or put appliance-setup.toml on the boot partition).")?;
        return Ok(());
    }
    let a = Answers::load(&paths.answers())?;
    writeln!(out, "Domain: {}", a.domain)?;
    let hosts = AccountStore::open(paths, &a.domain)?.list()?;
    writeln!(
        out,
        "Hosts: {}",
        if hosts.is_empty() {
            "none".to_string()
        } else {
            hosts.join(", ")
        }
    )?;
    let cert = match &a.letsencrypt {
        None => "self-signed".to_string(),
        Some(le) => {
            let issued = paths
                .acme_dir()
                .join("certs")
                .join(&a.domain)
                .join("fullchain.pem");
            let from_ca = matches!((std::fs::read(&issued), std::fs::read(paths.tls_cert())), (Ok(x), Ok(y)) if x == y);
            if from_ca {
                format!("from {} (contact {})", le.directory, le.email)
            } else {
                format!(
                    "self-signed for now; {} is asked daily (contact {})",
                    le.directory, le.email
                )
            }
        }
    };
    writeln!(out, "Certificate: {cert}")?;
    writeln!(out, "Time zone: {}", a.timezone)?;
    writeln!(out, "Power off: {}", power_off_text(&a.power_off))?;
    writeln!(out, "Steps:")?;
    for (n, title) in STEPS {
        writeln!(
            out,
            "  [{}] {n}: {title}",
            if state.is_done(n) { "x" } else { " " }
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::steps::tests::{answers, machine};

    #[test]
    fn describes_each_stage() {
        let d = tempfile::tempdir().unwrap();
        let paths = machine(d.path());
        let mut out = Vec::new();
        print(&paths, &mut out).unwrap();
        assert!(String::from_utf8(out)
            .unwrap()
            .contains("waiting for answers"));
        answers().save(&paths.answers()).unwrap();
        let mut out = Vec::new();
        print(&paths, &mut out).unwrap();
        let t = String::from_utf8(out).unwrap();
        assert!(
            t.contains("0 of 10 steps done; next: service secrets"),
            "{t}"
        );
        assert!(t.contains("Domain: meet.localhost"));
        assert!(t.contains("Power off: after 30 idle minutes, daily at 23:30"));
    }
}
