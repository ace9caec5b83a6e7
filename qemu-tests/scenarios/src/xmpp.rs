//! A minimal XMPP-over-BOSH client (XEP-0124 / XEP-0206) for checking the appliance's login.
//!
//! Enough of the protocol to open a session, read the offered SASL mechanisms, authenticate
//! with PLAIN, SCRAM-SHA-1 or ANONYMOUS, restart the stream, bind a resource and terminate.
//! Requests can go to `127.0.0.1:<forwarded port>` while TLS, the `Host` header and the BOSH
//! `to=` attribute all name the appliance's domain (see [`crate::http::retarget`]).

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use openssl::base64;
use openssl::hash::MessageDigest;
use openssl::pkey::PKey;
use openssl::sign::Signer;
use quick_xml::escape::{escape, resolve_predefined_entity};
use quick_xml::events::{BytesStart, Event};
use quick_xml::Reader;

use crate::http::{retarget, HttpClient, Trust};

const NS_HTTPBIND: &str = "http://jabber.org/protocol/httpbind";
const NS_XBOSH: &str = "urn:xmpp:xbosh";
const NS_SASL: &str = "urn:ietf:params:xml:ns:xmpp-sasl";
const NS_BIND: &str = "urn:ietf:params:xml:ns:xmpp-bind";

/// What a login attempt ended with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// SASL succeeded and a resource was bound to this full JID.
    Success { jid: String },
    /// The server answered `<failure>` with this condition (e.g. `not-authorized`).
    Failure {
        condition: String,
        text: Option<String>,
    },
    /// The mechanism was not among the ones the server offered.
    NotOffered { offered: Vec<String> },
}

impl Outcome {
    pub fn jid(&self) -> Option<&str> {
        match self {
            Outcome::Success { jid } => Some(jid),
            _ => None,
        }
    }

    pub fn is_not_authorized(&self) -> bool {
        matches!(self, Outcome::Failure { condition, .. } if condition == "not-authorized")
    }
}

/// A parsed XML element: local names only, namespaces are not resolved.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Element {
    pub name: String,
    pub attrs: Vec<(String, String)>,
    pub children: Vec<Element>,
    pub text: String,
}

impl Element {
    pub fn attr(&self, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn child(&self, name: &str) -> Option<&Element> {
        self.children.iter().find(|c| c.name == name)
    }

    /// This element or the first descendant (depth first) called `name`.
    pub fn find(&self, name: &str) -> Option<&Element> {
        if self.name == name {
            return Some(self);
        }
        self.children.iter().find_map(|c| c.find(name))
    }

    /// Parses one document (the first root element; anything after it is ignored).
    pub fn parse(xml: &str) -> Result<Element> {
        fn start(e: &BytesStart) -> Result<Element> {
            let name = String::from_utf8_lossy(e.local_name().as_ref()).into_owned();
            let mut attrs = Vec::new();
            for a in e.attributes() {
                let a = a?;
                let key = String::from_utf8_lossy(a.key.local_name().as_ref()).into_owned();
                attrs.push((key, a.unescape_value()?.into_owned()));
            }
            Ok(Element {
                name,
                attrs,
                ..Element::default()
            })
        }
        let mut reader = Reader::from_str(xml);
        let mut stack: Vec<Element> = Vec::new();
        loop {
            match reader.read_event().context("parsing XML")? {
                Event::Start(e) => stack.push(start(&e)?),
                Event::Empty(e) => {
                    let el = start(&e)?;
                    match stack.last_mut() {
                        Some(parent) => parent.children.push(el),
                        None => return Ok(el),
                    }
                }
                Event::End(_) => {
                    let el = stack.pop().ok_or_else(|| anyhow!("unbalanced XML"))?;
                    match stack.last_mut() {
                        Some(parent) => parent.children.push(el),
                        None => return Ok(el),
                    }
                }
                Event::Text(t) => {
                    if let Some(top) = stack.last_mut() {
                        top.text.push_str(&t.decode()?);
                    }
                }
                Event::CData(t) => {
                    if let Some(top) = stack.last_mut() {
                        top.text.push_str(&t.decode()?);
                    }
                }
                Event::GeneralRef(r) => {
                    let resolved = match r.resolve_char_ref()? {
                        Some(c) => c.to_string(),
                        None => {
                            let name = r.decode()?;
                            resolve_predefined_entity(&name)
                                .ok_or_else(|| anyhow!("unknown XML entity &{name};"))?
                                .to_string()
                        }
                    };
                    if let Some(top) = stack.last_mut() {
                        top.text.push_str(&resolved);
                    }
                }
                Event::Eof => bail!("XML document ended before its root element closed"),
                _ => {}
            }
        }
    }
}

/// A BOSH endpoint and how to reach it.
#[derive(Debug, Clone)]
pub struct BoshClient {
    http: HttpClient,
    url: String,
    domain: String,
    /// Upper bound for one whole login.
    pub timeout: Duration,
    /// The resource asked for at bind time.
    pub resource: String,
    /// The BOSH `wait` (seconds a server may hold an empty poll).
    pub wait_secs: u64,
}

impl BoshClient {
    /// `url` says where to connect (e.g. `https://127.0.0.1:34443/http-bind`, or
    /// `http://127.0.0.1:5280/http-bind`); `domain` is the XMPP domain, used as the TLS name,
    /// the HTTP `Host` and the BOSH `to=`.
    pub fn new(url: &str, domain: &str, trust: &Trust) -> Result<BoshClient> {
        let target = retarget(url, domain)?;
        let wait_secs = 5;
        let http = HttpClient::pinned(
            trust,
            Duration::from_secs(wait_secs + 15),
            target.connect_to,
            Some(domain),
        )?;
        Ok(BoshClient {
            http,
            url: target.url,
            domain: domain.to_string(),
            timeout: Duration::from_secs(30),
            resource: "appliance-tests".to_string(),
            wait_secs,
        })
    }

