//! Renders the runtime templates (/usr/share/appliance/templates/*.jinja) into /data/config,
//! in the project's one template dialect ([`appliance_spec::template`]).
//!
//! The template file name decides the target; the mapping lives in [`TEMPLATES`] only, so a new
//! template needs one new line here. Files starting with `_` are partials (for `include` and
//! `import`), not rendered on their own. Unknown templates are an error rather than silently
//! ignored, so a template added to the image without a mapping is noticed at the first boot
//! test. The templates' consumers check what they render in `setup/tests/config_*.rs`.

use crate::answers::Answers;
use crate::fsutil::{self, Owner};
use crate::paths::{self, Paths};
use crate::secrets::Secrets;
use anyhow::{bail, Context, Result};
use appliance_spec::seed::LETSENCRYPT_DIRECTORY;
use appliance_spec::template;
use minijinja::{AutoEscape, Environment};
use serde::Serialize;
use std::fs;

/// Which set of templates to render.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Before setup: only the "setup not finished" web page.
    Setup,
    /// After setup: every template of the meeting stack.
    Meeting,
}

pub struct Template {
    /// File name in the templates directory.
    pub name: &'static str,
    /// Path relative to /data/config.
    pub target: &'static str,
    pub phase: Phase,
    /// Group that must read the file (it holds secrets); None = world-readable 0644.
    pub group: Option<&'static str>,
}

/// The one table mapping template names to rendered files.
pub const TEMPLATES: &[Template] = &[
    Template {
        name: "nginx-setup.conf.jinja",
        target: "nginx/site.conf",
        phase: Phase::Setup,
        group: None,
    },
    Template {
        name: "nginx-site.conf.jinja",
        target: "nginx/site.conf",
        phase: Phase::Meeting,
        group: None,
    },
    Template {
        name: "prosody.cfg.lua.jinja",
        target: "prosody/appliance.cfg.lua",
        phase: Phase::Meeting,
        group: Some("prosody"),
    },
    Template {
        name: "turnserver.conf.jinja",
        target: "coturn/turnserver.conf",
        phase: Phase::Meeting,
        group: Some("turnserver"),
    },
    Template {
        name: "jicofo.conf.jinja",
        target: "jitsi/jicofo.conf",
        phase: Phase::Meeting,
        group: Some("jitsi"),
    },
    Template {
        name: "jvb.conf.jinja",
        target: "jitsi/jvb.conf",
        phase: Phase::Meeting,
        group: Some("jitsi"),
    },
    Template {
        name: "jitsi-config.js.jinja",
        target: "jitsi/config.js",
        phase: Phase::Meeting,
        group: None,
    },
    Template {
        name: "jitsi-interface_config.js.jinja",
        target: "jitsi/interface_config.js",
        phase: Phase::Meeting,
        group: None,
    },
];

pub fn lookup(name: &str) -> Option<&'static Template> {
    TEMPLATES.iter().find(|t| t.name == name)
}

#[derive(Debug, Clone, Serialize)]
pub struct Tls {
    pub cert: &'static str,
    pub key: &'static str,
}

#[derive(Debug, Clone, Serialize)]
pub struct AcmeContext {
    pub enabled: bool,
    pub directory: String,
    pub email: String,
    pub webroot: &'static str,
    pub basedir: &'static str,
}

#[derive(Debug, Clone, Serialize)]
pub struct PowerOffContext {
    pub idle_minutes: u32,
    pub daily_at: Option<String>,
}

/// What every meeting template gets (see the interface spec).
#[derive(Debug, Clone, Serialize)]
pub struct MeetingContext {
    pub domain: String,
    pub guest_domain: String,
    pub auth_domain: String,
    pub muc_domain: String,
    pub internal_muc_domain: String,
    pub lobby_domain: String,
    pub focus_domain: String,
    pub secrets: Secrets,
    pub tls: Tls,
    pub jitsi_installed: bool,
    pub jitsi_prosody_plugins: &'static str,
    pub acme: AcmeContext,
    pub timezone: String,
    pub power_off: PowerOffContext,
}

