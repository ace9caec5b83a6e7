//! Where a boot spends its time: boots a copy of a built image set up from a seed file, powers
//! it off, boots it again, and prints the time to the readiness line of both boots with
//! `systemd-analyze time`, the critical chains to the readiness report and to `/data`, the
//! slowest units of the second boot and the processor time each used. Under emulation the two
//! processors are busy for most of a boot, so what a unit costs in processor time matters as
//! much as where it sits on the chain. A measurement for docs/benchmarks.md, not a test.
//!
//!     cargo run --release -p appliance-scenarios --example boot_chain -- [IMAGE]
//!
//! IMAGE defaults to build/test-out/jitsi-appliance.raw (made by the boot tests); its
//! manifest.json must be beside it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Result;
use appliance_scenarios::seeded;
use appliance_scenarios::session::{Session, Setup};

fn main() {
    if let Err(e) = run() {
        eprintln!("boot_chain: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let image = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("build/test-out/jitsi-appliance.raw"));
    let m = seeded::prepare(&image, Path::new("build/boot-chain"))?;
    let timeout = Duration::from_secs(600);
    let first = Session::boot(
        "first boot",
        &m.config,
        m.ports,
        m.ssh.clone(),
        Setup::Done,
        timeout,
    )?;
    println!(
        "first boot (setup from the seed): readiness line after {:.1} s",
        first.seconds_to_ready
    );
    first.wait_for_ssh()?;
    first.power_off_cleanly()?;
    let second = Session::boot(
        "second boot",
        &m.config,
        m.ports,
        m.ssh.clone(),
        Setup::Done,
        timeout,
    )?;
    println!(
        "second boot: readiness line after {:.1} s",
        second.seconds_to_ready
    );
    second.wait_for_ssh()?;
    // First, before the commands below add their own: processor time since power-on, in all
    // and per unit (systemd's accounting; one `systemctl show` for every unit).
    let busy = second.step("processor time", |s| {
        s.ssh.run_ok(
            "read up idle < /proc/uptime; echo \"uptime ${up} s, processors idle ${idle} s in all\"; \
             systemctl show -p Id -p CPUUsageNSec -- \
             $(systemctl list-units --no-legend --plain --type=service,mount,socket,scope | awk '{print $1}') \
             | awk -F= '/^CPUUsageNSec=[0-9]/ {t=$2} /^Id=/ {id=$2} /^$/ {if (t) printf \"%6.2f s %s\\n\", t/1e9, id; t=0} \
             END {if (t) printf \"%6.2f s %s\\n\", t/1e9, id}' | sort -rn | head -n 20",
        )
    })?;
    println!(
        "\n== processor time (the SSH login that asks is in ssh.service)\n{}",
        busy.trim_end()
    );
    for (what, command) in [
        ("systemd-analyze time", "systemd-analyze time"),
        (
            "critical chain to the readiness report",
            "systemd-analyze critical-chain --no-pager appliance-boot-report.service",
        ),
        (
            // /data is mounted from a link appliance-prepare-data makes, not from a device
            // systemd waits for: its chain is that unit's, and the mount's own time is asked.
            "critical chain to /data",
            "systemd-analyze critical-chain --no-pager appliance-prepare-data.service; \
             u=$(systemctl show -P UserspaceTimestampMonotonic); \
             d=$(systemctl show -P ActiveEnterTimestampMonotonic data.mount); \
             echo \"data.mount active $(( (d - u) / 1000 )) ms into userspace\"",
        ),
        (
            "slowest units",
            "systemd-analyze blame --no-pager | head -n 15",
        ),
        (
            "AppArmor: is the policy compiled into the image used (a miss: every boot compiles it)",
            "sudo -n apparmor_parser --skip-kernel-load --show-cache --replace /etc/apparmor.d/usr.sbin.nginx 2>&1",
        ),
    ] {
        let text = second.step(what, |s| s.ssh.run_ok(command))?;
        println!("\n== {what}\n{}", text.trim_end());
    }
    second.power_off_cleanly()
}
