//! Unified Kernel Image: systemd's EFI stub (`linuxx64.efi.stub` /
//! `linuxaa64.efi.stub`, read as data) with `.osrel`, `.cmdline`, `.initrd`
//! and `.linux` sections appended (UAPI group "Unified Kernel Image"
//! specification; PE/COFF layout per the Microsoft PE format specification).
//!
//! Rules that were verified to boot (ARCHITECTURE.md): new sections go after
//! the stub's last one, VirtualAddress = round_up(prev VA + prev VirtualSize,
//! 4096), raw data aligned to FileAlignment, `.linux` last with
//! Characteristics 0x60000020 and the others 0x40000040; a trailing COFF symbol
//! table is stripped; NumberOfSections, SizeOfImage, SizeOfCode and
//! SizeOfInitializedData are updated; the checksum is 0. A signed stub (a
//! certificate table) is refused: appending would invalidate the signature.

use std::io::{self, Read, Write};

/// PE machine type of x86-64.
pub const MACHINE_AMD64: u16 = 0x8664;
/// PE machine type of arm64.
pub const MACHINE_ARM64: u16 = 0xaa64;
/// PE32+ optional-header magic.
const PE32_PLUS: u16 = 0x20b;
const SECTION_HEADER: usize = 40;
/// Section alignment of the appended sections (a page: what loaders map).
const SECTION_ALIGN: u64 = 4096;
/// `.linux`: CNT_CODE | MEM_EXECUTE | MEM_READ.
const CHAR_CODE: u32 = 0x6000_0020;
/// Other sections: CNT_INITIALIZED_DATA | MEM_READ.
const CHAR_DATA: u32 = 0x4000_0040;

/// UKI errors.
#[derive(Debug, thiserror::Error)]
pub enum UkiError {
    /// The stub is not what a UKI needs.
    #[error("EFI stub {what}: {problem}")]
    Stub {
        /// Which stub.
        what: String,
        /// What is wrong.
        problem: String,
    },
    /// The kernel does not match the platform.
    #[error("kernel {what}: {problem}")]
    Kernel {
        /// Which kernel.
        what: String,
        /// What is wrong.
        problem: String,
    },
    /// Writing failed.
    #[error("writing the UKI: {0}")]
    Io(#[from] io::Error),
}

fn u16_at(b: &[u8], o: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(o..o + 2)?.try_into().ok()?))
}
fn u32_at(b: &[u8], o: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(o..o + 4)?.try_into().ok()?))
}
fn put16(b: &mut [u8], o: usize, v: u16) {
    b[o..o + 2].copy_from_slice(&v.to_le_bytes());
}
fn put32(b: &mut [u8], o: usize, v: u32) {
    b[o..o + 4].copy_from_slice(&v.to_le_bytes());
}
fn round_up(v: u64, a: u64) -> u64 {
    v.div_ceil(a) * a
}

/// The PE machine type of an image with an MZ/PE header (an EFI stub, or a
/// kernel built with its EFI stub: x86 bzImage, arm64 Image).
pub fn pe_machine(head: &[u8]) -> Option<u16> {
    if head.get(..2)? != b"MZ" {
        return None;
    }
    let pe = u32_at(head, 0x3c)? as usize;
    if head.get(pe..pe + 4)? != b"PE\0\0" {
        return None;
    }
    u16_at(head, pe + 4)
}

/// The machine type a platform needs.
pub fn machine_for(arch: &str) -> Option<u16> {
    match arch {
        "amd64" => Some(MACHINE_AMD64),
        "arm64" => Some(MACHINE_ARM64),
        _ => None,
    }
}

fn machine_name(m: u16) -> String {
    match m {
        MACHINE_AMD64 => "x86-64 (amd64)".into(),
        MACHINE_ARM64 => "arm64".into(),
        0x14c => "i386".into(),
        other => format!("machine {other:#06x}"),
    }
}

