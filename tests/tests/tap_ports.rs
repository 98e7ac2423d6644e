//! TAP ports against the real kernel: the forwarding engine with a vhost-user port (the Rust
//! test VM) and a TAP port whose interface lives in a network namespace with an address.
//! The kernel answers the VM's ARP request and ICMP echo through the switch, so frames
//! cross both ways: kernel to VM from the port's buffers, VM to kernel with one `writev`
//! from the VM's buffers. Needs root, /dev/net/tun and iproute2 (`ip`).
//!
//! The first test drives the engine directly, as the daemon does; the others go through
//! the daemon: its configuration file, API, vringctl and state file.

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use vringswitch_ports::tap::{TapPort, TapPortConfig};
use vringswitch_ports::PortHandle;
use vringswitch_tests::api::{assert_error, call};
use vringswitch_tests::daemon::{Daemon, TempDir};
use vringswitch_tests::frontend::{TestVm, VmOptions};
use vringswitch_tests::layout::{tap, tap_with, vhost_user, Layout, TapSettings};
use vringswitch_tests::netns::{ip, ping_the_kernel, Engine, Netns};
use vringswitch_tests::setup::T;
use vringswitch_tests::{mac, BROADCAST};

#[test]
fn the_kernel_answers_a_vm_through_a_tap_port_both_ways() {
    assert!(
        std::path::Path::new("/dev/net/tun").exists(),
        "/dev/net/tun is missing: load the tun module (modprobe tun)"
    );
    let dir = TempDir::new("tap");
    let id = std::process::id() % 100_000;
    let ns = Netns::new(&format!("vs-tap-{id}"));
    let ifname = format!("vst{id}");

    let tap_handle = Arc::new(PortHandle::new(1, "uplink", 1));
    let socket = dir.path().join("vm.sock");
    let mut tap_port = TapPort::start(
        tap_handle.clone(),
        TapPortConfig {
            ifname: ifname.clone(),
            mtu: Some(1500),
            offloads: true,
        },
    )
    .expect("open a TAP interface (needs root)");
    assert!(tap_port.created());
    // The descriptor keeps working once the interface is moved into the namespace.
    ip(&["link", "set", &ifname, "netns", &ns.0]);
    ns.ip(&["addr", "add", "10.77.0.1/24", "dev", &ifname]);
    ns.ip(&["link", "set", &ifname, "up"]);
    let engine = Engine::with_uplink(&socket, &tap_handle);

    let payload: Vec<u8> = (0..1000u32).map(|i| i as u8).collect();
    ping_the_kernel(&socket, 1, &[&payload]);
    let s = tap_handle.stats().snapshot();
    assert!(
        s.rx_packets >= 2 && s.tx_packets >= 2,
        "tap rx {}, tx {}",
        s.rx_packets,
        s.tx_packets
    );

    engine.stop();
    tap_port.stop();
    // The port created the interface: it went with the port's last descriptor.
    let shown = Command::new("ip")
        .args(["-n", &ns.0, "link", "show", &ifname])
        .output()
        .unwrap();
    assert!(!shown.status.success(), "{ifname} still exists");
}

/// Whether interface `ifname` exists, in namespace `ns` or the daemon's own.
fn exists(ns: Option<&Netns>, ifname: &str) -> bool {
    let mut cmd = Command::new("ip");
    if let Some(ns) = ns {
        cmd.args(["-n", &ns.0]);
    }
    cmd.args(["link", "show", ifname])
        .output()
        .unwrap()
        .status
        .success()
}

