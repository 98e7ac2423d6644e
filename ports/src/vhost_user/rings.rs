//! The per-frame split-ring data path: pop TX chains, deliver into RX chains, publish used
//! entries once per burst.
//!
//! [`RingView`] is what the workers use: it takes the fast path ([`fast`]) on rings that map
//! whole into guest memory (all rings seen in practice), and otherwise the general path
//! below, built on virtio-queue and vm-memory's checked accessors. The general path is also
//! the reference the fast path is tested against.
//!
//! Everything here runs on a worker core with the vring lock held. It never allocates (the
//! caller passes pre-sized scratch vectors), never logs, and never trusts guest memory: each
//! descriptor is copied out of the ring once, each buffer range is checked against the right
//! VM's memory before use, and every loop is bounded by the ring size or a fixed limit. A
//! frame is copied exactly once, from the source VM's TX buffers straight into the
//! destination VM's RX buffers.

use std::num::Wrapping;
use std::sync::atomic::{fence, Ordering};

use virtio_bindings::virtio_ring::VRING_AVAIL_F_NO_INTERRUPT;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend};

use super::split_ring::SplitRing;
use crate::counters::DropReason;
use crate::frame::view::MemView;
use crate::frame::{
    FrameEdit, FrameMem, IngressFrame, Seg, MAX_FRAME_LEN, MIN_FRAME_LEN, PEEK_LEN,
};
use crate::offload::software::Outgoing;
use crate::offload::VnetHeader;

mod dirty;
mod fast;

pub use dirty::log_notification_fields;

/// Most buffer segments a TX frame may have (Linux uses at most 19): any frame's most.
pub const MAX_TX_SEGS: usize = crate::frame::MAX_SEGS;
/// Most RX chains one frame may be spread over with mergeable RX buffers.
pub const MAX_RX_CHAINS: usize = 64;
/// Most writable segments over all RX chains of one frame.
pub const MAX_RX_SEGS: usize = 256;
/// Most descriptors one TX chain may have, those of no length and an indirect one included
/// (Linux uses at most 20). A longer chain is dropped as a bad descriptor: otherwise a
/// chain of 65,535 empty descriptors in an indirect table costs the worker, and every port
/// it serves, the walk of all of them.
pub const MAX_TX_DESCS: u32 = 256;
/// Most descriptors the RX chains of one frame may have in all, those of no length and
/// indirect ones included: room for [`MAX_RX_SEGS`] segments and [`MAX_RX_CHAINS`] chains,
/// twice over. The chains a frame walked past it are given back unused and the frame is
/// dropped as a bad descriptor, so that they are not walked again for the next frame.
pub const MAX_RX_DESCS: u32 = 512;
/// Most descriptors the RX chains of one ring may have in all for one burst of frames
/// (a burst of 64 full-size TSO frames in single-descriptor mergeable buffers takes about
/// 3,000). Past it, frames for that ring are dropped as bad descriptors until the next
/// burst: a guest's RX ring costs the worker a bounded time per burst, whatever it holds.
pub const RX_BURST_DESCS: u32 = 16_384;
/// Longest virtio-net header (with `num_buffers`).
pub const VNET_HDR_MAX: usize = 12;
/// The block [`rx_head`] builds: the longest run of host bytes written before a frame's
/// copied part (a 12-byte header and an 18-byte prefix), rounded up to two 16-byte moves.
const HEAD_BLOCK: usize = (VNET_HDR_MAX + FrameEdit::MAX_PREFIX + 15) & !15;
const _: () = assert!(VNET_HDR_MAX + FrameEdit::MAX_PREFIX <= HEAD_BLOCK);
/// Result of popping one TX chain: the frame itself ([`RingView::pop_tx`]), or `()` when it
/// was written where the caller asked ([`RingView::pop_tx_into`]).
#[derive(Debug)]
pub enum PopTx<F = IngressFrame> {
    /// No chain available.
    Empty,
    /// A well-formed frame.
    Frame(F),
    /// A chain that cannot be forwarded; it must still be returned to the guest as used.
    Bad { head: u16, reason: DropReason },
    /// The ring itself is corrupt (its available index is more than a ring ahead): the
    /// queue was taken out of service until the frontend sets it up again.
    Broken,
}

