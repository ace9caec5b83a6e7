//! Prints the figures the project tracks (docs/benchmarks.md): build time per stage for a cold
//! build (empty caches), a build with nothing changed, a build after one file of a feature
//! changed, and a warm build that writes its outputs again; the peak memory of each; image
//! sizes; and the time to boot to the readiness line in QEMU. A benchmark, not a test: it
//! measures and prints, it does not judge.
//!
//!   cargo run --release --example benchmark -- [--skip-cold] [--no-boot] [--set k=v ...]
//!   cargo run --release --example benchmark -- --squashfs    # compression options instead
//!
//! The appliance is built without Jitsi's packages (--set jitsi.enabled=false), so it runs
//! where Jitsi's repository cannot be reached. It works on a copy of overlays/ in
//! build/benchmark, so the change it makes to a feature's file never touches the project.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Context;
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
    while let Some(a) = args.next() {
        match a.as_str() {
            "--skip-cold" => skip_cold = true,
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
        runs.push(measure("cold", &overrides, &bench, &out)?);
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
    // SAFETY: fork in a single-threaded example; the child only runs the build and exits.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        let code = match build(&config, &BuildOptions::new(out, bench.join("work"))) {
            Ok(s) => match serde_json::to_vec(&s).map(|j| std::fs::write(&summary_file, j)) {
                Ok(Ok(())) => 0,
                _ => 1,
            },
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
    if status != 0 {
        anyhow::bail!("the {name} build failed");
    }
    let summary: serde_json::Value = serde_json::from_slice(&std::fs::read(&summary_file)?)?;
    Ok(Run {
        name,
        summary: serde_json::from_value(summary).context("reading the build summary")?,
        // wait4's figure is this build's own: the largest of the child and the programs it
        // ran. (RUSAGE_CHILDREN would carry the largest of every earlier build.)
        children_peak_kib: usage.ru_maxrss,
    })
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
