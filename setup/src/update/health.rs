//! `appliance-admin update health`, run at every boot by appliance-update-health.service once
//! the boot is over (after multi-user.target and the boot report).
//!
//! On a trial boot (the firmware says the running slot is on trial) it decides: the machine is
//! healthy when no unit failed, dm-verity verifies the root and the services that must run
//! are active (nginx; after setup also prosody and coturn). Healthy: the slot is committed in
//! every boot loader's configuration and boots from now on. Not healthy: the reason is
//! recorded, the slot is rejected, and the machine restarts; the firmware has spent the trial,
//! so the previous slot boots.
//!
//! On any other boot it settles the record: an attempt whose slot is not running was
//! interrupted or failed its trial (the previous system reads why), and no loader boots that
//! slot again. A committed system is never restarted by this check.

use std::time::Duration;

use anyhow::Result;
use appliance_spec::bootcfg::raspberry_pi::TRYBOOT_FLAG;

use super::bootconfig::{booted_tryboot, Firmware, SlotBootState};
use super::record::{AttemptState, UpdateRecord};
use super::{load_record, with_esp, Machine};
use crate::runner::Cmd;
use crate::steps::Ctx;

/// How long a trial boot may take to become healthy.
#[derive(Debug, Clone, Copy)]
pub struct Patience {
    pub attempts: u32,
    pub interval: Duration,
}

impl Default for Patience {
    /// Services may still be starting when the boot report is printed: up to three minutes.
    fn default() -> Patience {
        Patience {
            attempts: 37,
            interval: Duration::from_secs(5),
        }
    }
}

/// How [`assess`] starts the problem that lists the failed units.
const FAILED_UNITS: &str = "failed units: ";

/// What one health check found wrong; empty when healthy.
pub fn assess(ctx: &mut Ctx) -> Vec<String> {
    let mut problems = Vec::new();
    match ctx.runner.run(&Cmd::new("systemctl").args([
        "list-units",
        "--state=failed",
        "--plain",
        "--no-legend",
    ])) {
        Ok(out) => {
            let failed: Vec<&str> = out
                .stdout
                .lines()
                .filter_map(|l| l.split_whitespace().next())
                .collect();
            if !failed.is_empty() {
                problems.push(format!("{FAILED_UNITS}{}", failed.join(", ")));
            }
        }
        Err(e) => problems.push(format!("cannot list the failed units: {e:#}")),
    }
    match ctx
        .runner
        .run(&Cmd::new("dmsetup").args(["status", "root"]))
    {
        Ok(out) if out.success && out.stdout.contains(" verity V") => {}
        Ok(out) => problems.push(format!(
            "dm-verity does not report the root as verified ({})",
            out.stdout.trim()
        )),
        Err(e) => problems.push(format!("cannot ask dm-verity: {e:#}")),
    }
    let services: &[&str] = if ctx.paths.setup_done().exists() {
        &["nginx.service", "prosody.service", "coturn.service"]
    } else {
        &["nginx.service"]
    };
    for unit in services {
        let state = ctx
            .runner
            .run(&Cmd::new("systemctl").args(["is-active", unit]))
            .map(|o| o.stdout.trim().to_string())
            .unwrap_or_else(|e| format!("{e:#}"));
        if state != "active" {
            problems.push(format!("{unit} is {state}"));
        }
    }
    problems
}

/// [`assess`] until healthy or out of patience; the last problems found. A failed unit ends
/// the wait once a second check still finds it: systemd does not start a failed unit again by
/// itself (one it restarts is "activating" between tries, not failed), so waiting the full
/// three minutes would only delay the return to the previous version.
pub fn assess_until(ctx: &mut Ctx, patience: Patience) -> Vec<String> {
    let has_failed_units = |p: &[String]| p.iter().any(|x| x.starts_with(FAILED_UNITS));
    let mut problems = assess(ctx);
    for _ in 1..patience.attempts.max(1) {
        if problems.is_empty() {
            break;
        }
        std::thread::sleep(patience.interval);
        let failed_before = has_failed_units(&problems);
        problems = assess(ctx);
        if failed_before && has_failed_units(&problems) {
            break;
        }
    }
    problems
}

/// What this boot did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Not a verified A/B boot, or nothing to decide.
    Nothing,
    Committed,
    /// Unhealthy on trial: restarting into the previous slot.
    RolledBack(String),
    /// An attempt was found failed or interrupted (running the previous slot).
    RecordedFailure(String),
    /// An armed trial waits for a restart.
    Waiting,
}

/// `update health`.
pub fn run(ctx: &mut Ctx, patience: Patience) -> Result<Outcome> {
    let Ok(machine) = Machine::load(ctx.paths) else {
        // Not an updatable system (no release file, no verified root): nothing to decide.
        return Ok(Outcome::Nothing);
    };
    let running = machine.running.slot;
    let firmware = machine.firmware;
    let tryboot = firmware == Firmware::RaspberryPi && booted_tryboot(&ctx.paths.at(TRYBOOT_FLAG));
    let (own, target_state) = with_esp(ctx, &machine.running.disk, false, |_, esp| {
        Ok((
            esp.state(firmware, running)?,
            esp.state(firmware, running.other())?,
        ))
    })?;
    let on_trial = match firmware {
        Firmware::RaspberryPi => tryboot,
        _ => matches!(own, SlotBootState::Armed | SlotBootState::Tried),
    };
    let mut record = load_record(ctx.paths)?;
    if on_trial {
        return decide_trial(ctx, &machine, &mut record, patience);
    }
    settle(ctx, &machine, &mut record, target_state)
}

