//! The contract between the forwarding engine and a port kind's data path, as Open
//! vSwitch's `netdev_class` is for its providers: each kind fills in a small batch
//! interface, and the engine (`switch`) names no kind.
//!
//! Sending, a burst at a time: the engine asks the destination's kind to open the port
//! for a burst ([`Egress::egress`]: a VM's RX ring locked, an AF_XDP TX ring taken), hands
//! it every frame of the burst meant for it ([`EgressBurst::send`], or, for a frame the
//! offloads finished, [`SendBuilt::send_built`] on what [`EgressBurst::built`] lends), and
//! the kind closes the burst (used entries published and the VM notified once, the kernel
//! woken once). What is sent (VLAN edits, offload decisions, captures, counters of drops
//! the engine decides) stays the engine's: the per-frame loop is written once, in the
//! engine, over this trait.
//!
//! Receiving, a burst at a time: the engine asks the source's kind to open one of its
//! queues ([`Ingress::ingress`]: a VM's TX ring locked, an AF_XDP RX ring's frames taken)
//! and take frames into the engine's burst one by one ([`IngressBurst::take`]), each in
//! the memory it lies in. The engine decides each frame as it is taken, delivers the
//! burst, and the kind gives back what it took (used entries published and the VM
//! notified once, the UMEM frames refilled). What a burst may hold, how frames are
//! decided and counted, stays the engine's: its loop is written once, over this trait.
//!
//! Sleeping: before an idle worker sleeps, each kind says what wakes it for a queue
//! ([`Ingress::arm_wakeup`]: a VM's kick eventfd, a TAP's descriptor) and whether work
//! came meanwhile; after, [`Ingress::disarm_wakeup`].
//!
//! Everything is generic, chosen by a `match` on the port's kind once per burst (the one
//! in [`crate::port::Attachment::visit`]): no call through a vtable per frame.

use std::os::fd::RawFd;

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vringswitch_wire::ethernet::MacAddr;

use crate::counters::{DropReason, PortCounters};
use crate::frame::view::MemView;
use crate::frame::{FrameEdit, FrameMem, IngressFrame, Seg};
use crate::offload::software::Outgoing;
use crate::offload::OffloadCaps;
use crate::vhost_user::rings::{RxScratch, WrittenRanges};

/// A port opened for one burst of frames sent to it.
pub trait EgressBurst<'m> {
    /// The offloads the receiver takes: a frame needing more is finished by the switch
    /// (its checksum completed, its segments cut) and given to [`SendBuilt::send_built`].
    fn offloads(&self) -> OffloadCaps;

    /// The port as the out-of-line path for frames the offloads build sees it. Borrowed
    /// apart from `self`, so that `self` never leaves the engine's inlined loop and its
    /// fields stay in registers: a port handed whole to that path lives in memory and is
    /// read again for every frame (11 instructions a frame at 64 B, callgrind).
    fn built(&mut self) -> Self::Built<'_>;

    /// What [`Self::built`] lends.
    type Built<'p>: SendBuilt<'m>
    where
        Self: 'p;

    /// Writes the `len`-byte frame in `segs` of the source memory seen by `src`, changed by
    /// `edit`, with nothing left to do for the receiver. Returns the length written.
    fn send(
        &mut self,
        src: &mut MemView<'m>,
        segs: &[Seg],
        len: u32,
        edit: &FrameEdit,
    ) -> Result<u32, DropReason>;
}

/// A port opened for a burst, as it takes the frames the offloads built.
pub trait SendBuilt<'m> {
    /// Writes `out`, a frame the offloads built from the frame in `segs` of the source
    /// memory (its virtio-net header, headers from the switch, a range of the source
    /// frame). Returns the length written.
    fn send_built(
        &mut self,
        src: &mut MemView<'m>,
        segs: &[Seg],
        out: &Outgoing<'_>,
    ) -> Result<u32, DropReason>;
}

impl<'m, T: SendBuilt<'m>> SendBuilt<'m> for &mut T {
    #[inline(always)]
    fn send_built(
        &mut self,
        src: &mut MemView<'m>,
        segs: &[Seg],
        out: &Outgoing<'_>,
    ) -> Result<u32, DropReason> {
        (**self).send_built(src, segs, out)
    }
}

/// [`EgressBurst::send`] for a kind whose every frame goes out as one the offloads could
/// have built: the frame as it is, changed by `edit`.
#[inline(always)]
pub fn send_as_built<'m, P: SendBuilt<'m>>(
    port: &mut P,
    src: &mut MemView<'m>,
    segs: &[Seg],
    len: u32,
    edit: &FrameEdit,
) -> Result<u32, DropReason> {
    let out = Outgoing::edited(len, edit).ok_or(DropReason::BadDescriptor)?;
    port.send_built(src, segs, &out)
}

