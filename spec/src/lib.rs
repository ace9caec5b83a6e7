//! The image contract, written once: what the build writes, the machine reads and the tests
//! check. Everything here is data and pure functions, with light dependencies, so that the
//! builder (`appliance`), the in-image program (`appliance-admin`) and the QEMU tests can all
//! depend on it.
//!
//! - [`arch`]: architectures and boards;
//! - [`layout`]: the partition table as data (labels, types, slots, sizes, flags);
//! - [`esp`]: paths on the EFI system partition, the seed file name;
//! - [`bootcfg`]: the boot configuration of each firmware (which slot boots, trials, commits);
//! - [`ready`]: the readiness line a booted image prints, and what a healthy boot reports;
//! - [`seed`], [`validate`]: the first-boot seed schema and the checks of every answer;
//! - [`verity`]: the dm-verity hash tree;
//! - [`signature`]: the signing keys and signatures of outputs and updates;
//! - [`bundle`], [`version`]: update bundles, update channels, image versions;
//! - [`template`]: the template dialect of build-time and setup-time templates.

pub mod arch;
pub mod bootcfg;
pub mod bundle;
pub mod cmdline;
pub mod esp;
pub mod layout;
pub mod ready;
pub mod release;
pub mod seed;
pub mod signature;
pub mod template;
pub mod validate;
pub mod verity;
pub mod version;

pub use arch::{Arch, Board};
pub use layout::Slot;

/// The layout of `/data` this image reads and writes. An update to an image with a higher
/// number migrates `/data` at its first boot; an image finding a higher number than its own
/// on `/data` refuses to start the meeting services rather than damage data it does not know.
pub const DATA_SCHEMA: u32 = 1;
