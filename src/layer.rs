//! Layer blobs → uncompressed tars in the store. A compressed layer is
//! decompressed once into a store blob named by its diff_id (the digest of the
//! uncompressed tar, listed in the image config), which is verified while it is
//! written; the tree then references byte ranges of that blob. Decompression is
//! bounded: more output than `limit` bytes is refused (a decompression bomb).

use std::io::{self, Read};

use crate::digest::Digest;
use crate::oci::{self, Descriptor};
use crate::store::{Store, StoreError};

/// Refuse to inflate one layer beyond this many bytes (64 GiB).
pub const MAX_UNCOMPRESSED: u64 = 64 << 30;

/// Layer errors.
#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    /// A media type i2kit cannot read.
    #[error(
        "layer {digest} has unsupported media type {media_type:?} (supported: tar, tar+gzip, tar+zstd)"
    )]
    MediaType {
        /// The layer.
        digest: Digest,
        /// Its media type.
        media_type: String,
    },
    /// Decompression failed.
    #[error("layer {digest}: cannot decompress: {source}")]
    Decompress {
        /// The layer.
        digest: Digest,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// The store failed (includes a diff_id mismatch).
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// How a layer blob is compressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    /// Plain tar.
    None,
    /// gzip.
    Gzip,
    /// zstd.
    Zstd,
}

/// The compression a layer's media type names.
pub fn compression_of(desc: &Descriptor) -> Result<Compression, LayerError> {
    match desc.media_type.as_str() {
        oci::OCI_LAYER_TAR | "application/vnd.docker.image.rootfs.diff.tar" => {
            Ok(Compression::None)
        }
        oci::OCI_LAYER_GZIP | oci::DOCKER_LAYER_GZIP => Ok(Compression::Gzip),
        oci::OCI_LAYER_ZSTD | "application/vnd.docker.image.rootfs.diff.tar.zstd" => {
            Ok(Compression::Zstd)
        }
        other => Err(LayerError::MediaType {
            digest: desc.digest,
            media_type: other.to_string(),
        }),
    }
}

/// The store blob holding `desc`'s uncompressed tar, creating it if needed;
/// its digest is `diff_id` (verified).
pub fn uncompressed(
    store: &Store,
    desc: &Descriptor,
    diff_id: Digest,
) -> Result<Digest, LayerError> {
    let c = compression_of(desc)?;
    if c == Compression::None {
        if desc.digest != diff_id {
            return Err(StoreError::DigestMismatch {
                what: format!(
                    "uncompressed layer {} (its diff_id in the image config)",
                    desc.digest
                ),
                expected: diff_id,
                actual: desc.digest,
                size: desc.size,
            }
            .into());
        }
        return Ok(desc.digest);
    }
    if store.has_blob(&diff_id, None) {
        return Ok(diff_id);
    }
    let file = io::BufReader::with_capacity(1 << 20, store.open_blob(&desc.digest)?);
    let dec_err = |source| LayerError::Decompress {
        digest: desc.digest,
        source,
    };
    let mut reader: Box<dyn Read> = match c {
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(file)),
        Compression::Zstd => {
            Box::new(zstd::stream::read::Decoder::with_buffer(file).map_err(dec_err)?)
        }
        Compression::None => unreachable!("handled above"),
    };
    let what = format!("uncompressed layer {} (diff_id)", desc.digest);
    let mut w = store.blob_writer(&what, diff_id, None)?;
    let n = crate::digest::copy_large(&mut (&mut reader).take(MAX_UNCOMPRESSED + 1), &mut w)
        .map_err(dec_err)?;
    if n > MAX_UNCOMPRESSED {
        return Err(dec_err(io::Error::other(format!(
            "inflates beyond {MAX_UNCOMPRESSED} bytes"
        ))));
    }
    Ok(w.commit()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn gzip_and_zstd_layers_inflate_to_their_diff_id() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let tar = b"pretend this is a tar".repeat(100);
        let diff_id = Digest::of(&tar);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&tar).unwrap();
        let gz = gz.finish().unwrap();
        let zs = zstd::encode_all(&tar[..], 3).unwrap();
        for (bytes, media) in [(gz, oci::OCI_LAYER_GZIP), (zs, oci::OCI_LAYER_ZSTD)] {
            let _ = std::fs::remove_file(store.blob_path(&diff_id));
            let d = store.put_bytes("l", &bytes, None).unwrap();
            let desc = Descriptor::new(media, d, bytes.len() as u64);
            assert_eq!(uncompressed(&store, &desc, diff_id).unwrap(), diff_id);
            assert_eq!(store.read_blob(&diff_id).unwrap(), tar);
            // A config that lies about the diff_id is caught.
            let _ = std::fs::remove_file(store.blob_path(&diff_id));
            let e = uncompressed(&store, &desc, Digest::of(b"other")).unwrap_err();
            assert!(e.to_string().contains("digest mismatch"), "{e}");
        }
        let odd = Descriptor::new("application/x-rar", Digest::of(b"r"), 1);
        assert!(matches!(
            uncompressed(&store, &odd, diff_id),
            Err(LayerError::MediaType { .. })
        ));
    }
}
