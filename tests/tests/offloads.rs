//! Checksum and segmentation offloads between test VMs through the daemon: a TSO frame
//! reaches a VM that negotiated TSO as it is (header and all), and one that did not as
//! segments whose checksums check out; a checksum left to the receiver is completed for a
//! VM that cannot; hostile headers are counted as `bad_offload` and go nowhere.
//! Frames are built and checked with etherparse, an implementation independent of ours.

use std::time::Duration;

use etherparse::{PacketBuilder, SlicedPacket, TransportSlice};
use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_ECN, VIRTIO_NET_F_GUEST_TSO4,
    VIRTIO_NET_F_GUEST_TSO6, VIRTIO_NET_F_HOST_ECN, VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6,
};
use vringswitch_tests::api::call;
use vringswitch_tests::daemon::{Daemon, TempDir};
use vringswitch_tests::frontend::{Received, TestVm, VmOptions, HDR_LEN};
use vringswitch_tests::layout::{
    access, tap_with, trunk, vhost_user, vhost_user_with, Layout, PortSpec, TapSettings,
    VhostUserSettings,
};
use vringswitch_tests::mac;
use vringswitch_tests::setup::{Setup, T};

const SENDS_OFFLOADS: u64 = (1 << VIRTIO_NET_F_CSUM)
    | (1 << VIRTIO_NET_F_HOST_TSO4)
    | (1 << VIRTIO_NET_F_HOST_TSO6)
    | (1 << VIRTIO_NET_F_HOST_ECN);
const TAKES_OFFLOADS: u64 = (1 << VIRTIO_NET_F_GUEST_CSUM)
    | (1 << VIRTIO_NET_F_GUEST_TSO4)
    | (1 << VIRTIO_NET_F_GUEST_TSO6)
    | (1 << VIRTIO_NET_F_GUEST_ECN);

fn with(offloads: u64) -> VmOptions {
    VmOptions {
        offloads,
        ..VmOptions::default()
    }
}

/// A TCP over IPv4 frame from mac(1) to mac(2) with `payload`, its checksum field holding
/// the pseudo-header sum as a sender that leaves the checksum to its device writes it.
fn tcp_frame(payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    PacketBuilder::ethernet2(mac(1), mac(2))
        .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
        .tcp(40000, 5201, 7, 64000)
        .ack(1)
        .psh()
        .write(&mut f, payload)
        .unwrap();
    let tcp_len = (f.len() - 34) as u32;
    let field = pseudo_sum(&f[26..34], 6, tcp_len);
    f[50..52].copy_from_slice(&field.to_be_bytes());
    f
}

/// A UDP over IPv4 frame from mac(1) to mac(2), its checksum left to the receiver.
fn udp_frame(payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    PacketBuilder::ethernet2(mac(1), mac(2))
        .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
        .udp(4000, 5000)
        .write(&mut f, payload)
        .unwrap();
    let field = pseudo_sum(&f[26..34], 17, (f.len() - 34) as u32);
    f[40..42].copy_from_slice(&field.to_be_bytes());
    f
}

