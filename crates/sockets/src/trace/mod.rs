//! Which process used which TCP connection, from the kernel's socket tracepoints.
//!
//! The process side of attribution without polling: `connect()` and every send/receive on a
//! TCP socket fire a tracepoint in the calling process, so a connection that lives one
//! millisecond in a process of any age is still claimed by its process; a UDP socket's
//! `connect()` is reported with its pid and fd (and, on demand, its addresses from the route
//! lookup inside the call). Every send on a packet socket (`AF_PACKET`) is reported with its
//! pid and length ([`PacketSent`]): frames no IP socket owns get their sender. [`format`](mod@format) reads the record layouts from tracefs,
//! [`pairing`] turns events into claims (pure), [`perf`] reads the events through perf ring
//! buffers.

pub mod format;
pub mod pairing;
pub mod perf;

pub use format::SockIo;
pub use format::{
    RouteLayout, RouteLookup, SetState, SetStateLayout, SockIoLayout, SyscallLayout, TraceField,
    TraceFormat,
};
pub use pairing::{Bound, Connected, Connects, Pairing, SockEvent, SocketClaim};
pub use perf::{
    find_tracefs, instant_of, parse_cpu_list, PacketSent, RouteScope, SockTracer,
    MAX_ROUTE_THREADS, ROUTE_COUNTERS,
};
