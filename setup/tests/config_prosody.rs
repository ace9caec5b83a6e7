//! Prosody's machine configuration, as appliance-admin renders it at setup, included by the
//! image's /etc/prosody/prosody.cfg.lua: `prosodyctl check config`, a real Prosody started on
//! it with the accounts setup wrote (logins of the host from the seed, of jicofo's and the
//! videobridge's service accounts, anonymous guests), and the promises the file makes.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use appliance_admin::fsutil;
use appliance_scenarios::http::Trust;
use appliance_scenarios::xmpp::{BoshClient, Outcome};
use common::{
    free_port, is_root, overlay, require, run, text, Machine, DOMAIN, HOST, HOST_PASSWORD,
    SPEC_CERT,
};

const INCLUDE: &str = "Include \"/data/config/prosody/appliance.cfg.lua\"";

/// Prosody's sections: the global part (key "*") and one per VirtualHost/Component line.
fn prosody_sections(cfg: &str) -> BTreeMap<String, String> {
    let mut sections = BTreeMap::new();
    let mut current = "*".to_string();
    for line in cfg.lines() {
        let t = line.trim_start();
        if let Some(rest) = t
            .strip_prefix("VirtualHost ")
            .or_else(|| t.strip_prefix("Component "))
        {
            let host = rest.split('"').nth(1).expect("quoted host name");
            current = host.to_string();
        }
        let s: &mut String = sections.entry(current.clone()).or_default();
        s.push_str(line);
        s.push('\n');
    }
    sections
}

fn main_config() -> String {
    let main = fs::read_to_string(overlay("etc/prosody/prosody.cfg.lua")).unwrap();
    assert!(
        main.contains(INCLUDE),
        "the main config includes the rendered file"
    );
    main
}

#[test]
fn prosody_accepts_the_config() {
    let prosodyctl = require("prosodyctl", "prosody");
    let main = main_config();
    for installed in [true, false] {
        let m = Machine::set_up(installed);
        // certificates = "certs", relative to the main file (Debian's postinst creates it).
        fs::create_dir_all(m.host_dir().join("certs")).unwrap();
        let rendered = m.for_this_host("prosody/appliance.cfg.lua");
        let main_path = m.write_host_file(
            "prosody.cfg.lua",
            &main.replace(
                INCLUDE,
                &format!("Include {:?}", rendered.to_str().unwrap()),
            ),
        );
        let o = run(Command::new(&prosodyctl)
            .arg("--config")
            .arg(&main_path)
            .args(["check", "config"]));
        let out = text(&o);
        eprintln!("prosodyctl check config (jitsi_installed={installed}):\n{out}");
        assert!(
            o.status.success(),
            "prosodyctl check config (jitsi_installed={installed}) failed:\n{out}"
        );
        assert!(
            out.contains(rendered.to_str().unwrap()),
            "the rendered file was not loaded:\n{out}"
        );
        assert!(out.contains("All checks passed"), "{out}");
    }
}

/// A BOSH client for `domain` at Prosody's HTTP port on loopback (nginx's role on the machine).
fn bosh(http: u16, domain: &str) -> BoshClient {
    BoshClient::new(
        &format!("http://127.0.0.1:{http}/http-bind"),
        domain,
        &Trust::AcceptAny,
    )
    .unwrap()
}

/// Logs in over BOSH while Prosody runs: the host from the seed (SCRAM-SHA-1, as Jitsi Meet's
/// web app does), the service accounts with the secrets setup generated, anonymous guests; and
/// the logins that must not work.
fn check_logins(m: &Machine, http: u16) -> Result<Vec<String>, String> {
    let show = |e: anyhow::Error| format!("{e:#}");
    let secrets = m.secrets();
    let mut seen = Vec::new();
    let main = bosh(http, DOMAIN);
    match main.login_scram_sha1(HOST, HOST_PASSWORD).map_err(show)? {
        Outcome::Success { jid } if jid.starts_with(&format!("{HOST}@{DOMAIN}/")) => {
            seen.push(format!("{HOST} signed in as {jid}"))
        }
        other => return Err(format!("the host {HOST} cannot sign in: {other:?}")),
    }
    let wrong = main
        .login_plain(HOST, &format!("{HOST_PASSWORD}x"))
        .map_err(show)?;
    if !wrong.is_not_authorized() {
        return Err(format!("a wrong password was not refused: {wrong:?}"));
    }
    seen.push(format!("a wrong password for {HOST} refused"));
    match main.login_anonymous().map_err(show)? {
        Outcome::NotOffered { .. } => seen.push(format!("no anonymous login on {DOMAIN}")),
        other => return Err(format!("anonymous login on {DOMAIN}: {other:?}")),
    }
    let auth_domain = format!("auth.{DOMAIN}");
    let auth = bosh(http, &auth_domain);
    for (user, password) in [
        ("focus", &secrets.focus_password),
        ("jvb", &secrets.jvb_password),
    ] {
        match auth.login_scram_sha1(user, password).map_err(show)? {
            Outcome::Success { jid } => seen.push(format!("{user} signed in as {jid}")),
            other => return Err(format!("{user}@{auth_domain} cannot sign in: {other:?}")),
        }
    }
    let guest_domain = format!("guest.{DOMAIN}");
    let guest = bosh(http, &guest_domain);
    match guest.login_anonymous().map_err(show)? {
        Outcome::Success { jid } if jid.contains(&format!("@{guest_domain}/")) => {
            seen.push(format!("a guest signed in as {jid}"))
        }
        other => return Err(format!("anonymous login on {guest_domain}: {other:?}")),
    }
    match guest.login_plain(HOST, HOST_PASSWORD).map_err(show)? {
        Outcome::NotOffered { .. } => seen.push(format!("no password logins on {guest_domain}")),
        other => return Err(format!("password login on {guest_domain}: {other:?}")),
    }
    Ok(seen)
}

