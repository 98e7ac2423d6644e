//! The fast path: the same operations as the general path in `rings.rs`, on rings mapped
//! once per burst ([`SplitRing`]) and guest memory translated through a cached region
//! ([`MemView`]). The available index is read once per burst rather than once per chain.
//!
//! Behaviour matches the general path on well-formed rings (the tests run both on the same
//! rings). On malformed chains it is stricter: where virtio-queue's iterator silently ends a
//! chain at a bad `next` index or a loop, this path refuses the chain as a bad descriptor.

use virtio_bindings::virtio_ring::{
    VRING_AVAIL_F_NO_INTERRUPT, VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE,
};
use virtio_queue::{Queue, QueueT};

use super::WrittenRanges;
use super::{
    rx_head, rx_need, vnet_header, DeliverError, FrameEdit, IngressFrame, PopTx, RxScratch, Seg,
    MAX_FRAME_LEN, MAX_RX_CHAINS, MAX_RX_DESCS, MAX_RX_SEGS, MAX_TX_DESCS, MAX_TX_SEGS,
    MIN_FRAME_LEN, PEEK_LEN, VNET_HDR_MAX,
};
use crate::counters::DropReason;
use crate::frame::view::{HostSpan, MemView};
use crate::offload::software::Outgoing;
use crate::offload::VnetHeader;
use crate::vhost_user::split_ring::{Desc, DescTable, SplitRing};

const F_NEXT: u16 = VRING_DESC_F_NEXT as u16;
const F_WRITE: u16 = VRING_DESC_F_WRITE as u16;
const F_INDIRECT: u16 = VRING_DESC_F_INDIRECT as u16;

/// Walks the chain starting at `head`, calling `each` on every buffer descriptor; an
/// indirect table is followed once. Returns false if `each` does, or if the chain is
/// malformed: an index past its table, more descriptors than the table holds (a loop), a
/// nested or malformed indirect table, or one with more entries than the ring (the virtio
/// spec's limit, which DPDK enforces too). Every descriptor visited, the indirect one and
/// those of no length included, takes one from `budget`; the walk fails once it is spent.
/// Bounded by the table sizes and by `budget`.
#[inline]
pub(super) fn walk<'m>(
    ring: &SplitRing<'m>,
    view: &mut MemView<'m>,
    head: u16,
    budget: &mut u32,
    mut each: impl FnMut(&mut MemView<'m>, &Desc) -> bool,
) -> bool {
    let mut table = ring.table();
    let mut i = head;
    let mut left = table.len();
    let mut indirect = false;
    loop {
        let Some(spent) = budget.checked_sub(1) else {
            return false;
        };
        *budget = spent;
        let Some(d) = table.get(i) else {
            return false;
        };
        if d.flags & F_INDIRECT != 0 {
            if indirect || d.flags & F_NEXT != 0 {
                return false;
            }
            let Some(t) =
                DescTable::indirect(view, d.addr, d.len).filter(|t| t.len() <= ring.table().len())
            else {
                return false;
            };
            (table, i, left, indirect) = (t, 0, t.len(), true);
            continue;
        }
        if !each(view, &d) {
            return false;
        }
        if d.flags & F_NEXT == 0 {
            return true;
        }
        left -= 1;
        if left == 0 {
            return false;
        }
        i = d.next;
    }
}

/// What the available ring holds next.
enum Next {
    Head(u16),
    Empty,
    /// The driver's index is more than a ring ahead of ours: the ring is corrupt.
    Corrupt,
}

/// The next available head, reading the driver's index only when the cached one is used up.
#[inline]
fn next_head(ring: &SplitRing<'_>, avail_idx: &mut u16, next: u16) -> Next {
    if next == *avail_idx {
        *avail_idx = ring.avail_idx();
        if next == *avail_idx {
            return Next::Empty;
        }
    }
    if avail_idx.wrapping_sub(next) > ring.size() {
        return Next::Corrupt;
    }
    Next::Head(ring.avail_head(next))
}

