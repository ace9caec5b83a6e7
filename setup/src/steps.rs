//! The apply state machine: a fixed list of named steps run in order, each idempotent, the
//! state saved after each one. A power cut anywhere re-runs from the first step not done.

use crate::acme;
use crate::answers::Answers;
use crate::fsutil;
use crate::paths::{self, Paths};
use crate::render::{self, Phase};
use crate::runner::{Cmd, Runner};
use crate::scram::{self, AccountStore};
use crate::secrets::Secrets;
use crate::sshkeys;
use crate::state::State;
use crate::tls;
use anyhow::{bail, Context, Result};
use std::fs;
use std::io::Write;
use std::path::Path;

/// Step names are stable (they are stored in state.toml); titles are what people read.
pub const STEPS: &[(&str, &str)] = &[
    ("secrets", "service secrets"),
    ("ssh-keys", "SSH keys for the admin account"),
    ("timezone", "time zone"),
    ("tls-self-signed", "self-signed certificate"),
    ("config", "configuration files"),
    ("internal-accounts", "internal service accounts"),
    ("host-accounts", "meeting host accounts"),
    ("services", "start the meeting services"),
    ("letsencrypt", "Let's Encrypt certificate"),
    ("done", "finish"),
];

/// Everything a step may touch.
pub struct Ctx<'a> {
    pub paths: &'a Paths,
    pub runner: &'a mut dyn Runner,
    pub out: &'a mut dyn Write,
    /// Run from appliance-setup.service during boot: systemctl must not wait for units that are
    /// ordered after us (that would dead-lock), and nginx is not serving yet.
    pub from_boot: bool,
}

impl Ctx<'_> {
    pub fn say(&mut self, msg: &str) {
        // Progress output is best effort: a closed console must not abort the setup.
        let _ = writeln!(self.out, "{msg}");
        let _ = self.out.flush();
    }

    /// `systemctl ARGS`, without waiting when we run from boot.
    pub fn systemctl(&mut self, args: &[&str]) -> Result<()> {
        let mut cmd = Cmd::new("systemctl");
        if self.from_boot {
            cmd = cmd.arg("--no-block");
        }
        self.runner.check(&cmd.args(args.iter().copied()))?;
        Ok(())
    }
}

/// Steps not done yet, in order.
pub fn pending(paths: &Paths) -> Result<Vec<&'static str>> {
    let state = State::load(&paths.state())?;
    Ok(STEPS
        .iter()
        .map(|s| s.0)
        .filter(|s| !state.is_done(s))
        .collect())
}

/// Run every pending step. Prints `setup: step i/N: title` before each and `setup: complete`
/// at the end (tests wait for these lines on the serial console).
pub fn apply(ctx: &mut Ctx) -> Result<()> {
    let answers_path = ctx.paths.answers();
    if !answers_path.exists() {
        bail!("there is nothing to apply yet: the setup questions have not been answered. Run `appliance-admin wizard` first.");
    }
    let answers = Answers::load(&answers_path)?;
    let state_path = ctx.paths.state();
    let mut state = State::load(&state_path)?;
    fsutil::ensure_dir(&ctx.paths.appliance_dir(), 0o700, None)?;
    let total = STEPS.len();
    for (i, (name, title)) in STEPS.iter().enumerate() {
        if state.is_done(name) {
            continue;
        }
        ctx.say(&format!("setup: step {}/{total}: {title}", i + 1));
        run_step(ctx, name, &answers)
            .with_context(|| format!("setup step \"{name}\" ({title}) failed"))?;
        state.mark_done(name);
        state.save(&state_path)?;
    }
    ctx.say("setup: complete");
    Ok(())
}

fn run_step(ctx: &mut Ctx, name: &str, answers: &Answers) -> Result<()> {
    match name {
        "secrets" => Secrets::load_or_create(&ctx.paths.secrets()).map(|_| ()),
        "ssh-keys" => {
            let added = sshkeys::install(ctx.paths, &answers.ssh_authorized_keys)?;
            sshkeys::announce(ctx, "the setup answers", &added);
            Ok(())
        }
        "timezone" => set_timezone(ctx.paths, &answers.timezone),
        "tls-self-signed" => self_signed(ctx, &answers.domain),
        "config" => render_config(ctx.paths, answers).map(|_| ()),
        "internal-accounts" => internal_accounts(ctx, answers),
        "host-accounts" => host_accounts(ctx.paths, answers),
        "services" => {
            ctx.systemctl(&["start", "appliance-meeting.target"])?;
            ctx.systemctl(&["reload-or-restart", "nginx.service"])
        }
        "letsencrypt" => letsencrypt(ctx, answers),
        "done" => {
            fsutil::atomic_write(&ctx.paths.setup_done(), b"", 0o644, None)?;
            // Wizard defaults are only useful until setup is done.
            fsutil::remove_if_exists(&ctx.paths.defaults())?;
            // appliance-meeting.target has ConditionPathExists=setup-done, so the start in the
            // "services" step may have been skipped; now the condition holds. Idempotent.
            ctx.systemctl(&["start", "appliance-meeting.target"])
        }
        other => bail!("unknown setup step \"{other}\""),
    }
}

