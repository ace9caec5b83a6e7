//! Tests of `appliance-admin settings` (and of the domain change in domain.rs).

use super::*;
use crate::runner::{Output, RecordingRunner};
use crate::scram::AccountStore;
use crate::secrets::Secrets;
use crate::steps::tests::{answers, machine};
use crate::testkeys::{ED25519, P256};
use crate::tls::tests::fake_openssl;
use std::fs;
use std::path::Path;

/// A machine whose setup is complete, for `domain`.
fn set_up(root: &Path, domain: &str) -> Paths {
    let paths = machine(root);
    let mut a = answers();
    a.domain = domain.into();
    a.save(&paths.answers()).unwrap();
    steps::apply(&mut Ctx {
        paths: &paths,
        runner: &mut RecordingRunner::with_handler(fake_openssl),
        out: &mut Vec::new(),
        from_boot: false,
    })
    .unwrap();
    assert!(paths.setup_done().exists());
    paths
}

/// Run `f` with a recording runner; returns its result, what it said and the commands.
fn with_ctx(
    paths: &Paths,
    f: impl FnOnce(&mut Ctx) -> Result<()>,
) -> (Result<()>, String, Vec<String>) {
    let mut runner = RecordingRunner::with_handler(fake_openssl);
    let mut out = Vec::new();
    let r = f(&mut Ctx {
        paths,
        runner: &mut runner,
        out: &mut out,
        from_boot: false,
    });
    (r, String::from_utf8(out).unwrap(), runner.lines())
}

struct Answer(bool);
impl Terms for Answer {
    fn accept(&mut self, url: &str) -> Result<bool> {
        assert!(url.starts_with("https://"), "{url}");
        Ok(self.0)
    }
}

#[test]
fn nothing_to_change_before_setup() {
    let d = tempfile::tempdir().unwrap();
    let paths = machine(d.path());
    let (r, _, _) = with_ctx(&paths, |ctx| timezone(ctx, "UTC"));
    assert!(r.unwrap_err().to_string().contains("setup is not complete"));
    assert!(show(&paths, &mut Vec::new()).is_err());
}

#[test]
fn show_lists_every_setting() {
    let d = tempfile::tempdir().unwrap();
    let paths = set_up(d.path(), "meet.localhost");
    let mut out = Vec::new();
    show(&paths, &mut out).unwrap();
    let out = String::from_utf8(out).unwrap();
    for line in [
        "Domain: meet.localhost\n",
        "Let's Encrypt: off (self-signed certificate)\n",
        "Power off: after 30 idle minutes, daily at 23:30\n",
        "Time zone: Europe/Berlin\n",
        "  256 SHA256:SwoXeapOouC3yJjFIRyTQx6wVyhKVPnPbHY2MG2Cepo test@example (ED25519)\n",
    ] {
        assert!(out.contains(line), "{line:?} in:\n{out}");
    }
}

#[test]
fn the_domain_moves_with_its_hosts_accounts_and_certificate() {
    let d = tempfile::tempdir().unwrap();
    let paths = set_up(d.path(), "meet.localhost");
    let before = fs::read_to_string(paths.answers()).unwrap();
    let (r, _, commands) = with_ctx(&paths, |ctx| crate::domain::change(ctx, "192.168.1.1"));
    let e = r.unwrap_err().to_string();
    assert!(
        e.contains("is an IP address") && e.contains("Nothing was changed"),
        "{e}"
    );
    assert!(commands.is_empty());
    assert_eq!(fs::read_to_string(paths.answers()).unwrap(), before);

    let (r, out, commands) = with_ctx(&paths, |ctx| {
        crate::domain::change(ctx, "Video.Example.ORG")
    });
    r.unwrap();
    let a = Answers::load(&paths.answers()).unwrap();
    assert_eq!(a.domain, "video.example.org");
    assert_eq!(
        fs::read_to_string(paths.nginx_site()).unwrap(),
        "server_name video.example.org;\n"
    );
    let prosody = fs::read_to_string(paths.config_dir().join("prosody/appliance.cfg.lua")).unwrap();
    assert!(
        prosody.contains("VirtualHost \"video.example.org\""),
        "{prosody}"
    );
    assert!(!prosody.contains("meet.localhost"), "{prosody}");
    // The host signs in on the new domain with the same password; the old stores are empty.
    let store = AccountStore::open(&paths, "video.example.org").unwrap();
    assert!(store
        .read("alice")
        .unwrap()
        .unwrap()
        .verify("Tulip-Harbor-42"));
    let secrets = Secrets::load(&paths.secrets()).unwrap();
    let auth = AccountStore::open(&paths, "auth.video.example.org").unwrap();
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
    for old in ["meet.localhost", "auth.meet.localhost"] {
        assert!(
            AccountStore::open(&paths, old)
                .unwrap()
                .list()
                .unwrap()
                .is_empty(),
            "{old}"
        );
    }
    assert!(
        commands.iter().any(|c| c.starts_with("openssl req")
            && c.contains(
                "-subj /CN=video.example.org -addext subjectAltName=DNS:video.example.org"
            )),
        "{commands:?}"
    );
    assert!(
        commands.contains(&"systemctl try-restart prosody.service coturn.service".to_string()),
        "{commands:?}"
    );
    assert!(steps::pending(&paths).unwrap().is_empty());
    assert!(
        out.contains("https://video.example.org/ (hosts: alice)"),
        "{out}"
    );
    let mut status = Vec::new();
    crate::status::print(&paths, &mut status).unwrap();
    assert!(String::from_utf8(status).unwrap().contains("Hosts: alice"));
}

