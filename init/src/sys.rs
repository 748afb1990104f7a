//! Thin, checked wrappers over the syscalls PID 1 needs. Each returns
//! `io::Result` with the OS error; callers add what they were doing.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// A path or string as a C string (pod.json is validated to hold no NULs).
pub fn cstr(s: &str) -> io::Result<CString> {
    CString::new(s).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL byte in string"))
}

fn check(r: libc::c_int) -> io::Result<()> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// mount(2).
pub fn mount(
    src: &str,
    target: &str,
    fstype: &str,
    flags: libc::c_ulong,
    data: &str,
) -> io::Result<()> {
    let (s, t, f, d) = (cstr(src)?, cstr(target)?, cstr(fstype)?, cstr(data)?);
    // SAFETY: all pointers are valid NUL-terminated strings for the call.
    check(unsafe { libc::mount(s.as_ptr(), t.as_ptr(), f.as_ptr(), flags, d.as_ptr().cast()) })
}

/// sethostname(2).
pub fn sethostname(name: &str) -> io::Result<()> {
    // SAFETY: pointer and length describe `name`.
    check(unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) })
}

/// Load a kernel module from a file with finit_module(2): no modprobe binary.
pub fn finit_module(path: &str) -> io::Result<()> {
    let f = std::fs::File::open(path)?;
    let params = cstr("")?;
    // SAFETY: a file descriptor we own and an empty parameter string.
    let r = unsafe { libc::syscall(libc::SYS_finit_module, f.as_raw_fd(), params.as_ptr(), 0) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Make ctrl-alt-del send SIGINT to PID 1 instead of rebooting at once.
pub fn ctrl_alt_del_to_signal() -> io::Result<()> {
    // SAFETY: reboot(2) with CAD_OFF only changes the ctrl-alt-del behaviour.
    check(unsafe { libc::reboot(libc::LINUX_REBOOT_CMD_CAD_OFF) })
}

/// Flush filesystems and power the machine off. Never returns: PID 1 must not
/// exit (the kernel would panic).
pub fn power_off() -> ! {
    // SAFETY: sync(2) and reboot(2) take no pointers.
    unsafe {
        libc::sync();
        libc::reboot(libc::LINUX_REBOOT_CMD_POWER_OFF);
    }
    // Only reached when not allowed to (not PID 1 / no CAP_SYS_BOOT).
    loop {
        // SAFETY: pause(2) takes no arguments.
        unsafe { libc::pause() };
    }
}

/// Block the signals PID 1 handles and read them from a signalfd.
pub fn signalfd(signals: &[libc::c_int]) -> io::Result<OwnedFd> {
    // SAFETY: sigset_t is plain data, initialised by sigemptyset before use.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in signals {
            libc::sigaddset(&mut set, *s);
        }
        check(libc::sigprocmask(
            libc::SIG_BLOCK,
            &set,
            std::ptr::null_mut(),
        ))?;
        let fd = libc::signalfd(-1, &set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(OwnedFd::from_raw_fd(fd))
    }
}

/// Read every pending signal number from a non-blocking signalfd.
pub fn read_signals(fd: &OwnedFd) -> Vec<u32> {
    let mut out = Vec::new();
    loop {
        // SAFETY: signalfd_siginfo is plain data; read fills at most its size.
        let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
        let n = unsafe {
            libc::read(
                fd.as_raw_fd(),
                (&mut info as *mut libc::signalfd_siginfo).cast(),
                std::mem::size_of::<libc::signalfd_siginfo>(),
            )
        };
        if n != std::mem::size_of::<libc::signalfd_siginfo>() as isize {
            return out;
        }
        out.push(info.ssi_signo);
    }
}

/// Wait until `fd` is readable or `timeout` passes (None: forever).
pub fn wait_readable(fd: &OwnedFd, timeout: Option<std::time::Duration>) {
    let ms = timeout.map_or(-1, |t| t.as_millis().min(i32::MAX as u128) as libc::c_int);
    let mut p = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    unsafe { libc::poll(&mut p, 1, ms) };
}

/// A pipe, both ends close-on-exec.
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two descriptors into `fds`.
    check(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    // SAFETY: both were just returned by the kernel and are ours.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Random bytes that never block, even before the entropy pool is ready
/// (DHCP transaction ids need uniqueness, not secrecy).
pub fn random_u32() -> u32 {
    let mut b = [0u8; 4];
    // SAFETY: the buffer is 4 bytes long.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), 4, libc::GRND_INSECURE) };
    if n == 4 {
        u32::from_ne_bytes(b)
    } else {
        // Pre-5.6 kernels: nanoseconds since boot differ from boot to boot.
        // SAFETY: clock_gettime fills a local timespec.
        let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
        ts.tv_nsec as u32 ^ (ts.tv_sec as u32).rotate_left(16)
    }
}

/// The outcome of waitpid(2) for one child.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// exit(code)
    Code(i32),
    /// Killed by a signal.
    Signal(i32),
}

impl Exit {
    /// Kubernetes' exit code: 128 + signal for a signal death.
    pub fn code(self) -> i32 {
        match self {
            Exit::Code(c) => c,
            Exit::Signal(s) => 128 + s,
        }
    }
}

/// Reap one exited child without blocking.
pub fn reap() -> Option<(libc::pid_t, Exit)> {
    let mut status = 0;
    // SAFETY: waitpid writes the status into a local.
    let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
    if pid <= 0 {
        return None;
    }
    let exit = if libc::WIFSIGNALED(status) {
        Exit::Signal(libc::WTERMSIG(status))
    } else {
        Exit::Code(libc::WEXITSTATUS(status))
    };
    Some((pid, exit))
}

/// kill(2), ignoring a process that is already gone.
pub fn kill(pid: libc::pid_t, sig: libc::c_int) {
    // SAFETY: kill takes no pointers.
    unsafe { libc::kill(pid, sig) };
}
