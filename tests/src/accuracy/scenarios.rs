//! The scenarios. Each starts its own `pidcapd` (filtered to its own traffic) and reference
//! captures, runs real `pidcap-peer` processes, and returns an [`Outcome`].
//!
//! Invariants: a scenario panics only when it cannot run (a peer fails to start, a capture
//! cannot open); its processes, daemon and namespace are cleaned up by Drop on every path.
//! Traffic goes to loopback or into the scenario's own namespace only; counts and durations
//! are fixed by [`Size`].

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use super::measure::{drain, DaemonView, Outcome, Ownership, PidBytes, Status};
use super::sockets::{IPPROTO_TCP as TCP, IPPROTO_UDP as UDP};
use super::spawn::{run_peers, run_peers_in, Exited};
use super::sysctl::PingGroupRange;
use crate::{Bridge, Daemon, Nat, Netns, Peer, RefCapture};

/// Full size for the suite, small for the CI tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Size {
    Full,
    Quick,
}

impl Size {
    fn pick<T>(self, full: T, quick: T) -> T {
        match self {
            Size::Full => full,
            Size::Quick => quick,
        }
    }
}

/// How long the daemon's counters must stay still before they are read, and the bound.
const QUIET: Duration = Duration::from_secs(2);
const DRAIN_BOUND: Duration = Duration::from_secs(20);
/// Bound on a batch of short-lived peers.
const BATCH_TIMEOUT: Duration = Duration::from_secs(90);

/// A daemon and a reference capture watching one scenario's traffic (same interface, same
/// filter).
#[derive(Debug)]
struct Watch {
    daemon: Daemon,
    cap: RefCapture,
}

impl Watch {
    fn start(interface: &str, filter: &str) -> Watch {
        Watch::start_apart(interface, interface, filter)
    }

    /// The daemon on `interface`, the reference capture on `truth_on` (an interface every
    /// packet of the scenario crosses exactly once).
    fn start_apart(interface: &str, truth_on: &str, filter: &str) -> Watch {
        let daemon = Daemon::start(&["--interface", interface, "--filter", filter]);
        let cap = RefCapture::start(truth_on, filter);
        Watch { daemon, cap }
    }

    /// Waits for the daemon to drain, builds the ownership (`own` runs after the drain, so
    /// it may stop captures of its own), and compares.
    fn finish(
        self,
        name: &str,
        is_local: impl Fn(IpAddr) -> bool,
        mut notes: Vec<String>,
        own: impl FnOnce() -> Ownership,
    ) -> (Outcome, DaemonView) {
        let Watch { mut daemon, cap } = self;
        if !drain(&daemon, QUIET, DRAIN_BOUND) {
            notes.push(format!(
                "daemon counters still moving after {DRAIN_BOUND:?}"
            ));
        }
        let view = DaemonView::read(&daemon);
        let truth = cap.stop();
        let own = own();
        if truth.unparsed > 0 {
            notes.push(format!(
                "reference capture could not parse {} frames",
                truth.unparsed
            ));
        }
        notes.extend(own.collision_notes());
        let mut outcome = Outcome::compare(name, &own.split(&truth, is_local), &view);
        outcome.notes.extend(notes);
        let finished = daemon.stop();
        if !finished.status.success() {
            outcome.notes.push(format!(
                "pidcapd exited with {} after SIGTERM",
                finished.status
            ));
        }
        (outcome, view)
    }
}

fn on_host(_: IpAddr) -> bool {
    true
}

fn ports_filter(proto: &str, ports: impl IntoIterator<Item = u16>) -> String {
    let ports: Vec<String> = ports.into_iter().map(|p| format!("port {p}")).collect();
    format!("{proto} and ({})", ports.join(" or "))
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

fn sink(bind: &str) -> Peer {
    Peer::spawn(&["tcp-sink", "--bind", bind])
}

/// A distinct loopback source address per client (`127.<net>.x.y`), so a port reused by a
/// later process can never make two processes' traffic look alike.
fn loopback_source(net: u8, i: usize) -> String {
    format!("127.{net}.{}.{}", i / 250, i % 250 + 1)
}

/// Adds every reported flow to `own`; returns notes about peers that failed.
fn add_flows(own: &mut Ownership, exited: &[Exited], proto: u8) -> Vec<String> {
    let mut failed = Vec::new();
    for e in exited {
        own.add_measured(e.pid, PidBytes::default());
        for flow in &e.flows {
            match proto {
                TCP => own.add_connection(flow.pid, flow.local, flow.remote, flow.at_us),
                _ => own.add(flow.pid, proto, flow.local),
            }
        }
        if !e.status.is_some_and(|s| s.success()) {
            failed.push(format!("pid {} ({:?})", e.pid, e.status));
        }
    }
    match failed.is_empty() {
        true => Vec::new(),
        false => vec![format!(
            "{} peer(s) failed: {}",
            failed.len(),
            failed.join(", ")
        )],
    }
}

fn lifetimes_note(exited: &[Exited]) -> String {
    let mut ms: Vec<u128> = exited.iter().map(|e| e.lifetime.as_millis()).collect();
    ms.sort_unstable();
    let at = |q: usize| {
        ms.get(ms.len().saturating_sub(1) * q / 100)
            .copied()
            .unwrap_or(0)
    };
    format!(
        "{} processes, lifetime min {} / median {} / max {} ms",
        ms.len(),
        at(0),
        at(50),
        at(100)
    )
}

/// Closes the peers' stdin and waits; notes any that did not exit 0.
fn finish_peers(peers: Vec<Peer>) -> Vec<String> {
    peers
        .into_iter()
        .filter_map(|p| {
            let pid = p.pid();
            let status = p.finish();
            (!status.success()).then(|| format!("peer {pid} exited with {status}"))
        })
        .collect()
}

/// 1. Long-lived TCP: client/server pairs over IPv4 and IPv6 at once, each client streaming
///    1–4.5 MB (answered with half as much) over about two seconds.
pub fn long_lived_tcp(size: Size) -> Outcome {
    let name = "1. long-lived TCP, IPv4 + IPv6";
    let (per_family, duration) = size.pick((4, "2000"), (1, "500"));
    let sinks: Vec<Peer> = (0..per_family * 2)
        .map(|i| sink(if i % 2 == 0 { "127.0.0.1:0" } else { "[::1]:0" }))
        .collect();
    let watch = Watch::start(
        "lo",
        &ports_filter("tcp", sinks.iter().map(|s| s.info.local.port())),
    );
    let runs: Vec<Vec<String>> = sinks
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let bytes = 1_000_000 + i * 500_000;
            let mut a = args(&["tcp-burst", "--connect", &s.info.local.to_string()]);
            a.extend(args(&[
                "--bytes",
                &bytes.to_string(),
                "--reply",
                &(bytes / 2).to_string(),
            ]));
            a.extend(args(&["--duration-ms", duration]));
            a
        })
        .collect();
    let exited = run_peers(&runs, runs.len(), BATCH_TIMEOUT);
    let mut own = Ownership::default();
    sinks
        .iter()
        .for_each(|s| own.add(s.pid(), TCP, s.info.local));
    let mut notes = add_flows(&mut own, &exited, TCP);
    notes.extend(finish_peers(sinks));
    watch.finish(name, on_host, notes, || own).0
}

