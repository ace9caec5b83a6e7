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
        if let Some(sbom) = files
            .iter()
            .find(|p| p.to_string_lossy().ends_with(".spdx.json"))
        {
            let n = check_sbom(sbom, &raw)?;
            done.push(Checked {
                what: "SBOM".into(),
                detail: format!(
                    "{} lists the {n} packages installed in the root",
                    sbom.display()
                ),
            });
        }
    }
    Ok(done)
}

/// Checks that the SBOM describes this image (its checksum) and lists exactly the Debian
/// packages dpkg's status file in the image's root says are installed.
fn check_sbom(sbom: &Path, raw: &Path) -> Result<usize> {
    let doc: serde_json::Value = serde_json::from_slice(&std::fs::read(sbom)?)
        .with_context(|| format!("{} is not JSON", sbom.display()))?;
    let packages = doc["packages"]
        .as_array()
        .context("the SBOM lists no packages")?;
    let image_sum = signature::sha256_file(raw)?;
    let describes = packages.iter().any(|p| {
        p["primaryPackagePurpose"] == "OPERATING-SYSTEM"
            && p["checksums"][0]["checksumValue"].as_str() == Some(image_sum.as_str())
    });
    if !describes {
        bail!(
            "{} does not describe {} (no image package with its SHA-256)",
            sbom.display(),
            raw.display()
        );
    }
    let mut listed: Vec<(String, String)> = packages
        .iter()
        .filter(|p| {
            p["SPDXID"]
                .as_str()
                .is_some_and(|id| id.starts_with("SPDXRef-deb-"))
        })
        .filter_map(|p| {
            Some((
                p["name"].as_str()?.to_string(),
                p["versionInfo"].as_str()?.to_string(),
            ))
        })
        .collect();
    listed.sort();
    let status = read_from_root(raw, "var/lib/dpkg/status")?;
    let mut installed: Vec<(String, String)> = crate::rootfs::parse_dpkg_status(&status)
        .into_iter()
        .map(|p| (p.name, p.version))
        .collect();
    installed.sort();
    if listed != installed {
        let only_sbom: Vec<String> = listed
            .iter()
            .filter(|p| !installed.contains(p))
            .map(|(n, v)| format!("{n} {v}"))
            .collect();
        let only_image: Vec<String> = installed
            .iter()
            .filter(|p| !listed.contains(p))
            .map(|(n, v)| format!("{n} {v}"))
            .collect();
        bail!(
            "the SBOM and the image disagree: only in the SBOM: [{}]; only in the image: [{}]",
            only_sbom.join(", "),
            only_image.join(", ")
        );
    }
    Ok(listed.len())
}

/// A file of slot A's root file system, read with unsquashfs.
fn read_from_root(image: &Path, path: &str) -> Result<String> {
    let entries = partitions::read_table(image)?;
    let root = Table::new(&entries)
        .root(Slot::A)
        .context("the image has no root-a partition")?;
    let mut f = File::open(image)?;
    f.seek(SeekFrom::Start(root.offset()))?;
    // The squashfs superblock says how long the file system is (bytes_used at offset 40).
    let mut sb = [0u8; 48];
    f.read_exact(&mut sb)?;
    if &sb[0..4] != b"hsqs" {
        bail!("root-a holds no squashfs");
    }
    let used = u64::from_le_bytes(sb[40..48].try_into()?);
    f.seek(SeekFrom::Start(root.offset()))?;
    let mut tmp = tempfile::NamedTempFile::new()?;
    std::io::copy(&mut f.take(used), tmp.as_file_mut())?;
    let out = crate::host::run(
        std::process::Command::new("unsquashfs")
            .arg("-cat")
            .arg(tmp.path())
            .arg(path),
    )
    .with_context(|| format!("reading /{path} from the image's root"))?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
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
