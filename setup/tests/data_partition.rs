//! The boot scripts that choose the root's disk and prepare the data partition
//! (overlays/boot/files/usr/lib/appliance/{root-disk,prepare-data.j2}, and the initrd's /init,
//! overlays/boot/install/usr/lib/appliance/initrd-init), run by /bin/sh against a
//! made-up /proc, /dev and /sys (APPLIANCE_SYSROOT) with stand-ins for the disk tools that
//! record their calls. The machine has its root on sda and a second disk sdb with the same
//! image.

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

const MIB: usize = 1 << 20;

fn overlay(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../overlays/boot/files")
        .join(rel)
}

/// Render a `.j2` overlay file as the build does (data.label = "data").
fn render(rel: &str) -> String {
    let text = fs::read_to_string(overlay(rel)).unwrap();
    let mut env = minijinja::Environment::new();
    env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
    env.render_str(
        &text,
        minijinja::context! { data => minijinja::context! { label => "data" }, tool_version => "test" },
    )
    .unwrap()
}

struct Machine {
    _dir: tempfile::TempDir,
    root: PathBuf,
    bin: PathBuf,
    lib: PathBuf,
    log: PathBuf,
}

impl Machine {
    /// Root (dm-0) on sda3 and sda4; data partitions sda7 and sdb7 (named "data" in the GPT, as
    /// the kernel's uevent says), 2 MiB each, all zeros.
    fn new() -> Machine {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        let bin = dir.path().join("bin");
        let lib = dir.path().join("lib");
        let log = dir.path().join("log");
        for d in [&bin, &lib] {
            fs::create_dir_all(d).unwrap();
        }
        let sys = root.join("sys");
        fs::create_dir_all(sys.join("class/block")).unwrap();
        fs::create_dir_all(sys.join("block/dm-0/slaves")).unwrap();
        fs::create_dir_all(sys.join("block/dm-0/dm")).unwrap();
        fs::write(sys.join("block/dm-0/dm/name"), "root\n").unwrap();
        fs::create_dir_all(root.join("dev/mapper")).unwrap();
        fs::create_dir_all(root.join("dev/disk/appliance")).unwrap();
        fs::write(root.join("dev/dm-0"), "").unwrap();
        symlink("../dm-0", root.join("dev/mapper/root")).unwrap();
        for (disk, parts) in [("sda", &[3, 4, 7][..]), ("sdb", &[3, 4, 7][..])] {
            fs::write(root.join("dev").join(disk), "").unwrap();
            for n in parts {
                let name = format!("{disk}{n}");
                let d = sys.join(format!("devices/pci0/host0/block/{disk}/{name}"));
                fs::create_dir_all(&d).unwrap();
                fs::write(d.join("partition"), format!("{n}\n")).unwrap();
                let partname = match n {
                    3 => "root-a",
                    4 => "root-a-verity",
                    _ => "data",
                };
                fs::write(
                    d.join("uevent"),
                    format!("MAJOR=8\nDEVNAME={name}\nDEVTYPE=partition\nPARTN={n}\nPARTNAME={partname}\n"),
                )
                .unwrap();
                symlink(
                    format!("../../devices/pci0/host0/block/{disk}/{name}"),
                    sys.join("class/block").join(&name),
                )
                .unwrap();
                fs::write(root.join("dev").join(&name), vec![0u8; 2 * MIB]).unwrap();
            }
        }
        for disk in ["sda", "sdb"] {
            symlink(
                format!("../../devices/pci0/host0/block/{disk}"),
                sys.join("class/block").join(disk),
            )
            .unwrap();
        }
        for slave in ["sda3", "sda4"] {
            fs::write(sys.join("block/dm-0/slaves").join(slave), "").unwrap();
        }
        // The disk tools: record the call; blkid answers $FAKE_FSTYPE.
        for tool in ["sfdisk", "partx", "mkfs.ext4", "udevadm"] {
            stub(
                &bin.join(tool),
                "echo \"${0##*/} $*\" >> \"$LOG\"\ncat > /dev/null 2>&1 < /dev/null\n",
            );
        }
        // e2fsck exits with $FAKE_FSCK (0: clean).
        stub(
            &bin.join("e2fsck"),
            "echo \"e2fsck $*\" >> \"$LOG\"\nfor last; do :; done\necho \"${last##*/}: checked\"\nexit \"${FAKE_FSCK:-0}\"\n",
        );
        stub(
            &bin.join("blkid"),
            "echo \"blkid $*\" >> \"$LOG\"\n[ -n \"${FAKE_FSTYPE:-}\" ] || exit 2\necho \"$FAKE_FSTYPE\"\n",
        );
        fs::write(
            lib.join("prepare-data"),
            render("usr/lib/appliance/prepare-data.j2"),
        )
        .unwrap();
        fs::copy(
            overlay("usr/lib/appliance/root-disk"),
            lib.join("root-disk"),
        )
        .unwrap();
        for f in ["prepare-data", "root-disk"] {
            fs::set_permissions(lib.join(f), fs::Permissions::from_mode(0o755)).unwrap();
        }
        Machine {
            _dir: dir,
            root,
            bin,
            lib,
            log,
        }
    }

