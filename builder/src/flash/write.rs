//! Writing the image to the opened target, and reading it back to check it.

use std::fs::File;
use std::io::IsTerminal;
use std::os::unix::fs::FileExt;
use std::path::Path;

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use sha2::{Digest, Sha256};

use crate::formats::Bmap;

const CHUNK: usize = 4 << 20;

fn bytes_bar(total: u64, what: &str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(total);
    pb.set_style(
        ProgressStyle::with_template(
            "{prefix:.bold} [{bar:40}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    pb.set_prefix(what.to_string());
    pb
}

/// Writes the image (the bmap's ranges, or all of it) to `out`, the target `dev` opened, and
/// fsyncs. Without a bmap, returns the image's SHA-256, computed on the way, for the read-back.
pub fn write_image(
    image: &Path,
    image_size: u64,
    out: &File,
    dev: &Path,
    bmap: Option<&Bmap>,
    to_write: u64,
) -> Result<Option<String>> {
    let img =
        File::open(image).with_context(|| format!("cannot open the image {}", image.display()))?;
    let dev = dev.display();
    let pb = bytes_bar(to_write, "writing");
    let mut buf = vec![0u8; CHUNK];
    let mut copy = |start: u64, end: u64, hash: &mut Sha256| -> Result<()> {
        let mut pos = start;
        while pos < end {
            let n = ((end - pos) as usize).min(CHUNK);
            img.read_exact_at(&mut buf[..n], pos).with_context(|| {
                format!(
                    "cannot read {} at byte {pos}: was it changed while being written?",
                    image.display()
                )
            })?;
            hash.update(&buf[..n]);
            out.write_all_at(&buf[..n], pos).with_context(|| {
                format!(
                    "writing {dev} failed at byte {pos}: the device may be faulty, full or \
                     unplugged; check `dmesg`"
                )
            })?;
            pos += n as u64;
            pb.inc(n as u64);
        }
        Ok(())
    };
    let sha = match bmap {
        Some(b) => {
            for r in &b.ranges {
                let (s, e) = b.byte_range(r);
                let mut h = Sha256::new();
                copy(s, e, &mut h)?;
                // The image must match its bmap, or the read-back would "verify" the wrong data.
                if hex::encode(h.finalize()) != r.sha256 {
                    bail!(
                        "blocks {}-{} of {} do not match its bmap: the bmap belongs to another \
                         image, or the image changed; make the bmap again, or write without it",
                        r.first,
                        r.last,
                        image.display()
                    );
                }
            }
            None
        }
        None => {
            let mut h = Sha256::new();
            copy(0, image_size, &mut h)?;
            Some(hex::encode(h.finalize()))
        }
    };
    pb.set_message("syncing");
    out.sync_all().with_context(|| {
        format!("flushing {dev} failed: the device may be faulty or unplugged; check `dmesg`")
    })?;
    pb.finish_and_clear();
    Ok(sha)
}

/// Reads the written data back from `f`, the target `dev` opened, and checks it; returns what
/// was checked.
pub fn read_back(
    f: &File,
    dev: &Path,
    bmap: Option<&Bmap>,
    image_size: u64,
    image_sha: Option<&str>,
) -> Result<String> {
    // Drop the cached pages (clean after the fsync) so the check reads the device itself, not
    // the copy in memory.
    {
        use std::os::fd::AsRawFd;
        // SAFETY: a valid, open descriptor; posix_fadvise only gives the kernel a hint.
        unsafe {
            libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED);
        }
    }
    let dev = dev.display();
    let mut buf = vec![0u8; CHUNK];
    let mut hash_range = |start: u64, end: u64, pb: &ProgressBar| -> Result<String> {
        let mut h = Sha256::new();
        let mut pos = start;
        while pos < end {
            let n = ((end - pos) as usize).min(CHUNK);
            f.read_exact_at(&mut buf[..n], pos).with_context(|| {
                format!("reading {dev} back failed at byte {pos}: check `dmesg`")
            })?;
            h.update(&buf[..n]);
            pos += n as u64;
            pb.inc(n as u64);
        }
        Ok(hex::encode(h.finalize()))
    };
    let bad = |what: String| {
        anyhow::anyhow!(
            "{dev} does not hold what was written: {what}; the device may be faulty or fake \
             (smaller than it claims): try another one"
        )
    };
    match (bmap, image_sha) {
        (Some(b), _) => {
            let pb = bytes_bar(b.mapped_bytes(), "checking");
            for r in &b.ranges {
                let (s, e) = b.byte_range(r);
                if hash_range(s, e, &pb)? != r.sha256 {
                    return Err(bad(format!("blocks {}-{} differ", r.first, r.last)));
                }
            }
            pb.finish_and_clear();
            Ok(format!(
                "{} mapped ranges against the bmap's SHA-256",
                b.ranges.len()
            ))
        }
        (None, Some(want)) => {
            let pb = bytes_bar(image_size, "checking");
            let got = hash_range(0, image_size, &pb)?;
            pb.finish_and_clear();
            if got != want {
                return Err(bad(format!(
                    "SHA-256 of its first {image_size} bytes is {got}, the image's is {want}"
                )));
            }
            Ok(format!("the SHA-256 of the first {image_size} bytes"))
        }
        (None, None) => bail!("internal error: no checksum to verify against"),
    }
}
