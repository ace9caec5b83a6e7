//! nginx's site, as appliance-admin renders it before setup (the "setup not finished" page) and
//! after it (the meeting site), checked by `nginx -t` inside the image's own nginx.conf, the
//! promises the site makes (no logs, TLS settings, security headers, proxying), and the meeting
//! site served by the real nginx: limits per client address, what is compressed, the TLS
//! cipher order.

mod common;

use std::fs;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{free_port, overlay, require, run, text, Machine, DOMAIN, SPEC_CERT, SPEC_KEY};

/// `nginx -t` on the image's /etc/nginx/nginx.conf with its include of
/// /data/config/nginx/site.conf pointing at the machine's rendered site.
fn nginx_check(m: &Machine, label: &str) {
    let nginx = require("nginx", "nginx-light");
    let site = m.for_this_host("nginx/site.conf");
    let conf = fs::read_to_string(overlay("etc/nginx/nginx.conf")).unwrap();
    assert!(
        conf.contains("include /data/config/nginx/site.conf;"),
        "the image's nginx.conf does not include /data/config/nginx/site.conf"
    );
    // Dynamic modules are found relative to the -p prefix used here; the image loads the same
    // ones as this host, so the check leaves them out.
    let main = conf
        .replace("/data/config/nginx/site.conf", site.to_str().unwrap())
        .replace("include /etc/nginx/modules-enabled/*.conf;", "");
    let main_path = m.write_host_file(&format!("nginx-{label}.conf"), &main);
    let o = run(Command::new(nginx)
        .arg("-t")
        .arg("-e")
        .arg("stderr")
        .arg("-p")
        .arg(m.host_dir())
        .arg("-c")
        .arg(&main_path));
    let out = text(&o);
    eprintln!("nginx -t ({label}):\n{out}");
    assert!(
        o.status.success(),
        "nginx -t rejects the {label} site:\n{out}"
    );
    assert!(
        !out.contains("[warn]") && !out.contains("[emerg]"),
        "nginx -t warns about the {label} site:\n{out}"
    );
}

#[test]
fn nginx_accepts_the_setup_and_site_configs() {
    let fresh = Machine::new(false);
    fresh.render_setup_page();
    nginx_check(&fresh, "setup");
    for installed in [true, false] {
        let m = Machine::set_up(installed);
        nginx_check(&m, &format!("meeting-jitsi_installed={installed}"));
    }
}

#[test]
fn nginx_configs_keep_their_promises() {
    let fresh = Machine::new(false);
    fresh.render_setup_page();
    let setup = fresh.rendered("nginx/site.conf");
    assert!(setup.contains("listen 80 default_server;") && setup.contains("listen [::]:80"));
    assert!(setup.contains("alias /var/lib/appliance/acme-challenge/;"));
    assert!(setup.contains("root /usr/share/appliance/setup-page;"));
    assert!(setup.contains("return 503;") && setup.contains("Retry-After"));
    assert!(!setup.contains("listen 443"));

    for installed in [true, false] {
        let site = Machine::set_up(installed).rendered("nginx/site.conf");
        for conf in [&setup, &site] {
            for line in conf.lines().map(str::trim) {
                if line.starts_with("access_log") {
                    assert_eq!(line, "access_log off;");
                }
                assert!(!line.starts_with("error_log"), "error_log stays global");
            }
            assert!(conf.contains("server_tokens off;"));
        }
        assert!(site.contains(&format!("return 301 https://{DOMAIN}$request_uri;")));
        assert!(site.contains(&format!("ssl_certificate {SPEC_CERT};")));
        assert!(site.contains(&format!("ssl_certificate_key {SPEC_KEY};")));
        assert!(site.contains("ssl_protocols TLSv1.2 TLSv1.3;"));
        assert!(site.contains("ssl_session_tickets off;"));
        assert!(site.contains("Strict-Transport-Security \"max-age=63072000\""));
        assert!(site.contains(&format!("connect-src 'self' wss://{DOMAIN}")));
        assert!(site.contains("worker-src 'self' blob:"));
        assert!(site.contains("camera=(self), microphone=(self), display-capture=(self)"));
        assert!(site.contains("proxy_pass http://127.0.0.1:5280/http-bind;"));
        assert!(site.contains("proxy_pass http://127.0.0.1:5280/xmpp-websocket;"));
        assert!(
            !site.contains("X-Forwarded-For"),
            "client addresses stay in nginx"
        );
        assert_eq!(
            site.contains("root /usr/share/jitsi-meet;"),
            installed,
            "the Jitsi web root exactly when Jitsi is installed"
        );
        assert_eq!(site.contains("127.0.0.1:9090/colibri-ws"), installed);
        assert_eq!(
            site.contains("alias /data/config/jitsi/config.js;")
                && site.contains("alias /data/config/jitsi/interface_config.js;"),
            installed
        );
        assert_eq!(site.contains("root /usr/share/appliance/site;"), !installed);
    }
    for page in [
        "usr/share/appliance/setup-page/index.html",
        "usr/share/appliance/site/index.html",
    ] {
        let html = fs::read_to_string(overlay(page)).unwrap();
        assert!(html.starts_with("<!DOCTYPE html>"), "{page}");
        for external in ["http://", "https://", "//", "src="] {
            assert!(
                !html.contains(external),
                "{page} loads an external resource ({external})"
            );
        }
    }
}