/// Check a kernel image (its first bytes) against the platform's architecture.
pub fn check_kernel(what: &str, head: &[u8], arch: &str) -> Result<(), UkiError> {
    let want = machine_for(arch).ok_or_else(|| UkiError::Kernel {
        what: what.into(),
        problem: format!("platform architecture {arch} has no UEFI support in i2kit"),
    })?;
    match pe_machine(head) {
        Some(m) if m == want => Ok(()),
        Some(m) => Err(UkiError::Kernel {
            what: what.into(),
            problem: format!(
                "is built for {}, but the platform is {arch}",
                machine_name(m)
            ),
        }),
        None => Err(UkiError::Kernel {
            what: what.into(),
            problem:
                "has no PE header (a kernel built with CONFIG_EFI_STUB is needed to boot from UEFI)"
                    .into(),
        }),
    }
}

/// A validated stub, ready to take sections.
pub struct Stub {
    bytes: Vec<u8>,
    pe: usize,
    opt: usize,
    sections: usize,
    nsections: usize,
    file_align: u64,
    /// End of the last section in memory.
    next_va: u64,
    /// End of the last section's raw data (symbol table stripped after it).
    end_of_data: u64,
}

impl Stub {
    /// Parse and validate a stub for `arch`.
    pub fn parse(what: &str, bytes: Vec<u8>, arch: &str) -> Result<Stub, UkiError> {
        let bad = |p: &str| UkiError::Stub {
            what: what.into(),
            problem: p.into(),
        };
        let machine = pe_machine(&bytes).ok_or_else(|| bad("not a PE image (no MZ/PE header)"))?;
        let want = machine_for(arch).ok_or_else(|| bad(&format!("no UEFI support for {arch}")))?;
        if machine != want {
            return Err(bad(&format!(
                "is built for {}, but the platform is {arch}",
                machine_name(machine)
            )));
        }
        let pe = u32_at(&bytes, 0x3c).ok_or_else(|| bad("truncated"))? as usize;
        let nsections = u16_at(&bytes, pe + 6).ok_or_else(|| bad("truncated"))? as usize;
        let opt_size = u16_at(&bytes, pe + 20).ok_or_else(|| bad("truncated"))? as usize;
        let opt = pe + 24;
        if u16_at(&bytes, opt) != Some(PE32_PLUS) {
            return Err(bad("not PE32+ (64-bit)"));
        }
        let ndd = u32_at(&bytes, opt + 108).ok_or_else(|| bad("truncated"))? as usize;
        // Data directory 4 is the certificate table (Authenticode signature).
        if ndd > 4 && u32_at(&bytes, opt + 112 + 4 * 8 + 4).unwrap_or(0) != 0 {
            return Err(bad(
                "is signed (it has a certificate table); appending sections would break the signature — use an unsigned stub and sign the UKI afterwards",
            ));
        }
        let file_align = u64::from(u32_at(&bytes, opt + 36).ok_or_else(|| bad("truncated"))?);
        let size_of_headers = u64::from(u32_at(&bytes, opt + 60).ok_or_else(|| bad("truncated"))?);
        if !file_align.is_power_of_two() || file_align < 512 {
            return Err(bad("invalid FileAlignment"));
        }
        let sections = opt + opt_size;
        let mut next_va = 0;
        let mut end_of_data = 0;
        for i in 0..nsections {
            let h = sections + i * SECTION_HEADER;
            let vsize =
                u64::from(u32_at(&bytes, h + 8).ok_or_else(|| bad("truncated section table"))?);
            let va =
                u64::from(u32_at(&bytes, h + 12).ok_or_else(|| bad("truncated section table"))?);
            let rsize =
                u64::from(u32_at(&bytes, h + 16).ok_or_else(|| bad("truncated section table"))?);
            let rptr =
                u64::from(u32_at(&bytes, h + 20).ok_or_else(|| bad("truncated section table"))?);
            let name = &bytes[h..h + 8];
            for reserved in [&b".linux\0\0"[..], b".initrd\0", b".cmdline", b".osrel\0\0"] {
                if name == reserved {
                    return Err(bad("already has UKI sections (it is a UKI, not a stub)"));
                }
            }
            next_va = next_va.max(va + vsize.max(rsize));
            end_of_data = end_of_data.max(rptr + rsize);
        }
        let table_end = (sections + (nsections + 4) * SECTION_HEADER) as u64;
        if table_end > size_of_headers {
            return Err(bad(
                "has no room in its headers for four more section entries",
            ));
        }
        if end_of_data > bytes.len() as u64 {
            return Err(bad("truncated section data"));
        }
        Ok(Stub {
            bytes,
            pe,
            opt,
            sections,
            nsections,
            file_align,
            next_va,
            end_of_data,
        })
    }
}

