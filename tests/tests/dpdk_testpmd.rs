//! End to end with DPDK: one testpmd owns two virtio_user ports (the two "VMs") attached to
//! two vringswitch ports, forward mode `mac`, frames circulating gen0 -> switch -> gen1 ->
//! switch -> gen0. Needs hugepages (scripts/test.sh sets them up). Run one at a time.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

use vringswitch_metrics::Snapshot;
use vringswitch_tests::daemon::{Daemon, TempDir};
use vringswitch_tests::layout::{vhost_user_in, Layout, SocketMode};
use vringswitch_tests::wait_until;

const MAC0: &str = "02:00:00:00:00:01";
const MAC1: &str = "02:00:00:00:00:02";

fn check_environment() {
    let ok = Command::new("dpdk-testpmd")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    assert!(
        ok,
        "dpdk-testpmd is missing: install it with `apt-get install dpdk-dev` (scripts/test.sh does this)"
    );
    let free: u64 = std::fs::read_to_string("/proc/meminfo")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("HugePages_Free:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    assert!(
        free >= 256,
        "testpmd needs 256 free 2 MiB hugepages mounted on /dev/hugepages (have {free}): \
         echo 1024 > /proc/sys/vm/nr_hugepages; mount -t hugetlbfs nodev /dev/hugepages \
         (scripts/test.sh does this)"
    );
}

/// testpmd in interactive mode, its output collected line by line.
struct Testpmd {
    child: Child,
    stdin: ChildStdin,
    lines: Receiver<String>,
    prefix: String,
    seen: Vec<String>,
}

impl Testpmd {
    /// testpmd connecting to the switch's sockets, forwarding mode `mac` (frames circulate
    /// once `start tx_first` injects them).
    fn start(sock0: &Path, sock1: &Path, frame_len: usize) -> Testpmd {
        Self::start_with(sock0, sock1, frame_len, "", "mac")
    }

