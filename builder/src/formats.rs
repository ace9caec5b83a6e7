//! Other forms of the raw disk image: VM/cloud import formats made with `qemu-img` (qcow2, VMDK,
//! VHD), and a bmap, the block map `bmaptool copy` and `appliance write` use to write only the
//! blocks that hold data.

use std::fmt::Write as _;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

use crate::host;

const MIB: u64 = 1 << 20;

/// The block size of the bmaps we write (bmaptool's usual one).
pub const BMAP_BLOCK_SIZE: u64 = 4096;

// Compared with whole blocks: a slice comparison is a memcmp, far faster than a byte loop.
static ZERO_BLOCK: [u8; BMAP_BLOCK_SIZE as usize] = [0; BMAP_BLOCK_SIZE as usize];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VmFormat {
    /// qcow2 with compressed clusters (Proxmox, OpenStack, plain KVM).
    Qcow2,
    /// Stream-optimized VMDK (VMware, AWS `import-image`).
    Vmdk,
    /// Fixed-size VHD (Azure).
    Vhd,
}

impl VmFormat {
    pub const ALL: [VmFormat; 3] = [VmFormat::Qcow2, VmFormat::Vmdk, VmFormat::Vhd];

    /// The file name extension of the format.
    pub fn extension(self) -> &'static str {
        match self {
            VmFormat::Qcow2 => "qcow2",
            VmFormat::Vmdk => "vmdk",
            VmFormat::Vhd => "vhd",
        }
    }

    /// qemu's name for the format (`-O`, `-F`, and what `qemu-img info` reports).
    fn qemu_name(self) -> &'static str {
        match self {
            VmFormat::Qcow2 => "qcow2",
            VmFormat::Vmdk => "vmdk",
            VmFormat::Vhd => "vpc",
        }
    }

    /// `qemu-img convert` options for the format.
    fn convert_args(self) -> &'static [&'static str] {
        match self {
            // compat=1.1 is what every current hypervisor reads; -c keeps the download small.
            VmFormat::Qcow2 => &["-c", "-o", "compat=1.1"],
            // streamOptimized is the only VMDK kind AWS import-image and OVF imports accept.
            VmFormat::Vmdk => &["-o", "subformat=streamOptimized"],
            // Azure takes only fixed VHDs; force_size keeps the exact size instead of rounding it
            // to qemu's CHS geometry, which would break the whole-MiB rule.
            VmFormat::Vhd => &["-o", "subformat=fixed,force_size=on"],
        }
    }
}

impl std::fmt::Display for VmFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.extension())
    }
}

fn qemu_img() -> Result<PathBuf> {
    host::find_program("qemu-img").context(
        "qemu-img is not installed; install the Debian package qemu-utils \
         (`apt-get install qemu-utils`, or `appliance doctor --install`)",
    )
}

fn file_size(path: &Path) -> Result<u64> {
    Ok(std::fs::metadata(path)
        .with_context(|| format!("cannot read the image {}: does it exist?", path.display()))?
        .len())
}

/// Converts the raw image to `format` at `out` with `qemu-img convert`. A VHD needs a raw image
/// whose size is a whole number of MiB (Azure refuses others); other sizes are refused here.
pub fn convert(raw: &Path, format: VmFormat, out: &Path) -> Result<()> {
    let size = file_size(raw)?;
    if format == VmFormat::Vhd && size % MIB != 0 {
        bail!(
            "cannot make a VHD of {}: its size, {size} bytes, is not a whole number of MiB, which \
             Azure requires; pad it first (`truncate -s {}M {}`)",
            raw.display(),
            size.div_ceil(MIB),
            raw.display()
        );
    }
    let qemu_img = qemu_img()?;
    // A half-written file from an earlier attempt would make qemu-img fail or be mistaken for
    // a result.
    let _ = std::fs::remove_file(out);
    let mut cmd = Command::new(qemu_img);
    cmd.args(["convert", "-f", "raw", "-O", format.qemu_name()])
        .args(format.convert_args())
        .arg(raw)
        .arg(out);
    if let Err(e) = host::run(&mut cmd) {
        let _ = std::fs::remove_file(out);
        return Err(e).with_context(|| {
            format!(
                "converting {} to {format} at {} failed; check that there is free space in {}",
                raw.display(),
                out.display(),
                out.parent().unwrap_or(Path::new(".")).display()
            )
        });
    }
    Ok(())
}

