//! `appliance-admin update rollback`: the other slot, which ran here before and was not
//! overwritten since, becomes the one that boots (a new generation for systemd-boot, first in
//! GRUB's order, config.txt on the Pi). It takes effect at the next restart.

use anyhow::{bail, Result};
use appliance_spec::bootcfg::systemd_boot;

use super::bootconfig::SlotBootState;
use super::record::{now, Attempt, AttemptState};
use super::{load_record, reboot, with_esp, Machine};
use crate::schema;
use crate::steps::Ctx;

/// `update rollback [--reboot]`.
pub fn run(ctx: &mut Ctx, restart: bool) -> Result<()> {
    let machine = Machine::load(ctx.paths)?;
    let mut record = load_record(ctx.paths)?;
    let running = machine.running.slot;
    let other = running.other();
    if let Some(a) = record.attempt.as_ref().filter(|a| !a.state.is_over()) {
        bail!(
            "an update to version {} is not finished ({:?}); wait until it is committed or has failed (appliance-admin update status)",
            a.version,
            a.state
        );
    }
    let Some(previous) = record.slot(other).cloned() else {
        bail!("slot {other} holds no system that ran here: it is empty, or was written by an update that did not succeed. Nothing was changed");
    };
    let data = schema::current(ctx.paths)?;
    if previous.data_schema < data {
        bail!(
            "version {} in slot {other} knows the /data layout {} only, and /data is at {data}: it would not start the meeting services. Nothing was changed",
            previous.version,
            previous.data_schema
        );
    }
    let firmware = machine.firmware;
    let from_record = record.attempt.as_ref().map_or(0, |a| a.generation + 1);
    let generation = with_esp(ctx, &machine.running.disk, true, |_, esp| {
        let state = esp.state(firmware, other)?;
        if state != SlotBootState::Good {
            bail!("the boot configuration does not let slot {other} start ({state:?}); nothing was changed");
        }
        let generation = systemd_boot::next_generation(&esp.entries()?).max(from_record);
        esp.make_default(other, generation)?;
        Ok(generation)
    })?;
    record.attempt = Some(Attempt {
        version: previous.version.clone(),
        from_version: machine.release.version.to_string(),
        slot: other.to_string(),
        from_slot: running.to_string(),
        generation,
        state: AttemptState::RolledBack,
        started: now(),
        finished: Some(now()),
        reason: Some("update rollback".into()),
        signer: None,
        reported: false,
    });
    record.save(&ctx.paths.update_record())?;
    if restart {
        ctx.say(&format!(
            "update: restarting into version {} (slot {other})",
            previous.version
        ));
        reboot(ctx, firmware, false)
    } else {
        ctx.say(&format!(
            "update: version {} (slot {other}) starts at the next restart: sudo systemctl reboot",
            previous.version
        ));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::rc::Rc;

    use super::*;
    use crate::update::record::UpdateRecord;
    use crate::update::slots::tests::set_running;
    use crate::update::testing::{self, make_bundle, BundleSpec};
    use crate::update::{apply, health};
    use appliance_spec::Slot;

    fn in_ctx<T>(
        paths: &crate::paths::Paths,
        f: impl FnOnce(&mut Ctx) -> Result<T>,
    ) -> (Result<T>, Vec<String>) {
        let mut runner = testing::runner(Rc::default());
        let mut out = Vec::new();
        let r = f(&mut Ctx {
            paths,
            runner: &mut runner,
            out: &mut out,
            from_boot: false,
        });
        (r, runner.lines())
    }

    #[test]
    fn the_previous_version_becomes_the_default_again() {
        let d = tempfile::tempdir().unwrap();
        let paths = testing::machine(d.path(), Slot::A, "1.0.0");
        // Nothing in slot B yet.
        let e = in_ctx(&paths, |ctx| run(ctx, false))
            .0
            .unwrap_err()
            .to_string();
        assert!(e.contains("slot b holds no system that ran here"), "{e}");
        // 2.0.0 installed into slot B, tried and committed.
        let (bundle, _) = make_bundle(d.path(), &BundleSpec::new("2.0.0"));
        in_ctx(&paths, |ctx| {
            apply::run(
                ctx,
                &bundle.display().to_string(),
                apply::Options::default(),
            )
        })
        .0
        .unwrap();
        testing::firmware_spends_try(&paths);
        set_running(&paths, Slot::B);
        testing::set_version(&paths, "2.0.0");
        in_ctx(&paths, |ctx| health::run(ctx, health::Patience::default()))
            .0
            .unwrap();
        // Back to 1.0.0.
        let (r, commands) = in_ctx(&paths, |ctx| run(ctx, true));
        r.unwrap();
        assert_eq!(commands.last().unwrap(), "systemctl reboot");
        assert_eq!(
            testing::entry_names(&paths),
            ["appliance-0002-b.conf", "appliance-0003-a.conf"]
        );
        let env = testing::grub_env(&paths);
        assert_eq!(env.order[0], Slot::A);
        let record = UpdateRecord::load(&paths.update_record()).unwrap();
        let a = record.attempt.unwrap();
        assert_eq!(
            (a.state, a.version.as_str(), a.slot.as_str(), a.generation),
            (AttemptState::RolledBack, "1.0.0", "a", 3)
        );
        // Slot A starts: an ordinary boot, and the other slot can be gone back to again.
        set_running(&paths, Slot::A);
        testing::set_version(&paths, "1.0.0");
        let (outcome, _) = in_ctx(&paths, |ctx| health::run(ctx, health::Patience::default()));
        assert_eq!(outcome.unwrap(), health::Outcome::Nothing);
        in_ctx(&paths, |ctx| run(ctx, false)).0.unwrap();
        assert_eq!(
            testing::entry_names(&paths),
            ["appliance-0003-a.conf", "appliance-0004-b.conf"]
        );
    }

    #[test]
    fn a_slot_whose_trial_failed_is_not_gone_back_to() {
        let d = tempfile::tempdir().unwrap();
        let paths = testing::machine(d.path(), Slot::A, "1.0.0");
        let (bundle, _) = make_bundle(d.path(), &BundleSpec::new("2.0.0"));
        in_ctx(&paths, |ctx| {
            apply::run(
                ctx,
                &bundle.display().to_string(),
                apply::Options::default(),
            )
        })
        .0
        .unwrap();
        let e = in_ctx(&paths, |ctx| run(ctx, false))
            .0
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("an update to version 2.0.0 is not finished"),
            "{e}"
        );
        testing::firmware_spends_try(&paths);
        in_ctx(&paths, |ctx| health::run(ctx, health::Patience::default()))
            .0
            .unwrap();
        let e = in_ctx(&paths, |ctx| run(ctx, false))
            .0
            .unwrap_err()
            .to_string();
        assert!(e.contains("slot b holds no system that ran here"), "{e}");
    }
}
