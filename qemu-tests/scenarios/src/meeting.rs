//! The meeting-server scenarios of a booted appliance: first-boot setup from a seed file on the
//! ESP ([`seeded_setup`]) or from the wizard on the serial console ([`wizard_setup`]), then
//! what a host, a guest and an outsider see of the machine ([`crate::checks`]). Each boot is a
//! [`Session`] and each check one of its named steps, so a failure names the boot and the step
//! and carries the machine's diagnostics.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use appliance_qemu_tests::scenarios::overlay;
use appliance_qemu_tests::{Arch, Machine};
use appliance_spec::esp::SEED_FILE;

use crate::checks::{
    check_configs, check_http_redirect, check_https, check_ssh_keys_only, check_xmpp, client_for,
    identity, Identity,
};
use crate::disk::{copy_with_seed, scan_for_records};
use crate::dns::DnsServer;
use crate::hardening::{self, HardeningReport};
use crate::http::Trust;
use crate::pebble::{Pebble, PebbleConfig};
use crate::session::{machine_config, Ports, Session, Setup};
use crate::ssh::{KeyPair, Ssh};
use crate::xmpp::BoshClient;

/// The host account the scenarios create.
pub const HOST: &str = "alice";
pub const HOST_PASSWORD: &str = "Tr0mbone-orbit-Lantern";
pub const DOMAIN: &str = "meet.localhost";
/// The host the wizard scenario creates, and its password.
const WIZARD_HOST_PASSWORD: &str = "Quiet-Meadow-Falcon-7";

/// The room the scenarios meet in, and the host's nickname in it: neither may be found on
/// the disk afterwards.
pub const ROOM: &str = "quarterly-budget-7f3a";
pub const NICK: &str = "alice-laptop-5c1e";

/// The first line the wizard prints on a console.
pub const WIZARD_BANNER: &str = "Setting up the meeting server.";

/// Size the machines' disks are grown to, as when the image is written to a bigger disk.
const DISK_BYTES: u64 = 6 << 30;

/// What a scenario saw, for the test's summary.
#[derive(Debug, Clone, Default)]
pub struct SeededOutcome {
    pub seconds_to_ready: Vec<f64>,
    pub checks: Vec<String>,
    pub hardening: Option<HardeningReport>,
}

/// The image, its ESP offset and where the scenario may write.
#[derive(Debug, Clone)]
pub struct SeedScenario {
    pub image: PathBuf,
    pub arch: Arch,
    pub esp_offset: u64,
    pub workdir: PathBuf,
    /// Whether Jitsi's own packages are in the image (then jicofo and the videobridge must run).
    pub jitsi: bool,
    pub boot_timeout: Duration,
    /// Byte offset of the data partition in the image.
    pub data_offset: u64,
}

/// Setup without questions from `appliance-setup.toml` on the ESP, with Let's Encrypt played by
/// Pebble on this machine: the machine comes up set up, serves a certificate Pebble issued
/// through HTTP-01, logs the host in and guests only anonymously on the guest domain, lets SSH in
/// with the seeded key only; after a reboot nothing is asked and nothing changed, and its
/// powered-off disk holds no record of use; a second machine from the same image gets secrets
/// and host keys of its own, and powers itself off once unused; a third, freshly written one
/// becomes the first through its backup.
pub fn seeded_setup(s: &SeedScenario) -> Result<SeededOutcome> {
    let mut outcome = SeededOutcome::default();
    let f = SeedFixture::prepare(s)?;
    let id_a = machine_a_first_boot(s, &f, &mut outcome)?;
    let (id_a2, backup) = machine_a_second_boot(s, &f, &mut outcome)?;
    no_records_on_the_data_partition(s, &f, &mut outcome)?;
    if id_a2 != id_a {
        bail!("secrets or host keys changed across a reboot: {id_a:?} then {id_a2:?}");
    }
    outcome
        .checks
        .push("second boot: no wizard, same secrets, host still logs in".into());
    machine_b(s, &f, &id_a, &mut outcome)?;
    machine_c_restored(s, &f, &backup, &id_a, &mut outcome)?;
    Ok(outcome)
}