    /// Sets the GPT name the kernel reports for a partition (its uevent's PARTNAME).
    fn name_partition(&self, part: &str, name: &str) {
        let uevent = self.root.join("sys/class/block").join(part).join("uevent");
        let text = fs::read_to_string(&uevent).unwrap();
        let kept: String = text
            .lines()
            .filter(|l| !l.starts_with("PARTNAME="))
            .map(|l| format!("{l}\n"))
            .collect();
        fs::write(&uevent, format!("{kept}PARTNAME={name}\n")).unwrap();
    }

    /// Where /run/appliance/data points, if prepare-data made it.
    fn data_link(&self) -> Option<String> {
        fs::read_link(self.root.join("run/appliance/data"))
            .ok()
            .map(|p| p.display().to_string())
    }

    /// What sysfs says of sda's size and of sda7's place on it, in 512-byte sectors.
    fn sizes(&self, disk: u64, start: u64, size: u64) {
        let block = self.root.join("sys/class/block");
        fs::create_dir_all(block.join("sda")).unwrap();
        fs::write(block.join("sda/size"), format!("{disk}\n")).unwrap();
        fs::write(block.join("sda7/start"), format!("{start}\n")).unwrap();
        fs::write(block.join("sda7/size"), format!("{size}\n")).unwrap();
    }

    fn run(&self, script: &str, args: &[&str], fstype: &str) -> (bool, String, Vec<String>) {
        self.run_with(script, args, &[("FAKE_FSTYPE", fstype)])
    }

