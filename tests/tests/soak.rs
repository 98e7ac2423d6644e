//! Soak: 10,000 connections from a misbehaving frontend, cycling through five ways of
//! leaving (at once, mid-header, after negotiating, after SET_MEM_TABLE, after a bad
//! header). The daemon's open fds and threads come back to exactly their baseline and its
//! resident memory stays flat; every connection was served.

use std::io::Write;
use std::time::Instant;

use vringswitch_tests::process::{open_fds, resident_kib, threads};
use vringswitch_tests::raw_frontend::*;
use vringswitch_tests::setup::{Setup, T};
use vringswitch_tests::{settled_counts, wait_until};

const CYCLES: u32 = 10_000;
const WARM_UP: u32 = 200;

/// (open fds, threads, resident KiB) of a process.
fn resources(pid: u32) -> (usize, usize, u64) {
    (open_fds(pid), threads(pid), resident_kib(pid))
}

fn one_cycle(s: &Setup, i: u32) {
    let mut f = RawFrontend::connect(&s.socket("evil"));
    match i % 5 {
        0 => {}
        1 => {
            let _ = f.sock.write_all(&[1, 0, 0, 0, 1, 0]);
        }
        2 => f.negotiate(),
        3 => {
            f.negotiate();
            let _mem = f.set_memory(1 << 20);
        }
        _ => {
            let _ = f.send_raw(GET_FEATURES, 7, 0, &[], &[]);
            assert!(
                f.hung_up_within(T),
                "cycle {i}: a bad header was not refused"
            );
        }
    }
}

/// (open fds, threads) once transients are gone ([`settled_counts`]).
fn settled_fds_and_threads(pid: u32) -> (usize, usize) {
    let [fds, threads] = settled_counts(|| {
        let (f, t, _) = resources(pid);
        [f, t]
    });
    (fds, threads)
}

/// Waits until the port has served `n` connections and none is open.
fn wait_served(s: &Setup, n: u32) {
    wait_until(T, &format!("{n} connections served"), || {
        let text = s.daemon.metrics();
        let served = vringswitch_tests::daemon::metric_value(
            &text,
            "vringswitch_port_reconnects_total",
            &[("port", "evil")],
        )? + 1;
        let connected = vringswitch_tests::daemon::metric_value(
            &text,
            "vringswitch_port_connected",
            &[("port", "evil")],
        )?;
        (served == u64::from(n) && connected == 0).then_some(())
    });
}

#[test]
fn ten_thousand_misbehaving_connections_leave_nothing_behind() {
    let s = Setup::new("soak", &[("br0", &["evil"])], 1);
    let pid = s.daemon.pid();
    for i in 0..WARM_UP {
        one_cycle(&s, i);
    }
    wait_served(&s, WARM_UP);
    let (fds, threads) = settled_fds_and_threads(pid);
    let rss = resources(pid).2;
    let started = Instant::now();
    let mut samples = Vec::new();
    for i in 0..CYCLES {
        one_cycle(&s, i);
        if i % 2000 == 1999 {
            samples.push(resources(pid).2);
        }
    }
    wait_served(&s, WARM_UP + CYCLES);
    let elapsed = started.elapsed();
    let (after_fds, after_threads) = settled_fds_and_threads(pid);
    let after = (after_fds, after_threads, resources(pid).2);
    eprintln!(
        "{CYCLES} connections in {elapsed:?}: fds {fds} -> {}, threads {threads} -> {}, \
         RSS {rss} KiB -> {} KiB (every 2000: {samples:?})",
        after.0, after.1, after.2
    );
    assert_eq!(after.0, fds, "open fds grew");
    assert_eq!(after.1, threads, "threads grew");
    // Flat: allocator noise only, never growth with the number of connections.
    assert!(
        after.2 <= rss + 4096,
        "resident memory grew from {rss} KiB to {} KiB",
        after.2
    );
    assert!(
        samples.windows(2).all(|w| w[1] <= w[0] + 2048),
        "resident memory kept growing: {samples:?}"
    );
    assert_eq!(
        s.counter("protocol_errors", "evil"),
        u64::from((WARM_UP + CYCLES) / 5),
        "every bad header counted"
    );
}
