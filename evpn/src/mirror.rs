//! A segment's silent mirror in the kernel, for FRR's zebra (which reads and writes only
//! kernel devices): a Linux bridge, a VXLAN device with the segment's VNI and this host's
//! tunnel address (`nolearning`, on a UDP port other than the data path's, which the
//! device holds while up), and the "advertise" end of a veth pair in the bridge, learning
//! off. No frame is meant to cross it: IPv6 makes no address on any of the four devices
//! (nothing sends a neighbour solicitation a bridge could learn and zebra advertise), the
//! other end of the veth pair is up and unused.
//!
//! Devices are named after the VNI: `vsb<VNI>` (bridge), `vsx<VNI>` (VXLAN), `vsa<VNI>`
//! (advertise) and `vsp<VNI>` (its peer), so one daemon per network namespace serves a
//! VNI (as one zebra serves the namespace). A mirror a previous process left with the same
//! settings is adopted as it is (an upgrade must not withdraw the segment's routes); one
//! with other settings is made again, with a warning.

use std::net::Ipv4Addr;

use futures_util::TryStreamExt;
use netlink_packet_route::link::{
    AfSpecInet6, AfSpecUnspec, In6AddrGenMode, InfoData, InfoVxlan, LinkAttribute, LinkFlags,
    LinkInfo, LinkMessage,
};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::AddressFamily;
use rtnetlink::{Handle, LinkBridge, LinkBridgePort, LinkUnspec, LinkVeth, LinkVxlan};

use crate::routes::{read_entry, Devices, KernelEntry, Mac, RemoteRoutes};
use crate::EvpnError;

/// What a segment's mirror is made of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MirrorSpec {
    pub vni: u32,
    /// This host's tunnel address (the routes' next hop).
    pub local: Ipv4Addr,
    /// The UDP port of the mirror's VXLAN device: not the data path's.
    pub udp_port: u16,
}

/// The names of a mirror's devices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    pub bridge: String,
    pub vxlan: String,
    pub advertise: String,
    pub peer: String,
}

impl Names {
    pub fn of(vni: u32) -> Names {
        Names {
            bridge: format!("vsb{vni}"),
            vxlan: format!("vsx{vni}"),
            advertise: format!("vsa{vni}"),
            peer: format!("vsp{vni}"),
        }
    }

    fn all(&self) -> [&str; 4] {
        [&self.bridge, &self.vxlan, &self.advertise, &self.peer]
    }
}

/// A segment's mirror, made or adopted.
#[derive(Debug, Clone)]
pub struct Mirror {
    pub spec: MirrorSpec,
    pub names: Names,
    pub bridge: u32,
    pub devices: Devices,
    pub peer: u32,
}

/// The link named `name`, if there is one.
async fn link(h: &Handle, name: &str) -> Result<Option<LinkMessage>, EvpnError> {
    let mut s = h.link().get().match_name(name.to_string()).execute();
    match s.try_next().await {
        Ok(l) => Ok(l),
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(None),
        Err(e) => Err(EvpnError::netlink(
            format!("cannot read interface {name}"),
            e,
        )),
    }
}

/// The master (bridge) a link is enslaved to.
fn master_of(l: &LinkMessage) -> Option<u32> {
    l.attributes.iter().find_map(|a| match a {
        LinkAttribute::Controller(m) => Some(*m),
        _ => None,
    })
}

/// Whether `l` is a VXLAN device as `spec` wants it.
fn vxlan_matches(l: &LinkMessage, spec: &MirrorSpec) -> bool {
    let Some(infos) = l.attributes.iter().find_map(|a| match a {
        LinkAttribute::LinkInfo(i) => Some(i),
        _ => None,
    }) else {
        return false;
    };
    let Some(data) = infos.iter().find_map(|i| match i {
        LinkInfo::Data(InfoData::Vxlan(d)) => Some(d),
        _ => None,
    }) else {
        return false;
    };
    let has = |want: &InfoVxlan| data.contains(want);
    has(&InfoVxlan::Id(spec.vni))
        && has(&InfoVxlan::Local(spec.local))
        && has(&InfoVxlan::Port(spec.udp_port))
        && has(&InfoVxlan::Learning(false))
}

