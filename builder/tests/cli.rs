//! The command line as a user meets it: help that teaches, and clear errors (file, key, fix)
//! instead of panics or backtraces.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn appliance(args: &[&str], dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_appliance"))
        .args(args)
        .current_dir(dir)
        .env_remove("RUST_BACKTRACE")
        .output()
        .expect("the appliance binary runs")
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn assert_clean_error(o: &Output) {
    let e = stderr(o);
    assert!(!o.status.success(), "expected failure, got success: {e}");
    assert!(!e.contains("panicked"), "a panic reached the user: {e}");
    assert!(
        !e.contains("stack backtrace"),
        "a backtrace reached the user: {e}"
    );
    assert!(
        e.lines().any(|l| l.starts_with("error: ")),
        "errors are reported on a line starting with `error: `: {e}"
    );
}

#[test]
fn help_lists_every_command_and_the_jitsi_switch() {
    let _t = appliance_qemu_tests::timed!();
    let o = appliance(&["--help"], &repo_root());
    assert!(o.status.success());
    let text = String::from_utf8_lossy(&o.stdout);
    for cmd in [
        "build", "test", "run", "inspect", "write", "doctor", "key", "lock", "mirror", "verify",
        "update",
    ] {
        assert!(text.contains(cmd), "--help lacks {cmd}: {text}");
    }
    assert!(text.contains("jitsi.enabled=false"), "{text}");
    let o = appliance(&["build", "--help"], &repo_root());
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains("--set") && text.contains("--refresh"),
        "{text}"
    );
}

#[test]
fn missing_config_file_says_where_to_run() {
    let _t = appliance_qemu_tests::timed!();
    let dir = tempfile::tempdir().unwrap();
    let o = appliance(&["build"], dir.path());
    assert_clean_error(&o);
    assert!(stderr(&o).contains("appliance.toml"), "{}", stderr(&o));
}

#[test]
fn unknown_key_names_file_line_and_key() {
    let _t = appliance_qemu_tests::timed!();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("appliance.toml"),
        "[image]\nname = \"x\"\n\n[root]\nverity = true\ncompresion = \"zstd\"\n",
    )
    .unwrap();
    let o = appliance(&["build"], dir.path());
    assert_clean_error(&o);
    let e = stderr(&o);
    assert!(
        e.contains("appliance.toml") && e.contains("line 6") && e.contains("compresion"),
        "{e}"
    );
}

#[test]
fn bad_override_is_named() {
    let _t = appliance_qemu_tests::timed!();
    let o = appliance(
        &[
            "build",
            "--set",
            "boot.uefi=maybe",
            "--set",
            "boot.bios=false",
        ],
        &repo_root(),
    );
    assert_clean_error(&o);
    assert!(stderr(&o).contains("--set"), "{}", stderr(&o));
}

#[test]
fn unreachable_jitsi_repository_stops_the_build_with_the_fix() {
    let _t = appliance_qemu_tests::timed!();
    let out = tempfile::tempdir().unwrap();
    let o = appliance(
        &[
            "build",
            "--config",
            &repo_root().join("appliance.toml").display().to_string(),
            // Port 9 on loopback refuses at once: the same failure as an unreachable repository.
            "--set",
            "jitsi.repository.key_url=\"https://127.0.0.1:9/jitsi-key.gpg.key\"",
            "--out",
            &out.path().join("out").display().to_string(),
            "--build-dir",
            &out.path().join("build").display().to_string(),
        ],
        out.path(),
    );
    assert_clean_error(&o);
    let e = stderr(&o);
    assert!(e.contains("\"jitsi\"") && e.contains("signing key"), "{e}");
    assert!(
        e.contains("--set jitsi.enabled=false"),
        "the error says how to build without it: {e}"
    );
    assert!(!out.path().join("out/jitsi-appliance.raw").exists());
}

#[test]
fn inspect_of_a_non_image_is_a_clear_error() {
    let _t = appliance_qemu_tests::timed!();
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("not-an-image.raw");
    std::fs::write(&f, vec![0u8; 1 << 20]).unwrap();
    let o = appliance(&["inspect", &f.display().to_string()], dir.path());
    assert_clean_error(&o);
    assert!(stderr(&o).contains("not-an-image.raw"), "{}", stderr(&o));
}

