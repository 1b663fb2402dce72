//! Sockets as the kernel lists them.

use std::net::SocketAddr;

use pidcap_wire::IpProto;

/// A network namespace, named by the inode of its `/proc/<pid>/ns/net` link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NetNsId(pub u64);

impl NetNsId {
    /// Not known: a socket whose process's namespace could not be read (it exited, or went
    /// to another namespace and exec'd again, before it was read). Such a socket is looked
    /// up in every namespace, but answers only where no socket of that namespace does (see
    /// [`crate::SocketTable::lookup`]). No namespace has inode 0.
    pub const UNPLACED: NetNsId = NetNsId(0);
}

/// A TCP state as numbered by the kernel (`include/net/tcp_states.h`). UDP sockets report
/// `Established` (1) when connected and `Close` (7) otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TcpState {
    Established,
    SynSent,
    SynRecv,
    FinWait1,
    FinWait2,
    TimeWait,
    Close,
    CloseWait,
    LastAck,
    Listen,
    Closing,
    NewSynRecv,
    Unknown(u8),
}

impl From<u8> for TcpState {
    fn from(n: u8) -> Self {
        use TcpState::*;
        match n {
            1 => Established,
            2 => SynSent,
            3 => SynRecv,
            4 => FinWait1,
            5 => FinWait2,
            6 => TimeWait,
            7 => Close,
            8 => CloseWait,
            9 => LastAck,
            10 => Listen,
            11 => Closing,
            12 => NewSynRecv,
            other => Unknown(other),
        }
    }
}

/// One socket from the kernel's tables.
///
/// `remote` is the unspecified address with port 0 (`0.0.0.0:0` or `[::]:0`) for sockets
/// with no peer: listeners and unconnected UDP. `inode` is 0 for sockets no process holds
/// (TIME_WAIT, request sockets); those never resolve to a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SocketEntry {
    pub netns: NetNsId,
    pub proto: IpProto,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub state: TcpState,
    pub inode: u64,
    pub uid: u32,
}

impl SocketEntry {
    /// True when the socket has no peer (listener or unconnected datagram socket).
    pub fn is_wildcard_remote(&self) -> bool {
        self.remote.ip().is_unspecified() && self.remote.port() == 0
    }
}