impl Stub {
    /// The size [`write_uki`] will produce for sections of these lengths.
    pub fn output_len(&self, section_lens: &[u64]) -> u64 {
        let mut raw = round_up(self.end_of_data, self.file_align);
        for len in section_lens {
            raw += round_up(*len, self.file_align);
        }
        raw
    }
}

/// One section to append.
pub struct Section<'a> {
    /// `.osrel`, `.cmdline`, `.initrd`, `.linux`.
    pub name: &'static str,
    /// Its length.
    pub len: u64,
    /// Its bytes (exactly `len`).
    pub data: &'a mut dyn Read,
}

/// Write `stub` + `sections` (in order; `.linux` must be last) to `out`, streaming
/// the section data. Returns the bytes written.
pub fn write_uki<W: Write + ?Sized>(
    stub: Stub,
    sections: &mut [Section],
    out: &mut W,
) -> Result<u64, UkiError> {
    if sections.last().map(|s| s.name) != Some(".linux") {
        return Err(UkiError::Io(io::Error::other(
            ".linux must be the last section",
        )));
    }
    let mut head = stub.bytes[..stub.end_of_data as usize].to_vec();
    let mut va = round_up(stub.next_va, SECTION_ALIGN);
    let mut raw = round_up(stub.end_of_data, stub.file_align);
    let mut layout = Vec::new();
    let (mut code, mut data) = (
        u64::from(u32_at(&head, stub.opt + 4).unwrap_or(0)),
        u64::from(u32_at(&head, stub.opt + 8).unwrap_or(0)),
    );
    for (i, s) in sections.iter().enumerate() {
        let h = stub.sections + (stub.nsections + i) * SECTION_HEADER;
        let rsize = round_up(s.len, stub.file_align);
        let chars = if s.name == ".linux" {
            CHAR_CODE
        } else {
            CHAR_DATA
        };
        let too_big = |what: &str| {
            UkiError::Io(io::Error::other(format!(
                "{} {what} exceeds the PE 4 GiB limit",
                s.name
            )))
        };
        let mut name = [0u8; 8];
        name[..s.name.len()].copy_from_slice(s.name.as_bytes());
        head[h..h + 8].copy_from_slice(&name);
        put32(
            &mut head,
            h + 8,
            u32::try_from(s.len).map_err(|_| too_big("size"))?,
        );
        put32(
            &mut head,
            h + 12,
            u32::try_from(va).map_err(|_| too_big("address"))?,
        );
        put32(
            &mut head,
            h + 16,
            u32::try_from(rsize).map_err(|_| too_big("size"))?,
        );
        put32(
            &mut head,
            h + 20,
            u32::try_from(raw).map_err(|_| too_big("offset"))?,
        );
        head[h + 24..h + 36].fill(0); // relocations, line numbers
        put32(&mut head, h + 36, chars);
        if chars == CHAR_CODE {
            code += rsize;
        } else {
            data += rsize;
        }
        layout.push((raw, rsize));
        va = round_up(va + s.len, SECTION_ALIGN);
        raw += rsize;
    }
    let pe = stub.pe;
    put16(&mut head, pe + 6, (stub.nsections + sections.len()) as u16);
    // The symbol table after the sections is dropped (PE images need none).
    put32(&mut head, pe + 12, 0);
    put32(&mut head, pe + 16, 0);
    let too_big = || UkiError::Io(io::Error::other("the UKI exceeds the PE 4 GiB limit"));
    put32(
        &mut head,
        stub.opt + 4,
        u32::try_from(code).map_err(|_| too_big())?,
    );
    put32(
        &mut head,
        stub.opt + 8,
        u32::try_from(data).map_err(|_| too_big())?,
    );
    put32(
        &mut head,
        stub.opt + 56,
        u32::try_from(va).map_err(|_| too_big())?,
    ); // SizeOfImage
    put32(&mut head, stub.opt + 64, 0); // CheckSum: not required for EFI images
    out.write_all(&head)?;
    let mut written = head.len() as u64;
    let zeros = [0u8; 4096];
    for (s, (raw, rsize)) in sections.iter_mut().zip(layout) {
        while written < raw {
            let n = (raw - written).min(zeros.len() as u64) as usize;
            out.write_all(&zeros[..n])?;
            written += n as u64;
        }
        let n = crate::digest::copy_large(&mut s.data.take(s.len), out)?;
        if n != s.len {
            return Err(UkiError::Io(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("{}: {n} of {} bytes", s.name, s.len),
            )));
        }
        written += n;
        let pad = raw + rsize - written;
        out.write_all(&vec![0u8; pad as usize])?;
        written += pad;
    }
    Ok(written)
}

