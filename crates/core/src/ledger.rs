//! The ledger: per-process counters since start, what the usage log has written, rates, and
//! retention of exited processes.
//!
//! Invariants: counters only grow. The usage log is written in two phases
//! ([`Ledger::log_batch`] then [`Ledger::commit_log`]); until a batch is committed the
//! ledger keeps reporting its bytes as unlogged, so a failed write loses nothing and the next
//! successful write covers the whole gap. An exited process is forgotten only once everything
//! it did is logged and the retention period has passed. Time is always a parameter.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::counters::{Counters, QualityBytes, Tally, Totals};
use crate::table::SocketTable;
use crate::{Placement, ProcessKey};

/// The facts about a process that the log and queries show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessMeta {
    pub comm: String,
    pub exe: Option<String>,
    pub uid: u32,
    /// Its network namespace and control group (empty when not known).
    pub placement: Placement,
}

/// Bytes per second over the last sampling period.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Rate {
    pub rx_bps: f64,
    pub tx_bps: f64,
    sampled: Counters,
}

impl Rate {
    fn sample(&mut self, total: &Counters, elapsed: Duration) {
        let secs = elapsed.as_secs_f64();
        if secs > 0.0 {
            let delta = total.since(&self.sampled);
            self.rx_bps = delta.rx_bytes as f64 / secs;
            self.tx_bps = delta.tx_bytes as f64 / secs;
        }
        self.sampled = *total;
    }
}

/// Counters of one bucket (a process or `unknown`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Usage {
    /// Since the bucket was first seen.
    pub total: Counters,
    /// The totals the usage log has written so far.
    pub logged: Counters,
    pub rate: Rate,
}

impl Usage {
    /// What the next log line will report for this bucket.
    pub fn unlogged(&self) -> Counters {
        self.total.since(&self.logged)
    }
}

/// One process's entry.
#[derive(Debug, Clone, PartialEq)]
pub struct ProcessUsage {
    pub key: ProcessKey,
    pub meta: ProcessMeta,
    pub usage: Usage,
    /// Bytes credited per match quality, since first seen.
    pub quality: QualityBytes,
    /// When the process was seen to have exited; `None` while alive.
    pub exited_at: Option<Instant>,
}

impl ProcessUsage {
    pub fn alive(&self) -> bool {
        self.exited_at.is_none()
    }
}

/// One line of the usage log, before serialisation. `key` is `None` for `unknown`.
#[derive(Debug, Clone, PartialEq)]
pub struct LogRecord {
    pub key: Option<ProcessKey>,
    pub meta: Option<ProcessMeta>,
    pub interval: Counters,
    pub total: Counters,
    pub exited: bool,
}

/// What one usage-log write covers.
#[derive(Debug, Clone, PartialEq)]
pub struct LogBatch {
    /// Time since the last successful write (or since start).
    pub interval: Duration,
    pub records: Vec<LogRecord>,
}

/// See the module documentation.
#[derive(Debug)]
pub struct Ledger {
    processes: HashMap<ProcessKey, ProcessUsage>,
    unknown: Usage,
    totals: Totals,
    started: Instant,
    last_logged_at: Instant,
    last_sampled_at: Instant,
    folded: u64,
}

impl Ledger {
    pub fn new(now: Instant) -> Ledger {
        Ledger {
            processes: HashMap::new(),
            unknown: Usage::default(),
            totals: Totals::default(),
            started: now,
            last_logged_at: now,
            last_sampled_at: now,
            folded: 0,
        }
    }

    /// Moves a batch's counts into the ledger and clears the tally. Facts about newly seen
    /// processes come from `table` (the table their packets were attributed with).
    pub fn merge(&mut self, tally: &mut Tally, table: &SocketTable) {
        tally.flush();
        for (key, counts) in tally.processes.drain() {
            let entry = self
                .processes
                .entry(key)
                .or_insert_with(|| new_entry(key, table));
            entry.usage.total.absorb(&counts.counters);
            entry.quality.absorb(&counts.quality);
        }
        let unknown = tally.totals.unknown;
        self.unknown.total.absorb(&unknown);
        self.totals.absorb(&tally.totals);
        tally.clear();
    }

    pub fn totals(&self) -> &Totals {
        &self.totals
    }

    pub fn unknown(&self) -> &Usage {
        &self.unknown
    }

    pub fn processes(&self) -> impl Iterator<Item = &ProcessUsage> {
        self.processes.values()
    }

    pub fn process(&self, key: &ProcessKey) -> Option<&ProcessUsage> {
        self.processes.get(key)
    }

