//! `appliance key`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};

use crate::signing;

/// Make the signing key that signs builds and update bundles.
#[derive(Args)]
pub struct KeyArgs {
    #[command(subcommand)]
    action: KeyAction,
}

#[derive(Subcommand)]
enum KeyAction {
    /// Make a new ed25519 key pair: DIR/NAME (private, mode 0600) and DIR/NAME.pub.
    ///
    /// Keep the private key off the machines and out of the repository (a .gitignore is
    /// written beside it); point [signing] key or $APPLIANCE_SIGNING_KEY at it. Put the .pub in
    /// [updates] trusted_keys so machines accept your updates, and give it to anyone who checks
    /// your images (`appliance verify`, `ssh-keygen -Y verify`).
    Generate {
        /// The directory for the key pair.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// File name of the private key.
        #[arg(long, default_value = "appliance-signing")]
        name: String,
        /// The comment stored with the public key (who signs with it).
        #[arg(long, default_value = "appliance signing key")]
        comment: String,
    },
}

pub fn run(args: KeyArgs) -> anyhow::Result<ExitCode> {
    match args.action {
        KeyAction::Generate { out, name, comment } => {
            let (private, public) = signing::generate(&out, &name, &comment)?;
            let key = signing::SigningKey::load(&private)?;
            println!("private key: {} (keep it secret)", private.display());
            println!("public key:  {}", public.display());
            println!("             {}", key.public_line()?);
            println!(
                "next: set [signing] key = \"{}\" in appliance.toml (or export {}), and add \"{}\" to [updates] trusted_keys",
                private.display(),
                signing::KEY_ENV,
                public.display()
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}
