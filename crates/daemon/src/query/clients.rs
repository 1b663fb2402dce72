//! The query server's bounds: how many clients, for how long, and what is counted at each.
//!
//! Invariants:
//! - At most [`Clients::limit`] connections are served at once, and at most
//!   [`Clients::per_user`] of them belong to one uid outside the socket group (root and group
//!   members share only the global limit). One more fd is used for a moment to tell a
//!   refused client why; no other fd is ever held for a client.
//! - The global limit leaves [`FD_RESERVE`] descriptors under `RLIMIT_NOFILE` (beyond those
//!   open when the server starts) for capture, refresh, the watcher and the tracer, so no
//!   number of clients can starve them.
//! - The per-uid table holds one entry per uid with a connection: at most `limit` entries.
//! - Counters only grow; nothing here blocks or does I/O except [`fd_budget`] at start.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pidcap_proto as proto;

use crate::query::access::Viewer;

/// File descriptors kept free for the rest of the daemon: the tracer's per-thread route
/// counters (at most [`pidcap_sockets::trace::ROUTE_COUNTERS`]) plus headroom for refresh
/// (sock_diag sockets, `/proc` directories), the watcher's momentary socket duplicates and
/// CPUs brought online later.
pub const FD_RESERVE: u64 = pidcap_sockets::trace::ROUTE_COUNTERS as u64 + 128;

/// The longest a request line may take from its first byte to its newline (never longer than
/// the idle timeout): a half-sent line is not held forever.
pub const LINE_TIMEOUT: Duration = Duration::from_secs(10);

/// The shortest pause after a failed `accept`, doubled per consecutive failure…
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(10);
/// …up to this.
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);
/// At most one `accept failed` log line per this period; the others are counted.
pub const ACCEPT_LOG_EVERY: Duration = Duration::from_secs(10);

/// How many clients the fd limit leaves room for: `soft_limit - open - FD_RESERVE - 1` (the
/// one being the momentary fd of a refused client), at most `max_clients`.
pub fn fd_budget(max_clients: usize, soft_limit: u64, open: u64) -> usize {
    let spare = soft_limit
        .saturating_sub(open)
        .saturating_sub(FD_RESERVE)
        .saturating_sub(1);
    usize::try_from(spare)
        .unwrap_or(usize::MAX)
        .min(max_clients)
}

/// This process's soft `RLIMIT_NOFILE` and the number of fds open now.
pub fn fd_usage() -> std::io::Result<(u64, u64)> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid, writable rlimit for the duration of the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let open = std::fs::read_dir("/proc/self/fd")?.count() as u64;
    Ok((limit.rlim_cur, open))
}

/// Why a client was turned away.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("too many clients: the server serves {limit} at once; try again later")]
    Server { limit: usize },
    #[error(
        "too many clients for uid {uid}: {limit} at once per user outside the socket group; \
         close some, or try again later"
    )]
    User { uid: u32, limit: usize },
}

/// Who holds the slots.
#[derive(Debug, Default)]
struct Held {
    total: usize,
    by_uid: HashMap<u32, usize>,
}

/// The client slots and the counters of what happened at the bounds.
#[derive(Debug)]
pub struct Clients {
    limit: usize,
    per_user: usize,
    held: Mutex<Held>,
    refused: AtomicU64,
    timed_out: AtomicU64,
    too_long: AtomicU64,
    accept_errors: AtomicU64,
}

impl Clients {
    /// `limit` clients at once; one uid outside the group may hold a quarter of them (at
    /// least one).
    pub fn new(limit: usize) -> Arc<Clients> {
        Arc::new(Clients {
            limit,
            per_user: (limit / 4).max(1).min(limit),
            held: Mutex::new(Held::default()),
            refused: AtomicU64::new(0),
            timed_out: AtomicU64::new(0),
            too_long: AtomicU64::new(0),
            accept_errors: AtomicU64::new(0),
        })
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    pub fn per_user(&self) -> usize {
        self.per_user
    }

    fn held(&self) -> std::sync::MutexGuard<'_, Held> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes a slot for `viewer`, or says why not (and counts the refusal).
    pub fn admit(self: &Arc<Self>, viewer: Viewer) -> Result<Slot, Refusal> {
        let refusal = {
            let mut held = self.held();
            let own = viewer.filtered_to();
            let mine = own.map_or(0, |uid| held.by_uid.get(&uid).copied().unwrap_or(0));
            if held.total >= self.limit {
                Some(Refusal::Server { limit: self.limit })
            } else if let (Some(uid), true) = (own, mine >= self.per_user) {
                Some(Refusal::User {
                    uid,
                    limit: self.per_user,
                })
            } else {
                held.total += 1;
                if let Some(uid) = own {
                    *held.by_uid.entry(uid).or_insert(0) += 1;
                }
                None
            }
        };
        match refusal {
            Some(refusal) => {
                self.refused.fetch_add(1, Ordering::Relaxed);
                Err(refusal)
            }
            None => Ok(Slot {
                clients: self.clone(),
                uid: viewer.filtered_to(),
            }),
        }
    }

    fn release(&self, uid: Option<u32>) {
        let mut held = self.held();
        held.total = held.total.saturating_sub(1);
        if let Some(uid) = uid {
            if let Some(n) = held.by_uid.get_mut(&uid) {
                *n -= 1;
                if *n == 0 {
                    held.by_uid.remove(&uid);
                }
            }
        }
    }

    pub fn count_timeout(&self) {
        self.timed_out.fetch_add(1, Ordering::Relaxed);
    }

    pub fn count_too_long(&self) {
        self.too_long.fetch_add(1, Ordering::Relaxed);
    }

    pub fn count_accept_error(&self) {
        self.accept_errors.fetch_add(1, Ordering::Relaxed);
    }

    /// The counters as `stats` reports them.
    pub fn snapshot(&self) -> proto::QueryServer {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        proto::QueryServer {
            clients: self.held().total as u64,
            client_limit: self.limit as u64,
            client_limit_per_user: self.per_user as u64,
            clients_refused: load(&self.refused),
            clients_timed_out: load(&self.timed_out),
            lines_too_long: load(&self.too_long),
            accept_errors: load(&self.accept_errors),
        }
    }
}

/// One client's place; given back when dropped.
#[derive(Debug)]
pub struct Slot {
    clients: Arc<Clients>,
    uid: Option<u32>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.clients.release(self.uid);
    }
}

