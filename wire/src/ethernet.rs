//! Ethernet II header as a typed view over bytes.
//!
//! [`EthernetFrame::new_checked`] verifies the length once; no accessor can panic after it.
//! The EtherTypes used anywhere in vringswitch are the constants of [`ethertype`].

use std::fmt;

use crate::Malformed;

/// A 48-bit MAC address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    pub const BROADCAST: MacAddr = MacAddr([0xff; 6]);

    /// Group (multicast or broadcast) address: the I/G bit of the first octet.
    pub fn is_multicast(&self) -> bool {
        self.0[0] & 1 != 0
    }

    pub fn is_broadcast(&self) -> bool {
        *self == Self::BROADCAST
    }

    pub fn is_zero(&self) -> bool {
        self.0 == [0; 6]
    }

    /// The address as the low 48 bits of a u64.
    pub fn to_u64(self) -> u64 {
        self.0
            .iter()
            .fold(0u64, |acc, &b| (acc << 8) | u64::from(b))
    }

    pub fn from_u64(v: u64) -> MacAddr {
        let b = v.to_be_bytes();
        MacAddr([b[2], b[3], b[4], b[5], b[6], b[7]])
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

/// EtherType values (and the TPIDs that take the EtherType's place in a tagged frame).
pub mod ethertype {
    pub const IPV4: u16 = 0x0800;
    pub const ARP: u16 = 0x0806;
    /// Reverse ARP: what a migrated VM (or the switch for it) announces itself with.
    pub const RARP: u16 = 0x8035;
    /// An 802.1Q tag follows.
    pub const VLAN: u16 = 0x8100;
    pub const IPV6: u16 = 0x86dd;
    /// An 802.1ad service tag (QinQ) follows.
    pub const QINQ: u16 = 0x88a8;
}

/// EtherType values the switch cares about; others are kept as they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EtherType {
    Ipv4,
    Arp,
    Vlan,
    Ipv6,
    Unknown(u16),
}

impl From<u16> for EtherType {
    fn from(v: u16) -> Self {
        match v {
            ethertype::IPV4 => EtherType::Ipv4,
            ethertype::ARP => EtherType::Arp,
            ethertype::VLAN => EtherType::Vlan,
            ethertype::IPV6 => EtherType::Ipv6,
            other => EtherType::Unknown(other),
        }
    }
}

mod field {
    use std::ops::Range;
    pub const DST: Range<usize> = 0..6;
    pub const SRC: Range<usize> = 6..12;
    pub const ETHERTYPE: Range<usize> = 12..14;
}

/// Length of an Ethernet II header.
pub const HEADER_LEN: usize = field::ETHERTYPE.end;

/// A read-only view of an Ethernet frame.
#[derive(Debug, Clone, Copy)]
pub struct EthernetFrame<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> EthernetFrame<T> {
    /// Wraps a buffer without checking it; accessors may panic if it is too short.
    pub fn new_unchecked(buffer: T) -> Self {
        EthernetFrame { buffer }
    }

    /// Wraps a buffer that holds at least an Ethernet header.
    pub fn new_checked(buffer: T) -> Result<Self, Malformed> {
        let f = Self::new_unchecked(buffer);
        f.check_len()?;
        Ok(f)
    }

    pub fn check_len(&self) -> Result<(), Malformed> {
        if self.buffer.as_ref().len() < HEADER_LEN {
            Err(Malformed)
        } else {
            Ok(())
        }
    }

    fn mac(&self, r: std::ops::Range<usize>) -> MacAddr {
        let mut m = [0u8; 6];
        m.copy_from_slice(&self.buffer.as_ref()[r]);
        MacAddr(m)
    }

    pub fn dst(&self) -> MacAddr {
        self.mac(field::DST)
    }

    pub fn src(&self) -> MacAddr {
        self.mac(field::SRC)
    }

    pub fn ethertype(&self) -> EtherType {
        let b = &self.buffer.as_ref()[field::ETHERTYPE];
        EtherType::from(u16::from_be_bytes([b[0], b[1]]))
    }
}

/// Length of a [`rarp_announcement`]: the shortest Ethernet frame without its FCS.
pub const RARP_LEN: usize = 60;

