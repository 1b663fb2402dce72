//! One `capture` client: which tapped frames it gets, and the owners each is annotated with.
//!
//! Invariants: frames go out in capture order; a frame whose owner was a miss when it was
//! captured waits (with every frame behind it) until a newer socket table names its owner
//! (`matched: "late"`), or for as long as the ledger's pending buffer would wait
//! (`--pending-timeout`), after which it goes out with the reason the ledger gives it
//! (`pending_expired`) — so the annotation agrees with the counters; at most [`HOLD_MAX`]
//! frames wait, the oldest going out first when more come. A caller outside the socket
//! group gets only frames one of whose owners runs under its uid, and the other end's owner,
//! when another user's, only as `hidden` (no pid, no `process` line). Nothing here blocks.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pidcap_capture::FrameFilter;
use pidcap_core::{attribute, Credit, MatchKind, ProcessKey, SocketTable, UnknownReason, Verdict};
use pidcap_proto as proto;
use pidcap_proto::{CaptureLine, CapturedPacket, CapturedProcess, PacketOwner};

use super::access::Viewer;
use super::queries::{placement, Names};
use crate::pipeline::PacketClock;
use crate::state::DaemonState;
use crate::tap::{TapMark, Tapped};

/// Most frames one client holds back while their owners are looked for.
pub const HOLD_MAX: usize = 4096;

/// A client's process filter: every field given must match one owner of the frame.
#[derive(Debug, Clone, Default)]
struct Wanted {
    pid: Option<u32>,
    comm: Option<String>,
    unit: Option<String>,
    container: Option<String>,
}

impl Wanted {
    fn any(&self) -> bool {
        self.pid.is_some() || self.comm.is_some() || self.unit.is_some() || self.container.is_some()
    }
}

/// One owner as the filter and the `process` line need it.
struct Who {
    key: ProcessKey,
    line: Arc<CapturedProcess>,
}

/// The owners described for the current socket table, so a packet costs a lookup, not a
/// description (emptied when the table changes: names and placements are read anew).
#[derive(Debug, Default)]
struct Described {
    generation: u64,
    by_key: HashMap<ProcessKey, Arc<CapturedProcess>>,
}

impl Described {
    fn get(&mut self, shared: &DaemonState, table: &SocketTable, key: ProcessKey) -> Who {
        if self.generation != table.generation() {
            self.generation = table.generation();
            self.by_key.clear();
        }
        let line = self
            .by_key
            .entry(key)
            .or_insert_with(|| Arc::new(describe(shared, table, key)))
            .clone();
        Who { key, line }
    }
}

/// A `capture` client's state.
#[derive(Debug)]
pub struct Stream {
    wanted: Wanted,
    viewer: Viewer,
    bpf: Option<FrameFilter>,
    /// The start time each pid was last described with in this stream.
    described: HashMap<u32, u64>,
    known: Described,
    held: VecDeque<(Arc<Tapped>, Instant)>,
    hold_for: Duration,
}

impl Stream {
    /// A stream for `request`, whose BPF filter is compiled for the capture's link type
    /// `dlt`; the error is for the client (`bad_argument`).
    pub fn new(
        request: &proto::CaptureRequest,
        viewer: Viewer,
        dlt: i32,
        hold_for: Duration,
    ) -> Result<Stream, String> {
        let bpf = match request.filter.as_deref() {
            Some(expression) => {
                Some(FrameFilter::compile(dlt, expression).map_err(|e| e.to_string())?)
            }
            None => None,
        };
        Ok(Stream {
            wanted: Wanted {
                pid: request.pid,
                comm: request.comm.clone(),
                unit: request.unit.clone(),
                container: request.container.clone(),
            },
            viewer,
            bpf,
            described: HashMap::new(),
            known: Described::default(),
            held: VecDeque::new(),
            hold_for,
        })
    }

    /// Frames waiting for their owners.
    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// Takes one tapped frame; appends the lines ready to go to `out`.
    pub fn push(
        &mut self,
        shared: &DaemonState,
        tapped: Arc<Tapped>,
        now: Instant,
        out: &mut Vec<u8>,
    ) {
        if let Some(bpf) = &self.bpf {
            if !bpf.matches(&tapped.frame) {
                return;
            }
        }
        self.held.push_back((tapped, now));
        self.release(shared, now, out);
    }

