//! What the processes are and what they do: process facts from `/proc` ([`process`]), fork,
//! exec and exit events from the kernel's connector ([`proc_events`]), a young process's
//! sockets read through `pidfd_getfd` ([`pidfd`]), and network namespaces ([`netns`]).
//!
//! Invariants: a process is named by (pid, start time), never by pid alone; what is read
//! from another process is bounded (command lines at `process::CMDLINE_LIMIT`).

pub mod netns;
pub mod pidfd;
pub mod proc_events;
pub mod process;