/// Bytes of whitespace (allowed between stanzas) sent ahead of a STARTTLS request to see how
/// fast Prosody reads a client connection, and the least time that must take: mod_limits reads
/// 10 kB/s, so 50 kB take about 5 s (each read of up to 8 KiB is processed, then paid for with
/// a pause); without a limit they take milliseconds.
const C2S_PADDING: usize = 50_000;
const C2S_PADDING_MIN_TIME: Duration = Duration::from_millis(2500);

/// Opens a client stream on Prosody's c2s port, sends [`C2S_PADDING`] bytes of whitespace and a
/// STARTTLS request, and returns how long Prosody took to answer it.
fn c2s_reading_time(port: u16) -> Result<Duration, String> {
    use std::io::Write;
    let fail = |what: &str, e: std::io::Error| format!("c2s on port {port}: {what}: {e}");
    let mut conn =
        std::net::TcpStream::connect(("127.0.0.1", port)).map_err(|e| fail("connect", e))?;
    conn.set_read_timeout(Some(Duration::from_secs(60)))
        .map_err(|e| fail("timeout", e))?;
    let read_until = |conn: &mut std::net::TcpStream, needles: &[&str]| -> Result<String, String> {
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let n = conn.read(&mut buf).map_err(|e| fail("read", e))?;
            if n == 0 {
                return Err(format!(
                    "Prosody closed the c2s stream: {}",
                    String::from_utf8_lossy(&seen)
                ));
            }
            seen.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&seen).into_owned();
            if needles.iter().any(|n| text.contains(n)) {
                return Ok(text);
            }
        }
    };
    write!(
        conn,
        "<?xml version='1.0'?><stream:stream to='{DOMAIN}' xmlns='jabber:client' \
         xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>"
    )
    .map_err(|e| fail("write", e))?;
    read_until(&mut conn, &["</stream:features>"])?;
    let start = Instant::now();
    conn.write_all(" ".repeat(C2S_PADDING).as_bytes())
        .map_err(|e| fail("write", e))?;
    conn.write_all(b"<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
        .map_err(|e| fail("write", e))?;
    read_until(&mut conn, &["<proceed", "<failure"])?;
    Ok(start.elapsed())
}

