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

use crate::errors::{no_bridge, referenced, ChangeError};
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

    /// Whether `spec` (checked alone) may join: no port of its name, its bridge there, no
    /// other port on its socket or its interface.
    pub fn check_new_port(&self, spec: &PortSpec) -> Result<(), ChangeError> {
        if self.ports.contains_key(&spec.name) {
            return Err(ChangeError::Conflict(format!(
                "port {:?} already exists",
                spec.name
            )));
        }
        if !self.bridges.iter().any(|b| b.spec.name == spec.bridge) {
            return Err(referenced(no_bridge(&spec.bridge)));
        }
        if let Some(socket) = spec.socket() {
            if let Some(other) = self
                .ports
                .values()
                .find(|p| p.spec.socket() == Some(socket))
            {
                return Err(ChangeError::Conflict(format!(
                    "socket {} is already used by port {:?}",
                    socket.display(),
                    other.spec.name
                )));
            }
        }
        if let Some(ifname) = spec.ifname() {
            if let Some(other) = self
                .ports
                .values()
                .find(|p| p.spec.ifname() == Some(ifname))
            {
                return Err(ChangeError::Conflict(format!(
                    "interface {ifname} is already used by port {:?}",
                    other.spec.name
                )));
            }
        }
        Ok(())
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
    use vringswitch_config::{KindSpec, TapSettings, VhostUserSettings};
    use vringswitch_ports::PortHandle;

    use super::*;

    /// A port as the desired state holds it, nothing running behind it.
    struct Nothing(Arc<PortHandle>);

    impl RunningPort for Nothing {
        fn handle(&self) -> &Arc<PortHandle> {
            &self.0
        }

        fn stop(&mut self) {}
    }

    fn spec(name: &str, bridge: &str, kind: KindSpec) -> PortSpec {
        PortSpec {
            name: name.into(),
            bridge: bridge.into(),
            kind,
            vlan: None,
            allowed_macs: None,
            fdb_max_learned: None,
            police_rx: None,
            police_tx: None,
            admin: Default::default(),
        }
    }

    fn vm(name: &str, socket: &str) -> PortSpec {
        let settings = VhostUserSettings {
            socket: socket.into(),
            ..VhostUserSettings::default()
        };
        spec(name, "br0", KindSpec::VhostUser(settings))
    }

    fn tap(name: &str, ifname: Option<&str>) -> PortSpec {
        let settings = TapSettings {
            ifname: ifname.map(str::to_owned),
            ..TapSettings::default()
        };
        spec(name, "br0", KindSpec::Tap(settings))
    }

    fn with(ports: Vec<PortSpec>) -> State {
        let mut st = State::default();
        st.bridges.push(BridgeEntry {
            spec: BridgeSpec {
                name: "br0".into(),
                fdb_aging_s: 300,
                fdb_max_learned: 100,
            },
            fdb: Arc::new(Fdb::new(300)),
            statics: BTreeMap::new(),
        });
        for spec in ports {
            let id = st.free_id();
            st.take_id(id);
            let port = Box::new(Nothing(Arc::new(PortHandle::new(id, &spec.name, 1))));
            st.ports.insert(
                spec.name.clone(),
                PortEntry {
                    id,
                    spec,
                    port,
                    police: [None, None],
                },
            );
        }
        st
    }

    #[test]
    fn a_new_port_takes_no_name_socket_or_interface_another_has() {
        let st = with(vec![vm("a", "/run/a.sock"), tap("up0", None)]);
        let refused = |p: PortSpec| st.check_new_port(&p).unwrap_err().to_string();
        assert_eq!(refused(vm("a", "/run/x.sock")), "port \"a\" already exists");
        assert_eq!(
            refused(vm("b", "/run/a.sock")),
            "socket /run/a.sock is already used by port \"a\""
        );
        // An interface named after the port counts as given.
        assert_eq!(
            refused(tap("t", Some("up0"))),
            "interface up0 is already used by port \"up0\""
        );
        let mut elsewhere = vm("b", "/run/b.sock");
        elsewhere.bridge = "br9".into();
        assert!(matches!(
            st.check_new_port(&elsewhere),
            Err(ChangeError::Invalid(m)) if m == "no bridge named \"br9\""
        ));
        assert!(st.check_new_port(&vm("b", "/run/b.sock")).is_ok());
        assert!(st.check_new_port(&tap("t", Some("up1"))).is_ok());
    }

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
