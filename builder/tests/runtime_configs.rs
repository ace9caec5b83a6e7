//! The runtime templates in `overlays/firstboot/files/usr/share/appliance/templates/` (rendered on the
//! machine by `appliance-admin` at setup time) are rendered here with the context the spec
//! defines and handed to their real consumers: `nginx -t`, `prosodyctl check config`, coturn's
//! `turnserver` (which has no check-only mode, so it is started on loopback for a moment),
//! `node` and ruby-hocon's `hocon`. A missing consumer is a failure that names the Debian
//! package to install.

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::net::{TcpListener, UdpSocket};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use minijinja::{AutoEscape, Environment, UndefinedBehavior};
use serde_json::{json, Value};

const DOMAIN: &str = "meet.example.org";
const SPEC_CERT: &str = "/data/config/tls/cert.pem";
const SPEC_KEY: &str = "/data/config/tls/key.pem";
const JVB_PASSWORD: &str = "JvbJvbJvbJvbJvbJvbJvbJvbJvbJvb01";
const FOCUS_PASSWORD: &str = "FocusFocusFocusFocusFocusFocus02";
const TURN_SECRET: &str = "TurnTurnTurnTurnTurnTurnTurnTur3";

/// Every runtime template and what consumes it. A template without an entry here fails
/// [`every_template_renders_with_the_spec_context`]: add its consumer check first.
const TEMPLATES: &[(&str, &str)] = &[
    ("nginx-setup.conf.jinja", "nginx"),
    ("nginx-site.conf.jinja", "nginx"),
    ("prosody.cfg.lua.jinja", "prosody"),
    ("turnserver.conf.jinja", "coturn"),
    ("jicofo.conf.jinja", "hocon"),
    ("jvb.conf.jinja", "hocon"),
    ("jitsi-config.js.jinja", "node"),
    ("jitsi-interface_config.js.jinja", "node"),
];

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `path` in the files of whichever feature ships it.
fn overlay(path: &str) -> PathBuf {
    let features = repo_root().join("overlays");
    fs::read_dir(&features)
        .unwrap()
        .map(|e| e.unwrap().path().join("files").join(path))
        .find(|p| p.exists())
        .unwrap_or_else(|| panic!("no feature in {} ships {path}", features.display()))
}

fn templates_dir() -> PathBuf {
    overlay("usr/share/appliance/templates")
}

/// The runtime template context exactly as the spec lists it; `cert`/`key` are the spec's
/// paths except where a consumer has to open real files.
fn context(jitsi_installed: bool, cert: &str, key: &str) -> Value {
    json!({
        "domain": DOMAIN,
        "guest_domain": format!("guest.{DOMAIN}"),
        "auth_domain": format!("auth.{DOMAIN}"),
        "muc_domain": format!("conference.{DOMAIN}"),
        "internal_muc_domain": format!("internal.auth.{DOMAIN}"),
        "lobby_domain": format!("lobby.{DOMAIN}"),
        "focus_domain": format!("focus.{DOMAIN}"),
        "secrets": {
            "jvb_password": JVB_PASSWORD,
            "focus_password": FOCUS_PASSWORD,
            "turn_secret": TURN_SECRET,
        },
        "tls": { "cert": cert, "key": key },
        "jitsi_installed": jitsi_installed,
        "jitsi_prosody_plugins": "/usr/share/jitsi-meet/prosody-plugins/",
        "acme": {
            "directory": "https://acme-v02.api.letsencrypt.org/directory",
            "email": "admin@example.org",
            "webroot": "/var/lib/appliance/acme-challenge",
            "basedir": "/data/config/acme",
        },
    })
}

fn spec_context(jitsi_installed: bool) -> Value {
    context(jitsi_installed, SPEC_CERT, SPEC_KEY)
}

/// The names of all `*.jinja` files in the templates directory, sorted.
fn template_files() -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(templates_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".jinja"))
        .collect();
    names.sort();
    names
}

