//! The BOSH client against a real, throwaway prosody (Debian's package) on loopback: plain
//! HTTP as the appliance's prosody serves it behind nginx, and HTTPS to check the TLS pinning
//! (connect to 127.0.0.1, name the domain) with a self-signed certificate.
//!
//! Needs the host packages `prosody` and `openssl`; without them the tests fail, naming them.

use std::fs;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use appliance_qemu_tests::free_port;
use appliance_qemu_tests::host::{require_program, run, tail};
use appliance_scenarios::http::Trust;
use appliance_scenarios::xmpp::{BoshClient, Outcome};

const DOMAIN: &str = "meet.test";
const GUEST: &str = "guest.meet.test";
const USER: &str = "alice";
const PASSWORD: &str = "correct horse, battery=staple";

/// A prosody child process with its own config, data and ports. Killed on drop.
struct Prosody {
    child: Child,
    dir: tempfile::TempDir,
    http_port: u16,
    https_port: u16,
}

impl Drop for Prosody {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prosody {
    fn start() -> Result<Prosody> {
        let prosody = require_program("prosody", "prosody")?;
        let prosodyctl = require_program("prosodyctl", "prosody")?;
        let openssl = require_program("openssl", "openssl")?;
        let dir = tempfile::Builder::new().prefix("bosh-prosody").tempdir()?;
        let d = dir.path();
        fs::create_dir_all(d.join("data"))?;
        fs::create_dir_all(d.join("certs"))?;
        run(Command::new(&openssl)
            .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
            .args(["ec_paramgen_curve:prime256v1", "-nodes", "-days", "2"])
            .arg("-keyout")
            .arg(d.join("certs/key.pem"))
            .arg("-out")
            .arg(d.join("certs/cert.pem"))
            .args(["-subj", &format!("/CN={DOMAIN}")])
            .args(["-addext", &format!("subjectAltName=DNS:{DOMAIN}")]))?;
        let (c2s, http_port, https_port) = (free_port()?, free_port()?, free_port()?);
        let p = |name: &str| d.join(name).display().to_string();
        let config = format!(
            r#"-- throwaway instance for appliance-qemu-tests
run_as_root = true
pidfile = "{pid}"
data_path = "{data}"
certificates = "{certs}"
log = {{ debug = "{log}" }}
modules_enabled = {{ "saslauth", "disco", "ping", "posix", "bosh" }}
modules_disabled = {{ "s2s" }}
c2s_ports = {{ {c2s} }}
c2s_interfaces = {{ "127.0.0.1" }}
s2s_ports = {{ }}
http_ports = {{ {http_port} }}
http_interfaces = {{ "127.0.0.1" }}
https_ports = {{ {https_port} }}
https_interfaces = {{ "127.0.0.1" }}
https_ssl = {{ certificate = "{cert}", key = "{key}" }}
consider_bosh_secure = true
c2s_require_encryption = false

VirtualHost "{DOMAIN}"
    authentication = "internal_hashed"

VirtualHost "{GUEST}"
    authentication = "anonymous"
"#,
            pid = p("prosody.pid"),
            data = p("data"),
            certs = p("certs"),
            log = p("prosody.log"),
            cert = p("certs/cert.pem"),
            key = p("certs/key.pem"),
        );
        let cfg = d.join("prosody.cfg.lua");
        fs::write(&cfg, config)?;
        run(Command::new(&prosodyctl)
            .arg("--config")
            .arg(&cfg)
            .args(["register", USER, DOMAIN, PASSWORD]))?;
        let out = fs::File::create(d.join("stdout.log"))?;
        let child = Command::new(&prosody)
            .arg("--config")
            .arg(&cfg)
            .arg("-F")
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("starting {}", prosody.display()))?;
        let mut me = Prosody {
            child,
            dir,
            http_port,
            https_port,
        };
        me.wait_listening()?;
        Ok(me)
    }

    fn wait_listening(&mut self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("prosody exited ({status}):\n{}", self.logs());
            }
            let up = |port| TcpStream::connect(("127.0.0.1", port)).is_ok();
            if up(self.http_port) && up(self.https_port) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("prosody did not listen within 30 s:\n{}", self.logs());
            }
            sleep(Duration::from_millis(100));
        }
    }

    fn logs(&self) -> String {
        let read = |p: PathBuf| fs::read_to_string(p).unwrap_or_default();
        format!(
            "--- stdout ---\n{}\n--- prosody.log (tail) ---\n{}",
            read(self.dir.path().join("stdout.log")),
            tail(&read(self.dir.path().join("prosody.log")), 40)
        )
    }

    fn http_url(&self) -> String {
        format!("http://127.0.0.1:{}/http-bind", self.http_port)
    }

    fn https_url(&self) -> String {
        format!("https://127.0.0.1:{}/http-bind", self.https_port)
    }

    fn cert_pem(&self) -> String {
        fs::read_to_string(self.dir.path().join("certs/cert.pem")).unwrap()
    }
}

fn with_logs<T>(p: &Prosody, r: Result<T>) -> T {
    match r {
        Ok(v) => v,
        Err(e) => panic!("{e:#}\n{}", p.logs()),
    }
}

fn assert_bound(outcome: &Outcome, user_domain: &str, p: &Prosody) {
    match outcome {
        Outcome::Success { jid } => {
            let (bare, resource) = jid.split_once('/').unwrap_or((jid, ""));
            assert!(
                bare.ends_with(&format!("@{user_domain}")) || bare == user_domain,
                "bound JID {jid} is not on {user_domain}"
            );
            assert!(!resource.is_empty(), "bound JID {jid} has no resource");
        }
        other => panic!("expected success, got {other:?}\n{}", p.logs()),
    }
}

