//! One reading of every counter of the switch, summed over the workers.
//!
//! The same snapshot feeds `/metrics` (Prometheus text) and `/v1/stats` (JSON, read by
//! `vringctl stats`), so the two always agree.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use vringswitch_ports::{DropReason, OffloadAction};
use vringswitch_switch::stats::{cycles_per_second, BURST_BUCKETS};
use vringswitch_switch::topology::Topology;
use vringswitch_switch::Switch;

/// Counters of one forwarding worker.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerSnapshot {
    /// The CPU it is pinned to.
    pub core: usize,
    /// Cycles of TX-queue polls that moved at least one frame.
    pub busy_cycles: u64,
    /// Cycles of polls that moved nothing, sleep included.
    pub idle_cycles: u64,
    /// Chains taken from TX rings (frames, malformed ones included).
    pub packets: u64,
    /// Times it woke from sleep.
    pub wakeups: u64,
    /// Bursts by size, non-cumulative, one count per bound of `burst_bounds`.
    pub bursts: Vec<u64>,
}

impl WorkerSnapshot {
    /// Busy cycles per packet, if any packet was moved.
    pub fn cycles_per_packet(&self) -> Option<f64> {
        (self.packets > 0).then(|| self.busy_cycles as f64 / self.packets as f64)
    }

    /// Fraction of cycles that moved frames, if any cycle was counted.
    pub fn busy_ratio(&self) -> Option<f64> {
        let all = self.busy_cycles + self.idle_cycles;
        (all > 0).then(|| self.busy_cycles as f64 / all as f64)
    }

    /// Average chains per non-empty burst.
    pub fn average_burst(&self) -> Option<f64> {
        let n: u64 = self.bursts.iter().sum();
        (n > 0).then(|| self.packets as f64 / n as f64)
    }

    /// The counters accumulated since `earlier`.
    pub fn since(&self, earlier: &WorkerSnapshot) -> WorkerSnapshot {
        WorkerSnapshot {
            core: self.core,
            busy_cycles: self.busy_cycles.saturating_sub(earlier.busy_cycles),
            idle_cycles: self.idle_cycles.saturating_sub(earlier.idle_cycles),
            packets: self.packets.saturating_sub(earlier.packets),
            wakeups: self.wakeups.saturating_sub(earlier.wakeups),
            bursts: self
                .bursts
                .iter()
                .zip(earlier.bursts.iter().chain(std::iter::repeat(&0)))
                .map(|(a, b)| a.saturating_sub(*b))
                .collect(),
        }
    }
}

/// Counters and state of one port.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortSnapshot {
    pub name: String,
    pub bridge: String,
    pub connected: bool,
    /// The peer's rings are set up (after its first kick): frames can be delivered to it.
    pub ready: bool,
    /// Connections after the first one.
    pub reconnects: u64,
    /// The operator set the port down.
    #[serde(default)]
    pub admin_down: bool,
    /// Connections refused or ended because the frontend broke the vhost-user protocol.
    #[serde(default)]
    pub protocol_errors: u64,
    /// Frames received from the VM.
    pub rx_packets: u64,
    pub rx_bytes: u64,
    /// Frames delivered to the VM.
    pub tx_packets: u64,
    pub tx_bytes: u64,
    /// Drops by reason label; every reason is present.
    pub drops: BTreeMap<String, u64>,
    /// Frames by queue pair: every queue pair the frontend has rings for, and any that
    /// counted frames before.
    #[serde(default)]
    pub queues: Vec<QueueSnapshot>,
    /// Frames delivered to the port whose source asked for offloads, by what the switch
    /// did with them (`passed`, `checksummed`, `segmented`); every action is present.
    #[serde(default)]
    pub offloads: BTreeMap<String, u64>,
    /// Addresses the bridge learnt on the port and still has.
    #[serde(default)]
    pub fdb_learned: u64,
    /// Most addresses the bridge learns on the port.
    #[serde(default)]
    pub fdb_max_learned: u64,
    /// A tunnel port's remote ends.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remotes: Vec<RemoteSnapshot>,
}

