//! The `VhostUserBackend` of one connection of a port.
//!
//! The library's handler thread does the protocol; this type answers its questions
//! (features, queue count) and forwards its events: the first time a ring becomes ready it
//! publishes the connection's rings to the [`PortHandle`], and every kick rings the port's
//! doorbell so a sleeping worker wakes. It never touches a frame.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost_user_backend::{VhostUserBackend, VringMutex};
use virtio_bindings::virtio_config::{VIRTIO_F_IN_ORDER, VIRTIO_F_VERSION_1};
use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_ANNOUNCE, VIRTIO_NET_F_GUEST_CSUM,
    VIRTIO_NET_F_GUEST_ECN, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6,
    VIRTIO_NET_F_HOST_ECN, VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6, VIRTIO_NET_F_MQ,
    VIRTIO_NET_F_MRG_RXBUF,
};
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use vm_memory::{GuestAddressSpace, GuestMemoryAtomic};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier,
};

use super::queues::VhostUserQueues;
use super::relay::Shared;
use crate::port::{Attachment, GuestMemAtomic, PortHandle};

/// Event threads the library runs per connection (see `queues_per_thread`).
const LIBRARY_THREADS: usize = 1;

/// Largest ring a frontend may ask for.
pub const MAX_QUEUE_SIZE: usize = 1024;

/// Virtio features offered to every frontend. Only what the data path implements and what
/// the handler library dispatches: no packed ring, no MTU/STATUS messages (the library
/// would drop the connection on them).
///
/// Live migration: VHOST_F_LOG_ALL (the relay maps the log, the workers mark it), and
/// GUEST_ANNOUNCE, so that a migrated guest announces its addresses itself (QEMU implements
/// the control queue that needs) and the bridge learns its new port at once.
///
/// With `offloads`, checksums and TSO both ways (`crate::offload`): the switch passes a
/// frame's header to a receiver that negotiated what it needs, and completes the checksum
/// or cuts the segments for one that did not. No UFO: QEMU 7.2 has no USO, and UFO's IP
/// fragmentation is not offered.
///
/// IN_ORDER: both paths use every queue's chains in the order the driver made them
/// available (TX chains are given back as popped, RX chains as filled, refused ones in
/// place; rings/tests.rs `chains_are_used_in_the_order_they_were_made_available`). A
/// driver that knows it, as DPDK's virtio PMD, then takes its cheaper in-order paths.
pub fn offered_features(queue_pairs: u16, offloads: bool) -> u64 {
    let mut f = (1u64 << VIRTIO_F_VERSION_1)
        | (1 << VIRTIO_NET_F_MRG_RXBUF)
        | (1 << VIRTIO_RING_F_EVENT_IDX)
        | (1 << VIRTIO_RING_F_INDIRECT_DESC)
        | (1 << VIRTIO_F_IN_ORDER)
        | (1 << VIRTIO_NET_F_GUEST_ANNOUNCE)
        | VhostUserVirtioFeatures::LOG_ALL.bits()
        | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
    if queue_pairs > 1 {
        f |= 1 << VIRTIO_NET_F_MQ;
    }
    if offloads {
        f |= OFFLOAD_FEATURES;
    }
    f
}

/// Virtio and vhost-user feature bits by name, as a frontend may negotiate them.
const FEATURE_NAMES: &[(u32, &str)] = &[
    (0, "CSUM"),
    (1, "GUEST_CSUM"),
    (5, "MAC"),
    (7, "GUEST_TSO4"),
    (8, "GUEST_TSO6"),
    (9, "GUEST_ECN"),
    (10, "GUEST_UFO"),
    (11, "HOST_TSO4"),
    (12, "HOST_TSO6"),
    (13, "HOST_ECN"),
    (14, "HOST_UFO"),
    (15, "MRG_RXBUF"),
    (16, "STATUS"),
    (17, "CTRL_VQ"),
    (21, "GUEST_ANNOUNCE"),
    (22, "MQ"),
    (26, "LOG_ALL"),
    (28, "INDIRECT_DESC"),
    (29, "EVENT_IDX"),
    (30, "PROTOCOL_FEATURES"),
    (32, "VERSION_1"),
    (34, "RING_PACKED"),
    (35, "IN_ORDER"),
];