    /// The entry for `pid`, preferring a live process over exited ones with the same pid.
    pub fn find_pid(&self, pid: u32) -> Option<&ProcessUsage> {
        self.processes
            .values()
            .filter(|p| p.key.pid == pid)
            .max_by_key(|p| (p.alive(), p.key.start_time))
    }

    pub fn uptime(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.started)
    }

    /// Recomputes every bucket's rate over the time since the previous call.
    pub fn sample_rates(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last_sampled_at);
        for p in self.processes.values_mut() {
            let total = p.usage.total;
            p.usage.rate.sample(&total, elapsed);
        }
        let total = self.unknown.total;
        self.unknown.rate.sample(&total, elapsed);
        self.last_sampled_at = now;
    }

    /// Keys of processes not yet known to have exited.
    pub fn live_keys(&self) -> Vec<ProcessKey> {
        self.processes
            .values()
            .filter(|p| p.alive())
            .map(|p| p.key)
            .collect()
    }

    /// Records that a process exited (idempotent).
    pub fn mark_exited(&mut self, key: &ProcessKey, now: Instant) {
        if let Some(p) = self.processes.get_mut(key) {
            p.exited_at.get_or_insert(now);
        }
    }

    /// The records the usage log should write now: every process with unlogged traffic,
    /// and always one for `unknown`. Nothing changes until [`Ledger::commit_log`].
    pub fn log_batch(&self, now: Instant) -> LogBatch {
        let mut records: Vec<LogRecord> = self
            .processes
            .values()
            .filter(|p| !p.usage.unlogged().is_zero())
            .map(|p| LogRecord {
                key: Some(p.key),
                meta: Some(p.meta.clone()),
                interval: p.usage.unlogged(),
                total: p.usage.total,
                exited: !p.alive(),
            })
            .collect();
        records.sort_by_key(|r| r.key);
        records.push(LogRecord {
            key: None,
            meta: None,
            interval: self.unknown.unlogged(),
            total: self.unknown.total,
            exited: false,
        });
        LogBatch {
            interval: now.saturating_duration_since(self.last_logged_at),
            records,
        }
    }

    /// Marks a batch as written: its totals become the logged baseline.
    pub fn commit_log(&mut self, batch: &LogBatch, now: Instant) {
        for record in &batch.records {
            match record.key {
                Some(key) => {
                    if let Some(p) = self.processes.get_mut(&key) {
                        p.usage.logged = record.total;
                    }
                }
                None => self.unknown.logged = record.total,
            }
        }
        self.last_logged_at = now;
    }

    /// Continues a process's counters from a checkpoint of an earlier run of the daemon:
    /// `total` becomes both its total and what the log has written, so the next log line
    /// reports only what comes after it and its `*_total` fields go on from `total`. A key the
    /// ledger already counts keeps the larger of the two (a restore never lowers a total).
    pub fn restore(&mut self, key: ProcessKey, meta: ProcessMeta, total: Counters) {
        let entry = self.processes.entry(key).or_insert_with(|| ProcessUsage {
            key,
            meta,
            usage: Usage::default(),
            quality: QualityBytes::default(),
            exited_at: None,
        });
        restore_usage(&mut entry.usage, total);
    }

    /// [`Ledger::restore`] for the `unknown` bucket.
    pub fn restore_unknown(&mut self, total: Counters) {
        restore_usage(&mut self.unknown, total);
    }

    /// Live processes and `unknown` as the usage log has written them: what a checkpoint
    /// keeps so that a restarted daemon continues their totals. Exited processes are left
    /// out: their lines are final.
    pub fn logged_live(&self) -> (Vec<(ProcessKey, ProcessMeta, Counters)>, Counters) {
        let mut live: Vec<_> = self
            .processes
            .values()
            .filter(|p| p.alive() && !p.usage.logged.is_zero())
            .map(|p| (p.key, p.meta.clone(), p.usage.logged))
            .collect();
        live.sort_by_key(|(key, _, _)| *key);
        (live, self.unknown.logged)
    }

    /// Keeps at most `max` exited processes: while the usage log cannot be written nothing
    /// exited can be forgotten, so a full disk and a stream of short-lived processes would
    /// grow the ledger without bound. Beyond `max`, the processes that exited first are
    /// folded into `unknown` (their unlogged bytes stay counted, their names are lost).
    /// Returns how many were folded; [`Ledger::folded`] counts them all.
    pub fn bound_exited(&mut self, max: usize) -> usize {
        let mut exited: Vec<(Instant, ProcessKey)> = self
            .processes
            .values()
            .filter_map(|p| Some((p.exited_at?, p.key)))
            .collect();
        if exited.len() <= max {
            return 0;
        }
        exited.sort_unstable();
        let fold = exited.len() - max;
        for (_, key) in &exited[..fold] {
            if let Some(p) = self.processes.remove(key) {
                self.unknown.total.absorb(&p.usage.unlogged());
            }
        }
        self.folded += fold as u64;
        fold
    }

    /// Exited processes folded into `unknown` by [`Ledger::bound_exited`] since start.
    pub fn folded(&self) -> u64 {
        self.folded
    }

    /// Forgets exited processes whose counts are all logged and whose exit is older than
    /// `retention`. Returns how many were forgotten.
    pub fn expire(&mut self, now: Instant, retention: Duration) -> usize {
        let before = self.processes.len();
        self.processes.retain(|_, p| {
            let expired = p
                .exited_at
                .is_some_and(|at| now.saturating_duration_since(at) >= retention);
            !(expired && p.usage.unlogged().is_zero())
        });
        before - self.processes.len()
    }
}