#[test]
fn tap_ports_from_the_configuration_the_api_and_the_state_file() {
    let dir = TempDir::new("tap-daemon");
    let id = std::process::id() % 100_000;
    let ns = Netns::new(&format!("vs-tapd-{id}"));
    let (cfg_if, api_if) = (format!("vsc{id}"), format!("vsa{id}"));
    let vm_sock = dir.path().join("vm.sock");
    let state = dir.path().join("state.json");
    let config = Layout::new()
        .bridge("br0")
        .port(vhost_user("vm", "br0", &vm_sock))
        .port(tap_with(
            "up0",
            "br0",
            TapSettings {
                ifname: Some(cfg_if.clone()),
                mtu: Some(1400),
                offloads: None,
            },
        ))
        .toml();
    let mut d = Daemon::start_with(
        dir.path(),
        &config,
        std::slice::from_ref(&vm_sock),
        &["--state", state.to_str().unwrap()],
    );
    // The interface the configuration names, moved to where the kernel side lives.
    assert!(exists(None, &cfg_if), "the daemon created {cfg_if}");
    let cfg_mac = mac_of(&cfg_if);
    ip(&["link", "set", &cfg_if, "netns", &ns.0]);
    ns.ip(&["addr", "add", "10.77.0.1/24", "dev", &cfg_if]);
    ns.ip(&["link", "set", &cfg_if, "up"]);
    ping_the_kernel(&vm_sock, 1, &[&[0x5A; 1200]]);
    let (code, port) = call(&d, "GET", "/v1/ports/up0", None);
    assert_eq!(code, 200, "{port}");
    assert_eq!(port["type"], "tap");
    assert_eq!(port["ifname"], cfg_if.as_str());
    assert_eq!(port["mtu"], 1400);
    assert_eq!(port["queues"], 1);
    assert!(
        port.get("socket").is_none() && port.get("mode").is_none(),
        "{port}"
    );
    assert_eq!(port["state"]["connected"], true);
    assert!(
        port["counters"]["rx_packets"].as_u64().unwrap() >= 2,
        "{port}"
    );
    assert!(
        port["counters"]["tx_packets"].as_u64().unwrap() >= 2,
        "{port}"
    );

    // Over the API, through vringctl: a second TAP port, shown in the tree; its MTU given
    // as a setting no flag names.
    let out = d.vringctl(&[
        "port", "add", "up1", "--bridge", "br0", "--type", "tap", "--ifname", &api_if, "--set",
        "mtu=1300",
    ]);
    assert_eq!(out, format!("port up1 added, interface {api_if}\n"));
    assert!(exists(None, &api_if));
    let tree = d.vringctl(&["show"]);
    let (_, up0) = call(&d, "GET", "/v1/ports/up0", None);
    let core = up0["cores"][0].as_u64().expect("the core polling up0");
    assert!(
        tree.contains(&format!(
            "    port up0: tap, link up, vlan -, core {core}\n        interface {cfg_if}, mtu 1400\n"
        )),
        "{tree}"
    );
    assert!(
        tree.contains(&format!("interface {api_if}, mtu 1300\n")),
        "{tree}"
    );
    let shown = d.vringctl(&["port", "show", "up1"]);
    assert!(
        shown.contains(&format!("\ninterface {api_if}, mtu 1300\n")),
        "{shown}"
    );

    // Refused: settings of the other kind, an interface taken, one that is no TAP.
    assert_error(
        call(
            &d,
            "POST",
            "/v1/ports",
            Some(json!({"name": "x", "bridge": "br0", "type": "tap", "socket": "/tmp/x.sock"})),
        ),
        400,
        "invalid",
        "socket is a setting of a vhost-user port; a tap port has ifname, mtu",
    );
    assert_error(
        call(
            &d,
            "POST",
            "/v1/ports",
            Some(json!({"name": "x", "bridge": "br0", "type": "tap", "ifname": api_if})),
        ),
        409,
        "conflict",
        &format!("interface {api_if} is already used by port \"up1\""),
    );
    assert_error(
        call(
            &d,
            "POST",
            "/v1/ports",
            Some(json!({"name": "x", "bridge": "br0", "type": "tap", "ifname": "lo"})),
        ),
        422,
        "port_failed",
        "cannot open TAP interface lo",
    );

    // Its MTU changes while it runs; what needs the port made again is refused.
    assert_eq!(
        d.vringctl(&["port", "set", "up1", "--set", "mtu=1280"]),
        "port up1 changed\n"
    );
    let mtu_of = |ifname: &str| {
        std::fs::read_to_string(format!("/sys/class/net/{ifname}/mtu"))
            .unwrap()
            .trim()
            .to_owned()
    };
    assert_eq!(mtu_of(&api_if), "1280");
    let (_, up1) = call(&d, "GET", "/v1/ports/up1", None);
    assert_eq!(up1["mtu"], 1280);
    for (port, set, code, says) in [
        (
            "up1",
            "offloads=false",
            409,
            "offloads of port \"up1\" cannot change while it runs (only mtu can)",
        ),
        (
            "vm",
            "queues=2",
            409,
            "queues of port \"vm\" cannot change while it runs: delete",
        ),
        (
            "up1",
            "colour=1",
            400,
            "colour is not a setting of a tap port",
        ),
        ("up1", "mtu=20", 400, "mtu"),
    ] {
        let (key, value) = set.split_once('=').unwrap();
        let value: Value = serde_json::from_str(value).unwrap_or(json!(value));
        let (got, e) = call(
            &d,
            "PATCH",
            &format!("/v1/ports/{port}"),
            Some(json!({"settings": {key: value}})),
        );
        assert_eq!(got, code, "{set}: {e}");
        assert!(e["detail"].as_str().unwrap().contains(says), "{set}: {e}");
    }
    assert_eq!(mtu_of(&api_if), "1280");

    // The state file brings both back after kill -9: the interfaces the daemon had made
    // went with it, and are made again, with the same MACs (locally administered).
    let api_mac = mac_of(&api_if);
    assert_ne!(api_mac, cfg_mac);
    d.kill();
    wait_until_gone(&api_if);
    d.restart(std::slice::from_ref(&vm_sock));
    assert!(exists(None, &api_if), "{api_if} made again");
    assert!(
        exists(None, &cfg_if),
        "{cfg_if} made again, in the daemon's namespace"
    );
    assert_eq!(mac_of(&api_if), api_mac, "{api_if}'s MAC after a restart");
    assert_eq!(mtu_of(&api_if), "1280", "{api_if}'s MTU after a restart");
    assert_eq!(mac_of(&cfg_if), cfg_mac, "{cfg_if}'s MAC after a restart");
    let first = u8::from_str_radix(&api_mac[..2], 16).unwrap();
    assert_eq!(first & 3, 2, "{api_mac} is not a local unicast address");
    let (_, ports) = call(&d, "GET", "/v1/ports", None);
    let names: Vec<&str> = ports
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["up0", "up1", "vm"]);

    // Deleting a port removes the interface it made.
    let (code, body) = call(&d, "DELETE", "/v1/ports/up1", None);
    assert_eq!(code, 204, "{body}");
    wait_until_gone(&api_if);
}