/// Feature bits by name (`MRG_RXBUF MQ VERSION_1 ...` with `separator` " "), unknown bits
/// by number, for people: the log (separated by commas, one field), `vringctl port show`.
pub fn feature_names(bits: u64, separator: &str) -> String {
    let names: Vec<String> = (0..64u32)
        .filter(|bit| bits & (1 << bit) != 0)
        .map(|bit| match FEATURE_NAMES.iter().find(|(b, _)| *b == bit) {
            Some((_, n)) => (*n).to_owned(),
            None => format!("bit{bit}"),
        })
        .collect();
    if names.is_empty() {
        "none".to_owned()
    } else {
        names.join(separator)
    }
}

/// The checksum and segmentation features, both directions.
pub const OFFLOAD_FEATURES: u64 = (1 << VIRTIO_NET_F_CSUM)
    | (1 << VIRTIO_NET_F_GUEST_CSUM)
    | (1 << VIRTIO_NET_F_HOST_TSO4)
    | (1 << VIRTIO_NET_F_HOST_TSO6)
    | (1 << VIRTIO_NET_F_HOST_ECN)
    | (1 << VIRTIO_NET_F_GUEST_TSO4)
    | (1 << VIRTIO_NET_F_GUEST_TSO6)
    | (1 << VIRTIO_NET_F_GUEST_ECN);

/// vhost-user protocol features offered to every frontend. LOG_SHMFD and RARP bring
/// SET_LOG_BASE and SEND_RARP, which the relay answers itself (the library would panic on
/// the first with our bitmap-less memory, and drop the connection on the second).
pub fn offered_protocol_features() -> VhostUserProtocolFeatures {
    VhostUserProtocolFeatures::MQ
        | VhostUserProtocolFeatures::REPLY_ACK
        | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS
        | VhostUserProtocolFeatures::LOG_SHMFD
        | VhostUserProtocolFeatures::RARP
}

/// Backend state of one connection. A new one is made for every connection.
pub struct NetBackend {
    port: Arc<PortHandle>,
    queue_pairs: u16,
    offloads: bool,
    /// Guest memory as the workers see it: the library's mappings, shown only once the
    /// memory fence guards them (see [`Self::update_memory`]).
    mem: GuestMemAtomic,
    acked_features: Arc<AtomicU64>,
    /// The TX rings' kick fds and the migration state, filled by the connection's relay.
    shared: Shared,
    published: AtomicBool,
    /// Set once the connection is gone; serialises attaching against [`Self::close`], so a
    /// kick handled late by the library's event thread cannot attach a dead connection.
    closed: Mutex<bool>,
    exit_notifiers: Mutex<Vec<EventNotifier>>,
    /// The library's exit events, made with the backend: the library asks for them while
    /// setting up the connection, and a thread without one could never be stopped.
    exit_events: Mutex<Vec<(EventConsumer, EventNotifier)>>,
    leaked_exit_fds: Mutex<Vec<RawFd>>,
}

impl NetBackend {
    /// A backend for one connection, with every file descriptor it will need made now: out
    /// of descriptors, this fails (and the connection is refused) instead of leaving the
    /// library with a thread it cannot stop. It offers `queue_pairs`, and offloads if
    /// `offloads`. `mem` is the workers' view of guest memory, not the one the library
    /// maps into.
    pub fn new(
        port: Arc<PortHandle>,
        (queue_pairs, offloads): (u16, bool),
        mem: GuestMemAtomic,
        shared: Shared,
    ) -> io::Result<NetBackend> {
        let mut exit_events = Vec::new();
        let mut exit_notifiers = Vec::new();
        for _ in 0..LIBRARY_THREADS {
            let (consumer, notifier) = new_event_consumer_and_notifier(EventFlag::NONBLOCK)?;
            exit_notifiers.push(notifier.try_clone()?);
            exit_events.push((consumer, notifier));
        }
        Ok(NetBackend {
            port,
            queue_pairs,
            offloads,
            mem,
            acked_features: Arc::new(AtomicU64::new(0)),
            shared,
            published: AtomicBool::new(false),
            closed: Mutex::new(false),
            exit_notifiers: Mutex::new(exit_notifiers),
            exit_events: Mutex::new(exit_events),
            leaked_exit_fds: Mutex::new(Vec::new()),
        })
    }

