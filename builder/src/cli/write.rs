//! `appliance write`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use crate::flash;

/// Write an image to a disk or SD card, safely.
///
/// Refuses a device on a disk that holds the running system (/, /boot, swap) or any mounted
/// file system, a device smaller than the image, or one larger than --max-size-gib (unless
/// --force). Shows the device's model and size, asks you to type its name, and checks that
/// it is still the same device before writing. Writes only the image's data blocks when a
/// .bmap lies beside the image, then reads everything back and checks it.
#[derive(Args)]
pub struct WriteArgs {
    /// The image (a .raw file).
    image: PathBuf,
    /// The disk to overwrite, e.g. /dev/sdb or /dev/mmcblk0 (a regular file works too).
    #[arg(long, short)]
    device: PathBuf,
    /// The block map (default: <image>.bmap beside the image, if it exists).
    #[arg(long)]
    bmap: Option<PathBuf>,
    /// Do not ask for confirmation.
    #[arg(long)]
    yes: bool,
    /// Allow a device larger than --max-size-gib.
    #[arg(long)]
    force: bool,
    /// Largest device written without --force, in GiB (big disks are rarely SD cards).
    #[arg(long, default_value_t = 256)]
    max_size_gib: u64,
}

pub fn run(args: WriteArgs) -> anyhow::Result<ExitCode> {
    let mut w = flash::WriteArgs::new(args.image, args.device);
    w.bmap = args.bmap;
    w.yes = args.yes;
    w.force = args.force;
    w.max_size = args.max_size_gib << 30;
    flash::run_write(&w)?;
    Ok(ExitCode::SUCCESS)
}
