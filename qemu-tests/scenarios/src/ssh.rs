//! Running commands in the guest through the host's `ssh` client (package `openssh-client`),
//! with a throwaway key pair and no host-key bookkeeping.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use appliance_qemu_tests::host::{self, require_program};

/// An ed25519 key pair in its own temporary directory (removed on drop).
#[derive(Debug)]
pub struct KeyPair {
    _dir: tempfile::TempDir,
    pub private: PathBuf,
    pub public: PathBuf,
}

impl KeyPair {
    /// `ssh-keygen -t ed25519` without passphrase; `comment` ends the public line.
    pub fn generate(comment: &str) -> Result<KeyPair> {
        let keygen = require_program("ssh-keygen", "openssh-client")?;
        let dir = tempfile::Builder::new().prefix("ssh-key").tempdir()?;
        let private = dir.path().join("id_ed25519");
        host::run(
            Command::new(keygen)
                .args(["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f"])
                .arg(&private)
                .stdin(Stdio::null()),
        )?;
        Ok(KeyPair {
            public: private.with_extension("pub"),
            private,
            _dir: dir,
        })
    }

    /// The `ssh-ed25519 AAAA… comment` line, for authorized_keys or the seed file.
    pub fn public_line(&self) -> Result<String> {
        Ok(fs::read_to_string(&self.public)
            .with_context(|| format!("reading {}", self.public.display()))?
            .trim()
            .to_string())
    }
}

/// How the server treated a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyAuth {
    Accepted,
    Refused,
}

/// The methods in the last "Authentications that can continue:" line of `ssh -v` output.
pub fn parse_auth_methods(verbose_stderr: &str) -> Option<Vec<String>> {
    verbose_stderr
        .lines()
        .filter_map(|l| l.split_once("Authentications that can continue:"))
        .map(|(_, m)| {
            m.trim()
                .split(',')
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect()
        })
        .next_back()
}

/// `ssh` to a guest port on the host, as `user`, with `key`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ssh {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub key: PathBuf,
    pub connect_timeout: Duration,
}

impl Ssh {
    /// `user@127.0.0.1:port` with `key`, 10 s connect timeout.
    pub fn new(port: u16, user: &str, key: impl Into<PathBuf>) -> Ssh {
        Ssh {
            host: "127.0.0.1".to_string(),
            port,
            user: user.to_string(),
            key: key.into(),
            connect_timeout: Duration::from_secs(10),
        }
    }

    /// Options every invocation gets: no config files, no known_hosts, never prompt.
    fn base_args(&self) -> Vec<String> {
        let mut a: Vec<String> = ["-F", "/dev/null"].map(String::from).to_vec();
        for opt in [
            "StrictHostKeyChecking=no".to_string(),
            "UserKnownHostsFile=/dev/null".to_string(),
            "GlobalKnownHostsFile=/dev/null".to_string(),
            "BatchMode=yes".to_string(),
            format!("ConnectTimeout={}", self.connect_timeout.as_secs().max(1)),
        ] {
            a.push("-o".into());
            a.push(opt);
        }
        a.push("-p".into());
        a.push(self.port.to_string());
        a
    }

    fn destination(&self) -> String {
        format!("{}@{}", self.user, self.host)
    }

    /// The arguments for running `remote` with `key` (public-key authentication only).
    pub fn args_with_key(&self, key: &Path, remote: &str) -> Vec<String> {
        let mut a = self.base_args();
        for opt in [
            "IdentitiesOnly=yes",
            "PreferredAuthentications=publickey",
            "LogLevel=ERROR",
        ] {
            a.push("-o".into());
            a.push(opt.into());
        }
        a.push("-i".into());
        a.push(key.display().to_string());
        a.push(self.destination());
        a.push("--".into());
        a.push(remote.into());
        a
    }

    /// The `ssh` command for `remote` (a shell command line run by the guest's login shell).
    pub fn command(&self, remote: &str) -> Command {
        let mut c = Command::new("ssh");
        c.args(self.args_with_key(&self.key, remote))
            .stdin(Stdio::null());
        c
    }

