//! `vringctl upgrade`: the daemon replaced by the binary on disk while test VMs exchange
//! frames (docs/operations.md, "Upgrading"; docs/architecture.md, "Hitless upgrade").
//! Every connection is carried on (no socket closes: no reconnect is counted and each VM's
//! protocol connection is still answered), every frame taken from a TX ring reaches its
//! ring, the FDB is carried (no flooding after), counters never go backwards; and a new
//! binary that exits, hangs or speaks no common handover version leaves the old daemon
//! serving, with a message saying why.

use std::os::unix::net::UnixListener;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use vringswitch_tests::api::call;
use vringswitch_tests::daemon::{binary, Daemon, TempDir};
use vringswitch_tests::frontend::{TestVm, VmOptions};
use vringswitch_tests::layout::{vhost_user_in, Layout, SocketMode};
use vringswitch_tests::setup::{server_port, T};
use vringswitch_tests::{frame, mac, wait_until, BROADCAST};

/// The learnt addresses of `bridge`: (MAC, port), sorted.
fn learnt(d: &Daemon, bridge: &str) -> Vec<(String, String)> {
    let (code, fdb) = call(d, "GET", &format!("/v1/bridges/{bridge}/fdb"), None);
    assert_eq!(code, 200, "{fdb}");
    let mut out: Vec<(String, String)> = fdb
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["static"] != true)
        .map(|e| {
            (
                e["mac"].as_str().unwrap().to_owned(),
                e["port"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    out.sort();
    out
}

/// Every `vringswitch_*_total` series of /metrics, by its full name and labels.
fn counters(d: &Daemon) -> std::collections::BTreeMap<String, u64> {
    d.metrics()
        .lines()
        .filter(|l| l.starts_with("vringswitch_") && !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let name = series.split('{').next()?;
            name.ends_with("_total")
                .then(|| Some((series.to_owned(), value.parse::<f64>().ok()? as u64)))?
        })
        .collect()
}

#[test]
fn ten_upgrades_carry_every_connection_frame_address_and_counter() {
    let dir = TempDir::new("upgrade");
    let socket = |p: &str| dir.path().join(format!("{p}.sock"));
    // e's VM listens (QEMU's server=on): the daemon connects to it.
    let e_listener = UnixListener::bind(socket("e")).unwrap();
    let layout = Layout::new()
        .bridge("br0")
        .ports(["a", "b", "c"].map(|p| server_port(dir.path(), p, "br0", 1)))
        .port(server_port(dir.path(), "d", "br0", 2))
        .port(vhost_user_in(
            "e",
            "br0",
            &socket("e"),
            SocketMode::Client,
            Some(1),
        ));
    let mut d = Daemon::start(dir.path(), &layout.toml(), &layout.sockets());
    let vm = |p: &str, n: u8, pairs: u16| {
        let opts = VmOptions {
            queue_pairs: pairs,
            ..VmOptions::default()
        };
        let mut vm = TestVm::connect(&socket(p), mac(n), opts);
        for q in 0..pairs {
            vm.post_rx(TestVm::rx(q), 200, 2048);
        }
        vm
    };
    let (mut a, mut b, mut c) = (vm("a", 1, 1), vm("b", 2, 1), vm("c", 3, 1));
    let mut dq = vm("d", 4, 2);
    let mut e = TestVm::accept(&e_listener, mac(5), VmOptions::default());
    e.post_rx(TestVm::rx(0), 200, 2048);
    for p in ["a", "b", "c", "d", "e"] {
        d.wait_port_connected(p, true);
    }
    // Every VM but c makes itself known; what is flooded meanwhile is set aside.
    for (vm, n) in [(&mut a, 1), (&mut b, 2), (&mut e, 5)] {
        vm.send(TestVm::tx(0), &frame(BROADCAST, mac(n), 60, n));
    }
    dq.send(TestVm::tx(1), &frame(BROADCAST, mac(4), 60, 4));
    std::thread::sleep(Duration::from_millis(300));
    for vm in [&mut a, &mut b, &mut c, &mut e] {
        vm.recv(TestVm::rx(0));
    }
    dq.recv(TestVm::rx(0));
    dq.recv(TestVm::rx(1));
    let fdb = learnt(&d, "br0");
    assert_eq!(fdb.len(), 4, "{fdb:?}");

    for round in 0..10u8 {
        let before = counters(&d);
        let old_pid = d.pid();
        // Frames in flight while the daemon changes: a to b on one ring, d to e on its
        // second queue pair.
        let to_b: Vec<Vec<u8>> = (0..40u8)
            .map(|i| frame(mac(2), mac(1), 100, round.wrapping_mul(40).wrapping_add(i)))
            .collect();
        let to_e: Vec<Vec<u8>> = (0..20u8)
            .map(|i| frame(mac(5), mac(4), 200, round.wrapping_mul(20).wrapping_add(i)))
            .collect();
        a.offer_quietly(TestVm::tx(0), &to_b);
        dq.offer_quietly(TestVm::tx(1), &to_e);
        a.kick(TestVm::tx(0));
        dq.kick(TestVm::tx(1));
        let answer = d
            .upgrade(&[])
            .unwrap_or_else(|e| panic!("round {round}: {e}"));
        assert_ne!(d.pid(), old_pid);
        assert_eq!(answer["ports"], 5, "{answer}");
        assert_eq!(answer["not_carried"], Value::Array(vec![]), "{answer}");
        let got: Vec<Vec<u8>> = b
            .expect_frames(TestVm::rx(0), 40, T)
            .into_iter()
            .map(|r| r.frame)
            .collect();
        assert_eq!(got, to_b, "round {round}: a's frames, each once, in order");
        let got: Vec<Vec<u8>> = e
            .expect_frames(TestVm::rx(0), 20, T)
            .into_iter()
            .map(|r| r.frame)
            .collect();
        assert_eq!(got, to_e, "round {round}: d's frames, each once, in order");
        // Their buffers back, for the next round.
        b.post_rx(TestVm::rx(0), 40, 2048);
        e.post_rx(TestVm::rx(0), 20, 2048);
        // Nothing flooded: the new daemon knew where b and e are.
        c.expect_nothing(TestVm::rx(0), Duration::from_millis(20));
        a.wait_tx_done(TestVm::tx(0), T);
        dq.wait_tx_done(TestVm::tx(1), T);
        assert_eq!(
            learnt(&d, "br0"),
            fdb,
            "round {round}: the FDB carried over"
        );
        // No counter went backwards; a's and b's moved by the round's frames.
        let after = counters(&d);
        for (series, was) in &before {
            let now = after.get(series).copied();
            assert!(
                now.is_some_and(|n| n >= *was),
                "round {round}: {series} went from {was} to {now:?}"
            );
        }
        let rx_a = "vringswitch_port_rx_packets_total{bridge=\"br0\",port=\"a\"}";
        assert!(after[rx_a] >= before[rx_a] + 40, "{rx_a}");
    }
    // No connection was ever closed: none counted as a reconnect, and each VM's protocol
    // connection is answered by the last daemon.
    for p in ["a", "b", "c", "d", "e"] {
        assert_eq!(
            d.metric("vringswitch_port_reconnects_total", &[("port", p)]),
            0,
            "port {p}"
        );
    }
    use vhost::VhostBackend;
    for vm in [&mut a, &mut b, &mut c, &mut dq, &mut e] {
        assert_ne!(
            vm.frontend.get_features().expect("GET_FEATURES answered"),
            0
        );
    }
    // Both directions still go.
    b.send(TestVm::tx(0), &frame(mac(1), mac(2), 80, 7));
    assert_eq!(
        a.expect_frames(TestVm::rx(0), 1, T)[0].frame,
        frame(mac(1), mac(2), 80, 7)
    );
    let log = d.log_text();
    assert_eq!(log.matches("upgraded: the new process serves").count(), 10);
    assert!(!log.contains("frontend disconnected"), "{log}");
}

/// A daemon running a copy of the binary in `dir`, which the test may then replace.
fn daemon_from_copy(dir: &Path, tag_ports: &[&str]) -> (Daemon, std::path::PathBuf) {
    let exe = dir.join("vringswitch");
    std::fs::copy(binary(), &exe).unwrap();
    let layout = Layout::new()
        .bridge("br0")
        .ports(tag_ports.iter().map(|p| server_port(dir, p, "br0", 1)));
    let d = Daemon::start_binary(dir, &layout.toml(), &layout.sockets(), &[], &exe);
    (d, exe)
}

/// Puts `content` (a script, or a binary's bytes) at `path` as an executable, replacing
/// what is there as a package manager does (a new file renamed over the old one).
fn install(path: &Path, content: &[u8]) {
    use std::os::unix::fs::PermissionsExt;
    let next = path.with_extension("new");
    std::fs::write(&next, content).unwrap();
    std::fs::set_permissions(&next, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::rename(&next, path).unwrap();
}

#[test]
fn a_new_binary_that_fails_leaves_the_old_one_serving_and_says_why() {
    let dir = TempDir::new("upgrade-refused");
    let (mut d, exe) = daemon_from_copy(dir.path(), &["a", "b"]);
    let sock = |p: &str| dir.path().join(format!("{p}.sock"));
    let mut a = TestVm::connect(&sock("a"), mac(1), VmOptions::default());
    let mut b = TestVm::connect(&sock("b"), mac(2), VmOptions::default());
    a.post_rx(TestVm::rx(0), 64, 2048);
    b.post_rx(TestVm::rx(0), 64, 2048);
    d.wait_port_connected("a", true);
    d.wait_port_connected("b", true);
    let pid = d.pid();
    let mut seed = 0u8;
    let mut still_forwards = |a: &mut TestVm, b: &mut TestVm, what: &str| {
        seed += 1;
        a.send(TestVm::tx(0), &frame(mac(2), mac(1), 64, seed));
        let got = b.expect_frames_at_least(TestVm::rx(0), 1, T);
        assert_eq!(
            got.last().unwrap().frame,
            frame(mac(2), mac(1), 64, seed),
            "{what}"
        );
    };
    still_forwards(&mut a, &mut b, "before");

    // 1. A binary that exits at once.
    install(
        &exe,
        b"#!/bin/sh\necho 'new binary: broken on purpose' >&2\nexit 3\n",
    );
    let e = d
        .upgrade(&[])
        .expect_err("an upgrade to a binary that exits");
    assert!(e.contains("exited at start") && e.contains("3"), "{e}");
    assert!(e.contains("serves on"), "{e}");
    assert_eq!(d.pid(), pid);
    still_forwards(&mut a, &mut b, "after a binary that exits");

    // 2. A binary that hangs: killed after the deadline.
    install(&exe, b"#!/bin/sh\nexec sleep 600\n");
    let started = std::time::Instant::now();
    let e = d
        .upgrade(&["--deadline", "2"])
        .expect_err("an upgrade to a binary that hangs");
    assert!(e.contains("did not answer in time"), "{e}");
    assert!(started.elapsed() < Duration::from_secs(10));
    let hung = std::process::Command::new("pgrep")
        .args(["-f", "sleep 600"])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&hung.stdout).trim().is_empty() || !hung.status.success(),
        "the hung binary was left running"
    );
    still_forwards(&mut a, &mut b, "after a binary that hangs");

    // 3. A binary of a release that speaks other handover versions.
    let fake = binary().with_file_name("vs-fake-upgrade");
    assert!(
        fake.exists(),
        "{} is missing: cargo build --workspace --bins",
        fake.display()
    );
    install(&exe, &std::fs::read(&fake).unwrap());
    std::fs::write(exe.with_extension("mode"), "versions 7 9").unwrap();
    let e = d
        .upgrade(&[])
        .expect_err("an upgrade to an incompatible binary");
    assert!(
        e.contains("no handover version in common")
            && e.contains("hands over versions 1 to 2")
            && e.contains("vringswitch 9.9.9 takes 7 to 9"),
        "{e}"
    );
    still_forwards(&mut a, &mut b, "after an incompatible binary");

    // 4. A binary that takes everything, after the old workers stopped and every port let
    //    go, then refuses it; then one that crashes once it has it all. Each time the old
    //    daemon takes every port back from its own copies and forwards on, the VMs none
    //    the wiser.
    for (mode, says) in [
        ("refuse-state", "this test binary refuses every state"),
        (
            "crash-after-state",
            "exited while taking over (exit status: 101)",
        ),
    ] {
        std::fs::write(exe.with_extension("mode"), mode).unwrap();
        let e = d.upgrade(&[]).expect_err(mode);
        assert!(e.contains(says), "{mode}: {e}");
        assert_eq!(d.pid(), pid);
        still_forwards(&mut a, &mut b, mode);
        b.send(TestVm::tx(0), &frame(mac(1), mac(2), 64, 77));
        assert_eq!(
            a.expect_frames_at_least(TestVm::rx(0), 1, T)
                .last()
                .unwrap()
                .frame,
            frame(mac(1), mac(2), 64, 77),
            "{mode}: the other way"
        );
        use vhost::VhostBackend;
        a.frontend.get_features().expect("a's connection answered");
        b.frontend.get_features().expect("b's connection answered");
    }
    assert!(
        d.log_text().contains("vs-fake-upgrade: took"),
        "the fake got the state"
    );
    assert_eq!(
        d.metric("vringswitch_port_reconnects_total", &[("port", "a")]),
        0
    );

    // 5. The real binary, but a configuration it refuses (an operator's slip): the new
    //    process exits, its error in the log.
    install(&exe, &std::fs::read(binary()).unwrap());
    let config = std::fs::read_to_string(&d.config).unwrap();
    std::fs::write(&d.config, format!("{config}\n[dataplane\n")).unwrap();
    let e = d
        .upgrade(&[])
        .expect_err("an upgrade with a broken configuration");
    assert!(e.contains("exited at start"), "{e}");
    assert!(
        d.log_text().contains("vringswitch: error:"),
        "the new process said why"
    );
    still_forwards(
        &mut a,
        &mut b,
        "after a configuration the new binary refuses",
    );

    // Then, the configuration mended, the upgrade goes through, and b still gets a's
    // frames without either VM reconnecting.
    std::fs::write(&d.config, config).unwrap();
    d.upgrade(&[])
        .expect("the upgrade, once everything is right");
    assert_ne!(d.pid(), pid);
    still_forwards(&mut a, &mut b, "after the upgrade");
    assert_eq!(
        d.metric("vringswitch_port_reconnects_total", &[("port", "a")]),
        0
    );
}

#[test]
fn an_upgrade_is_refused_during_a_capture_or_a_migration_and_the_daemon_serves_on() {
    let dir = TempDir::new("upgrade-busy");
    let layout = Layout::new()
        .bridge("br0")
        .ports(["a", "b"].map(|p| server_port(dir.path(), p, "br0", 1)));
    let mut d = Daemon::start(dir.path(), &layout.toml(), &layout.sockets());
    let sock = |p: &str| dir.path().join(format!("{p}.sock"));
    let migrating = VmOptions {
        migration: true,
        ..VmOptions::default()
    };
    let mut a = TestVm::connect(&sock("a"), mac(1), migrating);
    let _b = TestVm::connect(&sock("b"), mac(2), VmOptions::default());
    d.wait_port_connected("a", true);
    let pid = d.pid();

    // A capture: its stream would end with the old process.
    let mut capture = std::process::Command::new(vringswitch_tests::daemon::vringctl())
        .args(["--api", &d.api, "capture", "b", "-w"])
        .arg(dir.path().join("b.pcapng"))
        .spawn()
        .unwrap();
    wait_until(T, "the capture to start", || {
        d.log_text()
            .contains("packet capture started")
            .then_some(())
    });
    let e = d.upgrade(&[]).expect_err("no upgrade during a capture");
    assert!(e.contains("packet capture is running on port b"), "{e}");
    let _ = capture.kill();
    let _ = capture.wait();
    wait_until(T, "the capture to end", || {
        d.log_text().contains("packet capture ended").then_some(())
    });

    // A migration's dirty logging on a.
    let _log = a.start_dirty_log();
    let e = d.upgrade(&[]).expect_err("no upgrade during a migration");
    assert!(
        e.contains("port a (vhost-user): its VM is being migrated"),
        "{e}"
    );
    a.stop_dirty_log();
    assert_eq!(d.pid(), pid, "the daemon serves on");
    d.upgrade(&[]).expect("upgraded once the migration ended");
    assert_eq!(
        d.metric("vringswitch_port_reconnects_total", &[("port", "a")]),
        0
    );
}

#[test]
fn a_process_given_a_handover_descriptor_that_is_no_channel_refuses_it() {
    for fd in ["0", "7", "nonsense"] {
        let out = std::process::Command::new(binary())
            .args(["--api", "127.0.0.1:1", "--handover-fd", fd])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "--handover-fd {fd} was taken");
        assert!(
            err.contains("--handover-fd") || err.contains("invalid value"),
            "--handover-fd {fd}: {err}"
        );
    }
}

