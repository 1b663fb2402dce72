//! The process-event connector: the parser against byte fixtures laid out as Linux sends them
//! (`nlmsghdr` + `cn_msg` + `proc_event`, little-endian as on x86-64 and aarch64), never
//! panicking on any bytes; and the live socket (CI runs as root), which must report the fork,
//! exec and exit of a process this test spawns. Other tests run concurrently and spawn
//! processes too, so live assertions only look at the spawned pid.

use std::process::Command;
use std::time::{Duration, Instant};

use pidcap_sockets::{parse_datagram, Error, MalformedDatagram, ProcEvent, ProcEvents};
use proptest::prelude::*;

#[cfg(not(target_endian = "little"))]
compile_error!("the fixtures below are little-endian, as the kernel sends them on x86-64");

/// A fork: process 1234 forks process 5678.
const FORK: [u8; 76] = [
    // nlmsghdr
    0x4c, 0x00, 0x00, 0x00, // nlmsg_len 76
    0x03, 0x00, // nlmsg_type NLMSG_DONE (the connector sends every message so)
    0x00, 0x00, // nlmsg_flags
    0x07, 0x00, 0x00, 0x00, // nlmsg_seq
    0x00, 0x00, 0x00, 0x00, // nlmsg_pid 0: the kernel
    // cn_msg
    0x01, 0x00, 0x00, 0x00, // id.idx CN_IDX_PROC
    0x01, 0x00, 0x00, 0x00, // id.val CN_VAL_PROC
    0x07, 0x00, 0x00, 0x00, // seq
    0x00, 0x00, 0x00, 0x00, // ack
    0x28, 0x00, // len 40: sizeof(struct proc_event)
    0x00, 0x00, // flags
    // proc_event
    0x01, 0x00, 0x00, 0x00, // what PROC_EVENT_FORK
    0x01, 0x00, 0x00, 0x00, // cpu 1
    0x00, 0xe4, 0x0b, 0x54, 0x02, 0x00, 0x00, 0x00, // timestamp_ns
    0xd2, 0x04, 0x00, 0x00, // fork.parent_pid 1234
    0xd2, 0x04, 0x00, 0x00, // fork.parent_tgid 1234
    0x2e, 0x16, 0x00, 0x00, // fork.child_pid 5678
    0x2e, 0x16, 0x00, 0x00, // fork.child_tgid 5678
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // rest of the union
];

/// Process 5678 calls execve.
const EXEC: [u8; 76] = [
    // nlmsghdr
    0x4c, 0x00, 0x00, 0x00, // nlmsg_len 76
    0x03, 0x00, // nlmsg_type NLMSG_DONE
    0x00, 0x00, // nlmsg_flags
    0x08, 0x00, 0x00, 0x00, // nlmsg_seq
    0x00, 0x00, 0x00, 0x00, // nlmsg_pid
    // cn_msg
    0x01, 0x00, 0x00, 0x00, // id.idx CN_IDX_PROC
    0x01, 0x00, 0x00, 0x00, // id.val CN_VAL_PROC
    0x08, 0x00, 0x00, 0x00, // seq
    0x00, 0x00, 0x00, 0x00, // ack
    0x28, 0x00, // len 40
    0x00, 0x00, // flags
    // proc_event
    0x02, 0x00, 0x00, 0x00, // what PROC_EVENT_EXEC
    0x00, 0x00, 0x00, 0x00, // cpu 0
    0x40, 0x1f, 0x0c, 0x54, 0x02, 0x00, 0x00, 0x00, // timestamp_ns
    0x2e, 0x16, 0x00, 0x00, // exec.process_pid 5678
    0x2e, 0x16, 0x00, 0x00, // exec.process_tgid 5678
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // rest of the union
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
];

