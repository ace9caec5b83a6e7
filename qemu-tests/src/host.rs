//! Running host programs (the build's mmdebstrap, mksquashfs, gpg, ...; the tests' qemu-img,
//! openssl, ssh, ...) with errors that say which program failed, how, and what to do about it.
//! The builder re-exports this module as `appliance::host`.

use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use anyhow::{anyhow, bail, Context, Result};

/// Starts `cmd` with piped output in a process group of its own, which a stopped build stops
/// (`interrupt`); the caller reports `child_finished` when it has waited for it.
fn spawn_in_group(cmd: &mut Command, program: &str) -> Result<std::process::Child> {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .map_err(|e| spawn_error(program, e))?;
    crate::interrupt::child_started(child.id());
    Ok(child)
}

/// Runs `cmd` to completion, capturing output; fails with the tails of stderr and stdout.
pub fn run(cmd: &mut Command) -> Result<Output> {
    let program = program_name(cmd);
    let child = spawn_in_group(cmd, &program)?;
    let group = child.id();
    let out = child.wait_with_output();
    crate::interrupt::child_finished(group);
    let out = out.with_context(|| format!("waiting for {program}"))?;
    if !out.status.success() {
        let mut msg = format!(
            "{program} failed ({}):\n{}",
            out.status,
            tail(&String::from_utf8_lossy(&out.stderr), 30)
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !stdout.trim().is_empty() {
            msg.push_str(&format!("\n--- its output ---\n{}", tail(&stdout, 30)));
        }
        bail!(msg);
    }
    Ok(out)
}

/// Runs `cmd` with stdout and stderr appended to `log`, calling `on_line` for each line of
/// output (for progress). On failure the error quotes the last lines of the log.
pub fn run_logged(cmd: &mut Command, log: &Path, mut on_line: impl FnMut(&str)) -> Result<()> {
    let program = program_name(cmd);
    let log_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("cannot write the log {}", log.display()))?;
    let mut child = spawn_in_group(cmd, &program)?;
    let group = child.id();
    // Merge both streams line by line into the log; stderr is read on a thread so neither pipe
    // can fill up and block the child.
    let stderr = child.stderr.take().context("child stderr")?;
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let tx2 = tx.clone();
    let t_err = std::thread::spawn(move || forward_lines(stderr, tx2));
    let stdout = child.stdout.take().context("child stdout")?;
    let t_out = std::thread::spawn(move || forward_lines(stdout, tx));
    let mut writer = std::io::LineWriter::new(log_file);
    let mut last: std::collections::VecDeque<String> = Default::default();
    for line in rx {
        use std::io::Write;
        let _ = writeln!(writer, "{line}");
        on_line(&line);
        if last.len() == 40 {
            last.pop_front();
        }
        last.push_back(line);
    }
    let _ = t_err.join();
    let _ = t_out.join();
    let status = child
        .wait()
        .with_context(|| format!("waiting for {program}"));
    crate::interrupt::child_finished(group);
    let status = status?;
    if !status.success() {
        let lines: Vec<String> = last.into_iter().collect();
        bail!(
            "{program} failed ({status}); last lines of {}:\n{}",
            log.display(),
            lines.join("\n")
        );
    }
    Ok(())
}

fn forward_lines(r: impl Read, tx: std::sync::mpsc::Sender<String>) {
    for line in BufReader::new(r).split(b'\n').map_while(|l| l.ok()) {
        if tx
            .send(String::from_utf8_lossy(&line).into_owned())
            .is_err()
        {
            break;
        }
    }
}

/// Where the programs are looked for after PATH: root's PATH usually has the sbin directories,
/// a user's may not, and a test runner's PATH may be minimal.
const SYSTEM_DIRS: [&str; 4] = ["/usr/sbin", "/sbin", "/usr/bin", "/bin"];

