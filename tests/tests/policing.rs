//! Per-port policing (issue 37): what a port sends (`police_rx`) and what it is sent
//! (`police_tx`), held to a rate with a burst. Real TCP, from the kernel of one network
//! namespace to the kernel of another, through two TAP ports of the daemon: the throughput
//! the switch carries settles at the configured rate, the frames past it are counted as
//! `policed`, and the policers are set and shown through the configuration file, the API
//! and vringctl. Needs root, /dev/net/tun, iproute2 and python3 (the TCP ends).

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use vringswitch_tests::api::{assert_error, call};
use vringswitch_tests::daemon::{Daemon, TempDir};
use vringswitch_tests::layout::{
    tap_with, vhost_user, Layout, PoliceConfig, PortSpec, TapSettings,
};
use vringswitch_tests::netns::{ip, Netns};

/// The bits per second the switch delivered to port `to` over `window`, from its byte
/// counter (Ethernet frames, as the policer counts them).
fn delivered_bps(d: &Daemon, to: &str, window: Duration) -> f64 {
    let bytes = || d.metric("vringswitch_port_tx_bytes_total", &[("port", to)]);
    let (start, t0) = (bytes(), Instant::now());
    std::thread::sleep(window);
    (bytes() - start) as f64 * 8.0 / t0.elapsed().as_secs_f64()
}

/// Runs python3 `code` in namespace `ns`.
fn python_in(ns: &Netns, code: &str) -> Child {
    Command::new("ip")
        .args(["netns", "exec", &ns.0, "python3", "-c", code])
        .stdout(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run python3 in {} ({e}): apt-get install python3",
                ns.0
            )
        })
}

/// The two ends of a TCP stream, killed when dropped (a failed test leaves none behind).
struct Stream(Child, Child);

