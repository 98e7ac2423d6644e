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

use crate::errors::{no_bridge, no_port, referenced, ChangeError};
use crate::schema::{
    BridgeSpec, MirrorSpec, PortPatch, PortSpec, SavedState, SecurityGroupSpec, StaticMac,
    STATE_VERSION,
};
use crate::topology::policy;

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
    /// An EVPN tunnel port's segment control.
    pub evpn: Option<vringswitch_evpn::Controller>,
}

/// A change to a port, checked against the desired state (see [`State::plan_port_update`]).
pub(crate) struct PortUpdate {
    pub id: PortId,
    pub old: PortSpec,
    pub new: PortSpec,
    /// The port's static entries (FDB keys), which follow it to a new bridge.
    pub statics: Vec<u64>,
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
    /// Port mirrors, in the order made.
    pub mirrors: Vec<MirrorSpec>,
    /// Security groups, in the order made.
    pub security_groups: Vec<SecurityGroupSpec>,
    /// The rules' epoch: changes with every change to a group or to a port's groups or
    /// addresses, so that each connection is checked again, once, against the new rules.
    /// Never 0.
    pub filter_epoch: u16,
    /// The connection table, once a port has had groups.
    pub conntrack: std::sync::OnceLock<Arc<vringswitch_filter::conntrack::Table>>,
    /// Its size and the most connections one port holds.
    pub conntrack_limits: (u32, u32),
}

