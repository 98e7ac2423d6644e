//! What the workers see of a connected VM: its virtqueues, its memory, the features it
//! acknowledged, and what its relay shares (TX kicks, migration state). Its data path is
//! in [`super::ingress`] and [`super::egress`].

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use vhost_user_backend::{VringState, VringT};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_net::VIRTIO_NET_F_MRG_RXBUF;
use virtio_queue::QueueT;

use super::kicks::TxKicks;
use super::migration::{MigrationState, LOGGING};
use super::relay::Shared;
use super::rings::{log_notification_fields, BrokenUsedRing, RingView};
use crate::datapath::PortStatus;
use crate::offload::OffloadCaps;
use crate::port::{GuestMemAtomic, Vring};

/// The queues of a connected vhost-user peer, as handed to the workers.
pub struct VhostUserQueues {
    /// All virtqueues of the connection: `2 * i` is RX (switch to VM), `2 * i + 1` is TX.
    pub vrings: Vec<Vring>,
    /// Guest memory of this connection; replaced in place on SET_MEM_TABLE.
    pub mem: GuestMemAtomic,
    features: Arc<AtomicU64>,
    /// The kick fds of the TX rings, which the library never sees.
    tx_kicks: Arc<TxKicks>,
    /// The dirty log and announcements of a live migration.
    migration: Arc<MigrationState>,
    /// Per vring: whether its queue was lined up with its used ring since it was last seen
    /// stopped (see [`Self::serviceable`]). Only touched under that vring's lock.
    lined_up: Box<[AtomicBool]>,
}

impl VhostUserQueues {
    /// Creates an attachment; `features` is updated by the connection on SET_FEATURES, and
    /// `shared` by its relay (TX kick fds on SET_VRING_KICK, migration state).
    pub fn new(
        vrings: Vec<Vring>,
        mem: GuestMemAtomic,
        features: Arc<AtomicU64>,
        shared: Shared,
    ) -> VhostUserQueues {
        let lined_up = vrings.iter().map(|_| AtomicBool::new(false)).collect();
        VhostUserQueues {
            vrings,
            mem,
            features,
            tx_kicks: shared.kicks,
            migration: shared.migration,
            lined_up,
        }
    }

    /// The connection's live-migration state: [`MigrationState::pending`] once per burst.
    #[inline(always)]
    pub fn migration(&self) -> &Arc<MigrationState> {
        &self.migration
    }

    /// Calls `f` with the kick eventfd of TX ring `ring`, if the frontend gave one: the fd a
    /// sleeping worker waits on. Open for the duration of the call.
    pub fn with_tx_kick(&self, ring: usize, f: impl FnOnce(std::os::fd::RawFd)) {
        self.tx_kicks.with(ring, f);
    }

    /// Whether vring `i`, whose state `st` the caller holds locked, may be served now: it is
    /// ready (set up and started) and enabled.
    ///
    /// The first time a queue is seen ready after it was set up (or seen stopped), its next
    /// available index is moved to its used ring's index, as DPDK's vhost library does when
    /// the two differ. The frontend's SET_VRING_BASE is not trusted for this: DPDK's
    /// virtio_user sends 0 when it reconnects to a restarted switch, whatever its rings hold.
    /// Starting from 0 would serve stale chains again, or, when the driver's index happens to
    /// lie at or just past 0, nothing at all: the ring would look empty for good.
    ///
    /// Every worker access to a vring goes through here, so no chain is served before.
    #[inline]
    pub fn serviceable(&self, i: usize, st: &mut VringState<GuestMemAtomic>) -> bool {
        let Some(lined_up) = self.lined_up.get(i) else {
            return false;
        };
        let queue = st.get_queue_mut();
        if !queue.ready() {
            lined_up.store(false, Ordering::Relaxed);
            return false;
        }
        if !lined_up.load(Ordering::Relaxed) {
            // The used index as the library read it from the ring at SET_VRING_ADDR; only
            // the workers move it after that, and none has served this queue yet.
            let used = queue.next_used();
            queue.set_next_avail(used);
            lined_up.store(true, Ordering::Relaxed);
        }
        st.is_enabled()
    }

    /// The virtio features the frontend acknowledged.
    #[inline]
    pub fn features(&self) -> u64 {
        // Relaxed: features are set during the handshake, before the rings are enabled, and
        // the vring lock the worker takes next orders everything after it.
        self.features.load(Ordering::Relaxed)
    }

    /// Length of the virtio-net header on this connection's rings.
    #[inline]
    pub fn hdr_len(&self) -> usize {
        virtio_net_hdr_len(self.features())
    }

    /// The offloads the VM may use in the frames it sends (its TX ring).
    #[inline]
    pub fn sent_offloads(&self) -> crate::offload::OffloadCaps {
        crate::offload::OffloadCaps::sent_by_guest(self.features())
    }

    /// The offloads the VM takes in the frames it receives (its RX ring).
    #[inline]
    pub fn taken_offloads(&self) -> crate::offload::OffloadCaps {
        crate::offload::OffloadCaps::taken_by_guest(self.features())
    }

    /// Whether mergeable RX buffers were negotiated.
    #[inline]
    pub fn mrg_rxbuf(&self) -> bool {
        self.features() & (1 << VIRTIO_NET_F_MRG_RXBUF) != 0
    }

