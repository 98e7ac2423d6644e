//! EVPN tunnel ports in the daemon: each has a segment control
//! ([`vringswitch_evpn::Controller`]) whose data path side is the bridge's FDB and the
//! port's routing. The host's MAC addresses advertised are those the bridge has on its
//! own ports in the tunnel's VLAN; each remote MAC is installed twice: in the bridge's FDB
//! as behind the tunnel port (pinned, not aged) and in the port's table as behind its end.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use vringswitch_config::{KindSpec, PortSpec, VlanConfig, VxlanControl};
use vringswitch_evpn::{mac_text, Controller, FrrWatch, Mac, MirrorSpec, RemoteRoutes, Segment};
use vringswitch_ports::vxlan::Routing;
use vringswitch_ports::{PortHandle, PortId};
use vringswitch_switch::fdb::{fdb_key, split_key, Fdb, Learned};
use vringswitch_switch::Switch;
use vringswitch_wire::ethernet::MacAddr;

/// The FDB VLAN of a tunnel port's segment: its access VLAN, else the untagged frames'.
fn segment_vlan(spec: &PortSpec) -> u16 {
    match spec.vlan {
        Some(VlanConfig::Access { tag }) => tag,
        _ => 0,
    }
}

/// How the segment controls watch FRR, as the configuration says.
pub(crate) fn frr_watch(c: &vringswitch_config::EvpnConfig) -> FrrWatch {
    FrrWatch {
        run_dir: c.frr_run_dir.get_ref().clone(),
        restart_hold: std::time::Duration::from_secs(*c.restart_hold_s.get_ref()),
    }
}

/// Starts the segment control of `spec` if it is an EVPN tunnel port (on `fdb`, its
/// bridge's table; its handle `handle`).
pub(crate) fn start(
    spec: &PortSpec,
    id: PortId,
    handle: &Arc<PortHandle>,
    fdb: Arc<Fdb>,
    switch: Arc<Switch>,
    frr: &FrrWatch,
) -> Option<Controller> {
    let KindSpec::Vxlan(v) = &spec.kind else {
        return None;
    };
    if v.control() != VxlanControl::Evpn {
        return None;
    }
    // The settings' check keeps an EVPN tunnel's address IPv4.
    let IpAddr::V4(local) = v.local_addr() else {
        tracing::error!(port = %spec.name, "an EVPN tunnel needs an IPv4 address: its routes are not followed");
        return None;
    };
    let mirror = MirrorSpec {
        vni: v.vni(),
        local,
        udp_port: vringswitch_config::port::vxlan::MIRROR_UDP_PORT,
    };
    let segment = TunnelSegment {
        fdb,
        port: id,
        vlan: segment_vlan(spec),
        routing: Routing::new(handle.clone()),
        switch,
        on_port: HashMap::new(),
        in_fdb: HashSet::new(),
        followed: BTreeMap::new(),
        retried: None,
        name: spec.name.clone(),
    };
    match Controller::start(format!("evpn-{}", spec.name), mirror, frr.clone(), segment) {
        Ok(c) => Some(c),
        Err(e) => {
            tracing::error!(port = %spec.name, error = %e,
                "cannot start the port's EVPN control: its routes are not followed");
            None
        }
    }
}

/// A tunnel port's segment as its control sees it.
struct TunnelSegment {
    fdb: Arc<Fdb>,
    port: PortId,
    vlan: u16,
    routing: Routing,
    switch: Arc<Switch>,
    /// The remote addresses installed in the port's table, with their ends.
    on_port: HashMap<Mac, IpAddr>,
    /// Those installed in the bridge's FDB.
    in_fdb: HashSet<Mac>,
    /// The remote addresses of the routes followed last.
    followed: BTreeMap<Mac, Ipv4Addr>,
    /// When the FDB was last asked again for routes it did not take.
    retried: Option<Instant>,
    name: String,
}

/// How often the FDB is asked again for a route it did not take (a local port holds the
/// address, or the bridge learnt as many as it may), while the routes do not change.
const FDB_RETRY: Duration = Duration::from_secs(1);

impl Segment for TunnelSegment {
    fn local_macs(&mut self) -> BTreeSet<Mac> {
        self.fdb
            .entries()
            .into_iter()
            .filter(|(_, e)| !e.remote && e.port != self.port)
            .map(|(k, _)| split_key(k))
            .filter(|(m, vlan)| *vlan == self.vlan && m.0[0] & 1 == 0)
            .map(|(m, _)| m.0)
            .collect()
    }

    fn follow(&mut self, routes: &RemoteRoutes) {
        let ends: Vec<IpAddr> = routes.ends().into_iter().map(IpAddr::V4).collect();
        let flood: Vec<IpAddr> = routes.flood.iter().map(|&a| IpAddr::V4(a)).collect();
        match self.routing.set_ends(&ends, &flood) {
            // The new queue carried what was behind the ends that stayed.
            Ok(true) => self.on_port = self.routing.known().into_iter().collect(),
            Ok(false) => {}
            Err(e) => {
                tracing::debug!(port = %self.name, error = %e, "the tunnel's ends are not set yet");
                return;
            }
        }
        for (&mac, &end) in &routes.macs {
            let end = IpAddr::V4(end);
            if self.on_port.get(&mac) != Some(&end) {
                if self.routing.install(mac, end) {
                    self.on_port.insert(mac, end);
                } else {
                    tracing::debug!(port = %self.name, mac = %mac_text(mac), "cannot install a remote address");
                }
            }
        }
        self.on_port.retain(|mac, _| {
            let keep = routes.macs.contains_key(mac);
            if !keep {
                self.routing.withdraw(*mac);
            }
            keep
        });
        // The FDB is asked again for what it did not take when the routes change, else
        // once a second: each refusal is counted, and the routes come every 100 ms.
        let changed = self.followed != routes.macs;
        if changed {
            self.followed.clone_from(&routes.macs);
        }
        let retry = changed || self.retried.is_none_or(|t| t.elapsed() >= FDB_RETRY);
        if retry {
            self.retried = Some(Instant::now());
        }
        let now = self.switch.now_secs();
        for &mac in routes.macs.keys() {
            let key = fdb_key(MacAddr(mac), self.vlan);
            let there = self
                .fdb
                .get(key)
                .is_some_and(|e| e.port == self.port && e.pinned);
            if there {
                self.in_fdb.insert(mac);
                continue;
            }
            self.in_fdb.remove(&mac);
            if !retry {
                continue;
            }
            // A route is the control plane's: not held to the tunnel port's learning
            // limit (the bridge's still holds). Held by a local port, or refused by the
            // bridge's limit: asked again later.
            if matches!(
                self.fdb.install(key, self.port, now, usize::MAX),
                Learned::New | Learned::Moved { .. } | Learned::Refreshed
            ) {
                self.in_fdb.insert(mac);
            }
        }
        let (fdb, port, vlan) = (&self.fdb, self.port, self.vlan);
        self.in_fdb.retain(|mac| {
            let keep = routes.macs.contains_key(mac);
            if !keep {
                fdb.withdraw(fdb_key(MacAddr(*mac), vlan), port);
            }
            keep
        });
    }
}
