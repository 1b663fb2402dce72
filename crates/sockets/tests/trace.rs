//! Socket tracepoints: the tracefs format parser against the kernel's own `format` files
//! (fixtures copied from Linux 6.18), the decoder against records laid out by those formats,
//! the pairing rules (connections, and connects with their route lookups) as event sequences
//! and properties, and the live reader (CI runs as root): a real child process's connection
//! must be claimed by the child, the accepting side by us, and our own UDP connects reported
//! with their addresses exactly while route lookups are traced.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use pidcap_sockets::trace::format::{sockaddr_in_stack, BindArgs, BindLayout};
use pidcap_sockets::trace::{
    find_tracefs, parse_cpu_list, Bound, Connected, Connects, Pairing, RouteLayout, RouteLookup,
    RouteScope, SetState, SetStateLayout, SockEvent, SockIoLayout, SockTracer, SocketClaim,
    SyscallLayout, TraceFormat, MAX_ROUTE_THREADS,
};
use pidcap_wire::IpProto;
use proptest::prelude::*;

const SET_STATE: &str = include_str!("fixtures/trace/inet_sock_set_state.format");
const SEND: &str = include_str!("fixtures/trace/sock_send_length.format");

fn set_state_layout() -> (TraceFormat, SetStateLayout) {
    let f = TraceFormat::parse("fixture", SET_STATE).unwrap();
    let l = SetStateLayout::new(&f).unwrap();
    (f, l)
}

/// Writes `bytes` at the offset the format gives field `name`.
fn put(raw: &mut [u8], format: &TraceFormat, name: &str, bytes: &[u8]) {
    let f = format.fields.iter().find(|f| f.name == name).unwrap();
    assert_eq!(f.size, bytes.len(), "{name}");
    raw[f.offset..f.offset + f.size].copy_from_slice(bytes);
}

/// `len` zero bytes carrying `format`'s tracepoint id.
fn blank(format: &TraceFormat, len: usize) -> Vec<u8> {
    let mut raw = vec![0u8; len];
    put(
        &mut raw,
        format,
        "common_type",
        &(format.id as u16).to_ne_bytes(),
    );
    raw
}

fn record(format: &TraceFormat, family: u16, src: [u8; 16], dst: [u8; 16]) -> Vec<u8> {
    let mut raw = blank(format, 72);
    put(
        &mut raw,
        format,
        "skaddr",
        &0xffff_8880_1234_5678u64.to_ne_bytes(),
    );
    put(&mut raw, format, "oldstate", &2i32.to_ne_bytes());
    put(&mut raw, format, "newstate", &1i32.to_ne_bytes());
    put(&mut raw, format, "sport", &40000u16.to_ne_bytes());
    put(&mut raw, format, "dport", &443u16.to_ne_bytes());
    put(&mut raw, format, "family", &family.to_ne_bytes());
    put(&mut raw, format, "protocol", &6u16.to_ne_bytes());
    put(&mut raw, format, "saddr", &src[..4]);
    put(&mut raw, format, "daddr", &dst[..4]);
    put(&mut raw, format, "saddr_v6", &src);
    put(&mut raw, format, "daddr_v6", &dst);
    raw
}

#[test]
fn the_kernels_format_files_parse_with_every_field_and_offset() {
    let (f, _) = set_state_layout();
    assert_eq!(f.name, "inet_sock_set_state");
    assert_eq!(f.id, 2287);
    let names: Vec<&str> = f.fields.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "common_type",
            "common_flags",
            "common_preempt_count",
            "common_pid",
            "skaddr",
            "oldstate",
            "newstate",
            "sport",
            "dport",
            "family",
            "protocol",
            "saddr",
            "daddr",
            "saddr_v6",
            "daddr_v6"
        ]
    );
    let daddr_v6 = f.fields.last().unwrap();
    assert_eq!((daddr_v6.offset, daddr_v6.size), (56, 16));
    let send = TraceFormat::parse("fixture", SEND).unwrap();
    let io = SockIoLayout::new(&send).unwrap();
    assert_eq!(io.id, 2284);
    assert!(io.send);
    let mut raw = vec![0u8; 28];
    raw[8..16].copy_from_slice(&7u64.to_ne_bytes());
    raw[16..18].copy_from_slice(&17u16.to_ne_bytes());
    raw[20..24].copy_from_slice(&342i32.to_ne_bytes());
    let decoded = io.decode(&raw).unwrap();
    assert_eq!((decoded.sk, decoded.family, decoded.ret), (7, 17, 342));
    assert_eq!(io.decode(&raw[..22]), None, "too short for ret");
}

#[test]
fn connect_syscall_records_give_the_fd_and_the_result() {
    let enter = TraceFormat::parse(
        "fixture",
        include_str!("fixtures/trace/sys_enter_connect.format"),
    )
    .unwrap();
    let exit = TraceFormat::parse(
        "fixture",
        include_str!("fixtures/trace/sys_exit_connect.format"),
    )
    .unwrap();
    let fd = SyscallLayout::new(&enter, "fd").unwrap();
    let ret = SyscallLayout::new(&exit, "ret").unwrap();
    let mut raw = vec![0u8; 40];
    raw[16..24].copy_from_slice(&7u64.to_ne_bytes());
    assert_eq!(fd.decode(&raw), Some(7));
    raw[16..24].copy_from_slice(&(-111i64).to_ne_bytes()); // -ECONNREFUSED
    assert_eq!(ret.decode(&raw), Some(-111));
    assert_eq!(ret.decode(&raw[..20]), None);
    assert!(SyscallLayout::new(&enter, "uservaddr").is_ok());
    assert!(SyscallLayout::new(&enter, "nope").is_err());
}

