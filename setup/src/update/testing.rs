//! Test fixtures: a machine booted from one slot (sysfs, GPT, device files standing in for
//! the partitions, a mounted ESP as a directory), update bundles signed with a fixed test key,
//! and a runner that answers like a healthy machine.

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use appliance_spec::bootcfg::grub::{self, SlotEnv};
use appliance_spec::bootcfg::raspberry_pi::config_txt;
use appliance_spec::bootcfg::systemd_boot::{self, EntryName};
use appliance_spec::bootcfg::SlotBoot;
use appliance_spec::bundle::{self, BundleFile, BundleManifest};
use appliance_spec::cmdline::{self, RootSpec};
use appliance_spec::esp::{self, raspberry_pi::CONFIG_TXT};
use appliance_spec::release::{Release, UpdatePolicy, RELEASE_FILE, UPDATE_KEYS_FILE};
use appliance_spec::signature::NAMESPACE_UPDATE;
use appliance_spec::{Arch, Board, Slot};
use sha2::{Digest, Sha256};

use super::slots::tests::fake_disk;
use crate::paths::Paths;
use crate::runner::{Cmd, Output, RecordingRunner};

/// Size of each stand-in partition.
pub const PART_BYTES: u64 = 1 << 20;

fn key(seed: u8) -> ssh_key::PrivateKey {
    ssh_key::PrivateKey::from(ssh_key::private::Ed25519Keypair::from_seed(&[seed; 32]))
}

/// The public key the test machine trusts.
pub fn trusted_public() -> String {
    key(7).public_key().to_openssh().unwrap()
}

/// An SSHSIG signature by the trusted test key (or another when `seed` differs).
pub fn sign(seed: u8, message: &[u8]) -> Vec<u8> {
    key(seed)
        .sign(NAMESPACE_UPDATE, ssh_key::HashAlg::Sha512, message)
        .unwrap()
        .to_pem(ssh_key::LineEnding::LF)
        .unwrap()
        .into_bytes()
}

/// A bundle to make.
pub struct BundleSpec {
    pub version: &'static str,
    pub name: &'static str,
    pub arch: Arch,
    pub data_schema: u32,
    /// Which key signs it.
    pub signer: u8,
    /// Blocks of root file system (4 KiB each).
    pub root_blocks: usize,
    /// Seed of the root's bytes (different roots, different root hashes).
    pub content: u8,
}

impl BundleSpec {
    pub fn new(version: &'static str) -> BundleSpec {
        BundleSpec {
            version,
            name: "meet",
            arch: Arch::X86_64,
            data_schema: 1,
            signer: 7,
            root_blocks: 16,
            content: 1,
        }
    }
}

