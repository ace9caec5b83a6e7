//! A stand-in for an update channel (`[updates] url`): a static HTTPS server on this machine's
//! loopback that serves a build's channel files (`index.json`, `index.json.sig`, the bundle).
//! Guests reach it at [`GUEST_HOST`], the host's address on QEMU's user network, so the URL is
//! fixed ([`url`]) and can be built into the images.
//!
//! Its certificate is issued by a test CA that the images trust through
//! `[updates] ca_certificate`. The CA is kept in a directory of the caller's choice (the tests
//! use `build/test-keys`) so that the images' inputs stay the same from one run to the next.
//!
//! The server answers 503 unless a test has opened it ([`ChannelServer::open`]): a machine
//! whose hourly update timer fires at another moment of a scenario finds the channel
//! unreachable, as when a real one is down, and changes nothing.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context, Result};
use openssl::asn1::Asn1Time;
use openssl::bn::{BigNum, MsbOption};
use openssl::ec::{EcGroup, EcKey};
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::ssl::{SslAcceptor, SslMethod};
use openssl::x509::extension::{
    BasicConstraints, ExtendedKeyUsage, KeyUsage, SubjectAlternativeName,
};
use openssl::x509::{X509Builder, X509NameBuilder, X509};

/// The host as a guest on QEMU's user network sees it.
pub const GUEST_HOST: &str = "10.0.2.2";
/// The port the channel is served on: part of the URL built into the images.
pub const PORT: u16 = 47443;
/// The path the channel's files are under.
const PREFIX: &str = "/channel/";

/// The channel URL the images are built with.
pub fn url() -> String {
    format!(
        "https://{GUEST_HOST}:{PORT}{}",
        PREFIX.trim_end_matches('/')
    )
}

/// The CA that issues the channel's certificate: `update-channel-ca.pem` (what the images
/// trust) and `update-channel-ca.key` in one directory, made once and reused.
pub struct TestCa {
    pub cert_pem: PathBuf,
    cert: X509,
    key: PKey<Private>,
}

fn p256_key() -> Result<PKey<Private>> {
    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1)?;
    Ok(PKey::from_ec_key(EcKey::generate(&group)?)?)
}

fn serial() -> Result<openssl::asn1::Asn1Integer> {
    let mut n = BigNum::new()?;
    n.rand(64, MsbOption::MAYBE_ZERO, false)?;
    Ok(n.to_asn1_integer()?)
}

fn name(cn: &str) -> Result<openssl::x509::X509Name> {
    let mut b = X509NameBuilder::new()?;
    b.append_entry_by_text("CN", cn)?;
    Ok(b.build())
}

impl TestCa {
    pub fn load_or_make(dir: &Path) -> Result<TestCa> {
        let cert_pem = dir.join("update-channel-ca.pem");
        let key_pem = dir.join("update-channel-ca.key");
        if let (Ok(c), Ok(k)) = (std::fs::read(&cert_pem), std::fs::read(&key_pem)) {
            if let (Ok(cert), Ok(key)) = (X509::from_pem(&c), PKey::private_key_from_pem(&k)) {
                return Ok(TestCa {
                    cert_pem,
                    cert,
                    key,
                });
            }
        }
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let key = p256_key()?;
        let mut b = X509Builder::new()?;
        b.set_version(2)?;
        let number = serial()?;
        b.set_serial_number(&number)?;
        let subject = name("appliance tests: update channel CA")?;
        b.set_subject_name(&subject)?;
        b.set_issuer_name(&subject)?;
        b.set_pubkey(&key)?;
        let (from, to) = (Asn1Time::days_from_now(0)?, Asn1Time::days_from_now(3650)?);
        b.set_not_before(&from)?;
        b.set_not_after(&to)?;
        b.append_extension(BasicConstraints::new().critical().ca().build()?)?;
        b.append_extension(
            KeyUsage::new()
                .critical()
                .key_cert_sign()
                .crl_sign()
                .build()?,
        )?;
        b.sign(&key, MessageDigest::sha256())?;
        let cert = b.build();
        // The key first: a CA certificate without its key would be made again next time.
        std::fs::write(&key_pem, key.private_key_to_pem_pkcs8()?)
            .with_context(|| format!("cannot write {}", key_pem.display()))?;
        std::fs::write(&cert_pem, cert.to_pem()?)
            .with_context(|| format!("cannot write {}", cert_pem.display()))?;
        Ok(TestCa {
            cert_pem,
            cert,
            key,
        })
    }

