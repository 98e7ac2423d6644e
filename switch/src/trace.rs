//! "Where would this frame go?", as OVS's `ofproto/trace`: the decision the data path takes
//! for one frame sent by a port, computed by the data path's own steps
//! ([`crate::worker::admit`], [`crate::worker::destination`],
//! [`crate::worker::flood_targets`], [`crate::worker::is_for`], [`VlanPolicy::egress`])
//! on the topology and FDB in effect, without learning, counting or sending anything.
//!
//! Security groups are asked too, as the frame would find them now: the sender's egress
//! rules (and `allowed_ips`), then each receiver's ingress rules, the connection table read
//! and never changed ([`crate::security_groups::would_from_vm`]).
//!
//! Not predicted: policers (whether a frame finds room depends on the rate of the frames
//! before it) and a destination's RX ring being full.
//!
//! [`VlanPolicy::egress`]: crate::vlan::VlanPolicy::egress

use vringswitch_ports::frame::{FrameEdit, PEEK_LEN};
use vringswitch_ports::{DropReason, PortId};
use vringswitch_wire::vlan::{TAGGED_HEADER_LEN, VID_MASK};

use crate::fdb::{fdb_key, Learned};
use crate::topology::Topology;
use crate::worker::{admit, destination, flood_targets, is_for, Dest};

/// What the data path does with a frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trace {
    /// The VLAN the frame belongs to once in (none if it was dropped on the way in).
    pub vlan: Option<u16>,
    /// Dropped before any port is looked for, and why: its source address, port security,
    /// its VLAN on the way in; or `hairpin`, its destination having been learnt on the port
    /// it came from.
    pub dropped: Option<DropReason>,
    /// What learning its source address does (none if it was dropped on the way in).
    pub learning: Option<Learned>,
    /// How its destination was found.
    pub lookup: Lookup,
    /// What each port it is offered to does with it, in the bridge's order.
    pub outputs: Vec<Output>,
}

/// How the destination of a frame was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    /// The frame was dropped before.
    NotReached,
    /// A group address (broadcast or multicast): flooded in its VLAN.
    Group,
    /// Found in the FDB on this port of the bridge.
    Found { port: PortId, is_static: bool },
    /// Found on the port it came from: dropped (`hairpin`).
    Hairpin,
    /// Not in the FDB (or on a port of another bridge): flooded in its VLAN.
    Unknown,
}

/// One port the frame is offered to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Output {
    pub port: PortId,
    pub action: OutputAction,
}

/// What a port does with a frame offered to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputAction {
    /// Delivered, tagged with this VLAN or untagged.
    Delivered { tag: Option<u16> },
    /// Not delivered: the port does not carry the frame's VLAN (a flooded frame is not
    /// offered to it; one sent to it is counted `vlan_filtered`).
    NotInVlan,
    /// Not delivered: the port is set down, or has no peer to deliver to (`port_down`).
    Down,
    /// Not delivered: the port's security groups drop it (`acl_denied`, `ct_invalid`,
    /// `ct_full`).
    Filtered(DropReason),
}

