//! Every location the program reads or writes, relative to a root prefix.
//!
//! On the machine the root is `/`; unit tests use a temporary directory. Paths that end up
//! *inside* rendered files or symlinks (what the running system sees) are the `MACHINE_*`
//! constants and never carry the prefix.

use std::path::{Path, PathBuf};

/// Where the TLS certificate is, as seen by nginx/coturn on the machine.
pub const MACHINE_TLS_CERT: &str = "/data/config/tls/cert.pem";
/// Where the TLS key is, as seen by nginx/coturn on the machine.
pub const MACHINE_TLS_KEY: &str = "/data/config/tls/key.pem";
/// HTTP-01 webroot served by nginx at /.well-known/acme-challenge/.
pub const MACHINE_ACME_WEBROOT: &str = "/var/lib/appliance/acme-challenge";
/// dehydrated's BASEDIR.
pub const MACHINE_ACME_BASEDIR: &str = "/data/config/acme";
/// Time zone database (target of the localtime symlink).
pub const MACHINE_ZONEINFO: &str = "/usr/share/zoneinfo";
/// Jitsi's prosody plugins, when Jitsi's packages are installed.
pub const MACHINE_JITSI_PLUGINS: &str = "/usr/share/jitsi-meet/prosody-plugins/";
/// Hook handed to dehydrated when it exists in the image.
pub const MACHINE_ACME_HOOK: &str = "/usr/lib/appliance/acme-hook";
/// The ESP of the disk the root was read from (70-appliance-esp.rules): a second disk carrying
/// the same image has an ESP with the same label, and its seed file is not this machine's.
pub const MACHINE_ESP_DEVICE: &str = "/dev/disk/appliance/esp";

#[derive(Debug, Clone)]
pub struct Paths {
    pub root: PathBuf,
}

impl Paths {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Paths { root: root.into() }
    }

    /// Prefix an absolute machine path with the root.
    pub fn at(&self, machine_path: &str) -> PathBuf {
        self.root.join(machine_path.trim_start_matches('/'))
    }

    pub fn appliance_dir(&self) -> PathBuf {
        self.at("/data/appliance")
    }

    /// `addr`, only on the machine itself (root `/`), never when the paths point into a test
    /// directory: network services are talked to only where they are this machine's.
    fn on_the_machine(&self, addr: &str) -> Option<std::net::SocketAddr> {
        if self.root == std::path::Path::new("/") {
            addr.parse().ok()
        } else {
            None
        }
    }

    /// Prosody's HTTP listener (BOSH and WebSocket, behind nginx), waited for on the machine.
    pub fn prosody_http(&self) -> Option<std::net::SocketAddr> {
        self.on_the_machine("127.0.0.1:5280")
    }

    /// The cloud metadata service, asked only on the machine itself.
    pub fn metadata_service(&self) -> Option<std::net::SocketAddr> {
        self.on_the_machine(crate::cloud::METADATA)
    }
    pub fn answers(&self) -> PathBuf {
        self.at("/data/appliance/answers.toml")
    }
    /// Wizard defaults saved from a partial seed (never holds passwords).
    pub fn defaults(&self) -> PathBuf {
        self.at("/data/appliance/defaults.toml")
    }
    pub fn state(&self) -> PathBuf {
        self.at("/data/appliance/state.toml")
    }
    pub fn secrets(&self) -> PathBuf {
        self.at("/data/appliance/secrets.toml")
    }
    pub fn setup_done(&self) -> PathBuf {
        self.at("/data/appliance/setup-done")
    }
    pub fn config_dir(&self) -> PathBuf {
        self.at("/data/config")
    }
    pub fn tls_dir(&self) -> PathBuf {
        self.at("/data/config/tls")
    }
    pub fn tls_cert(&self) -> PathBuf {
        self.at(MACHINE_TLS_CERT)
    }
    pub fn tls_key(&self) -> PathBuf {
        self.at(MACHINE_TLS_KEY)
    }
    pub fn acme_dir(&self) -> PathBuf {
        self.at(MACHINE_ACME_BASEDIR)
    }
    pub fn acme_webroot(&self) -> PathBuf {
        self.at(MACHINE_ACME_WEBROOT)
    }
    pub fn localtime(&self) -> PathBuf {
        self.at("/data/config/localtime")
    }
    pub fn power_off(&self) -> PathBuf {
        self.at("/data/config/power-off.toml")
    }
    pub fn nginx_site(&self) -> PathBuf {
        self.at("/data/config/nginx/site.conf")
    }
    /// The SSH host keys and the authorized keys.
    pub fn ssh_dir(&self) -> PathBuf {
        self.at("/data/ssh")
    }
    /// What the image says about itself (name, version, data schema).
    pub fn release(&self) -> PathBuf {
        self.at(appliance_spec::release::RELEASE_FILE)
    }
    pub fn authorized_keys_dir(&self) -> PathBuf {
        self.at("/data/ssh/authorized_keys")
    }
    pub fn admin_authorized_keys(&self) -> PathBuf {
        self.at("/data/ssh/authorized_keys/admin")
    }
    pub fn templates_dir(&self) -> PathBuf {
        self.at("/usr/share/appliance/templates")
    }
    pub fn zoneinfo(&self) -> PathBuf {
        self.at(MACHINE_ZONEINFO)
    }
    pub fn prosody_data(&self) -> PathBuf {
        self.at("/var/lib/prosody")
    }
    pub fn etc_passwd(&self) -> PathBuf {
        self.at("/etc/passwd")
    }
    pub fn etc_group(&self) -> PathBuf {
        self.at("/etc/group")
    }
    pub fn jitsi_index(&self) -> PathBuf {
        self.at("/usr/share/jitsi-meet/index.html")
    }
    pub fn acme_hook(&self) -> PathBuf {
        self.at(MACHINE_ACME_HOOK)
    }
    pub fn esp_device(&self) -> PathBuf {
        self.at(MACHINE_ESP_DEVICE)
    }
    pub fn esp_mount(&self) -> PathBuf {
        self.at("/run/appliance/esp")
    }
    /// What this machine knows of its root slots and the last update attempt.
    pub fn update_record(&self) -> PathBuf {
        self.at("/data/appliance/update.toml")
    }
    /// Downloaded update bundles, until they are installed.
    pub fn update_downloads(&self) -> PathBuf {
        self.at("/data/appliance/update")
    }
    /// The version of the layout of /data ([`appliance_spec::DATA_SCHEMA`]).
    pub fn data_schema(&self) -> PathBuf {
        self.at("/data/appliance/schema")
    }
    /// Set for this boot when /data is newer than this image understands.
    pub fn data_schema_refused(&self) -> PathBuf {
        self.at("/run/appliance/data-schema-refused")
    }
    /// Where a new root slot is mounted to copy its device trees (Raspberry Pi).
    pub fn slot_mount(&self) -> PathBuf {
        self.at("/run/appliance/slot")
    }
    pub fn console(&self) -> PathBuf {
        self.at("/dev/console")
    }
    pub fn active_consoles(&self) -> PathBuf {
        self.at("/sys/class/tty/console/active")
    }
    /// Map a path under the root back to what the machine calls it (for messages).
    pub fn display(&self, p: &Path) -> String {
        match p.strip_prefix(&self.root) {
            Ok(rel) => format!("/{}", rel.display()),
            Err(_) => p.display().to_string(),
        }
    }
}
