//! The packet path: capture → parse → attribute → tally, on its own thread.
//!
//! Invariants: nothing here blocks on anything but libpcap; each packet is attributed with
//! the newest table (one atomic generation check per packet); the ledger mutex is taken once
//! per batch (at most `BATCH` packets or `FLUSH_EVERY` of capture time), never per packet;
//! a direction whose owner is unknown waits in the bounded pending buffer and a refresh is
//! requested without waiting. Malformed frames are counted, never fatal. A live capture whose
//! interface goes away is reopened when it returns (backoff up to [`REOPEN_MAX_WAIT`]); in
//! between, pending packets are still decided, the heartbeat goes on, and queries are served.
//! Reopening needs CAP_NET_RAW and CAP_NET_ADMIN, which is why the daemon keeps them.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use pidcap_capture::{CaptureError, LiveConfig, Next, Source};
use pidcap_core::{
    Arrival, AttributionCache, CopyCheck, CopyFilter, CopyPacket, Direction, FragmentMap, Pending,
    SocketTable, Tally, Verdict,
};
use pidcap_wire::{parse, FlowKey, IpProto, LinkDirection, LinkType, PacketMeta, WireError};
use tracing::{debug, info, warn};

use crate::inbox::MissSignal;
use crate::state::{CaptureLevels, DaemonState};
use crate::tap::{TapMark, Tapped};

/// Packets handled between two merges into the ledger.
pub const BATCH: u64 = 4096;
/// Longest time counts wait on the capture thread before they are merged.
pub const FLUSH_EVERY: Duration = Duration::from_millis(50);
/// How often libpcap's counters are read.
const STATS_EVERY: Duration = Duration::from_secs(1);
/// First wait before trying to reopen a capture whose interface went away; doubled per try.
const REOPEN_FIRST_WAIT: Duration = Duration::from_millis(100);
/// Longest wait between two tries to reopen the capture.
pub const REOPEN_MAX_WAIT: Duration = Duration::from_secs(5);

/// Why the capture loop ended.
#[derive(Debug, PartialEq, Eq)]
pub enum End {
    /// Asked to stop.
    Stopped,
    /// The replayed file is finished.
    EndOfFile,
}

/// Runs the capture loop until `stop` is set or the file ends.
#[derive(Debug)]
pub struct Pipeline {
    pub source: Source,
    pub shared: Arc<DaemonState>,
    pub misses: MissSignal,
    /// Each flow's verdict, until the table changes under it (bounded; emptied when full).
    pub cache: AttributionCache,
    pub pending: Pending,
    pub fragments: FragmentMap,
    pub stop: Arc<AtomicBool>,
    /// How to reopen a live capture whose interface went away; `None` for a file.
    pub reopen: Option<LiveConfig>,
}

/// The capture thread's own state: nothing here is shared or locked; `stats` reads a copy
/// of its levels published once per batch.
struct CaptureState {
    tally: Tally,
    cache: AttributionCache,
    copies: CopyFilter,
    pending: Pending,
    fragments: FragmentMap,
    table: Arc<SocketTable>,
    /// Capture timestamp of the first packet since the last merge. Packet timestamps, not
    /// the clock, decide when a trickle of packets is merged: no clock read per packet.
    opened_at: Option<SystemTime>,
    /// Clock time of the last merge: the arrival time of pending entries (to a batch).
    merged_at: Instant,
    stats_at: Instant,
    /// Turns capture times into instants (read at each merge).
    clock: PacketClock,
}

/// Capture times (µs since the epoch, on the system clock) as instants of the monotonic
/// clock that socket records are seen on: the two clocks are read together once per batch,
/// never per packet. Exact to a few µs while the system clock is not stepped.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PacketClock {
    real_us: u64,
    mono: Instant,
}

impl PacketClock {
    pub(crate) fn now() -> PacketClock {
        let mono = Instant::now();
        PacketClock {
            real_us: micros(SystemTime::now()),
            mono,
        }
    }

