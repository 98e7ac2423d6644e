//! One tenant cannot hurt another (issue 37): a frontend or guest that takes away memory the
//! switch mapped, posts rings that cost the walk of millions of descriptors, floods the FDB
//! with source addresses or asks for a thousand segments per frame harms only its own port.
//! In every case a healthy pair of ports on the same bridge forwards with zero loss all the
//! while (see [`HealthyPair`]), and the daemon stays up.

use std::time::Duration;

use vringswitch_tests::frontend::{MemoryBacking, TestVm, VmOptions};
use vringswitch_tests::healthy_pair::{alive, HealthyPair};
use vringswitch_tests::setup::{Setup, T};
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
        // From here on the test must not touch evil's memory either.
        flood(&mut sender, 4);
        wait_hung_up(&mut evil, "the switch to hang up on the shrunk frontend");
        alive(&s.daemon);
        s.daemon.wait_port_connected("evil", false);
        assert!(
            s.counter("protocol_errors", "evil") >= 1,
            "{backing:?}: the shrunk memory was not counted"
        );
        assert!(
            s.daemon
                .log_text()
                .contains("shrank or emptied a file of its guest memory"),
            "{backing:?}: the log does not say what happened:\n{}",
            s.daemon.log_text()
        );
        // The tenant's next connection (a new memory file) is served as any other.
        drop(evil);
        let mut again = s.vm_with("evil", 3, opts);
        s.wait_connected(&["evil"]);
        flood(&mut sender, 1);
        again.expect_frames_at_least(TestVm::rx(0), 1, T);
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
    flood(&mut sender, 4);
    wait_hung_up(
        &mut evil,
        "the switch to hang up on the frontend with a shrunk log",
    );
    alive(&s.daemon);
    s.daemon.wait_port_connected("evil", false);
    assert!(s.counter("protocol_errors", "evil") >= 1);
    assert!(s
        .daemon
        .log_text()
        .contains("shrank or emptied a file of its guest memory or dirty log"));
    drop(evil);
    let mut again = s.vm_with("evil", 3, opts);
    s.wait_connected(&["evil"]);
    flood(&mut sender, 1);
    again.expect_frames_at_least(TestVm::rx(0), 1, T);
    healthy.finish(3);
    alive(&s.daemon);
    // The sender's frames all went out.
    sender.wait_tx_done(TestVm::tx(0), Duration::from_secs(5));
}
