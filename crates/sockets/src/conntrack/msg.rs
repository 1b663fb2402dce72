//! ctnetlink messages: a `IPCTNL_MSG_CT_GET` request for one tuple, and the connection in
//! the kernel's reply (its original and reply tuples). Pure: bytes in, bytes out.
//!
//! Layout (linux/netfilter/nfnetlink_conntrack.h): `nlmsghdr`, `nfgenmsg` (family, version,
//! resource id), then attributes in host byte order whose payloads are in network byte order:
//! `CTA_TUPLE_ORIG` / `CTA_TUPLE_REPLY` → { `CTA_TUPLE_IP` → { v4/v6 src, dst },
//! `CTA_TUPLE_PROTO` → { protocol, ports, or ICMP id, type, code } }.
//!
//! ICMP echo tuples become flows the way `pidcap_wire` writes them: the echo identifier is
//! the requester's port (the source of a request, the destination of a reply), the other
//! port 0.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use pidcap_core::Translation;
use pidcap_wire::{FlowKey, IpProto};

const NLMSG_HDRLEN: usize = 16;
const NFGENMSG_LEN: usize = 4;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 1;
const NLA_F_NESTED: u16 = 1 << 15;
const NLA_TYPE_MASK: u16 = !(NLA_F_NESTED | (1 << 14));

/// `NFNL_SUBSYS_CTNETLINK << 8 | IPCTNL_MSG_CT_GET`.
const CT_GET: u16 = (1 << 8) | 1;
/// `NFNL_SUBSYS_CTNETLINK << 8 | IPCTNL_MSG_CT_NEW`: a connection, as replies carry it.
const CT_NEW: u16 = 1 << 8;

const CTA_TUPLE_ORIG: u16 = 1;
const CTA_TUPLE_REPLY: u16 = 2;
const CTA_TUPLE_IP: u16 = 1;
const CTA_TUPLE_PROTO: u16 = 2;
const CTA_IP_V4_SRC: u16 = 1;
const CTA_IP_V4_DST: u16 = 2;
const CTA_IP_V6_SRC: u16 = 3;
const CTA_IP_V6_DST: u16 = 4;
const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTO_SRC_PORT: u16 = 2;
const CTA_PROTO_DST_PORT: u16 = 3;
const CTA_PROTO_ICMP_ID: u16 = 4;
const CTA_PROTO_ICMP_TYPE: u16 = 5;
const CTA_PROTO_ICMP_CODE: u16 = 6;
const CTA_PROTO_ICMPV6_ID: u16 = 7;
const CTA_PROTO_ICMPV6_TYPE: u16 = 8;
const CTA_PROTO_ICMPV6_CODE: u16 = 9;

const ICMP_ECHO_REQUEST: u8 = 8;
const ICMP_ECHO_REPLY: u8 = 0;
const ICMPV6_ECHO_REQUEST: u8 = 128;
const ICMPV6_ECHO_REPLY: u8 = 129;

/// What the kernel answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// The connection the tuple belongs to.
    Found(Translation),
    /// An error (positive errno; `ENOENT`: no such connection).
    Failed(i32),
}

