//! `POST /v1/trace` (`vringctl trace`) against the data path: each frame is traced, then
//! sent by the same port through the real daemon, and the ports that got it (with the tag
//! they got it with) and the drops counted must be what the trace said.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{json, Value};
use vringswitch_tests::api::call;
use vringswitch_tests::frontend::TestVm;
use vringswitch_tests::layout::{access, macs, trunk, vhost_user, Layout};
use vringswitch_tests::setup::{Setup, T};
use vringswitch_tests::{frame, mac, tag, BROADCAST};

/// Ports a (trunk 10,20), b (access 10), c (access 20, locked to mac 3), d (no VLAN
/// setting: every VLAN) with test frontends; f (access 10) with none.
fn setup() -> Setup {
    Setup::with_layout("trace", |dir| {
        let p = |name: &str| vhost_user(name, "br0", &dir.join(format!("{name}.sock")));
        let mut a = p("a");
        a.vlan = Some(trunk(&[10, 20]));
        let mut b = p("b");
        b.vlan = Some(access(10));
        let mut c = p("c");
        c.vlan = Some(access(20));
        c.allowed_macs = macs(&["02:00:00:00:00:03"]);
        let mut f = p("f");
        f.vlan = Some(access(10));
        Layout::new().bridge("br0").ports([a, b, c, p("d"), f])
    })
}

/// What the data path did with one frame: who got it (with its 802.1Q tag, if any), and
/// the drops it caused, by (port, reason).
#[derive(Debug, PartialEq, Eq)]
struct Fate {
    got: BTreeMap<String, Option<u16>>,
    drops: BTreeMap<(String, String), u64>,
}

/// A frame to trace and send: (sender, destination, source, tag, what it shows).
type Case = (&'static str, [u8; 6], [u8; 6], Option<u16>, &'static str);

const PORTS: [&str; 5] = ["a", "b", "c", "d", "f"];
const REASONS: [&str; 5] = [
    "invalid_src_mac",
    "mac_spoofed",
    "vlan_filtered",
    "hairpin",
    "port_down",
];

fn drop_counts(s: &Setup) -> BTreeMap<(String, String), u64> {
    let mut out = BTreeMap::new();
    for p in PORTS {
        for r in REASONS {
            out.insert((p.to_owned(), r.to_owned()), s.drops(p, r));
        }
    }
    out
}

/// The fate the trace foretells: deliveries, and the drop it counts (on the sender for
/// a drop on the way in or a hairpin, `port_down` on each port that is down).
fn foretold(t: &Value) -> Fate {
    let mut got = BTreeMap::new();
    let mut drops = BTreeMap::new();
    if let Some(reason) = t["dropped"].as_str() {
        drops.insert(
            (t["port"].as_str().unwrap().to_owned(), reason.to_owned()),
            1,
        );
    }
    for o in t["outputs"].as_array().unwrap() {
        let port = o["port"].as_str().unwrap().to_owned();
        match o["action"].as_str().unwrap() {
            "deliver" => {
                got.insert(port, o["tag"].as_u64().map(|t| t as u16));
            }
            "down" => {
                drops.insert((port, "port_down".to_owned()), 1);
            }
            _ => {}
        }
    }
    Fate { got, drops }
}

/// The 802.1Q VLAN of a received frame, if tagged.
fn vlan_of(f: &[u8]) -> Option<u16> {
    (f[12..14] == [0x81, 0x00]).then(|| u16::from_be_bytes([f[14], f[15]]) & 0x0fff)
}

