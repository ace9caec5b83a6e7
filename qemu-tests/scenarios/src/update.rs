//! Signed A/B updates on a booted machine (docs/updates.md): a machine set up from a seed file
//! installs a newer version over SSH with `appliance-admin update apply --reboot` and keeps its
//! accounts, host key and certificate; refused bundles (changed, signed by another key, for the
//! other architecture, older) write nothing; a version that is not healthy on its trial boot is
//! left by the machine itself, which comes back on the version before. With an update channel
//! ([`UpdateScenario::channel`]) that version comes from the channel instead: installed while a
//! host is in a meeting, and started only once the room is empty.
//!
//! The bundles are the build's own. The refused ones are made from them here: a byte of the root
//! changed, or `bundle.json` signed again (with `ssh-keygen -Y sign`, as a person would) and put
//! in front of the original payload members, in the same order.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use appliance_qemu_tests::host::{require_program, run};
use appliance_qemu_tests::scenarios::overlay;
use appliance_qemu_tests::{boot_and_report, Arch, Firmware, Machine};
use appliance_spec::bundle::{BundleManifest, MANIFEST, ROOT, SIGNATURE};
use appliance_spec::signature::NAMESPACE_UPDATE;

use crate::channel::ChannelServer;
use crate::checks::check_xmpp;
use crate::disk::copy_with_seed;
use crate::http::Trust;
use crate::meeting::{hold_meeting, DOMAIN, HOST, HOST_PASSWORD, ROOM};
use crate::session::{machine_config, Ports, Session, Setup};
use crate::ssh::{KeyPair, Ssh};

/// Where the scenario puts bundles on the machine, as docs/updates.md says: on /data (the
/// administrator's home is a 16 MiB tmpfs, far too small for a bundle).
pub const REMOTE_DIR: &str = "/data/appliance/update";

/// The machine's own certificate (no Let's Encrypt in the seed).
const TLS_CERT: &str = "/data/config/tls/cert.pem";

/// Size the machine's disk is grown to, as when the image is written to a bigger disk.
const DISK_BYTES: u64 = 6 << 30;

/// How long a trial's health check may take to commit (it waits up to three minutes itself).
const COMMIT_TIMEOUT: Duration = Duration::from_secs(420);

/// One member of a tar file: its name, and where its header and its data start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub name: String,
    pub header: u64,
    pub data: u64,
    pub len: u64,
}

/// The members of a (ustar) tar file, read from its headers.
pub fn tar_members(path: &Path) -> Result<Vec<Member>> {
    let mut f =
        std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let total = f.metadata()?.len();
    let mut members = Vec::new();
    let mut at = 0u64;
    while at + 512 <= total {
        let mut h = [0u8; 512];
        f.seek(SeekFrom::Start(at))?;
        f.read_exact(&mut h)?;
        if h.iter().all(|&b| b == 0) {
            return Ok(members);
        }
        let name_end = h[..100].iter().position(|&b| b == 0).unwrap_or(100);
        let name = String::from_utf8_lossy(&h[..name_end]).into_owned();
        let size = String::from_utf8_lossy(&h[124..136]);
        let len = u64::from_str_radix(size.trim_matches(|c: char| c == '\0' || c == ' '), 8)
            .with_context(|| format!("{}: member {name:?} has no octal size", path.display()))?;
        members.push(Member {
            name,
            header: at,
            data: at + 512,
            len,
        });
        at += 512 + len.div_ceil(512) * 512;
    }
    bail!("{} ends without the end-of-archive blocks", path.display())
}

/// A bundle the build wrote, with its signed manifest and where its members are.
#[derive(Debug, Clone)]
pub struct Bundle {
    pub path: PathBuf,
    pub manifest_bytes: Vec<u8>,
    pub manifest: BundleManifest,
    pub members: Vec<Member>,
}

impl Bundle {
    pub fn open(path: &Path) -> Result<Bundle> {
        let members = tar_members(path)?;
        let names: Vec<&str> = members.iter().map(|m| m.name.as_str()).collect();
        if names.first() != Some(&MANIFEST) || names.get(1) != Some(&SIGNATURE) {
            bail!(
                "{} does not start with {MANIFEST} and {SIGNATURE}: {names:?}",
                path.display()
            );
        }
        let m = &members[0];
        let mut f = std::fs::File::open(path)?;
        f.seek(SeekFrom::Start(m.data))?;
        let mut manifest_bytes = vec![0u8; m.len as usize];
        f.read_exact(&mut manifest_bytes)?;
        let manifest = serde_json::from_slice(&manifest_bytes)
            .with_context(|| format!("{}: {MANIFEST} cannot be read", path.display()))?;
        Ok(Bundle {
            path: path.to_path_buf(),
            manifest_bytes,
            manifest,
            members,
        })
    }

    pub fn member(&self, name: &str) -> Result<&Member> {
        self.members
            .iter()
            .find(|m| m.name == name)
            .with_context(|| format!("{} has no member {name}", self.path.display()))
    }

