//! SSH keys from the hosting provider's metadata service, for a VPS started from the image with
//! no key given at build time: the keys the user picked in the provider's control panel let
//! them log in as `admin` and answer the wizard over SSH.
//!
//! Whatever answers at 169.254.169.254 gets to install a key for the administrator, so it is
//! only asked when the machine's firmware (DMI) names one of the clouds below; a PC, a
//! Raspberry Pi or a VM whose firmware names no cloud never asks, even if something on its
//! network answers there. Which DMI values count as which cloud, and the sources, are listed in
//! docs/security.md ("SSH keys from a cloud's metadata service"). Only that provider's own
//! paths are asked, with short timeouts.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use appliance_spec::validate::{self, shown};

use crate::paths::Paths;

/// The metadata address every supported provider answers on.
pub const METADATA: &str = "169.254.169.254:80";

const TIMEOUT: Duration = Duration::from_secs(2);

/// The clouds whose metadata service may provide the admin's SSH keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cloud {
    Aws,
    Google,
    DigitalOcean,
    Hetzner,
    OpenStack,
}

type Endpoint = (&'static str, &'static [(&'static str, &'static str)]);

/// EC2's path (IMDSv1; v2 is tried first in [`keys_from`]); OpenStack serves it too.
const EC2_KEY: &str = "/latest/meta-data/public-keys/0/openssh-key";

impl Cloud {
    pub fn name(self) -> &'static str {
        match self {
            Cloud::Aws => "Amazon EC2",
            Cloud::Google => "Google Compute Engine",
            Cloud::DigitalOcean => "DigitalOcean",
            Cloud::Hetzner => "Hetzner Cloud",
            Cloud::OpenStack => "OpenStack",
        }
    }

    /// Where this provider publishes the keys: (path, headers).
    fn endpoints(self) -> &'static [Endpoint] {
        match self {
            Cloud::Aws | Cloud::OpenStack => &[(EC2_KEY, &[])],
            Cloud::DigitalOcean => &[("/metadata/v1/public-keys", &[])],
            // A YAML list.
            Cloud::Hetzner => &[("/hetzner/v1/metadata/public-keys", &[])],
            // "user:key" lines.
            Cloud::Google => &[
                (
                    "/computeMetadata/v1/project/attributes/ssh-keys",
                    &[("Metadata-Flavor", "Google")],
                ),
                (
                    "/computeMetadata/v1/instance/attributes/ssh-keys",
                    &[("Metadata-Flavor", "Google")],
                ),
            ],
        }
    }
}

/// What the firmware says about the machine (/sys/class/dmi/id; empty when absent).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Dmi {
    pub sys_vendor: String,
    pub product_name: String,
    pub product_serial: String,
    pub product_uuid: String,
    pub bios_vendor: String,
    pub board_asset_tag: String,
    pub chassis_asset_tag: String,
}

impl Dmi {
    pub fn read(paths: &Paths) -> Dmi {
        let f = |name: &str| {
            std::fs::read(paths.at(&format!("/sys/class/dmi/id/{name}")))
                .map(|b| String::from_utf8_lossy(&b).trim().to_string())
                .unwrap_or_default()
        };
        Dmi {
            sys_vendor: f("sys_vendor"),
            product_name: f("product_name"),
            product_serial: f("product_serial"),
            product_uuid: f("product_uuid"),
            bios_vendor: f("bios_vendor"),
            board_asset_tag: f("board_asset_tag"),
            chassis_asset_tag: f("chassis_asset_tag"),
        }
    }

    /// For messages: the fields that say what the machine is.
    fn summary(&self) -> String {
        if self.sys_vendor.is_empty() && self.product_name.is_empty() {
            return "the firmware gives no DMI vendor or product name".into();
        }
        format!(
            "DMI sys_vendor \"{}\", product_name \"{}\"",
            shown(&self.sys_vendor),
            shown(&self.product_name)
        )
    }
}

/// A cloud an EC2 system UUID names: "ec2" at the start, in either byte order of the first
/// group (AWS documents both forms).
fn uuid_says_ec2(uuid: &str) -> bool {
    let first = uuid.split('-').next().unwrap_or("").to_ascii_lowercase();
    if first.starts_with("ec2") {
        return true;
    }
    if first.len() != 8 {
        return false;
    }
    let swapped: String = (0..4).rev().map(|i| &first[2 * i..2 * i + 2]).collect();
    swapped.starts_with("ec2")
}

