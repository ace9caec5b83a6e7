use std::cell::RefCell;
use std::rc::Rc;

use super::*;
use crate::paths::Paths;
use crate::runner::RecordingRunner;
use crate::update::record::UpdateRecord;
use crate::update::slots::tests::partuuid;
use crate::update::testing::{self, make_bundle, BundleSpec, PART_BYTES};
use appliance_spec::Arch;

fn apply_with(
    paths: &Paths,
    runner: &mut RecordingRunner,
    source: &Path,
    opts: Options,
) -> (Result<()>, String) {
    let mut out = Vec::new();
    let r = run(
        &mut Ctx {
            paths,
            runner,
            out: &mut out,
            from_boot: false,
        },
        &source.display().to_string(),
        opts,
    );
    (r, String::from_utf8(out).unwrap())
}

fn apply(paths: &Paths, source: &Path) -> (Result<()>, String, Vec<String>) {
    let mut runner = testing::runner(Rc::default());
    let (r, out) = apply_with(paths, &mut runner, source, Options::default());
    (r, out, runner.lines())
}

#[test]
fn a_bundle_is_written_read_back_and_armed_beside_the_running_slot() {
    let d = tempfile::tempdir().unwrap();
    let paths = testing::machine(d.path(), Slot::A, "1.0.0");
    let running_before = std::fs::read(paths.at("/dev/vda3")).unwrap();
    let (bundle, root_hash) = make_bundle(d.path(), &BundleSpec::new("2.0.0"));
    let (r, out, commands) = apply(&paths, &bundle);
    r.unwrap();
    // The slot's partitions hold the bundle's root and hash tree; slot A is untouched.
    let root_b = std::fs::read(paths.at("/dev/vda5")).unwrap();
    assert_eq!(
        root_b.len() as u64,
        PART_BYTES,
        "written in place, not replaced"
    );
    let verified = appliance_spec::verity::verify(
        &mut std::fs::File::open(paths.at("/dev/vda5")).unwrap(),
        &mut std::fs::File::open(paths.at("/dev/vda6")).unwrap(),
    )
    .unwrap();
    assert_eq!(hex::encode(verified), root_hash);
    assert_eq!(
        std::fs::read(paths.at("/dev/vda3")).unwrap(),
        running_before
    );
    // The ESP: slot B's kernel and initrd, GRUB's fragment, and the entry with one try.
    let esp = paths.esp_mount();
    assert_eq!(
        std::fs::read(esp.join("appliance-b/vmlinuz")).unwrap(),
        b"kernel 2.0.0"
    );
    assert_eq!(
        std::fs::read(esp.join("appliance-b/initrd.img")).unwrap(),
        b"initrd 2.0.0"
    );
    assert_eq!(
        testing::entry_names(&paths),
        ["appliance-0001-a.conf", "appliance-0002-b+1.conf"]
    );
    let entry =
        std::fs::read_to_string(esp.join("loader/entries/appliance-0002-b+1.conf")).unwrap();
    assert!(entry.starts_with("title meet 2.0.0 (slot b)\n"), "{entry}");
    assert!(entry.contains(&format!(
        "options roothash={root_hash} systemd.verity_root_data=PARTUUID={} systemd.verity_root_hash=PARTUUID={} ",
        partuuid("root-b"),
        partuuid("verity-b")
    )), "{entry}");
    let grub = std::fs::read_to_string(esp.join("appliance-b/grub.cfg")).unwrap();
    assert!(grub.contains(&format!("'roothash={root_hash}'")), "{grub}");
    let env = testing::grub_env(&paths);
    assert_eq!(env.trial, Some(Slot::B));
    assert_eq!(env.order, [Slot::B, Slot::A]);
    // The record.
    let record = UpdateRecord::load(&paths.update_record()).unwrap();
    let a = record.attempt.unwrap();
    assert_eq!(
        (a.state, a.version.as_str(), a.slot.as_str(), a.generation),
        (AttemptState::Armed, "2.0.0", "b", 2)
    );
    assert!(a.signer.unwrap().starts_with("SHA256:"));
    assert_eq!(record.slots["a"].version, "1.0.0");
    assert!(
        !record.slots.contains_key("b"),
        "slot b counts once committed"
    );
    // What it said, and that it restarted nothing; the ESP was mounted read-write only to
    // change it, and unmounted each time.
    for said in [
        "update: version 2.0.0 signed by SHA256:",
        "installing it into slot b (the running version 1.0.0 in slot a is not touched)",
        "update: writing root-b: 100 %",
        "update: reading slot b back from the disk",
        "armed for one trial boot",
        "starts at the next restart (sudo systemctl reboot)",
    ] {
        assert!(out.contains(said), "{said:?} missing from:\n{out}");
    }
    assert!(
        !commands.iter().any(|c| c.contains("reboot")),
        "{commands:?}"
    );
    let mounts: Vec<&String> = commands.iter().filter(|c| c.starts_with("mount")).collect();
    assert!(
        mounts[0].starts_with("mount -t vfat -o ro,"),
        "{commands:?}"
    );
    assert!(
        mounts[1..]
            .iter()
            .all(|m| m.starts_with("mount -t vfat -o rw,")),
        "{commands:?}"
    );
    assert!(
        mounts
            .iter()
            .all(|m| m.contains(&format!("{} ", paths.at("/dev/vda2").display()))),
        "the root disk's ESP: {commands:?}"
    );
    assert_eq!(
        mounts.len(),
        commands.iter().filter(|c| c.starts_with("umount")).count()
    );
}