#[test]
fn a_format_without_a_needed_field_is_refused_by_name() {
    let broken = SET_STATE.replace("dport", "dst_port");
    let f = TraceFormat::parse("fixture", &broken).unwrap();
    let err = SetStateLayout::new(&f).unwrap_err().to_string();
    assert!(err.contains("no field dport"), "{err}");
    let resized = SET_STATE.replace("offset:24;\tsize:2;", "offset:24;\tsize:4;");
    let f = TraceFormat::parse("fixture", &resized).unwrap();
    let err = SetStateLayout::new(&f).unwrap_err().to_string();
    assert!(err.contains("sport is 4 bytes"), "{err}");
    assert!(TraceFormat::parse("fixture", "format:\n").is_err());
}

#[test]
fn records_decode_to_the_sockets_own_addresses_ipv4_ipv6_and_mapped() {
    let (f, l) = set_state_layout();
    let v4 = |a: [u8; 4]| {
        let mut b = [0u8; 16];
        b[..4].copy_from_slice(&a);
        b
    };
    let got = l
        .decode(&record(&f, 2, v4([10, 0, 0, 1]), v4([10, 0, 0, 2])))
        .unwrap();
    assert_eq!(
        got,
        SetState {
            sk: 0xffff_8880_1234_5678,
            old: 2,
            new: 1,
            protocol: 6,
            local: "10.0.0.1:40000".parse().unwrap(),
            remote: "10.0.0.2:443".parse().unwrap(),
        }
    );
    let six = |s: &str| s.parse::<Ipv6Addr>().unwrap().octets();
    let got = l
        .decode(&record(&f, 10, six("fd00::1"), six("::ffff:127.0.0.9")))
        .unwrap();
    assert_eq!(got.local.ip(), "fd00::1".parse::<IpAddr>().unwrap());
    assert_eq!(got.remote.ip(), IpAddr::V4(Ipv4Addr::new(127, 0, 0, 9)));
    // Unknown family, short record: nothing, no panic.
    assert_eq!(l.decode(&record(&f, 1, [0; 16], [0; 16])), None);
    assert_eq!(l.decode(&record(&f, 2, [0; 16], [0; 16])[..30]), None);
}

#[test]
fn cpu_lists_parse_like_the_kernel_prints_them() {
    assert_eq!(parse_cpu_list("0-1\n"), Some(vec![0, 1]));
    assert_eq!(parse_cpu_list("0,2-4,7"), Some(vec![0, 2, 3, 4, 7]));
    assert_eq!(parse_cpu_list("3-1"), None);
    assert_eq!(parse_cpu_list("x"), None);
}

// --- pairing -----------------------------------------------------------------------------

const SK: u64 = 0xffff_0000_0000_1000;

fn change(sk: u64, new: i32, local: &str, remote: &str) -> SetState {
    SetState {
        sk,
        old: 0,
        new,
        protocol: 6,
        local: local.parse().unwrap(),
        remote: remote.parse().unwrap(),
    }
}

fn state(time: u64, pid: u32, c: SetState) -> SockEvent {
    SockEvent::State {
        time,
        pid,
        change: c,
    }
}

/// Process `pid` sent or received on socket [`SK`] at `time`.
fn io(time: u64, pid: u32) -> SockEvent {
    SockEvent::Io { time, pid, sk: SK }
}

fn run(events: &[SockEvent]) -> Vec<SocketClaim> {
    let mut p = Pairing::new(1024);
    let mut out = Vec::new();
    for e in events {
        p.feed(*e, &mut out);
    }
    out
}

#[test]
fn connect_claims_the_connection_for_the_connecting_process_not_the_softirq_one() {
    let claims = run(&[
        state(1, 500, change(SK, 2, "10.0.0.1:0", "10.0.0.2:80")),
        // ESTABLISHED arrives in softirq, in whatever process ran then (999).
        state(2, 999, change(SK, 1, "10.0.0.1:41000", "10.0.0.2:80")),
        // The connecting process's own I/O claims nothing new.
        io(3, 500),
    ]);
    assert_eq!(
        claims,
        [SocketClaim {
            local: "10.0.0.1:41000".parse().unwrap(),
            remote: "10.0.0.2:80".parse().unwrap(),
            pid: 500,
            time: 2,
        }]
    );
}

#[test]
fn accepted_connections_are_claimed_by_each_process_that_moves_data_on_them() {
    let claims = run(&[
        state(1, 0, change(SK, 1, "10.0.0.2:80", "10.0.0.1:41000")),
        io(2, 600),
        io(3, 600),
        io(4, 601), // passed to another process
    ]);
    let pids: Vec<u32> = claims.iter().map(|c| c.pid).collect();
    assert_eq!(pids, [600, 601]);
    assert!(claims.iter().all(|c| c.local.port() == 80));
}

