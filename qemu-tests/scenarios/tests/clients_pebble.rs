//! Pebble on the host, reached through its throwaway API CA, and a whole HTTP-01 issuance with
//! dehydrated (what the appliance runs) against it: the ACME path later used from QEMU.
//!
//! Needs the host packages `pebble`, `openssl` and `dehydrated`; without them the tests fail,
//! naming them.

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::{sleep, JoinHandle};
use std::time::Duration;

use anyhow::{Context, Result};
use appliance_qemu_tests::free_port;
use appliance_qemu_tests::host::{require_program, run};
use appliance_scenarios::dns::DnsServer;
use appliance_scenarios::http::{HttpClient, Trust};
use appliance_scenarios::pebble::{Pebble, PebbleConfig};

const DOMAIN: &str = "meet.localhost";

#[test]
fn pebble_directory_through_its_api_ca() {
    let _t = appliance_qemu_tests::timed!();
    let dns = DnsServer::start(&[(DOMAIN, Ipv4Addr::LOCALHOST)]).unwrap();
    let pebble = Pebble::start(&PebbleConfig::new(free_port().unwrap(), dns.addr()))
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert!(pebble
        .directory_url_for_guest()
        .starts_with("https://10.0.2.2:"));
    assert!(pebble.directory_url_for_guest().ends_with("/dir"));

    let client = HttpClient::new(
        &Trust::Pem(pebble.api_ca_pem().into()),
        Duration::from_secs(10),
    )
    .unwrap();
    let dir = client.get(&pebble.directory_url()).unwrap();
    assert_eq!(dir.status, 200);
    for key in ["newAccount", "newNonce", "newOrder"] {
        assert!(dir.body.contains(key), "{}", dir.body);
    }

    // The API certificate is not trusted without its CA.
    let other = HttpClient::new(&Trust::System, Duration::from_secs(10)).unwrap();
    assert!(other.get(&pebble.directory_url()).is_err());

    let roots = pebble.issuer_roots_pem().unwrap();
    assert!(roots.contains("BEGIN CERTIFICATE"));
    assert_ne!(roots.trim(), pebble.api_ca_pem().trim());
}

/// Serves `<webroot>/<token>` at `/.well-known/acme-challenge/<token>` until dropped.
struct ChallengeServer {
    port: u16,
    stop: Arc<AtomicBool>,
    served: Arc<AtomicUsize>,
    thread: Option<JoinHandle<()>>,
}

impl ChallengeServer {
    fn start(webroot: PathBuf) -> Result<ChallengeServer> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let port = listener.local_addr()?.port();
        let stop = Arc::new(AtomicBool::new(false));
        let served = Arc::new(AtomicUsize::new(0));
        let thread = {
            let (stop, served) = (stop.clone(), served.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            if serve_one(stream, &webroot).unwrap_or(false) {
                                served.fetch_add(1, Ordering::SeqCst);
                            }
                        }
                        Err(_) => sleep(Duration::from_millis(20)),
                    }
                }
            })
        };
        Ok(ChallengeServer {
            port,
            stop,
            served,
            thread: Some(thread),
        })
    }
}

impl Drop for ChallengeServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Answers one request; true when a challenge file was served.
fn serve_one(stream: TcpStream, webroot: &Path) -> Result<bool> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header)? == 0 || header.trim().is_empty() {
            break;
        }
    }
    let path = request_line.split_whitespace().nth(1).unwrap_or("");
    let token = path.strip_prefix("/.well-known/acme-challenge/");
    let body = token
        .filter(|t| {
            !t.is_empty()
                && t.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b))
        })
        .and_then(|t| fs::read(webroot.join(t)).ok());
    let mut stream = stream;
    match &body {
        Some(b) => {
            write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                b.len()
            )?;
            stream.write_all(b)?;
        }
        None => stream.write_all(
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        )?,
    }
    Ok(body.is_some())
}

#[test]
fn dehydrated_http01_issuance_against_pebble() {
    let _t = appliance_qemu_tests::timed!();
    let dehydrated =
        require_program("dehydrated", "dehydrated").unwrap_or_else(|e| panic!("{e:#}"));
    let openssl = require_program("openssl", "openssl").unwrap_or_else(|e| panic!("{e:#}"));
    let work = tempfile::Builder::new()
        .prefix("dehydrated")
        .tempdir()
        .unwrap();
    let webroot = work.path().join("acme-challenge");
    let basedir = work.path().join("acme");
    fs::create_dir_all(&webroot).unwrap();
    fs::create_dir_all(&basedir).unwrap();

    let challenges = ChallengeServer::start(webroot.clone()).unwrap();
    let dns = DnsServer::start(&[(DOMAIN, Ipv4Addr::LOCALHOST)]).unwrap();
    let pebble = Pebble::start(&PebbleConfig::new(challenges.port, dns.addr()))
        .unwrap_or_else(|e| panic!("{e:#}"));

    let config = work.path().join("config");
    fs::write(
        &config,
        format!(
            "CA=\"{}\"\nCHALLENGETYPE=\"http-01\"\nWELLKNOWN=\"{}\"\nBASEDIR=\"{}\"\n\
             KEY_ALGO=\"prime256v1\"\nCONTACT_EMAIL=\"admin@example.org\"\n",
            pebble.directory_url(),
            webroot.display(),
            basedir.display()
        ),
    )
    .unwrap();
    let dehydrated_run = |args: &[&str]| -> Result<String> {
        let out = run(Command::new(&dehydrated)
            .arg("--config")
            .arg(&config)
            .args(args)
            .env("CURL_CA_BUNDLE", pebble.api_ca_path()))
        .with_context(|| format!("dehydrated {args:?}\n--- pebble ---\n{}", pebble.log()))?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    dehydrated_run(&["--register", "--accept-terms"]).unwrap_or_else(|e| panic!("{e:#}"));
    let issued =
        dehydrated_run(&["--cron", "--domain", DOMAIN]).unwrap_or_else(|e| panic!("{e:#}"));
    eprintln!("{issued}");

    assert!(
        challenges.served.load(Ordering::SeqCst) >= 1,
        "no challenge was fetched"
    );
    assert!(
        dns.queries_answered() >= 1,
        "pebble did not ask our DNS server"
    );

    let certdir = basedir.join("certs").join(DOMAIN);
    let roots = work.path().join("roots.pem");
    fs::write(&roots, pebble.issuer_roots_pem().unwrap()).unwrap();
    let verify = run(Command::new(&openssl)
        .arg("verify")
        .arg("-CAfile")
        .arg(&roots)
        .arg("-untrusted")
        .arg(certdir.join("chain.pem"))
        .arg(certdir.join("cert.pem")))
    .unwrap_or_else(|e| panic!("{e:#}"));
    assert!(String::from_utf8_lossy(&verify.stdout).contains(": OK"));

    // The issued leaf names the domain.
    let text = run(Command::new(&openssl)
        .args(["x509", "-noout", "-ext", "subjectAltName", "-in"])
        .arg(certdir.join("cert.pem")))
    .unwrap();
    assert!(String::from_utf8_lossy(&text.stdout).contains(&format!("DNS:{DOMAIN}")));

    // And it does not verify against the API CA (two different CAs).
    let wrong = Command::new(&openssl)
        .arg("verify")
        .arg("-CAfile")
        .arg(pebble.api_ca_path())
        .arg("-untrusted")
        .arg(certdir.join("chain.pem"))
        .arg(certdir.join("cert.pem"))
        .output()
        .unwrap();
    assert!(!wrong.status.success());
}
