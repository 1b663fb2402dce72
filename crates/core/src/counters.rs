//! Traffic counters: a per-batch [`Tally`] filled on the packet path, and [`Totals`] that
//! make conservation checkable.
//!
//! Invariant (conservation): for every packet recorded, its IP length is added to exactly one
//! of `credited`/`unknown` per local direction, and to `rx`/`tx` captured accordingly, so
//! `credited_rx + unknown_rx == captured_rx` (and for tx) holds at every merge point.

use foldhash::HashMap as FastMap;

use crate::attribute::{Credit, Verdict};
use crate::ProcessKey;

/// Bytes and packets in each direction.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    pub rx_packets: u64,
    pub tx_packets: u64,
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
}

/// Daemon-wide totals; see the module invariant.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    /// IP packets with a local source (`tx`) or destination (`rx`).
    pub captured: Counters,
    pub credited: Counters,
    pub unknown: Counters,
    pub foreign_packets: u64,
    pub foreign_bytes: u64,
    pub non_ip_packets: u64,
    pub malformed_packets: u64,
}

impl Totals {
    pub fn absorb(&mut self, other: &Totals) {
        self.captured.absorb(&other.captured);
        self.credited.absorb(&other.credited);
        self.unknown.absorb(&other.unknown);
        self.foreign_packets += other.foreign_packets;
        self.foreign_bytes += other.foreign_bytes;
        self.non_ip_packets += other.non_ip_packets;
        self.malformed_packets += other.malformed_packets;
    }
}

/// Counts of one batch of packets, kept by the capture thread without any lock and merged
/// into the shared ledger once per batch. Clearing keeps the map's capacity, so a steady
/// workload allocates nothing per packet.
#[derive(Debug, Default)]
pub struct Tally {
    pub(crate) processes: FastMap<ProcessKey, Counters>,
    pub(crate) totals: Totals,
    packets: u64,
}

impl Tally {
    /// Records one IP packet of `len` bytes with its verdict.
    pub fn record(&mut self, verdict: &Verdict, len: u32) {
        let len = u64::from(len);
        self.packets += 1;
        if verdict.tx.is_none() && verdict.rx.is_none() {
            self.totals.foreign_packets += 1;
            self.totals.foreign_bytes += len;
            return;
        }
        if let Some(credit) = verdict.tx {
            self.totals.captured.add_tx(len);
            match credit {
                Credit::Process { key, .. } => {
                    self.totals.credited.add_tx(len);
                    self.processes.entry(key).or_default().add_tx(len);
                }
                Credit::Unknown(_) => self.totals.unknown.add_tx(len),
            }
        }
        if let Some(credit) = verdict.rx {
            self.totals.captured.add_rx(len);
            match credit {
                Credit::Process { key, .. } => {
                    self.totals.credited.add_rx(len);
                    self.processes.entry(key).or_default().add_rx(len);
                }
                Credit::Unknown(_) => self.totals.unknown.add_rx(len),
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

    /// Frames recorded since the last merge.
    pub fn len(&self) -> u64 {
        self.packets
    }

    pub fn is_empty(&self) -> bool {
        self.packets == 0
    }

    pub(crate) fn clear(&mut self) {
        self.processes.clear();
        self.totals = Totals::default();
        self.packets = 0;
    }
}
