//! The arm64 image, built on this (usually x86_64) machine through qemu-user: one image for
//! arm64 UEFI machines and the Raspberry Pi 4. It boots twice on QEMU's `virt` machine with
//! AAVMF (the same checks as x86_64), and its Raspberry Pi boot files are checked the way the
//! Pi firmware reads them; QEMU cannot boot Debian's kernel on its `raspi4b` machine.

use std::io::Write;
use std::time::Duration;

use appliance::testing::{test_image as check_image, Firmware};
use appliance_qemu_tests::test_image;

#[test]
fn arm64_raspberry_pi_image_builds_boots_on_virt_and_has_pi_boot_files() {
    let _t = appliance_qemu_tests::timed!();
    // .ci/run starts `appliance build` with these same settings at its beginning, so this
    // build finds the image made: change both together.
    let overrides = [
        "jitsi.enabled=false",
        "image.arch=\"arm64\"",
        "image.board=\"raspberry-pi\"",
        // `--profile dev`'s fast compression: the x86_64 tests check the default level.
        "root.compression_level=1",
    ]
    .map(String::from);
    let out = test_image::build_dir().join("test-out-arm64");
    let b = crate::common::build_image(&overrides, &out)
        .unwrap_or_else(|e| panic!("the arm64 build failed: {e:#}"));
    assert_eq!(b.manifest["arch"], "arm64");
    assert_eq!(b.manifest["board"], "raspberry-pi");
    let pkgs = b.packages();
    for p in ["linux-image-arm64", "raspi-firmware", "systemd-boot-efi"] {
        assert!(pkgs.contains(&p), "{p} is not installed");
    }
    let all = b.manifest["packages"].as_array().expect("packages");
    assert!(
        all.iter()
            .all(|x| x["architecture"] == "arm64" || x["architecture"] == "all"),
        "a package of another architecture slipped in"
    );

    // Boots (UEFI on virt, first and second boot of a grown disk) and the Pi structural check,
    // as `appliance test IMAGE --no-tamper --timeout 600` runs them.
    appliance::doctor::require("tests").unwrap_or_else(|e| panic!("{e:#}"));
    let _one = test_image::one_boot_at_a_time();
    let report = check_image(
        &b.image,
        &[Firmware::Uefi, Firmware::Bios],
        false,
        Duration::from_secs(600),
        &crate::common::workdir("arm64"),
        false,
    )
    .unwrap_or_else(|e| panic!("{e:#}"));
    assert!(report.passed, "arm64 boot checks failed: {report:#?}");
    assert_eq!(report.boots.len(), 2, "{report:#?}");
    for boot in &report.boots {
        let _ = writeln!(
            std::io::stderr(),
            "arm64 {} boot {}: readiness marker after {:.1} s",
            boot.firmware,
            boot.boot,
            boot.seconds_to_marker
        );
    }
}
