//! `appliance-admin backup restore`: make a freshly written machine continue as the one the
//! backup was made on (same domain, hosts, certificate, secrets and SSH host keys).
//!
//! Everything is read and checked before anything is written: the passphrase, the whole file
//! (age authenticates every chunk and the end, so a cut-off or altered file is refused), the
//! manifest (same image, a data schema this image knows) and every member. Only then are the
//! files put in place, the setup answers last: a power cut before that leaves a machine that is
//! still not set up, and the restore can simply run again. Once the answers are in place, the
//! setup steps run (resumed by the next boot if the power goes), exactly as after the wizard.

use crate::answers::Answers;
use crate::backup::{self, Content, Entry, Manifest, Member, Names};
use crate::boot;
use crate::fsutil::{self, Owner};
use crate::paths::Paths;
use crate::scram::{self, AccountStore, Credentials};
use crate::secrets::Secrets;
use crate::services;
use crate::sshkeys;
use crate::state::State;
use crate::steps::{self, Ctx};
use crate::tls;
use anyhow::{bail, Context, Result};
use appliance_spec::validate;
use std::fs;
use std::io::Read;
use std::path::Path;

/// Refuse to overwrite a machine that is set up (or being set up) unless forced. Checked
/// before the passphrase is asked.
pub fn check_allowed(paths: &Paths, force: bool) -> Result<()> {
    if force || !paths.answers().exists() {
        return Ok(());
    }
    let domain = Answers::load(&paths.answers())
        .map(|a| a.domain)
        .unwrap_or_else(|_| "unknown".into());
    let what = if paths.setup_done().exists() {
        "is already set up"
    } else {
        "is being set up"
    };
    bail!("this machine {what} (domain {domain}); nothing was changed. Restore onto a freshly written image, or add --force to replace this machine's setup, hosts, certificate and SSH keys with the backup's.")
}

/// A checked backup, ready to be put in place.
struct Plan {
    manifest: Manifest,
    answers: Answers,
    answers_text: Vec<u8>,
    secrets_text: Vec<u8>,
    tls: Option<(Vec<u8>, Vec<u8>)>,
    acme: Vec<Entry>,
    ssh_host_keys: Vec<Entry>,
    authorized_keys: Vec<Entry>,
    accounts: Vec<(String, Credentials)>,
}

fn file_bytes(e: &Entry) -> Result<&[u8]> {
    match &e.content {
        Content::File(b) => Ok(b),
        _ => bail!("\"{}\" in the backup is not a file", e.path),
    }
}

/// dehydrated's links (`cert.pem -> cert-1700000000.pem`) point next to themselves.
fn check_link(e: &Entry) -> Result<()> {
    if let Content::Symlink(target) = &e.content {
        let p = Path::new(target);
        if target.is_empty()
            || !p
                .components()
                .all(|c| matches!(c, std::path::Component::Normal(_)))
        {
            bail!(
                "\"{}\" in the backup links to \"{}\", outside its directory; it was not made by `appliance-admin backup create`",
                e.path,
                validate::escaped(target)
            );
        }
    }
    Ok(())
}

