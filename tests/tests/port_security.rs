//! Port security end to end: a port locked to its MAC addresses (from the config file or
//! over the API) drops and counts frames from any other source, and those frames never
//! reach the FDB, so a spoofer cannot steal another VM's traffic.

use std::time::Duration;

use serde_json::{json, Value};
use vringswitch_tests::api::{assert_error, call};
use vringswitch_tests::daemon::{Daemon, TempDir};
use vringswitch_tests::frontend::{TestVm, VmOptions};
use vringswitch_tests::layout::{macs, vhost_user, Layout, PortSpec};
use vringswitch_tests::setup::{Setup, T};
use vringswitch_tests::{frame, mac, BROADCAST};

const QUIET: Duration = Duration::from_millis(300);

fn rx(vm: &mut TestVm, n: usize) -> Vec<Vec<u8>> {
    vm.expect_frames(TestVm::rx(0), n, T)
        .into_iter()
        .map(|r| r.frame)
        .collect()
}

/// The FDB entry for `m`, if any.
fn fdb_entry(d: &Daemon, m: [u8; 6]) -> Option<Value> {
    let (code, fdb) = call(d, "GET", "/v1/bridges/br0/fdb", None);
    assert_eq!(code, 200, "{fdb}");
    let text = format!(
        "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        m[0], m[1], m[2], m[3], m[4], m[5]
    );
    fdb.as_array()
        .expect("FDB list")
        .iter()
        .find(|e| e["mac"] == text)
        .cloned()
}

#[test]
fn a_locked_port_drops_spoofed_sources_and_they_never_reach_the_fdb() {
    let s = Setup::new("portsec", &[("br0", &["a", "b", "c"])], 1);
    let d = &s.daemon;
    let lock = json!({ "allowed_macs": ["02:00:00:00:00:01"] });
    let (code, got) = call(d, "PATCH", "/v1/ports/a", Some(lock));
    assert_eq!(code, 200, "{got}");
    assert_eq!(got["allowed_macs"], json!(["02:00:00:00:00:01"]));
    let (mut a, mut b, mut c) = (s.vm("a", 1), s.vm("b", 2), s.vm("c", 3));
    s.wait_connected(&["a", "b", "c"]);

    // a's own address passes.
    let own = frame(BROADCAST, mac(1), 60, 1);
    a.send(TestVm::tx(0), &own);
    assert_eq!(rx(&mut b, 1), std::slice::from_ref(&own));
    assert_eq!(rx(&mut c, 1), std::slice::from_ref(&own));
    // b is learnt on b.
    let from_b = frame(mac(1), mac(2), 60, 2);
    b.send(TestVm::tx(0), &from_b);
    assert_eq!(rx(&mut a, 1), std::slice::from_ref(&from_b));
    assert_eq!(fdb_entry(d, mac(2)).expect("b learnt")["port"], "b");

    // a pretends to be b, and to be an unknown host: dropped, counted, not learnt.
    a.send(TestVm::tx(0), &frame(BROADCAST, mac(2), 60, 3));
    a.send(TestVm::tx(0), &frame(mac(3), mac(9), 60, 4));
    b.expect_nothing(TestVm::rx(0), QUIET);
    c.expect_nothing(TestVm::rx(0), Duration::ZERO);
    a.wait_tx_done(TestVm::tx(0), T);
    assert_eq!(s.drops("a", "mac_spoofed"), 2);
    assert_eq!(fdb_entry(d, mac(2)).expect("b still learnt")["port"], "b");
    assert!(
        fdb_entry(d, mac(9)).is_none(),
        "a spoofed source was learnt"
    );
    // Traffic for b still goes to b only.
    let to_b = frame(mac(2), mac(3), 60, 5);
    c.send(TestVm::tx(0), &to_b);
    assert_eq!(rx(&mut b, 1), std::slice::from_ref(&to_b));
    a.expect_nothing(TestVm::rx(0), QUIET);
    let (_, port_a) = call(d, "GET", "/v1/ports/a", None);
    assert_eq!(port_a["counters"]["drops"]["mac_spoofed"], 2, "{port_a}");

    // Bad lists are refused and change nothing.
    for (list, says) in [
        (json!([]), "drop every frame"),
        (json!(["02:00:00:00:00"]), "not a MAC address"),
        (json!(["ff:ff:ff:ff:ff:ff"]), "group or zero"),
        (
            json!(["02:00:00:00:00:01", "02:00:00:00:00:01"]),
            "listed twice",
        ),
        (
            json!((0..17)
                .map(|i| format!("02:00:00:00:01:{i:02x}"))
                .collect::<Vec<_>>()),
            "at most 16",
        ),
    ] {
        let got = call(
            d,
            "PATCH",
            "/v1/ports/a",
            Some(json!({ "allowed_macs": list })),
        );
        assert_error(got, 400, "invalid", says);
    }
    let (_, port_a) = call(d, "GET", "/v1/ports/a", None);
    assert_eq!(port_a["allowed_macs"], json!(["02:00:00:00:00:01"]));

    // Unlocked: any source again.
    let (code, got) = call(
        d,
        "PATCH",
        "/v1/ports/a",
        Some(json!({ "allowed_macs": null })),
    );
    assert_eq!(code, 200, "{got}");
    assert!(got.get("allowed_macs").is_none(), "{got}");
    let other = frame(BROADCAST, mac(9), 60, 6);
    a.send(TestVm::tx(0), &other);
    assert_eq!(rx(&mut b, 1), std::slice::from_ref(&other));
    assert_eq!(rx(&mut c, 1), std::slice::from_ref(&other));
    assert_eq!(
        fdb_entry(d, mac(9)).expect("learnt once unlocked")["port"],
        "a"
    );
    assert_eq!(s.drops("a", "mac_spoofed"), 2);
}

