//! Port mirroring (SPAN) through the real daemon: a mirror's output gets a copy of every
//! frame its ports send and are sent, with the frame's VLAN as a tag, and nothing else; it
//! lasts across a restart; what would break it is refused.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{json, Value};
use vringswitch_tests::api::call;
use vringswitch_tests::daemon::Daemon;
use vringswitch_tests::frontend::TestVm;
use vringswitch_tests::layout::{access, trunk, vhost_user, Layout};
use vringswitch_tests::setup::{Setup, T};
use vringswitch_tests::{frame, mac, tag, BROADCAST};

/// br0: a and b (access 10), c (trunk 10,20), ids (the output to be); br1: z.
fn layout(dir: &std::path::Path) -> Layout {
    let p = |name: &str, bridge: &str| vhost_user(name, bridge, &dir.join(format!("{name}.sock")));
    let mut a = p("a", "br0");
    a.vlan = Some(access(10));
    let mut b = p("b", "br0");
    b.vlan = Some(access(10));
    let mut c = p("c", "br0");
    c.vlan = Some(trunk(&[10, 20]));
    Layout::new()
        .bridge("br0")
        .bridge("br1")
        .ports([a, b, c, p("ids", "br0"), p("z", "br1")])
}

/// The 802.1Q VLAN of a frame, if tagged.
fn vlan_of(f: &[u8]) -> Option<u16> {
    (f[12..14] == [0x81, 0x00]).then(|| u16::from_be_bytes([f[14], f[15]]) & 0x0fff)
}

/// Frames `vm` received since last asked (its buffers given back).
fn take(vm: &mut TestVm) -> Vec<Vec<u8>> {
    let got = vm.recv(TestVm::rx(0));
    vm.post_rx(TestVm::rx(0), got.len(), 2048);
    got.into_iter().map(|r| r.frame).collect()
}

