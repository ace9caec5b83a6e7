//! `appliance-admin update check`: the update channel (`[updates] url`), run by
//! appliance-update.timer. Once a day it fetches the channel's signed `index.json`; a newer
//! version is downloaded to /data, checked against the index and installed like
//! `update apply` does. The machine restarts into it only inside `[updates] window` and only
//! when no meeting is in progress (unknown counts as in progress); until then the armed update
//! waits, and the timer asks again.
//!
//! Downloads use curl, HTTPS only (redirects too), with the release's own CA certificate when
//! the channel sits behind a private CA.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use appliance_spec::bundle::{ChannelIndex, CHANNEL_INDEX, CHANNEL_SIGNATURE};
use appliance_spec::release::Release;
use appliance_spec::signature::{sha256_file, NAMESPACE_UPDATE};

use super::apply;
use super::record::{now, AttemptState};
use super::{load_record, trusted_keys, Machine};
use crate::answers::Answers;
use crate::fsutil;
use crate::power;
use crate::runner::Cmd;
use crate::steps::Ctx;

/// The channel is asked at most this often; the timer runs more often so that an armed update
/// finds its window.
pub const CHECK_EVERY_SECS: u64 = 20 * 3600;

/// What one check did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckOutcome {
    /// No `[updates] url`.
    NoChannel,
    /// Nothing newer (or asked recently).
    UpToDate,
    /// The channel could not be reached: try again later.
    Unreachable(String),
    /// An update is armed and waits: outside the window, or a meeting is in progress.
    Waiting(String),
    /// Restarting into the new version.
    Restarting,
}

/// Fetches `url` to `out` with curl: HTTPS only, failing on HTTP errors.
fn curl(ctx: &mut Ctx, release: &Release, url: &str, out: &Path, max_secs: u32) -> Result<()> {
    if !url.starts_with("https://") {
        bail!("{url}: updates are fetched over HTTPS only");
    }
    let mut cmd = Cmd::new("curl").args([
        "--fail",
        "--silent",
        "--show-error",
        "--location",
        "--proto",
        "=https",
        "--proto-redir",
        "=https",
        "--max-time",
        &max_secs.to_string(),
        "--output",
        &out.display().to_string(),
    ]);
    if let Some(pem) = &release.updates.ca_certificate {
        let ca = ctx.paths.at("/run/appliance/update-ca.pem");
        if let Some(dir) = ca.parent() {
            fsutil::ensure_dir(dir, 0o755, None)?;
        }
        fsutil::atomic_write(&ca, pem.as_bytes(), 0o600, None)?;
        cmd = cmd.args(["--cacert", &ca.display().to_string()]);
    }
    ctx.runner.check(&cmd.arg(url))?;
    Ok(())
}

fn downloads(ctx: &Ctx) -> Result<PathBuf> {
    let dir = ctx.paths.update_downloads();
    fsutil::ensure_dir(&dir, 0o700, None)?;
    Ok(dir)
}

/// `update apply https://...`: the bundle, downloaded to /data (checked afterwards, in full,
/// by `update apply`).
pub fn download_bundle(ctx: &mut Ctx, release: &Release, url: &str) -> Result<PathBuf> {
    let dir = downloads(ctx)?;
    let partial = dir.join("download.update.partial");
    let done = dir.join("download.update");
    ctx.say(&format!("update: downloading {url}"));
    curl(ctx, release, url, &partial, 3600)
        .with_context(|| format!("cannot download {url}; nothing was written"))?;
    std::fs::rename(&partial, &done)?;
    Ok(done)
}

/// Whether the local time `minute` (after midnight) is inside `HH:MM-HH:MM` (which may run
/// past midnight); no window: any time.
pub fn in_window(window: Option<&str>, minute: u32) -> Result<bool> {
    let Some(w) = window else {
        return Ok(true);
    };
    let parse = |s: &str| power::minute_of_day(s.trim());
    let (Some(from), Some(to)) = w
        .split_once('-')
        .map_or((None, None), |(a, b)| (parse(a), parse(b)))
    else {
        bail!("[updates] window {w:?} is not HH:MM-HH:MM");
    };
    Ok(if from <= to {
        (from..to).contains(&minute)
    } else {
        minute >= from || minute < to
    })
}

