//! What the image says about itself, for the program on the machine: which image and version
//! runs, for which machine, which /data layout it uses, and where its updates come from.
//! The build writes it into the root (`/usr/lib/appliance/release.toml`), next to the public
//! keys updates must be signed with (`/usr/lib/appliance/update-keys.pub`); both are part of
//! the verified root, so changing them changes the root hash.

use serde::{Deserialize, Serialize};

use crate::version::Version;
use crate::{Arch, Board};

/// Where the build puts the release description in the root.
pub const RELEASE_FILE: &str = "/usr/lib/appliance/release.toml";
/// Where the build puts the public keys of `[updates] trusted_keys`.
pub const UPDATE_KEYS_FILE: &str = "/usr/lib/appliance/update-keys.pub";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Release {
    pub name: String,
    pub version: Version,
    pub arch: Arch,
    pub board: Board,
    pub data_schema: u32,
    #[serde(default)]
    pub updates: UpdatePolicy,
}

/// `[updates]` as the machine needs it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdatePolicy {
    /// The channel the machine checks daily (`index.json` under it); none: updates are
    /// installed by hand only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// When the machine may reboot into an update it fetched, `HH:MM-HH:MM` local time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<String>,
    /// A PEM certificate trusted for the channel's HTTPS, for a channel behind a private CA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_certificate: Option<String>,
}
