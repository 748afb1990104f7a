//! `i2kit push aws` throughput: the release binary uploads a 1 GiB image (half
//! of its 512 KiB blocks zeros, written as real zeros, not holes) to a
//! discard-and-verify server in this process that answers like EBS and EC2:
//! it checks every block's `x-amz-Checksum` (base64 SHA-256) and length, keeps
//! nothing, and registers a pretend AMI. moto cannot be used here: it is
//! GIL-bound at ~100-180 blocks/s.
//!
//! Reports, median of N runs: MiB/s of non-zero data (upload phase), blocks/s,
//! and the client's CPU seconds (user+sys, from wait4) per GiB of image.
//! Target: ≥ 400 MiB/s of non-zero data on loopback with 2 cores.
//!
//!   cargo build --release && cargo bench --bench push_sink -- [--runs N] [--jobs J]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use base64::Engine;
use sha2::{Digest, Sha256};

const BS: usize = 512 * 1024;

#[derive(Default)]
struct Stats {
    good: AtomicU64,
    bad: AtomicU64,
}

fn respond(s: &mut TcpStream, status: &str, headers: &str, body: &str) -> std::io::Result<()> {
    write!(
        s,
        "HTTP/1.1 {status}\r\ncontent-length: {}\r\n{headers}\r\n{body}",
        body.len()
    )
}

fn serve(stream: TcpStream, stats: Arc<Stats>) -> std::io::Result<()> {
    let mut w = stream.try_clone()?;
    let mut r = BufReader::with_capacity(1 << 20, stream);
    let mut body = Vec::with_capacity(BS);
    loop {
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let mut parts = line.split_whitespace();
        let (method, path) = (
            parts.next().unwrap_or("").to_string(),
            parts.next().unwrap_or("").to_string(),
        );
        let (mut len, mut checksum) = (0usize, String::new());
        loop {
            let mut h = String::new();
            r.read_line(&mut h)?;
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                match k.trim().to_ascii_lowercase().as_str() {
                    "content-length" => len = v.trim().parse().unwrap_or(0),
                    "x-amz-checksum" => checksum = v.trim().to_string(),
                    _ => {}
                }
            }
        }
        body.resize(len, 0);
        r.read_exact(&mut body)?;
        match (method.as_str(), path.as_str()) {
            ("PUT", p) if p.contains("/blocks/") => {
                let sum = base64::engine::general_purpose::STANDARD.encode(Sha256::digest(&body));
                if len == BS && sum == checksum {
                    stats.good.fetch_add(1, Ordering::Relaxed);
                    respond(
                        &mut w,
                        "201 Created",
                        "content-type: application/json\r\n",
                        "{}",
                    )?;
                } else {
                    stats.bad.fetch_add(1, Ordering::Relaxed);
                    respond(
                        &mut w,
                        "400 Bad Request",
                        "x-amzn-ErrorType: ValidationException\r\n",
                        "{\"Message\":\"checksum\"}",
                    )?;
                }
            }
            ("POST", "/snapshots") => respond(
                &mut w,
                "201 Created",
                "content-type: application/json\r\n",
                r#"{"SnapshotId":"snap-bench","BlockSize":524288,"Status":"pending","VolumeSize":1}"#,
            )?,
            ("POST", p) if p.starts_with("/snapshots/completion/") => {
                respond(&mut w, "202 Accepted", "", r#"{"Status":"completed"}"#)?
            }
            ("POST", "/") => {
                let form = String::from_utf8_lossy(&body);
                let x = if form.contains("Action=DescribeImages") {
                    "<DescribeImagesResponse><imagesSet/></DescribeImagesResponse>"
                } else if form.contains("Action=DescribeSnapshots") {
                    "<DescribeSnapshotsResponse><snapshotSet><item><status>completed</status></item></snapshotSet></DescribeSnapshotsResponse>"
                } else if form.contains("Action=RegisterImage") {
                    "<RegisterImageResponse><imageId>ami-bench</imageId></RegisterImageResponse>"
                } else {
                    "<Response><return>true</return></Response>"
                };
                respond(&mut w, "200 OK", "content-type: text/xml\r\n", x)?
            }
            _ => respond(&mut w, "404 Not Found", "", "")?,
        }
    }
}

