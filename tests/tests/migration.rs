//! Live migration's dirty log, with test VMs through the daemon: while a frontend logs, every
//! page the switch writes into its memory is marked in the log it shared, and no other;
//! once it stops, nothing is; a log that does not fit is refused without harm to the switch.

use std::collections::BTreeSet;

use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;

use vhost::vhost_user::VhostUserFrontend;
use vhost::VhostBackend;
use vhost::{VhostUserDirtyLogRegion, VhostUserMemoryRegionInfo};
use vm_memory::{Bytes, GuestAddress};
use vringswitch_tests::frontend::{
    TestVm, VmOptions, DIRTY_LOG_LEN, HDR_LEN, MEM_SIZE, QUEUE_SIZE,
};
use vringswitch_tests::raw_frontend::memory_file;
use vringswitch_tests::setup::{Setup, T};
use vringswitch_tests::{mac, wait_until};

/// The 4 KiB pages of `[gpa, gpa + len)`.
fn pages(gpa: u64, len: u64) -> std::ops::Range<u64> {
    if len == 0 {
        return 0..0;
    }
    gpa / 4096..(gpa + len - 1) / 4096 + 1
}

/// A byte no test frame holds: what RX buffers are filled with before the switch writes.
const PATTERN: u8 = 0xa5;

/// `n` frames from `from` to `to` of lengths from 60 to 1514 bytes, no byte [`PATTERN`].
fn frames(from: u8, to: u8, n: usize, seed: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| {
            let len = 60 + (i * 367 + seed * 131) % 1455;
            let mut f: Vec<u8> = (0..len)
                .map(|k| match ((k * 13 + i * 7 + seed) % 251) as u8 {
                    PATTERN => 0,
                    b => b,
                })
                .collect();
            f[..6].copy_from_slice(&mac(to));
            f[6..12].copy_from_slice(&mac(from));
            f[12..14].copy_from_slice(&[0x08, 0x00]);
            f
        })
        .collect()
}

/// The pages of `vm`'s RX buffers (queue 0).
fn rx_buffer_pages(vm: &TestVm) -> std::ops::Range<u64> {
    let q = &vm.queues[usize::from(TestVm::rx(0))];
    pages(q.buf_addr(0), u64::from(QUEUE_SIZE) * 0x4000)
}

#[test]
fn while_logging_the_pages_the_switch_writes_are_marked_and_no_others() {
    let s = Setup::new("dirtylog", &[("br0", &["a", "b"])], 1);
    let migrating = VmOptions {
        migration: true,
        ..VmOptions::default()
    };
    let mut a = s.vm_with("a", 1, migrating);
    let mut b = s.vm("b", 2);
    s.wait_connected(&["a", "b"]);
    let rx = a.queues[usize::from(TestVm::rx(0))].buf_addr(0);
    a.fill(rx, usize::from(QUEUE_SIZE) * 0x4000, PATTERN);

    let log = a.start_dirty_log();
    assert!(log.marked().is_empty(), "marked before any traffic");
    for f in frames(2, 1, 40, 0) {
        b.send(TestVm::tx(0), &f);
    }
    b.kick(TestVm::tx(0));
    let got = a.expect_frames(TestVm::rx(0), 40, T);

    // What the switch wrote: each buffer up to its used length, and the used rings.
    let mut written = BTreeSet::new();
    for r in &got {
        for (&head, &len) in r.heads.iter().zip(&r.used_lens) {
            let at = a.queues[usize::from(TestVm::rx(0))].buf_addr(head);
            written.extend(pages(at, u64::from(len)));
        }
    }
    let used_rings: BTreeSet<u64> = [TestVm::rx(0), TestVm::tx(0)]
        .iter()
        .flat_map(|&q| pages(a.used_ring_addr(q), 6 + 8 * u64::from(QUEUE_SIZE)))
        .collect();
    // The used index is marked just after it is stored (a page is marked after it is
    // written): the frames can be seen a moment before.
    let used_page = a.used_ring_addr(TestVm::rx(0)) / 4096;
    let marked = wait_until(T, "the RX used ring to be marked", || {
        let m = log.marked();
        m.contains(&used_page).then_some(m)
    });
    let missed: Vec<_> = written.difference(&marked).collect();
    assert!(missed.is_empty(), "pages written, not marked: {missed:x?}");
    let stray: Vec<_> = marked
        .iter()
        .filter(|p| !written.contains(p) && !used_rings.contains(p))
        .collect();
    assert!(stray.is_empty(), "pages marked, not written: {stray:x?}");
    // Every page whose bytes changed is marked (whatever the switch thinks it wrote).
    let mut now = vec![0u8; usize::from(QUEUE_SIZE) * 0x4000];
    a.mem.read_slice(&mut now, GuestAddress(rx)).unwrap();
    for (i, page) in now.chunks(4096).enumerate() {
        let p = rx_buffer_pages(&a).start + i as u64;
        if page.iter().any(|&b| b != PATTERN) {
            assert!(marked.contains(&p), "page {p:#x} changed, not marked");
        }
    }

    // Logging off: traffic goes on, nothing is marked.
    a.stop_dirty_log();
    log.clear();
    a.post_rx(TestVm::rx(0), 40, 2048);
    for f in frames(2, 1, 40, 1) {
        b.send(TestVm::tx(0), &f);
    }
    b.kick(TestVm::tx(0));
    a.expect_frames(TestVm::rx(0), 40, T);
    assert!(log.marked().is_empty(), "marked with logging off");
}

