//! Builds the test image (see `appliance_qemu_tests::test_image`: the default appliance without
//! Jitsi's own packages, which need Jitsi's repository, in every output format) with the
//! `appliance` binary, then checks the outputs and boots the image in QEMU.
//!
//! The image is built once per test run (the package cache in `build/` makes later runs fast).
//! Boots run one at a time: two QEMUs under TCG on a small machine would only slow each other.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use appliance::host::{require_program, run};
use appliance_qemu_tests::scenarios::{self, ImageUnderTest};
use appliance_qemu_tests::test_image::{self, BOOT_TIMEOUT};
use appliance_qemu_tests::{Arch, Firmware};
use appliance_spec::esp::SEED_FILE;

struct Built {
    image: PathBuf,
    out: PathBuf,
    manifest: serde_json::Value,
}

/// `appliance build` of the test image, run once per test binary. Paths are absolute, as in
/// the scenario tests' library build of the same configuration, so either build finds the
/// other's root file system in the cache.
fn built() -> &'static Built {
    static BUILT: OnceLock<Result<Built, String>> = OnceLock::new();
    let r = BUILT.get_or_init(|| {
        let overrides = test_image::overrides().map_err(|e| format!("{e:#}"))?;
        let out = test_image::out_dir();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_appliance"));
        cmd.current_dir(test_image::repo_root())
            .arg("build")
            .arg("--config")
            .arg(test_image::config_path())
            .arg("--build-dir")
            .arg(test_image::build_dir())
            .arg("--out")
            .arg(&out);
        for o in &overrides {
            cmd.arg("--set").arg(o);
        }
        let status = cmd
            .status()
            .map_err(|e| format!("cannot run appliance: {e}"))?;
        if !status.success() {
            return Err(format!(
                "`appliance build --set jitsi.enabled=false` failed ({status}); its output is above"
            ));
        }
        let manifest: serde_json::Value = serde_json::from_slice(
            &std::fs::read(out.join(test_image::MANIFEST_FILE)).map_err(|e| e.to_string())?,
        )
        .map_err(|e| e.to_string())?;
        Ok(Built {
            image: out.join(test_image::IMAGE_FILE),
            out,
            manifest,
        })
    });
    match r {
        Ok(b) => b,
        Err(e) => panic!("{e}"),
    }
}

fn partition<'a>(manifest: &'a serde_json::Value, label: &str) -> &'a serde_json::Value {
    manifest["partitions"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["label"] == label))
        .unwrap_or_else(|| panic!("manifest has no {label} partition"))
}

fn image_under_test(b: &Built) -> ImageUnderTest {
    let root = partition(&b.manifest, "root-a");
    let data = partition(&b.manifest, "data");
    ImageUnderTest {
        image: b.image.clone(),
        arch: Arch::X86_64,
        root_offset: root["first_lba"].as_u64().unwrap() * 512,
        data_part_bytes: data["bytes"].as_u64().unwrap(),
    }
}

fn workdir(name: &str) -> PathBuf {
    test_image::workdir(name).unwrap_or_else(|e| panic!("{e:#}"))
}

/// Copies `len` bytes at `offset` of `src` into a new file.
fn extract(src: &Path, offset: u64, len: u64, dst: &Path) {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(src).unwrap();
    f.seek(SeekFrom::Start(offset)).unwrap();
    let mut out = std::fs::File::create(dst).unwrap();
    std::io::copy(&mut f.take(len), &mut out).unwrap();
}

/// A host program the checks need, or a failure that says to run `appliance doctor --install`.
fn tool(program: &str, package: &str) -> Command {
    Command::new(require_program(program, package).unwrap_or_else(|e| panic!("{e:#}")))
}

