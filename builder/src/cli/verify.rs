//! `appliance verify`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use super::ConfigArgs;

/// Check a build's outputs: the signature on SHA256SUMS, every checksum, and the root file
/// system against the root hash in the manifest.
///
/// Needs only the output directory and the signer's public key, as a third party would have
/// them. Exits with 0 when everything holds, 1 with the first thing that does not.
#[derive(Args)]
pub struct VerifyArgs {
    /// The output directory of a build.
    #[arg(default_value = "out")]
    dir: PathBuf,
    /// The signer's public key (default: the .pub beside [signing] key).
    #[arg(long, value_name = "FILE")]
    key: Option<PathBuf>,
    #[command(flatten)]
    config: ConfigArgs,
}

pub fn run(args: VerifyArgs) -> anyhow::Result<ExitCode> {
    let keys = super::signer_public_key(args.key, &args.config)?;
    for c in crate::verify::verify_outputs(&args.dir, &keys)? {
        println!("ok  {:<18} {}", c.what, c.detail);
    }
    Ok(ExitCode::SUCCESS)
}
