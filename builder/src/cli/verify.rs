//! `appliance verify`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use appliance_spec::signature::TrustedKeys;
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
    let key_file = match args.key {
        Some(k) => k,
        None => {
            let config = args
                .config
                .load()
                .context("no --key given, so the configuration must name the signing key")?;
            let private = crate::signing::configured(&config)?
                .context("which key signed the outputs? pass --key FILE.pub")?;
            let mut p = private.path.into_os_string();
            p.push(".pub");
            PathBuf::from(p)
        }
    };
    let text = std::fs::read_to_string(&key_file)
        .with_context(|| format!("cannot read the public key {}", key_file.display()))?;
    let keys = TrustedKeys::parse(&text, &key_file.display().to_string())?;
    for c in crate::verify::verify_outputs(&args.dir, &keys)? {
        println!("ok  {:<18} {}", c.what, c.detail);
    }
    Ok(ExitCode::SUCCESS)
}