    /// A server certificate for [`GUEST_HOST`] and 127.0.0.1, valid for a month.
    fn issue(&self) -> Result<(X509, PKey<Private>)> {
        let key = p256_key()?;
        let mut b = X509Builder::new()?;
        b.set_version(2)?;
        let number = serial()?;
        b.set_serial_number(&number)?;
        let subject = name("appliance tests: update channel")?;
        b.set_subject_name(&subject)?;
        b.set_issuer_name(self.cert.subject_name())?;
        b.set_pubkey(&key)?;
        // A day back: the guest's clock may run a little behind this machine's.
        let yesterday = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs()
            .saturating_sub(86_400);
        let (from, to) = (
            Asn1Time::from_unix(yesterday as i64)?,
            Asn1Time::days_from_now(30)?,
        );
        b.set_not_before(&from)?;
        b.set_not_after(&to)?;
        b.append_extension(BasicConstraints::new().build()?)?;
        b.append_extension(ExtendedKeyUsage::new().server_auth().build()?)?;
        let san = SubjectAlternativeName::new()
            .ip(GUEST_HOST)
            .ip("127.0.0.1")
            .build(&b.x509v3_context(Some(&self.cert), None))?;
        b.append_extension(san)?;
        b.sign(&self.key, MessageDigest::sha256())?;
        Ok((b.build(), key))
    }
}

/// The channel server: serves the files of one directory under `/channel/` while open.
#[derive(Debug)]
pub struct ChannelServer {
    port: u16,
    open: Arc<AtomicBool>,
    requests: Arc<Mutex<Vec<String>>>,
}

/// Serving while this lives.
pub struct Open<'a>(&'a ChannelServer);

impl Drop for Open<'_> {
    fn drop(&mut self) {
        self.0.open.store(false, Ordering::SeqCst);
    }
}

impl ChannelServer {
    /// Listens on 127.0.0.1:`port` (0: any free port) with a certificate from `ca`, closed.
    pub fn start(ca: &TestCa, dir: &Path, port: u16) -> Result<ChannelServer> {
        let (cert, key) = ca.issue()?;
        let mut acceptor = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls_server())?;
        acceptor.set_certificate(&cert)?;
        acceptor.add_extra_chain_cert(ca.cert.clone())?;
        acceptor.set_private_key(&key)?;
        acceptor.check_private_key()?;
        let acceptor = Arc::new(acceptor.build());
        let listener =
            TcpListener::bind((IpAddr::V4(Ipv4Addr::LOCALHOST), port)).with_context(|| {
                format!("the update channel stand-in cannot listen on 127.0.0.1:{port}")
            })?;
        let port = listener.local_addr()?.port();
        let open = Arc::new(AtomicBool::new(false));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let (o, r, dir) = (open.clone(), requests.clone(), dir.to_path_buf());
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (acceptor, o, r, dir) = (acceptor.clone(), o.clone(), r.clone(), dir.clone());
                std::thread::spawn(move || {
                    if let Ok(mut tls) = acceptor.accept(stream) {
                        let line = serve(&mut tls, &dir, o.load(Ordering::SeqCst));
                        // Logged before the connection closes, so a client that has read the
                        // whole answer finds its request in the log.
                        if let Ok(mut log) = r.lock() {
                            log.push(line);
                        }
                    }
                });
            }
        });
        Ok(ChannelServer {
            port,
            open,
            requests,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Serves the files until the returned guard is dropped.
    pub fn open(&self) -> Open<'_> {
        self.open.store(true, Ordering::SeqCst);
        Open(self)
    }

    /// Every request so far, as `GET /channel/index.json 200`.
    pub fn requests(&self) -> Vec<String> {
        self.requests.lock().map(|r| r.clone()).unwrap_or_default()
    }
}

/// Answers one request; returns the request line and the status.
fn serve(tls: &mut openssl::ssl::SslStream<TcpStream>, dir: &Path, open: bool) -> String {
    let mut request = String::new();
    {
        let mut reader = BufReader::new(Read::by_ref(tls).take(16 * 1024));
        if reader.read_line(&mut request).is_err() {
            return "unreadable request".into();
        }
        let mut header = String::new();
        while reader.read_line(&mut header).is_ok_and(|n| n > 2) {
            header.clear();
        }
    }
    let request = request.trim().to_string();
    let mut words = request.split(' ');
    let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let file = path
        .strip_prefix(PREFIX)
        .filter(|n| !n.is_empty() && !n.contains('/') && !n.starts_with('.'))
        .map(|n| dir.join(n))
        .filter(|f| f.is_file());
    let status = match (method, open, &file) {
        ("GET", false, _) => reply(tls, "503 Service Unavailable", None),
        ("GET", true, Some(f)) => reply(tls, "200 OK", Some(f)),
        ("GET", true, None) => reply(tls, "404 Not Found", None),
        _ => reply(tls, "405 Method Not Allowed", None),
    };
    format!("{method} {path} {status}")
}

