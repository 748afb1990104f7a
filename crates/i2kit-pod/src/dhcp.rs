//! DHCPv4 messages (RFC 2131 §2 message format; options per RFC 2132) for the
//! init's small client: DISCOVER → OFFER → REQUEST → ACK, then renewal at T1.
//! Hand-written: the client needs four message types and six options, and no
//! maintained crate covers the no-std-like, dependency-free use in a static init.

use std::net::Ipv4Addr;
use std::time::Duration;

/// BOOTREQUEST.
const OP_REQUEST: u8 = 1;
/// BOOTREPLY.
const OP_REPLY: u8 = 2;
/// RFC 2131 §3: the magic cookie that starts the options.
const MAGIC: [u8; 4] = [99, 130, 83, 99];
/// Fixed header size before the options (RFC 2131 Figure 1).
const HEADER: usize = 236;

/// DHCP message types (option 53).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MessageType {
    /// 1
    Discover,
    /// 2
    Offer,
    /// 3
    Request,
    /// 5
    Ack,
    /// 6
    Nak,
}

impl MessageType {
    fn code(self) -> u8 {
        match self {
            MessageType::Discover => 1,
            MessageType::Offer => 2,
            MessageType::Request => 3,
            MessageType::Ack => 5,
            MessageType::Nak => 6,
        }
    }
    fn from_code(c: u8) -> Option<MessageType> {
        Some(match c {
            1 => MessageType::Discover,
            2 => MessageType::Offer,
            3 => MessageType::Request,
            5 => MessageType::Ack,
            6 => MessageType::Nak,
            _ => return None,
        })
    }
}

/// What a client sends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// DISCOVER or REQUEST.
    pub kind: MessageType,
    /// Transaction id.
    pub xid: u32,
    /// The interface's MAC address.
    pub mac: [u8; 6],
    /// Option 50 (REQUEST in SELECTING state).
    pub requested_ip: Option<Ipv4Addr>,
    /// Option 54 (REQUEST in SELECTING state).
    pub server_id: Option<Ipv4Addr>,
    /// `ciaddr` (RENEWING state).
    pub client_ip: Option<Ipv4Addr>,
    /// Option 12.
    pub hostname: Option<String>,
}

/// What a server answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    /// OFFER, ACK or NAK.
    pub kind: MessageType,
    /// Transaction id.
    pub xid: u32,
    /// `yiaddr`: the address offered.
    pub your_ip: Ipv4Addr,
    /// Option 1.
    pub netmask: Option<Ipv4Addr>,
    /// Option 3 (first router).
    pub router: Option<Ipv4Addr>,
    /// Option 6.
    pub dns: Vec<Ipv4Addr>,
    /// Option 51, seconds.
    pub lease_secs: Option<u32>,
    /// Option 54.
    pub server_id: Option<Ipv4Addr>,
    /// Option 58, seconds (default: half the lease).
    pub renew_secs: Option<u32>,
    /// Option 59, seconds (default: 7/8 of the lease).
    pub rebind_secs: Option<u32>,
    /// Option 15.
    pub domain: Option<String>,
}

impl Request {
    /// Encode as a BOOTP/DHCP packet (broadcast flag set: the client has no address yet).
    pub fn encode(&self) -> Vec<u8> {
        let mut p = vec![0u8; HEADER];
        p[0] = OP_REQUEST;
        p[1] = 1; // htype: Ethernet
        p[2] = 6; // hlen
        p[4..8].copy_from_slice(&self.xid.to_be_bytes());
        if self.client_ip.is_none() {
            p[10] = 0x80; // flags: BROADCAST
        }
        if let Some(ip) = self.client_ip {
            p[12..16].copy_from_slice(&ip.octets());
        }
        p[28..34].copy_from_slice(&self.mac);
        p.extend_from_slice(&MAGIC);
        p.extend_from_slice(&[53, 1, self.kind.code()]);
        // Client identifier: hardware type + MAC (RFC 2132 §9.14).
        p.extend_from_slice(&[61, 7, 1]);
        p.extend_from_slice(&self.mac);
        if let Some(ip) = self.requested_ip {
            p.extend_from_slice(&[50, 4]);
            p.extend_from_slice(&ip.octets());
        }
        if let Some(ip) = self.server_id {
            p.extend_from_slice(&[54, 4]);
            p.extend_from_slice(&ip.octets());
        }
        if let Some(h) = &self.hostname {
            let h = &h.as_bytes()[..h.len().min(255)];
            p.extend_from_slice(&[12, h.len() as u8]);
            p.extend_from_slice(h);
        }
        // Parameter request list: netmask, router, DNS, domain, lease, server id, T1, T2.
        p.extend_from_slice(&[55, 8, 1, 3, 6, 15, 51, 54, 58, 59]);
        p.push(255);
        // Pad to the 300-byte BOOTP minimum some servers expect.
        if p.len() < 300 {
            p.resize(300, 0);
        }
        p
    }
}

