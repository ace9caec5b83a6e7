//! The build pipeline: configuration → packages → squashfs → dm-verity → boot files → disk image
//! → outputs. Each stage is a module of its own; this one only orders them and times them.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::Serialize;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::admin_program;
use crate::bootloaders::{self, grub_bios, raspberry_pi, systemd_boot, RootSpec};
use crate::config::{Arch, Board, Config, Format};
use crate::filesystems::{esp, squashfs};
use crate::formats;
use crate::outputs::{self, Manifest, ManifestVerity, OutputFile, Staged};
use crate::packages;
use crate::partitions::{self, types, PartitionSpec, ALIGN};
use crate::progress::{human_bytes, Progress, StageTiming};
use crate::rootfs;
use appliance_spec::verity;

pub struct BuildOptions {
    pub out_dir: PathBuf,
    pub build_dir: PathBuf,
    /// Rebuild the root file system even when a cached one matches the configuration.
    pub refresh: bool,
    /// Print nothing but the final JSON summary.
    pub json: bool,
    /// zstd level for `raw.zst`.
    pub zstd_level: i32,
}

#[derive(Debug, Serialize)]
pub struct BuildSummary {
    pub image: PathBuf,
    pub outputs: Vec<OutputFile>,
    pub root_hash: Option<String>,
    pub rootfs_cached: bool,
    pub timings: Vec<StageTiming>,
    pub total_seconds: f64,
}

/// The first-boot seed on the ESP (see docs/first-boot.md).
pub const SEED_FILE: &str = "appliance-setup.toml";

/// Labels of the partitions, in disk order.
pub const LABEL_BIOS: &str = "bios-boot";
pub const LABEL_ESP: &str = "esp";
pub const LABEL_ROOT_A: &str = "root-a";
pub const LABEL_VERITY_A: &str = "verity-a";
/// The second root slot is laid out empty, so that an update can later be written beside the
/// running version.
pub const LABEL_ROOT_B: &str = "root-b";
pub const LABEL_VERITY_B: &str = "verity-b";

/// A UUID derived from the configuration: the same configuration gives the same image.
fn derived_uuid(config: &Config, purpose: &str) -> Uuid {
    let digest = Sha256::digest(format!("{}:{purpose}", config.hash).as_bytes());
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_random_bytes(bytes).into_uuid()
}

fn derived_bytes<const N: usize>(config: &Config, purpose: &str) -> [u8; N] {
    let digest = Sha256::digest(format!("{}:{purpose}", config.hash).as_bytes());
    let mut out = [0u8; N];
    out.copy_from_slice(&digest[..N]);
    out
}

fn round_up(n: u64, to: u64) -> u64 {
    n.div_ceil(to) * to
}

pub fn build(config: &Config, opts: &BuildOptions) -> Result<BuildSummary> {
    let name = &config.image.name;
    let work = opts.build_dir.join(format!("{name}-{}", config.image.arch));
    std::fs::create_dir_all(&work)
        .with_context(|| format!("cannot create the build directory {}", work.display()))?;
    let cache_dir = config.resolve(&config.packages.cache_dir);
    let deb_cache = cache_dir.join(format!(
        "debs/{}-{}",
        config.debian.suite,
        config.image.arch.debian()
    ));
    std::fs::create_dir_all(&deb_cache)?;
    let mut progress = Progress::new(opts.json, 7);
    let result = run_stages(config, opts, &work, &cache_dir, &deb_cache, &mut progress);
    if result.is_err() {
        progress.abort();
    }
    result
}

