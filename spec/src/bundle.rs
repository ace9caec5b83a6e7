//! Update bundles: `<name>-<version>.update`, what `appliance build` writes and
//! `appliance-admin update apply` installs into the slot that is not running
//! (docs/updates.md).
//!
//! A bundle is a plain (ustar) tar with these members, in this order:
//!
//! | member | what |
//! |---|---|
//! | `bundle.json` | [`BundleManifest`]: name, version, architecture, board, root hash, and the size and SHA-256 of every other member |
//! | `bundle.json.sig` | SSHSIG signature of `bundle.json` ([`crate::signature::NAMESPACE_UPDATE`]) |
//! | `root.squashfs` | the root file system |
//! | `root.verity` | its dm-verity hash device |
//! | `vmlinuz`, `initrd.img` | the kernel and initrd |
//!
//! The signature covers the manifest, the manifest covers every byte of the rest: a person can
//! check a bundle with `tar`, `ssh-keygen -Y verify` and `sha256sum`. [`verify`] checks all of
//! it, and what the running machine requires, before the caller writes anything.

use std::io::Read;
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::signature::{TrustedKeys, NAMESPACE_UPDATE};
use crate::version::Version;
use crate::{Arch, Board};

/// The bundle format this code reads and writes.
pub const FORMAT: u32 = 1;

pub const MANIFEST: &str = "bundle.json";
pub const SIGNATURE: &str = "bundle.json.sig";
pub const ROOT: &str = "root.squashfs";
pub const VERITY: &str = "root.verity";
pub const KERNEL: &str = "vmlinuz";
pub const INITRD: &str = "initrd.img";
/// The payload members, in order.
pub const PAYLOAD: [&str; 4] = [ROOT, VERITY, KERNEL, INITRD];

/// `bundle.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleManifest {
    pub format: u32,
    /// `[image] name`: a bundle only updates machines of the same image.
    pub name: String,
    pub version: Version,
    /// The oldest running version this bundle may replace (`[updates] min_version`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_version: Option<Version>,
    pub arch: Arch,
    pub board: Board,
    /// The version of the layout of /data this image reads and writes ([`crate::DATA_SCHEMA`]).
    pub data_schema: u32,
    /// dm-verity root hash of `root.squashfs` with `root.verity` (hex).
    pub root_hash: String,
    pub kernel_version: String,
    /// Kernel arguments after the root's: `[boot] cmdline` and the consoles. The machine puts
    /// the root's own (`roothash=`, the slot's partitions) in front.
    pub cmdline: Vec<String>,
    pub files: Vec<BundleFile>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleFile {
    pub name: String,
    pub bytes: u64,
    pub sha256: String,
}

/// What the machine installing a bundle is and accepts.
#[derive(Clone, Copy)]
pub struct Expect<'a> {
    pub name: &'a str,
    pub arch: Arch,
    pub board: Board,
    pub running: &'a Version,
    pub allow_downgrade: bool,
}

/// A bundle whose signature, manifest and every payload byte were checked.
#[derive(Debug, Clone)]
pub struct VerifiedBundle {
    pub manifest: BundleManifest,
    /// The fingerprint of the key that signed it.
    pub signer: String,
    /// Where each payload member's data starts in the bundle file, and its length.
    pub members: Vec<(String, u64, u64)>,
}

impl VerifiedBundle {
    pub fn member(&self, name: &str) -> Option<(u64, u64)> {
        self.members
            .iter()
            .find(|(n, _, _)| n == name)
            .map(|(_, o, l)| (*o, *l))
    }
}

/// Checks the bundle at `path`: its signature by one of `keys`, that it is for this machine
/// (name, architecture, board) and not older than what runs (unless `allow_downgrade`), and
/// that every payload member has the size and SHA-256 the signed manifest gives. Reads the
/// whole file once; writes nothing.
pub fn verify(path: &Path, keys: &TrustedKeys, expect: &Expect) -> Result<VerifiedBundle> {
    let file = std::fs::File::open(path)
        .with_context(|| format!("cannot read the update bundle {}", path.display()))?;
    let mut archive = tar::Archive::new(std::io::BufReader::with_capacity(1 << 20, file));
    let mut entries = archive.entries().with_context(|| {
        format!(
            "{} is not an update bundle (not a tar file)",
            path.display()
        )
    })?;
    let mut next = |want: &str| -> Result<tar::Entry<'_, _>> {
        let entry = entries
            .next()
            .with_context(|| format!("the bundle ends before {want}: it is truncated"))?
            .context("the bundle is truncated or damaged")?;
        let name = entry.path()?.to_string_lossy().into_owned();
        if name != want {
            bail!("the bundle holds {name:?} where {want:?} belongs: not a bundle of this format");
        }
        Ok(entry)
    };
    let mut manifest_bytes = Vec::new();
    next(MANIFEST)?
        .take(1 << 20)
        .read_to_end(&mut manifest_bytes)?;
    let mut signature = Vec::new();
    next(SIGNATURE)?
        .take(64 << 10)
        .read_to_end(&mut signature)?;
    let signer = keys
        .verify(NAMESPACE_UPDATE, &manifest_bytes, &signature)
        .context("the update bundle's signature does not verify")?;
    let manifest: BundleManifest =
        serde_json::from_slice(&manifest_bytes).context("the signed bundle.json cannot be read")?;
    check_fits(&manifest, expect)?;
    let mut members = Vec::new();
    for name in PAYLOAD {
        let mut entry = next(name)?;
        let listed = manifest
            .files
            .iter()
            .find(|f| f.name == name)
            .with_context(|| format!("bundle.json does not list {name}"))?;
        let offset = entry.raw_file_position();
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut len = 0u64;
        loop {
            let n = entry.read(&mut buf).with_context(|| {
                format!("reading {name} from the bundle: it is truncated or damaged")
            })?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
            len += n as u64;
        }
        if len != listed.bytes || hex::encode(h.finalize()) != listed.sha256 {
            bail!("{name} in the bundle is not what bundle.json lists: the bundle is truncated or was changed");
        }
        members.push((name.to_string(), offset, len));
    }
    Ok(VerifiedBundle {
        manifest,
        signer,
        members,
    })
}