/// A stand-in for Prosody and the videobridge behind nginx: answers every request 200 with the
/// request's head as its body (text/html, which nginx would compress if gzip were on), so a test
/// sees what nginx passed on. Requests whose query is `hold` get their answer only once
/// `release` is set: they stay open like a BOSH long poll or a WebSocket.
struct Backend {
    port: u16,
    release: Arc<AtomicBool>,
    /// How many `hold` requests are waiting.
    holding: Arc<AtomicUsize>,
}

impl Backend {
    fn start() -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let release = Arc::new(AtomicBool::new(false));
        let holding = Arc::new(AtomicUsize::new(0));
        let (released, held) = (release.clone(), holding.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let (released, held) = (released.clone(), held.clone());
                std::thread::spawn(move || Backend::answer(conn, &released, &held));
            }
        });
        Backend {
            port,
            release,
            holding,
        }
    }

    fn answer(mut conn: TcpStream, release: &AtomicBool, holding: &AtomicUsize) {
        let Some((head, _)) = read_head(&mut conn) else {
            return;
        };
        if head.lines().next().is_some_and(|l| l.contains("?hold ")) {
            holding.fetch_add(1, Ordering::SeqCst);
            let until = Instant::now() + Duration::from_secs(60);
            while !release.load(Ordering::SeqCst) && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let reply = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{head}",
            head.len()
        );
        conn.write_all(reply.as_bytes()).ok();
    }
}

/// Reads an HTTP message's head and as much of its body as Content-Length announces.
fn read_head(conn: &mut TcpStream) -> Option<(String, Vec<u8>)> {
    conn.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
    let mut data = Vec::new();
    let mut buf = [0u8; 8192];
    let end = loop {
        if let Some(i) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = conn.read(&mut buf).ok()?;
        if n == 0 {
            return None;
        }
        data.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&data[..end]).into_owned();
    let length = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse::<usize>().ok())?
        })
        .unwrap_or(0);
    let mut body = data[end..].to_vec();
    while body.len() < length {
        let n = conn.read(&mut buf).ok()?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&buf[..n]);
    }
    Some((head, body))
}

/// A TCP connection to nginx's plain port on loopback from `source` (another 127.0.0.0/8
/// address stands for another client; std cannot bind before connecting).
fn connect_from(source: Ipv4Addr, port: u16) -> TcpStream {
    use std::os::fd::FromRawFd;
    let sockaddr = |ip: Ipv4Addr, port: u16| libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(ip).to_be(),
        },
        sin_zero: [0; 8],
    };
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    let (src, dst) = (sockaddr(source, 0), sockaddr(Ipv4Addr::LOCALHOST, port));
    let one: libc::c_int = 1;
    // SAFETY: plain socket calls on a descriptor owned by `stream` from its creation on, with
    // pointers to live, correctly sized values.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        let stream = TcpStream::from_raw_fd(fd);
        // The source port is chosen at connect, per destination: thousands of short
        // connections do not run out of ports.
        libc::setsockopt(
            fd,
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            &one as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
        let bound = libc::bind(
            fd,
            &src as *const libc::sockaddr_in as *const libc::sockaddr,
            len,
        );
        assert!(
            bound == 0,
            "bind to {source}: {}",
            std::io::Error::last_os_error()
        );
        let connected = libc::connect(
            fd,
            &dst as *const libc::sockaddr_in as *const libc::sockaddr,
            len,
        );
        assert!(
            connected == 0,
            "connect from {source} to port {port}: {}",
            std::io::Error::last_os_error()
        );
        stream
    }
}

