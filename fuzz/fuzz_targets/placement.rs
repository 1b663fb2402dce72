//! Container and namespace parsers: `/proc/<pid>/cgroup` (`cgroup_path`, then the unit
//! and the container the path names), another namespace's `fib_trie` and `if_inet6`, and the
//! connection tracker's answer about a translated (NAT) connection.
//!
//! Input: any bytes, given to each parser. Besides never panicking: a container's id and a
//! unit are always parts of the path they came from, every address parsed is listed once,
//! and a connection's two tuples have one protocol.

use pidcap_core::{cgroup_path, Placement};
use pidcap_sockets::{
    parse_conntrack_answer, parse_fib_trie_local, parse_if_inet6, ConntrackAnswer,
};

fn main() {
    afl::fuzz!(|data: &[u8]| {
        if let Some(path) = cgroup_path(&String::from_utf8_lossy(data)) {
            let placed = Placement {
                netns: None,
                cgroup: Some(path.clone()),
            };
            if let Some(unit) = placed.unit() {
                assert!(path.contains(unit), "{unit:?} not in {path:?}");
            }
            if let Some(c) = placed.container() {
                assert!(path.contains(c.id), "{c:?} not in {path:?}");
            }
        }
        let seq = data.get(8..12).map_or(0, |b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]));
        if let Ok(ConntrackAnswer::Found(t)) = parse_conntrack_answer(data, seq) {
            assert_eq!(t.orig.proto, t.reply.proto, "{t:?}");
        }
        let v4 = parse_fib_trie_local(data);
        let v6 = parse_if_inet6(data);
        for (i, a) in v4.iter().enumerate() {
            assert!(!v4[..i].contains(a), "{a} twice");
        }
        for (i, a) in v6.iter().enumerate() {
            assert!(!v6[..i].contains(a), "{a} twice");
        }
    });
}