/// One virtqueue, locked by the caller for a burst, with the VM memory it lives in.
pub struct RingView<'q, 'm> {
    queue: &'q mut Queue,
    view: MemView<'m>,
    split: Option<SplitRing<'m>>,
    /// The driver's available index as last read (fast path only).
    avail_idx: u16,
    /// The queue's next available index when this view was made: while it has not moved,
    /// no chain of this burst is in flight.
    burst_start: u16,
    /// Where the next used entry goes. Entries from the queue's `next_used` up to here are
    /// written in the used ring but not yet published (`publish_used`).
    used_next: u16,
    /// A used entry could not be written (general path: the used ring left guest memory).
    used_broken: bool,
    /// Descriptors the RX chains of this burst's frames may still take, over all of them
    /// (see [`RX_BURST_DESCS`]).
    rx_walk_left: u32,
    /// Where the burst's writes into the VM's buffers are recorded, while its memory is
    /// logged (see [`RingView::record_writes`]).
    written: Option<&'q mut WrittenRanges>,
}

/// The guest ranges one burst wrote frames into, recorded while a live migration logs the
/// VM's pages: [`RingView::publish_used_logged`] marks them from here, and not from the
/// chains read again out of guest memory, which the guest may have changed since. Sized
/// once; a burst that writes more ranges than it holds is marked by reading the chains
/// again, as before.
#[derive(Debug)]
pub struct WrittenRanges {
    ranges: Vec<(u64, u64)>,
    overflow: bool,
}

impl WrittenRanges {
    /// Room for `n` ranges (a frame in one buffer takes one).
    pub fn with_capacity(n: usize) -> WrittenRanges {
        WrittenRanges {
            ranges: Vec::with_capacity(n),
            overflow: false,
        }
    }

    fn clear(&mut self) {
        self.ranges.clear();
        self.overflow = false;
    }

    /// Records `len` bytes written at guest address `addr` (never allocates).
    #[inline]
    fn push(&mut self, addr: u64, len: u64) {
        if self.ranges.len() < self.ranges.capacity() {
            self.ranges.push((addr, len));
        } else {
            self.overflow = true;
        }
    }

    /// Records the first `need` bytes of `segs`.
    fn push_segs(&mut self, segs: &[Seg], mut need: u64) {
        for s in segs {
            if need == 0 {
                break;
            }
            let n = need.min(u64::from(s.len));
            self.push(s.addr, n);
            need -= n;
        }
    }
}

impl<'q, 'm> RingView<'q, 'm> {
    /// Maps the rings of `queue` for the fast path if they can be, else uses the general one.
    pub fn new(queue: &'q mut Queue, mem: &'m FrameMem) -> RingView<'q, 'm> {
        let mut view = MemView::new(mem);
        let split = SplitRing::new(queue, &mut view);
        let (avail_idx, used_next) = (queue.next_avail(), queue.next_used());
        RingView {
            queue,
            view,
            split,
            avail_idx,
            burst_start: avail_idx,
            used_next,
            used_broken: false,
            rx_walk_left: RX_BURST_DESCS,
            written: None,
        }
    }

    /// A view that always takes the general path (for tests and comparisons).
    pub fn general(queue: &'q mut Queue, mem: &'m FrameMem) -> RingView<'q, 'm> {
        let (avail_idx, used_next) = (queue.next_avail(), queue.next_used());
        RingView {
            queue,
            view: MemView::new(mem),
            split: None,
            avail_idx,
            burst_start: avail_idx,
            used_next,
            used_broken: false,
            rx_walk_left: RX_BURST_DESCS,
            written: None,
        }
    }

    /// Records every range of the VM's buffers the burst writes frames into in `to` (its
    /// earlier content dropped), for [`Self::publish_used_logged`].
    pub fn record_writes(&mut self, to: &'q mut WrittenRanges) {
        to.clear();
        self.written = Some(to);
    }

    /// Whether the fast path is in use.
    pub fn is_fast(&self) -> bool {
        self.split.is_some()
    }