/// Process 5678 exits with status 3 (`exit(3)`: wait status 0x300).
const EXIT: [u8; 76] = [
    // nlmsghdr
    0x4c, 0x00, 0x00, 0x00, // nlmsg_len 76
    0x03, 0x00, // nlmsg_type NLMSG_DONE
    0x00, 0x00, // nlmsg_flags
    0x09, 0x00, 0x00, 0x00, // nlmsg_seq
    0x00, 0x00, 0x00, 0x00, // nlmsg_pid
    // cn_msg
    0x01, 0x00, 0x00, 0x00, // id.idx CN_IDX_PROC
    0x01, 0x00, 0x00, 0x00, // id.val CN_VAL_PROC
    0x09, 0x00, 0x00, 0x00, // seq
    0x00, 0x00, 0x00, 0x00, // ack
    0x28, 0x00, // len 40
    0x00, 0x00, // flags
    // proc_event
    0x00, 0x00, 0x00, 0x80, // what PROC_EVENT_EXIT
    0x01, 0x00, 0x00, 0x00, // cpu 1
    0x80, 0x5a, 0x0c, 0x54, 0x02, 0x00, 0x00, 0x00, // timestamp_ns
    0x2e, 0x16, 0x00, 0x00, // exit.process_pid 5678
    0x2e, 0x16, 0x00, 0x00, // exit.process_tgid 5678
    0x00, 0x03, 0x00, 0x00, // exit.exit_code 0x300
    0x11, 0x00, 0x00, 0x00, // exit.exit_signal SIGCHLD
    0xd2, 0x04, 0x00, 0x00, // exit.parent_pid 1234
    0xd2, 0x04, 0x00, 0x00, // exit.parent_tgid 1234
];

/// A thread (tid 5679) of process 5678 exits: not a process event.
const THREAD_EXIT: [u8; 76] = [
    // nlmsghdr
    0x4c, 0x00, 0x00, 0x00, // nlmsg_len 76
    0x03, 0x00, // nlmsg_type NLMSG_DONE
    0x00, 0x00, // nlmsg_flags
    0x0a, 0x00, 0x00, 0x00, // nlmsg_seq
    0x00, 0x00, 0x00, 0x00, // nlmsg_pid
    // cn_msg
    0x01, 0x00, 0x00, 0x00, // id.idx CN_IDX_PROC
    0x01, 0x00, 0x00, 0x00, // id.val CN_VAL_PROC
    0x0a, 0x00, 0x00, 0x00, // seq
    0x00, 0x00, 0x00, 0x00, // ack
    0x28, 0x00, // len 40
    0x00, 0x00, // flags
    // proc_event
    0x00, 0x00, 0x00, 0x80, // what PROC_EVENT_EXIT
    0x00, 0x00, 0x00, 0x00, // cpu 0
    0x10, 0x50, 0x0c, 0x54, 0x02, 0x00, 0x00, 0x00, // timestamp_ns
    0x2f, 0x16, 0x00, 0x00, // exit.process_pid 5679 (the thread)
    0x2e, 0x16, 0x00, 0x00, // exit.process_tgid 5678
    0x00, 0x00, 0x00, 0x00, // exit.exit_code
    0x00, 0x00, 0x00, 0x00, // exit.exit_signal
    0xd2, 0x04, 0x00, 0x00, // exit.parent_pid
    0xd2, 0x04, 0x00, 0x00, // exit.parent_tgid
];

/// Process 5678 changes its name (`prctl(PR_SET_NAME)`): a kind this reader skips.
const COMM: [u8; 76] = [
    // nlmsghdr
    0x4c, 0x00, 0x00, 0x00, // nlmsg_len 76
    0x03, 0x00, // nlmsg_type NLMSG_DONE
    0x00, 0x00, // nlmsg_flags
    0x0b, 0x00, 0x00, 0x00, // nlmsg_seq
    0x00, 0x00, 0x00, 0x00, // nlmsg_pid
    // cn_msg
    0x01, 0x00, 0x00, 0x00, // id.idx CN_IDX_PROC
    0x01, 0x00, 0x00, 0x00, // id.val CN_VAL_PROC
    0x0b, 0x00, 0x00, 0x00, // seq
    0x00, 0x00, 0x00, 0x00, // ack
    0x28, 0x00, // len 40
    0x00, 0x00, // flags
    // proc_event
    0x00, 0x02, 0x00, 0x00, // what PROC_EVENT_COMM
    0x00, 0x00, 0x00, 0x00, // cpu 0
    0x20, 0x50, 0x0c, 0x54, 0x02, 0x00, 0x00, 0x00, // timestamp_ns
    0x2e, 0x16, 0x00, 0x00, // comm.process_pid 5678
    0x2e, 0x16, 0x00, 0x00, // comm.process_tgid 5678
    b'w', b'o', b'r', b'k', b'e', b'r', 0x00, 0x00, // comm.comm[16]
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
];

