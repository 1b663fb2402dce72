//! Address translations (NAT) learned from the kernel's connection tracker, for the table.
//!
//! Invariants:
//! - A translation is learned when a missed flow is one of its forms (asked by tuple, and
//!   by the tuple reversed: the tracker indexes the two directions as sent); at most
//!   [`ASK_PER_PASS`] questions per batch of misses; flows a known translation already covers
//!   are not asked about.
//! - Every known translation is asked about again every [`VERIFY_EVERY`]: one the tracker no
//!   longer has, or that now maps otherwise, is dropped, so a port the translation reuses for
//!   another connection is never credited through the old one. At most [`MAX_KNOWN`] are
//!   kept; when full, the one verified longest ago goes.
//! - Without CAP_NET_ADMIN or ctnetlink, asking is switched off after one warning:
//!   translated copies then stay `unknown`, as before.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pidcap_core::{NatMap, Translation};
use pidcap_sockets::{Conntrack, Error};
use pidcap_wire::FlowKey;
use tracing::{debug, warn};

/// How often a known translation is checked against the tracker.
pub const VERIFY_EVERY: Duration = Duration::from_secs(5);

/// Translations kept at once.
pub const MAX_KNOWN: usize = 65_536;

/// Questions asked for one batch of missed flows.
pub const ASK_PER_PASS: usize = 256;

/// Known translations and the tracker they come from.
#[derive(Debug, Default)]
pub struct NatBook {
    tracker: Option<Conntrack>,
    /// Asking failed for good (no permission, no ctnetlink).
    off: bool,
    /// By original tuple: the translation and when it was last verified.
    known: HashMap<FlowKey, (Translation, Instant)>,
    /// The map the last table got; rebuilt when `known` changes.
    map: Arc<NatMap>,
    changed: bool,
}

impl NatBook {
    pub fn new() -> NatBook {
        NatBook::default()
    }

    /// Asks the tracker about missed `flows`; true when a translation was learned.
    pub fn learn(&mut self, flows: &[FlowKey], now: Instant) -> bool {
        let mut learned = false;
        for flow in flows.iter().take(ASK_PER_PASS) {
            if self.map.view(flow).is_some() {
                continue;
            }
            for tuple in [*flow, flow.reversed()] {
                match self.ask(&tuple) {
                    Some(t) if t.is_translated() => {
                        learned |= self.keep(t, now);
                        break;
                    }
                    Some(_) => break, // tracked, not translated
                    None => {}
                }
            }
        }
        learned
    }

    /// Asks again about translations verified more than [`VERIFY_EVERY`] ago; true when one
    /// was dropped or changed.
    pub fn verify(&mut self, now: Instant) -> bool {
        let due: Vec<Translation> = self
            .known
            .values()
            .filter(|(_, at)| now.saturating_duration_since(*at) >= VERIFY_EVERY)
            .map(|(t, _)| *t)
            .collect();
        let mut changed = false;
        for old in due {
            match self.ask(&old.orig) {
                Some(now_is) if now_is == old => {
                    self.known.insert(old.orig, (old, now));
                }
                _ if self.off => return changed,
                Some(other) => {
                    self.known.remove(&old.orig);
                    changed = true;
                    if other.is_translated() {
                        self.keep(other, now);
                    }
                }
                None => {
                    self.known.remove(&old.orig);
                    changed = true;
                }
            }
        }
        self.changed |= changed;
        changed
    }

    /// The translations for the next table: the same `Arc` until something changed.
    pub fn map(&mut self) -> Arc<NatMap> {
        if self.changed {
            self.changed = false;
            self.map = Arc::new(NatMap::new(self.known.values().map(|(t, _)| *t)));
        }
        Arc::clone(&self.map)
    }

    /// Translations known.
    pub fn len(&self) -> usize {
        self.known.len()
    }

    pub fn is_empty(&self) -> bool {
        self.known.is_empty()
    }

    fn keep(&mut self, t: Translation, now: Instant) -> bool {
        if self.known.len() >= MAX_KNOWN && !self.known.contains_key(&t.orig) {
            let oldest = self
                .known
                .iter()
                .min_by_key(|(_, (_, at))| *at)
                .map(|(k, _)| *k);
            if let Some(oldest) = oldest {
                self.known.remove(&oldest);
            }
        }
        let before = self.known.insert(t.orig, (t, now));
        let new = before.is_none_or(|(b, _)| b != t);
        self.changed |= new;
        new
    }

    /// The tracker's connection for `tuple`; `None` when it has none or cannot be asked.
    fn ask(&mut self, tuple: &FlowKey) -> Option<Translation> {
        if self.off {
            return None;
        }
        if self.tracker.is_none() {
            match Conntrack::open() {
                Ok(t) => self.tracker = Some(t),
                Err(error) => return self.switch_off(&error),
            }
        }
        let tracker = self.tracker.as_mut()?;
        match tracker.find(tuple) {
            Ok(found) => found,
            Err(Error::Netlink { errno, .. })
                if matches!(
                    errno,
                    libc::EPERM | libc::EACCES | libc::EOPNOTSUPP | libc::EPROTONOSUPPORT
                ) =>
            {
                let error = Error::Netlink {
                    what: "conntrack get".into(),
                    errno,
                };
                self.switch_off(&error)
            }
            Err(error) => {
                debug!(error = %error, "connection tracker not asked this time");
                self.tracker = None; // reopened at the next question
                None
            }
        }
    }

    fn switch_off(&mut self, error: &Error) -> Option<Translation> {
        warn!(error = %error, "cannot ask the kernel's connection tracker: address-translated (NAT) copies of packets stay unknown (needs CAP_NET_ADMIN and ctnetlink; reported once)");
        self.off = true;
        self.tracker = None;
        None
    }
}