/// Raises `usage` to `total`, logged: counts gathered since stay unlogged on top of it.
fn restore_usage(usage: &mut Usage, total: Counters) {
    let unlogged = usage.unlogged();
    let base = total.max(&usage.logged);
    usage.logged = base;
    usage.total = base;
    usage.total.absorb(&unlogged);
    usage.rate.sampled = usage.total;
}

fn new_entry(key: ProcessKey, table: &SocketTable) -> ProcessUsage {
    let meta = match table.process(&key) {
        Some(info) => ProcessMeta {
            comm: info.comm.clone(),
            exe: info.exe.clone(),
            uid: info.uid,
            placement: info.placement.clone(),
        },
        None => ProcessMeta {
            comm: format!("pid-{}", key.pid),
            exe: None,
            uid: u32::MAX,
            placement: Placement::default(),
        },
    };
    ProcessUsage {
        key,
        meta,
        usage: Usage::default(),
        quality: QualityBytes::default(),
        exited_at: None,
    }
}

#[cfg(test)]
// Tests pick their starting instant from the clock; the code under test never reads it.
#[allow(clippy::disallowed_methods)]
mod tests {
    use super::*;
    use crate::counters::Direction;
    use crate::{Credit, MatchKind};

    const KEY: ProcessKey = ProcessKey {
        pid: 42,
        start_time: 7,
    };

    fn meta() -> ProcessMeta {
        ProcessMeta {
            comm: "curl".into(),
            exe: None,
            uid: 1000,
            placement: Placement::default(),
        }
    }

    fn counters(rx_bytes: u64, tx_bytes: u64) -> Counters {
        Counters {
            rx_bytes,
            tx_bytes,
            rx_packets: rx_bytes / 100,
            tx_packets: tx_bytes / 100,
        }
    }

    fn tx(ledger: &mut Ledger, bytes: u32) {
        let mut tally = Tally::default();
        let credit = Credit::Process {
            key: KEY,
            kind: MatchKind::Exact,
        };
        tally.record_side(Direction::Tx, credit, false, bytes);
        ledger.merge(&mut tally, &SocketTable::default());
    }

    fn line_of(batch: &LogBatch) -> Option<&LogRecord> {
        batch.records.iter().find(|r| r.key == Some(KEY))
    }

    #[test]
    fn a_restored_process_logs_only_what_comes_after_and_its_totals_go_on() {
        let t0 = Instant::now();
        let mut ledger = Ledger::new(t0);
        ledger.restore(KEY, meta(), counters(1000, 2000));
        ledger.restore_unknown(counters(300, 0));
        // Nothing new: no line for the process, unknown's interval is zero.
        let batch = ledger.log_batch(t0);
        assert!(line_of(&batch).is_none());
        assert_eq!(batch.records.last().unwrap().total, counters(300, 0));
        assert!(batch.records.last().unwrap().interval.is_zero());
        tx(&mut ledger, 100);
        let batch = ledger.log_batch(t0);
        let line = line_of(&batch).unwrap();
        assert_eq!(line.interval.tx_bytes, 100);
        assert_eq!(line.total.tx_bytes, 2100);
        assert_eq!(line.meta.as_ref().unwrap().comm, "curl");
    }

