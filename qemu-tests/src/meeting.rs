//! The meeting-server checks of a booted appliance: first-boot setup (from a seed file on the
//! ESP, or from the wizard on the serial console), then what a host, a guest and an outsider
//! see from this machine through port forwarding on 127.0.0.1: HTTPS with its headers, XMPP
//! logins over BOSH, SSH with keys only, and the configuration checked by its real consumers.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::http::{HttpClient, HttpResponse, Trust};
use crate::ssh::{KeyAuth, PasswordAuth, Ssh};
use crate::xmpp::{BoshClient, Outcome};
use crate::{boot_and_report, free_port, Arch, BootReport, Firmware, Machine, MachineConfig};

/// The seed file's name on the ESP.
pub const SEED_FILE: &str = "appliance-setup.toml";

/// Host ports forwarded to the guest's SSH, HTTP and HTTPS ports.
#[derive(Debug, Clone, Copy)]
pub struct Ports {
    pub ssh: u16,
    pub http: u16,
    pub https: u16,
}

impl Ports {
    pub fn free() -> Result<Ports> {
        Ok(Ports {
            ssh: free_port()?,
            http: free_port()?,
            https: free_port()?,
        })
    }
}

/// Copies `image` to `dst` (sparse) and puts `seed` on its ESP as `appliance-setup.toml`, as a
/// user would after writing the image: the image itself is left as it is.
pub fn copy_with_seed(image: &Path, esp_offset: u64, seed: &str, dst: &Path) -> Result<()> {
    let _ = std::fs::remove_file(dst);
    run(Command::new("cp")
        .arg("--sparse=always")
        .arg(image)
        .arg(dst))?;
    put_on_esp(dst, esp_offset, SEED_FILE, seed)
}

/// Writes `text` as `name` at the top of the FAT file system at `esp_offset` in `disk`.
pub fn put_on_esp(disk: &Path, esp_offset: u64, name: &str, text: &str) -> Result<()> {
    let tmp = tempfile::NamedTempFile::new()?;
    std::fs::write(tmp.path(), text)?;
    run(Command::new("mcopy")
        .arg("-o")
        .arg("-i")
        .arg(format!("{}@@{esp_offset}", disk.display()))
        .arg(tmp.path())
        .arg(format!("::{name}")))
}