/// 2. Short-lived clients: each a fresh process that connects to one long-lived server,
///    moves 20–200 KB each way the moment it is connected, and exits.
pub fn short_lived_tcp(size: Size) -> Outcome {
    let (clients, parallel) = size.pick((200, 20), (30, 10));
    let name = format!("2. {clients} short-lived TCP client processes");
    let server = sink("127.0.0.1:0");
    let watch = Watch::start("lo", &ports_filter("tcp", [server.info.local.port()]));
    let target = server.info.local.to_string();
    let runs: Vec<Vec<String>> = (0..clients)
        .map(|i| {
            let bytes = (20_000 + i * 7_919 % 180_001).to_string();
            args(&["tcp-burst", "--connect", &target, "--bytes", &bytes])
                .into_iter()
                .chain(args(&["--from", &loopback_source(77, i)]))
                .collect()
        })
        .collect();
    let exited = run_peers(&runs, parallel, BATCH_TIMEOUT);
    let mut own = Ownership::default();
    own.add(server.pid(), TCP, server.info.local);
    let mut notes = add_flows(&mut own, &exited, TCP);
    notes.push(lifetimes_note(&exited));
    notes.extend(finish_peers(vec![server]));
    watch.finish(&name, on_host, notes, || own).0
}

/// A UDP receiver answering `count` datagrams, and its sender's arguments (after `bind`).
fn udp_pair(recv_bind: &str, sender: &[&str], count: usize) -> (Peer, Peer) {
    let count = count.to_string();
    let receiver = Peer::spawn(&[
        "udp-recv",
        "--bind",
        recv_bind,
        "--count",
        &count,
        "--reply-size",
        "300",
    ]);
    let port = receiver.info.local.port();
    let fill = |a: &str| a.replace("PORT", &port.to_string());
    let mut list: Vec<String> = sender.iter().map(|a| fill(a)).collect();
    list.extend(args(&[
        "--count",
        &count,
        "--size",
        "1000",
        "--await-reply",
    ]));
    let list: Vec<&str> = list.iter().map(String::as_str).collect();
    (receiver, Peer::spawn(&list))
}

/// 3. UDP: connected sockets (full size only), unconnected sockets on `0.0.0.0` and `::`,
///    and IPv4 on dual-stack `::` sockets (sender and receiver).
pub fn udp(size: Size) -> Outcome {
    let name = match size {
        Size::Full => "3. UDP: connected, unconnected 0.0.0.0 / ::, IPv4 on dual-stack ::",
        Size::Quick => "3. UDP: unconnected 0.0.0.0 / ::, IPv4 on dual-stack ::",
    };
    let count = size.pick(200, 50);
    let mut pairs = vec![
        udp_pair(
            "0.0.0.0:0",
            &["udp-send", "--bind", "0.0.0.0:0", "--to", "127.0.0.1:PORT"],
            count,
        ),
        udp_pair(
            "[::]:0",
            &["udp-send", "--bind", "[::]:0", "--to", "[::1]:PORT"],
            count,
        ),
        udp_pair("[::]:0", &["udp-dual", "--to", "127.0.0.1:PORT"], count),
    ];
    if size == Size::Full {
        let connected = [
            "udp-send",
            "--bind",
            "127.0.0.1:0",
            "--connect",
            "127.0.0.1:PORT",
        ];
        pairs.push(udp_pair("127.0.0.1:0", &connected, count));
    }
    let mut peers: Vec<Peer> = pairs.into_iter().flat_map(|(r, s)| [r, s]).collect();
    let watch = Watch::start(
        "lo",
        &ports_filter("udp", peers.iter().map(|p| p.info.local.port())),
    );
    peers.iter_mut().for_each(Peer::go);
    peers.iter_mut().for_each(|p| {
        p.wait_done();
    });
    let mut own = Ownership::default();
    peers
        .iter()
        .for_each(|p| own.add(p.pid(), UDP, p.info.local));
    let notes = finish_peers(peers);
    watch.finish(name, on_host, notes, || own).0
}