    /// Pops one chain from a TX queue and describes the frame in it, its virtio-net header
    /// included. `segs` must have room for [`MAX_TX_SEGS`] more entries without growing.
    #[inline]
    pub fn pop_tx(&mut self, hdr_len: usize, segs: &mut Vec<Seg>) -> PopTx {
        let mut frame = IngressFrame::default();
        match self.pop_tx_into(hdr_len, true, segs, &mut frame) {
            PopTx::Frame(()) => PopTx::Frame(frame),
            PopTx::Empty => PopTx::Empty,
            PopTx::Bad { head, reason } => PopTx::Bad { head, reason },
            PopTx::Broken => PopTx::Broken,
        }
    }

    /// [`Self::pop_tx`], writing the frame into `out` (meaningful only if the result is
    /// `Frame`): the burst loop pops straight into its array, where a returned frame was
    /// moved through the stack (callgrind). The frame's virtio-net header is read into
    /// `out.vnet` only if `vnet` (its sender negotiated offloads; without, the header means
    /// nothing, and `out.vnet` may be left as it was).
    #[inline]
    pub fn pop_tx_into(
        &mut self,
        hdr_len: usize,
        vnet: bool,
        segs: &mut Vec<Seg>,
        out: &mut IngressFrame,
    ) -> PopTx<()> {
        match &self.split {
            Some(ring) => fast::pop_tx(
                ring,
                &mut self.view,
                &mut self.avail_idx,
                self.queue.next_avail() == self.burst_start,
                self.queue,
                (hdr_len, vnet),
                segs,
                out,
            ),
            None => pop_tx_general(self.queue, self.view.mem(), hdr_len, vnet, segs, out),
        }
    }

    /// Copies one frame, `frame_len` bytes in `src_segs` of the VM seen by `src`, changed
    /// by `edit`, into this RX queue, and returns its length as delivered (after the edit,
    /// without the virtio-net header). The chains used are written to the used ring, to be
    /// published by [`Self::publish_used`]; on a shortage nothing is consumed.
    /// With `RECORD`, what it writes is recorded (see [`Self::record_writes`]); without, the
    /// record is not looked at, and the delivery costs nothing more for it.
    // Always inlined into the delivery loop: a call per frame cost 21 instructions of
    // prologue, epilogue and arguments (callgrind, once the loop had two instances).
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    pub fn deliver<const RECORD: bool>(
        &mut self,
        hdr_len: usize,
        mrg_rxbuf: bool,
        src: &mut MemView<'_>,
        src_segs: &[Seg],
        frame_len: u32,
        edit: &FrameEdit,
        scratch: &mut RxScratch,
    ) -> Result<u32, DeliverError> {
        match &self.split {
            Some(ring) => fast::deliver(
                fast::RxRing {
                    ring,
                    view: &mut self.view,
                    avail_idx: &mut self.avail_idx,
                    fresh: self.queue.next_avail() == self.burst_start,
                    queue: self.queue,
                    used: &mut self.used_next,
                    walk_left: &mut self.rx_walk_left,
                    written: if RECORD {
                        self.written.as_deref_mut()
                    } else {
                        None
                    },
                },
                hdr_len,
                mrg_rxbuf,
                fast::Source {
                    view: src,
                    segs: src_segs,
                    len: frame_len,
                    edit,
                },
                scratch,
            ),
            None => {
                let mem = self.view.mem();
                let mut used =
                    GeneralUsed::of(self.queue, &mut self.used_next, &mut self.used_broken);
                let out = Outgoing::edited(frame_len, edit).ok_or(DeliverError {
                    reason: DropReason::BadDescriptor,
                })?;
                deliver_general(
                    self.queue,
                    mem,
                    hdr_len,
                    mrg_rxbuf,
                    src.mem(),
                    src_segs,
                    &out,
                    scratch,
                    (
                        &mut self.rx_walk_left,
                        if RECORD {
                            self.written.as_deref_mut()
                        } else {
                            None
                        },
                    ),
                    &mut |head, len| used.put(mem, head, len),
                )
            }
        }
    }