    /// Features acknowledged by the frontend so far.
    pub fn acked_features(&self) -> u64 {
        self.acked_features.load(Ordering::Relaxed)
    }

    /// Whether this connection's rings were handed to the workers.
    pub fn published(&self) -> bool {
        self.published.load(Ordering::Acquire)
    }

    /// The exit-event consumer fds this connection handed to the library, which registers
    /// them in its epoll with `into_raw_fd()` and never closes them (vhost-user-backend
    /// 0.24). The connection closes them once the library's handler is gone.
    pub fn take_leaked_exit_fds(&self) -> Vec<RawFd> {
        std::mem::take(
            &mut *self
                .leaked_exit_fds
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        )
    }

    /// Withdraws this connection's rings from the workers for good: after this returns, no
    /// late event can attach them again.
    pub fn close(&self) {
        *self.closed.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.port.detach();
    }

    /// Withdraws this connection's rings from the workers for good, its link still up:
    /// another process carries the connection on. Once this returns, no worker of this
    /// process is in a burst on them or starts one.
    pub fn close_for_handover(&self) {
        *self.closed.lock().unwrap_or_else(|e| e.into_inner()) = true;
        if let Some(attachment) = self.port.withdraw() {
            if let Attachment::VhostUser(queues) = &*attachment {
                queues.stop_all();
            }
        }
    }

    /// Stops the library's event thread(s) of this connection.
    pub fn signal_exit(&self) {
        for n in self
            .exit_notifiers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            let _ = n.notify();
        }
    }
}

impl VhostUserBackend for NetBackend {
    type Bitmap = ();
    type Vring = VringMutex<GuestMemoryAtomic<crate::frame::FrameMem>>;

    fn num_queues(&self) -> usize {
        2 * usize::from(self.queue_pairs)
    }

    fn max_queue_size(&self) -> usize {
        MAX_QUEUE_SIZE
    }

    fn features(&self) -> u64 {
        offered_features(self.queue_pairs, self.offloads)
    }

    fn acked_features(&self, features: u64) {
        self.acked_features.store(features, Ordering::Relaxed);
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        offered_protocol_features()
    }

    fn set_event_idx(&self, _enabled: bool) {
        // Each Queue carries its own event_idx flag, set by the handler.
    }

    fn update_memory(&self, mem: GuestMemAtomic) -> io::Result<()> {
        // The library mapped a new memory table into its own `mem`, which no code of ours
        // reads: the workers get it, in their next burst, once every region of it is registered with
        // the memory fence. A frontend that shrinks a file of it then takes only its own
        // connection down.
        let next = (*mem.memory()).clone();
        self.shared
            .fence
            .publish(next, &self.mem)
            .map_err(io::Error::other)
    }

    fn queues_per_thread(&self) -> Vec<u64> {
        // One library thread watches every kick fd of this connection.
        const _: () = assert!(LIBRARY_THREADS == 1);
        vec![(1u64 << self.num_queues()) - 1]
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        // Made in `new`, one per thread of `queues_per_thread`: never None.
        let (consumer, notifier) = self
            .exit_events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop()?;
        self.leaked_exit_fds
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(consumer.as_raw_fd());
        Some((consumer, notifier))
    }

    fn stop_vring(&self, _queue_index: u32) -> io::Result<()> {
        // Workers hold the vring lock for a whole burst and check `ready` under it, and the
        // handler cleared `ready` under that lock before calling us: no chain is in flight.
        Ok(())
    }

