//! The root file system: overlays rendered from the configuration, the hook files mmdebstrap
//! runs, and what the later stages need out of the finished tarball (kernel, initrd, boot
//! loader, package list).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::Serialize;

use crate::config::Config;
use crate::features::Feature;

/// The template context: the configuration plus a few derived values.
pub fn template_context(config: &Config) -> Result<serde_json::Value> {
    let mut v = serde_json::to_value(config).context("serialising the configuration")?;
    if let Some(obj) = v.as_object_mut() {
        obj.insert("tool_version".into(), env!("CARGO_PKG_VERSION").into());
        obj.insert("arch".into(), config.image.arch.to_string().into());
        obj.insert("debian_arch".into(), config.image.arch.debian().into());
        obj.insert(
            "serial_console".into(),
            config.image.arch.serial_console().into(),
        );
        obj.insert("kernel_package".into(), config.kernel_package().into());
    }
    Ok(v)
}

/// Renders a template in the project's dialect ([`appliance_spec::template`]); `name` appears
/// in error messages.
pub fn render(name: &str, template: &str, ctx: &serde_json::Value) -> Result<String> {
    let mut env = appliance_spec::template::environment()?;
    env.add_template(name, template)
        .with_context(|| format!("template {name} does not parse"))?;
    let tmpl = env.get_template(name)?;
    tmpl.render(minijinja::value::Serde(ctx))
        .map_err(|e| anyhow::anyhow!("rendering {name}: {e:#}"))
}

/// Lays every feature's `files/` into `dest`, in order, rendering `*.j2` files (the suffix is
/// dropped). Modes are kept; symlinks are copied as symlinks.
pub fn render_feature_files(
    config: &Config,
    features: &[Feature],
    dest: &Path,
) -> Result<Vec<PathBuf>> {
    let ctx = template_context(config)?;
    let mut written = Vec::new();
    for dir in features.iter().filter_map(Feature::files_dir) {
        copy_tree(&dir, &dir, dest, &ctx, &mut written)?;
    }
    check_no_host_secrets(dest)?;
    Ok(written)
}

fn copy_tree(
    root: &Path,
    dir: &Path,
    dest: &Path,
    ctx: &serde_json::Value,
    written: &mut Vec<PathBuf>,
) -> Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .collect::<std::io::Result<_>>()?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = entry.path();
        let rel = path.strip_prefix(root).unwrap_or(&path);
        let meta = std::fs::symlink_metadata(&path)?;
        let mut target = dest.join(rel);
        if meta.file_type().is_symlink() {
            let link = std::fs::read_link(&path)?;
            let _ = std::fs::remove_file(&target);
            std::os::unix::fs::symlink(link, &target)?;
        } else if meta.is_dir() {
            std::fs::create_dir_all(&target)?;
            std::fs::set_permissions(&target, meta.permissions())?;
            copy_tree(root, &path, dest, ctx, written)?;
        } else {
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent)?;
            }
            if path.extension().is_some_and(|e| e == "j2") {
                target.set_extension("");
                let text = std::fs::read_to_string(&path)
                    .with_context(|| format!("reading template {}", path.display()))?;
                let out = render(&path.display().to_string(), &text, ctx)?;
                std::fs::write(&target, out)?;
            } else {
                std::fs::copy(&path, &target)
                    .with_context(|| format!("copying {}", path.display()))?;
            }
            std::fs::set_permissions(&target, meta.permissions())?;
            written.push(target.strip_prefix(dest).unwrap_or(&target).to_path_buf());
        }
    }
    Ok(())
}

/// Files that identify one machine must never be baked into an image that many machines share.
const HOST_SPECIFIC: &[&str] = &[
    "etc/machine-id",
    "etc/hostname",
    "etc/resolv.conf",
    "var/lib/dbus/machine-id",
];

fn check_no_host_secrets(dest: &Path) -> Result<()> {
    for p in HOST_SPECIFIC {
        if dest.join(p).exists() {
            bail!("an overlay contains /{p}, which is specific to one machine; remove it (it is created at boot)");
        }
    }
    let ssh = dest.join("etc/ssh");
    if let Ok(entries) = std::fs::read_dir(&ssh) {
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with("ssh_host_") {
                bail!("an overlay contains the SSH host key /etc/ssh/{}; host keys are made on first boot", e.file_name().to_string_lossy());
            }
        }
    }
    Ok(())
}

/// The files mmdebstrap's hooks use, prepared in the build directory.
pub struct HookPaths {
    /// Laid into the root before the packages are installed (every feature's `install/`).
    pub install: PathBuf,
    /// Every feature's debconf answers, in one file.
    pub preseed: PathBuf,
    /// Every feature's package hook (`packages.sh`), in order: run in the package layer.
    pub packages: Vec<PathBuf>,
    /// Every feature's customize script, in order: run on the package layer with the files in.
    pub customize: Vec<PathBuf>,
}

