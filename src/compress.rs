//! Deterministic compression of initramfs segments, parallel where the format
//! allows it without the output depending on the thread count
//! (ARCHITECTURE.md, reproducibility rule 5):
//!
//! - **zstd**: libzstd's multithreaded mode with a *fixed* worker count ≥ 1.
//!   In that mode the frame is cut into jobs of a size derived from the level
//!   and window, not from the worker count, so 1 or 16 workers give the same
//!   bytes (the single-threaded mode, workers = 0, gives different ones and is
//!   never used).
//! - **gzip**: one gzip member whose deflate stream is built from fixed 1 MiB
//!   chunks compressed independently (each ends with a sync flush, the last with
//!   BFINAL), concatenated, with CRC-32s combined — the technique of pigz, but
//!   without a dictionary carried between chunks so chunks compress in any
//!   order. `gzp` is not used: its output varies run to run.
//! - **none**: the cpio bytes as they are.

use std::io::{self, Write};

use rayon::prelude::*;

/// How a segment is compressed; part of the build key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase", tag = "algorithm")]
pub enum Compression {
    /// Uncompressed cpio.
    None,
    /// gzip at a level 1-9 (kernels without zstd initramfs support, < 5.9).
    Gzip {
        /// 1-9.
        level: u32,
    },
    /// zstd at a level 1-19.
    Zstd {
        /// 1-19.
        level: i32,
    },
}

impl Default for Compression {
    fn default() -> Self {
        Compression::Zstd { level: 3 }
    }
}

/// The gzip chunk size: large enough that chunk boundaries cost < 0.1 % of
/// ratio, small enough that a 64 MiB segment has work for every core.
pub const GZIP_CHUNK: usize = 1 << 20;

/// Workers for zstd: fixed, so the frame layout never depends on the machine.
const ZSTD_WORKERS: u32 = 2;

impl Compression {
    /// Parse `none`, `gzip`, `zstd` with an optional level.
    pub fn from_parts(algorithm: &str, level: Option<i32>) -> Result<Compression, String> {
        match algorithm {
            "none" => Ok(Compression::None),
            "gzip" => {
                let l = level.unwrap_or(6);
                if (1..=9).contains(&l) {
                    Ok(Compression::Gzip { level: l as u32 })
                } else {
                    Err(format!("gzip level {l} is not in 1-9"))
                }
            }
            "zstd" => {
                let l = level.unwrap_or(3);
                if (1..=19).contains(&l) {
                    Ok(Compression::Zstd { level: l })
                } else {
                    Err(format!("zstd level {l} is not in 1-19"))
                }
            }
            other => Err(format!(
                "unknown compression {other:?}: use none, gzip or zstd"
            )),
        }
    }

    /// Compress `data` completely.
    pub fn compress(&self, data: &[u8]) -> io::Result<Vec<u8>> {
        match *self {
            Compression::None => Ok(data.to_vec()),
            Compression::Gzip { level } => Ok(gzip_chunked(data, level)),
            Compression::Zstd { .. } => {
                let mut enc = Compressor::new(Vec::with_capacity(data.len() / 3), *self)?;
                enc.write_all(data)?;
                enc.finish()
            }
        }
    }
}

/// gzip (RFC 1952) of `data` built from independently deflated chunks.
pub fn gzip_chunked(data: &[u8], level: u32) -> Vec<u8> {
    let mut w = GzipChunked::new(Vec::new(), level);
    w.write_all(data).expect("writing to a Vec does not fail");
    w.finish().expect("writing to a Vec does not fail")
}

/// Chunks compressed per parallel batch: bounds memory to ~8 MiB per stream.
const BATCH_CHUNKS: usize = 8;

