//! Images for the scenario tests, built with the builder library (`appliance`, a
//! dev-dependency), as `appliance build` would build them.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use anyhow::{Context, Result};
use appliance::build::{build, BuildOptions};
use appliance::config::{Arch, Config};
use appliance_qemu_tests::test_image;
use appliance_scenarios::channel::{self, ChannelServer, TestCa};

/// A finished build: the raw image, its output directory and its manifest.
pub struct Built {
    pub image: PathBuf,
    pub out: PathBuf,
    pub manifest: serde_json::Value,
}

impl Built {
    /// Byte offset of the partition labelled `label` (from the manifest).
    pub fn offset(&self, label: &str) -> u64 {
        self.partition(label)["first_lba"]
            .as_u64()
            .unwrap_or_else(|| panic!("the manifest's {label} partition has no first_lba"))
            * 512
    }

    pub fn partition(&self, label: &str) -> &serde_json::Value {
        self.manifest["partitions"]
            .as_array()
            .and_then(|ps| ps.iter().find(|p| p["label"] == label))
            .unwrap_or_else(|| panic!("the manifest has no {label} partition"))
    }

    /// The names of the packages the manifest lists.
    pub fn packages(&self) -> Vec<&str> {
        self.manifest["packages"]
            .as_array()
            .map(|ps| ps.iter().filter_map(|p| p["name"].as_str()).collect())
            .unwrap_or_default()
    }
}

/// Builds the repository's `appliance.toml` with `overrides` into `out`, with the build
/// directory and caches in `build/`, after the same host-tool check as `appliance build`.
/// One build per architecture at a time: builds of one architecture share their working
/// directory (`build/<name>-<arch>`); an x86_64 and an arm64 build go on side by side.
pub fn build_image(overrides: &[String], out: &Path) -> Result<Built> {
    static ONE_BUILD_PER_ARCH: [Mutex<()>; 2] = [Mutex::new(()), Mutex::new(())];
    let config = Config::load(&test_image::config_path(), overrides)?;
    let lock = &ONE_BUILD_PER_ARCH[match config.image.arch {
        Arch::X86_64 => 0,
        Arch::Arm64 => 1,
    }];
    // A build that failed in another test leaves nothing this one depends on.
    let _one = lock.lock().unwrap_or_else(|e| e.into_inner());
    appliance::doctor::require("build")?;
    if config.image.arch == Arch::Arm64 && std::env::consts::ARCH != "aarch64" {
        appliance::doctor::require("arm64")?;
    }
    let summary = build(&config, &BuildOptions::new(out, test_image::build_dir()))?;
    let manifest_path = out.join(test_image::MANIFEST_FILE);
    let manifest = serde_json::from_slice(
        &std::fs::read(&manifest_path)
            .with_context(|| format!("cannot read {}", manifest_path.display()))?,
    )
    .with_context(|| format!("{} is not JSON", manifest_path.display()))?;
    Ok(Built {
        image: summary.image,
        out: out.to_path_buf(),
        manifest,
    })
}

/// The test image (see `appliance_qemu_tests::test_image`), built once per test binary. When
/// `builder/tests/image.rs` ran first, its root file system comes from the cache.
pub fn test_image() -> &'static Built {
    static BUILT: OnceLock<Result<Built, String>> = OnceLock::new();
    let built = BUILT.get_or_init(|| {
        test_image::overrides()
            .and_then(|o| build_image(&o, &test_image::out_dir()))
            .map_err(|e| format!("building the test image failed: {e:#}"))
    });
    match built {
        Ok(b) => b,
        Err(e) => panic!("{e}"),
    }
}

/// `build/test/<name>`, emptied.
pub fn workdir(name: &str) -> PathBuf {
    test_image::workdir(name).unwrap_or_else(|e| panic!("{e:#}"))
}

/// The versions the update tests install, one after the other.
pub const V1: &str = "1.0.0";
pub const V2: &str = "2.0.0";
pub const V3: &str = "3.0.0";

