//! The forwarding engine: L2 learning bridges over ports, run by pinned workers.
//!
//! [`Switch`] is the part shared between the control side and the workers: the current
//! [`Topology`] (swapped whole on change), the workers' wake-up eventfds, the clock and the
//! stop flag. The control side builds topologies and calls [`Switch::set_topology`]; the
//! workers ([`worker`]) pick the new one up at their next poll.

pub mod affinity;
pub mod capture;
pub mod fdb;
pub mod police;
pub mod port_security;
pub mod security_groups;
pub mod stats;
pub mod topology;
pub mod trace;
pub mod vlan;
pub mod worker;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use crossbeam_utils::CachePadded;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

pub use stats::WorkerStats;
pub use topology::{BridgeRt, PortMirrors, PortRt, Topology};

/// Errors of the forwarding engine.
#[derive(Debug, thiserror::Error)]
pub enum SwitchError {
    #[error("cannot create a worker eventfd: {0}")]
    EventFd(std::io::Error),
    #[error("cannot start worker {index}: {error}")]
    Spawn { index: usize, error: std::io::Error },
    #[error(transparent)]
    Affinity(#[from] affinity::AffinityError),
}

/// What the control side shares with one worker.
pub struct WorkerShared {
    /// The CPU the worker is pinned to.
    pub core: usize,
    /// Written to wake the worker from sleep.
    pub wake: Arc<EventFd>,
    /// Written by the worker only, on a cache line of its own.
    pub stats: CachePadded<WorkerStats>,
    /// The topology generation the worker last picked up (written on changes only).
    seen_generation: AtomicU64,
}

/// Engine settings.
#[derive(Debug, Clone)]
pub struct SwitchConfig {
    pub cores: Vec<usize>,
    pub burst: usize,
    pub idle_poll: Duration,
}

/// The forwarding engine.
pub struct Switch {
    topology: ArcSwap<Topology>,
    topology_gen: AtomicU64,
    pub workers: Vec<WorkerShared>,
    burst: usize,
    idle_poll: Duration,
    stop: AtomicBool,
    epoch: Instant,
}

impl Switch {
    pub fn new(config: &SwitchConfig) -> Result<Arc<Switch>, SwitchError> {
        Self::continuing(config, 0)
    }

    /// A switch whose clock ([`Self::now_secs`]) starts at `clock_secs`: the clock of the
    /// process this one replaces, so that the FDB entries it hands over keep their ages.
    pub fn continuing(config: &SwitchConfig, clock_secs: u64) -> Result<Arc<Switch>, SwitchError> {
        for &core in &config.cores {
            affinity::check_core(core)?;
        }
        // Calibrated once here, so that no scrape waits for it.
        stats::cycles_per_second();
        let workers = config
            .cores
            .iter()
            .map(|&core| {
                Ok(WorkerShared {
                    core,
                    wake: Arc::new(EventFd::new(EFD_NONBLOCK).map_err(SwitchError::EventFd)?),
                    stats: CachePadded::new(WorkerStats::default()),
                    seen_generation: AtomicU64::new(0),
                })
            })
            .collect::<Result<Vec<_>, SwitchError>>()?;
        Ok(Arc::new(Switch {
            topology: ArcSwap::from_pointee(Topology::default()),
            topology_gen: AtomicU64::new(0),
            workers,
            burst: config.burst.clamp(1, 64),
            idle_poll: config.idle_poll,
            stop: AtomicBool::new(false),
            // The monotonic clock counts from boot, and no process has run longer.
            epoch: Instant::now()
                .checked_sub(Duration::from_secs(clock_secs))
                .unwrap_or_else(Instant::now),
        }))
    }

    /// Seconds since the switch started: the clock of FDB ageing.
    #[inline]
    pub fn now_secs(&self) -> u64 {
        self.secs_at(Instant::now())
    }

    /// The FDB clock at instant `now`.
    #[inline]
    pub fn secs_at(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.epoch).as_secs()
    }