#[test]
fn close_ends_a_socket_so_a_reused_address_is_never_claimed_for_the_old_connection() {
    let claims = run(&[
        state(1, 0, change(SK, 1, "10.0.0.2:80", "10.0.0.1:41000")),
        state(2, 0, change(SK, 7, "10.0.0.2:80", "10.0.0.1:41000")),
        // The kernel reuses the address for an unrelated socket: its I/O claims nothing.
        io(3, 700),
        // A connect that failed (SYN_SENT then CLOSE) claims nothing either.
        state(4, 701, change(SK, 2, "10.0.0.1:0", "10.0.0.3:80")),
        state(5, 0, change(SK, 7, "10.0.0.1:41001", "10.0.0.3:80")),
        state(6, 0, change(SK, 1, "10.0.0.1:41002", "10.0.0.3:80")),
    ]);
    assert_eq!(claims, []);
}

#[test]
fn other_protocols_and_unknown_sockets_claim_nothing() {
    let mut sctp = change(SK, 2, "10.0.0.1:0", "10.0.0.2:80");
    sctp.protocol = 132;
    let mut sctp_up = change(SK, 1, "10.0.0.1:5", "10.0.0.2:80");
    sctp_up.protocol = 132;
    assert_eq!(
        run(&[
            state(1, 5, sctp),
            state(2, 0, sctp_up),
            SockEvent::Io {
                time: 3,
                pid: 5,
                sk: SK + 1
            },
        ]),
        []
    );
}

#[test]
fn memory_stays_bounded_and_recent_connections_stay_claimable() {
    let mut p = Pairing::new(100);
    let mut out = Vec::new();
    for i in 0..10_000u64 {
        let sk = 0x1000 + i * 64;
        p.feed(
            state(i, 1, change(sk, 1, "10.0.0.2:80", "10.0.0.1:1")),
            &mut out,
        );
        assert!(p.len() <= 100);
    }
    p.feed(
        SockEvent::Io {
            time: 10_001,
            pid: 9,
            sk: 0x1000 + 9_999 * 64,
        },
        &mut out,
    );
    assert_eq!(out.len(), 1);
}

#[test]
fn after_lost_events_nothing_established_before_can_be_claimed() {
    let mut p = Pairing::new(16);
    let mut out = Vec::new();
    p.feed(
        state(1, 0, change(SK, 1, "10.0.0.2:80", "10.0.0.1:41000")),
        &mut out,
    );
    p.forget_all();
    assert!(p.is_empty());
    p.feed(io(2, 5), &mut out);
    assert_eq!(out, []);
}

fn arb_event() -> impl Strategy<Value = SockEvent> {
    let sk = 0u64..4;
    prop_oneof![
        (sk.clone(), 1u32..4, prop::sample::select(vec![1, 2, 7, 4])).prop_map(|(sk, pid, new)| {
            SockEvent::State {
                time: 0,
                pid,
                change: change(sk, new, &format!("10.0.0.1:{}", sk + 1), "10.0.0.2:80"),
            }
        }),
        (sk, 1u32..4).prop_map(|(sk, pid)| SockEvent::Io { time: 0, pid, sk }),
    ]
}

proptest! {
    /// Whatever the order of events, a claim names a connection that was established on that
    /// socket and not closed since, and a process that acted on it in that life (its
    /// SYN_SENT just before, or an I/O event after).
    #[test]
    fn every_claim_is_for_a_live_connection_and_a_process_that_used_it(
        events in prop::collection::vec(arb_event(), 0..60)
    ) {
        let events: Vec<SockEvent> = events
            .into_iter()
            .enumerate()
            .map(|(t, e)| match e {
                SockEvent::State { pid, change, .. } => SockEvent::State { time: t as u64, pid, change },
                SockEvent::Io { pid, sk, .. } => SockEvent::Io { time: t as u64, pid, sk },
            })
            .collect();
        for claim in run(&events) {
            let t = claim.time as usize;
            let sk = u64::from(claim.local.port()) - 1;
            // The socket was established at or before t and not closed in between.
            let life = events[..=t].iter().rev().find_map(|e| match e {
                SockEvent::State { change, .. } if change.sk == sk && change.new != 4 => Some(change.new),
                _ => None,
            });
            prop_assert_eq!(life, Some(1));
            let acted = events[..=t].iter().any(|e| match e {
                SockEvent::Io { pid, sk: s, .. } => *s == sk && *pid == claim.pid,
                SockEvent::State { pid, change, .. } => change.sk == sk && change.new == 2 && *pid == claim.pid,
            });
            prop_assert!(acted);
        }
    }
}

proptest! {
    /// Any bytes, any format text: an error or a value, never a panic.
    #[test]
    fn decoding_and_format_parsing_never_panic(
        raw in prop::collection::vec(any::<u8>(), 0..100),
        text in ".{0,300}",
    ) {
        let (_, l) = set_state_layout();
        let _ = l.decode(&raw);
        for text in [
            include_str!("fixtures/trace/fib_table_lookup.format"),
            include_str!("fixtures/trace/fib6_table_lookup.format"),
        ] {
            let _ = route_layout(text).1.decode(&raw);
        }
        let _ = pidcap_sockets::trace::format::record_type(&raw);
        let _ = TraceFormat::parse("arbitrary", &text);
        let _ = TraceFormat::parse("arbitrary", &format!("name: x\nID: 1\n\tfield:{text}"));
    }
}