/// The unit v3 adds, which always fails, so v3's trial boot is not healthy.
pub const UNHEALTHY_UNIT: &str = "appliance-test-unhealthy.service";

/// A file that v2 and v3 have in their root and v1 does not: their overlay change.
pub const CHANGED_FILE: &str = "/usr/share/appliance-tests/changed-in-v2";

/// The test image as versions of one signed image (see [`update_images`]).
pub struct UpdateImages {
    pub v1: Built,
    pub v2: Built,
    pub v3: Built,
    /// The signing key the images trust (`build/test-keys/appliance-signing`).
    pub key: PathBuf,
}

impl Built {
    /// The signed update bundle the build wrote beside the image.
    pub fn bundle(&self) -> PathBuf {
        let name = self.manifest["name"].as_str().unwrap_or("jitsi-appliance");
        let version = self.manifest["version"].as_str().unwrap_or("");
        self.out.join(format!("{name}-{version}.update"))
    }
}

/// The signing key of the update tests, made once per checkout and reused, so the images that
/// trust it (the key is in their root) stay cached between runs.
pub fn test_signing_key() -> Result<(PathBuf, PathBuf)> {
    let dir = test_image::build_dir().join("test-keys");
    let private = dir.join("appliance-signing");
    let public = dir.join("appliance-signing.pub");
    if private.exists() && public.exists() {
        return Ok((private, public));
    }
    let _ = std::fs::remove_file(&private);
    let _ = std::fs::remove_file(&public);
    appliance::signing::generate(&dir, "appliance-signing", "appliance-tests")
}

/// `build/test-features`: the project's features (links to `overlays/`) plus `changed`, one
/// more file ([`CHANGED_FILE`]), and `unhealthy`, a unit that always fails, enabled. Made anew
/// each time, the same every time.
pub fn test_features() -> Result<PathBuf> {
    let dir = test_image::build_dir().join("test-features");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    for f in PROJECT_FEATURES {
        std::os::unix::fs::symlink(
            test_image::repo_root().join("overlays").join(f),
            dir.join(f),
        )
        .with_context(|| format!("cannot link {f} into {}", dir.display()))?;
    }
    let changed = dir.join("changed");
    let file = changed
        .join("files")
        .join(CHANGED_FILE.trim_start_matches('/'));
    std::fs::create_dir_all(file.parent().expect("a file in a folder"))?;
    std::fs::write(
        changed.join("feature.toml"),
        "description = \"Tests only: one more file, the overlay change between update versions\"\n",
    )?;
    std::fs::write(&file, "an overlay file that version 1 does not have\n")?;
    let feature = dir.join("unhealthy");
    let units = feature.join("files/etc/systemd/system");
    std::fs::create_dir_all(units.join("multi-user.target.wants"))?;
    std::fs::write(
        feature.join("feature.toml"),
        "description = \"Tests only: a unit that always fails, so the update health check finds this version unhealthy\"\n\
         requires = [\"updates\"]\n",
    )?;
    std::fs::write(
        units.join(UNHEALTHY_UNIT),
        "[Unit]\nDescription=Tests only: always fails, so the update health check finds this version unhealthy\n\n\
         [Service]\nType=oneshot\nExecStart=/usr/bin/false\n\n[Install]\nWantedBy=multi-user.target\n",
    )?;
    std::os::unix::fs::symlink(
        format!("/etc/systemd/system/{UNHEALTHY_UNIT}"),
        units.join("multi-user.target.wants").join(UNHEALTHY_UNIT),
    )?;
    Ok(dir)
}

/// The features `appliance.toml` enables with `jitsi.enabled=false`.
const PROJECT_FEATURES: [&str; 6] = [
    "base",
    "boot",
    "hardening",
    "firstboot",
    "meeting",
    "updates",
];

