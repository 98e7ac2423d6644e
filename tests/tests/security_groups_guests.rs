//! Security groups with real VMs (QEMU under TCG, one test at a time): a client group that
//! may only send, a server group that admits TCP 22 and 5001 and ICMP from the clients.
//! The client pings and connects, its replies need no rule; the server cannot ping the
//! client; a VM in no group reaches nothing; a port the rules do not name times out; 100
//! MiB with TSO frames arrive whole; a rule removed mid-transfer cuts that connection and
//! leaves the others.

use std::time::Duration;

use serde_json::{json, Value};
use vringswitch_config::SecurityGroupSpec;
use vringswitch_tests::api::call;
use vringswitch_tests::daemon::{Daemon, TempDir};
use vringswitch_tests::guest::{Guest, GuestSpec, BOOT_AND_PING};
use vringswitch_tests::layout::{vhost_user, Layout};
use vringswitch_tests::wait_until;

/// The server group's rules: from the clients, TCP 22, ICMP and (with `bulk`) TCP 5001.
fn server(bulk: bool, icmp: bool) -> Value {
    let from_clients = |extra: Value| {
        let mut r = json!({"direction": "ingress", "remote_group": "client"});
        r.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        r
    };
    let mut rules = vec![
        from_clients(json!({"protocol": "tcp", "port_range_min": 22, "port_range_max": 22})),
        json!({"direction": "egress"}),
    ];
    if icmp {
        rules.push(from_clients(json!({"protocol": "icmp"})));
    }
    if bulk {
        rules.push(from_clients(
            json!({"protocol": "tcp", "port_range_min": 5001, "port_range_max": 5001}),
        ));
    }
    json!({"name": "server", "rules": rules})
}

fn group(v: Value) -> SecurityGroupSpec {
    serde_json::from_value(v).unwrap()
}

