//! Answers to queries, built from the shared state. Each function copies what it needs out
//! of the ledger or table and releases the lock before the reply is serialised or sent.

use std::time::{Instant, SystemTime};

use pidcap_core::{
    canonical, ProcessUsage, QualityBytes, SocketEntry, SocketTable, TcpState, Usage,
};
use pidcap_proto as proto;
use pidcap_proto::{ErrorCode, LookupQuery};
use pidcap_wire::IpProto;

use crate::state::Shared;

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

fn row(p: &ProcessUsage) -> proto::ProcessRow {
    proto::ProcessRow {
        pid: p.key.pid,
        start_time: p.key.start_time,
        comm: p.meta.comm.clone(),
        exe: p.meta.exe.clone(),
        uid: p.meta.uid,
        usage: usage(&p.usage),
        alive: p.alive(),
        matched: matched(&p.quality),
    }
}

fn matched(q: &QualityBytes) -> proto::MatchBytes {
    proto::MatchBytes {
        exact: q.exact,
        wildcard: q.wildcard,
        recent: q.recent,
        late: q.late,
    }
}

pub fn processes(shared: &Shared) -> Reply {
    let (mut processes, unknown) = {
        let ledger = shared.ledger();
        let rows: Vec<proto::ProcessRow> = ledger.processes().map(row).collect();
        (rows, usage(ledger.unknown()))
    };
    processes.sort_by_key(|r| (r.pid, r.start_time));
    Ok(proto::encode_line(&proto::ok(proto::ProcessesReply {
        processes,
        unknown,
    })))
}

pub fn process(shared: &Shared, pid: u32) -> Reply {
    let row = shared.ledger().find_pid(pid).map(row);
    let Some(row) = row else {
        return Err((
            ErrorCode::NotFound,
            format!("no traffic seen for pid {pid}"),
        ));
    };
    let table = shared.table.load();
    let cmdline = table
        .process(&pidcap_core::ProcessKey {
            pid: row.pid,
            start_time: row.start_time,
        })
        .map(|p| p.cmdline.clone())
        .unwrap_or_default();
    let connections = table.connections_of(pid).map(connection).collect();
    let process = proto::ProcessDetail {
        row,
        cmdline,
        connections,
    };
    Ok(proto::encode_line(&proto::ok(proto::ProcessReply {
        process,
    })))
}

fn connection(s: &SocketEntry) -> proto::Connection {
    proto::Connection {
        proto: s.proto.name().into_owned(),
        local: s.local.to_string(),
        remote: s.remote.to_string(),
        state: state_name(s.proto, s.state).into(),
        inode: s.inode,
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

pub fn lookup(shared: &Shared, q: &LookupQuery) -> Reply {
    let table = shared.table.load();
    let proto = IpProto::from(q.proto.ip_number());
    let found = table
        .lookup(proto, canonical(q.local), canonical(q.remote))
        .and_then(|m| owner(&table, m.inode, m.owner?, m.kind.name()));
    let reply = match found {
        Some(owner) => proto::LookupReply::found(owner),
        None => proto::LookupReply::not_found(),
    };
    Ok(proto::encode_line(&proto::ok(reply)))
}

fn owner(
    table: &SocketTable,
    inode: u64,
    key: pidcap_core::ProcessKey,
    matched: &str,
) -> Option<proto::Owner> {
    let mut holders: Vec<u32> = table.holders(inode).iter().map(|k| k.pid).collect();
    holders.sort_unstable();
    holders.dedup();
    Some(proto::Owner {
        pid: key.pid,
        start_time: key.start_time,
        comm: table.process(&key)?.comm.clone(),
        inode,
        matched: matched.into(),
        holders,
    })
}

pub fn stats(shared: &Shared, now: Instant) -> Reply {
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
    let sockets = shared.table.load().sockets().len();
    let pending = shared.pending();
    let reasons = totals.unknown_by_reason;
    let stats = proto::Stats {
        uptime_s: uptime.as_secs_f64(),
        rx_packets: totals.captured.rx_packets,
        rx_bytes: totals.captured.rx_bytes,
        tx_packets: totals.captured.tx_packets,
        tx_bytes: totals.captured.tx_bytes,
        foreign_packets: totals.foreign_packets,
        foreign_bytes: totals.foreign_bytes,
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
        last_refresh_ms: refresh.last_duration.as_secs_f64() * 1000.0,
        interface: capture.origin,
        link_type: capture.link_name,
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
        },
    };
    Ok(proto::encode_line(&proto::ok(proto::StatsReply { stats })))
}

/// One `watch` frame: the current rate of every live process with traffic, busiest first.
pub fn watch_frame(shared: &Shared, interval_ms: u64) -> Vec<u8> {
    let (mut processes, unknown) = {
        let ledger = shared.ledger();
        let rows: Vec<proto::RateRow> = ledger
            .processes()
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
