//! `i2kit image pack`: a directory → a deterministic single-layer OCI image in
//! an `oci:` layout. This is how kernels, EFI stubs, the init and small test
//! containers become inputs like any other image (kernels/README.md).
//!
//! Determinism: entries sorted by path; every mtime is the given epoch; uid/gid
//! 0 with empty names; modes normalised to 0755 (directories, executables) or
//! 0644, so the host's umask and clock never reach the bytes; gzip level 6 with
//! a zero header mtime.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::digest::Digest;
use crate::oci::{self, Descriptor, Platform};
use crate::store::write_atomic;

/// Packing errors.
#[derive(Debug, thiserror::Error)]
pub enum PackError {
    /// File-system trouble.
    #[error("{path}: {source}")]
    Io {
        /// Where.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Something that cannot be packed.
    #[error("{0}")]
    Unsupported(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PackError + '_ {
    move |source| PackError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What to pack.
#[derive(Clone, Debug)]
pub struct PackOptions {
    /// The platform recorded in the image config.
    pub platform: Platform,
    /// mtime of every entry (SOURCE_DATE_EPOCH).
    pub epoch: u64,
    /// Image ENTRYPOINT.
    pub entrypoint: Option<Vec<String>>,
    /// Image CMD.
    pub cmd: Option<Vec<String>>,
    /// Image ENV (`K=V`).
    pub env: Vec<String>,
}

/// The packed image.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Packed {
    /// Manifest digest.
    pub manifest: Digest,
    /// Layer digest (compressed).
    pub layer: Digest,
    /// Uncompressed layer digest.
    pub diff_id: Digest,
}

fn collect(root: &Path, rel: &Path, out: &mut Vec<PathBuf>) -> Result<(), PackError> {
    let dir = root.join(rel);
    let mut names: Vec<_> = fs::read_dir(&dir)
        .map_err(io(&dir))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<_, _>>()
        .map_err(io(&dir))?;
    names.sort();
    for n in names {
        let r = rel.join(&n);
        out.push(r.clone());
        let meta = fs::symlink_metadata(root.join(&r)).map_err(io(&root.join(&r)))?;
        if meta.is_dir() {
            collect(root, &r, out)?;
        }
    }
    Ok(())
}

/// Build the uncompressed layer tar of `dir`.
pub fn layer_tar(dir: &Path, epoch: u64) -> Result<Vec<u8>, PackError> {
    let mut paths = Vec::new();
    collect(dir, Path::new(""), &mut paths)?;
    let mut b = tar::Builder::new(Vec::new());
    for rel in paths {
        let full = dir.join(&rel);
        let meta = fs::symlink_metadata(&full).map_err(io(&full))?;
        let mut h = tar::Header::new_gnu();
        h.set_mtime(epoch);
        h.set_uid(0);
        h.set_gid(0);
        let ft = meta.file_type();
        if ft.is_dir() {
            h.set_entry_type(tar::EntryType::Directory);
            h.set_mode(0o755);
            h.set_size(0);
            b.append_data(&mut h, &rel, std::io::empty())
                .map_err(io(&full))?;
        } else if ft.is_symlink() {
            let target = fs::read_link(&full).map_err(io(&full))?;
            h.set_entry_type(tar::EntryType::Symlink);
            h.set_mode(0o777);
            h.set_size(0);
            b.append_link(&mut h, &rel, &target).map_err(io(&full))?;
        } else if ft.is_file() {
            let exec = meta.permissions().mode() & 0o111 != 0;
            h.set_entry_type(tar::EntryType::Regular);
            h.set_mode(if exec { 0o755 } else { 0o644 });
            h.set_size(meta.len());
            let f = fs::File::open(&full).map_err(io(&full))?;
            b.append_data(&mut h, &rel, f).map_err(io(&full))?;
        } else {
            return Err(PackError::Unsupported(format!(
                "{}: only directories, regular files and symlinks can be packed",
                full.display()
            )));
        }
    }
    b.into_inner().map_err(io(dir))
}

/// Pack `dir` as image `name` into the OCI layout at `layout` (created if needed;
/// other entries are kept, an entry of the same name is replaced).
pub fn pack(
    dir: &Path,
    layout: &Path,
    name: &str,
    opts: &PackOptions,
) -> Result<Packed, PackError> {
    let tar = layer_tar(dir, opts.epoch)?;
    let diff_id = Digest::of(&tar);
    let mut gz = flate2::GzBuilder::new()
        .mtime(0)
        .write(Vec::new(), flate2::Compression::new(6));
    gz.write_all(&tar).map_err(io(dir))?;
    let gz = gz.finish().map_err(io(dir))?;
    let mut config = serde_json::json!({
        "architecture": opts.platform.architecture,
        "os": opts.platform.os,
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created": "1970-01-01T00:00:00Z", "created_by": "i2kit image pack"}],
    });
    if let Some(v) = &opts.platform.variant {
        config["variant"] = v.clone().into();
    }
    let c = &mut config["config"];
    if let Some(e) = &opts.entrypoint {
        c["Entrypoint"] = e.clone().into();
    }
    if let Some(e) = &opts.cmd {
        c["Cmd"] = e.clone().into();
    }
    if !opts.env.is_empty() {
        c["Env"] = opts.env.clone().into();
    }
    let config = serde_json::to_vec(&config).expect("config serialises");
    let blobs = layout.join("blobs/sha256");
    fs::create_dir_all(&blobs).map_err(io(&blobs))?;
    let put = |bytes: &[u8]| -> Result<Descriptor, PackError> {
        let d = Digest::of(bytes);
        write_atomic(&blobs, &blobs.join(d.hex()), bytes)
            .map_err(|e| PackError::Unsupported(e.to_string()))?;
        Ok(Descriptor::new("", d, bytes.len() as u64))
    };
    let layer = Descriptor {
        media_type: oci::OCI_LAYER_GZIP.into(),
        ..put(&gz)?
    };
    let config_desc = Descriptor {
        media_type: oci::OCI_CONFIG.into(),
        ..put(&config)?
    };
    let manifest = oci::Manifest {
        schema_version: 2,
        media_type: Some(oci::OCI_MANIFEST.into()),
        artifact_type: None,
        config: config_desc,
        layers: vec![layer.clone()],
        annotations: BTreeMap::new(),
    };
    let mbytes = serde_json::to_vec(&manifest).expect("manifest serialises");
    let mdesc = Descriptor {
        media_type: oci::OCI_MANIFEST.into(),
        platform: Some(opts.platform.clone()),
        ..put(&mbytes)?
    };
    write_atomic(
        layout,
        &layout.join("oci-layout"),
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .map_err(|e| PackError::Unsupported(e.to_string()))?;
    let index_path = layout.join("index.json");
    let mut index: oci::Index = match fs::read(&index_path) {
        Ok(b) => serde_json::from_slice(&b)
            .map_err(|e| PackError::Unsupported(format!("{}: {e}", index_path.display())))?,
        Err(_) => oci::Index {
            schema_version: 2,
            media_type: Some(oci::OCI_INDEX.into()),
            ..Default::default()
        },
    };
    index.manifests.retain(|d| {
        d.annotations
            .get(oci::ANNOTATION_REF_NAME)
            .map(String::as_str)
            != Some(name)
    });
    let mut entry = mdesc;
    entry
        .annotations
        .insert(oci::ANNOTATION_REF_NAME.into(), name.into());
    index.manifests.push(entry);
    index.manifests.sort_by(|a, b| {
        a.annotations
            .get(oci::ANNOTATION_REF_NAME)
            .cmp(&b.annotations.get(oci::ANNOTATION_REF_NAME))
    });
    let mut ib = serde_json::to_vec_pretty(&index).expect("index serialises");
    ib.push(b'\n');
    write_atomic(layout, &index_path, &ib).map_err(|e| PackError::Unsupported(e.to_string()))?;
    Ok(Packed {
        manifest: Digest::of(&mbytes),
        layer: layer.digest,
        diff_id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> PackOptions {
        PackOptions {
            platform: Platform::linux_amd64(),
            epoch: 0,
            entrypoint: None,
            cmd: Some(vec!["/bin/sh".into()]),
            env: vec![],
        }
    }

    #[test]
    fn pack_is_deterministic_and_ignores_host_modes_and_times() {
        let t = tempfile::tempdir().unwrap();
        let mk = |root: &Path, umask_mode: u32| {
            fs::create_dir_all(root.join("bin")).unwrap();
            fs::write(root.join("bin/tool"), b"#!/bin/sh\n").unwrap();
            fs::set_permissions(
                root.join("bin/tool"),
                fs::Permissions::from_mode(0o700 & umask_mode | 0o100),
            )
            .unwrap();
            fs::write(root.join("data"), b"x").unwrap();
            fs::set_permissions(
                root.join("data"),
                fs::Permissions::from_mode(umask_mode & 0o666),
            )
            .unwrap();
            std::os::unix::fs::symlink("bin/tool", root.join("link")).unwrap();
        };
        mk(&t.path().join("a"), 0o777);
        std::thread::sleep(std::time::Duration::from_millis(20));
        mk(&t.path().join("b"), 0o750);
        let pa = pack(&t.path().join("a"), &t.path().join("la"), "x", &opts()).unwrap();
        let pb = pack(&t.path().join("b"), &t.path().join("lb"), "x", &opts()).unwrap();
        assert_eq!(pa.manifest, pb.manifest);
        assert_eq!(
            fs::read(t.path().join("la/index.json")).unwrap(),
            fs::read(t.path().join("lb/index.json")).unwrap()
        );
        // Entries are sorted and carry the normalised modes.
        let tar = layer_tar(&t.path().join("a"), 0).unwrap();
        let mut ar = tar::Archive::new(&tar[..]);
        let got: Vec<(String, u32)> = ar
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    e.path().unwrap().display().to_string(),
                    e.header().mode().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                ("bin".into(), 0o755),
                ("bin/tool".into(), 0o755),
                ("data".into(), 0o644),
                ("link".into(), 0o777)
            ]
        );
    }
}
