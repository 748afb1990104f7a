//! The initramfs: a concatenation of independently compressed newc segments
//! (the kernel accepts `(cpio | compressed cpio)*`, and frees its hard-link
//! table at each `TRAILER!!!`, so segments are self-contained). Segments are
//! built in parallel and cached in the store under a key over everything that
//! produced them, so changing one container rebuilds one segment.
//!
//! Layout (ARCHITECTURE.md): kernel modules at `/lib/modules/<release>/`, the
//! init image at `/` (with `/init`), each container at
//! `/containers/<name>/rootfs`, and `/etc/i2kit/pod.json` in a small last segment.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, Read, Write};

use crate::compress::{Compression, Compressor};
use crate::cpio::{self, Header, NewcWriter};
use crate::digest::Digest;
use crate::oci::Descriptor;
use crate::store::{Store, StoreError};
use crate::tree::{ApplyOptions, Data, Kind, Node, Tree, TreeError};

/// Media type of a cached segment in the store.
pub const SEGMENT_MEDIA_TYPE: &str = "application/vnd.i2kit.initramfs.segment.v1";
/// The store name prefix of cached segments.
pub const SEGMENT_REF_PREFIX: &str = "i2kit-segment:";

/// Errors of the initramfs stage.
#[derive(Debug, thiserror::Error)]
pub enum InitramfsError {
    /// The kernel image lacks something.
    #[error("kernel image {image}: {problem}")]
    Kernel {
        /// The image reference.
        image: String,
        /// What is wrong.
        problem: String,
    },
    /// A module cannot be found or resolved.
    #[error("kernel {release}: {problem}")]
    Module {
        /// Kernel release.
        release: String,
        /// What is wrong.
        problem: String,
    },
    /// Reading a tree failed.
    #[error(transparent)]
    Tree(#[from] TreeError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Writing failed.
    #[error("writing segment {segment}: {source}")]
    Write {
        /// The segment.
        segment: String,
        /// Cause.
        #[source]
        source: io::Error,
    },
}

/// The parts of a kernel image (LinuxKit layout).
pub struct KernelParts {
    /// `/kernel`.
    pub kernel: Data,
    /// `lib/modules/<release>` found in `/kernel.tar`, if any.
    pub release: Option<String>,
    /// `/kernel.tar` applied as a tree (metadata only).
    pub modules: Tree,
}

/// Find `/kernel` and index `/kernel.tar` of a kernel image's tree.
pub fn kernel_parts(
    store: &Store,
    image: &str,
    tree: &Tree,
) -> Result<KernelParts, InitramfsError> {
    let kerr = |problem: &str| InitramfsError::Kernel {
        image: image.to_string(),
        problem: problem.to_string(),
    };
    let kernel = tree
        .file_data("kernel")
        .cloned()
        .ok_or_else(|| kerr("no /kernel file (expected LinuxKit layout: /kernel, /kernel.tar)"))?;
    let mut modules = Tree::new();
    if let Some(data @ Data::Blob { digest, offset, .. }) = tree.file_data("kernel.tar").cloned() {
        let reader = Tree::open_range(store, &data)?.expect("blob data");
        modules.apply_tar(
            digest,
            offset,
            io::BufReader::new(reader),
            ApplyOptions {
                clamp_mtime: Some(0),
            },
        )?;
    } else if tree.file_data("kernel.tar").is_some() {
        return Err(kerr("/kernel.tar must be stored in a layer, not generated"));
    }
    let release = modules.nodes().keys().find_map(|k| {
        k.strip_prefix("lib/modules/")
            .and_then(|r| r.split('/').next())
            .map(String::from)
    });
    Ok(KernelParts {
        kernel,
        release,
        modules,
    })
}

/// The module name of a `.ko` path (`virtio-rng.ko` → `virtio_rng`).
fn module_name(path: &str) -> Option<String> {
    let file = path.rsplit('/').next()?;
    file.strip_suffix(".ko").map(|n| n.replace('-', "_"))
}

/// Read the NUL-separated `key=value` strings of an ELF module's `.modinfo`
/// section (ELF64 little-endian: section headers at e_shoff, names in the
/// e_shstrndx section). Hand-written: a full ELF crate is not needed for this.
pub fn modinfo(ko: &[u8]) -> Option<Vec<(String, String)>> {
    let u16_at = |o: usize| Some(u16::from_le_bytes(ko.get(o..o + 2)?.try_into().ok()?));
    let u32_at = |o: usize| Some(u32::from_le_bytes(ko.get(o..o + 4)?.try_into().ok()?));
    let u64_at = |o: usize| Some(u64::from_le_bytes(ko.get(o..o + 8)?.try_into().ok()?));
    if ko.get(..4)? != b"\x7fELF" || *ko.get(4)? != 2 || *ko.get(5)? != 1 {
        return None; // not ELF64 little-endian
    }
    let shoff = usize::try_from(u64_at(0x28)?).ok()?;
    let shentsize = usize::from(u16_at(0x3a)?);
    let shnum = usize::from(u16_at(0x3c)?);
    let shstrndx = usize::from(u16_at(0x3e)?);
    let sect = |i: usize| -> Option<(u32, usize, usize)> {
        let h = shoff.checked_add(i.checked_mul(shentsize)?)?;
        Some((
            u32_at(h)?,
            usize::try_from(u64_at(h + 0x18)?).ok()?,
            usize::try_from(u64_at(h + 0x20)?).ok()?,
        ))
    };
    let (_, stroff, strsize) = sect(shstrndx)?;
    let names = ko.get(stroff..stroff.checked_add(strsize)?)?;
    for i in 0..shnum {
        let (name_off, off, size) = sect(i)?;
        let name = names.get(name_off as usize..)?.split(|&b| b == 0).next()?;
        if name == b".modinfo" {
            let data = ko.get(off..off.checked_add(size)?)?;
            return Some(
                data.split(|&b| b == 0)
                    .filter_map(|kv| {
                        std::str::from_utf8(kv)
                            .ok()?
                            .split_once('=')
                            .map(|(k, v)| (k.to_string(), v.to_string()))
                    })
                    .collect(),
            );
        }
    }
    Some(Vec::new())
}

/// Resolve `wanted` module names to paths (relative to `lib/modules/<release>/`)
/// in load order: dependencies first, ties by name. Uses `modules.dep` when the
/// image has one, else each module's `depends=`. Built-in modules are skipped.
pub fn resolve_modules(
    store: &Store,
    parts: &KernelParts,
    wanted: &[String],
) -> Result<Vec<String>, InitramfsError> {
    if wanted.is_empty() {
        return Ok(Vec::new());
    }
    let release = parts.release.clone().ok_or_else(|| InitramfsError::Module {
        release: "?".into(),
        problem: format!("modules {} were asked for, but the kernel image has no /kernel.tar with lib/modules/", wanted.join(", ")),
    })?;
    let merr = |problem: String| InitramfsError::Module {
        release: release.clone(),
        problem,
    };
    let base = format!("lib/modules/{release}/");
    let mut by_name: BTreeMap<String, String> = BTreeMap::new();
    for k in parts.modules.nodes().keys() {
        if let Some(rel) = k.strip_prefix(&base) {
            if let Some(n) = module_name(rel) {
                by_name.entry(n).or_insert_with(|| rel.to_string());
            } else if rel.ends_with(".ko.xz") || rel.ends_with(".ko.zst") || rel.ends_with(".ko.gz")
            {
                return Err(merr(format!(
                    "{rel}: compressed modules are not supported; package uncompressed .ko files"
                )));
            }
        }
    }
    let read = |rel: &str| {
        parts
            .modules
            .read_file(store, &format!("{base}{rel}"), 256 << 20)
    };
    let builtin: BTreeSet<String> = match read("modules.builtin")? {
        Some(b) => String::from_utf8_lossy(&b)
            .lines()
            .filter_map(module_name)
            .collect(),
        None => BTreeSet::new(),
    };
    let dep_file: Option<BTreeMap<String, Vec<String>>> = read("modules.dep")?.map(|b| {
        String::from_utf8_lossy(&b)
            .lines()
            .filter_map(|l| {
                let (m, deps) = l.split_once(':')?;
                Some((
                    m.trim().to_string(),
                    deps.split_whitespace().map(String::from).collect(),
                ))
            })
            .collect()
    });
    let deps_of = |rel: &str| -> Result<Vec<String>, InitramfsError> {
        if let Some(d) = &dep_file {
            return Ok(d.get(rel).cloned().unwrap_or_default());
        }
        let ko = read(rel)?.ok_or_else(|| merr(format!("{rel} is not readable")))?;
        let info = modinfo(&ko)
            .ok_or_else(|| merr(format!("{rel} is not an ELF64 little-endian module")))?;
        let names: Vec<String> = info
            .iter()
            .filter(|(k, _)| k == "depends")
            .flat_map(|(_, v)| v.split(',').filter(|s| !s.is_empty()).map(String::from))
            .collect();
        names
            .into_iter()
            .map(|n| {
                by_name
                    .get(&n)
                    .cloned()
                    .ok_or_else(|| merr(format!("{rel} depends on {n}, which the image lacks")))
            })
            .collect()
    };
    let mut order = Vec::new();
    let mut state: BTreeMap<String, bool> = BTreeMap::new(); // false = visiting, true = done
    fn visit(
        rel: String,
        deps_of: &dyn Fn(&str) -> Result<Vec<String>, InitramfsError>,
        state: &mut BTreeMap<String, bool>,
        order: &mut Vec<String>,
        merr: &dyn Fn(String) -> InitramfsError,
    ) -> Result<(), InitramfsError> {
        match state.get(&rel) {
            Some(true) => return Ok(()),
            Some(false) => return Err(merr(format!("dependency cycle through {rel}"))),
            None => {}
        }
        state.insert(rel.clone(), false);
        let mut deps = deps_of(&rel)?;
        deps.sort();
        for d in deps {
            visit(d, deps_of, state, order, merr)?;
        }
        state.insert(rel.clone(), true);
        order.push(rel);
        Ok(())
    }
    let mut names: Vec<&String> = wanted.iter().collect();
    names.sort();
    for n in names {
        let n = n.replace('-', "_");
        match by_name.get(&n) {
            Some(rel) => visit(rel.clone(), &deps_of, &mut state, &mut order, &merr)?,
            None if builtin.contains(&n) => {}
            None => {
                return Err(merr(format!(
                    "module {n} is neither in the kernel image nor built in"
                )));
            }
        }
    }
    Ok(order)
}

/// What goes into one segment.
pub enum SegmentContent<'a> {
    /// A tree under a path prefix ("" for the root).
    Tree {
        /// The tree.
        tree: &'a Tree,
        /// Where it goes.
        prefix: String,
    },
    /// Generated files and directories, by path.
    Files(BTreeMap<String, Node>),
}

