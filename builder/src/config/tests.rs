use super::*;

const MINIMAL: &str = "[image]\nname = \"demo\"\n";

fn parse(text: &str, overrides: &[&str]) -> Result<Config> {
    let o: Vec<String> = overrides.iter().map(|s| s.to_string()).collect();
    Config::from_str_with(text, "appliance.toml", PathBuf::from("."), &o)
}

#[test]
fn defaults_fill_a_minimal_file() {
    let c = parse(MINIMAL, &[]).unwrap();
    assert_eq!(c.image.arch, Arch::X86_64);
    assert_eq!(c.debian.suite, "bookworm");
    assert!(c.boot.uefi && c.bios() && c.root.verity);
    assert_eq!(c.kernel_package(), "linux-image-cloud-amd64");
    assert_eq!(c.image.formats, vec![Format::Raw, Format::RawZst]);
    assert_eq!(c.hash.len(), 64);
}

#[test]
fn unknown_key_names_line_and_key() {
    let err = parse("[image]\nname = \"demo\"\n\n[boot]\nuefii = true\n", &[])
        .unwrap_err()
        .to_string();
    assert!(err.contains("line 5"), "{err}");
    assert!(err.contains("uefii"), "{err}");
    assert!(err.contains("hint"), "{err}");
}

#[test]
fn bad_value_names_line() {
    let err = parse("[image]\nname = \"demo\"\narch = \"sparc\"\n", &[])
        .unwrap_err()
        .to_string();
    assert!(err.contains("line 3"), "{err}");
    assert!(err.contains("sparc"), "{err}");
}

#[test]
fn sizes_parse_and_reject() {
    assert_eq!(Size::parse("512M").unwrap().0, 512 << 20);
    assert_eq!(Size::parse("2GiB").unwrap().0, 2 << 30);
    assert_eq!(Size::parse("4096").unwrap().0, 4096);
    assert!(Size::parse("2 parsecs").is_err());
    let err = parse("[image]\nname = \"d\"\n[data]\nsize = \"lots\"\n", &[])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("line 4") && err.contains("not a size"),
        "{err}"
    );
}

#[test]
fn overrides_apply_and_are_checked() {
    let c = parse(
        MINIMAL,
        &["boot.bios=false", "data.size=\"1G\"", "image.name=other"],
    )
    .unwrap();
    assert!(!c.bios());
    assert_eq!(c.data.size.0, 1 << 30);
    assert_eq!(c.image.name, "other");
    let base = parse(MINIMAL, &[]).unwrap();
    assert_ne!(base.hash, c.hash, "overrides must change the config hash");
    let err = parse(MINIMAL, &["boot.bois=false"])
        .unwrap_err()
        .to_string();
    assert!(err.contains("bois"), "{err}");
    let err = parse(MINIMAL, &["boot.timeout=\"soon\""])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("--set boot.timeout") && err.contains("hint"),
        "{err}"
    );
    assert!(parse(MINIMAL, &["nonsense"]).is_err());
}

#[test]
fn inconsistent_settings_are_refused() {
    let arm = parse(MINIMAL, &["image.arch=\"arm64\""]).unwrap();
    assert!(!arm.bios(), "arm64 has no BIOS: off unless asked for");
    let err = parse(MINIMAL, &["image.arch=\"arm64\"", "boot.bios=true"])
        .unwrap_err()
        .to_string();
    assert!(err.contains("bios"), "{err}");
    assert!(parse(MINIMAL, &["image.arch=\"arm64\"", "boot.bios=false"]).is_ok());
    let err = parse(MINIMAL, &["jitsi.enabled=true"])
        .unwrap_err()
        .to_string();
    assert!(err.contains("debs"), "{err}");
}

