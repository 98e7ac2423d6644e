//! L2 switching through the real daemon, with test VMs as vhost-user frontends.

use std::time::Duration;

use vhost::VhostBackend;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use vringswitch_tests::frontend::{Received, TestVm, VmOptions};
use vringswitch_tests::setup::{Setup, T};
use vringswitch_tests::{frame, mac, BROADCAST};

const QUIET: Duration = Duration::from_millis(150);

#[test]
fn flooding_reaches_every_other_port_and_never_the_ingress() {
    let s = Setup::new("flood", &[("br0", &["a", "b", "c"])], 1);
    let (mut a, mut b, mut c) = (s.vm("a", 1), s.vm("b", 2), s.vm("c", 3));
    s.wait_connected(&["a", "b", "c"]);
    let f = frame(BROADCAST, mac(1), 100, 7);
    a.send(TestVm::tx(0), &f);
    for vm in [&mut b, &mut c] {
        let got = vm.expect_frames(TestVm::rx(0), 1, T);
        assert_eq!(got[0].frame, f, "bytes arrive unmodified");
    }
    a.expect_nothing(TestVm::rx(0), QUIET);
    // Unknown unicast floods too.
    let f = frame(mac(9), mac(1), 60, 8);
    a.send(TestVm::tx(0), &f);
    assert_eq!(b.expect_frames(TestVm::rx(0), 1, T)[0].frame, f);
    assert_eq!(c.expect_frames(TestVm::rx(0), 1, T)[0].frame, f);
    a.expect_nothing(TestVm::rx(0), QUIET);
    a.wait_tx_done(TestVm::tx(0), T);
    assert_eq!(s.counter("rx_packets", "a"), 2);
    assert_eq!(s.counter("tx_packets", "b"), 2);
    assert_eq!(s.counter("tx_packets", "c"), 2);
    assert_eq!(s.counter("tx_packets", "a"), 0);
}

#[test]
fn unicast_after_learning_goes_only_to_the_right_port() {
    let s = Setup::new("unicast", &[("br0", &["a", "b", "c"])], 1);
    let (mut a, mut b, mut c) = (s.vm("a", 1), s.vm("b", 2), s.vm("c", 3));
    s.wait_connected(&["a", "b", "c"]);
    // b announces itself; a and c see the broadcast.
    b.send(TestVm::tx(0), &frame(BROADCAST, mac(2), 46, 1));
    a.expect_frames(TestVm::rx(0), 1, T);
    c.expect_frames(TestVm::rx(0), 1, T);
    // a -> b is now known: only b gets it, and a is learnt from it.
    for i in 0..20u8 {
        a.send(
            TestVm::tx(0),
            &frame(mac(2), mac(1), 46 + usize::from(i) * 70, i),
        );
    }
    let got = b.expect_frames(TestVm::rx(0), 20, T);
    for (i, r) in got.iter().enumerate() {
        assert_eq!(r.frame, frame(mac(2), mac(1), 46 + i * 70, i as u8));
    }
    c.expect_nothing(TestVm::rx(0), QUIET);
    // b -> a: only a.
    b.send(TestVm::tx(0), &frame(mac(1), mac(2), 46, 3));
    a.expect_frames(TestVm::rx(0), 1, T);
    c.expect_nothing(TestVm::rx(0), QUIET);
    assert_eq!(
        s.daemon
            .metric("vringswitch_fdb_entries", &[("bridge", "br0")]),
        2
    );
}