/// /data/config/localtime -> /usr/share/zoneinfo/<tz> (/etc/localtime links there).
pub fn set_timezone(paths: &Paths, tz: &str) -> Result<()> {
    appliance_spec::validate::timezone(tz, &paths.zoneinfo()).map_err(|m| anyhow::anyhow!(m))?;
    fsutil::ensure_dir(&paths.config_dir(), 0o755, None)?;
    let target = Path::new(paths::MACHINE_ZONEINFO).join(tz);
    if fs::read_link(paths.localtime()).ok().as_deref() == Some(target.as_path()) {
        return Ok(());
    }
    fsutil::atomic_symlink(&target, &paths.localtime())
}

/// A self-signed certificate so HTTPS works before (or without) Let's Encrypt.
fn self_signed(ctx: &mut Ctx, domain: &str) -> Result<()> {
    if tls::has_pair(ctx.paths) {
        return Ok(());
    }
    tls::make_self_signed(ctx, domain)
}

/// Render all meeting templates and write power-off.toml.
pub fn render_config(paths: &Paths, answers: &Answers) -> Result<Vec<String>> {
    let secrets = Secrets::load(&paths.secrets())?;
    let ctx = render::meeting_context(paths, answers, &secrets);
    let written = render::render_all(paths, Phase::Meeting, &ctx)?;
    let mut power = format!("idle_minutes = {}\n", answers.power_off.idle_minutes);
    if let Some(t) = &answers.power_off.daily_at {
        power.push_str(&format!("daily_at = \"{t}\"\n"));
    }
    fsutil::atomic_write(&paths.power_off(), power.as_bytes(), 0o644, None)?;
    Ok(written)
}

/// focus@auth.<domain> and jvb@auth.<domain>, used by jicofo and the videobridge.
fn internal_accounts(ctx: &mut Ctx, answers: &Answers) -> Result<()> {
    let paths = ctx.paths;
    let secrets = Secrets::load(&paths.secrets())?;
    let store = AccountStore::open(paths, &format!("auth.{}", answers.domain))?;
    for (user, pw) in [
        ("focus", &secrets.focus_password),
        ("jvb", &secrets.jvb_password),
    ] {
        // Keep a matching account as it is; a new salt would only churn the file.
        if store.read(user)?.is_some_and(|c| c.verify(pw)) {
            continue;
        }
        store.write(user, &scram::new_credentials(pw)?)?;
    }
    if paths.jitsi_index().exists() {
        // Jitsi's focus component must be in the focus user's roster, as Jitsi's own
        // jitsi-meet-prosody install script arranges (its mod_roster_command; idempotent).
        let d = &answers.domain;
        ctx.runner.check(&Cmd::new("prosodyctl").args([
            "mod_roster_command".to_string(),
            "subscribe".to_string(),
            format!("focus.{d}"),
            format!("focus@auth.{d}"),
        ]))?;
    }
    Ok(())
}

fn host_accounts(paths: &Paths, answers: &Answers) -> Result<()> {
    let store = AccountStore::open(paths, &answers.domain)?;
    for h in &answers.hosts {
        store.write(&h.name, &h.scram)?;
    }
    Ok(())
}