#[test]
fn apply_with_reboot_restarts_into_the_trial() {
    let d = tempfile::tempdir().unwrap();
    let paths = testing::machine(d.path(), Slot::A, "1.0.0");
    let (bundle, _) = make_bundle(d.path(), &BundleSpec::new("2.0.0"));
    let mut runner = testing::runner(Rc::default());
    let (r, out) = apply_with(
        &paths,
        &mut runner,
        &bundle,
        Options {
            reboot: true,
            ..Options::default()
        },
    );
    r.unwrap();
    assert!(
        out.contains("restarting into version 2.0.0 (slot b)"),
        "{out}"
    );
    assert_eq!(runner.lines().last().unwrap(), "systemctl reboot");
    let record = UpdateRecord::load(&paths.update_record()).unwrap();
    assert_eq!(record.attempt.unwrap().state, AttemptState::Rebooting);
}

/// Every refusal happens before anything is written: the partitions, the ESP and /data are
/// exactly as they were.
#[test]
fn refused_bundles_write_nothing() {
    let d = tempfile::tempdir().unwrap();
    let bundles = tempfile::tempdir().unwrap();
    let good = BundleSpec::new("2.0.0");
    let (good_path, _) = make_bundle(bundles.path(), &good);
    let bytes = std::fs::read(&good_path).unwrap();
    let variant = |name: &str, change: &dyn Fn(&mut Vec<u8>)| {
        let mut b = bytes.clone();
        change(&mut b);
        let p = bundles.path().join(name);
        std::fs::write(&p, b).unwrap();
        p
    };
    let truncated = variant("truncated.update", &|b| b.truncate(b.len() - 3000));
    // The last 1024 bytes are the tar's end; before them, the initrd's data.
    let altered = variant("altered.update", &|b| {
        let at = b.len() - 1024 - 512 + 2;
        b[at] ^= 1;
    });
    let other_key = make_bundle(
        bundles.path(),
        &BundleSpec {
            signer: 9,
            version: "2.0.1",
            ..BundleSpec::new("")
        },
    )
    .0;
    let arm = make_bundle(
        bundles.path(),
        &BundleSpec {
            arch: Arch::Arm64,
            version: "2.0.2",
            ..BundleSpec::new("")
        },
    )
    .0;
    let other_name = make_bundle(
        bundles.path(),
        &BundleSpec {
            name: "other",
            ..BundleSpec::new("2.0.3")
        },
    )
    .0;
    let older = make_bundle(bundles.path(), &BundleSpec::new("0.9.0")).0;
    let too_big = make_bundle(
        bundles.path(),
        &BundleSpec {
            root_blocks: 300,
            version: "2.0.4",
            ..BundleSpec::new("")
        },
    )
    .0;
    let old_schema = make_bundle(
        bundles.path(),
        &BundleSpec {
            data_schema: 0,
            version: "2.0.5",
            ..BundleSpec::new("")
        },
    )
    .0;
    let cases: Vec<(PathBuf, &str)> = vec![
        (other_key, "not trusted here"),
        (truncated, "truncated"),
        (altered, "truncated or was changed"),
        (arm, "the bundle is for arm64, this machine is x86_64"),
        (other_name, "the bundle is for the image \"other\""),
        (
            older,
            "older than the running 1.0.0: refused (use --allow-downgrade",
        ),
        (too_big, "does not fit the partition root-b"),
        (
            old_schema,
            "reads the /data layout 0, but this machine's /data is at 1",
        ),
        (
            bundles.path().join("missing.update"),
            "cannot read the update bundle",
        ),
    ];
    for (bundle, expected) in cases {
        let paths = testing::machine(
            &d.path().join(bundle.file_name().unwrap()),
            Slot::A,
            "1.0.0",
        );
        let before = testing::snapshot(&paths.root);
        let (r, _, commands) = apply(&paths, &bundle);
        let e = format!("{:#}", r.unwrap_err());
        assert!(e.contains(expected), "{}: {e}", bundle.display());
        assert!(
            e.contains("nothing was written"),
            "{}: {e}",
            bundle.display()
        );
        assert_eq!(
            testing::snapshot(&paths.root),
            before,
            "{}: something changed",
            bundle.display()
        );
        assert!(commands.iter().all(|c| !c.contains(" rw,")), "{commands:?}");
    }
    // The older one goes in when asked for.
    let paths = testing::machine(&d.path().join("downgrade"), Slot::A, "1.0.0");
    let older = make_bundle(bundles.path(), &BundleSpec::new("0.9.0")).0;
    let (r, _) = apply_with(
        &paths,
        &mut testing::runner(Rc::default()),
        &older,
        Options {
            allow_downgrade: true,
            ..Options::default()
        },
    );
    r.unwrap();
}