/// Restarts into the armed update if now is a good time.
fn restart_when_allowed(ctx: &mut Ctx, machine: &Machine, version: &str) -> Result<CheckOutcome> {
    let window = machine.release.updates.window.as_deref();
    if !in_window(window, power::local_minute_of_day())? {
        let why = format!(
            "version {version} is installed and starts in the update window {}",
            window.unwrap_or_default()
        );
        return Ok(CheckOutcome::Waiting(why));
    }
    let people = if ctx.paths.setup_done().exists() {
        let answers = Answers::load(&ctx.paths.answers())?;
        power::occupants(ctx.runner, &format!("conference.{}", answers.domain))
    } else {
        // Before setup there are no meetings.
        Ok(0)
    };
    match people {
        Ok(0) => {
            apply::start_trial(ctx, machine)?;
            Ok(CheckOutcome::Restarting)
        }
        Ok(n) => Ok(CheckOutcome::Waiting(format!(
            "version {version} is installed; {} in a meeting, so the restart waits",
            if n == 1 {
                "1 person is".to_string()
            } else {
                format!("{n} people are")
            }
        ))),
        Err(why) => Ok(CheckOutcome::Waiting(format!(
            "version {version} is installed; whether a meeting is in progress cannot be told ({why}), so the restart waits"
        ))),
    }
}

/// `update check`.
pub fn check(ctx: &mut Ctx) -> Result<CheckOutcome> {
    let machine = Machine::load(ctx.paths)?;
    let Some(url) = machine.release.updates.url.clone() else {
        return Ok(CheckOutcome::NoChannel);
    };
    let mut record = load_record(ctx.paths)?;
    if let Some(a) = &record.attempt {
        if a.state == AttemptState::Armed && a.target() == Some(machine.running.slot.other()) {
            let version = a.version.clone();
            let outcome = restart_when_allowed(ctx, &machine, &version)?;
            if let CheckOutcome::Waiting(why) = &outcome {
                ctx.say(&format!("update: {why}"));
            }
            return Ok(outcome);
        }
    }
    if record
        .last_check
        .is_some_and(|t| now().saturating_sub(t) < CHECK_EVERY_SECS)
    {
        return Ok(CheckOutcome::UpToDate);
    }
    let base = url.trim_end_matches('/').to_string();
    let dir = downloads(ctx)?;
    let index_file = dir.join(CHANNEL_INDEX);
    let sig_file = dir.join(CHANNEL_SIGNATURE);
    for (name, file) in [(CHANNEL_INDEX, &index_file), (CHANNEL_SIGNATURE, &sig_file)] {
        if let Err(e) = curl(ctx, &machine.release, &format!("{base}/{name}"), file, 120) {
            let why = format!("{e:#}");
            ctx.say(&format!(
                "update: the channel {base} cannot be reached: {why}"
            ));
            return Ok(CheckOutcome::Unreachable(why));
        }
    }
    let index_bytes = std::fs::read(&index_file)?;
    let sig = std::fs::read(&sig_file)?;
    let _ = std::fs::remove_file(&index_file);
    let _ = std::fs::remove_file(&sig_file);
    record.last_check = Some(now());
    let result = offered(ctx, &machine, &index_bytes, &sig, &record.failed_versions);
    let (outcome_text, index) = match result {
        Ok(Offer::Nothing(why)) => (why, None),
        Ok(Offer::Install(index)) => (format!("version {} offered", index.version), Some(index)),
        Err(e) => {
            record.last_check_result = Some(format!("refused: {e:#}"));
            record.save(&ctx.paths.update_record())?;
            return Err(e.context(format!(
                "the channel {base} offers nothing this machine accepts"
            )));
        }
    };
    record.last_check_result = Some(outcome_text.clone());
    record.save(&ctx.paths.update_record())?;
    let Some(index) = index else {
        return Ok(CheckOutcome::UpToDate);
    };
    let bundle = fetch_bundle(ctx, &machine, &base, &index)?;
    let keys = trusted_keys(ctx.paths)?;
    let installed = apply::install(ctx, &machine, &keys, &bundle, false);
    let _ = std::fs::remove_file(&bundle);
    let attempt = installed?;
    restart_when_allowed(ctx, &machine, &attempt.version).inspect(|o| {
        if let CheckOutcome::Waiting(why) = o {
            ctx.say(&format!("update: {why}"));
        }
    })
}

enum Offer {
    Nothing(String),
    Install(ChannelIndex),
}