#[test]
fn repository_needs_full_fingerprint_and_one_key_source() {
    let repo = |fp: &str, key: &str| {
        format!(
            "{MINIMAL}[[repositories]]\nname = \"r\"\nuri = \"https://x\"\nsuite = \"stable/\"\nfingerprint = \"{fp}\"\n{key}\n"
        )
    };
    let full = "FFD6 5A0D A2BE BDEB 73D4 4C8B B4D2 D216 F1FD 7806";
    assert!(parse(&repo(full, "key = \"k.gpg\""), &[]).is_ok());
    let err = parse(&repo("B4D2D216F1FD7806", "key = \"k.gpg\""), &[]).unwrap_err();
    assert!(format!("{err:#}").contains("short key id"), "{err:#}");
    assert!(parse(&repo(full, ""), &[]).is_err());
    assert_eq!(
        normalize_fingerprint(full).unwrap(),
        "FFD65A0DA2BEBDEB73D44C8BB4D2D216F1FD7806"
    );
}

#[test]
fn firstboot_answers_are_checked_with_the_machines_rules() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../appliance.toml");
    let ok = Config::load(
        &path,
        &[
            "firstboot.domain=\"meet.example.org\"".into(),
            "firstboot.timezone=\"Europe/Berlin\"".into(),
        ],
    )
    .unwrap();
    let seed = ok.firstboot_seed().unwrap().unwrap();
    assert!(seed.contains("domain = \"meet.example.org\""), "{seed}");
    let err = Config::load(&path, &["firstboot.domain=\"192.168.0.1\"".into()]).unwrap_err();
    let msg = format!("{err:#}");
    assert!(
        msg.contains("[firstboot]") && msg.contains("`domain`"),
        "{msg}"
    );
    let err = Config::load(&path, &["firstboot.colour=\"blue\"".into()]).unwrap_err();
    assert!(format!("{err:#}").contains("colour"), "{err:#}");
    let none = Config::load(&path, &[]).unwrap();
    assert!(none.firstboot_seed().unwrap().is_none());
}

#[test]
fn passwords_do_not_change_the_hash() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../appliance.toml");
    let with = |pw: &str| {
        Config::load(
            &path,
            &[
                "firstboot.domain=\"meet.example.org\"".into(),
                format!("firstboot.hosts=[{{name = \"alice\", password = \"{pw}\"}}]"),
            ],
        )
        .unwrap()
    };
    let a = with("Tulip-Harbor-42");
    let b = with("Maple-Canyon-77");
    assert_eq!(a.hash, b.hash);
    assert!(a
        .firstboot_seed()
        .unwrap()
        .unwrap()
        .contains("Tulip-Harbor-42"));
    let other_domain =
        Config::load(&path, &["firstboot.domain=\"meet.example.com\"".into()]).unwrap();
    assert_ne!(a.hash, other_domain.hash, "everything else still counts");
}

#[test]
fn default_appliance_toml_parses() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../appliance.toml");
    let c = Config::load(&path, &[]).unwrap();
    assert!(c.jitsi.enabled, "the default appliance includes Jitsi");
    let without = Config::load(&path, &["jitsi.enabled=false".into()]).unwrap();
    assert!(without
        .active_repositories()
        .iter()
        .all(|r| r.name != "jitsi"));
}

#[test]
fn source_date_epoch_in_the_file_or_an_override_wins_over_the_environment() {
    assert!(!sets_source_date_epoch(MINIMAL, &[]));
    assert!(sets_source_date_epoch(
        "[image]\nname = \"demo\"\nsource_date_epoch = 1\n",
        &[]
    ));
    assert!(sets_source_date_epoch(
        MINIMAL,
        &["image.source_date_epoch=5".to_string()]
    ));
    assert!(!sets_source_date_epoch(
        MINIMAL,
        &["image.name=\"other\"".to_string()]
    ));
}

#[test]
fn where_the_build_keeps_its_files_does_not_change_the_hash() {
    let a = parse(MINIMAL, &[]).unwrap();
    let b = parse(
        MINIMAL,
        &[
            "packages.cache_dir=\"/elsewhere/cache\"",
            "packages.lock_file=\"/elsewhere/appliance.lock\"",
            "features.dir=\"/elsewhere/overlays\"",
            "signing.key=\"/elsewhere/keys/appliance-signing\"",
            "updates.trusted_keys=[\"/elsewhere/keys/appliance-signing.pub\"]",
        ],
    )
    .unwrap();
    assert_eq!(a.hash, b.hash);
    let c = parse(MINIMAL, &["image.version=\"2.0\""]).unwrap();
    assert_ne!(a.hash, c.hash, "what the image is still changes it");
}