/// An exit as kernels before 4.18 send it: `exit` without `parent_pid`/`parent_tgid`, so
/// `cn_msg.len` is 32.
const EXIT_WITHOUT_PARENT: [u8; 68] = [
    // nlmsghdr
    0x44, 0x00, 0x00, 0x00, // nlmsg_len 68
    0x03, 0x00, // nlmsg_type NLMSG_DONE
    0x00, 0x00, // nlmsg_flags
    0x0c, 0x00, 0x00, 0x00, // nlmsg_seq
    0x00, 0x00, 0x00, 0x00, // nlmsg_pid
    // cn_msg
    0x01, 0x00, 0x00, 0x00, // id.idx CN_IDX_PROC
    0x01, 0x00, 0x00, 0x00, // id.val CN_VAL_PROC
    0x0c, 0x00, 0x00, 0x00, // seq
    0x00, 0x00, 0x00, 0x00, // ack
    0x20, 0x00, // len 32
    0x00, 0x00, // flags
    // proc_event
    0x00, 0x00, 0x00, 0x80, // what PROC_EVENT_EXIT
    0x00, 0x00, 0x00, 0x00, // cpu 0
    0x10, 0x50, 0x0c, 0x54, 0x02, 0x00, 0x00, 0x00, // timestamp_ns
    0x39, 0x30, 0x00, 0x00, // exit.process_pid 12345
    0x39, 0x30, 0x00, 0x00, // exit.process_tgid 12345
    0x09, 0x00, 0x00, 0x00, // exit.exit_code 9: killed by SIGKILL
    0x11, 0x00, 0x00, 0x00, // exit.exit_signal SIGCHLD
];

fn parse(bytes: &[u8]) -> Result<Vec<ProcEvent>, MalformedDatagram> {
    let mut out = Vec::new();
    parse_datagram(bytes, &mut out).map(|()| out)
}

/// FORK, THREAD_EXIT, EXEC, COMM, EXIT in one datagram (each 76 bytes, already 4-aligned).
fn multi_message_datagram() -> Vec<u8> {
    [FORK, THREAD_EXIT, EXEC, COMM, EXIT].concat()
}

const LIFECYCLE: [ProcEvent; 3] = [
    ProcEvent::Fork {
        parent_pid: 1234,
        child_pid: 5678,
        at_ns: 10_000_000_000,
    },
    ProcEvent::Exec { pid: 5678 },
    ProcEvent::Exit {
        pid: 5678,
        exit_code: 0x300,
        at_ns: 10_000_030_336,
    },
];

#[test]
fn fork_reports_parent_and_child_tgids() {
    assert_eq!(parse(&FORK).unwrap(), [LIFECYCLE[0]]);
}

#[test]
fn exec_reports_the_process() {
    assert_eq!(parse(&EXEC).unwrap(), [LIFECYCLE[1]]);
}

#[test]
fn exit_reports_the_raw_wait_status() {
    assert_eq!(parse(&EXIT).unwrap(), [LIFECYCLE[2]]);
}

#[test]
fn exit_from_kernels_without_parent_fields_is_read() {
    let expected = ProcEvent::Exit {
        pid: 12345,
        exit_code: 9,
        at_ns: 10_000_027_664,
    };
    assert_eq!(parse(&EXIT_WITHOUT_PARENT).unwrap(), [expected]);
}

#[test]
fn thread_events_and_other_kinds_are_skipped() {
    assert_eq!(parse(&THREAD_EXIT).unwrap(), []);
    assert_eq!(parse(&COMM).unwrap(), []);
    let mut thread_fork = FORK;
    thread_fork[60..64].copy_from_slice(&5679u32.to_le_bytes()); // child_pid: a thread of 5678
    assert_eq!(parse(&thread_fork).unwrap(), []);
}

#[test]
fn every_message_of_a_datagram_is_read_in_order() {
    assert_eq!(parse(&multi_message_datagram()).unwrap(), LIFECYCLE);
}

