//! The software bill of materials: `out/<name>.spdx.json`, SPDX 2.3.
//!
//! It lists the image itself (with its dm-verity root hash), every Debian package in it (name,
//! version, source package, supplier, the license its copyright file declares where that file
//! is machine-readable, its purl and the SHA-256 of its `.deb`), the in-image program
//! `appliance-admin` and every crate compiled into it, and how they relate: the image
//! CONTAINS the packages and the program, a package DEPENDS_ON another, the program CONTAINS
//! its crates. Everything in it comes from the build's inputs, so two builds of the same
//! inputs write the same file.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use anyhow::Result;
use serde_json::{json, Value};

use crate::admin_program::Crate;
use crate::lock::{LockedPackage, LOCAL};
use crate::rootfs::InstalledPackage;

/// What the SBOM describes.
pub struct Inputs<'a> {
    pub name: &'a str,
    pub version: &'a str,
    /// `[image] supplier`, as SPDX's `Organization: ...`.
    pub supplier: &'a str,
    pub debian_arch: &'a str,
    /// The SHA-256 of the raw image.
    pub image_sha256: &'a str,
    pub root_hash: Option<&'a str>,
    /// SOURCE_DATE_EPOCH: the document's creation time.
    pub created: u64,
    pub installed: &'a [InstalledPackage],
    /// The `.deb` behind each installed package.
    pub debs: &'a [LockedPackage],
    /// Where each source's files come from, by source name, for download locations.
    pub source_uris: &'a BTreeMap<String, String>,
    pub copyright_dir: &'a Path,
    pub admin_version: &'a str,
    pub crates: &'a [Crate],
}

