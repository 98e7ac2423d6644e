//! Security groups through the real daemon, with test frontends for exact counts: the rule
//! model (remote groups, ports, ICMP), replies without rules, what is not IP, spoofed
//! sources, TCP flag garbage and segments out of state, a rule removed mid-connection,
//! fragments, IPv6, the per-port limit; the frames built by etherparse, not by the code
//! under test.

use etherparse::{PacketBuilder, PacketBuilderStep, TcpHeader};
use serde_json::{json, Value};
use vringswitch_config::SecurityGroupSpec;
use vringswitch_tests::api::call;
use vringswitch_tests::frontend::TestVm;
use vringswitch_tests::layout::{vhost_user, Layout};
use vringswitch_tests::packets::{
    arp_announcement, eth6, fragment, ip4, ip6, ping, sctp, tcp, udp, Writes,
};
use vringswitch_tests::setup::{Setup, T};
use vringswitch_tests::{frame, mac};

/// The group every filtered port here is in: members may reach each other on TCP 22, UDP
/// 53 and by ICMP (ping6 too); anything may leave.
fn web(with_ssh: bool) -> SecurityGroupSpec {
    let mut rules = vec![
        json!({"direction": "ingress", "protocol": "icmp", "remote_group": "web"}),
        json!({"direction": "ingress", "protocol": "udp", "port_range_min": 53,
               "port_range_max": 53, "remote_group": "web"}),
        json!({"direction": "ingress", "ethertype": "IPv6", "protocol": "icmpv6",
               "remote_group": "web"}),
        json!({"direction": "egress"}),
        json!({"direction": "egress", "ethertype": "IPv6"}),
    ];
    if with_ssh {
        rules.push(
            json!({"direction": "ingress", "protocol": "tcp", "port_range_min": 22,
                          "port_range_max": 22, "remote_group": "web"}),
        );
    }
    serde_json::from_value(json!({"name": "web", "rules": rules})).unwrap()
}

/// br0: a and b in group web (10.0.0.1 and .2, fd00::1 and ::2), c in none (10.0.0.3).
fn layout(dir: &std::path::Path) -> Layout {
    let p = |name: &str| vhost_user(name, "br0", &dir.join(format!("{name}.sock")));
    let member = |name: &str, n: u8| {
        let mut port = p(name);
        port.security_groups = Some(vec!["web".into()]);
        port.allowed_ips = Some(vec![format!("10.0.0.{n}"), format!("fd00::{n}/128")]);
        port
    };
    Layout::new()
        .bridge("br0")
        .ports([member("a", 1), member("b", 2), p("c")])
        .security_groups([web(true)])
}

/// `b`'s frame with `payload` after its headers.
fn written<B: Writes>(b: B, payload: &[u8]) -> Vec<u8> {
    b.bytes(payload)
}

/// The network with its frontends: send from one, see what another got.
struct Net {
    s: Setup,
    vms: Vec<(String, TestVm)>,
}

impl Net {
    fn new(tag: &str, build: impl FnOnce(&std::path::Path) -> Layout) -> Net {
        let s = Setup::with_layout(tag, build);
        let vms: Vec<(String, TestVm)> = [("a", 1), ("b", 2), ("c", 3)]
            .into_iter()
            .map(|(n, m)| (n.to_owned(), s.vm(n, m)))
            .collect();
        s.wait_connected(&["a", "b", "c"]);
        let mut net = Net { s, vms };
        // Each announces itself (ARP, its own address): the bridge learns every MAC, so
        // that nothing below is flooded.
        for n in 1..=3u8 {
            net.send(n, &arp_announcement(n));
        }
        for n in 1..=3u8 {
            assert_eq!(
                net.got_within(n, 2),
                2,
                "every ARP announcement reaches the others"
            );
        }
        net
    }

    fn vm(&mut self, n: u8) -> &mut TestVm {
        &mut self.vms[usize::from(n - 1)].1
    }

    fn send(&mut self, from: u8, f: &[u8]) {
        let vm = self.vm(from);
        vm.send(TestVm::tx(0), f);
        vm.wait_tx_done(TestVm::tx(0), T);
    }

    /// Waits for `n` frames at VM `to` (and 50 ms for any more); returns how many came.
    fn got_within(&mut self, to: u8, n: usize) -> usize {
        let vm = self.vm(to);
        let got = if n == 0 {
            std::thread::sleep(std::time::Duration::from_millis(100));
            vm.recv(TestVm::rx(0))
        } else {
            let mut got = vm.expect_frames_at_least(TestVm::rx(0), n, T);
            std::thread::sleep(std::time::Duration::from_millis(50));
            got.extend(vm.recv(TestVm::rx(0)));
            got
        };
        vm.post_rx(TestVm::rx(0), got.len(), 2048);
        got.len()
    }

