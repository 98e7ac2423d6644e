//! VXLAN tunnel ports against the Linux kernel's own VXLAN device (issue 42): the
//! forwarding engine with a test VM and a tunnel port in static mode, whose one remote end
//! is a namespace across a veth pair where the kernel's `vxlan` device (same VNI, port
//! 4789) carries an address. The kernel answers the VM's ARP request and pings through the
//! tunnel, so frames cross both ways in the wire format everybody else speaks; what comes
//! from an address that is no end of the segment, or with another VNI, is dropped and
//! counted. Needs root and iproute2 (`ip`), and the kernel's vxlan module.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use vringswitch_config::VxlanControl;
use vringswitch_ports::vxlan::{VxlanPort, VxlanPortConfig};
use vringswitch_ports::{DropReason, PortHandle};
use vringswitch_tests::daemon::TempDir;
use vringswitch_tests::netns::{kernel_vtep, ping_the_kernel, Engine, KernelVtep};
use vringswitch_tests::setup::T;

fn tunnel(underlay: &KernelVtep, vni: u32, handle: &Arc<PortHandle>) -> VxlanPort {
    VxlanPort::start(
        handle.clone(),
        VxlanPortConfig {
            vni,
            local: underlay.here,
            udp_port: 4789,
            control: VxlanControl::Static,
            remotes: vec![underlay.there],
        },
    )
    .expect("open a VXLAN tunnel (needs root: a raw socket)")
}

/// The engine with a test VM's port (`vm.sock` in the directory) and a tunnel port of VNI
/// `vni` to the kernel's VXLAN across underlay `n` (see [`kernel_vtep`]).
fn engine_with_tunnel(
    tag: &str,
    n: u8,
    vni: u32,
) -> (TempDir, KernelVtep, Arc<PortHandle>, VxlanPort, Engine) {
    let dir = TempDir::new(&format!("vxlan-{tag}"));
    let underlay = kernel_vtep(tag, n, vni);
    let handle = Arc::new(PortHandle::new(1, "tunnel", 1));
    let port = tunnel(&underlay, vni, &handle);
    let engine = Engine::with_uplink(&dir.path().join("vm.sock"), &handle);
    (dir, underlay, handle, port, engine)
}

fn drops(handle: &PortHandle, reason: DropReason) -> u64 {
    handle.stats().snapshot().drops[reason as usize]
}

/// The kernel's VXLAN device learnt the test VM's address behind this host's tunnel end
/// (flood and learn on its side).
fn kernel_learnt_the_vm_behind_this_host(underlay: &KernelVtep) {
    let fdb = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &underlay.ns.0,
            "bridge",
            "fdb",
            "show",
            "dev",
            "vx0",
        ])
        .output()
        .expect("ip and bridge (apt-get install iproute2)");
    let fdb = String::from_utf8_lossy(&fdb.stdout);
    assert!(
        fdb.contains(&format!("dst {}", underlay.here)),
        "the kernel learnt the VM behind {}: {fdb}",
        underlay.here
    );
}