/// Which known cloud (if any) the DMI values name.
pub fn cloud_of(dmi: &Dmi) -> Option<Cloud> {
    const OPENSTACK_PRODUCTS: &[&str] = &["OpenStack Nova", "OpenStack Compute"];
    const OPENSTACK_TAGS: &[&str] = &[
        "OpenStack Nova",
        "OpenStack Compute",
        "OpenTelekomCloud",
        "SAP CCloud VM",
        "HUAWEICLOUD",
        "Samsung Cloud Platform",
    ];
    let instance_id = |t: &str| {
        t.strip_prefix("i-").is_some_and(|h| {
            (8..=17).contains(&h.len()) && h.chars().all(|c| c.is_ascii_hexdigit())
        })
    };
    if dmi.sys_vendor == "Amazon EC2"
        || dmi.bios_vendor == "Amazon EC2"
        || instance_id(&dmi.board_asset_tag)
        || (dmi.sys_vendor == "Xen" && uuid_says_ec2(&dmi.product_uuid))
    {
        return Some(Cloud::Aws);
    }
    if dmi.product_name == "Google Compute Engine"
        || dmi.product_name == "Google"
        || dmi.product_serial.starts_with("GoogleCloud-")
    {
        return Some(Cloud::Google);
    }
    if dmi.sys_vendor == "DigitalOcean" {
        return Some(Cloud::DigitalOcean);
    }
    if dmi.sys_vendor == "Hetzner" {
        return Some(Cloud::Hetzner);
    }
    if OPENSTACK_PRODUCTS.contains(&dmi.product_name.as_str())
        || OPENSTACK_TAGS.contains(&dmi.chassis_asset_tag.as_str())
    {
        return Some(Cloud::OpenStack);
    }
    None
}

/// The verdict, with the reason in words for the console.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub cloud: Option<Cloud>,
    pub why: String,
}

/// Is this machine one of the known clouds? A Raspberry Pi (its device tree says so) never is.
pub fn identify(paths: &Paths) -> Identity {
    let model = std::fs::read(paths.at("/sys/firmware/devicetree/base/model"))
        .map(|b| {
            String::from_utf8_lossy(&b)
                .trim_end_matches('\0')
                .trim()
                .to_string()
        })
        .unwrap_or_default();
    if model.starts_with("Raspberry Pi") {
        return Identity {
            cloud: None,
            why: format!(
                "this is a {} (device tree), not a cloud machine",
                shown(&model)
            ),
        };
    }
    let dmi = Dmi::read(paths);
    match cloud_of(&dmi) {
        Some(c) => Identity {
            cloud: Some(c),
            why: format!("this machine is on {} ({})", c.name(), dmi.summary()),
        },
        None => Identity {
            cloud: None,
            why: format!("this machine is not on a known cloud ({})", dmi.summary()),
        },
    }
}

/// Keys from `cloud`'s metadata service at `addr` (tests use a local stand-in).
pub fn keys_from(addr: SocketAddr, cloud: Cloud) -> Vec<String> {
    // Nothing answers: nothing more is tried.
    if TcpStream::connect_timeout(&addr, TIMEOUT).is_err() {
        return Vec::new();
    }
    let mut found = Vec::new();
    if cloud == Cloud::Aws {
        // IMDSv2 (the default on new instances) answers GETs only with a session token.
        let token = request(
            addr,
            "PUT",
            "/latest/api/token",
            &[("X-aws-ec2-metadata-token-ttl-seconds", "60")],
        )
        .filter(|(status, _)| *status == 200)
        .map(|(_, body)| body.trim().to_string());
        if let Some(token) = &token {
            if let Some((200, body)) =
                request(addr, "GET", EC2_KEY, &[("X-aws-ec2-metadata-token", token)])
            {
                found.extend(parse_keys(&body));
            }
        }
    }
    for (path, headers) in cloud.endpoints() {
        if let Some((200, body)) = request(addr, "GET", path, headers) {
            found.extend(parse_keys(&body));
        }
    }
    let mut unique: Vec<String> = Vec::new();
    for k in found {
        if !unique.contains(&k) {
            unique.push(k);
        }
    }
    unique
}

/// Before setup, with no key for the admin yet: the keys the provider has for the machine `id`
/// names, or none when it names no known cloud (then nothing is sent at all).
pub fn provider_keys(id: &Identity, addr: Option<SocketAddr>) -> Vec<String> {
    match (id.cloud, addr) {
        (Some(cloud), Some(addr)) => keys_from(addr, cloud),
        _ => Vec::new(),
    }
}

/// Keys in any of the providers' formats: one per line, optionally as a YAML list item
/// (`- ssh-ed25519 ...`) or prefixed with a user name (`alice:ssh-ed25519 ...`). Lines that are
/// not valid keys are skipped.
pub fn parse_keys(body: &str) -> Vec<String> {
    body.lines()
        .filter_map(|line| {
            let mut l = line.trim().trim_start_matches("- ").trim();
            l = l.trim_matches('"').trim_matches('\'');
            if let Some((user, rest)) = l.split_once(':') {
                if !user.contains(' ') && rest.starts_with(|c: char| c.is_ascii_lowercase()) {
                    l = rest;
                }
            }
            validate::ssh_public_key(l).ok()
        })
        .collect()
}

