use super::*;
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE, VRING_USED_F_NO_NOTIFY};
use virtio_queue::desc::{split::Descriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::GuestMemoryMmap;

const BUF: u64 = 0x10_0000;

fn mem() -> FrameMem {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000), (GuestAddress(BUF), 0x10_0000)])
        .unwrap()
}

fn desc(addr: u64, len: u32, write: bool) -> RawDescriptor {
    let flags = if write { VRING_DESC_F_WRITE as u16 } else { 0 };
    RawDescriptor::from(Descriptor::new(addr, len, flags, 0))
}

/// Offers one chain made of `descs`, linked in order, starting at table index `at`.
fn offer(q: &MockSplitQueue<FrameMem>, at: u16, descs: &[RawDescriptor]) {
    let mut linked = Vec::new();
    for (i, d) in descs.iter().enumerate() {
        let d = Descriptor::from(*d);
        let (flags, next) = if i + 1 < descs.len() {
            (d.flags() | VRING_DESC_F_NEXT as u16, at + i as u16 + 1)
        } else {
            (d.flags(), 0)
        };
        linked.push(RawDescriptor::from(Descriptor::new(
            d.addr().0,
            d.len(),
            flags,
            next,
        )));
    }
    q.add_desc_chains(&linked, at).unwrap();
}

/// A view of `q` on the fast or the general path.
fn ring<'q, 'm>(q: &'q mut Queue, m: &'m FrameMem, fast: bool) -> RingView<'q, 'm> {
    let r = if fast {
        RingView::new(q, m)
    } else {
        RingView::general(q, m)
    };
    assert_eq!(
        r.is_fast(),
        fast,
        "the test's rings must map for the fast path"
    );
    r
}

fn pop_tx(q: &mut Queue, m: &FrameMem, hdr_len: usize, segs: &mut Vec<Seg>, fast: bool) -> PopTx {
    ring(q, m, fast).pop_tx(hdr_len, segs)
}

fn publish_used(
    q: &mut Queue,
    m: &FrameMem,
    fast: bool,
    used: &[(u16, u32)],
) -> Result<bool, BrokenUsedRing> {
    let mut r = ring(q, m, fast);
    for &(head, len) in used {
        r.add_used(head, len);
    }
    r.publish_used()
}

/// The used entries of `q` published from index `from` on, as the driver reads them.
fn published_since(q: &Queue, m: &FrameMem, from: u16) -> Vec<(u16, u32)> {
    let mut out = Vec::new();
    let mut i = from;
    while i != q.next_used() {
        let at = q.used_ring() + 4 + 8 * u64::from(i % q.size());
        let [head, len]: [u32; 2] = m.read_obj(GuestAddress(at)).unwrap();
        out.push((head as u16, len));
        i = i.wrapping_add(1);
    }
    out
}

fn frame(len: usize) -> Vec<u8> {
    let mut f: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
    f[..6].copy_from_slice(&[0x02, 0, 0, 0, 0, 2]);
    f[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0, 1]);
    f
}

fn pop_tx_skips_a_header_that_straddles_descriptors(fast: bool) {
    let m = mem();
    let vq = MockSplitQueue::new(&m, 16);
    let f = frame(100);
    // 8 bytes of header, then 4 more header bytes + 60 frame bytes, then 40 frame bytes.
    let hdr = [1, 4, 54, 0, 0xa0, 5, 34, 0, 16, 0, 0, 0];
    m.write_slice(&hdr[..8], GuestAddress(BUF)).unwrap();
    let mut second = hdr[8..].to_vec();
    second.extend_from_slice(&f[..60]);
    m.write_slice(&second, GuestAddress(BUF + 0x100)).unwrap();
    m.write_slice(&f[60..], GuestAddress(BUF + 0x200)).unwrap();
    offer(
        &vq,
        0,
        &[
            desc(BUF, 8, false),
            desc(BUF + 0x100, 64, false),
            desc(BUF + 0x200, 40, false),
        ],
    );
    let mut q: Queue = vq.create_queue().unwrap();
    let mut segs = Vec::with_capacity(2 * MAX_TX_SEGS);
    let PopTx::Frame(tx) = pop_tx(&mut q, &m, 12, &mut segs, fast) else {
        panic!("expected a frame")
    };
    assert_eq!(tx.len, 100);
    assert_eq!(tx.peek[..], f[..PEEK_LEN]);
    // The header is read across its two descriptors.
    assert_eq!(
        tx.vnet,
        VnetHeader::from_bytes(hdr[..10].try_into().unwrap())
    );
    assert_eq!(
        tx.segs_in(&segs),
        &[
            Seg {
                addr: BUF + 0x104,
                len: 60
            },
            Seg {
                addr: BUF + 0x200,
                len: 40
            }
        ]
    );
    assert!(matches!(
        pop_tx(&mut q, &m, 12, &mut segs, fast),
        PopTx::Empty
    ));
}

