//! Let's Encrypt (or any ACME CA) through Debian's `dehydrated`, HTTP-01 via the nginx webroot.
//!
//! Before asking the CA we fetch a random token through http://<domain>/ ourselves: when that
//! fails, the CA would fail too, and our message can say why in plain words (and we do not burn
//! the CA's rate limit on failed validations).

use crate::answers::{AcmeAnswers, Answers};
use crate::fsutil;
use crate::paths::{self, Paths};
use crate::runner::Cmd;
use crate::secrets::random_token;
use crate::services;
use crate::steps::Ctx;
use crate::tls;
use anyhow::{bail, Context, Result};
use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A new certificate was installed.
    Installed,
    /// The installed certificate is already the CA's current one.
    Unchanged,
}

/// Shell-quote a value for dehydrated's config (a bash file it sources).
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// The dehydrated config file text.
pub fn config_text(paths: &Paths, le: &AcmeAnswers) -> String {
    let mut t = String::from("# Written by appliance-admin; changes are overwritten.\n");
    let mut kv = |k: &str, v: &str| t.push_str(&format!("{k}={}\n", sh_quote(v)));
    kv("CA", &le.directory);
    kv("CONTACT_EMAIL", &le.email);
    kv("CHALLENGETYPE", "http-01");
    kv("WELLKNOWN", paths::MACHINE_ACME_WEBROOT);
    kv("BASEDIR", paths::MACHINE_ACME_BASEDIR);
    kv(
        "DOMAINS_TXT",
        &format!("{}/domains.txt", paths::MACHINE_ACME_BASEDIR),
    );
    kv("KEY_ALGO", "prime256v1");
    // dehydrated calls the hook for every event and fails when it is missing.
    if paths.acme_hook().exists() {
        kv("HOOK", paths::MACHINE_ACME_HOOK);
    }
    t
}

/// Write config, domains.txt and the optional CA bundle; returns the config path as the
/// machine sees it and the CA bundle path (if any).
pub fn write_config(
    paths: &Paths,
    answers: &Answers,
    le: &AcmeAnswers,
) -> Result<(String, Option<String>)> {
    let dir = paths.acme_dir();
    fsutil::ensure_dir(&dir, 0o700, None)?;
    fsutil::atomic_write(
        &dir.join("config"),
        config_text(paths, le).as_bytes(),
        0o600,
        None,
    )?;
    fsutil::atomic_write(
        &dir.join("domains.txt"),
        format!("{}\n", answers.domain).as_bytes(),
        0o644,
        None,
    )?;
    let ca = match &le.ca_certificate {
        Some(pem) => {
            fsutil::atomic_write(&dir.join("ca.pem"), pem.as_bytes(), 0o644, None)?;
            Some(format!("{}/ca.pem", paths::MACHINE_ACME_BASEDIR))
        }
        None => None,
    };
    Ok((format!("{}/config", paths::MACHINE_ACME_BASEDIR), ca))
}

/// Where dehydrated puts the current certificate for `domain`.
fn issued(paths: &Paths, domain: &str) -> (PathBuf, PathBuf) {
    let d = paths.acme_dir().join("certs").join(domain);
    (d.join("fullchain.pem"), d.join("privkey.pem"))
}

/// Is http://<domain>/.well-known/acme-challenge/ served by this machine?
pub fn check_reachable(paths: &Paths, domain: &str) -> Result<(), String> {
    let webroot = paths.acme_webroot();
    let token = random_token(32).map_err(|e| e.to_string())?;
    let file = webroot.join(&token);
    fsutil::ensure_dir(&webroot, 0o755, None).map_err(|e| format!("{e:#}"))?;
    fs::write(&file, &token).map_err(|e| format!("cannot write {}: {e}", file.display()))?;
    // nginx may still be starting (appliance-acme.service runs next to it at boot): retry
    // connection failures a few times, but not a name that does not resolve.
    let mut result = fetch_token(domain, &token);
    for _ in 0..3 {
        match &result {
            Err(e) if !e.contains("cannot be resolved") && !e.contains("has no address") => {
                std::thread::sleep(Duration::from_secs(5));
                result = fetch_token(domain, &token);
            }
            _ => break,
        }
    }
    let _ = fs::remove_file(&file);
    result
}

