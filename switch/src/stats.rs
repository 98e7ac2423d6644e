//! Per-worker cycle accounting, as `testpmd --record-core-cycles` does it.
//!
//! Each worker owns one [`WorkerStats`] and is its only writer (plain load and store, no
//! locked instruction, its own cache line). Every poll of an ingress queue is timed: its cycles go
//! to `busy` if it moved at least one frame and to `idle` otherwise; time asleep counts as
//! idle. So busy cycles per packet is `busy / packets`, and the core's load is
//! `busy / (busy + idle)`: the share of the core spent moving frames, empty polls excluded
//! (OVS's `pmd-stats-show` counts whole loop iterations instead, empty polls of other queues
//! included).
//!
//! Cycles are TSC ticks on x86_64 and nanoseconds elsewhere; [`cycles_per_second`] says which.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Upper bounds of the burst-size histogram buckets (the last one is the maximum burst).
pub const BURST_BUCKETS: [u32; 7] = [1, 2, 4, 8, 16, 32, 64];

/// Counters of one worker. Single writer: the worker thread.
#[derive(Debug, Default)]
pub struct WorkerStats {
    busy_cycles: AtomicU64,
    idle_cycles: AtomicU64,
    packets: AtomicU64,
    wakeups: AtomicU64,
    /// Bursts by size: `bursts[i]` counts bursts of at most `BURST_BUCKETS[i]` frames and more
    /// than the bucket below.
    bursts: [AtomicU64; BURST_BUCKETS.len()],
}

/// A consistent-enough copy of one worker's counters (each value was written at some point).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct WorkerStatsSnapshot {
    pub busy_cycles: u64,
    pub idle_cycles: u64,
    pub packets: u64,
    pub wakeups: u64,
    /// Non-cumulative counts per bucket of [`BURST_BUCKETS`].
    pub bursts: [u64; BURST_BUCKETS.len()],
}

impl WorkerStatsSnapshot {
    /// Bursts that moved at least one chain.
    pub fn burst_count(&self) -> u64 {
        self.bursts.iter().sum()
    }
}

#[inline]
fn bump(counter: &AtomicU64, n: u64) {
    counter.store(
        counter.load(Ordering::Relaxed).wrapping_add(n),
        Ordering::Relaxed,
    );
}

/// The histogram bucket of a burst of `n` frames (`n` >= 1): the smallest power of two not
/// below `n`, capped at the last bucket.
#[inline]
fn bucket_of(n: usize) -> usize {
    let log2_ceil = usize::BITS - n.saturating_sub(1).leading_zeros();
    (log2_ceil as usize).min(BURST_BUCKETS.len() - 1)
}

impl WorkerStats {
    /// A TX-queue poll of `cycles` that moved frames.
    #[inline]
    pub fn add_busy(&self, cycles: u64) {
        bump(&self.busy_cycles, cycles);
    }

    /// A TX-queue poll (or a sleep) of `cycles` that moved nothing.
    #[inline]
    pub fn add_idle(&self, cycles: u64) {
        bump(&self.idle_cycles, cycles);
    }

    /// A burst of `n` frames taken from one ingress queue (`n` >= 1).
    #[inline]
    pub fn add_burst(&self, n: usize) {
        bump(&self.packets, n as u64);
        bump(&self.bursts[bucket_of(n)], 1);
    }

    /// The worker woke up from sleep.
    #[inline]
    pub fn add_wakeup(&self) {
        bump(&self.wakeups, 1);
    }

    /// Adds `carried` (the counts of the process before this one, on the same core), so
    /// that they never go backwards across an upgrade. Only while no worker runs.
    pub fn carry(&self, carried: &WorkerStatsSnapshot) {
        bump(&self.busy_cycles, carried.busy_cycles);
        bump(&self.idle_cycles, carried.idle_cycles);
        bump(&self.packets, carried.packets);
        bump(&self.wakeups, carried.wakeups);
        for (b, n) in self.bursts.iter().zip(carried.bursts) {
            bump(b, n);
        }
    }

