//! VLANs end to end: access and trunk ports set over the API, tagged and untagged frames,
//! tags pushed and popped on the way, and nothing crossing from one VLAN to another.

use std::time::Duration;

use serde_json::json;
use vringswitch_tests::api::{assert_error, call, call_raw};
use vringswitch_tests::frontend::TestVm;
use vringswitch_tests::setup::{Setup, T};
use vringswitch_tests::{frame, mac, tag, BROADCAST};

/// How long "nothing arrives" is watched for.
const QUIET: Duration = Duration::from_millis(300);

/// `frame(..)` with an 802.1Q tag of `vid` (priority `pcp`) after the MAC addresses.
fn tagged(dst: [u8; 6], src: [u8; 6], vid: u16, pcp: u8, payload: usize, seed: u8) -> Vec<u8> {
    tag(&frame(dst, src, payload, seed), vid, pcp)
}

/// The same frame with its tag removed.
fn untag(tagged: &[u8]) -> Vec<u8> {
    [&tagged[..12], &tagged[16..]].concat()
}

fn rx(vm: &mut TestVm, n: usize) -> Vec<Vec<u8>> {
    vm.expect_frames(TestVm::rx(0), n, T)
        .into_iter()
        .map(|r| r.frame)
        .collect()
}

#[test]
fn access_and_trunk_ports_keep_vlans_apart() {
    let s = Setup::new("vlans", &[("br0", &["a", "b", "c", "t", "u"])], 1);
    let d = &s.daemon;
    for (port, vlan) in [
        ("a", json!({"mode": "access", "tag": 10})),
        ("b", json!({"mode": "access", "tag": 10})),
        ("c", json!({"mode": "access", "tag": 20})),
        ("t", json!({"mode": "trunk", "tags": [10, 20]})),
    ] {
        let (code, got) = call(
            d,
            "PATCH",
            &format!("/v1/ports/{port}"),
            Some(json!({ "vlan": vlan })),
        );
        assert_eq!(code, 200, "{got}");
        assert_eq!(got["vlan"], vlan);
    }
    let (_, u) = call(d, "GET", "/v1/ports/u", None);
    assert!(u.get("vlan").is_none(), "u has no VLAN setting: {u}");
    let (mut a, mut b, mut c, mut t, mut u) = (
        s.vm("a", 1),
        s.vm("b", 2),
        s.vm("c", 3),
        s.vm("t", 4),
        s.vm("u", 5),
    );
    s.wait_connected(&["a", "b", "c", "t", "u"]);

    // Untagged broadcast from access VLAN 10: as it is to b, tagged to the trunk and to the
    // port without a VLAN setting (which carries every VLAN tagged, as in OVS); not to c.
    let f1 = frame(BROADCAST, mac(1), 80, 1);
    a.send(TestVm::tx(0), &f1);
    assert_eq!(rx(&mut b, 1), std::slice::from_ref(&f1));
    assert_eq!(rx(&mut t, 1), [tag(&f1, 10, 0)]);
    assert_eq!(rx(&mut u, 1), [tag(&f1, 10, 0)]);
    c.expect_nothing(TestVm::rx(0), QUIET);

    // From access VLAN 20: to the trunk and u only.
    let f2 = frame(BROADCAST, mac(3), 70, 2);
    c.send(TestVm::tx(0), &f2);
    assert_eq!(rx(&mut t, 1), [tag(&f2, 20, 0)]);
    assert_eq!(rx(&mut u, 1), [tag(&f2, 20, 0)]);

    // Tagged VLAN 20 from the trunk, priority kept where the tag stays: untagged to c.
    let f3 = tagged(BROADCAST, mac(4), 20, 5, 90, 3);
    t.send(TestVm::tx(0), &f3);
    assert_eq!(rx(&mut c, 1), [untag(&f3)]);
    assert_eq!(rx(&mut u, 1), std::slice::from_ref(&f3));
    a.expect_nothing(TestVm::rx(0), QUIET);
    b.expect_nothing(TestVm::rx(0), QUIET);

    // Refused on the way in, counted: a VLAN the trunk does not carry, an untagged frame
    // on the trunk, a tagged frame on an access port.
    let filtered_before = s.drops("t", "vlan_filtered") + s.drops("a", "vlan_filtered");
    t.send(TestVm::tx(0), &tagged(BROADCAST, mac(4), 30, 0, 60, 4));
    t.send(TestVm::tx(0), &frame(BROADCAST, mac(4), 60, 5));
    a.send(TestVm::tx(0), &tagged(BROADCAST, mac(1), 10, 0, 60, 6));
    t.wait_tx_done(TestVm::tx(0), T);
    a.wait_tx_done(TestVm::tx(0), T);
    for vm in [&mut a, &mut b, &mut c, &mut t, &mut u] {
        vm.expect_nothing(TestVm::rx(0), QUIET);
    }
    assert_eq!(
        s.drops("t", "vlan_filtered") + s.drops("a", "vlan_filtered"),
        filtered_before + 3
    );

    // Unicast: t's MAC was learnt in VLAN 20 only, so in VLAN 10 it is still flooded.
    let f4 = frame(mac(4), mac(1), 60, 7);
    a.send(TestVm::tx(0), &f4);
    assert_eq!(rx(&mut t, 1), [tag(&f4, 10, 0)]);
    assert_eq!(rx(&mut b, 1), std::slice::from_ref(&f4));
    assert_eq!(rx(&mut u, 1), [tag(&f4, 10, 0)]);
    // t answers in VLAN 10: learnt there, unicast to a, untagged.
    let f5 = tagged(mac(1), mac(4), 10, 0, 60, 8);
    t.send(TestVm::tx(0), &f5);
    assert_eq!(rx(&mut a, 1), [untag(&f5)]);
    // Now a reaches t in VLAN 10 alone.
    let f6 = frame(mac(4), mac(1), 60, 9);
    a.send(TestVm::tx(0), &f6);
    assert_eq!(rx(&mut t, 1), [tag(&f6, 10, 0)]);
    for vm in [&mut b, &mut c, &mut u] {
        vm.expect_nothing(TestVm::rx(0), QUIET);
    }

    // The port without a VLAN setting sends tagged VLAN 10: untagged to a and b, as is to
    // the trunk, not to c.
    let f7 = tagged(BROADCAST, mac(5), 10, 0, 60, 10);
    u.send(TestVm::tx(0), &f7);
    assert_eq!(rx(&mut a, 1), [untag(&f7)]);
    assert_eq!(rx(&mut b, 1), [untag(&f7)]);
    assert_eq!(rx(&mut t, 1), std::slice::from_ref(&f7));
    c.expect_nothing(TestVm::rx(0), QUIET);

    // The FDB is per VLAN: t's MAC is there twice.
    let (code, fdb) = call(d, "GET", "/v1/bridges/br0/fdb", None);
    assert_eq!(code, 200);
    let t_entries: Vec<u64> = fdb
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["mac"] == "02:00:00:00:00:04")
        .map(|e| {
            assert_eq!(e["port"], "t");
            assert_eq!(e["static"], false);
            e["vlan"].as_u64().unwrap()
        })
        .collect();
    assert_eq!(t_entries, [10, 20], "{fdb}");

    // Changing a's VLAN forgets what it learnt and moves it: now it talks to c.
    let (code, _) = call(
        d,
        "PATCH",
        "/v1/ports/a",
        Some(json!({"vlan": {"mode": "access", "tag": 20}})),
    );
    assert_eq!(code, 200);
    let f8 = frame(BROADCAST, mac(1), 60, 11);
    a.send(TestVm::tx(0), &f8);
    assert_eq!(rx(&mut c, 1), std::slice::from_ref(&f8));
    assert_eq!(rx(&mut t, 1), [tag(&f8, 20, 0)]);
    assert_eq!(rx(&mut u, 1), [tag(&f8, 20, 0)]);
    b.expect_nothing(TestVm::rx(0), QUIET);
    // And removing the setting makes it a plain port again.
    let (code, got) = call(d, "PATCH", "/v1/ports/a", Some(json!({"vlan": null})));
    assert_eq!(code, 200);
    assert!(got.get("vlan").is_none(), "{got}");
    let f9 = frame(BROADCAST, mac(1), 60, 12);
    a.send(TestVm::tx(0), &f9);
    assert_eq!(rx(&mut u, 1), std::slice::from_ref(&f9));
    for vm in [&mut b, &mut c, &mut t] {
        vm.expect_nothing(TestVm::rx(0), QUIET);
    }
}