/// Every ring is logged, not only the first pair's: frames into A's second RX ring mark
/// their buffers and that ring's used ring, and frames A sends on its second TX ring mark
/// that ring's used ring.
#[test]
fn the_rings_of_every_queue_pair_are_logged() {
    let s = Setup::new("dirtylog-mq", &[("br0", &["a", "b"])], 2);
    let two = VmOptions {
        queue_pairs: 2,
        migration: true,
        ..VmOptions::default()
    };
    // A's RX buffers only on its second pair: the switch delivers a frame to the pair of
    // the index it came from.
    let mut a = TestVm::connect(&s.socket("a"), mac(1), two);
    a.post_rx(TestVm::rx(1), 64, 2048);
    let mut b = s.vm_with(
        "b",
        2,
        VmOptions {
            queue_pairs: 2,
            ..VmOptions::default()
        },
    );
    s.wait_connected(&["a", "b"]);
    let log = a.start_dirty_log();
    let (rx, tx) = (TestVm::rx(1), TestVm::tx(1));
    for f in frames(2, 1, 20, 5) {
        b.send(tx, &f);
    }
    b.kick(tx);
    let got = a.expect_frames(rx, 20, T);
    for f in frames(1, 2, 5, 6) {
        a.send(tx, &f);
    }
    a.kick(tx);
    b.expect_frames(rx, 5, T);
    a.wait_tx_done(tx, T);

    let mut want = BTreeSet::new();
    for r in &got {
        for (&head, &len) in r.heads.iter().zip(&r.used_lens) {
            want.extend(pages(
                a.queues[usize::from(rx)].buf_addr(head),
                u64::from(len),
            ));
        }
    }
    want.extend([rx, tx].map(|q| a.used_ring_addr(q) / 4096));
    wait_until(
        T,
        "the second pair's buffers and used rings to be marked",
        || want.is_subset(&log.marked()).then_some(()),
    );
}