/// The shipped binary carries no TLS stack: the network clients of the meeting tests live in
/// the test-only crate `appliance-scenarios`, which the builder does not depend on.
#[test]
fn the_binary_links_no_tls_library() {
    let _t = appliance_qemu_tests::timed!();
    let ldd =
        appliance::host::require_program("ldd", "libc-bin").unwrap_or_else(|e| panic!("{e:#}"));
    let out = appliance::host::run(Command::new(ldd).arg(env!("CARGO_BIN_EXE_appliance")))
        .unwrap_or_else(|e| panic!("{e:#}"));
    let libs = String::from_utf8_lossy(&out.stdout);
    assert!(libs.contains("libc.so"), "ldd listed no libc: {libs}");
    for tls in ["libssl", "libcrypto"] {
        assert!(
            !libs.contains(tls),
            "the appliance binary links {tls}:\n{libs}"
        );
    }
}

/// Nor can one come back through a dependency: no TLS, HTTP or XML crate is reachable from the
/// `appliance` package's normal dependencies.
#[test]
fn no_tls_crate_is_a_dependency() {
    let _t = appliance_qemu_tests::timed!();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = appliance::host::run(
        Command::new(cargo)
            .current_dir(repo_root())
            .args(["tree", "--offline", "-p", "appliance", "-e", "normal"])
            .args(["--prefix", "none", "--format", "{p}"]),
    )
    .unwrap_or_else(|e| panic!("{e:#}"));
    let tree = String::from_utf8_lossy(&out.stdout);
    assert!(tree.contains("appliance-qemu-tests"), "{tree}");
    for name in ["openssl", "native-tls", "ureq", "quick-xml"] {
        assert!(
            !tree.lines().any(|l| l.starts_with(&format!("{name} "))),
            "the appliance package depends on {name}:\n{tree}"
        );
    }
}

/// The process ids of running programs whose command line contains `needle`.
fn processes_with(needle: &str) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains(needle) {
            out.push(pid);
        }
    }
    out
}

#[test]
fn a_stopped_build_stops_its_programs_and_leaves_no_unfinished_files() {
    let _t = appliance_qemu_tests::timed!();
    let dir = tempfile::tempdir().unwrap();
    // An empty cache of its own, so the build has to run mmdebstrap.
    let cache = dir.path().join("cache");
    let mut child = Command::new(env!("CARGO_BIN_EXE_appliance"))
        .current_dir(repo_root())
        .args(["build", "--set", "jitsi.enabled=false", "--set"])
        .arg(format!("packages.cache_dir=\"{}\"", cache.display()))
        .arg("--build-dir")
        .arg(dir.path().join("work"))
        .arg("--out")
        .arg(dir.path().join("out"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until mmdebstrap is at work for this build.
    let marker = cache.display().to_string();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
    while processes_with(&marker).iter().all(|p| *p == child.id()) {
        assert!(
            std::time::Instant::now() < deadline,
            "mmdebstrap never started"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "the build ended before mmdebstrap started"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    std::thread::sleep(std::time::Duration::from_secs(2));
    // SAFETY: sends SIGTERM to the child we started.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(128 + libc::SIGTERM),
        "{}",
        stderr(&out)
    );
    assert!(stderr(&out).contains("interrupted"), "{}", stderr(&out));
    let left = processes_with(&marker);
    assert!(
        left.is_empty(),
        "programs of the stopped build still run: {left:?}"
    );
    let mut partial = Vec::new();
    for d in [
        cache.join("layers/jitsi-appliance-x86_64"),
        dir.path().join("out"),
        dir.path().join("work/jitsi-appliance-x86_64"),
    ] {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            if e.file_name().to_string_lossy().ends_with(".partial") {
                partial.push(e.path());
            }
        }
    }
    assert!(
        partial.is_empty(),
        "unfinished files left behind: {partial:?}"
    );
}

/// A bundle of `version` signed with a new key in `dir`; returns the bundle and the key's .pub.
fn signed_bundle(dir: &Path, key_name: &str, version: &str) -> (PathBuf, PathBuf) {
    use appliance_spec::bundle::{BundleManifest, FORMAT, PAYLOAD};
    let (private, public) = appliance::signing::generate(dir, key_name, "test").unwrap();
    let key = appliance::signing::SigningKey::load(&private).unwrap();
    let payload: Vec<(&str, PathBuf)> = PAYLOAD
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let p = dir.join(format!("payload-{i}"));
            std::fs::write(&p, vec![i as u8 + 1; 3000 + i]).unwrap();
            (*name, p)
        })
        .collect();
    let manifest = BundleManifest {
        format: FORMAT,
        name: "meet".into(),
        version: version.parse().unwrap(),
        min_version: None,
        arch: appliance_spec::Arch::X86_64,
        board: appliance_spec::Board::Generic,
        data_schema: 1,
        root_hash: "ab".repeat(32),
        kernel_version: "6.1.0".into(),
        cmdline: vec![],
        files: vec![],
    };
    let out = dir.join(format!("meet-{version}.update"));
    appliance::bundle::write(&out, manifest, &payload, &key, 1_700_000_000).unwrap();
    (out, public)
}