    /// The SASL mechanisms offered on a fresh session.
    pub fn mechanisms(&self) -> Result<Vec<String>> {
        let (mut session, offered) = self.open()?;
        session.terminate();
        Ok(offered)
    }

    /// SASL PLAIN, then bind.
    pub fn login_plain(&self, user: &str, password: &str) -> Result<Outcome> {
        let creds = format!("\0{user}\0{password}");
        self.login("PLAIN", |s| {
            s.auth_exchange("PLAIN", Some(creds.as_bytes()), |_| {
                bail!("unexpected SASL challenge for PLAIN")
            })
        })
    }

    /// SASL ANONYMOUS, then bind.
    pub fn login_anonymous(&self) -> Result<Outcome> {
        self.login("ANONYMOUS", |s| {
            s.auth_exchange("ANONYMOUS", None, |_| {
                bail!("unexpected SASL challenge for ANONYMOUS")
            })
        })
    }

    /// SASL SCRAM-SHA-1 (RFC 5802, no channel binding; the password is used as given, without
    /// SASLprep), checking the server's signature, then bind.
    pub fn login_scram_sha1(&self, user: &str, password: &str) -> Result<Outcome> {
        let scram = Scram::new(user)?;
        let first = scram.client_first();
        self.login("SCRAM-SHA-1", |s| {
            let mut expected = None;
            let result = s.auth_exchange("SCRAM-SHA-1", Some(first.as_bytes()), |challenge| {
                let (reply, server_sig) = scram.client_final(challenge, password)?;
                expected = Some(server_sig);
                Ok(reply.into_bytes())
            })?;
            if let SaslResult::Success = result {
                let data = String::from_utf8_lossy(&s.success_data).into_owned();
                let got = data
                    .strip_prefix("v=")
                    .map(base64::decode_block)
                    .transpose()?;
                if expected.is_none() || got != expected {
                    bail!("SCRAM-SHA-1: the server's signature {data:?} does not match");
                }
            }
            Ok(result)
        })
    }