/// Writes into `dir` what the hooks use: the install tree, the debconf answers and a copy of
/// each package and customize script (copies, so the cache keys cover their content).
pub fn write_hook_files(config: &Config, features: &[Feature], dir: &Path) -> Result<HookPaths> {
    let ctx = template_context(config)?;
    let install = dir.join("install");
    std::fs::create_dir_all(&install)?;
    let mut written = Vec::new();
    for src in features.iter().filter_map(Feature::install_dir) {
        copy_tree(&src, &src, &install, &ctx, &mut written)?;
    }
    let mut preseed_text = String::from("# debconf answers of the enabled features\n");
    for f in features {
        if let Some(p) = f.preseed() {
            preseed_text.push_str(
                &std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?,
            );
        }
    }
    let preseed = dir.join("preseed.cfg");
    std::fs::write(&preseed, preseed_text)?;
    let copy_scripts =
        |kind: &str, pick: fn(&Feature) -> Option<PathBuf>| -> Result<Vec<PathBuf>> {
            let mut out = Vec::new();
            for (i, f) in features.iter().enumerate() {
                if let Some(script) = pick(f) {
                    let copy = dir.join(format!("{kind}-{:02}-{}.sh", i + 1, f.name));
                    std::fs::copy(&script, &copy)
                        .with_context(|| format!("copying {}", script.display()))?;
                    use std::os::unix::fs::PermissionsExt;
                    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755))?;
                    out.push(copy);
                }
            }
            Ok(out)
        };
    Ok(HookPaths {
        install,
        preseed,
        packages: copy_scripts("packages", Feature::packages_script)?,
        customize: copy_scripts("customize", Feature::customize_script)?,
    })
}

/// A package installed in the image, from dpkg's status file.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct InstalledPackage {
    pub name: String,
    pub version: String,
    pub architecture: String,
    /// What it depends on (`Depends`, `Pre-Depends`): groups of alternatives, by name.
    #[serde(skip)]
    pub depends: Vec<Vec<String>>,
}

/// What the later stages take out of the root tarball.
#[derive(Debug, Clone)]
pub struct RootfsContents {
    pub kernel_version: String,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    /// systemd-boot's EFI binary, when the image has it.
    pub systemd_boot: Option<PathBuf>,
    pub os_release: String,
    pub packages: Vec<InstalledPackage>,
    /// Raspberry Pi boot firmware and device trees, as (name on the ESP, extracted file).
    pub raspberry_pi_files: Vec<(String, PathBuf)>,
    /// Each package's `/usr/share/doc/<package>/copyright`, as `<dir>/<package>`.
    pub copyright_dir: PathBuf,
}

/// Reads the root tarball once, copying into `dir` what the later stages need: the kernel,
/// initrd and boot loader, the Raspberry Pi firmware, os-release, dpkg's status file and every
/// package's copyright file (for the SBOM's licenses).
pub fn extract_boot_files(config: &Config, tar_path: &Path, dir: &Path) -> Result<RootfsContents> {
    std::fs::create_dir_all(dir)?;
    let file = std::fs::File::open(tar_path)
        .with_context(|| format!("opening the root tarball {}", tar_path.display()))?;
    let mut archive = tar::Archive::new(std::io::BufReader::with_capacity(1 << 20, file));
    let sd_boot_name = config.image.arch.systemd_boot_file();
    let pi_dir = dir.join(PI_DIR);
    for entry in archive.entries().context("reading the root tarball")? {
        let mut entry = entry.context("reading the root tarball")?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let path = entry
            .path()?
            .to_string_lossy()
            .trim_start_matches("./")
            .to_string();
        let out = if let Some(ver) = path.strip_prefix("boot/vmlinuz-") {
            dir.join(format!("vmlinuz-{ver}"))
        } else if let Some(ver) = path.strip_prefix("boot/initrd.img-") {
            dir.join(format!("initrd.img-{ver}"))
        } else if path == format!("usr/lib/systemd/boot/efi/{sd_boot_name}") {
            dir.join(sd_boot_name)
        } else if let Some(name) = raspberry_pi_file(&path) {
            std::fs::create_dir_all(&pi_dir)?;
            pi_dir.join(name)
        } else if path == "usr/lib/os-release" {
            dir.join(OS_RELEASE)
        } else if path == "var/lib/dpkg/status" {
            dir.join(DPKG_STATUS)
        } else if let Some(package) = path
            .strip_prefix("usr/share/doc/")
            .and_then(|r| r.strip_suffix("/copyright"))
            .filter(|p| !p.contains('/'))
        {
            std::fs::create_dir_all(dir.join(COPYRIGHT_DIR))?;
            dir.join(COPYRIGHT_DIR).join(package)
        } else {
            continue;
        };
        entry.unpack(&out)?;
    }
    RootfsContents::load(config, dir)
}

