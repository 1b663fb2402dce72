//! Answers to queries, built from the shared state. Each function copies what it needs out
//! of the ledger or table and releases the lock before the reply is serialised or sent.
//!
//! Every answer about processes is narrowed to what its [`Viewer`] may see: a restricted
//! viewer gets only processes whose real uid is its own (rows, `process` detail, `lookup`
//! owners and holders, `watch` rows), and the reply says so (`filtered_to_uid`). The unknown
//! bucket and `stats` are aggregates without per-process detail, the same for everybody.

use std::collections::HashMap;
use std::time::{Instant, SystemTime};

use pidcap_core::{
    canonical, Placement, ProcessUsage, QualityBytes, SocketEntry, SocketTable, TcpState, Usage,
};
use pidcap_proto as proto;
use pidcap_proto::{ErrorCode, LookupQuery};
use pidcap_wire::IpProto;

use crate::containers::ContainerNames;
use crate::process_side::facts::FactsUsage;
use crate::query::access::Viewer;
use crate::state::{stale_after, DaemonState, Worker};
use crate::users::UserNames;

/// A reply line, or an error to send instead.
pub type Reply = Result<Vec<u8>, (ErrorCode, String)>;

fn usage(u: &Usage) -> proto::Usage {
    let unlogged = u.unlogged();
    proto::Usage {
        rx_bytes: unlogged.rx_bytes,
        tx_bytes: unlogged.tx_bytes,
        rx_packets: unlogged.rx_packets,
        tx_packets: unlogged.tx_packets,
        rx_bytes_total: u.total.rx_bytes,
        tx_bytes_total: u.total.tx_bytes,
        rx_packets_total: u.total.rx_packets,
        tx_packets_total: u.total.tx_packets,
        rx_bps: u.rate.rx_bps,
        tx_bps: u.rate.tx_bps,
    }
}

fn row(p: &ProcessUsage, names: Names<'_>) -> proto::ProcessRow {
    proto::ProcessRow {
        pid: p.key.pid,
        start_time: p.key.start_time,
        comm: p.meta.comm.clone(),
        exe: p.meta.exe.clone(),
        uid: p.meta.uid,
        usage: usage(&p.usage),
        alive: p.alive(),
        matched: matched(&p.quality),
        placement: placement(&p.meta.placement, names, p.meta.uid),
    }
}

/// The placement fields of a row; `user` as resolved so far.
pub fn placement(p: &Placement, names: Names<'_>, uid: u32) -> proto::PlacementFields {
    proto::PlacementFields {
        netns: p.netns.map(|n| n.0),
        cgroup: p.cgroup.clone(),
        unit: p.unit().map(str::to_string),
        container: p.container().map(|c| proto::ContainerRef {
            runtime: c.runtime.to_string(),
            id: c.id.to_string(),
            pod: c.pod.map(|uid| uid.to_uid()),
            name: names.containers.name(c.id).map(|n| n.to_string()),
        }),
        user: names.users.name(uid).map(|u| u.to_string()),
    }
}

/// The names the refresher resolved: users and containers.
#[derive(Debug, Clone, Copy)]
pub struct Names<'a> {
    pub users: &'a UserNames,
    pub containers: &'a ContainerNames,
}

