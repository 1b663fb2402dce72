//! sock_diag replies: one datagram holds one or more netlink messages, each a
//! `struct nlmsghdr` followed by a `struct inet_diag_msg` (and attributes, ignored),
//! `NLMSG_DONE` or `NLMSG_ERROR`.
//!
//! The headers are read through the zero-copy views of `netlink-packet-core` (`NetlinkBuffer`,
//! `ErrorBuffer`) and `netlink-packet-sock-diag` (`InetResponseHeader`); the attributes are
//! skipped, so reading a socket allocates nothing.
//!
//! Invariants: never panics, whatever the bytes; a malformed message ends the datagram with an
//! error (nothing after it is trusted); messages of another sequence number (left over from
//! an abandoned request) are skipped.

use std::net::SocketAddr;

use netlink_packet_core::{ErrorBuffer, NetlinkBuffer, Parseable, NLMSG_DONE, NLMSG_ERROR};
use netlink_packet_sock_diag::inet::InetResponseHeader;
use netlink_packet_sock_diag::SOCK_DIAG_BY_FAMILY;
use pidcap_core::{NetNsId, SocketEntry, TcpState};
use pidcap_wire::IpProto;

/// What every socket of one reply shares (the reply itself does not name the protocol).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Shape {
    pub(crate) proto: IpProto,
    pub(crate) netns: NetNsId,
}

/// One message of a reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Reply {
    Socket(SocketEntry),
    /// The end of a dump (or an acknowledgement).
    Done,
    /// The request failed; a positive errno.
    Failed(i32),
    /// `NLMSG_NOOP`, an unknown type, or a message of another request.
    Skipped,
}

/// The messages of one received datagram that answer request `seq`.
#[derive(Debug)]
pub(crate) struct Messages<'a> {
    rest: &'a [u8],
    seq: u32,
    shape: Shape,
}

impl<'a> Messages<'a> {
    pub(crate) fn new(datagram: &'a [u8], seq: u32, shape: Shape) -> Self {
        Messages {
            rest: datagram,
            seq,
            shape,
        }
    }
}

impl Iterator for Messages<'_> {
    /// The error is a human-readable reason.
    type Item = Result<Reply, String>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let message = match NetlinkBuffer::new_checked(self.rest) {
            Ok(message) => message,
            Err(e) => {
                self.rest = &[];
                return Some(Err(format!("bad netlink message: {e}")));
            }
        };
        // Messages are padded to 4 bytes; the last one's padding may be absent.
        let next = align4(message.length() as usize).min(self.rest.len());
        self.rest = &self.rest[next..];
        let reply = self.read(&message);
        if reply.is_err() {
            // Nothing after a malformed message is trusted.
            self.rest = &[];
        }
        Some(reply)
    }
}

impl Messages<'_> {
    fn read(&self, message: &NetlinkBuffer<&[u8]>) -> Result<Reply, String> {
        if message.sequence_number() != self.seq {
            return Ok(Reply::Skipped);
        }
        let payload = message.payload();
        match message.message_type() {
            SOCK_DIAG_BY_FAMILY => socket(payload, self.shape).map(Reply::Socket),
            NLMSG_DONE => Ok(done(payload)),
            NLMSG_ERROR => error(payload),
            _ => Ok(Reply::Skipped),
        }
    }
}

fn align4(n: usize) -> usize {
    n.saturating_add(3) & !3
}

/// `struct inet_diag_msg`: the socket's own end is always `id.src`, its peer `id.dst`
/// (all zero when it has none). `AF_INET6` sockets keep IPv4-mapped addresses.
fn socket(payload: &[u8], shape: Shape) -> Result<SocketEntry, String> {
    let header =
        InetResponseHeader::parse(payload).map_err(|e| format!("bad inet_diag_msg: {e}"))?;
    let id = &header.socket_id;
    Ok(SocketEntry {
        netns: shape.netns,
        proto: shape.proto,
        local: SocketAddr::new(id.source_address, id.source_port),
        remote: SocketAddr::new(id.destination_address, id.destination_port),
        state: TcpState::from(header.state),
        inode: u64::from(header.inode),
        uid: header.uid,
    })
}