    /// Sends what no longer waits: frames whose owners are known now, or whose wait is
    /// over, in order; the oldest when more than [`HOLD_MAX`] wait.
    pub fn release(&mut self, shared: &DaemonState, now: Instant, out: &mut Vec<u8>) {
        let table = shared.table();
        while let Some((front, since)) = self.held.front() {
            let waited_out = now.saturating_duration_since(*since) >= self.hold_for
                || self.held.len() > HOLD_MAX;
            let verdict = match settled(front, &table, waited_out) {
                Settled::Waits => break,
                Settled::NoOwners => None,
                Settled::Owners { then, now } => Some((then, now)),
            };
            let front = Arc::clone(front);
            self.held.pop_front();
            self.emit(shared, &table, &front, verdict, out);
        }
    }

    /// Writes the frame's lines, if this client wants it.
    fn emit(
        &mut self,
        shared: &DaemonState,
        table: &SocketTable,
        tapped: &Tapped,
        verdict: Option<(Verdict, Verdict)>,
        out: &mut Vec<u8>,
    ) {
        let known = &mut self.known;
        let mut who = |key| known.get(shared, table, key);
        let (tx, rx) = match verdict {
            Some((then, now)) => (
                owner(then.tx, now.tx, &mut who),
                owner(then.rx, now.rx, &mut who),
            ),
            None => ((None, None), (None, None)),
        };
        if !self.wanted_by(shared, &[&tx.1, &rx.1]) {
            return;
        }
        let (tx, rx) = (self.narrow(tx), self.narrow(rx));
        for who in [&tx.1, &rx.1].into_iter().flatten() {
            if self.described.insert(who.key.pid, who.key.start_time) != Some(who.key.start_time) {
                line(out, CaptureLine::process(CapturedProcess::clone(&who.line)));
            }
        }
        let packet = CapturedPacket {
            ts_us: tapped.at_us,
            orig_len: tapped.orig_len,
            data: CapturedPacket::encode_data(&tapped.frame),
            tx: tx.0,
            rx: rx.0,
            note: note(tapped.mark),
        };
        line(out, CaptureLine::packet(packet));
    }

    /// Another user's process, for a caller outside the socket group: `hidden`, with
    /// nothing about it.
    fn narrow(
        &self,
        side: (Option<PacketOwner>, Option<Who>),
    ) -> (Option<PacketOwner>, Option<Who>) {
        match (self.viewer, &side.1) {
            (Viewer::Own { uid }, Some(who)) if who.line.uid != uid => {
                (Some(unknown_owner("hidden")), None)
            }
            _ => side,
        }
    }

    fn wanted_by(&self, shared: &DaemonState, whos: &[&Option<Who>; 2]) -> bool {
        let owners = || whos.iter().filter_map(|w| w.as_ref());
        if let Viewer::Own { uid } = self.viewer {
            if !owners().any(|w| w.line.uid == uid) {
                return false;
            }
        }
        !self.wanted.any() || owners().any(|w| self.matches(shared, &w.line))
    }

    fn matches(&self, shared: &DaemonState, p: &CapturedProcess) -> bool {
        let w = &self.wanted;
        w.pid.is_none_or(|pid| pid == p.pid)
            && w.comm.as_ref().is_none_or(|c| *c == p.comm)
            && w.unit.as_ref().is_none_or(|u| p.unit.as_ref() == Some(u))
            && w.container
                .as_ref()
                .is_none_or(|c| container_matches(shared, p, c))
    }
}

/// A container filter matches an id prefix or the runtime's name for it.
fn container_matches(shared: &DaemonState, p: &CapturedProcess, wanted: &str) -> bool {
    let Some(container) = &p.container else {
        return false;
    };
    container.id.starts_with(wanted)
        || container.name.as_deref() == Some(wanted)
        || shared.containers().name(&container.id).as_deref() == Some(wanted)
}

/// Where a held frame stands.
enum Settled {
    /// A miss a newer table may still resolve: the frame (and those behind it) wait.
    Waits,
    /// Foreign, a copy, not IP or malformed: it goes out with its note.
    NoOwners,
    /// It goes out with its verdict at capture and as it stands now.
    Owners { then: Verdict, now: Verdict },
}

