//! The image the cargo tests build and boot, configured in one place.
//!
//! `builder/tests/image.rs` builds it with the `appliance` binary and the scenario tests
//! (`scenarios/tests/`) with the builder library; both use [`overrides`] on the repository's
//! `appliance.toml` and write to [`out_dir`], so they build the same configuration and the
//! second build finds the root file system in the cache.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::{Context, Result};

use crate::host;

/// How long a test boot may take to print its readiness line (TCG on a small machine).
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(420);

/// The file names the build gives the test image and its manifest.
pub const IMAGE_FILE: &str = "jitsi-appliance.raw";
pub const MANIFEST_FILE: &str = "jitsi-appliance.manifest.json";

/// The name of the package [`local_deb_dir`] makes, and the file it installs.
pub const LOCAL_PACKAGE: &str = "appliance-local-test";
pub const LOCAL_PACKAGE_FILE: &str = "usr/share/appliance-local-test/marker";

/// The repository's root directory (this crate lives in `<root>/qemu-tests`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(".."))
}

/// The configuration file the test image starts from.
pub fn config_path() -> PathBuf {
    repo_root().join("appliance.toml")
}

/// The build's working directory (package cache, root file system cache, logs).
pub fn build_dir() -> PathBuf {
    repo_root().join("build")
}

/// Where the test image and its companions are written.
pub fn out_dir() -> PathBuf {
    build_dir().join("test-out")
}

/// The `--set` overrides of the test image: no Jitsi packages (their repository is not always
/// reachable), every output format, a package from a local directory of .debs (so the offline
/// package source is exercised by the same build) and a partial first-boot seed (the build
/// puts it on the ESP; the machine makes it the wizard's default and removes it). Makes the
/// local package first, in `build/test-debs`.
pub fn overrides() -> Result<Vec<String>> {
    let debs = local_deb_dir(&build_dir().join("test-debs"))?;
    Ok(vec![
        "jitsi.enabled=false".into(),
        r#"image.formats=["raw", "raw.zst", "qcow2", "vmdk", "vhd", "bmap"]"#.into(),
        format!("packages.local_debs=\"{}\"", debs.display()),
        r#"firstboot.timezone="UTC""#.into(),
    ])
}

/// Makes `<dir>/debs` holding one small package, [`LOCAL_PACKAGE`], built with dpkg-deb, and
/// returns that directory.
pub fn local_deb_dir(dir: &Path) -> Result<PathBuf> {
    let tree = dir.join("tree");
    let _ = std::fs::remove_dir_all(dir);
    let marker = tree.join(LOCAL_PACKAGE_FILE);
    let write = |path: &Path, text: &str| -> Result<()> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
    };
    write(
        &tree.join("DEBIAN/control"),
        &format!(
            "Package: {LOCAL_PACKAGE}\nVersion: 1.0\nArchitecture: all\n\
             Maintainer: Tests <tests@example.invalid>\nDepends: zstd\n\
             Description: marker installed from a local directory of .debs\n"
        ),
    )?;
    write(&marker, "local\n")?;
    let debs = dir.join("debs");
    std::fs::create_dir_all(&debs).with_context(|| format!("cannot create {}", debs.display()))?;
    let dpkg_deb = host::require_program("dpkg-deb", "dpkg")?;
    // The same package every time (fixed file times, SOURCE_DATE_EPOCH for the archive): the
    // build's package layer is keyed by the .deb's content, so a new one would install again.
    for path in [&marker, &tree.join("DEBIAN/control")] {
        std::fs::File::options()
            .write(true)
            .open(path)?
            .set_modified(std::time::UNIX_EPOCH + Duration::from_secs(1_700_000_000))?;
    }
    host::run(
        Command::new(dpkg_deb)
            .args(["--build", "--root-owner-group"])
            .arg(&tree)
            .arg(debs.join(format!("{LOCAL_PACKAGE}_1.0_all.deb")))
            .env("SOURCE_DATE_EPOCH", "1700000000"),
    )
    .context("building the local test package")?;
    Ok(debs)
}

/// Boots run one at a time within a test binary: two QEMUs under TCG on a small machine would
/// only slow each other down past their timeouts. A machine that only waits for a while (a host
/// sitting in a room, a timer to fire) lends its turn ([`lend_turn_while_idle`]) so that the
/// next machine can boot meanwhile.
pub fn one_boot_at_a_time() -> BootTurn {
    let mut t = turns();
    // One machine, and one more per lent turn.
    while t.running > t.lent {
        t = TURNS.freed.wait(t).unwrap_or_else(|e| e.into_inner());
    }
    t.running += 1;
    BootTurn(())
}