    /// Writes `out` (a virtio-net header, host bytes, then a range of the frame in
    /// `src_segs` of the VM seen by `src`) into this RX queue, as [`Self::deliver`] does a
    /// frame: the way frames that carry offloads are delivered. Returns the length
    /// delivered, header excluded.
    pub fn deliver_built(
        &mut self,
        hdr_len: usize,
        mrg_rxbuf: bool,
        src: &mut MemView<'_>,
        src_segs: &[Seg],
        out: &Outgoing<'_>,
        scratch: &mut RxScratch,
    ) -> Result<u32, DeliverError> {
        let need = hdr_len as u64 + u64::from(out.frame_len());
        match &self.split {
            Some(ring) => fast::deliver_in_chains(
                fast::RxRing {
                    ring,
                    view: &mut self.view,
                    avail_idx: &mut self.avail_idx,
                    fresh: self.queue.next_avail() == self.burst_start,
                    queue: self.queue,
                    used: &mut self.used_next,
                    walk_left: &mut self.rx_walk_left,
                    written: self.written.as_deref_mut(),
                },
                hdr_len,
                mrg_rxbuf,
                src,
                src_segs,
                out,
                need,
                scratch,
            )
            .map(|()| out.frame_len()),
            None => {
                let mem = self.view.mem();
                let mut used =
                    GeneralUsed::of(self.queue, &mut self.used_next, &mut self.used_broken);
                deliver_general(
                    self.queue,
                    mem,
                    hdr_len,
                    mrg_rxbuf,
                    src.mem(),
                    src_segs,
                    out,
                    scratch,
                    (&mut self.rx_walk_left, self.written.as_deref_mut()),
                    &mut |head, len| used.put(mem, head, len),
                )
            }
        }
    }

    /// Gives chain `head` back to the driver with `len` bytes written: its used entry is
    /// written now and published by [`Self::publish_used`]. A head past the ring (only a
    /// corrupt ring offers one) has no slot to go back to and is skipped.
    #[inline(always)]
    pub fn add_used(&mut self, head: u16, len: u32) {
        match &self.split {
            Some(ring) => fast::put_used(ring, &mut self.used_next, head, len),
            None => GeneralUsed::of(self.queue, &mut self.used_next, &mut self.used_broken).put(
                self.view.mem(),
                head,
                len,
            ),
        }
    }

    /// Publishes the used entries written since the last publication (by `deliver` and
    /// `add_used`) with one used.idx store; tells the driver not to kick
    /// (VRING_USED_F_NO_NOTIFY, without EVENT_IDX) since the worker is polling. Returns
    /// whether the driver asked to be notified (EVENT_IDX or VRING_AVAIL_F_NO_INTERRUPT).
    pub fn publish_used(&mut self) -> Result<bool, BrokenUsedRing> {
        if self.used_broken {
            return Err(BrokenUsedRing);
        }
        match &self.split {
            Some(ring) => Ok(fast::publish_used(ring, self.queue, self.used_next)),
            None => publish_used_general(self.queue, self.view.mem(), self.used_next),
        }
    }
}

/// General-path [`RingView::pop_tx`].
fn pop_tx_general(
    queue: &mut Queue,
    mem: &FrameMem,
    hdr_len: usize,
    read_vnet: bool,
    segs: &mut Vec<Seg>,
    out: &mut IngressFrame,
) -> PopTx<()> {
    debug_assert!(segs.capacity() - segs.len() >= MAX_TX_SEGS);
    let Some(chain) = queue.pop_descriptor_chain(mem) else {
        return PopTx::Empty;
    };
    let head = chain.head_index();
    let start = segs.len();
    let bad = |segs: &mut Vec<Seg>, reason| {
        segs.truncate(start);
        PopTx::Bad { head, reason }
    };
    let mut skip = hdr_len as u64;
    let mut total: u64 = 0;
    let mut vnet = [0u8; VNET_HDR_MAX];
    // The chain iterator is bounded by the queue size (or the indirect table size), and
    // this loop by MAX_TX_DESCS.
    for (n, desc) in chain.enumerate() {
        if desc.is_write_only() || n >= MAX_TX_DESCS as usize {
            return bad(segs, DropReason::BadDescriptor);
        }
        let mut addr = desc.addr().0;
        let mut len = u64::from(desc.len());
        total += len;
        if skip > 0 {
            let s = skip.min(len);
            let at = hdr_len - skip as usize;
            if read_vnet
                && mem
                    .read_slice(&mut vnet[at..at + s as usize], GuestAddress(addr))
                    .is_err()
            {
                return bad(segs, DropReason::BadDescriptor);
            }
            let Some(a) = addr.checked_add(s) else {
                return bad(segs, DropReason::BadDescriptor);
            };
            addr = a;
            len -= s;
            skip -= s;
        }
        if len == 0 {
            continue;
        }
        if !mem.check_range(GuestAddress(addr), len as usize) {
            return bad(segs, DropReason::BadDescriptor);
        }
        if segs.len() - start >= MAX_TX_SEGS {
            return bad(segs, DropReason::BadDescriptor);
        }
        segs.push(Seg {
            addr,
            len: len as u32,
        });
    }
    if total < (hdr_len + MIN_FRAME_LEN) as u64 {
        return bad(segs, DropReason::BadDescriptor);
    }
    let len = total - hdr_len as u64;
    if len > MAX_FRAME_LEN as u64 {
        return bad(segs, DropReason::TooBig);
    }
    let mut peek = [0u8; PEEK_LEN];
    let n = (len as usize).min(PEEK_LEN);
    if read_segs(mem, &segs[start..], &mut peek[..n]).is_err() {
        return bad(segs, DropReason::BadDescriptor);
    }
    *out = IngressFrame::new(head, start..segs.len(), len as u32, peek);
    out.vnet = VnetHeader::from_bytes(vnet[..VnetHeader::LEN].try_into().expect("10 of 12"));
    PopTx::Frame(())
}