    pub fn file_name(&self) -> String {
        self.path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "bundle.update".into())
    }
}

/// The start of a bundle whose `bundle.json` is `manifest`, signed with `key` by
/// `ssh-keygen -Y sign`: the two tar members, without the end-of-archive blocks, so the
/// payload members of a real bundle can follow.
pub fn signed_head(manifest: &[u8], key: &Path) -> Result<Vec<u8>> {
    let keygen = require_program("ssh-keygen", "openssh-client")?;
    let dir = tempfile::tempdir()?;
    let file = dir.path().join(MANIFEST);
    std::fs::write(&file, manifest)?;
    run(Command::new(keygen)
        .args(["-q", "-Y", "sign", "-n", NAMESPACE_UPDATE, "-f"])
        .arg(key)
        .arg(&file))
    .context("signing bundle.json with ssh-keygen -Y sign")?;
    let sig = std::fs::read(dir.path().join(SIGNATURE))
        .context("ssh-keygen -Y sign wrote no bundle.json.sig")?;
    let mut tar = tar::Builder::new(Vec::new());
    for (name, data) in [(MANIFEST, manifest), (SIGNATURE, &sig[..])] {
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(0);
        tar.append_data(&mut h, name, data)?;
    }
    let mut bytes = tar.into_inner()?;
    // into_inner ends the archive with two zero blocks; the payload members come there.
    bytes.truncate(bytes.len() - 1024);
    Ok(bytes)
}

/// A fresh ed25519 key pair made by `ssh-keygen`, which no image trusts.
pub fn stranger_signing_key(dir: &Path) -> Result<PathBuf> {
    let keygen = require_program("ssh-keygen", "openssh-client")?;
    let key = dir.join("stranger-signing");
    let _ = std::fs::remove_file(&key);
    let _ = std::fs::remove_file(key.with_extension("pub"));
    run(Command::new(keygen)
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "stranger", "-f"])
        .arg(&key))?;
    Ok(key)
}

/// What the scenario needs: the images and bundles of three versions, the key the images trust.
#[derive(Debug, Clone)]
pub struct UpdateScenario {
    pub firmware: Firmware,
    /// The image of v1, its ESP's byte offset, and the bundles of v1, v2 and v3 (v3 is not
    /// healthy).
    pub image_v1: PathBuf,
    pub esp_offset: u64,
    pub v1: PathBuf,
    pub v2: PathBuf,
    pub v3: PathBuf,
    /// The private key the images trust (for a bundle of the other architecture).
    pub trusted_key: PathBuf,
    /// The unit of v3 that fails.
    pub unhealthy_unit: String,
    /// A file in the root of v2 and v3 that v1 does not have (their overlay change).
    pub changed_file: String,
    /// The firmware of the two trials the other boot loader runs: v2's (committed) and v3's
    /// second (not healthy, so the firmware falls back). The disk carries both boot loaders and
    /// `update apply` arms a trial in both, so with UEFI as [`UpdateScenario::firmware`] and
    /// SeaBIOS here, systemd-boot's tries counter and GRUB's environment block each commit a
    /// trial and each fall back from one, in one machine, and each later boot shows that the
    /// other boot loader saw what happened.
    pub trial_firmware: Firmware,
    /// The update channel the images name in `[updates] url`, serving v3: v3 then comes from
    /// there (appliance-update.service) instead of over SSH.
    pub channel: Option<&'static ChannelServer>,
    pub workdir: PathBuf,
    pub boot_timeout: Duration,
}

/// What the scenario saw, for the test's summary.
#[derive(Debug, Clone, Default)]
pub struct UpdateOutcome {
    /// Each boot, with its seconds to the readiness line.
    pub boots: Vec<(String, f64)>,
    /// Other timings (copying and installing bundles).
    pub timings: Vec<(String, f64)>,
    pub checks: Vec<String>,
}

impl UpdateOutcome {
    fn timed<T>(&mut self, what: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
        let t = Instant::now();
        let r = f()?;
        self.timings.push((what.into(), t.elapsed().as_secs_f64()));
        Ok(r)
    }
}

/// What must not change across an update: the SSH host key the machine presents, and the TLS
/// certificate on /data.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Kept {
    host_key: String,
    cert_sha256: String,
}

struct Fixture {
    key: KeyPair,
    ports: Ports,
    disk: PathBuf,
    bundles: [Bundle; 3],
}

impl Fixture {
    fn ssh(&self) -> Ssh {
        Ssh::new(self.ports.ssh, "admin", self.key.private.clone())
    }

    fn boot(&self, s: &UpdateScenario, dir: &str, name: &str) -> Result<Session> {
        self.boot_with(s, s.firmware, dir, name)
    }