/// Checks a converted image against the raw one: format (and VMDK sub-format), virtual size,
/// `qemu-img check` (qcow2, VMDK), and identical content with `qemu-img compare`. Returns a one
/// line account of what was checked, for the build log.
pub fn verify(raw: &Path, format: VmFormat, out: &Path) -> Result<String> {
    let raw_size = file_size(raw)?;
    let qemu_img = qemu_img()?;
    let fmt = format.qemu_name();
    let bad = |what: String| {
        anyhow::anyhow!(
            "{} is not a correct {format} copy of {}: {what}; delete it and convert again",
            out.display(),
            raw.display()
        )
    };

    let info = host::run(
        Command::new(&qemu_img)
            .args(["info", "--output=json", "-f", fmt])
            .arg(out),
    )
    .with_context(|| format!("cannot read {} as {format}", out.display()))?;
    let info: serde_json::Value = serde_json::from_slice(&info.stdout)
        .with_context(|| format!("qemu-img info printed no JSON for {}", out.display()))?;
    let reported = info["format"].as_str().unwrap_or("");
    if reported != fmt {
        return Err(bad(format!(
            "qemu-img reports format {reported:?}, not {fmt}"
        )));
    }
    let vsize = info["virtual-size"].as_u64().unwrap_or(0);
    if vsize != raw_size {
        return Err(bad(format!(
            "virtual size {vsize} bytes, the raw image has {raw_size}"
        )));
    }
    let mut checked = vec![format!("format {fmt}"), format!("virtual size {vsize} B")];
    match format {
        VmFormat::Qcow2 => {
            let compat = info["format-specific"]["data"]["compat"]
                .as_str()
                .unwrap_or("");
            if compat != "1.1" {
                return Err(bad(format!("qcow2 compat {compat:?}, not 1.1")));
            }
            checked.push("compat 1.1".into());
        }
        VmFormat::Vmdk => {
            let create = info["format-specific"]["data"]["create-type"]
                .as_str()
                .unwrap_or("");
            if create != "streamOptimized" {
                return Err(bad(format!(
                    "VMDK create-type {create:?}, not streamOptimized"
                )));
            }
            checked.push("create-type streamOptimized".into());
        }
        VmFormat::Vhd => {
            // qemu-img info does not say fixed or dynamic; a fixed VHD is the raw data plus a
            // 512-byte footer, so its length tells.
            let len = file_size(out)?;
            if len != raw_size + 512 {
                return Err(bad(format!(
                    "{len} bytes long, a fixed VHD of this image has {}",
                    raw_size + 512
                )));
            }
            checked.push("fixed (raw + 512 B footer)".into());
        }
    }
    if format != VmFormat::Vhd {
        // qemu cannot check vpc images; for the others this finds broken metadata.
        host::run(Command::new(&qemu_img).args(["check", "-f", fmt]).arg(out))
            .map_err(|e| bad(format!("qemu-img check failed: {e:#}")))?;
        checked.push("qemu-img check clean".into());
    }
    host::run(
        Command::new(&qemu_img)
            .args(["compare", "-f", "raw", "-F", fmt])
            .arg(raw)
            .arg(out),
    )
    .map_err(|e| bad(format!("qemu-img compare found a difference: {e:#}")))?;
    checked.push("content identical (qemu-img compare)".into());
    Ok(format!("{}: {}", out.display(), checked.join(", ")))
}

