//! Prints the figures the project tracks (docs/benchmarks.md): build time per stage for a cold
//! build (empty caches: every package downloaded and installed), a build with nothing changed,
//! a build after one file of a feature changed, and a warm build that writes its outputs again;
//! the peak memory of each; image sizes; and the time to boot to the readiness line in QEMU. A
//! benchmark, not a test: it measures and prints, it does not judge.
//!
//!   cargo run --release --example benchmark -- [--skip-cold] [--no-boot] [--set k=v ...]
//!   cargo run --release --example benchmark -- --from-nothing  # also compile appliance-admin
//!   cargo run --release --example benchmark -- --squashfs      # compression options instead
//!
//! The in-image program appliance-admin is compiled once per checkout (in target/, like the
//! builder itself), not per cache: unless `--from-nothing` is given, it is compiled first if it
//! has not been yet, and that compilation's time and peak memory are printed on their own.
//!
//! The appliance is built without Jitsi's packages (--set jitsi.enabled=false), so it runs
//! where Jitsi's repository cannot be reached. It works on a copy of overlays/ in
//! build/benchmark, so the change it makes to a feature's file never touches the project.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Context;
use appliance::admin_program;
use appliance::build::{build, BuildOptions, BuildSummary};
use appliance::config::Config;
use appliance::progress::human_bytes;
use appliance::testing::{self, Firmware};

/// One measured build.
struct Run {
    name: &'static str,
    summary: BuildSummary,
    /// Peak resident memory of the processes the build started (mmdebstrap, mksquashfs, ...).
    children_peak_kib: i64,
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let mut overrides = vec!["jitsi.enabled=false".to_string()];
    let (mut skip_cold, mut boot, mut squashfs) = (false, true, false);
    let mut from_nothing = false;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--skip-cold" => skip_cold = true,
            "--from-nothing" => from_nothing = true,
            "--no-boot" => boot = false,
            "--squashfs" => squashfs = true,
            "--set" => overrides.extend(args.next()),
            other => anyhow::bail!("unknown argument {other:?}"),
        }
    }
    let bench = std::fs::canonicalize(".")?.join("build/benchmark");
    if squashfs {
        return squashfs_options(&bench, &overrides);
    }
    // A copy of the features, so one of their files can change between builds.
    let features = bench.join("overlays");
    let _ = std::fs::remove_dir_all(&features);
    std::fs::create_dir_all(&bench)?;
    run(Command::new("cp").arg("-a").arg("overlays").arg(&features))?;
    overrides.push(format!("features.dir=\"{}\"", features.display()));
    let out = bench.join("out");
    let mut runs = Vec::new();
    if !skip_cold {
        let cold_cache = bench.join("cold-cache");
        let _ = std::fs::remove_dir_all(&cold_cache);
        let _ = std::fs::remove_dir_all(bench.join("work"));
        let _ = std::fs::remove_dir_all(&out);
        overrides.push(format!("packages.cache_dir=\"{}\"", cold_cache.display()));
        if from_nothing {
            let program = bench.join("cold-program");
            let _ = std::fs::remove_dir_all(&program);
            // Read by the build's child process only; this example runs no other thread.
            std::env::set_var(admin_program::TARGET_DIR_ENV, &program);
            runs.push(measure("cold", &overrides, &bench, &out)?);
            std::env::remove_var(admin_program::TARGET_DIR_ENV);
        } else {
            compile_program_once(&overrides, &bench)?;
            runs.push(measure("cold", &overrides, &bench, &out)?);
        }
    } else {
        runs.push(measure("first", &overrides, &bench, &out)?);
    }
    runs.push(measure("unchanged", &overrides, &bench, &out)?);
    let changed = features.join("base/files/etc/motd-benchmark");
    std::fs::write(&changed, format!("{:?}\n", std::time::SystemTime::now()))?;
    runs.push(measure("one file", &overrides, &bench, &out)?);
    std::fs::remove_dir_all(&out)?;
    runs.push(measure("new outputs", &overrides, &bench, &out)?);

    println!("\nBuild time per stage (seconds)");
    print!("{:<10}", "stage");
    for r in &runs {
        print!("{:>13}", r.name);
    }
    println!();
    for (i, t) in runs[0].summary.timings.iter().enumerate() {
        print!("{:<10}", t.stage);
        for r in &runs {
            print!(
                "{:>13.1}",
                r.summary.timings.get(i).map_or(0.0, |t| t.seconds)
            );
        }
        println!();
    }
    print!("{:<10}", "total");
    for r in &runs {
        print!("{:>13.1}", r.summary.total_seconds);
    }
    println!();
    print!("{:<10}", "peak MiB");
    for r in &runs {
        print!("{:>13}", r.children_peak_kib / 1024);
    }
    println!("   (largest process the build started)");
    println!(
        "builder process: {} MiB peak over all builds",
        rusage_max_kib(libc::RUSAGE_SELF) / 1024
    );
    let last = &runs.last().expect("at least one build").summary;
    println!("\nImage");
    for f in &last.outputs {
        println!("  {:<40} {:>12}", f.file, human_bytes(f.bytes));
    }
    if boot {
        boot_times(&last.image, &bench)?;
    }
    Ok(())
}