    /// Runs `script` with `args` and the extra environment `env`: whether it succeeded, what it
    /// said, and the recorded calls (the made-up root's path taken out).
    fn run_with(
        &self,
        script: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> (bool, String, Vec<String>) {
        let path = format!("{}:{}", self.bin.display(), std::env::var("PATH").unwrap());
        let out = Command::new("sh")
            .arg(self.lib.join(script))
            .args(args)
            .env("PATH", path)
            .env("APPLIANCE_SYSROOT", &self.root)
            .env("LOG", &self.log)
            .envs(env.iter().copied())
            .output()
            .unwrap();
        let log = fs::read_to_string(&self.log).unwrap_or_default();
        let calls = log
            .lines()
            .map(|l| l.replace(&self.root.display().to_string(), ""))
            .collect();
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
        .replace(&self.root.display().to_string(), "");
        (out.status.success(), said, calls)
    }
}

fn stub(path: &Path, body: &str) {
    appliance_qemu_tests::host::write_program(path, &format!("#!/bin/sh\n{body}")).unwrap();
}

fn formatted(calls: &[String]) -> bool {
    calls.iter().any(|c| c.starts_with("mkfs.ext4"))
}

#[test]
fn the_root_disk_is_found_through_sysfs() {
    let _t = appliance_qemu_tests::timed!();
    let m = Machine::new();
    let (ok, said, _) = m.run("root-disk", &[], "");
    assert!(ok, "{said}");
    assert_eq!(said, "sda\n");
    assert!(m.run("root-disk", &["sda7"], "").0);
    assert!(
        !m.run("root-disk", &["sdb7"], "").0,
        "another disk's partition"
    );
    assert!(!m.run("root-disk", &["sdz9"], "").0, "no such partition");
    // Another device-mapper device, on the other disk, is not the root.
    let other = m.root.join("sys/block/dm-1");
    fs::create_dir_all(other.join("dm")).unwrap();
    fs::create_dir_all(other.join("slaves")).unwrap();
    fs::write(other.join("dm/name"), "other\n").unwrap();
    fs::write(other.join("slaves/sdb3"), "").unwrap();
    assert_eq!(m.run("root-disk", &[], "").1, "sda\n");
    // A root spread over two disks is not trusted.
    fs::write(m.root.join("sys/block/dm-0/slaves/sdb4"), "").unwrap();
    let (ok, said, _) = m.run("root-disk", &[], "");
    assert!(!ok);
    assert!(said.contains("two disks"), "{said}");
    // No device-mapper device is named root: not started from a verified root.
    fs::remove_file(m.root.join("sys/block/dm-0/dm/name")).unwrap();
    let (ok, said, _) = m.run("root-disk", &[], "");
    assert!(!ok);
    assert!(said.contains("there is no /dev/mapper/root"), "{said}");
}

/// The root's data (partition 3) and verity tree (partition 4) PARTUUIDs, the same on both
/// disks.
const ROOT_DATA: &str = "c66e6629-396c-981e-5bc9-ba66c34948c6";
const ROOT_HASH: &str = "559acb18-5a34-679e-91be-59b2527a99ef";

/// The salt of the hash trees on the made-up disks.
const SALT: [u8; 32] = [7; 32];

/// The initrd's view for its /init: the command line, the virtio disk in modules-load.d, a PCI
/// device's modalias, blkid answering each partition's PARTUUID (partition 3 the root's data,
/// 4 its hash tree, with a real superblock for two data blocks), and mount, modprobe, sleep,
/// switch_root and dmsetup that record.
fn initrd_machine(cmdline: &str) -> Machine {
    let m = Machine::new();
    fs::create_dir_all(m.root.join("proc")).unwrap();
    fs::write(m.root.join("proc/cmdline"), format!("{cmdline}\n")).unwrap();
    fs::write(m.root.join("proc/sysrq-trigger"), "").unwrap();
    let load = m.root.join("etc/modules-load.d");
    fs::create_dir_all(&load).unwrap();
    fs::write(
        load.join("disk.conf"),
        "# the disk\nvirtio_pci\nvirtio_blk\n",
    )
    .unwrap();
    let pci = m.root.join("sys/bus/pci/devices/0000:00:02.0");
    fs::create_dir_all(&pci).unwrap();
    fs::write(
        pci.join("modalias"),
        "pci:v00001AF4d00001001sv00001AF4sd00000002bc01sc00i00\n",
    )
    .unwrap();
    stub(
        &m.bin.join("blkid"),
        &format!(
            "for a; do case $a in -*|PART_ENTRY_UUID|export) ;; *)\n\
             echo \"DEVNAME=$a\"\n\
             case $a in *3) echo PART_ENTRY_UUID={ROOT_DATA} ;; *4) echo PART_ENTRY_UUID={ROOT_HASH} ;; \
             *) echo PART_ENTRY_UUID=030aa061-ebc3-4499-9c89-d06263be1e5c ;; esac\necho\n;; esac; done\n"
        ),
    );
    for tool in ["mount", "modprobe", "switch_root", "dmsetup"] {
        stub(&m.bin.join(tool), "echo \"${0##*/} $*\" >> \"$LOG\"\n");
    }
    // The clock: every sleep moves the machine's uptime on by a second.
    fs::write(m.root.join("proc/uptime"), "100.25 180.50\n").unwrap();
    stub(
        &m.bin.join("sleep"),
        "echo \"sleep $*\" >> \"$LOG\"\nread -r up _ < \"$APPLIANCE_SYSROOT/proc/uptime\"\n\
         echo \"$((${up%.*} + 1)).25 0\" > \"$APPLIANCE_SYSROOT/proc/uptime\"\n",
    );
    let data = m._dir.path().join("root-data");
    fs::write(&data, vec![1u8; 2 * 4096]).unwrap();
    let tree = m._dir.path().join("root-hash");
    appliance_spec::verity::build_hash_tree(&data, &tree, &SALT, &[9; 16]).unwrap();
    for disk in ["sda", "sdb"] {
        fs::copy(&tree, m.root.join(format!("dev/{disk}4"))).unwrap();
    }
    fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../overlays/boot/install/usr/lib/appliance/initrd-init"),
        m.lib.join("initrd-init"),
    )
    .unwrap();
    m
}

