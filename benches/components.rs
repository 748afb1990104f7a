//! Component benchmarks (divan): the per-byte work of the pull stage — hashing
//! while streaming into the store — and reference parsing.
//! Run: cargo bench --bench components

use std::io::Write;

use i2kit::digest::Digest;
use i2kit::store::Store;

fn main() {
    divan::main();
}

const MIB: usize = 1 << 20;

fn data(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761) as u8)
        .collect()
}

#[divan::bench(args = [MIB, 16 * MIB])]
fn sha256(bencher: divan::Bencher, len: usize) {
    let d = data(len);
    bencher
        .counter(divan::counter::BytesCount::new(len))
        .bench(|| Digest::of(divan::black_box(&d)));
}

/// Stream a blob into the store in 64 KiB chunks (what a registry download does).
#[divan::bench(args = [16 * MIB])]
fn store_blob_writer(bencher: divan::Bencher, len: usize) {
    let d = data(len);
    let digest = Digest::of(&d);
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    bencher
        .counter(divan::counter::BytesCount::new(len))
        .bench(|| {
            let _ = std::fs::remove_file(store.blob_path(&digest));
            let mut w = store
                .blob_writer("bench", digest, Some(len as u64))
                .unwrap();
            for c in d.chunks(64 << 10) {
                w.write_all(c).unwrap();
            }
            w.commit().unwrap()
        });
}

#[divan::bench]
fn parse_reference() -> i2kit::reference::ImageRef {
    divan::black_box("registry.example.com:5000/team/app/web:v1.2.3@sha256:0000000000000000000000000000000000000000000000000000000000000001")
        .parse()
        .unwrap()
}