// --- live --------------------------------------------------------------------------------

/// The tracer on this machine's tracefs (CI runs as root: it must open).
fn live_tracer() -> SockTracer {
    let tracefs = find_tracefs().expect("tracefs is mounted or mountable (CI runs as root)");
    SockTracer::open(&tracefs).expect("perf tracepoints open as root")
}

/// `bash -c script`, stdin closed.
fn bash(script: &str) -> std::process::Child {
    Command::new("bash")
        .args(["-c", script])
        .stdin(Stdio::null())
        .spawn()
        .expect("bash runs")
}

/// Polls `tracer` for at most 5 s, handing each poll's claims to `take`, until `done`.
fn poll_until(
    tracer: &mut SockTracer,
    mut take: impl FnMut(&SockTracer, &[SocketClaim]),
    mut done: impl FnMut() -> bool,
) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline && !done() {
        let mut out = Vec::new();
        tracer.poll(Duration::from_millis(20), &mut out).unwrap();
        take(tracer, &out);
    }
}

#[test]
fn a_child_processs_connection_is_claimed_by_the_child_and_the_accept_side_by_us() {
    let mut tracer = live_tracer();
    assert!(
        tracer.traces_io(),
        "Linux 6.4+ has sock_send_length/sock_recv_length"
    );
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let server = listener.local_addr().unwrap();
    let script = format!(
        "exec 3<>/dev/tcp/127.0.0.1/{}; echo hello >&3; read -r reply <&3; exec 3>&-",
        server.port()
    );
    let mut child = bash(&script);
    let (mut conn, peer) = listener.accept().unwrap();
    let mut buf = [0u8; 6];
    conn.read_exact(&mut buf).unwrap();
    conn.write_all(b"world\n").unwrap();
    assert!(child.wait().unwrap().success());
    let (us, them) = (std::process::id(), child.id());
    let want_child = (peer, server, them);
    let want_us = (server, peer, us);
    let seen = std::cell::RefCell::new(Vec::<(SocketAddr, SocketAddr, u32)>::new());
    poll_until(
        &mut tracer,
        |_, out| {
            seen.borrow_mut()
                .extend(out.iter().map(|c| (c.local, c.remote, c.pid)))
        },
        || {
            let seen = seen.borrow();
            seen.contains(&want_child) && seen.contains(&want_us)
        },
    );
    let seen = seen.into_inner();
    assert!(
        seen.contains(&want_child),
        "child claim missing; saw {seen:?}"
    );
    assert!(
        seen.contains(&want_us),
        "accept-side claim missing; saw {seen:?}"
    );
    // Nobody else claimed either side of this connection.
    for (local, remote, pid) in &seen {
        if (*local, *remote) == (peer, server) {
            assert_eq!(*pid, them);
        }
        if (*local, *remote) == (server, peer) {
            assert_eq!(*pid, us);
        }
    }
    assert_eq!(tracer.lost(), 0);
}

/// On a kernel without the send/receive tracepoints (before 6.4) the tracer still runs and
/// claims connects: a tracefs holding only `inet_sock_set_state` (this kernel's own format,
/// so the id is real) stands in for such a kernel.
#[test]
fn without_send_and_receive_tracepoints_connects_are_still_claimed() {
    let real = find_tracefs().expect("tracefs is mounted or mountable (CI runs as root)");
    let old = tempfile::tempdir().unwrap();
    let dir = old.path().join("events/sock/inet_sock_set_state");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(
        real.join("events/sock/inet_sock_set_state/format"),
        dir.join("format"),
    )
    .unwrap();
    let mut tracer = SockTracer::open(old.path()).expect("opens with set_state alone");
    assert!(!tracer.traces_io());
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let server = listener.local_addr().unwrap();
    let script = format!("exec 3<>/dev/tcp/127.0.0.1/{}; echo hi >&3", server.port());
    let mut child = bash(&script);
    let (_conn, peer) = listener.accept().unwrap();
    assert!(child.wait().unwrap().success());
    let want = (peer, server, child.id());
    let seen = std::cell::RefCell::new(Vec::new());
    poll_until(
        &mut tracer,
        |_, out| {
            seen.borrow_mut()
                .extend(out.iter().map(|c| (c.local, c.remote, c.pid)))
        },
        || seen.borrow().contains(&want),
    );
    let seen = seen.into_inner();
    assert!(seen.contains(&want), "connect claim missing; saw {seen:?}");
    // Without I/O events the accepting side is never claimed.
    assert!(
        !seen.iter().any(|&(local, _, _)| local == server),
        "{seen:?}"
    );
}

/// A child's UDP `connect()` (bash's /dev/udp) is reported with the child's pid and fd, so
/// the daemon can read the socket while it is open.
#[test]
fn a_childs_udp_connect_is_reported_with_its_pid_and_fd() {
    let mut tracer = live_tracer();
    let server = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = server.local_addr().unwrap().port();
    let script = format!("exec 5<>/dev/udp/127.0.0.1/{port}; echo q >&5; sleep 0.2");
    let mut child = bash(&script);
    // bash connects on a fresh fd (3), then moves it to 5: any fd, but this pid.
    let pid = child.id();
    let ours = |seen: &[Connected]| seen.iter().any(|c| c.pid == pid);
    let seen = std::cell::RefCell::new(Vec::<Connected>::new());
    poll_until(
        &mut tracer,
        |tracer, _| seen.borrow_mut().extend_from_slice(tracer.connected()),
        || ours(&seen.borrow()),
    );
    let seen = seen.into_inner();
    assert!(child.wait().unwrap().success());
    assert!(ours(&seen), "connect by {pid} missing; saw {seen:?}");
}

