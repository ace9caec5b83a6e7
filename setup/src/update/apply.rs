//! `appliance-admin update apply FILE|URL`: install a signed bundle into the slot that is not
//! running and arm one trial boot of it.
//!
//! Order matters, for power cuts as much as for errors:
//! 1. everything is checked before anything is written: the bundle's signature and every byte
//!    of it, that it is for this machine and not older (unless `--allow-downgrade`), that its
//!    image reads this /data, that this system is not itself on trial, that the slot's
//!    partitions exist on the root's disk and are big enough;
//! 2. the attempt is recorded ("writing") and no boot loader may boot the other slot;
//! 3. its root and verity partitions are written, flushed, read back from the disk and checked
//!    against the signed root hash;
//! 4. its kernel, initrd and boot files go into its directory on the ESP, then the entry that
//!    makes the firmware try it once; the attempt is recorded ("armed").
//!
//! A power cut before step 4 ends leaves a slot that nothing boots: the machine starts the
//! running version again, and its health check records the attempt as interrupted.

use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use appliance_spec::bootcfg::SlotBoot;
use appliance_spec::bootcfg::{raspberry_pi, systemd_boot};
use appliance_spec::bundle::{self, Expect, VerifiedBundle};
use appliance_spec::cmdline::RootSpec;
use appliance_spec::signature::TrustedKeys;
use appliance_spec::Slot;
use sha2::{Digest, Sha256};

use super::bootconfig::{booted_tryboot, Esp, Firmware, SlotBootState};
use super::record::{now, Attempt, AttemptState};
use super::slots::{self, SlotDevices};
use super::{channel, load_record, reboot, reboot_hint, trusted_keys, with_esp, Machine};
use crate::runner::Cmd;
use crate::schema;
use crate::steps::Ctx;

/// `update apply`'s options.
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// Install a version older than the running one.
    pub allow_downgrade: bool,
    /// Restart into the trial as soon as it is armed.
    pub reboot: bool,
}

/// `update apply SOURCE`.
pub fn run(ctx: &mut Ctx, source: &str, opts: Options) -> Result<()> {
    let machine = Machine::load(ctx.paths)?;
    let keys = trusted_keys(ctx.paths)?;
    let (bundle, downloaded) = if source.contains("://") {
        let path = channel::download_bundle(ctx, &machine.release, source)?;
        (path, true)
    } else {
        (PathBuf::from(source), false)
    };
    let installed = install(ctx, &machine, &keys, &bundle, opts.allow_downgrade);
    if downloaded {
        let _ = std::fs::remove_file(&bundle);
    }
    let attempt = installed?;
    if opts.reboot {
        start_trial(ctx, &machine)?;
    } else {
        ctx.say(&format!(
            "update: version {} starts at the next restart ({}); if it is not healthy, the machine comes back to version {} by itself",
            attempt.version,
            reboot_hint(machine.firmware),
            attempt.from_version
        ));
    }
    Ok(())
}

/// Records that the machine restarts into the armed trial, and restarts it.
pub fn start_trial(ctx: &mut Ctx, machine: &Machine) -> Result<()> {
    let mut record = load_record(ctx.paths)?;
    if let Some(a) = record
        .attempt
        .as_mut()
        .filter(|a| a.state == AttemptState::Armed)
    {
        a.state = AttemptState::Rebooting;
        ctx.say(&format!(
            "update: restarting into version {} (slot {})",
            a.version, a.slot
        ));
    }
    record.save(&ctx.paths.update_record())?;
    reboot(ctx, machine.firmware, true)
}

/// Everything decided before the first write.
struct Plan {
    target: Slot,
    devices: SlotDevices,
    generation: u32,
    boot: SlotBoot,
    raspberry_pi: bool,
}