/// Check the manifest and sort the members; refuses what this machine cannot take.
fn plan(paths: &Paths, manifest: Manifest, entries: Vec<Entry>) -> Result<Plan> {
    if manifest.format > backup::FORMAT {
        bail!("the backup has format {}, newer than the {} this program reads; restore it on a machine with a newer image", manifest.format, backup::FORMAT);
    }
    let release = backup::release(paths)?;
    if manifest.image != release.name {
        bail!(
            "the backup was made on the image \"{}\", but this machine runs \"{}\"; restore it onto the same image",
            validate::escaped(&manifest.image),
            release.name
        );
    }
    if manifest.data_schema > appliance_spec::DATA_SCHEMA {
        bail!(
            "the backup was made by {} version {} with data schema {}, newer than the schema {} of this machine (version {}); update this machine to version {} or later first, then restore",
            release.name,
            validate::escaped(&manifest.image_version),
            manifest.data_schema,
            appliance_spec::DATA_SCHEMA,
            release.version,
            validate::escaped(&manifest.image_version)
        );
    }
    let (mut answers, mut secrets, mut cert, mut key) = (None, None, None, None);
    let (mut acme, mut ssh_host_keys, mut authorized_keys, mut account_files) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for e in entries {
        let member = Member::classify(&e.path)
            .with_context(|| format!("\"{}\" has no place in a backup", e.path))?;
        match member {
            Member::Answers => answers = Some(file_bytes(&e)?.to_vec()),
            Member::Secrets => secrets = Some(file_bytes(&e)?.to_vec()),
            // This machine's own state is made anew by the setup steps.
            Member::State | Member::SetupDone => {}
            Member::TlsCert => cert = Some(file_bytes(&e)?.to_vec()),
            Member::TlsKey => key = Some(file_bytes(&e)?.to_vec()),
            Member::Acme => {
                check_link(&e)?;
                acme.push(e);
            }
            Member::SshHostKey => {
                file_bytes(&e)?;
                ssh_host_keys.push(e);
            }
            Member::AuthorizedKeys => {
                if matches!(e.content, Content::Symlink(_)) {
                    bail!(
                        "\"{}\" in the backup is a link; authorized keys are plain files",
                        e.path
                    );
                }
                authorized_keys.push(e);
            }
            Member::HostAccount { host_dir } => account_files.push((host_dir, e)),
        }
    }
    let answers_text = answers.context(
        "the backup has no data/appliance/answers.toml, so it cannot make a machine that is set up",
    )?;
    let answers: Answers = toml::from_str(&String::from_utf8_lossy(&answers_text))
        .map_err(|e| anyhow::anyhow!("answers.toml in the backup: {}", e.to_string().trim_end()))?;
    if answers.domain != manifest.domain {
        bail!("the backup's manifest names the domain {} but its answers name {}; the backup is inconsistent", validate::escaped(&manifest.domain), answers.domain);
    }
    validate::timezone(&answers.timezone, &paths.zoneinfo()).map_err(|m| {
        anyhow::anyhow!("the backup's time zone cannot be used on this machine: {m}")
    })?;
    let secrets_text = secrets.context("the backup has no data/appliance/secrets.toml")?;
    toml::from_str::<Secrets>(&String::from_utf8_lossy(&secrets_text))
        .map_err(|e| anyhow::anyhow!("secrets.toml in the backup: {}", e.to_string().trim_end()))?;
    let tls = match (cert, key) {
        (Some(c), Some(k)) => Some((c, k)),
        (None, None) => None,
        _ => bail!("the backup has only one of the TLS certificate and key; they belong together"),
    };
    let host_dir = scram::encode_path(&answers.domain);
    let mut accounts = Vec::new();
    for (dir, e) in account_files {
        if dir != host_dir {
            bail!(
                "the backup holds Prosody accounts of \"{}\", not of its domain {}",
                scram::decode_path(&dir),
                answers.domain
            );
        }
        let file = e.path.rsplit('/').next().unwrap_or_default();
        let user = scram::decode_path(file.trim_end_matches(".dat"));
        let text = String::from_utf8_lossy(file_bytes(&e)?).into_owned();
        let creds = scram::parse_account(&text)
            .map_err(|m| anyhow::anyhow!("the account \"{user}\" in the backup: {m}"))?;
        accounts.push((user, creds));
    }
    Ok(Plan {
        manifest,
        answers,
        answers_text,
        secrets_text,
        tls,
        acme,
        ssh_host_keys,
        authorized_keys,
        accounts,
    })
}

/// The owner of a member on this machine: by name when the name exists here, else by number.
fn owner(paths: &Paths, n: &Names) -> Result<Owner> {
    let uid = match fsutil::lookup_user(&paths.etc_passwd(), &n.user)? {
        Some(o) if !n.user.is_empty() => o.uid,
        _ => n.uid,
    };
    let gid = match fsutil::lookup_group(&paths.etc_group(), &n.group)? {
        Some(g) if !n.group.is_empty() => g,
        _ => n.gid,
    };
    Ok(Owner { uid, gid })
}

/// Write one member at `target` with its mode and owner.
fn write_entry(paths: &Paths, e: &Entry, target: &Path) -> Result<()> {
    let o = owner(paths, &e.owner)?;
    match &e.content {
        Content::Dir => fsutil::ensure_dir(target, e.mode, Some(o)),
        Content::File(data) => fsutil::atomic_write(target, data, e.mode, Some(o)),
        Content::Symlink(to) => {
            fsutil::atomic_symlink(Path::new(to), target)?;
            fsutil::chown(target, o)
        }
    }
}

/// dehydrated's directory is replaced whole: built next to it, then swapped in.
fn put_acme(paths: &Paths, entries: &[Entry]) -> Result<()> {
    let live = paths.acme_dir();
    let new = paths.config_dir().join(".acme.restore");
    let old = paths.config_dir().join(".acme.old");
    for d in [&new, &old] {
        if d.exists() {
            fs::remove_dir_all(d).with_context(|| format!("cannot remove {}", d.display()))?;
        }
    }
    fsutil::ensure_dir(&new, 0o700, None)?;
    for e in entries {
        let rel = e
            .path
            .strip_prefix("data/config/acme")
            .unwrap_or(&e.path)
            .trim_start_matches('/');
        let target = if rel.is_empty() {
            new.clone()
        } else {
            new.join(rel)
        };
        if let Some(parent) = target.parent() {
            if !parent.exists() {
                fsutil::ensure_dir(parent, 0o700, None)?;
            }
        }
        write_entry(paths, e, &target)?;
    }
    if live.exists() {
        fs::rename(&live, &old).with_context(|| format!("cannot move {} aside", live.display()))?;
    }
    fs::rename(&new, &live).with_context(|| format!("cannot put {} in place", live.display()))?;
    fsutil::sync_dir(&paths.config_dir())?;
    if old.exists() {
        fs::remove_dir_all(&old).with_context(|| format!("cannot remove {}", old.display()))?;
    }
    Ok(())
}

