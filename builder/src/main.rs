//! `appliance`: build a hardened, read-only Debian image with Jitsi Meet and prove it boots.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};

use appliance::build::{self, BuildOptions};
use appliance::config::Config;
use appliance::{doctor, flash, inspect, testing};

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
struct Cli {
    #[command(subcommand)]
    command: Command,
}

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

#[derive(Subcommand)]
enum Command {
    /// Build the disk image described by appliance.toml.
    ///
    /// Stages: verify repository keys, install packages (mmdebstrap; cached), make the squashfs
    /// root, compute its dm-verity hash tree, write the ESP and boot loaders, write the GPT disk
    /// image, then compress it and write SHA256SUMS and <name>.manifest.json. Outputs appear in
    /// the output directory only when all of them are complete.
    Build {
        #[command(flatten)]
        config: ConfigArgs,
        /// Where the finished image and its companions are written.
        #[arg(long, default_value = "out", value_name = "DIR")]
        out: PathBuf,
        /// Working directory for intermediate files (the package cache is [packages] cache_dir).
        #[arg(long, default_value = "build", value_name = "DIR")]
        build_dir: PathBuf,
        /// Reinstall packages even if a cached root file system matches the configuration
        /// (use it to pick up new Debian security updates).
        #[arg(long)]
        refresh: bool,
        /// zstd compression level for <name>.raw.zst (1-19).
        #[arg(long, default_value_t = 6, value_parser = clap::value_parser!(i32).range(1..=19))]
        zstd_level: i32,
        /// Print a JSON summary on stdout instead of progress.
        #[arg(long)]
        json: bool,
    },
    /// Boot the built image in QEMU and check it (UEFI and BIOS, a second boot, a tampered root).
    ///
    /// Each boot must reach the image's readiness line with no failed units, the root on
    /// dm-verity and read-only, /var/log and /tmp in RAM, no persistent journal, AppArmor on,
    /// /data mounted read-write and grown, and first-boot work run exactly once. A copy of the
    /// image with one byte of its root changed must be refused. The image file is not modified.
    Test {
        /// The image to test (default: out/<name>.raw from appliance.toml).
        image: Option<PathBuf>,
        #[command(flatten)]
        config: ConfigArgs,
        /// Which firmware to boot with.
        #[arg(long, value_enum, default_value_t = FirmwareChoice::All)]
        firmware: FirmwareChoice,
        /// Skip the tampered-root check.
        #[arg(long)]
        no_tamper: bool,
        /// Seconds to wait for each boot.
        #[arg(long, default_value_t = 300)]
        timeout: u64,
        /// Where console logs and test disks go.
        #[arg(long, default_value = "build/test", value_name = "DIR")]
        workdir: PathBuf,
        /// Print a JSON summary on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Boot the built image in QEMU with its serial console on this terminal (Ctrl-a x quits).
    ///
    /// Changes made while it runs are thrown away unless --keep is given.
    Run {
        image: Option<PathBuf>,
        #[command(flatten)]
        config: ConfigArgs,
        #[arg(long, value_enum, default_value_t = FirmwareChoice::Uefi)]
        firmware: FirmwareChoice,
        /// Keep changes (first-boot state, /data) in the image file.
        #[arg(long)]
        keep: bool,
        /// Forward a host port on 127.0.0.1 to the guest, HOST:GUEST (repeatable), e.g. 8443:443.
        #[arg(long = "forward", value_name = "HOST:GUEST")]
        forwards: Vec<String>,
    },
    /// Show what is inside an image: partitions, root hash, kernel command line, packages, sizes.
    Inspect {
        image: PathBuf,
        /// List every package with its version.
        #[arg(long)]
        packages: bool,
        #[arg(long)]
        json: bool,
    },
    /// Write an image to a disk or SD card, safely.
    ///
    /// Refuses a device on a disk that holds the running system (/, /boot, swap) or any mounted
    /// file system, a device smaller than the image, or one larger than --max-size-gib (unless
    /// --force). Shows the device's model and size, asks you to type its name, and checks that
    /// it is still the same device before writing. Writes only the image's data blocks when a
    /// .bmap lies beside the image, then reads everything back and checks it.
    Write {
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
        /// Allow a device larger than --max-size.
        #[arg(long)]
        force: bool,
        /// Largest device written without --force, in GiB (big disks are rarely SD cards).
        #[arg(long, default_value_t = 256)]
        max_size_gib: u64,
    },
    /// Check the host tools the build and the tests need; --install installs them (as root).
    Doctor {
        #[arg(long)]
        install: bool,
    },
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum FirmwareChoice {
    Uefi,
    Bios,
    All,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn image_path(image: Option<PathBuf>, config: &ConfigArgs) -> anyhow::Result<PathBuf> {
    if let Some(p) = image {
        return Ok(p);
    }
    let c = Config::load(&config.config, &config.overrides)?;
    Ok(PathBuf::from("out").join(format!("{}.raw", c.image.name)))
}

fn firmwares(choice: FirmwareChoice) -> Vec<testing::Firmware> {
    match choice {
        FirmwareChoice::Uefi => vec![testing::Firmware::Uefi],
        FirmwareChoice::Bios => vec![testing::Firmware::Bios],
        // `test_image` drops BIOS for images that cannot boot that way (arm64).
        FirmwareChoice::All => vec![testing::Firmware::Uefi, testing::Firmware::Bios],
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Build {
            config,
            out,
            build_dir,
            refresh,
            zstd_level,
            json,
        } => {
            let c = Config::load(&config.config, &config.overrides)?;
            doctor::require("build")?;
            if c.image.arch == appliance::config::Arch::Arm64 && std::env::consts::ARCH != "aarch64"
            {
                doctor::require("arm64")?;
            }
            let summary = build::build(
                &c,
                &BuildOptions {
                    out_dir: out,
                    build_dir,
                    refresh,
                    json,
                    zstd_level,
                },
            )?;
            if json {
                println!("{}", serde_json::to_string_pretty(&summary)?);
            } else {
                eprintln!(
                    "built {} in {:.0} s{}",
                    summary.image.display(),
                    summary.total_seconds,
                    if summary.rootfs_cached {
                        " (root file system from cache)"
                    } else {
                        ""
                    }
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Test {
            image,
            config,
            firmware,
            no_tamper,
            timeout,
            workdir,
            json,
        } => {
            let image = image_path(image, &config)?;
            doctor::require("tests")?;
            let report = testing::test_image(
                &image,
                &firmwares(firmware),
                !no_tamper,
                std::time::Duration::from_secs(timeout),
                &workdir,
                json,
            )?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            }
            Ok(if report.passed {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Command::Run {
            image,
            config,
            firmware,
            keep,
            forwards,
        } => {
            let image = image_path(image, &config)?;
            let fw = match firmware {
                FirmwareChoice::Bios => testing::Firmware::Bios,
                _ => testing::Firmware::Uefi,
            };
            testing::run_interactive(&image, fw, keep, &forwards)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Inspect {
            image,
            packages,
            json,
        } => {
            let info = inspect::inspect(&image)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&info)?);
            } else {
                print!("{}", inspect::render(&info, packages));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Write {
            image,
            device,
            bmap,
            yes,
            force,
            max_size_gib,
        } => {
            let mut args = flash::WriteArgs::new(image, device);
            args.bmap = bmap;
            args.yes = yes;
            args.force = force;
            args.max_size = max_size_gib << 30;
            flash::run_write(&args)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Doctor { install } => {
            let checks = doctor::check_host();
            print!("{}", doctor::report(&checks));
            if install {
                doctor::install(&checks)?;
                let after = doctor::check_host();
                let missing = doctor::missing(&after);
                if !missing.is_empty() {
                    print!("{}", doctor::report(&after));
                    anyhow::bail!("some tools are still missing after installing");
                }
            } else if !doctor::missing(&checks).is_empty() {
                return Ok(ExitCode::from(1));
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
