//! The processes the refresher was told hold sockets, to be told of their exit: shared by
//! the process watcher (which reads the exits) and the socket tracer (which also tells of
//! holders: the sockets it reads at `bind()`).
//!
//! Invariant: a holder is told exited at most once — whoever takes it from the set tells —
//! and only after its sockets were sent (it is noted after they are), so the refresher
//! never reads an exit before the sockets it ends.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use pidcap_core::ProcessKey;

/// Holders remembered at most (beyond, the set starts over: full fd scans alone correct
/// those holders).
pub const MAX_HOLDERS: usize = 65_536;

/// See the module doc. Cheap to clone (shared).
#[derive(Debug, Clone, Default)]
pub struct Holders {
    inner: Arc<Mutex<HashMap<u32, (ProcessKey, u32)>>>,
}

impl Holders {
    fn inner(&self) -> MutexGuard<'_, HashMap<u32, (ProcessKey, u32)>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `key` (with its uid) was told holding sockets: its exit is to be told.
    pub fn note(&self, key: ProcessKey, uid: u32) {
        let mut map = self.inner();
        if map.len() >= MAX_HOLDERS {
            map.clear();
        }
        map.insert(key.pid, (key, uid));
    }

    /// The holder `pid` names, taken out: the caller tells of its exit.
    pub fn take(&self, pid: u32) -> Option<(ProcessKey, u32)> {
        self.inner().remove(&pid)
    }

    pub fn contains(&self, pid: u32) -> bool {
        self.inner().contains_key(&pid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_holder_is_taken_once_and_memory_stays_bounded() {
        let holders = Holders::default();
        let key = |pid| ProcessKey { pid, start_time: 7 };
        holders.note(key(1), 1000);
        let other = holders.clone();
        assert!(other.contains(1));
        assert_eq!(other.take(1), Some((key(1), 1000)));
        assert_eq!(holders.take(1), None, "told once");
        for pid in 0..MAX_HOLDERS as u32 + 1 {
            holders.note(key(pid), 0);
        }
        assert!(holders.inner().len() <= MAX_HOLDERS);
    }
}
