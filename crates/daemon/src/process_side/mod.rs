//! The process side of attribution: kernel sources that tell which process uses a socket
//! while it lives, so sockets that live a millisecond are still credited. The process
//! watcher ([`watch`], the proc connector) reads young processes' sockets; the socket tracer
//! ([`trace`], the sock tracepoints) claims TCP connections and reads connected sockets at
//! `connect()`; both record who each pid is in [`facts`] and tell the refresher through
//! [`crate::inbox`].
//!
//! Invariants: both are optional (the daemon runs without them, warned once); neither ever
//! blocks on the refresher (bounded queues, drops counted); a process of another network
//! namespace is never credited here.

pub mod facts;
pub mod holders;
pub mod trace;
pub mod watch;
