//! The pipeline files of docs/ci.md: they parse as YAML, they build the image, boot-test it with
//! a JUnit report and keep the image, and docs/ci.md shows exactly these files.

use std::path::{Path, PathBuf};

use yaml_rust2::{Yaml, YamlLoader};

fn docs() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs")
}

fn load(name: &str) -> (String, Yaml) {
    let text = std::fs::read_to_string(docs().join("ci").join(name)).unwrap();
    let mut docs = YamlLoader::load_from_str(&text)
        .unwrap_or_else(|e| panic!("docs/ci/{name} is not valid YAML: {e}"));
    assert_eq!(docs.len(), 1, "{name}: one YAML document");
    (text, docs.remove(0))
}

/// Every string anywhere in a YAML value.
fn strings(y: &Yaml, out: &mut Vec<String>) {
    match y {
        Yaml::String(s) => out.push(s.clone()),
        Yaml::Array(a) => a.iter().for_each(|v| strings(v, out)),
        Yaml::Hash(h) => h.iter().for_each(|(k, v)| {
            strings(k, out);
            strings(v, out);
        }),
        _ => {}
    }
}

fn all_text(y: &Yaml) -> String {
    let mut v = Vec::new();
    strings(y, &mut v);
    v.join("\n")
}

#[test]
fn github_actions_workflow_builds_tests_and_keeps_the_image() {
    let _t = appliance_qemu_tests::timed!();
    let (text, y) = load("github-actions.yml");
    let job = &y["jobs"]["image"];
    assert!(!job.is_badvalue(), "a job named image");
    assert_eq!(job["container"]["image"].as_str(), Some("debian:bookworm"));
    assert!(job["container"]["options"]
        .as_str()
        .unwrap()
        .contains("/dev/kvm"));
    let steps = job["steps"].as_vec().expect("steps");
    let runs: Vec<&str> = steps.iter().filter_map(|s| s["run"].as_str()).collect();
    assert!(runs.iter().any(|r| r.contains("doctor --install")));
    assert!(runs.iter().any(|r| r.contains("-- build")));
    assert!(runs
        .iter()
        .any(|r| r.contains("-- test --junit test-results.xml")));
    let uses: Vec<&str> = steps.iter().filter_map(|s| s["uses"].as_str()).collect();
    assert!(uses
        .iter()
        .any(|u| u.starts_with("actions/upload-artifact@")));
    assert!(uses.iter().any(|u| u.starts_with("actions/checkout@")));
    assert!(all_text(&y).contains("out/*.raw.zst"));
    shown_in_docs(&text);
}

#[test]
fn gitlab_ci_pipeline_builds_tests_and_keeps_the_image() {
    let _t = appliance_qemu_tests::timed!();
    let (text, y) = load("gitlab-ci.yml");
    assert_eq!(y["default"]["image"].as_str(), Some("debian:bookworm"));
    let job = &y["image"];
    let script: Vec<&str> = job["script"]
        .as_vec()
        .expect("a script")
        .iter()
        .filter_map(|s| s.as_str())
        .collect();
    assert!(script.iter().any(|s| s.contains("-- build")));
    assert!(script
        .iter()
        .any(|s| s.contains("-- test --junit test-results.xml")));
    assert_eq!(
        job["artifacts"]["reports"]["junit"].as_str(),
        Some("test-results.xml")
    );
    assert!(all_text(&job["artifacts"]).contains("out/*.raw.zst"));
    shown_in_docs(&text);
}

fn shown_in_docs(file: &str) {
    let page = std::fs::read_to_string(docs().join("ci.md")).unwrap();
    assert!(
        page.contains(file),
        "docs/ci.md does not show the current file; copy it there again"
    );
}
