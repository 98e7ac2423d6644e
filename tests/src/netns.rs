//! Network namespaces and `ip` (iproute2) for the tests of ports that reach the host's
//! network stack, and the kernel there as a peer of test VMs.

use std::net::{IpAddr, Ipv4Addr};
use std::process::Command;
use std::time::Duration;

use std::sync::Arc;

use vringswitch_ports::vhost_user::connection::{SocketMode, VhostUserPortConfig};
use vringswitch_ports::vhost_user::VhostUserPort;
use vringswitch_ports::PortHandle;
use vringswitch_switch::fdb::Fdb;
use vringswitch_switch::{BridgeRt, PortRt, Switch, SwitchConfig, Topology};

use crate::api::call;
use crate::frontend::{TestVm, VmOptions};
use crate::setup::T;
use crate::{mac, BROADCAST};

/// Runs `ip ARGS`, failing the test with its message if it fails, or with how to install
/// iproute2 if it is missing.
pub fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().unwrap_or_else(|e| {
        panic!("cannot run ip ({e}): install it with `apt-get install iproute2`")
    });
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A network namespace, deleted with its interfaces when dropped.
pub struct Netns(pub String);

impl Netns {
    /// A new namespace `name` (one left over from an earlier run is deleted first).
    pub fn new(name: &str) -> Netns {
        let _ = Command::new("ip").args(["netns", "del", name]).output();
        ip(&["netns", "add", name]);
        Netns(name.to_owned())
    }

    /// `ip -n NAME ARGS`.
    pub fn ip(&self, args: &[&str]) {
        let mut all = vec!["-n", self.0.as_str()];
        all.extend_from_slice(args);
        ip(&all);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

// The kernel as a peer: frames a test VM sends to an address in a namespace.

/// The Internet checksum of `bytes`.
pub fn checksum(bytes: &[u8]) -> u16 {
    let mut sum = 0u32;
    for pair in bytes.chunks(2) {
        let word = u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]);
        sum += u32::from(word);
    }
    while sum > 0xFFFF {
        sum = (sum & 0xFFFF) + (sum >> 16);
    }
    !(sum as u16)
}

/// The test VM's address, and the kernel's in the namespace (10.77.0.1/24).
pub const VM_IP: [u8; 4] = [10, 77, 0, 2];
pub const HOST_IP: [u8; 4] = [10, 77, 0, 1];

/// An ARP request from `src` (at [`VM_IP`]) for [`HOST_IP`].
pub fn arp_request(src: [u8; 6]) -> Vec<u8> {
    let mut f = BROADCAST.to_vec();
    f.extend_from_slice(&src);
    f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&src);
    f.extend_from_slice(&VM_IP);
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&HOST_IP);
    f
}

