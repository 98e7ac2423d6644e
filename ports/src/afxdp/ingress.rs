//! Frames the kernel received into an AF_XDP socket's UMEM: taken from its RX ring for a
//! burst, and given back to its fill ring once delivered. Also what wakes a worker for
//! the port (the socket, readable) and its status.

use super::{attach_name, AfXdpQueue, RxSide};
use crate::counters::DropReason;
use crate::datapath::{
    Ingress, IngressBurst, Polled, PortStatus, ReceiveBurst, Take, Taking, WaitSet,
};
use crate::frame::view::MemView;
use crate::frame::{IngressFrame, Seg};
use crate::offload::OffloadCaps;

/// The frames taken from an AF_XDP RX ring for a burst, `next..taken` not yet handed on.
struct XdpTake<'q> {
    rx: &'q RxSide,
    view: MemView<'q>,
    next: usize,
    taken: usize,
}

impl<'m> IngressBurst<'m> for XdpTake<'_> {
    #[inline(always)]
    fn take(&mut self, frame: &mut IngressFrame, _segs: &mut Vec<Seg>) -> Take {
        if self.next == self.taken {
            return Take::Empty;
        }
        let d = self.rx.frame(self.next);
        self.next += 1;
        // Checked as a guest's descriptor is: the kernel's word is not taken for it.
        if frame.fill_from_buffer(&mut self.view, d.addr, d.len) {
            Take::Frame
        } else {
            Take::Dropped(DropReason::BadDescriptor)
        }
    }
}

impl Ingress for AfXdpQueue {
    fn ingress<R: ReceiveBurst>(&self, qp: u16, burst: R) -> Polled {
        if self.failed() {
            return Polled::default();
        }
        // Held by another worker only across a topology change: its burst is nearly done.
        let Some(mut rx) = self.rx() else {
            return Polled::default();
        };
        let taken = rx.take(burst.room());
        if taken == 0 {
            return Polled::default();
        }
        let mut port = XdpTake {
            rx: &rx,
            view: MemView::new(self.mem()),
            next: 0,
            taken,
        };
        // No headers: the engine takes every frame taken here (it stops early only for
        // frames whose headers ask to be cut).
        let taking = Taking {
            mem: self.mem(),
            headers: None,
            qp,
        };
        let taken = burst.receive_from(&mut port, taking);
        // Every frame was copied out (or dropped): the kernel may receive into them again.
        rx.recycle();
        Polled {
            taken,
            announce: None,
        }
    }

    /// The socket, level-triggered: readable, it ends the sleep at once.
    fn arm_wakeup(&self, _qp: u16, waits: &WaitSet<'_>) -> bool {
        if self.failed() {
            waits.forget(self.fd());
        } else {
            waits.wake_while_readable(self.fd());
        }
        false
    }
}

impl PortStatus for AfXdpQueue {
    /// None: frames go on the wire as they are, checksums completed and segments cut.
    fn taken_offloads(&self) -> OffloadCaps {
        OffloadCaps::NONE
    }

    fn attach_mode(&self) -> Option<&'static str> {
        Some(attach_name(self.attach()))
    }
}
