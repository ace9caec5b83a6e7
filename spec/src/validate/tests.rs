use super::*;

pub const ED25519: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDrAR/bS3lTV9w81gAeSQwVk7HCW8UHb7lUqp0e37MSe test@example";
const RSA2048: &str = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQDMggigsM5rAZd5WeXfNEhbWv2fJA5ufKs2TONS9UhvTDM/cHwuqm54PQQLDmh51PdjI6yEeDTBN8hY3eyAOODO8zJibh2kYl+v7wlD1F0AlDGp1H2bHy1YMcdPGXSRwXlo4dR6mLLoh+oNII9+sueP/Iwzk5yEC9uEH09v06FrepWaciq1HPTeHjSkguNzjqrqDU9FwylWtQPWxsEbkmIJY4pzPScOmv+51HJ1X3hKsZmiS3xHR6W6OqaslhC/W7BbaCQ+O9m1ehSukeXQIK+ifJimMI6wKEhLohagsotRFa9zV7+GmapFzXAS7v+CCjPG4VtqGtdlKJkoCovnWYmN test@example";
const RSA1024: &str = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAAAgQDWfElPyfEopIwi9a3aU/eFQyGuHIBEad8gZn/ZGXa3nHo1k3+VcP5RiEKdsvPhUf09sCQA3dMK0Ky+kzZtaaXWvpdbXnmckMxJAhe14kd7BHJbHNUeAVMi2mdNv9A7/1bMHqNuSy5wMhmMYMpmmWrIC5gj04yQ4z/zAqbPbCzKdQ== test@example";
const P256: &str = "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBNtsvnW/7LOP0cJrLlk8KPmV8d18y87CZOhhoYqO2JbFM89bAbSF3LKTmO6QKdTBQvioKxj0c8VACpP1zDbbrWA= test@example";
const P384: &str = "ecdsa-sha2-nistp384 AAAAE2VjZHNhLXNoYTItbmlzdHAzODQAAAAIbmlzdHAzODQAAABhBDX6ZUS6VkvOf6zChjzLbWcO3eOW7uyJrZQNlA7xYiE1x+dauvoCKO7o09HKBmaOzqQmrYUuVaLualxf2ZJ1JYRfpUwAn6xlXMA64mdsTa/PyKhq1RnoRYA12SxOgLxhIQ== test@example";
const P521: &str = "ecdsa-sha2-nistp521 AAAAE2VjZHNhLXNoYTItbmlzdHA1MjEAAAAIbmlzdHA1MjEAAACFBACrU1QClPZGQyha/gZu4m7N912U3DwueglmNuQJp7SfcPPj/bOOO3fbxoU0crGFYsk5Y+XJbPPw0j6xT1aOtcSwgAFcdXkkcm+ty1gWvXiqT05UjyhXVk/LifGMOZPgUcJ7LmT10ZpPMDRb90UKqJf3dX02J54iCjyvMWdKoJO6fI2nXA== test@example";

fn b64(data: &[u8]) -> String {
    base64_encode(data, true)
}

fn wire(parts: &[&[u8]]) -> Vec<u8> {
    let mut v = Vec::new();
    for p in parts {
        v.extend_from_slice(&(p.len() as u32).to_be_bytes());
        v.extend_from_slice(p);
    }
    v
}

#[test]
fn good_domains() {
    assert_eq!(domain("meet.example.org").unwrap(), "meet.example.org");
    assert_eq!(domain(" Meet.Example.ORG. ").unwrap(), "meet.example.org");
    assert_eq!(domain("meet.localhost").unwrap(), "meet.localhost");
    assert_eq!(domain("a-b.c1.de").unwrap(), "a-b.c1.de");
    assert_eq!(
        domain("xn--bcher-kva.example").unwrap(),
        "xn--bcher-kva.example"
    );
}

