#![doc = include_str!("../README.md")]

mod process;
mod socket;

pub use process::{ProcessInfo, ProcessKey};
pub use socket::{NetNsId, SocketEntry, TcpState};
