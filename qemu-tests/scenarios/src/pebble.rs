//! Running Pebble (Let's Encrypt's test ACME server, Debian package `pebble`) on the host for
//! a guest to get certificates from.
//!
//! The ACME API listens on 0.0.0.0 with a certificate for IP 10.0.2.2 (the host as a QEMU
//! user-net guest sees it) and 127.0.0.1, signed by a throwaway CA made with openssl
//! ([`Pebble::api_ca_pem`]: the guest must trust it for the API). HTTP-01 validation goes to
//! `<name's address>:http_port`, names being resolved through `dns` (see [`crate::dns`]), so
//! the appliance's domain can point at 127.0.0.1 where the guest's port 80 is forwarded.
//! Certificates Pebble issues chain to [`Pebble::issuer_roots_pem`], a different CA made anew
//! at every start.

use std::fs::{self, File};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use appliance_qemu_tests::free_port;
use appliance_qemu_tests::host::{require_program, run};

use crate::http::{HttpClient, Trust};

/// The host's address for a QEMU user-net guest.
pub const HOST_FROM_GUEST: &str = "10.0.2.2";
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// How to run Pebble.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PebbleConfig {
    /// Port HTTP-01 challenges are fetched from (the host port forwarded to the guest's 80).
    pub http_port: u16,
    /// DNS server Pebble resolves names with.
    pub dns: SocketAddr,
    /// ACME API port on 0.0.0.0; 0 picks a free one.
    pub api_port: u16,
    /// Management API port on 127.0.0.1; 0 picks a free one.
    pub management_port: u16,
}

impl PebbleConfig {
    pub fn new(http_port: u16, dns: SocketAddr) -> PebbleConfig {
        PebbleConfig {
            http_port,
            dns,
            api_port: 0,
            management_port: 0,
        }
    }
}

/// A running Pebble. Dropping it kills the process.
pub struct Pebble {
    child: Child,
    dir: tempfile::TempDir,
    api_port: u16,
    management_port: u16,
    api_ca_pem: String,
}

impl std::fmt::Debug for Pebble {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pebble")
            .field("pid", &self.child.id())
            .field("api_port", &self.api_port)
            .field("management_port", &self.management_port)
            .finish_non_exhaustive()
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn json_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Makes `ca.pem` and a server `cert.pem`/`key.pem` for IP 10.0.2.2 and 127.0.0.1 in `dir`.
fn make_api_certs(dir: &Path) -> Result<()> {
    let openssl = require_program("openssl", "openssl")?;
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    run(Command::new(&openssl)
        .args(["req", "-x509"])
        .args(ec)
        .args(["-days", "7", "-subj", "/CN=appliance-tests Pebble API CA"])
        .args(["-addext", "basicConstraints=critical,CA:TRUE"])
        .args(["-addext", "keyUsage=critical,keyCertSign,cRLSign"])
        .arg("-keyout")
        .arg(dir.join("ca.key"))
        .arg("-out")
        .arg(dir.join("ca.pem")))?;
    run(Command::new(&openssl)
        .arg("req")
        .args(ec)
        .args(["-subj", "/CN=pebble"])
        .arg("-keyout")
        .arg(dir.join("key.pem"))
        .arg("-out")
        .arg(dir.join("req.pem")))?;
    let ext = dir.join("ext.cnf");
    fs::write(
        &ext,
        format!(
            "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n\
             extendedKeyUsage=serverAuth\n\
             subjectAltName=IP:{HOST_FROM_GUEST},IP:127.0.0.1,DNS:localhost\n"
        ),
    )?;
    run(Command::new(&openssl)
        .args(["x509", "-req", "-days", "7", "-set_serial", "2"])
        .arg("-in")
        .arg(dir.join("req.pem"))
        .arg("-CA")
        .arg(dir.join("ca.pem"))
        .arg("-CAkey")
        .arg(dir.join("ca.key"))
        .arg("-extfile")
        .arg(&ext)
        .arg("-out")
        .arg(dir.join("cert.pem")))?;
    Ok(())
}

impl Pebble {
    /// Generates the API certificates, writes the config and starts `pebble`, returning once
    /// its directory answers. Fails naming the package when `pebble` or `openssl` is missing.
    pub fn start(cfg: &PebbleConfig) -> Result<Pebble> {
        let pebble = require_program("pebble", "pebble")?;
        let dir = tempfile::Builder::new().prefix("pebble").tempdir()?;
        let d = dir.path();
        make_api_certs(d)?;
        let api_port = if cfg.api_port == 0 {
            free_port()?
        } else {
            cfg.api_port
        };
        let management_port = if cfg.management_port == 0 {
            free_port()?
        } else {
            cfg.management_port
        };
        // Nothing is served for TLS-ALPN-01; the port just has to be a number.
        let tls_port = free_port()?;
        let config = format!(
            "{{\n  \"pebble\": {{\n    \"listenAddress\": \"0.0.0.0:{api_port}\",\n    \
             \"managementListenAddress\": \"127.0.0.1:{management_port}\",\n    \
             \"certificate\": {},\n    \"privateKey\": {},\n    \
             \"httpPort\": {},\n    \"tlsPort\": {tls_port},\n    \
             \"ocspResponderURL\": \"\",\n    \"externalAccountBindingRequired\": false\n  }}\n}}\n",
            json_string(&d.join("cert.pem").display().to_string()),
            json_string(&d.join("key.pem").display().to_string()),
            cfg.http_port,
        );
        let config_path = d.join("pebble-config.json");
        fs::write(&config_path, config)?;
        let log = File::create(d.join("pebble.log"))?;
        let child = Command::new(&pebble)
            .arg("-config")
            .arg(&config_path)
            .arg("-dnsserver")
            .arg(cfg.dns.to_string())
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .current_dir(d)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", pebble.display()))?;
        let api_ca_pem = fs::read_to_string(d.join("ca.pem"))?;
        let mut me = Pebble {
            child,
            dir,
            api_port,
            management_port,
            api_ca_pem,
        };
        me.wait_ready()?;
        Ok(me)
    }

