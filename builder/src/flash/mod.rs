//! `appliance write IMAGE --device /dev/sdX`: writes an image to a disk, safely.
//!
//! Before anything is opened for writing the target is described and checked (`target.rs`,
//! from the machine's block devices, mounts and swaps in `system.rs`). It is refused if it is
//! on a disk that holds the running system (`/`, `/boot`, an active swap) or any mounted file
//! system; if it (or a partition of it, or a device stacked on it) is mounted; if it is larger
//! than `--max-size-gib` (a USB stick is rarely 1 TB; an internal disk often is) without
//! `--force`; if it is smaller than the image; or if it is the image itself. Then it is opened,
//! once: that handle is what is written and read back. The user types the device's name to
//! confirm (or passes `--yes`), and before anything is written the handle must still be the
//! device described (major:minor, the kernel's disk sequence number, size, model), so a disk
//! plugged in under the same name meanwhile is not the one written.
//!
//! With a bmap (see [`crate::formats::write_bmap`]) only the mapped ranges are written; like
//! `bmaptool copy`, the unmapped areas of the target are LEFT AS THEY WERE, not zeroed: the
//! image's file systems do not read them. Without a bmap every byte of the image is written,
//! zeros included, since the device may hold old data where the image has zeros. Afterwards
//! the data is read back from the device and checked against SHA-256 sums (`write.rs`).

#[cfg(test)]
mod fixtures;
mod system;
mod target;
mod write;

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};

use crate::formats::{read_bmap, Bmap};
use crate::progress::human_bytes;

pub use system::{BlockDev, DevNum, SystemView};
pub use target::{identity_differences, refusal_reasons, Identity, TargetInfo, TargetKind};

/// The largest target written without `--force`: 256 GiB.
pub const DEFAULT_MAX_SIZE: u64 = 256 << 30;

pub struct WriteArgs {
    pub image: PathBuf,
    pub device: PathBuf,
    /// Default: `<image stem>.bmap` beside the image, if it exists.
    pub bmap: Option<PathBuf>,
    /// Skip the confirmation prompt.
    pub yes: bool,
    /// Allow a device larger than `max_size`.
    pub force: bool,
    pub max_size: u64,
}

impl WriteArgs {
    /// The defaults: bmap found beside the image, prompt, 256 GiB limit.
    pub fn new(image: impl Into<PathBuf>, device: impl Into<PathBuf>) -> WriteArgs {
        WriteArgs {
            image: image.into(),
            device: device.into(),
            bmap: None,
            yes: false,
            force: false,
            max_size: DEFAULT_MAX_SIZE,
        }
    }
}

/// Whether what the user typed confirms writing `target`: its name (`sdb`) or its path.
pub fn confirmation_matches(typed: &str, target: &TargetInfo) -> bool {
    let t = typed.trim();
    !t.is_empty()
        && (t == target.name
            || Path::new(t) == target.resolved
            || Path::new(t) == target.path.as_path())
}

/// The bmap used when none is given: `<image stem>.bmap` beside the image, else
/// `<image>.bmap` (bmaptool's habit), if either exists.
pub fn default_bmap(image: &Path) -> Option<PathBuf> {
    let a = image.with_extension("bmap");
    let mut b = image.as_os_str().to_owned();
    b.push(".bmap");
    [a, PathBuf::from(b)].into_iter().find(|p| p.is_file())
}