    fn boot_with(
        &self,
        s: &UpdateScenario,
        firmware: Firmware,
        dir: &str,
        name: &str,
    ) -> Result<Session> {
        let mut cfg = self.config(s, dir);
        cfg.firmware = firmware;
        Session::boot(
            name,
            &cfg,
            self.ports,
            self.ssh(),
            Setup::Done,
            s.boot_timeout,
        )
    }

    fn config(&self, s: &UpdateScenario, dir: &str) -> appliance_qemu_tests::MachineConfig {
        let mut cfg = machine_config(Arch::X86_64, &self.disk, s.workdir.join(dir), self.ports);
        cfg.firmware = s.firmware;
        cfg
    }
}

/// v1 set up from a seed file; changed bundles refused; v1 -> v2 over SSH, kept what must be
/// kept; the downgrade refused; v3 fails its trial and the machine comes back on v2 by itself;
/// a power cut while v3 is written again, then installed; v3's second trial, run by the other
/// boot loader, fails too and that boot loader comes back on v2 by itself.
pub fn update_scenario(s: &UpdateScenario) -> Result<UpdateOutcome> {
    let mut outcome = UpdateOutcome::default();
    let _ = std::fs::remove_dir_all(&s.workdir);
    std::fs::create_dir_all(&s.workdir)?;
    let key = KeyPair::generate("appliance-update-tests")?;
    let seed = format!(
        "domain = \"{DOMAIN}\"\nssh_authorized_keys = [{:?}]\n\n[[hosts]]\nname = \"{HOST}\"\npassword = \"{HOST_PASSWORD}\"\n",
        key.public_line()?
    );
    let seeded = s.workdir.join("seeded.raw");
    copy_with_seed(&s.image_v1, s.esp_offset, &seed, &seeded)?;
    let disk = s.workdir.join("disk.qcow2");
    overlay(&seeded, &disk, DISK_BYTES)?;
    let bundles = [
        Bundle::open(&s.v1)?,
        Bundle::open(&s.v2)?,
        Bundle::open(&s.v3)?,
    ];
    let f = Fixture {
        key,
        ports: Ports::free()?,
        disk,
        bundles,
    };
    let [v1, v2, v3] = &f.bundles;

    // v1, set up from the seed file.
    let m = f.boot(s, "boot1-v1", "v1, set up from a seed file")?;
    outcome.boots.push(("v1".into(), m.seconds_to_ready));
    m.wait_for_ssh()?;
    m.step("v1 runs from slot a", |m| runs(m, v1, "a"))?;
    m.step("v1 lacks v2's overlay file", |m| {
        has_changed_file(m, s, false)
    })?;
    let before = m.step("the host key, certificate and XMPP login on v1", |m| {
        let kept = kept(m)?;
        check_xmpp(m.ports, DOMAIN, &Trust::Pem(cert(m)?), HOST, HOST_PASSWORD)?;
        Ok(kept)
    })?;
    outcome.timed("copying the v2 bundle over SSH", || {
        m.step("copying the v2 bundle", |m| upload(&m.ssh, &v2.path))
    })?;
    m.step("refused bundles write nothing", |m| {
        refusals(m, s, v2, &mut outcome)
    })?;
    outcome.timed("update apply v2 until QEMU stops for the restart", || {
        m.step("update apply v2 --reboot", |m| apply_and_restart(m, v2))?;
        m.wait_for_power_off(
            "the machine restarts into v2 (QEMU runs with -no-reboot)",
            Duration::from_secs(120),
        )
    })?;
    outcome
        .checks
        .push("v2 verified, written into slot b, armed; the machine restarted".into());

    // v2 on trial: committed by the health check, same accounts, host key, certificate.
    let m = f.boot_with(
        s,
        s.trial_firmware,
        "boot2-v2",
        &format!("v2, its trial boot ({:?})", s.trial_firmware),
    )?;
    outcome
        .boots
        .push(("v2 (trial)".into(), m.seconds_to_ready));
    m.wait_for_ssh()?;
    outcome.timed("v2's health check until committed", || {
        m.step("the health check commits v2", |m| {
            wait_committed(&m.ssh, v2)
        })
    })?;
    m.step("v2 runs from slot b", |m| runs(m, v2, "b"))?;
    m.step("v2 has its overlay file", |m| has_changed_file(m, s, true))?;
    outcome.checks.push(format!(
        "v2 committed in slot b; release.toml says {}; /proc/cmdline has its root hash; {} is there",
        v2.manifest.version, s.changed_file
    ));
    m.step("host key, certificate and XMPP login kept", |m| {
        let after = kept(m)?;
        if after != before {
            bail!("changed by the update: before {before:?}, after {after:?}");
        }
        check_xmpp(m.ports, DOMAIN, &Trust::Pem(cert(m)?), HOST, HOST_PASSWORD)?;
        Ok(())
    })?;
    outcome.checks.push(
        "after the update: same SSH host key and certificate; alice logs in over BOSH".into(),
    );
    outcome.timed("copying the v1 bundle over SSH", || {
        m.step("copying the v1 bundle", |m| upload(&m.ssh, &v1.path))
    })?;
    m.step("the downgrade to v1 is refused", |m| {
        let before = slot_start_digest(&m.ssh, "a")?;
        let text = refused(&m.ssh, v1, &["older than the running"])?;
        let after = slot_start_digest(&m.ssh, "a")?;
        if after != before {
            bail!("the downgrade changed the machine:\nbefore:\n{before}\nafter:\n{after}");
        }
        m.ssh.sudo(&format!("rm {}", remote(v1)))?;
        outcome.checks.push(format!(
            "downgrade refused, slot a unchanged: {}",
            last_line(&text)
        ));
        Ok(())
    })?;

    // v3 is not healthy: its health check restarts the machine, which comes back on v2.
    if let Some(channel) = s.channel {
        let open = channel.open();
        let waited = outcome.timed(
            "the channel's v3 installed while a host is in a room",
            || {
                m.step(
                    "appliance-update.service during a meeting: v3 installed, the restart waits",
                    |m| installed_from_the_channel_during_a_meeting(m, v3),
                )
            },
        )?;
        outcome.checks.push(format!(
            "channel: v3 downloaded, verified and armed during a meeting; the machine stayed on: {waited}"
        ));
        outcome.timed(
            "appliance-update.service after the meeting until QEMU stops",
            || {
                m.step("appliance-update.service once the room is empty", |m| {
                    m.ssh
                        .sudo("systemctl start --no-block appliance-update.service")
                        .map(drop)
                })?;
                m.wait_for_power_off(
                "the machine restarts into v3 once the meeting is over (QEMU runs with -no-reboot)",
                Duration::from_secs(180),
            )
            },
        )?;
        drop(open);
        let asked = channel.requests();
        for name in ["index.json", "index.json.sig", v3.file_name().as_str()] {
            let want = format!("GET /channel/{name} 200");
            if !asked.contains(&want) {
                bail!("the channel was not asked for {name}: {asked:?}");
            }
        }
        outcome.checks.push(
            "channel: once the room was empty the machine restarted into v3 by itself".into(),
        );
    } else {
        outcome.timed("copying the v3 bundle over SSH", || {
            m.step("copying the v3 bundle", |m| upload(&m.ssh, &v3.path))
        })?;
        outcome.timed("update apply v3 until QEMU stops for the restart", || {
            m.step("update apply v3 --reboot", |m| apply_and_restart(m, v3))?;
            m.wait_for_power_off(
                "the machine restarts into v3 (QEMU runs with -no-reboot)",
                Duration::from_secs(120),
            )
        })?;
    }
    let m = falls_back_to_v2(s, &f, s.firmware, "boot3-v3", "boot4-v2", &mut outcome)?;
    m.step("XMPP login on v2 after the fallback", |m| {
        check_xmpp(m.ports, DOMAIN, &Trust::Pem(cert(m)?), HOST, HOST_PASSWORD).map(|_| ())
    })?;
    if s.channel.is_some() {
        // The channel's download is deleted once installed.
        outcome.timed("copying the v3 bundle over SSH", || {
            m.step("copying the v3 bundle", |m| upload(&m.ssh, &v3.path))
        })?;
    }
    let m = power_cut_while_writing(m, s, &f, v3, &mut outcome)?;

    // v3 armed again, its trial run by the other boot loader: it falls back by itself too.
    m.step("restarting into v3's second trial", |m| {
        m.ssh.run("sudo -n systemctl reboot").map(drop)
    })?;
    m.wait_for_power_off(
        "the machine restarts into v3 (QEMU runs with -no-reboot)",
        Duration::from_secs(120),
    )?;
    let m = falls_back_to_v2(
        s,
        &f,
        s.trial_firmware,
        "boot6-v3",
        "boot7-v2",
        &mut outcome,
    )?;
    m.power_off_cleanly()?;
    Ok(outcome)
}