/// A frame in one buffer and one spread over two, popped in turn: each names its own bytes
/// (the fast path keeps a one-buffer frame's segment in the frame, not in the array).
fn pop_tx_segments_of_one_and_of_several_buffers(fast: bool) {
    let m = mem();
    let vq = MockSplitQueue::new(&m, 16);
    let f = frame(80);
    let hdr = [1, 0, 0, 0, 0, 0, 34, 0, 6, 0, 0, 0];
    let mut whole = hdr.to_vec();
    whole.extend_from_slice(&f);
    m.write_slice(&whole, GuestAddress(BUF)).unwrap();
    m.write_slice(&whole[..50], GuestAddress(BUF + 0x200))
        .unwrap();
    m.write_slice(&whole[50..], GuestAddress(BUF + 0x300))
        .unwrap();
    offer(&vq, 0, &[desc(BUF, 92, false)]);
    offer(
        &vq,
        1,
        &[desc(BUF + 0x200, 50, false), desc(BUF + 0x300, 42, false)],
    );
    let mut q: Queue = vq.create_queue().unwrap();
    let mut segs = Vec::with_capacity(2 * MAX_TX_SEGS);
    let mut r = ring(&mut q, &m, fast);
    let PopTx::Frame(one) = r.pop_tx(12, &mut segs) else {
        panic!("expected a frame")
    };
    assert_eq!(
        one.vnet,
        VnetHeader::from_bytes(hdr[..10].try_into().unwrap())
    );
    // Not asked for, the header is not read: it means nothing without offloads.
    let mut unread = IngressFrame::default();
    let mut q2: Queue = vq.create_queue().unwrap();
    let mut r2 = ring(&mut q2, &m, fast);
    assert!(matches!(
        r2.pop_tx_into(12, false, &mut segs, &mut unread),
        PopTx::Frame(())
    ));
    assert_eq!(unread.vnet, VnetHeader::default());
    assert_eq!(unread.len, 80);
    let PopTx::Frame(two) = r.pop_tx(12, &mut segs) else {
        panic!("expected a frame")
    };
    assert_eq!(
        one.segs_in(&segs),
        &[Seg {
            addr: BUF + 12,
            len: 80
        }]
    );
    assert_eq!(
        two.segs_in(&segs),
        &[
            Seg {
                addr: BUF + 0x200 + 12,
                len: 38
            },
            Seg {
                addr: BUF + 0x300,
                len: 42
            }
        ]
    );
    for tx in [&one, &two] {
        assert_eq!(tx.len, 80);
        let mut bytes = Vec::new();
        for s in tx.segs_in(&segs) {
            let mut b = vec![0u8; s.len as usize];
            m.read_slice(&mut b, GuestAddress(s.addr)).unwrap();
            bytes.extend_from_slice(&b);
        }
        assert_eq!(bytes, f);
    }
}

fn pop_tx_rejects_malformed_chains(fast: bool) {
    let m = mem();
    let cases: Vec<(Vec<RawDescriptor>, DropReason)> = vec![
        // A write-only descriptor in a TX chain.
        (
            vec![desc(BUF, 12, false), desc(BUF + 0x100, 64, true)],
            DropReason::BadDescriptor,
        ),
        // Shorter than header + Ethernet header.
        (vec![desc(BUF, 12 + 13, false)], DropReason::BadDescriptor),
        // Buffer outside guest memory.
        (
            vec![desc(BUF, 12, false), desc(0x4000_0000, 64, false)],
            DropReason::BadDescriptor,
        ),
        // Buffer running past the end of guest memory.
        (vec![desc(0x1f_fff0, 64, false)], DropReason::BadDescriptor),
        // Larger than the largest frame.
        (
            vec![
                desc(BUF, 12, false),
                desc(BUF, (MAX_FRAME_LEN + 1) as u32, false),
            ],
            DropReason::TooBig,
        ),
    ];
    for (descs, reason) in cases {
        let vq = MockSplitQueue::new(&m, 16);
        offer(&vq, 0, &descs);
        let mut q: Queue = vq.create_queue().unwrap();
        let mut segs = Vec::with_capacity(MAX_TX_SEGS);
        match pop_tx(&mut q, &m, 12, &mut segs, fast) {
            PopTx::Bad { head, reason: r } => {
                assert_eq!(head, 0);
                assert_eq!(r, reason, "{descs:?}");
            }
            other => panic!("{descs:?}: {other:?}"),
        }
        assert!(segs.is_empty());
    }
}

fn pop_tx_bounds_segment_count(fast: bool) {
    let m = mem();
    let vq = MockSplitQueue::new(&m, 128);
    let descs: Vec<_> = (0..(MAX_TX_SEGS as u64 + 2))
        .map(|i| desc(BUF + i * 16, 16, false))
        .collect();
    offer(&vq, 0, &descs);
    let mut q: Queue = vq.create_queue().unwrap();
    let mut segs = Vec::with_capacity(MAX_TX_SEGS);
    assert!(matches!(
        pop_tx(&mut q, &m, 12, &mut segs, fast),
        PopTx::Bad {
            reason: DropReason::BadDescriptor,
            ..
        }
    ));
}

/// Descriptors of no length cost a walk too: a TX chain may have [`MAX_TX_DESCS`] of them
/// in all, not one more.
fn pop_tx_bounds_descriptors_of_no_length(fast: bool) {
    let m = mem();
    let f = frame(60);
    m.write_slice(&f, GuestAddress(BUF + 0x100)).unwrap();
    for (n, ok) in [
        (MAX_TX_DESCS as u64, true),
        (MAX_TX_DESCS as u64 + 1, false),
    ] {
        let vq = MockSplitQueue::new(&m, 512);
        let mut descs = vec![desc(BUF, 12, false)];
        descs.extend((0..n - 2).map(|_| desc(0, 0, false)));
        descs.push(desc(BUF + 0x100, 60, false));
        offer(&vq, 0, &descs);
        let mut q: Queue = vq.create_queue().unwrap();
        let mut segs = Vec::with_capacity(MAX_TX_SEGS);
        match pop_tx(&mut q, &m, 12, &mut segs, fast) {
            PopTx::Frame(tx) => assert!(ok && tx.len == 60, "{n} descriptors"),
            PopTx::Bad {
                reason: DropReason::BadDescriptor,
                ..
            } => assert!(!ok, "{n} descriptors refused"),
            other => panic!("{n} descriptors: {other:?}"),
        }
    }
}

/// A TX chain whose indirect table has more entries than the ring has is refused, as the
/// virtio spec and DPDK refuse it, however few of them the chain uses. (The general path
/// cannot see the table's size; it walks what the chain uses, within [`MAX_TX_DESCS`].)
#[test]
fn the_fast_path_refuses_an_indirect_table_larger_than_the_ring() {
    use virtio_bindings::virtio_ring::VRING_DESC_F_INDIRECT;
    let m = mem();
    let f = frame(60);
    m.write_slice(&[0u8; 12], GuestAddress(BUF + 0x100))
        .unwrap();
    m.write_slice(&f, GuestAddress(BUF + 0x10c)).unwrap();
    let table = BUF + 0x1000;
    m.write_obj(desc(BUF + 0x100, 72, false), GuestAddress(table))
        .unwrap();
    for (entries, ok) in [(16u32, true), (17, false)] {
        let vq = MockSplitQueue::new(&m, 16);
        let indirect = RawDescriptor::from(Descriptor::new(
            table,
            16 * entries,
            VRING_DESC_F_INDIRECT as u16,
            0,
        ));
        vq.add_desc_chains(&[indirect], 0).unwrap();
        let mut q: Queue = vq.create_queue().unwrap();
        let mut segs = Vec::with_capacity(MAX_TX_SEGS);
        let popped = pop_tx(&mut q, &m, 12, &mut segs, true);
        assert_eq!(
            matches!(popped, PopTx::Frame(_)),
            ok,
            "a table of {entries}: {popped:?}"
        );
    }
}