#[test]
fn parsing_appends_to_what_out_holds() {
    let mut out = vec![ProcEvent::Exec { pid: 1 }];
    parse_datagram(&EXEC, &mut out).unwrap();
    assert_eq!(out, [ProcEvent::Exec { pid: 1 }, LIFECYCLE[1]]);
}

#[test]
fn other_connectors_and_message_types_are_skipped() {
    let mut other_connector = EXEC;
    other_connector[16] = 0x02; // id.idx CN_IDX_CIFS
    let mut noop = EXEC;
    noop[4] = 0x01; // nlmsg_type NLMSG_NOOP
    let datagram = [other_connector, noop, EXIT].concat();
    assert_eq!(parse(&datagram).unwrap(), [LIFECYCLE[2]]);
}

#[test]
fn missing_padding_after_the_last_message_is_accepted() {
    let mut short = EXIT_WITHOUT_PARENT.to_vec();
    short.truncate(66); // nlmsg_len 66: the last message, unpadded
    short[0] = 66;
    short[32] = 30; // cn_msg.len 30: exit_code still whole
    assert_eq!(parse(&[&FORK[..], &short].concat()).unwrap().len(), 2);
}

#[test]
fn a_datagram_cut_between_messages_yields_the_messages_before_the_cut() {
    let datagram = multi_message_datagram();
    assert_eq!(parse(&datagram[..76 * 3]).unwrap(), LIFECYCLE[..2]);
    assert_eq!(parse(&[]).unwrap(), []);
}

#[test]
fn a_datagram_cut_inside_a_message_is_an_error_after_the_events_before_it() {
    let datagram = multi_message_datagram();
    for cut in (1..datagram.len()).filter(|cut| cut % 76 != 0) {
        let mut out = Vec::new();
        let error = parse_datagram(&datagram[..cut], &mut out).unwrap_err();
        let message_start = cut / 76 * 76;
        assert_eq!(error.offset, message_start, "cut at {cut}");
        let expected = parse(&datagram[..message_start]).unwrap();
        assert_eq!(out, expected, "cut at {cut}");
    }
}

#[test]
fn a_connector_length_beyond_the_message_is_an_error() {
    let mut lying = EXEC;
    lying[32] = 0x29; // cn_msg.len 41, one byte more than the message holds
    let error = parse(&[&FORK[..], &lying, &EXIT].concat()).unwrap_err();
    assert_eq!(error.offset, 76);
}

#[test]
fn an_event_too_short_for_its_kind_is_an_error() {
    let mut short_fork = FORK;
    short_fork[32] = 28; // cn_msg.len 28: child_tgid missing
    assert!(parse(&short_fork).is_err());
    let mut short_header = EXEC;
    short_header[32] = 12; // cn_msg.len 12: not even the proc_event header
    assert!(parse(&short_header).is_err());
}

/// Datagrams close to valid ones: a valid message sequence with some bytes overwritten, so
/// mutations reach the connector and event parsers rather than failing on the first header.
fn mutated_datagram() -> impl Strategy<Value = Vec<u8>> {
    let messages = prop::collection::vec(
        prop_oneof![
            Just(FORK),
            Just(EXEC),
            Just(EXIT),
            Just(THREAD_EXIT),
            Just(COMM)
        ],
        0..5,
    );
    let edits = prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..6);
    (messages, edits, any::<prop::sample::Index>()).prop_map(|(messages, edits, cut)| {
        let mut bytes = messages.concat();
        if bytes.is_empty() {
            return bytes;
        }
        for (at, value) in edits {
            let at = at.index(bytes.len());
            bytes[at] = value;
        }
        bytes.truncate(cut.index(bytes.len() + 1));
        bytes
    })
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let mut out = Vec::new();
        let _ = parse_datagram(&bytes, &mut out);
        // Each event comes from a message of at least 16 + 20 + 24 bytes.
        prop_assert!(out.len() <= bytes.len() / 60);
    }

    #[test]
    fn mutated_datagrams_never_panic(bytes in mutated_datagram()) {
        let mut out = Vec::new();
        if let Err(error) = parse_datagram(&bytes, &mut out) {
            prop_assert!(error.offset < bytes.len());
        }
        prop_assert!(out.len() <= 5);
    }
}

