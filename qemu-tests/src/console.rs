//! The guest's serial console: a background thread reads QEMU's serial socket into a shared,
//! never-truncated buffer (and a human-readable console.log), and waiters block on a condvar.

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Everything received so far.
#[derive(Debug, Default)]
pub(crate) struct ConsoleState {
    /// Every byte, as received.
    raw: Vec<u8>,
    /// Complete lines, without the line terminator.
    lines: Vec<String>,
    /// Bytes after the last newline (a prompt, or a line still being written).
    partial: Vec<u8>,
    /// The socket reached EOF or failed: QEMU closed it, normally because it exited.
    closed: bool,
}

impl ConsoleState {
    fn push(&mut self, bytes: &[u8]) {
        self.raw.extend_from_slice(bytes);
        for &b in bytes {
            if b == b'\n' {
                let line = std::mem::take(&mut self.partial);
                self.lines.push(clean_line(&line));
            } else {
                self.partial.push(b);
            }
        }
    }

    fn partial_line(&self) -> String {
        clean_line(&self.partial)
    }
}

/// Decodes a line leniently and drops the `\r` of CRLF endings (serial consoles use CRLF).
fn clean_line(bytes: &[u8]) -> String {
    let s = String::from_utf8_lossy(bytes);
    s.trim_end_matches('\r').to_string()
}

/// Result of a wait: which needle matched and the whole line it matched in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsoleMatch {
    /// Index into the needles passed to the wait.
    pub index: usize,
    /// The needle that matched.
    pub needle: String,
    /// The console line containing it.
    pub line: String,
}

/// Why a wait ended without a match.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WaitFailure {
    Timeout,
    Closed,
}