/// BPF for one ping socket's echo requests (`reply` false) or replies, by identifier.
fn echo_filter(v6: bool, id: u16, reply: bool) -> String {
    match (v6, reply) {
        (false, false) => format!("(icmp and icmp[0] == 8 and icmp[4:2] == {id})"),
        (false, true) => format!("(icmp and icmp[0] == 0 and icmp[4:2] == {id})"),
        (true, false) => format!("(icmp6 and ip6[40] == 128 and ip6[44:2] == {id})"),
        (true, true) => format!("(icmp6 and ip6[40] == 129 and ip6[44:2] == {id})"),
    }
}

/// 4a. ICMP echo from ping sockets to 127.0.0.1 and ICMPv6 echo to ::1. A process's truth is
///     its requests (tx) and the replies to its identifier (rx), each counted by a capture
///     of its own; the kernel's side (request rx, reply tx) has no owner.
pub fn ping(size: Size) -> Outcome {
    let name = "4a. ICMP / ICMPv6 echo from ping sockets";
    let _range = match PingGroupRange::open_to_all() {
        Ok(range) => range,
        Err(e) => return Outcome::not_run(name, Status::Failed(format!("ping_group_range: {e}"))),
    };
    let (per_family, count) = size.pick((2, "100"), (1, "30"));
    let mut pingers: Vec<Peer> = (0..per_family * 2)
        .map(|i| {
            let to = if i % 2 == 0 { "127.0.0.1" } else { "::1" };
            Peer::spawn(&["ping", "--to", to, "--count", count, "--size", "56"])
        })
        .collect();
    let echo = |p: &Peer, reply| echo_filter(p.info.local.is_ipv6(), p.info.local.port(), reply);
    let all: Vec<String> = pingers
        .iter()
        .flat_map(|p| [echo(p, false), echo(p, true)])
        .collect();
    let watch = Watch::start("lo", &all.join(" or "));
    let caps: Vec<(u32, RefCapture, RefCapture)> = pingers
        .iter()
        .map(|p| {
            let tx = RefCapture::start("lo", &echo(p, false));
            (p.pid(), tx, RefCapture::start("lo", &echo(p, true)))
        })
        .collect();
    pingers.iter_mut().for_each(Peer::go);
    pingers.iter_mut().for_each(|p| {
        p.wait_done();
    });
    let notes = finish_peers(pingers);
    watch
        .finish(name, on_host, notes, || {
            let mut own = Ownership::default();
            for (pid, tx, rx) in caps {
                let (tx, rx) = (tx.stop().total().bytes, rx.stop().total().bytes);
                own.add_measured(pid, PidBytes { rx, tx });
            }
            own
        })
        .0
}

/// 4b. Raw IP sockets of protocol 253: a sender bound to 127.0.0.3, a receiver bound to
///     127.0.0.4 (and connected to .3). Distinct addresses keep the sender's own raw socket
///     from receiving copies, so each packet has exactly one sender and one receiver.
pub fn raw_ip() -> Outcome {
    let name = "4b. raw IP sockets, protocol 253";
    let (proto, count) = (253_u8, "200");
    let mut receiver = Peer::spawn(&[
        "raw-recv",
        "--from",
        "127.0.0.4",
        "--to",
        "127.0.0.3",
        "--proto",
        "253",
        "--count",
        count,
    ]);
    let mut sender = Peer::spawn(&[
        "raw-send",
        "--from",
        "127.0.0.3",
        "--to",
        "127.0.0.4",
        "--proto",
        "253",
        "--count",
        count,
        "--size",
        "500",
    ]);
    let watch = Watch::start("lo", "ip proto 253 and (host 127.0.0.3 or host 127.0.0.4)");
    receiver.go();
    sender.go();
    sender.wait_done();
    let received = receiver.wait_done().received;
    let mut own = Ownership::default();
    own.add(sender.pid(), proto, sender.info.local);
    own.add(receiver.pid(), proto, receiver.info.local);
    let mut notes = vec![format!("receiver read {received} B (IP headers included)")];
    notes.extend(finish_peers(vec![receiver, sender]));
    watch.finish(name, on_host, notes, || own).0
}

/// Scenario 17, frames injected through an AF_PACKET socket (issue #12): 200 UDP
/// datagrams, from `127.0.0.5:4000` to `127.0.0.6:4001`, written as whole Ethernet frames on
/// `lo` by one process; no IP socket has those addresses. Their owner is the packet
/// socket's holder.
pub fn af_packet() -> Outcome {
    let name = "17. frames sent through an AF_PACKET socket (no IP socket)";
    let from: SocketAddr = "127.0.0.5:4000".parse().expect("address");
    let mut sender = Peer::spawn(&[
        "packet-send",
        "--bind",
        &from.to_string(),
        "--to",
        "127.0.0.6:4001",
        "--count",
        "200",
        "--size",
        "300",
    ]);
    let watch = Watch::start("lo", "udp and src host 127.0.0.5 and src port 4000");
    sender.go();
    sender.wait_done();
    let mut own = Ownership::default();
    own.add(sender.pid(), UDP, from);
    let notes = finish_peers(vec![sender]);
    watch.finish(name, on_host, notes, || own).0
}

