//! Traffic counters: a per-batch [`Tally`] filled on the packet path, and [`Totals`] that
//! make conservation checkable.
//!
//! Invariant (conservation): every decided direction of a packet adds its IP length to
//! exactly one of `credited`/`unknown` and to `captured` for that direction, so
//! `credited + unknown == captured` holds for rx and tx at every merge point. A direction
//! still waiting in the pending buffer is counted nowhere until it is decided.

use foldhash::HashMap as FastMap;

use crate::attribute::{Credit, UnknownReason, Verdict};
use crate::table::MatchKind;
use crate::ProcessKey;

/// Bytes and packets in each direction.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    pub rx_packets: u64,
    pub tx_packets: u64,
}

/// Which end of a packet a count is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    Rx,
    Tx,
}

impl Counters {
    pub fn add_rx(&mut self, bytes: u64) {
        self.rx_bytes += bytes;
        self.rx_packets += 1;
    }

    pub fn add_tx(&mut self, bytes: u64) {
        self.tx_bytes += bytes;
        self.tx_packets += 1;
    }

    pub fn add(&mut self, dir: Direction, bytes: u64) {
        match dir {
            Direction::Rx => self.add_rx(bytes),
            Direction::Tx => self.add_tx(bytes),
        }
    }

    /// Adds another set of counters.
    pub fn absorb(&mut self, other: &Counters) {
        self.rx_bytes += other.rx_bytes;
        self.tx_bytes += other.tx_bytes;
        self.rx_packets += other.rx_packets;
        self.tx_packets += other.tx_packets;
    }

    /// `self - earlier`, saturating (counters only grow, so this is the growth since `earlier`).
    pub fn since(&self, earlier: &Counters) -> Counters {
        Counters {
            rx_bytes: self.rx_bytes.saturating_sub(earlier.rx_bytes),
            tx_bytes: self.tx_bytes.saturating_sub(earlier.tx_bytes),
            rx_packets: self.rx_packets.saturating_sub(earlier.rx_packets),
            tx_packets: self.tx_packets.saturating_sub(earlier.tx_packets),
        }
    }

    pub fn is_zero(&self) -> bool {
        *self == Counters::default()
    }

    /// The larger of each field.
    pub fn max(&self, other: &Counters) -> Counters {
        Counters {
            rx_bytes: self.rx_bytes.max(other.rx_bytes),
            tx_bytes: self.tx_bytes.max(other.tx_bytes),
            rx_packets: self.rx_packets.max(other.rx_packets),
            tx_packets: self.tx_packets.max(other.tx_packets),
        }
    }
}

/// How sure a credit is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Quality {
    /// The connected socket with both addresses.
    Exact,
    /// A listener or unconnected socket on the local address and port.
    Wildcard,
    /// A connected socket that closed within the grace period (trailing packets).
    Recent,
    /// Held in the pending buffer and credited once a refresh found the owner.
    Late,
    /// No socket's: the process that sent the frame through a packet socket
    /// ([`MatchKind::PacketSender`]).
    PacketSender,
}

/// Bytes per match quality (both directions together).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QualityBytes {
    pub exact: u64,
    pub wildcard: u64,
    pub recent: u64,
    pub late: u64,
    pub packet_sender: u64,
}

impl QualityBytes {
    fn add(&mut self, quality: Quality, bytes: u64) {
        match quality {
            Quality::Exact => self.exact += bytes,
            Quality::Wildcard => self.wildcard += bytes,
            Quality::Recent => self.recent += bytes,
            Quality::Late => self.late += bytes,
            Quality::PacketSender => self.packet_sender += bytes,
        }
    }

    pub fn absorb(&mut self, other: &QualityBytes) {
        self.exact += other.exact;
        self.wildcard += other.wildcard;
        self.recent += other.recent;
        self.late += other.late;
        self.packet_sender += other.packet_sender;
    }
}

impl From<MatchKind> for Quality {
    fn from(kind: MatchKind) -> Quality {
        match kind {
            MatchKind::Exact => Quality::Exact,
            MatchKind::Wildcard => Quality::Wildcard,
            MatchKind::Recent => Quality::Recent,
            MatchKind::PacketSender => Quality::PacketSender,
        }
    }
}

/// Bytes in `unknown` per reason (both directions together).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReasonBytes {
    pub no_socket: u64,
    pub no_process: u64,
    pub pending_expired: u64,
    pub unsupported: u64,
}

impl ReasonBytes {
    fn add(&mut self, reason: UnknownReason, bytes: u64) {
        match reason {
            UnknownReason::NoSocket => self.no_socket += bytes,
            UnknownReason::NoProcess => self.no_process += bytes,
            UnknownReason::PendingExpired => self.pending_expired += bytes,
            UnknownReason::Unsupported => self.unsupported += bytes,
        }
    }

    pub fn absorb(&mut self, other: &ReasonBytes) {
        self.no_socket += other.no_socket;
        self.no_process += other.no_process;
        self.pending_expired += other.pending_expired;
        self.unsupported += other.unsupported;
    }
}

/// Daemon-wide totals; see the module invariant.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    /// Decided IP packets with a local source (`tx`) or destination (`rx`).
    pub captured: Counters,
    pub credited: Counters,
    pub unknown: Counters,
    pub credited_by_quality: QualityBytes,
    pub unknown_by_reason: ReasonBytes,
    pub foreign_packets: u64,
    pub foreign_bytes: u64,
    /// Copies of a local packet already counted on another interface (a bridge, a route):
    /// counted apart, like foreign packets, so each local packet is counted once.
    pub transit_packets: u64,
    pub transit_bytes: u64,
    pub non_ip_packets: u64,
    pub malformed_packets: u64,
}