    /// Sends `f` from `from` and says how many frames `to` got.
    fn through(&mut self, from: u8, to: u8, f: &[u8], expected: usize) {
        self.send(from, f);
        assert_eq!(
            self.got_within(to, expected),
            expected,
            "from {from} to {to}"
        );
    }

    fn drops(&self, port: &str, reason: &str) -> u64 {
        self.s.drops(port, reason)
    }

    fn connections(&self, query: &str) -> Value {
        let (status, v) = call(
            &self.s.daemon,
            "GET",
            &format!("/v1/conntrack{query}"),
            None,
        );
        assert_eq!(status, 200, "{v}");
        v
    }
}

#[test]
fn groups_allow_what_their_rules_say_replies_need_none_and_everything_else_is_counted() {
    let mut net = Net::new("sg-rules", layout);
    let (syn, ack) = (
        |t: PacketBuilderStep<TcpHeader>| t.syn(),
        |t: PacketBuilderStep<TcpHeader>| t.ack(1),
    );
    // a opens TCP 22 to b (a member); b answers without any rule letting it.
    net.through(1, 2, &tcp(1, 2, (40000, 22), syn), 1);
    net.through(2, 1, &tcp(2, 1, (22, 40000), |t| t.syn().ack(1001)), 1);
    net.through(1, 2, &tcp(1, 2, (40000, 22), ack), 1);
    net.through(2, 1, &tcp(2, 1, (22, 40000), ack), 1);
    // c is no member: b refuses it; a member on another port is refused too.
    net.through(3, 2, &tcp(3, 2, (40000, 22), syn), 0);
    net.through(1, 2, &tcp(1, 2, (40001, 23), syn), 0);
    assert_eq!(net.drops("b", "acl_denied"), 2);
    // Ping and its reply.
    net.through(1, 2, &ping(1, 2, 7, false), 1);
    net.through(2, 1, &ping(2, 1, 7, true), 1);
    // A reply nobody asked for opens nothing.
    net.through(2, 1, &ping(2, 1, 8, true), 0);
    assert_eq!(net.drops("b", "ct_invalid"), 1);
    // Flag garbage and a segment of no connection: invalid, at the sender.
    net.through(1, 2, &tcp(1, 2, (40002, 22), |t| t.syn().fin()), 0);
    net.through(1, 2, &tcp(1, 2, (40003, 22), ack), 0);
    net.through(1, 2, &tcp(1, 2, (40004, 22), |t| t), 0);
    assert_eq!(net.drops("a", "ct_invalid"), 3);
    // A source outside a's allowed_ips, and something that is not IP.
    let mut spoofed = udp(1, 2, (5000, 53), b"x");
    spoofed[26..30].copy_from_slice(&ip4(9));
    net.through(1, 2, &spoofed, 0);
    assert_eq!(net.drops("a", "ip_spoofed"), 1);
    net.through(1, 2, &frame(mac(2), mac(1), 46, 1), 0);
    assert_eq!(net.drops("a", "acl_denied"), 1);
    // c has no groups: it sends what it likes, b takes IP and ARP only.
    net.through(3, 2, &frame(mac(2), mac(3), 46, 2), 0);
    assert_eq!(net.drops("b", "acl_denied"), 3);
    assert_eq!(net.drops("c", "acl_denied"), 0);

    // The table shows the connections, charged to the port that opened them.
    let v = net.connections("?port=a&protocol=tcp");
    let conns = v["connections"].as_array().unwrap();
    assert_eq!(conns.len(), 1, "{v}");
    let c = &conns[0];
    assert_eq!(
        (
            c["src"].as_str(),
            c["sport"].as_u64(),
            c["dst"].as_str(),
            c["dport"].as_u64()
        ),
        (Some("10.0.0.1"), Some(40000), Some("10.0.0.2"), Some(22)),
        "{v}"
    );
    assert_eq!(c["state"], "ESTABLISHED", "{v}");
    assert_eq!(c["bridge"], "br0", "{v}");
    let total = net.connections("")["total"].as_u64().unwrap();
    assert_eq!(
        net.s
            .daemon
            .metric("vringswitch_bridge_connections", &[("bridge", "br0")]),
        total,
        "the gauge counts what the table holds"
    );
    let out = net.s.daemon.vringctl(&["conntrack", "--port", "a"]);
    assert!(
        out.contains("ESTABLISHED") && out.contains("10.0.0.1"),
        "{out}"
    );

    // TCP 22 no longer allowed: the connection is cut at its next segment, the ping
    // carries on.
    let (status, v) = call(
        &net.s.daemon,
        "PUT",
        "/v1/security-groups/web",
        Some(serde_json::to_value(web(false)).unwrap()),
    );
    assert_eq!(status, 200, "{v}");
    net.through(1, 2, &tcp(1, 2, (40000, 22), ack), 0);
    assert_eq!(net.drops("b", "acl_denied"), 4);
    net.through(1, 2, &ping(1, 2, 7, false), 1);
    let v = net.connections("?protocol=tcp");
    assert_eq!(v["connections"], json!([]), "{v}");
}

