//! One tenant cannot hurt another (issue 37): a frontend or guest that takes away memory the
//! switch mapped, posts rings that cost the walk of millions of descriptors, or floods the
//! FDB with source addresses harms only its own port. In every case a healthy pair of ports
//! on the same bridge forwards with zero loss all the while (see [`HealthyPair`]), and the
//! daemon stays up. (A TSO frame asking for a thousand segments is in `offloads.rs`, a
//! capture whose reader stops in `capture.rs`, rate limits in `policing.rs`.)

use std::time::{Duration, Instant};

use vringswitch_config::DEFAULT_FDB_AGING_S;
use vringswitch_tests::frontend::{MemoryBacking, TestVm, VmOptions};
use vringswitch_tests::healthy_pair::{alive, HealthyPair};
use vringswitch_tests::layout::{Layout, PortSpec};
use vringswitch_tests::setup::{server_port, Setup, T};
use vringswitch_tests::{frame, mac, wait_until, BROADCAST};

/// Waits until the switch hangs up on `vm`: a request then fails.
fn wait_hung_up(vm: &mut TestVm, what: &str) {
    use vhost::VhostBackend;
    wait_until(T, what, || {
        vm.frontend.get_features().is_err().then_some(())
    });
}

/// Broadcasts from `sender` reach every port of the bridge, `evil` among them: the switch
/// reads its RX ring and writes into its buffers.
fn flood(sender: &mut TestVm, n: usize) {
    for i in 0..n {
        sender.send(TestVm::tx(0), &frame(BROADCAST, mac(9), 60, i as u8));
    }
}

/// After `evil`'s frontend made the switch's next access to its memory fault: `sender`'s
/// broadcasts reach for that memory, the switch hangs up on evil (and only on it), counts
/// and logs it, and serves evil's next connection (`opts`, new memory) as any other.
fn lost_and_served_again(
    s: &Setup,
    sender: &mut TestVm,
    mut evil: TestVm,
    opts: VmOptions,
    what: &str,
) {
    // From here on the test must not touch evil's memory either.
    flood(sender, 4);
    wait_hung_up(&mut evil, &format!("the switch to hang up on {what}"));
    alive(&s.daemon);
    s.daemon.wait_port_connected("evil", false);
    assert!(
        s.counter("protocol_errors", "evil") >= 1,
        "{what}: not counted"
    );
    let log = s.daemon.log_text();
    assert!(
        log.contains("shrank or emptied a file of its guest memory or dirty log"),
        "{what}: the log does not say what happened:\n{log}"
    );
    drop(evil);
    let mut again = s.vm_with("evil", 3, opts);
    s.wait_connected(&["evil"]);
    flood(sender, 1);
    again.expect_frames_at_least(TestVm::rx(0), 1, T);
}

/// A frontend shrinks the file behind its guest memory after the switch mapped it (the
/// switch's next access to that memory would raise SIGBUS): only its port goes down, counted
/// as a protocol error, and it is served again when it comes back. Every kind of guest
/// memory the switch accepts is tried; a memfd sealed against shrinking, QEMU's default,
/// cannot be shrunk at all.
#[test]
fn a_frontend_that_shrinks_its_memory_takes_only_its_own_port_down() {
    for backing in [
        MemoryBacking::Shm,
        MemoryBacking::Memfd { sealed: false },
        MemoryBacking::Hugetlbfs,
        MemoryBacking::DiskFile,
        MemoryBacking::Memfd { sealed: true },
    ] {
        let s = Setup::new("shrink", &[("br0", &["a", "b", "evil", "sender"])], 1);
        let healthy = HealthyPair::start(&s);
        let opts = VmOptions {
            memory: backing,
            ..VmOptions::default()
        };
        let mut sender = s.vm("sender", 9);
        let mut evil = s.vm_with("evil", 3, opts);
        s.wait_connected(&["evil", "sender"]);
        // The memory is accepted and frames reach it.
        flood(&mut sender, 1);
        evil.expect_frames(TestVm::rx(0), 1, T);

        let shrunk = evil.shrink_memory_file();
        if backing == (MemoryBacking::Memfd { sealed: true }) {
            assert!(shrunk.is_err(), "a memfd sealed with F_SEAL_SHRINK shrank");
            evil.post_rx(TestVm::rx(0), 1, 2048);
            flood(&mut sender, 1);
            evil.expect_frames(TestVm::rx(0), 1, T);
            healthy.finish(3);
            alive(&s.daemon);
            continue;
        }
        shrunk.expect("shrink the guest memory file");
        let what = format!("a frontend whose {backing:?} memory shrank");
        lost_and_served_again(&s, &mut sender, evil, opts, &what);
        healthy.finish(3);
        alive(&s.daemon);
        sender.wait_tx_done(TestVm::tx(0), T);
    }
}

