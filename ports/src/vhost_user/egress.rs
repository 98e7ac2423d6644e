//! Frames sent to a VM: one of its RX rings locked for the burst, each frame copied once
//! from the source's buffers into the VM's, the used entries published with one index
//! store and the VM notified once. While the VM migrates, the burst's writes are recorded
//! and marked in its dirty log at publish.

use vhost_user_backend::VringT;
use vm_memory::GuestAddressSpace;

use super::migration::LOGGING;
use super::queues::{publish, VhostUserQueues};
use super::rings::{RingView, RxScratch};
use crate::counters::{DropReason, PortCounters};
use crate::datapath::{Egress, EgressBurst, Scratch, SendBuilt, SendBurst};
use crate::frame::view::MemView;
use crate::frame::{FrameEdit, Seg};
use crate::offload::software::Outgoing;
use crate::offload::OffloadCaps;

/// One RX ring of a VM, locked for a burst. `RECORD`: the ranges written are recorded (the
/// VM migrates); two instances of the engine's loop, one that records and one that costs
/// nothing for it.
struct VmBurst<'r, 'q, 'm, const RECORD: bool> {
    ring: &'r mut RingView<'q, 'm>,
    scratch: &'r mut RxScratch,
    hdr_len: usize,
    mrg: bool,
    offloads: OffloadCaps,
}

/// The ring of a [`VmBurst`], lent to the offloads' out-of-line path.
struct VmBuilt<'r, 'q, 'm> {
    ring: &'r mut RingView<'q, 'm>,
    scratch: &'r mut RxScratch,
    hdr_len: usize,
    mrg: bool,
}

impl<'s, 'q, 'm, const RECORD: bool> EgressBurst<'s> for VmBurst<'_, 'q, 'm, RECORD> {
    #[inline(always)]
    fn offloads(&self) -> OffloadCaps {
        self.offloads
    }

    type Built<'p>
        = VmBuilt<'p, 'q, 'm>
    where
        Self: 'p;

    #[inline(always)]
    fn built(&mut self) -> VmBuilt<'_, 'q, 'm> {
        VmBuilt {
            ring: &mut *self.ring,
            scratch: &mut *self.scratch,
            hdr_len: self.hdr_len,
            mrg: self.mrg,
        }
    }

    #[inline(always)]
    fn send(
        &mut self,
        src: &mut MemView<'s>,
        segs: &[Seg],
        len: u32,
        edit: &FrameEdit,
    ) -> Result<u32, DropReason> {
        self.ring
            .deliver::<RECORD>(self.hdr_len, self.mrg, src, segs, len, edit, self.scratch)
            .map_err(|e| e.reason)
    }
}

impl<'s> SendBuilt<'s> for VmBuilt<'_, '_, '_> {
    #[inline]
    fn send_built(
        &mut self,
        src: &mut MemView<'s>,
        segs: &[Seg],
        out: &Outgoing<'_>,
    ) -> Result<u32, DropReason> {
        self.ring
            .deliver_built(self.hdr_len, self.mrg, src, segs, out, self.scratch)
            .map_err(|e| e.reason)
    }
}

impl Egress for VhostUserQueues {
    #[inline(never)]
    fn egress<'s, S: SendBurst<'s>>(
        &self,
        qp_hint: u16,
        counters: &PortCounters,
        scratch: &mut Scratch,
        burst: S,
    ) -> Result<(), DropReason> {
        let pairs = self.queue_pairs();
        if pairs == 0 {
            return Err(DropReason::PortDown);
        }
        let dst_guard = self.mem.memory();
        let dst_mem = &*dst_guard;
        // Prefer the RX ring of the same index as the source queue pair, else ring 0.
        let preferred = 2 * (usize::from(qp_hint) % pairs);
        let mut rx_qp = preferred / 2;
        let mut st = self.vrings[preferred].get_mut();
        if !self.serviceable(preferred, &mut st) {
            drop(st);
            rx_qp = 0;
            st = self.vrings[0].get_mut();
            if !self.serviceable(0, &mut st) {
                return Err(DropReason::PortDown);
            }
        }
        // Read once, under the vring lock, for the deliveries and the publication alike.
        let pending = self.migration().pending();
        let mut ring = RingView::new(st.get_queue_mut(), dst_mem);
        let (hdr_len, mrg, offloads) = (self.hdr_len(), self.mrg_rxbuf(), self.taken_offloads());
        let Scratch { rx, written, .. } = scratch;
        // The ring stays in its burst to be published: moved back out, its copy cost 2
        // instructions a frame (callgrind).
        let notify = if pending & LOGGING != 0 {
            ring.record_writes(written);
            let mut port = VmBurst::<true> {
                ring: &mut ring,
                scratch: rx,
                hdr_len,
                mrg,
                offloads,
            };
            let sent = burst.send_to(&mut port);
            finish(self, &mut ring, rx_qp, pending, sent, counters)
        } else {
            let mut port = VmBurst::<false> {
                ring: &mut ring,
                scratch: rx,
                hdr_len,
                mrg,
                offloads,
            };
            let sent = burst.send_to(&mut port);
            finish(self, &mut ring, rx_qp, pending, sent, counters)
        };
        if notify {
            let _ = st.signal_used_queue();
        }
        Ok(())
    }
}

/// Ends a burst into RX ring `rx_qp` of the VM whose queues are `att`: publishes what it
/// wrote and counts what was delivered on `counters`. Returns whether the VM asked to be
/// notified.
#[inline(always)]
fn finish(
    att: &VhostUserQueues,
    ring: &mut RingView<'_, '_>,
    rx_qp: usize,
    pending: u32,
    sent: crate::datapath::Sent,
    counters: &PortCounters,
) -> bool {
    match publish(att, 2 * rx_qp, ring, pending) {
        Ok(notify) => {
            counters.add_tx(rx_qp, sent.packets, sent.bytes);
            notify
        }
        // The used ring is not in guest memory: nothing was delivered.
        Err(_) => {
            counters.add_drop(DropReason::BadDescriptor, sent.packets);
            false
        }
    }
}