impl State {
    /// An empty state whose connection table, once made, holds `max` connections, at
    /// most `per_port` charged to one port.
    pub fn with_conntrack_limits(max: u32, per_port: u32) -> State {
        State {
            conntrack_limits: (max, per_port),
            filter_epoch: 1,
            ..State::default()
        }
    }

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
        for claim in spec.claims() {
            if let Some(other) = self
                .ports
                .values()
                .find(|p| p.spec.claims().contains(&claim))
            {
                return Err(ChangeError::Conflict(format!(
                    "{claim} is already taken by tunnel port {:?}",
                    other.spec.name
                )));
            }
        }
        Ok(())
    }

    /// Port `name` as `patch` leaves it, checked: the new settings, and the static entries
    /// that go with it (they must stay in its VLANs, and not clash on a new bridge). None if
    /// the patch changes nothing.
    pub fn plan_port_update(
        &self,
        name: &str,
        patch: PortPatch,
    ) -> Result<Option<PortUpdate>, ChangeError> {
        let entry = self.ports.get(name).ok_or_else(|| no_port(name))?;
        let (id, old) = (entry.id, entry.spec.clone());
        let mut new = old.clone();
        if let Some(bridge) = patch.bridge {
            self.bridge(&bridge).map_err(referenced)?;
            new.bridge = bridge;
        }
        if let Some(vlan) = patch.vlan {
            if let Some(v) = &vlan {
                vringswitch_config::check_vlan(v).map_err(ChangeError::Invalid)?;
            }
            new.vlan = vlan;
        }
        patch_list(
            &mut new.allowed_macs,
            patch.allowed_macs,
            vringswitch_config::check_allowed_macs,
        )?;
        patch_list(
            &mut new.allowed_ips,
            patch.allowed_ips,
            vringswitch_config::check_allowed_ips,
        )?;
        patch_list(
            &mut new.security_groups,
            patch.security_groups,
            vringswitch_config::check_port_groups,
        )?;
        if new.security_groups != old.security_groups {
            self.check_security_groups(&self.security_groups, Some(&new))
                .map_err(referenced)?;
        }
        if let Some(n) = patch.fdb_max_learned {
            vringswitch_config::check_max_learned(n).map_err(ChangeError::Invalid)?;
            new.fdb_max_learned = Some(n);
        }
        if let Some(p) = patch.police_rx {
            new.police_rx = p;
        }
        if let Some(p) = patch.police_tx {
            new.police_tx = p;
        }
        for (what, p) in [("police_rx", &new.police_rx), ("police_tx", &new.police_tx)] {
            if let Some(p) = p {
                vringswitch_config::check_police(what, p).map_err(ChangeError::Invalid)?;
            }
        }
        if let Some(admin) = patch.admin {
            new.admin = admin;
        }
        if let Some(ids) = &patch.external_ids {
            new.external_ids = crate::schema::patched_external_ids(&old.external_ids, ids)
                .map_err(ChangeError::Invalid)?;
        }
        if let Some(changes) = &patch.settings {
            let changed = new
                .with_settings(changes)
                .map_err(|e| ChangeError::Invalid(e.message))?;
            let live = old.settings().live_fields();
            let (was, now) = (
                serde_json::to_value(&old.kind).unwrap_or_default(),
                serde_json::to_value(&changed.kind).unwrap_or_default(),
            );
            if let Some(key) = changes
                .keys()
                .find(|k| !live.contains(&k.as_str()) && was.get(k.as_str()) != now.get(k.as_str()))
            {
                return Err(ChangeError::Conflict(format!(
                    "{key} of port {name:?} cannot change while it runs{}: delete the port and \
                     add it again (its peer reconnects)",
                    if live.is_empty() {
                        String::new()
                    } else {
                        format!(" (only {} can)", live.join(", "))
                    }
                )));
            }
            new.kind = changed.kind;
        }
        if new == old {
            return Ok(None);
        }
        if new.bridge != old.bridge && !self.mirrors_of(name).is_empty() {
            let names: Vec<&str> = self
                .mirrors_of(name)
                .iter()
                .map(|m| m.name.as_str())
                .collect();
            return Err(ChangeError::Conflict(format!(
                "port {name:?} is in mirror {}: a mirror stays within one bridge; delete it \
                 first (vringctl mirror del NAME)",
                names.join(", ")
            )));
        }
        let policy = policy(new.vlan.as_ref());
        let from = self.bridge(&old.bridge)?;
        let statics: Vec<u64> = from
            .statics
            .iter()
            .filter(|(_, p)| *p == name)
            .map(|(&k, _)| k)
            .collect();
        if let Some(&k) = statics.iter().find(|&&k| !policy.is_member(split_key(k).1)) {
            let (mac, vlan) = split_key(k);
            return Err(ChangeError::Conflict(format!(
                "static entry {mac} on VLAN {vlan} of port {name:?} would lie outside the \
                 port's VLANs: delete it first (vringctl fdb del {} {mac} --vlan {vlan})",
                old.bridge
            )));
        }
        if new.bridge != old.bridge {
            let to = self.bridge(&new.bridge)?;
            if let Some(&k) = statics.iter().find(|k| to.statics.contains_key(k)) {
                return Err(ChangeError::Conflict(format!(
                    "bridge {:?} already has a static entry for {} on VLAN {}",
                    new.bridge,
                    split_key(k).0,
                    split_key(k).1
                )));
            }
        }
        Ok(Some(PortUpdate {
            id,
            old,
            new,
            statics,
        }))
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
            mirrors: self.mirrors.clone(),
            security_groups: self.security_groups.clone(),
        }
    }

    /// The rules changed: every connection is checked again at its next frame.
    pub fn next_filter_epoch(&mut self) {
        self.filter_epoch = self.filter_epoch.wrapping_add(1).max(1);
    }

    /// Checks `groups` against the ports as they are, with `changed` in place of its
    /// namesake (a port about to change, or to be added).
    pub fn check_security_groups(
        &self,
        groups: &[SecurityGroupSpec],
        changed: Option<&PortSpec>,
    ) -> Result<(), ChangeError> {
        vringswitch_config::check_security_groups(groups, &self.specs_with(changed))
            .map_err(|(_, m)| ChangeError::Invalid(m))
    }

    /// The mirrors `port` is part of, as a source or an output.
    pub fn mirrors_of(&self, port: &str) -> Vec<&MirrorSpec> {
        self.mirrors
            .iter()
            .filter(|m| m.output == port || m.ports.iter().any(|p| p == port))
            .collect()
    }

    /// Checks `mirrors` against the ports as they are, with `changed` in place of its
    /// namesake (a port about to change; one about to be added is beside them, which no
    /// mirror names yet).
    pub fn check_mirrors(
        &self,
        mirrors: &[MirrorSpec],
        changed: Option<&PortSpec>,
    ) -> Result<(), ChangeError> {
        vringswitch_config::check_mirrors(mirrors, &self.specs_with(changed))
            .map_err(|(_, m)| ChangeError::Invalid(m))
    }

    /// The ports' specs as they are, with `changed` in place of its namesake (a port about
    /// to change) or beside them (a port about to be added).
    fn specs_with<'a>(&'a self, changed: Option<&'a PortSpec>) -> Vec<&'a PortSpec> {
        self.ports
            .values()
            .map(|p| match changed {
                Some(c) if c.name == p.spec.name => c,
                _ => &p.spec,
            })
            .chain(changed.filter(|c| !self.ports.contains_key(&c.name)))
            .collect()
    }
}