#[test]
fn fragments_follow_their_first_icmp_errors_are_related_and_ipv6_is_filtered_too() {
    let mut net = Net::new("sg-frags", layout);
    net.through(1, 2, &fragment(1, 2, 0x1234, 0), 1);
    net.through(1, 2, &fragment(1, 2, 0x1234, 5), 1);
    // A later fragment whose first was not seen: dropped at the sender.
    net.through(1, 2, &fragment(1, 2, 0x4321, 5), 0);
    assert_eq!(net.drops("a", "acl_denied"), 1);
    // From c (no member): b refuses the first, and so the rest.
    net.through(3, 2, &fragment(3, 2, 0x1234, 0), 0);
    net.through(3, 2, &fragment(3, 2, 0x1234, 5), 0);
    assert_eq!(net.drops("b", "acl_denied"), 2);

    // An ICMP error about a tracked connection is related: c (no member) may tell a its
    // port is unreachable, though no rule of a admits ICMP from c; about anything else, not.
    let query = udp(1, 3, (5000, 53), b"q");
    net.through(1, 3, &query, 1);
    let unreachable = |quoted: &[u8]| {
        written(
            PacketBuilder::ethernet2(mac(3), mac(1))
                .ipv4(ip4(3), ip4(1), 64)
                .icmpv4_raw(3, 3, [0; 4]),
            &quoted[14..],
        )
    };
    net.through(3, 1, &unreachable(&query), 1);
    net.through(3, 1, &unreachable(&udp(1, 3, (5001, 53), b"q")), 0);
    assert_eq!(net.drops("a", "ct_invalid"), 1);

    // IPv6: ping6 between members; from an address outside a's allowed_ips, spoofed.
    net.through(
        1,
        2,
        &written(eth6(1, 2, 1).icmpv6_echo_request(3, 1), b"p6"),
        1,
    );
    net.through(
        2,
        1,
        &written(eth6(2, 1, 2).icmpv6_echo_reply(3, 1), b"p6"),
        1,
    );
    net.through(
        1,
        2,
        &written(eth6(1, 2, 9).icmpv6_echo_request(4, 1), b"p6"),
        0,
    );
    assert_eq!(net.drops("a", "ip_spoofed"), 1);
    // UDP over IPv6 to b: egress allows it, b's rules do not.
    net.through(1, 2, &written(eth6(1, 2, 1).udp(5000, 9999), b"u6"), 0);
    assert_eq!(net.drops("b", "acl_denied"), 3);
    // A neighbour solicitation (type 135) from c, which no rule of b admits.
    let ns = PacketBuilder::ethernet2(mac(3), mac(2))
        .ipv6(ip6(3), ip6(2), 255)
        .icmpv6_raw(135, 0, [0; 4]);
    net.through(3, 2, &written(ns, &ip6(2)), 1);
}

#[test]
fn a_port_at_its_connection_limit_is_refused_new_ones_and_starves_no_one() {
    let mut net = Net::new("sg-limit", |dir| layout(dir).conntrack(1024, 8));
    // b holds a connection to a before a floods.
    net.through(2, 1, &udp(2, 1, (6000, 53), b"q"), 1);
    for sport in 0..20u16 {
        net.send(1, &udp(1, 2, (10_000 + sport, 53), b"q"));
    }
    assert_eq!(net.got_within(2, 8), 8, "a's first 8 connections only");
    assert_eq!(net.drops("a", "ct_full"), 12);
    // b's connection carries on, and b opens new ones.
    net.through(2, 1, &udp(2, 1, (6000, 53), b"q"), 1);
    net.through(1, 2, &udp(1, 2, (53, 6000), b"r"), 1);
    net.through(2, 1, &udp(2, 1, (6001, 53), b"q"), 1);
    let v = net.connections("?port=a");
    assert_eq!(v["connections"].as_array().unwrap().len(), 8, "{v}");
    // Flushed, a may open connections again.
    let (status, v) = call(&net.s.daemon, "DELETE", "/v1/conntrack?port=a", None);
    assert_eq!((status, v["flushed"].as_u64()), (200, Some(8)), "{v}");
    net.through(1, 2, &udp(1, 2, (11_000, 53), b"q"), 1);
}