/// Sets up a TX frame of `len` bytes at a fixed place and returns its segments.
/// Delivers the frame in `src` (in `m`) into `q`'s rings in `m`, behind a 12-byte header.
fn deliver_frame(
    q: &mut Queue,
    m: &FrameMem,
    fast: bool,
    mrg_rxbuf: bool,
    src: &[Seg],
    len: u32,
    used: &mut Vec<(u16, u32)>,
) -> Result<u32, DeliverError> {
    deliver_edited(q, m, fast, mrg_rxbuf, src, len, &FrameEdit::NONE, used)
}

#[allow(clippy::too_many_arguments)]
fn deliver_edited(
    q: &mut Queue,
    m: &FrameMem,
    fast: bool,
    mrg_rxbuf: bool,
    src: &[Seg],
    len: u32,
    edit: &FrameEdit,
    used: &mut Vec<(u16, u32)>,
) -> Result<u32, DeliverError> {
    let from = q.next_used();
    let mut r = ring(q, m, fast);
    let delivered = r.deliver::<false>(
        12,
        mrg_rxbuf,
        &mut MemView::new(m),
        src,
        len,
        edit,
        &mut RxScratch::default(),
    );
    r.publish_used().unwrap();
    used.extend(published_since(q, m, from));
    delivered
}

fn source(m: &FrameMem, len: usize) -> (Vec<u8>, Vec<Seg>) {
    let f = frame(len);
    m.write_slice(&f, GuestAddress(BUF + 0x8_0000)).unwrap();
    (
        f,
        vec![Seg {
            addr: BUF + 0x8_0000,
            len: len as u32,
        }],
    )
}

fn mergeable_rx_spreads_a_full_frame_over_small_buffers(fast: bool) {
    let m = mem();
    let vq = MockSplitQueue::new(&m, 16);
    for i in 0..4u16 {
        offer(&vq, i, &[desc(BUF + u64::from(i) * 0x1000, 512, true)]);
    }
    let mut q: Queue = vq.create_queue().unwrap();
    let (f, src) = source(&m, 1514);
    let mut used = Vec::new();
    let delivered = deliver_frame(&mut q, &m, fast, true, &src, 1514, &mut used).unwrap();
    assert_eq!(delivered, 1514);
    // 12 + 1514 = 1526 bytes: 512 + 512 + 502.
    assert_eq!(used, vec![(0, 512), (1, 512), (2, 502)]);
    let mut hdr = [0u8; 12];
    m.read_slice(&mut hdr, GuestAddress(BUF)).unwrap();
    assert_eq!(u16::from_le_bytes([hdr[10], hdr[11]]), 3, "num_buffers");
    assert_eq!(hdr[..10], [0u8; 10]);
    let mut got = vec![0u8; 1514];
    m.read_slice(&mut got[..500], GuestAddress(BUF + 12))
        .unwrap();
    m.read_slice(&mut got[500..1012], GuestAddress(BUF + 0x1000))
        .unwrap();
    m.read_slice(&mut got[1012..], GuestAddress(BUF + 0x2000))
        .unwrap();
    assert_eq!(got, f);
    assert_eq!(q.next_avail(), 3);
}

fn shortage_consumes_nothing(fast: bool) {
    let m = mem();
    let vq = MockSplitQueue::new(&m, 16);
    for i in 0..2u16 {
        offer(&vq, i, &[desc(BUF + u64::from(i) * 0x1000, 512, true)]);
    }
    let mut q: Queue = vq.create_queue().unwrap();
    let (_, src) = source(&m, 1514);
    let mut used = Vec::new();
    let e = deliver_frame(&mut q, &m, fast, true, &src, 1514, &mut used).unwrap_err();
    assert_eq!(e.reason, DropReason::NoRxBuffer);
    assert!(used.is_empty());
    assert_eq!(q.next_avail(), 0);
    // A frame that fits still goes through afterwards.
    let (_, src) = source(&m, 60);
    deliver_frame(&mut q, &m, fast, true, &src, 60, &mut used).unwrap();
    assert_eq!(used, vec![(0, 72)]);
}

fn without_mergeable_buffers_one_chain_must_hold_the_frame(fast: bool) {
    let m = mem();
    let vq = MockSplitQueue::new(&m, 16);
    offer(&vq, 0, &[desc(BUF, 512, true)]);
    offer(&vq, 1, &[desc(BUF + 0x1000, 2048, true)]);
    let mut q: Queue = vq.create_queue().unwrap();
    let (_, src) = source(&m, 1514);
    let mut used = Vec::new();
    let e = deliver_frame(&mut q, &m, fast, false, &src, 1514, &mut used).unwrap_err();
    assert_eq!(e.reason, DropReason::TooBig);
    assert_eq!(q.next_avail(), 0);
    let (_, src) = source(&m, 100);
    deliver_frame(&mut q, &m, fast, false, &src, 100, &mut used).unwrap();
    let mut hdr = [0u8; 12];
    m.read_slice(&mut hdr, GuestAddress(BUF)).unwrap();
    assert_eq!(u16::from_le_bytes([hdr[10], hdr[11]]), 1);
}

/// `n` RX chains, each one indirect descriptor whose table (one for all) holds `entries`
/// writable descriptors of no length: chains that cost a walk and hold nothing.
fn offer_empty_indirect_chains(vq: &MockSplitQueue<FrameMem>, m: &FrameMem, n: u16, entries: u16) {
    use virtio_bindings::virtio_ring::VRING_DESC_F_INDIRECT;
    let table = BUF + 0x4_0000;
    for i in 0..entries {
        let (flags, next) = if i + 1 < entries {
            ((VRING_DESC_F_WRITE | VRING_DESC_F_NEXT) as u16, i + 1)
        } else {
            (VRING_DESC_F_WRITE as u16, 0)
        };
        let d = RawDescriptor::from(Descriptor::new(0, 0, flags, next));
        m.write_obj(d, GuestAddress(table + 16 * u64::from(i)))
            .unwrap();
    }
    for k in 0..n {
        let d = Descriptor::new(
            table,
            16 * u32::from(entries),
            VRING_DESC_F_INDIRECT as u16,
            0,
        );
        vq.add_desc_chains(&[RawDescriptor::from(d)], k).unwrap();
    }
}