/// Copies the first `buf.len()` bytes described by `segs` into `buf`.
fn read_segs(mem: &FrameMem, segs: &[Seg], buf: &mut [u8]) -> Result<(), ()> {
    let mut done = 0;
    for s in segs {
        if done == buf.len() {
            break;
        }
        let n = (s.len as usize).min(buf.len() - done);
        mem.read_slice(&mut buf[done..done + n], GuestAddress(s.addr))
            .map_err(|_| ())?;
        done += n;
    }
    if done == buf.len() {
        Ok(())
    } else {
        Err(())
    }
}

/// Writes `bytes` at the start of the area described by `segs`.
fn write_segs(mem: &FrameMem, segs: &[Seg], bytes: &[u8]) -> Result<(), ()> {
    let mut done = 0;
    for s in segs {
        if done == bytes.len() {
            break;
        }
        let n = (s.len as usize).min(bytes.len() - done);
        mem.write_slice(&bytes[done..done + n], GuestAddress(s.addr))
            .map_err(|_| ())?;
        done += n;
    }
    if done == bytes.len() {
        Ok(())
    } else {
        Err(())
    }
}

/// Writes `bytes` into the area described by `segs` from `at` on.
fn write_segs_at(mem: &FrameMem, segs: &[Seg], mut at: Cursor, bytes: &[u8]) -> Result<(), ()> {
    let mut done = 0;
    // Each step writes at least one byte or fails: bounded by `bytes`.
    while done < bytes.len() {
        let s = segs.get(at.seg).ok_or(())?;
        let n = ((s.len - at.off) as usize).min(bytes.len() - done);
        if n == 0 {
            // Segments are never empty, and a cursor never rests at one's end.
            return Err(());
        }
        mem.write_slice(
            &bytes[done..done + n],
            GuestAddress(s.addr + u64::from(at.off)),
        )
        .map_err(|_| ())?;
        done += n;
        at.advance(segs, n);
    }
    Ok(())
}

/// A position in a segment list.
#[derive(Clone, Copy, Default)]
struct Cursor {
    seg: usize,
    off: u32,
}

impl Cursor {
    /// Moves the cursor forward by `n` bytes.
    fn advance(&mut self, segs: &[Seg], mut n: usize) {
        while n > 0 && self.seg < segs.len() {
            let left = (segs[self.seg].len - self.off) as usize;
            if n < left {
                self.off += n as u32;
                return;
            }
            n -= left;
            self.seg += 1;
            self.off = 0;
        }
    }
}

