//! Networking: `lo`, the first Ethernet interface, and a small DHCPv4 client
//! (DISCOVER → OFFER → REQUEST → ACK, then renewal at T1, rebinding at T2 and
//! a new discovery when the lease runs out). Configuration goes through the
//! classic SIOCSIF* / SIOCADDRT ioctls: three calls, no netlink parser needed.

use std::io;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use i2kit_pod::dhcp::{self, MessageType, Reply, Request};

use crate::log;

/// An Ethernet interface.
#[derive(Clone, Debug)]
pub struct Iface {
    /// Kernel name (`eth0`, `ens3`, …).
    pub name: String,
    /// Hardware address.
    pub mac: [u8; 6],
}

/// `struct ifreq`: the name, then a 24-byte union (sockaddr or flags).
#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    data: [u8; 24],
}

/// `struct rtentry` from <net/route.h>, declared here because libc does not.
#[repr(C)]
struct RtEntry {
    rt_pad1: libc::c_ulong,
    rt_dst: libc::sockaddr,
    rt_gateway: libc::sockaddr,
    rt_genmask: libc::sockaddr,
    rt_flags: libc::c_ushort,
    rt_pad2: libc::c_short,
    rt_pad3: libc::c_ulong,
    rt_pad4: *mut libc::c_void,
    rt_metric: libc::c_short,
    rt_dev: *mut libc::c_char,
    rt_mtu: libc::c_ulong,
    rt_window: libc::c_ulong,
    rt_irtt: libc::c_ushort,
}

fn sockaddr(ip: Ipv4Addr) -> libc::sockaddr {
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(ip).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in and sockaddr have the same size (16 bytes).
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
}

fn ifreq(name: &str) -> io::Result<IfReq> {
    let mut r = IfReq {
        name: [0; libc::IFNAMSIZ],
        data: [0; 24],
    };
    if name.len() >= libc::IFNAMSIZ {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "interface name too long",
        ));
    }
    r.name[..name.len()].copy_from_slice(name.as_bytes());
    Ok(r)
}