/// Software pipelining over the chains already known available (before `avail_idx`): while
/// chain `next` is handled, the descriptor of chain `next + DESC_AHEAD` and the first bytes
/// of chain `next + BUF_AHEAD`'s buffer (at `skip` into it) are loaded into the cache, so
/// the misses on lines the driver's core wrote overlap instead of following one another.
/// At the start of a burst (`fresh`) the first descriptors are requested too, then the
/// buffers of the chains before `next + BUF_AHEAD`. Hints only: what is read here decides
/// nothing.
// Always inlined: called once per chain, its call overhead was a third of its
// instructions (callgrind).
#[inline(always)]
fn prefetch_ahead(
    ring: &SplitRing<'_>,
    view: &MemView<'_>,
    avail_idx: u16,
    next: u16,
    skip: u64,
    fresh: bool,
) {
    let table = ring.table();
    // Whether chain `next + k` is known available.
    let known = |k: u16| avail_idx.wrapping_sub(next) > k;
    if fresh {
        for k in 0..DESC_AHEAD {
            if known(k) {
                table.prefetch(ring.avail_head(next.wrapping_add(k)));
            }
        }
        for k in 1..BUF_AHEAD {
            if known(k) {
                if let Some(d) = table.get(ring.avail_head(next.wrapping_add(k))) {
                    view.prefetch(d.addr.wrapping_add(skip));
                }
            }
        }
    }
    if known(BUF_AHEAD) {
        if let Some(d) = table.get(ring.avail_head(next.wrapping_add(BUF_AHEAD))) {
            // Whatever the descriptor holds (an indirect table, a buffer shorter than
            // `skip`), the line is guest memory or not requested.
            view.prefetch(d.addr.wrapping_add(skip));
        }
    }
    if known(DESC_AHEAD) {
        table.prefetch(ring.avail_head(next.wrapping_add(DESC_AHEAD)));
    }
}

/// How many chains ahead of the one handled [`prefetch_ahead`] requests a descriptor, and
/// a buffer's line. The buffer's address comes from a descriptor requested
/// `DESC_AHEAD - BUF_AHEAD` chains earlier, so it is usually in the cache by then.
/// Measured (bench/ab.py 64): 2 and 1 cost about 550 cycles/pkt when the generator's core
/// is far (the slow band), 4 and 2 or 8 and 4 about 515; 16 and 8 no better than 2 and 1,
/// and worse in the fast band.
const DESC_AHEAD: u16 = 8;
const BUF_AHEAD: u16 = 4;

/// The driver's index is more than a ring ahead of ours. That is what a ring given a base
/// other than its used index looks like (DPDK's virtio_user sends SET_VRING_BASE 0 when it
/// reconnects, whatever its rings hold). A queue is lined up with its used index when a
/// worker first sees it started (`VhostUserQueues::serviceable`); this catches a frontend that
/// set a ring up again faster than a worker saw it stopped. If the used index (read from
/// the ring at SET_VRING_ADDR, and kept since) is within a ring of the driver's, restart
/// from it, as DPDK's own vhost library does, and say so (true).
/// Otherwise the ring is corrupt: take the queue out of service, as a device that needs a
/// reset; it is not polled again until the frontend sets it up anew (false).
/// Only done when no chain of this burst is in flight (`fresh`): rewinding past chains
/// popped but not yet returned would hand them out twice.
#[cold]
fn resync_or_disable(
    queue: &mut Queue,
    ring: &SplitRing<'_>,
    driver_idx: u16,
    fresh: bool,
) -> bool {
    let used = queue.next_used();
    if fresh && queue.next_avail() != used && driver_idx.wrapping_sub(used) <= ring.size() {
        queue.set_next_avail(used);
        true
    } else {
        queue.set_ready(false);
        false
    }
}

/// Fast-path [`super::RingView::pop_tx`]. Inlined into the caller's burst loop: the common
/// shape (one buffer) is handled here, everything else by [`pop_tx_walk`], out of line.
// The arguments are the fields of `RingView` and the caller's outputs: always inlined, so
// none of them is passed on the stack.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub(super) fn pop_tx<'m>(
    ring: &SplitRing<'m>,
    view: &mut MemView<'m>,
    avail_idx: &mut u16,
    fresh: bool,
    queue: &mut Queue,
    (hdr_len, vnet): (usize, bool),
    segs: &mut Vec<Seg>,
    out: &mut IngressFrame,
) -> PopTx<()> {
    debug_assert!(segs.capacity() - segs.len() >= MAX_TX_SEGS);
    let next = queue.next_avail();
    let (head, next) = match next_head(ring, avail_idx, next) {
        Next::Head(h) => (h, next),
        _ => match head_when_not_ready(ring, avail_idx, fresh, queue) {
            Ok(taken) => taken,
            Err(none) => return none,
        },
    };
    prefetch_ahead(ring, view, *avail_idx, next, hdr_len as u64, fresh);
    queue.set_next_avail(next.wrapping_add(1));
    if let Some(popped) = pop_in_one_buffer(ring, view, head, hdr_len, vnet, out) {
        return popped;
    }
    pop_tx_walk(ring, view, head, (hdr_len, vnet), segs, out)
}