/// The top directory of the FAT file system at `esp_offset` in `disk`, as mtools lists it.
fn esp_listing(disk: &Path, esp_offset: u64) -> String {
    let out = run(tool("mdir", "mtools")
        .args(["-b", "-i"])
        .arg(format!("{}@@{esp_offset}", disk.display()))
        .arg("::"))
    .unwrap_or_else(|e| panic!("{e:#}"));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn outputs_are_complete_and_consistent() {
    let _t = appliance_qemu_tests::timed!();
    let b = built();
    // Every output is listed in SHA256SUMS, and the sums hold.
    let sums = std::fs::read_to_string(b.out.join("SHA256SUMS")).unwrap();
    for f in [
        "jitsi-appliance.raw",
        "jitsi-appliance.raw.zst",
        "jitsi-appliance.qcow2",
        "jitsi-appliance.vmdk",
        "jitsi-appliance.vhd",
        "jitsi-appliance.bmap",
        "jitsi-appliance.manifest.json",
    ] {
        assert!(sums.contains(&format!("  {f}\n")), "SHA256SUMS lacks {f}");
    }
    let st = Command::new("sha256sum")
        .args(["-c", "--quiet", "SHA256SUMS"])
        .current_dir(&b.out)
        .status()
        .unwrap();
    assert!(st.success(), "sha256sum -c SHA256SUMS failed");
    // No temporary files are left behind.
    for e in std::fs::read_dir(&b.out).unwrap().flatten() {
        assert!(
            !e.file_name().to_string_lossy().ends_with(".partial"),
            "left over: {:?}",
            e.file_name()
        );
    }
    // The compressed image decompresses to the raw one.
    let st = Command::new("sh")
        .arg("-c")
        .arg("zstd -dc jitsi-appliance.raw.zst | cmp - jitsi-appliance.raw")
        .current_dir(&b.out)
        .status()
        .unwrap();
    assert!(st.success(), "raw.zst does not decompress to the raw image");

    // The manifest lists packages with versions and no Jitsi package (this build has none),
    // and none of what the lean image leaves out (Java comes with Jitsi's feature).
    let pkgs = b.manifest["packages"].as_array().unwrap();
    assert!(pkgs.len() > 100, "only {} packages listed", pkgs.len());
    for must in ["prosody", "nginx-light", "coturn", "dracut", "apparmor"] {
        assert!(
            pkgs.iter()
                .any(|p| p["name"] == must && p["version"].as_str().is_some_and(|v| !v.is_empty())),
            "{must} missing"
        );
    }
    assert!(
        pkgs.iter()
            .any(|p| p["name"] == test_image::LOCAL_PACKAGE && p["version"] == "1.0"),
        "the package from the local .deb directory is not installed"
    );
    for left_out in [
        "openjdk-17-jre-headless",
        "lua5.2",
        "ruby",
        "perl",
        "usrmerge",
    ] {
        assert!(
            !pkgs.iter().any(|p| p["name"] == left_out),
            "{left_out} is in the image, which does not use it"
        );
    }
    assert!(!pkgs
        .iter()
        .any(|p| p["name"].as_str().unwrap().starts_with("jitsi-") || p["name"] == "jicofo"));
    packages_page_lists_exactly(pkgs);
    assert_eq!(b.manifest["jitsi"], false);

    // The partition table, read by util-linux, has the Discoverable Partitions types.
    let out = tool("sfdisk", "fdisk")
        .arg("-J")
        .arg(&b.image)
        .output()
        .unwrap();
    assert!(out.status.success());
    let table: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let parts = table["partitiontable"]["partitions"].as_array().unwrap();
    let types: Vec<String> = parts
        .iter()
        .map(|p| p["type"].as_str().unwrap().to_ascii_lowercase())
        .collect();
    for t in [
        "21686148-6449-6e6f-744e-656564454649", // BIOS boot
        "c12a7328-f81f-11d2-ba4b-00a0c93ec93b", // ESP
        "4f68bce3-e8cd-4db1-96e7-fbcaf984b709", // root x86-64
        "2c7357ed-ebd2-46d9-aec1-23d437ec2bf5", // root verity x86-64
        "0fc63daf-8483-4772-8e79-3d69d8477de4", // data
    ] {
        assert!(
            types.contains(&t.to_string()),
            "no partition of type {t}: {types:?}"
        );
    }

    // The ESP is clean FAT.
    let esp = partition(&b.manifest, "esp");
    let dir = tempfile::tempdir().unwrap();
    let esp_img = dir.path().join("esp.img");
    extract(
        &b.image,
        esp["first_lba"].as_u64().unwrap() * 512,
        esp["bytes"].as_u64().unwrap(),
        &esp_img,
    );
    let out = tool("fsck.fat", "dosfstools")
        .arg("-n")
        .arg(&esp_img)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "fsck.fat: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    // The build's [firstboot] answers are on the ESP, for the machine to read at first boot.
    let listing = esp_listing(&b.image, esp["first_lba"].as_u64().unwrap() * 512);
    assert!(
        listing.contains(SEED_FILE),
        "no {SEED_FILE} on the ESP: {listing}"
    );

    // veritysetup accepts the hash tree computed in Rust, with the root hash on the command line.
    let root_hash = b.manifest["verity"]["root_hash"].as_str().unwrap();
    assert!(b.manifest["kernel_cmdline"]
        .as_str()
        .unwrap()
        .contains(&format!("roothash={root_hash}")));
    let root = partition(&b.manifest, "root-a");
    let verity = partition(&b.manifest, "verity-a");
    let data_img = dir.path().join("root.img");
    let hash_img = dir.path().join("verity.img");
    extract(
        &b.image,
        root["first_lba"].as_u64().unwrap() * 512,
        b.manifest["squashfs_bytes"].as_u64().unwrap(),
        &data_img,
    );
    extract(
        &b.image,
        verity["first_lba"].as_u64().unwrap() * 512,
        b.manifest["verity"]["hash_bytes"].as_u64().unwrap(),
        &hash_img,
    );
    let out = tool("veritysetup", "cryptsetup-bin")
        .arg("verify")
        .arg(&data_img)
        .arg(&hash_img)
        .arg(root_hash)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "veritysetup verify: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Nothing that belongs to one machine is baked into the image.
    let out = tool("unsquashfs", "squashfs-tools")
        .args(["-lln", "-no-progress"])
        .arg(&data_img)
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(
        listing.contains(&format!("squashfs-root/{}", test_image::LOCAL_PACKAGE_FILE)),
        "the local package's file is not in the root"
    );
    assert!(
        listing.contains("squashfs-root/etc/fstab"),
        "listing looks wrong"
    );
    for line in listing.lines() {
        let path = line.split_whitespace().last().unwrap_or("");
        assert!(
            !path.contains("etc/ssh/ssh_host_"),
            "SSH host key in the image: {line}"
        );
        assert!(
            !path.ends_with("etc/hostname"),
            "hostname in the image: {line}"
        );
        if path.ends_with("etc/machine-id") {
            let size: u64 = line.split_whitespace().nth(2).unwrap().parse().unwrap();
            assert_eq!(size, 0, "machine-id must be empty: {line}");
        }
    }

    // No private key of any kind anywhere in the root: every copy of an image would share it.
    let root = workdir("root-files");
    let status = tool("unsquashfs", "squashfs-tools")
        .args(["-no-progress", "-quiet", "-f", "-d"])
        .arg(root.join("r"))
        .arg(&data_img)
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "unsquashfs could not unpack the root");
    let keys = private_keys_under(&root.join("r"));
    assert!(keys.is_empty(), "private keys in the image: {keys:?}");
}

