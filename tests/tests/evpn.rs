//! VXLAN tunnels under BGP EVPN through FRR (issue 42): three "hosts", each a network
//! namespace with its vringswitch and its FRR (zebra, bfdd, bgpd; an iBGP full mesh with
//! BFD), joined by an underlay bridge in a fourth namespace. Each daemon's tunnel port
//! keeps its kernel mirror for zebra, advertises the MACs its VMs use and follows the
//! routes of the others. Needs root, iproute2 and FRR (`apt-get install frr`).

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::Value;
use vringswitch_tests::daemon::{Daemon, TempDir};
use vringswitch_tests::frontend::{TestVm, VmOptions};
use vringswitch_tests::frr::{require_frr, Frr};
use vringswitch_tests::layout::{vhost_user, vxlan_evpn, Layout};
use vringswitch_tests::netns::Netns;
use vringswitch_tests::setup::T;
use vringswitch_tests::{frame, mac, BROADCAST};

const VNI: u32 = 100;

/// The underlay address of host `i`.
fn host_addr(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 99, 0, i as u8 + 1)
}

fn mac_text(m: [u8; 6]) -> String {
    format!(
        "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        m[0], m[1], m[2], m[3], m[4], m[5]
    )
}

/// Hosts on an underlay, each with FRR and a daemon whose bridge `br0` has three
/// vhost-user ports (`vm0`, `vm1`, `vm2`) and the EVPN tunnel `tun`. Dropped in reverse:
/// daemons, FRR, namespaces.
struct Fabric {
    underlay: Netns,
    hosts: Vec<Netns>,
    dirs: Vec<TempDir>,
    frr: Vec<Frr>,
    daemons: Vec<Daemon>,
}

impl Drop for Fabric {
    fn drop(&mut self) {
        self.daemons.clear();
        self.frr.clear();
        self.hosts.clear();
        let _ = &self.underlay;
    }
}

impl Fabric {
    fn new(n: usize) -> Fabric {
        require_frr();
        let id = std::process::id() % 100_000;
        let underlay = Netns::new(&format!("vs-evu-{id}"));
        underlay.ip(&["link", "add", "fab", "type", "bridge"]);
        underlay.ip(&["link", "set", "fab", "up"]);
        let mut hosts = Vec::new();
        for i in 0..n {
            let h = Netns::new(&format!("vs-ev{i}-{id}"));
            let f = format!("f{i}");
            underlay.ip(&[
                "link", "add", &f, "type", "veth", "peer", "name", "u0", "netns", &h.0,
            ]);
            underlay.ip(&["link", "set", &f, "master", "fab", "up"]);
            h.ip(&["addr", "add", &format!("{}/24", host_addr(i)), "dev", "u0"]);
            h.ip(&["link", "set", "u0", "up"]);
            h.ip(&["link", "set", "lo", "up"]);
            hosts.push(h);
        }
        let mut frr = Vec::new();
        for (i, h) in hosts.iter().enumerate() {
            let peers: Vec<Ipv4Addr> = (0..n).filter(|&j| j != i).map(host_addr).collect();
            frr.push(Frr::start(&h.0, host_addr(i), &peers));
        }
        let dirs: Vec<TempDir> = (0..n).map(|i| TempDir::new(&format!("evpn-{i}"))).collect();
        let mut daemons = Vec::new();
        for (i, dir) in dirs.iter().enumerate() {
            let sock = |k: usize| dir.path().join(format!("vm{k}.sock"));
            let layout = Layout::new()
                .bridge("br0")
                .port(vhost_user("vm0", "br0", &sock(0)))
                .port(vhost_user("vm1", "br0", &sock(1)))
                .port(vhost_user("vm2", "br0", &sock(2)))
                .port(vxlan_evpn("tun", "br0", VNI, host_addr(i)));
            daemons.push(Daemon::start_in_netns(
                &hosts[i].0,
                dir.path(),
                &layout.toml(),
                &layout.sockets(),
            ));
        }
        Fabric {
            underlay,
            hosts,
            dirs,
            frr,
            daemons,
        }
    }

