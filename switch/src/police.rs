//! Policers: token buckets that hold a port to a rate of bits and/or frames per second, as
//! OVS's ingress policing and VPP's policers do. Frames past the rate (beyond the burst the
//! bucket holds) are dropped.
//!
//! A bucket is refilled and drawn from once per burst of frames, not per frame: the worker
//! takes an [`Allowance`] (what the bucket holds now), admits the burst's frames from it one
//! by one, and gives back what it did not use. The bucket is a pair of atomics on the port,
//! touched by the workers that carry the port's frames; with one worker per port there is
//! no contention at all. Two workers drawing at once may each admit a burst from the same
//! tokens: the overshoot is bounded by one burst.
//!
//! Tokens are kept in millionths (of a bit, or of a frame), so that a slow rate refilled at
//! every burst still adds up exactly. Time is the cycle counter the workers read anyway
//! ([`crate::stats::cycles`]), passed in with its rate, so tests are exact.

use std::sync::atomic::{AtomicU64, Ordering};

/// Millionths per token.
const SCALE: u64 = 1_000_000;

/// One token bucket: `rate` tokens a second, holding `burst` at most.
#[derive(Debug)]
struct Bucket {
    /// Millionths of a token per cycle, in 32.32 fixed point.
    per_cycle: u64,
    /// Most tokens held, in millionths.
    cap: u64,
    /// Tokens held, in millionths.
    tokens: AtomicU64,
    /// When the bucket was last refilled (ns).
    last: AtomicU64,
}

impl Bucket {
    fn new(rate: u64, burst: u64, now: u64, cycles_per_second: u64) -> Bucket {
        let cap = burst.saturating_mul(SCALE);
        let per_cycle =
            ((u128::from(rate) * u128::from(SCALE)) << 32) / u128::from(cycles_per_second.max(1));
        Bucket {
            per_cycle: u64::try_from(per_cycle).unwrap_or(u64::MAX),
            cap,
            // A new policer starts full: the port may send its burst at once.
            tokens: AtomicU64::new(cap),
            last: AtomicU64::new(now),
        }
    }

    /// Adds what accrued since the last refill; returns the whole tokens held.
    fn refill(&self, now: u64) -> u64 {
        // Acquire/AcqRel: whoever wins the interval since `last` adds it, once.
        let last = self.last.load(Ordering::Acquire);
        if now > last
            && self
                .last
                .compare_exchange(last, now, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            // Cycles times millionths per cycle: a multiply and a shift, no division.
            let add = (u128::from(now - last) * u128::from(self.per_cycle)) >> 32;
            let add = u64::try_from(add).unwrap_or(u64::MAX);
            let cap = self.cap;
            let _ = self
                .tokens
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |t| {
                    Some(t.saturating_add(add).min(cap))
                });
        }
        self.tokens.load(Ordering::Acquire) / SCALE
    }

    /// Takes `n` whole tokens (never below zero: another worker may have drawn meanwhile).
    fn take(&self, n: u64) {
        let n = n.saturating_mul(SCALE);
        let _ = self
            .tokens
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |t| {
                Some(t.saturating_sub(n))
            });
    }
}

/// A port's policer for one direction: a bit bucket, a frame bucket, or both.
#[derive(Debug)]
pub struct Policer {
    bits: Option<Bucket>,
    frames: Option<Bucket>,
}

impl Policer {
    /// A policer of `bits` (rate in bits/s, burst in bits) and/or `frames` (rate in
    /// frames/s, burst in frames), full at cycle `now` of a counter that counts
    /// `cycles_per_second`.
    pub fn new(
        bits: Option<(u64, u64)>,
        frames: Option<(u64, u64)>,
        now: u64,
        cycles_per_second: u64,
    ) -> Policer {
        let bucket = |(rate, burst)| Bucket::new(rate, burst, now, cycles_per_second);
        Policer {
            bits: bits.map(bucket),
            frames: frames.map(bucket),
        }
    }

    /// What the buckets hold at cycle `now`, for one burst of frames.
    #[inline]
    pub fn allowance(&self, now: u64) -> Allowance {
        Allowance {
            bits: self.bits.as_ref().map_or(u64::MAX, |b| b.refill(now)),
            frames: self.frames.as_ref().map_or(u64::MAX, |b| b.refill(now)),
            used_bits: 0,
            used_frames: 0,
        }
    }

    /// Takes what `a` admitted from the buckets.
    #[inline]
    pub fn settle(&self, a: &Allowance) {
        if let Some(b) = &self.bits {
            b.take(a.used_bits);
        }
        if let Some(b) = &self.frames {
            b.take(a.used_frames);
        }
    }
}