/// A port opened for a burst whose every frame goes out as one the offloads could have
/// built ([`send_as_built`]: TAP, AF_XDP, VXLAN): it fills in [`SendBuilt`] and says which
/// offloads its receiver takes, and is an [`EgressBurst`] by that.
pub trait SendsAsBuilt<'m>: SendBuilt<'m> {
    fn offloads(&self) -> OffloadCaps;
}

impl<'m, T: SendsAsBuilt<'m>> EgressBurst<'m> for T {
    #[inline(always)]
    fn offloads(&self) -> OffloadCaps {
        SendsAsBuilt::offloads(self)
    }

    type Built<'p>
        = &'p mut T
    where
        T: 'p;

    #[inline(always)]
    fn built(&mut self) -> &mut T {
        self
    }

    #[inline(always)]
    fn send(
        &mut self,
        src: &mut MemView<'m>,
        segs: &[Seg],
        len: u32,
        edit: &FrameEdit,
    ) -> Result<u32, DropReason> {
        send_as_built(self, src, segs, len, edit)
    }
}

/// The engine's side of one burst sent to a port: given the opened port, it sends every
/// frame of the burst meant for it and says how many frames and bytes were written.
pub trait SendBurst<'m> {
    fn send_to<E: EgressBurst<'m>>(self, port: &mut E) -> Sent;
}

/// Frames and bytes a burst wrote into a port.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sent {
    pub packets: u64,
    pub bytes: u64,
}

/// The sending side of a port kind.
pub trait Egress {
    /// Opens the port for one burst (`qp_hint`: the source's queue pair, for a kind with
    /// several queues), lets `burst` send into it, closes it, and counts what it took on
    /// `counters`. `Err` if the port cannot take frames now (its VM's queues are not ready,
    /// its interface is gone): nothing was sent, and the engine counts the burst's frames
    /// for the port as that drop.
    fn egress<'m, S: SendBurst<'m>>(
        &self,
        qp_hint: u16,
        counters: &PortCounters,
        scratch: &mut Scratch,
        burst: S,
    ) -> Result<(), DropReason>;
}

/// Space a worker lends the kinds for each burst they send, sized once at its start: the
/// data path never allocates.
pub struct Scratch {
    /// A VM's RX chains for one frame.
    pub(crate) rx: RxScratch,
    /// The ranges of a migrating VM's memory a burst wrote into.
    pub(crate) written: WrittenRanges,
    /// A tunnel port's packets, sent together at the burst's end.
    pub(crate) tunnel: crate::vxlan::Batch,
}

impl Scratch {
    /// Scratch for bursts of up to `burst` frames.
    pub fn new(burst: usize) -> Scratch {
        Scratch {
            rx: RxScratch::default(),
            // A frame in one buffer takes one range; a burst that needs more is marked by
            // walking its chains again.
            written: WrittenRanges::with_capacity(burst * 64),
            tunnel: crate::vxlan::Batch::default(),
        }
    }
}

/// What became of one turn of a burst taken from a port ([`IngressBurst::take`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Take {
    /// A frame was taken into the slot the engine lent.
    Frame,
    /// Nothing more to take now: the burst ends.
    Empty,
    /// Something was taken and dropped as `reason` (its buffers given back with the
    /// burst's): it took its turn, and the burst goes on.
    Dropped(DropReason),
    /// The queue cannot be read on (its ring is no longer in guest memory): counted as
    /// `reason`, and the burst ends with what it took.
    Broken(DropReason),
}

/// A port's queue opened for one burst of frames taken from it.
pub trait IngressBurst<'m> {
    /// Takes the next frame into `frame`: its segments in the memory the frames lie in
    /// (beyond one, pushed on `segs`, the burst's array), its length, its first bytes
    /// and, when headers are read ([`Taking::headers`]), its virtio-net header.
    fn take(&mut self, frame: &mut IngressFrame, segs: &mut Vec<Seg>) -> Take;
}

/// Where the frames of a burst lie, and what they may ask for.
#[derive(Clone, Copy)]
pub struct Taking<'m> {
    /// The memory the frames lie in (and stay in until the burst is delivered).
    pub mem: &'m FrameMem,
    /// `Some(offloads)`: each frame comes with its sender's virtio-net header, and may ask
    /// for these offloads. `None`: no header is read (a frame's `vnet` means nothing).
    pub headers: Option<OffloadCaps>,
    /// The queue pair the frames came in on.
    pub qp: u16,
}

