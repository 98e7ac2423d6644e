//! systemd integration: the watchdog is fed only while every worker is alive.

use std::sync::Arc;
use std::time::Duration;

use vringswitch_switch::Switch;

/// Sum of busy and idle cycles of each worker: it grows at every poll of a TX queue, and at
/// least once a second while the worker sleeps (its wait has a 1 s timeout).
fn heartbeats(switch: &Switch) -> Vec<u64> {
    switch
        .workers
        .iter()
        .map(|w| {
            let s = w.stats.snapshot();
            s.busy_cycles.wrapping_add(s.idle_cycles)
        })
        .collect()
}

/// The workers whose heartbeat did not move between two readings.
pub fn stalled(before: &[u64], after: &[u64]) -> Vec<usize> {
    before
        .iter()
        .zip(after)
        .enumerate()
        .filter(|(_, (b, a))| b == a)
        .map(|(i, _)| i)
        .collect()
}

/// Sends WATCHDOG=1 every `period` (at least 2 s, so that a sleeping worker has beaten)
/// as long as every worker made progress since the previous ping, or the workers were
/// stopped on purpose (an upgrade waits for the new process with them stopped, up to its
/// deadline, which may be longer than the watchdog's). A stuck worker stops the pings and
/// systemd restarts the service.
pub async fn feed_watchdog(switch: Arc<Switch>, period: Duration) {
    let mut tick = tokio::time::interval(period.max(Duration::from_secs(2)));
    // The first tick is immediate: no worker has had time to beat yet.
    tick.tick().await;
    let mut last = heartbeats(&switch);
    loop {
        tick.tick().await;
        let now = heartbeats(&switch);
        let stuck = stalled(&last, &now);
        if stuck.is_empty() || switch.stopping() {
            let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Watchdog]);
        } else {
            let cores: Vec<String> = stuck
                .iter()
                .map(|&i| switch.workers[i].core.to_string())
                .collect();
            tracing::error!(cores = %cores.join(","),
                "worker made no progress; not feeding the watchdog");
        }
        last = now;
    }
}

#[cfg(test)]
mod tests {
    use super::stalled;

    #[test]
    fn a_worker_whose_cycles_did_not_move_is_stalled() {
        assert!(stalled(&[1, 2], &[5, 9]).is_empty());
        assert_eq!(stalled(&[1, 2, 3], &[5, 2, 4]), vec![1]);
    }
}
