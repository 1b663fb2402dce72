//! Which threads' route lookups the socket tracer traces: the policy, with time as a
//! parameter (the daemon's tracer applies the set to the kernel).
//!
//! A thread whose connected socket closed before the tracer could read it (a resolver's
//! query socket on loopback) has its route lookups traced for [`ROUTES_FOR`], renewed by
//! every further miss; each traced thread costs one kernel event per route lookup, so the set
//! is bounded and the thread whose time ends first makes room for a newcomer.
//!
//! Invariants: a thread is in the set at most once; never more than the bound; a thread
//! leaves when its time is over ([`RouteThreads::expire`]) or to make room.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// How long a thread's route lookups stay traced after one of its connected sockets closed
/// before it was read.
pub const ROUTES_FOR: Duration = Duration::from_secs(30);

/// See the module documentation.
#[derive(Debug, Default)]
pub struct RouteThreads {
    until: HashMap<u32, Instant>,
}

impl RouteThreads {
    /// Thread `tid` missed a connect at `now`: traced until `now` + [`ROUTES_FOR`] (renewed
    /// if it already was), within at most `max` threads. True when the set of threads
    /// changed (it was not traced), so the kernel's filter must be updated.
    pub fn missed(&mut self, tid: u32, now: Instant, max: usize) -> bool {
        if self.until.insert(tid, now + ROUTES_FOR).is_some() {
            return false;
        }
        if self.until.len() > max.max(1) {
            let first = self.until.iter().min_by_key(|(_, &t)| t).map(|(&t, _)| t);
            if let Some(first) = first {
                self.until.remove(&first);
            }
        }
        true
    }

    /// Forgets the threads whose time is over at `now`; true when some left.
    pub fn expire(&mut self, now: Instant) -> bool {
        let before = self.until.len();
        self.until.retain(|_, until| now < *until);
        self.until.len() != before
    }

    /// The traced threads, in ascending order.
    pub fn tids(&self) -> Vec<u32> {
        let mut tids: Vec<u32> = self.until.keys().copied().collect();
        tids.sort_unstable();
        tids
    }

    /// Traces none (after the kernel refused the set).
    pub fn clear(&mut self) {
        self.until.clear();
    }

    pub fn len(&self) -> usize {
        self.until.len()
    }

    pub fn is_empty(&self) -> bool {
        self.until.is_empty()
    }
}

#[cfg(test)]
// Tests pick their starting instant from the clock; the code under test never reads it.
#[allow(clippy::disallowed_methods)]
mod tests {
    use super::*;

    #[test]
    fn a_miss_traces_a_thread_for_its_window_and_another_miss_renews_it() {
        let t0 = Instant::now();
        let mut r = RouteThreads::default();
        assert!(r.missed(7, t0, 8), "a new thread changes the set");
        assert!(!r.missed(7, t0 + ROUTES_FOR / 2, 8), "a renewal does not");
        assert!(!r.expire(t0 + ROUTES_FOR), "renewed: still traced");
        assert_eq!(r.tids(), [7]);
        assert!(r.expire(t0 + ROUTES_FOR / 2 + ROUTES_FOR));
        assert!(r.is_empty());
    }

    #[test]
    fn at_the_bound_the_thread_whose_time_ends_first_makes_room() {
        let t0 = Instant::now();
        let mut r = RouteThreads::default();
        for (i, tid) in [30, 10, 20].into_iter().enumerate() {
            r.missed(tid, t0 + Duration::from_secs(i as u64), 3);
        }
        assert!(r.missed(40, t0 + Duration::from_secs(5), 3));
        assert_eq!(r.tids(), [10, 20, 40], "30, due first, made room");
        assert_eq!(r.len(), 3);
        r.clear();
        assert!(r.is_empty());
    }
}