/// Within one burst the worker reuses the previous frame's decision while the flow is the
/// same; every change of flow, and every frame dropped before learning, must still be
/// decided on its own.
#[test]
fn a_burst_mixing_flows_is_decided_frame_by_frame() {
    let s = Setup::new("mixed", &[("br0", &["a", "b", "c"])], 1);
    let (mut a, mut b, mut c) = (s.vm("a", 1), s.vm("b", 2), s.vm("c", 3));
    s.wait_connected(&["a", "b", "c"]);
    b.send(TestVm::tx(0), &frame(BROADCAST, mac(2), 46, 1));
    c.send(TestVm::tx(0), &frame(BROADCAST, mac(3), 46, 2));
    b.expect_frames(TestVm::rx(0), 1, T);
    c.expect_frames(TestVm::rx(0), 1, T);
    a.expect_frames(TestVm::rx(0), 2, T);
    let multicast_src = [0x03, 0, 0, 0, 0, 1];
    let burst = [
        frame(mac(2), mac(1), 46, 10),        // 0: to b
        frame(mac(2), mac(1), 46, 11),        // 1: to b, same flow
        frame(mac(3), mac(1), 46, 12),        // 2: to c
        frame(mac(1), mac(1), 46, 13),        // 3: to itself: hairpin drop
        frame(mac(2), multicast_src, 46, 14), // 4: bad source: dropped before learning
        frame(mac(2), mac(1), 46, 15),        // 5: to b
        frame(BROADCAST, mac(1), 46, 16),     // 6: to b and c
        frame(mac(2), mac(1), 46, 17),        // 7: to b
        frame(mac(2), mac(1), 46, 18),        // 8: to b, same flow
    ];
    a.offer_quietly(TestVm::tx(0), &burst);
    a.kick(TestVm::tx(0));
    let to_b: Vec<_> = b
        .expect_frames(TestVm::rx(0), 6, T)
        .into_iter()
        .map(|r| r.frame)
        .collect();
    let want_b: Vec<_> = [0, 1, 5, 6, 7, 8].map(|i| burst[i].clone()).to_vec();
    assert_eq!(to_b, want_b, "b gets its frames, in order");
    let to_c: Vec<_> = c
        .expect_frames(TestVm::rx(0), 2, T)
        .into_iter()
        .map(|r| r.frame)
        .collect();
    assert_eq!(to_c, vec![burst[2].clone(), burst[6].clone()]);
    a.expect_nothing(TestVm::rx(0), QUIET);
    b.expect_nothing(TestVm::rx(0), Duration::ZERO);
    c.expect_nothing(TestVm::rx(0), Duration::ZERO);
    a.wait_tx_done(TestVm::tx(0), T);
    assert_eq!(s.drops("a", "hairpin"), 1);
    assert_eq!(s.drops("a", "invalid_src_mac"), 1);
    assert_eq!(s.counter("rx_packets", "a"), 9);
}

#[test]
fn mac_moves_to_the_port_it_is_seen_on() {
    let s = Setup::new("move", &[("br0", &["a", "b", "c"])], 1);
    let (mut a, mut b, mut c) = (s.vm("a", 1), s.vm("b", 2), s.vm("c", 3));
    s.wait_connected(&["a", "b", "c"]);
    // mac(7) first behind b, then behind c.
    b.send(TestVm::tx(0), &frame(BROADCAST, mac(7), 46, 1));
    a.expect_frames(TestVm::rx(0), 1, T);
    c.expect_frames(TestVm::rx(0), 1, T);
    c.send(TestVm::tx(0), &frame(BROADCAST, mac(7), 46, 2));
    a.expect_frames(TestVm::rx(0), 1, T);
    b.expect_frames(TestVm::rx(0), 1, T);
    a.send(TestVm::tx(0), &frame(mac(7), mac(1), 46, 3));
    c.expect_frames(TestVm::rx(0), 1, T);
    b.expect_nothing(TestVm::rx(0), QUIET);
}

#[test]
fn bridges_are_isolated() {
    let s = Setup::new("isolated", &[("br0", &["a", "b"]), ("br1", &["c", "d"])], 1);
    let (mut a, mut b) = (s.vm("a", 1), s.vm("b", 2));
    let (mut c, mut d) = (s.vm("c", 3), s.vm("d", 4));
    s.wait_connected(&["a", "b", "c", "d"]);
    a.send(TestVm::tx(0), &frame(BROADCAST, mac(1), 46, 1));
    b.expect_frames(TestVm::rx(0), 1, T);
    // c knows mac(1)? It must not: unicast to it floods inside br1 only.
    c.send(TestVm::tx(0), &frame(mac(1), mac(3), 46, 2));
    d.expect_frames(TestVm::rx(0), 1, T);
    a.expect_nothing(TestVm::rx(0), QUIET);
    b.expect_nothing(TestVm::rx(0), Duration::ZERO);
    c.expect_nothing(TestVm::rx(0), Duration::ZERO);
}