/// `cat /sys/class/net/IF/FILE` in namespace `ns`.
fn sys_in(ns: &vringswitch_tests::netns::Netns, ifname: &str, file: &str) -> String {
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", &ns.0, "cat"])
        .arg(format!("/sys/class/net/{ifname}/{file}"))
        .output()
        .expect("ip netns exec");
    assert!(out.status.success(), "{ifname}/{file}");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[test]
fn a_tap_interface_is_carried_over_without_its_link_going_down() {
    use vringswitch_tests::layout::{tap_with, TapSettings};
    use vringswitch_tests::netns::{ip, ping_the_kernel, Netns};
    assert!(
        Path::new("/dev/net/tun").exists(),
        "/dev/net/tun is missing: load the tun module (modprobe tun)"
    );
    let dir = TempDir::new("upgrade-tap");
    let id = std::process::id() % 100_000;
    let ns = Netns::new(&format!("vs-upt-{id}"));
    let ifname = format!("vsu{id}");
    let vm_sock = dir.path().join("vm.sock");
    let layout = Layout::new()
        .bridge("br0")
        .port(server_port(dir.path(), "vm", "br0", 1))
        .port(tap_with(
            "up0",
            "br0",
            TapSettings {
                ifname: Some(ifname.clone()),
                mtu: Some(1400),
                offloads: None,
            },
        ));
    let mut d = Daemon::start(dir.path(), &layout.toml(), &layout.sockets());
    // The kernel's side lives in a namespace, where the new daemon cannot even see the
    // interface by name: it carries on its descriptor as it is.
    ip(&["link", "set", &ifname, "netns", &ns.0]);
    ns.ip(&["addr", "add", "10.77.0.1/24", "dev", &ifname]);
    ns.ip(&["link", "set", &ifname, "up"]);
    ping_the_kernel(&vm_sock, 1, &[&[0x5A; 1200]]);
    let ifindex = sys_in(&ns, &ifname, "ifindex");
    let carrier = sys_in(&ns, &ifname, "carrier_changes");
    for round in 0..3 {
        d.upgrade(&[])
            .unwrap_or_else(|e| panic!("round {round}: {e}"));
        ping_the_kernel(&vm_sock, 1, &[&[round; 1200]]);
        assert_eq!(
            sys_in(&ns, &ifname, "ifindex"),
            ifindex,
            "the same interface"
        );
        assert_eq!(
            sys_in(&ns, &ifname, "carrier_changes"),
            carrier,
            "round {round}: the interface's link never went down"
        );
        assert_eq!(sys_in(&ns, &ifname, "mtu"), "1400");
    }
    let (code, port) = call(&d, "GET", "/v1/ports/up0", None);
    assert_eq!(code, 200, "{port}");
    assert_eq!(port["state"]["connected"], true, "{port}");
    assert!(
        port["counters"]["rx_packets"].as_u64().unwrap() >= 8,
        "{port}"
    );
}

#[test]
fn a_vxlan_tunnel_is_carried_over_with_its_sockets_and_the_addresses_it_learnt() {
    use vringswitch_tests::layout::vxlan_static;
    use vringswitch_tests::netns::{kernel_vtep, ping_the_kernel};
    let dir = TempDir::new("upgrade-vxlan");
    let underlay = kernel_vtep("u", 3, 4242);
    let vm_sock = dir.path().join("vm.sock");
    let layout = Layout::new()
        .bridge("br0")
        .port(server_port(dir.path(), "vm", "br0", 1))
        .port(vxlan_static(
            "t0",
            "br0",
            4242,
            underlay.here,
            &[underlay.there],
        ));
    let mut d = Daemon::start(dir.path(), &layout.toml(), &layout.sockets());
    ping_the_kernel(&vm_sock, 1, &[&[0x5A; 1200]]);
    let learnt_before = d.log_text().matches("VXLAN tunnel open").count();
    assert_eq!(learnt_before, 1);
    for round in 0..3 {
        d.upgrade(&[])
            .unwrap_or_else(|e| panic!("round {round}: {e}"));
        ping_the_kernel(&vm_sock, 1, &[&[round; 1200]]);
    }
    // Each new process carried the sockets and the kernel's address on (none opened
    // the tunnel again).
    let log = d.log_text();
    assert_eq!(log.matches("VXLAN tunnel open").count(), 1, "{log}");
    assert!(
        log.contains("VXLAN tunnel carried on from the previous process port=t0 addresses=1"),
        "{log}"
    );
    let (code, port) = call(&d, "GET", "/v1/ports/t0", None);
    assert_eq!(code, 200, "{port}");
    assert_eq!(port["state"]["connected"], true, "{port}");
    assert!(
        port["counters"]["rx_packets"].as_u64().unwrap() >= 8,
        "{port}"
    );
}

#[test]
fn qemu_guests_lose_no_ping_and_no_byte_and_see_no_link_change_through_ten_upgrades() {
    use vringswitch_tests::guest::{Guest, GuestSpec, BOOT_AND_PING};
    const STREAM_MB: u32 = 120;
    let dir = TempDir::new("upgrade-qemu");
    // g1 is a multiqueue guest: each of its two CPUs pings over its own queue pair.
    let layout = Layout::new()
        .bridge("br0")
        .port(server_port(dir.path(), "g1", "br0", 2))
        .port(server_port(dir.path(), "g2", "br0", 1));
    let mut d = Daemon::start(dir.path(), &layout.toml(), &layout.sockets());
    let sock = |p: &str| dir.path().join(format!("{p}.sock"));
    let g1 = Guest::boot(
        dir.path(),
        &GuestSpec::new("g1", &sock("g1"), 1, 2)
            .multiqueue(2, 2)
            .sending("10.0.0.2", 5001, STREAM_MB)
            .pinging_every("0.01", 100)
            .counting("0.5"),
    );
    let g2 = Guest::boot(
        dir.path(),
        &GuestSpec::new("g2", &sock("g2"), 2, 1)
            .receiving(&[5001])
            .pinging_every("0.01", 100)
            .counting("0.5"),
    );
    g1.wait_clean_round(0, "g1 -> g2 pings");
    g1.wait_clean_round_of("VS-PING1", 0, "g1's second CPU's pings");
    g2.wait_clean_round(0, "g2 -> g1 pings");
    let md5 = wait_until(BOOT_AND_PING, "g1 to start its TCP stream", || {
        g1.sent_md5()
    });
    let carrier = |g: &Guest| {
        wait_until(T, "the guest's link counters", || {
            g.console.carrier_changes()
        })
    };
    let (c1, c2) = (carrier(&g1), carrier(&g2));
    let (r1, r2) = (g1.last_round(), g2.last_round());
    let last_of = |g: &Guest, label: &str| g.rounds_of(label).last().map_or(0, |r| r.0);
    let r1b = last_of(&g1, "VS-PING1");
    let mut paused = Vec::new();
    for round in 0..10 {
        let answer = d
            .upgrade(&[])
            .unwrap_or_else(|e| panic!("upgrade {round}: {e}"));
        paused.push(answer["paused_ms"].as_f64().unwrap());
    }
    assert!(
        g2.received_md5(5001).is_none(),
        "the stream ended before the last upgrade: make STREAM_MB larger"
    );
    // Rounds that began after the upgrades started and ended after the last one.
    let e1 = g1.wait_clean_round(g1.last_round(), "g1 pings after the upgrades");
    let e2 = g2.wait_clean_round(g2.last_round(), "g2 pings after the upgrades");
    let e1b = g1.wait_clean_round_of(
        "VS-PING1",
        last_of(&g1, "VS-PING1"),
        "g1's second CPU's pings after the upgrades",
    );
    let (lost1, rounds1) = g1.lost_pings(r1);
    let (lost2, rounds2) = g2.lost_pings(r2);
    let second: Vec<_> = g1
        .rounds_of("VS-PING1")
        .into_iter()
        .filter(|r| r.0 > r1b && r.0 <= e1b)
        .collect();
    let lost1b: u32 = second.iter().map(|&(_, tx, rx)| tx - rx.min(tx)).sum();
    assert_eq!(lost1b, 0, "g1's second queue pair lost pings: {second:?}");
    eprintln!(
        "ten upgrades: forwarding paused {paused:?} ms; pings of 10 ms lost: {lost1} over \
         {rounds1} rounds from g1, {lost2} over {rounds2} from g2 (to rounds {e1}, {e2})"
    );
    assert_eq!((lost1, lost2), (0, 0), "no ping lost");
    let got = wait_until(
        Duration::from_secs(300),
        "g2 to receive g1's stream",
        || g2.received_md5(5001),
    );
    assert_eq!(got, md5, "the stream's md5");
    wait_until(T, "fresh link counters", || {
        (g1.console.text().matches("VS-NETSTATS").count() > 0).then_some(())
    });
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(carrier(&g1), c1, "g1's link never changed");
    assert_eq!(carrier(&g2), c2, "g2's link never changed");
    for g in ["g1", "g2"] {
        let log =
            std::fs::read_to_string(dir.path().join(format!("{g}.qemu.log"))).unwrap_or_default();
        assert!(
            !log.contains("disconnect") && !log.contains("Failed"),
            "QEMU {g} noticed: {log}"
        );
        assert_eq!(
            d.metric("vringswitch_port_reconnects_total", &[("port", g)]),
            0
        );
    }
}

#[test]
fn upgrade_requests_are_checked_and_refused_with_reasons() {
    use vringswitch_tests::api::{assert_error, call_raw};
    let dir = TempDir::new("upgrade-api");
    let layout = Layout::new()
        .bridge("br0")
        .port(server_port(dir.path(), "a", "br0", 1));
    let d = Daemon::start(dir.path(), &layout.toml(), &layout.sockets());
    let pid = d.pid();
    for body in [
        r#"{"deadline_s": 0}"#,
        r#"{"deadline_s": 601}"#,
        r#"{"deadline_s": "soon"}"#,
        r#"{"deadline": 5}"#,
        r#"[5]"#,
    ] {
        let (code, answer) = call_raw(&d, "POST", "/v1/upgrade", body);
        assert_eq!(code, 400, "{body}: {answer}");
        assert_eq!(answer["error"], "bad_request", "{body}: {answer}");
    }
    let (code, answer) = call_raw(&d, "POST", "/v1/upgrade?now=1", "");
    assert_eq!(code, 400, "{answer}");
    assert_error(
        call(&d, "GET", "/v1/upgrade", None),
        405,
        "method_not_allowed",
        "",
    );
    assert_eq!(d.pid(), pid, "nothing was upgraded");
}

#[test]
fn after_a_crash_qemu_guests_reconnect_by_themselves_and_ping_again() {
    use vringswitch_tests::guest::{Guest, GuestSpec};
    let dir = TempDir::new("crash-qemu");
    let layout = Layout::new()
        .bridge("br0")
        .ports(["g1", "g2"].map(|p| server_port(dir.path(), p, "br0", 1)));
    let sockets = layout.sockets();
    let mut d = Daemon::start(dir.path(), &layout.toml(), &sockets);
    // Booted with README.md's example (`reconnect=1` on the chardev).
    let spec = |name: &str, n: u8, peer: u8| {
        GuestSpec::new(name, &dir.path().join(format!("{name}.sock")), n, peer)
            .pinging_every("0.01", 100)
            .counting("0.5")
    };
    let g1 = Guest::boot(dir.path(), &spec("g1", 1, 2));
    let _g2 = Guest::boot(dir.path(), &spec("g2", 2, 1));
    g1.wait_clean_round(0, "g1 -> g2 pings");
    let c1 = wait_until(T, "g1's link counters", || g1.console.carrier_changes());
    let before = g1.last_round();
    let killed = std::time::Instant::now();
    d.kill();
    d.restart(&sockets);
    let restarted = killed.elapsed();
    for p in ["g1", "g2"] {
        d.wait_port_connected(p, true);
    }
    let reconnected = killed.elapsed();
    g1.wait_clean_round(g1.last_round(), "g1 pings after the crash");
    let (lost, rounds) = g1.lost_pings(before);
    eprintln!(
        "crash recovery: daemon up again {restarted:?} after kill -9, both guests \
         reconnected after {reconnected:?}; {lost} pings of 10 ms lost (about {} ms without \
         forwarding) over {rounds} rounds",
        lost * 10
    );
    assert!(lost > 0, "a crash loses pings: the measure is wrong");
    assert!(
        reconnected < Duration::from_secs(10),
        "QEMU with reconnect=1 came back after {reconnected:?}"
    );
    // Unlike an upgrade, QEMU saw the socket close: the guest's link went down and up.
    std::thread::sleep(Duration::from_secs(1));
    let c1_after = g1.console.carrier_changes().unwrap();
    assert!(c1_after >= c1 + 2, "carrier changes {c1} -> {c1_after}");
}

/// A TAP interface renamed under its port (which carries on with its descriptor) could
/// not be found by a new process: the upgrade is refused before anything stops, saying
/// so, and everything serves on, the TAP port included.
#[test]
fn a_renamed_tap_interface_refuses_an_upgrade_and_everything_serves_on() {
    use vringswitch_tests::layout::{tap_with, TapSettings};
    let dir = TempDir::new("upgrade-renamed");
    let id = std::process::id() % 100_000;
    let (ifname, renamed) = (format!("vsy{id}"), format!("vsr{id}"));
    let layout = Layout::new()
        .bridge("br0")
        .ports(["a", "b"].map(|p| server_port(dir.path(), p, "br0", 1)))
        .port(tap_with(
            "up0",
            "br0",
            TapSettings {
                ifname: Some(ifname.clone()),
                mtu: None,
                offloads: None,
            },
        ));
    let mut d = Daemon::start(dir.path(), &layout.toml(), &layout.sockets());
    let sock = |p: &str| dir.path().join(format!("{p}.sock"));
    let mut a = TestVm::connect(&sock("a"), mac(1), VmOptions::default());
    let mut b = TestVm::connect(&sock("b"), mac(2), VmOptions::default());
    a.post_rx(TestVm::rx(0), 64, 2048);
    b.post_rx(TestVm::rx(0), 64, 2048);
    d.wait_port_connected("a", true);
    d.wait_port_connected("b", true);
    let pid = d.pid();
    let ip = |args: &[&str]| {
        let ok = std::process::Command::new("ip")
            .args(args)
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "ip {args:?}");
    };
    ip(&["link", "set", &ifname, "down"]);
    ip(&["link", "set", &ifname, "name", &renamed]);
    let e = d
        .upgrade(&[])
        .expect_err("an upgrade with a renamed TAP interface");
    assert!(
        e.contains(&format!(
            "port up0 (tap): its interface {ifname} was renamed {renamed}"
        )),
        "{e}"
    );
    assert_eq!(d.pid(), pid);
    for seed in 1..=3u8 {
        let sent = frame(mac(2), mac(1), 64, seed);
        a.send(TestVm::tx(0), &sent);
        // The kernel's own frames from the TAP interface (IPv6 multicast listener reports
        // when its link changes) are flooded to b too: look for ours among them.
        wait_until(T, "a's frame at b", || {
            let got = b.recv(TestVm::rx(0));
            b.post_rx(TestVm::rx(0), got.len(), 2048);
            got.iter().any(|r| r.frame == sent).then_some(())
        });
    }
    // The TAP port kept its interface (it would have gone with its last descriptor).
    let (_, port) = call(&d, "GET", "/v1/ports/up0", None);
    assert_eq!(port["state"]["connected"], true, "{port}");
    ip(&["link", "set", &renamed, "name", &ifname]);
    d.upgrade(&[])
        .expect("upgraded once the interface has its name back");
    assert_eq!(
        d.metric("vringswitch_port_reconnects_total", &[("port", "a")]),
        0
    );
}

