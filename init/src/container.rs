//! Starting one container: a new mount and PID namespace (the Pod shares the
//! VM's network, UTS and IPC namespaces — the VM is the Pod), the image's root
//! moved over `/` (the `switch_root` trick: `pivot_root` cannot leave the
//! initramfs), /proc /dev /sys /tmp and the Pod's /etc files mounted in, then
//! the user, the working directory and exec.
//!
//! The child runs between a raw `clone` and `execve` in a process that has
//! other threads, so it may only make system calls: everything it needs is
//! prepared as C strings beforehand, and a failure is reported to the parent
//! as (step, errno) through a close-on-exec pipe, as `std::process` does.

use std::ffi::CString;
use std::fs;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;

use i2kit_pod::ContainerRun;

use crate::files;
use crate::sys::{self, cstr};

/// Where a start failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
enum Step {
    Private = 1,
    Mount = 2,
    MoveRoot = 3,
    Chroot = 4,
    Groups = 5,
    Gid = 6,
    Uid = 7,
    Workdir = 8,
    Exec = 9,
}

impl Step {
    fn from_u32(v: u32) -> Option<Step> {
        use Step::*;
        [
            Private, Mount, MoveRoot, Chroot, Groups, Gid, Uid, Workdir, Exec,
        ]
        .into_iter()
        .find(|s| *s as u32 == v)
    }
}

struct MountOp {
    src: CString,
    target: CString,
    fstype: CString,
    flags: libc::c_ulong,
    data: CString,
}

/// A container, ready to be started any number of times.
pub struct Prepared {
    mounts: Vec<MountOp>,
    /// Index into `mounts` of each mount, for error messages.
    mount_names: Vec<String>,
    rootfs: CString,
    workdir: CString,
    candidates: Vec<CString>,
    argv: Vec<CString>,
    envp: Vec<CString>,
    uid: libc::uid_t,
    gid: libc::gid_t,
    argv0: String,
}

