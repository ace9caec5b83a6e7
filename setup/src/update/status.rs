//! `appliance-admin update status [--json]`: which version runs from which slot, what the other
//! slot holds and whether it can boot, what boots next, and how the last attempt ended.

use anyhow::Result;
use serde::Serialize;

use super::bootconfig::{Firmware, SlotBootState};
use super::record::{format_time, Attempt, AttemptState};
use super::{load_record, with_esp, Machine};
use crate::lock;
use crate::schema;
use crate::steps::Ctx;

#[derive(Debug, Clone, Serialize)]
pub struct SlotStatus {
    pub slot: String,
    /// What the slot holds, as far as this machine knows.
    pub version: Option<String>,
    /// What the firmware's boot configuration says about it; `None` when it was not read.
    pub boot: Option<SlotBootState>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub firmware: Firmware,
    pub running: SlotStatus,
    pub other: SlotStatus,
    /// The slot a plain restart boots.
    pub next_boot: Option<String>,
    pub attempt: Option<Attempt>,
    /// Why the boot configuration was not read, if it was not.
    pub boot_configuration_unread: Option<String>,
    /// The /data layout, and the one this version knows.
    pub data_schema: u32,
    pub image_data_schema: u32,
    pub channel: Option<String>,
    pub window: Option<String>,
    pub last_check: Option<u64>,
    pub last_check_result: Option<String>,
}

/// Gathers the status; reads the ESP only when no other appliance-admin runs.
pub fn gather(ctx: &mut Ctx) -> Result<Status> {
    let machine = Machine::load(ctx.paths)?;
    let record = load_record(ctx.paths)?;
    let running = machine.running.slot;
    let other = running.other();
    let firmware = machine.firmware;
    let boot = match lock::try_exclusive(ctx.paths)? {
        None => Err("another appliance-admin is changing the machine".to_string()),
        Some(_lock) => with_esp(ctx, &machine.running.disk, false, |_, esp| {
            Ok((
                esp.state(firmware, running)?,
                esp.state(firmware, other)?,
                esp.next_boot(firmware)?,
            ))
        })
        .map_err(|e| format!("{e:#}")),
    };
    let other_version = match &record.attempt {
        Some(a)
            if a.target() == Some(other)
                && matches!(
                    a.state,
                    AttemptState::Armed | AttemptState::Rebooting | AttemptState::Writing
                ) =>
        {
            Some(a.version.clone())
        }
        _ => record.slot(other).map(|s| s.version.clone()),
    };
    let (own, theirs, next) = match &boot {
        Ok((a, b, n)) => (Some(*a), Some(*b), n.map(|s| s.to_string())),
        Err(_) => (None, None, None),
    };
    Ok(Status {
        firmware,
        running: SlotStatus {
            slot: running.to_string(),
            version: Some(machine.release.version.to_string()),
            boot: own,
        },
        other: SlotStatus {
            slot: other.to_string(),
            version: other_version,
            boot: theirs,
        },
        next_boot: next,
        attempt: record.attempt.clone(),
        boot_configuration_unread: boot.err(),
        data_schema: schema::current(ctx.paths)?,
        image_data_schema: machine.release.data_schema,
        channel: machine.release.updates.url.clone(),
        window: machine.release.updates.window.clone(),
        last_check: record.last_check,
        last_check_result: record.last_check_result.clone(),
    })
}

fn boot_words(state: Option<SlotBootState>) -> &'static str {
    match state {
        None => "boot configuration not read",
        Some(SlotBootState::Good) => "can boot",
        Some(SlotBootState::Armed) => "armed: the next restart tries it once",
        Some(SlotBootState::Tried) => "on trial, not committed",
        Some(SlotBootState::NotBootable) => "does not boot",
    }
}

fn state_words(state: AttemptState) -> &'static str {
    match state {
        AttemptState::Writing => "being written (or interrupted while written)",
        AttemptState::Armed => "armed, waiting for a restart",
        AttemptState::Rebooting => "restarting into it",
        AttemptState::Committed => "committed",
        AttemptState::Failed => "failed",
        AttemptState::RolledBack => "rolled back by hand",
    }
}