/// Why a reply could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed ctnetlink reply: {0}")]
pub struct Malformed(pub &'static str);

/// Whether the connection tracker can be asked about `flow`'s protocol (ICMP: echoes only).
pub fn trackable(flow: &FlowKey) -> bool {
    match flow.proto {
        IpProto::Tcp | IpProto::Udp | IpProto::UdpLite | IpProto::Sctp => true,
        IpProto::Icmp | IpProto::Icmpv6 => (flow.src.port() == 0) != (flow.dst.port() == 0),
        _ => false,
    }
}

/// A `IPCTNL_MSG_CT_GET` request, sequence `seq`, for the connection `flow` is a tuple of.
/// `flow` must be [`trackable`] and of one address family.
pub fn get_request(flow: &FlowKey, seq: u32) -> Vec<u8> {
    let family = match flow.src.ip() {
        IpAddr::V4(_) => libc::AF_INET as u8,
        IpAddr::V6(_) => libc::AF_INET6 as u8,
    };
    let mut body = vec![family, 0, 0, 0];
    nested(&mut body, CTA_TUPLE_ORIG, |t| tuple(t, flow));
    let mut msg = Vec::with_capacity(NLMSG_HDRLEN + body.len());
    msg.extend_from_slice(&((NLMSG_HDRLEN + body.len()) as u32).to_ne_bytes());
    msg.extend_from_slice(&CT_GET.to_ne_bytes());
    msg.extend_from_slice(&NLM_F_REQUEST.to_ne_bytes());
    msg.extend_from_slice(&seq.to_ne_bytes());
    msg.extend_from_slice(&0u32.to_ne_bytes());
    msg.extend_from_slice(&body);
    msg
}

/// Reads the answer to request `seq` from one reply datagram.
pub fn parse_answer(datagram: &[u8], seq: u32) -> Result<Answer, Malformed> {
    let mut rest = datagram;
    while rest.len() >= NLMSG_HDRLEN {
        let len = u32_at(rest, 0) as usize;
        if len < NLMSG_HDRLEN || len > rest.len() {
            return Err(Malformed("netlink message length"));
        }
        let (msg, next) = rest.split_at(align(len).min(rest.len()));
        rest = next;
        if u32_at(msg, 8) != seq {
            continue;
        }
        let body = &msg[NLMSG_HDRLEN..len];
        return match u16_at(msg, 4) {
            NLMSG_ERROR => {
                let errno = body.get(..4).ok_or(Malformed("error message"))?;
                let errno = i32::from_ne_bytes([errno[0], errno[1], errno[2], errno[3]]);
                Ok(Answer::Failed(errno.saturating_neg()))
            }
            CT_NEW => connection(body).map(Answer::Found),
            _ => Err(Malformed("unexpected message type")),
        };
    }
    Err(Malformed("no message answers the request"))
}

/// The two tuples of a connection message's body.
fn connection(body: &[u8]) -> Result<Translation, Malformed> {
    let attrs = body.get(NFGENMSG_LEN..).ok_or(Malformed("nfgenmsg"))?;
    let (mut orig, mut reply) = (None, None);
    for (kind, value) in Attrs(attrs) {
        match kind? {
            CTA_TUPLE_ORIG => orig = Some(parse_tuple(value)?),
            CTA_TUPLE_REPLY => reply = Some(parse_tuple(value)?),
            _ => {}
        }
    }
    match (orig, reply) {
        (Some(orig), Some(reply)) if orig.proto == reply.proto => Ok(Translation { orig, reply }),
        (Some(_), Some(_)) => Err(Malformed("tuples of two protocols")),
        _ => Err(Malformed("a tuple is missing")),
    }
}

#[derive(Default)]
struct TupleParts {
    src: Option<IpAddr>,
    dst: Option<IpAddr>,
    proto: Option<u8>,
    sport: u16,
    dport: u16,
    icmp_id: Option<u16>,
    icmp_type: Option<u8>,
}

fn parse_tuple(value: &[u8]) -> Result<FlowKey, Malformed> {
    let mut parts = TupleParts::default();
    for (kind, inner) in Attrs(value) {
        match kind? {
            CTA_TUPLE_IP => addresses(inner, &mut parts)?,
            CTA_TUPLE_PROTO => protocol(inner, &mut parts)?,
            _ => {}
        }
    }
    let (Some(src), Some(dst), Some(proto)) = (parts.src, parts.dst, parts.proto) else {
        return Err(Malformed("tuple without addresses or protocol"));
    };
    let proto = IpProto::from(proto);
    let (sport, dport) = match (proto, parts.icmp_id, parts.icmp_type) {
        (IpProto::Icmp | IpProto::Icmpv6, Some(id), Some(kind)) => match kind {
            ICMP_ECHO_REQUEST | ICMPV6_ECHO_REQUEST => (id, 0),
            ICMP_ECHO_REPLY | ICMPV6_ECHO_REPLY => (0, id),
            _ => return Err(Malformed("ICMP tuple that is not an echo")),
        },
        _ => (parts.sport, parts.dport),
    };
    Ok(FlowKey {
        proto,
        src: SocketAddr::new(src, sport),
        dst: SocketAddr::new(dst, dport),
    })
}

fn addresses(value: &[u8], parts: &mut TupleParts) -> Result<(), Malformed> {
    for (kind, v) in Attrs(value) {
        let kind = kind?;
        let ip = match (kind, v.len()) {
            (CTA_IP_V4_SRC | CTA_IP_V4_DST, 4) => IpAddr::V4(Ipv4Addr::new(v[0], v[1], v[2], v[3])),
            (CTA_IP_V6_SRC | CTA_IP_V6_DST, 16) => {
                let mut octets = [0u8; 16];
                octets.copy_from_slice(v);
                IpAddr::V6(Ipv6Addr::from(octets))
            }
            (CTA_IP_V4_SRC | CTA_IP_V4_DST | CTA_IP_V6_SRC | CTA_IP_V6_DST, _) => {
                return Err(Malformed("address length"))
            }
            _ => continue,
        };
        match kind {
            CTA_IP_V4_SRC | CTA_IP_V6_SRC => parts.src = Some(ip),
            _ => parts.dst = Some(ip),
        }
    }
    Ok(())
}

fn protocol(value: &[u8], parts: &mut TupleParts) -> Result<(), Malformed> {
    for (kind, v) in Attrs(value) {
        let kind = kind?;
        let u8_value = || v.first().copied().ok_or(Malformed("short attribute"));
        let u16_value = || match v {
            [a, b, ..] => Ok(u16::from_be_bytes([*a, *b])),
            _ => Err(Malformed("short attribute")),
        };
        match kind {
            CTA_PROTO_NUM => parts.proto = Some(u8_value()?),
            CTA_PROTO_SRC_PORT => parts.sport = u16_value()?,
            CTA_PROTO_DST_PORT => parts.dport = u16_value()?,
            CTA_PROTO_ICMP_ID | CTA_PROTO_ICMPV6_ID => parts.icmp_id = Some(u16_value()?),
            CTA_PROTO_ICMP_TYPE | CTA_PROTO_ICMPV6_TYPE => parts.icmp_type = Some(u8_value()?),
            _ => {}
        }
    }
    Ok(())
}

/// The attributes of a buffer: (type without flags, payload), or why the next is malformed.
struct Attrs<'a>(&'a [u8]);

