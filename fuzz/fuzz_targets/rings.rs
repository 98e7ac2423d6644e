//! Shared by the ring targets: guest memory and split queues built from fuzz bytes.

#![allow(dead_code)]

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// Two regions with a hole between them, so buffers can straddle, miss or run off memory.
pub const REGIONS: [(u64, usize); 2] = [(0, 0x8000), (0x1_0000, 0x8000)];

pub type FrameMem = GuestMemoryMmap<()>;

/// Reads fuzz bytes in order, zeros once they run out.
#[derive(Clone)]
pub struct Bytes8<'a> {
    data: &'a [u8],
}

impl<'a> Bytes8<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Bytes8 { data }
    }
    pub fn u8(&mut self) -> u8 {
        match self.data.split_first() {
            Some((b, rest)) => {
                self.data = rest;
                *b
            }
            None => 0,
        }
    }
    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }
    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.data)
    }
}

/// Guest memory whose bytes are `image`, repeated (zero if empty).
pub fn memory(image: &[u8]) -> FrameMem {
    let mem =
        GuestMemoryMmap::<()>::from_ranges(&REGIONS.map(|(start, len)| (GuestAddress(start), len)))
            .unwrap();
    if !image.is_empty() {
        for (start, len) in REGIONS {
            let fill: Vec<u8> = image.iter().copied().cycle().take(len).collect();
            mem.write_slice(&fill, GuestAddress(start)).unwrap();
        }
    }
    mem
}

/// Where a ring part goes: mostly aligned addresses inside memory, sometimes anywhere.
fn ring_addr(b: &mut Bytes8<'_>, align: u64) -> u64 {
    let raw = u64::from(b.u16());
    if raw & 0x8000 != 0 {
        0x1_0000 + (raw & 0x7fff) / align * align
    } else if raw & 0x4000 != 0 {
        raw * 0x1_0000
    } else {
        (raw & 0x7fff) / align * align
    }
}

/// A ready split queue of up to 256 entries whose parts sit where the fuzz bytes say.
pub fn queue(b: &mut Bytes8<'_>) -> (Queue, u64) {
    let mut q = Queue::new(256).unwrap();
    q.set_size(1 << (b.u8() % 9));
    let desc = ring_addr(b, 16);
    // virtio-queue takes an available ring at 0 for one never set up (its general path
    // then sees the queue as not ready, where the fast path serves it): not a difference
    // worth reporting.
    let avail = ring_addr(b, 2).max(2);
    let used = ring_addr(b, 4);
    q.set_desc_table_address(Some(desc as u32), Some((desc >> 32) as u32));
    q.set_avail_ring_address(Some(avail as u32), Some((avail >> 32) as u32));
    q.set_used_ring_address(Some(used as u32), Some((used >> 32) as u32));
    q.set_event_idx(b.u8() & 1 != 0);
    q.set_next_avail(b.u16());
    q.set_next_used(b.u16());
    q.set_ready(true);
    (q, used)
}

/// Every byte of guest memory, region by region.
pub fn snapshot(mem: &FrameMem) -> Vec<(u64, Vec<u8>)> {
    REGIONS
        .iter()
        .map(|&(start, len)| {
            let mut v = vec![0u8; len];
            mem.read_slice(&mut v, GuestAddress(start)).unwrap();
            (start, v)
        })
        .collect()
}
