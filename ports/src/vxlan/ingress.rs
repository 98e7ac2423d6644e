//! Frames from the other hosts: a burst of tunnel messages received at once into the
//! port's buffers, each packet checked (its sender an end of the segment, a VXLAN header
//! of this VNI, an Ethernet frame inside) and its inner frame taken where it lies. A
//! message may hold several packets of one sender (UDP GRO): they are taken one by one,
//! and those the burst has no room for are taken first by the next poll, which receives
//! nothing new meanwhile. In static mode each inner source address is learnt behind the
//! end it came from.

use std::net::SocketAddr;

use super::remotes::{RemoteId, Remotes, Tally, Way};
use super::socket::Received;
use super::{VxlanQueue, VXLAN_BUFFER, VXLAN_BUFFERS};
use crate::counters::DropReason;
use crate::datapath::{
    Ingress, IngressBurst, Polled, PortStatus, ReceiveBurst, Take, Taking, WaitSet,
};
use crate::frame::view::MemView;
use crate::frame::{IngressFrame, Seg, MIN_FRAME_LEN};
use crate::log_limit::LogLimiter;
use crate::offload::OffloadCaps;
use crate::vxlan::remotes::mac_key;
use vringswitch_wire::vxlan::{VxlanHeader, VXLAN_HEADER_LEN};

/// Messages received and not all taken yet: `got[next..end]`, the first of them from
/// byte `offset` on.
#[derive(Debug)]
pub struct Pending {
    pub got: [Received; VXLAN_BUFFERS],
    pub next: usize,
    pub offset: usize,
    pub end: usize,
    /// Receives that failed and may be tried again, logged at most every 10 s.
    errors: LogLimiter,
}

impl Default for Pending {
    fn default() -> Self {
        Pending {
            got: [Received::default(); VXLAN_BUFFERS],
            next: 0,
            offset: 0,
            end: 0,
            errors: LogLimiter::new(std::time::Duration::from_secs(10)),
        }
    }
}

impl Pending {
    /// Whether every packet received was taken.
    pub fn is_empty(&self) -> bool {
        self.next >= self.end.min(VXLAN_BUFFERS)
    }

    /// The next packet: its message's index, where it starts in the message, its length
    /// and whether the kernel cut it; `None` when every packet was taken.
    pub fn next_packet(&mut self) -> Option<(usize, usize, usize, bool)> {
        if self.is_empty() {
            return None;
        }
        let i = self.next;
        let r = self.got[i];
        let at = self.offset;
        let size = if r.segment > 0 {
            usize::from(r.segment)
        } else {
            r.len
        };
        let len = size.min(r.len.saturating_sub(at));
        // Each step moves on by one packet's bytes, or to the next message.
        if len == 0 || at + len >= r.len {
            self.next += 1;
            self.offset = 0;
        } else {
            self.offset = at + len;
        }
        Some((i, at, len, r.truncated && at + len >= r.len))
    }
}

/// A tunnel port's received packets, taken one by one.
struct VxlanTake<'q, 'l> {
    q: &'q VxlanQueue,
    view: MemView<'q>,
    left: &'l mut Pending,
    now: u32,
    received: Tally,
}

/// Whether a tunnel packet of `len` bytes (cut by the kernel: `truncated`) from `from`,
/// whose first bytes are `header`, is one of segment `vni` from one of its `remotes`: the
/// end it came from, else why it is dropped. Its inner frame is the rest of the packet.
pub fn admit(
    remotes: &Remotes,
    vni: u32,
    from: Option<SocketAddr>,
    len: usize,
    truncated: bool,
    header: &[u8; VXLAN_HEADER_LEN],
) -> Result<RemoteId, DropReason> {
    let end = from
        .and_then(|f| remotes.find(f.ip()))
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

impl VxlanTake<'_, '_> {
    /// Checks the `len`-byte packet at `at` in message `i` (in buffer `i`), cut by the
    /// kernel if `truncated`, and says where its inner frame lies.
    #[inline]
    fn check(
        &mut self,
        i: usize,
        at: usize,
        len: usize,
        truncated: bool,
    ) -> Result<(u64, u32), DropReason> {
        let from = self.left.got[i].from;
        let addr = VxlanQueue::buffer(i) + at as u64;
        // The header to the stack, and decided on there.
        let mut hdr = [0u8; VXLAN_HEADER_LEN];
        if len >= VXLAN_HEADER_LEN && !self.view.read(addr, &mut hdr) {
            return Err(DropReason::BadTunnel);
        }
        let end = admit(&self.q.remotes, self.q.vni, from, len, truncated, &hdr)?;
        self.received
            .add(&self.q.remotes, Way::Received, end, len as u64);
        let inner = (len - VXLAN_HEADER_LEN) as u32;
        let at = addr + VXLAN_HEADER_LEN as u64;
        if self.q.learn {
            let mut src = [0u8; 6];
            if self.view.read(at + 6, &mut src) {
                self.q.macs.learn(mac_key(src), end, self.now);
            }
        }
        Ok((at, inner))
    }
}

impl<'m> IngressBurst<'m> for VxlanTake<'_, '_> {
    #[inline]
    fn take(&mut self, frame: &mut IngressFrame, _segs: &mut Vec<Seg>) -> Take {
        let Some((i, at, len, truncated)) = self.left.next_packet() else {
            return Take::Empty;
        };
        match self.check(i, at, len, truncated) {
            Ok((at, len)) if frame.fill_from_buffer(&mut self.view, at, len) => Take::Frame,
            Ok(_) => Take::Dropped(DropReason::BadTunnel),
            Err(reason) => Take::Dropped(reason),
        }
    }
}

/// Whether a receive error means the socket cannot be read any more (else it may be tried
/// again).
fn broken(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EBADF | libc::ENOTSOCK | libc::EFAULT | libc::EINVAL)
    ) || e.kind() == std::io::ErrorKind::InvalidInput
}

