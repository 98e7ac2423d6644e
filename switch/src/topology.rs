//! The switch's layout as the workers see it: bridges, their ports, and which worker polls
//! which ingress queue. Immutable once built; the control side swaps in a new one.

use std::sync::Arc;

use vringswitch_ports::{PortHandle, PortId};

use crate::capture::PortCapture;
use crate::fdb::Fdb;
use crate::police::Policer;
use crate::port_security::PortSecurity;
use crate::security_groups::PortFilter;
use crate::vlan::VlanPolicy;

/// One bridge.
pub struct BridgeRt {
    pub name: String,
    pub fdb: Arc<Fdb>,
    /// Ports on this bridge.
    pub ports: Vec<PortId>,
    /// A port of the bridge has security groups: every burst on it is judged on the
    /// worker's own copy of its frames.
    pub guarded: bool,
}

/// One port and where it sits.
pub struct PortRt {
    pub handle: Arc<PortHandle>,
    /// Index into [`Topology::bridges`].
    pub bridge: usize,
    /// Queue pairs the port accepts.
    pub queue_pairs: u16,
    /// Which VLANs the port carries, tagged or not.
    pub vlan: VlanPolicy,
    /// Which source MACs the port may send from.
    pub security: PortSecurity,
    /// Most addresses the bridge learns on this port.
    pub fdb_max_learned: usize,
    /// Policers of what the port sends and of what it is sent.
    pub police_rx: Option<Arc<Policer>>,
    pub police_tx: Option<Arc<Policer>>,
    /// False when the operator set the port down: its ingress queues are not polled and nothing
    /// is delivered to it.
    pub admin_up: bool,
    /// The port's packet capture, while one runs.
    pub capture: Option<Arc<PortCapture>>,
    /// Port mirroring (SPAN) from and to this port.
    pub mirror: PortMirrors,
    /// Its security groups and `allowed_ips`, if it has either.
    pub filter: Option<Arc<PortFilter>>,
    /// A tunnel to other hosts: an address it brings never takes one a local port holds
    /// ([`crate::fdb::Fdb::learn_as`]).
    pub remote: bool,
}

/// The mirrors a port is part of, as the workers use them.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PortMirrors {
    /// Mirror outputs that get a copy of every frame this port sends (empty: none).
    pub rx: Box<[PortId]>,
    /// Mirror outputs that get a copy of every frame delivered to this port.
    pub tx: Box<[PortId]>,
    /// This port is a mirror's output: it is sent mirrored frames only (no flooding, no
    /// FDB destination), and what it sends is dropped (`mirror_output`: its port security
    /// permits no source) and not learnt, as an OVS mirror's output port carries no other
    /// traffic. Its frames leave tagged with
    /// their VLAN (untagged in VLAN 0), whatever its VLAN setting.
    pub output: bool,
}

/// Bridges and ports; ports are indexed by their [`PortId`].
#[derive(Default)]
pub struct Topology {
    pub bridges: Vec<BridgeRt>,
    pub ports: Vec<Option<PortRt>>,
    /// The connection table, made (once, at its configured size) when the first port
    /// with security groups comes, and kept for the daemon's life.
    pub conntrack: Option<Arc<vringswitch_filter::conntrack::Table>>,
}

impl Topology {
    #[inline]
    pub fn port(&self, id: PortId) -> Option<&PortRt> {
        self.ports.get(id as usize).and_then(Option::as_ref)
    }

    /// Which of `workers` polls ingress queue pair `qp` of `port`: spread so that a port's queue
    /// pairs land on different workers.
    pub fn owner(port: PortId, qp: u16, workers: usize) -> usize {
        (port as usize + qp as usize) % workers.max(1)
    }

    /// The ingress queues `worker` polls (a VM's TX rings, a TAP or AF_XDP port's one), as
    /// (port, queue pair).
    pub fn ingress_queues_of(&self, worker: usize, workers: usize) -> Vec<(PortId, u16)> {
        let mut out = Vec::new();
        for (id, p) in self.ports.iter().enumerate() {
            let Some(p) = p.as_ref().filter(|p| p.admin_up) else {
                continue;
            };
            for qp in 0..p.queue_pairs {
                if Self::owner(id as PortId, qp, workers) == worker {
                    out.push((id as PortId, qp));
                }
            }
        }
        out
    }

    /// Workers that poll at least one queue of `port`.
    pub fn workers_of(&self, port: PortId, workers: usize) -> Vec<usize> {
        let Some(p) = self.port(port) else {
            return Vec::new();
        };
        let mut w: Vec<usize> = (0..p.queue_pairs)
            .map(|qp| Self::owner(port, qp, workers))
            .collect();
        w.sort_unstable();
        w.dedup();
        w
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topo(pairs: &[u16]) -> Topology {
        Topology {
            bridges: vec![],
            ports: pairs
                .iter()
                .enumerate()
                .map(|(i, &q)| {
                    Some(PortRt {
                        admin_up: true,
                        handle: Arc::new(PortHandle::new(i as PortId, "p", 1)),
                        bridge: 0,
                        queue_pairs: q,
                        vlan: VlanPolicy::default(),
                        security: Default::default(),
                        fdb_max_learned: usize::MAX,
                        police_rx: None,
                        police_tx: None,
                        capture: None,
                        mirror: PortMirrors::default(),
                        filter: None,
                        remote: false,
                    })
                })
                .collect(),
            conntrack: None,
        }
    }

    #[test]
    fn every_queue_has_exactly_one_owner() {
        let t = topo(&[1, 2, 4]);
        for workers in 1..4 {
            let mut all: Vec<_> = (0..workers)
                .flat_map(|w| t.ingress_queues_of(w, workers))
                .collect();
            all.sort_unstable();
            assert_eq!(all.len(), 7);
            all.dedup();
            assert_eq!(all.len(), 7);
        }
    }

    #[test]
    fn queue_pairs_spread_over_workers() {
        let t = topo(&[2]);
        assert_eq!(t.workers_of(0, 2), vec![0, 1]);
        assert_eq!(t.workers_of(0, 1), vec![0]);
        assert!(t.workers_of(5, 2).is_empty());
    }
}