fn verity_cmdline() -> String {
    format!(
        "initrd=\\appliance-a\\initrd.img roothash=abc123 systemd.verity_root_data=PARTUUID={ROOT_DATA} \
         systemd.verity_root_hash=PARTUUID={ROOT_HASH} systemd.verity_root_options=panic-on-corruption \
         root=/dev/mapper/root rootfstype=squashfs ro"
    )
}

/// Runs the initrd's /init, waiting at most `wait` seconds for the root.
fn run_init(m: &Machine, wait: u32) -> (bool, String, Vec<String>) {
    m.run_with(
        "initrd-init",
        &[],
        &[("APPLIANCE_ROOT_WAIT", &wait.to_string())],
    )
}

/// The dmsetup call that opens the root from `data` and `hash` (the made-up trees: two data
/// blocks, 16 sectors).
fn dmsetup(data: &str, hash: &str) -> String {
    format!(
        "dmsetup create root --readonly --noudevsync --table 0 16 verity 1 {data} {hash} \
         4096 4096 2 1 sha256 abc123 {} 1 panic_on_corruption",
        "07".repeat(32)
    )
}

fn restarted(m: &Machine) -> bool {
    fs::read_to_string(m.root.join("proc/sysrq-trigger")).unwrap() == "b\n"
}

#[test]
fn the_initrd_opens_the_verified_root_and_starts_its_init() {
    let _t = appliance_qemu_tests::timed!();
    let m = initrd_machine(&verity_cmdline());
    let (ok, said, calls) = run_init(&m, 0);
    assert!(ok, "{said}");
    assert_eq!(
        calls,
        [
            "mount -a -T /etc/fstab.initrd",
            "modprobe -qab virtio_pci virtio_blk squashfs dm-verity sha256_ssse3 sha2_ce",
            "modprobe -qab pci:v00001AF4d00001001sv00001AF4sd00000002bc01sc00i00",
            &dmsetup("/dev/sda3", "/dev/sda4"),
            "mount -t squashfs -o ro /dev/dm-0 /sysroot",
            "switch_root /sysroot /sbin/init",
        ],
        "{said}"
    );
    assert!(!restarted(&m));
    // Without udev, dmsetup may leave /dev/mapper/root to others: it is made then.
    let m = initrd_machine(&verity_cmdline());
    fs::remove_file(m.root.join("dev/mapper/root")).unwrap();
    let (ok, said, calls) = run_init(&m, 0);
    assert!(ok, "{said}");
    assert_eq!(calls[4], "dmsetup mknodes root", "{calls:?}");
}

#[test]
fn the_root_is_opened_from_one_disk() {
    let _t = appliance_qemu_tests::timed!();
    // sda has no data partition: data and hash tree both come from sdb, though sda4 is listed
    // first.
    let m = initrd_machine(&verity_cmdline());
    fs::remove_file(m.root.join("sys/class/block/sda3")).unwrap();
    let (ok, said, calls) = run_init(&m, 0);
    assert!(ok, "{said}");
    assert!(
        calls.contains(&dmsetup("/dev/sdb3", "/dev/sdb4")),
        "{calls:?}"
    );
    // sda has the data partition but not the hash tree: sdb's is not taken.
    let m = initrd_machine(&verity_cmdline());
    fs::remove_file(m.root.join("sys/class/block/sda4")).unwrap();
    let (ok, said, calls) = run_init(&m, 0);
    assert!(!ok);
    assert!(
        !calls
            .iter()
            .any(|c| c.starts_with("dmsetup") || c.starts_with("switch_root")),
        "{calls:?}"
    );
    assert!(
        said.contains(&format!(
            "the root's hash tree (PARTUUID={ROOT_HASH}) on sda, the disk of the root's data partition /dev/sda3: not found in 0 s"
        )),
        "{said}"
    );
    assert!(said.contains("restarts in 60 s") && restarted(&m), "{said}");
}