/// The overrides of one version of the signed test image: the test image's, a raw image only,
/// the test signing key, fast compression and `version`.
fn signed_overrides(key: &Path, public: &Path, version: &str) -> Result<Vec<String>> {
    let mut o = test_image::overrides()?;
    o.retain(|s| !s.starts_with("image.formats="));
    o.push(r#"image.formats=["raw"]"#.into());
    o.push(format!("image.version=\"{version}\""));
    o.push(format!("signing.key=\"{}\"", key.display()));
    o.push(format!("updates.trusted_keys=[\"{}\"]", public.display()));
    // The update channel stand-in, which serves v3 (see [`update_channel`]).
    o.push(format!("updates.url=\"{}\"", channel::url()));
    o.push(format!(
        "updates.ca_certificate=\"{}\"",
        channel_ca()?.cert_pem.display()
    ));
    // `--profile dev`'s fast compression: three roots at the default level would add minutes,
    // and what these tests check does not depend on it.
    o.push("root.compression_level=1".into());
    Ok(o)
}

/// The CA of the update channel stand-in, kept in `build/test-keys` so that the images that
/// trust it stay the same from one run to the next.
fn channel_ca() -> Result<TestCa> {
    TestCa::load_or_make(&test_image::build_dir().join("test-keys"))
}

/// The update channel the signed test images name (`[updates] url`), serving v3's build output
/// (`index.json`, its signature and the bundle) on 127.0.0.1:[`channel::PORT`], closed until a
/// scenario opens it. Started once per test binary.
pub fn update_channel() -> &'static ChannelServer {
    static SERVER: OnceLock<Result<ChannelServer, String>> = OnceLock::new();
    let server = SERVER.get_or_init(|| {
        let v3 = &update_images().v3;
        channel_ca()
            .and_then(|ca| ChannelServer::start(&ca, &v3.out, channel::PORT))
            .map_err(|e| format!("the update channel stand-in did not start: {e:#}"))
    });
    match server {
        Ok(s) => s,
        Err(e) => panic!("{e}"),
    }
}

/// v1, v2 and v3 of the test image, signed with the test key, built once per test binary into
/// `build/test-out-v1`, `-v2`, `-v3`. v2 differs from v1 in its version and one overlay file
/// (the feature `changed`), v3 also in the feature `unhealthy` ([`test_features`]); all three
/// share the package layer.
pub fn update_images() -> &'static UpdateImages {
    static BUILT: OnceLock<Result<UpdateImages, String>> = OnceLock::new();
    let built = BUILT.get_or_init(|| {
        // The test image first: the machines that boot it wait for it, and the three versions
        // are then built while they boot (one x86_64 build at a time).
        let _ = test_image();
        (|| -> Result<UpdateImages> {
            let (key, public_key) = test_signing_key()?;
            let features = test_features()?;
            let out = |v: &str| test_image::build_dir().join(format!("test-out-v{v}"));
            let mut built = Vec::new();
            for (n, version) in [(1, V1), (2, V2), (3, V3)] {
                let mut o = signed_overrides(&key, &public_key, version)?;
                if version != V1 {
                    o.push(format!("features.dir=\"{}\"", features.display()));
                    let mut enabled: Vec<String> =
                        PROJECT_FEATURES.iter().map(|f| format!("{f:?}")).collect();
                    enabled.push("\"changed\"".into());
                    if version == V3 {
                        enabled.push("\"unhealthy\"".into());
                    }
                    o.push(format!("features.enabled=[{}]", enabled.join(", ")));
                }
                let t = std::time::Instant::now();
                let b = build_image(&o, &out(&n.to_string()))
                    .with_context(|| format!("building version {version}"))?;
                eprintln!(
                    "update images: version {version} built in {:.0} s",
                    t.elapsed().as_secs_f64()
                );
                built.push(b);
            }
            let v3 = built.pop().expect("three builds");
            let v2 = built.pop().expect("three builds");
            let v1 = built.pop().expect("three builds");
            Ok(UpdateImages { v1, v2, v3, key })
        })()
        .map_err(|e| format!("building the update test images failed: {e:#}"))
    });
    match built {
        Ok(b) => b,
        Err(e) => panic!("{e}"),
    }
}
