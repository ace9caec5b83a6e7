//! `/data/appliance/update.toml`: what this machine knows of its slots and of the last update
//! attempt. Written atomically at every step, so the system that boots after a power cut (or
//! after a failed trial, the older one) can tell what happened.
//!
//! The firmware's boot configuration on the ESP is what decides which slot boots; this record
//! says what is in the slots and why the last attempt ended as it did.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use appliance_spec::Slot;
use serde::{Deserialize, Serialize};

use crate::fsutil;

/// Where an attempt stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AttemptState {
    /// The other slot is being written; it cannot boot.
    Writing,
    /// Written, checked and armed: the next boot tries it once.
    Armed,
    /// The machine was restarted into the trial.
    Rebooting,
    /// The trial boot was healthy: the new version boots from now on.
    Committed,
    /// The new version did not start, or was not healthy; the previous one runs.
    Failed,
    /// `update rollback`: the other slot was made the one that boots.
    RolledBack,
}

impl AttemptState {
    /// An attempt that is over, one way or the other.
    pub fn is_over(self) -> bool {
        matches!(
            self,
            AttemptState::Committed | AttemptState::Failed | AttemptState::RolledBack
        )
    }
}

/// One update attempt (or rollback).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Attempt {
    pub version: String,
    pub from_version: String,
    /// The slot written (the one that was not running).
    pub slot: String,
    pub from_slot: String,
    pub generation: u32,
    pub state: AttemptState,
    /// Seconds since 1970.
    pub started: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished: Option<u64>,
    /// Why it failed, or what the health check found.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The fingerprint of the key that signed the bundle.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signer: Option<String>,
    /// A failure was said on the console of the system that runs instead.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub reported: bool,
}

impl Attempt {
    pub fn target(&self) -> Option<Slot> {
        Slot::parse(&self.slot)
    }
}

/// What a slot holds, as far as this machine wrote or ran it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlotRecord {
    pub version: String,
    pub root_hash: String,
    /// The /data layout that version reads and writes.
    pub data_schema: u32,
}

/// The whole file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateRecord {
    #[serde(default)]
    pub slots: BTreeMap<String, SlotRecord>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<Attempt>,
    /// Versions whose trial failed here: the channel does not offer them again.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failed_versions: Vec<String>,
    /// The last time the channel was asked (seconds since 1970), and what came of it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_check: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_check_result: Option<String>,
}

impl UpdateRecord {
    /// A missing file is an empty record (the first image, never updated).
    pub fn load(path: &Path) -> Result<UpdateRecord> {
        match std::fs::read_to_string(path) {
            Ok(text) => toml::from_str(&text)
                .with_context(|| format!("{} is not a valid update record", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(UpdateRecord::default()),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        let text = toml::to_string(self).context("cannot write the update record")?;
        let text = format!(
            "# Written by appliance-admin update; see `appliance-admin update status`.\n{text}"
        );
        fsutil::atomic_write(path, text.as_bytes(), 0o600, None)
    }

    pub fn slot(&self, slot: Slot) -> Option<&SlotRecord> {
        self.slots.get(&slot.to_string())
    }

    pub fn set_slot(&mut self, slot: Slot, record: SlotRecord) {
        self.slots.insert(slot.to_string(), record);
    }

    pub fn forget_slot(&mut self, slot: Slot) {
        self.slots.remove(&slot.to_string());
    }

    /// Ends the current attempt.
    pub fn finish(&mut self, state: AttemptState, reason: Option<String>) {
        if let Some(a) = &mut self.attempt {
            a.state = state;
            a.finished = Some(now());
            if reason.is_some() {
                a.reason = reason;
            }
            if state == AttemptState::Failed && !self.failed_versions.contains(&a.version) {
                self.failed_versions.push(a.version.clone());
            }
        }
    }
}

/// Seconds since 1970.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// `2025-01-31 14:05 UTC`.
pub fn format_time(secs: u64) -> String {
    let t = secs as libc::time_t;
    // SAFETY: gmtime_r only writes into the struct we pass.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    if unsafe { libc::gmtime_r(&t, &mut tm) }.is_null() {
        return format!("{secs} s after 1970");
    }
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02} UTC",
        tm.tm_year + 1900,
        tm.tm_mon + 1,
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_remembers_failed_versions() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("update.toml");
        assert_eq!(UpdateRecord::load(&p).unwrap(), UpdateRecord::default());
        let mut r = UpdateRecord::default();
        r.set_slot(
            Slot::B,
            SlotRecord {
                version: "2.0".into(),
                root_hash: "ab".into(),
                data_schema: 1,
            },
        );
        r.attempt = Some(Attempt {
            version: "2.0".into(),
            from_version: "1.0".into(),
            slot: "b".into(),
            from_slot: "a".into(),
            generation: 2,
            state: AttemptState::Armed,
            started: 1,
            finished: None,
            reason: None,
            signer: Some("SHA256:x".into()),
            reported: false,
        });
        r.save(&p).unwrap();
        assert_eq!(UpdateRecord::load(&p).unwrap(), r);
        r.finish(AttemptState::Failed, Some("nginx failed".into()));
        r.finish(AttemptState::Failed, None);
        assert_eq!(r.failed_versions, vec!["2.0".to_string()]);
        assert_eq!(
            r.attempt.as_ref().unwrap().reason.as_deref(),
            Some("nginx failed")
        );
        r.save(&p).unwrap();
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(text.contains("state = \"failed\""), "{text}");
        assert_eq!(format_time(0), "1970-01-01 00:00 UTC");
        assert_eq!(format_time(1_700_000_000), "2023-11-14 22:13 UTC");
    }
}