/// The RARP a switch sends for a VM that moved to it (live migration), as QEMU and DPDK
/// build theirs: broadcast from `mac`, "reverse request" (3) for `mac` itself, IPv4 over
/// Ethernet with no protocol addresses, padded with zeros to 60 bytes. Every bridge on the
/// way learns `mac` at the port it came from.
pub fn rarp_announcement(mac: MacAddr) -> [u8; RARP_LEN] {
    let mut f = [0u8; RARP_LEN];
    f[field::DST].copy_from_slice(&MacAddr::BROADCAST.0);
    f[field::SRC].copy_from_slice(&mac.0);
    f[field::ETHERTYPE].copy_from_slice(&ethertype::RARP.to_be_bytes());
    // htype 1 (Ethernet), ptype 0x0800, hlen 6, plen 4, op 3.
    f[14..22].copy_from_slice(&[0, 1, 0x08, 0x00, 6, 4, 0, 3]);
    f[22..28].copy_from_slice(&mac.0);
    f[32..38].copy_from_slice(&mac.0);
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rarp_announcement_is_the_frame_qemu_sends() {
        let mac = MacAddr([0x52, 0x54, 0, 0x12, 0x34, 0x56]);
        let want: [u8; 42] = [
            0xff, 0xff, 0xff, 0xff, 0xff, 0xff, // broadcast
            0x52, 0x54, 0x00, 0x12, 0x34, 0x56, // from the VM
            0x80, 0x35, // RARP
            0x00, 0x01, 0x08, 0x00, 0x06, 0x04, 0x00, 0x03, // Ethernet/IPv4, reverse request
            0x52, 0x54, 0x00, 0x12, 0x34, 0x56, 0, 0, 0, 0, // sender
            0x52, 0x54, 0x00, 0x12, 0x34, 0x56, 0, 0, 0, 0, // target
        ];
        let f = rarp_announcement(mac);
        assert_eq!(f[..42], want);
        assert_eq!(f[42..], [0u8; RARP_LEN - 42]);
        let e = EthernetFrame::new_checked(&f[..]).unwrap();
        assert_eq!(e.src(), mac);
        assert_eq!(e.ethertype(), EtherType::Unknown(ethertype::RARP));
    }

    const FRAME: [u8; 16] = [
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, // dst
        0x52, 0x54, 0x00, 0x12, 0x34, 0x56, // src
        0x08, 0x06, // ARP
        0xaa, 0xbb,
    ];

    #[test]
    fn deconstructs() {
        let f = EthernetFrame::new_checked(&FRAME[..]).unwrap();
        assert!(f.dst().is_broadcast());
        assert!(f.dst().is_multicast());
        assert_eq!(f.src(), MacAddr([0x52, 0x54, 0, 0x12, 0x34, 0x56]));
        assert!(!f.src().is_multicast());
        assert_eq!(f.ethertype(), EtherType::Arp);
    }

    #[test]
    fn rejects_short_buffers() {
        for n in 0..HEADER_LEN {
            assert_eq!(
                EthernetFrame::new_checked(&FRAME[..n]).unwrap_err(),
                Malformed
            );
        }
        assert!(EthernetFrame::new_checked(&FRAME[..HEADER_LEN]).is_ok());
    }

    #[test]
    fn ethertypes_round_trip_unknown_values() {
        assert_eq!(EtherType::from(0x0800), EtherType::Ipv4);
        assert_eq!(EtherType::from(0x8100), EtherType::Vlan);
        assert_eq!(EtherType::from(0x86dd), EtherType::Ipv6);
        assert_eq!(EtherType::from(0x88cc), EtherType::Unknown(0x88cc));
    }

    #[test]
    fn mac_conversions() {
        // Parsing is vringswitch_config::parse_mac's, tested there.
        let m = MacAddr([0x02, 0, 0, 0, 0, 0x0a]);
        assert_eq!(m.to_string(), "02:00:00:00:00:0a");
        assert_eq!(MacAddr::from_u64(m.to_u64()), m);
        assert_eq!(m.to_u64(), 0x0200_0000_000a);
        assert!(MacAddr::default().is_zero());
        assert!(MacAddr([0x01, 0, 0x5e, 0, 0, 1]).is_multicast());
    }
}
