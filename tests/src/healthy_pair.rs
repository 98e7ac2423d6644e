//! A pair of healthy ports forwarding in lock step while a test misbehaves elsewhere on the
//! switch: what the hostile and tenant-isolation suites measure harm by.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::daemon::Daemon;
use crate::frontend::{TestVm, QUEUE_SIZE};
use crate::setup::{Setup, T};
use crate::{frame, mac, BROADCAST};

/// Every VM fills this part of its memory (beyond any ring or buffer the test frontend
/// uses) with [`CANARY`]; nothing may ever write there.
pub const CANARY_AT: u64 = 0x200_0000;
pub const CANARY_LEN: usize = 0x100_0000;
pub const CANARY: u8 = 0xC5;

/// Ports a and b forwarding to each other in lock step until stopped: a sends 16 frames to
/// b, b must receive exactly those, intact, within 5 s. Any loss fails the test.
pub struct HealthyPair {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<(TestVm, TestVm, u64)>>,
}

impl HealthyPair {
    pub fn start(s: &Setup) -> HealthyPair {
        let mut a = s.vm("a", 1);
        let mut b = s.vm("b", 2);
        s.wait_connected(&["a", "b"]);
        for vm in [&a, &b] {
            vm.fill(CANARY_AT, CANARY_LEN, CANARY);
        }
        // Other VMs' broadcasts reach b too, up to 144 of them before this thread takes
        // any: b keeps a full ring of buffers so that none of a's frames finds it empty.
        b.post_rx(TestVm::rx(0), usize::from(QUEUE_SIZE) - 64, 2048);
        // b announces itself, so that a's frames to it are unicast.
        b.send(TestVm::tx(0), &frame(BROADCAST, mac(2), 50, 0));
        a.expect_frames(TestVm::rx(0), 1, T);
        a.post_rx(TestVm::rx(0), 1, 2048);
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let rx = TestVm::rx(0);
            let mut rounds = 0u64;
            while !flag.load(Ordering::Relaxed) {
                let sent: Vec<Vec<u8>> = (0..16)
                    .map(|i| frame(mac(2), mac(1), 60 + i * 13, rounds as u8))
                    .collect();
                for f in &sent {
                    a.send(TestVm::tx(0), f);
                }
                // Floods from the other ports reach a and b too: they are taken and their
                // buffers given back, but only a's frames count.
                let mut got = Vec::new();
                let deadline = Instant::now() + Duration::from_secs(5);
                while got.len() < sent.len() {
                    for (i, vm) in [&mut a, &mut b].into_iter().enumerate() {
                        let frames = vm.recv(rx);
                        vm.post_rx(rx, frames.len(), 2048);
                        if i == 1 {
                            got.extend(
                                frames
                                    .into_iter()
                                    .filter(|r| r.frame[6..12] == mac(1))
                                    .map(|r| r.frame),
                            );
                        }
                    }
                    assert!(
                        Instant::now() < deadline,
                        "healthy pair: {} of {} frames arrived in round {rounds}",
                        got.len(),
                        sent.len()
                    );
                    std::thread::sleep(Duration::from_millis(1));
                }
                assert!(
                    got == sent,
                    "healthy pair: frames changed in round {rounds}"
                );
                a.wait_tx_done(TestVm::tx(0), T);
                rounds += 1;
            }
            (a, b, rounds)
        });
        HealthyPair {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops the traffic; checks it kept flowing and that a's and b's canaries are intact.
    pub fn finish(mut self, min_rounds: u64) {
        self.stop.store(true, Ordering::Relaxed);
        let (a, b, rounds) = self
            .thread
            .take()
            .unwrap()
            .join()
            .expect("the healthy pair lost or changed frames");
        assert!(
            rounds >= min_rounds,
            "the healthy pair forwarded only {rounds} rounds of 16 frames"
        );
        for (name, vm) in [("a", &a), ("b", &b)] {
            assert_eq!(
                vm.find_changed(CANARY_AT, CANARY_LEN, CANARY),
                None,
                "canary of healthy VM {name} overwritten"
            );
        }
    }
}

/// Fails unless the daemon is still running and answers its API.
pub fn alive(d: &Daemon) {
    assert!(
        std::path::Path::new(&format!("/proc/{}", d.pid())).exists(),
        "the daemon died"
    );
    // The API answers.
    d.metrics();
}
