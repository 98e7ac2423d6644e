//! Every counter of /metrics and /v1/stats, checked exactly after a known workload that
//! provokes each drop reason the test frontend can provoke.

use vringswitch_metrics::Snapshot;
use vringswitch_tests::daemon::http_get;
use vringswitch_tests::frontend::{TestVm, VmOptions};
use vringswitch_tests::setup::{Setup, T};
use vringswitch_tests::{frame, mac, BROADCAST};

fn stats(s: &Setup) -> Snapshot {
    let body = http_get(&s.daemon.api, "/v1/stats").expect("GET /v1/stats");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("/v1/stats: {e}: {body}"))
}

/// (port, rx packets, rx bytes, tx packets, tx bytes, [(reason, drops)])
type Expected<'a> = (&'a str, u64, u64, u64, u64, &'a [(&'a str, u64)]);

/// Sends one frame from `vm` and waits until the switch has consumed it.
fn send(vm: &mut TestVm, f: &[u8]) -> u64 {
    vm.send(TestVm::tx(0), f);
    vm.wait_tx_done(TestVm::tx(0), T);
    f.len() as u64
}

#[test]
fn every_counter_is_exact_after_a_known_workload() {
    // a, b and e connect; c never does. Nothing else is on br0.
    let s = Setup::new("counters", &[("br0", &["a", "b", "c", "e"])], 1);
    let mut a = s.vm("a", 1);
    let mut b = TestVm::connect(&s.socket("b"), mac(2), VmOptions::default());
    b.post_rx(TestVm::rx(0), 4, 2048);
    let no_mrg = VmOptions {
        mrg_rxbuf: false,
        ..VmOptions::default()
    };
    let mut e = TestVm::connect(&s.socket("e"), mac(5), no_mrg);
    e.post_rx(TestVm::rx(0), 8, 256);
    s.wait_connected(&["a", "b", "e"]);

    let (mut a_rx, mut b_rx, mut e_rx) = (0u64, 0u64, 0u64);
    let (mut a_tx, mut b_tx, mut e_tx) = (0u64, 0u64, 0u64);
    // 1. b floods: a and e get it, c is down.
    let f = frame(BROADCAST, mac(2), 50, 1);
    b_rx += send(&mut b, &f);
    a_tx += f.len() as u64;
    e_tx += f.len() as u64;
    assert_eq!(a.expect_frames(TestVm::rx(0), 1, T)[0].frame, f);
    assert_eq!(e.expect_frames(TestVm::rx(0), 1, T)[0].frame, f);
    // 2. e to b (learnt in 1): b has 3 buffers left afterwards.
    let f = frame(mac(2), mac(5), 60, 2);
    e_rx += send(&mut e, &f);
    b_tx += f.len() as u64;
    // 3. Ten frames from a to b: 3 fit, 7 find no buffer.
    for i in 0..10u8 {
        let f = frame(mac(2), mac(1), 100, i);
        a_rx += send(&mut a, &f);
        if i < 3 {
            b_tx += f.len() as u64;
        }
    }
    assert_eq!(b.expect_frames(TestVm::rx(0), 4, T).len(), 4);
    // 4. 1014 bytes to e, whose 256-byte buffers cannot be merged: too big there.
    a_rx += send(&mut a, &frame(mac(5), mac(1), 1000, 4));
    // 5. To a's own address: hairpin.
    a_rx += send(&mut a, &frame(mac(1), mac(1), 40, 5));
    // 6. A multicast source address.
    a_rx += send(&mut a, &frame(mac(2), [0x03, 0, 0, 0, 0, 9], 40, 6));
    // 7. A chain with a write-only descriptor: bad descriptor, not a received frame.
    a.offer_raw_chain(
        TestVm::tx(0),
        &[(0x200_0000, 12, false), (0x200_1000, 64, true)],
    );
    a.wait_tx_done(TestVm::tx(0), T);
    // 8. 70000 bytes over five descriptors: larger than any frame the switch forwards.
    let huge = frame(mac(2), mac(1), 70_000 - 14, 8);
    a.send_split(TestVm::tx(0), &huge, &[16_384, 32_768, 49_152, 65_536]);
    a.wait_tx_done(TestVm::tx(0), T);
    // 9. To an unknown address: flooded; b is out of buffers, c is down, e gets it.
    let f = frame(mac(9), mac(1), 50, 9);
    a_rx += send(&mut a, &f);
    e_tx += f.len() as u64;
    assert_eq!(e.expect_frames(TestVm::rx(0), 1, T)[0].frame, f);

    let chains = 1 + 1 + 10 + 1 + 1 + 1 + 1 + 1 + 1;
    let expected: [Expected; 4] = [
        (
            "a",
            14,
            a_rx,
            1,
            a_tx,
            &[
                ("hairpin", 1),
                ("invalid_src_mac", 1),
                ("bad_descriptor", 1),
                ("too_big", 1),
            ],
        ),
        ("b", 1, b_rx, 4, b_tx, &[("no_rx_buffer", 8)]),
        ("c", 0, 0, 0, 0, &[("port_down", 2)]),
        ("e", 1, e_rx, 2, e_tx, &[("too_big", 1)]),
    ];
    // The worker publishes counters before it returns the chains, so they are final now.
    let snap = stats(&s);
    let text = s.daemon.metrics();
    for (port, rxp, rxb, txp, txb, drops) in expected {
        assert_eq!(s.counter("rx_packets", port), rxp, "{port} rx_packets");
        assert_eq!(s.counter("rx_bytes", port), rxb, "{port} rx_bytes");
        assert_eq!(s.counter("tx_packets", port), txp, "{port} tx_packets");
        assert_eq!(s.counter("tx_bytes", port), txb, "{port} tx_bytes");
        let p = snap.port(port).expect("port in /v1/stats");
        assert_eq!(
            (p.rx_packets, p.rx_bytes, p.tx_packets, p.tx_bytes),
            (rxp, rxb, txp, txb),
            "{port} in /v1/stats"
        );
        for reason in [
            "no_rx_buffer",
            "bad_descriptor",
            "too_big",
            "port_down",
            "invalid_src_mac",
            "hairpin",
            "vlan_filtered",
        ] {
            let want = drops
                .iter()
                .find(|(r, _)| *r == reason)
                .map_or(0, |(_, n)| *n);
            assert_eq!(s.drops(port, reason), want, "{port} drops {reason}");
            assert_eq!(p.drops[reason], want, "{port} drops {reason} in /v1/stats");
        }
    }
    assert_eq!(snap.ports.len(), 4);

    // Every chain taken from a TX ring is one worker packet, in one histogram.
    let core = [("core", "1")];
    let w = &snap.workers[0];
    assert_eq!(w.core, 1);
    assert_eq!(w.packets, chains);
    assert_eq!(
        s.daemon.metric("vringswitch_worker_packets_total", &core),
        chains
    );
    let bursts: u64 = w.bursts.iter().sum();
    assert!((1..=chains).contains(&bursts), "{bursts} bursts");
    assert_eq!(
        s.daemon
            .metric("vringswitch_worker_burst_size_count", &core),
        bursts
    );
    assert_eq!(
        s.daemon.metric("vringswitch_worker_burst_size_sum", &core),
        chains
    );
    assert!(w.busy_cycles > 0 && w.idle_cycles > 0, "{w:?}");
    // Each step waited for its chains, and the worker sleeps after 200 us without work.
    assert!(w.wakeups >= 1, "{w:?}");

    // The FDB learnt b, e and a, and never the multicast source.
    let br = [("bridge", "br0")];
    assert_eq!(s.daemon.metric("vringswitch_fdb_entries", &br), 3);
    assert_eq!(s.daemon.metric("vringswitch_fdb_learned_total", &br), 3);
    assert_eq!(s.daemon.metric("vringswitch_fdb_moved_total", &br), 0);
    assert_eq!(s.daemon.metric("vringswitch_fdb_aged_total", &br), 0);
    assert_eq!(snap.bridges[0].fdb_entries, 3);

    assert_eq!(s.daemon.metric("vringswitch_ports_configured", &[]), 4);
    assert_eq!(s.daemon.metric("vringswitch_ports_connected", &[]), 3);
    assert!(text.contains("vringswitch_build_info{version=\""), "{text}");

    // A reconnect is counted, and the port comes back.
    drop(a);
    s.daemon.wait_port_connected("a", false);
    let _a = s.vm("a", 1);
    s.wait_connected(&["a"]);
    assert_eq!(
        s.daemon
            .metric("vringswitch_port_reconnects_total", &[("port", "a")]),
        1
    );
    assert_eq!(
        s.daemon
            .metric("vringswitch_port_reconnects_total", &[("port", "b")]),
        0
    );
}