/// Verifies `bundle` and installs it into the other slot; returns the armed attempt.
pub fn install(
    ctx: &mut Ctx,
    machine: &Machine,
    keys: &TrustedKeys,
    bundle: &Path,
    allow_downgrade: bool,
) -> Result<Attempt> {
    ctx.say(&format!(
        "update: checking {}: its signature, and every byte against the signed manifest",
        bundle.display()
    ));
    let expect = Expect {
        name: &machine.release.name,
        arch: machine.release.arch,
        board: machine.release.board,
        running: &machine.release.version,
        allow_downgrade,
    };
    let verified = bundle::verify(bundle, keys, &expect)
        .context("the update bundle is refused; nothing was written")?;
    let plan = plan(ctx, machine, &verified).context("nothing was written")?;
    ctx.say(&format!(
        "update: version {} signed by {}; installing it into slot {} (the running version {} in slot {} is not touched)",
        verified.manifest.version,
        verified.signer,
        plan.target,
        machine.release.version,
        machine.running.slot
    ));
    let mut record = load_record(ctx.paths)?;
    if record.slot(machine.running.slot).is_none() {
        record.set_slot(machine.running.slot, machine.running_record());
    }
    record.forget_slot(plan.target);
    let attempt = Attempt {
        version: verified.manifest.version.to_string(),
        from_version: machine.release.version.to_string(),
        slot: plan.target.to_string(),
        from_slot: machine.running.slot.to_string(),
        generation: plan.generation,
        state: AttemptState::Writing,
        started: now(),
        finished: None,
        reason: None,
        signer: Some(verified.signer.clone()),
        reported: false,
    };
    record.attempt = Some(attempt);
    record.save(&ctx.paths.update_record())?;
    match write(ctx, machine, bundle, &verified, &plan) {
        Ok(()) => {
            if let Some(a) = &mut record.attempt {
                a.state = AttemptState::Armed;
            }
            record.save(&ctx.paths.update_record())?;
            ctx.say(&format!(
                "update: version {} is written to slot {}, checked, and armed for one trial boot",
                verified.manifest.version, plan.target
            ));
            Ok(record.attempt.clone().expect("set above"))
        }
        Err(e) => {
            record.finish(AttemptState::Failed, Some(format!("{e:#}")));
            if let Some(a) = &mut record.attempt {
                // Said here already; the next boot need not say it again.
                a.reported = true;
            }
            record.save(&ctx.paths.update_record())?;
            Err(e.context(format!(
                "installing version {} failed; slot {} does not boot, version {} keeps running",
                verified.manifest.version, plan.target, machine.release.version
            )))
        }
    }
}

/// The checks before anything is written, and what the writing needs.
fn plan(ctx: &mut Ctx, machine: &Machine, verified: &VerifiedBundle) -> Result<Plan> {
    let m = &verified.manifest;
    let running = machine.running.slot;
    let target = running.other();
    let data_schema = schema::current(ctx.paths)?;
    if m.data_schema < data_schema {
        bail!(
            "version {} reads the /data layout {}, but this machine's /data is at {}: it would not start the meeting services",
            m.version, m.data_schema, data_schema
        );
    }
    if machine.running.root_hash.as_deref() == Some(m.root_hash.as_str()) {
        bail!("version {} is the system that is running", m.version);
    }
    let record = load_record(ctx.paths)?;
    if let Some(a) = record.attempt.as_ref().filter(|a| !a.state.is_over()) {
        if a.target() == Some(running) {
            bail!(
                "this system (version {}, slot {running}) is on trial: its health check decides first (see `appliance-admin update status`)",
                a.version
            );
        }
    }
    let devices = slots::slot_devices(ctx.paths, &machine.running.disk, target)?;
    for (member, part) in [
        (bundle::ROOT, &devices.root),
        (bundle::VERITY, &devices.verity),
    ] {
        let (_, len) = verified
            .member(member)
            .with_context(|| format!("the bundle has no {member}"))?;
        if len > part.bytes {
            bail!(
                "{member} ({len} bytes) does not fit the partition {} ({}, {} bytes): this image's slots are smaller than the update needs; install the new image instead",
                part.label, part.name, part.bytes
            );
        }
        if !part.device.exists() {
            bail!(
                "{} ({}) has no device node",
                part.label,
                ctx.paths.display(&part.device)
            );
        }
    }
    let firmware = machine.firmware;
    let tryboot = firmware == Firmware::RaspberryPi
        && booted_tryboot(&ctx.paths.at(raspberry_pi::TRYBOOT_FLAG));
    let (generation, on_trial, raspberry_pi) =
        with_esp(ctx, &machine.running.disk, false, |_, esp: &Esp| {
            let state = esp.state(firmware, running)?;
            let on_trial = tryboot || matches!(state, SlotBootState::Armed | SlotBootState::Tried);
            let generation = systemd_boot::next_generation(&esp.entries()?);
            Ok((generation, on_trial, esp.has_raspberry_pi()))
        })?;
    if on_trial {
        bail!("this system (slot {running}) is on trial and not committed yet: its health check decides first");
    }
    let generation = generation
        .max(record.attempt.as_ref().map_or(0, |a| a.generation + 1))
        .max(appliance_spec::bootcfg::FIRST_GENERATION + 1);
    let boot = SlotBoot {
        slot: target,
        image: format!("{} {}", m.name, m.version),
        kernel_version: m.kernel_version.clone(),
        arch: m.arch,
        root: RootSpec::Verity {
            root_hash: m.root_hash.clone(),
            data_partuuid: devices.root_partuuid,
            hash_partuuid: devices.verity_partuuid,
        },
        system_args: m.cmdline.clone(),
    };
    Ok(Plan {
        target,
        devices,
        generation,
        boot,
        raspberry_pi,
    })
}

