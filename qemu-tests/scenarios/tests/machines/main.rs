//! Every scenario that builds and boots the appliance, in one test binary. cargo runs test
//! binaries one after the other but the tests of one binary side by side, so here the builds
//! (the arm64 image through qemu-user, the update versions) go on while the x86_64 machines
//! boot. Boots still run one at a time (`test_image::one_boot_at_a_time`): two QEMUs under TCG
//! on a small machine would only slow each other down past their timeouts.
//!
//! - [`arm64`]: the arm64 Raspberry Pi image, built, booted on `virt`, its Pi boot files checked;
//! - [`faults`]: faults a set-up machine must come through;
//! - [`meeting`]: setup from a seed file and through the wizard, then meetings;
//! - [`updates`]: signed A/B updates, refused, committed and falling back.

mod arm64;
mod common;
mod faults;
mod meeting;
mod updates;