#[test]
fn mergeable_rx_spreads_a_1514_byte_frame_over_512_byte_buffers() {
    let s = Setup::new("mrg", &[("br0", &["a", "b"])], 1);
    let mut a = s.vm("a", 1);
    let mut b = TestVm::connect(&s.socket("b"), mac(2), VmOptions::default());
    b.post_rx(TestVm::rx(0), 16, 512);
    s.wait_connected(&["a", "b"]);
    let f = frame(mac(2), mac(1), 1500, 5);
    assert_eq!(f.len(), 1514);
    // The sender splits header and frame over three descriptors, the header straddling two.
    a.send_split(TestVm::tx(0), &f, &[5, 700]);
    let got = b.expect_frames(TestVm::rx(0), 1, T);
    assert_eq!(got[0].frame, f);
    assert_eq!(got[0].num_buffers, 3);
    assert_eq!(got[0].used_lens, vec![512, 512, 502]);
}

#[test]
fn without_mergeable_buffers_num_buffers_is_one() {
    let s = Setup::new("nomrg", &[("br0", &["a", "b"])], 1);
    let mut a = s.vm("a", 1);
    let opts = VmOptions {
        mrg_rxbuf: false,
        ..VmOptions::default()
    };
    let mut b = s.vm_with("b", 2, opts);
    s.wait_connected(&["a", "b"]);
    let f = frame(mac(2), mac(1), 1500, 5);
    a.send(TestVm::tx(0), &f);
    let got = b.expect_frames(TestVm::rx(0), 1, T);
    assert_eq!(got[0].frame, f);
    assert_eq!(got[0].num_buffers, 1);
}

#[test]
fn a_full_rx_ring_drops_and_counts() {
    let s = Setup::new("full", &[("br0", &["a", "b"])], 1);
    let mut a = s.vm("a", 1);
    let mut b = TestVm::connect(&s.socket("b"), mac(2), VmOptions::default());
    b.post_rx(TestVm::rx(0), 4, 2048);
    s.wait_connected(&["a", "b"]);
    for i in 0..10u8 {
        a.send(TestVm::tx(0), &frame(mac(2), mac(1), 100, i));
    }
    a.wait_tx_done(TestVm::tx(0), T);
    let got = b.expect_frames(TestVm::rx(0), 4, T);
    for (i, r) in got.iter().enumerate() {
        assert_eq!(r.frame, frame(mac(2), mac(1), 100, i as u8));
    }
    assert_eq!(s.counter("rx_packets", "a"), 10);
    assert_eq!(s.counter("tx_packets", "b"), 4);
    assert_eq!(
        s.daemon.metric(
            "vringswitch_port_drops_total",
            &[("port", "b"), ("reason", "no_rx_buffer")]
        ),
        6
    );
    // Buffers offered again are filled again: the worker never got stuck.
    b.post_rx(TestVm::rx(0), 4, 2048);
    a.send(TestVm::tx(0), &frame(mac(2), mac(1), 100, 99));
    assert_eq!(
        b.expect_frames(TestVm::rx(0), 1, T)[0].frame,
        frame(mac(2), mac(1), 100, 99)
    );
}

#[test]
fn frames_of_every_size_arrive_unmodified() {
    let s = Setup::new("sizes", &[("br0", &["a", "b"])], 1);
    let mut a = s.vm("a", 1);
    let mut b = TestVm::connect(&s.socket("b"), mac(2), VmOptions::default());
    b.post_rx(TestVm::rx(0), 200, 1024);
    s.wait_connected(&["a", "b"]);
    let sizes: Vec<usize> = (0..=1500).step_by(11).chain([1500, 4000, 9000]).collect();
    let mut expected = Vec::new();
    for (i, &n) in sizes.iter().enumerate() {
        let f = frame(mac(2), mac(1), n, i as u8);
        // Vary how the sender splits the chain.
        let cuts: Vec<usize> = match i % 3 {
            0 => vec![],
            1 => vec![12],
            _ => vec![3, 20, 200],
        };
        a.send_split(TestVm::tx(0), &f, &cuts);
        expected.push(f);
        if i % 32 == 31 {
            a.wait_tx_done(TestVm::tx(0), T);
        }
    }
    let got = b.expect_frames(TestVm::rx(0), expected.len(), T);
    for (g, e) in got.iter().zip(&expected) {
        assert_eq!(g.frame.len(), e.len());
        assert!(g.frame == *e, "frame of {} bytes changed", e.len());
    }
}