#[test]
fn bad_vlan_settings_are_refused_and_change_nothing() {
    let s = Setup::new("vlans-bad", &[("br0", &["a"])], 1);
    let d = &s.daemon;
    let sock = s.dir.path().join("n.sock");
    let new_port = |vlan: serde_json::Value| {
        json!({"name": "n", "bridge": "br0", "type": "vhost-user", "socket": sock,
               "mode": "server", "vlan": vlan})
    };
    for (vlan, status, kind, says) in [
        (
            json!({"mode": "access", "tag": 0}),
            400,
            "invalid",
            "VLAN id 0 is out of range",
        ),
        (
            json!({"mode": "access", "tag": 4095}),
            400,
            "invalid",
            "out of range",
        ),
        (
            json!({"mode": "access", "tag": 70000}),
            400,
            "bad_request",
            "70000",
        ),
        (
            json!({"mode": "trunk", "tags": []}),
            400,
            "invalid",
            "at least one VLAN",
        ),
        (
            json!({"mode": "trunk", "tags": [3, 3]}),
            400,
            "invalid",
            "listed twice",
        ),
        (
            json!({"mode": "trunk", "tags": [1, 4095]}),
            400,
            "invalid",
            "4095",
        ),
        (json!({"mode": "native"}), 400, "bad_request", "native"),
        (json!({"mode": "access"}), 400, "bad_request", "tag"),
        (
            json!({"mode": "access", "tag": 5, "tags": [5]}),
            400,
            "bad_request",
            "tags",
        ),
    ] {
        assert_error(
            call(d, "POST", "/v1/ports", Some(new_port(vlan.clone()))),
            status,
            kind,
            says,
        );
        assert_error(
            call(d, "PATCH", "/v1/ports/a", Some(json!({ "vlan": vlan }))),
            status,
            kind,
            says,
        );
    }
    assert_error(
        call_raw(d, "PATCH", "/v1/ports/a", "[null, null]"),
        400,
        "bad_request",
        "expected a JSON object",
    );
    assert_error(
        call(d, "PATCH", "/v1/ports/nope", Some(json!({"vlan": null}))),
        404,
        "not_found",
        "no port named \"nope\"",
    );
    assert_error(
        call(d, "PATCH", "/v1/ports/a", Some(json!({"bridge": "nope"}))),
        400,
        "invalid",
        "no bridge named \"nope\"",
    );
    assert_error(
        call(d, "PATCH", "/v1/ports/a", Some(json!({"socket": "/tmp/x"}))),
        400,
        "bad_request",
        "unknown field `socket`",
    );
    let (_, a) = call(d, "GET", "/v1/ports/a", None);
    assert!(a.get("vlan").is_none() && a["bridge"] == "br0", "{a}");
    let (_, ports) = call(d, "GET", "/v1/ports", None);
    assert_eq!(ports.as_array().unwrap().len(), 1);
}