/// [`pop_tx`] when the ring held no chain or looked corrupt: the next head and its
/// available index after a resynchronisation, else what to return.
#[cold]
#[inline(never)]
fn head_when_not_ready(
    ring: &SplitRing<'_>,
    avail_idx: &mut u16,
    fresh: bool,
    queue: &mut Queue,
) -> Result<(u16, u16), PopTx<()>> {
    let next = queue.next_avail();
    match next_head(ring, avail_idx, next) {
        Next::Head(h) => return Ok((h, next)),
        Next::Empty => return Err(PopTx::Empty),
        Next::Corrupt => {}
    }
    // Callers check `ready` once per burst, and end the burst on `Broken`.
    if !resync_or_disable(queue, ring, *avail_idx, fresh) {
        return Err(PopTx::Broken);
    }
    let next = queue.next_avail();
    match next_head(ring, avail_idx, next) {
        Next::Head(h) => Ok((h, next)),
        Next::Empty => Err(PopTx::Empty),
        Next::Corrupt => Err(PopTx::Broken),
    }
}

/// The general case of [`pop_tx`]: chain `head` (already taken from the ring) walked
/// descriptor by descriptor.
#[inline(never)]
fn pop_tx_walk<'m>(
    ring: &SplitRing<'m>,
    view: &mut MemView<'m>,
    head: u16,
    (hdr_len, read_vnet): (usize, bool),
    segs: &mut Vec<Seg>,
    out: &mut IngressFrame,
) -> PopTx<()> {
    let start = segs.len();
    let mut skip = hdr_len as u64;
    let mut total: u64 = 0;
    let mut vnet = [0u8; VNET_HDR_MAX];
    let mut budget = MAX_TX_DESCS;
    let well_formed = walk(ring, view, head, &mut budget, |view, d| {
        if d.flags & F_WRITE != 0 {
            return false;
        }
        let mut addr = d.addr;
        let mut len = u64::from(d.len);
        total += len;
        if skip > 0 {
            let s = skip.min(len);
            let at = hdr_len - skip as usize;
            if read_vnet && !view.read(addr, &mut vnet[at..at + s as usize]) {
                return false;
            }
            let Some(a) = addr.checked_add(s) else {
                return false;
            };
            addr = a;
            len -= s;
            skip -= s;
        }
        if len == 0 {
            return true;
        }
        if !view.covers(addr, len as usize) || segs.len() - start >= MAX_TX_SEGS {
            return false;
        }
        segs.push(Seg {
            addr,
            len: len as u32,
        });
        true
    });
    let bad = |segs: &mut Vec<Seg>, reason| {
        segs.truncate(start);
        PopTx::Bad { head, reason }
    };
    if !well_formed || total < (hdr_len + MIN_FRAME_LEN) as u64 {
        return bad(segs, DropReason::BadDescriptor);
    }
    let len = total - hdr_len as u64;
    if len > MAX_FRAME_LEN as u64 {
        return bad(segs, DropReason::TooBig);
    }
    let mut peek = [0u8; PEEK_LEN];
    let n = (len as usize).min(PEEK_LEN);
    let mut done = 0;
    for s in &segs[start..] {
        if done == n {
            break;
        }
        let k = (s.len as usize).min(n - done);
        if !view.read(s.addr, &mut peek[done..done + k]) {
            return bad(segs, DropReason::BadDescriptor);
        }
        done += k;
    }
    *out = IngressFrame::new(head, start..segs.len(), len as u32, peek);
    out.vnet = VnetHeader::from_bytes(vnet[..VnetHeader::LEN].try_into().expect("10 of 12"));
    PopTx::Frame(())
}