/// A tunnel's remote end (VTEP) and what crossed to and from it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteSnapshot {
    pub address: String,
    /// MAC addresses behind it.
    pub macs: u64,
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
}

/// Frames of one queue pair of a port.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueSnapshot {
    /// Frames received from the VM on this queue pair's TX ring.
    pub rx_packets: u64,
    /// Frames delivered to the VM into this queue pair's RX ring.
    pub tx_packets: u64,
    /// Cycles of the worker's polls of this queue pair's ingress that moved frames: its
    /// share of its core (`vringctl cores`).
    #[serde(default)]
    pub busy_cycles: u64,
    /// The core whose worker polls this queue pair's ingress (none while the port is set
    /// down).
    #[serde(default)]
    pub core: Option<usize>,
}

impl PortSnapshot {
    /// All drops, whatever the reason.
    pub fn total_drops(&self) -> u64 {
        self.drops.values().sum()
    }

    /// The counters accumulated since `earlier` (state fields are this snapshot's).
    pub fn since(&self, earlier: &PortSnapshot) -> PortSnapshot {
        PortSnapshot {
            rx_packets: self.rx_packets.saturating_sub(earlier.rx_packets),
            rx_bytes: self.rx_bytes.saturating_sub(earlier.rx_bytes),
            tx_packets: self.tx_packets.saturating_sub(earlier.tx_packets),
            tx_bytes: self.tx_bytes.saturating_sub(earlier.tx_bytes),
            drops: self
                .drops
                .iter()
                .map(|(k, v)| {
                    let before = earlier.drops.get(k).copied().unwrap_or(0);
                    (k.clone(), v.saturating_sub(before))
                })
                .collect(),
            offloads: self
                .offloads
                .iter()
                .map(|(k, v)| {
                    let before = earlier.offloads.get(k).copied().unwrap_or(0);
                    (k.clone(), v.saturating_sub(before))
                })
                .collect(),
            queues: self
                .queues
                .iter()
                .zip(
                    earlier
                        .queues
                        .iter()
                        .chain(std::iter::repeat(&QueueSnapshot::default())),
                )
                .map(|(q, e)| QueueSnapshot {
                    rx_packets: q.rx_packets.saturating_sub(e.rx_packets),
                    tx_packets: q.tx_packets.saturating_sub(e.tx_packets),
                    busy_cycles: q.busy_cycles.saturating_sub(e.busy_cycles),
                    core: q.core,
                })
                .collect(),
            ..self.clone()
        }
    }
}

/// Size and activity of one bridge's forwarding database.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BridgeSnapshot {
    pub name: String,
    pub fdb_entries: u64,
    pub fdb_learned: u64,
    pub fdb_moved: u64,
    pub fdb_aged: u64,
    /// Most addresses the bridge learns.
    #[serde(default)]
    pub fdb_max_learned: u64,
    /// Addresses not learnt because their port had learnt its most.
    #[serde(default)]
    pub fdb_refused_port_limit: u64,
    /// Addresses not learnt because the bridge had learnt its most.
    #[serde(default)]
    pub fdb_refused_bridge_limit: u64,
    /// Connections its security groups track.
    #[serde(default)]
    pub connections: u64,
}

/// Every counter of the switch at one instant.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Rate of the cycle counter (the TSC on x86_64).
    pub cycles_per_second: u64,
    /// Upper bounds of the burst-size histogram buckets.
    pub burst_bounds: Vec<u32>,
    pub workers: Vec<WorkerSnapshot>,
    pub ports: Vec<PortSnapshot>,
    pub bridges: Vec<BridgeSnapshot>,
}