/// `NLMSG_DONE` carries an `int`: 0, or a negative errno when the dump failed part-way. The
/// kernel may also send it empty.
fn done(payload: &[u8]) -> Reply {
    match payload.first_chunk::<4>().map(|b| i32::from_ne_bytes(*b)) {
        Some(code) if code < 0 => Reply::Failed(code.saturating_neg()),
        _ => Reply::Done,
    }
}

/// `NLMSG_ERROR` carries a negative errno (0 for an acknowledgement) and the request's header.
fn error(payload: &[u8]) -> Result<Reply, String> {
    let error = ErrorBuffer::new_checked(payload).map_err(|e| format!("bad NLMSG_ERROR: {e}"))?;
    Ok(match error.code() {
        None => Reply::Done,
        Some(code) => Reply::Failed(code.get().saturating_neg()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SHAPE: Shape = Shape {
        proto: IpProto::Tcp,
        netns: NetNsId(4026531840),
    };

    /// A dump datagram built field by field after `include/uapi/linux/inet_diag.h`: the
    /// accepted side of an IPv4 connection to a dual-stack `[::]:40000` listener, with one
    /// attribute, then `NLMSG_DONE`.
    #[rustfmt::skip]
    const DUAL_STACK_ACCEPTED_THEN_DONE: &[u8] = &[
        // struct nlmsghdr
        0x60, 0x00, 0x00, 0x00, // nlmsg_len = 96: 16 + 72 + one 8-byte attribute
        0x14, 0x00,             // nlmsg_type = SOCK_DIAG_BY_FAMILY
        0x02, 0x00,             // nlmsg_flags = NLM_F_MULTI
        0x05, 0x00, 0x00, 0x00, // nlmsg_seq = 5
        0x39, 0x30, 0x00, 0x00, // nlmsg_pid = 12345
        // struct inet_diag_msg
        0x0a,                   // idiag_family = AF_INET6
        0x01,                   // idiag_state = TCP_ESTABLISHED
        0x00,                   // idiag_timer
        0x00,                   // idiag_retrans
        0x9c, 0x40,             // idiag_sport = 40000, big endian
        0xd4, 0x31,             // idiag_dport = 54321, big endian
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 127, 0, 0, 1, // idiag_src = ::ffff:127.0.0.1
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 127, 0, 0, 1, // idiag_dst = ::ffff:127.0.0.1
        0x01, 0x00, 0x00, 0x00, // idiag_if = 1
        0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, // idiag_cookie
        0x00, 0x00, 0x00, 0x00, // idiag_expires
        0x00, 0x00, 0x00, 0x00, // idiag_rqueue
        0x00, 0x00, 0x00, 0x00, // idiag_wqueue
        0xe8, 0x03, 0x00, 0x00, // idiag_uid = 1000
        0x40, 0xe2, 0x01, 0x00, // idiag_inode = 123456
        // struct nlattr: nla_len = 5, nla_type = INET_DIAG_SHUTDOWN (8), u8 0, 3 bytes padding
        0x05, 0x00, 0x08, 0x00, 0x00, 0x00, 0x00, 0x00,
        // struct nlmsghdr
        0x14, 0x00, 0x00, 0x00, // nlmsg_len = 20
        0x03, 0x00,             // nlmsg_type = NLMSG_DONE
        0x02, 0x00,             // nlmsg_flags = NLM_F_MULTI
        0x05, 0x00, 0x00, 0x00, // nlmsg_seq = 5
        0x39, 0x30, 0x00, 0x00, // nlmsg_pid
        0x00, 0x00, 0x00, 0x00, // int: 0, the dump completed
    ];

    /// The answer to a lookup of a socket that does not exist.
    #[rustfmt::skip]
    const ENOENT: &[u8] = &[
        // struct nlmsghdr
        0x24, 0x00, 0x00, 0x00, // nlmsg_len = 36
        0x02, 0x00,             // nlmsg_type = NLMSG_ERROR
        0x00, 0x00,             // nlmsg_flags
        0x05, 0x00, 0x00, 0x00, // nlmsg_seq = 5
        0x39, 0x30, 0x00, 0x00, // nlmsg_pid
        // struct nlmsgerr
        0xfe, 0xff, 0xff, 0xff, // error = -ENOENT (-2)
        0x48, 0x00, 0x00, 0x00, 0x14, 0x00, 0x01, 0x00, // the request's nlmsghdr ...
        0x05, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    ];

    fn read(datagram: &[u8], seq: u32) -> Vec<Result<Reply, String>> {
        Messages::new(datagram, seq, SHAPE).collect()
    }

    #[test]
    fn socket_then_done_in_one_datagram() {
        let replies = read(DUAL_STACK_ACCEPTED_THEN_DONE, 5);
        let mapped = "::ffff:127.0.0.1".parse().unwrap();
        let expected = SocketEntry {
            netns: SHAPE.netns,
            proto: IpProto::Tcp,
            local: SocketAddr::new(mapped, 40000),
            remote: SocketAddr::new(mapped, 54321),
            state: TcpState::Established,
            inode: 123456,
            uid: 1000,
        };
        assert_eq!(replies, [Ok(Reply::Socket(expected)), Ok(Reply::Done)]);
    }

    #[test]
    fn messages_of_another_request_are_skipped() {
        let replies = read(DUAL_STACK_ACCEPTED_THEN_DONE, 4);
        assert_eq!(replies, [Ok(Reply::Skipped), Ok(Reply::Skipped)]);
    }

    #[test]
    fn nlmsg_error_is_a_positive_errno() {
        assert_eq!(read(ENOENT, 5), [Ok(Reply::Failed(libc::ENOENT))]);
    }

    #[test]
    fn done_with_a_negative_code_is_a_failure_and_empty_done_is_done() {
        assert_eq!(
            done(&(-libc::EINTR).to_ne_bytes()),
            Reply::Failed(libc::EINTR)
        );
        assert_eq!(done(&[]), Reply::Done);
    }

    #[test]
    fn truncated_message_is_an_error_not_a_panic() {
        let cut = &DUAL_STACK_ACCEPTED_THEN_DONE[..60];
        let replies = read(cut, 5);
        assert_eq!(replies.len(), 1);
        assert!(
            replies[0].as_ref().unwrap_err().contains("netlink"),
            "{replies:?}"
        );
    }

    #[test]
    fn short_inet_diag_msg_is_an_error() {
        let mut bytes = DUAL_STACK_ACCEPTED_THEN_DONE[..16 + 40].to_vec();
        bytes[0] = 56; // nlmsg_len: a header and 40 bytes of payload
        let replies = read(&bytes, 5);
        assert!(
            replies[0].as_ref().unwrap_err().contains("inet_diag_msg"),
            "{replies:?}"
        );
    }

    /// Found by the `sock_diag` fuzz target: a message with a bad `inet_diag_msg` (here an
    /// unknown address family) was reported as an error, but the messages after it were
    /// still read.
    #[test]
    fn a_malformed_message_ends_the_datagram() {
        let mut bytes = DUAL_STACK_ACCEPTED_THEN_DONE.to_vec();
        bytes[16] = 0x01; // idiag_family = AF_UNIX: not an inet_diag_msg
        let replies = read(&bytes, 5);
        assert_eq!(replies.len(), 1, "{replies:?}");
        assert!(replies[0].is_err(), "{replies:?}");
    }

    proptest! {
        #[test]
        fn arbitrary_datagrams_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            for reply in Messages::new(&bytes, 0, SHAPE) {
                let _ = reply;
            }
        }

        #[test]
        fn corrupted_fixture_never_panics(index in 0usize..116, value: u8) {
            let mut bytes = DUAL_STACK_ACCEPTED_THEN_DONE.to_vec();
            bytes[index] = value;
            for reply in Messages::new(&bytes, 5, SHAPE) {
                let _ = reply;
            }
        }
    }
}
