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
}

pub fn run(args: TestArgs) -> anyhow::Result<ExitCode> {
    let image = image_path(args.image, &args.config)?;
    doctor::require("tests")?;
    let report = testing::test_image(
        &image,
        &args.firmware.firmwares(),
        !args.no_tamper,
        std::time::Duration::from_secs(args.timeout),
        &args.workdir,
        args.json,
    )?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    Ok(if report.passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
