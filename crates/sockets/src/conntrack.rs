//! The kernel's connection tracker, asked over ctnetlink (`NETLINK_NETFILTER`) which
//! connection a tuple belongs to: how pidcap maps an address-translated (NAT) packet back to
//! the sockets of its two ends.
//!
//! One request per question (`IPCTNL_MSG_CT_GET` by tuple; the tracker finds a connection
//! from a tuple of either direction), answered from the tracker's hash: no dump, so the cost
//! does not grow with the size of the table. Needs CAP_NET_ADMIN in the namespace whose
//! tracker is asked (the daemon's own).

mod msg;

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use netlink_sys::{Socket, SocketAddr as NetlinkAddr};
use pidcap_core::Translation;
use pidcap_wire::FlowKey;

use crate::error::{Error, Result};

pub use msg::{get_request, parse_answer, trackable, Answer, Malformed};

const NETLINK_NETFILTER: isize = 12;
const SOCKET_NAME: &str = "netlink conntrack";
/// Longest wait for one answer.
const RECV_TIMEOUT: Duration = Duration::from_secs(1);
/// A connection message is a few hundred bytes.
const RECV_BUFFER: usize = 8192;

/// An open ctnetlink socket (see the module docs).
#[derive(Debug)]
pub struct Conntrack {
    socket: Socket,
    seq: u32,
    buffer: Vec<u8>,
}

impl Conntrack {
    /// Opens the socket; fails without CAP_NET_ADMIN only at the first question.
    pub fn open() -> Result<Conntrack> {
        let classify = |e| Error::from_io(&PathBuf::from(SOCKET_NAME), e);
        let mut socket = Socket::new(NETLINK_NETFILTER).map_err(classify)?;
        socket.bind_auto().map_err(classify)?;
        socket.connect(&NetlinkAddr::new(0, 0)).map_err(classify)?;
        crate::tables::diag::set_recv_timeout(&socket, RECV_TIMEOUT).map_err(classify)?;
        Ok(Conntrack {
            socket,
            seq: 0,
            buffer: vec![0; RECV_BUFFER],
        })
    }

    /// The connection `flow` is a tuple of (in either direction), or `None` when the tracker
    /// has none (or `flow` is not a protocol it tracks by ports or echo identifier).
    pub fn find(&mut self, flow: &FlowKey) -> Result<Option<Translation>> {
        if !trackable(flow) || flow.src.is_ipv4() != flow.dst.is_ipv4() {
            return Ok(None);
        }
        self.seq = self.seq.wrapping_add(1);
        let request = get_request(flow, self.seq);
        self.socket
            .send(&request, 0)
            .map_err(|e| failed(e.raw_os_error().unwrap_or(libc::EIO)))?;
        loop {
            let len = self.recv()?;
            match parse_answer(&self.buffer[..len], self.seq) {
                Ok(Answer::Found(t)) => return Ok(Some(t)),
                Ok(Answer::Failed(libc::ENOENT)) => return Ok(None),
                Ok(Answer::Failed(errno)) => return Err(failed(errno)),
                // A late answer to an earlier question that timed out: read on.
                Err(Malformed("no message answers the request")) => continue,
                Err(m) => {
                    return Err(Error::Netlink {
                        what: format!("conntrack get ({m})"),
                        errno: libc::EPROTO,
                    })
                }
            }
        }
    }

    fn recv(&mut self) -> Result<usize> {
        loop {
            match self.socket.recv(&mut &mut self.buffer[..], 0) {
                Ok(len) => return Ok(len.min(self.buffer.len())),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return Err(failed(libc::ETIMEDOUT))
                }
                Err(e) => return Err(failed(e.raw_os_error().unwrap_or(libc::EIO))),
            }
        }
    }
}

fn failed(errno: i32) -> Error {
    Error::Netlink {
        what: "conntrack get".into(),
        errno,
    }
}
