//! The guest-to-guest copy on hostile rings: frames popped from a fuzzed TX ring in one
//! VM's memory are delivered, edited, into a fuzzed RX ring in another VM's memory, then
//! both used rings are published. Whatever the rings hold:
//! - nothing panics;
//! - the source VM's memory changes only in its used ring;
//! - the destination VM's memory changes only in buffers its descriptors (direct or in
//!   indirect tables) mark device-writable, and in its used ring;
//! - while the destination's pages are logged (a live migration), every byte of it that
//!   changed is in a page marked dirty once the burst is published, whether the burst's
//!   writes were recorded as it made them or (past the record's room) found again from its
//!   used entries.

#![no_main]

use libfuzzer_sys::fuzz_target;
use virtio_queue::QueueT;
use vm_memory::{Bytes, GuestAddress};
use vringswitch_ports::frame::view::MemView;
use vringswitch_ports::frame::FrameEdit;
use vringswitch_ports::vhost_user::dirty_log::{log_bytes_for, DirtyLog};
use vringswitch_ports::vhost_user::migration::WriteLog;
use vringswitch_ports::vhost_user::rings::{
    PopTx, RingView, RxScratch, WrittenRanges, MAX_TX_SEGS,
};

#[path = "rings.rs"]
mod rings;
use rings::{memory, queue, snapshot, Bytes8, FrameMem};

const F_NEXT_WRITE_INDIRECT: (u16, u16) = (2, 4);

/// Device-writable ranges a ring's descriptors describe, direct and one level indirect.
fn writable(mem: &FrameMem, desc_table: u64, size: u16) -> Vec<(u64, u64)> {
    let (write, indirect) = F_NEXT_WRITE_INDIRECT;
    let read = |addr: u64| -> Option<(u64, u32, u16)> {
        let mut raw = [0u8; 16];
        mem.read_slice(&mut raw, GuestAddress(addr)).ok()?;
        Some((
            u64::from_le_bytes(raw[0..8].try_into().unwrap()),
            u32::from_le_bytes(raw[8..12].try_into().unwrap()),
            u16::from_le_bytes(raw[12..14].try_into().unwrap()),
        ))
    };
    let mut out = Vec::new();
    for i in 0..u64::from(size) {
        let Some((addr, len, flags)) = read(desc_table + 16 * i) else {
            continue;
        };
        if flags & write != 0 {
            out.push((addr, u64::from(len)));
        }
        if flags & indirect != 0 {
            for j in 0..u64::from(len / 16).min(4096) {
                if let Some((a, l, f)) = read(addr.wrapping_add(16 * j)) {
                    if f & write != 0 {
                        out.push((a, u64::from(l)));
                    }
                }
            }
        }
    }
    out
}

/// An unlinked file for the dirty log.
fn tempfile() -> std::fs::File {
    let t = vmm_sys_util::tempfile::TempFile::new().unwrap();
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(t.as_path())
        .unwrap();
    drop(t);
    f
}

fn inside(ranges: &[(u64, u64)], addr: u64) -> bool {
    ranges.iter().any(|&(a, l)| addr >= a && addr - a < l)
}

/// Every changed byte lies in `allowed`.
fn check_changes(what: &str, before: &[(u64, Vec<u8>)], mem: &FrameMem, allowed: &[(u64, u64)]) {
    for ((start, old), (_, new)) in before.iter().zip(snapshot(mem)) {
        for (i, (o, n)) in old.iter().zip(&new).enumerate() {
            let addr = start + i as u64;
            assert!(
                o == n || inside(allowed, addr),
                "{what}: byte {addr:#x} changed outside the allowed buffers"
            );
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut b = Bytes8::new(data);
    let flags = b.u8();
    let (hdr_len, mrg) = (if flags & 1 == 0 { 12 } else { 10 }, flags & 2 != 0);
    // Logged: with room to record a whole burst, or with room for two ranges only.
    let logged = flags & 4 != 0;
    let mut written = WrittenRanges::with_capacity(if flags & 8 != 0 { 2 } else { 64 * 512 });
    let mut edit = FrameEdit::NONE;
    edit.skip = b.u8() % 20;
    edit.prefix_len = b.u8() % 17;
    for p in edit.prefix.iter_mut() {
        *p = b.u8();
    }
    let (mut src_q, src_used) = queue(&mut b);
    let (mut dst_q, dst_used) = queue(&mut b);
    let split = usize::from(b.u16());
    let image = b.rest();
    let (a, c) = image.split_at(split.min(image.len()));
    let src_mem = memory(a);
    let dst_mem = memory(c);
    let src_before = snapshot(&src_mem);
    let dst_before = snapshot(&dst_mem);
    let dst_desc = dst_q.desc_table();
    let dst_size = dst_q.size();
    let used_ring = |at: u64, size: u16| (at, 6 + 8 * u64::from(size));
    let mut allowed = writable(&dst_mem, dst_desc, dst_size);
    allowed.push(used_ring(dst_used, dst_size));

    let covers = rings::REGIONS
        .iter()
        .map(|&(start, len)| start + len as u64)
        .max()
        .unwrap();
    let log_file = tempfile();
    log_file.set_len(log_bytes_for(covers)).unwrap();
    let log = DirtyLog::map(&log_file, log_bytes_for(covers), 0, covers).unwrap();
    let mut segs = Vec::with_capacity(MAX_TX_SEGS * 64);
    let mut scratch = RxScratch::default();
    {
        let mut tx = RingView::new(&mut src_q, &src_mem);
        let mut rx = RingView::new(&mut dst_q, &dst_mem);
        if logged {
            rx.record_writes(&mut written);
        }
        let mut src_view = MemView::new(&src_mem);
        for _ in 0..64 {
            if segs.capacity() - segs.len() < MAX_TX_SEGS {
                break;
            }
            match tx.pop_tx(hdr_len, &mut segs) {
                PopTx::Empty | PopTx::Broken => break,
                PopTx::Bad { head, .. } => tx.add_used(head, 0),
                PopTx::Frame(f) => {
                    tx.add_used(f.head, 0);
                    let frame = f.segs_in(&segs);
                    let _ = if logged {
                        rx.deliver::<true>(
                            hdr_len,
                            mrg,
                            &mut src_view,
                            frame,
                            f.len,
                            &edit,
                            &mut scratch,
                        )
                    } else {
                        rx.deliver::<false>(
                            hdr_len,
                            mrg,
                            &mut src_view,
                            frame,
                            f.len,
                            &edit,
                            &mut scratch,
                        )
                    };
                }
            }
        }
        let _ = if logged {
            rx.publish_used_logged(WriteLog {
                log: &log,
                used_at: Some(dst_used),
            })
        } else {
            rx.publish_used()
        };
        let _ = tx.publish_used();
    }
    // The writes may have rewritten the destination's own descriptors: what they say after
    // counts as well.
    allowed.extend(writable(&dst_mem, dst_desc, dst_size));
    check_changes("destination", &dst_before, &dst_mem, &allowed);
    if logged {
        for ((start, old), (_, new)) in dst_before.iter().zip(snapshot(&dst_mem)) {
            for (i, (o, n)) in old.iter().zip(&new).enumerate() {
                let addr = start + i as u64;
                assert!(
                    o == n || log.is_marked(addr),
                    "byte {addr:#x} of the destination changed in a page not marked dirty"
                );
            }
        }
    }
    check_changes(
        "source",
        &src_before,
        &src_mem,
        &[used_ring(src_used, src_q.size())],
    );
});
