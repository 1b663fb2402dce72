//! The bytes of the process-event connector: `struct nlmsghdr` + `struct cn_msg`
//! (`include/uapi/linux/connector.h`) + `struct proc_event` (`include/uapi/linux/cn_proc.h`),
//! in host byte order, and the subscription request.
//!
//! Invariants:
//! - Never panics, whatever the bytes: every view is built by a `new_checked` that validates
//!   the length its accessors read, once.
//! - A malformed message ends the datagram with an error (nothing after it is trusted); the
//!   events before it are kept.
//! - Allocates nothing: messages are yielded one by one from the caller's buffer.
//! - Messages that are well formed but not fork/exec/exit of a process (another connector,
//!   another event kind, a thread's fork or exit, the kernel's acknowledgement) are yielded as
//!   [`Message::Skipped`] or [`Message::Ack`], never as errors, so a newer kernel with new
//!   event kinds keeps working.

use netlink_packet_core::{NetlinkBuffer, NLMSG_DONE};

use super::ProcEvent;

/// `CN_IDX_PROC` / `CN_VAL_PROC`: the process-event connector's id, also its multicast group.
pub(crate) const CN_IDX_PROC: u32 = 1;
pub(crate) const CN_VAL_PROC: u32 = 1;

/// `enum proc_cn_mcast_op`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub(crate) enum McastOp {
    Listen = 1,
    Ignore = 2,
}

/// `enum what` of `struct proc_event` (the kinds read; the others are skipped).
mod what {
    /// The kernel's acknowledgement of a subscription request (`ack.err`).
    pub(super) const NONE: u32 = 0x0000_0000;
    pub(super) const FORK: u32 = 0x0000_0001;
    pub(super) const EXEC: u32 = 0x0000_0002;
    pub(super) const EXIT: u32 = 0x8000_0000;
}

/// `struct cn_msg` offsets (20 bytes, then `len` bytes of data).
mod cn {
    use std::ops::Range;
    pub(super) const IDX: Range<usize> = 0..4;
    pub(super) const VAL: Range<usize> = 4..8;
    /// `seq` (8..12) is not read: the kernel numbers its messages per CPU.
    pub(super) const ACK: Range<usize> = 12..16;
    pub(super) const LEN: Range<usize> = 16..18;
    pub(super) const FLAGS: Range<usize> = 18..20;
    pub(super) const HEADER_LEN: usize = FLAGS.end;
}

/// `struct proc_event` offsets: a 16-byte header (`what`, `cpu`, `timestamp_ns` aligned to 8),
/// then the `event_data` union. Each kind needs only the fields read here, so an older kernel's
/// shorter `exit` (without `parent_pid`/`parent_tgid`) is accepted.
mod ev {
    use std::ops::Range;
    pub(super) const WHAT: Range<usize> = 0..4;
    /// `cpu` (4..8) is not read; `timestamp_ns` (8..16) only for `exit`.
    pub(super) const TIMESTAMP: Range<usize> = 8..16;
    pub(super) const HEADER_LEN: usize = 16;
    /// `ack.err`.
    pub(super) const ACK_ERR: Range<usize> = 16..20;
    /// `fork`: `parent_pid` 16..20, `parent_tgid`, `child_pid`, `child_tgid`.
    pub(super) const FORK_PARENT_TGID: Range<usize> = 20..24;
    pub(super) const FORK_CHILD_PID: Range<usize> = 24..28;
    pub(super) const FORK_CHILD_TGID: Range<usize> = 28..32;
    /// `exec` and `exit` both start with `process_pid`, `process_tgid`.
    pub(super) const PROCESS_PID: Range<usize> = 16..20;
    pub(super) const PROCESS_TGID: Range<usize> = 20..24;
    /// `exit`: then `exit_code` (the wait status), `exit_signal`, `parent_pid`, `parent_tgid`.
    pub(super) const EXIT_CODE: Range<usize> = 24..28;
}

