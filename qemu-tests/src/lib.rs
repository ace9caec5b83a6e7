//! QEMU boot-test harness for appliance images: what `appliance test` and `appliance run` need,
//! and nothing that speaks to the network (the meeting-server checks, with their HTTPS, XMPP and
//! SSH clients, are the test-only crate `appliance-scenarios` in `scenarios/`).
//!
//! [`Machine`] runs one guest with its serial console on a socket that a background thread
//! reads into a shared buffer; [`boot_and_report`] boots an image until it prints its
//! `APPLIANCE-READY` line, which [`BootReport`] parses and checks. [`scenarios`] holds the
//! boot checks (first and second boot, tampered root), [`host`] runs host programs, and
//! [`test_image`] is the configuration of the image the cargo tests build.

pub mod accel;
pub mod console;
pub mod host;
pub mod interrupt;
pub mod machine;
pub mod scenarios;
pub mod test_image;
pub mod test_times;

use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};

pub use accel::{Accel, AccelChoice, HostProbe};
pub use appliance_spec::ready::{BootReport, Expect, READY_MARKER};
pub use console::ConsoleMatch;
pub use machine::{free_port, Arch, ExtraDisk, Firmware, Machine, MachineConfig};

/// Console lines that mean the boot has gone wrong. Seeing one does not stop the wait (a
/// `Failed to start` can be harmless), but they are reported if the marker never comes.
pub const TROUBLE_MARKERS: &[&str] = &[
    "Kernel panic",
    "You are in emergency mode",
    "Entering emergency mode",
    "Failed to start",
];

/// Starts `cfg`, waits up to `timeout` for the readiness line and parses it. Returns the
/// still-running machine, the report and the wall time from QEMU start to the marker.
pub fn boot_and_report(
    cfg: &MachineConfig,
    timeout: Duration,
) -> Result<(Machine, BootReport, Duration)> {
    let machine = Machine::start(cfg)?;
    let deadline = machine.started + timeout;
    let mut needles = vec![READY_MARKER];
    needles.extend_from_slice(TROUBLE_MARKERS);
    let mut trouble: Vec<String> = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match machine.wait_for_complete_line(&needles, left) {
            Ok(m) if m.index == 0 => {
                let elapsed = machine.started.elapsed();
                let report = BootReport::parse(&m.line)
                    .map_err(|e| anyhow!("{e:#}\n{}", machine.diagnostics()))?;
                return Ok((machine, report, elapsed));
            }
            Ok(m) => trouble.push(m.line),
            Err(e) if trouble.is_empty() => return Err(e),
            Err(e) => {
                return Err(anyhow!(
                    "{e:#}\n--- trouble seen on the console before that ---\n{}",
                    trouble.join("\n")
                ))
            }
        }
    }
}
