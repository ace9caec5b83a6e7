//! `appliance-admin backup create`: what a new machine needs to continue as this one, in one
//! encrypted file.
//!
//! The file is an `age` file (passphrase recipient, scrypt) holding a tar, so that anyone can
//! open it without this program: `age -d backup.age | tar tv`. The tar starts with
//! `manifest.toml` ([`Manifest`]); every other member is a machine path without its leading
//! `/`, with its mode and owner:
//!
//! | Member | What |
//! |---|---|
//! | `data/appliance/{answers.toml,secrets.toml,state.toml,setup-done}` | the setup answers, the service secrets, the setup state |
//! | `data/config/tls/{cert.pem,key.pem}` | the certificate and key in use (the pair, not the links) |
//! | `data/config/acme/…` | dehydrated's account, certificates and configuration (not its lock, not `archive/`) |
//! | `data/ssh/ssh_host_*`, `data/ssh/authorized_keys/…` | the SSH host keys and the admin's keys |
//! | `var/lib/prosody/<domain>/accounts/*.dat` | the meeting hosts' Prosody accounts |
//!
//! Nothing else: no lock files, no boot counters, no logs (`/var/log` and the journal are in
//! RAM anyway, and no member is read from there). [`Member::classify`] is the one list of what
//! may be in a backup; `restore` refuses anything else.

use crate::answers::Answers;
use crate::fsutil;
use crate::paths::Paths;
use crate::scram;
use anyhow::{bail, Context, Result};
use appliance_spec::release::Release;
use serde::{Deserialize, Serialize};
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path};

/// The version of this archive layout. A restore refuses a higher one.
pub const FORMAT: u32 = 1;
/// The first member of the tar.
pub const MANIFEST: &str = "manifest.toml";
/// scrypt work factor (N = 2^18: about a second and 256 MiB of memory to open the file, for
/// the owner and for anyone guessing passphrases).
pub const WORK_FACTOR: u8 = 18;
/// The highest work factor a restore accepts (the `age` tool's own limit): more could make a
/// crafted file take hours and all the memory.
pub const MAX_WORK_FACTOR: u8 = 22;
/// A backup holds keys, accounts and small text files; anything this large is not one.
pub const MAX_ARCHIVE_BYTES: u64 = 64 << 20;

/// `manifest.toml`: what the archive is, for the restore and for a person reading it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    /// The image the backup was made on (`name` in /usr/lib/appliance/release.toml).
    pub image: String,
    pub image_version: String,
    /// [`appliance_spec::DATA_SCHEMA`] of the image that made it.
    pub data_schema: u32,
    /// When it was made, UTC (`YYYY-MM-DDThh:mm:ssZ`).
    pub created: String,
    /// The meeting domain it serves.
    pub domain: String,
}

/// What kind of thing a member is, by its path. The one list of what a backup may hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Member {
    Answers,
    Secrets,
    State,
    SetupDone,
    TlsCert,
    TlsKey,
    /// Anything under `data/config/acme/` (dehydrated's files).
    Acme,
    SshHostKey,
    /// Under `data/ssh/authorized_keys/`.
    AuthorizedKeys,
    /// A Prosody account of the host whose encoded name is given.
    HostAccount {
        host_dir: String,
    },
}

impl Member {
    /// None for a path that has no place in a backup.
    pub fn classify(path: &str) -> Option<Member> {
        let parts: Vec<&str> = path.split('/').collect();
        Some(match parts.as_slice() {
            ["data", "appliance", "answers.toml"] => Member::Answers,
            ["data", "appliance", "secrets.toml"] => Member::Secrets,
            ["data", "appliance", "state.toml"] => Member::State,
            ["data", "appliance", "setup-done"] => Member::SetupDone,
            ["data", "config", "tls", "cert.pem"] => Member::TlsCert,
            ["data", "config", "tls", "key.pem"] => Member::TlsKey,
            ["data", "config", "acme", rest @ ..] if acme_keeps(rest) => Member::Acme,
            ["data", "ssh", name] if name.starts_with("ssh_host_") => Member::SshHostKey,
            ["data", "ssh", "authorized_keys", ..] => Member::AuthorizedKeys,
            ["var", "lib", "prosody", host, "accounts", file] if file.ends_with(".dat") => {
                Member::HostAccount {
                    host_dir: host.to_string(),
                }
            }
            _ => return None,
        })
    }
}

