//! The virtio-net header (its wire format is [`vringswitch_wire::virtio_net`]) as the
//! offloads see it: checked against what its sender negotiated, and what it asks of each
//! receiver.

pub use vringswitch_wire::VnetHeader;

use super::{OffloadCaps, OffloadError, MAX_HEADERS};

/// Largest frame a TSO header may describe: an IP packet of 64 KiB behind an Ethernet
/// header and two VLAN tags.
pub const MAX_GSO_FRAME: u32 = 14 + 8 + 65_535;
/// Smallest segment size taken: IPv4's default MSS (576-byte datagrams, RFC 1122), so that
/// the switch cuts a frame into at most 123 segments for a receiver without TSO. A smaller
/// one (Linux goes down to 48 for a peer that asks) would make one 64 KiB frame 1,365
/// segments, each a delivery into every receiver that needs them cut.
pub const MIN_GSO_SIZE: u16 = 536;

/// What a virtio-net header asks, as offloads: of the sender's negotiation, and of each
/// receiver.
pub trait VnetOffloads {
    /// What a receiver must accept to get the frame as it is (nothing for a frame whose
    /// checksums are complete). Meaningful for a header [`Self::check`] accepted.
    fn needs(&self) -> OffloadCaps;
    /// Checks the header of a `frame_len`-byte frame from a sender that negotiated `sent`,
    /// field by field (the frame's own headers are checked by `tcp_frame::parse` for a TSO
    /// frame). Returns what the frame needs of its receivers.
    fn check(&self, frame_len: u32, sent: OffloadCaps) -> Result<OffloadCaps, OffloadError>;
}

impl VnetOffloads for VnetHeader {
    #[inline]
    fn needs(&self) -> OffloadCaps {
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

    fn check(&self, frame_len: u32, sent: OffloadCaps) -> Result<OffloadCaps, OffloadError> {
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
