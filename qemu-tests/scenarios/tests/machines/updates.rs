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

fn scenario(u: &UpdateImages) -> UpdateScenario {
    UpdateScenario {
        firmware: Firmware::Uefi,
        // GRUB on SeaBIOS runs v2's trial (committed) and v3's second trial (falls back).
        trial_firmware: Firmware::Bios,
        image_v1: u.v1.image.clone(),
        esp_offset: u.v1.offset("esp"),
        v1: u.v1.bundle(),
        v2: u.v2.bundle(),
        v3: u.v3.bundle(),
        trusted_key: u.key.clone(),
        unhealthy_unit: UNHEALTHY_UNIT.into(),
        changed_file: CHANGED_FILE.into(),
        channel: Some(update_channel()),
        workdir: workdir("update"),
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

/// Both boot loaders, one machine: v1 set up from a seed file (UEFI); bundles with a changed
/// byte, another signer or another architecture are refused and write nothing; v1 -> v2 over
/// SSH with --reboot, v2's trial booted by GRUB on SeaBIOS and committed by the health check,
/// with the same host account, SSH host key and certificate; the downgrade to v1 is refused; v3
/// comes from the update channel, installed while a host is in a meeting and started once the
/// room is empty; it fails its trial under systemd-boot and the machine comes back on v2 by
/// itself, saying why; the power goes while v3 is written again, v2 still runs, and the next
/// `update apply` works; v3's second trial, under GRUB, fails and GRUB comes back on v2.
#[test]
fn updates_refusals_and_fallback_in_both_boot_loaders() {
    let _t = appliance_qemu_tests::timed!();
    let u = update_images();
    let _one = test_image::one_boot_at_a_time();
    let started = Instant::now();
    let o = update_scenario(&scenario(u)).unwrap_or_else(|e| panic!("{e:#}"));
    print_outcome("update", &o, started);
}