/// Lists the top of the FAT file system at `esp_offset` in `disk` (raw).
pub fn esp_listing(disk: &Path, esp_offset: u64) -> Result<String> {
    let out = Command::new("mdir")
        .args(["-b", "-i"])
        .arg(format!("{}@@{esp_offset}", disk.display()))
        .arg("::")
        .output()
        .context("running mdir (package mtools)")?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A qcow2 disk backed by `base` (read-only), grown to `size` bytes.
pub fn overlay_disk(base: &Path, disk: &Path, size: u64) -> Result<()> {
    crate::scenarios::overlay(base, disk, size)
}

/// The machine config for a meeting-server boot of `disk` (qcow2, kept between boots), with
/// SSH, HTTP and HTTPS forwarded and enough memory for the meeting services.
pub fn machine_config(arch: Arch, disk: &Path, workdir: PathBuf, ports: Ports) -> MachineConfig {
    let mut cfg = MachineConfig::new(arch, Firmware::Uefi, disk, workdir);
    cfg.disk_format = "qcow2".into();
    cfg.snapshot = false;
    cfg.memory_mib = 1536;
    cfg.port_forwards = vec![(ports.ssh, 22), (ports.http, 80), (ports.https, 443)];
    cfg
}

/// Boots and checks the readiness report says setup is `setup` ("done" or "pending") and that
/// nothing failed.
pub fn boot_expecting(
    cfg: &MachineConfig,
    setup: &str,
    timeout: Duration,
    ssh: Option<&Ssh>,
) -> Result<(Machine, BootReport, Duration)> {
    let (machine, report, elapsed) = boot_and_report(cfg, timeout)?;
    let mut problems = Vec::new();
    if report.get("setup") != Some(setup) {
        problems.push(format!(
            "setup={}, expected {setup}",
            report.get("setup").unwrap_or("(missing)")
        ));
    }
    if report.get("failed_units") != Some("0") {
        problems.push(format!(
            "failed units: {}",
            report.get("failed").unwrap_or("(missing)")
        ));
    }
    if report.get("nginx") != Some("active") {
        problems.push(format!(
            "nginx is {}",
            report.get("nginx").unwrap_or("(missing)")
        ));
    }
    if !problems.is_empty() {
        let mut diag = machine.diagnostics();
        if let Some(ssh) = ssh {
            diag.push_str(&guest_diagnostics(ssh));
        }
        let _ = machine.power_off();
        bail!("{}\n{diag}", problems.join("; "));
    }
    Ok((machine, report, elapsed))
}

/// What the machine says about its failed units and AppArmor denials, over SSH (best effort).
pub fn guest_diagnostics(ssh: &Ssh) -> String {
    let cmd = "sudo -n sh -c 'systemctl --no-pager --failed; \
               for u in $(systemctl --failed --plain --no-legend | cut -d\" \" -f1); do \
               journalctl -b --no-pager -n 25 -u $u; done; \
               journalctl -b --no-pager -n 30 -u appliance-acme.service -u appliance-setup.service; \
               journalctl -k -b --no-pager | grep -i denied | tail -n 40'";
    match ssh.run(cmd) {
        Ok(out) => format!(
            "\n--- from the machine (ssh) ---\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) => format!("\n(no diagnostics over ssh: {e:#})"),
    }
}

/// Runs `command` through sudo on the guest; fails with its output unless it exits 0.
pub fn sudo(ssh: &Ssh, command: &str) -> Result<String> {
    ssh.run_ok(&format!("sudo -n {command}"))
}

/// Every generated configuration checked by its real consumer, on the machine (prosody, nginx,
/// coturn, ruby-hocon and systemd are in the image) and here (node for config.js).
pub fn check_configs(ssh: &Ssh) -> Result<Vec<String>> {
    let mut done = Vec::new();
    let checks: &[(&str, &str)] = &[
        ("prosodyctl check config", "prosodyctl check config"),
        ("nginx -t", "nginx -t -q"),
        (
            "hocon jicofo.conf",
            "hocon -f /data/config/jitsi/jicofo.conf get jicofo",
        ),
        (
            "hocon jvb.conf",
            "hocon -f /data/config/jitsi/jvb.conf get videobridge",
        ),
        (
            "systemd-analyze verify",
            "systemd-analyze verify --man=no appliance-setup.service appliance-wizard.service \
             appliance-meeting.target appliance-acme.service appliance-acme.timer \
             nginx.service prosody.service coturn.service",
        ),
        // coturn reads its configuration when it starts: running means it accepted it.
        (
            "coturn running",
            "systemctl is-active prosody.service coturn.service nginx.service",
        ),
    ];
    for (name, cmd) in checks {
        sudo(ssh, cmd).with_context(|| format!("config check `{name}` failed"))?;
        done.push(name.to_string());
    }
    for js in ["config.js", "interface_config.js"] {
        let text = sudo(ssh, &format!("cat /data/config/jitsi/{js}"))?;
        let file = tempfile::Builder::new().suffix(".js").tempfile()?;
        std::fs::write(file.path(), &text)?;
        let out = Command::new("node")
            .arg("--check")
            .arg(file.path())
            .output()
            .context("running node (package nodejs)")?;
        if !out.status.success() {
            bail!(
                "node --check {js} failed:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        for banned in ["meet-jit-si-turnrelay", "gravatar.com", "google-analytics"] {
            if text.contains(banned) {
                bail!("{js} mentions {banned}: the web app would contact a third party");
            }
        }
        done.push(format!("node --check {js}"));
    }
    Ok(done)
}

/// What the web server answers on HTTPS for `/`, checked for the security headers.
pub fn check_https(ports: Ports, domain: &str, trust: &Trust) -> Result<HttpResponse> {
    let client = HttpClient::pinned(
        trust,
        Duration::from_secs(30),
        ([127, 0, 0, 1], ports.https).into(),
        Some(domain),
    )?;
    let resp = client.get(&format!("https://{domain}/"))?;
    let mut problems = Vec::new();
    if resp.status != 200 {
        problems.push(format!("status {}", resp.status));
    }
    for (header, must_contain) in [
        ("strict-transport-security", "max-age="),
        ("content-security-policy", "default-src"),
        ("x-content-type-options", "nosniff"),
        ("referrer-policy", ""),
    ] {
        match resp.header(header) {
            Some(v) if v.contains(must_contain) => {}
            Some(v) => problems.push(format!("{header}: {v:?} lacks {must_contain:?}")),
            None => problems.push(format!("no {header} header")),
        }
    }
    if let Some(server) = resp.header("server") {
        if server.chars().any(|c| c.is_ascii_digit()) {
            problems.push(format!("Server header shows a version: {server:?}"));
        }
    }
    if !problems.is_empty() {
        bail!(
            "https://{domain}/ (127.0.0.1:{}): {}",
            ports.https,
            problems.join("; ")
        );
    }
    Ok(resp)
}

/// Plain HTTP: redirects to HTTPS except for ACME challenges.
pub fn check_http_redirect(ports: Ports, domain: &str) -> Result<()> {
    let client = HttpClient::pinned(
        &Trust::AcceptAny,
        Duration::from_secs(30),
        ([127, 0, 0, 1], ports.http).into(),
        Some(domain),
    )?;
    let resp = client.get(&format!("http://{domain}/some-room"))?;
    let location = resp.header("location").unwrap_or("");
    if !(300..400).contains(&resp.status) || !location.starts_with(&format!("https://{domain}/")) {
        bail!(
            "http://{domain}/some-room answered {} (Location {location:?}) instead of redirecting to HTTPS",
            resp.status
        );
    }
    Ok(())
}

/// The secure-domain promises, over BOSH through nginx: the host logs in on the main domain,
/// a wrong password is refused, nobody is anonymous on the main domain, guests are anonymous on
/// the guest domain only.
pub fn check_xmpp(
    ports: Ports,
    domain: &str,
    trust: &Trust,
    host: &str,
    password: &str,
) -> Result<Vec<String>> {
    let url = format!("https://127.0.0.1:{}/http-bind", ports.https);
    let main = BoshClient::new(&url, domain, trust)?;
    let mut seen = Vec::new();
    match main.login_scram_sha1(host, password)? {
        Outcome::Success { jid } => seen.push(format!("host {host} logged in as {jid}")),
        other => bail!("the host {host} could not log in on {domain}: {other:?}"),
    }
    match main.login_plain(host, &format!("{password}x"))? {
        o if o.is_not_authorized() => seen.push("wrong password refused".into()),
        other => bail!("a wrong password for {host} was not refused: {other:?}"),
    }
    match main.login_anonymous()? {
        Outcome::Success { jid } => {
            bail!("anonymous login succeeded on the main domain {domain} (as {jid})")
        }
        _ => seen.push(format!("no anonymous login on {domain}")),
    }
    // The guest domain has no certificate of its own (it is only a name inside XMPP), so the
    // name check of the TLS connection is left out for it.
    let guest_domain = format!("guest.{domain}");
    let guest = BoshClient::new(&url, &guest_domain, &Trust::AcceptAny)?;
    match guest.login_anonymous()? {
        Outcome::Success { jid } if jid.ends_with(&guest_domain) || jid.contains(&guest_domain) => {
            seen.push(format!("guest logged in anonymously as {jid}"))
        }
        other => bail!("anonymous login on {guest_domain} did not work: {other:?}"),
    }
    match guest.login_plain(host, password)? {
        Outcome::Success { jid } => {
            bail!("the guest domain accepted a password login ({jid}); hosts belong to {domain}")
        }
        _ => seen.push(format!("no password logins on {guest_domain}")),
    }
    Ok(seen)
}

/// SSH lets the right key in and nothing else.
pub fn check_ssh_keys_only(ssh: &Ssh, other_key: &Path) -> Result<Vec<String>> {
    let mut seen = Vec::new();
    match ssh.try_password("a-password-that-is-wrong-anyway")? {
        PasswordAuth::NotOffered { methods } => seen.push(format!(
            "password not offered (methods: {})",
            methods.join(",")
        )),
        PasswordAuth::Refused => seen.push("password refused".into()),
        other => bail!("SSH password login was not refused: {other:?}"),
    }
    match ssh.try_key(other_key)? {
        KeyAuth::Refused => seen.push("unknown key refused".into()),
        KeyAuth::Accepted => bail!("SSH accepted a key that was never given to the machine"),
    }
    let root = Ssh::new(ssh.port, "root", ssh.key.clone());
    if root.run("true")?.status.success() {
        bail!("root can log in over SSH");
    }
    seen.push("root login refused".into());
    Ok(seen)
}

/// What makes one machine itself: a digest of its secrets and its SSH host key fingerprint.
pub fn identity(ssh: &Ssh) -> Result<(String, String)> {
    let secrets = sudo(ssh, "sha256sum /data/appliance/secrets.toml")?;
    let host_key = sudo(ssh, "ssh-keygen -lf /data/ssh/ssh_host_ed25519_key.pub")?;
    Ok((
        secrets.split_whitespace().next().unwrap_or("").to_string(),
        host_key.trim().to_string(),
    ))
}

fn run(cmd: &mut Command) -> Result<()> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    let out = cmd
        .output()
        .with_context(|| format!("cannot run {program}"))?;
    if !out.status.success() {
        bail!(
            "{program} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// What the seed-file scenario saw, for the test's summary.
#[derive(Debug, Clone, Default)]
pub struct SeededOutcome {
    pub seconds_to_ready: Vec<f64>,
    pub checks: Vec<String>,
    pub hardening: Option<crate::hardening::HardeningReport>,
}

/// The host account the scenarios create.
pub const HOST: &str = "alice";
pub const HOST_PASSWORD: &str = "Tr0mbone-orbit-Lantern";
pub const DOMAIN: &str = "meet.localhost";
/// The host the wizard scenario creates, and its password.
const WIZARD_HOST_PASSWORD: &str = "Quiet-Meadow-Falcon-7";

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
/// with the seeded key only; after a reboot nothing is asked and nothing changed; a second
/// machine from the same image gets secrets and host keys of its own.
pub fn seeded_setup(s: &SeedScenario) -> Result<SeededOutcome> {
    use crate::dns::DnsServer;
    use crate::pebble::{Pebble, PebbleConfig};
    use crate::ssh::KeyPair;

    let _ = std::fs::remove_dir_all(&s.workdir);
    std::fs::create_dir_all(&s.workdir)?;
    let mut outcome = SeededOutcome::default();
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
    overlay_disk(&seeded, &disk_a, 6 << 30)?;
    let cfg = machine_config(s.arch, &disk_a, s.workdir.join("a-boot1"), ports);
    let ssh = Ssh::new(ports.ssh, "admin", key.private.clone());
    let (machine, _report, elapsed) = boot_expecting(&cfg, "done", s.boot_timeout, Some(&ssh))
        .context("first boot with a complete seed file")?;
    outcome.seconds_to_ready.push(elapsed.as_secs_f64());
    let result = (|| -> Result<(String, String)> {
        ssh.wait_until_up(Duration::from_secs(120))?;
        outcome.checks.extend(check_configs(&ssh)?);
        let hardening = crate::hardening::check(&ssh, s.jitsi)?;
        outcome.checks.extend(hardening.checks.iter().cloned());
        outcome.hardening = Some(hardening);
        if s.jitsi {
            sudo(
                &ssh,
                "systemctl is-active jicofo.service jitsi-videobridge2.service",
            )?;
            outcome.checks.push("jicofo and videobridge running".into());
        }
        // The certificate nginx serves must be the one Pebble issued, i.e. Let's Encrypt's
        // path worked end to end (HTTP-01 through port 80).
        let roots = pebble.issuer_roots_pem()?;
        let resp = check_https(ports, DOMAIN, &Trust::Pem(roots.clone()))
            .context("HTTPS with the certificate issued by the ACME server")?;
        if s.jitsi && !resp.body.contains("jitsi") {
            bail!("the site does not serve Jitsi Meet's web app");
        }
        outcome
            .checks
            .push("HTTPS: ACME certificate, HSTS, CSP, nosniff".into());
        check_http_redirect(ports, DOMAIN)?;
        let timer = sudo(
            &ssh,
            "systemctl is-enabled appliance-acme.timer; systemctl is-active appliance-acme.timer",
        )?;
        if !timer.contains("enabled") || !timer.contains("active") {
            bail!("the certificate renewal timer is not armed: {timer}");
        }
        outcome.checks.push("renewal timer armed".into());
        outcome.checks.extend(check_xmpp(
            ports,
            DOMAIN,
            &Trust::Pem(roots),
            HOST,
            HOST_PASSWORD,
        )?);
        outcome
            .checks
            .extend(check_ssh_keys_only(&ssh, &stranger.private)?);
        let esp = sudo(
            &ssh,
            "sh -c 'mkdir -p /run/esp-check && mount -o ro /dev/disk/by-partlabel/esp /run/esp-check \
             && ls /run/esp-check; umount /run/esp-check'",
        )?;
        if esp.contains(SEED_FILE) {
            bail!("the seed file (it holds a password) is still on the ESP after setup: {esp}");
        }
        outcome.checks.push("seed file removed from the ESP".into());
        // A meeting happens (a host in a room), so the no-logs scan below has traces to look for.
        hold_meeting(&ssh, ports, &Trust::AcceptAny, ROOM, 2, || true)?;
        outcome.checks.push(format!("host joined room {ROOM}"));
        crate::hardening::no_denials(&ssh)?;
        outcome
            .checks
            .push("no AppArmor denial in the kernel log after all of the above".into());
        identity(&ssh)
    })();
    let id_a = match result {
        Ok(id) => id,
        Err(e) => {
            let diag = machine.diagnostics() + &guest_diagnostics(&ssh);
            let _ = machine.power_off();
            return Err(e.context(diag));
        }
    };
    crate::scenarios::power_off_cleanly(machine)?;

    // Second boot: nothing is asked again, the state is still there.
    let cfg = machine_config(s.arch, &disk_a, s.workdir.join("a-boot2"), ports);
    let (machine, _report, elapsed) = boot_expecting(&cfg, "done", s.boot_timeout, Some(&ssh))
        .context("second boot of machine A")?;
    outcome.seconds_to_ready.push(elapsed.as_secs_f64());
    let again = (|| -> Result<(String, String)> {
        ssh.wait_until_up(Duration::from_secs(120))?;
        if machine.console_text().contains(WIZARD_BANNER) {
            bail!("the setup wizard started again on the second boot");
        }
        let wizard = ssh.run("systemctl is-active appliance-wizard.service")?;
        if wizard.status.success() {
            bail!("appliance-wizard.service runs on a machine that is set up");
        }
        check_xmpp(
            ports,
            DOMAIN,
            &Trust::Pem(pebble.issuer_roots_pem()?),
            HOST,
            HOST_PASSWORD,
        )?;
        identity(&ssh)
    })();
    let id_a2 = match again {
        Ok(id) => id,
        Err(e) => {
            let diag = machine.diagnostics();
            let _ = machine.power_off();
            return Err(e.context(diag));
        }
    };
    crate::scenarios::power_off_cleanly(machine)?;
    let found = scan_for_records(&disk_a, s.data_offset, &[ROOM, NICK, "10.0.2.2"])?;
    if !found.is_empty() {
        bail!(
            "records found on the powered-off data partition:\n  {}",
            found.join("\n  ")
        );
    }
    outcome.checks.push(
        "powered-off disk: no journal, log, login record, client address or room name".into(),
    );
    if id_a2 != id_a {
        bail!("secrets or host keys changed across a reboot: {id_a:?} then {id_a2:?}");
    }
    outcome
        .checks
        .push("second boot: no wizard, same secrets, host still logs in".into());

    // Machine B: the same image, with a seed that also asks to power off after a minute
    // without meetings.
    let seeded_b = s.workdir.join("seeded-b.raw");
    copy_with_seed(
        &s.image,
        s.esp_offset,
        &format!("{seed}\n[power_off]\nidle_minutes = 1\n"),
        &seeded_b,
    )?;
    let disk_b = s.workdir.join("machine-b.qcow2");
    overlay_disk(&seeded_b, &disk_b, 6 << 30)?;
    let ports_b = Ports::free()?;
    let cfg = machine_config(s.arch, &disk_b, s.workdir.join("b-boot1"), ports_b);
    // Machine B's Let's Encrypt attempt goes to a port nobody forwards; it keeps its
    // self-signed certificate, which does not matter here.
    let (machine, _report, elapsed) =
        boot_expecting(&cfg, "done", s.boot_timeout, None).context("machine B's first boot")?;
    outcome.seconds_to_ready.push(elapsed.as_secs_f64());
    let ssh_b = Ssh::new(ports_b.ssh, "admin", key.private.clone());
    let id_b = ssh_b
        .wait_until_up(Duration::from_secs(120))
        .and_then(|_| identity(&ssh_b));
    let id_b = match id_b {
        Ok(id) => id,
        Err(e) => {
            let diag = machine.diagnostics();
            let _ = machine.power_off();
            return Err(e.context(diag));
        }
    };
    // Power off when unused: while a host sits in a room the machine stays on (the idle check
    // runs every minute); once the room is empty it powers itself off within a few minutes.
    let held = Duration::from_secs(150);
    let started = std::time::Instant::now();
    let stayed_on = hold_meeting(&ssh_b, ports_b, &Trust::AcceptAny, ROOM, u32::MAX, || {
        started.elapsed() < held && machine.wait_for_exit(Duration::ZERO).is_err()
    });
    if let Err(e) = stayed_on {
        let diag = machine.diagnostics();
        let _ = machine.power_off();
        return Err(e.context(diag));
    }
    if machine.wait_for_exit(Duration::ZERO).is_ok() {
        bail!(
            "machine B powered off while a host was in a meeting\n{}",
            machine.diagnostics()
        );
    }
    outcome.checks.push(format!(
        "idle policy 1 min: still on after {} s with a host in a room",
        held.as_secs()
    ));
    let left = std::time::Instant::now();
    machine
        .wait_for_exit(Duration::from_secs(300))
        .context("machine B did not power off by itself once the meeting was over")?;
    outcome.checks.push(format!(
        "idle policy 1 min: powered itself off {:.0} s after the room emptied",
        left.elapsed().as_secs_f64()
    ));
    if id_b.0 == id_a.0 {
        bail!("two machines from one image have the same secrets");
    }
    if id_b.1 == id_a.1 {
        bail!("two machines from one image have the same SSH host key");
    }
    outcome
        .checks
        .push("a second machine has its own secrets and host key".into());
    Ok(outcome)
}

/// The room the scenarios meet in, and the host's nickname in it: neither may be found on
/// the disk afterwards.
pub const ROOM: &str = "quarterly-budget-7f3a";
pub const NICK: &str = "alice-laptop-5c1e";

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
    sudo(ssh, &format!("prosodyctl shell muc create {room_jid}"))
        .context("creating the meeting room through Prosody's admin shell")?;
    let url = format!("https://127.0.0.1:{}/http-bind", ports.https);
    let client = BoshClient::new(&url, DOMAIN, trust)?;
    let mut n = 0;
    client.occupy_room(HOST, HOST_PASSWORD, &room_jid, NICK, || {
        n += 1;
        n <= polls && stay()
    })
}

/// Reads the data partition of the powered-off `disk` (qcow2) from this machine and lists
/// what would be a record of use: journals, logs, login records, shell histories, core or heap
/// dumps, and any file holding one of `needles` (a room name, a client address). Files that hold
/// the configuration the test itself gave (the ACME server's address) are not searched.
pub fn scan_for_records(disk: &Path, data_offset: u64, needles: &[&str]) -> Result<Vec<String>> {
    let dir = tempfile::tempdir()?;
    let raw = dir.path().join("disk.raw");
    run(Command::new("qemu-img")
        .args(["convert", "-O", "raw"])
        .arg(disk)
        .arg(&raw))?;
    let tree = dir.path().join("data");
    std::fs::create_dir_all(&tree)?;
    run(Command::new("debugfs")
        .arg("-R")
        .arg(format!("rdump / {}", tree.display()))
        .arg(format!("{}?offset={data_offset}", raw.display())))
    .context("reading the data partition with debugfs (package e2fsprogs)")?;
    let mut found = Vec::new();
    let mut files = 0usize;
    walk(&tree, &mut |path| {
        files += 1;
        let rel = path
            .strip_prefix(&tree)
            .unwrap_or(path)
            .display()
            .to_string();
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let record_name = name.ends_with(".journal")
            || name.ends_with(".journal~")
            || name.ends_with(".log")
            || name.ends_with(".hprof")
            || name.ends_with("history")
            || name.starts_with("core")
            || ["wtmp", "btmp", "lastlog", "faillog", ".lesshst", ".viminfo"]
                .contains(&name.as_str());
        if record_name {
            found.push(format!("{rel}: a log or record file"));
        }
        let configured =
            rel.starts_with("appliance/answers.toml") || rel.starts_with("config/acme/");
        if !configured {
            if let Ok(bytes) = std::fs::read(path) {
                for n in needles {
                    if bytes.windows(n.len()).any(|w| w == n.as_bytes()) {
                        found.push(format!("{rel}: contains {n:?}"));
                    }
                }
            }
        }
    })?;
    if files == 0 {
        bail!(
            "the data partition read from {} holds no files at all",
            disk.display()
        );
    }
    Ok(found)
}

fn walk(dir: &Path, f: &mut dyn FnMut(&Path)) -> Result<()> {
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let t = e.file_type()?;
        if t.is_dir() {
            walk(&e.path(), f)?;
        } else if t.is_file() {
            f(&e.path());
        }
    }
    Ok(())
}

/// The first line the wizard prints on a console.
pub const WIZARD_BANNER: &str = "Setting up the meeting server.";

/// The wizard scenario's inputs.
#[derive(Debug, Clone)]
pub struct WizardScenario {
    pub image: PathBuf,
    pub arch: Arch,
    pub workdir: PathBuf,
    pub boot_timeout: Duration,
}

/// One question of the wizard: what it asks, a wrong answer with the explanation it must give,
/// then the right answer.
struct Exchange<'a> {
    prompt: &'a str,
    wrong: Option<(&'a str, &'a str)>,
    right: &'a str,
}

/// The wizard on the serial console of a machine nobody prepared: until it is answered the
/// web server shows only the "not set up" page; wrong answers are explained and asked again;
/// the power is cut in the middle of applying the answers; the next boot finishes setup, and
/// the host and the SSH key given to the wizard work.
pub fn wizard_setup(s: &WizardScenario) -> Result<SeededOutcome> {
    use crate::ssh::KeyPair;

    let _ = std::fs::remove_dir_all(&s.workdir);
    std::fs::create_dir_all(&s.workdir)?;
    let mut outcome = SeededOutcome::default();
    let key = KeyPair::generate("wizard-tests")?;
    let key_line = key.public_line()?;
    let ports = Ports::free()?;
    let disk = s.workdir.join("machine.qcow2");
    overlay_disk(&s.image, &disk, 6 << 30)?;
    let cfg = machine_config(s.arch, &disk, s.workdir.join("boot1"), ports);
    let (machine, _report, elapsed) = boot_expecting(&cfg, "pending", s.boot_timeout, None)
        .context("first boot of an image without answers")?;
    outcome.seconds_to_ready.push(elapsed.as_secs_f64());
    let result = (|| -> Result<()> {
        // Before setup: the placeholder page, with 503, and nothing else.
        let client = HttpClient::pinned(
            &Trust::AcceptAny,
            Duration::from_secs(30),
            ([127, 0, 0, 1], ports.http).into(),
            Some(DOMAIN),
        )?;
        let page = client.get(&format!("http://{DOMAIN}/any-room"))?;
        if page.status != 503 || !page.body.to_lowercase().contains("not set up") {
            bail!(
                "before setup the web server answered {} with {:?}",
                page.status,
                page.body.chars().take(200).collect::<String>()
            );
        }
        outcome
            .checks
            .push("before setup: only the \"not set up\" page (503)".into());

        // The first prompt may have scrolled by before the readiness line; an empty answer
        // (there is no default domain) makes the wizard ask again.
        machine.send("\n")?;
        let t = Duration::from_secs(120);
        let script = [
            Exchange {
                prompt: "Domain name people will use",
                wrong: Some(("192.168.0.1", "is an IP address")),
                right: DOMAIN,
            },
            Exchange {
                prompt: "User name of the first meeting host",
                wrong: Some(("Bob Smith", "\" \"")),
                right: "bob",
            },
            Exchange {
                prompt: "Password for bob",
                wrong: Some(("short", "at least 12")),
                right: WIZARD_HOST_PASSWORD,
            },
            Exchange {
                prompt: "Type the same password again",
                wrong: None,
                right: WIZARD_HOST_PASSWORD,
            },
            Exchange {
                prompt: "E-mail address for Let's Encrypt",
                wrong: Some(("not-an-email", "no @ sign")),
                right: "",
            },
            Exchange {
                prompt: "SSH key: ",
                wrong: Some(("ssh-rsa AAAA", "damaged")),
                right: &key_line,
            },
            Exchange {
                prompt: "SSH key: ",
                wrong: None,
                right: "",
            },
            Exchange {
                prompt: "Time zone",
                wrong: Some(("Mars/Base", "no time zone called")),
                right: "Europe/Berlin",
            },
            Exchange {
                prompt: "Power off after how many minutes",
                wrong: Some(("-3", "cannot be negative")),
                right: "0",
            },
            Exchange {
                prompt: "Power off every day at",
                wrong: Some(("25:00", "hours go from 00 to 23")),
                right: "",
            },
            Exchange {
                prompt: "Apply these settings?",
                wrong: None,
                right: "y",
            },
        ];
        for ex in &script {
            machine
                .wait_for_line(ex.prompt, t)
                .with_context(|| format!("waiting for the wizard to ask {:?}", ex.prompt))?;
            if let Some((wrong, explanation)) = ex.wrong {
                machine.send(&format!("{wrong}\n"))?;
                machine.wait_for_line(explanation, t).with_context(|| {
                    format!("the wizard did not explain why {wrong:?} is wrong")
                })?;
                machine.wait_for_line(ex.prompt, t)?;
            }
            machine.send(&format!("{}\n", ex.right))?;
        }
        if machine.console_text().contains(WIZARD_HOST_PASSWORD) {
            bail!("the password was echoed on the console");
        }
        outcome
            .checks
            .push("wizard: wrong answers explained and asked again; password not echoed".into());
        // Cut the power while the answers are being applied.
        machine.wait_for_line("setup: step 3/", t)?;
        Ok(())
    })();
    if let Err(e) = result {
        let diag = machine.diagnostics();
        let _ = machine.power_off();
        return Err(e.context(diag));
    }
    machine.power_off()?;
    outcome.checks.push("power cut during setup step 3".into());

    // The next boot finishes setup by itself.
    let cfg = machine_config(s.arch, &disk, s.workdir.join("boot2"), ports);
    let ssh = Ssh::new(ports.ssh, "admin", key.private.clone());
    let (machine, _report, elapsed) = boot_expecting(&cfg, "done", s.boot_timeout, Some(&ssh))
        .context("the boot after a power cut did not finish setup")?;
    outcome.seconds_to_ready.push(elapsed.as_secs_f64());
    let result = (|| -> Result<()> {
        ssh.wait_until_up(Duration::from_secs(120))?;
        let hosts = sudo(&ssh, "appliance-admin hosts list")?;
        if !hosts.contains("bob") {
            bail!("the host from the wizard is missing: {hosts}");
        }
        let tz = ssh.run_ok("date +%Z")?;
        if !(tz.contains("CET") || tz.contains("CEST")) {
            bail!("the time zone from the wizard is not in use: {tz}");
        }
        // The machine keeps its self-signed certificate (no e-mail given): trust exactly it.
        let cert = sudo(&ssh, "cat /data/config/tls/cert.pem")?;
        check_https(ports, DOMAIN, &Trust::Pem(cert.clone()))?;
        check_xmpp(
            ports,
            DOMAIN,
            &Trust::Pem(cert),
            "bob",
            WIZARD_HOST_PASSWORD,
        )?;
        Ok(())
    })();
    let diag = machine.diagnostics();
    crate::scenarios::power_off_cleanly(machine)?;
    result.context(diag)?;
    outcome
        .checks
        .push("after the power cut: setup finished at boot; host, key, time zone, TLS work".into());
    Ok(outcome)
}
