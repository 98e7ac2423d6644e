//! Packet capture of one port, for the operator's Wireshark.
//!
//! A [`PortCapture`] is a bounded pool of frame buffers, all allocated when the capture
//! starts. A worker that forwards a frame of a captured port takes a free buffer, copies
//! the frame's first bytes into it and queues it; the control side drains the queue into a
//! pcapng stream and gives the buffers back. When no buffer is free the frame is counted as
//! dropped from the capture and forwarded as usual: a capture never slows or drops traffic.
//!
//! A port without a capture has no tap in the topology, and its bursts pay one branch on
//! it; the worker's per-frame loops have nothing of the capture (the frames are copied in
//! a pass of their own). Frames of one burst share one timestamp, read once per burst.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use crossbeam_queue::ArrayQueue;
use crossbeam_utils::CachePadded;
use vringswitch_ports::frame::MAX_FRAME_LEN;

/// What a capture takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CaptureSettings {
    /// Frames the port's VM sent (the port's rx).
    pub from_vm: bool,
    /// Frames delivered to the port's VM (the port's tx), as the VM gets them: with the
    /// VLAN tag pushed or popped on the way.
    pub to_vm: bool,
    /// Bytes kept of each frame; the rest is counted in its original length only.
    pub snaplen: u32,
}

/// Memory all buffers of one capture may take together.
const BUFFER_BUDGET: usize = 16 << 20;
/// Fewest and most buffers of a capture, whatever the snaplen.
const MIN_BUFFERS: usize = 64;
const MAX_BUFFERS: usize = 4096;

/// One captured frame.
pub struct CapturedFrame {
    /// Wall-clock time, nanoseconds since the Unix epoch.
    pub ns: u64,
    /// Delivered to the VM (else sent by it).
    pub to_vm: bool,
    /// The frame's whole length.
    pub original_len: u32,
    kept: u32,
    data: Box<[u8]>,
}

impl CapturedFrame {
    /// The bytes kept of the frame (at most the snaplen).
    pub fn data(&self) -> &[u8] {
        &self.data[..(self.kept as usize).min(self.data.len())]
    }
}

/// The buffers of one port's capture, shared by the workers (which fill them) and the
/// control side (which drains them).
pub struct PortCapture {
    settings: CaptureSettings,
    free: ArrayQueue<Box<CapturedFrame>>,
    filled: ArrayQueue<Box<CapturedFrame>>,
    dropped: CachePadded<AtomicU64>,
    closed: AtomicBool,
}

impl PortCapture {
    /// A tap with every buffer it will use: up to 16 MiB, as many buffers of
    /// `min(snaplen, MAX_FRAME_LEN)` bytes as fit (64 to 4096).
    pub fn new(settings: CaptureSettings) -> PortCapture {
        let size = (settings.snaplen as usize).clamp(1, MAX_FRAME_LEN);
        let count = (BUFFER_BUDGET / size).clamp(MIN_BUFFERS, MAX_BUFFERS);
        let free = ArrayQueue::new(count);
        for _ in 0..count {
            let buffer = Box::new(CapturedFrame {
                ns: 0,
                to_vm: false,
                original_len: 0,
                kept: 0,
                data: vec![0; size].into_boxed_slice(),
            });
            // Cannot fail: the queue holds exactly `count`.
            let _ = free.push(buffer);
        }
        PortCapture {
            settings,
            free,
            filled: ArrayQueue::new(count),
            dropped: CachePadded::new(AtomicU64::new(0)),
            closed: AtomicBool::new(false),
        }
    }

    pub fn settings(&self) -> CaptureSettings {
        self.settings
    }

    /// How many frames the tap holds at most before it drops.
    pub fn capacity(&self) -> usize {
        self.filled.capacity()
    }

    /// Worker side: a recorder for the frames of one burst, all stamped `ns`.
    #[inline]
    pub fn burst(&self, ns: u64) -> BurstRecorder<'_> {
        BurstRecorder {
            tap: self,
            ns,
            full: false,
            dropped: 0,
        }
    }

    /// Control side: the oldest captured frame not yet taken. Give it back when written.
    pub fn take(&self) -> Option<Box<CapturedFrame>> {
        self.filled.pop()
    }

    /// Control side: returns a buffer from [`PortCapture::take`] to the pool.
    pub fn give_back(&self, f: Box<CapturedFrame>) {
        let _ = self.free.push(f);
    }

    /// Frames that found no free buffer.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Marks the capture as ended by the switch (its port was removed).
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }
}

/// Records the frames of one burst into a tap. Once no buffer is free, the rest of the
/// burst is counted as dropped without looking again (the control side would hardly free
/// one within a burst, and each look touches memory it writes); drops reach the tap's
/// counter once, when the recorder is dropped.
pub struct BurstRecorder<'a> {
    tap: &'a PortCapture,
    ns: u64,
    full: bool,
    dropped: u64,
}

