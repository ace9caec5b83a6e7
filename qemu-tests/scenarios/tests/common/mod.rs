//! Images for the scenario tests, built with the builder library (`appliance`, a
//! dev-dependency), as `appliance build` would build them.
//!
//! Each test binary uses a part of this module.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::{Context, Result};
use appliance::build::{build, BuildOptions};
use appliance::config::{Arch, Config};
use appliance_qemu_tests::test_image;

/// A finished build: the raw image, its output directory and its manifest.
pub struct Built {
    pub image: PathBuf,
    pub out: PathBuf,
    pub manifest: serde_json::Value,
}

impl Built {
    /// Byte offset of the partition labelled `label` (from the manifest).
    pub fn offset(&self, label: &str) -> u64 {
        self.partition(label)["first_lba"]
            .as_u64()
            .unwrap_or_else(|| panic!("the manifest's {label} partition has no first_lba"))
            * 512
    }

    pub fn partition(&self, label: &str) -> &serde_json::Value {
        self.manifest["partitions"]
            .as_array()
            .and_then(|ps| ps.iter().find(|p| p["label"] == label))
            .unwrap_or_else(|| panic!("the manifest has no {label} partition"))
    }

    /// The names of the packages the manifest lists.
    pub fn packages(&self) -> Vec<&str> {
        self.manifest["packages"]
            .as_array()
            .map(|ps| ps.iter().filter_map(|p| p["name"].as_str()).collect())
            .unwrap_or_default()
    }
}

/// Builds the repository's `appliance.toml` with `overrides` into `out`, with the build
/// directory and caches in `build/`, after the same host-tool check as `appliance build`.
pub fn build_image(overrides: &[String], out: &Path) -> Result<Built> {
    let config = Config::load(&test_image::config_path(), overrides)?;
    appliance::doctor::require("build")?;
    if config.image.arch == Arch::Arm64 && std::env::consts::ARCH != "aarch64" {
        appliance::doctor::require("arm64")?;
    }
    let summary = build(&config, &BuildOptions::new(out, test_image::build_dir()))?;
    let manifest_path = out.join(test_image::MANIFEST_FILE);
    let manifest = serde_json::from_slice(
        &std::fs::read(&manifest_path)
            .with_context(|| format!("cannot read {}", manifest_path.display()))?,
    )
    .with_context(|| format!("{} is not JSON", manifest_path.display()))?;
    Ok(Built {
        image: summary.image,
        out: out.to_path_buf(),
        manifest,
    })
}

/// The test image (see `appliance_qemu_tests::test_image`), built once per test binary. When
/// `builder/tests/image.rs` ran first, its root file system comes from the cache.
pub fn test_image() -> &'static Built {
    static BUILT: OnceLock<Result<Built, String>> = OnceLock::new();
    let built = BUILT.get_or_init(|| {
        test_image::overrides()
            .and_then(|o| build_image(&o, &test_image::out_dir()))
            .map_err(|e| format!("building the test image failed: {e:#}"))
    });
    match built {
        Ok(b) => b,
        Err(e) => panic!("{e}"),
    }
}

/// `build/test/<name>`, emptied.
pub fn workdir(name: &str) -> PathBuf {
    test_image::workdir(name).unwrap_or_else(|e| panic!("{e:#}"))
}
