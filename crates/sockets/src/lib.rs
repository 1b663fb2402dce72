#![doc = include_str!("../README.md")]

mod conntrack;
mod error;
mod owners;
mod processes;
mod root;
mod tables;
mod text;
pub mod trace;

pub use conntrack::{parse_answer as parse_conntrack_answer, Answer as ConntrackAnswer, Conntrack};
pub use error::{Error, Result};
pub use owners::fds::{OwnerScan, ScanStats};
pub use owners::scanner::{OwnerScanner, ResolveStats};
pub use processes::netns::InNamespace;
pub use processes::pidfd::ProcessHandle;
pub use processes::proc_events::{parse_datagram, MalformedDatagram, ProcEvent, ProcEvents};
pub use processes::process;
pub use root::ProcRoot;
pub use tables::addrs::local_addresses;
pub use tables::diag::{SockDiag, ALL_STATES};
pub use tables::ns_addrs::{parse_fib_trie_local, parse_if_inet6};
pub use tables::proc_net::{parse_net_table, parse_net_table_into, NetTable};
pub use tables::sctp::{parse_sctp_assocs, parse_sctp_eps};
