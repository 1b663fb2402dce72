//! Which process used which TCP connection, from the kernel's socket tracepoints.
//!
//! The process side of attribution without polling: `connect()` and every send/receive on a
//! TCP socket fire a tracepoint in the calling process, so a connection that lives one
//! millisecond in a process of any age is still claimed by its process. [`format`](mod@format) reads the
//! record layouts from tracefs, [`pairing`] turns events into claims (pure), [`perf`] reads
//! the events through perf ring buffers.

pub mod format;
pub mod pairing;
pub mod perf;

pub use format::{SetState, SetStateLayout, SockIoLayout, SyscallLayout, TraceField, TraceFormat};
pub use pairing::{Pairing, SockEvent, SocketClaim};
pub use perf::{find_tracefs, parse_cpu_list, SockTracer};