/// Starts Prosody itself on the machine's configuration and accounts (loopback, free ports,
/// log on the console), reads what it says about the configuration, and signs in. Without
/// Jitsi's plugins on this host only the `jitsi_installed = false` rendering can load
/// completely.
#[test]
fn prosody_starts_with_the_config_and_lets_the_right_users_in() {
    let prosody = require("prosody", "prosody");
    let installed = Path::new("/usr/share/jitsi-meet/prosody-plugins").is_dir();
    let m = Machine::set_up(installed);
    fs::create_dir_all(m.host_dir().join("certs")).unwrap();
    // Prosody is started here as its own user with its primary group only (Command::uid drops
    // supplementary groups); on the machine it reads the key as a member of ssl-cert.
    fs::set_permissions(m.paths.tls_key(), fs::Permissions::from_mode(0o644)).unwrap();
    let rendered = m.for_this_host("prosody/appliance.cfg.lua");
    // The accounts setup wrote, where the machine keeps them.
    let data = m.paths.prosody_data();
    assert!(
        data.is_dir(),
        "setup wrote no Prosody accounts to {}",
        data.display()
    );
    let (c2s, http) = (free_port(), free_port());
    let mut patched = main_config();
    for (from, to) in [
        (
            "log = { }".to_string(),
            "log = { { levels = { min = \"info\" }, to = \"console\" } }".to_string(),
        ),
        (
            "\"/run/prosody/prosody.pid\"".to_string(),
            format!("{:?}", data.join("prosody.pid").to_str().unwrap()),
        ),
        (
            "\"/var/lib/prosody\"".to_string(),
            format!("{:?}", data.to_str().unwrap()),
        ),
        (
            "c2s_ports = { 5222 }".to_string(),
            format!("c2s_ports = {{ {c2s} }}"),
        ),
        (
            "http_ports = { 5280 }".to_string(),
            format!("http_ports = {{ {http} }}"),
        ),
        (
            "\"/data/config/prosody/appliance.cfg.lua\"".to_string(),
            format!("{:?}", rendered.to_str().unwrap()),
        ),
    ] {
        assert!(patched.contains(&from), "the main config lacks {from}");
        patched = patched.replace(&from, &to);
    }
    let main_path = m.write_host_file("prosody.cfg.lua", &patched);

    let mut cmd = Command::new(prosody);
    // Prosody refuses to run as root: run it as its own user then (same process, so killing
    // it below really stops it), as the owner of the accounts setup wrote.
    if is_root() {
        let owner = fsutil::lookup_user(&m.paths.etc_passwd(), "prosody")
            .unwrap()
            .expect("the prosody package creates the prosody user");
        cmd.uid(owner.uid).gid(owner.gid);
    }
    let mut child = cmd
        .arg("--config")
        .arg(&main_path)
        .arg("-F")
        .current_dir(m.host_dir())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out_reader = std::thread::spawn(move || {
        let mut s = String::new();
        stdout.read_to_string(&mut s).ok();
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        stderr.read_to_string(&mut s).ok();
        s
    });
    // Up and listening, then still running a moment later (a bad config can stop it late).
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut exited = None;
    let mut listening = false;
    while Instant::now() < deadline && exited.is_none() && !listening {
        exited = child.try_wait().unwrap();
        listening = std::net::TcpStream::connect(("127.0.0.1", http)).is_ok();
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(1));
    if exited.is_none() {
        exited = child.try_wait().unwrap();
    }
    let running = exited.is_none() && listening;
    // BOSH answers on loopback for the domain, without CORS headers (same origin only).
    let bosh_reply = running.then(|| {
        use std::io::Write;
        let mut conn = std::net::TcpStream::connect(("127.0.0.1", http)).unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        write!(
            conn,
            "GET /http-bind HTTP/1.0\r\nHost: {DOMAIN}\r\nOrigin: https://elsewhere.example\r\n\r\n"
        )
        .unwrap();
        let mut reply = String::new();
        conn.read_to_string(&mut reply).ok();
        reply
    });
    let logins = running.then(|| check_logins(&m, http));
    let c2s_time = running.then(|| c2s_reading_time(c2s));
    if exited.is_none() {
        exited = child.try_wait().unwrap();
    }
    // Already reaped if it exited; kill() then fails harmlessly and wait() returns the status.
    child.kill().ok();
    child.wait().ok();
    let out = format!(
        "{}{}",
        out_reader.join().unwrap(),
        err_reader.join().unwrap()
    );
    eprintln!("prosody (jitsi_installed={installed}):\n{out}");
    assert!(exited.is_none(), "prosody exited ({exited:?}):\n{out}");
    assert!(listening, "prosody never listened on {http}:\n{out}");
    let reply = bosh_reply.unwrap();
    assert!(
        reply.lines().next().is_some_and(|l| l.contains(" 200 ")),
        "GET /http-bind:\n{reply}"
    );
    assert!(
        !reply
            .to_ascii_lowercase()
            .contains("access-control-allow-origin"),
        "BOSH allows other origins:\n{reply}"
    );
    match logins.unwrap() {
        Ok(seen) => eprintln!("logins: {}", seen.join("; ")),
        Err(e) => panic!("{e}\n--- prosody ---\n{out}"),
    }
    match c2s_time.unwrap() {
        Ok(took) => {
            eprintln!("{C2S_PADDING} bytes on a client connection read in {took:?}");
            assert!(
                took >= C2S_PADDING_MIN_TIME,
                "Prosody read {C2S_PADDING} bytes of a client connection in {took:?}: mod_limits \
                 does not slow clients down (at 10 kB/s that takes about 5 s)\n{out}"
            );
        }
        Err(e) => panic!("{e}\n--- prosody ---\n{out}"),
    }
    for line in out.lines() {
        let level = line.split('\t').nth(1).unwrap_or("");
        assert!(
            level != "warn" && level != "error",
            "prosody complains: {line}\n{out}"
        );
    }
    for good in [
        format!("Activated service 'http' on [127.0.0.1]:{http}"),
        "Activated service 'https' on no ports".to_string(),
        format!("Serving 'bosh' at http://{DOMAIN}:{http}/http-bind"),
        format!("Serving 'websocket' at http://{DOMAIN}:{http}/xmpp-websocket"),
    ] {
        assert!(out.contains(&good), "prosody did not say {good:?}:\n{out}");
    }
    assert!(!out.contains("'s2s'"), "s2s must stay disabled:\n{out}");
    // c2s on both loopback addresses and nothing else (their order varies).
    let c2s_line = out
        .lines()
        .find(|l| l.contains("Activated service 'c2s' on"))
        .unwrap_or_else(|| panic!("no c2s listener:\n{out}"));
    let mut addresses: Vec<&str> = c2s_line.split(" on ").nth(1).unwrap().split(", ").collect();
    addresses.sort();
    let (v4, v6) = (format!("[127.0.0.1]:{c2s}"), format!("[::1]:{c2s}"));
    assert_eq!(addresses, [v4.as_str(), v6.as_str()], "{c2s_line}");
}