/// An interface's MAC in the test's namespace, as `ip link` shows it.
fn mac_of(ifname: &str) -> String {
    std::fs::read_to_string(format!("/sys/class/net/{ifname}/address"))
        .unwrap_or_else(|e| panic!("MAC of {ifname}: {e}"))
        .trim()
        .to_owned()
}

fn wait_until_gone(ifname: &str) {
    vringswitch_tests::wait_until(T, "the interface to go", || {
        (!exists(None, ifname)).then_some(())
    });
}

#[test]
fn a_deleted_interface_takes_the_port_down_counts_drops_and_comes_back() {
    let dir = TempDir::new("tap-gone");
    let id = std::process::id() % 100_000;
    let (made, own) = (format!("vsm{id}"), format!("vsp{id}"));
    let vm_sock = dir.path().join("vm.sock");
    let config = Layout::new()
        .bridge("br0")
        .port(vhost_user("vm", "br0", &vm_sock))
        .port(tap("made", "br0", &made))
        .toml();
    let d = Daemon::start(dir.path(), &config, std::slice::from_ref(&vm_sock));
    // An interface someone else made (persistent): used as it is, left when the port goes.
    let _ = Command::new("ip").args(["link", "del", &own]).output();
    ip(&["tuntap", "add", &own, "mode", "tap"]);
    let (code, body) = call(
        &d,
        "POST",
        "/v1/ports",
        Some(json!({"name": "own", "bridge": "br0", "type": "tap", "ifname": own})),
    );
    assert_eq!(code, 201, "{body}");
    let mut vm = TestVm::connect(&vm_sock, mac(1), VmOptions::default());
    vm.post_rx(TestVm::rx(0), 64, 2048);
    d.wait_port_connected("vm", true);
    let counter = |port: &str, name: &str| {
        let (_, p) = call(&d, "GET", &format!("/v1/ports/{port}"), None);
        p["counters"][name].as_u64().unwrap_or(0)
    };
    let port_down = |port: &str| {
        let (_, p) = call(&d, "GET", &format!("/v1/ports/{port}"), None);
        p["counters"]["drops"]["port_down"].as_u64().unwrap_or(0)
    };
    let broadcast = vringswitch_tests::frame(BROADCAST, mac(1), 100, 1);
    vm.send(TestVm::tx(0), &broadcast);
    // At least: what the kernel sends from one interface (IPv6 neighbour discovery) is
    // flooded to the other too.
    vringswitch_tests::wait_until(T, "the broadcast to reach both interfaces", || {
        (counter("made", "tx_packets") >= 1 && counter("own", "tx_packets") >= 1).then_some(())
    });

    // Both interfaces deleted by someone else, under traffic.
    ip(&["link", "del", &made]);
    ip(&["link", "del", &own]);
    d.wait_port_connected("own", false);
    let before = vringswitch_tests::process::cpu_ticks(d.pid());
    for _ in 0..20 {
        vm.send(TestVm::tx(0), &broadcast);
        std::thread::sleep(Duration::from_millis(10));
    }
    // The port it made is made again; the other stays down, its frames counted as dropped.
    vringswitch_tests::wait_until(T, "the made interface to be back", || {
        exists(None, &made).then_some(())
    });
    d.wait_port_connected("made", true);
    vringswitch_tests::wait_until(T, "the dropped frames to be counted", || {
        (port_down("own") >= 19).then_some(())
    });
    std::thread::sleep(Duration::from_secs(1));
    let used = vringswitch_tests::process::cpu_ticks(d.pid()) - before;
    // About 1.5 s passed: a core spinning would be ~150 ticks.
    assert!(
        used < 60,
        "the daemon used {used} ticks while an interface was gone"
    );
    let log = d.log_text();
    assert!(
        log.contains("TAP interface is gone (deleted?): the port is down until it is back"),
        "{log}"
    );

    // Made again by whoever made it: the port is up and carries frames again.
    ip(&["tuntap", "add", &own, "mode", "tap"]);
    d.wait_port_connected("own", true);
    let sent = counter("own", "tx_packets");
    vm.send(TestVm::tx(0), &broadcast);
    vringswitch_tests::wait_until(T, "a frame on the interface made again", || {
        (counter("own", "tx_packets") > sent).then_some(())
    });
    assert!(d
        .log_text()
        .contains("TAP interface is back: the port is up"));

    // Deleting the port leaves an interface it did not make.
    let (code, body) = call(&d, "DELETE", "/v1/ports/own", None);
    assert_eq!(code, 204, "{body}");
    std::thread::sleep(Duration::from_millis(300));
    assert!(exists(None, &own), "{own} is not the port's to remove");
    ip(&["link", "del", &own]);
}

