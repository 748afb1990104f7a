//! A write-once FAT32 writer for the EFI System Partition.
//!
//! Written by hand because `fatfs` 0.3.6 (its last release) writes `.`/`..`
//! entries that `fsck.fat -n` reports as corrupt and stamps local time; an ESP
//! holding a few directories and one or two files needs ~200 lines, and here
//! every byte is a function of the inputs (timestamps from the epoch, volume
//! id and label from the build key). References: Microsoft "FAT32 File System
//! Specification" (fatgen103): BPB §3, FSInfo §5, FAT entries §4, directory
//! entries §6. Layout written: reserved sectors (boot sector, FSInfo, backup
//! copies at 6 and 7), two FATs, then the data region with every directory
//! and file in consecutive clusters, streamed in one pass.

use std::io::{self, Read, Write};

/// Bytes per sector.
pub const SECTOR: u64 = 512;
/// Reserved sectors before the first FAT (the customary FAT32 value).
const RESERVED: u64 = 32;
/// Fewest clusters a FAT32 volume may have (fatgen103 §3.5: fewer is FAT16).
pub const MIN_CLUSTERS: u64 = 65_525;
const EOC: u32 = 0x0FFF_FFFF;

/// A file to put on the ESP.
pub struct EspFile<'a> {
    /// Path components, upper-case 8.3 names (`["EFI", "BOOT", "BOOTX64.EFI"]`).
    pub path: Vec<String>,
    /// Size.
    pub len: u64,
    /// Content (exactly `len` bytes).
    pub data: &'a mut dyn Read,
}

/// Volume parameters (all derived from the build by the caller).
#[derive(Clone, Debug)]
pub struct EspParams {
    /// Volume serial number.
    pub volume_id: u32,
    /// Volume label, ≤ 11 characters of `[A-Z0-9 _-]`.
    pub label: String,
    /// Timestamp of every entry, seconds since the Unix epoch (clamped to FAT's 1980–2107).
    pub epoch: u64,
    /// LBA of the partition on its disk (BPB HiddSec).
    pub hidden_sectors: u32,
    /// Free space to leave, in bytes, beyond the content.
    pub headroom: u64,
}

/// FAT date and time of `epoch` (UTC).
pub fn dos_datetime(epoch: u64) -> (u16, u16) {
    let days = epoch / 86_400;
    let secs = epoch % 86_400;
    // Civil-from-days (Howard Hinnant's algorithm), proleptic Gregorian.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    if y < 1980 {
        return ((1 << 5) | 1, 0); // 1980-01-01 00:00:00, FAT's first day
    }
    let y = y.min(2107);
    let date = (((y - 1980) as u16) << 9) | ((m as u16) << 5) | d as u16;
    let time = (((secs / 3600) as u16) << 11)
        | ((((secs % 3600) / 60) as u16) << 5)
        | ((secs % 60) / 2) as u16;
    (date, time)
}

fn short_name(name: &str) -> io::Result<[u8; 11]> {
    let (base, ext) = name.split_once('.').unwrap_or((name, ""));
    let ok = |s: &str, max| {
        s.len() <= max
            && s.bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
    };
    if base.is_empty() || !ok(base, 8) || !ok(ext, 3) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{name:?} is not an upper-case 8.3 name"),
        ));
    }
    let mut out = [b' '; 11];
    out[..base.len()].copy_from_slice(base.as_bytes());
    out[8..8 + ext.len()].copy_from_slice(ext.as_bytes());
    Ok(out)
}

struct Node {
    name: [u8; 11],
    dir: bool,
    /// First cluster (0 for an empty file).
    cluster: u32,
    /// Clusters it occupies.
    clusters: u32,
    /// Byte size (files).
    len: u64,
    /// Index of the parent directory node (root = 0 is its own parent).
    parent: usize,
    children: Vec<usize>,
    file: Option<usize>,
}

/// The volume's geometry, computed before anything is written.
pub struct EspLayout {
    /// Sectors per cluster.
    pub sectors_per_cluster: u64,
    /// Sectors of one FAT.
    pub fat_sectors: u64,
    /// Clusters in the data region.
    pub clusters: u64,
    /// Total sectors of the volume.
    pub total_sectors: u64,
}

impl EspLayout {
    /// Size of the volume in bytes.
    pub fn bytes(&self) -> u64 {
        self.total_sectors * SECTOR
    }
}

