//! Tracepoint record layouts, read from tracefs `format` files, and typed views over records.
//!
//! A tracepoint's raw record is a C struct whose layout the kernel publishes in
//! `events/<system>/<name>/format` (`field:__u16 sport; offset:24; size:2; signed:0;`). Offsets
//! change between kernel versions, so they are never hard-coded: [`TraceFormat::parse`] reads
//! them, and each layout ([`SetStateLayout`], [`SockIoLayout`], [`SyscallLayout`],
//! [`RouteLayout`]) checks, once, that every field its decoder needs is present with the size
//! it expects. Decoding a record then only indexes bytes; a record too short for the layout
//! decodes to `None`, never panics.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use pidcap_wire::IpProto;

use crate::error::{Error, Result};

/// One field of a tracepoint record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceField {
    pub name: String,
    pub offset: usize,
    pub size: usize,
}

/// A tracepoint's id and record layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceFormat {
    pub name: String,
    pub id: u64,
    pub fields: Vec<TraceField>,
}

impl TraceFormat {
    /// Parses the text of a tracefs `format` file. `what` names it in errors.
    pub fn parse(what: &str, text: &str) -> Result<TraceFormat> {
        let mut name = None;
        let mut id = None;
        let mut fields = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if let Some(v) = line.strip_prefix("name:") {
                name = Some(v.trim().to_string());
            } else if let Some(v) = line.strip_prefix("ID:") {
                let v = v.trim();
                id = Some(
                    v.parse()
                        .map_err(|_| Error::parse(what, n + 1, format!("bad ID {v:?}")))?,
                );
            } else if line.starts_with("field:") {
                fields.push(parse_field(line).ok_or_else(|| {
                    Error::parse(what, n + 1, format!("bad field line {line:?}"))
                })?);
            }
        }
        Ok(TraceFormat {
            name: name.ok_or_else(|| Error::parse(what, 0, "no name: line"))?,
            id: id.ok_or_else(|| Error::parse(what, 0, "no ID: line"))?,
            fields,
        })
    }

    /// The offset of field `name`, checked to be `size` bytes long.
    fn offset_of(&self, name: &str, size: usize) -> Result<usize> {
        let field = self
            .fields
            .iter()
            .find(|f| f.name == name)
            .ok_or_else(|| Error::parse(&self.name, 0, format!("no field {name}")))?;
        if field.size != size {
            return Err(Error::parse(
                &self.name,
                0,
                format!("field {name} is {} bytes, expected {size}", field.size),
            ));
        }
        Ok(field.offset)
    }
}

/// `field:<type> <name>[<n>];\toffset:<o>;\tsize:<s>;\tsigned:<0|1>;`
fn parse_field(line: &str) -> Option<TraceField> {
    let mut parts = line.split(';').map(str::trim);
    let decl = parts.next()?.strip_prefix("field:")?;
    let name = decl.rsplit([' ', '*']).next()?;
    let name = name.split('[').next()?.to_string();
    let mut offset = None;
    let mut size = None;
    for part in parts {
        if let Some(v) = part.strip_prefix("offset:") {
            offset = v.parse().ok();
        } else if let Some(v) = part.strip_prefix("size:") {
            size = v.parse().ok();
        }
    }
    Some(TraceField {
        name,
        offset: offset?,
        size: size?,
    })
}

/// Reads `N` bytes at `at`, if the record has them.
fn bytes<const N: usize>(raw: &[u8], at: usize) -> Option<[u8; N]> {
    raw.get(at..at.checked_add(N)?)?.try_into().ok()
}

/// The common header every record starts with: the tracepoint id (`common_type`).
pub fn record_type(raw: &[u8]) -> Option<u16> {
    bytes::<2>(raw, 0).map(u16::from_ne_bytes)
}

const AF_INET: u16 = libc::AF_INET as u16;
const AF_INET6: u16 = libc::AF_INET6 as u16;

/// A TCP state change (`sock:inet_sock_set_state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SetState {
    /// The kernel's address of the socket: its identity from creation to the `CLOSE` change.
    pub sk: u64,
    pub old: i32,
    pub new: i32,
    /// IANA protocol number (6 for TCP; SCTP and MPTCP also change state).
    pub protocol: u16,
    /// The socket's own address and its peer's; IPv4-mapped IPv6 addresses as IPv4.
    pub local: SocketAddr,
    pub remote: SocketAddr,
}

/// Field offsets of `sock:inet_sock_set_state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SetStateLayout {
    pub id: u16,
    sk: usize,
    old: usize,
    new: usize,
    sport: usize,
    dport: usize,
    family: usize,
    protocol: usize,
    saddr: usize,
    daddr: usize,
    saddr_v6: usize,
    daddr_v6: usize,
}

