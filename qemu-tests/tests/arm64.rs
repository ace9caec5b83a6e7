//! The arm64 image, built on this (usually x86_64) machine through qemu-user: one image for
//! arm64 UEFI machines and the Raspberry Pi 4. It boots twice on QEMU's `virt` machine with
//! AAVMF (the same checks as x86_64), and its Raspberry Pi boot files are checked the way the
//! Pi firmware reads them; QEMU cannot boot Debian's kernel on its `raspi4b` machine.

mod common;

use common::{appliance_bin, repo_root};
use std::process::Command;

#[test]
fn arm64_raspberry_pi_image_builds_boots_on_virt_and_has_pi_boot_files() {
    let root = repo_root();
    let out = root.join("build/test-out-arm64");
    let status = Command::new(appliance_bin())
        .current_dir(&root)
        .args([
            "build",
            "--set",
            "jitsi.enabled=false",
            "--set",
            "image.arch=\"arm64\"",
            "--set",
            "image.board=\"raspberry-pi\"",
            "--out",
        ])
        .arg(&out)
        .status()
        .expect("run appliance build");
    assert!(
        status.success(),
        "the arm64 build failed; its output is above"
    );
    let image = out.join("jitsi-appliance.raw");
    let manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(out.join("jitsi-appliance.manifest.json")).expect("manifest"),
    )
    .expect("manifest is JSON");
    assert_eq!(manifest["arch"], "arm64");
    assert_eq!(manifest["board"], "raspberry-pi");
    let pkgs = manifest["packages"].as_array().expect("packages");
    for p in ["linux-image-arm64", "raspi-firmware", "systemd-boot-efi"] {
        assert!(pkgs.iter().any(|x| x["name"] == p), "{p} is not installed");
    }
    assert!(
        pkgs.iter()
            .all(|x| x["architecture"] == "arm64" || x["architecture"] == "all"),
        "a package of another architecture slipped in"
    );

    // Boots (UEFI on virt, first and second boot of a grown disk) and the Pi structural check.
    let out = Command::new(appliance_bin())
        .current_dir(&root)
        .arg("test")
        .arg(&image)
        .args([
            "--no-tamper",
            "--json",
            "--timeout",
            "600",
            "--workdir",
            "build/test/arm64",
        ])
        .output()
        .expect("run appliance test");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("appliance test printed no JSON ({e}); stderr:\n{stderr}"));
    assert_eq!(
        report["passed"], true,
        "arm64 boot checks failed: {report:#}\n{stderr}"
    );
    assert_eq!(
        report["boots"].as_array().map(Vec::len),
        Some(2),
        "{report:#}"
    );
    for b in report["boots"].as_array().unwrap() {
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "arm64 {} boot {}: readiness marker after {:.1} s",
            b["firmware"].as_str().unwrap_or("?"),
            b["boot"],
            b["seconds_to_marker"].as_f64().unwrap_or(0.0)
        );
    }
}