impl<'a> Names<'a> {
    pub fn of(shared: &'a DaemonState) -> Names<'a> {
        Names {
            users: shared.users(),
            containers: shared.containers(),
        }
    }
}

fn matched(q: &QualityBytes) -> proto::MatchBytes {
    proto::MatchBytes {
        exact: q.exact,
        wildcard: q.wildcard,
        recent: q.recent,
        late: q.late,
        packet_sender: q.packet_sender,
    }
}

/// Every process `viewer` sees, as `processes` rows (unsorted), and the unknown bucket:
/// copied out under the ledger lock. `processes`, `groups` and the metrics exposition all
/// start from this.
pub fn process_rows(
    shared: &DaemonState,
    viewer: Viewer,
) -> (Vec<proto::ProcessRow>, proto::Usage) {
    let ledger = shared.ledger();
    let rows: Vec<proto::ProcessRow> = ledger
        .processes()
        .filter(|p| viewer.sees(p.meta.uid))
        .map(|p| row(p, Names::of(shared)))
        .collect();
    (rows, usage(ledger.unknown()))
}

pub fn processes(shared: &DaemonState, viewer: Viewer) -> Reply {
    let (mut processes, unknown) = process_rows(shared, viewer);
    processes.sort_by_key(|r| (r.pid, r.start_time));
    Ok(proto::encode_line(&proto::ok(proto::ProcessesReply {
        processes,
        unknown,
        filtered_to_uid: viewer.filtered_to(),
    })))
}

pub fn process(shared: &DaemonState, pid: u32, viewer: Viewer) -> Reply {
    let row = shared
        .ledger()
        .find_pid(pid)
        .map(|p| row(p, Names::of(shared)));
    let Some(row) = row.filter(|r| viewer.sees(r.uid)) else {
        return Err((ErrorCode::NotFound, not_found_message(pid, viewer)));
    };
    let table = shared.table();
    let cmdline = table
        .process(&pidcap_core::ProcessKey {
            pid: row.pid,
            start_time: row.start_time,
        })
        .map(|p| p.cmdline.clone())
        .unwrap_or_default();
    let connections = table
        .connections_of(pid)
        .map(|s| connection(s, table.holders(s.inode)))
        .collect();
    let process = proto::ProcessDetail {
        row,
        cmdline,
        connections,
    };
    Ok(proto::encode_line(&proto::ok(proto::ProcessReply {
        process,
    })))
}

/// Counters summed per group (user, unit, container or network namespace) over the
/// processes `viewer` sees, by descending total bytes; the unknown bucket apart.
pub fn groups(shared: &DaemonState, by: proto::GroupBy, viewer: Viewer) -> Reply {
    let (rows, unknown) = process_rows(shared, viewer);
    Ok(proto::encode_line(&proto::ok(proto::GroupsReply {
        by,
        groups: group_rows(&rows, by),
        unknown,
        filtered_to_uid: viewer.filtered_to(),
    })))
}

/// `rows` summed per group, by descending total bytes (then key).
pub fn group_rows(rows: &[proto::ProcessRow], by: proto::GroupBy) -> Vec<proto::GroupRow> {
    let mut groups: HashMap<Option<String>, proto::GroupRow> = HashMap::new();
    for r in rows {
        let key = group_key(r, by);
        let group = groups
            .entry(key.clone())
            .or_insert_with(|| proto::GroupRow {
                key,
                processes: 0,
                usage: proto::Usage::default(),
            });
        group.processes += 1;
        add_usage(&mut group.usage, &r.usage);
    }
    let mut groups: Vec<proto::GroupRow> = groups.into_values().collect();
    let total = |r: &proto::GroupRow| r.usage.rx_bytes_total + r.usage.tx_bytes_total;
    groups.sort_by(|a, b| total(b).cmp(&total(a)).then_with(|| a.key.cmp(&b.key)));
    groups
}

/// The group `r` is in; `None` for the processes with no such group. The user is its name,
/// else its uid.
pub fn group_key(r: &proto::ProcessRow, by: proto::GroupBy) -> Option<String> {
    let placement = &r.placement;
    match by {
        proto::GroupBy::User => Some(placement.user.clone().unwrap_or_else(|| r.uid.to_string())),
        proto::GroupBy::Unit => placement.unit.clone(),
        proto::GroupBy::Container => placement
            .container
            .as_ref()
            .map(|c| format!("{}:{}", c.runtime, c.id)),
        proto::GroupBy::Netns => placement.netns.map(|n| n.to_string()),
    }
}

fn add_usage(sum: &mut proto::Usage, u: &proto::Usage) {
    sum.rx_bytes += u.rx_bytes;
    sum.tx_bytes += u.tx_bytes;
    sum.rx_packets += u.rx_packets;
    sum.tx_packets += u.tx_packets;
    sum.rx_bytes_total += u.rx_bytes_total;
    sum.tx_bytes_total += u.tx_bytes_total;
    sum.rx_packets_total += u.rx_packets_total;
    sum.tx_packets_total += u.tx_packets_total;
    sum.rx_bps += u.rx_bps;
    sum.tx_bps += u.tx_bps;
}

/// Says the same whether another user's process has traffic or not: a restricted viewer
/// learns nothing about processes it may not see.
fn not_found_message(pid: u32, viewer: Viewer) -> String {
    match viewer.filtered_to() {
        None => format!("no traffic seen for pid {pid}"),
        Some(uid) => format!(
            "no traffic seen for pid {pid} among the processes of uid {uid} (only root and \
             members of the socket's group see other users' processes)"
        ),
    }
}

fn connection(s: &SocketEntry, holders: &[pidcap_core::ProcessKey]) -> proto::Connection {
    let mut pids: Vec<u32> = holders.iter().map(|k| k.pid).collect();
    pids.sort_unstable();
    pids.dedup();
    proto::Connection {
        holders: pids,
        proto: s.proto.name().into_owned(),
        local: s.local.to_string(),
        remote: s.remote.to_string(),
        state: state_name(s.proto, s.state).into(),
        inode: s.inode,
        netns: Some(s.netns.0),
    }
}

fn state_name(proto: IpProto, state: TcpState) -> &'static str {
    use TcpState::*;
    if proto != IpProto::Tcp {
        return if state == Established {
            "connected"
        } else {
            "unconnected"
        };
    }
    match state {
        Established => "ESTABLISHED",
        SynSent => "SYN_SENT",
        SynRecv => "SYN_RECV",
        FinWait1 => "FIN_WAIT1",
        FinWait2 => "FIN_WAIT2",
        TimeWait => "TIME_WAIT",
        Close => "CLOSE",
        CloseWait => "CLOSE_WAIT",
        LastAck => "LAST_ACK",
        Listen => "LISTEN",
        Closing => "CLOSING",
        NewSynRecv => "NEW_SYN_RECV",
        Unknown(_) => "UNKNOWN",
    }
}

