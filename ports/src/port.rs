//! What the forwarding workers see of a port.
//!
//! The control side (a vhost-user connection thread) publishes an [`Attachment`] when the
//! peer's rings become usable and withdraws it when the peer goes away; every change bumps a
//! generation number so a worker notices with one relaxed load per poll. Workers hold the
//! attachment through an `Arc`, so guest mappings stay valid for as long as a worker can
//! still touch them (RCU by reference counting): there is no use-after-unmap to guard.

use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::{ArcSwap, ArcSwapOption};
use vhost_user_backend::VringMutex;
use vm_memory::GuestMemoryAtomic;
use vmm_sys_util::eventfd::EventFd;
use vringswitch_config::KindSpec;

use crate::afxdp::AfXdpQueue;
use crate::counters::PortStats;
use crate::datapath::{KindVisitor, PortStatus};
use crate::frame::FrameMem;
use crate::tap::TapQueue;
use crate::vhost_user::VhostUserQueues;
use crate::vxlan::VxlanQueue;

/// Stable identifier of a port for the lifetime of the daemon (never reused).
pub type PortId = u32;
/// The swappable guest memory of one connection.
pub type GuestMemAtomic = GuestMemoryAtomic<FrameMem>;
/// One virtqueue with its kick/call eventfds, shared with the vhost-user handler thread.
pub type Vring = VringMutex<GuestMemAtomic>;

