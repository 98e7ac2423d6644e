//! Frames the kernel sends through a TAP interface: each read with one `read` into one
//! of the port's receive buffers (its virtio-net header first), and left there for the
//! burst. Also what wakes a worker for the port (its descriptor, readable) and its status.

use std::os::fd::AsRawFd;

use super::{TapQueue, TapRead, TAP_BUFFERS, TAP_VNET_HDR};
use crate::counters::DropReason;
use crate::datapath::{
    Ingress, IngressBurst, Polled, PortStatus, ReceiveBurst, Take, Taking, WaitSet,
};
use crate::frame::view::MemView;
use crate::frame::{IngressFrame, Seg};
use crate::offload::{OffloadCaps, VnetHeader};

/// A TAP port read for a burst: receive buffers `next..end` still free.
struct TapTake<'q> {
    q: &'q TapQueue,
    view: MemView<'q>,
    next: usize,
    end: usize,
}

impl<'m> IngressBurst<'m> for TapTake<'_> {
    #[inline(always)]
    fn take(&mut self, frame: &mut IngressFrame, _segs: &mut Vec<Seg>) -> Take {
        if self.next == self.end {
            return Take::Empty;
        }
        let buffer = self.next;
        self.next += 1;
        let len = match self.q.read_frame(buffer) {
            TapRead::Frame(len) => len,
            TapRead::Empty => return Take::Empty,
            TapRead::TooLong => return Take::Dropped(DropReason::TooBig),
            TapRead::Failed(_) => {
                // The interface went away: no frame is lost that was read. The port's
                // monitor takes the port down, and up again once it is back.
                self.q.mark_failed();
                return Take::Empty;
            }
        };
        let addr = TapQueue::buffer(buffer);
        let mut hdr = [0u8; VnetHeader::LEN];
        if (len as usize) < TAP_VNET_HDR || !self.view.read(addr, &mut hdr) {
            return Take::Dropped(DropReason::BadDescriptor);
        }
        let (addr, len) = (addr + TAP_VNET_HDR as u64, len - TAP_VNET_HDR as u32);
        if !frame.fill_from_buffer(&mut self.view, addr, len) {
            return Take::Dropped(DropReason::BadDescriptor);
        }
        frame.vnet = VnetHeader::from_bytes(&hdr);
        Take::Frame
    }
}

impl Ingress for TapQueue {
    fn ingress<R: ReceiveBurst>(&self, qp: u16, burst: R) -> Polled {
        if self.failed() {
            // Its interface is gone; the port's monitor takes it down.
            return Polled::default();
        }
        let mut port = TapTake {
            q: self,
            view: MemView::new(self.mem()),
            next: 0,
            end: burst.room().min(TAP_BUFFERS),
        };
        // Every frame comes with a header, checked against what the kernel may send.
        let taking = Taking {
            mem: self.mem(),
            headers: Some(self.offloads()),
            qp,
        };
        Polled {
            taken: burst.receive_from(&mut port, taking),
            announce: None,
        }
    }

    /// The descriptor, level-triggered: readable, it ends the sleep at once.
    fn arm_wakeup(&self, _qp: u16, waits: &WaitSet<'_>) -> bool {
        let fd = self.fd().as_raw_fd();
        if self.failed() {
            // A gone interface's descriptor stays readable (an error): not waited on.
            waits.forget(fd);
        } else {
            waits.wake_while_readable(fd);
        }
        false
    }
}

impl PortStatus for TapQueue {
    fn taken_offloads(&self) -> OffloadCaps {
        self.offloads()
    }
}
