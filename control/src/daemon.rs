//! Assembling a running switch from a configuration, and taking it down again.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use vringswitch_config::{Config, SocketMode};
use vringswitch_ports::vhost_user::connection::SocketMode as PortMode;
use vringswitch_ports::vhost_user::{VhostUserError, VhostUserPort, VhostUserPortConfig};
use vringswitch_ports::PortHandle;
use vringswitch_switch::affinity::keep_off_cores;
use vringswitch_switch::fdb::Fdb;
use vringswitch_switch::{BridgeRt, PortRt, Switch, SwitchConfig, SwitchError, Topology};

/// Errors from starting the daemon.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("cannot start the forwarding engine: {0}")]
    Switch(#[from] SwitchError),
    #[error("port {port}: {source}")]
    Port {
        port: String,
        #[source]
        source: VhostUserError,
    },
}

/// A running switch: engine, workers and ports.
pub struct Daemon {
    pub switch: Arc<Switch>,
    ports: Vec<VhostUserPort>,
    workers: Vec<JoinHandle<()>>,
}

impl Daemon {
    /// Starts workers and ports as `config` describes.
    pub fn start(config: &Config) -> Result<Daemon, DaemonError> {
        let switch = Switch::new(&SwitchConfig {
            cores: config.dataplane.cores.get_ref().clone(),
            burst: *config.dataplane.burst.get_ref(),
            idle_poll: Duration::from_micros(config.dataplane.idle_poll_us),
        })?;
        let writers = switch.workers.len();
        // Every thread started from here on (vhost-user event threads, connections, the
        // API runtime) stays off the worker cores, as OVS keeps its handlers off PMD cores.
        match keep_off_cores(config.dataplane.cores.get_ref()) {
            Ok(kept) if kept.is_empty() => tracing::warn!(
                "every CPU is a worker core: control threads will preempt the workers"
            ),
            Ok(kept) => tracing::debug!(cpus = ?kept, "control threads kept off the worker cores"),
            Err(e) => tracing::warn!(error = %e, "control threads may run on worker cores"),
        }

        let mut bridge_index = HashMap::new();
        let mut topology = Topology::default();
        for b in &config.bridges {
            bridge_index.insert(b.name.get_ref().clone(), topology.bridges.len());
            topology.bridges.push(BridgeRt {
                name: b.name.get_ref().clone(),
                fdb: Arc::new(Fdb::new(*b.fdb_aging_s.get_ref())),
                ports: Vec::new(),
            });
        }
        let mut handles = Vec::new();
        for (id, p) in config.ports.iter().enumerate() {
            let handle = Arc::new(PortHandle::new(id as u32, p.name.get_ref(), writers));
            let bridge = bridge_index[p.bridge.get_ref()];
            topology.bridges[bridge].ports.push(id as u32);
            topology.ports.push(Some(PortRt {
                handle: handle.clone(),
                bridge,
                queue_pairs: *p.queues.get_ref(),
            }));
            handles.push(handle);
        }
        switch.set_topology(topology);
        let workers = switch.start_workers()?;

        let mut daemon = Daemon {
            switch,
            ports: Vec::new(),
            workers,
        };
        for (p, handle) in config.ports.iter().zip(handles) {
            let port = VhostUserPort::start(
                handle,
                VhostUserPortConfig {
                    socket: p.socket.get_ref().clone(),
                    mode: match p.mode {
                        SocketMode::Server => PortMode::Server,
                        SocketMode::Client => PortMode::Client,
                    },
                    queue_pairs: *p.queues.get_ref(),
                },
            )
            .map_err(|source| DaemonError::Port {
                port: p.name.get_ref().clone(),
                source,
            })?;
            tracing::info!(port = p.name.get_ref(), bridge = p.bridge.get_ref(),
                socket = %p.socket.get_ref().display(), mode = ?p.mode, "port ready");
            daemon.ports.push(port);
        }
        Ok(daemon)
    }

    /// Socket paths of the ports, for messages.
    pub fn sockets(&self) -> Vec<PathBuf> {
        self.ports
            .iter()
            .map(|p| p.config().socket.clone())
            .collect()
    }

    /// Disconnects every port and stops the workers.
    pub fn stop(mut self) {
        for p in &mut self.ports {
            p.stop();
        }
        self.switch.stop();
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}
