//! Keys for the unit tests.

/// A valid ed25519 public key line.
pub const ED25519: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDrAR/bS3lTV9w81gAeSQwVk7HCW8UHb7lUqp0e37MSe test@example";

/// A valid ecdsa-sha2-nistp256 public key line.
pub const P256: &str = "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBNtsvnW/7LOP0cJrLlk8KPmV8d18y87CZOhhoYqO2JbFM89bAbSF3LKTmO6QKdTBQvioKxj0c8VACpP1zDbbrWA= test@example";
