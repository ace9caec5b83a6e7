//! Stage 7: the outputs. A zstd copy, the qemu-img formats (each checked against the raw
//! image), the block map, the manifest and `SHA256SUMS`; then everything is renamed into
//! place at once.

use std::path::PathBuf;

use anyhow::{Context, Result};
use appliance_spec::bundle::{self, BundleManifest};
use appliance_spec::layout::ALIGN;
use appliance_spec::signature::NAMESPACE_RELEASE;

use super::boot::BootFiles;
use super::cache::KeyBuilder;
use super::disk::{Disk, Image};
use super::keys::Keyrings;
use super::packages::PackageLayer;
use super::squashfs::Squashfs;
use super::system::SystemLayer;
use super::verity::RootVerity;
use super::BuildCtx;
use crate::config::Format;
use crate::formats;
use crate::lock::Lock;
use crate::outputs::{self, Manifest, ManifestVerity, OutputFile, Provenance};
use crate::progress::human_bytes;
use appliance_spec::signature::TrustedKeys;

/// Hidden file in the output directory naming the inputs its outputs were made from.
const STAMP: &str = ".build-key";

/// The key of everything the outputs depend on: both layers, the configuration (formats,
/// sizes, identifiers), the zstd level and the signing key.
pub fn image_key(ctx: &BuildCtx, packages: &PackageLayer, system: &SystemLayer) -> Result<String> {
    let signer = match &ctx.signing {
        Some(k) => k.public_line()?,
        None => String::new(),
    };
    Ok(KeyBuilder::new("outputs")
        .part("package layer", &packages.key)
        .part("system layer", &system.key)
        .part("configuration", &ctx.config.hash)
        .part("zstd level", ctx.opts.zstd_level.to_string())
        .part("signing key", signer)
        .finish())
}

/// The outputs already in the output directory, when they were made from `key` and every
/// one of them still has the checksum `SHA256SUMS` gives it (and the signature verifies).
pub fn unchanged(ctx: &BuildCtx, key: &str) -> Result<Option<Vec<OutputFile>>> {
    let dir = &ctx.opts.out_dir;
    let stamp = std::fs::read_to_string(dir.join(STAMP)).unwrap_or_default();
    if stamp.trim() != key || ctx.opts.refresh {
        return Ok(None);
    }
    let Ok(sums) = std::fs::read_to_string(dir.join("SHA256SUMS")) else {
        return Ok(None);
    };
    if let Some(k) = &ctx.signing {
        let trusted = TrustedKeys::parse(&k.public_line()?, "the signing key")?;
        let sig = std::fs::read(dir.join("SHA256SUMS.sig")).unwrap_or_default();
        if trusted
            .verify(NAMESPACE_RELEASE, sums.as_bytes(), &sig)
            .is_err()
        {
            return Ok(None);
        }
    }
    let mut files = Vec::new();
    for line in sums.lines() {
        let Some((sum, name)) = line.split_once("  ") else {
            return Ok(None);
        };
        let path = dir.join(name);
        let Ok(meta) = std::fs::metadata(&path) else {
            return Ok(None);
        };
        if outputs::sha256_file(&path)? != sum {
            return Ok(None);
        }
        files.push(OutputFile {
            file: name.to_string(),
            bytes: meta.len(),
            sha256: sum.to_string(),
        });
    }
    Ok(Some(files))
}

pub struct Outputs {
    /// Where the raw image is (or would be, if `raw` is not among the formats).
    pub image: PathBuf,
    /// Every output file, the manifest included.
    pub files: Vec<OutputFile>,
}

/// The SPDX document of the image.
fn sbom(ctx: &BuildCtx, parts: &Parts, raw_sha256: &str) -> Result<serde_json::Value> {
    let config = ctx.config;
    let debs = parts.packages.debs(config, parts.keyrings)?;
    let mut source_uris = std::collections::BTreeMap::new();
    for s in crate::packages::lock_sources(config, parts.keyrings) {
        source_uris.insert(s.name, s.uri);
    }
    let crates = crate::admin_program::crates(config.image.arch, ctx.opts.offline)?;
    let version = config.image.version.to_string();
    let supplier = format!("Organization: {}", config.image.supplier);
    let root_hash = parts.verity.root_hash();
    crate::sbom::spdx(&crate::sbom::Inputs {
        name: &config.image.name,
        version: &version,
        supplier: &supplier,
        debian_arch: config.image.arch.debian(),
        image_sha256: raw_sha256,
        root_hash: root_hash.as_deref(),
        created: config.image.source_date_epoch,
        installed: &parts.packages.contents.packages,
        debs: &debs,
        source_uris: &source_uris,
        copyright_dir: &parts.packages.contents.copyright_dir,
        admin_version: env!("CARGO_PKG_VERSION"),
        crates: &crates,
    })
}