/// A receiver whose RX chains cost many descriptors each and hold nothing: each frame walks
/// at most [`MAX_RX_DESCS`] of them, after which the chains it walked are given back unused
/// (never walked again); each burst walks at most [`RX_BURST_DESCS`] for the ring, after
/// which its frames are dropped at the cost of one chain each.
fn rx_walks_are_bounded_per_frame_and_per_burst(fast: bool) {
    let m = mem();
    let vq = MockSplitQueue::new(&m, 1024);
    // 511 entries and the indirect descriptor: a whole frame's budget per chain.
    offer_empty_indirect_chains(&vq, &m, 200, 511);
    let mut q: Queue = vq.create_queue().unwrap();
    let (_, src) = source(&m, 60);
    let mut scratch = RxScratch::default();
    let mut burst = |q: &mut Queue, frames: usize| {
        let mut r = ring(q, &m, fast);
        for _ in 0..frames {
            let e = r
                .deliver::<false>(
                    12,
                    true,
                    &mut MemView::new(&m),
                    &src,
                    60,
                    &FrameEdit::NONE,
                    &mut scratch,
                )
                .unwrap_err();
            assert_eq!(e.reason, DropReason::BadDescriptor);
        }
        r.publish_used().unwrap();
    };
    let per_burst = (RX_BURST_DESCS / MAX_RX_DESCS) as u16;
    burst(&mut q, usize::from(per_burst) + 8);
    // The first frames walked a chain each and gave it back with the next one, which they
    // could not walk; once the burst's budget was spent, a frame gives back one chain.
    assert_eq!(q.next_avail(), 2 * per_burst + 8);
    let used = published_since(&q, &m, 0);
    assert_eq!(used.len(), usize::from(2 * per_burst + 8));
    assert!(used.iter().all(|&(_, len)| len == 0), "{used:?}");
    // The next burst has its budget again.
    burst(&mut q, 1);
    assert_eq!(q.next_avail(), 2 * per_burst + 10);
}

fn read_only_rx_chain_is_returned_unused(fast: bool) {
    let m = mem();
    let vq = MockSplitQueue::new(&m, 16);
    offer(&vq, 0, &[desc(BUF, 512, false)]);
    let mut q: Queue = vq.create_queue().unwrap();
    let (_, src) = source(&m, 60);
    let mut used = Vec::new();
    let e = deliver_frame(&mut q, &m, fast, true, &src, 60, &mut used).unwrap_err();
    assert_eq!(e.reason, DropReason::BadDescriptor);
    assert_eq!(used, vec![(0, 0)]);
}

fn rx_writes_nothing_past_the_frame(fast: bool) {
    let m = mem();
    let vq = MockSplitQueue::new(&m, 16);
    m.write_slice(&[0xAAu8; 2048], GuestAddress(BUF)).unwrap();
    offer(&vq, 0, &[desc(BUF, 2048, true)]);
    let mut q: Queue = vq.create_queue().unwrap();
    let (_, src) = source(&m, 64);
    let mut used = Vec::new();
    deliver_frame(&mut q, &m, fast, true, &src, 64, &mut used).unwrap();
    let mut after = [0u8; 64];
    m.read_slice(&mut after, GuestAddress(BUF + 76)).unwrap();
    assert_eq!(after, [0xAA; 64]);
}

/// An edit whose prefix and skipped bytes straddle source and destination segments: the
/// destination gets exactly prefix + source[skip..], spread over small buffers.
fn edits_replace_the_head_of_the_frame(fast: bool) {
    let m = mem();
    let f = frame(100);
    let at = BUF + 0x8_0000;
    m.write_slice(&f, GuestAddress(at)).unwrap();
    // Source in two pieces, split inside the bytes the edits replace.
    let src = [
        Seg { addr: at, len: 10 },
        Seg {
            addr: at + 10,
            len: 90,
        },
    ];
    let mut tag = [0u8; FrameEdit::MAX_PREFIX];
    tag[..12].copy_from_slice(&f[..12]);
    tag[12..16].copy_from_slice(&[0x81, 0x00, 0x00, 0x05]);
    let insert = FrameEdit {
        prefix: tag,
        prefix_len: 16,
        skip: 12,
    };
    let strip = FrameEdit {
        prefix: tag,
        prefix_len: 12,
        skip: 16,
    };
    let cases: [(&FrameEdit, Vec<u8>); 3] = [
        (&FrameEdit::NONE, f.clone()),
        (&insert, [&tag[..16], &f[12..]].concat()),
        (&strip, [&f[..12], &f[16..]].concat()),
    ];
    for (edit, want) in cases {
        assert_eq!(edit.out_len(100), Some(want.len() as u32));
        let vq = MockSplitQueue::new(&m, 16);
        for i in 0..16u16 {
            offer(&vq, i, &[desc(BUF + u64::from(i) * 0x100, 20, true)]);
        }
        let mut q: Queue = vq.create_queue().unwrap();
        let mut used = Vec::new();
        let delivered = deliver_edited(&mut q, &m, fast, true, &src, 100, edit, &mut used);
        assert_eq!(delivered, Ok(want.len() as u32));
        let total = 12 + want.len();
        assert_eq!(used.iter().map(|u| u.1 as usize).sum::<usize>(), total);
        let mut got = Vec::new();
        for &(head, n) in &used {
            let mut b = vec![0u8; n as usize];
            m.read_slice(&mut b, GuestAddress(BUF + u64::from(head) * 0x100))
                .unwrap();
            got.extend(b);
        }
        assert_eq!(got[12..], want[..]);
    }
    // An edit that replaces more than the frame holds is refused, consuming nothing.
    assert_eq!(strip.out_len(15), None);
    let vq = MockSplitQueue::new(&m, 16);
    offer(&vq, 0, &[desc(BUF, 2048, true)]);
    let mut q: Queue = vq.create_queue().unwrap();
    let mut used = Vec::new();
    let e = deliver_edited(&mut q, &m, fast, true, &src[..1], 10, &strip, &mut used).unwrap_err();
    assert_eq!(e.reason, DropReason::BadDescriptor);
    assert!(used.is_empty());
    assert_eq!(q.next_avail(), 0);
}

