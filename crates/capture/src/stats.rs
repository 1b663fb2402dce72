//! Capture counters as 64-bit running totals.
//!
//! libpcap's `struct pcap_stat` fields are `u_int` (32 bits) and wrap silently: at a million
//! packets per second `ps_recv` wraps in about 72 minutes. [`StatsAccumulator`] turns successive
//! 32-bit samples into monotonic 64-bit totals by adding the wrapping difference between samples.
//!
//! Invariant: the totals are exact as long as fewer than 2^32 packets are counted between two
//! samples (over an hour at a million packets per second); the daemon samples every few seconds.
//! A counter that goes backwards is read as a wrap, never as a negative delta.

/// Totals since the capture was opened. All three only ever grow.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CaptureStats {
    /// Frames the kernel handed to libpcap (on Linux: those that passed the BPF filter).
    pub received: u64,
    /// Frames dropped because the ring buffer was full: the reader was too slow. Any growth
    /// means attribution undercounts; raise `buffer_size` or lighten the filter.
    pub dropped: u64,
    /// Frames dropped by the interface or its driver (best effort; often 0).
    pub if_dropped: u64,
}

/// One counter's last 32-bit sample and 64-bit total.
#[derive(Debug, Clone, Copy, Default)]
struct WrappingCounter {
    last: u32,
    total: u64,
}

impl WrappingCounter {
    /// Adds the distance from the previous sample, modulo 2^32.
    fn observe(&mut self, sample: u32) -> u64 {
        self.total += u64::from(sample.wrapping_sub(self.last));
        self.last = sample;
        self.total
    }
}

/// Keeps 64-bit totals for the three libpcap counters across 32-bit wrap-around.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct StatsAccumulator {
    received: WrappingCounter,
    dropped: WrappingCounter,
    if_dropped: WrappingCounter,
}

impl StatsAccumulator {
    /// Folds in one `pcap_stats` sample and returns the updated totals.
    pub(crate) fn observe(&mut self, sample: pcap::Stat) -> CaptureStats {
        CaptureStats {
            received: self.received.observe(sample.received),
            dropped: self.dropped.observe(sample.dropped),
            if_dropped: self.if_dropped.observe(sample.if_dropped),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(received: u32, dropped: u32, if_dropped: u32) -> pcap::Stat {
        pcap::Stat {
            received,
            dropped,
            if_dropped,
        }
    }

    #[test]
    fn first_sample_is_taken_as_is() {
        let mut acc = StatsAccumulator::default();
        let totals = acc.observe(sample(10, 2, 1));
        assert_eq!(
            totals,
            CaptureStats {
                received: 10,
                dropped: 2,
                if_dropped: 1
            }
        );
    }

    #[test]
    fn wrap_around_keeps_counting() {
        let mut acc = StatsAccumulator::default();
        acc.observe(sample(u32::MAX - 5, 0, 0));
        // 6 packets reach u32::MAX + 1 == 0, 4 more reach 4.
        let totals = acc.observe(sample(4, 0, 0));
        assert_eq!(totals.received, u64::from(u32::MAX) + 5);
    }

    #[test]
    fn repeated_wraps_accumulate_past_u32() {
        let mut acc = StatsAccumulator::default();
        let step = 1u32 << 31; // half the range per sample, so each step is unambiguous
        let mut raw = 0u32;
        for _ in 0..8 {
            raw = raw.wrapping_add(step);
            acc.observe(sample(0, raw, 0));
        }
        assert_eq!(acc.observe(sample(0, raw, 0)).dropped, 4 * (1u64 << 32));
    }

    #[test]
    fn unchanged_sample_adds_nothing() {
        let mut acc = StatsAccumulator::default();
        acc.observe(sample(7, 3, 1));
        let totals = acc.observe(sample(7, 3, 1));
        assert_eq!(
            (totals.received, totals.dropped, totals.if_dropped),
            (7, 3, 1)
        );
    }
}