/// One segment to build.
pub struct SegmentJob<'a> {
    /// Human name (`modules`, `init`, `container web`, `pod`).
    pub name: String,
    /// Cache key: sha256 over everything that determines the bytes.
    pub key: Digest,
    /// The content.
    pub content: SegmentContent<'a>,
}

/// A built (or cached) segment.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Segment {
    /// Human name.
    pub name: String,
    /// Cache key.
    pub key: Digest,
    /// Digest of the compressed segment blob.
    pub digest: Digest,
    /// Its size.
    pub size: u64,
    /// False when it came from the cache.
    pub built: bool,
}

/// Build one segment into the store unless the cache has it.
pub fn build_segment(
    store: &Store,
    job: &SegmentJob,
    compression: Compression,
    epoch: u64,
) -> Result<Segment, InitramfsError> {
    let name = format!("{SEGMENT_REF_PREFIX}{}", job.key.hex());
    if let Some(d) = store.find_ref(&name)?
        && store.has_blob(&d.digest, Some(d.size))
    {
        return Ok(Segment {
            name: job.name.clone(),
            key: job.key,
            digest: d.digest,
            size: d.size,
            built: false,
        });
    }
    let werr = |source| InitramfsError::Write {
        segment: job.name.clone(),
        source,
    };
    let blob = store.blob_writer_new(&format!("initramfs segment {}", job.name))?;
    let comp =
        Compressor::new(io::BufWriter::with_capacity(1 << 20, blob), compression).map_err(werr)?;
    let mut w = NewcWriter::new(comp);
    let mut ino = 0u32;
    match &job.content {
        SegmentContent::Tree { tree, prefix } => {
            tree.write_newc(prefix, epoch, store, &mut w, &mut ino)?
        }
        SegmentContent::Files(files) => write_files(files, &mut w, &mut ino).map_err(werr)?,
    }
    let blob = w
        .finish()
        .and_then(|c| c.finish())
        .and_then(|b| b.into_inner().map_err(|e| e.into_error()))
        .map_err(werr)?;
    let size = blob.written();
    let digest = blob.commit()?;
    let mut desc = Descriptor::new(SEGMENT_MEDIA_TYPE, digest, size);
    desc.annotations
        .insert("dev.i2kit.segment".into(), job.name.clone());
    store.set_ref(&name, desc)?;
    Ok(Segment {
        name: job.name.clone(),
        key: job.key,
        digest,
        size,
        built: true,
    })
}

