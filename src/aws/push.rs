//! `i2kit push aws`: a raw disk image → an EBS snapshot written block by
//! block through the EBS direct APIs → a UEFI AMI. No S3 bucket, no
//! vmimport role. Blocks are read with `pread` by a pool of workers, so the
//! image is streamed, never loaded; holes (SEEK_DATA/SEEK_HOLE) and all-zero
//! blocks are skipped unless the snapshot is encrypted.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use sha2::{Digest as _, Sha256};

use super::client::{AwsError, Client};
use super::ebs::{self, BLOCK_SIZE};
use super::ec2;
use crate::digest::Digest;

const GIB: u64 = 1 << 30;
/// Tag carrying the image's sha256: how a second push finds the first AMI.
pub const TAG_IMAGE: &str = "i2kit:image-sha256";
/// Tag carrying the build key.
pub const TAG_BUILD_KEY: &str = "i2kit:build-key";

/// What to push and how.
#[derive(Clone, Debug)]
pub struct PushOptions {
    /// The raw disk image.
    pub image: PathBuf,
    /// Its sha256.
    pub digest: Digest,
    /// AMI name.
    pub name: String,
    /// AMI description.
    pub description: String,
    /// `x86_64` or `arm64`.
    pub architecture: String,
    /// `uefi` or `uefi-preferred`.
    pub boot_mode: String,
    /// Snapshot size, GiB (default: the image rounded up).
    pub volume_size_gib: Option<u64>,
    /// Root volume size, GiB (default: the snapshot's).
    pub root_volume_gib: Option<u64>,
    /// NitroTPM.
    pub tpm: bool,
    /// Encrypt with this KMS key.
    pub kms_key: Option<String>,
    /// Concurrent block uploads.
    pub jobs: usize,
    /// Extra tags (AMI and snapshot).
    pub tags: Vec<(String, String)>,
    /// Keep the snapshot when the upload fails.
    pub keep_on_failure: bool,
    /// The build key, when known (from the provenance).
    pub build_key: Option<String>,
    /// How long to wait for the snapshot to complete.
    pub wait: Duration,
}

/// The result, as `--json` prints it.
#[derive(Clone, Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PushReport {
    /// The AMI.
    pub image_id: String,
    /// Its root snapshot (None when an existing AMI was found).
    pub snapshot_id: Option<String>,
    /// An AMI for this image digest already existed; nothing was uploaded.
    pub existing: bool,
    /// Region.
    pub region: String,
    /// AMI name.
    pub name: String,
    /// The image's sha256.
    pub image_sha256: String,
    /// Image size in bytes.
    pub image_size: u64,
    /// Snapshot size, GiB.
    pub volume_size_gib: u64,
    /// Blocks of the volume.
    pub blocks_total: u64,
    /// Blocks written.
    pub blocks_written: u64,
    /// Bytes written (blocks × 512 KiB).
    pub bytes_written: u64,
    /// Upload seconds (StartSnapshot to CompleteSnapshot).
    pub upload_seconds: f64,
}

/// Why a push failed.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    /// Reading the image.
    #[error("{path}: {source}")]
    Io {
        /// File.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Bad options.
    #[error("{0}")]
    Invalid(String),
    /// An AWS call failed.
    #[error(transparent)]
    Aws(#[from] AwsError),
    /// Block uploads failed; the snapshot was deleted or kept.
    #[error(
        "{failed} block(s) could not be written (first: {first_blocks}): {cause}; snapshot {snapshot} {fate}"
    )]
    Blocks {
        /// How many.
        failed: usize,
        /// The first few indexes.
        first_blocks: String,
        /// The first error.
        cause: String,
        /// Snapshot id.
        snapshot: String,
        /// "was deleted" / "was kept (--keep-on-failure)".
        fate: String,
    },
    /// The snapshot ended in error or took too long.
    #[error("snapshot {snapshot}: {detail}")]
    Snapshot {
        /// Snapshot id.
        snapshot: String,
        /// What happened.
        detail: String,
    },
}

