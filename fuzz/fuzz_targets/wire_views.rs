//! The wire crate's views on any bytes: a view that `new_checked` accepts never panics in
//! an accessor or a setter, a rewritten IPv4 header's checksum checks out, a tag edit
//! gives the frame back its addresses and (popped after pushed) its first bytes, and the
//! virtio-net header reads back what it wrote.

#![no_main]

use libfuzzer_sys::fuzz_target;
use vringswitch_wire::ip::{Ipv4Packet, Ipv6Packet};
use vringswitch_wire::tcp::TcpSegment;
use vringswitch_wire::vlan::{self, Header, TAGGED_HEADER_LEN};
use vringswitch_wire::{EthernetFrame, VnetHeader};

fuzz_target!(|data: &[u8]| {
    if let Ok(e) = EthernetFrame::new_checked(data) {
        let _ = (e.dst(), e.src(), e.ethertype());
    }
    let mut b = data.to_vec();
    if let Ok(mut ip) = Ipv4Packet::new_checked(&mut b[..]) {
        let _ = (ip.total_len(), ip.ident(), ip.is_fragment(), ip.ttl(), ip.protocol());
        let _ = (ip.src(), ip.dst(), ip.addresses().len(), ip.checksum());
        ip.set_total_len(0xffff);
        ip.set_ident(7);
        ip.fill_checksum();
        assert!(ip.checksum_ok(), "a filled checksum that does not check");
    }
    let mut b = data.to_vec();
    if let Ok(mut ip) = Ipv6Packet::new_checked(&mut b[..]) {
        let _ = (ip.payload_len(), ip.next_header(), ip.hop_limit(), ip.src(), ip.dst());
        ip.set_payload_len(1);
        assert_eq!(ip.payload_len(), 1);
    }
    let mut b = data.to_vec();
    if let Ok(mut t) = TcpSegment::new_checked(&mut b[..]) {
        let _ = (t.src_port(), t.dst_port(), t.ack(), t.window(), t.checksum());
        assert!(t.header_len() >= 20 && t.header_len() <= data.len());
        let flags = t.flags();
        t.set_seq(t.seq().wrapping_add(1));
        t.set_flags(flags);
        t.set_checksum(0);
        assert_eq!(t.flags(), flags);
    }
    if data.len() >= TAGGED_HEADER_LEN {
        let h: Header = data[..TAGGED_HEADER_LEN].try_into().unwrap();
        let tci = u16::from_le_bytes([data[0], data[1]]);
        let mut pushed = h;
        let (len, skip) = vlan::push_tag(&mut pushed, &h, tci);
        assert_eq!((len, skip), (18, 14));
        assert_eq!(vlan::tci(&pushed), Some(tci));
        assert_eq!(pushed[..12], h[..12], "the addresses stay");
        let mut popped = pushed;
        let (len, _) = vlan::pop_tag(&mut popped, &pushed);
        assert_eq!(popped[..len], h[..14], "pop after push gives the frame's start back");
    }
    if data.len() >= VnetHeader::LEN {
        let v = VnetHeader::from_bytes(data[..VnetHeader::LEN].try_into().unwrap());
        assert_eq!(v.to_bytes(0)[..VnetHeader::LEN], data[..VnetHeader::LEN]);
        let _ = v.segments(u32::from_le_bytes([data[0], data[1], data[2], data[3]]));
    }
});
