//! Command line of appliance-admin (see `appliance-admin --help`).

use anyhow::{bail, Result};
use appliance_admin::hosts::{self, PasswordSource};
use appliance_admin::lock::{self, WhenBusy};
use appliance_admin::passphrase::Source;
use appliance_admin::paths::Paths;
use appliance_admin::runner::SystemRunner;
use appliance_admin::steps::{self, Ctx};
use appliance_admin::update::{self, apply, channel, health};
use appliance_admin::{acme, backup_cli, boot, domain, power, settings, status, term, wizard};
use clap::{Parser, Subcommand};
use std::io::{BufRead, Write};
use std::os::unix::io::AsRawFd;
use std::path::PathBuf;
use std::process::ExitCode;

/// Set up and administer the Jitsi Meet appliance.
///
/// The first boot needs a few answers (domain name, first meeting host, SSH key...). They come
/// from appliance-setup.toml on the boot partition, or from the wizard on the console or over
/// SSH (`sudo appliance-admin wizard`). Setup then runs in numbered steps; if it is interrupted
/// (power cut), the next boot or `appliance-admin apply` continues where it stopped.
#[derive(Parser)]
#[command(
    name = "appliance-admin",
    version,
    after_help = "Examples:\n  sudo appliance-admin status\n  sudo appliance-admin hosts add bob\n  sudo appliance-admin hosts passwd bob\n  sudo appliance-admin hosts list\n  sudo appliance-admin update apply jitsi-appliance-1.1.0.update\n  sudo appliance-admin update status"
)]
struct Cli {
    /// Operate on a machine image mounted at DIR instead of / (for tests).
    #[arg(long, value_name = "DIR", default_value = "/", hide = true)]
    root: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run at every boot by appliance-setup.service: use appliance-setup.toml from the boot
    /// partition, resume an interrupted setup, and refresh the configuration.
    Boot,
    /// Ask the setup questions, then apply the answers.
    Wizard {
        /// Ask on every active console at once (the first to confirm wins), instead of on this
        /// terminal.
        #[arg(long)]
        consoles: bool,
    },
    /// Run the setup steps that are not done yet (safe to run again at any time).
    Apply,
    /// Manage the meeting hosts: the accounts that may open meeting rooms (guests need none).
    Hosts {
        #[command(subcommand)]
        action: HostsCommand,
    },
    /// Show how far setup is, the domain, the hosts and the certificate.
    Status,
    /// Power off if the policy chosen at setup says so and no meeting is in progress.
    /// Run every minute by appliance-idle.timer.
    IdleCheck,
    /// Let's Encrypt certificate.
    Acme {
        #[command(subcommand)]
        action: AcmeCommand,
    },
    /// Signed A/B updates: install a new version beside the running one, try it once, keep
    /// it only if it is healthy (docs/updates.md).
    Update {
        #[command(subcommand)]
        action: UpdateCommand,
    },
    /// Change what the setup asked (domain, Let's Encrypt e-mail, power-off, time zone, SSH
    /// keys); each change is applied at once.
    Settings {
        #[command(subcommand)]
        action: SettingsCommand,
    },
    /// An encrypted backup of this machine, and restoring one on a new machine.
    Backup {
        #[command(subcommand)]
        action: BackupCommand,
    },
}