/// A plain HTTP/1.0 request; `None` on any network error.
fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, TIMEOUT).ok()?;
    stream.set_read_timeout(Some(TIMEOUT)).ok()?;
    stream.set_write_timeout(Some(TIMEOUT)).ok()?;
    let mut req = format!("{method} {path} HTTP/1.0\r\nHost: {}\r\n", addr.ip());
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if method == "PUT" {
        req.push_str("Content-Length: 0\r\n");
    }
    req.push_str("\r\n");
    stream.write_all(req.as_bytes()).ok()?;
    let mut raw = Vec::new();
    stream.take(1 << 20).read_to_end(&mut raw).ok()?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, body.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkeys::ED25519;
    use std::net::TcpListener;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    #[test]
    fn every_provider_format_is_read() {
        let key = ED25519;
        assert_eq!(parse_keys(&format!("{key}\n")), vec![key.to_string()]);
        assert_eq!(
            parse_keys(&format!("- {key}\n- junk\n")),
            vec![key.to_string()]
        );
        assert_eq!(parse_keys(&format!("alice:{key}\n")), vec![key.to_string()]);
        assert!(parse_keys("<html>not found</html>").is_empty());
    }

    #[test]
    fn no_metadata_service_means_no_keys_quickly() {
        // A port nothing listens on.
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        drop(l);
        let t = std::time::Instant::now();
        assert!(keys_from(addr, Cloud::Hetzner).is_empty());
        assert!(t.elapsed() < Duration::from_secs(3));
    }

    /// A metadata stand-in that serves `key` on every provider's path and counts the
    /// connections it gets. `imdsv2_only`: EC2's path answers only with a session token.
    fn fake_metadata(key: String, imdsv2_only: bool) -> (SocketAddr, Arc<AtomicUsize>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let h = hits.clone();
        std::thread::spawn(move || {
            for stream in l.incoming() {
                let Ok(mut s) = stream else { continue };
                h.fetch_add(1, Ordering::SeqCst);
                let mut buf = [0u8; 2048];
                let n = s.read(&mut buf).unwrap_or(0);
                let req = String::from_utf8_lossy(&buf[..n]).to_string();
                let reply = if req.starts_with("PUT /latest/api/token") {
                    "HTTP/1.0 200 OK\r\n\r\nTOKEN".to_string()
                } else if imdsv2_only
                    && req.contains("openssh-key")
                    && !req.contains("X-aws-ec2-metadata-token: TOKEN")
                {
                    "HTTP/1.0 401 Unauthorized\r\n\r\n".to_string()
                } else if req.starts_with("GET ") && req.len() > 4 {
                    format!("HTTP/1.0 200 OK\r\n\r\n- {key}\n")
                } else {
                    "HTTP/1.0 404 Not Found\r\n\r\n".to_string()
                };
                let _ = s.write_all(reply.as_bytes());
            }
        });
        (addr, hits)
    }

    fn dmi_files(root: &std::path::Path, fields: &[(&str, &str)]) -> Paths {
        let paths = Paths::new(root);
        let dir = paths.at("/sys/class/dmi/id");
        std::fs::create_dir_all(&dir).unwrap();
        for (k, v) in fields {
            std::fs::write(dir.join(k), format!("{v}\n")).unwrap();
        }
        paths
    }

    #[test]
    fn keys_come_from_an_imdsv2_style_service() {
        let (addr, _) = fake_metadata(ED25519.to_string(), true);
        assert_eq!(keys_from(addr, Cloud::Aws), vec![ED25519.to_string()]);
    }

    #[test]
    fn machines_that_name_no_cloud_never_ask() {
        let key = ED25519.to_string();
        let (addr, hits) = fake_metadata(key.clone(), false);
        // QEMU's defaults (i440FX and Q35), a PC, a machine without DMI, and a Raspberry Pi
        // whose device tree says so.
        let not_clouds: &[&[(&str, &str)]] = &[
            &[
                ("sys_vendor", "QEMU"),
                ("product_name", "Standard PC (i440FX + PIIX, 1996)"),
                ("bios_vendor", "SeaBIOS"),
            ],
            &[
                ("sys_vendor", "QEMU"),
                ("product_name", "Standard PC (Q35 + ICH9, 2009)"),
                ("bios_vendor", "EFI Development Kit II / OVMF"),
            ],
            &[
                ("sys_vendor", "Dell Inc."),
                ("product_name", "OptiPlex 7080"),
                ("product_uuid", "ec2a1b2c-0000-0000-0000-000000000000"),
            ],
            &[],
        ];
        for fields in not_clouds {
            let d = tempfile::tempdir().unwrap();
            let paths = dmi_files(d.path(), fields);
            let id = identify(&paths);
            assert_eq!(id.cloud, None, "{fields:?}");
            assert!(id.why.contains("not on a known cloud"), "{}", id.why);
            assert!(provider_keys(&id, Some(addr)).is_empty());
        }
        let d = tempfile::tempdir().unwrap();
        let paths = dmi_files(d.path(), &[("sys_vendor", "Hetzner")]);
        let dt = paths.at("/sys/firmware/devicetree/base");
        std::fs::create_dir_all(&dt).unwrap();
        std::fs::write(dt.join("model"), "Raspberry Pi 4 Model B Rev 1.5\0").unwrap();
        let id = identify(&paths);
        assert_eq!(id.cloud, None);
        assert!(id.why.contains("Raspberry Pi 4"), "{}", id.why);
        assert!(provider_keys(&id, Some(addr)).is_empty());
        assert_eq!(
            hits.load(Ordering::SeqCst),
            0,
            "the metadata address was contacted"
        );

        // The same stand-in, on a machine that says it is on Hetzner Cloud: asked.
        let d = tempfile::tempdir().unwrap();
        let paths = dmi_files(
            d.path(),
            &[("sys_vendor", "Hetzner"), ("product_name", "vServer")],
        );
        let id = identify(&paths);
        let keys = provider_keys(&id, Some(addr));
        assert_eq!(id.cloud, Some(Cloud::Hetzner));
        assert_eq!(keys, vec![key]);
        assert!(hits.load(Ordering::SeqCst) > 0);
    }

    #[test]
    fn each_cloud_is_recognised_by_its_documented_dmi_values() {
        let cases: &[(&[(&str, &str)], Cloud)] = &[
            (
                &[("sys_vendor", "Amazon EC2"), ("product_name", "t3.micro")],
                Cloud::Aws,
            ),
            (&[("board_asset_tag", "i-0af01c0123456789a")], Cloud::Aws),
            (
                &[
                    ("sys_vendor", "Xen"),
                    ("product_uuid", "EC2E1916-9099-7CAF-FD21-012345ABCDEF"),
                ],
                Cloud::Aws,
            ),
            (
                &[
                    ("sys_vendor", "Xen"),
                    ("product_uuid", "45E12AEC-DCD1-B213-94ED-012345ABCDEF"),
                ],
                Cloud::Aws,
            ),
            (
                &[
                    ("sys_vendor", "Google"),
                    ("product_name", "Google Compute Engine"),
                ],
                Cloud::Google,
            ),
            (&[("product_serial", "GoogleCloud-1234ABCD")], Cloud::Google),
            (
                &[("sys_vendor", "DigitalOcean"), ("product_name", "Droplet")],
                Cloud::DigitalOcean,
            ),
            (
                &[("sys_vendor", "Hetzner"), ("product_name", "vServer")],
                Cloud::Hetzner,
            ),
            (&[("product_name", "OpenStack Nova")], Cloud::OpenStack),
            (
                &[("chassis_asset_tag", "OpenTelekomCloud")],
                Cloud::OpenStack,
            ),
        ];
        for (fields, cloud) in cases {
            let d = tempfile::tempdir().unwrap();
            let id = identify(&dmi_files(d.path(), fields));
            assert_eq!(id.cloud, Some(*cloud), "{fields:?}");
            assert!(id.why.contains(cloud.name()), "{}", id.why);
        }
        // A Xen machine that is not EC2, and a UUID alone, are not enough.
        for fields in [
            &[
                ("sys_vendor", "Xen"),
                ("product_uuid", "1234abcd-0000-0000-0000-000000000000"),
            ][..],
            &[("product_uuid", "EC2E1916-9099-7CAF-FD21-012345ABCDEF")][..],
            &[("board_asset_tag", "i-love-my-pc")][..],
        ] {
            let d = tempfile::tempdir().unwrap();
            assert_eq!(
                identify(&dmi_files(d.path(), fields)).cloud,
                None,
                "{fields:?}"
            );
        }
    }

    #[test]
    fn firmware_strings_are_escaped_in_messages() {
        let d = tempfile::tempdir().unwrap();
        let paths = dmi_files(d.path(), &[("sys_vendor", "Evil\u{1b}[2J")]);
        let why = identify(&paths).why;
        assert!(!why.chars().any(char::is_control), "{why:?}");
    }
}
