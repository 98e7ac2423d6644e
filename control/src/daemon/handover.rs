//! The daemon's side of a hitless upgrade (docs/architecture.md, "Hitless upgrade"). The
//! old process stops its workers and lets go of every port ([`Daemon::hand_over`]), and
//! takes them back if the new one fails ([`Daemon::take_back`]); the new process builds
//! itself from what was handed over ([`Daemon::start_handed`]): the same bridges and ports,
//! each port carried on rather than started, the FDB with its ages and every counter where
//! it was, and only then its workers.

use std::collections::HashMap;
use std::fs::File;
use std::sync::{Arc, MutexGuard};
use std::time::{Duration, Instant};

use vringswitch_config::Config;
use vringswitch_filter::conntrack;
use vringswitch_ports::counters::COUNTED_QUEUE_PAIRS;
use vringswitch_ports::port::{HandedPort, RunningPort};
use vringswitch_ports::{DropReason, OffloadAction, PortHandle};
use vringswitch_switch::affinity::keep_off_cores;
use vringswitch_switch::stats::WorkerStatsSnapshot;
use vringswitch_switch::{Switch, SwitchConfig};

use super::{Daemon, DaemonError, DaemonOptions};
use crate::desired::State;
use crate::handover::{Carried, CarriedBridge, CarriedConnection, CarriedPort, CarriedWorker};
use crate::instance_lock::InstanceLock;
use crate::schema::PortSpec;

/// The old daemon between letting go and exiting (or taking everything back): its state
/// locked (no change is accepted meanwhile), its workers stopped, its ports handed over.
pub struct Frozen<'a> {
    st: MutexGuard<'a, State>,
    /// What moves besides the ports.
    pub carried: Carried,
    /// The ports as handed over, by name: sent to the new process, and kept to take back.
    pub ports: Vec<(String, HandedPort)>,
    /// When the workers stopped.
    pub since: Instant,
}

impl Frozen<'_> {
    /// The connections security groups track, read with the workers stopped, at second
    /// `now` of the switch's clock, as [`Carried`] numbers bridges and ports.
    pub fn connections(&self, now: u32) -> Vec<CarriedConnection> {
        let Some(table) = self.st.conntrack.get() else {
            return Vec::new();
        };
        let slots: HashMap<u32, u32> = self
            .st
            .ports
            .iter()
            .filter_map(|(name, p)| {
                let i = self.carried.ports.iter().position(|c| &c.name == name)?;
                Some((p.id % conntrack::PORT_SLOTS as u32, i as u32))
            })
            .collect();
        table
            .list(now)
            .map(|c| CarriedConnection {
                key: c.key,
                bridge: (c.key.zone >> 12) as u16,
                vlan: (c.key.zone & 0xfff) as u16,
                port: slots.get(&c.port).copied().unwrap_or(u32::MAX),
                // A datagram's fragments keep which sides passed them in their epochs;
                // a connection's epochs are not carried (see `CarriedConnection`).
                state: if c.key.fragments {
                    table.epochs(c.entry)
                } else {
                    c.state
                },
                expires: c.expires,
            })
            .collect()
    }

    /// The old process is about to exit: its state stays locked to the end, so that no
    /// change reaches a daemon that no longer serves anything.
    pub fn keep_until_exit(self) {
        std::mem::forget(self.st);
    }
}

/// What a new daemon starts from: what the old one carried over, its lock files and its
/// ports by name.
pub struct Handed {
    pub carried: Carried,
    pub locks: Vec<File>,
    pub ports: HashMap<String, HandedPort>,
    /// The connections security groups tracked (handover version 2 on).
    pub connections: Vec<CarriedConnection>,
}

/// Ports still to take over while a daemon starts from a handover, and those whose peer's
/// connection could not be carried on.
pub(super) struct TakingOver {
    ports: HashMap<String, HandedPort>,
    not_carried: Vec<(String, String)>,
}

impl Daemon {
    /// Why the daemon cannot be upgraded in place right now, if it cannot: a capture is
    /// running, or a port cannot be handed over (a kind not carried over yet, a VM being
    /// migrated).
    /// Connections security groups track now.
    pub fn tracked_connections(&self) -> usize {
        self.state().conntrack.get().map_or(0, |t| t.len())
    }