#[test]
fn malformed_tx_chains_are_dropped_counted_and_returned() {
    let s = Setup::new("badtx", &[("br0", &["a", "b"])], 1);
    let mut a = s.vm("a", 1);
    let mut b = s.vm("b", 2);
    s.wait_connected(&["a", "b"]);
    // A TX chain with a write-only descriptor, one outside guest memory, and a runt.
    a.offer_raw_chain(
        TestVm::tx(0),
        &[(0x200_0000, 12, false), (0x200_1000, 64, true)],
    );
    a.offer_raw_chain(
        TestVm::tx(0),
        &[(0x200_0000, 12, false), (1 << 40, 64, false)],
    );
    a.offer_raw_chain(TestVm::tx(0), &[(0x200_0000, 20, false)]);
    a.send(TestVm::tx(0), &frame(mac(2), mac(1), 50, 1));
    a.wait_tx_done(TestVm::tx(0), T);
    assert_eq!(b.expect_frames(TestVm::rx(0), 1, T).len(), 1);
    assert_eq!(
        s.daemon.metric(
            "vringswitch_port_drops_total",
            &[("port", "a"), ("reason", "bad_descriptor")]
        ),
        3
    );
}

#[test]
fn reconnect_serves_the_port_again() {
    let s = Setup::new("reconnect", &[("br0", &["a", "b"])], 1);
    let mut b = s.vm("b", 2);
    for round in 0..3u8 {
        let mut a = s.vm("a", 1);
        s.wait_connected(&["a", "b"]);
        a.send(TestVm::tx(0), &frame(mac(2), mac(1), 64, round));
        let got = b.expect_frames(TestVm::rx(0), 1, T);
        assert_eq!(got[0].frame, frame(mac(2), mac(1), 64, round));
        b.send(TestVm::tx(0), &frame(mac(1), mac(2), 64, round));
        assert_eq!(a.expect_frames(TestVm::rx(0), 1, T).len(), 1);
        drop(a);
        s.daemon.wait_port_connected("a", false);
    }
}

/// Sends `f` on `from`'s TX queue `tx` and polls `to`'s RX queues of `pairs` (every 100 µs,
/// for up to `T`) until frames arrive: those frames, and how long after sending they came.
fn timed_delivery(
    from: &mut TestVm,
    tx: u16,
    f: &[u8],
    to: &mut TestVm,
    pairs: &[u16],
) -> (Vec<Received>, Duration) {
    from.reap_tx(tx);
    let sent = std::time::Instant::now();
    from.send(tx, f);
    loop {
        let got: Vec<Received> = pairs.iter().flat_map(|&p| to.recv(TestVm::rx(p))).collect();
        if !got.is_empty() || sent.elapsed() > T {
            return (got, sent.elapsed());
        }
        std::thread::sleep(Duration::from_micros(100));
    }
}

