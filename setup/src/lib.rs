//! First-boot setup and administration of the Jitsi Meet appliance.
//!
//! Everything that touches the machine goes through [`paths::Paths`] (a root prefix, so tests
//! run in a temporary directory) and [`runner::Runner`] (so tests record commands instead of
//! running them).

pub mod acme;
pub mod answers;
pub mod backup;
pub mod backup_cli;
pub mod boot;
pub mod cloud;
pub mod domain;
pub mod esp_read;
pub mod fsutil;
pub mod hosts;
pub mod lock;
pub mod passphrase;
pub mod paths;
pub mod power;
pub mod prompt;
pub mod render;
pub mod restore;
pub mod runner;
pub mod schema;
pub mod scram;
pub mod secrets;
pub mod seedfile;
pub mod services;
pub mod settings;
pub mod sshkeys;
pub mod state;
pub mod status;
pub mod steps;
pub mod term;
#[cfg(test)]
mod testkeys;
pub mod tls;
pub mod update;
pub mod wizard;
