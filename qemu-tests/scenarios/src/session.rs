//! One boot of a meeting server under test: the running [`Machine`], SSH to it and the host
//! ports forwarded to it, in a [`Session`] that is the one place where a failure is explained
//! and the machine is powered off.
//!
//! A scenario is a sequence of named steps ([`Session::step`]). When a step fails, its error
//! gets the console tail, QEMU's stderr and what the machine says about its failed units and
//! AppArmor denials over SSH ([`guest_diagnostics`]); when the session is dropped without being
//! ended (an error returned with `?`, or a panic), the machine is powered off at once, and a
//! panic prints the same diagnostics.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use appliance_qemu_tests::{boot_and_report, free_port, scenarios};
use appliance_qemu_tests::{Arch, BootReport, Firmware, Machine, MachineConfig};

use crate::ssh::Ssh;

/// Host ports forwarded to the guest's SSH, HTTP and HTTPS ports.
#[derive(Debug, Clone, Copy)]
pub struct Ports {
    pub ssh: u16,
    pub http: u16,
    pub https: u16,
}

impl Ports {
    pub fn free() -> Result<Ports> {
        Ok(Ports {
            ssh: free_port()?,
            http: free_port()?,
            https: free_port()?,
        })
    }
}

/// The machine config for a meeting-server boot of `disk` (qcow2, kept between boots), with
/// SSH, HTTP and HTTPS forwarded and enough memory for the meeting services.
pub fn machine_config(arch: Arch, disk: &Path, workdir: PathBuf, ports: Ports) -> MachineConfig {
    let mut cfg = MachineConfig::new(arch, Firmware::Uefi, disk, workdir);
    cfg.disk_format = "qcow2".into();
    cfg.snapshot = false;
    cfg.memory_mib = 1536;
    cfg.port_forwards = vec![(ports.ssh, 22), (ports.http, 80), (ports.https, 443)];
    cfg
}

/// What the readiness report must say about first-boot setup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Setup {
    /// Set up (from a seed file, or earlier).
    Done,
    /// Waiting for the wizard.
    Pending,
}

impl Setup {
    fn as_str(self) -> &'static str {
        match self {
            Setup::Done => "done",
            Setup::Pending => "pending",
        }
    }
}

