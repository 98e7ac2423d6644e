//! IPv4 and IPv6 headers as typed views over bytes, and the protocol numbers in them.
//!
//! `new_checked` verifies once that the buffer holds the fixed header (and for IPv4 the
//! version, and options as long as the header says); no accessor can panic after it.
//! Setters exist for what the switch rewrites when it cuts a TSO frame into segments.

use crate::checksum::Checksum;
use crate::{be16, Malformed};

/// IP protocol numbers (IPv4's protocol, IPv6's next header).
pub mod protocol {
    /// IPv6 hop-by-hop options (only as IPv6's first next header).
    pub const HOP_BY_HOP: u8 = 0;
    pub const ICMP: u8 = 1;
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
    /// SCTP (RFC 9260).
    pub const SCTP: u8 = 132;
    /// IPv6 routing header.
    pub const ROUTING: u8 = 43;
    /// IPv6 fragment header.
    pub const FRAGMENT: u8 = 44;
    pub const ICMPV6: u8 = 58;
    /// IPv6: no next header.
    pub const NO_NEXT: u8 = 59;
    /// IPv6 destination options.
    pub const DEST_OPTS: u8 = 60;
}

/// Length of an IPv4 header without options.
pub const IPV4_MIN_HEADER_LEN: usize = 20;
/// Length of an IPv6 header (extension headers follow it).
pub const IPV6_HEADER_LEN: usize = 40;

mod v4 {
    pub const VER_IHL: usize = 0;
    pub const TOTAL_LEN: usize = 2;
    pub const IDENT: usize = 4;
    pub const FLAGS_FRAG: usize = 6;
    pub const TTL: usize = 8;
    pub const PROTOCOL: usize = 9;
    pub const CHECKSUM: usize = 10;
    pub const SRC: usize = 12;
    pub const DST: usize = 16;
}

mod v6 {
    pub const PAYLOAD_LEN: usize = 4;
    pub const NEXT_HEADER: usize = 6;
    pub const HOP_LIMIT: usize = 7;
    pub const SRC: usize = 8;
    pub const DST: usize = 24;
}

/// An IPv4 header (and whatever follows it in the buffer).
#[derive(Debug, Clone, Copy)]
pub struct Ipv4Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Ipv4Packet<T> {
    /// Wraps a buffer without checking it; accessors may panic if it is too short.
    pub fn new_unchecked(buffer: T) -> Self {
        Ipv4Packet { buffer }
    }