/// The same with the dirty log of a live migration: the frontend shrinks the log's file
/// after SET_LOG_BASE, and the switch's next mark in it would fault.
#[test]
fn a_frontend_that_shrinks_its_dirty_log_takes_only_its_own_port_down() {
    let s = Setup::new("shrinklog", &[("br0", &["a", "b", "evil", "sender"])], 1);
    let healthy = HealthyPair::start(&s);
    let opts = VmOptions {
        migration: true,
        ..VmOptions::default()
    };
    let mut sender = s.vm("sender", 9);
    let mut evil = s.vm_with("evil", 3, opts);
    s.wait_connected(&["evil", "sender"]);
    let log = evil.start_dirty_log();
    flood(&mut sender, 1);
    evil.expect_frames(TestVm::rx(0), 1, T);
    assert!(!log.marked().is_empty(), "the switch logged nothing");

    log.shrink_file();
    lost_and_served_again(&s, &mut sender, evil, opts, "a frontend whose log shrank");
    healthy.finish(3);
    alive(&s.daemon);
    // The sender's frames all went out.
    sender.wait_tx_done(TestVm::tx(0), Duration::from_secs(5));
}

/// Time from the first of 32 broadcasts from `sender` to the arrival at `near` of a unicast
/// sent right behind them: what a neighbour waits while the switch floods.
fn delay_behind_a_flood(sender: &mut TestVm, near: &mut TestVm) -> Duration {
    let start = Instant::now();
    flood(sender, 32);
    sender.send(TestVm::tx(0), &frame(mac(4), mac(9), 60, 0xee));
    let mut got = 0;
    let mut seen = false;
    while !seen {
        let frames = near.recv(TestVm::rx(0));
        got += frames.len();
        near.post_rx(TestVm::rx(0), frames.len(), 2048);
        seen = frames.iter().any(|r| r.frame[..6] == mac(4));
        assert!(
            start.elapsed() < T,
            "the unicast to near never came ({got} frames)"
        );
        std::thread::sleep(Duration::from_micros(200));
    }
    let waited = start.elapsed();
    sender.wait_tx_done(TestVm::tx(0), T);
    waited
}

/// Posts `n` RX chains on `evil`, each one indirect descriptor for a table (one for all) of
/// `entries` writable descriptors of no length: chains that cost the walk of every entry
/// and hold nothing.
fn post_empty_indirect_chains(evil: &mut TestVm, n: usize, entries: u32) {
    use vm_memory::{Bytes, GuestAddress};
    const INDIRECT: u16 = virtio_bindings::virtio_ring::VRING_DESC_F_INDIRECT as u16;
    const WRITE: u16 = virtio_bindings::virtio_ring::VRING_DESC_F_WRITE as u16;
    const NEXT: u16 = virtio_bindings::virtio_ring::VRING_DESC_F_NEXT as u16;
    // Past the canary area, inside the VM's 64 MiB.
    let table = 0x300_0000u64;
    let mut bytes = Vec::with_capacity(16 * entries as usize);
    for i in 0..entries {
        let (flags, next) = if i + 1 < entries {
            (WRITE | NEXT, i as u16 + 1)
        } else {
            (WRITE, 0)
        };
        bytes.extend_from_slice(&0u64.to_le_bytes());
        bytes.extend_from_slice(&0u32.to_le_bytes());
        bytes.extend_from_slice(&flags.to_le_bytes());
        bytes.extend_from_slice(&next.to_le_bytes());
    }
    evil.mem.write_slice(&bytes, GuestAddress(table)).unwrap();
    let rx = TestVm::rx(0);
    let heads = evil.alloc_descs(rx, n);
    for &d in &heads {
        evil.write_desc(rx, d, table, 16 * entries, INDIRECT, 0);
    }
    evil.make_available(rx, &heads);
}

