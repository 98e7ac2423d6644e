//! Assembling a running switch from a configuration, changing it at runtime, and taking it
//! down again.
//!
//! [`Daemon`] owns the desired topology (bridges and ports, by name) behind one mutex. Every
//! change is validated whole before anything is touched, then applied: the engine gets a
//! new [`Topology`] (workers pick it up at their next poll; ports not involved keep their
//! ids, caches and frames), and port threads are started or stopped. Port ids are never
//! reused, so a stale id in a worker's cache can never name another port.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use vringswitch_config::{Config, SocketMode};
use vringswitch_ports::vhost_user::connection::SocketMode as PortMode;
use vringswitch_ports::vhost_user::{VhostUserError, VhostUserPort, VhostUserPortConfig};
use vringswitch_ports::{PortHandle, PortId};
use vringswitch_switch::affinity::keep_off_cores;
use vringswitch_switch::fdb::Fdb;
use vringswitch_switch::{BridgeRt, PortRt, Switch, SwitchConfig, SwitchError, Topology};

/// Errors from starting the daemon.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("cannot start the forwarding engine: {0}")]
    Switch(#[from] SwitchError),
    #[error(transparent)]
    Change(#[from] ChangeError),
}

/// Why a topology change was refused. Nothing was changed.
#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    /// The request itself is wrong (a bad name, a value out of range).
    #[error("{0}")]
    Invalid(String),
    /// A bridge or port of that name already exists, or the socket is taken.
    #[error("{0}")]
    Conflict(String),
    /// The named bridge or port does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The port could not be started (e.g. its socket cannot be bound).
    #[error("port {port}: {source}")]
    Port {
        port: String,
        #[source]
        source: VhostUserError,
    },
}

/// A bridge as configured.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BridgeSpec {
    pub name: String,
    #[serde(default = "default_aging")]
    pub fdb_aging_s: u64,
}

fn default_aging() -> u64 {
    vringswitch_config::DEFAULT_FDB_AGING_S
}

/// Kind of port (only vhost-user so far).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PortKind {
    #[serde(rename = "vhost-user")]
    VhostUser,
}

/// A port as configured.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortSpec {
    pub name: String,
    pub bridge: String,
    #[serde(rename = "type")]
    pub kind: PortKind,
    pub socket: PathBuf,
    pub mode: SocketMode,
    #[serde(default = "default_queues")]
    pub queues: u16,
}

fn default_queues() -> u16 {
    vringswitch_config::DEFAULT_QUEUE_PAIRS
}

struct BridgeEntry {
    spec: BridgeSpec,
    fdb: Arc<Fdb>,
}

struct PortEntry {
    id: PortId,
    spec: PortSpec,
    port: VhostUserPort,
}

#[derive(Default)]
struct State {
    bridges: Vec<BridgeEntry>,
    ports: BTreeMap<String, PortEntry>,
    next_id: PortId,
}

impl State {
    /// Names of the ports on `bridge`.
    fn port_names(&self, bridge: &str) -> Vec<String> {
        self.ports
            .values()
            .filter(|p| p.spec.bridge == bridge)
            .map(|p| p.spec.name.clone())
            .collect()
    }
}

/// A running switch: engine, workers and ports.
pub struct Daemon {
    pub switch: Arc<Switch>,
    state: Mutex<State>,
    workers: Mutex<Vec<JoinHandle<()>>>,
}

impl Daemon {
    /// Starts workers and ports as `config` describes.
    pub fn start(config: &Config) -> Result<Daemon, DaemonError> {
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
            Ok(kept) => tracing::debug!(cpus = ?kept, "control threads kept off the worker cores"),
            Err(e) => tracing::warn!(error = %e, "control threads may run on worker cores"),
        }
        let workers = switch.start_workers()?;
        let daemon = Daemon {
            switch,
            state: Mutex::new(State::default()),
            workers: Mutex::new(workers),
        };
        for b in &config.bridges {
            daemon.add_bridge(BridgeSpec {
                name: b.name.get_ref().clone(),
                fdb_aging_s: *b.fdb_aging_s.get_ref(),
            })?;
        }
        for p in &config.ports {
            daemon.add_port(PortSpec {
                name: p.name.get_ref().clone(),
                bridge: p.bridge.get_ref().clone(),
                kind: PortKind::VhostUser,
                socket: p.socket.get_ref().clone(),
                mode: p.mode,
                queues: *p.queues.get_ref(),
            })?;
        }
        Ok(daemon)
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
        let b = st
            .bridges
            .iter()
            .find(|b| b.spec.name == name)
            .ok_or_else(|| no_bridge(name))?;
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