    #[inline]
    fn topology_generation(&self) -> u64 {
        // Acquire pairs with the Release in set_topology: the new topology is visible.
        self.topology_gen.load(Ordering::Acquire)
    }

    /// Whether the workers were asked to stop (a shutdown, or an upgrade handing over).
    #[inline]
    pub fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// The current topology.
    pub fn topology(&self) -> Arc<Topology> {
        self.topology.load_full()
    }

    /// Installs a new topology, tells each port which workers to wake, and wakes them all.
    /// Returns its generation (see [`Switch::wait_until_seen`]).
    pub fn set_topology(&self, topology: Topology) -> u64 {
        let n = self.workers.len();
        for (id, p) in topology.ports.iter().enumerate() {
            if let Some(p) = p {
                let wakers = topology
                    .workers_of(id as u32, n)
                    .into_iter()
                    .map(|w| self.workers[w].wake.clone())
                    .collect();
                p.handle.set_wakers(wakers);
            }
        }
        self.topology.store(Arc::new(topology));
        let generation = self.topology_gen.fetch_add(1, Ordering::Release) + 1;
        self.wake_all();
        generation
    }

    /// Waits until every worker has finished the bursts it started under topologies older
    /// than `generation`, or `timeout` passed (returns false then). After it, no worker
    /// touches a port or learns an address through an older topology: e.g. a removed
    /// port's addresses, flushed after this, cannot be learnt again.
    pub fn wait_until_seen(&self, generation: u64, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let behind = self
                .workers
                .iter()
                .any(|w| w.seen_generation.load(Ordering::Acquire) < generation);
            if !behind || self.stopping() {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_micros(50));
        }
    }

    /// Called by worker `index` once it works with topology `generation`.
    #[inline]
    fn mark_seen(&self, index: usize, generation: u64) {
        self.workers[index]
            .seen_generation
            .store(generation, Ordering::Release);
    }

    fn wake_all(&self) {
        for w in &self.workers {
            let _ = w.wake.write(1);
        }
    }

    /// Starts one pinned worker per configured core.
    pub fn start_workers(self: &Arc<Switch>) -> Result<Vec<JoinHandle<()>>, SwitchError> {
        let mut handles = Vec::new();
        for index in 0..self.workers.len() {
            let worker = worker::Worker::new(index, self.clone())
                .map_err(|error| SwitchError::Spawn { index, error })?;
            let core = self.workers[index].core;
            let h = std::thread::Builder::new()
                .name(format!("worker-{core}"))
                .spawn(move || {
                    if let Err(e) = affinity::pin_current_thread(core) {
                        tracing::error!(error = %e, "worker runs unpinned");
                    }
                    worker.run();
                })
                .map_err(|error| SwitchError::Spawn { index, error })?;
            handles.push(h);
        }
        Ok(handles)
    }

    /// Asks the workers to stop and wakes them.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
        self.wake_all();
    }

    /// Undoes [`Self::stop`] once its workers have ended, so that
    /// [`Self::start_workers`] may start them again (an upgrade that did not happen).
    pub fn resume(&self) {
        self.stop.store(false, Ordering::Relaxed);
    }

    /// Runs FDB ageing on every bridge; call about once a second.
    pub fn age_fdbs(&self) -> usize {
        let now = self.now_secs();
        self.topology().bridges.iter().map(|b| b.fdb.age(now)).sum()
    }

    /// Removes connections of security groups that expired, a slice of the table at a time
    /// (see `Table::expire_slice`); call about once a second.
    pub fn expire_connections(&self) -> usize {
        let now = self.now_secs() as u32;
        self.topology()
            .conntrack
            .as_deref()
            .map_or(0, |t| t.expire_slice(now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_continuing_clock_starts_where_the_old_one_was() {
        let config = SwitchConfig {
            cores: vec![],
            burst: 32,
            idle_poll: Duration::from_micros(100),
        };
        assert!(Switch::new(&config).unwrap().now_secs() < 2);
        let t = Switch::continuing(&config, 1234).unwrap().now_secs();
        assert!((1234..1236).contains(&t), "{t}");
    }
}