/// Writes `args.image` to `args.device` after the checks and the confirmation described in the
/// module documentation, then reads it back and checks it.
pub fn run_write(args: &WriteArgs) -> Result<()> {
    let image_meta = std::fs::metadata(&args.image).with_context(|| {
        format!(
            "cannot read the image {}: build it first (`appliance build`) or give its path",
            args.image.display()
        )
    })?;
    if !image_meta.is_file() {
        bail!(
            "the image {} is not a regular file: give the .raw image `appliance build` made",
            args.image.display()
        );
    }
    let image_size = image_meta.len();
    let bmap_path = args.bmap.clone().or_else(|| default_bmap(&args.image));
    let bmap = match &bmap_path {
        Some(p) => {
            let b = read_bmap(p)?;
            if b.image_size != image_size {
                bail!(
                    "the bmap {} is for an image of {} bytes, but {} has {image_size}: it \
                     belongs to another image; give the right one with --bmap, or delete it to \
                     write every byte",
                    p.display(),
                    b.image_size,
                    args.image.display()
                );
            }
            Some(b)
        }
        None => None,
    };

    let view = SystemView::of_this_machine()?;
    let target = TargetInfo::from_path_in(&view, &args.device, &args.image)?;
    let reasons = refusal_reasons(&target, image_size, args.max_size, args.force);
    if !reasons.is_empty() {
        bail!(
            "refusing to write {} to {}:\n  - {}",
            args.image.display(),
            target.resolved.display(),
            reasons.join("\n  - ")
        );
    }

    // Opened once, before asking: this handle is what gets written and read back, whatever
    // takes the device's name while the user reads the prompt.
    let out = target.open(&view)?;
    let to_write = bmap.as_ref().map_or(image_size, Bmap::mapped_bytes);
    eprintln!("Target: {}", target.describe());
    eprintln!(
        "Image:  {} ({}){}",
        args.image.display(),
        human_bytes(image_size),
        match (&bmap_path, &bmap) {
            (Some(p), Some(_)) => format!(
                "; bmap {}: {} of data to write",
                p.display(),
                human_bytes(to_write)
            ),
            _ => "; no bmap: every byte is written".to_string(),
        }
    );
    eprintln!("ALL DATA ON {} WILL BE LOST.", target.resolved.display());
    if !args.yes {
        confirm(&target)?;
    }
    // The medium may have been swapped while the prompt waited.
    target.check_still_same(&out, &view)?;

    let dev = target.resolved.as_path();
    let start = Instant::now();
    let image_sha =
        write::write_image(&args.image, image_size, &out, dev, bmap.as_ref(), to_write)?;
    let write_secs = start.elapsed().as_secs_f64();
    let verify_start = Instant::now();
    let checked = write::read_back(&out, dev, bmap.as_ref(), image_size, image_sha.as_deref())?;
    let verify_secs = verify_start.elapsed().as_secs_f64();
    println!(
        "Wrote {} to {} in {write_secs:.1} s ({:.1} MB/s); read back and checked {} in \
         {verify_secs:.1} s ({:.1} MB/s).",
        human_bytes(to_write),
        target.resolved.display(),
        mb_per_s(to_write, write_secs),
        checked,
        mb_per_s(to_write, verify_secs),
    );
    Ok(())
}

fn mb_per_s(bytes: u64, secs: f64) -> f64 {
    bytes as f64 / 1e6 / secs.max(1e-6)
}

fn confirm(target: &TargetInfo) -> Result<()> {
    let stdin = std::io::stdin();
    let tty = stdin.is_terminal();
    confirm_from(target, tty, &mut stdin.lock())
}