impl Drop for Stream {
    fn drop(&mut self) {
        for c in [&mut self.0, &mut self.1] {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A TCP receiver on `addr` port 5001 that reads until the sender stops, and a sender
/// from the other namespace that writes as fast as TCP lets it for `secs`.
fn tcp_stream(from: &Netns, to: &Netns, addr: &str, secs: u64) -> Stream {
    let server = python_in(
        to,
        &format!(
            "import socket\n\
             l = socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
             l.bind(('{addr}', 5001)); l.listen(1); c, _ = l.accept()\n\
             while c.recv(1 << 20): pass\n"
        ),
    );
    let client = python_in(
        from,
        &format!(
            "import socket, time\n\
             for _ in range(100):\n\
             \x20   try:\n\
             \x20       s = socket.create_connection(('{addr}', 5001)); break\n\
             \x20   except OSError: time.sleep(0.05)\n\
             b = b'x' * 65536; end = time.time() + {secs}\n\
             while time.time() < end: s.sendall(b)\n\
             s.close()\n"
        ),
    );
    Stream(server, client)
}

/// Two TAP ports of one bridge, each interface moved into a namespace of its own with an
/// address (10.78.0.1 and 10.78.0.2), offloads off (frames of the MTU), with the port
/// policers `t1` and `t2` (of what each port sends).
struct TwoHosts {
    _dir: TempDir,
    d: Daemon,
    a: Netns,
    b: Netns,
}

fn two_hosts(tag: &str, t1: Option<PoliceConfig>, t2: Option<PoliceConfig>) -> TwoHosts {
    assert!(
        std::path::Path::new("/dev/net/tun").exists(),
        "/dev/net/tun is missing: load the tun module (modprobe tun)"
    );
    let dir = TempDir::new(tag);
    let id = std::process::id() % 100_000;
    let (if1, if2) = (format!("vsp{id}a"), format!("vsp{id}b"));
    let host = |name: &str, ifname: &str, police_rx| PortSpec {
        police_rx,
        ..tap_with(
            name,
            "br0",
            TapSettings {
                ifname: Some(ifname.to_owned()),
                mtu: None,
                offloads: Some(false),
            },
        )
    };
    let config = Layout::new()
        .bridge("br0")
        .port(host("t1", &if1, t1))
        .port(host("t2", &if2, t2))
        .toml();
    let d = Daemon::start(dir.path(), &config, &[]);
    let (a, b) = (
        Netns::new(&format!("vs-pa-{id}")),
        Netns::new(&format!("vs-pb-{id}")),
    );
    for (ns, ifname, addr) in [(&a, &if1, "10.78.0.1/24"), (&b, &if2, "10.78.0.2/24")] {
        ip(&["link", "set", ifname, "netns", &ns.0]);
        ns.ip(&["addr", "add", addr, "dev", ifname]);
        ns.ip(&["link", "set", ifname, "up"]);
        ns.ip(&["link", "set", "lo", "up"]);
    }
    TwoHosts { _dir: dir, d, a, b }
}

/// TCP from a to b through a port policed at 20 Mbit/s (what t1 sends, the default burst),
/// then at 8 Mbit/s over the API (what t2 is sent, a burst of half a second): each time the
/// switch carries the configured rate within 5% once TCP has settled, and drops the rest
/// as `policed`. Each rate is averaged over 8 s: over 5 s, TCP's own sawtooth (and the
/// burst refilled while it backs off) moved the figure by up to 3.5% either way.
#[test]
fn tcp_through_a_policed_port_settles_at_the_configured_rate() {
    let rate = PoliceConfig {
        rate_kbps: Some(20_000),
        burst_kb: None,
        rate_pps: None,
        burst_packets: None,
    };
    let h = two_hosts("police", Some(rate), None);
    let d = &h.d;
    let _stream = tcp_stream(&h.a, &h.b, "10.78.0.2", 22);
    // Slow start and the first burst: left out of the measure.
    std::thread::sleep(Duration::from_secs(3));
    let carried = delivered_bps(d, "t2", Duration::from_secs(8));
    let want = 20_000_000.0;
    eprintln!("police_rx 20 Mbit/s: {:.2} Mbit/s carried", carried / 1e6);
    assert!(
        (carried - want).abs() <= want * 0.05,
        "police_rx at 20 Mbit/s carried {:.2} Mbit/s",
        carried / 1e6
    );
    assert!(
        d.metric(
            "vringswitch_port_drops_total",
            &[("port", "t1"), ("reason", "policed")]
        ) > 0
    );

    // Over the API: t1 free, t2 policed on what it is sent.
    let (code, port) = call(
        d,
        "PATCH",
        "/v1/ports/t2",
        Some(json!({"police_tx": {"rate_kbps": 8000, "burst_kb": 4000}})),
    );
    assert_eq!(code, 200, "{port}");
    assert_eq!(
        port["police_tx"],
        json!({"rate_kbps": 8000, "burst_kb": 4000})
    );
    let out = d.vringctl(&["port", "set", "t1", "--no-police-rx"]);
    assert!(out.contains("changed"), "{out}");
    std::thread::sleep(Duration::from_secs(2));
    let carried = delivered_bps(d, "t2", Duration::from_secs(8));
    eprintln!("police_tx 8 Mbit/s: {:.2} Mbit/s carried", carried / 1e6);
    assert!(
        (carried - 8e6).abs() <= 8e6 * 0.05,
        "police_tx at 8 Mbit/s carried {:.2} Mbit/s",
        carried / 1e6
    );
    assert!(
        d.metric(
            "vringswitch_port_drops_total",
            &[("port", "t2"), ("reason", "policed")]
        ) > 0
    );
}

/// Policers that would police nothing or could never pass a large frame are refused, with
/// the reason, by the configuration file and the API; vringctl takes `key=value` lists.
#[test]
fn policers_are_checked_and_shown() {
    let dir = TempDir::new("police-cfg");
    let sock = dir.path().join("vm.sock");
    let police = |rate_pps, burst_kb| PoliceConfig {
        rate_kbps: None,
        burst_kb,
        rate_pps,
        burst_packets: None,
    };
    let bad = Layout::new()
        .bridge("br0")
        .port(PortSpec {
            police_rx: Some(police(None, Some(1000))),
            ..vhost_user("vm", "br0", &sock)
        })
        .toml();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, bad).unwrap();
    let out = Command::new(vringswitch_tests::daemon::binary())
        .args(["--config", path.to_str().unwrap(), "--print-config"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("police_rx needs rate_kbps, rate_pps or both"),
        "{err}"
    );

    let good = Layout::new()
        .bridge("br0")
        .port(PortSpec {
            police_tx: Some(police(Some(1000), None)),
            ..vhost_user("vm", "br0", &sock)
        })
        .toml();
    let d = Daemon::start(dir.path(), &good, std::slice::from_ref(&sock));
    let (code, port) = call(&d, "GET", "/v1/ports/vm", None);
    assert_eq!(code, 200);
    assert_eq!(port["police_tx"], json!({"rate_pps": 1000}));
    assert!(port.get("police_rx").is_none(), "{port}");
    assert_error(
        call(
            &d,
            "PATCH",
            "/v1/ports/vm",
            Some(json!({"police_rx": {"rate_kbps": 1000, "burst_kb": 100}})),
        ),
        400,
        "invalid",
        "burst_kb must be from 525",
    );
    assert_error(
        call(
            &d,
            "PATCH",
            "/v1/ports/vm",
            Some(json!({"police_rx": {"rate_kbps": 0}})),
        ),
        400,
        "invalid",
        "rate_kbps must be from 1",
    );
    let out = d.vringctl(&[
        "port",
        "set",
        "vm",
        "--police-rx",
        "rate_kbps=50000,burst_kb=5000",
        "--no-police-tx",
    ]);
    assert!(out.contains("changed"), "{out}");
    let (_, port) = call(&d, "GET", "/v1/ports/vm", None);
    assert_eq!(
        port["police_rx"],
        json!({"rate_kbps": 50000, "burst_kb": 5000})
    );
    assert!(port.get("police_tx").is_none(), "{port}");
}
