//! Which sockets exist: the kernel's socket tables over netlink sock_diag ([`diag`], with a
//! lookup of one socket by its addresses), the `/proc/net` text tables as a fallback
//! ([`proc_net`], [`sctp`]), the host's own addresses ([`addrs`]) and, as text through one of
//! its processes, another namespace's ([`ns_addrs`]).
//!
//! Invariants: every entry is one socket of the namespace read, with its inode (0 when no fd
//! holds it: TIME_WAIT, orphans); a reply or a line that does not parse is an error or
//! skipped, never a panic.

pub mod addrs;
pub mod diag;
pub mod ns_addrs;
pub mod proc_net;
pub mod sctp;
