//! Every runtime template (`overlays/firstboot/files/usr/share/appliance/templates/`), rendered
//! by appliance-admin's own setup steps from a seed file: each has a consumer check, none leaves
//! template syntax behind, a value that could inject configuration is refused, a missing value
//! is an error, and no rendered file names a third-party service.
//!
//! `RUNTIME_CONFIGS_DUMP=<dir>` keeps the rendered files for reading.

mod common;

use std::fs;
use std::path::Path;

use appliance_admin::answers::Answers;
use appliance_admin::render::{self, Phase};
use appliance_admin::steps;
use common::{templates_dir, Machine};

/// Every runtime template and the test that hands its rendering to the real consumer. A
/// template without an entry here fails [`every_template_is_rendered_and_checked`]: add its
/// consumer check first.
const CONSUMERS: &[(&str, &str)] = &[
    ("jicofo.conf.jinja", "config_jitsi: hocon"),
    ("jitsi-config.js.jinja", "config_jitsi: node"),
    ("jitsi-interface_config.js.jinja", "config_jitsi: node"),
    ("jvb.conf.jinja", "config_jitsi: hocon"),
    ("nginx-setup.conf.jinja", "config_nginx: nginx -t"),
    ("nginx-site.conf.jinja", "config_nginx: nginx -t"),
    (
        "prosody.cfg.lua.jinja",
        "config_prosody: prosodyctl, prosody",
    ),
    ("turnserver.conf.jinja", "config_coturn: turnserver"),
];

/// The meeting templates and the files they become (relative to /data/config).
fn meeting_targets() -> impl Iterator<Item = (&'static str, &'static str)> {
    render::TEMPLATES
        .iter()
        .filter(|t| t.phase == Phase::Meeting)
        .map(|t| (t.name, t.target))
}

fn source(name: &str) -> String {
    fs::read_to_string(templates_dir().join(name)).unwrap()
}

/// The machine set up with and without Jitsi's packages, and its renderings: every meeting
/// file, and the setup page a machine shows before setup.
fn renderings(jitsi_installed: bool) -> (Machine, Vec<(&'static str, String)>) {
    let fresh = Machine::new(jitsi_installed);
    fresh.render_setup_page();
    let mut out = vec![("nginx-setup.conf.jinja", fresh.rendered("nginx/site.conf"))];
    let m = Machine::set_up(jitsi_installed);
    for (name, target) in meeting_targets() {
        out.push((name, m.rendered(target)));
    }
    (m, out)
}

#[test]
fn every_template_is_rendered_and_checked() {
    let mut on_disk: Vec<String> = fs::read_dir(templates_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".jinja") && !n.starts_with('_'))
        .collect();
    on_disk.sort();
    let known: Vec<&str> = CONSUMERS.iter().map(|(n, _)| *n).collect();
    assert_eq!(
        on_disk, known,
        "every runtime template needs a consumer check (CONSUMERS in this file)"
    );
    for name in &on_disk {
        assert!(
            render::lookup(name).is_some(),
            "{name} has no target in render::TEMPLATES"
        );
    }

    for installed in [true, false] {
        let (m, rendered) = renderings(installed);
        assert_eq!(rendered.len(), CONSUMERS.len());
        for (name, out) in &rendered {
            if let Some(dir) = std::env::var_os("RUNTIME_CONFIGS_DUMP") {
                let dir = Path::new(&dir).join(format!("jitsi_installed={installed}"));
                fs::create_dir_all(&dir).unwrap();
                fs::write(dir.join(name.trim_end_matches(".jinja")), out).unwrap();
            }
            assert!(
                !out.contains("{{") && !out.contains("{%") && !out.contains("{#"),
                "{name}: template syntax left over"
            );
            assert!(out.ends_with('\n'), "{name}: no newline at the end");
        }

        // A missing context value is an error, not an empty string.
        let templates = m.templates();
        let mut partial = serde_json::to_value(m.context()).unwrap();
        partial.as_object_mut().unwrap().remove("domain");
        for (name, _) in meeting_targets() {
            if source(name).contains("domain") {
                assert!(
                    templates.render(name, &partial).is_err(),
                    "{name} renders without `domain`"
                );
            }
        }
    }
}

#[test]
fn values_that_could_inject_configuration_are_refused() {
    let m = Machine::set_up(true);
    let templates = m.templates();
    let secrets = m.secrets();
    for evil in [
        "meet.example.org\"; os.execute(\"id\") --",
        "meet.example.org; return 200",
        "meet.example.org\nlog-file=/var/log/x",
        "meet example.org",
        "meet.example.org$host",
        "meet.example.org</script>",
    ] {
        // Answers that got past validation somehow (a hand-edited answers.toml).
        let answers = Answers {
            domain: evil.to_string(),
            ..m.answers()
        };
        let ctx = render::meeting_context(&m.paths, &answers, &secrets);
        for (name, _) in meeting_targets() {
            if source(name).contains("domain") {
                assert!(
                    templates.render(name, &ctx).is_err(),
                    "{name} accepted the domain {evil:?}"
                );
            }
        }
        assert!(
            steps::render_config(&m.paths, &answers).is_err(),
            "the configuration step accepted the domain {evil:?}"
        );
        for (name, target) in meeting_targets() {
            assert!(
                !m.rendered(target).contains(evil),
                "{name} was written with the domain {evil:?}"
            );
        }
    }
    // The setup page needs nothing from the answers (appliance-admin renders it before there
    // are any).
    let out = templates
        .render("nginx-setup.conf.jinja", &serde_json::json!({}))
        .unwrap();
    assert!(out.contains("return 503;"));
}

#[test]
fn no_rendered_config_names_a_third_party_service() {
    for installed in [true, false] {
        for (name, out) in renderings(installed).1 {
            let out = out.to_lowercase();
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
