//! Direct access to a split virtqueue's three rings, translated once per burst.
//!
//! [`SplitRing::new`] checks, once, that the descriptor table, the available ring and the
//! used ring each lie inside one region of the VM's memory and are aligned as the virtio
//! spec requires. After that every ring access is a bounds-free pointer access at an index
//! reduced modulo the ring size: no translation, no error path. Rings that fail the check
//! (none seen in practice: Linux, DPDK and QEMU allocate each ring in one piece) are left to
//! the virtio-queue crate's slower, general path.
//!
//! Ring fields are little-endian; the targets vringswitch runs on (x86_64, aarch64) are too,
//! and the conversions below make that explicit.

// One of the few places where the data path touches guest memory through raw pointers;
// each unsafe block says why it stays inside the VM's mapped regions.
#![allow(unsafe_code)]

use std::marker::PhantomData;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU16, Ordering};

use virtio_bindings::virtio_ring::VRING_USED_F_NO_NOTIFY;
use virtio_queue::{Queue, QueueT};

use crate::frame::view::MemView;
use crate::frame::FrameMem;

/// Bytes of one descriptor.
pub const DESC_SIZE: usize = 16;

/// A descriptor, copied out of guest memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Desc {
    pub addr: u64,
    pub len: u32,
    pub flags: u16,
    pub next: u16,
}

impl Desc {
    pub(crate) fn parse(raw: [u8; DESC_SIZE]) -> Desc {
        let [a0, a1, a2, a3, a4, a5, a6, a7, l0, l1, l2, l3, f0, f1, n0, n1] = raw;
        Desc {
            addr: u64::from_le_bytes([a0, a1, a2, a3, a4, a5, a6, a7]),
            len: u32::from_le_bytes([l0, l1, l2, l3]),
            flags: u16::from_le_bytes([f0, f1]),
            next: u16::from_le_bytes([n0, n1]),
        }
    }
}

/// A table of descriptors in guest memory: the ring's own, or an indirect one.
#[derive(Clone, Copy)]
pub struct DescTable<'m> {
    base: NonNull<u8>,
    len: u16,
    _mem: PhantomData<&'m FrameMem>,
}

impl<'m> DescTable<'m> {
    /// The indirect table of `bytes` bytes at `addr`, if it is a whole number of
    /// descriptors (at most 65535) lying in one region.
    pub fn indirect(view: &mut MemView<'m>, addr: u64, bytes: u32) -> Option<DescTable<'m>> {
        if bytes == 0 || !(bytes as usize).is_multiple_of(DESC_SIZE) {
            return None;
        }
        let len = u16::try_from(bytes as usize / DESC_SIZE).ok()?;
        let base = view.contiguous(addr, bytes as usize)?;
        Some(DescTable {
            base,
            len,
            _mem: PhantomData,
        })
    }

    /// Number of descriptors in the table.
    #[inline]
    pub fn len(&self) -> u16 {
        self.len
    }

    /// Whether the table has no descriptor (never true of a table built here).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Starts loading descriptor `i` into the cache (nothing past the end of the table).
    #[inline]
    pub fn prefetch(&self, i: u16) {
        if i < self.len {
            // The address is computed with wrapping arithmetic and only hinted at.
            crate::frame::view::prefetch(
                self.base
                    .as_ptr()
                    .wrapping_add(usize::from(i) * DESC_SIZE)
                    .cast_const(),
            );
        }
    }

    /// Descriptor `i`, copied to the stack, or `None` past the end of the table.
    #[inline]
    pub fn get(&self, i: u16) -> Option<Desc> {
        if i >= self.len {
            return None;
        }
        let mut raw = [0u8; DESC_SIZE];
        // SAFETY: the table's `len` descriptors lie in one mapped region (checked when it was
        // built) that lives for 'm, and i < len. The copy goes to our stack and reads the
        // guest's bytes once, whatever the guest does meanwhile.
        unsafe {
            std::ptr::copy_nonoverlapping(
                self.base.as_ptr().add(usize::from(i) * DESC_SIZE),
                raw.as_mut_ptr(),
                DESC_SIZE,
            )
        };
        Some(Desc::parse(raw))
    }
}

/// The rings of one split virtqueue, checked once.
pub struct SplitRing<'m> {
    size: u16,
    /// `size - 1`: slots are indexes masked with it.
    mask: u16,
    desc: DescTable<'m>,
    /// `struct virtq_avail`: flags, idx, ring[size], used_event.
    avail: NonNull<u8>,
    /// `struct virtq_used`: flags, idx, ring[size] of (id: u32, len: u32), avail_event.
    used: NonNull<u8>,
}

