//! Offload headers from a hostile guest: a virtio-net header, what its sender and receiver
//! negotiated, a VLAN edit and the frame, in one to three pieces of guest memory. The
//! header is checked as a VM's TX frame is (`offload::accept`), then sent as the switch
//! sends it to a receiver (`software::send`).
//!
//! Fails on a panic; on an outgoing frame that reads outside the source frame or builds
//! headers longer than the switch's buffer; on segments whose payloads do not add up to the
//! frame's; on a segment count other than the one the sender's burst is charged for
//! (`VnetHeader::segments`), or above what a 64 KiB datagram of the smallest segment size
//! (`MIN_GSO_SIZE`) has; on a segment longer than its headers and one segment size (what a
//! receiver's MTU is checked against); on an IPv4 segment whose total length is not its
//! length (a wrapped one included).

#![no_main]

use libfuzzer_sys::fuzz_target;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vringswitch_ports::frame::view::MemView;
use vringswitch_ports::frame::{FrameEdit, Seg};
use vringswitch_ports::offload::software::{self, Sent};
use vringswitch_ports::offload::vnet_header::MIN_GSO_SIZE;
use vringswitch_ports::offload::{self, OffloadCaps, VnetHeader, MAX_HEADERS};
use vringswitch_wire::ethernet::ethertype;
use vringswitch_wire::ip::Ipv4Packet;
use vringswitch_wire::vlan::{TAG_LEN, TPID_8021AD, TPID_8021Q};

#[path = "rings.rs"]
mod rings;
use rings::Bytes8;

/// Every bitwise combination of the four offloads.
fn caps(b: u8) -> OffloadCaps {
    [
        OffloadCaps::CSUM,
        OffloadCaps::TSO4,
        OffloadCaps::TSO6,
        OffloadCaps::ECN,
    ]
    .into_iter()
    .enumerate()
    .filter(|(i, _)| b & (1 << i) != 0)
    .fold(OffloadCaps::NONE, |c, (_, x)| c | x)
}

/// An IPv4 packet's total length field in `head` (behind an Ethernet header and any VLAN
/// tags) equals the bytes behind it in a frame of `frame_len`.
fn check_ipv4_length(head: &[u8], frame_len: u32) {
    let be16 = |at: usize| u16::from_be_bytes([head[at], head[at + 1]]);
    let mut l3 = 12;
    while head.len() >= l3 + 2 && [TPID_8021Q, TPID_8021AD].contains(&be16(l3)) {
        l3 += TAG_LEN;
    }
    if head.len() < l3 + 6 || be16(l3) != ethertype::IPV4 {
        return;
    }
    let l3 = l3 + 2;
    let total = Ipv4Packet::new_unchecked(&head[l3..]).total_len();
    assert_eq!(
        u32::from(total),
        frame_len - l3 as u32,
        "an IPv4 total length"
    );
}

fuzz_target!(|data: &[u8]| {
    let mut b = Bytes8::new(data);
    let mut hdr = [0u8; VnetHeader::LEN];
    for x in hdr.iter_mut() {
        *x = b.u8();
    }
    let mut vnet = VnetHeader::from_bytes(&hdr);
    let (sent, taken) = (caps(b.u8()), caps(b.u8()));
    let mut edit = FrameEdit::NONE;
    match b.u8() % 4 {
        0 => {}
        // Pop a tag: 12 bytes of addresses replace 16.
        1 => (edit.prefix_len, edit.skip) = (12, 16),
        // Push one: 16 bytes replace 12.
        2 => (edit.prefix_len, edit.skip) = (16, 12),
        // Rewrite one in place.
        _ => (edit.prefix_len, edit.skip) = (16, 16),
    }
    let (cut1, cut2) = (usize::from(b.u16()), usize::from(b.u16()));
    let frame = b.rest();
    if frame.len() < 14 || frame.len() > 0x1_8000 {
        return;
    }
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x4_0000)]).unwrap();
    let (c1, c2) = (cut1.min(frame.len()), (cut1 + cut2).min(frame.len()));
    let mut segs = Vec::new();
    for (addr, range) in [
        (0x100u64, 0..c1),
        (0x1_0001, c1..c2),
        (0x2_0000, c2..frame.len()),
    ] {
        if !range.is_empty() {
            mem.write_slice(&frame[range.clone()], GuestAddress(addr))
                .unwrap();
            segs.push(Seg {
                addr,
                len: range.len() as u32,
            });
        }
    }
    let len = frame.len() as u32;
    let mut view = MemView::new(&mem);
    if offload::accept(&mut view, &segs, len, &mut vnet, sent).is_err() {
        return;
    }
    let mut payload = 0u64;
    let mut frames = 0u32;
    let src = software::Source {
        view: &mut view,
        segs: &segs,
        len,
        vnet,
    };
    let segment_max = u32::from(vnet.hdr_len) + u32::from(vnet.gso_size) + 4;
    let r = software::send(src, &edit, taken, |_, out| {
        assert!(out.head.len() <= MAX_HEADERS + FrameEdit::MAX_PREFIX);
        assert!(
            out.skip as u64 + u64::from(out.len) <= u64::from(len),
            "reads past the frame: {out:?}"
        );
        assert!(out.longest_on_the_wire() <= out.frame_len());
        if vnet.is_gso() && !out.vnet.is_gso() {
            // A segment cut here: its headers (a tag pushed at most) and one segment.
            assert!(
                out.frame_len() <= segment_max,
                "a segment of {}",
                out.frame_len()
            );
            check_ipv4_length(out.head, out.frame_len());
        }
        payload += u64::from(out.len);
        frames += 1;
        Ok(())
    });
    match r {
        Ok(Sent::Segmented(n)) => {
            assert_eq!(n, frames);
            assert_eq!(
                n,
                vnet.segments(len),
                "segments against the sender's charge"
            );
            assert!(n <= 65_535 / u32::from(MIN_GSO_SIZE) + 1, "{n} segments");
            // Every payload byte once: the frame less its headers.
            assert_eq!(payload, u64::from(len) - u64::from(vnet.hdr_len));
        }
        Ok(_) => assert_eq!(frames, 1),
        Err(_) => {}
    }
});