    pub fn handover_refusal(&self) -> Option<String> {
        Self::refusal_of(&self.state())
    }

    fn refusal_of(st: &State) -> Option<String> {
        if let Some(id) = st.captures.keys().next() {
            let name = st
                .ports
                .values()
                .find(|p| p.id == *id)
                .map_or("?", |p| p.spec.name.as_str());
            return Some(format!(
                "a packet capture is running on port {name}: stop it first (its stream \
                 would end with the old process)"
            ));
        }
        st.ports.iter().find_map(|(name, p)| {
            p.port
                .handover_refusal()
                .map(|why| format!("port {name} ({}): {why}", p.spec.port_type()))
        })
    }

    /// Stops the workers (every burst ends, delivering what it took) and hands every port
    /// over. If a port declines, those handed over already are taken back and the workers
    /// start again: the daemon serves on, and the error says which port and why.
    pub fn hand_over(&self) -> Result<Frozen<'_>, String> {
        let mut st = self.state();
        // Asked again under the lock: a capture started since the first asking would end
        // with the old process.
        if let Some(why) = Self::refusal_of(&st) {
            return Err(why);
        }
        let since = Instant::now();
        self.stop_workers();
        let mut ports = Vec::new();
        let names: Vec<String> = st.ports.keys().cloned().collect();
        for name in names {
            let Some(entry) = st.ports.get_mut(&name) else {
                continue;
            };
            match entry.port.hand_over() {
                Ok(handed) => {
                    // The next process follows the segment on the same mirror.
                    if let Some(c) = entry.evpn.as_mut() {
                        c.stop(vringswitch_evpn::Ending::HandOver);
                    }
                    ports.push((name, handed))
                }
                Err(why) => {
                    self.give_back(&mut st, ports);
                    return Err(format!("port {name}: {why}"));
                }
            }
        }
        let carried = self.carried(&st);
        Ok(Frozen {
            st,
            carried,
            ports,
            since,
        })
    }

    /// Takes back every port of `frozen` and starts the workers again: the upgrade did
    /// not happen.
    pub fn take_back(&self, frozen: Frozen<'_>) {
        let Frozen { mut st, ports, .. } = frozen;
        self.give_back(&mut st, ports);
    }

    /// The lock files, for the process replacing this one.
    pub fn lock_files(&self) -> Vec<std::os::fd::BorrowedFd<'_>> {
        self.lock.files()
    }

    fn stop_workers(&self) {
        self.switch.stop();
        let workers = std::mem::take(&mut *self.workers.lock().unwrap_or_else(|e| e.into_inner()));
        for w in workers {
            let _ = w.join();
        }
    }

    /// Carries on `ports` here again, then starts the workers.
    fn give_back(&self, st: &mut State, ports: Vec<(String, HandedPort)>) {
        for (name, handed) in ports {
            let Some(entry) = st.ports.get_mut(&name) else {
                continue;
            };
            let mut restart = false;
            let handle = entry.port.handle().clone();
            // The same connections as before: not counted again.
            let counts = (handle.connections(), handle.protocol_errors());
            match vringswitch_ports::port::take_over(handle.clone(), &entry.spec.kind, handed) {
                Ok((port, carried)) => {
                    entry.port = port;
                    restart = true;
                    handle.carry_counts(counts.0, counts.1);
                    if let Err(why) = carried {
                        tracing::warn!(port = %name, error = %why,
                            "the port's peer could not be carried on after the upgrade failed");
                    }
                }
                Err(e) => tracing::error!(port = %name, error = %e,
                    "the port could not be taken back after the upgrade failed; delete and \
                     add it again"),
            }
            if restart {
                super::restart_evpn(&self.switch, &self.frr, st, &name);
                if let Some(p) = st.ports.get(&name) {
                    self.note_evpn(&name, &p.spec.bridge, p.evpn.as_ref());
                }
            }
        }
        self.publish(st);
        self.switch.resume();
        match self.switch.start_workers() {
            Ok(w) => *self.workers.lock().unwrap_or_else(|e| e.into_inner()) = w,
            Err(e) => tracing::error!(error = %e,
                "the workers could not start again after the upgrade failed"),
        }
    }

    /// What moves to the new process besides the ports, read with the workers stopped.
    fn carried(&self, st: &State) -> Carried {
        let names: HashMap<_, _> = st
            .ports
            .iter()
            .map(|(name, p)| (p.id, name.clone()))
            .collect();
        let bridges = st
            .bridges
            .iter()
            .map(|b| {
                let learnt = b
                    .fdb
                    .entries()
                    .into_iter()
                    .filter(|(_, e)| !e.is_static)
                    .filter_map(|(key, e)| Some((key, names.get(&e.port)?.clone(), e.last_seen)))
                    .collect();
                let (learned, moved, aged) = b.fdb.counts();
                let (refused_port, refused_bridge) = b.fdb.refusals();
                CarriedBridge {
                    name: b.spec.name.clone(),
                    learnt,
                    counts: [learned, moved, aged, refused_port, refused_bridge],
                }
            })
            .collect();
        let ports = st
            .ports
            .iter()
            .map(|(name, p)| carried_port(name, p.port.handle()))
            .collect();
        let workers = self
            .switch
            .workers
            .iter()
            .map(|w| {
                let s = w.stats.snapshot();
                CarriedWorker {
                    core: w.core,
                    busy_cycles: s.busy_cycles,
                    idle_cycles: s.idle_cycles,
                    packets: s.packets,
                    wakeups: s.wakeups,
                    bursts: s.bursts.to_vec(),
                }
            })
            .collect();
        Carried {
            pid: std::process::id(),
            saved: st.saved(),
            clock_secs: self.switch.now_secs(),
            bridges,
            ports,
            workers,
            lock_files: self.lock.files().len(),
            api_tcp: false,
            api_unix: None,
        }
    }

    /// Starts a daemon from what the process before it handed over: its bridges and ports
    /// (each port carried on), then its FDB entries and counters, then its workers.
    /// Returns the daemon and the ports whose peer's connection could not be carried on.
    /// On an error nothing is stopped or closed (the old process takes every port back
    /// once this one is gone): the caller must exit.
    pub fn start_handed(
        config: &Config,
        options: DaemonOptions,
        handed: Handed,
    ) -> Result<(Daemon, Vec<(String, String)>), DaemonError> {
        let Handed {
            carried,
            locks,
            ports,
            connections,
        } = handed;
        let lock = InstanceLock::adopt(locks)?;
        let switch = Switch::continuing(
            &SwitchConfig {
                cores: config.dataplane.cores.get_ref().clone(),
                burst: *config.dataplane.burst.get_ref(),
                idle_poll: Duration::from_micros(config.dataplane.idle_poll_us),
            },
            carried.clock_secs,
        )?;
        if let Err(e) = keep_off_cores(config.dataplane.cores.get_ref()) {
            tracing::warn!(error = %e, "control threads may run on worker cores");
        }
        let daemon = Daemon {
            switch,
            state: std::sync::Mutex::new(State::with_conntrack_limits(
                *config.dataplane.conntrack_max.get_ref(),
                *config.dataplane.conntrack_per_port.get_ref(),
            )),
            workers: Default::default(),
            options,
            lock,
            taking_over: std::sync::Mutex::new(Some(TakingOver {
                ports,
                not_carried: Vec::new(),
            })),
            upgrader: Default::default(),
            frr: crate::evpn::frr_watch(&config.evpn),
            evpn_status: Default::default(),
        };
        let restored = daemon.restore(carried.saved.clone());
        let taking = daemon
            .taking_over
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Err(e) = restored {
            // Not stopped: stopping its ports would hang up on the VMs whose connections
            // the old process takes back. The caller exits, closing nothing.
            std::mem::forget(daemon);
            return Err(e.into());
        }
        let TakingOver { ports, not_carried } = taking.unwrap_or(TakingOver {
            ports: HashMap::new(),
            not_carried: Vec::new(),
        });
        for name in ports.keys() {
            tracing::warn!(port = %name,
                "the previous process handed over a port its state does not have: let go");
        }
        daemon.carry_on(&carried);
        daemon.carry_connections(&carried, &connections);
        // The FDB is whole: the EVPN controls start (their mirrors adopted as they are).
        {
            let mut st = daemon.state();
            let names: Vec<String> = st.ports.keys().cloned().collect();
            for name in names {
                super::restart_evpn(&daemon.switch, &daemon.frr, &mut st, &name);
                if let Some(p) = st.ports.get(&name) {
                    daemon.note_evpn(&name, &p.spec.bridge, p.evpn.as_ref());
                }
            }
        }
        match daemon.switch.start_workers() {
            Ok(w) => *daemon.workers.lock().unwrap_or_else(|e| e.into_inner()) = w,
            Err(e) => {
                // As above: the ports are the old process's again.
                std::mem::forget(daemon);
                return Err(e.into());
            }
        }
        Ok((daemon, not_carried))
    }

    /// The connections the previous process tracked, into this one's table, before any
    /// worker runs: each charged to its port here, none refused for a port's limit (a
    /// lowered limit applies to new ones), checked against this process's rules at its
    /// next frame. Those that do not fit (a smaller table) are counted in the log.
    fn carry_connections(&self, carried: &Carried, conns: &[CarriedConnection]) {
        if conns.is_empty() {
            return;
        }
        let st = self.state();
        let Some(table) = crate::security_groups::table(&st) else {
            tracing::warn!(
                connections = conns.len(),
                "connections handed over, but no port has security groups here: not carried"
            );
            return;
        };
        let mut lost = 0usize;
        for c in conns {
            let bridge = carried
                .saved
                .bridges
                .get(usize::from(c.bridge))
                .and_then(|b| st.bridges.iter().position(|x| x.spec.name == b.name));
            let port = carried
                .ports
                .get(c.port as usize)
                .and_then(|p| st.ports.get(&p.name))
                .map_or(conntrack::Charge::NONE.port, |p| p.id);
            let Some(bridge) = bridge else {
                lost += 1;
                continue;
            };
            let key = conntrack::Key {
                zone: conntrack::zone(bridge, c.vlan),
                ..c.key
            };
            let (state, epochs) = if key.fragments {
                (0, c.state)
            } else {
                (c.state, 0)
            };
            let charge = conntrack::Charge {
                port,
                limit: u32::MAX,
            };
            if table
                .insert_checked(&key, c.expires, state, epochs, charge)
                .is_err()
            {
                lost += 1;
            }
        }
        if lost > 0 {
            tracing::warn!(
                carried = conns.len() - lost,
                lost,
                "connections handed over that this process's table could not hold (or whose \
                 bridge is gone): their next frames must open them again"
            );
        } else {
            tracing::info!(
                connections = conns.len(),
                "tracked connections carried over"
            );
        }
    }

    /// The FDB entries and counters of `carried`, before any worker runs.
    fn carry_on(&self, carried: &Carried) {
        let st = self.state();
        for b in &carried.bridges {
            let Some(bridge) = st.bridges.iter().find(|x| x.spec.name == b.name) else {
                continue;
            };
            for (key, port, last_seen) in &b.learnt {
                if let Some(p) = st.ports.get(port).filter(|p| p.spec.bridge == b.name) {
                    bridge.fdb.learn(*key, p.id, *last_seen, usize::MAX);
                }
            }
            bridge.fdb.carry_counts(b.counts);
        }
        for c in &carried.ports {
            if let Some(p) = st.ports.get(&c.name) {
                let handle = p.port.handle();
                handle.stats().carry(&port_counters(c));
                handle.carry_counts(c.connections, c.protocol_errors);
            }
        }
        for w in &carried.workers {
            if let Some(ours) = self.switch.workers.iter().find(|x| x.core == w.core) {
                let mut s = WorkerStatsSnapshot {
                    busy_cycles: w.busy_cycles,
                    idle_cycles: w.idle_cycles,
                    packets: w.packets,
                    wakeups: w.wakeups,
                    ..Default::default()
                };
                for (d, n) in s.bursts.iter_mut().zip(&w.bursts) {
                    *d = *n;
                }
                ours.stats.carry(&s);
            }
        }
    }

    /// The port handed over for `name`, while the daemon starts from a handover.
    pub(super) fn take_handed(&self, name: &str) -> Option<HandedPort> {
        self.taking_over
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_mut()?
            .ports
            .remove(name)
    }

    /// Carries on port `spec` from `handed`, noting a peer that could not be carried on.
    pub(super) fn take_over_port(
        &self,
        handle: Arc<PortHandle>,
        spec: &PortSpec,
        handed: HandedPort,
    ) -> Result<Box<dyn RunningPort>, vringswitch_ports::port::StartError> {
        let (port, carried) = vringswitch_ports::port::take_over(handle, &spec.kind, handed)?;
        if let Err(why) = carried {
            tracing::warn!(port = %spec.name, error = %why,
                "the port's peer could not be carried on: it serves on as after a disconnect");
            if let Some(t) = self
                .taking_over
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .as_mut()
            {
                t.not_carried.push((spec.name.clone(), why));
            }
        }
        Ok(port)
    }
}