fn publish_used_writes_entries_then_index_once(fast: bool) {
    let m = mem();
    let vq = MockSplitQueue::new(&m, 8);
    let mut q: Queue = vq.create_queue().unwrap();
    let notify = publish_used(&mut q, &m, fast, &[(3, 100), (5, 0)]).unwrap();
    assert!(notify, "no suppression requested");
    let used = vq.used_addr().0;
    let idx: u16 = m.read_obj(GuestAddress(used + 2)).unwrap();
    assert_eq!(idx, 2);
    let e0: [u32; 2] = m.read_obj(GuestAddress(used + 4)).unwrap();
    let e1: [u32; 2] = m.read_obj(GuestAddress(used + 12)).unwrap();
    assert_eq!((e0, e1), ([3, 100], [5, 0]));
    let flags: u16 = m.read_obj(GuestAddress(used)).unwrap();
    assert_eq!(
        flags, VRING_USED_F_NO_NOTIFY as u16,
        "kicks suppressed while polling"
    );
    assert_eq!(q.next_used(), 2);
    // Heads beyond the ring are never written.
    publish_used(&mut q, &m, fast, &[(8, 1)]).unwrap();
    assert_eq!(q.next_used(), 2);
}

/// Used entries are written as chains are given back, and stay invisible to the driver
/// (its used index unmoved) until one publication makes them all visible.
fn used_entries_wait_for_their_publication(fast: bool) {
    let m = mem();
    let vq = MockSplitQueue::new(&m, 8);
    let mut q: Queue = vq.create_queue().unwrap();
    let used = vq.used_addr().0;
    let idx = |m: &FrameMem| m.read_obj::<u16>(GuestAddress(used + 2)).unwrap();
    {
        let mut r = ring(&mut q, &m, fast);
        r.add_used(3, 100);
        r.add_used(9, 1); // past the ring: skipped
        r.add_used(5, 0);
        assert_eq!(idx(&m), 0, "nothing published yet");
        let e1: [u32; 2] = m.read_obj(GuestAddress(used + 12)).unwrap();
        assert_eq!(e1, [5, 0], "written ahead, in order");
        r.publish_used().unwrap();
        assert_eq!(idx(&m), 2);
        assert!(!r.publish_used().unwrap(), "nothing new: no notification");
        assert_eq!(idx(&m), 2);
    }
    assert_eq!(q.next_used(), 2);
    assert_eq!(published_since(&q, &m, 0), vec![(3, 100), (5, 0)]);
    // A later view goes on from there, wrapping at the ring's size.
    let mut r = ring(&mut q, &m, fast);
    for head in 0..8 {
        r.add_used(head, 1);
    }
    r.publish_used().unwrap();
    assert_eq!(idx(&m), 10);
    assert_eq!(published_since(&q, &m, 8), vec![(6, 1), (7, 1)]);
}

fn publish_used_honours_event_idx_and_no_interrupt(fast: bool) {
    let m = mem();
    let vq = MockSplitQueue::new(&m, 8);
    let mut q: Queue = vq.create_queue().unwrap();
    let avail = vq.avail_addr().0;
    // Legacy suppression flag.
    m.write_obj(VRING_AVAIL_F_NO_INTERRUPT as u16, GuestAddress(avail))
        .unwrap();
    assert!(!publish_used(&mut q, &m, fast, &[(0, 1)]).unwrap());
    // EVENT_IDX: the driver wants a notification once used passes used_event = 2.
    q.set_event_idx(true);
    let used_event = GuestAddress(avail + 4 + 2 * 8);
    m.write_obj(2u16, used_event).unwrap();
    assert!(
        !publish_used(&mut q, &m, fast, &[(1, 1)]).unwrap(),
        "1 -> 2"
    );
    assert!(
        publish_used(&mut q, &m, fast, &[(2, 1), (3, 1)]).unwrap(),
        "2 -> 4"
    );
    assert!(
        !publish_used(&mut q, &m, fast, &[(4, 1)]).unwrap(),
        "4 -> 5"
    );
}

/// The fast path takes a queue whose available index runs more than a ring ahead out of
/// service (the general path, like virtio-queue, sees it as empty every time).
#[test]
fn a_corrupt_avail_index_disables_the_queue() {
    let m = mem();
    let vq = MockSplitQueue::new(&m, 16);
    offer(&vq, 0, &[desc(BUF, 12 + 60, false)]);
    vq.avail().idx().store(u16::to_le(1 + 16 + 1));
    let mut q: Queue = vq.create_queue().unwrap();
    let mut segs = Vec::with_capacity(MAX_TX_SEGS);
    assert!(matches!(
        pop_tx(&mut q, &m, 12, &mut segs, true),
        PopTx::Broken
    ));
    assert!(!q.ready());
    // Put right and set up anew (ready again), it serves again. Until then the worker does
    // not poll it: it checks `ready` before every burst (tests/hostile.rs shows that).
    vq.avail().idx().store(u16::to_le(1));
    q.set_ready(true);
    assert!(matches!(
        pop_tx(&mut q, &m, 12, &mut segs, true),
        PopTx::Frame(_)
    ));
    // On the RX side too.
    let vq = MockSplitQueue::new(&m, 16);
    offer(&vq, 0, &[desc(BUF, 2048, true)]);
    vq.avail().idx().store(u16::to_le(100));
    let mut q: Queue = vq.create_queue().unwrap();
    let (_, src) = source(&m, 60);
    let mut used = Vec::new();
    let err = deliver_frame(&mut q, &m, true, true, &src, 60, &mut used).unwrap_err();
    assert_eq!(err.reason, DropReason::BadDescriptor);
    assert!(!q.ready());
}

