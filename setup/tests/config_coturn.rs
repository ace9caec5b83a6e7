//! coturn's configuration, as appliance-admin renders it at setup: `turnserver` started on it
//! (it has no check-only mode), silent and without a log file, and the promises it makes.

mod common;

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{free_port, require, Machine, DOMAIN, SPEC_CERT, SPEC_KEY};

/// Runs turnserver with `args` for a moment, then stops it; it must not exit by itself, and
/// must have printed `ready` if given. Returns everything it printed and its pid.
fn run_turnserver(turnserver: &Path, args: &[String], ready: Option<&str>) -> (String, u32) {
    let mut child = Command::new(turnserver)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
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
    // coturn has no check-only mode: a config it cannot use makes it exit at once.
    let deadline = Instant::now() + Duration::from_millis(1500);
    let mut exited = None;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().unwrap() {
            exited = Some(status);
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // Already reaped if it exited; kill() then fails harmlessly and wait() returns the status.
    child.kill().ok();
    child.wait().ok();
    let out = format!(
        "{}{}",
        out_reader.join().unwrap(),
        err_reader.join().unwrap()
    );
    assert!(
        exited.is_none(),
        "turnserver exited early ({exited:?}):\n{out}"
    );
    if let Some(ready) = ready {
        assert!(
            out.contains(ready),
            "turnserver never got to {ready:?}:\n{out}"
        );
    }
    (out, pid)
}

#[test]
fn coturn_starts_with_the_config() {
    let turnserver = require("turnserver", "coturn");
    let m = Machine::set_up(false);
    let conf_path = m.for_this_host("coturn/turnserver.conf");
    let conf = fs::read_to_string(&conf_path).unwrap();
    // Loopback, free ports and a scratch pidfile; everything else is the rendered file.
    let mut args: Vec<String> = vec![
        "-c".into(),
        conf_path.to_str().unwrap().into(),
        "--listening-ip".into(),
        "127.0.0.1".into(),
        "--relay-ip".into(),
        "127.0.0.1".into(),
        "--pidfile".into(),
        m.host_dir().join("turnserver.pid").to_str().unwrap().into(),
    ];
    for option in [
        "--listening-port",
        "--alt-listening-port",
        "--tls-listening-port",
        "--alt-tls-listening-port",
    ] {
        args.push(option.into());
        args.push(free_port().to_string());
    }

    // 1. As configured: silent, and no log file anywhere (coturn falls back to
    //    /var/log/turn_<pid>_<date>.log when it has something to say before reading log-file).
    let (out, pid) = run_turnserver(&turnserver, &args, None);
    let log_files: Vec<PathBuf> = ["/var/log", "/var/tmp", "/tmp"]
        .iter()
        .flat_map(|d| fs::read_dir(d).into_iter().flatten())
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(&format!("turn_{pid}_"))
        })
        .collect();
    for f in &log_files {
        eprintln!(
            "{}: {}",
            f.display(),
            fs::read_to_string(f).unwrap_or_default()
        );
        fs::remove_file(f).ok();
    }
    assert!(
        log_files.is_empty(),
        "turnserver wrote a log file: {log_files:?}"
    );
    let out_lines: Vec<&str> = out
        .lines()
        .filter(|l| !l.starts_with("socket: Protocol not supported"))
        .collect();
    assert!(
        out_lines.is_empty(),
        "turnserver printed although logging is off:\n{out}"
    );

    // 2. The same file with its log sent to stdout (the command line cannot override the
    //    file's log settings), to read what turnserver made of it.
    let verbose = conf
        .replace("\nno-stdout-log\n", "\n")
        .replace("\nlog-file=/dev/null\n", "\nlog-file=stdout\n");
    assert_ne!(verbose, conf, "the log settings moved; update this test");
    args[1] = m
        .write_host_file("turnserver-verbose.conf", &verbose)
        .to_str()
        .unwrap()
        .into();
    let (out, _) = run_turnserver(&turnserver, &args, Some("Total General servers"));
    for bad in [
        "Bad configuration format",
        "ERROR",
        "CONFIG ERROR",
        "cannot",
        "Cannot",
        "WARNING",
    ] {
        assert!(!out.contains(bad), "turnserver complains ({bad}):\n{out}");
    }
    for good in [
        &format!("Default realm: {DOMAIN}"),
        "Certificate file found",
        "Private key file found",
        "TLS cipher suite: ECDHE-",
        "Black listing: 10.0.0.0-10.255.255.255",
        "RFC5780 disabled",
    ] {
        assert!(
            out.contains(good),
            "turnserver output lacks {good:?}:\n{out}"
        );
    }
}