/// The folded (not complemented) sum of an IPv4 pseudo-header.
fn pseudo_sum(addrs: &[u8], proto: u8, len: u32) -> u16 {
    let mut s: u32 = 0;
    for w in addrs.chunks(2) {
        s += u32::from(u16::from_be_bytes([w[0], w[1]]));
    }
    s += u32::from(proto) + len;
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

/// A virtio-net header: flags, gso_type, hdr_len, gso_size, csum_start, csum_offset.
fn header(flags: u8, gso_type: u8, hdr_len: u16, gso_size: u16, start: u16, off: u16) -> [u8; 12] {
    let mut h = [0u8; HDR_LEN];
    h[0] = flags;
    h[1] = gso_type;
    h[2..4].copy_from_slice(&hdr_len.to_le_bytes());
    h[4..6].copy_from_slice(&gso_size.to_le_bytes());
    h[6..8].copy_from_slice(&start.to_le_bytes());
    h[8..10].copy_from_slice(&off.to_le_bytes());
    h
}

/// Sends `frame` behind `hdr` from `vm`, in descriptors of 16 KiB at most.
fn send(vm: &mut TestVm, hdr: [u8; 12], frame: &[u8]) {
    let cuts: Vec<usize> = (1..=frame.len() / 0x4000).map(|i| i * 0x4000).collect();
    vm.send_split_with_header(TestVm::tx(0), hdr, frame, &cuts);
    vm.kick(TestVm::tx(0));
}

/// The payload of a TCP or UDP frame, after checking its IP and L4 checksums.
fn checked_payload(frame: &[u8]) -> Vec<u8> {
    let p = SlicedPacket::from_ethernet(frame).expect("an Ethernet frame");
    let Some(etherparse::InternetSlice::Ipv4(ip)) = &p.net else {
        panic!("not IPv4")
    };
    let h = ip.header();
    assert_eq!(h.header_checksum(), h.to_header().calc_header_checksum());
    match p.transport.expect("a transport header") {
        TransportSlice::Tcp(t) => {
            let want = t.calc_checksum_ipv4(h.source(), h.destination()).unwrap();
            assert_eq!(t.checksum(), want, "TCP checksum");
            t.payload().to_vec()
        }
        TransportSlice::Udp(u) => {
            let want = u
                .to_header()
                .calc_checksum_ipv4_raw(h.source(), h.destination(), u.payload())
                .unwrap();
            assert_eq!(u.checksum(), want, "UDP checksum");
            u.payload().to_vec()
        }
        _ => panic!("neither TCP nor UDP"),
    }
}

fn offloads(s: &Setup, port: &str, action: &str) -> u64 {
    s.daemon.metric(
        "vringswitch_port_offloads_total",
        &[("port", port), ("action", action)],
    )
}

/// One TSO frame flooded to a VM that takes TSO and to one that does not: the first gets it
/// whole with its header, the second as segments that check out; a checksum left open is
/// passed to the first and completed for the second.
#[test]
fn a_flooded_tso_frame_reaches_each_vm_as_it_can_take_it() {
    let s = Setup::new("offloads", &[("br0", &["a", "b", "c"])], 1);
    let mut a = s.vm_with("a", 1, with(SENDS_OFFLOADS));
    let mut b = s.vm_with("b", 2, with(TAKES_OFFLOADS));
    let mut c = s.vm_with("c", 3, with(0));
    s.wait_connected(&["a", "b", "c"]);

    let payload: Vec<u8> = (0..20_000u32).map(|i| (i * 7 + 1) as u8).collect();
    let frame = tcp_frame(&payload);
    // As Linux sends one: NEEDS_CSUM, TCPV4, headers 54 bytes, segments of 1448.
    send(&mut a, header(1, 1, 54, 1448, 34, 16), &frame);

    let got = b.expect_frames(TestVm::rx(0), 1, T);
    assert!(
        got[0].frame == frame,
        "the TSO frame arrives as it was sent"
    );
    assert_eq!(&got[0].header[..10], &header(1, 1, 54, 1448, 34, 16)[..10]);
    assert!(got[0].num_buffers > 1, "over mergeable buffers");

    let segments = c.expect_frames(TestVm::rx(0), 14, T);
    let mut joined = Vec::new();
    for Received { frame, header, .. } in &segments {
        assert_eq!(
            header[..10],
            [0; 10],
            "segments need nothing of their receiver"
        );
        assert!(frame.len() <= 14 + 20 + 20 + 1448);
        joined.extend(checked_payload(frame));
    }
    assert!(joined == payload, "the segments carry the payload in order");
    c.expect_nothing(TestVm::rx(0), Duration::from_millis(200));
    assert_eq!(offloads(&s, "b", "passed"), 1);
    assert_eq!(offloads(&s, "c", "segmented"), 1);
    assert_eq!(s.counter("tx_packets", "c"), 14);

    // A UDP checksum left to the receiver.
    let udp = udp_frame(&[5; 999]);
    send(&mut a, header(1, 0, 0, 0, 34, 6), &udp);
    let got = b.expect_frames(TestVm::rx(0), 1, T);
    assert!(got[0].frame == udp);
    assert_eq!(&got[0].header[..10], &header(1, 0, 0, 0, 34, 6)[..10]);
    let got = c.expect_frames(TestVm::rx(0), 1, T);
    assert_eq!(got[0].header[..10], [0; 10]);
    assert_eq!(checked_payload(&got[0].frame), vec![5; 999]);
    assert_eq!(offloads(&s, "b", "passed"), 2);
    assert_eq!(offloads(&s, "c", "checksummed"), 1);
    assert_eq!(s.drops("a", "bad_offload"), 0);
}

/// Headers that lie, or ask what was not negotiated, are dropped at their source and
/// counted there; a VM that negotiated no offloads has its header ignored, as it means
/// nothing.
#[test]
fn hostile_offload_headers_are_counted_and_go_nowhere() {
    let s = Setup::new("badoffload", &[("br0", &["a", "b", "c"])], 1);
    let mut a = s.vm_with("a", 1, with(SENDS_OFFLOADS));
    let mut b = s.vm_with("b", 2, with(TAKES_OFFLOADS));
    let mut c = s.vm_with("c", 3, with(0));
    s.wait_connected(&["a", "b", "c"]);

    let tcp = tcp_frame(&[1; 5000]);
    let udp = udp_frame(&[1; 5000]);
    let long = tcp_frame(&[1; 60_000]);
    // 65,550 bytes untagged: an IPv4 datagram of 65,536, one more than its length field
    // holds (the IP header still says 65,040; the frame is what counts).
    let mut too_long = tcp_frame(&[1; 65_000]);
    too_long.resize(65_550, 1);
    let bad: [(&str, [u8; 12], &[u8]); 8] = [
        ("gso_size 0", header(1, 1, 54, 0, 34, 16), &tcp),
        (
            "csum_start past the frame",
            header(1, 0, 0, 0, 6000, 16),
            &tcp,
        ),
        (
            "hdr_len past the frame",
            header(1, 1, 9000, 1448, 34, 16),
            &tcp,
        ),
        ("UFO, not offered", header(1, 3, 42, 1400, 34, 6), &udp),
        ("TSO of a UDP frame", header(1, 1, 42, 1400, 34, 6), &udp),
        (
            "TSO without a checksum to complete",
            header(0, 1, 54, 1448, 34, 16),
            &tcp,
        ),
        // 1,250 segments for a receiver without TSO; 536 is the smallest segment taken.
        (
            "60,000 bytes in segments of 48",
            header(1, 1, 54, 48, 34, 16),
            &long,
        ),
        // One segment of it would claim an IPv4 total length of 0.
        (
            "an untagged 65,550-byte TSO frame",
            header(1, 1, 54, 65_535, 34, 16),
            &too_long,
        ),
    ];
    for (i, (what, hdr, frame)) in bad.iter().enumerate() {
        send(&mut a, *hdr, frame);
        a.wait_tx_done(TestVm::tx(0), T);
        assert_eq!(s.drops("a", "bad_offload"), i as u64 + 1, "{what}");
    }
    b.expect_nothing(TestVm::rx(0), Duration::from_millis(200));
    c.expect_nothing(TestVm::rx(0), Duration::from_millis(10));

    // ECN without HOST_ECN: a VM that did not negotiate it.
    let mut d_opts = with((1 << VIRTIO_NET_F_CSUM) | (1 << VIRTIO_NET_F_HOST_TSO4));
    d_opts.strict = true;
    drop(c);
    let mut d = s.vm_with("c", 4, d_opts);
    s.wait_connected(&["c"]);
    send(&mut d, header(1, 0x81, 54, 1448, 34, 16), &tcp);
    d.wait_tx_done(TestVm::tx(0), T);
    assert_eq!(s.drops("c", "bad_offload"), 1);

    // A VM that negotiated nothing: its header is not read, the frame goes as it is.
    drop(d);
    let mut e = s.vm_with("c", 5, with(0));
    s.wait_connected(&["c"]);
    let plain = tcp_frame(&[2; 100]);
    send(&mut e, header(1, 1, 0, 0, 0xffff, 0xffff), &plain);
    let got = b.expect_frames(TestVm::rx(0), 1, T);
    assert!(got[0].frame == plain);
    assert_eq!(got[0].header[..10], [0; 10]);
    assert_eq!(s.drops("c", "bad_offload"), 1);
}

/// A port with `offloads = false` offers none of the offload features; one without the
/// setting offers them all, both directions.
#[test]
fn offloads_are_offered_unless_a_port_turns_them_off() {
    use vhost::vhost_user::Frontend;
    use vhost::VhostBackend;
    let dir = TempDir::new("offloadsoff");
    let on = dir.path().join("on.sock");
    let off = dir.path().join("off.sock");
    let toml = Layout::new()
        .bridge("br0")
        .port(vhost_user("on", "br0", &on))
        .port(vhost_user_with(
            "off",
            "br0",
            VhostUserSettings {
                socket: off.clone(),
                offloads: Some(false),
                ..VhostUserSettings::default()
            },
        ))
        .toml();
    let d = Daemon::start(dir.path(), &toml, &[on.clone(), off.clone()]);
    let all = SENDS_OFFLOADS | TAKES_OFFLOADS;
    let offered = |socket: &std::path::Path| {
        let f = Frontend::connect(socket, 2).unwrap();
        f.set_owner().unwrap();
        f.get_features().unwrap()
    };
    assert_eq!(offered(&on) & all, all);
    assert_eq!(offered(&off) & all, 0);
    let port = d.vringctl(&["port", "show", "off"]);
    assert!(port.contains("offloads: off"), "{port}");
    let port = d.vringctl(&["port", "show", "on"]);
    assert!(port.contains("offloads: on; frames passed 0"), "{port}");
    // The setting is for ports with a peer that negotiates.
    let refused = call(
        &d,
        "POST",
        "/v1/ports",
        Some(serde_json::json!({"name": "x", "bridge": "br0", "type": "afxdp", "offloads": true})),
    );
    assert_eq!(refused.0, 400, "{refused:?}");
    assert!(refused.1.to_string().contains("offloads"), "{refused:?}");
}

/// A daemon with VM port `a` (which sends offloads) and two TAP ports on one bridge: `on`
/// with offloads, `off` without, both at MTU 1500.
struct TapPair {
    _dir: TempDir,
    d: Daemon,
    on: String,
    off: String,
    a: TestVm,
}

impl TapPair {
    fn start(tag: &str) -> TapPair {
        let dir = TempDir::new(tag);
        let id = std::process::id() % 10_000;
        let (on, off) = (format!("{tag}a{id}"), format!("{tag}b{id}"));
        let vm = dir.path().join("a.sock");
        let tap_port = |name: &str, ifname: &str, offloads| {
            tap_with(
                name,
                "br0",
                TapSettings {
                    ifname: Some(ifname.to_owned()),
                    mtu: Some(1500),
                    offloads,
                },
            )
        };
        let toml = Layout::new()
            .bridge("br0")
            .port(vhost_user("a", "br0", &vm))
            .port(tap_port("on", &on, None))
            .port(tap_port("off", &off, Some(false)))
            .toml();
        let d = Daemon::start(dir.path(), &toml, std::slice::from_ref(&vm));
        // The kernel's own frames from each interface (IPv6 neighbour discovery) would
        // reach the other through the bridge: none.
        for i in [&on, &off] {
            std::fs::write(format!("/proc/sys/net/ipv6/conf/{i}/disable_ipv6"), "1").unwrap();
        }
        let mut a = TestVm::connect(&vm, mac(1), with(SENDS_OFFLOADS));
        a.post_rx(TestVm::rx(0), 64, 2048);
        std::thread::sleep(Duration::from_millis(300));
        TapPair {
            _dir: dir,
            d,
            on,
            off,
            a,
        }
    }

    /// A counter of the kernel's for interface `ifname`.
    fn stat(ifname: &str, what: &str) -> u64 {
        std::fs::read_to_string(format!("/sys/class/net/{ifname}/statistics/{what}"))
            .unwrap_or_else(|e| panic!("{ifname}'s {what}: {e}"))
            .trim()
            .parse()
            .unwrap()
    }

    /// Packets each interface received so far: `[on, off]`.
    fn received(&self) -> [u64; 2] {
        [&self.on, &self.off].map(|i| Self::stat(i, "rx_packets"))
    }

    /// Frames dropped on the way to each TAP port as `too_big`: `[on, off]`.
    fn too_big(&self) -> [u64; 2] {
        ["on", "off"].map(|p| {
            self.d.metric(
                "vringswitch_port_drops_total",
                &[("port", p), ("reason", "too_big")],
            )
        })
    }
}

/// A TSO frame from a VM reaches the kernel through a TAP port whole (one packet of the
/// interface, the kernel segments it if it must), or, with the port's offloads off, as the
/// segments the switch cut; the interface's own counters say which.
#[test]
fn a_tap_port_passes_tso_frames_to_the_kernel_unless_its_offloads_are_off() {
    let mut p = TapPair::start("vsoff");
    let before = p.received();
    let bytes_before =
        p.d.metric("vringswitch_port_tx_bytes_total", &[("port", "on")]);
    let payload: Vec<u8> = (0..20_000u32).map(|i| i as u8).collect();
    // To an unknown MAC: flooded to both TAP ports.
    send(
        &mut p.a,
        header(1, 1, 54, 1448, 34, 16),
        &tcp_frame(&payload),
    );
    p.a.wait_tx_done(TestVm::tx(0), T);
    vringswitch_tests::wait_until(T, "the frames at both interfaces", || {
        let now = p.received();
        (now[0] > before[0] && now[1] >= before[1] + 14).then_some(())
    });
    std::thread::sleep(Duration::from_millis(200));
    let now = p.received();
    assert_eq!(now[0] - before[0], 1, "one TSO frame");
    assert_eq!(now[1] - before[1], 14, "14 segments");
    let passed = p.d.metric(
        "vringswitch_port_offloads_total",
        &[("port", "on"), ("action", "passed")],
    );
    let cut = p.d.metric(
        "vringswitch_port_offloads_total",
        &[("port", "off"), ("action", "segmented")],
    );
    assert_eq!((passed, cut), (1, 1));
    let bytes =
        p.d.metric("vringswitch_port_tx_bytes_total", &[("port", "on")]);
    assert_eq!(
        bytes - bytes_before,
        20_054,
        "the frame, without its header"
    );
    assert_eq!(p.too_big(), [0, 0]);
}

/// The receiver's MTU bounds what a TAP port is sent, as a Linux bridge bounds it: a frame
/// longer than the interface's MTU (plus the Ethernet header and one VLAN tag) is dropped as
/// `too_big`, and so is a TSO frame whose segments would be, whole or cut by the switch.
/// An MTU changed with `ip link` while the port runs counts within a second.
#[test]
fn a_tap_port_is_never_sent_a_frame_or_segment_longer_than_its_mtu_allows() {
    let mut p = TapPair::start("vsmtu");
    for i in [&p.on, &p.off] {
        vringswitch_tests::netns::ip(&["link", "set", "dev", i, "mtu", "1400"]);
    }
    std::thread::sleep(Duration::from_millis(1000));
    let payload: Vec<u8> = (0..8000u32).map(|i| i as u8).collect();
    // Segments of 1448 bytes make 1502-byte frames: over 1400 + 18 for both ports.
    let before = p.received();
    send(
        &mut p.a,
        header(1, 1, 54, 1448, 34, 16),
        &tcp_frame(&payload),
    );
    p.a.wait_tx_done(TestVm::tx(0), T);
    vringswitch_tests::wait_until(T, "both drops counted", || {
        (p.too_big() == [1, 1]).then_some(())
    });
    // A plain frame of 1500 bytes (1514 with its Ethernet header) is over as well.
    let plain = tcp_frame(&payload[..1460]);
    assert_eq!(plain.len(), 1514);
    p.a.send(TestVm::tx(0), &plain);
    vringswitch_tests::wait_until(T, "both drops counted", || {
        (p.too_big() == [2, 2]).then_some(())
    });
    // Segments of 1346 bytes (1400-byte frames) fit: one TSO frame to `on`, 6 segments to
    // `off`; and so does a plain frame of exactly 1418 bytes.
    send(
        &mut p.a,
        header(1, 1, 54, 1346, 34, 16),
        &tcp_frame(&payload),
    );
    p.a.send(TestVm::tx(0), &tcp_frame(&payload[..1364]));
    vringswitch_tests::wait_until(T, "the frames at both interfaces", || {
        let now = p.received();
        (now[0] >= before[0] + 2 && now[1] >= before[1] + 7).then_some(())
    });
    std::thread::sleep(Duration::from_millis(200));
    let now = p.received();
    assert_eq!([now[0] - before[0], now[1] - before[1]], [2, 7]);
    assert_eq!(p.too_big(), [2, 2]);
}

/// A TSO frame from an access port to trunks: a tag is pushed on the way, and the header
/// passed to a TSO guest moves with it (csum_start and hdr_len 4 bytes on); a guest without
/// offloads gets tagged segments that check out.
#[test]
fn a_tag_pushed_on_a_tso_frame_moves_its_header_and_tags_its_segments() {
    let dir = TempDir::new("offloadvlan");
    let socks: Vec<_> = ["a", "b", "c"]
        .iter()
        .map(|p| dir.path().join(format!("{p}.sock")))
        .collect();
    let port = |name: &str, sock: &std::path::Path, vlan| PortSpec {
        vlan: Some(vlan),
        ..vhost_user(name, "br0", sock)
    };
    let toml = Layout::new()
        .bridge("br0")
        .port(port("a", &socks[0], access(10)))
        .port(port("b", &socks[1], trunk(&[10])))
        .port(port("c", &socks[2], trunk(&[10])))
        .toml();
    let d = Daemon::start(dir.path(), &toml, &socks);
    let vm = |i: usize, n: u8, offloads: u64| {
        let mut vm = TestVm::connect(&socks[i], mac(n), with(offloads));
        vm.post_rx(TestVm::rx(0), 64, 2048);
        vm
    };
    let mut a = vm(0, 1, SENDS_OFFLOADS);
    let mut b = vm(1, 2, TAKES_OFFLOADS);
    let mut c = vm(2, 3, 0);
    std::thread::sleep(Duration::from_millis(300));

    let payload: Vec<u8> = (0..10_000u32).map(|i| (i * 3) as u8).collect();
    let frame = tcp_frame(&payload);
    send(&mut a, header(1, 1, 54, 1448, 34, 16), &frame);
    let mut tagged = frame[..12].to_vec();
    tagged.extend_from_slice(&[0x81, 0x00, 0x00, 10]);
    tagged.extend_from_slice(&frame[12..]);
    let got = b.expect_frames(TestVm::rx(0), 1, T);
    assert!(got[0].frame == tagged, "the TSO frame, tagged with VLAN 10");
    assert_eq!(&got[0].header[..10], &header(1, 1, 58, 1448, 38, 16)[..10]);
    let segments = c.expect_frames(TestVm::rx(0), 7, T);
    let mut joined = Vec::new();
    for s in &segments {
        assert_eq!(
            s.frame[12..16],
            [0x81, 0x00, 0x00, 10],
            "each segment tagged"
        );
        joined.extend(checked_payload(&s.frame));
    }
    assert!(joined == payload);
    c.expect_nothing(TestVm::rx(0), Duration::from_millis(200));
    let offloads = |port, action| {
        d.metric(
            "vringswitch_port_offloads_total",
            &[("port", port), ("action", action)],
        )
    };
    assert_eq!(
        (offloads("b", "passed"), offloads("c", "segmented")),
        (1, 1)
    );
}

/// Segmentation is charged to its sender: a TSO frame the switch is to cut takes a turn of
/// the sender's burst per segment, so that one burst of a VM's is never more work than 32
/// full-size frames. Eight TSO frames of 14 segments each, offered at once: to a VM that
/// takes TSO they go in one burst; to one that does not, in bursts of at most 3 frames.
#[test]
fn tso_frames_the_switch_cuts_take_a_turn_of_their_sender_s_burst_per_segment() {
    let s = Setup::new("offloadcharge", &[("br0", &["a", "b", "c"])], 1);
    let mut a = s.vm_with("a", 1, with(SENDS_OFFLOADS));
    let mut b = s.vm_with("b", 2, with(TAKES_OFFLOADS));
    let mut c = s.vm_with("c", 3, with(0));
    s.wait_connected(&["a", "b", "c"]);
    // b and c announce themselves: the frames below are known unicast.
    b.send(
        TestVm::tx(0),
        &vringswitch_tests::frame([0xff; 6], mac(2), 50, 0),
    );
    c.send(
        TestVm::tx(0),
        &vringswitch_tests::frame([0xff; 6], mac(3), 50, 0),
    );
    a.expect_frames(TestVm::rx(0), 2, T);
    b.expect_frames(TestVm::rx(0), 1, T);
    c.expect_frames(TestVm::rx(0), 1, T);
    b.post_rx(TestVm::rx(0), 128, 2048);
    c.post_rx(TestVm::rx(0), 128, 2048);
    // Bursts of more than 2, 4 and 8 chains so far.
    let over = |n: &str| -> u64 {
        let total = s
            .daemon
            .metric("vringswitch_worker_burst_size_count", &[("core", "1")]);
        total
            - s.daemon.metric(
                "vringswitch_worker_burst_size_bucket",
                &[("core", "1"), ("le", n)],
            )
    };
    let payload: Vec<u8> = (0..20_000u32).map(|i| (i * 7 + 1) as u8).collect();
    for (n, vm) in [(2u8, &mut b), (3, &mut c)] {
        let mut frame = tcp_frame(&payload);
        frame[..6].copy_from_slice(&mac(n));
        let frames: Vec<([u8; 12], Vec<u8>)> = (0..8)
            .map(|_| (header(1, 1, 54, 1448, 34, 16), frame.clone()))
            .collect();
        // The worker is asleep by now: it sees all eight at once, at the kick.
        std::thread::sleep(Duration::from_millis(300));
        let before = [over("2"), over("4"), over("8")];
        a.offer_quietly_with_headers(TestVm::tx(0), &frames, &[0x4000]);
        a.kick(TestVm::tx(0));
        let want = if n == 2 { 8 } else { 8 * 14 };
        let got = vm.expect_frames(TestVm::rx(0), want, T);
        a.wait_tx_done(TestVm::tx(0), T);
        let after = [over("2"), over("4"), over("8")];
        let grew: Vec<u64> = after.iter().zip(before).map(|(x, y)| x - y).collect();
        if n == 2 {
            assert!(got.iter().all(|r| r.frame == frame));
            assert_eq!(grew, [1, 1, 0], "one burst of 8 chains");
        } else {
            // 14 + 14 turns, then a third frame that ends the burst: 3, 3 and 2 frames.
            assert_eq!(
                grew,
                [2, 0, 0],
                "bursts of at most 3 chains, two of them of 3"
            );
        }
    }
    assert_eq!(offloads(&s, "c", "segmented"), 8);
}