pub fn spdx(i: &Inputs) -> Result<Value> {
    let tool = format!("Tool: appliance-{}", env!("CARGO_PKG_VERSION"));
    let created = iso_time(i.created);
    let image_id = "SPDXRef-image";
    let mut packages = Vec::new();
    let mut relationships = vec![json!({
        "spdxElementId": "SPDXRef-DOCUMENT",
        "relationshipType": "DESCRIBES",
        "relatedSpdxElement": image_id,
    })];
    let mut image = json!({
        "SPDXID": image_id,
        "name": i.name,
        "versionInfo": i.version,
        "supplier": i.supplier,
        "downloadLocation": "NOASSERTION",
        "filesAnalyzed": false,
        "primaryPackagePurpose": "OPERATING-SYSTEM",
        "checksums": [{"algorithm": "SHA256", "checksumValue": i.image_sha256}],
        "licenseConcluded": "NOASSERTION",
        "licenseDeclared": "NOASSERTION",
        "copyrightText": "NOASSERTION",
    });
    if let Some(root) = i.root_hash {
        image["comment"] = json!(format!("dm-verity root hash (sha256): {root}"));
        image["annotations"] = json!([{
            "annotationDate": created,
            "annotationType": "OTHER",
            "annotator": tool,
            "comment": format!("dm-verity-root-hash=sha256:{root}"),
        }]);
    }
    packages.push(image);

    let debs: BTreeMap<(&str, &str), &LockedPackage> = i
        .debs
        .iter()
        .map(|d| ((d.name.as_str(), d.version.as_str()), d))
        .collect();
    let installed_ids: BTreeMap<&str, String> = i
        .installed
        .iter()
        .map(|p| {
            (
                p.name.as_str(),
                spdx_id("deb", &[&p.name, &p.version, &p.architecture]),
            )
        })
        .collect();
    for p in i.installed {
        let id = &installed_ids[p.name.as_str()];
        let deb = debs.get(&(p.name.as_str(), p.version.as_str()));
        let origin = deb.map(|d| d.origin.as_str()).unwrap_or(LOCAL);
        let (supplier, namespace) = match origin {
            "debian" | "debian-updates" | "debian-security" => {
                ("Organization: Debian".to_string(), "debian")
            }
            "jitsi" => ("Organization: Jitsi".to_string(), "jitsi"),
            LOCAL => (i.supplier.to_string(), "local"),
            other => (format!("Organization: {other}"), "other"),
        };
        let download = deb
            .filter(|d| d.origin != LOCAL)
            .and_then(|d| {
                i.source_uris
                    .get(&d.origin)
                    .map(|u| format!("{}/{}", u.trim_end_matches('/'), d.filename))
            })
            .unwrap_or_else(|| "NOASSERTION".into());
        let mut pkg = json!({
            "SPDXID": id,
            "name": p.name,
            "versionInfo": p.version,
            "supplier": supplier,
            "downloadLocation": download,
            "filesAnalyzed": false,
            "licenseConcluded": "NOASSERTION",
            "licenseDeclared": declared_license(&i.copyright_dir.join(&p.name)),
            "copyrightText": "NOASSERTION",
            "externalRefs": [{
                "referenceCategory": "PACKAGE-MANAGER",
                "referenceType": "purl",
                "referenceLocator": format!(
                    "pkg:deb/{namespace}/{}@{}?arch={}{}",
                    p.name,
                    purl_escape(&p.version),
                    p.architecture,
                    if namespace == "debian" { "&distro=debian-12" } else { "" }
                ),
            }],
        });
        if let Some(d) = deb {
            pkg["sourceInfo"] = json!(format!("built package from: {}", d.source));
            if !d.sha256.is_empty() {
                pkg["checksums"] = json!([{"algorithm": "SHA256", "checksumValue": d.sha256}]);
            }
        }
        packages.push(pkg);
        relationships.push(json!({
            "spdxElementId": image_id,
            "relationshipType": "CONTAINS",
            "relatedSpdxElement": id,
        }));
        let mut seen = BTreeSet::new();
        for group in &p.depends {
            // The first alternative that is installed is what the package uses.
            if let Some(dep) = group.iter().find_map(|n| installed_ids.get(n.as_str())) {
                if dep != id && seen.insert(dep.clone()) {
                    relationships.push(json!({
                        "spdxElementId": id,
                        "relationshipType": "DEPENDS_ON",
                        "relatedSpdxElement": dep,
                    }));
                }
            }
        }
    }

    let admin_id = "SPDXRef-appliance-admin";
    packages.push(json!({
        "SPDXID": admin_id,
        "name": "appliance-admin",
        "versionInfo": i.admin_version,
        "supplier": i.supplier,
        "downloadLocation": "NOASSERTION",
        "filesAnalyzed": false,
        "licenseConcluded": "NOASSERTION",
        "licenseDeclared": "Apache-2.0",
        "copyrightText": "NOASSERTION",
        "comment": "The in-image program /usr/bin/appliance-admin, compiled from this project's setup/ crate.",
    }));
    relationships.push(json!({
        "spdxElementId": image_id,
        "relationshipType": "CONTAINS",
        "relatedSpdxElement": admin_id,
    }));
    for c in i.crates {
        let id = spdx_id("crate", &[&c.name, &c.version]);
        let mut pkg = json!({
            "SPDXID": id,
            "name": c.name,
            "versionInfo": c.version,
            "supplier": "Organization: crates.io",
            "downloadLocation": format!("https://crates.io/api/v1/crates/{}/{}/download", c.name, c.version),
            "filesAnalyzed": false,
            "licenseConcluded": "NOASSERTION",
            "licenseDeclared": c.license.as_deref().map(cargo_license).unwrap_or_else(|| "NOASSERTION".into()),
            "copyrightText": "NOASSERTION",
            "externalRefs": [{
                "referenceCategory": "PACKAGE-MANAGER",
                "referenceType": "purl",
                "referenceLocator": format!("pkg:cargo/{}@{}", c.name, c.version),
            }],
        });
        if let Some(sum) = &c.checksum {
            pkg["checksums"] = json!([{"algorithm": "SHA256", "checksumValue": sum}]);
        }
        packages.push(pkg);
        relationships.push(json!({
            "spdxElementId": admin_id,
            "relationshipType": "CONTAINS",
            "relatedSpdxElement": id,
        }));
    }
    let namespace_id = appliance_spec::signature::sha256_hex(
        format!("{}:{}:{}", i.name, i.version, i.image_sha256).as_bytes(),
    );
    Ok(json!({
        "spdxVersion": "SPDX-2.3",
        "dataLicense": "CC0-1.0",
        "SPDXID": "SPDXRef-DOCUMENT",
        "name": format!("{}-{}", i.name, i.version),
        "documentNamespace": format!("https://spdx.org/spdxdocs/{}-{}-{}", i.name, i.version, &namespace_id[..32]),
        "creationInfo": {"created": created, "creators": [tool]},
        "documentDescribes": [image_id],
        "packages": packages,
        "relationships": relationships,
    }))
}

