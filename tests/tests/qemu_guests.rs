//! End to end with real VMs: QEMU guests (TCG) built by tests/guest/build-guest.sh, attached
//! over vhost-user, pinging each other through the switch. Run one at a time
//! (`--test-threads=1`): each boots several guests on a 2-core machine.

use std::path::{Path, PathBuf};
use std::time::Duration;

use vringswitch_tests::daemon::{Daemon, TempDir};
use vringswitch_tests::guest::{Guest, GuestSpec, Machine, BOOT_AND_PING};
use vringswitch_tests::layout::{
    afxdp, tap, vhost_user_with, Layout, SocketMode, VhostUserSettings,
};
use vringswitch_tests::wait_until;

fn config(dir: &Path, ports: &[(&str, &str)], mode: SocketMode) -> (String, Vec<PathBuf>) {
    let (layout, sockets) = layout(dir, ports, mode, 1);
    (layout.toml(), sockets)
}

/// A layout of `ports` (name, bridge) with `queues` queue pairs each, and their sockets in
/// `dir`.
fn layout(
    dir: &Path,
    ports: &[(&str, &str)],
    mode: SocketMode,
    queues: u16,
) -> (Layout, Vec<PathBuf>) {
    let mut layout = Layout::new().bridge("br0").bridge("br1");
    let mut sockets = Vec::new();
    for (port, bridge) in ports {
        let socket = dir.join(format!("{port}.sock"));
        layout = layout.port(vhost_user_with(
            port,
            bridge,
            VhostUserSettings {
                socket: socket.clone(),
                mode: Some(mode),
                queues: Some(queues),
                offloads: None,
            },
        ));
        sockets.push(socket);
    }
    (layout, sockets)
}

#[test]
fn guests_ping_through_server_ports_are_isolated_by_bridge_and_survive_qemu_and_switch_restarts() {
    let dir = TempDir::new("qemu-server");
    let (toml, sockets) = config(
        dir.path(),
        &[("vm1", "br0"), ("vm2", "br0"), ("vm3", "br1")],
        SocketMode::Server,
    );
    let mut daemon = Daemon::start(dir.path(), &toml, &sockets);
    let mut g1 = Guest::boot(dir.path(), &GuestSpec::new("g1", &sockets[0], 1, 2));
    let g2 = Guest::boot(dir.path(), &GuestSpec::new("g2", &sockets[1], 2, 1));
    let g3 = Guest::boot(dir.path(), &GuestSpec::new("g3", &sockets[2], 3, 1));

    // 20 pings each way with no loss.
    g1.wait_clean_round(0, "g1 -> g2 pings");
    g2.wait_clean_round(0, "g2 -> g1 pings");

    // g3 is on br1: it must never reach g1.
    wait_until(BOOT_AND_PING, "g3 to finish two ping rounds", || {
        (g3.rounds().len() >= 2).then_some(())
    });
    for (round, tx, rx) in g3.rounds() {
        assert_eq!((tx, rx), (20, 0), "g3 on br1 reached br0 in round {round}");
    }

    // Kill g1's QEMU and start it again: ping works again.
    g1.kill();
    daemon.wait_port_connected("vm1", false);
    let g1 = Guest::boot(dir.path(), &GuestSpec::new("g1b", &sockets[0], 1, 2));
    g1.wait_clean_round(0, "pings after g1's QEMU restarted");
    let after = g2.last_round();
    g2.wait_clean_round(after, "g2 -> g1 pings after the restart");
    assert!(daemon.metric("vringswitch_port_rx_packets_total", &[("port", "vm1")]) >= 40);

    // Reboot g2 (same QEMU, same vhost-user connection): ping works again afterwards.
    let connections = daemon.metric("vringswitch_port_connected", &[("port", "vm2")]);
    assert_eq!(connections, 1);
    g2.reset();
    wait_until(BOOT_AND_PING, "g2 to boot again", || {
        (g2.boots() >= 2).then_some(())
    });
    g2.wait_clean_round(0, "g2 -> g1 pings after g2 rebooted");
    let after = g1.last_round();
    g1.wait_clean_round(after, "g1 -> g2 pings after g2 rebooted");

    // SIGKILL the daemon and start it again: the guests, booted with README.md's example
    // (`reconnect=1` on the chardev), connect again by themselves and ping on.
    daemon.kill();
    let (r1, r2) = (g1.last_round(), g2.last_round());
    std::thread::sleep(Duration::from_secs(2));
    daemon.restart(&sockets);
    g1.wait_clean_round(r1 + 1, "g1 pings after the daemon restart");
    g2.wait_clean_round(r2 + 1, "g2 pings after the daemon restart");
}

