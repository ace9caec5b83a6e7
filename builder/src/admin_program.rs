//! The in-image program `appliance-admin` (crate `setup/`: first-boot wizard, host accounts,
//! certificates). It is compiled for the image's architecture from this workspace and laid into
//! the root file system at /usr/bin/appliance-admin, so the root tarball's cache key covers it.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::config::Arch;
use crate::host;

/// Where the program goes in the image.
pub const IMAGE_PATH: &str = "usr/bin/appliance-admin";

/// Set to the path of an already built `appliance-admin` to use it instead of compiling one
/// (for example when building from a release without the source tree).
pub const PREBUILT_ENV: &str = "APPLIANCE_ADMIN_BIN";

/// Set to a directory to compile the program there instead of in the workspace's `target/`.
pub const TARGET_DIR_ENV: &str = "APPLIANCE_ADMIN_TARGET_DIR";

/// Where cargo compiles the program (in a subdirectory per architecture): [`TARGET_DIR_ENV`]
/// if set, else `<workspace>/target/appliance-admin`. The program depends on the builder's
/// source, not on the image's settings, so it is compiled once per checkout (like the builder
/// itself), and a new or emptied package cache does not compile it again. Where the
/// workspace's `target/` cannot be written (a read-only source tree), `<cache_dir>/cargo-target`
/// is used. The path never reaches the program's bytes (see [`remap_flags`]).
pub fn target_dir(cache_dir: &Path) -> PathBuf {
    if let Some(dir) = std::env::var_os(TARGET_DIR_ENV) {
        return PathBuf::from(dir);
    }
    let in_workspace = workspace_dir().join("target/appliance-admin");
    if std::fs::create_dir_all(&in_workspace).is_ok() {
        in_workspace
    } else {
        cache_dir.join("cargo-target")
    }
}

/// The Rust target the image's architecture runs. glibc targets: the image is Debian 12, and so
/// is the host the build runs on, so the program links against the same glibc.
pub fn rust_target(arch: Arch) -> &'static str {
    match arch {
        Arch::X86_64 => "x86_64-unknown-linux-gnu",
        Arch::Arm64 => "aarch64-unknown-linux-gnu",
    }
}

/// The C linker cargo needs for a target that is not the host's own, with its Debian package.
pub fn cross_linker(arch: Arch) -> Option<(&'static str, &'static str)> {
    match (arch, std::env::consts::ARCH) {
        (Arch::Arm64, "x86_64") => Some(("aarch64-linux-gnu-gcc", "gcc-aarch64-linux-gnu")),
        (Arch::X86_64, "aarch64") => Some(("x86_64-linux-gnu-gcc", "gcc-x86-64-linux-gnu")),
        _ => None,
    }
}

/// The workspace this builder was compiled from; the program's source lives in its `setup/`.
fn workspace_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// `appliance-admin` for the image, being compiled on a thread of its own from the start of a
/// build, so that on a first build (minutes of compiling) it overlaps the package
/// installation (minutes of downloading and unpacking). When the build no longer needs it (a
/// failed stage), dropping it stops the compiler.
pub struct Compiling {
    thread: Option<std::thread::JoinHandle<Result<PathBuf>>>,
    /// The last line cargo printed, to show while waiting.
    last_line: std::sync::Arc<std::sync::Mutex<String>>,
}

/// Starts compiling (or finding, with [`PREBUILT_ENV`]) `appliance-admin` for `arch`.
/// `target_dir` keeps the compiled dependencies between builds.
pub fn start(arch: Arch, target_dir: &Path, offline: bool) -> Compiling {
    let last_line = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let shown = last_line.clone();
    let target_dir = target_dir.to_path_buf();
    let thread = std::thread::spawn(move || match std::env::var_os(PREBUILT_ENV) {
        Some(p) => {
            let p = PathBuf::from(p);
            if !p.is_file() {
                bail!(
                    "{PREBUILT_ENV} points at {}, which is not a file; unset it to compile the program from setup/",
                    p.display()
                );
            }
            Ok(p)
        }
        None => compile(arch, &target_dir, offline, &mut |line: &str| {
            if let Ok(mut l) = shown.lock() {
                *l = line.to_string();
            }
        }),
    });
    Compiling {
        thread: Some(thread),
        last_line,
    }
}

impl Compiling {
    /// Waits for the program, passing cargo's latest line to `on_line` meanwhile, and copies
    /// it to `<root>/usr/bin/`.
    pub fn install(mut self, root: &Path, mut on_line: impl FnMut(&str)) -> Result<()> {
        let thread = self
            .thread
            .take()
            .context("appliance-admin was installed already")?;
        let mut shown = String::new();
        while !thread.is_finished() {
            let line = self.last_line.lock().map(|l| l.clone()).unwrap_or_default();
            if line != shown {
                on_line(&line);
                shown = line;
            }
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        let binary = thread
            .join()
            .map_err(|_| anyhow::anyhow!("compiling appliance-admin stopped unexpectedly"))??;
        let dest = root.join(IMAGE_PATH);
        if let Some(dir) = dest.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::copy(&binary, &dest).with_context(|| {
            format!(
                "cannot copy {} into the image tree {}",
                binary.display(),
                dest.display()
            )
        })?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(0o755))?;
        Ok(())
    }
}