/// A `bind()` of an IP address is reported with the binding pid and fd (the daemon reads
/// the socket at once: a port passed on to a process that lives milliseconds), and the
/// address it was given, read from the stack copy taken at the call: a process that exits
/// before its fd can be read is still known by the port it bound.
#[test]
fn an_ip_bind_is_reported_with_the_address_it_was_given() {
    use std::os::fd::AsRawFd;
    let mut tracer = live_tracer();
    let pid = std::process::id();
    for any in ["127.0.0.1:0", "[::1]:0"] {
        // A port free now, then bound by its number: the address bind() is given.
        let free = std::net::UdpSocket::bind(any)
            .unwrap()
            .local_addr()
            .unwrap();
        let socket = std::net::UdpSocket::bind(free).unwrap();
        let fd = socket.as_raw_fd();
        // (The fd of the probe socket is reused by the second: its bind, of port 0, is
        // reported with that fd too.)
        let ours = |seen: &[Bound]| {
            seen.iter()
                .any(|b| b.pid == pid && b.fd == fd && b.addr == Some(free))
        };
        let seen = std::cell::RefCell::new(Vec::<Bound>::new());
        poll_until(
            &mut tracer,
            |tracer, _| seen.borrow_mut().extend_from_slice(tracer.bound()),
            || ours(&seen.borrow()),
        );
        let seen = seen.into_inner();
        assert!(
            ours(&seen),
            "bind of {free} on fd {fd} missing; saw {seen:?}"
        );
        let probe = seen.iter().find(|b| b.pid == pid && b.addr != Some(free));
        assert!(
            probe.is_some_and(|b| b.addr.is_some_and(|a| a.port() == 0)),
            "the probe's bind of port 0 is reported as such: {seen:?}"
        );
    }
}

#[test]
fn bind_enter_records_give_the_fd_and_where_the_address_is() {
    let enter = TraceFormat::parse(
        "fixture",
        include_str!("fixtures/trace/sys_enter_bind.format"),
    )
    .unwrap();
    let layout = BindLayout::new(&enter).unwrap();
    let mut raw = vec![0u8; 40];
    raw[16..24].copy_from_slice(&5u64.to_ne_bytes());
    raw[24..32].copy_from_slice(&0x7ffd_0000_1000u64.to_ne_bytes());
    raw[32..40].copy_from_slice(&16u64.to_ne_bytes());
    assert_eq!(
        layout.decode(&raw),
        Some(BindArgs {
            fd: 5,
            addr_ptr: 0x7ffd_0000_1000,
            addr_len: 16
        })
    );
    assert_eq!(layout.decode(&raw[..39]), None, "too short for addrlen");
    raw[16..24].copy_from_slice(&(1u64 << 40).to_ne_bytes());
    assert_eq!(layout.decode(&raw), None, "an fd out of an int's range");
}

/// A stack copy from `sp` with `sockaddr` bytes at `at`.
fn stack_with(at: usize, sockaddr: &[u8]) -> Vec<u8> {
    let mut stack = vec![0xa5u8; 256];
    stack[at..at + sockaddr.len()].copy_from_slice(sockaddr);
    stack
}

fn sockaddr_in(port: u16, ip: [u8; 4]) -> Vec<u8> {
    let mut b = (libc::AF_INET as u16).to_ne_bytes().to_vec();
    b.extend_from_slice(&port.to_be_bytes());
    b.extend_from_slice(&ip);
    b.extend_from_slice(&[0; 8]);
    b
}

fn sockaddr_in6(port: u16, ip: Ipv6Addr) -> Vec<u8> {
    let mut b = (libc::AF_INET6 as u16).to_ne_bytes().to_vec();
    b.extend_from_slice(&port.to_be_bytes());
    b.extend_from_slice(&[0; 4]); // flow info
    b.extend_from_slice(&ip.octets());
    b.extend_from_slice(&[0; 4]); // scope id
    b
}

#[test]
fn a_sockaddr_is_read_only_when_wholly_inside_the_stack_copy() {
    let sp = 0x7ffd_0000_0000u64;
    let v4 = stack_with(40, &sockaddr_in(4242, [127, 0, 0, 7]));
    let want4: SocketAddr = "127.0.0.7:4242".parse().unwrap();
    assert_eq!(sockaddr_in_stack(&v4, sp, sp + 40, 16), Some(want4));
    assert_eq!(
        sockaddr_in_stack(&v4, sp, sp + 40, 28),
        None,
        "a v4 sockaddr's length is 16"
    );
    assert_eq!(
        sockaddr_in_stack(&v4, sp, sp + 41, 16),
        None,
        "not a sockaddr there"
    );
    assert_eq!(
        sockaddr_in_stack(&v4, sp, sp - 8, 16),
        None,
        "below the stack pointer"
    );
    assert_eq!(
        sockaddr_in_stack(&v4, sp, sp + 248, 16),
        None,
        "past the copy's end"
    );
    let v6 = stack_with(0, &sockaddr_in6(53, "2001:db8::1".parse().unwrap()));
    assert_eq!(
        sockaddr_in_stack(&v6, sp, sp, 28),
        Some("[2001:db8::1]:53".parse().unwrap())
    );
    let mapped = stack_with(100, &sockaddr_in6(9, "::ffff:10.0.0.1".parse().unwrap()));
    assert_eq!(
        sockaddr_in_stack(&mapped, sp, sp + 100, 28),
        Some("10.0.0.1:9".parse().unwrap()),
        "a v4-mapped address is its v4 address, as the tables keep it"
    );
    assert_eq!(sockaddr_in_stack(&[], sp, sp, 16), None);
}