/// Files under `dir` holding a PEM or OpenSSH private key: a `-----BEGIN ... PRIVATE
/// KEY-----` line followed by base64 (programs that only know the marker, such as sshd, have
/// no key material after it).
fn private_keys_under(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let ft = e.file_type().unwrap();
            if ft.is_dir() {
                stack.push(e.path());
            } else if ft.is_file() {
                let bytes = std::fs::read(e.path()).unwrap_or_default();
                if holds_private_key(&bytes) {
                    found.push(e.path());
                }
            }
        }
    }
    found
}

fn holds_private_key(bytes: &[u8]) -> bool {
    let text = String::from_utf8_lossy(bytes);
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        let line = line.trim();
        if line.starts_with("-----BEGIN") && line.ends_with("PRIVATE KEY-----") {
            let next = lines.next().unwrap_or("").trim();
            if next.len() >= 40
                && next
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "+/=".contains(c))
            {
                return true;
            }
        }
    }
    false
}

#[test]
fn the_private_key_scan_finds_keys_and_ignores_markers() {
    let _t = appliance_qemu_tests::timed!();
    let d = workdir("key-scan");
    let status = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(d.join("id"))
        .status()
        .expect("ssh-keygen (openssh-client): run `appliance doctor --install`");
    assert!(status.success());
    assert!(holds_private_key(&std::fs::read(d.join("id")).unwrap()));
    assert!(!holds_private_key(
        &std::fs::read(d.join("id.pub")).unwrap()
    ));
    assert!(!holds_private_key(
        b"\0-----BEGIN OPENSSH PRIVATE KEY-----\0openssh-key-v1\0"
    ));
    assert_eq!(private_keys_under(&d), vec![d.join("id")]);
}