impl Totals {
    pub fn absorb(&mut self, other: &Totals) {
        self.captured.absorb(&other.captured);
        self.credited.absorb(&other.credited);
        self.unknown.absorb(&other.unknown);
        self.credited_by_quality.absorb(&other.credited_by_quality);
        self.unknown_by_reason.absorb(&other.unknown_by_reason);
        self.foreign_packets += other.foreign_packets;
        self.foreign_bytes += other.foreign_bytes;
        self.transit_packets += other.transit_packets;
        self.transit_bytes += other.transit_bytes;
        self.non_ip_packets += other.non_ip_packets;
        self.malformed_packets += other.malformed_packets;
    }
}

/// One process's counts in a batch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProcessTally {
    pub counters: Counters,
    pub quality: QualityBytes,
}

fn absorb_into(
    map: &mut FastMap<ProcessKey, ProcessTally>,
    key: ProcessKey,
    counts: &ProcessTally,
) {
    let entry = map.entry(key).or_default();
    entry.counters.absorb(&counts.counters);
    entry.quality.absorb(&counts.quality);
}

/// Counts of one batch of packets, kept by the capture thread without any lock and merged
/// into the shared ledger once per batch. Clearing keeps the map's capacity, so a steady
/// workload allocates nothing per packet.
#[derive(Debug, Default)]
pub struct Tally {
    /// Read only after [`Tally::flush`] (the ledger's merge does it).
    pub(crate) processes: FastMap<ProcessKey, ProcessTally>,
    /// The last process credited in each direction (tx, rx) and what it got since: a
    /// flood's packets go to one process or two, whose counts then cost no hash per
    /// packet. Moved into `processes` when another process is credited in that direction,
    /// and by [`Tally::flush`].
    last: [Option<(ProcessKey, ProcessTally)>; 2],
    pub(crate) totals: Totals,
    packets: u64,
}

impl Tally {
    /// Records one IP packet of `len` bytes with both directions decided.
    pub fn record(&mut self, verdict: &Verdict, len: u32) {
        self.packets += 1;
        match (verdict.tx, verdict.rx) {
            (None, None) => self.record_foreign(len),
            (tx, rx) => {
                if let Some(credit) = tx {
                    self.record_side(Direction::Tx, credit, false, len);
                }
                if let Some(credit) = rx {
                    self.record_side(Direction::Rx, credit, false, len);
                }
            }
        }
    }

    /// Records a packet with no local end.
    pub fn record_foreign(&mut self, len: u32) {
        self.totals.foreign_packets += 1;
        self.totals.foreign_bytes += u64::from(len);
    }

    /// Records a copy of a packet already counted on another interface.
    pub fn record_transit(&mut self, len: u32) {
        self.totals.transit_packets += 1;
        self.totals.transit_bytes += u64::from(len);
    }

    /// Records one decided direction of a packet. `late` marks a credit that waited in the
    /// pending buffer.
    pub fn record_side(&mut self, dir: Direction, credit: Credit, late: bool, len: u32) {
        let len = u64::from(len);
        self.totals.captured.add(dir, len);
        match credit {
            Credit::Process { key, kind } => {
                // A packet sender is only ever found late; its own quality says how.
                let quality = match kind {
                    MatchKind::PacketSender => Quality::PacketSender,
                    _ if late => Quality::Late,
                    _ => kind.into(),
                };
                self.totals.credited.add(dir, len);
                self.totals.credited_by_quality.add(quality, len);
                let slot = &mut self.last[dir as usize];
                if slot.as_ref().is_none_or(|(last, _)| *last != key) {
                    if let Some((last, counts)) = slot.replace((key, ProcessTally::default())) {
                        absorb_into(&mut self.processes, last, &counts);
                    }
                }
                if let Some((_, entry)) = slot {
                    entry.counters.add(dir, len);
                    entry.quality.add(quality, len);
                }
            }
            Credit::Unknown(reason) => {
                self.totals.unknown.add(dir, len);
                self.totals.unknown_by_reason.add(reason, len);
            }
        }
    }

    /// Records a frame that carried no IP packet (ARP, …).
    pub fn record_non_ip(&mut self) {
        self.packets += 1;
        self.totals.non_ip_packets += 1;
    }

    /// Records a frame whose headers could not be parsed.
    pub fn record_malformed(&mut self) {
        self.packets += 1;
        self.totals.malformed_packets += 1;
    }

    /// Counts one frame handled (for batch sizing) without recording anything.
    pub fn note_frame(&mut self) {
        self.packets += 1;
    }

    /// Frames recorded since the last merge.
    pub fn len(&self) -> u64 {
        self.packets
    }

    pub fn is_empty(&self) -> bool {
        self.packets == 0 && self.totals == Totals::default()
    }

    /// Moves the counts of the last processes credited into `processes`.
    pub(crate) fn flush(&mut self) {
        for slot in &mut self.last {
            if let Some((key, counts)) = slot.take() {
                absorb_into(&mut self.processes, key, &counts);
            }
        }
    }

    pub(crate) fn clear(&mut self) {
        self.last = [None, None];
        self.processes.clear();
        self.totals = Totals::default();
        self.packets = 0;
    }
}