/// The versions of the host tools that shape the image's bytes.
fn host_tool_versions() -> std::collections::BTreeMap<String, String> {
    let mut out = std::collections::BTreeMap::new();
    for (tool, arg) in [("mmdebstrap", "--version"), ("mksquashfs", "-version")] {
        let version = std::process::Command::new(tool)
            .arg(arg)
            .output()
            .ok()
            .and_then(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .next()
                    .map(str::to_string)
            })
            .unwrap_or_else(|| "unknown".into());
        out.insert(tool.to_string(), version);
    }
    out
}

/// The signed update bundle `<name>-<version>.update` and the channel index pointing at it.
fn update_bundle(
    ctx: &BuildCtx,
    key: &crate::signing::SigningKey,
    disk: &mut Disk,
    squashfs: &Squashfs,
    verity: &RootVerity,
    boot: &BootFiles,
) -> Result<Vec<(String, PathBuf)>> {
    let config = ctx.config;
    let Some(root_hash) = verity.root_hash() else {
        anyhow::bail!("update bundles need a verified root: set [root] verity = true, or leave [signing] key unset");
    };
    let manifest = BundleManifest {
        format: bundle::FORMAT,
        name: config.image.name.clone(),
        version: config.image.version.clone(),
        min_version: config.updates.min_version.clone(),
        arch: config.image.arch,
        board: config.image.board,
        data_schema: appliance_spec::DATA_SCHEMA,
        root_hash,
        kernel_version: boot.contents.kernel_version.clone(),
        cmdline: appliance_spec::cmdline::system_args(&config.boot.cmdline),
        files: Vec::new(),
    };
    let name = format!("{}-{}.update", config.image.name, config.image.version);
    let path = disk.staged.path(&name);
    let manifest = crate::bundle::write(
        &path,
        manifest,
        &[
            (bundle::ROOT, squashfs.path.clone()),
            (bundle::VERITY, verity.hash_file.clone()),
            (bundle::KERNEL, boot.contents.kernel.clone()),
            (bundle::INITRD, boot.contents.initrd.clone()),
        ],
        key,
        config.image.source_date_epoch,
    )?;
    let index = disk.staged.path(bundle::CHANNEL_INDEX);
    let index_sig = disk.staged.path(bundle::CHANNEL_SIGNATURE);
    crate::bundle::write_channel_index(&index, &index_sig, &manifest, &name, &path, key)?;
    Ok(vec![
        (name, path),
        (bundle::CHANNEL_INDEX.to_string(), index),
        (bundle::CHANNEL_SIGNATURE.to_string(), index_sig),
    ])
}

/// What the outputs describe, from the earlier stages.
pub struct Parts<'a> {
    pub keyrings: &'a Keyrings,
    pub packages: &'a PackageLayer,
    pub squashfs: &'a Squashfs,
    pub verity: &'a RootVerity,
    pub boot: &'a BootFiles,
}

