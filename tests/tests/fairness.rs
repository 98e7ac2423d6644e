//! Fairness, deterministically: work per poll is bounded per queue. A VM with a full ring
//! of frames for a shared destination cannot hold back a victim's frame behind all of
//! them: the worker takes at most one burst (32 chains) from a queue before serving the
//! next, so the victim's frame reaches the destination among the first two bursts.

use std::time::Duration;

use vringswitch_tests::frontend::TestVm;
use vringswitch_tests::setup::{Setup, T};
use vringswitch_tests::{frame, mac};

const BURST: usize = 32;

#[test]
fn a_full_ring_of_a_noisy_neighbour_does_not_hold_back_a_victim() {
    let s = Setup::new("fairness", &[("br0", &["noisy", "victim", "dst"])], 1);
    let mut noisy = s.vm("noisy", 1);
    let mut victim = s.vm("victim", 2);
    let mut dst = s.vm("dst", 3);
    s.wait_connected(&["noisy", "victim", "dst"]);
    // dst announces itself so that both send to it as a known unicast destination.
    dst.send(TestVm::tx(0), &frame([0xff; 6], mac(3), 50, 0));
    noisy.expect_frames(TestVm::rx(0), 1, T);
    victim.expect_frames(TestVm::rx(0), 1, T);
    dst.post_rx(TestVm::rx(0), 192, 2048);
    for round in 0..5u8 {
        let flood: Vec<Vec<u8>> = (0..200)
            .map(|i| frame(mac(3), mac(1), 60 + i % 100, round))
            .collect();
        let mine = frame(mac(3), mac(2), 77, round);
        // Both rings are full before the worker is told: then it polls them in turn.
        noisy.offer_quietly(TestVm::tx(0), &flood);
        victim.offer_quietly(TestVm::tx(0), std::slice::from_ref(&mine));
        noisy.kick(TestVm::tx(0));
        victim.kick(TestVm::tx(0));
        let got = dst.expect_frames(TestVm::rx(0), 201, T);
        let at = got
            .iter()
            .position(|r| r.frame == mine)
            .expect("the victim's frame arrived");
        assert!(
            at <= 2 * BURST,
            "round {round}: the victim's frame came {at}th, after {at} of the neighbour's"
        );
        dst.post_rx(TestVm::rx(0), 201, 2048);
        noisy.wait_tx_done(TestVm::tx(0), T);
        victim.wait_tx_done(TestVm::tx(0), T);
        std::thread::sleep(Duration::from_millis(50));
    }
}
