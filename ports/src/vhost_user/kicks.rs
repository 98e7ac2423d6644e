//! The kick eventfds of a connection's TX rings, kept for the workers alone.
//!
//! A frontend's SET_VRING_KICK hands over the eventfd it writes when it adds frames to a
//! ring. The vhost-user-backend library watches every kick fd it is given from its own event
//! thread, and reads each kick under the vring's mutex before calling the backend; on a TX
//! ring, the worker that wakes on the same kick then found that mutex held and slept on it
//! (a futex wait and wake, and a second thread woken on every kick). So the relay keeps the
//! real kick fd of each TX ring here and gives the library a stand-in eventfd nobody
//! writes: a sleeping worker watches the real one itself (edge-triggered, never read), and
//! the library's thread no longer wakes for frames. RX kicks (new receive buffers) still go
//! to the library: no worker waits for them.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::Mutex;

/// Whether ring `index` is a TX ring (driver to switch): the odd ones, `2 * pair + 1`.
pub fn is_tx_ring(index: usize) -> bool {
    index % 2 == 1
}

/// The real kick eventfds of one connection's TX rings, by ring index.
pub struct TxKicks {
    fds: Mutex<Vec<Option<OwnedFd>>>,
    /// Tells the port's workers that a kick fd changed: a sleeping worker waits on the
    /// fds it found when it fell asleep, and only looks again when woken.
    changed: Box<dyn Fn() + Send + Sync>,
}

impl std::fmt::Debug for TxKicks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TxKicks").field("fds", &self.fds).finish()
    }
}

impl TxKicks {
    /// A table for a connection of `rings` rings, with no kick fd yet; `changed` is called
    /// after each change.
    pub fn new(rings: usize, changed: impl Fn() + Send + Sync + 'static) -> TxKicks {
        TxKicks {
            fds: Mutex::new((0..rings).map(|_| None).collect()),
            changed: Box::new(changed),
        }
    }

    /// Whether ring `index`'s kick fd belongs here: a TX ring the connection has.
    pub fn keeps(&self, index: usize) -> bool {
        is_tx_ring(index) && index < self.lock().len()
    }

    /// Sets (or clears, for a frontend that will not kick) ring `index`'s kick fd, closing
    /// the one it replaces, then says so. Ignored for a ring not [kept](Self::keeps).
    ///
    /// A frontend may replace the kick fd of a ring that is running, with no stop and
    /// start around it (nothing the library reacts to): without the call, a sleeping
    /// worker would wait on the old fd until its timeout.
    pub fn set(&self, index: usize, fd: Option<OwnedFd>) {
        if !is_tx_ring(index) {
            return;
        }
        if let Some(slot) = self.lock().get_mut(index) {
            *slot = fd;
        } else {
            return;
        }
        (self.changed)();
    }

    /// Calls `f` with ring `index`'s kick fd, if it has one; the fd stays open during the
    /// call (a replacement waits for it).
    pub fn with(&self, index: usize, f: impl FnOnce(RawFd)) {
        if let Some(Some(fd)) = self.lock().get(index) {
            f(fd.as_raw_fd());
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Option<OwnedFd>>> {
        // A panic elsewhere while holding the lock leaves a table of plain values.
        self.fds.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    /// Any open descriptor will do: the table never looks at what it is.
    fn some_fd() -> OwnedFd {
        OwnedFd::from(std::fs::File::open("/dev/null").unwrap())
    }

    fn held(k: &TxKicks, index: usize) -> Option<RawFd> {
        let mut got = None;
        k.with(index, |fd| got = Some(fd));
        got
    }

    /// A table for `rings` rings, and how many changes it reported.
    fn table(rings: usize) -> (TxKicks, Arc<AtomicUsize>) {
        let changes = Arc::new(AtomicUsize::new(0));
        let c = changes.clone();
        let k = TxKicks::new(rings, move || {
            c.fetch_add(1, Ordering::Relaxed);
        });
        (k, changes)
    }

    #[test]
    fn only_tx_rings_the_connection_has_are_kept() {
        let (k, changes) = table(4);
        assert!(!k.keeps(0));
        assert!(k.keeps(1));
        assert!(!k.keeps(2));
        assert!(k.keeps(3));
        assert!(!k.keeps(5));
        k.set(0, Some(some_fd()));
        k.set(5, Some(some_fd()));
        assert_eq!(held(&k, 0), None);
        assert_eq!(held(&k, 5), None);
        assert_eq!(changes.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_kick_fd_is_replaced_and_cleared_and_each_change_reported() {
        let (k, changes) = table(2);
        assert_eq!(held(&k, 1), None);
        let a = some_fd();
        let raw_a = a.as_raw_fd();
        k.set(1, Some(a));
        assert_eq!(held(&k, 1), Some(raw_a));
        assert_eq!(changes.load(Ordering::Relaxed), 1);
        let b = some_fd();
        let raw_b = b.as_raw_fd();
        k.set(1, Some(b));
        assert_eq!(held(&k, 1), Some(raw_b));
        assert_eq!(changes.load(Ordering::Relaxed), 2);
        k.set(1, None);
        assert_eq!(held(&k, 1), None);
        assert_eq!(changes.load(Ordering::Relaxed), 3);
    }
}
