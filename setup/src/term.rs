//! Terminal helpers: turning echo off for password entry on any tty file descriptor (the wizard
//! may run on /dev/ttyS0 or /dev/tty1 without being their controlling terminal, so a helper that
//! only knows /dev/tty is not enough).

use std::os::unix::io::RawFd;

pub fn is_tty(fd: RawFd) -> bool {
    // SAFETY: isatty only inspects the descriptor.
    unsafe { libc::isatty(fd) == 1 }
}

/// While alive, the terminal on `fd` does not echo typed characters.
pub struct EchoOff {
    fd: RawFd,
    saved: libc::termios,
}

impl EchoOff {
    /// None when `fd` is not a terminal (scripted input): nothing to hide then.
    pub fn new(fd: RawFd) -> Option<EchoOff> {
        if !is_tty(fd) {
            return None;
        }
        // SAFETY: termios is plain data; tcgetattr fills it for a valid tty descriptor.
        let mut t: libc::termios = unsafe { std::mem::zeroed() };
        if unsafe { libc::tcgetattr(fd, &mut t) } != 0 {
            return None;
        }
        let saved = t;
        // Keep ECHONL so the user sees the line end after pressing Enter.
        t.c_lflag &= !(libc::ECHO | libc::ECHOE | libc::ECHOK);
        t.c_lflag |= libc::ECHONL;
        // SAFETY: t is a valid termios copied from the same descriptor.
        if unsafe { libc::tcsetattr(fd, libc::TCSANOW, &t) } != 0 {
            return None;
        }
        Some(EchoOff { fd, saved })
    }
}

impl Drop for EchoOff {
    fn drop(&mut self) {
        // SAFETY: restores the attributes read in new() on the same descriptor.
        unsafe { libc::tcsetattr(self.fd, libc::TCSANOW, &self.saved) };
    }
}
