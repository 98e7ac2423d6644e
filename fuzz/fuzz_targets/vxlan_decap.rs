//! A tunnel port's decapsulation on any packet: who sent it (one of the segment's ends, or
//! a stranger, over IPv4 or IPv6), how long it is, whether the kernel cut it, and its
//! bytes. `admit` never panics, and passes exactly the packets of the port's VNI, with the
//! VXLAN flag, from an end of the segment, holding an Ethernet header; the wire view reads
//! back the header it was built from. And any burst of messages the kernel may hand over
//! (lengths, joined packets' size, cut or not) is walked a packet at a time, each packet
//! inside its message, one after the other, in a bounded number of steps.

#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use libfuzzer_sys::fuzz_target;
use vringswitch_ports::vxlan::socket::Received;
use vringswitch_ports::vxlan::{admit, Pending, Remotes, VXLAN_BUFFER, VXLAN_BUFFERS};
use vringswitch_ports::DropReason;
use vringswitch_wire::vxlan::{header, VxlanHeader, VXLAN_HEADER_LEN};

const VNI: u32 = 0x00ab_cdef;

fuzz_target!(|data: &[u8]| {
    let [who, cut, l0, l1, l2, rest @ ..] = data else {
        return;
    };
    let v6 = who & 8 != 0;
    let ends: [IpAddr; 2] = if v6 {
        [
            Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2).into(),
            Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 3).into(),
        ]
    } else {
        [
            Ipv4Addr::new(10, 0, 0, 2).into(),
            Ipv4Addr::new(10, 0, 0, 3).into(),
        ]
    };
    let remotes = Remotes::new(&ends, 4789);
    let from = match who % 8 {
        0 => None,
        1 => Some(SocketAddr::new(Ipv4Addr::new(10, 0, 0, 9).into(), 4789)),
        // The ends' addresses of the other family: strangers.
        2 => Some(SocketAddr::new(
            Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2).into(),
            1,
        )),
        3 => Some(SocketAddr::new(Ipv4Addr::new(10, 0, 0, 2).into(), 1)),
        n => Some(SocketAddr::new(ends[usize::from(n) % 2], 50_000)),
    };
    let len = usize::from(u16::from_le_bytes([*l0, *l1])) | usize::from(*l2 & 1) << 16;
    let mut hdr = [0u8; VXLAN_HEADER_LEN];
    let n = rest.len().min(VXLAN_HEADER_LEN);
    hdr[..n].copy_from_slice(&rest[..n]);
    let truncated = cut & 1 == 1;
    let verdict = admit(&remotes, VNI, from, len, truncated, &hdr);
    let known = from.and_then(|f| remotes.find(f.ip()));
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
    walk(rest);
});

/// A burst of messages from 5 bytes each (length, joined packets' size, cut), walked.
fn walk(data: &[u8]) {
    let mut p = Pending::default();
    let mut bound = 0;
    for (i, m) in data.chunks_exact(5).take(VXLAN_BUFFERS).enumerate() {
        let len = usize::from(u16::from_le_bytes([m[0], m[1]]));
        let segment = u16::from_le_bytes([m[2], m[3]]);
        p.got[i] = Received {
            len,
            from: None,
            truncated: m[4] & 1 == 1,
            segment,
        };
        p.end = i + 1;
        bound += 1 + len / usize::from(segment.max(1));
    }
    // Where the next packet must start: its message and offset.
    let mut next = (0, 0);
    for _ in 0..=bound {
        let Some((i, start, len, cut)) = p.next_packet() else {
            assert!(p.is_empty());
            assert_eq!(next, (p.end, 0), "every message walked to its end");
            return;
        };
        assert_eq!((i, start), next, "packets follow each other");
        let r = p.got[i];
        assert!(start + len <= r.len, "inside its message");
        if r.segment > 0 {
            assert!(len <= usize::from(r.segment));
        }
        assert!(
            !cut || (r.truncated && start + len == r.len),
            "only a cut message's last"
        );
        next = if len == 0 || start + len >= r.len {
            (i + 1, 0)
        } else {
            (i, start + len)
        };
    }
    panic!("more steps than the messages' packets");
}