/// dehydrated's lock and its archive of old certificates and keys stay behind.
fn acme_keeps(rest: &[&str]) -> bool {
    !matches!(rest.first(), Some(&"lock") | Some(&"archive"))
}

/// One tar member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The machine path without its leading `/`.
    pub path: String,
    pub content: Content,
    /// Permission bits.
    pub mode: u32,
    pub owner: Names,
    pub mtime: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Content {
    Dir,
    File(Vec<u8>),
    Symlink(String),
}

/// Owner and group by name (what the restore looks up on the new machine) and by number.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Names {
    pub user: String,
    pub group: String,
    pub uid: u32,
    pub gid: u32,
}

/// The image this program runs in.
pub fn release(paths: &Paths) -> Result<Release> {
    let file = paths.release();
    let text = fs::read_to_string(&file).with_context(|| {
        format!(
            "cannot read {} (which image is this?)",
            paths.display(&file)
        )
    })?;
    toml::from_str(&text)
        .map_err(|e| anyhow::anyhow!("{}: {}", paths.display(&file), e.to_string().trim_end()))
}

/// `YYYY-MM-DDThh:mm:ssZ` for seconds since 1970, UTC.
fn utc_time(epoch: u64) -> String {
    let t = epoch as libc::time_t;
    // SAFETY: gmtime_r only writes into the struct we pass.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    if unsafe { libc::gmtime_r(&t, &mut tm) }.is_null() {
        return epoch.to_string();
    }
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        tm.tm_year + 1900,
        tm.tm_mon + 1,
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec
    )
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Turns file metadata into an [`Entry`], with names from the machine's passwd and group.
struct Reader<'a> {
    paths: &'a Paths,
}

impl Reader<'_> {
    fn names(&self, meta: &fs::Metadata) -> Result<Names> {
        let user = fsutil::name_of_id(&self.paths.etc_passwd(), meta.uid())?;
        let group = fsutil::name_of_id(&self.paths.etc_group(), meta.gid())?;
        Ok(Names {
            user: user.unwrap_or_default(),
            group: group.unwrap_or_default(),
            uid: meta.uid(),
            gid: meta.gid(),
        })
    }

    /// The entry for one machine path (symlinks followed when `follow`); None when missing.
    fn entry(&self, machine_path: &str, follow: bool) -> Result<Option<Entry>> {
        let p = self.paths.at(machine_path);
        let meta = match if follow {
            fs::metadata(&p)
        } else {
            fs::symlink_metadata(&p)
        } {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("cannot read {machine_path}")),
        };
        let content = if meta.file_type().is_symlink() {
            let target =
                fs::read_link(&p).with_context(|| format!("cannot read link {machine_path}"))?;
            Content::Symlink(target.to_string_lossy().into_owned())
        } else if meta.is_dir() {
            Content::Dir
        } else if meta.is_file() {
            Content::File(fs::read(&p).with_context(|| format!("cannot read {machine_path}"))?)
        } else {
            return Ok(None); // sockets, fifos: nothing a new machine needs
        };
        Ok(Some(Entry {
            path: machine_path.trim_start_matches('/').to_string(),
            content,
            mode: meta.mode() & 0o7777,
            owner: self.names(&meta)?,
            mtime: u64::try_from(meta.mtime()).unwrap_or(0),
        }))
    }

    /// A directory and everything below it that has a place in a backup, sorted.
    fn tree(&self, machine_dir: &str, out: &mut Vec<Entry>) -> Result<()> {
        let Some(dir) = self.entry(machine_dir, false)? else {
            return Ok(());
        };
        let is_dir = dir.content == Content::Dir;
        out.push(dir);
        if !is_dir {
            return Ok(());
        }
        let p = self.paths.at(machine_dir);
        let mut names: Vec<String> = fs::read_dir(&p)
            .with_context(|| format!("cannot list {machine_dir}"))?
            .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect::<Result<_, _>>()
            .with_context(|| format!("cannot list {machine_dir}"))?;
        names.sort();
        for name in names {
            let child = format!("{machine_dir}/{name}");
            if Member::classify(child.trim_start_matches('/')).is_some() {
                self.tree(&child, out)?;
            }
        }
        Ok(())
    }
}