#[test]
fn a_system_on_trial_or_the_running_version_is_not_overwritten() {
    let d = tempfile::tempdir().unwrap();
    let paths = testing::machine(d.path(), Slot::B, "2.0.0");
    // Slot B runs on trial: systemd-boot spent the try of its entry, no health check yet.
    let entries = paths.esp_mount().join("loader/entries");
    std::fs::write(entries.join("appliance-0002-b+0-1.conf"), "title b\n").unwrap();
    let (bundle, _) = make_bundle(d.path(), &BundleSpec::new("3.0.0"));
    let before = testing::snapshot(&paths.root);
    let (r, _, _) = apply(&paths, &bundle);
    let e = format!("{:#}", r.unwrap_err());
    assert!(e.contains("is on trial and not committed yet"), "{e}");
    assert_eq!(testing::snapshot(&paths.root), before);
    // The running system's own bundle.
    let paths = testing::machine(&d.path().join("same"), Slot::A, "1.0.0");
    let (bundle, root_hash) = make_bundle(d.path(), &BundleSpec::new("1.0.0"));
    std::fs::write(
        paths.at("/proc/cmdline"),
        format!("roothash={root_hash} ro\n"),
    )
    .unwrap();
    let (r, _, _) = apply(&paths, &bundle);
    assert!(format!("{:#}", r.unwrap_err()).contains("is the system that is running"));
}

#[test]
fn a_failed_write_leaves_a_slot_nothing_boots_and_says_why() {
    let d = tempfile::tempdir().unwrap();
    let paths = testing::machine(d.path(), Slot::A, "1.0.0");
    let (bundle, _) = make_bundle(d.path(), &BundleSpec::new("2.0.0"));
    // A first attempt armed slot B, then a second one fails while writing.
    apply(&paths, &bundle).1.contains("armed");
    let (bundle3, _) = make_bundle(
        d.path(),
        &BundleSpec {
            content: 3,
            ..BundleSpec::new("3.0.0")
        },
    );
    std::fs::remove_file(paths.at("/dev/vda6")).unwrap();
    std::fs::create_dir(paths.at("/dev/vda6")).unwrap();
    let (r, _, _) = apply(&paths, &bundle3);
    let e = format!("{:#}", r.unwrap_err());
    assert!(e.contains("cannot open verity-b"), "{e}");
    assert!(
        e.contains("slot b does not boot, version 1.0.0 keeps running"),
        "{e}"
    );
    assert_eq!(testing::entry_names(&paths), ["appliance-0001-a.conf"]);
    let env = testing::grub_env(&paths);
    assert!(
        !env.b.ok && env.trial.is_none() && env.order[0] == Slot::A,
        "{env:?}"
    );
    let record = UpdateRecord::load(&paths.update_record()).unwrap();
    let a = record.attempt.unwrap();
    assert_eq!(a.state, AttemptState::Failed);
    assert!(a.reason.unwrap().contains("verity-b"));
}