/// 4c. SCTP over loopback, if the kernel offers it: one association, 1 MB client to server.
pub fn sctp() -> Outcome {
    let name = "4c. SCTP";
    if let Err(e) = super::sockets::sctp_available() {
        let why = format!("socket(AF_INET, SOCK_STREAM, IPPROTO_SCTP): {e}");
        return Outcome::not_run(name, Status::Skipped(why));
    }
    let mut server = Peer::spawn(&["sctp-server", "--bind", "127.0.0.1:0", "--recv", "1000000"]);
    let port = server.info.local.port();
    let watch = Watch::start("lo", &format!("sctp and port {port}"));
    let mut client = Peer::spawn(&[
        "sctp-client",
        "--connect",
        &server.info.local.to_string(),
        "--send",
        "1000000",
    ]);
    server.accepted();
    // The reference parser reads no SCTP ports, so each end is counted by captures of its own.
    let end = |p: u16| {
        let tx = RefCapture::start("lo", &format!("sctp and src port {p}"));
        (
            tx,
            RefCapture::start("lo", &format!("sctp and dst port {p}")),
        )
    };
    let ends = [
        (server.pid(), end(port)),
        (client.pid(), end(client.info.local.port())),
    ];
    server.go();
    client.go();
    client.wait_done();
    server.wait_done();
    let notes = finish_peers(vec![client, server]);
    watch
        .finish(name, on_host, notes, || {
            let mut own = Ownership::default();
            for (pid, (tx, rx)) in ends {
                let (tx, rx) = (tx.stop().total().bytes, rx.stop().total().bytes);
                own.add_measured(pid, PidBytes { rx, tx });
            }
            own
        })
        .0
}

/// 5. Two local processes over loopback (TCP 2 MB / 1 MB, connected UDP): every packet is
///    tx for one and rx for the other, so each receiver's rx must equal its sender's tx.
pub fn loopback_pair() -> Outcome {
    let name = "5. loopback pair, both ends credited";
    let mut server = Peer::spawn(&[
        "tcp-server",
        "--bind",
        "127.0.0.1:0",
        "--recv",
        "2000000",
        "--send",
        "1000000",
    ]);
    let (receiver, sender) = udp_pair(
        "127.0.0.1:0",
        &[
            "udp-send",
            "--bind",
            "127.0.0.1:0",
            "--connect",
            "127.0.0.1:PORT",
        ],
        200,
    );
    let ports = [
        server.info.local.port(),
        receiver.info.local.port(),
        sender.info.local.port(),
    ];
    let watch = Watch::start("lo", &ports_filter("(tcp or udp)", ports));
    let remote = server.info.local.to_string();
    let client = Peer::spawn(&[
        "tcp-client",
        "--connect",
        &remote,
        "--send",
        "2000000",
        "--recv",
        "1000000",
    ]);
    server.accepted();
    let mut peers = vec![server, client, receiver, sender];
    peers.iter_mut().for_each(Peer::go);
    peers.iter_mut().for_each(|p| {
        p.wait_done();
    });
    let mut own = Ownership::default();
    for (p, proto) in peers.iter().zip([TCP, TCP, UDP, UDP]) {
        own.add(p.pid(), proto, p.info.local);
    }
    let pids: Vec<u32> = peers.iter().map(Peer::pid).collect();
    let notes = finish_peers(peers);
    let (mut outcome, view) = watch.finish(name, on_host, notes, || own);
    outcome
        .notes
        .extend(balance(&view, pids[0], pids[1], "tcp"));
    outcome
        .notes
        .extend(balance(&view, pids[2], pids[3], "udp"));
    outcome
}

/// "a rx == b tx and b rx == a tx" in the daemon's totals, as a note.
fn balance(view: &DaemonView, a: u32, b: u32, what: &str) -> Vec<String> {
    let get = |pid| {
        view.per_pid
            .get(&pid)
            .map(|(bytes, _)| *bytes)
            .unwrap_or_default()
    };
    let (a, b) = (get(a), get(b));
    let verdict = |x: u64, y: u64| if x == y { "equal" } else { "DIFFER" };
    vec![format!(
        "{what}: server rx {} / client tx {} B {}; client rx {} / server tx {} B {}",
        a.rx,
        b.tx,
        verdict(a.rx, b.tx),
        b.rx,
        a.tx,
        verdict(b.rx, a.tx)
    )]
}

/// 6. Across a veth pair: servers inside a namespace the scenario creates, host clients
///    (long streams over IPv4 and IPv6, short-lived bursts over IPv4), daemon on `any`. Only
///    the host's ends are local; the namespace's processes are not this host's to credit.
pub fn veth(size: Size) -> Outcome {
    let name = "6. veth into a network namespace (daemon on any)";
    let ns = Netns::new();
    let bind = |v6| SocketAddr::new(ns.ns_ip(v6), 0).to_string();
    let sinks = [false, true].map(|v6| Peer::spawn_in(&ns, &["tcp-sink", "--bind", &bind(v6)]));
    let n = ns.host_v4.octets()[2];
    let filter = format!(
        "{} and (net 10.231.{n}.0/24 or net fd00:231:{n}::/64)",
        ports_filter("tcp", sinks.iter().map(|s| s.info.local.port()))
    );
    let watch = Watch::start("any", &filter);
    let mut runs = Vec::new();
    for s in &sinks {
        for _ in 0..2 {
            let to = s.info.local.to_string();
            runs.push(args(&[
                "tcp-burst",
                "--connect",
                &to,
                "--bytes",
                "2000000",
                "--duration-ms",
                "1000",
            ]));
        }
    }
    let to = sinks[0].info.local.to_string();
    for _ in 0..size.pick(20, 5) {
        runs.push(args(&["tcp-burst", "--connect", &to, "--bytes", "100000"]));
    }
    let exited = run_peers(&runs, 10, BATCH_TIMEOUT);
    let mut own = Ownership::default();
    // The sinks in the namespace are local processes too: both ends of every packet count.
    sinks
        .iter()
        .for_each(|s| own.add(s.pid(), TCP, s.info.local));
    let mut notes = add_flows(&mut own, &exited, TCP);
    notes.push(lifetimes_note(&exited));
    notes.extend(finish_peers(sinks.into()));
    let outcome = watch.finish(name, on_host, notes, || own).0;
    drop(ns);
    outcome
}