/// What [`write_bmap`] wrote.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BmapSummary {
    pub image_size: u64,
    pub block_size: u64,
    pub blocks: u64,
    pub mapped_blocks: u64,
}

/// A run of blocks that hold data, `first..=last`, with the SHA-256 of their bytes (the last
/// block of an image whose size is not a multiple of the block size counts only its bytes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BmapRange {
    pub first: u64,
    pub last: u64,
    pub sha256: String,
}

/// A parsed bmap.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bmap {
    pub image_size: u64,
    pub block_size: u64,
    pub ranges: Vec<BmapRange>,
}

impl Bmap {
    pub fn blocks(&self) -> u64 {
        self.image_size.div_ceil(self.block_size)
    }

    /// The byte range `start..end` of `range` in the image.
    pub fn byte_range(&self, range: &BmapRange) -> (u64, u64) {
        let start = range.first * self.block_size;
        let end = ((range.last + 1) * self.block_size).min(self.image_size);
        (start, end)
    }

    /// Bytes in mapped ranges.
    pub fn mapped_bytes(&self) -> u64 {
        self.ranges
            .iter()
            .map(|r| {
                let (s, e) = self.byte_range(r);
                e - s
            })
            .sum()
    }
}

/// Writes a bmap of `raw` to `out` in bmaptool's format 2.0 with SHA-256 checksums; blocks that
/// are all zeros are left out. The image is read once, sequentially: holes are found by
/// content rather than by SEEK_DATA/FIEMAP, which some file systems and copies lose.
pub fn write_bmap(raw: &Path, out: &Path) -> Result<BmapSummary> {
    write_bmap_with(raw, out, &[])
}

/// Like [`write_bmap`], but the blocks of `always_written` (byte offset, length) are mapped even
/// when they hold zeros. The build lists the start of each partition that is empty in the image:
/// written to a used disk, a zero block map would otherwise leave the old file system there
/// (and the old machine's keys with it) instead of the empty partition the image has.
pub fn write_bmap_with(
    raw: &Path,
    out: &Path,
    always_written: &[(u64, u64)],
) -> Result<BmapSummary> {
    // Holes are read as the zeros they are, without the kernel filling pages with them.
    let mut f = crate::outputs::SparseReader::open(raw)
        .with_context(|| format!("cannot open the image {}: does it exist?", raw.display()))?;
    let image_size = f.size();
    if image_size == 0 {
        bail!(
            "cannot make a bmap of {}: the image is empty; build it again",
            raw.display()
        );
    }
    let bs = BMAP_BLOCK_SIZE;
    let blocks = image_size.div_ceil(bs);

    let mut ranges: Vec<BmapRange> = Vec::new();
    let mut open: Option<(u64, Sha256)> = None; // first block and hash of the current run
    let mut buf = vec![0u8; MIB as usize];
    let mut block = 0u64;
    let mut filled = 0usize; // bytes of `buf` holding data not yet looked at
    loop {
        let n = f
            .read(&mut buf[filled..])
            .with_context(|| format!("cannot read the image {}", raw.display()))?;
        filled += n;
        let eof = n == 0;
        // Look at whole blocks only, except for the short last block at the end of the file.
        let usable = if eof {
            filled
        } else {
            filled - filled % bs as usize
        };
        for chunk in buf[..usable].chunks(bs as usize) {
            let forced = always_written
                .iter()
                .any(|&(off, len)| block * bs < off + len && off < (block + 1) * bs);
            if forced || chunk != &ZERO_BLOCK[..chunk.len()] {
                open.get_or_insert_with(|| (block, Sha256::new()))
                    .1
                    .update(chunk);
            } else if let Some((first, h)) = open.take() {
                ranges.push(BmapRange {
                    first,
                    last: block - 1,
                    sha256: hex::encode(h.finalize()),
                });
            }
            block += 1;
        }
        buf.copy_within(usable..filled, 0);
        filled -= usable;
        if eof {
            break;
        }
    }
    if let Some((first, h)) = open.take() {
        ranges.push(BmapRange {
            first,
            last: block - 1,
            sha256: hex::encode(h.finalize()),
        });
    }
    if block != blocks {
        bail!(
            "{} changed size while its bmap was made ({block} blocks read, {blocks} expected); \
             make sure no build is writing it and try again",
            raw.display()
        );
    }
    let bmap = Bmap {
        image_size,
        block_size: bs,
        ranges,
    };
    let text = bmap_xml(&bmap);
    std::fs::write(out, text)
        .with_context(|| format!("cannot write the bmap {}", out.display()))?;
    Ok(BmapSummary {
        image_size,
        block_size: bs,
        blocks,
        mapped_blocks: bmap.ranges.iter().map(|r| r.last - r.first + 1).sum(),
    })
}