pub fn write(
    ctx: &mut BuildCtx,
    disk: Image,
    parts: &Parts,
    key: &str,
) -> Result<(Outputs, String)> {
    let image = ctx
        .opts
        .out_dir
        .join(format!("{}.raw", ctx.config.image.name));
    let mut disk = match disk {
        Image::Written(disk) => disk,
        Image::Unchanged(files) => {
            let note = format!("{} files kept", files.len());
            return Ok((Outputs { image, files }, note));
        }
    };
    let Parts {
        squashfs,
        verity,
        boot,
        ..
    } = *parts;
    let config = ctx.config;
    let name = &config.image.name;
    let raw = disk.raw.clone();
    let mut made: Vec<(String, PathBuf)> = Vec::new();
    if disk.keep_raw {
        made.push((format!("{name}.raw"), raw.clone()));
    }
    // The raw image's checksum comes with its compression when there is one: one read.
    let raw_sha256 = if config.image.formats.contains(&Format::RawZst) {
        let file = format!("{name}.{}", Format::RawZst.extension());
        let path = disk.staged.path(&file);
        ctx.progress.message("compressing with zstd");
        let (_, sum) = outputs::compress_zstd(&raw, &path, ctx.opts.zstd_level)
            .with_context(|| format!("compressing {}", raw.display()))?;
        made.push((file, path));
        sum
    } else {
        ctx.progress.message("checksumming the raw image");
        outputs::sha256_file(&raw)?
    };
    for (format, vm) in [
        (Format::Qcow2, formats::VmFormat::Qcow2),
        (Format::Vmdk, formats::VmFormat::Vmdk),
        (Format::Vhd, formats::VmFormat::Vhd),
    ] {
        if config.image.formats.contains(&format) {
            let file = format!("{name}.{}", format.extension());
            let path = disk.staged.path(&file);
            ctx.progress
                .message(&format!("converting to {}", format.extension()));
            formats::convert(&raw, vm, &path)?;
            ctx.progress.message(&format!("checking {file}"));
            formats::verify(&raw, vm, &path)?;
            made.push((file, path));
        }
    }
    if config.image.formats.contains(&Format::Bmap) {
        let file = format!("{name}.bmap");
        let path = disk.staged.path(&file);
        ctx.progress.message("writing the block map");
        // Partitions that are empty in the image get their first MiB written anyway, so
        // flashing over a used disk cannot revive an old file system (and its secrets).
        let empty_starts: Vec<(u64, u64)> = disk
            .layout
            .partitions
            .iter()
            .filter(|p| p.spec.content.is_none())
            .map(|p| (p.offset(), ALIGN.min(p.size_bytes())))
            .collect();
        formats::write_bmap_with(&raw, &path, &empty_starts)?;
        made.push((file, path));
    }
    if let Some(key) = &ctx.signing {
        ctx.progress.message("writing the update bundle");
        made.extend(update_bundle(ctx, key, &mut disk, squashfs, verity, boot)?);
    }
    let mut listed = Vec::new();
    for (file, path) in &made {
        ctx.progress.message(&format!("checksumming {file}"));
        let sha256 = if *path == raw {
            raw_sha256.clone()
        } else {
            outputs::sha256_file(path)?
        };
        listed.push(OutputFile {
            file: file.clone(),
            bytes: std::fs::metadata(path)?.len(),
            sha256,
        });
    }
    ctx.progress
        .message("writing the software bill of materials");
    let sbom_name = format!("{name}.spdx.json");
    let sbom_path = disk.staged.path(&sbom_name);
    std::fs::write(
        &sbom_path,
        serde_json::to_vec_pretty(&sbom(ctx, parts, &raw_sha256)?)?,
    )?;
    listed.push(OutputFile {
        file: sbom_name,
        bytes: std::fs::metadata(&sbom_path)?.len(),
        sha256: outputs::sha256_file(&sbom_path)?,
    });
    let manifest = Manifest {
        name: name.clone(),
        version: config.image.version.to_string(),
        tool: "appliance".into(),
        tool_version: env!("CARGO_PKG_VERSION").into(),
        config_hash: config.hash.clone(),
        provenance: Provenance {
            tool_commit: env!("APPLIANCE_GIT_COMMIT").into(),
            lock_sha256: parts.packages.lock.as_ref().map(Lock::hash).transpose()?,
            source_date_epoch: config.image.source_date_epoch,
            host_tools: host_tool_versions(),
        },
        arch: config.image.arch.to_string(),
        board: config.image.board.to_string(),
        debian_suite: config.debian.suite.clone(),
        jitsi: config.jitsi.enabled,
        kernel_version: boot.contents.kernel_version.clone(),
        kernel_cmdline: boot.cmdline.clone(),
        image_bytes: std::fs::metadata(&raw)?.len(),
        squashfs_bytes: squashfs.bytes,
        verity: verity.tree.as_ref().map(|t| ManifestVerity {
            root_hash: t.root_hash_hex(),
            salt: t.salt_hex(),
            uuid: t.uuid_string(),
            data_blocks: t.data_blocks,
            hash_bytes: t.hash_bytes,
        }),
        disk_guid: disk.layout.disk_guid.to_string(),
        partitions: outputs::manifest_partitions(&disk.layout),
        packages: boot.contents.packages.clone(),
        outputs: listed.clone(),
    };
    let manifest_name = format!("{name}.manifest.json");
    let manifest_path = disk.staged.path(&manifest_name);
    std::fs::write(&manifest_path, serde_json::to_vec_pretty(&manifest)?)?;
    let mut files = listed;
    files.push(OutputFile {
        file: manifest_name,
        bytes: std::fs::metadata(&manifest_path)?.len(),
        sha256: outputs::sha256_file(&manifest_path)?,
    });
    let sums = outputs::sha256sums(&files);
    let sums_path = disk.staged.path("SHA256SUMS");
    std::fs::write(&sums_path, &sums)?;
    std::fs::write(disk.staged.path(STAMP), key)?;
    let signed = match &ctx.signing {
        Some(key) => {
            let sig = key.sign(NAMESPACE_RELEASE, sums.as_bytes())?;
            std::fs::write(disk.staged.path("SHA256SUMS.sig"), sig)?;
            ", signed"
        }
        None => ", not signed ([signing] key is not set)",
    };
    disk.staged.commit()?;
    if !disk.keep_raw {
        let _ = std::fs::remove_file(&raw);
    }
    let zst_note = files
        .iter()
        .find(|f| f.file.ends_with(".zst"))
        .map(|f| format!(", {} compressed", human_bytes(f.bytes)))
        .unwrap_or_default();
    let note = format!(
        "{} files in {}{zst_note}{signed}",
        files.len() + 1,
        ctx.opts.out_dir.display()
    );
    Ok((Outputs { image, files }, note))
}