impl Drop for Compiling {
    fn drop(&mut self) {
        if self.thread.as_ref().is_some_and(|t| !t.is_finished()) {
            // The build failed before it needed the program: no compiler may outlive it.
            crate::interrupt::stop_children();
        }
    }
}

/// `build.rustflags` that map the source, registry and target directories to fixed names.
fn remap_flags(workspace: &Path, target_dir: &Path) -> String {
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"));
    let flags: Vec<String> = [
        (cargo_home.as_path(), "/cargo"),
        (target_dir, "/target"),
        (workspace, "/appliance"),
    ]
    .iter()
    .map(|(from, to)| format!("\"--remap-path-prefix={}={to}\"", from.display()))
    .collect();
    format!("build.rustflags=[{}]", flags.join(", "))
}

/// A crate compiled into the program.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Crate {
    pub name: String,
    pub version: String,
    /// The `license` of its Cargo.toml.
    pub license: Option<String>,
    /// The SHA-256 of the crate file, from Cargo.lock (none for the workspace's own crates).
    pub checksum: Option<String>,
}

/// The crates linked into `appliance-admin` for `arch`: its normal dependencies for that
/// target, without build-time-only crates (build scripts' dependencies, procedural macros).
pub fn crates(arch: Arch, offline: bool) -> Result<Vec<Crate>> {
    let workspace = workspace_dir();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&workspace)
        .args(["metadata", "--format-version", "1", "--locked"])
        .args(["--filter-platform", rust_target(arch)]);
    if offline {
        cmd.arg("--offline");
    }
    let out = host::run(&mut cmd).context("listing the crates of appliance-admin")?;
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let lock: toml::Table = toml::from_str(
        &std::fs::read_to_string(workspace.join("Cargo.lock")).context("reading Cargo.lock")?,
    )?;
    let checksums: std::collections::HashMap<(String, String), String> = lock
        .get("package")
        .and_then(|p| p.as_array())
        .into_iter()
        .flatten()
        .filter_map(|p| {
            Some((
                (
                    p.get("name")?.as_str()?.to_string(),
                    p.get("version")?.as_str()?.to_string(),
                ),
                p.get("checksum")?.as_str()?.to_string(),
            ))
        })
        .collect();
    let packages: std::collections::HashMap<&str, &serde_json::Value> = meta["packages"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| Some((p["id"].as_str()?, p)))
        .collect();
    let nodes: std::collections::HashMap<&str, &serde_json::Value> = meta["resolve"]["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|n| Some((n["id"].as_str()?, n)))
        .collect();
    let root = packages
        .values()
        .find(|p| p["name"] == "appliance-admin")
        .and_then(|p| p["id"].as_str())
        .context("cargo metadata does not list appliance-admin")?;
    let is_proc_macro = |p: &serde_json::Value| {
        p["targets"].as_array().is_some_and(|ts| {
            ts.iter().all(|t| {
                t["kind"]
                    .as_array()
                    .is_some_and(|k| k.iter().any(|k| k == "proc-macro"))
            })
        })
    };
    let mut seen = std::collections::BTreeSet::new();
    let mut stack = vec![root];
    let mut out = Vec::new();
    while let Some(id) = stack.pop() {
        if !seen.insert(id) {
            continue;
        }
        let Some(node) = nodes.get(id) else { continue };
        for dep in node["deps"].as_array().into_iter().flatten() {
            let normal = dep["dep_kinds"]
                .as_array()
                .is_some_and(|ks| ks.iter().any(|k| k["kind"].is_null()));
            if let (true, Some(pkg)) = (normal, dep["pkg"].as_str()) {
                if packages.get(pkg).is_some_and(|p| !is_proc_macro(p)) {
                    stack.push(pkg);
                }
            }
        }
        if id == root {
            continue;
        }
        if let Some(p) = packages.get(id) {
            let name = p["name"].as_str().unwrap_or_default().to_string();
            let version = p["version"].as_str().unwrap_or_default().to_string();
            out.push(Crate {
                checksum: checksums.get(&(name.clone(), version.clone())).cloned(),
                license: p["license"].as_str().map(str::to_string),
                name,
                version,
            });
        }
    }
    out.sort_by(|a, b| (&a.name, &a.version).cmp(&(&b.name, &b.version)));
    Ok(out)
}

