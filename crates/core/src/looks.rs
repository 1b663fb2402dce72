//! When the process watcher looks at a new process's fds: the policy, with time as a
//! parameter (the daemon's watcher does the looking).
//!
//! A process that lives 5 ms must be looked at while it lives, and most sockets are opened
//! right after `exec`: every [`YOUNG_EVERY`] for its first [`YOUNG_FOR`], then after 1, 2,
//! 4 … ms for [`LATER_ROUNDS`] more looks, then never again (refresh passes take over).
//!
//! Invariants: each process is scheduled at most once (a new `exec` restarts its rounds);
//! at most `capacity` processes are scheduled, a newcomer displacing the one due first;
//! [`LookSchedule::take_due`] hands out each due process once, and it is scheduled again
//! only by [`LookSchedule::looked`].

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

/// Looks at a young process this often…
pub const YOUNG_EVERY: Duration = Duration::from_micros(250);
/// …for this long, then with doubling delays from 1 ms, [`LATER_ROUNDS`] more times.
pub const YOUNG_FOR: Duration = Duration::from_millis(10);
pub const LATER_ROUNDS: u32 = 8;

/// See the module documentation.
#[derive(Debug)]
pub struct LookSchedule {
    /// (when, pid) of every scheduled look.
    due: BTreeSet<(Instant, u32)>,
    rounds: HashMap<u32, Rounds>,
    capacity: usize,
}

#[derive(Debug, Clone, Copy)]
struct Rounds {
    since: Instant,
    later_round: u32,
    /// When its look is scheduled; `None` while handed out by `take_due`.
    at: Option<Instant>,
}

impl LookSchedule {
    /// A schedule of at most `capacity` processes (at least 1).
    pub fn new(capacity: usize) -> LookSchedule {
        LookSchedule {
            due: BTreeSet::new(),
            rounds: HashMap::new(),
            capacity: capacity.max(1),
        }
    }

    /// Starts (or, after a new `exec`, restarts) the rounds of `pid` with a look now.
    /// Returns the process dropped to make room, if any.
    pub fn start(&mut self, pid: u32, now: Instant) -> Option<u32> {
        self.forget(pid);
        let dropped = (self.rounds.len() >= self.capacity)
            .then(|| self.due.pop_first())
            .flatten()
            .map(|(_, oldest)| {
                self.rounds.remove(&oldest);
                oldest
            });
        self.rounds.insert(
            pid,
            Rounds {
                since: now,
                later_round: 0,
                at: Some(now),
            },
        );
        self.due.insert((now, pid));
        dropped
    }

    /// How long until the next look is due, at most `max`.
    pub fn wait(&self, now: Instant, max: Duration) -> Duration {
        self.due
            .first()
            .map_or(max, |(at, _)| at.saturating_duration_since(now))
            .min(max)
    }

    /// The processes whose look is due at `now`, earliest first; each is scheduled again
    /// only by [`LookSchedule::looked`].
    pub fn take_due(&mut self, now: Instant) -> Vec<u32> {
        let mut due = Vec::new();
        while let Some(&(at, pid)) = self.due.first() {
            if at > now {
                break;
            }
            self.due.pop_first();
            if let Some(r) = self.rounds.get_mut(&pid) {
                r.at = None;
            }
            due.push(pid);
        }
        due
    }

    /// After a look at `pid` at `now`: schedules its next look and returns true, or, when its
    /// rounds are over (or it is not scheduled), forgets it and returns false.
    pub fn looked(&mut self, pid: u32, now: Instant) -> bool {
        let Some(r) = self.rounds.get_mut(&pid) else {
            return false;
        };
        let next = if now.saturating_duration_since(r.since) < YOUNG_FOR {
            Some(now + YOUNG_EVERY)
        } else {
            r.later_round += 1;
            (r.later_round <= LATER_ROUNDS)
                .then(|| now + Duration::from_millis(1 << (r.later_round - 1)))
        };
        match next {
            Some(at) => {
                if let Some(old) = r.at.replace(at) {
                    self.due.remove(&(old, pid));
                }
                self.due.insert((at, pid));
                true
            }
            None => {
                self.forget(pid);
                false
            }
        }
    }