fn write_files<W: Write>(
    files: &BTreeMap<String, Node>,
    w: &mut NewcWriter<W>,
    ino: &mut u32,
) -> io::Result<()> {
    for (path, n) in files {
        *ino += 1;
        let mut h = Header {
            ino: *ino,
            mode: n.mode,
            uid: n.uid,
            gid: n.gid,
            nlink: 1,
            mtime: u32::try_from(n.mtime).unwrap_or(u32::MAX),
            ..Default::default()
        };
        match &n.kind {
            Kind::Dir => {
                h.mode |= cpio::mode::DIR;
                h.nlink = 2;
                w.append(path, &h, &mut io::empty())?;
            }
            Kind::File(Data::Inline(bytes)) => {
                h.mode |= cpio::mode::REG;
                h.size = bytes.len() as u32;
                w.append(path, &h, &mut &bytes[..])?;
            }
            Kind::Symlink(t) => {
                h.mode = cpio::mode::LNK | 0o777;
                h.size = t.len() as u32;
                w.append(path, &h, &mut t.as_bytes())?;
            }
            Kind::Char(a, b) => {
                h.mode |= cpio::mode::CHR;
                h.rdev_major = *a;
                h.rdev_minor = *b;
                w.append(path, &h, &mut io::empty())?;
            }
            _ => {
                return Err(io::Error::other(format!(
                    "{path}: unsupported generated entry"
                )));
            }
        }
    }
    Ok(())
}