/// The length of the subscription request: `nlmsghdr` + `cn_msg` + the `u32` op.
pub(crate) const REQUEST_LEN: usize = 16 + cn::HEADER_LEN + 4;

/// A datagram the parser cannot read: `offset` is where the bad message starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("malformed proc connector datagram at byte {offset}: {reason}")]
pub struct MalformedDatagram {
    pub offset: usize,
    pub reason: &'static str,
}

/// One netlink message of a datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Message {
    Event(ProcEvent),
    /// `PROC_EVENT_NONE`: the answer to some listener's subscription request; `ack` is that
    /// request's `cn_msg.ack` + 1, `err` a positive errno or 0.
    Ack {
        ack: u32,
        err: u32,
    },
    Skipped(Skip),
}

/// Why a well-formed message yields no event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Skip {
    /// Not a connector message (`NLMSG_NOOP`, `NLMSG_ERROR`, another type).
    NotConnector,
    /// A message of another connector than `CN_IDX_PROC`/`CN_VAL_PROC`.
    OtherConnector,
    /// uid/gid/sid/ptrace/comm/coredump changes, or a kind newer than this reader.
    OtherKind,
    /// A thread's creation or exit (pid != tgid), not a process's.
    Thread,
}

/// Parses one netlink datagram (one or more `nlmsghdr`) of process-connector messages and
/// appends its fork, exec and exit events to `out`, in order.
///
/// Pids are thread-group ids (what userspace calls the pid): exec and exit report
/// `process_tgid`, fork the parent's and the child's tgid. Events of threads (`pid != tgid`:
/// `clone(CLONE_THREAD)`, a thread's exit) are skipped, as are other event kinds, other
/// connectors and the kernel's acknowledgements. On a malformed message, `out` keeps the events
/// before it and the rest of the datagram is not read.
pub fn parse_datagram(bytes: &[u8], out: &mut Vec<ProcEvent>) -> Result<(), MalformedDatagram> {
    for message in Messages::new(bytes) {
        if let Message::Event(event) = message? {
            out.push(event);
        }
    }
    Ok(())
}

/// The messages of one datagram; after an error, nothing more.
#[derive(Debug)]
pub(crate) struct Messages<'a> {
    datagram: &'a [u8],
    offset: usize,
}

impl<'a> Messages<'a> {
    pub(crate) fn new(datagram: &'a [u8]) -> Self {
        Messages {
            datagram,
            offset: 0,
        }
    }
}

impl Iterator for Messages<'_> {
    type Item = Result<Message, MalformedDatagram>;

    fn next(&mut self) -> Option<Self::Item> {
        let rest = self.datagram.get(self.offset..).filter(|r| !r.is_empty())?;
        let offset = self.offset;
        let Ok(netlink) = NetlinkBuffer::new_checked(rest) else {
            self.offset = self.datagram.len();
            let reason = "netlink header truncated or its length out of range";
            return Some(Err(MalformedDatagram { offset, reason }));
        };
        // Messages are padded to 4 bytes; the last one's padding may be absent.
        let next = align4(netlink.length() as usize).min(rest.len());
        self.offset += next;
        let message = read_message(netlink.message_type(), netlink.payload());
        if message.is_err() {
            self.offset = self.datagram.len();
        }
        Some(message.map_err(|reason| MalformedDatagram { offset, reason }))
    }
}

/// The connector sends every message as `NLMSG_DONE` with a `cn_msg` payload.
fn read_message(message_type: u16, payload: &[u8]) -> Result<Message, &'static str> {
    match message_type {
        NLMSG_DONE => read_connector(payload),
        // NLMSG_NOOP, NLMSG_ERROR (the connector asks for no acknowledgements), anything else.
        _ => Ok(Message::Skipped(Skip::NotConnector)),
    }
}