/// Copies `len` bytes from the source segments (another VM's memory) to the destination
/// segments starting at `dst_at`, one memcpy per contiguous piece, no bounce buffer.
fn copy_between(
    src_mem: &FrameMem,
    src: &[Seg],
    src_at: Cursor,
    dst_mem: &FrameMem,
    dst: &[Seg],
    dst_at: Cursor,
    mut len: usize,
) -> Result<(), ()> {
    let mut s = src_at;
    let mut d = dst_at;
    // Each step consumes at least one byte, or fails: bounded by `len`.
    while len > 0 {
        let (Some(ss), Some(ds)) = (src.get(s.seg), dst.get(d.seg)) else {
            return Err(());
        };
        let n = ((ss.len - s.off) as usize)
            .min((ds.len - d.off) as usize)
            .min(len);
        let src_slice = src_mem
            .get_slices(GuestAddress(ss.addr + u64::from(s.off)), n)
            .next()
            .ok_or(())?
            .map_err(|_| ())?;
        let dst_slice = dst_mem
            .get_slices(GuestAddress(ds.addr + u64::from(d.off)), src_slice.len())
            .next()
            .ok_or(())?
            .map_err(|_| ())?;
        let k = dst_slice.len();
        if k == 0 {
            return Err(());
        }
        src_slice
            .subslice(0, k)
            .map_err(|_| ())?
            .copy_to_volatile_slice(dst_slice);
        s.advance(src, k);
        d.advance(dst, k);
        len -= k;
    }
    Ok(())
}

/// Pre-sized scratch space for [`deliver`]: no allocation on the hot path.
pub struct RxScratch {
    segs: Vec<Seg>,
    chains: Vec<(u16, u32)>,
}

impl Default for RxScratch {
    fn default() -> Self {
        RxScratch {
            segs: Vec::with_capacity(MAX_RX_SEGS),
            chains: Vec::with_capacity(MAX_RX_CHAINS),
        }
    }
}

impl RxScratch {
    /// Empties the scratch space for a delivery.
    fn clear(&mut self) {
        self.segs.clear();
        self.chains.clear();
    }

    /// Every chain popped for this frame goes back to the guest unused (a malformed chain
    /// cannot be rewound past), through `used`. Returns the error to report.
    fn give_back(&self, mut used: impl FnMut(u16, u32)) -> DeliverError {
        for &(head, _) in &self.chains {
            used(head, 0);
        }
        DeliverError {
            reason: DropReason::BadDescriptor,
        }
    }

    /// Why a frame did not fit in the chains available: too big for one chain without
    /// mergeable buffers, else not enough buffers.
    fn shortage(&self, mrg_rxbuf: bool) -> DeliverError {
        let reason = if !mrg_rxbuf && !self.chains.is_empty() {
            DropReason::TooBig
        } else {
            DropReason::NoRxBuffer
        };
        DeliverError { reason }
    }

    /// The virtio-net header of a frame with header `vnet` spread over the popped chains,
    /// as `hdr_len` bytes.
    fn vnet_bytes(&self, vnet: &VnetHeader) -> [u8; VNET_HDR_MAX] {
        vnet.to_bytes(self.chains.len() as u16)
    }

    /// Used entries for the chains holding `need` bytes, filled in order.
    fn complete(&self, need: u64, mut used: impl FnMut(u16, u32)) {
        let mut left = need;
        for &(head, cap) in &self.chains {
            let n = left.min(u64::from(cap));
            used(head, n as u32);
            left -= n;
        }
    }
}

/// What is written before the copied part of a frame delivered in `num_buffers` chains:
/// the first `hdr_len` bytes of its virtio-net header, then the edit's prefix. Returns a
/// fixed-size block and how many of its bytes are the head; the rest is padding. (The
/// one-buffer fast path builds a 12-byte header and stores the prefix on its own instead.)
#[inline(always)]
fn rx_head(hdr_len: usize, edit: &FrameEdit, num_buffers: u16) -> ([u8; HEAD_BLOCK], usize) {
    let mut head = [0u8; HEAD_BLOCK];
    // The 12-byte header first, then the prefix: a 10-byte header has no num_buffers field
    // and the prefix starts over it.
    head[..VNET_HDR_MAX].copy_from_slice(&vnet_header(num_buffers));
    let hdr_len = hdr_len.min(VNET_HDR_MAX);
    // A VLAN edit's prefix as its whole block (a fixed-size move; only its first
    // `prefix().len()` bytes count); a longer one (a judged frame's headers) as it is.
    let prefix = edit.prefix();
    if prefix.len() <= FrameEdit::VLAN_PREFIX {
        head[hdr_len..hdr_len + FrameEdit::VLAN_PREFIX].copy_from_slice(edit.vlan_block());
    } else {
        head[hdr_len..hdr_len + prefix.len()].copy_from_slice(prefix);
    }
    (head, hdr_len + prefix.len())
}