fn settled(tapped: &Tapped, table: &SocketTable, waited_out: bool) -> Settled {
    let TapMark::Verdict(then) = tapped.mark else {
        return Settled::NoOwners;
    };
    let same = Settled::Owners { then, now: then };
    if !then.has_miss() {
        return same;
    }
    let Some((flow, ports_known)) = tapped.flow else {
        return same;
    };
    let now = if table.generation() > tapped.generation {
        with_packet_sender(attribute(table, &flow, ports_known), table, tapped)
    } else {
        then
    };
    if !now.has_miss() || waited_out {
        Settled::Owners {
            then,
            now: expire(now),
        }
    } else {
        Settled::Waits
    }
}

/// `now` with a sent packet no socket owns credited to the process that sent it through a
/// packet socket, as the ledger's pending buffer credits it ([`SocketTable::packet_sender`]).
fn with_packet_sender(mut now: Verdict, table: &SocketTable, tapped: &Tapped) -> Verdict {
    if now.tx != Some(Credit::Unknown(UnknownReason::NoSocket)) {
        return now;
    }
    let captured = PacketClock::now().instant(tapped.at_us);
    if let Some(key) = table.packet_sender(tapped.ip_len, captured, None) {
        let kind = MatchKind::PacketSender;
        now.tx = Some(Credit::Process { key, kind });
    }
    now
}

/// A verdict whose misses ran out of time: as the ledger counts them.
fn expire(v: Verdict) -> Verdict {
    let expire = |c: Option<Credit>| {
        c.map(|c| match c {
            c if c.is_miss() => Credit::Unknown(UnknownReason::PendingExpired),
            c => c,
        })
    };
    Verdict {
        tx: expire(v.tx),
        rx: expire(v.rx),
    }
}

/// One end's annotation and its process, from the credit at capture and the one now.
fn owner(
    then: Option<Credit>,
    now: Option<Credit>,
    who: &mut impl FnMut(ProcessKey) -> Who,
) -> (Option<PacketOwner>, Option<Who>) {
    let Some(then) = then else {
        return (None, None);
    };
    let late = then.is_miss();
    let credit = if late { now.unwrap_or(then) } else { then };
    match credit {
        Credit::Process { key, kind } => {
            // A packet sender is only ever found late; its own name says how.
            let matched = match kind {
                MatchKind::PacketSender => kind.name(),
                _ if late => "late",
                _ => kind.name(),
            };
            let annotation = PacketOwner {
                pid: Some(key.pid),
                start_time: Some(key.start_time),
                matched: Some(matched.to_owned()),
                unknown: None,
            };
            (Some(annotation), Some(who(key)))
        }
        Credit::Unknown(reason) => (Some(unknown_owner(reason_name(reason))), None),
    }
}

fn unknown_owner(reason: &str) -> PacketOwner {
    PacketOwner {
        pid: None,
        start_time: None,
        matched: None,
        unknown: Some(reason.to_owned()),
    }
}

/// Who `key` is: from the table, else from the ledger (an owner that left the table).
fn describe(shared: &DaemonState, table: &SocketTable, key: ProcessKey) -> CapturedProcess {
    let names = Names::of(shared);
    let line = match table.process(&key) {
        Some(info) => process_line(key, &info.comm, &info.exe, info.uid, |uid| {
            placement(&info.placement, names, uid)
        }),
        None => {
            let ledger = shared.ledger();
            match ledger.process(&key) {
                Some(p) => process_line(key, &p.meta.comm, &p.meta.exe, p.meta.uid, |uid| {
                    placement(&p.meta.placement, names, uid)
                }),
                None => process_line(key, "", &None, u32::MAX, |_| {
                    proto::PlacementFields::default()
                }),
            }
        }
    };
    line
}

fn process_line(
    key: ProcessKey,
    comm: &str,
    exe: &Option<String>,
    uid: u32,
    placed: impl FnOnce(u32) -> proto::PlacementFields,
) -> CapturedProcess {
    let placement = placed(uid);
    CapturedProcess {
        pid: key.pid,
        start_time: key.start_time,
        comm: comm.to_owned(),
        exe: exe.clone(),
        uid,
        unit: placement.unit,
        container: placement.container,
    }
}

fn reason_name(reason: UnknownReason) -> &'static str {
    match reason {
        UnknownReason::NoSocket => "no_socket",
        UnknownReason::NoProcess => "no_process",
        UnknownReason::Unsupported => "unsupported",
        UnknownReason::PendingExpired => "pending_expired",
    }
}

