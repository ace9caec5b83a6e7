//! Starts real QEMU guests with no operating system, to prove the harness itself: the serial
//! console is read, waits match and time out, QMP quit stops QEMU, and Drop kills it.
//!
//! These need qemu-system-x86_64 (and -aarch64), OVMF and AAVMF; they fail, not skip, when
//! those are missing, with the install command in the message.

use std::fs::File;
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use appliance_qemu_tests::{free_port, Arch, Firmware, Machine, MachineConfig};

const FIRMWARE_TIMEOUT: Duration = Duration::from_secs(90);

/// A workdir with an empty 64 MiB raw disk: nothing bootable, so firmware reports and gives up.
fn empty_disk_config(arch: Arch, firmware: Firmware) -> (tempfile::TempDir, MachineConfig) {
    let dir = tempfile::tempdir().expect("tempdir");
    let disk = dir.path().join("empty.img");
    File::create(&disk)
        .and_then(|f| f.set_len(64 << 20))
        .expect("creating the empty disk");
    let mut cfg = MachineConfig::new(arch, firmware, &disk, dir.path());
    // Firmware alone needs little memory; less also means less TCG set-up work.
    cfg.memory_mib = 256;
    cfg.cpus = 1;
    (dir, cfg)
}

fn start(cfg: &MachineConfig) -> Machine {
    match Machine::start(cfg) {
        Ok(m) => m,
        Err(e) => panic!("{e:#}"),
    }
}

fn process_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

#[test]
fn qemu_x86_64_is_installed() {
    let _t = appliance_qemu_tests::timed!();
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join("qemu-system-x86_64").is_file()))
        .unwrap_or(false);
    assert!(
        found,
        "qemu-system-x86_64 is missing: apt-get install -t bookworm-backports qemu-system-x86 ovmf"
    );
}

#[test]
fn uefi_x86_64_prints_on_serial_and_quits() {
    let _t = appliance_qemu_tests::timed!();
    let (_dir, cfg) = empty_disk_config(Arch::X86_64, Firmware::Uefi);
    let m = start(&cfg);
    eprintln!("{}", m.accel().reason);
    let hit = m
        .wait_for_any(&["BdsDxe", "UEFI"], FIRMWARE_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e:#}"));
    eprintln!(
        "OVMF line after {:.1}s: {}",
        m.started.elapsed().as_secs_f64(),
        hit.line
    );
    assert!(m.console_text().contains(&hit.line));
    assert!(!m.last_lines(5).is_empty());
    let log = std::fs::read_to_string(m.console_log_path()).expect("console.log");
    assert!(
        log.contains(hit.needle.as_str()),
        "console.log lacks the line"
    );

    // A wait that cannot succeed must time out with the console in the message.
    let err = m
        .wait_for_line("no such text", Duration::from_millis(500))
        .expect_err("must time out");
    let msg = format!("{err:#}");
    assert!(msg.contains("timed out"), "{msg}");
    assert!(msg.contains("console lines"), "{msg}");
    assert!(msg.contains("QEMU stderr"), "{msg}");

    let pid = m.pid();
    let t = Instant::now();
    let status = m.power_off().expect("power_off");
    eprintln!("QMP quit took {:?}, status {status}", t.elapsed());
    assert!(status.success(), "QEMU exited with {status} after QMP quit");
    assert!(!process_alive(pid), "QEMU {pid} still exists");
}

#[test]
fn bios_x86_64_seabios_on_serial_with_port_forward() {
    let _t = appliance_qemu_tests::timed!();
    let (_dir, mut cfg) = empty_disk_config(Arch::X86_64, Firmware::Bios);
    let port = free_port().expect("free port");
    cfg.port_forwards = vec![(port, 8080)];
    let m = start(&cfg);
    // SeaBIOS only reaches the serial port through the sercon mirror (bios_serial_mirror).
    m.wait_for_line("SeaBIOS", FIRMWARE_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e:#}"));
    m.wait_for_any(
        &["Booting from Hard Disk", "No bootable device"],
        FIRMWARE_TIMEOUT,
    )
    .unwrap_or_else(|e| panic!("{e:#}"));
    // slirp listens on the forwarded host port as soon as QEMU runs.
    TcpStream::connect(("127.0.0.1", port))
        .unwrap_or_else(|e| panic!("hostfwd port {port} not listening: {e}"));
    let status = m.power_off().expect("power_off");
    assert!(status.success(), "QEMU exited with {status}");
}

#[test]
fn uefi_aarch64_prints_on_serial() {
    let _t = appliance_qemu_tests::timed!();
    let (_dir, cfg) = empty_disk_config(Arch::Arm64, Firmware::Uefi);
    let m = start(&cfg);
    let hit = m
        .wait_for_any(&["BdsDxe"], FIRMWARE_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e:#}"));
    eprintln!(
        "AAVMF line after {:.1}s: {}",
        m.started.elapsed().as_secs_f64(),
        hit.line
    );
    let status = m.power_off().expect("power_off");
    assert!(status.success(), "QEMU exited with {status}");
}

#[test]
fn drop_kills_qemu() {
    let _t = appliance_qemu_tests::timed!();
    let (_dir, cfg) = empty_disk_config(Arch::X86_64, Firmware::Bios);
    let m = start(&cfg);
    let pid = m.pid();
    assert!(process_alive(pid));
    drop(m);
    assert!(!process_alive(pid), "QEMU {pid} survived Drop");
}

#[test]
fn qemu_exit_ends_a_wait_early_with_stderr() {
    let _t = appliance_qemu_tests::timed!();
    let (_dir, cfg) = empty_disk_config(Arch::X86_64, Firmware::Bios);
    let m = start(&cfg);
    m.wait_for_line("SeaBIOS", FIRMWARE_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e:#}"));
    m.qmp("quit").ok();
    let t = Instant::now();
    let err = m
        .wait_for_line("never printed", Duration::from_secs(60))
        .expect_err("QEMU is gone");
    assert!(
        t.elapsed() < Duration::from_secs(30),
        "wait did not end early"
    );
    let msg = format!("{err:#}");
    assert!(msg.contains("closed the serial console"), "{msg}");
    assert!(msg.contains("SeaBIOS"), "last lines missing: {msg}");
    m.wait_for_exit(Duration::from_secs(10)).expect("exited");
}