/// Deflate one chunk on its own; `last` ends the deflate stream (BFINAL),
/// otherwise a sync flush byte-aligns it so the next chunk can follow.
fn deflate_chunk(chunk: &[u8], level: u32, last: bool) -> Vec<u8> {
    use flate2::{Compress, FlushCompress, Status};
    let mut c = Compress::new(flate2::Compression::new(level), false);
    let mut out = Vec::with_capacity(chunk.len() / 2 + 64);
    let flush = if last {
        FlushCompress::Finish
    } else {
        FlushCompress::Sync
    };
    loop {
        out.reserve(64 * 1024);
        let consumed = c.total_in() as usize;
        let status = c
            .compress_vec(&chunk[consumed..], &mut out, flush)
            .expect("deflate of in-memory data does not fail");
        let all_in = c.total_in() as usize == chunk.len();
        match status {
            Status::StreamEnd => break,
            _ if !last && all_in && out.len() < out.capacity() => break,
            _ => {}
        }
    }
    out
}

/// A streaming writer producing exactly [`gzip_chunked`]'s bytes: chunk
/// boundaries are fixed multiples of [`GZIP_CHUNK`] from the start, and the
/// last non-empty chunk carries BFINAL, however the input is split into writes.
pub struct GzipChunked<W: Write> {
    out: W,
    level: u32,
    buf: Vec<u8>,
    crc: crc32fast::Hasher,
    len: u64,
    header: bool,
}

impl<W: Write> GzipChunked<W> {
    /// Start a gzip stream.
    pub fn new(out: W, level: u32) -> Self {
        GzipChunked {
            out,
            level,
            buf: Vec::with_capacity(BATCH_CHUNKS * GZIP_CHUNK + (64 << 10)),
            crc: crc32fast::Hasher::new(),
            len: 0,
            header: false,
        }
    }

    fn emit(&mut self, data_end: usize, last: bool) -> io::Result<()> {
        if !self.header {
            // Magic, CM=deflate, no flags, MTIME=0, XFL=0, OS=255: no host facts.
            self.out
                .write_all(&[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255])?;
            self.header = true;
        }
        let data = &self.buf[..data_end];
        let chunks: Vec<&[u8]> = if data.is_empty() {
            vec![data]
        } else {
            data.chunks(GZIP_CHUNK).collect()
        };
        let n = chunks.len();
        let level = self.level;
        let parts: Vec<Vec<u8>> = chunks
            .par_iter()
            .enumerate()
            .map(|(i, c)| deflate_chunk(c, level, last && i == n - 1))
            .collect();
        for p in parts {
            self.out.write_all(&p)?;
        }
        self.buf.drain(..data_end);
        Ok(())
    }

    /// Write the last chunk and the trailer; returns the inner writer.
    pub fn finish(mut self) -> io::Result<W> {
        let end = self.buf.len();
        self.emit(end, true)?;
        let crc = self.crc.clone().finalize();
        self.out.write_all(&crc.to_le_bytes())?;
        // ISIZE is the length modulo 2^32 (RFC 1952 §2.3.1).
        self.out.write_all(&(self.len as u32).to_le_bytes())?;
        Ok(self.out)
    }
}

