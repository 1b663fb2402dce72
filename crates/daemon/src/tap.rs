//! The tap: hands the frames the capture thread decides to `capture` stream clients.
//!
//! Invariants: with no client listening the capture thread pays one relaxed atomic load per
//! frame and nothing else; with clients it copies each frame once (at most the snaplen) into
//! a bounded broadcast ring and never waits: a client that falls behind by more than
//! [`TAP_RING`] frames loses the oldest ones, and is told how many (`lost`). The capture
//! thread is the only sender.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use pidcap_core::Verdict;
use pidcap_wire::FlowKey;
use tokio::sync::broadcast;

/// Frames a listener may fall behind before it loses some.
pub const TAP_RING: usize = 16_384;

/// What the capture thread decided about a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TapMark {
    /// Attributed (one or both ends may still be unknown, or a miss waiting for a refresh).
    Verdict(Verdict),
    /// Neither end is local.
    Foreign,
    /// A copy of a packet already counted on another interface.
    Copy,
    /// Not IPv4/IPv6.
    NotIp,
    /// The headers did not parse.
    Malformed,
}

/// One frame as the capture thread saw and decided it.
#[derive(Debug)]
pub struct Tapped {
    /// Capture time, µs since the epoch.
    pub at_us: u64,
    /// Length on the wire.
    pub orig_len: u32,
    /// The captured bytes.
    pub frame: Box<[u8]>,
    /// The flow and whether its ports were known, for frames that parsed.
    pub flow: Option<(FlowKey, bool)>,
    /// The IP packet's length (0 for frames that did not parse).
    pub ip_len: u32,
    pub mark: TapMark,
    /// The socket table generation the verdict was made with.
    pub generation: u64,
}

/// Shared by the capture thread (sender) and the query server (listeners).
#[derive(Debug)]
pub struct Tap {
    listeners: AtomicUsize,
    sender: broadcast::Sender<Arc<Tapped>>,
}

impl Default for Tap {
    fn default() -> Self {
        Tap {
            listeners: AtomicUsize::new(0),
            sender: broadcast::channel(TAP_RING).0,
        }
    }
}

impl Tap {
    /// Whether any client listens: the capture thread copies frames only then.
    pub fn active(&self) -> bool {
        self.listeners.load(Ordering::Relaxed) > 0
    }

    /// Hands a frame to every listener; never blocks.
    pub fn send(&self, tapped: Tapped) {
        // No receiver (the last one left since `active`) is not an error.
        let _ = self.sender.send(Arc::new(tapped));
    }

    /// A new listener, counted until dropped.
    pub fn listen(self: &Arc<Self>) -> Listener {
        self.listeners.fetch_add(1, Ordering::Relaxed);
        Listener {
            receiver: self.sender.subscribe(),
            tap: Arc::clone(self),
        }
    }
}

/// One client's view of the tap.
#[derive(Debug)]
pub struct Listener {
    pub receiver: broadcast::Receiver<Arc<Tapped>>,
    tap: Arc<Tap>,
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.tap.listeners.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(n: u8) -> Tapped {
        Tapped {
            at_us: u64::from(n),
            orig_len: 1,
            frame: Box::new([n]),
            flow: None,
            ip_len: 0,
            mark: TapMark::NotIp,
            generation: 0,
        }
    }

    #[test]
    fn a_listener_is_counted_while_it_lives_and_sees_what_is_sent_after_it_came() {
        let tap = Arc::new(Tap::default());
        assert!(!tap.active());
        tap.send(frame(1)); // nobody listens: dropped, no error
        let mut listener = tap.listen();
        assert!(tap.active());
        tap.send(frame(2));
        assert_eq!(listener.receiver.try_recv().unwrap().at_us, 2);
        drop(listener);
        assert!(!tap.active());
    }

    #[test]
    fn a_slow_listener_loses_the_oldest_frames_and_is_told_how_many() {
        let tap = Arc::new(Tap::default());
        let mut listener = tap.listen();
        for n in 0..(TAP_RING + 5) {
            tap.send(frame(n as u8));
        }
        match listener.receiver.try_recv() {
            Err(broadcast::error::TryRecvError::Lagged(lost)) => assert_eq!(lost, 5),
            other => panic!("expected a lag, got {other:?}"),
        }
        assert!(listener.receiver.try_recv().is_ok(), "then the rest");
    }
}
