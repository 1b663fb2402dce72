//! `pidcap stats`: the daemon's counters as a readable listing.

use std::io::Write;
use std::process::ExitCode;

use pidcap_proto::{Request, Stats, StatsReply};

use crate::cli::StatsArgs;
use crate::client::Client;
use crate::format;

pub fn run(client: &mut Client, args: &StatsArgs, out: &mut dyn Write) -> anyhow::Result<ExitCode> {
    let reply = client.call::<StatsReply>(&Request::Stats)?;
    if args.json {
        super::write_raw(out, &reply.raw)?;
    } else {
        out.write_all(render(&reply.body.stats).as_bytes())?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `N packets, SIZE (N bytes)`.
fn traffic(packets: u64, bytes: u64) -> String {
    format!(
        "{packets} packets, {} ({bytes} bytes)",
        format::bytes(bytes)
    )
}

pub fn render(s: &Stats) -> String {
    format::key_values(&[
        ("interface", interface(s)),
        ("uptime", format::duration(s.uptime_s)),
        ("captured rx", traffic(s.rx_packets, s.rx_bytes)),
        ("captured tx", traffic(s.tx_packets, s.tx_bytes)),
        ("foreign", traffic(s.foreign_packets, s.foreign_bytes)),
        ("transit", traffic(s.transit_packets, s.transit_bytes)),
        (
            "credited rx",
            traffic(s.credited_rx_packets, s.credited_rx_bytes),
        ),
        (
            "credited tx",
            traffic(s.credited_tx_packets, s.credited_tx_bytes),
        ),
        (
            "unknown rx",
            traffic(s.unknown_rx_packets, s.unknown_rx_bytes),
        ),
        (
            "unknown tx",
            traffic(s.unknown_tx_packets, s.unknown_tx_bytes),
        ),
        ("pending", traffic(s.pending_packets, s.pending_bytes)),
        (
            "credited by match",
            format!(
                "exact {} B, wildcard {} B, recent {} B, late {} B, packet sender {} B",
                s.credited_matched.exact,
                s.credited_matched.wildcard,
                s.credited_matched.recent,
                s.credited_matched.late,
                s.credited_matched.packet_sender
            ),
        ),
        (
            "unknown by reason",
            format!(
                "no socket {} B, no process {} B, pending expired {} B, unsupported {} B",
                s.unknown_reasons.no_socket,
                s.unknown_reasons.no_process,
                s.unknown_reasons.pending_expired,
                s.unknown_reasons.unsupported
            ),
        ),
        ("non-IP packets", s.non_ip_packets.to_string()),
        ("malformed packets", s.malformed_packets.to_string()),
        ("pcap received", s.pcap_received.to_string()),
        ("pcap dropped", s.pcap_dropped.to_string()),
        ("pcap if dropped", s.pcap_if_dropped.to_string()),
        ("sockets known", s.sockets_known.to_string()),
        ("processes known", s.processes_known.to_string()),
        ("refreshes", refreshes(s)),
        ("last refresh", format!("{:.1} ms", s.last_refresh_ms)),
        (
            "process watcher",
            on_off(s.process_side.watcher).to_string(),
        ),
        (
            "socket tracer",
            format!(
                "{}: {} connections claimed, {} dropped (process gone before it was named), {} events lost",
                on_off(s.process_side.tracer),
                s.process_side.traced_claims,
                s.process_side.traced_unknown_process,
                s.process_side.trace_events_lost
            ),
        ),
        (
            "route lookups",
            format!(
                "{}: {} connected sockets named from them",
                match s.process_side.route_threads {
                    0 => "not traced".to_string(),
                    1 => "traced for 1 thread".to_string(),
                    n => format!("traced for {n} threads"),
                },
                s.process_side.traced_routes
            ),
        ),
        (
            "learned, dropped",
            format!(
                "{} (the refresher's queue was full)",
                s.process_side.learned_dropped
            ),
        ),
        ("query clients", query_clients(&s.query_server)),
        ("threads", threads(&s.threads)),
        (
            "process facts",
            format!(
                "{} processes, {}, {} evictions",
                s.process_facts.entries,
                format::bytes(s.process_facts.bytes),
                s.process_facts.evictions
            ),
        ),
        ("bounds", bounds(&s.bounds)),
        ("namespace capture", namespace_capture(&s.namespace_capture)),
    ])
}

/// The loopback captures inside other namespaces (`namespaces = all`).
fn namespace_capture(n: &pidcap_proto::NamespaceCapture) -> String {
    if !n.enabled {
        return "off (namespaces = home)".to_string();
    }
    format!(
        "{} open ({} opened, {} closed, {} failed to open), {} frames received, {} dropped",
        n.open, n.opened, n.closed, n.open_failures, n.received, n.dropped
    )
}

/// What happened at the packet path's bounds.
fn bounds(b: &pidcap_proto::Bounds) -> String {
    format!(
        "{} flows cached ({} clears), {} pending evicted, {} fragmented datagrams forgotten, \
         {} packet copies forgotten, {} reused ports tracked ({} forgotten)",
        b.flows_cached,
        b.flow_cache_clears,
        b.pending_evicted,
        b.fragments_forgotten,
        b.copies_forgotten,
        b.openings,
        b.openings_forgotten
    )
}

/// `capture 3 ms ago, refresh 120 ms ago, watch STALE 12 s, trace off`.
fn threads(threads: &[pidcap_proto::ThreadHealth]) -> String {
    if threads.is_empty() {
        return "not reported (an older daemon)".to_string();
    }
    let one = |t: &pidcap_proto::ThreadHealth| match t.last_beat_ms {
        None => format!("{} off", t.name),
        Some(ms) if t.stale => format!("{} STALE ({} s without a beat)", t.name, ms / 1000),
        Some(ms) => format!("{} {ms} ms ago", t.name),
    };
    threads.iter().map(one).collect::<Vec<_>>().join(", ")
}

/// Clients now and their limits, then what happened at each bound.
fn query_clients(q: &pidcap_proto::QueryServer) -> String {
    format!(
        "{} of {} ({} per user): {} refused, {} timed out, {} lines too long, {} accept errors",
        q.clients,
        q.client_limit,
        q.client_limit_per_user,
        q.clients_refused,
        q.clients_timed_out,
        q.lines_too_long,
        q.accept_errors
    )
}

/// Interface and link type; whether it is gone and how often it was reopened, when so.
fn interface(s: &Stats) -> String {
    let mut text = format!("{} ({})", s.interface, s.link_type);
    if s.capture_down {
        text.push_str(", GONE: counting paused until it returns");
    }
    if s.capture_reopens > 0 {
        text.push_str(&format!(", reopened {} times", s.capture_reopens));
    }
    text
}

/// Refreshes done, and how many failed when any did.
fn refreshes(s: &Stats) -> String {
    match s.refresh_failures {
        0 => s.refreshes.to_string(),
        failed => format!("{} ({failed} failed)", s.refreshes),
    }
}

fn on_off(running: bool) -> &'static str {
    if running {
        "running"
    } else {
        "off"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_counter_is_listed() {
        let stats = Stats {
            uptime_s: 3725.0,
            rx_packets: 10,
            rx_bytes: 2048,
            tx_packets: 11,
            tx_bytes: 12,
            foreign_packets: 13,
            foreign_bytes: 14,
            transit_packets: 57,
            transit_bytes: 58,
            credited_rx_bytes: 15,
            credited_tx_bytes: 16,
            credited_rx_packets: 17,
            credited_tx_packets: 18,
            unknown_rx_bytes: 19,
            unknown_tx_bytes: 20,
            unknown_rx_packets: 21,
            unknown_tx_packets: 22,
            non_ip_packets: 23,
            malformed_packets: 24,
            pcap_received: 25,
            pcap_dropped: 26,
            pcap_if_dropped: 27,
            sockets_known: 28,
            processes_known: 29,
            refreshes: 30,
            refresh_failures: 0,
            last_refresh_ms: 1.25,
            interface: "lo".into(),
            link_type: "EN10MB".into(),
            capture_down: false,
            capture_reopens: 0,
            credited_matched: pidcap_proto::MatchBytes {
                exact: 31,
                wildcard: 32,
                recent: 33,
                late: 34,
                packet_sender: 38,
            },
            unknown_reasons: pidcap_proto::UnknownReasons {
                no_socket: 35,
                no_process: 36,
                pending_expired: 37,
                unsupported: 38,
            },
            pending_packets: 39,
            pending_bytes: 40,
            process_side: pidcap_proto::ProcessSide {
                watcher: true,
                tracer: false,
                traced_claims: 41,
                traced_unknown_process: 42,
                trace_events_lost: 43,
                route_threads: 0,
                traced_routes: 44,
                learned_dropped: 52,
            },
            query_server: pidcap_proto::QueryServer {
                clients: 1,
                client_limit: 256,
                client_limit_per_user: 64,
                clients_refused: 45,
                clients_timed_out: 46,
                lines_too_long: 47,
                accept_errors: 48,
            },
            threads: vec![
                thread("capture", Some(3), false),
                thread("refresh", Some(120), false),
                thread("watch", Some(12_345), true),
                thread("trace", None, false),
            ],
            process_facts: pidcap_proto::ProcessFacts {
                entries: 49,
                bytes: 50,
                evictions: 51,
            },
            bounds: pidcap_proto::Bounds {
                flows_cached: 53,
                flow_cache_clears: 54,
                pending_evicted: 55,
                fragments_forgotten: 56,
                copies_forgotten: 59,
                openings: 66,
                openings_forgotten: 67,
            },
            namespace_capture: pidcap_proto::NamespaceCapture {
                enabled: true,
                open: 60,
                opened: 61,
                closed: 62,
                open_failures: 63,
                received: 64,
                dropped: 65,
            },
        };
        let failing = Stats {
            refresh_failures: 3,
            ..stats.clone()
        };
        assert!(render(&failing).contains("refreshes          30 (3 failed)\n"));
        let gone = Stats {
            capture_down: true,
            capture_reopens: 2,
            ..stats.clone()
        };
        assert!(render(&gone)
            .contains("lo (EN10MB), GONE: counting paused until it returns, reopened 2 times\n"));
        assert_eq!(
            render(&stats),
            "interface          lo (EN10MB)\n\
             uptime             1h 02m 05s\n\
             captured rx        10 packets, 2.0 KiB (2048 bytes)\n\
             captured tx        11 packets, 12 B (12 bytes)\n\
             foreign            13 packets, 14 B (14 bytes)\n\
             transit            57 packets, 58 B (58 bytes)\n\
             credited rx        17 packets, 15 B (15 bytes)\n\
             credited tx        18 packets, 16 B (16 bytes)\n\
             unknown rx         21 packets, 19 B (19 bytes)\n\
             unknown tx         22 packets, 20 B (20 bytes)\n\
             pending            39 packets, 40 B (40 bytes)\n\
             credited by match  exact 31 B, wildcard 32 B, recent 33 B, late 34 B, packet sender 38 B\n\
             unknown by reason  no socket 35 B, no process 36 B, pending expired 37 B, unsupported 38 B\n\
             non-IP packets     23\n\
             malformed packets  24\n\
             pcap received      25\n\
             pcap dropped       26\n\
             pcap if dropped    27\n\
             sockets known      28\n\
             processes known    29\n\
             refreshes          30\n\
             last refresh       1.2 ms\n\
             process watcher    running\n\
             socket tracer      off: 41 connections claimed, 42 dropped (process gone before it was named), 43 events lost\n\
             route lookups      not traced: 44 connected sockets named from them\n\
             learned, dropped   52 (the refresher's queue was full)\n\
             query clients      1 of 256 (64 per user): 45 refused, 46 timed out, 47 lines too long, 48 accept errors\n\
             threads            capture 3 ms ago, refresh 120 ms ago, watch STALE (12 s without a beat), trace off\n\
             process facts      49 processes, 50 B, 51 evictions\n\
             bounds             53 flows cached (54 clears), 55 pending evicted, 56 fragmented datagrams forgotten, 59 packet copies forgotten, 66 reused ports tracked (67 forgotten)\n\
             namespace capture  60 open (61 opened, 62 closed, 63 failed to open), 64 frames received, 65 dropped\n"
        );
        let old = Stats {
            threads: Vec::new(),
            ..stats.clone()
        };
        assert!(render(&old).contains("threads            not reported (an older daemon)\n"));
    }

    fn thread(name: &str, last_beat_ms: Option<u64>, stale: bool) -> pidcap_proto::ThreadHealth {
        pidcap_proto::ThreadHealth {
            name: name.into(),
            running: last_beat_ms.is_some(),
            last_beat_ms,
            stale,
        }
    }
}