/// User + system CPU seconds of every waited-for child so far.
fn children_cpu() -> f64 {
    // SAFETY: getrusage fills a local struct.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(ru.ru_utime) + secs(ru.ru_stime)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let opt = |name: &str, default: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1).cloned())
            .unwrap_or_else(|| default.to_string())
    };
    // `cargo bench` passes --bench; `cargo test --all-targets` runs this
    // once as a smoke test: the debug binary, a 16-block image, one run.
    let bench = args.iter().any(|a| a == "--bench");
    let runs: usize = if bench {
        opt("--runs", "5").parse().expect("--runs N")
    } else {
        1
    };
    let jobs = opt("--jobs", "64");
    let blocks: u64 = if bench { 2048 } else { 16 }; // 1 GiB when measuring
    let i2kit = if bench {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/release/i2kit")
    } else {
        PathBuf::from(env!("CARGO_BIN_EXE_i2kit"))
    };
    assert!(
        i2kit.exists(),
        "{}: cargo build --release first",
        i2kit.display()
    );
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("bench.raw");
    {
        let f = std::fs::File::create(&image).unwrap();
        let mut block = vec![0u8; BS];
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for b in 0..blocks {
            if b % 2 == 0 {
                for chunk in block.chunks_mut(8) {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    chunk.copy_from_slice(&x.to_le_bytes());
                }
            } else {
                block.fill(0);
            }
            f.write_all_at(&block, b * BS as u64).unwrap();
        }
        f.sync_all().unwrap();
    }
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let stats = Arc::new(Stats::default());
    let s2 = stats.clone();
    std::thread::spawn(move || {
        for c in listener.incoming().flatten() {
            let st = s2.clone();
            std::thread::spawn(move || serve(c, st));
        }
    });
    let mut rates = Vec::new();
    let mut bps = Vec::new();
    let mut cpu = Vec::new();
    for run in 0..runs {
        stats.good.store(0, Ordering::Relaxed);
        let cpu_before = children_cpu();
        let t = Instant::now();
        let child = std::process::Command::new(&i2kit)
            .args([
                "push",
                "aws",
                "--json",
                "--region",
                "us-east-1",
                "--jobs",
                &jobs,
                "--endpoint-url",
            ])
            .arg(format!("http://127.0.0.1:{port}"))
            .arg(&image)
            .env("AWS_ACCESS_KEY_ID", "AKIDBENCH")
            .env("AWS_SECRET_ACCESS_KEY", "bench-secret")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let mut child = child;
        let mut out = String::new();
        child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut out)
            .unwrap();
        let status = child.wait().unwrap();
        let c = children_cpu() - cpu_before;
        let wall = t.elapsed().as_secs_f64();
        assert!(status.success(), "i2kit push failed: {out}");
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        let up = v["uploadSeconds"].as_f64().unwrap();
        let written = v["blocksWritten"].as_u64().unwrap();
        assert_eq!(written, blocks / 2);
        assert_eq!(stats.good.load(Ordering::Relaxed), blocks / 2);
        assert_eq!(stats.bad.load(Ordering::Relaxed), 0, "checksum mismatches");
        let mib = (written * BS as u64) as f64 / (1 << 20) as f64;
        println!(
            "run {run}: {written} blocks in {up:.2} s upload ({wall:.2} s wall, incl. hashing the image): {:.0} MiB/s non-zero, {:.0} blocks/s, client CPU {c:.2} s",
            mib / up,
            written as f64 / up
        );
        rates.push(mib / up);
        bps.push(written as f64 / up);
        cpu.push(c);
    }
    let med = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        v[v.len() / 2]
    };
    println!(
        "median over {runs} runs, {} MiB image (half zero blocks), --jobs {jobs}: {:.0} MiB/s of non-zero data (target >= 400), {:.0} blocks/s, client CPU {:.2} s per GiB of image",
        (blocks * BS as u64) >> 20,
        med(&mut rates),
        med(&mut bps),
        med(&mut cpu) / ((blocks * BS as u64) as f64 / (1u64 << 30) as f64)
    );
}
