//! What a live migration shares between a connection's relay (the control path) and the
//! workers (the data path).
//!
//! The relay maps the frontend's dirty log (SET_LOG_BASE), switches logging on and off with
//! VHOST_F_LOG_ALL in SET_FEATURES, notes where each used ring is logged (the log flag and
//! address of SET_VRING_ADDR), and queues the announcement a frontend asks for with
//! SEND_RARP. A worker reads one word per burst, [`MigrationState::pending`]: zero while no
//! migration runs, so the data path pays one predictable branch for all of it.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;

use super::dirty_log::DirtyLog;

/// [`MigrationState::pending`] bit: writes into guest memory are to be logged.
pub const LOGGING: u32 = 1;
/// [`MigrationState::pending`] bit: a RARP is to be sent from the port.
pub const ANNOUNCE: u32 = 2;

/// Longest wait for workers to let go of a replaced log.
const QUIESCE_TIMEOUT: Duration = Duration::from_secs(1);
/// No used-ring logging for a ring.
const NOT_LOGGED: u64 = u64::MAX;
/// Set in [`MigrationState::announce`]'s word when a MAC waits.
const MAC_WAITING: u64 = 1 << 63;

/// The migration state of one connection.
pub struct MigrationState {
    /// [`LOGGING`] | [`ANNOUNCE`].
    pending: AtomicU32,
    /// The frontend's log, once mapped.
    log: ArcSwapOption<DirtyLog>,
    /// Per ring: the guest address its used ring is logged at, or [`NOT_LOGGED`].
    used_log: Box<[AtomicU64]>,
    /// The MAC to announce (low 48 bits) with [`MAC_WAITING`].
    announce: AtomicU64,
    /// Wakes the port's worker, asleep while the VM is idle.
    doorbell: Box<dyn Fn() + Send + Sync>,
}

impl MigrationState {
    /// The state of a connection with `rings` virtqueues: no log, nothing pending.
    /// `doorbell` wakes the port's worker for an announcement.
    pub fn new(rings: usize, doorbell: impl Fn() + Send + Sync + 'static) -> MigrationState {
        MigrationState {
            pending: AtomicU32::new(0),
            log: ArcSwapOption::empty(),
            used_log: (0..rings).map(|_| AtomicU64::new(NOT_LOGGED)).collect(),
            announce: AtomicU64::new(0),
            doorbell: Box::new(doorbell),
        }
    }

    /// What the data path has to do besides moving frames: 0 almost always. Relaxed: a
    /// worker that acts on a bit loads what it needs with Acquire.
    #[inline(always)]
    pub fn pending(&self) -> u32 {
        self.pending.load(Ordering::Relaxed)
    }

    /// The log writes go to, while logging is on.
    pub fn active_log(&self) -> Option<ActiveLog<'_>> {
        if self.pending.load(Ordering::Acquire) & LOGGING == 0 {
            return None;
        }
        Some(ActiveLog {
            log: self.log.load_full()?,
            used_log: &self.used_log,
        })
    }

    /// Installs the frontend's newest log (or none), replacing the one before, and returns
    /// once no worker marks the old one any more: the frontend syncs the old log as soon as
    /// it has the answer to SET_LOG_BASE (QEMU's log resize), and must find every mark in
    /// it. A worker holds a log for one burst's publication, microseconds; the wait is
    /// bounded anyway.
    pub fn set_log(&self, log: Option<Arc<DirtyLog>>) {
        let Some(old) = self.log.swap(log) else {
            return;
        };
        let deadline = Instant::now() + QUIESCE_TIMEOUT;
        while Arc::strong_count(&old) > 1 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_micros(50));
        }
    }

    /// Whether a log is installed.
    pub fn has_log(&self) -> bool {
        self.log.load().is_some()
    }

    /// Switches logging on or off (VHOST_F_LOG_ALL). Release: a worker that sees the bit
    /// sees the log installed before.
    pub fn set_logging(&self, on: bool) {
        if on {
            self.pending.fetch_or(LOGGING, Ordering::Release);
        } else {
            self.pending.fetch_and(!LOGGING, Ordering::Release);
        }
    }

    /// Whether logging is on.
    pub fn logging(&self) -> bool {
        self.pending.load(Ordering::Acquire) & LOGGING != 0
    }

    /// Logs the used ring of `ring` at guest address `at` (SET_VRING_ADDR with the log
    /// flag), or not at all. A ring past the connection's is ignored (the library refuses
    /// the message).
    pub fn set_used_log(&self, ring: usize, at: Option<u64>) {
        if let Some(slot) = self.used_log.get(ring) {
            slot.store(at.unwrap_or(NOT_LOGGED), Ordering::Release);
        }
    }

    /// Asks the data path to send a RARP for `mac` from the port (SEND_RARP). A second
    /// request before the first was sent replaces it.
    pub fn announce(&self, mac: [u8; 6]) {
        let mut word = [0u8; 8];
        word[..6].copy_from_slice(&mac);
        self.announce
            .store(u64::from_le_bytes(word) | MAC_WAITING, Ordering::Release);
        self.pending.fetch_or(ANNOUNCE, Ordering::Release);
        (self.doorbell)();
    }

    /// The MAC waiting to be announced, taken: a single worker gets it.
    pub fn take_announce(&self) -> Option<[u8; 6]> {
        self.pending.fetch_and(!ANNOUNCE, Ordering::AcqRel);
        let word = self.announce.swap(0, Ordering::AcqRel);
        if word & MAC_WAITING == 0 {
            return None;
        }
        let mut mac = [0u8; 6];
        mac.copy_from_slice(&word.to_le_bytes()[..6]);
        Some(mac)
    }
}