#[test]
fn tap_ports_come_and_go_while_a_vm_pair_loses_no_frame() {
    let id = std::process::id() % 10_000;
    let ifname = |round: u8| format!("vsr{id}x{round}");
    let _daemon = vringswitch_tests::netns::ports_come_and_go(8, |round| {
        json!({"name": format!("t{round}"), "bridge": "br0", "type": "tap",
               "ifname": ifname(round)})
    });
    // Every interface but the last port's went with its port.
    for round in 0..7 {
        wait_until_gone(&ifname(round));
    }
    assert!(exists(None, &ifname(7)));
}

#[test]
fn an_unprivileged_daemon_attaches_to_an_interface_made_for_it_and_says_what_creating_one_needs() {
    let dir = TempDir::new("tap-unprivileged");
    let id = std::process::id() % 100_000;
    let own = format!("vsn{id}");
    let _ = Command::new("ip").args(["link", "del", &own]).output();
    ip(&["tuntap", "add", &own, "mode", "tap", "user", "nobody"]);
    ip(&["link", "set", &own, "up"]);
    let status = Command::new("chown")
        .args(["-R", "nobody"])
        .arg(dir.path())
        .status()
        .unwrap();
    assert!(status.success(), "chown the test directory to nobody");
    let config = Layout::new()
        .bridge("br0")
        .port(tap("own", "br0", &own))
        .toml();
    let as_nobody = [
        "setpriv",
        "--reuid",
        "nobody",
        "--regid",
        "nogroup",
        "--clear-groups",
        "--",
    ];
    let d = Daemon::start_under(dir.path(), &config, &[], &[], &as_nobody, dir.path());
    let (code, port) = call(&d, "GET", "/v1/ports/own", None);
    assert_eq!(code, 200, "{port}");
    assert_eq!(port["state"]["connected"], true, "{port}");
    assert_error(
        call(
            &d,
            "POST",
            "/v1/ports",
            Some(
                json!({"name": "new", "bridge": "br0", "type": "tap", "ifname": format!("vsx{id}")}),
            ),
        ),
        422,
        "port_failed",
        "creating an interface needs CAP_NET_ADMIN; or make it first for the daemon's user",
    );
    drop(d);
    ip(&["link", "del", &own]);
}
