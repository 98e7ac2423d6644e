//! Prometheus metrics of the switch.
//!
//! The data path only writes per-worker counters; a scrape takes one [`Snapshot`] (summing
//! the workers' slots) and renders it in the Prometheus text format. Series are built fresh
//! at every scrape from the current topology, so a deleted port's series disappear with it.
//! Direction is the switch's view: rx = received from the VM, tx = delivered to the VM.
#![deny(unsafe_code)]

pub mod snapshot;

pub use snapshot::{BridgeSnapshot, PortSnapshot, QueueSnapshot, Snapshot, WorkerSnapshot};

use prometheus::core::Collector;
use prometheus::proto::{self, MetricFamily, MetricType};
use prometheus::{Encoder, TextEncoder};
use vringswitch_switch::Switch;

/// Version of this build, for `vringswitch_build_info`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Builds one metric family at a time.
struct Family {
    mf: MetricFamily,
}

/// Label pairs sorted by name, as Prometheus' own clients render them.
fn labels(pairs: &[(&str, &str)]) -> Vec<proto::LabelPair> {
    let mut pairs = pairs.to_vec();
    pairs.sort_unstable_by_key(|(k, _)| *k);
    pairs
        .iter()
        .map(|(k, v)| {
            let mut l = proto::LabelPair::default();
            l.set_name((*k).to_owned());
            l.set_value((*v).to_owned());
            l
        })
        .collect()
}

impl Family {
    fn new(name: &str, help: &str, kind: MetricType) -> Family {
        let mut mf = MetricFamily::default();
        mf.set_name(name.to_owned());
        mf.set_help(help.to_owned());
        mf.set_field_type(kind);
        Family { mf }
    }

    fn counter(name: &str, help: &str) -> Family {
        Family::new(name, help, MetricType::COUNTER)
    }

    fn gauge(name: &str, help: &str) -> Family {
        Family::new(name, help, MetricType::GAUGE)
    }

    fn add(&mut self, pairs: &[(&str, &str)], value: u64) -> &mut Family {
        let mut m = proto::Metric::from_label(labels(pairs));
        match self.mf.get_field_type() {
            MetricType::COUNTER => {
                let mut c = proto::Counter::default();
                c.set_value(value as f64);
                m.set_counter(c);
            }
            _ => {
                let mut g = proto::Gauge::default();
                g.set_value(value as f64);
                m.set_gauge(g);
            }
        }
        self.mf.mut_metric().push(m);
        self
    }

    /// A histogram from non-cumulative bucket counts and the sum of observations.
    fn add_histogram(&mut self, pairs: &[(&str, &str)], bounds: &[u32], counts: &[u64], sum: u64) {
        let mut h = proto::Histogram::default();
        let mut cumulative = 0;
        let buckets = bounds
            .iter()
            .zip(counts)
            .map(|(&bound, &n)| {
                cumulative += n;
                let mut b = proto::Bucket::default();
                b.set_upper_bound(f64::from(bound));
                b.set_cumulative_count(cumulative);
                b
            })
            .collect();
        h.set_bucket(buckets);
        h.set_sample_count(cumulative);
        h.set_sample_sum(sum as f64);
        let mut m = proto::Metric::from_label(labels(pairs));
        m.set_histogram(h);
        self.mf.mut_metric().push(m);
    }
}

