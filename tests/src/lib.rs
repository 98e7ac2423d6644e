//! Test harness shared by the integration tests in `tests/tests/`:
//! - [`frontend`]: a VM without QEMU (shared memory, split virtqueues driven as a guest
//!   driver drives them, the vhost-user protocol through the vhost crate's `Frontend`);
//! - [`raw_frontend`]: a frontend that sends any bytes and fds, for the bad-input tests;
//! - [`daemon`]: starts the real `vringswitch` binary with a given configuration and reads
//!   its metrics;
//! - [`guest`]: real QEMU guests that ping each other, and their serial consoles;
//! - [`healthy_pair`]: two ports forwarding in lock step, the measure of harm to others;
//! - [`layout`]: the configuration a test starts a daemon with, built typed;
//! - [`packets`]: IP frames between test VMs, built by etherparse;
//! - [`process`]: the fds, threads and memory a process holds, for the leak checks;
//! - [`wait_until`]: polling with a deadline instead of sleeps.
#![deny(unsafe_code)]

pub mod api;
pub mod daemon;
pub mod frontend;
pub mod frr;
pub mod guest;
pub mod healthy_pair;
pub mod layout;
pub mod netns;
pub mod packets;
pub mod process;
pub mod raw_frontend;
pub mod setup;

use std::time::{Duration, Instant};

/// Counts of a process's resources (open fds, threads...) once transients are gone: the
/// element-wise minimum of `read` over half a second. Each /metrics request leaves the
/// daemon a socket for a moment after the reply (the client closes, the server notices
/// later), so one reading can count it; a leak stays in every reading.
pub fn settled_counts<const N: usize>(mut read: impl FnMut() -> [usize; N]) -> [usize; N] {
    let mut min = [usize::MAX; N];
    for _ in 0..10 {
        for (m, r) in min.iter_mut().zip(read()) {
            *m = (*m).min(r);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    min
}

/// Polls `cond` every few milliseconds until it returns `Some`, or panics with `what` after
/// `timeout`.
pub fn wait_until<T>(timeout: Duration, what: &str, mut cond: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = cond() {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// `prefix-PID-NANOS`: a name no other test of this run or of a concurrent run uses.
pub fn unique_name(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    )
}

/// A test frame: destination, source, an experimental EtherType, then `payload_len` bytes
/// of a pattern derived from `seed`.
pub fn frame(dst: [u8; 6], src: [u8; 6], payload_len: usize, seed: u8) -> Vec<u8> {
    let mut f = Vec::with_capacity(14 + payload_len);
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&[0x88, 0xb5]);
    f.extend((0..payload_len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)));
    f
}

/// The same frame with an 802.1Q tag of `vid` (priority `pcp`) after the MAC addresses.
pub fn tag(untagged: &[u8], vid: u16, pcp: u8) -> Vec<u8> {
    let tci = (u16::from(pcp) << 13) | vid;
    let mut f = untagged[..12].to_vec();
    f.extend_from_slice(&[0x81, 0x00]);
    f.extend_from_slice(&tci.to_be_bytes());
    f.extend_from_slice(&untagged[12..]);
    f
}

pub const BROADCAST: [u8; 6] = [0xff; 6];

/// The MAC address of test VM `n`.
pub fn mac(n: u8) -> [u8; 6] {
    [0x02, 0, 0, 0, 0, n]
}

/// Pins the calling thread to CPU 0, where the tests' own work runs, so that a busy test
/// thread never takes CPU 1 from the daemon's worker pinned there (a timing test measures
/// the switch, not the scheduler).
pub fn pin_to_cpu0() {
    let mut set = rustix::thread::CpuSet::new();
    set.set(0);
    rustix::thread::sched_setaffinity(None, &set).expect("pinning a test thread to CPU 0");
}

/// Held by each test of a binary that measures the switch's timing (delays, rates): while
/// one holds it, the others wait, so no other test's daemon has a worker on CPU 1 meanwhile.
/// (Test binaries run one after another; the tests of one binary run side by side.)
pub fn timing_alone() -> std::sync::MutexGuard<'static, ()> {
    static ALONE: std::sync::Mutex<()> = std::sync::Mutex::new(());
    ALONE
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