/// What the seed-file scenario sets up before a machine boots: keys, Pebble with its DNS, the
/// seed, and machine A's disk (the image with the seed on its ESP).
struct SeedFixture {
    /// The key the seed authorizes, and one it does not.
    key: KeyPair,
    stranger: KeyPair,
    /// Machine A's forwarded ports: Pebble validates through its HTTP port.
    ports: Ports,
    // Pebble resolves the domain through it: kept alive as long as Pebble.
    _dns: DnsServer,
    pebble: Pebble,
    seed: String,
    disk_a: PathBuf,
}

impl SeedFixture {
    fn prepare(s: &SeedScenario) -> Result<SeedFixture> {
        fresh_workdir(&s.workdir)?;
        let key = KeyPair::generate("appliance-tests")?;
        let stranger = KeyPair::generate("stranger")?;
        let ports = Ports::free()?;
        // Pebble validates http://meet.localhost/ through 127.0.0.1:<ports.http>, which QEMU
        // forwards to the machine's port 80; the machine reaches Pebble at 10.0.2.2.
        let dns = DnsServer::start(&[(DOMAIN, std::net::Ipv4Addr::LOCALHOST)])?;
        let pebble = Pebble::start(&PebbleConfig::new(ports.http, dns.addr()))?;
        let seed = format!(
            "domain = \"{DOMAIN}\"\ntimezone = \"Europe/Berlin\"\nssh_authorized_keys = [{key:?}]\n\n\
             [[hosts]]\nname = \"{HOST}\"\npassword = \"{HOST_PASSWORD}\"\n\n\
             [letsencrypt]\nemail = \"admin@example.org\"\naccept_terms = true\n\
             directory = \"{dir}\"\nca_certificate = \"\"\"\n{ca}\"\"\"\n",
            key = key.public_line()?,
            dir = pebble.directory_url_for_guest(),
            ca = pebble.api_ca_pem().trim_end(),
        );
        let seeded = s.workdir.join("seeded.raw");
        copy_with_seed(&s.image, s.esp_offset, &seed, &seeded)?;
        let disk_a = s.workdir.join("machine-a.qcow2");
        overlay(&seeded, &disk_a, DISK_BYTES)?;
        Ok(SeedFixture {
            key,
            stranger,
            ports,
            _dns: dns,
            pebble,
            seed,
            disk_a,
        })
    }

    fn ssh(&self, port: u16) -> Ssh {
        Ssh::new(port, "admin", self.key.private.clone())
    }

    /// Boots machine A's disk, with its console logs in `<workdir>/<dir>`.
    fn boot_a(&self, s: &SeedScenario, dir: &str, name: &str) -> Result<Session> {
        let cfg = machine_config(s.arch, &self.disk_a, s.workdir.join(dir), self.ports);
        let ssh = self.ssh(self.ports.ssh);
        Session::boot(name, &cfg, self.ports, ssh, Setup::Done, s.boot_timeout)
    }
}

