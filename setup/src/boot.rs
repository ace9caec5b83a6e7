//! `appliance-admin boot`, run by appliance-setup.service at every boot once /data is mounted.
//!
//! Its stdout goes to the journal and the console (the unit sets journal+console), so messages
//! meant for the person at the machine are simply printed.

use crate::answers::{self, Answers};
use crate::cloud;
use crate::fsutil;
use crate::paths::Paths;
use crate::render::{self, Phase};
use crate::runner::Cmd;
use crate::steps::{self, Ctx};
use anyhow::{Context, Result};
use appliance_spec::esp::SEED_FILE;
use appliance_spec::seed::Seed;
use std::fs;

/// Directories every later step (and nginx) expects.
pub fn create_dirs(paths: &Paths) -> Result<()> {
    fsutil::ensure_dir(&paths.appliance_dir(), 0o700, None)?;
    fsutil::ensure_dir(&paths.config_dir(), 0o755, None)?;
    for sub in ["nginx", "prosody", "coturn", "jitsi", "tls"] {
        fsutil::ensure_dir(&paths.config_dir().join(sub), 0o755, None)?;
    }
    fsutil::ensure_dir(&paths.acme_dir(), 0o700, None)?;
    fsutil::ensure_dir(&paths.at("/data/ssh"), 0o755, None)?;
    fsutil::ensure_dir(&paths.authorized_keys_dir(), 0o755, None)?;
    fsutil::ensure_dir(&paths.acme_webroot(), 0o755, None)?;
    Ok(())
}

pub fn run(ctx: &mut Ctx) -> Result<()> {
    let paths = ctx.paths.clone();
    create_dirs(&paths)?;

    if paths.answers().exists() {
        // A seed dropped on the ESP after setup is not used, but it may hold passwords.
        read_seed(ctx)?;
    }
    if paths.setup_done().exists() {
        // An image update may bring new templates: render them again on every boot.
        let answers = Answers::load(&paths.answers())?;
        steps::render_config(&paths, &answers).context("cannot update the configuration")?;
        if !steps::pending(&paths)?.is_empty() {
            steps::apply(ctx)?;
        }
        return Ok(());
    }
    if paths.answers().exists() {
        ctx.say("setup: resuming the setup that was interrupted");
        return steps::apply(ctx);
    }
    if read_seed(ctx)?.is_some() {
        ctx.say("setup: applying the answers from appliance-setup.toml");
        return steps::apply(ctx);
    }
    // A VPS started without a key from the build: the provider's metadata service may have the
    // user's keys, which let them run the wizard over SSH.
    if !has_admin_keys(&paths) {
        let keys = paths
            .metadata_service()
            .map(cloud::keys_from)
            .unwrap_or_default();
        if !keys.is_empty() {
            steps::install_ssh_keys(&paths, &keys)?;
            ctx.say(&format!(
                "setup: {} SSH key(s) from the hosting provider's metadata installed for the admin account",
                keys.len()
            ));
        }
    }
    if !paths.nginx_site().exists() {
        render::render_all(&paths, Phase::Setup, &render::setup_context(&paths))
            .context("cannot write the setup page configuration")?;
    }
    ctx.say("setup: waiting for the setup questions to be answered, on the console or over SSH with: sudo appliance-admin wizard");
    Ok(())
}

fn has_admin_keys(paths: &Paths) -> bool {
    fs::read_to_string(paths.admin_authorized_keys())
        .map(|t| {
            t.lines()
                .any(|l| !l.trim().is_empty() && !l.starts_with('#'))
        })
        .unwrap_or(false)
}

/// Mount the ESP if there is one, handle the seed, unmount. Returns answers for a complete seed.
fn read_seed(ctx: &mut Ctx) -> Result<Option<Answers>> {
    let paths = ctx.paths.clone();
    if !paths.esp_device().exists() {
        return Ok(None);
    }
    let mnt = paths.esp_mount();
    fsutil::ensure_dir(&mnt, 0o700, None)?;
    let mount = Cmd::new("mount").args([
        "-t",
        "vfat",
        "-o",
        "rw,nosuid,nodev,noexec,umask=0077",
        &paths.esp_device().display().to_string(),
        &mnt.display().to_string(),
    ]);
    if let Err(e) = ctx.runner.check(&mount) {
        ctx.say(&format!(
            "setup: cannot look for appliance-setup.toml on the boot partition: {e:#}"
        ));
        return Ok(None);
    }
    let result = handle_seed(ctx, &mnt.join(SEED_FILE));
    let _ = ctx
        .runner
        .check(&Cmd::new("umount").arg(mnt.display().to_string()));
    result
}

