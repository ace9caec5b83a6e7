//! `appliance update push`: send a bundle to a running appliance over SSH and install it there.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};

use anyhow::{bail, Context, Result};
use appliance_spec::bundle::{self, Expect};
use appliance_spec::signature::TrustedKeys;
use appliance_spec::version::Version;
use clap::{Args, Subcommand};

use super::ConfigArgs;

/// Update machines that run the appliance (docs/updates.md).
#[derive(Args)]
pub struct UpdateArgs {
    #[command(subcommand)]
    action: UpdateAction,
}

#[derive(Subcommand)]
enum UpdateAction {
    Push(PushArgs),
}

/// Send an update bundle to a machine over SSH and install it there with
/// `appliance-admin update apply`.
///
/// The bundle is checked here first (its signature against the public key beside [signing] key,
/// or --key, and every byte against its manifest), then streamed to the machine's /data, applied
/// and removed. The machine checks it again against the keys its own image trusts before it
/// writes anything. Example:
///
///   appliance update push out/jitsi-appliance-1.1.0.update --ssh admin@meet.example.org --reboot
#[derive(Args)]
struct PushArgs {
    /// The bundle, e.g. out/<name>-<version>.update.
    bundle: PathBuf,
    /// Where to log in: USER@HOST (the administrator account is `admin`).
    #[arg(long, value_name = "USER@HOST")]
    ssh: String,
    /// The SSH port.
    #[arg(long, default_value_t = 22)]
    port: u16,
    /// The SSH private key to log in with (default: ssh's own choice).
    #[arg(long, short = 'i', value_name = "FILE")]
    identity: Option<PathBuf>,
    /// Extra option for ssh, e.g. -o StrictHostKeyChecking=accept-new (repeatable).
    #[arg(long = "ssh-option", short = 'o', value_name = "OPTION")]
    ssh_options: Vec<String>,
    /// The signer's public key for the check before sending (default: the .pub beside
    /// [signing] key in the configuration).
    #[arg(long, value_name = "FILE.pub")]
    key: Option<PathBuf>,
    /// Restart the machine into the new version as soon as it is installed.
    #[arg(long)]
    reboot: bool,
    /// Install a version older than the one the machine runs.
    #[arg(long)]
    allow_downgrade: bool,
    #[command(flatten)]
    config: ConfigArgs,
}

pub fn run(args: UpdateArgs) -> Result<ExitCode> {
    match args.action {
        UpdateAction::Push(p) => push(p),
    }
}

fn push(args: PushArgs) -> Result<ExitCode> {
    let keys = super::signer_public_key(args.key.clone(), &args.config)?;
    let manifest = check_locally(&args.bundle, &keys)?;
    let file_name = format!("{}-{}.update", manifest.name, manifest.version);
    // The name goes into a command line on the machine: only what image names may hold.
    if !file_name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || ".+_-".contains(c))
    {
        bail!(
            "the bundle's image name {:?} is not a valid image name",
            manifest.name
        );
    }
    eprintln!(
        "{}: {} {} for {} ({}), signed by a trusted key, every byte as its manifest says",
        args.bundle.display(),
        manifest.name,
        manifest.version,
        manifest.arch,
        manifest.board
    );

    // /data/appliance/update is where the machine keeps bundles until they are installed; it
    // is on the data partition, not in RAM like /tmp and /home.
    let remote = format!("/data/appliance/update/{file_name}");
    let upload = format!(
        "sudo install -d -m 0700 /data/appliance/update && sudo sh -c 'cat > {remote}.part && mv {remote}.part {remote}'"
    );
    eprintln!("sending it to {} ...", args.ssh);
    let file = std::fs::File::open(&args.bundle)
        .with_context(|| format!("cannot read {}", args.bundle.display()))?;
    let mut child = ssh(&args)
        .arg(&upload)
        .stdin(Stdio::piped())
        .spawn()
        .context("cannot run ssh: apt-get install openssh-client")?;
    let copied = {
        let mut stdin = child.stdin.take().context("ssh has no standard input")?;
        std::io::copy(
            &mut std::io::BufReader::with_capacity(1 << 20, file),
            &mut stdin,
        )
    };
    let status = child.wait().context("ssh did not finish")?;
    if !status.success() {
        bail!(
            "sending the bundle to {} failed ({status}); ssh's message is above",
            args.ssh
        );
    }
    copied.context("sending the bundle was interrupted")?;

    let mut apply = format!("sudo appliance-admin update apply {remote}");
    if args.allow_downgrade {
        apply.push_str(" --allow-downgrade");
    }
    if args.reboot {
        apply.push_str(" --reboot");
    }
    // The bundle is removed whatever apply says; a machine restarting into the new version
    // has already removed it by then.
    let script = format!("{apply}; rc=$?; sudo rm -f {remote}; exit $rc");
    let status = ssh(&args).arg(&script).status().context("cannot run ssh")?;
    // ssh reports 255 when the connection drops, which a restart into the new version does.
    match status.code() {
        Some(0) => Ok(ExitCode::SUCCESS),
        Some(255) if args.reboot => {
            eprintln!("the machine is restarting into {}", manifest.version);
            Ok(ExitCode::SUCCESS)
        }
        _ => bail!(
            "the machine did not install the bundle ({status}); its message is above, and \
             `sudo appliance-admin update status` on it says what it runs"
        ),
    }
}

fn ssh(args: &PushArgs) -> Command {
    let mut cmd = Command::new("ssh");
    cmd.arg("-p").arg(args.port.to_string());
    if let Some(i) = &args.identity {
        cmd.arg("-i").arg(i).arg("-o").arg("IdentitiesOnly=yes");
    }
    for o in &args.ssh_options {
        cmd.arg("-o").arg(o);
    }
    cmd.arg("--").arg(&args.ssh);
    cmd
}

/// Checks the signature and every member of the bundle, as the machine will, for whatever
/// machine it names (the machine checks that it is the one).
fn check_locally(path: &Path, keys: &TrustedKeys) -> Result<bundle::BundleManifest> {
    let manifest = read_manifest(path)?;
    let lowest: Version = "0".parse().map_err(anyhow::Error::msg)?;
    let expect = Expect {
        name: &manifest.name,
        arch: manifest.arch,
        board: manifest.board,
        running: &lowest,
        allow_downgrade: true,
    };
    let verified = bundle::verify(path, keys, &expect)
        .with_context(|| format!("{} is refused here already", path.display()))?;
    Ok(verified.manifest)
}

/// The manifest, the bundle's first member, unchecked.
fn read_manifest(path: &Path) -> Result<bundle::BundleManifest> {
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut archive = tar::Archive::new(file);
    let mut entry = archive
        .entries()
        .and_then(|mut e| e.next().transpose())
        .ok()
        .flatten()
        .with_context(|| {
            format!(
                "{} is not an update bundle (not a tar file)",
                path.display()
            )
        })?;
    let mut text = String::new();
    entry
        .by_ref()
        .take(1 << 20)
        .read_to_string(&mut text)
        .with_context(|| format!("{} is not an update bundle", path.display()))?;
    serde_json::from_str(&text).with_context(|| {
        format!(
            "{} is not an update bundle: its first member is not a bundle manifest",
            path.display()
        )
    })
}