impl<'a> Iterator for Attrs<'a> {
    type Item = (Result<u16, Malformed>, &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        if self.0.len() < 4 {
            return None;
        }
        let len = usize::from(u16_at(self.0, 0));
        let kind = u16_at(self.0, 2) & NLA_TYPE_MASK;
        if len < 4 || len > self.0.len() {
            self.0 = &[];
            return Some((Err(Malformed("attribute length")), &[]));
        }
        let value = &self.0[4..len];
        self.0 = self.0.get(align(len)..).unwrap_or_default();
        Some((Ok(kind), value))
    }
}

fn tuple(out: &mut Vec<u8>, flow: &FlowKey) {
    nested(out, CTA_TUPLE_IP, |ip| {
        match (flow.src.ip(), flow.dst.ip()) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                attr(ip, CTA_IP_V4_SRC, &s.octets());
                attr(ip, CTA_IP_V4_DST, &d.octets());
            }
            (s, d) => {
                attr(ip, CTA_IP_V6_SRC, &v6(s).octets());
                attr(ip, CTA_IP_V6_DST, &v6(d).octets());
            }
        }
    });
    nested(out, CTA_TUPLE_PROTO, |p| {
        attr(p, CTA_PROTO_NUM, &[u8::from(flow.proto)]);
        match flow.proto {
            IpProto::Icmp | IpProto::Icmpv6 => icmp(p, flow),
            _ => {
                attr(p, CTA_PROTO_SRC_PORT, &flow.src.port().to_be_bytes());
                attr(p, CTA_PROTO_DST_PORT, &flow.dst.port().to_be_bytes());
            }
        }
    });
}

/// An echo request carries its identifier as its source port, a reply as its destination.
fn icmp(out: &mut Vec<u8>, flow: &FlowKey) {
    let request = flow.src.port() != 0;
    let id = if request {
        flow.src.port()
    } else {
        flow.dst.port()
    };
    let (id_attr, type_attr, code_attr, kind) = match (flow.proto, request) {
        (IpProto::Icmp, true) => (
            CTA_PROTO_ICMP_ID,
            CTA_PROTO_ICMP_TYPE,
            CTA_PROTO_ICMP_CODE,
            ICMP_ECHO_REQUEST,
        ),
        (IpProto::Icmp, false) => (
            CTA_PROTO_ICMP_ID,
            CTA_PROTO_ICMP_TYPE,
            CTA_PROTO_ICMP_CODE,
            ICMP_ECHO_REPLY,
        ),
        (_, true) => (
            CTA_PROTO_ICMPV6_ID,
            CTA_PROTO_ICMPV6_TYPE,
            CTA_PROTO_ICMPV6_CODE,
            ICMPV6_ECHO_REQUEST,
        ),
        (_, false) => (
            CTA_PROTO_ICMPV6_ID,
            CTA_PROTO_ICMPV6_TYPE,
            CTA_PROTO_ICMPV6_CODE,
            ICMPV6_ECHO_REPLY,
        ),
    };
    attr(out, id_attr, &id.to_be_bytes());
    attr(out, type_attr, &[kind]);
    attr(out, code_attr, &[0]);
}

fn v6(ip: IpAddr) -> Ipv6Addr {
    match ip {
        IpAddr::V6(v6) => v6,
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
    }
}