/// Keeps IPv6 quiet on interface `index` (`name`), before it is up: no address is made
/// for it (`addrgenmode none`), so it sends no neighbour discovery a bridge could learn
/// from; and IPv6 is turned off where the daemon may write its setting (systemd's
/// ProtectKernelTunables keeps /proc/sys read-only: the first is enough).
async fn ipv6_quiet(h: &Handle, index: u32, name: &str) -> Result<(), EvpnError> {
    let no_address =
        LinkAttribute::AfSpecUnspec(vec![AfSpecUnspec::Inet6(vec![AfSpecInet6::AddrGenMode(
            In6AddrGenMode::None,
        )])]);
    match h
        .link()
        .change(
            LinkUnspec::new_with_index(index)
                .append_extra_attribute(no_address)
                .build(),
        )
        .execute()
        .await
    {
        Ok(()) => {}
        // A kernel without IPv6 has nothing to keep quiet.
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::EAFNOSUPPORT => {}
        Err(e) => {
            return Err(EvpnError::netlink(
                format!("cannot stop IPv6 addresses on {name}"),
                e,
            ))
        }
    }
    let path = format!("/proc/sys/net/ipv6/conf/{name}/disable_ipv6");
    if let Err(e) = std::fs::write(&path, "1") {
        tracing::debug!(interface = %name, error = %e, "IPv6 left on (without addresses)");
    }
    Ok(())
}

impl Mirror {
    /// Adopts the mirror of `spec.vni` if it is whole and as `spec` says, else (re)makes it.
    pub async fn ensure(h: &Handle, spec: MirrorSpec) -> Result<Mirror, EvpnError> {
        let names = Names::of(spec.vni);
        if let Some(m) = Self::adopt(h, spec, &names).await? {
            tracing::info!(vni = spec.vni, bridge = %names.bridge,
                "EVPN mirror of the segment found as it should be: kept");
            return Ok(m);
        }
        if let Some(vxlan) = link(h, &names.vxlan).await? {
            if !vxlan_matches(&vxlan, &spec) {
                // Names are the VNI's: one daemon per network namespace serves a VNI.
                tracing::warn!(vni = spec.vni, device = %names.vxlan, local = %spec.local,
                    "EVPN mirror of the segment found with another local address or port \
                     (this host's earlier configuration, or another vringswitch in this \
                     network namespace serving the same VNI): made again");
            }
        }
        Self::remove(h, spec.vni).await?;
        Self::make(h, spec, names).await
    }

    /// Whether the mirror is still whole, up and as its spec says.
    pub async fn is_whole(&self, h: &Handle) -> Result<bool, EvpnError> {
        Ok(Self::adopt(h, self.spec, &self.names)
            .await?
            .is_some_and(|m| m.devices == self.devices && m.bridge == self.bridge))
    }

    /// The mirror of `spec` as a previous process left it, if whole and as `spec` says.
    async fn adopt(
        h: &Handle,
        spec: MirrorSpec,
        names: &Names,
    ) -> Result<Option<Mirror>, EvpnError> {
        let (Some(bridge), Some(vxlan), Some(adv), Some(peer)) = (
            link(h, &names.bridge).await?,
            link(h, &names.vxlan).await?,
            link(h, &names.advertise).await?,
            link(h, &names.peer).await?,
        ) else {
            return Ok(None);
        };
        let b = bridge.header.index;
        let up = |l: &LinkMessage| l.header.flags.contains(LinkFlags::Up);
        if !vxlan_matches(&vxlan, &spec)
            || master_of(&vxlan) != Some(b)
            || master_of(&adv) != Some(b)
            || ![&bridge, &vxlan, &adv, &peer].into_iter().all(up)
        {
            return Ok(None);
        }
        Ok(Some(Mirror {
            spec,
            names: names.clone(),
            bridge: b,
            devices: Devices {
                vxlan: vxlan.header.index,
                advertise: adv.header.index,
            },
            peer: peer.header.index,
        }))
    }

