//! `appliance test`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use super::{image_path, ConfigArgs, FirmwareChoice};
use crate::{doctor, testing};

/// Boot the built image in QEMU and check it (UEFI and BIOS, a second boot, a tampered root).
///
/// Each boot must reach the image's readiness line with no failed units, the root on
/// dm-verity and read-only, /var/log and /tmp in RAM, no persistent journal, AppArmor on,
/// /data mounted read-write and grown, and first-boot work run exactly once. A copy of the
/// image with one byte of its root changed must be refused. The image file is not modified.
///
/// Exit status: 0 every check passed; 1 a check failed; 2 the checks could not run (no
/// image, a missing tool, QEMU would not start). KVM is used where /dev/kvm really works,
/// software emulation (TCG) otherwise.
#[derive(Args)]
pub struct TestArgs {
    /// The image to test (default: out/<name>.raw from appliance.toml).
    image: Option<PathBuf>,
    #[command(flatten)]
    config: ConfigArgs,
    /// Which firmware to boot with.
    #[arg(long, value_enum, default_value_t = FirmwareChoice::All)]
    firmware: FirmwareChoice,
    /// Skip the tampered-root check.
    #[arg(long)]
    no_tamper: bool,
    /// Seconds to wait for each boot.
    #[arg(long, default_value_t = 300)]
    timeout: u64,
    /// Where console logs and test disks go.
    #[arg(long, default_value = "build/test", value_name = "DIR")]
    workdir: PathBuf,
    /// Print a JSON summary on stdout.
    #[arg(long)]
    json: bool,
    /// Also write the results as a JUnit XML report (one test case per check) for CI.
    #[arg(long, value_name = "FILE")]
    junit: Option<PathBuf>,
}

pub fn run(args: TestArgs) -> anyhow::Result<ExitCode> {
    let run = || -> anyhow::Result<testing::TestReport> {
        let image = image_path(args.image.clone(), &args.config)?;
        doctor::require("tests")?;
        testing::test_image(
            &image,
            &args.firmware.firmwares(),
            !args.no_tamper,
            std::time::Duration::from_secs(args.timeout),
            &args.workdir,
            args.json,
        )
    };
    let report = match run() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e:#}");
            return Ok(ExitCode::from(2));
        }
    };
    if let Some(path) = &args.junit {
        let partial = path.with_extension("xml.partial");
        std::fs::write(&partial, crate::junit::render(&report))
            .and_then(|()| std::fs::rename(&partial, path))
            .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    Ok(if report.passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
