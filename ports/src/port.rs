//! What the forwarding workers see of a port.
//!
//! The control side (a vhost-user connection thread) publishes an [`Attachment`] when the
//! peer's rings become usable and withdraws it when the peer goes away; every change bumps a
//! generation number so a worker notices with one relaxed load per poll. Workers hold the
//! attachment through an `Arc`, so guest mappings stay valid for as long as a worker can
//! still touch them (RCU by reference counting): there is no use-after-unmap to guard.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::{ArcSwap, ArcSwapOption};
use vhost_user_backend::{VringMutex, VringState, VringT};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_net::VIRTIO_NET_F_MRG_RXBUF;
use virtio_queue::QueueT;
use vm_memory::GuestMemoryAtomic;
use vmm_sys_util::eventfd::EventFd;

use crate::afxdp::AfXdpQueue;
use crate::counters::PortStats;
use crate::frame::FrameMem;
use crate::tap::TapQueue;
use crate::vhost_user::kicks::TxKicks;
use crate::vhost_user::migration::MigrationState;
use crate::vhost_user::relay::Shared;

/// Stable identifier of a port for the lifetime of the daemon (never reused).
pub type PortId = u32;
/// The swappable guest memory of one connection.
pub type GuestMemAtomic = GuestMemoryAtomic<FrameMem>;
/// One virtqueue with its kick/call eventfds, shared with the vhost-user handler thread.
pub type Vring = VringMutex<GuestMemAtomic>;

/// What a port offers the workers while it can carry frames, by kind. The workers choose
/// the kind once per burst, never per frame.
pub enum Attachment {
    /// A VM's virtqueues (vhost-user).
    VhostUser(VhostUserQueues),
    /// A TAP interface's descriptor and receive buffers.
    Tap(TapQueue),
    /// An AF_XDP socket on a queue of a host interface, and its UMEM.
    AfXdp(AfXdpQueue),
}

impl Attachment {
    /// The virtio features the frontend acknowledged (vhost-user ports).
    pub fn features(&self) -> Option<u64> {
        match self {
            Attachment::VhostUser(q) => Some(q.features()),
            Attachment::Tap(_) | Attachment::AfXdp(_) => None,
        }
    }

    /// Queue pairs whose rings are all ready and enabled right now (a TAP port has one).
    pub fn active_queue_pairs(&self) -> usize {
        match self {
            Attachment::VhostUser(q) => q.active_queue_pairs(),
            Attachment::Tap(_) | Attachment::AfXdp(_) => 1,
        }
    }

    /// Queue pairs the port has (a TAP port has one).
    pub fn queue_pairs(&self) -> usize {
        match self {
            Attachment::VhostUser(q) => q.queue_pairs(),
            Attachment::Tap(_) | Attachment::AfXdp(_) => 1,
        }
    }

    /// The offloads the port's receiver takes in frames sent to it: what it is sent needing
    /// more is finished (checksummed, cut) by the switch.
    pub fn taken_offloads(&self) -> crate::offload::OffloadCaps {
        match self {
            Attachment::VhostUser(q) => q.taken_offloads(),
            Attachment::Tap(q) => q.offloads(),
            Attachment::AfXdp(_) => crate::offload::OffloadCaps::NONE,
        }
    }
}

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

/// A port as shared between its connection thread, the workers and the control plane.
pub struct PortHandle {
    id: PortId,
    name: String,
    wakers: ArcSwap<Vec<Arc<EventFd>>>,
    attachment: ArcSwapOption<Attachment>,
    generation: AtomicU64,
    connected: AtomicBool,
    connections: AtomicU64,
    protocol_errors: AtomicU64,
    stats: PortStats,
}

impl PortHandle {
    /// A port with `writers` counter slots (one per worker), and one more for the port's
    /// own thread ([`Self::own_counters`]).
    pub fn new(id: PortId, name: &str, writers: usize) -> PortHandle {
        PortHandle {
            id,
            name: name.to_string(),
            wakers: ArcSwap::from_pointee(Vec::new()),
            attachment: ArcSwapOption::empty(),
            generation: AtomicU64::new(0),
            connected: AtomicBool::new(false),
            connections: AtomicU64::new(0),
            protocol_errors: AtomicU64::new(0),
            stats: PortStats::new(writers.max(1) + 1),
        }
    }

