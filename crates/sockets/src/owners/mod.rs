//! Which processes hold each socket: the socket inodes behind every process's fds
//! ([`fds`], the plain walk; [`scanner`], the cheap one that also finds the holders of a few
//! new inodes without a full pass) and one process's socket fds ([`pid_fds`]).
//!
//! Invariants: a process that exits or denies access during a walk is skipped and counted,
//! never an error for the whole walk; holders are keyed by (pid, start time).

pub mod fds;
pub mod pid_fds;
pub mod scanner;
