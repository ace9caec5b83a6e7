//! dm-verity hash tree, computed in Rust so the build needs no `veritysetup` and no root.
//!
//! The output is byte-identical to `veritysetup format` (cryptsetup 2.6.1) with its defaults:
//! format v1, sha256, 4096-byte data and hash blocks, a 512-byte superblock in the first hash
//! block (zero padded to 4096) and the tree levels stored top level first.
//!
//! Tree shape (cryptsetup `lib/verity/verity_hash.c`): each data block is hashed as
//! `sha256(salt ‖ block)`; the 32-byte digests are packed 128 per 4 KiB hash block (zero
//! tail); level *i+1* hashes the blocks of level *i* until a level fits in one block, and the
//! root hash is `sha256(salt ‖ top block)`.
//!
//! Edge case: with exactly one data block cryptsetup uses zero levels, so the root hash is
//! `sha256(salt ‖ data block)` and the hash device holds only the superblock. This module does
//! the same. Zero data blocks are rejected.

use std::fs::{File, OpenOptions};
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::Path;

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

/// Data and hash block size in bytes.
pub const BLOCK_SIZE: u64 = 4096;

/// Same value as a `usize`, for buffers.
const BS: usize = BLOCK_SIZE as usize;
/// sha256 digest length; it is a power of two, so each digest slot is exactly this long.
const DIGEST: usize = 32;
/// Digests per hash block.
const PER_BLOCK: u64 = (BS / DIGEST) as u64;
/// Length of the on-disk superblock (the rest of its hash block is zero).
const SUPERBLOCK_LEN: usize = 512;

/// The result of [`build_hash_tree`]: everything needed for the kernel table or
/// `systemd-veritysetup` (root hash, salt) and for sizing partitions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerityTree {
    pub root_hash: [u8; 32],
    pub salt: [u8; 32],
    pub uuid: [u8; 16],
    /// Number of 4 KiB data blocks covered.
    pub data_blocks: u64,
    /// Bytes written to the hash device (superblock block + all levels).
    pub hash_bytes: u64,
}

impl VerityTree {
    /// Root hash as lower-case hex, as `roothash=` expects.
    pub fn root_hash_hex(&self) -> String {
        hex::encode(self.root_hash)
    }

    /// Salt as lower-case hex, as `veritysetup --salt=` and the kernel table expect.
    pub fn salt_hex(&self) -> String {
        hex::encode(self.salt)
    }

    /// The superblock UUID in 8-4-4-4-12 form (bytes in stored order, like libuuid).
    pub fn uuid_string(&self) -> String {
        uuid::Uuid::from_bytes(self.uuid).hyphenated().to_string()
    }

    /// First 128 bits of the root hash: the data partition UUID by the Discoverable
    /// Partitions convention, which lets systemd find the partitions from `roothash=` alone.
    pub fn data_partition_uuid(&self) -> uuid::Uuid {
        let mut b = [0u8; 16];
        b.copy_from_slice(&self.root_hash[..16]);
        uuid::Uuid::from_bytes(b)
    }

    /// Last 128 bits of the root hash: the hash partition UUID (same convention).
    pub fn hash_partition_uuid(&self) -> uuid::Uuid {
        let mut b = [0u8; 16];
        b.copy_from_slice(&self.root_hash[16..]);
        uuid::Uuid::from_bytes(b)
    }
}

/// Pads `data` with zeros to a multiple of BLOCK_SIZE (mksquashfs output is 4 KiB padded
/// already, but be safe). Returns the new length.
pub fn pad_to_block(data: &Path) -> std::io::Result<u64> {
    let f = OpenOptions::new().write(true).open(data)?;
    let len = f.metadata()?.len();
    let padded = len.div_ceil(BLOCK_SIZE) * BLOCK_SIZE;
    if padded != len {
        // Extending with set_len reads back as zeros and keeps the file sparse.
        f.set_len(padded)?;
    }
    Ok(padded)
}