/// The setup page knows nothing about the answers yet.
#[derive(Debug, Clone, Serialize)]
pub struct SetupContext {
    pub tls: Tls,
    pub jitsi_installed: bool,
    pub acme: AcmeContext,
    pub setup_page: &'static str,
}

const TLS: Tls = Tls {
    cert: paths::MACHINE_TLS_CERT,
    key: paths::MACHINE_TLS_KEY,
};

pub fn meeting_context(paths: &Paths, answers: &Answers, secrets: &Secrets) -> MeetingContext {
    let d = &answers.domain;
    let le = answers.letsencrypt.as_ref();
    MeetingContext {
        domain: d.clone(),
        guest_domain: format!("guest.{d}"),
        auth_domain: format!("auth.{d}"),
        muc_domain: format!("conference.{d}"),
        internal_muc_domain: format!("internal.auth.{d}"),
        lobby_domain: format!("lobby.{d}"),
        focus_domain: format!("focus.{d}"),
        secrets: secrets.clone(),
        tls: TLS,
        jitsi_installed: paths.jitsi_index().exists(),
        jitsi_prosody_plugins: paths::MACHINE_JITSI_PLUGINS,
        acme: AcmeContext {
            enabled: le.is_some(),
            directory: le.map_or(LETSENCRYPT_DIRECTORY.to_string(), |l| l.directory.clone()),
            email: le.map_or(String::new(), |l| l.email.clone()),
            webroot: paths::MACHINE_ACME_WEBROOT,
            basedir: paths::MACHINE_ACME_BASEDIR,
        },
        timezone: answers.timezone.clone(),
        power_off: PowerOffContext {
            idle_minutes: answers.power_off.idle_minutes,
            daily_at: answers.power_off.daily_at.clone(),
        },
    }
}

pub fn setup_context(paths: &Paths) -> SetupContext {
    SetupContext {
        tls: TLS,
        jitsi_installed: paths.jitsi_index().exists(),
        acme: AcmeContext {
            enabled: false,
            directory: LETSENCRYPT_DIRECTORY.to_string(),
            email: String::new(),
            webroot: paths::MACHINE_ACME_WEBROOT,
            basedir: paths::MACHINE_ACME_BASEDIR,
        },
        setup_page: "/usr/share/appliance/setup-page",
    }
}

/// The `*.jinja` files of the templates directory, loaded in the project's template dialect
/// ([`appliance_spec::template::environment`]). Partials (`_*.jinja`) are loaded too, for
/// `include` and `import`.
pub struct Templates {
    env: Environment<'static>,
    names: Vec<String>,
}

impl Templates {
    pub fn load(paths: &Paths) -> Result<Templates> {
        let dir = paths.templates_dir();
        let mut names = Vec::new();
        let rd = fs::read_dir(&dir).with_context(|| {
            format!(
                "cannot read the templates directory {}",
                paths.display(&dir)
            )
        })?;
        for entry in rd {
            let entry = entry.with_context(|| format!("cannot read {}", dir.display()))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.ends_with(".jinja") {
                names.push(name);
            }
        }
        names.sort();

        let mut env = template::environment()?;
        // These are configuration files, never HTML: values are checked by `_quote.jinja`, not
        // escaped, and the output must not change with minijinja's cargo features (its `json`
        // feature would JSON-escape everything printed in a `*.js.jinja` template).
        env.set_auto_escape_callback(|_| AutoEscape::None);
        for name in &names {
            let src = fs::read_to_string(dir.join(name))
                .with_context(|| format!("cannot read template {name}"))?;
            env.add_template_owned(name.clone(), src)
                .map_err(|e| anyhow::anyhow!("template {name} has a syntax error: {e:#}"))?;
        }
        Ok(Templates { env, names })
    }