/// Asks for the device's name on `input`; refuses outright when that is not a terminal, since
/// a script piping "yes" must not be able to wipe a disk by accident.
fn confirm_from(target: &TargetInfo, tty: bool, input: &mut dyn std::io::BufRead) -> Result<()> {
    if !tty {
        bail!(
            "nobody can confirm: standard input is not a terminal; to write {} without \
             asking, pass --yes",
            target.resolved.display()
        );
    }
    eprint!("Type {} to write it, anything else to stop: ", target.name);
    let mut line = String::new();
    input
        .read_line(&mut line)
        .context("cannot read the confirmation from standard input")?;
    if !confirmation_matches(&line, target) {
        bail!(
            "not confirmed (expected {}); nothing was written",
            target.name
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::fixtures::{args, fake_disk, file_target, image, read_all, MIB};
    use super::*;
    use crate::formats::write_bmap;

    #[test]
    fn writes_a_file_target_without_bmap_overwriting_old_data() {
        let dir = tempfile::tempdir().unwrap();
        let img = image(dir.path());
        let target = file_target(dir.path(), 5 * MIB, 0x55);
        run_write(&args(&img, &target)).unwrap();
        let got = read_all(&target);
        let want = read_all(&img);
        assert_eq!(got.len() as u64, 5 * MIB, "the target keeps its size");
        assert!(
            got[..want.len()] == want[..],
            "the image's bytes, zeros included"
        );
        assert!(got[want.len()..].iter().all(|&b| b == 0x55));
    }

    #[test]
    fn writes_a_file_target_with_bmap_leaving_unmapped_areas_alone() {
        let dir = tempfile::tempdir().unwrap();
        let img = image(dir.path());
        // Found by default beside the image: img.bmap.
        write_bmap(&img, &dir.path().join("img.bmap")).unwrap();
        // A fresh (zeroed) target ends up identical to the image.
        let fresh = dir.path().join("fresh.img");
        std::fs::File::create(&fresh)
            .unwrap()
            .set_len(4 * MIB)
            .unwrap();
        run_write(&args(&img, &fresh)).unwrap();
        assert!(read_all(&fresh) == read_all(&img));
        // Old data in an unmapped range is kept (documented, as bmaptool does); mapped data
        // was written and verified.
        let target = file_target(dir.path(), 4 * MIB, 0x55);
        run_write(&args(&img, &target)).unwrap();
        let got = read_all(&target);
        let want = read_all(&img);
        assert_eq!(&got[..512], &want[..512]);
        assert!(got[4096..8192].iter().all(|&b| b == 0x55), "unmapped: kept");
        assert_eq!(&got[300 * 4096..301 * 4096], &want[300 * 4096..301 * 4096]);
        assert_eq!(&got[got.len() - 10..], &want[want.len() - 10..]);
    }

    #[test]
    fn a_bmap_of_another_image_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let img = image(dir.path());
        let other = dir.path().join("other.raw");
        std::fs::write(&other, vec![1u8; MIB as usize]).unwrap();
        let bmap = dir.path().join("other.bmap");
        write_bmap(&other, &bmap).unwrap();
        let target = file_target(dir.path(), 4 * MIB, 0);
        let a = WriteArgs {
            bmap: Some(bmap),
            ..args(&img, &target)
        };
        let err = format!("{:#}", run_write(&a).unwrap_err());
        assert!(err.contains("belongs to another image"), "{err}");
    }

    #[test]
    fn refuses_a_target_smaller_than_the_image() {
        let dir = tempfile::tempdir().unwrap();
        let img = image(dir.path());
        let target = file_target(dir.path(), MIB, 0x55);
        let err = format!("{:#}", run_write(&args(&img, &target)).unwrap_err());
        assert!(err.contains("smaller than the image"), "{err}");
        assert!(read_all(&target).iter().all(|&b| b == 0x55), "untouched");
        assert_eq!(
            refusal_reasons(&fake_disk(MIB), 2 * MIB, u64::MAX, false).len(),
            1
        );
    }

    #[test]
    fn refuses_the_image_itself() {
        let dir = tempfile::tempdir().unwrap();
        let img = image(dir.path());
        let link = dir.path().join("link.img");
        std::os::unix::fs::symlink(&img, &link).unwrap();
        let t = TargetInfo::from_path(&link, &img).unwrap();
        assert!(t.is_image);
        let err = format!("{:#}", run_write(&args(&img, &link)).unwrap_err());
        assert!(err.contains("the image itself"), "{err}");
    }

    #[test]
    fn a_file_target_is_opened_once_and_checked_by_inode() {
        let dir = tempfile::tempdir().unwrap();
        let img = image(dir.path());
        let path = file_target(dir.path(), 4 * MIB, 0x55);
        let view = SystemView::of_this_machine().unwrap();
        let t = TargetInfo::from_path_in(&view, &path, &img).unwrap();
        assert!(matches!(t.identity, Identity::File { .. }), "{t:?}");
        // The same file: opened, and still the same after the (skipped) confirmation.
        let f = t.open(&view).unwrap();
        t.check_still_same(&f, &view).unwrap();
        // Another file renamed over it while the prompt waits: the path no longer names what
        // was opened and confirmed.
        let other = dir.path().join("other.img");
        std::fs::write(&other, vec![0x66u8; 4 * MIB as usize]).unwrap();
        std::fs::rename(&other, &path).unwrap();
        let err = format!("{:#}", t.check_still_same(&f, &view).unwrap_err());
        assert!(err.contains("now names another file"), "{err}");
        assert!(err.contains("Nothing was written"), "{err}");
        drop(f);
        // Replaced before it was opened: the handle is not the file described.
        let err = format!("{:#}", t.open(&view).unwrap_err());
        assert!(err.contains("another file now"), "{err}");
        assert!(read_all(&path).iter().all(|&b| b == 0x66), "untouched");
    }

    #[test]
    fn confirmation_needs_the_device_name() {
        let t = fake_disk(1 << 30);
        assert!(confirmation_matches("sdz\n", &t));
        assert!(confirmation_matches("/dev/sdz", &t));
        assert!(!confirmation_matches("y\n", &t));
        assert!(!confirmation_matches("", &t));
        assert!(t.describe().contains("SanDisk Cruzer, removable"));
        assert!(confirm_from(&t, true, &mut &b"sdz\n"[..]).is_ok());
        let no = format!(
            "{:#}",
            confirm_from(&t, true, &mut &b"yes\n"[..]).unwrap_err()
        );
        assert!(no.contains("nothing was written"), "{no}");
        let piped = format!(
            "{:#}",
            confirm_from(&t, false, &mut &b"sdz\n"[..]).unwrap_err()
        );
        assert!(piped.contains("--yes"), "{piped}");
    }
}
