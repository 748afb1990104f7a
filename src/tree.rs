//! An in-memory filesystem tree built by applying an image's layers in order
//! (OCI image-spec `layer.md`: changesets, `.wh.` whiteouts, `.wh..wh..opq`
//! opaque directories). Nothing is ever written to the host: file data stays
//! in the store — nodes point at byte ranges of the layer's *uncompressed* tar,
//! itself a store blob named by its diff_id — so a 700 MB image costs a few MB
//! of metadata, not 700 MB of RAM.
//!
//! Hostile layers are refused: absolute paths, `..` components, entries
//! beneath a symlink whose target climbs out of the root, hard links to
//! nothing, and absurd sizes.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use crate::cpio::{self, Header, NewcWriter};
use crate::digest::Digest;
use crate::store::{Store, StoreError};

/// The largest single file i2kit accepts from a layer (8 GiB). Larger sizes in
/// a tar header are treated as an attack or corruption, not as data.
pub const MAX_ENTRY_SIZE: u64 = 8 << 30;
/// Symlinks followed while resolving one path, as the kernel's `MAXSYMLINKS`.
const MAX_SYMLINK_HOPS: usize = 40;

/// Where a regular file's bytes are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Data {
    /// A range of a store blob (an uncompressed layer tar).
    Blob {
        /// The blob.
        digest: Digest,
        /// Offset of the first byte.
        offset: u64,
        /// Length.
        len: u64,
    },
    /// Bytes held in memory (generated files, sparse entries).
    Inline(Arc<Vec<u8>>),
}

impl Data {
    /// The file size.
    pub fn len(&self) -> u64 {
        match self {
            Data::Blob { len, .. } => *len,
            Data::Inline(v) => v.len() as u64,
        }
    }
    /// True for an empty file.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What a node is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A directory.
    Dir,
    /// A regular file.
    File(Data),
    /// A symbolic link and its target.
    Symlink(String),
    /// A hard link to another regular file of the tree (its path).
    Hardlink(String),
    /// A character device (major, minor).
    Char(u32, u32),
    /// A block device (major, minor).
    Block(u32, u32),
    /// A named pipe.
    Fifo,
}

/// One entry of the tree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    /// What it is.
    pub kind: Kind,
    /// Permission bits (0o7777).
    pub mode: u32,
    /// Numeric owner.
    pub uid: u32,
    /// Numeric group.
    pub gid: u32,
    /// Modification time.
    pub mtime: u64,
}