impl Snapshot {
    /// Reads every counter of `switch`.
    pub fn take(switch: &Switch) -> Snapshot {
        let topology = switch.topology();
        let workers = switch
            .workers
            .iter()
            .map(|w| {
                let s = w.stats.snapshot();
                WorkerSnapshot {
                    core: w.core,
                    busy_cycles: s.busy_cycles,
                    idle_cycles: s.idle_cycles,
                    packets: s.packets,
                    wakeups: s.wakeups,
                    bursts: s.bursts.to_vec(),
                }
            })
            .collect();
        let ports = topology
            .ports
            .iter()
            .flatten()
            .map(|p| {
                let s = p.handle.stats().snapshot();
                let rings = p.handle.attachment().map_or(1, |a| a.queue_pairs());
                let counted = (0..s.queue_rx_packets.len())
                    .rev()
                    .find(|&q| s.queue_rx_packets[q] | s.queue_tx_packets[q] != 0)
                    .map_or(0, |q| q + 1);
                let queues = (0..rings.max(counted).min(s.queue_rx_packets.len()))
                    .map(|q| QueueSnapshot {
                        rx_packets: s.queue_rx_packets[q],
                        tx_packets: s.queue_tx_packets[q],
                        busy_cycles: s.queue_busy_cycles[q],
                        core: (p.admin_up && q < usize::from(p.queue_pairs)).then(|| {
                            let w = Topology::owner(p.handle.id(), q as u16, switch.workers.len());
                            switch.workers[w].core
                        }),
                    })
                    .collect();
                PortSnapshot {
                    name: p.handle.name().to_owned(),
                    bridge: topology.bridges[p.bridge].name.clone(),
                    connected: p.handle.is_connected(),
                    admin_down: !p.admin_up,
                    ready: p.handle.is_ready(),
                    reconnects: p.handle.connections().saturating_sub(1),
                    protocol_errors: p.handle.protocol_errors(),
                    rx_packets: s.rx_packets,
                    rx_bytes: s.rx_bytes,
                    tx_packets: s.tx_packets,
                    tx_bytes: s.tx_bytes,
                    drops: DropReason::ALL
                        .iter()
                        .map(|&r| (r.as_str().to_owned(), s.drops(r)))
                        .collect(),
                    queues,
                    offloads: OffloadAction::ALL
                        .iter()
                        .map(|&a| (a.as_str().to_owned(), s.offloads(a)))
                        .collect(),
                    fdb_learned: topology.bridges[p.bridge].fdb.learned_on(p.handle.id()) as u64,
                    fdb_max_learned: p.fdb_max_learned as u64,
                    remotes: p
                        .handle
                        .attachment()
                        .and_then(|a| a.status().remote_ends())
                        .unwrap_or_default()
                        .into_iter()
                        .map(|r| RemoteSnapshot {
                            address: r.address.to_string(),
                            macs: r.macs.len() as u64,
                            rx_packets: r.rx_packets,
                            rx_bytes: r.rx_bytes,
                            tx_packets: r.tx_packets,
                            tx_bytes: r.tx_bytes,
                        })
                        .collect(),
                }
            })
            .collect();
        let bridges = topology
            .bridges
            .iter()
            .enumerate()
            .map(|(i, b)| {
                let (learned, moved, aged) = b.fdb.counts();
                let (refused_port, refused_bridge) = b.fdb.refusals();
                BridgeSnapshot {
                    name: b.name.clone(),
                    fdb_entries: b.fdb.len() as u64,
                    fdb_learned: learned,
                    fdb_moved: moved,
                    fdb_aged: aged,
                    fdb_max_learned: b.fdb.max_learned() as u64,
                    fdb_refused_port_limit: refused_port,
                    fdb_refused_bridge_limit: refused_bridge,
                    connections: topology
                        .conntrack
                        .as_deref()
                        .map_or(0, |t| u64::from(t.bridge_connections(i))),
                }
            })
            .collect();
        Snapshot {
            cycles_per_second: cycles_per_second(),
            burst_bounds: BURST_BUCKETS.to_vec(),
            workers,
            ports,
            bridges,
        }
    }

    /// A port by name.
    pub fn port(&self, name: &str) -> Option<&PortSnapshot> {
        self.ports.iter().find(|p| p.name == name)
    }
}