fn machine_a_first_boot(
    s: &SeedScenario,
    f: &SeedFixture,
    outcome: &mut SeededOutcome,
) -> Result<Identity> {
    let a = f.boot_a(
        s,
        "a-boot1",
        "machine A, first boot with a complete seed file",
    )?;
    outcome.seconds_to_ready.push(a.seconds_to_ready);
    a.wait_for_ssh()?;
    let checked = a.step("configurations checked by their consumers", |m| {
        check_configs(&m.ssh)
    })?;
    outcome.checks.extend(checked);
    let hardening = a.step("hardening", |m| hardening::check(&m.ssh, s.jitsi))?;
    outcome.checks.extend(hardening.checks.iter().cloned());
    outcome.hardening = Some(hardening);
    if s.jitsi {
        a.step("jicofo and the videobridge run", |m| {
            m.ssh
                .sudo("systemctl is-active jicofo.service jitsi-videobridge2.service")
        })?;
        outcome.checks.push("jicofo and videobridge running".into());
    }
    // The certificate nginx serves must be the one Pebble issued, i.e. Let's Encrypt's path
    // worked end to end (HTTP-01 through port 80).
    let roots = a.step("Pebble's issuing CA", |_| f.pebble.issuer_roots_pem())?;
    a.step(
        "HTTPS with the certificate issued by the ACME server",
        |m| {
            let resp = check_https(m.ports, DOMAIN, &Trust::Pem(roots.clone()))?;
            if s.jitsi && !resp.body.contains("jitsi") {
                bail!("the site does not serve Jitsi Meet's web app");
            }
            Ok(())
        },
    )?;
    outcome
        .checks
        .push("HTTPS: ACME certificate, HSTS, CSP, nosniff".into());
    a.step("plain HTTP redirects to HTTPS", |m| {
        check_http_redirect(m.ports, DOMAIN)
    })?;
    a.step("the certificate renewal timer", |m| {
        renewal_timer_armed(&m.ssh)
    })?;
    outcome.checks.push("renewal timer armed".into());
    let logins = a.step("XMPP logins", |m| {
        check_xmpp(m.ports, DOMAIN, &Trust::Pem(roots), HOST, HOST_PASSWORD)
    })?;
    outcome.checks.extend(logins);
    let ssh_checks = a.step("SSH with keys only", |m| {
        check_ssh_keys_only(&m.ssh, &f.stranger.private)
    })?;
    outcome.checks.extend(ssh_checks);
    a.step("the seed file is gone from the ESP", |m| {
        seed_file_removed(&m.ssh)
    })?;
    outcome.checks.push("seed file removed from the ESP".into());
    // A meeting happens (a host in a room), so the no-logs scan has traces to look for.
    a.step("a meeting", |m| {
        hold_meeting(&m.ssh, m.ports, &Trust::AcceptAny, ROOM, 2, || true)
    })?;
    outcome.checks.push(format!("host joined room {ROOM}"));
    a.step("no AppArmor denial", |m| hardening::no_denials(&m.ssh))?;
    outcome
        .checks
        .push("no AppArmor denial in the kernel log after all of the above".into());
    let id = a.step("the machine's identity", |m| identity(&m.ssh))?;
    a.power_off_cleanly()?;
    Ok(id)
}

fn renewal_timer_armed(ssh: &Ssh) -> Result<()> {
    let timer = ssh.sudo(
        "systemctl is-enabled appliance-acme.timer; systemctl is-active appliance-acme.timer",
    )?;
    if !timer.contains("enabled") || !timer.contains("active") {
        bail!("the certificate renewal timer is not armed: {timer}");
    }
    Ok(())
}

/// The seed file holds a password: setup must delete it from the ESP.
fn seed_file_removed(ssh: &Ssh) -> Result<()> {
    let esp = ssh.sudo(
        "sh -c 'mkdir -p /run/esp-check && mount -o ro /dev/disk/appliance/esp /run/esp-check \
         && ls /run/esp-check; umount /run/esp-check'",
    )?;
    if esp.contains(SEED_FILE) {
        bail!("the seed file (it holds a password) is still on the ESP after setup: {esp}");
    }
    Ok(())
}

/// Second boot: nothing is asked again, the state is still there. Returns the machine's
/// identity and a backup of it (made with [`BACKUP_PASSPHRASE`]) for machine C.
fn machine_a_second_boot(
    s: &SeedScenario,
    f: &SeedFixture,
    outcome: &mut SeededOutcome,
) -> Result<(Identity, Vec<u8>)> {
    let a = f.boot_a(s, "a-boot2", "machine A, second boot")?;
    outcome.seconds_to_ready.push(a.seconds_to_ready);
    a.wait_for_ssh()?;
    a.step("nothing is asked again", |m| {
        if m.machine().console_text().contains(WIZARD_BANNER) {
            bail!("the setup wizard started again on the second boot");
        }
        let wizard = m.ssh.run("systemctl is-active appliance-wizard.service")?;
        if wizard.status.success() {
            bail!("appliance-wizard.service runs on a machine that is set up");
        }
        Ok(())
    })?;
    a.step("XMPP logins after the reboot", |m| {
        let roots = f.pebble.issuer_roots_pem()?;
        check_xmpp(m.ports, DOMAIN, &Trust::Pem(roots), HOST, HOST_PASSWORD)
    })?;
    let id = a.step("the machine's identity", |m| identity(&m.ssh))?;
    let backup = a.step("a backup, as docs/first-boot.md makes one", |m| {
        create_backup(&m.ssh)
    })?;
    a.power_off_cleanly()?;
    Ok((id, backup))
}