    /// The instant of capture time `at_us` (a time before the monotonic clock's start is
    /// its start: a replayed file's).
    pub(crate) fn instant(&self, at_us: u64) -> Instant {
        match at_us.checked_sub(self.real_us) {
            Some(ahead) => self.mono + Duration::from_micros(ahead),
            None => self
                .mono
                .checked_sub(Duration::from_micros(self.real_us - at_us))
                .unwrap_or(self.mono),
        }
    }
}

impl CaptureState {
    /// Whether a packet may be a copy of one captured on another interface, and if so what
    /// the copy filter says. Only captures of several interfaces (`any`, whose link types
    /// are LINUX_SLL/SLL2) see one packet twice, and only packets to or from another
    /// namespace (a container behind a bridge or a route), of a connection the kernel
    /// translated (NAT), or with an end not known yet (maybe a translated copy whose
    /// translation is not known yet) are looked at. A translated copy is checked under its
    /// connection's canonical flow.
    fn copy_check(
        &mut self,
        seen: &Seen<'_>,
        meta: &PacketMeta,
        verdict: &Verdict,
    ) -> Option<CopyCheck> {
        if !matches!(seen.link, LinkType::LinuxSll | LinkType::LinuxSll2) {
            return None;
        }
        let view = self.table.nat_view(&meta.flow);
        if view.is_none() && !verdict.has_miss() && !self.table.touches_guest(&meta.flow) {
            return None;
        }
        let flow = view.map_or(meta.flow, |v| v.canonical);
        let forms = view.as_ref().map(|v| &v.forms);
        let id = pidcap_wire::copy_id(seen.link, seen.frame, seen.orig_len).unwrap_or_default();
        let packet = CopyPacket::new(meta.ip_len, id);
        let packet = match (meta.ifindex, meta.direction) {
            (Some(ifindex), LinkDirection::Incoming) => packet.via(ifindex, false),
            (Some(ifindex), LinkDirection::Outgoing) => packet.via(ifindex, true),
            _ => packet,
        };
        let held = verdict.has_miss();
        Some(self.copies.check(&flow, forms, packet, seen.at_us, held))
    }

    fn due(&mut self, ts: SystemTime) -> bool {
        if self.tally.len() >= BATCH {
            return true;
        }
        let opened = *self.opened_at.get_or_insert(ts);
        ts.duration_since(opened)
            .map_or(true, |age| age >= FLUSH_EVERY)
    }
}

/// One captured frame as libpcap gave it.
struct Seen<'a> {
    link: LinkType,
    frame: &'a [u8],
    orig_len: u32,
    /// Capture time, µs since the epoch.
    at_us: u64,
}

/// The capture loop's handles, apart from its per-batch state.
struct Capture {
    source: Source,
    shared: Arc<DaemonState>,
    misses: MissSignal,
    stop: Arc<AtomicBool>,
    reopen: Option<LiveConfig>,
}

impl Pipeline {
    pub fn run(self) -> Result<End, CaptureError> {
        let Pipeline {
            source,
            shared,
            misses,
            cache,
            pending,
            fragments,
            stop,
            reopen,
        } = self;
        let now = Instant::now();
        let mut batch = CaptureState {
            tally: Tally::default(),
            cache,
            copies: CopyFilter::new(),
            pending,
            fragments,
            table: shared.table(),
            opened_at: None,
            merged_at: now,
            stats_at: now,
            clock: PacketClock::now(),
        };
        let mut capture = Capture {
            source,
            shared,
            misses,
            stop,
            reopen,
        };
        let link = capture.source.link_type();
        capture.publish_stats();
        let result = capture.capture(link, &mut batch);
        capture.finish(&mut batch);
        result
    }
}

