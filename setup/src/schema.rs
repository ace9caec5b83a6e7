//! The layout of /data: `/data/appliance/schema` holds the number of the layout the data is in
//! ([`appliance_spec::DATA_SCHEMA`] of the image that last wrote it). At every boot, before
//! anything reads /data, `appliance-admin boot` brings it to this image's layout with the
//! migrations below (writing the new number after each one), or, finding a higher number than
//! its own, refuses: it changes nothing, and the meeting services do not start
//! (`/run/appliance/data-schema-refused`, which their units check).
//!
//! A migration runs on the first boot of the image that brings it, which is a trial boot: if
//! that version fails its trial, the previous one finds /data in a layout it does not know
//! and refuses too. So a migration must only add (new files, new keys older images ignore)
//! whenever it can, and raise the number only when older images would damage the data.

use std::io::Write;

use anyhow::{bail, Context, Result};
use appliance_spec::DATA_SCHEMA;

use crate::fsutil;
use crate::paths::Paths;

/// The layout before this file existed.
pub const FIRST_SCHEMA: u32 = 1;

/// One step from the layout `to - 1` to `to`.
pub struct Migration {
    pub to: u32,
    /// What it changes, for the console.
    pub what: &'static str,
    pub run: fn(&Paths) -> Result<()>,
}

/// Every migration, oldest first. Layout 1 is the first; none exists yet.
pub const MIGRATIONS: &[Migration] = &[];

/// The layout /data is in (a missing file: the first layout).
pub fn current(paths: &Paths) -> Result<u32> {
    let path = paths.data_schema();
    match std::fs::read_to_string(&path) {
        Ok(text) => text.trim().parse().with_context(|| {
            format!(
                "{} holds {:?}, not a number",
                paths.display(&path),
                text.trim()
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(FIRST_SCHEMA),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", paths.display(&path))),
    }
}

fn write(paths: &Paths, n: u32) -> Result<()> {
    fsutil::atomic_write(
        &paths.data_schema(),
        format!("{n}\n").as_bytes(),
        0o644,
        None,
    )
}

/// At boot: migrate /data to this image's layout, or refuse a newer one.
pub fn check_and_migrate(paths: &Paths, out: &mut dyn Write) -> Result<()> {
    migrate(paths, DATA_SCHEMA, MIGRATIONS, out)
}

/// [`check_and_migrate`] towards `target` with `migrations`.
pub fn migrate(
    paths: &Paths,
    target: u32,
    migrations: &[Migration],
    out: &mut dyn Write,
) -> Result<()> {
    let found = current(paths)?;
    let flag = paths.data_schema_refused();
    if found > target {
        if let Some(dir) = flag.parent() {
            fsutil::ensure_dir(dir, 0o755, None)?;
        }
        fsutil::atomic_write(&flag, format!("{found}\n").as_bytes(), 0o644, None)?;
        let _ = writeln!(
            out,
            "setup: /data is in layout {found}, written by a newer version of this appliance; this version knows layout {target} only. It does not start the meeting services and changes nothing on /data. Start the newer version again (appliance-admin update status, appliance-admin update rollback)."
        );
        bail!("/data is in layout {found}, newer than this version's {target}: the meeting services are not started");
    }
    fsutil::remove_if_exists(&flag)?;
    let mut at = found;
    for m in migrations.iter().filter(|m| m.to > found && m.to <= target) {
        if m.to != at + 1 {
            bail!("no migration of /data from layout {at} to {}", at + 1);
        }
        let _ = writeln!(out, "setup: migrating /data to layout {}: {}", m.to, m.what);
        (m.run)(paths).with_context(|| {
            format!(
                "migrating /data from layout {at} to {} ({}) failed",
                m.to, m.what
            )
        })?;
        write(paths, m.to)?;
        at = m.to;
    }
    if at != target {
        bail!("no migration of /data from layout {at} to {target}");
    }
    if !paths.data_schema().exists() {
        write(paths, target)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn add_marker(paths: &Paths) -> Result<()> {
        std::fs::write(paths.at("/data/appliance/marker"), "2")?;
        Ok(())
    }

    fn fails(_: &Paths) -> Result<()> {
        bail!("disk full")
    }

    fn machine() -> (tempfile::TempDir, Paths) {
        let d = tempfile::tempdir().unwrap();
        let paths = Paths::new(d.path());
        std::fs::create_dir_all(paths.appliance_dir()).unwrap();
        (d, paths)
    }

    #[test]
    fn a_new_machine_gets_the_current_number() {
        let (_d, paths) = machine();
        assert_eq!(current(&paths).unwrap(), FIRST_SCHEMA);
        let mut out = Vec::new();
        check_and_migrate(&paths, &mut out).unwrap();
        assert_eq!(current(&paths).unwrap(), DATA_SCHEMA);
        assert!(out.is_empty());
    }

    #[test]
    fn a_newer_image_migrates_and_writes_the_number_after() {
        let (_d, paths) = machine();
        let steps = [Migration {
            to: 2,
            what: "adds a marker",
            run: add_marker,
        }];
        let mut out = Vec::new();
        migrate(&paths, 2, &steps, &mut out).unwrap();
        assert_eq!(current(&paths).unwrap(), 2);
        assert!(paths.at("/data/appliance/marker").exists());
        assert!(String::from_utf8(out)
            .unwrap()
            .contains("migrating /data to layout 2: adds a marker"));
        // A migration that fails leaves the number where it was.
        let (_d, paths) = machine();
        let steps = [Migration {
            to: 2,
            what: "x",
            run: fails,
        }];
        let e = migrate(&paths, 2, &steps, &mut Vec::new()).unwrap_err();
        assert!(format!("{e:#}").contains("disk full"), "{e:#}");
        assert_eq!(current(&paths).unwrap(), 1);
        // A gap is an error, not a silent jump.
        let e = migrate(&paths, 3, &[], &mut Vec::new()).unwrap_err();
        assert!(
            e.to_string()
                .contains("no migration of /data from layout 1 to 3"),
            "{e}"
        );
    }

    #[test]
    fn an_older_image_refuses_newer_data_and_stops_the_meeting_services() {
        let (_d, paths) = machine();
        write(&paths, 5).unwrap();
        let mut out = Vec::new();
        let e = migrate(&paths, 1, &[], &mut out).unwrap_err();
        assert!(
            e.to_string()
                .contains("layout 5, newer than this version's 1"),
            "{e}"
        );
        assert!(String::from_utf8(out)
            .unwrap()
            .contains("does not start the meeting services"));
        assert_eq!(current(&paths).unwrap(), 5, "nothing changed");
        assert!(paths.data_schema_refused().exists());
        // The newer image again: the flag goes.
        migrate(&paths, 5, &[], &mut Vec::new()).unwrap();
        assert!(!paths.data_schema_refused().exists());
        std::fs::write(paths.data_schema(), "five\n").unwrap();
        assert!(current(&paths)
            .unwrap_err()
            .to_string()
            .contains("not a number"));
    }
}