/// The XML text of a bmap, laid out like bmaptool's own, with its file checksum filled in.
fn bmap_xml(bmap: &Bmap) -> String {
    let blocks = bmap.blocks();
    let mapped: u64 = bmap.ranges.iter().map(|r| r.last - r.first + 1).sum();
    let percent = mapped as f64 * 100.0 / blocks.max(1) as f64;
    let zeros = "0".repeat(64);
    let mut x = String::new();
    // `write!` to a String cannot fail.
    let _ = write!(
        x,
        "<?xml version=\"1.0\" ?>\n\
         <!-- The block map of an image file: the blocks that hold data and must be written to\n     \
         the target device. Blocks not listed are all zeros in the image. Written by appliance\n     \
         in the format of bmap-tools (bmaptool copy). -->\n\n\
         <bmap version=\"2.0\">\n    \
         <!-- Image size in bytes: {} -->\n    \
         <ImageSize> {} </ImageSize>\n\n    \
         <!-- Size of a block in bytes -->\n    \
         <BlockSize> {} </BlockSize>\n\n    \
         <!-- Count of blocks in the image file -->\n    \
         <BlocksCount> {blocks} </BlocksCount>\n\n    \
         <!-- Count of mapped blocks: {} or {percent:.1}% -->\n    \
         <MappedBlocksCount> {mapped} </MappedBlocksCount>\n\n    \
         <!-- Type of checksum used in this file -->\n    \
         <ChecksumType> sha256 </ChecksumType>\n\n    \
         <!-- The checksum of this bmap file. When it is calculated, the value of\n         \
         the checksum has be zero (all ASCII \"0\" symbols).  -->\n    \
         <BmapFileChecksum> {zeros} </BmapFileChecksum>\n\n    \
         <!-- The block map: ranges of blocks, each with the checksum of its data. -->\n    \
         <BlockMap>\n",
        crate::progress::human_bytes(bmap.image_size),
        bmap.image_size,
        bmap.block_size,
        crate::progress::human_bytes(mapped * bmap.block_size),
    );
    for r in &bmap.ranges {
        let span = if r.first == r.last {
            r.first.to_string()
        } else {
            format!("{}-{}", r.first, r.last)
        };
        let _ = writeln!(x, "        <Range chksum=\"{}\"> {span} </Range>", r.sha256);
    }
    x.push_str("    </BlockMap>\n</bmap>\n");
    // bmaptool's rule: the file's checksum is taken with its own field all zeros.
    let sum = hex::encode(Sha256::digest(x.as_bytes()));
    x.replacen(&zeros, &sum, 1)
}

/// Reads a bmap of format 2.x (ours or bmaptool's) with SHA-256 checksums, checking the file's
/// own checksum and that the ranges fit the image.
pub fn read_bmap(path: &Path) -> Result<Bmap> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the bmap {}: does it exist?", path.display()))?;
    parse_bmap(&text).with_context(|| {
        format!(
            "{} is not a usable bmap; make it again (`bmaptool create`, or rebuild the image) \
             or write without it",
            path.display()
        )
    })
}

