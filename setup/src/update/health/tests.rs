use std::cell::RefCell;
use std::path::Path;
use std::rc::Rc;

use super::*;
use crate::paths::Paths;
use crate::runner::RecordingRunner;
use crate::update::apply;
use crate::update::record::UpdateRecord;
use crate::update::slots::tests::set_running;
use crate::update::testing::{self, make_bundle, Answers, BundleSpec};
use appliance_spec::Slot;

const QUICK: Patience = Patience {
    attempts: 2,
    interval: Duration::from_millis(0),
};

fn ctx_run<T>(
    paths: &Paths,
    runner: &mut RecordingRunner,
    from_boot: bool,
    f: impl FnOnce(&mut Ctx) -> Result<T>,
) -> (Result<T>, String) {
    let mut out = Vec::new();
    let r = f(&mut Ctx {
        paths,
        runner,
        out: &mut out,
        from_boot,
    });
    (r, String::from_utf8(out).unwrap())
}

/// A machine on version 1.0.0 in slot A with version 2.0.0 armed in slot B.
fn armed(root: &Path) -> Paths {
    let paths = testing::machine(root, Slot::A, "1.0.0");
    let (bundle, _) = make_bundle(root, &BundleSpec::new("2.0.0"));
    let (r, _) = ctx_run(&paths, &mut testing::runner(Rc::default()), false, |ctx| {
        apply::run(
            ctx,
            &bundle.display().to_string(),
            apply::Options::default(),
        )
    });
    r.unwrap();
    paths
}

/// The firmware boots slot `slot` running `version`.
fn boots(paths: &Paths, slot: Slot, version: &str) {
    set_running(paths, slot);
    testing::set_version(paths, version);
}

fn health(paths: &Paths, answers: &Rc<RefCell<Answers>>) -> (Outcome, String, Vec<String>) {
    let mut runner = testing::runner(answers.clone());
    let (r, out) = ctx_run(paths, &mut runner, true, |ctx| run(ctx, QUICK));
    (r.unwrap(), out, runner.lines())
}

fn record(paths: &Paths) -> UpdateRecord {
    UpdateRecord::load(&paths.update_record()).unwrap()
}

#[test]
fn a_healthy_trial_is_committed_everywhere() {
    let d = tempfile::tempdir().unwrap();
    let paths = armed(d.path());
    testing::firmware_spends_try(&paths);
    boots(&paths, Slot::B, "2.0.0");
    let answers = Rc::default();
    let (outcome, out, commands) = health(&paths, &answers);
    assert_eq!(outcome, Outcome::Committed);
    assert!(
        out.contains("update: version 2.0.0 (slot b) is on trial"),
        "{out}"
    );
    assert!(
        out.contains("update: version 2.0.0 (slot b) is healthy and committed"),
        "{out}"
    );
    assert!(
        !commands.iter().any(|c| c.contains("reboot")),
        "{commands:?}"
    );
    assert_eq!(
        testing::entry_names(&paths),
        ["appliance-0001-a.conf", "appliance-0002-b.conf"]
    );
    let env = testing::grub_env(&paths);
    assert_eq!(
        (env.trial, env.order[0], env.b.ok, env.b.tried),
        (None, Slot::B, true, false)
    );
    let r = record(&paths);
    assert_eq!(r.attempt.unwrap().state, AttemptState::Committed);
    assert_eq!(r.slots["b"].version, "2.0.0");
    assert_eq!(r.slots["a"].version, "1.0.0");
    // The next boots are ordinary: nothing to decide, nothing written.
    let before = testing::snapshot(&paths.root);
    let (outcome, out, _) = health(&paths, &answers);
    assert_eq!(outcome, Outcome::Nothing);
    assert!(out.is_empty(), "{out}");
    assert_eq!(testing::snapshot(&paths.root), before);
}

