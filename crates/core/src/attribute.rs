//! Attribution: which local socket, and so which process, each end of a packet belongs to.
//!
//! Pure and allocation-free: a packet's flow and a [`SocketTable`] in, a [`Verdict`] out.

use std::cell::Cell;
use std::time::Instant;

use pidcap_wire::{FlowKey, IpProto};

use crate::openings::{Currency, Seen};
use crate::table::{Captured, MatchKind, SocketTable};
use crate::{NetNsId, ProcessKey};

/// Why a direction of a packet went to the `unknown` bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UnknownReason {
    /// No socket matched the local end.
    NoSocket,
    /// A socket matched, but no process holds it (inode 0, or the holder was not seen).
    NoProcess,
    /// The protocol (or a packet without ports) is not attributed.
    Unsupported,
    /// The owner was still unknown when the packet's time in the pending buffer ran out.
    PendingExpired,
}

/// Who one direction of a packet is credited to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Credit {
    Process { key: ProcessKey, kind: MatchKind },
    Unknown(UnknownReason),
}

impl Credit {
    /// True when this credit found no owner and a refresh might find one.
    pub fn is_miss(self) -> bool {
        matches!(
            self,
            Credit::Unknown(UnknownReason::NoSocket | UnknownReason::NoProcess)
        )
    }
}

/// The result for one packet: `tx` when its source is local, `rx` when its destination is
/// local (a loopback packet between two local processes has both); neither means the packet
/// is foreign (counted apart).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Verdict {
    pub tx: Option<Credit>,
    pub rx: Option<Credit>,
}

impl Verdict {
    /// True when either direction is a miss worth a refresh.
    pub fn has_miss(&self) -> bool {
        self.tx.is_some_and(Credit::is_miss) || self.rx.is_some_and(Credit::is_miss)
    }
}

/// Protocols whose sockets are found by port; a packet of theirs without ports (a non-first
/// fragment, a truncated header) cannot be attributed.
fn port_based(proto: IpProto) -> bool {
    matches!(
        proto,
        IpProto::Tcp | IpProto::Udp | IpProto::UdpLite | IpProto::Sctp
    )
}

/// Attributes both ends of a packet. `ports_known` is false for non-first fragments and
/// truncated transport headers; for TCP and UDP such packets are counted but not attributed.
/// ICMP/ICMPv6 (ping sockets by echo identifier, raw sockets by protocol) and other protocols
/// (raw sockets by protocol number, ports 0) are looked up as they are. SCTP is matched by
/// ports against every (local, remote) address pair of its associations. A packet of a
/// connection the kernel translated (NAT) is looked up at each end in that end's own form of
/// the connection ([`crate::NatView`]).
pub fn attribute(table: &SocketTable, flow: &FlowKey, ports_known: bool) -> Verdict {
    attribute_current(table, flow, ports_known, &|_| Currency::Current)
}

/// [`attribute`] for one packet, whose connected records are judged by `judge` from when
/// they were seen ([`crate::Openings::judge`]): stale ones are passed over, so a 4-tuple
/// that changed hands is credited to neither its previous nor its next holder; an
/// undecided one leaves that end a miss for now (the packet waits).
pub fn attribute_current(
    table: &SocketTable,
    flow: &FlowKey,
    ports_known: bool,
    judge: &dyn Fn(Seen) -> Currency,
) -> Verdict {
    attribute_captured(table, flow, ports_known, judge, Captured::default()).0
}

/// [`attribute_current`] for a packet captured at `captured` (`None`: any time): a kept
/// socket answers only for packets captured while its holder lived, as far as known
/// ([`crate::SocketMatch::life`]); otherwise that end is a miss. Also says whether such a
/// socket was met: the verdict then depends on the capture time and is not for a cache of
/// verdicts per flow.
pub fn attribute_captured(
    table: &SocketTable,
    flow: &FlowKey,
    ports_known: bool,
    judge: &dyn Fn(Seen) -> Currency,
    captured: Captured,
) -> (Verdict, bool) {
    let supported = !port_based(flow.proto) || ports_known;
    let (tx, rx) = match table.nat_view(flow) {
        Some(view) => (view.tx, view.rx),
        // Neither end can be local: foreign, without a socket lookup (most of what a
        // capture of a busy segment sees, and every packet of such a replay).
        None if !table.may_be_local(flow.src.ip()) && !table.may_be_local(flow.dst.ip()) => {
            return (Verdict { tx: None, rx: None }, false);
        }
        None => ((flow.src, flow.dst), (flow.dst, flow.src)),
    };
    let timed = Cell::new(false);
    let side = |(local, remote)| {
        let end = End {
            proto: flow.proto,
            local,
            remote,
            supported,
        };
        side(table, end, judge, captured, &timed)
    };
    let verdict = Verdict {
        tx: side(tx),
        rx: side(rx),
    };
    (verdict, timed.get())
}

