//! `appliance-admin boot`, run by appliance-setup.service at every boot once /data is mounted.
//!
//! Its stdout goes to the journal and the console (the unit sets journal+console), so messages
//! meant for the person at the machine are simply printed.

use crate::answers::{self, Answers};
use crate::cloud;
use crate::esp_read;
use crate::fsutil;
use crate::paths::Paths;
use crate::render::{self, Phase};
use crate::runner::Cmd;
use crate::schema;
use crate::seedfile;
use crate::services;
use crate::sshkeys;
use crate::steps::{self, Ctx};
use crate::tls;
use anyhow::{Context, Result};
use appliance_spec::esp::SEED_FILE;
use appliance_spec::validate::escaped;
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
    // Nothing on /data is read or written in a layout this image does not know.
    schema::check_and_migrate(&paths, ctx.out)?;
    // nginx starts after this program: it must find a key and certificate that belong together.
    // A failure here must not stop the rest of the boot (setup may still need to finish).
    if let Err(e) = tls::check_at_boot(ctx) {
        ctx.say(&format!(
            "setup: the TLS key and certificate could not be repaired: {e:#}"
        ));
    }

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
    // user's keys, which let them run the wizard over SSH. Only a known cloud is asked.
    if sshkeys::installed(&paths)?.is_empty() {
        let id = cloud::identify(&paths);
        if id.cloud.is_some() {
            services::wait_for_network(ctx);
        }
        let keys = cloud::provider_keys(&id, paths.metadata_service());
        match id.cloud {
            None => ctx.say(&format!(
                "setup: {}; no SSH key is taken from a metadata service",
                id.why
            )),
            Some(c) => {
                ctx.say(&format!("setup: {}", id.why));
                let added = sshkeys::install(&paths, &keys)?;
                if added.is_empty() {
                    ctx.say(&format!(
                        "setup: {}'s metadata service gave no SSH key",
                        c.name()
                    ));
                }
                sshkeys::announce(ctx, &format!("{}'s metadata service", c.name()), &added);
            }
        }
    }
    if !paths.nginx_site().exists() {
        render::render_all(&paths, Phase::Setup, &render::setup_context(&paths))
            .context("cannot write the setup page configuration")?;
    }
    ctx.say("setup: waiting for the setup questions to be answered, on the console or over SSH with: sudo appliance-admin wizard");
    Ok(())
}

/// Mount the ESP on /run/appliance/esp: read-only, or read-write when `rw`.
fn mount_esp(ctx: &mut Ctx, rw: bool) -> Result<()> {
    let device = ctx.paths.esp_device();
    mount_esp_device(ctx, &device, rw)
}

/// Mount the FAT file system on `device` (an ESP) on /run/appliance/esp.
pub(crate) fn mount_esp_device(ctx: &mut Ctx, device: &std::path::Path, rw: bool) -> Result<()> {
    let paths = ctx.paths.clone();
    let mnt = paths.esp_mount();
    fsutil::ensure_dir(&mnt, 0o700, None)?;
    let opts = format!(
        "{},nosuid,nodev,noexec,umask=0077",
        if rw { "rw" } else { "ro" }
    );
    ctx.runner.check(&Cmd::new("mount").args([
        "-t",
        "vfat",
        "-o",
        &opts,
        &device.display().to_string(),
        &mnt.display().to_string(),
    ]))?;
    Ok(())
}

pub(crate) fn umount_esp(ctx: &mut Ctx) {
    let mnt = ctx.paths.esp_mount();
    let _ = ctx
        .runner
        .check(&Cmd::new("umount").arg(mnt.display().to_string()));
}

/// What becomes of the seed once it was read.
struct Outcome {
    answers: Option<Answers>,
    /// For a seed that cannot be used: the text of appliance-setup.toml.invalid.
    invalid_copy: Option<String>,
}