/// Errors applying a layer.
#[derive(Debug, thiserror::Error)]
pub enum TreeError {
    /// A hostile or malformed entry.
    #[error("layer {layer}: entry {path:?}: {problem}")]
    Hostile {
        /// Which layer.
        layer: Digest,
        /// The entry path as written in the tar.
        path: String,
        /// What is wrong.
        problem: String,
    },
    /// The tar stream is broken.
    #[error("layer {layer}: {source}")]
    Tar {
        /// Which layer.
        layer: Digest,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// Serialising failed.
    #[error("writing the tree: {0}")]
    Write(#[from] io::Error),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// How layers are applied.
#[derive(Clone, Copy, Debug)]
pub struct ApplyOptions {
    /// Clamp every mtime to this epoch (`--reproducible`).
    pub clamp_mtime: Option<u64>,
}

/// A filesystem tree; keys are normalised relative paths (`bin/sh`), sorted,
/// so a parent always precedes its children.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tree {
    nodes: BTreeMap<String, Node>,
}

/// Normalise a tar path: strip `./`, refuse absolute paths and `..`.
fn normalise(raw: &str) -> Result<String, String> {
    if raw.starts_with('/') {
        return Err("absolute path".into());
    }
    let mut parts = Vec::new();
    for c in raw.split('/') {
        match c {
            "" | "." => {}
            ".." => return Err("path contains a '..' component".into()),
            c => parts.push(c),
        }
    }
    Ok(parts.join("/"))
}

fn parent_and_name(p: &str) -> (&str, &str) {
    match p.rsplit_once('/') {
        Some((a, b)) => (a, b),
        None => ("", p),
    }
}

/// Keys strictly below `dir` in a BTreeMap: from "dir/" up to "dir0" ('0' follows '/').
fn below(dir: &str) -> (String, String) {
    if dir.is_empty() {
        (String::new(), "\u{10ffff}".into())
    } else {
        (format!("{dir}/"), format!("{dir}0"))
    }
}

impl Tree {
    /// An empty tree.
    pub fn new() -> Tree {
        Tree::default()
    }

    /// All nodes, sorted by path.
    pub fn nodes(&self) -> &BTreeMap<String, Node> {
        &self.nodes
    }

    /// Look a path up (no symlink resolution).
    pub fn get(&self, path: &str) -> Option<&Node> {
        self.nodes.get(path)
    }

    /// Insert or replace a node (used for generated files such as pod.json).
    /// Missing parent directories are created 0755 root:root.
    pub fn insert(&mut self, path: &str, node: Node) {
        self.make_parents(path, node.mtime);
        self.nodes.insert(path.to_string(), node);
    }

    fn make_parents(&mut self, path: &str, mtime: u64) {
        let mut cur = String::new();
        let (parent, _) = parent_and_name(path);
        if parent.is_empty() {
            return;
        }
        for c in parent.split('/') {
            if !cur.is_empty() {
                cur.push('/');
            }
            cur.push_str(c);
            self.nodes.entry(cur.clone()).or_insert(Node {
                kind: Kind::Dir,
                mode: 0o755,
                uid: 0,
                gid: 0,
                mtime,
            });
        }
    }

    fn remove_subtree(&mut self, path: &str) {
        self.nodes.remove(path);
        let (lo, hi) = below(path);
        let doomed: Vec<String> = self.nodes.range(lo..hi).map(|(k, _)| k.clone()).collect();
        for k in doomed {
            self.nodes.remove(&k);
        }
    }

    /// Resolve the directories of `path` through symlinks already in the tree,
    /// the way extraction into a chroot would; refuse a symlink that climbs out.
    fn resolve_parent(&self, path: &str) -> Result<String, String> {
        let (parent, name) = parent_and_name(path);
        if parent.is_empty() {
            return Ok(name.to_string());
        }
        let mut todo: Vec<String> = parent.split('/').rev().map(String::from).collect();
        let mut resolved: Vec<String> = Vec::new();
        let mut hops = 0;
        while let Some(c) = todo.pop() {
            match c.as_str() {
                "" | "." => continue,
                ".." => {
                    if resolved.pop().is_none() {
                        return Err(format!(
                            "a symlink in its directory climbs out of the root (via {parent:?})"
                        ));
                    }
                    continue;
                }
                _ => {}
            }
            let candidate = if resolved.is_empty() {
                c.clone()
            } else {
                format!("{}/{c}", resolved.join("/"))
            };
            match self.nodes.get(&candidate).map(|n| &n.kind) {
                Some(Kind::Symlink(target)) => {
                    hops += 1;
                    if hops > MAX_SYMLINK_HOPS {
                        return Err("too many levels of symbolic links in its directory".into());
                    }
                    if target.starts_with('/') {
                        resolved.clear();
                    }
                    todo.extend(target.split('/').rev().map(String::from));
                }
                Some(Kind::Dir) | None => resolved.push(c),
                Some(_) => return Err(format!("{candidate:?} is not a directory")),
            }
        }
        resolved.push(name.to_string());
        Ok(resolved.join("/"))
    }

    /// Apply one uncompressed layer tar, read from `tar`, whose bytes are the
    /// store blob `blob` (file data is referenced there, not copied).
    pub fn apply_layer(
        &mut self,
        blob: Digest,
        tar: impl Read + Seek,
        opts: ApplyOptions,
    ) -> Result<(), TreeError> {
        self.apply_tar(blob, 0, tar, opts)
    }

    /// Apply a tar stored at `base` bytes into the store blob `blob` (a tar
    /// inside an image, such as a kernel image's `/kernel.tar`).
    pub fn apply_tar(
        &mut self,
        blob: Digest,
        base: u64,
        tar: impl Read + Seek,
        opts: ApplyOptions,
    ) -> Result<(), TreeError> {
        let tar_err = |source| TreeError::Tar {
            layer: blob,
            source,
        };
        let mut archive = tar::Archive::new(tar);
        let mut added: BTreeSet<String> = BTreeSet::new();
        let mut opaque: Vec<String> = Vec::new();
        // Seek over file data instead of reading it: only headers are parsed,
        // so indexing a 700 MB layer reads a few MB.
        for entry in archive.entries_with_seek().map_err(tar_err)? {
            let mut entry = entry.map_err(tar_err)?;
            let raw_path = String::from_utf8(entry.path_bytes().into_owned()).map_err(|e| {
                TreeError::Hostile {
                    layer: blob,
                    path: String::from_utf8_lossy(e.as_bytes()).into_owned(),
                    problem: "path is not UTF-8".into(),
                }
            })?;
            let hostile = |problem: String| TreeError::Hostile {
                layer: blob,
                path: raw_path.clone(),
                problem,
            };
            // tar-rs expands GNU (old-format) sparse entries but not the PAX
            // GNU.sparse.* formats: refuse them rather than store a sparse map as data.
            if let Ok(Some(pax)) = entry.pax_extensions() {
                for ext in pax.flatten() {
                    if ext.key_bytes().starts_with(b"GNU.sparse") {
                        return Err(hostile(
                            "PAX sparse files (GNU.sparse.*) are not supported; rebuild the layer without --sparse or with --format=gnu".into(),
                        ));
                    }
                }
            }
            let norm = normalise(&raw_path).map_err(hostile)?;
            if norm.is_empty() {
                continue; // "./" itself: the root keeps its defaults
            }
            let h = entry.header();
            let size = entry.size();
            if size > MAX_ENTRY_SIZE {
                return Err(hostile(format!(
                    "size {size} exceeds the {MAX_ENTRY_SIZE}-byte limit"
                )));
            }
            let path = self.resolve_parent(&norm).map_err(hostile)?;
            let (dir, name) = parent_and_name(&path);
            // Whiteouts (image-spec layer.md "Whiteouts").
            if name == ".wh..wh..opq" {
                opaque.push(dir.to_string());
                continue;
            }
            if let Some(victim) = name.strip_prefix(".wh.") {
                if victim.is_empty() {
                    return Err(hostile("empty whiteout name".into()));
                }
                let victim = if dir.is_empty() {
                    victim.to_string()
                } else {
                    format!("{dir}/{victim}")
                };
                self.remove_subtree(&victim);
                continue;
            }
            let mut mtime = h.mtime().unwrap_or(0);
            if let Some(e) = opts.clamp_mtime {
                mtime = mtime.min(e);
            }
            let mode = h.mode().map_err(tar_err)? & 0o7777;
            let uid = u32::try_from(h.uid().map_err(tar_err)?)
                .map_err(|_| hostile("uid out of range".into()))?;
            let gid = u32::try_from(h.gid().map_err(tar_err)?)
                .map_err(|_| hostile("gid out of range".into()))?;
            let dev = |h: &tar::Header| -> Result<(u32, u32), TreeError> {
                Ok((
                    h.device_major().map_err(tar_err)?.unwrap_or(0),
                    h.device_minor().map_err(tar_err)?.unwrap_or(0),
                ))
            };
            let et = h.entry_type();
            let kind = match et {
                tar::EntryType::Directory => Kind::Dir,
                tar::EntryType::Regular | tar::EntryType::Continuous => Kind::File(Data::Blob {
                    digest: blob,
                    offset: base + entry.raw_file_position(),
                    len: size,
                }),
                tar::EntryType::GNUSparse => {
                    // The tar crate expands sparse maps while reading: keep the bytes.
                    let mut v = Vec::new();
                    entry.read_to_end(&mut v).map_err(tar_err)?;
                    Kind::File(Data::Inline(Arc::new(v)))
                }
                tar::EntryType::Symlink => {
                    let t = entry
                        .link_name_bytes()
                        .ok_or_else(|| hostile("symlink without a target".into()))?;
                    Kind::Symlink(
                        String::from_utf8(t.into_owned())
                            .map_err(|_| hostile("symlink target is not UTF-8".into()))?,
                    )
                }
                tar::EntryType::Link => {
                    let t = entry
                        .link_name_bytes()
                        .ok_or_else(|| hostile("hard link without a target".into()))?;
                    let t = String::from_utf8(t.into_owned())
                        .map_err(|_| hostile("hard link target is not UTF-8".into()))?;
                    let t = normalise(&t).map_err(|p| hostile(format!("hard link target: {p}")))?;
                    let t = self
                        .resolve_parent(&t)
                        .map_err(|p| hostile(format!("hard link target: {p}")))?;
                    let target = match self.nodes.get(&t).map(|n| &n.kind) {
                        Some(Kind::File(_)) => t,
                        Some(Kind::Hardlink(root)) => root.clone(),
                        _ => {
                            return Err(hostile(format!(
                                "hard link to {t:?}, which is not a regular file of the image"
                            )));
                        }
                    };
                    if target == path {
                        return Err(hostile("hard link to itself".into()));
                    }
                    Kind::Hardlink(target)
                }
                tar::EntryType::Char => {
                    let (a, b) = dev(h)?;
                    Kind::Char(a, b)
                }
                tar::EntryType::Block => {
                    let (a, b) = dev(h)?;
                    Kind::Block(a, b)
                }
                tar::EntryType::Fifo => Kind::Fifo,
                // PAX/GNU long-name records are consumed by the tar crate;
                // anything else (XGlobalHeader, unknown) carries no file.
                _ => continue,
            };
            let existing_is_dir = matches!(self.nodes.get(&path).map(|n| &n.kind), Some(Kind::Dir));
            if !(existing_is_dir && kind == Kind::Dir) {
                self.remove_subtree(&path);
            }
            self.make_parents(&path, opts.clamp_mtime.unwrap_or(0));
            self.nodes.insert(
                path.clone(),
                Node {
                    kind,
                    mode,
                    uid,
                    gid,
                    mtime,
                },
            );
            added.insert(path);
        }
        // Opaque directories hide what lower layers put in them, wherever the
        // marker appears in this layer's tar.
        for dir in opaque {
            let (lo, hi) = below(&dir);
            let hidden: Vec<String> = self
                .nodes
                .range(lo..hi)
                .map(|(k, _)| k.clone())
                .filter(|k| !added.contains(k))
                .collect();
            for k in hidden {
                self.nodes.remove(&k);
            }
        }
        Ok(())
    }

    /// Follow symlinks (and hard links) from `path` to a regular file's data.
    pub fn file_data(&self, path: &str) -> Option<&Data> {
        let mut p = normalise(path).ok()?;
        for _ in 0..MAX_SYMLINK_HOPS {
            p = self.resolve_parent(&p).ok()?;
            match &self.nodes.get(&p)?.kind {
                Kind::File(d) => return Some(d),
                Kind::Hardlink(t) => p = t.clone(),
                Kind::Symlink(t) if t.starts_with('/') => p = normalise(t).ok()?,
                Kind::Symlink(t) => {
                    let (dir, _) = parent_and_name(&p);
                    p = normalise(&format!("{dir}/{t}"))
                        .ok()
                        .or_else(|| normalise(t).ok())?;
                }
                _ => return None,
            }
        }
        None
    }

    /// Read a (small) file of the tree, following symlinks; `None` if absent.
    pub fn read_file(
        &self,
        store: &Store,
        path: &str,
        limit: u64,
    ) -> Result<Option<Vec<u8>>, TreeError> {
        let Some(d) = self.file_data(path) else {
            return Ok(None);
        };
        if d.len() > limit {
            return Err(io::Error::other(format!("{path} is larger than {limit} bytes")).into());
        }
        let mut v = Vec::with_capacity(d.len() as usize);
        BlobFiles::new(store).reader(d)?.read_to_end(&mut v)?;
        Ok(Some(v))
    }

    /// The first `n` bytes of a file (or fewer if it is shorter).
    pub fn read_head(&self, store: &Store, path: &str, n: u64) -> Result<Vec<u8>, TreeError> {
        let Some((_, r)) = self.open_file(store, path)? else {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("{path} is not in the image"),
            )
            .into());
        };
        let mut v = Vec::new();
        r.take(n).read_to_end(&mut v)?;
        Ok(v)
    }