/// A sleeping worker wakes for a kick at once, on every queue pair, after each reconnect:
/// the kick eventfds are the worker's alone (the library gets stand-ins), so a frame that
/// waited for the worker's 1 s timeout instead would mean a kick fd was lost or misfiled.
#[test]
fn a_kick_wakes_the_sleeping_worker_on_every_queue_after_each_reconnect() {
    let s = Setup::new("kickwake", &[("br0", &["a", "b"])], 2);
    let two = VmOptions {
        queue_pairs: 2,
        ..VmOptions::default()
    };
    let mut b = s.vm_with("b", 2, two);
    for round in 0..2u8 {
        let mut a = s.vm_with("a", 1, two);
        s.wait_connected(&["a", "b"]);
        for pair in [0, 1, 0, 1] {
            // Far longer than the idle poll: the worker is asleep when the frame comes.
            std::thread::sleep(Duration::from_millis(50));
            let f = frame(mac(2), mac(1), 64, round * 4 + pair as u8);
            let (got, took) = timed_delivery(&mut a, TestVm::tx(pair), &f, &mut b, &[0, 1]);
            assert_eq!(got.len(), 1, "round {round}, pair {pair}: frame lost");
            assert_eq!(got[0].frame, f);
            // The worker's timeout is 1 s; a woken worker takes microseconds.
            assert!(
                took < Duration::from_millis(300),
                "round {round}, pair {pair}: the frame took {took:?}, as if no kick woke the worker"
            );
            b.post_rx(TestVm::rx(0), 1, 2048);
            b.post_rx(TestVm::rx(1), 1, 2048);
        }
        drop(a);
        s.daemon.wait_port_connected("a", false);
    }
}

/// A frontend may hand over a new kick eventfd for a ring that is running (no
/// GET_VRING_BASE before it): a sleeping worker must then wait on the new one.
#[test]
fn a_kick_fd_replaced_on_a_running_ring_wakes_the_sleeping_worker() {
    let s = Setup::new("kickswap", &[("br0", &["a", "b"])], 1);
    let mut a = s.vm("a", 1);
    let mut b = s.vm("b", 2);
    s.wait_connected(&["a", "b"]);
    let tx = TestVm::tx(0);
    for round in 0..3u8 {
        // The worker is asleep, waiting on the old kick fd, when the new one arrives.
        std::thread::sleep(Duration::from_millis(50));
        let kick = EventFd::new(EFD_NONBLOCK).unwrap();
        a.frontend
            .set_vring_kick(usize::from(tx), &kick)
            .expect("SET_VRING_KICK");
        a.queues[usize::from(tx)].kick = kick;
        std::thread::sleep(Duration::from_millis(50));
        let f = frame(mac(2), mac(1), 64, round);
        let (got, took) = timed_delivery(&mut a, tx, &f, &mut b, &[0]);
        assert_eq!(got.len(), 1, "round {round}: frame lost");
        assert_eq!(got[0].frame, f);
        assert!(
            took < Duration::from_millis(300),
            "round {round}: the frame took {took:?}, as if the worker still waited on the old kick fd"
        );
        b.post_rx(TestVm::rx(0), 1, 2048);
    }
}

#[test]
fn get_vring_base_during_traffic_leaves_no_chain_in_flight() {
    let s = Setup::new("vringbase", &[("br0", &["a", "b"])], 1);
    let mut a = s.vm("a", 1);
    let mut b = TestVm::connect(&s.socket("b"), mac(2), VmOptions::default());
    b.post_rx(TestVm::rx(0), 256, 2048);
    s.wait_connected(&["a", "b"]);
    for i in 0..200u8 {
        a.send(TestVm::tx(0), &frame(mac(2), mac(1), 200, i));
    }
    // Stop a's TX ring while the switch is busy with it.
    let base = a
        .frontend
        .get_vring_base(usize::from(TestVm::tx(0)))
        .expect("GET_VRING_BASE");
    let used = a.used_idx(TestVm::tx(0));
    assert_eq!(
        u32::from(used),
        base,
        "every chain the backend took ({base}) was returned ({used})"
    );
    // Whatever it took reached b, nothing more arrives afterwards.
    std::thread::sleep(QUIET);
    let got = b.recv(TestVm::rx(0));
    assert_eq!(got.len(), base as usize);
    for (i, r) in got.iter().enumerate() {
        assert_eq!(r.frame, frame(mac(2), mac(1), 200, i as u8));
    }
    std::thread::sleep(QUIET);
    assert!(b.recv(TestVm::rx(0)).is_empty());
}