const PI_DIR: &str = "raspberry-pi";
const OS_RELEASE: &str = "os-release";
const DPKG_STATUS: &str = "dpkg-status";
const COPYRIGHT_DIR: &str = "copyright";

impl RootfsContents {
    /// What [`extract_boot_files`] left in `dir`.
    pub fn load(config: &Config, dir: &Path) -> Result<RootfsContents> {
        let mut kernels: BTreeMap<String, PathBuf> = BTreeMap::new();
        let mut initrds: BTreeMap<String, PathBuf> = BTreeMap::new();
        for e in std::fs::read_dir(dir)
            .with_context(|| format!("reading {}", dir.display()))?
            .flatten()
        {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(ver) = name.strip_prefix("vmlinuz-") {
                kernels.insert(ver.to_string(), e.path());
            } else if let Some(ver) = name.strip_prefix("initrd.img-") {
                initrds.insert(ver.to_string(), e.path());
            }
        }
        let Some((kernel_version, kernel)) = kernels.into_iter().next_back() else {
            bail!(
                "the root file system has no kernel in /boot; is [packages] kernel a kernel package?"
            );
        };
        let Some(initrd) = initrds.remove(&kernel_version) else {
            bail!("the root file system has no /boot/initrd.img-{kernel_version}; the initrd generator (dracut) did not run");
        };
        let systemd_boot =
            Some(dir.join(config.image.arch.systemd_boot_file())).filter(|p| p.is_file());
        let mut raspberry_pi_files = Vec::new();
        if let Ok(entries) = std::fs::read_dir(dir.join(PI_DIR)) {
            for e in entries.flatten() {
                raspberry_pi_files.push((e.file_name().to_string_lossy().into_owned(), e.path()));
            }
        }
        raspberry_pi_files.sort();
        let status = std::fs::read_to_string(dir.join(DPKG_STATUS)).unwrap_or_default();
        Ok(RootfsContents {
            kernel_version,
            kernel,
            initrd,
            systemd_boot,
            os_release: std::fs::read_to_string(dir.join(OS_RELEASE)).unwrap_or_default(),
            packages: parse_dpkg_status(&status),
            raspberry_pi_files,
            copyright_dir: dir.join(COPYRIGHT_DIR),
        })
    }
}

/// The ESP name of a file the Raspberry Pi firmware needs, if `path` (in the root file system)
/// is one: the GPU firmware from raspi-firmware, and the kernel's device trees for the boards.
fn raspberry_pi_file(path: &str) -> Option<String> {
    if let Some(name) = path.strip_prefix("usr/lib/raspi-firmware/") {
        let firmware = name == "bootcode.bin"
            || (name.starts_with("start") && name.ends_with(".elf"))
            || (name.starts_with("fixup") && name.ends_with(".dat"));
        return (firmware && !name.contains('/')).then(|| name.to_string());
    }
    let rest = path.strip_prefix("usr/lib/linux-image-")?;
    let (_, dtb) = rest.split_once("/broadcom/")?;
    (dtb.starts_with("bcm27") && dtb.ends_with(".dtb") && !dtb.contains('/'))
        .then(|| dtb.to_string())
}