/// Number of hash blocks in each level for `data_blocks` data blocks, level 0 (leaves) first.
/// Empty for a single data block (cryptsetup's zero-level case).
fn level_sizes(data_blocks: u64) -> Vec<u64> {
    let mut sizes = Vec::new();
    let mut n = data_blocks;
    while n > 1 {
        n = n.div_ceil(PER_BLOCK);
        sizes.push(n);
    }
    sizes
}

/// Size in bytes of the hash device for `data_bytes` of data (superblock block + all levels):
/// used to size partitions before the tree exists. Partial trailing blocks count as a block.
pub fn hash_device_size(data_bytes: u64) -> u64 {
    let data_blocks = data_bytes.div_ceil(BLOCK_SIZE);
    (1 + level_sizes(data_blocks).iter().sum::<u64>()) * BLOCK_SIZE
}

/// `sha256(salt ‖ block)`: the v1 (salt first) hash used for every data and hash block.
fn salted_hash(salt: &[u8; 32], block: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(salt);
    h.update(block);
    h.finalize().into()
}

/// The 512-byte superblock, zero padded to a full hash block (layout: cryptsetup
/// `struct verity_sb`, little-endian, packed).
fn superblock(salt: &[u8; 32], uuid: &[u8; 16], data_blocks: u64) -> Vec<u8> {
    let mut sb = vec![0u8; BS];
    sb[0..8].copy_from_slice(b"verity\0\0");
    sb[8..12].copy_from_slice(&1u32.to_le_bytes()); // superblock version
    sb[12..16].copy_from_slice(&1u32.to_le_bytes()); // hash type 1 = salt prepended
    sb[16..32].copy_from_slice(uuid);
    sb[32..38].copy_from_slice(b"sha256"); // NUL padded to 32 bytes by the zeroed buffer
    sb[64..68].copy_from_slice(&(BLOCK_SIZE as u32).to_le_bytes());
    sb[68..72].copy_from_slice(&(BLOCK_SIZE as u32).to_le_bytes());
    sb[72..80].copy_from_slice(&data_blocks.to_le_bytes());
    sb[80..82].copy_from_slice(&(salt.len() as u16).to_le_bytes());
    sb[88..88 + salt.len()].copy_from_slice(salt);
    debug_assert!(88 + salt.len() <= SUPERBLOCK_LEN);
    sb
}

/// Pads a packed digest array with zeros to whole hash blocks.
fn pad_level(mut level: Vec<u8>) -> Vec<u8> {
    let padded = level.len().div_ceil(BS) * BS;
    level.resize(padded, 0);
    level
}

/// The hash tree of `data_blocks` blocks read from `data`: the root hash and the levels, leaves
/// first. Streams the data; only the level-0 digests (1/128 of the data) are kept in memory.
fn compute_tree(
    data: &mut impl Read,
    data_blocks: u64,
    salt: &[u8; 32],
) -> Result<([u8; 32], Vec<Vec<u8>>)> {
    let mut block = vec![0u8; BS];
    let mut leaves = Vec::with_capacity(usize::try_from(data_blocks)? * DIGEST);
    for i in 0..data_blocks {
        data.read_exact(&mut block)
            .with_context(|| format!("reading data block {i}"))?;
        leaves.extend_from_slice(&salted_hash(salt, &block));
    }
    // Build upwards until a level fits in one hash block; the top block's hash is the root.
    // With a single data block its digest is directly the root.
    let mut levels: Vec<Vec<u8>> = Vec::new();
    if data_blocks == 1 {
        let mut r = [0u8; 32];
        r.copy_from_slice(&leaves);
        return Ok((r, levels));
    }
    let mut current = pad_level(leaves);
    loop {
        let next: Vec<u8> = current
            .chunks(BS)
            .flat_map(|b| salted_hash(salt, b))
            .collect();
        let top = current.len() == BS;
        levels.push(current);
        if top {
            let mut r = [0u8; 32];
            r.copy_from_slice(&next);
            return Ok((r, levels));
        }
        current = pad_level(next);
    }
}

