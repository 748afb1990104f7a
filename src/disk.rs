//! The raw disk: protective MBR, GPT (primary and backup headers and entry
//! arrays) and the ESP as partition 1, 1 MiB aligned, written in one
//! sequential pass (UEFI 2.10 §5.2.3 protective MBR, §5.3.2 GPT header,
//! §5.3.3 partition entry). Disk and partition GUIDs are derived from the build
//! key, never random.

use std::io::{self, Write};

use crate::digest::Digest;
use crate::fat::{self, EspFile, EspParams, SECTOR};

/// EFI System Partition type GUID C12A7328-F81F-11D2-BA4B-00A0C93EC93B (UEFI 2.10 §5.3.3).
pub const ESP_TYPE: &str = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B";
/// Partitions start on 1 MiB boundaries (what every partitioning tool does;
/// it also covers the 34 sectors of MBR, GPT header and entries).
pub const ALIGN_SECTORS: u64 = 2048;
const ENTRIES: u64 = 128;
const ENTRY_SIZE: u64 = 128;
/// Sectors of one partition entry array (128 × 128 bytes).
const ENTRY_SECTORS: u64 = ENTRIES * ENTRY_SIZE / SECTOR;

/// A GUID in its on-disk (mixed-endian) form from its textual form.
pub fn guid_bytes(text: &str) -> [u8; 16] {
    let hex: String = text.chars().filter(|c| *c != '-').collect();
    let mut b = [0u8; 16];
    hex::decode_to_slice(&hex, &mut b).expect("valid GUID text");
    // The first three fields are little-endian on disk.
    b[0..4].reverse();
    b[4..6].reverse();
    b[6..8].reverse();
    b
}

/// A GUID derived from the build key and a purpose (version 4 / RFC 4122
/// variant bits set so tools accept it), in on-disk form.
pub fn derived_guid(key: &Digest, purpose: &str) -> [u8; 16] {
    let mut h = crate::digest::Hasher::new();
    h.update(key.bytes());
    h.update(purpose.as_bytes());
    let d = h.finish();
    let mut g = [0u8; 16];
    g.copy_from_slice(&d.bytes()[..16]);
    g[7] = (g[7] & 0x0f) | 0x40; // version nibble: the high nibble of field 3 (little-endian on disk)
    g[8] = (g[8] & 0x3f) | 0x80; // RFC 4122 variant
    g
}

/// What `write_disk` produced.
#[derive(Clone, Debug)]
pub struct DiskLayout {
    /// Total bytes.
    pub bytes: u64,
    /// ESP first LBA.
    pub esp_first: u64,
    /// ESP last LBA.
    pub esp_last: u64,
}

fn mbr(total_sectors: u64) -> [u8; 512] {
    let mut m = [0u8; 512];
    let e = 446;
    m[e + 1..e + 4].copy_from_slice(&[0x00, 0x02, 0x00]); // CHS of LBA 1
    m[e + 4] = 0xEE; // GPT protective
    m[e + 5..e + 8].copy_from_slice(&[0xFF, 0xFF, 0xFF]);
    m[e + 8..e + 12].copy_from_slice(&1u32.to_le_bytes());
    let size = (total_sectors - 1).min(u64::from(u32::MAX)) as u32;
    m[e + 12..e + 16].copy_from_slice(&size.to_le_bytes());
    m[510] = 0x55;
    m[511] = 0xAA;
    m
}

fn header(
    my: u64,
    alt: u64,
    entries_lba: u64,
    last_usable: u64,
    disk_guid: &[u8; 16],
    entries_crc: u32,
) -> [u8; 512] {
    let mut h = [0u8; 512];
    h[0..8].copy_from_slice(b"EFI PART");
    h[8..12].copy_from_slice(&0x0001_0000u32.to_le_bytes());
    h[12..16].copy_from_slice(&92u32.to_le_bytes());
    h[24..32].copy_from_slice(&my.to_le_bytes());
    h[32..40].copy_from_slice(&alt.to_le_bytes());
    h[40..48].copy_from_slice(&(2 + ENTRY_SECTORS).to_le_bytes()); // FirstUsableLBA = 34
    h[48..56].copy_from_slice(&last_usable.to_le_bytes());
    h[56..72].copy_from_slice(disk_guid);
    h[72..80].copy_from_slice(&entries_lba.to_le_bytes());
    h[80..84].copy_from_slice(&(ENTRIES as u32).to_le_bytes());
    h[84..88].copy_from_slice(&(ENTRY_SIZE as u32).to_le_bytes());
    h[88..92].copy_from_slice(&entries_crc.to_le_bytes());
    let crc = crc32fast::hash(&h[..92]);
    h[16..20].copy_from_slice(&crc.to_le_bytes());
    h
}