    /// A reader over a file's bytes (for files too large to read whole), with
    /// where the bytes live.
    pub fn open_file(
        &self,
        store: &Store,
        path: &str,
    ) -> Result<Option<(Data, FileReader)>, TreeError> {
        let Some(d) = self.file_data(path).cloned() else {
            return Ok(None);
        };
        let r = BlobFiles::new(store).reader(&d)?;
        Ok(Some((d, r)))
    }

    /// A seekable reader over a file stored in a blob (a tar inside an image).
    pub fn open_range(store: &Store, d: &Data) -> Result<Option<RangeReader>, TreeError> {
        match d {
            Data::Blob {
                digest,
                offset,
                len,
            } => Ok(Some(RangeReader {
                file: Arc::new(store.open_blob(digest)?),
                start: *offset,
                pos: *offset,
                end: offset + len,
            })),
            Data::Inline(_) => Ok(None),
        }
    }

    /// A new tree holding only `paths` (and their parent directories).
    pub fn subset<'a>(&self, paths: impl IntoIterator<Item = &'a str>) -> Tree {
        let mut t = Tree::new();
        for p in paths {
            let mut cur = String::new();
            for c in p.split('/') {
                if !cur.is_empty() {
                    cur.push('/');
                }
                cur.push_str(c);
                if let Some(n) = self.nodes.get(&cur) {
                    t.nodes.insert(cur.clone(), n.clone());
                }
            }
        }
        t
    }

    /// Write the tree as newc entries under `prefix` (e.g. `containers/web/rootfs`,
    /// or "" for the root), inode numbers counting from `*ino`. Hard links share
    /// an inode; the data goes with the last name of the group, as GNU cpio writes it.
    pub fn write_newc<W: Write>(
        &self,
        prefix: &str,
        epoch: u64,
        store: &Store,
        w: &mut NewcWriter<W>,
        ino: &mut u32,
    ) -> Result<(), TreeError> {
        let full = |k: &str| {
            if prefix.is_empty() {
                k.to_string()
            } else {
                format!("{prefix}/{k}")
            }
        };
        if !prefix.is_empty() {
            let mut cur = String::new();
            for c in prefix.split('/') {
                if !cur.is_empty() {
                    cur.push('/');
                }
                cur.push_str(c);
                *ino += 1;
                let h = Header {
                    ino: *ino,
                    mode: cpio::mode::DIR | 0o755,
                    nlink: 2,
                    mtime: clamp32(epoch),
                    ..Default::default()
                };
                w.append(&cur, &h, &mut io::empty())?;
            }
        }
        // Hard-link groups: target path → (inode, last member in sort order).
        let mut groups: HashMap<&str, (u32, &str, u32)> = HashMap::new();
        for (k, n) in &self.nodes {
            if let Kind::Hardlink(t) = &n.kind {
                if !matches!(self.nodes.get(t).map(|n| &n.kind), Some(Kind::File(_))) {
                    return Err(io::Error::other(format!(
                        "hard link {k} points at {t}, which a later layer removed"
                    ))
                    .into());
                }
                let g = groups.entry(t.as_str()).or_insert((0, t.as_str(), 1));
                g.2 += 1;
                if k.as_str() > g.1 {
                    g.1 = k.as_str();
                }
            }
        }
        let mut files = BlobFiles::new(store);
        for (k, n) in &self.nodes {
            let (mut mode, mut size, mut data, mut rdev, mut nlink) =
                (n.mode, 0u64, None, (0, 0), 1u32);
            let group_key = match &n.kind {
                Kind::Hardlink(t) => Some(t.as_str()),
                Kind::File(_) if groups.contains_key(k.as_str()) => Some(k.as_str()),
                _ => None,
            };
            let this_ino = match group_key {
                Some(g) => {
                    let entry = groups.get_mut(g).expect("group exists");
                    if entry.0 == 0 {
                        *ino += 1;
                        entry.0 = *ino;
                    }
                    nlink = entry.2;
                    entry.0
                }
                None => {
                    *ino += 1;
                    *ino
                }
            };
            let mut link_target: Option<&[u8]> = None;
            match &n.kind {
                Kind::Dir => {
                    mode |= cpio::mode::DIR;
                    nlink = 2;
                }
                Kind::File(d) => {
                    mode |= cpio::mode::REG;
                    if group_key.is_none_or(|g| groups[g].1 == k.as_str()) {
                        size = d.len();
                        data = Some(d);
                    }
                }
                Kind::Hardlink(t) => {
                    mode = self.nodes[t].mode | cpio::mode::REG;
                    if groups[t.as_str()].1 == k.as_str()
                        && let Kind::File(d) = &self.nodes[t].kind
                    {
                        size = d.len();
                        data = Some(d);
                    }
                }
                Kind::Symlink(t) => {
                    mode = cpio::mode::LNK | 0o777;
                    size = t.len() as u64;
                    link_target = Some(t.as_bytes());
                }
                Kind::Char(a, b) => {
                    mode |= cpio::mode::CHR;
                    rdev = (*a, *b);
                }
                Kind::Block(a, b) => {
                    mode |= cpio::mode::BLK;
                    rdev = (*a, *b);
                }
                Kind::Fifo => mode |= cpio::mode::FIFO,
            }
            let h = Header {
                ino: this_ino,
                mode,
                uid: n.uid,
                gid: n.gid,
                nlink,
                mtime: clamp32(n.mtime),
                size: u32::try_from(size).map_err(|_| {
                    io::Error::other(format!("{k}: {size} bytes exceed newc's 4 GiB file limit"))
                })?,
                rdev_major: rdev.0,
                rdev_minor: rdev.1,
            };
            match (data, link_target) {
                (Some(d), _) => w.append(&full(k), &h, &mut files.reader(d)?)?,
                (None, Some(t)) => w.append(&full(k), &h, &mut &t[..])?,
                (None, None) => w.append(&full(k), &h, &mut io::empty())?,
            }
        }
        Ok(())
    }
}

