//! The boot checks of an appliance image, shared by `appliance test` and the cargo tests:
//! a first and a second boot of the same (grown) disk, per firmware, and a tampered root.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::host::run;
use crate::{boot_and_report, Arch, BootReport, Expect, Firmware, Machine, MachineConfig};

/// What the checks need to know about the image.
#[derive(Debug, Clone)]
pub struct ImageUnderTest {
    pub image: PathBuf,
    pub arch: Arch,
    /// Byte offset of the active root partition (root-a), for the tamper test.
    pub root_offset: u64,
    /// Size of the data partition in the image; after first boot it must be larger.
    pub data_part_bytes: u64,
}

/// One boot that reached the readiness marker and passed its checks.
#[derive(Debug, Clone)]
pub struct BootOutcome {
    pub firmware: Firmware,
    pub boot: u64,
    pub seconds_to_marker: f64,
    pub report: BootReport,
}

/// Size the test disk is grown to, as when an image is written to a bigger disk.
pub const GROWN_DISK_BYTES: u64 = 6 << 30;

/// Boots `img` twice from one copy-on-write disk grown to [`GROWN_DISK_BYTES`]: the first boot
/// must grow and format /data and run first-boot work; the second must find it done.
pub fn first_and_second_boot(
    img: &ImageUnderTest,
    firmware: Firmware,
    workdir: &Path,
    timeout: Duration,
) -> Result<Vec<BootOutcome>> {
    boots_of_one_disk(img, &[firmware, firmware], workdir, timeout)
}

/// Boots `img` once per entry of `firmwares`, in order, from one copy-on-write disk grown to
/// [`GROWN_DISK_BYTES`]: the first boot must grow and format /data and run first-boot work,
/// every later one must find it done. Booting the same disk under both firmwares shows that
/// either one starts the machine another one set up. The UEFI boots keep one variable store,
/// so a second boot starts as a real machine's does, with the boot entry the firmware made.
pub fn boots_of_one_disk(
    img: &ImageUnderTest,
    firmwares: &[Firmware],
    workdir: &Path,
    timeout: Duration,
) -> Result<Vec<BootOutcome>> {
    // Start clean: console logs of an earlier run must not be mistaken for this one's.
    let _ = std::fs::remove_dir_all(workdir);
    std::fs::create_dir_all(workdir)?;
    let disk = workdir.join("disk.qcow2");
    overlay(&img.image, &disk, GROWN_DISK_BYTES)?;
    let mut outcomes = Vec::new();
    for (boot, &firmware) in (1u64..).zip(firmwares) {
        let mut cfg = MachineConfig::new(
            img.arch,
            firmware,
            &disk,
            workdir.join(format!("boot{boot}")),
        );
        cfg.disk_format = "qcow2".into();
        cfg.snapshot = false;
        cfg.uefi_vars = Some(workdir.join("uefi-vars.fd"));
        let (machine, report, elapsed) = boot_and_report(&cfg, timeout).with_context(|| {
            format!("{firmware:?} boot {boot} did not reach the readiness marker")
        })?;
        let problems = report.check_foundation(&Expect {
            boot,
            firstboot_runs: 1,
            min_data_part_bytes: img.data_part_bytes + 1,
        });
        if !problems.is_empty() {
            bail!(
                "{firmware:?} boot {boot}: {}\nreport: {}\n{}",
                problems.join("; "),
                report_line(&report),
                machine.diagnostics()
            );
        }
        power_off_cleanly(machine)?;
        outcomes.push(BootOutcome {
            firmware,
            boot,
            seconds_to_marker: elapsed.as_secs_f64(),
            report,
        });
    }
    Ok(outcomes)
}

fn report_line(r: &BootReport) -> String {
    r.pairs()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Asks the guest to shut down (ACPI power button) so /data is unmounted cleanly, and waits.
pub fn power_off_cleanly(machine: Machine) -> Result<()> {
    machine.qmp("system_powerdown")?;
    match machine.wait_for_exit(Duration::from_secs(180)) {
        Ok(_) => Ok(()),
        Err(e) => {
            let diag = machine.diagnostics();
            let _ = machine.power_off();
            Err(e.context(format!(
                "the guest did not power off after the ACPI request\n{diag}"
            )))
        }
    }
}

/// What happened when the image booted with one byte of its root changed.
#[derive(Debug, Clone)]
pub struct TamperOutcome {
    pub offset: u64,
    pub refusal_line: String,
    pub seconds: f64,
}

/// Flips one byte inside the root partition (in a copy-on-write overlay; the image itself is not
/// changed) and checks that the machine refuses to use the root: dm-verity reports corruption
/// and the kernel stops, and the readiness marker never appears.
pub fn tampered_root_is_refused(
    img: &ImageUnderTest,
    firmware: Firmware,
    workdir: &Path,
    timeout: Duration,
) -> Result<TamperOutcome> {
    let _ = std::fs::remove_dir_all(workdir);
    std::fs::create_dir_all(workdir)?;
    let disk = workdir.join("tampered.qcow2");
    let image_len = std::fs::metadata(&img.image)?.len();
    overlay(&img.image, &disk, image_len)?;
    // Block 0 of the squashfs holds its superblock, which the initrd reads when it mounts the
    // root, so a change there is always seen.
    let offset = img.root_offset + 1000;
    let original = read_byte(&img.image, offset)?;
    write_byte_qcow2(&disk, offset, original ^ 0x5a)?;
    let mut cfg = MachineConfig::new(img.arch, firmware, &disk, workdir.join("boot"));
    cfg.disk_format = "qcow2".into();
    cfg.snapshot = false;
    let machine = Machine::start(&cfg)?;
    let m = machine.wait_for_any(
        &[crate::READY_MARKER, "Kernel panic", "is corrupted"],
        timeout,
    );
    let outcome = match m {
        Ok(m) if m.index == 0 => bail!(
            "the machine booted to the readiness marker with a modified root partition (byte {offset} changed)\n{}",
            machine.diagnostics()
        ),
        Ok(m) => {
            // Give it a moment to make sure the marker does not follow anyway.
            let later = machine.wait_for_any(&[crate::READY_MARKER], Duration::from_secs(10));
            if let Ok(l) = later {
                bail!("the machine reported corruption but still booted: {}", l.line);
            }
            TamperOutcome {
                offset,
                refusal_line: m.line.trim().to_string(),
                seconds: machine.started.elapsed().as_secs_f64(),
            }
        }
        Err(e) => return Err(e.context("no sign of dm-verity refusing the modified root")),
    };
    let _ = machine.power_off();
    Ok(outcome)
}

/// A qcow2 disk backed by `base` (read-only), of `size` bytes.
pub fn overlay(base: &Path, disk: &Path, size: u64) -> Result<()> {
    let _ = std::fs::remove_file(disk);
    let base = std::fs::canonicalize(base)
        .with_context(|| format!("the image {} does not exist", base.display()))?;
    run(Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
        .arg(&base)
        .arg(disk)
        .arg(size.to_string()))?;
    Ok(())
}

fn read_byte(file: &Path, offset: u64) -> Result<u8> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(file)?;
    f.seek(SeekFrom::Start(offset))?;
    let mut b = [0u8; 1];
    f.read_exact(&mut b)?;
    Ok(b[0])
}

fn write_byte_qcow2(disk: &Path, offset: u64, value: u8) -> Result<()> {
    run(Command::new("qemu-io")
        .args(["-f", "qcow2", "-c"])
        .arg(format!("write -P 0x{value:02x} {offset} 1"))
        .arg(disk))?;
    Ok(())
}
