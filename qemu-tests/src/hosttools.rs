//! Finding host programs, with errors that name the Debian package to install.

use std::path::PathBuf;
use std::process::{Command, Output};

use anyhow::{bail, Context, Result};

/// Looks `name` up in PATH, then in /usr/sbin and /sbin (not always in a user's PATH).
pub fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into(), "/usr/bin".into()])
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// [`find_program`], failing with "install it with `apt-get install <package>`".
pub fn require_program(name: &str, package: &str) -> Result<PathBuf> {
    match find_program(name) {
        Some(p) => Ok(p),
        None => bail!(
            "`{name}` is not installed on this host: install it with `apt-get install -y {package}`"
        ),
    }
}

/// Runs `cmd`, failing with its stderr unless it exits 0.
pub fn run_checked(cmd: &mut Command) -> Result<Output> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_program_names_the_package() {
        let err = require_program("no-such-program-xyz", "no-such-package").unwrap_err();
        assert!(format!("{err}").contains("apt-get install -y no-such-package"));
        assert!(find_program("sh").is_some());
    }
}
