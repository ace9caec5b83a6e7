//! Stage 1: every active repository's signing key, fetched or read and checked against the
//! fingerprint pinned in the configuration, before anything is downloaded with it.

use std::path::PathBuf;

use anyhow::Result;

use super::BuildCtx;
use crate::packages;

/// The verified keyrings, as (repository name, binary keyring file).
pub type Keyrings = Vec<(String, PathBuf)>;

pub fn verify(ctx: &mut BuildCtx) -> Result<(Keyrings, String)> {
    if ctx.locked() {
        // Every package comes from the locked repository, each checked against its SHA-256
        // in appliance.lock; the lock records the keys its sources were signed with.
        return Ok((
            Vec::new(),
            "not needed: packages come from appliance.lock".into(),
        ));
    }
    let dir = ctx.fresh_dir("keys")?;
    let mut keyrings = Vec::new();
    for repo in ctx.config.active_repositories() {
        ctx.progress
            .message(&format!("checking the key of {}", repo.name));
        let dest = dir.join(format!("{}.gpg", repo.name));
        packages::verified_keyring(ctx.config, repo, &dest)?;
        keyrings.push((repo.name.clone(), dest));
    }
    let note = format!("{} repository key(s) verified", keyrings.len());
    Ok((keyrings, note))
}