/// Everything that goes into the backup, read from the machine.
pub fn collect(paths: &Paths) -> Result<(Answers, Vec<Entry>)> {
    if !paths.answers().exists() {
        bail!("there is nothing to back up yet: this machine is not set up. Run `appliance-admin wizard` first.");
    }
    let answers = Answers::load(&paths.answers())?;
    let r = Reader { paths };
    let mut out = Vec::new();
    for name in ["answers.toml", "secrets.toml", "state.toml", "setup-done"] {
        out.extend(r.entry(&format!("/data/appliance/{name}"), false)?);
    }
    // The pair in use, read through the links (the pairs/ history is not needed).
    for name in ["cert.pem", "key.pem"] {
        out.extend(r.entry(&format!("/data/config/tls/{name}"), true)?);
    }
    r.tree("/data/config/acme", &mut out)?;
    let ssh = paths.ssh_dir();
    if ssh.is_dir() {
        let mut names: Vec<String> = fs::read_dir(&ssh)
            .context("cannot list /data/ssh")?
            .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
            .filter(|n| n.starts_with("ssh_host_"))
            .collect();
        names.sort();
        for n in names {
            out.extend(r.entry(&format!("/data/ssh/{n}"), false)?);
        }
    }
    r.tree("/data/ssh/authorized_keys", &mut out)?;
    let host_dir = scram::encode_path(&answers.domain);
    let accounts = format!("/var/lib/prosody/{host_dir}/accounts");
    if let Ok(rd) = fs::read_dir(paths.at(&accounts)) {
        let mut names: Vec<String> = rd
            .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
            .filter(|n| n.ends_with(".dat"))
            .collect();
        names.sort();
        for n in names {
            out.extend(r.entry(&format!("{accounts}/{n}"), false)?);
        }
    }
    Ok((answers, out))
}

/// The tar: the manifest first, then the entries.
pub fn to_tar(manifest: &Manifest, entries: &[Entry]) -> Result<Vec<u8>> {
    let mut b = tar::Builder::new(Vec::new());
    let text = toml::to_string(manifest).context("cannot write the manifest")?;
    let manifest_entry = Entry {
        path: MANIFEST.into(),
        content: Content::File(text.into_bytes()),
        mode: 0o600,
        owner: Names {
            user: "root".into(),
            group: "root".into(),
            uid: 0,
            gid: 0,
        },
        mtime: now(),
    };
    for e in std::iter::once(&manifest_entry).chain(entries) {
        let mut h = tar::Header::new_gnu();
        h.set_mode(e.mode);
        h.set_uid(u64::from(e.owner.uid));
        h.set_gid(u64::from(e.owner.gid));
        // Names longer than the field are left out; the numbers remain.
        let _ = h.set_username(&e.owner.user);
        let _ = h.set_groupname(&e.owner.group);
        h.set_mtime(e.mtime);
        let path = &e.path;
        match &e.content {
            Content::Dir => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_size(0);
                b.append_data(&mut h, format!("{path}/"), std::io::empty())
            }
            Content::File(data) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(data.len() as u64);
                b.append_data(&mut h, path, data.as_slice())
            }
            Content::Symlink(target) => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_size(0);
                b.append_link(&mut h, path, target)
            }
        }
        .with_context(|| format!("cannot add {path} to the archive"))?;
    }
    b.into_inner().context("cannot finish the archive")
}

