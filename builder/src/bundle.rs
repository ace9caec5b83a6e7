//! Writing update bundles and the update channel's index (format: [`appliance_spec::bundle`]).

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use appliance_spec::bundle::{self, BundleFile, BundleManifest, ChannelIndex};
use appliance_spec::signature::{sha256_file, NAMESPACE_UPDATE};

use crate::signing::SigningKey;

/// Writes the bundle to `out`: the manifest (with the size and SHA-256 of every payload file
/// filled in), its signature, then the payload, as a reproducible tar.
pub fn write(
    out: &Path,
    mut manifest: BundleManifest,
    payload: &[(&str, PathBuf)],
    key: &SigningKey,
    mtime: u64,
) -> Result<BundleManifest> {
    manifest.files.clear();
    for (name, path) in payload {
        manifest.files.push(BundleFile {
            name: name.to_string(),
            bytes: std::fs::metadata(path)
                .with_context(|| format!("reading {}", path.display()))?
                .len(),
            sha256: sha256_file(path)?,
        });
    }
    let json = serde_json::to_vec_pretty(&manifest)?;
    let sig = key.sign(NAMESPACE_UPDATE, &json)?;
    let file = std::fs::File::create(out).with_context(|| format!("creating {}", out.display()))?;
    let mut tar = tar::Builder::new(std::io::BufWriter::with_capacity(1 << 20, file));
    let header = |len: u64| {
        let mut h = tar::Header::new_ustar();
        h.set_size(len);
        h.set_mode(0o644);
        h.set_mtime(mtime);
        h.set_uid(0);
        h.set_gid(0);
        h.set_entry_type(tar::EntryType::Regular);
        h
    };
    tar.append_data(
        &mut header(json.len() as u64),
        bundle::MANIFEST,
        json.as_slice(),
    )?;
    tar.append_data(
        &mut header(sig.len() as u64),
        bundle::SIGNATURE,
        sig.as_slice(),
    )?;
    for (name, path) in payload {
        let f = std::fs::File::open(path)?;
        let len = f.metadata()?.len();
        tar.append_data(&mut header(len), name, f)
            .with_context(|| format!("adding {name} to the bundle"))?;
    }
    tar.into_inner()?.flush()?;
    Ok(manifest)
}

/// Writes the channel's index for the bundle `bundle_name` (whose file is `bundle_path`) to
/// `index_out` and its signature to `sig_out`.
pub fn write_channel_index(
    index_out: &Path,
    sig_out: &Path,
    manifest: &BundleManifest,
    bundle_name: &str,
    bundle_path: &Path,
    key: &SigningKey,
) -> Result<()> {
    let index = ChannelIndex {
        format: bundle::FORMAT,
        name: manifest.name.clone(),
        arch: manifest.arch,
        board: manifest.board,
        version: manifest.version.clone(),
        bundle: bundle_name.to_string(),
        bytes: std::fs::metadata(bundle_path)?.len(),
        sha256: sha256_file(bundle_path)?,
    };
    let json = serde_json::to_vec_pretty(&index)?;
    std::fs::write(index_out, &json)?;
    std::fs::write(sig_out, key.sign(NAMESPACE_UPDATE, &json)?)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use appliance_spec::bundle::{verify, Expect, FORMAT};
    use appliance_spec::signature::TrustedKeys;
    use appliance_spec::{Arch, Board};

    fn sample(dir: &Path, key: &SigningKey, version: &str) -> PathBuf {
        let payload: Vec<(&str, PathBuf)> = bundle::PAYLOAD
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let p = dir.join(format!("payload-{i}"));
                std::fs::write(&p, vec![i as u8; 5000 + i * 100]).unwrap();
                (*name, p)
            })
            .collect();
        let manifest = BundleManifest {
            format: FORMAT,
            name: "meet".into(),
            version: version.parse().unwrap(),
            min_version: None,
            arch: Arch::X86_64,
            board: Board::Generic,
            data_schema: 1,
            root_hash: "ab".repeat(32),
            kernel_version: "6.1.0".into(),
            cmdline: vec!["ro".into()],
            files: vec![],
        };
        let out = dir.join(format!("meet-{version}.update"));
        write(&out, manifest, &payload, key, 1_700_000_000).unwrap();
        out
    }

    #[test]
    fn a_written_bundle_verifies_and_any_change_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let (private, public) = crate::signing::generate(d.path(), "k", "t").unwrap();
        let key = SigningKey::load(&private).unwrap();
        let keys = TrustedKeys::parse(&std::fs::read_to_string(public).unwrap(), "k.pub").unwrap();
        let bundle = sample(d.path(), &key, "2.0.0");
        let running = "1.0.0".parse().unwrap();
        let expect = Expect {
            name: "meet",
            arch: Arch::X86_64,
            board: Board::Generic,
            running: &running,
            allow_downgrade: false,
        };
        let v = verify(&bundle, &keys, &expect).unwrap();
        assert_eq!(v.manifest.files.len(), 4);
        let (offset, len) = v.member(bundle::VERITY).unwrap();
        let bytes = std::fs::read(&bundle).unwrap();
        assert_eq!(
            &bytes[offset as usize..(offset + len) as usize],
            vec![1u8; 5100].as_slice()
        );
        // A byte changed in the payload, a cut-off file, another signer: all refused.
        let mut changed = bytes.clone();
        changed[offset as usize + 10] ^= 1;
        let tampered = d.path().join("tampered.update");
        std::fs::write(&tampered, &changed).unwrap();
        let e = verify(&tampered, &keys, &expect).unwrap_err();
        assert!(format!("{e:#}").contains("was changed"), "{e:#}");
        std::fs::write(&tampered, &bytes[..bytes.len() - 3000]).unwrap();
        assert!(verify(&tampered, &keys, &expect).is_err());
        let other_dir = tempfile::tempdir().unwrap();
        let (other, _) = crate::signing::generate(other_dir.path(), "o", "t").unwrap();
        let foreign = sample(
            other_dir.path(),
            &SigningKey::load(&other).unwrap(),
            "2.0.0",
        );
        let e = verify(&foreign, &keys, &expect).unwrap_err();
        assert!(format!("{e:#}").contains("not trusted"), "{e:#}");
    }

    #[test]
    fn bundles_are_reproducible() {
        let d = tempfile::tempdir().unwrap();
        let (private, _) = crate::signing::generate(d.path(), "k", "t").unwrap();
        let key = SigningKey::load(&private).unwrap();
        let a = std::fs::read(sample(d.path(), &key, "1.0.0")).unwrap();
        let b = std::fs::read(sample(d.path(), &key, "1.0.0")).unwrap();
        assert!(a == b, "two bundles of the same inputs differ");
    }
}
