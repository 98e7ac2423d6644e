//! The virtio-net header (`struct virtio_net_hdr`) as a typed value: read from the 10 bytes
//! in front of a frame, checked against what its sender negotiated, and written back as 10
//! or 12 bytes (with `num_buffers`). Little-endian, as VERSION_1 and x86 legacy devices
//! have it.

use super::{OffloadCaps, OffloadError, MAX_HEADERS};

/// Largest frame a TSO header may describe: an IP packet of 64 KiB behind an Ethernet
/// header and two VLAN tags.
pub const MAX_GSO_FRAME: u32 = 14 + 8 + 65_535;
/// Smallest segment size taken: IPv4's default MSS (576-byte datagrams, RFC 1122), so that
/// the switch cuts a frame into at most 123 segments for a receiver without TSO. A smaller
/// one (Linux goes down to 48 for a peer that asks) would make one 64 KiB frame 1,365
/// segments, each a delivery into every receiver that needs them cut.
pub const MIN_GSO_SIZE: u16 = 536;

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

    /// What a receiver must accept to get the frame as it is (nothing for a frame whose
    /// checksums are complete). Meaningful for a header [`Self::check`] accepted.
    #[inline]
    pub fn needs(&self) -> OffloadCaps {
        let mut n = OffloadCaps::NONE;
        if self.needs_csum() {
            n = n | OffloadCaps::CSUM;
        }
        match self.gso_type & !Self::GSO_ECN {
            Self::GSO_TCPV4 => n = n | OffloadCaps::TSO4,
            Self::GSO_TCPV6 => n = n | OffloadCaps::TSO6,
            _ => {}
        }
        if self.gso_type & Self::GSO_ECN != 0 {
            n = n | OffloadCaps::ECN;
        }
        n
    }

    /// Checks the header of a `frame_len`-byte frame from a sender that negotiated `sent`,
    /// field by field (the frame's own headers are checked by `tcp_frame::parse` for a TSO
    /// frame). Returns what the frame needs of its receivers.
    pub fn check(&self, frame_len: u32, sent: OffloadCaps) -> Result<OffloadCaps, OffloadError> {
        if self.needs_csum() {
            if !sent.contains(OffloadCaps::CSUM) {
                return Err(OffloadError::NotNegotiated);
            }
            let end = u32::from(self.csum_start) + u32::from(self.csum_offset) + 2;
            if end > frame_len {
                return Err(OffloadError::OutsideFrame);
            }
            if end as usize > MAX_HEADERS {
                return Err(OffloadError::HeadersTooLong);
            }
        }
        let needs = match self.gso_type & !Self::GSO_ECN {
            Self::GSO_NONE if self.gso_type & Self::GSO_ECN != 0 => {
                return Err(OffloadError::UnknownGsoType)
            }
            Self::GSO_NONE => return Ok(self.needs()),
            Self::GSO_TCPV4 | Self::GSO_TCPV6 => self.needs(),
            _ => return Err(OffloadError::UnknownGsoType),
        };
        if !sent.contains(needs) {
            return Err(OffloadError::NotNegotiated);
        }
        if !self.needs_csum() {
            // A TSO frame leaves each segment's checksum to the receiver.
            return Err(OffloadError::GsoWithoutChecksum);
        }
        if self.gso_size < MIN_GSO_SIZE {
            return Err(OffloadError::BadGsoSize);
        }
        if u32::from(self.hdr_len) > frame_len {
            return Err(OffloadError::OutsideFrame);
        }
        if frame_len > MAX_GSO_FRAME {
            return Err(OffloadError::TooBig);
        }
        Ok(needs)
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
        assert_eq!(h.needs(), OffloadCaps::CSUM | OffloadCaps::TSO4);
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
        // The most a checked header allows: a 64 KiB datagram at the smallest size.
        let small = VnetHeader {
            gso_size: MIN_GSO_SIZE,
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

    #[test]
    fn a_good_tso_header_needs_what_it_uses_and_only_if_negotiated() {
        let h = VnetHeader::from_bytes(&LINUX_TSO4);
        assert_eq!(
            h.check(65_000, OffloadCaps::ALL),
            Ok(OffloadCaps::CSUM | OffloadCaps::TSO4)
        );
        assert_eq!(
            h.check(65_000, OffloadCaps::CSUM | OffloadCaps::TSO6),
            Err(OffloadError::NotNegotiated)
        );
        let ecn = VnetHeader {
            gso_type: VnetHeader::GSO_TCPV6 | VnetHeader::GSO_ECN,
            csum_start: 54,
            ..h
        };
        assert_eq!(
            ecn.check(9000, OffloadCaps::ALL),
            Ok(OffloadCaps::CSUM | OffloadCaps::TSO6 | OffloadCaps::ECN)
        );
        let no_ecn = OffloadCaps::CSUM | OffloadCaps::TSO4 | OffloadCaps::TSO6;
        assert_eq!(ecn.check(9000, no_ecn), Err(OffloadError::NotNegotiated));
        // A plain frame needs nothing, whatever was negotiated.
        assert_eq!(
            VnetHeader::default().check(60, OffloadCaps::NONE),
            Ok(OffloadCaps::NONE)
        );
        // DATA_VALID from a sender means nothing.
        let valid = VnetHeader {
            flags: VnetHeader::F_DATA_VALID,
            ..VnetHeader::default()
        };
        assert_eq!(valid.check(60, OffloadCaps::NONE), Ok(OffloadCaps::NONE));
    }

    #[test]
    fn hostile_headers_are_refused() {
        let h = VnetHeader::from_bytes(&LINUX_TSO4);
        let all = OffloadCaps::ALL;
        let cases = [
            (VnetHeader { gso_size: 0, ..h }, OffloadError::BadGsoSize),
            (VnetHeader { gso_size: 47, ..h }, OffloadError::BadGsoSize),
            (VnetHeader { gso_size: 535, ..h }, OffloadError::BadGsoSize),
            (
                VnetHeader { hdr_len: 2000, ..h },
                OffloadError::OutsideFrame,
            ),
            (
                VnetHeader {
                    csum_start: 990,
                    ..h
                },
                OffloadError::OutsideFrame,
            ),
            (
                VnetHeader {
                    csum_offset: 0xffff,
                    ..h
                },
                OffloadError::OutsideFrame,
            ),
            (
                VnetHeader {
                    csum_start: 300,
                    ..h
                },
                OffloadError::HeadersTooLong,
            ),
            (
                VnetHeader {
                    gso_type: VnetHeader::GSO_UDP,
                    ..h
                },
                OffloadError::UnknownGsoType,
            ),
            (
                VnetHeader { gso_type: 7, ..h },
                OffloadError::UnknownGsoType,
            ),
            (
                VnetHeader {
                    gso_type: VnetHeader::GSO_ECN,
                    ..h
                },
                OffloadError::UnknownGsoType,
            ),
            (
                VnetHeader { flags: 0, ..h },
                OffloadError::GsoWithoutChecksum,
            ),
        ];
        for (bad, why) in cases {
            assert_eq!(bad.check(1000, all), Err(why), "{bad:?}");
        }
        assert_eq!(h.check(MAX_GSO_FRAME + 1, all), Err(OffloadError::TooBig));
        assert_eq!(h.check(MAX_GSO_FRAME, all).map(|_| ()), Ok(()));
        // A checksum asked of a device that never offered to do it.
        let csum = VnetHeader {
            flags: 1,
            csum_start: 34,
            csum_offset: 6,
            ..VnetHeader::default()
        };
        assert_eq!(
            csum.check(100, OffloadCaps::NONE),
            Err(OffloadError::NotNegotiated)
        );
        assert_eq!(csum.check(41, all), Err(OffloadError::OutsideFrame));
        assert_eq!(csum.check(42, all), Ok(OffloadCaps::CSUM));
    }
}