    /// Logs in with SASL PLAIN, joins the MUC room `room_jid` as `nick` and stays in it,
    /// polling, for as long as `stay()` returns true; then leaves and ends the session. The
    /// room must exist (the appliance lets only its focus user create rooms).
    pub fn occupy_room(
        &self,
        user: &str,
        password: &str,
        room_jid: &str,
        nick: &str,
        mut stay: impl FnMut() -> bool,
    ) -> Result<()> {
        let (mut session, offered) = self.open()?;
        if !offered.iter().any(|m| m == "PLAIN") {
            session.terminate();
            bail!("PLAIN is not offered on {} ({offered:?})", self.domain);
        }
        let creds = format!("\0{user}\0{password}");
        let run = (|| -> Result<()> {
            match session.auth_exchange("PLAIN", Some(creds.as_bytes()), |_| {
                bail!("unexpected SASL challenge for PLAIN")
            })? {
                SaslResult::Success => {}
                SaslResult::Failure { condition, .. } => bail!("login refused: {condition}"),
            }
            session.restart_and_bind(&self.resource)?;
            let occupant = format!("{room_jid}/{nick}");
            let join = format!(
                "<presence xmlns='jabber:client' to='{}'><x xmlns='http://jabber.org/protocol/muc'/></presence>",
                escape(&occupant)
            );
            let answer = session.await_element(Some(&join), |e| {
                e.name == "presence" && e.attr("from") == Some(occupant.as_str())
            })?;
            if answer.attr("type") == Some("error") {
                bail!("joining {room_jid} failed: the room refused the presence");
            }
            // Holding the session: empty polls, each answered within `wait` seconds.
            while stay() {
                session.deadline = Instant::now() + self.timeout;
                let body = format!(
                    "<body xmlns='{NS_HTTPBIND}' rid='{}' sid='{}'/>",
                    session.rid,
                    escape(&session.sid)
                );
                session.rid += 1;
                session.post(body)?;
            }
            Ok(())
        })();
        session.terminate();
        run.map_err(|e| anyhow!("{e:#}\n--- BOSH exchange ---\n{}", session.transcript()))
    }

    /// Opens a session, checks `mechanism` is offered, runs `auth` and, on success, restarts
    /// the stream and binds a resource.
    fn login(
        &self,
        mechanism: &str,
        auth: impl FnOnce(&mut Session) -> Result<SaslResult>,
    ) -> Result<Outcome> {
        let (mut session, offered) = self.open()?;
        if !offered.iter().any(|m| m == mechanism) {
            session.terminate();
            return Ok(Outcome::NotOffered { offered });
        }
        let result = auth(&mut session);
        let outcome = match result {
            Ok(SaslResult::Failure { condition, text }) => Ok(Outcome::Failure { condition, text }),
            Ok(SaslResult::Success) => session.restart_and_bind(&self.resource),
            Err(e) => Err(e),
        };
        session.terminate();
        outcome
            .with_context(|| format!("BOSH login with {mechanism} at {}", self.url))
            .map_err(|e| anyhow!("{e:#}\n--- BOSH exchange ---\n{}", session.transcript()))
    }

    fn open(&self) -> Result<(Session<'_>, Vec<String>)> {
        let mut session = Session {
            client: self,
            sid: String::new(),
            rid: initial_rid()?,
            deadline: Instant::now() + self.timeout,
            pending: None,
            success_data: Vec::new(),
            log: Vec::new(),
        };
        let created = session
            .create()
            .and_then(|_| session.await_element(None, |el| el.name == "mechanisms"));
        let mechanisms = match created {
            Ok(m) => m,
            Err(e) => {
                return Err(anyhow!(
                    "opening a BOSH session at {} (to={}): {e:#}\n--- BOSH exchange ---\n{}",
                    self.url,
                    self.domain,
                    session.transcript()
                ))
            }
        };
        let offered = mechanisms
            .children
            .iter()
            .filter(|c| c.name == "mechanism")
            .map(|c| c.text.trim().to_string())
            .collect();
        Ok((session, offered))
    }
}

enum SaslResult {
    Success,
    Failure {
        condition: String,
        text: Option<String>,
    },
}

fn initial_rid() -> Result<u64> {
    let mut b = [0u8; 4];
    openssl::rand::rand_bytes(&mut b)?;
    // Far below 2^53, leaving room for every request of a session.
    Ok(u64::from(u32::from_be_bytes(b)) + 1_000_000)
}

/// One BOSH session.
struct Session<'a> {
    client: &'a BoshClient,
    sid: String,
    rid: u64,
    deadline: Instant,
    /// A received body not yet searched by [`Session::await_element`].
    pending: Option<Element>,
    /// The payload of `<success>`, decoded.
    success_data: Vec<u8>,
    /// (sent, received) bodies, for error messages.
    log: Vec<(String, String)>,
}

