//! AF_XDP ports against the real kernel: a socket on one end of a veth pair whose other end
//! is in a network namespace with an address. The kernel there answers a test VM's ARP
//! request and ICMP echo through the switch: frames from the kernel are received into the
//! port's UMEM and copied once into the VM, frames from the VM are copied once into the
//! UMEM and sent. Needs root, libxdp (Debian `libxdp1`), iproute2 and ethtool.
//!
//! On veth, XDP in generic mode hands over frames whose checksums the sending kernel left
//! for the hardware to finish: the namespace's end has TX checksumming turned off, as the
//! docs tell users to do.

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use vringswitch_ports::afxdp::{AfXdpPort, AfXdpPortConfig, XdpMode};
use vringswitch_ports::{Attachment, PortHandle};
use vringswitch_tests::api::{assert_error, call};
use vringswitch_tests::daemon::{Daemon, TempDir};
use vringswitch_tests::frontend::{TestVm, VmOptions};
use vringswitch_tests::layout::{afxdp, afxdp_with, vhost_user, AfXdpSettings, Layout};
use vringswitch_tests::netns::{ip, ping_the_kernel, Engine, Netns};
use vringswitch_tests::setup::T;
use vringswitch_tests::{mac, BROADCAST};

/// A veth pair: `outer` in the daemon's namespace for the port, its peer in `ns` with
/// 10.77.0.1/24 and TX checksumming off.
pub struct Veth {
    pub outer: String,
    pub ns: Netns,
}

impl Veth {
    pub fn new(tag: &str) -> Veth {
        let id = std::process::id() % 100_000;
        let ns = Netns::new(&format!("vs-{tag}-{id}"));
        let outer = format!("vx{tag}{id}");
        let _ = Command::new("ip").args(["link", "del", &outer]).output();
        ip(&[
            "link", "add", &outer, "type", "veth", "peer", "name", "inner", "netns", &ns.0,
        ]);
        ns.ip(&["addr", "add", "10.77.0.1/24", "dev", "inner"]);
        ns.ip(&["link", "set", "inner", "up"]);
        ns.ip(&["link", "set", "lo", "up"]);
        ethtool_tx_off(&ns, "inner");
        Veth { outer, ns }
    }
}

impl Drop for Veth {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.outer])
            .output();
    }
}