/// v3's trial boot with `firmware`, not healthy, then the boot the firmware falls back to: v2
/// from slot b, with `update status` naming v3's failed attempt and its reason, and slot a no
/// longer bootable. Returns that session.
fn falls_back_to_v2(
    s: &UpdateScenario,
    f: &Fixture,
    firmware: Firmware,
    trial_dir: &str,
    fallback_dir: &str,
    outcome: &mut UpdateOutcome,
) -> Result<Session> {
    let [_, v2, v3] = &f.bundles;
    let t = Instant::now();
    v3_fails_its_trial(s, f, v3, firmware, trial_dir)?;
    outcome.boots.push((
        format!("v3 (trial, not healthy, {firmware:?})"),
        t.elapsed().as_secs_f64(),
    ));
    outcome.checks.push(format!(
        "v3 found not healthy on its trial boot ({firmware:?}: {} failed); the machine restarted by itself",
        s.unhealthy_unit
    ));
    let m = f.boot_with(
        s,
        firmware,
        fallback_dir,
        &format!("v2 again, after v3's failed trial ({firmware:?})"),
    )?;
    outcome
        .boots
        .push((format!("v2 again ({firmware:?})"), m.seconds_to_ready));
    m.wait_for_ssh()?;
    m.step("v2 runs from slot b again", |m| runs(m, v2, "b"))?;
    let reason = m.step("update status reports v3's failed trial", |m| {
        let st = status(&m.ssh)?;
        let a = &st["attempt"];
        let reason = a["reason"].as_str().unwrap_or("");
        if a["version"] != v3.manifest.version.to_string()
            || a["state"] != "failed"
            || !reason.contains(&s.unhealthy_unit)
        {
            bail!(
                "the last attempt should be v3, failed, naming {}: {}",
                s.unhealthy_unit,
                serde_json::to_string_pretty(&st)?
            );
        }
        if st["other"]["boot"] != "not-bootable" && st["other"]["boot"] != "tried" {
            bail!(
                "slot a (v3) can still boot: {}",
                serde_json::to_string_pretty(&st)?
            );
        }
        Ok(reason.to_string())
    })?;
    outcome.checks.push(format!(
        "{firmware:?}: back on v2 in slot b; update status: v3 failed: {reason}"
    ));
    Ok(m)
}