/// Geometry for `used` clusters' worth of content at one sector per cluster
/// (small ESPs stay above the FAT32 minimum without wasting space on slack).
fn geometry(used_bytes: u64, headroom: u64) -> EspLayout {
    let spc = 1u64;
    let cluster = spc * SECTOR;
    let clusters = (used_bytes + headroom)
        .div_ceil(cluster)
        .max(MIN_CLUSTERS + 64);
    // Each FAT holds clusters + 2 entries of 4 bytes.
    let fat_sectors = ((clusters + 2) * 4).div_ceil(SECTOR);
    let total = RESERVED + 2 * fat_sectors + clusters * spc;
    EspLayout {
        sectors_per_cluster: spc,
        fat_sectors,
        clusters,
        total_sectors: total,
    }
}

/// Plan an ESP holding `files`; returns its layout (to size the partition).
pub fn plan(files: &[EspFile], headroom: u64) -> EspLayout {
    // Directories: at most a few clusters each; files: their size.
    let dirs: u64 = 3 * SECTOR * (files.len() as u64 + 2);
    let data: u64 = files.iter().map(|f| f.len.div_ceil(SECTOR) * SECTOR).sum();
    geometry(dirs + data, headroom)
}

fn dir_entry(name: &[u8; 11], attr: u8, cluster: u32, size: u32, date: u16, time: u16) -> [u8; 32] {
    let mut e = [0u8; 32];
    e[..11].copy_from_slice(name);
    e[11] = attr;
    e[14..16].copy_from_slice(&time.to_le_bytes()); // CrtTime
    e[16..18].copy_from_slice(&date.to_le_bytes()); // CrtDate
    e[18..20].copy_from_slice(&date.to_le_bytes()); // LstAccDate
    e[20..22].copy_from_slice(&((cluster >> 16) as u16).to_le_bytes());
    e[22..24].copy_from_slice(&time.to_le_bytes()); // WrtTime
    e[24..26].copy_from_slice(&date.to_le_bytes()); // WrtDate
    e[26..28].copy_from_slice(&(cluster as u16).to_le_bytes());
    e[28..32].copy_from_slice(&size.to_le_bytes());
    e
}