fn read_connector(payload: &[u8]) -> Result<Message, &'static str> {
    let cn = ConnectorMessage::new_checked(payload)?;
    if (cn.idx(), cn.val()) != (CN_IDX_PROC, CN_VAL_PROC) {
        return Ok(Message::Skipped(Skip::OtherConnector));
    }
    let event = ProcEventBytes::new_checked(cn.data())?;
    event.read(cn.ack())
}

/// A `struct cn_msg` whose header and `len` bytes of data are within the buffer.
struct ConnectorMessage<'a> {
    bytes: &'a [u8],
}

impl<'a> ConnectorMessage<'a> {
    fn new_checked(bytes: &'a [u8]) -> Result<Self, &'static str> {
        let header = bytes
            .get(..cn::HEADER_LEN)
            .ok_or("cn_msg header truncated")?;
        let len = usize::from(u16_at(header, cn::LEN));
        let bytes = bytes
            .get(..cn::HEADER_LEN + len)
            .ok_or("cn_msg data shorter than its len field")?;
        Ok(ConnectorMessage { bytes })
    }

    fn idx(&self) -> u32 {
        u32_at(self.bytes, cn::IDX)
    }

    fn val(&self) -> u32 {
        u32_at(self.bytes, cn::VAL)
    }

    fn ack(&self) -> u32 {
        u32_at(self.bytes, cn::ACK)
    }

    fn data(&self) -> &'a [u8] {
        &self.bytes[cn::HEADER_LEN..]
    }
}

/// A `struct proc_event` holding at least the fields its kind is read for.
struct ProcEventBytes<'a> {
    bytes: &'a [u8],
    what: u32,
}

impl<'a> ProcEventBytes<'a> {
    fn new_checked(bytes: &'a [u8]) -> Result<Self, &'static str> {
        let header = bytes
            .get(..ev::HEADER_LEN)
            .ok_or("proc_event header truncated")?;
        let what = u32_at(header, ev::WHAT);
        let needed = match what {
            what::NONE => ev::ACK_ERR.end,
            what::FORK => ev::FORK_CHILD_TGID.end,
            what::EXEC => ev::PROCESS_TGID.end,
            what::EXIT => ev::EXIT_CODE.end,
            _ => ev::HEADER_LEN,
        };
        match bytes.len() >= needed {
            true => Ok(ProcEventBytes { bytes, what }),
            false => Err("proc_event data truncated for its kind"),
        }
    }

    fn read(&self, cn_ack: u32) -> Result<Message, &'static str> {
        let at = |field| u32_at(self.bytes, field);
        let process = |pid, tgid| {
            let tgid = at(tgid);
            (at(pid) == tgid).then_some(tgid)
        };
        let at_ns = (self.bytes.get(ev::TIMESTAMP))
            .and_then(|b| b.try_into().ok())
            .map_or(0, u64::from_ne_bytes);
        let event = match self.what {
            what::NONE => {
                let err = at(ev::ACK_ERR);
                return Ok(Message::Ack { ack: cn_ack, err });
            }
            what::FORK => process(ev::FORK_CHILD_PID, ev::FORK_CHILD_TGID).map(|child_pid| {
                let parent_pid = at(ev::FORK_PARENT_TGID);
                ProcEvent::Fork {
                    parent_pid,
                    child_pid,
                    at_ns,
                }
            }),
            what::EXEC => {
                process(ev::PROCESS_PID, ev::PROCESS_TGID).map(|pid| ProcEvent::Exec { pid })
            }
            what::EXIT => process(ev::PROCESS_PID, ev::PROCESS_TGID).map(|pid| {
                let exit_code = at(ev::EXIT_CODE);
                ProcEvent::Exit {
                    pid,
                    exit_code,
                    at_ns,
                }
            }),
            _ => return Ok(Message::Skipped(Skip::OtherKind)),
        };
        Ok(event.map_or(Message::Skipped(Skip::Thread), Message::Event))
    }
}

