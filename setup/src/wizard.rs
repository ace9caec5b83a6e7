//! Running the wizard: on stdin/stdout (SSH login through sudo) or on every active console at
//! once (appliance-wizard.service), where the first person to confirm wins.

use crate::fsutil;
use crate::lock::{self, WhenBusy};
use crate::paths::Paths;
use crate::prompt::{Confirmed, Wizard};
use crate::runner::{Runner, SystemRunner};
use crate::sshkeys;
use crate::steps::{self, Ctx};
use crate::term;
use anyhow::{bail, Context, Result};
use appliance_spec::seed::Seed;
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::io::AsRawFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

/// Held for the life of the process by the wizard that won, so a wizard in another process
/// (console vs. SSH) cannot confirm too.
static CLAIM_FILE: Mutex<Option<File>> = Mutex::new(None);

/// Try to become the one wizard whose answers are used.
fn claim(paths: &Paths) -> bool {
    let Ok(mut held) = CLAIM_FILE.lock() else {
        return false;
    };
    if held.is_some() {
        return false;
    }
    let _ = fsutil::ensure_dir(&paths.at("/run/appliance"), 0o755, None);
    let Ok(f) = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(paths.at("/run/appliance/wizard.lock"))
    else {
        return false;
    };
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return false;
    }
    if paths.answers().exists() {
        return false;
    }
    *held = Some(f);
    true
}

fn defaults(paths: &Paths) -> Seed {
    // Broken defaults only cost convenience; never block the wizard on them.
    Seed::load(&paths.defaults()).unwrap_or_default()
}

/// Save confirmed answers and apply them, printing progress to `out`. Installed keys the
/// person chose to drop go first, before the answers' keys are added.
fn save_and_apply(
    paths: &Paths,
    confirmed: &Confirmed,
    runner: &mut dyn Runner,
    out: &mut dyn Write,
) -> Result<()> {
    let _lock = lock::exclusive(paths, WhenBusy::Wait, out)?;
    fsutil::ensure_dir(&paths.appliance_dir(), 0o700, None)?;
    if !confirmed.remove_keys.is_empty() {
        sshkeys::remove(paths, &confirmed.remove_keys)?;
        writeln!(
            out,
            "setup: removed {} SSH key(s) that were installed before",
            confirmed.remove_keys.len()
        )?;
    }
    confirmed.answers.save(&paths.answers())?;
    steps::apply(&mut Ctx {
        paths,
        runner,
        out,
        from_boot: false,
    })
}

/// Before asking anything: maybe there is nothing to ask.
fn already_answered(paths: &Paths, out: &mut dyn Write) -> Result<bool> {
    if paths.setup_done().exists() {
        writeln!(out, "Setup is already complete. Manage meeting hosts with `appliance-admin hosts` and see `appliance-admin status`.")?;
        return Ok(true);
    }
    if paths.answers().exists() {
        writeln!(
            out,
            "The setup answers were already confirmed; finishing the setup."
        )?;
        let _lock = lock::exclusive(paths, WhenBusy::Wait, out)?;
        let mut runner = SystemRunner;
        steps::apply(&mut Ctx {
            paths,
            runner: &mut runner,
            out,
            from_boot: false,
        })?;
        return Ok(true);
    }
    Ok(false)
}

/// The wizard on this process's stdin/stdout.
pub fn on_stdio(paths: &Paths) -> Result<()> {
    let mut stdout = std::io::stdout();
    if already_answered(paths, &mut stdout)? {
        return Ok(());
    }
    let stdin = std::io::stdin();
    let fd = stdin.as_raw_fd();
    let tty = term::is_tty(fd).then_some(fd);
    let answers = Wizard::new(
        stdin.lock(),
        std::io::stdout(),
        tty,
        paths.zoneinfo(),
        sshkeys::installed(paths)?,
    )
    .run(&defaults(paths), &|| claim(paths))?;
    match answers {
        Some(a) => save_and_apply(paths, &a, &mut SystemRunner, &mut stdout),
        None => Ok(()),
    }
}

/// Writes to every console (so progress shows wherever someone is watching).
struct AllConsoles(Vec<File>);