impl Capture {
    fn capture(&mut self, link: LinkType, batch: &mut CaptureState) -> Result<End, CaptureError> {
        loop {
            if self.stop.load(Ordering::Relaxed) {
                return Ok(End::Stopped);
            }
            let next = match self.source.next() {
                Ok(next) => next,
                Err(error) => {
                    self.reopen_after(error, batch)?;
                    continue;
                }
            };
            match next {
                Next::Packet(frame) => {
                    if self.shared.generation() != batch.table.generation() {
                        // A refresh landed: attribute this packet with the new table.
                        merge(&self.shared, batch);
                    }
                    let seen = Seen {
                        link,
                        frame: frame.data,
                        orig_len: frame.orig_len,
                        at_us: micros(frame.ts),
                    };
                    let handled = handle(&self.misses, batch, &seen);
                    let tap = self.shared.tap();
                    if tap.active() {
                        tap.send(tapped(&seen, handled, batch.table.generation()));
                    }
                    if batch.due(frame.ts) {
                        merge(&self.shared, batch);
                        self.maybe_publish_stats(batch);
                    }
                }
                Next::Timeout => {
                    // Nothing arrived for a whole timeout, which is also how long the
                    // kernel holds a partly filled block: every packet captured before the
                    // last two timeouts (timer slack included) has been read.
                    let timeout = self.reopen.as_ref().map_or(0, |l| l.timeout_ms.max(0));
                    let read_to = micros(SystemTime::now())
                        .saturating_sub(2 * u64::from(timeout.unsigned_abs()) * 1000);
                    batch.pending.read_up_to(batch.clock.instant(read_to));
                    merge(&self.shared, batch);
                    self.maybe_publish_stats(batch);
                }
                Next::End => return Ok(End::EndOfFile),
            }
        }
    }

    /// After a read error: gives the error back for a file; for a live capture, waits for the
    /// interface to return (deciding pending packets and beating the heartbeat meanwhile) and
    /// reopens it, or returns when asked to stop. The link type stays the one configured.
    fn reopen_after(
        &mut self,
        error: CaptureError,
        batch: &mut CaptureState,
    ) -> Result<(), CaptureError> {
        let Some(live) = self.reopen.clone() else {
            return Err(error);
        };
        warn!(interface = %live.interface, error = %error, "capture interface gone; counting pauses until it returns, queries go on");
        self.shared.capture_info().down = true;
        let mut wait = REOPEN_FIRST_WAIT;
        while !self.stop.load(Ordering::Relaxed) {
            self.pause(wait, batch);
            match Source::open_live(&live) {
                Ok(source) => {
                    self.source = source;
                    let mut info = self.shared.capture_info();
                    info.down = false;
                    info.reopens += 1;
                    info!(interface = %live.interface, "capture reopened");
                    return Ok(());
                }
                Err(error) => {
                    debug!(interface = %live.interface, error = %error, "capture not reopened yet");
                    wait = (wait * 2).min(REOPEN_MAX_WAIT);
                }
            }
        }
        Ok(())
    }

    /// Sleeps about `wait` in short steps, merging (which settles pending packets and beats
    /// the heartbeat) and watching for a stop request.
    fn pause(&self, wait: Duration, batch: &mut CaptureState) {
        let deadline = Instant::now() + wait;
        while Instant::now() < deadline && !self.stop.load(Ordering::Relaxed) {
            merge(&self.shared, batch);
            std::thread::sleep(REOPEN_FIRST_WAIT.min(wait));
        }
    }

    /// Decides everything still pending and merges the last counts.
    fn finish(&mut self, batch: &mut CaptureState) {
        merge(&self.shared, batch);
        batch
            .pending
            .drain(&mut batch.tally, &batch.table, &batch.cache, &batch.copies);
        merge(&self.shared, batch);
        self.publish_stats();
    }

    fn maybe_publish_stats(&mut self, batch: &mut CaptureState) {
        if batch.merged_at.saturating_duration_since(batch.stats_at) >= STATS_EVERY {
            batch.stats_at = batch.merged_at;
            self.publish_stats();
        }
    }

    fn publish_stats(&mut self) {
        if !self.source.is_live() {
            return;
        }
        match self.source.stats() {
            Ok(stats) => {
                let mut info = self.shared.capture_info();
                let new_drops = stats.dropped.saturating_sub(info.stats.dropped)
                    + stats.if_dropped.saturating_sub(info.stats.if_dropped);
                if new_drops > 0 {
                    warn!(
                        dropped = stats.dropped,
                        if_dropped = stats.if_dropped,
                        new = new_drops,
                        "capture dropped packets"
                    );
                }
                info.stats = stats;
            }
            Err(error) => info!(error = %error, "capture statistics unavailable"),
        }
    }
}