    fn handle_event(
        &self,
        device_event: u16,
        _evset: EventSet,
        vrings: &[Self::Vring],
        _thread_id: usize,
    ) -> io::Result<()> {
        // Called when a ring becomes ready and enabled, and on every RX kick.
        if !self.published.load(Ordering::Acquire) {
            let closed = self.closed.lock().unwrap_or_else(|e| e.into_inner());
            if *closed {
                return Ok(());
            }
            let attachment = Attachment::VhostUser(VhostUserQueues::new(
                vrings.to_vec(),
                self.mem.clone(),
                self.acked_features.clone(),
                self.shared.clone(),
            ));
            self.port.attach(Arc::new(attachment));
            self.published.store(true, Ordering::Release);
            tracing::info!(
                port = %self.port.name(),
                features = %feature_names(self.acked_features(), ","),
                queue_pairs_offered = self.queue_pairs,
                "port rings ready"
            );
        } else if device_event % 2 == 1 {
            // A TX ring (2i+1) started and enabled again: its worker adds the ring's kick fd
            // to what it waits on. (The kicks themselves never come here: the relay keeps
            // TX kick fds from the library, see `kicks`.) RX kicks (new receive buffers) need
            // no worker: frames are never held back waiting for buffers.
            self.port.ring_doorbell();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn features_include_protocol_features_and_mq_only_when_multiqueue() {
        let single = offered_features(1, true);
        assert_ne!(
            single & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits(),
            0
        );
        assert_eq!(single & (1 << VIRTIO_NET_F_MQ), 0);
        assert_ne!(offered_features(2, true) & (1 << VIRTIO_NET_F_MQ), 0);
        assert_eq!(single & OFFLOAD_FEATURES, OFFLOAD_FEATURES);
        assert_eq!(offered_features(1, false) & OFFLOAD_FEATURES, 0);
        assert_eq!(offered_features(1, false) | OFFLOAD_FEATURES, single);
        for bit in [
            VIRTIO_F_VERSION_1,
            VIRTIO_NET_F_MRG_RXBUF,
            VIRTIO_RING_F_EVENT_IDX,
            VIRTIO_RING_F_INDIRECT_DESC,
            VIRTIO_F_IN_ORDER,
            VIRTIO_NET_F_GUEST_ANNOUNCE,
        ] {
            assert_ne!(single & (1 << bit), 0, "bit {bit}");
        }
        assert_ne!(single & VhostUserVirtioFeatures::LOG_ALL.bits(), 0);
    }

    #[test]
    fn a_kick_handled_after_close_does_not_attach_the_dead_connection() {
        let port = Arc::new(PortHandle::new(1, "vm1", 1));
        let mem = GuestMemoryAtomic::new(crate::frame::FrameMem::new());
        let live = NetBackend::new(
            port.clone(),
            (1, true),
            mem.clone(),
            crate::vhost_user::relay::Shared::quiet(2),
        )
        .unwrap();
        live.handle_event(0, EventSet::IN, &[], 0).unwrap();
        assert!(port.is_ready() && live.published());
        live.close();
        assert!(!port.is_ready());

        let late = NetBackend::new(
            port.clone(),
            (1, true),
            mem,
            crate::vhost_user::relay::Shared::quiet(2),
        )
        .unwrap();
        late.close();
        late.handle_event(0, EventSet::IN, &[], 0).unwrap();
        assert!(!port.is_ready(), "attached after close");
        assert!(!late.published());
    }

    #[test]
    fn protocol_features_include_only_messages_the_library_or_the_relay_answers() {
        let p = offered_protocol_features();
        for bad in [
            VhostUserProtocolFeatures::MTU,
            VhostUserProtocolFeatures::STATUS,
            VhostUserProtocolFeatures::INFLIGHT_SHMFD,
            VhostUserProtocolFeatures::INBAND_NOTIFICATIONS,
        ] {
            assert!(!p.contains(bad), "{bad:?}");
        }
        // Answered by the relay, never by the library.
        assert!(p.contains(VhostUserProtocolFeatures::LOG_SHMFD));
        assert!(p.contains(VhostUserProtocolFeatures::RARP));
        assert!(p.contains(VhostUserProtocolFeatures::MQ));
        assert!(p.contains(VhostUserProtocolFeatures::REPLY_ACK));
        assert!(p.contains(VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS));
    }
}
