//! The backup passphrase: typed on the terminal (twice for a new backup, echo off), or the
//! first line of standard input or of a file, for scripts and for `ssh … sudo appliance-admin`
//! where no terminal is allocated.
//!
//! Over SSH the passphrase and the archive share the one standard input of a restore: the
//! first line is the passphrase and the archive follows it. That is why the same buffered
//! reader serves both ([`first_line`] reads only up to the end of the line).

use crate::term::{self, EchoOff};
use anyhow::{bail, Context, Result};
use appliance_spec::validate;
use std::io::{BufRead, Write};
use std::os::unix::io::AsRawFd;
use std::path::PathBuf;

/// Where the passphrase comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// Typed on standard input, which must be a terminal.
    Terminal,
    /// The first line of standard input.
    Stdin,
    /// The first line of this file.
    File(PathBuf),
}

impl Source {
    pub fn new(stdin: bool, file: Option<PathBuf>) -> Source {
        match (stdin, file) {
            (_, Some(f)) => Source::File(f),
            (true, None) => Source::Stdin,
            (false, None) => Source::Terminal,
        }
    }
}

/// One line without its line end; an empty input is an error.
pub fn first_line(input: &mut dyn BufRead, from: &str) -> Result<String> {
    let mut line = String::new();
    if input
        .read_line(&mut line)
        .with_context(|| format!("cannot read the passphrase from {from}"))?
        == 0
    {
        bail!("no passphrase was given ({from} is empty)");
    }
    Ok(line.trim_end_matches(['\n', '\r']).to_string())
}

fn from_file(path: &PathBuf) -> Result<String> {
    let f = std::fs::File::open(path)
        .with_context(|| format!("cannot open the passphrase file {}", path.display()))?;
    first_line(&mut std::io::BufReader::new(f), &path.display().to_string())
}

/// Read one line from the terminal on standard input (read through `stdin`, its one buffered
/// reader), without echo.
fn typed(prompt: &str, stdin: &mut dyn BufRead) -> Result<String> {
    let _guard = EchoOff::new(std::io::stdin().as_raw_fd());
    eprint!("{prompt}: ");
    std::io::stderr().flush()?;
    first_line(stdin, "the terminal")
}

fn need_terminal() -> Result<()> {
    if !term::is_tty(std::io::stdin().as_raw_fd()) {
        bail!("the passphrase must be typed on a terminal; without one (a script, or `ssh HOST sudo appliance-admin …`) give it as the first line of standard input with --passphrase-stdin, or in a file with --passphrase-file FILE");
    }
    Ok(())
}

/// The strength rules of host passwords, worded for a passphrase.
pub fn check_strength(p: &str) -> Result<(), String> {
    validate::password(p, "", "").map_err(|m| m.replace("password", "passphrase"))
}

/// A passphrase for a new backup. On the terminal it is asked twice; from stdin or a file it
/// is taken once. Either way it must pass [`check_strength`].
pub fn new_passphrase(source: &Source, stdin: &mut dyn BufRead) -> Result<String> {
    let p = match source {
        Source::Stdin => first_line(stdin, "standard input")?,
        Source::File(f) => from_file(f)?,
        Source::Terminal => {
            need_terminal()?;
            for _ in 0..3 {
                let p1 = typed(
                    &format!(
                        "Passphrase for the backup (at least {} characters; not shown)",
                        validate::MIN_PASSWORD_LEN
                    ),
                    stdin,
                )?;
                if let Err(m) = check_strength(&p1) {
                    eprintln!("  {m}");
                    continue;
                }
                if typed("Type the same passphrase again", stdin)? != p1 {
                    eprintln!("  The two passphrases are different; please type them again.");
                    continue;
                }
                return Ok(p1);
            }
            bail!("no passphrase was chosen after three tries; no backup was written")
        }
    };
    check_strength(&p).map_err(|m| anyhow::anyhow!("{m} No backup was written."))?;
    Ok(p)
}

/// The passphrase of an existing backup (asked once on the terminal).
pub fn existing_passphrase(source: &Source, stdin: &mut dyn BufRead) -> Result<String> {
    match source {
        Source::Stdin => first_line(stdin, "standard input"),
        Source::File(f) => from_file(f),
        Source::Terminal => {
            need_terminal()?;
            typed("Passphrase of the backup", stdin)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Cursor, Read};

    #[test]
    fn the_archive_follows_the_passphrase_line_on_one_input() {
        let mut input = Cursor::new(b"Tulip-Harbor-42\r\nAGE-DATA\x00\xff".to_vec());
        assert_eq!(
            existing_passphrase(&Source::Stdin, &mut input).unwrap(),
            "Tulip-Harbor-42"
        );
        let mut rest = Vec::new();
        input.read_to_end(&mut rest).unwrap();
        assert_eq!(rest, b"AGE-DATA\x00\xff");
    }

    #[test]
    fn weak_passphrases_are_refused_in_words_about_passphrases() {
        let e = new_passphrase(&Source::Stdin, &mut Cursor::new(b"short\n".to_vec()))
            .unwrap_err()
            .to_string();
        assert!(e.contains("passphrase is too short"), "{e}");
        assert!(e.contains("No backup was written"), "{e}");
        let e = new_passphrase(&Source::Stdin, &mut Cursor::new(Vec::new())).unwrap_err();
        assert!(e.to_string().contains("no passphrase was given"), "{e}");
        assert_eq!(
            new_passphrase(
                &Source::Stdin,
                &mut Cursor::new(b"Violet-Ocean-Lamp\n".to_vec())
            )
            .unwrap(),
            "Violet-Ocean-Lamp"
        );
    }

    #[test]
    fn a_passphrase_file_gives_its_first_line() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("pass");
        std::fs::write(&f, "Amber-River-Stone\nignored\n").unwrap();
        let src = Source::new(false, Some(f.clone()));
        assert_eq!(
            existing_passphrase(&src, &mut Cursor::new(Vec::new())).unwrap(),
            "Amber-River-Stone"
        );
        let e = existing_passphrase(
            &Source::File(d.path().join("missing")),
            &mut Cursor::new(Vec::new()),
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("cannot open the passphrase file"),
            "{e}"
        );
    }
}