#[test]
fn a_raspberry_pi_gets_tryboot_txt_and_the_new_kernels_device_trees() {
    let d = tempfile::tempdir().unwrap();
    let paths = testing::machine(d.path(), Slot::A, "1.0.0");
    std::fs::remove_dir_all(paths.at("/sys/firmware/efi")).unwrap();
    std::fs::create_dir_all(paths.at("/proc/device-tree/chosen/bootloader")).unwrap();
    let esp = paths.esp_mount();
    std::fs::write(
        esp.join("config.txt"),
        appliance_spec::bootcfg::raspberry_pi::config_txt(Slot::A),
    )
    .unwrap();
    let (bundle, _) = make_bundle(d.path(), &BundleSpec::new("2.0.0"));
    // `mount -t squashfs` of the new root: it holds the kernel's device trees.
    let slot_mount = paths.slot_mount();
    let mut runner = RecordingRunner::with_handler(move |cmd| {
        if cmd.program == "mount" && cmd.args[1] == "squashfs" {
            let dir = slot_mount.join("usr/lib/linux-image-6.1.0-test/broadcom");
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("bcm2711-rpi-4-b.dtb"), "dtb 2.0.0").unwrap();
            std::fs::write(dir.join("README"), "not a device tree").unwrap();
        }
        Ok(crate::runner::Output {
            success: true,
            ..Default::default()
        })
    });
    let (r, out) = apply_with(&paths, &mut runner, &bundle, Options::default());
    r.unwrap();
    assert!(out.contains("(sudo systemctl reboot '0 tryboot')"), "{out}");
    assert_eq!(
        std::fs::read(esp.join("appliance-b/bcm2711-rpi-4-b.dtb")).unwrap(),
        b"dtb 2.0.0"
    );
    assert!(!esp.join("appliance-b/README").exists());
    let cmdline = std::fs::read_to_string(esp.join("appliance-b/cmdline.txt")).unwrap();
    assert!(
        cmdline.contains(&format!("PARTUUID={}", partuuid("root-b")))
            && cmdline.ends_with("rootwait\n"),
        "{cmdline}"
    );
    let tryboot = std::fs::read_to_string(esp.join("tryboot.txt")).unwrap();
    assert!(tryboot.contains("os_prefix=appliance-b/"), "{tryboot}");
    let config = std::fs::read_to_string(esp.join("config.txt")).unwrap();
    assert!(
        config.contains("os_prefix=appliance-a/"),
        "config.txt still boots slot a"
    );
    assert!(runner.lines().iter().any(|l| l
        .starts_with("mount -t squashfs -o ro,nosuid,nodev,noexec")
        && l.contains("vda5")));
    // `--reboot` on a Pi sets the tryboot flag.
    let d2 = tempfile::tempdir().unwrap();
    let paths2 = testing::machine(d2.path(), Slot::A, "1.0.0");
    let machine = Machine::load(&paths2).unwrap();
    let mut r2 = testing::runner(Rc::new(RefCell::new(testing::Answers::default())));
    let mut sink = Vec::new();
    reboot(
        &mut Ctx {
            paths: &paths2,
            runner: &mut r2,
            out: &mut sink,
            from_boot: false,
        },
        Firmware::RaspberryPi,
        true,
    )
    .unwrap();
    assert_eq!(r2.lines(), ["systemctl reboot 0 tryboot"]);
    drop(machine);
}
