//! Logging a burst's writes into guest memory while a live migration runs.
//!
//! The copies of the data path stay as they are: while a port is being migrated, the burst
//! records the guest ranges it writes frames into ([`super::WrittenRanges`], one entry per
//! buffer), and once per burst they are marked in the dirty log, as are the used ring's
//! entries and index. They are not read again out of guest memory, which the guest may
//! have changed since. (A burst that did not record, or wrote more ranges than the record
//! holds, has its used entries read back and their chains walked again instead.) A ring of
//! a port that is not migrating never comes here: the worker checks one word per burst
//! ([`crate::vhost_user::migration::MigrationState::pending`]).
//!
//! Order matters. A page is marked after it is written, so the frontend never copies a
//! page, clears its bit, and misses the write that follows. The buffers are marked before
//! the used index is published, while the driver cannot yet reuse their chains (after it,
//! a descriptor may already point at the driver's next buffer); the used index after its
//! store.

use virtio_bindings::virtio_ring::{VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};

use super::{fast, BrokenUsedRing, RingView, MAX_RX_DESCS};
use crate::frame::FrameMem;
use crate::vhost_user::migration::WriteLog;
use crate::vhost_user::split_ring::{Desc, DESC_SIZE};

const F_NEXT: u16 = VRING_DESC_F_NEXT as u16;
const F_WRITE: u16 = VRING_DESC_F_WRITE as u16;
const F_INDIRECT: u16 = VRING_DESC_F_INDIRECT as u16;

impl RingView<'_, '_> {
    /// [`Self::publish_used`], with every byte the burst wrote into guest memory marked in
    /// `log`: the buffers of the chains used, the used entries, the used index and flags.
    #[cold]
    #[inline(never)]
    pub fn publish_used_logged(&mut self, log: WriteLog<'_>) -> Result<bool, BrokenUsedRing> {
        let (old, next) = (self.queue.next_used(), self.used_next);
        let size = self.queue.size();
        let n = next.wrapping_sub(old).min(size);
        if n == 0 {
            return self.publish_used();
        }
        match self.written.take() {
            // What the burst wrote, as it wrote it.
            Some(w) if !w.overflow => {
                for &(addr, len) in &w.ranges {
                    log.log.mark(addr, len);
                }
            }
            _ => self.mark_chains_used(log, old, n),
        }
        let published = self.publish_used();
        if let Some(at) = log.used_at {
            // The entries, in at most two runs of slots (the ring wraps once at most).
            let first = u64::from(old % size);
            let run = u64::from(n).min(u64::from(size) - first);
            log.log.mark(at + 4 + 8 * first, 8 * run);
            log.log.mark(at + 4, 8 * (u64::from(n) - run));
            // Flags and index.
            log.log.mark(at, 4);
        }
        published
    }

    /// Marks the buffers of the used entries `old..old + n` by walking their chains again
    /// out of guest memory: for a burst whose writes were not recorded.
    fn mark_chains_used(&mut self, log: WriteLog<'_>, old: u16, n: u16) {
        let size = self.queue.size();
        for k in 0..n {
            let idx = old.wrapping_add(k);
            let (head, len) = match &self.split {
                Some(ring) => ring.used_entry(idx),
                None => used_entry_general(self.queue, self.view.mem(), idx).unwrap_or((0, 0)),
            };
            if len == 0 || head >= u32::from(size) {
                continue;
            }
            let mut left = u64::from(len);
            let mut each = |d: &Desc| {
                if d.flags & F_WRITE != 0 {
                    let n = left.min(u64::from(d.len));
                    log.log.mark(d.addr, n);
                    left -= n;
                }
                left > 0
            };
            match &self.split {
                Some(ring) => {
                    let mut budget = MAX_RX_DESCS;
                    fast::walk(ring, &mut self.view, head as u16, &mut budget, |_, d| {
                        each(d)
                    });
                }
                None => walk_general(self.queue, self.view.mem(), head as u16, each),
            }
        }
    }
}

/// Marks what the worker's notification switch (virtio-queue's `enable_notification` and
/// `disable_notification`) wrote in `queue`'s used ring: the flags, or with EVENT_IDX
/// `avail_event`.
pub fn log_notification_fields(queue: &Queue, log: WriteLog<'_>) {
    let Some(at) = log.used_at else {
        return;
    };
    if queue.event_idx_enabled() {
        log.log.mark(at + 4 + 8 * u64::from(queue.size()), 2);
    } else {
        log.log.mark(at, 2);
    }
}

/// The used entry in slot `idx`, read through checked accessors (general path).
fn used_entry_general(queue: &Queue, mem: &FrameMem, idx: u16) -> Option<(u32, u32)> {
    let at = queue
        .used_ring()
        .checked_add(4 + 8 * u64::from(idx % queue.size()))?;
    let [head, len]: [u32; 2] = mem.read_obj(GuestAddress(at)).ok()?;
    Some((u32::from_le(head), u32::from_le(len)))
}

/// Walks the chain at `head` through checked reads of guest memory (the general path's
/// rings do not map whole), calling `each` on every buffer descriptor until it returns
/// false. An indirect table is followed once; bounded by the table sizes.
fn walk_general(queue: &Queue, mem: &FrameMem, head: u16, mut each: impl FnMut(&Desc) -> bool) {
    let (mut table, mut len) = (queue.desc_table(), u64::from(queue.size()));
    let (mut i, mut left, mut indirect) = (u64::from(head), len, false);
    // As the data path walked it: never more descriptors than a frame's chains may have.
    for _ in 0..MAX_RX_DESCS {
        if i >= len {
            return;
        }
        let Some(at) = table.checked_add(i * DESC_SIZE as u64) else {
            return;
        };
        let Ok(raw) = mem.read_obj::<[u8; DESC_SIZE]>(GuestAddress(at)) else {
            return;
        };
        let d = Desc::parse(raw);
        if d.flags & F_INDIRECT != 0 {
            if indirect || d.flags & F_NEXT != 0 {
                return;
            }
            (table, len) = (d.addr, u64::from(d.len) / DESC_SIZE as u64);
            (i, left, indirect) = (0, len, true);
            continue;
        }
        if !each(&d) || d.flags & F_NEXT == 0 {
            return;
        }
        left -= 1;
        if left == 0 {
            return;
        }
        i = u64::from(d.next);
    }
}