fn ethtool_tx_off(ns: &Netns, ifname: &str) {
    let out = Command::new("ip")
        .args(["netns", "exec", &ns.0, "ethtool", "-K", ifname, "tx", "off"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ethtool -K {ifname} tx off: {} (install ethtool: apt-get install ethtool)",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The XDP program on `ifname`, as `ip link` shows it ("xdpgeneric", "xdp", or none).
fn xdp_attached(ifname: &str) -> Option<String> {
    let out = Command::new("ip")
        .args(["-d", "link", "show", ifname])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    ["xdpgeneric", "xdpdrv", "xdpoffload", "xdp"]
        .into_iter()
        .find(|m| text.split_whitespace().any(|w| w == *m))
        .map(str::to_owned)
}

#[test]
fn the_kernel_answers_a_vm_through_an_afxdp_port_both_ways() {
    for mode in [XdpMode::Generic, XdpMode::BestEffort] {
        let dir = TempDir::new("afxdp");
        let veth = Veth::new("xe");
        let xdp_handle = Arc::new(PortHandle::new(1, "uplink", 1));
        let socket = dir.path().join("vm.sock");
        let mut xdp_port = AfXdpPort::start(
            xdp_handle.clone(),
            AfXdpPortConfig {
                ifname: veth.outer.clone(),
                queue: 0,
                mode,
            },
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let shown = xdp_attached(&veth.outer);
        let got = match xdp_handle.attachment().as_deref() {
            Some(Attachment::AfXdp(q)) => vringswitch_ports::afxdp::attach_name(q.attach()),
            _ => panic!("no AF_XDP attachment"),
        };
        match mode {
            XdpMode::Generic => {
                assert_eq!(got, "generic");
                assert_eq!(shown.as_deref(), Some("xdpgeneric"));
            }
            // veth runs XDP in its driver, without zero-copy.
            _ => {
                assert_eq!(got, "native");
                assert_eq!(shown.as_deref(), Some("xdp"));
            }
        }

        let engine = Engine::with_uplink(&socket, &xdp_handle);
        let sizes = [1000usize, 1472, 40];
        let payloads: Vec<Vec<u8>> = (0..sizes.len())
            .map(|i| (0..sizes[i]).map(|b| (b + i) as u8).collect())
            .collect();
        let payloads: Vec<&[u8]> = payloads.iter().map(Vec::as_slice).collect();
        ping_the_kernel(&socket, 1, &payloads);
        let s = xdp_handle.stats().snapshot();
        assert!(
            s.rx_packets >= 4 && s.tx_packets >= 4,
            "afxdp rx {}, tx {}",
            s.rx_packets,
            s.tx_packets
        );

        engine.stop();
        xdp_port.stop();
        // The socket's XDP program went with the port.
        assert_eq!(xdp_attached(&veth.outer), None, "{mode:?}");
    }
}

/// Whether interface `ifname` exists in the daemon's namespace.
fn exists(ifname: &str) -> bool {
    vringswitch_ports::netif::ifindex(ifname).is_some()
}

#[test]
fn afxdp_ports_from_the_configuration_the_api_and_the_state_file() {
    let dir = TempDir::new("afxdp-daemon");
    let (wire, second) = (Veth::new("xc"), Veth::new("xa"));
    let vm_sock = dir.path().join("vm.sock");
    let state = dir.path().join("state.json");
    let config = Layout::new()
        .bridge("br0")
        .bridge("br1")
        .port(vhost_user("vm", "br0", &vm_sock))
        .port(afxdp_with(
            "wire",
            "br0",
            AfXdpSettings {
                ifname: Some(wire.outer.clone()),
                queue: None,
                xdp_mode: Some(XdpMode::Generic),
            },
        ))
        .toml();
    let mut d = Daemon::start_with(
        dir.path(),
        &config,
        std::slice::from_ref(&vm_sock),
        &["--state", state.to_str().unwrap()],
    );
    assert_eq!(xdp_attached(&wire.outer).as_deref(), Some("xdpgeneric"));
    ping_the_kernel(&vm_sock, 1, &[&[0x5A; 1400]]);
    let (code, port) = call(&d, "GET", "/v1/ports/wire", None);
    assert_eq!(code, 200, "{port}");
    assert_eq!(port["type"], "afxdp");
    assert_eq!(port["ifname"], wire.outer.as_str());
    assert_eq!(port["queue"], 0);
    assert_eq!(port["xdp_mode"], "generic");
    assert_eq!(port["state"]["xdp_mode"], "generic");
    assert_eq!(port["state"]["connected"], true);
    assert!(
        port.get("socket").is_none() && port.get("mtu").is_none(),
        "{port}"
    );
    for counter in ["rx_packets", "tx_packets"] {
        assert!(port["counters"][counter].as_u64().unwrap() >= 2, "{port}");
    }

    // Over the API, through vringctl, on a bridge of its own: veth runs XDP natively.
    let out = d.vringctl(&[
        "port",
        "add",
        "w2",
        "--bridge",
        "br1",
        "--type",
        "afxdp",
        "--ifname",
        &second.outer,
    ]);
    assert_eq!(
        out,
        format!(
            "port w2 added, interface {} queue 0, xdp native\n",
            second.outer
        )
    );
    assert_eq!(xdp_attached(&second.outer).as_deref(), Some("xdp"));
    let tree = d.vringctl(&["show"]);
    let core = d
        .vringctl(&["--json", "port", "show", "wire"])
        .split("\"cores\": [")
        .nth(1)
        .and_then(|rest| {
            rest.split(|c: char| !c.is_ascii_digit())
                .find(|n| !n.is_empty())
        })
        .map(str::to_owned)
        .expect("the core polling wire");
    assert!(
        tree.contains(&format!(
            "    port wire: afxdp, link up, vlan -, core {core}\n        interface {} queue 0, xdp generic\n",
            wire.outer
        )),
        "{tree}"
    );
    assert!(
        tree.contains(&format!(
            "interface {} queue 0, xdp native (best-effort asked)\n",
            second.outer
        )),
        "{tree}"
    );

    // Refused: settings of another kind, an interface taken, none at all, a queue the
    // interface does not have.
    let add = |body: serde_json::Value| call(&d, "POST", "/v1/ports", Some(body));
    assert_error(
        add(json!({"name": "x", "bridge": "br0", "type": "afxdp", "ifname": "lo", "mtu": 1500})),
        400,
        "invalid",
        "mtu is a setting of a tap port; an afxdp port has ifname, queue, xdp_mode",
    );
    assert_error(
        add(json!({"name": "x", "bridge": "br0", "type": "afxdp", "ifname": second.outer})),
        409,
        "conflict",
        &format!("interface {} is already used by port \"w2\"", second.outer),
    );
    assert_error(
        add(json!({"name": "x", "bridge": "br0", "type": "afxdp", "ifname": "vs-nothing"})),
        422,
        "port_failed",
        "cannot open an AF_XDP socket on interface vs-nothing: there is no interface of that name",
    );
    let third = Veth::new("xq");
    assert_error(
        add(
            json!({"name": "x", "bridge": "br0", "type": "afxdp", "ifname": third.outer,
                   "queue": 5, "xdp_mode": "generic"}),
        ),
        422,
        "port_failed",
        "cannot bind an AF_XDP socket to queue 5 (generic: Invalid argument (os error 22) \
         (the interface has no such queue",
    );
    assert_eq!(xdp_attached(&third.outer), None, "nothing left behind");

    // The state file brings both back after kill -9. The programs stay on the interfaces
    // (attached through netlink, they outlive the process; libxdp's program passes frames
    // to the kernel's stack while no socket is bound) and the restarted daemon's sockets
    // use them again.
    d.kill();
    assert_eq!(xdp_attached(&wire.outer).as_deref(), Some("xdpgeneric"));
    d.restart(std::slice::from_ref(&vm_sock));
    assert_eq!(xdp_attached(&wire.outer).as_deref(), Some("xdpgeneric"));
    assert_eq!(xdp_attached(&second.outer).as_deref(), Some("xdp"));
    ping_the_kernel(&vm_sock, 2, &[&[0xA5; 200]]);

    // Deleting a port whose program this daemon loaded takes it off the interface, and
    // leaves the interface.
    let (code, body) = call(
        &d,
        "POST",
        "/v1/ports",
        Some(json!({"name": "w3", "bridge": "br1",
        "type": "afxdp", "ifname": third.outer})),
    );
    assert_eq!(code, 201, "{body}");
    assert_eq!(xdp_attached(&third.outer).as_deref(), Some("xdp"));
    let (code, body) = call(&d, "DELETE", "/v1/ports/w3", None);
    assert_eq!(code, 204, "{body}");
    assert_eq!(xdp_attached(&third.outer), None);
    assert!(exists(&third.outer));
}
#[test]
fn a_deleted_interface_takes_the_afxdp_port_down_counts_drops_and_comes_back() {
    let dir = TempDir::new("afxdp-gone");
    let veth = Veth::new("xg");
    let vm_sock = dir.path().join("vm.sock");
    let config = Layout::new()
        .bridge("br0")
        .port(vhost_user("vm", "br0", &vm_sock))
        .port(afxdp("wire", "br0", &veth.outer))
        .toml();
    let d = Daemon::start(dir.path(), &config, std::slice::from_ref(&vm_sock));
    let mut vm = TestVm::connect(&vm_sock, mac(1), VmOptions::default());
    vm.post_rx(TestVm::rx(0), 64, 2048);
    d.wait_port_connected("vm", true);
    let counter = |name: &str| {
        let (_, p) = call(&d, "GET", "/v1/ports/wire", None);
        p["counters"][name].as_u64().unwrap_or(0)
    };
    let port_down = || {
        let (_, p) = call(&d, "GET", "/v1/ports/wire", None);
        p["counters"]["drops"]["port_down"].as_u64().unwrap_or(0)
    };
    let broadcast = vringswitch_tests::frame(BROADCAST, mac(1), 100, 1);
    vm.send(TestVm::tx(0), &broadcast);
    vringswitch_tests::wait_until(T, "the broadcast to reach the interface", || {
        (counter("tx_packets") >= 1).then_some(())
    });

    // Deleted by someone else, under traffic.
    ip(&["link", "del", &veth.outer]);
    d.wait_port_connected("wire", false);
    let before = vringswitch_tests::process::cpu_ticks(d.pid());
    for _ in 0..20 {
        vm.send(TestVm::tx(0), &broadcast);
        std::thread::sleep(Duration::from_millis(10));
    }
    vringswitch_tests::wait_until(T, "the dropped frames to be counted", || {
        (port_down() >= 20).then_some(())
    });
    std::thread::sleep(Duration::from_secs(1));
    let used = vringswitch_tests::process::cpu_ticks(d.pid()) - before;
    // About 1.3 s passed: a core spinning would be ~130 ticks.
    assert!(
        used < 60,
        "the daemon used {used} ticks while the interface was gone"
    );
    let log = d.log_text();
    assert!(
        log.contains(
            "AF_XDP port's interface is gone (deleted?): the port is down until it is back"
        ),
        "{log}"
    );

    // Made again: the port binds again and carries frames again.
    ip(&[
        "link",
        "add",
        &veth.outer,
        "type",
        "veth",
        "peer",
        "name",
        "inner",
        "netns",
        &veth.ns.0,
    ]);
    veth.ns.ip(&["link", "set", "inner", "up"]);
    d.wait_port_connected("wire", true);
    let sent = counter("tx_packets");
    vm.send(TestVm::tx(0), &broadcast);
    vringswitch_tests::wait_until(T, "a frame on the interface made again", || {
        (counter("tx_packets") > sent).then_some(())
    });
    assert!(d
        .log_text()
        .contains("AF_XDP port's interface is back: the port is up"));
}

#[test]
fn an_unprivileged_daemon_says_what_an_afxdp_port_needs() {
    let dir = TempDir::new("afxdp-unprivileged");
    let veth = Veth::new("xn");
    ip(&["link", "set", &veth.outer, "up"]);
    let status = Command::new("chown")
        .args(["-R", "nobody"])
        .arg(dir.path())
        .status()
        .unwrap();
    assert!(status.success(), "chown the test directory to nobody");
    let config = Layout::new().bridge("br0").toml();
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
    assert_error(
        call(
            &d,
            "POST",
            "/v1/ports",
            Some(json!({"name": "wire", "bridge": "br0", "type": "afxdp", "ifname": veth.outer})),
        ),
        422,
        "port_failed",
        "(needs CAP_NET_ADMIN, CAP_NET_RAW and CAP_BPF, or root)",
    );
}

#[test]
fn afxdp_and_tap_ports_come_and_go_while_a_vm_pair_loses_no_frame() {
    let id = std::process::id() % 10_000;
    let veths: Vec<Veth> = (0..3).map(|i| Veth::new(&format!("r{i}"))).collect();
    let _daemon = vringswitch_tests::netns::ports_come_and_go(6, |round| {
        let name = format!("u{round}");
        if round % 2 == 0 {
            let veth = &veths[usize::from(round / 2)];
            json!({"name": name, "bridge": "br0", "type": "afxdp", "ifname": veth.outer})
        } else {
            json!({"name": name, "bridge": "br0", "type": "tap", "ifname": format!("vsr{id}y{round}")})
        }
    });
    // Every AF_XDP port was removed (the last port is a TAP one): each took its program.
    for veth in &veths {
        assert_eq!(xdp_attached(&veth.outer), None, "{}", veth.outer);
    }
}

#[test]
fn frames_the_kernel_drops_for_want_of_room_are_counted() {
    let dir = TempDir::new("afxdp-full");
    let veth = Veth::new("xf");
    let config = Layout::new()
        .bridge("br0")
        .port(afxdp("wire", "br0", &veth.outer))
        .toml();
    let d = Daemon::start(dir.path(), &config, &[]);
    // Down, the port is not polled: its RX ring (2048 entries) fills and the kernel drops
    // the rest.
    let (code, body) = call(
        &d,
        "PATCH",
        "/v1/ports/wire",
        Some(json!({"admin": "down"})),
    );
    assert_eq!(code, 200, "{body}");
    let sent = 3000;
    let script = format!(
        "import socket\n\
         s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)\n\
         s.bind(('inner', 0))\n\
         f = b'\\xff' * 6 + b'\\x02\\x00\\x00\\x00\\x00\\x09' + b'\\x88\\xb5' + b'\\x00' * 50\n\
         for _ in range({sent}):\n\
         \x20   s.send(f)\n"
    );
    let out = Command::new("ip")
        .args(["netns", "exec", &veth.ns.0, "python3", "-c", &script])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dropped = || {
        let (_, p) = call(&d, "GET", "/v1/ports/wire", None);
        p["counters"]["drops"]["no_rx_buffer"].as_u64().unwrap_or(0)
    };
    // At least what did not fit in the ring; the IPv6 chatter of a new interface may add.
    vringswitch_tests::wait_until(T, "the kernel's drops to be counted", || {
        (dropped() >= sent - 2048).then_some(())
    });
    let n = dropped();
    assert!(n <= sent + 20, "{n} drops counted for {sent} frames sent");
}

/// An AF_XDP port carried over three upgrades: the socket, its UMEM and the XDP program
/// stay as they are (the kernel answers the VM after each), the port's counters go on; and
/// removing the port afterwards removes the program, which no libxdp object of the new
/// process knew of.
#[test]
fn an_afxdp_socket_is_carried_over_upgrades_and_its_program_goes_with_its_port() {
    let dir = TempDir::new("afxdp-upgrade");
    let veth = Veth::new("xu");
    let vm_sock = dir.path().join("vm.sock");
    let config = Layout::new()
        .bridge("br0")
        .port(vhost_user("vm", "br0", &vm_sock))
        .port(afxdp("wire", "br0", &veth.outer))
        .toml();
    let mut d = Daemon::start(dir.path(), &config, std::slice::from_ref(&vm_sock));
    ping_the_kernel(&vm_sock, 1, &[&[0x33; 200]]);
    let mode = xdp_attached(&veth.outer).expect("an XDP program on the interface");
    let rx = |d: &Daemon| {
        let (_, p) = call(d, "GET", "/v1/ports/wire", None);
        p["counters"]["rx_packets"].as_u64().unwrap_or(0)
    };
    for round in 0..3u8 {
        let before = rx(&d);
        let answer = d
            .upgrade(&[])
            .unwrap_or_else(|e| panic!("upgrade {round}: {e}"));
        assert_eq!(answer["ports"], 2, "{answer}");
        assert!(rx(&d) >= before, "counters carried");
        assert_eq!(
            xdp_attached(&veth.outer).as_deref(),
            Some(mode.as_str()),
            "the program stayed"
        );
        ping_the_kernel(&vm_sock, 1, &[&[round; 300]]);
        let (_, p) = call(&d, "GET", "/v1/ports/wire", None);
        assert_eq!(p["state"]["connected"], true, "{p}");
    }
    assert!(
        d.log_text()
            .contains("AF_XDP socket carried on from the previous process"),
        "{}",
        d.log_text()
    );
    let (code, body) = call(&d, "DELETE", "/v1/ports/wire", None);
    assert_eq!(code, 204, "{body}");
    vringswitch_tests::wait_until(T, "the XDP program to go with its port", || {
        xdp_attached(&veth.outer).is_none().then_some(())
    });
}

/// An AF_XDP port whose interface is gone refuses an upgrade (a new process could not bind
/// it); the port comes back by itself once the interface does, as without an upgrade.
#[test]
fn an_afxdp_port_whose_interface_is_gone_refuses_an_upgrade() {
    let dir = TempDir::new("afxdp-gone-upgrade");
    let veth = Veth::new("xw");
    let vm_sock = dir.path().join("vm.sock");
    let config = Layout::new()
        .bridge("br0")
        .port(vhost_user("vm", "br0", &vm_sock))
        .port(afxdp("wire", "br0", &veth.outer))
        .toml();
    let mut d = Daemon::start(dir.path(), &config, std::slice::from_ref(&vm_sock));
    ip(&["link", "del", &veth.outer]);
    d.wait_port_connected("wire", false);
    let pid = d.pid();
    let e = d
        .upgrade(&[])
        .expect_err("an upgrade with a port whose interface is gone");
    assert!(
        e.contains(&format!(
            "port wire (afxdp): its interface {} is gone",
            veth.outer
        )),
        "{e}"
    );
    assert_eq!(d.pid(), pid);
}
