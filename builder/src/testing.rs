//! `appliance test` and `appliance run`: the QEMU harness (crate `appliance-qemu-tests`) pointed
//! at a built image.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::Serialize;

use appliance_qemu_tests::scenarios::{self, ImageUnderTest};
pub use appliance_qemu_tests::Firmware;
use appliance_qemu_tests::{accel, machine::UefiFirmware, Arch};

use appliance_spec::layout::Table;
use appliance_spec::Slot;

use crate::partitions;

/// Reads what the boot checks need from the image's own partition table.
pub fn image_under_test(image: &Path) -> Result<ImageUnderTest> {
    let entries = partitions::read_table(image)
        .with_context(|| format!("{} is not an appliance disk image", image.display()))?;
    let table = Table::new(&entries);
    let root = table.root(Slot::A).with_context(|| {
        format!(
            "{} has no {} partition",
            image.display(),
            Slot::A.root_label()
        )
    })?;
    let arch = table
        .arch()
        .with_context(|| format!("{}: unknown root partition type", image.display()))?;
    let data = table
        .data()
        .with_context(|| format!("{} has no data partition", image.display()))?;
    Ok(ImageUnderTest {
        image: image.to_path_buf(),
        arch,
        root_offset: root.offset(),
        data_part_bytes: data.size_bytes(),
    })
}

#[derive(Debug, Serialize)]
pub struct BootLine {
    pub firmware: String,
    pub boot: u64,
    pub seconds_to_marker: f64,
    pub guest_uptime: Option<f64>,
}

#[derive(Debug, Serialize)]
pub struct TestReport {
    pub image: PathBuf,
    pub accel: String,
    pub boots: Vec<BootLine>,
    pub tamper: Option<String>,
    pub failures: Vec<String>,
    pub passed: bool,
    /// Every check, as a JUnit report lists them.
    pub cases: Vec<TestCase>,
}

/// One check of `appliance test`: a boot, the tampered root, the Raspberry Pi files.
#[derive(Debug, Serialize)]
pub struct TestCase {
    /// The group it belongs to: the firmware, "tamper", "raspberry-pi".
    pub group: String,
    pub name: String,
    pub seconds: f64,
    /// Why it failed; `None` when it passed.
    pub failure: Option<String>,
}

pub fn test_image(
    image: &Path,
    firmwares: &[Firmware],
    tamper: bool,
    timeout: Duration,
    workdir: &Path,
    quiet: bool,
) -> Result<TestReport> {
    if !image.exists() {
        bail!(
            "{} does not exist; build it first with `appliance build`",
            image.display()
        );
    }
    let img = image_under_test(image)?;
    let choice = accel::select(img.arch)?;
    // Only x86 images carry a BIOS boot loader.
    let firmwares: Vec<Firmware> = firmwares
        .iter()
        .copied()
        .filter(|f| *f == Firmware::Uefi || img.arch == Arch::X86_64)
        .collect();
    let say = |s: String| {
        if !quiet {
            eprintln!("{s}");
        }
    };
    say(format!(
        "testing {} ({}; {})",
        image.display(),
        img.arch,
        choice.reason
    ));
    let mut report = TestReport {
        image: image.to_path_buf(),
        accel: choice.reason.clone(),
        boots: Vec::new(),
        tamper: None,
        failures: Vec::new(),
        passed: false,
        cases: Vec::new(),
    };
    for fw in &firmwares {
        let dir = workdir.join(format!("{fw:?}").to_lowercase());
        say(format!(
            "{fw:?}: first and second boot of a disk grown to {} GiB ...",
            scenarios::GROWN_DISK_BYTES >> 30
        ));
        let started = std::time::Instant::now();
        let group = format!("{fw:?}").to_lowercase();
        match scenarios::first_and_second_boot(&img, *fw, &dir, timeout) {
            Ok(outcomes) => {
                for o in outcomes {
                    report.cases.push(TestCase {
                        group: group.clone(),
                        name: format!("boot {}", o.boot),
                        seconds: o.seconds_to_marker,
                        failure: None,
                    });
                    say(format!(
                        "  {fw:?} boot {}: ready after {:.1} s (guest uptime {} s), all checks passed",
                        o.boot,
                        o.seconds_to_marker,
                        o.report.get("uptime").unwrap_or("?")
                    ));
                    report.boots.push(BootLine {
                        firmware: format!("{fw:?}"),
                        boot: o.boot,
                        seconds_to_marker: o.seconds_to_marker,
                        guest_uptime: o.report.get_f64("uptime"),
                    });
                }
            }
            Err(e) => {
                say(format!("  {fw:?}: FAILED: {e:#}"));
                report.failures.push(format!("{fw:?}: {e:#}"));
                report.cases.push(TestCase {
                    group: group.clone(),
                    name: "first and second boot".into(),
                    seconds: started.elapsed().as_secs_f64(),
                    failure: Some(format!("{e:#}")),
                });
            }
        }
    }
    if tamper {
        let fw = firmwares.first().copied().unwrap_or(Firmware::Uefi);
        say(format!(
            "{fw:?}: booting with one byte of the root partition changed ..."
        ));
        let started = std::time::Instant::now();
        let result =
            scenarios::tampered_root_is_refused(&img, fw, &workdir.join("tamper"), timeout);
        report.cases.push(TestCase {
            group: "tamper".into(),
            name: "a changed byte of the root is refused".into(),
            seconds: started.elapsed().as_secs_f64(),
            failure: result.as_ref().err().map(|e| format!("{e:#}")),
        });
        match result {
            Ok(t) => {
                say(format!(
                    "  refused after {:.1} s (byte at offset {}): {}",
                    t.seconds, t.offset, t.refusal_line
                ));
                report.tamper = Some(t.refusal_line);
            }
            Err(e) => {
                say(format!("  tamper check FAILED: {e:#}"));
                report.failures.push(format!("tamper: {e:#}"));
            }
        }
    }
    if has_raspberry_pi_boot_files(image) {
        say("Raspberry Pi boot files: checking them as the Pi firmware reads them ...".into());
        let result = crate::bootloaders::raspberry_pi::check_image(image);
        report.cases.push(TestCase {
            group: "raspberry-pi".into(),
            name: "boot files as the Pi firmware reads them".into(),
            seconds: 0.0,
            failure: result.as_ref().err().map(|e| format!("{e:#}")),
        });
        match result {
            Ok(c) => say(format!(
                "  {} files on the ESP; cmdline.txt: {}",
                c.files.len(),
                c.cmdline
            )),
            Err(e) => {
                say(format!("  Raspberry Pi check FAILED: {e:#}"));
                report.failures.push(format!("raspberry-pi: {e:#}"));
            }
        }
    }
    report.passed = report.failures.is_empty();
    say(if report.passed {
        format!("all checks passed ({} boots)", report.boots.len())
    } else {
        format!(
            "{} check(s) failed; console logs are in {}",
            report.failures.len(),
            workdir.display()
        )
    });
    Ok(report)
}

