//! What is in an image, proved: a signed build that `appliance verify` and `ssh-keygen -Y
//! verify` accept (and refuse once anything is changed), an SBOM that independent validators
//! accept and that matches the image, a lock that `--locked` installs exactly and that stops
//! the build when the packages drift, and a locked build repeated from empty caches, in
//! another directory, with no network, from a mirror made by `appliance mirror export`, that
//! gives the same bytes.
//!
//! The builds use the project's appliance.toml without Jitsi's own packages (their repository
//! is not reachable from every test machine), with a signing key made for the test.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use appliance_qemu_tests::test_image;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .expect("repository root")
}

/// What every test starts from, made once: the signing key, the lock and the mirror.
struct Prepared {
    dir: PathBuf,
    /// The test image's local .deb directory (`appliance_qemu_tests::test_image`).
    local_debs: PathBuf,
    mirror: PathBuf,
}

/// The signed locked build, made once on top of [`Prepared`].
struct Signed {
    dir: PathBuf,
    out: PathBuf,
    public_key: PathBuf,
}

fn appliance(args: &[&str], env: &[(&str, &Path)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_appliance"));
    cmd.current_dir(repo_root()).args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("running appliance");
    eprintln!(
        "$ appliance {}\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The test image's package set (its local package included), so that `appliance lock` finds
/// the package layer `builder/tests/image.rs` made in the cache instead of installing it again.
fn overrides(p: &Prepared) -> Vec<String> {
    let dir = &p.dir;
    vec![
        "jitsi.enabled=false".into(),
        format!("packages.local_debs=\"{}\"", p.local_debs.display()),
        format!(
            "updates.trusted_keys=[\"{}\"]",
            dir.join("keys/appliance-signing.pub").display()
        ),
        format!(
            "packages.lock_file=\"{}\"",
            dir.join("appliance.lock").display()
        ),
    ]
}

fn with_sets(args: &[&str], sets: &[String]) -> Vec<String> {
    let mut v: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    for s in sets {
        v.push("--set".into());
        v.push(s.clone());
    }
    v
}

fn run_ok(args: Vec<String>, env: &[(&str, &Path)]) -> Output {
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = appliance(&refs, env);
    assert!(out.status.success(), "appliance {} failed", refs.join(" "));
    out
}

/// The key, the lock (`appliance lock`) and the mirror (`appliance mirror export`), before
/// any build: the offline build in another directory and the signed builds here then go on
/// side by side, and share nothing while they run.
fn prepared() -> &'static Prepared {
    static P: OnceLock<Prepared> = OnceLock::new();
    P.get_or_init(|| {
        let dir = repo_root().join("build/test-supply-chain");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let local_debs = test_image::local_deb_dir(&test_image::build_dir().join("test-debs"))
            .unwrap_or_else(|e| panic!("{e:#}"));
        let p = Prepared {
            mirror: dir.join("mirror"),
            dir,
            local_debs,
        };
        run_ok(
            vec![
                "key".into(),
                "generate".into(),
                "--out".into(),
                p.dir.join("keys").display().to_string(),
            ],
            &[],
        );
        let sets = overrides(&p);
        run_ok(with_sets(&["lock"], &sets), &[]);
        run_ok(
            with_sets(
                &["mirror", "export", &p.mirror.display().to_string()],
                &sets,
            ),
            &[],
        );
        assert!(p.mirror.join("dists/bookworm/InRelease").is_file());
        assert!(p.mirror.join("repo-key.asc").is_file());
        p
    })
}

fn signed() -> &'static Signed {
    static S: OnceLock<Signed> = OnceLock::new();
    S.get_or_init(|| {
        let p = prepared();
        let dir = p.dir.clone();
        let key = dir.join("keys/appliance-signing");
        let sets = overrides(p);
        // An earlier build of another version (a different system layer, the same packages)
        // leaves the package layer in the cache, so the signed build below is layered: it
        // takes the packages from the cache and makes only the system layer anew. The offline
        // build in another directory starts from nothing, so their equality shows that caching
        // changes no output byte. All use `--profile dev`: the compression level changes
        // how long a build takes, not whether two builds agree, and saves minutes here.
        let mut earlier = sets.clone();
        earlier.push("image.version=\"0.0.1\"".into());
        earlier.push("image.formats=[\"raw\"]".into());
        run_ok(
            with_sets(
                &[
                    "build",
                    "--locked",
                    "--profile",
                    "dev",
                    "--out",
                    &dir.join("earlier").display().to_string(),
                ],
                &earlier,
            ),
            &[],
        );
        let out = dir.join("out");
        let built = run_ok(
            with_sets(
                &[
                    "build",
                    "--locked",
                    "--profile",
                    "dev",
                    "--out",
                    &out.display().to_string(),
                ],
                &sets,
            ),
            &[("APPLIANCE_SIGNING_KEY", &key)],
        );
        let _ = std::fs::remove_dir_all(dir.join("earlier"));
        let log = String::from_utf8_lossy(&built.stderr);
        assert!(
            log.lines()
                .any(|l| l.contains("packages") && l.contains("from cache")),
            "the signed build did not take its package layer from the cache"
        );
        Signed {
            public_key: dir.join("keys/appliance-signing.pub"),
            dir,
            out,
        }
    })
}

#[test]
fn signed_outputs_verify_and_every_change_is_caught() {
    let _t = appliance_qemu_tests::timed!();
    let s = signed();
    let key = s.public_key.display().to_string();
    let out = appliance(
        &["verify", &s.out.display().to_string(), "--key", &key],
        &[],
    );
    assert!(
        out.status.success(),
        "appliance verify refused a fresh build"
    );
    let report = String::from_utf8_lossy(&out.stdout);
    for what in ["signature", "checksums", "root file system", "SBOM"] {
        assert!(
            report.contains(what),
            "verify did not check the {what}:\n{report}"
        );
    }
    // A third party with OpenSSH only.
    let allowed = s.dir.join("allowed_signers");
    let public = std::fs::read_to_string(&s.public_key).unwrap();
    std::fs::write(
        &allowed,
        format!("builder namespaces=\"appliance-release\" {public}"),
    )
    .unwrap();
    let status = Command::new("ssh-keygen")
        .args(["-Y", "verify", "-f"])
        .arg(&allowed)
        .args(["-I", "builder", "-n", "appliance-release", "-s"])
        .arg(s.out.join("SHA256SUMS.sig"))
        .stdin(std::fs::File::open(s.out.join("SHA256SUMS")).unwrap())
        .status()
        .expect("ssh-keygen (run `appliance doctor --install`)");
    assert!(
        status.success(),
        "ssh-keygen -Y verify refused SHA256SUMS.sig"
    );

    // A copy of the outputs with one thing changed at a time.
    let cases: Vec<(&str, Change, &str)> = vec![
        (
            "a byte of the compressed image",
            Box::new(|d: &Path| flip_byte(&d.join("jitsi-appliance.raw.zst"), 5000)),
            "does not match its checksum",
        ),
        (
            "a byte of the root file system, with the checksums made again",
            Box::new(|d: &Path| {
                let manifest: serde_json::Value = serde_json::from_slice(
                    &std::fs::read(d.join("jitsi-appliance.manifest.json")).unwrap(),
                )
                .unwrap();
                let root = manifest["partitions"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|p| p["label"] == "root-a")
                    .unwrap();
                let offset = root["first_lba"].as_u64().unwrap() * 512 + 8192;
                flip_byte(&d.join("jitsi-appliance.raw"), offset);
                resum(d, "jitsi-appliance.raw");
            }),
            "SHA256SUMS.sig does not verify",
        ),
        (
            "the signature",
            Box::new(|d: &Path| std::fs::remove_file(d.join("SHA256SUMS.sig")).unwrap()),
            "not signed",
        ),
    ];
    for (what, change, expect) in cases {
        let copy = s.dir.join("tampered");
        let _ = std::fs::remove_dir_all(&copy);
        std::fs::create_dir_all(&copy).unwrap();
        for e in std::fs::read_dir(&s.out).unwrap() {
            let e = e.unwrap();
            let status = Command::new("cp")
                .args(["--sparse=always"])
                .arg(e.path())
                .arg(copy.join(e.file_name()))
                .status()
                .unwrap();
            assert!(status.success());
        }
        change(&copy);
        let out = appliance(&["verify", &copy.display().to_string(), "--key", &key], &[]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "verify accepted outputs with {what} changed"
        );
        assert!(
            err.contains(expect),
            "{what}: {err:?} should say {expect:?}"
        );
    }
    let _ = std::fs::remove_dir_all(s.dir.join("tampered"));
    // Another key is refused.
    let other = s.dir.join("other-keys");
    run_ok(
        vec![
            "key".into(),
            "generate".into(),
            "--out".into(),
            other.display().to_string(),
        ],
        &[],
    );
    let out = appliance(
        &[
            "verify",
            &s.out.display().to_string(),
            "--key",
            &other.join("appliance-signing.pub").display().to_string(),
        ],
        &[],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not trusted"));
}

/// Something done to a copy of the outputs.
type Change = Box<dyn Fn(&Path)>;

fn flip_byte(file: &Path, offset: u64) {
    use std::io::{Read, Seek, SeekFrom, Write};
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(file)
        .unwrap();
    let mut b = [0u8];
    f.seek(SeekFrom::Start(offset)).unwrap();
    f.read_exact(&mut b).unwrap();
    f.seek(SeekFrom::Start(offset)).unwrap();
    f.write_all(&[b[0] ^ 0x5a]).unwrap();
}

/// Puts the new checksum of `name` into SHA256SUMS (the signature then no longer matches).
fn resum(dir: &Path, name: &str) {
    let out = Command::new("sha256sum")
        .arg(dir.join(name))
        .output()
        .unwrap();
    let sum = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    let sums = std::fs::read_to_string(dir.join("SHA256SUMS")).unwrap();
    let new: String = sums
        .lines()
        .map(|l| {
            if l.ends_with(&format!("  {name}")) {
                format!("{sum}  {name}\n")
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    std::fs::write(dir.join("SHA256SUMS"), new).unwrap();
}

/// spdx-tools and ntia-conformance-checker from PyPI, in a virtual environment of the test
/// (made without pip, which Debian's python3 has no `ensurepip` for, and filled by the
/// system's pip).
fn spdx_tools() -> PathBuf {
    let venv = repo_root().join("build/tools/spdx-venv");
    let bin = venv.join("bin");
    if bin.join("pyspdxtools").is_file() && bin.join("sbomcheck").is_file() {
        return bin;
    }
    let _ = std::fs::remove_dir_all(&venv);
    let python = ["/usr/bin/python3", "python3"]
        .into_iter()
        .find(|p| Command::new(p).arg("--version").output().is_ok())
        .expect("python3 is needed: run `appliance doctor --install`");
    let ok = Command::new(python)
        .args(["-m", "venv", "--without-pip"])
        .arg(&venv)
        .status()
        .unwrap()
        .success()
        && Command::new(python)
            .args(["-m", "pip", "--python"])
            .arg(bin.join("python"))
            .args([
                "install",
                "--quiet",
                "spdx-tools==0.8.5",
                "ntia-conformance-checker==6.0.0",
            ])
            .status()
            .unwrap()
            .success();
    assert!(ok, "installing spdx-tools and ntia-conformance-checker from PyPI failed (python3-pip is needed: `appliance doctor --install`)");
    bin
}

#[test]
fn the_sbom_passes_independent_validators_and_describes_the_image() {
    let _t = appliance_qemu_tests::timed!();
    let s = signed();
    let sbom = s.out.join("jitsi-appliance.spdx.json");
    let bin = spdx_tools();
    let out = Command::new(bin.join("pyspdxtools"))
        .arg("-i")
        .arg(&sbom)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "pyspdxtools refused the SBOM:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new(bin.join("sbomcheck"))
        .arg(&sbom)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the SBOM does not meet the NTIA minimum elements:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let doc: serde_json::Value = serde_json::from_slice(&std::fs::read(&sbom).unwrap()).unwrap();
    let packages = doc["packages"].as_array().unwrap();
    let lock: toml::Table =
        toml::from_str(&std::fs::read_to_string(s.dir.join("appliance.lock")).unwrap()).unwrap();
    let locked = lock["packages"].as_array().unwrap();
    let debs: Vec<&serde_json::Value> = packages
        .iter()
        .filter(|p| p["SPDXID"].as_str().unwrap().starts_with("SPDXRef-deb-"))
        .collect();
    assert_eq!(
        debs.len(),
        locked.len(),
        "every locked package is in the SBOM"
    );
    let bash = debs
        .iter()
        .find(|p| p["name"] == "bash")
        .expect("bash in the SBOM");
    let coreutils = debs
        .iter()
        .find(|p| p["name"] == "coreutils")
        .expect("coreutils in the SBOM");
    assert_eq!(bash["supplier"], "Organization: Debian");
    assert!(bash["externalRefs"][0]["referenceLocator"]
        .as_str()
        .unwrap()
        .starts_with("pkg:deb/debian/bash@"));
    assert_eq!(
        bash["checksums"][0]["checksumValue"]
            .as_str()
            .unwrap()
            .len(),
        64
    );
    // coreutils' copyright file is machine-readable and names only licenses SPDX knows; bash's
    // names some it does not ("MIT-like", "permissive"), so its licence is not asserted.
    let declared = coreutils["licenseDeclared"].as_str().unwrap();
    assert!(
        declared.contains("GPL-3.0-or-later") && declared.matches("GPL-3.0-or-later").count() == 1,
        "coreutils' licence: {declared}"
    );
    assert_eq!(bash["licenseDeclared"], "NOASSERTION");
    let crates = packages
        .iter()
        .filter(|p| p["SPDXID"].as_str().unwrap().starts_with("SPDXRef-crate-"))
        .count();
    assert!(
        crates > 10,
        "the crates of appliance-admin are listed ({crates})"
    );
    let rels = doc["relationships"].as_array().unwrap();
    for kind in ["DESCRIBES", "CONTAINS", "DEPENDS_ON"] {
        assert!(
            rels.iter().any(|r| r["relationshipType"] == kind),
            "no {kind} relationship"
        );
    }
    let manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(s.out.join("jitsi-appliance.manifest.json")).unwrap(),
    )
    .unwrap();
    let root_hash = manifest["verity"]["root_hash"].as_str().unwrap();
    assert!(
        packages[0]["comment"].as_str().unwrap().contains(root_hash),
        "the image's root hash is in the SBOM"
    );
}

#[test]
fn a_lock_that_no_longer_matches_stops_the_build_and_names_the_packages() {
    let _t = appliance_qemu_tests::timed!();
    let s = signed();
    let dir = s.dir.join("drift");
    std::fs::create_dir_all(&dir).unwrap();
    let text = std::fs::read_to_string(s.dir.join("appliance.lock")).unwrap();
    // One package at a version the archive never had, one whose .deb is not what was locked.
    let mut lock: toml::Table = toml::from_str(&text).unwrap();
    let packages = lock["packages"].as_array_mut().unwrap();
    let name_of = |p: &toml::Value| p["name"].as_str().unwrap().to_string();
    let first = name_of(&packages[0]);
    make_impossible(&mut packages[0]);
    let second = name_of(&packages[1]);
    packages[1]["sha256"] = toml::Value::String("0".repeat(64));
    std::fs::write(dir.join("appliance.lock"), toml::to_string(&lock).unwrap()).unwrap();
    let mut sets = overrides(prepared());
    sets.push(format!(
        "packages.lock_file=\"{}\"",
        dir.join("appliance.lock").display()
    ));
    let args = with_sets(
        &[
            "build",
            "--locked",
            "--out",
            &dir.join("out").display().to_string(),
        ],
        &sets,
    );
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = appliance(&refs, &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "a build from a drifted lock succeeded"
    );
    assert!(
        err.contains(&second) && err.contains("do not match the SHA-256 in appliance.lock"),
        "{err}"
    );
    assert!(
        !dir.join("out/jitsi-appliance.raw").exists(),
        "nothing may be made"
    );
    // With the changed hash put back, the missing version is named.
    packages_fix(&dir, &text, &first);
    let out = appliance(&refs, &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains(&first) && err.contains("not available"),
        "{err}"
    );
}

/// Gives a locked package a version the archive never had, with the archive path that version
/// would have.
fn make_impossible(p: &mut toml::Value) {
    let version = p["version"].as_str().unwrap().to_string();
    let without_epoch = version.split_once(':').map_or(version.as_str(), |(_, v)| v);
    let filename = p["filename"]
        .as_str()
        .unwrap()
        .replace(&format!("_{without_epoch}_"), "_0-appliance-test_");
    p["version"] = toml::Value::String("999:0-appliance-test".into());
    p["filename"] = toml::Value::String(filename);
}

/// Writes the original lock with only `name` set to an impossible version.
fn packages_fix(dir: &Path, original: &str, name: &str) {
    let mut lock: toml::Table = toml::from_str(original).unwrap();
    for p in lock["packages"].as_array_mut().unwrap() {
        if p["name"].as_str() == Some(name) {
            make_impossible(p);
        }
    }
    std::fs::write(dir.join("appliance.lock"), toml::to_string(&lock).unwrap()).unwrap();
    // A file of that impossible name left in the package cache by an earlier run (when the
    // archive path was the real one) would hold the locked bytes, and be used.
    if let Ok(suites) = std::fs::read_dir(repo_root().join("build/cache/debs")) {
        for suite in suites.flatten() {
            for deb in std::fs::read_dir(suite.path())
                .into_iter()
                .flatten()
                .flatten()
            {
                if deb
                    .file_name()
                    .to_string_lossy()
                    .contains("999%3a0-appliance-test")
                {
                    let _ = std::fs::remove_file(deb.path());
                }
            }
        }
    }
}

#[test]
fn a_locked_build_from_a_mirror_without_network_in_another_directory_is_identical() {
    let _t = appliance_qemu_tests::timed!();
    // Begun before the signed build is done: the two share only the mirror, made beforehand.
    let p = prepared();
    let mirror = &p.mirror;
    // Empty caches, another build directory, the in-image program compiled anew, and no
    // network at all.
    let other = p.dir.join("elsewhere");
    let _ = std::fs::remove_dir_all(&other);
    std::fs::create_dir_all(&other).unwrap();
    let mut sets = overrides(p);
    sets.push(format!(
        "packages.cache_dir=\"{}\"",
        other.join("cache").display()
    ));
    let out = other.join("out");
    let mut args: Vec<String> = vec!["--net".into(), env!("CARGO_BIN_EXE_appliance").into()];
    args.extend(with_sets(
        &[
            "build",
            "--offline",
            "--profile",
            "dev",
            "--mirror-dir",
            &mirror.display().to_string(),
            "--build-dir",
            &other.join("work").display().to_string(),
            "--out",
            &out.display().to_string(),
        ],
        &sets,
    ));
    let status = Command::new("unshare")
        .current_dir(repo_root())
        .args(&args)
        .env(
            "APPLIANCE_SIGNING_KEY",
            p.dir.join("keys/appliance-signing"),
        )
        // The in-image program compiled again, in another directory and without network:
        // its bytes must not depend on where or when it was compiled either.
        .env("APPLIANCE_ADMIN_TARGET_DIR", other.join("cargo-target"))
        .status()
        .expect("unshare (util-linux)");
    assert!(status.success(), "the offline build failed");
    let s = signed();
    let a = std::fs::read_to_string(s.out.join("SHA256SUMS")).unwrap();
    let b = std::fs::read_to_string(out.join("SHA256SUMS")).unwrap();
    assert_eq!(
        a, b,
        "two builds of the same lock differ, one layered on the cache, one from nothing (see the SHA256SUMS above)"
    );
    // Its own package cache and outputs are kept only when they differ, for a look.
    let _ = std::fs::remove_dir_all(&other);
}