fn run_stages(
    config: &Config,
    opts: &BuildOptions,
    work: &Path,
    cache_dir: &Path,
    deb_cache: &Path,
    progress: &mut Progress,
) -> Result<BuildSummary> {
    // 1. Signing keys, checked against the pinned fingerprints before anything is downloaded.
    progress.begin("keys");
    let keys_dir = work.join("keys");
    std::fs::create_dir_all(&keys_dir)?;
    let mut keyrings = Vec::new();
    for repo in config.active_repositories() {
        progress.message(&format!("checking the key of {}", repo.name));
        let dest = std::fs::canonicalize(&keys_dir)?.join(format!("{}.gpg", repo.name));
        packages::verified_keyring(config, repo, &dest)?;
        keyrings.push((repo.name.clone(), dest));
    }
    progress.end(&format!("{} repository key(s) verified", keyrings.len()));

    // 2. Packages, overlays and hooks → the root tarball (cached by everything that shapes it).
    progress.begin("packages");
    let hooks_dir = work.join("hooks");
    let overlay_dir = work.join("overlay");
    for d in [&hooks_dir, &overlay_dir] {
        if d.exists() {
            std::fs::remove_dir_all(d)?;
        }
        std::fs::create_dir_all(d)?;
    }
    let hooks_dir = std::fs::canonicalize(&hooks_dir)?;
    let overlay_dir = std::fs::canonicalize(&overlay_dir)?;
    let features = crate::features::load(config)?;
    rootfs::render_feature_files(config, &features, &overlay_dir)?;
    progress.message("compiling the in-image program appliance-admin");
    admin_program::install(
        config.image.arch,
        &overlay_dir,
        &cache_dir.join("cargo-target"),
        |line| progress.message(line),
    )?;
    let hook_paths = rootfs::write_hook_files(config, &features, &hooks_dir)?;
    let deb_cache = std::fs::canonicalize(deb_cache)?;
    let plan = packages::plan(
        config,
        &features,
        &keyrings,
        &hook_paths,
        &overlay_dir,
        &deb_cache,
    )?;
    let key = rootfs_cache_key(config, &plan.fingerprint_input, &[&overlay_dir, &hooks_dir])?;
    let rootfs_cache = cache_dir.join("rootfs");
    std::fs::create_dir_all(&rootfs_cache)?;
    let cache_name = format!("{}-{}", config.image.name, config.image.arch);
    let tar = rootfs_cache.join(format!("{cache_name}-{}.tar", &key[..16]));
    let cached = tar.exists() && !opts.refresh;
    if cached {
        progress.end(&format!("root file system from cache ({})", tar.display()));
    } else {
        let partial = tar.with_extension("tar.partial");
        let log = work.join("mmdebstrap.log");
        let _ = std::fs::remove_file(&log);
        packages::run_mmdebstrap(&plan, &partial, &log, |line| progress.message(line))?;
        // Older root tarballs of this appliance are of no further use.
        remove_stale_tarballs(&rootfs_cache, &cache_name)?;
        std::fs::rename(&partial, &tar)?;
        let n = std::fs::read_dir(&deb_cache)
            .map(|d| d.count())
            .unwrap_or(0);
        progress.end(&format!(
            "{} root tarball; {n} packages in the host cache",
            human_bytes(std::fs::metadata(&tar)?.len())
        ));
    }

    // 3. The read-only root.
    progress.begin("squashfs");
    let sqfs = work.join("root.squashfs");
    squashfs::from_tar(
        &tar,
        &sqfs,
        &config.root.compression,
        config.image.source_date_epoch,
    )?;
    let sqfs_len = verity::pad_to_block(&sqfs)?;
    if sqfs_len > config.root.slot_size.0 {
        bail!(
            "the root file system ({}) does not fit a root slot ([root] slot_size = {}); raise slot_size or install fewer packages",
            human_bytes(sqfs_len),
            config.root.slot_size
        );
    }
    progress.end(&format!(
        "{} squashfs ({})",
        human_bytes(sqfs_len),
        config.root.compression
    ));

    // 4. dm-verity.
    progress.begin("verity");
    let hash_file = work.join("root.verity");
    let tree = if config.root.verity {
        let salt: [u8; 32] = derived_bytes(config, "verity-salt");
        let vuuid: [u8; 16] = *derived_uuid(config, "verity-superblock").as_bytes();
        Some(verity::build_hash_tree(&sqfs, &hash_file, &salt, &vuuid)?)
    } else {
        None
    };
    let root_spec = match &tree {
        Some(t) => RootSpec::Verity {
            root_hash: t.root_hash_hex(),
            data_partuuid: t.data_partition_uuid(),
            hash_partuuid: t.hash_partition_uuid(),
        },
        None => RootSpec::Plain {
            partuuid: derived_uuid(config, LABEL_ROOT_A),
        },
    };
    progress.end(&match &tree {
        Some(t) => format!("root hash {}", t.root_hash_hex()),
        None => "disabled ([root] verity = false)".into(),
    });

    // 5. Boot files: kernel and initrd on the ESP, systemd-boot for UEFI, GRUB for BIOS.
    progress.begin("boot");
    let boot_dir = work.join("boot");
    let contents = rootfs::extract_boot_files(config, &tar, &boot_dir)?;
    let cmdline = bootloaders::kernel_cmdline(config, &root_spec);
    let esp_volume_id = u32::from_le_bytes(derived_bytes(config, "esp-volume-id"));
    let title = format!("{} ({})", config.image.name, contents.kernel_version);
    let mut esp_files = vec![
        esp::EspFile {
            path: "appliance-a/vmlinuz".into(),
            source: esp::EspSource::File(contents.kernel.clone()),
        },
        esp::EspFile {
            path: "appliance-a/initrd.img".into(),
            source: esp::EspSource::File(contents.initrd.clone()),
        },
    ];
    if config.boot.uefi {
        let Some(sd_boot) = &contents.systemd_boot else {
            bail!("UEFI boot needs systemd-boot in the image: add \"systemd-boot-efi\" to [packages] include");
        };
        esp_files.push(esp::EspFile {
            path: format!("EFI/BOOT/{}", config.image.arch.efi_boot_file()),
            source: esp::EspSource::File(sd_boot.clone()),
        });
        esp_files.push(esp::EspFile {
            path: "loader/loader.conf".into(),
            source: esp::EspSource::Bytes(
                systemd_boot::loader_conf("appliance-a.conf", config.boot.timeout).into_bytes(),
            ),
        });
        esp_files.push(esp::EspFile {
            path: "loader/entries/appliance-a.conf".into(),
            source: esp::EspSource::Bytes(
                systemd_boot::entry(
                    &title,
                    &contents.kernel_version,
                    "/appliance-a/vmlinuz",
                    "/appliance-a/initrd.img",
                    &cmdline,
                )
                .into_bytes(),
            ),
        });
    }
    if config.bios() {
        esp_files.push(esp::EspFile {
            path: "grub/grub.cfg".into(),
            source: esp::EspSource::Bytes(
                grub_bios::grub_cfg(
                    &title,
                    "/appliance-a/vmlinuz",
                    "/appliance-a/initrd.img",
                    &cmdline,
                    config.boot.timeout,
                )
                .into_bytes(),
            ),
        });
    }
    if config.image.board == Board::RaspberryPi {
        if contents.raspberry_pi_files.is_empty() {
            bail!("board = \"raspberry-pi\" but the image has no Pi firmware (package raspi-firmware)");
        }
        for (name, path) in &contents.raspberry_pi_files {
            esp_files.push(esp::EspFile {
                path: name.clone(),
                source: esp::EspSource::File(path.clone()),
            });
        }
        // The Pi firmware loads the kernel and initrd from the top of the FAT partition.
        esp_files.push(esp::EspFile {
            path: raspberry_pi::KERNEL.into(),
            source: esp::EspSource::File(contents.kernel.clone()),
        });
        esp_files.push(esp::EspFile {
            path: raspberry_pi::INITRD.into(),
            source: esp::EspSource::File(contents.initrd.clone()),
        });
        esp_files.push(esp::EspFile {
            path: "config.txt".into(),
            source: esp::EspSource::Bytes(raspberry_pi::config_txt().into_bytes()),
        });
        esp_files.push(esp::EspFile {
            path: "cmdline.txt".into(),
            source: esp::EspSource::Bytes(
                raspberry_pi::cmdline_txt(&bootloaders::root_cmdline(config, &root_spec))
                    .into_bytes(),
            ),
        });
    }
    // The first-boot answers given at build time; the machine reads and deletes the file.
    if let Some(seed) = config.firstboot_seed()? {
        esp_files.push(esp::EspFile {
            path: SEED_FILE.into(),
            source: esp::EspSource::Bytes(seed.into_bytes()),
        });
    }
    let esp_img = work.join("esp.img");
    esp::write_esp(
        &esp_img,
        config.boot.esp_size.0,
        esp_volume_id,
        "ESP",
        &esp_files,
    )?;
    esp::fsck(&esp_img).context("the ESP written by this build is not clean FAT")?;

    // Partition layout: BIOS boot, ESP, root A + verity A, root B + verity B (empty), data.
    let (root_type, verity_type) = match config.image.arch {
        Arch::X86_64 => (types::ROOT_X86_64, types::ROOT_VERITY_X86_64),
        Arch::Arm64 => (types::ROOT_ARM64, types::ROOT_VERITY_ARM64),
    };
    let slot = config.root.slot_size.0;
    let hash_slot = round_up(verity::hash_device_size(slot), ALIGN);
    let mut specs = Vec::new();
    let bios_size = ALIGN;
    if config.bios() {
        specs.push(PartitionSpec {
            label: LABEL_BIOS.into(),
            type_guid: types::BIOS_BOOT,
            part_guid: derived_uuid(config, LABEL_BIOS),
            size: bios_size,
            flags: 0,
            content: None, // core.img is added below, once its place is known
        });
    }
    specs.push(PartitionSpec {
        label: LABEL_ESP.into(),
        type_guid: types::ESP,
        part_guid: derived_uuid(config, LABEL_ESP),
        size: config.boot.esp_size.0,
        flags: 0,
        content: Some(esp_img.clone()),
    });
    let (root_guid, verity_guid) = match &tree {
        Some(t) => (t.data_partition_uuid(), t.hash_partition_uuid()),
        None => (
            derived_uuid(config, LABEL_ROOT_A),
            derived_uuid(config, LABEL_VERITY_A),
        ),
    };
    specs.push(PartitionSpec {
        label: LABEL_ROOT_A.into(),
        type_guid: root_type,
        part_guid: root_guid,
        size: slot,
        flags: partitions::FLAG_READ_ONLY,
        content: Some(sqfs.clone()),
    });
    specs.push(PartitionSpec {
        label: LABEL_VERITY_A.into(),
        type_guid: verity_type,
        part_guid: verity_guid,
        size: hash_slot,
        flags: partitions::FLAG_READ_ONLY,
        content: tree.as_ref().map(|_| hash_file.clone()),
    });
    for (purpose, type_guid, size) in [
        (LABEL_ROOT_B, root_type, slot),
        (LABEL_VERITY_B, verity_type, hash_slot),
    ] {
        specs.push(PartitionSpec {
            label: purpose.into(),
            type_guid,
            part_guid: derived_uuid(config, purpose),
            size,
            flags: partitions::FLAG_NO_AUTO,
            content: None,
        });
    }
    specs.push(PartitionSpec {
        label: config.data.label.clone(),
        type_guid: types::LINUX_GENERIC,
        part_guid: derived_uuid(config, "data"),
        size: config.data.size.0,
        flags: 0,
        content: None,
    });
    let mut layout = partitions::plan(derived_uuid(config, "disk"), specs)?;
    let mut mbr_code = None;
    if config.bios() {
        let bios = layout
            .by_label(LABEL_BIOS)
            .context("the BIOS boot partition is missing from the layout")?;
        let start = bios.first_lba;
        let grub_dir = work.join("grub");
        std::fs::create_dir_all(&grub_dir)?;
        let grub = grub_bios::build(
            Path::new(grub_bios::DEFAULT_MODULES_DIR),
            &esp::volume_uuid_string(esp_volume_id),
            start,
            bios.size_bytes(),
            &grub_dir,
        )?;
        let core = work.join("grub-core.img");
        std::fs::write(&core, &grub.core_img)?;
        if let Some(p) = layout
            .partitions
            .iter_mut()
            .find(|p| p.spec.label == LABEL_BIOS)
        {
            p.spec.content = Some(core);
        }
        mbr_code = Some(grub.mbr_boot_code);
    }
    progress.end(&format!(
        "kernel {}; {}{}",
        contents.kernel_version,
        if config.boot.uefi {
            "UEFI systemd-boot"
        } else {
            ""
        },
        if config.bios() { ", BIOS GRUB" } else { "" }
    ));

    // 6. The disk image.
    progress.begin("disk");
    let mut staged = Staged::new(&opts.out_dir)?;
    let raw_name = format!("{}.raw", config.image.name);
    let keep_raw = config.image.formats.contains(&Format::Raw);
    // Without "raw" among the formats the raw image is only an intermediate file.
    let raw = if keep_raw {
        staged.path(&raw_name)
    } else {
        work.join(&raw_name)
    };
    partitions::write_disk(&raw, &layout, mbr_code.as_ref())?;
    let image_bytes = std::fs::metadata(&raw)?.len();
    progress.end(&format!(
        "{} raw, {} partitions",
        human_bytes(image_bytes),
        layout.partitions.len()
    ));

    // 7. Outputs: compressed copy, checksums, manifest; then everything is renamed into place.
    progress.begin("outputs");
    let mut out_files = Vec::new();
    if config.image.formats.contains(&Format::RawZst) {
        let name = format!("{}.{}", config.image.name, Format::RawZst.extension());
        let zst = staged.path(&name);
        progress.message("compressing with zstd");
        compress_zstd_for(&raw, &zst, opts.zstd_level)?;
        out_files.push((name, zst));
    }
    if keep_raw {
        out_files.insert(0, (raw_name.clone(), raw.clone()));
    }
    for (format, vm) in [
        (Format::Qcow2, formats::VmFormat::Qcow2),
        (Format::Vmdk, formats::VmFormat::Vmdk),
        (Format::Vhd, formats::VmFormat::Vhd),
    ] {
        if config.image.formats.contains(&format) {
            let name = format!("{}.{}", config.image.name, format.extension());
            let path = staged.path(&name);
            progress.message(&format!("converting to {}", format.extension()));
            formats::convert(&raw, vm, &path)?;
            progress.message(&format!("checking {name}"));
            formats::verify(&raw, vm, &path)?;
            out_files.push((name, path));
        }
    }
    if config.image.formats.contains(&Format::Bmap) {
        let name = format!("{}.bmap", config.image.name);
        let path = staged.path(&name);
        progress.message("writing the block map");
        // Partitions that are empty in the image get their first MiB written anyway, so
        // flashing over a used disk cannot revive an old file system (and its secrets).
        let empty_starts: Vec<(u64, u64)> = layout
            .partitions
            .iter()
            .filter(|p| p.spec.content.is_none())
            .map(|p| (p.offset(), ALIGN.min(p.size_bytes())))
            .collect();
        formats::write_bmap_with(&raw, &path, &empty_starts)?;
        out_files.push((name, path));
    }
    let mut listed = Vec::new();
    for (name, path) in &out_files {
        progress.message(&format!("checksumming {name}"));
        listed.push(OutputFile {
            file: name.clone(),
            bytes: std::fs::metadata(path)?.len(),
            sha256: outputs::sha256_file(path)?,
        });
    }
    let manifest = Manifest {
        name: config.image.name.clone(),
        tool: "appliance".into(),
        tool_version: env!("CARGO_PKG_VERSION").into(),
        config_hash: config.hash.clone(),
        arch: config.image.arch.to_string(),
        board: match config.image.board {
            Board::Generic => "generic".into(),
            Board::RaspberryPi => "raspberry-pi".into(),
        },
        debian_suite: config.debian.suite.clone(),
        jitsi: config.jitsi.enabled,
        kernel_version: contents.kernel_version.clone(),
        kernel_cmdline: cmdline.clone(),
        image_bytes,
        squashfs_bytes: sqfs_len,
        verity: tree.as_ref().map(|t| ManifestVerity {
            root_hash: t.root_hash_hex(),
            salt: t.salt_hex(),
            uuid: t.uuid_string(),
            data_blocks: t.data_blocks,
            hash_bytes: t.hash_bytes,
        }),
        disk_guid: layout.disk_guid.to_string(),
        partitions: outputs::manifest_partitions(&layout),
        packages: contents.packages.clone(),
        outputs: listed.clone(),
    };
    let manifest_name = format!("{}.manifest.json", config.image.name);
    let manifest_path = staged.path(&manifest_name);
    std::fs::write(&manifest_path, serde_json::to_vec_pretty(&manifest)?)?;
    let mut summed = listed.clone();
    summed.push(OutputFile {
        file: manifest_name,
        bytes: std::fs::metadata(&manifest_path)?.len(),
        sha256: outputs::sha256_file(&manifest_path)?,
    });
    let sums_path = staged.path("SHA256SUMS");
    std::fs::write(&sums_path, outputs::sha256sums(&summed))?;
    staged.commit()?;
    if !keep_raw {
        let _ = std::fs::remove_file(&raw);
    }
    let zst_note = summed
        .iter()
        .find(|f| f.file.ends_with(".zst"))
        .map(|f| format!(", {} compressed", human_bytes(f.bytes)))
        .unwrap_or_default();
    progress.end(&format!(
        "{} files in {}{zst_note}",
        summed.len() + 1,
        opts.out_dir.display()
    ));

    Ok(BuildSummary {
        image: opts.out_dir.join(raw_name),
        outputs: summed,
        root_hash: tree.as_ref().map(|t| t.root_hash_hex()),
        rootfs_cached: cached,
        total_seconds: progress.total_seconds(),
        timings: progress.timings.clone(),
    })
}

