//! VXLAN (RFC 7348, and RFC 8365 for its use under EVPN): the 8-byte header after the outer
//! UDP header, and the outer IPv4 and UDP headers a tunnel port puts before it.
//!
//! A received packet is read through [`VxlanHeader::new_checked`]: it holds the header and
//! has the "I" flag (a valid VNI); the reserved bits are ignored, as the RFC asks of a
//! receiver. A sent one starts with [`header`]. The tunnel port sends through UDP sockets,
//! the kernel writing the outer headers; [`OuterIpv4`] (a template per remote end: per
//! frame only the lengths, the checksum and the source port change) is for a path that
//! writes whole packets itself (as the port did through a raw socket, and an AF_XDP one
//! would).

use crate::checksum::Checksum;
use crate::ip::{protocol, IPV4_MIN_HEADER_LEN};
use crate::Malformed;

/// Length of the VXLAN header.
pub const VXLAN_HEADER_LEN: usize = 8;
/// The IANA port of VXLAN.
pub const VXLAN_PORT: u16 = 4789;
/// The "I" flag: the VNI field is valid. The one flag VXLAN defines.
pub const FLAG_VNI: u8 = 0x08;
/// The largest VNI: 24 bits.
pub const MAX_VNI: u32 = (1 << 24) - 1;
/// Length of the UDP header.
pub const UDP_HEADER_LEN: usize = 8;
/// Bytes before the inner frame in an IPv4 tunnel's packet: IPv4, UDP and VXLAN headers.
pub const IPV4_ENCAP_LEN: usize = IPV4_MIN_HEADER_LEN + UDP_HEADER_LEN + VXLAN_HEADER_LEN;
/// What a frame costs of the underlay's MTU over its own length in an IPv4 tunnel: the
/// outer IPv4, UDP and VXLAN headers and the inner Ethernet header (which the inner MTU
/// does not count). A VM on a tunnel gets the underlay's MTU less this.
pub const IPV4_MTU_OVERHEAD: u32 = (IPV4_ENCAP_LEN + 14) as u32;

/// A VXLAN header (and the inner frame after it, if the buffer holds it).
#[derive(Debug, Clone, Copy)]
pub struct VxlanHeader<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> VxlanHeader<T> {
    /// Wraps a UDP payload that holds a VXLAN header with its "I" flag set.
    pub fn new_checked(buffer: T) -> Result<Self, Malformed> {
        let b = buffer.as_ref();
        if b.len() < VXLAN_HEADER_LEN || b[0] & FLAG_VNI == 0 {
            return Err(Malformed);
        }
        Ok(VxlanHeader { buffer })
    }

    /// The VXLAN network identifier.
    pub fn vni(&self) -> u32 {
        let b = self.buffer.as_ref();
        u32::from_be_bytes([0, b[4], b[5], b[6]])
    }

    /// The inner frame.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[VXLAN_HEADER_LEN..]
    }
}

/// The VXLAN header of VNI `vni` (only its low 24 bits count): the "I" flag, the rest zero.
pub fn header(vni: u32) -> [u8; VXLAN_HEADER_LEN] {
    let v = (vni & MAX_VNI).to_be_bytes();
    [FLAG_VNI, 0, 0, 0, v[1], v[2], v[3], 0]
}

/// The UDP source port of a frame whose inner flow hashes to `hash`: in the dynamic range
/// (49152 to 65535), so that the underlay's ECMP and a receiver's RSS spread the tunnel's
/// flows as they spread the inner ones (RFC 7348, section 5).
pub fn source_port(hash: u32) -> u16 {
    // Fold the high half in: a hash whose entropy is in its high bits still spreads.
    let h = hash ^ (hash >> 16);
    0xc000 | (h as u16 & 0x3fff)
}

/// The outer IPv4, UDP and VXLAN headers of the packets to one remote tunnel end: made
/// once, completed per frame by [`Self::for_frame`]. The IPv4 header has "don't fragment"
/// set (a packet too large for the path is dropped and counted, never fragmented) and no
/// options; the UDP checksum is zero, which RFC 7348 allows over IPv4 (the inner frame has
/// its own, and the outer IPv4 header its checksum).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OuterIpv4 {
    bytes: [u8; IPV4_ENCAP_LEN],
    /// The IPv4 header's checksum over every field but the total length (which changes per
    /// frame), as a running sum.
    partial: u32,
}

/// Time to live of the outer header, as Linux's VXLAN device sends by default.
pub const OUTER_TTL: u8 = 64;

impl OuterIpv4 {
    /// The headers from `src` to `dst`, to UDP port `dst_port`, for VNI `vni`.
    pub fn new(src: [u8; 4], dst: [u8; 4], dst_port: u16, vni: u32) -> OuterIpv4 {
        let mut b = [0u8; IPV4_ENCAP_LEN];
        // Version 4, 5 words; DSCP 0; total length per frame; ident 0 (DF set: RFC 6864
        // lets an atomic datagram's ident be anything); DF; TTL; UDP; checksum per frame.
        b[0] = 0x45;
        b[6] = 0x40;
        b[8] = OUTER_TTL;
        b[9] = protocol::UDP;
        b[12..16].copy_from_slice(&src);
        b[16..20].copy_from_slice(&dst);
        // UDP: source port per frame, destination port, length per frame, checksum 0.
        b[22..24].copy_from_slice(&dst_port.to_be_bytes());
        b[28..36].copy_from_slice(&header(vni));
        let mut c = Checksum::new();
        c.add(&b[..IPV4_MIN_HEADER_LEN]);
        OuterIpv4 {
            bytes: b,
            partial: u32::from(c.folded()),
        }
    }