#[test]
fn allowed_macs_from_the_config_file_lock_the_port() {
    let dir = TempDir::new("portsec-config");
    let (sa, sb) = (dir.path().join("a.sock"), dir.path().join("b.sock"));
    let toml = Layout::new()
        .bridge("br0")
        .port(PortSpec {
            allowed_macs: macs(&["02:00:00:00:00:01", "02:00:00:00:00:11"]),
            ..vhost_user("a", "br0", &sa)
        })
        .port(vhost_user("b", "br0", &sb))
        .toml();
    let d = Daemon::start(dir.path(), &toml, &[sa.clone(), sb.clone()]);
    let (_, port_a) = call(&d, "GET", "/v1/ports/a", None);
    assert_eq!(
        port_a["allowed_macs"],
        json!(["02:00:00:00:00:01", "02:00:00:00:00:11"])
    );
    let mut a = TestVm::connect(&sa, mac(1), VmOptions::default());
    let mut b = TestVm::connect(&sb, mac(2), VmOptions::default());
    b.post_rx(TestVm::rx(0), 16, 2048);
    d.wait_port_connected("a", true);
    d.wait_port_connected("b", true);
    let ok1 = frame(BROADCAST, mac(1), 60, 1);
    let ok2 = frame(BROADCAST, mac(0x11), 60, 2);
    a.send(TestVm::tx(0), &ok1);
    a.send(TestVm::tx(0), &frame(BROADCAST, mac(0x12), 60, 3));
    a.send(TestVm::tx(0), &ok2);
    assert_eq!(rx(&mut b, 2), [ok1, ok2]);
    a.wait_tx_done(TestVm::tx(0), T);
    assert_eq!(
        d.metric(
            "vringswitch_port_drops_total",
            &[("port", "a"), ("reason", "mac_spoofed")]
        ),
        1
    );
}

#[test]
fn vringctl_locks_and_unlocks_a_port() {
    let s = Setup::new("portsec-ctl", &[("br0", &["a", "b"])], 1);
    let locked = |d: &Daemon| call(d, "GET", "/v1/ports/a", None).1["allowed_macs"].clone();
    s.daemon.vringctl(&[
        "port",
        "set",
        "a",
        "--allow-mac",
        "02:00:00:00:00:01,02:00:00:00:00:11",
    ]);
    assert_eq!(
        locked(&s.daemon),
        json!(["02:00:00:00:00:01", "02:00:00:00:00:11"])
    );
    let mut a = s.vm("a", 1);
    let mut b = s.vm("b", 2);
    s.wait_connected(&["a", "b"]);
    a.send(TestVm::tx(0), &frame(BROADCAST, mac(7), 50, 1));
    b.expect_nothing(TestVm::rx(0), QUIET);
    assert_eq!(s.drops("a", "mac_spoofed"), 1);
    s.daemon.vringctl(&["port", "set", "a", "--no-mac-lock"]);
    assert_eq!(locked(&s.daemon), Value::Null);
    a.send(TestVm::tx(0), &frame(BROADCAST, mac(7), 50, 2));
    assert_eq!(rx(&mut b, 1), vec![frame(BROADCAST, mac(7), 50, 2)]);
}