/// The common case of [`pop_tx`], without the general walk: chain `head` is a single
/// readable descriptor, in one region, holding the virtio-net header and a frame of an
/// acceptable length. `None`, with nothing changed, when it is not: `pop_tx` then walks the
/// chain, reading the descriptor afresh, and sorts the case out.
#[inline(always)]
fn pop_in_one_buffer<'m>(
    ring: &SplitRing<'m>,
    view: &mut MemView<'m>,
    head: u16,
    hdr_len: usize,
    read_vnet: bool,
    out: &mut IngressFrame,
) -> Option<PopTx<()>> {
    let d = ring.table().get(head)?;
    if d.flags & (F_NEXT | F_INDIRECT | F_WRITE) != 0 {
        return None;
    }
    let len = (d.len as usize).checked_sub(hdr_len)?;
    if !(MIN_FRAME_LEN..=MAX_FRAME_LEN).contains(&len) {
        return None;
    }
    let addr = d.addr.checked_add(hdr_len as u64)?;
    let frame = view.span(addr, len)?;
    // One typed load for every frame but the shortest (see `HostSpan::read_array`).
    let peek = match frame.read_array::<PEEK_LEN>(0) {
        Some(peek) => peek,
        None => peek_short(&frame, len)?,
    };
    if read_vnet {
        // The header lies right before the frame, in the same descriptor and region.
        let hdr = view.span(d.addr, VnetHeader::LEN)?;
        out.vnet = VnetHeader::from_bytes(&hdr.read_array::<{ VnetHeader::LEN }>(0)?);
    }
    out.fill_one_buffer(head, addr, len as u32, peek);
    Some(PopTx::Frame(()))
}

/// The peek of a `len`-byte frame shorter than [`PEEK_LEN`]: its bytes, then zeros.
///
/// This and [`write_short`] are kept out of line so that the compiler cannot merge them
/// with the fixed-size move of the usual case: it had made both one memcpy call of a
/// selected length (callgrind).
#[cold]
#[inline(never)]
fn peek_short(frame: &HostSpan<'_>, len: usize) -> Option<[u8; PEEK_LEN]> {
    let mut peek = [0u8; PEEK_LEN];
    frame
        .read(0, &mut peek[..len.min(PEEK_LEN)])
        .then_some(peek)
}

/// `dst.write(off, bytes)`, out of line (see [`peek_short`]).
#[cold]
#[inline(never)]
fn write_short(dst: &HostSpan<'_>, off: usize, bytes: &[u8]) -> bool {
    dst.write(off, bytes)
}

/// An RX ring on the fast path, as delivering a frame into it reads and moves it.
pub(super) struct RxRing<'a, 'm> {
    pub ring: &'a SplitRing<'m>,
    pub view: &'a mut MemView<'m>,
    /// The driver's available index, as last read.
    pub avail_idx: &'a mut u16,
    /// No chain of this burst taken yet (see [`prefetch_ahead`], [`resync_or_disable`]).
    pub fresh: bool,
    pub queue: &'a mut Queue,
    /// The next used slot to write.
    pub used: &'a mut u16,
    /// Descriptors the ring's chains may still take in this burst.
    pub walk_left: &'a mut u32,
    /// Where what is written is recorded, while the VM's memory is logged.
    pub written: Option<&'a mut WrittenRanges>,
}

impl<'m> RxRing<'_, 'm> {
    /// Every field, reborrowed, for code that uses them side by side.
    #[inline(always)]
    #[allow(clippy::type_complexity)]
    fn parts(
        &mut self,
    ) -> (
        &SplitRing<'m>,
        &mut MemView<'m>,
        &mut u16,
        bool,
        &mut Queue,
        &mut u16,
        &mut u32,
        Option<&mut WrittenRanges>,
    ) {
        (
            self.ring,
            self.view,
            self.avail_idx,
            self.fresh,
            self.queue,
            self.used,
            self.walk_left,
            self.written.as_deref_mut(),
        )
    }
}

/// The frame to deliver: `len` bytes in `segs` of the VM seen through `view`, changed by
/// `edit` on the way.
pub(super) struct Source<'a, 's> {
    pub view: &'a mut MemView<'s>,
    pub segs: &'a [Seg],
    pub len: u32,
    pub edit: &'a FrameEdit,
}

impl<'s> Source<'_, 's> {
    /// Every field, reborrowed.
    #[inline(always)]
    fn parts(&mut self) -> (&mut MemView<'s>, &[Seg], u32, &FrameEdit) {
        (self.view, self.segs, self.len, self.edit)
    }
}