/// A region the frontend adds while it logs (ADD_MEM_REG after SET_LOG_BASE, as when memory
/// is hot-plugged during a migration) is logged too: frames the switch writes into RX buffers
/// there mark the pages of their guest addresses, and no other page of the region.
#[test]
fn a_region_added_while_logging_is_logged_too() {
    const EXTRA_LEN: u64 = 2 << 20;
    let s = Setup::new("dirtylog-added", &[("br0", &["a", "b"])], 1);
    let migrating = VmOptions {
        migration: true,
        ..VmOptions::default()
    };
    // No RX buffer in A's own memory: every frame goes to the added region.
    let mut a = TestVm::connect(&s.socket("a"), mac(1), migrating);
    let mut b = s.vm("b", 2);
    s.wait_connected(&["a", "b"]);
    let log = a.start_dirty_log_of(DIRTY_LOG_LEN + EXTRA_LEN / 4096 / 8);
    let extra = memory_file(EXTRA_LEN);
    extra
        .write_all_at(&vec![PATTERN; EXTRA_LEN as usize], 0)
        .unwrap();
    a.frontend
        .add_mem_region(&VhostUserMemoryRegionInfo {
            guest_phys_addr: MEM_SIZE,
            memory_size: EXTRA_LEN,
            // The switch only uses frontend addresses to find rings; this lies far from any.
            userspace_addr: 0x7e00_0000_0000,
            mmap_offset: 0,
            mmap_handle: extra.as_raw_fd(),
        })
        .expect("ADD_MEM_REG");
    // The frontend does not wait for ADD_MEM_REG to be done; a request with a reply, handled
    // after it, makes sure it is before any buffer there is offered.
    a.frontend.get_features().expect("GET_FEATURES");
    // One 2 KiB buffer every 256 KiB of the region, the fifth across a page boundary.
    let bufs: Vec<u64> = (0..8)
        .map(|i| MEM_SIZE + i * 0x4_0000 + if i == 4 { 4096 - 100 } else { 0 })
        .collect();
    let rx = TestVm::rx(0);
    for &at in &bufs {
        a.offer_raw_chain(rx, &[(at, 2048, true)]);
    }
    let sent = frames(2, 1, bufs.len(), 3);
    for f in &sent {
        b.send(TestVm::tx(0), f);
    }
    b.kick(TestVm::tx(0));
    wait_until(T, "A's buffers in the added region to be used", || {
        (a.used_idx(rx) == bufs.len() as u16).then_some(())
    });

    // Each frame is in its buffer (the chains were offered in order), behind its header.
    let mut written = BTreeSet::new();
    for (&at, f) in bufs.iter().zip(&sent) {
        let mut got = vec![0u8; f.len()];
        extra
            .read_exact_at(&mut got, at - MEM_SIZE + HDR_LEN as u64)
            .unwrap();
        assert!(got == *f, "the frame in the buffer at {at:#x} differs");
        written.extend(pages(at, (HDR_LEN + f.len()) as u64));
    }
    let region = pages(MEM_SIZE, EXTRA_LEN);
    let used_page = a.used_ring_addr(rx) / 4096;
    let marked = wait_until(T, "the RX used ring to be marked", || {
        let m = log.marked();
        m.contains(&used_page).then_some(m)
    });
    let in_region: BTreeSet<u64> = marked
        .iter()
        .copied()
        .filter(|p| region.contains(p))
        .collect();
    assert_eq!(in_region, written, "pages of the added region marked");
    // Every page of the region whose bytes changed is marked.
    let mut now = vec![0u8; EXTRA_LEN as usize];
    extra.read_exact_at(&mut now, 0).unwrap();
    for (i, page) in now.chunks(4096).enumerate() {
        if page.iter().any(|&b| b != PATTERN) {
            let p = region.start + i as u64;
            assert!(marked.contains(&p), "page {p:#x} changed, not marked");
        }
    }
    assert_eq!(s.counter("protocol_errors", "a"), 0);
}

/// A log smaller than guest memory needs ends the connection, counted as a protocol error;
/// the switch serves the next frontend as before.
#[test]
fn a_log_too_small_for_guest_memory_is_refused() {
    let s = Setup::new("badlog", &[("br0", &["a", "b"])], 1);
    let migrating = VmOptions {
        migration: true,
        ..VmOptions::default()
    };
    let a = s.vm_with("a", 1, migrating);
    s.wait_connected(&["a"]);
    let before = s.counter("protocol_errors", "a");
    let file = memory_file(DIRTY_LOG_LEN);
    let refused = a.frontend.set_log_base(
        0,
        Some(VhostUserDirtyLogRegion {
            mmap_size: DIRTY_LOG_LEN / 2,
            mmap_offset: 0,
            mmap_handle: std::os::fd::AsRawFd::as_raw_fd(&file),
        }),
    );
    assert!(refused.is_err(), "a log for half the memory was taken");
    wait_until(T, "the protocol error to be counted", || {
        (s.counter("protocol_errors", "a") == before + 1).then_some(())
    });
    wait_until(T, "the refusal in the log", || {
        s.daemon
            .log_text()
            .contains("dirty log refused: the log is 1024 bytes")
            .then_some(())
    });
    drop(a);
    // The port takes the next frontend, and frames flow.
    let mut a = s.vm_with("a", 1, migrating);
    let mut b = s.vm("b", 2);
    s.wait_connected(&["a", "b"]);
    b.send(TestVm::tx(0), &frames(2, 1, 1, 0)[0]);
    b.kick(TestVm::tx(0));
    a.expect_frames(TestVm::rx(0), 1, T);
}
