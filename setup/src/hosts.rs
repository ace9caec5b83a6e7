//! `appliance-admin hosts`: the accounts that may open meeting rooms (Prosody accounts on the
//! main domain). Prosody reads account files on every login, so no reload is needed.
//! answers.toml is kept in step so a re-applied "host-accounts" step restores the same hosts.

use crate::answers::{Answers, HostAnswer};
use crate::paths::Paths;
use crate::scram::{self, AccountStore};
use anyhow::{bail, Result};
use appliance_spec::validate;
use std::io::Write;

/// Where a new password comes from.
pub trait PasswordSource {
    /// Return a password that passed `check`, or an error when the person gives up.
    fn new_password(
        &mut self,
        user: &str,
        check: &dyn Fn(&str) -> Result<(), String>,
    ) -> Result<String>;
}

fn setup_answers(paths: &Paths) -> Result<Answers> {
    if !paths.answers().exists() {
        bail!("the appliance is not set up yet, so there is no meeting domain to add hosts to. Run `appliance-admin wizard` first.");
    }
    Answers::load(&paths.answers())
}

pub fn list(paths: &Paths) -> Result<Vec<String>> {
    let a = setup_answers(paths)?;
    AccountStore::open(paths, &a.domain)?.list()
}

pub fn add(
    paths: &Paths,
    name: &str,
    pw: &mut dyn PasswordSource,
    out: &mut dyn Write,
) -> Result<()> {
    let mut a = setup_answers(paths)?;
    let name = validate::host_name(name).map_err(|m| anyhow::anyhow!(m))?;
    let store = AccountStore::open(paths, &a.domain)?;
    if store.exists(&name) {
        bail!("the host \"{name}\" already exists. To give it a new password use: appliance-admin hosts passwd {name}");
    }
    let domain = a.domain.clone();
    store_new_password(paths, &mut a, &store, &name, pw)?;
    writeln!(out, "Added the host \"{name}\". They can now sign in at https://{domain}/ to open meeting rooms.")?;
    Ok(())
}

/// Asks for `name`'s password (strength checked), stores it in Prosody and in the answers.
fn store_new_password(
    paths: &Paths,
    a: &mut Answers,
    store: &AccountStore,
    name: &str,
    pw: &mut dyn PasswordSource,
) -> Result<()> {
    let domain = a.domain.clone();
    let password = pw.new_password(name, &|p| validate::password(p, name, &domain))?;
    let creds = scram::new_credentials(&password)?;
    store.write(name, &creds)?;
    a.hosts.retain(|h| h.name != name);
    a.hosts.push(HostAnswer {
        name: name.to_string(),
        scram: creds,
    });
    a.save(&paths.answers())
}

pub fn passwd(
    paths: &Paths,
    name: &str,
    pw: &mut dyn PasswordSource,
    out: &mut dyn Write,
) -> Result<()> {
    let mut a = setup_answers(paths)?;
    let name = validate::host_name(name).map_err(|m| anyhow::anyhow!(m))?;
    let store = AccountStore::open(paths, &a.domain)?;
    if !store.exists(&name) {
        bail!("there is no host called \"{name}\". See the hosts with: appliance-admin hosts list");
    }
    store_new_password(paths, &mut a, &store, &name, pw)?;
    writeln!(out, "Changed the password of \"{name}\". Sessions that are already signed in stay signed in until they leave.")?;
    Ok(())
}

pub fn remove(paths: &Paths, name: &str, out: &mut dyn Write) -> Result<()> {
    let mut a = setup_answers(paths)?;
    let name = validate::host_name(name).map_err(|m| anyhow::anyhow!(m))?;
    let store = AccountStore::open(paths, &a.domain)?;
    if !store.exists(&name) {
        bail!("there is no host called \"{name}\". See the hosts with: appliance-admin hosts list");
    }
    if store.list()?.len() == 1 {
        bail!("\"{name}\" is the only host; without a host nobody can open a meeting room. Add another host first: appliance-admin hosts add NAME");
    }
    store.delete(&name)?;
    a.hosts.retain(|h| h.name != name);
    a.save(&paths.answers())?;
    writeln!(out, "Removed the host \"{name}\".")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::steps::tests::{answers, machine};

    struct Scripted(Vec<&'static str>, Vec<String>);
    impl PasswordSource for Scripted {
        fn new_password(
            &mut self,
            _user: &str,
            check: &dyn Fn(&str) -> Result<(), String>,
        ) -> Result<String> {
            while !self.0.is_empty() {
                let p = self.0.remove(0);
                match check(p) {
                    Ok(()) => return Ok(p.to_string()),
                    Err(m) => self.1.push(m),
                }
            }
            bail!("no more passwords")
        }
    }

    #[test]
    fn add_passwd_list_remove() {
        let d = tempfile::tempdir().unwrap();
        let paths = machine(d.path());
        let e = list(&paths).unwrap_err();
        assert!(e.to_string().contains("not set up yet"));
        answers().save(&paths.answers()).unwrap();
        let store = AccountStore::open(&paths, "meet.localhost").unwrap();
        store.write("alice", &answers().hosts[0].scram).unwrap();
        let mut out = Vec::new();

        let mut src = Scripted(vec!["bob", "Violet-Ocean-Lamp"], vec![]);
        add(&paths, "Bob", &mut src, &mut out).unwrap();
        assert!(
            src.1[0].contains("12"),
            "weak password explained: {:?}",
            src.1
        );
        assert_eq!(list(&paths).unwrap(), vec!["alice", "bob"]);
        assert!(store
            .read("bob")
            .unwrap()
            .unwrap()
            .verify("Violet-Ocean-Lamp"));
        let e = add(&paths, "bob", &mut Scripted(vec![], vec![]), &mut out).unwrap_err();
        assert!(e.to_string().contains("hosts passwd bob"));

        passwd(
            &paths,
            "bob",
            &mut Scripted(vec!["Amber-River-Stone"], vec![]),
            &mut out,
        )
        .unwrap();
        assert!(store
            .read("bob")
            .unwrap()
            .unwrap()
            .verify("Amber-River-Stone"));
        let saved = Answers::load(&paths.answers()).unwrap();
        assert!(saved
            .hosts
            .iter()
            .any(|h| h.name == "bob" && h.scram.verify("Amber-River-Stone")));
        assert!(
            passwd(&paths, "carol", &mut Scripted(vec![], vec![]), &mut out)
                .unwrap_err()
                .to_string()
                .contains("no host called")
        );

        remove(&paths, "alice", &mut out).unwrap();
        assert_eq!(list(&paths).unwrap(), vec!["bob"]);
        assert!(remove(&paths, "bob", &mut out)
            .unwrap_err()
            .to_string()
            .contains("only host"));
        let text = String::from_utf8(out).unwrap();
        assert!(
            !text.contains("Violet") && !text.contains("Amber"),
            "passwords never printed"
        );
        assert!(text.contains("https://meet.localhost/"));
    }
}