/// A port's counters as they travel.
fn carried_port(name: &str, handle: &PortHandle) -> CarriedPort {
    let s = handle.stats().snapshot();
    CarriedPort {
        name: name.to_owned(),
        connections: handle.connections(),
        protocol_errors: handle.protocol_errors(),
        rx_packets: s.rx_packets,
        rx_bytes: s.rx_bytes,
        tx_packets: s.tx_packets,
        tx_bytes: s.tx_bytes,
        drops: DropReason::ALL
            .iter()
            .map(|&r| (r.as_str().to_owned(), s.drops(r)))
            .collect(),
        offloads: OffloadAction::ALL
            .iter()
            .map(|&a| (a.as_str().to_owned(), s.offloads(a)))
            .collect(),
        queue_rx_packets: s.queue_rx_packets.to_vec(),
        queue_tx_packets: s.queue_tx_packets.to_vec(),
        queue_busy_cycles: s.queue_busy_cycles.to_vec(),
    }
}

/// The counters of `c` as this binary counts them (a reason or queue it does not have is
/// left out).
fn port_counters(c: &CarriedPort) -> vringswitch_ports::counters::PortCountersSnapshot {
    let mut s = vringswitch_ports::counters::PortCountersSnapshot {
        rx_packets: c.rx_packets,
        rx_bytes: c.rx_bytes,
        tx_packets: c.tx_packets,
        tx_bytes: c.tx_bytes,
        ..Default::default()
    };
    for (i, r) in DropReason::ALL.iter().enumerate() {
        s.drops[i] = c.drops.get(r.as_str()).copied().unwrap_or(0);
    }
    for (i, a) in OffloadAction::ALL.iter().enumerate() {
        s.offloads[i] = c.offloads.get(a.as_str()).copied().unwrap_or(0);
    }
    let copy = |to: &mut [u64; COUNTED_QUEUE_PAIRS], from: &[u64]| {
        for (d, n) in to.iter_mut().zip(from) {
            *d = *n;
        }
    };
    copy(&mut s.queue_rx_packets, &c.queue_rx_packets);
    copy(&mut s.queue_tx_packets, &c.queue_tx_packets);
    copy(&mut s.queue_busy_cycles, &c.queue_busy_cycles);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_counters_travel_by_name_and_come_back_whole() {
        let handle = PortHandle::new(0, "vm1", 2);
        handle.stats().slot(0).add_rx(0, 3, 300);
        handle.stats().slot(1).add_tx(2, 4, 400);
        handle.stats().slot(1).add_drop(DropReason::NoRxBuffer, 7);
        handle
            .stats()
            .slot(0)
            .add_offload(OffloadAction::Checksummed);
        handle.set_connected(true);
        handle.note_protocol_error();
        let carried = carried_port("vm1", &handle);
        let json = serde_json::to_string(&carried).unwrap();
        let back: CarriedPort = serde_json::from_str(&json).unwrap();
        assert_eq!(port_counters(&back), handle.stats().snapshot());
        assert_eq!((back.connections, back.protocol_errors), (1, 1));
        // A reason this binary does not know is left out; one it has and was not sent is 0.
        let mut other = back.clone();
        other.drops.insert("from_the_future".into(), 9);
        other.drops.remove("no_rx_buffer");
        let s = port_counters(&other);
        assert_eq!(s.drops(DropReason::NoRxBuffer), 0);
        assert_eq!(s.drops.iter().sum::<u64>(), 0);
    }
}