/// Write a raw GPT disk whose only partition is an ESP holding `files`.
pub fn write_disk<W: Write>(
    files: &mut [EspFile],
    key: &Digest,
    epoch: u64,
    out: &mut W,
) -> io::Result<DiskLayout> {
    let params = EspParams {
        volume_id: u32::from_le_bytes(
            derived_guid(key, "esp-volume-id")[..4]
                .try_into()
                .expect("4 bytes"),
        ),
        label: format!("I2K{}", &key.hex()[..8].to_uppercase()),
        epoch,
        hidden_sectors: ALIGN_SECTORS as u32,
        // Room for a firmware to write boot variables' files, and for humans.
        headroom: 1 << 20,
    };
    let esp = fat::plan(files, params.headroom);
    let esp_sectors = esp.total_sectors;
    let esp_first = ALIGN_SECTORS;
    let esp_last = esp_first + esp_sectors - 1;
    // End aligned to 1 MiB, leaving room for the backup entries and header.
    let total = (esp_last + 1 + 1 + ENTRY_SECTORS).div_ceil(ALIGN_SECTORS) * ALIGN_SECTORS;
    let last = total - 1;
    let disk_guid = derived_guid(key, "disk");
    let mut entries = vec![0u8; (ENTRIES * ENTRY_SIZE) as usize];
    entries[0..16].copy_from_slice(&guid_bytes(ESP_TYPE));
    entries[16..32].copy_from_slice(&derived_guid(key, "esp-partition"));
    entries[32..40].copy_from_slice(&esp_first.to_le_bytes());
    entries[40..48].copy_from_slice(&esp_last.to_le_bytes());
    for (i, c) in "EFI System Partition".encode_utf16().enumerate() {
        entries[56 + 2 * i..58 + 2 * i].copy_from_slice(&c.to_le_bytes());
    }
    let entries_crc = crc32fast::hash(&entries);
    let last_usable = last - 1 - ENTRY_SECTORS;
    out.write_all(&mbr(total))?;
    out.write_all(&header(1, last, 2, last_usable, &disk_guid, entries_crc))?;
    out.write_all(&entries)?;
    fat::write_zeros(out, (esp_first - 2 - ENTRY_SECTORS) * SECTOR)?;
    let written = fat::write_esp(files, &params, out)?;
    debug_assert_eq!(written.total_sectors, esp_sectors);
    fat::write_zeros(out, (last - ENTRY_SECTORS - esp_last - 1) * SECTOR)?;
    out.write_all(&entries)?;
    out.write_all(&header(
        last,
        1,
        last - ENTRY_SECTORS,
        last_usable,
        &disk_guid,
        entries_crc,
    ))?;
    Ok(DiskLayout {
        bytes: total * SECTOR,
        esp_first,
        esp_last,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn esp_type_guid_on_disk() {
        // The well-known on-disk bytes of the ESP type GUID.
        assert_eq!(
            hex::encode(guid_bytes(ESP_TYPE)),
            "28732ac11ff8d211ba4b00a0c93ec93b"
        );
    }

    fn disk(data: &[u8]) -> (Vec<u8>, DiskLayout) {
        let mut r = data;
        let mut files = [EspFile {
            path: vec!["EFI".into(), "BOOT".into(), "BOOTX64.EFI".into()],
            len: data.len() as u64,
            data: &mut r,
        }];
        let mut out = Vec::new();
        let l = write_disk(&mut files, &Digest::of(b"key"), 0, &mut out).unwrap();
        (out, l)
    }

    #[test]
    fn gpt_structure_and_crcs() {
        let (img, l) = disk(b"hello efi");
        assert_eq!(img.len() as u64, l.bytes);
        assert_eq!(l.bytes % (ALIGN_SECTORS * SECTOR), 0);
        assert_eq!(&img[512..520], b"EFI PART");
        let h = &img[512..1024];
        let mut copy = h[..92].to_vec();
        copy[16..20].fill(0);
        assert_eq!(crc32fast::hash(&copy).to_le_bytes(), h[16..20]);
        let backup = &img[img.len() - 512..];
        assert_eq!(&backup[..8], b"EFI PART");
        assert_eq!(
            u64::from_le_bytes(backup[24..32].try_into().unwrap()),
            l.bytes / SECTOR - 1
        );
        assert_eq!(
            img[1024..1024 + 16384],
            img[img.len() - 512 - 16384..img.len() - 512],
            "backup entries"
        );
        assert_eq!(l.esp_first, 2048);
    }

    #[test]
    fn sgdisk_verifies_and_guids_are_derived() {
        let (img, l) = disk(&vec![1u8; 100_000]);
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("disk.raw");
        std::fs::write(&p, &img).unwrap();
        let out = std::process::Command::new("sgdisk")
            .arg("-v")
            .arg(&p)
            .output()
            .expect("gdisk is installed");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && text.contains("No problems found"),
            "sgdisk -v: {text}"
        );
        let out = std::process::Command::new("sgdisk")
            .args(["-i", "1"])
            .arg(&p)
            .output()
            .unwrap();
        let info = String::from_utf8_lossy(&out.stdout);
        assert!(
            info.contains("C12A7328-F81F-11D2-BA4B-00A0C93EC93B"),
            "{info}"
        );
        assert!(
            info.contains(&format!("First sector: {}", l.esp_first)),
            "{info}"
        );
        let (again, _) = disk(&vec![1u8; 100_000]);
        assert_eq!(img, again, "same key, same bytes");
        // The ESP inside passes fsck.fat too.
        let esp = &img[(l.esp_first * SECTOR) as usize..((l.esp_last + 1) * SECTOR) as usize];
        let e = dir.path().join("esp.img");
        std::fs::write(&e, esp).unwrap();
        let out = std::process::Command::new("fsck.fat")
            .arg("-n")
            .arg(&e)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
}