    /// The headers of a packet carrying an inner frame of `inner_len` bytes, from UDP
    /// source port `src_port`; `None` if the packet would exceed an IPv4 datagram's 65,535
    /// bytes.
    pub fn for_frame(&self, inner_len: usize, src_port: u16) -> Option<[u8; IPV4_ENCAP_LEN]> {
        let total = u16::try_from(IPV4_ENCAP_LEN + inner_len).ok()?;
        let udp_len = total - IPV4_MIN_HEADER_LEN as u16;
        let mut b = self.bytes;
        b[2..4].copy_from_slice(&total.to_be_bytes());
        b[20..22].copy_from_slice(&src_port.to_be_bytes());
        b[24..26].copy_from_slice(&udp_len.to_be_bytes());
        // The template's sum with the total length added, folded and complemented.
        let mut s = self.partial + u32::from(total);
        while s > 0xffff {
            s = (s & 0xffff) + (s >> 16);
        }
        b[10..12].copy_from_slice(&(!(s as u16)).to_be_bytes());
        Some(b)
    }

    /// The remote end's address.
    pub fn destination(&self) -> [u8; 4] {
        [
            self.bytes[16],
            self.bytes[17],
            self.bytes[18],
            self.bytes[19],
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ip::Ipv4Packet;

    /// A VXLAN packet's UDP payload as Wireshark shows RFC 7348's example layout: flags
    /// 0x08, VNI 5001 (0x001389), an inner frame's first bytes.
    const PAYLOAD: [u8; 14] = [
        0x08, 0x00, 0x00, 0x00, 0x00, 0x13, 0x89, 0x00, // VXLAN
        0x02, 0x00, 0x00, 0x00, 0x00, 0x02, // inner destination MAC
    ];

    #[test]
    fn a_header_reads_its_vni_and_leaves_the_inner_frame() {
        let h = VxlanHeader::new_checked(&PAYLOAD[..]).unwrap();
        assert_eq!(h.vni(), 5001);
        assert_eq!(h.payload(), &PAYLOAD[8..]);
        assert_eq!(header(5001), PAYLOAD[..8]);
        // Reserved bits set by a sender are ignored; the VNI's 24 bits are all read.
        let mut odd = PAYLOAD;
        odd[0] = 0xff;
        odd[3] = 0xff;
        odd[4..7].copy_from_slice(&[0xff, 0xff, 0xff]);
        odd[7] = 0xff;
        let h = VxlanHeader::new_checked(&odd[..]).unwrap();
        assert_eq!(h.vni(), MAX_VNI);
        assert_eq!(header(MAX_VNI + 1)[4..7], [0, 0, 0], "24 bits only");
    }

    #[test]
    fn a_header_without_its_flag_or_cut_short_is_malformed() {
        let mut no_flag = PAYLOAD;
        no_flag[0] = 0x00;
        assert!(VxlanHeader::new_checked(&no_flag[..]).is_err());
        assert!(VxlanHeader::new_checked(&PAYLOAD[..7]).is_err());
        assert!(VxlanHeader::new_checked(&PAYLOAD[..8])
            .unwrap()
            .payload()
            .is_empty());
    }

    #[test]
    fn outer_headers_carry_the_lengths_a_valid_checksum_and_dont_fragment() {
        let o = OuterIpv4::new([10, 0, 0, 1], [10, 0, 0, 2], VXLAN_PORT, 5001);
        let b = o.for_frame(64, 0xc123).unwrap();
        assert_eq!(
            b,
            [
                0x45, 0x00, 0x00, 0x64, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x26,
                0x87, // IPv4
                10, 0, 0, 1, 10, 0, 0, 2, //
                0xc1, 0x23, 0x12, 0xb5, 0x00, 0x50, 0x00, 0x00, // UDP
                0x08, 0x00, 0x00, 0x00, 0x00, 0x13, 0x89, 0x00, // VXLAN
            ]
        );
        // The checksum a full computation gives, for other lengths too.
        for len in [0, 14, 1500, 9000, 65_535 - IPV4_ENCAP_LEN] {
            let b = o.for_frame(len, 0xc000).unwrap();
            let p = Ipv4Packet::new_checked(&b[..]).unwrap();
            assert!(p.checksum_ok(), "length {len}");
            assert_eq!(usize::from(p.total_len()), IPV4_ENCAP_LEN + len);
        }
        assert_eq!(o.for_frame(65_536 - IPV4_ENCAP_LEN, 0xc000), None);
        assert_eq!(o.destination(), [10, 0, 0, 2]);
    }

    #[test]
    fn source_ports_stay_in_the_dynamic_range_and_follow_the_hash() {
        assert_eq!(source_port(0), 0xc000);
        assert_eq!(source_port(u32::MAX), 0xc000);
        assert_eq!(source_port(0x0001_0000), 0xc001);
        assert!((0..10_000u32)
            .map(|i| source_port(i.wrapping_mul(0x9e37_79b9)))
            .all(|p| p >= 0xc000));
    }
}