impl Session<'_> {
    fn transcript(&self) -> String {
        let mut out = String::new();
        for (sent, received) in &self.log {
            out.push_str(&format!(">> {sent}\n<< {received}\n"));
        }
        out
    }

    fn post(&mut self, body: String) -> Result<Element> {
        let resp = self
            .client
            .http
            .post(&self.client.url, "text/xml; charset=utf-8", &body)?;
        self.log
            .push((body, format!("[{}] {}", resp.status, resp.body)));
        if !(200..300).contains(&resp.status) {
            bail!("BOSH endpoint answered HTTP {}", resp.status);
        }
        let el = Element::parse(&resp.body)?;
        if el.name != "body" {
            bail!("BOSH answer is a <{}>, not a <body>", el.name);
        }
        if el.attr("type") == Some("terminate") {
            bail!(
                "BOSH session terminated by the server (condition {:?})",
                el.attr("condition").unwrap_or("")
            );
        }
        Ok(el)
    }

    fn create(&mut self) -> Result<Element> {
        let c = self.client;
        let body = format!(
            "<body xmlns='{NS_HTTPBIND}' xmlns:xmpp='{NS_XBOSH}' content='text/xml; charset=utf-8' \
             hold='1' rid='{}' to='{}' ver='1.6' wait='{}' xml:lang='en' xmpp:version='1.0'/>",
            self.rid,
            escape(&c.domain),
            c.wait_secs
        );
        self.rid += 1;
        let el = self.post(body)?;
        self.sid = el
            .attr("sid")
            .ok_or_else(|| anyhow!("session creation answer has no sid"))?
            .to_string();
        self.pending = Some(el.clone());
        Ok(el)
    }

    /// Sends `payload` (if any) in a body, then polls with empty bodies until a child of a
    /// received body, or a descendant of it, matches `pred`.
    fn await_element(
        &mut self,
        payload: Option<&str>,
        pred: impl Fn(&Element) -> bool,
    ) -> Result<Element> {
        let mut next = payload.map(str::to_string);
        if let Some(el) = self.pending.take() {
            match find_by(&el, &pred) {
                Some(found) if next.is_none() => return Ok(found.clone()),
                _ => {}
            }
        }
        loop {
            if Instant::now() >= self.deadline {
                bail!("timed out waiting for the server's answer");
            }
            let body = format!(
                "<body xmlns='{NS_HTTPBIND}' rid='{}' sid='{}'>{}</body>",
                self.rid,
                escape(&self.sid),
                next.take().unwrap_or_default()
            );
            self.rid += 1;
            let el = self.post(body)?;
            if let Some(found) = find_by(&el, &pred) {
                return Ok(found.clone());
            }
        }
    }

    /// Runs a SASL exchange: `<auth>` with `initial`, answering challenges with `respond`.
    fn auth_exchange(
        &mut self,
        mechanism: &str,
        initial: Option<&[u8]>,
        mut respond: impl FnMut(&[u8]) -> Result<Vec<u8>>,
    ) -> Result<SaslResult> {
        let data = match initial {
            Some([]) => "=".to_string(),
            Some(b) => base64::encode_block(b),
            None => String::new(),
        };
        let mut payload = format!(
            "<auth xmlns='{NS_SASL}' mechanism='{}'>{data}</auth>",
            escape(mechanism)
        );
        loop {
            let el = self.await_element(Some(&payload), |e| {
                matches!(e.name.as_str(), "success" | "failure" | "challenge")
            })?;
            match el.name.as_str() {
                "success" => {
                    self.success_data = decode_sasl(&el.text)?;
                    return Ok(SaslResult::Success);
                }
                "failure" => {
                    let condition = el
                        .children
                        .iter()
                        .find(|c| c.name != "text")
                        .map(|c| c.name.clone())
                        .unwrap_or_default();
                    let text = el.child("text").map(|t| t.text.clone());
                    return Ok(SaslResult::Failure { condition, text });
                }
                _ => {
                    let challenge = decode_sasl(&el.text)?;
                    let reply = respond(&challenge)?;
                    payload = format!(
                        "<response xmlns='{NS_SASL}'>{}</response>",
                        base64::encode_block(&reply)
                    );
                }
            }
        }
    }

    fn restart_and_bind(&mut self, resource: &str) -> Result<Outcome> {
        let restart = format!(
            "<body xmlns='{NS_HTTPBIND}' xmlns:xmpp='{NS_XBOSH}' rid='{}' sid='{}' to='{}' \
             xml:lang='en' xmpp:restart='true'/>",
            self.rid,
            escape(&self.sid),
            escape(&self.client.domain)
        );
        self.rid += 1;
        self.pending = Some(self.post(restart)?);
        let features = self.await_element(None, |e| e.name == "features")?;
        if features.child("bind").is_none() {
            bail!("stream features after restart offer no resource binding");
        }
        let iq = format!(
            "<iq xmlns='jabber:client' type='set' id='bind_1'><bind xmlns='{NS_BIND}'>\
             <resource>{}</resource></bind></iq>",
            escape(resource)
        );
        let reply = self.await_element(Some(&iq), |e| {
            e.name == "iq" && e.attr("id") == Some("bind_1")
        })?;
        if reply.attr("type") != Some("result") {
            let condition = reply
                .child("error")
                .and_then(|e| e.children.first())
                .map(|c| c.name.clone())
                .unwrap_or_default();
            bail!("resource binding failed ({condition})");
        }
        let jid = reply
            .find("jid")
            .map(|j| j.text.trim().to_string())
            .ok_or_else(|| anyhow!("bind result carries no <jid>"))?;
        Ok(Outcome::Success { jid })
    }

    /// Ends the session; errors are ignored (the server may have ended it already).
    fn terminate(&mut self) {
        if self.sid.is_empty() {
            return;
        }
        let body = format!(
            "<body xmlns='{NS_HTTPBIND}' rid='{}' sid='{}' type='terminate'>\
             <presence xmlns='jabber:client' type='unavailable'/></body>",
            self.rid,
            escape(&self.sid)
        );
        self.rid += 1;
        let _ = self
            .client
            .http
            .post(&self.client.url, "text/xml; charset=utf-8", &body);
        self.sid.clear();
    }
}