/// The admin's keys from the backup, plus the keys installed here that it lacks: the key used
/// to log in to this machine for the restore keeps working.
fn merged_admin_keys(paths: &Paths, restored: &[u8]) -> Result<Vec<u8>> {
    let text = String::from_utf8_lossy(restored).into_owned();
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    for k in sshkeys::installed(paths)? {
        if !lines.iter().any(|l| sshkeys::same_key(l, &k)) {
            lines.push(k);
        }
    }
    let mut out = lines.join("\n");
    out.push('\n');
    Ok(out.into_bytes())
}

/// Put every member in place, the answers last.
fn put_in_place(paths: &Paths, plan: &Plan, force: bool) -> Result<()> {
    boot::create_dirs(paths)?;
    fsutil::atomic_write(&paths.secrets(), &plan.secrets_text, 0o600, None)?;
    if let Some((cert, key)) = &plan.tls {
        tls::install_pair(paths, cert, key)?;
    }
    if !plan.acme.is_empty() {
        put_acme(paths, &plan.acme)?;
    }
    for e in &plan.ssh_host_keys {
        write_entry(paths, e, &paths.at(&e.path))?;
    }
    for e in &plan.authorized_keys {
        let target = paths.at(&e.path);
        match (&e.content, target == paths.admin_authorized_keys()) {
            (Content::File(data), true) => {
                let merged = merged_admin_keys(paths, data)?;
                let o = owner(paths, &e.owner)?;
                fsutil::atomic_write(&target, &merged, e.mode, Some(o))?;
            }
            _ => write_entry(paths, e, &target)?,
        }
    }
    let store = AccountStore::open(paths, &plan.answers.domain)?;
    if force {
        // Hosts this machine had on the same domain, but the old one did not, go.
        for user in store.list()? {
            if !plan.accounts.iter().any(|(u, _)| *u == user) {
                store.delete(&user)?;
            }
        }
    }
    for (user, creds) in &plan.accounts {
        store.write(user, creds)?;
    }
    // The steps below make this machine's setup; those whose result came with the backup are
    // done. With the certificate restored, the daily renewal takes over from the old machine
    // (asking the CA now would fail: the domain still points at the old machine).
    let mut state = State::default();
    state.mark_done("secrets");
    if plan.tls.is_some() {
        state.mark_done("tls-self-signed");
        state.mark_done("letsencrypt");
    }
    state.save(&paths.state())?;
    fsutil::remove_if_exists(&paths.setup_done())?;
    fsutil::remove_if_exists(&paths.defaults())?;
    fsutil::atomic_write(&paths.answers(), &plan.answers_text, 0o600, None)
}

/// Restore from `input` (an age file) with `passphrase`, then run the setup steps.
pub fn run(ctx: &mut Ctx, input: &mut dyn Read, passphrase: &str, force: bool) -> Result<()> {
    let paths = ctx.paths.clone();
    check_allowed(&paths, force)?;
    let plain = backup::decrypt(input, passphrase).context("nothing was changed")?;
    let (manifest, entries) = backup::from_tar(&plain).context("nothing was changed")?;
    let plan = plan(&paths, manifest, entries).context("nothing was changed")?;
    ctx.say(&format!(
        "restore: backup of {} made {} on {} version {}",
        plan.manifest.domain,
        plan.manifest.created,
        validate::escaped(&plan.manifest.image),
        validate::escaped(&plan.manifest.image_version)
    ));
    put_in_place(&paths, &plan, force)?;
    ctx.say("restore: the files are in place; running the setup steps");
    steps::apply(ctx)?;
    // After --force the services ran with the replaced configuration; on a fresh machine
    // nothing is running yet and this changes nothing.
    services::restart_meeting_services(ctx)?;
    services::reload_ssh(ctx)?;
    // "Now serves" must be true when it is said: hosts sign in through Prosody.
    services::wait_for_prosody(ctx, std::time::Duration::from_secs(60));
    let hosts: Vec<&str> = plan.accounts.iter().map(|(u, _)| u.as_str()).collect();
    ctx.say(&format!(
        "restore: this machine now serves {} with the hosts {}, the certificate and the SSH host keys of the machine the backup was made on.",
        plan.answers.domain,
        if hosts.is_empty() { "(none)".to_string() } else { hosts.join(", ") }
    ));
    ctx.say(&format!(
        "restore: point the DNS record of {} at this machine. Your SSH client knew this machine under its address with another host key: remove that entry with `ssh-keygen -R ADDRESS`.",
        plan.answers.domain
    ));
    Ok(())
}

#[cfg(test)]
#[path = "restore_tests.rs"]
mod tests;