#[test]
fn an_unhealthy_trial_restarts_into_the_previous_slot_which_says_why() {
    let d = tempfile::tempdir().unwrap();
    let paths = armed(d.path());
    testing::firmware_spends_try(&paths);
    boots(&paths, Slot::B, "2.0.0");
    let answers = Rc::new(RefCell::new(Answers {
        failed_units: "nginx.service loaded failed failed A high performance web server\n".into(),
        inactive: vec!["nginx.service".into()],
        ..Answers::default()
    }));
    let (outcome, out, commands) = health(&paths, &answers);
    let Outcome::RolledBack(reason) = outcome else {
        panic!("{outcome:?}\n{out}");
    };
    assert!(reason.contains("failed units: nginx.service"), "{reason}");
    assert!(reason.contains("nginx.service is failed"), "{reason}");
    assert!(
        out.contains("update: restarting into version 1.0.0 (slot a)"),
        "{out}"
    );
    assert_eq!(commands.last().unwrap(), "systemctl --no-block reboot");
    // systemd-boot's entry keeps no tries (it sorts last), GRUB's slot is off.
    assert_eq!(
        testing::entry_names(&paths),
        ["appliance-0001-a.conf", "appliance-0002-b+0-1.conf"]
    );
    assert!(!testing::grub_env(&paths).b.ok);
    let r = record(&paths);
    assert_eq!(r.attempt.as_ref().unwrap().state, AttemptState::Failed);
    assert_eq!(r.failed_versions, ["2.0.0"]);
    // The firmware starts slot A; its health check says why, once, and never restarts.
    boots(&paths, Slot::A, "1.0.0");
    let healthy = Rc::default();
    let (outcome, out, commands) = health(&paths, &healthy);
    assert!(
        matches!(outcome, Outcome::RecordedFailure(_)),
        "{outcome:?}"
    );
    assert!(out.contains("update: version 2.0.0 did not become the running system: not healthy on its trial boot: failed units: nginx.service"), "{out}");
    assert!(out.contains("version 1.0.0 (slot a) runs"), "{out}");
    assert!(!commands.iter().any(|c| c.contains("reboot")));
    let (outcome, out, _) = health(&paths, &healthy);
    assert_eq!(outcome, Outcome::Nothing, "{out}");
}

#[test]
fn a_failed_unit_ends_the_wait_at_the_second_check_and_a_starting_one_does_not() {
    let d = tempfile::tempdir().unwrap();
    let paths = armed(d.path());
    let patient = Patience {
        attempts: 37,
        interval: Duration::from_millis(0),
    };
    let checks = |answers: Answers| {
        let mut runner = testing::runner(Rc::new(RefCell::new(answers)));
        let (problems, _) = ctx_run(&paths, &mut runner, true, |ctx| {
            Ok(assess_until(ctx, patient))
        });
        let n = runner
            .lines()
            .iter()
            .filter(|l| l.contains("--state=failed"))
            .count();
        (problems.unwrap(), n)
    };
    let (problems, n) = checks(Answers {
        failed_units: "appliance-test.service loaded failed failed A unit\n".into(),
        ..Answers::default()
    });
    assert_eq!(n, 2, "{problems:?}");
    assert_eq!(problems, ["failed units: appliance-test.service"]);
    // nginx still starting: all the patience is used.
    let (problems, n) = checks(Answers {
        inactive: vec!["nginx.service".into()],
        ..Answers::default()
    });
    assert_eq!(n, 37, "{problems:?}");
}

#[test]
fn a_trial_that_never_reported_is_recorded_by_the_previous_slot() {
    let d = tempfile::tempdir().unwrap();
    let paths = armed(d.path());
    // systemd-boot spent the try; the kernel panicked; after the reset slot A boots.
    testing::firmware_spends_try(&paths);
    let (outcome, out, _) = health(&paths, &Rc::default());
    let Outcome::RecordedFailure(reason) = outcome else {
        panic!("{outcome:?}");
    };
    assert!(
        reason.contains("did not start, or stopped before its health check"),
        "{reason}"
    );
    assert!(
        out.contains("update: version 2.0.0 did not become the running system"),
        "{out}"
    );
    assert!(
        !testing::grub_env(&paths).b.ok,
        "GRUB does not try it either"
    );
    assert_eq!(record(&paths).attempt.unwrap().state, AttemptState::Failed);
}

