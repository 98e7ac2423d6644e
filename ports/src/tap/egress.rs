//! Frames sent to a TAP port: each with one `writev` straight from the source's buffers,
//! its virtio-net header and the VLAN edit as first pieces.

use super::{TapQueue, TAP_VNET_HDR};
use crate::counters::{DropReason, PortCounters};
use crate::datapath::{Egress, Scratch, SendBuilt, SendBurst, SendsAsBuilt};
use crate::frame::view::MemView;
use crate::frame::Seg;
use crate::offload::software::Outgoing;
use crate::offload::OffloadCaps;

/// A TAP port opened for a burst: the interface's MTU read once for it.
struct TapBurst<'q> {
    q: &'q TapQueue,
    /// Frames longer than the interface's MTU allows (and segments of TSO frames) are
    /// dropped, as a Linux bridge drops them.
    max_frame: u32,
}

impl<'m> SendsAsBuilt<'m> for TapBurst<'_> {
    #[inline]
    fn offloads(&self) -> OffloadCaps {
        self.q.offloads()
    }
}

impl<'m> SendBuilt<'m> for TapBurst<'_> {
    #[inline]
    fn send_built(
        &mut self,
        src: &mut MemView<'m>,
        segs: &[Seg],
        out: &Outgoing<'_>,
    ) -> Result<u32, DropReason> {
        if out.longest_on_the_wire() > self.max_frame {
            return Err(DropReason::TooBig);
        }
        let vnet = out.vnet.to_bytes(0);
        let heads = [&vnet[..TAP_VNET_HDR], out.head];
        src.write_to(self.q.fd(), &heads, segs, out.skip, out.len as usize)
            .map(|n| n.saturating_sub(TAP_VNET_HDR) as u32)
            .map_err(|e| write_failed(self.q, &e))
    }
}

impl Egress for TapQueue {
    fn egress<'m, S: SendBurst<'m>>(
        &self,
        _qp_hint: u16,
        counters: &PortCounters,
        _scratch: &mut Scratch,
        burst: S,
    ) -> Result<(), DropReason> {
        let mut port = TapBurst {
            q: self,
            max_frame: self.max_frame(),
        };
        let sent = burst.send_to(&mut port);
        counters.add_tx(0, sent.packets, sent.bytes);
        Ok(())
    }
}

/// Why a write to TAP port `q` failed, as a drop reason; an interface gone marks the port
/// failed.
fn write_failed(q: &TapQueue, e: &std::io::Error) -> DropReason {
    match e.kind() {
        // The kernel's queue for the interface is full.
        std::io::ErrorKind::WouldBlock => DropReason::NoRxBuffer,
        std::io::ErrorKind::InvalidInput => DropReason::BadDescriptor,
        // The interface is there but down (or moving to another network namespace): the
        // frame cannot go, the port stays as it is.
        _ if e.raw_os_error() == Some(libc::EIO) => DropReason::PortDown,
        _ => {
            q.mark_failed();
            DropReason::PortDown
        }
    }
}
