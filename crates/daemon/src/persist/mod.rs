//! What outlives the daemon: the usage log ([`usage_log`], JSON lines appended and fsynced
//! each interval) and the counter checkpoint in the state directory ([`checkpoint`], written
//! after each log write and restored at start).
//!
//! Invariants: a line is written whole or not at all (a torn tail is cut at start); nothing
//! logged is counted twice across a restart; a failed write keeps the counters in memory.

pub mod checkpoint;
pub mod usage_log;