/// A frontend whose rings hold history but which sends SET_VRING_BASE 0, as DPDK's
/// virtio_user does when it reconnects to a restarted switch, is served from its used index.
/// The indices are where starting from 0 finds a ring empty for good, the driver's index
/// having wrapped to exactly 0: b's RX ring (64 buffers after 65472), a's TX ring (2 frames
/// after 65534, offered before the switch looks).
#[test]
fn rings_with_history_and_base_0_are_served_from_their_used_index() {
    let s = Setup::new("history", &[("br0", &["a", "b"])], 1);
    let history = |ring_history| VmOptions {
        ring_history,
        ..VmOptions::default()
    };
    let mut b = s.vm_with("b", 2, history(65472));
    assert_eq!(b.avail_idx(TestVm::rx(0)), 0);
    let mut a = TestVm::connect(&s.socket("a"), mac(1), history(65534));
    let sent: Vec<Vec<u8>> = (0..2).map(|i| frame(mac(2), mac(1), 80, i)).collect();
    a.offer_quietly(TestVm::tx(0), &sent);
    assert_eq!(a.avail_idx(TestVm::tx(0)), 0);
    s.wait_connected(&["a", "b"]);
    a.kick(TestVm::tx(0));
    let got = b.expect_frames(TestVm::rx(0), 2, T);
    for (r, f) in got.iter().zip(&sent) {
        assert_eq!(r.frame, *f);
    }
    a.wait_tx_done(TestVm::tx(0), T);
    assert_eq!(a.used_idx(TestVm::tx(0)), 0);
    assert_eq!(b.used_idx(TestVm::rx(0)), 65474);
    // And on, across the wrap of b's used index.
    for batch in 0..3u8 {
        let sent: Vec<Vec<u8>> = (0..32)
            .map(|i| frame(mac(2), mac(1), 80, 32 * batch + i))
            .collect();
        for f in &sent {
            a.send(TestVm::tx(0), f);
        }
        let got = b.expect_frames(TestVm::rx(0), 32, T);
        assert!(got.iter().map(|r| &r.frame).eq(&sent));
        b.post_rx(TestVm::rx(0), 32, 2048);
    }
    assert_eq!(b.used_idx(TestVm::rx(0)), 65474_u16.wrapping_add(96));
    assert_eq!(s.drops("b", "no_rx_buffer"), 0);
}

#[test]
fn two_queue_pairs_are_both_serviced() {
    let s = Setup::new("mq", &[("br0", &["a", "b"])], 2);
    let opts = VmOptions {
        queue_pairs: 2,
        ..VmOptions::default()
    };
    let mut a = s.vm_with("a", 1, opts);
    let mut b = s.vm_with("b", 2, opts);
    s.wait_connected(&["a", "b"]);
    for pair in 0..2u16 {
        for i in 0..5u8 {
            a.send(
                TestVm::tx(pair),
                &frame(mac(2), mac(1), 80, i + 10 * pair as u8),
            );
        }
    }
    a.wait_tx_done(TestVm::tx(0), T);
    a.wait_tx_done(TestVm::tx(1), T);
    // Frames from TX pair n land on RX pair n.
    let q0 = b.expect_frames(TestVm::rx(0), 5, T);
    let q1 = b.expect_frames(TestVm::rx(1), 5, T);
    assert_eq!(q0[0].frame, frame(mac(2), mac(1), 80, 0));
    assert_eq!(q1[0].frame, frame(mac(2), mac(1), 80, 10));
    // And back the other way on pair 1.
    b.send(TestVm::tx(1), &frame(mac(1), mac(2), 80, 1));
    assert_eq!(a.expect_frames(TestVm::rx(1), 1, T).len(), 1);
    assert_eq!(s.counter("rx_packets", "a"), 10);
}

#[test]
fn indirect_tx_descriptors_are_followed() {
    let s = Setup::new("indirect", &[("br0", &["a", "b"])], 1);
    let mut a = s.vm("a", 1);
    let mut b = s.vm("b", 2);
    s.wait_connected(&["a", "b"]);
    let f = frame(mac(2), mac(1), 1000, 3);
    a.send_indirect(TestVm::tx(0), &f, &[12, 40, 500]);
    let small = frame(mac(2), mac(1), 30, 4);
    a.send_indirect(TestVm::tx(0), &small, &[]);
    let got = b.expect_frames(TestVm::rx(0), 2, T);
    assert_eq!(got[0].frame, f);
    assert_eq!(got[1].frame, small);
    a.wait_tx_done(TestVm::tx(0), T);
}