    /// The templates rendered on their own (partials left out), sorted by name.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.names
            .iter()
            .map(String::as_str)
            .filter(|n| !n.starts_with('_'))
    }

    /// The text of template `name` rendered with `ctx`.
    pub fn render<C: Serialize>(&self, name: &str, ctx: &C) -> Result<String> {
        let tmpl = self
            .env
            .get_template(name)
            .map_err(|e| anyhow::anyhow!("template {name}: {e:#}"))?;
        tmpl.render(minijinja::value::Serde(ctx))
            .map_err(|e| anyhow::anyhow!("cannot render template {name}: {e:#}"))
    }
}

/// Render every template of `phase` found in the templates directory; returns the targets
/// written (relative to /data/config).
pub fn render_all<C: Serialize>(paths: &Paths, phase: Phase, ctx: &C) -> Result<Vec<String>> {
    let templates = Templates::load(paths)?;
    let mut written = Vec::new();
    for name in templates.names() {
        let Some(t) = lookup(name) else {
            bail!("the template {name} in {} has no known target; add it to TEMPLATES in setup/src/render.rs", paths.display(&paths.templates_dir()));
        };
        if t.phase != phase {
            continue;
        }
        let text = templates.render(name, ctx)?;
        let target = paths.config_dir().join(t.target);
        let parent = target
            .parent()
            .with_context(|| format!("{} has no parent", target.display()))?;
        if !parent.exists() {
            fsutil::ensure_dir(parent, 0o755, None)?;
        }
        let (mode, owner) = match t.group {
            None => (0o644, None),
            Some(g) => (
                0o640,
                fsutil::lookup_group(&paths.etc_group(), g)?.map(|gid| Owner { uid: 0, gid }),
            ),
        };
        fsutil::atomic_write(&target, text.as_bytes(), mode, owner)?;
        written.push(t.target.to_string());
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::answers::{HostAnswer, PowerOffAnswers};
    use crate::scram;

    pub fn answers() -> Answers {
        Answers {
            domain: "meet.localhost".into(),
            timezone: "UTC".into(),
            ssh_authorized_keys: vec![],
            hosts: vec![HostAnswer {
                name: "alice".into(),
                scram: scram::credentials_with_salt("Tulip-Harbor-42", "salt", 10),
            }],
            letsencrypt: None,
            power_off: PowerOffAnswers::default(),
        }
    }

    fn secrets() -> Secrets {
        Secrets {
            jvb_password: "J".repeat(32),
            focus_password: "F".repeat(32),
            turn_secret: "T".repeat(32),
        }
    }

    fn write_templates(root: &std::path::Path, files: &[(&str, &str)]) -> Paths {
        let paths = Paths::new(root);
        fs::create_dir_all(paths.templates_dir()).unwrap();
        for (n, t) in files {
            fs::write(paths.templates_dir().join(n), t).unwrap();
        }
        paths
    }

    #[test]
    fn renders_meeting_templates_to_their_targets() {
        let d = tempfile::tempdir().unwrap();
        let paths = write_templates(
            d.path(),
            &[
                ("_head.jinja", "# {{ domain }}\n"),
                (
                    "nginx-site.conf.jinja",
                    "{% include '_head.jinja' %}server_name {{ domain }};\nssl {{ tls.cert }};\n",
                ),
                ("nginx-setup.conf.jinja", "setup page {{ acme.webroot }}\n"),
                (
                    "prosody.cfg.lua.jinja",
                    "VirtualHost \"{{ auth_domain }}\"\n-- {{ secrets.turn_secret }}\n",
                ),
            ],
        );
        let ctx = meeting_context(&paths, &answers(), &secrets());
        let written = render_all(&paths, Phase::Meeting, &ctx).unwrap();
        assert_eq!(
            written,
            vec!["nginx/site.conf", "prosody/appliance.cfg.lua"]
        );
        let site = fs::read_to_string(paths.config_dir().join("nginx/site.conf")).unwrap();
        assert_eq!(
            site,
            "# meet.localhost\nserver_name meet.localhost;\nssl /data/config/tls/cert.pem;\n"
        );
        let p = paths.config_dir().join("prosody/appliance.cfg.lua");
        assert_eq!(
            fs::read_to_string(&p).unwrap(),
            format!(
                "VirtualHost \"auth.meet.localhost\"\n-- {}\n",
                "T".repeat(32)
            )
        );
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o640
        );
    }

    #[test]
    fn setup_phase_needs_no_domain() {
        let d = tempfile::tempdir().unwrap();
        let paths = write_templates(
            d.path(),
            &[
                (
                    "nginx-setup.conf.jinja",
                    "root {{ setup_page }}; {{ acme.webroot }}\n",
                ),
                ("nginx-site.conf.jinja", "{{ domain }}\n"),
            ],
        );
        render_all(&paths, Phase::Setup, &setup_context(&paths)).unwrap();
        assert_eq!(
            fs::read_to_string(paths.nginx_site()).unwrap(),
            "root /usr/share/appliance/setup-page; /var/lib/appliance/acme-challenge\n"
        );
    }

    #[test]
    fn undefined_variable_is_an_error() {
        let d = tempfile::tempdir().unwrap();
        let paths = write_templates(
            d.path(),
            &[("nginx-site.conf.jinja", "{{ no_such_thing }}\n")],
        );
        let e = render_all(
            &paths,
            Phase::Meeting,
            &meeting_context(&paths, &answers(), &secrets()),
        )
        .unwrap_err();
        assert!(format!("{e:#}").contains("nginx-site.conf.jinja"), "{e:#}");
        assert!(!paths.nginx_site().exists());
    }

    #[test]
    fn unknown_template_is_an_error() {
        let d = tempfile::tempdir().unwrap();
        let paths = write_templates(d.path(), &[("mystery.conf.jinja", "x\n")]);
        let e = render_all(
            &paths,
            Phase::Meeting,
            &meeting_context(&paths, &answers(), &secrets()),
        )
        .unwrap_err();
        assert!(
            e.to_string().contains(
                "mystery.conf.jinja in /usr/share/appliance/templates has no known target"
            ),
            "{e}"
        );
    }

    #[test]
    fn values_are_printed_as_they_are() {
        // Names minijinja auto-escapes by default (HTML; `.js` too with its `json` feature).
        let d = tempfile::tempdir().unwrap();
        let paths = write_templates(
            d.path(),
            &[
                ("jitsi-config.js.jinja", "{{ domain }}\n"),
                ("page.html.jinja", "{{ domain }}\n"),
            ],
        );
        let mut a = answers();
        a.domain = "a<b>\"c'd&e".into();
        let ctx = meeting_context(&paths, &a, &secrets());
        let templates = Templates::load(&paths).unwrap();
        for name in ["jitsi-config.js.jinja", "page.html.jinja"] {
            assert_eq!(templates.render(name, &ctx).unwrap(), "a<b>\"c'd&e\n");
        }
    }

    #[test]
    fn block_tags_take_their_line() {
        // The project's dialect: a block tag's line leaves nothing behind, indented or not.
        let d = tempfile::tempdir().unwrap();
        let paths = write_templates(
            d.path(),
            &[(
                "turnserver.conf.jinja",
                "a\n{% set x = 1 %}\n  {% if true %}\nrealm={{ domain }}\n  {% endif %}\nb\n",
            )],
        );
        render_all(
            &paths,
            Phase::Meeting,
            &meeting_context(&paths, &answers(), &secrets()),
        )
        .unwrap();
        assert_eq!(
            fs::read_to_string(paths.config_dir().join("coturn/turnserver.conf")).unwrap(),
            "a\nrealm=meet.localhost\nb\n"
        );
    }
}