/// Shared console buffer plus the position from which the next wait searches.
pub(crate) struct Console {
    shared: Arc<(Mutex<ConsoleState>, Condvar)>,
    /// Index of the first line not yet examined by a wait. It may equal `lines.len() + 1`
    /// when a wait consumed the still-partial line, so that line is not matched twice.
    cursor: Mutex<usize>,
    writer: Mutex<UnixStream>,
    reader: Option<JoinHandle<()>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic in another holder does not make the console data unusable.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Console {
    /// Starts the reader thread on `stream`, appending everything to `log`.
    pub(crate) fn start(stream: UnixStream, mut log: File) -> std::io::Result<Console> {
        let writer = stream.try_clone()?;
        let shared = Arc::new((Mutex::new(ConsoleState::default()), Condvar::new()));
        let thread_shared = Arc::clone(&shared);
        let mut stream = stream;
        let reader = std::thread::Builder::new()
            .name("qemu-serial".into())
            .spawn(move || {
                let (state, cond) = &*thread_shared;
                let mut buf = [0u8; 8192];
                loop {
                    match stream.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            // console.log is a convenience for humans; a write error there
                            // must not stop the harness from seeing the console.
                            let _ = log.write_all(&buf[..n]);
                            let _ = log.flush();
                            lock(state).push(&buf[..n]);
                            cond.notify_all();
                        }
                    }
                }
                lock(state).closed = true;
                cond.notify_all();
            })?;
        Ok(Console {
            shared,
            cursor: Mutex::new(0),
            writer: Mutex::new(writer),
            reader: Some(reader),
        })
    }

    pub(crate) fn send(&self, text: &str) -> std::io::Result<()> {
        let mut w = lock(&self.writer);
        w.write_all(text.as_bytes())?;
        w.flush()
    }

    pub(crate) fn text(&self) -> String {
        String::from_utf8_lossy(&lock(&self.shared.0).raw).into_owned()
    }

    pub(crate) fn last_lines(&self, n: usize) -> Vec<String> {
        let st = lock(&self.shared.0);
        let mut out: Vec<String> = st.lines.iter().rev().take(n).rev().cloned().collect();
        if !st.partial.is_empty() {
            out.push(st.partial_line());
            if out.len() > n {
                out.remove(0);
            }
        }
        out
    }

    /// Waits until a line (complete, or the current partial one) since the cursor contains
    /// one of `needles`. The earliest such line wins; among needles, the first listed wins.
    pub(crate) fn wait_for_any(
        &self,
        needles: &[&str],
        timeout: Duration,
    ) -> Result<ConsoleMatch, WaitFailure> {
        self.wait_for(needles, timeout, true)
    }

    /// Like [`Console::wait_for_any`], but only complete lines count: for lines that are parsed
    /// whole, such as the boot report, which can arrive in several pieces.
    pub(crate) fn wait_for_complete_line(
        &self,
        needles: &[&str],
        timeout: Duration,
    ) -> Result<ConsoleMatch, WaitFailure> {
        self.wait_for(needles, timeout, false)
    }

    fn wait_for(
        &self,
        needles: &[&str],
        timeout: Duration,
        allow_partial: bool,
    ) -> Result<ConsoleMatch, WaitFailure> {
        let deadline = Instant::now() + timeout;
        let (state, cond) = &*self.shared;
        let mut cursor = lock(&self.cursor);
        let mut st = lock(state);
        loop {
            let find = |line: &str| {
                needles
                    .iter()
                    .position(|n| line.contains(n))
                    .map(|index| ConsoleMatch {
                        index,
                        needle: needles[index].to_string(),
                        line: line.to_string(),
                    })
            };
            while *cursor < st.lines.len() {
                let i = *cursor;
                *cursor += 1;
                if let Some(m) = find(&st.lines[i]) {
                    return Ok(m);
                }
            }
            // A prompt such as "login: " never gets its newline, so look at the partial too.
            if allow_partial && *cursor == st.lines.len() && !st.partial.is_empty() {
                if let Some(m) = find(&st.partial_line()) {
                    *cursor += 1;
                    return Ok(m);
                }
            }
            if st.closed {
                return Err(WaitFailure::Closed);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(WaitFailure::Timeout);
            }
            st = cond
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Waits for the reader thread after QEMU is gone (its socket is then closed).
    pub(crate) fn join_reader(&mut self) {
        if let Some(handle) = self.reader.take() {
            let _ = handle.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (Console, UnixStream) {
        let (a, b) = UnixStream::pair().unwrap();
        let log = tempfile::tempfile().unwrap();
        (Console::start(a, log).unwrap(), b)
    }

    #[test]
    fn lines_are_split_and_cursor_advances() {
        let (c, mut peer) = pair();
        peer.write_all(b"one\r\ntwo MARK\r\nthree MARK\r\nlogin: ")
            .unwrap();
        let t = Duration::from_secs(5);
        assert_eq!(c.wait_for_any(&["MARK"], t).unwrap().line, "two MARK");
        assert_eq!(c.wait_for_any(&["MARK"], t).unwrap().line, "three MARK");
        let m = c.wait_for_any(&["nope", "login:"], t).unwrap();
        assert_eq!((m.index, m.line.as_str()), (1, "login: "));
        // The partial line was consumed; completing it must not match again.
        peer.write_all(b"root\nafter\n").unwrap();
        assert_eq!(
            c.wait_for_any(&["after", "login"], t).unwrap().line,
            "after"
        );
        assert_eq!(c.last_lines(2), ["login: root", "after"]);
        assert!(c.text().starts_with("one\r\n"));
    }

    #[test]
    fn complete_line_wait_ignores_a_line_still_arriving() {
        let (c, mut peer) = pair();
        peer.write_all(b"REPORT a=1 b=").unwrap();
        let short = Duration::from_millis(200);
        assert!(c.wait_for_complete_line(&["REPORT"], short).is_err());
        peer.write_all(b"2 c=3\n").unwrap();
        let m = c
            .wait_for_complete_line(&["REPORT"], Duration::from_secs(5))
            .unwrap();
        assert_eq!(m.line, "REPORT a=1 b=2 c=3");
    }

    #[test]
    fn timeout_and_close_are_reported() {
        let (c, peer) = pair();
        let r = c.wait_for_any(&["x"], Duration::from_millis(100));
        assert_eq!(r.unwrap_err(), WaitFailure::Timeout);
        drop(peer);
        let r = c.wait_for_any(&["x"], Duration::from_secs(5));
        assert_eq!(r.unwrap_err(), WaitFailure::Closed);
    }

    #[test]
    fn send_reaches_the_peer() {
        let (c, mut peer) = pair();
        c.send("hello\n").unwrap();
        let mut buf = [0u8; 6];
        peer.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"hello\n");
    }
}
