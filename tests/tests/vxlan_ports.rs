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

fn drops(handle: &PortHandle, reason: DropReason) -> u64 {
    handle.stats().snapshot().drops[reason as usize]
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
    let dir = TempDir::new("vxlan");
    let underlay = kernel_vtep("a", 1, 42);
    let handle = Arc::new(PortHandle::new(1, "tunnel", 1));
    let mut port = tunnel(&underlay, 42, &handle);
    let socket = dir.path().join("vm.sock");
    let engine = Engine::with_uplink(&socket, &handle);

    // 1400 bytes of payload: the frame (1442 bytes) and its 50 of tunnel fit the veth's
    // 1500-byte MTU.
    let big: Vec<u8> = (0..1400u32).map(|i| i as u8).collect();
    ping_the_kernel(&socket, 1, &[b"through the tunnel", &big]);
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
        .unwrap();
    let fdb = String::from_utf8_lossy(&fdb.stdout);
    assert!(
        fdb.contains(&format!("dst {}", underlay.here)),
        "the kernel learnt the VM behind this host: {fdb}"
    );

    engine.stop();
    port.stop();
}

#[test]
fn tunnel_packets_from_strangers_or_of_another_vni_are_dropped_and_counted() {
    let dir = TempDir::new("vxlan-bad");
    let underlay = kernel_vtep("b", 2, 43);
    let handle = Arc::new(PortHandle::new(1, "tunnel", 1));
    let mut port = tunnel(&underlay, 43, &handle);
    let socket = dir.path().join("vm.sock");
    let engine = Engine::with_uplink(&socket, &handle);
    // A second address on the remote side: not an end of the segment.
    let stranger = Ipv4Addr::new(10, 98, 2, 3);
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
    let send_from = |from: Ipv4Addr, bytes: &[u8]| {
        // A UDP socket inside the remote namespace, bound to `from`.
        let ns_path = format!("/var/run/netns/{}", underlay.ns.0);
        let from_s = from.to_string();
        let here = underlay.here.to_string();
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let script = format!(
            "import socket,binascii\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n\
             s.bind(('{from_s}',0))\ns.sendto(binascii.unhexlify('{hex}'),('{here}',4789))\n"
        );
        let out = std::process::Command::new("nsenter")
            .args([&format!("--net={ns_path}"), "python3", "-c", &script])
            .output()
            .expect("nsenter and python3 (apt-get install util-linux python3)");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
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
