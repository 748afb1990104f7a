//! A newc ("new ASCII", magic `070701`) cpio writer — the only format the
//! kernel's initramfs unpacker reads (kernel `Documentation/driver-api/
//! early-userspace/buffer-format.rst`). Written by hand because the format is
//! 13 hex fields and the reproducibility rules (fixed inode numbers, sorted
//! entries, one epoch) are easier to guarantee than to configure.
//!
//! Layout of one entry: 110-byte header, name + NUL padded to 4 bytes, data
//! padded to 4 bytes. The archive ends with an entry named `TRAILER!!!`.

use std::io::{self, Read, Write};

/// Header magic of newc without CRC.
pub const MAGIC: &[u8; 6] = b"070701";
/// The end-of-archive entry name.
pub const TRAILER: &str = "TRAILER!!!";

/// File type bits of `mode` (from `<sys/stat.h>`).
pub mod mode {
    /// Directory.
    pub const DIR: u32 = 0o040000;
    /// Regular file.
    pub const REG: u32 = 0o100000;
    /// Symbolic link.
    pub const LNK: u32 = 0o120000;
    /// Character device.
    pub const CHR: u32 = 0o020000;
    /// Block device.
    pub const BLK: u32 = 0o060000;
    /// FIFO.
    pub const FIFO: u32 = 0o010000;
}

/// One entry's metadata.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Header {
    /// Inode number (hard links share one).
    pub ino: u32,
    /// Type and permission bits.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Link count.
    pub nlink: u32,
    /// Modification time, seconds since the epoch.
    pub mtime: u32,
    /// Data size.
    pub size: u32,
    /// Device major (for device nodes).
    pub rdev_major: u32,
    /// Device minor (for device nodes).
    pub rdev_minor: u32,
}

/// Writes a newc archive to any writer.
pub struct NewcWriter<W: Write> {
    out: W,
    offset: u64,
}

fn pad4(n: u64) -> usize {
    ((4 - (n % 4)) % 4) as usize
}

impl<W: Write> NewcWriter<W> {
    /// Start an archive.
    pub fn new(out: W) -> Self {
        NewcWriter { out, offset: 0 }
    }

    fn put(&mut self, b: &[u8]) -> io::Result<()> {
        self.out.write_all(b)?;
        self.offset += b.len() as u64;
        Ok(())
    }

    fn pad(&mut self) -> io::Result<()> {
        let n = pad4(self.offset);
        self.put(&[0u8; 3][..n])
    }

    /// Append an entry; `data` must yield exactly `h.size` bytes.
    pub fn append(&mut self, name: &str, h: &Header, data: &mut dyn Read) -> io::Result<()> {
        if name.as_bytes().contains(&0) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("NUL in cpio name {name:?}"),
            ));
        }
        let fields = [
            h.ino,
            h.mode,
            h.uid,
            h.gid,
            h.nlink,
            h.mtime,
            h.size,
            0, // devmajor: the archive's own device, constant
            0, // devminor
            h.rdev_major,
            h.rdev_minor,
            name.len() as u32 + 1,
            0, // check: only for the 070702 CRC variant
        ];
        let mut hdr = Vec::with_capacity(110);
        hdr.extend_from_slice(MAGIC);
        for f in fields {
            write!(hdr, "{f:08x}")?;
        }
        debug_assert_eq!(hdr.len(), 110);
        self.put(&hdr)?;
        self.put(name.as_bytes())?;
        self.put(&[0])?;
        self.pad()?;
        let copied = io::copy(&mut data.take(u64::from(h.size)), &mut self.out)?;
        if copied != u64::from(h.size) {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("{name}: expected {} bytes of data, got {copied}", h.size),
            ));
        }
        self.offset += copied;
        self.pad()
    }

    /// Write the trailer and return the writer.
    pub fn finish(mut self) -> io::Result<W> {
        let h = Header {
            nlink: 1,
            ..Default::default()
        };
        self.append(TRAILER, &h, &mut io::empty())?;
        Ok(self.out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_layout_matches_the_kernel_spec() {
        let mut w = NewcWriter::new(Vec::new());
        let h = Header {
            ino: 1,
            mode: mode::REG | 0o644,
            nlink: 1,
            size: 3,
            ..Default::default()
        };
        w.append("ab", &h, &mut &b"xyz"[..]).unwrap();
        let out = w.finish().unwrap();
        let first = &out[..110];
        assert_eq!(
            std::str::from_utf8(first).unwrap(),
            "070701\
             00000001\
             000081a4\
             00000000\
             00000000\
             00000001\
             00000000\
             00000003\
             00000000\
             00000000\
             00000000\
             00000000\
             00000003\
             00000000"
        );
        // name "ab\0" at 110..113, pad to 116, data at 116..119, pad to 120.
        assert_eq!(&out[110..116], b"ab\0\0\0\0");
        assert_eq!(&out[116..120], b"xyz\0");
        assert_eq!(&out[120..126], MAGIC);
        assert!(out.windows(10).any(|w| w == TRAILER.as_bytes()));
        assert_eq!(out.len() % 4, 0);
    }

    #[test]
    fn short_data_is_an_error() {
        let mut w = NewcWriter::new(Vec::new());
        let h = Header {
            mode: mode::REG,
            size: 10,
            ..Default::default()
        };
        assert!(w.append("x", &h, &mut &b"abc"[..]).is_err());
    }
}