#[test]
fn plain_and_scram_logins_over_http() {
    let _t = appliance_qemu_tests::timed!();
    let p = Prosody::start().unwrap_or_else(|e| panic!("{e:#}"));
    let bosh = BoshClient::new(&p.http_url(), DOMAIN, &Trust::AcceptAny).unwrap();

    let mechs = with_logs(&p, bosh.mechanisms());
    assert!(mechs.iter().any(|m| m == "PLAIN"), "{mechs:?}");
    assert!(mechs.iter().any(|m| m == "SCRAM-SHA-1"), "{mechs:?}");
    assert!(!mechs.iter().any(|m| m == "ANONYMOUS"), "{mechs:?}");

    let ok = with_logs(&p, bosh.login_plain(USER, PASSWORD));
    assert_bound(&ok, DOMAIN, &p);
    assert!(ok.jid().unwrap().starts_with(&format!("{USER}@{DOMAIN}/")));

    let wrong = with_logs(&p, bosh.login_plain(USER, "not the password"));
    assert!(wrong.is_not_authorized(), "{wrong:?}");
    eprintln!("mechanisms {mechs:?}; right password {ok:?}; wrong password {wrong:?}");
    let nobody = with_logs(&p, bosh.login_plain("mallory", PASSWORD));
    assert!(nobody.is_not_authorized(), "{nobody:?}");

    let scram = with_logs(&p, bosh.login_scram_sha1(USER, PASSWORD));
    assert_eq!(
        scram.jid().map(|j| j.split('/').next().unwrap()),
        Some("alice@meet.test")
    );
    let scram_wrong = with_logs(&p, bosh.login_scram_sha1(USER, "nope"));
    assert!(scram_wrong.is_not_authorized(), "{scram_wrong:?}");

    // The secure domain: no anonymous login on the main host.
    let anon = with_logs(&p, bosh.login_anonymous());
    assert!(
        matches!(&anon, Outcome::NotOffered { offered } if offered.iter().any(|m| m == "PLAIN")),
        "{anon:?}"
    );
}

#[test]
fn anonymous_login_on_the_guest_host() {
    let _t = appliance_qemu_tests::timed!();
    let p = Prosody::start().unwrap_or_else(|e| panic!("{e:#}"));
    let bosh = BoshClient::new(&p.http_url(), GUEST, &Trust::AcceptAny).unwrap();
    let mechs = with_logs(&p, bosh.mechanisms());
    assert_eq!(mechs, ["ANONYMOUS"]);
    let outcome = with_logs(&p, bosh.login_anonymous());
    assert_bound(&outcome, GUEST, &p);
    eprintln!("anonymous: {outcome:?}");
    // Two anonymous logins get different JIDs.
    let again = with_logs(&p, bosh.login_anonymous());
    assert_ne!(outcome.jid(), again.jid());
    // PLAIN is not offered there.
    let plain = with_logs(&p, bosh.login_plain(USER, PASSWORD));
    assert!(matches!(plain, Outcome::NotOffered { .. }), "{plain:?}");
}

#[test]
fn https_with_pinned_address_and_trusted_self_signed_cert() {
    let _t = appliance_qemu_tests::timed!();
    let p = Prosody::start().unwrap_or_else(|e| panic!("{e:#}"));
    // Trusting exactly the server's self-signed certificate: name checked against DOMAIN
    // although the connection goes to 127.0.0.1.
    let trusted = BoshClient::new(&p.https_url(), DOMAIN, &Trust::Pem(p.cert_pem())).unwrap();
    let ok = with_logs(&p, trusted.login_plain(USER, PASSWORD));
    assert_bound(&ok, DOMAIN, &p);

    // Any certificate: also fine.
    let any = BoshClient::new(&p.https_url(), DOMAIN, &Trust::AcceptAny).unwrap();
    assert!(with_logs(&p, any.login_scram_sha1(USER, PASSWORD))
        .jid()
        .is_some());

    // The same certificate does not cover another name.
    let wrong_name = BoshClient::new(&p.https_url(), "other.test", &Trust::Pem(p.cert_pem()));
    let err = wrong_name.unwrap().mechanisms().unwrap_err();
    assert!(format!("{err:#}").contains("other.test"), "{err:#}");

    // Another self-signed certificate is not trusted.
    let other = other_self_signed(p.dir.path()).unwrap();
    let untrusted = BoshClient::new(&p.https_url(), DOMAIN, &Trust::Pem(other)).unwrap();
    let err = untrusted.mechanisms().unwrap_err();
    eprintln!("untrusted certificate: {err:#}");
}

fn other_self_signed(dir: &Path) -> Result<String> {
    let openssl = require_program("openssl", "openssl")?;
    run(Command::new(openssl)
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
        .args(["ec_paramgen_curve:prime256v1", "-nodes", "-days", "2"])
        .arg("-keyout")
        .arg(dir.join("other.key"))
        .arg("-out")
        .arg(dir.join("other.pem"))
        .args(["-subj", &format!("/CN={DOMAIN}")])
        .args(["-addext", &format!("subjectAltName=DNS:{DOMAIN}")]))?;
    Ok(fs::read_to_string(dir.join("other.pem"))?)
}
