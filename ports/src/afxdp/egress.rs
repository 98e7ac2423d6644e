//! Frames sent to an AF_XDP port: each copied (its VLAN edit first) into a free frame of
//! the UMEM and described on the TX ring; the ring is published and the kernel woken once
//! per burst.

use super::{AfXdpQueue, SendError, TxSide};
use crate::counters::{DropReason, PortCounters};
use crate::datapath::{Egress, Scratch, SendBuilt, SendBurst, SendsAsBuilt};
use crate::frame::view::MemView;
use crate::frame::Seg;
use crate::offload::software::Outgoing;
use crate::offload::OffloadCaps;

/// An AF_XDP port opened for a burst: its TX side taken, its UMEM seen.
struct XdpBurst<'q> {
    tx: std::sync::MutexGuard<'q, TxSide>,
    umem: MemView<'q>,
}

impl<'m> SendsAsBuilt<'m> for XdpBurst<'_> {
    #[inline]
    fn offloads(&self) -> OffloadCaps {
        OffloadCaps::NONE
    }
}

impl<'m> SendBuilt<'m> for XdpBurst<'_> {
    /// Into a free UMEM frame, sent with the burst.
    #[inline]
    fn send_built(
        &mut self,
        src: &mut MemView<'m>,
        segs: &[Seg],
        out: &Outgoing<'_>,
    ) -> Result<u32, DropReason> {
        let len = out.frame_len();
        let umem = &mut self.umem;
        self.tx
            .send(len, |at| {
                umem.gather_from(at, src, out.head, segs, out.skip, out.len as usize)
            })
            .map(|()| len)
            .map_err(|e| match e {
                SendError::Full => DropReason::NoRxBuffer,
                SendError::TooBig => DropReason::TooBig,
                SendError::BadSource => DropReason::BadDescriptor,
            })
    }
}

impl Egress for AfXdpQueue {
    fn egress<'m, S: SendBurst<'m>>(
        &self,
        _qp_hint: u16,
        counters: &PortCounters,
        _scratch: &mut Scratch,
        burst: S,
    ) -> Result<(), DropReason> {
        if self.failed() {
            return Err(DropReason::PortDown);
        }
        let mut port = XdpBurst {
            tx: self.tx(),
            umem: MemView::new(self.mem()),
        };
        port.tx.reclaim();
        let sent = burst.send_to(&mut port);
        if !port.tx.flush() {
            self.mark_failed();
        }
        counters.add_tx(0, sent.packets, sent.bytes);
        Ok(())
    }
}
