//! `appliance run`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use super::{image_path, ConfigArgs, FirmwareChoice};
use crate::testing::{self, Firmware};

/// Boot the built image in QEMU with its serial console on this terminal (Ctrl-a x quits).
///
/// Changes made while it runs are thrown away unless --keep is given.
#[derive(Args)]
pub struct RunArgs {
    image: Option<PathBuf>,
    #[command(flatten)]
    config: ConfigArgs,
    #[arg(long, value_enum, default_value_t = FirmwareChoice::Uefi)]
    firmware: FirmwareChoice,
    /// Keep changes (first-boot state, /data) in the image file.
    #[arg(long)]
    keep: bool,
    /// Forward a host port on 127.0.0.1 to the guest, HOST:GUEST (repeatable), e.g. 8443:443.
    #[arg(long = "forward", value_name = "HOST:GUEST")]
    forwards: Vec<String>,
}

pub fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let image = image_path(args.image, &args.config)?;
    let firmware = match args.firmware {
        FirmwareChoice::Bios => Firmware::Bios,
        _ => Firmware::Uefi,
    };
    testing::run_interactive(&image, firmware, args.keep, &args.forwards)?;
    Ok(ExitCode::SUCCESS)
}