fn write(
    ctx: &mut Ctx,
    machine: &Machine,
    bundle: &Path,
    verified: &VerifiedBundle,
    plan: &Plan,
) -> Result<()> {
    let target = plan.target;
    with_esp(ctx, &machine.running.disk, true, |_, esp| {
        esp.disable(target)
    })?;
    for (member, part) in [
        (bundle::ROOT, &plan.devices.root),
        (bundle::VERITY, &plan.devices.verity),
    ] {
        let (offset, len) = verified.member(member).context("checked before")?;
        write_partition(ctx, bundle, offset, len, &part.device, &part.label)?;
    }
    ctx.say(&format!(
        "update: reading slot {target} back from the disk to check it against the signed root hash"
    ));
    let root_hash = check_written(&plan.devices)?;
    if root_hash != verified.manifest.root_hash {
        bail!(
            "slot {target} reads back with the root hash {root_hash}, not the signed {}: the disk did not keep what was written",
            verified.manifest.root_hash
        );
    }
    let device_trees = if plan.raspberry_pi {
        Some(device_trees(
            ctx,
            &plan.devices.root.device,
            &verified.manifest.kernel_version,
        )?)
    } else {
        None
    };
    let result = with_esp(ctx, &machine.running.disk, true, |_, esp| {
        esp.clear_slot_dir(target)?;
        for member in [bundle::KERNEL, bundle::INITRD] {
            let mut reader = checked_member(bundle, verified, member)?;
            esp.write_slot_file(target, member, &mut reader)
                .with_context(|| {
                    format!("writing {member} of slot {target} to the boot partition")
                })?;
        }
        if let Some(dir) = &device_trees {
            for entry in std::fs::read_dir(dir)? {
                let entry = entry?;
                let name = entry.file_name().to_string_lossy().into_owned();
                esp.write_slot_file(target, &name, &mut File::open(entry.path())?)?;
            }
        }
        esp.write_slot_config(&plan.boot)?;
        esp.arm(&plan.boot, plan.generation)
    });
    if let Some(dir) = device_trees {
        let _ = std::fs::remove_dir_all(dir);
    }
    result
}

/// Copies `len` bytes at `offset` of the bundle to the start of `device`, flushes them to the
/// disk and drops them from the page cache, so the check that follows reads the disk.
fn write_partition(
    ctx: &mut Ctx,
    bundle: &Path,
    offset: u64,
    len: u64,
    device: &Path,
    label: &str,
) -> Result<()> {
    let mut src =
        File::open(bundle).with_context(|| format!("cannot read {}", bundle.display()))?;
    src.seek(SeekFrom::Start(offset))?;
    let mut src = src.take(len);
    let mut dst = OpenOptions::new()
        .write(true)
        .open(device)
        .with_context(|| {
            format!(
                "cannot open {label} ({}) for writing",
                ctx.paths.display(device)
            )
        })?;
    let mut buf = vec![0u8; 4 << 20];
    let mut done = 0u64;
    let mut said = 0;
    loop {
        let n = src.read(&mut buf)?;
        if n == 0 {
            break;
        }
        dst.write_all(&buf[..n])
            .with_context(|| format!("writing {label}"))?;
        done += n as u64;
        let percent = done * 100 / len.max(1);
        if percent >= said + 25 || done == len {
            said = percent - percent % 25;
            ctx.say(&format!(
                "update: writing {label}: {percent} % ({} of {} MiB)",
                done >> 20,
                len >> 20
            ));
        }
    }
    if done != len {
        bail!(
            "the bundle ended {} bytes early while writing {label}",
            len - done
        );
    }
    dst.sync_all()
        .with_context(|| format!("flushing {label} to the disk"))?;
    drop_cache(&dst);
    Ok(())
}