/// Fast-path [`super::RingView::deliver`]. Inlined into the caller's burst loop: the common
/// shape (one buffer that holds the frame) is handled here, everything else by
/// [`deliver_in_chains`], out of line.
#[inline(always)]
pub(super) fn deliver(
    mut rx: RxRing<'_, '_>,
    hdr_len: usize,
    mrg_rxbuf: bool,
    mut frame: Source<'_, '_>,
    scratch: &mut RxScratch,
) -> Result<u32, DeliverError> {
    let need = rx_need(hdr_len, frame.len, frame.edit)?;
    // The frame as delivered, header excluded: at most MAX_FRAME_LEN plus a prefix.
    let out_len = (need - hdr_len as u64) as u32;
    if let Some(done) = deliver_in_one_buffer(&mut rx, hdr_len, &mut frame, need) {
        return done.map(|()| out_len);
    }
    let out = Outgoing::edited(frame.len, frame.edit).ok_or(DeliverError {
        reason: DropReason::BadDescriptor,
    })?;
    // Moved, not borrowed: the common case above keeps both in registers.
    deliver_in_chains(
        rx, hdr_len, mrg_rxbuf, frame.view, frame.segs, &out, need, scratch,
    )
    .map(|()| out_len)
}

/// The general case of [`deliver`], and fast-path [`super::RingView::deliver_built`]: `out`
/// (`need` bytes with the header) spread over as many chains (with mergeable buffers) and
/// descriptors as it takes.
#[allow(clippy::too_many_arguments)]
#[inline(never)]
pub(super) fn deliver_in_chains(
    mut rx: RxRing<'_, '_>,
    hdr_len: usize,
    mrg_rxbuf: bool,
    src: &mut MemView<'_>,
    src_segs: &[Seg],
    out: &Outgoing<'_>,
    need: u64,
    scratch: &mut RxScratch,
) -> Result<(), DeliverError> {
    let (ring, view, avail_idx, fresh, queue, used, walk_left, written) = rx.parts();
    scratch.clear();
    let mut have: u64 = 0;
    let mut bad_chain = false;
    let mut next = queue.next_avail();
    // What this frame's chains may take: at most MAX_RX_DESCS, and what the burst left.
    let allowed = MAX_RX_DESCS.min(*walk_left);
    let mut budget = allowed;
    // Bounded by MAX_RX_CHAINS and by the ring (next_head fails once it is empty).
    while have < need && scratch.chains.len() < MAX_RX_CHAINS {
        let head = match next_head(ring, avail_idx, next) {
            Next::Head(h) => h,
            Next::Empty => break,
            Next::Corrupt => {
                // Callers check `ready` once per burst: a queue disabled earlier in this
                // burst is refused here, without counting it corrupt again.
                if !queue.ready() {
                    return Err(DeliverError {
                        reason: DropReason::PortDown,
                    });
                }
                // Only before the first chain of a frame: a resynchronised ring starts
                // afresh.
                if scratch.chains.is_empty() && resync_or_disable(queue, ring, *avail_idx, fresh) {
                    next = queue.next_avail();
                    continue;
                }
                queue.set_ready(false);
                return Err(scratch.give_back(|head, len| put_used(ring, used, head, len)));
            }
        };
        prefetch_ahead(
            ring,
            view,
            *avail_idx,
            next,
            0,
            fresh && scratch.chains.is_empty(),
        );
        next = next.wrapping_add(1);
        let mut cap: u64 = 0;
        let segs = &mut scratch.segs;
        let ok = walk(ring, view, head, &mut budget, |view, d| {
            if d.flags & F_WRITE == 0
                || segs.len() >= MAX_RX_SEGS
                || !view.covers(d.addr, d.len as usize)
            {
                return false;
            }
            if d.len > 0 {
                segs.push(Seg {
                    addr: d.addr,
                    len: d.len,
                });
                cap += u64::from(d.len);
            }
            true
        });
        scratch
            .chains
            .push((head, cap.min(u64::from(u32::MAX)) as u32));
        if !ok {
            bad_chain = true;
            break;
        }
        have += cap;
        if !mrg_rxbuf {
            break;
        }
    }
    *walk_left -= allowed - budget;
    if bad_chain {
        // A malformed chain (or one past the budget) cannot be rewound past: every popped
        // chain goes back unused.
        queue.set_next_avail(next);
        return Err(scratch.give_back(|head, len| put_used(ring, used, head, len)));
    }
    if have < need {
        // Nothing consumed: the queue's position was not moved.
        return Err(scratch.shortage(mrg_rxbuf));
    }
    queue.set_next_avail(next);

    let vnet = scratch.vnet_bytes(&out.vnet);
    if !write_then_copy(
        view,
        &scratch.segs,
        [&vnet[..hdr_len.min(VNET_HDR_MAX)], out.head],
        src,
        src_segs,
        out.skip,
        out.len,
    ) {
        // Cannot happen with the ranges checked above; hand the buffers back empty.
        return Err(scratch.give_back(|head, len| put_used(ring, used, head, len)));
    }
    scratch.complete(need, |head, len| put_used(ring, used, head, len));
    if let Some(w) = written {
        w.push_segs(&scratch.segs, need);
    }
    Ok(())
}