/// Merges the batch into the ledger, switches to the newest table, retries the pending
/// buffer against it (crediting late what it resolves) and merges that too.
fn merge(shared: &DaemonState, batch: &mut CaptureState) {
    let now = Instant::now();
    let settle = Settle {
        cache: &batch.cache,
        copies: &batch.copies,
        now,
    };
    merge_and_settle(
        shared,
        &mut batch.tally,
        &mut batch.table,
        &mut batch.pending,
        settle,
    );
    let (tracked, forgotten) = batch.cache.openings();
    shared.set_levels(CaptureLevels {
        pending: batch.pending.level(),
        flows_cached: batch.cache.len() as u64,
        flow_cache_clears: batch.cache.clears(),
        fragments_forgotten: batch.fragments.forgotten(),
        copies_forgotten: batch.copies.forgotten(),
        openings: tracked as u64,
        openings_forgotten: forgotten,
    });
    batch.opened_at = None;
    batch.merged_at = now;
    batch.clock = PacketClock::now();
    shared.beat(now);
}

/// How long the socket tracer is asked to go on reporting how far it read, each time
/// packets are found waiting for the claims up to their capture (a few of its rounds, a few
/// tables).
const CLAIMS_WANTED: Duration = Duration::from_millis(100);

/// What the pending buffer is retried with.
pub(crate) struct Settle<'a> {
    pub cache: &'a AttributionCache,
    pub copies: &'a CopyFilter,
    pub now: Instant,
}

/// Merges a thread's counts into the ledger, switches it to the newest table, retries its
/// pending buffer against that table (crediting late what it resolves) and merges that too.
pub(crate) fn merge_and_settle(
    shared: &DaemonState,
    tally: &mut Tally,
    table: &mut Arc<SocketTable>,
    pending: &mut Pending,
    settle: Settle<'_>,
) {
    shared.count_frames(tally.len());
    if !tally.is_empty() {
        shared.ledger().merge(tally, table);
    }
    *table = shared.table();
    pending.settle(tally, table, settle.cache, settle.copies, settle.now);
    if pending.waits_for_claims() {
        // They may wait for the claims up to their capture (`Captured::late`).
        shared.want_claims_read(settle.now + CLAIMS_WANTED);
    }
    if !tally.is_empty() {
        shared.ledger().merge(tally, table);
    }
}

