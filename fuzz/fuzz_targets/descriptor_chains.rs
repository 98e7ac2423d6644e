//! Descriptor-chain walking and virtio-net header skipping on a hostile TX ring: the fast
//! path and the general (virtio-queue) path pop the same ring in the same memory. Neither
//! may panic or describe bytes outside guest memory, and a frame the fast path accepts
//! must be the frame the general path sees.

#![no_main]

use std::sync::atomic::Ordering;

use libfuzzer_sys::fuzz_target;
use virtio_queue::QueueT;
use vm_memory::{Bytes, GuestAddress};
use vringswitch_ports::frame::Seg;
use vringswitch_ports::vhost_user::rings::{PopTx, RingView, MAX_TX_SEGS};

#[path = "rings.rs"]
mod rings;
use rings::{memory, queue, Bytes8, FrameMem};

fn bytes_of(mem: &FrameMem, segs: &[Seg]) -> Vec<u8> {
    let mut out = Vec::new();
    for s in segs {
        let mut v = vec![0u8; s.len as usize];
        mem.read_slice(&mut v, GuestAddress(s.addr))
            .unwrap_or_else(|e| panic!("segment {s:?} outside guest memory: {e}"));
        out.extend(v);
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let mut b = Bytes8::new(data);
    let hdr_len = if b.u8() & 1 == 0 { 12 } else { 10 };
    let mut same = b.clone();
    let (mut fast_q, _) = queue(&mut b);
    let (mut general_q, _) = queue(&mut same);
    let image = b.rest();
    let fast_mem = memory(image);
    let general_mem = memory(image);
    let mut fast_segs = Vec::with_capacity(MAX_TX_SEGS);
    let mut general_segs = Vec::with_capacity(MAX_TX_SEGS);
    for _ in 0..=2 * 256 {
        // The documented difference: a driver more than a ring ahead of the device's next
        // index but within a ring of its used index restarted from a wrong base; the fast
        // path resumes from the used index (virtio-queue sees a corrupt ring). The reference
        // is given the same rule before comparing.
        if let Ok(driver) = general_q.avail_idx(&general_mem, Ordering::Acquire) {
            let driver = driver.0;
            let (next, used) = (general_q.next_avail(), general_q.next_used());
            if driver.wrapping_sub(next) > general_q.size()
                && next != used
                && driver.wrapping_sub(used) <= general_q.size()
            {
                general_q.set_next_avail(used);
            }
        }
        fast_segs.clear();
        general_segs.clear();
        let fast = RingView::new(&mut fast_q, &fast_mem).pop_tx(hdr_len, &mut fast_segs);
        let general =
            RingView::general(&mut general_q, &general_mem).pop_tx(hdr_len, &mut general_segs);
        match (&fast, &general) {
            (PopTx::Empty, _) | (PopTx::Broken, _) => break,
            (PopTx::Frame(f), PopTx::Frame(g)) => {
                assert_eq!((f.head, f.len), (g.head, g.len));
                assert_eq!(f.vnet, g.vnet, "the virtio-net header read");
                let fb = bytes_of(&fast_mem, f.segs_in(&fast_segs));
                let gb = bytes_of(&general_mem, g.segs_in(&general_segs));
                assert_eq!(fb.len(), f.len as usize);
                assert_eq!(fb, gb);
                let n = f.peek.len().min(fb.len());
                assert_eq!(f.peek[..n], fb[..n]);
            }
            (PopTx::Frame(f), other) => {
                panic!(
                    "the fast path accepted chain {} the general path saw as {other:?}",
                    f.head
                )
            }
            (PopTx::Bad { .. }, _) => {}
        }
    }
});