fn attr(out: &mut Vec<u8>, kind: u16, value: &[u8]) {
    let len = 4 + value.len();
    out.extend_from_slice(&(len as u16).to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(value);
    out.resize(out.len() + align(len) - len, 0);
}

fn nested(out: &mut Vec<u8>, kind: u16, fill: impl FnOnce(&mut Vec<u8>)) {
    let start = out.len();
    out.extend_from_slice(&[0, 0]);
    out.extend_from_slice(&(kind | NLA_F_NESTED).to_ne_bytes());
    fill(out);
    let len = (out.len() - start) as u16;
    out[start..start + 2].copy_from_slice(&len.to_ne_bytes());
}

const fn align(len: usize) -> usize {
    (len + 3) & !3
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_ne_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow(proto: IpProto, src: &str, dst: &str) -> FlowKey {
        FlowKey {
            proto,
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
        }
    }

    /// A reply message carrying `t`, as the kernel builds one (plus an attribute the reader
    /// does not know, which it skips).
    fn reply(t: &Translation, seq: u32) -> Vec<u8> {
        let mut body = vec![libc::AF_INET as u8, 0, 0, 0];
        nested(&mut body, CTA_TUPLE_ORIG, |b| tuple(b, &t.orig));
        nested(&mut body, CTA_TUPLE_REPLY, |b| tuple(b, &t.reply));
        attr(&mut body, 3, &0x8eu32.to_be_bytes()); // CTA_STATUS
        let mut msg = Vec::new();
        msg.extend_from_slice(&((NLMSG_HDRLEN + body.len()) as u32).to_ne_bytes());
        msg.extend_from_slice(&CT_NEW.to_ne_bytes());
        msg.extend_from_slice(&0u16.to_ne_bytes());
        msg.extend_from_slice(&seq.to_ne_bytes());
        msg.extend_from_slice(&0u32.to_ne_bytes());
        msg.extend_from_slice(&body);
        msg
    }

    #[test]
    fn a_connection_reads_back_as_it_was_written() {
        let cases = [
            Translation {
                orig: flow(IpProto::Tcp, "172.17.0.2:40000", "198.51.100.7:80"),
                reply: flow(IpProto::Tcp, "198.51.100.7:80", "192.0.2.1:61000"),
            },
            Translation {
                orig: flow(IpProto::Udp, "[fd00::2]:5000", "[2001:db8::7]:53"),
                reply: flow(IpProto::Udp, "[2001:db8::7]:53", "[2001:db8::1]:5000"),
            },
            Translation {
                orig: flow(IpProto::Icmp, "172.17.0.2:77", "198.51.100.7:0"),
                reply: flow(IpProto::Icmp, "198.51.100.7:0", "192.0.2.1:1024"),
            },
        ];
        for t in cases {
            assert_eq!(parse_answer(&reply(&t, 9), 9), Ok(Answer::Found(t)));
            assert_eq!(
                parse_answer(&reply(&t, 9), 10),
                Err(Malformed("no message answers the request"))
            );
        }
    }

    #[test]
    fn a_request_names_the_tuple_and_an_error_reads_as_its_errno() {
        let f = flow(IpProto::Tcp, "192.0.2.1:61000", "198.51.100.7:80");
        let req = get_request(&f, 5);
        assert_eq!(u32_at(&req, 0) as usize, req.len());
        assert_eq!(u16_at(&req, 4), CT_GET);
        let body = &req[NLMSG_HDRLEN + NFGENMSG_LEN..];
        let (kind, value) = Attrs(body).next().unwrap();
        assert_eq!(kind, Ok(CTA_TUPLE_ORIG));
        assert_eq!(parse_tuple(value), Ok(f));

        let mut err = Vec::new();
        err.extend_from_slice(&36u32.to_ne_bytes());
        err.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
        err.extend_from_slice(&0u16.to_ne_bytes());
        err.extend_from_slice(&5u32.to_ne_bytes());
        err.extend_from_slice(&0u32.to_ne_bytes());
        err.extend_from_slice(&(-libc::ENOENT).to_ne_bytes());
        err.extend_from_slice(&req[..16]);
        assert_eq!(parse_answer(&err, 5), Ok(Answer::Failed(libc::ENOENT)));
    }

    #[test]
    fn truncated_or_garbled_replies_are_errors_not_panics() {
        let t = Translation {
            orig: flow(IpProto::Tcp, "172.17.0.2:40000", "198.51.100.7:80"),
            reply: flow(IpProto::Tcp, "198.51.100.7:80", "192.0.2.1:61000"),
        };
        let whole = reply(&t, 1);
        for cut in 0..whole.len() {
            let _ = parse_answer(&whole[..cut], 1);
            let mut bent = whole.clone();
            bent[cut] ^= 0xff;
            let _ = parse_answer(&bent, 1);
        }
    }

    #[test]
    fn only_ports_and_echoes_are_asked_about() {
        assert!(trackable(&flow(IpProto::Udp, "10.0.0.1:1", "10.0.0.2:2")));
        assert!(trackable(&flow(IpProto::Icmp, "10.0.0.1:7", "10.0.0.2:0")));
        assert!(!trackable(&flow(IpProto::Icmp, "10.0.0.1:0", "10.0.0.2:0")));
        assert!(!trackable(&flow(
            IpProto::Unknown(47),
            "10.0.0.1:0",
            "10.0.0.2:0"
        )));
    }
}