pub fn lookup(shared: &DaemonState, q: &LookupQuery, viewer: Viewer) -> Reply {
    let table = shared.table();
    let proto = IpProto::from(q.proto.ip_number());
    let (local, remote) = (canonical(q.local), canonical(q.remote));
    let found = match q.netns {
        Some(netns) => table.lookup_in(pidcap_core::NetNsId(netns), proto, local, remote),
        None => table.lookup(proto, local, remote),
    };
    let found = found.and_then(|m| owner(&table, m.inode, m.owner?, m.kind.name(), viewer));
    let reply = match found {
        Some(owner) => proto::LookupReply::found(owner),
        None => proto::LookupReply::not_found(),
    };
    Ok(proto::encode_line(&proto::ok(proto::LookupReply {
        filtered_to_uid: viewer.filtered_to(),
        ..reply
    })))
}

/// The owner of `inode` as `viewer` may see it: `None` if the credited process is not
/// visible; holders narrowed to the visible ones.
fn owner(
    table: &SocketTable,
    inode: u64,
    key: pidcap_core::ProcessKey,
    matched: &str,
    viewer: Viewer,
) -> Option<proto::Owner> {
    let visible =
        |k: &pidcap_core::ProcessKey| table.process(k).is_some_and(|p| viewer.sees(p.uid));
    let info = table.process(&key).filter(|p| viewer.sees(p.uid))?;
    let mut holders: Vec<u32> = table
        .holders(inode)
        .iter()
        .filter(|k| visible(k))
        .map(|k| k.pid)
        .collect();
    holders.sort_unstable();
    holders.dedup();
    Some(proto::Owner {
        pid: key.pid,
        start_time: key.start_time,
        comm: info.comm.clone(),
        inode,
        matched: matched.into(),
        holders,
    })
}

pub fn stats(shared: &DaemonState, now: Instant, query_server: proto::QueryServer) -> Reply {
    let stats = stats_of(shared, now, query_server);
    Ok(proto::encode_line(&proto::ok(proto::StatsReply { stats })))
}