/// A driver that restarts from SET_VRING_BASE 0 although its rings hold history (DPDK's
/// virtio_user reconnecting to a restarted switch) resumes from its used index on the fast
/// path instead of being taken for corrupt.
#[test]
fn a_driver_restarted_from_base_0_resumes_from_its_used_index() {
    let m = mem();
    let vq = MockSplitQueue::new(&m, 16);
    offer(&vq, 0, &[desc(BUF, 12 + 60, false)]);
    // The driver's history: 1000 chains made available and used; the next one, in ring
    // slot 1000 % 16 = 8, is the chain above.
    vq.avail().ring().ref_at(8).unwrap().store(u16::to_le(0));
    vq.avail().idx().store(u16::to_le(1001));
    vq.used().idx().store(u16::to_le(1000));
    let mut q: Queue = vq.create_queue().unwrap();
    q.set_next_avail(0);
    q.set_next_used(1000);
    let mut segs = Vec::with_capacity(MAX_TX_SEGS);
    match pop_tx(&mut q, &m, 12, &mut segs, true) {
        PopTx::Frame(f) => assert_eq!((f.head, f.len), (0, 60)),
        other => panic!("{other:?}"),
    }
    assert!(q.ready());
    assert_eq!(q.next_avail(), 1001);
    // More than a ring between the used index and the driver's: corrupt after all.
    vq.avail().idx().store(u16::to_le(1000 + 17));
    let mut q: Queue = vq.create_queue().unwrap();
    q.set_next_avail(0);
    q.set_next_used(1000);
    segs.clear();
    assert!(matches!(
        pop_tx(&mut q, &m, 12, &mut segs, true),
        PopTx::Broken
    ));
    assert!(!q.ready());
}

/// A frame delivered into one large buffer (on the fast path, its one-buffer course): the
/// virtio-net header, the edited head, the rest of the frame, and not one byte past them; for
/// both header lengths and every kind of edit, with frames on either side of the lengths
/// from which the fixed-size stores are taken (the edit's whole prefix array after a 12-byte
/// header: 18 bytes of frame; the 32-byte head block after a 10-byte one: 22).
fn one_buffer_delivery_writes_exactly_the_frame(fast: bool) {
    let m = mem();
    for hdr_len in [10usize, 12] {
        for len in [14usize, 17, 18, 19, 20, 21, 22, 23, 100] {
            let f = frame(len);
            let at = BUF + 0x8_0000;
            m.write_slice(&f, GuestAddress(at)).unwrap();
            let src = [Seg {
                addr: at,
                len: len as u32,
            }];
            // Bytes past the prefix's length must never reach the guest.
            let mut tag = [0xAB; FrameEdit::MAX_PREFIX];
            tag[..12].copy_from_slice(&f[..12]);
            tag[12..16].copy_from_slice(&[0x81, 0x00, 0x00, 0x05]);
            let edit = |prefix_len, skip| FrameEdit {
                prefix: tag,
                prefix_len,
                skip,
            };
            let mut cases = vec![
                (FrameEdit::NONE, f.clone()),
                (edit(12, 12), f.clone()),
                (edit(16, 12), [&tag[..16], &f[12..]].concat()),
            ];
            if len >= 16 {
                cases.push((edit(12, 16), [&f[..12], &f[16..]].concat()));
            }
            // The buffer holds garbage, or already the header to be written (as a reused
            // buffer usually does: it is then left as it is).
            let mut held = vec![0u8; hdr_len];
            if hdr_len == 12 {
                held[10] = 1;
            }
            let cases = cases
                .into_iter()
                .flat_map(|c| [(c.clone(), false), (c, true)]);
            for ((edit, want), header_held) in cases {
                let vq = MockSplitQueue::new(&m, 16);
                m.write_slice(&[0xEE; 256], GuestAddress(BUF)).unwrap();
                if header_held {
                    m.write_slice(&held, GuestAddress(BUF)).unwrap();
                }
                offer(&vq, 0, &[desc(BUF, 2048, true)]);
                let mut q: Queue = vq.create_queue().unwrap();
                let mut r = ring(&mut q, &m, fast);
                let delivered = r.deliver::<false>(
                    hdr_len,
                    hdr_len == 12,
                    &mut MemView::new(&m),
                    &src,
                    len as u32,
                    &edit,
                    &mut RxScratch::default(),
                );
                assert_eq!(delivered, Ok(want.len() as u32), "{hdr_len} {len} {edit:?}");
                r.publish_used().unwrap();
                let used = published_since(&q, &m, 0);
                let total = hdr_len + want.len();
                assert_eq!(used, vec![(0, total as u32)], "{hdr_len} {len} {edit:?}");
                let mut b = [0u8; 256];
                m.read_slice(&mut b, GuestAddress(BUF)).unwrap();
                let mut hdr = vec![0u8; hdr_len];
                if hdr_len == 12 {
                    hdr[10] = 1; // num_buffers
                }
                assert_eq!(b[..hdr_len], hdr[..], "{hdr_len} {len} {edit:?}");
                assert_eq!(b[hdr_len..total], want[..], "{hdr_len} {len} {edit:?}");
                assert!(
                    b[total..].iter().all(|&x| x == 0xEE),
                    "written past the frame: {hdr_len} {len} {edit:?}"
                );
            }
        }
    }
}