/// Why a container did not start.
#[derive(Debug)]
pub struct StartError(pub String);

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Make `p` a directory (replacing a symlink or other non-directory the image
/// put there: mount targets must not lead outside the container).
fn ensure_dir(p: &Path) -> io::Result<()> {
    match fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => return Ok(()),
        Ok(_) => fs::remove_file(p)?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    fs::create_dir(p)
}

/// Make `p` an empty regular file unless it already is a regular file.
fn ensure_file(p: &Path) -> io::Result<()> {
    match fs::symlink_metadata(p) {
        Ok(m) if m.is_file() => return Ok(()),
        Ok(m) if m.is_dir() => {
            return Err(io::Error::other(
                "is a directory in the image; cannot mount the Pod's file over it",
            ));
        }
        // A symlink (e.g. to systemd-resolved's file), a fifo, a device node.
        Ok(_) => fs::remove_file(p)?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    fs::write(p, b"")
}

/// Prepare mount points in the rootfs and every string the child needs.
pub fn prepare(c: &ContainerRun) -> Result<Prepared, StartError> {
    let ctx = |what: &str, e: io::Error| StartError(format!("{what}: {e}"));
    let root = Path::new(&c.rootfs);
    if !fs::symlink_metadata(root).is_ok_and(|m| m.is_dir()) {
        return Err(StartError(format!(
            "its root filesystem {} is missing from the image",
            c.rootfs
        )));
    }
    for d in ["proc", "dev", "sys", "tmp", "etc"] {
        ensure_dir(&root.join(d)).map_err(|e| ctx(&format!("{}/{d}", c.rootfs), e))?;
    }
    let etc_files = [
        (files::RESOLV_CONF, "etc/resolv.conf"),
        (files::HOSTS, "etc/hosts"),
        (files::HOSTNAME, "etc/hostname"),
    ];
    for (_, f) in etc_files {
        ensure_file(&root.join(f)).map_err(|e| ctx(&format!("{}/{f}", c.rootfs), e))?;
    }
    let wd = root.join(c.working_dir.trim_start_matches('/'));
    if fs::symlink_metadata(&wd).is_err() {
        // As runc does: a missing working directory is created.
        fs::create_dir_all(&wd)
            .map_err(|e| ctx(&format!("working directory {}", c.working_dir), e))?;
    }
    let r = &c.rootfs;
    let c_ = |s: &str| cstr(s).map_err(|e| ctx(s, e));
    let mut ops: Vec<(String, MountOp)> = Vec::new();
    let mut add = |name: String,
                   src: &str,
                   target: String,
                   fstype: &str,
                   flags: libc::c_ulong,
                   data: &str|
     -> Result<(), StartError> {
        ops.push((
            name,
            MountOp {
                src: c_(src)?,
                target: c_(&target)?,
                fstype: c_(fstype)?,
                flags,
                data: c_(data)?,
            },
        ));
        Ok(())
    };
    // Nothing mounted below propagates back to the VM.
    add(
        "/ (private)".into(),
        "none",
        "/".into(),
        "",
        libc::MS_REC | libc::MS_PRIVATE,
        "",
    )?;
    add(
        "rootfs".into(),
        r,
        r.clone(),
        "",
        libc::MS_BIND | libc::MS_REC,
        "",
    )?;
    let nodev = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    add(
        "/proc".into(),
        "proc",
        format!("{r}/proc"),
        "proc",
        nodev,
        "",
    )?;
    add(
        "/dev".into(),
        "/dev",
        format!("{r}/dev"),
        "",
        libc::MS_BIND | libc::MS_REC,
        "",
    )?;
    add(
        "/sys".into(),
        "/sys",
        format!("{r}/sys"),
        "",
        libc::MS_BIND | libc::MS_REC,
        "",
    )?;
    add(
        "/tmp".into(),
        "tmpfs",
        format!("{r}/tmp"),
        "tmpfs",
        libc::MS_NOSUID | libc::MS_NODEV,
        "mode=1777",
    )?;
    for (src, f) in etc_files {
        add(
            format!("/{f}"),
            src,
            format!("{r}/{f}"),
            "",
            libc::MS_BIND,
            "",
        )?;
        let ro =
            libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV;
        add(
            format!("/{f} (read-only)"),
            "none",
            format!("{r}/{f}"),
            "",
            ro,
            "",
        )?;
    }
    let (mount_names, mounts) = ops.into_iter().unzip();
    let all = |v: &[String]| v.iter().map(|s| c_(s)).collect::<Result<Vec<_>, _>>();
    Ok(Prepared {
        mounts,
        mount_names,
        rootfs: c_(r)?,
        workdir: c_(&c.working_dir)?,
        candidates: all(&i2kit_pod::exec_candidates(
            &c.argv[0],
            &c.env,
            &c.working_dir,
        ))?,
        argv: all(&c.argv)?,
        envp: all(&c.env)?,
        uid: c.uid,
        gid: c.gid,
        argv0: c.argv[0].clone(),
    })
}

fn nul_terminated(v: &[CString]) -> Vec<*const libc::c_char> {
    v.iter()
        .map(|s| s.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect()
}

/// Start the container. Returns its pid (in the VM's PID namespace; it is PID
/// 1 of its own) and the read end of its stdout+stderr pipe.
pub fn spawn(p: &Prepared) -> Result<(libc::pid_t, OwnedFd), StartError> {
    let io_err = |what: &str, e: io::Error| StartError(format!("{what}: {e}"));
    let (out_r, out_w) = sys::pipe().map_err(|e| io_err("pipe", e))?;
    let (st_r, st_w) = sys::pipe().map_err(|e| io_err("pipe", e))?;
    let null = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
        .map_err(|e| io_err("/dev/null", e))?;
    let argv = nul_terminated(&p.argv);
    let envp = nul_terminated(&p.envp);
    let flags = (libc::CLONE_NEWNS | libc::CLONE_NEWPID | libc::SIGCHLD) as libc::c_long;
    // SAFETY: a fork-like clone (no new stack, no shared memory). The child
    // only runs `child`, which makes system calls on data prepared above and
    // ends in execve or _exit.
    let pid = unsafe { libc::syscall(libc::SYS_clone, flags, 0, 0, 0, 0) };
    if pid < 0 {
        return Err(io_err("clone", io::Error::last_os_error()));
    }
    if pid == 0 {
        // SAFETY: see above; this never returns.
        unsafe {
            child(
                p,
                &argv,
                &envp,
                null.as_raw_fd(),
                out_w.as_raw_fd(),
                st_w.as_raw_fd(),
            )
        }
    }
    let pid = pid as libc::pid_t;
    drop(st_w);
    drop(out_w);
    let mut report = [0u8; 8];
    let mut got = 0;
    while got < 8 {
        // SAFETY: reading into the rest of a local buffer.
        let n = unsafe { libc::read(st_r.as_raw_fd(), report[got..].as_mut_ptr().cast(), 8 - got) };
        if n == 0 {
            break;
        }
        if n < 0 {
            if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            break;
        }
        got += n as usize;
    }
    if got == 0 {
        return Ok((pid, out_r)); // EOF: execve succeeded and closed the pipe.
    }
    let mut status = 0;
    // SAFETY: reaping our own child, which is exiting with 127.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    let step = u32::from_ne_bytes(report[..4].try_into().expect("4 bytes"));
    let errno = i32::from_ne_bytes(report[4..].try_into().expect("4 bytes"));
    Err(StartError(describe(p, step, errno)))
}

fn describe(p: &Prepared, step: u32, errno: i32) -> String {
    let os = io::Error::from_raw_os_error(errno & 0xffff);
    let which = (errno >> 16) as usize;
    match Step::from_u32(step) {
        Some(Step::Exec) if errno == libc::ENOENT => format!(
            "executable {:?} not found in the image (looked in: {})",
            p.argv0,
            p.candidates
                .iter()
                .map(|c| c.to_string_lossy())
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Some(Step::Exec) => format!("cannot execute {:?}: {os}", p.argv0),
        Some(Step::Mount) | Some(Step::Private) => format!(
            "mounting {} in the container: {}",
            p.mount_names.get(which).map_or("?", |s| s.as_str()),
            io::Error::from_raw_os_error(errno & 0xffff)
        ),
        Some(Step::Workdir) => format!("working directory {}: {os}", p.workdir.to_string_lossy()),
        Some(Step::Uid) => format!("setuid({}): {os}", p.uid),
        Some(Step::Gid) | Some(Step::Groups) => format!("setgid({}): {os}", p.gid),
        Some(s) => format!("{s:?}: {os}"),
        None => format!("unknown start step {step}: {os}"),
    }
}

/// The child between clone and exec: system calls only.
unsafe fn child(
    p: &Prepared,
    argv: &[*const libc::c_char],
    envp: &[*const libc::c_char],
    null: libc::c_int,
    out: libc::c_int,
    status: libc::c_int,
) -> ! {
    // The low 16 bits carry errno, the high bits which mount failed.
    let fail = |step: Step, extra: usize| -> ! {
        // SAFETY: errno location, write and _exit are async-signal-safe.
        unsafe {
            let errno = *libc::__errno_location() | ((extra as i32) << 16);
            let mut buf = [0u8; 8];
            buf[..4].copy_from_slice(&(step as u32).to_ne_bytes());
            buf[4..].copy_from_slice(&errno.to_ne_bytes());
            libc::write(status, buf.as_ptr().cast(), 8);
            libc::_exit(127)
        }
    };
    // SAFETY: the whole block makes system calls on prepared, valid data.
    unsafe {
        // The init blocks signals for its signalfd and Rust ignores SIGPIPE:
        // the container starts with neither.
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        libc::dup2(null, 0);
        libc::dup2(out, 1);
        libc::dup2(out, 2);
        libc::setsid();
        for (i, m) in p.mounts.iter().enumerate() {
            let r = libc::mount(
                m.src.as_ptr(),
                m.target.as_ptr(),
                m.fstype.as_ptr(),
                m.flags,
                m.data.as_ptr().cast(),
            );
            if r < 0 {
                fail(if i == 0 { Step::Private } else { Step::Mount }, i);
            }
        }
        let dot = c".".as_ptr();
        if libc::chdir(p.rootfs.as_ptr()) < 0
            || libc::mount(
                dot,
                c"/".as_ptr(),
                std::ptr::null(),
                libc::MS_MOVE,
                std::ptr::null(),
            ) < 0
        {
            fail(Step::MoveRoot, 0);
        }
        if libc::chroot(dot) < 0 || libc::chdir(c"/".as_ptr()) < 0 {
            fail(Step::Chroot, 0);
        }
        // Raw system calls: glibc's setuid/setgid would try to change every
        // thread of the parent process too (its setxid broadcast), which in a
        // clone()d child waits forever for threads that are not there.
        if libc::syscall(libc::SYS_setgroups, 0, std::ptr::null::<libc::gid_t>()) < 0 {
            fail(Step::Groups, 0);
        }
        if libc::syscall(libc::SYS_setresgid, p.gid, p.gid, p.gid) < 0 {
            fail(Step::Gid, 0);
        }
        if libc::syscall(libc::SYS_setresuid, p.uid, p.uid, p.uid) < 0 {
            fail(Step::Uid, 0);
        }
        if libc::chdir(p.workdir.as_ptr()) < 0 {
            fail(Step::Workdir, 0);
        }
        let mut saved = libc::ENOENT;
        for c in &p.candidates {
            libc::execve(c.as_ptr(), argv.as_ptr(), envp.as_ptr());
            match *libc::__errno_location() {
                libc::ENOENT | libc::ENOTDIR => {}
                libc::EACCES => saved = libc::EACCES,
                _ => fail(Step::Exec, 0),
            }
        }
        *libc::__errno_location() = saved;
        fail(Step::Exec, 0)
    }
}