/// Write the whole FAT32 volume to `out` in one sequential pass.
pub fn write_esp<W: Write>(
    files: &mut [EspFile],
    p: &EspParams,
    out: &mut W,
) -> io::Result<EspLayout> {
    let layout = plan(files, p.headroom);
    let cluster_bytes = layout.sectors_per_cluster * SECTOR;
    // Build the directory tree.
    let mut nodes = vec![Node {
        name: [b' '; 11],
        dir: true,
        cluster: 0,
        clusters: 0,
        len: 0,
        parent: 0,
        children: vec![],
        file: None,
    }];
    for (fi, f) in files.iter().enumerate() {
        let mut cur = 0;
        for (i, comp) in f.path.iter().enumerate() {
            let name = short_name(comp)?;
            let last = i + 1 == f.path.len();
            if let Some(&c) = nodes[cur].children.iter().find(|&&c| nodes[c].name == name) {
                if last || !nodes[c].dir {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!("duplicate ESP path {}", f.path.join("/")),
                    ));
                }
                cur = c;
                continue;
            }
            nodes.push(Node {
                name,
                dir: !last,
                cluster: 0,
                clusters: 0,
                len: if last { f.len } else { 0 },
                parent: cur,
                children: vec![],
                file: last.then_some(fi),
            });
            let id = nodes.len() - 1;
            nodes[cur].children.push(id);
            cur = id;
        }
    }
    // Allocate clusters in node order: directories and files consecutively.
    let mut next = 2u32;
    for n in &mut nodes {
        let bytes = if n.dir {
            // Root: label + entries; others: ".", ".." + entries.
            (n.children.len() as u64 + 2) * 32
        } else {
            n.len
        };
        let clusters = bytes.div_ceil(cluster_bytes).max(u64::from(n.dir)) as u32;
        n.clusters = clusters;
        n.cluster = if clusters == 0 { 0 } else { next };
        next += clusters;
    }
    let used = u64::from(next - 2);
    if used > layout.clusters {
        return Err(io::Error::other(
            "ESP content does not fit its planned size",
        ));
    }
    let (date, time) = dos_datetime(p.epoch);

    // Boot sector (fatgen103 §3.1-3.3).
    let mut bs = [0u8; 512];
    bs[..3].copy_from_slice(&[0xEB, 0x58, 0x90]);
    bs[3..11].copy_from_slice(b"I2KIT   ");
    bs[11..13].copy_from_slice(&(SECTOR as u16).to_le_bytes()); // BytsPerSec
    bs[13] = layout.sectors_per_cluster as u8; // SecPerClus
    bs[14..16].copy_from_slice(&(RESERVED as u16).to_le_bytes()); // RsvdSecCnt
    bs[16] = 2; // NumFATs
    bs[21] = 0xF8; // Media: fixed disk
    bs[24..26].copy_from_slice(&63u16.to_le_bytes()); // SecPerTrk
    bs[26..28].copy_from_slice(&255u16.to_le_bytes()); // NumHeads
    bs[28..32].copy_from_slice(&p.hidden_sectors.to_le_bytes()); // HiddSec
    bs[32..36].copy_from_slice(&(layout.total_sectors as u32).to_le_bytes()); // TotSec32
    bs[36..40].copy_from_slice(&(layout.fat_sectors as u32).to_le_bytes()); // FATSz32
    bs[44..48].copy_from_slice(&2u32.to_le_bytes()); // RootClus
    bs[48..50].copy_from_slice(&1u16.to_le_bytes()); // FSInfo sector
    bs[50..52].copy_from_slice(&6u16.to_le_bytes()); // BkBootSec
    bs[64] = 0x80; // DrvNum
    bs[66] = 0x29; // BootSig: the next three fields are present
    bs[67..71].copy_from_slice(&p.volume_id.to_le_bytes());
    let mut label = [b' '; 11];
    let lb = p.label.as_bytes();
    label[..lb.len().min(11)].copy_from_slice(&lb[..lb.len().min(11)]);
    bs[71..82].copy_from_slice(&label);
    bs[82..90].copy_from_slice(b"FAT32   ");
    bs[510] = 0x55;
    bs[511] = 0xAA;
    // FSInfo (§5).
    let mut fsi = [0u8; 512];
    fsi[0..4].copy_from_slice(&0x4161_5252u32.to_le_bytes());
    fsi[484..488].copy_from_slice(&0x6141_7272u32.to_le_bytes());
    fsi[488..492].copy_from_slice(&((layout.clusters - used) as u32).to_le_bytes());
    fsi[492..496].copy_from_slice(&next.to_le_bytes());
    fsi[508..512].copy_from_slice(&0xAA55_0000u32.to_le_bytes());
    let zero = [0u8; 512];
    for s in 0..RESERVED {
        out.write_all(match s {
            0 | 6 => &bs,
            1 | 7 => &fsi,
            _ => &zero,
        })?;
    }
    // The FATs (§4): entry 0 = media, 1 = end-of-chain/clean, then the chains.
    let fat_entry = |c: u32| -> u32 {
        match c {
            0 => 0x0FFF_FF00 | 0xF8,
            1 => EOC,
            c if c < next => {
                let owner = nodes
                    .iter()
                    .find(|n| n.clusters > 0 && c >= n.cluster && c < n.cluster + n.clusters)
                    .expect("allocated");
                if c + 1 == owner.cluster + owner.clusters {
                    EOC
                } else {
                    c + 1
                }
            }
            _ => 0,
        }
    };
    let mut fat = Vec::with_capacity((layout.fat_sectors * SECTOR) as usize);
    let total_entries = layout.fat_sectors * SECTOR / 4;
    for c in 0..total_entries as u32 {
        fat.extend_from_slice(&fat_entry(c).to_le_bytes());
    }
    out.write_all(&fat)?;
    out.write_all(&fat)?;
    drop(fat);
    // Data region: every node's clusters in allocation order, then free space.
    for i in 0..nodes.len() {
        let n = &nodes[i];
        let mut written = 0u64;
        if n.dir {
            let mut buf = Vec::new();
            if i == 0 {
                buf.extend_from_slice(&dir_entry(&label, 0x08, 0, 0, date, time)); // volume label
            } else {
                let parent = if n.parent == 0 {
                    0
                } else {
                    nodes[n.parent].cluster
                };
                buf.extend_from_slice(&dir_entry(b".          ", 0x10, n.cluster, 0, date, time));
                buf.extend_from_slice(&dir_entry(b"..         ", 0x10, parent, 0, date, time));
            }
            for &c in &n.children {
                let ch = &nodes[c];
                let size = if ch.dir {
                    0
                } else {
                    u32::try_from(ch.len)
                        .map_err(|_| io::Error::other("ESP files must be < 4 GiB"))?
                };
                buf.extend_from_slice(&dir_entry(
                    &ch.name,
                    if ch.dir { 0x10 } else { 0x20 },
                    ch.cluster,
                    size,
                    date,
                    time,
                ));
            }
            out.write_all(&buf)?;
            written = buf.len() as u64;
        } else if let Some(fi) = n.file {
            let f = &mut files[fi];
            written = crate::digest::copy_large(&mut (&mut f.data).take(f.len), out)?;
            if written != f.len {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "ESP file {}: {written} of {} bytes",
                        f.path.join("/"),
                        f.len
                    ),
                ));
            }
        }
        let pad = u64::from(n.clusters) * cluster_bytes - written;
        write_zeros(out, pad)?;
    }
    write_zeros(out, (layout.clusters - used) * cluster_bytes)?;
    Ok(layout)
}