    /// Wraps a buffer that holds an IPv4 header: version 4, a header length of at least
    /// 20 bytes, and as many bytes as it says.
    pub fn new_checked(buffer: T) -> Result<Self, Malformed> {
        let p = Self::new_unchecked(buffer);
        let b = p.buffer.as_ref();
        if b.len() < IPV4_MIN_HEADER_LEN
            || p.version() != 4
            || p.header_len() < IPV4_MIN_HEADER_LEN
            || b.len() < p.header_len()
        {
            return Err(Malformed);
        }
        Ok(p)
    }

    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[v4::VER_IHL] >> 4
    }

    /// The header's length in bytes, options included (IHL times 4).
    pub fn header_len(&self) -> usize {
        usize::from(self.buffer.as_ref()[v4::VER_IHL] & 0x0f) * 4
    }

    /// The datagram's length, header included.
    pub fn total_len(&self) -> u16 {
        be16(self.buffer.as_ref(), v4::TOTAL_LEN)
    }

    pub fn ident(&self) -> u16 {
        be16(self.buffer.as_ref(), v4::IDENT)
    }

    /// Whether this is a fragment: more fragments follow, or it starts past offset 0.
    pub fn is_fragment(&self) -> bool {
        be16(self.buffer.as_ref(), v4::FLAGS_FRAG) & 0x3fff != 0
    }

    /// Where this fragment's data starts in the datagram, in bytes (0: the first, or no
    /// fragment).
    pub fn frag_offset(&self) -> u16 {
        (be16(self.buffer.as_ref(), v4::FLAGS_FRAG) & 0x1fff) << 3
    }

    pub fn ttl(&self) -> u8 {
        self.buffer.as_ref()[v4::TTL]
    }

    pub fn protocol(&self) -> u8 {
        self.buffer.as_ref()[v4::PROTOCOL]
    }

    pub fn checksum(&self) -> u16 {
        be16(self.buffer.as_ref(), v4::CHECKSUM)
    }

    pub fn src(&self) -> [u8; 4] {
        let b = self.buffer.as_ref();
        [b[v4::SRC], b[v4::SRC + 1], b[v4::SRC + 2], b[v4::SRC + 3]]
    }

    pub fn dst(&self) -> [u8; 4] {
        let b = self.buffer.as_ref();
        [b[v4::DST], b[v4::DST + 1], b[v4::DST + 2], b[v4::DST + 3]]
    }

    /// The source and destination addresses as they lie (what a pseudo-header sums).
    pub fn addresses(&self) -> &[u8] {
        &self.buffer.as_ref()[v4::SRC..v4::DST + 4]
    }

    /// Whether the header checksum is right.
    pub fn checksum_ok(&self) -> bool {
        let mut c = Checksum::new();
        c.add(&self.buffer.as_ref()[..self.header_len()]);
        c.folded() == 0xffff
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Ipv4Packet<T> {
    pub fn set_total_len(&mut self, len: u16) {
        self.buffer.as_mut()[v4::TOTAL_LEN..v4::TOTAL_LEN + 2].copy_from_slice(&len.to_be_bytes());
    }

    pub fn set_ident(&mut self, id: u16) {
        self.buffer.as_mut()[v4::IDENT..v4::IDENT + 2].copy_from_slice(&id.to_be_bytes());
    }

    /// Computes the header checksum and stores it.
    pub fn fill_checksum(&mut self) {
        let n = self.header_len();
        let b = self.buffer.as_mut();
        b[v4::CHECKSUM..v4::CHECKSUM + 2].copy_from_slice(&[0, 0]);
        let mut c = Checksum::new();
        c.add(&b[..n]);
        b[v4::CHECKSUM..v4::CHECKSUM + 2].copy_from_slice(&c.finish().to_be_bytes());
    }
}

/// An IPv6 header (and whatever follows it in the buffer).
#[derive(Debug, Clone, Copy)]
pub struct Ipv6Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Ipv6Packet<T> {
    /// Wraps a buffer without checking it; accessors may panic if it is too short.
    pub fn new_unchecked(buffer: T) -> Self {
        Ipv6Packet { buffer }
    }

    /// Wraps a buffer that holds an IPv6 header of version 6.
    pub fn new_checked(buffer: T) -> Result<Self, Malformed> {
        let p = Self::new_unchecked(buffer);
        if p.buffer.as_ref().len() < IPV6_HEADER_LEN || p.version() != 6 {
            return Err(Malformed);
        }
        Ok(p)
    }

    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[0] >> 4
    }

    /// Bytes after the fixed header: extension headers and the upper layer.
    pub fn payload_len(&self) -> u16 {
        be16(self.buffer.as_ref(), v6::PAYLOAD_LEN)
    }

    pub fn next_header(&self) -> u8 {
        self.buffer.as_ref()[v6::NEXT_HEADER]
    }

    pub fn hop_limit(&self) -> u8 {
        self.buffer.as_ref()[v6::HOP_LIMIT]
    }

    pub fn src(&self) -> [u8; 16] {
        let mut a = [0u8; 16];
        a.copy_from_slice(&self.buffer.as_ref()[v6::SRC..v6::SRC + 16]);
        a
    }

    pub fn dst(&self) -> [u8; 16] {
        let mut a = [0u8; 16];
        a.copy_from_slice(&self.buffer.as_ref()[v6::DST..v6::DST + 16]);
        a
    }

    /// The source and destination addresses as they lie (what a pseudo-header sums).
    pub fn addresses(&self) -> &[u8] {
        &self.buffer.as_ref()[v6::SRC..v6::DST + 16]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Ipv6Packet<T> {
    pub fn set_payload_len(&mut self, len: u16) {
        self.buffer.as_mut()[v6::PAYLOAD_LEN..v6::PAYLOAD_LEN + 2]
            .copy_from_slice(&len.to_be_bytes());
    }
}

/// An IPv6 extension header of the kinds that carry options (hop-by-hop, destination
/// options): its next header and its length.
pub fn ipv6_options_header(b: &[u8]) -> Option<(u8, usize)> {
    Some((*b.first()?, (usize::from(*b.get(1)?) + 1) * 8))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The worked example of IPv4's header checksum that textbooks and Wikipedia use:
    /// 172.16.10.99 -> 172.16.10.12, TCP, 60 bytes in all, ID 0x1c46, DF, TTL 64,
    /// checksum 0xb1e6.
    const V4: [u8; 20] = [
        0x45, 0x00, 0x00, 0x3c, 0x1c, 0x46, 0x40, 0x00, 0x40, 0x06, 0xb1, 0xe6, 172, 16, 10, 99,
        172, 16, 10, 12,
    ];

    #[test]
    fn an_ipv4_header_reads_as_the_wire_has_it() {
        let p = Ipv4Packet::new_checked(&V4[..]).unwrap();
        assert_eq!((p.version(), p.header_len(), p.total_len()), (4, 20, 60));
        assert_eq!(
            (p.ident(), p.ttl(), p.protocol()),
            (0x1c46, 64, protocol::TCP)
        );
        assert!(!p.is_fragment(), "DF alone is no fragment");
        assert_eq!(p.frag_offset(), 0);
        // MF with offset 185 (1480 bytes): a middle fragment.
        let mut frag = V4;
        frag[6..8].copy_from_slice(&[0x20, 0xb9]);
        let f = Ipv4Packet::new_checked(&frag[..]).unwrap();
        assert!(f.is_fragment());
        assert_eq!(f.frag_offset(), 1480);
        assert_eq!((p.src(), p.dst()), ([172, 16, 10, 99], [172, 16, 10, 12]));
        assert_eq!(p.addresses(), &V4[12..20]);
        assert_eq!(p.checksum(), 0xb1e6);
        assert!(p.checksum_ok());
    }

    #[test]
    fn an_ipv4_header_is_rewritten_with_its_checksum() {
        let mut b = V4;
        let mut p = Ipv4Packet::new_checked(&mut b[..]).unwrap();
        p.set_total_len(1500);
        p.set_ident(0x1c47);
        p.fill_checksum();
        assert_eq!(&b[2..6], &[0x05, 0xdc, 0x1c, 0x47]);
        // Sum of the header's words with the new fields, folded and complemented.
        let words: u32 = b
            .chunks(2)
            .enumerate()
            .filter(|(i, _)| *i != 5)
            .map(|(_, w)| u32::from(u16::from_be_bytes([w[0], w[1]])))
            .sum();
        let folded = (words & 0xffff) + (words >> 16);
        assert_eq!(u16::from_be_bytes([b[10], b[11]]), !(folded as u16));
        assert!(Ipv4Packet::new_checked(&b[..]).unwrap().checksum_ok());
    }

    #[test]
    fn fragments_and_bad_ipv4_headers_are_told_apart() {
        let mut more = V4;
        more[6] = 0x20; // MF
        assert!(Ipv4Packet::new_checked(&more[..]).unwrap().is_fragment());
        let mut offset = V4;
        offset[7] = 0x01;
        assert!(Ipv4Packet::new_checked(&offset[..]).unwrap().is_fragment());
        assert!(Ipv4Packet::new_checked(&V4[..19]).is_err());
        let mut v6 = V4;
        v6[0] = 0x65;
        assert!(Ipv4Packet::new_checked(&v6[..]).is_err());
        let mut short_ihl = V4;
        short_ihl[0] = 0x44;
        assert!(Ipv4Packet::new_checked(&short_ihl[..]).is_err());
        let mut options = V4;
        options[0] = 0x46; // 24 bytes of header in a 20-byte buffer
        assert!(Ipv4Packet::new_checked(&options[..]).is_err());
    }

    /// fd00::1 -> fd00::2, TCP, 32 bytes of payload, hop limit 64.
    fn v6() -> [u8; 40] {
        let mut b = [0u8; 40];
        b[..8].copy_from_slice(&[0x60, 0, 0, 0, 0x00, 0x20, 0x06, 0x40]);
        b[8] = 0xfd;
        b[23] = 1;
        b[24] = 0xfd;
        b[39] = 2;
        b
    }

    #[test]
    fn an_ipv6_header_reads_and_takes_a_new_length() {
        let mut b = v6();
        let p = Ipv6Packet::new_checked(&b[..]).unwrap();
        assert_eq!((p.version(), p.payload_len()), (6, 32));
        assert_eq!((p.next_header(), p.hop_limit()), (protocol::TCP, 64));
        assert_eq!(p.src()[0], 0xfd);
        assert_eq!(p.dst()[15], 2);
        assert_eq!(p.addresses(), &b[8..40]);
        Ipv6Packet::new_checked(&mut b[..])
            .unwrap()
            .set_payload_len(1440);
        assert_eq!(&b[4..6], &[0x05, 0xa0]);
        assert!(Ipv6Packet::new_checked(&b[..39]).is_err());
        assert!(Ipv6Packet::new_checked(&V4[..]).is_err());
    }

    #[test]
    fn an_options_header_says_what_follows_and_how_long_it_is() {
        assert_eq!(ipv6_options_header(&[6, 0, 1, 4]), Some((6, 8)));
        assert_eq!(ipv6_options_header(&[17, 2]), Some((17, 24)));
        assert_eq!(ipv6_options_header(&[6]), None);
    }
}
