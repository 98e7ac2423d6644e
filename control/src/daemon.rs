//! Assembling a running switch from a configuration, changing it at runtime, and taking it
//! down again.
//!
//! [`Daemon`] owns the desired state (bridges and ports, by name: `desired`) behind one
//! mutex. Every change is validated whole before anything is touched, then applied: the
//! engine gets a new topology compiled from it (`topology`; workers pick it up at their
//! next poll; ports not involved keep their ids, caches and frames), and ports are started
//! (by their kind, `vringswitch_ports::port::start`) or stopped. A removed port's id is
//! reused only once every worker has rebuilt its caches from a topology without the port and
//! the FDB has forgotten it, so a stale id can never name another port, and memory follows
//! the live ports rather than every port ever made. What it is asked is in [`crate::schema`],
//! why it refuses in [`crate::errors`], where sockets may go in [`crate::socket_dir`].

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use vringswitch_config::Config;
use vringswitch_filter::conntrack;
use vringswitch_ports::{PortHandle, PortId};
use vringswitch_switch::affinity::keep_off_cores;
use vringswitch_switch::capture::{CaptureSettings, PortCapture};
use vringswitch_switch::fdb::{fdb_key, split_key, Fdb};
use vringswitch_switch::vlan::UNTAGGED_VLAN;
use vringswitch_switch::{Switch, SwitchConfig};
use vringswitch_wire::ethernet::MacAddr;

use crate::desired::{BridgeEntry, PortEntry, PortUpdate, State};
use crate::errors::{invalid, no_bridge, no_group, no_port, referenced};
pub use crate::errors::{ChangeError, DaemonError};
use crate::instance_lock::InstanceLock;
pub use crate::schema::{
    AdminState, BridgePatch, BridgeSpec, ConnectionFilter, ConnectionView, FdbEntryView,
    MirrorSpec, PortPatch, PortSpec, SavedState, SecurityGroupSpec, StaticMac, StaticMacRequest,
    VlanConfig, STATE_VERSION,
};
use crate::socket_dir::{check_inside, create_socket_dir};
pub use crate::socket_dir::{check_own_dir, socket_pattern, CLIENT_SOCKET_SUBDIR};
use crate::state_file;
use crate::topology::{self, policer, policy};

mod handover;
pub use handover::{Frozen, Handed};

/// Where the daemon keeps things.
#[derive(Debug, Clone, Default)]
pub struct DaemonOptions {
    /// The state file: every accepted change is written there, and a start restores it.
    pub state_file: Option<PathBuf>,
    /// Sockets of ports created over the API must lie in this directory.
    pub socket_dir: Option<PathBuf>,
    /// Other paths the daemon itself uses (its API socket): no port may take them.
    pub own_paths: Vec<PathBuf>,
    /// What changes the log levels at runtime (none where the caller keeps logging as it
    /// is, as the fuzz target does).
    pub log_control: Option<Arc<crate::log_levels::LogControl>>,
}

/// A running switch: engine, workers and ports.
pub struct Daemon {
    pub switch: Arc<Switch>,
    state: Mutex<State>,
    workers: Mutex<Vec<JoinHandle<()>>>,
    options: DaemonOptions,
    /// Held while the daemon runs: no other daemon takes its socket directory or state file.
    lock: InstanceLock,
    /// While a daemon starts from what the process before it handed over: the ports it
    /// takes over instead of starting them.
    taking_over: Mutex<Option<handover::TakingOver>>,
    /// How the daemon replaces itself (`vringctl upgrade`), if its process can.
    upgrader: std::sync::OnceLock<Arc<crate::upgrade::Upgrader>>,
    /// How EVPN tunnel ports watch FRR.
    frr: vringswitch_evpn::FrrWatch,
    /// Each EVPN tunnel port's control status by port (with its bridge), read without the
    /// state's lock: /metrics must never wait for it (the lock is held for good by a
    /// process that handed over, until it exits).
    evpn_status: Mutex<BTreeMap<String, (String, vringswitch_evpn::StatusHandle)>>,
}

impl Daemon {
    /// Starts workers, then bridges and ports: from the state file if there is one, else
    /// as `config` describes (and the state file is written from it).
    /// What changes the log levels, if the daemon's caller gave it.
    pub fn log_control(&self) -> Option<&Arc<crate::log_levels::LogControl>> {
        self.options.log_control.as_ref()
    }

    /// Lets the daemon replace itself with `upgrader` (`POST /v1/upgrade`); once only.
    pub fn set_upgrader(&self, upgrader: Arc<crate::upgrade::Upgrader>) {
        let _ = self.upgrader.set(upgrader);
    }

    /// How the daemon replaces itself, if its process gave it the means.
    pub fn upgrader(&self) -> Option<&Arc<crate::upgrade::Upgrader>> {
        self.upgrader.get()
    }

