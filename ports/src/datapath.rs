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
//! Everything is generic, chosen by a `match` on the port's kind once per burst: no call
//! through a vtable per frame.

use crate::counters::{DropReason, PortCounters};
use crate::frame::view::MemView;
use crate::frame::{FrameEdit, Seg};
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
}

impl Scratch {
    /// Scratch for bursts of up to `burst` frames.
    pub fn new(burst: usize) -> Scratch {
        Scratch {
            rx: RxScratch::default(),
            // A frame in one buffer takes one range; a burst that needs more is marked by
            // walking its chains again.
            written: WrittenRanges::with_capacity(burst * 64),
        }
    }
}