#[test]
fn import_formats_are_valid_and_hold_the_same_disk() {
    let _t = appliance_qemu_tests::timed!();
    let b = built();
    let raw_size = std::fs::metadata(&b.image).unwrap().len();
    for (file, format, extra) in [
        ("jitsi-appliance.qcow2", "qcow2", ""),
        ("jitsi-appliance.vmdk", "vmdk", "streamOptimized"),
        ("jitsi-appliance.vhd", "vpc", ""),
    ] {
        let path = b.out.join(file);
        // A fixed VHD has its footer only at the end, so qemu-img's probe sees it as raw: name the
        // format, and qemu-img refuses the file unless the footer is valid.
        let out = tool("qemu-img", "qemu-utils")
            .args(["info", "--output=json", "-f", format])
            .arg(&path)
            .output()
            .unwrap();
        assert!(out.status.success(), "qemu-img info {file}");
        let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(info["format"], format, "{file}");
        assert_eq!(
            info["virtual-size"].as_u64(),
            Some(raw_size),
            "{file} has another size"
        );
        if !extra.is_empty() {
            assert!(info.to_string().contains(extra), "{file}: {info}");
        }
        if format != "vpc" {
            let st = tool("qemu-img", "qemu-utils")
                .arg("check")
                .arg(&path)
                .status()
                .unwrap();
            assert!(st.success(), "qemu-img check {file}");
        }
        let st = tool("qemu-img", "qemu-utils")
            .args(["compare", "-q", "-f", "raw", "-F", format])
            .arg(&b.image)
            .arg(&path)
            .status()
            .unwrap();
        assert!(
            st.success(),
            "{file} does not hold the same disk as the raw image"
        );
    }
    // Azure wants a fixed VHD whose size is a whole number of MiB.
    assert_eq!(raw_size % (1 << 20), 0);
    assert_eq!(
        std::fs::metadata(b.out.join("jitsi-appliance.vhd"))
            .unwrap()
            .len(),
        raw_size + 512
    );
}

#[test]
fn write_to_a_file_with_the_bmap_reproduces_the_image() {
    let _t = appliance_qemu_tests::timed!();
    let b = built();
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("disk");
    let raw_size = std::fs::metadata(&b.image).unwrap().len();
    std::fs::File::create(&target)
        .unwrap()
        .set_len(raw_size + (64 << 20))
        .unwrap();
    // A used disk: an old file system at the start of the data partition must not survive.
    {
        use std::io::{Seek, SeekFrom, Write};
        let data = partition(&b.manifest, "data");
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(&target)
            .unwrap();
        f.seek(SeekFrom::Start(data["first_lba"].as_u64().unwrap() * 512))
            .unwrap();
        f.write_all(&vec![0xaa; 1 << 20]).unwrap();
    }
    let out = Command::new(env!("CARGO_BIN_EXE_appliance"))
        .arg("write")
        .arg(&b.image)
        .arg("--device")
        .arg(&target)
        .arg("--yes")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "appliance write: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let st = Command::new("cmp")
        .arg("-n")
        .arg(raw_size.to_string())
        .arg(&b.image)
        .arg(&target)
        .status()
        .unwrap();
    assert!(st.success(), "the written disk differs from the image");
    // bmaptool, the reference implementation, accepts the build's block map too.
    let target2 = dir.path().join("disk2");
    let st = tool("bmaptool", "bmap-tools")
        .arg("copy")
        .arg("--bmap")
        .arg(b.out.join("jitsi-appliance.bmap"))
        .arg(&b.image)
        .arg(&target2)
        .status()
        .unwrap();
    assert!(st.success(), "bmaptool copy refused the block map");
}

