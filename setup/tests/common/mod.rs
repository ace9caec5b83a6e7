//! What the configuration tests share: a machine root in a temporary directory, set up by
//! appliance-admin's own code from a seed file, and helpers to hand its rendered files to their
//! real consumers on this host.
//!
//! Each `tests/config_*.rs` uses part of this module.
#![allow(dead_code)]

use std::fs;
use std::net::{TcpListener, UdpSocket};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use appliance_admin::answers::{self, Answers};
use appliance_admin::paths::Paths;
use appliance_admin::render::{self, MeetingContext, Phase, Templates};
use appliance_admin::runner::{self, Cmd, RecordingRunner, Runner, SystemRunner};
use appliance_admin::secrets::Secrets;
use appliance_admin::steps::{self, Ctx};
use appliance_spec::seed::Seed;

pub const DOMAIN: &str = "meet.example.org";
pub const HOST: &str = "alice";
pub const HOST_PASSWORD: &str = "Tulip-Harbor-42";
/// Where the spec puts the TLS pair, as the rendered files name it.
pub const SPEC_CERT: &str = "/data/config/tls/cert.pem";
pub const SPEC_KEY: &str = "/data/config/tls/key.pem";

/// A complete seed file (`appliance-setup.toml`), as a user would put it on the ESP.
pub const SEED: &str = r#"
domain = "meet.example.org"
timezone = "UTC"
ssh_authorized_keys = ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDrAR/bS3lTV9w81gAeSQwVk7HCW8UHb7lUqp0e37MSe test@example"]

[[hosts]]
name = "alice"
password = "Tulip-Harbor-42"

[letsencrypt]
email = "admin@example.org"
accept_terms = true
"#;

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `path` in the files of whichever feature (`overlays/<feature>/files`) ships it.
pub fn overlay(path: &str) -> PathBuf {
    let features = repo_root().join("overlays");
    fs::read_dir(&features)
        .unwrap()
        .map(|e| e.unwrap().path().join("files").join(path))
        .find(|p| p.exists())
        .unwrap_or_else(|| panic!("no feature in {} ships {path}", features.display()))
}

/// The image's runtime templates.
pub fn templates_dir() -> PathBuf {
    overlay("usr/share/appliance/templates")
}

/// A root directory laid out like the image before its first boot, with the image's templates.
pub struct Machine {
    dir: tempfile::TempDir,
    pub paths: Paths,
    /// What the setup steps ran (openssl, for real) or would have run (systemctl, prosodyctl).
    pub commands: Vec<String>,
}

impl Machine {
    /// Users and groups are this host's, so files get the owners the machine gives them when
    /// the test runs as root (prosody, turnserver and ssl-cert come with the host's packages).
    pub fn new(jitsi_installed: bool) -> Machine {
        let dir = tempfile::Builder::new()
            .prefix("appliance-root")
            .tempdir()
            .unwrap();
        // Prosody reads its files as its own user when the test runs as root.
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let paths = Paths::new(dir.path());
        let passwd = fs::read_to_string("/etc/passwd").unwrap();
        assert!(
            passwd.lines().any(|l| l.starts_with("prosody:")),
            "this host has no `prosody` user: install the host tools with `appliance doctor --install` (as root)"
        );
        fs::create_dir_all(paths.at("/etc")).unwrap();
        fs::write(paths.etc_passwd(), passwd).unwrap();
        fs::copy("/etc/group", paths.etc_group()).unwrap();
        fs::create_dir_all(paths.zoneinfo()).unwrap();
        fs::write(paths.zoneinfo().join("UTC"), "TZif2").unwrap();
        fs::create_dir_all(paths.templates_dir().parent().unwrap()).unwrap();
        std::os::unix::fs::symlink(templates_dir(), paths.templates_dir()).unwrap();
        if jitsi_installed {
            // appliance-admin knows Jitsi's packages by their web app.
            fs::create_dir_all(paths.jitsi_index().parent().unwrap()).unwrap();
            fs::write(paths.jitsi_index(), "<!DOCTYPE html>").unwrap();
        }
        Machine {
            dir,
            paths,
            commands: Vec::new(),
        }
    }