/// The daemon-wide counters `stats` answers with (and the metrics exposition exports).
pub fn stats_of(
    shared: &DaemonState,
    now: Instant,
    query_server: proto::QueryServer,
) -> proto::Stats {
    let (totals, uptime, processes) = {
        let ledger = shared.ledger();
        (
            *ledger.totals(),
            ledger.uptime(now),
            ledger.processes().count(),
        )
    };
    let capture = shared.capture_info().clone();
    let refresh = shared.refresh_info().clone();
    let side = *shared.process_side();
    let ns = *shared.namespace_capture();
    let sockets = shared.table().sockets().len();
    let levels = shared.levels();
    let pending = levels.pending;
    let reasons = totals.unknown_by_reason;
    proto::Stats {
        uptime_s: uptime.as_secs_f64(),
        rx_packets: totals.captured.rx_packets,
        rx_bytes: totals.captured.rx_bytes,
        tx_packets: totals.captured.tx_packets,
        tx_bytes: totals.captured.tx_bytes,
        foreign_packets: totals.foreign_packets,
        foreign_bytes: totals.foreign_bytes,
        transit_packets: totals.transit_packets,
        transit_bytes: totals.transit_bytes,
        credited_rx_bytes: totals.credited.rx_bytes,
        credited_tx_bytes: totals.credited.tx_bytes,
        credited_rx_packets: totals.credited.rx_packets,
        credited_tx_packets: totals.credited.tx_packets,
        unknown_rx_bytes: totals.unknown.rx_bytes,
        unknown_tx_bytes: totals.unknown.tx_bytes,
        unknown_rx_packets: totals.unknown.rx_packets,
        unknown_tx_packets: totals.unknown.tx_packets,
        non_ip_packets: totals.non_ip_packets,
        malformed_packets: totals.malformed_packets,
        pcap_received: capture.stats.received,
        pcap_dropped: capture.stats.dropped,
        pcap_if_dropped: capture.stats.if_dropped,
        sockets_known: sockets as u64,
        processes_known: processes as u64,
        refreshes: refresh.count,
        refresh_failures: refresh.failures,
        last_refresh_ms: refresh.last_duration.as_secs_f64() * 1000.0,
        interface: capture.origin,
        link_type: capture.link_name,
        capture_down: capture.down,
        capture_reopens: capture.reopens,
        credited_matched: matched(&totals.credited_by_quality),
        unknown_reasons: proto::UnknownReasons {
            no_socket: reasons.no_socket,
            no_process: reasons.no_process,
            pending_expired: reasons.pending_expired,
            unsupported: reasons.unsupported,
        },
        pending_packets: pending.packets,
        pending_bytes: pending.bytes,
        process_side: proto::ProcessSide {
            watcher: side.watcher,
            tracer: side.tracer,
            traced_claims: side.traced_claims,
            traced_unknown_process: side.traced_unknown_process,
            trace_events_lost: side.trace_events_lost,
            route_threads: side.route_threads,
            traced_routes: side.traced_routes,
            learned_dropped: side.learned_dropped,
        },
        query_server,
        threads: threads(shared, now),
        process_facts: process_facts(shared.facts().usage()),
        bounds: proto::Bounds {
            flows_cached: levels.flows_cached,
            flow_cache_clears: levels.flow_cache_clears,
            pending_evicted: pending.evicted,
            fragments_forgotten: levels.fragments_forgotten,
            copies_forgotten: levels.copies_forgotten,
            openings: levels.openings,
            openings_forgotten: levels.openings_forgotten,
        },
        namespace_capture: proto::NamespaceCapture {
            enabled: shared.since_beat(Worker::Namespaces, now).is_some(),
            open: ns.open,
            opened: ns.opened,
            closed: ns.closed,
            open_failures: ns.open_failures,
            received: ns.received,
            dropped: ns.dropped,
        },
    }
}