/// A receiver posts RX chains that each cost the walk of 65,535 descriptors (an indirect
/// table of empty ones), then chains within the ring's size that cost 256: a neighbour's
/// unicast behind 32 broadcasts waits no longer than without them, the chains go back to
/// their owner unused and its frames are counted as bad descriptors.
#[test]
fn a_receiver_whose_rx_chains_cost_millions_of_descriptors_delays_no_one() {
    let s = Setup::new("walk", &[("br0", &["a", "b", "evil", "sender", "near"])], 1);
    let healthy = HealthyPair::start(&s);
    let mut sender = s.vm("sender", 9);
    let mut near = s.vm("near", 4);
    let mut evil = s.vm("evil", 3);
    s.wait_connected(&["sender", "near", "evil"]);
    // near announces itself: sender's frames to it are unicast.
    near.send(TestVm::tx(0), &frame(BROADCAST, mac(4), 50, 0));
    sender.expect_frames(TestVm::rx(0), 1, T);
    // evil's own 64 buffers are used up by the first rounds, as an idle guest's would be.
    let baseline = (0..4)
        .map(|_| delay_behind_a_flood(&mut sender, &mut near))
        .max()
        .unwrap();
    let taken_before = evil.used_idx(TestVm::rx(0));

    for (entries, rounds) in [(65_535u32, 2), (256, 2)] {
        post_empty_indirect_chains(&mut evil, 64, entries);
        let attacked = (0..rounds)
            .map(|_| delay_behind_a_flood(&mut sender, &mut near))
            .max()
            .unwrap();
        eprintln!("tables of {entries}: {attacked:?} behind the flood, {baseline:?} without");
        assert!(
            attacked <= baseline * 3 + Duration::from_millis(50),
            "tables of {entries}: a neighbour waited {attacked:?} behind the flood, \
             {baseline:?} without the hostile receiver"
        );
    }
    // Every hostile chain went back to evil, unused.
    let given_back = evil.used_idx(TestVm::rx(0)).wrapping_sub(taken_before);
    assert_eq!(given_back, 128, "hostile chains not given back");
    assert!(s.drops("evil", "bad_descriptor") >= 64);
    healthy.finish(3);
    alive(&s.daemon);
}

/// Sends one frame from each of `n` source addresses (`02:10:tag:..`), to `to`.
fn send_from_many(vm: &mut TestVm, tag: u8, n: u16, to: [u8; 6]) {
    for chunk in (0..n).collect::<Vec<_>>().chunks(128) {
        for &i in chunk {
            let [hi, lo] = i.to_be_bytes();
            vm.send(
                TestVm::tx(0),
                &frame(to, [0x02, 0x10, tag, hi, lo, 1], 60, lo),
            );
        }
        vm.wait_tx_done(TestVm::tx(0), T);
    }
}

fn many(tag: u8, i: u16) -> [u8; 6] {
    let [hi, lo] = i.to_be_bytes();
    [0x02, 0x10, tag, hi, lo, 1]
}