    fn socket(&self, host: usize, k: usize) -> PathBuf {
        self.dirs[host].path().join(format!("vm{k}.sock"))
    }

    /// The tunnel port as host `i`'s API shows it.
    fn tunnel(&self, i: usize) -> Value {
        let (code, tun) =
            vringswitch_tests::api::call(&self.daemons[i], "GET", "/v1/ports/tun", None);
        assert_eq!(code, 200, "{tun}");
        tun
    }

    /// The remote ends host `i`'s tunnel has, each with the MACs installed behind it.
    fn ends(&self, i: usize) -> Vec<(String, Vec<String>)> {
        let tun = self.tunnel(i);
        let mut out: Vec<(String, Vec<String>)> = tun["remotes"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|r| {
                        let macs = r["macs"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .filter(|m| m["learnt"] == false)
                            .map(|m| m["mac"].as_str().unwrap_or_default().to_owned())
                            .collect();
                        (r["address"].as_str().unwrap_or_default().to_owned(), macs)
                    })
                    .collect()
            })
            .unwrap_or_default();
        out.sort();
        out
    }
}

/// Waits until `f` holds; how long it took. Fails the test with `what` after `within`.
fn until(within: Duration, what: &str, mut f: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < within, "{what}: not within {within:?}");
        std::thread::sleep(Duration::from_millis(5));
    }
    start.elapsed()
}