#[test]
fn a_domain_change_cut_short_is_finished_by_the_next_boot() {
    let d = tempfile::tempdir().unwrap();
    let paths = set_up(d.path(), "meet.localhost");
    // systemctl fails: as if the power went while the services were being started.
    let mut runner = RecordingRunner::with_handler(|cmd| {
        if cmd.program == "systemctl" {
            return Ok(Output::default());
        }
        fake_openssl(cmd)
    });
    let r = crate::domain::change(
        &mut Ctx {
            paths: &paths,
            runner: &mut runner,
            out: &mut Vec::new(),
            from_boot: false,
        },
        "video.example.org",
    );
    assert!(r.is_err());
    assert_eq!(
        steps::pending(&paths).unwrap(),
        vec!["services", "letsencrypt"]
    );
    let (r, _, _) = with_ctx(&paths, crate::boot::run);
    r.unwrap();
    assert!(steps::pending(&paths).unwrap().is_empty());
    assert!(AccountStore::open(&paths, "video.example.org")
        .unwrap()
        .read("alice")
        .unwrap()
        .is_some());
}

#[test]
fn the_lets_encrypt_contact_needs_the_terms_and_reaches_the_account() {
    let d = tempfile::tempdir().unwrap();
    // .invalid never resolves: the CA is not asked, and the self-signed certificate stays.
    let paths = set_up(d.path(), "meet.invalid");
    let (r, _, _) = with_ctx(&paths, |ctx| {
        email(ctx, Some("not-an-address"), &mut Answer(true))
    });
    assert!(r.unwrap_err().to_string().contains("has no @ sign"));
    let (r, _, _) = with_ctx(&paths, |ctx| {
        email(ctx, Some("it@example.org"), &mut Answer(false))
    });
    assert!(r
        .unwrap_err()
        .to_string()
        .contains("terms of service were not accepted"));
    assert!(Answers::load(&paths.answers())
        .unwrap()
        .letsencrypt
        .is_none());

    // An account registered before (with another address) gets the new contact.
    let account = paths.acme_dir().join("accounts/abc");
    fs::create_dir_all(&account).unwrap();
    fs::write(account.join("account_key.pem"), "KEY").unwrap();
    let (r, out, commands) = with_ctx(&paths, |ctx| {
        email(ctx, Some("IT@Example.ORG"), &mut Answer(true))
    });
    r.unwrap();
    let le = Answers::load(&paths.answers())
        .unwrap()
        .letsencrypt
        .unwrap();
    assert_eq!(le.email, "IT@example.org");
    assert_eq!(le.directory, LETSENCRYPT_DIRECTORY);
    assert_eq!(
        commands,
        vec!["dehydrated --config /data/config/acme/config --account"]
    );
    assert!(
        out.contains("The Let's Encrypt contact is now IT@example.org."),
        "{out}"
    );
    assert!(out.contains("meet.invalid cannot be resolved"), "{out}");
    assert!(fs::read_to_string(paths.acme_dir().join("config"))
        .unwrap()
        .contains("CONTACT_EMAIL='IT@example.org'"));

    // Off again: a self-signed certificate at once.
    let (r, out, commands) = with_ctx(&paths, |ctx| email(ctx, None, &mut Answer(true)));
    r.unwrap();
    assert!(Answers::load(&paths.answers())
        .unwrap()
        .letsencrypt
        .is_none());
    assert!(commands[0].starts_with("openssl req"), "{commands:?}");
    assert!(commands.contains(&"systemctl reload-or-restart nginx.service".to_string()));
    assert!(out.contains("self-signed certificate"), "{out}");
}

