//! Drops reach the log without any per-frame logging: every 10 s the daemon compares the
//! counters with the previous reading and writes one line per port whose drops grew.
//! Drops that mean a misbehaving guest (malformed chains, oversized frames, bad source
//! addresses) are warnings; drops that happen in normal operation are at debug.

use std::sync::Arc;
use std::time::Duration;

use vringswitch_metrics::Snapshot;
use vringswitch_switch::Switch;

/// Reasons that point at a guest or its driver doing something wrong.
const GUEST_FAULTS: [&str; 8] = [
    "bad_descriptor",
    "too_big",
    "invalid_src_mac",
    "mac_spoofed",
    "bad_offload",
    "ip_spoofed",
    // A tunnel's peers: the network, rather than a guest, doing something wrong.
    "unknown_vtep",
    "bad_tunnel",
];

/// Drops of one port that grew between two readings.
#[derive(Debug, PartialEq, Eq)]
pub struct Grown {
    pub port: String,
    /// Whether a reason points at a faulty guest.
    pub guest_fault: bool,
    /// (reason, frames) for each reason that grew.
    pub reasons: Vec<(String, u64)>,
}

/// The ports whose drops grew between two readings.
pub fn grown(before: &Snapshot, after: &Snapshot) -> Vec<Grown> {
    let mut out = Vec::new();
    for p in &after.ports {
        let d = match before.port(&p.name) {
            Some(b) => p.since(b),
            None => p.clone(),
        };
        let reasons: Vec<(String, u64)> = d.drops.into_iter().filter(|(_, n)| *n > 0).collect();
        if !reasons.is_empty() {
            let guest_fault = reasons
                .iter()
                .any(|(r, _)| GUEST_FAULTS.contains(&r.as_str()));
            out.push(Grown {
                port: p.name.clone(),
                guest_fault,
                reasons,
            });
        }
    }
    out
}

/// Logs the drops of each period, forever.
pub async fn report_drops(switch: Arc<Switch>, period: Duration) {
    let mut tick = tokio::time::interval(period);
    tick.tick().await;
    let mut before = Snapshot::take(&switch);
    loop {
        tick.tick().await;
        let after = Snapshot::take(&switch);
        for Grown {
            port,
            guest_fault,
            reasons,
        } in grown(&before, &after)
        {
            let counts = reasons
                .iter()
                .map(|(r, n)| format!("{r}={n}"))
                .collect::<Vec<_>>()
                .join(" ");
            let secs = period.as_secs();
            if guest_fault {
                tracing::warn!(port = %port, drops = %counts, "frames dropped in the last {secs} s");
            } else {
                tracing::debug!(port = %port, drops = %counts, "frames dropped in the last {secs} s");
            }
        }
        before = after;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vringswitch_metrics::PortSnapshot;

    fn port(name: &str, drops: &[(&str, u64)]) -> PortSnapshot {
        PortSnapshot {
            name: name.into(),
            drops: drops.iter().map(|(r, n)| ((*r).to_owned(), *n)).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn only_ports_whose_drops_grew_are_reported() {
        let before = Snapshot {
            ports: vec![
                port("a", &[("bad_descriptor", 2), ("no_rx_buffer", 5)]),
                port("b", &[("no_rx_buffer", 1)]),
            ],
            ..Default::default()
        };
        let after = Snapshot {
            ports: vec![
                port("a", &[("bad_descriptor", 5), ("no_rx_buffer", 5)]),
                port("b", &[("no_rx_buffer", 4)]),
                port("c", &[("port_down", 0)]),
                port("d", &[("port_down", 7)]),
            ],
            ..Default::default()
        };
        let reasons = |r: &[(&str, u64)]| r.iter().map(|(k, n)| ((*k).to_owned(), *n)).collect();
        assert_eq!(
            grown(&before, &after),
            vec![
                Grown {
                    port: "a".into(),
                    guest_fault: true,
                    reasons: reasons(&[("bad_descriptor", 3)]),
                },
                Grown {
                    port: "b".into(),
                    guest_fault: false,
                    reasons: reasons(&[("no_rx_buffer", 3)]),
                },
                Grown {
                    port: "d".into(),
                    guest_fault: false,
                    reasons: reasons(&[("port_down", 7)]),
                },
            ]
        );
    }
}