/// Whether a signed manifest is for this machine and may replace what runs.
pub fn check_fits(m: &BundleManifest, expect: &Expect) -> Result<()> {
    if m.format != FORMAT {
        bail!(
            "the bundle has format {}, this machine reads format {FORMAT}",
            m.format
        );
    }
    if m.name != expect.name {
        bail!(
            "the bundle is for the image {:?}, this machine runs {:?}",
            m.name,
            expect.name
        );
    }
    if m.arch != expect.arch {
        bail!(
            "the bundle is for {}, this machine is {}",
            m.arch,
            expect.arch
        );
    }
    if m.board != expect.board {
        bail!(
            "the bundle is for the board {}, this machine is {}",
            m.board,
            expect.board
        );
    }
    if let Some(min) = &m.min_version {
        if expect.running < min {
            bail!(
                "version {} updates only from {min} or newer; this machine runs {}: install {min} first",
                m.version,
                expect.running
            );
        }
    }
    if &m.version < expect.running && !expect.allow_downgrade {
        bail!(
            "the bundle holds version {}, older than the running {}: refused (use --allow-downgrade to go back on purpose)",
            m.version,
            expect.running
        );
    }
    Ok(())
}

/// The channel's `index.json`: the newest bundle of one image, for machines that update
/// themselves (`[updates] url`). Signed like a bundle (`index.json.sig`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelIndex {
    pub format: u32,
    pub name: String,
    pub arch: Arch,
    pub board: Board,
    pub version: Version,
    /// The bundle's file name, relative to the index.
    pub bundle: String,
    pub bytes: u64,
    pub sha256: String,
}

pub const CHANNEL_INDEX: &str = "index.json";
pub const CHANNEL_SIGNATURE: &str = "index.json.sig";

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(version: &str) -> BundleManifest {
        BundleManifest {
            format: FORMAT,
            name: "meet".into(),
            version: version.parse().unwrap(),
            min_version: Some("1.0.0".parse().unwrap()),
            arch: Arch::X86_64,
            board: Board::Generic,
            data_schema: 1,
            root_hash: "00".repeat(32),
            kernel_version: "6.1".into(),
            cmdline: vec![],
            files: vec![],
        }
    }

    #[test]
    fn only_bundles_for_this_machine_and_not_older_fit() {
        let running: Version = "1.2.0".parse().unwrap();
        let expect = Expect {
            name: "meet",
            arch: Arch::X86_64,
            board: Board::Generic,
            running: &running,
            allow_downgrade: false,
        };
        check_fits(&manifest("1.3.0"), &expect).unwrap();
        check_fits(&manifest("1.2.0"), &expect).unwrap();
        let e = check_fits(&manifest("1.1.9"), &expect).unwrap_err();
        assert!(e.to_string().contains("--allow-downgrade"), "{e}");
        check_fits(
            &manifest("1.1.9"),
            &Expect {
                allow_downgrade: true,
                ..expect
            },
        )
        .unwrap();
        let mut arm = manifest("2.0.0");
        arm.arch = Arch::Arm64;
        assert!(check_fits(&arm, &expect)
            .unwrap_err()
            .to_string()
            .contains("arm64"));
        let mut pi = manifest("2.0.0");
        pi.board = Board::RaspberryPi;
        assert!(check_fits(&pi, &expect)
            .unwrap_err()
            .to_string()
            .contains("board"));
        let mut other = manifest("2.0.0");
        other.name = "other".into();
        assert!(check_fits(&other, &expect).is_err());
        let old: Version = "0.9.0".parse().unwrap();
        let e = check_fits(
            &manifest("2.0.0"),
            &Expect {
                running: &old,
                ..expect
            },
        )
        .unwrap_err();
        assert!(e.to_string().contains("install 1.0.0 first"), "{e}");
    }
}