#[test]
fn bad_domains() {
    let cases = [
        ("", "Please enter"),
        ("localhost", "at least one dot"),
        ("192.168.1.10", "IP address"),
        ("::1", "IP address"),
        ("1.2.3", "only digits"),
        ("meet..example.org", "two dots"),
        (".example.org", "two dots"),
        ("-meet.example.org", "hyphen"),
        ("meet-.example.org", "hyphen"),
        ("meet_room.example.org", "\"_\""),
        ("meet example.org", "\" \""),
        ("bücher.example", "\"ü\""),
        ("https://meet.example.org", "without https://"),
        ("meet.example.org/room", "without https://"),
        ("meet.example.org:443", "\":\""),
    ];
    for (input, needle) in cases {
        let e = domain(input).unwrap_err();
        assert!(e.contains(needle), "{input:?}: {e}");
    }
    let long_label = format!("{}.org", "a".repeat(64));
    assert!(domain(&long_label).unwrap_err().contains("63"));
    let label = "a".repeat(60);
    let long = format!("{label}.{label}.{label}.{label}.{label}.org");
    assert!(long.len() > 253);
    assert!(domain(&long).unwrap_err().contains("253"));
    let almost = format!("{label}.{label}.{label}.{}.org", "a".repeat(60));
    assert!(
        almost.len() > 239 && almost.len() <= 253,
        "{}",
        almost.len()
    );
    assert!(
        domain(&almost).unwrap_err().contains("at most 239"),
        "{almost}"
    );
}

#[test]
fn host_names() {
    assert_eq!(host_name("Alice").unwrap(), "alice");
    assert_eq!(host_name("bob.smith_2-x").unwrap(), "bob.smith_2-x");
    assert!(host_name("").unwrap_err().contains("Please enter"));
    assert!(host_name(".alice").unwrap_err().contains("start with"));
    assert!(host_name("al ice").unwrap_err().contains("\" \""));
    assert!(host_name("alice@meet").unwrap_err().contains("\"@\""));
    assert!(host_name(&"a".repeat(33))
        .unwrap_err()
        .contains("at most 32"));
    assert!(host_name(&"a".repeat(32)).is_ok());
}

#[test]
fn strong_passwords_pass() {
    password("Tulip-Harbor-42", "alice", "meet.example.org").unwrap();
    password("violet ocean lamp", "alice", "meet.example.org").unwrap();
}

#[test]
fn weak_passwords_explained() {
    let cases = [
        ("", "empty"),
        ("Short-1", "too short"),
        ("abcdefghijklmnop", "one kind"),
        ("123456789012345", "one kind"),
        ("aaaaaaa1aaaaaa", "5 different"),
        ("Password1234", "attackers try first"),
        ("correct horse battery staple", "attackers try first"),
        (" Tulip-Harbor-42", "starts or ends with a space"),
        ("Tulip-Härbor-42", "not on an English keyboard"),
        ("Tulip\tHarbor-42", "control character"),
    ];
    for (pw, needle) in cases {
        let e = password(pw, "alice", "meet.example.org").unwrap_err();
        assert!(e.contains(needle), "{pw:?}: {e}");
        // Nothing about the password itself: not its length, not a character of it.
        assert!(!e.contains(&pw.chars().count().to_string()), "{pw:?}: {e}");
        assert!(!e.contains('ä') && !e.contains('\t'), "{pw:?}: {e}");
    }
    assert!(password("alice.smith1", "Alice.Smith1", "x.org")
        .unwrap_err()
        .contains("user name"));
    assert!(password("meet.example.org", "alice", "meet.example.org")
        .unwrap_err()
        .contains("domain name"));
}

#[test]
fn real_keys_accepted() {
    for k in [ED25519, RSA2048, P256, P384, P521] {
        assert_eq!(ssh_public_key(&format!("  {k}  ")).unwrap(), k);
    }
    let no_comment = ED25519.rsplit_once(' ').unwrap().0;
    assert_eq!(ssh_public_key(no_comment).unwrap(), no_comment);
}

#[test]
fn fingerprints_match_ssh_keygen() {
    // Expected values printed by `ssh-keygen -lf` (OpenSSH 9.2) for the same lines.
    assert_eq!(
        ssh_key(ED25519).unwrap().describe(),
        "256 SHA256:SwoXeapOouC3yJjFIRyTQx6wVyhKVPnPbHY2MG2Cepo test@example (ED25519)"
    );
    assert_eq!(
        ssh_key(RSA2048).unwrap().describe(),
        "2048 SHA256:0AhIo60h0s52kk6gK1ZegQn6/74hQmB6QK4h8mZwrss test@example (RSA)"
    );
    assert_eq!(
        ssh_key(P521).unwrap().describe(),
        "521 SHA256:/o90d9IQ+TcglCQf30bog6QJBNRYz5KNNaVkBZ5X6kI test@example (ECDSA)"
    );
}

