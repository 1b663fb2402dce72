//! The accuracy suite: how much of the traffic real processes move does `pidcapd` credit to
//! the right process, to a wrong one, and to `unknown`.
//!
//! Each scenario starts its own `pidcapd` with a BPF filter that passes only the scenario's
//! traffic, starts reference captures with the same filter, runs real processes
//! (`pidcap-peer`), and compares the daemon's per-process totals with the truth: the bytes of
//! the packets whose source (tx) or destination (rx) is one of the endpoints the workload
//! processes themselves reported. The binary `pidcap-accuracy` runs every scenario at full
//! size; `tests/hard_cases.rs` runs small versions and asserts the targets.
//!
//! Invariants: every scenario is bounded in time and cleans up its processes (Drop);
//! measuring never asserts: a scenario that cannot run returns an error, a target missed is
//! a result.

pub mod contention;
pub mod measure;
pub mod report;
pub mod scenarios;
pub mod sockets;
pub mod spawn;
pub mod sysctl;

pub use measure::{Outcome, Ownership, PidBytes, TARGET_RIGHT, TARGET_WRONG};
pub use scenarios::Size;
