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

use vringswitch_ports::afxdp::{AfXdpPort, AfXdpPortConfig, XdpMode};
use vringswitch_ports::vhost_user::connection::{SocketMode, VhostUserPortConfig};
use vringswitch_ports::vhost_user::VhostUserPort;
use vringswitch_ports::{Attachment, PortHandle};
use vringswitch_switch::fdb::Fdb;
use vringswitch_switch::{BridgeRt, PortRt, Switch, SwitchConfig, Topology};
use vringswitch_tests::daemon::TempDir;
use vringswitch_tests::frontend::{TestVm, VmOptions};
use vringswitch_tests::mac;
use vringswitch_tests::netns::{arp_request, echo_request, expect, ip, Netns, HOST_IP};

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
        let switch = Switch::new(&SwitchConfig {
            cores: vec![1],
            burst: 32,
            idle_poll: Duration::from_micros(200),
        })
        .unwrap();
        let vm_handle = Arc::new(PortHandle::new(0, "vm", 1));
        let xdp_handle = Arc::new(PortHandle::new(1, "uplink", 1));
        let socket = dir.path().join("vm.sock");
        let mut vm_port = VhostUserPort::start(
            vm_handle.clone(),
            VhostUserPortConfig {
                socket: socket.clone(),
                mode: SocketMode::Server,
                queue_pairs: 1,
            },
        )
        .unwrap();
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

        let port = |handle: &Arc<PortHandle>| {
            Some(PortRt {
                handle: handle.clone(),
                bridge: 0,
                queue_pairs: 1,
                vlan: Default::default(),
                security: Default::default(),
                admin_up: true,
                capture: None,
            })
        };
        switch.set_topology(Topology {
            bridges: vec![BridgeRt {
                name: "br0".into(),
                fdb: Arc::new(Fdb::new(300)),
                ports: vec![0, 1],
            }],
            ports: vec![port(&vm_handle), port(&xdp_handle)],
        });
        let workers = switch.start_workers().unwrap();

        let mut vm = TestVm::connect(&socket, mac(1), VmOptions::default());
        vm.post_rx(TestVm::rx(0), 64, 2048);
        vm.send(TestVm::tx(0), &arp_request(mac(1)));
        let reply = expect(&mut vm, "ARP reply from the kernel", |f| {
            f.len() >= 42 && f[12..14] == [0x08, 0x06] && f[20..22] == [0, 2]
        });
        assert_eq!(&reply[..6], &mac(1), "the reply is for the VM");
        assert_eq!(&reply[28..32], &HOST_IP);
        let host_mac = <[u8; 6]>::try_from(&reply[6..12]).unwrap();
        for (i, size) in [1000usize, 1472, 40].into_iter().enumerate() {
            let payload: Vec<u8> = (0..size).map(|b| (b + i) as u8).collect();
            let id = 0x4240 + i as u16;
            vm.send(TestVm::tx(0), &echo_request(host_mac, mac(1), id, &payload));
            let reply = expect(&mut vm, "ICMP echo reply", |f| {
                f.len() > 34 && f[12..14] == [0x08, 0x00] && f[23] == 1 && f[34] == 0
            });
            assert_eq!(&reply[38..40], &id.to_be_bytes(), "the echo's id");
            assert_eq!(&reply[42..], &payload[..], "the payload came back whole");
        }
        let s = xdp_handle.stats().snapshot();
        assert!(
            s.rx_packets >= 4 && s.tx_packets >= 4,
            "afxdp rx {}, tx {}",
            s.rx_packets,
            s.tx_packets
        );

        switch.stop();
        for w in workers {
            w.join().unwrap();
        }
        vm_port.stop();
        xdp_port.stop();
        drop(switch);
        // The socket's XDP program went with the port.
        assert_eq!(xdp_attached(&veth.outer), None, "{mode:?}");
    }
}