/// The common case of [`deliver`], without its scratch lists: the next RX chain is a single
/// writable descriptor, in guest memory, that holds all `need` bytes. `None`, with nothing
/// changed, when it is not (or the ring is empty or corrupt): `deliver` then takes its
/// general course, which sorts those cases out.
#[inline(always)]
fn deliver_in_one_buffer(
    rx: &mut RxRing<'_, '_>,
    hdr_len: usize,
    frame: &mut Source<'_, '_>,
    need: u64,
) -> Option<Result<(), DeliverError>> {
    let (ring, view, avail_idx, fresh, queue, used, _, written) = rx.parts();
    let (src, src_segs, frame_len, edit) = frame.parts();
    let next = queue.next_avail();
    let Next::Head(head) = next_head(ring, avail_idx, next) else {
        return None;
    };
    let d = ring.table().get(head)?;
    if d.flags & (F_NEXT | F_INDIRECT | F_WRITE) != F_WRITE || u64::from(d.len) < need {
        return None;
    }
    let dst = view.span(d.addr, need as usize)?;
    prefetch_ahead(ring, view, *avail_idx, next, 0, fresh);
    queue.set_next_avail(next.wrapping_add(1));
    let prefix = edit.prefix();
    let (mut ok, n) = if hdr_len == VNET_HDR_MAX {
        // The header, left alone if the buffer holds it already (see
        // `write_unless_equal`); then the edit's prefix, as its whole fixed-size array when
        // the frame's bytes overwrite the array's tail right after. Fixed-size moves from
        // where the bytes are: a block assembled first, and a run-time length, had cost a
        // copy and a memcpy call per frame (callgrind).
        let hdr = vnet_header(1);
        let written = if prefix.len() <= FrameEdit::VLAN_PREFIX
            && need as usize >= VNET_HDR_MAX + FrameEdit::VLAN_PREFIX
        {
            dst.write_array(VNET_HDR_MAX, edit.vlan_block())
        } else {
            write_short(&dst, VNET_HDR_MAX, prefix)
        };
        (
            dst.write_unless_equal(0, &hdr) & written,
            VNET_HDR_MAX + prefix.len(),
        )
    } else {
        // A 10-byte header (legacy drivers without mergeable buffers): header and prefix
        // written as they are.
        let (head_block, n) = rx_head(hdr_len, edit, 1);
        (dst.write(0, &head_block[..n]), n)
    };
    // The frame from its first `skip` bytes on, a piece per source segment.
    let (mut at, mut skip) = (n, usize::from(edit.skip));
    let mut left = (frame_len - u32::from(edit.skip)) as usize;
    match src_segs {
        // The usual source, a frame in one buffer: one piece.
        [s] if s.len == frame_len => {
            ok &= copy_piece(view, &dst, d.addr, at, src, s.addr + skip as u64, left);
            left = 0;
        }
        _ => {
            for s in src_segs {
                if left == 0 {
                    break;
                }
                let k = skip.min(s.len as usize);
                skip -= k;
                let len = (s.len as usize - k).min(left);
                if len == 0 {
                    continue;
                }
                ok &= copy_piece(view, &dst, d.addr, at, src, s.addr + k as u64, len);
                at += len;
                left -= len;
            }
        }
    }
    if !ok || left > 0 {
        // Cannot happen with the ranges checked (here and when the frame was popped).
        put_used(ring, used, head, 0);
        return Some(Err(DeliverError {
            reason: DropReason::BadDescriptor,
        }));
    }
    put_used(ring, used, head, need as u32);
    if let Some(w) = written {
        w.push(d.addr, need);
    }
    Some(Ok(()))
}