impl<W: Write> Write for GzipChunked<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        self.crc.update(data);
        self.len += data.len() as u64;
        // Strictly more than a batch: the bytes kept back are never the end of
        // the input, so only `finish` sets BFINAL.
        let batch = BATCH_CHUNKS * GZIP_CHUNK;
        while self.buf.len() > batch {
            self.emit(batch, false)?;
        }
        Ok(data.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// A streaming compressor for one segment.
pub enum Compressor<W: Write> {
    /// Pass-through.
    None(W),
    /// gzip in fixed chunks.
    Gzip(GzipChunked<W>),
    /// zstd, multithreaded with fixed workers.
    Zstd(zstd::stream::write::Encoder<'static, W>),
}

impl<W: Write> Compressor<W> {
    /// Wrap `out`.
    pub fn new(out: W, c: Compression) -> io::Result<Self> {
        Ok(match c {
            Compression::None => Compressor::None(out),
            Compression::Gzip { level } => Compressor::Gzip(GzipChunked::new(out, level)),
            Compression::Zstd { level } => {
                let mut enc = zstd::stream::write::Encoder::new(out, level)?;
                enc.multithread(ZSTD_WORKERS)?;
                enc.include_checksum(true)?;
                enc.include_contentsize(false)?;
                Compressor::Zstd(enc)
            }
        })
    }

    /// End the stream; returns the inner writer.
    pub fn finish(self) -> io::Result<W> {
        match self {
            Compressor::None(w) => Ok(w),
            Compressor::Gzip(g) => g.finish(),
            Compressor::Zstd(z) => z.finish(),
        }
    }
}

impl<W: Write> Write for Compressor<W> {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        match self {
            Compressor::None(w) => w.write(b),
            Compressor::Gzip(g) => g.write(b),
            Compressor::Zstd(z) => z.write(b),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Compressor::None(w) => w.flush(),
            Compressor::Gzip(g) => g.flush(),
            Compressor::Zstd(z) => z.flush(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn sample(n: usize) -> Vec<u8> {
        (0..n).map(|i| ((i * 7 + i / 1000) % 251) as u8).collect()
    }

    #[test]
    fn gzip_round_trips_and_is_thread_count_independent() {
        let data = sample(3 * GZIP_CHUNK + 12345);
        let one = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap()
            .install(|| gzip_chunked(&data, 6));
        let four = rayon::ThreadPoolBuilder::new()
            .num_threads(4)
            .build()
            .unwrap()
            .install(|| gzip_chunked(&data, 6));
        assert_eq!(one, four);
        let mut back = Vec::new();
        flate2::read::GzDecoder::new(&one[..])
            .read_to_end(&mut back)
            .unwrap();
        assert_eq!(back, data);
        // GNU gzip agrees (it checks CRC and length).
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.gz");
        std::fs::write(&p, &one).unwrap();
        let st = std::process::Command::new("gzip")
            .arg("-t")
            .arg(&p)
            .status()
            .unwrap();
        assert!(st.success());
        for tiny in [&b""[..], b"a"] {
            let mut back = Vec::new();
            flate2::read::GzDecoder::new(&gzip_chunked(tiny, 6)[..])
                .read_to_end(&mut back)
                .unwrap();
            assert_eq!(back, tiny);
        }
    }

    #[test]
    fn streaming_gzip_matches_one_shot_for_any_write_pattern() {
        let data = sample(BATCH_CHUNKS * GZIP_CHUNK * 2 + 3);
        let whole = gzip_chunked(&data, 6);
        for step in [1usize << 13, 999_983, BATCH_CHUNKS * GZIP_CHUNK] {
            let mut w = GzipChunked::new(Vec::new(), 6);
            for c in data.chunks(step) {
                w.write_all(c).unwrap();
            }
            assert_eq!(w.finish().unwrap(), whole, "writes of {step}");
        }
        let exact = sample(BATCH_CHUNKS * GZIP_CHUNK);
        let mut back = Vec::new();
        flate2::read::GzDecoder::new(&gzip_chunked(&exact, 1)[..])
            .read_to_end(&mut back)
            .unwrap();
        assert_eq!(back, exact);
    }

    #[test]
    fn zstd_round_trips_and_is_stable() {
        let data = sample(5 << 20);
        let c = Compression::Zstd { level: 3 };
        let a = c.compress(&data).unwrap();
        let b = c.compress(&data).unwrap();
        assert_eq!(a, b);
        assert_eq!(zstd::decode_all(&a[..]).unwrap(), data);
    }

    #[test]
    fn levels_are_validated() {
        assert!(Compression::from_parts("gzip", Some(10)).is_err());
        assert!(Compression::from_parts("zstd", Some(0)).is_err());
        assert!(Compression::from_parts("lz4", None).is_err());
        assert_eq!(
            Compression::from_parts("zstd", None).unwrap(),
            Compression::Zstd { level: 3 }
        );
    }
}