/// Runs appliance-update.service (what its hourly timer starts) while a host is in a room: it
/// must download `b` from the channel, install and arm it, and leave the machine running,
/// saying why. Returns what it said.
fn installed_from_the_channel_during_a_meeting(m: &Session, b: &Bundle) -> Result<String> {
    let ran = std::thread::scope(|scope| -> Result<std::process::Output> {
        let mut job = None;
        // The check starts once the host is in the room, and the host stays until it ends.
        hold_meeting(&m.ssh, m.ports, &Trust::AcceptAny, ROOM, u32::MAX, || {
            let j = job.get_or_insert_with(|| {
                scope.spawn(|| {
                    m.ssh
                        .run("sudo -n systemctl start appliance-update.service")
                })
            });
            !j.is_finished()
        })?;
        match job {
            Some(j) => j
                .join()
                .map_err(|_| anyhow::anyhow!("the thread running the update check panicked"))?,
            None => bail!("the host never got into the room"),
        }
    })?;
    let journal = m
        .ssh
        .sudo("journalctl -b --no-pager -o cat -u appliance-update.service")?;
    if !ran.status.success() {
        bail!(
            "appliance-update.service failed ({}):\n{}{journal}",
            ran.status,
            String::from_utf8_lossy(&ran.stderr)
        );
    }
    let installed = format!("version {} is installed;", b.manifest.version);
    let waits = "in a meeting, so the restart waits";
    let said = journal
        .lines()
        .find(|l| l.contains(&installed) && l.contains(waits))
        .with_context(|| {
            format!("the update check did not say {installed:?} … {waits:?}:\n{journal}")
        })?
        .to_string();
    if m.machine().wait_for_exit(Duration::ZERO).is_ok() {
        bail!("the machine restarted while a host was in a meeting");
    }
    let st = status(&m.ssh)?;
    if st["attempt"]["state"] != "armed"
        || st["attempt"]["version"] != b.manifest.version.to_string()
    {
        bail!(
            "after the channel's update check v3 is not armed: {}",
            serde_json::to_string_pretty(&st)?
        );
    }
    Ok(said)
}

/// Whether the running root has the file v2 added in its overlay, as `expected`.
fn has_changed_file(m: &Session, s: &UpdateScenario, expected: bool) -> Result<()> {
    let out = m.ssh.run(&format!("test -f {}", s.changed_file))?;
    if out.status.success() != expected {
        bail!(
            "{} is {}in the running root",
            s.changed_file,
            if expected { "not " } else { "" }
        );
    }
    Ok(())
}

/// The machine's record of the running version: `release.toml`, the root hash on the kernel
/// command line, and `update status`.
fn runs(m: &Session, b: &Bundle, slot: &str) -> Result<()> {
    let release = m.ssh.run_ok("cat /usr/lib/appliance/release.toml")?;
    let version = format!("version = \"{}\"", b.manifest.version);
    if !release.lines().any(|l| l.trim() == version) {
        bail!("release.toml does not say {version}:\n{release}");
    }
    let cmdline = m.ssh.run_ok("cat /proc/cmdline")?;
    let hash = format!("roothash={}", b.manifest.root_hash);
    if !cmdline.split_whitespace().any(|w| w == hash) {
        bail!("the kernel command line does not have {hash}: {cmdline}");
    }
    let st = status(&m.ssh)?;
    if st["running"]["slot"] != slot || st["running"]["version"] != b.manifest.version.to_string() {
        bail!(
            "update status does not say version {} runs from slot {slot}: {}",
            b.manifest.version,
            serde_json::to_string_pretty(&st)?
        );
    }
    Ok(())
}