/// Look for the seed on the ESP, use it, then remove it (the ESP mounted read-write only for
/// that). Returns answers for a complete seed.
fn read_seed(ctx: &mut Ctx) -> Result<Option<Answers>> {
    let paths = ctx.paths.clone();
    if !paths.esp_device().exists() {
        return Ok(None);
    }
    // Read without mounting (there is no seed at almost every boot); should fatfs not read this
    // file system, the kernel's FAT driver, mounted read-only, does.
    let read = match esp_read::root_file(&paths.esp_device(), SEED_FILE) {
        Ok(found) => Ok(found),
        Err(_) => read_seed_mounted(ctx),
    };
    let bytes = match read {
        Ok(Some(b)) => b,
        Ok(None) => return Ok(None),
        Err(e) => {
            ctx.say(&format!(
                "setup: cannot look for {SEED_FILE} on the boot partition: {e:#}"
            ));
            return Ok(None);
        }
    };
    let outcome = use_seed(ctx, &bytes)?;
    remove_seed(ctx, outcome.invalid_copy.as_deref());
    Ok(outcome.answers)
}

/// The seed's bytes, read with the ESP mounted read-only; `None` when there is no seed.
fn read_seed_mounted(ctx: &mut Ctx) -> Result<Option<Vec<u8>>> {
    mount_esp(ctx, false)?;
    let read = fs::read(ctx.paths.esp_mount().join(SEED_FILE));
    umount_esp(ctx);
    match read {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).context(format!("cannot read {SEED_FILE}")),
    }
}

/// Store what the seed says (answers, or keys and wizard defaults), or explain why it cannot
/// be used. Nothing here quotes the file's text: it may hold passwords.
fn use_seed(ctx: &mut Ctx, bytes: &[u8]) -> Result<Outcome> {
    let paths = ctx.paths.clone();
    if paths.answers().exists() {
        ctx.say("setup: appliance-setup.toml was not used and is deleted: this machine is already set up (change it with appliance-admin)");
        return Ok(Outcome {
            answers: None,
            invalid_copy: None,
        });
    }
    let text = String::from_utf8_lossy(bytes);
    let checked = match std::str::from_utf8(bytes) {
        Err(_) => Err(vec![format!(
            "{SEED_FILE}: the file is not UTF-8 text; save it as UTF-8"
        )]),
        Ok(t) => seedfile::parse(t, SEED_FILE)
            .map_err(|m| vec![m])
            .and_then(|s| {
                s.validate(SEED_FILE, &paths.zoneinfo())
                    .map_err(|e| format!("{e:#}").lines().map(str::to_string).collect())
            }),
    };
    let seed = match checked {
        Ok(v) => v,
        Err(problems) => {
            ctx.say("setup: the file appliance-setup.toml on the boot partition cannot be used:");
            for p in &problems {
                ctx.say(&format!("setup:   {}", escaped(p)));
            }
            ctx.say("setup: it is replaced by appliance-setup.toml.invalid, a copy without its passwords; answer the setup questions instead (on the console, or over SSH with: sudo appliance-admin wizard).");
            return Ok(Outcome {
                answers: None,
                invalid_copy: Some(seedfile::redacted_copy(&text, &problems)),
            });
        }
    };
    if seed.0.is_complete() {
        let answers = answers::from_seed(seed)?;
        // The seed holds passwords in clear: it goes as soon as its answers are stored.
        answers.save(&paths.answers())?;
        return Ok(Outcome {
            answers: Some(answers),
            invalid_copy: None,
        });
    }
    // Partial: keys now (so the admin can log in to run the wizard), the rest as defaults.
    let added = sshkeys::install(&paths, &seed.0.ssh_authorized_keys)?;
    sshkeys::announce(ctx, SEED_FILE, &added);
    answers::save_defaults(&seed.0, &paths.defaults())?;
    let dropped = seed.0.hosts.iter().any(|h| h.password.is_some());
    ctx.say("setup: appliance-setup.toml does not answer every question; its values are the defaults of the setup wizard.");
    if dropped {
        ctx.say("setup: host passwords from that file are not kept; the wizard asks for them.");
    }
    Ok(Outcome {
        answers: None,
        invalid_copy: None,
    })
}

