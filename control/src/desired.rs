//! The desired state: bridges and ports by name, as the configuration, the state file and
//! the API made them, with what runs for each (its FDB, its running port, its policers),
//! and the ids of ports. A removed port's id is given again only once no worker and no
//! FDB refers to it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use vringswitch_ports::port::RunningPort;
use vringswitch_ports::PortId;
use vringswitch_switch::capture::PortCapture;
use vringswitch_switch::fdb::{split_key, Fdb};
use vringswitch_switch::police::Policer;

use crate::errors::{no_bridge, ChangeError};
use crate::schema::{BridgeSpec, PortSpec, SavedState, StaticMac, STATE_VERSION};

pub(crate) struct BridgeEntry {
    pub spec: BridgeSpec,
    pub fdb: Arc<Fdb>,
    /// Static entries: FDB key -> port name.
    pub statics: BTreeMap<u64, String>,
}

pub(crate) struct PortEntry {
    pub id: PortId,
    pub spec: PortSpec,
    pub port: Box<dyn RunningPort>,
    /// The policers of `spec` (what the port sends, what it is sent), kept across topology
    /// changes: a bucket is made anew only when its setting changes.
    pub police: [Option<Arc<Policer>>; 2],
}

#[derive(Default)]
pub(crate) struct State {
    pub bridges: Vec<BridgeEntry>,
    pub ports: BTreeMap<String, PortEntry>,
    next_id: PortId,
    /// Ids of removed ports that no worker or FDB refers to any more.
    free_ids: BTreeSet<PortId>,
    /// Packet captures running, by port id (one per port at most).
    pub captures: HashMap<PortId, Arc<PortCapture>>,
}

impl State {
    /// The id the next port gets: the lowest one a removed port gave back, else a new one.
    pub fn free_id(&self) -> PortId {
        self.free_ids.first().copied().unwrap_or(self.next_id)
    }

    /// `id` (from [`Self::free_id`]) is a port's now.
    pub fn take_id(&mut self, id: PortId) {
        if !self.free_ids.remove(&id) {
            self.next_id = self.next_id.max(id + 1);
        }
    }

    /// A removed port's id, which no worker nor FDB refers to any more, may serve again.
    pub fn give_back_id(&mut self, id: PortId) {
        self.free_ids.insert(id);
    }

    /// One more than the highest id ever given: the size of the topology's port table.
    pub fn id_space(&self) -> usize {
        self.next_id as usize
    }

    /// Names of the ports on `bridge`.
    pub fn port_names(&self, bridge: &str) -> Vec<String> {
        self.ports
            .values()
            .filter(|p| p.spec.bridge == bridge)
            .map(|p| p.spec.name.clone())
            .collect()
    }

    pub fn bridge(&self, name: &str) -> Result<&BridgeEntry, ChangeError> {
        self.bridges
            .iter()
            .find(|b| b.spec.name == name)
            .ok_or_else(|| no_bridge(name))
    }

    pub fn bridge_mut(&mut self, name: &str) -> Result<&mut BridgeEntry, ChangeError> {
        self.bridges
            .iter_mut()
            .find(|b| b.spec.name == name)
            .ok_or_else(|| no_bridge(name))
    }

    /// What the state file records.
    pub fn saved(&self) -> SavedState {
        SavedState {
            version: STATE_VERSION,
            bridges: self.bridges.iter().map(|b| b.spec.clone()).collect(),
            ports: self.ports.values().map(|p| p.spec.clone()).collect(),
            static_macs: self
                .bridges
                .iter()
                .flat_map(|b| {
                    b.statics.iter().map(|(&key, port)| {
                        let (mac, vlan) = split_key(key);
                        StaticMac {
                            bridge: b.spec.name.clone(),
                            mac: mac.to_string(),
                            vlan,
                            port: port.clone(),
                        }
                    })
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_given_lowest_first_and_again_only_once_given_back() {
        let mut st = State::default();
        let a = st.free_id();
        st.take_id(a);
        let b = st.free_id();
        st.take_id(b);
        assert_eq!((a, b, st.id_space()), (0, 1, 2));
        // b removed but still referred to: not given again.
        assert_eq!(st.free_id(), 2);
        st.give_back_id(b);
        assert_eq!(st.free_id(), b);
        st.take_id(b);
        assert_eq!(st.free_id(), 2);
        assert_eq!(st.id_space(), 2, "a reused id grows nothing");
    }
}