    fn client(&self) -> Result<HttpClient> {
        HttpClient::new(
            &Trust::Pem(self.api_ca_pem.clone()),
            Duration::from_secs(10),
        )
    }

    fn wait_ready(&mut self) -> Result<()> {
        let client = self.client()?;
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("pebble exited ({status}):\n{}", self.log());
            }
            let last = match client.get(&self.directory_url()) {
                Ok(r) if r.status == 200 && r.body.contains("newOrder") => return Ok(()),
                Ok(r) => format!("HTTP {}: {}", r.status, r.body),
                Err(e) => format!("{e:#}"),
            };
            if Instant::now() > deadline {
                bail!(
                    "pebble's directory did not answer within {START_TIMEOUT:?} ({last})\n{}",
                    self.log()
                );
            }
            sleep(Duration::from_millis(100));
        }
    }

    /// The ACME directory as the guest reaches it: `https://10.0.2.2:<port>/dir`.
    pub fn directory_url_for_guest(&self) -> String {
        format!("https://{HOST_FROM_GUEST}:{}/dir", self.api_port)
    }

    /// The ACME directory from the host: `https://127.0.0.1:<port>/dir`.
    pub fn directory_url(&self) -> String {
        format!("https://127.0.0.1:{}/dir", self.api_port)
    }

    pub fn api_port(&self) -> u16 {
        self.api_port
    }

    /// The CA (PEM) that signed the API's certificate: what an ACME client must trust.
    pub fn api_ca_pem(&self) -> &str {
        &self.api_ca_pem
    }

    /// The same CA as a file, e.g. for `CURL_CA_BUNDLE`.
    pub fn api_ca_path(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// The root (PEM) that certificates issued by this Pebble chain to, from the management
    /// API's `/roots/0`. New at every start.
    pub fn issuer_roots_pem(&self) -> Result<String> {
        let url = format!("https://127.0.0.1:{}/roots/0", self.management_port);
        let r = self.client()?.get(&url)?;
        if r.status != 200 || !r.body.contains("BEGIN CERTIFICATE") {
            bail!("GET {url}: HTTP {}: {}", r.status, r.body);
        }
        Ok(r.body)
    }

    /// Pebble's output so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("pebble.log")).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_strings_are_escaped() {
        assert_eq!(json_string(r#"/tmp/a"b\c"#), r#""/tmp/a\"b\\c""#);
        assert_eq!(json_string("x\ny"), r#""x\u000ay""#);
    }
}