/// What the machine says about its failed units and AppArmor denials, over SSH (best effort:
/// a machine that lets nobody in yet says why not).
pub fn guest_diagnostics(ssh: &Ssh) -> String {
    let cmd = "sudo -n sh -c 'systemctl --no-pager --failed; \
               for u in $(systemctl --failed --plain --no-legend | cut -d\" \" -f1); do \
               journalctl -b --no-pager -n 25 -u $u; done; \
               journalctl -b --no-pager -n 30 -u appliance-acme.service -u appliance-setup.service; \
               journalctl -k -b --no-pager | grep -i denied | tail -n 40'";
    match ssh.run(cmd) {
        Ok(out) => format!(
            "\n--- from the machine (ssh) ---\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) => format!("\n(no diagnostics over ssh: {e:#})"),
    }
}

/// A booted machine, SSH to it (with the key the scenario gave it, or will give it) and its
/// forwarded ports. Powered off when dropped unless ended by [`Session::power_off_cleanly`],
/// [`Session::cut_power`] or [`Session::wait_for_power_off`].
pub struct Session {
    /// `None` only once the session has ended.
    machine: Option<Machine>,
    pub ssh: Ssh,
    pub ports: Ports,
    pub report: BootReport,
    /// From QEMU's start to the readiness line.
    pub seconds_to_ready: f64,
    /// Names the boot in errors, e.g. "machine A, second boot".
    name: String,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("name", &self.name)
            .field("ports", &self.ports)
            .finish_non_exhaustive()
    }
}

impl Session {
    /// Boots `cfg` (see [`machine_config`], with the same `ports`) until its readiness line,
    /// which must say setup is `setup`, no unit failed and nginx is active.
    pub fn boot(
        name: &str,
        cfg: &MachineConfig,
        ports: Ports,
        ssh: Ssh,
        setup: Setup,
        timeout: Duration,
    ) -> Result<Session> {
        let (machine, report, elapsed) =
            boot_and_report(cfg, timeout).with_context(|| name.to_string())?;
        let session = Session {
            machine: Some(machine),
            ssh,
            ports,
            report,
            seconds_to_ready: elapsed.as_secs_f64(),
            name: name.to_string(),
        };
        session.step("the readiness report", |s| s.check_report(setup))?;
        Ok(session)
    }

    fn check_report(&self, setup: Setup) -> Result<()> {
        let r = &self.report;
        let mut problems = Vec::new();
        if r.get("setup") != Some(setup.as_str()) {
            problems.push(format!(
                "setup={}, expected {}",
                r.get("setup").unwrap_or("(missing)"),
                setup.as_str()
            ));
        }
        if r.get("failed_units") != Some("0") {
            problems.push(format!(
                "failed units: {}",
                r.get("failed").unwrap_or("(missing)")
            ));
        }
        // "reloading": the certificate step reloads nginx as setup ends; it is serving.
        if !matches!(r.get("nginx"), Some("active") | Some("reloading")) {
            problems.push(format!(
                "nginx is {}",
                r.get("nginx").unwrap_or("(missing)")
            ));
        }
        if !problems.is_empty() {
            bail!("{}", problems.join("; "));
        }
        Ok(())
    }

    /// The running machine (its console, QMP, whether it has exited).
    pub fn machine(&self) -> &Machine {
        self.machine
            .as_ref()
            .expect("a session holds its machine until it ends")
    }

    /// Runs one step of the scenario. Its error names the boot and the step and carries the
    /// diagnostics; the caller returns it, which drops the session and powers the machine off.
    pub fn step<T>(&self, what: &str, f: impl FnOnce(&Session) -> Result<T>) -> Result<T> {
        f(self).map_err(|e| anyhow!("{}: {what}: {e:#}\n{}", self.name, self.diagnostics()))
    }

    /// The step every scenario starts with: SSH lets the scenario's key in.
    pub fn wait_for_ssh(&self) -> Result<()> {
        self.step("SSH lets the key in", |s| {
            s.ssh.wait_until_up(Duration::from_secs(120))
        })
    }

    /// Console tail, QEMU's stderr and the machine's own account over SSH.
    pub fn diagnostics(&self) -> String {
        self.machine().diagnostics() + &guest_diagnostics(&self.ssh)
    }

    /// Ends the session with an ACPI power-off request, so /data is unmounted cleanly.
    pub fn power_off_cleanly(mut self) -> Result<()> {
        let name = self.name.clone();
        scenarios::power_off_cleanly(self.take_machine()).with_context(|| name)
    }

    /// Ends the session by pulling the plug (QMP `quit`).
    pub fn cut_power(mut self) -> Result<()> {
        self.take_machine()
            .power_off()
            .with_context(|| format!("{}: cutting the power", self.name))?;
        Ok(())
    }

    /// Ends the session once the machine powers itself off within `timeout`; `what` says why
    /// it should.
    pub fn wait_for_power_off(mut self, what: &str, timeout: Duration) -> Result<()> {
        let machine = self.take_machine();
        machine
            .wait_for_exit(timeout)
            .with_context(|| format!("{}: {what}", self.name))?;
        Ok(())
    }

    fn take_machine(&mut self) -> Machine {
        self.machine
            .take()
            .expect("a session holds its machine until it ends")
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let Some(machine) = self.machine.take() else {
            return;
        };
        if std::thread::panicking() {
            eprintln!(
                "{}: the test panicked while the machine ran\n{}{}",
                self.name,
                machine.diagnostics(),
                guest_diagnostics(&self.ssh)
            );
        }
        let _ = machine.power_off();
    }
}