impl Write for AllConsoles {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        for f in &mut self.0 {
            let _ = f.write_all(buf);
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// One wizard per active console; returns when one has applied its answers.
pub fn on_consoles(paths: &Paths) -> Result<()> {
    let active = fs::read_to_string(paths.active_consoles())
        .with_context(|| format!("cannot read {}", paths.display(&paths.active_consoles())))?;
    let names: Vec<String> = active.split_whitespace().map(str::to_string).collect();
    if names.is_empty() {
        bail!("no active console is listed in /sys/class/tty/console/active");
    }
    let mut consoles = Vec::new();
    for n in &names {
        let dev: PathBuf = paths.at(&format!("/dev/{n}"));
        match OpenOptions::new().read(true).write(true).open(&dev) {
            Ok(f) => consoles.push((n.clone(), f)),
            Err(e) => eprintln!("appliance-admin: cannot open {}: {e}", dev.display()),
        }
    }
    if consoles.is_empty() {
        bail!("none of the consoles ({}) could be opened", names.join(" "));
    }
    {
        let mut first = consoles[0].1.try_clone()?;
        if already_answered(paths, &mut first)? {
            return Ok(());
        }
    }
    let won = Arc::new(AtomicBool::new(false));
    let (tx, rx) = mpsc::channel::<Result<bool>>();
    let all: Vec<File> = consoles
        .iter()
        .filter_map(|(_, f)| f.try_clone().ok())
        .collect();
    let all = Arc::new(Mutex::new(all));
    for (name, file) in &consoles {
        let (name, file) = (name.clone(), file.try_clone()?);
        let (paths, tx, won, all) = (paths.clone(), tx.clone(), won.clone(), all.clone());
        std::thread::spawn(move || {
            let r = console_wizard(&paths, &name, file, &won, &all);
            let _ = tx.send(r);
        });
    }
    // If setup finishes another way (e.g. over SSH), give the consoles back.
    {
        let (paths, won, all) = (paths.clone(), won.clone(), all.clone());
        std::thread::spawn(move || loop {
            std::thread::sleep(Duration::from_secs(2));
            if paths.setup_done().exists() && !won.load(Ordering::SeqCst) {
                if let Ok(files) = all.lock() {
                    let mut w =
                        AllConsoles(files.iter().filter_map(|f| f.try_clone().ok()).collect());
                    let _ = writeln!(w, "\r\nSetup was completed elsewhere.\r");
                }
                std::process::exit(0);
            }
        });
    }
    drop(tx);
    let mut last_err = None;
    for r in rx {
        match r {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(e) => last_err = Some(e),
        }
    }
    match last_err {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Ok(true): this console's answers were applied; Ok(false): another console won.
fn console_wizard(
    paths: &Paths,
    name: &str,
    file: File,
    won: &AtomicBool,
    all: &Mutex<Vec<File>>,
) -> Result<bool> {
    let fd = file.as_raw_fd();
    let reader: Box<dyn BufRead> = Box::new(BufReader::new(file.try_clone()?));
    let writer = CrLf(file.try_clone()?);
    let claim_fn = || {
        if won.swap(true, Ordering::SeqCst) {
            return false;
        }
        if !claim(paths) {
            return false;
        }
        if let Ok(files) = all.lock() {
            let mut w = AllConsoles(files.iter().filter_map(|f| f.try_clone().ok()).collect());
            let _ = writeln!(w, "\r\nSetup was confirmed on {name}; progress follows.\r");
        }
        true
    };
    let answers = Wizard::new(
        reader,
        writer,
        Some(fd),
        paths.zoneinfo(),
        sshkeys::installed(paths)?,
    )
    .run(&defaults(paths), &claim_fn)?;
    let Some(a) = answers else { return Ok(false) };
    let files: Vec<File> = all
        .lock()
        .map(|f| f.iter().filter_map(|x| x.try_clone().ok()).collect())
        .unwrap_or_default();
    let mut out = CrLf(AllConsoles(files));
    save_and_apply(paths, &a, &mut SystemRunner, &mut out)
        .map(|_| true)
        .inspect_err(|e| {
            let _ = writeln!(out, "setup: failed: {e:#}");
        })
}

/// Consoles opened directly may lack output post-processing: send "\r\n" for "\n".
struct CrLf<W: Write>(W);

impl<W: Write> Write for CrLf<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut out = Vec::with_capacity(buf.len() + 8);
        for &b in buf {
            if b == b'\n' {
                out.push(b'\r');
            }
            out.push(b);
        }
        self.0.write_all(&out)?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runner::RecordingRunner;
    use crate::steps::tests::{answers, machine};
    use crate::testkeys::{ED25519, P256};
    use crate::tls::tests::fake_openssl;

    #[test]
    fn keys_the_person_declined_are_removed_before_the_new_ones_are_added() {
        let d = tempfile::tempdir().unwrap();
        let paths = machine(d.path());
        sshkeys::install(&paths, &[P256.to_string()]).unwrap();
        let confirmed = Confirmed {
            answers: answers(), // its key: ED25519
            remove_keys: vec![P256.to_string()],
        };
        let mut out = Vec::new();
        save_and_apply(
            &paths,
            &confirmed,
            &mut RecordingRunner::with_handler(fake_openssl),
            &mut out,
        )
        .unwrap();
        assert_eq!(
            sshkeys::installed(&paths).unwrap(),
            vec![ED25519.to_string()]
        );
        let out = String::from_utf8(out).unwrap();
        assert!(
            out.contains("setup: removed 1 SSH key(s) that were installed before"),
            "{out}"
        );
        assert!(out.ends_with("setup: complete\n"), "{out}");
    }
}