/// An SPDX id: letters, digits, `.` and `-` only.
fn spdx_id(kind: &str, parts: &[&str]) -> String {
    let raw = format!("SPDXRef-{kind}-{}", parts.join("-"));
    raw.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect()
}

/// purl's percent-encoding of a version (`+` and `:` must be encoded).
fn purl_escape(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '+' => "%2B".to_string(),
            ':' => "%3A".to_string(),
            '~' => "%7E".to_string(),
            c => c.to_string(),
        })
        .collect()
}

/// `YYYY-MM-DDThh:mm:ssZ`, the one form SPDX accepts.
pub fn iso_time(epoch: u64) -> String {
    let days = epoch / 86_400;
    let secs = epoch % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        (secs % 3600) / 60,
        secs % 60
    )
}

/// A crate's `license` field as an SPDX expression (older crates write `MIT/Apache-2.0`).
fn cargo_license(license: &str) -> String {
    license.replace('/', " OR ")
}

/// The license a Debian copyright file declares, as an SPDX expression, when the file is in
/// the machine-readable format and every license it names has an SPDX identifier; otherwise
/// NOASSERTION.
pub fn declared_license(copyright: &Path) -> String {
    let Ok(text) = std::fs::read_to_string(copyright) else {
        return "NOASSERTION".into();
    };
    debian_license(&text).unwrap_or_else(|| "NOASSERTION".into())
}

fn debian_license(text: &str) -> Option<String> {
    let first = text.lines().next()?;
    if !first.starts_with("Format:") || !first.contains("copyright-format/1.0") {
        return None;
    }
    let mut terms = BTreeSet::new();
    for line in text.lines() {
        let Some(value) = line.strip_prefix("License:") else {
            continue;
        };
        let value = value.trim();
        if value.is_empty() {
            continue;
        }
        // "A or B" is a choice; "A and B" both apply; "A, B" is the same as "A and B".
        let choices: Vec<String> = value
            .split(" or ")
            .map(|choice| {
                let parts: Option<Vec<String>> = choice
                    .split(" and ")
                    .flat_map(|p| p.split(", "))
                    .map(|p| spdx_of(p.trim()))
                    .collect();
                parts.map(|p| p.join(" AND "))
            })
            .collect::<Option<Vec<_>>>()?;
        if choices.len() > 1 {
            terms.insert(format!("({})", choices.join(" OR ")));
        } else {
            // "A and B" adds A and B, so that a license named twice is listed once.
            for part in choices.into_iter().next()?.split(" AND ") {
                terms.insert(part.to_string());
            }
        }
    }
    if terms.is_empty() {
        return None;
    }
    Some(terms.into_iter().collect::<Vec<_>>().join(" AND "))
}

