//! What the other threads tell the refresher: the vocabulary between them, in one room (the
//! refresher imports it, the packet path, watcher and tracer send it; none imports another).
//!
//! Two bounded queues, neither ever blocks a sender: missed flows with a one-slot wake-up
//! ([`miss_channel`]; a full queue drops the flow, the wake-up still comes, and the next
//! full pass finds its socket), and [`News`] from the process side (a full queue drops the
//! message; senders count it in `stats.process_side.learned_dropped`).

use std::sync::mpsc::{Receiver, SyncSender};
use std::time::Instant;

use pidcap_core::{NetNsId, PacketSend, ProcessInfo, ProcessKey, SocketEntry};
use pidcap_wire::FlowKey;

/// Asks the refresher for an early refresh; never blocks. Concurrent requests coalesce into
/// at most one pending wake-up; missed flows queue (bounded, dropped when full) so the
/// refresher can ask the kernel for exactly those sockets.
#[derive(Debug, Clone)]
pub struct MissSignal {
    wake: SyncSender<()>,
    flows: SyncSender<FlowKey>,
    namespaces: SyncSender<NetNsId>,
}

impl MissSignal {
    /// Wakes the refresher for a pass.
    pub fn request(&self) {
        let _ = self.wake.try_send(());
    }

    /// Reports a flow no socket was found for, and wakes the refresher.
    pub fn missed(&self, flow: FlowKey) {
        let _ = self.flows.try_send(flow);
        self.request();
    }

    /// Reports a packet captured inside namespace `netns` (its own loopback) with an end no
    /// socket was found for: that namespace is to be read again. Wakes the refresher.
    pub fn missed_in(&self, netns: NetNsId) {
        let _ = self.namespaces.try_send(netns);
        self.request();
    }
}

/// The refresher's end of a [`MissSignal`].
#[derive(Debug)]
pub struct MissRequests {
    pub(crate) wake: Receiver<()>,
    pub(crate) flows: Receiver<FlowKey>,
    pub(crate) namespaces: Receiver<NetNsId>,
}

/// Missed flows that may wait for the refresher at once.
pub(crate) const MISSED_FLOWS: usize = 1024;

/// Namespaces with a miss inside that may wait for the refresher at once.
const MISSED_NAMESPACES: usize = 256;

/// A one-slot wake-up channel and bounded queues of missed flows and namespaces.
pub fn miss_channel() -> (MissSignal, MissRequests) {
    let (wake, wake_rx) = std::sync::mpsc::sync_channel(1);
    let (flows, flows_rx) = std::sync::mpsc::sync_channel(MISSED_FLOWS);
    let (namespaces, namespaces_rx) = std::sync::mpsc::sync_channel(MISSED_NAMESPACES);
    (
        MissSignal {
            wake,
            flows,
            namespaces,
        },
        MissRequests {
            wake: wake_rx,
            flows: flows_rx,
            namespaces: namespaces_rx,
        },
    )
}

/// Sockets a process was seen holding, with who it is.
#[derive(Debug, Clone)]
pub struct Learned {
    pub sockets: Vec<SocketEntry>,
    pub info: ProcessInfo,
    /// When the process was seen with them (the traced event, the read of its fds).
    pub seen: Instant,
}

/// What the process watcher and the socket tracer tell the refresher.
#[derive(Debug, Clone)]
pub enum News {
    /// A process was seen holding or using these sockets.
    Learned(Learned),
    /// A process that [`News::Learned`] named as a holder exited (with its uid): it holds
    /// nothing any more. Until the next full fd scan it would still be listed, and as the
    /// newest holder be credited with the traffic of the process it shared a socket with.
    /// `at`: when the exit was read (just after it happened).
    Exited {
        key: ProcessKey,
        uid: u32,
        at: Instant,
    },
    /// A process was found in another network namespace at its latest `exec` than at the one
    /// before (`ip netns exec`: exec, `setns`, exec again): what was learned of it under the
    /// old namespace with loopback addresses (which name no namespace) belongs to the new one.
    Moved {
        key: ProcessKey,
        from: NetNsId,
        to: NetNsId,
    },
    /// A process started in a network namespace other than the daemon's: that namespace's
    /// sockets and addresses are to be read (through `pid`) before its traffic comes.
    Namespace { netns: NetNsId, pid: u32 },
    /// Frames sent through packet sockets (`AF_PACKET`), every one up to `read_to`, and who
    /// their senders are: frames no IP socket owns are credited to their sender when they
    /// match ([`pidcap_core::PacketSends`]). Also sent with no sends, to move `read_to`
    /// past the window of the last ones.
    PacketSent {
        sends: Vec<PacketSend>,
        senders: Vec<ProcessInfo>,
        read_to: Instant,
    },
    /// A process bound a socket at `at` (the kernel's time) and was gone, or had closed it,
    /// before the tracer could read which: a port some socket seen earlier held may have
    /// passed to it (see `TableBuilder::bound_unread`).
    BoundUnread { at: Instant },
    /// A process bound the sockets of `learned` (known by the addresses it gave `bind()`,
    /// with inodes no kernel socket has) at `learned.seen` and had ended by `by`, before
    /// they could be read: its holder for the packets captured in between (see
    /// `TableBuilder::learn_gone`). Sent after the [`News::BoundUnread`] of the same bind.
    BoundGone { learned: Learned, by: Instant },
    /// The socket tracer's claims of one round (a process used these connections), the
    /// forks of processes that claimed connections before them (their children may use
    /// them: `pidcap_core::SocketTable::with_forks`), and how far its rings were read:
    /// every claim made up to `read_to` is in this news or an earlier one
    /// (`pidcap_core::Captured::late`). One message, so that no table has the claims
    /// without the rest.
    Claimed {
        claims: Vec<Learned>,
        forks: Vec<(u32, Instant)>,
        read_to: Instant,
    },
    /// A process reported holding sockets (or to be: this comes first) forked at `at`:
    /// its child holds them too (`pidcap_core::SocketTable::with_forks`).
    Forked { pid: u32, at: Instant },
}

impl From<Learned> for News {
    fn from(learned: Learned) -> News {
        News::Learned(learned)
    }
}