fn find_by<'e>(el: &'e Element, pred: &impl Fn(&Element) -> bool) -> Option<&'e Element> {
    if pred(el) {
        return Some(el);
    }
    el.children.iter().find_map(|c| find_by(c, pred))
}

fn decode_sasl(text: &str) -> Result<Vec<u8>> {
    let t = text.trim();
    if t.is_empty() || t == "=" {
        return Ok(Vec::new());
    }
    base64::decode_block(t).with_context(|| format!("SASL data {t:?} is not base64"))
}

/// Client side of SCRAM-SHA-1 (RFC 5802), without channel binding.
struct Scram {
    bare: String,
    nonce: String,
}

fn hmac_sha1(key: &[u8], data: &[u8]) -> Result<Vec<u8>> {
    let key = PKey::hmac(key)?;
    let mut signer = Signer::new(MessageDigest::sha1(), &key)?;
    signer.update(data)?;
    Ok(signer.sign_to_vec()?)
}

impl Scram {
    fn new(user: &str) -> Result<Scram> {
        let mut raw = [0u8; 18];
        openssl::rand::rand_bytes(&mut raw)?;
        let nonce = base64::encode_block(&raw);
        let name = user.replace('=', "=3D").replace(',', "=2C");
        Ok(Scram {
            bare: format!("n={name},r={nonce}"),
            nonce,
        })
    }

    fn client_first(&self) -> String {
        format!("n,,{}", self.bare)
    }

