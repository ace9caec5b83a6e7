//! The meeting-server scenarios of the appliance, for the tests only: images booted with the
//! QEMU harness (`appliance-qemu-tests`) and checked from this machine the way a host, a guest
//! and an outsider would reach them.
//!
//! - [`session`]: one boot of a machine under test, a sequence of named steps that explain a
//!   failure and power the machine off;
//! - [`meeting`]: the scenarios (setup from a seed file, setup through the wizard);
//! - [`checks`]: HTTPS, XMPP, SSH and the generated configurations, checked on a set-up machine;
//! - [`hardening`]: AppArmor, listening sockets, the firewall, systemd's exposure scores;
//! - [`update`]: signed A/B updates installed over SSH, refused, and failing their trial;
//! - [`disk`]: a seed file on the ESP, and the data partition read back after power-off;
//! - [`metadata`]: a stand-in for a cloud's metadata service, reached through QEMU;
//! - [`channel`]: a stand-in for an update channel, a static HTTPS server on this machine;
//! - [`seeded`]: a copy of a built image with a complete seed, for the measurement examples;
//! - the clients and servers they use: [`ssh`], [`http`], [`xmpp`] (BOSH), [`pebble`] (Let's
//!   Encrypt's test server), [`dns`].
//!
//! This crate links TLS (OpenSSL through `ureq`): keeping it out of the harness keeps it out of
//! the `appliance` binary.

pub mod channel;
pub mod checks;
pub mod disk;
pub mod dns;
pub mod hardening;
pub mod http;
pub mod meeting;
pub mod metadata;
pub mod pebble;
pub mod seeded;
pub mod session;
pub mod ssh;
pub mod update;
pub mod xmpp;