proptest! {
    /// Whatever the stack, pointer and length (a racing process may rewrite its stack), the
    /// reader never panics and answers only with an address inside the copy.
    #[test]
    fn reading_a_sockaddr_from_any_stack_never_panics(
        stack in proptest::collection::vec(any::<u8>(), 0..300),
        sp in any::<u64>(),
        off in any::<u64>(),
        len in prop_oneof![Just(16u64), Just(28u64), any::<u64>()],
    ) {
        let got = sockaddr_in_stack(&stack, sp, sp.wrapping_add(off), len);
        if got.is_some() {
            prop_assert!(off.checked_add(len).is_some_and(|end| end <= stack.len() as u64));
        }
    }
}

#[test]
fn binds_are_paired_by_thread_and_only_successes_reported() {
    let mut c = Connects::new(16);
    let addr: SocketAddr = "127.0.0.1:4000".parse().unwrap();
    c.enter_bind(11, 10, 3, Some(addr));
    c.enter_bind(12, 10, 4, None);
    c.exit_bind(12, -98, 5); // EADDRINUSE
    c.exit_bind(11, 0, 6);
    c.exit_bind(13, 0, 7); // no enter seen (a bind of another family): nothing
    assert_eq!(
        c.bound(),
        &[Bound {
            pid: 10,
            tid: 11,
            fd: 3,
            time: 6,
            addr: Some(addr),
        }]
    );
    c.clear();
    assert!(c.bound().is_empty());
}

// ---- route lookups inside connect() ----

fn route_layout(text: &str) -> (TraceFormat, RouteLayout) {
    let f = TraceFormat::parse("fixture", text).unwrap();
    let l = RouteLayout::new(&f).unwrap();
    (f, l)
}

/// A route-lookup record laid out by `format`: `src`/`dst` are 4 or 16 bytes as it says.
fn route_record(
    format: &TraceFormat,
    proto: u8,
    src: &[u8],
    sport: u16,
    dst: &[u8],
    dport: u16,
) -> Vec<u8> {
    let mut raw = blank(format, 128);
    put(&mut raw, format, "proto", &[proto]);
    put(&mut raw, format, "src", src);
    put(&mut raw, format, "dst", dst);
    put(&mut raw, format, "sport", &sport.to_ne_bytes());
    put(&mut raw, format, "dport", &dport.to_ne_bytes());
    raw
}

#[test]
fn route_lookup_records_decode_to_the_flow_for_both_families() {
    let (f4, l4) = route_layout(include_str!("fixtures/trace/fib_table_lookup.format"));
    let raw = route_record(&f4, 17, &[127, 0, 0, 1], 49647, &[127, 0, 0, 53], 53);
    let r = l4.decode(&raw).unwrap();
    assert_eq!(
        (r.proto, r.local, r.remote),
        (IpProto::Udp, sa("127.0.0.1:49647"), sa("127.0.0.53:53"))
    );
    assert_eq!(
        l4.decode(&raw[..40]),
        None,
        "a short record decodes to None"
    );

    let (f6, l6) = route_layout(include_str!("fixtures/trace/fib6_table_lookup.format"));
    let mapped = Ipv4Addr::new(10, 0, 0, 2).to_ipv6_mapped().octets();
    let raw = route_record(&f6, 136, &[0; 16], 36741, &mapped, 5302);
    let r = l6.decode(&raw).unwrap();
    assert_eq!(
        (r.proto, r.local, r.remote),
        (IpProto::UdpLite, sa("[::]:36741"), sa("10.0.0.2:5302")),
        "IPv4-mapped addresses come out as IPv4"
    );
    assert_ne!(l4.id, l6.id);
}

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn lookup(proto: IpProto, local: &str, remote: &str) -> RouteLookup {
    RouteLookup {
        proto,
        local: sa(local),
        remote: sa(remote),
    }
}

#[test]
fn a_connects_route_lookup_gives_its_addresses_preferring_a_chosen_source() {
    let mut c = Connects::new(16);
    // IPv4 looks up twice: without, then with the source address.
    c.enter(10, 1, 5);
    c.route(10, lookup(IpProto::Udp, "0.0.0.0:40000", "127.0.0.1:53"));
    c.route(10, lookup(IpProto::Udp, "127.0.0.1:40000", "127.0.0.1:53"));
    c.route(10, lookup(IpProto::Udp, "0.0.0.0:40000", "127.0.0.1:53")); // never replaces a chosen one
    c.exit(10, 0);
    // IPv6: one lookup, source not chosen yet.
    c.enter(11, 1, 6);
    c.route(11, lookup(IpProto::Udp, "[::]:40001", "[::1]:53"));
    c.exit(11, 0);
    assert_eq!(
        c.connected(),
        &[
            Connected {
                pid: 1,
                tid: 10,
                fd: 5,
                route: Some(lookup(IpProto::Udp, "127.0.0.1:40000", "127.0.0.1:53")),
            },
            Connected {
                pid: 1,
                tid: 11,
                fd: 6,
                route: Some(lookup(IpProto::Udp, "[::]:40001", "[::1]:53")),
            },
        ]
    );
}

