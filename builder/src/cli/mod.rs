//! The command line: one file per command, each with its arguments and what it does.

mod build;
mod doctor;
mod inspect;
mod key;
mod lock;
mod mirror;
mod run;
mod test;
mod update;
mod verify;
mod write;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use appliance_spec::signature::TrustedKeys;
use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::config::Config;
use crate::testing::Firmware;

#[derive(Parser)]
#[command(
    name = "appliance",
    version,
    about = "Build a private meeting server image (Debian + Jitsi Meet, read-only and verified) and prove it boots",
    long_about = "Build a private meeting server image (Debian + Jitsi Meet, read-only and verified) and prove it boots.\n\n\
        appliance.toml describes the image. `appliance build` turns it into a disk image in out/ \
        that boots with UEFI or a legacy BIOS, on a VPS, in a cloud or in a virtual machine. \
        `appliance test` boots that image in QEMU and checks it.",
    after_help = "Typical session:\n  \
        appliance doctor --install      # once, as root: installs mmdebstrap, QEMU, ...\n  \
        appliance build                 # reads ./appliance.toml, writes out/<name>.raw\n  \
        appliance test                  # boots it with UEFI and BIOS and checks it\n  \
        appliance run                   # boots it with its console on this terminal\n  \
        appliance write out/<name>.raw --device /dev/sdX   # flash it, with safety checks\n\n\
        Without access to Jitsi's repository:  appliance build --set jitsi.enabled=false"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    Build(build::BuildArgs),
    Test(test::TestArgs),
    Run(run::RunArgs),
    Inspect(inspect::InspectArgs),
    Write(write::WriteArgs),
    Doctor(doctor::DoctorArgs),
    Key(key::KeyArgs),
    Lock(lock::LockArgs),
    Mirror(mirror::MirrorArgs),
    Verify(verify::VerifyArgs),
    Update(update::UpdateArgs),
}

/// Runs the command the user asked for.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Build(args) => build::run(args),
        Command::Test(args) => test::run(args),
        Command::Run(args) => run::run(args),
        Command::Inspect(args) => inspect::run(args),
        Command::Write(args) => write::run(args),
        Command::Doctor(args) => doctor::run(args),
        Command::Key(args) => key::run(args),
        Command::Lock(args) => lock::run(args),
        Command::Mirror(args) => mirror::run(args),
        Command::Verify(args) => verify::run(args),
        Command::Update(args) => update::run(args),
    }
}

/// Where the configuration comes from, for every command that reads it.
#[derive(Args, Clone)]
struct ConfigArgs {
    /// The appliance description.
    #[arg(long, short, default_value = "appliance.toml", value_name = "FILE")]
    config: PathBuf,
    /// Override a configuration key, e.g. --set jitsi.enabled=false --set data.size=1G
    /// (repeatable; values are TOML: true, 3, "text", ["a", "b"]).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    overrides: Vec<String>,
}

impl ConfigArgs {
    fn load(&self) -> anyhow::Result<Config> {
        Config::load(&self.config, &self.overrides)
    }
}

/// The public key a build was signed with: `key` when given, else the `.pub` beside the
/// configuration's `[signing] key`.
fn signer_public_key(key: Option<PathBuf>, config: &ConfigArgs) -> anyhow::Result<TrustedKeys> {
    let path = match key {
        Some(k) => k,
        None => {
            let config = config
                .load()
                .context("no --key given, so the configuration must name the signing key")?;
            let private = crate::signing::configured(&config)?
                .context("which key signed it? pass --key FILE.pub")?;
            let mut p = private.path.into_os_string();
            p.push(".pub");
            PathBuf::from(p)
        }
    };
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read the public key {}", path.display()))?;
    TrustedKeys::parse(&text, &path.display().to_string())
}

/// The image named on the command line, or the one the configuration builds.
fn image_path(image: Option<PathBuf>, config: &ConfigArgs) -> anyhow::Result<PathBuf> {
    if let Some(p) = image {
        return Ok(p);
    }
    let c = config.load()?;
    Ok(PathBuf::from("out").join(format!("{}.raw", c.image.name)))
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum FirmwareChoice {
    Uefi,
    Bios,
    All,
}

impl FirmwareChoice {
    fn firmwares(self) -> Vec<Firmware> {
        match self {
            FirmwareChoice::Uefi => vec![Firmware::Uefi],
            FirmwareChoice::Bios => vec![Firmware::Bios],
            // `test_image` drops BIOS for images that cannot boot that way (arm64).
            FirmwareChoice::All => vec![Firmware::Uefi, Firmware::Bios],
        }
    }
}
