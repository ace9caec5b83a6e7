//! `appliance-admin update`: signed A/B updates with automatic rollback (docs/updates.md).
//!
//! - [`apply`]: a bundle (file or https URL) is verified completely, then written into the
//!   slot that is not running, read back and checked, and armed for one trial boot;
//! - [`health`]: at every boot, a trial is committed when the machine is healthy, or the
//!   machine restarts into the previous slot; the older system records a trial that failed;
//! - [`status`], [`rollback`]: what the slots hold; going back to the other slot on purpose;
//! - [`channel`]: the daily check of `[updates] url`, which installs a newer version and
//!   restarts into it inside the update window when no meeting is in progress.
//!
//! The running slot is never written. What decides the next boot is the boot configuration on
//! the ESP ([`bootconfig`]); what the slots hold and how the last attempt ended is in
//! `/data/appliance/update.toml` ([`record`]). Everything done is said on stdout (the journal
//! and, from the units, the console), each line starting with `update:`.

pub mod apply;
pub mod bootconfig;
pub mod channel;
pub mod health;
pub mod record;
pub mod rollback;
pub mod slots;
pub mod status;

use anyhow::{bail, Context, Result};
use appliance_spec::release::{Release, RELEASE_FILE, UPDATE_KEYS_FILE};
use appliance_spec::signature::TrustedKeys;

use crate::boot;
use crate::paths::Paths;
use crate::runner::Cmd;
use crate::steps::Ctx;

use bootconfig::{Esp, Firmware};
use record::UpdateRecord;
use slots::Running;

/// What the running image says about itself (`/usr/lib/appliance/release.toml`).
pub fn release(paths: &Paths) -> Result<Release> {
    let path = paths.at(RELEASE_FILE);
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!("cannot read {RELEASE_FILE}: this image does not describe itself, so it cannot be updated")
    })?;
    toml::from_str(&text).with_context(|| format!("{RELEASE_FILE} cannot be read"))
}

/// The keys updates must be signed with (`/usr/lib/appliance/update-keys.pub`).
pub fn trusted_keys(paths: &Paths) -> Result<TrustedKeys> {
    let path = paths.at(UPDATE_KEYS_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
            "this image accepts no updates: it was built without [updates] trusted_keys ({UPDATE_KEYS_FILE} is missing). Install a new image instead"
        ),
        Err(e) => return Err(e).with_context(|| format!("cannot read {UPDATE_KEYS_FILE}")),
    };
    TrustedKeys::parse(&text, UPDATE_KEYS_FILE)
}

/// The running machine as updates see it.
pub struct Machine {
    pub release: Release,
    pub running: Running,
    pub firmware: Firmware,
}

impl Machine {
    pub fn load(paths: &Paths) -> Result<Machine> {
        Ok(Machine {
            release: release(paths)?,
            running: slots::running(paths)?,
            firmware: Firmware::detect(paths),
        })
    }

    /// What the running slot holds, for the record.
    pub fn running_record(&self) -> record::SlotRecord {
        record::SlotRecord {
            version: self.release.version.to_string(),
            root_hash: self.running.root_hash.clone().unwrap_or_default(),
            data_schema: self.release.data_schema,
        }
    }
}

/// Runs `f` with the ESP of the root's disk mounted (read-write only when `rw`), and unmounts
/// it again whatever `f` returns.
pub fn with_esp<T>(
    ctx: &mut Ctx,
    disk: &str,
    rw: bool,
    f: impl FnOnce(&mut Ctx, &Esp) -> Result<T>,
) -> Result<T> {
    let device = slots::esp(ctx.paths, disk)?.device;
    boot::mount_esp_device(ctx, &device, rw).with_context(|| {
        format!(
            "cannot mount the boot partition {}",
            ctx.paths.display(&device)
        )
    })?;
    let esp = Esp::new(ctx.paths.esp_mount());
    let result = f(ctx, &esp);
    if rw {
        esp.sync();
    }
    boot::umount_esp(ctx);
    result
}

/// Restarts the machine. With `tryboot`, into the armed trial: on the Raspberry Pi the
/// firmware needs the tryboot flag for that; elsewhere any restart boots the trial.
pub fn reboot(ctx: &mut Ctx, firmware: Firmware, tryboot: bool) -> Result<()> {
    let mut cmd = Cmd::new("systemctl");
    if ctx.from_boot {
        cmd = cmd.arg("--no-block");
    }
    cmd = cmd.arg("reboot");
    if tryboot && firmware == Firmware::RaspberryPi {
        // The argument reaches the firmware through the reboot system call.
        cmd = cmd.arg("0 tryboot");
    }
    ctx.runner.check(&cmd)?;
    Ok(())
}

/// How to start an armed trial by hand.
pub fn reboot_hint(firmware: Firmware) -> &'static str {
    match firmware {
        Firmware::RaspberryPi => "sudo systemctl reboot '0 tryboot'",
        _ => "sudo systemctl reboot",
    }
}

/// Loads the record, or starts an empty one.
pub fn load_record(paths: &Paths) -> Result<UpdateRecord> {
    UpdateRecord::load(&paths.update_record())
}

#[cfg(test)]
pub(crate) mod testing;