/// At boot coturn may start before the network has an address (DHCP still asking). In a network
/// namespace of its own with only loopback up, `turnserver` runs on the rendered file (its own
/// ports; only the pidfile moved) and must keep running; then a network card with an address
/// arrives, and a TURN client that reaches the server there must get an allocation relayed
/// from that address.
#[test]
fn coturn_started_before_the_network_serves_the_address_that_comes_later() {
    let turnserver = require("turnserver", "coturn");
    let uclient = require("turnutils_uclient", "coturn");
    let unshare = require("unshare", "util-linux");
    require("ip", "iproute2");
    let m = Machine::set_up(false);
    let conf = m.for_this_host("coturn/turnserver.conf");
    let secret = m.secrets().turn_secret;
    let pidfile = m.host_dir().join("turnserver-netns.pid");
    // A virtual network card (a veth pair) with a documentation address, inside the namespace
    // only: coturn relays from a non-loopback address the machine has at allocation time.
    let script = format!(
        "set -u
         ip link set lo up
         {turnserver} -c {conf} --pidfile {pidfile} & ts=$!
         sleep 2
         if ! kill -0 $ts 2>/dev/null; then wait $ts; echo \"turnserver exited with status $? before the network came\"; exit 1; fi
         ip link add appl0 type veth peer name appl1 && ip link set appl1 up && ip link set appl0 up
         ip addr add 203.0.113.7/24 dev appl0
         timeout 20 {uclient} -v -W '{secret}' -u guest -n 1 -m 1 -l 100 -y 203.0.113.7
         kill $ts",
        turnserver = turnserver.display(),
        conf = conf.display(),
        pidfile = pidfile.display(),
        uclient = uclient.display(),
    );
    let mut cmd = Command::new(unshare);
    if !common::is_root() {
        cmd.arg("--map-root-user");
    }
    let out = cmd
        .args(["--net", "sh", "-c", &script])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !text.contains("before the network came"),
        "coturn needs an address to start:\n{text}"
    );
    assert!(
        text.contains("Received relay addr: 203.0.113.7:"),
        "no allocation relayed from the address that came after coturn started:\n{text}"
    );
}

#[test]
fn coturn_config_keeps_its_promises() {
    let m = Machine::set_up(true);
    let conf = m.rendered("coturn/turnserver.conf");
    let turn_secret = m.secrets().turn_secret;
    let lines: Vec<&str> = conf
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    for needle in [
        "use-auth-secret",
        &format!("static-auth-secret={turn_secret}"),
        &format!("realm={DOMAIN}"),
        "listening-ip=0.0.0.0",
        "listening-ip=::",
        "listening-port=3478",
        "tls-listening-port=5349",
        &format!("cert={SPEC_CERT}"),
        &format!("pkey={SPEC_KEY}"),
        "no-tlsv1",
        "no-tlsv1_1",
        "no-cli",
        "no-multicast-peers",
        "no-tcp-relay",
        "fingerprint",
        "no-stdout-log",
        "log-file=/dev/null",
        "simple-log",
        "denied-peer-ip=10.0.0.0-10.255.255.255",
        "denied-peer-ip=192.168.0.0-192.168.255.255",
        "denied-peer-ip=127.0.0.0-127.255.255.255",
        "denied-peer-ip=::1",
    ] {
        assert!(lines.contains(&needle), "turnserver.conf lacks {needle}");
    }
    assert!(lines.iter().any(|l| l.starts_with("pidfile=\"/run/")));
    // No relay address fixed at start: coturn picks one the machine has at each allocation.
    assert!(!lines.iter().any(|l| l.starts_with("relay-ip")));
    assert!(!lines.iter().any(|l| l.starts_with("syslog")));
    assert!(!lines.iter().any(|l| l.starts_with("allow-loopback-peers")));
}