/// The 12-byte virtio-net header of a received frame spread over `num_buffers` chains that
/// asks nothing of the receiver: every field is zero but `num_buffers`, its last two bytes.
/// (Frames that ask for offloads are written by [`RingView::deliver_built`].)
#[inline(always)]
fn vnet_header(num_buffers: u16) -> [u8; VNET_HDR_MAX] {
    let mut hdr = [0u8; VNET_HDR_MAX];
    hdr[10..].copy_from_slice(&num_buffers.to_le_bytes());
    hdr
}

/// The bytes the RX chains must hold for a `frame_len`-byte frame changed by `edit`,
/// header included. Refuses an edit that replaces more than the frame has.
#[inline(always)]
fn rx_need(hdr_len: usize, frame_len: u32, edit: &FrameEdit) -> Result<u64, DeliverError> {
    let out_len = edit.out_len(frame_len).ok_or(DeliverError {
        reason: DropReason::BadDescriptor,
    })?;
    Ok(hdr_len as u64 + u64::from(out_len))
}

/// General-path used entries: written through vm-memory's checked accessors.
struct GeneralUsed<'a> {
    /// Guest address of the used ring, and the ring's size.
    ring: u64,
    size: u16,
    next: &'a mut u16,
    broken: &'a mut bool,
}

impl<'a> GeneralUsed<'a> {
    fn of(queue: &Queue, next: &'a mut u16, broken: &'a mut bool) -> GeneralUsed<'a> {
        GeneralUsed {
            ring: queue.used_ring(),
            size: queue.size(),
            next,
            broken,
        }
    }

    /// Writes the used entry (head, len) at the next index; a failure is remembered and
    /// reported when the entries are published.
    fn put(&mut self, mem: &FrameMem, head: u16, len: u32) {
        if head >= self.size {
            // A head the driver never could have offered (its ring is corrupt): there is no
            // used slot to give back.
            return;
        }
        let slot = u64::from(*self.next % self.size);
        let mut raw = [0u8; 8];
        raw[..4].copy_from_slice(&u32::from(head).to_le_bytes());
        raw[4..].copy_from_slice(&len.to_le_bytes());
        let written = self
            .ring
            .checked_add(4 + slot * 8)
            .is_some_and(|at| mem.write_slice(&raw, GuestAddress(at)).is_ok());
        if !written {
            *self.broken = true;
        }
        *self.next = self.next.wrapping_add(1);
    }
}

/// Why a delivery failed, and whether guest buffers were consumed doing so.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeliverError {
    pub reason: DropReason,
}

