//! A tiny authoritative DNS server over UDP on 127.0.0.1, for pointing test programs (Pebble's
//! validation authority) at chosen addresses.
//!
//! Answers `A` queries for the configured names with the configured IPv4 addresses, an empty
//! NOERROR answer for any other type of a known name (e.g. `AAAA`), and NXDOMAIN for the rest.
//! Runs on a thread; stops when dropped.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result};

pub const TYPE_A: u16 = 1;
pub const TYPE_AAAA: u16 = 28;
const CLASS_IN: u16 = 1;
const RCODE_FORMERR: u8 = 1;
const RCODE_NXDOMAIN: u8 = 3;
const RCODE_NOTIMP: u8 = 4;
const TTL_SECS: u32 = 5;

/// A running server. Dropping it stops the thread.
pub struct DnsServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    answered: Arc<AtomicUsize>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for DnsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DnsServer")
            .field("addr", &self.addr)
            .finish()
    }
}

impl DnsServer {
    /// Starts serving `records` (name → address; names are matched case-insensitively, with
    /// or without a trailing dot) on 127.0.0.1 at a port the OS picks.
    pub fn start<S: AsRef<str>>(records: &[(S, Ipv4Addr)]) -> Result<DnsServer> {
        let mut table: HashMap<String, Vec<Ipv4Addr>> = HashMap::new();
        for (name, ip) in records {
            table.entry(normalize(name.as_ref())).or_default().push(*ip);
        }
        let socket = UdpSocket::bind("127.0.0.1:0").context("binding a UDP socket")?;
        socket.set_read_timeout(Some(Duration::from_millis(100)))?;
        let addr = socket.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let answered = Arc::new(AtomicUsize::new(0));
        let thread = {
            let (stop, answered) = (stop.clone(), answered.clone());
            std::thread::Builder::new()
                .name(format!("dns-{}", addr.port()))
                .spawn(move || serve(socket, table, stop, answered))?
        };
        Ok(DnsServer {
            addr,
            stop,
            answered,
            thread: Some(thread),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// How many queries got an answer so far (to check a client really asked us).
    pub fn queries_answered(&self) -> usize {
        self.answered.load(Ordering::SeqCst)
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn normalize(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

fn serve(
    socket: UdpSocket,
    table: HashMap<String, Vec<Ipv4Addr>>,
    stop: Arc<AtomicBool>,
    answered: Arc<AtomicUsize>,
) {
    let mut buf = [0u8; 1500];
    while !stop.load(Ordering::SeqCst) {
        let (n, peer) = match socket.recv_from(&mut buf) {
            Ok(r) => r,
            Err(_) => continue, // timeout: check `stop`
        };
        if let Some(reply) = answer(&buf[..n], &table) {
            // Counted before the reply leaves: a client that got it and then asks
            // `queries_answered` must find it counted.
            answered.fetch_add(1, Ordering::SeqCst);
            if socket.send_to(&reply, peer).is_err() {
                answered.fetch_sub(1, Ordering::SeqCst);
            }
        }
    }
}

/// A parsed question: (lower-case name without trailing dot, type, class, end offset).
fn parse_question(msg: &[u8]) -> Option<(String, u16, u16, usize)> {
    let mut pos = 12;
    let mut labels: Vec<String> = Vec::new();
    loop {
        let len = usize::from(*msg.get(pos)?);
        pos += 1;
        if len == 0 {
            break;
        }
        if len > 63 {
            return None; // compression pointers do not occur in a lone question
        }
        let label = msg.get(pos..pos + len)?;
        labels.push(String::from_utf8_lossy(label).to_ascii_lowercase());
        pos += len;
    }
    let qtype = u16::from_be_bytes([*msg.get(pos)?, *msg.get(pos + 1)?]);
    let qclass = u16::from_be_bytes([*msg.get(pos + 2)?, *msg.get(pos + 3)?]);
    Some((labels.join("."), qtype, qclass, pos + 4))
}

/// Builds the reply to one query message, or `None` for something not worth answering (a
/// response, or too short to hold a header).
pub fn answer(query: &[u8], table: &HashMap<String, Vec<Ipv4Addr>>) -> Option<Vec<u8>> {
    if query.len() < 12 || query[2] & 0x80 != 0 {
        return None;
    }
    let opcode = (query[2] >> 3) & 0x0f;
    let rd = query[2] & 0x01;
    let qdcount = u16::from_be_bytes([query[4], query[5]]);
    let header = |rcode: u8, qd: u16, an: u16| {
        let mut h = Vec::with_capacity(512);
        h.extend_from_slice(&query[..2]);
        h.push(0x80 | (opcode << 3) | 0x04 | rd); // QR, opcode, AA, RD copied
        h.push(rcode);
        h.extend_from_slice(&qd.to_be_bytes());
        h.extend_from_slice(&an.to_be_bytes());
        h.extend_from_slice(&[0, 0, 0, 0]); // NS, AR
        h
    };
    if opcode != 0 {
        return Some(header(RCODE_NOTIMP, 0, 0));
    }
    let parsed = if qdcount == 1 {
        parse_question(query)
    } else {
        None
    };
    let Some((name, qtype, qclass, end)) = parsed else {
        return Some(header(RCODE_FORMERR, 0, 0));
    };
    let question = &query[12..end];
    let Some(addrs) = table.get(&name) else {
        let mut r = header(RCODE_NXDOMAIN, 1, 0);
        r.extend_from_slice(question);
        return Some(r);
    };
    let addrs: &[Ipv4Addr] = if qtype == TYPE_A && qclass == CLASS_IN {
        addrs
    } else {
        &[]
    };
    let mut r = header(0, 1, addrs.len() as u16);
    r.extend_from_slice(question);
    for ip in addrs {
        r.extend_from_slice(&[0xc0, 12]); // pointer to the question's name
        r.extend_from_slice(&TYPE_A.to_be_bytes());
        r.extend_from_slice(&CLASS_IN.to_be_bytes());
        r.extend_from_slice(&TTL_SECS.to_be_bytes());
        r.extend_from_slice(&4u16.to_be_bytes());
        r.extend_from_slice(&ip.octets());
    }
    Some(r)
}

/// Builds a standard query for `name` and `qtype` (for tests and probes).
pub fn build_query(id: u16, name: &str, qtype: u16) -> Vec<u8> {
    let mut q = Vec::new();
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00]); // RD
    q.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0]); // QD=1
    for label in name.trim_end_matches('.').split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.push(0);
    q.extend_from_slice(&qtype.to_be_bytes());
    q.extend_from_slice(&CLASS_IN.to_be_bytes());
    q
}

/// Sends one query to `server` and returns (rcode, IPv4 addresses in the answer).
pub fn query_a(server: SocketAddr, name: &str, qtype: u16) -> Result<(u8, Vec<Ipv4Addr>)> {
    let socket = UdpSocket::bind("127.0.0.1:0")?;
    socket.set_read_timeout(Some(Duration::from_secs(2)))?;
    let id = 0x5eed;
    socket.send_to(&build_query(id, name, qtype), server)?;
    let mut buf = [0u8; 1500];
    let n = socket
        .recv(&mut buf)
        .context("waiting for the DNS answer")?;
    let msg = &buf[..n];
    anyhow::ensure!(n >= 12 && msg[..2] == id.to_be_bytes(), "bad DNS answer");
    let rcode = msg[3] & 0x0f;
    let ancount = u16::from_be_bytes([msg[6], msg[7]]);
    let (_, _, _, mut pos) = parse_question(msg).context("answer lacks the question")?;
    let mut addrs = Vec::new();
    for _ in 0..ancount {
        // Our own server always names the record with a 2-byte pointer.
        let rr = msg.get(pos..pos + 12).context("truncated answer")?;
        let rtype = u16::from_be_bytes([rr[2], rr[3]]);
        let rdlen = usize::from(u16::from_be_bytes([rr[10], rr[11]]));
        let rdata = msg
            .get(pos + 12..pos + 12 + rdlen)
            .context("truncated rdata")?;
        if rtype == TYPE_A && rdlen == 4 {
            addrs.push(Ipv4Addr::new(rdata[0], rdata[1], rdata[2], rdata[3]));
        }
        pos += 12 + rdlen;
    }
    Ok((rcode, addrs))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn server() -> DnsServer {
        DnsServer::start(&[
            ("meet.example.org", Ipv4Addr::LOCALHOST),
            ("Multi.Test.", Ipv4Addr::new(10, 0, 2, 2)),
            ("multi.test", Ipv4Addr::new(10, 0, 2, 3)),
        ])
        .unwrap()
    }

    #[test]
    fn answers_a_nodata_and_nxdomain() {
        let s = server();
        let a = query_a(s.addr(), "meet.example.org", TYPE_A).unwrap();
        assert_eq!(a, (0, vec![Ipv4Addr::LOCALHOST]));
        let a = query_a(s.addr(), "MEET.example.org.", TYPE_A).unwrap();
        assert_eq!(a, (0, vec![Ipv4Addr::LOCALHOST]));
        let a = query_a(s.addr(), "multi.test", TYPE_A).unwrap();
        assert_eq!(
            a,
            (
                0,
                vec![Ipv4Addr::new(10, 0, 2, 2), Ipv4Addr::new(10, 0, 2, 3)]
            )
        );
        assert_eq!(
            query_a(s.addr(), "meet.example.org", TYPE_AAAA).unwrap(),
            (0, vec![])
        );
        assert_eq!(
            query_a(s.addr(), "other.example.org", TYPE_A).unwrap(),
            (RCODE_NXDOMAIN, vec![])
        );
        assert_eq!(s.queries_answered(), 5);
    }

    #[test]
    fn hand_built_reply_bytes() {
        let table = HashMap::from([("a.test".to_string(), vec![Ipv4Addr::new(1, 2, 3, 4)])]);
        let q = build_query(0xabcd, "a.test", TYPE_A);
        let r = answer(&q, &table).unwrap();
        let question = &q[12..];
        let mut want = vec![0xab, 0xcd, 0x85, 0x00, 0, 1, 0, 1, 0, 0, 0, 0];
        want.extend_from_slice(question);
        want.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 5, 0, 4, 1, 2, 3, 4]);
        assert_eq!(r, want);
        // Responses are ignored, garbage gets FORMERR.
        let mut resp = q.clone();
        resp[2] |= 0x80;
        assert!(answer(&resp, &table).is_none());
        let bad = answer(&q[..14], &table).unwrap();
        assert_eq!(bad[3] & 0x0f, RCODE_FORMERR);
    }

    #[test]
    fn stops_on_drop() {
        let s = server();
        let addr = s.addr();
        drop(s);
        assert!(query_a(addr, "meet.example.org", TYPE_A).is_err());
    }

    /// `dig` gets the same answers.
    #[test]
    fn dig_agrees() {
        let dig = appliance_qemu_tests::host::require_program("dig", "bind9-dnsutils")
            .unwrap_or_else(|e| panic!("{e:#}"));
        let s = server();
        let out = Command::new(&dig)
            .args(["+short", "+tries=1", "+time=2", "-p"])
            .arg(s.port().to_string())
            .args(["@127.0.0.1", "meet.example.org", "A"])
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "127.0.0.1");
        let out = Command::new(&dig)
            .args(["+tries=1", "+time=2", "-p"])
            .arg(s.port().to_string())
            .args(["@127.0.0.1", "nope.example.org", "A"])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("status: NXDOMAIN"), "{text}");
        assert!(text.contains("flags: qr aa rd"), "{text}");
    }
}