impl SetStateLayout {
    pub fn new(format: &TraceFormat) -> Result<SetStateLayout> {
        let f = format;
        Ok(SetStateLayout {
            id: trace_id(f)?,
            sk: f.offset_of("skaddr", 8)?,
            old: f.offset_of("oldstate", 4)?,
            new: f.offset_of("newstate", 4)?,
            sport: f.offset_of("sport", 2)?,
            dport: f.offset_of("dport", 2)?,
            family: f.offset_of("family", 2)?,
            protocol: f.offset_of("protocol", 2)?,
            saddr: f.offset_of("saddr", 4)?,
            daddr: f.offset_of("daddr", 4)?,
            saddr_v6: f.offset_of("saddr_v6", 16)?,
            daddr_v6: f.offset_of("daddr_v6", 16)?,
        })
    }

    /// Decodes a raw record; `None` if it is too short or of an unknown address family.
    pub fn decode(&self, raw: &[u8]) -> Option<SetState> {
        let u16_at = |at| bytes::<2>(raw, at).map(u16::from_ne_bytes);
        let i32_at = |at| bytes::<4>(raw, at).map(i32::from_ne_bytes);
        let (saddr, daddr): (IpAddr, IpAddr) = match u16_at(self.family)? {
            AF_INET => (
                Ipv4Addr::from(bytes::<4>(raw, self.saddr)?).into(),
                Ipv4Addr::from(bytes::<4>(raw, self.daddr)?).into(),
            ),
            AF_INET6 => (
                Ipv6Addr::from(bytes::<16>(raw, self.saddr_v6)?).to_canonical(),
                Ipv6Addr::from(bytes::<16>(raw, self.daddr_v6)?).to_canonical(),
            ),
            _ => return None,
        };
        Some(SetState {
            sk: bytes::<8>(raw, self.sk).map(u64::from_ne_bytes)?,
            old: i32_at(self.old)?,
            new: i32_at(self.new)?,
            protocol: u16_at(self.protocol)?,
            local: SocketAddr::new(saddr, u16_at(self.sport)?),
            remote: SocketAddr::new(daddr, u16_at(self.dport)?),
        })
    }
}

/// Field offsets of `sock:sock_send_length` and `sock:sock_recv_length` (same layout): a
/// process moved data through socket `sk`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SockIoLayout {
    pub id: u16,
    /// `sock_send_length` (else `sock_recv_length`).
    pub send: bool,
    sk: usize,
    family: usize,
    ret: usize,
}

/// One send or receive as [`SockIoLayout::decode`] reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SockIo {
    /// The socket's kernel address.
    pub sk: u64,
    /// Its address family (`AF_INET`, `AF_PACKET`, …).
    pub family: u16,
    /// The bytes sent or received; negative: the call failed.
    pub ret: i32,
}

impl SockIoLayout {
    pub fn new(format: &TraceFormat) -> Result<SockIoLayout> {
        Ok(SockIoLayout {
            id: trace_id(format)?,
            send: format.name == "sock_send_length",
            sk: format.offset_of("sk", 8)?,
            family: format.offset_of("family", 2)?,
            ret: format.offset_of("ret", 4)?,
        })
    }

    /// The record's socket, family and length; `None` if the record is too short.
    pub fn decode(&self, raw: &[u8]) -> Option<SockIo> {
        Some(SockIo {
            sk: bytes::<8>(raw, self.sk).map(u64::from_ne_bytes)?,
            family: bytes::<2>(raw, self.family).map(u16::from_ne_bytes)?,
            ret: bytes::<4>(raw, self.ret).map(i32::from_ne_bytes)?,
        })
    }
}

/// Field offsets of a system-call tracepoint (`syscalls:sys_enter_connect`, whose argument
/// `fd` is read, or `syscalls:sys_exit_connect`, whose `ret` is): one integer argument,
/// stored 8 bytes wide (4 on some architectures).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyscallLayout {
    pub id: u16,
    at: usize,
    size: usize,
}

impl SyscallLayout {
    /// The layout of `format`'s integer field `field`.
    pub fn new(format: &TraceFormat, field: &str) -> Result<SyscallLayout> {
        let f = format
            .fields
            .iter()
            .find(|f| f.name == field)
            .ok_or_else(|| Error::parse(&format.name, 0, format!("no field {field}")))?;
        if f.size != 8 && f.size != 4 {
            return Err(Error::parse(
                &format.name,
                0,
                format!("field {field} is {} bytes, expected 4 or 8", f.size),
            ));
        }
        Ok(SyscallLayout {
            id: trace_id(format)?,
            at: f.offset,
            size: f.size,
        })
    }

    /// The argument (or return value), sign-extended; `None` if the record is too short.
    pub fn decode(&self, raw: &[u8]) -> Option<i64> {
        match self.size {
            8 => bytes::<8>(raw, self.at).map(i64::from_ne_bytes),
            _ => bytes::<4>(raw, self.at).map(|b| i64::from(i32::from_ne_bytes(b))),
        }
    }
}

/// The arguments of a `bind()` as `syscalls:sys_enter_bind` records them: the fd, and where
/// and how long the caller's `sockaddr` is (a user address: the record does not copy it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BindArgs {
    pub fd: i32,
    pub addr_ptr: u64,
    pub addr_len: u64,
}