fn status(ssh: &Ssh) -> Result<serde_json::Value> {
    let text = ssh.sudo("appliance-admin update status --json")?;
    serde_json::from_str(&text).with_context(|| format!("update status --json: {text}"))
}

/// Polls `update status` until the health check has committed `b`'s trial.
fn wait_committed(ssh: &Ssh, b: &Bundle) -> Result<()> {
    let deadline = Instant::now() + COMMIT_TIMEOUT;
    loop {
        let st = status(ssh)?;
        let a = &st["attempt"];
        if a["version"] == b.manifest.version.to_string() {
            match a["state"].as_str() {
                Some("committed") if st["running"]["boot"] == "good" => return Ok(()),
                Some("failed") => bail!(
                    "the trial of {} failed: {}",
                    b.manifest.version,
                    serde_json::to_string_pretty(&st)?
                ),
                _ => {}
            }
        }
        if Instant::now() >= deadline {
            bail!(
                "not committed within {COMMIT_TIMEOUT:?}: {}",
                serde_json::to_string_pretty(&st)?
            );
        }
        std::thread::sleep(Duration::from_secs(5));
    }
}

fn kept(m: &Session) -> Result<Kept> {
    let keyscan = require_program("ssh-keyscan", "openssh-client")?;
    let out = run(Command::new(keyscan)
        .args(["-t", "ed25519", "-p"])
        .arg(m.ports.ssh.to_string())
        .arg("127.0.0.1"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    // "[127.0.0.1]:PORT ssh-ed25519 AAAA…": the key, not the address.
    let host_key = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.split_once(' ').map(|(_, k)| k.trim().to_string()))
        .with_context(|| format!("ssh-keyscan printed no ed25519 key: {text}"))?;
    let cert = m.ssh.sudo(&format!("sha256sum {TLS_CERT}"))?;
    Ok(Kept {
        host_key,
        cert_sha256: cert.split_whitespace().next().unwrap_or("").to_string(),
    })
}

fn cert(m: &Session) -> Result<String> {
    m.ssh.sudo(&format!("cat {TLS_CERT}"))
}

fn remote(b: &Bundle) -> String {
    format!("{REMOTE_DIR}/{}", b.file_name())
}

/// Copies `local` to [`REMOTE_DIR`] on the machine, through `ssh … 'cat > FILE'`.
fn upload(ssh: &Ssh, local: &Path) -> Result<()> {
    let name = local
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .context("a bundle path without a file name")?;
    ssh.run_with_input(
        &format!(
            "sudo -n install -d -m 0700 {REMOTE_DIR} && sudo -n sh -c 'cat > {REMOTE_DIR}/{name}.partial && mv {REMOTE_DIR}/{name}.partial {REMOTE_DIR}/{name}'"
        ),
        local,
    )?;
    let size = ssh.sudo(&format!("stat -c %s {REMOTE_DIR}/{name}"))?;
    let want = std::fs::metadata(local)?.len();
    if size.trim() != want.to_string() {
        bail!("{name} arrived with {} bytes, not {want}", size.trim());
    }
    Ok(())
}

/// `update apply FILE --reboot`: must report the armed trial and restart (the SSH connection
/// ends with the machine).
fn apply_and_restart(m: &Session, b: &Bundle) -> Result<()> {
    let out = m.ssh.run(&format!(
        "sudo -n appliance-admin update apply {} --reboot",
        remote(b)
    ))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let restarting = format!("update: restarting into version {}", b.manifest.version);
    if !text.contains(&restarting) {
        bail!(
            "update apply did not say {restarting:?} (exit {}):\n{text}",
            out.status
        );
    }
    Ok(())
}

/// Digests of the slot's root and verity partitions, the ESP and the update record. MD5: the
/// comparison looks for a write by the machine itself, not for a forgery, and under TCG
/// `sha256sum` takes about three times as long (some 2.5 minutes per GiB on a 2-core host).
fn slot_digest(ssh: &Ssh, slot: &str) -> Result<String> {
    ssh.sudo(&format!(
        "sh -c 'md5sum /dev/disk/by-partlabel/root-{slot} /dev/disk/by-partlabel/verity-{slot} /dev/disk/by-partlabel/esp; md5sum /data/appliance/update.toml 2>&1 || true'"
    ))
}

/// The first 64 MiB of `slot`'s root, its whole verity partition and update.toml: enough to
/// see a write, since `update apply` writes a slot from its first byte, in a fraction of the
/// time [`slot_digest`] takes. The refused bundles are compared with the whole slot and the
/// ESP once; this serves the downgrade.
fn slot_start_digest(ssh: &Ssh, slot: &str) -> Result<String> {
    ssh.sudo(&format!(
        "sh -c 'head -c 67108864 /dev/disk/by-partlabel/root-{slot} | md5sum; md5sum /dev/disk/by-partlabel/verity-{slot}; md5sum /data/appliance/update.toml 2>&1 || true'"
    ))
}

fn unchanged(ssh: &Ssh, slot: &str, before: &str, what: &str) -> Result<()> {
    let after = slot_digest(ssh, slot)?;
    if after != before {
        bail!("{what} changed the machine:\nbefore:\n{before}\nafter:\n{after}");
    }
    Ok(())
}

/// `update apply FILE` must fail, name the reason (each of `words`) and write nothing.
fn refused(ssh: &Ssh, b: &Bundle, words: &[&str]) -> Result<String> {
    refused_file(ssh, &remote(b), words)
}

fn refused_file(ssh: &Ssh, file: &str, words: &[&str]) -> Result<String> {
    let out = ssh.run(&format!("sudo -n appliance-admin update apply {file}"))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() {
        bail!("update apply {file} succeeded; it must be refused:\n{text}");
    }
    if out.status.code() == Some(255) {
        bail!("ssh itself failed:\n{text}");
    }
    for w in words {
        if !text.contains(w) {
            bail!("update apply {file} failed without saying {w:?}:\n{text}");
        }
    }
    if !text.contains("nothing was written") {
        bail!("update apply {file} does not say that nothing was written:\n{text}");
    }
    Ok(text)
}

fn last_line(text: &str) -> &str {
    text.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
}

/// On the machine, the bundle `b` with a byte of its root changed; a bundle whose
/// `bundle.json` is signed by a key the image does not trust; one for arm64 signed by the
/// trusted key. Each `update apply` fails with its reason, and slot b, the ESP and the update
/// record are the same afterwards.
fn refusals(
    m: &Session,
    s: &UpdateScenario,
    b: &Bundle,
    outcome: &mut UpdateOutcome,
) -> Result<()> {
    let ssh = &m.ssh;
    let before = slot_digest(ssh, "b")?;
    let src = remote(b);
    let keys = tempfile::tempdir()?;

    // One byte of the root changed, 1 MiB into it.
    let root = b.member(ROOT)?;
    let at = root.data + (1 << 20).min(root.len / 2);
    let mut byte = [0u8; 1];
    let mut file = std::fs::File::open(&b.path)?;
    file.seek(SeekFrom::Start(at))?;
    file.read_exact(&mut byte)?;
    let changed = format!("{REMOTE_DIR}/changed.update");
    ssh.sudo(&format!(
        "sh -c 'cp {src} {changed} && printf \"\\{:03o}\" | dd of={changed} bs=1 seek={at} conv=notrunc status=none'",
        !byte[0]
    ))?;
    let text = refused_file(
        ssh,
        &changed,
        &["root.squashfs", "is not what bundle.json lists"],
    )?;
    ssh.sudo(&format!("rm {changed}"))?;
    outcome.checks.push(format!(
        "a changed byte in root.squashfs refused: {}",
        last_line(&text)
    ));

    // bundle.json signed again by a key nobody trusts.
    let stranger = stranger_signing_key(keys.path())?;
    let head = signed_head(&b.manifest_bytes, &stranger)?;
    let text = with_head(ssh, b, &head, "stranger", |file| {
        refused_file(ssh, file, &["signature does not verify"])
    })?;
    outcome.checks.push(format!(
        "a bundle signed by another key refused: {}",
        last_line(&text)
    ));

    // For arm64, signed by the trusted key: only the architecture check can refuse it.
    let mut manifest: serde_json::Value = serde_json::from_slice(&b.manifest_bytes)?;
    manifest["arch"] = "arm64".into();
    let head = signed_head(&serde_json::to_vec_pretty(&manifest)?, &s.trusted_key)?;
    let text = with_head(ssh, b, &head, "arm64", |file| {
        refused_file(
            ssh,
            file,
            &["the bundle is for arm64, this machine is x86_64"],
        )
    })?;
    outcome.checks.push(format!(
        "a bundle for arm64 signed by the trusted key refused: {}",
        last_line(&text)
    ));
    // Hashing the other slot takes minutes under TCG, so it is compared once, after all three:
    // any write by any of them shows.
    unchanged(ssh, "b", &before, "the three refused bundles")?;
    outcome.checks.push(
        "after the three refusals: root-b, verity-b, the ESP and update.toml unchanged".into(),
    );
    Ok(())
}

/// Makes `<name>.update` on the machine: `head` (bundle.json and its signature) followed by
/// `b`'s payload members, runs `f` on it and removes it.
fn with_head<T>(
    ssh: &Ssh,
    b: &Bundle,
    head: &[u8],
    name: &str,
    f: impl FnOnce(&str) -> Result<T>,
) -> Result<T> {
    let local = tempfile::NamedTempFile::new()?;
    std::fs::write(local.path(), head)?;
    let head_file = format!("{REMOTE_DIR}/{name}.head");
    let file = format!("{REMOTE_DIR}/{name}.update");
    ssh.run_with_input(&format!("sudo -n sh -c 'cat > {head_file}'"), local.path())?;
    let payload = b.member(ROOT)?.header;
    ssh.sudo(&format!(
        "sh -c 'cat {head_file} > {file} && tail -c +{} {} >> {file} && rm {head_file}'",
        payload + 1,
        remote(b)
    ))?;
    let r = f(&file);
    ssh.sudo(&format!("rm -f {file}"))?;
    r
}

/// v3's trial boot: the readiness line, then its health check finds the failed unit, records
/// the reason and restarts the machine.
fn v3_fails_its_trial(
    s: &UpdateScenario,
    f: &Fixture,
    v3: &Bundle,
    firmware: Firmware,
    dir: &str,
) -> Result<()> {
    let mut cfg = f.config(s, dir);
    cfg.firmware = firmware;
    let (machine, report, _) =
        boot_and_report(&cfg, s.boot_timeout).context("v3, its trial boot: no readiness line")?;
    let explain = |e: anyhow::Error, machine: &Machine| {
        anyhow::anyhow!("v3, its trial boot: {e:#}\n{}", machine.diagnostics())
    };
    if report.get("failed_units") == Some("0") {
        return Err(explain(
            anyhow::anyhow!("the readiness report lists no failed unit; v3 should have one"),
            &machine,
        ));
    }
    let not_healthy = format!(
        "update: version {} (slot a) is not healthy on its trial boot",
        v3.manifest.version
    );
    // The whole line: its reason comes last, and may still be arriving.
    let line = machine
        .wait_for_complete_line(&[&not_healthy], Duration::from_secs(420))?
        .line;
    if !line.contains(&s.unhealthy_unit) {
        return Err(explain(
            anyhow::anyhow!(
                "the health check's reason does not name {}: {line}",
                s.unhealthy_unit
            ),
            &machine,
        ));
    }
    machine.wait_for_line("update: restarting into version", Duration::from_secs(60))?;
    machine.wait_for_exit(Duration::from_secs(180))?;
    Ok(())
}

/// The power goes while `update apply` writes slot a: the next boot runs v2, `update status`
/// says the attempt was interrupted, and `update apply` then installs and arms the bundle.
/// Returns that boot's session.
fn power_cut_while_writing(
    m: Session,
    s: &UpdateScenario,
    f: &Fixture,
    b: &Bundle,
    outcome: &mut UpdateOutcome,
) -> Result<Session> {
    let mut child = m
        .ssh
        .command(&format!(
            "sudo -n appliance-admin update apply {}",
            remote(b)
        ))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .context("starting update apply over ssh")?;
    let stdout = child.stdout.take().context("no stdout from ssh")?;
    let mut seen = String::new();
    let mut reader = std::io::BufReader::new(stdout);
    // The power goes as soon as apply says it has written a quarter of the root.
    let writing = loop {
        let mut line = String::new();
        use std::io::BufRead;
        if reader.read_line(&mut line)? == 0 {
            break false;
        }
        seen.push_str(&line);
        if line.contains("update: writing") {
            break true;
        }
    };
    if !writing {
        let _ = child.wait();
        bail!("update apply ended before it wrote the slot:\n{seen}");
    }
    m.cut_power()?;
    let _ = child.wait();
    outcome
        .checks
        .push("power cut while update apply wrote slot a".into());
    let m = f.boot(s, "boot5-v2", "v2 after the power cut during update apply")?;
    outcome
        .boots
        .push(("v2 after the power cut".into(), m.seconds_to_ready));
    m.wait_for_ssh()?;
    m.step("v2 still runs from slot b", |m| runs(m, &f.bundles[1], "b"))?;
    m.step("update status says the attempt was interrupted", |m| {
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            let st = status(&m.ssh)?;
            let reason = st["attempt"]["reason"].as_str().unwrap_or("");
            if st["attempt"]["state"] == "failed" && reason.contains("interrupted") {
                outcome.checks.push(format!(
                    "after the power cut v2 runs; update status: {reason}"
                ));
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "the interrupted attempt is not reported: {}",
                    serde_json::to_string_pretty(&st)?
                );
            }
            std::thread::sleep(Duration::from_secs(5));
        }
    })?;
    outcome.timed("update apply again after the power cut", || {
        m.step("update apply succeeds after the power cut", |m| {
            let text = m
                .ssh
                .sudo(&format!("appliance-admin update apply {}", remote(b)))?;
            let st = status(&m.ssh)?;
            if st["attempt"]["state"] != "armed" || st["next_boot"] != "a" {
                bail!(
                    "after update apply the trial is not armed:\n{text}\n{}",
                    serde_json::to_string_pretty(&st)?
                );
            }
            Ok(())
        })
    })?;
    outcome
        .checks
        .push("update apply installed and armed the bundle again after the power cut".into());
    Ok(m)
}