#[test]
fn route_lookups_outside_a_connect_or_not_of_a_bound_datagram_socket_are_ignored() {
    let mut c = Connects::new(16);
    c.route(20, lookup(IpProto::Udp, "127.0.0.1:40000", "127.0.0.1:53")); // an unconnected send
    c.enter(21, 2, 3);
    c.route(20, lookup(IpProto::Udp, "127.0.0.1:40002", "127.0.0.1:53")); // another thread's
    c.route(21, lookup(IpProto::Tcp, "127.0.0.1:40003", "127.0.0.1:80")); // TCP
    c.route(21, lookup(IpProto::Udp, "127.0.0.1:0", "127.0.0.1:53")); // no port yet
    c.exit(21, 0);
    c.enter(22, 2, 4);
    c.route(22, lookup(IpProto::Udp, "127.0.0.1:40004", "127.0.0.1:53"));
    c.exit(22, -111); // refused: not connected
    c.enter(23, 2, 7);
    c.route(23, lookup(IpProto::Udp, "127.0.0.1:40005", "127.0.0.1:53"));
    c.tcp(23); // a TCP connect after all
    c.exit(23, 0);
    assert_eq!(
        c.connected(),
        &[Connected {
            pid: 2,
            tid: 21,
            fd: 3,
            route: None
        }]
    );
    c.clear();
    assert!(c.connected().is_empty());
}

/// This test's own UDP connects, unbound (IPv4: the kernel chooses the source inside
/// `connect()`; IPv6: it has not yet at the lookup), are reported with their addresses while
/// route lookups are traced for every thread or for this one, and not while they are traced
/// for another thread only, nor when off.
#[test]
fn with_route_tracing_a_udp_connect_is_reported_with_its_addresses() {
    let mut tracer = live_tracer();
    assert!(
        tracer.can_trace_routes(),
        "Linux has fib and fib6 tracepoints"
    );
    assert_eq!(
        tracer.route_scope(),
        &RouteScope::Off,
        "off unless asked for"
    );
    let server = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let server6 = std::net::UdpSocket::bind("[::1]:0").unwrap();
    let (to4, to6) = (server.local_addr().unwrap(), server6.local_addr().unwrap());
    let me = std::process::id();
    // SAFETY: gettid has no preconditions.
    let this_thread = unsafe { libc::gettid() } as u32;
    let connect = |bind: &str, to: SocketAddr| {
        let s = std::net::UdpSocket::bind(bind).unwrap();
        s.connect(to).unwrap();
        let local = s.local_addr().unwrap();
        (s, local)
    };
    let reported = |tracer: &mut SockTracer, want: usize| {
        let seen = std::cell::RefCell::new(Vec::<Connected>::new());
        poll_until(
            tracer,
            |t, _| {
                seen.borrow_mut()
                    .extend(t.connected().iter().filter(|c| c.pid == me))
            },
            || seen.borrow().len() >= want,
        );
        seen.into_inner()
    };
    let unrouted = |tracer: &mut SockTracer, what: &str| {
        let (_s, _) = connect("0.0.0.0:0", to4);
        let seen = reported(tracer, 1);
        assert!(!seen.is_empty(), "{what}: our connect is reported");
        assert!(seen.iter().all(|c| c.route.is_none()), "{what}: {seen:?}");
        assert!(seen.iter().all(|c| c.tid == this_thread), "{seen:?}");
    };
    let routed = |tracer: &mut SockTracer, what: &str| {
        let (_v4, local4) = connect("0.0.0.0:0", to4);
        let (_v6, local6) = connect("[::]:0", to6);
        let seen = reported(tracer, 2);
        let got: Vec<RouteLookup> = seen.iter().filter_map(|c| c.route).collect();
        let v4 = lookup(IpProto::Udp, &local4.to_string(), &to4.to_string());
        assert!(got.contains(&v4), "{what}: IPv4 {local4} missing: {seen:?}");
        let v6 = lookup(
            IpProto::Udp,
            &format!("[::]:{}", local6.port()),
            &to6.to_string(),
        );
        assert!(got.contains(&v6), "{what}: IPv6 {local6} missing: {seen:?}");
    };

    let idle = IdleThreads::spawn(tracer.max_route_threads());
    let other_thread = idle.tids[0];

    unrouted(&mut tracer, "off");
    tracer.trace_routes(&RouteScope::All).unwrap();
    routed(&mut tracer, "all threads");
    tracer
        .trace_routes(&RouteScope::Threads(vec![this_thread]))
        .unwrap();
    routed(&mut tracer, "this thread");
    tracer
        .trace_routes(&RouteScope::Threads(vec![other_thread]))
        .unwrap();
    unrouted(&mut tracer, "another thread");
    tracer
        .trace_routes(&RouteScope::Threads(vec![other_thread, u32::MAX >> 2]))
        .expect("a thread that does not exist is skipped");
    tracer.trace_routes(&RouteScope::Off).unwrap();
    unrouted(&mut tracer, "off again");

    // The fd budget: as many threads as allowed (each a counter per CPU and tracepoint),
    // added one by one as the daemon does; one more is refused.
    let max = tracer.max_route_threads();
    assert!((1..=MAX_ROUTE_THREADS).contains(&max), "{max}");
    let mut tids = vec![this_thread];
    tids.extend(&idle.tids[..max - 1]);
    for n in 1..=max {
        let scope = RouteScope::Threads(tids[..n].to_vec());
        tracer
            .trace_routes(&scope)
            .expect("up to the most threads allowed");
    }
    routed(&mut tracer, "the most threads");
    let mut too_many = tids.clone();
    too_many.push(idle.tids[max - 1]);
    assert!(tracer.trace_routes(&RouteScope::Threads(too_many)).is_err());
    routed(&mut tracer, "a refused scope leaves the last one");
}