fn measure(
    name: &'static str,
    overrides: &[String],
    bench: &Path,
    out: &Path,
) -> anyhow::Result<Run> {
    eprintln!("== {name}");
    let config = Config::load(Path::new("appliance.toml"), overrides)?;
    // Each build in a child process, so its peak memory is its own.
    let summary_file = bench.join("summary.json");
    let (ok, peak_kib) = in_child(|| {
        let s = build(&config, &BuildOptions::new(out, bench.join("work")))?;
        std::fs::write(&summary_file, serde_json::to_vec(&s)?)?;
        Ok(())
    });
    if !ok {
        anyhow::bail!("the {name} build failed");
    }
    let summary: serde_json::Value = serde_json::from_slice(&std::fs::read(&summary_file)?)?;
    Ok(Run {
        name,
        summary: serde_json::from_value(summary).context("reading the build summary")?,
        children_peak_kib: peak_kib,
    })
}

/// Runs `f` in a forked child; whether it succeeded, and the peak resident memory (KiB) of the
/// largest of the child and the programs it ran. (wait4's figure is this child's own, where
/// RUSAGE_CHILDREN would carry the largest of every earlier one.)
fn in_child(f: impl FnOnce() -> anyhow::Result<()>) -> (bool, i64) {
    // SAFETY: fork in a single-threaded example; the child only runs `f` and exits.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        let code = match f() {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("error: {e:#}");
                1
            }
        };
        std::process::exit(code);
    }
    let mut status = 0;
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waits for the child just forked, with valid pointers.
    unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    (pid > 0 && status == 0, usage.ru_maxrss)
}

/// Compiles appliance-admin where builds take it from, as the first build on a checkout does,
/// and prints the time and peak memory (nothing to do when it is compiled already).
fn compile_program_once(overrides: &[String], bench: &Path) -> anyhow::Result<()> {
    let config = Config::load(Path::new("appliance.toml"), overrides)?;
    let target = admin_program::target_dir(&config.resolve(&config.packages.cache_dir));
    let scratch = bench.join("program-scratch");
    let started = Instant::now();
    let (ok, peak_kib) = in_child(|| {
        admin_program::start(config.image.arch, &target, false).install(&scratch, |_| {})
    });
    let _ = std::fs::remove_dir_all(&scratch);
    if !ok {
        anyhow::bail!("compiling appliance-admin failed");
    }
    println!(
        "appliance-admin in {} (once per checkout, not part of the cold build): {:.1} s, peak {} MiB",
        target.display(),
        started.elapsed().as_secs_f64(),
        peak_kib / 1024
    );
    Ok(())
}

fn rusage_max_kib(who: i32) -> i64 {
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage fills the struct it is given.
    unsafe { libc::getrusage(who, &mut usage) };
    usage.ru_maxrss
}