/// Whether the image's manifest (beside it) says it was built for the Raspberry Pi.
fn has_raspberry_pi_boot_files(image: &Path) -> bool {
    crate::inspect::inspect(image)
        .ok()
        .and_then(|i| i.manifest)
        .and_then(|m| m.get("board").and_then(|b| b.as_str().map(str::to_string)))
        .is_some_and(|b| b == "raspberry-pi")
}

/// Boots the image with the serial console on this terminal.
pub fn run_interactive(
    image: &Path,
    firmware: Firmware,
    keep: bool,
    forwards: &[String],
) -> Result<()> {
    let img = image_under_test(image)?;
    let choice = accel::select(img.arch)?;
    let mut args: Vec<String> = Vec::new();
    let vars_dir = tempfile::tempdir()?;
    match img.arch {
        Arch::X86_64 => args.extend(["-machine".into(), "q35".into()]),
        Arch::Arm64 => args.extend(["-machine".into(), "virt".into()]),
    }
    args.extend(choice.qemu_args());
    args.extend(
        [
            "-m",
            "2048",
            "-smp",
            "2",
            "-nodefaults",
            "-display",
            "none",
            "-serial",
            "mon:stdio",
        ]
        .map(String::from),
    );
    if firmware == Firmware::Uefi {
        let fw = UefiFirmware::for_arch(img.arch);
        let vars = vars_dir.path().join("vars.fd");
        std::fs::copy(&fw.vars_template, &vars).with_context(|| {
            format!(
                "UEFI firmware {} is missing (package {})",
                fw.vars_template.display(),
                fw.package
            )
        })?;
        if let Some(size) = fw.pflash_size {
            std::fs::OpenOptions::new()
                .write(true)
                .open(&vars)?
                .set_len(size)?;
        }
        args.push("-drive".into());
        args.push(format!(
            "if=pflash,format=raw,unit=0,readonly=on,file={}",
            fw.code.display()
        ));
        args.push("-drive".into());
        args.push(format!(
            "if=pflash,format=raw,unit=1,file={}",
            vars.display()
        ));
    } else if img.arch == Arch::Arm64 {
        bail!("arm64 images boot with UEFI only; use --firmware uefi");
    }
    args.push("-drive".into());
    args.push(format!(
        "file={},format=raw,if=virtio{}",
        image.display(),
        if keep { "" } else { ",snapshot=on" }
    ));
    let mut netdev = "user,id=n0".to_string();
    for f in forwards {
        let (h, g) = f
            .split_once(':')
            .with_context(|| format!("--forward {f:?}: expected HOST:GUEST, e.g. 8443:443"))?;
        let h: u16 = h
            .parse()
            .with_context(|| format!("--forward {f:?}: bad host port"))?;
        let g: u16 = g
            .parse()
            .with_context(|| format!("--forward {f:?}: bad guest port"))?;
        netdev.push_str(&format!(",hostfwd=tcp:127.0.0.1:{h}-:{g}"));
    }
    args.extend([
        "-netdev".into(),
        netdev,
        "-device".into(),
        "virtio-net-pci,netdev=n0".into(),
    ]);
    eprintln!(
        "{}; Ctrl-a x quits{}",
        choice.reason,
        if keep { "" } else { "; changes are discarded" }
    );
    let status = std::process::Command::new(appliance_qemu_tests::machine::qemu_binary(img.arch))
        .args(&args)
        .status()
        .with_context(|| {
            format!(
                "cannot start {} (package {})",
                appliance_qemu_tests::machine::qemu_binary(img.arch),
                appliance_qemu_tests::machine::qemu_package(img.arch)
            )
        })?;
    if !status.success() {
        bail!("QEMU exited with {status}");
    }
    Ok(())
}
