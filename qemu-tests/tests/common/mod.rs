//! Helpers shared by the integration tests that drive the `appliance` binary.

use std::path::{Path, PathBuf};

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .expect("repository root")
}

/// The `appliance` binary of the same cargo profile as the running test.
pub fn appliance_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test>-<hash> → target/<profile>/appliance
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join("appliance"))
        .expect("target directory");
    assert!(
        bin.exists(),
        "{} is missing: run the tests with `cargo test --workspace` (which builds it) or `cargo build` first",
        bin.display()
    );
    bin
}
