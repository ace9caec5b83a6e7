//! Power off when unused: `appliance-admin idle-check`, run every minute by
//! appliance-idle.timer once setup is done. A meeting is in progress while a room on the
//! conference MUC has an occupant other than jicofo's focus user. The time the machine has been
//! idle since is kept in /run (RAM): nothing is written to disk, no log is kept.
//!
//! Unknown means in use: when Prosody cannot be asked, or its answer cannot be read, the
//! machine stays on (and says so in the journal), whatever the policy says. Powering off in
//! the middle of a meeting is worse than running an hour too long.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use serde::Deserialize;

use crate::answers::Answers;
use crate::paths::Paths;
use crate::runner::{Cmd, Runner};
use appliance_spec::validate::escaped;

/// `/data/config/power-off.toml`, written by setup from the answers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct Policy {
    #[serde(default)]
    pub idle_minutes: u32,
    #[serde(default)]
    pub daily_at: Option<String>,
}

impl Policy {
    pub fn load(path: &Path) -> Result<Policy> {
        match std::fs::read_to_string(path) {
            Ok(text) => toml::from_str(&text)
                .with_context(|| format!("{} is not a valid power-off policy", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Policy::default()),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
    }

    pub fn is_off(&self) -> bool {
        self.idle_minutes == 0 && self.daily_at.is_none()
    }
}

/// What one check decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// No policy: nothing to do.
    NoPolicy,
    /// A meeting is in progress (this many people in rooms).
    InUse(u32),
    /// Nobody could tell whether a meeting is in progress: treated as in use.
    Unknown(String),
    /// Idle, but not for long enough (minutes so far).
    Idle(u64),
    /// Power off now, and why.
    PowerOff(String),
}

/// Decides from the policy, the number of people in meetings, how long the machine has been
/// idle (seconds) and the local time of day (minutes after midnight).
pub fn decide(policy: &Policy, occupants: u32, idle_secs: u64, local_minute: u32) -> Decision {
    if policy.is_off() {
        return Decision::NoPolicy;
    }
    if occupants > 0 {
        return Decision::InUse(occupants);
    }
    if policy.idle_minutes > 0 && idle_secs >= u64::from(policy.idle_minutes) * 60 {
        return Decision::PowerOff(format!("no meeting for {} minute(s)", policy.idle_minutes));
    }
    if let Some(at) = policy.daily_at.as_deref().and_then(minute_of_day) {
        // Within the hour after the daily time: a meeting that ran over delays the power-off
        // until it ends, but a machine started later that day is left alone.
        let since = (local_minute + 24 * 60 - at) % (24 * 60);
        if since < 60 {
            return Decision::PowerOff(format!("daily power-off time {}", fmt_minute(at)));
        }
    }
    Decision::Idle(idle_secs / 60)
}

/// `HH:MM` as minutes after midnight.
pub(crate) fn minute_of_day(hhmm: &str) -> Option<u32> {
    let (h, m) = hhmm.split_once(':')?;
    let (h, m): (u32, u32) = (h.parse().ok()?, m.parse().ok()?);
    (h < 24 && m < 60).then_some(h * 60 + m)
}

fn fmt_minute(m: u32) -> String {
    format!("{:02}:{:02}", m / 60, m % 60)
}

/// Lua run in Prosody's admin shell: the number of occupants of all rooms on the conference
/// component, not counting jicofo's focus user (which sits in every conference room).
fn occupants_lua(muc_domain: &str) -> String {
    format!(
        "> local n = 0; local h = prosody.hosts[{muc:?}]; \
         if h and h.modules.muc then for room in h.modules.muc.each_room() do \
         for _, o in room:each_occupant() do \
         if not tostring(o.bare_jid):match('^focus@') then n = n + 1 end end end end; \
         return 'occupants=' .. n",
        muc = muc_domain
    )
}

/// People in meeting rooms right now, asked from Prosody through its admin socket. An error
/// when that cannot be known (prosodyctl fails, or prints something else than the count).
pub fn occupants(runner: &mut dyn Runner, muc_domain: &str) -> Result<u32, String> {
    let out = runner
        .run(
            &Cmd::new("prosodyctl")
                .arg("shell")
                .arg(occupants_lua(muc_domain)),
        )
        .map_err(|e| format!("{e:#}"))?;
    let said = || {
        let text = if out.stderr.trim().is_empty() {
            &out.stdout
        } else {
            &out.stderr
        };
        escaped(text.trim().lines().last().unwrap_or("no output"))
    };
    if !out.success {
        return Err(format!("`prosodyctl shell` failed: {}", said()));
    }
    parse_occupants(&out.stdout)
        .ok_or_else(|| format!("`prosodyctl shell` gave no number of people: {}", said()))
}

fn parse_occupants(text: &str) -> Option<u32> {
    text.split(|c: char| c.is_whitespace() || c == '"' || c == '\'')
        .find_map(|w| w.strip_prefix("occupants="))
        .and_then(|n| n.parse().ok())
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Local time of day in minutes, by /etc/localtime (the time zone chosen at setup).
pub(crate) fn local_minute_of_day() -> u32 {
    let t = now_secs() as libc::time_t;
    // SAFETY: localtime_r only writes into the struct we pass.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    let ok = unsafe { !libc::localtime_r(&t, &mut tm).is_null() };
    if ok {
        (tm.tm_hour as u32) * 60 + tm.tm_min as u32
    } else {
        0
    }
}

/// One check: counts the people in meetings, updates the idle-since mark in /run, and powers
/// the machine off when the policy says so. Prints one line only when it acts.
pub fn idle_check(
    paths: &Paths,
    runner: &mut dyn Runner,
    out: &mut dyn std::io::Write,
) -> Result<Decision> {
    let policy = Policy::load(&paths.power_off())?;
    let mark = paths.at("/run/appliance/idle-since");
    if policy.is_off() {
        let _ = std::fs::remove_file(&mark);
        return Ok(Decision::NoPolicy);
    }
    let answers = Answers::load(&paths.answers())?;
    let people = match occupants(runner, &format!("conference.{}", answers.domain)) {
        Ok(n) => n,
        Err(why) => {
            // Start counting idle time again once it can be known.
            let _ = std::fs::remove_file(&mark);
            writeln!(
                out,
                "power-off: cannot tell whether a meeting is in progress ({why}); staying on"
            )?;
            return Ok(Decision::Unknown(why));
        }
    };
    let now = now_secs();
    let idle_secs = if people > 0 {
        let _ = std::fs::remove_file(&mark);
        0
    } else {
        let since = std::fs::read_to_string(&mark)
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok());
        match since {
            Some(s) => now.saturating_sub(s),
            None => {
                if let Some(dir) = mark.parent() {
                    std::fs::create_dir_all(dir)?;
                }
                std::fs::write(&mark, format!("{now}\n"))
                    .with_context(|| format!("cannot write {}", mark.display()))?;
                0
            }
        }
    };
    let decision = decide(&policy, people, idle_secs, local_minute_of_day());
    if let Decision::PowerOff(why) = &decision {
        writeln!(out, "power-off: {why}; powering off")?;
        runner.check(&Cmd::new("systemctl").args(["poweroff", "--no-block"]))?;
    }
    Ok(decision)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runner::{Output, RecordingRunner};

    fn policy(idle: u32, daily: Option<&str>) -> Policy {
        Policy {
            idle_minutes: idle,
            daily_at: daily.map(str::to_string),
        }
    }

    #[test]
    fn no_policy_never_powers_off() {
        assert_eq!(decide(&policy(0, None), 0, 1 << 30, 0), Decision::NoPolicy);
    }

    #[test]
    fn a_meeting_keeps_the_machine_on() {
        assert_eq!(
            decide(&policy(1, Some("00:00")), 3, 10_000, 5),
            Decision::InUse(3)
        );
    }

    #[test]
    fn idle_long_enough_powers_off() {
        assert_eq!(decide(&policy(30, None), 0, 29 * 60, 0), Decision::Idle(29));
        assert!(matches!(
            decide(&policy(30, None), 0, 30 * 60, 0),
            Decision::PowerOff(_)
        ));
    }

    #[test]
    fn the_daily_time_has_an_hour_long_window() {
        let p = policy(0, Some("23:30"));
        assert!(matches!(
            decide(&p, 0, 0, 23 * 60 + 30),
            Decision::PowerOff(_)
        ));
        assert!(matches!(decide(&p, 0, 0, 10), Decision::PowerOff(_))); // 00:10, across midnight
        assert_eq!(decide(&p, 0, 0, 23 * 60 + 29), Decision::Idle(0));
        assert_eq!(decide(&p, 0, 0, 31), Decision::Idle(0)); // 00:31 is past the window
    }

    #[test]
    fn occupants_are_read_from_the_admin_shell_output() {
        assert_eq!(parse_occupants("occupants=2\n| OK: "), Some(2));
        assert_eq!(parse_occupants("| Result: \"occupants=0\""), Some(0));
        assert_eq!(parse_occupants("Prosody is not running"), None);
    }

    /// A machine whose policy says "power off now" on both counts: idle for an hour with
    /// `idle_minutes = 1`, and inside the daily window (the daily time is this minute).
    fn due_for_power_off(root: &std::path::Path) -> Paths {
        let paths = crate::steps::tests::machine(root);
        crate::steps::tests::answers()
            .save(&paths.answers())
            .unwrap();
        let m = local_minute_of_day();
        std::fs::create_dir_all(paths.power_off().parent().unwrap()).unwrap();
        std::fs::write(
            paths.power_off(),
            format!("idle_minutes = 1\ndaily_at = \"{}\"\n", fmt_minute(m)),
        )
        .unwrap();
        let mark = paths.at("/run/appliance/idle-since");
        std::fs::create_dir_all(mark.parent().unwrap()).unwrap();
        std::fs::write(&mark, format!("{}\n", now_secs() - 3600)).unwrap();
        paths
    }

    fn check_with(paths: &Paths, prosodyctl: Output) -> (Decision, Vec<String>, String) {
        let mut runner = RecordingRunner::with_handler(move |cmd| {
            Ok(if cmd.program == "prosodyctl" {
                prosodyctl.clone()
            } else {
                Output {
                    success: true,
                    ..Output::default()
                }
            })
        });
        let mut out = Vec::new();
        let d = idle_check(paths, &mut runner, &mut out).unwrap();
        (d, runner.lines(), String::from_utf8(out).unwrap())
    }

    #[test]
    fn when_prosody_cannot_tell_the_machine_stays_on() {
        let failing = Output {
            success: false,
            stdout: String::new(),
            stderr: "Prosody is not running\n".into(),
        };
        let garbage = Output {
            success: true,
            stdout: "| Result: nil\n\u{1b}[2J".into(),
            stderr: String::new(),
        };
        for (prosodyctl, said) in [
            (failing, "failed: Prosody is not running"),
            (garbage, "gave no number of people"),
        ] {
            let d = tempfile::tempdir().unwrap();
            let paths = due_for_power_off(d.path());
            let (decision, commands, out) = check_with(&paths, prosodyctl);
            assert!(matches!(decision, Decision::Unknown(_)), "{decision:?}");
            assert!(
                !commands.iter().any(|c| c.contains("poweroff")),
                "{commands:?}"
            );
            assert!(
                out.contains("cannot tell whether a meeting is in progress"),
                "{out}"
            );
            assert!(out.contains(said), "{out}");
            assert!(out.contains("staying on"), "{out}");
            assert!(!out.contains('\u{1b}'), "{out:?}");
        }
        // The same machine with a readable answer of nobody powers off: the setup above is
        // really due.
        let d = tempfile::tempdir().unwrap();
        let paths = due_for_power_off(d.path());
        let (decision, commands, _) = check_with(
            &paths,
            Output {
                success: true,
                stdout: "| Result: \"occupants=0\"\n".into(),
                stderr: String::new(),
            },
        );
        assert!(matches!(decision, Decision::PowerOff(_)), "{decision:?}");
        assert!(commands.contains(&"systemctl poweroff --no-block".to_string()));
    }

    #[test]
    fn the_lua_names_the_conference_component() {
        let lua = occupants_lua("conference.meet.example.org");
        assert!(lua.starts_with("> "));
        assert!(lua.contains("\"conference.meet.example.org\""));
        assert!(lua.contains("focus@"));
    }
}
