//! `appliance inspect`: what is inside an image, read from the image itself (partition table,
//! boot entry on the ESP) and from its manifest when it lies beside it.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Serialize;

use crate::partitions::{self, TableEntry, SECTOR};
use crate::progress::human_bytes;
use appliance_spec::bootcfg::grub::{GrubEnv, SlotEnv};
use appliance_spec::bootcfg::systemd_boot;
use appliance_spec::esp;
use appliance_spec::layout::Table;

#[derive(Debug, Serialize)]
pub struct PartitionInfo {
    pub number: u32,
    pub label: String,
    pub type_guid: String,
    pub part_guid: String,
    pub offset: u64,
    pub bytes: u64,
}

#[derive(Debug, Serialize)]
pub struct ImageInfo {
    pub image: PathBuf,
    pub file_bytes: u64,
    pub allocated_bytes: u64,
    pub disk_guid: String,
    pub partitions: Vec<PartitionInfo>,
    /// The kernel command line of the boot entry on the ESP.
    pub kernel_cmdline: Option<String>,
    pub root_hash: Option<String>,
    /// From `<name>.manifest.json` beside the image, when present.
    pub manifest: Option<serde_json::Value>,
}

pub fn inspect(image: &Path) -> Result<ImageInfo> {
    let meta =
        std::fs::metadata(image).with_context(|| format!("cannot read {}", image.display()))?;
    let table = partitions::read_table(image)
        .with_context(|| format!("{} has no readable GPT partition table", image.display()))?;
    let kernel_cmdline = Table::new(&table)
        .esp()
        .and_then(|esp| read_boot_entry(image, esp).ok())
        .and_then(|entry| {
            entry
                .lines()
                .find_map(|l| l.strip_prefix("options ").map(str::to_string))
        });
    let root_hash = kernel_cmdline.as_ref().and_then(|c| {
        c.split_whitespace()
            .find_map(|a| a.strip_prefix("roothash=").map(str::to_string))
    });
    let manifest_path = manifest_beside(image);
    let manifest = match std::fs::read(&manifest_path) {
        Ok(bytes) => Some(
            serde_json::from_slice(&bytes)
                .with_context(|| format!("{} is not valid JSON", manifest_path.display()))?,
        ),
        Err(_) => None,
    };
    use std::os::unix::fs::MetadataExt;
    Ok(ImageInfo {
        image: image.to_path_buf(),
        file_bytes: meta.len(),
        allocated_bytes: meta.blocks() * 512,
        disk_guid: partitions::read_disk_guid(image)?.to_string(),
        partitions: table
            .iter()
            .map(|p| PartitionInfo {
                number: p.number,
                label: p.label.clone(),
                type_guid: p.type_guid.to_string(),
                part_guid: p.part_guid.to_string(),
                offset: p.first_lba * SECTOR,
                bytes: (p.last_lba - p.first_lba + 1) * SECTOR,
            })
            .collect(),
        kernel_cmdline,
        root_hash,
        manifest,
    })
}

fn manifest_beside(image: &Path) -> PathBuf {
    let name = image
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let stem = name.strip_suffix(".raw").unwrap_or(&name);
    image.with_file_name(format!("{stem}.manifest.json"))
}

/// Reads the boot entry of the slot that boots next (or GRUB's, the way a BLS entry spells it)
/// from the ESP inside the image.
fn read_boot_entry(image: &Path, esp: &TableEntry) -> Result<String> {
    let file = std::fs::File::open(image)?;
    let start = esp.first_lba * SECTOR;
    let end = (esp.last_lba + 1) * SECTOR;
    let slice = fscommon::StreamSlice::new(file, start, end)?;
    let fs = fatfs::FileSystem::new(fscommon::BufStream::new(slice), fatfs::FsOptions::new())?;
    let root = fs.root_dir();
    let read = |path: &str| -> Result<String> {
        let mut text = String::new();
        root.open_file(path)?.read_to_string(&mut text)?;
        Ok(text)
    };
    if let Ok(dir) = root.open_dir(esp::LOADER_ENTRIES_DIR) {
        let names: Vec<String> = dir
            .iter()
            .filter_map(|e| e.ok())
            .map(|e| e.file_name())
            .collect();
        let entries = systemd_boot::entries(names.iter().map(String::as_str));
        if let Some(next) = systemd_boot::next_boot(&entries) {
            return read(&next.path());
        }
    }
    let mut block = Vec::new();
    root.open_file(esp::GRUBENV)?.read_to_end(&mut block)?;
    let (slot, _) = SlotEnv::from_env(&GrubEnv::parse(&block)?).boot();
    let cfg = read(&esp::slot_grub_cfg(slot))?;
    let line = cfg
        .lines()
        .find(|l| l.trim_start().starts_with("linux"))
        .with_context(|| format!("{} has no linux line", esp::slot_grub_cfg(slot)))?;
    let args: Vec<&str> = line.split_whitespace().skip(2).collect();
    Ok(format!("options {}\n", args.join(" ").replace('\'', "")))
}

/// The human-readable form.
pub fn render(info: &ImageInfo, with_packages: bool) -> String {
    let mut s = String::new();
    s.push_str(&format!(
        "image      {}\nsize       {} ({} allocated)\ndisk GUID  {}\n",
        info.image.display(),
        human_bytes(info.file_bytes),
        human_bytes(info.allocated_bytes),
        info.disk_guid
    ));
    if let Some(m) = &info.manifest {
        let get = |k: &str| m.get(k).and_then(|v| v.as_str()).unwrap_or("?").to_string();
        s.push_str(&format!(
            "built by   {} {}, config {}\nsystem     Debian {} {}, kernel {}, Jitsi packages: {}\n",
            get("tool"),
            get("tool_version"),
            &get("config_hash").chars().take(16).collect::<String>(),
            get("debian_suite"),
            get("arch"),
            get("kernel_version"),
            if m.get("jitsi").and_then(|v| v.as_bool()).unwrap_or(false) {
                "yes"
            } else {
                "no"
            }
        ));
    }
    if let Some(h) = &info.root_hash {
        s.push_str(&format!("root hash  {h}\n"));
    }
    if let Some(c) = &info.kernel_cmdline {
        s.push_str(&format!("cmdline    {c}\n"));
    }
    s.push_str("\n  #  label          offset        size  type\n");
    for p in &info.partitions {
        s.push_str(&format!(
            "  {:<2} {:<12} {:>9} {:>11}  {}\n",
            p.number,
            p.label,
            human_bytes(p.offset),
            human_bytes(p.bytes),
            p.type_guid
        ));
    }
    if let Some(pkgs) = info
        .manifest
        .as_ref()
        .and_then(|m| m.get("packages"))
        .and_then(|p| p.as_array())
    {
        s.push_str(&format!("\n{} packages", pkgs.len()));
        if with_packages {
            s.push('\n');
            for p in pkgs {
                let f = |k: &str| p.get(k).and_then(|v| v.as_str()).unwrap_or("");
                s.push_str(&format!("  {:<40} {}\n", f("name"), f("version")));
            }
        } else {
            s.push_str(" (--packages lists them)\n");
        }
    }
    if let Some(outs) = info
        .manifest
        .as_ref()
        .and_then(|m| m.get("outputs"))
        .and_then(|p| p.as_array())
    {
        s.push_str("\noutputs\n");
        for o in outs {
            let name = o.get("file").and_then(|v| v.as_str()).unwrap_or("");
            let bytes = o.get("bytes").and_then(|v| v.as_u64()).unwrap_or(0);
            s.push_str(&format!("  {:<40} {:>10}\n", name, human_bytes(bytes)));
        }
    }
    s
}