#[test]
fn client_mode_survives_daemon_restart_and_qemu_restart() {
    let dir = TempDir::new("qemu-client");
    let (toml, sockets) = config(
        dir.path(),
        &[("vm1", "br0"), ("vm2", "br0")],
        SocketMode::Client,
    );
    // QEMU listens (server=on): the guests come up first, the switch connects later.
    let g1 = Guest::boot(
        dir.path(),
        &GuestSpec::new("g1", &sockets[0], 1, 2).listening(),
    );
    let g2 = Guest::boot(
        dir.path(),
        &GuestSpec::new("g2", &sockets[1], 2, 1).listening(),
    );
    wait_until(Duration::from_secs(10), "QEMU sockets", || {
        sockets.iter().all(|s| s.exists()).then_some(())
    });
    let mut daemon = Daemon::start(dir.path(), &toml, &[]);
    g1.wait_clean_round(0, "g1 -> g2 pings in client mode");
    g2.wait_clean_round(0, "g2 -> g1 pings in client mode");

    // SIGKILL the daemon while both guests stay up, and start it again.
    daemon.kill();
    let (r1, r2) = (g1.last_round(), g2.last_round());
    std::thread::sleep(Duration::from_secs(2));
    daemon.restart(&[]);
    g1.wait_clean_round(r1 + 1, "g1 pings after the daemon restart");
    g2.wait_clean_round(r2 + 1, "g2 pings after the daemon restart");

    // Restart g1's QEMU (the socket server): the switch reconnects by itself.
    let mut g1 = g1;
    g1.kill();
    let g1 = Guest::boot(
        dir.path(),
        &GuestSpec::new("g1b", &sockets[0], 1, 2).listening(),
    );
    g1.wait_clean_round(0, "g1 pings after its QEMU restarted");
    let after = g2.last_round();
    g2.wait_clean_round(after, "g2 pings after g1's QEMU restarted");
    assert!(
        daemon
            .log_text()
            .matches("vhost-user frontend connected port=vm1")
            .count()
            >= 3
    );
}

/// QEMU 7.2 sends its memory table once per queue pair (ADD_MEM_REG from each queue pair's
/// vhost device): the duplicates must be taken, and both queue pairs must carry frames.
#[test]
fn multiqueue_guests_ping_over_both_queue_pairs() {
    let dir = TempDir::new("qemu-mq");
    let (layout, sockets) = layout(
        dir.path(),
        &[("vm1", "br0"), ("vm2", "br0")],
        SocketMode::Server,
        2,
    );
    let daemon = Daemon::start(dir.path(), &layout.toml(), &sockets);
    let g1 = Guest::boot(
        dir.path(),
        &GuestSpec::new("g1", &sockets[0], 1, 2).multiqueue(2, 2),
    );
    let g2 = Guest::boot(
        dir.path(),
        &GuestSpec::new("g2", &sockets[1], 2, 1).multiqueue(2, 2),
    );
    // Each CPU of each guest pings the other guest, 20 of 20.
    for (g, name) in [(&g1, "g1"), (&g2, "g2")] {
        for label in ["VS-PING", "VS-PING1"] {
            g.wait_clean_round_of(label, 0, &format!("{name}'s {label} rounds"));
        }
        assert!(
            g.text().contains("cpus=2 queues=2"),
            "{name} did not come up with two queue pairs:\n{}",
            g.text()
        );
    }
    for port in ["vm1", "vm2"] {
        assert_eq!(
            daemon.metric("vringswitch_port_protocol_errors_total", &[("port", port)]),
            0
        );
        for queue in ["0", "1"] {
            let l = [("port", port), ("queue", queue)];
            let rx = daemon.metric("vringswitch_port_queue_rx_packets_total", &l);
            let tx = daemon.metric("vringswitch_port_queue_tx_packets_total", &l);
            assert!(
                rx > 0 && tx > 0,
                "port {port} queue pair {queue}: {rx} frames from the guest, {tx} to it"
            );
        }
        let show = daemon.vringctl(&["port", "show", port]);
        let lines: Vec<Vec<&str>> = show
            .lines()
            .map(|l| l.split_whitespace().collect())
            .collect();
        assert_eq!(lines[1][6], "2", "active queue pairs of {port}:\n{show}");
        assert!(
            lines
                .iter()
                .any(|l| l.first() == Some(&"1") && l.len() == 3),
            "no line for queue pair 1 in vringctl port show {port}:\n{show}"
        );
    }
}

