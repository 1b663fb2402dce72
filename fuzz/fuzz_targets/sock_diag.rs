//! sock_diag replies: a received netlink datagram read as the answer to a request.
//!
//! Input: byte 0 is the request's sequence number, the rest the datagram. Besides never
//! panicking, a malformed message ends the datagram: an error is the last item.

use pidcap_sockets::SockDiag;

fn main() {
    afl::fuzz!(|data: &[u8]| {
        let Some((&seq, datagram)) = data.split_first() else {
            return;
        };
        let replies = SockDiag::parse_reply(datagram, u32::from(seq));
        if let Some(at) = replies.iter().position(Result::is_err) {
            assert_eq!(at + 1, replies.len(), "items after a malformed message");
        }
    });
}
