//! The virtio-net header (`struct virtio_net_hdr`, virtio 1.x section 5.1.6) as a typed
//! value: read from the 10 bytes in front of a frame, written back as 10 or 12 bytes (with
//! `num_buffers`). Little-endian, as VERSION_1 and x86 legacy devices have it. What its
//! fields may be, and what they ask of a receiver, is the offloads' business.

/// The fields of a virtio-net header, without `num_buffers`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VnetHeader {
    pub flags: u8,
    pub gso_type: u8,
    pub hdr_len: u16,
    pub gso_size: u16,
    pub csum_start: u16,
    pub csum_offset: u16,
}

impl VnetHeader {
    /// Length of the header without `num_buffers`.
    pub const LEN: usize = 10;
    /// The checksum from `csum_start` on is to be completed and stored at
    /// `csum_start + csum_offset`.
    pub const F_NEEDS_CSUM: u8 = 1;
    /// The frame's checksums were checked (receive side only).
    pub const F_DATA_VALID: u8 = 2;
    pub const GSO_NONE: u8 = 0;
    pub const GSO_TCPV4: u8 = 1;
    pub const GSO_UDP: u8 = 3;
    pub const GSO_TCPV6: u8 = 4;
    /// Set with a TCP type: the frame has CWR set, which only its first segment may keep.
    pub const GSO_ECN: u8 = 0x80;

    /// The header in `b`.
    #[inline]
    pub fn from_bytes(b: &[u8; Self::LEN]) -> VnetHeader {
        let u16_at = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        VnetHeader {
            flags: b[0],
            gso_type: b[1],
            hdr_len: u16_at(2),
            gso_size: u16_at(4),
            csum_start: u16_at(6),
            csum_offset: u16_at(8),
        }
    }

    /// The header as 12 bytes with `num_buffers`; a 10-byte header is the first 10.
    #[inline]
    pub fn to_bytes(&self, num_buffers: u16) -> [u8; 12] {
        let mut b = [0u8; 12];
        b[0] = self.flags;
        b[1] = self.gso_type;
        b[2..4].copy_from_slice(&self.hdr_len.to_le_bytes());
        b[4..6].copy_from_slice(&self.gso_size.to_le_bytes());
        b[6..8].copy_from_slice(&self.csum_start.to_le_bytes());
        b[8..10].copy_from_slice(&self.csum_offset.to_le_bytes());
        b[10..12].copy_from_slice(&num_buffers.to_le_bytes());
        b
    }

    /// Whether the checksum is left to the receiver.
    #[inline]
    pub fn needs_csum(&self) -> bool {
        self.flags & Self::F_NEEDS_CSUM != 0
    }

    /// Whether the frame is to be cut into TCP segments.
    #[inline]
    pub fn is_gso(&self) -> bool {
        self.gso_type & !Self::GSO_ECN != Self::GSO_NONE
    }

    /// The frames a `frame_len`-byte frame with this header is once cut: its segments for
    /// a TSO frame, else 1. Meaningful for a header [`Self::check`] accepted.
    #[inline]
    pub fn segments(&self, frame_len: u32) -> u32 {
        if !self.is_gso() || self.gso_size == 0 {
            return 1;
        }
        frame_len
            .saturating_sub(u32::from(self.hdr_len))
            .div_ceil(u32::from(self.gso_size))
            .max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A header as Linux writes one for a TSO frame of TCP over IPv4: NEEDS_CSUM,
    /// GSO_TCPV4, hdr_len 66, gso_size 1448, csum_start 34, csum_offset 16.
    const LINUX_TSO4: [u8; 10] = [0x01, 0x01, 66, 0, 0xa8, 0x05, 34, 0, 16, 0];

    #[test]
    fn a_header_reads_and_writes_as_the_wire_has_it() {
        let h = VnetHeader::from_bytes(&LINUX_TSO4);
        assert_eq!(
            h,
            VnetHeader {
                flags: 1,
                gso_type: 1,
                hdr_len: 66,
                gso_size: 1448,
                csum_start: 34,
                csum_offset: 16
            }
        );
        let b = h.to_bytes(3);
        assert_eq!(&b[..10], &LINUX_TSO4);
        assert_eq!(&b[10..], &[3, 0]);
        assert!(h.needs_csum() && h.is_gso());
    }

    #[test]
    fn a_tso_frame_counts_as_its_segments_and_any_other_as_one() {
        let h = VnetHeader::from_bytes(&LINUX_TSO4);
        // 66 bytes of headers, then payloads of 1448.
        for (len, n) in [
            (66 + 1448, 1),
            (66 + 1449, 2),
            (66 + 14_480, 10),
            (66, 1),
            (10, 1),
        ] {
            assert_eq!(h.segments(len), n, "{len} bytes");
        }
        // A 64 KiB datagram at IPv4's default MSS.
        let small = VnetHeader {
            gso_size: 536,
            hdr_len: 54,
            ..h
        };
        assert_eq!(small.segments(14 + 65_535), 123);
        let csum_only = VnetHeader {
            gso_type: VnetHeader::GSO_NONE,
            ..h
        };
        assert_eq!(csum_only.segments(65_000), 1);
    }
}
