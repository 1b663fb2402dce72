#![doc = include_str!("../README.md")]

mod addrs;
mod diag;
mod error;
mod fds;
mod netns;
mod pid_fds;
mod pidfd;
mod proc_events;
mod proc_net;
pub mod process;
mod root;
mod scanner;
mod sctp;
mod text;
pub mod trace;

pub use addrs::local_addresses;
pub use diag::{SockDiag, ALL_STATES};
pub use error::{Error, Result};
pub use fds::{OwnerScan, ScanStats};
pub use pidfd::ProcessHandle;
pub use proc_events::{parse_datagram, MalformedDatagram, ProcEvent, ProcEvents};
pub use proc_net::{parse_net_table, parse_net_table_into, NetTable};
pub use root::ProcRoot;
pub use scanner::{OwnerScanner, ResolveStats};
pub use sctp::{parse_sctp_assocs, parse_sctp_eps};