#[test]
fn devices_not_named_by_partuuid_are_used_as_given() {
    let _t = appliance_qemu_tests::timed!();
    let cmdline =
        "roothash=abc123 systemd.verity_root_data=/dev/sdb3 systemd.verity_root_hash=/dev/sda4";
    let m = initrd_machine(cmdline);
    let (ok, said, calls) = run_init(&m, 0);
    assert!(ok, "{said}");
    let table = "dmsetup create root --readonly --noudevsync --table 0 16 verity 1 \
                 /dev/sdb3 /dev/sda4 4096 4096 2 1 sha256 abc123";
    assert!(
        calls.contains(&format!("{table} {}", "07".repeat(32))),
        "no options, no option count: {calls:?}"
    );
}

#[test]
fn a_hash_partition_without_a_known_superblock_or_an_unknown_option_opens_nothing() {
    let _t = appliance_qemu_tests::timed!();
    let m = initrd_machine(&verity_cmdline());
    fs::write(m.root.join("dev/sda4"), vec![0u8; 4096]).unwrap();
    let (ok, said, calls) = run_init(&m, 0);
    assert!(!ok && restarted(&m));
    assert!(!calls.iter().any(|c| c.starts_with("dmsetup")), "{calls:?}");
    assert!(
        said.contains(
            "cannot open the verified root from /dev/sda3 and /dev/sda4: no verity superblock"
        ),
        "{said}"
    );
    // A tree with 512-byte hash blocks: not this initrd's.
    let m = initrd_machine(&verity_cmdline());
    let mut sb = fs::read(m.root.join("dev/sda4")).unwrap();
    sb[68..72].copy_from_slice(&512u32.to_le_bytes());
    fs::write(m.root.join("dev/sda4"), &sb).unwrap();
    let (ok, said, _) = run_init(&m, 0);
    assert!(!ok);
    assert!(said.contains("blocks of 4096 and 512 bytes"), "{said}");
    let m = initrd_machine(
        &verity_cmdline().replace("panic-on-corruption", "panic-on-corruption,fec-roots=2"),
    );
    let (ok, said, _) = run_init(&m, 0);
    assert!(!ok);
    assert!(
        said.contains("has fec-roots=2, which this initrd does not know"),
        "{said}"
    );
    let m = initrd_machine(&verity_cmdline().replace(
        "panic-on-corruption",
        "ignore-zero-blocks,restart-on-corruption",
    ));
    let (ok, said, calls) = run_init(&m, 0);
    assert!(ok, "{said}");
    assert!(
        calls
            .iter()
            .any(|c| c.ends_with(" 2 ignore_zero_blocks restart_on_corruption")),
        "{calls:?}"
    );
}

#[test]
fn without_verity_the_root_partition_is_mounted_as_it_is() {
    let _t = appliance_qemu_tests::timed!();
    let cmdline =
        format!("root=PARTUUID={ROOT_DATA} rootfstype=squashfs ro init=/lib/systemd/systemd");
    let m = initrd_machine(&cmdline);
    let (ok, said, calls) = run_init(&m, 0);
    assert!(ok, "{said}");
    assert_eq!(
        &calls[1..],
        [
            "modprobe -qab virtio_pci virtio_blk squashfs",
            "modprobe -qab pci:v00001AF4d00001001sv00001AF4sd00000002bc01sc00i00",
            "mount -t squashfs -o ro /dev/sda3 /sysroot",
            "switch_root /sysroot /lib/systemd/systemd",
        ],
        "{said}"
    );
}

#[test]
fn a_root_that_never_comes_is_named_and_the_machine_restarts() {
    let _t = appliance_qemu_tests::timed!();
    let m = initrd_machine(&verity_cmdline());
    for part in ["sda3", "sdb3"] {
        fs::remove_file(m.root.join("sys/class/block").join(part)).unwrap();
    }
    let (ok, said, calls) = run_init(&m, 3);
    assert!(!ok);
    assert!(
        said.contains(&format!(
            "the root's data partition (PARTUUID={ROOT_DATA}): not found in 3 s"
        )),
        "{said}"
    );
    // A round, then sleep 0.1 (a second on this clock) until three seconds have gone by, then
    // the minute before the restart.
    assert_eq!(
        calls.iter().filter(|c| *c == "sleep 0.1").count(),
        3,
        "{calls:?}"
    );
    assert_eq!(calls.last().map(String::as_str), Some("sleep 60"));
    assert!(restarted(&m));
    // Without a root on the command line, it says so at once.
    let m = initrd_machine("ro quiet");
    let (ok, said, _) = run_init(&m, 90);
    assert!(!ok && restarted(&m));
    assert!(said.contains("names no root"), "{said}");
}