/// Field offsets of `syscalls:sys_enter_bind` (`fd`, `umyaddr`, `addrlen`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BindLayout {
    pub id: u16,
    fd: SyscallLayout,
    addr: SyscallLayout,
    len: SyscallLayout,
}

impl BindLayout {
    pub fn new(format: &TraceFormat) -> Result<BindLayout> {
        Ok(BindLayout {
            id: trace_id(format)?,
            fd: SyscallLayout::new(format, "fd")?,
            addr: SyscallLayout::new(format, "umyaddr")?,
            len: SyscallLayout::new(format, "addrlen")?,
        })
    }

    /// Decodes a raw record; `None` if it is too short or the fd is out of range.
    pub fn decode(&self, raw: &[u8]) -> Option<BindArgs> {
        Some(BindArgs {
            fd: i32::try_from(self.fd.decode(raw)?).ok()?,
            addr_ptr: self.addr.decode(raw)? as u64,
            addr_len: self.len.decode(raw)? as u64,
        })
    }
}

const SOCKADDR_IN: usize = 16;
const SOCKADDR_IN6: usize = 28;

/// The IP socket address a `bind()` was given, read from a copy of the caller's stack:
/// `stack` is the memory from the user stack pointer `sp` up (a perf `STACK_USER` dump taken
/// at the syscall's entry), the `sockaddr` is `len` bytes at user address `ptr`. `None`
/// unless the whole `sockaddr_in` or `sockaddr_in6` lies inside the copy (an address built
/// on the heap is not there) and `len` is its size. Never panics, whatever the inputs.
pub fn sockaddr_in_stack(stack: &[u8], sp: u64, ptr: u64, len: u64) -> Option<SocketAddr> {
    let start = usize::try_from(ptr.checked_sub(sp)?).ok()?;
    let len = usize::try_from(len).ok()?;
    let raw = stack.get(start..start.checked_add(len)?)?;
    let family = u16::from_ne_bytes(bytes::<2>(raw, 0)?);
    let port = u16::from_be_bytes(bytes::<2>(raw, 2)?);
    let ip: IpAddr = match (family, len) {
        (AF_INET, SOCKADDR_IN) => Ipv4Addr::from(bytes::<4>(raw, 4)?).into(),
        (AF_INET6, SOCKADDR_IN6) => Ipv6Addr::from(bytes::<16>(raw, 8)?).to_canonical(),
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// Records carry the id as a 16-bit `common_type`.
fn trace_id(format: &TraceFormat) -> Result<u16> {
    u16::try_from(format.id)
        .map_err(|_| Error::parse(&format.name, 0, format!("ID {} over 16 bits", format.id)))
}

/// A route lookup (`fib:fib_table_lookup`, `fib6:fib6_table_lookup`) as the kernel records
/// it: the flow it routes. Inside a `connect()` that is the socket's own view of its
/// connection — `local` is its bound port, with the source address the kernel chose, or
/// the unspecified address when it has not chosen one yet (IPv6 connects, unbound sends).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteLookup {
    pub proto: IpProto,
    pub local: SocketAddr,
    pub remote: SocketAddr,
}

/// Field offsets of `fib:fib_table_lookup` (4-byte addresses) or `fib6:fib6_table_lookup`
/// (16-byte addresses): the family follows from the size of `src`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteLayout {
    pub id: u16,
    v6: bool,
    proto: usize,
    src: usize,
    dst: usize,
    sport: usize,
    dport: usize,
}

impl RouteLayout {
    pub fn new(format: &TraceFormat) -> Result<RouteLayout> {
        let f = format;
        let v6 = f.fields.iter().any(|x| x.name == "src" && x.size == 16);
        let len = if v6 { 16 } else { 4 };
        Ok(RouteLayout {
            id: trace_id(f)?,
            v6,
            proto: f.offset_of("proto", 1)?,
            src: f.offset_of("src", len)?,
            dst: f.offset_of("dst", len)?,
            sport: f.offset_of("sport", 2)?,
            dport: f.offset_of("dport", 2)?,
        })
    }

    /// Decodes a raw record; `None` if it is too short.
    pub fn decode(&self, raw: &[u8]) -> Option<RouteLookup> {
        let u16_at = |at| bytes::<2>(raw, at).map(u16::from_ne_bytes);
        let (src, dst): (IpAddr, IpAddr) = if self.v6 {
            (
                Ipv6Addr::from(bytes::<16>(raw, self.src)?).to_canonical(),
                Ipv6Addr::from(bytes::<16>(raw, self.dst)?).to_canonical(),
            )
        } else {
            (
                Ipv4Addr::from(bytes::<4>(raw, self.src)?).into(),
                Ipv4Addr::from(bytes::<4>(raw, self.dst)?).into(),
            )
        };
        Some(RouteLookup {
            proto: IpProto::from(bytes::<1>(raw, self.proto)?[0]),
            local: SocketAddr::new(src, u16_at(self.sport)?),
            remote: SocketAddr::new(dst, u16_at(self.dport)?),
        })
    }
}
