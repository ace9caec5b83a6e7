//! `appliance verify`: checks a build's outputs the way a third party would, with nothing but
//! the outputs and the signer's public key: the signature on `SHA256SUMS`, every checksum, and
//! that the root file system in the image hashes to the root hash the manifest and the boot
//! entry name (a full dm-verity check, as `veritysetup verify` does).

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use appliance_spec::layout::Table;
use appliance_spec::signature::{self, TrustedKeys, NAMESPACE_RELEASE};
use appliance_spec::{verity, Slot};

use crate::partitions;

/// One thing that was checked, for the report.
pub struct Checked {
    pub what: String,
    pub detail: String,
}

/// Checks the outputs in `dir` against `keys`. Stops at the first problem, with a message that
/// says what does not hold.
pub fn verify_outputs(dir: &Path, keys: &TrustedKeys) -> Result<Vec<Checked>> {
    let mut done = Vec::new();
    let sums_path = dir.join("SHA256SUMS");
    let sums = std::fs::read(&sums_path).with_context(|| {
        format!(
            "{} is missing: is {} a build's output directory?",
            sums_path.display(),
            dir.display()
        )
    })?;
    let sig_path = dir.join("SHA256SUMS.sig");
    let sig = std::fs::read(&sig_path).with_context(|| {
        format!(
            "{} is missing: the outputs are not signed (set [signing] key when building)",
            sig_path.display()
        )
    })?;
    let signer = keys
        .verify(NAMESPACE_RELEASE, &sums, &sig)
        .context("SHA256SUMS.sig does not verify")?;
    done.push(Checked {
        what: "signature".into(),
        detail: format!("SHA256SUMS is signed by {signer}"),
    });
    let text = String::from_utf8(sums).context("SHA256SUMS is not text")?;
    let mut files = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let Some((sum, name)) = line.split_once("  ") else {
            bail!("SHA256SUMS, line {}: not `<sha256>  <file>`", n + 1);
        };
        if name.contains('/') || name.starts_with('.') {
            bail!(
                "SHA256SUMS, line {}: {name:?} is not a file of this directory",
                n + 1
            );
        }
        let path = dir.join(name);
        let actual = signature::sha256_file(&path)
            .with_context(|| format!("{name} is listed in SHA256SUMS but cannot be read"))?;
        if actual != sum {
            bail!("{name} does not match its checksum: it was changed or damaged after the build");
        }
        files.push(path);
    }
    done.push(Checked {
        what: "checksums".into(),
        detail: format!("{} files match SHA256SUMS", files.len()),
    });
    let manifest_path = files
        .iter()
        .find(|p| p.to_string_lossy().ends_with(".manifest.json"))
        .context("SHA256SUMS lists no manifest")?;
    let manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(manifest_path)?)
        .with_context(|| format!("{} is not JSON", manifest_path.display()))?;
    if let Some(expected) = manifest["verity"]["root_hash"].as_str() {
        let raw = raw_image(&files, &manifest)?;
        let root = root_hash_of_image(&raw)?;
        if root != expected {
            bail!(
                "the root file system in {} hashes to {root}, but the manifest says {expected}",
                raw.display()
            );
        }
        let cmdline = manifest["kernel_cmdline"].as_str().unwrap_or_default();
        if !cmdline
            .split_whitespace()
            .any(|a| a == format!("roothash={expected}"))
        {
            bail!("the manifest's kernel command line does not boot root hash {expected}");
        }
        done.push(Checked {
            what: "root file system".into(),
            detail: format!("{} verifies against root hash {expected}", raw.display()),
        });
    }
    Ok(done)
}

/// The raw image among the outputs.
fn raw_image(files: &[PathBuf], manifest: &serde_json::Value) -> Result<PathBuf> {
    let name = manifest["name"].as_str().unwrap_or_default();
    files
        .iter()
        .find(|p| p.file_name().is_some_and(|f| f.to_string_lossy() == format!("{name}.raw")))
        .cloned()
        .context("the raw image is not among the outputs, so the root hash cannot be checked; decompress the .raw.zst next to the others and run verify again")
}

/// The root hash slot A's partitions verify to (data against the stored tree).
pub fn root_hash_of_image(image: &Path) -> Result<String> {
    let entries = partitions::read_table(image)?;
    let table = Table::new(&entries);
    let (root, hash) = match (table.root(Slot::A), table.verity(Slot::A)) {
        (Some(r), Some(h)) => (r, h),
        _ => bail!("{} has no root-a/verity-a partitions", image.display()),
    };
    let mut data = File::open(image)?;
    data.seek(SeekFrom::Start(root.offset()))?;
    let mut tree = File::open(image)?;
    tree.seek(SeekFrom::Start(hash.offset()))?;
    let root_hash = verity::verify(
        &mut std::io::BufReader::with_capacity(1 << 20, data.take(root.size_bytes())),
        &mut std::io::BufReader::new(tree.take(hash.size_bytes())),
    )
    .with_context(|| format!("checking the root file system of {}", image.display()))?;
    Ok(hex::encode(root_hash))
}