#[test]
fn three_hosts_under_evpn_carry_every_pair_follow_a_moved_mac_and_drop_a_cut_host() {
    let fabric = Fabric::new(3);
    for f in &fabric.frr {
        f.wait_established(Duration::from_secs(30));
    }
    // Type-3 routes: each host floods to the two others.
    for i in 0..3 {
        let want: Vec<String> = (0..3)
            .filter(|&j| j != i)
            .map(|j| host_addr(j).to_string())
            .collect();
        until(
            Duration::from_secs(20),
            &format!("host {i}'s flood list"),
            || {
                fabric
                    .ends(i)
                    .iter()
                    .map(|(a, _)| a.clone())
                    .collect::<Vec<_>>()
                    == want
            },
        );
        assert!(
            fabric.daemons[i]
                .log_text()
                .contains("EVPN mirror of the segment made"),
            "host {i}"
        );
    }
    // VM k (MAC k + 1) is port vm{k % 2} of host k / 2.
    let mut vms: Vec<TestVm> = (0..6)
        .map(|k| {
            let mut vm = TestVm::connect(
                &fabric.socket(k / 2, k % 2),
                mac(k as u8 + 1),
                VmOptions::default(),
            );
            vm.post_rx(TestVm::rx(0), 256, 2048);
            vm
        })
        .collect();
    for d in &fabric.daemons {
        d.wait_port_connected("vm0", true);
        d.wait_port_connected("vm1", true);
    }
    // Each VM broadcasts once: every other VM gets it, wherever it is (head-end
    // replication to the type-3 ends), and its host learns and advertises its address.
    for k in 0..6 {
        let b = frame(BROADCAST, mac(k as u8 + 1), 100, k as u8);
        vms[k].send(TestVm::tx(0), &b);
        for (j, vm) in vms.iter_mut().enumerate() {
            if j != k {
                let got = vm.expect_frames(TestVm::rx(0), 1, T);
                assert_eq!(got[0].frame, b, "broadcast from VM {k} at VM {j}");
            }
        }
    }
    // Type-2 routes: each host has the four remote addresses installed behind their ends.
    for i in 0..3 {
        let want: Vec<(String, Vec<String>)> = (0..3)
            .filter(|&j| j != i)
            .map(|j| {
                let macs = [2 * j + 1, 2 * j + 2]
                    .iter()
                    .map(|&n| mac_text(mac(n as u8)))
                    .collect();
                (host_addr(j).to_string(), macs)
            })
            .collect();
        until(
            Duration::from_secs(10),
            &format!("host {i}'s remote MACs"),
            || fabric.ends(i) == want,
        );
    }
    // Every ordered pair, 20 frames each: each arrives once, whole, in order, and only at
    // its destination (known: nothing is flooded).
    for k in 0..6 {
        for j in (0..6).filter(|&j| j != k) {
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
    for i in 0..3 {
        let tun = fabric.tunnel(i);
        let drops = &tun["counters"]["drops"];
        assert!(
            drops.as_object().unwrap().values().all(|v| v == 0),
            "host {i}: {drops}"
        );
        for r in tun["remotes"].as_array().unwrap() {
            // Both ways: 2 broadcasts, and 20 frames from each of 2 VMs to each of 2.
            assert_eq!(
                (r["rx_packets"].clone(), r["tx_packets"].clone()),
                (82.into(), 82.into()),
                "host {i}: {r}"
            );
        }
    }

    // A VM moves: VM 0 leaves host 0 and comes back on host 1 (its port vm2), where it
    // speaks first. Host 2 sends to it there within a second.
    drop(vms.remove(0));
    fabric.daemons[0].wait_port_connected("vm0", false);
    let mut moved = TestVm::connect(&fabric.socket(1, 2), mac(1), VmOptions::default());
    moved.post_rx(TestVm::rx(0), 64, 2048);
    fabric.daemons[1].wait_port_connected("vm2", true);
    let start = Instant::now();
    moved.send(TestVm::tx(0), &frame(BROADCAST, mac(1), 60, 9));
    let host1 = host_addr(1).to_string();
    until(
        Duration::from_secs(1),
        "the moved MAC behind host 1 at host 2",
        || {
            fabric
                .ends(2)
                .iter()
                .any(|(a, m)| *a == host1 && m.contains(&mac_text(mac(1))))
        },
    );
    let moved_in = start.elapsed();
    // vms[3] is VM 4 now: host 2's vm0.
    let to_moved = frame(mac(1), mac(5), 300, 7);
    vms[3].send(TestVm::tx(0), &to_moved);
    let got = moved.expect_frames_at_least(TestVm::rx(0), 1, T);
    assert!(
        got.iter().any(|r| r.frame == to_moved),
        "host 2 to the moved VM"
    );
    // Host 0 has it behind host 1 as well.
    until(
        Duration::from_secs(1),
        "the moved MAC behind host 1 at host 0",
        || {
            fabric
                .ends(0)
                .iter()
                .any(|(a, m)| *a == host1 && m.contains(&mac_text(mac(1))))
        },
    );
    eprintln!("MAC move seen at another host in {moved_in:?}");

    // Host 2's underlay link is cut: BFD (300 ms x 3) ends its sessions, and hosts 0 and 1
    // forget its end and the MACs behind it within 1.5 s.
    let cut = Instant::now();
    fabric.underlay.ip(&["link", "set", "f2", "down"]);
    let host2 = host_addr(2).to_string();
    for i in 0..2 {
        until(
            Duration::from_millis(1500).saturating_sub(cut.elapsed()),
            &format!("host 2 withdrawn at host {i}"),
            || fabric.ends(i).iter().all(|(a, _)| *a != host2),
        );
    }
    let withdrawn_in = cut.elapsed();
    eprintln!("cut host withdrawn everywhere in {withdrawn_in:?}");
    // Nothing is flooded to it any more: a broadcast from host 0 goes to host 1 alone.
    let sent_to = |host: &str| {
        fabric.tunnel(0)["remotes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["address"] == host)
            .map(|r| r["tx_packets"].as_u64().unwrap())
    };
    let before = sent_to(&host1).expect("host 1 is an end of host 0's");
    vms[0].send(TestVm::tx(0), &frame(BROADCAST, mac(2), 80, 3));
    until(T, "the broadcast from host 0 to host 1", || {
        sent_to(&host1) == Some(before + 1)
    });
    assert_eq!(sent_to(&host2), None);
    for (i, d) in fabric.daemons.iter().enumerate() {
        let log = d.log_text();
        assert!(
            !log.contains("EVPN control of the segment failed"),
            "host {i}: {log}"
        );
        assert!(!log.contains(" ERROR "), "host {i}: {log}");
    }
}