/// What a signed index offers this machine.
fn offered(
    ctx: &mut Ctx,
    machine: &Machine,
    index: &[u8],
    sig: &[u8],
    failed: &[String],
) -> Result<Offer> {
    let keys = trusted_keys(ctx.paths)?;
    keys.verify(NAMESPACE_UPDATE, index, sig)
        .context("index.json's signature does not verify")?;
    let index: ChannelIndex =
        serde_json::from_slice(index).context("the signed index.json cannot be read")?;
    let r = &machine.release;
    if index.name != r.name || index.arch != r.arch || index.board != r.board {
        bail!(
            "the channel is for {} ({}, {}), this machine runs {} ({}, {})",
            index.name,
            index.arch,
            index.board,
            r.name,
            r.arch,
            r.board
        );
    }
    if index.bundle.is_empty() || index.bundle.contains('/') || index.bundle.starts_with('.') {
        bail!(
            "index.json names the bundle {:?}, not a file name",
            index.bundle
        );
    }
    if index.version <= r.version {
        return Ok(Offer::Nothing(format!(
            "up to date (the channel offers {})",
            index.version
        )));
    }
    if failed.contains(&index.version.to_string()) {
        let why = format!(
            "version {} failed its trial here before; it is not installed again (`appliance-admin update apply` installs it by hand)",
            index.version
        );
        ctx.say(&format!("update: {why}"));
        return Ok(Offer::Nothing(why));
    }
    Ok(Offer::Install(index))
}

/// Downloads the bundle an index names and checks it against the index.
fn fetch_bundle(
    ctx: &mut Ctx,
    machine: &Machine,
    base: &str,
    index: &ChannelIndex,
) -> Result<PathBuf> {
    let dir = downloads(ctx)?;
    let free = free_bytes(&dir)?;
    if free < index.bytes + (64 << 20) {
        bail!(
            "version {} needs {} MiB on /data to download, {} MiB are free",
            index.version,
            (index.bytes >> 20) + 64,
            free >> 20
        );
    }
    let partial = dir.join(format!("{}.partial", index.bundle));
    let done = dir.join(&index.bundle);
    ctx.say(&format!(
        "update: downloading version {} ({} MiB)",
        index.version,
        index.bytes >> 20
    ));
    curl(
        ctx,
        &machine.release,
        &format!("{base}/{}", index.bundle),
        &partial,
        3600,
    )?;
    let bytes = std::fs::metadata(&partial)?.len();
    if bytes != index.bytes || sha256_file(&partial)? != index.sha256 {
        let _ = std::fs::remove_file(&partial);
        bail!(
            "the downloaded {} is not the file index.json describes ({bytes} bytes)",
            index.bundle
        );
    }
    std::fs::rename(&partial, &done)?;
    Ok(done)
}