/// What one burst may admit (see [`Policer::allowance`]).
#[derive(Debug, Clone, Copy)]
pub struct Allowance {
    bits: u64,
    frames: u64,
    used_bits: u64,
    used_frames: u64,
}

impl Allowance {
    /// Whether a frame of `len` bytes passes; if it does, it is counted against the
    /// allowance.
    #[inline]
    pub fn admit(&mut self, len: u32) -> bool {
        let bits = u64::from(len) * 8;
        if self.used_bits + bits > self.bits || self.used_frames >= self.frames {
            return false;
        }
        self.used_bits += bits;
        self.used_frames += 1;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;
    /// Tests count cycles in nanoseconds.
    const NS: u64 = 1_000_000_000;

    /// Frames of `len` bytes offered one by one at `now`, until one is refused; returns how
    /// many passed.
    fn offer(p: &Policer, now: u64, len: u32, most: usize) -> usize {
        let mut a = p.allowance(now);
        let passed = (0..most).take_while(|_| a.admit(len)).count();
        p.settle(&a);
        passed
    }

    #[test]
    fn a_full_bucket_lets_its_burst_through_then_the_rate() {
        // 1 Mbit/s, burst 100 kbit: 100,000 bits of 1000-byte frames is 12 of them.
        let p = Policer::new(Some((1_000_000, 100_000)), None, 0, NS);
        assert_eq!(offer(&p, 0, 1000, 100), 12);
        assert_eq!(offer(&p, 0, 1000, 100), 0);
        // 8 ms later: 8000 bits, one frame (with the 4000 bits left over before).
        assert_eq!(offer(&p, 8 * MS, 1000, 100), 1);
        // A second later, whatever the bursts in between: the rate, within a frame.
        let mut passed = 0;
        for ms in (9..=1008).step_by(3) {
            passed += offer(&p, ms * MS, 1000, 100);
        }
        assert!(
            (124..=126).contains(&passed),
            "{passed} frames of 8000 bits"
        );
    }

    #[test]
    fn the_bucket_never_holds_more_than_its_burst() {
        let p = Policer::new(Some((1_000_000, 100_000)), None, 0, NS);
        assert_eq!(offer(&p, 0, 1000, 100), 12);
        // An hour idle refills it to its burst, no more.
        assert_eq!(offer(&p, 3600 * 1000 * MS, 1000, 100), 12);
    }

    #[test]
    fn a_slow_rate_refilled_at_every_burst_still_adds_up() {
        // 1 kbit/s refilled every microsecond: 1 millibit each time.
        let p = Policer::new(Some((1000, 8000)), None, 0, NS);
        assert_eq!(offer(&p, 0, 1000, 10), 1);
        let mut passed = 0;
        for us in 1..=8_000_000u64 {
            if us % 1000 == 0 {
                passed += offer(&p, us * 1000, 1000, 10);
            } else {
                p.allowance(us * 1000);
            }
        }
        assert_eq!(passed, 1, "8000 bits in 8 s at 1 kbit/s");
    }

    #[test]
    fn frames_are_counted_whatever_their_size() {
        let p = Policer::new(None, Some((1000, 10)), 0, NS);
        assert_eq!(offer(&p, 0, 64, 100), 10);
        assert_eq!(offer(&p, 5 * MS, 9000, 100), 5);
        // Both buckets: the emptier one decides.
        let both = Policer::new(Some((1_000_000, 80_000)), Some((1000, 100)), 0, NS);
        assert_eq!(offer(&both, 0, 1000, 1000), 10);
        assert_eq!(offer(&both, 100 * MS, 64, 1000), 100);
    }

    #[test]
    fn a_frame_that_does_not_fit_leaves_room_for_a_smaller_one() {
        let p = Policer::new(Some((1_000_000, 10_000)), None, 0, NS);
        let mut a = p.allowance(0);
        assert!(a.admit(1000));
        assert!(!a.admit(1000), "8000 + 8000 bits > 10,000");
        assert!(a.admit(200));
        p.settle(&a);
        assert_eq!(p.allowance(0).bits, 10_000 - 9_600);
    }

    #[test]
    fn time_going_back_adds_nothing() {
        let p = Policer::new(Some((1_000_000, 8000)), None, 10 * MS, NS);
        assert_eq!(offer(&p, 10 * MS, 1000, 10), 1);
        assert_eq!(offer(&p, 5 * MS, 1000, 10), 0);
        assert_eq!(offer(&p, 18 * MS, 1000, 10), 1);
    }
}