/// 10. Containers behind a Linux bridge (as Docker's and Podman's default networks): clients
///     on the host and in container A connect to sinks in containers A and B. With the daemon
///     on `any`, a host↔A packet is captured on the bridge and on A's port, an A↔B packet on
///     both ports: each must be credited once at each end. Truth: A's port, which every
///     packet of the scenario crosses exactly once.
pub fn bridge(size: Size) -> Outcome {
    let name = "10. containers behind a bridge (daemon on any), both ends";
    let bridge = Bridge::new(2);
    let (a, b) = (&bridge.members[0], &bridge.members[1]);
    let sink_in = |m: &crate::bridge::Member| {
        let bind = format!("{}:0", m.addr);
        Peer::spawn_in_member(m, &["tcp-sink", "--bind", &bind])
    };
    let sinks = [sink_in(a), sink_in(b)];
    let n = bridge.host_addr.octets()[2];
    let filter = format!(
        "{} and net 10.232.{n}.0/24",
        ports_filter("tcp", sinks.iter().map(|s| s.info.local.port()))
    );
    let watch = Watch::start_apart("any", &a.port, &filter);
    let burst = |to: &Peer, bytes: &str| {
        let to = to.info.local.to_string();
        args(&["tcp-burst", "--connect", &to, "--bytes", bytes])
    };
    let count = size.pick(20, 5);
    let from_host: Vec<Vec<String>> = (0..count).map(|_| burst(&sinks[0], "200000")).collect();
    let from_a: Vec<Vec<String>> = (0..count).map(|_| burst(&sinks[1], "200000")).collect();
    let mut exited = run_peers(&from_host, 5, BATCH_TIMEOUT);
    exited.extend(run_peers_in(Some(&a.name), &from_a, 5, BATCH_TIMEOUT));
    let mut own = Ownership::default();
    sinks
        .iter()
        .for_each(|s| own.add(s.pid(), TCP, s.info.local));
    let mut notes = add_flows(&mut own, &exited, TCP);
    notes.push(lifetimes_note(&exited));
    notes.extend(finish_peers(sinks.into()));
    let (outcome, view) = watch.finish(name, on_host, notes, || own);
    let mut outcome = outcome;
    let transit = view.stats["transit_bytes"].as_u64().unwrap_or(0);
    outcome
        .notes
        .push(format!("transit (copies not credited again) {transit} B"));
    drop(bridge);
    outcome
}

/// 11. Containers behind NAT, as Docker publishes them: clients in container A reach a sink
///     in an outside network through MASQUERADE; clients outside, and on the host itself,
///     reach sinks in A through ports of a host address forwarded by DNAT. With the daemon on
///     `any`, each packet is captured untranslated on A's port and the bridge and translated
///     on the outside link: each must be credited once at each end. Truth: A's port, which
///     every packet of the scenario crosses exactly once, untranslated (there, every end has
///     the address its own socket has: MASQUERADE rewrites A's clients' addresses only
///     beyond it, DNAT leaves the clients' addresses alone).
pub fn nat(size: Size) -> Outcome {
    const FORWARDS: [(u16, u16); 2] = [(18090, 8090), (18091, 8091)];
    let name = "11. containers behind NAT (MASQUERADE out, DNAT in from outside and from the host; daemon on any), both ends";
    let nat = Nat::new(&FORWARDS);
    let (a, out) = (&nat.bridge.members[0], &nat.outside);
    let sinks = [
        Peer::spawn_in(out, &["tcp-sink", "--bind", &format!("{}:0", out.ns_v4)]),
        Peer::spawn_in_member(
            a,
            &[
                "tcp-sink",
                "--bind",
                &format!("{}:{}", a.addr, FORWARDS[0].1),
            ],
        ),
        Peer::spawn_in_member(
            a,
            &[
                "tcp-sink",
                "--bind",
                &format!("{}:{}", a.addr, FORWARDS[1].1),
            ],
        ),
    ];
    let n = nat.bridge.host_addr.octets()[2];
    let filter = format!(
        "{} and net 10.232.{n}.0/24",
        ports_filter("tcp", sinks.iter().map(|s| s.info.local.port()))
    );
    let watch = Watch::start_apart("any", &a.port, &filter);
    let burst = |to: String| args(&["tcp-burst", "--connect", &to, "--bytes", "200000"]);
    let count = size.pick(20, 5);
    let published = |i: usize| format!("{}:{}", out.host_v4, FORWARDS[i].0);
    let masqueraded: Vec<_> = (0..count)
        .map(|_| burst(sinks[0].info.local.to_string()))
        .collect();
    let from_outside: Vec<_> = (0..count).map(|_| burst(published(0))).collect();
    let from_host: Vec<_> = (0..count).map(|_| burst(published(1))).collect();
    let mut exited = run_peers_in(Some(&a.name), &masqueraded, 5, BATCH_TIMEOUT);
    exited.extend(run_peers_in(
        Some(&out.name),
        &from_outside,
        5,
        BATCH_TIMEOUT,
    ));
    exited.extend(run_peers(&from_host, 5, BATCH_TIMEOUT));
    let mut own = Ownership::default();
    sinks
        .iter()
        .for_each(|s| own.add(s.pid(), TCP, s.info.local));
    let mut notes = add_flows(&mut own, &exited, TCP);
    notes.push(lifetimes_note(&exited));
    notes.extend(finish_peers(sinks.into()));
    let (mut outcome, view) = watch.finish(name, on_host, notes, || own);
    let transit = view.stats["transit_bytes"].as_u64().unwrap_or(0);
    outcome
        .notes
        .push(format!("transit (copies not credited again) {transit} B"));
    drop(nat);
    outcome
}