/// Reads `data` sequentially and writes the hash device (superblock + tree) to `hash_out`.
///
/// `data` must be a non-empty multiple of [`BLOCK_SIZE`] (see [`pad_to_block`]).
pub fn build_hash_tree(
    data: &Path,
    hash_out: &Path,
    salt: &[u8; 32],
    uuid: &[u8; 16],
) -> Result<VerityTree> {
    let file = File::open(data).with_context(|| format!("opening {}", data.display()))?;
    let len = file
        .metadata()
        .with_context(|| format!("reading the size of {}", data.display()))?
        .len();
    if len == 0 || !len.is_multiple_of(BLOCK_SIZE) {
        bail!(
            "{}: size {len} is not a non-zero multiple of {BLOCK_SIZE} (pad it first)",
            data.display()
        );
    }
    let data_blocks = len / BLOCK_SIZE;
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let (root_hash, levels) = compute_tree(&mut reader, data_blocks, salt)
        .with_context(|| format!("hashing {}", data.display()))?;

    // Hash device: superblock block, then the levels top first (cryptsetup's on-disk order).
    let out = File::create(hash_out).with_context(|| format!("creating {}", hash_out.display()))?;
    let mut w = BufWriter::new(out);
    let write_err = || format!("writing {}", hash_out.display());
    w.write_all(&superblock(salt, uuid, data_blocks))
        .with_context(write_err)?;
    for level in levels.iter().rev() {
        w.write_all(level).with_context(write_err)?;
    }
    w.flush().with_context(write_err)?;
    let hash_bytes = BLOCK_SIZE + levels.iter().map(|l| l.len() as u64).sum::<u64>();
    debug_assert_eq!(hash_bytes, hash_device_size(len));

    Ok(VerityTree {
        root_hash,
        salt: *salt,
        uuid: *uuid,
        data_blocks,
        hash_bytes,
    })
}

/// What a hash device's superblock says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Superblock {
    pub salt: [u8; 32],
    pub uuid: [u8; 16],
    pub data_blocks: u64,
}

/// Parses the superblock this module writes (format v1, sha256, 4 KiB blocks, 32-byte salt).
pub fn parse_superblock(block: &[u8]) -> Result<Superblock> {
    if block.len() < SUPERBLOCK_LEN || &block[0..8] != b"verity\0\0" {
        bail!("no dm-verity superblock (the hash partition is empty or damaged)");
    }
    let u32_at =
        |o: usize| u32::from_le_bytes([block[o], block[o + 1], block[o + 2], block[o + 3]]);
    if u32_at(8) != 1 || u32_at(12) != 1 || &block[32..39] != b"sha256\0" {
        bail!("a dm-verity superblock of another format than v1/sha256");
    }
    if u64::from(u32_at(64)) != BLOCK_SIZE || u64::from(u32_at(68)) != BLOCK_SIZE {
        bail!("a dm-verity superblock with block sizes other than {BLOCK_SIZE}");
    }
    if u16::from_le_bytes([block[80], block[81]]) != 32 {
        bail!("a dm-verity superblock with a salt that is not 32 bytes");
    }
    let mut salt = [0u8; 32];
    salt.copy_from_slice(&block[88..120]);
    let mut uuid = [0u8; 16];
    uuid.copy_from_slice(&block[16..32]);
    let mut n = [0u8; 8];
    n.copy_from_slice(&block[72..80]);
    Ok(Superblock {
        salt,
        uuid,
        data_blocks: u64::from_le_bytes(n),
    })
}