/// The SPDX identifier of a Debian short license name, if it has one.
fn spdx_of(debian: &str) -> Option<String> {
    let lower = debian.to_ascii_lowercase();
    // "X with Y exception" becomes "X WITH Y".
    if let Some((license, exception)) = lower.split_once(" with ") {
        let exception = match exception.trim_end_matches(" exception").trim() {
            "autoconf" => "Autoconf-exception-2.0",
            "autoconf-data" => "Autoconf-exception-generic",
            "libtool" => "Libtool-exception",
            "bison" => "Bison-exception-2.2",
            "gcc-exception-3.1" | "gcc" => "GCC-exception-3.1",
            "linux-syscall-note" => "Linux-syscall-note",
            _ => return None,
        };
        return spdx_of(license).map(|l| format!("{l} WITH {exception}"));
    }
    let id = match lower.as_str() {
        "gpl-1" => "GPL-1.0-only",
        "gpl-1+" => "GPL-1.0-or-later",
        "gpl-2" => "GPL-2.0-only",
        "gpl-2+" | "gpl-2.0+" | "gplv2+" => "GPL-2.0-or-later",
        "gpl-3" => "GPL-3.0-only",
        "gpl-3+" | "gplv3+" => "GPL-3.0-or-later",
        "lgpl-2" => "LGPL-2.0-only",
        "lgpl-2+" | "lgpl-2.0+" => "LGPL-2.0-or-later",
        "lgpl-2.1" => "LGPL-2.1-only",
        "lgpl-2.1+" | "lgplv2.1+" => "LGPL-2.1-or-later",
        "lgpl-3" => "LGPL-3.0-only",
        "lgpl-3+" | "lgplv3+" => "LGPL-3.0-or-later",
        "agpl-3" => "AGPL-3.0-only",
        "agpl-3+" => "AGPL-3.0-or-later",
        "gfdl-1.2+" => "GFDL-1.2-or-later",
        "gfdl-1.3+" => "GFDL-1.3-or-later",
        "gfdl-niv-1.3" => "GFDL-1.3-no-invariants-only",
        "gfdl-niv-1.3+" => "GFDL-1.3-no-invariants-or-later",
        "bsd-2-clause" | "bsd-2-clause-netbsd" => "BSD-2-Clause",
        "bsd-3-clause" | "bsd-3" => "BSD-3-Clause",
        "bsd-4-clause" => "BSD-4-Clause",
        "bsd-4-clause-uc" => "BSD-4-Clause-UC",
        "expat" | "mit" | "mit/x11" => "MIT",
        "x11" => "X11",
        "apache-2.0" | "apache-2" => "Apache-2.0",
        "zlib" => "Zlib",
        "isc" => "ISC",
        "mpl-1.1" => "MPL-1.1",
        "mpl-2.0" => "MPL-2.0",
        "artistic" => "Artistic-1.0-Perl",
        "artistic-2.0" => "Artistic-2.0",
        "cc0" | "cc0-1.0" => "CC0-1.0",
        "cc-by-3.0" => "CC-BY-3.0",
        "cc-by-sa-3.0" => "CC-BY-SA-3.0",
        "cc-by-4.0" => "CC-BY-4.0",
        "cc-by-sa-4.0" => "CC-BY-SA-4.0",
        "bsl-1.0" => "BSL-1.0",
        "openssl" => "OpenSSL",
        "ssleay" => "SSLeay-standalone",
        "psf-2" => "PSF-2.0",
        "python" => "Python-2.0",
        "curl" => "curl",
        "openldap-2.8" => "OLDAP-2.8",
        "fsfap" => "FSFAP",
        "fsful" => "FSFUL",
        "fsfullr" => "FSFULLR",
        "libpng" => "Libpng",
        "unicode" => "Unicode-DFS-2016",
        "ruby" => "Ruby",
        "ofl-1.1" => "OFL-1.1",
        "wtfpl" => "WTFPL",
        "tcl" => "TCL",
        "ftl" => "FTL",
        "latex2e" => "Latex2e",
        "beerware" => "Beerware",
        _ => return None,
    };
    Some(id.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dep5_licenses_map_to_spdx_or_nothing() {
        let text = "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\n\
            Files: *\nLicense: GPL-2+\n\nFiles: lib/*\nLicense: LGPL-2.1+ or BSD-3-clause\n\n\
            License: GPL-2+\n Full text\n";
        assert_eq!(
            debian_license(text).unwrap(),
            "(LGPL-2.1-or-later OR BSD-3-Clause) AND GPL-2.0-or-later"
        );
        let unknown = text.replace("BSD-3-clause", "permissive");
        assert_eq!(debian_license(&unknown), None);
        assert_eq!(debian_license("This package was debianized by ..."), None);
        assert_eq!(
            spdx_of("GPL-3+ with Autoconf exception").unwrap(),
            "GPL-3.0-or-later WITH Autoconf-exception-2.0"
        );
    }

    #[test]
    fn ids_times_and_purls_are_what_spdx_accepts() {
        assert_eq!(
            spdx_id("deb", &["libc6", "2.36-9+deb12u13", "amd64"]),
            "SPDXRef-deb-libc6-2.36-9-deb12u13-amd64"
        );
        assert_eq!(iso_time(1_767_225_600), "2026-01-01T00:00:00Z");
        assert_eq!(iso_time(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(purl_escape("1:2.36-9+deb12u13"), "1%3A2.36-9%2Bdeb12u13");
        assert_eq!(cargo_license("MIT/Apache-2.0"), "MIT OR Apache-2.0");
    }
}