#[test]
fn a_never_used_data_partition_is_grown_and_formatted() {
    let _t = appliance_qemu_tests::timed!();
    let m = Machine::new();
    let (ok, said, calls) = m.run("prepare-data", &[], "");
    assert!(ok, "{said}");
    assert!(
        calls.contains(&"sfdisk --quiet --relocate gpt-bak-std /dev/sda".to_string()),
        "{calls:?}"
    );
    assert!(
        calls.contains(&"sfdisk --quiet --no-reread --no-tell-kernel -N 7 /dev/sda".to_string()),
        "{calls:?}"
    );
    assert!(
        calls.contains(&"mkfs.ext4 -q -L data /dev/sda7".to_string()),
        "{calls:?}"
    );
    // A new file system is not checked; fstab mounts /data from the link.
    assert!(!calls.iter().any(|c| c.starts_with("e2fsck")), "{calls:?}");
    assert_eq!(m.data_link().as_deref(), Some("/dev/sda7"));
}

#[test]
fn a_partition_that_has_the_whole_disk_is_not_grown_again() {
    let _t = appliance_qemu_tests::timed!();
    let grown = |disk: u64, start: u64, size: u64| {
        let m = Machine::new();
        m.sizes(disk, start, size);
        let (ok, said, calls) = m.run("prepare-data", &[], "ext4");
        assert!(ok, "{said}");
        assert!(!formatted(&calls), "{calls:?}");
        calls.iter().any(|c| c.starts_with("sfdisk"))
    };
    // Every later boot: the partition ends at the last usable sector (or within 1 MiB of it,
    // where sfdisk's alignment leaves it).
    let disk = 12_582_912;
    assert!(!grown(disk, 4_096_000, disk - 33 - 4_096_000));
    assert!(!grown(disk, 4_096_000, disk - 33 - 4_096_000 - 2047));
    // The disk grew (the image was written to a bigger one, or the volume was enlarged).
    assert!(grown(disk, 4_096_000, disk - 33 - 4_096_000 - 2048));
    assert!(grown(disk * 2, 4_096_000, disk - 33 - 4_096_000));
}

#[test]
fn an_existing_file_system_is_checked_and_kept() {
    let _t = appliance_qemu_tests::timed!();
    let m = Machine::new();
    let (ok, said, calls) = m.run("prepare-data", &[], "ext4");
    assert!(ok, "{said}");
    assert!(!formatted(&calls), "{calls:?}");
    assert!(
        calls.contains(&"e2fsck -p /dev/sda7".to_string()),
        "{calls:?}"
    );
    // A clean check says nothing on the console.
    assert!(!said.contains("checked"), "{said}");
    assert_eq!(m.data_link().as_deref(), Some("/dev/sda7"));

    // Errors e2fsck repaired on its own (1), or after which it asks for a restart (2, which
    // only matters for a mounted root): /data is mounted.
    for repaired in ["1", "2"] {
        let m = Machine::new();
        let (ok, said, _) = m.run_with(
            "prepare-data",
            &[],
            &[("FAKE_FSTYPE", "ext4"), ("FAKE_FSCK", repaired)],
        );
        assert!(ok, "exit {repaired}: {said}");
        assert_eq!(m.data_link().as_deref(), Some("/dev/sda7"));
    }
}

#[test]
fn a_file_system_with_errors_left_is_not_mounted() {
    let _t = appliance_qemu_tests::timed!();
    let m = Machine::new();
    let (ok, said, calls) = m.run_with(
        "prepare-data",
        &[],
        &[("FAKE_FSTYPE", "ext4"), ("FAKE_FSCK", "4")],
    );
    assert!(!ok);
    assert!(!formatted(&calls), "{calls:?}");
    assert!(
        said.contains("sda7: checked"),
        "e2fsck's own output is shown: {said}"
    );
    assert!(
        said.contains(
            "e2fsck -p found errors on /dev/sda7 (labelled data) it could not repair (exit 4)"
        ),
        "{said}"
    );
    assert!(said.contains("/data is not mounted on this boot"), "{said}");
    assert_eq!(m.data_link(), None, "no link: data.mount cannot start");
}