    pub fn start(config: &Config, options: DaemonOptions) -> Result<Daemon, DaemonError> {
        if let Some(dir) = &options.socket_dir {
            create_socket_dir(dir)?;
        }
        if let Some(dir) = options
            .state_file
            .as_deref()
            .and_then(Path::parent)
            .filter(|d| !d.as_os_str().is_empty())
        {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o750)
                .create(dir)
                .map_err(|e| DaemonError::State {
                    path: dir.to_path_buf(),
                    message: format!("cannot create its directory: {e}"),
                })?;
            check_own_dir(dir, "state directory", 0o022)?;
        }
        // Before anything is read or bound: a second daemon stops here, touching nothing.
        let lock =
            InstanceLock::acquire(options.socket_dir.as_deref(), options.state_file.as_deref())?;
        let saved = match &options.state_file {
            Some(path) => state_file::load(path)?,
            None => None,
        };
        let switch = Switch::new(&SwitchConfig {
            cores: config.dataplane.cores.get_ref().clone(),
            burst: *config.dataplane.burst.get_ref(),
            idle_poll: Duration::from_micros(config.dataplane.idle_poll_us),
        })?;
        // Every thread started from here on (vhost-user event threads, connections, the
        // API runtime) stays off the worker cores, as OVS keeps its handlers off PMD cores.
        match keep_off_cores(config.dataplane.cores.get_ref()) {
            Ok(kept) if kept.is_empty() => tracing::warn!(
                "every CPU is a worker core: control threads will preempt the workers"
            ),
            Ok(kept) => {
                let cpus: Vec<String> = kept.iter().map(usize::to_string).collect();
                tracing::debug!(cpus = %cpus.join(","), "control threads kept off the worker cores")
            }
            Err(e) => tracing::warn!(error = %e, "control threads may run on worker cores"),
        }
        let workers = switch.start_workers()?;
        let daemon = Daemon {
            switch,
            state: Mutex::new(State::with_conntrack_limits(
                *config.dataplane.conntrack_max.get_ref(),
                *config.dataplane.conntrack_per_port.get_ref(),
            )),
            workers: Mutex::new(workers),
            options,
            lock,
            taking_over: Mutex::new(None),
            upgrader: Default::default(),
            frr: crate::evpn::frr_watch(&config.evpn),
            evpn_status: Default::default(),
        };
        let from_state = saved.is_some();
        let from_config = state_file::from_config(config);
        if let (Some(path), Some(saved)) = (&daemon.options.state_file, &saved) {
            if let Some(ignored) = state_file::ignored_config(&from_config, saved) {
                tracing::warn!(
                    state = %path.display(),
                    "the state file holds the topology, so these bridges and ports of the \
                     configuration are not used: {ignored}. Make such changes with vringctl or \
                     the API, or stop the daemon and delete the state file to start from the \
                     configuration"
                );
            }
        }
        let saved = saved.unwrap_or(from_config);
        if let Err(e) = daemon.restore(saved) {
            daemon.stop();
            return Err(match (&daemon.options.state_file, from_state) {
                (Some(path), true) => DaemonError::State {
                    path: path.clone(),
                    message: e.to_string(),
                },
                _ => e.into(),
            });
        }
        if let Some(path) = &daemon.options.state_file {
            tracing::info!(state = %path.display(), restored = from_state, "topology state file");
        }
        Ok(daemon)
    }

    /// Builds the topology of `saved` (into an empty daemon), then saves it: only once it
    /// is whole, so that a failure on the way leaves the state file as it was.
    fn restore(&self, saved: SavedState) -> Result<(), ChangeError> {
        for b in saved.bridges {
            self.apply_add_bridge(b)?;
        }
        // Before the ports, which name them.
        self.apply_security_groups(saved.security_groups)?;
        for p in saved.ports {
            self.apply_add_port(p)?;
        }
        for m in saved.static_macs {
            let bridge = m.bridge.clone();
            self.apply_static_mac(
                &bridge,
                StaticMacRequest {
                    mac: m.mac,
                    port: m.port,
                    vlan: Some(m.vlan),
                },
            )?;
        }
        for m in saved.mirrors {
            self.apply_add_mirror(m)?;
        }
        self.save(&self.state())
    }

    /// Writes the state file, if there is one: temporary file, fsync, rename, fsync of the
    /// directory. A crash leaves the old file or the new one, never a mix.
    fn save(&self, st: &State) -> Result<(), ChangeError> {
        let Some(path) = &self.options.state_file else {
            return Ok(());
        };
        state_file::write_atomically(path, &st.saved()).map_err(|e| {
            tracing::error!(state = %path.display(), error = %e, "cannot save the state file");
            ChangeError::NotSaved(format!("state file {}: {e}", path.display()))
        })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves a state that was validated before any
        // change; carry on with it.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The bridges, in creation order, each with the names of its ports.
    pub fn bridges(&self) -> Vec<(BridgeSpec, Vec<String>)> {
        let st = self.state();
        st.bridges
            .iter()
            .map(|b| (b.spec.clone(), st.port_names(&b.spec.name)))
            .collect()
    }

    /// One bridge and the names of its ports.
    pub fn bridge(&self, name: &str) -> Result<(BridgeSpec, Vec<String>), ChangeError> {
        let st = self.state();
        let b = st.bridge(name)?;
        Ok((b.spec.clone(), st.port_names(name)))
    }

    /// The ports, by name, with their handles (for live state).
    pub fn ports(&self) -> Vec<(PortSpec, Arc<PortHandle>)> {
        self.state()
            .ports
            .values()
            .map(|p| (p.spec.clone(), p.port.handle().clone()))
            .collect()
    }

    /// One port and its handle.
    pub fn port(&self, name: &str) -> Result<(PortSpec, Arc<PortHandle>), ChangeError> {
        let st = self.state();
        let p = st.ports.get(name).ok_or_else(|| no_port(name))?;
        Ok((p.spec.clone(), p.port.handle().clone()))
    }

    /// Starts capturing port `name`'s frames into a new tap, which the caller drains and
    /// hands to [`Daemon::end_capture`] when done. One capture per port at a time.
    pub fn start_capture(
        &self,
        name: &str,
        settings: CaptureSettings,
    ) -> Result<Arc<PortCapture>, ChangeError> {
        let mut st = self.state();
        let id = st.ports.get(name).ok_or_else(|| no_port(name))?.id;
        if st.captures.contains_key(&id) {
            return Err(ChangeError::Conflict(format!(
                "port {name:?} is already being captured; one capture per port runs at a \
                 time: end the other one (stop its vringctl capture) first"
            )));
        }
        let tap = Arc::new(PortCapture::new(settings));
        st.captures.insert(id, tap.clone());
        self.publish(&st);
        tracing::info!(
            port = %name,
            direction = %capture_direction(settings),
            snaplen = settings.snaplen,
            buffers = tap.capacity(),
            "packet capture started"
        );
        Ok(tap)
    }

    /// Ends a capture started by [`Daemon::start_capture`]: the workers stop filling `tap`
    /// once this returns. Frames still in it may be drained after.
    pub fn end_capture(&self, tap: &Arc<PortCapture>) {
        let mut st = self.state();
        let Some(&id) = st
            .captures
            .iter()
            .find_map(|(id, t)| Arc::ptr_eq(t, tap).then_some(id))
        else {
            // Its port was removed, which ended it.
            return;
        };
        st.captures.remove(&id);
        let generation = self.publish(&st);
        self.quiesce(generation);
        let name = st
            .ports
            .values()
            .find(|p| p.id == id)
            .map_or("", |p| p.spec.name.as_str());
        tracing::info!(
            port = %name,
            dropped = tap.dropped(),
            "packet capture ended"
        );
    }

    /// Creates a bridge.
    pub fn add_bridge(&self, spec: BridgeSpec) -> Result<(), ChangeError> {
        self.apply_add_bridge(spec)?;
        self.save(&self.state())
    }

    fn apply_add_bridge(&self, spec: BridgeSpec) -> Result<(), ChangeError> {
        vringswitch_config::check_name_str("bridge", &spec.name).map_err(ChangeError::Invalid)?;
        vringswitch_config::check_aging(spec.fdb_aging_s).map_err(ChangeError::Invalid)?;
        vringswitch_config::check_max_learned(spec.fdb_max_learned)
            .map_err(ChangeError::Invalid)?;
        vringswitch_config::check_external_ids(&spec.external_ids).map_err(ChangeError::Invalid)?;
        let mut st = self.state();
        if st.bridges.iter().any(|b| b.spec.name == spec.name) {
            return Err(ChangeError::Conflict(format!(
                "bridge {:?} already exists",
                spec.name
            )));
        }
        let fdb = Arc::new(Fdb::with_limit(
            spec.fdb_aging_s,
            spec.fdb_max_learned as usize,
        ));
        tracing::info!(bridge = %spec.name, fdb_aging_s = spec.fdb_aging_s,
            fdb_max_learned = spec.fdb_max_learned, "bridge added");
        st.bridges.push(BridgeEntry {
            spec,
            fdb,
            statics: BTreeMap::new(),
        });
        self.publish(&st);
        Ok(())
    }

    /// Changes a bridge's FDB ageing, its limit on learnt addresses and/or its external IDs,
    /// while it forwards: nothing learnt is forgotten (a lower limit only stops learning
    /// until entries age out).
    pub fn update_bridge(&self, name: &str, patch: BridgePatch) -> Result<BridgeSpec, ChangeError> {
        let mut st = self.state();
        let b = st.bridge_mut(name)?;
        let mut new = b.spec.clone();
        if let Some(s) = patch.fdb_aging_s {
            vringswitch_config::check_aging(s).map_err(ChangeError::Invalid)?;
            new.fdb_aging_s = s;
        }
        if let Some(n) = patch.fdb_max_learned {
            vringswitch_config::check_max_learned(n).map_err(ChangeError::Invalid)?;
            new.fdb_max_learned = n;
        }
        if let Some(ids) = &patch.external_ids {
            new.external_ids = crate::schema::patched_external_ids(&b.spec.external_ids, ids)
                .map_err(ChangeError::Invalid)?;
        }
        if new == b.spec {
            return Ok(new);
        }
        b.fdb.set_aging_s(new.fdb_aging_s);
        b.fdb.set_max_learned(new.fdb_max_learned as usize);
        b.spec = new.clone();
        tracing::info!(bridge = %name, fdb_aging_s = new.fdb_aging_s,
            fdb_max_learned = new.fdb_max_learned, external_ids = new.external_ids.len(),
            "bridge changed");
        self.save(&st)?;
        Ok(new)
    }

    /// Deletes a bridge and every port on it first (as `ovs-vsctl del-br`), each as
    /// [`Daemon::remove_port`] does.
    pub fn remove_bridge_with_ports(&self, name: &str) -> Result<Vec<String>, ChangeError> {
        let (ports, mirrors) = {
            let st = self.state();
            st.bridge(name)?;
            let ports = st.port_names(name);
            let mirrors: Vec<String> = st
                .mirrors
                .iter()
                .filter(|m| ports.contains(&m.output))
                .map(|m| m.name.clone())
                .collect();
            (ports, mirrors)
        };
        for mirror in &mirrors {
            self.remove_mirror(mirror)?;
        }
        for port in &ports {
            self.remove_port(port)?;
        }
        self.remove_bridge(name)?;
        Ok(ports)
    }

    /// Deletes a bridge that has no ports.
    pub fn remove_bridge(&self, name: &str) -> Result<(), ChangeError> {
        let mut st = self.state();
        let i = st
            .bridges
            .iter()
            .position(|b| b.spec.name == name)
            .ok_or_else(|| no_bridge(name))?;
        let ports = st.port_names(name);
        if !ports.is_empty() {
            return Err(ChangeError::Conflict(format!(
                "bridge {name:?} still has ports {ports:?}: delete or move them first, or delete the bridge with them (vringctl bridge del {name} --with-ports)"
            )));
        }
        st.bridges.remove(i);
        self.publish(&st);
        tracing::info!(bridge = %name, "bridge removed");
        self.save(&st)
    }

    /// What `path` is to the daemon, if it is one of the paths it uses itself (its API
    /// socket, its state file and the files beside it, its lock, the client socket
    /// directory). Compared as written and with the directory resolved.
    fn own_path(&self, path: &Path) -> Option<&'static str> {
        let o = &self.options;
        let mut own: Vec<(PathBuf, &'static str)> = o
            .own_paths
            .iter()
            .map(|p| (p.clone(), "API socket"))
            .collect();
        if let Some(state) = &o.state_file {
            own.push((state.clone(), "state file"));
            for ext in ["tmp", "lock"] {
                let mut p = state.as_os_str().to_owned();
                p.push(format!(".{ext}"));
                own.push((p.into(), "state file"));
            }
        }
        if let Some(dir) = &o.socket_dir {
            own.push((dir.join(crate::instance_lock::SOCKET_DIR_LOCK), "lock file"));
            own.push((dir.join(CLIENT_SOCKET_SUBDIR), "client socket directory"));
        }
        let resolved = |p: &Path| -> Option<PathBuf> {
            let dir = std::fs::canonicalize(p.parent()?).ok()?;
            Some(dir.join(p.file_name()?))
        };
        let path_resolved = resolved(path);
        own.into_iter()
            .find(|(p, _)| p == path || (path_resolved.is_some() && resolved(p) == path_resolved))
            .map(|(_, what)| what)
    }

    /// Where sockets of ports created over the API must lie.
    pub fn socket_dir(&self) -> Option<&Path> {
        self.options.socket_dir.as_deref()
    }

    /// Creates a port asked for over the API: the socket of a kind with one must lie in the
    /// socket directory, where it goes by default (see
    /// [`vringswitch_config::default_socket`]). Returns the port as made.
    pub fn add_port(&self, spec: PortSpec) -> Result<PortSpec, ChangeError> {
        let mut spec = spec.normalized().map_err(invalid)?;
        let name = spec.name.clone();
        if spec.settings().has_a_socket() {
            if spec.socket().is_none() {
                let Some(dir) = &self.options.socket_dir else {
                    return Err(ChangeError::Invalid(
                        "socket is required: this daemon has no socket directory".into(),
                    ));
                };
                spec.kind.settings_mut().fill_socket(&name, dir);
            }
            let socket = spec.socket().unwrap_or(Path::new(""));
            vringswitch_config::check_socket_path(socket).map_err(ChangeError::Invalid)?;
            if let Some(dir) = &self.options.socket_dir {
                check_inside(socket, dir)?;
            }
        }
        self.apply_add_port(spec.clone())?;
        self.save(&self.state())?;
        Ok(spec)
    }

    /// Creates a port and starts it: serves its socket, or opens its interface.
    fn apply_add_port(&self, spec: PortSpec) -> Result<(), ChangeError> {
        let spec = spec.normalized().map_err(invalid)?;
        if spec.settings().has_a_socket() && spec.socket().is_none() {
            return Err(ChangeError::Invalid(format!(
                "port {:?}: socket is required",
                spec.name
            )));
        }
        let mut st = self.state();
        if let Some(what) = spec.socket().and_then(|socket| self.own_path(socket)) {
            return Err(ChangeError::Conflict(format!(
                "socket {} is the daemon's own {what}: give the port another path",
                spec.socket().unwrap_or(Path::new("")).display()
            )));
        }
        st.check_new_port(&spec)?;
        if spec.security_groups.is_some() {
            st.check_security_groups(&st.security_groups, Some(&spec))
                .map_err(referenced)?;
        }
        let id = st.free_id();
        let handle = Arc::new(PortHandle::new(id, &spec.name, self.switch.workers.len()));
        forget_learnt_on_link_down(&handle, st.bridge(&spec.bridge)?, id);
        let handed = self.take_handed(&spec.name);
        let carried_on = handed.is_some();
        let port = match handed {
            Some(handed) => self.take_over_port(handle, &spec, handed),
            None => vringswitch_ports::port::start(handle, &spec.kind),
        }
        .map_err(|error| ChangeError::Start {
            port: spec.name.clone(),
            error,
        })?;
        st.take_id(id);
        tracing::info!(port = %spec.name, bridge = %spec.bridge, kind = %spec.port_type(),
            settings = %spec.settings().describe(), carried_on, "port ready");
        if spec.allowed_ips.is_some() {
            // A new member of its groups: rules naming them admit it from now on.
            st.next_filter_epoch();
        }
        // Taking over from the process before, a port's EVPN control starts once the FDB
        // it carried is in (`start_handed`): started now, it would find no local address
        // and take every one it advertised off the mirror, and zebra would withdraw them.
        let taking_over = self
            .taking_over
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some();
        let evpn = if taking_over {
            None
        } else {
            crate::evpn::start(
                &spec,
                id,
                port.handle(),
                st.bridge(&spec.bridge)?.fdb.clone(),
                self.switch.clone(),
                &self.frr,
            )
        };
        self.note_evpn(&spec.name, &spec.bridge, evpn.as_ref());
        st.ports.insert(
            spec.name.clone(),
            PortEntry {
                id,
                police: [
                    policer(spec.police_rx.as_ref()),
                    policer(spec.police_tx.as_ref()),
                ],
                spec,
                port,
                evpn,
            },
        );
        // A frontend that attached before this publication is picked up by the workers now:
        // set_topology gives the port its wakers and wakes every worker.
        self.publish(&st);
        Ok(())
    }

    /// Deletes a port: the workers stop using it, its addresses (learnt and static) are
    /// forgotten, its frontend is disconnected and a server socket is removed.
    pub fn remove_port(&self, name: &str) -> Result<(), ChangeError> {
        let mut st = self.state();
        // A mirror names only ports that exist.
        let mirrors: Vec<String> = st.mirrors_of(name).iter().map(|m| m.name.clone()).collect();
        if let Some(m) = mirrors.first() {
            return Err(ChangeError::Conflict(format!(
                "port {name:?} is in mirror {}: delete the mirror first (vringctl mirror del {m})",
                mirrors.join(", ")
            )));
        }
        let mut entry = st.ports.remove(name).ok_or_else(|| no_port(name))?;
        // Its id may name another port once given back: its link going down from here on
        // must not touch that port's addresses.
        entry.port.handle().no_link_down_hook();
        if let Some(tap) = st.captures.remove(&entry.id) {
            tap.close();
            tracing::info!(port = %name, dropped = tap.dropped(),
                "packet capture ended because its port was removed");
        }
        let generation = self.publish(&st);
        let seen = self.quiesce(generation);
        if let Ok(b) = st.bridge_mut(&entry.spec.bridge) {
            b.fdb.flush_port(entry.id);
            b.statics.retain(|_, port| port != name);
        }
        // Its connections go with it (the next port of its id starts with none), and a
        // member of groups gone changes what rules naming them admit.
        if let Some(t) = st.conntrack.get() {
            let slot = entry.id % conntrack::PORT_SLOTS as u32;
            t.flush(self.switch.now_secs() as u32, |c| c.port == slot);
        }
        if entry.spec.allowed_ips.is_some() {
            st.next_filter_epoch();
            self.publish(&st);
        }
        // Every worker has rebuilt its caches from a topology without the port, and the FDB
        // no longer names it: the id may serve the next port. Unless a worker was late, so
        // that memory follows the live ports, not every port ever made.
        if seen {
            st.give_back_id(entry.id);
        }
        let saved = self.save(&st);
        drop(st);
        // The segment goes from this host: its mirror with it, and zebra withdraws it.
        self.note_evpn(name, "", None);
        if let Some(c) = entry.evpn.as_mut() {
            c.stop(vringswitch_evpn::Ending::Withdraw);
        }
        entry.port.stop();
        tracing::info!(port = %name, "port removed");
        saved
    }

    /// Moves a port to another bridge and/or changes its VLAN setting, while it and every
    /// other port keep forwarding. Its learnt addresses are forgotten; its static entries
    /// follow it, and a change that would leave one outside the port's VLANs is refused.
    pub fn update_port(&self, name: &str, patch: PortPatch) -> Result<PortSpec, ChangeError> {
        let mut st = self.state();
        let Some(PortUpdate {
            id,
            old,
            new,
            statics,
        }) = st.plan_port_update(name, patch)?
        else {
            return st
                .ports
                .get(name)
                .map(|p| p.spec.clone())
                .ok_or_else(|| no_port(name));
        };
        // Settings of its kind that it takes while it runs: the running port first, so
        // that a refusal (no permission to set an MTU) changes nothing.
        if new.kind != old.kind {
            if let Some(e) = st.ports.get_mut(name) {
                e.port
                    .change(&new.kind)
                    .map_err(|error| ChangeError::Start {
                        port: name.to_owned(),
                        error: vringswitch_ports::port::StartError::new(std::io::Error::other(
                            error,
                        )),
                    })?;
            }
        }
        // Only its external IDs or such settings: nothing the data path sees, so nothing
        // to publish or forget.
        let mut same = new.clone();
        same.external_ids = old.external_ids.clone();
        same.kind = old.kind.clone();
        if same == old {
            if let Some(e) = st.ports.get_mut(name) {
                e.spec = new.clone();
            }
            tracing::info!(port = %name, external_ids = new.external_ids.len(),
                settings = %new.settings().describe(), "port changed, forwarding on");
            self.save(&st)?;
            return Ok(new);
        }
        // Validated: apply.
        if new.security_groups != old.security_groups || new.allowed_ips != old.allowed_ips {
            st.next_filter_epoch();
        }
        if let Some(e) = st.ports.get_mut(name) {
            if new.police_rx != old.police_rx {
                e.police[0] = policer(new.police_rx.as_ref());
            }
            if new.police_tx != old.police_tx {
                e.police[1] = policer(new.police_tx.as_ref());
            }
            e.spec = new.clone();
        }
        let generation = self.publish(&st);
        self.quiesce(generation);
        let from = st.bridge_mut(&old.bridge)?;
        if new.bridge == old.bridge {
            from.fdb.flush_port_dynamic(id);
        } else {
            from.fdb.flush_port(id);
            from.statics.retain(|_, p| p != name);
            let to = st.bridge_mut(&new.bridge)?;
            for k in statics {
                to.fdb.add_static(k, id);
                to.statics.insert(k, name.to_string());
            }
            if let (Some(p), Ok(to)) = (st.ports.get(name), st.bridge(&new.bridge)) {
                forget_learnt_on_link_down(p.port.handle(), to, id);
            }
        }
        if new.bridge != old.bridge || new.vlan != old.vlan {
            restart_evpn(&self.switch, &self.frr, &mut st, name);
            let c = st.ports.get(name).and_then(|p| p.evpn.as_ref());
            self.note_evpn(name, &new.bridge, c);
        }
        tracing::info!(
            port = %name,
            bridge = %new.bridge,
            admin = %new.admin,
            vlan = %new.vlan.as_ref().map_or_else(|| "any (untagged in 0)".to_owned(), |v| v.to_string()),
            allowed_macs = %new.allowed_macs.as_ref().map_or_else(|| "any".to_owned(), |m| m.join(",")),
            fdb_max_learned = new.fdb_max_learned(),
            police_rx = %new.police_rx.map_or_else(|| "none".to_owned(), |p| p.to_string()),
            police_tx = %new.police_tx.map_or_else(|| "none".to_owned(), |p| p.to_string()),
            "port changed"
        );
        self.save(&st)?;
        Ok(new)
    }

    /// Every EVPN tunnel port's control: (port, bridge, where it stands). Never waits for
    /// the state's lock.
    pub fn evpn_statuses(&self) -> Vec<(String, String, vringswitch_evpn::Status)> {
        self.evpn_status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(port, (bridge, h))| (port.clone(), bridge.clone(), h.get()))
            .collect()
    }

    /// Keeps the status of `port`'s EVPN control (if it has one) for [`Self::evpn_statuses`].
    fn note_evpn(&self, port: &str, bridge: &str, c: Option<&vringswitch_evpn::Controller>) {
        let mut m = self.evpn_status.lock().unwrap_or_else(|e| e.into_inner());
        match c {
            Some(c) => {
                m.insert(port.to_owned(), (bridge.to_owned(), c.status_handle()));
            }
            None => {
                m.remove(port);
            }
        }
    }

    /// Where an EVPN tunnel port's control stands (none for another port).
    pub fn evpn_status(&self, port: &str) -> Option<vringswitch_evpn::Status> {
        self.state()
            .ports
            .get(port)?
            .evpn
            .as_ref()
            .map(|c| c.status())
    }

    /// The FDB of a bridge, sorted by VLAN then MAC.
    pub fn fdb(&self, bridge: &str) -> Result<Vec<FdbEntryView>, ChangeError> {
        let st = self.state();
        let b = st.bridge(bridge)?;
        let names: HashMap<PortId, &str> = st
            .ports
            .values()
            .map(|p| (p.id, p.spec.name.as_str()))
            .collect();
        let now = self.switch.now_secs();
        let mut entries: Vec<(u64, FdbEntryView)> = b
            .fdb
            .entries()
            .into_iter()
            .map(|(key, e)| {
                let (mac, vlan) = split_key(key);
                let view = FdbEntryView {
                    mac: mac.to_string(),
                    vlan,
                    port: names
                        .get(&e.port)
                        .map_or_else(|| format!("#{}", e.port), |n| n.to_string()),
                    age_s: (!e.is_static).then(|| now.saturating_sub(e.last_seen)),
                    is_static: e.is_static,
                };
                (u64::from(vlan) << 48 | mac.to_u64(), view)
            })
            .collect();
        entries.sort_unstable_by_key(|(k, _)| *k);
        Ok(entries.into_iter().map(|(_, v)| v).collect())
    }

    /// Adds (or replaces) a static FDB entry.
    pub fn add_static_mac(
        &self,
        bridge: &str,
        req: StaticMacRequest,
    ) -> Result<StaticMac, ChangeError> {
        let entry = self.apply_static_mac(bridge, req)?;
        self.save(&self.state())?;
        Ok(entry)
    }

    fn apply_static_mac(
        &self,
        bridge: &str,
        req: StaticMacRequest,
    ) -> Result<StaticMac, ChangeError> {
        let mac = MacAddr(vringswitch_config::parse_mac(&req.mac).map_err(ChangeError::Invalid)?);
        if mac.is_multicast() {
            return Err(ChangeError::Invalid(format!(
                "{mac} is a group address: a static entry needs a unicast MAC"
            )));
        }
        let mut st = self.state();
        st.bridge(bridge)?;
        let port = st
            .ports
            .get(&req.port)
            .ok_or_else(|| referenced(no_port(&req.port)))?;
        if port.spec.bridge != bridge {
            return Err(ChangeError::Invalid(format!(
                "port {:?} is on bridge {:?}, not {bridge:?}",
                req.port, port.spec.bridge
            )));
        }
        if let Some(m) = st.mirrors.iter().find(|m| m.output == req.port) {
            return Err(ChangeError::Conflict(format!(
                "port {:?} is the output of mirror {:?}, which carries nothing else: it is no \
                 destination for a static entry",
                req.port, m.name
            )));
        }
        let vlan = match (req.vlan, &port.spec.vlan) {
            (Some(v), _) => v,
            (None, None) => UNTAGGED_VLAN,
            (None, Some(VlanConfig::Access { tag })) => *tag,
            (None, Some(VlanConfig::Trunk { .. })) => {
                return Err(ChangeError::Invalid(format!(
                    "port {:?} is a trunk: say which VLAN the entry is for (\"vlan\": N)",
                    req.port
                )))
            }
        };
        if !policy(port.spec.vlan.as_ref()).is_member(vlan) {
            return Err(ChangeError::Invalid(format!(
                "port {:?} does not carry VLAN {vlan}",
                req.port
            )));
        }
        let (id, port_name) = (port.id, port.spec.name.clone());
        let key = fdb_key(mac, vlan);
        let b = st.bridge_mut(bridge)?;
        b.fdb.add_static(key, id);
        b.statics.insert(key, port_name.clone());
        tracing::info!(bridge = %bridge, %mac, vlan, port = %port_name, "static FDB entry added");
        Ok(StaticMac {
            bridge: bridge.to_string(),
            mac: mac.to_string(),
            vlan,
            port: port_name,
        })
    }

    /// Flushes a bridge's FDB, static entries included, or only the entries of `port`.
    /// Removes one entry, learnt or static, of `bridge`'s FDB: `mac` on `vlan`, or on the
    /// only VLAN it is known on. Returns the VLAN it was on.
    pub fn remove_fdb_entry(
        &self,
        bridge: &str,
        mac: &str,
        vlan: Option<u16>,
    ) -> Result<u16, ChangeError> {
        let mac = MacAddr(vringswitch_config::parse_mac(mac).map_err(ChangeError::Invalid)?);
        let mut st = self.state();
        let b = st.bridge_mut(bridge)?;
        let vlan = match vlan {
            Some(v) => v,
            None => {
                let mut vlans: Vec<u16> = b
                    .fdb
                    .entries()
                    .into_iter()
                    .map(|(k, _)| split_key(k))
                    .filter(|(m, _)| *m == mac)
                    .map(|(_, v)| v)
                    .collect();
                vlans.sort_unstable();
                match vlans.as_slice() {
                    [] => {
                        return Err(ChangeError::NotFound(format!(
                            "bridge {bridge:?} has no entry for {mac}"
                        )))
                    }
                    [one] => *one,
                    many => {
                        let list: Vec<String> = many.iter().map(u16::to_string).collect();
                        return Err(ChangeError::Invalid(format!(
                            "{mac} is known on VLANs {} of bridge {bridge:?}: say which (vlan)",
                            list.join(", ")
                        )));
                    }
                }
            }
        };
        let key = fdb_key(mac, vlan);
        if !b.fdb.remove(key) {
            return Err(ChangeError::NotFound(format!(
                "bridge {bridge:?} has no entry for {mac} on VLAN {vlan}"
            )));
        }
        let was_static = b.statics.remove(&key).is_some();
        tracing::info!(bridge = %bridge, %mac, vlan, was_static, "FDB entry removed");
        if was_static {
            self.save(&st)?;
        }
        Ok(vlan)
    }

    /// The port mirrors.
    pub fn mirrors(&self) -> Vec<MirrorSpec> {
        self.state().mirrors.clone()
    }

    pub fn mirror(&self, name: &str) -> Result<MirrorSpec, ChangeError> {
        self.state()
            .mirrors
            .iter()
            .find(|m| m.name == name)
            .cloned()
            .ok_or_else(|| ChangeError::NotFound(format!("no mirror named {name:?}")))
    }

    /// Starts copying the frames of a mirror's ports to its output, from their next burst.
    pub fn add_mirror(&self, spec: MirrorSpec) -> Result<MirrorSpec, ChangeError> {
        self.apply_add_mirror(spec.clone())?;
        self.save(&self.state())?;
        Ok(spec)
    }

    fn apply_add_mirror(&self, spec: MirrorSpec) -> Result<(), ChangeError> {
        let mut st = self.state();
        if st.mirrors.iter().any(|m| m.name == spec.name) {
            return Err(ChangeError::Conflict(format!(
                "mirror {:?} already exists",
                spec.name
            )));
        }
        for p in spec.ports.iter().chain([&spec.output]) {
            if !st.ports.contains_key(p) {
                return Err(referenced(no_port(p)));
            }
        }
        let mut all = st.mirrors.clone();
        all.push(spec.clone());
        st.check_mirrors(&all, None)?;
        let out = &spec.output;
        if st
            .bridges
            .iter()
            .any(|b| b.statics.values().any(|p| p == out))
        {
            return Err(ChangeError::Conflict(format!(
                "port {out:?} has static FDB entries: a mirror's output carries nothing else; \
                 delete them first (vringctl fdb del BRIDGE MAC)"
            )));
        }
        let out_id = st.ports.get(out).map(|p| p.id);
        st.mirrors.push(spec.clone());
        let generation = self.publish(&st);
        // Addresses learnt on the output go: it is no destination any more.
        if let (Some(id), Some(b)) = (
            out_id,
            st.ports
                .get(out)
                .and_then(|p| st.bridges.iter().find(|b| b.spec.name == p.spec.bridge)),
        ) {
            self.quiesce(generation);
            b.fdb.flush_port_dynamic(id);
        }
        tracing::info!(mirror = %spec.name, ports = %spec.ports.join(","),
            direction = spec.direction.name(), output = %spec.output, "mirror added");
        Ok(())
    }

    /// Stops a mirror: its output takes part in the bridge again.
    pub fn remove_mirror(&self, name: &str) -> Result<(), ChangeError> {
        let mut st = self.state();
        let i = st
            .mirrors
            .iter()
            .position(|m| m.name == name)
            .ok_or_else(|| ChangeError::NotFound(format!("no mirror named {name:?}")))?;
        st.mirrors.remove(i);
        self.publish(&st);
        tracing::info!(mirror = %name, "mirror removed");
        self.save(&st)
    }

    /// The security groups.
    pub fn security_groups(&self) -> Vec<SecurityGroupSpec> {
        self.state().security_groups.clone()
    }

    pub fn security_group(&self, name: &str) -> Result<SecurityGroupSpec, ChangeError> {
        self.state()
            .security_groups
            .iter()
            .find(|g| g.name == name)
            .cloned()
            .ok_or_else(|| no_group(name))
    }

    /// Creates group `spec`, or (with `replace`) replaces its namesake's rules: from the
    /// next burst, every connection is checked again against the new rules (cut if they
    /// no longer allow it). Returns, whether it was created, once every worker judges by
    /// the new rules.
    pub fn put_security_group(
        &self,
        spec: SecurityGroupSpec,
        replace: bool,
    ) -> Result<bool, ChangeError> {
        let mut st = self.state();
        let mut all = st.security_groups.clone();
        let created = match all.iter_mut().find(|g| g.name == spec.name) {
            Some(_) if !replace => {
                return Err(ChangeError::Conflict(format!(
                    "security group {:?} already exists: PUT /v1/security-groups/{} replaces \
                     its rules",
                    spec.name, spec.name
                )))
            }
            Some(g) => {
                *g = spec.clone();
                false
            }
            None => {
                all.push(spec.clone());
                true
            }
        };
        st.check_security_groups(&all, None)?;
        st.security_groups = all;
        st.next_filter_epoch();
        // Answered once every worker judges by the new rules.
        let generation = self.publish(&st);
        self.quiesce(generation);
        tracing::info!(group = %spec.name, rules = spec.rules.len(), stateful = spec.stateful,
            created, "security group set");
        self.save(&st)?;
        Ok(created)
    }

    /// Deletes a group no port and no other group's rule names.
    pub fn remove_security_group(&self, name: &str) -> Result<(), ChangeError> {
        let mut st = self.state();
        let i = st
            .security_groups
            .iter()
            .position(|g| g.name == name)
            .ok_or_else(|| no_group(name))?;
        let ports: Vec<&str> = st
            .ports
            .values()
            .filter(|p| p.spec.security_groups.iter().flatten().any(|g| g == name))
            .map(|p| p.spec.name.as_str())
            .collect();
        if !ports.is_empty() {
            return Err(ChangeError::Conflict(format!(
                "security group {name:?} is a group of port {}: take it off first \
                 (vringctl port set PORT --security-groups ...)",
                ports.join(", ")
            )));
        }
        if let Some(g) = st.security_groups.iter().find(|g| {
            g.name != name
                && g.rules
                    .iter()
                    .any(|r| r.remote_group.as_deref() == Some(name))
        }) {
            return Err(ChangeError::Conflict(format!(
                "security group {name:?} is the remote_group of a rule of group {:?}: change \
                 that rule first",
                g.name
            )));
        }
        st.security_groups.remove(i);
        st.next_filter_epoch();
        self.publish(&st);
        tracing::info!(group = %name, "security group removed");
        self.save(&st)
    }

    /// Sets every group at once (a state being restored).
    fn apply_security_groups(&self, groups: Vec<SecurityGroupSpec>) -> Result<(), ChangeError> {
        let mut st = self.state();
        st.check_security_groups(&groups, None)?;
        st.security_groups = groups;
        st.next_filter_epoch();
        Ok(())
    }

    /// The connections tracked now that `pick` picks (at most `limit`), and how many
    /// there are in all.
    pub fn connections(
        &self,
        pick: &ConnectionFilter,
        limit: usize,
    ) -> (Vec<ConnectionView>, usize) {
        let st = self.state();
        let Some(table) = st.conntrack.get() else {
            return (Vec::new(), 0);
        };
        let now = self.switch.now_secs() as u32;
        let names = crate::security_groups::names(&st);
        let mut out = Vec::new();
        for c in table.list(now) {
            let view = ConnectionView::of(&c, now, &names);
            if pick.picks(&view) && out.len() < limit {
                out.push(view);
            }
        }
        (out, table.len())
    }

    /// Removes the connections `pick` picks; returns how many. Their next frames must
    /// open them again (a TCP segment that is not a SYN is `ct_invalid`).
    pub fn flush_connections(&self, pick: &ConnectionFilter) -> usize {
        let st = self.state();
        let Some(table) = st.conntrack.get() else {
            return 0;
        };
        let now = self.switch.now_secs() as u32;
        let names = crate::security_groups::names(&st);
        let n = table.flush(now, |c| pick.picks(&ConnectionView::of(c, now, &names)));
        tracing::info!(connections = n, "connections flushed");
        n
    }

    /// What the data path does with the frame `req` describes, computed by its own
    /// decision steps on the topology and FDB in effect; nothing is learnt or sent.
    pub fn trace(
        &self,
        req: &crate::trace::TraceRequest,
    ) -> Result<crate::trace::TraceView, ChangeError> {
        let frame = req.frame().map_err(ChangeError::Invalid)?;
        let id = self
            .state()
            .ports
            .get(&req.port)
            .map(|p| p.id)
            .ok_or_else(|| no_port(&req.port))?;
        let topology = self.switch.topology();
        let now = self.switch.now_secs() as u32;
        let trace = vringswitch_switch::trace::trace(&topology, id, &frame, now)
            .ok_or_else(|| no_port(&req.port))?;
        Ok(crate::trace::view(&req.port, &trace, &topology))
    }

    pub fn flush_fdb(&self, bridge: &str, port: Option<&str>) -> Result<(), ChangeError> {
        let mut st = self.state();
        let id = match port {
            Some(p) => {
                let e = st.ports.get(p).ok_or_else(|| referenced(no_port(p)))?;
                if e.spec.bridge != bridge {
                    return Err(ChangeError::Invalid(format!(
                        "port {p:?} is on bridge {:?}, not {bridge:?}",
                        e.spec.bridge
                    )));
                }
                Some(e.id)
            }
            None => None,
        };
        let b = st.bridge_mut(bridge)?;
        match (id, port) {
            (Some(id), Some(p)) => {
                b.fdb.flush_port(id);
                b.statics.retain(|_, name| name != p);
            }
            _ => {
                b.fdb.flush();
                b.statics.clear();
            }
        }
        tracing::info!(bridge = %bridge, port = %port.unwrap_or("every port"), "FDB flushed");
        self.save(&st)
    }

    /// Waits until no worker works with a topology older than `generation`.
    /// Waits until every worker has picked up topology `generation`; false if one did not
    /// within 2 s.
    fn quiesce(&self, generation: u64) -> bool {
        let seen = self
            .switch
            .wait_until_seen(generation, Duration::from_secs(2));
        if !seen {
            tracing::warn!("a worker did not pick up the new topology within 2 s");
        }
        seen
    }

    /// Installs the topology of `st` in the engine; returns its generation.
    fn publish(&self, st: &State) -> u64 {
        self.switch.set_topology(topology::compile(st))
    }

    /// Stops the workers, then disconnects every port.
    ///
    /// In that order: a worker ends only between bursts, and a burst delivers every frame it
    /// took before giving the chains back. Were the ports disconnected first, a burst could
    /// take frames from a port still attached and find their destination already gone:
    /// frames consumed and lost on a clean shutdown.
    pub fn stop(&self) {
        self.switch.stop();
        let workers = std::mem::take(&mut *self.workers.lock().unwrap_or_else(|e| e.into_inner()));
        for w in workers {
            let _ = w.join();
        }
        let mut st = self.state();
        for (_, tap) in st.captures.drain() {
            tap.close();
        }
        let ports: Vec<PortEntry> = std::mem::take(&mut st.ports).into_values().collect();
        drop(st);
        self.evpn_status
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        for mut p in ports {
            if let Some(c) = p.evpn.as_mut() {
                c.stop(vringswitch_evpn::Ending::Withdraw);
            }
            p.port.stop();
        }
    }
}