/// The passphrase of machine A's backup.
const BACKUP_PASSPHRASE: &str = "Harbour-Violet-Stapler-62";

/// `appliance-admin backup create --out - --passphrase-stdin` over SSH, as in
/// docs/first-boot.md ("Moving to another machine"): the passphrase in, the archive out.
fn create_backup(ssh: &Ssh) -> Result<Vec<u8>> {
    use std::io::Write;
    use std::process::Stdio;
    let mut child = ssh
        .command("sudo -n appliance-admin backup create --out - --passphrase-stdin")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting ssh")?;
    if let Some(mut stdin) = child.stdin.take() {
        writeln!(stdin, "{BACKUP_PASSPHRASE}").context("writing the passphrase to ssh")?;
    }
    let out = child.wait_with_output().context("running ssh")?;
    if !out.status.success() || out.stdout.is_empty() {
        bail!(
            "backup create failed ({}, {} bytes out): {}",
            out.status,
            out.stdout.len(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out.stdout)
}

/// Machine C: the same image, started with a seed that only gives the SSH key (so it waits
/// for the wizard), restored from machine A's backup as docs/first-boot.md says. It must then
/// be machine A: the host logs in with A's password, HTTPS serves the certificate A got from
/// the ACME server, and its secrets and SSH host key are A's.
fn machine_c_restored(
    s: &SeedScenario,
    f: &SeedFixture,
    backup: &[u8],
    id_a: &Identity,
    outcome: &mut SeededOutcome,
) -> Result<()> {
    let seeded_c = s.workdir.join("seeded-c.raw");
    let seed_c = format!("ssh_authorized_keys = [{:?}]\n", f.key.public_line()?);
    copy_with_seed(&s.image, s.esp_offset, &seed_c, &seeded_c)?;
    let disk_c = s.workdir.join("machine-c.qcow2");
    overlay(&seeded_c, &disk_c, DISK_BYTES)?;
    let ports = Ports::free()?;
    let cfg = machine_config(s.arch, &disk_c, s.workdir.join("c-boot1"), ports);
    let c = Session::boot(
        "machine C, freshly written, for the restore",
        &cfg,
        ports,
        f.ssh(ports.ssh),
        Setup::Pending,
        s.boot_timeout,
    )?;
    outcome.seconds_to_ready.push(c.seconds_to_ready);
    c.wait_for_ssh()?;
    let input = s.workdir.join("restore-input");
    let mut bytes = format!("{BACKUP_PASSPHRASE}\n").into_bytes();
    bytes.extend_from_slice(backup);
    std::fs::write(&input, bytes)?;
    let said = c.step("backup restore - --passphrase-stdin", |m| {
        m.ssh.run_with_input(
            "sudo -n appliance-admin backup restore - --passphrase-stdin 2>&1",
            &input,
        )
    })?;
    std::fs::remove_file(&input)?;
    if !said.contains(&format!("now serves {DOMAIN} with the hosts {HOST}")) {
        bail!("the restore did not say it serves {DOMAIN} with host {HOST}: {said}");
    }
    let roots = c.step("Pebble's issuing CA", |_| f.pebble.issuer_roots_pem())?;
    c.step("HTTPS with machine A's certificate", |m| {
        check_https(m.ports, DOMAIN, &Trust::Pem(roots.clone())).map(drop)
    })?;
    c.step("machine A's host logs in", |m| {
        check_xmpp(
            m.ports,
            DOMAIN,
            &Trust::Pem(roots.clone()),
            HOST,
            HOST_PASSWORD,
        )
    })?;
    let id_c = c.step("the machine's identity", |m| identity(&m.ssh))?;
    if id_c != *id_a {
        bail!("after the restore machine C is {id_c:?}, not machine A ({id_a:?})");
    }
    c.power_off_cleanly()?;
    outcome.checks.push(format!(
        "backup of machine A restored on a fresh machine C: {HOST} logs in, A's certificate, secrets and SSH host key"
    ));
    Ok(())
}

/// Machine A's data partition, read after its clean power-off, holds no record of use.
fn no_records_on_the_data_partition(
    s: &SeedScenario,
    f: &SeedFixture,
    outcome: &mut SeededOutcome,
) -> Result<()> {
    let found = scan_for_records(&f.disk_a, s.data_offset, &[ROOM, NICK, "10.0.2.2"])?;
    if !found.is_empty() {
        bail!(
            "records found on the powered-off data partition:\n  {}",
            found.join("\n  ")
        );
    }
    outcome.checks.push(
        "powered-off disk: no journal, log, login record, client address or room name".into(),
    );
    Ok(())
}

/// Machine B: the same image, with a seed that also asks to power off after a minute without
/// meetings. It has its own secrets and host key, stays on while a host sits in a room (the
/// idle check runs every minute) and powers itself off within a few minutes once it is empty.
fn machine_b(
    s: &SeedScenario,
    f: &SeedFixture,
    id_a: &Identity,
    outcome: &mut SeededOutcome,
) -> Result<()> {
    let seeded_b = s.workdir.join("seeded-b.raw");
    let seed_b = format!("{}\n[power_off]\nidle_minutes = 1\n", f.seed);
    copy_with_seed(&s.image, s.esp_offset, &seed_b, &seeded_b)?;
    let disk_b = s.workdir.join("machine-b.qcow2");
    overlay(&seeded_b, &disk_b, DISK_BYTES)?;
    let ports = Ports::free()?;
    let cfg = machine_config(s.arch, &disk_b, s.workdir.join("b-boot1"), ports);
    // Machine B's Let's Encrypt attempt goes to a port nobody forwards; it keeps its
    // self-signed certificate, which does not matter here.
    let b = Session::boot(
        "machine B, first boot",
        &cfg,
        ports,
        f.ssh(ports.ssh),
        Setup::Done,
        s.boot_timeout,
    )?;
    outcome.seconds_to_ready.push(b.seconds_to_ready);
    b.wait_for_ssh()?;
    let id_b = b.step("the machine's identity", |m| identity(&m.ssh))?;
    // From here machine B only waits: for minutes with a host in a room, then for its idle
    // timer. In a test binary another machine may boot meanwhile; when B is off, this scenario
    // goes on once that machine is done too.
    let _lent = appliance_qemu_tests::test_image::lend_turn_while_idle();
    let held = Duration::from_secs(150);
    b.step("stays on while a host is in a room", |m| {
        let started = Instant::now();
        let running = |m: &Session| m.machine().wait_for_exit(Duration::ZERO).is_err();
        hold_meeting(&m.ssh, m.ports, &Trust::AcceptAny, ROOM, u32::MAX, || {
            started.elapsed() < held && running(m)
        })?;
        if !running(m) {
            bail!("machine B powered off while a host was in a meeting");
        }
        Ok(())
    })?;
    outcome.checks.push(format!(
        "idle policy 1 min: still on after {} s with a host in a room",
        held.as_secs()
    ));
    let left = Instant::now();
    b.wait_for_power_off(
        "did not power off by itself once the meeting was over",
        Duration::from_secs(300),
    )?;
    outcome.checks.push(format!(
        "idle policy 1 min: powered itself off {:.0} s after the room emptied",
        left.elapsed().as_secs_f64()
    ));
    if id_b.secrets_digest == id_a.secrets_digest {
        bail!("two machines from one image have the same secrets");
    }
    if id_b.host_key == id_a.host_key {
        bail!("two machines from one image have the same SSH host key");
    }
    outcome
        .checks
        .push("a second machine has its own secrets and host key".into());
    Ok(())
}

/// Creates `room` on the conference component (as jicofo would when a meeting starts) and has
/// the host join it over BOSH, staying while `stay()` is true and for at most `polls` polls.
pub fn hold_meeting(
    ssh: &Ssh,
    ports: Ports,
    trust: &Trust,
    room: &str,
    polls: u32,
    mut stay: impl FnMut() -> bool,
) -> Result<()> {
    let room_jid = format!("{room}@conference.{DOMAIN}");
    ssh.sudo(&format!("prosodyctl shell muc create {room_jid}"))
        .context("creating the meeting room through Prosody's admin shell")?;
    let url = format!("https://127.0.0.1:{}/http-bind", ports.https);
    let client = BoshClient::new(&url, DOMAIN, trust)?;
    let mut n = 0;
    client.occupy_room(HOST, HOST_PASSWORD, &room_jid, NICK, || {
        n += 1;
        n <= polls && stay()
    })
}

/// The wizard scenario's inputs.
#[derive(Debug, Clone)]
pub struct WizardScenario {
    pub image: PathBuf,
    pub arch: Arch,
    pub workdir: PathBuf,
    pub boot_timeout: Duration,
}

/// The wizard on the serial console of a machine nobody prepared: until it is answered the
/// web server shows only the "not set up" page; wrong answers are explained and asked again;
/// the power is cut in the middle of applying the answers; the next boot finishes setup, and
/// the host and the SSH key given to the wizard work.
pub fn wizard_setup(s: &WizardScenario) -> Result<SeededOutcome> {
    fresh_workdir(&s.workdir)?;
    let mut outcome = SeededOutcome::default();
    let key = KeyPair::generate("wizard-tests")?;
    let key_line = key.public_line()?;
    let ports = Ports::free()?;
    let disk = s.workdir.join("machine.qcow2");
    overlay(&s.image, &disk, DISK_BYTES)?;
    // The key only lets SSH in once the wizard has installed it.
    let ssh = Ssh::new(ports.ssh, "admin", key.private.clone());
    let boot = |dir: &str, name: &str, setup: Setup| {
        let cfg = machine_config(s.arch, &disk, s.workdir.join(dir), ports);
        Session::boot(name, &cfg, ports, ssh.clone(), setup, s.boot_timeout)
    };

    let first = boot(
        "boot1",
        "first boot of an image without answers",
        Setup::Pending,
    )?;
    outcome.seconds_to_ready.push(first.seconds_to_ready);
    first.step("before setup", |m| only_the_not_set_up_page(m.ports))?;
    outcome
        .checks
        .push("before setup: only the \"not set up\" page (503)".into());
    first.step("the wizard on the serial console", |m| {
        answer_the_wizard(m.machine(), &wizard_script(&key_line))
    })?;
    outcome
        .checks
        .push("wizard: wrong answers explained and asked again; password not echoed".into());
    // Cut the power while the answers are being applied.
    first.step("setup reaches step 3", |m| {
        m.machine().wait_for_line("setup: step 3/", WIZARD_WAIT)
    })?;
    first.cut_power()?;
    outcome.checks.push("power cut during setup step 3".into());

    // The next boot finishes setup by itself.
    let second = boot(
        "boot2",
        "the boot after the power cut (it must finish setup)",
        Setup::Done,
    )?;
    outcome.seconds_to_ready.push(second.seconds_to_ready);
    second.wait_for_ssh()?;
    second.step("the wizard's answers are in use", |m| {
        wizard_answers_in_use(&m.ssh, m.ports)
    })?;
    second.power_off_cleanly()?;
    outcome
        .checks
        .push("after the power cut: setup finished at boot; host, key, time zone, TLS work".into());
    Ok(outcome)
}

/// How long the wizard may take to ask, explain or go on.
const WIZARD_WAIT: Duration = Duration::from_secs(120);

/// Before setup: the placeholder page, with 503, and nothing else.
fn only_the_not_set_up_page(ports: Ports) -> Result<()> {
    let client = client_for(DOMAIN, ports.http, &Trust::AcceptAny)?;
    let page = client.get(&format!("http://{DOMAIN}/any-room"))?;
    if page.status != 503 || !page.body.to_lowercase().contains("not set up") {
        bail!(
            "before setup the web server answered {} with {:?}",
            page.status,
            page.body.chars().take(200).collect::<String>()
        );
    }
    Ok(())
}

/// One question of the wizard: what it asks, a wrong answer with the explanation it must give,
/// then the right answer.
struct Exchange<'a> {
    prompt: &'a str,
    wrong: Option<(&'a str, &'a str)>,
    right: &'a str,
}

/// Every question, in the wizard's order, each with a wrong answer first where one exists.
fn wizard_script(key_line: &str) -> Vec<Exchange<'_>> {
    let ask = |prompt, wrong, right| Exchange {
        prompt,
        wrong,
        right,
    };
    vec![
        ask(
            "Domain name people will use",
            Some(("192.168.0.1", "is an IP address")),
            DOMAIN,
        ),
        ask(
            "User name of the first meeting host",
            Some(("Bob Smith", "\" \"")),
            "bob",
        ),
        ask(
            "Password for bob",
            Some(("short", "at least 12")),
            WIZARD_HOST_PASSWORD,
        ),
        ask("Type the same password again", None, WIZARD_HOST_PASSWORD),
        ask(
            "E-mail address for Let's Encrypt",
            Some(("not-an-email", "no @ sign")),
            "",
        ),
        ask("SSH key: ", Some(("ssh-rsa AAAA", "damaged")), key_line),
        ask("SSH key: ", None, ""),
        ask(
            "Time zone",
            Some(("Mars/Base", "no time zone called")),
            "Europe/Berlin",
        ),
        ask(
            "Power off after how many minutes",
            Some(("-3", "cannot be negative")),
            "0",
        ),
        ask(
            "Power off every day at",
            Some(("25:00", "hours go from 00 to 23")),
            "",
        ),
        ask("Apply these settings?", None, "y"),
    ]
}