#[test]
fn a_mirror_copies_both_directions_with_their_vlan_and_its_output_carries_nothing_else() {
    let s = Setup::with_layout("mirror", layout);
    let d = &s.daemon;
    let mut vms: BTreeMap<&str, TestVm> = [("a", 1), ("b", 2), ("c", 3), ("ids", 9)]
        .into_iter()
        .map(|(n, m)| (n, s.vm(n, m)))
        .collect();
    s.wait_connected(&["a", "b", "c", "ids"]);
    // ids is an ordinary port until it is an output: it learns and gets floods.
    let send = |vms: &mut BTreeMap<&str, TestVm>, from: &str, f: &[u8]| {
        let vm = vms.get_mut(from).unwrap();
        vm.send(TestVm::tx(0), f);
        vm.wait_tx_done(TestVm::tx(0), T);
    };
    send(
        &mut vms,
        "ids",
        &tag(&frame(BROADCAST, mac(9), 46, 0), 10, 0),
    );
    assert_eq!(
        vms.get_mut("c")
            .unwrap()
            .expect_frames(TestVm::rx(0), 1, T)
            .len(),
        1
    );
    let out = d.vringctl(&["mirror", "add", "span", "--ports", "a", "--output", "ids"]);
    assert_eq!(out, "mirror span added: a -> ids\n");
    for vm in vms.values_mut() {
        take(vm);
    }
    // What ids learnt went with it becoming an output: a frame to mac 9 floods.
    let (_, fdb) = call(d, "GET", "/v1/bridges/br0/fdb", None);
    assert!(
        !fdb.as_array().unwrap().iter().any(|e| e["port"] == "ids"),
        "{fdb}"
    );

    // 200 frames each way between a and b, in rounds: ids gets every one, tagged 10.
    let counter = |name: &str, port: &str| s.counter(name, port);
    let a_before = counter("rx_packets", "a") + counter("tx_packets", "a");
    let mut copies = 0;
    for round in 0..8u8 {
        for i in 0..25u8 {
            let seed = round.wrapping_mul(50).wrapping_add(i);
            send(&mut vms, "a", &frame(mac(2), mac(1), 46, seed));
            send(&mut vms, "b", &frame(mac(1), mac(2), 46, seed));
        }
        let mut round_copies = Vec::new();
        vringswitch_tests::wait_until(T, "the round's copies", || {
            round_copies.extend(take(vms.get_mut("ids").unwrap()));
            (round_copies.len() >= 50).then_some(())
        });
        for v in ["a", "b"] {
            take(vms.get_mut(v).unwrap());
        }
        for f in &round_copies {
            assert_eq!(vlan_of(f), Some(10), "a copy without its VLAN");
        }
        copies += round_copies.len();
    }
    std::thread::sleep(Duration::from_millis(50));
    copies += take(vms.get_mut("ids").unwrap()).len();
    assert_eq!(copies, 400, "every frame a sent and was sent, once");
    assert_eq!(
        counter("rx_packets", "a") + counter("tx_packets", "a") - a_before,
        400
    );
    assert_eq!(counter("tx_packets", "ids"), 400);
    assert_eq!(s.drops("ids", "no_rx_buffer"), 0);

    // A broadcast from c in VLAN 20: a is not in it, so no copy; ids is no flooding target.
    send(&mut vms, "c", &tag(&frame(BROADCAST, mac(3), 46, 1), 20, 0));
    // In VLAN 10: a gets it (a copy, tagged 10), b too; ids gets the copy only.
    send(&mut vms, "c", &tag(&frame(BROADCAST, mac(3), 46, 2), 10, 0));
    assert_eq!(
        vms.get_mut("a")
            .unwrap()
            .expect_frames(TestVm::rx(0), 1, T)
            .len(),
        1
    );
    std::thread::sleep(Duration::from_millis(50));
    let got = take(vms.get_mut("ids").unwrap());
    assert_eq!(
        got.len(),
        1,
        "ids got more than the copy of what a was sent"
    );
    assert_eq!(
        (vlan_of(&got[0]), got[0][47]),
        (Some(10), frame(BROADCAST, mac(3), 46, 2)[43])
    );
    // What ids sends is taken (its transmit queue never stalls), dropped as
    // mirror_output, and not learnt.
    let before_c = counter("tx_packets", "c");
    send(
        &mut vms,
        "ids",
        &tag(&frame(BROADCAST, mac(9), 46, 3), 10, 0),
    );
    vringswitch_tests::wait_until(T, "ids's frame counted", || {
        (s.drops("ids", "mirror_output") == 1).then_some(())
    });
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(counter("tx_packets", "c"), before_c);
    // The trace says so too.
    let (_, t) = call(
        d,
        "POST",
        "/v1/trace",
        Some(json!({"port": "ids", "src": "02:00:00:00:00:09", "dst": "ff:ff:ff:ff:ff:ff"})),
    );
    assert_eq!(t["dropped"], "mirror_output", "{t}");
    let (_, fdb) = call(d, "GET", "/v1/bridges/br0/fdb", None);
    assert!(
        !fdb.as_array().unwrap().iter().any(|e| e["port"] == "ids"),
        "{fdb}"
    );

    // Shown, and refused what would break it.
    let (_, mirrors) = call(d, "GET", "/v1/mirrors", None);
    assert_eq!(
        mirrors,
        json!([{"name": "span", "ports": ["a"], "direction": "both", "output": "ids"}])
    );
    let tree = d.vringctl(&["show"]);
    assert!(tree.contains("    mirror span: a both -> ids\n"), "{tree}");
    let refused = |method: &str, path: &str, body: Option<Value>| {
        let (code, e) = call(d, method, path, body);
        (code, e["detail"].as_str().unwrap_or_default().to_owned())
    };
    let (code, e) = refused("DELETE", "/v1/ports/a", None);
    assert_eq!(code, 409, "{e}");
    assert!(e.contains("vringctl mirror del span"), "{e}");
    let (code, e) = refused("PATCH", "/v1/ports/a", Some(json!({"bridge": "br1"})));
    assert_eq!(code, 409, "{e}");
    let (code, e) = refused(
        "POST",
        "/v1/bridges/br0/fdb",
        Some(json!({"mac": "02:00:00:00:00:42", "port": "ids"})),
    );
    assert!(code == 409 && e.contains("output of mirror"), "{code} {e}");
    for (body, says) in [
        (
            json!({"name": "m2", "ports": ["z"], "output": "ids"}),
            "a mirror stays within one bridge",
        ),
        (
            json!({"name": "m2", "ports": ["ids"], "output": "b"}),
            "is a mirror's output",
        ),
        (
            json!({"name": "m2", "ports": ["b"], "output": "a"}),
            "is a mirror's output",
        ),
        (
            json!({"name": "span", "ports": ["b"], "output": "c"}),
            "already exists",
        ),
    ] {
        let (code, e) = refused("POST", "/v1/mirrors", Some(body.clone()));
        assert!(
            (400..=409).contains(&code) && e.contains(says),
            "{body}: {code} {e}"
        );
    }
    // A port that does not exist: invalid, as a port naming a bridge that does not.
    let (code, e) = refused(
        "POST",
        "/v1/mirrors",
        Some(json!({"name": "m2", "ports": ["zz"], "output": "ids"})),
    );
    assert_eq!((code, e.as_str()), (400, "no port named \"zz\""));
}