fn boot_times(image: &Path, bench: &Path) -> anyhow::Result<()> {
    let report = testing::test_image(
        image,
        &[Firmware::Uefi, Firmware::Bios],
        false,
        Duration::from_secs(420),
        &bench.join("boot"),
        true,
    )?;
    println!("\nBoot under {}", report.accel);
    for b in &report.boots {
        println!(
            "  {:<5} boot {}: readiness line after {:>5.1} s (guest uptime {} s)",
            b.firmware,
            b.boot,
            b.seconds_to_marker,
            b.guest_uptime.map_or("?".into(), |u| format!("{u:.1}"))
        );
    }
    if !report.passed {
        println!("\nboot checks failed: {:#?}", report.failures);
    }
    Ok(())
}

/// Packs the same root with each compression setting and prints time, peak memory and size.
fn squashfs_options(bench: &Path, overrides: &[String]) -> anyhow::Result<()> {
    let config = Config::load(Path::new("appliance.toml"), overrides)?;
    let layers = config
        .resolve(&config.packages.cache_dir)
        .join("layers")
        .join(format!("{}-{}", config.image.name, config.image.arch));
    let tar = std::fs::read_dir(&layers)
        .with_context(|| format!("no package layer in {}: build once first", layers.display()))?
        .flatten()
        .map(|e| e.path().join("root.tar"))
        .find(|p| p.is_file())
        .context("no package layer: build once first")?;
    let tree = bench.join("squashfs-tree");
    let _ = std::fs::remove_dir_all(&tree);
    std::fs::create_dir_all(&tree)?;
    run(Command::new("tar")
        .args([
            "--extract",
            "--numeric-owner",
            "--xattrs",
            "--xattrs-include=*",
            "--file",
        ])
        .arg(&tar)
        .arg("--directory")
        .arg(&tree))?;
    println!(
        "{:<34} {:>8} {:>9} {:>10}",
        "settings", "seconds", "peak MiB", "size"
    );
    // Each with the builder's memory cap (-mem 128M), and the default level once without it.
    let settings: &[&[&str]] = &[
        &["-comp", "zstd", "-Xcompression-level", "1"],
        &["-comp", "zstd", "-Xcompression-level", "3"],
        &["-comp", "zstd", "-Xcompression-level", "6"],
        &["-comp", "zstd", "-Xcompression-level", "9"],
        &["-comp", "zstd", "-Xcompression-level", "12"],
        &["-comp", "zstd", "-Xcompression-level", "15"],
        &["-comp", "zstd", "-Xcompression-level", "19"],
        &["-comp", "zstd", "-Xcompression-level", "3", "-b", "1M"],
        &["-comp", "zstd", "-Xcompression-level", "15", "-b", "1M"],
        &["-comp", "lz4"],
        &["-comp", "xz"],
        &[
            "-comp",
            "zstd",
            "-Xcompression-level",
            "3",
            "-processors",
            "1",
        ],
        // Last: without the cap.
        &["-comp", "zstd", "-Xcompression-level", "15"],
    ];
    for (i, s) in settings.iter().enumerate() {
        let capped = i + 1 < settings.len();
        let out = bench.join("test.squashfs");
        let _ = std::fs::remove_file(&out);
        let start = Instant::now();
        let mut child = Command::new("mksquashfs")
            .arg(&tree)
            .arg(&out)
            .args(*s)
            .args(if capped { &["-mem", "128M"][..] } else { &[] })
            .args(["-noappend", "-quiet", "-no-progress"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()?;
        let pid = child.id() as i32;
        let mut status = 0;
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: waits for the child just spawned, with valid pointers.
        unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        let _ = child.try_wait();
        println!(
            "{:<34} {:>8.1} {:>9} {:>10}",
            format!("{}{}", s.join(" "), if capped { "" } else { " (no -mem)" }),
            start.elapsed().as_secs_f64(),
            usage.ru_maxrss / 1024,
            human_bytes(std::fs::metadata(&out)?.len())
        );
    }
    std::fs::remove_dir_all(&tree)?;
    Ok(())
}

fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let status = cmd.status()?;
    anyhow::ensure!(status.success(), "{cmd:?} failed");
    Ok(())
}