impl<'m> SplitRing<'m> {
    /// Maps the rings of `queue`, or `None` if its size is not a power of two up to 32768,
    /// or a ring is misaligned or not within one region of guest memory.
    pub fn new(queue: &Queue, view: &mut MemView<'m>) -> Option<SplitRing<'m>> {
        let size = queue.size();
        if size == 0 || !size.is_power_of_two() || size > 32768 {
            return None;
        }
        let n = usize::from(size);
        let desc = view.contiguous(queue.desc_table(), DESC_SIZE * n)?;
        let avail = view.contiguous(queue.avail_ring(), 6 + 2 * n)?;
        let used = view.contiguous(queue.used_ring(), 6 + 8 * n)?;
        // Alignments from the virtio spec (2.7): the index fields are accessed atomically.
        if !(desc.as_ptr() as usize).is_multiple_of(16)
            || !(avail.as_ptr() as usize).is_multiple_of(2)
            || !(used.as_ptr() as usize).is_multiple_of(4)
        {
            return None;
        }
        Some(SplitRing {
            size,
            mask: size - 1,
            desc: DescTable {
                base: desc,
                len: size,
                _mem: PhantomData,
            },
            avail,
            used,
        })
    }

    #[inline]
    pub fn size(&self) -> u16 {
        self.size
    }

    /// The ring's own descriptor table.
    #[inline]
    pub fn table(&self) -> DescTable<'m> {
        self.desc
    }

    /// The u16 field at byte `off` of the available ring, loaded with `order`.
    #[inline]
    fn avail_u16(&self, off: usize, order: Ordering) -> u16 {
        // SAFETY: off + 2 <= 6 + 2 * size, the available ring's length checked in new(),
        // within a region living for 'm; `off` is even and the ring 2-aligned, as
        // AtomicU16 requires. The guest writes the same fields concurrently, which is what
        // the atomic access is for.
        let v = unsafe { AtomicU16::from_ptr(self.avail.as_ptr().add(off).cast::<u16>()) };
        u16::from_le(v.load(order))
    }

    /// The driver's available index. Acquire: the ring entries and descriptors it covers
    /// are visible once it is.
    #[inline]
    pub fn avail_idx(&self) -> u16 {
        self.avail_u16(2, Ordering::Acquire)
    }

    /// The slot of free-running index `idx`: `idx % size`, as a mask since the size is a
    /// power of two (checked in new()). `%` by a size known only at run time compiles to a
    /// hardware division, several per frame on the fast path.
    #[inline]
    fn slot(&self, idx: u16) -> usize {
        usize::from(idx & self.mask)
    }

    /// The head index in available slot `idx` (reduced modulo the ring size).
    #[inline]
    pub fn avail_head(&self, idx: u16) -> u16 {
        self.avail_u16(4 + 2 * self.slot(idx), Ordering::Relaxed)
    }

    /// The driver's flags (VRING_AVAIL_F_NO_INTERRUPT).
    #[inline]
    pub fn avail_flags(&self) -> u16 {
        self.avail_u16(0, Ordering::Acquire)
    }

    /// The driver's `used_event` (with EVENT_IDX).
    #[inline]
    pub fn used_event(&self) -> u16 {
        self.avail_u16(4 + 2 * usize::from(self.size), Ordering::Acquire)
    }

    /// Writes used slot `idx` (reduced modulo the ring size), unless it holds that entry
    /// already. With in-order chains and frames of one size it usually does: the slot was
    /// written with the same head and length one lap of the ring ago. The driver has read
    /// it since, so a store would have to take the line back from the driver's core; a
    /// read finds it shared (the same reason as `HostSpan::write_unless_equal`).
    #[inline]
    pub fn put_used(&self, idx: u16, head: u16, len: u32) {
        let mut raw = [0u8; 8];
        raw[..4].copy_from_slice(&u32::from(head).to_le_bytes());
        raw[4..].copy_from_slice(&len.to_le_bytes());
        let off = 4 + 8 * self.slot(idx);
        // SAFETY: off + 8 <= 4 + 8 * size, inside the used ring checked in new(), within a
        // region living for 'm.
        let slot = unsafe { self.used.as_ptr().add(off) };
        // SAFETY: the 8 bytes at `slot` are in the used ring (above); read unaligned (slots
        // are 4-aligned) into our own array. The driver only reads the used ring; whatever
        // a misbehaving one wrote there is compared, not trusted.
        let held = unsafe { std::ptr::read_unaligned(slot.cast::<[u8; 8]>()) };
        if held != raw {
            // SAFETY: as above. The driver does not read the slot before the index store
            // that publishes it.
            unsafe { std::ptr::copy_nonoverlapping(raw.as_ptr(), slot, 8) };
        }
    }

