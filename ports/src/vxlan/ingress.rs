//! Frames from the other hosts: a burst of tunnel packets received at once into the port's
//! buffers, each checked (its sender an end of the segment, a VXLAN header of this VNI, an
//! Ethernet frame inside) and its inner frame taken where it lies. In static mode each
//! inner source address is learnt behind the end it came from.

use std::net::SocketAddrV4;

use super::remotes::{RemoteId, Remotes, Tally, Way};
use super::socket::Received;
use super::{VxlanQueue, VXLAN_BUFFER, VXLAN_BUFFERS};
use crate::counters::DropReason;
use crate::datapath::{
    Ingress, IngressBurst, Polled, PortStatus, ReceiveBurst, Take, Taking, WaitSet,
};
use crate::frame::view::MemView;
use crate::frame::{IngressFrame, Seg, MIN_FRAME_LEN};
use crate::offload::OffloadCaps;
use crate::vxlan::remotes::mac_key;
use vringswitch_wire::vxlan::{VxlanHeader, VXLAN_HEADER_LEN};

/// A tunnel port's received packets, taken one by one.
struct VxlanTake<'q> {
    q: &'q VxlanQueue,
    view: MemView<'q>,
    got: [Received; VXLAN_BUFFERS],
    next: usize,
    end: usize,
    now: u32,
    received: Tally,
}

/// Whether a tunnel packet of `len` bytes (cut by the kernel: `truncated`) from `from`,
/// whose first bytes are `header`, is one of segment `vni` from one of its `remotes`: the
/// end it came from, else why it is dropped. Its inner frame is the rest of the packet.
pub fn admit(
    remotes: &Remotes,
    vni: u32,
    from: Option<SocketAddrV4>,
    len: usize,
    truncated: bool,
    header: &[u8; VXLAN_HEADER_LEN],
) -> Result<RemoteId, DropReason> {
    let end = from
        .and_then(|f| remotes.find(*f.ip()))
        .ok_or(DropReason::UnknownVtep)?;
    if truncated || len as u64 >= VXLAN_BUFFER {
        return Err(DropReason::TooBig);
    }
    if len < VXLAN_HEADER_LEN + MIN_FRAME_LEN {
        return Err(DropReason::BadTunnel);
    }
    match VxlanHeader::new_checked(&header[..]) {
        Ok(h) if h.vni() == vni => Ok(end),
        _ => Err(DropReason::BadTunnel),
    }
}

impl VxlanTake<'_> {
    /// Checks packet `i` (in buffer `i`) and says where its inner frame lies.
    #[inline]
    fn check(&mut self, i: usize) -> Result<(u64, u32), DropReason> {
        let r = self.got[i];
        let addr = VxlanQueue::buffer(i);
        // The header to the stack, and decided on there.
        let mut hdr = [0u8; VXLAN_HEADER_LEN];
        if !self.view.read(addr, &mut hdr) {
            return Err(DropReason::BadTunnel);
        }
        let end = admit(
            &self.q.remotes,
            self.q.vni,
            r.from,
            r.len,
            r.truncated,
            &hdr,
        )?;
        self.received
            .add(&self.q.remotes, Way::Received, end, r.len as u64);
        let len = (r.len - VXLAN_HEADER_LEN) as u32;
        let at = addr + VXLAN_HEADER_LEN as u64;
        if self.q.learn {
            let mut src = [0u8; 6];
            if self.view.read(at + 6, &mut src) {
                self.q.macs.learn(mac_key(src), end, self.now);
            }
        }
        Ok((at, len))
    }
}

impl<'m> IngressBurst<'m> for VxlanTake<'_> {
    #[inline]
    fn take(&mut self, frame: &mut IngressFrame, _segs: &mut Vec<Seg>) -> Take {
        if self.next == self.end {
            return Take::Empty;
        }
        let i = self.next;
        self.next += 1;
        match self.check(i) {
            Ok((at, len)) if frame.fill_from_buffer(&mut self.view, at, len) => Take::Frame,
            Ok(_) => Take::Dropped(DropReason::BadTunnel),
            Err(reason) => Take::Dropped(reason),
        }
    }
}

impl Ingress for VxlanQueue {
    fn ingress<R: ReceiveBurst>(&self, qp: u16, burst: R) -> Polled {
        if self.failed.load(std::sync::atomic::Ordering::Relaxed) {
            return Polled::default();
        }
        let mut view = MemView::new(self.mem());
        let n = burst.room().min(VXLAN_BUFFERS);
        let bufs: [(u64, usize); VXLAN_BUFFERS] =
            std::array::from_fn(|i| (VxlanQueue::buffer(i), VXLAN_BUFFER as usize));
        let mut got = [Received::default(); VXLAN_BUFFERS];
        let end = match self.sockets.receive(&mut view, &bufs[..n], &mut got) {
            Ok(0) => return Polled::default(),
            Ok(end) => end,
            Err(e) => {
                tracing::warn!(vni = self.vni, error = %e,
                    "a VXLAN port cannot receive any more; it is left out of polling");
                self.failed
                    .store(true, std::sync::atomic::Ordering::Relaxed);
                return Polled::default();
            }
        };
        let mut port = VxlanTake {
            q: self,
            view,
            got,
            next: 0,
            end,
            now: self.now(),
            received: Tally::default(),
        };
        let taking = Taking {
            mem: self.mem(),
            headers: None,
            qp,
        };
        let taken = burst.receive_from(&mut port, taking);
        port.received.flush(&self.remotes, Way::Received);
        Polled {
            taken,
            announce: None,
        }
    }

    /// The receiving socket, level-triggered: readable, it ends the sleep at once.
    fn arm_wakeup(&self, _qp: u16, waits: &WaitSet<'_>) -> bool {
        let fd = std::os::fd::AsRawFd::as_raw_fd(&self.sockets.receiver());
        if self.failed.load(std::sync::atomic::Ordering::Relaxed) {
            waits.forget(fd);
        } else {
            waits.wake_while_readable(fd);
        }
        false
    }
}

impl PortStatus for VxlanQueue {
    /// None yet: the switch finishes a frame's checksum and segments before it is
    /// encapsulated.
    fn taken_offloads(&self) -> OffloadCaps {
        OffloadCaps::NONE
    }

    fn remote_ends(&self) -> Option<Vec<super::RemoteEnd>> {
        Some(super::remote_ends(&self.remotes, &self.macs))
    }
}