/// Mount the ESP read-write, leave the redacted copy if there is one, and erase the seed. A
/// failure is said on the console; the next boot tries again (the seed is then "already used").
fn remove_seed(ctx: &mut Ctx, invalid_copy: Option<&str>) {
    let paths = ctx.paths.clone();
    if let Err(e) = mount_esp(ctx, true) {
        ctx.say(&format!("setup: cannot remove {SEED_FILE} from the boot partition ({e:#}); it may hold passwords in clear: delete it"));
        return;
    }
    let seed_path = paths.esp_mount().join(SEED_FILE);
    let result = (|| -> Result<()> {
        if let Some(copy) = invalid_copy {
            let invalid = seed_path.with_file_name(format!("{SEED_FILE}.invalid"));
            fsutil::atomic_write_on_fat(&invalid, copy.as_bytes())?;
        }
        fsutil::erase_file(&seed_path)
    })();
    umount_esp(ctx);
    if let Err(e) = result {
        ctx.say(&format!("setup: cannot remove {SEED_FILE} from the boot partition ({e:#}); it may hold passwords in clear: delete it"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runner::RecordingRunner;
    use crate::scram::AccountStore;
    use crate::steps::tests::machine;
    use crate::testkeys::ED25519;
    use crate::tls::tests::fake_openssl;
    use std::path::PathBuf;

    const PASSWORD: &str = "Tulip-Harbor-42";

    fn with_esp(paths: &Paths, seed: Option<&str>) {
        fs::create_dir_all(paths.esp_device().parent().unwrap()).unwrap();
        fs::write(paths.esp_device(), "").unwrap();
        fs::create_dir_all(paths.esp_mount()).unwrap();
        if let Some(s) = seed {
            fs::write(paths.esp_mount().join(SEED_FILE), s).unwrap();
        }
    }

    /// The ESP as a FAT file system, which boot reads without mounting. The seed is also put
    /// where a read-write mount would show it (the test's mount does nothing).
    fn with_fat_esp(paths: &Paths, seed: Option<&str>) {
        with_esp(paths, seed);
        let files: Vec<(&str, &[u8])> = seed.iter().map(|s| (SEED_FILE, s.as_bytes())).collect();
        crate::esp_read::tests::fat_image(&paths.esp_device(), &files);
    }

    #[test]
    fn a_fat_esp_is_read_without_mounting_it_and_mounted_only_to_erase_a_seed() {
        let d = tempfile::tempdir().unwrap();
        let paths = machine(d.path());
        with_fat_esp(&paths, None);
        let mut runner = RecordingRunner::new();
        let (r, out) = boot(&paths, &mut runner);
        r.unwrap();
        assert!(runner.commands.is_empty(), "{:?}", runner.lines());
        assert!(out.contains("waiting for the setup questions"), "{out}");

        let d = tempfile::tempdir().unwrap();
        let paths = machine(d.path());
        with_fat_esp(&paths, Some(&complete_seed("alice")));
        let mut runner = RecordingRunner::with_handler(fake_openssl);
        let (r, out) = boot(&paths, &mut runner);
        r.unwrap();
        assert!(out.ends_with("setup: complete\n"), "{out}");
        let lines = runner.lines();
        assert!(lines[0].starts_with("mount -t vfat -o rw,"), "{lines:?}");
        assert!(lines[1].starts_with("umount"), "{lines:?}");
        assert!(esp_files(&paths).is_empty(), "{:?}", esp_files(&paths));
    }

    /// A second name for the seed's inode: after boot it shows what is left in its blocks.
    fn witness(paths: &Paths) -> PathBuf {
        let w = paths.at("/witness");
        fs::hard_link(paths.esp_mount().join(SEED_FILE), &w).unwrap();
        w
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

    /// Every file on the ESP, by name and content.
    fn esp_files(paths: &Paths) -> Vec<(String, String)> {
        fs::read_dir(paths.esp_mount())
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    e.file_name().to_string_lossy().into_owned(),
                    fs::read_to_string(e.path()).unwrap(),
                )
            })
            .collect()
    }

    fn complete_seed(user: &str) -> String {
        format!("domain = \"meet.localhost\"\nssh_authorized_keys = [\"{ED25519}\"]\n[[hosts]]\nname = \"{user}\"\npassword = \"{PASSWORD}\"\n")
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
    fn a_machine_that_names_no_cloud_takes_no_metadata_key() {
        let d = tempfile::tempdir().unwrap();
        let paths = machine(d.path());
        let dmi = paths.at("/sys/class/dmi/id");
        fs::create_dir_all(&dmi).unwrap();
        fs::write(dmi.join("sys_vendor"), "QEMU\n").unwrap();
        fs::write(dmi.join("product_name"), "Standard PC (Q35 + ICH9, 2009)\n").unwrap();
        let (r, out) = boot(&paths, &mut RecordingRunner::new());
        r.unwrap();
        assert!(out.contains("setup: this machine is not on a known cloud (DMI sys_vendor \"QEMU\", product_name \"Standard PC (Q35 + ICH9, 2009)\"); no SSH key is taken from a metadata service"), "{out}");
        assert!(!paths.admin_authorized_keys().exists());
    }

    #[test]
    fn only_a_machine_on_a_known_cloud_waits_for_the_network() {
        let d = tempfile::tempdir().unwrap();
        let paths = machine(d.path());
        let dmi = paths.at("/sys/class/dmi/id");
        fs::create_dir_all(&dmi).unwrap();
        fs::write(dmi.join("sys_vendor"), "QEMU\n").unwrap();
        let mut runner = RecordingRunner::new();
        boot(&paths, &mut runner).0.unwrap();
        assert!(runner.commands.is_empty(), "{:?}", runner.lines());
        // appliance-setup.service is not ordered after network-online.target: the metadata
        // service is asked only once systemd has reached it.
        fs::write(dmi.join("sys_vendor"), "Hetzner\n").unwrap();
        let (r, out) = boot(&paths, &mut runner);
        r.unwrap();
        assert_eq!(runner.lines(), ["systemctl start network-online.target"]);
        assert!(
            out.contains("Hetzner Cloud's metadata service gave no SSH key"),
            "{out}"
        );
    }

    #[test]
    fn complete_seed_is_applied_and_erased() {
        let d = tempfile::tempdir().unwrap();
        let paths = machine(d.path());
        let seed = complete_seed("alice");
        with_esp(&paths, Some(&seed));
        let w = witness(&paths);
        let mut runner = RecordingRunner::with_handler(fake_openssl);
        let (r, out) = boot(&paths, &mut runner);
        r.unwrap();
        assert!(esp_files(&paths).is_empty(), "{:?}", esp_files(&paths));
        assert_eq!(
            fs::read(&w).unwrap(),
            vec![0u8; seed.len()],
            "overwritten before deletion"
        );
        assert!(out.contains("setup: step 1/10"), "{out}");
        assert!(out.contains("setup: SSH key for admin installed from the setup answers: 256 SHA256:SwoXeapOouC3yJjFIRyTQx6wVyhKVPnPbHY2MG2Cepo test@example (ED25519)"), "{out}");
        assert!(out.ends_with("setup: complete\n"), "{out}");
        assert!(paths.setup_done().exists());
        let answers = fs::read_to_string(paths.answers()).unwrap();
        assert!(!answers.contains(PASSWORD));
        assert!(AccountStore::open(&paths, "meet.localhost")
            .unwrap()
            .read("alice")
            .unwrap()
            .unwrap()
            .verify(PASSWORD));
        // This ESP is no FAT file system fatfs reads (an empty file): the kernel's driver reads
        // it, mounted read-only; read-write only to erase the seed.
        let lines = runner.lines();
        assert!(lines[0].starts_with("mount -t vfat -o ro,"), "{lines:?}");
        assert!(lines[1].starts_with("umount"), "{lines:?}");
        assert!(lines[2].starts_with("mount -t vfat -o rw,"), "{lines:?}");
        assert!(lines[3].starts_with("umount"), "{lines:?}");

        // Next boot: the TLS pair is checked, the configuration re-rendered, nothing else run.
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
        let lines = runner.lines()[n..].to_vec();
        assert_eq!(lines.len(), 4, "{lines:?}");
        assert!(
            lines[0].starts_with("openssl x509 -noout -pubkey"),
            "{lines:?}"
        );
        assert!(lines[1].starts_with("openssl pkey -pubout"), "{lines:?}");
        assert!(lines[2].starts_with("mount -t vfat -o ro,"), "{lines:?}");
        assert!(out.is_empty(), "{out}");

        // A seed put on the ESP after setup is erased unused (it may hold passwords).
        with_esp(&paths, Some(&complete_seed("mallory")));
        let (r, out) = boot(&paths, &mut runner);
        r.unwrap();
        assert!(esp_files(&paths).is_empty());
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
        let seed = format!("domain = \"meet.localhost\"\nssh_authorized_keys = [\"{ED25519}\"]\n[[hosts]]\nname = \"alice\"\npassword = \"{PASSWORD}\"\n[[hosts]]\nname = \"bob\"\n");
        with_esp(&paths, Some(&seed));
        let w = witness(&paths);
        let mut runner = RecordingRunner::new();
        let (r, out) = boot(&paths, &mut runner);
        r.unwrap();
        assert!(esp_files(&paths).is_empty());
        assert_eq!(fs::read(&w).unwrap(), vec![0u8; seed.len()]);
        assert_eq!(
            fs::read_to_string(paths.admin_authorized_keys()).unwrap(),
            format!("{ED25519}\n")
        );
        assert!(out.contains("setup: SSH key for admin installed from appliance-setup.toml: 256 SHA256:SwoXeapOouC3yJjFIRyTQx6wVyhKVPnPbHY2MG2Cepo test@example (ED25519)"), "{out}");
        let defaults = fs::read_to_string(paths.defaults()).unwrap();
        assert!(
            defaults.contains("meet.localhost") && !defaults.contains(PASSWORD),
            "{defaults}"
        );
        assert!(out.contains("passwords from that file are not kept"));
        assert!(!out.contains(PASSWORD));
        assert!(!paths.answers().exists());
        assert_eq!(fs::read_to_string(paths.nginx_site()).unwrap(), "setup;\n");
    }

    #[test]
    fn invalid_seed_is_replaced_and_explained() {
        let d = tempfile::tempdir().unwrap();
        let paths = machine(d.path());
        with_esp(&paths, Some("domain = \"192.168.1.1\"\n"));
        let mut runner = RecordingRunner::new();
        let (r, out) = boot(&paths, &mut runner);
        r.unwrap();
        let files = esp_files(&paths);
        assert_eq!(files.len(), 1, "{files:?}");
        assert_eq!(files[0].0, "appliance-setup.toml.invalid");
        assert!(
            files[0].1.contains("domain = \"192.168.1.1\""),
            "{}",
            files[0].1
        );
        assert!(
            out.contains(
                "setup:   appliance-setup.toml: `domain`: \"192.168.1.1\" is an IP address"
            ),
            "{out}"
        );
        assert!(out.contains("replaced by appliance-setup.toml.invalid"));
        assert!(!paths.answers().exists());
    }

    #[test]
    fn passwords_in_broken_seeds_reach_no_message_and_no_file() {
        let misspelt = format!(
            "domain = \"meet.localhost\"\n[[hosts]]\nname = \"alice\"\npasword = \"{PASSWORD}\"\n"
        );
        let syntax = format!(
            "domain = \"meet.localhost\"\n[[hosts]]\nname = \"alice\"\npassword = \"{PASSWORD}\n"
        );
        let good = complete_seed("alice");
        for (seed, expected) in [
            (&misspelt, "setup:   appliance-setup.toml: line 4, column 1, key `pasword` in [[hosts]]: this key is not one the seed file knows"),
            (&syntax, "setup:   appliance-setup.toml: line 4, column 28, key `password` in [[hosts]]: this is not valid TOML"),
            (&good, "setup: complete"),
        ] {
            let d = tempfile::tempdir().unwrap();
            let paths = machine(d.path());
            with_esp(&paths, Some(seed));
            let w = witness(&paths);
            let (r, out) = boot(&paths, &mut RecordingRunner::with_handler(fake_openssl));
            r.unwrap();
            assert!(out.contains(expected), "{out}");
            assert!(!out.contains(PASSWORD), "{out}");
            for (name, text) in esp_files(&paths) {
                assert!(!text.contains(PASSWORD), "{name}: {text}");
            }
            assert!(!paths.esp_mount().join(SEED_FILE).exists());
            assert_eq!(fs::read(&w).unwrap(), vec![0u8; seed.len()], "{seed}");
        }
    }

    #[test]
    fn a_mismatched_tls_pair_is_repaired_before_nginx_starts() {
        let d = tempfile::tempdir().unwrap();
        let paths = machine(d.path());
        tls::install_pair(&paths, b"CERT good", b"KEY good").unwrap();
        tls::install_pair(&paths, b"CERT good", b"KEY renewed").unwrap();
        let (r, out) = boot(&paths, &mut RecordingRunner::with_handler(fake_openssl));
        r.unwrap();
        assert!(out.contains("do not belong together"), "{out}");
        assert_eq!(fs::read_to_string(paths.tls_key()).unwrap(), "KEY good");
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