#[derive(Subcommand)]
enum UpdateCommand {
    /// Check an update bundle completely, write it into the slot that is not running, and arm
    /// one trial boot of it. Nothing is written unless every check passes.
    Apply {
        /// The bundle: a file (e.g. in /data/appliance/update, where `appliance update push` puts it),
        /// or an https:// URL to download to /data.
        source: String,
        /// Install a version older than the running one.
        #[arg(long)]
        allow_downgrade: bool,
        /// Restart into the new version as soon as it is armed.
        #[arg(long)]
        reboot: bool,
    },
    /// Which version runs from which slot, what the other slot holds, the last attempt.
    Status {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Make the other slot (a version that ran here before) the one that boots.
    Rollback {
        /// Restart into it right away.
        #[arg(long)]
        reboot: bool,
    },
    /// Ask the update channel for a newer version, install it, and restart into it inside
    /// the update window when no meeting is in progress. Run by appliance-update.timer.
    Check,
    /// Run at every boot by appliance-update-health.service: commit a healthy trial, leave an
    /// unhealthy one, record what became of the last attempt.
    Health,
}

#[derive(Subcommand)]
enum SettingsCommand {
    /// Show the current settings.
    Show,
    /// Serve the meetings under another domain name; the hosts, the certificate and the
    /// configuration follow. Meetings in progress are interrupted.
    Domain {
        /// The new domain, e.g. meet.example.org.
        name: String,
    },
    /// Set the e-mail address for Let's Encrypt (asks to accept its terms), or turn Let's
    /// Encrypt off with --none (a self-signed certificate is used).
    #[command(group(clap::ArgGroup::new("what").required(true).args(["address", "none"])))]
    Email {
        /// e.g. it@example.org
        address: Option<String>,
        /// No Let's Encrypt: use a self-signed certificate.
        #[arg(long)]
        none: bool,
        /// Accept Let's Encrypt's terms of service without being asked (for scripts).
        #[arg(long)]
        accept_terms: bool,
    },
    /// When the machine powers itself off; options not given stay as they are.
    PowerOff {
        /// Power off after N minutes without a meeting (0: never when idle).
        #[arg(long, value_name = "N", allow_negative_numbers = true)]
        idle_minutes: Option<i64>,
        /// Power off every day at HH:MM (24-hour), or `none`.
        #[arg(long, value_name = "HH:MM|none")]
        daily_at: Option<String>,
        /// Never power off by itself.
        #[arg(long)]
        never: bool,
    },
    /// The time zone, e.g. Europe/Berlin.
    Timezone { zone: String },
    /// The SSH keys that may log in as admin.
    SshKeys {
        #[command(subcommand)]
        action: SshKeysCommand,
    },
}

#[derive(Subcommand)]
enum SshKeysCommand {
    /// List the keys with their fingerprints.
    List,
    /// Add a public key: the whole line of a .pub file, e.g. ssh-ed25519 AAAA… alice@laptop.
    Add {
        #[arg(required = true, num_args = 1.., value_name = "KEY")]
        key: Vec<String>,
    },
    /// Remove the key with this fingerprint (SHA256:…, as `list` shows it). The last key
    /// cannot be removed.
    Remove { fingerprint: String },
}

#[derive(Subcommand)]
enum BackupCommand {
    /// Write an encrypted backup (an age file; asks for a passphrase twice).
    Create {
        /// Where to write it; `-` for standard output (the default when it is not a terminal).
        #[arg(long, value_name = "FILE|-")]
        out: Option<PathBuf>,
        /// Read the passphrase from the first line of standard input.
        #[arg(long)]
        passphrase_stdin: bool,
        /// Read the passphrase from the first line of FILE.
        #[arg(long, value_name = "FILE", conflicts_with = "passphrase_stdin")]
        passphrase_file: Option<PathBuf>,
    },
    /// Restore a backup on a freshly written machine, then finish its setup as the old one.
    Restore {
        /// The backup; `-` for standard input (after the passphrase line with
        /// --passphrase-stdin).
        file: PathBuf,
        /// Read the passphrase from the first line of standard input.
        #[arg(long)]
        passphrase_stdin: bool,
        /// Read the passphrase from the first line of FILE.
        #[arg(long, value_name = "FILE", conflicts_with = "passphrase_stdin")]
        passphrase_file: Option<PathBuf>,
        /// Replace the setup of a machine that is already set up.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Subcommand)]
enum HostsCommand {
    /// Create a host; asks for the password twice (not shown while typing).
    Add {
        /// User name, e.g. alice (letters, digits, dots, hyphens, underscores).
        name: String,
        /// Read the password from the first line of standard input (for scripts).
        #[arg(long)]
        password_stdin: bool,
    },
    /// Delete a host. The last host cannot be removed.
    Remove { name: String },
    /// List the hosts.
    List,
    /// Set a new password for a host.
    Passwd {
        name: String,
        /// Read the password from the first line of standard input (for scripts).
        #[arg(long)]
        password_stdin: bool,
    },
}

#[derive(Subcommand)]
enum AcmeCommand {
    /// Get or renew the certificate if one is due; quiet when there is nothing to do.
    /// Run daily by appliance-acme.timer.
    Renew,
}

/// Passwords typed on the terminal (twice, hidden), or one line from stdin for scripts.
struct StdinPassword {
    from_pipe: bool,
}

impl PasswordSource for StdinPassword {
    fn new_password(
        &mut self,
        user: &str,
        check: &dyn Fn(&str) -> Result<(), String>,
    ) -> Result<String> {
        let stdin = std::io::stdin();
        let read = |prompt: &str| -> Result<String> {
            // Echo off before the prompt shows, so nothing typed early is displayed.
            let _guard = term::EchoOff::new(stdin.as_raw_fd());
            if !prompt.is_empty() {
                eprint!("{prompt}: ");
                std::io::stderr().flush()?;
            }
            let mut line = String::new();
            if stdin.lock().read_line(&mut line)? == 0 {
                bail!("no password was given (the input ended)");
            }
            Ok(line.trim_end_matches(['\n', '\r']).to_string())
        };
        if self.from_pipe {
            let p = read("")?;
            check(&p).map_err(|m| anyhow::anyhow!(m))?;
            return Ok(p);
        }
        if !term::is_tty(stdin.as_raw_fd()) {
            bail!("the password must be typed on a terminal; in a script use --password-stdin");
        }
        for _ in 0..3 {
            let p1 = read(&format!("New password for {user} (at least 12 characters)"))?;
            if let Err(m) = check(&p1) {
                eprintln!("  {m}");
                continue;
            }
            if read("Type the same password again")? != p1 {
                eprintln!("  The two passwords are different; please type them again.");
                continue;
            }
            return Ok(p1);
        }
        bail!("no password was set after three tries; nothing was changed")
    }
}

fn run(cli: Cli) -> Result<()> {
    let paths = Paths::new(&cli.root);
    let mut stdout = std::io::stdout();
    let mut runner = SystemRunner;
    // Commands that change the machine run one at a time. The boot waits (saying so); the
    // others stop at once. The wizard locks once its answers are confirmed.
    let _lock = match &cli.command {
        Command::Boot
        | Command::Update {
            action: UpdateCommand::Health,
        } => Some(lock::exclusive(&paths, WhenBusy::Wait, &mut stdout)?),
        Command::Apply
        | Command::Acme { .. }
        | Command::Update {
            action:
                UpdateCommand::Apply { .. } | UpdateCommand::Rollback { .. } | UpdateCommand::Check,
        }
        | Command::Hosts {
            action:
                HostsCommand::Add { .. } | HostsCommand::Remove { .. } | HostsCommand::Passwd { .. },
        } => Some(lock::exclusive(&paths, WhenBusy::Fail, &mut stdout)?),
        Command::Settings { action } if !settings_reads_only(action) => {
            Some(lock::exclusive(&paths, WhenBusy::Fail, &mut stdout)?)
        }
        Command::Backup { .. } => Some(lock::exclusive(&paths, WhenBusy::Fail, &mut stdout)?),
        _ => None,
    };
    match cli.command {
        Command::Boot => boot::run(&mut Ctx {
            paths: &paths,
            runner: &mut runner,
            out: &mut stdout,
            from_boot: true,
        }),
        Command::Wizard { consoles: false } => wizard::on_stdio(&paths),
        Command::Wizard { consoles: true } => wizard::on_consoles(&paths),
        Command::Apply => steps::apply(&mut Ctx {
            paths: &paths,
            runner: &mut runner,
            out: &mut stdout,
            from_boot: false,
        }),
        Command::Status => status::print(&paths, &mut stdout),
        Command::IdleCheck => power::idle_check(&paths, &mut runner, &mut stdout).map(|_| ()),
        Command::Acme {
            action: AcmeCommand::Renew,
        } => acme::renew(&mut Ctx {
            paths: &paths,
            runner: &mut runner,
            out: &mut stdout,
            from_boot: false,
        }),
        Command::Update { action } => {
            let from_boot = matches!(action, UpdateCommand::Health);
            let mut ctx = Ctx {
                paths: &paths,
                runner: &mut runner,
                out: &mut stdout,
                from_boot,
            };
            match action {
                UpdateCommand::Apply {
                    source,
                    allow_downgrade,
                    reboot,
                } => apply::run(
                    &mut ctx,
                    &source,
                    apply::Options {
                        allow_downgrade,
                        reboot,
                    },
                ),
                UpdateCommand::Status { json } => update::status::print(&mut ctx, json),
                UpdateCommand::Rollback { reboot } => update::rollback::run(&mut ctx, reboot),
                UpdateCommand::Health => {
                    health::run(&mut ctx, health::Patience::default()).map(|_| ())
                }
                UpdateCommand::Check => match channel::check(&mut ctx)? {
                    channel::CheckOutcome::Unreachable(why) => Err(Temporary(why).into()),
                    _ => Ok(()),
                },
            }
        }
        Command::Hosts { action } => match action {
            HostsCommand::Add {
                name,
                password_stdin,
            } => hosts::add(
                &paths,
                &name,
                &mut StdinPassword {
                    from_pipe: password_stdin,
                },
                &mut stdout,
            ),
            HostsCommand::Passwd {
                name,
                password_stdin,
            } => hosts::passwd(
                &paths,
                &name,
                &mut StdinPassword {
                    from_pipe: password_stdin,
                },
                &mut stdout,
            ),
            HostsCommand::Remove { name } => hosts::remove(&paths, &name, &mut stdout),
            HostsCommand::List => {
                for h in hosts::list(&paths)? {
                    writeln!(stdout, "{h}")?;
                }
                Ok(())
            }
        },
        Command::Settings { action } => {
            let mut ctx = Ctx {
                paths: &paths,
                runner: &mut runner,
                out: &mut stdout,
                from_boot: false,
            };
            match action {
                SettingsCommand::Show => settings::show(&paths, ctx.out),
                SettingsCommand::Domain { name } => domain::change(&mut ctx, &name),
                SettingsCommand::Email {
                    address,
                    none: _,
                    accept_terms,
                } => settings::email(
                    &mut ctx,
                    address.as_deref(),
                    &mut settings::TerminalTerms {
                        accepted_beforehand: accept_terms,
                    },
                ),
                SettingsCommand::PowerOff {
                    idle_minutes,
                    daily_at,
                    never,
                } => settings::power_off(&mut ctx, idle_minutes, daily_at.as_deref(), never),
                SettingsCommand::Timezone { zone } => settings::timezone(&mut ctx, &zone),
                SettingsCommand::SshKeys { action } => match action {
                    SshKeysCommand::List => settings::ssh_keys_list(&paths, ctx.out),
                    SshKeysCommand::Add { key } => {
                        settings::ssh_keys_add(&paths, &key.join(" "), ctx.out)
                    }
                    SshKeysCommand::Remove { fingerprint } => {
                        settings::ssh_keys_remove(&paths, &fingerprint, ctx.out)
                    }
                },
            }
        }
        Command::Backup {
            action:
                BackupCommand::Create {
                    out,
                    passphrase_stdin,
                    passphrase_file,
                },
        } => backup_cli::create(
            &paths,
            out.as_deref(),
            &Source::new(passphrase_stdin, passphrase_file),
        ),
        Command::Backup {
            action:
                BackupCommand::Restore {
                    file,
                    passphrase_stdin,
                    passphrase_file,
                    force,
                },
        } => backup_cli::restore(
            &mut Ctx {
                paths: &paths,
                runner: &mut runner,
                out: &mut stdout,
                from_boot: false,
            },
            &file,
            &Source::new(passphrase_stdin, passphrase_file),
            force,
        ),
    }
}

/// Settings commands that only read (they need no lock).
fn settings_reads_only(action: &SettingsCommand) -> bool {
    matches!(
        action,
        SettingsCommand::Show
            | SettingsCommand::SshKeys {
                action: SshKeysCommand::List
            }
    )
}

/// `acme renew` failing (domain not pointing here yet, CA unreachable) is a temporary state the
/// daily timer retries: it exits with EX_TEMPFAIL, which appliance-acme.service accepts.
const EXIT_TEMPFAIL: u8 = 75;

/// A failure the next run of a timer may not have (the update channel unreachable).
#[derive(Debug)]
struct Temporary(String);

impl std::fmt::Display for Temporary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}; appliance-update.timer tries again", self.0)
    }
}

impl std::error::Error for Temporary {}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let temporary = matches!(cli.command, Command::Acme { .. });
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.downcast_ref::<Temporary>().is_some() => {
            eprintln!("appliance-admin: {e:#}");
            ExitCode::from(EXIT_TEMPFAIL)
        }
        Err(e) => {
            eprintln!("appliance-admin: {e:#}");
            if temporary {
                eprintln!("appliance-admin: the certificate stays as it is; appliance-acme.timer tries again daily");
                ExitCode::from(EXIT_TEMPFAIL)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}
