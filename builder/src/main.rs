//! `appliance`: build a hardened, read-only Debian image with Jitsi Meet and prove it boots.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = appliance::cli::Cli::parse();
    match appliance::cli::run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}