// ----- live: the kernel's connector (needs CAP_NET_ADMIN; CI runs as root) -----

const LIVE_DEADLINE: Duration = Duration::from_secs(5);

fn open() -> ProcEvents {
    ProcEvents::open().expect("opening the proc connector needs CAP_NET_ADMIN (CI runs as root)")
}

/// The Fork, Exec and Exit of process `pid`, in the order received, once its Exit has arrived
/// (or after [`LIVE_DEADLINE`]). Events of every other process are dropped.
fn lifecycle_of(events: &mut ProcEvents, pid: u32) -> Vec<ProcEvent> {
    let deadline = Instant::now() + LIVE_DEADLINE;
    let (mut batch, mut mine) = (Vec::new(), Vec::new());
    while !mine.iter().any(|e| matches!(e, ProcEvent::Exit { .. })) {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            break;
        }
        batch.clear();
        events.recv_into(remaining, &mut batch).unwrap();
        mine.extend(batch.iter().filter(|e| concerns(e, pid)));
    }
    // The fork's and exit's times are the kernel's clock: checked here, then left out of the comparison.
    for e in &mut mine {
        if let ProcEvent::Exit { at_ns, .. } | ProcEvent::Fork { at_ns, .. } = e {
            assert!(
                (1..=monotonic_ns()).contains(at_ns),
                "an event time {at_ns} ns on the monotonic clock, before now"
            );
            *at_ns = 0;
        }
    }
    mine
}

fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out-pointer for the duration of the call.
    assert_eq!(
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) },
        0
    );
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn concerns(event: &ProcEvent, pid: u32) -> bool {
    match *event {
        ProcEvent::Fork { child_pid, .. } => child_pid == pid,
        ProcEvent::Exec { pid: p } | ProcEvent::Exit { pid: p, .. } => p == pid,
    }
}

/// Runs `command` to completion (reaped) and returns its pid.
fn run(command: &mut Command) -> u32 {
    let mut child = command.spawn().expect("spawning the test command");
    let pid = child.id();
    child.wait().expect("waiting for the test command");
    pid
}

fn expected_lifecycle(pid: u32, exit_code: u32) -> [ProcEvent; 3] {
    [
        ProcEvent::Fork {
            parent_pid: std::process::id(),
            child_pid: pid,
            at_ns: 0,
        },
        ProcEvent::Exec { pid },
        ProcEvent::Exit {
            pid,
            exit_code,
            at_ns: 0,
        },
    ]
}

#[test]
fn live_fork_exec_exit_of_bin_true() {
    let mut events = open();
    let pid = run(&mut Command::new("/bin/true"));
    assert_eq!(lifecycle_of(&mut events, pid), expected_lifecycle(pid, 0));
}

#[test]
fn live_exit_code_is_the_raw_wait_status() {
    let mut events = open();
    let pid = run(Command::new("/bin/sh").args(["-c", "exit 3"]));
    assert_eq!(
        lifecycle_of(&mut events, pid),
        expected_lifecycle(pid, 3 << 8)
    );
}

#[test]
fn live_every_listener_receives_every_event() {
    let (mut first, mut second) = (open(), open());
    let pid = run(&mut Command::new("/bin/true"));
    assert_eq!(lifecycle_of(&mut first, pid), expected_lifecycle(pid, 0));
    assert_eq!(lifecycle_of(&mut second, pid), expected_lifecycle(pid, 0));
    assert_eq!(first.lost(), 0);
}

#[test]
fn live_a_new_subscription_works_after_one_is_dropped() {
    drop(open());
    let mut events = open();
    let pid = run(&mut Command::new("/bin/true"));
    assert_eq!(lifecycle_of(&mut events, pid), expected_lifecycle(pid, 0));
}

#[test]
fn live_the_fd_is_non_blocking() {
    let events = open();
    // SAFETY: F_GETFL on an fd the ProcEvents owns, open for the duration of the call.
    let flags = unsafe { libc::fcntl(std::os::fd::AsRawFd::as_raw_fd(&events), libc::F_GETFL) };
    assert!(
        flags >= 0 && flags & libc::O_NONBLOCK != 0,
        "flags {flags:#x}"
    );
}