    /// The used entry in slot `idx` (reduced modulo the ring size): (head, length), as the
    /// worker wrote it, or as a misbehaving driver overwrote it since.
    #[inline]
    pub fn used_entry(&self, idx: u16) -> (u32, u32) {
        let off = 4 + 8 * self.slot(idx);
        // SAFETY: off + 8 <= 4 + 8 * size, inside the used ring checked in new(), within a
        // region living for 'm; read unaligned into our own array, whatever it holds.
        let raw =
            unsafe { std::ptr::read_unaligned(self.used.as_ptr().add(off).cast::<[u8; 8]>()) };
        let [h0, h1, h2, h3, l0, l1, l2, l3] = raw;
        (
            u32::from_le_bytes([h0, h1, h2, h3]),
            u32::from_le_bytes([l0, l1, l2, l3]),
        )
    }

    /// Sets VRING_USED_F_NO_NOTIFY: the driver need not kick while the worker polls.
    #[inline]
    pub fn suppress_kicks(&self) {
        // SAFETY: bytes 0..2 of the used ring (checked in new()), 4-aligned as AtomicU16
        // requires. Relaxed: the index store that follows (Release) orders it.
        let v = unsafe { AtomicU16::from_ptr(self.used.as_ptr().cast::<u16>()) };
        v.store((VRING_USED_F_NO_NOTIFY as u16).to_le(), Ordering::Relaxed);
    }

