//! Signed A/B updates on a booted machine (docs/updates.md), with three versions of the test
//! image signed by a test key (`common::update_images`): v2 differs from v1 in its version and
//! one overlay file, v3 also has a unit that always fails. Boots run one at a time.

use std::io::Write;
use std::time::Instant;

use crate::common::{
    update_channel, update_images, workdir, UpdateImages, CHANGED_FILE, UNHEALTHY_UNIT, V1, V2, V3,
};
use appliance_qemu_tests::test_image::{self, BOOT_TIMEOUT};
use appliance_qemu_tests::Firmware;
use appliance_scenarios::update::{update_scenario, Bundle, UpdateOutcome, UpdateScenario};

fn print_outcome(name: &str, o: &UpdateOutcome, started: Instant) {
    let mut err = std::io::stderr();
    for (boot, s) in &o.boots {
        let _ = writeln!(err, "{name}: boot {boot}: {s:.1} s");
    }
    for (what, s) in &o.timings {
        let _ = writeln!(err, "{name}: {what}: {s:.1} s");
    }
    for c in &o.checks {
        let _ = writeln!(err, "  ok: {c}");
    }
    let _ = writeln!(
        err,
        "{name}: {:.0} s in all",
        started.elapsed().as_secs_f64()
    );
}

fn scenario(
    u: &UpdateImages,
    firmware: Firmware,
    name: &str,
    firmware_independent_checks: bool,
) -> UpdateScenario {
    UpdateScenario {
        firmware,
        image_v1: u.v1.image.clone(),
        esp_offset: u.v1.offset("esp"),
        v1: u.v1.bundle(),
        v2: u.v2.bundle(),
        v3: u.v3.bundle(),
        trusted_key: u.key.clone(),
        unhealthy_unit: UNHEALTHY_UNIT.into(),
        changed_file: CHANGED_FILE.into(),
        firmware_independent_checks,
        // The UEFI scenario lets GRUB run v2's trial: one boot on SeaBIOS in every run, the
        // full GRUB scenario being too long for .ci/run.
        v2_trial_firmware: Firmware::Bios,
        // The channel does not depend on the firmware either.
        channel: firmware_independent_checks.then(update_channel),
        workdir: workdir(name),
        boot_timeout: BOOT_TIMEOUT,
    }
}

/// The three builds: each version's bundle is signed, names its version, and carries the root
/// hash of its own image; v2 and v3 have roots of their own.
#[test]
fn signed_versions_build_into_bundles() {
    let _t = appliance_qemu_tests::timed!();
    let u = update_images();
    let mut hashes = Vec::new();
    for (b, version) in [(&u.v1, V1), (&u.v2, V2), (&u.v3, V3)] {
        let bundle = Bundle::open(&b.bundle()).unwrap_or_else(|e| panic!("{e:#}"));
        assert_eq!(bundle.manifest.version.to_string(), version);
        assert_eq!(
            b.manifest["verity"]["root_hash"].as_str(),
            Some(bundle.manifest.root_hash.as_str()),
            "the bundle of {version} does not carry its image's root hash"
        );
        for f in ["index.json", "index.json.sig"] {
            assert!(
                b.out.join(f).is_file(),
                "{version}: no {f} in {}",
                b.out.display()
            );
        }
        hashes.push(bundle.manifest.root_hash);
    }
    hashes.dedup();
    assert_eq!(
        hashes.len(),
        3,
        "two versions have the same root: {hashes:?}"
    );
}

/// UEFI: v1 set up from a seed file; bundles with a changed byte, another signer or another
/// architecture are refused and write nothing; v1 -> v2 over SSH with --reboot, v2's trial
/// booted by GRUB on SeaBIOS and committed by the health check, with the same host account, SSH
/// host key and certificate; the downgrade to v1
/// is refused; v3 comes from the update channel, installed while a host is in a meeting and
/// started once the room is empty; it fails its trial and the machine comes back on v2 by
/// itself, saying why; the power goes while v3 is written again, v2 still runs, and the next
/// `update apply` works.
#[test]
fn uefi_update_refusals_and_fallback() {
    let _t = appliance_qemu_tests::timed!();
    let u = update_images();
    let _one = test_image::one_boot_at_a_time();
    let started = Instant::now();
    let o = update_scenario(&scenario(u, Firmware::Uefi, "update-uefi", true))
        .unwrap_or_else(|e| panic!("{e:#}"));
    print_outcome("update (UEFI)", &o, started);
}

/// BIOS (GRUB's environment block counts the tries): v1 set up from a seed file, v1 -> v2 over
/// SSH, committed, with the same host key, certificate and XMPP login; v3 fails its trial and
/// GRUB starts v2 again by itself; `update status` says why. What does not depend on the boot
/// loader (refusals, the downgrade, the power cut) is left to the UEFI test.
#[test]
#[ignore = "four more boots (8 minutes alone, 25 on a busy machine) would take .ci/run past \
            its time limit; run it with `cargo test --release -p appliance-scenarios --test machines \
            -- --ignored bios_update`"]
fn bios_update_and_fallback() {
    let _t = appliance_qemu_tests::timed!();
    let u = update_images();
    let _one = test_image::one_boot_at_a_time();
    let started = Instant::now();
    let o = update_scenario(&scenario(u, Firmware::Bios, "update-bios", false))
        .unwrap_or_else(|e| panic!("{e:#}"));
    print_outcome("update (BIOS)", &o, started);
}