/// Answers `script` on the serial console: each wrong answer must be explained and the
/// question asked again; the password must never appear on the console.
fn answer_the_wizard(machine: &Machine, script: &[Exchange<'_>]) -> Result<()> {
    // The first prompt may have scrolled by before the readiness line; an empty answer
    // (there is no default domain) makes the wizard ask again.
    machine.send("\n")?;
    for ex in script {
        machine
            .wait_for_line(ex.prompt, WIZARD_WAIT)
            .with_context(|| format!("waiting for the wizard to ask {:?}", ex.prompt))?;
        if let Some((wrong, explanation)) = ex.wrong {
            machine.send(&format!("{wrong}\n"))?;
            machine
                .wait_for_line(explanation, WIZARD_WAIT)
                .with_context(|| format!("the wizard did not explain why {wrong:?} is wrong"))?;
            machine.wait_for_line(ex.prompt, WIZARD_WAIT)?;
        }
        machine.send(&format!("{}\n", ex.right))?;
    }
    if machine.console_text().contains(WIZARD_HOST_PASSWORD) {
        bail!("the password was echoed on the console");
    }
    Ok(())
}

/// After setup: the host, the time zone and the SSH key from the wizard are in use, and the
/// machine serves HTTPS and XMPP with its own self-signed certificate (no e-mail was given).
fn wizard_answers_in_use(ssh: &Ssh, ports: Ports) -> Result<()> {
    let hosts = ssh.sudo("appliance-admin hosts list")?;
    if !hosts.contains("bob") {
        bail!("the host from the wizard is missing: {hosts}");
    }
    let tz = ssh.run_ok("date +%Z")?;
    if !(tz.contains("CET") || tz.contains("CEST")) {
        bail!("the time zone from the wizard is not in use: {tz}");
    }
    // Trust exactly the machine's certificate.
    let cert = ssh.sudo("cat /data/config/tls/cert.pem")?;
    check_https(ports, DOMAIN, &Trust::Pem(cert.clone()))?;
    check_xmpp(
        ports,
        DOMAIN,
        &Trust::Pem(cert),
        "bob",
        WIZARD_HOST_PASSWORD,
    )?;
    Ok(())
}

/// Starts a scenario in an empty directory: files of an earlier run must not be mistaken for
/// this one's.
fn fresh_workdir(dir: &Path) -> Result<()> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir)?;
    Ok(())
}
