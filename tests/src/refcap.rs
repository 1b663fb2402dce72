//! The reference capture: the independent truth the daemon is compared with.
//!
//! A libpcap capture on one interface with a BPF filter, read on its own thread into a map
//! (protocol, source, destination) → packets and IP-layer bytes, readable while it runs.
//!
//! Invariants: the capture is open and filtered before `start` returns (packets sent after
//! that are seen); after `stop` the thread drains what the kernel holds, then ends at the
//! first empty read; between reads it polls the capture fd for at most 50 ms.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crate::addr_matches;
use crate::frame::{self, Parsed};

/// Packets and IP-layer bytes.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Tally {
    pub packets: u64,
    pub bytes: u64,
}

impl Tally {
    fn add(&mut self, other: Tally) {
        self.packets += other.packets;
        self.bytes += other.bytes;
    }
}

/// Per-flow truth: (IP protocol number, source, destination) → tally.
#[derive(Debug, Default, Clone)]
pub struct Truth {
    pub flows: HashMap<(u8, SocketAddr, SocketAddr), Tally>,
    /// TCP flows split by connection: the n-th opening (SYN) seen on the 4-tuple starts
    /// connection n (0: packets before any opening was seen). A 4-tuple that passes from
    /// process to process (ports reused on one address) is told apart this way.
    pub connections: HashMap<(u8, SocketAddr, SocketAddr), BTreeMap<u32, Tally>>,
    /// Per 4-tuple (either direction): openings seen, and the last one's sequence number (a
    /// retransmitted SYN is not a new connection).
    pub(crate) openings: HashMap<(SocketAddr, SocketAddr), (u32, u32)>,
    /// Frames the filter passed that this parser could not read.
    pub unparsed: u64,
}

impl Truth {
    fn record(&mut self, p: Parsed) {
        let tally = Tally {
            packets: 1,
            bytes: u64::from(p.ip_len),
        };
        self.flows
            .entry((p.proto, p.src, p.dst))
            .or_default()
            .add(tally);
        if p.proto == 6 {
            let connection = self.connection_of(&p);
            let by = self.connections.entry((p.proto, p.src, p.dst)).or_default();
            by.entry(connection).or_default().add(tally);
        }
    }

    /// Which connection of its 4-tuple a TCP packet belongs to (see `connections`).
    fn connection_of(&mut self, p: &Parsed) -> u32 {
        let tuple = (p.src.min(p.dst), p.src.max(p.dst));
        let seen = self.openings.entry(tuple).or_insert((0, 0));
        if let Some(seq) = p.syn_seq {
            if seen.0 == 0 || seen.1 != seq {
                *seen = (seen.0 + 1, seq);
            }
        }
        seen.0
    }

    fn sum(&self, mut pick: impl FnMut(u8, SocketAddr, SocketAddr) -> bool) -> Tally {
        let mut total = Tally::default();
        for (&(proto, src, dst), &tally) in &self.flows {
            if pick(proto, src, dst) {
                total.add(tally);
            }
        }
        total
    }

    /// What the socket bound to `local` sent (`proto`: 6 TCP, 17 UDP).
    pub fn tx_of(&self, proto: u8, local: SocketAddr) -> Tally {
        self.sum(|p, src, _| p == proto && addr_matches(local, src))
    }

    /// What the socket bound to `local` received.
    pub fn rx_of(&self, proto: u8, local: SocketAddr) -> Tally {
        self.sum(|p, _, dst| p == proto && addr_matches(local, dst))
    }

    /// Everything captured.
    pub fn total(&self) -> Tally {
        self.sum(|_, _, _| true)
    }
}

/// A running reference capture.
#[derive(Debug)]
pub struct RefCapture {
    truth: Arc<Mutex<Truth>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl RefCapture {
    /// Opens `interface` (e.g. `lo`, `any`, a veth) with BPF `filter` and starts counting.
    pub fn start(interface: &str, filter: &str) -> RefCapture {
        crate::require_root();
        RefCapture::counting(open(interface), filter)
    }

    /// [`RefCapture::start`] on `interface` inside the named namespace (`ip netns` name):
    /// the capture is opened on a thread that entered it, and stays bound to it.
    pub fn start_in(netns: &str, interface: &str, filter: &str) -> RefCapture {
        crate::require_root();
        let path = format!("/run/netns/{netns}");
        let interface = interface.to_owned();
        let capture = std::thread::spawn(move || {
            let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
            // SAFETY: a valid descriptor for the call; moves only this short-lived thread.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
            open(&interface)
        })
        .join()
        .expect("opening the reference capture");
        RefCapture::counting(capture, filter)
    }

    fn counting(mut capture: pcap::Capture<pcap::Active>, filter: &str) -> RefCapture {
        capture
            .filter(filter, true)
            .unwrap_or_else(|e| panic!("reference filter {filter:?}: {e}"));
        let truth = Arc::new(Mutex::new(Truth::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (truth, stop) = (Arc::clone(&truth), Arc::clone(&stop));
            std::thread::spawn(move || count(capture, &truth, &stop))
        };
        RefCapture {
            truth,
            stop,
            thread: Some(thread),
        }
    }

    /// A BPF filter matching TCP and UDP packets to or from any of `ports`.
    pub fn ports_filter(ports: &[u16]) -> String {
        let ports: Vec<String> = ports.iter().map(|p| format!("port {p}")).collect();
        format!("(tcp or udp) and ({})", ports.join(" or "))
    }

    /// The truth so far.
    pub fn snapshot(&self) -> Truth {
        self.truth.lock().expect("truth lock").clone()
    }

    /// Stops the capture and returns the final truth.
    pub fn stop(mut self) -> Truth {
        self.halt();
        self.snapshot()
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            thread.join().expect("reference capture thread panicked");
        }
    }
}

impl Drop for RefCapture {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A live, immediate, non-blocking capture of `interface` in this thread's namespace.
fn open(interface: &str) -> pcap::Capture<pcap::Active> {
    pcap::Capture::from_device(interface)
        .and_then(|c| c.immediate_mode(true).snaplen(256).open())
        .and_then(|c| c.setnonblock())
        .unwrap_or_else(|e| panic!("reference capture on {interface}: {e}"))
}

fn count(mut capture: pcap::Capture<pcap::Active>, truth: &Mutex<Truth>, stop: &AtomicBool) {
    let dlt = capture.get_datalink().0;
    loop {
        match capture.next_packet() {
            Ok(packet) => {
                let mut truth = truth.lock().expect("truth lock");
                match frame::parse(dlt, packet.data) {
                    Some(parsed) => truth.record(parsed),
                    None => truth.unparsed += 1,
                }
            }
            // Stop only once the buffer is drained, so nothing already captured is lost.
            Err(pcap::Error::TimeoutExpired) if stop.load(Ordering::Relaxed) => return,
            // libpcap's own timeout may never fire (TPACKET_V3 with no packets), so the
            // capture is non-blocking and the wait for more is our own bounded poll.
            Err(pcap::Error::TimeoutExpired) => wait_readable(capture.as_raw_fd(), 50),
            Err(e) => panic!("reference capture: {e}"),
        }
    }
}

fn wait_readable(fd: RawFd, timeout_ms: i32) {
    let mut pollfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the duration of the call; errors (EINTR) just loop again.
    unsafe { libc::poll(&mut pollfd, 1, timeout_ms) };
}