/// The full path of `program`: PATH first, then [`SYSTEM_DIRS`].
pub fn find_program(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(SYSTEM_DIRS.iter().map(PathBuf::from))
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

/// [`find_program`], failing with what to install when `program` is missing.
pub fn require_program(program: &str, package: &str) -> Result<PathBuf> {
    find_program(program).ok_or_else(|| {
        anyhow!(
            "`{program}` is not installed on this host (package {package}): run \
             `appliance doctor --install` (as root) to install the host tools, or \
             `apt-get install -y {package}`"
        )
    })
}

fn program_name(cmd: &Command) -> String {
    cmd.get_program().to_string_lossy().into_owned()
}

fn spawn_error(program: &str, e: std::io::Error) -> anyhow::Error {
    if e.kind() == std::io::ErrorKind::NotFound {
        anyhow!("{program} is not installed; run `appliance doctor --install` (as root) to install the host tools")
    } else {
        anyhow!("cannot start {program}: {e}")
    }
}

/// The last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Writes `text` to `path` as an executable program (mode 0755), for stand-ins that tests put
/// on PATH or hand to QEMU. The file is written by a child process: a file this process holds
/// open for writing cannot be executed (ETXTBSY) while a child that another thread is starting
/// still has the descriptor, and a shell that meets ETXTBSY goes on down PATH to the real
/// program. No thread here inherits a child's descriptors.
pub fn write_program(path: &Path, text: &str) -> Result<()> {
    use std::io::Write;
    let mut child = Command::new("sh")
        .args(["-c", "cat > \"$1\" && chmod 0755 \"$1\"", "sh"])
        .arg(path)
        .stdin(Stdio::piped())
        .spawn()
        .map_err(|e| spawn_error("sh", e))?;
    let written = child
        .stdin
        .take()
        .context("no pipe to sh")?
        .write_all(text.as_bytes());
    let status = child.wait()?;
    written.with_context(|| format!("cannot write {}", path.display()))?;
    if !status.success() {
        bail!("cannot write {} ({status})", path.display());
    }
    Ok(())
}

/// Whether the process runs as root (mmdebstrap's root mode, loop-free disk writes as root).
pub fn is_root() -> bool {
    // SAFETY-free check: /proc/self/status has the real and effective uid.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_program_names_the_package_and_the_doctor() {
        let err = require_program("no-such-program-xyz", "no-such-package").unwrap_err();
        let msg = format!("{err}");
        assert!(msg.contains("apt-get install -y no-such-package"), "{msg}");
        assert!(msg.contains("appliance doctor --install"), "{msg}");
        assert!(find_program("sh").is_some());
    }

    #[test]
    fn failures_quote_stderr_and_stdout() {
        let err = run(Command::new("sh").args(["-c", "echo out-line; echo err-line >&2; exit 3"]))
            .unwrap_err();
        let msg = format!("{err}");
        assert!(msg.contains("sh failed"), "{msg}");
        assert!(
            msg.contains("err-line") && msg.contains("out-line"),
            "{msg}"
        );
        let err = run(&mut Command::new("no-such-program-xyz")).unwrap_err();
        assert!(
            format!("{err}").contains("appliance doctor --install"),
            "{err}"
        );
    }

    #[test]
    fn a_written_program_runs_while_other_threads_start_children() {
        // Other threads keep starting children, as parallel tests do; each program written
        // here must run at once, not fail with "Text file busy".
        let dir = tempfile::tempdir().unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let starters: Vec<_> = (0..3)
            .map(|_| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        let _ = Command::new("true").status();
                    }
                })
            })
            .collect();
        let mut failures = Vec::new();
        for i in 0..150 {
            let program = dir.path().join(format!("p{i}"));
            write_program(&program, &format!("#!/bin/sh\necho {i}\n")).unwrap();
            match Command::new(&program).output() {
                Ok(out) if out.stdout == format!("{i}\n").as_bytes() => {}
                other => failures.push(format!("{i}: {other:?}")),
            }
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for s in starters {
            s.join().unwrap();
        }
        assert!(failures.is_empty(), "{failures:?}");
    }

    #[test]
    fn tail_keeps_the_last_lines() {
        assert_eq!(tail("a\nb\nc\n", 2), "b\nc");
        assert_eq!(tail("a", 5), "a");
    }
}