/// The log of a migration in progress, as a worker holds it for a burst.
pub struct ActiveLog<'a> {
    log: Arc<DirtyLog>,
    used_log: &'a [AtomicU64],
}

impl ActiveLog<'_> {
    /// Where the writes of a burst on ring `ring` are logged.
    pub fn for_ring(&self, ring: usize) -> WriteLog<'_> {
        let at = self
            .used_log
            .get(ring)
            .map_or(NOT_LOGGED, |a| a.load(Ordering::Acquire));
        WriteLog {
            log: &self.log,
            used_at: (at != NOT_LOGGED).then_some(at),
        }
    }
}

/// Where one ring's writes into guest memory are logged during a burst.
#[derive(Clone, Copy)]
pub struct WriteLog<'l> {
    pub log: &'l DirtyLog,
    /// The guest address the used ring is logged at, if it is (VHOST_VRING_F_LOG).
    pub used_at: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vhost_user::unlinked_file;

    #[test]
    fn nothing_is_pending_until_logging_or_an_announcement_is_asked_for() {
        let m = Arc::new(MigrationState::new(2, || {}));
        assert_eq!(m.pending(), 0);
        assert!(m.active_log().is_none());
        // Logging on without a log: nothing to mark into.
        m.set_logging(true);
        assert_eq!(m.pending(), LOGGING);
        assert!(m.active_log().is_none());
        let f = unlinked_file(4096);
        m.set_log(Some(Arc::new(DirtyLog::map(&f, 4096, 0, 1 << 20).unwrap())));
        m.set_used_log(1, Some(0x5000));
        m.set_used_log(7, Some(0x5000));
        let active = m.active_log().unwrap();
        assert_eq!(active.for_ring(0).used_at, None);
        assert_eq!(active.for_ring(1).used_at, Some(0x5000));
        assert_eq!(active.for_ring(9).used_at, None);
        // A replaced log is let go of by the workers before the frontend hears of it.
        let held = m.active_log().unwrap();
        let t0 = Instant::now();
        let replacer = std::thread::spawn({
            let m = m.clone();
            move || m.set_log(Some(Arc::new(DirtyLog::map(&f, 4096, 0, 1 << 20).unwrap())))
        });
        std::thread::sleep(Duration::from_millis(30));
        assert!(!replacer.is_finished(), "replaced while a worker marks it");
        drop((held, active));
        replacer.join().unwrap();
        assert!(t0.elapsed() < QUIESCE_TIMEOUT);
        m.set_logging(false);
        assert_eq!(m.pending(), 0);
        assert!(m.active_log().is_none());
        assert!(m.has_log());
    }

    #[test]
    fn an_announcement_is_taken_once_and_the_newest_wins() {
        let m = MigrationState::new(2, || {});
        assert_eq!(m.take_announce(), None);
        m.announce([2, 0, 0, 0, 0, 1]);
        m.announce([2, 0, 0, 0, 0, 2]);
        assert_eq!(m.pending(), ANNOUNCE);
        assert_eq!(m.take_announce(), Some([2, 0, 0, 0, 0, 2]));
        assert_eq!(m.pending(), 0);
        assert_eq!(m.take_announce(), None);
        // The all-zero MAC is a MAC like any other here (the caller refuses it).
        m.announce([0; 6]);
        assert_eq!(m.take_announce(), Some([0; 6]));
    }
}