fn sha(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Writes a signed bundle into `dir`; returns its path and the root hash.
pub fn make_bundle(dir: &Path, spec: &BundleSpec) -> (PathBuf, String) {
    let work = tempfile::tempdir().unwrap();
    let root: Vec<u8> = (0..spec.root_blocks * 4096)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(spec.content))
        .collect();
    let root_file = work.path().join("root");
    std::fs::write(&root_file, &root).unwrap();
    let hash_file = work.path().join("hash");
    let tree = appliance_spec::verity::build_hash_tree(&root_file, &hash_file, &[3; 32], &[4; 16])
        .unwrap();
    let verity = std::fs::read(&hash_file).unwrap();
    let kernel = format!("kernel {}", spec.version).into_bytes();
    let initrd = format!("initrd {}", spec.version).into_bytes();
    let payload: Vec<(&str, Vec<u8>)> = vec![
        (bundle::ROOT, root),
        (bundle::VERITY, verity),
        (bundle::KERNEL, kernel),
        (bundle::INITRD, initrd),
    ];
    let manifest = BundleManifest {
        format: bundle::FORMAT,
        name: spec.name.into(),
        version: spec.version.parse().unwrap(),
        min_version: None,
        arch: spec.arch,
        board: Board::Generic,
        data_schema: spec.data_schema,
        root_hash: tree.root_hash_hex(),
        kernel_version: "6.1.0-test".into(),
        cmdline: cmdline::system_args(&[]),
        files: payload
            .iter()
            .map(|(n, b)| BundleFile {
                name: n.to_string(),
                bytes: b.len() as u64,
                sha256: sha(b),
            })
            .collect(),
    };
    let json = serde_json::to_vec_pretty(&manifest).unwrap();
    let sig = sign(spec.signer, &json);
    let path = dir.join(format!("{}-{}.update", spec.name, spec.version));
    let mut tar = tar::Builder::new(std::fs::File::create(&path).unwrap());
    let mut add = |name: &str, bytes: &[u8]| {
        let mut h = tar::Header::new_ustar();
        h.set_size(bytes.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        tar.append_data(&mut h, name, bytes).unwrap();
    };
    add(bundle::MANIFEST, &json);
    add(bundle::SIGNATURE, &sig);
    for (n, b) in &payload {
        add(n, b);
    }
    tar.into_inner().unwrap();
    (path, tree.root_hash_hex())
}

/// A slot's boot files for the bootconfig tests.
pub fn sample_boot(slot: Slot) -> SlotBoot {
    SlotBoot {
        slot,
        image: "meet 2.0.0".into(),
        kernel_version: "6.1.0-test".into(),
        arch: Arch::X86_64,
        root: RootSpec::Verity {
            root_hash: "ab".repeat(32),
            data_partuuid: uuid::Uuid::from_u128(1),
            hash_partuuid: uuid::Uuid::from_u128(2),
        },
        system_args: cmdline::system_args(&[]),
    }
}

/// The ESP the build writes for every loader (slot A, generation 1), at `dir`.
pub fn first_image_esp(dir: &Path) {
    let w = |p: &str, b: &[u8]| {
        let f = dir.join(p);
        std::fs::create_dir_all(f.parent().unwrap()).unwrap();
        std::fs::write(f, b).unwrap();
    };
    let a = SlotBoot {
        image: "meet 1.0.0".into(),
        ..sample_boot(Slot::A)
    };
    w(esp::LOADER_CONF, systemd_boot::loader_conf(0).as_bytes());
    w(
        &EntryName::committed(1, Slot::A).path(),
        systemd_boot::entry(&a).as_bytes(),
    );
    w(esp::GRUB_CFG, grub::main_cfg("meet", 0).as_bytes());
    w(esp::GRUBENV, &SlotEnv::first_image().to_block().unwrap());
    w(&esp::slot_grub_cfg(Slot::A), grub::slot_cfg(&a).as_bytes());
    w(CONFIG_TXT, config_txt(Slot::A).as_bytes());
    w(&esp::kernel(Slot::A), b"kernel 1.0.0");
    w(&esp::initrd(Slot::A), b"initrd 1.0.0");
}

/// A machine running version `version` from `slot` of disk vda, with UEFI firmware, set up
/// when `setup_done`.
pub fn machine(root: &Path, slot: Slot, version: &str) -> Paths {
    let paths = crate::steps::tests::machine(root);
    fake_disk(&paths, slot, PART_BYTES);
    let release = Release {
        name: "meet".into(),
        version: version.parse().unwrap(),
        arch: Arch::X86_64,
        board: Board::Generic,
        data_schema: 1,
        updates: UpdatePolicy::default(),
    };
    let file = paths.at(RELEASE_FILE);
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    std::fs::write(&file, toml::to_string(&release).unwrap()).unwrap();
    std::fs::write(paths.at(UPDATE_KEYS_FILE), trusted_public() + "\n").unwrap();
    std::fs::create_dir_all(paths.at("/sys/firmware/efi")).unwrap();
    first_image_esp(&paths.esp_mount());
    // A PC: no Raspberry Pi files.
    std::fs::remove_file(paths.esp_mount().join(CONFIG_TXT)).unwrap();
    paths
}

/// Makes the running version `version` (as after a restart into another slot).
pub fn set_version(paths: &Paths, version: &str) {
    let file = paths.at(RELEASE_FILE);
    let mut release: Release = toml::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    release.version = version.parse().unwrap();
    std::fs::write(&file, toml::to_string(&release).unwrap()).unwrap();
}

/// What systemd-boot does before it boots an entry on trial: it spends one try.
pub fn firmware_spends_try(paths: &Paths) {
    let dir = paths.esp_mount().join(esp::LOADER_ENTRIES_DIR);
    for e in std::fs::read_dir(&dir).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(entry) = EntryName::parse(&name) {
            if let Some(c) = entry.counter.filter(|c| c.left > 0) {
                let spent = EntryName {
                    counter: Some(systemd_boot::Counter {
                        left: c.left - 1,
                        done: Some(c.done.unwrap_or(0) + 1),
                    }),
                    ..entry
                };
                std::fs::rename(e.path(), dir.join(spent.file_name())).unwrap();
            }
        }
    }
}