    pub fn id(&self) -> PortId {
        self.id
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Counters of this port.
    pub fn stats(&self) -> &PortStats {
        &self.stats
    }

    /// The counter slot of the port's own thread (an AF_XDP port's monitor counts there
    /// what the kernel dropped): the last, which no worker uses.
    pub fn own_counters(&self) -> &crate::PortCounters {
        self.stats.slot(self.stats.writers() - 1)
    }

    /// Sets the wake-up eventfds of the workers that poll this port's queues. Each worker
    /// has its own, so one worker draining its eventfd never hides a wake-up from another.
    pub fn set_wakers(&self, wakers: Vec<Arc<EventFd>>) {
        self.wakers.store(Arc::new(wakers));
    }

    /// Wakes the workers of this port (a kick, an attach or a detach happened).
    pub fn ring_doorbell(&self) {
        for w in self.wakers.load().iter() {
            // A full eventfd counter (EAGAIN) still leaves it readable: nothing is lost.
            let _ = w.write(1);
        }
    }

    /// Changes whenever the attachment changes. Acquire pairs with the Release in
    /// [`Self::attach`]/[`Self::detach`] so the new attachment is visible once seen.
    #[inline]
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The current attachment, if a peer is connected and its rings were set up.
    pub fn attachment(&self) -> Option<Arc<Attachment>> {
        self.attachment.load_full()
    }

    /// Publishes the queues of a newly set-up connection.
    pub fn attach(&self, attachment: Arc<Attachment>) {
        self.attachment.store(Some(attachment));
        self.generation.fetch_add(1, Ordering::Release);
        self.ring_doorbell();
    }

    /// Withdraws the queues of a connection that went away.
    pub fn detach(&self) {
        self.attachment.store(None);
        self.generation.fetch_add(1, Ordering::Release);
        self.ring_doorbell();
    }

    /// Whether the peer's rings are set up, so that frames can be delivered to it.
    pub fn is_ready(&self) -> bool {
        self.attachment.load().is_some()
    }

    /// Records whether a frontend is connected on the socket.
    pub fn set_connected(&self, connected: bool) {
        if connected {
            self.connections.fetch_add(1, Ordering::Relaxed);
        }
        self.connected.store(connected, Ordering::Relaxed);
    }

    /// Whether a frontend is connected on the socket right now.
    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    /// How many times a frontend connected since the port was created.
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::Relaxed)
    }

    /// Counts a connection refused or ended because the frontend broke the protocol (bad
    /// message, bad memory table, messages out of order).
    pub fn note_protocol_error(&self) {
        self.protocol_errors.fetch_add(1, Ordering::Relaxed);
    }

    /// How many connections ended in a protocol error since the port was created.
    pub fn protocol_errors(&self) -> u64 {
        self.protocol_errors.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn attach_and_detach_bump_generation_and_ring() {
        let p = PortHandle::new(7, "vm1", 1);
        assert_eq!(p.id(), 7);
        let w1 = Arc::new(EventFd::new(vmm_sys_util::eventfd::EFD_NONBLOCK).unwrap());
        let w2 = Arc::new(EventFd::new(vmm_sys_util::eventfd::EFD_NONBLOCK).unwrap());
        p.set_wakers(vec![w1.clone(), w2.clone()]);
        let g0 = p.generation();
        let mem = GuestMemoryAtomic::new(FrameMem::new());
        p.attach(Arc::new(Attachment::VhostUser(VhostUserQueues::new(
            vec![],
            mem,
            Arc::new(AtomicU64::new(0)),
            crate::vhost_user::relay::Shared::quiet(0),
        ))));
        assert!(p.generation() > g0);
        assert!(p.attachment().is_some());
        assert_eq!(w1.read().unwrap(), 1);
        assert_eq!(w2.read().unwrap(), 1);
        p.detach();
        assert!(p.attachment().is_none());
        assert_eq!(w1.read().unwrap(), 1);
        assert_eq!(w2.read().unwrap(), 1);
    }

    #[test]
    fn connection_count_only_rises() {
        let p = PortHandle::new(1, "vm1", 1);
        p.set_connected(true);
        p.set_connected(false);
        p.set_connected(true);
        assert!(p.is_connected());
        assert_eq!(p.connections(), 2);
    }
}