/// Copies `len` bytes of the source VM at `from` to `at` in `dst`, the span at guest address
/// `dst_addr` of `view`'s VM.
#[inline(always)]
fn copy_piece(
    view: &mut MemView<'_>,
    dst: &HostSpan<'_>,
    dst_addr: u64,
    at: usize,
    src: &mut MemView<'_>,
    from: u64,
    len: usize,
) -> bool {
    match src.span(from, len) {
        Some(piece) => dst.copy_from(at, &piece, 0, len),
        // A segment across two adjacent regions: copied region by region.
        None => view.copy_from(dst_addr + at as u64, src, from, len),
    }
}

/// Fills the destination segments with the host bytes of `hdrs` one after the other (a
/// virtio-net header, then headers the switch built), then with `len` bytes of the source
/// segments from their first `skip` bytes on: at most one memmove per (source piece,
/// destination piece) pair.
fn write_then_copy(
    dst: &mut MemView<'_>,
    dst_segs: &[Seg],
    hdrs: [&[u8]; 2],
    src: &mut MemView<'_>,
    src_segs: &[Seg],
    mut skip: usize,
    len: u32,
) -> bool {
    let mut d = dst_segs.iter();
    let (mut d_addr, mut d_left) = (0u64, 0usize);
    // The host bytes.
    for hdr in hdrs {
        let mut h = 0;
        while h < hdr.len() {
            if d_left == 0 {
                let Some(s) = d.next() else { return false };
                (d_addr, d_left) = (s.addr, s.len as usize);
                continue;
            }
            let n = d_left.min(hdr.len() - h);
            if !dst.write(d_addr, &hdr[h..h + n]) {
                return false;
            }
            (h, d_addr, d_left) = (h + n, d_addr + n as u64, d_left - n);
        }
    }
    // The frame. Each step moves at least one byte: bounded by `len`.
    let mut s = src_segs.iter();
    let (mut s_addr, mut s_left) = (0u64, 0usize);
    let mut left = len as usize;
    while left > 0 {
        if s_left == 0 {
            let Some(x) = s.next() else { return false };
            (s_addr, s_left) = (x.addr, x.len as usize);
            // Bytes the edit replaces (at most a few, in the first segments).
            let k = skip.min(s_left);
            (s_addr, s_left, skip) = (s_addr + k as u64, s_left - k, skip - k);
            continue;
        }
        if d_left == 0 {
            let Some(x) = d.next() else { return false };
            (d_addr, d_left) = (x.addr, x.len as usize);
            continue;
        }
        let n = s_left.min(d_left).min(left);
        if !dst.copy_from(d_addr, src, s_addr, n) {
            return false;
        }
        left -= n;
        (s_addr, s_left) = (s_addr + n as u64, s_left - n);
        (d_addr, d_left) = (d_addr + n as u64, d_left - n);
    }
    true
}

/// Fast-path [`super::RingView::add_used`]: writes used entry (head, len) at index `next`
/// and moves `next` on; skips a head past the ring (no slot to give back).
#[inline(always)]
pub(super) fn put_used(ring: &SplitRing<'_>, next: &mut u16, head: u16, len: u32) {
    if head < ring.size() {
        ring.put_used(*next, head, len);
        *next = next.wrapping_add(1);
    }
}

/// Fast-path [`super::RingView::publish_used`]: the entries up to `next` are written.
pub(super) fn publish_used(ring: &SplitRing<'_>, queue: &mut Queue, next: u16) -> bool {
    let old = queue.next_used();
    if next == old {
        return false;
    }
    if !queue.event_idx_enabled() {
        ring.suppress_kicks();
    }
    ring.set_used_idx(next);
    queue.set_next_used(next);
    // The index store must be visible before we read the driver's suppression state.
    std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
    if queue.event_idx_enabled() {
        let used_event = ring.used_event();
        // Notify if used_event lies in [old, next): Linux's vring_need_event.
        next.wrapping_sub(used_event).wrapping_sub(1) < next.wrapping_sub(old)
    } else {
        ring.avail_flags() & VRING_AVAIL_F_NO_INTERRUPT as u16 == 0
    }
}