/// General-path [`RingView::deliver`].
#[allow(clippy::too_many_arguments)]
fn deliver_general(
    queue: &mut Queue,
    dst_mem: &FrameMem,
    hdr_len: usize,
    mrg_rxbuf: bool,
    src_mem: &FrameMem,
    src_segs: &[Seg],
    out: &Outgoing<'_>,
    scratch: &mut RxScratch,
    (walk_left, written): (&mut u32, Option<&mut WrittenRanges>),
    used: &mut impl FnMut(u16, u32),
) -> Result<u32, DeliverError> {
    let need = hdr_len as u64 + u64::from(out.frame_len());
    scratch.clear();
    let mut have: u64 = 0;
    let mut bad_chain = false;
    // As on the fast path: the descriptors this frame's chains may take.
    let allowed = MAX_RX_DESCS.min(*walk_left);
    let mut budget = allowed;
    // Bounded by MAX_RX_CHAINS and by the ring (pop fails once the ring is empty).
    while have < need && scratch.chains.len() < MAX_RX_CHAINS {
        let Some(chain) = queue.pop_descriptor_chain(dst_mem) else {
            break;
        };
        let head = chain.head_index();
        let mut cap: u64 = 0;
        for desc in chain {
            let len = u64::from(desc.len());
            let Some(spent) = budget.checked_sub(1) else {
                bad_chain = true;
                break;
            };
            budget = spent;
            if !desc.is_write_only()
                || scratch.segs.len() >= MAX_RX_SEGS
                || !dst_mem.check_range(desc.addr(), len as usize)
            {
                bad_chain = true;
                break;
            }
            if len > 0 {
                scratch.segs.push(Seg {
                    addr: desc.addr().0,
                    len: desc.len(),
                });
                cap += len;
            }
        }
        scratch
            .chains
            .push((head, cap.min(u64::from(u32::MAX)) as u32));
        if bad_chain {
            break;
        }
        have += cap;
        if !mrg_rxbuf {
            break;
        }
    }
    *walk_left -= allowed - budget;
    if bad_chain {
        return Err(scratch.give_back(&mut *used));
    }
    if have < need {
        for _ in 0..scratch.chains.len() {
            queue.go_to_previous_position();
        }
        return Err(scratch.shortage(mrg_rxbuf));
    }

    let vnet = scratch.vnet_bytes(&out.vnet);
    let hdr_len = hdr_len.min(VNET_HDR_MAX);
    let copied = write_segs(dst_mem, &scratch.segs, &vnet[..hdr_len]).and_then(|()| {
        let mut at = Cursor::default();
        at.advance(&scratch.segs, hdr_len);
        write_segs_at(dst_mem, &scratch.segs, at, out.head)?;
        at.advance(&scratch.segs, out.head.len());
        let mut from = Cursor::default();
        from.advance(src_segs, out.skip);
        copy_between(
            src_mem,
            src_segs,
            from,
            dst_mem,
            &scratch.segs,
            at,
            out.len as usize,
        )
    });
    if copied.is_err() {
        // Memory changed under us (e.g. a region was removed): hand the buffers back empty.
        return Err(scratch.give_back(&mut *used));
    }
    scratch.complete(need, &mut *used);
    if let Some(w) = written {
        w.push_segs(&scratch.segs, need);
    }
    Ok((need - hdr_len as u64) as u32)
}

/// The used ring of a queue lies outside guest memory: the queue cannot be completed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("used ring outside guest memory")]
pub struct BrokenUsedRing;

/// General-path [`RingView::publish_used`]: the entries up to `next` are written.
fn publish_used_general(
    queue: &mut Queue,
    mem: &FrameMem,
    next: u16,
) -> Result<bool, BrokenUsedRing> {
    let old = Wrapping(queue.next_used());
    let idx = Wrapping(next);
    if idx == old {
        return Ok(false);
    }
    // While the worker polls, kicks only cost the driver a system call and wake a thread.
    queue
        .disable_notification(mem)
        .map_err(|_| BrokenUsedRing)?;
    let size = queue.size();
    let base = GuestAddress(queue.used_ring());
    // Release: the entries written before must be visible before the driver sees the new
    // index.
    mem.store(
        u16::to_le(idx.0),
        base.checked_add(2).ok_or(BrokenUsedRing)?,
        Ordering::Release,
    )
    .map_err(|_| BrokenUsedRing)?;
    queue.set_next_used(idx.0);

    // The index store must be visible before we read the driver's suppression state.
    fence(Ordering::SeqCst);
    let avail = GuestAddress(queue.avail_ring());
    if queue.event_idx_enabled() {
        let used_event_addr = avail
            .checked_add(4 + 2 * u64::from(size))
            .ok_or(BrokenUsedRing)?;
        let used_event: u16 = mem
            .load(used_event_addr, Ordering::Acquire)
            .map_err(|_| BrokenUsedRing)?;
        let used_event = Wrapping(u16::from_le(used_event));
        // Notify if used_event lies in [old, idx): the same test as Linux's vring_need_event.
        Ok(idx - used_event - Wrapping(1) < idx - old)
    } else {
        let flags: u16 = mem
            .load(avail, Ordering::Acquire)
            .map_err(|_| BrokenUsedRing)?;
        Ok(u16::from_le(flags) & VRING_AVAIL_F_NO_INTERRUPT as u16 == 0)
    }
}

#[cfg(test)]
mod tests;