    /// Stops looking at `pid` (it exited, or cannot be read).
    pub fn forget(&mut self, pid: u32) {
        if let Some(Rounds { at: Some(at), .. }) = self.rounds.remove(&pid) {
            self.due.remove(&(at, pid));
        }
    }

    /// Processes scheduled (or handed out and not yet looked at).
    pub fn len(&self) -> usize {
        self.rounds.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rounds.is_empty()
    }
}

#[cfg(test)]
// Tests pick their starting instant from the clock; the code under test never reads it.
#[allow(clippy::disallowed_methods)]
mod tests {
    use super::*;

    fn ms(t0: Instant, ms: f64) -> Instant {
        t0 + Duration::from_secs_f64(ms / 1000.0)
    }

    /// The look times of one process that is looked at exactly when due.
    fn look_times(t0: Instant) -> Vec<Duration> {
        let mut s = LookSchedule::new(4);
        s.start(1, t0);
        let mut times = Vec::new();
        let mut now = t0;
        for _ in 0..1000 {
            assert_eq!(s.take_due(now), [1]);
            times.push(now - t0);
            if !s.looked(1, now) {
                return times;
            }
            now += s.wait(now, Duration::from_secs(1));
        }
        panic!("the rounds never ended")
    }

    #[test]
    fn a_young_process_is_looked_at_every_250_us_then_less_and_less_then_never() {
        let t0 = Instant::now();
        let times = look_times(t0);
        let young = times.iter().filter(|t| **t < YOUNG_FOR).count();
        assert_eq!(
            young as u32,
            (YOUNG_FOR.as_micros() / YOUNG_EVERY.as_micros()) as u32
        );
        let later: Vec<Duration> = times.windows(2).map(|w| w[1] - w[0]).skip(young).collect();
        let expected: Vec<Duration> = (0..LATER_ROUNDS)
            .map(|r| Duration::from_millis(1 << r))
            .collect();
        assert_eq!(later, expected);
        assert!(times.last().unwrap() < &Duration::from_millis(300));
    }

    #[test]
    fn only_due_looks_are_handed_out_each_once() {
        let t0 = Instant::now();
        let mut s = LookSchedule::new(8);
        s.start(1, t0);
        s.start(2, ms(t0, 1.0));
        assert_eq!(s.take_due(t0), [1]);
        assert!(s.take_due(t0).is_empty(), "handed out once");
        assert_eq!(s.wait(t0, Duration::from_secs(1)), Duration::from_millis(1));
        assert_eq!(s.take_due(ms(t0, 5.0)), [2]);
        assert_eq!(s.len(), 2, "both still scheduled or out for a look");
    }

    #[test]
    fn a_new_exec_restarts_the_rounds_and_an_exit_forgets() {
        let t0 = Instant::now();
        let mut s = LookSchedule::new(8);
        s.start(1, t0);
        assert_eq!(s.take_due(t0), [1]);
        assert!(s.looked(1, ms(t0, 50.0)), "a later round");
        s.start(1, ms(t0, 60.0));
        assert_eq!(s.take_due(ms(t0, 60.0)), [1], "looked at at once, once");
        s.forget(1);
        assert!(s.is_empty());
        assert!(s.take_due(ms(t0, 1000.0)).is_empty());
        assert!(!s.looked(1, ms(t0, 1000.0)));
    }

    #[test]
    fn a_newcomer_displaces_the_process_due_first() {
        let t0 = Instant::now();
        let mut s = LookSchedule::new(2);
        assert_eq!(s.start(1, t0), None);
        assert_eq!(s.start(2, ms(t0, 1.0)), None);
        assert_eq!(s.start(3, ms(t0, 2.0)), Some(1));
        assert_eq!(s.len(), 2);
        assert_eq!(s.take_due(ms(t0, 2.0)), [2, 3]);
    }
}