fn fetch_token(domain: &str, token: &str) -> Result<(), String> {
    let url = format!("http://{domain}/.well-known/acme-challenge/{token}");
    let addrs: Vec<SocketAddr> = (domain, 80)
        .to_socket_addrs()
        .map_err(|e| format!("the name {domain} cannot be resolved ({e}); create a DNS record that points {domain} to this machine's public address"))?
        .collect();
    if addrs.is_empty() {
        return Err(format!(
            "the name {domain} has no address; create a DNS record that points it to this machine"
        ));
    }
    let mut problems = Vec::new();
    for addr in &addrs {
        match http_get(addr, domain, token) {
            Ok(body) if body.trim() == token => return Ok(()),
            Ok(_) => problems.push(format!("{addr} answered, but with other content (is another web server answering for {domain}?)")),
            Err(e) => problems.push(format!("{addr}: {e}")),
        }
    }
    Err(format!(
        "{url} could not be fetched from this machine ({}). The certificate authority must reach this machine on port 80 under the name {domain}: check the DNS record and any port forwarding or firewall",
        problems.join("; ")
    ))
}

/// A minimal HTTP/1.0 GET; returns the body of a 200 answer.
fn http_get(addr: &SocketAddr, host: &str, token: &str) -> Result<String, String> {
    let timeout = Duration::from_secs(5);
    let mut s = TcpStream::connect_timeout(addr, timeout).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    let req = format!("GET /.well-known/acme-challenge/{token} HTTP/1.0\r\nHost: {host}\r\nUser-Agent: appliance-admin\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    s.take(64 * 1024)
        .read_to_end(&mut buf)
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or("the answer was not HTTP")?;
    let status = head.lines().next().unwrap_or("");
    let code = status.split_whitespace().nth(1).unwrap_or("");
    if code != "200" {
        return Err(format!("answered \"{status}\""));
    }
    Ok(body.to_string())
}

/// `dehydrated --config CONFIG ARGS`, trusting the CA bundle of a private CA when there is one.
fn dehydrated(config: &str, ca: &Option<String>, args: &[&str]) -> Cmd {
    let cmd = Cmd::new("dehydrated")
        .args(["--config", config])
        .args(args.iter().copied());
    match ca {
        Some(ca) => cmd.env("CURL_CA_BUNDLE", ca.clone()),
        None => cmd,
    }
}

/// Has dehydrated registered an account (with any CA) yet?
fn has_account(paths: &Paths) -> bool {
    fs::read_dir(paths.acme_dir().join("accounts")).is_ok_and(|rd| {
        rd.filter_map(|e| e.ok())
            .any(|e| e.path().join("account_key.pem").is_file())
    })
}

/// Give the account dehydrated registered the new contact address (`--register` leaves an
/// existing account as it is). Returns false when there is no account to update yet: the next
/// certificate request registers one with the new address.
pub fn update_contact(ctx: &mut Ctx, answers: &Answers) -> Result<bool> {
    let Some(le) = &answers.letsencrypt else {
        return Ok(false);
    };
    if !has_account(ctx.paths) {
        return Ok(false);
    }
    let (config, ca) = write_config(ctx.paths, answers, le)?;
    ctx.runner
        .check(&dehydrated(&config, &ca, &["--account"]))?;
    Ok(true)
}

/// Get or renew the certificate and install it. `quiet`: print nothing unless something
/// changed or went wrong (for the daily timer).
pub fn obtain(ctx: &mut Ctx, answers: &Answers, quiet: bool) -> Result<Outcome> {
    let Some(le) = &answers.letsencrypt else {
        bail!("no e-mail address for Let's Encrypt was given during setup");
    };
    let (config, ca) = write_config(ctx.paths, answers, le)?;
    if let Err(why) = check_reachable(ctx.paths, &answers.domain) {
        bail!("{why}");
    }
    if !quiet {
        ctx.say(&format!(
            "setup: asking {} for a certificate for {}",
            le.directory, answers.domain
        ));
    }
    ctx.runner
        .check(&dehydrated(&config, &ca, &["--register", "--accept-terms"]))?;
    let out = ctx.runner.check(&dehydrated(&config, &ca, &["--cron"]))?;
    let outcome = install_issued(ctx, &answers.domain, &out.stdout)?;
    if outcome == Outcome::Installed {
        ctx.say(&format!(
            "setup: installed the certificate from {} for {}",
            le.directory, answers.domain
        ));
    }
    Ok(outcome)
}

/// Copy dehydrated's current certificate into tls/ when it differs from the installed one,
/// then make nginx and coturn use it.
pub fn install_issued(ctx: &mut Ctx, domain: &str, dehydrated_said: &str) -> Result<Outcome> {
    let (fullchain, privkey) = issued(ctx.paths, domain);
    let chain = fs::read(&fullchain).with_context(|| {
        format!(
            "dehydrated finished but left no certificate at {}: {}",
            ctx.paths.display(&fullchain),
            dehydrated_said.trim()
        )
    })?;
    let key = fs::read(&privkey)
        .with_context(|| format!("cannot read {}", ctx.paths.display(&privkey)))?;
    // Unchanged only when both are: a certificate in use with another key is repaired here.
    let installed = |p: PathBuf| fs::read(p).ok();
    if installed(ctx.paths.tls_cert()).as_deref() == Some(chain.as_slice())
        && installed(ctx.paths.tls_key()).as_deref() == Some(key.as_slice())
    {
        return Ok(Outcome::Unchanged);
    }
    tls::install_pair(ctx.paths, &chain, &key)?;
    services::certificate_changed(ctx)?;
    Ok(Outcome::Installed)
}

/// `appliance-admin acme renew`: nothing to do (and silent) before setup or without ACME.
pub fn renew(ctx: &mut Ctx) -> Result<()> {
    if !ctx.paths.setup_done().exists() || !ctx.paths.answers().exists() {
        return Ok(());
    }
    let answers = Answers::load(&ctx.paths.answers())?;
    if answers.letsencrypt.is_none() {
        return Ok(());
    }
    obtain(ctx, &answers, true).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runner::{Output, RecordingRunner};
    use crate::steps::tests::{answers, machine};
    use std::net::TcpListener;

    fn le() -> AcmeAnswers {
        AcmeAnswers {
            email: "admin@example.org".into(),
            directory: "https://pebble.test:14000/dir".into(),
            ca_certificate: Some(
                "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n".into(),
            ),
        }
    }

    #[test]
    fn config_is_quoted_and_complete() {
        let d = tempfile::tempdir().unwrap();
        let paths = Paths::new(d.path());
        let mut l = le();
        l.email = "o'brien@example.org".into();
        let t = config_text(&paths, &l);
        assert!(t.contains("CA='https://pebble.test:14000/dir'\n"));
        assert!(t.contains("CONTACT_EMAIL='o'\\''brien@example.org'\n"));
        assert!(t.contains("WELLKNOWN='/var/lib/appliance/acme-challenge'\n"));
        assert!(t.contains("BASEDIR='/data/config/acme'\n"));
        assert!(t.contains("KEY_ALGO='prime256v1'\n"));
        assert!(!t.contains("HOOK"), "no hook in the image, none configured");
        fs::create_dir_all(paths.acme_hook().parent().unwrap()).unwrap();
        fs::write(paths.acme_hook(), "#!/bin/sh\n").unwrap();
        assert!(config_text(&paths, &l).contains("HOOK='/usr/lib/appliance/acme-hook'\n"));
    }

    /// Serve the webroot on a loopback port like nginx would (one request per connection).
    fn serve_webroot(webroot: PathBuf) -> u16 {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for s in l.incoming() {
                let mut s = s.unwrap();
                let mut buf = [0u8; 1024];
                let n = s.read(&mut buf).unwrap();
                let req = String::from_utf8_lossy(&buf[..n]).to_string();
                let path = req.split_whitespace().nth(1).unwrap().to_string();
                let name = path.rsplit('/').next().unwrap();
                let resp = match fs::read_to_string(webroot.join(name)) {
                    Ok(body) => format!("HTTP/1.0 200 OK\r\n\r\n{body}"),
                    Err(_) => "HTTP/1.0 404 Not Found\r\n\r\n".to_string(),
                };
                let _ = s.write_all(resp.as_bytes());
            }
        });
        port
    }

    #[test]
    fn reachability_fetches_the_token() {
        let d = tempfile::tempdir().unwrap();
        let paths = Paths::new(d.path());
        fs::create_dir_all(paths.acme_webroot()).unwrap();
        let port = serve_webroot(paths.acme_webroot());
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let token = "abc123";
        fs::write(paths.acme_webroot().join(token), token).unwrap();
        assert_eq!(http_get(&addr, "meet.localhost", token).unwrap(), token);
        assert!(http_get(&addr, "meet.localhost", "missing")
            .unwrap_err()
            .contains("404"));
        // Nobody listening.
        let closed = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        assert!(http_get(&closed, "x", "t").is_err());
    }

    #[test]
    fn unresolvable_name_is_explained() {
        let d = tempfile::tempdir().unwrap();
        let paths = Paths::new(d.path());
        let e = check_reachable(&paths, "no-such-host.invalid").unwrap_err();
        assert!(e.contains("no-such-host.invalid"), "{e}");
        assert!(
            fs::read_dir(paths.acme_webroot()).unwrap().next().is_none(),
            "token removed"
        );
    }

    #[test]
    fn issued_certificate_installed_once() {
        let d = tempfile::tempdir().unwrap();
        let paths = machine(d.path());
        let certs = paths.acme_dir().join("certs/meet.localhost");
        fs::create_dir_all(&certs).unwrap();
        fs::write(certs.join("fullchain-1.pem"), "CHAIN").unwrap();
        std::os::unix::fs::symlink("fullchain-1.pem", certs.join("fullchain.pem")).unwrap();
        fs::write(certs.join("privkey.pem"), "PRIV").unwrap();
        let mut runner = RecordingRunner::new();
        let mut out = Vec::new();
        let mut ctx = Ctx {
            paths: &paths,
            runner: &mut runner,
            out: &mut out,
            from_boot: false,
        };
        assert_eq!(
            install_issued(&mut ctx, "meet.localhost", "").unwrap(),
            Outcome::Installed
        );
        assert_eq!(
            install_issued(&mut ctx, "meet.localhost", "").unwrap(),
            Outcome::Unchanged
        );
        assert_eq!(fs::read_to_string(paths.tls_cert()).unwrap(), "CHAIN");
        assert_eq!(fs::read_to_string(paths.tls_key()).unwrap(), "PRIV");
        // The CA's certificate in use with another key (a renewal cut short): installed again.
        crate::tls::install_pair(&paths, b"CHAIN", b"OTHER KEY").unwrap();
        assert_eq!(
            install_issued(&mut ctx, "meet.localhost", "").unwrap(),
            Outcome::Installed
        );
        assert_eq!(fs::read_to_string(paths.tls_key()).unwrap(), "PRIV");
        assert_eq!(
            runner.lines(),
            vec![
                "systemctl reload-or-restart nginx.service",
                "systemctl try-restart coturn.service",
                "systemctl reload-or-restart nginx.service",
                "systemctl try-restart coturn.service"
            ]
        );
        let e = install_issued(
            &mut Ctx {
                paths: &paths,
                runner: &mut runner,
                out: &mut out,
                from_boot: false,
            },
            "other.localhost",
            "ERROR: rate limited",
        )
        .unwrap_err();
        assert!(e.to_string().contains("rate limited"));
    }

    #[test]
    fn renew_is_silent_before_setup() {
        let d = tempfile::tempdir().unwrap();
        let paths = machine(d.path());
        let mut runner = RecordingRunner::new();
        let mut out = Vec::new();
        renew(&mut Ctx {
            paths: &paths,
            runner: &mut runner,
            out: &mut out,
            from_boot: false,
        })
        .unwrap();
        assert!(out.is_empty() && runner.commands.is_empty());
    }

    #[test]
    fn unreachable_domain_does_not_call_the_ca() {
        let d = tempfile::tempdir().unwrap();
        let paths = machine(d.path());
        let mut a = answers();
        a.domain = "unreachable.invalid".into();
        a.letsencrypt = Some(le());
        let mut runner = RecordingRunner::with_handler(|_| {
            Ok(Output {
                success: true,
                ..Output::default()
            })
        });
        let mut out = Vec::new();
        let e = obtain(
            &mut Ctx {
                paths: &paths,
                runner: &mut runner,
                out: &mut out,
                from_boot: false,
            },
            &a,
            false,
        )
        .unwrap_err();
        assert!(e.to_string().contains("unreachable.invalid"));
        assert!(runner.commands.is_empty());
        assert!(paths.acme_dir().join("ca.pem").exists());
    }
}