/// Lets one more machine boot while the caller's machine waits. Dropping the value takes the
/// turn back: it waits until the machine that started meanwhile is done, so that two machines
/// are never busy at once.
pub fn lend_turn_while_idle() -> LentTurn {
    turns().lent += 1;
    TURNS.freed.notify_all();
    LentTurn(())
}

/// A turn to run a machine, given back when dropped.
#[must_use = "the turn is given back as soon as this is dropped"]
pub struct BootTurn(());

/// A turn lent by a waiting machine, taken back when dropped.
#[must_use = "the turn is taken back as soon as this is dropped"]
pub struct LentTurn(());

impl Drop for BootTurn {
    fn drop(&mut self) {
        turns().running -= 1;
        TURNS.freed.notify_all();
    }
}

impl Drop for LentTurn {
    fn drop(&mut self) {
        let mut t = turns();
        t.lent -= 1;
        while t.running > 1 + t.lent {
            t = TURNS.freed.wait(t).unwrap_or_else(|e| e.into_inner());
        }
    }
}

struct Turns {
    state: Mutex<TurnState>,
    freed: Condvar,
}

struct TurnState {
    running: u32,
    lent: u32,
}

static TURNS: Turns = Turns {
    state: Mutex::new(TurnState {
        running: 0,
        lent: 0,
    }),
    freed: Condvar::new(),
};

fn turns() -> MutexGuard<'static, TurnState> {
    // A test that panicked while holding the lock leaves nothing behind that matters.
    TURNS.state.lock().unwrap_or_else(|e| e.into_inner())
}

/// An empty `build/test/<name>` for one test's console logs and disks.
pub fn workdir(name: &str) -> Result<PathBuf> {
    let d = build_dir().join("test").join(name);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).with_context(|| format!("cannot create {}", d.display()))?;
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lent_turn_lets_one_more_machine_run() {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::Arc;
        let first = one_boot_at_a_time();
        let second_ran = Arc::new(AtomicBool::new(false));
        let start_second = |flag: Arc<AtomicBool>| {
            std::thread::spawn(move || {
                let _t = one_boot_at_a_time();
                flag.store(true, Ordering::SeqCst);
            })
        };
        let second = start_second(second_ran.clone());
        std::thread::sleep(Duration::from_millis(200));
        assert!(!second_ran.load(Ordering::SeqCst), "two turns at once");
        let lent = lend_turn_while_idle();
        second.join().unwrap();
        assert!(second_ran.load(Ordering::SeqCst));
        drop(lent);
        drop(first);
        // A lender takes its turn back only once the borrower is done.
        let first = one_boot_at_a_time();
        let lent = lend_turn_while_idle();
        let borrower = std::thread::spawn(|| {
            let _t = one_boot_at_a_time();
            std::thread::sleep(Duration::from_millis(300));
        });
        std::thread::sleep(Duration::from_millis(100));
        let taking_back = std::time::Instant::now();
        drop(lent);
        assert!(
            taking_back.elapsed() >= Duration::from_millis(100),
            "the turn was taken back while the borrower still ran"
        );
        borrower.join().unwrap();
        drop(first);
        // All given back: the next one gets its turn at once.
        let _third = one_boot_at_a_time();
    }

    #[test]
    fn the_local_package_is_a_valid_deb() {
        let dir = tempfile::tempdir().unwrap();
        let debs = local_deb_dir(dir.path()).unwrap_or_else(|e| panic!("{e:#}"));
        let deb = debs.join(format!("{LOCAL_PACKAGE}_1.0_all.deb"));
        let out = host::run(
            Command::new("dpkg-deb")
                .arg("--field")
                .arg(&deb)
                .arg("Package"),
        )
        .unwrap_or_else(|e| panic!("{e:#}"));
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), LOCAL_PACKAGE);
        let out = host::run(Command::new("dpkg-deb").arg("--contents").arg(&deb))
            .unwrap_or_else(|e| panic!("{e:#}"));
        let listing = String::from_utf8_lossy(&out.stdout);
        assert!(listing.contains(LOCAL_PACKAGE_FILE), "{listing}");
        // Made again, it is the same file: the package layer's key covers its content.
        let first = std::fs::read(&deb).unwrap();
        std::thread::sleep(Duration::from_millis(1100));
        let again = local_deb_dir(dir.path()).unwrap();
        assert!(
            first == std::fs::read(again.join(format!("{LOCAL_PACKAGE}_1.0_all.deb"))).unwrap(),
            "the local test package differs from one build to the next"
        );
    }
}
