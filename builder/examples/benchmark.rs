//! Prints the figures the project tracks: build time per stage (cold: empty caches; warm: the
//! same configuration again), raw and compressed image size, and time to boot to the readiness
//! marker in QEMU. A benchmark, not a test: it measures and prints, it does not judge.
//!
//!   cargo run --release --example benchmark -- [--skip-cold] [--config appliance.toml] [--set k=v ...]
//!
//! By default the appliance is built without Jitsi's packages (--set jitsi.enabled=false), so it
//! runs where Jitsi's repository cannot be reached.

use std::path::PathBuf;
use std::time::Duration;

use appliance::build::{build, BuildOptions, BuildSummary};
use appliance::config::Config;
use appliance::progress::human_bytes;
use appliance::testing::{self, Firmware};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let mut config_path = PathBuf::from("appliance.toml");
    let mut overrides = vec!["jitsi.enabled=false".to_string()];
    let mut skip_cold = false;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--skip-cold" => skip_cold = true,
            "--config" => config_path = args.next().map(PathBuf::from).unwrap_or(config_path),
            "--set" => overrides.extend(args.next()),
            other => anyhow::bail!("unknown argument {other:?}"),
        }
    }
    let bench_dir = PathBuf::from("build/benchmark");
    let out_dir = bench_dir.join("out");
    let mut runs: Vec<(&str, BuildSummary)> = Vec::new();

    if !skip_cold {
        // Cold: an empty package cache and no cached root file system.
        let cold_cache = bench_dir.join("cold-cache");
        let _ = std::fs::remove_dir_all(&cold_cache);
        let mut o = overrides.clone();
        o.push(format!(
            "packages.cache_dir=\"{}\"",
            std::fs::canonicalize(".")?.join(&cold_cache).display()
        ));
        let config = Config::load(&config_path, &o)?;
        eprintln!("== cold build (empty caches)");
        runs.push(("cold", build(&config, &opts(&bench_dir, &out_dir))?));
        // Warm: the same configuration again.
        eprintln!("== warm build (same configuration)");
        runs.push(("warm", build(&config, &opts(&bench_dir, &out_dir))?));
        let _ = std::fs::remove_dir_all(&cold_cache);
    } else {
        let config = Config::load(&config_path, &overrides)?;
        eprintln!("== build with the project's caches");
        runs.push(("first", build(&config, &opts(&bench_dir, &out_dir))?));
        eprintln!("== warm build (same configuration)");
        runs.push(("warm", build(&config, &opts(&bench_dir, &out_dir))?));
    }

    eprintln!("== boot to the readiness marker (UEFI and BIOS)");
    let last = &runs.last().expect("at least one build").1;
    let report = testing::test_image(
        &last.image,
        &[Firmware::Uefi, Firmware::Bios],
        false,
        Duration::from_secs(420),
        &bench_dir.join("boot"),
        true,
    )?;

    println!("\nBuild time per stage (seconds)");
    print!("{:<10}", "stage");
    for (name, _) in &runs {
        print!("{name:>10}");
    }
    println!();
    for (i, t) in runs[0].1.timings.iter().enumerate() {
        print!("{:<10}", t.stage);
        for (_, s) in &runs {
            print!("{:>10.1}", s.timings.get(i).map_or(0.0, |t| t.seconds));
        }
        println!();
    }
    print!("{:<10}", "total");
    for (_, s) in &runs {
        print!("{:>10.1}", s.total_seconds);
    }
    println!();

    println!("\nImage");
    for f in &last.outputs {
        println!("  {:<40} {:>12}", f.file, human_bytes(f.bytes));
    }
    println!("\nBoot under {}", report.accel);
    for b in &report.boots {
        println!(
            "  {:<5} boot {}: marker after {:>5.1} s (guest uptime {} s)",
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

fn opts(bench_dir: &std::path::Path, out_dir: &std::path::Path) -> BuildOptions {
    BuildOptions::new(out_dir, bench_dir.join("work"))
}