/// Checks data against its hash device, as `veritysetup verify` does: the superblock is read,
/// the tree is computed from the data and must equal the stored one, block for block. Returns
/// the root hash; the caller compares it with the one it trusts.
pub fn verify(data: &mut impl Read, hash_device: &mut impl Read) -> Result<[u8; 32]> {
    let mut sb = vec![0u8; BS];
    hash_device
        .read_exact(&mut sb)
        .context("reading the dm-verity superblock")?;
    let sb = parse_superblock(&sb)?;
    let (root, levels) = compute_tree(data, sb.data_blocks, &sb.salt)?;
    let mut stored = vec![0u8; BS];
    for (i, level) in levels.iter().rev().enumerate() {
        for (j, expected) in level.chunks(BS).enumerate() {
            hash_device
                .read_exact(&mut stored)
                .with_context(|| format!("reading hash level {i}, block {j}"))?;
            if stored != expected {
                bail!("the stored hash tree does not match the data (level {i}, block {j})");
            }
        }
    }
    Ok(root)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;
    use std::process::Command;

    const SALT: [u8; 32] = [
        0x5a, 0x17, 0x03, 0x99, 0x10, 0x20, 0x30, 0x40, 0x50, 0x60, 0x70, 0x80, 0x90, 0xa0, 0xb0,
        0xc0, 0xd0, 0xe0, 0xf0, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0a, 0x0b,
        0x0c, 0x0d,
    ];
    const UUID: [u8; 16] = [
        0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc, 0x4d, 0xef, 0x81, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd,
        0xef,
    ];

    /// Deterministic pseudo-random bytes (64-bit LCG), so failures are reproducible.
    fn lcg_bytes(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed;
        let mut v = Vec::with_capacity(len);
        while v.len() < len {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            v.extend_from_slice(&(x >> 32).to_le_bytes()[..4]);
        }
        v.truncate(len);
        v
    }

    fn write_data(dir: &Path, name: &str, blocks: u64, seed: u64) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, lcg_bytes((blocks * BLOCK_SIZE) as usize, seed)).unwrap();
        p
    }

    /// Finds veritysetup; fails (never skips) if it is missing.
    fn veritysetup() -> PathBuf {
        let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).collect())
            .unwrap_or_default();
        dirs.extend(["/usr/sbin", "/sbin"].map(PathBuf::from));
        dirs.into_iter()
            .map(|d| d.join("veritysetup"))
            .find(|p| p.is_file())
            .expect("veritysetup not found: install the cryptsetup-bin package (apt-get install cryptsetup-bin)")
    }

    fn run_veritysetup(args: &[&std::ffi::OsStr]) -> std::process::Output {
        Command::new(veritysetup())
            .args(args)
            .output()
            .expect("running veritysetup")
    }

    #[test]
    fn hash_device_size_matches_written_size() {
        let dir = tempfile::tempdir().unwrap();
        for blocks in [1u64, 2, 128, 129, 16384, 16385] {
            let data = dir.path().join("data");
            // Sparse zero data is enough for sizing and keeps the test fast.
            File::create(&data)
                .unwrap()
                .set_len(blocks * BLOCK_SIZE)
                .unwrap();
            let hash = dir.path().join("hash");
            let tree = build_hash_tree(&data, &hash, &SALT, &UUID).unwrap();
            let written = std::fs::metadata(&hash).unwrap().len();
            assert_eq!(written, tree.hash_bytes, "{blocks} blocks");
            assert_eq!(
                hash_device_size(blocks * BLOCK_SIZE),
                written,
                "{blocks} blocks"
            );
            assert_eq!(tree.data_blocks, blocks);
        }
        // Expected values worked out by hand: 2 blocks -> sb + 1, 129 -> sb + 1 + 2,
        // 16385 -> sb + 1 + 2 + 129.
        assert_eq!(hash_device_size(2 * BLOCK_SIZE), 2 * BLOCK_SIZE);
        assert_eq!(hash_device_size(129 * BLOCK_SIZE), 4 * BLOCK_SIZE);
        assert_eq!(hash_device_size(16385 * BLOCK_SIZE), 133 * BLOCK_SIZE);
        // A partial trailing block counts as a whole one.
        assert_eq!(hash_device_size(BLOCK_SIZE + 1), 2 * BLOCK_SIZE);
    }

    #[test]
    fn pad_to_block_pads_with_zeros() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("d");
        std::fs::write(&p, [1u8; 5000]).unwrap();
        assert_eq!(pad_to_block(&p).unwrap(), 8192);
        let v = std::fs::read(&p).unwrap();
        assert_eq!(v.len(), 8192);
        assert!(v[..5000].iter().all(|&b| b == 1) && v[5000..].iter().all(|&b| b == 0));
        // Already aligned: unchanged.
        assert_eq!(pad_to_block(&p).unwrap(), 8192);
    }

    #[test]
    fn rejects_empty_and_unaligned_data() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("d");
        let h = dir.path().join("h");
        std::fs::write(&p, []).unwrap();
        assert!(build_hash_tree(&p, &h, &SALT, &UUID).is_err());
        std::fs::write(&p, [0u8; 100]).unwrap();
        let e = build_hash_tree(&p, &h, &SALT, &UUID).unwrap_err();
        assert!(format!("{e:#}").contains("multiple of 4096"), "{e:#}");
    }

    #[test]
    fn accessors_format_hex_and_uuid() {
        let t = VerityTree {
            root_hash: [0xab; 32],
            salt: SALT,
            uuid: UUID,
            data_blocks: 1,
            hash_bytes: 4096,
        };
        assert_eq!(t.root_hash_hex(), "ab".repeat(32));
        assert_eq!(t.salt_hex(), hex::encode(SALT));
        assert_eq!(t.uuid_string(), "12345678-9abc-4def-8123-456789abcdef");
    }

    /// Byte-for-byte comparison with `veritysetup format`, then `veritysetup verify` on our
    /// tree, and a negative check after corrupting one data byte.
    #[test]
    fn identical_to_veritysetup() {
        let dir = tempfile::tempdir().unwrap();
        // 1 block: zero levels; 129: two levels; 900 blocks (~3.5 MB): two levels with a
        // partial leaf block; 16385: three levels.
        for (blocks, seed) in [(1u64, 1u64), (129, 2), (900, 3), (16385, 4)] {
            let data = write_data(dir.path(), "data", blocks, seed);
            let ours = dir.path().join("ours.hash");
            let theirs = dir.path().join("theirs.hash");
            let _ = std::fs::remove_file(&theirs);
            let tree = build_hash_tree(&data, &ours, &SALT, &UUID).unwrap();

            let out = run_veritysetup(&[
                "format".as_ref(),
                format!("--salt={}", tree.salt_hex()).as_ref(),
                format!("--uuid={}", tree.uuid_string()).as_ref(),
                data.as_os_str(),
                theirs.as_os_str(),
            ]);
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success(),
                "veritysetup format: {stdout}{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let root = stdout
                .lines()
                .find_map(|l| l.strip_prefix("Root hash:"))
                .map(str::trim)
                .expect("no root hash in veritysetup output");
            assert_eq!(root, tree.root_hash_hex(), "{blocks} blocks: root hash");
            assert!(
                std::fs::read(&ours).unwrap() == std::fs::read(&theirs).unwrap(),
                "{blocks} blocks: hash device differs from veritysetup's"
            );

            let verify = |root: &str| {
                run_veritysetup(&[
                    "verify".as_ref(),
                    data.as_os_str(),
                    ours.as_os_str(),
                    root.as_ref(),
                ])
                .status
                .success()
            };
            assert!(verify(root), "{blocks} blocks: veritysetup verify failed");
            // Our own verification agrees, and reads the superblock veritysetup wrote.
            let ours_root = super::verify(
                &mut std::fs::File::open(&data).unwrap(),
                &mut std::fs::File::open(&theirs).unwrap(),
            )
            .unwrap();
            assert_eq!(hex::encode(ours_root), root, "{blocks} blocks: our verify");

            // Flip one byte in the last data block: verification must now fail.
            let mut bytes = std::fs::read(&data).unwrap();
            let i = bytes.len() - 77;
            bytes[i] ^= 0x01;
            std::fs::write(&data, &bytes).unwrap();
            assert!(
                !verify(root),
                "{blocks} blocks: verify passed on corrupt data"
            );
            let corrupt = super::verify(
                &mut std::fs::File::open(&data).unwrap(),
                &mut std::fs::File::open(&ours).unwrap(),
            );
            if blocks == 1 {
                // No tree to compare: only the root hash tells, and it changed.
                assert_ne!(hex::encode(corrupt.unwrap()), root);
            } else {
                assert!(
                    corrupt.is_err(),
                    "{blocks} blocks: our verify passed corrupt data"
                );
            }
        }
    }
}