/// Capture time in µs since the epoch (0 for a time before it).
fn micros(ts: SystemTime) -> u64 {
    ts.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// What [`handle`] decided about a frame, for the tap.
#[derive(Debug, Clone, Copy)]
struct Handled {
    mark: TapMark,
    /// The flow and whether its ports were known, when the frame parsed.
    flow: Option<(FlowKey, bool)>,
    /// The IP packet's length (0 when the frame did not parse).
    ip_len: u32,
}

/// A copy of a handled frame for `capture` stream clients.
fn tapped(seen: &Seen<'_>, handled: Handled, generation: u64) -> Tapped {
    Tapped {
        at_us: seen.at_us,
        orig_len: seen.orig_len,
        frame: seen.frame.into(),
        flow: handled.flow,
        ip_len: handled.ip_len,
        mark: handled.mark,
        generation,
    }
}

/// One frame: parse, attribute (through the cache), drop a copy of a packet already
/// counted on another interface, count or hold.
fn handle(misses: &MissSignal, batch: &mut CaptureState, seen: &Seen<'_>) -> Handled {
    match parse(seen.link, seen.frame, seen.orig_len) {
        Ok(mut meta) => {
            batch.fragments.resolve(&mut meta);
            Handled {
                mark: attribute(misses, batch, seen, &meta),
                flow: Some((meta.flow, meta.ports_known)),
                ip_len: meta.ip_len,
            }
        }
        Err(WireError::NotIp(_)) => {
            batch.tally.record_non_ip();
            Handled {
                mark: TapMark::NotIp,
                flow: None,
                ip_len: 0,
            }
        }
        Err(_) => {
            batch.tally.record_malformed();
            Handled {
                mark: TapMark::Malformed,
                flow: None,
                ip_len: 0,
            }
        }
    }
}

fn attribute(
    misses: &MissSignal,
    batch: &mut CaptureState,
    seen: &Seen<'_>,
    meta: &PacketMeta,
) -> TapMark {
    // The capture time decides which connection of a TCP 4-tuple a packet is (openings),
    // and whether a kept socket's exited holder still answers for it.
    let at = batch.clock.instant(seen.at_us);
    if meta.flow.proto == IpProto::Tcp {
        batch.pending.read_up_to(at);
        if meta.tcp_opening {
            // A new connection on this 4-tuple: its earlier holders no longer answer for it.
            batch.cache.open(&meta.flow, at);
        }
    }
    let lookup = batch
        .cache
        .attribute_at(&batch.table, &meta.flow, meta.ports_known, at);
    if lookup.new_miss {
        misses.missed(meta.flow);
    }
    let verdict = lookup.verdict;
    batch.tally.note_frame();
    if verdict.tx.is_none() && verdict.rx.is_none() {
        batch.tally.record_foreign(meta.ip_len);
        return TapMark::Foreign;
    }
    // A packet that may be a translated copy and has an end not known yet waits whole.
    let mark = match batch.copy_check(seen, meta, &verdict) {
        Some(CopyCheck::Copy) => {
            batch.tally.record_transit(meta.ip_len);
            return TapMark::Copy;
        }
        Some(CopyCheck::First(mark)) if verdict.has_miss() => Some(mark),
        _ => None,
    };
    for (dir, side) in [(Direction::Tx, verdict.tx), (Direction::Rx, verdict.rx)] {
        if let Some(credit) = side {
            batch.pending.hold(
                &mut batch.tally,
                meta.flow,
                dir,
                credit,
                meta.ip_len,
                Arrival {
                    captured: at,
                    now: batch.merged_at,
                    undecided: lookup.undecided,
                },
                mark,
            );
        }
    }
    TapMark::Verdict(verdict)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::net::SocketAddr;

    use pidcap_core::{
        NetNsId, OwnerMap, ProcessInfo, ProcessKey, SocketEntry, TableParts, TcpState,
    };
    use pidcap_wire::IpProto;

    use super::*;
    use crate::inbox::miss_channel;

    const NS: NetNsId = NetNsId(4026531840);
    const OWNER: ProcessKey = ProcessKey {
        pid: 42,
        start_time: 7,
    };

    /// An Ethernet frame carrying IPv4/UDP `src` → `dst` with `payload` bytes, its IP header
    /// declaring `declared` total bytes (the truth is 28 + payload).
    fn frame(src: &str, dst: &str, payload: usize, declared: Option<u16>) -> Vec<u8> {
        let (src, dst): (SocketAddr, SocketAddr) = (src.parse().unwrap(), dst.parse().unwrap());
        let (SocketAddr::V4(src), SocketAddr::V4(dst)) = (src, dst) else {
            panic!("IPv4 only")
        };
        let ip_len = declared.unwrap_or((28 + payload) as u16);
        let mut f = vec![0u8; 12];
        f.extend_from_slice(&[0x08, 0x00, 0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 17, 0, 0]);
        f[16..18].copy_from_slice(&ip_len.to_be_bytes());
        f.extend_from_slice(&src.ip().octets());
        f.extend_from_slice(&dst.ip().octets());
        f.extend_from_slice(&src.port().to_be_bytes());
        f.extend_from_slice(&dst.port().to_be_bytes());
        f.extend_from_slice(&((8 + payload) as u16).to_be_bytes());
        f.extend_from_slice(&[0, 0]);
        f.resize(f.len() + payload, 0);
        f
    }

    /// A table where pid 42 holds a UDP socket bound to 10.0.0.1:53 on a host 10.0.0.1.
    fn shared() -> Arc<DaemonState> {
        let socket = SocketEntry {
            netns: NS,
            proto: IpProto::Udp,
            local: "10.0.0.1:53".parse().unwrap(),
            remote: "0.0.0.0:0".parse().unwrap(),
            state: TcpState::Close,
            inode: 9,
            uid: 0,
        };
        let owners = OwnerMap {
            holders: HashMap::from([(9, vec![OWNER])]),
            processes: HashMap::from([(
                OWNER,
                ProcessInfo {
                    key: OWNER,
                    comm: "dns".into(),
                    exe: None,
                    uid: 0,
                    cmdline: Vec::new(),
                    placement: Default::default(),
                },
            )]),
        };
        let table = SocketTable::build(
            1,
            TableParts {
                netns: Some(NS),
                sockets: vec![socket],
                owners: Arc::new(owners),
                local_addrs: vec!["10.0.0.1".parse().unwrap()],
                ..TableParts::default()
            },
        );
        DaemonState::new(table, Instant::now())
    }

    fn batch(shared: &DaemonState) -> CaptureState {
        let now = Instant::now();
        CaptureState {
            tally: Tally::default(),
            cache: AttributionCache::new(1024),
            copies: CopyFilter::new(),
            pending: Pending::new(100, Duration::from_secs(2)),
            fragments: FragmentMap::new(16),
            table: shared.table(),
            opened_at: None,
            merged_at: now,
            stats_at: now,
            clock: PacketClock::now(),
        }
    }

    fn feed(misses: &MissSignal, batch: &mut CaptureState, f: &[u8]) {
        let seen = Seen {
            link: LinkType::Ethernet,
            frame: f,
            orig_len: f.len() as u32,
            at_us: 0,
        };
        handle(misses, batch, &seen);
    }

    #[test]
    fn frames_are_credited_counted_at_their_wire_length_and_merged_per_batch() {
        let shared = shared();
        let (misses, _requests) = miss_channel();
        let mut batch = batch(&shared);
        feed(
            &misses,
            &mut batch,
            &frame("192.0.2.9:4000", "10.0.0.1:53", 72, None),
        );
        // A header that claims 65,535 bytes: the wire carried 100 - 14.
        let liar = frame("192.0.2.9:4000", "10.0.0.1:53", 72, Some(u16::MAX));
        feed(&misses, &mut batch, &liar);
        feed(&misses, &mut batch, &[0u8; 14]); // Ethernet, no IP
        assert_eq!(
            shared.ledger().totals().credited.rx_bytes,
            0,
            "not merged yet"
        );
        merge(&shared, &mut batch);
        let totals = *shared.ledger().totals();
        assert_eq!(totals.credited.rx_packets, 2);
        assert_eq!(totals.credited.rx_bytes, 2 * 100);
        assert_eq!(totals.non_ip_packets + totals.malformed_packets, 1);
        let row = shared.ledger().find_pid(42).map(|p| p.usage.total.rx_bytes);
        assert_eq!(row, Some(200));
        assert_eq!(shared.frames(), 3);
    }

    #[test]
    fn a_missed_flow_waits_and_asks_the_refresher_once() {
        let shared = shared();
        let (misses, requests) = miss_channel();
        let mut batch = batch(&shared);
        let to_closed_port = frame("192.0.2.9:4000", "10.0.0.1:9999", 10, None);
        for _ in 0..3 {
            feed(&misses, &mut batch, &to_closed_port);
        }
        merge(&shared, &mut batch);
        assert_eq!(
            requests.flows.try_iter().count(),
            1,
            "one request, not one per packet"
        );
        assert!(requests.wake.try_recv().is_ok(), "the refresher was woken");
        assert_eq!(
            shared.levels().pending.packets,
            3,
            "held for their owner, not yet unknown"
        );
        assert_eq!(shared.ledger().totals().unknown.rx_packets, 0);
    }

    #[test]
    fn foreign_packets_are_counted_apart() {
        let shared = shared();
        let (misses, _requests) = miss_channel();
        let mut batch = batch(&shared);
        feed(
            &misses,
            &mut batch,
            &frame("192.0.2.9:1", "192.0.2.10:2", 4, None),
        );
        merge(&shared, &mut batch);
        let totals = *shared.ledger().totals();
        assert_eq!(totals.foreign_packets, 1);
        assert_eq!(totals.captured.rx_packets + totals.captured.tx_packets, 0);
    }
}