impl BurstRecorder<'_> {
    /// Records one frame of `original_len` bytes, whose first bytes `fill` writes into the
    /// buffer it is given and returns the count of.
    #[inline]
    pub fn record(
        &mut self,
        to_vm: bool,
        original_len: u32,
        fill: impl FnOnce(&mut [u8]) -> usize,
    ) {
        let taken = if self.full { None } else { self.tap.free.pop() };
        let Some(mut f) = taken else {
            self.full = true;
            self.dropped += 1;
            return;
        };
        let kept = fill(&mut f.data).min(f.data.len());
        f.ns = self.ns;
        f.to_vm = to_vm;
        f.original_len = original_len;
        f.kept = kept as u32;
        // Cannot fail: there are as many slots as buffers.
        if let Err(f) = self.tap.filled.push(f) {
            self.dropped += 1;
            let _ = self.tap.free.push(f);
        }
    }
}

impl Drop for BurstRecorder<'_> {
    fn drop(&mut self) {
        if self.dropped > 0 {
            self.tap.dropped.fetch_add(self.dropped, Ordering::Relaxed);
        }
    }
}

/// The capture clock: nanoseconds since the Unix epoch (0 if the clock is before it).
#[inline]
pub fn wall_clock_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tap(snaplen: u32) -> PortCapture {
        PortCapture::new(CaptureSettings {
            from_vm: true,
            to_vm: true,
            snaplen,
        })
    }

    #[test]
    fn buffers_are_sized_by_the_snaplen_within_the_budget() {
        assert_eq!(tap(65_535).capacity(), BUFFER_BUDGET / 65_535);
        assert_eq!(tap(262_144).capacity(), BUFFER_BUDGET / MAX_FRAME_LEN);
        assert_eq!(tap(128).capacity(), MAX_BUFFERS);
        assert_eq!(tap(1 << 20).capacity(), BUFFER_BUDGET / MAX_FRAME_LEN);
        assert!(tap(1 << 20).capacity() >= MIN_BUFFERS);
    }

    #[test]
    fn frames_come_out_in_order_cut_to_the_snaplen() {
        let t = tap(4);
        t.burst(7).record(false, 6, |b| {
            b.copy_from_slice(&[1, 2, 3, 4]);
            4
        });
        // A fill that claims more than the buffer keeps the buffer.
        t.burst(8).record(true, 2, |b| {
            b[..2].copy_from_slice(&[9, 9]);
            99
        });
        let a = t.take().unwrap();
        assert_eq!(
            (a.ns, a.to_vm, a.original_len, a.data()),
            (7, false, 6, &[1, 2, 3, 4][..])
        );
        let b = t.take().unwrap();
        assert_eq!((b.ns, b.to_vm, b.data().len()), (8, true, 4));
        assert!(t.take().is_none());
        t.give_back(a);
        t.give_back(b);
        assert_eq!(t.dropped(), 0);
    }

    #[test]
    fn a_full_tap_counts_drops_and_recovers_when_drained() {
        let t = tap(128);
        let n = t.capacity();
        for i in 0..n + 10 {
            t.burst(i as u64).record(false, 60, |_| 0);
        }
        assert_eq!(t.dropped(), 10);
        let mut taken = Vec::new();
        while let Some(f) = t.take() {
            taken.push(f);
        }
        assert_eq!(taken.len(), n);
        assert_eq!(taken[n - 1].ns, n as u64 - 1, "the first frames are kept");
        for f in taken {
            t.give_back(f);
        }
        t.burst(1).record(false, 60, |_| 0);
        assert!(t.take().is_some());
        assert_eq!(t.dropped(), 10);
    }

    #[test]
    fn a_burst_that_finds_the_tap_full_stops_looking_and_counts_once() {
        let t = tap(128);
        let n = t.capacity();
        let mut burst = t.burst(1);
        for _ in 0..n + 3 {
            burst.record(false, 60, |_| 0);
        }
        // Freed in the middle of the burst: not looked at again.
        t.give_back(t.take().unwrap());
        burst.record(false, 60, |_| 0);
        assert_eq!(t.dropped(), 0, "counted when the burst ends");
        drop(burst);
        assert_eq!(t.dropped(), 4);
        // The next burst looks again.
        t.burst(2).record(false, 60, |_| 0);
        assert_eq!(t.dropped(), 4);
    }

    #[test]
    fn workers_on_several_threads_lose_nothing_but_what_they_count() {
        let t = std::sync::Arc::new(tap(128));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let t = t.clone();
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        let mut burst = t.burst(0);
                        for _ in 0..10 {
                            burst.record(true, 60, |b| {
                                b[0] = 1;
                                1
                            });
                        }
                    }
                })
            })
            .collect();
        let mut got = 0u64;
        let mut drain = |t: &PortCapture| {
            while let Some(f) = t.take() {
                assert_eq!(f.data(), &[1]);
                got += 1;
                t.give_back(f);
            }
        };
        while threads.iter().any(|h| !h.is_finished()) {
            drain(&t);
        }
        drain(&t);
        assert_eq!(got + t.dropped(), 40_000);
    }
}
