//! What a segment's kernel mirror holds, read from netlink: the routes zebra installed on
//! the mirror's VXLAN device (remote MACs, flood list) and the entries the daemon put on
//! its advertise port (local MACs).
//!
//! Zebra writes a type-2 route as `MAC dst VTEP self extern_learn` on the VXLAN device and
//! a type-3 route as `00:00:00:00:00:00 dst VTEP self`; the daemon writes each local MAC
//! as `MAC dev ADVERTISE master static`. Everything else the kernel reports (the bridge's
//! own permanent entries, other devices) is not EVPN's and is left alone.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::AddressFamily;

/// A MAC address.
pub type Mac = [u8; 6];

/// The flood-list address of a type-3 route.
const ZERO_MAC: Mac = [0; 6];

/// One kernel FDB entry of a mirror that EVPN cares about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelEntry {
    /// A remote MAC address behind tunnel end `vtep` (a type-2 route).
    Remote { mac: Mac, vtep: Ipv4Addr },
    /// Tunnel end `vtep` gets broadcast, multicast and unknown frames (a type-3 route).
    Flood { vtep: Ipv4Addr },
    /// A local MAC address advertised (the daemon's static entry on the advertise port).
    Advertised { mac: Mac },
}

/// The interfaces of a mirror whose entries are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Devices {
    /// The VXLAN device zebra installs remote routes on.
    pub vxlan: u32,
    /// The bridge port the local MACs are put on.
    pub advertise: u32,
}

/// What `msg` (an `RTM_NEWNEIGH`, `RTM_DELNEIGH` or a dump's entry) says of `devices`'
/// EVPN entries, if anything.
pub fn read_entry(msg: &NeighbourMessage, devices: Devices) -> Option<KernelEntry> {
    let h = &msg.header;
    if h.family != AddressFamily::Bridge {
        return None;
    }
    let mut mac = None;
    let mut dst = None;
    let mut master = None;
    for a in &msg.attributes {
        match a {
            NeighbourAttribute::LinkLayerAddress(l) => mac = <Mac>::try_from(l.as_slice()).ok(),
            // A bridge entry's tunnel end comes as bytes (the family is the bridge's): four
            // of them for IPv4. An IPv6 underlay is not followed.
            NeighbourAttribute::Destination(NeighbourAddress::Inet(a)) => dst = Some(*a),
            NeighbourAttribute::Destination(NeighbourAddress::Other(b)) => {
                dst = <[u8; 4]>::try_from(b.as_slice()).ok().map(Ipv4Addr::from);
            }
            NeighbourAttribute::Controller(m) => master = Some(*m),
            _ => {}
        }
    }
    let mac = mac?;
    if h.ifindex == devices.vxlan {
        // Entries of the device itself (`self`), with a tunnel end: zebra's. The bridge's
        // entries for its VXLAN port have no destination.
        let vtep = dst?;
        if !h.flags.contains(NeighbourFlags::Own) && master.is_some() {
            return None;
        }
        if vtep.is_unspecified() || vtep.is_multicast() || vtep.is_broadcast() {
            return None;
        }
        return Some(if mac == ZERO_MAC {
            KernelEntry::Flood { vtep }
        } else if mac[0] & 1 == 0 {
            KernelEntry::Remote { mac, vtep }
        } else {
            return None;
        });
    }
    if h.ifindex == devices.advertise && h.state == NeighbourState::Noarp && dst.is_none() {
        return Some(KernelEntry::Advertised { mac });
    }
    None
}

/// What the mirror's VXLAN device says of the other ends of the segment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RemoteRoutes {
    /// Each remote MAC address and the end it is behind.
    pub macs: BTreeMap<Mac, Ipv4Addr>,
    /// The ends broadcast and unknown frames go to.
    pub flood: BTreeSet<Ipv4Addr>,
}

impl RemoteRoutes {
    /// Every end a route names: those of the flood list and those MACs are behind.
    pub fn ends(&self) -> BTreeSet<Ipv4Addr> {
        self.flood
            .iter()
            .copied()
            .chain(self.macs.values().copied())
            .collect()
    }