    async fn make(h: &Handle, spec: MirrorSpec, names: Names) -> Result<Mirror, EvpnError> {
        let fail = |what: String| move |e| EvpnError::netlink(what, e);
        h.link()
            .add(LinkBridge::new(&names.bridge).build())
            .execute()
            .await
            .map_err(fail(format!("cannot create bridge {}", names.bridge)))?;
        h.link()
            .add(
                LinkVxlan::new(&names.vxlan, spec.vni)
                    .local(spec.local)
                    .port(spec.udp_port)
                    .learning(false)
                    .build(),
            )
            .execute()
            .await
            .map_err(fail(format!(
                "cannot create VXLAN device {} (vni {}, local {}, port {})",
                names.vxlan, spec.vni, spec.local, spec.udp_port
            )))?;
        h.link()
            .add(LinkVeth::new(&names.advertise, &names.peer).build())
            .execute()
            .await
            .map_err(fail(format!(
                "cannot create veth pair {} / {}",
                names.advertise, names.peer
            )))?;
        let mut index = [0u32; 4];
        for (i, name) in names.all().into_iter().enumerate() {
            index[i] = link(h, name)
                .await?
                .ok_or_else(|| {
                    EvpnError::System(format!("interface {name} vanished as it was made"))
                })?
                .header
                .index;
            ipv6_quiet(h, index[i], name).await?;
        }
        let [bridge, vxlan, advertise, peer] = index;
        for port in [vxlan, advertise] {
            h.link()
                .change(LinkUnspec::new_with_index(port).controller(bridge).build())
                .execute()
                .await
                .map_err(fail(format!(
                    "cannot put a port in bridge {}",
                    names.bridge
                )))?;
        }
        h.link()
            .change(LinkBridgePort::new(advertise).learning(false).build())
            .execute()
            .await
            .map_err(fail(format!(
                "cannot turn learning off on {}",
                names.advertise
            )))?;
        for i in [peer, advertise, vxlan, bridge] {
            h.link()
                .change(LinkUnspec::new_with_index(i).up().build())
                .execute()
                .await
                .map_err(fail(format!(
                    "cannot bring the mirror of vni {} up (its UDP port {} may be taken)",
                    spec.vni, spec.udp_port
                )))?;
        }
        tracing::info!(vni = spec.vni, bridge = %names.bridge, udp_port = spec.udp_port,
            "EVPN mirror of the segment made");
        Ok(Mirror {
            spec,
            names,
            bridge,
            devices: Devices { vxlan, advertise },
            peer,
        })
    }

    /// Deletes the mirror of `vni` (what of it there is): zebra withdraws the segment.
    pub async fn remove(h: &Handle, vni: u32) -> Result<(), EvpnError> {
        let names = Names::of(vni);
        // The veth pair goes with either end.
        for name in [&names.advertise, &names.peer, &names.vxlan, &names.bridge] {
            if let Some(l) = link(h, name).await? {
                match h.link().del(l.header.index).execute().await {
                    Ok(()) => {}
                    Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => {}
                    Err(e) => return Err(EvpnError::netlink(format!("cannot delete {name}"), e)),
                }
            }
        }
        Ok(())
    }

    /// The EVPN entries the mirror holds now.
    pub async fn dump(&self, h: &Handle) -> Result<Vec<KernelEntry>, EvpnError> {
        let mut s = h
            .neighbours()
            .get()
            .set_address_family(AddressFamily::Bridge)
            .execute();
        let mut out = Vec::new();
        while let Some(n) = s.try_next().await.map_err(|e| {
            EvpnError::netlink("cannot read the bridge forwarding entries".into(), e)
        })? {
            out.extend(read_entry(&n, self.devices));
        }
        Ok(out)
    }