/// The status in words.
pub fn render(s: &Status) -> String {
    let mut t = String::new();
    let version = |v: &Option<String>| v.clone().unwrap_or_else(|| "nothing known".into());
    t.push_str(&format!(
        "Running:   version {} from slot {} ({}), {}\n",
        version(&s.running.version),
        s.running.slot,
        s.firmware.name(),
        boot_words(s.running.boot)
    ));
    t.push_str(&format!(
        "Slot {}:    {}, {}\n",
        s.other.slot,
        s.other
            .version
            .as_ref()
            .map_or("holds nothing this machine installed".into(), |v| format!(
                "version {v}"
            )),
        boot_words(s.other.boot)
    ));
    if let Some(n) = &s.next_boot {
        t.push_str(&format!("Next boot: slot {n}\n"));
    }
    if let Some(why) = &s.boot_configuration_unread {
        t.push_str(&format!("Boot configuration: not read ({why})\n"));
    }
    match &s.attempt {
        None => t.push_str("Last update: none on this machine\n"),
        Some(a) => {
            t.push_str(&format!(
                "Last update: {} -> {} into slot {}: {} (started {}{})\n",
                a.from_version,
                a.version,
                a.slot,
                state_words(a.state),
                format_time(a.started),
                a.finished
                    .map_or(String::new(), |f| format!(", ended {}", format_time(f)))
            ));
            if let Some(r) = &a.reason {
                t.push_str(&format!("  why: {r}\n"));
            }
            if let Some(k) = &a.signer {
                t.push_str(&format!("  signed by: {k}\n"));
            }
        }
    }
    match &s.channel {
        None => t.push_str("Channel: none ([updates] url not set); install bundles with `appliance-admin update apply`\n"),
        Some(url) => {
            t.push_str(&format!(
                "Channel: {url}, restarts {}\n",
                s.window
                    .as_ref()
                    .map_or("at any time when no meeting is in progress".into(), |w| format!("between {w} when no meeting is in progress"))
            ));
            if let (Some(at), Some(r)) = (s.last_check, &s.last_check_result) {
                t.push_str(&format!("  last checked {}: {r}\n", format_time(at)));
            }
        }
    }
    t.push_str(&format!(
        "/data layout: {} (this version knows {})\n",
        s.data_schema, s.image_data_schema
    ));
    t
}

/// `update status`: printed on the context's output.
pub fn print(ctx: &mut Ctx, json: bool) -> Result<()> {
    let status = gather(ctx)?;
    if json {
        writeln!(ctx.out, "{}", serde_json::to_string_pretty(&status)?)?;
    } else {
        write!(ctx.out, "{}", render(&status))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::rc::Rc;

    use super::*;
    use crate::update::apply;
    use crate::update::testing::{self, make_bundle, BundleSpec};
    use appliance_spec::Slot;

    fn status(paths: &crate::paths::Paths, json: bool) -> String {
        let mut out = Vec::new();
        print(
            &mut Ctx {
                paths,
                runner: &mut testing::runner(Rc::default()),
                out: &mut out,
                from_boot: false,
            },
            json,
        )
        .unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn says_what_runs_what_waits_and_what_boots_next() {
        let d = tempfile::tempdir().unwrap();
        let paths = testing::machine(d.path(), Slot::A, "1.0.0");
        let text = status(&paths, false);
        assert!(
            text.contains("Running:   version 1.0.0 from slot a (UEFI (systemd-boot)), can boot"),
            "{text}"
        );
        assert!(
            text.contains("Slot b:    holds nothing this machine installed, does not boot"),
            "{text}"
        );
        assert!(text.contains("Last update: none on this machine"), "{text}");
        assert!(text.contains("Channel: none"), "{text}");
        let (bundle, _) = make_bundle(d.path(), &BundleSpec::new("2.0.0"));
        let mut out = Vec::new();
        apply::run(
            &mut Ctx {
                paths: &paths,
                runner: &mut testing::runner(Rc::default()),
                out: &mut out,
                from_boot: false,
            },
            &bundle.display().to_string(),
            apply::Options::default(),
        )
        .unwrap();
        let text = status(&paths, false);
        assert!(
            text.contains("Slot b:    version 2.0.0, armed: the next restart tries it once"),
            "{text}"
        );
        assert!(text.contains("Next boot: slot b"), "{text}");
        assert!(
            text.contains("Last update: 1.0.0 -> 2.0.0 into slot b: armed, waiting for a restart"),
            "{text}"
        );
        let json: serde_json::Value = serde_json::from_str(&status(&paths, true)).unwrap();
        assert_eq!(json["running"]["slot"], "a");
        assert_eq!(json["running"]["version"], "1.0.0");
        assert_eq!(json["running"]["boot"], "good");
        assert_eq!(json["other"]["version"], "2.0.0");
        assert_eq!(json["other"]["boot"], "armed");
        assert_eq!(json["next_boot"], "b");
        assert_eq!(json["firmware"], "uefi");
        assert_eq!(json["attempt"]["state"], "armed");
        assert_eq!(json["data_schema"], 1);
        // While another appliance-admin changes the machine, the ESP is not read.
        let _held = crate::lock::try_exclusive(&paths).unwrap().unwrap();
        let json: serde_json::Value = serde_json::from_str(&status(&paths, true)).unwrap();
        assert!(json["other"]["boot"].is_null());
        assert!(json["boot_configuration_unread"]
            .as_str()
            .unwrap()
            .contains("another appliance-admin"));
    }
}