/// Write `n` zero bytes in chunks (never a buffer of the full size).
pub fn write_zeros<W: Write + ?Sized>(out: &mut W, mut n: u64) -> io::Result<()> {
    let zeros = [0u8; 64 * 1024];
    while n > 0 {
        let k = n.min(zeros.len() as u64) as usize;
        out.write_all(&zeros[..k])?;
        n -= k as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dos_dates() {
        assert_eq!(
            dos_datetime(0),
            (0x21, 0),
            "before 1980 clamps to 1980-01-01"
        );
        // 2023-11-14 22:13:20 UTC
        let (d, t) = dos_datetime(1_700_000_000);
        assert_eq!((d >> 9, (d >> 5) & 15, d & 31), (43, 11, 14));
        assert_eq!((t >> 11, (t >> 5) & 63, (t & 31) * 2), (22, 13, 20));
    }

    #[test]
    fn names_must_be_8_3() {
        assert_eq!(&short_name("BOOTX64.EFI").unwrap(), b"BOOTX64 EFI");
        assert!(short_name("bootx64.efi").is_err());
        assert!(short_name("TOOLONGNAME.EFI").is_err());
    }

    fn build(data: &[u8]) -> (Vec<u8>, EspLayout) {
        let mut r = data;
        let mut files = [EspFile {
            path: vec!["EFI".into(), "BOOT".into(), "BOOTX64.EFI".into()],
            len: data.len() as u64,
            data: &mut r,
        }];
        let p = EspParams {
            volume_id: 0x1234_5678,
            label: "I2KIT-ESP".into(),
            epoch: 0,
            hidden_sectors: 2048,
            headroom: 1 << 20,
        };
        let mut out = Vec::new();
        let l = write_esp(&mut files, &p, &mut out).unwrap();
        (out, l)
    }

    #[test]
    fn layout_and_chains() {
        let data: Vec<u8> = (0..3 * 512 + 7).map(|i| i as u8).collect();
        let (img, l) = build(&data);
        assert_eq!(img.len() as u64, l.bytes());
        assert!(l.clusters >= MIN_CLUSTERS);
        let fat = &img[(RESERVED * SECTOR) as usize..];
        let entry = |c: usize| u32::from_le_bytes(fat[c * 4..c * 4 + 4].try_into().unwrap());
        // root = 2, EFI = 3, BOOT = 4, file = 5..8 (4 clusters for 1543 bytes).
        assert_eq!([entry(2), entry(3), entry(4)], [EOC, EOC, EOC]);
        assert_eq!([entry(5), entry(6), entry(7), entry(8)], [6, 7, 8, EOC]);
        assert_eq!(entry(9), 0);
        assert_eq!(&img[510..512], &[0x55, 0xAA]);
        assert_eq!(img[..512], img[6 * 512..7 * 512], "backup boot sector");
    }

    /// fsck.fat finds nothing wrong and mtools reads the file back byte for byte.
    #[test]
    fn fsck_and_mtools_accept_it() {
        let data: Vec<u8> = (0..200_000u32).map(|i| (i * 31 % 251) as u8).collect();
        let (img, _) = build(&data);
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("esp.img");
        std::fs::write(&p, &img).unwrap();
        let out = std::process::Command::new("fsck.fat")
            .arg("-n")
            .arg(&p)
            .output()
            .expect("dosfstools is installed");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "fsck.fat: {text}");
        // A clean volume gives exactly the version line and the summary line.
        let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 2, "fsck.fat complained: {text}");
        assert!(lines[1].contains("4 files"), "{text}");
        let back = dir.path().join("back.efi");
        let out = std::process::Command::new("mcopy")
            .arg("-i")
            .arg(&p)
            .arg("::/EFI/BOOT/BOOTX64.EFI")
            .arg(&back)
            .output()
            .expect("mtools is installed");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(std::fs::read(&back).unwrap(), data);
        let out = std::process::Command::new("mdir")
            .args(["-i"])
            .arg(&p)
            .arg("::/EFI/BOOT")
            .output()
            .unwrap();
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("BOOTX64  EFI"),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
}