    #[test]
    fn a_restore_never_lowers_a_total_nor_loses_unlogged_counts() {
        let t0 = Instant::now();
        let mut ledger = Ledger::new(t0);
        tx(&mut ledger, 500);
        ledger.restore(KEY, meta(), counters(0, 300));
        let batch = ledger.log_batch(t0);
        let line = line_of(&batch).unwrap();
        assert_eq!((line.interval.tx_bytes, line.total.tx_bytes), (500, 800));
        ledger.commit_log(&batch, t0);
        ledger.restore(KEY, meta(), counters(0, 100));
        assert_eq!(ledger.process(&KEY).unwrap().usage.total.tx_bytes, 800);
    }

    proptest::proptest! {
        /// The tally keeps the last process of each direction apart (no hash per packet):
        /// whatever the interleaving of processes, directions and merges, the ledger gets
        /// every byte and packet of each process, in its direction and quality.
        #[test]
        fn a_tally_loses_no_count_whatever_the_order_of_credits(
            credits in proptest::collection::vec((0u32..4, proptest::bool::ANY, proptest::bool::ANY, 1u32..1500), 0..200),
            merge_every in 1usize..50,
        ) {
            let mut ledger = Ledger::new(Instant::now());
            let mut tally = Tally::default();
            let mut want: HashMap<ProcessKey, (Counters, u64, u64)> = HashMap::new();
            for (i, &(pid, tx, late, len)) in credits.iter().enumerate() {
                let key = ProcessKey { pid, start_time: 1 };
                let dir = if tx { Direction::Tx } else { Direction::Rx };
                let credit = Credit::Process { key, kind: MatchKind::Exact };
                tally.record_side(dir, credit, late, len);
                let w = want.entry(key).or_default();
                w.0.add(dir, u64::from(len));
                if late { w.2 += u64::from(len) } else { w.1 += u64::from(len) }
                if i % merge_every == 0 {
                    ledger.merge(&mut tally, &SocketTable::default());
                }
            }
            ledger.merge(&mut tally, &SocketTable::default());
            for (key, (counters, exact, late)) in &want {
                let got = ledger.process(key).expect("every credited process");
                proptest::prop_assert_eq!(&got.usage.total, counters);
                proptest::prop_assert_eq!((got.quality.exact, got.quality.late), (*exact, *late));
            }
            proptest::prop_assert_eq!(ledger.processes().count(), want.len());
        }
    }

    #[test]
    fn exited_processes_beyond_the_bound_fold_into_unknown_and_no_byte_is_lost() {
        let t0 = Instant::now();
        let mut ledger = Ledger::new(t0);
        for pid in 1..=10u32 {
            let key = ProcessKey { pid, start_time: 1 };
            let mut tally = Tally::default();
            let credit = Credit::Process {
                key,
                kind: MatchKind::Exact,
            };
            tally.record_side(Direction::Tx, credit, false, 100);
            ledger.merge(&mut tally, &SocketTable::default());
            ledger.mark_exited(&key, t0 + Duration::from_secs(u64::from(pid)));
        }
        assert_eq!(ledger.bound_exited(4), 6);
        assert_eq!(ledger.processes().count(), 4);
        // The six that exited first are gone; their bytes are unknown's now.
        assert!(ledger
            .process(&ProcessKey {
                pid: 6,
                start_time: 1
            })
            .is_none());
        assert!(ledger
            .process(&ProcessKey {
                pid: 7,
                start_time: 1
            })
            .is_some());
        assert_eq!(ledger.unknown().unlogged().tx_bytes, 600);
        let batch = ledger.log_batch(t0);
        let logged: u64 = batch.records.iter().map(|r| r.interval.tx_bytes).sum();
        assert_eq!(logged, 1000, "every byte is still in the next log write");
        assert_eq!(ledger.folded(), 6);
        assert_eq!(ledger.bound_exited(4), 0);
    }

    #[test]
    fn a_checkpoint_holds_what_is_logged_of_live_processes_only() {
        let t0 = Instant::now();
        let mut ledger = Ledger::new(t0);
        tx(&mut ledger, 100);
        let (live, _) = ledger.logged_live();
        assert!(live.is_empty(), "nothing logged yet: {live:?}");
        let batch = ledger.log_batch(t0);
        ledger.commit_log(&batch, t0);
        tx(&mut ledger, 50);
        let (live, _) = ledger.logged_live();
        assert_eq!(live.len(), 1);
        assert_eq!(
            live[0].2.tx_bytes, 100,
            "unlogged counts are not checkpointed"
        );
        ledger.mark_exited(&KEY, t0);
        assert!(ledger.logged_live().0.is_empty());
    }
}