/// A port's list setting as a patch leaves it: left out, as it was; `null`, none; a list,
/// that list once `check` accepts it.
fn patch_list<T>(
    field: &mut Option<Vec<String>>,
    patch: Option<Option<Vec<String>>>,
    check: impl Fn(&[String]) -> Result<T, String>,
) -> Result<(), ChangeError> {
    if let Some(list) = patch {
        if let Some(l) = &list {
            check(l).map_err(ChangeError::Invalid)?;
        }
        *field = list;
    }
    Ok(())
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
        PortSpec::new(name, bridge, kind)
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
        for name in ["br0", "br1"] {
            st.bridges.push(BridgeEntry {
                spec: BridgeSpec {
                    name: name.into(),
                    fdb_aging_s: 300,
                    fdb_max_learned: 100,
                    external_ids: Default::default(),
                },
                fdb: Arc::new(Fdb::new(300)),
                statics: BTreeMap::new(),
            });
        }
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
                    evpn: None,
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

    #[test]
    fn a_port_update_keeps_its_static_entries_in_its_vlans_and_on_a_free_bridge() {
        use vringswitch_config::VlanConfig;
        use vringswitch_switch::fdb::fdb_key;
        use vringswitch_wire::ethernet::MacAddr;

        let mut st = with(vec![vm("a", "/run/a.sock")]);
        let mac = MacAddr([2, 0, 0, 0, 0, 1]);
        st.bridges[0].statics.insert(fdb_key(mac, 10), "a".into());
        let patch =
            |json: serde_json::Value| -> PortPatch { serde_json::from_value(json).unwrap() };
        let refused = |st: &State, json| match st.plan_port_update("a", patch(json)) {
            Err(e) => e.to_string(),
            Ok(_) => "accepted".into(),
        };
        // Nothing changes: nothing to apply.
        assert!(st
            .plan_port_update("a", patch(serde_json::json!({})))
            .unwrap()
            .is_none());
        // Its static entry on VLAN 10 must stay in its VLANs.
        assert!(refused(
            &st,
            serde_json::json!({"vlan": {"mode": "access", "tag": 20}})
        )
        .starts_with("static entry 02:00:00:00:00:01 on VLAN 10 of port \"a\" would lie outside"));
        let u = st
            .plan_port_update(
                "a",
                patch(serde_json::json!({"vlan": {"mode": "trunk", "tags": [10, 20]}})),
            )
            .unwrap()
            .unwrap();
        assert_eq!(u.new.vlan, Some(VlanConfig::Trunk { tags: vec![10, 20] }));
        assert_eq!(u.statics, [fdb_key(mac, 10)]);
        // Moved, it takes its entry along: not onto a bridge that has one for that address.
        st.bridges[1].statics.insert(fdb_key(mac, 10), "z".into());
        assert_eq!(
            refused(&st, serde_json::json!({"bridge": "br1"})),
            "bridge \"br1\" already has a static entry for 02:00:00:00:00:01 on VLAN 10"
        );
        // Bad values, an unknown bridge or port: refused, as the API's 400 and 404.
        assert!(refused(
            &st,
            serde_json::json!({"vlan": {"mode": "access", "tag": 5000}})
        )
        .contains("out of range"));
        assert_eq!(
            refused(&st, serde_json::json!({"bridge": "br9"})),
            "no bridge named \"br9\""
        );
        assert!(matches!(
            st.plan_port_update("b", PortPatch::default()),
            Err(ChangeError::NotFound(_))
        ));
    }

    #[test]
    fn external_ids_are_merged_key_by_key_and_checked() {
        let mut st = with(vec![vm("a", "/run/a.sock")]);
        let patch =
            |json: serde_json::Value| -> PortPatch { serde_json::from_value(json).unwrap() };
        let u = st
            .plan_port_update(
                "a",
                patch(serde_json::json!({"external_ids": {"k": "1", "j": "2"}})),
            )
            .unwrap()
            .unwrap();
        assert_eq!(u.new.external_ids.len(), 2);
        // Only the IDs differ: the daemon takes that as a change of metadata alone.
        let mut same = u.new.clone();
        same.external_ids = u.old.external_ids.clone();
        assert_eq!(same, u.old);
        st.ports.get_mut("a").unwrap().spec = u.new;
        let u = st
            .plan_port_update(
                "a",
                patch(serde_json::json!({"external_ids": {"k": null, "j": "3"}})),
            )
            .unwrap()
            .unwrap();
        assert_eq!(
            u.new.external_ids,
            [("j".to_owned(), "3".to_owned())].into_iter().collect()
        );
        // Removing a key that is not there, setting one as it is: nothing to do.
        st.ports.get_mut("a").unwrap().spec = u.new;
        assert!(st
            .plan_port_update(
                "a",
                patch(serde_json::json!({"external_ids": {"x": null, "j": "3"}}))
            )
            .unwrap()
            .is_none());
        match st.plan_port_update(
            "a",
            patch(serde_json::json!({"external_ids": {"a b": "1"}})),
        ) {
            Err(e) => assert!(e.to_string().contains("external_ids key \"a b\""), "{e}"),
            Ok(_) => panic!("a key with a space was taken"),
        }
    }
}