    /// Takes in `entry` added (`present`) or deleted; whether anything changed. A
    /// deletion of a MAC behind another end than the one it is now behind (it moved, and
    /// the old entry's deletion came late) changes nothing.
    pub fn apply(&mut self, entry: KernelEntry, present: bool) -> bool {
        match (entry, present) {
            (KernelEntry::Remote { mac, vtep }, true) => self.macs.insert(mac, vtep) != Some(vtep),
            (KernelEntry::Remote { mac, vtep }, false) => {
                if self.macs.get(&mac) == Some(&vtep) {
                    self.macs.remove(&mac);
                    true
                } else {
                    false
                }
            }
            (KernelEntry::Flood { vtep }, true) => self.flood.insert(vtep),
            (KernelEntry::Flood { vtep }, false) => self.flood.remove(&vtep),
            (KernelEntry::Advertised { .. }, _) => false,
        }
    }
}

/// How the advertised entries must change for the advertise port to hold exactly `want`:
/// (to add, to delete).
pub fn advert_changes(want: &BTreeSet<Mac>, have: &BTreeSet<Mac>) -> (Vec<Mac>, Vec<Mac>) {
    (
        want.difference(have).copied().collect(),
        have.difference(want).copied().collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_core::{Emitable, NetlinkHeader, NetlinkMessage, NetlinkPayload};
    use netlink_packet_route::RouteNetlinkMessage;

    const DEV: Devices = Devices {
        vxlan: 7,
        advertise: 9,
    };

    /// Parses one rtnetlink message from its bytes.
    fn parse(bytes: &[u8]) -> NeighbourMessage {
        let m = NetlinkMessage::<RouteNetlinkMessage>::deserialize(bytes).expect("parses");
        match m.payload {
            NetlinkPayload::InnerMessage(
                RouteNetlinkMessage::NewNeighbour(n) | RouteNetlinkMessage::DelNeighbour(n),
            ) => n,
            other => panic!("not a neighbour message: {other:?}"),
        }
    }

    /// An `RTM_NEWNEIGH` as the kernel reports zebra's `02:aa:00:00:00:01 dst 10.99.0.2
    /// self extern_learn` on ifindex 7: nlmsghdr, ndmsg (family 7 = AF_BRIDGE, ifindex,
    /// state NUD_NOARP, flags NTF_SELF | NTF_EXT_LEARNED), NDA_LLADDR, NDA_DST.
    #[rustfmt::skip]
    const ZEBRA_TYPE2: [u8; 48] = [
        48, 0, 0, 0, 28, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        7, 0, 0, 0, 7, 0, 0, 0, 0x40, 0, 0x12, 0,
        10, 0, 2, 0, 0x02, 0xaa, 0, 0, 0, 1, 0, 0,
        8, 0, 1, 0, 10, 99, 0, 2,
    ];

    #[test]
    fn zebras_type2_entry_reads_as_a_remote_mac() {
        let n = parse(&ZEBRA_TYPE2);
        assert_eq!(
            read_entry(&n, DEV),
            Some(KernelEntry::Remote {
                mac: [2, 0xaa, 0, 0, 0, 1],
                vtep: Ipv4Addr::new(10, 99, 0, 2)
            })
        );
        // The same entry on another device is not this segment's.
        let other = Devices {
            vxlan: 8,
            advertise: 9,
        };
        assert_eq!(read_entry(&n, other), None);
    }

    #[test]
    fn the_zero_mac_reads_as_a_flood_list_entry_and_a_multicast_mac_as_nothing() {
        let mut b = ZEBRA_TYPE2;
        b[32..38].copy_from_slice(&[0; 6]);
        assert_eq!(
            read_entry(&parse(&b), DEV),
            Some(KernelEntry::Flood {
                vtep: Ipv4Addr::new(10, 99, 0, 2)
            })
        );
        b[32..38].copy_from_slice(&[1, 0, 0x5e, 0, 0, 1]);
        assert_eq!(read_entry(&parse(&b), DEV), None);
        // A multicast or unspecified tunnel end is no end.
        let mut b = ZEBRA_TYPE2;
        b[44..48].copy_from_slice(&[239, 1, 1, 1]);
        assert_eq!(read_entry(&parse(&b), DEV), None);
        b[44..48].copy_from_slice(&[0, 0, 0, 0]);
        assert_eq!(read_entry(&parse(&b), DEV), None);
    }

    #[test]
    fn an_entry_without_a_tunnel_end_or_of_another_family_is_not_evpns() {
        // The bridge's own entry for its VXLAN port: no NDA_DST.
        let mut b = ZEBRA_TYPE2[..40].to_vec();
        b[0] = 40;
        assert_eq!(read_entry(&parse(&b), DEV), None);
        // AF_INET (2): an ARP entry.
        let mut b = ZEBRA_TYPE2;
        b[16] = 2;
        assert_eq!(read_entry(&parse(&b), DEV), None);
    }

    #[test]
    fn a_static_entry_on_the_advertise_port_reads_as_advertised_a_permanent_one_not() {
        let mut msg = NeighbourMessage::default();
        msg.header.family = AddressFamily::Bridge;
        msg.header.ifindex = 9;
        msg.header.state = NeighbourState::Noarp;
        msg.header.flags = NeighbourFlags::Controller;
        msg.attributes
            .push(NeighbourAttribute::LinkLayerAddress(vec![2, 0, 0, 0, 0, 5]));
        msg.attributes.push(NeighbourAttribute::Controller(3));
        // Through the wire format and back, as the kernel would send it.
        let mut bytes = vec![0u8; msg.buffer_len()];
        msg.emit(&mut bytes);
        let mut nl = NetlinkMessage::new(
            NetlinkHeader::default(),
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewNeighbour(msg.clone())),
        );
        nl.finalize();
        let mut wire = vec![0u8; nl.buffer_len()];
        nl.serialize(&mut wire);
        assert_eq!(
            read_entry(&parse(&wire), DEV),
            Some(KernelEntry::Advertised {
                mac: [2, 0, 0, 0, 0, 5]
            })
        );
        msg.header.state = NeighbourState::Permanent;
        assert_eq!(read_entry(&msg, DEV), None);
    }

    #[test]
    fn routes_follow_adds_moves_and_deletions_and_ignore_a_late_deletion() {
        let a = Ipv4Addr::new(10, 0, 0, 1);
        let b = Ipv4Addr::new(10, 0, 0, 2);
        let m = [2, 0, 0, 0, 0, 1];
        let mut r = RemoteRoutes::default();
        assert!(r.apply(KernelEntry::Remote { mac: m, vtep: a }, true));
        assert!(!r.apply(KernelEntry::Remote { mac: m, vtep: a }, true));
        assert!(r.apply(KernelEntry::Flood { vtep: b }, true));
        assert_eq!(r.ends(), BTreeSet::from([a, b]));
        // Moved to b; then the old entry's deletion.
        assert!(r.apply(KernelEntry::Remote { mac: m, vtep: b }, true));
        assert!(!r.apply(KernelEntry::Remote { mac: m, vtep: a }, false));
        assert_eq!(r.macs.get(&m), Some(&b));
        assert_eq!(r.ends(), BTreeSet::from([b]));
        assert!(r.apply(KernelEntry::Remote { mac: m, vtep: b }, false));
        assert!(r.apply(KernelEntry::Flood { vtep: b }, false));
        assert!(!r.apply(KernelEntry::Flood { vtep: b }, false));
        assert_eq!(r, RemoteRoutes::default());
        assert!(!r.apply(KernelEntry::Advertised { mac: m }, true));
    }

    #[test]
    fn advert_changes_are_the_two_differences() {
        let want = BTreeSet::from([[2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]]);
        let have = BTreeSet::from([[2, 0, 0, 0, 0, 2], [2, 0, 0, 0, 0, 3]]);
        assert_eq!(
            advert_changes(&want, &have),
            (vec![[2, 0, 0, 0, 0, 1]], vec![[2, 0, 0, 0, 0, 3]])
        );
    }
}