/// Renders the switch's metrics for Prometheus.
pub struct Metrics {
    process: Option<prometheus::process_collector::ProcessCollector>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        Metrics {
            process: Some(prometheus::process_collector::ProcessCollector::for_self()),
        }
    }

    /// Takes a snapshot of `switch` and renders it.
    pub fn render(&self, switch: &Switch) -> String {
        self.render_snapshot(&Snapshot::take(switch))
    }

    /// Renders `s` in the Prometheus text format.
    pub fn render_snapshot(&self, s: &Snapshot) -> String {
        self.render_with(s, &[])
    }

    /// Takes a snapshot of `switch` and renders it with the EVPN tunnel ports' `evpn`.
    pub fn render_with_evpn(&self, switch: &Switch, evpn: &[EvpnGauges]) -> String {
        self.render_with(&Snapshot::take(switch), evpn)
    }

    fn render_with(&self, s: &Snapshot, evpn: &[EvpnGauges]) -> String {
        let mut families = families(s);
        families.extend(evpn_families(evpn));
        if let Some(p) = &self.process {
            families.extend(p.collect());
        }
        let mut out = Vec::new();
        // Only empty families fail to encode, and none is ever built empty.
        let _ = TextEncoder::new().encode(&families, &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

/// Where an EVPN tunnel port's control stands, for /metrics.
#[derive(Debug, Clone)]
pub struct EvpnGauges {
    pub port: String,
    pub bridge: String,
    /// `following`, `stale`, `starting` or `failed`.
    pub state: &'static str,
    pub frr_running: bool,
    pub advertised: u64,
    pub remote_macs: u64,
    pub flood: u64,
}

/// The states an EVPN control can be in: each has its series, 1 for the one it is in.
pub const EVPN_STATES: [&str; 4] = ["following", "stale", "starting", "failed"];

/// The EVPN families of `ports` (none when there is no EVPN port).
fn evpn_families(ports: &[EvpnGauges]) -> Vec<MetricFamily> {
    let mut state = Family::gauge(
        "vringswitch_evpn_state",
        "1 for the state an EVPN tunnel port's control is in (following: zebra's routes; \
         stale: FRR not running or back less than the hold time, forwarding on the routes \
         kept; starting; failed), 0 for the others.",
    );
    let mut frr = Family::gauge(
        "vringswitch_evpn_frr_running",
        "1 while FRR's zebra and bgpd run (as their pid files say).",
    );
    let mut advertised = Family::gauge(
        "vringswitch_evpn_advertised_macs",
        "This host's MAC addresses written on the segment's kernel mirror for zebra.",
    );
    let mut macs = Family::gauge(
        "vringswitch_evpn_route_macs",
        "Remote MAC addresses the routes followed name (type 2).",
    );
    let mut flood = Family::gauge(
        "vringswitch_evpn_flood_ends",
        "Remote ends of the flood list the routes followed name (type 3).",
    );
    for p in ports {
        let l = [("port", p.port.as_str()), ("bridge", p.bridge.as_str())];
        for st in EVPN_STATES {
            state.add(&[l[0], l[1], ("state", st)], u64::from(p.state == st));
        }
        frr.add(&l, u64::from(p.frr_running));
        advertised.add(&l, p.advertised);
        macs.add(&l, p.remote_macs);
        flood.add(&l, p.flood);
    }
    [state, frr, advertised, macs, flood]
        .into_iter()
        .filter(|f| !f.mf.get_metric().is_empty())
        .map(|f| f.mf)
        .collect()
}

/// Every family of the switch's own metrics, none empty.
fn families(s: &Snapshot) -> Vec<MetricFamily> {
    let mut out = Vec::new();
    let mut push = |f: &mut Family| {
        if !f.mf.get_metric().is_empty() {
            out.push(std::mem::take(&mut f.mf));
        }
    };

    push(
        Family::gauge(
            "vringswitch_build_info",
            "Always 1; the labels say which build is running.",
        )
        .add(&[("version", VERSION)], 1),
    );
    push(
        Family::gauge(
            "vringswitch_cycles_per_second",
            "Rate of the cycle counter behind the worker cycle metrics (TSC on x86_64).",
        )
        .add(&[], s.cycles_per_second),
    );
    let connected = s.ports.iter().filter(|p| p.connected).count() as u64;
    push(
        Family::gauge(
            "vringswitch_ports_configured",
            "Ports in the configuration.",
        )
        .add(&[], s.ports.len() as u64),
    );
    push(
        Family::gauge(
            "vringswitch_ports_connected",
            "Ports with a vhost-user frontend connected.",
        )
        .add(&[], connected),
    );

    // Ports.
    let mut rx_packets = Family::counter(
        "vringswitch_port_rx_packets_total",
        "Frames received from the VM on this port.",
    );
    let mut rx_bytes = Family::counter(
        "vringswitch_port_rx_bytes_total",
        "Bytes of frames received from the VM (Ethernet frame, no virtio-net header).",
    );
    let mut tx_packets = Family::counter(
        "vringswitch_port_tx_packets_total",
        "Frames delivered to the VM on this port.",
    );
    let mut tx_bytes = Family::counter(
        "vringswitch_port_tx_bytes_total",
        "Bytes of frames delivered to the VM (Ethernet frame, no virtio-net header).",
    );
    let mut drops = Family::counter(
        "vringswitch_port_drops_total",
        "Frames dropped, by the port they were received on or meant for, and why.",
    );
    let mut offloads = Family::counter(
        "vringswitch_port_offloads_total",
        "Frames delivered to the port whose source left a checksum or segmentation to the \
         receiver, by what the switch did: passed (with their virtio-net header, the receiver \
         takes it), checksummed or segmented (done by the switch for a receiver that does not).",
    );
    let mut port_connected = Family::gauge(
        "vringswitch_port_connected",
        "1 while a vhost-user frontend is connected to the port.",
    );
    let mut port_admin_up = Family::gauge(
        "vringswitch_port_admin_up",
        "1 unless the operator set the port down (it then carries no traffic, and is expected \
         to have no VM).",
    );
    let mut port_ready = Family::gauge(
        "vringswitch_port_ready",
        "1 while the frontend's rings are set up and the switch can deliver to the port.",
    );
    let mut reconnects = Family::counter(
        "vringswitch_port_reconnects_total",
        "Connections of a vhost-user frontend to the port after the first one.",
    );
    let mut protocol_errors = Family::counter(
        "vringswitch_port_protocol_errors_total",
        "vhost-user connections refused or closed because the frontend broke the protocol.",
    );
    let mut queue_rx = Family::counter(
        "vringswitch_port_queue_rx_packets_total",
        "Frames received from the VM on one queue pair of the port.",
    );
    let mut queue_tx = Family::counter(
        "vringswitch_port_queue_tx_packets_total",
        "Frames delivered to the VM on one queue pair of the port.",
    );
    let mut queue_busy = Family::counter(
        "vringswitch_port_queue_busy_cycles_total",
        "Cycles of worker polls of one queue pair's ingress that moved frames: its share of \
         its core (vringctl cores).",
    );
    let mut port_fdb = Family::gauge(
        "vringswitch_port_fdb_learned",
        "MAC addresses the bridge learnt on the port and still has.",
    );
    let mut port_fdb_max = Family::gauge(
        "vringswitch_port_fdb_max_learned",
        "Most MAC addresses the bridge learns on the port (fdb_max_learned).",
    );
    let mut remote_rx = Family::counter(
        "vringswitch_tunnel_remote_rx_packets_total",
        "Tunnel packets a tunnel port took from one remote end (VTEP).",
    );
    let mut remote_rx_bytes = Family::counter(
        "vringswitch_tunnel_remote_rx_bytes_total",
        "Bytes of the tunnel packets (VXLAN header and inner frame) taken from one remote end.",
    );
    let mut remote_tx = Family::counter(
        "vringswitch_tunnel_remote_tx_packets_total",
        "Tunnel packets a tunnel port sent to one remote end (a flooded frame once per end).",
    );
    let mut remote_tx_bytes = Family::counter(
        "vringswitch_tunnel_remote_tx_bytes_total",
        "Bytes sent to one remote end, outer headers included.",
    );
    let mut remote_macs = Family::gauge(
        "vringswitch_tunnel_remote_macs",
        "MAC addresses a tunnel port knows behind one remote end.",
    );
    for p in &s.ports {
        let l = [("port", p.name.as_str()), ("bridge", p.bridge.as_str())];
        for (i, q) in p.queues.iter().enumerate() {
            let i = i.to_string();
            queue_rx.add(&[l[0], ("queue", &i)], q.rx_packets);
            queue_tx.add(&[l[0], ("queue", &i)], q.tx_packets);
            queue_busy.add(&[l[0], ("queue", &i)], q.busy_cycles);
        }
        rx_packets.add(&l, p.rx_packets);
        rx_bytes.add(&l, p.rx_bytes);
        tx_packets.add(&l, p.tx_packets);
        tx_bytes.add(&l, p.tx_bytes);
        for (reason, &n) in &p.drops {
            drops.add(&[l[0], l[1], ("reason", reason.as_str())], n);
        }
        for (action, &n) in &p.offloads {
            offloads.add(&[l[0], ("action", action.as_str())], n);
        }
        port_connected.add(&l[..1], u64::from(p.connected));
        port_admin_up.add(&l[..1], u64::from(!p.admin_down));
        port_ready.add(&l[..1], u64::from(p.ready));
        reconnects.add(&l[..1], p.reconnects);
        protocol_errors.add(&l[..1], p.protocol_errors);
        port_fdb.add(&l, p.fdb_learned);
        port_fdb_max.add(&l, p.fdb_max_learned);
        for r in &p.remotes {
            let rl = [l[0], l[1], ("remote", r.address.as_str())];
            remote_rx.add(&rl, r.rx_packets);
            remote_rx_bytes.add(&rl, r.rx_bytes);
            remote_tx.add(&rl, r.tx_packets);
            remote_tx_bytes.add(&rl, r.tx_bytes);
            remote_macs.add(&rl, r.macs);
        }
    }
    for f in [
        &mut rx_packets,
        &mut rx_bytes,
        &mut tx_packets,
        &mut tx_bytes,
        &mut drops,
        &mut offloads,
        &mut port_connected,
        &mut port_admin_up,
        &mut port_ready,
        &mut reconnects,
        &mut protocol_errors,
        &mut queue_rx,
        &mut queue_tx,
        &mut queue_busy,
        &mut port_fdb,
        &mut port_fdb_max,
        &mut remote_rx,
        &mut remote_rx_bytes,
        &mut remote_tx,
        &mut remote_tx_bytes,
        &mut remote_macs,
    ] {
        push(f);
    }

    // Workers.
    let mut busy = Family::counter(
        "vringswitch_worker_busy_cycles_total",
        "Cycles of worker polls of a TX queue that moved at least one frame.",
    );
    let mut idle = Family::counter(
        "vringswitch_worker_idle_cycles_total",
        "Cycles of worker polls that moved nothing, time asleep included.",
    );
    let mut packets = Family::counter(
        "vringswitch_worker_packets_total",
        "Chains the worker took from TX rings (frames, malformed ones included).",
    );
    let mut wakeups = Family::counter(
        "vringswitch_worker_wakeups_total",
        "Times the worker woke from sleep.",
    );
    let mut bursts = Family::new(
        "vringswitch_worker_burst_size",
        "Chains taken per non-empty poll of a TX queue.",
        MetricType::HISTOGRAM,
    );
    for w in &s.workers {
        let core = w.core.to_string();
        let l = [("core", core.as_str())];
        busy.add(&l, w.busy_cycles);
        idle.add(&l, w.idle_cycles);
        packets.add(&l, w.packets);
        wakeups.add(&l, w.wakeups);
        bursts.add_histogram(&l, &s.burst_bounds, &w.bursts, w.packets);
    }
    for f in [
        &mut busy,
        &mut idle,
        &mut packets,
        &mut wakeups,
        &mut bursts,
    ] {
        push(f);
    }

    // Bridges.
    let mut entries = Family::gauge(
        "vringswitch_fdb_entries",
        "MAC addresses in the bridge's forwarding database.",
    );
    let mut learned = Family::counter(
        "vringswitch_fdb_learned_total",
        "MAC addresses learnt by the bridge.",
    );
    let mut moved = Family::counter(
        "vringswitch_fdb_moved_total",
        "Learnt MAC addresses that moved to another port.",
    );
    let mut aged = Family::counter(
        "vringswitch_fdb_aged_total",
        "MAC addresses removed by ageing.",
    );
    let mut max_learned = Family::gauge(
        "vringswitch_fdb_max_learned",
        "Most MAC addresses the bridge learns over all its ports (fdb_max_learned).",
    );
    let mut refused = Family::counter(
        "vringswitch_fdb_learning_refused_total",
        "Source MAC addresses not learnt because a limit was reached: their port's \
         (limit=\"port\") or the bridge's (limit=\"bridge\"). Frames to them are flooded.",
    );
    let mut connections = Family::gauge(
        "vringswitch_bridge_connections",
        "Connections the security groups of the bridge's ports track (expired ones not yet \
         swept, at most a second, included).",
    );
    for b in &s.bridges {
        let l = [("bridge", b.name.as_str())];
        connections.add(&l, b.connections);
        entries.add(&l, b.fdb_entries);
        learned.add(&l, b.fdb_learned);
        moved.add(&l, b.fdb_moved);
        aged.add(&l, b.fdb_aged);
        max_learned.add(&l, b.fdb_max_learned);
        refused.add(&[l[0], ("limit", "port")], b.fdb_refused_port_limit);
        refused.add(&[l[0], ("limit", "bridge")], b.fdb_refused_bridge_limit);
    }
    for f in [
        &mut entries,
        &mut learned,
        &mut moved,
        &mut aged,
        &mut max_learned,
        &mut refused,
        &mut connections,
    ] {
        push(f);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;
    use vringswitch_ports::{DropReason, PortHandle};
    use vringswitch_switch::fdb::{fdb_key, Fdb};
    use vringswitch_switch::{BridgeRt, PortRt, SwitchConfig, Topology};
    use vringswitch_wire::ethernet::MacAddr;

    fn switch_with_port() -> (Arc<Switch>, Arc<PortHandle>) {
        let sw = Switch::new(&SwitchConfig {
            cores: vec![0],
            burst: 32,
            idle_poll: Duration::from_millis(1),
        })
        .unwrap();
        let h = Arc::new(PortHandle::new(0, "vm1", 2));
        sw.set_topology(Topology {
            bridges: vec![BridgeRt {
                name: "br0".into(),
                fdb: Arc::new(Fdb::new(300)),
                ports: vec![0],
                guarded: false,
            }],
            ports: vec![Some(PortRt {
                admin_up: true,
                handle: h.clone(),
                bridge: 0,
                queue_pairs: 1,
                vlan: Default::default(),
                security: Default::default(),
                fdb_max_learned: usize::MAX,
                police_rx: None,
                police_tx: None,
                capture: None,
                mirror: Default::default(),
                filter: None,
                remote: false,
            })],
            conntrack: None,
        });
        (sw, h)
    }

    /// The value of the one sample `series` (name and labels exactly as rendered).
    fn sample(text: &str, series: &str) -> f64 {
        let mut found = text.lines().filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            (k == series).then(|| v.parse::<f64>().unwrap())
        });
        let v = found
            .next()
            .unwrap_or_else(|| panic!("no {series} in\n{text}"));
        assert!(found.next().is_none(), "{series} twice");
        v
    }

    #[test]
    fn port_counters_are_summed_over_workers() {
        let (sw, h) = switch_with_port();
        h.stats().slot(0).add_rx(0, 3, 300);
        h.stats().slot(1).add_rx(1, 2, 200);
        h.stats().slot(0).add_tx(0, 7, 700);
        h.stats().slot(1).add_drop(DropReason::NoRxBuffer, 4);
        h.stats().slot(0).add_drop(DropReason::NoRxBuffer, 1);
        let m = Metrics::new();
        let text = m.render(&sw);
        let pb = "{bridge=\"br0\",port=\"vm1\"}";
        assert_eq!(
            sample(&text, &format!("vringswitch_port_rx_packets_total{pb}")),
            5.0
        );
        assert_eq!(
            sample(&text, &format!("vringswitch_port_rx_bytes_total{pb}")),
            500.0
        );
        assert_eq!(
            sample(&text, &format!("vringswitch_port_tx_packets_total{pb}")),
            7.0
        );
        assert_eq!(
            sample(&text, &format!("vringswitch_port_tx_bytes_total{pb}")),
            700.0
        );
        // Queue pair 1 counted a frame: it is shown though no frontend has its rings.
        for (queue, rx, tx) in [(0, 3.0, 7.0), (1, 2.0, 0.0)] {
            let q = format!("{{port=\"vm1\",queue=\"{queue}\"}}");
            assert_eq!(
                sample(
                    &text,
                    &format!("vringswitch_port_queue_rx_packets_total{q}")
                ),
                rx
            );
            assert_eq!(
                sample(
                    &text,
                    &format!("vringswitch_port_queue_tx_packets_total{q}")
                ),
                tx
            );
        }
        assert!(!text.contains("queue=\"2\""));
        for r in DropReason::ALL {
            let want = if r == DropReason::NoRxBuffer {
                5.0
            } else {
                0.0
            };
            let series = format!(
                "vringswitch_port_drops_total{{bridge=\"br0\",port=\"vm1\",reason=\"{}\"}}",
                r.as_str()
            );
            assert_eq!(sample(&text, &series), want, "{series}");
        }
        assert_eq!(
            sample(&text, "vringswitch_port_connected{port=\"vm1\"}"),
            0.0
        );
        assert_eq!(sample(&text, "vringswitch_port_ready{port=\"vm1\"}"), 0.0);
        assert_eq!(
            sample(&text, "vringswitch_port_reconnects_total{port=\"vm1\"}"),
            0.0
        );
        assert_eq!(sample(&text, "vringswitch_ports_configured"), 1.0);
        assert_eq!(sample(&text, "vringswitch_ports_connected"), 0.0);
        h.stats().slot(0).add_rx(0, 1, 10);
        let text = m.render(&sw);
        assert_eq!(
            sample(&text, &format!("vringswitch_port_rx_packets_total{pb}")),
            6.0
        );
    }

    #[test]
    fn connections_after_the_first_are_reconnects() {
        let (sw, h) = switch_with_port();
        h.set_connected(true);
        h.set_connected(false);
        h.set_connected(true);
        let text = Metrics::new().render(&sw);
        assert_eq!(
            sample(&text, "vringswitch_port_connected{port=\"vm1\"}"),
            1.0
        );
        assert_eq!(
            sample(&text, "vringswitch_port_reconnects_total{port=\"vm1\"}"),
            1.0
        );
        assert_eq!(sample(&text, "vringswitch_ports_connected"), 1.0);
    }

    #[test]
    fn worker_cycles_and_burst_histogram() {
        let (sw, _h) = switch_with_port();
        let w = &sw.workers[0].stats;
        w.add_burst(1);
        w.add_burst(3);
        w.add_burst(32);
        w.add_busy(9000);
        w.add_idle(100);
        w.add_wakeup();
        let text = Metrics::new().render(&sw);
        let c = "{core=\"0\"}";
        assert_eq!(
            sample(&text, &format!("vringswitch_worker_busy_cycles_total{c}")),
            9000.0
        );
        assert_eq!(
            sample(&text, &format!("vringswitch_worker_idle_cycles_total{c}")),
            100.0
        );
        assert_eq!(
            sample(&text, &format!("vringswitch_worker_packets_total{c}")),
            36.0
        );
        assert_eq!(
            sample(&text, &format!("vringswitch_worker_wakeups_total{c}")),
            1.0
        );
        let bucket = |le: &str| {
            sample(
                &text,
                &format!("vringswitch_worker_burst_size_bucket{{core=\"0\",le=\"{le}\"}}"),
            )
        };
        assert_eq!(bucket("1"), 1.0);
        assert_eq!(bucket("2"), 1.0);
        assert_eq!(bucket("4"), 2.0);
        assert_eq!(bucket("16"), 2.0);
        assert_eq!(bucket("32"), 3.0);
        assert_eq!(bucket("64"), 3.0);
        assert_eq!(bucket("+Inf"), 3.0);
        assert_eq!(
            sample(&text, &format!("vringswitch_worker_burst_size_sum{c}")),
            36.0
        );
        assert_eq!(
            sample(&text, &format!("vringswitch_worker_burst_size_count{c}")),
            3.0
        );
        assert!(sample(&text, "vringswitch_cycles_per_second") > 1e8);
    }

    #[test]
    fn fdb_and_build_info() {
        let (sw, _h) = switch_with_port();
        let fdb = &sw.topology().bridges[0].fdb;
        let a = MacAddr([2, 0, 0, 0, 0, 1]);
        let b = MacAddr([2, 0, 0, 0, 0, 2]);
        fdb.learn(fdb_key(a, 0), 0, 0, usize::MAX);
        fdb.learn(fdb_key(b, 0), 0, 0, usize::MAX);
        fdb.learn(fdb_key(b, 0), 1, 0, usize::MAX);
        let text = Metrics::new().render(&sw);
        let l = "{bridge=\"br0\"}";
        assert_eq!(sample(&text, &format!("vringswitch_fdb_entries{l}")), 2.0);
        assert_eq!(
            sample(&text, &format!("vringswitch_fdb_learned_total{l}")),
            2.0
        );
        assert_eq!(
            sample(&text, &format!("vringswitch_fdb_moved_total{l}")),
            1.0
        );
        assert_eq!(
            sample(&text, &format!("vringswitch_fdb_aged_total{l}")),
            0.0
        );
        assert_eq!(
            sample(
                &text,
                &format!("vringswitch_build_info{{version=\"{VERSION}\"}}")
            ),
            1.0
        );
        assert!(text.contains("process_open_fds"), "{text}");
    }

    #[test]
    fn a_port_removed_from_the_topology_loses_its_series() {
        let (sw, _h) = switch_with_port();
        let m = Metrics::new();
        assert!(m.render(&sw).contains("port=\"vm1\""));
        sw.set_topology(Topology::default());
        let text = m.render(&sw);
        assert!(!text.contains("port=\"vm1\""), "{text}");
        assert_eq!(sample(&text, "vringswitch_ports_configured"), 0.0);
    }
}