    /// Answers the server-first message; returns the client-final message and the server
    /// signature the `<success>` must carry.
    fn client_final(&self, server_first: &[u8], password: &str) -> Result<(String, Vec<u8>)> {
        let server_first =
            std::str::from_utf8(server_first).context("SCRAM server-first is not UTF-8")?;
        let field = |k: &str| {
            server_first
                .split(',')
                .find_map(|f| f.strip_prefix(k).and_then(|v| v.strip_prefix('=')))
                .ok_or_else(|| anyhow!("SCRAM server-first {server_first:?} lacks {k}="))
        };
        let nonce = field("r")?;
        if !nonce.starts_with(&self.nonce) || nonce.len() == self.nonce.len() {
            bail!("SCRAM server nonce does not extend ours");
        }
        let salt = base64::decode_block(field("s")?)?;
        let iterations: usize = field("i")?.parse().context("SCRAM iteration count")?;
        let mut salted = [0u8; 20];
        openssl::pkcs5::pbkdf2_hmac(
            password.as_bytes(),
            &salt,
            iterations,
            MessageDigest::sha1(),
            &mut salted,
        )?;
        let client_key = hmac_sha1(&salted, b"Client Key")?;
        let stored_key = openssl::sha::sha1(&client_key);
        let without_proof = format!("c=biws,r={nonce}");
        let auth_message = format!("{},{server_first},{without_proof}", self.bare);
        let signature = hmac_sha1(&stored_key, auth_message.as_bytes())?;
        let proof: Vec<u8> = client_key
            .iter()
            .zip(&signature)
            .map(|(a, b)| a ^ b)
            .collect();
        let server_key = hmac_sha1(&salted, b"Server Key")?;
        let server_sig = hmac_sha1(&server_key, auth_message.as_bytes())?;
        Ok((
            format!("{without_proof},p={}", base64::encode_block(&proof)),
            server_sig,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_features_and_entities() {
        let xml = "<body xmlns='http://jabber.org/protocol/httpbind' sid='a&amp;b' \
                   xmlns:stream='http://etherx.jabber.org/streams'><stream:features>\
                   <mechanisms xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>\
                   <mechanism>PLAIN</mechanism><mechanism>SCRAM-SHA-1</mechanism>\
                   </mechanisms></stream:features><x>1 &lt; 2 &#x41;</x></body>";
        let el = Element::parse(xml).unwrap();
        assert_eq!(el.name, "body");
        assert_eq!(el.attr("sid"), Some("a&b"));
        let mechs: Vec<_> = el
            .find("mechanisms")
            .unwrap()
            .children
            .iter()
            .map(|m| m.text.as_str())
            .collect();
        assert_eq!(mechs, ["PLAIN", "SCRAM-SHA-1"]);
        assert_eq!(el.child("x").unwrap().text, "1 < 2 A");
        assert!(Element::parse("<body><a></body>").is_err());
    }

    /// RFC 5802 section 5 example.
    #[test]
    fn scram_sha1_matches_rfc_5802() {
        let scram = Scram {
            bare: "n=user,r=fyko+d2lbbFgONRv9qkxdawL".into(),
            nonce: "fyko+d2lbbFgONRv9qkxdawL".into(),
        };
        assert_eq!(scram.client_first(), "n,,n=user,r=fyko+d2lbbFgONRv9qkxdawL");
        let server_first =
            b"r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,s=QSXCR+Q6sek8bf92,i=4096";
        let (reply, sig) = scram.client_final(server_first, "pencil").unwrap();
        assert_eq!(
            reply,
            "c=biws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,p=v0X8v3Bz2T0CJGbJQyF0X+HI4Ts="
        );
        assert_eq!(base64::encode_block(&sig), "rmF9pqV8S7suAoZWja4dJRkFsKQ=");
        assert!(scram
            .client_final(b"r=other,s=QSXCR+Q6sek8bf92,i=1", "x")
            .is_err());
    }

    #[test]
    fn outcome_helpers() {
        let ok = Outcome::Success {
            jid: "a@b/c".into(),
        };
        assert_eq!(ok.jid(), Some("a@b/c"));
        let no = Outcome::Failure {
            condition: "not-authorized".into(),
            text: None,
        };
        assert!(no.is_not_authorized());
        assert!(!ok.is_not_authorized());
    }
}
