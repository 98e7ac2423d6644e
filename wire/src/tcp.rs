//! The TCP header as a typed view over bytes.

use crate::Malformed;

/// Length of a TCP header without options.
pub const MIN_HEADER_LEN: usize = 20;

/// TCP flags, as in the header's 14th byte.
pub mod flags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const PSH: u8 = 0x08;
    pub const ACK: u8 = 0x10;
    pub const URG: u8 = 0x20;
    pub const ECE: u8 = 0x40;
    pub const CWR: u8 = 0x80;
}

mod field {
    pub const SRC_PORT: usize = 0;
    pub const DST_PORT: usize = 2;
    pub const SEQ: usize = 4;
    pub const ACK: usize = 8;
    pub const DATA_OFFSET: usize = 12;
    pub const FLAGS: usize = 13;
    pub const WINDOW: usize = 14;
    pub const CHECKSUM: usize = 16;
}

/// Offset of the checksum in a TCP header (a virtio-net header's `csum_offset`).
pub const CHECKSUM_OFFSET: usize = field::CHECKSUM;

/// A TCP header (and whatever follows it in the buffer).
#[derive(Debug, Clone, Copy)]
pub struct TcpSegment<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> TcpSegment<T> {
    /// Wraps a buffer without checking it; accessors may panic if it is too short.
    pub fn new_unchecked(buffer: T) -> Self {
        TcpSegment { buffer }
    }

    /// Wraps a buffer that holds a TCP header: a data offset of at least 20 bytes, and as
    /// many bytes as it says.
    pub fn new_checked(buffer: T) -> Result<Self, Malformed> {
        let t = Self::new_unchecked(buffer);
        let len = t.buffer.as_ref().len();
        if len < MIN_HEADER_LEN || t.header_len() < MIN_HEADER_LEN || len < t.header_len() {
            return Err(Malformed);
        }
        Ok(t)
    }

    fn be16(&self, at: usize) -> u16 {
        crate::be16(self.buffer.as_ref(), at)
    }

    fn be32(&self, at: usize) -> u32 {
        let b = self.buffer.as_ref();
        u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
    }

    pub fn src_port(&self) -> u16 {
        self.be16(field::SRC_PORT)
    }

    pub fn dst_port(&self) -> u16 {
        self.be16(field::DST_PORT)
    }

    pub fn seq(&self) -> u32 {
        self.be32(field::SEQ)
    }

    pub fn ack(&self) -> u32 {
        self.be32(field::ACK)
    }

    /// The header's length in bytes, options included (the data offset times 4).
    pub fn header_len(&self) -> usize {
        usize::from(self.buffer.as_ref()[field::DATA_OFFSET] >> 4) * 4
    }

    pub fn flags(&self) -> u8 {
        self.buffer.as_ref()[field::FLAGS]
    }

    pub fn window(&self) -> u16 {
        self.be16(field::WINDOW)
    }

    pub fn checksum(&self) -> u16 {
        self.be16(field::CHECKSUM)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> TcpSegment<T> {
    pub fn set_seq(&mut self, seq: u32) {
        self.buffer.as_mut()[field::SEQ..field::SEQ + 4].copy_from_slice(&seq.to_be_bytes());
    }

    pub fn set_flags(&mut self, f: u8) {
        self.buffer.as_mut()[field::FLAGS] = f;
    }

    pub fn set_checksum(&mut self, sum: u16) {
        self.buffer.as_mut()[field::CHECKSUM..field::CHECKSUM + 2]
            .copy_from_slice(&sum.to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Port 40000 -> 5201, seq 0xfffff000, ack 7, 32 bytes of header (12 of options),
    /// ACK|PSH, window 64000, checksum 0x1234, then the options.
    const SEG: [u8; 32] = [
        0x9c, 0x40, 0x14, 0x51, 0xff, 0xff, 0xf0, 0x00, 0, 0, 0, 7, 0x80, 0x18, 0xfa, 0x00, 0x12,
        0x34, 0, 0, 1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2,
    ];

    #[test]
    fn a_tcp_header_reads_as_the_wire_has_it() {
        let t = TcpSegment::new_checked(&SEG[..]).unwrap();
        assert_eq!((t.src_port(), t.dst_port()), (40000, 5201));
        assert_eq!((t.seq(), t.ack()), (0xffff_f000, 7));
        assert_eq!(t.header_len(), 32);
        assert_eq!(t.flags(), flags::ACK | flags::PSH);
        assert_eq!((t.window(), t.checksum()), (64000, 0x1234));
    }

    #[test]
    fn a_tcp_header_takes_a_new_sequence_number_flags_and_checksum() {
        let mut b = SEG;
        let mut t = TcpSegment::new_checked(&mut b[..]).unwrap();
        t.set_seq(0x0000_05a8);
        t.set_flags(flags::ACK);
        t.set_checksum(0xbeef);
        assert_eq!(&b[4..8], &[0, 0, 0x05, 0xa8]);
        assert_eq!(b[13], 0x10);
        assert_eq!(&b[16..18], &[0xbe, 0xef]);
        assert_eq!(&b[18..], &SEG[18..], "nothing else moved");
    }

    #[test]
    fn short_or_inconsistent_headers_are_refused() {
        assert!(TcpSegment::new_checked(&SEG[..19]).is_err());
        assert!(
            TcpSegment::new_checked(&SEG[..31]).is_err(),
            "options cut off"
        );
        let mut tiny = SEG;
        tiny[12] = 0x40; // 16 bytes
        assert!(TcpSegment::new_checked(&tiny[..]).is_err());
        assert!(TcpSegment::new_checked(&SEG[..]).is_ok());
    }
}