/// A member path as a plain relative path (no `..`, not absolute), or why not.
fn plain_path(p: &Path) -> Result<String, String> {
    let text = p
        .to_str()
        .ok_or_else(|| format!("the member {} has a name that is not UTF-8", p.display()))?;
    let text = text.trim_end_matches('/');
    if text.is_empty() || !p.components().all(|c| matches!(c, Component::Normal(_))) {
        return Err(format!(
            "the member \"{text}\" is not a plain relative path"
        ));
    }
    Ok(text.to_string())
}

/// Read the tar back: the manifest and the entries. Refuses members a backup cannot have.
pub fn from_tar(data: &[u8]) -> Result<(Manifest, Vec<Entry>)> {
    let mut archive = tar::Archive::new(data);
    let mut manifest = None;
    let mut entries = Vec::new();
    let damaged = "the archive's contents are damaged (not a complete tar)";
    for item in archive.entries().context(damaged)? {
        let mut item = item.context(damaged)?;
        let raw_path = item.path().context(damaged)?.into_owned();
        let path = plain_path(&raw_path).map_err(|m| anyhow::anyhow!("{m}"))?;
        let h = item.header().clone();
        let kind = h.entry_type();
        if manifest.is_none() {
            if path != MANIFEST {
                bail!("the archive does not start with {MANIFEST}; it was not made by `appliance-admin backup create`");
            }
            let mut text = String::new();
            item.read_to_string(&mut text).context(damaged)?;
            let m: Manifest = toml::from_str(&text).map_err(|e| {
                anyhow::anyhow!("{MANIFEST} in the archive: {}", e.to_string().trim_end())
            })?;
            manifest = Some(m);
            continue;
        }
        if Member::classify(&path).is_none() {
            bail!("the archive holds \"{path}\", which has no place in a backup of this appliance; it was not made by `appliance-admin backup create`");
        }
        let content = match kind {
            tar::EntryType::Directory => Content::Dir,
            tar::EntryType::Regular => {
                let mut buf = Vec::new();
                item.read_to_end(&mut buf).context(damaged)?;
                Content::File(buf)
            }
            tar::EntryType::Symlink => {
                let target = item
                    .link_name()
                    .context(damaged)?
                    .map(|t| t.to_string_lossy().into_owned())
                    .unwrap_or_default();
                Content::Symlink(target)
            }
            other => bail!("the member \"{path}\" is of a kind a backup never holds ({other:?})"),
        };
        let name = |b: Option<&[u8]>| String::from_utf8_lossy(b.unwrap_or_default()).into_owned();
        entries.push(Entry {
            path,
            content,
            mode: h.mode().context(damaged)? & 0o7777,
            owner: Names {
                user: name(h.username_bytes()),
                group: name(h.groupname_bytes()),
                uid: u32::try_from(h.uid().context(damaged)?).unwrap_or(0),
                gid: u32::try_from(h.gid().context(damaged)?).unwrap_or(0),
            },
            mtime: h.mtime().unwrap_or(0),
        });
    }
    let manifest =
        manifest.with_context(|| format!("the archive is empty: it has no {MANIFEST}"))?;
    Ok((manifest, entries))
}

/// Encrypt `plain` to the passphrase, as an age file, into `out`.
pub fn encrypt(plain: &[u8], passphrase: &str, work_factor: u8, out: &mut dyn Write) -> Result<()> {
    let mut recipient =
        age::scrypt::Recipient::new(age::secrecy::SecretString::from(passphrase.to_string()));
    recipient.set_work_factor(work_factor);
    let encryptor =
        age::Encryptor::with_recipients(std::iter::once(&recipient as &dyn age::Recipient))
            .map_err(|e| anyhow::anyhow!("cannot encrypt the backup: {e}"))?;
    let mut w = encryptor
        .wrap_output(out)
        .context("cannot write the backup")?;
    w.write_all(plain).context("cannot write the backup")?;
    w.finish().context("cannot write the backup")?;
    Ok(())
}