#[test]
fn a_client_reaches_the_server_as_its_group_allows_and_nothing_else_does() {
    let dir = TempDir::new("sg-guests");
    let socket = |name: &str| dir.path().join(format!("{name}.sock"));
    // VM n: 10.0.0.n, fd00::n.
    let member = |name: &str, n: u8, g: &str| {
        let mut p = vhost_user(name, "br0", &socket(name));
        p.security_groups = Some(vec![g.into()]);
        p.allowed_ips = Some(vec![format!("10.0.0.{n}"), format!("fd00::{n}")]);
        p
    };
    let layout = Layout::new()
        .bridge("br0")
        .ports([
            member("a", 1, "client"),
            member("b", 2, "server"),
            vhost_user("c", "br0", &socket("c")),
        ])
        .security_groups([
            group(json!({"name": "client", "rules": [
                {"direction": "egress"}, {"direction": "egress", "ethertype": "IPv6"}]})),
            group(server(true, true)),
        ]);
    let daemon = Daemon::start(dir.path(), &layout.toml(), &layout.sockets());
    let b_addr = "10.0.0.2";
    // a pings b and sends it 100 MiB on 22, 1 MiB on 2222 (no rule), 300 MiB on 5001.
    let mut a_spec = GuestSpec::new("a", &socket("a"), 1, 2);
    a_spec.cmdline_extra +=
        &format!(" vs.send={b_addr}_22_100,{b_addr}_2222_1,{b_addr}_5001_300 vs.synretries=1");
    let a = Guest::boot(dir.path(), &a_spec);
    let b = Guest::boot(
        dir.path(),
        &GuestSpec::new("b", &socket("b"), 2, 1)
            .receiving(&[22, 2222, 5001])
            .counting("1"),
    );
    let c = Guest::boot(dir.path(), &GuestSpec::new("c", &socket("c"), 3, 2));

    // The client's pings are answered: the server's replies need no rule of the client's.
    let clean = a.wait_clean_round(0, "a clean round of a's pings to b");
    // The server may not ping the client (no ingress rule), nor may c (in no group) ping b.
    for (g, name) in [(&b, "b"), (&c, "c")] {
        let rounds = wait_until(
            BOOT_AND_PING,
            &format!("two rounds of {name}'s pings"),
            || {
                let r = g.rounds();
                (r.len() >= 2).then_some(r)
            },
        );
        assert!(
            rounds.iter().all(|&(_, tx, rx)| tx > 0 && rx == 0),
            "{name}'s pings went through: {rounds:?}"
        );
    }

    // 100 MiB on TCP 22, TSO frames passed whole through the filter.
    let transfer = Duration::from_secs(1200);
    let rc = wait_until(transfer, "100 MiB to b:22", || a.sent_status_to(b_addr, 22));
    assert_eq!(rc, 0, "a's nc to b:22 failed:\n{}", a.text());
    let got = wait_until(Duration::from_secs(60), "b's md5 of port 22", || {
        b.received_md5(22)
    });
    assert_eq!(
        Some(got),
        a.sent_md5_to(b_addr, 22),
        "md5 of what b got on 22"
    );
    let passed = daemon.metric(
        "vringswitch_port_offloads_total",
        &[("port", "b"), ("action", "passed")],
    );
    assert!(passed > 1000, "{passed} TSO frames passed to b");

    // Port 2222 is in no rule: a's connect times out (no reset: b listens there).
    let rc = wait_until(Duration::from_secs(300), "a's connect to b:2222", || {
        a.sent_status_to(b_addr, 2222)
    });
    assert_ne!(rc, 0, "a reached b:2222");
    assert_eq!(b.received_md5(2222), None, "b got a stream on 2222");
    let denied_b = |d: &Daemon| {
        d.metric(
            "vringswitch_port_drops_total",
            &[("port", "b"), ("reason", "acl_denied")],
        )
    };
    assert!(denied_b(&daemon) > 0, "nothing counted as acl_denied at b");

    // 5001 under way, its rule goes: the transfer is cut at its next segment; pings go on.
    wait_until(transfer, "a's transfer to b:5001 to start", || {
        a.sent_md5_to(b_addr, 5001)
    });
    // The rule goes as soon as b is receiving: 2000 frames in (a third of the 300 MiB when
    // they are TSO frames) had left the rest of the transfer about as long as the change
    // took to be noticed, and a faster switch finished it first (session 34).
    let rx0 = wait_until(Duration::from_secs(60), "b's counters", || b.netstats()).0;
    wait_until(Duration::from_secs(120), "b receiving on 5001", || {
        let rx = b.netstats()?.0;
        (rx > rx0 + 100).then_some(())
    });
    let before = denied_b(&daemon);
    let (status, v) = call(
        &daemon,
        "PUT",
        "/v1/security-groups/server",
        Some(server(false, true)),
    );
    assert_eq!(status, 200, "{v}");
    let last = a.last_round();
    std::thread::sleep(Duration::from_secs(20));
    assert_eq!(
        b.received_md5(5001),
        None,
        "the transfer on 5001 ended though its rule went:\n{}",
        a.text()
    );
    assert!(
        a.sent_status_to(b_addr, 5001).is_none_or(|rc| rc != 0),
        "a's nc to 5001 succeeded"
    );
    assert!(denied_b(&daemon) > before, "the cut was not counted");
    let (status, v) = call(&daemon, "GET", "/v1/conntrack?port=a&protocol=tcp", None);
    assert_eq!(status, 200);
    assert!(
        !v["connections"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["dport"] == 5001 && c["state"] == "ESTABLISHED"),
        "the cut connection is still tracked: {v}"
    );
    a.wait_clean_round(last, "a's pings after the change");

    // ICMP goes too: a's next rounds lose every ping.
    let (status, _) = call(
        &daemon,
        "PUT",
        "/v1/security-groups/server",
        Some(server(false, false)),
    );
    assert_eq!(status, 200);
    let after = a.last_round() + 1;
    let rounds = wait_until(BOOT_AND_PING, "a round after ICMP went", || {
        let r: Vec<_> = a.rounds().into_iter().filter(|r| r.0 > after).collect();
        (!r.is_empty()).then_some(r)
    });
    assert!(
        rounds.iter().all(|&(_, _, rx)| rx == 0),
        "a's pings still answered: {rounds:?}"
    );
    eprintln!("a's clean round {clean}; b got {passed} TSO frames");
}