    /// Stops every ring for good in this process, once any burst on it has ended: each is
    /// marked not ready under its lock, which every worker holds for a whole burst and
    /// under which it checks readiness first ([`Self::serviceable`]). After this returns,
    /// no worker here touches the rings again, and another process may take them over.
    pub fn stop_all(&self) {
        for v in &self.vrings {
            v.get_mut().get_queue_mut().set_ready(false);
        }
    }

    /// Number of queue pairs whose two rings are both ready and enabled right now.
    pub fn active_queue_pairs(&self) -> usize {
        self.vrings
            .chunks_exact(2)
            .filter(|pair| {
                pair.iter().all(|v| {
                    let st = v.get_ref();
                    st.get_queue().ready() && st.is_enabled()
                })
            })
            .count()
    }

    /// Number of queue pairs the connection has rings for.
    #[inline]
    pub fn queue_pairs(&self) -> usize {
        self.vrings.len() / 2
    }
}

/// Size of `struct virtio_net_hdr` for a feature set: 12 bytes with VERSION_1 or
/// MRG_RXBUF (it carries `num_buffers`), 10 bytes for a legacy device without it.
pub fn virtio_net_hdr_len(features: u64) -> usize {
    if features & ((1 << VIRTIO_F_VERSION_1) | (1 << VIRTIO_NET_F_MRG_RXBUF)) != 0 {
        12
    } else {
        10
    }
}

impl PortStatus for VhostUserQueues {
    fn queue_pairs(&self) -> usize {
        VhostUserQueues::queue_pairs(self)
    }

    fn active_queue_pairs(&self) -> usize {
        VhostUserQueues::active_queue_pairs(self)
    }

    fn taken_offloads(&self) -> OffloadCaps {
        VhostUserQueues::taken_offloads(self)
    }

    fn features(&self) -> Option<u64> {
        Some(VhostUserQueues::features(self))
    }
}

/// Publishes the used entries of ring `index` of the VM whose queues are `att`, logging
/// the burst's writes first when `pending` (the burst's one look at the migration state)
/// says a migration logs them.
#[inline(always)]
pub(super) fn publish(
    att: &VhostUserQueues,
    index: usize,
    ring: &mut RingView<'_, '_>,
    pending: u32,
) -> Result<bool, BrokenUsedRing> {
    if pending & LOGGING == 0 {
        ring.publish_used()
    } else {
        publish_logged(att.migration(), index, ring)
    }
}

/// [`publish`] while a migration logs the VM's writes.
#[cold]
#[inline(never)]
pub(super) fn publish_logged(
    migration: &MigrationState,
    index: usize,
    ring: &mut RingView<'_, '_>,
) -> Result<bool, BrokenUsedRing> {
    match migration.active_log() {
        Some(log) => ring.publish_used_logged(log.for_ring(index)),
        None => ring.publish_used(),
    }
}

/// Marks what switching a TX ring's notifications on or off wrote into guest memory.
#[cold]
#[inline(never)]
pub(super) fn log_notification(att: &VhostUserQueues, ring: usize, queue: &virtio_queue::Queue) {
    if let Some(log) = att.migration().active_log() {
        log_notification_fields(queue, log.for_ring(ring));
    }
}

#[cfg(test)]
mod tests {
    use vm_memory::GuestMemoryAtomic;

    use super::*;
    use crate::frame::FrameMem;

    #[test]
    fn header_length_follows_features() {
        assert_eq!(virtio_net_hdr_len(0), 10);
        assert_eq!(virtio_net_hdr_len(1 << VIRTIO_F_VERSION_1), 12);
        assert_eq!(virtio_net_hdr_len(1 << VIRTIO_NET_F_MRG_RXBUF), 12);
    }

    #[test]
    fn a_queue_is_lined_up_with_its_used_ring_once_per_start() {
        let mem = GuestMemoryAtomic::new(FrameMem::new());
        let vring = Vring::new(mem.clone(), 256).unwrap();
        let att = VhostUserQueues::new(
            vec![vring],
            mem,
            Arc::new(AtomicU64::new(0)),
            crate::vhost_user::relay::Shared::quiet(1),
        );
        let v = &att.vrings[0];
        let serviceable = || att.serviceable(0, &mut v.get_mut());
        let next_avail = || v.get_ref().get_queue().next_avail();
        // Not started yet: not served, nothing moved.
        v.set_queue_next_avail(3);
        assert!(!serviceable());
        assert_eq!(next_avail(), 3);
        // Started from base 0 with history in the used ring: served from the used index.
        v.set_queue_next_avail(0);
        v.set_queue_next_used(65530);
        v.set_queue_ready(true);
        v.set_enabled(true);
        assert!(serviceable());
        assert_eq!(next_avail(), 65530);
        // Only once: chains taken since are not handed out again.
        v.set_queue_next_avail(65533);
        assert!(serviceable());
        assert_eq!(next_avail(), 65533);
        // Disabled (SET_VRING_ENABLE 0): not served, and not lined up again.
        v.set_enabled(false);
        assert!(!serviceable());
        assert_eq!(next_avail(), 65533);
        v.set_enabled(true);
        // Stopped (GET_VRING_BASE) and started again: lined up again.
        v.set_queue_ready(false);
        assert!(!serviceable());
        v.set_queue_next_avail(0);
        v.set_queue_next_used(7);
        v.set_queue_ready(true);
        assert!(serviceable());
        assert_eq!(next_avail(), 7);
        // A vring the attachment does not have is never served.
        assert!(!att.serviceable(1, &mut v.get_mut()));
    }
}