/// Why a packet was not accepted.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum DhcpError {
    /// Too short, wrong op or no magic cookie.
    #[error("not a DHCP reply: {0}")]
    NotDhcp(&'static str),
    /// An option runs past the end.
    #[error("truncated option {0}")]
    Truncated(u8),
    /// No message type option.
    #[error("no DHCP message type")]
    NoType,
}

fn ip(v: &[u8]) -> Option<Ipv4Addr> {
    let a: [u8; 4] = v.get(..4)?.try_into().ok()?;
    Some(Ipv4Addr::from(a))
}

/// Decode a server's reply.
pub fn decode(p: &[u8]) -> Result<Reply, DhcpError> {
    if p.len() < HEADER + 4 {
        return Err(DhcpError::NotDhcp("too short"));
    }
    if p[0] != OP_REPLY {
        return Err(DhcpError::NotDhcp("not a BOOTREPLY"));
    }
    if p[HEADER..HEADER + 4] != MAGIC {
        return Err(DhcpError::NotDhcp("no magic cookie"));
    }
    let mut r = Reply {
        kind: MessageType::Nak,
        xid: u32::from_be_bytes(p[4..8].try_into().expect("4 bytes")),
        your_ip: ip(&p[16..20]).expect("4 bytes"),
        netmask: None,
        router: None,
        dns: Vec::new(),
        lease_secs: None,
        server_id: None,
        renew_secs: None,
        rebind_secs: None,
        domain: None,
    };
    let mut kind = None;
    let mut i = HEADER + 4;
    while i < p.len() {
        let code = p[i];
        match code {
            0 => {
                i += 1;
                continue;
            }
            255 => break,
            _ => {}
        }
        let len = *p.get(i + 1).ok_or(DhcpError::Truncated(code))? as usize;
        let v = p
            .get(i + 2..i + 2 + len)
            .ok_or(DhcpError::Truncated(code))?;
        let u32v = || {
            v.get(..4)
                .map(|b| u32::from_be_bytes(b.try_into().expect("4 bytes")))
        };
        match code {
            53 => kind = v.first().and_then(|c| MessageType::from_code(*c)),
            1 => r.netmask = ip(v),
            3 => r.router = ip(v),
            6 => r.dns = v.chunks_exact(4).filter_map(ip).collect(),
            15 => {
                r.domain = std::str::from_utf8(v)
                    .ok()
                    .map(|s| s.trim_end_matches('\0').to_string())
            }
            51 => r.lease_secs = u32v(),
            54 => r.server_id = ip(v),
            58 => r.renew_secs = u32v(),
            59 => r.rebind_secs = u32v(),
            _ => {}
        }
        i += 2 + len;
    }
    r.kind = kind.ok_or(DhcpError::NoType)?;
    Ok(r)
}

/// When a lease is renewed, rebound and lost, counted from when it was granted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timers {
    /// T1: ask the granting server again (unicast).
    pub renew: Duration,
    /// T2: ask any server (broadcast).
    pub rebind: Duration,
    /// The address must be given up.
    pub expire: Duration,
}

/// RFC 2131 §4.4.5 timers: T1 and T2 from options 58/59 when the server sends
/// sane ones, else 0.5 and 0.875 of the lease. None for an infinite lease
/// (0xffffffff) or a reply without one.
pub fn timers(r: &Reply) -> Option<Timers> {
    let lease = r.lease_secs.filter(|l| *l != u32::MAX)?;
    let lease_d = Duration::from_secs(u64::from(lease));
    let rebind = r
        .rebind_secs
        .filter(|t| *t < lease)
        .map(|t| Duration::from_secs(u64::from(t)))
        .unwrap_or(lease_d * 7 / 8);
    let renew = r
        .renew_secs
        .map(|t| Duration::from_secs(u64::from(t)))
        .filter(|t| *t < rebind)
        .unwrap_or(lease_d / 2)
        .min(rebind);
    Some(Timers {
        renew,
        rebind,
        expire: lease_d,
    })
}

/// `/etc/resolv.conf` for a lease.
pub fn resolv_conf(r: &Reply) -> String {
    let mut s = String::new();
    if let Some(d) = r.domain.as_ref().filter(|d| !d.is_empty()) {
        s.push_str(&format!("search {d}\n"));
    }
    for d in &r.dns {
        s.push_str(&format!("nameserver {d}\n"));
    }
    s
}