/// Two ports send from 3,000 source addresses each: the first is held to the default
/// limit of a port (1024), the second (allowed 2,000) to what is left of its bridge's
/// (1,500 here). Both refusals are counted, the limits are shown by the API, vringctl and
/// the metrics, frames to addresses not learnt reach them by flooding, and a healthy pair
/// on the bridge forwards without loss all the while.
#[test]
fn a_port_sending_from_endless_addresses_fills_neither_its_bridge_nor_the_switch() {
    let s = Setup::with_layout("fdbflood", |dir| {
        let port = |name| PortSpec {
            // evil2 is allowed more than its bridge has left.
            fdb_max_learned: (name == "evil2").then_some(2000),
            ..server_port(dir, name, "br0", 1)
        };
        Layout::new()
            .bridge_with("br0", DEFAULT_FDB_AGING_S, Some(1500))
            .ports(["a", "b", "evil", "evil2", "sender"].map(port))
    });
    let healthy = HealthyPair::start(&s);
    let mut sender = s.vm("sender", 9);
    let mut evil = s.vm("evil", 3);
    let mut evil2 = s.vm("evil2", 5);
    s.wait_connected(&["sender", "evil", "evil2"]);
    // sender is known before the flood of addresses.
    flood(&mut sender, 1);
    let br = [("bridge", "br0")];
    let learnt = |port: &str| {
        s.daemon
            .metric("vringswitch_port_fdb_learned", &[("port", port)])
    };

    send_from_many(&mut evil, 3, 3000, mac(9));
    wait_until(T, "evil's addresses learnt", || {
        (learnt("evil") == 1024).then_some(())
    });
    assert_eq!(
        s.daemon.metric(
            "vringswitch_fdb_learning_refused_total",
            &[("bridge", "br0"), ("limit", "port")]
        ),
        3000 - 1024
    );
    send_from_many(&mut evil2, 5, 3000, mac(9));
    wait_until(T, "the bridge full", || {
        (s.daemon.metric("vringswitch_fdb_entries", &br) == 1500).then_some(())
    });
    let evil2_learnt = learnt("evil2");
    assert!(
        evil2_learnt < 1500 - 1024,
        "evil2 learnt {evil2_learnt} addresses"
    );
    assert_eq!(
        s.daemon.metric(
            "vringswitch_fdb_learning_refused_total",
            &[("bridge", "br0"), ("limit", "bridge")]
        ),
        3000 - evil2_learnt
    );
    assert_eq!(s.daemon.metric("vringswitch_fdb_max_learned", &br), 1500);
    assert_eq!(
        s.daemon
            .metric("vringswitch_port_fdb_max_learned", &[("port", "evil2")]),
        2000
    );
    assert_eq!(
        s.daemon
            .metric("vringswitch_port_fdb_max_learned", &[("port", "evil")]),
        1024
    );

    // A learnt address is reached by unicast; one refused, by flooding.
    for vm in [&mut evil, &mut evil2] {
        let earlier = vm.recv(TestVm::rx(0));
        vm.post_rx(TestVm::rx(0), earlier.len(), 2048);
    }
    sender.send(TestVm::tx(0), &frame(many(3, 7), mac(9), 60, 1));
    sender.send(TestVm::tx(0), &frame(many(3, 2999), mac(9), 60, 2));
    let got = evil.expect_frames_at_least(TestVm::rx(0), 2, T);
    assert!(got.iter().any(|r| r.frame[..6] == many(3, 7)));
    assert!(got.iter().any(|r| r.frame[..6] == many(3, 2999)));
    let flooded: Vec<_> = evil2.expect_frames_at_least(TestVm::rx(0), 1, T);
    assert!(
        flooded.iter().all(|r| r.frame[..6] == many(3, 2999)),
        "only the frame to an address not learnt is flooded"
    );

    // The limits, as the API and vringctl show them.
    let bridges = s.daemon.vringctl(&["bridge", "list"]);
    assert!(
        bridges.lines().nth(1).is_some_and(|l| l.contains("1500")),
        "{bridges}"
    );
    let ports = s.daemon.vringctl(&["port", "list"]);
    assert!(ports.contains("1024/1024"), "{ports}");
    assert!(ports.contains(&format!("{evil2_learnt}/2000")), "{ports}");
    let set = s
        .daemon
        .vringctl(&["port", "set", "evil", "--fdb-max-learned", "2048"]);
    assert!(set.contains("changed"), "{set}");
    assert_eq!(
        s.daemon
            .metric("vringswitch_port_fdb_max_learned", &[("port", "evil")]),
        2048
    );
    healthy.finish(3);
    alive(&s.daemon);
}