/// 7. Connection churn: processes that open a connection, move 2 KB each way, close it and
///    sleep 100 ms, again and again for a few seconds, each from a loopback address of its
///    own.
pub fn churn(size: Size) -> Outcome {
    let procs = size.pick(50, 10);
    let name = format!("7. churn: {procs} processes reconnecting every 100 ms");
    churn_from(size, &name, |i| Some(loopback_source(78, i)))
}

/// 13. Churn as on a real host: the processes of scenario 7 all from `127.0.0.1` with
///     ephemeral ports, so local ports pass from process to process during the run.
pub fn churn_one_address(size: Size) -> Outcome {
    let procs = size.pick(50, 10);
    let name = format!("13. churn from one address: {procs} processes reconnecting every 100 ms");
    churn_from(size, &name, |_| None)
}

fn churn_from(size: Size, name: &str, from: impl Fn(usize) -> Option<String>) -> Outcome {
    let (procs, millis) = size.pick((50, "5000"), (10, "2000"));
    let server = sink("127.0.0.1:0");
    let watch = Watch::start("lo", &ports_filter("tcp", [server.info.local.port()]));
    let target = server.info.local.to_string();
    let runs: Vec<Vec<String>> = (0..procs)
        .map(|i| {
            let mut a = args(&["churn", "--connect", &target, "--duration-ms", millis]);
            a.extend(args(&["--bytes", "2000"]));
            if let Some(from) = from(i) {
                a.extend(args(&["--from", &from]));
            }
            a
        })
        .collect();
    let exited = run_peers(&runs, procs, BATCH_TIMEOUT);
    let mut own = Ownership::default();
    own.add(server.pid(), TCP, server.info.local);
    let mut notes = add_flows(&mut own, &exited, TCP);
    let connections: usize = exited.iter().map(|e| e.flows.len()).sum();
    notes.push(format!("{connections} connections"));
    notes.extend(finish_peers(vec![server]));
    watch.finish(name, on_host, notes, || own).0
}

/// 9. A resolver's pattern: long-lived processes (older than the watcher's window when they
///    start) sending queries over fresh connected UDP sockets, one per query, each living
///    one round trip (about 0.1 ms on loopback), to one UDP server that answers each.
pub fn udp_queries(size: Size) -> Outcome {
    let (procs, count) = size.pick((4, 100), (2, 40));
    let name =
        format!("9. UDP queries: {procs} older processes, a fresh connected socket per query");
    let total = (procs * count).to_string();
    let mut server = Peer::spawn(&[
        "udp-recv",
        "--bind",
        "127.0.0.1:0",
        "--count",
        &total,
        "--reply-size",
        "180",
    ]);
    let watch = Watch::start("lo", &ports_filter("udp", [server.info.local.port()]));
    server.go();
    let target = server.info.local.to_string();
    let count = count.to_string();
    let runs: Vec<Vec<String>> = (0..procs)
        .map(|i| {
            args(&[
                "udp-queries",
                "--connect",
                &target,
                "--count",
                &count,
                "--size",
                "60",
                "--duration-ms",
                "400",
                "--interval-ms",
                "10",
                "--from",
                &loopback_source(80, i),
            ])
        })
        .collect();
    let exited = run_peers(&runs, procs, BATCH_TIMEOUT);
    let mut own = Ownership::default();
    own.add(server.pid(), UDP, server.info.local);
    let mut notes = add_flows(&mut own, &exited, UDP);
    server.wait_done();
    notes.extend(finish_peers(vec![server]));
    watch.finish(&name, on_host, notes, || own).0
}

/// 8. A high-rate burst: many processes each open one TCP flow at the same moment and move
///    1 MB each way.
pub fn parallel_flows(size: Size) -> Outcome {
    let flows = size.pick(64, 16);
    let name = format!("8. {flows} parallel TCP flows, 1 MB each way");
    let server = sink("127.0.0.1:0");
    let watch = Watch::start("lo", &ports_filter("tcp", [server.info.local.port()]));
    let target = server.info.local.to_string();
    let runs: Vec<Vec<String>> = (0..flows)
        .map(|i| {
            let mut a = args(&["tcp-burst", "--connect", &target, "--bytes", "1000000"]);
            a.extend(args(&["--from", &loopback_source(79, i)]));
            a
        })
        .collect();
    let exited = run_peers(&runs, flows, BATCH_TIMEOUT);
    let mut own = Ownership::default();
    own.add(server.pid(), TCP, server.info.local);
    let mut notes = add_flows(&mut own, &exited, TCP);
    notes.push(lifetimes_note(&exited));
    notes.extend(finish_peers(vec![server]));
    watch.finish(&name, on_host, notes, || own).0
}