/// Decrypt an age file made by [`encrypt`]. The whole file is read and checked before anything
/// is returned: a wrong passphrase, a damaged or a cut-off file is an error.
pub fn decrypt(input: &mut dyn Read, passphrase: &str) -> Result<Vec<u8>> {
    let not_backup =
        "this is not an appliance backup (not an age file), or its beginning is damaged";
    let decryptor = age::Decryptor::new_buffered(std::io::BufReader::new(input))
        .map_err(|e| anyhow::anyhow!("{not_backup} ({e})"))?;
    if !decryptor.is_scrypt() {
        bail!("this age file is not protected by a passphrase, so it is not an appliance backup");
    }
    let mut identity =
        age::scrypt::Identity::new(age::secrecy::SecretString::from(passphrase.to_string()));
    identity.set_max_work_factor(MAX_WORK_FACTOR);
    let reader = decryptor
        .decrypt(std::iter::once(&identity as &dyn age::Identity))
        .map_err(|e| match e {
            age::DecryptError::DecryptionFailed
            | age::DecryptError::KeyDecryptionFailed
            | age::DecryptError::NoMatchingKeys => {
                anyhow::anyhow!("the passphrase is wrong (or the file was made with another one)")
            }
            age::DecryptError::ExcessiveWork { required, .. } => anyhow::anyhow!(
                "the file asks for a work factor of {required}, more than the {MAX_WORK_FACTOR} a backup uses; it was not made by `appliance-admin backup create`"
            ),
            other => anyhow::anyhow!("{not_backup} ({other})"),
        })?;
    let mut plain = Vec::new();
    reader
        .take(MAX_ARCHIVE_BYTES + 1)
        .read_to_end(&mut plain)
        .map_err(|e| {
            anyhow::anyhow!("the backup is damaged or incomplete (cut off in transfer?): {e}")
        })?;
    if plain.len() as u64 > MAX_ARCHIVE_BYTES {
        bail!(
            "the backup holds more than {} MiB, far more than a backup of this appliance; it was not made by `appliance-admin backup create`",
            MAX_ARCHIVE_BYTES >> 20
        );
    }
    Ok(plain)
}

/// What `create` wrote.
#[derive(Debug)]
pub struct Summary {
    pub manifest: Manifest,
    pub members: usize,
}

/// Write the encrypted backup of this machine to `out`.
pub fn create(
    paths: &Paths,
    passphrase: &str,
    work_factor: u8,
    out: &mut dyn Write,
) -> Result<Summary> {
    let release = release(paths)?;
    let (answers, entries) = collect(paths)?;
    let manifest = Manifest {
        format: FORMAT,
        image: release.name.clone(),
        image_version: release.version.to_string(),
        data_schema: appliance_spec::DATA_SCHEMA,
        created: utc_time(now()),
        domain: answers.domain,
    };
    let tar = to_tar(&manifest, &entries)?;
    encrypt(&tar, passphrase, work_factor, out)?;
    Ok(Summary {
        manifest,
        members: entries.len(),
    })
}

/// `--out FILE`: written next to FILE first and renamed, mode 0600, so a failure leaves no
/// half-written backup behind.
pub fn create_file(
    paths: &Paths,
    passphrase: &str,
    work_factor: u8,
    file: &Path,
) -> Result<Summary> {
    let file = std::env::current_dir()
        .context("cannot find the current directory")?
        .join(file);
    let mut buf = Vec::new();
    let summary = create(paths, passphrase, work_factor, &mut buf)?;
    fsutil::atomic_write(&file, &buf, 0o600, None)?;
    Ok(summary)
}

#[cfg(test)]
#[path = "backup_tests.rs"]
pub(crate) mod tests;