/// Before Linux 6.6, joining the group needs `CAP_NET_ADMIN`; since 6.6 (commit
/// bfdfdc2f3b70, "connector/cn_proc: Allow non-root users access") anyone may listen. Either
/// way the outcome is asserted.
#[test]
fn live_open_without_cap_net_admin_follows_the_kernels_rule() {
    // Capabilities are per thread: drop CAP_NET_ADMIN from this thread's effective set only.
    let lifecycle = std::thread::spawn(|| {
        drop_effective_capability(CAP_NET_ADMIN);
        let mut events = ProcEvents::open()?;
        let pid = run(&mut Command::new("/bin/true"));
        Ok((pid, lifecycle_of(&mut events, pid)))
    })
    .join()
    .unwrap();
    // Whether an unprivileged listener is allowed is the kernel build's choice (upstream
    // allows it since 6.6, yet one 6.18 build refuses it), so assert pidcap's reaction to
    // whatever this kernel does: either the events arrive, complete and in order, or the
    // refusal is `PermissionDenied` naming the capability that would fix it.
    match lifecycle {
        Ok((pid, lifecycle)) => {
            eprintln!("this kernel lets an unprivileged listener join the proc connector");
            assert_eq!(lifecycle, expected_lifecycle(pid, 0));
        }
        Err(error @ Error::PermissionDenied { .. }) => {
            eprintln!("this kernel refuses an unprivileged proc connector listener");
            assert!(error.to_string().contains("CAP_NET_ADMIN"), "{error}");
        }
        Err(other) => panic!("neither events nor a clear refusal: {other:?}"),
    }
}

const CAP_NET_ADMIN: u32 = 12;

/// `capget`/`capset` on the calling thread, version 3 (two 32-bit words per set).
fn drop_effective_capability(cap: u32) {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: libc::c_int,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const VERSION_3: u32 = 0x2008_0522;
    let mut header = Header {
        version: VERSION_3,
        pid: 0,
    };
    let mut data = [Data {
        effective: 0,
        permitted: 0,
        inheritable: 0,
    }; 2];
    // SAFETY: header and two data words are valid for the kernel to read and write.
    let rc = unsafe { libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) };
    assert_eq!(rc, 0, "capget: {}", std::io::Error::last_os_error());
    data[(cap / 32) as usize].effective &= !(1 << (cap % 32));
    // SAFETY: as above; capset only reads.
    let rc = unsafe { libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) };
    assert_eq!(rc, 0, "capset: {}", std::io::Error::last_os_error());
}

#[test]
fn live_recv_returns_on_timeout() {
    let mut events = open();
    let mut out = Vec::new();
    // Returns (Ok) whether or not some process on the machine forked meanwhile.
    events
        .recv_into(Duration::from_millis(1), &mut out)
        .unwrap();
    events.recv_into(Duration::ZERO, &mut out).unwrap();
}

#[test]
fn live_overflow_is_counted_as_lost_and_the_stream_goes_on() {
    let mut events = open();
    let fd = std::os::fd::AsRawFd::as_raw_fd(&events);
    // The smallest queue the kernel allows (a few KiB: a handful of events).
    set_receive_buffer(fd, libc::SO_RCVBUF, 0);
    for _ in 0..50 {
        run(&mut Command::new("/bin/true")); // 3 events each, none read meanwhile
    }
    let mut out = Vec::new();
    events.recv_into(Duration::ZERO, &mut out).unwrap();
    assert!(events.lost() >= 1, "{} events read, none lost", out.len());
    set_receive_buffer(fd, libc::SO_RCVBUFFORCE, 4 << 20);
    let pid = run(&mut Command::new("/bin/true"));
    assert_eq!(lifecycle_of(&mut events, pid), expected_lifecycle(pid, 0));
}

fn set_receive_buffer(fd: std::os::fd::RawFd, option: libc::c_int, bytes: libc::c_int) {
    // SAFETY: `fd` is an open socket; `bytes` lives for the call and its size is passed.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            option,
            std::ptr::addr_of!(bytes).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "setsockopt: {}", std::io::Error::last_os_error());
}