/// 12. A container's own loopback, with `--namespaces all`: a sink and a UDP receiver on
///     `127.0.0.1` inside a namespace the scenario creates, short-lived clients and a UDP
///     sender in the same namespace. No interface of the host carries this traffic; the
///     daemon captures it inside the namespace. A decoy sink of the host is bound to the very
///     same address and port on the host's loopback: a lookup that strayed out of the
///     namespace would credit it (a wrong credit). Truth: the namespace's `lo`.
pub fn container_loopback(size: Size) -> Outcome {
    let name = "12. a container's own loopback (--namespaces all), both ends";
    let ns = Netns::new();
    let in_ns = |a: &[&str]| Peer::spawn_in(&ns, a);
    let server = in_ns(&["tcp-sink", "--bind", "127.0.0.1:0"]);
    let decoy = sink(&server.info.local.to_string());
    let count = size.pick(200, 50).to_string();
    let receiver = in_ns(&[
        "udp-recv",
        "--bind",
        "127.0.0.1:0",
        "--count",
        &count,
        "--reply-size",
        "300",
    ]);
    let to = receiver.info.local.to_string();
    let sender = in_ns(&[
        "udp-send",
        "--bind",
        "127.0.0.1:0",
        "--to",
        &to,
        "--count",
        &count,
        "--size",
        "1000",
        "--await-reply",
    ]);
    let ports = [
        server.info.local.port(),
        receiver.info.local.port(),
        sender.info.local.port(),
    ];
    let filter = ports_filter("(tcp or udp)", ports);
    let daemon = Daemon::start(&[
        "--interface",
        "any",
        "--filter",
        &filter,
        "--namespaces",
        "all",
    ]);
    let opened = crate::wait_until(Duration::from_secs(15), || {
        daemon.stats()["namespace_capture"]["open"].as_u64() >= Some(1)
    });
    assert!(opened, "no namespace capture opened: {}", daemon.stats());
    let cap = RefCapture::start_in(&ns.name, "lo", &filter);
    let watch = Watch { daemon, cap };
    let target = server.info.local.to_string();
    let runs: Vec<Vec<String>> = (0..size.pick(40, 10))
        .map(|_| args(&["tcp-burst", "--connect", &target, "--bytes", "200000"]))
        .collect();
    let mut udp = vec![receiver, sender];
    udp.iter_mut().for_each(Peer::go);
    let exited = run_peers_in(Some(&ns.name), &runs, 5, BATCH_TIMEOUT);
    udp.iter_mut().for_each(|p| {
        p.wait_done();
    });
    let mut own = Ownership::default();
    own.add(server.pid(), TCP, server.info.local);
    udp.iter().for_each(|p| own.add(p.pid(), UDP, p.info.local));
    let mut notes = add_flows(&mut own, &exited, TCP);
    notes.push(lifetimes_note(&exited));
    let decoy_pid = decoy.pid();
    notes.extend(finish_peers(udp));
    notes.extend(finish_peers(vec![server, decoy]));
    let (mut outcome, view) = watch.finish(name, on_host, notes, || own);
    let strayed = view.per_pid.get(&decoy_pid).map(|(b, _)| b.rx + b.tx);
    outcome.notes.push(format!(
        "host decoy on the same address and port credited {} B",
        strayed.unwrap_or(0)
    ));
    drop(ns);
    outcome
}

/// How a link of a port-reuse chain ends its connection (or sends datagrams).
#[derive(Debug, Clone, Copy)]
enum Reuse {
    TcpServerFirst,
    TcpRst,
    Udp,
}

/// 14. A local port reused by a new process, over TCP: two chains of short-lived processes,
///     each link binding the same local port as the one before with `SO_REUSEADDR` and
///     connecting to the same server, so every link has the very 4-tuple of the link before:
///     closed by the server (its end waits in TIME_WAIT; the next link's SYN reuses the
///     4-tuple) and closed by RST. The bytes of each link belong to it alone, never to the
///     previous (exited) process nor to the next. Truth per link: the reference capture's
///     count for the port between the links (read once it stopped moving).
pub fn port_reuse(size: Size) -> Outcome {
    let links = size.pick(20, 6);
    let name = format!("14. port reuse over TCP: chains of {links} processes on one local port (closed by the server, closed by RST)");
    reuse_scenario(size, &name, &[Reuse::TcpServerFirst, Reuse::TcpRst])
}

/// 15. The same over UDP: a chain of processes binding one local port in turn, each
///     exchanging 10 datagrams with the same server.
pub fn port_reuse_udp(size: Size) -> Outcome {
    let links = size.pick(20, 6);
    let name = format!("15. port reuse over UDP: a chain of {links} processes on one local port");
    reuse_scenario(size, &name, &[Reuse::Udp])
}

fn reuse_scenario(size: Size, name: &str, kinds: &[Reuse]) -> Outcome {
    let links = size.pick(20, 6);
    let server = sink("127.0.0.1:0");
    let datagrams = 10;
    let udp_links = kinds.iter().filter(|k| matches!(k, Reuse::Udp)).count();
    let total = (udp_links * links * datagrams).to_string();
    let mut receiver = Peer::spawn(&[
        "udp-recv",
        "--bind",
        "127.0.0.1:0",
        "--count",
        &total,
        "--reply-size",
        "300",
    ]);
    receiver.go();
    let servers = [server.info.local.port(), receiver.info.local.port()];
    let watch = Watch::start("lo", &ports_filter("(tcp or udp)", servers));
    let mut own = Ownership::default();
    own.add(server.pid(), TCP, server.info.local);
    own.add(receiver.pid(), UDP, receiver.info.local);
    let mut chains = Vec::new();
    for &kind in kinds {
        let to = match kind {
            Reuse::Udp => receiver.info.local,
            _ => server.info.local,
        };
        let chain = reuse_chain(&watch.cap, kind, to, links, datagrams);
        for &(pid, bytes) in &chain.owned {
            own.add_measured(pid, bytes);
        }
        chains.push((kind, chain));
    }
    let notes = finish_peers(vec![server, receiver]);
    let (mut outcome, view) = watch.finish(name, on_host, notes, || own);
    for (kind, chain) in chains {
        let got = |pid: &u32| {
            view.per_pid
                .get(pid)
                .map(|(got, _)| *got)
                .unwrap_or_default()
        };
        let exact = chain
            .owned
            .iter()
            .filter(|(pid, want)| got(pid) == *want)
            .count();
        let off: Vec<String> = chain
            .owned
            .iter()
            .enumerate()
            .filter(|(_, (pid, want))| got(pid) != *want)
            .map(|(i, (pid, want))| {
                let g = got(pid);
                format!(
                    "link {i} pid {pid}: want {}/{} got {}/{}",
                    want.rx, want.tx, g.rx, g.tx
                )
            })
            .collect();
        outcome.notes.push(format!(
            "{kind:?}: {}, {exact} credited exactly{}{}",
            chain.note,
            if off.is_empty() { "" } else { "; " },
            off.join(", ")
        ));
    }
    outcome
}