    /// A machine set up from [`SEED`], as the first boot applies a complete seed.
    pub fn set_up(jitsi_installed: bool) -> Machine {
        let mut m = Machine::new(jitsi_installed);
        m.apply_seed(SEED);
        m
    }

    /// The seed becomes the stored answers, then every setup step runs: secrets, TLS pair
    /// (openssl for real), rendered configuration, Prosody accounts. systemctl and prosodyctl
    /// are recorded instead of run.
    pub fn apply_seed(&mut self, seed_text: &str) {
        require("openssl", "openssl");
        let seed = Seed::parse(seed_text, "appliance-setup.toml").unwrap();
        assert!(seed.is_complete(), "the seed answers every question");
        let valid = seed
            .validate("appliance-setup.toml", &self.paths.zoneinfo())
            .unwrap_or_else(|e| panic!("{e:#}"));
        fs::create_dir_all(self.paths.appliance_dir()).unwrap();
        answers::from_seed(valid)
            .unwrap()
            .save(&self.paths.answers())
            .unwrap();
        let mut runner = RecordingRunner::with_handler(|cmd: &Cmd| {
            if cmd.program == "openssl" {
                SystemRunner.run(cmd)
            } else {
                Ok(runner::Output {
                    success: true,
                    ..runner::Output::default()
                })
            }
        });
        let mut out = Vec::new();
        let applied = steps::apply(&mut Ctx {
            paths: &self.paths,
            runner: &mut runner,
            out: &mut out,
            from_boot: true,
        });
        let said = String::from_utf8_lossy(&out).into_owned();
        applied.unwrap_or_else(|e| panic!("setup failed: {e:#}\n{said}"));
        assert!(said.contains("setup: complete"), "{said}");
        self.commands = runner.lines();
    }

    /// What `appliance-admin boot` writes before setup: the "setup not finished" site.
    pub fn render_setup_page(&self) {
        render::render_all(
            &self.paths,
            Phase::Setup,
            &render::setup_context(&self.paths),
        )
        .unwrap_or_else(|e| panic!("{e:#}"));
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    pub fn answers(&self) -> Answers {
        Answers::load(&self.paths.answers()).unwrap()
    }

    pub fn secrets(&self) -> Secrets {
        Secrets::load(&self.paths.secrets()).unwrap()
    }

    /// The context the setup steps render the meeting templates with.
    pub fn context(&self) -> MeetingContext {
        render::meeting_context(&self.paths, &self.answers(), &self.secrets())
    }

    /// The templates as appliance-admin loads them.
    pub fn templates(&self) -> Templates {
        Templates::load(&self.paths).unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// A rendered file as the machine has it; `target` is relative to /data/config.
    pub fn rendered(&self, target: &str) -> String {
        let path = self.paths.config_dir().join(target);
        fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    /// A directory in the root for the files a check on this host needs besides the machine's.
    pub fn host_dir(&self) -> PathBuf {
        let dir = self.root().join("host-checks");
        if !dir.exists() {
            fs::create_dir(&dir).unwrap();
            fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        }
        dir
    }

    /// Writes `content` to `name` in [`Machine::host_dir`], readable by everybody.
    pub fn write_host_file(&self, name: &str, content: &str) -> PathBuf {
        let path = self.host_dir().join(name);
        fs::write(&path, content).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        path
    }

    /// The rendered file with its /data/config paths (TLS pair, Jitsi's config.js) moved into
    /// this root, so a consumer on this host opens the machine's files.
    pub fn for_this_host(&self, target: &str) -> PathBuf {
        let config = format!("{}/", self.paths.config_dir().display());
        let text = self.rendered(target).replace("/data/config/", &config);
        self.write_host_file(&target.replace('/', "-"), &text)
    }
}

/// A host program a check needs, or a failure saying how to install it.
pub fn require(program: &str, package: &str) -> PathBuf {
    appliance_qemu_tests::host::require_program(program, package)
        .unwrap_or_else(|e| panic!("{e:#}"))
}

pub fn run(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// Everything a command printed.
pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A loopback port that is free for both TCP and UDP right now.
pub fn free_port() -> u16 {
    loop {
        let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = tcp.local_addr().unwrap().port();
        if UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}