/// Bytes free in `dir`'s file system for an ordinary writer (the smaller, safe figure).
fn free_bytes(dir: &Path) -> Result<u64> {
    let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes())?;
    // SAFETY: statvfs writes into the struct we pass; c is a valid C string.
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut s) } != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("cannot tell the free space of {}", dir.display()));
    }
    Ok(s.f_bavail as u64 * s.f_frsize as u64)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::runner::{Output, RecordingRunner};
    use crate::update::record::UpdateRecord;
    use crate::update::testing::{self, make_bundle, sign, BundleSpec};
    use appliance_spec::release::RELEASE_FILE;
    use appliance_spec::{Arch, Board, Slot};

    const URL: &str = "https://updates.example.org/meet";

    fn set_channel(paths: &crate::paths::Paths, window: Option<&str>) {
        let file = paths.at(RELEASE_FILE);
        let mut r: Release = toml::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
        r.updates.url = Some(URL.into());
        r.updates.window = window.map(str::to_string);
        r.updates.ca_certificate = Some("-----BEGIN CERTIFICATE-----\nx\n".into());
        std::fs::write(&file, toml::to_string(&r).unwrap()).unwrap();
    }

    /// The channel's files: what curl downloads, by URL.
    fn channel(dir: &Path, version: &'static str, signer: u8) -> BTreeMap<String, Vec<u8>> {
        let (bundle, _) = make_bundle(dir, &BundleSpec::new(version));
        let bytes = std::fs::read(&bundle).unwrap();
        let name = bundle.file_name().unwrap().to_string_lossy().into_owned();
        let index = ChannelIndex {
            format: 1,
            name: "meet".into(),
            arch: Arch::X86_64,
            board: Board::Generic,
            version: version.parse().unwrap(),
            bundle: name.clone(),
            bytes: bytes.len() as u64,
            sha256: sha256_file(&bundle).unwrap(),
        };
        let json = serde_json::to_vec(&index).unwrap();
        BTreeMap::from([
            (format!("{URL}/index.json.sig"), sign(signer, &json)),
            (format!("{URL}/index.json"), json),
            (format!("{URL}/{name}"), bytes),
        ])
    }

    /// curl serving `files`, prosodyctl answering `people`.
    fn runner(files: BTreeMap<String, Vec<u8>>, people: Option<u32>) -> RecordingRunner {
        RecordingRunner::with_handler(move |cmd| {
            let ok = |stdout: String| {
                Ok(Output {
                    success: true,
                    stdout,
                    stderr: String::new(),
                })
            };
            match cmd.program.as_str() {
                "curl" => {
                    let url = cmd.args.last().unwrap();
                    let out = &cmd.args[cmd.args.iter().position(|a| a == "--output").unwrap() + 1];
                    match files.get(url) {
                        Some(b) => {
                            std::fs::write(out, b).unwrap();
                            ok(String::new())
                        }
                        None => Ok(Output {
                            success: false,
                            stdout: String::new(),
                            stderr: "curl: (22) The requested URL returned error: 404".into(),
                        }),
                    }
                }
                "prosodyctl" => match people {
                    Some(n) => ok(format!("| Result: \"occupants={n}\"\n")),
                    None => Ok(Output {
                        success: false,
                        stdout: String::new(),
                        stderr: "Prosody is not running".into(),
                    }),
                },
                _ => ok(String::new()),
            }
        })
    }

    fn check_with(
        paths: &crate::paths::Paths,
        runner: &mut RecordingRunner,
    ) -> (Result<CheckOutcome>, String) {
        let mut out = Vec::new();
        let r = check(&mut Ctx {
            paths,
            runner,
            out: &mut out,
            from_boot: false,
        });
        (r, String::from_utf8(out).unwrap())
    }

    #[test]
    fn a_newer_version_is_installed_and_started_when_nobody_meets() {
        let d = tempfile::tempdir().unwrap();
        let paths = testing::machine(d.path(), Slot::A, "1.0.0");
        // No channel: nothing happens.
        let mut r = runner(BTreeMap::new(), Some(0));
        assert_eq!(
            check_with(&paths, &mut r).0.unwrap(),
            CheckOutcome::NoChannel
        );
        assert!(r.commands.is_empty());
        set_channel(&paths, None);
        crate::steps::tests::answers()
            .save(&paths.answers())
            .unwrap();
        std::fs::write(paths.setup_done(), "").unwrap();
        let mut r = runner(channel(d.path(), "2.0.0", 7), Some(0));
        let (outcome, out) = check_with(&paths, &mut r);
        assert_eq!(outcome.unwrap(), CheckOutcome::Restarting, "{out}");
        let lines = r.lines();
        assert!(
            lines[0].starts_with(
                "curl --fail --silent --show-error --location --proto =https --proto-redir =https"
            ),
            "{lines:?}"
        );
        assert!(
            lines[0].contains("--cacert "),
            "the release's CA: {lines:?}"
        );
        assert!(
            lines.iter().any(|l| l.starts_with("prosodyctl shell")),
            "{lines:?}"
        );
        assert_eq!(lines.last().unwrap(), "systemctl reboot");
        assert!(out.contains("update: downloading version 2.0.0"), "{out}");
        let record = UpdateRecord::load(&paths.update_record()).unwrap();
        assert_eq!(record.attempt.unwrap().state, AttemptState::Rebooting);
        assert_eq!(
            record.last_check_result.as_deref(),
            Some("version 2.0.0 offered")
        );
        let left: Vec<_> = std::fs::read_dir(paths.update_downloads())
            .unwrap()
            .collect();
        assert!(
            left.is_empty(),
            "downloads are removed once installed: {left:?}"
        );
    }

    #[test]
    fn an_installed_update_waits_for_the_window_and_for_the_meetings_to_end() {
        let d = tempfile::tempdir().unwrap();
        let paths = testing::machine(d.path(), Slot::A, "1.0.0");
        crate::steps::tests::answers()
            .save(&paths.answers())
            .unwrap();
        std::fs::write(paths.setup_done(), "").unwrap();
        let now = power::local_minute_of_day();
        let hhmm = |m: u32| format!("{:02}:{:02}", (m / 60) % 24, m % 60);
        // A window that starts in two hours.
        let later = format!("{}-{}", hhmm(now + 120), hhmm(now + 180));
        set_channel(&paths, Some(&later));
        let mut r = runner(channel(d.path(), "2.0.0", 7), Some(0));
        let (outcome, out) = check_with(&paths, &mut r);
        assert!(
            matches!(outcome.unwrap(), CheckOutcome::Waiting(ref w) if w.contains("starts in the update window")),
            "{out}"
        );
        assert!(!r.lines().iter().any(|l| l.contains("reboot")));
        // Inside the window, a meeting keeps it waiting; so does not knowing.
        let open = format!("{}-{}", hhmm(now + 24 * 60 - 5), hhmm(now + 10));
        set_channel(&paths, Some(&open));
        for (people, said) in [
            (Some(3), "3 people are in a meeting"),
            (Some(1), "1 person is in a meeting"),
            (None, "cannot be told"),
        ] {
            let mut r = runner(BTreeMap::new(), people);
            let (outcome, out) = check_with(&paths, &mut r);
            assert!(
                matches!(outcome.unwrap(), CheckOutcome::Waiting(ref w) if w.contains(said)),
                "{out}"
            );
            assert!(
                !r.lines()
                    .iter()
                    .any(|l| l.starts_with("curl") || l.contains("reboot")),
                "{:?}",
                r.lines()
            );
        }
        let mut r = runner(BTreeMap::new(), Some(0));
        assert_eq!(
            check_with(&paths, &mut r).0.unwrap(),
            CheckOutcome::Restarting
        );
    }

    #[test]
    fn the_channel_is_asked_once_a_day_and_only_its_signed_newer_versions_count() {
        let d = tempfile::tempdir().unwrap();
        let paths = testing::machine(d.path(), Slot::A, "1.0.0");
        set_channel(&paths, None);
        // Unreachable: retried at the next run.
        let mut r = runner(BTreeMap::new(), Some(0));
        assert!(
            matches!(check_with(&paths, &mut r).0.unwrap(), CheckOutcome::Unreachable(ref w) if w.contains("404"))
        );
        // Signed by another key: refused, and said.
        let mut r = runner(channel(d.path(), "2.0.0", 9), Some(0));
        let e = format!("{:#}", check_with(&paths, &mut r).0.unwrap_err());
        assert!(e.contains("index.json's signature does not verify"), "{e}");
        let rec = UpdateRecord::load(&paths.update_record()).unwrap();
        assert!(rec.last_check_result.unwrap().starts_with("refused:"));
        assert!(rec.attempt.is_none());
        // Asked less than a day ago: not asked again.
        let mut r = runner(channel(d.path(), "2.0.0", 7), Some(0));
        assert_eq!(
            check_with(&paths, &mut r).0.unwrap(),
            CheckOutcome::UpToDate
        );
        assert!(r.commands.is_empty());
        // A day later: the same version is not newer.
        let forget = |paths: &crate::paths::Paths| {
            let mut rec = UpdateRecord::load(&paths.update_record()).unwrap();
            rec.last_check = None;
            rec.save(&paths.update_record()).unwrap();
        };
        forget(&paths);
        let mut r = runner(channel(d.path(), "1.0.0", 7), Some(0));
        assert_eq!(
            check_with(&paths, &mut r).0.unwrap(),
            CheckOutcome::UpToDate
        );
        // A version that failed here is not installed again.
        forget(&paths);
        let mut rec = UpdateRecord::load(&paths.update_record()).unwrap();
        rec.failed_versions.push("2.0.0".into());
        rec.save(&paths.update_record()).unwrap();
        let mut r = runner(channel(d.path(), "2.0.0", 7), Some(0));
        let (outcome, out) = check_with(&paths, &mut r);
        assert_eq!(outcome.unwrap(), CheckOutcome::UpToDate);
        assert!(out.contains("failed its trial here before"), "{out}");
        assert!(!r.lines().iter().any(|l| l.contains(".update")));
    }

    #[test]
    fn windows_may_run_past_midnight() {
        let at = |h: u32, m: u32| h * 60 + m;
        assert!(in_window(None, 0).unwrap());
        let w = Some("02:00-04:30");
        assert!(in_window(w, at(2, 0)).unwrap());
        assert!(in_window(w, at(4, 29)).unwrap());
        assert!(!in_window(w, at(4, 30)).unwrap());
        assert!(!in_window(w, at(1, 59)).unwrap());
        let night = Some("23:00-01:00");
        assert!(in_window(night, at(23, 30)).unwrap());
        assert!(in_window(night, at(0, 30)).unwrap());
        assert!(!in_window(night, at(12, 0)).unwrap());
        assert!(in_window(Some("3am"), 0).is_err());
    }
}