/// `update push` checks the bundle before anything is sent, streams it to the machine's /data
/// and runs `update apply` there. `ssh` is a stand-in that records what it was asked to do and
/// keeps what it received.
#[test]
fn update_push_checks_the_bundle_then_sends_and_applies_it() {
    let _t = appliance_qemu_tests::timed!();
    let d = tempfile::tempdir().unwrap();
    let (bundle, public) = signed_bundle(d.path(), "ours", "1.2.0");
    let (_, stranger) = signed_bundle(&d.path().join("other"), "theirs", "1.2.0");
    let bin = d.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let log = d.path().join("ssh.log");
    let received = d.path().join("received");
    let script = format!(
        "#!/bin/sh\nprintf '%s\\n' \"$*\" >> {log}\ncase \"$*\" in *'cat >'*) cat > {received};; esac\nexit 0\n",
        log = log.display(),
        received = received.display()
    );
    let ssh = bin.join("ssh");
    appliance_qemu_tests::host::write_program(&ssh, &script).unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let push = |key: &Path, bundle: &Path| {
        Command::new(env!("CARGO_BIN_EXE_appliance"))
            .args(["update", "push"])
            .arg(bundle)
            .args([
                "--ssh",
                "admin@meet.example.org",
                "--port",
                "2222",
                "--reboot",
            ])
            .arg("--key")
            .arg(key)
            .current_dir(d.path())
            .env("PATH", &path)
            .env_remove("RUST_BACKTRACE")
            .output()
            .unwrap()
    };

    // Signed by a key that is not the signer's: refused here, nothing sent.
    let o = push(&stranger, &bundle);
    assert_clean_error(&o);
    assert!(
        stderr(&o).contains("refused here already"),
        "{}",
        stderr(&o)
    );
    assert!(!log.exists(), "ssh ran for a refused bundle");

    // A changed byte in the payload: refused here too.
    let mut bytes = std::fs::read(&bundle).unwrap();
    // inside the last payload member (its bytes are all 4)
    let at = bytes
        .windows(64)
        .position(|w| w.iter().all(|&b| b == 4))
        .unwrap();
    bytes[at] ^= 1;
    let altered = d.path().join("altered.update");
    std::fs::write(&altered, &bytes).unwrap();
    let o = push(&public, &altered);
    assert_clean_error(&o);
    assert!(!log.exists(), "ssh ran for an altered bundle");

    // The real one: sent whole to /data, applied with --reboot, then removed.
    let o = push(&public, &bundle);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        std::fs::read(&received).unwrap(),
        std::fs::read(&bundle).unwrap(),
        "the machine did not receive the bundle as it is"
    );
    let calls = std::fs::read_to_string(&log).unwrap();
    let calls: Vec<&str> = calls.lines().collect();
    assert_eq!(calls.len(), 2, "{calls:?}");
    for c in &calls {
        assert!(c.starts_with("-p 2222 -- admin@meet.example.org "), "{c}");
    }
    assert!(
        calls[0].contains("cat > /data/appliance/update/meet-1.2.0.update.part"),
        "{}",
        calls[0]
    );
    assert!(
        calls[1].contains(
            "sudo appliance-admin update apply /data/appliance/update/meet-1.2.0.update --reboot"
        ) && calls[1].contains("rm -f /data/appliance/update/meet-1.2.0.update"),
        "{}",
        calls[1]
    );
}