/// What VIRTIO_F_IN_ORDER promises the driver: used entries come back in the order the
/// chains were made available, not in table order, refused chains included, on TX and RX.
fn chains_are_used_in_the_order_they_were_made_available(fast: bool) {
    let m = mem();
    // TX, in available order: a frame, a chain with a write-only descriptor, a frame over
    // two descriptors, one too short for an Ethernet header, a frame.
    let tx_chains: Vec<(u16, Vec<RawDescriptor>)> = vec![
        (6, vec![desc(BUF, 12 + 60, false)]),
        (
            2,
            vec![desc(BUF + 0x100, 12, false), desc(BUF + 0x200, 64, true)],
        ),
        (
            9,
            vec![desc(BUF + 0x300, 12, false), desc(BUF + 0x400, 60, false)],
        ),
        (4, vec![desc(BUF + 0x500, 12 + 13, false)]),
        (12, vec![desc(BUF + 0x600, 12 + 60, false)]),
    ];
    let vq = MockSplitQueue::new(&m, 16);
    for (at, descs) in &tx_chains {
        offer(&vq, *at, descs);
    }
    let mut q: Queue = vq.create_queue().unwrap();
    let mut segs = Vec::with_capacity(tx_chains.len() * MAX_TX_SEGS);
    let mut r = ring(&mut q, &m, fast);
    let mut frames = 0;
    // As the worker does: every chain goes back when popped, a frame's or not.
    for _ in 0..16 {
        match r.pop_tx(12, &mut segs) {
            PopTx::Frame(f) => {
                frames += 1;
                r.add_used(f.head, 0);
            }
            PopTx::Bad { head, .. } => r.add_used(head, 0),
            PopTx::Empty => break,
            PopTx::Broken => panic!("the ring is sound"),
        }
    }
    r.publish_used().unwrap();
    assert_eq!(frames, 3);
    let heads: Vec<u16> = published_since(&q, &m, 0).iter().map(|u| u.0).collect();
    assert_eq!(heads, [6, 2, 9, 4, 12]);

    // RX with mergeable buffers, in available order: a read-only chain (refused), two of
    // 512 bytes (one frame spread over both), one of 2048, one of 256.
    let vq = MockSplitQueue::new(&m, 16);
    offer(&vq, 7, &[desc(BUF, 512, false)]);
    offer(&vq, 3, &[desc(BUF + 0x1000, 512, true)]);
    offer(&vq, 11, &[desc(BUF + 0x2000, 512, true)]);
    offer(&vq, 5, &[desc(BUF + 0x3000, 2048, true)]);
    offer(&vq, 1, &[desc(BUF + 0x4000, 256, true)]);
    let mut q: Queue = vq.create_queue().unwrap();
    let mut used = Vec::new();
    for (len, ok) in [(60, false), (1000, true), (100, true), (60, true)] {
        let (_, src) = source(&m, len);
        let got = deliver_frame(&mut q, &m, fast, true, &src, len as u32, &mut used);
        assert_eq!(got.is_ok(), ok, "{len}: {got:?}");
    }
    assert_eq!(used, [(7, 0), (3, 512), (11, 500), (5, 112), (1, 72)]);
}

/// A frame built by the switch (a virtio-net header, host bytes, a range of a source frame)
/// spread over three mergeable buffers: the header with its num_buffers, then the bytes in
/// order, and the used lengths.
fn built_frames_carry_their_header_and_bytes(fast: bool) {
    let m = mem();
    let vq = MockSplitQueue::new(&m, 16);
    for i in 0..6u16 {
        offer(&vq, i, &[desc(BUF + 0x1000 * u64::from(i), 64, true)]);
    }
    let mut q: Queue = vq.create_queue().unwrap();
    let src: Vec<u8> = (0..200u32).map(|i| (i * 3 + 1) as u8).collect();
    m.write_slice(&src, GuestAddress(0x8000)).unwrap();
    let src_segs = [
        Seg {
            addr: 0x8000,
            len: 90,
        },
        Seg {
            addr: 0x9000,
            len: 110,
        },
    ];
    m.write_slice(&src[90..], GuestAddress(0x9000)).unwrap();
    let vnet = VnetHeader {
        flags: 1,
        gso_type: 1,
        hdr_len: 54,
        gso_size: 1448,
        csum_start: 34,
        csum_offset: 16,
    };
    let head = [0xAA; 20];
    let out = Outgoing {
        vnet,
        head: &head,
        skip: 85,
        len: 100,
    };
    let mut scratch = RxScratch::default();
    let mut src_view = MemView::new(&m);
    let mut r = ring(&mut q, &m, fast);
    let n = r
        .deliver_built(12, true, &mut src_view, &src_segs, &out, &mut scratch)
        .unwrap();
    assert_eq!(n, 120);
    r.publish_used().unwrap();
    // 12 + 20 + 100 = 132 bytes: three buffers of 64.
    let mut got = Vec::new();
    for i in 0..3u64 {
        let mut b = vec![0u8; 64];
        m.read_slice(&mut b, GuestAddress(BUF + 0x1000 * i))
            .unwrap();
        got.extend_from_slice(&b);
    }
    let mut want = vnet.to_bytes(3).to_vec();
    want.extend_from_slice(&head);
    want.extend_from_slice(&src[85..185]);
    assert_eq!(&got[..132], &want[..]);
    assert_eq!(published_since(&q, &m, 0), [(0, 64), (1, 64), (2, 4)]);

    // A range past the source's end is refused, its buffers given back unused.
    let mut r = ring(&mut q, &m, fast);
    let past = Outgoing {
        skip: 150,
        len: 60,
        ..out
    };
    let e = r
        .deliver_built(12, true, &mut src_view, &src_segs, &past, &mut scratch)
        .unwrap_err();
    assert_eq!(e.reason, DropReason::BadDescriptor);
}

/// A small xorshift generator: the same "random" traffic on every run.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// The 4 KiB pages of `[gpa, gpa + len)`.
fn pages(gpa: u64, len: u64) -> std::ops::Range<u64> {
    if len == 0 {
        return 0..0;
    }
    gpa / 4096..(gpa + len - 1) / 4096 + 1
}