/// The request that subscribes (`Listen`) or unsubscribes (`Ignore`) the socket bound to
/// netlink port `port`. `ack` is echoed (+ 1) in the kernel's acknowledgement, which is
/// multicast to every listener: a value unique to this socket (its port) tells ours apart.
pub(crate) fn subscription_request(op: McastOp, port: u32, ack: u32) -> [u8; REQUEST_LEN] {
    let mut bytes = [0u8; REQUEST_LEN];
    let (netlink, rest) = bytes.split_at_mut(16);
    let (connector, data) = rest.split_at_mut(cn::HEADER_LEN);
    netlink[0..4].copy_from_slice(&(REQUEST_LEN as u32).to_ne_bytes());
    netlink[4..6].copy_from_slice(&NLMSG_DONE.to_ne_bytes());
    // flags (6..8) and seq (8..12) zero: the connector ignores them.
    netlink[12..16].copy_from_slice(&port.to_ne_bytes());
    connector[cn::IDX].copy_from_slice(&CN_IDX_PROC.to_ne_bytes());
    connector[cn::VAL].copy_from_slice(&CN_VAL_PROC.to_ne_bytes());
    connector[cn::ACK].copy_from_slice(&ack.to_ne_bytes());
    connector[cn::LEN].copy_from_slice(&4u16.to_ne_bytes());
    data.copy_from_slice(&(op as u32).to_ne_bytes());
    bytes
}

fn align4(n: usize) -> usize {
    n.saturating_add(3) & !3
}

/// Callers have checked that `field` is within `bytes`.
fn u32_at(bytes: &[u8], field: std::ops::Range<usize>) -> u32 {
    bytes
        .get(field)
        .and_then(|b| b.try_into().ok())
        .map_or(0, u32::from_ne_bytes)
}

fn u16_at(bytes: &[u8], field: std::ops::Range<usize>) -> u16 {
    bytes
        .get(field)
        .and_then(|b| b.try_into().ok())
        .map_or(0, u16::from_ne_bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscription_request_is_laid_out_as_the_kernel_reads_it() {
        let bytes = subscription_request(McastOp::Listen, 0x1234, 0x1234);
        assert_eq!(bytes.len(), 40);
        let netlink = NetlinkBuffer::new_checked(&bytes[..]).unwrap();
        assert_eq!(netlink.length(), 40);
        assert_eq!(netlink.message_type(), NLMSG_DONE);
        assert_eq!(netlink.port_number(), 0x1234);
        let cn = ConnectorMessage::new_checked(netlink.payload()).unwrap();
        assert_eq!((cn.idx(), cn.val(), cn.ack()), (1, 1, 0x1234));
        assert_eq!(&bytes[24..28], &[0; 4], "cn_msg.seq");
        assert_eq!(cn.data(), &1u32.to_ne_bytes());
        let ignore = subscription_request(McastOp::Ignore, 7, 7);
        assert_eq!(&ignore[36..40], &2u32.to_ne_bytes());
    }

    #[test]
    fn the_kernels_acknowledgement_is_an_ack_not_an_event() {
        let mut event = [0u8; 40];
        event[16..20].copy_from_slice(&22u32.to_ne_bytes());
        let message = ProcEventBytes::new_checked(&event)
            .unwrap()
            .read(9)
            .unwrap();
        assert_eq!(message, Message::Ack { ack: 9, err: 22 });
    }

    #[test]
    fn unknown_kinds_and_threads_are_skipped_not_errors() {
        let mut event = [0u8; 40];
        event[0..4].copy_from_slice(&0x200u32.to_ne_bytes()); // PROC_EVENT_COMM
        let read = |e: &[u8]| ProcEventBytes::new_checked(e).unwrap().read(0).unwrap();
        assert_eq!(read(&event), Message::Skipped(Skip::OtherKind));
        event[0..4].copy_from_slice(&what::EXIT.to_ne_bytes());
        event[16..20].copy_from_slice(&101u32.to_ne_bytes()); // pid: a thread
        event[20..24].copy_from_slice(&100u32.to_ne_bytes()); // tgid
        assert_eq!(read(&event), Message::Skipped(Skip::Thread));
    }
}