/// Asks the kernel to forget the cached pages of a flushed file or device.
fn drop_cache(f: &File) {
    // SAFETY: posix_fadvise on a descriptor we own; it only affects the page cache.
    unsafe {
        libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED);
    }
}

/// The root hash of what the slot's partitions hold now (a full dm-verity check).
fn check_written(devices: &SlotDevices) -> Result<String> {
    let open = |p: &Path| -> Result<BufReader<File>> {
        let f = File::open(p).with_context(|| format!("cannot read {}", p.display()))?;
        drop_cache(&f);
        Ok(BufReader::with_capacity(1 << 20, f))
    };
    let root = appliance_spec::verity::verify(
        &mut open(&devices.root.device)?,
        &mut open(&devices.verity.device)?,
    )
    .with_context(|| {
        format!(
            "{} and {} do not verify",
            devices.root.label, devices.verity.label
        )
    })?;
    Ok(hex::encode(root))
}

/// A payload member of the bundle, read once more: it fails at its end unless its SHA-256 is
/// still the one the signed manifest lists.
fn checked_member(bundle: &Path, verified: &VerifiedBundle, name: &str) -> Result<impl Read> {
    let (offset, len) = verified
        .member(name)
        .with_context(|| format!("the bundle has no {name}"))?;
    let listed = verified
        .manifest
        .files
        .iter()
        .find(|f| f.name == name)
        .with_context(|| format!("bundle.json does not list {name}"))?;
    let mut f = File::open(bundle)?;
    f.seek(SeekFrom::Start(offset))?;
    Ok(Checked {
        inner: f.take(len),
        hash: Sha256::new(),
        expect: listed.sha256.clone(),
        name: name.to_string(),
    })
}

struct Checked<R> {
    inner: R,
    hash: Sha256,
    expect: String,
    name: String,
}

impl<R: Read> Read for Checked<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n == 0 {
            let got = hex::encode(self.hash.clone().finalize());
            if got != self.expect {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("{} changed in the bundle after it was verified", self.name),
                ));
            }
        }
        self.hash.update(&buf[..n]);
        Ok(n)
    }
}

/// The Raspberry Pi's device trees of the new kernel, copied out of the new root (mounted
/// read-only, after it was verified) into a temporary directory.
fn device_trees(ctx: &mut Ctx, root_device: &Path, kernel_version: &str) -> Result<PathBuf> {
    let paths = ctx.paths.clone();
    let mnt = paths.slot_mount();
    crate::fsutil::ensure_dir(&mnt, 0o700, None)?;
    ctx.runner.check(&Cmd::new("mount").args([
        "-t",
        "squashfs",
        "-o",
        "ro,nosuid,nodev,noexec",
        &root_device.display().to_string(),
        &mnt.display().to_string(),
    ]))?;
    let out = paths.at("/run/appliance/slot-device-trees");
    let copied = (|| -> Result<usize> {
        let _ = std::fs::remove_dir_all(&out);
        crate::fsutil::ensure_dir(&out, 0o700, None)?;
        let dir = mnt.join(format!("usr/lib/linux-image-{kernel_version}/broadcom"));
        let mut n = 0;
        for entry in std::fs::read_dir(&dir)
            .with_context(|| format!("the new root has no {}", paths.display(&dir)))?
        {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with("bcm27") && name.ends_with(".dtb") {
                std::fs::copy(entry.path(), out.join(&name))?;
                n += 1;
            }
        }
        Ok(n)
    })();
    let _ = ctx
        .runner
        .check(&Cmd::new("umount").arg(mnt.display().to_string()));
    if copied? == 0 {
        bail!("the new root's kernel {kernel_version} has no Raspberry Pi device trees");
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
