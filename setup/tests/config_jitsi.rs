//! Jitsi's configuration, as appliance-admin renders it at setup: jicofo's and the videobridge's
//! HOCON files read by ruby-hocon's `hocon`, and the web app's config.js and interface_config.js
//! checked and evaluated by `node`. Jitsi's own programs are not needed (their packages are not
//! on this host); these are the parsers of the same formats.

mod common;

use std::path::Path;
use std::process::Command;

use common::{require, run, text, Machine, DOMAIN};
use serde_json::{json, Value};

/// `hocon -j -f FILE get PATH` as JSON.
fn hocon_get(hocon: &Path, file: &Path, path: &str) -> Value {
    let o = run(Command::new(hocon)
        .arg("-j")
        .arg("-f")
        .arg(file)
        .args(["get", path]));
    assert!(
        o.status.success(),
        "hocon cannot read {path} from {}:\n{}",
        file.display(),
        text(&o)
    );
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("hocon -j printed no JSON for {path} ({e}):\n{}", text(&o)))
}

#[test]
fn hocon_reads_jicofo_and_jvb_configs() {
    let hocon = require("hocon", "ruby-hocon");
    let m = Machine::set_up(true);
    let secrets = m.secrets();
    let jicofo_conf = m.paths.config_dir().join("jitsi/jicofo.conf");
    let jicofo = hocon_get(&hocon, &jicofo_conf, "jicofo");
    assert_eq!(jicofo["authentication"]["enabled"], json!(true));
    assert_eq!(jicofo["authentication"]["type"], json!("XMPP"));
    assert_eq!(jicofo["authentication"]["login-url"], json!(DOMAIN));
    assert_eq!(jicofo["conference"]["enable-auto-owner"], json!(false));
    assert_eq!(
        jicofo["bridge"]["brewery-jid"],
        json!(format!("JvbBrewery@internal.auth.{DOMAIN}"))
    );
    assert_eq!(jicofo["rest"]["host"], json!("127.0.0.1"));
    let client = &jicofo["xmpp"]["client"];
    assert_eq!(client["hostname"], json!("localhost"));
    assert_eq!(client["port"], json!(5222));
    assert_eq!(client["domain"], json!(format!("auth.{DOMAIN}")));
    assert_eq!(client["xmpp-domain"], json!(DOMAIN));
    assert_eq!(client["username"], json!("focus"));
    assert_eq!(client["password"], json!(secrets.focus_password));
    assert_eq!(client["client-proxy"], json!(format!("focus.{DOMAIN}")));
    assert_eq!(
        client["conference-muc-jid"],
        json!(format!("conference.{DOMAIN}"))
    );
    assert_eq!(jicofo["xmpp"]["trusted-domains"], json!([]));

    let jvb_conf = m.paths.config_dir().join("jitsi/jvb.conf");
    let jvb = hocon_get(&hocon, &jvb_conf, "videobridge");
    let shard = &jvb["apis"]["xmpp-client"]["configs"]["shard"];
    assert_eq!(shard["HOSTNAME"], json!("localhost"));
    assert_eq!(shard["DOMAIN"], json!(format!("auth.{DOMAIN}")));
    assert_eq!(shard["USERNAME"], json!("jvb"));
    assert_eq!(shard["PASSWORD"], json!(secrets.jvb_password));
    assert_eq!(
        shard["MUC_JIDS"],
        json!(format!("JvbBrewery@internal.auth.{DOMAIN}"))
    );
    assert!(shard["MUC_NICKNAME"]
        .as_str()
        .is_some_and(|n| !n.is_empty()));
    assert_eq!(jvb["websockets"]["enabled"], json!(true));
    assert_eq!(jvb["websockets"]["tls"], json!(true));
    assert_eq!(jvb["websockets"]["server-id"], json!("default-id"));
    assert_eq!(
        jvb["websockets"]["domains"],
        json!([format!("{DOMAIN}:443")])
    );
    assert_eq!(jvb["http-servers"]["public"]["host"], json!("127.0.0.1"));
    assert_eq!(jvb["http-servers"]["public"]["port"], json!(9090));
    assert_eq!(jvb["http-servers"]["private"]["host"], json!("127.0.0.1"));
    assert_eq!(jvb["ice"]["udp"]["port"], json!(10000));
    let ice4j = hocon_get(&hocon, &jvb_conf, "ice4j");
    assert_eq!(ice4j["harvest"]["mapping"]["stun"]["addresses"], json!([]));
    assert_eq!(ice4j["harvest"]["mapping"]["aws"]["enabled"], json!(false));
}

/// Evaluates `file` in a fresh V8 context and returns the global `name` as JSON.
fn node_global(node: &Path, file: &Path, name: &str) -> Value {
    let script = format!(
        "const fs = require('fs'); const vm = require('vm'); const ctx = {{}};\
         vm.runInNewContext(fs.readFileSync(process.argv[1], 'utf8'), ctx);\
         process.stdout.write(JSON.stringify(ctx[{name:?}]));"
    );
    let o = run(Command::new(node).arg("-e").arg(script).arg(file));
    assert!(
        o.status.success(),
        "node cannot run {}:\n{}",
        file.display(),
        text(&o)
    );
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("{name} is not JSON ({e}): {}", text(&o)))
}

#[test]
fn node_parses_config_js_and_interface_config_js() {
    let node = require("node", "nodejs");
    let m = Machine::set_up(true);
    let config = m.paths.config_dir().join("jitsi/config.js");
    let interface = m.paths.config_dir().join("jitsi/interface_config.js");
    for file in [&config, &interface] {
        let o = run(Command::new(&node).arg("--check").arg(file));
        assert!(
            o.status.success(),
            "node --check {}:\n{}",
            file.display(),
            text(&o)
        );
    }

    let config = node_global(&node, &config, "config");
    assert_eq!(config["hosts"]["domain"], json!(DOMAIN));
    assert_eq!(
        config["hosts"]["anonymousdomain"],
        json!(format!("guest.{DOMAIN}"))
    );
    assert_eq!(
        config["hosts"]["muc"],
        json!(format!("conference.{DOMAIN}"))
    );
    assert_eq!(config["hosts"]["focus"], json!(format!("focus.{DOMAIN}")));
    assert_eq!(config["bosh"], json!(format!("//{DOMAIN}/http-bind")));
    assert_eq!(
        config["websocket"],
        json!(format!("wss://{DOMAIN}/xmpp-websocket"))
    );
    assert_eq!(config["disableThirdPartyRequests"], json!(true));
    assert_eq!(config["gravatar"]["disabled"], json!(true));
    assert_eq!(config["analytics"]["disabled"], json!(true));
    assert_eq!(config["analytics"]["rtcstatsEnabled"], json!(false));
    assert_eq!(config["giphy"]["enabled"], json!(false));
    assert_eq!(config["e2eping"]["enabled"], json!(false));
    assert_eq!(config["feedbackPercentage"], json!(0));
    assert_eq!(config["doNotStoreRoom"], json!(true));
    assert_eq!(config["enableInsecureRoomNameWarning"], json!(true));
    assert_eq!(config["prejoinConfig"]["enabled"], json!(true));
    assert_eq!(
        config["p2p"]["stunServers"],
        json!([{ "urls": format!("stun:{DOMAIN}:3478") }])
    );

    let interface = node_global(&node, &interface, "interfaceConfig");
    assert_eq!(interface["SHOW_JITSI_WATERMARK"], json!(false));
    assert_eq!(interface["MOBILE_APP_PROMO"], json!(false));
}