/// The fate of `frame` (its first bytes at least: the Ethernet header, and the 802.1Q tag if
/// it has one; the IP and transport headers for security groups) sent by port `src` at
/// second `now` of the switch's clock, or `None` if there is no such port.
pub fn trace(topology: &Topology, src: PortId, frame: &[u8], now: u32) -> Option<Trace> {
    let src_rt = topology.port(src)?;
    let mut peek = [0u8; PEEK_LEN];
    let n = frame.len().min(PEEK_LEN);
    peek[..n].copy_from_slice(&frame[..n]);
    let len = u32::try_from(frame.len()).unwrap_or(u32::MAX);
    let (ingress, smac, dmac) = match admit(src_rt, &peek, len) {
        Ok(admitted) => admitted,
        Err(reason) => {
            return Some(Trace {
                vlan: None,
                dropped: Some(reason),
                learning: None,
                lookup: Lookup::NotReached,
                outputs: Vec::new(),
            })
        }
    };
    let fdb = &topology.bridges[src_rt.bridge].fdb;
    let learning = fdb.would_learn(
        fdb_key(smac, ingress.vlan),
        src,
        src_rt.fdb_max_learned,
        src_rt.remote,
    );
    let (lookup, dest) = if dmac.is_multicast() {
        (Lookup::Group, Dest::Flood)
    } else {
        let found = fdb.get(fdb_key(dmac, ingress.vlan));
        let dest = destination(found.map(|e| e.port), src, src_rt, topology);
        let lookup = match (dest, found) {
            (Dest::Drop, _) => Lookup::Hairpin,
            (Dest::Port(port), Some(e)) => Lookup::Found {
                port,
                is_static: e.is_static,
            },
            _ => Lookup::Unknown,
        };
        (lookup, dest)
    };
    // Security groups: the sender's on the way out, before any port is offered it.
    let head = &frame[..frame.len().min(crate::security_groups::HEADER_LEN)];
    let class = crate::security_groups::frame_class(ingress.tci.is_some(), head);
    let zone = vringswitch_filter::conntrack::zone(src_rt.bridge, ingress.vlan);
    let table = topology.conntrack.as_deref();
    let mut tracked = false;
    if let Some(filter) = src_rt.filter.as_deref() {
        match crate::security_groups::would_from_vm(filter, table, &class, zone, now) {
            Ok(t) => tracked = t,
            Err(reason) => {
                return Some(Trace {
                    vlan: Some(ingress.vlan),
                    dropped: Some(reason),
                    learning: Some(learning),
                    lookup,
                    outputs: Vec::new(),
                })
            }
        }
    }
    let targets: Vec<PortId> = match dest {
        Dest::Drop => Vec::new(),
        Dest::Port(p) => vec![p],
        Dest::Flood => flood_targets(topology, src, src_rt).collect(),
    };
    let outputs = targets
        .into_iter()
        .filter_map(|port| {
            let rt = topology.port(port)?;
            let mut edit = FrameEdit::NONE;
            let action = if !is_for(dest, ingress.vlan, port, &rt.vlan)
                || !rt.vlan.egress_into(ingress, &peek, &mut edit)
            {
                OutputAction::NotInVlan
            } else if !rt.admin_up || rt.handle.attachment().is_none() {
                OutputAction::Down
            } else if let Some(Err(reason)) = rt
                .filter
                .as_deref()
                .and_then(|f| f.policy.as_ref())
                .map(|policy| {
                    crate::security_groups::would_to_vm(policy, table, &class, zone, now, !tracked)
                })
            {
                OutputAction::Filtered(reason)
            } else {
                let tagged = usize::from(edit.prefix_len) == TAGGED_HEADER_LEN;
                OutputAction::Delivered {
                    tag: tagged
                        .then(|| u16::from_be_bytes([edit.prefix[14], edit.prefix[15]]) & VID_MASK),
                }
            };
            Some(Output { port, action })
        })
        .collect();
    Some(Trace {
        vlan: Some(ingress.vlan),
        dropped: (dest == Dest::Drop).then_some(DropReason::Hairpin),
        learning: Some(learning),
        lookup,
        outputs,
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use vringswitch_ports::PortHandle;
    use vringswitch_wire::ethernet::MacAddr;

    use super::*;
    use crate::fdb::{Fdb, Limit};
    use crate::port_security::PortSecurity;
    use crate::topology::{BridgeRt, PortRt};
    use crate::vlan::VlanPolicy;

    fn mac(n: u8) -> MacAddr {
        MacAddr([2, 0, 0, 0, 0, n])
    }

    fn port(id: PortId, bridge: usize, vlan: VlanPolicy, up: bool) -> PortRt {
        PortRt {
            handle: Arc::new(PortHandle::new(id, "p", 1)),
            bridge,
            queue_pairs: 1,
            vlan,
            security: if id == 0 {
                PortSecurity::locked(&[mac(1), mac(7)]).unwrap()
            } else {
                PortSecurity::open()
            },
            fdb_max_learned: 2,
            police_rx: None,
            police_tx: None,
            admin_up: up,
            capture: None,
            mirror: Default::default(),
            filter: None,
            remote: false,
        }
    }

    /// Ports 0 (transparent, locked to macs 1 and 7), 1 (access 10), 2 (trunk 10,20),
    /// 3 (set down) on bridge 0; port 4 on bridge 1. None has a peer, so the outputs say
    /// `Down` where they would deliver.
    fn topology() -> Topology {
        Topology {
            bridges: vec![
                BridgeRt {
                    name: "br0".into(),
                    fdb: Arc::new(Fdb::new(300)),
                    ports: vec![0, 1, 2, 3],
                    guarded: false,
                },
                BridgeRt {
                    name: "br1".into(),
                    fdb: Arc::new(Fdb::new(300)),
                    ports: vec![4],
                    guarded: false,
                },
            ],
            ports: vec![
                Some(port(0, 0, VlanPolicy::transparent(), true)),
                Some(port(1, 0, VlanPolicy::access(10), true)),
                Some(port(2, 0, VlanPolicy::trunk(&[10, 20]), true)),
                Some(port(3, 0, VlanPolicy::transparent(), false)),
                Some(port(4, 1, VlanPolicy::transparent(), true)),
            ],
            conntrack: None,
        }
    }

    fn frame(dst: MacAddr, src: MacAddr, tag: Option<u16>) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&dst.0);
        f.extend_from_slice(&src.0);
        if let Some(t) = tag {
            f.extend_from_slice(&[0x81, 0x00]);
            f.extend_from_slice(&t.to_be_bytes());
        }
        f.extend_from_slice(&[0x08, 0x00]);
        f.resize(64, 0);
        f
    }

    #[test]
    fn an_unknown_destination_floods_in_its_vlan_and_nothing_is_learnt() {
        let t = topology();
        let tr = trace(&t, 1, &frame(mac(9), mac(2), None), 0).unwrap();
        assert_eq!(
            (tr.vlan, tr.dropped, tr.lookup),
            (Some(10), None, Lookup::Unknown)
        );
        assert_eq!(tr.learning, Some(Learned::New));
        let actions: Vec<(PortId, OutputAction)> =
            tr.outputs.iter().map(|o| (o.port, o.action)).collect();
        // Ports without a VLAN setting carry every VLAN (tagged): offered too.
        assert_eq!(
            actions,
            [
                (0, OutputAction::Down),
                (2, OutputAction::Down),
                (3, OutputAction::Down),
            ]
        );
        assert!(t.bridges[0].fdb.is_empty(), "a trace learns nothing");
    }

    #[test]
    fn a_known_destination_a_hairpin_and_the_drops_on_the_way_in() {
        let t = topology();
        let fdb = &t.bridges[0].fdb;
        fdb.add_static(fdb_key(mac(5), 10), 2);
        fdb.learn(fdb_key(mac(6), 10), 1, 1, usize::MAX);
        let tr = trace(&t, 1, &frame(mac(5), mac(2), None), 0).unwrap();
        assert_eq!(
            tr.lookup,
            Lookup::Found {
                port: 2,
                is_static: true
            }
        );
        assert_eq!(tr.outputs.len(), 1);
        let tr = trace(&t, 1, &frame(mac(6), mac(2), None), 0).unwrap();
        assert_eq!(
            (tr.lookup, tr.dropped),
            (Lookup::Hairpin, Some(DropReason::Hairpin))
        );
        assert!(tr.outputs.is_empty());
        // Port 0 is locked to macs 1 and 7; group and zero sources never pass.
        let dropped = |src: PortId, f: Vec<u8>| trace(&t, src, &f, 0).unwrap().dropped;
        assert_eq!(
            dropped(0, frame(mac(9), mac(3), None)),
            Some(DropReason::MacSpoofed)
        );
        assert_eq!(
            dropped(1, frame(mac(9), MacAddr([1, 0, 0, 0, 0, 1]), None)),
            Some(DropReason::InvalidSrcMac)
        );
        // A tagged frame on an access port, VLAN 30 on the trunk.
        assert_eq!(
            dropped(1, frame(mac(9), mac(2), Some(10))),
            Some(DropReason::VlanFiltered)
        );
        assert_eq!(
            dropped(2, frame(mac(9), mac(2), Some(30))),
            Some(DropReason::VlanFiltered)
        );
        assert!(trace(&t, 9, &frame(mac(9), mac(2), None), 0).is_none());
    }

    #[test]
    fn a_broadcast_on_the_trunk_is_offered_to_its_vlan_only() {
        // No port has a peer here: members say Down (the tags they would get are checked
        // against the data path in tests/tests/trace.rs, with real frontends).
        let t = topology();
        let tr = trace(&t, 2, &frame(MacAddr::BROADCAST, mac(2), Some(20)), 0).unwrap();
        assert_eq!((tr.vlan, tr.lookup), (Some(20), Lookup::Group));
        let actions: Vec<(PortId, OutputAction)> =
            tr.outputs.iter().map(|o| (o.port, o.action)).collect();
        assert_eq!(
            actions,
            [
                (0, OutputAction::Down),
                (1, OutputAction::NotInVlan),
                (3, OutputAction::Down),
            ]
        );
        // Sent to one port outside its VLAN (a static entry): not delivered either.
        t.bridges[0].fdb.add_static(fdb_key(mac(5), 20), 1);
        let tr = trace(&t, 2, &frame(mac(5), mac(2), Some(20)), 0).unwrap();
        assert_eq!(
            tr.outputs,
            [Output {
                port: 1,
                action: OutputAction::NotInVlan
            }]
        );
    }

    #[test]
    fn learning_is_predicted_with_its_limits() {
        let t = topology();
        let fdb = &t.bridges[0].fdb;
        fdb.learn(fdb_key(mac(2), 10), 1, 1, 2);
        fdb.learn(fdb_key(mac(3), 10), 1, 1, 2);
        let tr = trace(&t, 1, &frame(mac(9), mac(4), None), 0).unwrap();
        assert_eq!(tr.learning, Some(Learned::Refused(Limit::Port)));
        let tr = trace(&t, 2, &frame(mac(9), mac(2), Some(10)), 0).unwrap();
        assert_eq!(tr.learning, Some(Learned::Moved { from: 1 }));
    }
}