#[test]
fn a_partition_with_unknown_content_is_left_alone() {
    let _t = appliance_qemu_tests::timed!();
    let m = Machine::new();
    // A damaged ext4: no superblock blkid recognises, but data in the first MiB.
    let mut bytes = vec![0u8; 2 * MIB];
    bytes[4096..4200].fill(0x5a);
    fs::write(m.root.join("dev/sda7"), bytes).unwrap();
    let (ok, said, calls) = m.run("prepare-data", &[], "");
    assert!(!ok);
    assert!(!formatted(&calls), "{calls:?}");
    assert!(said.contains("holds data but no file system"), "{said}");
    assert!(said.contains("It is not formatted"), "{said}");
    assert_eq!(m.data_link(), None);

    let (ok, said, calls) = m.run("prepare-data", &[], "xfs");
    assert!(!ok && !formatted(&calls));
    assert!(said.contains("holds a xfs file system"), "{said}");
    assert_eq!(m.data_link(), None);
}

#[test]
fn another_disks_data_partition_is_never_touched() {
    let _t = appliance_qemu_tests::timed!();
    // The root's disk (sda) has no partition named data; the second disk's sdb7 has.
    let m = Machine::new();
    m.name_partition("sda7", "other");
    let (ok, said, calls) = m.run("prepare-data", &[], "");
    assert!(!ok);
    assert!(calls.is_empty(), "nothing run on any disk: {calls:?}");
    assert!(
        said.contains("(sda) has no partition labelled data"),
        "{said}"
    );
    assert_eq!(m.data_link(), None);

    // Two partitions of the root's disk named data: which one holds the data is not guessed.
    let m = Machine::new();
    m.name_partition("sda4", "data");
    let (ok, said, calls) = m.run("prepare-data", &[], "");
    assert!(!ok);
    assert!(calls.is_empty(), "{calls:?}");
    assert!(
        said.contains("(sda) has two partitions labelled data (sda4 and sda7)"),
        "{said}"
    );
    assert_eq!(m.data_link(), None);
}

#[test]
fn data_is_mounted_from_the_root_disks_own_partition_without_waiting_for_udev() {
    let _t = appliance_qemu_tests::timed!();
    let fstab = render("etc/fstab.j2");
    let data: Vec<Vec<&str>> = fstab
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .filter(|f| f.get(1) == Some(&"/data"))
        .collect();
    assert_eq!(data.len(), 1, "{fstab}");
    let data = &data[0];
    assert_eq!(data[0], "/run/appliance/data", "{fstab}");
    assert!(
        data[3]
            .split(',')
            .any(|o| o == "x-systemd.requires=appliance-prepare-data.service"),
        "{fstab}"
    );
    // prepare-data checks the file system; systemd's fsck unit would wait for udev's device.
    assert_eq!(data[5], "0", "{fstab}");
    let unit = render("etc/systemd/system/appliance-prepare-data.service.j2");
    assert!(unit.contains("Before=data.mount"), "{unit}");
    let waits_for: Vec<&str> = unit
        .lines()
        .filter(|l| {
            ["After=", "Wants=", "Requires=", "BindsTo="]
                .iter()
                .any(|k| l.starts_with(k))
        })
        .collect();
    assert!(
        waits_for
            .iter()
            .all(|l| !l.contains(".device") && !l.contains("udev")),
        "no wait for udev or a device: {waits_for:?}"
    );
    // The seed file is read from the root disk's ESP only, through a udev link made for that
    // partition alone; there is no udev link for the data partition any more.
    let rule = fs::read_to_string(overlay("usr/lib/udev/rules.d/70-appliance-esp.rules")).unwrap();
    assert!(rule.contains(&format!(
        "ENV{{ID_PART_ENTRY_NAME}}==\"{}\", PROGRAM==\"/usr/lib/appliance/root-disk %k\", SYMLINK+=\"disk/appliance/esp\"",
        appliance_spec::layout::LABEL_ESP
    )), "{rule}");
    assert!(!rule.contains("disk/appliance/data"), "{rule}");
    assert_eq!(
        appliance_admin::paths::MACHINE_ESP_DEVICE,
        "/dev/disk/appliance/esp"
    );
}