/// Errors building an image's tree.
#[derive(Debug, thiserror::Error)]
pub enum ImageTreeError {
    /// The config's diff_ids do not match the manifest's layers.
    #[error("{reference}: the image config lists {diff_ids} diff_ids for {layers} layers")]
    DiffIds {
        /// The image.
        reference: String,
        /// Count in the config.
        diff_ids: usize,
        /// Count in the manifest.
        layers: usize,
    },
    /// A layer could not be inflated.
    #[error(transparent)]
    Layer(#[from] crate::layer::LayerError),
    /// A layer could not be applied.
    #[error(transparent)]
    Tree(#[from] TreeError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Apply every layer of a resolved image, base first.
pub fn image_tree(
    store: &Store,
    image: &crate::fetch::ResolvedImage,
    opts: ApplyOptions,
) -> Result<Tree, ImageTreeError> {
    let diff_ids = image
        .config
        .rootfs
        .as_ref()
        .map(|r| r.diff_ids.clone())
        .unwrap_or_default();
    if diff_ids.len() != image.image.layers.len() {
        return Err(ImageTreeError::DiffIds {
            reference: image.reference.to_string(),
            diff_ids: diff_ids.len(),
            layers: image.image.layers.len(),
        });
    }
    // Inflate every layer at once (they are independent), then apply in order.
    use rayon::prelude::*;
    let blobs: Vec<Digest> = image
        .image
        .layers
        .par_iter()
        .zip(diff_ids)
        .map(|(desc, diff_id)| crate::layer::uncompressed(store, desc, diff_id))
        .collect::<Result<_, _>>()?;
    let mut tree = Tree::new();
    for blob in blobs {
        let f = io::BufReader::with_capacity(1 << 20, store.open_blob(&blob)?);
        tree.apply_layer(blob, f, opts)?;
    }
    Ok(tree)
}

/// A reader over one file of a tree.
pub type FileReader = Box<dyn Read>;

fn clamp32(t: u64) -> u32 {
    u32::try_from(t).unwrap_or(u32::MAX)
}

/// Open store blobs once per serialisation and read ranges with pread.
struct BlobFiles<'a> {
    store: &'a Store,
    open: HashMap<Digest, Arc<File>>,
}

impl<'a> BlobFiles<'a> {
    fn new(store: &'a Store) -> Self {
        BlobFiles {
            store,
            open: HashMap::new(),
        }
    }

    fn reader(&mut self, d: &Data) -> Result<Box<dyn Read + 'static>, TreeError> {
        Ok(match d {
            Data::Inline(v) => Box::new(io::Cursor::new(v.clone().as_ref().clone())),
            Data::Blob {
                digest,
                offset,
                len,
            } => {
                let f = match self.open.get(digest) {
                    Some(f) => f.clone(),
                    None => {
                        let f = Arc::new(self.store.open_blob(digest)?);
                        self.open.insert(*digest, f.clone());
                        f
                    }
                };
                Box::new(RangeReader {
                    file: f,
                    start: *offset,
                    pos: *offset,
                    end: offset + len,
                })
            }
        })
    }
}

/// A byte range of a store blob, readable and seekable like a file of its own.
pub struct RangeReader {
    file: Arc<File>,
    start: u64,
    pos: u64,
    end: u64,
}

impl Seek for RangeReader {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let start = self.start;
        let target = match to {
            SeekFrom::Start(n) => start.checked_add(n),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
            SeekFrom::End(d) => self.end.checked_add_signed(d),
        }
        .filter(|t| *t >= start)
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "seek before the start of the file",
            )
        })?;
        self.pos = target;
        Ok(target - start)
    }
}

impl Read for RangeReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let want = self.end.saturating_sub(self.pos).min(buf.len() as u64) as usize;
        if want == 0 {
            return Ok(0);
        }
        let n = self.file.read_at(&mut buf[..want], self.pos)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "layer blob shorter than its tar header says",
            ));
        }
        self.pos += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests;