#[test]
fn an_armed_trial_waits_for_the_restart() {
    let d = tempfile::tempdir().unwrap();
    let paths = armed(d.path());
    let (outcome, out, _) = health(&paths, &Rc::default());
    assert_eq!(outcome, Outcome::Waiting);
    assert!(out.contains("version 2.0.0 waits in slot b"), "{out}");
    assert_eq!(record(&paths).attempt.unwrap().state, AttemptState::Armed);
}

#[test]
fn a_power_cut_while_writing_is_recorded_and_slot_b_stays_off() {
    let d = tempfile::tempdir().unwrap();
    let paths = armed(d.path());
    // As if the power went while slot B was written: the record says so, the ESP has no
    // entry for it (apply removed it before writing).
    let mut r = record(&paths);
    r.attempt.as_mut().unwrap().state = AttemptState::Writing;
    r.save(&paths.update_record()).unwrap();
    let entries = paths.esp_mount().join("loader/entries");
    std::fs::remove_file(entries.join("appliance-0002-b+1.conf")).unwrap();
    let (outcome, out, _) = health(&paths, &Rc::default());
    let Outcome::RecordedFailure(reason) = outcome else {
        panic!("{outcome:?}");
    };
    assert!(
        reason.contains("the installation was interrupted"),
        "{reason}"
    );
    assert!(out.contains("version 1.0.0 (slot a) runs"), "{out}");
    assert!(!testing::grub_env(&paths).b.ok);
}

#[test]
fn an_unhealthy_committed_system_is_never_restarted() {
    let d = tempfile::tempdir().unwrap();
    let paths = testing::machine(d.path(), Slot::A, "1.0.0");
    let answers = Rc::new(RefCell::new(Answers {
        failed_units: "coturn.service loaded failed failed\n".into(),
        ..Answers::default()
    }));
    let (outcome, _, commands) = health(&paths, &answers);
    assert_eq!(outcome, Outcome::Nothing);
    assert!(
        !commands
            .iter()
            .any(|c| c.contains("reboot") || c.contains(" rw,")),
        "{commands:?}"
    );
}

#[test]
fn bios_trials_use_grubenv() {
    let d = tempfile::tempdir().unwrap();
    let paths = armed(d.path());
    std::fs::remove_dir_all(paths.at("/sys/firmware/efi")).unwrap();
    // GRUB picks slot B and marks the try before it boots it.
    assert_eq!(testing::grub_boots(&paths), Slot::B);
    boots(&paths, Slot::B, "2.0.0");
    // The services take a while: the first check finds nginx still starting.
    let answers = Rc::new(RefCell::new(Answers {
        inactive: vec!["nginx.service".into()],
        ..Answers::default()
    }));
    let shared = answers.clone();
    let mut runner = RecordingRunner::with_handler({
        let mut inner = testing::runner(answers.clone());
        move |cmd| {
            let out = crate::runner::Runner::run(&mut inner, cmd);
            if cmd.line() == "systemctl is-active nginx.service" {
                shared.borrow_mut().inactive.clear();
            }
            out
        }
    });
    let (r, out) = ctx_run(&paths, &mut runner, true, |ctx| run(ctx, QUICK));
    assert_eq!(r.unwrap(), Outcome::Committed, "{out}");
    let env = testing::grub_env(&paths);
    assert_eq!(
        (env.trial, env.b.tried, env.order[0]),
        (None, false, Slot::B)
    );
    assert_eq!(
        testing::grub_boots(&paths),
        Slot::B,
        "committed: it boots again"
    );
    // A failed GRUB trial: the env keeps b tried, so GRUB boots slot A.
    let d = tempfile::tempdir().unwrap();
    let paths = armed(d.path());
    std::fs::remove_dir_all(paths.at("/sys/firmware/efi")).unwrap();
    assert_eq!(testing::grub_boots(&paths), Slot::B);
    assert_eq!(testing::grub_boots(&paths), Slot::A, "one try only");
    let (outcome, _, _) = health(&paths, &Rc::default());
    assert!(
        matches!(outcome, Outcome::RecordedFailure(_)),
        "{outcome:?}"
    );
}