/// The `.osrel` text of an i2kit image.
pub fn os_release(name: &str, build_key: &str) -> String {
    format!(
        "NAME=\"i2kit\"\nID=i2kit\nPRETTY_NAME=\"i2kit {name}\"\nIMAGE_ID={name}\nIMAGE_VERSION={}\nI2KIT_VERSION={}\n",
        &build_key[..12.min(build_key.len())],
        crate::VERSION
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal PE32+ stub: 2 sections, FileAlignment 0x200, a fake symbol table.
    pub(crate) fn fake_stub(machine: u16, signed: bool) -> Vec<u8> {
        let mut b = vec![0u8; 0x400];
        b[..2].copy_from_slice(b"MZ");
        put32(&mut b, 0x3c, 0x80);
        b[0x80..0x84].copy_from_slice(b"PE\0\0");
        put16(&mut b, 0x84, machine);
        put16(&mut b, 0x86, 2);
        put32(&mut b, 0x8c, 0x800); // symbol table pointer
        put32(&mut b, 0x90, 3);
        put16(&mut b, 0x94, 240);
        let opt = 0x98;
        put16(&mut b, opt, PE32_PLUS);
        put32(&mut b, opt + 4, 0x200);
        put32(&mut b, opt + 32, 0x1000);
        put32(&mut b, opt + 36, 0x200);
        put32(&mut b, opt + 56, 0x3000);
        put32(&mut b, opt + 60, 0x400);
        put32(&mut b, opt + 108, 16);
        if signed {
            put32(&mut b, opt + 112 + 32, 0x900);
            put32(&mut b, opt + 112 + 36, 0x10);
        }
        let st = opt + 240;
        for (i, (name, va, raw)) in [(".text", 0x1000u32, 0x400u32), (".data", 0x2000, 0x600)]
            .iter()
            .enumerate()
        {
            let h = st + i * 40;
            b[h..h + name.len()].copy_from_slice(name.as_bytes());
            put32(&mut b, h + 8, 0x100);
            put32(&mut b, h + 12, *va);
            put32(&mut b, h + 16, 0x200);
            put32(&mut b, h + 20, *raw);
        }
        b.resize(0x800, 0xcc);
        b.extend_from_slice(&[0xee; 54]); // symbol table, to be stripped
        b
    }

    #[test]
    fn sections_are_appended_per_the_rules() {
        let stub = Stub::parse("t", fake_stub(MACHINE_AMD64, false), "amd64").unwrap();
        let (mut a, mut c, mut i, mut l) = (
            &b"osrel"[..],
            &b"console=ttyS0"[..],
            &vec![7u8; 1000][..],
            &b"MZkernel"[..],
        );
        let mut secs = [
            Section {
                name: ".osrel",
                len: 5,
                data: &mut a,
            },
            Section {
                name: ".cmdline",
                len: 13,
                data: &mut c,
            },
            Section {
                name: ".initrd",
                len: 1000,
                data: &mut i,
            },
            Section {
                name: ".linux",
                len: 8,
                data: &mut l,
            },
        ];
        let mut out = Vec::new();
        let predicted = stub.output_len(&[5, 13, 1000, 8]);
        let n = write_uki(stub, &mut secs, &mut out).unwrap();
        assert_eq!(predicted, n);
        assert_eq!(n, out.len() as u64);
        assert_eq!(u16_at(&out, 0x86), Some(6));
        assert_eq!(u32_at(&out, 0x8c), Some(0), "symbol table pointer cleared");
        let st = 0x98 + 240;
        let sec = |k: usize| {
            let h = st + k * 40;
            (
                String::from_utf8_lossy(&out[h..h + 8])
                    .trim_end_matches('\0')
                    .to_string(),
                u32_at(&out, h + 8).unwrap(),
                u32_at(&out, h + 12).unwrap(),
                u32_at(&out, h + 16).unwrap(),
                u32_at(&out, h + 20).unwrap(),
                u32_at(&out, h + 36).unwrap(),
            )
        };
        // Previous end: VA 0x2000 + 0x200 → next page 0x3000. Raw data at 0x800 (symbols stripped).
        assert_eq!(
            sec(2),
            (".osrel".into(), 5, 0x3000, 0x200, 0x800, CHAR_DATA)
        );
        assert_eq!(
            sec(3),
            (".cmdline".into(), 13, 0x4000, 0x200, 0xa00, CHAR_DATA)
        );
        assert_eq!(
            sec(4),
            (".initrd".into(), 1000, 0x5000, 0x400, 0xc00, CHAR_DATA)
        );
        assert_eq!(
            sec(5),
            (".linux".into(), 8, 0x6000, 0x200, 0x1000, CHAR_CODE)
        );
        assert_eq!(u32_at(&out, 0x98 + 56), Some(0x7000), "SizeOfImage");
        assert_eq!(
            u32_at(&out, 0x98 + 4),
            Some(0x400),
            "SizeOfCode grew by .linux"
        );
        assert_eq!(&out[0x1000..0x1008], b"MZkernel");
        assert_eq!(out.len(), 0x1200);
        assert!(!out.windows(4).any(|w| w == [0xee; 4]), "symbols gone");
    }

    #[test]
    fn bad_stubs_are_refused() {
        let e = |b: Vec<u8>, arch: &str| Stub::parse("t", b, arch).err().unwrap().to_string();
        assert!(e(fake_stub(MACHINE_AMD64, true), "amd64").contains("signed"));
        assert!(e(fake_stub(MACHINE_ARM64, false), "amd64").contains("built for arm64"));
        assert!(e(b"not a pe".to_vec(), "amd64").contains("not a PE"));
        let mut pe32 = fake_stub(MACHINE_AMD64, false);
        put16(&mut pe32, 0x98, 0x10b);
        assert!(e(pe32, "amd64").contains("PE32+"));
        assert!(
            check_kernel("k", &fake_stub(MACHINE_ARM64, false), "amd64")
                .unwrap_err()
                .to_string()
                .contains("arm64")
        );
        assert!(check_kernel("k", b"\x7fELF", "amd64").is_err());
    }
}