    /// Creates a bridge.
    pub fn add_bridge(&self, spec: BridgeSpec) -> Result<(), ChangeError> {
        vringswitch_config::check_name_str("bridge", &spec.name).map_err(ChangeError::Invalid)?;
        vringswitch_config::check_aging(spec.fdb_aging_s).map_err(ChangeError::Invalid)?;
        let mut st = self.state();
        if st.bridges.iter().any(|b| b.spec.name == spec.name) {
            return Err(ChangeError::Conflict(format!(
                "bridge {:?} already exists",
                spec.name
            )));
        }
        let fdb = Arc::new(Fdb::new(spec.fdb_aging_s));
        tracing::info!(bridge = %spec.name, fdb_aging_s = spec.fdb_aging_s, "bridge added");
        st.bridges.push(BridgeEntry { spec, fdb });
        self.publish(&st);
        Ok(())
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
                "bridge {name:?} still has ports {ports:?}: delete or move them first"
            )));
        }
        st.bridges.remove(i);
        self.publish(&st);
        tracing::info!(bridge = %name, "bridge removed");
        Ok(())
    }

    /// Creates a port and starts serving its socket.
    pub fn add_port(&self, spec: PortSpec) -> Result<(), ChangeError> {
        vringswitch_config::check_name_str("port", &spec.name).map_err(ChangeError::Invalid)?;
        vringswitch_config::check_socket_path(&spec.socket).map_err(ChangeError::Invalid)?;
        vringswitch_config::check_queues(spec.queues).map_err(ChangeError::Invalid)?;
        let mut st = self.state();
        if st.ports.contains_key(&spec.name) {
            return Err(ChangeError::Conflict(format!(
                "port {:?} already exists",
                spec.name
            )));
        }
        if !st.bridges.iter().any(|b| b.spec.name == spec.bridge) {
            return Err(no_bridge(&spec.bridge));
        }
        if let Some(other) = st.ports.values().find(|p| p.spec.socket == spec.socket) {
            return Err(ChangeError::Conflict(format!(
                "socket {} is already used by port {:?}",
                spec.socket.display(),
                other.spec.name
            )));
        }
        let id = st.next_id;
        let handle = Arc::new(PortHandle::new(id, &spec.name, self.switch.workers.len()));
        let port = VhostUserPort::start(
            handle,
            VhostUserPortConfig {
                socket: spec.socket.clone(),
                mode: match spec.mode {
                    SocketMode::Server => PortMode::Server,
                    SocketMode::Client => PortMode::Client,
                },
                queue_pairs: spec.queues,
            },
        )
        .map_err(|source| ChangeError::Port {
            port: spec.name.clone(),
            source,
        })?;
        st.next_id += 1;
        tracing::info!(port = %spec.name, bridge = %spec.bridge, socket = %spec.socket.display(),
            mode = ?spec.mode, "port ready");
        st.ports
            .insert(spec.name.clone(), PortEntry { id, spec, port });
        // A frontend that attached before this publication is picked up by the workers now:
        // set_topology gives the port its wakers and wakes every worker.
        self.publish(&st);
        Ok(())
    }

    /// Deletes a port: the workers stop using it, its learnt addresses are forgotten, its
    /// frontend is disconnected and a server socket is removed.
    pub fn remove_port(&self, name: &str) -> Result<(), ChangeError> {
        let mut st = self.state();
        let mut entry = st.ports.remove(name).ok_or_else(|| no_port(name))?;
        self.publish(&st);
        if let Some(b) = st.bridges.iter().find(|b| b.spec.name == entry.spec.bridge) {
            b.fdb.flush_port(entry.id);
        }
        drop(st);
        entry.port.stop();
        tracing::info!(port = %name, "port removed");
        Ok(())
    }

    /// Installs the topology of `st` in the engine.
    fn publish(&self, st: &State) {
        let mut topology = Topology::default();
        for b in &st.bridges {
            topology.bridges.push(BridgeRt {
                name: b.spec.name.clone(),
                fdb: b.fdb.clone(),
                ports: Vec::new(),
            });
        }
        topology.ports.resize_with(st.next_id as usize, || None);
        for p in st.ports.values() {
            let Some(bridge) = st.bridges.iter().position(|b| b.spec.name == p.spec.bridge) else {
                continue;
            };
            topology.bridges[bridge].ports.push(p.id);
            topology.ports[p.id as usize] = Some(PortRt {
                handle: p.port.handle().clone(),
                bridge,
                queue_pairs: p.spec.queues,
            });
        }
        for b in &mut topology.bridges {
            b.ports.sort_unstable();
        }
        self.switch.set_topology(topology);
    }

    /// Disconnects every port and stops the workers.
    pub fn stop(&self) {
        let ports: Vec<PortEntry> = std::mem::take(&mut self.state().ports)
            .into_values()
            .collect();
        for mut p in ports {
            p.port.stop();
        }
        self.switch.stop();
        let workers = std::mem::take(&mut *self.workers.lock().unwrap_or_else(|e| e.into_inner()));
        for w in workers {
            let _ = w.join();
        }
    }
}

fn no_bridge(name: &str) -> ChangeError {
    ChangeError::NotFound(format!("no bridge named {name:?}"))
}

fn no_port(name: &str) -> ChangeError {
    ChangeError::NotFound(format!("no port named {name:?}"))
}