/// Block indexes that may hold data: those meeting a SEEK_DATA range; every
/// block when the filesystem cannot say.
pub fn data_blocks(f: &File, size: u64) -> Vec<u64> {
    let total = size.div_ceil(BLOCK_SIZE);
    let fd = f.as_raw_fd();
    let mut out = Vec::new();
    let mut pos: i64 = 0;
    loop {
        // SAFETY: lseek on a descriptor we own; no memory is passed.
        let data = unsafe { libc::lseek(fd, pos, libc::SEEK_DATA) };
        if data < 0 {
            let e = std::io::Error::last_os_error().raw_os_error();
            if e == Some(libc::ENXIO) {
                return out; // no data after pos
            }
            return (0..total).collect(); // SEEK_DATA unsupported
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(fd, data, libc::SEEK_HOLE) };
        let hole = if hole < 0 { size as i64 } else { hole };
        let first = data as u64 / BLOCK_SIZE;
        let last = (hole as u64).div_ceil(BLOCK_SIZE);
        for b in first..last.min(total) {
            if out.last() != Some(&b) {
                out.push(b);
            }
        }
        if hole as u64 >= size {
            return out;
        }
        pos = hole;
    }
}

/// Counters for a progress display.
#[derive(Debug, Default)]
pub struct Progress {
    /// Blocks to look at.
    pub blocks: AtomicU64,
    /// Blocks handled (written or skipped).
    pub done: AtomicU64,
    /// Bytes written.
    pub written: AtomicU64,
}

fn aggregate(mut sums: Vec<(u64, [u8; 32])>) -> [u8; 32] {
    sums.sort_by_key(|(i, _)| *i);
    let mut h = Sha256::new();
    for (_, s) in &sums {
        h.update(s);
    }
    h.finalize().into()
}

/// The idempotency token of StartSnapshot: the same image, size and key give
/// the same token, so a retried StartSnapshot returns the same snapshot.
pub fn client_token(digest: &Digest, volume_gib: u64, kms: Option<&str>) -> String {
    let mut h = Sha256::new();
    h.update(digest.to_string().as_bytes());
    h.update(volume_gib.to_le_bytes());
    h.update(kms.unwrap_or("").as_bytes());
    format!("i2kit-{}", &hex::encode(h.finalize())[..48])
}

