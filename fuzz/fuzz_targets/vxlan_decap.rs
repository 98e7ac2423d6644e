//! A tunnel port's decapsulation on any packet: who sent it (one of the segment's ends, or
//! a stranger), how long it is, whether the kernel cut it, and its bytes. `admit` never
//! panics, and passes exactly the packets of the port's VNI, with the VXLAN flag, from an
//! end of the segment, holding an Ethernet header; the wire view reads back the header
//! it was built from.

#![no_main]

use std::net::{Ipv4Addr, SocketAddrV4};

use libfuzzer_sys::fuzz_target;
use vringswitch_ports::vxlan::{admit, Remotes, VXLAN_BUFFER};
use vringswitch_ports::DropReason;
use vringswitch_wire::vxlan::{header, VxlanHeader, VXLAN_HEADER_LEN};

const VNI: u32 = 0x00ab_cdef;

fuzz_target!(|data: &[u8]| {
    let [who, cut, l0, l1, l2, rest @ ..] = data else {
        return;
    };
    let ends = [Ipv4Addr::new(10, 0, 0, 2), Ipv4Addr::new(10, 0, 0, 3)];
    let remotes = Remotes::new(&ends, 4789);
    let from = match who % 4 {
        0 => None,
        1 => Some(SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 9), 4789)),
        n => Some(SocketAddrV4::new(ends[usize::from(n) - 2], 50_000)),
    };
    let len = usize::from(u16::from_le_bytes([*l0, *l1])) | usize::from(*l2 & 1) << 16;
    let mut hdr = [0u8; VXLAN_HEADER_LEN];
    let n = rest.len().min(VXLAN_HEADER_LEN);
    hdr[..n].copy_from_slice(&rest[..n]);
    let truncated = cut & 1 == 1;
    let verdict = admit(&remotes, VNI, from, len, truncated, &hdr);
    let known = from.and_then(|f| remotes.find(*f.ip()));
    let good_header =
        hdr[0] & 0x08 != 0 && VxlanHeader::new_checked(&hdr[..]).unwrap().vni() == VNI;
    match verdict {
        Ok(end) => {
            assert_eq!(Some(end), known);
            assert!(good_header && !truncated);
            assert!(len >= VXLAN_HEADER_LEN + 14 && (len as u64) < VXLAN_BUFFER);
        }
        Err(DropReason::UnknownVtep) => assert!(known.is_none()),
        Err(DropReason::TooBig) => assert!(truncated || len as u64 >= VXLAN_BUFFER),
        Err(DropReason::BadTunnel) => {
            assert!(!good_header || len < VXLAN_HEADER_LEN + 14)
        }
        Err(other) => panic!("dropped as {other:?}"),
    }
    if let Ok(h) = VxlanHeader::new_checked(&hdr[..]) {
        assert_eq!(header(h.vni())[4..7], hdr[4..7]);
    }
});