#[test]
fn comments_with_control_characters_are_dropped() {
    let (kind_data, _) = ED25519.rsplit_once(' ').unwrap();
    for bad in ["evil\u{1b}[2Jcomment", "bell\u{7}", "caf\u{e9}"] {
        let k = ssh_key(&format!("{kind_data} {bad}")).unwrap();
        assert_eq!(k.comment, None, "{bad:?}");
        assert_eq!(k.line(), kind_data);
    }
    let k = ssh_key(&format!("{kind_data} alice@laptop  2024")).unwrap();
    assert_eq!(k.line(), format!("{kind_data} alice@laptop 2024"));
}

#[test]
fn messages_escape_what_they_quote() {
    assert_eq!(shown("a\u{1b}[31mb\n"), "a\\u{1b}[31mb\\u{a}");
    assert_eq!(shown("x\u{202e}y"), "x\\u{202e}y");
    assert_eq!(shown(&"a".repeat(50)), format!("{}...", "a".repeat(40)));
    for e in [
        domain("evil\u{1b}]0;title\u{7}").unwrap_err(),
        host_name("al\u{1b}[2Jice").unwrap_err(),
        email("a\u{1b}b@example.org").unwrap_err(),
        ssh_public_key("\u{1b}[2J AAAA").unwrap_err(),
        time_of_day("\u{1b}[2J").unwrap_err(),
        idle_minutes_text("\u{9b}1m").unwrap_err(),
    ] {
        assert!(!e.chars().any(char::is_control), "{e:?}");
        assert!(e.contains("\\u{"), "{e:?}");
    }
}

#[test]
fn security_key_types_accepted() {
    let sk = wire(&[b"sk-ssh-ed25519@openssh.com", &[7u8; 32], b"ssh:"]);
    ssh_public_key(&format!("sk-ssh-ed25519@openssh.com {} yubikey", b64(&sk))).unwrap();
    let mut point = vec![4u8];
    point.extend_from_slice(&[1u8; 64]);
    let sk = wire(&[
        b"sk-ecdsa-sha2-nistp256@openssh.com",
        b"nistp256",
        &point,
        b"ssh:",
    ]);
    ssh_public_key(&format!("sk-ecdsa-sha2-nistp256@openssh.com {}", b64(&sk))).unwrap();
    // Missing application string.
    let sk = wire(&[b"sk-ssh-ed25519@openssh.com", &[7u8; 32]]);
    assert!(
        ssh_public_key(&format!("sk-ssh-ed25519@openssh.com {}", b64(&sk)))
            .unwrap_err()
            .contains("damaged")
    );
}

#[test]
fn bad_keys_explained() {
    assert!(ssh_public_key(RSA1024)
        .unwrap_err()
        .contains("only 1024 bits"));
    assert!(ssh_public_key("ssh-ed25519")
        .unwrap_err()
        .contains("not a complete"));
    assert!(ssh_public_key("ssh-dss AAAAB3NzaC1kc3M=")
        .unwrap_err()
        .contains("DSA"));
    assert!(ssh_public_key("-----BEGIN OPENSSH PRIVATE KEY----- abc")
        .unwrap_err()
        .contains("private key"));
    assert!(ssh_public_key("ssh-foo AAAA")
        .unwrap_err()
        .contains("not a supported"));
    assert!(ssh_public_key("ssh-ed25519 AAAA$$$")
        .unwrap_err()
        .contains("base64"));
    // Prefix does not match the embedded type.
    let swapped = ED25519.replacen("ssh-ed25519", "ssh-rsa", 1);
    assert!(ssh_public_key(&swapped)
        .unwrap_err()
        .contains("holds a \"ssh-ed25519\""));
    let p256_as_384 = P256.replacen("nistp256", "nistp384", 1);
    assert!(ssh_public_key(&p256_as_384)
        .unwrap_err()
        .contains("holds a"));
    // Truncated blob.
    let (kind, rest) = ED25519.split_once(' ').unwrap();
    let truncated = format!("{kind} {}", &rest[..40]);
    assert!(ssh_public_key(&truncated).unwrap_err().contains("damaged"));
    // Extra bytes after the key.
    let extra = wire(&[b"ssh-ed25519", &[1u8; 32], b"x"]);
    assert!(ssh_public_key(&format!("ssh-ed25519 {}", b64(&extra)))
        .unwrap_err()
        .contains("extra bytes"));
    // Curve name mismatch inside the blob.
    let mut point = vec![4u8];
    point.extend_from_slice(&[1u8; 64]);
    let blob = wire(&[b"ecdsa-sha2-nistp256", b"nistp384", &point]);
    assert!(
        ssh_public_key(&format!("ecdsa-sha2-nistp256 {}", b64(&blob)))
            .unwrap_err()
            .contains("curve")
    );
}