#[test]
fn a_full_table_refuses_every_port_even_under_its_own_limit() {
    let mut net = Net::new("sg-full", |dir| layout(dir).conntrack(1024, 1000));
    // a takes its 1000; b the table's last 24, then is refused though under its own limit.
    for (from, to, n) in [(1u8, 2u8, 1000u16), (2, 1, 30)] {
        for chunk in (0..n).collect::<Vec<_>>().chunks(50) {
            for &i in chunk {
                net.send(from, &udp(from, to, (20_000 + i, 53), b"q"));
            }
            net.got_within(to, 0);
        }
    }
    assert_eq!(net.drops("a", "ct_full"), 0);
    assert_eq!(net.drops("b", "ct_full"), 6, "the table holds 1024");
    assert_eq!(net.connections("?limit=1")["total"], 1024);
    // Established connections carry on.
    net.through(1, 2, &udp(1, 2, (20_000, 53), b"q"), 1);
}

#[test]
fn sctp_is_filtered_by_its_ports_and_its_replies_need_no_rule() {
    // b takes SCTP to port 3868 (Diameter) from a; everyone may send anything.
    let diameter: SecurityGroupSpec = serde_json::from_value(json!({
        "name": "diameter", "rules": [
            {"direction": "ingress", "protocol": "sctp", "port_range_min": 3868,
             "port_range_max": 3868, "remote_ip_prefix": "10.0.0.1/32"},
            {"direction": "egress"}]}))
    .unwrap();
    let mut net = Net::new("sg-sctp", |dir| {
        let p = |name: &str| vhost_user(name, "br0", &dir.join(format!("{name}.sock")));
        let member = |name: &str| {
            let mut port = p(name);
            port.security_groups = Some(vec!["diameter".into()]);
            port
        };
        Layout::new()
            .bridge("br0")
            .ports([member("a"), member("b"), p("c")])
            .security_groups([diameter])
    });
    net.through(1, 2, &sctp(1, 2, (5000, 3868), b"INIT"), 1);
    // The reply: no rule lets b's answers into a, the association does.
    net.through(2, 1, &sctp(2, 1, (3868, 5000), b"INIT ACK"), 1);
    // Another port; another source.
    net.through(1, 2, &sctp(1, 2, (5000, 3869), b"INIT"), 0);
    net.through(3, 2, &sctp(3, 2, (5000, 3868), b"INIT"), 0);
    assert_eq!(net.drops("b", "acl_denied"), 2);
    let listed = net.connections("?protocol=sctp");
    assert_eq!(listed["total"], 1, "{listed}");
}

#[test]
fn a_stateless_group_judges_every_frame_by_prefix_and_icmp_type_and_tracks_nothing() {
    // b's group: echo requests in from 10.0.0.1 only, echo replies out; a and c have none.
    let loose: SecurityGroupSpec = serde_json::from_value(json!({
        "name": "loose", "stateful": false, "rules": [
            {"direction": "ingress", "protocol": "icmp", "port_range_min": 8,
             "port_range_max": 0, "remote_ip_prefix": "10.0.0.1/32"},
            {"direction": "egress", "protocol": "icmp", "port_range_min": 0}]}))
    .unwrap();
    let mut net = Net::new("sg-stateless", |dir| {
        let p = |name: &str| vhost_user(name, "br0", &dir.join(format!("{name}.sock")));
        let mut b = p("b");
        b.security_groups = Some(vec!["loose".into()]);
        Layout::new()
            .bridge("br0")
            .ports([p("a"), b, p("c")])
            .security_groups([loose])
    });
    net.through(1, 2, &ping(1, 2, 5, false), 1);
    net.through(2, 1, &ping(2, 1, 5, true), 1);
    // From outside the prefix; b's own request (only replies may leave); UDP.
    net.through(3, 2, &ping(3, 2, 5, false), 0);
    net.through(2, 1, &ping(2, 1, 6, false), 0);
    net.through(1, 2, &udp(1, 2, (5000, 53), b"q"), 0);
    assert_eq!(net.drops("b", "acl_denied"), 3);
    // The code must match too: an echo request of code 1 is not one the rule names.
    let mut odd = ping(1, 2, 7, false);
    odd[35] = 1;
    net.through(1, 2, &odd, 0);
    assert_eq!(net.drops("b", "acl_denied"), 4);
    assert_eq!(
        net.connections("")["total"],
        0,
        "a stateless group tracks nothing"
    );
}