/// An environment holding every template under its file name, undefined values being errors.
/// `autoescape: false` switches minijinja's name-based auto-escaping (JSON for `*.js.jinja`) off.
fn environment(autoescape: bool) -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    // As appliance-admin renders them: trailing newline kept, Jinja's defaults otherwise.
    env.set_syntax(
        minijinja::syntax::SyntaxConfig::builder()
            .keep_trailing_newline(true)
            .build()
            .unwrap(),
    );
    if !autoescape {
        env.set_auto_escape_callback(|_| AutoEscape::None);
    }
    // Like appliance-admin: every *.jinja file, partials (`_*.jinja`) included.
    for name in template_files() {
        let source = fs::read_to_string(templates_dir().join(&name))
            .unwrap_or_else(|e| panic!("cannot read template {name}: {e}"));
        env.add_template_owned(name.clone(), source)
            .unwrap_or_else(|e| panic!("template {name} does not parse: {e:#}"));
    }
    env
}

fn render(name: &str, ctx: &Value) -> String {
    environment(true)
        .get_template(name)
        .unwrap()
        .render(minijinja::value::Serde(ctx))
        .unwrap_or_else(|e| panic!("rendering {name} failed: {e:#}"))
}

/// The consumer program, or a failure naming the Debian package that provides it.
fn require(program: &str, package: &str) -> PathBuf {
    appliance::host::find_program(program).unwrap_or_else(|| {
        panic!("`{program}` is missing: install the Debian package `{package}` (apt-get install {package}) to run this test")
    })
}

