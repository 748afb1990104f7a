//! The ACPI power button (what `aws ec2 stop-instances` and QEMU's
//! `system_powerdown` press). The kernel's `button` driver reports it as an
//! input device named "Power Button"; `evdev` makes it readable. A press is
//! turned into SIGPWR to PID 1, which shuts down like SIGTERM.

use std::io::Read;
use std::os::fd::AsRawFd;

use crate::log;

const EV_KEY: u16 = 1;
const KEY_POWER: u16 = 116;

/// EVIOCGNAME(len): _IOC(_IOC_READ, 'E', 0x06, len).
fn eviocgname(len: usize) -> libc::c_ulong {
    (2 << 30) | ((len as libc::c_ulong) << 16) | ((b'E' as libc::c_ulong) << 8) | 0x06
}

fn device_name(f: &std::fs::File) -> Option<String> {
    let mut buf = [0u8; 128];
    // SAFETY: the ioctl writes at most `buf.len()` bytes into `buf`.
    let n = unsafe { libc::ioctl(f.as_raw_fd(), eviocgname(buf.len()) as _, buf.as_mut_ptr()) };
    if n <= 0 {
        return None;
    }
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    Some(String::from_utf8_lossy(&buf[..end]).into_owned())
}

/// Watch every power button the kernel registered; returns how many.
pub fn watch() -> usize {
    let mut n = 0;
    let Ok(dir) = std::fs::read_dir("/dev/input") else {
        return 0;
    };
    let mut paths: Vec<_> = dir.flatten().map(|e| e.path()).collect();
    paths.sort();
    for path in paths {
        if !path
            .file_name()
            .is_some_and(|f| f.to_string_lossy().starts_with("event"))
        {
            continue;
        }
        let Ok(f) = std::fs::File::open(&path) else {
            continue;
        };
        if !device_name(&f).is_some_and(|name| name.contains("Power Button")) {
            continue;
        }
        n += 1;
        std::thread::spawn(move || read_presses(f));
    }
    n
}

fn read_presses(mut f: std::fs::File) {
    // struct input_event: struct timeval, u16 type, u16 code, s32 value.
    let size = std::mem::size_of::<libc::timeval>() + 8;
    let mut ev = vec![0u8; size];
    let t = std::mem::size_of::<libc::timeval>();
    while f.read_exact(&mut ev).is_ok() {
        let ty = u16::from_ne_bytes([ev[t], ev[t + 1]]);
        let code = u16::from_ne_bytes([ev[t + 2], ev[t + 3]]);
        let value = i32::from_ne_bytes([ev[t + 4], ev[t + 5], ev[t + 6], ev[t + 7]]);
        if ty == EV_KEY && code == KEY_POWER && value == 1 {
            log!("power button pressed");
            crate::sys::kill(1, libc::SIGPWR);
        }
    }
}
