//! Image features: each is a folder of `overlays/` holding everything about one part of the
//! appliance, so a reader finds it in one place and a user can switch it off in
//! `[features] enabled`:
//!
//! - `feature.toml`: a description, the Debian packages it needs and why, the features it
//!   requires;
//! - `files/`: laid over the root file system after the packages are installed (`*.j2` files
//!   are rendered from the configuration, the suffix dropped);
//! - `install/` (optional): laid into the root before the packages are installed, for files a
//!   package's install script reads (the initrd configuration);
//! - `preseed.cfg` (optional): debconf answers, so no package asks a question;
//! - `packages.sh` (optional): run with the root file system as `$1` right after the packages
//!   are installed, in the package layer: for what depends on the packages only (the initrd);
//! - `customize.sh` (optional): run with the root file system as `$1` once every feature's
//!   files are in place, in the order of `[features] enabled`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::Deserialize;

use crate::config::Config;

/// The feature folder that Jitsi Meet's own packages bring; on when `[jitsi] enabled`.
pub const JITSI: &str = "jitsi";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct FeatureFile {
    description: String,
    #[serde(default)]
    requires: Vec<String>,
    #[serde(default)]
    packages: Vec<String>,
}

/// One enabled feature.
#[derive(Debug, Clone)]
pub struct Feature {
    pub name: String,
    pub dir: PathBuf,
    pub description: String,
    pub requires: Vec<String>,
    pub packages: Vec<String>,
}

impl Feature {
    /// Reads `<dir>/feature.toml`.
    pub fn load(name: &str, dir: &Path) -> Result<Feature> {
        let file = dir.join("feature.toml");
        let text = std::fs::read_to_string(&file).with_context(|| {
            format!(
                "feature {name:?}: cannot read {} (each name in [features] enabled is a folder of [features] dir with a feature.toml)",
                file.display()
            )
        })?;
        let f: FeatureFile = toml::from_str(&text)
            .map_err(|e| anyhow::anyhow!("{}: {}", file.display(), e.message()))?;
        Ok(Feature {
            name: name.to_string(),
            dir: dir.to_path_buf(),
            description: f.description,
            requires: f.requires,
            packages: f.packages,
        })
    }

    pub fn files_dir(&self) -> Option<PathBuf> {
        Some(self.dir.join("files")).filter(|d| d.is_dir())
    }

    pub fn install_dir(&self) -> Option<PathBuf> {
        Some(self.dir.join("install")).filter(|d| d.is_dir())
    }

    pub fn preseed(&self) -> Option<PathBuf> {
        Some(self.dir.join("preseed.cfg")).filter(|f| f.is_file())
    }

    pub fn packages_script(&self) -> Option<PathBuf> {
        Some(self.dir.join("packages.sh")).filter(|f| f.is_file())
    }

    pub fn customize_script(&self) -> Option<PathBuf> {
        Some(self.dir.join("customize.sh")).filter(|f| f.is_file())
    }
}

/// The names of the features the configuration enables, in order: `[features] enabled`, plus
/// [`JITSI`] when `[jitsi] enabled`.
pub fn enabled_names(config: &Config) -> Vec<String> {
    let mut names = config.features.enabled.clone();
    if config.jitsi.enabled && !names.iter().any(|n| n == JITSI) {
        names.push(JITSI.into());
    }
    if !config.jitsi.enabled {
        names.retain(|n| n != JITSI);
    }
    names
}

/// Loads the enabled features and checks that each one's requirements are enabled too.
pub fn load(config: &Config) -> Result<Vec<Feature>> {
    let root = config.resolve(&config.features.dir);
    let names = enabled_names(config);
    let mut features = Vec::new();
    for name in &names {
        features.push(Feature::load(name, &root.join(name))?);
    }
    for f in &features {
        for r in &f.requires {
            if !names.contains(r) {
                bail!(
                    "feature {:?} requires the feature {r:?}, which is not enabled; add {r:?} to [features] enabled in appliance.toml",
                    f.name
                );
            }
        }
    }
    Ok(features)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn config(dir: &Path, extra: &str) -> Config {
        let text = format!("[image]\nname = \"t\"\n[features]\ndir = \"f\"\n{extra}");
        Config::from_str_with(&text, "test.toml", dir.to_path_buf(), &[]).unwrap()
    }

    fn feature(root: &Path, name: &str, body: &str) {
        std::fs::create_dir_all(root.join("f").join(name)).unwrap();
        std::fs::write(root.join("f").join(name).join("feature.toml"), body).unwrap();
    }

    #[test]
    fn features_load_in_order_and_check_requirements() {
        let d = tempfile::tempdir().unwrap();
        feature(d.path(), "a", "description = \"A\"\npackages = [\"x\"]\n");
        feature(d.path(), "b", "description = \"B\"\nrequires = [\"a\"]\n");
        let ok = load(&config(d.path(), "enabled = [\"a\", \"b\"]\n")).unwrap();
        assert_eq!(
            ok.iter().map(|f| f.name.as_str()).collect::<Vec<_>>(),
            ["a", "b"]
        );
        assert_eq!(ok[0].packages, ["x"]);
        let err = load(&config(d.path(), "enabled = [\"b\"]\n")).unwrap_err();
        let msg = format!("{err:#}");
        assert!(
            msg.contains("requires the feature \"a\"") && msg.contains("[features] enabled"),
            "{msg}"
        );
        let err = load(&config(d.path(), "enabled = [\"nope\"]\n")).unwrap_err();
        assert!(format!("{err:#}").contains("feature.toml"), "{err:#}");
    }

    #[test]
    fn jitsi_follows_its_own_switch() {
        let c = config(&PathBuf::from("."), "enabled = [\"base\", \"jitsi\"]\n");
        assert_eq!(
            enabled_names(&c),
            ["base"],
            "[jitsi] enabled = false drops the feature"
        );
    }

    #[test]
    fn the_projects_features_all_load() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../appliance.toml");
        let c = Config::load(&path, &[]).unwrap();
        let features = load(&c).unwrap();
        let names: Vec<&str> = features.iter().map(|f| f.name.as_str()).collect();
        for n in ["base", "boot", "hardening", "firstboot", "meeting", "jitsi"] {
            assert!(names.contains(&n), "{n} missing from {names:?}");
        }
        assert!(features.iter().all(|f| !f.description.is_empty()));
    }
}