fn decide_trial(
    ctx: &mut Ctx,
    machine: &Machine,
    record: &mut UpdateRecord,
    patience: Patience,
) -> Result<Outcome> {
    let running = machine.running.slot;
    let version = machine.release.version.to_string();
    ctx.say(&format!(
        "update: version {version} (slot {running}) is on trial; checking that it is healthy"
    ));
    let problems = assess_until(ctx, patience);
    let path = ctx.paths.update_record();
    if record.attempt.as_ref().and_then(|a| a.target()) != Some(running) {
        // The record was lost or is older than the boot configuration: describe this trial.
        record.attempt = Some(super::record::Attempt {
            version: version.clone(),
            from_version: record
                .slot(running.other())
                .map_or("unknown".into(), |s| s.version.clone()),
            slot: running.to_string(),
            from_slot: running.other().to_string(),
            generation: 0,
            state: AttemptState::Rebooting,
            started: super::record::now(),
            finished: None,
            reason: None,
            signer: None,
            reported: false,
        });
    }
    if problems.is_empty() {
        with_esp(ctx, &machine.running.disk, true, |_, esp| {
            esp.commit(running)
        })?;
        record.set_slot(running, machine.running_record());
        record.finish(AttemptState::Committed, None);
        record.save(&path)?;
        ctx.say(&format!(
            "update: version {version} (slot {running}) is healthy and committed: it starts from now on"
        ));
        return Ok(Outcome::Committed);
    }
    let reason = format!("not healthy on its trial boot: {}", problems.join("; "));
    record.finish(AttemptState::Failed, Some(reason.clone()));
    record.save(&path)?;
    ctx.say(&format!(
        "update: version {version} (slot {running}) is {reason}"
    ));
    with_esp(ctx, &machine.running.disk, true, |_, esp| {
        esp.reject(running)
    })?;
    let previous = record
        .attempt
        .as_ref()
        .map_or("the previous version".into(), |a| a.from_version.clone());
    ctx.say(&format!(
        "update: restarting into version {previous} (slot {})",
        running.other()
    ));
    super::reboot(ctx, machine.firmware, false)?;
    Ok(Outcome::RolledBack(reason))
}

/// A boot that is not a trial: settle an attempt that did not end on its own slot.
fn settle(
    ctx: &mut Ctx,
    machine: &Machine,
    record: &mut UpdateRecord,
    target_state: SlotBootState,
) -> Result<Outcome> {
    let running = machine.running.slot;
    let path = ctx.paths.update_record();
    let Some(attempt) = record.attempt.clone() else {
        return Ok(Outcome::Nothing);
    };
    let target = attempt.target();
    if attempt.state.is_over() {
        // The trial's own health check recorded its failure; say it once on the system that
        // came back, and make sure nothing boots that slot again.
        if attempt.state == AttemptState::Failed
            && target == Some(running.other())
            && attempt.from_slot == running.to_string()
            && !attempt.reported
        {
            let reason = attempt.reason.clone().unwrap_or_default();
            let slot = running.other();
            with_esp(ctx, &machine.running.disk, true, |_, esp| esp.reject(slot))?;
            if let Some(a) = &mut record.attempt {
                a.reported = true;
            }
            record.save(&path)?;
            ctx.say(&format!(
                "update: version {} did not become the running system: {reason}; version {} (slot {running}) runs",
                attempt.version, machine.release.version
            ));
            return Ok(Outcome::RecordedFailure(reason));
        }
        return Ok(Outcome::Nothing);
    }
    if target == Some(running) {
        // Committed by the firmware's configuration, not in the record: a power cut between the
        // two. The configuration is what boots, so it is what the record says.
        record.set_slot(running, machine.running_record());
        record.finish(AttemptState::Committed, None);
        record.save(&path)?;
        ctx.say(&format!(
            "update: version {} (slot {running}) is committed",
            machine.release.version
        ));
        return Ok(Outcome::Committed);
    }
    let reason = match (attempt.state, target_state, machine.firmware) {
        (AttemptState::Writing, _, _) => {
            "the installation was interrupted (power cut or crash) before the new version was complete".to_string()
        }
        (_, SlotBootState::Tried, _) | (_, SlotBootState::NotBootable, _) => {
            "it did not start, or stopped before its health check (no report from its trial boot)".to_string()
        }
        (AttemptState::Rebooting, _, Firmware::RaspberryPi) => {
            "the Raspberry Pi started the previous version again (the trial did not start, or stopped before its health check)".to_string()
        }
        _ => {
            ctx.say(&format!(
                "update: version {} waits in slot {}; it starts at the next restart",
                attempt.version, attempt.slot
            ));
            return Ok(Outcome::Waiting);
        }
    };
    let slot = running.other();
    with_esp(ctx, &machine.running.disk, true, |_, esp| esp.reject(slot))?;
    record.finish(AttemptState::Failed, Some(reason.clone()));
    if let Some(a) = &mut record.attempt {
        a.reported = true;
    }
    record.save(&path)?;
    ctx.say(&format!(
        "update: version {} did not become the running system: {reason}; version {} (slot {running}) runs",
        attempt.version, machine.release.version
    ));
    Ok(Outcome::RecordedFailure(reason))
}

#[cfg(test)]
mod tests;
