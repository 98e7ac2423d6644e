//! VXLAN tunnels under BGP EVPN through FRR (issue 42): three "hosts", each a network
//! namespace with its vringswitch and its FRR (zebra, bfdd, bgpd; an iBGP full mesh with
//! BFD), joined by an underlay bridge in a fourth namespace. Each daemon's tunnel port
//! keeps its kernel mirror for zebra, advertises the MACs its VMs use and follows the
//! routes of the others. Needs root, iproute2 and FRR (`apt-get install frr`).

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;
use vringswitch_tests::daemon::{Daemon, TempDir};
use vringswitch_tests::frontend::{TestVm, VmOptions};
use vringswitch_tests::frr::{require_frr, Frr};
use vringswitch_tests::layout::{vhost_user, vxlan_evpn, Layout};
use vringswitch_tests::netns::{ping_the_kernel, Netns, HOST_IP};
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
    /// `n` hosts; their daemons keep routes over an FRR restart for `hold_s` seconds.
    fn new(n: usize, hold_s: u64) -> Fabric {
        Fabric::build(n, 0, hold_s)
    }

    /// `n` vringswitch hosts and `kernels` more whose VTEP is the Linux kernel's own
    /// (a bridge and a `vxlan` device under FRR, no vringswitch: see [`kernel_vtep`]).
    fn build(n: usize, kernels: usize, hold_s: u64) -> Fabric {
        Fabric::build_with(n, kernels, |i, sock| {
            Layout::new()
                .bridge("br0")
                .port(vhost_user("vm0", "br0", &sock(0)))
                .port(vhost_user("vm1", "br0", &sock(1)))
                .port(vhost_user("vm2", "br0", &sock(2)))
                .port(vxlan_evpn("tun", "br0", VNI, host_addr(i)))
                .evpn(Path::new("/"), hold_s)
        })
    }

    /// [`Fabric::build`] with host `i`'s daemon laid out by `layout(i, socket)`
    /// (`socket(k)`: the path of VM k's socket), its `evpn` settings pointed at its FRR.
    fn build_with(
        n: usize,
        kernels: usize,
        layout: impl Fn(usize, &dyn Fn(usize) -> PathBuf) -> Layout,
    ) -> Fabric {
        require_frr();
        let id = std::process::id() % 100_000;
        let underlay = Netns::new(&format!("vs-evu-{id}"));
        underlay.ip(&["link", "add", "fab", "type", "bridge"]);
        underlay.ip(&["link", "set", "fab", "up"]);
        let mut hosts = Vec::new();
        for i in 0..n + kernels {
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
            let peers: Vec<Ipv4Addr> = (0..n + kernels)
                .filter(|&j| j != i)
                .map(host_addr)
                .collect();
            if i >= n {
                kernel_vtep(h, host_addr(i));
            }
            frr.push(Frr::start(&h.0, host_addr(i), &peers));
        }
        let dirs: Vec<TempDir> = (0..n).map(|i| TempDir::new(&format!("evpn-{i}"))).collect();
        let mut daemons = Vec::new();
        for (i, dir) in dirs.iter().enumerate() {
            let sock = |k: usize| dir.path().join(format!("vm{k}.sock"));
            let layout = layout(i, &sock);
            let hold = layout.restart_hold_s();
            let layout = layout.evpn(frr[i].run_dir(), hold);
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

    /// Waits for every BGP session, then for each vringswitch host's flood list (type-3
    /// routes: every other host).
    fn converge(&self) {
        for f in &self.frr {
            f.wait_established(Duration::from_secs(30));
        }
        for i in 0..self.daemons.len() {
            let want: Vec<String> = (0..self.hosts.len())
                .filter(|&j| j != i)
                .map(|j| host_addr(j).to_string())
                .collect();
            until(
                Duration::from_secs(20),
                &format!("host {i}'s flood list"),
                || {
                    self.ends(i)
                        .iter()
                        .map(|(a, _)| a.clone())
                        .collect::<Vec<_>>()
                        == want
                },
            );
            let log = self.daemons[i].log_text();
            assert!(
                log.contains("EVPN mirror of the segment made"),
                "host {i}: {log}"
            );
        }
    }

    /// Two test VMs per host: VM k (MAC k + 1) is port vm{k % 2} of host k / 2.
    fn vms(&self) -> Vec<TestVm> {
        let n = self.daemons.len();
        let vms = (0..2 * n)
            .map(|k| {
                let mut vm = TestVm::connect(
                    &self.socket(k / 2, k % 2),
                    mac(k as u8 + 1),
                    VmOptions::default(),
                );
                vm.post_rx(TestVm::rx(0), 256, 2048);
                vm
            })
            .collect();
        for d in &self.daemons {
            d.wait_port_connected("vm0", true);
            d.wait_port_connected("vm1", true);
        }
        vms
    }

    /// Each VM broadcasts once: every other VM gets it, wherever it is (head-end
    /// replication to the type-3 ends), and its host learns and advertises its address.
    /// Then waits until every host has every remote address installed (type-2 routes).
    fn announce(&self, vms: &mut [TestVm]) {
        for k in 0..vms.len() {
            let b = frame(BROADCAST, mac(k as u8 + 1), 100, k as u8);
            vms[k].send(TestVm::tx(0), &b);
            for (j, vm) in vms.iter_mut().enumerate() {
                if j != k {
                    let got = vm.expect_frames(TestVm::rx(0), 1, T);
                    assert_eq!(got[0].frame, b, "broadcast from VM {k} at VM {j}");
                }
            }
        }
        let n = self.daemons.len();
        for i in 0..n {
            let want: Vec<(String, Vec<String>)> = (0..n)
                .filter(|&j| j != i)
                .map(|j| {
                    let macs = [2 * j + 1, 2 * j + 2]
                        .iter()
                        .map(|&m| mac_text(mac(m as u8)))
                        .collect();
                    (host_addr(j).to_string(), macs)
                })
                .collect();
            until(
                Duration::from_secs(10),
                &format!("host {i}'s remote MACs"),
                || self.ends(i) == want,
            );
        }
    }

    /// Host `i`'s EVPN control as its API shows it.
    fn evpn(&self, i: usize) -> Value {
        self.tunnel(i)["evpn"].clone()
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

/// Makes namespace `h` a VTEP as Linux does it under FRR: a bridge `br100` with a `vxlan`
/// device (VNI [`VNI`], `local`, UDP 4789, `nolearning`) and the end `k0` of a veth pair
/// whose other end `k1` has [`HOST_IP`]/24: the bridge learns k1's MAC, zebra advertises it.
fn kernel_vtep(h: &Netns, local: Ipv4Addr) {
    let vni = VNI.to_string();
    let local = local.to_string();
    h.ip(&["link", "add", "br100", "type", "bridge"]);
    h.ip(&[
        "link",
        "add",
        "vx100",
        "type",
        "vxlan",
        "id",
        &vni,
        "local",
        &local,
        "dstport",
        "4789",
        "nolearning",
    ]);
    h.ip(&["link", "set", "vx100", "master", "br100"]);
    // As FRR's documentation sets a VTEP's VXLAN port: the routes say where MACs are.
    h.ip(&[
        "link",
        "set",
        "dev",
        "vx100",
        "type",
        "bridge_slave",
        "learning",
        "off",
    ]);
    h.ip(&["link", "add", "k0", "type", "veth", "peer", "name", "k1"]);
    h.ip(&["link", "set", "k0", "master", "br100"]);
    let [a, b, c, d] = HOST_IP;
    h.ip(&["addr", "add", &format!("{a}.{b}.{c}.{d}/24"), "dev", "k1"]);
    for dev in ["vx100", "k0", "k1", "br100"] {
        h.ip(&["link", "set", dev, "up"]);
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
    let fabric = Fabric::new(3, 120);
    fabric.converge();
    let mut vms = fabric.vms();
    fabric.announce(&mut vms);
    for i in 0..3 {
        let d = &fabric.daemons[i];
        let l = [("port", "tun"), ("state", "following")];
        assert_eq!(d.metric("vringswitch_evpn_state", &l), 1, "host {i}");
        let l = [("port", "tun")];
        assert_eq!(d.metric("vringswitch_evpn_frr_running", &l), 1);
        assert_eq!(d.metric("vringswitch_evpn_advertised_macs", &l), 2);
        assert_eq!(d.metric("vringswitch_evpn_route_macs", &l), 4);
        assert_eq!(d.metric("vringswitch_evpn_flood_ends", &l), 2);
        let shown = d.vringctl(&["port", "show", "tun"]);
        assert!(
            shown.contains("evpn: following (FRR running), 2 local MACs advertised"),
            "{shown}"
        );
        let e = fabric.evpn(i);
        assert_eq!(
            (
                e["state"].as_str(),
                e["frr_running"].as_bool(),
                e["advertised"].as_u64()
            ),
            (Some("following"), Some(true), Some(2)),
            "host {i}: {e}"
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

/// Exchanges frames between `pairs` of `vms` ([`exchange`]) until `f` holds (within 40
/// s); how long that took.
fn talk(
    fabric: &Fabric,
    vms: &mut [TestVm],
    pairs: &[(usize, usize)],
    seq: &mut u32,
    what: &str,
    f: &mut dyn FnMut() -> bool,
) -> Duration {
    until(Duration::from_secs(40), what, || {
        exchange(vms, pairs, seq, &|| {
            (0..fabric.daemons.len())
                .map(|i| {
                    let t = fabric.tunnel(i);
                    format!(
                        "host {i}: evpn {}, drops {}, ends {:?}",
                        t["evpn"],
                        t["counters"]["drops"],
                        fabric.ends(i)
                    )
                })
                .collect::<Vec<_>>()
                .join("; ")
        });
        f()
    })
}

/// [`exchange`], counting the frames that did not arrive within 300 ms instead of failing.
fn exchange_lossy(vms: &mut [TestVm], pairs: &[(usize, usize)], seq: &mut u32) -> u32 {
    let mut lost = 0;
    for &(a, b) in pairs {
        for (from, to) in [(a, b), (b, a)] {
            *seq += 1;
            let f = frame(mac(to as u8 + 1), mac(from as u8 + 1), 100, *seq as u8);
            vms[from].reap_tx(TestVm::tx(0));
            vms[from].send(TestVm::tx(0), &f);
            let deadline = Instant::now() + Duration::from_millis(300);
            loop {
                let got = vms[to].recv(TestVm::rx(0));
                vms[to].post_rx(TestVm::rx(0), got.len(), 2048);
                if got.iter().any(|r| r.frame == f) {
                    break;
                }
                if Instant::now() > deadline {
                    lost += 1;
                    break;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }
    lost
}

/// Sends one frame each way between each pair of `pairs` (indices into `vms`) and checks
/// it arrives, whole; `seq` numbers the frames. On a loss, panics with what `why` says.
fn exchange(vms: &mut [TestVm], pairs: &[(usize, usize)], seq: &mut u32, why: &dyn Fn() -> String) {
    for &(a, b) in pairs {
        for (from, to) in [(a, b), (b, a)] {
            *seq += 1;
            let f = frame(mac(to as u8 + 1), mac(from as u8 + 1), 100, *seq as u8);
            vms[from].reap_tx(TestVm::tx(0));
            vms[from].send(TestVm::tx(0), &f);
            let deadline = Instant::now() + Duration::from_secs(2);
            let got = loop {
                let got = vms[to].recv(TestVm::rx(0));
                if !got.is_empty() || Instant::now() > deadline {
                    break got;
                }
                std::thread::sleep(Duration::from_millis(1));
            };
            assert!(
                got.len() == 1 && got[0].frame == f,
                "frame {seq} from VM {from} to VM {to}: {} frames came; {}",
                got.len(),
                why()
            );
            vms[to].post_rx(TestVm::rx(0), 1, 2048);
        }
    }
}

#[test]
fn a_host_whose_zebra_dies_and_restarts_forwards_on_its_kept_routes_throughout() {
    // Kept routes stay 25 s once FRR is back, unless all come back sooner (FRR 8.4 takes
    // 5 to 12 s to install them again after zebra restarts).
    let fabric = Fabric::new(3, 25);
    fabric.converge();
    let mut vms = fabric.vms();
    fabric.announce(&mut vms);
    // Host 0's VMs talk to one on each other host, all along.
    let pairs = [(0, 2), (1, 4)];
    let mut seq = 0;
    talk(
        &fabric,
        &mut vms,
        &pairs,
        &mut seq,
        "a few rounds",
        &mut || true,
    );

    // zebra dies on host 0 (SIGKILL: its kernel entries stay behind). The daemon sees it
    // gone, keeps its routes (stale) and clears the mirror for the next zebra. bgpd keeps
    // its sessions: the other hosts keep host 0's routes.
    fabric.frr[0].kill_only(&["zebra"]);
    let seen = talk(
        &fabric,
        &mut vms,
        &pairs,
        &mut seq,
        "host 0 stale",
        &mut || {
            let e = fabric.evpn(0);
            e["state"] == "stale" && e["frr_running"] == false
        },
    );
    eprintln!("zebra's death seen in {seen:?}");
    let log = fabric.daemons[0].log_text();
    assert!(log.contains("FRR (zebra or bgpd) is not running"), "{log}");
    let netns = &fabric.hosts[0].0;
    let leftovers = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            netns,
            "bridge",
            "fdb",
            "show",
            "dev",
            &format!("vsx{VNI}"),
        ])
        .output()
        .unwrap();
    let leftovers = String::from_utf8_lossy(&leftovers.stdout).into_owned();
    assert!(
        !leftovers.contains(" dst "),
        "zebra's entries left in the mirror: {leftovers}"
    );
    // Meanwhile VM 5 (host 2) goes: the hosts with FRR forget it; host 0 cannot know.
    drop(vms.pop());
    let gone = mac_text(mac(6));
    let host2 = host_addr(2).to_string();
    talk(
        &fabric,
        &mut vms,
        &pairs,
        &mut seq,
        "VM 5 withdrawn at host 1",
        &mut || fabric.ends(1).iter().all(|(_, m)| !m.contains(&gone)),
    );
    assert!(fabric
        .ends(0)
        .iter()
        .any(|(a, m)| *a == host2 && m.contains(&gone)));
    talk(
        &fabric,
        &mut vms,
        &pairs,
        &mut seq,
        "two more seconds",
        &mut {
            let t = Instant::now();
            move || t.elapsed() > Duration::from_secs(2)
        },
    );

    // zebra back. FRR 8.4 then resets host 0's BGP sessions (its BFD sessions, relayed
    // through zebra, restart with it): the other hosts withdraw host 0 for a moment, and
    // frames between it and them are lost meanwhile (`unknown_vtep` over there). Host 0
    // keeps every route it had (stale) all along; traffic comes back by itself; and once
    // the hold is over, the route that never came back (VM 5's) is dropped.
    eprintln!("{seq} frames while zebra was down, none lost");
    let kept = fabric.ends(0);
    fabric.frr[0].restart();
    let back = Instant::now();
    let (mut lost, mut gap, mut lossy_since) = (0, Duration::ZERO, None::<Instant>);
    while fabric.evpn(0)["state"] != "following" {
        assert!(
            back.elapsed() < Duration::from_secs(40),
            "host 0 stale for 40 s"
        );
        let now = fabric.ends(0);
        for (addr, macs) in &kept {
            let have = now.iter().find(|(a, _)| a == addr);
            assert!(
                have.is_some_and(|(_, m)| macs.iter().all(|x| m.contains(x)))
                    || fabric.evpn(0)["state"] == "following",
                "host 0 lost a kept route while stale: {now:?}, kept {kept:?}"
            );
        }
        let round = Instant::now();
        let n = exchange_lossy(&mut vms, &pairs, &mut seq);
        lost += n;
        match (n, lossy_since) {
            (0, Some(since)) => {
                gap = gap.max(since.elapsed());
                lossy_since = None;
            }
            (0, None) => {}
            (_, None) => lossy_since = Some(round),
            (_, Some(_)) => {}
        }
    }
    let settled = back.elapsed();
    eprintln!(
        "zebra back; host 0 following again after {settled:?}; {lost} frames lost in FRR's \
         session reset, the longest gap {gap:?}"
    );
    assert!(
        lossy_since.is_none(),
        "traffic had not come back when the hold ended"
    );
    assert!(gap < Duration::from_secs(10), "traffic stopped for {gap:?}");
    assert!(settled >= Duration::from_secs(25), "held {settled:?}");
    let ends = fabric.ends(0);
    let want: Vec<(String, Vec<String>)> = vec![
        (
            host_addr(1).to_string(),
            vec![mac_text(mac(3)), mac_text(mac(4))],
        ),
        (host2.clone(), vec![mac_text(mac(5))]),
    ];
    assert_eq!(
        ends, want,
        "VM 5's MAC, gone meanwhile, is dropped after the hold"
    );
    assert!(fabric.daemons[0]
        .log_text()
        .contains("did not all come back"));
    let before = seq;
    talk(&fabric, &mut vms, &pairs, &mut seq, "a last second", &mut {
        let t = Instant::now();
        move || t.elapsed() > Duration::from_secs(1)
    });
    eprintln!("{} frames after, none lost", seq - before);
    // Following again: a VM leaving host 1 is withdrawn at host 0 at once.
    drop(vms.remove(3));
    let left = mac_text(mac(4));
    until(Duration::from_secs(2), "VM 3 withdrawn at host 0", || {
        fabric.ends(0).iter().all(|(_, m)| !m.contains(&left))
    });
}

#[test]
fn a_linux_kernel_vtep_under_frr_exchanges_frames_with_vringswitch_hosts() {
    // Two vringswitch hosts and a third whose VTEP is the kernel's bridge and vxlan
    // device: the wire format and the routes are everybody's.
    let fabric = Fabric::build(2, 1, 120);
    fabric.converge();
    let kernel = host_addr(2).to_string();
    // What each host dropped while the routes came in (the kernel may flood its IPv6
    // chatter to a host before that host has the kernel's route: `unknown_vtep`): the
    // drops below are counted from here.
    let before: Vec<Value> = (0..2)
        .map(|h| fabric.tunnel(h)["counters"]["drops"].clone())
        .collect();
    // A test VM on each vringswitch host asks the kernel host's address (its ARP flooded
    // to the kernel VTEP), then pings it with small and large payloads: the replies come
    // back through the kernel's VXLAN, to the VM's MAC that FRR told the kernel about.
    let big = vec![0x5a; 1400];
    for (host, before) in before.iter().enumerate() {
        ping_the_kernel(&fabric.socket(host, 2), 20 + host as u8, &[b"evpn", &big]);
        // The kernel host's MAC installed behind its end, from its type-2 route.
        until(Duration::from_secs(5), "the kernel's MAC installed", || {
            fabric
                .ends(host)
                .iter()
                .any(|(a, m)| *a == kernel && !m.is_empty())
        });
        let tun = fabric.tunnel(host);
        let drops = &tun["counters"]["drops"];
        // Except `hairpin`: frames the kernel flooded (to a MAC it did not have a route
        // for yet) reach every host, and one whose destination is behind another host
        // goes no further here.
        assert!(
            drops
                .as_object()
                .unwrap()
                .iter()
                .all(|(reason, v)| *v == before[reason] || reason == "hairpin"),
            "host {host}: {drops}, before the pings {}",
            before
        );
    }
    // What the kernel knows of the VMs comes from the routes: an `extern_learn` entry
    // behind each vringswitch host, for as long as the VM is there.
    let vms: Vec<TestVm> = (0..2)
        .map(|host| {
            let n = 20 + host as u8;
            let mut vm = TestVm::connect(&fabric.socket(host, 2), mac(n), VmOptions::default());
            vm.post_rx(TestVm::rx(0), 64, 2048);
            vm.send(
                TestVm::tx(0),
                &vringswitch_tests::netns::arp_request(mac(n)),
            );
            vm
        })
        .collect();
    let kernel_fdb = || {
        let out = std::process::Command::new("ip")
            .args([
                "netns",
                "exec",
                &fabric.hosts[2].0,
                "bridge",
                "fdb",
                "show",
                "dev",
                "vx100",
            ])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    for host in 0..2 {
        let want = format!(
            "{} dst {} self extern_learn",
            mac_text(mac(20 + host as u8)),
            host_addr(host)
        );
        until(
            Duration::from_secs(5),
            &format!("{want} in the kernel"),
            || kernel_fdb().contains(&want),
        );
    }
    drop(vms);
}

/// The interface index of `dev` in namespace `ns`.
fn ifindex(ns: &Netns, dev: &str) -> String {
    let out = std::process::Command::new("ip")
        .args(["-n", &ns.0, "-o", "link", "show", dev])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.split(':').next().unwrap_or_default().trim().to_owned()
}

#[test]
fn an_upgrade_keeps_the_mirror_and_the_other_hosts_notice_nothing() {
    let mut fabric = Fabric::new(2, 120);
    fabric.converge();
    let mut vms = fabric.vms();
    fabric.announce(&mut vms);
    let pairs = [(0, 2), (1, 3)];
    let mut seq = 0;
    talk(
        &fabric,
        &mut vms,
        &pairs,
        &mut seq,
        "a few rounds",
        &mut || true,
    );
    let mirror: Vec<String> = ["vsb100", "vsx100", "vsa100"]
        .iter()
        .map(|d| ifindex(&fabric.hosts[0], d))
        .collect();
    let host0 = host_addr(0).to_string();
    let seen_by_1 = fabric.ends(1);
    assert!(seen_by_1.iter().any(|(a, m)| *a == host0 && m.len() == 2));
    // Host 0's daemon replaced three times while host 1 is watched: host 0's routes never
    // leave it (zebra saw nothing change), and frames flow right after each upgrade.
    for round in 0..3 {
        let (first, rest) = fabric.daemons.split_at_mut(1);
        let watcher = &rest[0];
        let stop = std::sync::atomic::AtomicBool::new(false);
        let lost = std::thread::scope(|s| {
            let w = s.spawn(|| {
                let mut lost = None;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let (_, tun) =
                        vringswitch_tests::api::call(watcher, "GET", "/v1/ports/tun", None);
                    let has = tun["remotes"].as_array().is_some_and(|r| {
                        r.iter().any(|e| {
                            e["address"] == host0.as_str()
                                && e["macs"].as_array().is_some_and(|m| m.len() == 2)
                        })
                    });
                    if !has {
                        lost = Some(tun);
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
                lost
            });
            let answer = first[0]
                .upgrade(&[])
                .unwrap_or_else(|e| panic!("round {round}: {e}"));
            assert_eq!(answer["not_carried"], Value::Array(vec![]), "{answer}");
            // A second more of watching, the routes settled or not.
            std::thread::sleep(Duration::from_secs(1));
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            w.join().unwrap()
        });
        assert!(
            lost.is_none(),
            "round {round}: host 1 lost host 0's routes: {lost:?}"
        );
        talk(
            &fabric,
            &mut vms,
            &pairs,
            &mut seq,
            "frames after the upgrade",
            &mut || true,
        );
        let now: Vec<String> = ["vsb100", "vsx100", "vsa100"]
            .iter()
            .map(|d| ifindex(&fabric.hosts[0], d))
            .collect();
        assert_eq!(
            now, mirror,
            "round {round}: the mirror is the same interfaces"
        );
        let log = fabric.daemons[0].log_text();
        assert_eq!(
            log.matches("EVPN mirror of the segment found as it should be: kept")
                .count(),
            round + 1,
            "{log}"
        );
        assert_eq!(fabric.evpn(0)["state"], "following");
        assert_eq!(fabric.evpn(0)["advertised"], 2);
    }
    assert_eq!(fabric.ends(1), seen_by_1);
}

#[test]
fn two_qemu_guests_on_two_hosts_ping_and_move_100_mib_through_the_tunnel() {
    use vringswitch_tests::guest::{Guest, GuestSpec};
    let fabric = Fabric::new(2, 120);
    fabric.converge();
    // Guest a (10.0.0.1) on host 0, guest b (10.0.0.2) on host 1, each told an MTU of
    // 1450 by QEMU (VIRTIO_NET_F_MTU): with the 50 bytes of the tunnel, 1500 on the
    // underlay. a pings b and sends it 100 MiB; TSO frames are cut for the tunnel.
    let a = Guest::boot(
        fabric.dirs[0].path(),
        &GuestSpec::new("a", &fabric.socket(0, 0), 1, 2)
            .nic("host_mtu=1450")
            .sending("10.0.0.2", 5001, 100),
    );
    let b = Guest::boot(
        fabric.dirs[1].path(),
        &GuestSpec::new("b", &fabric.socket(1, 0), 2, 1)
            .nic("host_mtu=1450")
            .receiving(&[5001]),
    );
    let clean = a.wait_clean_round(0, "a clean round of a's pings to b across the tunnel");
    let rc = wait_until(Duration::from_secs(1200), "100 MiB from a to b", || {
        a.sent_status()
    });
    assert_eq!(rc, 0, "a's transfer failed:\n{}", a.text());
    let got = wait_until(Duration::from_secs(60), "b's md5", || b.received_md5(5001));
    assert_eq!(Some(got), a.sent_md5(), "md5 of what b got");
    // Pings across the tunnel after the transfer: no loss.
    let after = a.wait_clean_round(clean, "a clean round after the transfer");
    let (lost, rounds) = a.lost_pings(clean);
    eprintln!("a's rounds {clean}..{after}: {lost} pings lost in {rounds} rounds");
    let segmented = fabric.daemons[0].metric(
        "vringswitch_port_offloads_total",
        &[("port", "tun"), ("action", "segmented")],
    );
    assert!(segmented > 100, "{segmented} TSO frames cut for the tunnel");
    for i in 0..2 {
        let tun = fabric.tunnel(i);
        let drops = &tun["counters"]["drops"];
        assert_eq!(drops["too_big"], 0, "host {i}: {drops}");
        assert_eq!(drops["unknown_vtep"], 0, "host {i}: {drops}");
        assert_eq!(drops["bad_tunnel"], 0, "host {i}: {drops}");
    }
}

/// Waits until `f` gives a value, failing with `what` after `within`.
fn wait_until<V>(within: Duration, what: &str, mut f: impl FnMut() -> Option<V>) -> V {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(start.elapsed() < within, "{what}: not within {within:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn several_vnis_share_a_hosts_tunnel_address_each_on_its_vlan() {
    use vringswitch_tests::layout::access;
    // On each host, VNI 100 carries VLAN 10 and VNI 200 VLAN 20 of one bridge, both
    // tunnel ports on the host's one address and UDP 4789; a VM in each VLAN.
    let mut fabric = Fabric::build_with(2, 0, |i, sock| {
        let vm = |k: usize, tag: u16| {
            let mut p = vhost_user(&format!("vm{k}"), "br0", &sock(k));
            p.vlan = Some(access(tag));
            p
        };
        let tun = |name: &str, vni: u32, tag: u16| {
            let mut p = vxlan_evpn(name, "br0", vni, host_addr(i));
            p.vlan = Some(access(tag));
            p
        };
        Layout::new()
            .bridge("br0")
            .port(vm(0, 10))
            .port(vm(1, 20))
            .port(tun("tun100", 100, 10))
            .port(tun("tun200", 200, 20))
            .evpn(Path::new("/"), 120)
    });
    for f in &fabric.frr {
        f.wait_established(Duration::from_secs(30));
    }
    // VM k: port vm{k % 2} (VLAN 10 or 20) of host k / 2, MAC k + 1.
    let mut vms: Vec<TestVm> = (0..4)
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
    for host in 0..2 {
        for port in ["tun100", "tun200"] {
            until(
                Duration::from_secs(20),
                &format!("host {host}'s {port} flood list"),
                || {
                    port_view(&fabric, host, port)["evpn"]["flood"]
                        .as_array()
                        .is_some_and(|f| f.len() == 1)
                },
            );
        }
    }
    // A broadcast from each VM reaches the VM of its VLAN on the other host, and no other.
    for k in 0..4 {
        let b = frame(BROADCAST, mac(k as u8 + 1), 100, k as u8);
        vms[k].send(TestVm::tx(0), &b);
        let peer = (k + 2) % 4;
        let got = vms[peer].expect_frames(TestVm::rx(0), 1, T);
        assert_eq!(got[0].frame, b, "VM {k}'s broadcast at VM {peer}");
        vms[peer].post_rx(TestVm::rx(0), 1, 2048);
        for (o, vm) in vms.iter_mut().enumerate() {
            if o != k && o != peer {
                std::thread::sleep(Duration::from_millis(20));
                assert!(
                    vm.recv(TestVm::rx(0)).is_empty(),
                    "VM {o} got VM {k}'s broadcast"
                );
            }
        }
    }
    // Each segment's routes: the other host's VM of that VLAN behind its end.
    for host in 0..2 {
        for (port, k) in [("tun100", 0), ("tun200", 1)] {
            let other = 2 * (1 - host) + k;
            until(
                Duration::from_secs(10),
                &format!("host {host}'s {port} route"),
                || {
                    port_view(&fabric, host, port)["remotes"]
                        .as_array()
                        .is_some_and(|r| {
                            r.iter().any(|e| {
                                e["macs"].as_array().is_some_and(|m| {
                                    m.iter().any(|x| x["mac"] == mac_text(mac(other as u8 + 1)))
                                })
                            })
                        })
                },
            );
        }
    }
    // Unicast both ways in both segments, 20 frames each, exact.
    for (a, b) in [(0, 2), (2, 0), (1, 3), (3, 1)] {
        let sent: Vec<Vec<u8>> = (0..20u8)
            .map(|s| frame(mac(b as u8 + 1), mac(a as u8 + 1), 150 + usize::from(s), s))
            .collect();
        for f in &sent {
            vms[a].send(TestVm::tx(0), f);
        }
        let got: Vec<Vec<u8>> = vms[b]
            .expect_frames(TestVm::rx(0), 20, T)
            .into_iter()
            .map(|r| r.frame)
            .collect();
        assert_eq!(got, sent, "VM {a} to VM {b}");
        vms[b].post_rx(TestVm::rx(0), 20, 2048);
    }
    // Host 0's daemon upgraded: both sockets keep their places in the group (handed over
    // with them), so each VNI still reaches its port.
    fabric.daemons[0].upgrade(&[]).expect("upgrade host 0");
    for (a, b) in [(0, 2), (2, 0), (1, 3), (3, 1)] {
        let f = frame(mac(b as u8 + 1), mac(a as u8 + 1), 90, 0xee);
        vms[a].send(TestVm::tx(0), &f);
        let got = vms[b].expect_frames(TestVm::rx(0), 1, T);
        assert_eq!(got[0].frame, f, "VM {a} to VM {b} after the upgrade");
        vms[b].post_rx(TestVm::rx(0), 1, 2048);
    }
    // A second port of VNI 100 on the address is refused, over the API, saying which
    // port has it.
    let body = serde_json::json!({"name": "again", "bridge": "br0", "type": "vxlan",
        "vni": 100, "local": host_addr(0).to_string(), "control": "static", "remotes": []});
    let (code, err) =
        vringswitch_tests::api::call(&fabric.daemons[0], "POST", "/v1/ports", Some(body));
    assert_eq!(code, 409, "{err}");
    assert!(
        err["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("VNI 100 on UDP 10.99.0.1:4789 is already taken by tunnel port \"tun100\""),
        "{err}"
    );
    // Each port took its own VNI's packets only: none counted as another VNI's.
    for host in 0..2 {
        for port in ["tun100", "tun200"] {
            let v = port_view(&fabric, host, port);
            let drops = &v["counters"]["drops"];
            assert_eq!(drops["bad_tunnel"], 0, "host {host} {port}: {drops}");
            assert_eq!(drops["unknown_vtep"], 0, "host {host} {port}: {drops}");
            // One broadcast, 20 frames and one after the upgrade each way.
            let c = &v["counters"];
            assert_eq!(
                (c["rx_packets"].as_u64(), c["tx_packets"].as_u64()),
                (Some(22), Some(22)),
                "host {host} {port}: {v}"
            );
        }
    }
}

/// Port `port` as host `host`'s API shows it.
fn port_view(fabric: &Fabric, host: usize, port: &str) -> Value {
    let (code, v) = vringswitch_tests::api::call(
        &fabric.daemons[host],
        "GET",
        &format!("/v1/ports/{port}"),
        None,
    );
    assert_eq!(code, 200, "{v}");
    v
}