fn handle_seed(ctx: &mut Ctx, seed_path: &std::path::Path) -> Result<Option<Answers>> {
    let paths = ctx.paths.clone();
    if !seed_path.exists() {
        return Ok(None);
    }
    if paths.answers().exists() {
        fs::remove_file(seed_path)
            .with_context(|| format!("cannot delete {}", seed_path.display()))?;
        ctx.say("setup: appliance-setup.toml was not used and is deleted: this machine is already set up (change it with appliance-admin)");
        return Ok(None);
    }
    let checked = Seed::load(seed_path).and_then(|s| s.validate(SEED_FILE, &paths.zoneinfo()));
    let seed = match checked {
        Ok(v) => v,
        Err(e) => {
            let invalid = seed_path.with_file_name(format!("{SEED_FILE}.invalid"));
            let renamed = fs::rename(seed_path, &invalid).is_ok();
            fsutil::sync_all();
            ctx.say("setup: the file appliance-setup.toml on the boot partition cannot be used:");
            for line in format!("{e:#}").lines() {
                ctx.say(&format!("setup:   {line}"));
            }
            if renamed {
                ctx.say("setup: it was renamed to appliance-setup.toml.invalid; answer the setup questions instead (on the console, or over SSH with: sudo appliance-admin wizard).");
            }
            return Ok(None);
        }
    };
    if seed.0.is_complete() {
        let answers = answers::from_seed(seed)?;
        // The seed holds passwords in clear: it goes as soon as its answers are stored.
        answers.save(&paths.answers())?;
        fs::remove_file(seed_path)
            .with_context(|| format!("cannot delete {}", seed_path.display()))?;
        fsutil::sync_all();
        return Ok(Some(answers));
    }
    // Partial: keys now (so the admin can log in to run the wizard), the rest as defaults.
    steps::install_ssh_keys(&paths, &seed.0.ssh_authorized_keys)?;
    answers::save_defaults(&seed.0, &paths.defaults())?;
    fs::remove_file(seed_path).with_context(|| format!("cannot delete {}", seed_path.display()))?;
    fsutil::sync_all();
    let dropped = seed.0.hosts.iter().any(|h| h.password.is_some());
    ctx.say("setup: appliance-setup.toml does not answer every question; its values are the defaults of the setup wizard.");
    if dropped {
        ctx.say("setup: host passwords from that file are not kept; the wizard asks for them.");
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runner::{Output, RecordingRunner};
    use crate::scram::AccountStore;
    use crate::steps::tests::machine;
    use crate::testkeys::ED25519;

    fn with_esp(paths: &Paths, seed: Option<&str>) {
        fs::create_dir_all(paths.esp_device().parent().unwrap()).unwrap();
        fs::write(paths.esp_device(), "").unwrap();
        fs::create_dir_all(paths.esp_mount()).unwrap();
        if let Some(s) = seed {
            fs::write(paths.esp_mount().join(SEED_FILE), s).unwrap();
        }
    }

    fn openssl_runner() -> RecordingRunner {
        RecordingRunner::with_handler(|cmd| {
            if cmd.program == "openssl" {
                let pos = |f: &str| cmd.args.iter().position(|a| a == f).unwrap() + 1;
                fs::write(&cmd.args[pos("-keyout")], "KEY").unwrap();
                fs::write(&cmd.args[pos("-out")], "CERT").unwrap();
            }
            Ok(Output {
                success: true,
                ..Output::default()
            })
        })
    }

    fn boot(paths: &Paths, runner: &mut RecordingRunner) -> (Result<()>, String) {
        let mut out = Vec::new();
        let r = run(&mut Ctx {
            paths,
            runner,
            out: &mut out,
            from_boot: true,
        });
        (r, String::from_utf8(out).unwrap())
    }

    #[test]
    fn no_seed_writes_setup_page() {
        let d = tempfile::tempdir().unwrap();
        let paths = machine(d.path());
        let mut runner = RecordingRunner::new();
        let (r, out) = boot(&paths, &mut runner);
        r.unwrap();
        assert_eq!(fs::read_to_string(paths.nginx_site()).unwrap(), "setup;\n");
        assert!(out.contains("waiting for the setup questions"));
        assert!(runner.commands.is_empty(), "no ESP, nothing mounted");
    }

    #[test]
    fn complete_seed_is_applied_and_deleted() {
        let d = tempfile::tempdir().unwrap();
        let paths = machine(d.path());
        let seed = format!("domain = \"meet.localhost\"\nssh_authorized_keys = [\"{ED25519}\"]\n[[hosts]]\nname = \"alice\"\npassword = \"Tulip-Harbor-42\"\n");
        with_esp(&paths, Some(&seed));
        let mut runner = openssl_runner();
        let (r, out) = boot(&paths, &mut runner);
        r.unwrap();
        assert!(!paths.esp_mount().join(SEED_FILE).exists());
        assert!(out.contains("setup: step 1/10"), "{out}");
        assert!(out.ends_with("setup: complete\n"), "{out}");
        assert!(paths.setup_done().exists());
        let answers = fs::read_to_string(paths.answers()).unwrap();
        assert!(!answers.contains("Tulip-Harbor-42"));
        assert!(AccountStore::open(&paths, "meet.localhost")
            .unwrap()
            .read("alice")
            .unwrap()
            .unwrap()
            .verify("Tulip-Harbor-42"));
        let lines = runner.lines();
        assert!(lines[0].starts_with("mount -t vfat"), "{lines:?}");
        assert!(lines[1].starts_with("umount"), "{lines:?}");

        // Next boot: configuration re-rendered, nothing else run.
        fs::write(
            paths.templates_dir().join("nginx-site.conf.jinja"),
            "new {{ domain }}\n",
        )
        .unwrap();
        let n = runner.commands.len();
        let (r, out) = boot(&paths, &mut runner);
        r.unwrap();
        assert_eq!(
            fs::read_to_string(paths.nginx_site()).unwrap(),
            "new meet.localhost\n"
        );
        // Only the ESP is looked at (for a seed dropped there later).
        let lines = runner.lines();
        assert_eq!(lines.len(), n + 2, "{lines:?}");
        assert!(lines[n].starts_with("mount -t vfat"), "{lines:?}");
        assert!(out.is_empty(), "{out}");

        // A seed put on the ESP after setup is deleted unused (it may hold passwords).
        with_esp(&paths, Some(&seed.replace("alice", "mallory")));
        let (r, out) = boot(&paths, &mut runner);
        r.unwrap();
        assert!(!paths.esp_mount().join(SEED_FILE).exists());
        assert!(out.contains("already set up"), "{out}");
        assert!(AccountStore::open(&paths, "meet.localhost")
            .unwrap()
            .read("mallory")
            .unwrap()
            .is_none());
    }

    #[test]
    fn partial_seed_becomes_defaults() {
        let d = tempfile::tempdir().unwrap();
        let paths = machine(d.path());
        let seed = format!("domain = \"meet.localhost\"\nssh_authorized_keys = [\"{ED25519}\"]\n[[hosts]]\nname = \"alice\"\npassword = \"Tulip-Harbor-42\"\n[[hosts]]\nname = \"bob\"\n");
        with_esp(&paths, Some(&seed));
        let mut runner = RecordingRunner::new();
        let (r, out) = boot(&paths, &mut runner);
        r.unwrap();
        assert!(!paths.esp_mount().join(SEED_FILE).exists());
        assert_eq!(
            fs::read_to_string(paths.admin_authorized_keys()).unwrap(),
            format!("{ED25519}\n")
        );
        let defaults = fs::read_to_string(paths.defaults()).unwrap();
        assert!(
            defaults.contains("meet.localhost") && !defaults.contains("Tulip"),
            "{defaults}"
        );
        assert!(out.contains("passwords from that file are not kept"));
        assert!(!paths.answers().exists());
        assert_eq!(fs::read_to_string(paths.nginx_site()).unwrap(), "setup;\n");
    }

    #[test]
    fn invalid_seed_is_renamed_and_explained() {
        let d = tempfile::tempdir().unwrap();
        let paths = machine(d.path());
        with_esp(&paths, Some("domain = \"192.168.1.1\"\n"));
        let mut runner = RecordingRunner::new();
        let (r, out) = boot(&paths, &mut runner);
        r.unwrap();
        assert!(paths
            .esp_mount()
            .join("appliance-setup.toml.invalid")
            .exists());
        assert!(
            out.contains(
                "setup:   appliance-setup.toml: `domain`: \"192.168.1.1\" is an IP address"
            ),
            "{out}"
        );
        assert!(out.contains("renamed to appliance-setup.toml.invalid"));
        assert!(!paths.answers().exists());
    }

    #[test]
    fn interrupted_setup_resumes() {
        let d = tempfile::tempdir().unwrap();
        let paths = machine(d.path());
        crate::steps::tests::answers()
            .save(&paths.answers())
            .unwrap();
        let mut st = crate::state::State::default();
        for s in [
            "secrets",
            "ssh-keys",
            "timezone",
            "tls-self-signed",
            "config",
            "internal-accounts",
            "host-accounts",
        ] {
            st.mark_done(s);
        }
        st.save(&paths.state()).unwrap();
        crate::secrets::Secrets::load_or_create(&paths.secrets()).unwrap();
        let mut runner = RecordingRunner::new();
        let (r, out) = boot(&paths, &mut runner);
        r.unwrap();
        assert!(out.starts_with("setup: resuming"), "{out}");
        assert!(out.contains("setup: step 8/10"));
        assert!(!out.contains("step 7/10"));
        assert!(paths.setup_done().exists());
    }
}
