//! Non-first IP fragments carry no transport header, so no ports: they are credited to the
//! flow of their first fragment, remembered here by (source, destination, protocol,
//! fragment id).
//!
//! Invariants: bounded to `capacity` datagrams; when full, the oldest half is forgotten
//! (a forgotten datagram's later fragments are counted as `unsupported`, never credited to
//! a wrong flow). Keys include both addresses and the protocol, as the IP id is only unique
//! per (source, destination, protocol). No allocation once the map reached its capacity.

use std::collections::VecDeque;
use std::net::IpAddr;

use foldhash::HashMap as FastMap;
use pidcap_wire::{FlowKey, IpProto, PacketMeta};

type DatagramKey = (IpAddr, IpAddr, IpProto, u32);

/// See the module documentation.
#[derive(Debug)]
pub struct FragmentMap {
    ports: FastMap<DatagramKey, (u16, u16)>,
    order: VecDeque<DatagramKey>,
    capacity: usize,
    /// Datagrams forgotten because the map was full, since start.
    forgotten: u64,
}

impl FragmentMap {
    pub fn new(capacity: usize) -> FragmentMap {
        FragmentMap {
            ports: FastMap::default(),
            order: VecDeque::with_capacity(capacity),
            capacity: capacity.max(2),
            forgotten: 0,
        }
    }

    /// Remembers a first fragment's ports, or gives a later fragment the ports of its first
    /// fragment (setting `ports_known`). Packets that are not fragments are left alone.
    pub fn resolve(&mut self, meta: &mut PacketMeta) {
        let Some(fragment) = meta.fragment else {
            return;
        };
        let key = (
            meta.flow.src.ip(),
            meta.flow.dst.ip(),
            meta.flow.proto,
            fragment.id,
        );
        if fragment.is_first() {
            if meta.ports_known {
                self.remember(key, (meta.flow.src.port(), meta.flow.dst.port()));
            }
        } else if let Some(&(sport, dport)) = self.ports.get(&key) {
            meta.flow = with_ports(meta.flow, sport, dport);
            meta.ports_known = true;
        }
    }

    fn remember(&mut self, key: DatagramKey, ports: (u16, u16)) {
        if self.ports.insert(key, ports).is_some() {
            return;
        }
        if self.order.len() == self.capacity {
            for _ in 0..self.capacity / 2 {
                if let Some(old) = self.order.pop_front() {
                    self.ports.remove(&old);
                    self.forgotten += 1;
                }
            }
        }
        self.order.push_back(key);
    }

    pub fn len(&self) -> usize {
        self.ports.len()
    }

    /// Datagrams forgotten because the map was full (their later fragments went to
    /// `unknown` as `unsupported`), since start.
    pub fn forgotten(&self) -> u64 {
        self.forgotten
    }

    pub fn is_empty(&self) -> bool {
        self.ports.is_empty()
    }
}

fn with_ports(flow: FlowKey, sport: u16, dport: u16) -> FlowKey {
    let mut flow = flow;
    flow.src.set_port(sport);
    flow.dst.set_port(dport);
    flow
}