/// The credit of one end of a packet of `proto` captured at `captured`: `local` → `remote`
/// as [`attribute_captured`] decides that end (no NAT view: the caller checked there is
/// none), and whether it met a socket whose holder's life bounds it (then the credit
/// depends on the capture time). `None` when that end is not local.
pub(crate) fn attribute_end(
    table: &SocketTable,
    proto: IpProto,
    (local, remote): (std::net::SocketAddr, std::net::SocketAddr),
    ports_known: bool,
    captured: Option<Instant>,
) -> (Option<Credit>, bool) {
    let timed = Cell::new(false);
    let end = End {
        proto,
        local,
        remote,
        supported: !port_based(proto) || ports_known,
    };
    let credit = side(
        table,
        end,
        &|_| Currency::Current,
        Captured {
            at: captured,
            late: false,
        },
        &timed,
    );
    (credit, timed.get())
}

/// One end of a packet, as [`side`] looks it up.
struct End {
    proto: IpProto,
    local: std::net::SocketAddr,
    remote: std::net::SocketAddr,
    /// False when the packet's ports are not known and the protocol needs them.
    supported: bool,
}

/// Attributes both ends of a packet captured inside the network namespace `netns` on an
/// interface no other capture sees (a container's own loopback): both ends are that
/// namespace's, whatever their addresses, and are looked up only among its sockets
/// ([`SocketTable::lookup_in`]), so a loopback port used in several namespaces is never
/// credited across them. No NAT view: the kernel does not translate loopback traffic.
pub fn attribute_in(
    table: &SocketTable,
    netns: NetNsId,
    flow: &FlowKey,
    ports_known: bool,
) -> Verdict {
    let supported = !port_based(flow.proto) || ports_known;
    let side = |local, remote| {
        Some(if !supported {
            Credit::Unknown(UnknownReason::Unsupported)
        } else {
            credit_of(table.lookup_in(netns, flow.proto, local, remote))
        })
    };
    Verdict {
        tx: side(flow.src, flow.dst),
        rx: side(flow.dst, flow.src),
    }
}

/// The credit a socket match gives: its owner, or why there is none.
fn credit_of(found: Option<crate::table::SocketMatch>) -> Credit {
    match found {
        Some(m) => match m.owner {
            Some(key) => Credit::Process { key, kind: m.kind },
            None => Credit::Unknown(UnknownReason::NoProcess),
        },
        None => Credit::Unknown(UnknownReason::NoSocket),
    }
}

/// Credit for the end `local` of a packet, or `None` when that end is not on this host.
/// The end is local when a socket matches it, falling back to the host's own addresses.
/// `timed` is set when a socket kept after its holder exited was met (see
/// [`attribute_captured`]).
fn side(
    table: &SocketTable,
    end: End,
    judge: &dyn Fn(Seen) -> Currency,
    captured: Captured,
    timed: &Cell<bool>,
) -> Option<Credit> {
    let End {
        proto,
        local,
        remote,
        supported,
    } = end;
    if !supported {
        return table
            .is_local(local.ip())
            .then_some(Credit::Unknown(UnknownReason::Unsupported));
    }
    let undecided = Cell::new(false);
    let judged = |seen| {
        let currency = judge(seen);
        undecided.set(undecided.get() || currency == Currency::Undecided);
        currency
    };
    match table.lookup_captured(proto, local, remote, &judged, captured) {
        Some(m) if !m.life.is_unbounded() => {
            timed.set(true);
            let outside = captured.at.is_some_and(|at| m.life.excludes(at));
            Some(credit_of((!outside).then_some(m)))
        }
        Some(m) => Some(credit_of(Some(m))),
        // A record of this end exists (so it is local): the packet waits for its verdict.
        None if undecided.get() => Some(Credit::Unknown(UnknownReason::NoSocket)),
        None => table
            .is_local(local.ip())
            .then_some(Credit::Unknown(UnknownReason::NoSocket)),
    }
}
