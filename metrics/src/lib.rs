//! Prometheus metrics of the switch.
//!
//! The data path only writes per-worker counters; this crate reads them at scrape time,
//! sums them and brings the Prometheus counters up to date (they only ever go up, and are
//! never reset on scrape). Direction is the switch's view: rx = received from the VM,
//! tx = delivered to the VM.
#![deny(unsafe_code)]

use std::sync::Mutex;

use prometheus::{Encoder, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder};
use vringswitch_ports::DropReason;
use vringswitch_switch::Switch;

/// The registry and the metric families it holds.
pub struct Metrics {
    registry: Registry,
    rx_packets: IntCounterVec,
    rx_bytes: IntCounterVec,
    tx_packets: IntCounterVec,
    tx_bytes: IntCounterVec,
    drops: IntCounterVec,
    connected: IntGaugeVec,
    fdb_entries: IntGaugeVec,
    scrape: Mutex<()>,
}

fn counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric definition");
    registry
        .register(Box::new(c.clone()))
        .expect("metric registered once");
    c
}

fn gauge(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric definition");
    registry
        .register(Box::new(g.clone()))
        .expect("metric registered once");
    g
}

/// Raises a counter to `value` (counters cannot be set, only increased).
fn raise(c: &prometheus::IntCounter, value: u64) {
    let cur = c.get();
    if value > cur {
        c.inc_by(value - cur);
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let r = Registry::new();
        let pb = &["port", "bridge"];
        Metrics {
            rx_packets: counter(
                &r,
                "vringswitch_port_rx_packets_total",
                "Frames received from the VM on this port.",
                pb,
            ),
            rx_bytes: counter(
                &r,
                "vringswitch_port_rx_bytes_total",
                "Bytes of frames received from the VM (without virtio-net header).",
                pb,
            ),
            tx_packets: counter(
                &r,
                "vringswitch_port_tx_packets_total",
                "Frames delivered to the VM on this port.",
                pb,
            ),
            tx_bytes: counter(
                &r,
                "vringswitch_port_tx_bytes_total",
                "Bytes of frames delivered to the VM (without virtio-net header).",
                pb,
            ),
            drops: counter(
                &r,
                "vringswitch_port_drops_total",
                "Frames dropped, by the port they were received on or meant for, and why.",
                &["port", "bridge", "reason"],
            ),
            connected: gauge(
                &r,
                "vringswitch_port_connected",
                "1 while a vhost-user frontend is connected to the port.",
                &["port"],
            ),
            fdb_entries: gauge(
                &r,
                "vringswitch_fdb_entries",
                "MAC addresses in the bridge's forwarding database.",
                &["bridge"],
            ),
            registry: r,
            scrape: Mutex::new(()),
        }
    }

    /// Brings every metric up to date and renders the Prometheus text format.
    pub fn render(&self, switch: &Switch) -> String {
        let _one_at_a_time = self.scrape.lock().unwrap_or_else(|e| e.into_inner());
        let topology = switch.topology();
        for p in topology.ports.iter().flatten() {
            let port = p.handle.name();
            let bridge = topology.bridges[p.bridge].name.as_str();
            let s = p.handle.stats().snapshot();
            let l = &[port, bridge];
            raise(&self.rx_packets.with_label_values(l), s.rx_packets);
            raise(&self.rx_bytes.with_label_values(l), s.rx_bytes);
            raise(&self.tx_packets.with_label_values(l), s.tx_packets);
            raise(&self.tx_bytes.with_label_values(l), s.tx_bytes);
            for r in DropReason::ALL {
                raise(
                    &self.drops.with_label_values(&[port, bridge, r.as_str()]),
                    s.drops(r),
                );
            }
            self.connected
                .with_label_values(&[port])
                .set(i64::from(p.handle.is_connected()));
        }
        for b in &topology.bridges {
            self.fdb_entries
                .with_label_values(&[b.name.as_str()])
                .set(b.fdb.len() as i64);
        }
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;
    use vringswitch_ports::PortHandle;
    use vringswitch_switch::fdb::Fdb;
    use vringswitch_switch::{BridgeRt, PortRt, SwitchConfig, Topology};

    #[test]
    fn renders_summed_counters_that_never_go_down() {
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
            }],
            ports: vec![Some(PortRt {
                handle: h.clone(),
                bridge: 0,
                queue_pairs: 1,
            })],
        });
        h.stats().slot(0).add_rx(3, 300);
        h.stats().slot(1).add_rx(2, 200);
        h.stats().slot(1).add_drop(DropReason::NoRxBuffer, 4);
        let m = Metrics::new();
        let text = m.render(&sw);
        assert!(
            text.contains("vringswitch_port_rx_packets_total{bridge=\"br0\",port=\"vm1\"} 5"),
            "{text}"
        );
        assert!(text.contains("vringswitch_port_rx_bytes_total{bridge=\"br0\",port=\"vm1\"} 500"));
        assert!(text.contains(
            "vringswitch_port_drops_total{bridge=\"br0\",port=\"vm1\",reason=\"no_rx_buffer\"} 4"
        ));
        assert!(text.contains("vringswitch_port_connected{port=\"vm1\"} 0"));
        assert!(text.contains("vringswitch_fdb_entries{bridge=\"br0\"} 0"));
        h.stats().slot(0).add_rx(1, 10);
        let text = m.render(&sw);
        assert!(text.contains("vringswitch_port_rx_packets_total{bridge=\"br0\",port=\"vm1\"} 6"));
    }
}