/// Starts port `name`'s EVPN control again (if it has one) for the bridge and VLAN it has
/// now; its mirror stays.
fn restart_evpn(
    switch: &Arc<Switch>,
    frr: &vringswitch_evpn::FrrWatch,
    st: &mut State,
    name: &str,
) {
    let Some(fdb) = st
        .ports
        .get(name)
        .and_then(|p| st.bridge(&p.spec.bridge).ok())
        .map(|b| b.fdb.clone())
    else {
        return;
    };
    let Some(p) = st.ports.get_mut(name) else {
        return;
    };
    if let Some(c) = p.evpn.as_mut() {
        c.stop(vringswitch_evpn::Ending::HandOver);
    }
    p.evpn = crate::evpn::start(&p.spec, p.id, p.port.handle(), fdb, switch.clone(), frr);
}

/// Has port `id` forget what `bridge` learnt on it whenever its link goes down (its static
/// entries stay). A worker in the middle of a burst from the port may learn one of its
/// addresses again from a frame it took before; that entry then ages out as any other.
fn forget_learnt_on_link_down(handle: &PortHandle, bridge: &BridgeEntry, id: PortId) {
    let fdb = bridge.fdb.clone();
    handle.on_link_down(move || fdb.flush_port_dynamic(id));
}

/// A capture's direction in the API's words.
pub fn capture_direction(s: CaptureSettings) -> &'static str {
    match (s.from_vm, s.to_vm) {
        (true, true) => "both",
        (true, false) => "rx",
        _ => "tx",
    }
}
