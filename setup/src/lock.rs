//! One state-changing `appliance-admin` at a time: `boot`, `apply`, the wizard's apply, `hosts`
//! and `acme renew` all read and rewrite answers.toml, state.toml, the accounts and the TLS
//! pair. Two at once (a timer's renewal while someone runs `apply` over SSH) could each undo
//! the other's changes. An flock on /data/appliance/lock serialises them; the kernel drops it
//! when the process ends, so a crash never leaves a stale lock behind.

use crate::fsutil;
use crate::paths::Paths;
use anyhow::{bail, Context, Result};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::io::AsRawFd;

/// Held while alive.
#[derive(Debug)]
pub struct Lock {
    _file: File,
}

/// What to do when another appliance-admin holds the lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhenBusy {
    /// Stop with an error that says so (commands someone typed; timers that retry).
    Fail,
    /// Say so on `out`, then wait for it (the boot, and a wizard whose answers are confirmed).
    Wait,
}

fn flock(f: &File, flags: libc::c_int) -> std::io::Result<()> {
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(f.as_raw_fd(), flags) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Take the lock if no other appliance-admin holds it; `None` when one does.
pub fn try_exclusive(paths: &Paths) -> Result<Option<Lock>> {
    let file = open(paths)?;
    match flock(&file, libc::LOCK_EX | libc::LOCK_NB) {
        Ok(()) => Ok(Some(Lock { _file: file })),
        Err(e) if e.raw_os_error() == Some(libc::EWOULDBLOCK) => Ok(None),
        Err(e) => Err(e).context("cannot lock /data/appliance/lock"),
    }
}

fn open(paths: &Paths) -> Result<File> {
    fsutil::ensure_dir(&paths.appliance_dir(), 0o700, None)?;
    let path = paths.appliance_dir().join("lock");
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", paths.display(&path)))
}

/// Take the lock on /data/appliance/lock.
pub fn exclusive(paths: &Paths, when_busy: WhenBusy, out: &mut dyn Write) -> Result<Lock> {
    let path = paths.appliance_dir().join("lock");
    let file = open(paths)?;
    match flock(&file, libc::LOCK_EX | libc::LOCK_NB) {
        Ok(()) => return Ok(Lock { _file: file }),
        Err(e) if e.raw_os_error() == Some(libc::EWOULDBLOCK) => {}
        Err(e) => return Err(e).with_context(|| format!("cannot lock {}", paths.display(&path))),
    }
    match when_busy {
        WhenBusy::Fail => bail!(
            "another appliance-admin is running (boot, apply, the wizard, hosts, acme renew or \
             update); nothing was changed. Try again when it has finished."
        ),
        WhenBusy::Wait => {
            let _ = writeln!(
                out,
                "setup: another appliance-admin is running; waiting for it to finish"
            );
            let _ = out.flush();
            flock(&file, libc::LOCK_EX)
                .with_context(|| format!("cannot lock {}", paths.display(&path)))?;
            Ok(Lock { _file: file })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    #[test]
    fn a_second_run_is_refused_or_waits() {
        let d = tempfile::tempdir().unwrap();
        let paths = Paths::new(d.path());
        let mut out = Vec::new();
        let held = exclusive(&paths, WhenBusy::Fail, &mut out).unwrap();
        let e = exclusive(&paths, WhenBusy::Fail, &mut out).unwrap_err();
        assert!(
            e.to_string().contains("another appliance-admin is running"),
            "{e}"
        );

        // A waiting run says why it waits, and gets the lock once the first one is done.
        #[derive(Clone, Default)]
        struct Shared(Arc<Mutex<Vec<u8>>>);
        impl Write for Shared {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let said = Shared::default();
        let (p, mut w) = (paths.clone(), said.clone());
        let waiter = std::thread::spawn(move || exclusive(&p, WhenBusy::Wait, &mut w).is_ok());
        let start = Instant::now();
        while !String::from_utf8_lossy(&said.0.lock().unwrap()).contains("waiting for it") {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "the waiter said nothing"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(!waiter.is_finished(), "it waits while the lock is held");
        drop(held);
        assert!(waiter.join().unwrap());
        // Released again when the waiter's lock was dropped.
        let again = exclusive(&paths, WhenBusy::Fail, &mut out).unwrap();
        assert!(try_exclusive(&paths).unwrap().is_none(), "held");
        drop(again);
        assert!(try_exclusive(&paths).unwrap().is_some(), "free");
    }
}