/// Defines [`Attachment`], one variant per port kind, and its dispatch: the one place the
/// kinds are listed. Each kind's name is also its variant in the schema's
/// [`vringswitch_config::KindSpec`], whose settings its `start_port` takes.
macro_rules! port_kinds {
    ($($(#[$doc:meta])* $kind:ident($queue:ty) started by $start:path,
        taken over by $take:path,)+) => {
        /// What a port offers the workers while it can carry frames, by kind. The workers
        /// choose the kind once per burst, never per frame.
        pub enum Attachment {
            $($(#[$doc])* $kind($queue),)+
        }

        impl Attachment {
            /// Runs `visitor` on the port as its own kind: the one `match` on kinds.
            #[inline(always)]
            pub fn visit<V: KindVisitor>(&self, visitor: V) -> V::Out {
                match self {
                    $(Attachment::$kind(q) => visitor.visit(q),)+
                }
            }

            /// What the control plane shows of the port.
            pub fn status(&self) -> &dyn PortStatus {
                match self {
                    $(Attachment::$kind(q) => q,)+
                }
            }
        }

        /// Starts the port `handle` names as `kind` says: its thread or monitor serves it,
        /// and attaches it to `handle` whenever it can carry frames.
        pub fn start(
            handle: Arc<PortHandle>,
            kind: &KindSpec,
        ) -> Result<Box<dyn RunningPort>, StartError> {
            match kind {
                $(KindSpec::$kind(settings) => $start(handle, settings),)+
            }
        }

        /// Carries on serving the port `handle` names, as `kind` says, from what the
        /// process before this one handed over ([`RunningPort::hand_over`]). Besides the
        /// port, says whether its peer's connection could be carried on (if not, the port
        /// serves on as after a disconnect).
        pub fn take_over(
            handle: Arc<PortHandle>,
            kind: &KindSpec,
            handed: HandedPort,
        ) -> Result<TakenOver, StartError> {
            match kind {
                $(KindSpec::$kind(settings) => $take(handle, settings, handed),)+
            }
        }
    };
}

/// What a running port hands to the process replacing this one (a hitless upgrade): bytes
/// that only its own kind writes and reads, and the descriptors they speak of.
#[derive(Debug, Default)]
pub struct HandedPort {
    pub data: Vec<u8>,
    pub fds: Vec<OwnedFd>,
}

/// A port taken over, and whether its peer's connection was carried on (the error says
/// why not).
pub type TakenOver = (Box<dyn RunningPort>, Result<(), String>);

port_kinds! {
    /// A VM's virtqueues (vhost-user).
    VhostUser(VhostUserQueues) started by crate::vhost_user::start_port,
        taken over by crate::vhost_user::take_over_port,
    /// A TAP interface's descriptor and receive buffers.
    Tap(TapQueue) started by crate::tap::start_port,
        taken over by crate::tap::take_over_port,
    /// An AF_XDP socket on a queue of a host interface, and its UMEM.
    AfXdp(AfXdpQueue) started by crate::afxdp::start_port,
        taken over by crate::afxdp::take_over_port,
    /// A VXLAN tunnel's sockets, receive buffers and remote ends.
    Vxlan(VxlanQueue) started by crate::vxlan::start_port,
        taken over by crate::vxlan::take_over_port,
}

/// A port's running side, whatever its kind: what serves it (a connection thread, an
/// interface monitor) until it is stopped.
pub trait RunningPort: Send {
    fn handle(&self) -> &Arc<PortHandle>;

    /// Stops serving the port: its peer is let go, what the port made is removed.
    fn stop(&mut self);

    /// Takes its kind's settings `settings`, which differ from those it runs with only in
    /// fields its kind lists as live ([`vringswitch_config::KindSettings::live_fields`]),
    /// while it runs. The error says why not; the port then runs as before.
    fn change(&mut self, _settings: &vringswitch_config::KindSpec) -> Result<(), String> {
        Err("this kind of port takes no change while it runs".into())
    }

    /// Why the port cannot be handed over to a new process right now, if it cannot: asked
    /// before an upgrade stops anything.
    fn handover_refusal(&self) -> Option<String> {
        Some("this kind of port is not carried over by an upgrade yet".into())
    }

    /// Lets go of the port for a new process to carry on (a hitless upgrade), closing
    /// nothing its peer would notice; the workers have stopped. An error says why not: the
    /// port then serves on as before.
    fn hand_over(&mut self) -> Result<HandedPort, String> {
        Err("this kind of port is not carried over by an upgrade yet".into())
    }
}

/// Why a port could not be started, as its kind says it.
#[derive(Debug)]
pub struct StartError(Box<dyn std::error::Error + Send + Sync>);

impl StartError {
    pub fn new(e: impl std::error::Error + Send + Sync + 'static) -> StartError {
        StartError(Box::new(e))
    }
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for StartError {}

impl Attachment {
    /// The virtio features the frontend acknowledged (vhost-user ports).
    pub fn features(&self) -> Option<u64> {
        self.status().features()
    }

    /// Queue pairs whose queues are all ready and enabled right now (a TAP port has one).
    pub fn active_queue_pairs(&self) -> usize {
        self.status().active_queue_pairs()
    }

    /// Queue pairs the port has (a TAP port has one).
    pub fn queue_pairs(&self) -> usize {
        self.status().queue_pairs()
    }

    /// The offloads the port's receiver takes in frames sent to it: what it is sent needing
    /// more is finished (checksummed, cut) by the switch.
    pub fn taken_offloads(&self) -> crate::offload::OffloadCaps {
        self.status().taken_offloads()
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
    /// Called when the port's link goes down (see [`Self::on_link_down`]).
    on_link_down: ArcSwapOption<LinkDown>,
}

/// What is done when a port's link goes down: its learnt addresses forgotten.
pub type LinkDown = Box<dyn Fn() + Send + Sync>;

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
            on_link_down: ArcSwapOption::empty(),
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

    /// Withdraws the queues of a connection that went away (its link is down), and runs
    /// what was given to [`Self::on_link_down`].
    pub fn detach(&self) {
        self.attachment.store(None);
        self.generation.fetch_add(1, Ordering::Release);
        self.ring_doorbell();
        if let Some(hook) = self.on_link_down.load().as_ref() {
            hook();
        }
    }

    /// Withdraws the queues of a connection another process carries on (a hitless
    /// upgrade): the link stays up, so nothing of [`Self::on_link_down`] runs. Returns the
    /// attachment withdrawn, which the caller stops before the other process starts.
    pub fn withdraw(&self) -> Option<Arc<Attachment>> {
        let was = self.attachment.swap(None);
        self.generation.fetch_add(1, Ordering::Release);
        self.ring_doorbell();
        was
    }

    /// Sets what is done each time the port's link goes down (the peer gone, the
    /// interface deleted): the daemon forgets the addresses its bridge learnt on it, as
    /// Linux bridges and OVS do, so that frames to them flood instead of being dropped
    /// until they age out.
    pub fn on_link_down(&self, hook: impl Fn() + Send + Sync + 'static) {
        self.on_link_down.store(Some(Arc::new(Box::new(hook))));
    }

    /// Nothing more is done when the link goes down (the port is being removed: its id may
    /// soon name another port).
    pub fn no_link_down_hook(&self) {
        self.on_link_down.store(None);
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

    /// Sets the connection and protocol error counts to the port's in the process before
    /// this one (a hitless upgrade).
    pub fn carry_counts(&self, connections: u64, protocol_errors: u64) {
        self.connections.store(connections, Ordering::Relaxed);
        self.protocol_errors
            .store(protocol_errors, Ordering::Relaxed);
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
