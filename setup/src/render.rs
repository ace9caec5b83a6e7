//! Renders the runtime templates (/usr/share/appliance/templates/*.jinja) into /data/config.
//!
//! The template file name decides the target; the mapping lives in [`TEMPLATES`] only, so a new
//! template needs one new line here. Files starting with `_` are partials (for `include`), not
//! rendered on their own. Unknown templates are an error rather than silently ignored, so a
//! template added to the image without a mapping is noticed at the first boot test.

use crate::answers::Answers;
use crate::fsutil::{self, Owner};
use crate::paths::{self, Paths};
use crate::secrets::Secrets;
use anyhow::{bail, Context, Result};
use appliance_spec::seed::LETSENCRYPT_DIRECTORY;
use minijinja::{Environment, UndefinedBehavior};
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

/// Render every template of `phase` found in the templates directory; returns the targets
/// written (relative to /data/config).
pub fn render_all<C: Serialize>(paths: &Paths, phase: Phase, ctx: &C) -> Result<Vec<String>> {
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

    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    // Config files must end with the newline their template has.
    // Otherwise Jinja's defaults (no trim_blocks/lstrip_blocks): templates use `{%-` themselves.
    env.set_syntax(
        minijinja::syntax::SyntaxConfig::builder()
            .keep_trailing_newline(true)
            .build()
            .map_err(|e| anyhow::anyhow!("template syntax settings: {e}"))?,
    );
    for name in &names {
        let src = fs::read_to_string(dir.join(name))
            .with_context(|| format!("cannot read template {name}"))?;
        env.add_template_owned(name.clone(), src)
            .map_err(|e| anyhow::anyhow!("template {name} has a syntax error: {e:#}"))?;
    }

    let mut written = Vec::new();
    for name in &names {
        if name.starts_with('_') {
            continue;
        }
        let Some(t) = lookup(name) else {
            bail!("the template {name} in {} has no known target; add it to TEMPLATES in setup/src/render.rs", paths.display(&dir));
        };
        if t.phase != phase {
            continue;
        }
        let tmpl = env
            .get_template(name)
            .map_err(|e| anyhow::anyhow!("template {name}: {e:#}"))?;
        let text = tmpl
            .render(minijinja::value::Serde(ctx))
            .map_err(|e| anyhow::anyhow!("cannot render template {name}: {e:#}"))?;
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
    fn real_templates_render() {
        // The templates shipped in the image must render with our context (strict undefined).
        let repo_templates = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../overlays/firstboot/files/usr/share/appliance/templates");
        if !repo_templates.is_dir() {
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let paths = Paths::new(d.path());
        fs::create_dir_all(paths.templates_dir().parent().unwrap()).unwrap();
        std::os::unix::fs::symlink(&repo_templates, paths.templates_dir()).unwrap();
        let mut a = answers();
        for jitsi in [false, true] {
            if jitsi {
                fs::create_dir_all(paths.jitsi_index().parent().unwrap()).unwrap();
                fs::write(paths.jitsi_index(), "").unwrap();
                a.letsencrypt = Some(crate::answers::AcmeAnswers {
                    email: "a@example.org".into(),
                    directory: LETSENCRYPT_DIRECTORY.into(),
                    ca_certificate: None,
                });
            }
            render_all(
                &paths,
                Phase::Meeting,
                &meeting_context(&paths, &a, &secrets()),
            )
            .unwrap();
            render_all(&paths, Phase::Setup, &setup_context(&paths)).unwrap();
        }
    }
}