/// What one chain did: each link's pid and the bytes of its port while it lived.
struct Chain {
    owned: Vec<(u32, PidBytes)>,
    note: String,
}

fn reuse_chain(
    cap: &RefCapture,
    kind: Reuse,
    to: SocketAddr,
    links: usize,
    datagrams: usize,
) -> Chain {
    let local = free_loopback_port(kind);
    let proto = match kind {
        Reuse::Udp => UDP,
        _ => TCP,
    };
    let mut before = settled_bytes(cap, proto, local);
    let (mut owned, mut failed) = (Vec::new(), 0);
    for _ in 0..links {
        let pid = match kind {
            Reuse::Udp => udp_link(local, to, datagrams),
            _ => tcp_link(kind, local, to),
        };
        let after = settled_bytes(cap, proto, local);
        let bytes = PidBytes {
            rx: after.rx - before.rx,
            tx: after.tx - before.tx,
        };
        failed += usize::from(bytes.total() == 0);
        owned.push((pid, bytes));
        before = after;
    }
    let note = format!("{links} processes on {local}, {failed} moved nothing");
    Chain { owned, note }
}

/// A loopback port free now (bound once and let go).
fn free_loopback_port(kind: Reuse) -> SocketAddr {
    let any = "127.0.0.1:0";
    match kind {
        Reuse::Udp => std::net::UdpSocket::bind(any).and_then(|s| s.local_addr()),
        _ => std::net::TcpListener::bind(any).and_then(|s| s.local_addr()),
    }
    .expect("a free loopback port")
}

/// One TCP link: a `tcp-reuse` process that exits when its connection is over.
fn tcp_link(kind: Reuse, local: SocketAddr, to: SocketAddr) -> u32 {
    let close = match kind {
        Reuse::TcpRst => "rst",
        _ => "server-first",
    };
    let run = args(&[
        "tcp-reuse",
        "--bind",
        &local.to_string(),
        "--connect",
        &to.to_string(),
        "--bytes",
        "50000",
        "--reply",
        "20000",
        "--close",
        close,
    ]);
    let exited = run_peers(&[run], 1, BATCH_TIMEOUT);
    let link = &exited[0];
    assert!(
        link.status.is_some_and(|s| s.success()),
        "tcp-reuse link {} failed: {:?}",
        link.pid,
        link.status
    );
    link.pid
}

/// One UDP link: a sender bound to `local` that exchanges `count` datagrams and exits.
fn udp_link(local: SocketAddr, to: SocketAddr, count: usize) -> u32 {
    let mut sender = Peer::spawn(&[
        "udp-send",
        "--bind",
        &local.to_string(),
        "--to",
        &to.to_string(),
        "--count",
        &count.to_string(),
        "--size",
        "1000",
        "--await-reply",
    ]);
    sender.go();
    sender.wait_done();
    let pid = sender.pid();
    assert!(sender.finish().success(), "udp link {pid} failed");
    pid
}

/// The reference capture's bytes from (`tx`) and to (`rx`) `local`, read once they have not
/// changed for 100 ms (at most 5 s).
fn settled_bytes(cap: &RefCapture, proto: u8, local: SocketAddr) -> PidBytes {
    let read = || {
        let truth = cap.snapshot();
        PidBytes {
            rx: truth.rx_of(proto, local).bytes,
            tx: truth.tx_of(proto, local).bytes,
        }
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let mut last = read();
    let mut still = 0;
    while still < 5 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        let now = read();
        still = if now == last { still + 1 } else { 0 };
        last = now;
    }
    last
}

/// 16. A socket shared after `fork`: 20 processes each connect to a sink and fork; the child
///     does all the traffic (200 KB up, 100 KB back) on the inherited socket and exits; the
///     parent holds its copy, idle, for 200 ms more. Every byte is the child's: one credited
///     to the idle parent is wrong (the README's rule: the most recently started holder).
pub fn shared_after_fork(size: Size) -> Outcome {
    let count = size.pick(20, 6);
    let name = format!(
        "16. a socket shared after fork: {count} idle parents, the children do the traffic"
    );
    let server = sink("127.0.0.1:0");
    let watch = Watch::start("lo", &ports_filter("tcp", [server.info.local.port()]));
    let target = server.info.local.to_string();
    let runs: Vec<Vec<String>> = (0..count)
        .map(|_| {
            args(&[
                "fork-share",
                "--connect",
                &target,
                "--bytes",
                "200000",
                "--reply",
                "100000",
                "--duration-ms",
                "200",
            ])
        })
        .collect();
    let exited = run_peers(&runs, 5, BATCH_TIMEOUT);
    let mut own = Ownership::default();
    own.add(server.pid(), TCP, server.info.local);
    // The parents are in the workload with nothing of their own; the flow lines name the
    // children.
    let mut notes = add_flows(&mut own, &exited, TCP);
    notes.extend(finish_peers(vec![server]));
    watch.finish(&name, on_host, notes, || own).0
}