/// A mirror from the configuration file lasts across kill -9 through the state file; once
/// deleted, its output takes part in the bridge again.
#[test]
fn mirrors_last_across_a_restart_and_end_when_deleted() {
    let dir = vringswitch_tests::daemon::TempDir::new("mirror-state");
    let l = layout(dir.path());
    let toml = l.toml()
        + "[[mirrors]]\nname = \"span\"\nports = [\"a\", \"b\"]\ndirection = \"rx\"\noutput = \"ids\"\n";
    let state = dir.path().join("state.json");
    let mut d = Daemon::start_with(
        dir.path(),
        &toml,
        &l.sockets(),
        &["--state", state.to_str().unwrap()],
    );
    d.kill();
    d.restart(&l.sockets());
    let (_, m) = call(&d, "GET", "/v1/mirrors/span", None);
    assert_eq!(m["direction"], "rx", "{m}");
    let mut a = TestVm::connect(&dir.path().join("a.sock"), mac(1), Default::default());
    let mut ids = TestVm::connect(&dir.path().join("ids.sock"), mac(9), Default::default());
    a.post_rx(TestVm::rx(0), 8, 2048);
    ids.post_rx(TestVm::rx(0), 8, 2048);
    d.wait_port_connected("a", true);
    d.wait_port_connected("ids", true);
    a.send(TestVm::tx(0), &frame(BROADCAST, mac(1), 46, 0));
    let got = ids.expect_frames(TestVm::rx(0), 1, T);
    assert_eq!(vlan_of(&got[0].frame), Some(10));
    assert_eq!(
        d.vringctl(&["mirror", "del", "span"]),
        "mirror span deleted\n"
    );
    // ids is an ordinary port again: a's broadcast floods to it, untagged (no VLAN setting:
    // VLAN 10 leaves it tagged, as from any port without one).
    a.send(TestVm::tx(0), &frame(BROADCAST, mac(1), 46, 1));
    let got = ids.expect_frames(TestVm::rx(0), 1, T);
    assert_eq!(vlan_of(&got[0].frame), Some(10));
    let (code, _) = call(&d, "GET", "/v1/mirrors/span", None);
    assert_eq!(code, 404);
    d.kill();
    d.restart(&l.sockets());
    let (_, mirrors) = call(&d, "GET", "/v1/mirrors", None);
    assert_eq!(mirrors, json!([]));
}