    /// testpmd with `vdev_extra` appended to both ports' options (`,server=1`: testpmd
    /// listens and the switch connects, as with client-mode ports) and forwarding `mode`.
    fn start_with(
        sock0: &Path,
        sock1: &Path,
        frame_len: usize,
        vdev_extra: &str,
        mode: &str,
    ) -> Testpmd {
        let prefix = format!("vstest{}", std::process::id());
        // stdbuf: testpmd's stdout is block-buffered on a pipe; we read it as it goes.
        let mut child = Command::new("stdbuf")
            .args(["-oL", "dpdk-testpmd"])
            .args([
                "-l",
                "0,1",
                "--main-lcore",
                "0",
                "--no-pci",
                "--single-file-segments",
            ])
            .args(["-m", "512", "--file-prefix", &prefix])
            .arg("--vdev")
            .arg(format!(
                "net_virtio_user0,path={},queues=1,mac={MAC0}{vdev_extra}",
                sock0.display()
            ))
            .arg("--vdev")
            .arg(format!(
                "net_virtio_user1,path={},queues=1,mac={MAC1}{vdev_extra}",
                sock1.display()
            ))
            .args(["--", "-i", "--nb-cores=1"])
            .arg(format!("--forward-mode={mode}"))
            .arg(format!("--eth-peer=0,{MAC1}"))
            .arg(format!("--eth-peer=1,{MAC0}"))
            .arg(format!("--txpkts={frame_len}"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start dpdk-testpmd");
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for l in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        let mut t = Testpmd {
            child,
            stdin,
            lines,
            prefix,
            seen: Vec::new(),
        };
        // The prompt has no newline: the link check is the last line before it.
        t.wait_for("Checking link statuses", Duration::from_secs(60));
        std::thread::sleep(Duration::from_millis(500));
        t
    }

    fn wait_for(&mut self, marker: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    let hit = l.contains(marker);
                    self.seen.push(l);
                    if hit {
                        return;
                    }
                }
                Err(_) => panic!(
                    "testpmd: no {marker:?} within {timeout:?}; output:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    fn command(&mut self, cmd: &str) {
        writeln!(self.stdin, "{cmd}").unwrap();
        self.stdin.flush().unwrap();
    }

    /// Stops forwarding and returns (RX-packets, RX-dropped, TX-packets, TX-dropped) of each
    /// port from testpmd's forward statistics.
    fn stop(&mut self) -> Vec<[u64; 4]> {
        let from = self.seen.len();
        self.command("stop");
        self.wait_for("Done.", Duration::from_secs(20));
        let text = self.seen[from..].join("\n");
        let mut ports = Vec::new();
        let mut cur = [0u64; 4];
        let mut in_port = false;
        for l in text.lines() {
            if l.contains("Forward statistics for port") {
                in_port = true;
                cur = [0; 4];
            } else if in_port && l.contains("RX-packets:") {
                cur[0] = field(l, "RX-packets:");
                cur[1] = field(l, "RX-dropped:");
            } else if in_port && l.contains("TX-packets:") {
                cur[2] = field(l, "TX-packets:");
                cur[3] = field(l, "TX-dropped:");
                ports.push(cur);
                in_port = false;
            }
        }
        assert_eq!(ports.len(), 2, "cannot parse testpmd statistics:\n{text}");
        ports
    }
}

fn field(line: &str, name: &str) -> u64 {
    line.split(name)
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {line:?}"))
}

impl Drop for Testpmd {
    fn drop(&mut self) {
        let _ = writeln!(self.stdin, "quit");
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        // A killed DPDK process leaves its hugepage files behind, holding the pages.
        if let Ok(dir) = std::fs::read_dir("/dev/hugepages") {
            for e in dir.flatten() {
                if e.file_name().to_string_lossy().starts_with(&self.prefix) {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
    }
}

fn loopback(frame_len: usize) {
    check_environment();
    let dir = TempDir::new(&format!("dpdk{frame_len}"));
    let (s0, s1) = (dir.path().join("vm1.sock"), dir.path().join("vm2.sock"));
    let toml = two_ports(&s0, &s1, SocketMode::Server);
    let daemon = Daemon::start(dir.path(), &toml, &[s0.clone(), s1.clone()]);
    let mut pmd = Testpmd::start(&s0, &s1, frame_len);
    pmd.command("start tx_first");
    std::thread::sleep(Duration::from_secs(10));
    let stats = pmd.stop();
    // testpmd no longer polls; let the switch drain what testpmd handed over, then read
    // our counters while testpmd is still connected.
    let m = |name: &str, port: &str| daemon.metric(name, &[("port", port)]);
    let (rx1, rx2) = (drained_rx(&daemon, "vm1"), drained_rx(&daemon, "vm2"));
    let drops = |port: &str| {
        daemon.metric(
            "vringswitch_port_drops_total",
            &[("port", port), ("reason", "no_rx_buffer")],
        )
    };
    let (tx1, tx2) = (
        m("vringswitch_port_tx_packets_total", "vm1"),
        m("vringswitch_port_tx_packets_total", "vm2"),
    );
    let [p0_rx, p0_rxd, p0_tx, _] = stats[0];
    let [p1_rx, p1_rxd, p1_tx, _] = stats[1];
    eprintln!(
        "{frame_len} B: testpmd port0 rx {p0_rx} tx {p0_tx}, port1 rx {p1_rx} tx {p1_tx}; \
         switch vm1 rx {rx1} tx {tx1} drops {}, vm2 rx {rx2} tx {tx2} drops {}",
        drops("vm1"),
        drops("vm2")
    );
    assert!(
        p0_tx > 10_000 && p1_tx > 10_000,
        "frames must flow: {stats:?}"
    );
    // The virtio PMD took its in-order paths: the traffic above ran on them.
    let log = daemon.log_text();
    for port in ["vm1", "vm2"] {
        let features = log
            .lines()
            .filter(|l| l.contains("port rings ready") && l.contains(&format!("port={port} ")))
            .filter_map(|l| l.split("features=").nth(1))
            .filter_map(|names| names.split_whitespace().next())
            .next_back()
            .unwrap_or_else(|| panic!("no negotiated features logged for {port}:\n{log}"));
        assert!(
            features.split(',').any(|f| f == "IN_ORDER"),
            "{port} without VIRTIO_F_IN_ORDER: {features}"
        );
    }
    assert_eq!((p0_rxd, p1_rxd), (0, 0), "testpmd RX drops");
    // Everything testpmd sent on port 0 was received from vm1, and vice versa.
    assert_eq!(rx1, p0_tx, "vm1 rx vs testpmd port 0 TX");
    assert_eq!(rx2, p1_tx, "vm2 rx vs testpmd port 1 TX");
    // Every frame received was delivered or counted as dropped.
    assert_eq!(rx1, tx2 + drops("vm2"), "vm1 -> vm2 accounted");
    assert_eq!(rx2, tx1 + drops("vm1"), "vm2 -> vm1 accounted");
    // testpmd received what we delivered, except what sat in its RX ring when it stopped.
    for (delivered, received) in [(tx1, p0_rx), (tx2, p1_rx)] {
        assert!(
            received <= delivered && delivered - received <= 1024,
            "delivered {delivered}, testpmd received {received}"
        );
    }
    let errors: u64 = [
        "bad_descriptor",
        "too_big",
        "invalid_src_mac",
        "hairpin",
        "port_down",
    ]
    .iter()
    .flat_map(|r| [("vm1", r), ("vm2", r)])
    .map(|(p, r)| {
        daemon.metric(
            "vringswitch_port_drops_total",
            &[("port", p), ("reason", r)],
        )
    })
    .sum();
    assert_eq!(
        errors,
        0,
        "drops other than a full ring:\n{}",
        daemon.metrics()
    );

    // vringctl stats says the same, to the frame, as JSON and as a table.
    let snap: Snapshot = serde_json::from_str(&daemon.vringctl(&["--json", "stats"])).unwrap();
    for (port, rx, tx) in [("vm1", p0_tx, tx1), ("vm2", p1_tx, tx2)] {
        let p = snap.port(port).expect("port in vringctl stats");
        assert_eq!((p.rx_packets, p.tx_packets), (rx, tx), "{port}: {p:?}");
        assert_eq!(p.drops["no_rx_buffer"], drops(port), "{port}");
        assert_eq!(p.total_drops(), drops(port), "{port}");
    }
    let table = daemon.vringctl(&["stats"]);
    for (port, rx, tx) in [("vm1", p0_tx, tx1), ("vm2", p1_tx, tx2)] {
        let row: Vec<&str> = table
            .lines()
            .find(|l| l.starts_with(port))
            .unwrap_or_else(|| panic!("no {port} row in\n{table}"))
            .split_whitespace()
            .collect();
        assert_eq!(row[3], rx.to_string(), "{table}");
        assert_eq!(row[5], tx.to_string(), "{table}");
    }
    // The worker took every frame testpmd sent, and spent busy cycles on them.
    let w = &snap.workers[0];
    assert_eq!(w.packets, p0_tx + p1_tx, "{w:?}");
    assert_eq!(
        daemon.metric("vringswitch_worker_packets_total", &[("core", "1")]),
        p0_tx + p1_tx
    );
    let cpp = w.cycles_per_packet().expect("packets moved");
    eprintln!(
        "{frame_len} B: {cpp:.0} busy cycles/packet (debug build unless VRINGSWITCH_BIN), average burst {:.1}\n{table}",
        w.average_burst().unwrap_or(0.0)
    );
    assert!(cpp > 0.0);
}

/// What the switch took from `port` (`vringswitch_port_rx_packets_total`), once it stopped
/// moving (testpmd stopped and the switch drained what it had been handed).
fn drained_rx(daemon: &Daemon, port: &str) -> u64 {
    let rx = || daemon.metric("vringswitch_port_rx_packets_total", &[("port", port)]);
    wait_until(Duration::from_secs(5), &format!("{port} drained"), || {
        let a = rx();
        std::thread::sleep(Duration::from_millis(200));
        (a == rx()).then_some(a)
    })
}

/// Ports vm1 and vm2 on `s0` and `s1`, one queue pair each, in `mode`.
fn two_ports(s0: &Path, s1: &Path, mode: SocketMode) -> String {
    Layout::new()
        .bridge("br0")
        .port(vhost_user_in("vm1", "br0", s0, mode, Some(1)))
        .port(vhost_user_in("vm2", "br0", s1, mode, Some(1)))
        .toml()
}

#[test]
fn testpmd_loopback_64_byte_frames() {
    loopback(64);
}

#[test]
fn testpmd_loopback_1518_byte_frames() {
    loopback(1518);
}

/// testpmd as the socket server of two client-mode ports, generating traffic both ways
/// (`flowgen`: each port sends to the other's MAC and counts what it receives). The switch
/// is killed with SIGKILL under that traffic and started again, 20 times: each time frames
/// flow both ways again within 1 s of the kill, and no ring is taken for corrupt (testpmd
/// restarts its rings from SET_VRING_BASE 0 although they hold history: the switch resumes
/// from their used index).
#[test]
fn testpmd_servers_carry_traffic_again_within_a_second_of_each_of_20_switch_kills() {
    check_environment();
    let dir = TempDir::new("dpdk-restart");
    let (s0, s1) = (dir.path().join("vm1.sock"), dir.path().join("vm2.sock"));
    let toml = two_ports(&s0, &s1, SocketMode::Client);
    // testpmd waits for the switch to connect before it finishes starting: the switch
    // first (its client ports retry until testpmd listens).
    let mut daemon = Daemon::start(dir.path(), &toml, &[]);
    let mut pmd = Testpmd::start_with(&s0, &s1, 64, ",server=1", "flowgen");
    pmd.command("start");
    let flowing = |d: &Daemon| {
        ["vm1", "vm2"].iter().all(|p| {
            d.metric("vringswitch_port_tx_packets_total", &[("port", p)]) > 0
                && d.metric("vringswitch_port_rx_packets_total", &[("port", p)]) > 0
        })
    };
    wait_until(
        Duration::from_secs(10),
        "traffic through the switch",
        || flowing(&daemon).then_some(()),
    );
    let mut worst = Duration::ZERO;
    for cycle in 0..20 {
        std::thread::sleep(Duration::from_millis(300));
        let killed = Instant::now();
        daemon.restart(&[]);
        wait_until(Duration::from_secs(10), "traffic again", || {
            flowing(&daemon).then_some(())
        });
        let took = killed.elapsed();
        worst = worst.max(took);
        assert!(
            took < Duration::from_secs(1),
            "cycle {cycle}: traffic back {took:?} after the kill"
        );
        for p in ["vm1", "vm2"] {
            assert_eq!(
                daemon.metric(
                    "vringswitch_port_drops_total",
                    &[("port", p), ("reason", "bad_descriptor")]
                ),
                0,
                "cycle {cycle}: port {p}"
            );
        }
    }
    eprintln!("worst time from SIGKILL to traffic both ways again: {worst:?}");
    let stats = pmd.stop();
    assert!(stats.iter().all(|p| p[0] > 0 && p[2] > 0), "{stats:?}");
}

/// testpmd's loop of 64 B frames at full rate while the daemon is upgraded ten times: the
/// switch's counters, carried from process to process, still add up to the frame with
/// testpmd's: every frame taken from a TX ring reached its destination ring, none dropped.
/// The longest time the switch delivered nothing, sampled from /metrics every 2 ms, is
/// reported (an upper bound: it includes the old process answering with frozen counters
/// until it stops listening).
#[test]
fn testpmd_forwards_through_ten_upgrades_and_every_frame_taken_is_delivered() {
    check_environment();
    let dir = TempDir::new("dpdk-upgrade");
    let (s0, s1) = (dir.path().join("vm1.sock"), dir.path().join("vm2.sock"));
    let toml = two_ports(&s0, &s1, SocketMode::Server);
    let mut daemon = Daemon::start(dir.path(), &toml, &[s0.clone(), s1.clone()]);
    let mut pmd = Testpmd::start(&s0, &s1, 64);
    pmd.command("start tx_first");
    std::thread::sleep(Duration::from_secs(2));
    let delivered = |text: &str| {
        ["vm1", "vm2"]
            .iter()
            .map(|p| {
                vringswitch_tests::daemon::metric_value(
                    text,
                    "vringswitch_port_tx_packets_total",
                    &[("port", p)],
                )
                .unwrap_or(0)
            })
            .sum::<u64>()
    };
    let api = daemon.api.clone();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampling = stop.clone();
    let sampler = std::thread::spawn(move || {
        let (mut last_count, mut last_change) = (0u64, Instant::now());
        let mut longest = Duration::ZERO;
        while !sampling.load(std::sync::atomic::Ordering::Relaxed) {
            if let Ok(text) = vringswitch_tests::daemon::http_get(&api, "/metrics") {
                let n = delivered(&text);
                let now = Instant::now();
                if n > last_count {
                    longest = longest.max(now - last_change);
                    (last_count, last_change) = (n, now);
                }
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        longest
    });
    let mut paused = Vec::new();
    for round in 0..10 {
        let answer = daemon
            .upgrade(&[])
            .unwrap_or_else(|e| panic!("upgrade {round}: {e}"));
        paused.push(answer["paused_ms"].as_f64().unwrap());
        std::thread::sleep(Duration::from_millis(500));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let longest = sampler.join().unwrap();
    let stats = pmd.stop();
    let m = |name: &str, port: &str| daemon.metric(name, &[("port", port)]);
    let (rx1, rx2) = (drained_rx(&daemon, "vm1"), drained_rx(&daemon, "vm2"));
    let (tx1, tx2) = (
        m("vringswitch_port_tx_packets_total", "vm1"),
        m("vringswitch_port_tx_packets_total", "vm2"),
    );
    let [p0_rx, p0_rxd, p0_tx, _] = stats[0];
    let [p1_rx, p1_rxd, p1_tx, _] = stats[1];
    eprintln!(
        "ten upgrades under testpmd at 64 B: paused {paused:?} ms; longest time without a \
         delivery seen on /metrics {longest:?}; testpmd port0 rx {p0_rx} tx {p0_tx}, port1 \
         rx {p1_rx} tx {p1_tx}; switch vm1 rx {rx1} tx {tx1}, vm2 rx {rx2} tx {tx2}"
    );
    assert!(
        p0_tx > 100_000 && p1_tx > 100_000,
        "frames flowed: {stats:?}"
    );
    assert_eq!((p0_rxd, p1_rxd), (0, 0), "testpmd RX drops");
    // Counted across eleven processes, to the frame.
    assert_eq!(rx1, p0_tx, "vm1 rx vs testpmd port 0 TX");
    assert_eq!(rx2, p1_tx, "vm2 rx vs testpmd port 1 TX");
    assert_eq!(rx1, tx2, "every frame taken from vm1 reached vm2's ring");
    assert_eq!(rx2, tx1, "every frame taken from vm2 reached vm1's ring");
    for (delivered, received) in [(tx1, p0_rx), (tx2, p1_rx)] {
        assert!(
            received <= delivered && delivered - received <= 1024,
            "delivered {delivered}, testpmd received {received}"
        );
    }
    let total_drops: u64 = daemon
        .metrics()
        .lines()
        .filter(|l| l.starts_with("vringswitch_port_drops_total"))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<u64>().ok())
        .sum();
    assert_eq!(total_drops, 0, "no frame dropped:\n{}", daemon.metrics());
    assert_eq!(
        daemon.metric("vringswitch_port_reconnects_total", &[("port", "vm1")]),
        0
    );
    assert!(
        longest < Duration::from_secs(1),
        "forwarding stopped for {longest:?}"
    );
    daemon.kill();
}