/// Threads of this process that wait (at most 30 s) until dropped.
struct IdleThreads {
    tids: Vec<u32>,
    end: Option<std::sync::mpsc::Sender<()>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl IdleThreads {
    fn spawn(n: usize) -> IdleThreads {
        let (tid_tx, tid_rx) = std::sync::mpsc::channel();
        let (end_tx, end_rx) = std::sync::mpsc::channel::<()>();
        let end_rx = std::sync::Arc::new(std::sync::Mutex::new(end_rx));
        let threads = (0..n)
            .map(|_| {
                let (tid_tx, end_rx) = (tid_tx.clone(), end_rx.clone());
                std::thread::spawn(move || {
                    // SAFETY: gettid has no preconditions.
                    tid_tx.send(unsafe { libc::gettid() } as u32).unwrap();
                    // Every thread ends when the sender is dropped.
                    let _ = end_rx.lock().unwrap().recv_timeout(Duration::from_secs(30));
                })
            })
            .collect();
        let tids = (0..n).map(|_| tid_rx.recv().unwrap()).collect();
        IdleThreads {
            tids,
            end: Some(end_tx),
            threads,
        }
    }
}

impl Drop for IdleThreads {
    fn drop(&mut self) {
        self.end.take();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Pins the calling thread to `cpu`.
fn pin_to(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET and sched_setaffinity only
    // touch it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        let rc = libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
        assert_eq!(
            rc,
            0,
            "pin to CPU {cpu}: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// Whether a TCP connection made, sent on and read from a thread pinned to `cpu` is claimed
/// for this process (its client side), polling `tracer` for at most `wait`.
fn pinned_connection_claimed(tracer: &mut SockTracer, cpu: usize) -> bool {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let server = listener.local_addr().unwrap();
    let client = std::thread::spawn(move || {
        pin_to(cpu);
        let mut s = std::net::TcpStream::connect(server).unwrap();
        s.write_all(b"hi").unwrap();
        let mut buf = [0u8; 2];
        s.read_exact(&mut buf).unwrap();
        s.local_addr().unwrap()
    });
    let (mut conn, _) = listener.accept().unwrap();
    let mut buf = [0u8; 2];
    conn.read_exact(&mut buf).unwrap();
    conn.write_all(b"ok").unwrap();
    let local = client.join().unwrap();
    let want = (local, server, std::process::id());
    let seen = std::cell::RefCell::new(false);
    poll_until(
        tracer,
        |_, out| {
            *seen.borrow_mut() |= out.iter().any(|c| (c.local, c.remote, c.pid) == want);
        },
        || *seen.borrow(),
    );
    seen.into_inner()
}

/// A CPU that comes online after start has no ring until `add_online_cpus` opens one (the
/// kernel does not extend per-CPU counters): the last CPU is left out of the list at first,
/// then "brought online" by rewriting the list.
#[test]
fn cpus_brought_online_after_start_are_traced_once_added() {
    let tracefs = find_tracefs().expect("tracefs is mounted or mountable (CI runs as root)");
    let all = parse_cpu_list(&std::fs::read_to_string("/sys/devices/system/cpu/online").unwrap())
        .unwrap();
    let last = *all.last().unwrap();
    let list = |cpus: &[usize]| {
        cpus.iter()
            .map(|c| c.to_string())
            .collect::<Vec<_>>()
            .join(",")
    };
    let dir = tempfile::tempdir().unwrap();
    let online = dir.path().join("online");
    std::fs::write(&online, list(&all[..all.len() - 1])).unwrap();
    let mut tracer = SockTracer::open_with_cpu_list(&tracefs, &online).unwrap();
    assert!(!tracer.cpus().contains(&last));
    assert!(
        !pinned_connection_claimed(&mut tracer, last),
        "a connection on CPU {last}, which has no ring yet, cannot be claimed"
    );
    assert_eq!(tracer.add_online_cpus().unwrap(), 0, "nothing new yet");
    std::fs::write(&online, list(&all)).unwrap();
    assert_eq!(tracer.add_online_cpus().unwrap(), 1);
    assert!(tracer.cpus().contains(&last));
    assert!(
        pinned_connection_claimed(&mut tracer, last),
        "CPU {last} is traced once added"
    );
}