    /// Publishes the used index. Release: the slots written before are visible first.
    #[inline]
    pub fn set_used_idx(&self, idx: u16) {
        // SAFETY: bytes 2..4 of the used ring (checked in new()), 4-aligned base, so the
        // field is 2-aligned as AtomicU16 requires.
        let v = unsafe { AtomicU16::from_ptr(self.used.as_ptr().add(2).cast::<u16>()) };
        v.store(idx.to_le(), Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_queue::desc::{split::Descriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

    fn mem() -> FrameMem {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
    }

    /// A slot that holds the entry already is not written: its page is made read-only
    /// first, so a store would fault and end the test.
    #[test]
    fn put_used_leaves_a_slot_holding_the_entry_untouched() {
        let m = mem();
        let vq = MockSplitQueue::new(&m, 8);
        let q: Queue = vq.create_queue().unwrap();
        let mut view = MemView::new(&m);
        let ring = SplitRing::new(&q, &mut view).unwrap();
        let used = vq.used_addr().0;
        m.write_obj([3u32, 72], GuestAddress(used + 4 + 8 * 2))
            .unwrap();
        let page = m.get_host_address(GuestAddress(used & !0xfff)).unwrap();
        let protect = |prot| {
            // SAFETY: `page` is the page-aligned start of a page of the anonymous mapping
            // `m` owns; only its protection changes, and it is restored below.
            unsafe { libc::mprotect(page.cast(), 0x1000, prot) }
        };
        assert_eq!(protect(libc::PROT_READ), 0);
        ring.put_used(2 + 8, 3, 72);
        assert_eq!(protect(libc::PROT_READ | libc::PROT_WRITE), 0);
        // A different head or length is written.
        for (head, len) in [(3u16, 60u32), (4, 60)] {
            ring.put_used(2, head, len);
            let e: [u32; 2] = m.read_obj(GuestAddress(used + 4 + 8 * 2)).unwrap();
            assert_eq!(e, [u32::from(head), len]);
        }
    }

    #[test]
    fn reads_what_the_driver_wrote_and_writes_where_it_reads() {
        let m = mem();
        let vq = MockSplitQueue::new(&m, 8);
        let d = RawDescriptor::from(Descriptor::new(0x8000, 100, 2, 3));
        vq.add_desc_chains(&[d], 5).unwrap();
        let q: Queue = vq.create_queue().unwrap();
        let mut view = MemView::new(&m);
        let ring = SplitRing::new(&q, &mut view).unwrap();
        assert_eq!(ring.size(), 8);
        assert_eq!(ring.avail_idx(), 1);
        assert_eq!(ring.avail_head(0), 5);
        assert_eq!(ring.avail_head(8), 5, "slots wrap at the ring size");
        assert_eq!(
            ring.table().get(5),
            Some(Desc {
                addr: 0x8000,
                len: 100,
                flags: 2,
                next: 3
            })
        );
        assert_eq!(ring.table().get(8), None, "past the table");
        ring.put_used(9, 5, 64);
        ring.suppress_kicks();
        ring.set_used_idx(10);
        let used = vq.used_addr().0;
        let e: [u32; 2] = m.read_obj(GuestAddress(used + 4 + 8)).unwrap();
        assert_eq!(e, [5, 64], "slot 9 is slot 1");
        ring.put_used(u16::MAX, 6, 32);
        let e: [u32; 2] = m.read_obj(GuestAddress(used + 4 + 8 * 7)).unwrap();
        assert_eq!(
            e,
            [6, 32],
            "index 65535 is slot 7: the free-running index wraps too"
        );
        let avail = vq.avail_addr().0;
        m.write_obj(4u16, GuestAddress(avail + 4 + 2 * 7)).unwrap();
        assert_eq!(ring.avail_head(u16::MAX), 4);
        let idx: u16 = m.read_obj(GuestAddress(used + 2)).unwrap();
        assert_eq!(idx, 10);
        let flags: u16 = m.read_obj(GuestAddress(used)).unwrap();
        assert_eq!(flags, VRING_USED_F_NO_NOTIFY as u16);
        m.write_obj(7u16, GuestAddress(vq.avail_addr().0 + 4 + 16))
            .unwrap();
        assert_eq!(ring.used_event(), 7);
    }

    #[test]
    fn refuses_rings_it_cannot_map_whole() {
        // virtio-queue refuses sizes that are not powers of two and misaligned guest
        // addresses; what is left is rings outside memory or across regions, and a host
        // alignment that differs from the guest's when a region starts at an odd address.
        let m = GuestMemoryMmap::from_ranges(&[
            (GuestAddress(0), 0x1_0000),
            (GuestAddress(0x1_0000), 0x1_0000),
            (GuestAddress(0x10_0001), 0x1_0000),
        ])
        .unwrap();
        let mut view = MemView::new(&m);
        let queue = |desc: u64, avail: u64, used: u64| {
            let mut q = Queue::new(8).unwrap();
            q.set_size(8);
            q.set_desc_table_address(Some(desc as u32), Some((desc >> 32) as u32));
            q.set_avail_ring_address(Some(avail as u32), Some((avail >> 32) as u32));
            q.set_used_ring_address(Some(used as u32), Some((used >> 32) as u32));
            assert_eq!(
                (q.desc_table(), q.avail_ring(), q.used_ring()),
                (desc, avail, used)
            );
            q
        };
        assert!(SplitRing::new(&queue(0x1000, 0x2000, 0x3000), &mut view).is_some());
        assert!(
            SplitRing::new(&queue(0xffc0, 0x2000, 0x3000), &mut view).is_none(),
            "table across two regions"
        );
        assert!(
            SplitRing::new(&queue(0x1000, 0x2_0000, 0x3000), &mut view).is_none(),
            "avail ring outside memory"
        );
        assert!(
            SplitRing::new(&queue(0x1000, 0x2000, 0x1_fff0), &mut view).is_none(),
            "used ring runs off memory"
        );
        assert!(
            SplitRing::new(&queue(0x10_1000, 0x10_2000, 0x10_3000), &mut view).is_none(),
            "aligned in the guest, misaligned on the host"
        );
    }

    #[test]
    fn indirect_tables_must_be_whole_descriptors_in_one_region() {
        let m = mem();
        let mut view = MemView::new(&m);
        assert_eq!(
            DescTable::indirect(&mut view, 0x1000, 64).map(|t| t.len()),
            Some(4)
        );
        assert!(DescTable::indirect(&mut view, 0x1000, 0).is_none());
        assert!(DescTable::indirect(&mut view, 0x1000, 40).is_none());
        assert!(DescTable::indirect(&mut view, 0xf_fff0, 32).is_none());
        assert!(
            DescTable::indirect(&mut view, 0, 16 * 65536).is_none(),
            "more than 65535 descriptors"
        );
    }
}