#[test]
fn mpint_bit_count() {
    assert_eq!(mpint_bits(&[0, 0x80, 0]), 16);
    assert_eq!(mpint_bits(&[0x01, 0]), 9);
    assert_eq!(mpint_bits(&[0]), 0);
}

#[test]
fn base64_roundtrip() {
    for n in 0..10 {
        let data: Vec<u8> = (0..n).map(|i| (i * 37) as u8).collect();
        assert_eq!(base64_decode(&b64(&data)).unwrap(), data);
    }
    assert!(base64_decode("A").is_none());
}

#[test]
fn emails() {
    assert_eq!(email(" Admin@Example.ORG ").unwrap(), "Admin@example.org");
    assert!(email("admin.example.org").unwrap_err().contains("no @"));
    assert!(email("@example.org").unwrap_err().contains("1 to 64"));
    assert!(email("ad min@example.org").unwrap_err().contains("\" \""));
    assert!(email("admin@localhost")
        .unwrap_err()
        .contains("after the @"));
    assert!(email(".admin@example.org").unwrap_err().contains("dot"));
}

#[test]
fn timezones() {
    let d = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(d.path().join("Europe")).unwrap();
    std::fs::write(d.path().join("Europe/Berlin"), "TZif").unwrap();
    std::fs::write(d.path().join("UTC"), "TZif").unwrap();
    assert_eq!(
        timezone("Europe/Berlin", d.path()).unwrap(),
        "Europe/Berlin"
    );
    assert_eq!(timezone(" UTC ", d.path()).unwrap(), "UTC");
    assert!(timezone("Europe", d.path())
        .unwrap_err()
        .contains("no time zone"));
    assert!(timezone("europe/berlin", d.path())
        .unwrap_err()
        .contains("capital letters"));
    assert!(timezone("../../etc/passwd", d.path())
        .unwrap_err()
        .contains("not a time zone name"));
    assert!(timezone("/etc/passwd", d.path())
        .unwrap_err()
        .contains("not a time zone name"));
    assert!(timezone("", d.path()).unwrap_err().contains("Please enter"));
}

#[test]
fn times_and_minutes() {
    assert_eq!(time_of_day("23:30").unwrap(), "23:30");
    assert_eq!(time_of_day("7:05").unwrap(), "07:05");
    assert!(time_of_day("24:00").unwrap_err().contains("00 to 23"));
    assert!(time_of_day("12:60").unwrap_err().contains("00 to 59"));
    assert!(time_of_day("noon").unwrap_err().contains("HH:MM"));
    assert!(time_of_day("12:5").unwrap_err().contains("HH:MM"));
    assert_eq!(idle_minutes_text("0").unwrap(), 0);
    assert_eq!(idle_minutes_text("60").unwrap(), 60);
    assert_eq!(idle_minutes_text("1"), Ok(1));
    assert!(idle_minutes_text("-1").unwrap_err().contains("negative"));
    assert!(idle_minutes_text("999999")
        .unwrap_err()
        .contains("more than a week"));
    assert!(idle_minutes_text("soon")
        .unwrap_err()
        .contains("not a number"));
}