fn parse_bmap(text: &str) -> Result<Bmap> {
    // Comments mention tag names (bmaptool's header does), so drop them before looking for tags.
    let mut body = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("<!--") {
        body.push_str(&rest[..i]);
        let end = rest[i..]
            .find("-->")
            .context("an XML comment is not closed")?;
        rest = &rest[i + end + 3..];
    }
    body.push_str(rest);

    let version = body
        .find("<bmap")
        .and_then(|i| body[i..].find("version=\"").map(|j| i + j + 9))
        .and_then(|s| body[s..].find('"').map(|e| &body[s..s + e]))
        .context("no <bmap version=\"...\"> element")?;
    let major = version.split('.').next().unwrap_or("");
    // Format 1.4 is 2.0 under an older number (see bmap-tools' BmapCopy.py).
    if major != "2" && version != "1.4" {
        bail!("bmap format version {version} is not supported (only 2.x)");
    }
    let tag = |name: &str| -> Result<&str> {
        let open = format!("<{name}>");
        let close = format!("</{name}>");
        let s = body
            .find(&open)
            .with_context(|| format!("no <{name}> element"))?
            + open.len();
        let e = body[s..]
            .find(&close)
            .with_context(|| format!("<{name}> is not closed"))?;
        Ok(body[s..s + e].trim())
    };
    let num = |name: &str| -> Result<u64> {
        let v = tag(name)?;
        v.parse()
            .with_context(|| format!("<{name}> holds {v:?}, not a number"))
    };
    let image_size = num("ImageSize")?;
    let block_size = num("BlockSize")?;
    let blocks = num("BlocksCount")?;
    let mapped = num("MappedBlocksCount")?;
    if block_size == 0 || blocks != image_size.div_ceil(block_size) {
        bail!("{blocks} blocks of {block_size} bytes do not make an image of {image_size} bytes");
    }
    let cs_type = tag("ChecksumType")?;
    if cs_type != "sha256" {
        bail!("checksum type {cs_type} is not supported (only sha256)");
    }
    let file_sum = tag("BmapFileChecksum")?;
    if file_sum.len() != 64 {
        bail!("<BmapFileChecksum> {file_sum:?} is not a SHA-256");
    }
    // As bmaptool does: the checksum over the file with the field's value replaced by zeros.
    let zeroed = text.replacen(file_sum, &"0".repeat(64), 1);
    let actual = hex::encode(Sha256::digest(zeroed.as_bytes()));
    if actual != file_sum {
        bail!("the bmap file's checksum is {actual}, it says {file_sum}: the file was changed");
    }

    let map_start = body.find("<BlockMap>").context("no <BlockMap> element")?;
    let map_end = body
        .find("</BlockMap>")
        .context("<BlockMap> is not closed")?;
    let mut map = &body[map_start + 10..map_end];
    let mut ranges = Vec::new();
    while let Some(i) = map.find("<Range") {
        let gt = map[i..].find('>').context("a <Range> tag is not closed")? + i;
        let attrs = &map[i + 6..gt];
        let close = map[gt..]
            .find("</Range>")
            .context("a <Range> is not closed")?
            + gt;
        let span = map[gt + 1..close].trim();
        let sha256 = attrs
            .find("chksum=\"")
            .and_then(|s| attrs[s + 8..].find('"').map(|e| &attrs[s + 8..s + 8 + e]))
            .with_context(|| format!("range {span} has no chksum"))?
            .to_string();
        if sha256.len() != 64 || !sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            bail!("range {span} has checksum {sha256:?}, not a SHA-256");
        }
        let (a, b) = span.split_once('-').unwrap_or((span, span));
        let parse = |s: &str| -> Result<u64> {
            s.trim()
                .parse()
                .with_context(|| format!("range {span:?} is not first-last block numbers"))
        };
        let (first, last) = (parse(a)?, parse(b)?);
        if first > last || last >= blocks {
            bail!("range {span} lies outside the image's {blocks} blocks");
        }
        if let Some(prev) = ranges.last().map(|r: &BmapRange| r.last) {
            if first <= prev {
                bail!("range {span} overlaps or precedes the range before it");
            }
        }
        ranges.push(BmapRange {
            first,
            last,
            sha256,
        });
        map = &map[close + 8..];
    }
    let counted: u64 = ranges.iter().map(|r| r.last - r.first + 1).sum();
    if counted != mapped {
        bail!("<MappedBlocksCount> says {mapped} blocks, the ranges hold {counted}");
    }
    Ok(Bmap {
        image_size,
        block_size,
        ranges,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Seek, SeekFrom, Write};

    /// A sparse 8 MiB image with data in blocks 0, 1, 2 (a run), 700 and the very last one.
    fn sample_raw(dir: &Path) -> PathBuf {
        let p = dir.join("disk.raw");
        let mut f = std::fs::File::create(&p).unwrap();
        f.set_len(8 * MIB).unwrap();
        for (block, byte) in [
            (0u64, 0xebu8),
            (1, 0x11),
            (2, 0x22),
            (700, 0x70),
            (2047, 0xff),
        ] {
            f.seek(SeekFrom::Start(block * 4096 + 100)).unwrap();
            f.write_all(&[byte; 300]).unwrap();
        }
        p
    }

    fn require(program: &str, package: &str) {
        assert!(
            host::find_program(program).is_some(),
            "{program} is needed by this test: install the Debian package {package} \
             (apt-get install {package})"
        );
    }

    #[test]
    fn extensions() {
        let e: Vec<_> = VmFormat::ALL.iter().map(|f| f.extension()).collect();
        assert_eq!(e, ["qcow2", "vmdk", "vhd"]);
    }

    #[test]
    fn every_format_converts_and_verifies() {
        require("qemu-img", "qemu-utils");
        let dir = tempfile::tempdir().unwrap();
        let raw = sample_raw(dir.path());
        for format in VmFormat::ALL {
            let out = dir.path().join(format!("disk.{}", format.extension()));
            convert(&raw, format, &out).unwrap();
            let report = verify(&raw, format, &out).unwrap();
            assert!(report.contains("content identical"), "{report}");
        }
        // A changed byte is caught.
        let out = dir.path().join("disk.qcow2");
        let mut f = std::fs::OpenOptions::new().write(true).open(&raw).unwrap();
        f.seek(SeekFrom::Start(5 * MIB)).unwrap();
        f.write_all(b"x").unwrap();
        drop(f);
        let err = verify(&raw, VmFormat::Qcow2, &out).unwrap_err();
        assert!(format!("{err:#}").contains("compare"), "{err:#}");
    }

    #[test]
    fn vhd_refuses_a_size_that_is_not_whole_mib() {
        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().join("odd.raw");
        std::fs::File::create(&raw)
            .unwrap()
            .set_len(MIB + 512)
            .unwrap();
        let out = dir.path().join("odd.vhd");
        let err = format!("{:#}", convert(&raw, VmFormat::Vhd, &out).unwrap_err());
        assert!(err.contains("whole number of MiB"), "{err}");
        assert!(err.contains("truncate -s 2M"), "{err}");
        assert!(!out.exists());
    }

    #[test]
    fn bmap_lists_the_data_blocks_and_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let raw = sample_raw(dir.path());
        let bmap_path = dir.path().join("disk.bmap");
        let s = write_bmap(&raw, &bmap_path).unwrap();
        assert_eq!(
            s,
            BmapSummary {
                image_size: 8 * MIB,
                block_size: 4096,
                blocks: 2048,
                mapped_blocks: 5
            }
        );
        let bmap = read_bmap(&bmap_path).unwrap();
        assert_eq!(bmap.image_size, 8 * MIB);
        assert_eq!(bmap.block_size, 4096);
        let spans: Vec<_> = bmap.ranges.iter().map(|r| (r.first, r.last)).collect();
        assert_eq!(spans, [(0, 2), (700, 700), (2047, 2047)]);
        let data = std::fs::read(&raw).unwrap();
        for r in &bmap.ranges {
            let (a, b) = bmap.byte_range(r);
            assert_eq!(
                r.sha256,
                hex::encode(Sha256::digest(&data[a as usize..b as usize]))
            );
        }
        // An edited bmap fails its own checksum.
        let text = std::fs::read_to_string(&bmap_path).unwrap();
        std::fs::write(&bmap_path, text.replace("> 700 <", "> 701 <")).unwrap();
        let err = format!("{:#}", read_bmap(&bmap_path).unwrap_err());
        assert!(err.contains("checksum"), "{err}");
    }

    #[test]
    fn bmap_of_an_image_with_a_short_last_block() {
        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().join("short.raw");
        let mut data = vec![0u8; 3 * 4096 + 10];
        data[3 * 4096 + 9] = 1;
        std::fs::write(&raw, &data).unwrap();
        let s = write_bmap(&raw, &dir.path().join("short.bmap")).unwrap();
        assert_eq!((s.blocks, s.mapped_blocks), (4, 1));
        let bmap = read_bmap(&dir.path().join("short.bmap")).unwrap();
        assert_eq!(bmap.byte_range(&bmap.ranges[0]), (3 * 4096, 3 * 4096 + 10));
        assert_eq!(bmap.mapped_bytes(), 10);
    }

    #[test]
    fn bmaptool_copies_with_our_bmap() {
        require("bmaptool", "bmap-tools");
        let dir = tempfile::tempdir().unwrap();
        let raw = sample_raw(dir.path());
        let bmap_path = dir.path().join("disk.bmap");
        write_bmap(&raw, &bmap_path).unwrap();
        let target = dir.path().join("target.img");
        let out = host::run(
            Command::new("bmaptool")
                .arg("copy")
                .arg("--bmap")
                .arg(&bmap_path)
                .arg(&raw)
                .arg(&target),
        )
        .unwrap();
        let log = String::from_utf8_lossy(&out.stderr);
        // bmaptool falls back to a full copy, silently but for a warning, if it rejects a bmap.
        assert!(!log.to_lowercase().contains("warning"), "{log}");
        assert!(log.contains("copying time"), "{log}");
        assert_eq!(
            std::fs::read(&target).unwrap(),
            std::fs::read(&raw).unwrap()
        );
        // And we read a bmap that bmaptool made itself.
        let theirs = dir.path().join("theirs.bmap");
        host::run(
            Command::new("bmaptool")
                .arg("create")
                .arg("-o")
                .arg(&theirs)
                .arg(&raw),
        )
        .unwrap();
        let b = read_bmap(&theirs).unwrap();
        assert_eq!(b.image_size, 8 * MIB);
        assert!(!b.ranges.is_empty());
    }

    #[test]
    fn always_written_ranges_are_mapped_even_when_zero() {
        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().join("zeros.raw");
        std::fs::File::create(&raw)
            .unwrap()
            .set_len(1 << 20)
            .unwrap();
        let plain = write_bmap(&raw, &dir.path().join("a.bmap")).unwrap();
        assert_eq!(plain.mapped_blocks, 0);
        let forced = write_bmap_with(&raw, &dir.path().join("b.bmap"), &[(8192, 10000)]).unwrap();
        // 8192..18192 touches blocks 2, 3 and 4.
        assert_eq!(forced.mapped_blocks, 3);
        let bmap = read_bmap(&dir.path().join("b.bmap")).unwrap();
        assert_eq!((bmap.ranges[0].first, bmap.ranges[0].last), (2, 4));
    }
}