/// Runs the Python `script` in the far namespace of `underlay`, which must succeed.
fn python_in(underlay: &KernelVtep, script: &str) {
    let ns_path = format!("/var/run/netns/{}", underlay.ns.0);
    let out = std::process::Command::new("nsenter")
        .args([&format!("--net={ns_path}"), "python3", "-c", script])
        .output()
        .expect("nsenter and python3 (apt-get install util-linux python3)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Waits until `f` holds, failing the test with `what` after [`T`].
fn eventually(what: &str, f: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + T;
    while !f() {
        assert!(std::time::Instant::now() < deadline, "{what} within {T:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn the_kernels_vxlan_answers_a_vm_through_a_tunnel_port_both_ways() {
    let (dir, underlay, handle, mut port, engine) = engine_with_tunnel("a", 1, 42);
    let socket = dir.path().join("vm.sock");

    // 1400 bytes of payload: the frame (1442 bytes) and its 50 of tunnel fit the veth's
    // 1500-byte MTU.
    let big: Vec<u8> = (0..1400u32).map(|i| i as u8).collect();
    // And 150 bytes: a frame the port copies whole into its batch, of which it read the
    // first 64 bytes to decide.
    let mid: Vec<u8> = (0..150u32).map(|i| (i * 3) as u8).collect();
    ping_the_kernel(&socket, 1, &[b"through the tunnel", &mid, &big]);
    let s = handle.stats().snapshot();
    assert!(
        s.rx_packets >= 3 && s.tx_packets >= 3,
        "tunnel rx {}, tx {}",
        s.rx_packets,
        s.tx_packets
    );
    // The VM's address was learnt behind the kernel's end on the far side, and the
    // kernel's behind the far end here (flood and learn).
    let learnt = port.macs().list();
    assert_eq!(learnt.len(), 1, "{learnt:?}");
    assert!(learnt[0].2, "learnt, not installed");
    kernel_learnt_the_vm_behind_this_host(&underlay);

    engine.stop();
    port.stop();
}

#[test]
fn an_ipv6_underlay_carries_the_vms_frames_to_the_kernels_vxlan_and_back() {
    let dir = TempDir::new("vxlan-six");
    let underlay = vringswitch_tests::netns::kernel_vtep6("s", 7, 47);
    let handle = Arc::new(PortHandle::new(1, "tunnel", 1));
    let mut port = tunnel(&underlay, 47, &handle);
    let engine = Engine::with_uplink(&dir.path().join("vm.sock"), &handle);
    // An IPv6 tunnel adds 70 bytes: a 1422-byte frame fits the veth's 1500.
    let big: Vec<u8> = (0..1380u32).map(|i| (i * 7) as u8).collect();
    ping_the_kernel(&dir.path().join("vm.sock"), 1, &[b"over IPv6", &big]);
    // The kernel's address learnt behind its end, here.
    let learnt = port.macs().list();
    assert_eq!(learnt.len(), 1, "{learnt:?}");
    assert!(learnt[0].2, "learnt, not installed");
    kernel_learnt_the_vm_behind_this_host(&underlay);
    assert_eq!(drops(&handle, DropReason::TooBig), 0);
    engine.stop();
    port.stop();
}

#[test]
fn tunnel_packets_from_strangers_or_of_another_vni_are_dropped_and_counted() {
    let (_dir, underlay, handle, mut port, engine) = engine_with_tunnel("b", 2, 43);
    // A second address on the remote side: not an end of the segment.
    let stranger: std::net::IpAddr = Ipv4Addr::new(10, 98, 2, 3).into();
    underlay.ns.ip(&[
        "addr",
        "add",
        &format!("{stranger}/24"),
        "dev",
        &underlay.peer,
    ]);
    let inner: Vec<u8> = [
        &[0xff; 6][..],
        &[2, 0, 0, 0, 0, 9],
        &[0x08, 0x06],
        &[0u8; 46],
    ]
    .concat();
    let packet = |vni: u32, flags: u8| {
        let v = vni.to_be_bytes();
        [&[flags, 0, 0, 0, v[1], v[2], v[3], 0][..], &inner].concat()
    };
    let send_from = |from: std::net::IpAddr, bytes: &[u8]| {
        // A UDP socket inside the remote namespace, bound to `from`.
        let from_s = from.to_string();
        let here = underlay.here.to_string();
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let script = format!(
            "import socket,binascii\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n\
             s.bind(('{from_s}',0))\ns.sendto(binascii.unhexlify('{hex}'),('{here}',4789))\n"
        );
        python_in(&underlay, &script);
    };
    send_from(stranger, &packet(43, 0x08));
    eventually("an unknown_vtep drop", || {
        drops(&handle, DropReason::UnknownVtep) == 1
    });
    send_from(underlay.there, &packet(44, 0x08));
    send_from(underlay.there, &packet(43, 0x00));
    send_from(underlay.there, &packet(43, 0x08)[..20]);
    eventually("three bad_tunnel drops", || {
        drops(&handle, DropReason::BadTunnel) == 3
    });
    // None of them taught the port their inner source; a good one does. (The kernel's
    // own device sends IPv6 chatter through the tunnel too: its address is learnt.)
    let learnt = |mac: [u8; 6]| port.macs().list().iter().any(|&(m, _, _)| m == mac);
    assert!(!learnt([2, 0, 0, 0, 0, 9]));
    send_from(underlay.there, &packet(43, 0x08));
    eventually("the good packet's source learnt", || {
        learnt([2, 0, 0, 0, 0, 9])
    });
    assert_eq!(drops(&handle, DropReason::UnknownVtep), 1);
    assert_eq!(drops(&handle, DropReason::BadTunnel), 3);
    engine.stop();
    port.stop();
}

/// Received-packet counter of the kernel's VXLAN device in the far namespace.
fn kernel_rx_packets(underlay: &KernelVtep) -> u64 {
    let out = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &underlay.ns.0,
            "ip",
            "-j",
            "-s",
            "link",
            "show",
            "dev",
            "vx0",
        ])
        .output()
        .expect("ip");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("ip -j output");
    v[0]["stats64"]["rx"]["packets"]
        .as_u64()
        .expect("rx packets")
}

/// A frame of ours: broadcast, ethertype 0x88b5 (local experiments), its index after the
/// header, padded to `len`.
fn numbered(src: [u8; 6], i: u16, len: usize) -> Vec<u8> {
    let mut f = [&[0xff; 6][..], &src, &[0x88, 0xb5], &i.to_be_bytes()].concat();
    f.resize(len, 0x5a);
    f
}

#[test]
fn bursts_go_out_and_come_in_as_few_system_calls_and_every_frame_is_counted() {
    let (dir, underlay, handle, mut port, engine) = engine_with_tunnel("g", 4, 45);
    let mut vm = vringswitch_tests::frontend::TestVm::connect(
        &dir.path().join("vm.sock"),
        vringswitch_tests::mac(1),
        Default::default(),
    );
    use vringswitch_tests::frontend::TestVm;
    vm.post_rx(TestVm::rx(0), 200, 2048);

    // Out: one burst of 40 frames that fit the underlay (one UDP GSO message), then 3 of
    // 1600 bytes that do not (their run refused, then each packet alone: too_big), then 7
    // more that fit: the kernel's VXLAN device gets exactly the 47.
    let before = kernel_rx_packets(&underlay);
    let mut burst: Vec<Vec<u8>> = (0..40)
        .map(|i| numbered(vringswitch_tests::mac(1), i, 60))
        .collect();
    burst.extend((40..43).map(|i| numbered(vringswitch_tests::mac(1), i, 1600)));
    burst.extend((43..50).map(|i| numbered(vringswitch_tests::mac(1), i, 200)));
    vm.offer_quietly(TestVm::tx(0), &burst);
    vm.kick(TestVm::tx(0));
    eventually("the kernel to get the 47 frames that fit", || {
        kernel_rx_packets(&underlay) - before >= 47
    });
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(kernel_rx_packets(&underlay) - before, 47);
    assert_eq!(drops(&handle, DropReason::TooBig), 3);
    assert_eq!(handle.stats().snapshot().tx_packets, 47);

    // In: 120 packets sent by the far side as three UDP GSO messages of 40 (the kernel
    // hands each to the port whole, more than a burst of 32 takes: the rest is taken by
    // the next poll), one of them of another VNI: 119 frames reach the VM, in order.
    let script = format!(
        "import socket\n\
         s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n\
         s.bind(('{there}',0))\n\
         s.setsockopt(socket.SOL_UDP,103,68)\n\
         for m in range(3):\n\
         \x20 b=b''\n\
         \x20 for k in range(40):\n\
         \x20  i=m*40+k\n\
         \x20  vni=46 if i==77 else 45\n\
         \x20  inner=b'\\xff'*6+bytes([2,0,0,0,0,9])+b'\\x88\\xb5'+i.to_bytes(2,'big')\n\
         \x20  b+=bytes([8,0,0,0])+vni.to_bytes(3,'big')+b'\\x00'+inner.ljust(60,b'Z')\n\
         \x20 s.sendto(b,('{here}',4789))\n",
        there = underlay.there,
        here = underlay.here,
    );
    python_in(&underlay, &script);
    let mut got = Vec::new();
    let deadline = std::time::Instant::now() + T;
    while got.len() < 119 {
        assert!(
            std::time::Instant::now() < deadline,
            "119 frames, got {}",
            got.len()
        );
        for r in vm.recv(TestVm::rx(0)) {
            if r.frame.len() >= 16 && r.frame[12..14] == [0x88, 0xb5] {
                got.push(u16::from_be_bytes([r.frame[14], r.frame[15]]));
            }
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let want: Vec<u16> = (0..120).filter(|&i| i != 77).collect();
    assert_eq!(got, want, "every frame but the other VNI's, in order");
    assert_eq!(drops(&handle, DropReason::BadTunnel), 1);

    // A change of ends publishes a queue that receives into the same buffers (what waits
    // there is taken by it, and no change allocates).
    let buffers = |h: &PortHandle| match h.attachment().as_deref() {
        Some(vringswitch_ports::Attachment::Vxlan(q)) => q.mem() as *const _ as usize,
        _ => panic!("the tunnel is attached"),
    };
    let before = buffers(&handle);
    let mut settings = vringswitch_config::VxlanSettings {
        vni: Some(45),
        local: Some(underlay.here.to_string()),
        control: Some(VxlanControl::Static),
        remotes: Some(vec![underlay.there.to_string(), "10.98.4.9".into()]),
        ..Default::default()
    };
    vringswitch_config::KindSettings::fill_defaults(&mut settings, "tunnel");
    vringswitch_ports::port::RunningPort::change(
        &mut port,
        &vringswitch_config::KindSpec::Vxlan(settings),
    )
    .unwrap();
    assert!(
        port.macs()
            .list()
            .iter()
            .any(|&(m, _, _)| m == [2, 0, 0, 0, 0, 9]),
        "the address learnt behind the end that stayed is kept"
    );
    assert_eq!(buffers(&handle), before);
    engine.stop();
    port.stop();
}

#[test]
fn without_checksum_offload_on_the_underlay_every_packet_of_a_burst_arrives() {
    let (dir, underlay, handle, mut port, engine) = engine_with_tunnel("h", 5, 48);
    // The kernel cannot leave the packets' UDP checksums to this device: it computes them
    // (an older kernel refuses a UDP GSO message then, and the port sends its packets
    // one by one, as for any message refused).
    let out = std::process::Command::new("ethtool")
        .args(["-K", &underlay.veth, "tx", "off"])
        .output()
        .expect("ethtool (apt-get install ethtool)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    use vringswitch_tests::frontend::TestVm;
    let mut vm = TestVm::connect(
        &dir.path().join("vm.sock"),
        vringswitch_tests::mac(1),
        Default::default(),
    );
    let before = kernel_rx_packets(&underlay);
    for round in 0..2u16 {
        let burst: Vec<Vec<u8>> = (0..40)
            .map(|i| numbered(vringswitch_tests::mac(1), round * 40 + i, 60))
            .collect();
        vm.offer_quietly(TestVm::tx(0), &burst);
        vm.kick(TestVm::tx(0));
        eventually("the burst through", || {
            kernel_rx_packets(&underlay) - before >= 40 * u64::from(round + 1)
        });
    }
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(kernel_rx_packets(&underlay) - before, 80);
    assert_eq!(handle.stats().snapshot().tx_packets, 80);
    engine.stop();
    port.stop();
}

/// Addresses on `lo`, removed when dropped.
struct LoAddrs(Vec<Ipv4Addr>);

impl LoAddrs {
    fn add(addrs: &[Ipv4Addr]) -> LoAddrs {
        for a in addrs {
            let _ = std::process::Command::new("ip")
                .args(["addr", "del", &format!("{a}/32"), "dev", "lo"])
                .output();
            vringswitch_tests::netns::ip(&["addr", "add", &format!("{a}/32"), "dev", "lo"]);
        }
        LoAddrs(addrs.to_vec())
    }
}

impl Drop for LoAddrs {
    fn drop(&mut self) {
        for a in &self.0 {
            let _ = std::process::Command::new("ip")
                .args(["addr", "del", &format!("{a}/32"), "dev", "lo"])
                .output();
        }
    }
}

#[test]
fn three_hosts_in_static_mode_carry_every_pair_and_broadcast_without_loss() {
    use vringswitch_tests::daemon::Daemon;
    use vringswitch_tests::frontend::{TestVm, VmOptions};
    use vringswitch_tests::layout::{vhost_user, vxlan_static, Layout};
    use vringswitch_tests::{frame, mac, BROADCAST};
    // Three "hosts": three daemons, each with its own tunnel address (on `lo`: the tunnel
    // packets cross the kernel's IP stack as between hosts) and two test VMs.
    let hosts: Vec<Ipv4Addr> = (1..=3).map(|i| Ipv4Addr::new(10, 98, 9, i)).collect();
    let _addrs = LoAddrs::add(&hosts);
    let dirs: Vec<TempDir> = (0..3).map(|i| TempDir::new(&format!("vx3-{i}"))).collect();
    let mut daemons = Vec::new();
    for (i, dir) in dirs.iter().enumerate() {
        let others: Vec<Ipv4Addr> = hosts.iter().copied().filter(|&h| h != hosts[i]).collect();
        let sock = |n: usize| dir.path().join(format!("vm{n}.sock"));
        let layout = Layout::new()
            .bridge("br0")
            .port(vhost_user("vm0", "br0", &sock(0)))
            .port(vhost_user("vm1", "br0", &sock(1)))
            .port(vxlan_static("tun", "br0", 77, hosts[i], &others));
        daemons.push(Daemon::start(dir.path(), &layout.toml(), &layout.sockets()));
    }
    // VM k (MAC k + 1) is VM k % 2 of host k / 2.
    let mut vms: Vec<TestVm> = (0..6)
        .map(|k| {
            let sock = dirs[k / 2].path().join(format!("vm{}.sock", k % 2));
            let mut vm = TestVm::connect(&sock, mac(k as u8 + 1), VmOptions::default());
            vm.post_rx(TestVm::rx(0), 128, 2048);
            vm
        })
        .collect();
    for (i, d) in daemons.iter().enumerate() {
        d.wait_port_connected("vm0", true);
        d.wait_port_connected("vm1", true);
        assert!(d.log_text().contains("VXLAN tunnel open"), "host {i}");
    }
    // Each VM broadcasts once: every other VM gets it, wherever it is.
    for k in 0..6 {
        let b = frame(BROADCAST, mac(k as u8 + 1), 100, k as u8);
        vms[k].send(TestVm::tx(0), &b);
        for (j, vm) in vms.iter_mut().enumerate() {
            if j == k {
                continue;
            }
            let got = vm.expect_frames(TestVm::rx(0), 1, T);
            assert_eq!(got[0].frame, b, "broadcast from VM {k} at VM {j}");
        }
    }
    // Then unicast, every ordered pair, 20 frames each: each arrives once, whole, in order,
    // and only at its destination.
    for k in 0..6 {
        for j in 0..6 {
            if j == k {
                continue;
            }
            let sent: Vec<Vec<u8>> = (0..20u8)
                .map(|s| frame(mac(j as u8 + 1), mac(k as u8 + 1), 200 + usize::from(s), s))
                .collect();
            for f in &sent {
                vms[k].send(TestVm::tx(0), f);
            }
            let got: Vec<Vec<u8>> = vms[j]
                .expect_frames(TestVm::rx(0), sent.len(), T)
                .into_iter()
                .map(|r| r.frame)
                .collect();
            assert_eq!(got, sent, "VM {k} to VM {j}");
            for (o, vm) in vms.iter_mut().enumerate() {
                if o != j && o != k {
                    assert!(
                        vm.recv(TestVm::rx(0)).is_empty(),
                        "VM {o} got VM {k}'s frames to {j}"
                    );
                }
            }
            vms[j].post_rx(TestVm::rx(0), sent.len(), 2048);
        }
    }
    for (i, d) in daemons.iter().enumerate() {
        let (code, tun) = vringswitch_tests::api::call(d, "GET", "/v1/ports/tun", None);
        assert_eq!(code, 200, "{tun}");
        let drops = &tun["counters"]["drops"];
        assert!(
            drops.as_object().unwrap().values().all(|v| v == 0),
            "{drops}"
        );
        // Each other host is a remote end with its two VMs' addresses behind it, learnt.
        let remotes = tun["remotes"]
            .as_array()
            .expect("a tunnel shows its remote ends");
        assert_eq!(remotes.len(), 2, "{tun}");
        for r in remotes {
            let h = hosts
                .iter()
                .position(|a| r["address"] == a.to_string())
                .unwrap_or_else(|| panic!("{r}"));
            assert_ne!(h, i);
            let macs: Vec<String> = r["macs"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| {
                    assert_eq!(m["learnt"], true, "{m}");
                    m["mac"].as_str().unwrap().to_owned()
                })
                .collect();
            let want: Vec<String> = [2 * h + 1, 2 * h + 2]
                .iter()
                .map(|&n| {
                    let m = mac(n as u8);
                    format!(
                        "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
                        m[0], m[1], m[2], m[3], m[4], m[5]
                    )
                })
                .collect();
            assert_eq!(macs, want, "host {i}'s view of host {h}");
            // Both ways: 2 broadcasts, and 20 frames from each of 2 VMs to each of 2.
            assert_eq!(r["rx_packets"], 82, "{r}");
            assert_eq!(r["tx_packets"], 82, "{r}");
        }
        let shown = d.vringctl(&["port", "show", "tun"]);
        assert!(shown.contains("REMOTE END"), "{shown}");
        // And in /metrics, per remote end.
        for h in (0..3).filter(|&h| h != i) {
            let remote = hosts[h].to_string();
            let l = [("port", "tun"), ("remote", remote.as_str())];
            assert_eq!(
                d.metric("vringswitch_tunnel_remote_rx_packets_total", &l),
                82
            );
            assert_eq!(
                d.metric("vringswitch_tunnel_remote_tx_packets_total", &l),
                82
            );
            assert_eq!(d.metric("vringswitch_tunnel_remote_macs", &l), 2);
        }
    }
}

#[test]
fn a_static_tunnels_remote_ends_change_while_it_runs() {
    use std::net::UdpSocket;
    use std::time::Duration;
    use vringswitch_tests::daemon::Daemon;
    use vringswitch_tests::frontend::{TestVm, VmOptions};
    use vringswitch_tests::layout::{vhost_user, vxlan_static, Layout};
    use vringswitch_tests::{frame, mac, BROADCAST};
    let addrs: Vec<Ipv4Addr> = (1..=3).map(|i| Ipv4Addr::new(10, 98, 7, i)).collect();
    let _lo = LoAddrs::add(&addrs);
    // The remote ends: UDP sockets on their addresses.
    let ends: Vec<UdpSocket> = addrs[1..]
        .iter()
        .map(|a| {
            let s = UdpSocket::bind((*a, 4789)).unwrap();
            s.set_read_timeout(Some(Duration::from_millis(300)))
                .unwrap();
            s
        })
        .collect();
    let dir = TempDir::new("vxlan-live");
    let sock = dir.path().join("vm.sock");
    let layout = Layout::new()
        .bridge("br0")
        .port(vhost_user("vm", "br0", &sock))
        .port(vxlan_static("tun", "br0", 7, addrs[0], &addrs[1..2]));
    let d = Daemon::start(dir.path(), &layout.toml(), &layout.sockets());
    let mut vm = TestVm::connect(&sock, mac(1), VmOptions::default());
    vm.post_rx(TestVm::rx(0), 64, 2048);
    d.wait_port_connected("vm", true);
    let mut buf = [0u8; 2048];
    let mut flood = |seed: u8| {
        vm.send(TestVm::tx(0), &frame(BROADCAST, mac(1), 100, seed));
        ends.iter()
            .map(|e| e.recv(&mut buf).map(|n| n == 8 + 114).unwrap_or(false))
            .collect::<Vec<bool>>()
    };
    assert_eq!(flood(1), [true, false], "one remote end");
    // A packet from the second address is no end's yet.
    let inner = frame(mac(1), mac(9), 50, 0);
    let packet = [&[0x08, 0, 0, 0, 0, 0, 7, 0][..], &inner].concat();
    ends[1].send_to(&packet, (addrs[0], 4789)).unwrap();
    eventually("an unknown_vtep drop", || {
        d.metric(
            "vringswitch_port_drops_total",
            &[("port", "tun"), ("reason", "unknown_vtep")],
        ) == 1
    });
    let (code, port) = vringswitch_tests::api::call(
        &d,
        "PATCH",
        "/v1/ports/tun",
        Some(serde_json::json!({"settings": {"remotes": ["10.98.7.2", "10.98.7.3"]}})),
    );
    assert_eq!(code, 200, "{port}");
    assert_eq!(port["remotes"].as_array().map(Vec::len), Some(2), "{port}");
    assert_eq!(flood(2), [true, true], "both remote ends");
    ends[1].send_to(&packet, (addrs[0], 4789)).unwrap();
    let got = vm.expect_frames(TestVm::rx(0), 1, T);
    assert_eq!(got[0].frame, inner, "the new end's frame delivered");
    // The VM noticed nothing.
    assert_eq!(
        d.metric("vringswitch_port_reconnects_total", &[("port", "vm")]),
        0
    );
    let (_, shown) = vringswitch_tests::api::call(&d, "GET", "/v1/ports/tun", None);
    assert_eq!(shown["remotes"][1]["address"], "10.98.7.3", "{shown}");
    assert_eq!(shown["remotes"][1]["rx_packets"], 1, "{shown}");
}