struct Reply {
    status: u16,
    head: String,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// Writes a request on a new connection from `source`: `Host` is the machine's domain,
/// `headers` are more header lines (each ending in CRLF), and a POST carries a BOSH body.
fn send(source: Ipv4Addr, port: u16, request_line: &str, headers: &str) -> TcpStream {
    let body = if request_line.starts_with("POST ") {
        "<body rid='1' xmlns='http://jabber.org/protocol/httpbind'/>"
    } else {
        ""
    };
    let body_headers = if body.is_empty() {
        String::new()
    } else {
        format!(
            "Content-Type: text/xml\r\nContent-Length: {}\r\n",
            body.len()
        )
    };
    let mut conn = connect_from(source, port);
    write!(
        conn,
        "{request_line} HTTP/1.1\r\nHost: {DOMAIN}\r\n{headers}{body_headers}Connection: close\r\n\r\n{body}"
    )
    .unwrap();
    conn
}

fn reply(conn: &mut TcpStream) -> Reply {
    let (head, body) = read_head(conn).expect("nginx answered nothing");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {head}"));
    Reply {
        status,
        head,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

fn request(source: Ipv4Addr, port: u16, request_line: &str, headers: &str) -> Reply {
    reply(&mut send(source, port, request_line, headers))
}

const BOSH_POST: &str = "POST /http-bind";
const WEBSOCKET: &str = "Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
    Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Protocol: xmpp\r\n\
    Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n";

/// nginx serving the meeting site of a set-up machine (with Jitsi's web app) on this host, in
/// the foreground as a single process: the image's nginx.conf and rendered site, with loopback
/// ports instead of 80/443 (plus a plain-HTTP port on the HTTPS site, for the checks that are
/// not about TLS), the web root and /data/config moved into the machine's root, and [`Backend`]
/// instead of Prosody and the videobridge.
struct Nginx {
    child: std::process::Child,
    tls: u16,
    plain: u16,
    backend: Backend,
    _machine: Machine,
}

impl Nginx {
    fn start() -> Nginx {
        let nginx = require("nginx", "nginx-light");
        let m = Machine::set_up(true);
        let web = m.paths.at("/usr/share/jitsi-meet");
        // A room page and a script of the web app, both long enough for gzip to bother.
        fs::write(
            web.join("index.html"),
            format!(
                "<!DOCTYPE html>\n<html><body>{}</body></html>\n",
                "<p>meeting</p>\n".repeat(200)
            ),
        )
        .unwrap();
        fs::create_dir_all(web.join("libs")).unwrap();
        fs::write(
            web.join("libs/app.bundle.min.js"),
            "var meeting = { participants: [] };\n".repeat(500),
        )
        .unwrap();
        let backend = Backend::start();
        let (http, tls, plain) = (free_port(), free_port(), free_port());
        let mut site = m.rendered("nginx/site.conf");
        let config = format!("{}/", m.paths.config_dir().display());
        for (from, to) in [
            ("/data/config/".to_string(), config),
            ("/usr/share/jitsi-meet".to_string(), web.display().to_string()),
            (
                "listen 443 ssl http2 default_server;".to_string(),
                format!("listen 127.0.0.1:{tls} ssl http2 default_server;\n    listen 127.0.0.1:{plain} default_server;"),
            ),
            ("listen [::]:443 ssl http2 default_server;".to_string(), String::new()),
            ("listen 80 default_server;".to_string(), format!("listen 127.0.0.1:{http} default_server;")),
            ("listen [::]:80 default_server;".to_string(), String::new()),
            ("127.0.0.1:5280".to_string(), format!("127.0.0.1:{}", backend.port)),
            ("127.0.0.1:9090".to_string(), format!("127.0.0.1:{}", backend.port)),
        ] {
            assert!(site.contains(&from), "the site lacks {from}");
            site = site.replace(&from, &to);
        }
        let site_path = m.write_host_file("site-running.conf", &site);
        let mut main = fs::read_to_string(overlay("etc/nginx/nginx.conf")).unwrap();
        for (from, to) in [
            (
                "include /etc/nginx/modules-enabled/*.conf;".to_string(),
                String::new(),
            ),
            (
                "/data/config/nginx/site.conf".to_string(),
                site_path.display().to_string(),
            ),
            (
                "pid /run/nginx.pid;".to_string(),
                format!("pid {};", m.host_dir().join("nginx.pid").display()),
            ),
            ("user www-data;".to_string(), String::new()),
        ] {
            assert!(main.contains(&from), "nginx.conf lacks {from}");
            main = main.replace(&from, &to);
        }
        let main_path = m.write_host_file("nginx-running.conf", &main);
        let mut child = Command::new(nginx)
            .arg("-e")
            .arg("stderr")
            .arg("-p")
            .arg(m.host_dir())
            .arg("-c")
            .arg(&main_path)
            .args(["-g", "daemon off; master_process off;"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", plain)).is_err() {
            if let Some(status) = child.try_wait().unwrap() {
                let mut err = String::new();
                child.stderr.take().unwrap().read_to_string(&mut err).ok();
                panic!("nginx stopped ({status}):\n{err}");
            }
            assert!(
                Instant::now() < deadline,
                "nginx does not listen on {plain}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Nginx {
            child,
            tls,
            plain,
            backend,
            _machine: m,
        }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        self.backend.release.store(true, Ordering::SeqCst);
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

/// Requests from `source` as fast as one client can send them, one after the other, until
/// nginx refuses one: how many it let through first (None: it never refused).
fn until_refused(source: Ipv4Addr, port: u16, request_line: &str, headers: &str) -> Option<usize> {
    for sent in 0..3000 {
        let r = request(source, port, request_line, headers);
        match r.status {
            200 => {}
            429 => return Some(sent),
            other => panic!("{request_line} from {source}: {other}\n{}", r.head),
        }
    }
    None
}

const CLIENT: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 1);
const OTHER_CLIENT: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
const HOLDING_CLIENT: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 3);
const BRIDGE_CLIENT: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 4);

#[test]
fn nginx_limits_each_client_address_on_the_xmpp_paths() {
    let n = Nginx::start();
    // BOSH: a burst of 200 passes (a class behind one NAT), then 429 for that address only.
    let bosh = until_refused(CLIENT, n.plain, BOSH_POST, "")
        .expect("3000 BOSH requests in a row from one address and none refused");
    eprintln!("BOSH: {bosh} requests from {CLIENT} before the first 429");
    assert!(
        bosh >= 200,
        "BOSH refused after {bosh} requests: a burst of 200 must pass"
    );
    assert_eq!(
        request(OTHER_CLIENT, n.plain, BOSH_POST, "").status,
        200,
        "another address is refused too"
    );
    // WebSocket handshakes: a burst of 100 passes, then 429; another address still connects.
    let ws = until_refused(CLIENT, n.plain, "GET /xmpp-websocket", WEBSOCKET)
        .expect("3000 WebSocket handshakes in a row from one address and none refused");
    eprintln!("WebSocket: {ws} handshakes from {CLIENT} before the first 429");
    assert!(
        ws >= 100,
        "WebSockets refused after {ws}: a burst of 100 must pass"
    );
    let other = request(OTHER_CLIENT, n.plain, "GET /xmpp-websocket", WEBSOCKET);
    assert_eq!(other.status, 200, "another address is refused too");
    let bridge = until_refused(
        BRIDGE_CLIENT,
        n.plain,
        "GET /colibri-ws/default-id/abc",
        WEBSOCKET,
    )
    .expect("3000 bridge WebSocket handshakes in a row from one address and none refused");
    eprintln!("bridge WebSocket: {bridge} handshakes from {BRIDGE_CLIENT} before the first 429");
    assert!(bridge >= 100, "bridge WebSockets refused after {bridge}");
    // Open connections: 150 held BOSH requests and 50 held WebSockets from one address fill
    // its 200; the next WebSocket from it is refused, one from another address is not.
    let mut held = Vec::new();
    for _ in 0..150 {
        held.push(send(HOLDING_CLIENT, n.plain, "POST /http-bind?hold", ""));
    }
    for _ in 0..50 {
        held.push(send(
            HOLDING_CLIENT,
            n.plain,
            "GET /xmpp-websocket?hold",
            WEBSOCKET,
        ));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while n.backend.holding.load(Ordering::SeqCst) < 200 {
        assert!(
            Instant::now() < deadline,
            "nginx passed only {} of 200 requests within every limit on",
            n.backend.holding.load(Ordering::SeqCst)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // The 51st WebSocket handshake is within the rate limit: refused for the open connections.
    let over = request(HOLDING_CLIENT, n.plain, "GET /xmpp-websocket", WEBSOCKET);
    assert_eq!(
        over.status, 429,
        "a 201st open XMPP connection from one address"
    );
    let other = request(OTHER_CLIENT, n.plain, "GET /xmpp-websocket?x", WEBSOCKET);
    assert_eq!(
        other.status, 200,
        "another address is refused while one is full"
    );
    n.backend.release.store(true, Ordering::SeqCst);
    for mut conn in held {
        assert_eq!(
            reply(&mut conn).status,
            200,
            "a held request within the limits"
        );
    }
}

#[test]
fn nginx_compresses_only_static_files_and_states_its_cipher_order() {
    let n = Nginx::start();
    let gzip = "Accept-Encoding: gzip\r\n";
    let script = request(CLIENT, n.plain, "GET /libs/app.bundle.min.js", gzip);
    assert_eq!(script.status, 200, "{}", script.head);
    assert_eq!(
        script.header("content-encoding"),
        Some("gzip"),
        "static files are compressed:\n{}",
        script.head
    );
    for (what, line, extra) in [
        ("a room page", "GET /weekly-meeting", gzip.to_string()),
        ("config.js", "GET /config.js", gzip.to_string()),
        ("BOSH", BOSH_POST, gzip.to_string()),
        (
            "the XMPP WebSocket",
            "GET /xmpp-websocket",
            format!("{gzip}{WEBSOCKET}"),
        ),
    ] {
        let r = request(CLIENT, n.plain, line, &extra);
        assert_eq!(r.status, 200, "{what}: {}", r.head);
        assert_eq!(
            r.header("content-encoding"),
            None,
            "{what} is compressed (BREACH):\n{}",
            r.head
        );
    }
    // No WebSocket compression is negotiated with the back ends either.
    for path in ["/xmpp-websocket", "/colibri-ws/default-id/abc"] {
        let r = request(CLIENT, n.plain, &format!("GET {path}"), WEBSOCKET);
        assert!(
            r.body.to_ascii_lowercase().contains("upgrade: websocket"),
            "{path}: {}",
            r.body
        );
        assert!(
            !r.body
                .to_ascii_lowercase()
                .contains("sec-websocket-extensions"),
            "{path} passes the client's compression offer on:\n{}",
            r.body
        );
    }
    // TLS 1.2: the server's order decides (AES-128-GCM first) over a client preferring
    // AES-256; a client that lists ChaCha20 first gets it.
    let openssl = require("openssl", "openssl");
    for (client_order, want) in [
        (
            "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256",
            "AES128-GCM",
        ),
        (
            "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305:ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256",
            "CHACHA20",
        ),
    ] {
        let o = run(Command::new(&openssl)
            .args(["s_client", "-tls1_2", "-servername", DOMAIN, "-cipher", client_order])
            .arg("-connect")
            .arg(format!("127.0.0.1:{}", n.tls)));
        let out = text(&o);
        let chosen = out
            .lines()
            .find_map(|l| l.trim().strip_prefix("Cipher    :"))
            .map(str::trim)
            .unwrap_or_else(|| panic!("no TLS 1.2 session:\n{out}"));
        assert!(
            chosen.contains(want),
            "client order {client_order}: server chose {chosen}, not {want}"
        );
    }
}