/// A microvm guest (virtio-mmio, no PCI) on one port pings a PCI guest on another.
#[test]
fn a_microvm_guest_pings_a_pci_guest() {
    let dir = TempDir::new("qemu-microvm");
    let (toml, sockets) = config(
        dir.path(),
        &[("vm1", "br0"), ("vm2", "br0")],
        SocketMode::Server,
    );
    let _daemon = Daemon::start(dir.path(), &toml, &sockets);
    let micro = Guest::boot(
        dir.path(),
        &GuestSpec::new("micro", &sockets[0], 1, 2).machine(Machine::Microvm),
    );
    let pci = Guest::boot(dir.path(), &GuestSpec::new("pci", &sockets[1], 2, 1));
    micro.wait_clean_round(0, "microvm -> PCI guest pings");
    pci.wait_clean_round(0, "PCI guest -> microvm pings");
}

#[test]
fn a_guest_reaches_a_network_namespace_through_a_tap_port_with_ping_and_100_mb_of_tcp_both_ways() {
    guest_reaches_a_namespace("tap");
}

#[test]
fn a_guest_reaches_a_network_namespace_through_an_afxdp_port_with_ping_and_100_mb_of_tcp_both_ways()
{
    guest_reaches_a_namespace("afxdp");
}

/// A guest on a vhost-user port reaches 10.0.0.1 in a network namespace through an uplink
/// port of `kind`: a TAP interface moved into the namespace, or an AF_XDP socket on one
/// end of a veth pair whose other end is there (with TX checksumming off: XDP on veth
/// hands over frames whose checksum the kernel left unfinished). Pings both ways lose
/// nothing, and 100 MiB over TCP each way arrive with the md5 their sender computed.
///
/// The guest sends TSO frames: a TAP port passes them to the kernel as they are, an AF_XDP
/// port has the switch cut them. The kernel sends TSO frames through a TAP port, passed to
/// the guest as they are.
fn guest_reaches_a_namespace(kind: &str) {
    const MB: u64 = 100;
    use std::os::unix::process::CommandExt;
    use std::process::{Command, Stdio};
    let dir = TempDir::new(&format!("qemu-{kind}"));
    let id = std::process::id() % 100_000;
    let (ns, ifname) = (format!("vs-q{kind}-{id}"), format!("vsq{id}"));
    let netns = vringswitch_tests::netns::Netns::new(&ns);
    let ip = vringswitch_tests::netns::ip;
    // Deleting the namespace deletes the veth pair; a TAP interface goes with the daemon.
    let (layout, sockets) = layout(dir.path(), &[("vm2", "br0")], SocketMode::Server, 1);
    let uplink = match kind {
        "tap" => tap("uplink", "br0", &ifname),
        _ => afxdp("uplink", "br0", &ifname),
    };
    let toml = layout.port(uplink).toml();
    let inner = if kind == "tap" {
        ifname.clone()
    } else {
        ip(&[
            "link", "add", &ifname, "type", "veth", "peer", "name", "inner", "netns", &ns,
        ]);
        let out = Command::new("ip")
            .args(["netns", "exec", &ns, "ethtool", "-K", "inner", "tx", "off"])
            .output()
            .expect("run ethtool (apt-get install ethtool)");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        "inner".to_owned()
    };
    let daemon = Daemon::start(dir.path(), &toml, &sockets);
    if kind == "tap" {
        ip(&["link", "set", &ifname, "netns", &ns]);
    }
    netns.ip(&["addr", "add", "10.0.0.1/24", "dev", &inner]);
    netns.ip(&["link", "set", &inner, "up"]);
    // The receiving end in the namespace; its stdin stays open so that it reads to the end.
    let received = dir.path().join("received");
    let listener = Command::new("ip")
        .args(["netns", "exec", &ns, "sh", "-c"])
        .arg(format!(
            "sleep 600 | busybox nc -l -p 5001 > '{}'",
            received.display()
        ))
        .stdout(Stdio::null())
        .process_group(0)
        .spawn()
        .expect("start the listener in the namespace");
    let _listener = vringswitch_tests::daemon::KillOnDrop(listener);

    // The guest (10.0.0.2) pings the namespace's 10.0.0.1, sends it 100 MiB and takes as
    // much from it.
    let spec = GuestSpec::new("g2", &sockets[0], 2, 1)
        .sending("10.0.0.1", 5001, MB as u32)
        .receiving(&[5002]);
    let g2 = Guest::boot(dir.path(), &spec);
    g2.wait_clean_round(0, "g2 -> namespace pings through the uplink");
    // And the namespace pings the guest.
    let out = Command::new("ip")
        .args([
            "netns", "exec", &ns, "busybox", "ping", "-c", "10", "-i", "0.2", "-W", "2", "10.0.0.2",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("10 packets transmitted, 10 packets received, 0% packet loss"),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let rc = wait_until(
        Duration::from_secs(600),
        "the guest's 100 MiB transfer",
        || g2.console.sent_status(),
    );
    assert_eq!(rc, 0, "the guest's nc failed: {}", g2.console.text());
    let want = g2.console.sent_md5().expect("the guest printed its md5");
    wait_until(
        Duration::from_secs(30),
        "the whole file at the namespace",
        || {
            let len = std::fs::metadata(&received).map(|m| m.len()).unwrap_or(0);
            (len == MB << 20).then_some(())
        },
    );
    let out = Command::new("md5sum").arg(&received).output().unwrap();
    let md5 = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        md5.split_whitespace().next(),
        Some(want.as_str()),
        "md5 of what arrived"
    );
    // In bytes: TSO frames from the guest are fewer than the segments the kernel sees.
    let bytes = daemon.metric("vringswitch_port_rx_bytes_total", &[("port", "vm2")]);
    assert!(bytes > MB << 20, "{bytes} bytes from the guest");
    let to_kernel = daemon.metric("vringswitch_port_tx_bytes_total", &[("port", "uplink")]);
    assert!(to_kernel > MB << 20, "{to_kernel} bytes to the kernel");

    // And back: 100 MiB from the namespace to the guest.
    let file = dir.path().join("to-guest");
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "head -c {} /dev/urandom > '{}' && md5sum '{}'",
            MB << 20,
            file.display(),
            file.display()
        ))
        .output()
        .unwrap();
    let sent = String::from_utf8_lossy(&out.stdout);
    let sent = sent
        .split_whitespace()
        .next()
        .expect("md5 of the file")
        .to_owned();
    let out = Command::new("timeout")
        .arg("600")
        .args(["ip", "netns", "exec", &ns, "sh", "-c"])
        .arg(format!("busybox nc 10.0.0.2 5002 < '{}'", file.display()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the namespace's nc: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = wait_until(Duration::from_secs(60), "the guest's md5", || {
        g2.console.received_md5(5002)
    });
    assert_eq!(got, sent, "md5 of what reached the guest");

    let offloads = |port, action| {
        daemon.metric(
            "vringswitch_port_offloads_total",
            &[("port", port), ("action", action)],
        )
    };
    let (to_kernel, to_guest) = if kind == "tap" {
        (offloads("uplink", "passed"), offloads("vm2", "passed"))
    } else {
        (offloads("uplink", "segmented"), 0)
    };
    eprintln!("{kind}: offloaded frames to the kernel {to_kernel}, from it {to_guest}");
    assert!(to_kernel > 100, "{to_kernel} TSO frames to the kernel");
    if kind == "tap" {
        assert!(
            to_guest > 100,
            "{to_guest} TSO frames from the kernel to the guest"
        );
    }
    for port in ["vm2", "uplink"] {
        let bad = daemon.metric(
            "vringswitch_port_drops_total",
            &[("port", port), ("reason", "bad_offload")],
        );
        assert_eq!(bad, 0, "bad offloads from {port}");
    }
}