fn ioctl_sock(req: libc::c_ulong, arg: *mut libc::c_void) -> io::Result<()> {
    // Any AF_INET datagram socket carries interface ioctls, even before the
    // interface has an address.
    let sock = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
    // SAFETY: `arg` points at a struct of the layout `req` expects.
    let r = unsafe { libc::ioctl(sock.as_raw_fd(), req as _, arg) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Set IFF_UP on an interface.
pub fn link_up(name: &str) -> io::Result<()> {
    let mut r = ifreq(name)?;
    ioctl_sock(libc::SIOCGIFFLAGS, (&mut r as *mut IfReq).cast())?;
    let flags = i16::from_ne_bytes([r.data[0], r.data[1]]) | libc::IFF_UP as i16;
    r.data[..2].copy_from_slice(&flags.to_ne_bytes());
    ioctl_sock(libc::SIOCSIFFLAGS, (&mut r as *mut IfReq).cast())
}

fn set_sockaddr(name: &str, req: libc::c_ulong, ip: Ipv4Addr) -> io::Result<()> {
    let mut r = ifreq(name)?;
    let sa = sockaddr(ip);
    // SAFETY: sockaddr is 16 bytes of plain data; the union has room for it.
    let bytes: [u8; 16] = unsafe { std::mem::transmute(sa) };
    r.data[..16].copy_from_slice(&bytes);
    ioctl_sock(req, (&mut r as *mut IfReq).cast())
}

/// Address, netmask, default route.
pub fn configure(
    iface: &Iface,
    ip: Ipv4Addr,
    mask: Ipv4Addr,
    router: Option<Ipv4Addr>,
) -> io::Result<()> {
    set_sockaddr(&iface.name, libc::SIOCSIFADDR, ip)?;
    set_sockaddr(&iface.name, libc::SIOCSIFNETMASK, mask)?;
    if let Some(gw) = router {
        let mut dev = crate::sys::cstr(&iface.name)?.into_bytes_with_nul();
        let mut rt = RtEntry {
            rt_pad1: 0,
            rt_dst: sockaddr(Ipv4Addr::UNSPECIFIED),
            rt_gateway: sockaddr(gw),
            rt_genmask: sockaddr(Ipv4Addr::UNSPECIFIED),
            rt_flags: libc::RTF_UP | libc::RTF_GATEWAY,
            rt_pad2: 0,
            rt_pad3: 0,
            rt_pad4: std::ptr::null_mut(),
            rt_metric: 0,
            rt_dev: dev.as_mut_ptr().cast(),
            rt_mtu: 0,
            rt_window: 0,
            rt_irtt: 0,
        };
        match ioctl_sock(libc::SIOCADDRT, (&mut rt as *mut RtEntry).cast()) {
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
            other => other?,
        }
    }
    Ok(())
}

/// The first Ethernet interface by ifindex, waiting up to `wait` for a
/// driver to register one.
pub fn first_ethernet(wait: Duration) -> Option<Iface> {
    let deadline = Instant::now() + wait;
    loop {
        let mut found: Vec<(u32, Iface)> = Vec::new();
        for e in std::fs::read_dir("/sys/class/net")
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = e.file_name().to_string_lossy().into_owned();
            let read = |f: &str| std::fs::read_to_string(e.path().join(f)).unwrap_or_default();
            // type 1 = ARPHRD_ETHER; loopback is 772.
            if read("type").trim() != "1" {
                continue;
            }
            let Some(mac) = parse_mac(read("address").trim()) else {
                continue;
            };
            let idx = read("ifindex").trim().parse().unwrap_or(u32::MAX);
            found.push((idx, Iface { name, mac }));
        }
        found.sort_by_key(|(i, _)| *i);
        if let Some((_, i)) = found.into_iter().next() {
            return Some(i);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut mac {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

fn socket(iface: &Iface) -> io::Result<UdpSocket> {
    let s = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 68))?;
    s.set_broadcast(true)?;
    let name = crate::sys::cstr(&iface.name)?;
    // SAFETY: SO_BINDTODEVICE takes the interface name and its length.
    let r = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_BINDTODEVICE,
            name.as_ptr().cast(),
            name.as_bytes_with_nul().len() as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(s)
}

/// Send `req` to `to` and wait up to `wait` for a reply of one of `kinds`
/// with our transaction id; other traffic is skipped.
fn exchange(
    s: &UdpSocket,
    req: &Request,
    to: Ipv4Addr,
    wait: Duration,
    kinds: &[MessageType],
) -> io::Result<Option<Reply>> {
    s.send_to(&req.encode(), SocketAddrV4::new(to, 67))?;
    let deadline = Instant::now() + wait;
    let mut buf = [0u8; 1500];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(None);
        }
        s.set_read_timeout(Some(left))?;
        let n = match s.recv(&mut buf) {
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        if let Ok(r) = dhcp::decode(&buf[..n])
            && r.xid == req.xid
            && kinds.contains(&r.kind)
        {
            return Ok(Some(r));
        }
    }
}

/// DISCOVER → OFFER → REQUEST → ACK, retried with a doubling wait (1, 2, 4 s)
/// until `timeout`.
pub fn acquire(iface: &Iface, hostname: &str, timeout: Duration) -> io::Result<Option<Reply>> {
    let s = socket(iface)?;
    let deadline = Instant::now() + timeout;
    let mut wait = Duration::from_secs(1);
    while Instant::now() < deadline {
        let left = deadline.saturating_duration_since(Instant::now());
        let step = wait.min(left);
        let mut req = Request {
            kind: MessageType::Discover,
            xid: crate::sys::random_u32(),
            mac: iface.mac,
            requested_ip: None,
            server_id: None,
            client_ip: None,
            hostname: Some(hostname.to_string()),
        };
        if let Some(offer) = exchange(&s, &req, Ipv4Addr::BROADCAST, step, &[MessageType::Offer])? {
            req.kind = MessageType::Request;
            req.requested_ip = Some(offer.your_ip);
            req.server_id = offer.server_id;
            let kinds = [MessageType::Ack, MessageType::Nak];
            if let Some(ack) = exchange(&s, &req, Ipv4Addr::BROADCAST, step, &kinds)?
                && ack.kind == MessageType::Ack
            {
                return Ok(Some(ack));
            }
        }
        wait = (wait * 2).min(Duration::from_secs(4));
    }
    Ok(None)
}

/// RENEWING (unicast to the server) or REBINDING (broadcast) one lease.
fn renew(
    iface: &Iface,
    hostname: &str,
    lease: &Reply,
    broadcast: bool,
) -> io::Result<Option<Reply>> {
    let s = socket(iface)?;
    let req = Request {
        kind: MessageType::Request,
        xid: crate::sys::random_u32(),
        mac: iface.mac,
        requested_ip: None,
        server_id: None,
        client_ip: Some(lease.your_ip),
        hostname: Some(hostname.to_string()),
    };
    let to = match (broadcast, lease.server_id) {
        (false, Some(server)) => server,
        _ => Ipv4Addr::BROADCAST,
    };
    exchange(
        &s,
        &req,
        to,
        Duration::from_secs(4),
        &[MessageType::Ack, MessageType::Nak],
    )
}

/// Apply a lease: address, route, and the files containers see.
pub fn apply(iface: &Iface, r: &Reply, hostname: &str) -> io::Result<()> {
    let mask = r.netmask.unwrap_or(Ipv4Addr::new(255, 255, 255, 0));
    configure(iface, r.your_ip, mask, r.router)?;
    crate::files::write_in_place(crate::files::RESOLV_CONF, &dhcp::resolv_conf(r))?;
    crate::files::write_in_place(
        crate::files::HOSTS,
        &i2kit_pod::hosts_file(hostname, Some(r.your_ip)),
    )?;
    log!(
        "{}: {}/{} via {}, dns {} (lease {}s)",
        iface.name,
        r.your_ip,
        dhcp::prefix_len(mask),
        r.router.map_or("-".into(), |g| g.to_string()),
        if r.dns.is_empty() {
            "-".into()
        } else {
            r.dns
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(",")
        },
        r.lease_secs.map_or("∞".into(), |l| l.to_string()),
    );
    Ok(())
}

/// Keep the lease alive for the life of the VM (runs on its own thread).
/// `lease` is None when the first attempt at boot failed.
pub fn maintain(iface: Iface, hostname: String, mut lease: Option<(Reply, Instant)>) {
    loop {
        let Some((current, got)) = lease.clone() else {
            std::thread::sleep(Duration::from_secs(10));
            match acquire(&iface, &hostname, Duration::from_secs(30)) {
                Ok(Some(r)) => {
                    if let Err(e) = apply(&iface, &r, &hostname) {
                        log!("{}: cannot apply the DHCP lease: {e}", iface.name);
                    }
                    lease = Some((r, Instant::now()));
                }
                Ok(None) => log!("{}: no DHCP answer yet; trying again", iface.name),
                Err(e) => log!("{}: DHCP: {e}", iface.name),
            }
            continue;
        };
        let Some(t) = dhcp::timers(&current) else {
            return; // an infinite lease
        };
        let since = got.elapsed();
        let (broadcast, due) = if since < t.renew {
            (false, t.renew - since)
        } else if since < t.rebind {
            (false, Duration::from_secs(60).min(t.rebind - since))
        } else if since < t.expire {
            (true, Duration::from_secs(60).min(t.expire - since))
        } else {
            log!(
                "{}: lease of {} expired; discovering again",
                iface.name,
                current.your_ip
            );
            lease = None;
            continue;
        };
        std::thread::sleep(due);
        if got.elapsed() >= t.expire {
            continue;
        }
        match renew(
            &iface,
            &hostname,
            &current,
            broadcast || got.elapsed() >= t.rebind,
        ) {
            Ok(Some(r)) if r.kind == MessageType::Ack => {
                if r.your_ip != current.your_ip
                    || r.dns != current.dns
                    || r.router != current.router
                {
                    if let Err(e) = apply(&iface, &r, &hostname) {
                        log!("{}: cannot apply the renewed lease: {e}", iface.name);
                    }
                } else {
                    log!("{}: lease of {} renewed", iface.name, r.your_ip);
                }
                lease = Some((r, Instant::now()));
            }
            Ok(Some(_)) => {
                log!(
                    "{}: the server refused the renewal (NAK); discovering again",
                    iface.name
                );
                lease = None;
            }
            Ok(None) => {}
            Err(e) => log!("{}: DHCP renewal: {e}", iface.name),
        }
    }
}