/// Prefix length of a netmask (`255.255.255.0` → 24).
pub fn prefix_len(mask: Ipv4Addr) -> u32 {
    u32::from(mask).leading_ones()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];

    #[test]
    fn discover_bytes_by_hand() {
        let d = Request {
            kind: MessageType::Discover,
            xid: 0xdeadbeef,
            mac: MAC,
            requested_ip: None,
            server_id: None,
            client_ip: None,
            hostname: Some("web".into()),
        }
        .encode();
        assert_eq!(d.len(), 300);
        assert_eq!(&d[..4], &[1, 1, 6, 0]);
        assert_eq!(&d[4..8], &[0xde, 0xad, 0xbe, 0xef]);
        assert_eq!(&d[10..12], &[0x80, 0], "broadcast flag");
        assert_eq!(&d[28..34], &MAC);
        assert_eq!(&d[236..240], &MAGIC);
        assert_eq!(&d[240..243], &[53, 1, 1], "DHCPDISCOVER");
        assert_eq!(
            &d[243..252],
            &[61, 7, 1, 0x52, 0x54, 0x00, 0x12, 0x34, 0x56]
        );
        assert_eq!(&d[252..257], &[12, 3, b'w', b'e', b'b']);
        assert_eq!(&d[257..267], &[55, 8, 1, 3, 6, 15, 51, 54, 58, 59]);
        assert_eq!(d[267], 255);
    }

    /// An ACK as QEMU's slirp sends it (10.0.2.15/24, router and DNS at .2/.3, 24 h lease).
    fn slirp_ack() -> Vec<u8> {
        let mut p = vec![0u8; HEADER];
        p[0] = OP_REPLY;
        p[1] = 1;
        p[2] = 6;
        p[4..8].copy_from_slice(&0xdeadbeefu32.to_be_bytes());
        p[16..20].copy_from_slice(&[10, 0, 2, 15]);
        p[20..24].copy_from_slice(&[10, 0, 2, 2]);
        p[28..34].copy_from_slice(&MAC);
        p.extend_from_slice(&MAGIC);
        p.extend_from_slice(&[53, 1, 5]);
        p.extend_from_slice(&[54, 4, 10, 0, 2, 2]);
        p.extend_from_slice(&[1, 4, 255, 255, 255, 0]);
        p.extend_from_slice(&[3, 4, 10, 0, 2, 2]);
        p.extend_from_slice(&[6, 4, 10, 0, 2, 3]);
        p.extend_from_slice(&[51, 4, 0, 1, 0x51, 0x80]);
        p.extend_from_slice(&[0, 0]); // pad options are skipped
        p.push(255);
        p
    }

    #[test]
    fn decode_a_slirp_ack() {
        let r = decode(&slirp_ack()).unwrap();
        assert_eq!(r.kind, MessageType::Ack);
        assert_eq!(r.xid, 0xdeadbeef);
        assert_eq!(r.your_ip, Ipv4Addr::new(10, 0, 2, 15));
        assert_eq!(r.netmask.map(prefix_len), Some(24));
        assert_eq!(r.router, Some(Ipv4Addr::new(10, 0, 2, 2)));
        assert_eq!(r.dns, vec![Ipv4Addr::new(10, 0, 2, 3)]);
        assert_eq!(r.lease_secs, Some(86_400));
        assert_eq!(r.server_id, Some(Ipv4Addr::new(10, 0, 2, 2)));
        assert_eq!(resolv_conf(&r), "nameserver 10.0.2.3\n");
    }

    #[test]
    fn lease_timers() {
        let mut r = decode(&slirp_ack()).unwrap();
        let secs = |t: Timers| (t.renew.as_secs(), t.rebind.as_secs(), t.expire.as_secs());
        assert_eq!(timers(&r).map(secs), Some((43_200, 75_600, 86_400)));
        r.renew_secs = Some(100);
        r.rebind_secs = Some(200);
        assert_eq!(timers(&r).map(secs), Some((100, 200, 86_400)));
        r.renew_secs = Some(80_000); // after T2: ignored
        r.rebind_secs = Some(90_000); // after the lease: ignored
        assert_eq!(timers(&r).map(secs), Some((43_200, 75_600, 86_400)));
        r.lease_secs = Some(u32::MAX);
        assert_eq!(timers(&r), None, "infinite lease");
        r.lease_secs = None;
        assert_eq!(timers(&r), None);
    }

    #[test]
    fn malformed_replies_are_errors() {
        let ack = slirp_ack();
        assert_eq!(decode(&ack[..100]), Err(DhcpError::NotDhcp("too short")));
        let mut req = ack.clone();
        req[0] = OP_REQUEST;
        assert!(matches!(decode(&req), Err(DhcpError::NotDhcp(_))));
        let mut cut = ack[..HEADER + 4 + 3 + 2].to_vec(); // option 54 cut short
        cut.push(10);
        assert_eq!(decode(&cut), Err(DhcpError::Truncated(54)));
        let mut untyped = ack[..HEADER + 4].to_vec();
        untyped.push(255);
        assert_eq!(decode(&untyped), Err(DhcpError::NoType));
    }
}
