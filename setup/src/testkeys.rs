//! Keys for the unit tests.

/// A valid ed25519 public key line.
pub const ED25519: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDrAR/bS3lTV9w81gAeSQwVk7HCW8UHb7lUqp0e37MSe test@example";
