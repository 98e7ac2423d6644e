//! The engine's topology compiled from the desired state: for each bridge its ports, for
//! each port its handle, VLAN policy, port security, limits, policers and capture, in the
//! forms the workers use.

use std::sync::Arc;

use vringswitch_config::{PoliceConfig, VlanConfig};
use vringswitch_switch::police::Policer;
use vringswitch_switch::port_security::{PortSecurity, MAX_ALLOWED};
use vringswitch_switch::stats::{cycles, cycles_per_second};
use vringswitch_switch::vlan::VlanPolicy;
use vringswitch_switch::{BridgeRt, PortMirrors, PortRt, Topology};
use vringswitch_wire::ethernet::MacAddr;

use crate::desired::State;

/// The topology of `st`.
pub(crate) fn compile(st: &State) -> Topology {
    let mut topology = Topology::default();
    for b in &st.bridges {
        topology.bridges.push(BridgeRt {
            name: b.spec.name.clone(),
            fdb: b.fdb.clone(),
            ports: Vec::new(),
            guarded: false,
        });
    }
    topology.ports.resize_with(st.id_space(), || None);
    for p in st.ports.values() {
        let Some(bridge) = st.bridges.iter().position(|b| b.spec.name == p.spec.bridge) else {
            continue;
        };
        let mirror = mirrors_of(st, &p.spec.name);
        // An admin-down port, or a mirror's output, is no flooding target of its bridge.
        let admin_up = p.spec.admin.is_up();
        if admin_up && !mirror.output {
            topology.bridges[bridge].ports.push(p.id);
        }
        topology.ports[p.id as usize] = Some(PortRt {
            handle: p.port.handle().clone(),
            bridge,
            queue_pairs: p.spec.queue_pairs(),
            // A mirror's output shows each copy's VLAN: tagged, untagged in VLAN 0.
            vlan: if mirror.output {
                VlanPolicy::transparent()
            } else {
                policy(p.spec.vlan.as_ref())
            },
            // A mirror's output sends nothing into the bridge: every source is refused.
            security: if mirror.output {
                PortSecurity::deny_all()
            } else {
                security(p.spec.allowed_macs.as_ref())
            },
            fdb_max_learned: p.spec.fdb_max_learned() as usize,
            police_rx: p.police[0].clone(),
            police_tx: p.police[1].clone(),
            admin_up,
            capture: st.captures.get(&p.id).cloned(),
            mirror,
            filter: crate::security_groups::port_filter(st, p),
            remote: p.spec.port_type() == vringswitch_config::PortType::Vxlan,
        });
        if topology.ports[p.id as usize]
            .as_ref()
            .and_then(|rt| rt.filter.as_deref())
            .is_some_and(|f| f.policy.is_some())
        {
            topology.bridges[bridge].guarded = true;
        }
    }
    for b in &mut topology.bridges {
        b.ports.sort_unstable();
    }
    topology.conntrack = crate::security_groups::table(st);
    topology
}

/// The mirrors port `name` is part of, in the workers' form: the outputs its frames are
/// copied to each way, and whether it is an output itself.
fn mirrors_of(st: &State, name: &str) -> PortMirrors {
    let id_of = |port: &str| st.ports.get(port).map(|p| p.id);
    let mut rx = Vec::new();
    let mut tx = Vec::new();
    for m in &st.mirrors {
        if !m.ports.iter().any(|p| p == name) {
            continue;
        }
        let Some(out) = id_of(&m.output) else {
            continue;
        };
        if m.direction.rx() && !rx.contains(&out) {
            rx.push(out);
        }
        if m.direction.tx() && !tx.contains(&out) {
            tx.push(out);
        }
    }
    PortMirrors {
        rx: rx.into(),
        tx: tx.into(),
        output: st.mirrors.iter().any(|m| m.output == name),
    }
}

/// The policer `config` asks for, full now.
pub(crate) fn policer(config: Option<&PoliceConfig>) -> Option<Arc<Policer>> {
    let c = config?;
    Some(Arc::new(Policer::new(
        c.bits(),
        c.packets(),
        cycles(),
        cycles_per_second(),
    )))
}

/// The data path's form of a port-security list. Every path into the state checks the list
/// first; should one ever slip through unchecked, the port fails closed.
fn security(macs: Option<&Vec<String>>) -> PortSecurity {
    const _: () = assert!(vringswitch_config::MAX_ALLOWED_MACS == MAX_ALLOWED);
    let Some(macs) = macs else {
        return PortSecurity::open();
    };
    vringswitch_config::check_allowed_macs(macs)
        .ok()
        .and_then(|m| {
            let m: Vec<MacAddr> = m.into_iter().map(MacAddr).collect();
            PortSecurity::locked(&m).ok()
        })
        .unwrap_or_else(PortSecurity::deny_all)
}

/// The VLAN policy the workers apply for a port's setting.
pub(crate) fn policy(vlan: Option<&VlanConfig>) -> VlanPolicy {
    match vlan {
        None => VlanPolicy::transparent(),
        Some(VlanConfig::Access { tag }) => VlanPolicy::access(*tag),
        Some(VlanConfig::Trunk { tags }) => VlanPolicy::trunk(tags),
    }
}