/// An ICMP echo request from `src` ([`VM_IP`]) to `dst` ([`HOST_IP`]).
pub fn echo_request(dst: [u8; 6], src: [u8; 6], id: u16, payload: &[u8]) -> Vec<u8> {
    let mut icmp = vec![8, 0, 0, 0];
    icmp.extend_from_slice(&id.to_be_bytes());
    icmp.extend_from_slice(&1u16.to_be_bytes());
    icmp.extend_from_slice(payload);
    let c = checksum(&icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    let total = (20 + icmp.len()) as u16;
    let mut iph = vec![0x45, 0];
    iph.extend_from_slice(&total.to_be_bytes());
    iph.extend_from_slice(&[0, 1, 0x40, 0, 64, 1, 0, 0]);
    iph.extend_from_slice(&VM_IP);
    iph.extend_from_slice(&HOST_IP);
    let c = checksum(&iph);
    iph[10..12].copy_from_slice(&c.to_be_bytes());
    let mut f = dst.to_vec();
    f.extend_from_slice(&src);
    f.extend_from_slice(&[0x08, 0x00]);
    f.extend_from_slice(&iph);
    f.extend_from_slice(&icmp);
    f
}

/// Waits for a frame on the VM's RX queue that `want` accepts, skipping others (the
/// kernel's IPv6 chatter).
pub fn expect(vm: &mut TestVm, what: &str, want: impl Fn(&[u8]) -> bool) -> Vec<u8> {
    let deadline = std::time::Instant::now() + T;
    loop {
        for r in vm.recv(TestVm::rx(0)) {
            vm.post_rx(TestVm::rx(0), 1, 2048);
            if want(&r.frame) {
                return r.frame;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no {what} within {T:?}"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// The VM on `socket` asks the kernel for [`HOST_IP`], then pings it once with each of
/// `payloads`: the ARP reply and every echo reply must be for the VM, from that address,
/// with the echo's id and its payload whole.
pub fn ping_the_kernel(socket: &std::path::Path, n: u8, payloads: &[&[u8]]) {
    let mut vm = TestVm::connect(socket, mac(n), VmOptions::default());
    vm.post_rx(TestVm::rx(0), 64, 2048);
    vm.send(TestVm::tx(0), &arp_request(mac(n)));
    let reply = expect(&mut vm, "ARP reply from the kernel", |f| {
        f.len() >= 42 && f[12..14] == [0x08, 0x06] && f[20..22] == [0, 2]
    });
    assert_eq!(&reply[..6], &mac(n), "the reply is for the VM");
    assert_eq!(&reply[28..32], &HOST_IP);
    let host_mac = <[u8; 6]>::try_from(&reply[6..12]).unwrap();
    for (i, payload) in payloads.iter().enumerate() {
        let id = 0x4240 + i as u16;
        vm.send(TestVm::tx(0), &echo_request(host_mac, mac(n), id, payload));
        let reply = expect(&mut vm, "ICMP echo reply", |f| {
            f.len() > 34 && f[12..14] == [0x08, 0x00] && f[23] == 1 && f[34] == 0
        });
        assert_eq!(&reply[38..40], &id.to_be_bytes(), "the echo's id");
        assert_eq!(&reply[42..], *payload, "the payload came back whole");
    }
}

/// A port of bridge `bridge` with one queue pair and nothing set: no VLAN, no port
/// security, no policing, no capture or mirror, up; as engines built by hand use them.
pub fn plain_port(handle: &Arc<PortHandle>, bridge: usize) -> PortRt {
    PortRt {
        handle: handle.clone(),
        bridge,
        queue_pairs: 1,
        vlan: Default::default(),
        security: Default::default(),
        fdb_max_learned: usize::MAX,
        police_rx: None,
        police_tx: None,
        admin_up: true,
        capture: None,
        mirror: Default::default(),
        filter: None,
        remote: false,
    }
}

/// The forwarding engine alone, as the daemon runs it: one worker on core 1 and bridge br0
/// with a vhost-user port for a test VM (port 0) and an uplink (port 1, whose handle the
/// caller made and started).
pub struct Engine {
    pub switch: Arc<Switch>,
    workers: Vec<std::thread::JoinHandle<()>>,
    vm_port: VhostUserPort,
}

impl Engine {
    /// Starts the VM's port on `socket` and the worker.
    pub fn with_uplink(socket: &std::path::Path, uplink: &Arc<PortHandle>) -> Engine {
        let switch = Switch::new(&SwitchConfig {
            cores: vec![1],
            burst: 32,
            idle_poll: Duration::from_micros(200),
        })
        .unwrap();
        let vm = Arc::new(PortHandle::new(0, "vm", 1));
        let vm_port = VhostUserPort::start(
            vm.clone(),
            VhostUserPortConfig {
                socket: socket.to_owned(),
                mode: SocketMode::Server,
                queue_pairs: 1,
                offloads: true,
            },
        )
        .unwrap();
        let port = |handle: &Arc<PortHandle>| Some(plain_port(handle, 0));
        switch.set_topology(Topology {
            bridges: vec![BridgeRt {
                name: "br0".into(),
                fdb: Arc::new(Fdb::new(300)),
                ports: vec![0, 1],
                guarded: false,
            }],
            ports: vec![port(&vm), port(uplink)],
            conntrack: None,
        });
        let workers = switch.start_workers().unwrap();
        Engine {
            switch,
            workers,
            vm_port,
        }
    }

    /// Stops the worker and the VM's port; the caller stops the uplink.
    pub fn stop(mut self) {
        self.switch.stop();
        for w in self.workers.drain(..) {
            w.join().unwrap();
        }
        self.vm_port.stop();
    }
}

/// A VM pair on bridge br0 exchanges frames while, in each of `rounds` rounds, a port
/// made from `body(round)` is added and the previous round's removed over the API: the
/// pair loses no frame and none is reordered or duplicated. Frames the kernel sends from a
/// new interface (IPv6 neighbour discovery) are flooded to the pair too and set aside.
/// Returns the setup, its daemon still running with the last round's port.
pub fn ports_come_and_go(
    rounds: u8,
    body: impl Fn(u8) -> serde_json::Value,
) -> crate::setup::Setup {
    use crate::setup::Setup;
    let s = Setup::new("port-churn", &[("br0", &["a", "b"])], 1);
    let (mut a, mut b) = (s.vm("a", 1), s.vm("b", 2));
    s.wait_connected(&["a", "b"]);
    b.send(TestVm::tx(0), &crate::frame(mac(1), mac(2), 60, 0));
    a.expect_frames(TestVm::rx(0), 1, T);
    let mut sent = 0u64;
    for round in 0..rounds {
        for i in 0..40u8 {
            a.send(TestVm::tx(0), &crate::frame(mac(2), mac(1), 100, i));
            sent += 1;
        }
        // While those frames are in flight, a port comes and the one before goes.
        let (code, made) = call(&s.daemon, "POST", "/v1/ports", Some(body(round)));
        assert_eq!(code, 201, "{made}");
        if round > 0 {
            let gone = body(round - 1);
            let path = format!("/v1/ports/{}", gone["name"].as_str().unwrap());
            let (code, answer) = call(&s.daemon, "DELETE", &path, None);
            assert_eq!(code, 204, "{answer}");
        }
        // The pair's frames, in order; what the kernel floods from a new interface (IPv6
        // neighbour discovery) arrives too and is set aside.
        let mut got = Vec::new();
        let deadline = std::time::Instant::now() + T;
        while got.len() < 40 {
            for r in b.recv(TestVm::rx(0)) {
                b.post_rx(TestVm::rx(0), 1, 2048);
                if r.frame[6..12] == mac(1) {
                    got.push(r.frame);
                }
            }
            assert!(
                std::time::Instant::now() < deadline,
                "round {round}: {} of 40",
                got.len()
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        for (i, f) in got.iter().enumerate() {
            assert_eq!(
                f,
                &crate::frame(mac(2), mac(1), 100, i as u8),
                "round {round}"
            );
        }
        for _ in a.recv(TestVm::rx(0)) {
            a.post_rx(TestVm::rx(0), 1, 2048);
        }
        a.wait_tx_done(TestVm::tx(0), T);
    }
    std::thread::sleep(Duration::from_millis(50));
    let extra: Vec<_> = b
        .recv(TestVm::rx(0))
        .into_iter()
        .filter(|r| r.frame[6..12] == mac(1))
        .collect();
    assert!(
        extra.is_empty(),
        "{} frames of the pair too many",
        extra.len()
    );
    assert_eq!(s.counter("rx_packets", "a"), sent);
    // b got the pair's frames and what the kernel flooded.
    assert!(s.counter("tx_packets", "b") >= sent);
    for reason in ["no_rx_buffer", "port_down", "bad_descriptor"] {
        assert_eq!(s.drops("a", reason) + s.drops("b", reason), 0, "{reason}");
    }
    s
}

// The kernel's own VXLAN as a remote tunnel end.

/// The underlay of a tunnel to the kernel's VXLAN device: a veth pair from this namespace
/// to one where the device lives.
pub struct KernelVtep {
    pub ns: Netns,
    pub here: IpAddr,
    pub there: IpAddr,
    /// This side's end of the veth pair.
    pub veth: String,
    /// The far side's.
    pub peer: String,
}

impl Drop for KernelVtep {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["link", "del", &self.veth])
            .output();
    }
}

/// A namespace across a veth pair (10.98.N.1 here, 10.98.N.2 there) whose kernel has a
/// VXLAN device of VNI `vni` to this side, learning, with [`HOST_IP`]/24 on it.
pub fn kernel_vtep(tag: &str, n: u8, vni: u32) -> KernelVtep {
    let (here, there) = (Ipv4Addr::new(10, 98, n, 1), Ipv4Addr::new(10, 98, n, 2));
    kernel_vtep_on(tag, here.into(), there.into(), 24, vni)
}

/// [`kernel_vtep`] over IPv6: fd98:N::1 here, fd98:N::2 there.
pub fn kernel_vtep6(tag: &str, n: u8, vni: u32) -> KernelVtep {
    let here = std::net::Ipv6Addr::new(0xfd98, u16::from(n), 0, 0, 0, 0, 0, 1);
    let there = std::net::Ipv6Addr::new(0xfd98, u16::from(n), 0, 0, 0, 0, 0, 2);
    kernel_vtep_on(tag, here.into(), there.into(), 64, vni)
}

fn kernel_vtep_on(tag: &str, here: IpAddr, there: IpAddr, plen: u8, vni: u32) -> KernelVtep {
    let id = std::process::id() % 10_000;
    let ns = Netns::new(&format!("vs-vx{tag}-{id}"));
    let veth = format!("vx{tag}{id}");
    let peer = format!("vx{tag}p{id}");
    let _ = std::process::Command::new("ip")
        .args(["link", "del", &veth])
        .output();
    ip(&["link", "add", &veth, "type", "veth", "peer", "name", &peer]);
    ip(&["link", "set", &peer, "netns", &ns.0]);
    // No duplicate address detection: the addresses are usable at once.
    let nodad: &[&str] = if here.is_ipv6() { &["nodad"] } else { &[] };
    let here_a = format!("{here}/{plen}");
    let there_a = format!("{there}/{plen}");
    ip(&[&["addr", "add", &here_a, "dev", &veth][..], nodad].concat());
    ip(&["link", "set", &veth, "up"]);
    ns.ip(&[&["addr", "add", &there_a, "dev", &peer][..], nodad].concat());
    ns.ip(&["link", "set", &peer, "up"]);
    ns.ip(&["link", "set", "lo", "up"]);
    let vni_s = vni.to_string();
    let (here_s, there_s) = (here.to_string(), there.to_string());
    ns.ip(&[
        "link", "add", "vx0", "type", "vxlan", "id", &vni_s, "local", &there_s, "remote", &here_s,
        "dstport", "4789",
    ]);
    let host = Ipv4Addr::from(HOST_IP);
    ns.ip(&["addr", "add", &format!("{host}/24"), "dev", "vx0"]);
    ns.ip(&["link", "set", "vx0", "up"]);
    KernelVtep {
        ns,
        here,
        there,
        veth,
        peer,
    }
}