/// Every long-lived thread's heartbeat, as `stats.threads`.
fn threads(shared: &DaemonState, now: Instant) -> Vec<proto::ThreadHealth> {
    let stale = stale_after();
    Worker::ALL
        .iter()
        .map(|&worker| {
            let since = shared.since_beat(worker, now);
            proto::ThreadHealth {
                name: worker.name().to_string(),
                running: since.is_some(),
                last_beat_ms: since.map(|d| d.as_millis() as u64),
                stale: since.is_some_and(|d| d >= stale),
            }
        })
        .collect()
}

fn process_facts(usage: FactsUsage) -> proto::ProcessFacts {
    proto::ProcessFacts {
        entries: usage.entries as u64,
        bytes: usage.bytes as u64,
        evictions: usage.evictions,
    }
}

/// One `watch` frame: the current rate of every live process with traffic that `viewer` may
/// see, busiest first.
pub fn watch_frame(shared: &DaemonState, interval_ms: u64, viewer: Viewer) -> Vec<u8> {
    let (mut processes, unknown) = {
        let ledger = shared.ledger();
        let rows: Vec<proto::RateRow> = ledger
            .processes()
            .filter(|p| viewer.sees(p.meta.uid))
            .filter(|p| p.alive() || p.usage.rate.rx_bps + p.usage.rate.tx_bps > 0.0)
            .map(|p| rate_row(Some(p.key.pid), &p.meta.comm, &p.usage))
            .collect();
        (rows, rate_row(None, proto::UNKNOWN_COMM, ledger.unknown()))
    };
    processes.sort_by(|a, b| {
        (b.rx_bps + b.tx_bps)
            .total_cmp(&(a.rx_bps + a.tx_bps))
            .then(a.pid.cmp(&b.pid))
    });
    let frame = proto::WatchFrame {
        ts: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
        interval_ms,
        processes,
        unknown,
        filtered_to_uid: viewer.filtered_to(),
    };
    proto::encode_line(&proto::ok(frame))
}

