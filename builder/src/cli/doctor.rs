//! `appliance doctor`.

use std::process::ExitCode;

use clap::Args;

use crate::doctor;

/// Check the host tools the build and the tests need; --install installs them (as root).
#[derive(Args)]
pub struct DoctorArgs {
    #[arg(long)]
    install: bool,
}

pub fn run(args: DoctorArgs) -> anyhow::Result<ExitCode> {
    let checks = doctor::check_host();
    print!("{}", doctor::report(&checks));
    if args.install {
        doctor::install(&checks)?;
        let after = doctor::check_host();
        if !doctor::missing(&after).is_empty() {
            print!("{}", doctor::report(&after));
            anyhow::bail!("some tools are still missing after installing");
        }
    } else if !doctor::missing(&checks).is_empty() {
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}