/// The engine's side of one burst taken from a port: given the opened queue, it takes,
/// decides and delivers the burst's frames before the kind gives their buffers back.
pub trait ReceiveBurst {
    /// Frames the burst has room for.
    fn room(&self) -> usize;

    /// Takes frames from `port` (at most [`Self::room`] turns, fewer if its frames are
    /// to be cut into many) and delivers them. Returns the turns taken: frames, and what
    /// the kind took and dropped.
    fn receive_from<'m, I: IngressBurst<'m>>(self, port: &mut I, taking: Taking<'m>) -> usize;
}

/// What one poll of a port's queue did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Polled {
    /// Turns taken (see [`ReceiveBurst::receive_from`]).
    pub taken: usize,
    /// An address the port asks the switch to announce as its own, as if it had sent a
    /// RARP for it (a VM's frontend after a live migration).
    pub announce: Option<MacAddr>,
}

/// The receiving side of a port kind.
pub trait Ingress {
    /// Opens queue pair `qp` for one burst and lets `burst` take from it; then gives back
    /// what was taken. A queue that cannot be read now (not ready, its interface gone)
    /// gives nothing.
    fn ingress<R: ReceiveBurst>(&self, qp: u16, burst: R) -> Polled;

    /// Before the worker that polls queue pair `qp` sleeps: adds what wakes it for the
    /// queue to `waits`, and asks the peer to signal new frames. Returns whether frames
    /// came meanwhile (the worker then does not sleep).
    fn arm_wakeup(&self, qp: u16, waits: &WaitSet<'_>) -> bool;

    /// After the worker woke: the peer need no longer signal new frames on `qp`.
    fn disarm_wakeup(&self, _qp: u16) {}
}

/// What a sleeping worker waits on.
pub struct WaitSet<'e> {
    epoll: &'e Epoll,
}

impl<'e> WaitSet<'e> {
    pub fn new(epoll: &'e Epoll) -> WaitSet<'e> {
        WaitSet { epoll }
    }

    /// Wakes the worker when `fd` (an eventfd nobody reads: a VM's kick) is signalled.
    /// Edge-triggered, so a signal nobody consumes wakes it once; adding an fd already
    /// there changes nothing.
    pub fn wake_on_signal(&self, fd: RawFd) {
        let ev = EpollEvent::new(EventSet::IN | EventSet::EDGE_TRIGGERED, 1);
        let _ = self.epoll.ctl(ControlOperation::Add, fd, ev);
    }

    /// Wakes the worker while `fd` is readable (a TAP's or an AF_XDP socket's descriptor).
    pub fn wake_while_readable(&self, fd: RawFd) {
        let ev = EpollEvent::new(EventSet::IN, 2);
        let _ = self.epoll.ctl(ControlOperation::Add, fd, ev);
    }

    /// Stops waiting on `fd` (a descriptor that stays readable as an error once its
    /// interface is gone).
    pub fn forget(&self, fd: RawFd) {
        let _ = self
            .epoll
            .ctl(ControlOperation::Delete, fd, EpollEvent::default());
    }
}

/// What the control plane shows of an attached port, whatever its kind.
pub trait PortStatus {
    /// Queue pairs the port has.
    fn queue_pairs(&self) -> usize {
        1
    }

    /// Queue pairs whose queues can carry frames right now.
    fn active_queue_pairs(&self) -> usize {
        1
    }

    /// The offloads the port's receiver takes in frames sent to it: what it is sent
    /// needing more is finished (checksummed, cut) by the switch.
    fn taken_offloads(&self) -> OffloadCaps;

    /// The virtio features its peer acknowledged (vhost-user ports).
    fn features(&self) -> Option<u64> {
        None
    }

    /// How the port is attached to its interface, as a person reads it (AF_XDP ports:
    /// `native-zerocopy`, `native-copy`, `generic`).
    fn attach_mode(&self) -> Option<&'static str> {
        None
    }

    /// A tunnel port's remote ends, with their counters and the addresses behind them.
    fn remote_ends(&self) -> Option<Vec<crate::vxlan::RemoteEnd>> {
        None
    }
}

/// A port kind: its data path both ways and its status. Each kind implements it in its
/// own folder of `ports/`, and is named once, in the list of [`crate::port::Attachment`].
pub trait PortKind: Ingress + Egress + PortStatus {}

impl<T: Ingress + Egress + PortStatus> PortKind for T {}

/// Something the engine does with a port of whatever kind: [`crate::port::Attachment::visit`]
/// calls [`Self::visit`] with the port as its own type (a `match`, inlined), so that
/// everything below is generic code of that kind.
pub trait KindVisitor {
    type Out;
    fn visit<K: PortKind>(self, port: &K) -> Self::Out;
}