/// `POST /v1/trace` of a TCP segment `from` sends to `to`'s MAC, with these addresses,
/// ports and flags.
fn trace_tcp(
    s: &Setup,
    from: &str,
    to: u8,
    ips: (&str, &str),
    ports: (u16, u16),
    flags: &str,
) -> Value {
    let n = from.as_bytes()[0] - b'a' + 1;
    let m = |k: u8| {
        let x = mac(k);
        format!(
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            x[0], x[1], x[2], x[3], x[4], x[5]
        )
    };
    let body = json!({"port": from, "src": m(n), "dst": m(to), "ip_src": ips.0,
        "ip_dst": ips.1, "protocol": "tcp", "src_port": ports.0, "dst_port": ports.1,
        "tcp_flags": flags});
    let (code, v) = call(&s.daemon, "POST", "/v1/trace", Some(body));
    assert_eq!(code, 200, "{v}");
    v
}

/// What a trace says port `port` does with the frame.
fn action(t: &Value, port: &str) -> String {
    t["outputs"]
        .as_array()
        .and_then(|o| o.iter().find(|x| x["port"] == port))
        .and_then(|x| x["action"].as_str())
        .unwrap_or("not offered")
        .to_owned()
}

#[test]
fn the_trace_says_what_the_groups_do_with_a_segment_and_the_data_path_does_it() {
    let mut net = Net::new("sg-trace", layout);
    let (a, b, c) = ("10.0.0.1", "10.0.0.2", "10.0.0.3");
    // a to b's SSH: a's egress and b's ingress allow it; a new connection.
    let t = trace_tcp(&net.s, "a", 2, (a, b), (40000, 22), "syn");
    assert_eq!(
        (t["dropped"].clone(), action(&t, "b")),
        (Value::Null, "deliver".into()),
        "{t}"
    );
    assert!(
        t["summary"].as_str().unwrap().contains("delivered to b"),
        "{t}"
    );
    // Port 23: b's rules do not allow it.
    let t = trace_tcp(&net.s, "a", 2, (a, b), (40000, 23), "syn");
    assert_eq!(action(&t, "b"), "acl_denied", "{t}");
    assert!(
        t["summary"]
            .as_str()
            .unwrap()
            .contains("its security groups: acl_denied"),
        "{t}"
    );
    // Not from a's address: dropped on the way out, offered to nobody.
    let t = trace_tcp(&net.s, "a", 2, ("10.0.0.9", b), (40000, 22), "syn");
    assert_eq!(t["dropped"], "ip_spoofed", "{t}");
    assert_eq!(t["outputs"], json!([]), "{t}");
    // An ACK that belongs to no connection: invalid at a.
    let t = trace_tcp(&net.s, "a", 2, (a, b), (40000, 22), "ack");
    assert_eq!(t["dropped"], "ct_invalid", "{t}");
    // c is in no group, so not in b's remote group: b refuses it.
    let t = trace_tcp(&net.s, "c", 2, (c, b), (40000, 22), "syn");
    assert_eq!(action(&t, "b"), "acl_denied", "{t}");
    // The data path agrees, frame by frame, and the trace changed nothing on the way.
    assert_eq!(
        net.connections("")["connections"],
        json!([]),
        "a trace opens nothing"
    );
    let denied = net.drops("b", "acl_denied");
    net.through(1, 2, &tcp(1, 2, (40000, 23), |t| t.syn()), 0);
    assert_eq!(net.drops("b", "acl_denied"), denied + 1);
    let invalid = net.drops("a", "ct_invalid");
    net.through(1, 2, &tcp(1, 2, (40000, 22), |t| t.ack(1)), 0);
    assert_eq!(net.drops("a", "ct_invalid"), invalid + 1);
    net.through(1, 2, &tcp(1, 2, (40000, 22), |t| t.syn()), 1);
    // Now the connection is there: b's SYN-ACK needs no rule of a's, and a repeated
    // bare ACK from a before it is out of order.
    let t = trace_tcp(&net.s, "b", 1, (b, a), (22, 40000), "syn,ack");
    assert_eq!(
        (t["dropped"].clone(), action(&t, "a")),
        (Value::Null, "deliver".into()),
        "{t}"
    );
    let t = trace_tcp(&net.s, "a", 2, (a, b), (40000, 22), "ack");
    assert_eq!(t["dropped"], "ct_invalid", "{t}");
}
