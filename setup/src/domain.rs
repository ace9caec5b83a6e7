//! `appliance-admin settings domain NAME`: serve the meetings under another name.
//!
//! Everything that names the domain follows it: the rendered configuration (Prosody's virtual
//! hosts `<domain>`, `guest.<domain>`, `auth.<domain>` and its components, nginx, coturn,
//! Jitsi), the internal accounts on `auth.<domain>`, the certificate, and the hosts' accounts.
//! Prosody keeps accounts in one directory per virtual host, so the hosts' account files move
//! to the new domain's directory; they keep their passwords.
//!
//! Order, for a power cut at any point: the accounts are copied to the new domain and the new
//! certificate is made first; the answers then switch to the new domain together with the
//! steps that must run again (`state.toml`), which the next boot finishes if this run does
//! not. The old domain's accounts go last.

use crate::answers::Answers;
use crate::paths::Paths;
use crate::scram::AccountStore;
use crate::services;
use crate::settings::setup_answers;
use crate::state::State;
use crate::steps::{self, Ctx};
use crate::tls;
use anyhow::{Context, Result};
use appliance_spec::validate;

/// The steps that use the domain; they run again for the new one.
const STEPS_AGAIN: &[&str] = &[
    "config",
    "internal-accounts",
    "host-accounts",
    "services",
    "letsencrypt",
];

/// Copy every account of `from` into the store of `to` (credentials as they are).
fn copy_accounts(paths: &Paths, from: &str, to: &str) -> Result<Vec<String>> {
    let (old, new) = (
        AccountStore::open(paths, from)?,
        AccountStore::open(paths, to)?,
    );
    let users = old.list()?;
    for user in &users {
        if let Some(c) = old.read(user)? {
            new.write(user, &c)?;
        }
    }
    Ok(users)
}

/// Remove every account of a virtual host that is no longer served.
fn forget_accounts(paths: &Paths, host: &str) -> Result<()> {
    let store = AccountStore::open(paths, host)?;
    for user in store.list()? {
        store.delete(&user)?;
    }
    Ok(())
}

/// Change the meeting domain to `name`.
pub fn change(ctx: &mut Ctx, name: &str) -> Result<()> {
    let paths = ctx.paths.clone();
    let mut a: Answers = setup_answers(&paths)?;
    let new = validate::domain(name).map_err(|m| anyhow::anyhow!("{m} Nothing was changed."))?;
    let old = a.domain.clone();
    if new == old {
        ctx.say(&format!("The domain is already {new}; nothing to change."));
        return Ok(());
    }
    ctx.say(&format!(
        "Moving the meetings from {old} to {new}; meetings in progress are interrupted."
    ));
    let hosts = copy_accounts(&paths, &old, &new)
        .with_context(|| format!("cannot copy the hosts' accounts to {new}"))?;
    // The old certificate names the old domain: browsers would refuse it for the new one.
    tls::make_self_signed(ctx, &new)?;
    let mut state = State::load(&paths.state())?;
    for s in STEPS_AGAIN {
        state.forget(s);
    }
    state.save(&paths.state())?;
    a.domain = new.clone();
    a.save(&paths.answers())?;
    // Renders the configuration, makes auth.<new>'s accounts, writes the hosts from the
    // answers, and asks Let's Encrypt when an e-mail address is set, as setup does.
    steps::apply(ctx)?;
    services::restart_meeting_services(ctx)?;
    forget_accounts(&paths, &old)?;
    forget_accounts(&paths, &format!("auth.{old}"))?;
    ctx.say(&format!(
        "The meetings are now at https://{new}/ (hosts: {}). Point the DNS record of {new} at this machine; links with {old} no longer work.",
        if hosts.is_empty() { "none".to_string() } else { hosts.join(", ") }
    ));
    Ok(())
}