/// Offloads between real guests: `a` and `b` negotiate checksums and TSO both ways; `c`'s
/// NIC takes neither (`guest_tso4=off,guest_tso6=off,guest_csum=off`) but sends TSO frames.
/// 100 MiB go from `a` to `b` (TSO frames passed through), from `a` to `c` (cut into
/// segments by the switch), from `c` to `b`, and over IPv6 from `b` to `c` (TSO6 frames
/// cut), at once or in turn, each with the md5 its sender computed; the counters say what
/// the switch did.
#[test]
fn tso_guests_and_a_guest_without_offloads_exchange_100_mb_with_matching_md5() {
    const MB: u32 = 100;
    let dir = TempDir::new("qemu-tso");
    let (toml, sockets) = config(
        dir.path(),
        &[("a", "br0"), ("b", "br0"), ("c", "br0")],
        SocketMode::Server,
    );
    let daemon = Daemon::start(dir.path(), &toml, &sockets);
    let (to_b, to_c) = ("10.0.0.3", "10.0.0.4");
    let a = Guest::boot(
        dir.path(),
        &GuestSpec::new("a", &sockets[0], 2, 3).sending_to(&[(to_b, 5001), (to_c, 5001)], MB),
    );
    let b = Guest::boot(
        dir.path(),
        &GuestSpec::new("b", &sockets[1], 3, 2)
            .receiving(&[5001, 5002])
            .sending_to(&[("fd00::4", 5003)], MB),
    );
    let c = Guest::boot(
        dir.path(),
        &GuestSpec::new("c", &sockets[2], 4, 3)
            .receiving(&[5001, 5003])
            .sending_to(&[(to_b, 5002)], MB)
            .nic("guest_tso4=off,guest_tso6=off,guest_csum=off"),
    );
    // Feature bits as the guests' drivers show them.
    const GUEST_CSUM: u32 = 1;
    const GUEST_TSO4: u32 = 7;
    const HOST_TSO4: u32 = 11;
    for (g, name) in [(&a, "a"), (&b, "b")] {
        let feature =
            |bit| wait_until(BOOT_AND_PING, "the guest's features", || g.has_feature(bit));
        assert!(feature(HOST_TSO4), "{name} sends TSO frames");
        assert!(feature(GUEST_TSO4), "{name} takes TSO frames");
    }
    let feature = |bit| wait_until(BOOT_AND_PING, "c's features", || c.has_feature(bit));
    assert!(feature(HOST_TSO4), "c sends TSO frames");
    assert!(
        !feature(GUEST_TSO4) && !feature(GUEST_CSUM),
        "c takes no offloads"
    );

    let transfer = Duration::from_secs(1200);
    for (sender, receiver, to, port) in [
        (&a, &b, to_b, 5001),
        (&c, &b, to_b, 5002),
        (&a, &c, to_c, 5001),
        (&b, &c, "fd00::4", 5003),
    ] {
        let what = format!("{MB} MiB to {to}:{port}");
        let rc = wait_until(transfer, &what, || sender.sent_status_to(to, port));
        assert_eq!(rc, 0, "{what}: the sender's nc failed:\n{}", sender.text());
        let got = wait_until(Duration::from_secs(60), &what, || {
            receiver.received_md5(port)
        });
        let sent = sender
            .sent_md5_to(to, port)
            .expect("the sender printed its md5");
        assert_eq!(got, sent, "{what}: md5 of what arrived");
    }
    let offloads = |port, action| {
        daemon.metric(
            "vringswitch_port_offloads_total",
            &[("port", port), ("action", action)],
        )
    };
    let (passed, segmented) = (offloads("b", "passed"), offloads("c", "segmented"));
    assert!(passed > 1000, "{passed} TSO frames passed to b");
    assert!(
        segmented > 1000,
        "{segmented} frames cut into segments for c"
    );
    assert_eq!(offloads("c", "passed"), 0, "c takes nothing as it is");
    for port in ["a", "b", "c"] {
        let bad = daemon.metric(
            "vringswitch_port_drops_total",
            &[("port", port), ("reason", "bad_offload")],
        );
        assert_eq!(bad, 0, "bad offloads from {port}");
    }
    // Fewer frames than 1500-byte ones would have been: the senders used TSO.
    let frames = daemon.metric("vringswitch_port_rx_packets_total", &[("port", "a")]);
    let unsegmented = ((2 * u64::from(MB)) << 20) / 1448;
    assert!(frames < unsegmented / 2, "{frames} frames from a");
    eprintln!("a sent {frames} frames; b got {passed} TSO frames passed, c {segmented} cut");
}
