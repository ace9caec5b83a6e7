//! nginx's site, as appliance-admin renders it before setup (the "setup not finished" page) and
//! after it (the meeting site), checked by `nginx -t` inside the image's own nginx.conf, and
//! the promises the site makes (no logs, TLS settings, security headers, proxying).

mod common;

use std::fs;
use std::process::Command;

use common::{overlay, require, run, text, Machine, DOMAIN, SPEC_CERT, SPEC_KEY};

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
