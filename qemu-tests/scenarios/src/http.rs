//! A small blocking HTTP(S) client for talking to the guest and to host-side test servers.
//!
//! Built on `ureq` with the native-tls (system OpenSSL) provider: OpenSSL accepts the
//! appliance's self-signed certificate as its own trust anchor, and can accept any
//! certificate when a test only cares about the payload. Requests can be pinned to one socket
//! address, so `https://meet.example.org/…` goes to `127.0.0.1:<forwarded port>` while the
//! TLS SNI, certificate name check and `Host` header all use the appliance's domain.

use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use ureq::config::Config;
use ureq::http::Uri;
use ureq::tls::{parse_pem, PemItem, RootCerts, TlsConfig, TlsProvider};
use ureq::unversioned::resolver::{ResolvedSocketAddrs, Resolver};
use ureq::unversioned::transport::{DefaultConnector, NextTimeout};
use ureq::Agent;

/// Which server certificates a client accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trust {
    /// The host's CA store (`/etc/ssl/certs` through OpenSSL).
    System,
    /// Only certificates chaining to one of these PEM certificates (a self-signed server
    /// certificate can be given as its own anchor). The name is still checked.
    Pem(String),
    /// Anything, without name check: for tests that only look at what the server says.
    AcceptAny,
}

/// Responses larger than this are cut off with an error (BOSH bodies and ACME JSON are tiny).
const BODY_LIMIT: u64 = 4 << 20;

/// A status and a text body. Non-2xx statuses are returned, not turned into errors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpResponse {
    pub status: u16,
    /// Header names in lower case, in the order received.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpResponse {
    /// The first header called `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Resolves every name to one fixed address.
#[derive(Debug)]
struct Pinned(SocketAddr);

impl Resolver for Pinned {
    fn resolve(
        &self,
        _uri: &Uri,
        _config: &Config,
        _timeout: NextTimeout,
    ) -> Result<ResolvedSocketAddrs, ureq::Error> {
        let mut addrs = self.empty();
        addrs.push(self.0);
        Ok(addrs)
    }
}

/// A blocking HTTP/1.1 client; see the module docs.
#[derive(Clone)]
pub struct HttpClient {
    agent: Agent,
    connect_to: Option<SocketAddr>,
    host_header: Option<String>,
}

impl fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpClient")
            .field("connect_to", &self.connect_to)
            .field("host_header", &self.host_header)
            .finish_non_exhaustive()
    }
}

impl HttpClient {
    /// A client resolving names normally. `timeout` bounds each whole request.
    pub fn new(trust: &Trust, timeout: Duration) -> Result<HttpClient> {
        Self::build(trust, timeout, None, None)
    }

    /// A client that sends every request to `connect_to`, whatever the URL's host, and sends
    /// `Host: <host_header>` (without a port, as a browser on 443 would) when one is given.
    pub fn pinned(
        trust: &Trust,
        timeout: Duration,
        connect_to: SocketAddr,
        host_header: Option<&str>,
    ) -> Result<HttpClient> {
        Self::build(trust, timeout, Some(connect_to), host_header)
    }

    fn build(
        trust: &Trust,
        timeout: Duration,
        connect_to: Option<SocketAddr>,
        host_header: Option<&str>,
    ) -> Result<HttpClient> {
        let tls = TlsConfig::builder().provider(TlsProvider::NativeTls);
        let tls = match trust {
            Trust::System => tls.root_certs(RootCerts::PlatformVerifier),
            Trust::AcceptAny => tls.disable_verification(true),
            Trust::Pem(pem) => {
                let mut certs = Vec::new();
                for item in parse_pem(pem.as_bytes()) {
                    if let PemItem::Certificate(c) = item.context("parsing trusted PEM")? {
                        certs.push(c);
                    }
                }
                if certs.is_empty() {
                    bail!("the trusted PEM holds no certificate");
                }
                tls.root_certs(RootCerts::new_with_certs(&certs))
            }
        };
        let config = Agent::config_builder()
            .tls_config(tls.build())
            .http_status_as_error(false)
            // The tests look at redirects themselves (HTTP must redirect to HTTPS).
            .max_redirects(0)
            .max_redirects_will_error(false)
            .proxy(None)
            .timeout_global(Some(timeout))
            .build();
        let agent = match connect_to {
            Some(addr) => Agent::with_parts(config, DefaultConnector::new(), Pinned(addr)),
            None => Agent::new_with_config(config),
        };
        Ok(HttpClient {
            agent,
            connect_to,
            host_header: host_header.map(str::to_string),
        })
    }