fn rate_row(pid: Option<u32>, comm: &str, u: &Usage) -> proto::RateRow {
    proto::RateRow {
        pid,
        comm: comm.into(),
        rx_bps: u.rate.rx_bps,
        tx_bps: u.rate.tx_bps,
        rx_bytes_total: u.total.rx_bytes,
        tx_bytes_total: u.total.tx_bytes,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::net::SocketAddr;
    use std::sync::Arc;

    use pidcap_core::{
        attribute, NetNsId, OwnerMap, ProcessInfo, ProcessKey, SocketTable, TableParts, Tally,
    };
    use pidcap_proto::LookupRequest;
    use pidcap_wire::FlowKey;
    use serde_json::Value;
    use std::time::Duration;

    use super::*;

    const NS: NetNsId = NetNsId(4026531840);
    const ROOT: ProcessKey = ProcessKey {
        pid: 100,
        start_time: 1,
    };
    const USER: ProcessKey = ProcessKey {
        pid: 200,
        start_time: 2,
    };

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn info(key: ProcessKey, uid: u32, comm: &str) -> ProcessInfo {
        ProcessInfo {
            key,
            comm: comm.into(),
            exe: Some(format!("/usr/bin/{comm}")),
            uid,
            cmdline: vec![comm.into(), "--secret".into()],
            placement: Default::default(),
        }
    }

    fn socket(local: &str, remote: &str, inode: u64, uid: u32) -> SocketEntry {
        SocketEntry {
            netns: NS,
            proto: IpProto::Tcp,
            local: addr(local),
            remote: addr(remote),
            state: TcpState::Established,
            inode,
            uid,
        }
    }

    /// Root's server on :80 and user 1000's client, connected over loopback, with 1,000
    /// bytes each way counted.
    fn shared() -> Arc<DaemonState> {
        let server = socket("127.0.0.1:80", "127.0.0.1:40000", 1, 0);
        let client = socket("127.0.0.1:40000", "127.0.0.1:80", 2, 1000);
        let owners = OwnerMap {
            holders: HashMap::from([(1, vec![ROOT]), (2, vec![USER])]),
            processes: HashMap::from([
                (ROOT, info(ROOT, 0, "server")),
                (USER, info(USER, 1000, "client")),
            ]),
        };
        let table = SocketTable::build(
            1,
            TableParts {
                netns: Some(NS),
                sockets: vec![server, client],
                owners: Arc::new(owners),
                ..TableParts::default()
            },
        );
        let now = Instant::now();
        let mut tally = Tally::default();
        let flow = FlowKey {
            proto: IpProto::Tcp,
            src: client.local,
            dst: server.local,
        };
        tally.record(&attribute(&table, &flow, true), 1000);
        let shared = DaemonState::new(table, now);
        let table = shared.table();
        shared.ledger().merge(&mut tally, &table);
        shared
    }

    fn reply(r: Reply) -> Value {
        let line = r.unwrap_or_else(|(code, m)| panic!("{code:?}: {m}"));
        serde_json::from_slice(&line).unwrap()
    }

    fn pids(v: &Value) -> Vec<u64> {
        v["processes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["pid"].as_u64().unwrap())
            .collect()
    }

    #[test]
    fn a_restricted_viewer_sees_only_its_own_processes_and_is_told_so() {
        let shared = shared();
        let all = reply(processes(&shared, Viewer::Full));
        assert_eq!(pids(&all), [100, 200], "{all}");
        assert!(all.get("filtered_to_uid").is_none());
        let own = reply(processes(&shared, Viewer::Own { uid: 1000 }));
        assert_eq!(pids(&own), [200], "{own}");
        assert_eq!(own["filtered_to_uid"], 1000);
        assert_eq!(own["processes"][0]["tx_bytes_total"], 1000);
    }

    #[test]
    fn another_users_process_is_not_found_exactly_like_a_pid_without_traffic() {
        let shared = shared();
        let viewer = Viewer::Own { uid: 1000 };
        let hidden = process(&shared, ROOT.pid, viewer).unwrap_err();
        let absent = process(&shared, 999, viewer).unwrap_err();
        assert_eq!(hidden.0, ErrorCode::NotFound);
        assert_eq!(
            hidden.1.replace("pid 100 ", "pid N "),
            absent.1.replace("pid 999 ", "pid N ")
        );
        let detail = reply(process(&shared, ROOT.pid, Viewer::Full));
        assert_eq!(detail["process"]["cmdline"][1], "--secret");
        assert_eq!(detail["process"]["connections"][0]["state"], "ESTABLISHED");
    }

    #[test]
    fn lookup_names_only_owners_the_viewer_may_see() {
        let shared = shared();
        let q = LookupRequest {
            proto: "tcp".into(),
            local: "127.0.0.1:80".into(),
            remote: "127.0.0.1:40000".into(),
            netns: None,
        }
        .query()
        .unwrap();
        let full = reply(lookup(&shared, &q, Viewer::Full));
        assert_eq!(full["found"], true, "{full}");
        assert_eq!(full["owner"]["pid"], 100);
        assert_eq!(full["owner"]["matched"], "exact");
        let own = reply(lookup(&shared, &q, Viewer::Own { uid: 1000 }));
        assert_eq!(own["found"], false, "root's socket is not named: {own}");
        assert_eq!(own["filtered_to_uid"], 1000);
    }

    #[test]
    fn stats_list_every_thread_and_which_ones_run() {
        let shared = shared();
        let now = shared.started() + Duration::from_secs(60);
        shared.beat_worker(Worker::Capture, now);
        shared.beat_worker(Worker::Refresh, shared.started());
        let s = reply(stats(&shared, now, proto::QueryServer::default()));
        let threads = &s["stats"]["threads"];
        let names: Vec<&str> = threads
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            names,
            ["capture", "refresh", "watch", "trace", "namespaces"]
        );
        assert_eq!(threads[0]["running"], true);
        assert_eq!(threads[0]["stale"], false);
        assert_eq!(
            threads[1]["stale"], true,
            "a minute without a beat: {threads}"
        );
        assert_eq!(threads[2]["running"], false);
        assert_eq!(threads[2]["last_beat_ms"], Value::Null);
        assert_eq!(s["stats"]["credited_tx_bytes"], 1000);
        assert_eq!(s["stats"]["credited_rx_bytes"], 1000);
    }
}
