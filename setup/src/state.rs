//! Which setup steps are done (/data/appliance/state.toml). Saved atomically after each
//! step so that a power cut re-runs from the first step not done.

use crate::fsutil;
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct State {
    #[serde(default)]
    pub done: Vec<String>,
}

impl State {
    /// A missing file means nothing is done yet.
    pub fn load(path: &Path) -> Result<State> {
        match std::fs::read_to_string(path) {
            Ok(text) => {
                toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {}", path.display(), e))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(State::default()),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        let text = toml::to_string(self).context("cannot serialise the setup state")?;
        fsutil::atomic_write(path, text.as_bytes(), 0o644, None)
    }

    pub fn is_done(&self, step: &str) -> bool {
        self.done.iter().any(|s| s == step)
    }

    pub fn mark_done(&mut self, step: &str) {
        if !self.is_done(step) {
            self.done.push(step.to_string());
        }
    }

    pub fn forget(&mut self, step: &str) {
        self.done.retain(|s| s != step);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_missing() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("state.toml");
        assert_eq!(State::load(&p).unwrap(), State::default());
        let mut s = State::default();
        s.mark_done("secrets");
        s.mark_done("secrets");
        s.mark_done("config");
        s.save(&p).unwrap();
        let back = State::load(&p).unwrap();
        assert_eq!(back.done, vec!["secrets", "config"]);
        let mut back = back;
        back.forget("config");
        assert!(!back.is_done("config"));
    }
}