#[test]
fn raspberry_pi_trials_follow_the_tryboot_flag() {
    let d = tempfile::tempdir().unwrap();
    let paths = testing::machine(d.path(), Slot::A, "1.0.0");
    std::fs::remove_dir_all(paths.at("/sys/firmware/efi")).unwrap();
    let esp = paths.esp_mount();
    std::fs::write(
        esp.join("config.txt"),
        appliance_spec::bootcfg::raspberry_pi::config_txt(Slot::A),
    )
    .unwrap();
    let flag = paths.at(appliance_spec::bootcfg::raspberry_pi::TRYBOOT_FLAG);
    std::fs::create_dir_all(flag.parent().unwrap()).unwrap();
    std::fs::write(&flag, [0, 0, 0, 0]).unwrap();
    let slot_mount = paths.slot_mount();
    let mut runner = RecordingRunner::with_handler(move |cmd| {
        if cmd.program == "mount" && cmd.args[1] == "squashfs" {
            let dir = slot_mount.join("usr/lib/linux-image-6.1.0-test/broadcom");
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("bcm2711-rpi-4-b.dtb"), "dtb").unwrap();
        }
        Ok(crate::runner::Output {
            success: true,
            ..Default::default()
        })
    });
    let (bundle, _) = make_bundle(d.path(), &BundleSpec::new("2.0.0"));
    let (r, _) = ctx_run(&paths, &mut runner, false, |ctx| {
        apply::run(
            ctx,
            &bundle.display().to_string(),
            apply::Options {
                reboot: true,
                ..Default::default()
            },
        )
    });
    r.unwrap();
    assert_eq!(runner.lines().last().unwrap(), "systemctl reboot 0 tryboot");
    // The firmware read tryboot.txt: slot B runs with the flag set.
    std::fs::write(&flag, [0, 0, 0, 1]).unwrap();
    boots(&paths, Slot::B, "2.0.0");
    let (outcome, _, _) = health(&paths, &Rc::default());
    assert_eq!(outcome, Outcome::Committed);
    let config = std::fs::read_to_string(esp.join("config.txt")).unwrap();
    assert!(config.contains("os_prefix=appliance-b/"), "{config}");
    assert!(!esp.join("tryboot.txt").exists());
    // A trial reset by the hardware: config.txt boots slot A, the flag is clear.
    let d = tempfile::tempdir().unwrap();
    let paths = testing::machine(d.path(), Slot::A, "1.0.0");
    std::fs::remove_dir_all(paths.at("/sys/firmware/efi")).unwrap();
    std::fs::create_dir_all(paths.at("/proc/device-tree/chosen/bootloader")).unwrap();
    let mut r = record(&paths);
    r.attempt = Some(crate::update::record::Attempt {
        version: "2.0.0".into(),
        from_version: "1.0.0".into(),
        slot: "b".into(),
        from_slot: "a".into(),
        generation: 2,
        state: AttemptState::Rebooting,
        started: 1,
        finished: None,
        reason: None,
        signer: None,
        reported: false,
    });
    r.save(&paths.update_record()).unwrap();
    std::fs::write(
        paths.esp_mount().join("config.txt"),
        appliance_spec::bootcfg::raspberry_pi::config_txt(Slot::A),
    )
    .unwrap();
    std::fs::write(
        paths.esp_mount().join("tryboot.txt"),
        appliance_spec::bootcfg::raspberry_pi::config_txt(Slot::B),
    )
    .unwrap();
    let (outcome, _, _) = health(&paths, &Rc::default());
    assert!(
        matches!(outcome, Outcome::RecordedFailure(ref why) if why.contains("Raspberry Pi started the previous version")),
        "{outcome:?}"
    );
    assert!(!paths.esp_mount().join("tryboot.txt").exists());
}
