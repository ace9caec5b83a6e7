//! What a host, a guest and an outsider see of a set-up meeting server, checked from this
//! machine through the forwarded ports: every generated configuration accepted by its real
//! consumer, HTTPS with its security headers, the HTTP redirect, XMPP logins over BOSH, SSH with
//! keys only, and the secrets and host key that make one machine itself.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use appliance_qemu_tests::host::{require_program, run};

use crate::http::{HttpClient, HttpResponse, Trust};
use crate::session::Ports;
use crate::ssh::{KeyAuth, Ssh};
use crate::xmpp::{BoshClient, Outcome};

/// Every generated configuration checked by its real consumer, on the machine (prosody, nginx,
/// coturn and systemd are in the image) and here (ruby-hocon for the videobridge's and jicofo's
/// HOCON, node for config.js: neither runs on the appliance, so neither is in it).
pub fn check_configs(ssh: &Ssh) -> Result<Vec<String>> {
    let mut done = Vec::new();
    let checks: &[(&str, &str)] = &[
        ("prosodyctl check config", "prosodyctl check config"),
        ("nginx -t", "nginx -t -q"),
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
        ssh.sudo(cmd)
            .with_context(|| format!("config check `{name}` failed"))?;
        done.push(name.to_string());
    }
    let hocon = require_program("hocon", "ruby-hocon")?;
    for (file, path) in [("jicofo.conf", "jicofo"), ("jvb.conf", "videobridge")] {
        let text = ssh.sudo(&format!("cat /data/config/jitsi/{file}"))?;
        let copy = tempfile::Builder::new().suffix(".conf").tempfile()?;
        std::fs::write(copy.path(), &text)?;
        run(Command::new(&hocon)
            .arg("-f")
            .arg(copy.path())
            .args(["get", path]))
        .with_context(|| format!("hocon cannot read {file}"))?;
        done.push(format!("hocon {file}"));
    }
    let node = require_program("node", "nodejs")?;
    for js in ["config.js", "interface_config.js"] {
        let text = ssh.sudo(&format!("cat /data/config/jitsi/{js}"))?;
        let file = tempfile::Builder::new().suffix(".js").tempfile()?;
        std::fs::write(file.path(), &text)?;
        run(Command::new(&node).arg("--check").arg(file.path()))
            .with_context(|| format!("node --check {js} failed"))?;
        for banned in ["meet-jit-si-turnrelay", "gravatar.com", "google-analytics"] {
            if text.contains(banned) {
                bail!("{js} mentions {banned}: the web app would contact a third party");
            }
        }
        done.push(format!("node --check {js}"));
    }
    Ok(done)
}

/// A client for `http(s)://<domain>/…` that connects to `127.0.0.1:<port>` (a port forwarded to
/// the machine) and names `domain` in TLS and the `Host` header.
pub fn client_for(domain: &str, port: u16, trust: &Trust) -> Result<HttpClient> {
    HttpClient::pinned(
        trust,
        Duration::from_secs(30),
        ([127, 0, 0, 1], port).into(),
        Some(domain),
    )
}

/// What the web server answers on HTTPS for `/`, checked for the security headers.
pub fn check_https(ports: Ports, domain: &str, trust: &Trust) -> Result<HttpResponse> {
    let client = client_for(domain, ports.https, trust)?;
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
    let client = client_for(domain, ports.http, &Trust::AcceptAny)?;
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

/// SSH lets the right key in and nothing else: no passwords, no other key, no root.
pub fn check_ssh_keys_only(ssh: &Ssh, other_key: &Path) -> Result<Vec<String>> {
    let mut seen = Vec::new();
    // Keys only means password authentication is not even offered, so no password has to be
    // tried.
    let (offered, methods) = ssh.password_offered()?;
    if offered {
        bail!(
            "SSH offers password authentication (methods: {})",
            methods.join(",")
        );
    }
    seen.push(format!(
        "password not offered (methods: {})",
        methods.join(",")
    ));
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
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub secrets_digest: String,
    pub host_key: String,
}

/// The machine's [`Identity`], read over SSH.
pub fn identity(ssh: &Ssh) -> Result<Identity> {
    let secrets = ssh.sudo("sha256sum /data/appliance/secrets.toml")?;
    let host_key = ssh.sudo("ssh-keygen -lf /data/ssh/ssh_host_ed25519_key.pub")?;
    Ok(Identity {
        secrets_digest: secrets.split_whitespace().next().unwrap_or("").to_string(),
        host_key: host_key.trim().to_string(),
    })
}
