//! Memory hotplug and live memory-table changes under traffic: SET_MEM_TABLE sent again,
//! ADD_MEM_REG and REM_MEM_REG of an extra region, on the sending and on the receiving VM,
//! between and during bursts. Frames cross intact with zero loss, no protocol error is
//! counted, and the old mappings are released (no mapping is kept, none is used after
//! being unmapped: the workers hold the memory snapshot of each burst until it ends).

use std::fs::File;
use std::os::fd::AsRawFd;
use std::time::Duration;

use vhost::vhost_user::VhostUserFrontend;
use vhost::{VhostBackend, VhostUserMemoryRegionInfo};
use vringswitch_tests::frontend::{TestVm, MEM_SIZE};
use vringswitch_tests::raw_frontend::memory_file;
use vringswitch_tests::setup::{Setup, T};
use vringswitch_tests::{frame, mac, wait_until, BROADCAST};

const EXTRA_LEN: u64 = 2 << 20;

/// An extra 2 MiB region of guest memory right after the VM's main memory.
fn extra_region(file: &File, n: u64) -> VhostUserMemoryRegionInfo {
    VhostUserMemoryRegionInfo {
        guest_phys_addr: MEM_SIZE + n * EXTRA_LEN,
        memory_size: EXTRA_LEN,
        // The switch only uses frontend addresses to find rings; these lie far from any.
        userspace_addr: 0x7e00_0000_0000 + n * EXTRA_LEN,
        mmap_offset: 0,
        mmap_handle: file.as_raw_fd(),
    }
}

/// Mappings of guest memory the daemon holds (test frontends' memory files are in
/// /dev/shm, named `vringswitch-test-*` or `vringswitch-raw-*`).
fn guest_mappings(pid: u32) -> usize {
    std::fs::read_to_string(format!("/proc/{pid}/maps"))
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("/dev/shm/vringswitch-"))
        .count()
}

#[test]
fn memory_tables_and_regions_change_under_traffic_without_loss() {
    let s = Setup::new("memchange", &[("br0", &["a", "b"])], 1);
    let (mut a, mut b) = (s.vm("a", 1), s.vm("b", 2));
    s.wait_connected(&["a", "b"]);
    let pid = s.daemon.pid();
    let baseline = guest_mappings(pid);
    b.send(TestVm::tx(0), &frame(BROADCAST, mac(2), 50, 0));
    a.expect_frames(TestVm::rx(0), 1, T);
    let extra: Vec<File> = (0..2).map(|_| memory_file(EXTRA_LEN)).collect();
    let mut added: Vec<Vec<VhostUserMemoryRegionInfo>> = vec![Vec::new(), Vec::new()];
    let rounds = 120u32;
    for round in 0..rounds {
        let sent: Vec<Vec<u8>> = (0..16)
            .map(|i| frame(mac(2), mac(1), 60 + i * 90, round as u8))
            .collect();
        for f in &sent[..8] {
            a.send(TestVm::tx(0), f);
        }
        // Change one VM's memory while the worker may be copying the first half.
        let (vm, which) = if round % 2 == 0 {
            (&mut a, 0)
        } else {
            (&mut b, 1)
        };
        match (round / 2) % 4 {
            0 => vm.resend_mem_table(&added[which]),
            1 => {
                let r = extra_region(&extra[which], 0);
                vm.frontend.add_mem_region(&r).expect("ADD_MEM_REG");
                added[which].push(r);
            }
            2 => vm.resend_mem_table(&added[which]),
            _ => {
                let r = added[which].pop().expect("an added region");
                vm.frontend.remove_mem_region(&r).expect("REM_MEM_REG");
            }
        }
        for f in &sent[8..] {
            a.send(TestVm::tx(0), f);
        }
        let got = b.expect_frames(TestVm::rx(0), sent.len(), T);
        for (g, f) in got.iter().zip(&sent) {
            assert!(g.frame == *f, "round {round}: a frame changed");
        }
        b.post_rx(TestVm::rx(0), sent.len(), 2048);
        a.wait_tx_done(TestVm::tx(0), T);
    }
    for port in ["a", "b"] {
        assert_eq!(s.counter("protocol_errors", port), 0, "port {port}");
        assert_eq!(s.drops(port, "bad_descriptor"), 0, "port {port}");
    }
    assert_eq!(s.counter("tx_packets", "b"), u64::from(rounds) * 16);
    // Old mappings are released: only the current tables stay mapped.
    wait_until(T, "replaced guest mappings to be unmapped", || {
        (guest_mappings(pid) <= baseline + 2).then_some(())
    });

    // Removing the region that holds a VM's rings stops its traffic, harmlessly: chains
    // are not served (nothing of the VM is reachable) and no frame reaches anyone. Giving
    // the memory back resumes it where it stopped.
    let main = a.region();
    a.frontend.remove_mem_region(&main).expect("REM_MEM_REG");
    // The frontend does not wait for REM_MEM_REG to be done; a request with a reply,
    // handled after it, makes sure it is.
    a.frontend.get_features().expect("GET_FEATURES");
    let f = frame(mac(2), mac(1), 100, 0xAA);
    a.send(TestVm::tx(0), &f);
    b.expect_nothing(TestVm::rx(0), Duration::from_millis(300));
    a.frontend.add_mem_region(&main).expect("ADD_MEM_REG");
    // A kick tells the switch to look again.
    a.send(TestVm::tx(0), &f);
    let got = b.expect_frames(TestVm::rx(0), 2, T);
    assert!(got.iter().all(|g| g.frame == f));
    assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());
    assert_eq!(s.counter("protocol_errors", "a"), 0);
    // Polling the unreachable ring was not logged, let alone once per poll.
    assert!(
        !s.daemon.log_text().contains("Iterator error"),
        "virtio-queue's per-poll errors reached the log"
    );
}
