//! The `backup create` and `backup restore` commands: where the archive and the passphrase come
//! from and go to (a file, standard input/output, the terminal).
//!
//! Over SSH without a terminal (`ssh admin@HOST sudo appliance-admin …`), standard output can
//! carry the archive and standard input the passphrase, and for a restore the passphrase line
//! followed by the archive; see docs/first-boot.md, "Moving to another machine".

use crate::backup::{self, Summary};
use crate::passphrase::{self, Source};
use crate::paths::Paths;
use crate::restore;
use crate::steps::Ctx;
use crate::term;
use anyhow::{bail, Context, Result};
use std::io::Write;
use std::os::unix::io::AsRawFd;
use std::path::Path;

fn is_dash(p: &Path) -> bool {
    p == Path::new("-")
}

fn describe(s: &Summary) -> String {
    format!(
        "backup of {} ({} version {}, {} files and directories, made {})",
        s.manifest.domain,
        s.manifest.image,
        s.manifest.image_version,
        s.members,
        s.manifest.created
    )
}

/// `backup create [--out FILE|-]`: without --out, standard output unless it is a terminal.
pub fn create(paths: &Paths, out: Option<&Path>, source: &Source) -> Result<()> {
    let stdout = std::io::stdout();
    let to_stdout = out.is_none_or(is_dash);
    // Refused before the passphrase is asked.
    if to_stdout && term::is_tty(stdout.as_raw_fd()) {
        bail!("the backup is binary data and standard output is a terminal; give a file with --out FILE, or redirect the output (--out - > backup.age)");
    }
    let stdin = std::io::stdin();
    let pass = passphrase::new_passphrase(source, &mut stdin.lock())?;
    match out {
        Some(file) if !is_dash(file) => {
            let s = backup::create_file(paths, &pass, backup::WORK_FACTOR, file)?;
            println!("Wrote the {} to {}.", describe(&s), file.display());
            println!("Keep the passphrase: without it nobody, you included, can open the backup.");
        }
        _ => {
            let mut buf = Vec::new();
            let s = backup::create(paths, &pass, backup::WORK_FACTOR, &mut buf)?;
            let mut lock = stdout.lock();
            lock.write_all(&buf)
                .and_then(|()| lock.flush())
                .context("cannot write the backup to standard output")?;
            eprintln!(
                "appliance-admin: wrote the {} to standard output",
                describe(&s)
            );
        }
    }
    Ok(())
}

/// `backup restore FILE|-`. With `-`, the archive is read from standard input, after the
/// passphrase line when --passphrase-stdin is given.
pub fn restore(ctx: &mut Ctx, file: &Path, source: &Source, force: bool) -> Result<()> {
    // Refused before anything is asked or read.
    restore::check_allowed(ctx.paths, force)?;
    if is_dash(file) && *source == Source::Terminal {
        bail!("the backup comes on standard input, so the passphrase cannot be typed there: give it as the first line of standard input with --passphrase-stdin (the archive follows it), or in a file with --passphrase-file FILE");
    }
    let mut archive = if is_dash(file) {
        None
    } else {
        Some(
            std::fs::File::open(file)
                .with_context(|| format!("cannot open the backup {}", file.display()))?,
        )
    };
    let stdin = std::io::stdin();
    let mut input = stdin.lock();
    let pass = passphrase::existing_passphrase(source, &mut input)?;
    match archive.as_mut() {
        Some(f) => restore::run(ctx, f, &pass, force),
        None => restore::run(ctx, &mut input, &pass, force),
    }
}
