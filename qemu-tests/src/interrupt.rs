//! What happens when a build is stopped: Ctrl-C, or SIGTERM from a CI timeout or a service
//! manager. The programs the build started (mmdebstrap and the apt and dpkg under it,
//! mksquashfs, ...) each run in a process group of their own, so the terminal's Ctrl-C reaches
//! only the build; the build then stops each group (SIGTERM, then SIGKILL after a grace time),
//! removes every unfinished file (`*.partial`) in the directories it writes, and exits with
//! 128 + the signal's number. Nothing keeps writing the cache after the build is gone.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Default)]
struct State {
    /// Process groups of running children.
    groups: Vec<i32>,
    /// Directories whose `*.partial` entries are removed on the way out.
    dirs: Vec<PathBuf>,
}

/// Set once a signal arrived: the build is being stopped.
static STOPPING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

static STATE: Mutex<State> = Mutex::new(State {
    groups: Vec::new(),
    dirs: Vec::new(),
});

/// How long children get to stop on their own (mmdebstrap unmounts and removes its temporary
/// directory) before they are killed.
const GRACE: Duration = Duration::from_secs(20);

fn state() -> std::sync::MutexGuard<'static, State> {
    STATE.lock().unwrap_or_else(|e| e.into_inner())
}

/// Starts watching for SIGINT, SIGTERM and SIGHUP. Call once, early in a command that runs
/// children.
pub fn install() -> std::io::Result<()> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP])?;
    std::thread::spawn(move || {
        if let Some(sig) = signals.forever().next() {
            STOPPING.store(true, std::sync::atomic::Ordering::SeqCst);
            eprintln!("\nstopping: the build was interrupted (signal {sig})");
            stop_children();
            remove_partials();
            std::process::exit(128 + sig);
        }
    });
    Ok(())
}

/// A child's process group is running.
pub fn child_started(group: u32) {
    if let Ok(g) = i32::try_from(group) {
        state().groups.push(g);
    }
}

/// A child's process group has ended. If the build is being stopped (the child ended because
/// it was told to), this waits for the process to exit instead of going on with the build.
pub fn child_finished(group: u32) {
    if let Ok(g) = i32::try_from(group) {
        state().groups.retain(|x| *x != g);
    }
    while STOPPING.load(std::sync::atomic::Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `*.partial` entries of `dir` are removed if the build is stopped.
pub fn clean_on_stop(dir: &Path) {
    let mut s = state();
    if !s.dirs.iter().any(|d| d == dir) {
        s.dirs.push(dir.to_path_buf());
    }
}

/// Stops every child still running (SIGTERM, then SIGKILL after a grace time): on a signal, or
/// when a failing build leaves one running that it no longer needs.
pub fn stop_children() {
    let groups = state().groups.clone();
    for g in &groups {
        // SAFETY: kill(2) with a negative pid signals that process group; no memory involved.
        unsafe { libc::kill(-g, libc::SIGTERM) };
    }
    let deadline = Instant::now() + GRACE;
    while Instant::now() < deadline && !state().groups.is_empty() {
        std::thread::sleep(Duration::from_millis(200));
        // A group whose leader is gone has ended as far as the build is concerned.
        state().groups.retain(|g| {
            // SAFETY: signal 0 only checks that the process group exists.
            unsafe { libc::kill(-*g, 0) == 0 }
        });
    }
    for g in state().groups.iter() {
        // SAFETY: as above.
        unsafe { libc::kill(-g, libc::SIGKILL) };
    }
}

fn remove_partials() {
    let dirs = state().dirs.clone();
    for dir in dirs {
        remove_partials_in(&dir);
    }
}

/// Removes the `*.partial` files and directories directly in `dir`.
pub fn remove_partials_in(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        if e.file_name().to_string_lossy().ends_with(".partial") {
            let p = e.path();
            let _ = if p.is_dir() {
                std::fs::remove_dir_all(&p)
            } else {
                std::fs::remove_file(&p)
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partials_are_removed_and_nothing_else() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join(".x.raw.partial"), "x").unwrap();
        std::fs::create_dir(d.path().join("packages.partial")).unwrap();
        std::fs::write(d.path().join("x.raw"), "x").unwrap();
        remove_partials_in(d.path());
        let left: Vec<String> = std::fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(left, ["x.raw"]);
    }
}