/// Concatenate segment blobs (in order) into `out`; returns (digest, size).
pub fn concat<W: Write>(
    store: &Store,
    segments: &[Segment],
    out: W,
) -> Result<(Digest, u64), InitramfsError> {
    let mut w = crate::digest::HashingWriter::new(out);
    for s in segments {
        let mut f = store.open_blob(&s.digest)?;
        crate::digest::copy_large(&mut f, &mut w).map_err(|source| InitramfsError::Write {
            segment: s.name.clone(),
            source,
        })?;
    }
    let (_, d, n) = w.finish();
    Ok((d, n))
}

/// Read a whole segment back (tests, tools).
pub fn read_segment(store: &Store, s: &Segment) -> Result<Vec<u8>, InitramfsError> {
    let mut v = Vec::new();
    store
        .open_blob(&s.digest)?
        .read_to_end(&mut v)
        .map_err(|source| InitramfsError::Write {
            segment: s.name.clone(),
            source,
        })?;
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal ELF64 with a .modinfo section, enough for [`modinfo`].
    pub(crate) fn fake_ko(info: &str) -> Vec<u8> {
        let modinfo = info.replace(';', "\0").into_bytes();
        let shstr = b"\0.modinfo\0.shstrtab\0".to_vec();
        let mut f = vec![0u8; 64];
        f[..4].copy_from_slice(b"\x7fELF");
        f[4] = 2;
        f[5] = 1;
        let modinfo_off = f.len();
        f.extend_from_slice(&modinfo);
        let shstr_off = f.len();
        f.extend_from_slice(&shstr);
        let shoff = f.len();
        let sh = |name: u32, off: usize, size: usize| {
            let mut h = vec![0u8; 64];
            h[0..4].copy_from_slice(&name.to_le_bytes());
            h[0x18..0x20].copy_from_slice(&(off as u64).to_le_bytes());
            h[0x20..0x28].copy_from_slice(&(size as u64).to_le_bytes());
            h
        };
        let sections = [
            sh(0, 0, 0),
            sh(1, modinfo_off, modinfo.len()),
            sh(10, shstr_off, shstr.len()),
        ];
        for s in sections {
            f.extend_from_slice(&s);
        }
        f[0x28..0x30].copy_from_slice(&(shoff as u64).to_le_bytes());
        f[0x3a..0x3c].copy_from_slice(&64u16.to_le_bytes());
        f[0x3c..0x3e].copy_from_slice(&3u16.to_le_bytes());
        f[0x3e..0x40].copy_from_slice(&2u16.to_le_bytes());
        f
    }

    #[test]
    fn modinfo_reads_depends() {
        let ko = fake_ko("license=GPL;depends=virtio_ring,virtio;name=virtio_net;");
        let info = modinfo(&ko).unwrap();
        assert!(info.contains(&("depends".into(), "virtio_ring,virtio".into())));
        assert!(modinfo(b"not elf").is_none());
    }

    fn kernel_image(store: &Store, with_dep_file: bool) -> KernelParts {
        let rel = "6.1.0-test";
        let mut inner = tar::Builder::new(Vec::new());
        let mods = [
            (
                "kernel/drivers/virtio/virtio_ring.ko",
                "depends=;name=virtio_ring;",
            ),
            (
                "kernel/drivers/virtio/virtio.ko",
                "depends=virtio_ring;name=virtio;",
            ),
            ("kernel/net/core/failover.ko", "depends=;name=failover;"),
            (
                "kernel/drivers/net/net_failover.ko",
                "depends=failover;name=net_failover;",
            ),
            (
                "kernel/drivers/net/virtio_net.ko",
                "depends=virtio_ring,virtio,net_failover;name=virtio_net;",
            ),
        ];
        let mut add = |path: String, data: Vec<u8>| {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_mtime(0);
            h.set_uid(0);
            h.set_gid(0);
            inner.append_data(&mut h, path, &data[..]).unwrap();
        };
        for (p, info) in mods {
            add(format!("lib/modules/{rel}/{p}"), fake_ko(info));
        }
        add(
            format!("lib/modules/{rel}/modules.builtin"),
            b"kernel/drivers/nvme/host/nvme.ko\n".to_vec(),
        );
        if with_dep_file {
            add(format!("lib/modules/{rel}/modules.dep"), b"kernel/drivers/net/virtio_net.ko: kernel/drivers/virtio/virtio.ko\nkernel/drivers/virtio/virtio.ko:\n".to_vec());
        }
        let inner = inner.into_inner().unwrap();
        let mut outer = tar::Builder::new(Vec::new());
        for (name, data) in [("kernel", b"bzImage".to_vec()), ("kernel.tar", inner)] {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_mtime(0);
            h.set_uid(0);
            h.set_gid(0);
            outer.append_data(&mut h, name, &data[..]).unwrap();
        }
        let outer = outer.into_inner().unwrap();
        let d = store.put_bytes("kernel layer", &outer, None).unwrap();
        let mut t = Tree::new();
        t.apply_layer(
            d,
            io::Cursor::new(&outer[..]),
            ApplyOptions {
                clamp_mtime: Some(0),
            },
        )
        .unwrap();
        kernel_parts(store, "test-kernel", &t).unwrap()
    }

    #[test]
    fn modules_resolve_in_dependency_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let parts = kernel_image(&store, false);
        assert_eq!(parts.release.as_deref(), Some("6.1.0-test"));
        let order = resolve_modules(&store, &parts, &["virtio_net".into(), "nvme".into()]).unwrap();
        assert_eq!(
            order,
            // Dependencies before dependants; among siblings, by path.
            [
                "kernel/net/core/failover.ko",
                "kernel/drivers/net/net_failover.ko",
                "kernel/drivers/virtio/virtio_ring.ko",
                "kernel/drivers/virtio/virtio.ko",
                "kernel/drivers/net/virtio_net.ko",
            ]
        );
        let e = resolve_modules(&store, &parts, &["ena".into()]).unwrap_err();
        assert!(e.to_string().contains("module ena is neither"), "{e}");
        // modules.dep, when present, is what counts.
        let parts = kernel_image(&store, true);
        let order = resolve_modules(&store, &parts, &["virtio_net".into()]).unwrap();
        assert_eq!(
            order,
            [
                "kernel/drivers/virtio/virtio.ko",
                "kernel/drivers/net/virtio_net.ko"
            ]
        );
    }

    #[test]
    fn segments_are_cached_by_key_and_concatenate() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut files = BTreeMap::new();
        files.insert(
            "etc".to_string(),
            Node {
                kind: Kind::Dir,
                mode: 0o755,
                uid: 0,
                gid: 0,
                mtime: 0,
            },
        );
        files.insert(
            "etc/hello".to_string(),
            Node {
                kind: Kind::File(Data::Inline(std::sync::Arc::new(b"hi".to_vec()))),
                mode: 0o644,
                uid: 0,
                gid: 0,
                mtime: 0,
            },
        );
        let job = SegmentJob {
            name: "pod".into(),
            key: Digest::of(b"k1"),
            content: SegmentContent::Files(files),
        };
        let a = build_segment(&store, &job, Compression::Zstd { level: 3 }, 0).unwrap();
        assert!(a.built);
        let b = build_segment(&store, &job, Compression::Zstd { level: 3 }, 0).unwrap();
        assert!(!b.built, "second build is a cache hit");
        assert_eq!(a.digest, b.digest);
        let raw = zstd::decode_all(&read_segment(&store, &a).unwrap()[..]).unwrap();
        assert!(raw.windows(10).any(|w| w == b"TRAILER!!!"));
        let mut out = Vec::new();
        let (d, n) = concat(&store, &[a.clone(), a.clone()], &mut out).unwrap();
        assert_eq!(n, 2 * a.size);
        assert_eq!(d, Digest::of(&out));
    }
}