/// A poll that finds its queue empty is idle time, as testpmd counts it: with two ports
/// connected and silent, the worker polls and sleeps without a busy cycle.
#[test]
fn quiet_ports_cost_no_busy_cycles() {
    let s = Setup::new("quiet", &[("br0", &["a", "b"])], 1);
    let _a = s.vm("a", 1);
    let _b = s.vm("b", 2);
    s.wait_connected(&["a", "b"]);
    let before = stats(&s).workers[0].idle_cycles;
    // A sleep is counted when the worker wakes, at the latest after its 1 s timeout.
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let w = &stats(&s).workers[0];
    assert_eq!(w.packets, 0, "{w:?}");
    assert_eq!(w.busy_cycles, 0, "{w:?}");
    assert!(w.idle_cycles > before, "idle cycles did not grow: {w:?}");
}

/// A worker woken by traffic goes back to sleep once the traffic stops, and stays asleep
/// until its 1 s timeout: neither the kick eventfds it keeps in its wait set (which nobody
/// reads) nor the doorbell keep waking it. Each frame that wakes it does so once.
#[test]
fn a_worker_sleeps_soundly_after_traffic() {
    // An idle poll long enough for the reply of a round trip to come within it, whatever
    // the machine's load; the pauses between round trips are longer.
    let s = Setup::with_layout("sleeps", |dir| {
        Setup::layout(dir, &[("br0", &["a", "b"])], 1).idle_poll_us(20000)
    });
    let mut a = s.vm("a", 1);
    let mut b = s.vm("b", 2);
    s.wait_connected(&["a", "b"]);
    let start = stats(&s).workers[0].wakeups;
    // Each round trip follows a pause longer than the worker's idle poll: its first frame
    // is a kick that wakes the worker, its second (sent back at once) comes while the
    // worker still polls, and kicks all the same (EVENT_IDX).
    for i in 0..20 {
        std::thread::sleep(std::time::Duration::from_millis(40));
        a.reap_tx(TestVm::tx(0));
        a.send(TestVm::tx(0), &frame(mac(2), mac(1), 46, i));
        // Polled without sleeping (expect_frames waits 50 ms for more).
        let deadline = std::time::Instant::now() + T;
        while b.recv(TestVm::rx(0)).is_empty() {
            assert!(std::time::Instant::now() < deadline, "frame {i} lost");
        }
        b.reap_tx(TestVm::tx(0));
        b.send(TestVm::tx(0), &frame(mac(1), mac(2), 46, i));
        a.expect_frames(TestVm::rx(0), 1, T);
        a.post_rx(TestVm::rx(0), 1, 2048);
        b.post_rx(TestVm::rx(0), 1, 2048);
    }
    let before = stats(&s).workers[0].wakeups;
    let woken = before - start;
    // Once per round trip (and once for the 1 s timeout, should they straddle it). Not
    // again for the reply's kick, which came while the worker polled: that one would end
    // its next sleep at once, and every round trip would count twice.
    assert!(
        (20..=21).contains(&woken),
        "20 round trips, each after a pause, woke the worker {woken} times"
    );
    std::thread::sleep(std::time::Duration::from_millis(2500));
    let quiet = stats(&s).workers[0].wakeups - before;
    // The 1 s timeout twice, one left over from the traffic (a doorbell rung late).
    assert!(quiet <= 3, "{quiet} wake-ups in 2.5 s of silence");
}