    pub fn snapshot(&self) -> WorkerStatsSnapshot {
        let mut s = WorkerStatsSnapshot {
            busy_cycles: self.busy_cycles.load(Ordering::Relaxed),
            idle_cycles: self.idle_cycles.load(Ordering::Relaxed),
            packets: self.packets.load(Ordering::Relaxed),
            wakeups: self.wakeups.load(Ordering::Relaxed),
            bursts: [0; BURST_BUCKETS.len()],
        };
        for (d, b) in s.bursts.iter_mut().zip(self.bursts.iter()) {
            *d = b.load(Ordering::Relaxed);
        }
        s
    }
}

/// The cycle counter: the TSC on x86_64, a monotonic nanosecond clock elsewhere.
#[inline]
pub fn cycles() -> u64 {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: RDTSC has no memory effects and every x86_64 CPU implements it.
        unsafe { core::arch::x86_64::_rdtsc() }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        static EPOCH: OnceLock<Instant> = OnceLock::new();
        EPOCH.get_or_init(Instant::now).elapsed().as_nanos() as u64
    }
}

/// Cycles per second of [`cycles`], measured once over 20 ms against the monotonic clock.
pub fn cycles_per_second() -> u64 {
    static HZ: OnceLock<u64> = OnceLock::new();
    *HZ.get_or_init(|| {
        let (t0, c0) = (Instant::now(), cycles());
        std::thread::sleep(Duration::from_millis(20));
        let (t1, c1) = (Instant::now(), cycles());
        let ns = t1.duration_since(t0).as_nanos().max(1);
        (u128::from(c1.wrapping_sub(c0)) * 1_000_000_000 / ns) as u64
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn carried_worker_counts_add_up() {
        let old = WorkerStats::default();
        old.add_busy(100);
        old.add_idle(50);
        old.add_burst(3);
        old.add_wakeup();
        let new = WorkerStats::default();
        new.carry(&old.snapshot());
        new.add_burst(3);
        let s = new.snapshot();
        assert_eq!(
            (s.busy_cycles, s.idle_cycles, s.packets, s.wakeups),
            (100, 50, 6, 1)
        );
        assert_eq!(s.bursts[bucket_of(3)], 2);
    }

    #[test]
    fn bursts_land_in_the_smallest_bucket_that_holds_them() {
        let expect = [
            (1, 0),
            (2, 1),
            (3, 2),
            (4, 2),
            (5, 3),
            (8, 3),
            (9, 4),
            (16, 4),
            (17, 5),
            (32, 5),
            (33, 6),
            (64, 6),
            (1000, 6),
        ];
        for (n, b) in expect {
            assert_eq!(bucket_of(n), b, "burst of {n}");
            if n <= 64 {
                assert!(n as u32 <= BURST_BUCKETS[b]);
                assert!(b == 0 || n as u32 > BURST_BUCKETS[b - 1]);
            }
        }
    }

    #[test]
    fn snapshot_reads_what_was_added() {
        let s = WorkerStats::default();
        s.add_burst(1);
        s.add_burst(32);
        s.add_burst(20);
        s.add_busy(1000);
        s.add_idle(50);
        s.add_idle(25);
        s.add_wakeup();
        let snap = s.snapshot();
        assert_eq!(snap.packets, 53);
        assert_eq!(snap.busy_cycles, 1000);
        assert_eq!(snap.idle_cycles, 75);
        assert_eq!(snap.wakeups, 1);
        assert_eq!(snap.bursts, [1, 0, 0, 0, 0, 2, 0]);
        assert_eq!(snap.burst_count(), 3);
    }

    #[test]
    fn the_cycle_counter_advances_at_a_plausible_rate() {
        let a = cycles();
        std::thread::sleep(Duration::from_millis(2));
        assert!(cycles() > a);
        let hz = cycles_per_second();
        // Between 100 MHz and 10 GHz on anything that runs this.
        assert!((100_000_000..10_000_000_000).contains(&hz), "{hz} Hz");
    }
}
