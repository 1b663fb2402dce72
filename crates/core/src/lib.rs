#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]

mod assembly;
mod attribute;
mod cache;
mod copies;
mod counters;
mod fragments;
mod ledger;
mod looks;
mod nat;
mod openings;
mod packet_sends;
mod pending;
mod placement;
mod process;
mod routes;
mod socket;
mod table;

pub use assembly::{Pass, Sighting, TableAssembly, BOUND_GRACE, CLOSE_GRACE};
pub use attribute::{attribute, attribute_current, attribute_in, Credit, UnknownReason, Verdict};
pub use cache::{AttributionCache, Lookup};
pub use copies::{CopyCheck, CopyFilter, CopyMark, CopyPacket, COPY_WINDOW_US};
pub use counters::{
    Counters, Direction, ProcessTally, Quality, QualityBytes, ReasonBytes, Tally, Totals,
};
pub use fragments::FragmentMap;
pub use ledger::{Ledger, LogBatch, LogRecord, ProcessMeta, ProcessUsage, Rate, Usage};
pub use looks::{LookSchedule, LATER_ROUNDS, YOUNG_EVERY, YOUNG_FOR};
pub use nat::{NatMap, NatView, Translation};
pub use openings::{
    Currency, Openings, Seen, KEPT_PER_TUPLE, OPENINGS_KEPT, OPENING_SLACK, SAME_OPENING,
};
pub use packet_sends::{PacketSend, PacketSends, SENDS_FOR, SENDS_KEPT, SEND_WINDOW};
pub use pending::{Arrival, Pending, PendingLevel};
pub use placement::{cgroup_path, container_of, Container, Placement, PodUid};
pub use process::{ProcessInfo, ProcessKey};
pub use routes::{RouteThreads, ROUTES_FOR};
pub use socket::{NetNsId, SocketEntry, TcpState};
pub use table::{
    canonical, canonical_ip, choose_owner, Captured, ClosedSocket, Forks, Life, LiveSockets,
    MatchKind, OwnerMap, RecentSockets, SocketMatch, SocketTable, TableParts, FORK_WINDOW,
    YOUNG_CONNECTION,
};
