//! SSH keys from the hosting provider's metadata service, for a VPS started from the image with
//! no key given at build time: the keys the user picked in the provider's control panel let
//! them log in as `admin` and answer the wizard over SSH. Asked once per boot until setup is
//! done, only from the link-local metadata address (never a third party), with short timeouts
//! so a machine without one (a PC, a Raspberry Pi) loses about a second.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use appliance_spec::validate;

/// The metadata address every supported provider answers on.
pub const METADATA: &str = "169.254.169.254:80";

const TIMEOUT: Duration = Duration::from_secs(2);

/// One way of asking for the keys: (method, path, headers). AWS IMDSv2 needs a token first,
/// handled in [`keys_from`].
const ENDPOINTS: &[(&str, &[(&str, &str)])] = &[
    // AWS (IMDSv1), OpenStack and other EC2-compatible services
    ("/latest/meta-data/public-keys/0/openssh-key", &[]),
    // DigitalOcean
    ("/metadata/v1/public-keys", &[]),
    // Hetzner Cloud (YAML list)
    ("/hetzner/v1/metadata/public-keys", &[]),
    // Google Cloud ("user:key" lines)
    (
        "/computeMetadata/v1/project/attributes/ssh-keys",
        &[("Metadata-Flavor", "Google")],
    ),
    (
        "/computeMetadata/v1/instance/attributes/ssh-keys",
        &[("Metadata-Flavor", "Google")],
    ),
];

/// Keys from a metadata service at `addr` (tests use a local stand-in).
pub fn keys_from(addr: SocketAddr) -> Vec<String> {
    // Not a cloud machine: nothing answers, and nothing more is tried.
    if TcpStream::connect_timeout(&addr, TIMEOUT).is_err() {
        return Vec::new();
    }
    let mut found = Vec::new();
    // AWS IMDSv2 (the default on new instances) answers GETs only with a session token.
    let token = request(
        addr,
        "PUT",
        "/latest/api/token",
        &[("X-aws-ec2-metadata-token-ttl-seconds", "60")],
    )
    .filter(|(status, _)| *status == 200)
    .map(|(_, body)| body.trim().to_string());
    if let Some(token) = &token {
        if let Some((200, body)) = request(
            addr,
            "GET",
            "/latest/meta-data/public-keys/0/openssh-key",
            &[("X-aws-ec2-metadata-token", token)],
        ) {
            found.extend(parse_keys(&body));
        }
    }
    for (path, headers) in ENDPOINTS {
        if let Some((200, body)) = request(addr, "GET", path, headers) {
            found.extend(parse_keys(&body));
        }
    }
    let mut unique: Vec<String> = Vec::new();
    for k in found {
        if !unique.contains(&k) {
            unique.push(k);
        }
    }
    unique
}

/// Keys in any of the providers' formats: one per line, optionally as a YAML list item
/// (`- ssh-ed25519 ...`) or prefixed with a user name (`alice:ssh-ed25519 ...`). Lines that are
/// not valid keys are skipped.
pub fn parse_keys(body: &str) -> Vec<String> {
    body.lines()
        .filter_map(|line| {
            let mut l = line.trim().trim_start_matches("- ").trim();
            l = l.trim_matches('"').trim_matches('\'');
            if let Some((user, rest)) = l.split_once(':') {
                if !user.contains(' ') && rest.starts_with(|c: char| c.is_ascii_lowercase()) {
                    l = rest;
                }
            }
            validate::ssh_public_key(l).ok()
        })
        .collect()
}

/// A plain HTTP/1.0 request; `None` on any network error.
fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, TIMEOUT).ok()?;
    stream.set_read_timeout(Some(TIMEOUT)).ok()?;
    stream.set_write_timeout(Some(TIMEOUT)).ok()?;
    let mut req = format!("{method} {path} HTTP/1.0\r\nHost: {}\r\n", addr.ip());
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if method == "PUT" {
        req.push_str("Content-Length: 0\r\n");
    }
    req.push_str("\r\n");
    stream.write_all(req.as_bytes()).ok()?;
    let mut raw = Vec::new();
    stream.take(1 << 20).read_to_end(&mut raw).ok()?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, body.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkeys::ED25519;
    use std::net::TcpListener;

    #[test]
    fn every_provider_format_is_read() {
        let key = ED25519;
        assert_eq!(parse_keys(&format!("{key}\n")), vec![key.to_string()]);
        assert_eq!(
            parse_keys(&format!("- {key}\n- junk\n")),
            vec![key.to_string()]
        );
        assert_eq!(parse_keys(&format!("alice:{key}\n")), vec![key.to_string()]);
        assert!(parse_keys("<html>not found</html>").is_empty());
    }

    #[test]
    fn no_metadata_service_means_no_keys_quickly() {
        // A port nothing listens on.
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        drop(l);
        let t = std::time::Instant::now();
        assert!(keys_from(addr).is_empty());
        assert!(t.elapsed() < Duration::from_secs(3));
    }

    #[test]
    fn keys_come_from_an_imdsv2_style_service() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let key = ED25519.to_string();
        let served = key.clone();
        std::thread::spawn(move || {
            for stream in l.incoming() {
                let Ok(mut s) = stream else { continue };
                let mut buf = [0u8; 2048];
                let n = s.read(&mut buf).unwrap_or(0);
                let req = String::from_utf8_lossy(&buf[..n]).to_string();
                let reply = if req.starts_with("PUT /latest/api/token") {
                    "HTTP/1.0 200 OK\r\n\r\nTOKEN".to_string()
                } else if req.contains("openssh-key")
                    && req.contains("X-aws-ec2-metadata-token: TOKEN")
                {
                    format!("HTTP/1.0 200 OK\r\n\r\n{served}\n")
                } else {
                    "HTTP/1.0 404 Not Found\r\n\r\n".to_string()
                };
                let _ = s.write_all(reply.as_bytes());
            }
        });
        assert_eq!(keys_from(addr), vec![key]);
    }
}