impl Ingress for VxlanQueue {
    fn ingress<R: ReceiveBurst>(&self, qp: u16, burst: R) -> Polled {
        if self
            .receiving
            .failed
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            return Polled::default();
        }
        // One worker polls a port; the lock is never waited for.
        let Ok(mut left) = self.receiving.pending.try_lock() else {
            return Polled::default();
        };
        let mut view = MemView::new(self.mem());
        if left.is_empty() {
            let n = burst.room().min(VXLAN_BUFFERS);
            let bufs: [(u64, usize); VXLAN_BUFFERS] =
                std::array::from_fn(|i| (VxlanQueue::buffer(i), VXLAN_BUFFER as usize));
            let got = match self.sockets.receive(&mut view, &bufs[..n], &mut left.got) {
                Ok(0) => return Polled::default(),
                Ok(got) => got,
                Err(e) if broken(&e) => {
                    tracing::error!(vni = self.vni, error = %e,
                        "a VXLAN port's receiving socket is broken; the port is left out of \
                         polling (delete and add it again)");
                    self.receiving
                        .failed
                        .store(true, std::sync::atomic::Ordering::Relaxed);
                    return Polled::default();
                }
                Err(e) => {
                    // Passing (memory short, an error the network reported): tried again
                    // at the next poll.
                    if let Some(held) = left.errors.check() {
                        tracing::warn!(vni = self.vni, error = %e, similar_since = held,
                            "a VXLAN port could not receive; it tries again");
                    }
                    return Polled::default();
                }
            };
            (left.next, left.offset, left.end) = (0, 0, got);
        }
        let mut port = VxlanTake {
            q: self,
            view,
            left: &mut left,
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
        if self
            .receiving
            .failed
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            waits.forget(fd);
            return false;
        }
        waits.wake_while_readable(fd);
        // Packets received and not taken yet: work now.
        self.receiving
            .pending
            .try_lock()
            .is_ok_and(|left| !left.is_empty())
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

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(len: usize, segment: u16, truncated: bool) -> Received {
        Received {
            len,
            from: None,
            truncated,
            segment,
        }
    }

    #[test]
    fn joined_messages_are_taken_a_packet_at_a_time_the_last_one_shorter() {
        let mut p = Pending::default();
        p.got[0] = msg(100, 0, false);
        // Three packets of 40 bytes joined, the last one 20; cut by the kernel.
        p.got[1] = msg(100, 40, true);
        p.got[2] = msg(0, 0, false);
        p.got[3] = msg(80, 40, false);
        p.end = 4;
        let mut seen = Vec::new();
        // Bounded: one step per packet.
        for _ in 0..10 {
            match p.next_packet() {
                Some(x) => seen.push(x),
                None => break,
            }
        }
        assert_eq!(
            seen,
            [
                (0, 0, 100, false),
                (1, 0, 40, false),
                (1, 40, 40, false),
                (1, 80, 20, true),
                (2, 0, 0, false),
                (3, 0, 40, false),
                (3, 40, 40, false),
            ]
        );
        assert!(p.is_empty());
        assert_eq!(p.next_packet(), None);
    }

    #[test]
    fn a_receive_that_failed_for_want_of_memory_is_tried_again_a_bad_socket_is_not() {
        let os = std::io::Error::from_raw_os_error;
        for e in [
            libc::ENOMEM,
            libc::ENOBUFS,
            libc::ECONNREFUSED,
            libc::EHOSTUNREACH,
        ] {
            assert!(!broken(&os(e)), "{e}");
        }
        for e in [libc::EBADF, libc::ENOTSOCK, libc::EFAULT, libc::EINVAL] {
            assert!(broken(&os(e)), "{e}");
        }
        // The port's own buffers outside its memory: a bug, not something to retry.
        assert!(broken(&std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "buffer outside the port's memory"
        )));
    }

    #[test]
    fn a_joined_message_taken_in_part_is_carried_on_where_it_stopped() {
        let mut p = Pending::default();
        p.got[0] = msg(120, 40, false);
        p.end = 1;
        assert_eq!(p.next_packet(), Some((0, 0, 40, false)));
        assert!(!p.is_empty());
        assert_eq!(p.next_packet(), Some((0, 40, 40, false)));
        assert_eq!(p.next_packet(), Some((0, 80, 40, false)));
        assert!(p.is_empty());
    }
}