fn compile(
    arch: Arch,
    target_dir: &Path,
    offline: bool,
    on_line: &mut impl FnMut(&str),
) -> Result<PathBuf> {
    let workspace = workspace_dir();
    let manifest = workspace.join("setup/Cargo.toml");
    if !manifest.is_file() {
        bail!(
            "the source of the in-image program is not at {} (this builder was compiled from {}); \
             build from the project's source tree, or set {PREBUILT_ENV} to a built appliance-admin",
            manifest.display(),
            workspace.display()
        );
    }
    let target = rust_target(arch);
    // One directory per architecture: cargo locks a target directory for the whole of a
    // compilation, and an arm64 build beside an x86_64 one must not wait for it.
    let target_dir = &target_dir.join(arch.to_string());
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&workspace)
        .args(["build", "--release", "--locked", "-p", "appliance-admin"])
        .args(["--target", target])
        .arg("--target-dir")
        .arg(target_dir)
        // The same program whatever directory it is built in: the paths compiled into it
        // (in panic messages) are the same on every machine.
        .arg("--config")
        .arg(remap_flags(&workspace, target_dir))
        // Flags meant for the builder's own compilation must not leak into this one.
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_BUILD_TARGET")
        .env_remove("CARGO_TARGET_DIR");
    if offline {
        cmd.arg("--offline");
    }
    if let Some((linker, package)) = cross_linker(arch) {
        if host::find_program(linker).is_none() {
            bail!(
                "linking appliance-admin for {arch} needs {linker} (Debian package {package}); \
                 run `appliance doctor --install`"
            );
        }
        if arch == Arch::Arm64 && !Path::new("/usr/aarch64-linux-gnu/lib/crti.o").exists() {
            bail!(
                "linking appliance-admin for arm64 needs the arm64 C library for cross builds \
                 (Debian package libc6-dev-arm64-cross); run `appliance doctor --install`"
            );
        }
        let var = format!(
            "CARGO_TARGET_{}_LINKER",
            target.to_uppercase().replace('-', "_")
        );
        cmd.env(var, linker);
        require_rust_target(target)?;
    }
    let log = target_dir.join("appliance-admin-build.log");
    std::fs::create_dir_all(target_dir)?;
    let _ = std::fs::remove_file(&log);
    host::run_logged(&mut cmd, &log, |line| on_line(line)).with_context(|| {
        format!(
            "compiling the in-image program appliance-admin for {target} failed (log: {})",
            log.display()
        )
    })?;
    let binary = target_dir.join(target).join("release/appliance-admin");
    if !binary.is_file() {
        bail!(
            "cargo reported success but {} does not exist",
            binary.display()
        );
    }
    Ok(binary)
}

/// Whether the Rust standard library for `target` is installed (rustup target add).
pub fn rust_target_installed(target: &str) -> bool {
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let Ok(out) = Command::new(rustc)
        .args(["--print", "target-libdir", "--target", target])
        .output()
    else {
        return false;
    };
    let dir = String::from_utf8_lossy(&out.stdout).trim().to_string();
    out.status.success()
        && std::fs::read_dir(&dir)
            .map(|mut d| {
                d.any(|e| {
                    e.map(|e| e.file_name().to_string_lossy().starts_with("libstd-"))
                        .unwrap_or(false)
                })
            })
            .unwrap_or(false)
}

fn require_rust_target(target: &str) -> Result<()> {
    if !rust_target_installed(target) {
        bail!(
            "the Rust standard library for {target} is not installed; run `rustup target add {target}` \
             (or `appliance doctor --install`)"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_match_debian_architectures() {
        assert_eq!(rust_target(Arch::X86_64), "x86_64-unknown-linux-gnu");
        assert_eq!(rust_target(Arch::Arm64), "aarch64-unknown-linux-gnu");
    }

    #[test]
    fn the_host_target_needs_no_cross_linker() {
        if std::env::consts::ARCH == "x86_64" {
            assert!(cross_linker(Arch::X86_64).is_none());
            assert_eq!(
                cross_linker(Arch::Arm64).map(|l| l.0),
                Some("aarch64-linux-gnu-gcc")
            );
        }
    }

    #[test]
    fn the_program_compiles_in_the_workspace_unless_told_otherwise() {
        let cache = Path::new("/nonexistent/cache");
        let dir = target_dir(cache);
        assert!(dir.ends_with("target/appliance-admin"), "{}", dir.display());
        // Only this test sets the variable, and it removes it before returning.
        std::env::set_var(TARGET_DIR_ENV, "/elsewhere/admin");
        let chosen = target_dir(cache);
        std::env::remove_var(TARGET_DIR_ENV);
        assert_eq!(chosen, Path::new("/elsewhere/admin"));
    }

    #[test]
    fn a_missing_prebuilt_binary_is_named() {
        let dir = tempfile::tempdir().unwrap();
        // Only this test sets the variable, and it restores it before returning.
        std::env::set_var(PREBUILT_ENV, dir.path().join("nope"));
        let err = start(Arch::X86_64, dir.path(), false)
            .install(dir.path(), |_| {})
            .unwrap_err();
        std::env::remove_var(PREBUILT_ENV);
        assert!(format!("{err:#}").contains("APPLIANCE_ADMIN_BIN"));
    }
}
