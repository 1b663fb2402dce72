//! Address translation (NAT): a connection the kernel's connection tracker rewrote appears on
//! the wire in up to four forms, and each of its two ends sees it in its own form.
//!
//! The tracker keeps two tuples per connection: `orig`, the packets of its initiator as the
//! initiator sent them, and `reply`, the packets of its responder as the responder sends
//! them. Without translation `reply` is `orig` reversed. With it (a container's connection
//! leaving through MASQUERADE, a published port forwarded by DNAT), the wire carries:
//!
//! | form            | direction            | seen where (MASQUERADE example)      |
//! |-----------------|----------------------|--------------------------------------|
//! | `orig`          | initiator → responder | the container's veth, the bridge    |
//! | `reply` reversed | initiator → responder | the uplink, after translation      |
//! | `reply`         | responder → initiator | the uplink, before translation back |
//! | `orig` reversed | responder → initiator | the bridge, the container's veth    |
//!
//! A [`NatView`] says, for any of the four forms, which socket view each end has — the
//! initiator's socket is `orig.src` with peer `orig.dst`, the responder's is `reply.src` with
//! peer `reply.dst` — and one canonical flow per direction (`orig`, or `orig` reversed), so
//! the copies of one packet seen in two forms have one fingerprint.
//!
//! Invariants: only translated connections are kept (`reply` reversed ≠ `orig`); a form two
//! translations claim maps to neither (never a guess). Pure: no I/O, no clock.

use std::net::SocketAddr;

use foldhash::HashMap as FastMap;
use pidcap_wire::FlowKey;

/// One connection as the connection tracker knows it (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Translation {
    /// The initiator's packets, as it sent them.
    pub orig: FlowKey,
    /// The responder's packets, as it sends them.
    pub reply: FlowKey,
}

impl Translation {
    /// True when the tracker rewrote an address or port of this connection.
    pub fn is_translated(&self) -> bool {
        self.reply.reversed() != self.orig
    }
}

/// How a packet in one of a translation's forms is attributed (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NatView {
    /// The packet's flow as its initiator-side form (`orig` or `orig` reversed): the same for
    /// every copy of one packet, whichever form it was captured in.
    pub canonical: FlowKey,
    /// The sender's socket: (local, remote).
    pub tx: (SocketAddr, SocketAddr),
    /// The receiver's socket: (local, remote).
    pub rx: (SocketAddr, SocketAddr),
    /// The translation's four forms (a copy of the packet is in one of them).
    pub forms: [FlowKey; 4],
}

/// Which way a form goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Toward {
    Responder,
    Initiator,
}

/// The known translations, indexed by each of their forms.
#[derive(Debug, Default)]
pub struct NatMap {
    /// Form → (index in `entries`, direction), or `None` when two translations claim it.
    forms: FastMap<FlowKey, Option<(usize, Toward)>>,
    entries: Vec<Translation>,
}

impl NatMap {
    /// Indexes `translations` (each given once); untranslated ones are left out.
    pub fn new(translations: impl IntoIterator<Item = Translation>) -> NatMap {
        let mut entries: Vec<Translation> = Vec::new();
        let mut forms: FastMap<FlowKey, Option<(usize, Toward)>> = FastMap::default();
        for t in translations.into_iter().filter(Translation::is_translated) {
            let at = entries.len();
            entries.push(t);
            for (form, toward) in forms_of(&t) {
                forms
                    .entry(form)
                    .and_modify(|v| *v = None)
                    .or_insert(Some((at, toward)));
            }
        }
        NatMap { forms, entries }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The translations, in no particular order.
    pub fn translations(&self) -> &[Translation] {
        &self.entries
    }

    /// The view of `flow` when it is a form of exactly one known translation.
    pub fn view(&self, flow: &FlowKey) -> Option<NatView> {
        if self.forms.is_empty() {
            return None;
        }
        let (at, toward) = (*self.forms.get(flow)?)?;
        let t = self.entries[at];
        let initiator = (t.orig.src, t.orig.dst);
        let responder = (t.reply.src, t.reply.dst);
        let forms = [t.orig, t.reply.reversed(), t.reply, t.orig.reversed()];
        Some(match toward {
            Toward::Responder => NatView {
                canonical: t.orig,
                tx: initiator,
                rx: responder,
                forms,
            },
            Toward::Initiator => NatView {
                canonical: t.orig.reversed(),
                tx: responder,
                rx: initiator,
                forms,
            },
        })
    }
}

/// The four wire forms of `t` and which way each goes.
fn forms_of(t: &Translation) -> [(FlowKey, Toward); 4] {
    [
        (t.orig, Toward::Responder),
        (t.reply.reversed(), Toward::Responder),
        (t.reply, Toward::Initiator),
        (t.orig.reversed(), Toward::Initiator),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use pidcap_wire::IpProto;

    fn flow(src: &str, dst: &str) -> FlowKey {
        FlowKey {
            proto: IpProto::Tcp,
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
        }
    }

    /// A container 172.17.0.2 connects to 198.51.100.7:80; the host masquerades it as
    /// 192.0.2.1:61000.
    fn masquerade() -> Translation {
        Translation {
            orig: flow("172.17.0.2:40000", "198.51.100.7:80"),
            reply: flow("198.51.100.7:80", "192.0.2.1:61000"),
        }
    }

    #[test]
    fn every_form_gives_each_end_its_own_socket_view() {
        let map = NatMap::new([masquerade()]);
        let container = (
            "172.17.0.2:40000".parse().unwrap(),
            "198.51.100.7:80".parse().unwrap(),
        );
        let server = (
            "198.51.100.7:80".parse().unwrap(),
            "192.0.2.1:61000".parse().unwrap(),
        );
        let out = flow("172.17.0.2:40000", "198.51.100.7:80");
        let back = out.reversed();
        for f in [out, flow("192.0.2.1:61000", "198.51.100.7:80")] {
            let v = map.view(&f).unwrap();
            assert_eq!((v.canonical, v.tx, v.rx), (out, container, server), "{f:?}");
        }
        for f in [back, flow("198.51.100.7:80", "192.0.2.1:61000")] {
            let v = map.view(&f).unwrap();
            assert_eq!(
                (v.canonical, v.tx, v.rx),
                (back, server, container),
                "{f:?}"
            );
        }
        assert_eq!(map.view(&flow("192.0.2.1:61001", "198.51.100.7:80")), None);
    }

    #[test]
    fn untranslated_connections_are_not_kept() {
        let plain = Translation {
            orig: flow("10.0.0.1:1", "10.0.0.2:2"),
            reply: flow("10.0.0.2:2", "10.0.0.1:1"),
        };
        let map = NatMap::new([plain]);
        assert!(map.is_empty());
        assert_eq!(map.view(&plain.orig), None);
    }

    #[test]
    fn a_form_two_translations_claim_belongs_to_neither() {
        let a = masquerade();
        let b = Translation {
            orig: flow("172.17.0.3:40000", "198.51.100.7:80"),
            ..a
        };
        let map = NatMap::new([a, b]);
        let uplink = flow("192.0.2.1:61000", "198.51.100.7:80");
        assert_eq!(map.view(&uplink), None, "the uplink form is ambiguous");
        assert!(
            map.view(&a.orig).is_some(),
            "each container's own form is not"
        );
    }
}