/// Installed packages from dpkg's status file, sorted by name.
pub fn parse_dpkg_status(status: &str) -> Vec<InstalledPackage> {
    let mut pkgs = Vec::new();
    for stanza in status.split("\n\n") {
        let field = |name: &str| {
            stanza
                .lines()
                .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_string()))
        };
        let installed =
            field("Status:").is_some_and(|s| s.split_whitespace().nth(2) == Some("installed"));
        if let (true, Some(name), Some(version)) = (installed, field("Package:"), field("Version:"))
        {
            let depends = ["Pre-Depends:", "Depends:"]
                .iter()
                .filter_map(|f| field(f))
                .flat_map(|list| {
                    list.split(',')
                        .map(|group| {
                            group
                                .split('|')
                                .filter_map(|alt| alt.split_whitespace().next())
                                .map(|n| n.split(':').next().unwrap_or(n).to_string())
                                .collect::<Vec<_>>()
                        })
                        .collect::<Vec<_>>()
                })
                .filter(|g| !g.is_empty())
                .collect();
            pkgs.push(InstalledPackage {
                name,
                version,
                architecture: field("Architecture:").unwrap_or_default(),
                depends,
            });
        }
    }
    pkgs.sort_by(|a, b| a.name.cmp(&b.name));
    pkgs
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A configuration with one feature, "ov", whose files are in `<dir>/ov/files`.
    fn config(dir: &Path, extra: &str) -> Config {
        std::fs::create_dir_all(dir.join("ov")).unwrap();
        std::fs::write(dir.join("ov/feature.toml"), "description = \"test\"\n").unwrap();
        let text =
            format!("[image]\nname = \"t\"\n[features]\ndir = \".\"\nenabled = [\"ov\"]\n{extra}");
        Config::from_str_with(&text, "test.toml", dir.to_path_buf(), &[]).unwrap()
    }

    fn render_files(c: &Config, dest: &Path) -> Result<Vec<PathBuf>> {
        render_feature_files(c, &crate::features::load(c)?, dest)
    }

    #[test]
    fn overlays_render_templates_and_keep_modes() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let ov = dir.path().join("ov/files");
        std::fs::create_dir_all(ov.join("usr/lib/x")).unwrap();
        std::fs::write(
            ov.join("usr/lib/x/run.j2"),
            "#!/bin/sh\necho {{ data.label }} {{ image.name }}\n",
        )
        .unwrap();
        std::fs::set_permissions(
            ov.join("usr/lib/x/run.j2"),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        std::fs::write(ov.join("plain.txt"), "{{ not rendered }}").unwrap();
        let out = dir.path().join("out");
        let c = config(dir.path(), "[data]\nlabel = \"state\"\n");
        render_files(&c, &out).unwrap();
        let rendered = std::fs::read_to_string(out.join("usr/lib/x/run")).unwrap();
        assert_eq!(rendered, "#!/bin/sh\necho state t\n");
        let mode = std::fs::metadata(out.join("usr/lib/x/run"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o755);
        assert_eq!(
            std::fs::read_to_string(out.join("plain.txt")).unwrap(),
            "{{ not rendered }}"
        );
        assert!(!out.join("usr/lib/x/run.j2").exists());
    }

    #[test]
    fn undefined_template_variable_fails_with_file_name() {
        let dir = tempfile::tempdir().unwrap();
        let ov = dir.path().join("ov/files");
        std::fs::create_dir_all(&ov).unwrap();
        std::fs::write(ov.join("bad.j2"), "{{ data.lable }}").unwrap();
        let err = format!(
            "{:#}",
            render_files(&config(dir.path(), ""), &dir.path().join("o")).unwrap_err()
        );
        assert!(err.contains("bad.j2"), "{err}");
    }

    #[test]
    fn overlays_must_not_carry_machine_identity() {
        let dir = tempfile::tempdir().unwrap();
        let ov = dir.path().join("ov/files/etc/ssh");
        std::fs::create_dir_all(&ov).unwrap();
        std::fs::write(ov.join("ssh_host_ed25519_key"), "secret").unwrap();
        let err = render_files(&config(dir.path(), ""), &dir.path().join("o")).unwrap_err();
        assert!(err.to_string().contains("host key"), "{err}");
    }

    #[test]
    fn project_overlays_render_with_the_default_config() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let c = Config::load(
            &root.join("appliance.toml"),
            &["jitsi.enabled=false".into()],
        )
        .unwrap();
        let out = tempfile::tempdir().unwrap();
        let features = crate::features::load(&c).unwrap();
        let files = render_feature_files(&c, &features, out.path()).unwrap();
        assert!(files.iter().any(|f| f.ends_with("etc/fstab")));
        let fstab = std::fs::read_to_string(out.path().join("etc/fstab")).unwrap();
        assert!(fstab.contains("/run/appliance/data  /data "), "{fstab}");
        let hooks = write_hook_files(&c, &features, &out.path().join("hooks")).unwrap();
        let script = std::fs::read_to_string(&hooks.customize[0]).unwrap();
        assert!(script.contains("machine-id"), "base's hook runs first");
        assert!(hooks
            .install
            .join("etc/dracut.conf.d/50-appliance.conf")
            .is_file());
    }

    #[test]
    fn dpkg_status_lists_installed_packages_only() {
        let status = "Package: zlib1g\nStatus: install ok installed\nVersion: 1:1.2.13\nArchitecture: amd64\n\n\
                      Package: gone\nStatus: deinstall ok config-files\nVersion: 1\n\n\
                      Package: bash\nStatus: install ok installed\nArchitecture: amd64\nVersion: 5.2.15-2+b7\n";
        let pkgs = parse_dpkg_status(status);
        assert_eq!(pkgs.len(), 2);
        assert_eq!(pkgs[0].name, "bash");
        assert_eq!(pkgs[0].version, "5.2.15-2+b7");
        assert_eq!(pkgs[1].version, "1:1.2.13");
    }
}