fn compress_zstd_for(raw: &Path, zst: &Path, level: i32) -> Result<u64> {
    outputs::compress_zstd(raw, zst, level)
        .with_context(|| format!("compressing {}", raw.display()))
}

/// Hash of everything that determines the root tarball: mmdebstrap's arguments and the content
/// of the rendered overlays and hook files.
fn rootfs_cache_key(config: &Config, plan_input: &str, dirs: &[&Path]) -> Result<String> {
    let mut h = Sha256::new();
    h.update(env!("CARGO_PKG_VERSION").as_bytes());
    h.update(config.image.source_date_epoch.to_le_bytes());
    h.update(plan_input.as_bytes());
    for dir in dirs {
        hash_tree(dir, dir, &mut h)?;
    }
    Ok(hex::encode(h.finalize()))
}

fn hash_tree(root: &Path, dir: &Path, h: &mut Sha256) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mut entries: Vec<_> = std::fs::read_dir(dir)?.collect::<std::io::Result<_>>()?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let p = e.path();
        let meta = std::fs::symlink_metadata(&p)?;
        h.update(
            p.strip_prefix(root)
                .unwrap_or(&p)
                .to_string_lossy()
                .as_bytes(),
        );
        h.update(meta.permissions().mode().to_le_bytes());
        if meta.file_type().is_symlink() {
            h.update(std::fs::read_link(&p)?.to_string_lossy().as_bytes());
        } else if meta.is_dir() {
            hash_tree(root, &p, h)?;
        } else {
            h.update(std::fs::read(&p)?);
        }
    }
    Ok(())
}

/// Removes this appliance's older root tarballs (`<name>-<16 hex digits>.tar`), and only those:
/// another appliance whose name starts the same way keeps its own.
fn remove_stale_tarballs(dir: &Path, name: &str) -> Result<()> {
    for e in std::fs::read_dir(dir)?.flatten() {
        let file = e.file_name().to_string_lossy().into_owned();
        let key = file
            .strip_prefix(name)
            .and_then(|r| r.strip_prefix('-'))
            .and_then(|r| r.strip_suffix(".tar"));
        if key.is_some_and(|k| k.len() == 16 && k.chars().all(|c| c.is_ascii_hexdigit())) {
            let _ = std::fs::remove_file(e.path());
        }
    }
    Ok(())
}
