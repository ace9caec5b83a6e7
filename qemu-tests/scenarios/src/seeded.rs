//! A machine the measurement examples can log in to: a copy of a built image with a complete
//! seed file (the test domain, one host, a throwaway SSH key) on its ESP, behind a
//! copy-on-write overlay, ready to boot.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use appliance_qemu_tests::machine::MachineConfig;
use appliance_qemu_tests::scenarios::overlay;
use appliance_qemu_tests::Arch;

use crate::disk::copy_with_seed;
use crate::meeting;
use crate::session::{machine_config, Ports};
use crate::ssh::{KeyPair, Ssh};

/// What [`prepare`] made: boot `config`, then log in with `ssh`.
pub struct SeededMachine {
    pub config: MachineConfig,
    pub ports: Ports,
    pub ssh: Ssh,
    /// Kept so the key files outlive the machine.
    pub key: KeyPair,
}

/// `image` (its `.manifest.json` beside it) copied into `work` (emptied first) with a seed.
pub fn prepare(image: &Path, work: &Path) -> Result<SeededMachine> {
    let manifest_path = image.with_extension("manifest.json");
    let manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(&manifest_path)
            .with_context(|| format!("cannot read {}", manifest_path.display()))?,
    )
    .with_context(|| format!("{} is not JSON", manifest_path.display()))?;
    let esp = manifest["partitions"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["label"] == "esp"))
        .and_then(|p| p["first_lba"].as_u64())
        .context("the manifest lists no esp partition")?
        * 512;
    let _ = std::fs::remove_dir_all(work);
    std::fs::create_dir_all(work).with_context(|| format!("cannot create {}", work.display()))?;
    let key = KeyPair::generate("measurement")?;
    let seed = format!(
        "domain = \"{}\"\nssh_authorized_keys = [{:?}]\n[[hosts]]\nname = \"{}\"\npassword = \"{}\"\n",
        meeting::DOMAIN,
        key.public_line()?,
        meeting::HOST,
        meeting::HOST_PASSWORD
    );
    let seeded = work.join("seeded.raw");
    copy_with_seed(image, esp, &seed, &seeded)?;
    let disk: PathBuf = work.join("disk.qcow2");
    overlay(&seeded, &disk, 6 << 30)?;
    let ports = Ports::free()?;
    let config = machine_config(Arch::X86_64, &disk, work.join("boot"), ports);
    let ssh = Ssh::new(ports.ssh, "admin", key.private.clone());
    Ok(SeededMachine {
        config,
        ports,
        ssh,
        key,
    })
}