/// Not fatal: without a certificate from the CA the self-signed one stays and the daily timer
/// tries again, so setup still completes.
pub fn letsencrypt(ctx: &mut Ctx, answers: &Answers) -> Result<()> {
    if answers.letsencrypt.is_none() {
        ctx.say("setup: no e-mail address for Let's Encrypt was given; keeping the self-signed certificate.");
        return Ok(());
    }
    if ctx.from_boot {
        // nginx only starts after this service; let appliance-acme.service do it once it runs.
        ctx.say("setup: the Let's Encrypt certificate will be requested as soon as the web server runs (appliance-acme.service).");
        return ctx.systemctl(&["start", "appliance-acme.service"]);
    }
    match acme::obtain(ctx, answers, false) {
        Ok(_) => Ok(()),
        Err(e) => {
            ctx.say(&format!("setup: no Let's Encrypt certificate yet: {e:#}"));
            ctx.say("setup: the self-signed certificate stays in place; appliance-acme.timer tries again every day.");
            Ok(())
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::answers::{HostAnswer, PowerOffAnswers};
    use crate::runner::{Output, RecordingRunner};
    use crate::testkeys::ED25519;
    use crate::tls::tests::fake_openssl;
    use std::cell::Cell;
    use std::rc::Rc;

    pub fn machine(root: &Path) -> Paths {
        let paths = Paths::new(root);
        fs::create_dir_all(paths.appliance_dir()).unwrap();
        fs::create_dir_all(paths.zoneinfo().join("Europe")).unwrap();
        fs::write(paths.zoneinfo().join("UTC"), "TZif").unwrap();
        fs::write(paths.zoneinfo().join("Europe/Berlin"), "TZif").unwrap();
        fs::create_dir_all(paths.templates_dir()).unwrap();
        fs::write(
            paths.templates_dir().join("nginx-site.conf.jinja"),
            "server_name {{ domain }};\n",
        )
        .unwrap();
        fs::write(
            paths.templates_dir().join("nginx-setup.conf.jinja"),
            "setup;\n",
        )
        .unwrap();
        fs::write(
            paths.templates_dir().join("prosody.cfg.lua.jinja"),
            "VirtualHost \"{{ domain }}\"\nComponent \"{{ internal_muc_domain }}\"\n",
        )
        .unwrap();
        paths
    }

    pub fn answers() -> Answers {
        Answers {
            domain: "meet.localhost".into(),
            timezone: "Europe/Berlin".into(),
            ssh_authorized_keys: vec![ED25519.into()],
            hosts: vec![HostAnswer {
                name: "alice".into(),
                scram: scram::credentials_with_salt(
                    "Tulip-Harbor-42",
                    "7d3c0a44-1f6b-4e5a-9c1d-2b3a4c5d6e7f",
                    10000,
                ),
            }],
            letsencrypt: None,
            power_off: PowerOffAnswers {
                idle_minutes: 30,
                daily_at: Some("23:30".into()),
            },
        }
    }

    #[test]
    fn full_apply_and_resume_after_failure() {
        let d = tempfile::tempdir().unwrap();
        let paths = machine(d.path());
        answers().save(&paths.answers()).unwrap();
        // First run: systemctl fails once (as if the machine lost power mid-way).
        let failed = Rc::new(Cell::new(false));
        let f = failed.clone();
        let mut runner = RecordingRunner::with_handler(move |cmd| {
            if cmd.program == "systemctl" && !f.get() {
                f.set(true);
                return Ok(Output {
                    success: false,
                    stderr: "Job failed".into(),
                    ..Output::default()
                });
            }
            fake_openssl(cmd)
        });
        let mut out = Vec::new();
        let err = apply(&mut Ctx {
            paths: &paths,
            runner: &mut runner,
            out: &mut out,
            from_boot: false,
        })
        .unwrap_err();
        assert!(
            format!("{err:#}").contains("setup step \"services\""),
            "{err:#}"
        );
        assert!(format!("{err:#}").contains("Job failed"), "{err:#}");
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.contains("setup: step 1/10: service secrets\n"),
            "{text}"
        );
        assert!(
            text.contains("setup: step 4/10: self-signed certificate\n"),
            "{text}"
        );
        assert!(!text.contains("setup: complete"));
        assert_eq!(
            pending(&paths).unwrap(),
            vec!["services", "letsencrypt", "done"]
        );
        let secrets_before = fs::read_to_string(paths.secrets()).unwrap();

        // Second run resumes at "services" and does not regenerate anything.
        let mut out = Vec::new();
        apply(&mut Ctx {
            paths: &paths,
            runner: &mut runner,
            out: &mut out,
            from_boot: false,
        })
        .unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.starts_with("setup: step 8/10: start the meeting services\n"),
            "{text}"
        );
        assert!(text.ends_with("setup: complete\n"), "{text}");
        assert_eq!(fs::read_to_string(paths.secrets()).unwrap(), secrets_before);
        assert_eq!(
            runner
                .lines()
                .iter()
                .filter(|l| l.starts_with("openssl"))
                .count(),
            1,
            "the certificate is made once"
        );
        assert_eq!(
            runner.lines()[1..].to_vec(),
            vec![
                "systemctl start appliance-meeting.target",
                "systemctl start appliance-meeting.target",
                "systemctl reload-or-restart nginx.service",
                "systemctl start appliance-meeting.target"
            ]
        );
        assert!(pending(&paths).unwrap().is_empty());
        assert!(paths.setup_done().exists());

        // What the steps produced.
        assert_eq!(
            fs::read_to_string(paths.admin_authorized_keys()).unwrap(),
            format!("{ED25519}\n")
        );
        assert_eq!(
            fs::read_link(paths.localtime()).unwrap(),
            Path::new("/usr/share/zoneinfo/Europe/Berlin")
        );
        assert_eq!(fs::read_to_string(paths.tls_cert()).unwrap(), "CERT new");
        assert_eq!(
            fs::read_to_string(paths.nginx_site()).unwrap(),
            "server_name meet.localhost;\n"
        );
        assert_eq!(
            fs::read_to_string(paths.power_off()).unwrap(),
            "idle_minutes = 30\ndaily_at = \"23:30\"\n"
        );
        let host = AccountStore::open(&paths, "meet.localhost").unwrap();
        assert!(host
            .read("alice")
            .unwrap()
            .unwrap()
            .verify("Tulip-Harbor-42"));
        let auth = AccountStore::open(&paths, "auth.meet.localhost").unwrap();
        let secrets = Secrets::load(&paths.secrets()).unwrap();
        assert!(auth
            .read("focus")
            .unwrap()
            .unwrap()
            .verify(&secrets.focus_password));
        assert!(auth
            .read("jvb")
            .unwrap()
            .unwrap()
            .verify(&secrets.jvb_password));

        // Running again does nothing but say it is complete.
        let n = runner.commands.len();
        let mut out = Vec::new();
        apply(&mut Ctx {
            paths: &paths,
            runner: &mut runner,
            out: &mut out,
            from_boot: false,
        })
        .unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "setup: complete\n");
        assert_eq!(runner.commands.len(), n);
    }

    #[test]
    fn boot_mode_does_not_block_on_systemd() {
        let d = tempfile::tempdir().unwrap();
        let paths = machine(d.path());
        let mut a = answers();
        a.letsencrypt = Some(crate::answers::AcmeAnswers {
            email: "admin@example.org".into(),
            directory: "https://acme.test/dir".into(),
            ca_certificate: None,
        });
        a.save(&paths.answers()).unwrap();
        let mut runner = RecordingRunner::with_handler(fake_openssl);
        let mut out = Vec::new();
        apply(&mut Ctx {
            paths: &paths,
            runner: &mut runner,
            out: &mut out,
            from_boot: true,
        })
        .unwrap();
        let systemctl: Vec<String> = runner
            .lines()
            .into_iter()
            .filter(|l| l.starts_with("systemctl"))
            .collect();
        assert_eq!(
            systemctl,
            vec![
                "systemctl --no-block start appliance-meeting.target",
                "systemctl --no-block reload-or-restart nginx.service",
                "systemctl --no-block start appliance-acme.service",
                "systemctl --no-block start appliance-meeting.target"
            ]
        );
    }

    #[test]
    fn with_jitsi_the_focus_component_is_subscribed() {
        let d = tempfile::tempdir().unwrap();
        let paths = machine(d.path());
        fs::create_dir_all(paths.jitsi_index().parent().unwrap()).unwrap();
        fs::write(paths.jitsi_index(), "<html></html>").unwrap();
        answers().save(&paths.answers()).unwrap();
        let mut runner = RecordingRunner::with_handler(fake_openssl);
        let mut out = Vec::new();
        apply(&mut Ctx {
            paths: &paths,
            runner: &mut runner,
            out: &mut out,
            from_boot: false,
        })
        .unwrap();
        let domain = answers().domain;
        assert!(runner.lines().contains(&format!(
            "prosodyctl mod_roster_command subscribe focus.{domain} focus@auth.{domain}"
        )));
    }

    #[test]
    fn apply_without_answers_explains() {
        let d = tempfile::tempdir().unwrap();
        let paths = machine(d.path());
        let mut runner = RecordingRunner::new();
        let mut out = Vec::new();
        let e = apply(&mut Ctx {
            paths: &paths,
            runner: &mut runner,
            out: &mut out,
            from_boot: false,
        })
        .unwrap_err();
        assert!(e.to_string().contains("appliance-admin wizard"));
    }

    #[test]
    fn interrupted_certificate_is_regenerated() {
        let d = tempfile::tempdir().unwrap();
        let paths = machine(d.path());
        // A key without a certificate (power cut between the two renames).
        fs::create_dir_all(paths.tls_dir()).unwrap();
        fs::write(paths.tls_key(), "OLDKEY").unwrap();
        let mut runner = RecordingRunner::with_handler(fake_openssl);
        let mut out = Vec::new();
        let mut ctx = Ctx {
            paths: &paths,
            runner: &mut runner,
            out: &mut out,
            from_boot: false,
        };
        self_signed(&mut ctx, "meet.localhost").unwrap();
        assert_eq!(fs::read_to_string(paths.tls_key()).unwrap(), "KEY new");
        assert!(runner.lines()[0]
            .contains("-subj /CN=meet.localhost -addext subjectAltName=DNS:meet.localhost"));
    }
}