/// Upload and register. `progress` is updated as blocks go.
pub fn push(
    c: &Client,
    o: &PushOptions,
    progress: &Progress,
    cancel: &AtomicBool,
) -> Result<PushReport, PushError> {
    let io = |source| PushError::Io {
        path: o.image.clone(),
        source,
    };
    let file = File::open(&o.image).map_err(io)?;
    let size = file.metadata().map_err(io)?.len();
    if size == 0 {
        return Err(PushError::Invalid(format!(
            "{} is empty",
            o.image.display()
        )));
    }
    let min_gib = size.div_ceil(GIB);
    let volume = o.volume_size_gib.unwrap_or(min_gib);
    if volume < min_gib {
        return Err(PushError::Invalid(format!(
            "--volume-size {volume} GiB is smaller than the image ({size} bytes needs {min_gib} GiB)"
        )));
    }
    let root = o.root_volume_gib.unwrap_or(volume);
    if root < volume {
        return Err(PushError::Invalid(format!(
            "--root-volume-size {root} GiB is smaller than the snapshot ({volume} GiB)"
        )));
    }
    let digest_hex = o.digest.hex();
    let mut report = PushReport {
        image_id: String::new(),
        snapshot_id: None,
        existing: false,
        region: c.region().into(),
        name: o.name.clone(),
        image_sha256: digest_hex.clone(),
        image_size: size,
        volume_size_gib: volume,
        blocks_total: size.div_ceil(BLOCK_SIZE),
        blocks_written: 0,
        bytes_written: 0,
        upload_seconds: 0.0,
    };
    if let Some(ami) = ec2::images_tagged(c, TAG_IMAGE, &digest_hex, cancel)?
        .into_iter()
        .next()
    {
        report.image_id = ami;
        report.existing = true;
        return Ok(report);
    }
    let mut tags = vec![
        ("Name".to_string(), o.name.clone()),
        (TAG_IMAGE.to_string(), digest_hex.clone()),
    ];
    if let Some(k) = &o.build_key {
        tags.push((TAG_BUILD_KEY.to_string(), k.clone()));
    }
    tags.extend(o.tags.iter().cloned());
    let started = Instant::now();
    let snapshot = ebs::start_snapshot(
        c,
        &ebs::StartSnapshot {
            volume_size_gib: volume,
            tags: tags.clone(),
            client_token: client_token(&o.digest, volume, o.kms_key.as_deref()),
            description: o.description.clone(),
            kms_key: o.kms_key.clone(),
        },
        cancel,
    )?;
    report.snapshot_id = Some(snapshot.clone());
    // Delete (or keep) the snapshot of a failed push; says which.
    let discard = || -> String {
        if o.keep_on_failure {
            return "was kept (--keep-on-failure)".into();
        }
        let never = AtomicBool::new(false);
        match ec2::delete_snapshot(c, &snapshot, &never) {
            Ok(()) => "was deleted".into(),
            Err(e) => format!("could not be deleted: {e}"),
        }
    };
    let cleanup = |why: String| -> PushError {
        PushError::Snapshot {
            snapshot: snapshot.clone(),
            detail: format!("{why}; the snapshot {}", discard()),
        }
    };
    // An encrypted snapshot starts from nothing: every block must be written.
    let candidates = if o.kms_key.is_some() {
        (0..report.blocks_total).collect()
    } else {
        data_blocks(&file, size)
    };
    progress
        .blocks
        .store(candidates.len() as u64, Ordering::Relaxed);
    let next = AtomicUsize::new(0);
    let sums: Mutex<Vec<(u64, [u8; 32])>> = Mutex::new(Vec::new());
    let failures: Mutex<Vec<(u64, String)>> = Mutex::new(Vec::new());
    let stop = AtomicBool::new(false);
    let jobs = o.jobs.clamp(1, 1024).min(candidates.len().max(1));
    std::thread::scope(|s| {
        for _ in 0..jobs {
            s.spawn(|| {
                let mut buf = vec![0u8; BLOCK_SIZE as usize];
                loop {
                    if stop.load(Ordering::Relaxed) || cancel.load(Ordering::Relaxed) {
                        return;
                    }
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(&block) = candidates.get(i) else {
                        return;
                    };
                    let offset = block * BLOCK_SIZE;
                    let len = (size - offset).min(BLOCK_SIZE) as usize;
                    buf[len..].fill(0);
                    if let Err(e) = file.read_exact_at(&mut buf[..len], offset) {
                        failures
                            .lock()
                            .expect("lock")
                            .push((block, format!("reading: {e}")));
                        stop.store(true, Ordering::Relaxed);
                        return;
                    }
                    if o.kms_key.is_none() && is_zero(&buf) {
                        progress.done.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    let sum: [u8; 32] = Sha256::digest(&buf).into();
                    match ebs::put_block(c, &snapshot, block, &buf, &sum, cancel) {
                        Ok(()) => {
                            sums.lock().expect("lock").push((block, sum));
                            progress.done.fetch_add(1, Ordering::Relaxed);
                            progress.written.fetch_add(BLOCK_SIZE, Ordering::Relaxed);
                        }
                        Err(e) => {
                            failures.lock().expect("lock").push((block, e.to_string()));
                            stop.store(true, Ordering::Relaxed);
                            return;
                        }
                    }
                }
            });
        }
    });
    let mut failed = failures.into_inner().expect("lock");
    if cancel.load(Ordering::Relaxed) {
        return Err(cleanup("interrupted".into()));
    }
    if !failed.is_empty() {
        failed.sort_by_key(|(b, _)| *b);
        let fate = discard();
        return Err(PushError::Blocks {
            failed: failed.len(),
            first_blocks: failed
                .iter()
                .take(8)
                .map(|(b, _)| b.to_string())
                .collect::<Vec<_>>()
                .join(", "),
            cause: failed[0].1.clone(),
            snapshot: snapshot.clone(),
            fate,
        });
    }
    let sums = sums.into_inner().expect("lock");
    report.blocks_written = sums.len() as u64;
    report.bytes_written = report.blocks_written * BLOCK_SIZE;
    if let Err(e) = ebs::complete(
        c,
        &snapshot,
        report.blocks_written,
        &aggregate(sums),
        cancel,
    ) {
        return Err(cleanup(format!("CompleteSnapshot failed: {e}")));
    }
    report.upload_seconds = started.elapsed().as_secs_f64();
    // Wait for `completed`: RegisterImage refuses a pending snapshot.
    let deadline = Instant::now() + o.wait;
    let mut pause = Duration::from_millis(500);
    loop {
        match ec2::snapshot_state(c, &snapshot, cancel) {
            Ok(Some(s)) if s == "completed" => break,
            Ok(Some(s)) if s == "error" => {
                return Err(cleanup("EBS reports the snapshot in state error".into()));
            }
            Ok(_) => {}
            Err(AwsError::Interrupted) => return Err(cleanup("interrupted".into())),
            Err(e) => return Err(cleanup(format!("DescribeSnapshots: {e}"))),
        }
        if Instant::now() > deadline {
            return Err(cleanup(format!("not completed after {:?}", o.wait)));
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_secs(10));
    }
    let ami = ec2::register_image(
        c,
        &ec2::Register {
            name: o.name.clone(),
            description: o.description.clone(),
            architecture: o.architecture.clone(),
            boot_mode: o.boot_mode.clone(),
            snapshot: snapshot.clone(),
            root_volume_gib: root,
            tpm: o.tpm,
            tags: tags.clone(),
        },
        cancel,
    )
    .map_err(|e| cleanup(format!("RegisterImage failed: {e}")))?;
    // Tag again with CreateTags: the idempotency of the next push rests on
    // the i2kit:image-sha256 tag, and some EC2-compatible APIs ignore
    // RegisterImage's TagSpecification. The AMI exists now: a failure here
    // is reported, the snapshot is kept (the AMI uses it).
    ec2::create_tags(c, &ami, &tags, cancel).map_err(|e| PushError::Snapshot {
        snapshot: snapshot.clone(),
        detail: format!("AMI {ami} was registered but could not be tagged: {e}; tag it {TAG_IMAGE}={digest_hex} by hand or deregister it"),
    })?;
    report.image_id = ami;
    Ok(report)
}

fn is_zero(b: &[u8]) -> bool {
    let (head, words, tail) = {
        // SAFETY: u64 has no invalid bit patterns; align_to handles alignment.
        unsafe { b.align_to::<u64>() }
    };
    head.iter().all(|x| *x == 0) && words.iter().all(|x| *x == 0) && tail.iter().all(|x| *x == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparse_files_list_only_their_data_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("img");
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&p)
            .unwrap();
        let bs = BLOCK_SIZE;
        f.set_len(20 * bs + 100).unwrap();
        f.write_all_at(b"x", 3 * bs + 7).unwrap();
        f.write_all_at(&vec![1u8; bs as usize], 10 * bs).unwrap();
        f.write_all_at(b"end", 20 * bs + 50).unwrap();
        let blocks = data_blocks(&f, 20 * bs + 100);
        // Filesystems allocate in pages: the data blocks are always listed, and
        // a sparse-capable filesystem lists little else.
        for b in [3, 10, 20] {
            assert!(blocks.contains(&b), "{blocks:?}");
        }
        assert!(blocks.windows(2).all(|w| w[0] < w[1]), "{blocks:?}");
        assert!(blocks.len() <= 21);
    }

    #[test]
    fn aggregate_is_linear_in_block_order() {
        let a = [1u8; 32];
        let b = [2u8; 32];
        let mut h = Sha256::new();
        h.update(a);
        h.update(b);
        let want: [u8; 32] = h.finalize().into();
        assert_eq!(aggregate(vec![(9, b), (2, a)]), want);
    }

    #[test]
    fn zero_check_and_tokens() {
        let mut v = vec![0u8; 4097];
        assert!(is_zero(&v));
        v[4096] = 1;
        assert!(!is_zero(&v));
        let d: Digest = format!("sha256:{}", "ab".repeat(32)).parse().unwrap();
        let t = client_token(&d, 1, None);
        assert_eq!(t, client_token(&d, 1, None));
        assert_ne!(t, client_token(&d, 2, None));
        assert!(t.len() <= 64, "ClientToken is at most 64 characters");
    }
}
