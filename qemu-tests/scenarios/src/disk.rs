//! The machine's disk seen from this host: a seed file put on the ESP of a copy of the image,
//! as a user would after writing it, and the data partition of a powered-off machine read back
//! to look for records of use.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};
use appliance_qemu_tests::host::run;
use appliance_spec::esp::SEED_FILE;

/// Copies `image` to `dst` (sparse) and puts `seed` on its ESP as `appliance-setup.toml`, as a
/// user would after writing the image: the image itself is left as it is.
pub fn copy_with_seed(image: &Path, esp_offset: u64, seed: &str, dst: &Path) -> Result<()> {
    let _ = std::fs::remove_file(dst);
    run(Command::new("cp")
        .arg("--sparse=always")
        .arg(image)
        .arg(dst))?;
    put_on_esp(dst, esp_offset, SEED_FILE, seed)
}

/// Writes `text` as `name` at the top of the FAT file system at `esp_offset` in `disk`.
pub fn put_on_esp(disk: &Path, esp_offset: u64, name: &str, text: &str) -> Result<()> {
    let tmp = tempfile::NamedTempFile::new()?;
    std::fs::write(tmp.path(), text)?;
    run(Command::new("mcopy")
        .arg("-o")
        .arg("-i")
        .arg(format!("{}@@{esp_offset}", disk.display()))
        .arg(tmp.path())
        .arg(format!("::{name}")))
    .context("putting a file on the ESP with mcopy (package mtools)")?;
    Ok(())
}

/// Reads the data partition of the powered-off `disk` (qcow2) from this machine and lists
/// what would be a record of use: journals, logs, login records, shell histories, core or heap
/// dumps, and any file holding one of `needles` (a room name, a client address). Files that hold
/// the configuration the test itself gave (the ACME server's address) are not searched.
pub fn scan_for_records(disk: &Path, data_offset: u64, needles: &[&str]) -> Result<Vec<String>> {
    let dir = tempfile::tempdir()?;
    let raw = dir.path().join("disk.raw");
    run(Command::new("qemu-img")
        .args(["convert", "-O", "raw"])
        .arg(disk)
        .arg(&raw))?;
    let tree = dir.path().join("data");
    std::fs::create_dir_all(&tree)?;
    run(Command::new("debugfs")
        .arg("-R")
        .arg(format!("rdump / {}", tree.display()))
        .arg(format!("{}?offset={data_offset}", raw.display())))
    .context("reading the data partition with debugfs (package e2fsprogs)")?;
    let mut found = Vec::new();
    let mut files = 0usize;
    walk(&tree, &mut |path| {
        files += 1;
        let rel = path
            .strip_prefix(&tree)
            .unwrap_or(path)
            .display()
            .to_string();
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let record_name = name.ends_with(".journal")
            || name.ends_with(".journal~")
            || name.ends_with(".log")
            || name.ends_with(".hprof")
            || name.ends_with("history")
            || name.starts_with("core")
            || ["wtmp", "btmp", "lastlog", "faillog", ".lesshst", ".viminfo"]
                .contains(&name.as_str());
        if record_name {
            found.push(format!("{rel}: a log or record file"));
        }
        let configured =
            rel.starts_with("appliance/answers.toml") || rel.starts_with("config/acme/");
        if !configured {
            if let Ok(bytes) = std::fs::read(path) {
                for n in needles {
                    if bytes.windows(n.len()).any(|w| w == n.as_bytes()) {
                        found.push(format!("{rel}: contains {n:?}"));
                    }
                }
            }
        }
    })?;
    if files == 0 {
        bail!(
            "the data partition read from {} holds no files at all",
            disk.display()
        );
    }
    Ok(found)
}

fn walk(dir: &Path, f: &mut dyn FnMut(&Path)) -> Result<()> {
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let t = e.file_type()?;
        if t.is_dir() {
            walk(&e.path(), f)?;
        } else if t.is_file() {
            f(&e.path());
        }
    }
    Ok(())
}