fn logged_bursts_mark_exactly_the_pages_written(fast: bool) {
    use crate::vhost_user::dirty_log::DirtyLog;
    use crate::vhost_user::migration::WriteLog;
    use std::collections::BTreeSet;

    let m = mem();
    let vq = MockSplitQueue::new(&m, 256);
    let end = BUF + 0x10_0000;
    let log_file = crate::vhost_user::unlinked_file(4096);
    let log = DirtyLog::map(&log_file, 4096, 0, end).unwrap();
    // RX buffers live in the first half of the buffer region, filled with a byte no frame
    // holds; the source frames in the second half.
    const PATTERN: u8 = 0xa5;
    m.write_slice(&vec![PATTERN; 0x8_0000], GuestAddress(BUF))
        .unwrap();
    let src_at = BUF + 0x8_0000;
    let src_bytes: Vec<u8> = (0..9000u32)
        .map(|i| match (i * 31 + 7) as u8 {
            PATTERN => 0,
            b => b,
        })
        .collect();
    m.write_slice(&src_bytes, GuestAddress(src_at)).unwrap();
    let mut q: Queue = vq.create_queue().unwrap();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut expected = BTreeSet::new();
    let mut chains: Vec<Vec<(u64, u32)>> = vec![Vec::new(); 256];
    let mut offered = 0u16;
    for round in 0..8 {
        // A few chains of one to three writable buffers, anywhere, across page boundaries
        // as often as not. The first round's first frame ends one byte into a page.
        let mut at = 0u16;
        for _ in 0..1 + rng.below(5) {
            let n = 1 + rng.below(3) as usize;
            let mut bufs: Vec<(u64, u32)> = (0..n)
                .map(|_| (BUF + rng.below(0x7_0000), 64 + rng.below(3000) as u32))
                .collect();
            if round == 0 && at == 0 {
                bufs = vec![(BUF + 0x5000 - 111, 3000)];
            }
            let descs: Vec<RawDescriptor> = bufs.iter().map(|&(a, l)| desc(a, l, true)).collect();
            offer(&vq, at, &descs);
            chains[usize::from(at)] = bufs;
            at += n as u16;
            offered += 1;
        }
        let from = q.next_used();
        let mut r = ring(&mut q, &m, fast);
        let mut scratch = RxScratch::default();
        // Frames until the chains run out.
        for k in 0..8 {
            let len = if round == 0 && k == 0 {
                100
            } else {
                60 + rng.below(2000) as u32
            };
            let src = [Seg { addr: src_at, len }];
            if r.deliver::<false>(
                12,
                true,
                &mut MemView::new(&m),
                &src,
                len,
                &FrameEdit::NONE,
                &mut scratch,
            )
            .is_err()
            {
                break;
            }
        }
        let used_at = r.queue.used_ring();
        let log_to = WriteLog {
            log: &log,
            used_at: Some(used_at),
        };
        r.publish_used_logged(log_to).unwrap();
        // What the switch wrote: each entry's length over its chain's buffers, the entries,
        // the flags and index.
        for (head, len) in published_since(&q, &m, from) {
            let mut left = u64::from(len);
            for &(a, l) in &chains[usize::from(head)] {
                let n = left.min(u64::from(l));
                expected.extend(pages(a, n));
                left -= n;
            }
            assert_eq!(left, 0);
        }
        for i in from..q.next_used() {
            expected.extend(pages(used_at + 4 + 8 * u64::from(i % 256), 8));
        }
        expected.extend(pages(used_at, 4));
    }
    assert!(
        offered > 8 && q.next_used() > 8,
        "too little traffic to test"
    );
    let marked: BTreeSet<u64> = (0..end / 4096)
        .filter(|&p| log.is_marked(p * 4096))
        .collect();
    assert_eq!(marked, expected, "marked pages against pages written");
    // And every page whose bytes changed is marked.
    let mut now = vec![0u8; 0x8_0000];
    m.read_slice(&mut now, GuestAddress(BUF)).unwrap();
    for (i, page) in now.chunks(4096).enumerate() {
        if page.iter().any(|&b| b != PATTERN) {
            assert!(
                marked.contains(&(BUF / 4096 + i as u64)),
                "page {i} written, not marked"
            );
        }
    }
}

/// A guest that points its RX descriptor elsewhere after the switch wrote into its buffer
/// and before the burst is published: the log holds the page written, not the page the
/// descriptor names by then. Without a record of the writes (or one too small), the chains
/// are read again, and the log follows the descriptor.
fn logged_publish_marks_what_was_written_not_what_the_descriptors_say_after(fast: bool) {
    use crate::vhost_user::dirty_log::DirtyLog;
    use crate::vhost_user::migration::WriteLog;
    let m = mem();
    for room in [8, 0] {
        let log_file = crate::vhost_user::unlinked_file(4096);
        let log = DirtyLog::map(&log_file, 4096, 0, BUF + 0x10_0000).unwrap();
        let vq = MockSplitQueue::new(&m, 16);
        offer(&vq, 0, &[desc(BUF + 0x3000, 2048, true)]);
        let mut q: Queue = vq.create_queue().unwrap();
        let (_, src) = source(&m, 60);
        let mut written = WrittenRanges::with_capacity(room);
        let mut r = ring(&mut q, &m, fast);
        r.record_writes(&mut written);
        r.deliver::<true>(
            12,
            true,
            &mut MemView::new(&m),
            &src,
            60,
            &FrameEdit::NONE,
            &mut RxScratch::default(),
        )
        .unwrap();
        let table = r.queue.desc_table();
        m.write_obj(desc(BUF + 0x9000, 2048, true), GuestAddress(table))
            .unwrap();
        r.publish_used_logged(WriteLog {
            log: &log,
            used_at: None,
        })
        .unwrap();
        let (written_page, named_page) = (log.is_marked(BUF + 0x3000), log.is_marked(BUF + 0x9000));
        if room > 0 {
            assert!(written_page && !named_page, "recorded: the page written");
        } else {
            assert!(
                !written_page && named_page,
                "not recorded: the chain read again"
            );
        }
    }
}

/// Every test above runs on the general path and on the fast path, with the same rings.
macro_rules! on_both_paths {
    ($($name:ident),* $(,)?) => {
        mod general {
            $(#[test]
            fn $name() {
                super::$name(false)
            })*
        }
        mod fast {
            $(#[test]
            fn $name() {
                super::$name(true)
            })*
        }
    };
}

on_both_paths!(
    pop_tx_skips_a_header_that_straddles_descriptors,
    pop_tx_segments_of_one_and_of_several_buffers,
    pop_tx_rejects_malformed_chains,
    pop_tx_bounds_segment_count,
    pop_tx_bounds_descriptors_of_no_length,
    rx_walks_are_bounded_per_frame_and_per_burst,
    mergeable_rx_spreads_a_full_frame_over_small_buffers,
    shortage_consumes_nothing,
    without_mergeable_buffers_one_chain_must_hold_the_frame,
    read_only_rx_chain_is_returned_unused,
    rx_writes_nothing_past_the_frame,
    edits_replace_the_head_of_the_frame,
    one_buffer_delivery_writes_exactly_the_frame,
    publish_used_writes_entries_then_index_once,
    used_entries_wait_for_their_publication,
    publish_used_honours_event_idx_and_no_interrupt,
    chains_are_used_in_the_order_they_were_made_available,
    built_frames_carry_their_header_and_bytes,
    logged_bursts_mark_exactly_the_pages_written,
    logged_publish_marks_what_was_written_not_what_the_descriptors_say_after
);