    /// Puts `mac` on the advertise port as a static entry, replacing whatever entry the
    /// bridge had for it (zebra's, when the address was remote until now).
    pub async fn advertise(&self, h: &Handle, mac: Mac) -> Result<(), EvpnError> {
        h.neighbours()
            .add_bridge(self.devices.advertise, &mac)
            .state(NeighbourState::Noarp)
            .flags(NeighbourFlags::Controller)
            .replace()
            .execute()
            .await
            .map_err(|e| EvpnError::netlink(format!("cannot advertise {}", mac_text(mac)), e))
    }

    /// Takes `mac`'s static entry off the advertise port; gone already is fine.
    pub async fn unadvertise(&self, h: &Handle, mac: Mac) -> Result<(), EvpnError> {
        let mut msg = NeighbourMessage::default();
        msg.header.family = AddressFamily::Bridge;
        msg.header.ifindex = self.devices.advertise;
        msg.header.state = NeighbourState::Noarp;
        msg.header.flags = NeighbourFlags::Controller;
        msg.attributes.push(
            netlink_packet_route::neighbour::NeighbourAttribute::LinkLayerAddress(mac.to_vec()),
        );
        match h.neighbours().del(msg).execute().await {
            Ok(()) => Ok(()),
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENOENT => Ok(()),
            Err(e) => Err(EvpnError::netlink(
                format!("cannot withdraw {}", mac_text(mac)),
                e,
            )),
        }
    }

    /// Deletes `routes` (zebra's entries) from the mirror: each on the VXLAN device, and
    /// the bridge's entry of each MAC for its VXLAN port; gone already is fine.
    pub async fn flush_routes(&self, h: &Handle, routes: &RemoteRoutes) -> Result<(), EvpnError> {
        // (MAC, the tunnel end of a `self` entry; none: the bridge's `master` entry)
        let entries = routes
            .macs
            .iter()
            .flat_map(|(&m, &v)| [(m, Some(v)), (m, None)])
            .chain(routes.flood.iter().map(|&v| ([0u8; 6], Some(v))));
        for (mac, vtep) in entries {
            let mut msg = NeighbourMessage::default();
            msg.header.family = AddressFamily::Bridge;
            msg.header.ifindex = self.devices.vxlan;
            msg.attributes
                .push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
            match vtep {
                Some(v) => {
                    msg.header.flags = NeighbourFlags::Own;
                    msg.attributes
                        .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(v)));
                }
                None => msg.header.flags = NeighbourFlags::Controller,
            }
            match h.neighbours().del(msg).execute().await {
                Ok(()) => {}
                Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENOENT => {}
                Err(e) => {
                    let behind = vtep.map_or_else(|| "the bridge".to_owned(), |v| v.to_string());
                    return Err(EvpnError::netlink(
                        format!("cannot delete {} behind {behind}", mac_text(mac)),
                        e,
                    ));
                }
            }
        }
        Ok(())
    }

    /// Whether interface `index` is one of the mirror's.
    pub fn owns(&self, index: u32) -> bool {
        [
            self.bridge,
            self.devices.vxlan,
            self.devices.advertise,
            self.peer,
        ]
        .contains(&index)
    }
}

/// A MAC address as people write it.
pub fn mac_text(m: Mac) -> String {
    format!(
        "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        m[0], m[1], m[2], m[3], m[4], m[5]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_an_interface_name_for_every_vni() {
        let n = Names::of(16_777_215);
        for name in n.all() {
            assert!(name.len() <= 15, "{name}");
        }
        assert_eq!(n.bridge, "vsb16777215");
        assert_eq!(Names::of(100).advertise, "vsa100");
    }
}