fn run(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A scratch directory that other users can read (prosodyctl drops root for the prosody user),
/// with a throwaway self-signed certificate for the domain.
struct Scratch {
    dir: tempfile::TempDir,
}

impl Scratch {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let openssl = require("openssl", "openssl");
        let o = run(Command::new(openssl)
            .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
            .arg("ec_paramgen_curve:prime256v1")
            .args(["-nodes", "-days", "2", "-subj"])
            .arg(format!("/CN={DOMAIN}"))
            .arg("-addext")
            .arg(format!("subjectAltName=DNS:{DOMAIN}"))
            .arg("-keyout")
            .arg(dir.path().join("key.pem"))
            .arg("-out")
            .arg(dir.path().join("cert.pem")));
        assert!(o.status.success(), "openssl req failed: {}", text(&o));
        fs::set_permissions(
            dir.path().join("key.pem"),
            fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        Scratch { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn context(&self, jitsi_installed: bool) -> Value {
        context(
            jitsi_installed,
            self.path("cert.pem").to_str().unwrap(),
            self.path("key.pem").to_str().unwrap(),
        )
    }

    fn write(&self, name: &str, content: &str) -> PathBuf {
        let path = self.path(name);
        fs::write(&path, content).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        path
    }
}

#[test]
fn every_template_renders_with_the_spec_context() {
    let on_disk: Vec<String> = template_files()
        .into_iter()
        .filter(|n| !n.starts_with('_'))
        .collect();
    let mut known: Vec<String> = TEMPLATES.iter().map(|(n, _)| n.to_string()).collect();
    known.sort();
    assert_eq!(
        on_disk, known,
        "every runtime template needs a consumer check in this test"
    );

    let escaped = environment(true);
    let plain = environment(false);
    for installed in [true, false] {
        let ctx = spec_context(installed);
        for (name, _) in TEMPLATES {
            let out = escaped
                .get_template(name)
                .unwrap()
                .render(minijinja::value::Serde(&ctx))
                .unwrap();
            // RUNTIME_CONFIGS_DUMP=<dir> keeps the renderings for reading.
            if let Some(dir) = std::env::var_os("RUNTIME_CONFIGS_DUMP") {
                let dir = Path::new(&dir).join(format!("jitsi_installed={installed}"));
                fs::create_dir_all(&dir).unwrap();
                fs::write(dir.join(name.trim_end_matches(".jinja")), &out).unwrap();
            }
            assert!(
                !out.contains("{{") && !out.contains("{%"),
                "{name}: template syntax left over"
            );
            // The renderer may or may not auto-escape by file name; the output must not care.
            let out_plain = plain
                .get_template(name)
                .unwrap()
                .render(minijinja::value::Serde(&ctx))
                .unwrap();
            assert_eq!(out, out_plain, "{name}: output depends on auto-escaping");
        }
        // A missing context value is an error, not an empty string.
        let mut partial = ctx.clone();
        partial.as_object_mut().unwrap().remove("domain");
        for (name, _) in TEMPLATES {
            let uses_domain = fs::read_to_string(templates_dir().join(name))
                .unwrap()
                .contains("domain");
            if uses_domain {
                assert!(
                    escaped
                        .get_template(name)
                        .unwrap()
                        .render(minijinja::value::Serde(&partial))
                        .is_err(),
                    "{name} renders without `domain`"
                );
            }
        }
    }
}

#[test]
fn values_that_could_inject_configuration_are_refused() {
    let env = environment(true);
    for evil in [
        "meet.example.org\"; os.execute(\"id\") --",
        "meet.example.org; return 200",
        "meet.example.org\nlog-file=/var/log/x",
        "meet example.org",
        "meet.example.org$host",
        "meet.example.org</script>",
    ] {
        let mut ctx = spec_context(true);
        ctx["domain"] = json!(evil);
        for (name, _) in TEMPLATES {
            let source = fs::read_to_string(templates_dir().join(name)).unwrap();
            if !source.contains("domain") {
                continue;
            }
            let r = env
                .get_template(name)
                .unwrap()
                .render(minijinja::value::Serde(&ctx));
            assert!(r.is_err(), "{name} accepted the domain {evil:?}");
        }
    }
    // The setup page needs nothing from the answers (appliance-admin renders it before there
    // are any).
    let out = env
        .get_template("nginx-setup.conf.jinja")
        .unwrap()
        .render(minijinja::context! {})
        .unwrap();
    assert!(out.contains("return 503;"));
}

/// `nginx -t` on an nginx.conf that includes the rendered file the way the image's
/// /etc/nginx/nginx.conf does (that file is used when present, else a minimal stand-in).
fn nginx_check(scratch: &Scratch, site_name: &str, site: &str) {
    let nginx = require("nginx", "nginx-light");
    let site_path = scratch.write(site_name, site);
    let image_conf = overlay("etc/nginx/nginx.conf");
    let main = if image_conf.is_file() {
        let conf = fs::read_to_string(&image_conf).unwrap();
        assert!(
            conf.contains("/data/config/nginx/site.conf"),
            "{} does not include /data/config/nginx/site.conf",
            image_conf.display()
        );
        // Dynamic modules are found relative to the -p prefix used here; the image loads the
        // same ones as this host, so the check leaves them out.
        conf.replace("/data/config/nginx/site.conf", site_path.to_str().unwrap())
            .replace("include /etc/nginx/modules-enabled/*.conf;", "")
    } else {
        let tmp = scratch.path("nginx-tmp");
        fs::create_dir_all(&tmp).unwrap();
        let t = tmp.display();
        format!(
            "pid {p}/nginx.pid;\nerror_log stderr;\nevents {{ }}\nhttp {{\n    include /etc/nginx/mime.types;\n    \
             default_type application/octet-stream;\n    access_log off;\n    server_tokens off;\n    \
             client_body_temp_path {t}/body;\n    proxy_temp_path {t}/proxy;\n    fastcgi_temp_path {t}/fastcgi;\n    \
             uwsgi_temp_path {t}/uwsgi;\n    scgi_temp_path {t}/scgi;\n    include {site};\n}}\n",
            p = scratch.dir.path().display(),
            site = site_path.display()
        )
    };
    let main_path = scratch.write(&format!("{site_name}.nginx.conf"), &main);
    let o = run(Command::new(nginx)
        .arg("-t")
        .arg("-e")
        .arg("stderr")
        .arg("-p")
        .arg(scratch.dir.path())
        .arg("-c")
        .arg(&main_path));
    let out = text(&o);
    eprintln!("nginx -t ({site_name}):\n{out}");
    assert!(o.status.success(), "nginx -t rejects {site_name}:\n{out}");
    assert!(
        !out.contains("[warn]") && !out.contains("[emerg]"),
        "nginx -t warns about {site_name}:\n{out}"
    );
}

#[test]
fn nginx_accepts_the_setup_and_site_configs() {
    let scratch = Scratch::new();
    let setup = render("nginx-setup.conf.jinja", &scratch.context(false));
    nginx_check(&scratch, "setup.conf", &setup);
    for installed in [true, false] {
        let site = render("nginx-site.conf.jinja", &scratch.context(installed));
        nginx_check(&scratch, &format!("site-{installed}.conf"), &site);
    }
}

#[test]
fn nginx_configs_keep_their_promises() {
    let setup = render("nginx-setup.conf.jinja", &spec_context(false));
    assert!(setup.contains("listen 80 default_server;") && setup.contains("listen [::]:80"));
    assert!(setup.contains("alias /var/lib/appliance/acme-challenge/;"));
    assert!(setup.contains("root /usr/share/appliance/setup-page;"));
    assert!(setup.contains("return 503;") && setup.contains("Retry-After"));
    assert!(!setup.contains("listen 443"));

    for installed in [true, false] {
        let site = render("nginx-site.conf.jinja", &spec_context(installed));
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

#[test]
fn prosody_accepts_the_config() {
    let prosodyctl = require("prosodyctl", "prosody");
    let scratch = Scratch::new();
    // certificates = "certs" (Debian's postinst creates /etc/prosody/certs).
    fs::create_dir_all(scratch.path("certs")).unwrap();
    let main = fs::read_to_string(overlay("etc/prosody/prosody.cfg.lua")).unwrap();
    let include = "Include \"/data/config/prosody/appliance.cfg.lua\"";
    assert!(
        main.contains(include),
        "the main config includes the rendered file"
    );
    for installed in [true, false] {
        let rendered = render("prosody.cfg.lua.jinja", &scratch.context(installed));
        let rendered_path = scratch.write(&format!("appliance-{installed}.cfg.lua"), &rendered);
        let main_path = scratch.write(
            &format!("prosody-{installed}.cfg.lua"),
            &main.replace(
                include,
                &format!("Include {:?}", rendered_path.to_str().unwrap()),
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
            out.contains(rendered_path.to_str().unwrap()),
            "the rendered file was not loaded:\n{out}"
        );
        assert!(out.contains("All checks passed"), "{out}");
    }
}

/// Starts Prosody itself for a moment on the rendered configuration (loopback, free ports,
/// scratch data directory, log on the console) and reads what it says about it. Without Jitsi's
/// plugins on this host only the `jitsi_installed = false` rendering can load completely.
#[test]
fn prosody_starts_with_the_config() {
    let prosody = require("prosody", "prosody");
    let scratch = Scratch::new();
    fs::create_dir_all(scratch.path("certs")).unwrap();
    let data = scratch.path("data");
    fs::create_dir_all(&data).unwrap();
    fs::set_permissions(&data, fs::Permissions::from_mode(0o777)).unwrap();
    let installed = Path::new("/usr/share/jitsi-meet/prosody-plugins").is_dir();
    let rendered = render("prosody.cfg.lua.jinja", &scratch.context(installed));
    let rendered_path = scratch.write("appliance.cfg.lua", &rendered);
    let (c2s, http) = (free_port(), free_port());
    let main = fs::read_to_string(overlay("etc/prosody/prosody.cfg.lua")).unwrap();
    let mut patched = main.clone();
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
            format!("{:?}", rendered_path.to_str().unwrap()),
        ),
    ] {
        assert!(patched.contains(&from), "the main config lacks {from}");
        patched = patched.replace(&from, &to);
    }
    let main_path = scratch.write("prosody.cfg.lua", &patched);

    let mut cmd = Command::new(prosody);
    // Prosody refuses to run as root: run it as its own user then (same process, so killing
    // it below really stops it).
    if appliance::host::is_root() {
        let passwd = fs::read_to_string("/etc/passwd").unwrap();
        let entry = passwd
            .lines()
            .find(|l| l.starts_with("prosody:"))
            .expect("the prosody package creates the prosody user");
        let fields: Vec<&str> = entry.split(':').collect();
        cmd.uid(fields[2].parse().unwrap())
            .gid(fields[3].parse().unwrap());
    }
    let mut child = cmd
        .arg("--config")
        .arg(&main_path)
        .arg("-F")
        .current_dir(scratch.dir.path())
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
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut exited = None;
    while Instant::now() < deadline && exited.is_none() {
        exited = child.try_wait().unwrap();
        std::thread::sleep(Duration::from_millis(100));
    }
    // BOSH answers on loopback for the domain, without CORS headers (same origin only).
    let bosh = exited.is_none().then(|| {
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
    // Already reaped if it exited; kill() then fails harmlessly and wait() returns the status.
    child.kill().ok();
    child.wait().ok();
    let out = format!(
        "{}{}",
        out_reader.join().unwrap(),
        err_reader.join().unwrap()
    );
    eprintln!("prosody (jitsi_installed={installed}):\n{out}");
    if let Some(reply) = &bosh {
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
    }
    assert!(exited.is_none(), "prosody exited ({exited:?}):\n{out}");
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
    let main = fs::read_to_string(overlay("etc/prosody/prosody.cfg.lua")).unwrap();
    for needle in [
        "log = { }",
        "modules_disabled = {\n\t\"s2s\";",
        "c2s_interfaces = { \"127.0.0.1\", \"::1\" }",
        "http_interfaces = { \"127.0.0.1\" }",
        "https_ports = { }",
        "consider_bosh_secure = true",
        "pidfile = \"/run/prosody/prosody.pid\"",
        "data_path = \"/var/lib/prosody\"",
    ] {
        assert!(main.contains(needle), "main config lacks {needle:?}");
    }
    let guest = format!("guest.{DOMAIN}");
    for installed in [true, false] {
        let cfg = render("prosody.cfg.lua.jinja", &spec_context(installed));
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
        assert!(sections["*"].contains(&format!("external_service_secret = {TURN_SECRET:?}")));
        assert!(sections["*"].contains(&format!(
            "type = \"turns\", transport = \"tcp\", host = \"{DOMAIN}\", port = 5349, secret = true"
        )));
        assert!(
            !cfg.contains("log ="),
            "logging is configured in the main file only"
        );
    }
}

/// A loopback port that is free for both TCP and UDP right now.
fn free_port() -> u16 {
    loop {
        let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = tcp.local_addr().unwrap().port();
        if UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

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
    let scratch = Scratch::new();
    let conf = render("turnserver.conf.jinja", &scratch.context(false));
    let conf_path = scratch.write("turnserver.conf", &conf);
    // Loopback, free ports and a scratch pidfile; everything else is the rendered file.
    let mut args: Vec<String> = vec![
        "-c".into(),
        conf_path.to_str().unwrap().into(),
        "--listening-ip".into(),
        "127.0.0.1".into(),
        "--relay-ip".into(),
        "127.0.0.1".into(),
        "--pidfile".into(),
        scratch.path("turnserver.pid").to_str().unwrap().into(),
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
    args[1] = scratch
        .write("turnserver-verbose.conf", &verbose)
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

#[test]
fn coturn_config_keeps_its_promises() {
    let conf = render("turnserver.conf.jinja", &spec_context(true));
    let lines: Vec<&str> = conf
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    for needle in [
        "use-auth-secret",
        &format!("static-auth-secret={TURN_SECRET}"),
        &format!("realm={DOMAIN}"),
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
    assert!(!lines.iter().any(|l| l.starts_with("syslog")));
    assert!(!lines.iter().any(|l| l.starts_with("allow-loopback-peers")));
}

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
    let scratch = Scratch::new();
    let jicofo_conf = scratch.write(
        "jicofo.conf",
        &render("jicofo.conf.jinja", &spec_context(true)),
    );
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
    assert_eq!(client["password"], json!(FOCUS_PASSWORD));
    assert_eq!(client["client-proxy"], json!(format!("focus.{DOMAIN}")));
    assert_eq!(
        client["conference-muc-jid"],
        json!(format!("conference.{DOMAIN}"))
    );
    assert_eq!(jicofo["xmpp"]["trusted-domains"], json!([]));

    let jvb_conf = scratch.write("jvb.conf", &render("jvb.conf.jinja", &spec_context(true)));
    let jvb = hocon_get(&hocon, &jvb_conf, "videobridge");
    let shard = &jvb["apis"]["xmpp-client"]["configs"]["shard"];
    assert_eq!(shard["HOSTNAME"], json!("localhost"));
    assert_eq!(shard["DOMAIN"], json!(format!("auth.{DOMAIN}")));
    assert_eq!(shard["USERNAME"], json!("jvb"));
    assert_eq!(shard["PASSWORD"], json!(JVB_PASSWORD));
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
    let scratch = Scratch::new();
    let ctx = spec_context(true);
    let config = scratch.write("config.js", &render("jitsi-config.js.jinja", &ctx));
    let interface = scratch.write(
        "interface_config.js",
        &render("jitsi-interface_config.js.jinja", &ctx),
    );
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

#[test]
fn no_rendered_config_names_a_third_party_service() {
    for installed in [true, false] {
        let ctx = spec_context(installed);
        for (name, _) in TEMPLATES {
            let out = render(name, &ctx).to_lowercase();
            for third_party in [
                "meet-jit-si-turnrelay",
                "jitsi.net",
                "8x8",
                "google",
                "gravatar.com",
                "amplitude",
                "callstats",
                "giphy.com",
                "matomo",
            ] {
                assert!(!out.contains(third_party), "{name} mentions {third_party}");
            }
        }
    }
}