/// What GRUB's grub.cfg does before it boots: returns the slot it boots.
pub fn grub_boots(paths: &Paths) -> Slot {
    let file = paths.esp_mount().join(esp::GRUBENV);
    let env = grub::GrubEnv::parse(&std::fs::read(&file).unwrap()).unwrap();
    let (slot, after) = SlotEnv::from_env(&env).boot();
    std::fs::write(&file, after.to_block().unwrap()).unwrap();
    slot
}

/// GRUB's slot choice on the ESP.
pub fn grub_env(paths: &Paths) -> SlotEnv {
    let block = std::fs::read(paths.esp_mount().join(esp::GRUBENV)).unwrap();
    SlotEnv::from_env(&grub::GrubEnv::parse(&block).unwrap())
}

/// The names in the ESP's loader/entries.
pub fn entry_names(paths: &Paths) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(paths.esp_mount().join(esp::LOADER_ENTRIES_DIR))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// What the fake machine answers.
#[derive(Clone)]
pub struct Answers {
    pub failed_units: String,
    pub verity: String,
    pub inactive: Vec<String>,
}

impl Default for Answers {
    fn default() -> Answers {
        Answers {
            failed_units: String::new(),
            verity: "0 2048 verity V\n".into(),
            inactive: Vec::new(),
        }
    }
}

/// A runner that answers like a machine in the state of `answers` (shared, so a test can
/// change it between runs); `mount` and `umount` succeed and do nothing (the ESP is a plain
/// directory).
pub fn runner(answers: Rc<RefCell<Answers>>) -> RecordingRunner {
    RecordingRunner::with_handler(move |cmd: &Cmd| {
        let a = answers.borrow();
        let ok = |stdout: &str| {
            Ok(Output {
                success: true,
                stdout: stdout.to_string(),
                stderr: String::new(),
            })
        };
        match (cmd.program.as_str(), cmd.args.first().map(String::as_str)) {
            ("systemctl", Some("list-units")) => ok(&a.failed_units),
            ("dmsetup", _) => ok(&a.verity),
            ("systemctl", Some("is-active")) => {
                let unit = cmd.args.get(1).cloned().unwrap_or_default();
                if a.inactive.contains(&unit) {
                    Ok(Output {
                        success: false,
                        stdout: "failed\n".into(),
                        stderr: String::new(),
                    })
                } else {
                    ok("active\n")
                }
            }
            _ => ok(""),
        }
    })
}

/// Every file under `dir`, by path and content, for "nothing changed" checks.
pub fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(list) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in list.flatten() {
            let p = e.path();
            let meta = std::fs::symlink_metadata(&p).unwrap();
            if meta.is_dir() {
                stack.push(p);
            } else if meta.is_file() {
                out.push((p.clone(), std::fs::read(&p).unwrap()));
            }
        }
    }
    out.sort();
    out
}