#[test]
fn prosody_config_keeps_its_promises() {
    let main = main_config();
    for needle in [
        "log = { }",
        "modules_disabled = {\n\t\"s2s\";",
        "c2s_interfaces = { \"127.0.0.1\", \"::1\" }",
        "http_interfaces = { \"127.0.0.1\" }",
        "https_ports = { }",
        "consider_bosh_secure = true",
        "\t\"limits\";",
        "limits = {\n\tc2s = {\n\t\trate = \"10kb/s\";",
        "pidfile = \"/run/prosody/prosody.pid\"",
        "data_path = \"/var/lib/prosody\"",
    ] {
        assert!(main.contains(needle), "main config lacks {needle:?}");
    }
    let guest = format!("guest.{DOMAIN}");
    for installed in [true, false] {
        let m = Machine::set_up(installed);
        let cfg = m.rendered("prosody/appliance.cfg.lua");
        let turn_secret = m.secrets().turn_secret;
        let sections = prosody_sections(&cfg);
        for (host, section) in &sections {
            let anonymous = section.contains("authentication = \"anonymous\"");
            assert_eq!(
                anonymous,
                *host == guest,
                "anonymous only on {guest}, not {host}"
            );
        }
        let main_host = &sections[DOMAIN];
        assert!(main_host.contains("authentication = \"internal_hashed\""));
        assert!(main_host.contains("\"bosh\";") && main_host.contains("\"websocket\";"));
        assert!(main_host.contains(&format!("certificate = {SPEC_CERT:?};")));
        assert!(sections[&guest].contains("c2s_require_encryption = false"));
        let auth = &sections[&format!("auth.{DOMAIN}")];
        assert!(auth.contains("authentication = \"internal_hashed\""));
        assert!(auth.contains(&format!("admins = {{ \"focus@auth.{DOMAIN}\" }}")));
        let muc = &sections[&format!("conference.{DOMAIN}")];
        for needle in [
            "Component \"conference.meet.example.org\" \"muc\"",
            "restrict_room_creation = true",
            "storage = \"memory\"",
            "muc_room_locking = false",
            "muc_tombstones = false",
            "muc_room_allow_persistent = false",
        ] {
            assert!(muc.contains(needle), "conference MUC lacks {needle:?}");
        }
        let internal = &sections[&format!("internal.auth.{DOMAIN}")];
        assert!(internal.contains("restrict_room_creation = true"));
        assert!(internal.contains("muc_room_default_members_only = true"));
        for component in [
            format!("lobby.{DOMAIN}"),
            format!("focus.{DOMAIN}"),
            format!("speakerstats.{DOMAIN}"),
        ] {
            assert_eq!(
                sections.contains_key(&component),
                installed,
                "{component} needs Jitsi's plugins"
            );
        }
        assert_eq!(cfg.contains("plugin_paths"), installed);
        assert_eq!(cfg.contains("\"muc_lobby_rooms\";"), installed);
        if installed {
            assert!(sections[&format!("focus.{DOMAIN}")]
                .contains(&format!("target_address = \"focus@auth.{DOMAIN}\"")));
        }
        assert!(sections["*"].contains(&format!("external_service_secret = {turn_secret:?}")));
        assert!(
            sections["*"].contains(&format!(
                "unlimited_jids = {{ \"focus@auth.{DOMAIN}\", \"jvb@auth.{DOMAIN}\" }}"
            )),
            "jicofo and the videobridge are not exempt from mod_limits"
        );
        assert!(sections["*"].contains(&format!(
            "type = \"turns\", transport = \"tcp\", host = \"{DOMAIN}\", port = 5349, secret = true"
        )));
        assert!(
            !cfg.contains("log ="),
            "logging is configured in the main file only"
        );
    }
}
