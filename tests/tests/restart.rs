//! Restarts with client-mode ports (the VMs listen, the switch connects), as under a VMM
//! started with `server=on`:
//! - SIGKILL under traffic, then start again: traffic flows again within 1 s, 20 times;
//! - SIGTERM under traffic: every frame whose chain the switch consumed was delivered
//!   exactly once, and no other frame was.

use std::os::unix::net::UnixListener;
use std::process::Command;
use std::time::{Duration, Instant};

use vringswitch_tests::daemon::{Daemon, TempDir};
use vringswitch_tests::frontend::{TestVm, VmOptions};
use vringswitch_tests::layout::{vhost_user_with, Layout, SocketMode, VhostUserSettings};
use vringswitch_tests::{frame, mac};

const T: Duration = Duration::from_secs(10);

/// A daemon whose ports a and b connect to sockets the test listens on.
fn setup(tag: &str) -> (TempDir, UnixListener, UnixListener, Daemon) {
    let dir = TempDir::new(tag);
    let (sa, sb) = (dir.path().join("a.sock"), dir.path().join("b.sock"));
    let (la, lb) = (
        UnixListener::bind(&sa).unwrap(),
        UnixListener::bind(&sb).unwrap(),
    );
    let client = |n: &str, s: &std::path::Path| {
        vhost_user_with(
            n,
            "br0",
            VhostUserSettings {
                socket: s.to_path_buf(),
                mode: Some(SocketMode::Client),
                queues: Some(1),
                offloads: None,
            },
        )
    };
    let toml = Layout::new()
        .bridge("br0")
        .port(client("a", &sa))
        .port(client("b", &sb))
        .toml();
    let daemon = Daemon::start(dir.path(), &toml, &[]);
    (dir, la, lb, daemon)
}

/// Both VMs accept the switch's connections and wait until the switch can deliver to
/// them; b learns nothing, frames from a flood to it.
fn attach(d: &Daemon, la: &UnixListener, lb: &UnixListener) -> (TestVm, TestVm) {
    let mut a = TestVm::accept(la, mac(1), VmOptions::default());
    let mut b = TestVm::accept(lb, mac(2), VmOptions::default());
    a.post_rx(TestVm::rx(0), 16, 2048);
    b.post_rx(TestVm::rx(0), 250, 2048);
    d.wait_port_connected("a", true);
    d.wait_port_connected("b", true);
    (a, b)
}

/// Frame number `n` from a to b.
fn numbered(n: u16) -> Vec<u8> {
    let mut f = frame(mac(2), mac(1), 60 + usize::from(n % 200), n as u8);
    f[14..16].copy_from_slice(&n.to_be_bytes());
    f
}

fn number(f: &[u8]) -> u16 {
    u16::from_be_bytes([f[14], f[15]])
}

#[test]
fn sigkill_under_traffic_then_restart_resumes_within_a_second_twenty_times() {
    let (dir, la, lb, mut daemon) = setup("restart-kill");
    let mut worst = Duration::ZERO;
    for cycle in 0..20u16 {
        let (mut a, mut b) = attach(&daemon, &la, &lb);
        // Traffic: a stream the switch is forwarding when it is killed.
        for n in 0..32 {
            a.send(TestVm::tx(0), &numbered(n));
        }
        assert!(!b.expect_frames_at_least(TestVm::rx(0), 1, T).is_empty());
        for n in 32..64 {
            a.send(TestVm::tx(0), &numbered(n));
        }
        let killed = Instant::now();
        daemon.restart(&[]);
        let (mut a, mut b) = attach(&daemon, &la, &lb);
        a.send(TestVm::tx(0), &numbered(1000 + cycle));
        let got = b.expect_frames(TestVm::rx(0), 1, T);
        let took = killed.elapsed();
        assert_eq!(number(&got[0].frame), 1000 + cycle);
        worst = worst.max(took);
        assert!(
            took < Duration::from_secs(1),
            "cycle {cycle}: frames flowed again {took:?} after the kill"
        );
    }
    eprintln!("worst time from SIGKILL to the first frame forwarded again: {worst:?}");
    let log = std::fs::read_to_string(dir.path().join("vringswitch.log")).unwrap();
    assert!(!log.contains("panicked"), "a panic in the log");
}

#[test]
fn sigterm_under_traffic_loses_and_duplicates_nothing() {
    let (_dir, la, lb, mut daemon) = setup("restart-term");
    let mut cut_short = 0;
    for round in 0..3 {
        let (mut a, mut b) = attach(&daemon, &la, &lb);
        let pid = daemon.pid();
        // SIGTERM lands while a is still sending.
        let signal = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(10));
            let ok = Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()
                .is_ok_and(|s| s.success());
            assert!(ok, "kill -TERM failed");
        });
        for n in 0..200 {
            a.send(TestVm::tx(0), &numbered(n));
            std::thread::sleep(Duration::from_micros(100));
        }
        signal.join().unwrap();
        let status = daemon.wait_exit(T);
        assert!(status.success(), "round {round}: exit status {status}");
        let consumed = a.used_idx(TestVm::tx(0));
        let delivered: Vec<u16> = b
            .recv(TestVm::rx(0))
            .iter()
            .map(|r| number(&r.frame))
            .collect();
        assert_eq!(
            delivered,
            (0..consumed).collect::<Vec<_>>(),
            "round {round}: {consumed} chains consumed, frames delivered differ"
        );
        if consumed < 200 {
            cut_short += 1;
        }
        daemon.restart(&[]);
    }
    eprintln!("{cut_short} of 3 rounds stopped mid-stream");
}
