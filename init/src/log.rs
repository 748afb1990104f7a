//! Console output. Every line of the init starts with `i2kit-init:`; a
//! container's lines start with `[name]`. Both go through the one stdout lock,
//! so lines never interleave mid-way.

use std::io::{Read, Write};
use std::os::fd::OwnedFd;

/// Log one line to the console.
#[macro_export]
macro_rules! log {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let line = format!("i2kit-init: {}\n", format_args!($($arg)*));
        let _ = std::io::stdout().lock().write_all(line.as_bytes());
    }};
}

/// Longest line passed on as one; longer output is cut into pieces this size.
const MAX_LINE: usize = 16 * 1024;

/// Copy a container's output to the console, each line prefixed `[name] `,
/// until every writer has closed the pipe.
pub fn forward(name: String, pipe: OwnedFd) {
    let prefix = format!("[{name}] ");
    let mut src = std::fs::File::from(pipe);
    let mut pending: Vec<u8> = Vec::new();
    let mut buf = [0u8; 4096];
    let emit = |line: &[u8]| {
        let mut out = Vec::with_capacity(prefix.len() + line.len() + 1);
        out.extend_from_slice(prefix.as_bytes());
        out.extend_from_slice(line);
        out.push(b'\n');
        let _ = std::io::stdout().lock().write_all(&out);
    };
    loop {
        let n = match src.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        pending.extend_from_slice(&buf[..n]);
        while let Some(i) = pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = pending.drain(..=i).collect();
            emit(
                line[..line.len() - 1]
                    .strip_suffix(b"\r")
                    .unwrap_or(&line[..line.len() - 1]),
            );
        }
        while pending.len() >= MAX_LINE {
            let part: Vec<u8> = pending.drain(..MAX_LINE).collect();
            emit(&part);
        }
    }
    if !pending.is_empty() {
        emit(&pending);
    }
}