fn note(mark: TapMark) -> Option<String> {
    let note = match mark {
        TapMark::Verdict(_) => return None,
        TapMark::Foreign => "foreign",
        TapMark::Copy => "copy",
        TapMark::NotIp => "not_ip",
        TapMark::Malformed => "malformed",
    };
    Some(note.to_owned())
}

fn line(out: &mut Vec<u8>, body: CaptureLine) {
    out.extend_from_slice(&proto::encode_line(&proto::ok(body)));
}

/// The `lost` line for `packets` frames this client missed.
pub fn lost_line(packets: u64, out: &mut Vec<u8>) {
    line(out, CaptureLine::lost(packets));
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap as Map;

    use pidcap_core::{NetNsId, OwnerMap, ProcessInfo, SocketEntry, TableParts, TcpState};
    use pidcap_wire::{FlowKey, IpProto};
    use serde_json::Value;

    use super::*;

    const NS: NetNsId = NetNsId(4026531840);
    const DNS: ProcessKey = ProcessKey {
        pid: 42,
        start_time: 7,
    };
    const WAIT: Duration = Duration::from_secs(2);

    /// A table of `generation` on a host 10.0.0.1 where, when `owned`, pid 42 (uid 1000)
    /// holds a UDP socket bound to 10.0.0.1:53.
    fn table(generation: u64, owned: bool) -> SocketTable {
        let socket = SocketEntry {
            netns: NS,
            proto: IpProto::Udp,
            local: "10.0.0.1:53".parse().unwrap(),
            remote: "0.0.0.0:0".parse().unwrap(),
            state: TcpState::Close,
            inode: 9,
            uid: 1000,
        };
        let info = ProcessInfo {
            key: DNS,
            comm: "dns".into(),
            exe: Some("/usr/sbin/dns".into()),
            uid: 1000,
            cmdline: Vec::new(),
            placement: Default::default(),
        };
        let owners = OwnerMap {
            holders: Map::from([(9, vec![DNS])]),
            processes: Map::from([(DNS, info)]),
        };
        SocketTable::build(
            generation,
            TableParts {
                netns: Some(NS),
                sockets: if owned { vec![socket] } else { Vec::new() },
                owners: Arc::new(owners),
                local_addrs: vec!["10.0.0.1".parse().unwrap()],
                ..TableParts::default()
            },
        )
    }

    fn flow() -> FlowKey {
        FlowKey {
            proto: IpProto::Udp,
            src: "192.0.2.9:4000".parse().unwrap(),
            dst: "10.0.0.1:53".parse().unwrap(),
        }
    }

    /// A frame to 10.0.0.1:53 as the capture thread decided it with `table`.
    fn tapped(at_us: u64, table: &SocketTable) -> Arc<Tapped> {
        Arc::new(Tapped {
            at_us,
            orig_len: 60,
            frame: Box::new([1, 2, 3]),
            flow: Some((flow(), true)),
            ip_len: 60,
            mark: TapMark::Verdict(attribute(table, &flow(), true)),
            generation: table.generation(),
        })
    }

    fn stream(request: proto::CaptureRequest, viewer: Viewer) -> Stream {
        Stream::new(&request, viewer, 1, WAIT).unwrap()
    }

    fn lines(out: &[u8]) -> Vec<Value> {
        out.split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice(l).unwrap())
            .collect()
    }

    #[test]
    fn a_known_owner_goes_out_at_once_described_once() {
        let shared = DaemonState::new(table(1, true), Instant::now());
        let mut s = stream(Default::default(), Viewer::Full);
        let (now, mut out) = (Instant::now(), Vec::new());
        s.push(&shared, tapped(1, &shared.table()), now, &mut out);
        s.push(&shared, tapped(2, &shared.table()), now, &mut out);
        let lines = lines(&out);
        assert_eq!(lines.len(), 3, "{lines:?}");
        assert_eq!(lines[0]["process"]["comm"], "dns");
        assert_eq!(lines[0]["process"]["exe"], "/usr/sbin/dns");
        assert_eq!(lines[1]["packet"]["rx"]["pid"], 42);
        assert_eq!(lines[1]["packet"]["rx"]["matched"], "wildcard");
        assert_eq!(
            lines[1]["packet"]["tx"],
            Value::Null,
            "the source is not local"
        );
        assert_eq!(lines[2]["packet"]["ts_us"], 2);
        assert_eq!(s.held(), 0);
    }

    #[test]
    fn a_miss_waits_with_the_frames_behind_it_until_a_newer_table_names_its_owner() {
        let shared = DaemonState::new(table(1, false), Instant::now());
        let mut s = stream(Default::default(), Viewer::Full);
        let (now, mut out) = (Instant::now(), Vec::new());
        s.push(&shared, tapped(1, &shared.table()), now, &mut out);
        s.push(&shared, tapped(2, &shared.table()), now, &mut out);
        assert!(out.is_empty(), "both wait");
        assert_eq!(s.held(), 2);
        s.release(&shared, now + WAIT / 2, &mut out);
        assert!(out.is_empty(), "the same table: still waiting");
        shared.publish(table(2, true));
        s.release(&shared, now + WAIT / 2, &mut out);
        let lines = lines(&out);
        let times: Vec<_> = lines
            .iter()
            .filter_map(|l| l["packet"]["ts_us"].as_u64())
            .collect();
        assert_eq!(times, [1, 2], "in capture order");
        assert_eq!(lines[1]["packet"]["rx"]["matched"], "late", "{lines:?}");
        assert_eq!(lines[1]["packet"]["rx"]["pid"], 42);
    }

    #[test]
    fn a_miss_that_waited_out_goes_as_the_ledger_counts_it() {
        let shared = DaemonState::new(table(1, false), Instant::now());
        let mut s = stream(Default::default(), Viewer::Full);
        let (now, mut out) = (Instant::now(), Vec::new());
        s.push(&shared, tapped(1, &shared.table()), now, &mut out);
        s.release(&shared, now + WAIT, &mut out);
        let lines = lines(&out);
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert_eq!(lines[0]["packet"]["rx"]["unknown"], "pending_expired");
    }

    #[test]
    fn at_most_hold_max_frames_wait() {
        let shared = DaemonState::new(table(1, false), Instant::now());
        let mut s = stream(Default::default(), Viewer::Full);
        let (now, mut out) = (Instant::now(), Vec::new());
        for at in 0..=HOLD_MAX as u64 {
            s.push(&shared, tapped(at, &shared.table()), now, &mut out);
        }
        assert_eq!(s.held(), HOLD_MAX);
        assert_eq!(lines(&out)[0]["packet"]["ts_us"], 0, "the oldest went out");
    }

    #[test]
    fn filters_and_narrowing_keep_out_other_processes_frames() {
        let shared = DaemonState::new(table(1, true), Instant::now());
        let now = Instant::now();
        let cases = [
            (
                proto::CaptureRequest {
                    pid: Some(42),
                    ..Default::default()
                },
                Viewer::Full,
                true,
            ),
            (
                proto::CaptureRequest {
                    pid: Some(43),
                    ..Default::default()
                },
                Viewer::Full,
                false,
            ),
            (
                proto::CaptureRequest {
                    comm: Some("dns".into()),
                    ..Default::default()
                },
                Viewer::Full,
                true,
            ),
            (
                proto::CaptureRequest {
                    unit: Some("x.service".into()),
                    ..Default::default()
                },
                Viewer::Full,
                false,
            ),
            (
                proto::CaptureRequest {
                    container: Some("abcd".into()),
                    ..Default::default()
                },
                Viewer::Full,
                false,
            ),
            (Default::default(), Viewer::Own { uid: 1000 }, true),
            (Default::default(), Viewer::Own { uid: 1001 }, false),
        ];
        for (request, viewer, shown) in cases {
            let mut s = stream(request.clone(), viewer);
            let mut out = Vec::new();
            s.push(&shared, tapped(1, &shared.table()), now, &mut out);
            assert_eq!(!out.is_empty(), shown, "{request:?} as {viewer:?}");
        }
        let mut s = stream(
            proto::CaptureRequest {
                filter: Some("tcp".into()),
                ..Default::default()
            },
            Viewer::Full,
        );
        let mut out = Vec::new();
        s.push(&shared, tapped(1, &shared.table()), now, &mut out);
        assert!(out.is_empty(), "the BPF filter ran on the frame");
    }
}
