//! `appliance inspect`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use crate::inspect;

/// Show what is inside an image: partitions, root hash, kernel command line, packages, sizes.
#[derive(Args)]
pub struct InspectArgs {
    image: PathBuf,
    /// List every package with its version.
    #[arg(long)]
    packages: bool,
    #[arg(long)]
    json: bool,
}

pub fn run(args: InspectArgs) -> anyhow::Result<ExitCode> {
    let info = inspect::inspect(&args.image)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&info)?);
    } else {
        print!("{}", inspect::render(&info, args.packages));
    }
    Ok(ExitCode::SUCCESS)
}