#[test]
fn traces_say_what_the_data_path_then_does_with_the_same_frames() {
    let s = setup();
    let names = ["a", "b", "c", "d"];
    let mut vms: BTreeMap<&str, TestVm> = names
        .iter()
        .enumerate()
        .map(|(i, n)| (*n, s.vm(n, i as u8 + 1)))
        .collect();
    s.wait_connected(&names);
    let group = [1, 0, 0, 0, 0, 9];
    let cases: &[Case] = &[
        (
            "a",
            BROADCAST,
            mac(1),
            Some(10),
            "broadcast on the trunk's VLAN 10",
        ),
        (
            "b",
            mac(9),
            mac(2),
            None,
            "unknown unicast from an access port",
        ),
        ("a", mac(2), mac(1), Some(10), "to b, learnt just before"),
        ("b", mac(2), mac(2), None, "to itself: hairpin"),
        ("c", mac(9), mac(3), Some(20), "tagged on an access port"),
        ("d", mac(9), group, None, "from a group address"),
        (
            "a",
            mac(9),
            mac(1),
            Some(30),
            "a VLAN the trunk does not carry",
        ),
        (
            "d",
            BROADCAST,
            mac(4),
            None,
            "untagged from a port of every VLAN",
        ),
        (
            "c",
            mac(9),
            mac(5),
            None,
            "from an address port security refuses",
        ),
        (
            "d",
            BROADCAST,
            mac(4),
            Some(20),
            "tagged 20 from a port of every VLAN",
        ),
        ("c", mac(4), mac(3), None, "to d, learnt in VLAN 20"),
        (
            "a",
            mac(4),
            mac(1),
            Some(10),
            "to d's address in the wrong VLAN: unknown",
        ),
    ];
    for (i, &(from, dst, src, vid, what)) in cases.iter().enumerate() {
        let mut body = json!({
            "port": from,
            "src": mac_text(src),
            "dst": mac_text(dst),
            "ethertype": 0x88b5,
        });
        if let Some(v) = vid {
            body["vlan"] = json!(v);
        }
        let (code, t) = call(&s.daemon, "POST", "/v1/trace", Some(body));
        assert_eq!(code, 200, "{what}: {t}");
        let want = foretold(&t);

        let before = drop_counts(&s);
        let plain = frame(dst, src, 46, i as u8);
        let sent = match vid {
            Some(v) => tag(&plain, v, 0),
            None => plain,
        };
        let vm = vms.get_mut(from).unwrap();
        vm.send(TestVm::tx(0), &sent);
        vm.wait_tx_done(TestVm::tx(0), T);
        let mut got = BTreeMap::new();
        for (name, vm) in vms.iter_mut() {
            let frames = if want.got.contains_key(*name) {
                vm.expect_frames(TestVm::rx(0), 1, T)
            } else {
                std::thread::sleep(Duration::from_millis(20));
                vm.recv(TestVm::rx(0))
            };
            vm.post_rx(TestVm::rx(0), frames.len(), 2048);
            for f in frames {
                got.insert((*name).to_owned(), vlan_of(&f.frame));
            }
        }
        let drops = vringswitch_tests::wait_until(T, "the drop counters", || {
            let now = drop_counts(&s);
            let grew: BTreeMap<(String, String), u64> = now
                .iter()
                .filter(|(k, v)| **v > before[*k])
                .map(|(k, v)| (k.clone(), v - before[k]))
                .collect();
            (grew.len() >= want.drops.len()).then_some(grew)
        });
        let did = Fate { got, drops };
        assert_eq!(did, want, "{what}: the trace said\n{t:#}");
    }
    // A port that does not exist.
    let (code, e) = call(
        &s.daemon,
        "POST",
        "/v1/trace",
        Some(json!({"port": "zz", "src": "02:00:00:00:00:01", "dst": "02:00:00:00:00:02"})),
    );
    assert_eq!((code, e["error"].as_str()), (404, Some("not_found")), "{e}");
    // vringctl says it in words.
    let out = s.daemon.vringctl(&[
        "trace",
        "b",
        "--src",
        "02:00:00:00:00:02",
        "--dst",
        "ff:ff:ff:ff:ff:ff",
    ]);
    assert!(out.contains("  vlan: 10\n"), "{out}");
    assert!(
        out.contains("flooded in VLAN 10 (group address): delivered to a tagged 10, d tagged 10; not to c (not in VLAN 10), f (down)"),
        "{out}"
    );
}

fn mac_text(m: [u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}