    /// GET `url`.
    pub fn get(&self, url: &str) -> Result<HttpResponse> {
        let mut req = self.agent.get(url);
        if let Some(h) = &self.host_header {
            req = req.header("Host", h);
        }
        let resp = req.call().with_context(|| self.describe("GET", url))?;
        Self::finish(resp, "GET", url)
    }

    /// POST `body` to `url` with `content_type`.
    pub fn post(&self, url: &str, content_type: &str, body: &str) -> Result<HttpResponse> {
        let mut req = self.agent.post(url).header("Content-Type", content_type);
        if let Some(h) = &self.host_header {
            req = req.header("Host", h);
        }
        let resp = req.send(body).with_context(|| self.describe("POST", url))?;
        Self::finish(resp, "POST", url)
    }

    fn describe(&self, method: &str, url: &str) -> String {
        match self.connect_to {
            Some(addr) => format!("{method} {url} (connecting to {addr})"),
            None => format!("{method} {url}"),
        }
    }

    fn finish(
        resp: ureq::http::Response<ureq::Body>,
        method: &str,
        url: &str,
    ) -> Result<HttpResponse> {
        let status = resp.status().as_u16();
        let headers = resp
            .headers()
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_ascii_lowercase(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        let body = resp
            .into_body()
            .with_config()
            .limit(BODY_LIMIT)
            .read_to_string()
            .with_context(|| format!("reading the body of {method} {url}"))?;
        Ok(HttpResponse {
            status,
            headers,
            body,
        })
    }
}

/// A URL split for pinning: where to connect, and the same URL with `domain` as its host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retargeted {
    pub connect_to: SocketAddr,
    pub url: String,
}

/// Takes `url` (e.g. `https://127.0.0.1:34443/http-bind`), resolves its host and port into the
/// address to connect to, and rewrites it to `https://<domain>:34443/http-bind` so TLS and
/// HTTP see the domain.
pub fn retarget(url: &str, domain: &str) -> Result<Retargeted> {
    let uri: Uri = url
        .parse()
        .with_context(|| format!("parsing URL {url:?}"))?;
    let scheme = uri
        .scheme_str()
        .ok_or_else(|| anyhow!("URL {url:?} has no scheme"))?;
    let default_port = match scheme {
        "http" => 80,
        "https" => 443,
        other => bail!("URL {url:?}: unsupported scheme {other:?}"),
    };
    let authority = uri
        .authority()
        .ok_or_else(|| anyhow!("URL {url:?} has no host"))?;
    let port = authority.port_u16().unwrap_or(default_port);
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    let connect_to = (host, port)
        .to_socket_addrs()
        .with_context(|| format!("resolving {host}:{port}"))?
        .next()
        .ok_or_else(|| anyhow!("{host}:{port} resolves to nothing"))?;
    let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let url = if port == default_port {
        format!("{scheme}://{domain}{path}")
    } else {
        format!("{scheme}://{domain}:{port}{path}")
    };
    Ok(Retargeted { connect_to, url })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retarget_keeps_port_and_path() {
        let r = retarget("https://127.0.0.1:34443/http-bind", "meet.example.org").unwrap();
        assert_eq!(r.connect_to, "127.0.0.1:34443".parse().unwrap());
        assert_eq!(r.url, "https://meet.example.org:34443/http-bind");
        let r = retarget("http://127.0.0.1/http-bind?x=1", "meet.example.org").unwrap();
        assert_eq!(r.connect_to, "127.0.0.1:80".parse().unwrap());
        assert_eq!(r.url, "http://meet.example.org/http-bind?x=1");
        let r = retarget("http://[::1]:5280/", "a.test").unwrap();
        assert_eq!(r.connect_to, "[::1]:5280".parse().unwrap());
        assert!(retarget("ftp://127.0.0.1/", "a.test").is_err());
    }

    #[test]
    fn pem_trust_needs_a_certificate() {
        let err = HttpClient::new(&Trust::Pem("nothing".into()), Duration::from_secs(1));
        assert!(err.is_err());
    }
}