/// A log line at most every [`ACCEPT_LOG_EVERY`]; the events in between are counted and
/// reported with the next line. Time is a parameter.
#[derive(Debug, Default)]
pub struct LogLimit {
    last_logged: Option<Instant>,
    suppressed: u64,
}

impl LogLimit {
    /// Records an event at `now`. Returns `Some(n)` when this one should be logged, `n`
    /// being how many went unlogged since the last line.
    pub fn record(&mut self, now: Instant) -> Option<u64> {
        let due = self
            .last_logged
            .is_none_or(|at| now.saturating_duration_since(at) >= ACCEPT_LOG_EVERY);
        if !due {
            self.suppressed += 1;
            return None;
        }
        self.last_logged = Some(now);
        Some(std::mem::take(&mut self.suppressed))
    }
}

/// Failed `accept`s: a growing pause between tries, and a rate-limited log.
#[derive(Debug, Default)]
pub struct AcceptErrors {
    pub log: LogLimit,
    backoff: Duration,
}

impl AcceptErrors {
    /// The pause before the next `accept`: doubles per consecutive failure, within
    /// `ACCEPT_BACKOFF_MIN..=ACCEPT_BACKOFF_MAX`.
    pub fn backoff(&mut self) -> Duration {
        self.backoff = (self.backoff * 2).clamp(ACCEPT_BACKOFF_MIN, ACCEPT_BACKOFF_MAX);
        self.backoff
    }

    /// A successful `accept` ends the run of failures (the log limit stays).
    pub fn succeeded(&mut self) {
        self.backoff = Duration::ZERO;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALICE: Viewer = Viewer::Own { uid: 1000 };
    const BOB: Viewer = Viewer::Own { uid: 1001 };

    #[test]
    fn the_fd_reserve_always_remains() {
        assert_eq!(fd_budget(256, 65_536, 40), 256);
        assert_eq!(
            fd_budget(1000, 1024, 40),
            1024 - 40 - FD_RESERVE as usize - 1
        );
        assert_eq!(fd_budget(256, 512, 40), 0, "no room: every client refused");
    }

    #[test]
    fn the_server_limit_refuses_the_next_client_and_frees_on_drop() {
        let clients = Clients::new(2);
        let a = clients.admit(Viewer::Full).unwrap();
        let _b = clients.admit(Viewer::Full).unwrap();
        assert_eq!(
            clients.admit(Viewer::Full).unwrap_err(),
            Refusal::Server { limit: 2 }
        );
        drop(a);
        assert!(clients.admit(Viewer::Full).is_ok());
        let stats = clients.snapshot();
        assert_eq!((stats.clients, stats.clients_refused), (1, 1));
    }

    #[test]
    fn one_user_cannot_take_every_slot() {
        let clients = Clients::new(8);
        let alice: Vec<Slot> = (0..2).map(|_| clients.admit(ALICE).unwrap()).collect();
        assert_eq!(
            clients.admit(ALICE).unwrap_err(),
            Refusal::User {
                uid: 1000,
                limit: 2
            }
        );
        let _bob = clients.admit(BOB).unwrap();
        let _root: Vec<Slot> = (0..5)
            .map(|_| clients.admit(Viewer::Full).unwrap())
            .collect();
        assert_eq!(
            clients.admit(Viewer::Full).unwrap_err(),
            Refusal::Server { limit: 8 }
        );
        drop(alice);
        assert!(
            !clients.held().by_uid.contains_key(&1000),
            "entry forgotten"
        );
        assert_eq!(clients.snapshot().clients_refused, 2);
    }

    #[test]
    fn a_limit_of_one_still_admits_one_user() {
        let clients = Clients::new(1);
        assert_eq!(clients.per_user(), 1);
        assert!(clients.admit(ALICE).is_ok());
        assert_eq!(Clients::new(0).per_user(), 0);
    }

    #[test]
    fn accept_errors_are_logged_at_most_once_per_period() {
        let mut errors = LogLimit::default();
        let t0 = Instant::now();
        assert_eq!(errors.record(t0), Some(0));
        let ms = Duration::from_millis;
        let logged: Vec<Option<u64>> = (1..=199).map(|i| errors.record(t0 + ms(50 * i))).collect();
        assert!(
            logged.iter().all(Option::is_none),
            "20/s for ~10 s: none logged"
        );
        assert_eq!(errors.record(t0 + ACCEPT_LOG_EVERY), Some(199));
        assert_eq!(errors.record(t0 + ACCEPT_LOG_EVERY + ms(1)), None);
    }

    #[test]
    fn accept_backoff_grows_to_a_cap_and_resets_on_success() {
        let mut errors = AcceptErrors::default();
        let pauses: Vec<Duration> = (0..10).map(|_| errors.backoff()).collect();
        assert_eq!(pauses[0], ACCEPT_BACKOFF_MIN);
        assert_eq!(pauses[1], ACCEPT_BACKOFF_MIN * 2);
        assert_eq!(pauses[9], ACCEPT_BACKOFF_MAX);
        errors.succeeded();
        assert_eq!(errors.backoff(), ACCEPT_BACKOFF_MIN);
    }
}