fn reply(tls: &mut impl Write, status: &str, file: Option<&Path>) -> String {
    let code = status.split(' ').next().unwrap_or("").to_string();
    let body = file.and_then(|f| std::fs::File::open(f).ok());
    let len = body
        .as_ref()
        .and_then(|b| b.metadata().ok())
        .map_or(0, |m| m.len());
    let head = format!("HTTP/1.1 {status}\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n");
    if tls.write_all(head.as_bytes()).is_err() {
        return format!("{code} (not sent)");
    }
    if let Some(mut b) = body {
        if std::io::copy(&mut b, tls).is_err() {
            return format!("{code} (cut off)");
        }
    }
    let _ = tls.flush();
    code
}

/// Fetches `https://127.0.0.1:<port><path>` trusting only `ca`: status code and body.
pub fn fetch(ca: &TestCa, port: u16, path: &str) -> Result<(u16, Vec<u8>)> {
    let mut connector = openssl::ssl::SslConnector::builder(SslMethod::tls_client())?;
    connector.cert_store_mut().add_cert(ca.cert.clone())?;
    let connector = connector.build();
    let mut config = connector.configure()?;
    config.set_use_server_name_indication(false);
    config.param_mut().set_ip(IpAddr::V4(Ipv4Addr::LOCALHOST))?;
    let tcp = TcpStream::connect((Ipv4Addr::LOCALHOST, port))?;
    let mut tls = config
        .verify_hostname(false)
        .connect("127.0.0.1", tcp)
        .context("TLS with the channel stand-in")?;
    write!(tls, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")?;
    let mut all = Vec::new();
    tls.read_to_end(&mut all).or_else(|e| {
        // The server closes without a TLS close_notify; what arrived is complete.
        if all.is_empty() {
            Err(e)
        } else {
            Ok(0)
        }
    })?;
    let split = all
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("no end of the response head")?;
    let head = String::from_utf8_lossy(&all[..split]).into_owned();
    let code: u16 = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("no status in {head:?}"))?;
    if !head.starts_with("HTTP/1.1 ") {
        bail!("not an HTTP response: {head:?}");
    }
    Ok((code, all[split + 4..].to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_served_only_while_open_and_only_from_the_channel_directory() {
        let keys = tempfile::tempdir().unwrap();
        let files = tempfile::tempdir().unwrap();
        std::fs::write(files.path().join("index.json"), b"{\"version\":\"3\"}").unwrap();
        std::fs::write(keys.path().join("secret"), b"not served").unwrap();
        let ca = TestCa::load_or_make(keys.path()).unwrap();
        let server = ChannelServer::start(&ca, files.path(), 0).unwrap();
        let port = server.port();

        assert_eq!(fetch(&ca, port, "/channel/index.json").unwrap().0, 503);
        {
            let _open = server.open();
            let (code, body) = fetch(&ca, port, "/channel/index.json").unwrap();
            assert_eq!((code, body.as_slice()), (200, &b"{\"version\":\"3\"}"[..]));
            assert_eq!(fetch(&ca, port, "/channel/missing").unwrap().0, 404);
            assert_eq!(fetch(&ca, port, "/channel/../secret").unwrap().0, 404);
            assert_eq!(fetch(&ca, port, "/index.json").unwrap().0, 404);
        }
        assert_eq!(fetch(&ca, port, "/channel/index.json").unwrap().0, 503);
        let seen = server.requests();
        assert_eq!(seen.len(), 6, "{seen:?}");
        assert_eq!(seen[1], "GET /channel/index.json 200");

        // The same CA next time (the images keep trusting it), and no other CA is trusted.
        let again = TestCa::load_or_make(keys.path()).unwrap();
        assert_eq!(again.cert.to_pem().unwrap(), ca.cert.to_pem().unwrap());
        let other = tempfile::tempdir().unwrap();
        let stranger = TestCa::load_or_make(other.path()).unwrap();
        assert!(fetch(&stranger, port, "/channel/index.json").is_err());
    }

    #[test]
    fn the_url_names_the_host_as_guests_see_it() {
        assert_eq!(url(), "https://10.0.2.2:47443/channel");
    }
}