    /// Runs `remote`; the exit status is the remote command's (255: ssh itself failed). A
    /// connection dropped before the key exchange is tried again, twice: the command has not
    /// run, and a guest slowed down by emulation (sshd's `MaxStartups` counting connections
    /// still in their login grace time) does that now and then.
    pub fn run(&self, remote: &str) -> Result<Output> {
        require_program("ssh", "openssh-client")?;
        let mut tries = 0;
        loop {
            let out = self
                .command(remote)
                .output()
                .with_context(|| format!("running ssh {}:{}", self.host, self.port))?;
            tries += 1;
            if tries == 3 || !dropped_before_login(&out) {
                return Ok(out);
            }
            std::thread::sleep(Duration::from_secs(2));
        }
    }

    /// Runs `remote` and returns its stdout, failing with stderr unless it exits 0.
    pub fn run_ok(&self, remote: &str) -> Result<String> {
        let out = self.run(remote)?;
        if !out.status.success() {
            bail!(
                "ssh {} {remote:?} failed ({}):\n{}{}",
                self.destination(),
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Runs `remote` with the local file `input` on its standard input (to copy a file:
    /// `sudo -n sh -c 'cat > FILE'`); fails with its output unless it exits 0.
    pub fn run_with_input(&self, remote: &str, input: &Path) -> Result<String> {
        require_program("ssh", "openssh-client")?;
        let file = std::fs::File::open(input)
            .with_context(|| format!("cannot read {}", input.display()))?;
        let out = self
            .command(remote)
            .stdin(file)
            .output()
            .with_context(|| format!("running ssh {}:{}", self.host, self.port))?;
        if !out.status.success() {
            bail!(
                "ssh {} {remote:?} < {} failed ({}):\n{}{}",
                self.destination(),
                input.display(),
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Runs `command` through `sudo -n` on the guest; fails with its output unless it exits 0.
    pub fn sudo(&self, command: &str) -> Result<String> {
        self.run_ok(&format!("sudo -n {command}"))
    }

    /// Retries `true` until it succeeds or `timeout` passes.
    pub fn wait_until_up(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let out = self.run("true")?;
            if out.status.success() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "ssh {}:{} did not let us in within {timeout:?}; last attempt: {}",
                    self.host,
                    self.port,
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
            sleep(Duration::from_secs(1));
        }
    }

    /// The arguments of the `ssh -v` probe that offers no credential at all.
    pub fn probe_args(&self) -> Vec<String> {
        let mut a = self.base_args();
        for opt in [
            "PubkeyAuthentication=no",
            "PreferredAuthentications=password,keyboard-interactive",
            "NumberOfPasswordPrompts=0",
        ] {
            a.push("-o".into());
            a.push(opt.into());
        }
        a.push("-v".into());
        a.push(self.destination());
        a.push("--".into());
        a.push("true".into());
        a
    }

    /// The authentication methods the server says can continue after `none`.
    pub fn offered_auth_methods(&self) -> Result<Vec<String>> {
        require_program("ssh", "openssh-client")?;
        let out = Command::new("ssh")
            .args(self.probe_args())
            .stdin(Stdio::null())
            .output()?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        parse_auth_methods(&stderr).with_context(|| {
            format!(
                "ssh -v to {}:{} printed no authentication methods:\n{stderr}",
                self.host, self.port
            )
        })
    }

    /// Whether the server offers password authentication (`password` or
    /// `keyboard-interactive`) to a client that has no key, and the methods it offers.
    pub fn password_offered(&self) -> Result<(bool, Vec<String>)> {
        let methods = self.offered_auth_methods()?;
        let offered = methods
            .iter()
            .any(|m| m == "password" || m == "keyboard-interactive");
        Ok((offered, methods))
    }

    /// Tries `other_key` instead of ours.
    pub fn try_key(&self, other_key: &Path) -> Result<KeyAuth> {
        require_program("ssh", "openssh-client")?;
        let out = Command::new("ssh")
            .args(self.args_with_key(other_key, "true"))
            .stdin(Stdio::null())
            .output()?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        if out.status.success() {
            Ok(KeyAuth::Accepted)
        } else if stderr.contains("Permission denied") {
            Ok(KeyAuth::Refused)
        } else {
            bail!(
                "ssh to {}:{} failed before authentication ({}): {}",
                self.host,
                self.port,
                out.status,
                stderr.trim()
            )
        }
    }
}

/// Whether ssh gave up before the key exchange (the server closed or reset the connection at
/// once): nothing ran on the guest.
fn dropped_before_login(out: &Output) -> bool {
    out.status.code() == Some(255)
        && String::from_utf8_lossy(&out.stderr).contains("kex_exchange_identification")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn generates_an_ed25519_pair() {
        let k = KeyPair::generate("appliance-tests").unwrap();
        let line = k.public_line().unwrap();
        assert!(line.starts_with("ssh-ed25519 AAAA"), "{line}");
        assert!(line.ends_with(" appliance-tests"), "{line}");
        let mode = fs::metadata(&k.private).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "private key mode {mode:o}");
        let other = KeyPair::generate("x").unwrap();
        assert_ne!(other.public_line().unwrap(), line);
    }

    #[test]
    fn command_line() {
        let ssh = Ssh::new(2222, "admin", "/k/id");
        let a = ssh.args_with_key(Path::new("/k/id"), "cat /etc/os-release");
        let joined = a.join(" ");
        for part in [
            "-o StrictHostKeyChecking=no",
            "-o UserKnownHostsFile=/dev/null",
            "-o BatchMode=yes",
            "-o ConnectTimeout=10",
            "-o IdentitiesOnly=yes",
            "-p 2222",
            "-i /k/id admin@127.0.0.1 -- cat /etc/os-release",
        ] {
            assert!(joined.contains(part), "{joined} lacks {part}");
        }
        assert_eq!(a.last().unwrap(), "cat /etc/os-release");
        let probe = ssh.probe_args().join(" ");
        assert!(probe.contains("-o PubkeyAuthentication=no"), "{probe}");
        assert!(probe.contains("-v admin@127.0.0.1 -- true"), "{probe}");
    }

    #[test]
    fn parses_offered_methods() {
        let stderr = "debug1: Authenticating to 127.0.0.1:2222 as 'admin'\n\
            debug1: Authentications that can continue: publickey,password\n\
            debug1: No more authentication methods to try.\n\
            debug1: Authentications that can continue: publickey\n\
            admin@127.0.0.1: Permission denied (publickey).\n";
        assert_eq!(parse_auth_methods(stderr).unwrap(), ["publickey"]);
        assert_eq!(parse_auth_methods("ssh: connect refused"), None);
    }

    /// Nothing listens on a fresh port: the probe fails instead of claiming no password.
    #[test]
    fn a_connection_dropped_before_login_is_tried_three_times() {
        require_program("ssh", "openssh-client").unwrap_or_else(|e| panic!("{e:#}"));
        // A server that accepts and closes at once, as a guest's sshd over its limit does.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = accepted.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                drop(stream);
            }
        });
        let ssh = Ssh::new(port, "admin", "/nonexistent");
        let out = ssh.run("true").unwrap();
        assert!(dropped_before_login(&out), "{out:?}");
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 3);
    }

    #[test]
    fn closed_port_is_an_error() {
        require_program("ssh", "openssh-client").unwrap_or_else(|e| panic!("{e:#}"));
        let port = appliance_qemu_tests::free_port().unwrap();
        let ssh = Ssh::new(port, "admin", "/nonexistent");
        assert!(ssh.offered_auth_methods().is_err());
        assert!(ssh.try_key(Path::new("/nonexistent")).is_err());
        assert!(ssh.password_offered().is_err());
    }
}