/// The first boot under UEFI (systemd-boot), the second of the same disk under BIOS (GRUB on
/// SeaBIOS): both boot loaders start the image, the first boot grows /data and runs first-boot
/// work, and the second finds it done. `appliance test` boots each firmware twice
/// (`scenarios::first_and_second_boot`, the same checks); the arm64 test runs that path, and
/// the update scenario boots both firmwares again.
#[test]
fn first_boot_under_uefi_second_under_bios() {
    let _t = appliance_qemu_tests::timed!();
    let b = built();
    let _one = test_image::one_boot_at_a_time();
    let img = image_under_test(b);
    let outcomes = scenarios::boots_of_one_disk(
        &img,
        &[Firmware::Uefi, Firmware::Bios],
        &workdir("uefi-then-bios"),
        BOOT_TIMEOUT,
    )
    .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(outcomes.len(), 2);
    for o in &outcomes {
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "{:?} boot {}: readiness marker after {:.1} s",
            o.firmware,
            o.boot,
            o.seconds_to_marker
        );
    }
}

#[test]
fn tampered_root_is_refused() {
    let _t = appliance_qemu_tests::timed!();
    let b = built();
    let _one = test_image::one_boot_at_a_time();
    let img = image_under_test(b);
    let before = std::fs::metadata(&b.image).unwrap().modified().unwrap();
    let t =
        scenarios::tampered_root_is_refused(&img, Firmware::Uefi, &workdir("tamper"), BOOT_TIMEOUT)
            .unwrap_or_else(|e| panic!("{e:#}"));
    assert!(
        t.refusal_line.contains("corrupt") || t.refusal_line.contains("Kernel panic"),
        "{}",
        t.refusal_line
    );
    assert_eq!(
        before,
        std::fs::metadata(&b.image).unwrap().modified().unwrap(),
        "the image itself must not change"
    );
}

/// docs/packages.md names every package of the image and why it is there: its tables (first
/// column) and its list of Debian's base system must hold exactly the manifest's packages,
/// apart from this test's own local package. The kernel's versioned package is written
/// `linux-image-<version>-...`, so a new Debian kernel does not need a new page.
fn packages_page_lists_exactly(pkgs: &[serde_json::Value]) {
    let page = std::fs::read_to_string(test_image::repo_root().join("docs/packages.md"))
        .expect("docs/packages.md");
    let mut documented = std::collections::BTreeSet::new();
    for line in page.lines() {
        let names: Vec<&str> = line.split('`').skip(1).step_by(2).collect();
        if line.starts_with("| `") {
            documented.insert(names[0].to_string());
        } else if line.starts_with("Essential packages") {
            documented.extend(names.iter().map(|n| n.to_string()));
        }
    }
    let versioned_kernel = |n: &str| {
        n.strip_prefix("linux-image-")
            .is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_digit()))
    };
    let installed: std::collections::BTreeSet<String> = pkgs
        .iter()
        .filter_map(|p| p["name"].as_str())
        .filter(|n| *n != test_image::LOCAL_PACKAGE)
        .map(|n| {
            if versioned_kernel(n) {
                "linux-image-<version>-cloud-amd64".to_string()
            } else {
                n.to_string()
            }
        })
        .collect();
    let missing: Vec<_> = installed.difference(&documented).collect();
    let gone: Vec<_> = documented.difference(&installed).collect();
    assert!(
        missing.is_empty() && gone.is_empty(),
        "docs/packages.md no longer matches the image: installed but not explained {missing:?}; \
         explained but not installed {gone:?}"
    );
}