#[test]
fn power_off_rules_are_checked_and_written_where_the_timer_reads_them() {
    let d = tempfile::tempdir().unwrap();
    let paths = set_up(d.path(), "meet.localhost");
    let policy = || fs::read_to_string(paths.power_off()).unwrap();
    for (idle, daily, never, says) in [
        (Some(-3), None, false, "cannot be negative"),
        (None, Some("25:00"), false, "hours go from 00 to 23"),
        (None, None, false, "say what to change"),
        (Some(10), None, true, "give it alone"),
    ] {
        let (r, _, _) = with_ctx(&paths, |ctx| power_off(ctx, idle, daily, never));
        let e = r.unwrap_err().to_string();
        assert!(e.contains(says), "{e}");
    }
    assert_eq!(policy(), "idle_minutes = 30\ndaily_at = \"23:30\"\n");
    let (r, out, _) = with_ctx(&paths, |ctx| power_off(ctx, Some(45), None, false));
    r.unwrap();
    assert_eq!(policy(), "idle_minutes = 45\ndaily_at = \"23:30\"\n");
    assert!(
        out.contains("after 45 idle minutes, daily at 23:30"),
        "{out}"
    );
    with_ctx(&paths, |ctx| power_off(ctx, None, Some("7:05"), false))
        .0
        .unwrap();
    assert_eq!(policy(), "idle_minutes = 45\ndaily_at = \"07:05\"\n");
    with_ctx(&paths, |ctx| power_off(ctx, None, Some("none"), false))
        .0
        .unwrap();
    assert_eq!(policy(), "idle_minutes = 45\n");
    with_ctx(&paths, |ctx| power_off(ctx, None, None, true))
        .0
        .unwrap();
    assert_eq!(policy(), "idle_minutes = 0\n");
    assert_eq!(
        Answers::load(&paths.answers()).unwrap().power_off,
        PowerOffAnswers::default()
    );
}

#[test]
fn the_time_zone_is_checked_and_linked() {
    let d = tempfile::tempdir().unwrap();
    let paths = set_up(d.path(), "meet.localhost");
    let (r, _, _) = with_ctx(&paths, |ctx| timezone(ctx, "Mars/Base"));
    assert!(r.unwrap_err().to_string().contains("no time zone called"));
    with_ctx(&paths, |ctx| timezone(ctx, "UTC")).0.unwrap();
    assert_eq!(
        fs::read_link(paths.localtime()).unwrap(),
        Path::new("/usr/share/zoneinfo/UTC")
    );
    assert_eq!(Answers::load(&paths.answers()).unwrap().timezone, "UTC");
}

#[test]
fn ssh_keys_are_added_listed_and_removed_but_never_the_last() {
    let d = tempfile::tempdir().unwrap();
    let paths = set_up(d.path(), "meet.localhost");
    let mut out = Vec::new();
    let e = ssh_keys_add(&paths, "ssh-rsa AAAA", &mut out).unwrap_err();
    assert!(e.to_string().contains("Nothing was changed"), "{e}");
    ssh_keys_add(&paths, P256, &mut out).unwrap();
    ssh_keys_add(&paths, P256, &mut out).unwrap();
    let text = String::from_utf8(std::mem::take(&mut out)).unwrap();
    assert!(
        text.starts_with(
            "Added: 256 SHA256:g/hT7yqAmO/8i26YJxNUHrK4eLSLTLEA7Y8Z2GkvmmU test@example (ECDSA)\n"
        ),
        "{text}"
    );
    assert!(text.contains("can already log in"), "{text}");
    ssh_keys_list(&paths, &mut out).unwrap();
    let listed = String::from_utf8(std::mem::take(&mut out)).unwrap();
    assert_eq!(listed.lines().count(), 2, "{listed}");
    assert_eq!(
        Answers::load(&paths.answers()).unwrap().ssh_authorized_keys,
        vec![ED25519.to_string(), P256.to_string()]
    );

    let e = ssh_keys_remove(&paths, "SHA256:nosuchkey", &mut out).unwrap_err();
    assert!(e.to_string().contains("settings ssh-keys list"), "{e}");
    ssh_keys_remove(
        &paths,
        "SHA256:SwoXeapOouC3yJjFIRyTQx6wVyhKVPnPbHY2MG2Cepo",
        &mut out,
    )
    .unwrap();
    assert_eq!(sshkeys::installed(&paths).unwrap(), vec![P256.to_string()]);
    assert_eq!(
        Answers::load(&paths.answers()).unwrap().ssh_authorized_keys,
        vec![P256.to_string()]
    );
    let e = ssh_keys_remove(
        &paths,
        "g/hT7yqAmO/8i26YJxNUHrK4eLSLTLEA7Y8Z2GkvmmU",
        &mut out,
    )
    .unwrap_err();
    assert!(e.to_string().contains("only key"), "{e}");
    assert_eq!(sshkeys::installed(&paths).unwrap(), vec![P256.to_string()]);
}