#[test]
fn connections_security_groups_track_are_carried_over_and_judged_by_the_new_rules() {
    use vringswitch_tests::packets::{arp_announcement, fragment, tcp, udp};
    let dir = TempDir::new("upgrade-sg");
    let group: vringswitch_config::SecurityGroupSpec = serde_json::from_value(serde_json::json!({
        "name": "web", "rules": [
            {"direction": "ingress", "protocol": "tcp", "port_range_min": 22,
             "port_range_max": 22, "remote_group": "web"},
            {"direction": "ingress", "protocol": "udp", "remote_group": "web"},
            {"direction": "egress"}]}))
    .unwrap();
    let member = |p: &str, n: u8| {
        let mut spec = server_port(dir.path(), p, "br0", 1);
        spec.security_groups = Some(vec!["web".into()]);
        spec.allowed_ips = Some(vec![format!("10.0.0.{n}")]);
        spec
    };
    let layout = Layout::new()
        .bridge("br0")
        .ports([member("a", 1), member("b", 2)])
        .security_groups([group]);
    let mut d = Daemon::start(dir.path(), &layout.toml(), &layout.sockets());
    let vm = |p: &str, n: u8| {
        let mut vm = TestVm::connect(
            &dir.path().join(format!("{p}.sock")),
            mac(n),
            VmOptions::default(),
        );
        vm.post_rx(TestVm::rx(0), 64, 2048);
        vm
    };
    let (mut a, mut b) = (vm("a", 1), vm("b", 2));
    d.wait_port_connected("a", true);
    d.wait_port_connected("b", true);
    let through = |from: &mut TestVm, to: &mut TestVm, f: &[u8], n: usize| {
        from.send(TestVm::tx(0), f);
        from.wait_tx_done(TestVm::tx(0), T);
        std::thread::sleep(Duration::from_millis(100));
        let got = to.recv(TestVm::rx(0));
        to.post_rx(TestVm::rx(0), got.len(), 2048);
        assert_eq!(got.len(), n, "frames delivered");
    };
    through(&mut a, &mut b, &arp_announcement(1), 1);
    through(&mut b, &mut a, &arp_announcement(2), 1);
    // A TCP connection to 22, a UDP flow the other way, a datagram's first fragment.
    through(&mut a, &mut b, &tcp(1, 2, (40000, 22), |t| t.syn()), 1);
    through(
        &mut b,
        &mut a,
        &tcp(2, 1, (22, 40000), |t| t.syn().ack(1001)),
        1,
    );
    through(&mut a, &mut b, &tcp(1, 2, (40000, 22), |t| t.ack(1)), 1);
    through(&mut b, &mut a, &udp(2, 1, (6000, 53), b"q"), 1);
    through(&mut a, &mut b, &fragment(1, 2, 0x77, 0), 1);
    let total = |d: &Daemon| {
        let (_, v) = call(d, "GET", "/v1/conntrack", None);
        v["total"].as_u64().unwrap()
    };
    // The fragment's datagram: its UDP connection, and its verdict for the rest.
    assert_eq!(total(&d), 4);

    d.upgrade(&[]).expect("an upgrade with connections tracked");
    assert_eq!(total(&d), 4, "every connection carried over");
    let (_, v) = call(&d, "GET", "/v1/conntrack?protocol=tcp", None);
    let c = &v["connections"][0];
    assert_eq!(
        (
            c["state"].as_str(),
            c["port"].as_str(),
            c["bridge"].as_str()
        ),
        (Some("ESTABLISHED"), Some("a"), Some("br0")),
        "{v}"
    );
    // Each goes on where it was: an established segment (a new process without the
    // connection would find it invalid), the UDP reply, the datagram's next fragment.
    through(&mut a, &mut b, &tcp(1, 2, (40000, 22), |t| t.ack(1)), 1);
    through(&mut a, &mut b, &udp(1, 2, (53, 6000), b"r"), 1);
    through(&mut a, &mut b, &fragment(1, 2, 0x77, 5), 1);
    for p in ["a", "b"] {
        for reason in ["ct_invalid", "acl_denied", "ct_full"] {
            let n = d.metric(
                "vringswitch_port_drops_total",
                &[("port", p), ("reason", reason)],
            );
            assert_eq!(n, 0, "{reason} at {p}");
        }
    }
    // Checked again under the new process's rules: TCP 22 gone, the connection is cut.
    let (status, v) = call(
        &d,
        "PUT",
        "/v1/security-groups/web",
        Some(serde_json::json!({"name": "web", "rules": [
            {"direction": "ingress", "protocol": "udp", "remote_group": "web"},
            {"direction": "egress"}]})),
    );
    assert_eq!(status, 200, "{v}");
    through(&mut a, &mut b, &tcp(1, 2, (40000, 22), |t| t.ack(1)), 0);
    through(&mut b, &mut a, &udp(2, 1, (6000, 53), b"q"), 1);
}
